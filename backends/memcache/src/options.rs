//! How the memcache store is tuned, and how its item lifetime becomes a memcached
//! expiration time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Tuning of [`crate::MemcacheStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcacheOptions {
    /// Connections kept per memcached server (default 16).
    pub pool_size: u32,
    /// How long one memcached operation (connecting, sending, reading the answer) may
    /// take before the store answers `Unavailable` (default 1 s). Must not be zero.
    pub timeout: Duration,
    /// How long a device's items live after their last write (default 30 days). The
    /// server passes at least its `message_ttl`, so pending updates never vanish before
    /// they expire. [`Duration::ZERO`] means items never expire (memcached may still
    /// evict them under memory pressure).
    pub ttl: Duration,
    /// The largest item the memcached servers store, in bytes: their `-I` setting
    /// (default 1 MiB). A device's record must fit in one item, less room for the
    /// item's header and key; a change that would not fit is refused with
    /// `StoreError::TooLarge`. At least 1024, and never more than the servers' `-I`:
    /// memcached drops the item a too-large write was to replace.
    pub item_limit: usize,
}

impl Default for MemcacheOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            timeout: Duration::from_secs(1),
            ttl: Duration::from_secs(RELATIVE_LIMIT),
            item_limit: 1024 * 1024,
        }
    }
}

/// Memcached reads an expiration up to 30 days as seconds from now, and anything
/// greater as an absolute UNIX time.
const RELATIVE_LIMIT: u64 = 30 * 24 * 3600;

/// The memcached expiration field for an item written now that should live `ttl`.
pub(crate) fn expiration(ttl: Duration) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    expiration_at(ttl, now)
}

/// [`expiration`] at the UNIX time `now`.
fn expiration_at(ttl: Duration, now: u64) -> u32 {
    if ttl.is_zero() {
        return 0;
    }
    // Round sub-second lifetimes up: 0 would mean "never expire".
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let field = if seconds <= RELATIVE_LIMIT {
        seconds
    } else {
        now.saturating_add(seconds)
    };
    u32::try_from(field).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn short_lifetimes_are_relative_seconds() {
        assert_eq!(
            expiration_at(Duration::from_secs(3 * 24 * 3600), NOW),
            259_200
        );
        assert_eq!(
            expiration_at(Duration::from_secs(RELATIVE_LIMIT), NOW),
            2_592_000
        );
    }

    #[test]
    fn sub_second_lifetimes_round_up_not_to_forever() {
        assert_eq!(expiration_at(Duration::from_millis(1), NOW), 1);
        assert_eq!(expiration_at(Duration::from_millis(1500), NOW), 2);
    }

    #[test]
    fn long_lifetimes_are_absolute_times() {
        let ttl = Duration::from_secs(RELATIVE_LIMIT + 1);
        assert_eq!(u64::from(expiration_at(ttl, NOW)), NOW + RELATIVE_LIMIT + 1);
    }

    #[test]
    fn zero_means_never_and_huge_saturates() {
        assert_eq!(expiration_at(Duration::ZERO, NOW), 0);
        assert_eq!(expiration_at(Duration::from_secs(u64::MAX), NOW), u32::MAX);
    }

    #[test]
    fn defaults_are_documented_ones() {
        let options = MemcacheOptions::default();
        assert_eq!(options.pool_size, 16);
        assert_eq!(options.timeout, Duration::from_secs(1));
        assert_eq!(options.ttl, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(options.item_limit, 1_048_576);
    }
}
