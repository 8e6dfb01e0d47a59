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
    // The first statement reads the file header: a garbage file fails here.
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
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a read-only connection to the database the writer created.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}
