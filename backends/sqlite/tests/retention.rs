//! What retention does to the SQLite store's file: a sweep of many devices gives the
//! space back to the file system, a reopened store keeps what the sweep spared, a touch
//! racing the sweep is never undone by it, a node record alone does not linger, and
//! what a device costs on disk, its last-seen time included.

use std::path::Path;
use std::sync::Arc;

use simplepush_sqlite::{SqliteOptions, SqliteStore};
use simplepush_store::{ChannelId, PutOutcome, RegisterOutcome, Store, Swept, Uaid, Update};

/// The clock of these tests, in UNIX seconds.
const NOW: u64 = 1_000_000;

/// The device TTL of these tests.
const TTL: u64 = 1_000;

fn uaid() -> Uaid {
    Uaid::new(uuid::Uuid::new_v4().simple().to_string())
}

fn channel() -> ChannelId {
    ChannelId::new(uuid::Uuid::new_v4().hyphenated().to_string())
}

/// A store that does not sync: these tests are about what is in the file, not about
/// surviving a power loss, and syncing thousands of registers would only be slow.
fn open(dir: &Path) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(dir, SqliteOptions { fsync: false }).unwrap())
}

/// The bytes the database takes: its file and its log.
fn on_disk(dir: &Path) -> u64 {
    ["simplepush.sqlite3", "simplepush.sqlite3-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|meta| meta.len())
        .sum()
}

/// `count` devices with `channels` channels each, registered at `now` by concurrent
/// tasks (so the writer commits them in batches).
async fn devices(
    store: &Arc<SqliteStore>,
    count: usize,
    channels: usize,
    now: u64,
) -> Vec<(Uaid, Vec<ChannelId>)> {
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let mut made = Vec::new();
                for _ in (task..count).step_by(16) {
                    let u = uaid();
                    let mut ids = Vec::new();
                    for _ in 0..channels {
                        let c = channel();
                        let outcome = store.register(&u, &c, 10, now).await.unwrap();
                        assert_eq!(outcome, RegisterOutcome::Registered);
                        ids.push(c);
                    }
                    made.push((u, ids));
                }
                made
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Sweeps in steps of `limit` until a step says there is no more; answers the total.
async fn sweep_all(store: &SqliteStore, cutoff: u64, now: u64, limit: usize) -> Swept {
    let mut total = Swept::default();
    for _ in 0..100_000 {
        let step = store.sweep(cutoff, now, limit).await.unwrap();
        assert!(step.devices <= limit as u64 && step.messages <= limit as u64);
        total.devices += step.devices;
        total.messages += step.messages;
        if !step.more {
            return total;
        }
    }
    panic!("the sweep never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_thousands_of_devices_shrinks_the_file_and_a_reopen_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let old = devices(&store, 3_000, 2, NOW).await;
    let fresh = devices(&store, 300, 2, NOW + TTL).await;
    // Closing checkpoints the log into the file and empties it.
    store.close().await.unwrap();
    drop(store);
    let full = on_disk(dir.path());

    let store = open(dir.path());
    let swept = sweep_all(&store, NOW + TTL, NOW + TTL, 500).await;
    assert_eq!(swept.devices, 3_000);
    // Each step gives back a bounded number of pages: a few more steps give back what
    // the last ones freed.
    for _ in 0..(full / 4096 / 256 + 1) {
        let step = store.sweep(NOW + TTL, NOW + TTL, 500).await.unwrap();
        assert_eq!(step, Swept::default(), "nothing left to remove");
    }
    store.close().await.unwrap();
    drop(store);
    let swept_size = on_disk(dir.path());
    // A tenth of the devices are left: the file must be far smaller than it was, not
    // only hold free pages.
    assert!(
        swept_size * 3 < full,
        "{full} bytes before the sweep, {swept_size} after"
    );

    let store = open(dir.path());
    for (u, channels) in &old[..100] {
        assert!(!store.knows_uaid(u).await.unwrap());
        assert!(!store.registered(u, &channels[0]).await.unwrap());
    }
    for (u, channels) in &fresh {
        for c in channels {
            assert!(store.registered(u, c).await.unwrap(), "a fresh device kept");
        }
    }
    // What is left is still seen when it was: it goes a TTL after that, not before.
    let early = store.sweep(NOW + TTL, NOW + TTL, 1_000).await.unwrap();
    assert_eq!(early.devices, 0);
    let late = sweep_all(&store, NOW + TTL + 1, NOW + TTL, 1_000).await;
    assert_eq!(late.devices, 300);
}

/// A touch that was answered before a sweep step removed the device would mean a
/// device forgotten right after its hello. Hellos chase a sweep that goes in small
/// steps: each touches the next device the sweep has not removed yet, the one its next
/// step is about to take. Every device the store still held just after its touch is
/// still there at the end, each device is kept or forgotten whole, and what the sweep
/// counted is what went.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_racing_touches_never_removes_a_touched_device() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let all = devices(&store, 1_000, 1, NOW).await;
    // Device i last seen at NOW + i: the sweep takes them in that order.
    for (i, (u, channels)) in all.iter().enumerate() {
        let update = Update {
            version: 1,
            data: None,
            expires_at: NOW + 10 * TTL,
        };
        let put = store
            .put_update(u, &channels[0], update, NOW)
            .await
            .unwrap();
        assert_eq!(put, PutOutcome::Stored);
        store.set_node(u, "http://node-a").await.unwrap();
        store.touch(u, NOW + i as u64).await.unwrap();
    }
    let now = NOW + TTL + all.len() as u64;
    let cutoff = now - TTL;

    let sweeper = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { sweep_all(&store, cutoff, now, 7).await })
    };
    let chaser = {
        let store = Arc::clone(&store);
        let uaids: Vec<Uaid> = all.iter().map(|(u, _)| u.clone()).collect();
        tokio::spawn(async move {
            let mut held_after_touch = Vec::new();
            for u in uaids {
                if !store.knows_uaid(&u).await.unwrap() {
                    continue;
                }
                store.touch(&u, now).await.unwrap();
                if store.knows_uaid(&u).await.unwrap() {
                    held_after_touch.push(u);
                }
            }
            held_after_touch
        })
    };
    let swept = sweeper.await.unwrap();
    let held_after_touch = chaser.await.unwrap();

    let mut kept = Vec::new();
    for (u, channels) in &all {
        let known = store.knows_uaid(u).await.unwrap();
        // Whole or not at all.
        assert_eq!(store.registered(u, &channels[0]).await.unwrap(), known);
        assert_eq!(store.node(u).await.unwrap().is_some(), known, "node record");
        assert_eq!(
            !store.pending(u, now).await.unwrap().is_empty(),
            known,
            "pending update"
        );
        if known {
            kept.push(u.clone());
        }
    }
    assert_eq!(kept.len() as u64 + swept.devices, all.len() as u64);
    // Kept: exactly the devices held after their touch. A device gone by then was
    // removed before its touch, which then created nothing.
    assert_eq!(kept, held_after_touch, "a touched device was removed");
    // What is left was all touched (at `now`): another sweep finds nothing.
    let again = store.sweep(cutoff, now, 1_000).await.unwrap();
    assert_eq!(again, Swept::default());
}

