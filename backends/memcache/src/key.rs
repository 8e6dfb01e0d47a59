//! Memcached keys for a device's records. Uaids come from devices, so they are used
//! verbatim only when plainly safe, and hashed otherwise; message ids likewise.

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use simplepush_store::Uaid;

/// The prefix of every key this store writes; the digit is the layout version.
const PREFIX: &str = "sp1";

/// The longest uaid used verbatim; longer ones are hashed. Keeps every key far below
/// memcached's 250-byte limit.
const MAX_VERBATIM: usize = 128;

/// The longest message id used verbatim (the ids the server mints are at most 64
/// bytes): a message key is at most `sp1:m:` (6), a uaid part (128), `:` and a message
/// id part (65, hashed), 200 bytes.
const MAX_VERBATIM_MESSAGE: usize = 64;

/// The key of the item holding a device's channels and pending updates.
pub(crate) fn device(uaid: &Uaid) -> String {
    format!("{PREFIX}:d:{}", id_part(uaid.as_str(), MAX_VERBATIM))
}

/// The key of the item holding the body of queued message `id` of `uaid`. The uaid
/// part never holds `:`, so two (uaid, id) pairs never share a key.
pub(crate) fn message(uaid: &Uaid, id: &str) -> String {
    format!(
        "{PREFIX}:m:{}:{}",
        id_part(uaid.as_str(), MAX_VERBATIM),
        id_part(id, MAX_VERBATIM_MESSAGE)
    )
}

/// The key of the item naming the node a device is connected to.
pub(crate) fn node(uaid: &Uaid) -> String {
    format!("{PREFIX}:n:{}", id_part(uaid.as_str(), MAX_VERBATIM))
}

/// A fresh key for one health-check round trip.
pub(crate) fn check() -> String {
    format!("{PREFIX}:check:{:016x}", fastrand::u64(..))
}

/// `id` itself when it is at most `max` bytes and made only of `[A-Za-z0-9_-]` (every
/// uaid the server mints or keeps is); otherwise `~` and the hex SHA-256 of it. `~`
/// never occurs in a verbatim id, so two different ids never share a key.
fn id_part(id: &str, max: usize) -> Cow<'_, str> {
    let verbatim = !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if verbatim {
        return Cow::Borrowed(id);
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut hashed = String::with_capacity(1 + 2 * digest.len());
    hashed.push('~');
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(hashed, "{byte:02x}");
    }
    Cow::Owned(hashed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What memcached accepts as a key: 1..=250 bytes, no whitespace or control bytes.
    fn memcached_safe(key: &str) -> bool {
        !key.is_empty() && key.len() <= 250 && key.bytes().all(|b| b.is_ascii_graphic())
    }

    #[test]
    fn minted_uaids_are_used_verbatim() {
        let uaid = Uaid::new("0123456789abcdef0123456789abcdef");
        assert_eq!(device(&uaid), "sp1:d:0123456789abcdef0123456789abcdef");
        assert_eq!(node(&uaid), "sp1:n:0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn unsafe_or_long_uaids_are_hashed_into_safe_keys() {
        let long = "x".repeat(300);
        for id in ["has space", "new\nline", "", "ünïcode", "tab\there", &long] {
            let key = device(&Uaid::new(id));
            assert!(memcached_safe(&key), "{key:?}");
            assert!(key.starts_with("sp1:d:~"), "{key:?}");
            assert_eq!(key.len(), "sp1:d:~".len() + 64);
        }
    }

    #[test]
    fn different_uaids_get_different_keys() {
        let ids = ["a", "A", "a b", "a_b", "a-b", "~", "abc", "abd"];
        let mut keys: Vec<String> = ids.iter().map(|id| device(&Uaid::new(*id))).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), ids.len());
    }

    #[test]
    fn device_and_node_keys_differ() {
        let uaid = Uaid::new("abc");
        assert_ne!(device(&uaid), node(&uaid));
    }

    #[test]
    fn message_keys_are_safe_and_distinct() {
        let uaid = Uaid::new("0123456789abcdef0123456789abcdef");
        let id = "0000000000000001-ab_c";
        assert_eq!(
            message(&uaid, id),
            "sp1:m:0123456789abcdef0123456789abcdef:0000000000000001-ab_c"
        );
        let long_uaid = Uaid::new("u".repeat(MAX_VERBATIM));
        let long = "x".repeat(65);
        let hostile = ["a:b", long.as_str(), "!\"#$%", ""];
        for id in hostile {
            let key = message(&long_uaid, id);
            assert!(memcached_safe(&key), "{key:?}");
            assert!(key.len() <= 200, "{}", key.len());
        }
        let mut keys: Vec<String> = hostile.iter().map(|id| message(&uaid, id)).collect();
        keys.push(message(&Uaid::new("other"), hostile[0]));
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), hostile.len() + 1);
        assert_ne!(message(&uaid, id), device(&uaid));
    }

    #[test]
    fn check_keys_are_safe_and_fresh() {
        let (a, b) = (check(), check());
        assert!(memcached_safe(&a));
        assert_ne!(a, b);
    }
}
