//! How the values stored in RocksDB are encoded: a channel's pending slot, a queued
//! WebPush message, a node record, and the format version.
//!
//! A channel value is empty when nothing is pending, otherwise
//! `TAG_UPDATE ++ version u64 BE ++ expires_at u64 BE ++ has_data u8 ++ data (UTF-8)`.
//!
//! A message value (its id is the rest of its key, see [`crate::key`]) is
//! `MESSAGE_V1 ++ expires_at u64 BE ++ ttl u64 BE ++ urgency u8 ++ channel ++ topic? ++
//! payload?`, where a string is `len u32 BE ++ UTF-8`, an optional field is a `0` byte
//! or a `1` byte and the field, and the payload is `encoding ++ encryption? ++
//! crypto_key? ++ body`, the body being the raw bytes up to the end of the value.
//! What a queue scan looks at (expiry, channel, topic) comes first, so
//! [`decode_message_head`] reads it without copying the body.
//!
//! Anything else decodes to [`StoreError::Corrupt`].

use simplepush_store::{ChannelId, Message, MessageId, Payload, StoreError, Update, Urgency};

/// First byte of a channel value that holds a pending update.
const TAG_UPDATE: u8 = 1;
/// Bytes before the data: tag, version, expiry, has-data flag.
const HEADER_LEN: usize = 1 + 8 + 8 + 1;

/// The value of a channel with `pending` (or nothing) waiting.
pub(crate) fn encode_slot(pending: Option<&Update>) -> Vec<u8> {
    let Some(update) = pending else {
        return Vec::new();
    };
    let data = update.data.as_deref().unwrap_or_default().as_bytes();
    let mut value = Vec::with_capacity(HEADER_LEN + data.len());
    value.push(TAG_UPDATE);
    value.extend_from_slice(&update.version.to_be_bytes());
    value.extend_from_slice(&update.expires_at.to_be_bytes());
    value.push(u8::from(update.data.is_some()));
    value.extend_from_slice(data);
    value
}

/// The pending update a channel value holds, if any.
pub(crate) fn decode_slot(value: &[u8]) -> Result<Option<Update>, StoreError> {
    if value.is_empty() {
        return Ok(None);
    }
    let corrupt = |why: &str| StoreError::Corrupt(format!("channel record: {why}"));
    if value.len() < HEADER_LEN {
        return Err(corrupt("truncated"));
    }
    let (header, data) = value.split_at(HEADER_LEN);
    if header[0] != TAG_UPDATE {
        return Err(corrupt("unknown tag"));
    }
    let version = u64_at(header, 1).ok_or_else(|| corrupt("truncated version"))?;
    let expires_at = u64_at(header, 9).ok_or_else(|| corrupt("truncated expiry"))?;
    let data = match header[17] {
        0 if data.is_empty() => None,
        0 => return Err(corrupt("data after a no-data flag")),
        1 => Some(String::from_utf8(data.to_vec()).map_err(|_| corrupt("data is not UTF-8"))?),
        _ => return Err(corrupt("bad data flag")),
    };
    Ok(Some(Update {
        version,
        data,
        expires_at,
    }))
}

/// First byte of a message value: the version of its encoding. A new encoding takes the
/// next number, and the decoder keeps reading every older one.
const MESSAGE_V1: u8 = 1;

/// The value of a queued `message`.
pub(crate) fn encode_message(message: &Message) -> Result<Vec<u8>, StoreError> {
    let body_len = message.payload.as_ref().map_or(0, |p| p.body.len());
    let mut value = Vec::with_capacity(64 + body_len);
    value.push(MESSAGE_V1);
    value.extend_from_slice(&message.expires_at.to_be_bytes());
    value.extend_from_slice(&message.ttl.to_be_bytes());
    value.push(urgency_code(message.urgency));
    put_str(&mut value, message.channel.as_str())?;
    put_opt_str(&mut value, message.topic.as_deref())?;
    match &message.payload {
        None => value.push(0),
        Some(payload) => {
            value.push(1);
            put_str(&mut value, &payload.encoding)?;
            put_opt_str(&mut value, payload.encryption.as_deref())?;
            put_opt_str(&mut value, payload.crypto_key.as_deref())?;
            value.extend_from_slice(&payload.body);
        }
    }
    Ok(value)
}

/// What a queue scan decides on, borrowed from a message value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MessageHead<'a> {
    pub(crate) expires_at: u64,
    pub(crate) channel: &'a str,
    pub(crate) topic: Option<&'a str>,
}

/// The head of a message value, without the payload.
pub(crate) fn decode_message_head(value: &[u8]) -> Result<MessageHead<'_>, StoreError> {
    Ok(read_head(&mut Reader(value))?.0)
}