/// The size the store aims at: a device with two channels (32-hex uaid, UUID channel
/// ids) and nothing pending takes at most 300 bytes on disk, all it costs included: its
/// channel rows, its last-seen row and that row's entry in the index the sweep uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_two_channels_takes_at_most_300_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let count = 10_000;
    devices(&store, count, 2, NOW).await;
    store.close().await.unwrap();
    drop(store);
    let per_device = on_disk(dir.path()) / count as u64;
    assert!(per_device <= 300, "{per_device} bytes per device");
}

/// A hello that never registered leaves a node record and no last-seen time: the next
/// sweep forgets it rather than keeping it forever. A registered device's node record
/// lives as long as the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_record_alone_is_forgotten_by_the_next_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (lone, registered) = (uaid(), uaid());
    store.set_node(&lone, "http://node-a").await.unwrap();
    let c = channel();
    store.register(&registered, &c, 10, NOW).await.unwrap();
    store.set_node(&registered, "http://node-a").await.unwrap();

    let swept = store.sweep(NOW - TTL, NOW, 100).await.unwrap();
    assert_eq!(swept.devices, 1);
    assert_eq!(store.node(&lone).await.unwrap(), None);
    assert_eq!(
        store.node(&registered).await.unwrap().as_deref(),
        Some("http://node-a")
    );
    assert!(store.registered(&registered, &c).await.unwrap());
}

/// The log is copied into the database file by the checkpointer thread, not by the
/// writer's own (rare, backstop) checkpoints: a few thousand pages written reach the
/// file within a moment, long before the writer's mark of 10,000 pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_moves_the_log_into_the_file_off_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let file = dir.path().join("simplepush.sqlite3");
    let before = std::fs::metadata(&file).unwrap().len();
    devices(&store, 1000, 2, NOW).await;
    let wal = std::fs::metadata(dir.path().join("simplepush.sqlite3-wal"))
        .unwrap()
        .len();
    // The log is a 32-byte header, then frames of a 24-byte header and a page.
    let frames = (wal - 32) / (24 + 4096);
    assert!(
        frames < 10_000,
        "the log stays below the writer's mark: {frames} frames"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = std::fs::metadata(&file).unwrap().len();
        if now > before + 150_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file stayed at {now} bytes (from {before}): nothing was checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
