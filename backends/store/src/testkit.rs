//! The conformance suite: one function per behaviour of the [`Store`] contract. Every
//! backend runs all of them through [`conformance_suite!`](crate::conformance_suite).
//! Each function uses fresh random ids, so the suite is safe on a shared memcached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{
    ChannelId, Message, MessageId, Payload, Pending, PutOutcome, QueueOutcome, RegisterOutcome,
    Store, Swept, Uaid, Update, Urgency, unix_now,
};

/// A store under test.
pub type TestStore = Arc<dyn Store>;

const NOW: u64 = 1_000_000;
const LATER: u64 = NOW + 3600;
const MAX: usize = 200;

fn uaid() -> Uaid {
    Uaid::new(uuid::Uuid::new_v4().simple().to_string())
}

fn channel() -> ChannelId {
    ChannelId::new(uuid::Uuid::new_v4().hyphenated().to_string())
}

fn update(version: u64) -> Update {
    Update {
        version,
        data: None,
        expires_at: LATER,
    }
}

async fn registered(store: &TestStore) -> (Uaid, ChannelId) {
    let (u, c) = (uaid(), channel());
    let outcome = store.register(&u, &c, MAX, NOW).await.expect("register");
    assert_eq!(outcome, RegisterOutcome::Registered);
    (u, c)
}

async fn pending(store: &TestStore, uaid: &Uaid) -> Pending {
    store.pending(uaid, NOW).await.expect("pending")
}

/// The single pending version of `channel`, if any.
async fn pending_version(store: &TestStore, uaid: &Uaid, channel: &ChannelId) -> Option<u64> {
    let all = pending(store, uaid).await;
    let mut found = all.updates.iter().filter(|(c, _)| c == channel);
    let version = found.next().map(|(_, u)| u.version);
    assert!(found.next().is_none(), "one pending update per channel");
    version
}

async fn put(store: &TestStore, uaid: &Uaid, channel: &ChannelId, update: Update) -> PutOutcome {
    store
        .put_update(uaid, channel, update, NOW)
        .await
        .expect("put_update")
}

/// A uaid with no channels is unknown; registering one makes it known.
pub async fn knows_uaid_only_with_channels(store: TestStore) {
    let u = uaid();
    assert!(!store.knows_uaid(&u).await.unwrap());
    let c = channel();
    store.register(&u, &c, MAX, NOW).await.unwrap();
    assert!(store.knows_uaid(&u).await.unwrap());
    store.unregister(&u, &c).await.unwrap();
    assert!(!store.knows_uaid(&u).await.unwrap());
}

/// `registered` says whether a channel is registered, and changes nothing.
pub async fn registered_answers_per_channel(store: TestStore) {
    let (u, c) = registered(&store).await;
    assert!(store.registered(&u, &c).await.unwrap());
    assert!(!store.registered(&u, &channel()).await.unwrap());
    assert!(!store.registered(&uaid(), &c).await.unwrap());
    store.unregister(&u, &c).await.unwrap();
    assert!(!store.registered(&u, &c).await.unwrap());
    assert!(
        !store.knows_uaid(&u).await.unwrap(),
        "a look-up creates nothing"
    );
}

/// Registering a channel twice succeeds and keeps its pending update.
pub async fn register_is_idempotent_and_keeps_pending(store: TestStore) {
    let (u, c) = registered(&store).await;
    assert_eq!(put(&store, &u, &c, update(7)).await, PutOutcome::Stored);
    let again = store.register(&u, &c, MAX, NOW).await.unwrap();
    assert_eq!(again, RegisterOutcome::Registered);
    assert_eq!(pending_version(&store, &u, &c).await, Some(7));
}

/// A new channel beyond the limit is refused; existing ones re-register; a freed slot
/// can be used again.
pub async fn register_enforces_channel_limit(store: TestStore) {
    let u = uaid();
    let channels: Vec<ChannelId> = (0..3).map(|_| channel()).collect();
    for c in &channels {
        assert_eq!(
            store.register(&u, c, 3, NOW).await.unwrap(),
            RegisterOutcome::Registered
        );
    }
    let extra = channel();
    assert_eq!(
        store.register(&u, &extra, 3, NOW).await.unwrap(),
        RegisterOutcome::TooManyChannels
    );
    assert_eq!(put(&store, &u, &extra, update(1)).await, PutOutcome::Gone);
    assert_eq!(
        store.register(&u, &channels[0], 3, NOW).await.unwrap(),
        RegisterOutcome::Registered
    );
    store.unregister(&u, &channels[1]).await.unwrap();
    assert_eq!(
        store.register(&u, &extra, 3, NOW).await.unwrap(),
        RegisterOutcome::Registered
    );
}

/// Unregistering drops the pending update, and later puts answer Gone; unregistering
/// again, or an unknown channel, is fine.
pub async fn unregister_drops_pending_and_puts_are_gone(store: TestStore) {
    let (u, c) = registered(&store).await;
    put(&store, &u, &c, update(3)).await;
    store.unregister(&u, &c).await.unwrap();
    assert!(pending(&store, &u).await.is_empty());
    assert_eq!(put(&store, &u, &c, update(4)).await, PutOutcome::Gone);
    store.unregister(&u, &c).await.unwrap();
    store.unregister(&uaid(), &channel()).await.unwrap();
}

/// A put to a channel that was never registered, or on another uaid, is Gone.
pub async fn put_to_unknown_channel_is_gone(store: TestStore) {
    let (u, c) = registered(&store).await;
    assert_eq!(
        put(&store, &u, &channel(), update(1)).await,
        PutOutcome::Gone
    );
    assert_eq!(put(&store, &uaid(), &c, update(1)).await, PutOutcome::Gone);
    assert!(pending(&store, &u).await.is_empty());
}

/// Only the greatest version is kept, with its own data.
pub async fn put_keeps_greatest_version_with_its_data(store: TestStore) {
    let (u, c) = registered(&store).await;
    let with_data = |version: u64, data: &str| Update {
        data: Some(data.to_owned()),
        ..update(version)
    };
    assert_eq!(
        put(&store, &u, &c, with_data(5, "five")).await,
        PutOutcome::Stored
    );
    assert_eq!(
        put(&store, &u, &c, with_data(3, "three")).await,
        PutOutcome::Stored
    );
    let all = pending(&store, &u).await;
    assert_eq!(all.updates, vec![(c.clone(), with_data(5, "five"))]);
    put(&store, &u, &c, with_data(9, "nine")).await;
    let all = pending(&store, &u).await;
    assert_eq!(all.updates, vec![(c.clone(), with_data(9, "nine"))]);
}

/// Versions up to i64::MAX round-trip exactly.
pub async fn largest_version_round_trips(store: TestStore) {
    let (u, c) = registered(&store).await;
    put(&store, &u, &c, update(i64::MAX as u64)).await;
    assert_eq!(pending_version(&store, &u, &c).await, Some(i64::MAX as u64));
}

/// An ack of an older version keeps the newer pending one; an ack of it or a newer one
/// drops it.
pub async fn ack_of_older_version_keeps_newer(store: TestStore) {
    let (u, c) = registered(&store).await;
    put(&store, &u, &c, update(7)).await;
    assert!(store.ack(&u, &c, 6).await.unwrap(), "7 is still pending");
    assert_eq!(pending_version(&store, &u, &c).await, Some(7));
    assert!(!store.ack(&u, &c, 7).await.unwrap(), "nothing is left");
    assert_eq!(pending_version(&store, &u, &c).await, None);
    put(&store, &u, &c, update(8)).await;
    assert!(!store.ack(&u, &c, 100).await.unwrap());
    assert!(pending(&store, &u).await.is_empty());
}

