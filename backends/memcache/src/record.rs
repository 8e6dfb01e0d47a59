//! How a device is stored: one compact item per uaid holding when the device was last
//! seen, its channels, their pending updates and the index of its queued WebPush
//! messages; one item per queued message holding its body; and a small item naming its
//! node.
//!
//! A device item is a layout byte and then the record in postcard's binary encoding:
//! every string is its length (a varint) and its bytes as they are, so a record's size
//! follows from its contents alone ([`Device::encoded_len`]) whatever characters the
//! data holds. Records are written in the [`SEEN`] layout: the time the device was last
//! seen, its channels, then the index (an empty one is a single byte). Records of the
//! earlier layouts are still read, as holding no last-seen time: the [`BINARY`] layout
//! (channels only, before WebPush), the [`QUEUED`] one (channels, then the index) and,
//! before them, JSON (it starts with `{`, never with a layout byte). Their next change
//! writes them in the [`SEEN`] layout, which earlier builds cannot read.
//!
//! A message item ([`MessageItem`]) is a layout byte ([`MESSAGE`]) and what the index
//! does not hold: the TTL, the urgency and the payload.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use simplepush_store::{ChannelId, Message, MessageId, Payload, Pending, Update, Urgency};

/// Everything stored for one device, in the item at [`crate::key::device`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Device {
    /// UNIX seconds (the clock of the node that saw it) when the device was last seen:
    /// its last register or touch. The record's lifetime runs from it. `None` in a
    /// record of an earlier layout (and in a new, empty one) until [`Device::stamp`].
    #[serde(skip)]
    pub(crate) seen: Option<u64>,
    /// Live channels by id, each with its pending update if any.
    #[serde(rename = "c", default)]
    pub(crate) channels: BTreeMap<String, Option<Slot>>,
    /// The index of the queued WebPush messages: by channel, ascending id. Never an
    /// empty list; a channel with nothing queued has no entry.
    #[serde(rename = "q", default)]
    pub(crate) queues: BTreeMap<String, Vec<Queued>>,
}

/// A queued message in the index, serialized as `[id, expires_at, topic]`: what
/// ordering, expiry, topic replacement and the bound need, without the body (which is
/// in its own item, at [`crate::key::message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queued(String, u64, Option<String>);

impl Queued {
    /// The index entry of `message`.
    pub(crate) fn of(message: &Message) -> Queued {
        Queued(
            message.id.as_str().to_owned(),
            message.expires_at,
            message.topic.clone(),
        )
    }

    /// The message id.
    pub(crate) fn id(&self) -> &str {
        &self.0
    }

    /// UNIX seconds from which the message is no longer delivered.
    pub(crate) fn expires_at(&self) -> u64 {
        self.1
    }

    /// The message's topic, if it has one.
    pub(crate) fn topic(&self) -> Option<&str> {
        self.2.as_deref()
    }

    /// Whether the message has expired at `now`.
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        self.1 <= now
    }

    /// Its bytes in a record: the id, the expiry, the topic's tag and the topic.
    fn encoded_len(&self) -> usize {
        str_len(&self.0) + varint_len(self.1) + 1 + self.2.as_deref().map_or(0, str_len)
    }
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

/// The first byte of a device item in the binary layout of nodes before WebPush: the
/// channels only. Read, no longer written.
const BINARY: u8 = 1;

/// The first byte of a device item in the layout of nodes before last-seen times: the
/// channels, then the index (written only with messages queued). Read, no longer
/// written.
const QUEUED: u8 = 2;

/// The first byte of a device item in the layout written now: the last-seen time, the
/// channels, then the index.
const SEEN: u8 = 3;

