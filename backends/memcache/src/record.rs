//! How a device is stored: one compact JSON item per uaid holding its channels and
//! their pending updates, and a small item naming its node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use simplepush_store::{ChannelId, Pending, Update};

/// Everything stored for one device, in the item at [`crate::key::device`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Device {
    /// Live channels by id, each with its pending update if any.
    #[serde(rename = "c", default)]
    pub(crate) channels: BTreeMap<String, Option<Slot>>,
}

/// A pending update, serialized as `[version, expires_at, data]` to keep items small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Slot(u64, u64, Option<String>);

impl From<Update> for Slot {
    fn from(update: Update) -> Self {
        Slot(update.version, update.expires_at, update.data)
    }
}

impl Slot {
    /// The version of the pending update.
    pub(crate) fn version(&self) -> u64 {
        self.0
    }

    /// Whether the update has expired at `now` (UNIX seconds).
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        self.1 <= now
    }

    fn to_update(&self) -> Update {
        Update {
            version: self.0,
            expires_at: self.1,
            data: self.2.clone(),
        }
    }
}

impl Device {
    /// Decodes an item; an error when it is not a device record.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Device, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Encodes the record for storing.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// What the device has waiting at `now`.
    pub(crate) fn pending(&self, now: u64) -> Pending {
        let mut pending = Pending::default();
        for (channel, slot) in &self.channels {
            if let Some(slot) = slot {
                if slot.expired_at(now) {
                    pending.expired.push(ChannelId::new(channel.as_str()));
                } else {
                    pending
                        .updates
                        .push((ChannelId::new(channel.as_str()), slot.to_update()));
                }
            }
        }
        pending
    }
}

/// The value of a node item naming a node.
pub(crate) fn encode_node(node: &str) -> String {
    format!("{NODE_MARK}{node}")
}

/// The value left by clearing a node record (memcached has no compare-and-delete).
pub(crate) const NODE_CLEARED: &str = "-";

/// Marks a value naming a node, so any node name (even "" or "-") round-trips.
const NODE_MARK: char = '@';

/// The node a node item names: `Ok(None)` for a cleared record, `Err(())` when the
/// bytes are neither.
pub(crate) fn decode_node(bytes: &[u8]) -> Result<Option<String>, ()> {
    let text = std::str::from_utf8(bytes).map_err(|_| ())?;
    if text == NODE_CLEARED {
        return Ok(None);
    }
    text.strip_prefix(NODE_MARK)
        .map(|node| Some(node.to_owned()))
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_round_trips_with_extreme_values() {
        let mut device = Device::default();
        device.channels.insert("idle".into(), None);
        device.channels.insert(
            "busy".into(),
            Some(Slot::from(Update {
                version: i64::MAX as u64,
                data: Some("quote \" backslash \\ nul \u{0} é".into()),
                expires_at: u64::MAX,
            })),
        );
        let decoded = Device::decode(&device.encode().unwrap()).unwrap();
        assert_eq!(decoded, device);
    }

    #[test]
    fn encoding_is_compact() {
        let mut device = Device::default();
        device.channels.insert("c".into(), Some(Slot(7, 9, None)));
        assert_eq!(device.encode().unwrap(), br#"{"c":{"c":[7,9,null]}}"#);
    }

    #[test]
    fn garbage_is_not_a_device() {
        assert!(Device::decode(b"\xff\x00").is_err());
        assert!(Device::decode(b"{\"c\":{\"x\":[1]}}").is_err());
    }

    #[test]
    fn pending_splits_live_and_expired() {
        let mut device = Device::default();
        device
            .channels
            .insert("live".into(), Some(Slot(1, 20, None)));
        device
            .channels
            .insert("old".into(), Some(Slot(2, 10, None)));
        device.channels.insert("none".into(), None);
        let pending = device.pending(10);
        assert_eq!(pending.expired, vec![ChannelId::new("old")]);
        assert_eq!(pending.updates.len(), 1);
        assert_eq!(pending.updates[0].0, ChannelId::new("live"));
    }

    #[test]
    fn node_values_round_trip_and_clear() {
        for node in ["http://a:3000", "", "-", "@"] {
            assert_eq!(
                decode_node(encode_node(node).as_bytes()),
                Ok(Some(node.to_owned()))
            );
        }
        assert_eq!(decode_node(NODE_CLEARED.as_bytes()), Ok(None));
        assert_eq!(decode_node(b"http://a"), Err(()));
        assert_eq!(decode_node(b"\xff"), Err(()));
    }
}
