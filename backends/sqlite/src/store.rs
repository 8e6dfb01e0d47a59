//! [`SqliteStore`]: the [`Store`] contract over one SQLite database file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use simplepush_store::{
    ChannelId, Message, MessageId, Payload, Pending, PutOutcome, QueueOutcome, RegisterOutcome,
    Store, StoreError, Swept, Uaid, Update, Urgency,
};

use crate::connection::{open_checkpointer, open_reader, open_writer};
use crate::error::Error;
use crate::writer::{self, Sync, Writer};

/// The name of the database file inside the store's directory.
const FILE_NAME: &str = "simplepush.sqlite3";

/// Read connections kept open between reads; more are opened under load and closed
/// when they are not needed.
const IDLE_READERS: usize = 4;

/// Devices one write of a sweep removes at most. A sweep step is several such writes
/// through the writer, one after the other, so that the puts arriving meanwhile run
/// between them instead of waiting for the whole step.
const SWEEP_DEVICES: u64 = 64;

/// Expired messages one write of a sweep removes at most.
const SWEEP_MESSAGES: u64 = 256;

/// Free pages one sweep step gives back to the file system at most: enough to keep up
/// with what a step frees, few enough to move in a few milliseconds. A backlog (after a
/// sweep of many devices) shrinks the file over the following steps.
const VACUUM_PAGES: u32 = 256;

/// How the SQLite store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Sync the write-ahead log to disk on every commit (`synchronous=FULL`), so an
    /// acknowledged put survives a power loss. `false` (`synchronous=NORMAL`) survives a
    /// crash of the process only, and writes faster.
    pub fsync: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { fsync: true }
    }
}

/// A [`Store`] in one SQLite database file, in WAL mode.
///
/// Writes go through a single connection on a thread of its own, which commits the
/// writes waiting for it together, each in a savepoint of its own, so concurrent puts
/// share one sync of the log; reads use their own read-only connections (on tokio's
/// blocking pool) and never wait for a write.
#[derive(Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// The connections, shared with the blocking tasks that use them.
#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The thread owning the one writer.
    writer: Writer,
    /// The thread copying the log into the file (stopped at close).
    checkpointer: Checkpointer,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

/// How often the checkpointer looks at the log.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The thread that checkpoints the log (`PRAGMA wal_checkpoint(PASSIVE)`: it copies
/// what no reader still needs and never blocks the writer) every
/// [`CHECKPOINT_EVERY`], so the writer's own checkpoints (a backstop, see
/// [`open_checkpointer`]) find little left to copy and its batches do not wait.
#[derive(Debug)]
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Checkpointer {
    fn start(conn: Connection) -> Result<Checkpointer, Error> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || {
                let (stopped, wake) = &*signal;
                let mut done = lock(stopped);
                while !*done {
                    done = wake
                        .wait_timeout(done, CHECKPOINT_EVERY)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    if *done {
                        break;
                    }
                    drop(done);
                    // Busy or failed: the next round (or the writer's backstop) does it.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    done = lock(stopped);
                }
            })
            .map_err(|e| {
                Error::Writer(StoreError::Internal(format!(
                    "starting the checkpointer: {e}"
                )))
            })?;
        Ok(Checkpointer {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread and waits for it (idempotent).
    fn stop(&self) {
        let (stopped, wake) = &*self.stop;
        *lock(stopped) = true;
        wake.notify_all();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Locks `mutex`, recovering it if a panic poisoned it: an idle connection holds no
/// state of ours that a panic could leave half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    /// Runs `f` on an idle reader, or on a new one if none is idle.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let idle = lock(&self.readers).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let answer = f(&conn);
        // Checked under the pool's lock, which close() holds while it empties the pool,
        // so no connection is parked after close.
        let mut readers = lock(&self.readers);
        if !self.closed.load(Ordering::Acquire) && readers.len() < IDLE_READERS {
            readers.push(conn);
        }
        answer
    }

    /// Closes the readers, then lets the writer finish what is queued, checkpoint the
    /// log into the database file and close. Blocking.
    fn close(&self) -> Result<(), Error> {
        {
            let mut readers = lock(&self.readers);
            self.closed.store(true, Ordering::Release);
            readers.clear();
        }
        self.checkpointer.stop();
        self.writer.close().map_err(Error::Writer)
    }
}

impl SqliteStore {
    /// Opens (creating the directory and schema if missing) the database
    /// `dir/simplepush.sqlite3`.
    ///
    /// This does blocking file I/O: call it before serving, or on the blocking pool.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        Ok(Self::open_inner(dir, &options)?)
    }

    fn open_inner(dir: &Path, options: &SqliteOptions) -> Result<SqliteStore, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let writer = writer::start(open_writer(&path, options.fsync)?, options.fsync)
            .map_err(Error::Writer)?;
        let checkpointer = Checkpointer::start(open_checkpointer(&path)?)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer,
                checkpointer,
                readers: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Runs `f` on the writer, in the transaction of the next batch, synced.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        self.write_as(Sync::Durable, f).await
    }

    /// Runs the ack `f` on the writer; a batch of acks alone is not synced (see
    /// [`Sync::Lazy`]): a lost ack only means a delivery more.
    async fn write_ack<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        self.write_as(Sync::Lazy, f).await
    }

    /// Runs `f` on the writer as a write of kind `sync`.
    async fn write_as<T, F>(&self, sync: Sync, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let write = move |conn: &Connection| f(conn).map_err(StoreError::from);
        self.inner.writer.write(sync, write).await
    }

    /// Runs `f` on a reader, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let answer = tokio::task::spawn_blocking(move || inner.read(f))
            .await
            .map_err(Error::from)?;
        Ok(answer?)
    }
}