/// The message with id `id` whose value is `value`.
pub(crate) fn decode_message(id: MessageId, value: &[u8]) -> Result<Message, StoreError> {
    let mut reader = Reader(value);
    let (head, ttl, urgency) = read_head(&mut reader)?;
    let payload = match reader.u8()? {
        0 if reader.0.is_empty() => None,
        0 => return Err(message_corrupt("bytes after a no-payload flag")),
        1 => Some(Payload {
            encoding: reader.str()?.to_owned(),
            encryption: reader.opt_str()?.map(str::to_owned),
            crypto_key: reader.opt_str()?.map(str::to_owned),
            body: reader.0.to_vec(),
        }),
        _ => return Err(message_corrupt("bad payload flag")),
    };
    Ok(Message {
        id,
        channel: ChannelId::new(head.channel),
        ttl,
        expires_at: head.expires_at,
        topic: head.topic.map(str::to_owned),
        urgency,
        payload,
    })
}

/// Reads a message value up to its payload: the head, the ttl and the urgency.
fn read_head<'a>(reader: &mut Reader<'a>) -> Result<(MessageHead<'a>, u64, Urgency), StoreError> {
    match reader.u8()? {
        MESSAGE_V1 => {}
        _ => return Err(message_corrupt("unknown encoding version")),
    }
    let expires_at = reader.u64()?;
    let ttl = reader.u64()?;
    let urgency = match reader.u8()? {
        0 => Urgency::VeryLow,
        1 => Urgency::Low,
        2 => Urgency::Normal,
        3 => Urgency::High,
        _ => return Err(message_corrupt("unknown urgency")),
    };
    let channel = reader.str()?;
    let topic = reader.opt_str()?;
    let head = MessageHead {
        expires_at,
        channel,
        topic,
    };
    Ok((head, ttl, urgency))
}

/// The stored code of an urgency (read back by [`read_head`]); never reordered.
fn urgency_code(urgency: Urgency) -> u8 {
    match urgency {
        Urgency::VeryLow => 0,
        Urgency::Low => 1,
        Urgency::Normal => 2,
        Urgency::High => 3,
    }
}

fn put_str(value: &mut Vec<u8>, text: &str) -> Result<(), StoreError> {
    let len = u32::try_from(text.len())
        .map_err(|_| StoreError::Internal(format!("a field of {} bytes", text.len())))?;
    value.extend_from_slice(&len.to_be_bytes());
    value.extend_from_slice(text.as_bytes());
    Ok(())
}

fn put_opt_str(value: &mut Vec<u8>, text: Option<&str>) -> Result<(), StoreError> {
    match text {
        None => value.push(0),
        Some(text) => {
            value.push(1);
            put_str(value, text)?;
        }
    }
    Ok(())
}

fn message_corrupt(why: &str) -> StoreError {
    StoreError::Corrupt(format!("message record: {why}"))
}

/// Reads a message value front to back; every read past the end is corrupt.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < len {
            return Err(message_corrupt("truncated"));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let bytes = self.take(8)?;
        u64_at(bytes, 0).ok_or_else(|| message_corrupt("truncated"))
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let len = usize::try_from(len).map_err(|_| message_corrupt("field too long"))?;
        std::str::from_utf8(self.take(len)?).map_err(|_| message_corrupt("field is not UTF-8"))
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(message_corrupt("bad optional-field flag")),
        }
    }
}

/// A node record as stored.
pub(crate) fn decode_node(value: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(value.to_vec())
        .map_err(|_| StoreError::Corrupt("node record is not UTF-8".to_owned()))
}

/// A device's last-seen time as stored in the `devices` family.
pub(crate) fn encode_seen(at: u64) -> [u8; 8] {
    at.to_be_bytes()
}

