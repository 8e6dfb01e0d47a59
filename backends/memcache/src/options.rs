//! How the memcache store is tuned, and how its item lifetime becomes a memcached
//! expiration time: for a device record, what is left of the lifetime since the device
//! was last seen.

use std::time::Duration;

/// Tuning of [`crate::MemcacheStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcacheOptions {
    /// Connections kept per memcached server (default 16).
    pub pool_size: u32,
    /// How long one memcached operation (connecting, sending, reading the answer) may
    /// take before the store answers `Unavailable` (default 1 s). Must not be zero.
    pub timeout: Duration,
    /// How long a device's items live after the device was last seen: its last
    /// register or touch (a hello), whatever else was written to it since (default 30
    /// days). A queued message's item lives no longer than its message, nor than the
    /// device record (plus a margin of two seconds). Every item is given a second
    /// more, for memcached's one-second clock, so it lives its lifetime and at most
    /// two seconds longer. [`Duration::ZERO`] means items never expire (memcached may
    /// still evict them under memory pressure).
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

/// This node's clock in UNIX seconds: the one memcached's lifetimes run on, in which
/// the store records when a device was last seen.
pub(crate) use simplepush_store::unix_now;

/// The memcached expiration field for an item written now that should live `ttl`.
pub(crate) fn expiration(ttl: Duration) -> u32 {
    expiration_at(ttl, unix_now())
}

/// `ttl` in whole seconds, rounded up (0 would mean "never expire"); `None` for
/// [`Duration::ZERO`], items that never expire.
pub(crate) fn whole_seconds(ttl: Duration) -> Option<u64> {
    (!ttl.is_zero()).then(|| ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
}

/// The seconds a device record has left at `now` (UNIX seconds) when the device was
/// last seen at `seen`: what is left of `ttl` since then, 0 once it is all gone, and
/// at most all of `ttl` (a `seen` ahead of `now`, from a node whose clock is ahead,
/// gives no more). Both times are whole seconds, rounded down, so as little as
/// `now - seen - 1` may have passed: that is what is counted, and the record never
/// ends early. `None` when items never expire.
pub(crate) fn record_left(ttl: Duration, seen: u64, now: u64) -> Option<u64> {
    let ttl = whole_seconds(ttl)?;
    let since = now.saturating_sub(seen).saturating_sub(1);
    Some(ttl.saturating_sub(since))
}

/// The memcached expiration field of a device record written at `now` whose device
/// was last seen at `seen` (see [`record_left`]); 0 (never) when items never expire.
/// A record with nothing left gets one second, no slack: the write that asks is
/// answered, and memcached forgets the record at its clock's next tick, the second
/// its lifetime (with the slack) ended anyway.
pub(crate) fn record_expiration(ttl: Duration, seen: u64, now: u64) -> u32 {
    match record_left(ttl, seen, now) {
        None => 0,
        Some(0) => 1,
        Some(left) => expiration_at(Duration::from_secs(left), now),
    }
}

/// The second every item is given beyond its lifetime. memcached's clock counts whole
/// seconds and ticks once a second on its own timer, so an item given `n` seconds ends
/// anywhere from just over `n - 1` to just under `n + 1` seconds after it was written:
/// given `n + 1`, it never ends before its lifetime (a device touched every `ttl / 2`
/// is never forgotten), and lasts at most two seconds longer.
const CLOCK_SLACK: u64 = 1;

/// [`expiration`] at the UNIX time `now`: `ttl` and [`CLOCK_SLACK`].
pub(crate) fn expiration_at(ttl: Duration, now: u64) -> u32 {
    let Some(seconds) = whole_seconds(ttl) else {
        return 0;
    };
    let seconds = seconds.saturating_add(CLOCK_SLACK);
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
    fn short_lifetimes_are_relative_seconds_and_a_second_of_slack() {
        assert_eq!(
            expiration_at(Duration::from_secs(3 * 24 * 3600), NOW),
            259_201
        );
        assert_eq!(
            expiration_at(Duration::from_secs(RELATIVE_LIMIT - 1), NOW),
            2_592_000
        );
    }

    #[test]
    fn sub_second_lifetimes_round_up_not_to_forever() {
        assert_eq!(expiration_at(Duration::from_millis(1), NOW), 2);
        assert_eq!(expiration_at(Duration::from_millis(1500), NOW), 3);
    }

    #[test]
    fn long_lifetimes_are_absolute_times() {
        // With its slack, a lifetime of exactly 30 days is already past the limit.
        let ttl = Duration::from_secs(RELATIVE_LIMIT);
        assert_eq!(u64::from(expiration_at(ttl, NOW)), NOW + RELATIVE_LIMIT + 1);
    }

    #[test]
    fn zero_means_never_and_huge_saturates() {
        assert_eq!(expiration_at(Duration::ZERO, NOW), 0);
        assert_eq!(expiration_at(Duration::from_secs(u64::MAX), NOW), u32::MAX);
    }

    #[test]
    fn a_record_has_what_is_left_since_the_device_was_seen() {
        let ttl = Duration::from_secs(100);
        assert_eq!(record_left(ttl, NOW, NOW), Some(100));
        // A second apart may be a moment apart: the whole lifetime.
        assert_eq!(record_left(ttl, NOW - 1, NOW), Some(100));
        assert_eq!(record_left(ttl, NOW - 30, NOW), Some(71));
        assert_eq!(record_left(ttl, NOW - 100, NOW), Some(1));
        assert_eq!(record_left(ttl, NOW - 101, NOW), Some(0));
        assert_eq!(record_left(ttl, 0, NOW), Some(0));
        // Seen ahead of this clock: never more than the whole lifetime.
        assert_eq!(record_left(ttl, NOW + 50, NOW), Some(100));
        assert_eq!(record_left(Duration::from_millis(1500), NOW, NOW), Some(2));
        assert_eq!(record_left(Duration::ZERO, 0, NOW), None);
        assert_eq!(record_expiration(ttl, NOW - 30, NOW), 72);
        // The last second of the lifetime, and its slack.
        assert_eq!(record_expiration(ttl, NOW - 100, NOW), 2);
        // Past its lifetime (a lowered ttl, clocks apart): the next tick, not "never",
        // and not the slack a second time.
        assert_eq!(record_expiration(ttl, NOW - 101, NOW), 1);
        assert_eq!(record_expiration(ttl, 0, NOW), 1);
        assert_eq!(record_expiration(Duration::ZERO, NOW - 30, NOW), 0);
        // Beyond 30 days, an absolute time: the moment the lifetime ends, a second for
        // the rounding of both times, and the clock's slack.
        let long = Duration::from_secs(RELATIVE_LIMIT + 1000);
        let seen = NOW - 10;
        let field = record_expiration(long, seen, NOW);
        assert_eq!(u64::from(field), seen + RELATIVE_LIMIT + 1000 + 2);
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
