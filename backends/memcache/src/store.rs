//! [`MemcacheStore`]: the [`Store`] on a pool of memcached servers, shared by a
//! cluster of nodes.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join, join_all};
use simplepush_store::{
    ChannelId, Message, MessageId, Pending, PutOutcome, QueueOutcome, RegisterOutcome, Store,
    StoreError, Swept, Uaid, Update,
};

use crate::error::Error;
use crate::options::{
    expiration, expiration_at, record_expiration, record_left, unix_now, whole_seconds,
};
use crate::record::{Device, MessageItem, NODE_CLEARED, Queued, Slot, decode_node, encode_node};
use crate::rendezvous::Rendezvous;
use crate::server::Server;
use crate::{MemcacheOptions, address, key};

/// How often a read-modify-write is retried after losing a compare-and-swap race
/// before giving up with [`StoreError::Conflict`]. Every round has a winner, so this
/// covers dozens of simultaneous writers to one device.
const CAS_ATTEMPTS: u32 = 64;

/// Room in an item for memcached's header and a key of up to 250 bytes: memcached
/// 1.6 stores a value of up to 1,048,256 bytes with a 250-byte key in a 1 MiB item.
const ITEM_OVERHEAD: usize = 512;

/// The least `item_limit`: memcached's own least item size.
const MIN_ITEM_LIMIT: usize = 1024;

/// Health-check items expire on their own, so a check that fails midway leaves
/// nothing behind for long.
const CHECK_EXPIRATION: u32 = 30;

/// Seconds a message item outlives its expiry, or the device record holding its index
/// entry: memcached's clock ticks by the second and need not agree with ours to the
/// second, and an item must never vanish while the index still calls it unexpired. (A
/// late item is harmless: the index decides.)
const MESSAGE_EXPIRY_MARGIN: u64 = 2;

/// A [`Store`] on one or more memcached servers.
///
/// Each device is one item (when it was last seen, its channels and pending updates,
/// in a compact binary layout) changed by compare-and-swap, plus one item naming the
/// node it is connected to.
/// Keys are spread over the servers by rendezvous hashing, so every node agrees on
/// where a key lives whatever order its config lists the servers in, and adding a
/// server moves only the keys it takes over.
///
/// **Volatile by design:** items expire [`MemcacheOptions::ttl`] after the device was
/// last seen (see Retention below), and memcached may evict them earlier under memory
/// pressure or lose them in a restart. A device whose record is gone is told to
/// register again by the hello rule (docs/protocol.md: non-empty `channelIDs` the store
/// does not know get a fresh uaid); updates pending at that moment are lost. Use a
/// durable backend where that matters.
///
/// A device's record must fit in one memcached item ([`MemcacheOptions::item_limit`],
/// 1 MiB by default, less 512 bytes for the header and key). Its size depends only on
/// its contents' lengths, never on which characters the data holds: at most 4,157
/// bytes per channel with a 36-byte id and 4 KiB of data, so the protocol's 200
/// channels with 4 KiB pending on each take at most 831,414 bytes (with the last-seen
/// time and an empty index). A change that would not fit fails with
/// [`StoreError::TooLarge`] and leaves the record as it was.
///
/// **WebPush messages** are queued one item each (`sp1:m:<uaid>:<id>`, body and
/// headers), with a small index in the device record: per channel, each message's
/// id, expiry and topic (at most 109 bytes with a 64-byte id and a 32-byte topic).
/// Bodies of up to 4 KiB in the record would fill the 1 MiB item after some 250
/// messages for the whole device; in their own items, the record has room for some
/// 9,000 index entries, and the channel's bound (`max_queued`) with the dropping of
/// expired entries at every put keeps the index small. A message item expires by
/// itself in memcached when the message does, or when the device record holding its
/// index entry does, if that comes first (plus a margin of two seconds either way):
/// once the record (and with it the index) is gone, nothing names the item, so it
/// never outlives the record by more than the margin.
/// - [`Store::put_message`] reads the index and decides (registered channel, expired
///   entries dropped, topic replaced, bound checked); when it takes the message, it
///   writes the message item, then the index by compare-and-swap. The item comes
///   first so an index entry always names an item that was written; a refused message
///   (Gone, Full) writes no item, and when a retry refuses it or a step fails, the
///   item is deleted again.
/// - [`Store::messages`] reads the index, then the items (one pipelined exchange per
///   server). An item that is gone (evicted, or lost in a restart) is skipped, and
///   that read drops its entry from the index (a compare-and-swap, only then).
/// - [`Store::ack_messages`], [`Store::delete_message`], [`Store::unregister`] and
///   [`Store::drop_uaid`] change the index first, then delete the items, best effort:
///   an item left behind is named by no index entry and expires by itself.
///
/// **Retention** is memcached's own: a device not seen (no hello, no register) for
/// the lifetime is forgotten by memcached, all at once, so the index never outlives
/// the channels it indexes (it is part of their record). Only [`Store::touch`] (a
/// hello) and [`Store::register`] (one that answers Registered) see the device: they
/// record the time in its record, which restarts its lifetime, and restart the
/// lifetime of the node record and of the items of the messages queued (those for as
/// long as the message has left, up to the lifetime). Every other write of the record
/// ([`Store::put_update`], [`Store::put_message`], the acks, [`Store::unregister`],
/// [`Store::delete_message`], and [`Store::messages`] when it prunes) gives it what is
/// left of its lifetime since then (at least a second), so an app server pushing to
/// a device that never comes back does not keep it: it goes a lifetime after its last
/// hello, as with the stores that sweep. [`Store::sweep`] has nothing to do.
///
/// The time a device was last seen is this node's clock (UNIX seconds) when it
/// registered or said hello, the clock memcached's lifetimes run on; the `now` of
/// those calls is the caller's (the server's wall clock, the same one; a test's clock
/// need not be). Nodes whose clocks disagree by some seconds shift a record's end by
/// as much. A record of an earlier layout, without that time, counts as seen when it
/// is next written (a whole lifetime, as every write gave before).
///
/// Records are written in a layout that nodes of earlier versions cannot read (they
/// answer `Corrupt` for it); records of every earlier layout are read, and rewritten
/// at their next change.
///
/// Every operation is async: no thread waits on memcached.
pub struct MemcacheStore {
    inner: Inner,
}

