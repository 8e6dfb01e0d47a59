//! How the values stored in RocksDB are encoded: a channel's pending slot, a node
//! record, and the format version.
//!
//! A channel value is empty when nothing is pending, otherwise
//! `TAG_UPDATE ++ version u64 BE ++ expires_at u64 BE ++ has_data u8 ++ data (UTF-8)`.
//! Anything else decodes to [`StoreError::Corrupt`].

use simplepush_store::{StoreError, Update};

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

/// A node record as stored.
pub(crate) fn decode_node(value: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(value.to_vec())
        .map_err(|_| StoreError::Corrupt("node record is not UTF-8".to_owned()))
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

    #[test]
    fn format_version_round_trips_and_rejects_garbage() {
        assert_eq!(decode_format(&encode_format(1)).unwrap(), 1);
        assert!(matches!(decode_format(b"xy"), Err(StoreError::Corrupt(_))));
    }
}
