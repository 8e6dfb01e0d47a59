//! The memcache store against real memcached servers this test starts itself
//! (memcached must be installed), plus its behaviour when servers are down or
//! misconfigured. The shared conformance suite runs in the root crate's
//! tests/conformance.rs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use memcache::exp::{Meta, MetaClient};
use simplepush_memcache::{MemcacheOptions, MemcacheStore};
use simplepush_store::{
    ChannelId, Message, MessageId, Payload, PutOutcome, QueueOutcome, RegisterOutcome, Store,
    StoreError, Swept, Uaid, Update, Urgency, unix_now,
};

const NOW: u64 = 1_000_000;

/// A memcached process on a free loopback port, killed when dropped.
struct Memcached {
    child: Child,
    address: String,
}

impl Memcached {
    fn start() -> Memcached {
        Memcached::start_with(&[])
    }

    /// [`Memcached::start`] with more memcached arguments (e.g. `-I 512k`).
    fn start_with(extra: &[&str]) -> Memcached {
        let port = free_port();
        let child = Command::new("memcached")
            // -u is needed (and only honoured) when running as root.
            .args(["-u", "root", "-l", "127.0.0.1", "-U", "0", "-m", "64", "-p"])
            .arg(port.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached must be installed to run these tests");
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "memcached did not start on {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Memcached { child, address }
    }

    /// A plain client on this one server, to look behind the store's back.
    fn client(&self) -> memcache::Client {
        memcache::Client::connect(format!("memcache://{}?timeout=2", self.address)).unwrap()
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (just released by the OS).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect(servers: &[&str], options: MemcacheOptions) -> MemcacheStore {
    let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    MemcacheStore::connect(&servers, options).unwrap()
}

/// A fresh uaid: the memcached servers here are private, but stay tidy anyway.
fn uaid() -> Uaid {
    Uaid::new(format!(
        "{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    ))
}

fn channel(i: usize) -> ChannelId {
    ChannelId::new(format!("{i:08x}-0000-4000-8000-000000000000"))
}

fn update(version: u64, data: Option<String>) -> Update {
    Update {
        version,
        data,
        expires_at: NOW + 3600,
    }
}

#[tokio::test]
async fn down_server_answers_unavailable_quickly() {
    let port = free_port();
    let options = MemcacheOptions {
        timeout: Duration::from_millis(300),
        ..MemcacheOptions::default()
    };
    // Connecting does no I/O, so a server that is down does not stop startup.
    let store = connect(&[&format!("127.0.0.1:{port}")], options);
    let started = Instant::now();
    let error = store.knows_uaid(&uaid()).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains(&port.to_string()), "{error}");
    let error = store
        .register(&uaid(), &channel(1), 10, NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let error = store.check().await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "three calls took {:?}",
        started.elapsed()
    );
}

/// A fake memcached (meta protocol) whose first `mg` answers only after the client has
/// timed out; it reports on `late` once that stale answer is sent. Every later `mg`
/// answers "miss".
fn start_slow_first_get(delay: Duration, late: mpsc::Sender<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let first = Arc::new(AtomicBool::new(true));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (first, late) = (Arc::clone(&first), late.clone());
            std::thread::spawn(move || serve_fake(stream.unwrap(), &first, &late, delay));
        }
    });
    address
}

fn serve_fake(stream: TcpStream, first: &AtomicBool, late: &mpsc::Sender<()>, delay: Duration) {
    let mut writer = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream);
    let mut line = String::new();
    while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
        let words: Vec<&str> = line.split_whitespace().collect();
        // The flags a response must echo: the opaque token, the key, its encoding.
        let echo: String = words
            .iter()
            .skip(2)
            .filter_map(|flag| match flag.as_bytes().first() {
                Some(b'O' | b'b') => Some(format!(" {flag}")),
                Some(b'k') => Some(format!(" k{}", words[1])),
                _ => None,
            })
            .collect();
        let answer = match words.first() {
            Some(&"mg") if first.swap(false, Ordering::SeqCst) => {
                std::thread::sleep(delay);
                let value = br#"{"c":{"x":null}}"#;
                let mut packet = format!("VA {} c1 f0{echo}\r\n", value.len()).into_bytes();
                packet.extend_from_slice(value);
                packet.extend_from_slice(b"\r\n");
                writer.write_all(&packet).unwrap();
                let _ = late.send(());
                line.clear();
                continue;
            }
            Some(&"mg") => format!("EN{echo}\r\n"),
            _ => "ERROR\r\n".to_owned(),
        };
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

#[tokio::test]
async fn a_late_answer_after_a_timeout_is_never_read_as_the_next_one() {
    let (late, arrived) = mpsc::channel();
    let address = start_slow_first_get(Duration::from_millis(500), late);
    let options = MemcacheOptions {
        timeout: Duration::from_millis(150),
        ..MemcacheOptions::default()
    };
    let store = connect(&[&address], options);
    let u = uaid();
    let error = store.knows_uaid(&u).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    // Once the stale answer (a device with a channel) is on the wire, the next read
    // must get its own answer ("not found"), not the stale one or one step behind.
    tokio::task::spawn_blocking(move || arrived.recv().unwrap())
        .await
        .unwrap();
    assert!(!store.knows_uaid(&u).await.unwrap());
    assert!(!store.knows_uaid(&u).await.unwrap());
}

#[test]
fn bad_configuration_is_refused() {
    let refused = |servers: &[&str], options: MemcacheOptions| {
        let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        match MemcacheStore::connect(&servers, options) {
            Err(StoreError::Internal(message)) => message,
            Err(other) => panic!("wrong error {other:?}"),
            Ok(_) => panic!("accepted {servers:?}"),
        }
    };
    let defaults = MemcacheOptions::default;
    assert!(refused(&[], defaults()).contains("no memcached servers"));
    let twice = refused(&["127.0.0.1:1", "memcache://127.0.0.1:1"], defaults());
    assert!(twice.contains("listed twice"), "{twice}");
    assert!(refused(&["http://x:1"], defaults()).contains("http://x:1"));
    let no_pool = MemcacheOptions {
        pool_size: 0,
        ..defaults()
    };
    assert!(refused(&["127.0.0.1:1"], no_pool).contains("pool_size"));
    let no_timeout = MemcacheOptions {
        timeout: Duration::ZERO,
        ..defaults()
    };
    assert!(refused(&["127.0.0.1:1"], no_timeout).contains("timeout"));
    let tiny_items = MemcacheOptions {
        item_limit: 1023,
        ..defaults()
    };
    assert!(refused(&["127.0.0.1:1"], tiny_items).contains("item_limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_spread_over_servers_and_survive_reordering_the_list() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let forward = connect(&[&a.address, &b.address], MemcacheOptions::default());
    let uaids: Vec<Uaid> = (0..60).map(|_| uaid()).collect();
    for u in &uaids {
        let outcome = forward.register(u, &channel(1), 10, NOW).await.unwrap();
        assert_eq!(outcome, RegisterOutcome::Registered);
    }
    // Another node listing the servers the other way round finds every device.
    let url_b = format!("memcache://{}", b.address);
    let reversed = connect(&[&url_b, &a.address], MemcacheOptions::default());
    for u in &uaids {
        assert!(reversed.knows_uaid(u).await.unwrap(), "lost {u}");
    }
    // Each device lives on exactly one server, and both servers hold some.
    let (client_a, client_b) = (a.client(), b.client());
    let mut on_a = 0;
    for u in &uaids {
        let key = format!("sp1:d:{u}");
        let in_a: Option<Vec<u8>> = client_a.get(&key).unwrap();
        let in_b: Option<Vec<u8>> = client_b.get(&key).unwrap();
        assert!(in_a.is_some() != in_b.is_some(), "{key} on both or neither");
        on_a += usize::from(in_a.is_some());
    }
    assert!(
        (10..=50).contains(&on_a),
        "{on_a} of 60 devices on one server"
    );
    forward.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_allowed_device_fits_in_one_item() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let u = uaid();
    // 200 channels with 4 KiB of data pending on each (the protocol's limits), in the
    // characters that cost JSON the most.
    for i in 0..200 {
        assert_eq!(
            store.register(&u, &channel(i), 200, NOW).await.unwrap(),
            RegisterOutcome::Registered
        );
    }
    let data = hostile_data(4096);
    for i in 0..200 {
        let outcome = store
            .put_update(
                &u,
                &channel(i),
                update(i64::MAX as u64, Some(data.clone())),
                NOW,
            )
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
        assert_eq!(outcome, PutOutcome::Stored);
    }
    let pending = store.pending(&u, NOW).await.unwrap();
    assert_eq!(pending.updates.len(), 200);
    assert!(
        pending
            .updates
            .iter()
            .all(|(_, up)| up.data.as_deref() == Some(data.as_str()))
    );
}

/// `len` bytes that JSON escapes at up to six bytes per byte: control characters,
/// quotes, backslashes, and some non-ASCII.
fn hostile_data(len: usize) -> String {
    let pattern = ['\u{0}', '\u{1}', '"', '\\', '\u{1f}', 'é', '\u{7f}'];
    let mut data: String = pattern.iter().cycle().take(len).collect();
    while data.len() > len {
        data.pop();
    }
    while data.len() < len {
        data.push('\u{1}');
    }
    data
}

/// The bytes of a varint (postcard's unsigned integers and lengths).
fn varint(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).div_ceil(7).max(1)
}

/// What one channel of `channel(i)` with `update(version, data)` pending takes in a
/// record: its id, the slot's tag, the version, the expiry and the data.
fn channel_bytes(version: u64, data: usize) -> usize {
    let id = channel(0).as_str().len();
    let slot = varint(version) + varint(NOW + 3600) + 1 + varint(data as u64) + data;
    varint(id as u64) + id + 1 + slot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_limit_is_the_item_limit_to_the_byte() {
    // memcached with 512 KiB items, and the store told so.
    let server = Memcached::start_with(&["-I", "512k"]);
    let item_limit = 512 * 1024;
    let options = MemcacheOptions {
        item_limit,
        ..MemcacheOptions::default()
    };
    let store = connect(&[&server.address], options);
    let u = uaid();
    let data = hostile_data(4096);
    let mut full = 0;
    loop {
        store.register(&u, &channel(full), 1000, NOW).await.unwrap();
        let put = store
            .put_update(&u, &channel(full), update(1, Some(data.clone())), NOW)
            .await;
        match put {
            Ok(PutOutcome::Stored) => full += 1,
            Err(StoreError::TooLarge(_)) => break,
            other => panic!("put {full}: {other:?}"),
        }
    }
    // The record now: its layout byte, when the device was last seen (this clock's
    // UNIX seconds), the channel count, `full` channels with data and one without,
    // and an empty index (one byte). What is left of the limit (item limit less 512)
    // goes to the data of that last channel, to the byte.
    let channels = full + 1;
    let empty = channel_bytes(1, 0) - (varint(1) + varint(NOW + 3600) + 1 + 1);
    let header = 1 + varint(unix_now()) + varint(channels as u64);
    let record = header + full * channel_bytes(1, 4096) + empty + 1;
    let room = item_limit - 512 - record;
    let fill = (1..=room)
        .rev()
        .find(|d| channel_bytes(1, *d) - empty == room)
        .expect("some data size fills the room exactly");
    let last = channel(full);
    let exact = Some("y".repeat(fill));
    assert_eq!(
        store
            .put_update(&u, &last, update(1, exact), NOW)
            .await
            .unwrap(),
        PutOutcome::Stored,
        "{fill} bytes fill the record to its limit, and memcached takes it"
    );
    let over = Some("y".repeat(fill + 1));
    let error = store.put_update(&u, &last, update(2, over), NOW).await;
    assert!(matches!(error, Err(StoreError::TooLarge(_))), "{error:?}");
    assert_eq!(
        store.pending(&u, NOW).await.unwrap().updates.len(),
        channels
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_limit_above_memcacheds_is_too_large_not_unavailable() {
    // The store believes in 1 MiB items; memcached stores at most 512 KiB.
    let server = Memcached::start_with(&["-I", "512k"]);
    let store = connect(&[&server.address], MemcacheOptions::default());
    let u = uaid();
    let data = hostile_data(4096);
    let mut stored = 0;
    let error = loop {
        store
            .register(&u, &channel(stored), 1000, NOW)
            .await
            .unwrap();
        let put = store
            .put_update(&u, &channel(stored), update(1, Some(data.clone())), NOW)
            .await;
        match put {
            Ok(_) => stored += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, StoreError::TooLarge(_)), "{error:?}");
    assert!((120..128).contains(&stored), "{stored} updates of 4 KiB");
    // memcached drops the item a too-large write would have replaced (so stale data
    // never stays): the reason `item_limit` must not exceed the servers' `-I`. The
    // connection still serves.
    assert!(!store.knows_uaid(&u).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_before_the_binary_layout_are_still_read() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let u = uaid();
    let (idle, busy) = (channel(1), channel(2));
    // A device as the JSON layout wrote it, data escaped.
    let old = format!(
        r#"{{"c":{{"{}":null,"{}":[5,{},"a \" b \\ \u0000 é"]}}}}"#,
        idle.as_str(),
        busy.as_str(),
        NOW + 3600
    );
    let key = format!("sp1:d:{u}");
    server.client().set(&key, old.as_str(), 60).unwrap();
    assert!(store.knows_uaid(&u).await.unwrap());
    let pending = store.pending(&u, NOW).await.unwrap();
    let data = Some("a \" b \\ \u{0} é".to_owned());
    assert_eq!(
        pending.updates,
        vec![(busy.clone(), update(5, data.clone()))]
    );
    // Changes work on it, and rewrite it in the binary layout.
    assert_eq!(
        store.register(&u, &channel(3), 10, NOW).await.unwrap(),
        RegisterOutcome::Registered
    );
    let stored: Vec<u8> = server.client().get(&key).unwrap().unwrap();
    assert_ne!(
        stored.first(),
        Some(&b'{'),
        "rewritten in the binary layout"
    );
    store
        .put_update(&u, &idle, update(6, None), NOW)
        .await
        .unwrap();
    let pending = store.pending(&u, NOW).await.unwrap();
    assert_eq!(
        pending.updates,
        vec![
            (idle.clone(), update(6, None)),
            (busy.clone(), update(5, data))
        ]
    );
    // Acks answer whether anything is left.
    assert!(store.ack(&u, &busy, 5).await.unwrap());
    assert!(!store.ack(&u, &idle, 6).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_device_fails_clearly_and_keeps_what_it_had() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let u = uaid();
    let mut stored = 0;
    let mut failure = None;
    // Data far beyond the protocol's 4 KiB per update reaches the limit in few steps.
    for i in 0..100 {
        store.register(&u, &channel(i), 100, NOW).await.unwrap();
        let data = Some("x".repeat(40 * 1024));
        match store
            .put_update(&u, &channel(i), update(1, data), NOW)
            .await
        {
            Ok(outcome) => {
                assert_eq!(outcome, PutOutcome::Stored);
                stored += 1;
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let failure = failure.expect("100 channels of 40 KiB cannot fit in 1 MiB");
    assert!(
        matches!(failure, StoreError::TooLarge(ref m) if m.contains("item limit")),
        "{failure:?}"
    );
    // About 1 MiB was stored before the limit.
    assert!(
        (24..=25).contains(&stored),
        "{stored} updates of 40 KiB fitted"
    );
    // Nothing was corrupted: every update stored before is still there, and changes
    // that make the record smaller still work.
    let pending = store.pending(&u, NOW).await.unwrap();
    assert_eq!(pending.updates.len(), stored);
    store.ack(&u, &channel(0), 1).await.unwrap();
    assert_eq!(
        store.pending(&u, NOW).await.unwrap().updates.len(),
        stored - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_item_is_corrupt() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let u = uaid();
    server
        .client()
        .set(&format!("sp1:d:{u}"), "not json", 60)
        .unwrap();
    server
        .client()
        .set(&format!("sp1:n:{u}"), "no marker", 60)
        .unwrap();
    let error = store.knows_uaid(&u).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    let error = store.register(&u, &channel(0), 10, NOW).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    let error = store.node(&u).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    let error = store.touch(&u, NOW).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    // Dropping the uaid clears the way for a fresh start.
    store.drop_uaid(&u).await.unwrap();
    assert_eq!(
        store.register(&u, &channel(0), 10, NOW).await.unwrap(),
        RegisterOutcome::Registered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_are_stored_safely() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let long = "u".repeat(400);
    for id in ["with space", "new\r\nline get x", long.as_str(), ""] {
        let u = Uaid::new(id);
        let c = ChannelId::new("chan nel\n");
        assert_eq!(
            store.register(&u, &c, 10, NOW).await.unwrap(),
            RegisterOutcome::Registered
        );
        store
            .put_update(&u, &c, update(3, None), NOW)
            .await
            .unwrap();
        let pending = store.pending(&u, NOW).await.unwrap();
        assert_eq!(
            pending.updates,
            vec![(c.clone(), update(3, None))],
            "id {id:?}"
        );
        store.set_node(&u, "http://n").await.unwrap();
        assert_eq!(store.node(&u).await.unwrap().as_deref(), Some("http://n"));
        store.drop_uaid(&u).await.unwrap();
        assert!(!store.knows_uaid(&u).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_expire_after_their_lifetime() {
    let server = Memcached::start();
    let options = MemcacheOptions {
        ttl: Duration::from_secs(1),
        ..MemcacheOptions::default()
    };
    let store = connect(&[&server.address], options);
    let u = uaid();
    store.register(&u, &channel(0), 10, NOW).await.unwrap();
    store.set_node(&u, "http://n").await.unwrap();
    assert!(store.knows_uaid(&u).await.unwrap());
    // Memcached's clock ticks once a second: a 1 s item, given a second more for
    // that, is gone within 3 s. The server's own clock cannot be paused, so this
    // waits for real.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!store.knows_uaid(&u).await.unwrap());
    assert_eq!(store.node(&u).await.unwrap(), None);
}

/// A WebPush message of `channel` with id `id`, expiring an hour after [`NOW`], with a
/// 4 KiB body.
fn message(id: &str, channel: &ChannelId, topic: Option<&str>) -> Message {
    Message {
        id: MessageId::new(id),
        channel: channel.clone(),
        ttl: 3600,
        expires_at: NOW + 3600,
        topic: topic.map(str::to_owned),
        urgency: Urgency::High,
        payload: Some(Payload {
            encoding: "aes128gcm".into(),
            encryption: None,
            crypto_key: None,
            body: vec![0xa5; 4096],
        }),
    }
}

/// A fresh message id, increasing with `n`, 64 bytes long (the longest ids allowed).
fn message_id(n: usize) -> String {
    format!("{n:016}-{:016x}{:031x}", fastrand::u64(..), 0)
}

async fn put(store: &MemcacheStore, u: &Uaid, message: &Message, max: usize) -> QueueOutcome {
    store.put_message(u, message, max, NOW).await.unwrap()
}

async fn queued_ids(store: &MemcacheStore, u: &Uaid, limit: usize) -> Vec<String> {
    let messages = store.messages(u, NOW, limit).await.unwrap();
    messages.iter().map(|m| m.id.as_str().to_owned()).collect()
}

impl Memcached {
    /// The raw value at `key`, if any.
    fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.client().get(key).unwrap()
    }

    /// The seconds the item at `key` has left, if there is one.
    fn ttl(&self, key: &str) -> Option<i64> {
        let client = MetaClient::connect(self.address.as_str()).unwrap();
        let found = client.get(key).meta(Meta::default().ttl()).send().unwrap();
        found.hit().then_some(found.item.ttl).flatten()
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_message_item_is_skipped_and_pruned_from_the_index() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let (u, c) = (uaid(), channel(1));
    store.register(&u, &c, 10, NOW).await.unwrap();
    let ids: Vec<String> = (0..4).map(message_id).collect();
    for id in &ids {
        assert_eq!(
            put(&store, &u, &message(id, &c, None), 10).await,
            QueueOutcome::Stored
        );
    }
    // memcached evicts the second message's item.
    let evicted = format!("sp1:m:{u}:{}", ids[1]);
    assert!(server.raw(&evicted).is_some(), "one item per message");
    server.client().delete(&evicted).unwrap();
    // The oldest two that are still there: the third stands in for the second.
    assert_eq!(
        queued_ids(&store, &u, 2).await,
        [ids[0].clone(), ids[2].clone()]
    );
    // That read dropped the entry from the index.
    let record = server.raw(&format!("sp1:d:{u}")).unwrap();
    assert!(
        !contains(&record, &ids[1]),
        "the evicted entry stays indexed"
    );
    assert!(contains(&record, &ids[0]) && contains(&record, &ids[3]));
    assert_eq!(
        queued_ids(&store, &u, 10).await,
        [ids[0].clone(), ids[2].clone(), ids[3].clone()]
    );
    // Acking what is left answers that nothing is.
    let rest: Vec<MessageId> = [0, 2, 3].map(|i| MessageId::from(ids[i].as_str())).to_vec();
    assert!(!store.ack_messages(&u, &rest, NOW).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_holds_no_bodies_and_stays_bounded() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let (u, c) = (uaid(), channel(1));
    store.register(&u, &c, 10, NOW).await.unwrap();
    let key = format!("sp1:d:{u}");
    let bare = server.raw(&key).unwrap().len();
    // Per entry: a 64-byte id with its length, the expiry (3 bytes), the topic's tag,
    // and a topic of up to 32 bytes with its length; per queue its channel and count.
    let entry = 1 + 64 + 3 + 1 + 1 + 32;
    let queue = 1 + 36 + 1;
    let max_queued = 5;
    // A thousand messages of 4 KiB, each expiring 10 s after it is put, one a second;
    // some replace a message by topic.
    for n in 0..1000usize {
        let now = NOW + n as u64;
        let topic = (n % 3 == 0).then(|| format!("{:032}", n % 2));
        let mut m = message(&message_id(n), &c, topic.as_deref());
        m.expires_at = now + 10;
        let outcome = store.put_message(&u, &m, max_queued, now).await.unwrap();
        let record = server.raw(&key).unwrap().len();
        assert!(
            record <= bare + 1 + queue + max_queued * entry,
            "message {n}: a record of {record} bytes"
        );
        if outcome == QueueOutcome::Full {
            continue;
        }
        assert_eq!(outcome, QueueOutcome::Stored, "message {n}");
    }
    // Every message but the bounded last few has expired.
    let left = store.messages(&u, NOW + 999, 100).await.unwrap();
    assert!((1..=max_queued).contains(&left.len()), "{}", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_items_expire_in_memcached_with_their_message() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let (u, c) = (uaid(), channel(1));
    store.register(&u, &c, 10, NOW).await.unwrap();
    // Ten minutes after the caller's now: ten minutes in memcached (and a margin, and
    // the second for memcached's clock), whatever the caller's clock says.
    let soon = message(&message_id(1), &c, None);
    let mut soon = Message {
        expires_at: NOW + 600,
        ..soon
    };
    put(&store, &u, &soon, 10).await;
    let ttl = server.ttl(&format!("sp1:m:{u}:{}", soon.id)).unwrap();
    assert!((600..=603).contains(&ttl), "{ttl}");
    // Longer than the device record lives (30 days by default): as long as the record
    // (and the margin), for once the record is gone nothing names the item. With the
    // margin that is past memcached's 30 days of relative seconds, so an absolute time
    // read against memcached's one-second clock: a few seconds either way (CI saw +3).
    soon.id = MessageId::new(message_id(2));
    soon.expires_at = NOW + 40 * 24 * 3600;
    put(&store, &u, &soon, 10).await;
    let ttl = server.ttl(&format!("sp1:m:{u}:{}", soon.id)).unwrap();
    let month = 30 * 24 * 3600;
    assert!((month - 5..=month + 5).contains(&ttl), "{ttl}");
    // The device record lives the store's own lifetime (and the second, which takes
    // it past the 30 days too: an absolute time).
    let record = server.ttl(&format!("sp1:d:{u}")).unwrap();
    assert!((month - 3..=month + 4).contains(&record), "{record}");
    // Beyond memcached's 30 days of relative seconds with a longer store lifetime:
    // still the message's lifetime. It is then an absolute time, which memcached reads
    // against its own clock (whole seconds, updated once a second): a few seconds
    // either way.
    let longer = connect(
        &[&server.address],
        MemcacheOptions {
            ttl: Duration::from_secs(60 * 24 * 3600),
            ..MemcacheOptions::default()
        },
    );
    soon.id = MessageId::new(message_id(3));
    assert_eq!(put(&longer, &u, &soon, 10).await, QueueOutcome::Stored);
    let ttl = server.ttl(&format!("sp1:m:{u}:{}", soon.id)).unwrap();
    assert!(
        (40 * 24 * 3600 - 5..=40 * 24 * 3600 + 5).contains(&ttl),
        "{ttl}"
    );
    // Items that never expire bound nothing: the message's lifetime.
    let forever = connect(
        &[&server.address],
        MemcacheOptions {
            ttl: Duration::ZERO,
            ..MemcacheOptions::default()
        },
    );
    soon.id = MessageId::new(message_id(4));
    assert_eq!(put(&forever, &u, &soon, 10).await, QueueOutcome::Stored);
    let ttl = server.ttl(&format!("sp1:m:{u}:{}", soon.id)).unwrap();
    assert!(
        (40 * 24 * 3600 - 5..=40 * 24 * 3600 + 5).contains(&ttl),
        "{ttl}"
    );
    assert_eq!(server.ttl(&format!("sp1:d:{u}")), Some(-1), "never expires");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_items_go_with_their_index_entries() {
    let server = Memcached::start();
    let store = connect(&[&server.address], MemcacheOptions::default());
    let (u, c, other) = (uaid(), channel(1), channel(2));
    store.register(&u, &c, 10, NOW).await.unwrap();
    store.register(&u, &other, 10, NOW).await.unwrap();
    let item = |id: &str| server.raw(&format!("sp1:m:{u}:{id}"));
    let ids: Vec<String> = (0..6).map(message_id).collect();
    let topical = message(&ids[0], &c, Some("t"));
    put(&store, &u, &topical, 10).await;
    // Replaced by topic.
    put(&store, &u, &message(&ids[1], &c, Some("t")), 10).await;
    assert!(item(&ids[0]).is_none(), "a replaced message's item stays");
    assert!(item(&ids[1]).is_some());
    // Acked.
    put(&store, &u, &message(&ids[2], &c, None), 10).await;
    assert!(
        store
            .ack_messages(&u, &[MessageId::from(ids[2].as_str())], NOW)
            .await
            .unwrap()
    );
    assert!(item(&ids[2]).is_none(), "an acked message's item stays");
    // Deleted by the app server; a delete naming another channel touches nothing.
    put(&store, &u, &message(&ids[3], &c, None), 10).await;
    let id3 = MessageId::from(ids[3].as_str());
    assert!(!store.delete_message(&u, &other, &id3, NOW).await.unwrap());
    assert!(item(&ids[3]).is_some());
    assert!(store.delete_message(&u, &c, &id3, NOW).await.unwrap());
    assert!(item(&ids[3]).is_none(), "a deleted message's item stays");
    // Refused: the channel full, or not registered.
    let full = message(&ids[4], &c, None);
    assert_eq!(put(&store, &u, &full, 1).await, QueueOutcome::Full);
    assert!(item(&ids[4]).is_none(), "a refused message's item stays");
    let gone = message(&ids[4], &channel(3), None);
    assert_eq!(put(&store, &u, &gone, 10).await, QueueOutcome::Gone);
    assert!(item(&ids[4]).is_none(), "a refused message's item stays");
    // Unregistered with its channel.
    put(&store, &u, &message(&ids[5], &other, None), 10).await;
    store.unregister(&u, &c).await.unwrap();
    assert!(
        item(&ids[1]).is_none(),
        "an unregistered channel's item stays"
    );
    assert!(item(&ids[5]).is_some());
    assert_eq!(queued_ids(&store, &u, 10).await, [ids[5].clone()]);
    // Dropped with the uaid.
    store.drop_uaid(&u).await.unwrap();
    assert!(item(&ids[5]).is_none(), "a dropped uaid's item stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_earlier_layouts_are_read_and_rewritten_seen_when_written() {
    let server = Memcached::start();
    let servers = [&server];
    let store = living(&servers, 100);
    let c = channel(1);
    let id = c.as_str().as_bytes();
    // The JSON layout; the binary one before WebPush: [layout 1, one channel, its id,
    // no update pending]; the one with an index before last-seen times: [layout 2, the
    // same channel, one queue: the channel, one entry: a message's id, its expiry, no
    // topic].
    let json = format!(r#"{{"c":{{"{}":null}}}}"#, c.as_str()).into_bytes();
    let binary = [&[1, 1, 36][..], id, &[0]].concat();
    let queued = message(&message_id(0), &c, None);
    let entry = [
        &[64][..],
        queued.id.as_str().as_bytes(),
        &varint_bytes(queued.expires_at),
        &[0],
    ]
    .concat();
    let indexed = [&[2, 1, 36][..], id, &[0, 1, 36], id, &[1], &entry].concat();
    for (layout, old) in [(b'{', json), (1, binary), (2, indexed)] {
        let u = uaid();
        let key = format!("sp1:d:{u}");
        if layout == 2 {
            // The message's item, as the store writes it (its record is replaced).
            store.register(&u, &c, 10, NOW).await.unwrap();
            assert_eq!(put(&store, &u, &queued, 10).await, QueueOutcome::Stored);
        }
        // The record as an earlier node left it, with a minute to live.
        server.client().set(&key, old.as_slice(), 60).unwrap();
        assert_eq!(server.raw(&key).unwrap()[0], layout);
        // Read as it is, which changes nothing.
        let expected = match layout {
            2 => vec![queued.id.as_str().to_owned()],
            _ => Vec::new(),
        };
        assert!(store.registered(&u, &c).await.unwrap());
        assert_eq!(queued_ids(&store, &u, 10).await, expected);
        assert_lives(&servers, &key, 60);
        // Its next write: in the current layout, the device counted as seen then, so a
        // whole lifetime (what every write gave before), with all it held.
        let before = unix_now();
        let put_update = store.put_update(&u, &c, update(4, None), NOW).await;
        assert_eq!(put_update.unwrap(), PutOutcome::Stored);
        let seen = seen_of(&servers, &u);
        assert!((before..=unix_now()).contains(&seen), "seen at {seen}");
        assert_lives(&servers, &key, 100);
        let pending = store.pending(&u, NOW).await.unwrap();
        assert_eq!(pending.updates, vec![(c.clone(), update(4, None))]);
        assert_eq!(queued_ids(&store, &u, 10).await, expected);
        // From then on, writes keep that time, and the lifetime that follows from it.
        let m = message(&message_id(1), &c, None);
        assert_eq!(put(&store, &u, &m, 10).await, QueueOutcome::Stored);
        assert_eq!(seen_of(&servers, &u), seen);
        assert_lives(&servers, &format!("sp1:m:{u}:{}", m.id), 102);
        let mut all = expected.clone();
        all.push(m.id.as_str().to_owned());
        assert_eq!(queued_ids(&store, &u, 10).await, all);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_messages_and_indexes_are_refused_and_leave_nothing() {
    let server = Memcached::start();
    // Records of at most 1024 - 512 bytes.
    let options = MemcacheOptions {
        item_limit: 1024,
        ..MemcacheOptions::default()
    };
    let store = connect(&[&server.address], options);
    let (u, c) = (uaid(), channel(1));
    store.register(&u, &c, 10, NOW).await.unwrap();
    // A body beyond the item limit.
    let id = message_id(0);
    let error = store
        .put_message(&u, &message(&id, &c, None), 100, NOW)
        .await;
    assert!(matches!(error, Err(StoreError::TooLarge(_))), "{error:?}");
    assert!(server.raw(&format!("sp1:m:{u}:{id}")).is_none());
    // Small messages until the index is full.
    let mut stored = Vec::new();
    let error = loop {
        let id = message_id(stored.len() + 1);
        let mut m = message(&id, &c, Some(&format!("{:032}", stored.len())));
        m.payload = None;
        match store.put_message(&u, &m, 100, NOW).await {
            Ok(outcome) => assert_eq!(outcome, QueueOutcome::Stored),
            Err(error) => {
                assert!(
                    server.raw(&format!("sp1:m:{u}:{id}")).is_none(),
                    "item kept"
                );
                break error;
            }
        }
        stored.push(id);
    };
    assert!(matches!(error, StoreError::TooLarge(_)), "{error:?}");
    assert!((3..=5).contains(&stored.len()), "{}", stored.len());
    assert_eq!(queued_ids(&store, &u, 100).await, stored);
    // Errors name no uaid and no message id.
    let text = error.to_string();
    assert!(
        !text.contains(u.as_str()) && text.contains("sp1:d:…"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_putting_and_acking_at_once_lose_nothing() {
    let server = Memcached::start();
    let (a, b) = (
        Arc::new(connect(&[&server.address], MemcacheOptions::default())),
        Arc::new(connect(&[&server.address], MemcacheOptions::default())),
    );
    let (u, c) = (uaid(), channel(1));
    a.register(&u, &c, 10, NOW).await.unwrap();
    let ids: Vec<String> = (0..60).map(message_id).collect();
    let mut first = ids[..30].to_vec();
    first.sort();
    for id in &first {
        put(&a, &u, &message(id, &c, None), 100).await;
    }
    // Node A takes 30 more while node B acks the first 30, a few at a time.
    let putter = {
        let (a, u, c, ids) = (Arc::clone(&a), u.clone(), c.clone(), ids[30..].to_vec());
        tokio::spawn(async move {
            let puts = ids.iter().map(|id| {
                let (a, u, m) = (Arc::clone(&a), u.clone(), message(id, &c, None));
                tokio::spawn(async move { a.put_message(&u, &m, 100, NOW).await })
            });
            for put in puts.collect::<Vec<_>>() {
                assert_eq!(put.await.unwrap().unwrap(), QueueOutcome::Stored);
            }
        })
    };
    let acks = first.chunks(3).map(|chunk| {
        let chunk: Vec<MessageId> = chunk
            .iter()
            .map(|id| MessageId::from(id.as_str()))
            .collect();
        let (b, u) = (Arc::clone(&b), u.clone());
        tokio::spawn(async move { b.ack_messages(&u, &chunk, NOW).await })
    });
    for ack in acks.collect::<Vec<_>>() {
        ack.await.unwrap().unwrap();
    }
    putter.await.unwrap();
    let mut expected = ids[30..].to_vec();
    expected.sort();
    assert_eq!(queued_ids(&b, &u, 100).await, expected);
    for id in &first {
        assert!(
            server.raw(&format!("sp1:m:{u}:{id}")).is_none(),
            "acked item kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_items_spread_over_servers_and_come_back_in_order() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let store = connect(&[&a.address, &b.address], MemcacheOptions::default());
    let (u, c) = (uaid(), channel(1));
    store.register(&u, &c, 10, NOW).await.unwrap();
    let ids: Vec<String> = (0..40).map(message_id).collect();
    for id in &ids {
        put(&store, &u, &message(id, &c, None), 100).await;
    }
    let on_a = ids
        .iter()
        .filter(|id| a.raw(&format!("sp1:m:{u}:{id}")).is_some())
        .count();
    assert!((5..=35).contains(&on_a), "{on_a} of 40 items on one server");
    let messages = store.messages(&u, NOW, 100).await.unwrap();
    let got: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(got, ids);
    assert!(
        messages
            .iter()
            .all(|m| m == &message(m.id.as_str(), &c, None))
    );
    // Acked in one call, every item goes, on both servers.
    let all: Vec<MessageId> = ids.iter().map(|id| MessageId::from(id.as_str())).collect();
    assert!(!store.ack_messages(&u, &all, NOW).await.unwrap());
    for id in &ids {
        let key = format!("sp1:m:{u}:{id}");
        assert!(a.raw(&key).is_none() && b.raw(&key).is_none(), "item kept");
    }
}

/// A store on `servers` whose items live `seconds` after their device was last seen.
fn living(servers: &[&Memcached], seconds: u64) -> MemcacheStore {
    let addresses: Vec<&str> = servers.iter().map(|s| s.address.as_str()).collect();
    let options = MemcacheOptions {
        ttl: Duration::from_secs(seconds),
        ..MemcacheOptions::default()
    };
    connect(&addresses, options)
}

/// The seconds the item at `key` has left, on whichever of `servers` holds it.
fn ttl_on(servers: &[&Memcached], key: &str) -> Option<i64> {
    servers.iter().find_map(|server| server.ttl(key))
}

/// Asserts that the item at `key` has about `seconds` left (memcached's clock ticks
/// by the second, and the test takes a moment), or up to two seconds more: the store
/// gives every item a second for that clock, and a record a second for the rounding
/// of the time its device was seen.
#[track_caller]
fn assert_lives(servers: &[&Memcached], key: &str, seconds: i64) {
    let ttl = ttl_on(servers, key).unwrap_or_else(|| panic!("no item {key}"));
    assert!(
        (seconds - 3..=seconds + 2).contains(&ttl),
        "{key}: {ttl} s left, not about {seconds}"
    );
}

/// A device of `store` with a channel, a node record, a message expiring 50 s after
/// [`NOW`] and sixteen expiring in 5,000 s (spread over the servers); answers the uaid
/// and the keys of the short message's item and the long ones' items.
async fn device_with_messages(store: &MemcacheStore) -> (Uaid, String, Vec<String>) {
    let (u, c) = (uaid(), channel(1));
    store.register(&u, &c, 10, NOW).await.unwrap();
    store.set_node(&u, "http://node-a").await.unwrap();
    let mut short = message(&message_id(0), &c, None);
    short.expires_at = NOW + 50;
    assert_eq!(put(store, &u, &short, 100).await, QueueOutcome::Stored);
    let mut long = Vec::new();
    for n in 1..=16 {
        let mut m = message(&message_id(n), &c, None);
        m.expires_at = NOW + 5000;
        assert_eq!(put(store, &u, &m, 100).await, QueueOutcome::Stored);
        long.push(format!("sp1:m:{u}:{}", m.id));
    }
    (u.clone(), format!("sp1:m:{u}:{}", short.id), long)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_restarts_the_lifetime_of_everything_a_device_holds() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let servers = [&a, &b];
    // Two nodes with different lifetimes on one pool: which one wrote or touched an
    // item last shows in its lifetime, without waiting.
    let (short, long) = (living(&servers, 100), living(&servers, 1000));
    let (u, short_item, long_items) = device_with_messages(&short).await;
    let (record, node) = (format!("sp1:d:{u}"), format!("sp1:n:{u}"));
    assert_lives(&servers, &record, 100);
    assert_lives(&servers, &node, 100);
    assert_lives(&servers, &short_item, 52);
    for item in &long_items {
        // No longer than the record holding its index entry, and the margin.
        assert_lives(&servers, item, 102);
    }
    let on_a = long_items.iter().filter(|k| a.ttl(k).is_some()).count();
    assert!((1..=15).contains(&on_a), "{on_a} of 16 items on one server");

    long.touch(&u, NOW).await.unwrap();
    assert_lives(&servers, &record, 1000);
    assert_lives(&servers, &node, 1000);
    assert_lives(&servers, &short_item, 52);
    for item in &long_items {
        assert_lives(&servers, item, 1002);
    }
    // Later, an item lives what its message has left, and an expired message's item
    // is left to expire by itself.
    let later = living(&servers, 10_000);
    later.touch(&u, NOW + 4500).await.unwrap();
    assert_lives(&servers, &record, 10_000);
    for item in &long_items {
        assert_lives(&servers, item, 502);
    }
    assert_lives(&servers, &short_item, 52);
    let messages = later.messages(&u, NOW, 100).await.unwrap();
    assert_eq!(messages.len(), 17, "the touches changed nothing else");

    // A touch creates nothing.
    let stranger = uaid();
    long.touch(&stranger, NOW).await.unwrap();
    for key in [format!("sp1:d:{stranger}"), format!("sp1:n:{stranger}")] {
        assert_eq!(ttl_on(&servers, &key), None, "{key} created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_sees_the_device_as_a_touch_does() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let servers = [&a, &b];
    let (u, short_item, long_items) = device_with_messages(&living(&servers, 100)).await;
    let (record, node) = (format!("sp1:d:{u}"), format!("sp1:n:{u}"));
    // The channel registered already: the record written with the device seen now,
    // the rest touched.
    let again = living(&servers, 1000);
    let outcome = again.register(&u, &channel(1), 10, NOW).await.unwrap();
    assert_eq!(outcome, RegisterOutcome::Registered);
    assert_lives(&servers, &record, 1000);
    assert_lives(&servers, &node, 1000);
    assert_lives(&servers, &short_item, 52);
    for item in &long_items {
        assert_lives(&servers, item, 1002);
    }
    // A new channel: the record written, the rest touched.
    let fresh = living(&servers, 2000);
    let outcome = fresh.register(&u, &channel(2), 10, NOW).await.unwrap();
    assert_eq!(outcome, RegisterOutcome::Registered);
    assert_lives(&servers, &record, 2000);
    assert_lives(&servers, &node, 2000);
    for item in &long_items {
        assert_lives(&servers, item, 2002);
    }
    // A refused register does not see the device.
    let refused = living(&servers, 3000);
    let outcome = refused.register(&u, &channel(3), 2, NOW).await.unwrap();
    assert_eq!(outcome, RegisterOutcome::TooManyChannels);
    assert_lives(&servers, &record, 2000);
    assert_lives(&servers, &node, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_seeing_a_device_restarts_the_lifetime_of_its_record() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let servers = [&a, &b];
    let store = living(&servers, 100);
    let (u, c, other) = (uaid(), channel(1), channel(2));
    let record = format!("sp1:d:{u}");
    let item = |id: &str| format!("sp1:m:{u}:{id}");
    store.register(&u, &c, 10, NOW).await.unwrap();
    store.register(&u, &other, 10, NOW).await.unwrap();
    store.set_node(&u, "http://node-a").await.unwrap();
    let ids: Vec<MessageId> = (0..4).map(|n| MessageId::new(message_id(n))).collect();
    for id in &ids {
        put(&store, &u, &message(id.as_str(), &c, None), 10).await;
    }
    // Last seen 50 s ago: 50 s left.
    let seen = age(&servers, &u, 50, 100);
    assert_lives(&servers, &record, 50);

    // Every write that is not a sighting keeps the record's end where it was.
    let put_update = store.put_update(&u, &c, update(6, None), NOW).await;
    assert_eq!(put_update.unwrap(), PutOutcome::Stored);
    assert_lives(&servers, &record, 50);
    let m = message(&message_id(9), &c, None);
    assert_eq!(put(&store, &u, &m, 10).await, QueueOutcome::Stored);
    assert_lives(&servers, &record, 50);
    // The new message's item lives no longer than the record, and the margin.
    assert_lives(&servers, &item(m.id.as_str()), 52);
    assert!(!store.ack(&u, &c, 6).await.unwrap());
    assert_lives(&servers, &record, 50);
    assert!(store.ack_messages(&u, &ids[..1], NOW).await.unwrap());
    assert_lives(&servers, &record, 50);
    assert!(store.delete_message(&u, &c, &ids[1], NOW).await.unwrap());
    assert_lives(&servers, &record, 50);
    // A read that drops the entry of an evicted item.
    let evicted = item(ids[2].as_str());
    for server in servers {
        server.client().delete(&evicted).unwrap();
    }
    assert_eq!(store.messages(&u, NOW, 10).await.unwrap().len(), 2);
    let raw = servers.iter().find_map(|s| s.raw(&record)).unwrap();
    assert!(!contains(&raw, ids[2].as_str()), "the entry was dropped");
    assert_lives(&servers, &record, 50);
    store.unregister(&u, &other).await.unwrap();
    assert_lives(&servers, &record, 50);
    // Recording the node is not a sighting either.
    store.set_node(&u, "http://node-b").await.unwrap();
    assert_lives(&servers, &record, 50);
    assert_eq!(seen_of(&servers, &u), seen, "none of them saw the device");
    // A node with a longer lifetime counts it from the same sighting.
    let longer = living(&servers, 1000);
    let put_update = longer.put_update(&u, &c, update(7, None), NOW).await;
    assert_eq!(put_update.unwrap(), PutOutcome::Stored);
    assert_lives(&servers, &record, 950);

    // A touch (a hello) sees the device: a whole lifetime again, for the record and
    // the items of its messages.
    let before = unix_now();
    store.touch(&u, NOW).await.unwrap();
    assert!(seen_of(&servers, &u) >= before);
    assert_lives(&servers, &record, 100);
    for id in [&ids[3], &m.id] {
        assert_lives(&servers, &item(id.as_str()), 102);
    }
    // So does a register that answers Registered, of a channel registered already or
    // of a new one; a refused one does not.
    age(&servers, &u, 50, 100);
    let again = store.register(&u, &c, 10, NOW).await.unwrap();
    assert_eq!(again, RegisterOutcome::Registered);
    assert_lives(&servers, &record, 100);
    age(&servers, &u, 50, 100);
    let fresh = store.register(&u, &other, 10, NOW).await.unwrap();
    assert_eq!(fresh, RegisterOutcome::Registered);
    assert_lives(&servers, &record, 100);
    let seen = age(&servers, &u, 50, 100);
    let refused = store.register(&u, &channel(3), 2, NOW).await.unwrap();
    assert_eq!(refused, RegisterOutcome::TooManyChannels);
    assert_lives(&servers, &record, 50);
    assert_eq!(seen_of(&servers, &u), seen);
    // Everything the device had is still there.
    assert_eq!(
        store.pending(&u, NOW).await.unwrap().updates,
        vec![(c.clone(), update(7, None))]
    );
    let left = store.messages(&u, NOW, 10).await.unwrap();
    let left: Vec<&MessageId> = left.iter().map(|m| &m.id).collect();
    assert_eq!(left, [&ids[3], &m.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_alone_do_not_keep_a_device() {
    let server = Memcached::start();
    let store = living(&[&server], 3);
    let (pushed, kept, c) = (uaid(), uaid(), channel(1));
    for u in [&pushed, &kept] {
        store.register(u, &c, 10, NOW).await.unwrap();
    }
    let registered = Instant::now();
    let mut gone_after = None;
    // An app server pushes to both devices (an update and a message) four times a
    // second for eight seconds, and each push is acknowledged; only `kept` says hello.
    let mut version = 0;
    while registered.elapsed() < Duration::from_secs(8) {
        version += 1;
        let m = message(&message_id(version as usize), &c, None);
        for u in [&pushed, &kept] {
            let stored = store.put_update(u, &c, update(version, None), NOW).await;
            let queued = store.put_message(u, &m, 100, NOW).await.unwrap();
            if stored.unwrap() == PutOutcome::Gone {
                assert_eq!(u, &pushed, "a device that said hello was forgotten");
                assert_eq!(queued, QueueOutcome::Gone);
                gone_after.get_or_insert(registered.elapsed());
            } else {
                assert!(gone_after.is_none() || u == &kept, "forgotten, then back");
            }
            store.ack(u, &c, version).await.unwrap();
            store
                .ack_messages(u, std::slice::from_ref(&m.id), NOW)
                .await
                .unwrap();
        }
        store.touch(&kept, NOW).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gone_after = gone_after.expect("the pushes kept the device");
    // A 3 s lifetime, never less. At most 3 s more: a second for memcached's clock,
    // which ticks once a second, and up to two for the rounding of the times the
    // device was seen and pushed to (whole seconds); and the time a round takes.
    assert!(
        (Duration::from_millis(2900)..Duration::from_millis(6600)).contains(&gone_after),
        "forgotten after {gone_after:?}"
    );
    assert!(!store.knows_uaid(&pushed).await.unwrap());
    assert!(store.knows_uaid(&kept).await.unwrap());
    let messages = store.messages(&kept, NOW, 100).await.unwrap();
    assert!(messages.is_empty(), "every message was acknowledged");
}

/// Concurrent hellos never leave a message item shorter-lived than its record: a put
/// that finds the device seen again since it wrote the item writes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_racing_pushes_leave_no_item_short_lived() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let servers = [&a, &b];
    let (pusher, greeter) = (
        Arc::new(living(&servers, 100)),
        Arc::new(living(&servers, 100)),
    );
    let (u, c) = (uaid(), channel(1));
    pusher.register(&u, &c, 10, NOW).await.unwrap();
    for round in 0..8 {
        age(&servers, &u, 50, 100);
        let ids: Vec<String> = (0..16).map(|n| message_id(round * 100 + n)).collect();
        let puts = ids.iter().map(|id| {
            let (store, u, m) = (Arc::clone(&pusher), u.clone(), message(id, &c, None));
            tokio::spawn(async move { store.put_message(&u, &m, 100, NOW).await })
        });
        let puts: Vec<_> = puts.collect();
        let hellos: Vec<_> = (0..16)
            .map(|_| {
                let (store, u) = (Arc::clone(&greeter), u.clone());
                tokio::spawn(async move { store.touch(&u, NOW).await })
            })
            .collect();
        for put in puts {
            assert_eq!(put.await.unwrap().unwrap(), QueueOutcome::Stored);
        }
        for hello in hellos {
            hello.await.unwrap().unwrap();
        }
        // Every hello came after the aging: the record has its whole lifetime, and so
        // has every item (and the margin).
        assert_lives(&servers, &format!("sp1:d:{u}"), 100);
        for id in &ids {
            assert_lives(&servers, &format!("sp1:m:{u}:{id}"), 102);
        }
        let all: Vec<MessageId> = ids.iter().map(|id| MessageId::new(id.as_str())).collect();
        assert!(!pusher.ack_messages(&u, &all, NOW).await.unwrap());
    }
}

/// `value` as a varint (postcard's unsigned integers and lengths).
fn varint_bytes(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(low);
            return bytes;
        }
        bytes.push(low | 0x80);
    }
}

/// The varint at the start of `bytes`, and its length.
fn read_varint(bytes: &[u8]) -> (u64, usize) {
    let mut value = 0;
    for (i, byte) in bytes.iter().enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("a truncated varint");
}

/// The record of `u` (in the current layout: 3) on whichever of `servers` holds it.
fn current_record(servers: &[&Memcached], u: &Uaid) -> Vec<u8> {
    let key = format!("sp1:d:{u}");
    let raw = servers
        .iter()
        .find_map(|server| server.raw(&key))
        .unwrap_or_else(|| panic!("no record {key}"));
    assert_eq!(raw[0], 3, "{key} in the current layout");
    raw
}

/// When the record of `u` says its device was last seen (UNIX seconds).
fn seen_of(servers: &[&Memcached], u: &Uaid) -> u64 {
    read_varint(&current_record(servers, u)[1..]).0
}

/// Rewrites the record of `u` as a store whose items live `ttl` seconds would have
/// written it had the device last been seen `ago` seconds before (so with `ttl - ago`
/// seconds left); answers that time.
fn age(servers: &[&Memcached], u: &Uaid, ago: u64, ttl: u64) -> u64 {
    let key = format!("sp1:d:{u}");
    let server = servers
        .iter()
        .find(|server| server.raw(&key).is_some())
        .expect("a record");
    let raw = current_record(servers, u);
    let (_, len) = read_varint(&raw[1..]);
    let seen = unix_now() - ago;
    let aged = [&[3][..], &varint_bytes(seen), &raw[1 + len..]].concat();
    let left = u32::try_from(ttl - ago).unwrap();
    server.client().set(&key, aged.as_slice(), left).unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_device_takes_its_message_items_along() {
    let server = Memcached::start();
    let servers = [&server];
    let store = living(&servers, 2);
    let (u, c) = (uaid(), channel(1));
    store.register(&u, &c, 10, NOW).await.unwrap();
    // A message live for an hour: its item lives no longer than the record, and the
    // margin.
    let m = message(&message_id(1), &c, None);
    assert_eq!(put(&store, &u, &m, 10).await, QueueOutcome::Stored);
    let item = format!("sp1:m:{u}:{}", m.id);
    assert_lives(&servers, &item, 4);
    // memcached's clock ticks once a second: a 4 s item, given a second more for
    // that, is gone within 6 s. Its clock cannot be paused, so this waits for real.
    tokio::time::sleep(Duration::from_millis(6100)).await;
    assert_eq!(server.raw(&format!("sp1:d:{u}")), None);
    assert_eq!(
        server.raw(&item),
        None,
        "the message item outlived its device"
    );
    assert!(store.messages(&u, NOW, 10).await.unwrap().is_empty());
    assert_eq!(put(&store, &u, &m, 10).await, QueueOutcome::Gone);
    assert_eq!(server.raw(&item), None, "a refused message's item stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_never_expire_need_no_touch() {
    let server = Memcached::start();
    let servers = [&server];
    let store = living(&servers, 0);
    let u = uaid();
    store.register(&u, &channel(1), 10, NOW).await.unwrap();
    store.set_node(&u, "http://node-a").await.unwrap();
    store.touch(&u, NOW).await.unwrap();
    assert_eq!(server.ttl(&format!("sp1:d:{u}")), Some(-1));
    assert_eq!(server.ttl(&format!("sp1:n:{u}")), Some(-1));
}

#[tokio::test]
async fn sweep_has_nothing_to_do_and_asks_no_server() {
    // A server that is down: any request would fail.
    let store = connect(
        &[&format!("127.0.0.1:{}", free_port())],
        MemcacheOptions::default(),
    );
    let swept = store.sweep(NOW, NOW, 100).await.unwrap();
    assert_eq!(swept, Swept::default());
    let error = store.touch(&uaid(), NOW).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    // Nor has a touch when items never expire.
    let options = MemcacheOptions {
        ttl: Duration::ZERO,
        ..MemcacheOptions::default()
    };
    let store = connect(&[&format!("127.0.0.1:{}", free_port())], options);
    store.touch(&uaid(), NOW).await.unwrap();
}
