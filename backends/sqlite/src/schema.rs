//! The database schema and its migrations, versioned by `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::Error;

/// Migration `i` takes a database from schema version `i` to `i + 1`; version 0 is an
/// empty file. Append new migrations; never edit a released one.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

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

/// The WebPush message queue.
///
/// One row per queued message, keyed by (uaid, id): message ids increase in arrival
/// order, so a device's queue is one range of the primary key, read in order. A rowid
/// table, unlike the others, because a row carries up to a few KiB of body, and
/// WITHOUT ROWID tables want small rows. `message_channel` serves what a put and an
/// unregister ask of one channel: its messages, its expired ones, the one of a topic.
/// `IF NOT EXISTS` besides `user_version`, so a half-known file cannot stop an upgrade.
const V2: &str = "
CREATE TABLE IF NOT EXISTS message (
    uaid       TEXT NOT NULL,
    id         TEXT NOT NULL,
    channel    TEXT NOT NULL,
    ttl        INTEGER NOT NULL CHECK (ttl >= 0),
    expires_at INTEGER NOT NULL CHECK (expires_at >= 0),
    topic      TEXT,
    urgency    TEXT NOT NULL CHECK (urgency IN ('very-low', 'low', 'normal', 'high')),
    encoding   TEXT,
    encryption TEXT,
    crypto_key TEXT,
    body       BLOB,
    PRIMARY KEY (uaid, id),
    CHECK ((encoding IS NULL) = (body IS NULL)),
    CHECK (encoding IS NOT NULL OR (encryption IS NULL AND crypto_key IS NULL))
) STRICT;

CREATE INDEX IF NOT EXISTS message_channel ON message (uaid, channel, topic);
";

