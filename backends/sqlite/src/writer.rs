//! The writer thread: it owns the one write connection and commits the writes that
//! queued up while it was busy together, in one transaction and so with one sync of
//! the log (group commit). A write is answered only once its transaction committed,
//! so "answered" still means "durable" when `fsync` is on. A batch of acks alone is
//! committed without a sync: its log frames are in the OS's page cache when it is
//! answered, so a crash of the process keeps them; a power loss may forget them (the
//! update is then delivered once more), and the next synced commit syncs them too.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::Connection;
use simplepush_store::StoreError;
use tokio::sync::oneshot;

use crate::error::Error;

/// Writes committed in one transaction at most; the rest wait for the next one.
const MAX_BATCH: usize = 256;

/// A queued write, type-erased so writes of every answer type share one queue.
trait Job: Send {
    /// Runs the write on `conn` inside the batch's transaction and keeps its answer;
    /// says whether it succeeded (a failed one is rolled back on its own).
    fn run(&mut self, conn: &Connection) -> bool;

    /// Sends the kept answer, or `failed` when the batch did not commit.
    fn answer(self: Box<Self>, failed: Option<StoreError>);

    /// Whether its commit must be synced (when the store syncs at all).
    fn synced(&self) -> bool;
}

/// Whether a write's commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// Synced (with `fsync` on): what was answered survives a power loss.
    Durable,
    /// Never synced by itself (acks): survives a crash of the process.
    Lazy,
}

/// A write `F` answering `T` to whoever waits on `reply`.
struct Write<T, F> {
    sync: Sync,
    write: Option<F>,
    answer: Option<Result<T, Error>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, Error> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(write) = self.write.take() else {
            return false;
        };
        // A panicking write must not take the thread, and every later write, with it.
        let answer = catch_unwind(AssertUnwindSafe(|| write(conn))).unwrap_or(Err(Error::Panic));
        let ok = answer.is_ok();
        self.answer = Some(answer);
        ok
    }

    fn answer(self: Box<Self>, failed: Option<StoreError>) {
        let answer = match (self.answer, failed) {
            // The write's own error says more than the batch's.
            (Some(Err(error)), _) => Err(StoreError::from(error)),
            (Some(Ok(_)), Some(failed)) | (None, Some(failed)) => Err(failed),
            (Some(Ok(answer)), None) => Ok(answer),
            (None, None) => Err(StoreError::from(Error::Closed)),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.reply.send(answer);
    }

    fn synced(&self) -> bool {
        self.sync == Sync::Durable
    }
}

/// The handle on the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    /// The queue to the thread; `None` once closed.
    queue: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    /// The thread; it answers how closing the connection went.
    thread: Mutex<Option<JoinHandle<Result<(), Error>>>>,
}