/// A version as stored: SQLite integers are signed, so versions end at `i64::MAX`.
fn stored_version(version: u64) -> Result<i64, Error> {
    i64::try_from(version).map_err(|_| Error::VersionOutOfRange(version))
}

/// A time, or a bound compared with stored values, as stored. Saturating is exact for
/// comparisons: every stored value is at most `i64::MAX`, and `i64::MAX` seconds is
/// later than any expiry that matters.
fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Reads a stored version or time back; a negative one can only be damage.
fn unsigned(row: &Row<'_>, column: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(column)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(column, value))
}

/// Whether any channel of `uaid` has a pending update, expired or not.
fn any_pending(conn: &Connection, uaid: &str) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM channel JOIN pending USING (id) WHERE uaid = ?1)",
        )?
        .query_row([uaid], |row| row.get(0))?)
}

/// The number of `?1`'s channel `?2`, the key of its pending update: a macro, so that
/// statements can take it as a subquery.
macro_rules! channel_number {
    () => {
        "SELECT id FROM channel WHERE uaid = ?1 AND channel = ?2"
    };
}

/// Records `now` (`?2`) as the time `?1` was last seen, creating its device row.
const SEE: &str = "INSERT INTO device (uaid, seen) VALUES (?1, ?2)
                   ON CONFLICT (uaid) DO UPDATE SET seen = excluded.seen";

/// The statements that forget a device (`?1`), each a search of a primary key that
/// starts with the uaid.
const FORGET: [&str; 5] = [
    "DELETE FROM pending WHERE id IN (SELECT id FROM channel WHERE uaid = ?1)",
    "DELETE FROM channel WHERE uaid = ?1",
    "DELETE FROM message WHERE uaid = ?1",
    "DELETE FROM node WHERE uaid = ?1",
    "DELETE FROM device WHERE uaid = ?1",
];

/// Forgets `uaid` entirely. Callers run it in one write, so all or nothing.
fn forget(conn: &Connection, uaid: &str) -> Result<(), Error> {
    for sql in FORGET {
        conn.prepare_cached(sql)?.execute([uaid])?;
    }
    Ok(())
}

/// Devices not seen since a cutoff (`?1`), the longest unseen first, at most `?2`:
/// a range of `device_seen`.
const UNSEEN: &str = "SELECT uaid FROM device WHERE seen < ?1 ORDER BY seen LIMIT ?2";

/// Removes the device row of `?1` if it is still not seen since the cutoff `?2`.
const FORGET_UNSEEN: &str = "DELETE FROM device WHERE uaid = ?1 AND seen < ?2";

/// Removes at most `?2` messages expired at `?1`: a range of `message_expiry`.
const EXPIRED: &str = "DELETE FROM message WHERE rowid IN (
                           SELECT rowid FROM message WHERE expires_at <= ?1 LIMIT ?2)";

