//! The in-memory store: the default, for demos and single-node tests. Nothing survives
//! a restart.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::{
    ChannelId, Message, MessageId, Pending, PutOutcome, QueueOutcome, RegisterOutcome, Store,
    StoreError, Swept, Uaid, Update,
};

/// Shards keep unrelated devices from contending on one lock.
const SHARDS: usize = 64;

/// Everything kept for one device.
#[derive(Debug)]
struct Device {
    /// Live channels sorted by id, each with its pending update if any. A sorted vector,
    /// not a map: most devices have a channel or two, and a map's smallest table holds
    /// four entries.
    channels: Vec<(ChannelId, Option<Update>)>,
    /// The cluster node the device was last seen on.
    node: Option<Box<str>>,
    /// When the device was last seen (UNIX seconds): retention forgets it a device
    /// TTL later.
    seen: u64,
}

impl Device {
    /// A device first seen at `seen`, with nothing registered yet.
    fn new(seen: u64) -> Device {
        Device {
            channels: Vec::new(),
            node: None,
            seen,
        }
    }

    /// Whether the record holds nothing worth keeping. Its last-seen time alone is not:
    /// a device that said hello and never registered is simply forgotten.
    fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.node.is_none()
    }

    fn find(&self, channel: &ChannelId) -> Result<usize, usize> {
        self.channels.binary_search_by(|(id, _)| id.cmp(channel))
    }

    fn slot(&mut self, channel: &ChannelId) -> Option<&mut Option<Update>> {
        let index = self.find(channel).ok()?;
        Some(&mut self.channels[index].1)
    }

    /// Adds `channel` (absent) at `index`, growing by one while the device is small.
    fn insert(&mut self, index: usize, channel: &ChannelId) {
        if self.channels.len() < 4 {
            self.channels.reserve_exact(1);
        }
        self.channels.insert(index, (channel.clone(), None));
    }

    /// Drops the pending update of `channel` if `clear` says so.
    fn clear_if(&mut self, channel: &ChannelId, clear: impl FnOnce(&Update) -> bool) {
        if let Some(slot) = self.slot(channel)
            && slot.as_ref().is_some_and(clear)
        {
            *slot = None;
        }
    }

    /// Whether any channel has a pending update.
    fn has_pending(&self) -> bool {
        self.channels.iter().any(|(_, slot)| slot.is_some())
    }

    fn remove(&mut self, channel: &ChannelId) {
        if let Ok(index) = self.find(channel) {
            self.channels.remove(index);
        }
    }
}

/// The devices of one shard, and the WebPush messages queued for them. Queues live
/// beside the devices, not in them, so a device with nothing queued pays nothing.
#[derive(Debug, Default)]
struct Shard {
    devices: HashMap<Uaid, Device>,
    /// Queued messages by uaid, ascending id; never an empty vector.
    queues: HashMap<Uaid, Vec<Message>>,
}

impl Shard {
    /// Runs `f` on the device's record if it exists, removing the record if it ends up
    /// empty.
    fn with_device<T>(&mut self, uaid: &Uaid, missing: T, f: impl FnOnce(&mut Device) -> T) -> T {
        let Some(device) = self.devices.get_mut(uaid) else {
            return missing;
        };
        let answer = f(device);
        if device.is_empty() {
            self.devices.remove(uaid);
        }
        answer
    }

    /// Keeps the messages of `uaid` for which `keep` holds, forgetting an emptied queue.
    fn retain_messages(&mut self, uaid: &Uaid, keep: impl FnMut(&Message) -> bool) {
        if let Some(queue) = self.queues.get_mut(uaid) {
            queue.retain(keep);
            if queue.is_empty() {
                self.queues.remove(uaid);
            }
        }
    }
}

