//! What the SQLite store does with its file: data survives a reopen, close flushes the
//! log, what a writer process was answered survives its `kill -9`, and a file it cannot
//! use is an error rather than a panic.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use simplepush_sqlite::{SqliteOptions, SqliteStore};
use simplepush_store::{
    ChannelId, Message, MessageId, Payload, PutOutcome, QueueOutcome, RegisterOutcome, Store,
    StoreError, Uaid, Update, Urgency,
};

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
        store.register(&u, &c, 10, NOW).await.unwrap(),
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
    store.register(&u, &c, 10, NOW).await.unwrap();
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
    store.register(&u, &c, 10, NOW).await.unwrap();
    store
        .put_update(&u, &c, update(1, "one"), NOW)
        .await
        .unwrap();
    // Damage the row behind the store's back, past the CHECK constraints.
    let conn = rusqlite::Connection::open(database(dir.path())).unwrap();
    conn.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    conn.execute("UPDATE pending SET version = -5", []).unwrap();
    drop(conn);
    let error = store.pending(&u, NOW).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_beyond_i64_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (u, c) = (Uaid::new("u-big"), ChannelId::new("c"));
    let store = open(dir.path());
    store.register(&u, &c, 10, NOW).await.unwrap();
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
                store.register(&u, &c, 5, NOW).await.unwrap()
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

/// The kill -9 tests run their own test binary again as the writer process: with this
/// variable set (to the store's directory), the test writes until it is killed instead.
const WRITER_DIR: &str = "SIMPLEPUSH_SQLITE_KILL9_WRITER";

/// Streams the writer process runs at once: this many devices of this many channels,
/// each channel written by a task of its own, so writes share commits.
const KILL9_DEVICES: usize = 4;
const KILL9_CHANNELS: usize = 4;
/// Writes answered before the kill: a few per stream (each batch one fsync).
const ANSWERED_BEFORE_KILL: usize = 96;
/// Upper bound of each stream, far beyond what runs before the kill.
const MAX_SEQUENCE: u64 = 1_000_000;
/// How long the writer process may take to answer the writes the test waits for.
const KILL9_WAIT: Duration = Duration::from_secs(60);

/// What the writer process writes.
#[derive(Debug, Clone, Copy)]
enum Written {
    /// Versions 1, 2, 3, ... with `put_update`.
    Updates,
    /// Messages 1, 2, 3, ... with `put_message`.
    Messages,
}

/// The device and channel of stream `stream`.
fn kill9_stream(stream: usize) -> (Uaid, ChannelId) {
    (
        Uaid::new(format!("kill9-device-{}", stream / KILL9_CHANNELS)),
        ChannelId::new(format!("kill9-channel-{stream}")),
    )
}

/// Message `n` of stream `stream`, as the writer process queues it: ids increase with
/// `n` within a device's stream, and the body names both, so a mixed-up row shows.
fn kill9_message(stream: usize, n: u64) -> Message {
    let (_, channel) = kill9_stream(stream);
    Message {
        id: MessageId::new(format!("{n:010}-{stream:02}")),
        channel,
        ttl: 3600,
        expires_at: NOW + 3600,
        topic: None,
        urgency: Urgency::High,
        payload: Some(Payload {
            encoding: "aes128gcm".to_owned(),
            encryption: None,
            crypto_key: None,
            body: format!("message {n} of stream {stream}").into_bytes(),
        }),
    }
}

/// The writer process: registers every stream's channel, then writes 1, 2, 3, ... to
/// each stream concurrently, printing `sent STREAM N` before each write and
/// `stored STREAM N` once it was answered, until it is killed.
fn write_until_killed(dir: &Path, written: Written) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(open(dir));
        let streams = KILL9_DEVICES * KILL9_CHANNELS;
        for stream in 0..streams {
            let (u, c) = kill9_stream(stream);
            let registered = store.register(&u, &c, streams, NOW).await.unwrap();
            assert_eq!(registered, RegisterOutcome::Registered);
        }
        let tasks: Vec<_> = (0..streams)
            .map(|stream| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (u, c) = kill9_stream(stream);
                    for n in 1..=MAX_SEQUENCE {
                        report("sent", stream, n);
                        let stored = match written {
                            Written::Updates => {
                                let update = Update {
                                    version: n,
                                    data: Some(format!("{n}")),
                                    expires_at: NOW + 3600,
                                };
                                let put = store.put_update(&u, &c, update, NOW).await.unwrap();
                                put == PutOutcome::Stored
                            }
                            Written::Messages => {
                                let message = kill9_message(stream, n);
                                let put = store.put_message(&u, &message, usize::MAX, NOW).await;
                                put.unwrap() == QueueOutcome::Stored
                            }
                        };
                        assert!(stored, "stream {stream}: write {n} not stored");
                        report("stored", stream, n);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    panic!("the writer process wrote everything before it was killed");
}

/// One line of the writer process's report, written at once and flushed.
fn report(what: &str, stream: usize, n: u64) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{what} {stream} {n}\n").as_bytes())
        .and_then(|()| out.flush())
        .unwrap();
}

/// What one stream of the writer process reported: the last write answered, the last
/// one sent (answered or in flight when it was killed).
#[derive(Debug, Default, Clone, Copy)]
struct Reported {
    stored: u64,
    sent: u64,
}