/// One write of a sweep: removes at most `devices` devices not seen since `cutoff`,
/// each entirely, and at most `messages` messages expired at `now`. Answers how many of
/// each it removed.
fn sweep_once(
    conn: &Connection,
    cutoff: i64,
    now: i64,
    devices: u64,
    messages: u64,
) -> Result<(u64, u64), Error> {
    let mut removed = 0;
    if devices > 0 {
        let unseen: Vec<String> = conn
            .prepare_cached(UNSEEN)?
            .query_map(params![cutoff, saturating(devices)], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for uaid in &unseen {
            // Checked again as it goes: a touch is a write too, so none can come
            // between this write's read and its deletes, but the check costs nothing
            // and keeps the rule where the delete is.
            if conn
                .prepare_cached(FORGET_UNSEEN)?
                .execute(params![uaid, cutoff])?
                == 1
            {
                forget(conn, uaid)?;
                removed += 1;
            }
        }
    }
    let expired = if messages > 0 {
        conn.prepare_cached(EXPIRED)?
            .execute(params![now, saturating(messages)])? as u64
    } else {
        0
    };
    Ok((removed, expired))
}

/// Gives at most [`VACUUM_PAGES`] free pages back to the file system (the file shrinks
/// at the next checkpoint). A no-op on a database created without incremental vacuum.
fn give_back_pages(conn: &Connection) -> Result<(), Error> {
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |row| row.get(0))?;
    if free > 0 {
        // The pragma answers a row per page it frees, and frees the next one only when
        // asked for the next row: read them all.
        let mut stmt =
            conn.prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(())
}

/// The queued messages of a device not expired at a time, oldest first, at most so
/// many: `?1` uaid, `?2` now, `?3` limit. A range scan of the primary key.
const QUEUED: &str = "SELECT id, channel, ttl, expires_at, topic, urgency,
                             encoding, encryption, crypto_key, body
                      FROM message WHERE uaid = ?1 AND expires_at > ?2
                      ORDER BY id LIMIT ?3";

/// A [`Message`] as its columns store it.
struct MessageRow {
    id: String,
    channel: String,
    ttl: i64,
    expires_at: i64,
    topic: Option<String>,
    urgency: &'static str,
    encoding: Option<String>,
    encryption: Option<String>,
    crypto_key: Option<String>,
    body: Option<Vec<u8>>,
}

impl MessageRow {
    fn of(message: &Message) -> Result<MessageRow, Error> {
        let payload = message.payload.as_ref();
        Ok(MessageRow {
            id: message.id.as_str().to_owned(),
            channel: message.channel.as_str().to_owned(),
            ttl: i64::try_from(message.ttl).map_err(|_| Error::TtlOutOfRange(message.ttl))?,
            expires_at: saturating(message.expires_at),
            topic: message.topic.clone(),
            urgency: message.urgency.as_str(),
            encoding: payload.map(|p| p.encoding.clone()),
            encryption: payload.and_then(|p| p.encryption.clone()),
            crypto_key: payload.and_then(|p| p.crypto_key.clone()),
            body: payload.map(|p| p.body.clone()),
        })
    }
}

/// Reads a row of [`QUEUED`] back into a [`Message`].
fn message_of(row: &Row<'_>) -> rusqlite::Result<Message> {
    let urgency: String = row.get(5)?;
    let urgency = Urgency::parse(&urgency).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            5,
            Type::Text,
            format!("unknown urgency {urgency:?}").into(),
        )
    })?;
    let encoding: Option<String> = row.get(6)?;
    let payload = match encoding {
        None => None,
        Some(encoding) => Some(Payload {
            encoding,
            encryption: row.get(7)?,
            crypto_key: row.get(8)?,
            body: row.get::<_, Option<Vec<u8>>>(9)?.unwrap_or_default(),
        }),
    };
    Ok(Message {
        id: MessageId::new(row.get::<_, String>(0)?),
        channel: ChannelId::new(row.get::<_, String>(1)?),
        ttl: unsigned(row, 2)?,
        expires_at: unsigned(row, 3)?,
        topic: row.get(4)?,
        urgency,
        payload,
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn knows_uaid(&self, uaid: &Uaid) -> Result<bool, StoreError> {
        let uaid = uaid.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM channel WHERE uaid = ?1)")?;
            Ok(stmt.query_row([uaid], |row| row.get(0))?)
        })
        .await
    }

    async fn registered(&self, uaid: &Uaid, channel: &ChannelId) -> Result<bool, StoreError> {
        let (uaid, channel) = (uaid.as_str().to_owned(), channel.as_str().to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM channel WHERE uaid = ?1 AND channel = ?2)",
            )?;
            Ok(stmt.query_row([uaid, channel], |row| row.get(0))?)
        })
        .await
    }

    async fn register(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max_channels: usize,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let (uaid, channel) = (uaid.as_str().to_owned(), channel.as_str().to_owned());
        let max_channels = i64::try_from(max_channels).unwrap_or(i64::MAX);
        let now = saturating(now);
        self.write(move |conn| {
            // Count and insert in one write, which the writer runs atomically and alone,
            // so concurrent registers cannot both take the last free slot.
            let known: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM channel WHERE uaid = ?1 AND channel = ?2)",
                )?
                .query_row([&uaid, &channel], |row| row.get(0))?;
            if !known {
                let live: i64 = conn
                    .prepare_cached("SELECT count(*) FROM channel WHERE uaid = ?1")?
                    .query_row([&uaid], |row| row.get(0))?;
                if live >= max_channels {
                    return Ok(RegisterOutcome::TooManyChannels);
                }
                let id: i64 = conn
                    .prepare_cached(
                        "UPDATE channel_seq SET next = next + 1 WHERE id = 1 RETURNING next - 1",
                    )?
                    .query_row([], |row| row.get(0))?;
                conn.prepare_cached("INSERT INTO channel (uaid, channel, id) VALUES (?1, ?2, ?3)")?
                    .execute(params![uaid, channel, id])?;
            }
            conn.prepare_cached(SEE)?.execute(params![uaid, now])?;
            Ok(RegisterOutcome::Registered)
        })
        .await
    }

    async fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), StoreError> {
        let (uaid, channel) = (uaid.as_str().to_owned(), channel.as_str().to_owned());
        self.write(move |conn| {
            // All or nothing: the writer undoes a write that fails halfway.
            conn.prepare_cached(concat!(
                "DELETE FROM pending WHERE id = (",
                channel_number!(),
                ")"
            ))?
            .execute([&uaid, &channel])?;
            conn.prepare_cached("DELETE FROM channel WHERE uaid = ?1 AND channel = ?2")?
                .execute([&uaid, &channel])?;
            conn.prepare_cached("DELETE FROM message WHERE uaid = ?1 AND channel = ?2")?
                .execute([&uaid, &channel])?;
            Ok(())
        })
        .await
    }

    async fn put_update(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        update: Update,
        now: u64,
    ) -> Result<PutOutcome, StoreError> {
        let (uaid, channel) = (uaid.as_str().to_owned(), channel.as_str().to_owned());
        let version = stored_version(update.version).map_err(StoreError::from)?;
        let expires_at = saturating(update.expires_at);
        let now = saturating(now);
        self.write(move |conn| {
            // A channel without a number is not registered. The channel's row is only
            // read; the upsert keeps a pending update unless the new version is greater
            // or the pending one has expired.
            let Some(id) = conn
                .prepare_cached(channel_number!())?
                .query_row([&uaid, &channel], |row| row.get::<_, i64>(0))
                .optional()?
            else {
                return Ok(PutOutcome::Gone);
            };
            conn.prepare_cached(
                "INSERT INTO pending (id, version, data, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET
                     version = excluded.version,
                     data = excluded.data,
                     expires_at = excluded.expires_at
                 WHERE excluded.version > pending.version OR pending.expires_at <= ?5",
            )?
            .execute(params![id, version, update.data, expires_at, now])?;
            Ok(PutOutcome::Stored)
        })
        .await
    }

    async fn pending(&self, uaid: &Uaid, now: u64) -> Result<Pending, StoreError> {
        let uaid = uaid.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT channel, version, data, expires_at FROM channel JOIN pending USING (id)
                 WHERE uaid = ?1",
            )?;
            let rows = stmt.query_map([uaid], |row| {
                Ok((
                    ChannelId::new(row.get::<_, String>(0)?),
                    Update {
                        version: unsigned(row, 1)?,
                        data: row.get(2)?,
                        expires_at: unsigned(row, 3)?,
                    },
                ))
            })?;
            let mut pending = Pending::default();
            for row in rows {
                let (channel, update) = row?;
                if update.expires_at > now {
                    pending.updates.push((channel, update));
                } else {
                    pending.expired.push(channel);
                }
            }
            Ok(pending)
        })
        .await
    }

    /// One write on the writer thread for the whole batch: its statements run in one
    /// transaction (or savepoint), so the batch applies entirely or not at all.
    async fn ack_many(
        &self,
        uaid: &Uaid,
        updates: &[(ChannelId, u64)],
        expired: &[ChannelId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let uaid = uaid.as_str().to_owned();
        let updates: Vec<(String, i64)> = updates
            .iter()
            .map(|(channel, version)| (channel.as_str().to_owned(), saturating(*version)))
            .collect();
        let expired: Vec<String> = expired.iter().map(|c| c.as_str().to_owned()).collect();
        let now = saturating(now);
        self.write_ack(move |conn| {
            if !updates.is_empty() {
                let mut ack = conn.prepare_cached(concat!(
                    "DELETE FROM pending WHERE id = (",
                    channel_number!(),
                    ") AND version <= ?3"
                ))?;
                for (channel, version) in &updates {
                    ack.execute(params![uaid, channel, version])?;
                }
            }
            if !expired.is_empty() {
                let mut ack = conn.prepare_cached(concat!(
                    "DELETE FROM pending WHERE id = (",
                    channel_number!(),
                    ") AND expires_at <= ?3"
                ))?;
                for channel in &expired {
                    ack.execute(params![uaid, channel, now])?;
                }
            }
            any_pending(conn, &uaid)
        })
        .await
    }

    /// One write on the writer thread, synced like [`Store::put_update`]: the
    /// registration check, the channel's expired messages, the topic it replaces, the
    /// bound and the insert are one savepoint of the batch, so all or nothing.
    async fn put_message(
        &self,
        uaid: &Uaid,
        message: &Message,
        max_queued: usize,
        now: u64,
    ) -> Result<QueueOutcome, StoreError> {
        let uaid = uaid.as_str().to_owned();
        let row = MessageRow::of(message).map_err(StoreError::from)?;
        let max_queued = i64::try_from(max_queued).unwrap_or(i64::MAX);
        let now = saturating(now);
        self.write(move |conn| {
            let registered: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM channel WHERE uaid = ?1 AND channel = ?2)",
                )?
                .query_row([&uaid, &row.channel], |row| row.get(0))?;
            if !registered {
                return Ok(QueueOutcome::Gone);
            }
            conn.prepare_cached(
                "DELETE FROM message WHERE uaid = ?1 AND channel = ?2 AND expires_at <= ?3",
            )?
            .execute(params![uaid, row.channel, now])?;
            // What stays queued beside the new message: all but the one of its topic.
            let held: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM message
                     WHERE uaid = ?1 AND channel = ?2 AND (?3 IS NULL OR topic IS NOT ?3)",
                )?
                .query_row(params![uaid, row.channel, row.topic], |row| row.get(0))?;
            if held >= max_queued {
                return Ok(QueueOutcome::Full);
            }
            if row.topic.is_some() {
                conn.prepare_cached(
                    "DELETE FROM message WHERE uaid = ?1 AND channel = ?2 AND topic = ?3",
                )?
                .execute(params![uaid, row.channel, row.topic])?;
            }
            conn.prepare_cached(
                "INSERT INTO message (uaid, id, channel, ttl, expires_at, topic, urgency,
                                      encoding, encryption, crypto_key, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                uaid,
                row.id,
                row.channel,
                row.ttl,
                row.expires_at,
                row.topic,
                row.urgency,
                row.encoding,
                row.encryption,
                row.crypto_key,
                row.body,
            ])?;
            Ok(QueueOutcome::Stored)
        })
        .await
    }

    /// A range of the primary key, in id order, on a reader.
    async fn messages(
        &self,
        uaid: &Uaid,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let uaid = uaid.as_str().to_owned();
        let now = saturating(now);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(QUEUED)?;
            let rows = stmt.query_map(params![uaid, now, limit], message_of)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// One unsynced write, like [`Store::ack_many`]: a lost ack only means a delivery
    /// more. It also drops the expired messages of `uaid`, which nothing else would
    /// on a channel that gets no more messages.
    async fn ack_messages(
        &self,
        uaid: &Uaid,
        ids: &[MessageId],
        now: u64,
    ) -> Result<bool, StoreError> {
        let uaid = uaid.as_str().to_owned();
        let ids: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
        let now = saturating(now);
        self.write_ack(move |conn| {
            if !ids.is_empty() {
                let mut ack =
                    conn.prepare_cached("DELETE FROM message WHERE uaid = ?1 AND id = ?2")?;
                for id in &ids {
                    ack.execute([&uaid, id])?;
                }
            }
            conn.prepare_cached("DELETE FROM message WHERE uaid = ?1 AND expires_at <= ?2")?
                .execute(params![uaid, now])?;
            Ok(conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM message WHERE uaid = ?1)")?
                .query_row([&uaid], |row| row.get(0))?)
        })
        .await
    }

    /// Unsynced, like an ack: a withdrawal lost in a crash only means a delivery more.
    async fn delete_message(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        id: &MessageId,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (uaid, channel, id) = (
            uaid.as_str().to_owned(),
            channel.as_str().to_owned(),
            id.as_str().to_owned(),
        );
        let now = saturating(now);
        self.write_ack(move |conn| {
            let expires_at: Option<i64> = conn
                .prepare_cached(
                    "DELETE FROM message WHERE uaid = ?1 AND id = ?2 AND channel = ?3
                     RETURNING expires_at",
                )?
                .query_row([uaid, id, channel], |row| row.get(0))
                .optional()?;
            Ok(expires_at.is_some_and(|expires_at| expires_at > now))
        })
        .await
    }

    /// Unsynced, like an ack: a touch lost in a power loss only lets the device be
    /// forgotten sooner by the time since its previous hello.
    async fn touch(&self, uaid: &Uaid, now: u64) -> Result<(), StoreError> {
        let uaid = uaid.as_str().to_owned();
        let now = saturating(now);
        self.write_ack(move |conn| {
            conn.prepare_cached("UPDATE device SET seen = ?2 WHERE uaid = ?1")?
                .execute(params![uaid, now])?;
            Ok(())
        })
        .await
    }

    /// Several short writes through the writer, each of at most [`SWEEP_DEVICES`]
    /// devices and [`SWEEP_MESSAGES`] messages, one after the other (the writes queued
    /// meanwhile run between them), then one that gives back at most [`VACUUM_PAGES`]
    /// free pages. Unsynced, like an ack: a sweep lost in a power loss is done again by
    /// the next.
    async fn sweep(&self, cutoff: u64, now: u64, limit: usize) -> Result<Swept, StoreError> {
        let (cutoff, now) = (saturating(cutoff), saturating(now));
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let mut swept = Swept::default();
        let (mut devices_done, mut messages_done) = (limit == 0, limit == 0);
        while !(devices_done && messages_done) {
            let devices = if devices_done {
                0
            } else {
                SWEEP_DEVICES.min(limit - swept.devices)
            };
            let messages = if messages_done {
                0
            } else {
                SWEEP_MESSAGES.min(limit - swept.messages)
            };
            let (removed, expired) = self
                .write_ack(move |conn| sweep_once(conn, cutoff, now, devices, messages))
                .await?;
            swept.devices += removed;
            swept.messages += expired;
            // Fewer than asked for: none left of that kind.
            devices_done |= removed < devices || swept.devices >= limit;
            messages_done |= expired < messages || swept.messages >= limit;
        }
        swept.more = swept.devices >= limit || swept.messages >= limit;
        self.write_ack(give_back_pages).await?;
        Ok(swept)
    }

    async fn drop_uaid(&self, uaid: &Uaid) -> Result<(), StoreError> {
        let uaid = uaid.as_str().to_owned();
        // All or nothing: the writer undoes a write that fails halfway.
        self.write(move |conn| forget(conn, &uaid)).await
    }

    async fn set_node(&self, uaid: &Uaid, node: &str) -> Result<(), StoreError> {
        let (uaid, node) = (uaid.as_str().to_owned(), node.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO node (uaid, node) VALUES (?1, ?2)
                 ON CONFLICT (uaid) DO UPDATE SET node = excluded.node",
            )?
            .execute([&uaid, &node])?;
            // A device that registered has a row already. Without one (a hello that
            // never registered) the node record counts as never seen: the next sweep
            // forgets it rather than keeping it forever.
            conn.prepare_cached(
                "INSERT INTO device (uaid, seen) VALUES (?1, 0) ON CONFLICT (uaid) DO NOTHING",
            )?
            .execute([&uaid])?;
            Ok(())
        })
        .await
    }

    async fn node(&self, uaid: &Uaid) -> Result<Option<String>, StoreError> {
        let uaid = uaid.as_str().to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT node FROM node WHERE uaid = ?1")?
                .query_row([uaid], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    async fn clear_node(&self, uaid: &Uaid, node: &str) -> Result<bool, StoreError> {
        let (uaid, node) = (uaid.as_str().to_owned(), node.to_owned());
        self.write(move |conn| {
            let cleared = conn
                .prepare_cached("DELETE FROM node WHERE uaid = ?1 AND node = ?2")?
                .execute([uaid, node])?;
            Ok(cleared > 0)
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        let written = self
            .write(|conn| {
                Ok(conn
                    .prepare_cached(
                        "INSERT INTO health (id, beat) VALUES (1, 1)
                         ON CONFLICT (id) DO UPDATE SET beat = beat + 1
                         RETURNING beat",
                    )?
                    .query_row([], |row| row.get::<_, i64>(0))?)
            })
            .await?;
        // Read back through a reader, so both kinds of connection are exercised. A
        // concurrent check may have written a later beat, never an earlier one.
        self.read(move |conn| {
            let read: Option<i64> = conn
                .prepare_cached("SELECT beat FROM health WHERE id = 1")?
                .query_row([], |row| row.get(0))
                .optional()?;
            match read {
                Some(beat) if beat >= written => Ok(()),
                _ => Err(Error::CheckMismatch { written, read }),
            }
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.close())
            .await
            .map_err(Error::from)?
            .map_err(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &SqliteStore) -> i64 {
        crate::writer::level(&store.inner.writer, Sync::Durable)
    }

    #[test]
    fn fsync_option_sets_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let full = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        // 2 = FULL, 1 = NORMAL.
        assert_eq!(synchronous(&full), 2);
        drop(full);
        let normal = SqliteStore::open(dir.path(), SqliteOptions { fsync: false }).unwrap();
        assert_eq!(synchronous(&normal), 1);
    }

    #[test]
    fn database_is_in_wal_mode_with_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let (mode, version) = store
            .inner
            .read(|conn| {
                let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
                let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
                Ok((mode, version))
            })
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(version, crate::schema::CURRENT);
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let attempt = store.inner.read(|conn| {
            conn.execute("INSERT INTO node (uaid, node) VALUES ('u', 'n')", [])?;
            Ok(())
        });
        assert!(matches!(
            StoreError::from(attempt.unwrap_err()),
            StoreError::Unavailable(_)
        ));
    }

    /// A message with data, as a WebPush app server sends one.
    fn message(id: &str, channel: &ChannelId) -> Message {
        Message {
            id: MessageId::new(id),
            channel: channel.clone(),
            ttl: 60,
            expires_at: 2_000,
            topic: Some("news".to_owned()),
            urgency: Urgency::Low,
            payload: Some(Payload {
                encoding: "aesgcm".to_owned(),
                encryption: Some("salt=abc".to_owned()),
                crypto_key: Some("dh=def".to_owned()),
                body: vec![0, 1, 2, 255],
            }),
        }
    }

    /// A database file as the build before the message queue left it (schema 1, WAL),
    /// with a device that has a pending update.
    fn version_1_database(dir: &Path) {
        let mut conn = Connection::open(dir.join(FILE_NAME)).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        crate::schema::migrate_to(&mut conn, 1).unwrap();
        conn.execute(
            "INSERT INTO channel (uaid, channel, version, data, expires_at)
             VALUES ('u-old', 'c-old', 7, 'seven', 5000)",
            [],
        )
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_of_the_old_schema_opens_and_queues_messages() {
        let dir = tempfile::tempdir().unwrap();
        version_1_database(dir.path());
        let (u, c) = (Uaid::new("u-old"), ChannelId::new("c-old"));

        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let pending = store.pending(&u, 1_000).await.unwrap();
        assert_eq!(pending.updates.len(), 1, "{pending:?}");
        assert_eq!(pending.updates[0].1.version, 7);
        let sent = message("m1", &c);
        let put = store.put_message(&u, &sent, 10, 1_000).await.unwrap();
        assert_eq!(put, QueueOutcome::Stored);
        assert_eq!(
            store.messages(&u, 1_000, 10).await.unwrap(),
            vec![sent.clone()]
        );
        store.close().await.unwrap();

        // Reopened, it is a current database with the message still queued.
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let version: i64 = store
            .inner
            .read(|conn| Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(version, crate::schema::CURRENT);
        assert_eq!(store.messages(&u, 1_000, 10).await.unwrap(), [sent]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_devices_of_a_version_2_database_get_a_full_ttl_from_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        // As the build before retention left it: WAL, no auto_vacuum, schema 2.
        let mut conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        crate::schema::migrate_to(&mut conn, 2).unwrap();
        conn.execute_batch(
            "INSERT INTO channel (uaid, channel) VALUES ('u-old', 'c-old');
             INSERT INTO message (uaid, id, channel, ttl, expires_at, urgency)
                 VALUES ('u-old', 'm1', 'c-old', 60, 9999999999, 'normal');
             INSERT INTO node (uaid, node) VALUES ('u-old', 'http://node-a');",
        )
        .unwrap();
        drop(conn);
        let (u, c) = (Uaid::new("u-old"), ChannelId::new("c-old"));

        let before = simplepush_store::unix_now();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let after = simplepush_store::unix_now();
        let auto_vacuum: i64 = store
            .inner
            .read(|conn| Ok(conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?))
            .unwrap();
        assert_eq!(
            auto_vacuum, 2,
            "a small file is converted to incremental vacuum"
        );
        // Seen at the upgrade: a cutoff at the upgrade keeps it, one just after goes.
        let kept = store.sweep(before, after, 100).await.unwrap();
        assert_eq!(kept, Swept::default());
        assert!(store.registered(&u, &c).await.unwrap());
        assert_eq!(store.messages(&u, after, 10).await.unwrap().len(), 1);
        let gone = store.sweep(after + 1, after, 100).await.unwrap();
        assert_eq!(gone.devices, 1);
        assert!(!store.knows_uaid(&u).await.unwrap());
        assert!(store.messages(&u, after, 10).await.unwrap().is_empty());
        assert_eq!(store.node(&u).await.unwrap(), None);
    }

    /// The rows of `pending`, pending updates of registered channels or not.
    fn pending_rows(store: &SqliteStore) -> i64 {
        store
            .inner
            .read(|conn| Ok(conn.query_row("SELECT count(*) FROM pending", [], |r| r.get(0))?))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_pending_update_outlives_its_channel_or_its_ack() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let update = |version| Update {
            version,
            data: Some("d".to_owned()),
            expires_at: 2_000,
        };
        let (u, c) = (Uaid::new("u"), ChannelId::new("c"));
        let (v, d) = (Uaid::new("v"), ChannelId::new("d"));
        for (uaid, channel) in [(&u, &c), (&u, &d), (&v, &c), (&v, &d)] {
            store.register(uaid, channel, 10, 1_000).await.unwrap();
            let put = store.put_update(uaid, channel, update(3), 1_000).await;
            assert_eq!(put.unwrap(), PutOutcome::Stored);
        }
        assert_eq!(pending_rows(&store), 4);
        // Acked, unregistered, forgotten with its device: each row goes from the file.
        store.ack(&u, &c, 3).await.unwrap();
        assert_eq!(pending_rows(&store), 3);
        store.unregister(&u, &d).await.unwrap();
        assert_eq!(pending_rows(&store), 2);
        let swept = store.sweep(1_001, 1_000, 10).await.unwrap();
        assert_eq!(swept.devices, 2);
        assert_eq!(pending_rows(&store), 0);
        // A channel registered again starts with nothing pending.
        store.register(&u, &d, 10, 1_000).await.unwrap();
        assert!(store.pending(&u, 1_000).await.unwrap().is_empty());
    }

    /// The plan SQLite makes for `sql`, one step a line.
    fn plan(store: &SqliteStore, sql: &str) -> String {
        let sql = format!("EXPLAIN QUERY PLAN {sql}");
        store
            .inner
            .read(move |conn| {
                let mut stmt = conn.prepare(&sql)?;
                let steps = stmt.query_map([], |row| row.get::<_, String>(3))?;
                Ok(steps.collect::<Result<Vec<_>, _>>()?.join("\n"))
            })
            .unwrap()
    }

    #[test]
    fn message_reads_are_index_searches_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        // A device's queue: a range of the primary key, already in id order.
        let queued = plan(
            &store,
            &QUEUED
                .replace("?1", "'u'")
                .replace("?2", "0")
                .replace("?3", "9"),
        );
        assert!(queued.contains("SEARCH message USING INDEX"), "{queued}");
        assert!(queued.contains("(uaid=?)"), "{queued}");
        assert!(!queued.contains("TEMP B-TREE"), "{queued}");
        // A channel's messages and the one of a topic: the channel index.
        for sql in [
            "SELECT count(*) FROM message WHERE uaid = 'u' AND channel = 'c'",
            "DELETE FROM message WHERE uaid = 'u' AND channel = 'c' AND topic = 't'",
        ] {
            let found = plan(&store, sql);
            assert!(found.contains("INDEX message_channel"), "{sql}: {found}");
        }
    }

    #[test]
    fn sweep_statements_are_index_searches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let bound = |sql: &str| sql.replace("?1", "'u'").replace("?2", "5");
        let unseen = plan(&store, &bound(UNSEEN));
        assert!(unseen.contains("INDEX device_seen (seen<?)"), "{unseen}");
        assert!(!unseen.contains("TEMP B-TREE"), "{unseen}");
        let expired = plan(&store, &bound(EXPIRED));
        assert!(
            expired.contains("INDEX message_expiry (expires_at<?)"),
            "{expired}"
        );
        // Forgetting a device: searches of primary keys that start with the uaid.
        for sql in FORGET.into_iter().chain([FORGET_UNSEEN, SEE]) {
            let found = plan(&store, &bound(sql));
            assert!(!found.contains("SCAN"), "{sql}: {found}");
        }
        for sql in FORGET {
            let found = plan(&store, &bound(sql));
            assert!(found.contains("(uaid=?)"), "{sql}: {found}");
        }
    }
}