/// Retention: when each device was last seen, and what finds the expired messages.
///
/// `device` has a row for every uaid the store holds anything of, its last hello or
/// register in `seen` (UNIX seconds); `device_seen` finds the devices not seen since a
/// cutoff without reading the others, and `message_expiry` the messages expired at a
/// time. The devices already stored count as seen now, at the migration: each gets a
/// full device TTL from the upgrade on.
const V3: &str = "
CREATE TABLE device (
    uaid TEXT NOT NULL PRIMARY KEY,
    seen INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX device_seen ON device (seen);

CREATE INDEX message_expiry ON message (expires_at);

INSERT INTO device (uaid, seen)
    SELECT uaid, unixepoch() FROM (
        SELECT uaid FROM channel UNION SELECT uaid FROM message UNION SELECT uaid FROM node
    );
";

/// Pending updates in a table of their own, keyed by a number each channel gets.
///
/// A put to a channel with nothing pending used to rewrite the channel's row, which
/// lies among those of every device the store holds: with a million devices, each put
/// dirtied a page of its own, for the log and the checkpoints to copy. `pending` holds
/// only what is pending now, so the puts and acks of a time share a few pages. Its key
/// is the channel's `id`, an integer that `channel_seq` hands out, so a pending update
/// costs a few bytes more than in the channel's row, not its uaid and channel id again.
/// The migration numbers the stored channels in key order and moves their updates.
const V4: &str = "
CREATE TABLE channel_v4 (
    uaid    TEXT NOT NULL,
    channel TEXT NOT NULL,
    id      INTEGER NOT NULL,
    PRIMARY KEY (uaid, channel)
) STRICT, WITHOUT ROWID;

INSERT INTO channel_v4 (uaid, channel, id)
    SELECT uaid, channel, row_number() OVER (ORDER BY uaid, channel) FROM channel;

CREATE TABLE pending (
    id         INTEGER PRIMARY KEY,
    version    INTEGER NOT NULL CHECK (version >= 0),
    data       TEXT,
    expires_at INTEGER NOT NULL
) STRICT;

INSERT INTO pending (id, version, data, expires_at)
    SELECT n.id, c.version, c.data, c.expires_at
    FROM channel c JOIN channel_v4 n USING (uaid, channel)
    WHERE c.version IS NOT NULL;

CREATE TABLE channel_seq (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    next INTEGER NOT NULL
) STRICT;

INSERT INTO channel_seq (id, next) SELECT 1, count(*) + 1 FROM channel_v4;

DROP TABLE channel;
ALTER TABLE channel_v4 RENAME TO channel;
";

/// The schema version this build writes.
pub(crate) const CURRENT: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`CURRENT`] in one transaction, so a failed migration leaves
/// the file as it was. Refuses a database from a newer build.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Brings the database to schema version `target` (at most [`CURRENT`]); tests make
/// the databases of earlier builds with it.
pub(crate) fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), Error> {
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
    if start >= target {
        return Ok(());
    }
    for migration in &MIGRATIONS[start..target] {
        tx.execute_batch(migration)?;
    }
    // A migration that rebuilds a table leaves the old one's pages free: give them back
    // to the file system (a no-op in a file without incremental vacuum). The pragma
    // frees the next page only when asked for the next row.
    {
        let mut vacuum = tx.prepare("PRAGMA incremental_vacuum")?;
        let mut freed = vacuum.query([])?;
        while freed.next()?.is_some() {}
    }
    tx.pragma_update(None, "user_version", target as i64)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the tables and indexes in the database.
    fn objects(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        let names = stmt.query_map([], |row| row.get(0)).unwrap();
        names.collect::<Result<_, _>>().unwrap()
    }

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    /// The pending update (version, data) of the channel whose device has a node record,
    /// with that record.
    fn pending_with_node(conn: &Connection) -> (i64, String, String) {
        conn.query_row(
            "SELECT version, data, node FROM channel JOIN node USING (uaid)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap()
    }

    #[test]
    fn a_version_1_database_gains_the_message_queue_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 1).unwrap();
        assert_eq!(version(&conn), 1);
        assert_eq!(objects(&conn), ["channel", "health", "node"]);
        conn.execute_batch(
            "INSERT INTO channel (uaid, channel, version, data, expires_at)
                 VALUES ('u', 'c', 7, 'seven', 100);
             INSERT INTO node (uaid, node) VALUES ('u', 'http://node-a');",
        )
        .unwrap();

        migrate_to(&mut conn, 2).unwrap();
        assert_eq!(version(&conn), 2);
        assert_eq!(
            objects(&conn),
            ["channel", "health", "message", "message_channel", "node"]
        );
        assert_eq!(
            pending_with_node(&conn),
            (7, "seven".to_owned(), "http://node-a".to_owned())
        );
    }

    /// When the rows of `device` say each uaid was last seen.
    fn seen(conn: &Connection) -> Vec<(String, i64)> {
        let mut stmt = conn
            .prepare("SELECT uaid, seen FROM device ORDER BY uaid")
            .unwrap();
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// The tables and indexes of schema 3, by name.
    const SCHEMA_3_OBJECTS: [&str; 8] = [
        "channel",
        "device",
        "device_seen",
        "health",
        "message",
        "message_channel",
        "message_expiry",
        "node",
    ];

    /// An in-memory database of schema `version` holding the rows `sql` inserts.
    fn database_at(version: usize, sql: &str) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, version).unwrap();
        conn.execute_batch(sql).unwrap();
        conn
    }

    #[test]
    fn a_version_2_database_gains_a_last_seen_time_for_every_device_and_keeps_its_rows() {
        // A device with channels, a message and a node record; one with a node record
        // alone; one with two channels.
        let mut conn = database_at(
            2,
            "INSERT INTO channel (uaid, channel, version, data, expires_at)
                 VALUES ('u1', 'c1', 7, 'seven', 100), ('u3', 'c1', NULL, NULL, NULL),
                        ('u3', 'c2', NULL, NULL, NULL);
             INSERT INTO message (uaid, id, channel, ttl, expires_at, urgency)
                 VALUES ('u1', 'm1', 'c1', 60, 200, 'normal');
             INSERT INTO node (uaid, node) VALUES ('u1', 'http://node-a'),
                                                  ('u2', 'http://node-b');",
        );

        let before = simplepush_store::unix_now() as i64;
        migrate_to(&mut conn, 3).unwrap();
        let after = simplepush_store::unix_now() as i64;
        assert_eq!(version(&conn), 3);
        assert_eq!(objects(&conn), SCHEMA_3_OBJECTS);
        // Every device, once, seen at the migration: a full device TTL from the upgrade.
        let stamps = seen(&conn);
        let uaids: Vec<&str> = stamps.iter().map(|(uaid, _)| uaid.as_str()).collect();
        assert_eq!(uaids, ["u1", "u2", "u3"]);
        for (uaid, at) in &stamps {
            assert!((before..=after).contains(at), "{uaid} seen at {at}");
        }
        let rows: (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM channel), (SELECT count(*) FROM message),
                        (SELECT count(*) FROM node)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!(rows, (3, 1, 2), "every row kept");
        assert_eq!(
            pending_with_node(&conn),
            (7, "seven".to_owned(), "http://node-a".to_owned())
        );
        // Migrating it to the same version again changes nothing.
        migrate_to(&mut conn, 3).unwrap();
        assert_eq!(version(&conn), 3);
        assert_eq!(seen(&conn), stamps);
    }

    #[test]
    fn a_version_3_database_moves_its_pending_updates_to_numbered_channels() {
        // Two devices: one with an update pending on one of its two channels, one with
        // a channel and nothing pending.
        let mut conn = database_at(
            3,
            "INSERT INTO channel (uaid, channel, version, data, expires_at)
                 VALUES ('u2', 'c1', NULL, NULL, NULL), ('u1', 'c2', 7, 'seven', 100),
                        ('u1', 'c1', NULL, NULL, NULL);
             INSERT INTO node (uaid, node) VALUES ('u1', 'http://node-a');
             INSERT INTO device (uaid, seen) VALUES ('u1', 10), ('u2', 20);",
        );

        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn), CURRENT);
        let mut added = SCHEMA_3_OBJECTS.to_vec();
        added.extend(["channel_seq", "pending"]);
        added.sort_unstable();
        assert_eq!(objects(&conn), added);
        // The channels, numbered in key order; the next number follows the last.
        let mut stmt = conn
            .prepare("SELECT uaid, channel, id FROM channel ORDER BY id")
            .unwrap();
        let numbered: Vec<(String, String, i64)> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        drop(stmt);
        let owned = |u: &str, c: &str, id| (u.to_owned(), c.to_owned(), id);
        assert_eq!(
            numbered,
            [
                owned("u1", "c1", 1),
                owned("u1", "c2", 2),
                owned("u2", "c1", 3)
            ]
        );
        let next: i64 = conn
            .query_row("SELECT next FROM channel_seq", [], |row| row.get(0))
            .unwrap();
        assert_eq!(next, 4);
        // The one pending update, under its channel's number, with every field.
        let pending: (String, i64, String, i64, String) = conn
            .query_row(
                "SELECT channel, version, data, expires_at, node
                 FROM channel JOIN pending USING (id) JOIN node USING (uaid)",
                [],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!(
            pending,
            (
                "c2".to_owned(),
                7,
                "seven".to_owned(),
                100,
                "http://node-a".to_owned()
            )
        );
        let count: i64 = conn
            .query_row("SELECT count(*) FROM pending", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 1);
        // Migrating a current database again changes nothing.
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn), CURRENT);
        assert_eq!(seen(&conn), [("u1".to_owned(), 10), ("u2".to_owned(), 20)]);
    }

    #[test]
    fn the_pages_a_migration_frees_go_back_to_the_file_system() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .unwrap();
        migrate_to(&mut conn, 3).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO channel (uaid, channel)
                 SELECT printf('%032d', i), '5a0fc5d5-3f0a-4f4c-9c5b-2e3c1a2b3c4d' FROM n;",
        )
        .unwrap();
        let pages = |conn: &Connection, pragma: &str| -> i64 {
            conn.pragma_query_value(None, pragma, |row| row.get(0))
                .unwrap()
        };
        let before = pages(&conn, "page_count");
        assert!(before > 50, "{before} pages");

        // The rebuilt channel table takes about as many pages as the old one, which
        // are not kept as free pages.
        migrate(&mut conn).unwrap();
        assert_eq!(pages(&conn, "freelist_count"), 0);
        let after = pages(&conn, "page_count");
        assert!(
            after < before * 3 / 2,
            "{before} pages before, {after} after"
        );
    }

    #[test]
    fn a_failed_migration_leaves_the_database_as_it_was() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 1).unwrap();
        // A table of the name the next migration means for an index makes it fail.
        conn.execute_batch("CREATE TABLE message_channel (x INTEGER)")
            .unwrap();
        assert!(migrate(&mut conn).is_err());
        assert_eq!(version(&conn), 1);
        assert!(!objects(&conn).contains(&"message".to_owned()));
    }
}
