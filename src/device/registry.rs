//! The devices connected to this node: uaid → the session holding its socket. Endpoint
//! requests use it to deliver live; a hello uses it so the newest socket wins. It also
//! keeps time for every session: one sweeper wakes the sessions whose deadline passed, so
//! an idle socket holds no timer (and no shutdown listener) of its own.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::ops::Add;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use simplepush_store::{ChannelId, Message, MessageId, Uaid, Update};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 64;

/// How often the sweeper looks for sessions whose deadline passed: the precision of
/// every session timer (hello timeout, retry, keepalive: all seconds or more). Each
/// sweep reads one atomic per session (~20 ns each at 19,000 sessions).
pub const TICK: Duration = Duration::from_millis(200);

/// A deadline meaning "none".
const NEVER: u64 = u64::MAX;

/// Locks a mutex whose data stays consistent even if a holder panicked (every change
/// under these locks is a single collection operation).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Something to deliver live, in the dialect of the device it is for.
#[derive(Debug)]
pub enum Delivery {
    /// A SimplePush update of a channel.
    Update(ChannelId, Update),
    /// A WebPush message (boxed: it carries its body, and keeps this enum small).
    Message(Box<Message>),
}

/// What a session is asked to do from outside.
#[derive(Debug, Default)]
pub struct Mail {
    /// What to deliver live, oldest first, each with when its request arrived.
    pub deliveries: Vec<(Delivery, Instant)>,
    /// A newer socket for the same uaid said hello: close with 4000.
    pub replaced: bool,
    /// The outbox overflowed: the device is not reading.
    pub overflowed: bool,
}

/// A session's [`Mail`], and what decides which WebPush messages still need it.
#[derive(Debug, Default)]
struct Inbox {
    mail: Mail,
    /// The ids of the page of messages the session last read from the store and sent
    /// (see [`Peer::sent_page`]); a boxed slice, so that it costs an idle socket two
    /// words.
    page: Box<[MessageId]>,
}

/// The handle other tasks use to reach one connected session. Small on purpose: one per
/// socket, and nothing is allocated until something is delivered.
#[derive(Debug)]
pub struct Peer {
    id: u64,
    /// Updates queued beyond this mean the device is not reading: its socket is closed
    /// (the updates are stored anyway and flushed at its next hello).
    outbox_limit: u32,
    /// [`Signals`] raised since the session last looked.
    signals: AtomicU8,
    /// When the session wants [`Signals::TIMER`]: milliseconds since the registry's
    /// epoch, or [`NEVER`].
    deadline: AtomicU64,
    waker: AtomicWaker,
    inbox: Mutex<Inbox>,
}

/// Why a session was woken: a set of bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signals(u8);

impl Signals {
    /// Mail arrived (updates, replaced, overflowed): see [`Peer::take`].
    pub const MAIL: Signals = Signals(1);
    /// Its deadline passed.
    pub const TIMER: Signals = Signals(2);
    /// The server is shutting down.
    pub const SHUTDOWN: Signals = Signals(4);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Signals) -> bool {
        self.0 & other.0 == other.0
    }
}

impl Peer {
    /// Queues a SimplePush update for live delivery (`received`: when its request
    /// arrived). Answers false (nothing queued) when the session is being replaced or
    /// its device has stopped reading.
    pub fn deliver(&self, channel: ChannelId, update: Update, received: Instant) -> bool {
        self.post(Delivery::Update(channel, update), received)
    }

    /// Queues a WebPush message for live delivery, as [`Peer::deliver`] does an update.
    pub fn deliver_message(&self, message: Message, received: Instant) -> bool {
        self.post(Delivery::Message(Box::new(message)), received)
    }

    fn post(&self, delivery: Delivery, received: Instant) -> bool {
        let mut inbox = lock(&self.inbox);
        if let Delivery::Message(message) = &delivery
            && inbox.page.contains(&message.id)
        {
            // Read from the store and sent already: the device has it.
            return true;
        }
        let mail = &mut inbox.mail;
        if mail.replaced || mail.overflowed {
            return false;
        }
        if mail.deliveries.len() >= self.outbox_limit as usize {
            mail.overflowed = true;
            mail.deliveries = Vec::new();
            drop(inbox);
            self.signal(Signals::MAIL);
            return false;
        }
        mail.deliveries.push((delivery, received));
        drop(inbox);
        self.signal(Signals::MAIL);
        true
    }

