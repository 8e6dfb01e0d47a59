//! The RocksDB [`Store`]: the database layout, and its operations: reads on tokio's
//! blocking pool, writes on one writer thread ([`simplepush_store::writer`]), which
//! makes every read-modify-write atomic (nothing else writes) and syncs the log once
//! per batch of writes.
//!
//! Layout (format version [`FORMAT_VERSION`]):
//! - column family `channels`: one key per registered channel ([`crate::key`]); its
//!   value is the channel's pending slot ([`crate::record`]), empty when nothing is
//!   pending. Channel and pending update share one key, so registering, unregistering
//!   and replacing an update are each a single write.
//! - column family `messages`: one key per queued WebPush message, the uaid prefix then
//!   the message id ([`crate::key`]), so a device's queue is one prefix scan in id
//!   (arrival) order; the value is the message ([`crate::record`]). The checks of a put
//!   (topic, bound, expiry) scan that device's queue only.
//! - column family `nodes`: uaid → the node the device was last seen on.
//! - column family `devices`: uaid → when the device was last seen (retention); 0 for a
//!   node record without a registered device, which the next sweep forgets.
//! - column family `seen`: the same as an index, `last seen ++ uaid` → nothing, so the
//!   devices not seen since a time are one range from the start ([`crate::key`]).
//! - column family `expiry`: `expires_at ++ message key` → nothing for every queued
//!   message, so the expired ones are one range from the start too. Every change that
//!   removes a message removes its index key in the same write.
//! - default column family: the format version and the health-check key.
//!
//! `messages` was added to format version 1 without changing it: the layout only grew,
//! so a database written before it opens unchanged (RocksDB creates the family empty)
//! and nothing migrates. A build from before it refuses to open a database that has it
//! (RocksDB requires every family to be opened), so it never runs without the queues.
//! Format version 2 added the retention families: opening a version 1 database fills
//! them once (every device last seen at the time of the upgrade, a node record without
//! channels never seen, every queued message indexed) before it is stamped 2.
//!
//! Retention deletes keys; RocksDB frees their space only when compaction rewrites the
//! files that hold them. After a sweep round that removed a good share of the devices,
//! the store compacts every family on a background thread ([`COMPACT_AFTER`]).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily,
    ColumnFamilyDescriptor, CompactOptions, DB, ReadOptions, WriteBatch, WriteOptions,
};
use simplepush_store::writer::{Commit, Job, Sync, Writer};
use simplepush_store::{
    ChannelId, Message, MessageId, Pending, PutOutcome, QueueOutcome, RegisterOutcome, Store,
    StoreError, Swept, Uaid, Update,
};
use tokio::sync::Semaphore;

use crate::error::{from_join, from_rocksdb};
use crate::{RocksOptions, key, record};

/// The layout this build reads and writes; bump it (and migrate in [`Db::check_format`])
/// when the layout changes.
const FORMAT_VERSION: u32 = 2;
/// Default-family key of the format version.
const FORMAT_KEY: &[u8] = b"format_version";
/// Default-family key [`Store::check`] writes and reads back.
const CHECK_KEY: &[u8] = b"check";
const CHANNELS: &str = "channels";
const NODES: &str = "nodes";
const MESSAGES: &str = "messages";
const DEVICES: &str = "devices";
const SEEN: &str = "seen";
const EXPIRY: &str = "expiry";
/// A key as read from RocksDB.
type Key = Vec<u8>;
/// Every column family besides the default one.
const FAMILIES: [&str; 6] = [CHANNELS, NODES, MESSAGES, DEVICES, SEEN, EXPIRY];
/// Devices retention removes before the store compacts: at least this many, and at
/// least a quarter of the devices left, so a store compacts after a big cleanup but not
/// after every trickle of a daily one.
const COMPACT_AFTER: u64 = 1000;
/// The block cache all column families share. RocksDB's default is a cache of 32 MiB
/// per family; the memory of a server must not grow with the number of devices
/// stored, and the operating system's page cache keeps the files' hot pages anyway.
/// With the Bloom filters ([`family_options`]) a read touches one data block, so 4 MiB
/// kept PUTs at a million devices within 1.14–1.23 × (rate) and 1.32–1.33 × (p99) of a
/// thousand, and the RSS within 1.13–1.16 × (README "Performance"; 8 MiB: 1.35 ×).
const BLOCK_CACHE_BYTES: usize = 4 << 20;
/// A family's write buffer (memtable) before it is flushed to a file (RocksDB's
/// default: 64 MiB)...
const WRITE_BUFFER_BYTES: usize = 8 << 20;
/// ...and all families' together, beyond which the biggest is flushed.
const MEMTABLES_BYTES: usize = 32 << 20;
/// The largest family (tables and write buffers) a clean close compacts
/// ([`Db::compact_small_families`]): one write buffer, a moment's rewrite.
const SMALL_FAMILY_BYTES: u64 = WRITE_BUFFER_BYTES as u64;
/// Devices (and expired messages) one write of a sweep step removes at most: about a
/// millisecond of the writer's time each.
const SWEEP_CHUNK: usize = 32;
/// Keys written per batch while a version 1 database gains its retention indexes.
const MIGRATION_BATCH: usize = 10_000;
/// RocksDB's info logs (`LOG.old.*`) kept in the directory.
const KEEP_LOG_FILES: usize = 10;

/// A [`Store`] kept in a RocksDB database on local disk. Cheap to share behind an
/// `Arc<dyn Store>`; reads run on tokio's blocking pool, at most [`read_slots`] at once,
/// writes on the writer thread.
pub struct RocksStore {
    db: Arc<Db>,
    writer: Arc<Writer<RocksCommit>>,
    reads: Arc<Semaphore>,
}

/// How many reads may run at once: twice the cores, at least 4. A read that misses the
/// block cache waits for the disk, so a few more than the cores keep them busy; beyond
/// that, a burst of reads (devices coming back at once) only grew the blocking pool by
/// a thread per read in flight, each with its own stack and allocator cache (measured
/// with a million devices stored: 48 threads after 2,000 hellos, 25 with the bound).
fn read_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (2 * cores).max(4)
}

/// The writer thread's side: runs a batch of writes, then syncs the log once (with
/// `fsync` on and a durable write in the batch).
struct RocksCommit {
    db: Arc<Db>,
    fsync: bool,
}

impl Commit for RocksCommit {
    type Target = Db;

    fn commit(&mut self, batch: &mut [Box<dyn Job<Db>>], sync: bool) -> Result<(), StoreError> {
        for job in batch {
            job.run(&self.db);
        }
        if self.fsync && sync {
            self.db.db.flush_wal(true).map_err(from_rocksdb)?;
        }
        Ok(())
    }

    /// Syncs the log, so nothing answered is lost even when `fsync` is off, then
    /// compacts the small families ([`Db::compact_small_families`]). The database
    /// itself closes when the last handle drops.
    fn close(self) -> Result<(), StoreError> {
        self.db.db.flush_wal(true).map_err(from_rocksdb)?;
        self.db.compact_small_families();
        Ok(())
    }
}

/// The options of every column family: one block cache shared by all (index and filter
/// blocks included, so it bounds them too), small write buffers, Bloom filters on
/// every level but the last, and indexes and filters cut into partitions.
///
/// A point read (does this channel exist, when was this device seen) otherwise looks
/// into every level-0 file and every level whose key range covers it, a data block each
/// (with a million devices, outside the cache); a filter answers "not here" for the
/// files that lack the key. Most keys live in the last level, where a read that got
/// that far finds its key anyway: no filter there, so the filters stay small (they
/// grow with the writes waiting to be compacted, not with the devices stored).
///
/// A table's index in one block grows with the table: ~800 kB for a 64 MiB table of
/// channels, more than a shard of the cache holds (the 4 MiB cache has eight), so
/// every read of such a table read its whole index again and checksummed it (a third
/// of the writer's time with a million devices). Partitioned, a read needs the table's
/// small top-level index (pinned in the cache) and one partition of
/// [`METADATA_BLOCK_BYTES`], cached like a data block.
fn family_options(cache: &Cache) -> rocksdb::Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(METADATA_BLOCK_BYTES);
    table.set_pin_top_level_index_and_filter(true);
    let mut options = rocksdb::Options::default();
    options.set_block_based_table_factory(&table);
    options.set_optimize_filters_for_hits(true);
    options.set_write_buffer_size(WRITE_BUFFER_BYTES);
    options
}

