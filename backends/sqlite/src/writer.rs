//! The SQLite side of the writer thread ([`simplepush_store::writer`]): a batch is one
//! transaction, each write of a batch of several in a savepoint of its own so that a
//! failing one is undone alone. Synced batches commit under `synchronous=FULL` (with
//! `fsync` on), batches of acks alone under `NORMAL`.

use rusqlite::Connection;
use simplepush_store::StoreError;
use simplepush_store::writer::{Commit, Job};

use crate::error::Error;

/// The writer thread of a SQLite store.
pub(crate) type Writer = simplepush_store::writer::Writer<SqliteCommit>;

pub(crate) use simplepush_store::writer::Sync;

/// Starts the writer thread owning `conn`, opened with `synchronous=FULL` when `fsync`.
pub(crate) fn start(conn: Connection, fsync: bool) -> Result<Writer, StoreError> {
    let committer = SqliteCommit {
        conn,
        fsync,
        syncing: fsync,
    };
    Writer::start("sqlite-writer", committer)
}

/// The writer's connection and its `synchronous` level.
pub(crate) struct SqliteCommit {
    conn: Connection,
    fsync: bool,
    /// Whether `synchronous` is FULL now.
    syncing: bool,
}

impl Commit for SqliteCommit {
    type Target = Connection;

    fn commit(
        &mut self,
        batch: &mut [Box<dyn Job<Connection>>],
        sync: bool,
    ) -> Result<(), StoreError> {
        let sync = self.fsync && sync;
        if self.syncing != sync {
            let level = if sync { "FULL" } else { "NORMAL" };
            self.conn
                .pragma_update(None, "synchronous", level)
                .map_err(Error::from)?;
            self.syncing = sync;
        }
        Ok(commit(&mut self.conn, batch)?)
    }

    fn close(self) -> Result<(), StoreError> {
        // TRUNCATE also empties the -wal file. Reads still in flight may keep it from
        // completing ("busy" in the first column), which is not an error: the log is
        // durable either way and the next open replays it.
        let conn = self.conn;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(Error::from)?;
        conn.close()
            .map_err(|(_, error)| StoreError::from(Error::Sqlite(error)))
    }
}

/// Runs `batch` in one transaction.
fn commit(conn: &mut Connection, batch: &mut [Box<dyn Job<Connection>>]) -> Result<(), Error> {
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
fn run_all(conn: &Connection, batch: &mut [Box<dyn Job<Connection>>]) -> Result<bool, Error> {
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

/// The `synchronous` level a write of `sync` alone runs under (2 FULL, 1 NORMAL).
#[cfg(test)]
pub(crate) fn level(writer: &Writer, sync: Sync) -> i64 {
    writer
        .submit(sync, |conn| {
            conn.pragma_query_value(None, "synchronous", |row| row.get(0))
                .map_err(|e| Error::from(e).into())
        })
        .blocking_recv()
        .unwrap()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc::{Sender, channel};

    use super::*;
    use crate::connection::{open_reader, open_writer};

    fn insert(conn: &Connection, uaid: &str) -> Result<(), StoreError> {
        conn.execute("INSERT INTO node (uaid, node) VALUES (?1, 'n')", [uaid])
            .map_err(Error::from)?;
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
        let writer = start(open_writer(path, true).unwrap(), true).unwrap();
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
            Err::<(), _>(StoreError::from(Error::Closed))
        });
        let panicking = writer.submit(Sync::Durable, |conn| -> Result<(), StoreError> {
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

    #[test]
    fn acks_alone_are_committed_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = start(open_writer(&path, true).unwrap(), true).unwrap();
        assert_eq!(level(&writer, Sync::Durable), 2);
        assert_eq!(level(&writer, Sync::Lazy), 1);
        assert_eq!(level(&writer, Sync::Durable), 2);
        writer.close().unwrap();
        // Without fsync nothing is synced.
        let writer = start(open_writer(&path, false).unwrap(), false).unwrap();
        assert_eq!(level(&writer, Sync::Durable), 1);
        assert_eq!(level(&writer, Sync::Lazy), 1);
    }
}