    /// Raises `signals` and wakes the session.
    fn signal(&self, signals: Signals) {
        self.signals.fetch_or(signals.0, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Completes with the signals raised since the last call (at least one).
    pub fn poll_signals(&self, cx: &mut Context<'_>) -> Poll<Signals> {
        let raised = self.signals.swap(0, Ordering::AcqRel);
        if raised != 0 {
            return Poll::Ready(Signals(raised));
        }
        self.waker.register(cx.waker());
        match self.signals.swap(0, Ordering::AcqRel) {
            0 => Poll::Pending,
            raised => Poll::Ready(Signals(raised)),
        }
    }

    /// This socket's id: unique on this node, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Tells the session a newer socket took over its uaid.
    pub fn replace(&self) {
        lock(&self.inbox).mail.replaced = true;
        self.signal(Signals::MAIL);
    }

    /// Drops the WebPush messages queued so far, keeping the rest of the mail. Each was
    /// stored before it was queued, so a read of the store that starts after this call
    /// returns it (unless it was acknowledged or expired meanwhile): a flush calls it
    /// first, so that a message it sends does not go out a second time live.
    pub fn forget_messages(&self) {
        lock(&self.inbox)
            .mail
            .deliveries
            .retain(|(delivery, _)| !matches!(delivery, Delivery::Message(_)));
    }

    /// Records the ids of the page of messages a flush read from the store (after
    /// [`Peer::forget_messages`]) and sent. Each of them that is queued for live
    /// delivery, now or until the next page, is dropped: it was stored before the read
    /// but queued after the forget, and would otherwise go out twice.
    pub fn sent_page(&self, page: Box<[MessageId]>) {
        let mut inbox = lock(&self.inbox);
        inbox
            .mail
            .deliveries
            .retain(|(delivery, _)| match delivery {
                Delivery::Message(message) => !page.contains(&message.id),
                Delivery::Update(..) => true,
            });
        inbox.page = page;
    }

    /// Takes everything delivered so far (the session calls this when woken).
    pub fn take(&self) -> Mail {
        std::mem::take(&mut lock(&self.inbox).mail)
    }
}

/// Connected sessions of this node, sharded by uaid.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<Uaid, Arc<Peer>>>>,
    /// Every open session by id, with or without a uaid: the sweeper's and shutdown's
    /// list.
    sessions: Vec<Mutex<HashMap<u64, Arc<Peer>>>>,
    /// Deadlines count milliseconds from here.
    epoch: Instant,
    /// Set once the server shuts down: new sessions start with [`Signals::SHUTDOWN`].
    shutting_down: AtomicBool,
    outbox_limit: u32,
    next_id: AtomicU64,
    connections: Arc<AtomicUsize>,
}

/// A moment as whole milliseconds since the registry's epoch (stored plus one, so an
/// `Option<Stamp>` is as small as a `Stamp`): half an [`Instant`], and a session keeps
/// several for each idle socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(NonZeroU64);

impl Stamp {
    /// `millis` after the epoch.
    pub fn from_millis(millis: u64) -> Stamp {
        Stamp(NonZeroU64::MIN.saturating_add(millis))
    }

    fn millis(self) -> u64 {
        self.0.get() - 1
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_millis(self.millis().saturating_sub(earlier.millis()))
    }
}

impl Add<Duration> for Stamp {
    type Output = Stamp;

    /// `self` plus `duration` rounded up to whole milliseconds: never earlier.
    fn add(self, duration: Duration) -> Stamp {
        let millis =
            duration.as_millis() + u128::from(!duration.subsec_nanos().is_multiple_of(1_000_000));
        let millis = u64::try_from(millis).unwrap_or(u64::MAX);
        Stamp::from_millis(self.millis().saturating_add(millis))
    }
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
            sessions: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
            shutting_down: AtomicBool::new(false),
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

    fn sessions_shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Arc<Peer>>> {
        lock(&self.sessions[(id as usize) % SHARDS])
    }

    /// A handle for a new socket, kept until [`Registry::retire`]; not yet reachable by
    /// uaid (see [`Registry::claim`]).
    pub fn peer(&self) -> Arc<Peer> {
        let peer = Arc::new(Peer {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            outbox_limit: self.outbox_limit,
            signals: AtomicU8::new(0),
            deadline: AtomicU64::new(NEVER),
            waker: AtomicWaker::new(),
            inbox: Mutex::new(Inbox::default()),
        });
        let mut sessions = self.sessions_shard(peer.id);
        sessions.insert(peer.id, peer.clone());
        // Read under the shard lock that `shut_down` also takes: either it sees this
        // session or this sees its flag.
        if self.shutting_down.load(Ordering::SeqCst) {
            peer.signal(Signals::SHUTDOWN);
        }
        peer
    }