/// An ack answers whether the device has anything left pending in any channel, an
/// expired update included.
pub async fn ack_answers_whether_anything_is_left(store: TestStore) {
    let (u, a) = registered(&store).await;
    let b = channel();
    store.register(&u, &b, MAX, NOW).await.unwrap();
    put(&store, &u, &a, update(1)).await;
    let short = Update {
        expires_at: NOW + 10,
        ..update(2)
    };
    put(&store, &u, &b, short).await;
    assert!(store.ack(&u, &a, 1).await.unwrap(), "b is still pending");
    assert!(
        store.ack(&u, &a, 1).await.unwrap(),
        "b, even when a is empty"
    );
    assert!(
        store.ack_expired(&u, &b, NOW + 5).await.unwrap(),
        "b has not expired yet, so it stays"
    );
    assert!(!store.ack_expired(&u, &b, NOW + 10).await.unwrap());
    assert!(store.pending(&u, NOW + 10).await.unwrap().is_empty());
    assert!(
        !store.ack(&uaid(), &channel(), 1).await.unwrap(),
        "unknown uaid"
    );
}

/// Acks for unknown uaids, channels, or with nothing pending are harmless.
pub async fn ack_of_unknown_is_harmless(store: TestStore) {
    let (u, c) = registered(&store).await;
    store.ack(&u, &c, 1).await.unwrap();
    store.ack(&u, &channel(), 1).await.unwrap();
    store.ack(&uaid(), &channel(), 1).await.unwrap();
    assert_eq!(put(&store, &u, &c, update(2)).await, PutOutcome::Stored);
    assert_eq!(pending_version(&store, &u, &c).await, Some(2));
}

/// A fresh uaid with `n` fresh registered channels.
async fn with_channels(store: &TestStore, n: usize) -> (Uaid, Vec<ChannelId>) {
    let u = uaid();
    let channels: Vec<ChannelId> = (0..n).map(|_| channel()).collect();
    for c in &channels {
        let outcome = store.register(&u, c, MAX, NOW).await.expect("register");
        assert_eq!(outcome, RegisterOutcome::Registered);
    }
    (u, channels)
}

/// A uaid with `n` fresh channels, each with version `version` pending.
async fn with_pending(store: &TestStore, n: usize, version: u64) -> (Uaid, Vec<ChannelId>) {
    let (u, channels) = with_channels(store, n).await;
    for c in &channels {
        assert_eq!(put(store, &u, c, update(version)).await, PutOutcome::Stored);
    }
    (u, channels)
}

/// The channels with something pending (live or expired) at `now`, sorted.
async fn pending_channels(store: &TestStore, uaid: &Uaid, now: u64) -> Vec<ChannelId> {
    let all = store.pending(uaid, now).await.expect("pending");
    let mut channels: Vec<ChannelId> = all.updates.into_iter().map(|(c, _)| c).collect();
    channels.extend(all.expired);
    channels.sort_unstable();
    channels
}

/// One batch acks several channels at once, and answers whether any is left.
pub async fn ack_many_acks_several_channels_at_once(store: TestStore) {
    let (u, c) = with_pending(&store, 4, 5).await;
    let acks = [(c[0].clone(), 5), (c[1].clone(), 6), (c[2].clone(), 5)];
    assert!(
        store.ack_many(&u, &acks, &[], NOW).await.unwrap(),
        "the fourth is left"
    );
    assert_eq!(pending_channels(&store, &u, NOW).await, vec![c[3].clone()]);
    let last = [(c[3].clone(), 5)];
    assert!(!store.ack_many(&u, &last, &[], NOW).await.unwrap());
    assert!(pending(&store, &u).await.is_empty());
}

/// An entry of a batch with an older version keeps the newer pending one (a put that
/// raced the ack), while the other entries of the batch still apply.
pub async fn ack_many_keeps_a_newer_version_that_raced_in(store: TestStore) {
    let (u, c) = with_pending(&store, 2, 5).await;
    put(&store, &u, &c[1], update(6)).await;
    let acks = [(c[0].clone(), 5), (c[1].clone(), 5)];
    assert!(store.ack_many(&u, &acks, &[], NOW).await.unwrap());
    assert_eq!(pending_version(&store, &u, &c[0]).await, None);
    assert_eq!(pending_version(&store, &u, &c[1]).await, Some(6));
}

/// A channel named several times in one batch is acked at the greatest version named,
/// in whatever order the entries come.
pub async fn ack_many_with_repeated_channels_takes_the_greatest_version(store: TestStore) {
    let (u, c) = with_pending(&store, 3, 7).await;
    let acks = [
        (c[0].clone(), 3),
        (c[0].clone(), 7),
        (c[0].clone(), 2),
        (c[1].clone(), 9),
        (c[1].clone(), 1),
        (c[2].clone(), 6),
        (c[2].clone(), 6),
    ];
    assert!(
        store.ack_many(&u, &acks, &[], NOW).await.unwrap(),
        "the third still has 7 pending"
    );
    assert_eq!(pending_channels(&store, &u, NOW).await, vec![c[2].clone()]);
    assert_eq!(pending_version(&store, &u, &c[2]).await, Some(7));
}

/// Expired entries drop only updates that have expired at `now`; updates and expiries
/// mix in one batch, and a repeated or unknown expired channel is harmless.
pub async fn ack_many_drops_expired_updates_only(store: TestStore) {
    let u = uaid();
    let channels: Vec<ChannelId> = (0..3).map(|_| channel()).collect();
    for c in &channels {
        store.register(&u, c, MAX, NOW).await.unwrap();
    }
    let short = |version| Update {
        expires_at: NOW + 10,
        ..update(version)
    };
    put(&store, &u, &channels[0], short(1)).await;
    put(&store, &u, &channels[1], update(2)).await;
    put(&store, &u, &channels[2], short(3)).await;
    let expired = [
        channels[0].clone(),
        channels[1].clone(),
        channels[0].clone(),
    ];
    // Before the expiry, acknowledging it keeps the update.
    assert!(store.ack_many(&u, &[], &expired, NOW + 5).await.unwrap());
    assert_eq!(pending_channels(&store, &u, NOW + 5).await.len(), 3);
    let acks = [(channels[1].clone(), 2)];
    let expired = [channels[0].clone(), channel(), channels[0].clone()];
    assert!(
        store.ack_many(&u, &acks, &expired, NOW + 10).await.unwrap(),
        "the third has expired but its expiry was not acknowledged"
    );
    let left = store.pending(&u, NOW + 10).await.unwrap();
    assert!(left.updates.is_empty());
    assert_eq!(left.expired, vec![channels[2].clone()]);
    let last = [channels[2].clone()];
    assert!(!store.ack_many(&u, &[], &last, NOW + 10).await.unwrap());
    // The channels stay registered.
    assert_eq!(
        put(&store, &u, &channels[0], update(4)).await,
        PutOutcome::Stored
    );
}