/// The servers and what the operations share.
struct Inner {
    /// One client (with its own connection pool) per server.
    servers: Vec<Server>,
    /// Which server holds a key.
    ring: Rendezvous,
    /// How long items live after the device was last seen.
    ttl: Duration,
    /// The largest device record written: the item limit less [`ITEM_OVERHEAD`].
    record_limit: usize,
}

/// What a change to a device record decided.
enum Edit<T> {
    /// Nothing to write; answer `T`.
    Keep(T),
    /// Write the changed record, then answer `T`. Its lifetime keeps running from
    /// when the device was last seen.
    Write(T),
    /// Write the changed record with the device seen now (a register), restarting its
    /// lifetime, then answer `T`.
    See(T),
}

/// The edit of an ack frame: drops the pending update of each channel of `updates`
/// acked at its version or a later one, and of each channel of `expired` whose update
/// has expired at `now`; answers whether any channel of `device` still has one.
fn clear_acked(
    device: &mut Device,
    updates: &[(ChannelId, u64)],
    expired: &[ChannelId],
    now: u64,
) -> Edit<bool> {
    let mut cleared = false;
    let mut clear_if = |channel: &ChannelId, clear: &dyn Fn(&Slot) -> bool| {
        if let Some(slot) = device.channels.get_mut(channel.as_str())
            && slot.as_ref().is_some_and(clear)
        {
            *slot = None;
            cleared = true;
        }
    };
    for (channel, version) in updates {
        clear_if(channel, &|pending| pending.version() <= *version);
    }
    for channel in expired {
        clear_if(channel, &|pending| pending.expired_at(now));
    }
    let left = device.channels.values().any(Option::is_some);
    if cleared {
        Edit::Write(left)
    } else {
        Edit::Keep(left)
    }
}

/// The edit of a put: queues `message` in its channel unless that channel is not
/// registered (Gone) or holds `max_queued` unexpired messages besides one this message
/// replaces (Full). Drops the entries expired at `now` of every channel (their items
/// expire by themselves), the channel's entry with the message's topic, and any entry
/// with its id (a retried write); answers them with the outcome, so their items can
/// be deleted.
fn queue_message(
    device: &mut Device,
    message: &Message,
    max_queued: usize,
    now: u64,
) -> Edit<(QueueOutcome, Vec<Queued>)> {
    let channel = message.channel.as_str();
    if !device.channels.contains_key(channel) {
        return Edit::Keep((QueueOutcome::Gone, Vec::new()));
    }
    let (id, topic) = (message.id.as_str(), message.topic.as_deref());
    let replaced =
        |queued: &Queued| queued.id() == id || (topic.is_some() && queued.topic() == topic);
    let held = device.queues.get(channel).map_or(0, |queue| {
        queue
            .iter()
            .filter(|queued| !queued.expired_at(now) && !replaced(queued))
            .count()
    });
    if held >= max_queued {
        return Edit::Keep((QueueOutcome::Full, Vec::new()));
    }
    let removed = device.remove_queued(|queued_channel, queued| {
        queued.expired_at(now)
            || queued.id() == id
            || (queued_channel == channel && replaced(queued))
    });
    let queue = device.queues.entry(channel.to_owned()).or_default();
    let at = queue.partition_point(|queued| queued.id() < id);
    queue.insert(at, Queued::of(message));
    Edit::Write((QueueOutcome::Stored, removed))
}