    /// Forgets a session whose socket is closed.
    pub fn retire(&self, peer: &Peer) {
        self.sessions_shard(peer.id).remove(&peer.id);
    }

    /// `at`, as a [`Stamp`] (the whole milliseconds that have passed by then).
    pub fn stamp(&self, at: Instant) -> Stamp {
        let millis = at.saturating_duration_since(self.epoch).as_millis();
        Stamp::from_millis(u64::try_from(millis).unwrap_or(NEVER - 1))
    }

    /// Now, as a [`Stamp`].
    pub fn now(&self) -> Stamp {
        self.stamp(Instant::now())
    }

    /// Asks for [`Signals::TIMER`] once `deadline` has passed (`None`: never).
    pub fn set_deadline(&self, peer: &Peer, deadline: Option<Stamp>) {
        let millis = deadline.map_or(NEVER, |at| at.millis().min(NEVER - 1));
        peer.deadline.store(millis, Ordering::Relaxed);
    }

    /// Wakes every session whose deadline is `now` or earlier.
    pub fn sweep(&self, now: Instant) {
        let now = self.stamp(now).millis();
        for shard in &self.sessions {
            for peer in lock(shard).values() {
                let deadline = peer.deadline.load(Ordering::Relaxed);
                // Unless the session moved its deadline meanwhile: then it is awake.
                if deadline <= now
                    && peer
                        .deadline
                        .compare_exchange(deadline, NEVER, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    peer.signal(Signals::TIMER);
                }
            }
        }
    }

