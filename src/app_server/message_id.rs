//! Minting WebPush message ids: increasing in arrival order (as strings) on this node,
//! and never the same on two nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use simplepush_store::MessageId;

/// The last microsecond stamp handed out by this process.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A fresh id: the current UNIX time in microseconds (one more than the last id's when
/// the clock has not moved on), as 16 hex digits, then 16 random hex digits so that
/// nodes minting in the same microsecond never collide. 32 characters.
pub fn mint() -> MessageId {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let previous = LAST
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or_else(|last| last);
    let stamp = now.max(previous.saturating_add(1));
    let random = uuid::Uuid::new_v4().as_u64_pair().1;
    MessageId::new(format!("{stamp:016x}{random:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_as_strings_and_are_short_printable_ascii() {
        let ids: Vec<MessageId> = (0..10_000).map(|_| mint()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0].as_str() < pair[1].as_str(), "{pair:?}");
        }
        for id in &ids {
            assert_eq!(id.as_str().len(), 32);
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn ids_minted_at_once_on_threads_are_distinct() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).map(|_| mint()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<MessageId> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count);
    }
}
