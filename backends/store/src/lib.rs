//! The storage contract of simplepush: the [`Store`] trait every backend implements,
//! the ids and records it speaks in, its error type, the in-memory [`MemoryStore`], a
//! wrapper that passes every call through a [`Hook`] ([`Hooked`]),
//! the writer thread with group commit the embedded backends share ([`writer`]), and
//! (feature `testkit`) the conformance suite every backend must pass.

mod error;
mod hooked;
mod id;
mod memory;
mod model;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod writer;

pub use error::StoreError;
pub use hooked::{Hook, Hooked};
pub use id::{ChannelId, MessageId, Uaid};
pub use memory::MemoryStore;
pub use model::{
    Message, Payload, Pending, PutOutcome, QueueOutcome, RegisterOutcome, Swept, Update, Urgency,
};

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

/// This machine's clock in UNIX seconds (0 if it reads before 1970): the `now` callers
/// pass to a [`Store`], and the clock memcached's item lifetimes run on.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Where a device's channels and pending updates live.
///
/// Every method is safe to call concurrently from many tasks; a method that changes
/// state does so atomically with respect to the other methods on the same uaid.
/// "Missing" is never an error: unknown uaids and channels answer with the empty or
/// negative value the method documents. Errors mean the store could not answer
/// (see [`StoreError`]) and leave what was stored before unchanged.
///
/// Times (`now`, `expires_at`) are UNIX seconds chosen by the caller, so expiry is
/// deterministic and testable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics ("memory", "sqlite", ...).
    fn name(&self) -> &'static str;

    /// Whether the store holds any registered channel for `uaid`.
    ///
    /// A device that says hello with channel ids the store does not know has lost its
    /// data (eviction, a wiped disk) and must register again.
    async fn knows_uaid(&self, uaid: &Uaid) -> Result<bool, StoreError>;

    /// Whether `channel` is registered for `uaid`. Read-only: for answers that must not
    /// store anything (a WebPush push with TTL 0 to a channel that is gone is still 410).
    async fn registered(&self, uaid: &Uaid, channel: &ChannelId) -> Result<bool, StoreError>;

    /// Registers `channel` for `uaid`. Idempotent: registering a live channel again
    /// answers [`RegisterOutcome::Registered`] and keeps its pending update.
    /// A new channel beyond `max_channels` live ones answers
    /// [`RegisterOutcome::TooManyChannels`] and changes nothing. A register that
    /// answers [`RegisterOutcome::Registered`] also records `now` as the time `uaid`
    /// was last seen, as [`Store::touch`] does, creating the device's record.
    async fn register(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max_channels: usize,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError>;

    /// Drops `channel` with its pending update and its queued WebPush messages; later
    /// puts to it answer [`PutOutcome::Gone`] (and [`QueueOutcome::Gone`]). Idempotent:
    /// unknown channels are fine.
    async fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), StoreError>;

    /// Records `update` as pending for a registered channel, keeping only the greatest
    /// version seen (with its data): a lower or equal version never replaces a greater
    /// pending one, but still answers [`PutOutcome::Stored`]. A pending update that has
    /// expired at `now` is replaced by any new one. Answers [`PutOutcome::Gone`] when the channel
    /// is not registered for `uaid`. Durable backends persist before returning.
    async fn put_update(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        update: Update,
        now: u64,
    ) -> Result<PutOutcome, StoreError>;

    /// Everything pending for `uaid` at time `now`: updates whose `expires_at` is after
    /// `now`, and the channels whose pending update has expired (reported until the
    /// expiry is acknowledged, see [`Store::ack_many`]). Read-only.
    async fn pending(&self, uaid: &Uaid, now: u64) -> Result<Pending, StoreError>;

    /// Applies the acknowledgements of one device frame at once, atomically for `uaid`
    /// (another call on `uaid` sees all of them or none):
    /// - each `(channel, version)` of `updates` drops the channel's pending update if its
    ///   version is `<= version`; a newer pending version (one that raced the ack) stays;
    /// - each channel of `expired` drops the channel's pending update if it has expired
    ///   at `now` (the device acknowledged the expiry); one that has not expired stays.
    ///
    /// A channel may appear several times and in both lists: the outcome is that of
    /// applying every entry, so the greatest acked version counts. Unknown uaids and
    /// channels, and channels with nothing pending, are fine; nothing is ever created.
    /// Backends do it in one storage operation, whatever the number of entries.
    ///
    /// Answers whether `uaid` still has a pending update afterwards, in any channel,
    /// expired or not: the caller flushes only then, without a [`Store::pending`] read
    /// after every ack. Empty lists change nothing and only answer that.
    async fn ack_many(
        &self,
        uaid: &Uaid,
        updates: &[(ChannelId, u64)],
        expired: &[ChannelId],
        now: u64,
    ) -> Result<bool, StoreError>;

    /// [`Store::ack_many`] of one update.
    async fn ack(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        version: u64,
    ) -> Result<bool, StoreError> {
        let updates = [(channel.clone(), version)];
        self.ack_many(uaid, &updates, &[], 0).await
    }

    /// [`Store::ack_many`] of one expiry.
    async fn ack_expired(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.ack_many(uaid, &[], std::slice::from_ref(channel), now)
            .await
    }

    /// Queues a WebPush `message` for its channel (`message.channel`) of `uaid`.
    ///
    /// - The channel not registered for `uaid`: [`QueueOutcome::Gone`], nothing stored.
    /// - A message with a `topic` replaces the channel's queued message with the same
    ///   topic, if there is one: that one is removed and the new one queued in its own
    ///   place (by its id, so last).
    /// - Messages of the channel that have expired at `now` are removed (or at least
    ///   never counted nor returned again).
    /// - If the channel still holds `max_queued` unexpired messages, not counting one
    ///   this message replaces: [`QueueOutcome::Full`], nothing changed.
    ///
    /// Atomic for `uaid`. Durable backends persist before returning (a 201 means on
    /// disk), as [`Store::put_update`] does.
    async fn put_message(
        &self,
        uaid: &Uaid,
        message: &Message,
        max_queued: usize,
        now: u64,
    ) -> Result<QueueOutcome, StoreError>;

    /// The queued WebPush messages of `uaid` over all its channels that have not
    /// expired at `now`, oldest first (ascending id), at most `limit` of them (the
    /// oldest). Read-only; nothing is removed.
    async fn messages(
        &self,
        uaid: &Uaid,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Removes the messages of `uaid` with these ids (whatever their channel), in one
    /// storage operation, atomically for `uaid`. Unknown ids and repeats are fine.
    /// Answers whether `uaid` still has a queued message unexpired at `now`.
    async fn ack_messages(
        &self,
        uaid: &Uaid,
        ids: &[MessageId],
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Removes message `id` of `channel` of `uaid` (an app server withdrew it). Answers
    /// whether it was queued and unexpired at `now`; a message of another channel, or
    /// of another uaid, is never touched.
    async fn delete_message(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        id: &MessageId,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Records `now` as the time `uaid` was last seen (its hello), so retention keeps
    /// it for another device TTL. Sets the time (not the greater of the two). Creates
    /// nothing: an unknown uaid is fine, and its first register records the time.
    /// Stores that forget by themselves (memcache item lifetimes) restart the lifetime
    /// of what they hold for `uaid` instead.
    async fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), StoreError>;

    /// Retention, one bounded step of it:
    /// - removes up to `limit` devices last seen (by [`Store::touch`] or
    ///   [`Store::register`]) before `cutoff`, each entirely, as [`Store::drop_uaid`]
    ///   does. A device touched at or after `cutoff` is never removed, even one touched
    ///   while the sweep runs;
    /// - removes from storage up to `limit` WebPush messages (of any device) that have
    ///   expired at `now`.
    ///
    /// Each step is short (bounded by `limit`) and does not hold up other calls for
    /// long; the caller repeats it while [`Swept::more`] says so. Stores that forget by
    /// themselves (memcache) remove nothing and answer [`Swept::default`].
    async fn sweep(&self, cutoff: u64, now: u64, limit: usize) -> Result<Swept, StoreError>;

    /// Forgets `uaid` entirely: channels, pending updates, queued messages, node
    /// record and last-seen time.
    async fn drop_uaid(&self, uaid: &Uaid) -> Result<(), StoreError>;

    /// Records that `uaid` is connected to the node reachable at `node` (cluster
    /// routing), replacing any earlier record.
    async fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), StoreError>;

    /// The node `uaid` was last recorded on, if any.
    async fn node(&self, uaid: &Uaid) -> Result<Option<String>, StoreError>;

    /// Clears the node record of `uaid` only if it still names `node` (so a node never
    /// erases the record of the node the device moved to). Answers whether it cleared.
    async fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, StoreError>;

    /// A round trip to the storage (write and read back), for `/realstatus/`.
    async fn check(&self) -> Result<(), StoreError>;

    /// Flushes what is buffered and releases the storage; called once at shutdown.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
