//! What the SQLite store does with its file: data survives a reopen, close flushes the
//! log, and a file it cannot use is an error rather than a panic.

use std::path::Path;

use simplepush_sqlite::{SqliteOptions, SqliteStore};
use simplepush_store::{ChannelId, PutOutcome, RegisterOutcome, Store, StoreError, Uaid, Update};

const NOW: u64 = 1_000_000;

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, SqliteOptions::default()).unwrap()
}

fn update(version: u64, data: &str) -> Update {
    Update {
        version,
        data: Some(data.to_owned()),
        expires_at: NOW + 3600,
    }
}

fn database(dir: &Path) -> std::path::PathBuf {
    dir.join("simplepush.sqlite3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let (u, c) = (
        Uaid::new("0123456789abcdef0123456789abcdef"),
        ChannelId::new("chan-1"),
    );
    let store = open(dir.path());
    assert_eq!(
        store.register(&u, &c, 10).await.unwrap(),
        RegisterOutcome::Registered
    );
    let put = store
        .put_update(&u, &c, update(7, "seven"), NOW)
        .await
        .unwrap();
    assert_eq!(put, PutOutcome::Stored);
    store.set_node(&u, "http://node-a").await.unwrap();
    drop(store);

    let store = open(dir.path());
    assert!(store.knows_uaid(&u).await.unwrap());
    let pending = store.pending(&u, NOW).await.unwrap();
    assert_eq!(pending.updates, vec![(c.clone(), update(7, "seven"))]);
    assert_eq!(
        store.node(&u).await.unwrap().as_deref(),
        Some("http://node-a")
    );
    // The channel is still registered: a greater version replaces the old one.
    let put = store
        .put_update(&u, &c, update(8, "eight"), NOW)
        .await
        .unwrap();
    assert_eq!(put, PutOutcome::Stored);
    let pending = store.pending(&u, NOW).await.unwrap();
    assert_eq!(pending.updates, vec![(c, update(8, "eight"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_the_log_and_refuses_later_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (u, c) = (Uaid::new("u-close"), ChannelId::new("c"));
    let store = open(dir.path());
    store.register(&u, &c, 10).await.unwrap();
    store
        .put_update(&u, &c, update(3, "three"), NOW)
        .await
        .unwrap();
    store.check().await.unwrap();
    store.close().await.unwrap();

    let wal = dir.path().join("simplepush.sqlite3-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the log is checkpointed into the database");
    assert!(matches!(
        store.knows_uaid(&u).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.put_update(&u, &c, update(4, "four"), NOW).await,
        Err(StoreError::Unavailable(_))
    ));
    store.close().await.unwrap();

    let reopened = open(dir.path());
    let pending = reopened.pending(&u, NOW).await.unwrap();
    assert_eq!(pending.updates, vec![(c, update(3, "three"))]);
}

#[test]
fn garbage_database_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(database(dir.path()), garbage).unwrap();
    let error = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
}

#[test]
fn unopenable_database_path_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file belongs cannot be opened as one.
    std::fs::create_dir(database(dir.path())).unwrap();
    let error = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
}

#[test]
fn directory_under_a_file_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let error = SqliteStore::open(&file.join("store"), SqliteOptions::default()).unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    open(&nested);
    assert!(database(&nested).is_file());
}

#[test]
fn database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let conn = rusqlite::Connection::open(database(dir.path())).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let error = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    assert!(error.to_string().contains("999"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_row_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (u, c) = (Uaid::new("u-damaged"), ChannelId::new("c"));
    let store = open(dir.path());
    store.register(&u, &c, 10).await.unwrap();
    store
        .put_update(&u, &c, update(1, "one"), NOW)
        .await
        .unwrap();
    // Damage the row behind the store's back, past the CHECK constraints.
    let conn = rusqlite::Connection::open(database(dir.path())).unwrap();
    conn.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    conn.execute(
        "UPDATE channel SET version = -5 WHERE uaid = 'u-damaged'",
        [],
    )
    .unwrap();
    drop(conn);
    let error = store.pending(&u, NOW).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_beyond_i64_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (u, c) = (Uaid::new("u-big"), ChannelId::new("c"));
    let store = open(dir.path());
    store.register(&u, &c, 10).await.unwrap();
    store
        .put_update(&u, &c, update(5, "five"), NOW)
        .await
        .unwrap();
    let error = store
        .put_update(&u, &c, update(u64::MAX, "max"), NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Internal(_)), "{error}");
    let pending = store.pending(&u, NOW).await.unwrap();
    assert_eq!(pending.updates, vec![(c.clone(), update(5, "five"))]);
    // An ack of any version beyond what can be stored drops what is pending.
    store.ack(&u, &c, u64::MAX).await.unwrap();
    assert!(store.pending(&u, NOW).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registers_respect_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()));
    let u = Uaid::new("u-limit");
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (store, u) = (store.clone(), u.clone());
            tokio::spawn(async move {
                let c = ChannelId::new(format!("c{i}"));
                store.register(&u, &c, 5).await.unwrap()
            })
        })
        .collect();
    let mut registered = 0;
    for task in tasks {
        if task.await.unwrap() == RegisterOutcome::Registered {
            registered += 1;
        }
    }
    assert_eq!(registered, 5);
}