impl Writer {
    /// Starts the thread that owns `conn`, opened with `synchronous=FULL` when `fsync`.
    pub(crate) fn start(conn: Connection, fsync: bool) -> Result<Writer, Error> {
        let (queue, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(conn, fsync, jobs))
            .map_err(Error::Thread)?;
        Ok(Writer {
            queue: Mutex::new(Some(queue)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `write`; the receiver answers once its transaction committed (or failed).
    pub(crate) fn submit<T, F>(
        &self,
        sync: Sync,
        write: F,
    ) -> oneshot::Receiver<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Write {
            sync,
            write: Some(write),
            answer: None,
            reply,
        });
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match queue.as_ref() {
            Some(queue) => {
                if let Err(mpsc::SendError(job)) = queue.send(job) {
                    job.answer(None);
                }
            }
            None => job.answer(None),
        }
        answer
    }

    /// Runs `write` and waits for its answer.
    pub(crate) async fn write<T, F>(&self, sync: Sync, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        self.submit(sync, write)
            .await
            .unwrap_or_else(|_| Err(StoreError::from(Error::Closed)))
    }

    /// Lets the thread finish what is queued, checkpoint the log and close the
    /// connection; waits for it. Blocking; later writes answer "closed".
    pub(crate) fn close(&self) -> Result<(), Error> {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match thread {
            Some(thread) => thread.join().unwrap_or(Err(Error::Panic)),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    /// A store dropped without `close` still ends its thread and closes the file
    /// before a new store may open it.
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The thread: takes the first queued write and whatever queued behind it, commits
/// them together, answers them, and repeats until the queue is closed.
fn serve(
    mut conn: Connection,
    fsync: bool,
    jobs: mpsc::Receiver<Box<dyn Job>>,
) -> Result<(), Error> {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    // What `synchronous` is set to now.
    let mut syncing = fsync;
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        batch.extend(jobs.try_iter().take(MAX_BATCH - 1));
        let sync = fsync && batch.iter().any(|job| job.synced());
        let failed = set_sync(&conn, &mut syncing, sync)
            .and_then(|()| commit(&mut conn, &mut batch))
            .err()
            .map(StoreError::from);
        for job in batch.drain(..) {
            job.answer(failed.clone());
        }
    }
    // TRUNCATE also empties the -wal file. Reads still in flight may keep it from
    // completing ("busy" in the first column), which is not an error: the log is
    // durable either way and the next open replays it.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.close().map_err(|(_, error)| Error::Sqlite(error))
}

/// Makes the next commits synced (`synchronous=FULL`) or not (`NORMAL`), if they are
/// not already.
fn set_sync(conn: &Connection, syncing: &mut bool, sync: bool) -> Result<(), Error> {
    if *syncing != sync {
        let level = if sync { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", level)?;
        *syncing = sync;
    }
    Ok(())
}

/// Runs `batch` in one transaction, each write of a batch of several in a savepoint of
/// its own so that a failing one is undone alone.
fn commit(conn: &mut Connection, batch: &mut [Box<dyn Job>]) -> Result<(), Error> {
    if !conn.is_autocommit() {
        // Only a failure halfway through an earlier batch can leave one open.
        conn.execute_batch("ROLLBACK")?;
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let ran = run_all(conn, batch).and_then(|keep| {
        let end = if keep { "COMMIT" } else { "ROLLBACK" };
        Ok(conn.execute_batch(end)?)
    });
    if ran.is_err() && !conn.is_autocommit() {
        // The error is what the callers hear; a failed rollback leaves the transaction
        // open for the next batch to roll back.
        let _ = conn.execute_batch("ROLLBACK");
    }
    ran
}

/// Runs every write of `batch`; answers whether there is anything to commit.
fn run_all(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<bool, Error> {
    if let [alone] = batch {
        // Alone, a failed write is undone by rolling back the whole transaction.
        return Ok(alone.run(conn));
    }
    for job in batch {
        conn.prepare_cached("SAVEPOINT write")?.execute([])?;
        if !job.run(conn) {
            conn.prepare_cached("ROLLBACK TO write")?.execute([])?;
        }
        conn.prepare_cached("RELEASE write")?.execute([])?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc::{Sender, channel};

    use super::*;
    use crate::connection::{open_reader, open_writer};

    fn insert(conn: &Connection, uaid: &str) -> Result<(), Error> {
        conn.execute("INSERT INTO node (uaid, node) VALUES (?1, 'n')", [uaid])?;
        Ok(())
    }

    /// The node rows committed, as a connection of their own sees them.
    fn committed(path: &Path) -> Vec<String> {
        let reader = open_reader(path).unwrap();
        let mut stmt = reader
            .prepare("SELECT uaid FROM node ORDER BY uaid")
            .unwrap();
        let rows = stmt.query_map([], |row| row.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// Starts a writer whose first write holds the thread until `release` is sent,
    /// so the writes submitted meanwhile queue up behind it.
    fn held_writer(path: &Path) -> (Writer, Sender<()>) {
        let writer = Writer::start(open_writer(path, true).unwrap(), true).unwrap();
        let (release, held) = channel::<()>();
        let (started, running) = channel::<()>();
        drop(writer.submit(Sync::Durable, move |conn| {
            started.send(()).unwrap();
            held.recv().unwrap();
            insert(conn, "u0")
        }));
        running.recv().unwrap();
        (writer, release)
    }

    #[test]
    fn writes_queued_together_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (writer, release) = held_writer(&path);
        let queued: Vec<_> = ["u1", "u2", "u3"]
            .into_iter()
            .map(|uaid| writer.submit(Sync::Durable, move |conn| insert(conn, uaid)))
            .collect();
        let seen_path = path.clone();
        let last = writer.submit(Sync::Durable, move |_| Ok(committed(&seen_path)));
        release.send(()).unwrap();
        // The last write ran in the same transaction as u1..u3, before its commit: a
        // separate connection saw only the batch before it.
        assert_eq!(last.blocking_recv().unwrap().unwrap(), ["u0"]);
        for answer in queued {
            answer.blocking_recv().unwrap().unwrap();
        }
        assert_eq!(committed(&path), ["u0", "u1", "u2", "u3"]);
    }

    #[test]
    fn a_failing_write_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (writer, release) = held_writer(&path);
        let before = writer.submit(Sync::Durable, |conn| insert(conn, "u1"));
        let failing = writer.submit(Sync::Durable, |conn| {
            insert(conn, "u2")?;
            Err::<(), _>(Error::Closed)
        });
        let panicking = writer.submit(Sync::Durable, |conn| -> Result<(), Error> {
            insert(conn, "u3").unwrap();
            panic!("a write that panics");
        });
        let after = writer.submit(Sync::Durable, |conn| insert(conn, "u4"));
        release.send(()).unwrap();
        before.blocking_recv().unwrap().unwrap();
        assert!(matches!(
            failing.blocking_recv().unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            panicking.blocking_recv().unwrap(),
            Err(StoreError::Internal(_))
        ));
        after.blocking_recv().unwrap().unwrap();
        assert_eq!(committed(&path), ["u0", "u1", "u4"]);
    }

    /// The `synchronous` level a write of `sync` alone runs under (2 FULL, 1 NORMAL).
    fn level(writer: &Writer, sync: Sync) -> i64 {
        writer
            .submit(sync, |conn| {
                Ok(conn.pragma_query_value(None, "synchronous", |row| row.get(0))?)
            })
            .blocking_recv()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn acks_alone_are_committed_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = Writer::start(open_writer(&path, true).unwrap(), true).unwrap();
        assert_eq!(level(&writer, Sync::Durable), 2);
        assert_eq!(level(&writer, Sync::Lazy), 1);
        assert_eq!(level(&writer, Sync::Durable), 2);
        writer.close().unwrap();
        // Without fsync nothing is synced.
        let writer = Writer::start(open_writer(&path, false).unwrap(), false).unwrap();
        assert_eq!(level(&writer, Sync::Durable), 1);
        assert_eq!(level(&writer, Sync::Lazy), 1);
    }

    #[test]
    fn close_finishes_queued_writes_and_refuses_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (writer, release) = held_writer(&path);
        let queued = writer.submit(Sync::Durable, |conn| insert(conn, "u1"));
        release.send(()).unwrap();
        writer.close().unwrap();
        queued.blocking_recv().unwrap().unwrap();
        let late = writer.submit(Sync::Durable, |conn| insert(conn, "u2"));
        assert!(matches!(
            late.blocking_recv().unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(committed(&path), ["u0", "u1"]);
    }
}