/// Bits per key of the Bloom filters ([`family_options`]): about 1 % false positives.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// The size of a partition of a table's index or filter ([`family_options`]): a data
/// block's.
const METADATA_BLOCK_BYTES: usize = 4096;

impl RocksStore {
    /// Opens (creating if missing) the database in directory `dir`.
    ///
    /// Blocks while RocksDB opens and replays its write-ahead log: call it before the
    /// server starts serving, or from a blocking task. Fails if another process holds
    /// the database ([`StoreError::Unavailable`]) or it was written in a format this
    /// build does not read ([`StoreError::Internal`]).
    pub fn open(dir: &Path, options: RocksOptions) -> Result<RocksStore, StoreError> {
        let mut db_options = rocksdb::Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_keep_log_file_num(KEEP_LOG_FILES);
        db_options.set_db_write_buffer_size(MEMTABLES_BYTES);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let families =
            FAMILIES.map(|name| ColumnFamilyDescriptor::new(name, family_options(&cache)));
        let db = DB::open_cf_descriptors(&db_options, dir, families).map_err(from_rocksdb)?;
        let db = Db {
            db,
            write: WriteOptions::default(),
            checks: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            compacting: AtomicBool::new(false),
            sweep_cursors: Mutex::new([Vec::new(), Vec::new()]),
        };
        db.check_format()?;
        let db = Arc::new(db);
        let committer = RocksCommit {
            db: Arc::clone(&db),
            fsync: options.fsync,
        };
        let writer = Arc::new(Writer::start("rocksdb-writer", committer)?);
        Ok(RocksStore {
            db,
            writer,
            reads: Arc::new(Semaphore::new(read_slots())),
        })
    }

    /// Runs the write `operation` on the writer thread.
    async fn write<T, F>(&self, sync: Sync, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(sync, operation).await
    }

    /// Runs the read `operation` on the blocking pool.
    async fn run<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        // Held until the blocking task has ended; never closed, so acquiring only waits.
        let _slot = self.reads.acquire().await;
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || operation(&db))
            .await
            .map_err(from_join)?
    }
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.db.path())
            .finish_non_exhaustive()
    }
}

/// The open database and what the operations share.
struct Db {
    db: DB,
    /// Every write's options: written to the log, never synced by itself; the writer
    /// thread syncs the log after each batch that needs it.
    write: WriteOptions,
    /// Makes each health check write a value the previous one did not.
    checks: AtomicU64,
    /// Devices retention removed since the last compaction.
    removed: AtomicU64,
    /// Whether a compaction thread is running.
    compacting: AtomicBool,
    /// Where the next sweep step starts in `seen` and in `expiry` (empty: at the
    /// start). Used on the writer thread only.
    sweep_cursors: Mutex<[Vec<u8>; 2]>,
}

