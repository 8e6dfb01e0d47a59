//! How uaids, channel ids and message ids become RocksDB keys.
//!
//! A channel key is `len(uaid) as u32 BE ++ uaid ++ channel`, a message key
//! `len(uaid) as u32 BE ++ uaid ++ message id` (each in its own column family). The
//! length prefix makes the uaid part unambiguous whatever bytes ids contain, so the keys
//! of one uaid are exactly the keys starting with [`uaid_prefix`], and no other uaid's
//! keys interleave with them. Message ids increase as byte strings in arrival order,
//! which is RocksDB's key order, so a prefix scan yields a device's queue oldest first.
//!
//! Retention's two indexes lead with a big-endian time, so that everything before a
//! time is one range from the start: a `seen` key is `last seen as u64 BE ++ uaid`, an
//! `expiry` key `expires_at as u64 BE ++ message key`.

use simplepush_store::{ChannelId, MessageId, StoreError, Uaid};

/// The prefix every channel key of `uaid` starts with.
pub(crate) fn uaid_prefix(uaid: &Uaid) -> Result<Vec<u8>, StoreError> {
    raw_uaid_prefix(uaid.as_str().as_bytes())
}

/// [`uaid_prefix`] of a uaid as stored (the bytes of a `devices` or `seen` key).
pub(crate) fn raw_uaid_prefix(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Internal(format!("uaid of {} bytes is too long", bytes.len())))?;
    let mut prefix = Vec::with_capacity(4 + bytes.len());
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(bytes);
    Ok(prefix)
}

/// The key of `channel` under `uaid`.
pub(crate) fn channel(uaid: &Uaid, channel: &ChannelId) -> Result<Vec<u8>, StoreError> {
    let mut key = uaid_prefix(uaid)?;
    key.extend_from_slice(channel.as_str().as_bytes());
    Ok(key)
}

/// The key of message `id` under `uaid`.
pub(crate) fn message(uaid: &Uaid, id: &MessageId) -> Result<Vec<u8>, StoreError> {
    let mut key = uaid_prefix(uaid)?;
    key.extend_from_slice(id.as_str().as_bytes());
    Ok(key)
}

/// The channel id of a key found under `prefix`.
pub(crate) fn channel_of(prefix: &[u8], key: &[u8]) -> Result<ChannelId, StoreError> {
    id_of(prefix, key, "channel").map(ChannelId::new)
}

/// The message id of a key found under `prefix`.
pub(crate) fn message_id_of(prefix: &[u8], key: &[u8]) -> Result<MessageId, StoreError> {
    id_of(prefix, key, "message").map(MessageId::new)
}

/// The id that follows the uaid `prefix` in `key`, a `what` key.
fn id_of<'k>(prefix: &[u8], key: &'k [u8], what: &str) -> Result<&'k str, StoreError> {
    let rest = key
        .strip_prefix(prefix)
        .ok_or_else(|| StoreError::Internal(format!("{what} key outside its uaid prefix")))?;
    std::str::from_utf8(rest).map_err(|_| StoreError::Corrupt(format!("{what} id is not UTF-8")))
}

/// The uaid of a channel or message key (what follows its length prefix), if the key
/// is well formed.
pub(crate) fn uaid_of(key: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?);
    key.get(4..4 + usize::try_from(len).ok()?)
}

/// The `seen` index key of a device last seen at `at`.
pub(crate) fn seen(at: u64, uaid: &[u8]) -> Vec<u8> {
    timed(at, uaid)
}

/// The `expiry` index key of the message under `message_key` expiring at `at`.
pub(crate) fn expiry(at: u64, message_key: &[u8]) -> Vec<u8> {
    timed(at, message_key)
}

fn timed(at: u64, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + rest.len());
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

/// Splits a `seen` or `expiry` key into its time and what follows it.
pub(crate) fn split_timed(key: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let (at, rest) = key
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt("retention index key is too short".to_owned()))?;
    Ok((u64::from_be_bytes(*at), rest))
}

/// The exclusive upper bound of the `seen` or `expiry` keys with a time before `at`.
pub(crate) fn before(at: u64) -> Vec<u8> {
    at.to_be_bytes().to_vec()
}

/// The smallest key greater than every key starting with `prefix`, if there is one
/// (there is none when `prefix` is all `0xff`): the exclusive upper bound of a prefix
/// scan, so RocksDB stops at the end of the uaid instead of reading past it.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_key_round_trips_through_its_prefix() {
        let (u, c) = (Uaid::new("abc"), ChannelId::new("chan-1"));
        let prefix = uaid_prefix(&u).unwrap();
        let key = channel(&u, &c).unwrap();
        assert!(key.starts_with(&prefix));
        assert_eq!(channel_of(&prefix, &key).unwrap(), c);
    }

    #[test]
    fn message_keys_sort_like_their_ids_and_round_trip() {
        let u = Uaid::new("abc");
        let prefix = uaid_prefix(&u).unwrap();
        let ids = ["0001", "0001a", "0002", "01"].map(MessageId::new);
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| message(&u, id).unwrap()).collect();
        assert!(keys.is_sorted());
        for (id, key) in ids.iter().zip(&keys) {
            assert_eq!(&message_id_of(&prefix, key).unwrap(), id);
        }
    }

    #[test]
    fn a_uaid_that_extends_another_does_not_share_its_prefix() {
        let short = uaid_prefix(&Uaid::new("ab")).unwrap();
        let long_key = channel(&Uaid::new("abc"), &ChannelId::new("x")).unwrap();
        assert!(!long_key.starts_with(&short));
    }

    #[test]
    fn timed_keys_sort_by_time_and_split_back() {
        let early = seen(5, b"zzz");
        let late = seen(256, b"aaa");
        assert!(early < late, "big-endian times sort numerically");
        assert!(early < before(6) && late >= before(256));
        assert_eq!(split_timed(&late).unwrap(), (256, &b"aaa"[..]));
        assert!(split_timed(b"short").is_err());
    }

    #[test]
    fn uaid_of_reads_a_channel_or_message_key() {
        let u = Uaid::new("abc");
        let key = message(&u, &MessageId::new("m1")).unwrap();
        assert_eq!(uaid_of(&key), Some(&b"abc"[..]));
        assert_eq!(uaid_of(&[0, 0, 0, 9, b'a']), None, "length past the end");
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(&[1, 2, 3]), Some(vec![1, 2, 4]));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