/// The first byte of a message item.
const MESSAGE: u8 = 1;

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
    /// Decodes an item, in a binary layout or the JSON one before them; an error (its
    /// reason) when it is not a device record. A record of a layout before [`SEEN`]
    /// has no last-seen time.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Device, String> {
        match bytes.split_first() {
            Some((&SEEN, record)) => {
                let (seen, channels, queues) = decode_all(record)?;
                Ok(Device {
                    seen: Some(seen),
                    channels,
                    queues,
                })
            }
            Some((&BINARY, record)) => Ok(Device {
                channels: decode_all(record)?,
                ..Device::default()
            }),
            Some((&QUEUED, record)) => {
                let (channels, queues) = decode_all(record)?;
                Ok(Device {
                    channels,
                    queues,
                    ..Device::default()
                })
            }
            _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }

    /// Records the device as seen at `now` (UNIX seconds) when `see`; a record without
    /// a last-seen time (of an earlier layout, or new) counts as seen at `now` too, so
    /// its first write in the [`SEEN`] layout gives it a whole lifetime, as every write
    /// did before. Called before every write.
    pub(crate) fn stamp(&mut self, see: bool, now: u64) {
        if see || self.seen.is_none() {
            self.seen = Some(now);
        }
    }

    /// Encodes the record for storing, in the [`SEEN`] layout, in
    /// [`Device::encoded_len`] bytes. Call [`Device::stamp`] first: a record without a
    /// last-seen time is written as seen at 0.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        bytes.push(SEEN);
        let record = (self.seen.unwrap_or_default(), &self.channels, &self.queues);
        postcard::to_extend(&record, bytes)
    }

    /// The size of [`Device::encode`]'s output, computed without encoding: the layout
    /// byte, the last-seen time, the channel count, and per channel its id, the slot's
    /// tag and, with an update pending, its version, expiry and data; then the count of
    /// queues (one byte for none) and per queue its channel id, its length and its
    /// entries.
    pub(crate) fn encoded_len(&self) -> usize {
        let channels: usize = self
            .channels
            .iter()
            .map(|(channel, slot)| {
                str_len(channel) + 1 + slot.as_ref().map_or(0, Slot::encoded_len)
            })
            .sum();
        let queues: usize = self
            .queues
            .iter()
            .map(|(channel, queue)| {
                let entries: usize = queue.iter().map(Queued::encoded_len).sum();
                str_len(channel) + varint_len(queue.len() as u64) + entries
            })
            .sum();
        let seen = varint_len(self.seen.unwrap_or_default());
        let index = varint_len(self.queues.len() as u64) + queues;
        1 + seen + varint_len(self.channels.len() as u64) + channels + index
    }

    /// The queued messages not expired at `now`, each with its channel, ascending id.
    pub(crate) fn queued(&self, now: u64) -> Vec<(&str, &Queued)> {
        let mut all: Vec<(&str, &Queued)> = self
            .queues
            .iter()
            .flat_map(|(channel, queue)| queue.iter().map(move |q| (channel.as_str(), q)))
            .filter(|(_, queued)| !queued.expired_at(now))
            .collect();
        all.sort_unstable_by(|a, b| a.1.id().cmp(b.1.id()));
        all
    }

    /// Whether a message not expired at `now` is queued.
    pub(crate) fn has_queued(&self, now: u64) -> bool {
        self.queues
            .values()
            .flatten()
            .any(|queued| !queued.expired_at(now))
    }

    /// Removes the index entries for which `drop` holds, forgetting emptied queues;
    /// answers the removed entries.
    pub(crate) fn remove_queued(
        &mut self,
        mut drop: impl FnMut(&str, &Queued) -> bool,
    ) -> Vec<Queued> {
        let mut removed = Vec::new();
        self.queues.retain(|channel, queue| {
            queue.retain(|queued| {
                let gone = drop(channel, queued);
                if gone {
                    removed.push(queued.clone());
                }
                !gone
            });
            !queue.is_empty()
        });
        removed
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

/// Decodes `bytes` as one postcard value with nothing after it.
fn decode_all<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// What a message item holds: the parts of a [`Message`] the index does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageItem {
    ttl: u64,
    /// [`Urgency`] as 0 (very low) to 3 (high).
    urgency: u8,
    payload: Option<ItemPayload>,
}

/// A [`Payload`] in a message item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ItemPayload {
    encoding: String,
    encryption: Option<String>,
    crypto_key: Option<String>,
    body: Vec<u8>,
}

impl MessageItem {
    /// The item of `message`.
    pub(crate) fn of(message: &Message) -> MessageItem {
        let urgency = match message.urgency {
            Urgency::VeryLow => 0,
            Urgency::Low => 1,
            Urgency::Normal => 2,
            Urgency::High => 3,
        };
        MessageItem {
            ttl: message.ttl,
            urgency,
            payload: message.payload.as_ref().map(|payload| ItemPayload {
                encoding: payload.encoding.clone(),
                encryption: payload.encryption.clone(),
                crypto_key: payload.crypto_key.clone(),
                body: payload.body.clone(),
            }),
        }
    }