/// The ids of `entries`.
fn ids_of<'a>(entries: impl IntoIterator<Item = &'a Queued>) -> Vec<String> {
    entries
        .into_iter()
        .map(|queued| queued.id().to_owned())
        .collect()
}

impl MemcacheStore {
    /// Connects to the pool ("127.0.0.1:11211" or "memcache://host:port" forms accepted).
    ///
    /// Connections are opened on first use, so this does no I/O and succeeds while a
    /// server is down; operations then answer [`StoreError::Unavailable`] within
    /// [`MemcacheOptions::timeout`]. Call [`Store::check`] to test the servers.
    /// Fails with [`StoreError::Internal`] on an empty or repeated server list, an
    /// unparsable address, a zero pool size, a zero timeout or an item limit below
    /// 1024 bytes.
    pub fn connect(servers: &[String], options: MemcacheOptions) -> Result<Self, StoreError> {
        Ok(Self::open(servers, &options)?)
    }

    fn open(specs: &[String], options: &MemcacheOptions) -> Result<Self, Error> {
        if specs.is_empty() {
            return Err(Error::Config("no memcached servers given".into()));
        }
        if options.pool_size == 0 {
            return Err(Error::Config("pool_size must be at least 1".into()));
        }
        if options.timeout.is_zero() {
            return Err(Error::Config("timeout must be greater than zero".into()));
        }
        if options.item_limit < MIN_ITEM_LIMIT {
            return Err(Error::Config(format!(
                "item_limit must be at least {MIN_ITEM_LIMIT} bytes"
            )));
        }
        let mut names = HashSet::new();
        let mut servers = Vec::with_capacity(specs.len());
        for spec in specs {
            let name = address::parse(spec).map_err(Error::Config)?;
            if !names.insert(name.clone()) {
                return Err(Error::Config(format!(
                    "memcached server {name} is listed twice"
                )));
            }
            servers.push(Server::new(name, options.pool_size, options.timeout));
        }
        let ring = Rendezvous::new(servers.iter().map(|server| server.name.as_str()));
        Ok(Self {
            inner: Inner {
                servers,
                ring,
                ttl: options.ttl,
                record_limit: options.item_limit - ITEM_OVERHEAD,
            },
        })
    }

    /// Changes the record of `uaid` with `edit` (see [`Inner::modify`]).
    async fn modify<T>(
        &self,
        uaid: &Uaid,
        edit: impl FnMut(&mut Device) -> Edit<T> + Send,
    ) -> Result<T, StoreError> {
        Ok(self.inner.modify(&key::device(uaid), edit).await?)
    }

    /// Reads the record of `uaid` (empty when there is none).
    async fn device(&self, uaid: &Uaid) -> Result<Device, StoreError> {
        let found = self.inner.read_device(&key::device(uaid)).await?;
        Ok(found.map(|(device, _)| device).unwrap_or_default())
    }

    /// Deletes the message items of `uaid` with these ids, best effort: the index no
    /// longer names them, and they expire by themselves.
    async fn forget_messages(&self, uaid: &Uaid, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let keys: Vec<String> = ids.iter().map(|id| key::message(uaid, id)).collect();
        // Ignored on purpose: a failure leaves only an unreferenced item behind.
        let _ = self.inner.delete_many(&keys).await;
    }
}

impl Inner {
    /// The server holding `key`.
    fn server(&self, key: &str) -> &Server {
        &self.servers[self.ring.pick(key)]
    }

    /// The memcached expiration of the item of a message expiring at `expires_at`,
    /// written or touched at the caller's `now`: what the message has left (at least a
    /// second), but no longer than `record_left`, the seconds the device record holding
    /// the index entry that names the item has left (`None`: it never expires), plus
    /// [`MESSAGE_EXPIRY_MARGIN`]. `wall` is this node's clock, for a lifetime beyond
    /// memcached's relative seconds.
    fn message_expiration(expires_at: u64, now: u64, record_left: Option<u64>, wall: u64) -> u32 {
        let mut lifetime = expires_at.saturating_sub(now).max(1);
        if let Some(record) = record_left {
            lifetime = lifetime.min(record);
        }
        let lifetime = lifetime.saturating_add(MESSAGE_EXPIRY_MARGIN);
        expiration_at(Duration::from_secs(lifetime), wall)
    }

