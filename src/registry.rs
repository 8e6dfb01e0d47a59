//! The devices connected to this node: uaid → the session holding its socket. Endpoint
//! requests use it to deliver live; a hello uses it so the newest socket wins.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use simplepush_store::{ChannelId, Uaid, Update};
use tokio::sync::Notify;
use tokio::time::Instant;

const SHARDS: usize = 64;

/// Locks a mutex whose data stays consistent even if a holder panicked (every change
/// under these locks is a single collection operation).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a session is asked to do from outside.
#[derive(Debug, Default)]
pub struct Mail {
    /// Updates to deliver live, oldest first, each with when its request arrived.
    pub updates: VecDeque<(ChannelId, Update, Instant)>,
    /// A newer socket for the same uaid said hello: close with 4000.
    pub replaced: bool,
    /// The outbox overflowed: the device is not reading.
    pub overflowed: bool,
}

/// The handle other tasks use to reach one connected session. Small on purpose: one per
/// socket, and nothing is allocated until something is delivered.
#[derive(Debug)]
pub struct Peer {
    id: u64,
    /// Updates queued beyond this mean the device is not reading: its socket is closed
    /// (the updates are stored anyway and flushed at its next hello).
    outbox_limit: u32,
    mail: Mutex<Mail>,
    wake: Notify,
}

impl Peer {
    /// Queues an update for live delivery (`received`: when its request arrived).
    /// Answers false (nothing queued) when the session is being replaced or its device
    /// has stopped reading.
    pub fn deliver(&self, channel: ChannelId, update: Update, received: Instant) -> bool {
        let mut mail = lock(&self.mail);
        if mail.replaced || mail.overflowed {
            return false;
        }
        if mail.updates.len() >= self.outbox_limit as usize {
            mail.overflowed = true;
            mail.updates = VecDeque::new();
            drop(mail);
            self.wake.notify_one();
            return false;
        }
        mail.updates.push_back((channel, update, received));
        drop(mail);
        self.wake.notify_one();
        true
    }

    /// This socket's id: unique on this node, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Tells the session a newer socket took over its uaid.
    pub fn replace(&self) {
        lock(&self.mail).replaced = true;
        self.wake.notify_one();
    }

    /// Takes everything delivered so far (the session calls this when woken).
    pub fn take(&self) -> Mail {
        std::mem::take(&mut *lock(&self.mail))
    }

    /// Completes when something was delivered since the last [`Peer::take`].
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

/// Connected sessions of this node, sharded by uaid.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<Uaid, Arc<Peer>>>>,
    outbox_limit: u32,
    next_id: AtomicU64,
    connections: Arc<AtomicUsize>,
}

/// Counts one open socket until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Registry {
    /// An empty registry whose sessions queue at most `outbox_limit` live updates.
    pub fn new(outbox_limit: usize) -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            outbox_limit: u32::try_from(outbox_limit).unwrap_or(u32::MAX).max(1),
            next_id: AtomicU64::new(1),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn shard(&self, uaid: &Uaid) -> MutexGuard<'_, HashMap<Uaid, Arc<Peer>>> {
        let mut hasher = DefaultHasher::new();
        uaid.hash(&mut hasher);
        lock(&self.shards[(hasher.finish() as usize) % SHARDS])
    }

    /// A handle for a new socket (not yet reachable: see [`Registry::claim`]).
    pub fn peer(&self) -> Arc<Peer> {
        Arc::new(Peer {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            outbox_limit: self.outbox_limit,
            mail: Mutex::new(Mail::default()),
            wake: Notify::new(),
        })
    }

    /// Counts an open socket until the guard is dropped.
    pub fn connect(&self) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.connections.clone())
    }

    /// Open sockets on this node.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Makes `peer` the session of `uaid`; an older session for it is told it was
    /// replaced.
    pub fn claim(&self, uaid: &Uaid, peer: &Arc<Peer>) {
        let previous = self.shard(uaid).insert(uaid.clone(), peer.clone());
        if let Some(previous) = previous.filter(|p| p.id != peer.id) {
            previous.replace();
        }
    }

    /// Forgets `uaid` if `peer` still holds it.
    pub fn release(&self, uaid: &Uaid, peer: &Peer) {
        let mut shard = self.shard(uaid);
        if shard.get(uaid).is_some_and(|p| p.id == peer.id) {
            shard.remove(uaid);
        }
    }

    /// The session of `uaid` on this node, if connected here.
    pub fn get(&self, uaid: &Uaid) -> Option<Arc<Peer>> {
        self.shard(uaid).get(uaid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(version: u64) -> Update {
        Update {
            version,
            data: None,
            expires_at: u64::MAX,
        }
    }

    #[test]
    fn newest_claim_wins_and_replaces_the_older() {
        let registry = Registry::new(8);
        let uaid = Uaid::from("u");
        let (old, new) = (registry.peer(), registry.peer());
        registry.claim(&uaid, &old);
        registry.claim(&uaid, &new);
        assert!(old.take().replaced);
        assert!(!new.take().replaced);
        registry.release(&uaid, &old);
        assert_eq!(registry.get(&uaid).map(|p| p.id), Some(new.id));
        registry.release(&uaid, &new);
        assert!(registry.get(&uaid).is_none());
    }

    #[test]
    fn a_device_that_does_not_read_overflows_instead_of_growing() {
        let peer = Registry::new(16).peer();
        for v in 0..16 {
            assert!(peer.deliver(ChannelId::from("c"), update(v), Instant::now()));
        }
        assert!(!peer.deliver(ChannelId::from("c"), update(0), Instant::now()));
        let mail = peer.take();
        assert!(mail.overflowed);
        assert!(mail.updates.is_empty());
    }

    #[test]
    fn connection_guard_counts_open_sockets() {
        let registry = Registry::new(8);
        let a = registry.connect();
        let b = registry.connect();
        assert_eq!(registry.connections(), 2);
        drop(a);
        drop(b);
        assert_eq!(registry.connections(), 0);
    }
}