/// A [`Store`] held in process memory, sharded by uaid.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    /// The shard the next sweep step starts at: where the last one stopped at its
    /// limit, so a round over a big backlog reads each device about once, not once per
    /// step.
    sweep_from: AtomicUsize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            sweep_from: AtomicUsize::new(0),
        }
    }

    fn shard(&self, uaid: &Uaid) -> MutexGuard<'_, Shard> {
        let mut hasher = DefaultHasher::new();
        uaid.hash(&mut hasher);
        let index = (hasher.finish() as usize) % SHARDS;
        // A panic while holding the lock cannot leave a device half-written (every
        // change below is a single map operation), so a poisoned lock is still sound.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// [`Shard::with_device`] under the lock of the uaid's shard.
    fn with_device<T>(&self, uaid: &Uaid, missing: T, f: impl FnOnce(&mut Device) -> T) -> T {
        self.shard(uaid).with_device(uaid, missing, f)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn knows_uaid(&self, uaid: &Uaid) -> Result<bool, StoreError> {
        Ok(self
            .shard(uaid)
            .devices
            .get(uaid)
            .is_some_and(|device| !device.channels.is_empty()))
    }

    async fn registered(&self, uaid: &Uaid, channel: &ChannelId) -> Result<bool, StoreError> {
        Ok(self
            .shard(uaid)
            .devices
            .get(uaid)
            .is_some_and(|device| device.find(channel).is_ok()))
    }

    async fn register(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max_channels: usize,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let mut shard = self.shard(uaid);
        let device = shard
            .devices
            .entry(uaid.clone())
            .or_insert_with(|| Device::new(now));
        let Err(index) = device.find(channel) else {
            device.seen = now;
            return Ok(RegisterOutcome::Registered);
        };
        if device.channels.len() >= max_channels {
            if device.is_empty() {
                shard.devices.remove(uaid);
            }
            return Ok(RegisterOutcome::TooManyChannels);
        }
        device.insert(index, channel);
        device.seen = now;
        Ok(RegisterOutcome::Registered)
    }

    async fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), StoreError> {
        // One lock for both, so no one sees the channel gone and its messages still there.
        let mut shard = self.shard(uaid);
        shard.with_device(uaid, (), |device| device.remove(channel));
        shard.retain_messages(uaid, |message| message.channel != *channel);
        Ok(())
    }

    async fn put_update(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        update: Update,
        now: u64,
    ) -> Result<PutOutcome, StoreError> {
        Ok(self.with_device(uaid, PutOutcome::Gone, |device| {
            match device.slot(channel) {
                None => PutOutcome::Gone,
                Some(slot) => {
                    let replace = slot
                        .as_ref()
                        .is_none_or(|pending| update.supersedes(pending, now));
                    if replace {
                        *slot = Some(update);
                    }
                    PutOutcome::Stored
                }
            }
        }))
    }

    async fn pending(&self, uaid: &Uaid, now: u64) -> Result<Pending, StoreError> {
        let shard = self.shard(uaid);
        let mut pending = Pending::default();
        if let Some(device) = shard.devices.get(uaid) {
            for (channel, slot) in &device.channels {
                if let Some(update) = slot {
                    if !update.is_expired(now) {
                        pending.updates.push((channel.clone(), update.clone()));
                    } else {
                        pending.expired.push(channel.clone());
                    }
                }
            }
        }
        Ok(pending)
    }

    async fn ack_many(
        &self,
        uaid: &Uaid,
        updates: &[(ChannelId, u64)],
        expired: &[ChannelId],
        now: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.with_device(uaid, false, |device| {
            for (channel, version) in updates {
                device.clear_if(channel, |pending| pending.version <= *version);
            }
            for channel in expired {
                device.clear_if(channel, |pending| pending.is_expired(now));
            }
            device.has_pending()
        }))
    }

    async fn put_message(
        &self,
        uaid: &Uaid,
        message: &Message,
        max_queued: usize,
        now: u64,
    ) -> Result<QueueOutcome, StoreError> {
        let mut shard = self.shard(uaid);
        let registered = shard
            .devices
            .get(uaid)
            .is_some_and(|device| device.find(&message.channel).is_ok());
        if !registered {
            return Ok(QueueOutcome::Gone);
        }
        let channel = &message.channel;
        let replaced = |queued: &Message| {
            queued.channel == *channel && message.topic.is_some() && queued.topic == message.topic
        };
        let queue = shard.queues.entry(uaid.clone()).or_default();
        queue.retain(|queued| !(queued.channel == *channel && queued.is_expired(now)));
        let held = queue
            .iter()
            .filter(|queued| queued.channel == *channel && !replaced(queued))
            .count();
        if held >= max_queued {
            if queue.is_empty() {
                shard.queues.remove(uaid);
            }
            return Ok(QueueOutcome::Full);
        }
        queue.retain(|queued| !replaced(queued));
        let at = queue.partition_point(|queued| queued.id < message.id);
        queue.insert(at, message.clone());
        Ok(QueueOutcome::Stored)
    }

    async fn messages(
        &self,
        uaid: &Uaid,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        Ok(self
            .shard(uaid)
            .queues
            .get(uaid)
            .map_or_else(Vec::new, |queue| {
                queue
                    .iter()
                    .filter(|message| !message.is_expired(now))
                    .take(limit)
                    .cloned()
                    .collect()
            }))
    }

    async fn ack_messages(
        &self,
        uaid: &Uaid,
        ids: &[MessageId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut shard = self.shard(uaid);
        shard.retain_messages(uaid, |message| !ids.contains(&message.id));
        Ok(shard
            .queues
            .get(uaid)
            .is_some_and(|queue| queue.iter().any(|message| !message.is_expired(now))))
    }

    async fn delete_message(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        id: &MessageId,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut shard = self.shard(uaid);
        let mut found = false;
        shard.retain_messages(uaid, |message| {
            let hit = message.id == *id && message.channel == *channel;
            found |= hit && !message.is_expired(now);
            !hit
        });
        Ok(found)
    }

    async fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), StoreError> {
        if let Some(device) = self.shard(uaid).devices.get_mut(uaid) {
            device.seen = now;
        }
        Ok(())
    }

    async fn sweep(&self, cutoff: u64, now: u64, limit: usize) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        let limit = limit as u64;
        let start = self.sweep_from.load(Ordering::Relaxed);
        // One shard at a time, so no lock is held across the whole store.
        for index in (start..start + SHARDS).map(|i| i % SHARDS) {
            let mut shard = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
            let Shard { devices, queues } = &mut *shard;
            devices.retain(|uaid, device| {
                let keep = device.seen >= cutoff || swept.devices >= limit;
                if !keep {
                    swept.devices += 1;
                    queues.remove(uaid);
                }
                keep
            });
            queues.retain(|_, queue| {
                queue.retain(|message| {
                    let keep = !message.is_expired(now) || swept.messages >= limit;
                    swept.messages += u64::from(!keep);
                    keep
                });
                !queue.is_empty()
            });
            if swept.devices >= limit || swept.messages >= limit {
                // This shard may hold more: the next step starts here.
                self.sweep_from.store(index, Ordering::Relaxed);
                swept.more = true;
                return Ok(swept);
            }
        }
        Ok(swept)
    }

    async fn drop_uaid(&self, uaid: &Uaid) -> Result<(), StoreError> {
        let mut shard = self.shard(uaid);
        shard.devices.remove(uaid);
        shard.queues.remove(uaid);
        Ok(())
    }

    async fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), StoreError> {
        self.shard(uaid)
            .devices
            .entry(uaid.clone())
            // A node record alone is never seen: the next sweep forgets it, as a hello
            // without a register leaves nothing worth a TTL.
            .or_insert_with(|| Device::new(0))
            .node = Some(Box::from(node));
        Ok(())
    }

    async fn node(&self, uaid: &Uaid) -> Result<Option<String>, StoreError> {
        Ok(self
            .shard(uaid)
            .devices
            .get(uaid)
            .and_then(|d| d.node.as_deref().map(str::to_owned)))
    }

    async fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, StoreError> {
        Ok(self.with_device(uaid, false, |device| {
            if device.node.as_deref() == Some(node) {
                device.node = None;
                true
            } else {
                false
            }
        }))
    }

    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