impl Db {
    fn family(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Internal(format!("column family {name} is missing")))
    }

    /// Accepts a database in [`FORMAT_VERSION`], stamping a new one with it and
    /// bringing a version 1 database to it.
    fn check_format(&self) -> Result<(), StoreError> {
        let found = self.db.get_pinned(FORMAT_KEY).map_err(from_rocksdb)?;
        match found.as_deref().map(record::decode_format).transpose()? {
            Some(FORMAT_VERSION) => return Ok(()),
            Some(1) => self.index_for_retention()?,
            None => {}
            Some(other) => {
                return Err(StoreError::Internal(format!(
                    "database format version {other}, this build reads {FORMAT_VERSION}"
                )));
            }
        }
        let mut write = WriteOptions::default();
        write.set_sync(true);
        self.db
            .put_opt(FORMAT_KEY, record::encode_format(FORMAT_VERSION), &write)
            .map_err(from_rocksdb)
    }

    /// Version 1 to 2: every device with a channel is last seen now (a full TTL from
    /// the upgrade), and every queued message goes into the expiry index. Batched, and
    /// idempotent if interrupted: the format stays 1 until it is done.
    fn index_for_retention(&self) -> Result<(), StoreError> {
        let now = simplepush_store::unix_now();
        let (devices, seen, expiry) = (
            self.family(DEVICES)?,
            self.family(SEEN)?,
            self.family(EXPIRY)?,
        );
        let mut batch = WriteBatch::default();
        let mut last: Option<Vec<u8>> = None;
        let flush = |batch: &mut WriteBatch, force: bool| {
            if force || batch.len() >= MIGRATION_BATCH {
                let full = std::mem::take(batch);
                self.db.write_opt(full, &self.write).map_err(from_rocksdb)?;
            }
            Ok::<(), StoreError>(())
        };
        self.scan(CHANNELS, &[], |key, _| {
            let uaid = key::uaid_of(key)
                .ok_or_else(|| StoreError::Corrupt("malformed channel key".to_owned()))?;
            if last.as_deref() != Some(uaid) {
                batch.put_cf(devices, uaid, record::encode_seen(now));
                batch.put_cf(seen, key::seen(now, uaid), []);
                last = Some(uaid.to_vec());
            }
            flush(&mut batch, false)?;
            Ok(ControlFlow::Continue(()))
        })?;
        self.scan(MESSAGES, &[], |key, value| {
            let expires_at = record::decode_message_head(value)?.expires_at;
            batch.put_cf(expiry, key::expiry(expires_at, key), []);
            flush(&mut batch, false)?;
            Ok(ControlFlow::Continue(()))
        })?;
        flush(&mut batch, true)?;
        // Node records of uaids without channels, indexed as never seen.
        self.scan(NODES, &[], |uaid, _| {
            self.mark_unseen(&mut batch, uaid)?;
            flush(&mut batch, false)?;
            Ok(ControlFlow::Continue(()))
        })?;
        flush(&mut batch, true)?;
        self.db.flush_wal(true).map_err(from_rocksdb)
    }

    /// Calls `visit(channel key, value)` for each channel of `uaid`, in key order,
    /// until it breaks.
    fn scan_channels(
        &self,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        self.scan(CHANNELS, prefix, visit)
    }

    /// Calls `visit(message key, value)` for each queued message of `uaid`, oldest
    /// first, until it breaks.
    fn scan_messages(
        &self,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        self.scan(MESSAGES, prefix, visit)
    }

    /// Calls `visit(key, value)` for each key of `family` that starts with `prefix`, in
    /// key order, until it breaks. One iterator, so one consistent view.
    fn scan(
        &self,
        family: &str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut read = ReadOptions::default();
        if let Some(end) = key::prefix_end(prefix) {
            read.set_iterate_upper_bound(end);
        }
        let mut iter = self.db.raw_iterator_cf_opt(self.family(family)?, read);
        iter.seek(prefix);
        while let Some((key, value)) = iter.item() {
            if !key.starts_with(prefix) || visit(key, value)?.is_break() {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(from_rocksdb)
    }

    fn knows_uaid(&self, uaid: &Uaid) -> Result<bool, StoreError> {
        let mut found = false;
        self.scan_channels(&key::uaid_prefix(uaid)?, |_, _| {
            found = true;
            Ok(ControlFlow::Break(()))
        })?;
        Ok(found)
    }

    fn registered(&self, uaid: &Uaid, channel: &ChannelId) -> Result<bool, StoreError> {
        let key = key::channel(uaid, channel)?;
        let found = self
            .db
            .get_pinned_cf(self.family(CHANNELS)?, &key)
            .map_err(from_rocksdb)?;
        Ok(found.is_some())
    }

    fn register(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max_channels: usize,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let channels = self.family(CHANNELS)?;
        let key = key::channel(uaid, channel)?;
        let mut batch = WriteBatch::default();
        if self
            .db
            .get_pinned_cf(channels, &key)
            .map_err(from_rocksdb)?
            .is_some()
        {
            self.set_seen(&mut batch, uaid, now, true)?;
            self.write_batch(batch)?;
            return Ok(RegisterOutcome::Registered);
        }
        let mut live = 0;
        if max_channels > 0 {
            self.scan_channels(&key::uaid_prefix(uaid)?, |_, _| {
                live += 1;
                Ok(if live >= max_channels {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
        }
        if live >= max_channels {
            return Ok(RegisterOutcome::TooManyChannels);
        }
        batch.put_cf(channels, &key, record::encode_slot(None));
        self.set_seen(&mut batch, uaid, now, true)?;
        self.write_batch(batch)?;
        Ok(RegisterOutcome::Registered)
    }

    /// Writes `batch` unless it is empty.
    fn write_batch(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.db.write_opt(batch, &self.write).map_err(from_rocksdb)
    }

    /// Adds to `batch` what records `now` as the time `uaid` was last seen: its
    /// `devices` value and `seen` index key (the old index key removed). A uaid without
    /// a `devices` value gets one only when `create` says so.
    fn set_seen(
        &self,
        batch: &mut WriteBatch,
        uaid: &Uaid,
        now: u64,
        create: bool,
    ) -> Result<(), StoreError> {
        let (devices, seen) = (self.family(DEVICES)?, self.family(SEEN)?);
        let uaid = uaid.as_str().as_bytes();
        let before = self.db.get_pinned_cf(devices, uaid).map_err(from_rocksdb)?;
        match before.as_deref().map(record::decode_seen).transpose()? {
            Some(at) if at == now => return Ok(()),
            Some(at) => batch.delete_cf(seen, key::seen(at, uaid)),
            None if !create => return Ok(()),
            None => {}
        }
        batch.put_cf(devices, uaid, record::encode_seen(now));
        batch.put_cf(seen, key::seen(now, uaid), []);
        Ok(())
    }

    /// Sets when `uaid` was last seen, if the store holds it.
    fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.set_seen(&mut batch, uaid, now, false)?;
        self.write_batch(batch)
    }

    /// Adds to `batch` the deletion of the message under `key` whose stored value is
    /// `value`, with its expiry index key when the value says where that is. A damaged
    /// value still goes; its index key then waits for the sweep at its time, which
    /// drops index keys whose message is gone.
    fn delete_stored_message(
        &self,
        batch: &mut WriteBatch,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        match record::decode_message_head(value) {
            Ok(head) => self.delete_message_key(batch, key, head.expires_at),
            Err(_) => {
                batch.delete_cf(self.family(MESSAGES)?, key);
                Ok(())
            }
        }
    }

    /// Adds to `batch` the deletion of the message under `key` and of its expiry index
    /// key.
    fn delete_message_key(
        &self,
        batch: &mut WriteBatch,
        key: &[u8],
        expires_at: u64,
    ) -> Result<(), StoreError> {
        batch.delete_cf(self.family(MESSAGES)?, key);
        batch.delete_cf(self.family(EXPIRY)?, key::expiry(expires_at, key));
        Ok(())
    }

    /// Adds to `batch` the deletion of everything of the uaid whose raw bytes are
    /// `uaid`: channels, messages with their index keys, node, last-seen time.
    fn forget(&self, batch: &mut WriteBatch, uaid: &[u8]) -> Result<(), StoreError> {
        let channels = self.family(CHANNELS)?;
        let prefix = key::raw_uaid_prefix(uaid)?;
        self.scan_channels(&prefix, |key, _| {
            batch.delete_cf(channels, key);
            Ok(ControlFlow::Continue(()))
        })?;
        self.scan_messages(&prefix, |key, value| {
            self.delete_stored_message(batch, key, value)?;
            Ok(ControlFlow::Continue(()))
        })?;
        // Only a key that is there: a tombstone for an absent key would outlive it.
        let nodes = self.family(NODES)?;
        if self
            .db
            .get_pinned_cf(nodes, uaid)
            .map_err(from_rocksdb)?
            .is_some()
        {
            batch.delete_cf(nodes, uaid);
        }
        let devices = self.family(DEVICES)?;
        if let Some(value) = self.db.get_pinned_cf(devices, uaid).map_err(from_rocksdb)? {
            let at = record::decode_seen(&value)?;
            batch.delete_cf(self.family(SEEN)?, key::seen(at, uaid));
        }
        batch.delete_cf(devices, uaid);
        Ok(())
    }

    /// One step of retention ([`Store::sweep`]): the devices not seen since `cutoff`,
    /// then the messages expired at `now`, at most `limit` of each, in one write.
    fn sweep(&self, cutoff: u64, now: u64, limit: usize) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        let mut batch = WriteBatch::default();
        let mut cursors = self.sweep_cursors.lock().unwrap_or_else(|p| p.into_inner());
        let [seen_from, expiry_from] = &mut *cursors;
        let (old, next_device) = self.first_keys(SEEN, seen_from, key::before(cutoff), limit)?;
        let (seen, devices) = (self.family(SEEN)?, self.family(DEVICES)?);
        for index_key in &old {
            let (at, uaid) = key::split_timed(index_key)?;
            batch.delete_cf(seen, index_key);
            // The index is kept exact, but a stale key must never cost a live device.
            let current = self.db.get_pinned_cf(devices, uaid).map_err(from_rocksdb)?;
            if current.as_deref().map(record::decode_seen).transpose()? == Some(at) {
                self.forget(&mut batch, uaid)?;
                swept.devices += 1;
            }
        }
        let expired_bound = key::before(now.saturating_add(1));
        let (expired, next_message) = self.first_keys(EXPIRY, expiry_from, expired_bound, limit)?;
        let (messages, expiry) = (self.family(MESSAGES)?, self.family(EXPIRY)?);
        for index_key in &expired {
            let (_, message_key) = key::split_timed(index_key)?;
            batch.delete_cf(expiry, index_key);
            if self
                .db
                .get_pinned_cf(messages, message_key)
                .map_err(from_rocksdb)?
                .is_some()
            {
                batch.delete_cf(messages, message_key);
                swept.messages += 1;
            }
        }
        self.write_batch(batch)?;
        self.removed.fetch_add(swept.devices, Ordering::Relaxed);
        swept.more = next_device.is_some() || next_message.is_some();
        // Within a round, the next step starts where this one stopped: the keys before
        // are deleted, and skipping their tombstones again at every step would make a
        // big round quadratic. A finished round starts the next from the beginning.
        if swept.more {
            if let Some(next) = next_device {
                *seen_from = next;
            }
            if let Some(next) = next_message {
                *expiry_from = next;
            }
        } else {
            seen_from.clear();
            expiry_from.clear();
        }
        Ok(swept)
    }

    /// The first `limit` keys of `family` from `from` on and below `bound`, and where
    /// the next step starts (`None`: nothing more below `bound`).
    fn first_keys(
        &self,
        family: &str,
        from: &[u8],
        bound: Vec<u8>,
        limit: usize,
    ) -> Result<(Vec<Key>, Option<Key>), StoreError> {
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(bound);
        let mut iter = self.db.raw_iterator_cf_opt(self.family(family)?, read);
        iter.seek(from);
        let mut keys = Vec::new();
        while let Some(key) = iter.key() {
            if keys.len() == limit {
                return Ok((keys, Some(key.to_vec())));
            }
            keys.push(key.to_vec());
            iter.next();
        }
        iter.status().map_err(from_rocksdb)?;
        Ok((keys, None))
    }

    /// Whether retention removed enough devices since the last compaction to compact
    /// now (see [`COMPACT_AFTER`]); if so, claims the compaction.
    fn compaction_due(&self) -> bool {
        let removed = self.removed.load(Ordering::Relaxed);
        if removed < COMPACT_AFTER {
            return false;
        }
        let left = self
            .family(DEVICES)
            .ok()
            .and_then(|devices| {
                self.db
                    .property_int_value_cf(devices, "rocksdb.estimate-num-keys")
                    .ok()
                    .flatten()
            })
            .unwrap_or(0);
        if removed < left / 4 {
            return false;
        }
        !self.compacting.swap(true, Ordering::AcqRel)
    }

    /// Compacts every family, so the space of what retention removed is freed. Slow
    /// (it rewrites the files), so it runs on its own thread, never the writer's.
    fn compact(&self) {
        self.removed.store(0, Ordering::Relaxed);
        for name in FAMILIES {
            if let Ok(family) = self.family(name) {
                self.compact_family(family);
            }
        }
        self.compacting.store(false, Ordering::Release);
    }

    /// Rewrites all of `family` into its last level (its write buffer included).
    fn compact_family(&self, family: &ColumnFamily) {
        // Force: a family whose files all sit in the last level would otherwise be
        // skipped (or its single file moved down as it is), tombstones and all.
        let mut options = CompactOptions::default();
        options.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(family, None::<&[u8]>, None::<&[u8]>, &options);
    }

    /// At a clean close: compacts each family that holds at most
    /// [`SMALL_FAMILY_BYTES`] and has writes outside its last level (in its write
    /// buffer, or in level-0 tables). RocksDB compacts level 0 only once it holds
    /// four tables, so a small store would otherwise keep up to three tables of
    /// overwritten keys, and the next start would add its write buffer as one more: a
    /// store that retention shrank to its few live devices stayed up to ~1.6 × their
    /// size. Skipped while retention's own compaction runs; a large family is left to
    /// RocksDB's compactions (rewriting it would hold up the stop).
    fn compact_small_families(&self) {
        if self.compacting.load(Ordering::Acquire) {
            return;
        }
        for name in FAMILIES {
            let Ok(family) = self.family(name) else {
                continue;
            };
            let property = |name: &str| {
                self.db
                    .property_int_value_cf(family, name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            let unsettled = property("rocksdb.num-files-at-level0")
                + property("rocksdb.num-entries-active-mem-table")
                + property("rocksdb.num-entries-imm-mem-tables");
            let bytes = property("rocksdb.total-sst-files-size")
                + property("rocksdb.cur-size-all-mem-tables");
            if unsettled > 0 && bytes <= SMALL_FAMILY_BYTES {
                self.compact_family(family);
            }
        }
    }

    /// Deletes the channel key and the channel's queued messages in one atomic write.
    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.family(CHANNELS)?, key::channel(uaid, channel)?);
        self.scan_messages(&key::uaid_prefix(uaid)?, |key, value| {
            let head = record::decode_message_head(value)?;
            if head.channel == channel.as_str() {
                self.delete_message_key(&mut batch, key, head.expires_at)?;
            }
            Ok(ControlFlow::Continue(()))
        })?;
        self.db.write_opt(batch, &self.write).map_err(from_rocksdb)
    }

    fn put_update(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        update: Update,
        now: u64,
    ) -> Result<PutOutcome, StoreError> {
        let channels = self.family(CHANNELS)?;
        let key = key::channel(uaid, channel)?;
        let Some(value) = self
            .db
            .get_pinned_cf(channels, &key)
            .map_err(from_rocksdb)?
        else {
            return Ok(PutOutcome::Gone);
        };
        let replace = match record::decode_slot(&value)? {
            None => true,
            Some(pending) => update.supersedes(&pending, now),
        };
        if replace {
            self.db
                .put_cf_opt(
                    channels,
                    &key,
                    record::encode_slot(Some(&update)),
                    &self.write,
                )
                .map_err(from_rocksdb)?;
        }
        Ok(PutOutcome::Stored)
    }

    fn pending(&self, uaid: &Uaid, now: u64) -> Result<Pending, StoreError> {
        let prefix = key::uaid_prefix(uaid)?;
        let mut pending = Pending::default();
        self.scan_channels(&prefix, |key, value| {
            if let Some(update) = record::decode_slot(value)? {
                let channel = key::channel_of(&prefix, key)?;
                if update.expires_at > now {
                    pending.updates.push((channel, update));
                } else {
                    pending.expired.push(channel);
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(pending)
    }

    /// Empties the pending slot of each channel of `updates` acked at its version or a
    /// later one, and of each channel of `expired` whose update has expired at `now`, in
    /// one atomic write; answers whether any channel of `uaid` still has something
    /// pending. Every entry is decided on the slot as it was before the batch, which is
    /// what applying them one by one gives: an ack only ever empties a slot.
    fn ack_many(
        &self,
        uaid: &Uaid,
        updates: &[(ChannelId, u64)],
        expired: &[ChannelId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let channels = self.family(CHANNELS)?;
        let mut batch = WriteBatch::default();
        let mut clear_if = |channel: &ChannelId, clear: &dyn Fn(&Update) -> bool| {
            let key = key::channel(uaid, channel)?;
            let value = self
                .db
                .get_pinned_cf(channels, &key)
                .map_err(from_rocksdb)?;
            if let Some(value) = value
                && record::decode_slot(&value)?.is_some_and(|pending| clear(&pending))
            {
                batch.put_cf(channels, &key, record::encode_slot(None));
            }
            Ok::<(), StoreError>(())
        };
        for (channel, version) in updates {
            clear_if(channel, &|pending| pending.version <= *version)?;
        }
        for channel in expired {
            clear_if(channel, &|pending| pending.is_expired(now))?;
        }
        if !batch.is_empty() {
            self.db
                .write_opt(batch, &self.write)
                .map_err(from_rocksdb)?;
        }
        self.any_pending(uaid)
    }

    /// Whether any channel of `uaid` has a pending update, expired or not.
    fn any_pending(&self, uaid: &Uaid) -> Result<bool, StoreError> {
        let mut found = false;
        self.scan_channels(&key::uaid_prefix(uaid)?, |_, value| {
            found = record::decode_slot(value)?.is_some();
            Ok(if found {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(found)
    }

    /// Queues `message` if its channel is registered: in one atomic write, drops the
    /// uaid's messages that have expired at `now` (of every channel, since the scan
    /// sees them all anyway) and the channel's message of the same topic, and adds the
    /// new one, unless the channel's other unexpired messages already reach
    /// `max_queued` (then nothing is written).
    fn put_message(
        &self,
        uaid: &Uaid,
        message: &Message,
        max_queued: usize,
        now: u64,
    ) -> Result<QueueOutcome, StoreError> {
        let channel_key = key::channel(uaid, &message.channel)?;
        if self
            .db
            .get_pinned_cf(self.family(CHANNELS)?, &channel_key)
            .map_err(from_rocksdb)?
            .is_none()
        {
            return Ok(QueueOutcome::Gone);
        }
        let channel = message.channel.as_str();
        let topic = message.topic.as_deref();
        let mut batch = WriteBatch::default();
        let mut held = 0;
        self.scan_messages(&key::uaid_prefix(uaid)?, |key, value| {
            let queued = record::decode_message_head(value)?;
            if queued.expires_at <= now {
                self.delete_message_key(&mut batch, key, queued.expires_at)?;
            } else if queued.channel == channel {
                if topic.is_some() && queued.topic == topic {
                    self.delete_message_key(&mut batch, key, queued.expires_at)?;
                } else {
                    held += 1;
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if held >= max_queued {
            return Ok(QueueOutcome::Full);
        }
        let message_key = key::message(uaid, &message.id)?;
        batch.put_cf(
            self.family(EXPIRY)?,
            key::expiry(message.expires_at, &message_key),
            [],
        );
        batch.put_cf(
            self.family(MESSAGES)?,
            message_key,
            record::encode_message(message)?,
        );
        self.db
            .write_opt(batch, &self.write)
            .map_err(from_rocksdb)?;
        Ok(QueueOutcome::Stored)
    }

    /// The oldest `limit` messages of `uaid` unexpired at `now`, from one scan.
    fn messages(&self, uaid: &Uaid, now: u64, limit: usize) -> Result<Vec<Message>, StoreError> {
        let prefix = key::uaid_prefix(uaid)?;
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        self.scan_messages(&prefix, |key, value| {
            if record::decode_message_head(value)?.expires_at > now {
                let id = key::message_id_of(&prefix, key)?;
                found.push(record::decode_message(id, value)?);
            }
            Ok(if found.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(found)
    }

    /// Deletes the messages of `ids` that exist, with their expiry index keys (which
    /// is why each is read first; a damaged one goes too), in one atomic write, then
    /// answers whether an unexpired message of `uaid` is left.
    fn ack_messages(&self, uaid: &Uaid, ids: &[MessageId], now: u64) -> Result<bool, StoreError> {
        let messages = self.family(MESSAGES)?;
        let mut batch = WriteBatch::default();
        for id in ids {
            let key = key::message(uaid, id)?;
            if let Some(value) = self
                .db
                .get_pinned_cf(messages, &key)
                .map_err(from_rocksdb)?
            {
                self.delete_stored_message(&mut batch, &key, &value)?;
            }
        }
        self.write_batch(batch)?;
        self.any_message(uaid, now)
    }

    /// Whether `uaid` has a queued message unexpired at `now`.
    fn any_message(&self, uaid: &Uaid, now: u64) -> Result<bool, StoreError> {
        let mut found = false;
        self.scan_messages(&key::uaid_prefix(uaid)?, |_, value| {
            found = record::decode_message_head(value)?.expires_at > now;
            Ok(if found {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(found)
    }

    /// Deletes message `id` of `uaid` if it belongs to `channel`; answers whether it
    /// was there and unexpired at `now`.
    fn delete_message(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        id: &MessageId,
        now: u64,
    ) -> Result<bool, StoreError> {
        let messages = self.family(MESSAGES)?;
        let key = key::message(uaid, id)?;
        let Some(value) = self
            .db
            .get_pinned_cf(messages, &key)
            .map_err(from_rocksdb)?
        else {
            return Ok(false);
        };
        let queued = record::decode_message_head(&value)?;
        if queued.channel != channel.as_str() {
            return Ok(false);
        }
        let (live, expires_at) = (queued.expires_at > now, queued.expires_at);
        drop(value);
        let mut batch = WriteBatch::default();
        self.delete_message_key(&mut batch, &key, expires_at)?;
        self.write_batch(batch)?;
        Ok(live)
    }

    fn drop_uaid(&self, uaid: &Uaid) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.forget(&mut batch, uaid.as_str().as_bytes())?;
        self.write_batch(batch)
    }

    fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.family(NODES)?, uaid.as_str(), node);
        self.mark_unseen(&mut batch, uaid.as_str().as_bytes())?;
        self.write_batch(batch)
    }

    /// Adds to `batch` a last-seen time of 0 for the uaid whose raw bytes are `uaid` if
    /// it has none: a node record without a registered device (a hello that never
    /// registered) is then forgotten by the next sweep rather than kept forever.
    fn mark_unseen(&self, batch: &mut WriteBatch, uaid: &[u8]) -> Result<(), StoreError> {
        let devices = self.family(DEVICES)?;
        if self
            .db
            .get_pinned_cf(devices, uaid)
            .map_err(from_rocksdb)?
            .is_none()
        {
            batch.put_cf(devices, uaid, record::encode_seen(0));
            batch.put_cf(self.family(SEEN)?, key::seen(0, uaid), []);
        }
        Ok(())
    }

    fn node(&self, uaid: &Uaid) -> Result<Option<String>, StoreError> {
        self.db
            .get_pinned_cf(self.family(NODES)?, uaid.as_str())
            .map_err(from_rocksdb)?
            .map(|value| record::decode_node(&value))
            .transpose()
    }

    fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, StoreError> {
        let nodes = self.family(NODES)?;
        let Some(value) = self
            .db
            .get_pinned_cf(nodes, uaid.as_str())
            .map_err(from_rocksdb)?
        else {
            return Ok(false);
        };
        if record::decode_node(&value)? != node {
            return Ok(false);
        }
        self.db
            .delete_cf_opt(nodes, uaid.as_str(), &self.write)
            .map_err(from_rocksdb)?;
        Ok(true)
    }

    fn check(&self) -> Result<(), StoreError> {
        let token = self.checks.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        self.db
            .put_opt(CHECK_KEY, token, &self.write)
            .map_err(from_rocksdb)?;
        match self.db.get_pinned(CHECK_KEY).map_err(from_rocksdb)? {
            // Another check may have written in between; any token we wrote is fine.
            Some(value) if value.len() == token.len() => Ok(()),
            Some(_) => Err(StoreError::Corrupt(
                "health-check value changed size".to_owned(),
            )),
            None => Err(StoreError::Internal(
                "health-check value vanished".to_owned(),
            )),
        }
    }
}

#[async_trait]
impl Store for RocksStore {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    async fn knows_uaid(&self, uaid: &Uaid) -> Result<bool, StoreError> {
        let uaid = uaid.clone();
        self.run(move |db| db.knows_uaid(&uaid)).await
    }

    async fn registered(&self, uaid: &Uaid, channel: &ChannelId) -> Result<bool, StoreError> {
        let (uaid, channel) = (uaid.clone(), channel.clone());
        self.run(move |db| db.registered(&uaid, &channel)).await
    }

    async fn register(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max_channels: usize,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let (uaid, channel) = (uaid.clone(), channel.clone());
        self.write(Sync::Durable, move |db| {
            db.register(&uaid, &channel, max_channels, now)
        })
        .await
    }

    async fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), StoreError> {
        let (uaid, channel) = (uaid.clone(), channel.clone());
        self.write(Sync::Durable, move |db| db.unregister(&uaid, &channel))
            .await
    }

    async fn put_update(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        update: Update,
        now: u64,
    ) -> Result<PutOutcome, StoreError> {
        let (uaid, channel) = (uaid.clone(), channel.clone());
        self.write(Sync::Durable, move |db| {
            db.put_update(&uaid, &channel, update, now)
        })
        .await
    }

    async fn pending(&self, uaid: &Uaid, now: u64) -> Result<Pending, StoreError> {
        let uaid = uaid.clone();
        self.run(move |db| db.pending(&uaid, now)).await
    }

    async fn ack_many(
        &self,
        uaid: &Uaid,
        updates: &[(ChannelId, u64)],
        expired: &[ChannelId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let (uaid, updates, expired) = (uaid.clone(), updates.to_vec(), expired.to_vec());
        self.write(Sync::Lazy, move |db| {
            db.ack_many(&uaid, &updates, &expired, now)
        })
        .await
    }

    async fn put_message(
        &self,
        uaid: &Uaid,
        message: &Message,
        max_queued: usize,
        now: u64,
    ) -> Result<QueueOutcome, StoreError> {
        let (uaid, message) = (uaid.clone(), message.clone());
        self.write(Sync::Durable, move |db| {
            db.put_message(&uaid, &message, max_queued, now)
        })
        .await
    }

    async fn messages(
        &self,
        uaid: &Uaid,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let uaid = uaid.clone();
        self.run(move |db| db.messages(&uaid, now, limit)).await
    }

    /// Lazy like [`Store::ack_many`]: a lost ack only delivers a message again.
    async fn ack_messages(
        &self,
        uaid: &Uaid,
        ids: &[MessageId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let (uaid, ids) = (uaid.clone(), ids.to_vec());
        self.write(Sync::Lazy, move |db| db.ack_messages(&uaid, &ids, now))
            .await
    }

    /// Lazy like an ack: a lost delete only delivers a withdrawn message.
    async fn delete_message(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        id: &MessageId,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (uaid, channel, id) = (uaid.clone(), channel.clone(), id.clone());
        self.write(Sync::Lazy, move |db| {
            db.delete_message(&uaid, &channel, &id, now)
        })
        .await
    }

    /// Lazy: a lost touch only lets the device be forgotten a little early, a TTL
    /// after its previous one.
    async fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), StoreError> {
        let uaid = uaid.clone();
        self.write(Sync::Lazy, move |db| db.touch(&uaid, now)).await
    }

    /// Lazy: a sweep lost in a crash is simply done again. The round's last step may
    /// start a compaction on its own thread (see [`COMPACT_AFTER`]).
    ///
    /// The step is several writes of at most [`SWEEP_CHUNK`] devices and messages each,
    /// one after the other, so that the writes queued meanwhile run between them
    /// instead of waiting for the whole step.
    async fn sweep(&self, cutoff: u64, now: u64, limit: usize) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        loop {
            let done = usize::try_from(swept.devices.max(swept.messages)).unwrap_or(limit);
            let chunk = limit.saturating_sub(done).min(SWEEP_CHUNK);
            let step = self
                .write(Sync::Lazy, move |db| db.sweep(cutoff, now, chunk))
                .await?;
            swept.devices += step.devices;
            swept.messages += step.messages;
            swept.more = step.more;
            if !step.more || chunk == 0 || done + chunk >= limit {
                break;
            }
        }
        if !swept.more && self.db.compaction_due() {
            let db = Arc::clone(&self.db);
            std::thread::Builder::new()
                .name("rocksdb-compact".to_owned())
                .spawn(move || db.compact())
                .map_err(|e| StoreError::Internal(format!("starting a compaction: {e}")))?;
        }
        Ok(swept)
    }

    async fn drop_uaid(&self, uaid: &Uaid) -> Result<(), StoreError> {
        let uaid = uaid.clone();
        self.write(Sync::Durable, move |db| db.drop_uaid(&uaid))
            .await
    }

    async fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), StoreError> {
        let (uaid, node) = (uaid.clone(), node.to_owned());
        self.write(Sync::Durable, move |db| db.set_node(&uaid, &node))
            .await
    }

    async fn node(&self, uaid: &Uaid) -> Result<Option<String>, StoreError> {
        let uaid = uaid.clone();
        self.run(move |db| db.node(&uaid)).await
    }

    async fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, StoreError> {
        let (uaid, node) = (uaid.clone(), node.to_owned());
        self.write(Sync::Durable, move |db| db.clear_node(&uaid, &node))
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.write(Sync::Durable, Db::check).await
    }

    /// Lets the writer finish what is queued and sync the log, so nothing answered is
    /// lost even when `fsync` is off. The database itself closes when the last handle
    /// drops.
    async fn close(&self) -> Result<(), StoreError> {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || writer.close())
            .await
            .map_err(from_join)?
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const NOW: u64 = 1_000;
    const LATER: u64 = NOW + 3600;

    fn update(version: u64, data: &str) -> Update {
        Update {
            version,
            data: Some(data.to_owned()),
            expires_at: LATER,
        }
    }

    fn ids() -> (Uaid, ChannelId) {
        (
            Uaid::new("0123456789abcdef0123456789abcdef"),
            ChannelId::new("channel-1"),
        )
    }

    /// A message of `channel-1` (see [`ids`]) with a binary body, expiring at `expires_at`.
    fn message(id: &str, topic: Option<&str>, expires_at: u64) -> Message {
        Message {
            id: MessageId::new(id),
            channel: ids().1,
            ttl: 60,
            expires_at,
            topic: topic.map(str::to_owned),
            urgency: simplepush_store::Urgency::High,
            payload: Some(simplepush_store::Payload {
                encoding: "aes128gcm".to_owned(),
                encryption: None,
                crypto_key: None,
                body: format!("{id}\0\u{ff}").into_bytes(),
            }),
        }
    }

    /// Queues `message` for `uaid` at [`NOW`].
    async fn queue(store: &RocksStore, uaid: &Uaid, message: Message, max: usize) -> QueueOutcome {
        store.put_message(uaid, &message, max, NOW).await.unwrap()
    }

    fn open(dir: &Path, fsync: bool) -> RocksStore {
        RocksStore::open(dir, RocksOptions { fsync }).unwrap()
    }

    #[tokio::test]
    async fn data_survives_reopen_without_close() {
        for fsync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (u, c) = ids();
            {
                let store = open(dir.path(), fsync);
                assert_eq!(
                    store.register(&u, &c, 10, NOW).await.unwrap(),
                    RegisterOutcome::Registered
                );
                let put = store.put_update(&u, &c, update(7, "seven"), NOW).await;
                assert_eq!(put.unwrap(), PutOutcome::Stored);
                store.set_node(&u, "http://node-a").await.unwrap();
            }
            let store = open(dir.path(), fsync);
            assert!(store.knows_uaid(&u).await.unwrap());
            let pending = store.pending(&u, NOW).await.unwrap();
            assert_eq!(pending.updates, vec![(c.clone(), update(7, "seven"))]);
            assert_eq!(
                store.node(&u).await.unwrap().as_deref(),
                Some("http://node-a")
            );
            let put = store.put_update(&u, &c, update(8, "eight"), NOW).await;
            assert_eq!(put.unwrap(), PutOutcome::Stored);
            store.close().await.unwrap();
            drop(store);
            let store = open(dir.path(), fsync);
            let pending = store.pending(&u, NOW).await.unwrap();
            assert_eq!(pending.updates, vec![(c, update(8, "eight"))]);
        }
    }

    /// Set in the environment of the child process of [`answered_writes_survive_abort`].
    const ABORT_DIR: &str = "SIMPLEPUSH_ROCKSDB_ABORT_DIR";

    /// The second channel of [`abort_after_put`], whose update is acked (unsynced).
    const ACKED: &str = "acked-channel";

    /// The child half of [`answered_writes_survive_abort`]: stores an update, acks
    /// another, queues two messages and acks the first (unsynced), then dies without
    /// running any destructor, as under `kill -9`.
    #[tokio::test]
    #[ignore = "run by answered_writes_survive_abort in a child process"]
    async fn abort_after_put() {
        let Some(dir) = std::env::var_os(ABORT_DIR) else {
            return;
        };
        let store = open(Path::new(&dir), true);
        let (u, c) = ids();
        let acked = ChannelId::new(ACKED);
        store.register(&u, &c, 10, NOW).await.unwrap();
        store.register(&u, &acked, 10, NOW).await.unwrap();
        let put = store.put_update(&u, &acked, update(7, "acked"), NOW).await;
        assert_eq!(put.unwrap(), PutOutcome::Stored);
        let put = store.put_update(&u, &c, update(42, "answered"), NOW).await;
        assert_eq!(put.unwrap(), PutOutcome::Stored);
        assert!(store.ack(&u, &acked, 7).await.unwrap(), "42 is left");
        for id in ["m1", "m2"] {
            let put = queue(&store, &u, message(id, None, LATER), 10).await;
            assert_eq!(put, QueueOutcome::Stored);
        }
        let acked = store.ack_messages(&u, &[MessageId::new("m1")], NOW).await;
        assert!(acked.unwrap(), "m2 is left");
        std::process::abort();
    }

    #[tokio::test]
    async fn answered_writes_survive_abort() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "store::tests::abort_after_put", "--ignored"])
            .env(ABORT_DIR, dir.path());
        let status = tokio::task::spawn_blocking(move || child.output())
            .await
            .unwrap()
            .unwrap()
            .status;
        assert!(
            !status.success(),
            "the child must have aborted, not finished"
        );
        let store = open(dir.path(), true);
        let (u, c) = ids();
        // The answered put survived, and so did the ack of the other channel.
        let pending = store.pending(&u, NOW).await.unwrap();
        assert_eq!(pending.updates, vec![(c, update(42, "answered"))]);
        // The same for the queued messages and the ack of the first.
        let queued = store.messages(&u, NOW, 10).await.unwrap();
        assert_eq!(queued, vec![message("m2", None, LATER)]);
    }

    #[tokio::test]
    async fn corrupt_values_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), true);
        let (u, c) = ids();
        store.register(&u, &c, 10, NOW).await.unwrap();
        store.set_node(&u, "http://node-a").await.unwrap();
        let db = &store.db;
        let channel_key = key::channel(&u, &c).unwrap();
        db.db
            .put_cf(db.family(CHANNELS).unwrap(), &channel_key, b"\x01garbage")
            .unwrap();
        db.db
            .put_cf(db.family(NODES).unwrap(), u.as_str(), b"\xff\xfe")
            .unwrap();

        let corrupt = |result: Result<_, StoreError>| matches!(result, Err(StoreError::Corrupt(_)));
        assert!(corrupt(store.pending(&u, NOW).await.map(drop)));
        assert!(corrupt(
            store
                .put_update(&u, &c, update(1, "x"), NOW)
                .await
                .map(drop)
        ));
        assert!(corrupt(store.ack(&u, &c, 1).await.map(drop)));
        assert!(corrupt(store.node(&u).await.map(drop)));
        assert!(corrupt(
            store.clear_node(&u, "http://node-a").await.map(drop)
        ));
        // A damaged message fails what reads the queue, until an ack deletes it unread.
        let bad = MessageId::new("m-bad");
        db.db
            .put_cf(
                db.family(MESSAGES).unwrap(),
                key::message(&u, &bad).unwrap(),
                b"\x01short",
            )
            .unwrap();
        assert!(corrupt(store.messages(&u, NOW, 10).await.map(drop)));
        assert!(corrupt(
            store
                .put_message(&u, &message("m1", None, LATER), 10, NOW)
                .await
                .map(drop)
        ));
        assert!(corrupt(
            store.delete_message(&u, &c, &bad, NOW).await.map(drop)
        ));
        assert!(!store.ack_messages(&u, &[bad], NOW).await.unwrap());
        assert!(store.messages(&u, NOW, 10).await.unwrap().is_empty());
        // What does not decode the value still works, and unregistering clears it.
        assert!(store.knows_uaid(&u).await.unwrap());
        store.unregister(&u, &c).await.unwrap();
        assert!(store.pending(&u, NOW).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), true);
            store
                .db
                .db
                .put(FORMAT_KEY, record::encode_format(FORMAT_VERSION + 1))
                .unwrap();
        }
        let reopened = RocksStore::open(dir.path(), RocksOptions::default());
        assert!(matches!(reopened, Err(StoreError::Internal(_))));
    }

    #[tokio::test]
    async fn second_open_of_a_locked_directory_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), true);
        let second = RocksStore::open(dir.path(), RocksOptions::default());
        assert!(matches!(second, Err(StoreError::Unavailable(_))));
    }

    #[tokio::test]
    async fn channel_limit_counts_only_its_uaid() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        // Neighbouring uaids whose keys sort right before and after `u`'s.
        let (before, u, after) = (Uaid::new("aaa"), Uaid::new("aab"), Uaid::new("aac"));
        for other in [&before, &after] {
            for i in 0..3 {
                store
                    .register(other, &ChannelId::new(format!("c{i}")), 10, NOW)
                    .await
                    .unwrap();
            }
        }
        let first = store
            .register(&u, &ChannelId::new("x"), 2, NOW)
            .await
            .unwrap();
        let second = store
            .register(&u, &ChannelId::new("y"), 2, NOW)
            .await
            .unwrap();
        let third = store
            .register(&u, &ChannelId::new("z"), 2, NOW)
            .await
            .unwrap();
        assert_eq!(
            [first, second, third],
            [
                RegisterOutcome::Registered,
                RegisterOutcome::Registered,
                RegisterOutcome::TooManyChannels
            ]
        );
        store.drop_uaid(&u).await.unwrap();
        assert!(!store.knows_uaid(&u).await.unwrap());
        assert!(store.knows_uaid(&before).await.unwrap());
        assert!(store.knows_uaid(&after).await.unwrap());
    }

    /// A database written before the `messages` family existed: only the families and
    /// records of that layout, as the earlier build wrote them.
    fn old_layout_database(dir: &Path, uaid: &Uaid, channel: &ChannelId) {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir, [CHANNELS, NODES]).unwrap();
        db.put(FORMAT_KEY, record::encode_format(1)).unwrap();
        let slot = record::encode_slot(Some(&update(5, "old")));
        let channels = db.cf_handle(CHANNELS).unwrap();
        db.put_cf(channels, key::channel(uaid, channel).unwrap(), slot)
            .unwrap();
        db.flush_wal(true).unwrap();
    }

    #[tokio::test]
    async fn a_database_from_before_messages_opens_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (u, c) = ids();
        old_layout_database(dir.path(), &u, &c);
        let store = open(dir.path(), true);
        let pending = store.pending(&u, NOW).await.unwrap();
        assert_eq!(pending.updates, vec![(c.clone(), update(5, "old"))]);
        let put = queue(&store, &u, message("m1", None, LATER), 10).await;
        assert_eq!(put, QueueOutcome::Stored);
        store.close().await.unwrap();
        drop(store);
        let store = open(dir.path(), true);
        let queued = store.messages(&u, NOW, 10).await.unwrap();
        assert_eq!(queued, vec![message("m1", None, LATER)]);
    }

    #[tokio::test]
    async fn queues_count_and_list_only_their_uaid() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        let c = ids().1;
        // Neighbouring uaids whose keys sort right before and after `u`'s, each with a
        // full queue on a channel of the same name.
        let (before, u, after) = (Uaid::new("aaa"), Uaid::new("aab"), Uaid::new("aac"));
        for (n, uaid) in [&before, &u, &after].into_iter().enumerate() {
            store.register(uaid, &c, 10, NOW).await.unwrap();
            if n != 1 {
                for i in 0..2 {
                    let id = format!("{n}-{i}");
                    let put = queue(&store, uaid, message(&id, Some("t"), LATER), 2).await;
                    assert_eq!(put, QueueOutcome::Stored, "{id}");
                }
            }
        }
        // `u`'s queue is empty: its neighbours' messages neither fill it nor replace
        // by topic, and are not listed, withdrawn or acked through it.
        for id in ["x1", "x2"] {
            let put = queue(&store, &u, message(id, None, LATER), 2).await;
            assert_eq!(put, QueueOutcome::Stored);
        }
        let ids_of = |messages: Vec<Message>| -> Vec<String> {
            messages.iter().map(|m| m.id.to_string()).collect()
        };
        assert_eq!(
            ids_of(store.messages(&u, NOW, 10).await.unwrap()),
            ["x1", "x2"]
        );
        let neighbour = MessageId::new("0-1");
        assert!(!store.delete_message(&u, &c, &neighbour, NOW).await.unwrap());
        let x = [MessageId::new("x1"), MessageId::new("x2"), neighbour];
        assert!(!store.ack_messages(&u, &x, NOW).await.unwrap());
        store.drop_uaid(&u).await.unwrap();
        for (uaid, first) in [(&before, "0"), (&after, "2")] {
            let listed = ids_of(store.messages(uaid, NOW, 10).await.unwrap());
            assert_eq!(listed, [format!("{first}-1")], "topic t replaced {first}-0");
        }
    }

    /// The number of keys in `family`.
    fn count(store: &RocksStore, family: &str) -> usize {
        let mut n = 0;
        store
            .db
            .scan(family, &[], |_, _| {
                n += 1;
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
        n
    }

    /// The retention indexes hold exactly one key per device and per message, whatever
    /// removed the others: ack, delete, topic replacement, expiry at a put, unregister,
    /// drop.
    #[tokio::test]
    async fn retention_indexes_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        let (u, c) = ids();
        let other = ChannelId::new("other");
        store.register(&u, &c, 10, NOW).await.unwrap();
        store.register(&u, &other, 10, NOW + 1).await.unwrap();
        store.touch(&u, NOW + 2).await.unwrap();
        let queued = [
            message("m1", None, LATER),
            message("m2", Some("t"), LATER),
            message("m3", None, NOW + 5),
            message("m4", None, LATER),
        ];
        for m in queued {
            assert_eq!(queue(&store, &u, m, 10).await, QueueOutcome::Stored);
        }
        let mut on_other = message("m5", None, LATER);
        on_other.channel = other.clone();
        assert_eq!(queue(&store, &u, on_other, 10).await, QueueOutcome::Stored);
        assert_eq!((count(&store, MESSAGES), count(&store, EXPIRY)), (5, 5));
        assert_eq!((count(&store, DEVICES), count(&store, SEEN)), (1, 1));

        store
            .ack_messages(&u, &[MessageId::new("m1")], NOW)
            .await
            .unwrap();
        assert!(
            store
                .delete_message(&u, &c, &MessageId::new("m4"), NOW)
                .await
                .unwrap()
        );
        // m6 replaces m2 (topic) and the put at NOW + 10 drops the expired m3.
        let replacing = message("m6", Some("t"), LATER);
        let put = store.put_message(&u, &replacing, 10, NOW + 10);
        assert_eq!(put.await.unwrap(), QueueOutcome::Stored);
        assert_eq!((count(&store, MESSAGES), count(&store, EXPIRY)), (2, 2));
        store.unregister(&u, &other).await.unwrap();
        assert_eq!((count(&store, MESSAGES), count(&store, EXPIRY)), (1, 1));
        store.drop_uaid(&u).await.unwrap();
        for family in [CHANNELS, MESSAGES, EXPIRY, DEVICES, SEEN] {
            assert_eq!(count(&store, family), 0, "{family} emptied");
        }
    }

    /// A database of format version 1 gains its retention indexes when opened: its
    /// devices count as seen at the upgrade, a node record without channels as never
    /// seen, its messages are indexed, and the sweep then treats them like any other.
    #[tokio::test]
    async fn a_version_1_database_gains_retention_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let (u, c) = ids();
        old_layout_database(dir.path(), &u, &c);
        let lone = Uaid::new("11111111111111111111111111111111");
        {
            let store = open(dir.path(), true);
            let put = queue(&store, &u, message("m1", None, LATER), 10).await;
            assert_eq!(put, QueueOutcome::Stored);
            store.set_node(&lone, "http://node-a").await.unwrap();
            // Back to version 1 with the message's index key gone, as a version 1
            // build would have left it.
            store
                .db
                .db
                .put(FORMAT_KEY, record::encode_format(1))
                .unwrap();
            let expiry = store.db.family(EXPIRY).unwrap();
            let key = key::expiry(LATER, &key::message(&u, &MessageId::new("m1")).unwrap());
            store.db.db.delete_cf(expiry, key).unwrap();
            for family in [DEVICES, SEEN] {
                let handle = store.db.family(family).unwrap();
                store
                    .db
                    .db
                    .delete_range_cf(handle, [0u8].as_slice(), [0xffu8; 64].as_slice())
                    .unwrap();
            }
            store.close().await.unwrap();
        }
        let upgraded_at = simplepush_store::unix_now();
        let store = open(dir.path(), true);
        let format = store.db.db.get(FORMAT_KEY).unwrap().unwrap();
        assert_eq!(record::decode_format(&format).unwrap(), FORMAT_VERSION);
        assert_eq!((count(&store, DEVICES), count(&store, SEEN)), (2, 2));
        assert_eq!(count(&store, EXPIRY), 1);
        // Seen at the upgrade: kept by a cutoff before it, swept by one after it. The
        // lone node record goes at once.
        let kept = store.sweep(upgraded_at - 10, NOW, 100).await.unwrap();
        assert_eq!(kept.devices, 1);
        assert_eq!(store.node(&lone).await.unwrap(), None);
        assert!(store.knows_uaid(&u).await.unwrap());
        let swept = store.sweep(upgraded_at + 10, NOW, 100).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                devices: 1,
                messages: 0,
                more: false
            }
        );
        assert!(!store.knows_uaid(&u).await.unwrap());
        for family in [CHANNELS, MESSAGES, EXPIRY, DEVICES, SEEN] {
            assert_eq!(count(&store, family), 0, "{family} emptied");
        }
    }

    /// The bytes of every SST file of every family.
    fn sst_bytes(store: &RocksStore) -> u64 {
        FAMILIES
            .iter()
            .map(|name| {
                let family = store.db.family(name).unwrap();
                store
                    .db
                    .db
                    .property_int_value_cf(family, "rocksdb.total-sst-files-size")
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// At a clean close, a small store compacts what its write buffers and level-0
    /// tables hold into its last level: it reopens at rest, with nothing to replay and
    /// no overwritten keys beside the live ones.
    #[tokio::test]
    async fn a_clean_close_leaves_a_small_store_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let level0 = |store: &RocksStore, name: &str| {
            let family = store.db.family(name).unwrap();
            let files = store
                .db
                .db
                .property_int_value_cf(family, "rocksdb.num-files-at-level0");
            files.unwrap().unwrap()
        };
        let (u, c) = ids();
        {
            let store = open(dir.path(), true);
            store.register(&u, &c, 10, NOW).await.unwrap();
            // Two level-0 tables of the same key, and the write buffer on top.
            for version in 1..=3 {
                let update = Update {
                    version,
                    data: None,
                    expires_at: NOW + 100,
                };
                store.put_update(&u, &c, update, NOW).await.unwrap();
                if version < 3 {
                    let channels = store.db.family(CHANNELS).unwrap();
                    store.db.db.flush_cf(channels).unwrap();
                }
            }
            assert_eq!(level0(&store, CHANNELS), 2);
            store.close().await.unwrap();
            assert_eq!(level0(&store, CHANNELS), 0);
        }
        let store = open(dir.path(), true);
        for name in FAMILIES {
            assert_eq!(level0(&store, name), 0, "{name}: nothing replayed");
        }
        let pending = store.pending(&u, NOW).await.unwrap();
        assert_eq!(pending.updates.len(), 1);
        assert_eq!(pending.updates[0].1.version, 3);
    }

    /// A table's index is cut into partitions of a data block's size, so that a read
    /// needs one small partition in the cache, not the table's whole index.
    #[tokio::test]
    async fn tables_index_their_keys_in_small_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let channel = |i: usize| ChannelId::new(format!("{i:08x}-0000-4000-8000-000000000000"));
        let uaid = |i: usize| Uaid::new(format!("{i:032x}"));
        {
            let store = open(dir.path(), false);
            for i in 0..10_000 {
                store
                    .register(&uaid(i), &channel(i), 10, NOW)
                    .await
                    .unwrap();
            }
            let channels = store.db.family(CHANNELS).unwrap();
            store.db.db.flush_cf(channels).unwrap();
            let properties = store
                .db
                .db
                .property_value_cf(channels, "rocksdb.aggregated-table-properties")
                .unwrap()
                .unwrap();
            // `name=value; ...`; a name may carry details in parentheses.
            let field = |name: &str| -> u64 {
                let entry = properties.split("; ").find(|entry| entry.starts_with(name));
                let value = entry.and_then(|entry| entry.rsplit_once('='));
                let value = value
                    .unwrap_or_else(|| panic!("no {name} in {properties}"))
                    .1;
                value.parse().unwrap()
            };
            let partitions = field("# index partitions=");
            let index = field("index block size");
            assert!(partitions > 1, "{properties}");
            assert!(
                index / partitions <= 2 * METADATA_BLOCK_BYTES as u64,
                "{properties}"
            );
        }
        // Read through the partitions, after a reopen.
        let store = open(dir.path(), false);
        for i in (0..10_000).step_by(97) {
            assert!(store.registered(&uaid(i), &channel(i)).await.unwrap());
        }
        assert!(!store.registered(&uaid(1), &channel(2)).await.unwrap());
    }

    /// Once retention removed most devices, the store compacts by itself and the files
    /// shrink to what the remaining devices need.
    #[tokio::test]
    async fn a_big_sweep_frees_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path(), false));
        let devices = 20_000;
        let mut tasks = tokio::task::JoinSet::new();
        for batch in 0..20 {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                for i in 0..devices / 20 {
                    let u = Uaid::new(format!("{:032x}", batch * 1_000_000 + i));
                    for c in ["c-one-0000-0000-0000-000000000000", "c-two"] {
                        let at = if i < 100 { NOW + 500 } else { NOW };
                        store
                            .register(&u, &ChannelId::new(c), 10, at)
                            .await
                            .unwrap();
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        for name in FAMILIES {
            store
                .db
                .db
                .flush_cf(store.db.family(name).unwrap())
                .unwrap();
        }
        let full = sst_bytes(&store);
        let mut removed = 0;
        loop {
            let step = store.sweep(NOW + 100, NOW + 100, 500).await.unwrap();
            removed += step.devices;
            if !step.more {
                break;
            }
        }
        assert_eq!(removed, devices - 20 * 100);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let left = loop {
            let compacting = store.db.compacting.load(Ordering::Acquire);
            let left = sst_bytes(&store);
            if !compacting && left * 5 < full {
                break left;
            }
            if std::time::Instant::now() > deadline {
                for name in FAMILIES {
                    let family = store.db.family(name).unwrap();
                    let size = store.db.db.property_value_cf(family, "rocksdb.levelstats");
                    eprintln!("{name}: {:?}", size.unwrap());
                }
                panic!("files still hold {left} of {full} bytes");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        // What is left is about the 2,000 live devices' share (a tenth), not more.
        assert!(left * 5 < full, "{left} of {full} bytes left");
        assert_eq!(count(&store, DEVICES), 2000);
    }
}