/// Reads back [`encode_seen`].
pub(crate) fn decode_seen(value: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| StoreError::Corrupt("last-seen time is not 8 bytes".to_owned()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The format version as stored under the meta key.
pub(crate) fn encode_format(version: u32) -> [u8; 4] {
    version.to_be_bytes()
}

/// Reads back [`encode_format`].
pub(crate) fn decode_format(value: &[u8]) -> Result<u32, StoreError> {
    let bytes: [u8; 4] = value
        .try_into()
        .map_err(|_| StoreError::Corrupt("format version is not 4 bytes".to_owned()))?;
    Ok(u32::from_be_bytes(bytes))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 8)?;
    Some(u64::from_be_bytes(slice.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(version: u64, data: Option<&str>) -> Update {
        Update {
            version,
            data: data.map(str::to_owned),
            expires_at: 1234,
        }
    }

    #[test]
    fn slots_round_trip() {
        for pending in [
            None,
            Some(update(0, None)),
            Some(update(i64::MAX as u64, Some(""))),
            Some(update(u64::MAX, Some("data ✓"))),
        ] {
            let value = encode_slot(pending.as_ref());
            assert_eq!(decode_slot(&value).unwrap(), pending);
        }
    }

    #[test]
    fn damaged_slots_are_corrupt() {
        let good = encode_slot(Some(&update(5, Some("x"))));
        let mut bad_tag = good.clone();
        bad_tag[0] = 9;
        let mut bad_flag = good.clone();
        bad_flag[17] = 7;
        let mut not_utf8 = good.clone();
        not_utf8.push(0xff);
        let mut data_without_flag = good.clone();
        data_without_flag[17] = 0;
        for value in [
            &good[..5],
            &bad_tag[..],
            &bad_flag[..],
            &not_utf8[..],
            &data_without_flag[..],
        ] {
            assert!(matches!(decode_slot(value), Err(StoreError::Corrupt(_))));
        }
    }

    fn message(topic: Option<&str>, urgency: Urgency, payload: Option<Payload>) -> Message {
        Message {
            id: MessageId::new("0000000001-abc"),
            channel: ChannelId::new("chan ✓"),
            ttl: 60,
            expires_at: u64::MAX,
            topic: topic.map(str::to_owned),
            urgency,
            payload,
        }
    }

    fn payload(encryption: Option<&str>, body: &[u8]) -> Payload {
        Payload {
            encoding: "aesgcm".to_owned(),
            encryption: encryption.map(str::to_owned),
            crypto_key: Some("dh=abc".to_owned()),
            body: body.to_vec(),
        }
    }

    /// Every byte value, so a body that is not text round-trips.
    fn binary_body() -> Vec<u8> {
        (0..=255u8).rev().chain(0..=255).collect()
    }

    #[test]
    fn messages_round_trip() {
        for message in [
            message(None, Urgency::VeryLow, None),
            message(Some(""), Urgency::Low, Some(payload(None, b""))),
            message(
                Some("topic"),
                Urgency::High,
                Some(payload(Some("salt=x"), b"\0")),
            ),
            message(None, Urgency::Normal, Some(payload(None, &binary_body()))),
        ] {
            let value = encode_message(&message).unwrap();
            let decoded = decode_message(message.id.clone(), &value).unwrap();
            assert_eq!(decoded, message);
            let head = decode_message_head(&value).unwrap();
            assert_eq!(
                head,
                MessageHead {
                    expires_at: message.expires_at,
                    channel: message.channel.as_str(),
                    topic: message.topic.as_deref(),
                }
            );
        }
    }

    #[test]
    fn message_body_is_stored_raw_at_the_end() {
        let body = binary_body();
        let value =
            encode_message(&message(None, Urgency::Normal, Some(payload(None, &body)))).unwrap();
        assert!(value.ends_with(&body));
    }

    #[test]
    fn damaged_messages_are_corrupt() {
        let good = encode_message(&message(
            Some("t"),
            Urgency::High,
            Some(payload(Some("e"), b"body")),
        ))
        .unwrap();
        let id = || MessageId::new("id");
        // Cut before the body: every shorter value is missing a field.
        let body_at = good.len() - b"body".len();
        for len in 0..body_at {
            assert!(
                matches!(
                    decode_message(id(), &good[..len]),
                    Err(StoreError::Corrupt(_))
                ),
                "truncated to {len} bytes"
            );
        }
        let mut bad_version = good.clone();
        bad_version[0] = 2;
        let mut bad_urgency = good.clone();
        bad_urgency[17] = 4;
        let mut bad_channel = good.clone();
        bad_channel[22] = 0xff;
        // version, expiry, ttl, urgency, channel length, channel, then the topic flag.
        let topic_flag = 1 + 8 + 8 + 1 + 4 + "chan ✓".len();
        let mut bad_topic_flag = good.clone();
        bad_topic_flag[topic_flag] = 7;
        // The topic flag, its length, "t", then the payload flag.
        let mut bad_payload_flag = good.clone();
        bad_payload_flag[topic_flag + 1 + 4 + 1] = 7;
        let mut after_no_payload = encode_message(&message(None, Urgency::Normal, None)).unwrap();
        after_no_payload.push(0);
        for value in [
            bad_version,
            bad_urgency,
            bad_channel,
            bad_topic_flag,
            bad_payload_flag,
            after_no_payload,
        ] {
            assert!(matches!(
                decode_message(id(), &value),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn format_version_round_trips_and_rejects_garbage() {
        assert_eq!(decode_format(&encode_format(1)).unwrap(), 1);
        assert!(matches!(decode_format(b"xy"), Err(StoreError::Corrupt(_))));
    }
}