    /// The touches (key, expiration) that restart the lifetime of the items of the
    /// messages of `device` (a record of `uaid` whose device was just seen, so with its
    /// whole lifetime ahead) unexpired at the caller's `now`.
    fn message_touches(&self, uaid: &Uaid, device: &Device, now: u64) -> Vec<(String, u32)> {
        let (record_left, wall) = (whole_seconds(self.ttl), unix_now());
        device
            .queued(now)
            .into_iter()
            .map(|(_, queued)| {
                let expires = Self::message_expiration(queued.expires_at(), now, record_left, wall);
                (key::message(uaid, queued.id()), expires)
            })
            .collect()
    }

    /// Gives each item of `items` (key, expiration) its new lifetime; missing ones are
    /// fine, nothing is created. One pipelined exchange per server holding some of
    /// them, all servers at once.
    async fn touch_many(&self, items: &[(String, u32)]) -> Result<(), Error> {
        let mut groups: Vec<Vec<(&str, u32)>> = vec![Vec::new(); self.servers.len()];
        for (key, expires) in items {
            groups[self.ring.pick(key)].push((key.as_str(), *expires));
        }
        let exchanges = self
            .servers
            .iter()
            .zip(&groups)
            .filter(|(_, mine)| !mine.is_empty())
            .map(|(server, mine)| server.touch_many(mine));
        for result in join_all(exchanges).await {
            result?;
        }
        Ok(())
    }