/// Runs the test named `test` of this binary as a writer process on `dir`, kills it with
/// SIGKILL once it reported [`ANSWERED_BEFORE_KILL`] writes answered, and answers what
/// each stream reported until it died.
fn kill_9_mid_stream(test: &str, dir: &Path) -> HashMap<usize, Reported> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(WRITER_DIR, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Lines reach the test through a channel, so waiting for them can time out.
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match stdout.read_line(&mut line) {
                // A line cut short by the kill is not a report.
                Ok(0) | Err(_) => return,
                Ok(_) if !line.ends_with('\n') => return,
                Ok(_) => {
                    if lines.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut reported: HashMap<usize, Reported> = HashMap::new();
    let mut record = |line: &str| -> bool {
        let mut words = line.split_whitespace();
        let (Some(what), Some(stream), Some(n)) = (words.next(), words.next(), words.next()) else {
            return false;
        };
        let (Ok(stream), Ok(n)) = (stream.parse::<usize>(), n.parse::<u64>()) else {
            return false;
        };
        let entry = reported.entry(stream).or_default();
        match what {
            "sent" => entry.sent = entry.sent.max(n),
            "stored" => entry.stored = entry.stored.max(n),
            _ => return false,
        }
        what == "stored"
    };
    let mut answered = 0;
    while answered < ANSWERED_BEFORE_KILL {
        match received.recv_timeout(KILL9_WAIT) {
            Ok(line) => answered += usize::from(record(&line)),
            Err(error) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("the writer process stopped after {answered} answers ({error}): {status:?}");
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no close, no checkpoint.
    child.wait().unwrap();
    reader.join().unwrap();
    // What it reported between the last line read and its death counts too.
    for line in received.try_iter() {
        record(&line);
    }
    let unanswered = reported.values().filter(|r| r.sent > r.stored).count();
    eprintln!("killed after {answered}+ answered writes, {unanswered} streams had one in flight");
    reported
}

/// In the writer process of a kill -9 test (when [`WRITER_DIR`] is set), writes until
/// killed. Otherwise kills a writer process running `test` mid-stream and answers its
/// directory and what each stream reported.
fn kill_9_test(test: &str, written: Written) -> (tempfile::TempDir, HashMap<usize, Reported>) {
    if let Some(dir) = std::env::var_os(WRITER_DIR) {
        write_until_killed(Path::new(&dir), written);
    }
    let dir = tempfile::tempdir().unwrap();
    let reported = kill_9_mid_stream(test, dir.path());
    assert_eq!(
        reported.len(),
        KILL9_DEVICES * KILL9_CHANNELS,
        "{reported:?}"
    );
    (dir, reported)
}

#[test]
fn answered_updates_survive_kill_9() {
    let (dir, reported) = kill_9_test("answered_updates_survive_kill_9", Written::Updates);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = open(dir.path());
    for (stream, reported) in reported {
        let (u, c) = kill9_stream(stream);
        let pending = runtime.block_on(store.pending(&u, NOW)).unwrap();
        let version = pending
            .updates
            .iter()
            .find(|(channel, _)| *channel == c)
            .map(|(_, update)| update.clone());
        if reported.stored == 0 && version.is_none() {
            continue;
        }
        let update = version.unwrap_or_else(|| {
            panic!(
                "stream {stream}: version {} answered, none kept",
                reported.stored
            )
        });
        assert!(
            (reported.stored..=reported.sent).contains(&update.version),
            "stream {stream}: kept {}; answered up to {}, sent up to {}",
            update.version,
            reported.stored,
            reported.sent
        );
        assert_eq!(update.data, Some(update.version.to_string()));
    }
}

#[test]
fn answered_messages_survive_kill_9() {
    let (dir, reported) = kill_9_test("answered_messages_survive_kill_9", Written::Messages);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = open(dir.path());
    for device in 0..KILL9_DEVICES {
        let (u, _) = kill9_stream(device * KILL9_CHANNELS);
        let queued = runtime
            .block_on(store.messages(&u, NOW, usize::MAX))
            .unwrap();
        for stream in device * KILL9_CHANNELS..(device + 1) * KILL9_CHANNELS {
            let reported = reported[&stream];
            let (_, c) = kill9_stream(stream);
            let kept: Vec<&Message> = queued.iter().filter(|m| m.channel == c).collect();
            // A stream writes one message after the other, so what survives is a prefix
            // 1..=kept of it: every one answered, perhaps the one in flight.
            let expected: Vec<Message> = (1..=kept.len() as u64)
                .map(|n| kill9_message(stream, n))
                .collect();
            assert!(
                kept.iter().copied().eq(expected.iter()),
                "stream {stream}: kept {kept:?}"
            );
            assert!(
                (reported.stored..=reported.sent).contains(&(kept.len() as u64)),
                "stream {stream}: kept {}; answered up to {}, sent up to {}",
                kept.len(),
                reported.stored,
                reported.sent
            );
        }
        let own: Vec<ChannelId> = (device * KILL9_CHANNELS..(device + 1) * KILL9_CHANNELS)
            .map(|stream| kill9_stream(stream).1)
            .collect();
        assert!(
            queued.iter().all(|m| own.contains(&m.channel)),
            "another device's message in {queued:?}"
        );
        assert!(
            queued.windows(2).all(|pair| pair[0].id < pair[1].id),
            "messages out of id order"
        );
    }
}
