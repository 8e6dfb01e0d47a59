//! Opening the connections of the store: one writer that owns the schema and the
//! journal mode, and read-only readers.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::Error;
use crate::schema;

/// How long a statement waits for a lock held elsewhere before answering "busy". Within
/// one process the writer is serialised by a mutex, so this only covers checkpoints and
/// another process touching the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A checkpointed WAL file is truncated back to this size, so one burst of writes does
/// not leave a large file behind forever.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Opens (creating if missing) the database at `path` for writing: WAL mode, the
/// requested durability, and the schema brought up to date.
pub(crate) fn open_writer(path: &Path, fsync: bool) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The first statement reads the file header: a garbage file fails here. It must
    // come before WAL mode, which writes the header of a new file: after that, a file
    // keeps the auto_vacuum mode it was created with (until a VACUUM, see below).
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NoWal(mode));
    }
    // In WAL mode FULL syncs the log on every commit (survives power loss); NORMAL syncs
    // only at checkpoints (survives a crash of the process, not of the machine).
    let synchronous = if fsync { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    // The checkpointer thread copies the log into the file; the writer does it itself
    // only when that thread falls far behind.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
    schema::migrate(&mut conn)?;
    convert_to_incremental_vacuum(&conn, CONVERT_LIMIT)?;
    Ok(conn)
}

/// The largest database (in bytes) that [`open_writer`] converts to incremental vacuum
/// by itself.
/// `VACUUM` rewrites the whole file (through the log, and needs as much free disk):
/// well under a second up to this size, too long a pause at startup beyond it.
const CONVERT_LIMIT: i64 = 64 * 1024 * 1024;

/// Rewrites a database created by an earlier build, without auto_vacuum, so that the
/// sweep's `incremental_vacuum` can give the pages it frees back to the file system. Only
/// a file of up to `limit` bytes: a larger one keeps working, it reuses its free pages
/// but never shrinks, until an operator runs `VACUUM` on it once (see
/// docs/operations.md). The pending mode set before WAL is what `VACUUM` applies.
fn convert_to_incremental_vacuum(conn: &Connection, limit: i64) -> Result<(), Error> {
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0))?;
    if mode != NO_AUTO_VACUUM {
        return Ok(());
    }
    let pages: i64 = conn.pragma_query_value(None, "page_count", |row| row.get(0))?;
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
    if pages.saturating_mul(page_size) <= limit {
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// `PRAGMA auto_vacuum` of a file created without it.
const NO_AUTO_VACUUM: i64 = 0;

/// The log size (in pages) at which the writer checkpoints by itself: ten times
/// SQLite's default, a backstop only ([`open_checkpointer`]).
const WRITER_CHECKPOINT_PAGES: i64 = 10_000;

/// Opens the connection of the checkpointer thread, which copies the log into the
/// database file off the writer's path: with the writer doing it (SQLite's default,
/// every 1,000 pages), the puts of every batch that crosses the mark wait for the
/// copy, and with a big database each put dirties a page of its own, so the marks come
/// often and the copies are long.
pub(crate) fn open_checkpointer(path: &Path) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// Opens a read-only connection to the database the writer created.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto_vacuum(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0))
            .unwrap()
    }

    /// A database file as earlier builds created it: WAL first, so no auto_vacuum,
    /// with a table of some rows.
    fn old_database(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
             INSERT INTO t SELECT randomblob(1000) FROM n;",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_new_database_uses_incremental_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("db"), false).unwrap();
        // 2 = INCREMENTAL.
        assert_eq!(auto_vacuum(&conn), 2);
    }

    #[test]
    fn an_old_database_is_converted_only_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = old_database(&path);
        assert_eq!(auto_vacuum(&conn), 0);
        let size: i64 = conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                [],
                |row| row.get(0),
            )
            .unwrap();
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .unwrap();

        // Too large: left as it is, and still works.
        convert_to_incremental_vacuum(&conn, size - 1).unwrap();
        assert_eq!(auto_vacuum(&conn), 0);
        // Small enough: rewritten with incremental vacuum, its rows kept.
        convert_to_incremental_vacuum(&conn, size).unwrap();
        assert_eq!(auto_vacuum(&conn), 2);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 100);
    }

    #[test]
    fn opening_a_small_old_database_converts_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(old_database(&path));
        let conn = open_writer(&path, false).unwrap();
        assert_eq!(auto_vacuum(&conn), 2);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 100, "its rows kept");
    }
}