    /// Sees `uaid`, creating nothing: records the device as seen now in its record
    /// (which restarts the record's lifetime) while restarting the node record's,
    /// then restarts the lifetime of the items of the messages its index names, at
    /// once (only when it names some). An undecodable record is answered as such.
    /// Nothing to do when items never expire.
    async fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), Error> {
        if self.ttl.is_zero() {
            return Ok(());
        }
        let (device_key, node_key) = (key::device(uaid), key::node(uaid));
        let (record, node) = join(
            self.see(&device_key),
            self.server(&node_key)
                .touch(&node_key, expiration(self.ttl)),
        )
        .await;
        node?;
        let Some(device) = record? else {
            return Ok(());
        };
        self.touch_many(&self.message_touches(uaid, &device, now))
            .await
    }

    /// Records the device whose record is at `key` as seen now, by compare-and-swap,
    /// retried from a fresh read when another writer got there first; answers the
    /// record as written, or `None` (and nothing created) when there is none.
    async fn see(&self, key: &str) -> Result<Option<Device>, Error> {
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let Some((mut device, cas)) = self.read_device(key).await? else {
                return Ok(None);
            };
            let wall = unix_now();
            device.stamp(true, wall);
            let bytes = self.encode_device(key, &device)?;
            if self
                .store_device(key, &bytes, &device, Some(cas), wall)
                .await?
            {
                return Ok(Some(device));
            }
        }
        Err(Error::Contended {
            key: key.to_owned(),
            attempts: CAS_ATTEMPTS,
        })
    }

    /// The values at `keys`, in order (`None` where there is no item): one pipelined
    /// exchange per server holding some of them.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let picks: Vec<usize> = keys.iter().map(|key| self.ring.pick(key)).collect();
        let mut values = vec![None; keys.len()];
        for (index, server) in self.servers.iter().enumerate() {
            let mine: Vec<usize> = (0..keys.len()).filter(|&i| picks[i] == index).collect();
            if mine.is_empty() {
                continue;
            }
            let asked: Vec<&str> = mine.iter().map(|&i| keys[i].as_str()).collect();
            for (i, value) in mine.into_iter().zip(server.get_many(&asked).await?) {
                values[i] = value;
            }
        }
        Ok(values)
    }

    /// Deletes the items at `keys` (missing ones are fine): one pipelined exchange per
    /// server holding some of them.
    async fn delete_many(&self, keys: &[String]) -> Result<(), Error> {
        let picks: Vec<usize> = keys.iter().map(|key| self.ring.pick(key)).collect();
        for (index, server) in self.servers.iter().enumerate() {
            let asked: Vec<&str> = (0..keys.len())
                .filter(|&i| picks[i] == index)
                .map(|i| keys[i].as_str())
                .collect();
            if !asked.is_empty() {
                server.delete_many(&asked).await?;
            }
        }
        Ok(())
    }

    /// The device record at `key` with its CAS token, if there is one.
    async fn read_device(&self, key: &str) -> Result<Option<(Device, u64)>, Error> {
        let server = self.server(key);
        let Some((bytes, cas)) = server.get_with_cas(key).await? else {
            return Ok(None);
        };
        let device = Device::decode(&bytes).map_err(|reason| Error::Undecodable {
            key: key.to_owned(),
            reason,
        })?;
        Ok(Some((device, cas)))
    }

    /// The device record at `key` and its CAS token, or an empty record and `None`
    /// when there is none.
    async fn read_or_empty(&self, key: &str) -> Result<(Device, Option<u64>), Error> {
        Ok(match self.read_device(key).await? {
            Some((device, cas)) => (device, Some(cas)),
            None => (Device::default(), None),
        })
    }

    /// Read-modify-write of the device record at `key`: `edit` sees the current record
    /// (an empty one when there is none) and decides; a write is a compare-and-swap
    /// (or an add when there was no record), retried from a fresh read when another
    /// writer got there first. The written record keeps the lifetime it had (from the
    /// last time the device was seen) unless `edit` sees the device.
    async fn modify<T>(
        &self,
        key: &str,
        mut edit: impl FnMut(&mut Device) -> Edit<T>,
    ) -> Result<T, Error> {
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut device, cas) = self.read_or_empty(key).await?;
            let (answer, see) = match edit(&mut device) {
                Edit::Keep(answer) => return Ok(answer),
                Edit::Write(answer) => (answer, false),
                Edit::See(answer) => (answer, true),
            };
            let wall = unix_now();
            device.stamp(see, wall);
            let bytes = self.encode_device(key, &device)?;
            if self.store_device(key, &bytes, &device, cas, wall).await? {
                return Ok(answer);
            }
        }
        Err(Error::Contended {
            key: key.to_owned(),
            attempts: CAS_ATTEMPTS,
        })
    }

    /// The bytes of `device` for the item at `key`, or [`Error::TooLarge`] beyond the
    /// record limit (checked before encoding: a refused record is never built).
    fn encode_device(&self, key: &str, device: &Device) -> Result<Vec<u8>, Error> {
        let size = device.encoded_len();
        if size > self.record_limit {
            return Err(Error::TooLarge {
                key: key.to_owned(),
                bytes: size,
                limit: self.record_limit,
            });
        }
        device.encode().map_err(|e| Error::Unencodable {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Stores `bytes`, the encoding of `device` (stamped), at `key` if the item still
    /// has the CAS token `cas`, or if there is no item when `cas` is `None`; answers
    /// whether it did (false: another writer got there first). The item lives what is
    /// left of the lifetime since the device was last seen, at `wall` (this node's
    /// clock).
    async fn store_device(
        &self,
        key: &str,
        bytes: &[u8],
        device: &Device,
        cas: Option<u64>,
        wall: u64,
    ) -> Result<bool, Error> {
        let seen = device.seen.unwrap_or(wall);
        let expires = record_expiration(self.ttl, seen, wall);
        let server = self.server(key);
        // An add fails when someone created the record since we looked.
        match cas {
            Some(cas) => server.compare_and_set(key, bytes, expires, cas).await,
            None => server.add(key, bytes, expires).await,
        }
    }

    /// Queues `message` in the index of `uaid` (see [`queue_message`]), its item
    /// (`item` at `item_key`) written first: after the read that decides, before the
    /// compare-and-swap that adds the entry, so an entry always names an item that was
    /// written, and a refused message writes no item. The item lives what the message
    /// has left, but no longer than the record (plus [`MESSAGE_EXPIRY_MARGIN`]); a
    /// retry that finds the device seen at another time writes it again with the
    /// lifetime that follows. `written` tells the caller that the item was (perhaps)
    /// written, to delete when the message ends up refused or failed.
    async fn enqueue(
        &self,
        uaid: &Uaid,
        (item_key, item): (&str, &[u8]),
        message: &Message,
        max_queued: usize,
        now: u64,
        written: &mut bool,
    ) -> Result<(QueueOutcome, Vec<Queued>), Error> {
        let key = key::device(uaid);
        // The last-seen time the item's lifetime was computed from.
        let mut item_seen = None;
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (mut device, cas) = self.read_or_empty(&key).await?;
            let answer = match queue_message(&mut device, message, max_queued, now) {
                Edit::Keep(answer) => return Ok(answer),
                Edit::Write(answer) | Edit::See(answer) => answer,
            };
            let wall = unix_now();
            device.stamp(false, wall);
            let bytes = self.encode_device(&key, &device)?;
            if item_seen != device.seen {
                let seen = device.seen.unwrap_or(wall);
                let left = record_left(self.ttl, seen, wall);
                let expires = Self::message_expiration(message.expires_at, now, left, wall);
                *written = true;
                self.server(item_key).set(item_key, item, expires).await?;
                item_seen = device.seen;
            }
            if self.store_device(&key, &bytes, &device, cas, wall).await? {
                return Ok(answer);
            }
        }
        Err(Error::Contended {
            key,
            attempts: CAS_ATTEMPTS,
        })
    }

    /// Records the node of `uaid`. Only the node record: the device record lives from
    /// the device's last register or touch (a hello touches both).
    async fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), Error> {
        let expires = expiration(self.ttl);
        let node_key = key::node(uaid);
        let server = self.server(&node_key);
        server
            .set(&node_key, encode_node(node).as_bytes(), expires)
            .await
    }

    /// The node recorded for `uaid`, with the CAS token of its item.
    async fn node(&self, uaid: &Uaid) -> Result<Option<(Option<String>, u64)>, Error> {
        let key = key::node(uaid);
        let Some((bytes, cas)) = self.server(&key).get_with_cas(&key).await? else {
            return Ok(None);
        };
        let node = decode_node(&bytes).map_err(|()| Error::Undecodable {
            key: key.clone(),
            reason: "not a node record".into(),
        })?;
        Ok(Some((node, cas)))
    }

    /// Clears the node record of `uaid` if it names `node`, by compare-and-swap to a
    /// cleared marker (memcached cannot delete on condition).
    async fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, Error> {
        let key = key::node(uaid);
        let server = self.server(&key);
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let Some((Some(current), cas)) = self.node(uaid).await? else {
                return Ok(false);
            };
            if current != node {
                return Ok(false);
            }
            let expires = expiration(self.ttl);
            if server
                .compare_and_set(&key, NODE_CLEARED.as_bytes(), expires, cas)
                .await?
            {
                return Ok(true);
            }
        }
        Err(Error::Contended {
            key,
            attempts: CAS_ATTEMPTS,
        })
    }

    /// Forgets both items of `uaid`; answers the ids of the messages its record
    /// indexed (none when it was undecodable), whose items the caller deletes.
    async fn drop_uaid(&self, uaid: &Uaid) -> Result<Vec<String>, Error> {
        let device_key = key::device(uaid);
        let queued = match self.read_device(&device_key).await {
            Ok(found) => found.map(|(device, _)| device).unwrap_or_default().queues,
            // A corrupt record is dropped all the same: that is the way out of it.
            Err(Error::Undecodable { .. }) => Default::default(),
            Err(error) => return Err(error),
        };
        for key in [device_key, key::node(uaid)] {
            self.server(&key).delete(&key).await?;
        }
        Ok(queued
            .into_values()
            .flatten()
            .map(|entry| entry.id().to_owned())
            .collect())
    }

    /// Writes a fresh value to every server and reads it back.
    async fn check(&self) -> Result<(), Error> {
        for server in &self.servers {
            let key = key::check();
            let nonce = format!("{:016x}", fastrand::u64(..));
            server.set(&key, nonce.as_bytes(), CHECK_EXPIRATION).await?;
            let read = server.get(&key).await?;
            if read.as_deref() != Some(nonce.as_bytes()) {
                return Err(Error::CheckMismatch {
                    server: server.name.clone(),
                });
            }
            server.delete(&key).await?;
        }
        Ok(())
    }
}

