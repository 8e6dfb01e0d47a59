//! The per-socket limit on device commands: a token bucket of `command_burst` commands
//! refilled at `command_rate` per second (`[protocol]`), kept as one number per socket.

use crate::device::registry::Stamp;

/// A socket's command allowance.
///
/// Kept as the moment its bucket is full again (the generic cell rate algorithm): each
/// command pushes that moment one refill interval later, and a command that would push
/// it more than a whole bucket past now is refused. Eight bytes per socket, and nothing
/// to update while the socket is idle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Microseconds after the registry's epoch; 0: full since the socket opened.
    full_at: u64,
}

impl Throttle {
    /// Spends one command at `now`; `false` (nothing spent) when the bucket is empty.
    /// A `rate` or `burst` of 0 is no limit.
    pub fn admit(&mut self, now: Stamp, rate: u32, burst: u32) -> bool {
        if rate == 0 || burst == 0 {
            return true;
        }
        let now = micros(now);
        let interval = (1_000_000 / u64::from(rate)).max(1);
        let bucket = interval.saturating_mul(u64::from(burst));
        let full_at = self.full_at.max(now).saturating_add(interval);
        if full_at - now > bucket {
            return false;
        }
        self.full_at = full_at;
        true
    }
}

/// `at` in microseconds after the registry's epoch.
fn micros(at: Stamp) -> u64 {
    let since = at.since(Stamp::from_millis(0));
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RATE: u32 = 50;
    const BURST: u32 = 10;

    fn at(millis: u64) -> Stamp {
        Stamp::from_millis(millis)
    }

    #[test]
    fn a_full_bucket_admits_a_burst_then_refuses() {
        let mut throttle = Throttle::default();
        for i in 0..BURST {
            assert!(throttle.admit(at(5_000), RATE, BURST), "command {i}");
        }
        assert!(!throttle.admit(at(5_000), RATE, BURST));
        // A refusal spends nothing: one refill interval (20 ms) later, one more.
        assert!(!throttle.admit(at(5_019), RATE, BURST));
        assert!(throttle.admit(at(5_020), RATE, BURST));
        assert!(!throttle.admit(at(5_020), RATE, BURST));
    }

    #[test]
    fn an_idle_socket_refills_to_a_burst_and_no_more() {
        let mut throttle = Throttle::default();
        for _ in 0..BURST {
            assert!(throttle.admit(at(1_000), RATE, BURST));
        }
        let later = at(1_000) + Duration::from_secs(3600);
        for i in 0..BURST {
            assert!(throttle.admit(later, RATE, BURST), "command {i}");
        }
        assert!(!throttle.admit(later, RATE, BURST));
    }

    #[test]
    fn a_client_under_the_rate_is_never_refused() {
        let mut throttle = Throttle::default();
        // 49 commands a second for ten minutes, after a full burst at the start.
        for _ in 0..BURST {
            assert!(throttle.admit(at(0), RATE, BURST));
        }
        let mut now = 0u64;
        for i in 0..49 * 600 {
            now += 1000 / 49 + 1;
            assert!(throttle.admit(at(now), RATE, BURST), "command {i}");
        }
    }

    #[test]
    fn a_client_over_the_rate_is_refused_within_a_burst() {
        let mut throttle = Throttle::default();
        let mut refused = None;
        // 100 a second against 50: the bucket drains by one every 20 ms.
        for i in 0..1000u64 {
            if !throttle.admit(at(i * 10), RATE, BURST) {
                refused = Some(i);
                break;
            }
        }
        let refused = refused.expect("never refused");
        assert!(
            (u64::from(BURST)..=2 * u64::from(BURST) + 1).contains(&refused),
            "refused at {refused}"
        );
    }

    #[test]
    fn zero_rate_or_burst_is_no_limit() {
        let mut throttle = Throttle::default();
        for _ in 0..10_000 {
            assert!(throttle.admit(at(7), 0, BURST));
            assert!(throttle.admit(at(7), RATE, 0));
        }
        assert_eq!(throttle, Throttle::default());
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let mut throttle = Throttle::default();
        assert!(throttle.admit(at(u64::MAX - 1), u32::MAX, u32::MAX));
        assert!(throttle.admit(at(u64::MAX - 1), 1, u32::MAX));
        let mut one = Throttle::default();
        assert!(one.admit(at(0), 1, 1));
        assert!(!one.admit(at(999), 1, 1));
        assert!(one.admit(at(1_000), 1, 1));
    }
}
