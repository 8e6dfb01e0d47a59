//! The database schema and its migrations, versioned by `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::Error;

/// Migration `i` takes a database from schema version `i` to `i + 1`; version 0 is an
/// empty file. Append new migrations; never edit a released one.
const MIGRATIONS: &[&str] = &[V1];

/// The first schema.
///
/// A channel's pending update lives in the channel's own row (NULL when nothing is
/// pending), so that a put is one UPDATE that also tells whether the channel exists, and
/// an unregister drops both at once. STRICT keeps a value of the wrong type out.
const V1: &str = "
CREATE TABLE channel (
    uaid       TEXT NOT NULL,
    channel    TEXT NOT NULL,
    version    INTEGER CHECK (version >= 0),
    data       TEXT,
    expires_at INTEGER,
    PRIMARY KEY (uaid, channel),
    CHECK ((version IS NULL) = (expires_at IS NULL))
) STRICT, WITHOUT ROWID;

CREATE TABLE node (
    uaid TEXT NOT NULL PRIMARY KEY,
    node TEXT NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE health (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    beat INTEGER NOT NULL
) STRICT;
";

/// The schema version this build writes.
pub(crate) const CURRENT: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`CURRENT`] in one transaction, so a failed migration leaves
/// the file as it was. Refuses a database from a newer build.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let start = match usize::try_from(found) {
        Ok(start) if start <= MIGRATIONS.len() => start,
        _ => {
            return Err(Error::SchemaTooNew {
                found,
                supported: CURRENT,
            });
        }
    };
    if start == MIGRATIONS.len() {
        return Ok(());
    }
    for migration in &MIGRATIONS[start..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", CURRENT)?;
    tx.commit()?;
    Ok(())
}
