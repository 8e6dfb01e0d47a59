//! The conformance suite: one function per behaviour of the [`Store`] contract. Every
//! backend runs all of them through [`conformance_suite!`](crate::conformance_suite).
//! Each function uses fresh random ids, so the suite is safe on a shared memcached.

use std::sync::Arc;

use crate::{ChannelId, Pending, PutOutcome, RegisterOutcome, Store, Uaid, Update};

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
    let outcome = store.register(&u, &c, MAX).await.expect("register");
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
    store.register(&u, &c, MAX).await.unwrap();
    assert!(store.knows_uaid(&u).await.unwrap());
    store.unregister(&u, &c).await.unwrap();
    assert!(!store.knows_uaid(&u).await.unwrap());
}

/// Registering a channel twice succeeds and keeps its pending update.
pub async fn register_is_idempotent_and_keeps_pending(store: TestStore) {
    let (u, c) = registered(&store).await;
    assert_eq!(put(&store, &u, &c, update(7)).await, PutOutcome::Stored);
    let again = store.register(&u, &c, MAX).await.unwrap();
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
            store.register(&u, c, 3).await.unwrap(),
            RegisterOutcome::Registered
        );
    }
    let extra = channel();
    assert_eq!(
        store.register(&u, &extra, 3).await.unwrap(),
        RegisterOutcome::TooManyChannels
    );
    assert_eq!(put(&store, &u, &extra, update(1)).await, PutOutcome::Gone);
    assert_eq!(
        store.register(&u, &channels[0], 3).await.unwrap(),
        RegisterOutcome::Registered
    );
    store.unregister(&u, &channels[1]).await.unwrap();
    assert_eq!(
        store.register(&u, &extra, 3).await.unwrap(),
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
    store.register(&u, &b, MAX).await.unwrap();
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

/// A uaid with `n` fresh channels, each with version `version` pending.
async fn with_pending(store: &TestStore, n: usize, version: u64) -> (Uaid, Vec<ChannelId>) {
    let u = uaid();
    let channels: Vec<ChannelId> = (0..n).map(|_| channel()).collect();
    for c in &channels {
        store.register(&u, c, MAX).await.unwrap();
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
        store.register(&u, c, MAX).await.unwrap();
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
        store.register(&u, c, MAX).await.unwrap();
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
    store.register(&b, &c, MAX).await.unwrap();
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
            tokio::spawn(async move { store.register(&u, &c, MAX).await })
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

/// The health check answers on a working store.
pub async fn check_succeeds(store: TestStore) {
    store.check().await.expect("check");
}

/// Expands into one `#[tokio::test]` per behaviour of the suite. `$make` is an
/// expression evaluating to a future of `(TestStore, guard)`; the guard (a temporary
/// directory, a server handle) lives until the test ends.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@each $make;
            knows_uaid_only_with_channels,
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
            check_succeeds,
        );
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