/// An empty batch, or one of unknown channels, changes nothing and answers whether
/// anything is pending; an unknown uaid has nothing pending and is not created.
pub async fn ack_many_answers_whether_anything_is_left(store: TestStore) {
    let (u, c) = with_pending(&store, 1, 4).await;
    assert!(store.ack_many(&u, &[], &[], NOW).await.unwrap());
    let strangers = [(channel(), 100), (channel(), 100)];
    let strange_expiries = [channel()];
    assert!(
        store
            .ack_many(&u, &strangers, &strange_expiries, NOW + LATER)
            .await
            .unwrap()
    );
    assert_eq!(pending_version(&store, &u, &c[0]).await, Some(4));
    let all = [(c[0].clone(), 4)];
    assert!(!store.ack_many(&u, &all, &[], NOW).await.unwrap());
    assert!(!store.ack_many(&u, &[], &[], NOW).await.unwrap());
    let nobody = uaid();
    assert!(!store.ack_many(&nobody, &strangers, &[], NOW).await.unwrap());
    assert!(!store.knows_uaid(&nobody).await.unwrap());
}

/// Pending updates of several channels are all reported, and reading them changes
/// nothing.
pub async fn pending_lists_every_channel_and_is_read_only(store: TestStore) {
    let u = uaid();
    let channels: Vec<ChannelId> = (0..5).map(|_| channel()).collect();
    for (i, c) in channels.iter().enumerate() {
        store.register(&u, c, MAX, NOW).await.unwrap();
        put(&store, &u, c, update(i as u64 + 1)).await;
    }
    let first = pending(&store, &u).await;
    let second = pending(&store, &u).await;
    let mut versions: Vec<u64> = first.updates.iter().map(|(_, up)| up.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    assert_eq!(first.updates.len(), second.updates.len());
    assert!(first.expired.is_empty());
}

/// An update past its expiry is reported in `expired` (not delivered) until the device
/// acknowledges the expiry.
pub async fn expired_update_is_reported_until_acknowledged(store: TestStore) {
    let (u, c) = registered(&store).await;
    let short = Update {
        expires_at: NOW + 10,
        ..update(4)
    };
    put(&store, &u, &c, short).await;
    let before = store.pending(&u, NOW + 9).await.unwrap();
    assert_eq!(before.updates.len(), 1);
    let after = store.pending(&u, NOW + 10).await.unwrap();
    assert!(after.updates.is_empty());
    assert_eq!(after.expired, vec![c.clone()]);
    // Acknowledging the expiry before it happened keeps the update.
    store.ack_expired(&u, &c, NOW + 5).await.unwrap();
    assert_eq!(
        store.pending(&u, NOW + 10).await.unwrap().expired,
        vec![c.clone()]
    );
    store.ack_expired(&u, &c, NOW + 10).await.unwrap();
    assert!(store.pending(&u, NOW + 10).await.unwrap().is_empty());
    // The channel itself stays registered.
    assert_eq!(put(&store, &u, &c, update(5)).await, PutOutcome::Stored);
}

/// A new put replaces an expired pending update even when its version is lower.
pub async fn put_replaces_expired_update(store: TestStore) {
    let (u, c) = registered(&store).await;
    let old = Update {
        expires_at: NOW - 1,
        ..update(50)
    };
    put(&store, &u, &c, old).await;
    put(&store, &u, &c, update(2)).await;
    let all = pending(&store, &u).await;
    assert_eq!(all.updates, vec![(c, update(2))]);
    assert!(all.expired.is_empty());
}

/// Dropping a uaid forgets its channels, updates and node record, and only its own.
pub async fn drop_uaid_forgets_everything(store: TestStore) {
    let (u, c) = registered(&store).await;
    let (other, other_channel) = registered(&store).await;
    put(&store, &u, &c, update(1)).await;
    store.set_node(&u, "http://node-a").await.unwrap();
    store.drop_uaid(&u).await.unwrap();
    assert!(!store.knows_uaid(&u).await.unwrap());
    assert!(pending(&store, &u).await.is_empty());
    assert_eq!(store.node(&u).await.unwrap(), None);
    assert_eq!(put(&store, &u, &c, update(2)).await, PutOutcome::Gone);
    assert_eq!(
        put(&store, &other, &other_channel, update(2)).await,
        PutOutcome::Stored
    );
    store.drop_uaid(&uaid()).await.unwrap();
}

/// The same channel id under two uaids is two independent channels.
pub async fn uaids_are_isolated(store: TestStore) {
    let (a, c) = registered(&store).await;
    let b = uaid();
    store.register(&b, &c, MAX, NOW).await.unwrap();
    put(&store, &a, &c, update(10)).await;
    assert_eq!(pending_version(&store, &b, &c).await, None);
    store.unregister(&b, &c).await.unwrap();
    assert_eq!(pending_version(&store, &a, &c).await, Some(10));
}

/// Concurrent registers on one uaid lose nothing.
pub async fn concurrent_registers_lose_nothing(store: TestStore) {
    let u = uaid();
    let channels: Vec<ChannelId> = (0..40).map(|_| channel()).collect();
    let tasks: Vec<_> = channels
        .iter()
        .map(|c| {
            let (store, u, c) = (store.clone(), u.clone(), c.clone());
            tokio::spawn(async move { store.register(&u, &c, MAX, NOW).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), RegisterOutcome::Registered);
    }
    for (i, c) in channels.iter().enumerate() {
        assert_eq!(
            put(&store, &u, c, update(i as u64)).await,
            PutOutcome::Stored
        );
    }
    assert_eq!(pending(&store, &u).await.updates.len(), channels.len());
}

/// Concurrent puts of many versions leave the greatest pending.
pub async fn concurrent_puts_keep_greatest(store: TestStore) {
    let (u, c) = registered(&store).await;
    let tasks: Vec<_> = (1..=40u64)
        .map(|v| {
            let (store, u, c) = (store.clone(), u.clone(), c.clone());
            tokio::spawn(async move { store.put_update(&u, &c, update(v), NOW).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), PutOutcome::Stored);
    }
    assert_eq!(pending_version(&store, &u, &c).await, Some(40));
}

/// The node record is set, replaced, and cleared only by the node it names.
pub async fn node_record_is_cleared_only_by_its_node(store: TestStore) {
    let u = uaid();
    assert_eq!(store.node(&u).await.unwrap(), None);
    store.set_node(&u, "http://a").await.unwrap();
    store.set_node(&u, "http://b").await.unwrap();
    assert_eq!(store.node(&u).await.unwrap().as_deref(), Some("http://b"));
    assert!(!store.clear_node(&u, "http://a").await.unwrap());
    assert_eq!(store.node(&u).await.unwrap().as_deref(), Some("http://b"));
    assert!(store.clear_node(&u, "http://b").await.unwrap());
    assert_eq!(store.node(&u).await.unwrap(), None);
    assert!(!store.clear_node(&u, "http://b").await.unwrap());
}

/// The node record and the channels of a uaid do not disturb each other.
pub async fn node_record_keeps_channels(store: TestStore) {
    let (u, c) = registered(&store).await;
    put(&store, &u, &c, update(3)).await;
    store.set_node(&u, "http://a").await.unwrap();
    store.clear_node(&u, "http://a").await.unwrap();
    assert!(store.knows_uaid(&u).await.unwrap());
    assert_eq!(pending_version(&store, &u, &c).await, Some(3));
}

// ---- WebPush message queues ----

/// More messages than any test queues for one uaid: `messages` limits that return all.
const ALL: usize = 1000;

/// When the short-lived messages of a test expire.
const SOON: u64 = NOW + 10;

/// How many message ids this process has minted; the counter orders them.
static MINTED: AtomicU64 = AtomicU64::new(0);

/// A fresh message id, greater (as a string) than every one minted before it in this
/// process, as the server's ids grow in arrival order: a zero-padded counter, then a
/// random part so that processes sharing a store never mint the same id. 52 bytes.
fn message_id() -> MessageId {
    let n = MINTED.fetch_add(1, Ordering::Relaxed);
    MessageId::new(format!("{n:020}{}", uuid::Uuid::new_v4().simple()))
}

/// A fresh message for `channel`: no topic, normal urgency, no data, live until LATER.
fn message(channel: &ChannelId) -> Message {
    Message {
        id: message_id(),
        channel: channel.clone(),
        ttl: LATER - NOW,
        expires_at: LATER,
        topic: None,
        urgency: Urgency::Normal,
        payload: None,
    }
}

/// A fresh message for `channel` with `topic`.
fn with_topic(channel: &ChannelId, topic: &str) -> Message {
    Message {
        topic: Some(topic.to_owned()),
        ..message(channel)
    }
}

/// A fresh message for `channel` that expires at `expires_at`.
fn expiring(channel: &ChannelId, expires_at: u64) -> Message {
    Message {
        ttl: expires_at - NOW,
        expires_at,
        ..message(channel)
    }
}

/// An `aes128gcm` payload of `body`.
fn aes128gcm(body: Vec<u8>) -> Option<Payload> {
    Some(Payload {
        encoding: "aes128gcm".to_owned(),
        encryption: None,
        crypto_key: None,
        body,
    })
}

/// Queues `message` at NOW with room for `max_queued` per channel.
async fn queue(
    store: &TestStore,
    uaid: &Uaid,
    message: &Message,
    max_queued: usize,
) -> QueueOutcome {
    store
        .put_message(uaid, message, max_queued, NOW)
        .await
        .expect("put_message")
}

/// Queues every message (each must be stored) in order, and answers them.
async fn queue_all(store: &TestStore, uaid: &Uaid, messages: Vec<Message>) -> Vec<Message> {
    for m in &messages {
        assert_eq!(queue(store, uaid, m, MAX).await, QueueOutcome::Stored);
    }
    messages
}

/// Every message of `uaid` live at `now`, oldest first.
async fn queued_at(store: &TestStore, uaid: &Uaid, now: u64) -> Vec<Message> {
    store.messages(uaid, now, ALL).await.expect("messages")
}

/// Every message of `uaid` live at NOW, oldest first.
async fn queued(store: &TestStore, uaid: &Uaid) -> Vec<Message> {
    queued_at(store, uaid, NOW).await
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id.clone()).collect()
}

/// Whether `delete_message` found message `id` of `channel` of `uaid` at `now`.
async fn deleted(
    store: &TestStore,
    uaid: &Uaid,
    channel: &ChannelId,
    id: &MessageId,
    now: u64,
) -> bool {
    store
        .delete_message(uaid, channel, id, now)
        .await
        .expect("delete_message")
}

/// A message to a channel never registered, unregistered, or of an unknown uaid is Gone,
/// and nothing is stored (nor the uaid created).
pub async fn put_message_to_unknown_channel_is_gone(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    store.unregister(&u, &c[1]).await.unwrap();
    let gone = [
        (&u, message(&channel()), "never registered"),
        (&u, message(&c[1]), "unregistered"),
    ];
    for (who, m, why) in &gone {
        assert_eq!(
            queue(&store, who, m, MAX).await,
            QueueOutcome::Gone,
            "{why}"
        );
    }
    let stranger = uaid();
    let outcome = queue(&store, &stranger, &message(&c[0]), MAX).await;
    assert_eq!(outcome, QueueOutcome::Gone, "unknown uaid");
    assert!(queued(&store, &u).await.is_empty());
    assert!(queued(&store, &stranger).await.is_empty());
    assert!(!store.ack_messages(&u, &[], NOW).await.unwrap());
    assert!(!store.knows_uaid(&stranger).await.unwrap());
    let taken = message(&c[0]);
    assert_eq!(queue(&store, &u, &taken, MAX).await, QueueOutcome::Stored);
    assert_eq!(queued(&store, &u).await, vec![taken]);
}

/// Messages of several channels come back oldest first with every field as queued:
/// each urgency, no payload, `aes128gcm` and `aesgcm` payloads with bodies of every
/// byte value; reading them twice changes nothing.
pub async fn messages_come_back_oldest_first_with_every_field(store: TestStore) {
    let (u, c) = with_channels(&store, 3).await;
    let every_byte: Vec<u8> = (0..=255).collect();
    let legacy = Payload {
        encoding: "aesgcm".to_owned(),
        encryption: Some(r#"keyid="p256dh";salt=c2FsdHkgdGVzdCBzYWx0"#.to_owned()),
        crypto_key: Some(r#"keyid="p256dh";dh=BPdhKeyOfTheTest_-, p256ecdsa=BVapid"#.to_owned()),
        body: every_byte.iter().rev().copied().collect(),
    };
    let sent = vec![
        Message {
            urgency: Urgency::VeryLow,
            ..message(&c[0])
        },
        Message {
            // Accepted 15 s before NOW: ttl and expires_at are kept apart.
            ttl: 60,
            expires_at: NOW + 45,
            topic: Some("weather".to_owned()),
            urgency: Urgency::Low,
            payload: aes128gcm(every_byte.clone()),
            ..message(&c[1])
        },
        Message {
            urgency: Urgency::High,
            payload: Some(legacy),
            ..message(&c[2])
        },
        Message {
            ttl: 2_419_200,
            expires_at: NOW + 2_419_200,
            payload: aes128gcm(vec![0; 3]),
            ..message(&c[0])
        },
        message(&c[1]),
    ];
    let sent = queue_all(&store, &u, sent).await;
    assert_eq!(queued(&store, &u).await, sent);
    assert_eq!(queued(&store, &u).await, sent, "reading removes nothing");
}

/// The largest message the server accepts round-trips: a 64-byte id of assorted
/// printable characters, a 32-character topic and a 4096-byte body.
pub async fn largest_message_round_trips(store: TestStore) {
    let (u, c) = registered(&store).await;
    let id = MessageId::new(format!("{}{}", message_id(), r#"!"'%*,:;\_~/"#));
    assert_eq!(id.as_str().len(), 64);
    let topic = "0123456789-_abcdefghijklmnopqrst";
    assert_eq!(topic.len(), 32);
    let largest = Message {
        id,
        urgency: Urgency::High,
        payload: aes128gcm((0..4096u32).map(|i| (i * 7 % 256) as u8).collect()),
        ..with_topic(&c, topic)
    };
    let sent = queue_all(&store, &u, vec![largest]).await;
    assert_eq!(queued(&store, &u).await, sent);
    assert!(!store.ack_messages(&u, &ids(&sent), NOW).await.unwrap());
    assert!(queued(&store, &u).await.is_empty());
}

/// `ack_messages` removes exactly the named messages of the uaid, whatever their
/// channel; repeats, unknown ids and other uaids' ids are harmless; it answers whether
/// anything is left.
pub async fn ack_messages_removes_exactly_the_named_ids(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let sent = vec![
        message(&c[0]),
        message(&c[1]),
        message(&c[0]),
        message(&c[1]),
    ];
    let sent = queue_all(&store, &u, sent).await;
    let (other, their_channel) = registered(&store).await;
    let theirs = queue_all(&store, &other, vec![message(&their_channel)]).await;
    let acked = [
        sent[1].id.clone(),
        sent[1].id.clone(),
        message_id(),
        theirs[0].id.clone(),
    ];
    assert!(
        store.ack_messages(&u, &acked, NOW).await.unwrap(),
        "three are left"
    );
    let left = vec![sent[0].clone(), sent[2].clone(), sent[3].clone()];
    assert_eq!(queued(&store, &u).await, left);
    assert_eq!(queued(&store, &other).await, theirs);
    assert!(
        store.ack_messages(&u, &[], NOW).await.unwrap(),
        "only answers"
    );
    assert_eq!(queued(&store, &u).await, left);
    assert!(!store.ack_messages(&u, &ids(&sent), NOW).await.unwrap());
    assert!(queued(&store, &u).await.is_empty());
    assert!(!store.ack_messages(&u, &[], NOW).await.unwrap());
    let nobody = uaid();
    assert!(
        !store
            .ack_messages(&nobody, &ids(&theirs), NOW)
            .await
            .unwrap()
    );
    assert!(!store.knows_uaid(&nobody).await.unwrap());
    assert_eq!(queued(&store, &other).await, theirs);
}

/// A message with a topic replaces the channel's queued message of that topic and
/// comes last; the topic on another channel, another topic, or no topic replaces
/// nothing.
pub async fn topic_replaces_the_queued_message_of_that_topic(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let sent = vec![
        with_topic(&c[0], "news"),
        message(&c[0]),
        with_topic(&c[0], "sport"),
        with_topic(&c[1], "news"),
    ];
    let sent = queue_all(&store, &u, sent).await;
    let newer = queue_all(&store, &u, vec![with_topic(&c[0], "news"), message(&c[0])]).await;
    let mut expected = sent[1..].to_vec();
    expected.extend(newer);
    assert_eq!(queued(&store, &u).await, expected);
    assert!(
        !deleted(&store, &u, &c[0], &sent[0].id, NOW).await,
        "replaced"
    );
}

/// Expired messages are never returned (nor counted by `limit`), do not count toward
/// the bound, and do not make `ack_messages` answer true.
pub async fn expired_messages_are_never_returned_nor_counted(store: TestStore) {
    let (u, c) = registered(&store).await;
    let sent = vec![expiring(&c, SOON), expiring(&c, SOON), message(&c)];
    let sent = queue_all(&store, &u, sent).await;
    assert_eq!(queued_at(&store, &u, SOON - 1).await, sent);
    let live = vec![sent[2].clone()];
    assert_eq!(queued_at(&store, &u, SOON).await, live);
    assert_eq!(store.messages(&u, SOON, 1).await.unwrap(), live, "limit");
    // At SOON the channel holds one live message: two more fit under a bound of 3.
    let more = [message(&c), message(&c), message(&c)];
    let outcomes = [
        QueueOutcome::Stored,
        QueueOutcome::Stored,
        QueueOutcome::Full,
    ];
    for (m, outcome) in more.iter().zip(outcomes) {
        assert_eq!(store.put_message(&u, m, 3, SOON).await.unwrap(), outcome);
    }
    let mut live_ids = ids(&live);
    live_ids.extend(ids(&more[..2]));
    assert_eq!(ids(&queued_at(&store, &u, SOON).await), live_ids);
    assert!(!store.ack_messages(&u, &live_ids, SOON).await.unwrap());
    // A uaid holding only a message that expires: true before, false after.
    let (other, their_channel) = registered(&store).await;
    queue_all(&store, &other, vec![expiring(&their_channel, SOON)]).await;
    assert!(store.ack_messages(&other, &[], NOW).await.unwrap());
    assert!(!store.ack_messages(&other, &[], SOON).await.unwrap());
}

/// `delete_message` removes only message `id` of that channel of that uaid, and
/// answers whether it was there and live.
pub async fn delete_message_removes_only_that_message(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let sent = vec![message(&c[0]), message(&c[1]), expiring(&c[0], SOON)];
    let sent = queue_all(&store, &u, sent).await;
    let other = uaid();
    store.register(&other, &c[0], MAX, NOW).await.unwrap();
    let id = &sent[0].id;
    assert!(
        !deleted(&store, &u, &c[1], id, NOW).await,
        "another channel"
    );
    assert!(
        !deleted(&store, &other, &c[0], id, NOW).await,
        "another uaid"
    );
    assert!(
        !deleted(&store, &u, &c[0], &message_id(), NOW).await,
        "unknown"
    );
    assert_eq!(queued(&store, &u).await, sent);
    assert!(deleted(&store, &u, &c[0], id, NOW).await);
    assert!(
        !deleted(&store, &u, &c[0], id, NOW).await,
        "already deleted"
    );
    assert_eq!(queued(&store, &u).await, sent[1..]);
    assert!(
        !deleted(&store, &u, &c[0], &sent[2].id, SOON).await,
        "expired"
    );
    assert_eq!(queued_at(&store, &u, SOON).await, sent[1..2]);
}

/// Unregistering a channel drops its queue, not the other channels'; registering it
/// again starts empty (nothing counts toward the bound, no topic is replaced).
pub async fn unregister_drops_the_channel_queue(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let sent = vec![message(&c[0]), message(&c[1]), with_topic(&c[0], "news")];
    let sent = queue_all(&store, &u, sent).await;
    store.unregister(&u, &c[0]).await.unwrap();
    let kept = vec![sent[1].clone()];
    assert_eq!(queued(&store, &u).await, kept);
    let outcome = queue(&store, &u, &message(&c[0]), MAX).await;
    assert_eq!(outcome, QueueOutcome::Gone);
    assert!(!deleted(&store, &u, &c[0], &sent[0].id, NOW).await);
    store.register(&u, &c[0], MAX, NOW).await.unwrap();
    assert_eq!(queued(&store, &u).await, kept);
    let fresh = with_topic(&c[0], "news");
    assert_eq!(queue(&store, &u, &fresh, 1).await, QueueOutcome::Stored);
    assert_eq!(queued(&store, &u).await, vec![sent[1].clone(), fresh]);
}

/// A channel holds at most `max_queued` messages: one more is Full and changes
/// nothing, while other channels still take messages, a topic replacement is Stored,
/// and an ack makes room.
pub async fn queue_is_bounded_per_channel(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let full = [message(&c[0]), with_topic(&c[0], "news"), message(&c[0])];
    for m in &full {
        assert_eq!(queue(&store, &u, m, 3).await, QueueOutcome::Stored);
    }
    let refused = [message(&c[0]), with_topic(&c[0], "sport")];
    for m in &refused {
        assert_eq!(queue(&store, &u, m, 3).await, QueueOutcome::Full);
    }
    assert_eq!(queued(&store, &u).await, full);
    assert!(!deleted(&store, &u, &c[0], &refused[0].id, NOW).await);
    let taken = [message(&c[1]), with_topic(&c[0], "news")];
    for m in &taken {
        assert_eq!(queue(&store, &u, m, 3).await, QueueOutcome::Stored);
    }
    let mut expected = vec![full[0].clone(), full[2].clone()];
    expected.extend(taken.iter().cloned());
    assert_eq!(queued(&store, &u).await, expected);
    assert!(store.ack_messages(&u, &ids(&full[..1]), NOW).await.unwrap());
    let after_ack = message(&c[0]);
    assert_eq!(queue(&store, &u, &after_ack, 3).await, QueueOutcome::Stored);
    let outcome = queue(&store, &u, &message(&c[0]), 3).await;
    assert_eq!(outcome, QueueOutcome::Full);
    expected.remove(0);
    expected.push(after_ack);
    assert_eq!(queued(&store, &u).await, expected);
}

/// `messages(limit)` answers the oldest `limit` messages.
pub async fn messages_answers_the_oldest_up_to_the_limit(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let sent = queue_all(&store, &u, (0..5).map(|i| message(&c[i % 2])).collect()).await;
    for limit in [0, 1, 3, 5, 6, usize::MAX] {
        let got = store.messages(&u, NOW, limit).await.unwrap();
        assert_eq!(got, sent[..limit.min(sent.len())], "limit {limit}");
    }
}

/// Dropping a uaid drops its messages, and only its own; its channels, registered
/// again, start empty.
pub async fn drop_uaid_drops_messages(store: TestStore) {
    let (u, c) = registered(&store).await;
    let (other, their_channel) = registered(&store).await;
    queue_all(&store, &u, vec![message(&c), message(&c)]).await;
    let theirs = queue_all(&store, &other, vec![message(&their_channel)]).await;
    store.drop_uaid(&u).await.unwrap();
    assert!(queued(&store, &u).await.is_empty());
    assert!(!store.ack_messages(&u, &[], NOW).await.unwrap());
    let outcome = queue(&store, &u, &message(&c), MAX).await;
    assert_eq!(outcome, QueueOutcome::Gone);
    store.register(&u, &c, MAX, NOW).await.unwrap();
    assert!(queued(&store, &u).await.is_empty());
    assert_eq!(queued(&store, &other).await, theirs);
}

/// The same channel id under two uaids has two queues: topics, bounds, acks, deletes
/// and unregisters of one never touch the other.
pub async fn message_queues_of_uaids_are_isolated(store: TestStore) {
    let (a, c) = registered(&store).await;
    let b = uaid();
    store.register(&b, &c, MAX, NOW).await.unwrap();
    let ours = queue_all(&store, &a, vec![with_topic(&c, "news"), message(&c)]).await;
    let mut theirs = queue_all(&store, &b, vec![with_topic(&c, "news")]).await;
    let extra = message(&c);
    assert_eq!(queue(&store, &b, &extra, 2).await, QueueOutcome::Stored);
    theirs.push(extra);
    assert_eq!(queued(&store, &a).await, ours);
    assert_eq!(queued(&store, &b).await, theirs);
    assert!(store.ack_messages(&b, &ids(&ours), NOW).await.unwrap());
    assert!(!deleted(&store, &b, &c, &ours[1].id, NOW).await);
    assert_eq!(queued(&store, &a).await, ours);
    store.unregister(&b, &c).await.unwrap();
    assert!(queued(&store, &b).await.is_empty());
    assert_eq!(queued(&store, &a).await, ours);
}

/// Messages come back in id order whatever order they arrived in: requests race
/// between minting an id and storing their message.
pub async fn messages_are_ordered_by_id_not_arrival(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let sent: Vec<Message> = (0..4).map(|i| message(&c[i % 2])).collect();
    let arrival = [&sent[2], &sent[0], &sent[3], &sent[1]];
    queue_all(&store, &u, arrival.into_iter().cloned().collect()).await;
    assert_eq!(queued(&store, &u).await, sent);
    assert_eq!(store.messages(&u, NOW, 1).await.unwrap(), sent[..1]);
}

/// Concurrent puts on one uaid (16 tasks, 4 channels, ids minted before the race) lose
/// nothing and come back in id order.
pub async fn concurrent_put_messages_lose_nothing(store: TestStore) {
    let (u, c) = with_channels(&store, 4).await;
    let sent: Vec<Message> = (0..160).map(|i| message(&c[i % c.len()])).collect();
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (store, u) = (store.clone(), u.clone());
            let mine: Vec<Message> = sent.iter().skip(task).step_by(16).cloned().collect();
            tokio::spawn(async move {
                for m in &mine {
                    assert_eq!(queue(&store, &u, m, MAX).await, QueueOutcome::Stored);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(queued(&store, &u).await, sent);
}

/// SimplePush updates and WebPush messages of one channel do not disturb each other:
/// acks of one never remove the other, each answers only for its own kind, and a
/// pending update does not count toward the message bound.
pub async fn updates_and_messages_are_independent(store: TestStore) {
    let (u, c) = registered(&store).await;
    assert_eq!(put(&store, &u, &c, update(5)).await, PutOutcome::Stored);
    let first = message(&c);
    assert_eq!(queue(&store, &u, &first, 1).await, QueueOutcome::Stored);
    assert_eq!(pending_version(&store, &u, &c).await, Some(5));
    assert!(
        !store.ack(&u, &c, 5).await.unwrap(),
        "messages are not updates"
    );
    assert_eq!(queued(&store, &u).await, vec![first.clone()]);
    assert_eq!(put(&store, &u, &c, update(6)).await, PutOutcome::Stored);
    let acked = ids(std::slice::from_ref(&first));
    assert!(
        !store.ack_messages(&u, &acked, NOW).await.unwrap(),
        "updates are not messages"
    );
    assert_eq!(pending_version(&store, &u, &c).await, Some(6));
    assert!(queued(&store, &u).await.is_empty());
}

/// Whether a uaid is known depends on its channels only: queued messages do not keep
/// it known, and acking or deleting its last message does not forget it.
pub async fn knows_uaid_is_decided_by_channels_not_messages(store: TestStore) {
    let (u, c) = with_channels(&store, 2).await;
    let sent = queue_all(&store, &u, vec![message(&c[0]), message(&c[1])]).await;
    assert!(store.ack_messages(&u, &ids(&sent[..1]), NOW).await.unwrap());
    assert!(deleted(&store, &u, &c[1], &sent[1].id, NOW).await);
    assert!(!store.ack_messages(&u, &[], NOW).await.unwrap());
    assert!(
        store.knows_uaid(&u).await.unwrap(),
        "no message left, channels are"
    );
    queue_all(&store, &u, vec![message(&c[0])]).await;
    store.unregister(&u, &c[1]).await.unwrap();
    assert!(store.knows_uaid(&u).await.unwrap());
    store.unregister(&u, &c[0]).await.unwrap();
    assert!(
        !store.knows_uaid(&u).await.unwrap(),
        "a message does not keep it known"
    );
}

/// The health check answers on a working store.
pub async fn check_succeeds(store: TestStore) {
    store.check().await.expect("check");
}

// ---- Retention: devices not seen for a device TTL are forgotten ----

/// How a backend forgets the devices it has not seen for a device TTL, which decides how
/// the retention behaviours make time pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The server's [`Store::sweep`] removes them: the behaviours run a test clock and
    /// sweep with a cutoff one TTL (100 s) before it.
    Sweep,
    /// The storage expires them by itself, this long after the device was last seen (a
    /// register or touch) and less than two seconds more (memcache item lifetimes, on
    /// memcached's one-second clock): the behaviours wait in real time.
    ItemLifetime(Duration),
}

/// The test TTL of [`Retention::Sweep`], in seconds of the test clock.
const SWEEP_TTL: u64 = 100;

/// Time for the retention behaviours: a test clock under [`Retention::Sweep`], the
/// real one under [`Retention::ItemLifetime`].
struct Aging {
    store: TestStore,
    retention: Retention,
    now: u64,
}

impl Aging {
    fn new(store: &TestStore, retention: Retention) -> Aging {
        let now = match retention {
            Retention::Sweep => NOW,
            Retention::ItemLifetime(_) => unix_now(),
        };
        Aging {
            store: store.clone(),
            retention,
            now,
        }
    }

    /// The device TTL in seconds.
    fn ttl(&self) -> u64 {
        match self.retention {
            Retention::Sweep => SWEEP_TTL,
            Retention::ItemLifetime(ttl) => ttl.as_secs(),
        }
    }

    /// Lets `eighths` eighths of a TTL pass.
    async fn pass(&mut self, eighths: u64) {
        match self.retention {
            Retention::Sweep => self.now += self.ttl() * eighths / 8,
            Retention::ItemLifetime(ttl) => {
                tokio::time::sleep(ttl * eighths as u32 / 8).await;
                self.now = unix_now();
            }
        }
    }

    /// Has the store forget every device not seen for a TTL (under
    /// [`Retention::Sweep`], sweeps until nothing is left; the storage did it by itself
    /// otherwise), answering what the sweeps removed.
    async fn forget(&self) -> Swept {
        let mut total = Swept::default();
        if self.retention != Retention::Sweep {
            return total;
        }
        for _ in 0..10_000 {
            let cutoff = self.now - self.ttl();
            let step = self.store.sweep(cutoff, self.now, 7).await.expect("sweep");
            assert!(
                step.devices <= 7 && step.messages <= 7,
                "a step keeps to its limit"
            );
            total.devices += step.devices;
            total.messages += step.messages;
            if !step.more {
                return total;
            }
        }
        panic!("the sweep never finished");
    }

    /// A fresh uaid with `n` channels registered now.
    async fn device(&self, n: usize) -> (Uaid, Vec<ChannelId>) {
        let u = uaid();
        let mut channels = Vec::new();
        for _ in 0..n {
            let c = channel();
            let outcome = self.store.register(&u, &c, MAX, self.now).await;
            assert_eq!(outcome.expect("register"), RegisterOutcome::Registered);
            channels.push(c);
        }
        (u, channels)
    }

    /// An update to keep pending for ten TTLs.
    fn lasting_update(&self, version: u64) -> Update {
        Update {
            version,
            data: Some(format!("v{version}")),
            expires_at: self.now + 10 * self.ttl(),
        }
    }

    /// A message for `channel` live for ten TTLs.
    fn lasting_message(&self, channel: &ChannelId) -> Message {
        Message {
            ttl: 10 * self.ttl(),
            expires_at: self.now + 10 * self.ttl(),
            ..message(channel)
        }
    }

    /// Asserts that the store holds nothing of `uaid` any more.
    async fn assert_forgotten(&self, uaid: &Uaid, channels: &[ChannelId]) {
        let store = &self.store;
        assert!(!store.knows_uaid(uaid).await.unwrap(), "forgotten");
        for c in channels {
            assert!(!store.registered(uaid, c).await.unwrap(), "channel gone");
        }
        assert!(store.pending(uaid, self.now).await.unwrap().is_empty());
        assert!(
            store
                .messages(uaid, self.now, ALL)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.node(uaid).await.unwrap(), None, "node record gone");
        let put = store.put_update(uaid, &channels[0], self.lasting_update(9), self.now);
        assert_eq!(put.await.unwrap(), PutOutcome::Gone);
        let message = self.lasting_message(&channels[0]);
        let queued = store.put_message(uaid, &message, MAX, self.now);
        assert_eq!(queued.await.unwrap(), QueueOutcome::Gone);
    }

    /// Asserts that the store still holds `uaid` with its `channels`.
    async fn assert_kept(&self, uaid: &Uaid, channels: &[ChannelId]) {
        assert!(self.store.knows_uaid(uaid).await.unwrap(), "still known");
        for c in channels {
            assert!(
                self.store.registered(uaid, c).await.unwrap(),
                "channel kept"
            );
        }
    }
}

/// A device not seen for a TTL is forgotten with everything it had: channels, a pending
/// update, a queued message, its node record; later puts to it are Gone. A device
/// seen within the TTL is kept with what it had.
pub async fn a_device_not_seen_for_a_ttl_is_forgotten(store: TestStore, retention: Retention) {
    let mut aging = Aging::new(&store, retention);
    let (old, old_channels) = aging.device(2).await;
    let put = store.put_update(&old, &old_channels[0], aging.lasting_update(3), aging.now);
    assert_eq!(put.await.unwrap(), PutOutcome::Stored);
    let message = aging.lasting_message(&old_channels[1]);
    let queued = store.put_message(&old, &message, MAX, aging.now);
    assert_eq!(queued.await.unwrap(), QueueOutcome::Stored);
    store.set_node(&old, "http://node-a").await.unwrap();
    let (kept, kept_channels) = aging.device(1).await;
    let put = store.put_update(&kept, &kept_channels[0], aging.lasting_update(4), aging.now);
    assert_eq!(put.await.unwrap(), PutOutcome::Stored);

    aging.pass(5).await;
    store.touch(&kept, aging.now).await.unwrap();
    aging.pass(5).await;
    let swept = aging.forget().await;

    aging.assert_forgotten(&old, &old_channels).await;
    aging.assert_kept(&kept, &kept_channels).await;
    let pending = store.pending(&kept, aging.now).await.unwrap();
    assert_eq!(pending.updates.len(), 1, "the kept device keeps its update");
    assert_eq!(pending.updates[0].1.version, 4);
    if retention == Retention::Sweep {
        assert_eq!(swept.devices, 1, "exactly the old device");
    }
}

/// A touch (a hello) keeps a device for another TTL from then, and only for that long.
pub async fn a_touch_keeps_a_device_for_another_ttl(store: TestStore, retention: Retention) {
    let mut aging = Aging::new(&store, retention);
    let (u, channels) = aging.device(1).await;
    aging.pass(5).await;
    store.touch(&u, aging.now).await.unwrap();
    aging.pass(5).await;
    aging.forget().await;
    aging.assert_kept(&u, &channels).await;
    aging.pass(5).await;
    aging.forget().await;
    aging.assert_forgotten(&u, &channels).await;
}

/// A register counts as seeing the device, like a touch.
pub async fn a_register_counts_as_seen(store: TestStore, retention: Retention) {
    let mut aging = Aging::new(&store, retention);
    let (u, mut channels) = aging.device(1).await;
    aging.pass(5).await;
    let late = channel();
    let outcome = store.register(&u, &late, MAX, aging.now).await.unwrap();
    assert_eq!(outcome, RegisterOutcome::Registered);
    channels.push(late);
    aging.pass(5).await;
    aging.forget().await;
    aging.assert_kept(&u, &channels).await;
}

/// A touch creates nothing: a uaid the store never held stays unknown.
pub async fn a_touch_of_an_unknown_uaid_creates_nothing(store: TestStore, retention: Retention) {
    let aging = Aging::new(&store, retention);
    let stranger = uaid();
    store.touch(&stranger, aging.now).await.unwrap();
    assert!(!store.knows_uaid(&stranger).await.unwrap());
    assert_eq!(store.node(&stranger).await.unwrap(), None);
    assert!(
        store
            .pending(&stranger, aging.now)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A node record alone (a hello that never registered) does not outlive a TTL, while a
/// registered device seen within one keeps its own.
pub async fn a_node_record_alone_does_not_linger(store: TestStore, retention: Retention) {
    let mut aging = Aging::new(&store, retention);
    let lone = uaid();
    store.set_node(&lone, "http://node-a").await.unwrap();
    aging.pass(5).await;
    let (registered, channels) = aging.device(1).await;
    store.set_node(&registered, "http://node-b").await.unwrap();
    aging.pass(5).await;
    aging.forget().await;

    assert_eq!(
        store.node(&lone).await.unwrap(),
        None,
        "the lone record goes"
    );
    assert!(!store.knows_uaid(&lone).await.unwrap());
    aging.assert_kept(&registered, &channels).await;
    assert_eq!(
        store.node(&registered).await.unwrap().as_deref(),
        Some("http://node-b"),
        "a live device keeps its node record"
    );
}

/// The cutoff is exclusive: a device seen exactly at it stays, one seen a second
/// before goes.
pub async fn sweep_spares_a_device_seen_at_the_cutoff(store: TestStore) {
    let aging = Aging::new(&store, Retention::Sweep);
    let (at, at_channels) = aging.device(1).await;
    let (before, before_channels) = aging.device(1).await;
    store.touch(&at, NOW - SWEEP_TTL).await.unwrap();
    store.touch(&before, NOW - SWEEP_TTL - 1).await.unwrap();
    let swept = store.sweep(NOW - SWEEP_TTL, NOW, ALL).await.unwrap();
    assert_eq!(swept.devices, 1);
    assert!(!swept.more);
    aging.assert_kept(&at, &at_channels).await;
    aging.assert_forgotten(&before, &before_channels).await;
}

/// A sweep removes at most `limit` devices per step and says when it stopped at the
/// limit; repeated, it removes every old device and no fresh one.
pub async fn sweep_goes_in_bounded_steps(store: TestStore) {
    let mut aging = Aging::new(&store, Retention::Sweep);
    let mut old = Vec::new();
    for _ in 0..25 {
        old.push(aging.device(1).await);
    }
    aging.pass(10).await;
    let (fresh, fresh_channels) = aging.device(1).await;
    let cutoff = aging.now - SWEEP_TTL;
    let mut steps = Vec::new();
    loop {
        let step = store.sweep(cutoff, aging.now, 10).await.unwrap();
        assert!(step.devices <= 10, "at most the limit: {step:?}");
        steps.push(step.devices);
        if !step.more {
            break;
        }
        assert!(steps.len() < 10, "the sweep never finished: {steps:?}");
    }
    assert_eq!(
        steps.iter().sum::<u64>(),
        25,
        "every old device, once: {steps:?}"
    );
    assert!(
        steps.len() >= 3,
        "25 devices take three steps of 10: {steps:?}"
    );
    for (u, channels) in &old {
        aging.assert_forgotten(u, channels).await;
    }
    aging.assert_kept(&fresh, &fresh_channels).await;
}

/// Expired WebPush messages are removed from storage by the sweep, not only hidden: a
/// read with a clock from before their expiry no longer finds them. Unexpired ones of
/// the same device, and the device itself, stay.
pub async fn sweep_removes_expired_messages_from_storage(store: TestStore) {
    let aging = Aging::new(&store, Retention::Sweep);
    let (u, c) = aging.device(2).await;
    let short = expiring(&c[0], NOW + 10);
    let long = aging.lasting_message(&c[1]);
    queue_all(&store, &u, vec![short.clone(), long.clone()]).await;
    let swept = store.sweep(NOW - SWEEP_TTL, NOW + 20, ALL).await.unwrap();
    assert_eq!(
        swept,
        Swept {
            devices: 0,
            messages: 1,
            more: false
        }
    );
    assert_eq!(
        queued_at(&store, &u, NOW).await,
        vec![long],
        "the expired one is gone"
    );
    aging.assert_kept(&u, &c).await;
    let again = store.sweep(NOW - SWEEP_TTL, NOW + 20, ALL).await.unwrap();
    assert_eq!(again, Swept::default(), "nothing left to remove");
}

/// With every device fresh and nothing expired, a sweep removes nothing.
pub async fn sweep_with_nothing_to_forget_removes_nothing(store: TestStore) {
    let aging = Aging::new(&store, Retention::Sweep);
    let (u, c) = aging.device(2).await;
    queue_all(&store, &u, vec![aging.lasting_message(&c[0])]).await;
    let swept = store.sweep(NOW - SWEEP_TTL, NOW, ALL).await.unwrap();
    assert_eq!(swept, Swept::default());
    aging.assert_kept(&u, &c).await;
    assert_eq!(queued(&store, &u).await.len(), 1);
}

/// Expands into one `#[tokio::test]` per behaviour of the suite. `$make` is an
/// expression evaluating to a future of `(TestStore, guard)`; the guard (a temporary
/// directory, a server handle) lives until the test ends.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@common $make);
        $crate::conformance_suite!(@retention $make, $crate::testkit::Retention::Sweep;
            a_device_not_seen_for_a_ttl_is_forgotten,
            a_touch_keeps_a_device_for_another_ttl,
            a_register_counts_as_seen,
            a_touch_of_an_unknown_uaid_creates_nothing,
            a_node_record_alone_does_not_linger,
        );
        $crate::conformance_suite!(@each $make;
            sweep_spares_a_device_seen_at_the_cutoff,
            sweep_goes_in_bounded_steps,
            sweep_removes_expired_messages_from_storage,
            sweep_with_nothing_to_forget_removes_nothing,
        );
    };
    // A store that forgets by itself: `$aging` makes one whose items live
    // `$lifetime` (a `Duration`) after the device was last seen.
    ($make:expr, forgets_by_itself: $aging:expr, $lifetime:expr) => {
        $crate::conformance_suite!(@common $make);
        $crate::conformance_suite!(@retention $aging,
            $crate::testkit::Retention::ItemLifetime($lifetime);
            a_device_not_seen_for_a_ttl_is_forgotten,
            a_touch_keeps_a_device_for_another_ttl,
            a_register_counts_as_seen,
            a_touch_of_an_unknown_uaid_creates_nothing,
            a_node_record_alone_does_not_linger,
        );
    };
    (@common $make:expr) => {
        $crate::conformance_suite!(@each $make;
            knows_uaid_only_with_channels,
            registered_answers_per_channel,
            register_is_idempotent_and_keeps_pending,
            register_enforces_channel_limit,
            unregister_drops_pending_and_puts_are_gone,
            put_to_unknown_channel_is_gone,
            put_keeps_greatest_version_with_its_data,
            largest_version_round_trips,
            ack_of_older_version_keeps_newer,
            ack_answers_whether_anything_is_left,
            ack_of_unknown_is_harmless,
            ack_many_acks_several_channels_at_once,
            ack_many_keeps_a_newer_version_that_raced_in,
            ack_many_with_repeated_channels_takes_the_greatest_version,
            ack_many_drops_expired_updates_only,
            ack_many_answers_whether_anything_is_left,
            pending_lists_every_channel_and_is_read_only,
            expired_update_is_reported_until_acknowledged,
            put_replaces_expired_update,
            drop_uaid_forgets_everything,
            uaids_are_isolated,
            concurrent_registers_lose_nothing,
            concurrent_puts_keep_greatest,
            node_record_is_cleared_only_by_its_node,
            node_record_keeps_channels,
            put_message_to_unknown_channel_is_gone,
            messages_come_back_oldest_first_with_every_field,
            largest_message_round_trips,
            ack_messages_removes_exactly_the_named_ids,
            topic_replaces_the_queued_message_of_that_topic,
            expired_messages_are_never_returned_nor_counted,
            delete_message_removes_only_that_message,
            unregister_drops_the_channel_queue,
            queue_is_bounded_per_channel,
            messages_answers_the_oldest_up_to_the_limit,
            drop_uaid_drops_messages,
            message_queues_of_uaids_are_isolated,
            messages_are_ordered_by_id_not_arrival,
            concurrent_put_messages_lose_nothing,
            updates_and_messages_are_independent,
            knows_uaid_is_decided_by_channels_not_messages,
            check_succeeds,
        );
    };
    (@retention $make:expr, $retention:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $make.await;
                $crate::testkit::$name(store, $retention).await;
            }
        )*
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $make.await;
                $crate::testkit::$name(store).await;
            }
        )*
    };
}
