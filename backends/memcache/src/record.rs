//! How a device is stored: one compact item per uaid holding its channels and their
//! pending updates, and a small item naming its node.
//!
//! A device item is a layout byte ([`BINARY`]) and then the record in postcard's binary
//! encoding: every string is its length (a varint) and its bytes as they are, so a
//! record's size follows from its contents alone ([`Device::encoded_len`]) whatever
//! characters the data holds. Items written before that layout are JSON (they start
//! with `{`, never with [`BINARY`]) and are still read; the next change to such a device
//! writes it in the binary layout.

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

    /// Its bytes in a record (after the tag saying a slot is there).
    fn encoded_len(&self) -> usize {
        varint_len(self.0) + varint_len(self.1) + 1 + self.2.as_deref().map_or(0, str_len)
    }

    fn to_update(&self) -> Update {
        Update {
            version: self.0,
            expires_at: self.1,
            data: self.2.clone(),
        }
    }
}

/// The first byte of a device item in the binary layout.
const BINARY: u8 = 1;

/// The bytes of the varint of `value`: 7 bits per byte, at least one.
fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// The bytes a string takes in a record: its length's varint and the string itself.
fn str_len(text: &str) -> usize {
    varint_len(text.len() as u64) + text.len()
}

impl Device {
    /// Decodes an item, in the binary layout or the JSON one before it; an error (its
    /// reason) when it is not a device record.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Device, String> {
        match bytes.split_first() {
            Some((&BINARY, record)) => match postcard::take_from_bytes(record) {
                Ok((device, [])) => Ok(device),
                Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
                Err(e) => Err(e.to_string()),
            },
            _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }

    /// Encodes the record for storing, in [`Device::encoded_len`] bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        bytes.push(BINARY);
        postcard::to_extend(self, bytes)
    }

    /// The size of [`Device::encode`]'s output, computed without encoding: the layout
    /// byte, the channel count, and per channel its id, the slot's tag and, with an
    /// update pending, its version, expiry and data.
    pub(crate) fn encoded_len(&self) -> usize {
        let channels: usize = self
            .channels
            .iter()
            .map(|(channel, slot)| {
                str_len(channel) + 1 + slot.as_ref().map_or(0, Slot::encoded_len)
            })
            .sum();
        1 + varint_len(self.channels.len() as u64) + channels
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

    /// The most bytes a varint of a `u64` takes (7 bits per byte).
    const MAX_VARINT: usize = 10;

    /// The most bytes one channel takes in a record, whatever its values: the channel
    /// id (`channel_bytes` long), the slot's tag, version and expiry (a varint each, at
    /// most [`MAX_VARINT`]), and `data_bytes` of data with their tag and length.
    fn max_channel_len(channel_bytes: usize, data_bytes: usize) -> usize {
        varint_len(channel_bytes as u64)
            + channel_bytes
            + 1
            + 2 * MAX_VARINT
            + 1
            + varint_len(data_bytes as u64)
            + data_bytes
    }

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
        device.channels.insert("d".into(), None);
        // Layout, 2 channels; "c", a slot: 7, 9, no data; "d", no slot.
        assert_eq!(
            device.encode().unwrap(),
            [BINARY, 2, 1, b'c', 1, 7, 9, 0, 1, b'd', 0]
        );
    }

    /// Data that JSON escapes at up to six bytes per byte (`\u0001`).
    fn worst_case_data(len: usize) -> String {
        let pattern = ['\u{0}', '\u{1}', '"', '\\', '\u{1f}', 'é', '\u{7f}'];
        let mut data: String = pattern.iter().cycle().take(len).collect();
        while data.len() > len {
            data.pop();
        }
        while data.len() < len {
            data.push('\u{1}');
        }
        data
    }

    #[test]
    fn size_is_the_formula_whatever_the_data() {
        let data = worst_case_data(4096);
        assert_eq!(data.len(), 4096);
        let mut device = Device::default();
        for i in 0..200 {
            let channel = format!("{i:08x}-0000-4000-8000-000000000000");
            let slot = Slot(i64::MAX as u64, u64::MAX, Some(data.clone()));
            device.channels.insert(channel, Some(slot));
            assert_eq!(device.encode().unwrap().len(), device.encoded_len());
        }
        // Every channel at the bound: 36-byte ids, the largest varints, 4096 bytes.
        let bound = 1 + varint_len(200) + 200 * max_channel_len(36, 4096);
        assert_eq!(device.encoded_len(), bound - 200);
        assert_eq!(max_channel_len(36, 4096), 4157);
        // The protocol's largest device fits memcached's default item (1 MiB, less
        // room for the header and key), which its JSON did not.
        assert!(bound < 1024 * 1024 - 512, "{bound}");
        assert!(serde_json::to_vec(&device).unwrap().len() > 2 * 1024 * 1024);
        // Small values and empty slots too.
        device.channels.insert("x".into(), None);
        device
            .channels
            .insert("y".into(), Some(Slot(0, 0, Some(String::new()))));
        assert_eq!(device.encode().unwrap().len(), device.encoded_len());
        assert_eq!(Device::default().encode().unwrap().len(), 2);
    }

    #[test]
    fn varint_lengths() {
        let cases = [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3)];
        for (value, len) in cases {
            assert_eq!(varint_len(value), len, "{value}");
        }
        assert_eq!(varint_len(i64::MAX as u64), 9);
        assert_eq!(varint_len(u64::MAX), MAX_VARINT);
    }

    #[test]
    fn records_in_the_json_layout_are_still_read() {
        let old = r#"{"c":{"idle":null,"busy":[7,9,"quote \" nul \u0000 é"]}}"#;
        let device = Device::decode(old.as_bytes()).unwrap();
        assert_eq!(device.channels.len(), 2);
        assert_eq!(device.channels["idle"], None);
        assert_eq!(
            device.channels["busy"],
            Some(Slot(7, 9, Some("quote \" nul \u{0} é".into())))
        );
        // Re-encoded in the binary layout, it reads back the same.
        let encoded = device.encode().unwrap();
        assert_eq!(encoded[0], BINARY);
        assert_eq!(Device::decode(&encoded).unwrap(), device);
        assert_eq!(Device::decode(b"{}").unwrap(), Device::default());
    }

    #[test]
    fn garbage_is_not_a_device() {
        assert!(Device::decode(b"\xff\x00").is_err());
        assert!(Device::decode(b"").is_err());
        assert!(Device::decode(b"{\"c\":{\"x\":[1]}}").is_err());
        // Binary layout: truncated, trailing bytes, a string that is not UTF-8.
        let mut device = Device::default();
        device.channels.insert("c".into(), Some(Slot(7, 9, None)));
        let encoded = device.encode().unwrap();
        assert!(Device::decode(&encoded[..encoded.len() - 1]).is_err());
        assert!(Device::decode(&[encoded.as_slice(), &[0]].concat()).is_err());
        assert!(Device::decode(&[BINARY, 1, 1, 0xff, 0]).is_err());
        assert!(Device::decode(&[BINARY]).is_err());
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