/// Waits a random moment, longer after more lost races, so colliding writers spread
/// out.
async fn backoff(attempt: u32) {
    let ceiling = 50 * u64::from(attempt.min(20));
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=ceiling))).await;
}

#[async_trait]
impl Store for MemcacheStore {
    fn name(&self) -> &'static str {
        "memcache"
    }

    async fn knows_uaid(&self, uaid: &Uaid) -> Result<bool, StoreError> {
        Ok(!self.device(uaid).await?.channels.is_empty())
    }

    async fn registered(&self, uaid: &Uaid, channel: &ChannelId) -> Result<bool, StoreError> {
        Ok(self
            .device(uaid)
            .await?
            .channels
            .contains_key(channel.as_str()))
    }

    /// A register that answers [`RegisterOutcome::Registered`] sees the device, as
    /// [`Store::touch`] does: it writes the record with the device seen now (also when
    /// the channel was registered already), which restarts its lifetime, then restarts
    /// the node record's and the queued messages' items', in one exchange per server,
    /// all at once. Those touches are best effort (the register happened; an error
    /// would say it had not).
    async fn register(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max_channels: usize,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let channel = channel.as_str().to_owned();
        let inner = &self.inner;
        let (outcome, mut touches) = self
            .modify(uaid, move |device| {
                if !device.channels.contains_key(&channel) {
                    if device.channels.len() >= max_channels {
                        return Edit::Keep((RegisterOutcome::TooManyChannels, Vec::new()));
                    }
                    device.channels.insert(channel.clone(), None);
                }
                let touches = inner.message_touches(uaid, device, now);
                Edit::See((RegisterOutcome::Registered, touches))
            })
            .await?;
        if outcome != RegisterOutcome::Registered || inner.ttl.is_zero() {
            return Ok(outcome);
        }
        touches.push((key::node(uaid), expiration(inner.ttl)));
        // Ignored on purpose: see above.
        let _ = inner.touch_many(&touches).await;
        Ok(outcome)
    }

    async fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), StoreError> {
        let channel = channel.as_str().to_owned();
        // An emptied record stays (until it expires): deleting it unconditionally
        // could erase a register racing with us.
        let dropped = self
            .modify(uaid, move |device| {
                let registered = device.channels.remove(&channel).is_some();
                let queue = device.queues.remove(&channel).unwrap_or_default();
                if registered || !queue.is_empty() {
                    Edit::Write(queue)
                } else {
                    Edit::Keep(Vec::new())
                }
            })
            .await?;
        self.forget_messages(uaid, &ids_of(&dropped)).await;
        Ok(())
    }

    async fn put_update(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        update: Update,
        now: u64,
    ) -> Result<PutOutcome, StoreError> {
        let channel = channel.as_str().to_owned();
        self.modify(uaid, move |device| {
            match device.channels.get_mut(&channel) {
                None => Edit::Keep(PutOutcome::Gone),
                Some(slot) => {
                    let replace = slot.as_ref().is_none_or(|pending| {
                        update.version > pending.version() || pending.expired_at(now)
                    });
                    if replace {
                        *slot = Some(Slot::from(update.clone()));
                        Edit::Write(PutOutcome::Stored)
                    } else {
                        Edit::Keep(PutOutcome::Stored)
                    }
                }
            }
        })
        .await
    }

    async fn pending(&self, uaid: &Uaid, now: u64) -> Result<Pending, StoreError> {
        Ok(self.device(uaid).await?.pending(now))
    }

    /// One read-modify-write of the device record for the whole batch.
    async fn ack_many(
        &self,
        uaid: &Uaid,
        updates: &[(ChannelId, u64)],
        expired: &[ChannelId],
        now: u64,
    ) -> Result<bool, StoreError> {
        self.modify(uaid, |device| clear_acked(device, updates, expired, now))
            .await
    }

    /// Reads the index, writes the message item when the index takes the message, then
    /// queues it in the index by compare-and-swap (see `Inner::enqueue`); the item is
    /// deleted again when a retry finds the index refusing it, or a step fails.
    async fn put_message(
        &self,
        uaid: &Uaid,
        message: &Message,
        max_queued: usize,
        now: u64,
    ) -> Result<QueueOutcome, StoreError> {
        let item_key = key::message(uaid, message.id.as_str());
        let item = MessageItem::of(message)
            .encode()
            .map_err(|e| Error::Unencodable {
                key: item_key.clone(),
                reason: e.to_string(),
            })?;
        if item.len() > self.inner.record_limit {
            return Err(Error::TooLarge {
                key: item_key,
                bytes: item.len(),
                limit: self.inner.record_limit,
            }
            .into());
        }
        let mut written = false;
        let queued = self
            .inner
            .enqueue(
                uaid,
                (&item_key, &item),
                message,
                max_queued,
                now,
                &mut written,
            )
            .await;
        let id = message.id.as_str();
        match queued {
            Ok((QueueOutcome::Stored, removed)) => {
                let replaced = removed.iter().filter(|queued| queued.id() != id);
                self.forget_messages(uaid, &ids_of(replaced)).await;
                Ok(QueueOutcome::Stored)
            }
            Ok((refused, _)) => {
                if written {
                    self.forget_messages(uaid, &[id.to_owned()]).await;
                }
                Ok(refused)
            }
            Err(error) => {
                if written {
                    self.forget_messages(uaid, &[id.to_owned()]).await;
                }
                Err(error.into())
            }
        }
    }

    async fn messages(
        &self,
        uaid: &Uaid,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let device = self.device(uaid).await?;
        let mut rest = device.queued(now);
        let mut found = Vec::new();
        let mut missing = HashSet::new();
        // The oldest `limit` entries first; more only to stand in for missing items.
        while found.len() < limit && !rest.is_empty() {
            let batch: Vec<(&str, &Queued)> = rest
                .drain(..(limit - found.len()).min(rest.len()))
                .collect();
            let keys: Vec<String> = batch
                .iter()
                .map(|(_, queued)| key::message(uaid, queued.id()))
                .collect();
            let items = self.inner.get_many(&keys).await?;
            for (((channel, queued), item), key) in batch.into_iter().zip(items).zip(keys) {
                let Some(bytes) = item else {
                    missing.insert(queued.id().to_owned());
                    continue;
                };
                let message = MessageItem::decode(&bytes)
                    .and_then(|item| item.into_message(channel, queued))
                    .map_err(|reason| Error::Undecodable { key, reason })?;
                found.push(message);
            }
        }
        if !missing.is_empty() {
            // Best effort: a failure leaves the entries for the next read to drop.
            let _ = self
                .modify(uaid, |device| {
                    let pruned = device.remove_queued(|_, queued| missing.contains(queued.id()));
                    if pruned.is_empty() {
                        Edit::Keep(())
                    } else {
                        Edit::Write(())
                    }
                })
                .await;
        }
        Ok(found)
    }

    /// One compare-and-swap of the index for the whole batch (which also drops the
    /// entries expired at `now`), then the acked items are deleted. The answer comes
    /// from the index: an evicted item still counts until a read drops its entry.
    async fn ack_messages(
        &self,
        uaid: &Uaid,
        ids: &[MessageId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let acked: HashSet<&str> = ids.iter().map(MessageId::as_str).collect();
        let (left, removed) = self
            .modify(uaid, |device| {
                let removed = device.remove_queued(|_, queued| {
                    acked.contains(queued.id()) || queued.expired_at(now)
                });
                let left = device.has_queued(now);
                if removed.iter().any(|queued| acked.contains(queued.id())) {
                    Edit::Write((left, removed))
                } else {
                    Edit::Keep((left, Vec::new()))
                }
            })
            .await?;
        self.forget_messages(uaid, &ids_of(&removed)).await;
        Ok(left)
    }

    async fn delete_message(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        id: &MessageId,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (channel, id) = (channel.as_str(), id.as_str());
        let found = self
            .modify(uaid, |device| {
                let removed = device.remove_queued(|queued_channel, queued| {
                    queued_channel == channel && queued.id() == id
                });
                match removed.first() {
                    Some(queued) => Edit::Write(Some(!queued.expired_at(now))),
                    None => Edit::Keep(None),
                }
            })
            .await?;
        if found.is_some() {
            self.forget_messages(uaid, &[id.to_owned()]).await;
        }
        Ok(found == Some(true))
    }

    /// Records the device as seen now in its record, which restarts the record's
    /// lifetime, and restarts the lifetime of the node record and of the items of the
    /// queued messages, creating nothing: a read and a compare-and-swap of the record
    /// while the node record is touched (on their servers at once), and one more
    /// exchange, per server at once, only when messages are queued. An unknown uaid
    /// costs the first exchange and creates nothing. The time recorded is this node's
    /// clock, the one memcached's lifetimes run on, not `now` (the server passes its
    /// wall clock, the same one); `now` dates the queued messages' expiries.
    async fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), StoreError> {
        Ok(self.inner.touch(uaid, now).await?)
    }

    /// Nothing to do, without asking memcached: every item expires by itself
    /// [`MemcacheOptions::ttl`] after its device was last seen (message items sooner
    /// when their message expires), so a device not seen for that long is already
    /// gone, and an expired message's item goes by itself a moment after the message
    /// expires. (memcached cannot list its keys to sweep anyway.) Answers
    /// [`Swept::default`].
    async fn sweep(&self, _cutoff: u64, _now: u64, _limit: usize) -> Result<Swept, StoreError> {
        Ok(Swept::default())
    }

    async fn drop_uaid(&self, uaid: &Uaid) -> Result<(), StoreError> {
        let queued = self.inner.drop_uaid(uaid).await?;
        self.forget_messages(uaid, &queued).await;
        Ok(())
    }

    async fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), StoreError> {
        Ok(self.inner.set_node(uaid, node).await?)
    }

    async fn node(&self, uaid: &Uaid) -> Result<Option<String>, StoreError> {
        Ok(self.inner.node(uaid).await?.and_then(|(node, _)| node))
    }

    async fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, StoreError> {
        Ok(self.inner.clear_node(uaid, node).await?)
    }

    async fn check(&self) -> Result<(), StoreError> {
        Ok(self.inner.check().await?)
    }
}