    /// Tells every session, and every later one, that the server shuts down.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for shard in &self.sessions {
            for peer in lock(shard).values() {
                peer.signal(Signals::SHUTDOWN);
            }
        }
    }

    /// Keeps every session's time until `shutdown`, then tells them all to close.
    pub async fn keep_time(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                now = tick.tick() => self.sweep(now),
            }
        }
        self.shut_down();
    }

    /// Counts an open socket until the guard is dropped.
    pub fn connect(&self) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.connections.clone())
    }

    /// Counts an open socket unless `max` are open already, in one atomic step, so that
    /// concurrent upgrades cannot overshoot `max`.
    pub fn try_connect(&self, max: usize) -> Option<ConnectionGuard> {
        self.connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionGuard(self.connections.clone()))
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

    /// Forgets `uaid` if `peer` still holds it; answers whether it did (false: a newer
    /// session of the same uaid holds it, or nobody does).
    pub fn release(&self, uaid: &Uaid, peer: &Peer) -> bool {
        let mut shard = self.shard(uaid);
        if shard.get(uaid).is_some_and(|p| p.id == peer.id) {
            shard.remove(uaid);
            return true;
        }
        false
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
        assert!(!registry.release(&uaid, &old), "the newer session holds it");
        assert_eq!(registry.get(&uaid).map(|p| p.id), Some(new.id));
        assert!(registry.release(&uaid, &new));
        assert!(registry.get(&uaid).is_none());
        assert!(!registry.release(&uaid, &new), "released once");
    }

    fn message(id: &str) -> Message {
        Message {
            id: MessageId::from(id),
            channel: ChannelId::from("c"),
            ttl: 60,
            expires_at: u64::MAX,
            topic: None,
            urgency: simplepush_store::Urgency::Normal,
            payload: None,
        }
    }

    /// The ids of the messages in `mail`, in order.
    fn message_ids(mail: &Mail) -> Vec<&str> {
        mail.deliveries
            .iter()
            .filter_map(|(delivery, _)| match delivery {
                Delivery::Message(message) => Some(message.id.as_str()),
                Delivery::Update(..) => None,
            })
            .collect()
    }

    #[test]
    fn forgetting_messages_keeps_updates_and_flags() {
        let peer = Registry::new(8).peer();
        let message = message("m-1");
        assert!(peer.deliver_message(message.clone(), Instant::now()));
        assert!(peer.deliver(ChannelId::from("c"), update(7), Instant::now()));
        assert!(peer.deliver_message(message, Instant::now()));
        peer.replace();
        peer.forget_messages();
        let mail = peer.take();
        assert!(mail.replaced);
        let kept: Vec<_> = mail.deliveries.iter().map(|(d, _)| d).collect();
        assert!(
            matches!(kept[..], [Delivery::Update(_, Update { version: 7, .. })]),
            "{kept:?}"
        );
    }

    #[test]
    fn a_message_of_the_page_sent_is_not_delivered_again_live() {
        let peer = Registry::new(8).peer();
        // Queued before the flush's forget: dropped by it (the read finds them).
        assert!(peer.deliver_message(message("m-1"), Instant::now()));
        peer.forget_messages();
        // Stored before the read, queued after the forget: in the page, and queued.
        assert!(peer.deliver_message(message("m-2"), Instant::now()));
        // Stored after the read: not in the page.
        assert!(peer.deliver_message(message("m-3"), Instant::now()));
        assert!(peer.deliver(ChannelId::from("c"), update(7), Instant::now()));
        peer.sent_page(["m-1", "m-2"].map(MessageId::from).into());
        // Stored before the read, queued only now: the device has it.
        assert!(peer.deliver_message(message("m-1"), Instant::now()));
        assert!(peer.deliver_message(message("m-4"), Instant::now()));
        let mail = peer.take();
        assert_eq!(message_ids(&mail), ["m-3", "m-4"]);
        assert_eq!(mail.deliveries.len(), 3, "the update stays");
        // Until the next page, which replaces it.
        assert!(peer.deliver_message(message("m-2"), Instant::now()));
        assert!(message_ids(&peer.take()).is_empty());
        peer.sent_page(Box::default());
        assert!(peer.deliver_message(message("m-2"), Instant::now()));
        assert_eq!(message_ids(&peer.take()), ["m-2"]);
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
        assert!(mail.deliveries.is_empty());
    }

    /// The signals raised so far, without waiting.
    fn raised(peer: &Peer) -> Option<Signals> {
        let waker = futures_util::task::noop_waker();
        match peer.poll_signals(&mut Context::from_waker(&waker)) {
            Poll::Ready(signals) => Some(signals),
            Poll::Pending => None,
        }
    }

    #[test]
    fn stamps_are_small_round_deadlines_up_and_never_go_negative() {
        assert_eq!(size_of::<Option<Stamp>>(), 8);
        let start = Stamp::from_millis(1_000);
        assert_eq!(start + Duration::from_micros(1), Stamp::from_millis(1_001));
        assert_eq!(start + Duration::from_millis(5), Stamp::from_millis(1_005));
        assert_eq!(
            Stamp::from_millis(1_250).since(start),
            Duration::from_millis(250)
        );
        assert_eq!(start.since(Stamp::from_millis(1_250)), Duration::ZERO);
        assert_eq!(start + Duration::MAX, Stamp::from_millis(u64::MAX));
    }

    #[test]
    fn the_sweeper_wakes_a_session_once_its_deadline_passed_and_never_before() {
        let registry = Registry::new(8);
        let (peer, other) = (registry.peer(), registry.peer());
        let deadline = registry.stamp(registry.epoch) + Duration::from_micros(2_500);
        registry.set_deadline(&peer, Some(deadline));
        registry.set_deadline(&other, None);
        registry.sweep(registry.epoch + Duration::from_micros(2_999));
        assert_eq!(
            raised(&peer),
            None,
            "2.5 ms rounds up to 3 ms, and 2.999 ms is before"
        );
        registry.sweep(registry.epoch + Duration::from_millis(3));
        assert_eq!(raised(&peer), Some(Signals::TIMER));
        assert_eq!(raised(&other), None, "no deadline, no timer");
        registry.sweep(registry.epoch + Duration::from_secs(1));
        assert_eq!(raised(&peer), None, "a deadline fires once");
        registry.retire(&peer);
        registry.set_deadline(&peer, Some(deadline));
        registry.sweep(registry.epoch + Duration::from_secs(2));
        assert_eq!(raised(&peer), None, "a retired session is not swept");
    }

    #[test]
    fn shutdown_reaches_every_session_and_every_later_one() {
        let registry = Registry::new(8);
        let before = registry.peer();
        assert!(before.deliver(ChannelId::from("c"), update(1), Instant::now()));
        registry.shut_down();
        let signals = raised(&before).unwrap();
        assert!(signals.contains(Signals::SHUTDOWN) && signals.contains(Signals::MAIL));
        assert_eq!(raised(&registry.peer()), Some(Signals::SHUTDOWN));
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

    #[test]
    fn try_connect_never_overshoots_under_contention() {
        let registry = Arc::new(Registry::new(8));
        let guards: Vec<ConnectionGuard> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let registry = registry.clone();
                    scope.spawn(move || {
                        (0..1000)
                            .filter_map(|_| registry.try_connect(5))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert_eq!(guards.len(), 5);
        assert_eq!(registry.connections(), 5);
        drop(guards);
        assert!(registry.try_connect(5).is_some());
    }
}