    /// Encodes the item for storing.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_extend(self, vec![MESSAGE])
    }

    /// Decodes an item; an error (its reason) when it is not a message item.
    pub(crate) fn decode(bytes: &[u8]) -> Result<MessageItem, String> {
        match bytes.split_first() {
            Some((&MESSAGE, item)) => decode_all(item),
            _ => Err("not a message item".into()),
        }
    }

    /// The message of `channel` this item holds the body of, whose index entry is
    /// `queued`; an error when the urgency is out of range.
    pub(crate) fn into_message(self, channel: &str, queued: &Queued) -> Result<Message, String> {
        let urgency = match self.urgency {
            0 => Urgency::VeryLow,
            1 => Urgency::Low,
            2 => Urgency::Normal,
            3 => Urgency::High,
            other => return Err(format!("urgency {other} out of range")),
        };
        Ok(Message {
            id: MessageId::new(queued.id()),
            channel: ChannelId::new(channel),
            ttl: self.ttl,
            expires_at: queued.expires_at(),
            topic: queued.topic().map(str::to_owned),
            urgency,
            payload: self.payload.map(|payload| Payload {
                encoding: payload.encoding,
                encryption: payload.encryption,
                crypto_key: payload.crypto_key,
                body: payload.body,
            }),
        })
    }
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
        let mut device = Device {
            seen: Some(u64::MAX),
            ..Device::default()
        };
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
        device.seen = Some(0);
        let decoded = Device::decode(&device.encode().unwrap()).unwrap();
        assert_eq!(decoded, device);
    }

    #[test]
    fn encoding_is_compact() {
        let mut device = Device {
            seen: Some(300),
            ..Device::default()
        };
        device.channels.insert("c".into(), Some(Slot(7, 9, None)));
        device.channels.insert("d".into(), None);
        // Layout, seen at 300 (two varint bytes), 2 channels; "c", a slot: 7, 9, no
        // data; "d", no slot; no queues.
        assert_eq!(
            device.encode().unwrap(),
            [SEEN, 0xac, 0x02, 2, 1, b'c', 1, 7, 9, 0, 1, b'd', 0, 0]
        );
    }

    #[test]
    fn a_stamp_records_a_sighting_and_dates_an_undated_record() {
        let mut device = Device::default();
        device.stamp(false, 50);
        assert_eq!(device.seen, Some(50), "undated: seen when written");
        device.stamp(false, 60);
        assert_eq!(
            device.seen,
            Some(50),
            "a write that is no sighting keeps it"
        );
        device.stamp(true, 70);
        assert_eq!(device.seen, Some(70));
        // Set, not raised: a clock behind is believed.
        device.stamp(true, 65);
        assert_eq!(device.seen, Some(65));
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
        // The largest last-seen time, for the bound.
        let mut device = Device {
            seen: Some(u64::MAX),
            ..Device::default()
        };
        for i in 0..200 {
            let channel = format!("{i:08x}-0000-4000-8000-000000000000");
            let slot = Slot(i64::MAX as u64, u64::MAX, Some(data.clone()));
            device.channels.insert(channel, Some(slot));
            assert_eq!(device.encode().unwrap().len(), device.encoded_len());
        }
        // Every channel at the bound: 36-byte ids, the largest varints, 4096 bytes;
        // then the index, empty: one byte.
        let bound = 1 + MAX_VARINT + varint_len(200) + 200 * max_channel_len(36, 4096) + 1;
        assert_eq!(device.encoded_len(), bound - 200);
        assert_eq!(max_channel_len(36, 4096), 4157);
        assert_eq!(bound, 831_414);
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
        // The layout, seen at 0, no channels, no queues.
        assert_eq!(Device::default().encode().unwrap(), [SEEN, 0, 0, 0]);
    }

    /// The index entry of a message with these values.
    fn queued(id: &str, expires_at: u64, topic: Option<&str>) -> Queued {
        Queued(id.into(), expires_at, topic.map(str::to_owned))
    }

    #[test]
    fn size_is_the_formula_with_queued_messages() {
        let mut device = Device {
            seen: Some(1_700_000_000),
            ..Device::default()
        };
        device.channels.insert("c".into(), Some(Slot(7, 9, None)));
        let before = device.encode().unwrap();
        assert_eq!(before.len(), device.encoded_len());
        for i in 0..300u64 {
            let channel = format!("{:08x}-0000-4000-8000-000000000000", i % 7);
            let topic = (i % 3 == 0).then(|| "t".repeat((i % 33) as usize));
            let id = format!("{:016x}{}", u64::MAX - i, "z".repeat((i % 48) as usize));
            device.channels.insert(channel.clone(), None);
            device.queues.entry(channel).or_default().push(queued(
                &id,
                i * 1_000_003,
                topic.as_deref(),
            ));
            let encoded = device.encode().unwrap();
            assert_eq!(encoded[0], SEEN);
            assert_eq!(encoded.len(), device.encoded_len(), "{i}");
            assert_eq!(Device::decode(&encoded).unwrap(), device);
        }
        // One entry with the largest values: a 64-byte id, the largest expiry, a
        // 32-byte topic: 1 + 64 + 10 + 1 + 1 + 32 bytes.
        let entry = queued(&"i".repeat(64), u64::MAX, Some(&"t".repeat(32)));
        assert_eq!(entry.encoded_len(), 109);
        // Emptied of messages, the device is written as before.
        device.queues.clear();
        device.channels.retain(|channel, _| channel == "c");
        assert_eq!(device.encode().unwrap(), before);
    }

    #[test]
    fn queued_is_unexpired_by_ascending_id_over_channels() {
        let mut device = Device::default();
        device.queues.insert(
            "a".into(),
            vec![queued("1", 20, None), queued("4", 20, None)],
        );
        device.queues.insert(
            "b".into(),
            vec![queued("2", 10, None), queued("3", 20, Some("t"))],
        );
        let ids: Vec<(&str, &str)> = device
            .queued(10)
            .into_iter()
            .map(|(channel, queued)| (channel, queued.id()))
            .collect();
        assert_eq!(ids, [("a", "1"), ("b", "3"), ("a", "4")]);
        assert!(device.has_queued(19));
        assert!(!device.has_queued(20));
        let removed = device.remove_queued(|channel, queued| channel == "b" || queued.id() == "1");
        assert_eq!(removed.len(), 3);
        // Emptied queues are forgotten.
        assert_eq!(device.queues.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn message_items_round_trip() {
        let mut message = Message {
            id: MessageId::new("0001"),
            channel: ChannelId::new("c"),
            ttl: u64::MAX,
            expires_at: 77,
            topic: Some("news".into()),
            urgency: Urgency::VeryLow,
            payload: Some(Payload {
                encoding: "aesgcm".into(),
                encryption: Some("salt=x".into()),
                crypto_key: Some("dh=y".into()),
                body: (0..=255).collect(),
            }),
        };
        for urgency in [
            Urgency::VeryLow,
            Urgency::Low,
            Urgency::Normal,
            Urgency::High,
        ] {
            message.urgency = urgency;
            let encoded = MessageItem::of(&message).encode().unwrap();
            assert_eq!(encoded[0], MESSAGE);
            let item = MessageItem::decode(&encoded).unwrap();
            let back = item.into_message("c", &Queued::of(&message)).unwrap();
            assert_eq!(back, message);
        }
        message.payload = None;
        message.topic = None;
        let encoded = MessageItem::of(&message).encode().unwrap();
        let item = MessageItem::decode(&encoded).unwrap();
        assert_eq!(
            item.into_message("c", &Queued::of(&message)).unwrap(),
            message
        );
        // Not message items: empty, another layout, trailing bytes, a bad urgency.
        assert!(MessageItem::decode(b"").is_err());
        assert!(MessageItem::decode(&[2, 0, 0, 0]).is_err());
        assert!(MessageItem::decode(&[encoded.as_slice(), &[0]].concat()).is_err());
        let bad = MessageItem::decode(&[MESSAGE, 5, 4, 0]).unwrap();
        assert!(bad.into_message("c", &Queued::of(&message)).is_err());
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

    /// Stamps `device` as written at `now` (undated: seen then), encodes it and
    /// checks that it reads back as that, in the [`SEEN`] layout.
    fn rewritten(mut device: Device, now: u64) -> Device {
        device.stamp(false, now);
        let encoded = device.encode().unwrap();
        assert_eq!(encoded[0], SEEN);
        assert_eq!(encoded.len(), device.encoded_len());
        let back = Device::decode(&encoded).unwrap();
        assert_eq!(back, device);
        back
    }

    #[test]
    fn records_in_the_json_layout_are_still_read() {
        let old = r#"{"c":{"idle":null,"busy":[7,9,"quote \" nul \u0000 é"]}}"#;
        let device = Device::decode(old.as_bytes()).unwrap();
        assert_eq!(device.seen, None, "no last-seen time");
        assert_eq!(device.channels.len(), 2);
        assert_eq!(device.channels["idle"], None);
        assert_eq!(
            device.channels["busy"],
            Some(Slot(7, 9, Some("quote \" nul \u{0} é".into())))
        );
        // Rewritten in the current layout, seen when written, it reads back the same.
        let back = rewritten(device.clone(), 1_700_000_000);
        assert_eq!(back.seen, Some(1_700_000_000));
        assert_eq!(
            (back.channels, back.queues),
            (device.channels, device.queues)
        );
        assert_eq!(Device::decode(b"{}").unwrap(), Device::default());
    }

    #[test]
    fn records_in_the_binary_layouts_before_last_seen_times_are_still_read() {
        // Before WebPush: one channel "c" with update 7 expiring at 9.
        let old = [BINARY, 1, 1, b'c', 1, 7, 9, 0];
        let device = Device::decode(&old).unwrap();
        assert_eq!(device.seen, None);
        assert!(device.queues.is_empty());
        assert_eq!(device.channels["c"], Some(Slot(7, 9, None)));
        let back = rewritten(device, 1_700_000_000);
        assert_eq!(back.channels["c"], Some(Slot(7, 9, None)));
        // With queued messages: channel "c" without an update, then its queue of one
        // entry (id "i", expiring at 9, topic "t").
        let old = [QUEUED, 1, 1, b'c', 0, 1, 1, b'c', 1, 1, b'i', 9, 1, 1, b't'];
        let device = Device::decode(&old).unwrap();
        assert_eq!(device.seen, None);
        assert_eq!(device.channels["c"], None);
        let entry = queued("i", 9, Some("t"));
        assert_eq!(device.queues["c"], std::slice::from_ref(&entry));
        let back = rewritten(device, 1_700_000_000);
        assert_eq!(back.queues["c"], [entry]);
        assert_eq!(back.seen, Some(1_700_000_000));
    }

    #[test]
    fn garbage_is_not_a_device() {
        assert!(Device::decode(b"\xff\x00").is_err());
        assert!(Device::decode(b"").is_err());
        assert!(Device::decode(b"{\"c\":{\"x\":[1]}}").is_err());
        // The current layout: truncated, trailing bytes, a string that is not UTF-8,
        // no channels or no index after the last-seen time.
        let mut device = Device::default();
        device.channels.insert("c".into(), Some(Slot(7, 9, None)));
        let encoded = device.encode().unwrap();
        assert!(Device::decode(&encoded[..encoded.len() - 1]).is_err());
        assert!(Device::decode(&[encoded.as_slice(), &[0]].concat()).is_err());
        assert!(Device::decode(&[SEEN, 5, 1, 1, 0xff, 0, 0]).is_err());
        assert!(Device::decode(&[SEEN]).is_err());
        assert!(Device::decode(&[SEEN, 5]).is_err());
        assert!(Device::decode(&[SEEN, 5, 0]).is_err());
        assert!(Device::decode(&[SEEN, 0x80]).is_err());
        assert!(Device::decode(&[SEEN, 5, 0, 0]).is_ok());
        // The binary layout before WebPush.
        assert!(Device::decode(&[BINARY, 1, 1, 0xff, 0]).is_err());
        assert!(Device::decode(&[BINARY]).is_err());
        assert!(Device::decode(&[BINARY, 1, 1, b'c', 0, 0]).is_err());
        // The queued layout: no index after the channels, a truncated entry.
        assert!(Device::decode(&[QUEUED, 0]).is_err());
        assert!(Device::decode(&[QUEUED, 0, 1, 1, b'c', 1, 1, b'i']).is_err());
        assert!(Device::decode(&[QUEUED, 0, 1, 1, b'c', 1, 1, b'i', 9, 0]).is_ok());
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
