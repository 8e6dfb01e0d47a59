//! How uaids, channel ids and message ids become RocksDB keys.
//!
//! A channel key is `len(uaid) as u32 BE ++ uaid ++ channel`, a message key
//! `len(uaid) as u32 BE ++ uaid ++ message id` (each in its own column family). The
//! length prefix makes the uaid part unambiguous whatever bytes ids contain, so the keys
//! of one uaid are exactly the keys starting with [`uaid_prefix`], and no other uaid's
//! keys interleave with them. Message ids increase as byte strings in arrival order,
//! which is RocksDB's key order, so a prefix scan yields a device's queue oldest first.

use simplepush_store::{ChannelId, MessageId, StoreError, Uaid};

/// The prefix every channel key of `uaid` starts with.
pub(crate) fn uaid_prefix(uaid: &Uaid) -> Result<Vec<u8>, StoreError> {
    let bytes = uaid.as_str().as_bytes();
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
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(&[1, 2, 3]), Some(vec![1, 2, 4]));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
