//! Overload of the endpoint (docs/protocol.md), by each of its two guards: a small
//! `max_inflight_requests` with ten times that many concurrent PUTs (and, to shed
//! deterministically, a store whose writes stall: a slot covers the store work only,
//! never a body still on its way), and a tiny
//! `max_queue_delay` with a storm that keeps the server's runtime behind. The server
//! stays up, sheds the excess with 503 and `Retry-After`, stores every update it
//! accepted, keeps serving devices, and answers normally once the storm is over. No
//! latency is asserted (that is for benchmarks).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, WAIT, chid, updates};
use futures_util::future::join_all;
use serde_json::json;
use simplepush::config::Config;
use simplepush_store::{ChannelId, Hook, Hooked, MemoryStore, Store, StoreError, Uaid};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Endpoint requests the server handles at once.
const CAPACITY: usize = 4;
/// Concurrent app servers in a storm: ten times the capacity.
const STORM: usize = 10 * CAPACITY;
/// PUTs each of them sends in the second storm.
const PUTS_EACH: u64 = 25;

/// `max_queue_delay` of the queue-delay test: an idle runtime runs its timers well
/// within it, a debug build answering hundreds of connections at once does not.
const TINY_QUEUE_DELAY: &str = "\"2ms\"";
/// Storm tasks of the queue-delay test, each with its own client (connection pool)...
const STORM_TASKS: usize = 4;
/// ...and this many PUTs in flight, each on its own connection.
const STORM_CONCURRENCY: usize = 50;
/// The storm goes on until the server has shed this many PUTs by queue delay.
const SHED_WANTED: u64 = 50;
/// A storm or a recovery that takes longer than this has failed.
const PATIENCE: Duration = Duration::from_secs(60);

/// PUTs `version` and returns the status; a 503 must carry `Retry-After` and a JSON body.
async fn put(client: &reqwest::Client, url: &str, version: u64) -> u16 {
    put_reason(client, url, version).await.0
}

/// PUTs `version`; returns the status and, for a 503, its reason. A 503 must carry
/// `Retry-After` and a JSON body.
async fn put_reason(client: &reqwest::Client, url: &str, version: u64) -> (u16, String) {
    let response = client
        .put(url)
        .body(format!("version={version}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url} failed: {e}"));
    let status = response.status().as_u16();
    if status == 503 {
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            retry_after.is_some_and(|s| s > 0),
            "503 without a Retry-After in seconds: {:?}",
            response.headers()
        );
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["status"], json!(503), "{body}");
        assert_eq!(body["error"], json!("Service Unavailable"), "{body}");
        let reason = body["reason"].as_str().unwrap_or_default().to_owned();
        assert!(!reason.is_empty(), "{body}");
        return (status, reason);
    }
    (status, String::new())
}

fn client() -> reqwest::Client {
    client_with_timeout(WAIT)
}

/// A client for a storm: a loaded machine may take longer than [`WAIT`] to answer one
/// of hundreds of requests.
fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap()
}

/// The path of a pushEndpoint (for a raw request).
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    &rest[rest.find('/').unwrap()..]
}

/// Opens a PUT to `endpoint` whose body never finishes (two of its ten bytes are
/// missing).
async fn stall_body(server: &Server, endpoint: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.endpoint).await.unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nversion=",
        path_of(endpoint)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// A device with 8 registered channels that then goes offline: its uaid and its
/// (channelID, reachable endpoint) pairs.
async fn offline_device(server: &Server) -> (String, Vec<(String, String)>) {
    let (mut device, uaid) = server.device().await;
    let mut channels = Vec::new();
    for _ in 0..8 {
        let channel = chid();
        let endpoint = server.reachable(&device.register(&channel).await);
        channels.push((channel, endpoint));
    }
    device.close().await;
    (uaid, channels)
}

/// Every update answered 202 was stored: the offline device, back, gets per channel the
/// greatest version it was sent (`greatest`) and nothing it was refused.
async fn assert_offline_device_gets(
    server: &Server,
    uaid: &str,
    channels: &[(String, String)],
    greatest: BTreeMap<String, u64>,
) {
    let mut device = server.connect().await;
    let ids: Vec<&str> = channels.iter().map(|(c, _)| c.as_str()).collect();
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": ids}))
        .await;
    assert_eq!(reply["uaid"], json!(uaid));
    let expected: Vec<_> = greatest
        .into_iter()
        .map(|(channel, version)| (channel, version, None))
        .collect();
    assert_eq!(updates(&device.recv_notification().await), expected);
    device.close().await;
}

/// Records a version the server accepted for a channel (it keeps the greatest).
fn accepted(greatest: &mut BTreeMap<String, u64>, channel: &str, version: u64) {
    let entry = greatest.entry(channel.to_owned()).or_default();
    *entry = (*entry).max(version);
}

#[tokio::test]
async fn a_storm_of_ten_times_the_inflight_limit_is_served_or_shed_and_nothing_accepted_is_lost() {
    // Only the in-flight guard: this test's PUTs must not be shed by queue delay when
    // the machine is busy (the other test here runs a storm at the same time).
    let server = Server::builder()
        .set("server", "max_inflight_requests", &CAPACITY.to_string())
        .set("server", "max_queue_delay", "\"0\"")
        .start()
        .await;
    let client = client();

    // An offline device whose channels take the storm.
    let (offline_uaid, channels) = offline_device(&server).await;
    server.wait_for_clients(0).await;
    let mut greatest = BTreeMap::new();

    // 1. Senders that never finish their bodies hold no slot (only their
    //    connections): a PUT behind them is served at once. Shedding by slots, made
    //    deterministic with a stalled store, is
    //    `a_stalled_store_holds_every_slot_and_the_excess_is_shed_with_503`.
    let mut stalled = Vec::new();
    for (_, endpoint) in channels.iter().take(2 * CAPACITY) {
        stalled.push(stall_body(&server, endpoint).await);
    }
    let (probe_channel, probe_endpoint) = &channels[CAPACITY];
    assert_eq!(put(&client, probe_endpoint, 1000).await, 202);
    accepted(&mut greatest, probe_channel, 1000);

    // Devices are not endpoint requests: a device connects, says hello and registers.
    let (mut device, _) = server.device().await;
    let channel = chid();
    let live_endpoint = server.reachable(&device.register(&channel).await);
    device.ping().await;
    assert_eq!(server.status().await["status"], json!("OK"));
    drop(stalled);
    server.put_version(&live_endpoint, 1, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 1, None)]
    );

    // 2. A real storm: STORM app servers PUT as fast as they can, while a well-behaved
    //    one retries its 503s until its update reaches the device.
    let storm = join_all((0..STORM).map(|worker| {
        let client = client.clone();
        let channels = &channels;
        async move {
            let mut results = Vec::new();
            for k in 0..PUTS_EACH {
                let (channel, endpoint) = &channels[(worker + k as usize) % channels.len()];
                let version = 100_000 + (worker as u64) * 1000 + k;
                let status = put(&client, endpoint, version).await;
                assert!(status == 202 || status == 503, "storm PUT got {status}");
                results.push((channel.clone(), version, status));
            }
            results
        }
    }));
    let well_behaved = async {
        let mut shed = 0;
        loop {
            match put(&client, &live_endpoint, 2).await {
                200 => return shed,
                503 => shed += 1,
                other => panic!("well-behaved PUT got {other}"),
            }
            assert!(
                shed < 100_000,
                "the well-behaved app server never got through"
            );
        }
    };
    let (results, shed_for_device) = tokio::join!(storm, well_behaved);
    let results: Vec<_> = results.into_iter().flatten().collect();
    let shed = results.iter().filter(|(_, _, s)| *s == 503).count();
    eprintln!(
        "storm: {} PUTs, {shed} shed with 503; the well-behaved PUT was shed {shed_for_device} times",
        results.len()
    );
    for (channel, version, status) in &results {
        if *status == 202 {
            accepted(&mut greatest, channel, *version);
        }
    }
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 2, None)]
    );

    // 3. After the storm everything answers normally.
    server.put_version(&live_endpoint, 3, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 3, None)]
    );
    let (last_channel, last_endpoint) = &channels[0];
    server.put_version(last_endpoint, 1_000_000, 202).await;
    accepted(&mut greatest, last_channel, 1_000_000);
    assert_eq!(server.status().await["status"], json!("OK"));

    assert_offline_device_gets(&server, &offline_uaid, &channels, greatest).await;
    device.close().await;
}

/// `simplepush_requests_shed_total` for `reason`, from the server's `/metrics`.
async fn shed_total(server: &Server, reason: &str) -> u64 {
    let body = server.metrics_text().await;
    let label = format!("reason=\"{reason}\"");
    let line = body
        .lines()
        .find(|line| line.starts_with("simplepush_requests_shed_total{") && line.contains(&label))
        .unwrap_or_else(|| panic!("no shed counter for {reason} in\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// PUTs `version` until it is accepted (200 or 202), as a well-behaved app server
/// does, only without waiting out `Retry-After`; returns the status and the 503s.
async fn put_until_accepted(client: &reqwest::Client, url: &str, version: u64) -> (u16, u64) {
    let deadline = Instant::now() + PATIENCE;
    let mut shed = 0;
    loop {
        match put(client, url, version).await {
            503 => shed += 1,
            status => return (status, shed),
        }
        assert!(
            Instant::now() < deadline,
            "PUT version={version} never got through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_behind_by_more_than_max_queue_delay_sheds_with_503_and_recovers() {
    let server = Server::builder()
        .set("server", "max_queue_delay", TINY_QUEUE_DELAY)
        .start()
        .await;
    let client = client();

    // An offline device whose channels take the storm, and a connected one.
    let (offline_uaid, channels) = offline_device(&server).await;
    let (mut device, _) = server.device().await;
    let live_channel = chid();
    let live_endpoint = server.reachable(&device.register(&live_channel).await);
    server.wait_for_clients(1).await;
    assert_eq!(shed_total(&server, "queue_delay").await, 0);

    // The storm: hundreds of PUTs in flight at once, each answered at once by a debug
    // build on a machine it shares with them, keep the server's runtime behind. It
    // goes on until the server has shed enough of them; every 503 it gets must be one.
    let stop = Arc::new(AtomicBool::new(false));
    let shed = Arc::new(AtomicU64::new(0));
    let next_version = Arc::new(AtomicU64::new(100_000));
    let channels = Arc::new(channels);
    let storm: Vec<_> = (0..STORM_TASKS)
        .map(|task| {
            let (stop, shed, next_version, channels) = (
                stop.clone(),
                shed.clone(),
                next_version.clone(),
                channels.clone(),
            );
            tokio::spawn(async move {
                let client = client_with_timeout(PATIENCE);
                let loops = (0..STORM_CONCURRENCY).map(|i| {
                    let (client, stop, shed) = (&client, &stop, &shed);
                    let (next_version, channels) = (&next_version, &channels);
                    async move {
                        let mut accepted = Vec::new();
                        let (_, endpoint) = &channels[(task + i) % channels.len()];
                        while !stop.load(Ordering::Relaxed) {
                            let version = next_version.fetch_add(1, Ordering::Relaxed);
                            match put_reason(client, endpoint, version).await {
                                (202, _) => accepted.push(((task + i) % channels.len(), version)),
                                (503, reason) => {
                                    assert!(reason.contains("overloaded"), "503 reason {reason}");
                                    shed.fetch_add(1, Ordering::Relaxed);
                                }
                                (status, _) => panic!("storm PUT got {status}"),
                            }
                        }
                        accepted
                    }
                });
                join_all(loops)
                    .await
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Meanwhile a well-behaved app server retries until its update reaches the device.
    let well_behaved = put_until_accepted(&client, &live_endpoint, 1);
    let enough_shed = async {
        let deadline = Instant::now() + PATIENCE;
        while shed.load(Ordering::Relaxed) < SHED_WANTED {
            assert!(
                Instant::now() < deadline,
                "the storm never put the server {TINY_QUEUE_DELAY} behind: {} shed",
                shed.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
    };
    let ((status, well_behaved_shed), ()) = tokio::join!(well_behaved, enough_shed);
    assert_eq!(
        status, 200,
        "the well-behaved PUT reaches the connected device"
    );
    let mut greatest: BTreeMap<String, u64> = BTreeMap::new();
    let mut accepted_count = 0;
    for task in storm {
        for (channel, version) in task.await.unwrap() {
            accepted(&mut greatest, &channels[channel].0, version);
            accepted_count += 1;
        }
    }
    let storm_shed = shed.load(Ordering::Relaxed);
    eprintln!(
        "storm: {accepted_count} accepted, {storm_shed} shed; the well-behaved PUT was shed \
         {well_behaved_shed} times"
    );
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(live_channel.clone(), 1, None)]
    );

    // After the storm the server catches up and accepts again. (On a busy machine a
    // runtime can stay a tiny 2 ms behind for a while: retry as an app server would.)
    let (status, after_shed) = put_until_accepted(&client, &live_endpoint, 2).await;
    assert_eq!(status, 200);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(live_channel.clone(), 2, None)]
    );
    device.ping().await;
    let (last_channel, last_endpoint) = &channels[0];
    let (status, last_shed) = put_until_accepted(&client, last_endpoint, 1_000_000).await;
    assert_eq!(status, 202);
    accepted(&mut greatest, last_channel, 1_000_000);

    // Every shed request was counted once, under its reason; none by the in-flight
    // limit, which was never near.
    let seen = storm_shed + well_behaved_shed + after_shed + last_shed;
    assert_eq!(shed_total(&server, "queue_delay").await, seen);
    assert_eq!(shed_total(&server, "inflight").await, 0);
    assert_eq!(server.status().await["status"], json!("OK"));

    assert_offline_device_gets(&server, &offline_uaid, &channels, greatest).await;
    device.close().await;
}

/// Holds a memory store's update writes at a gate until the test opens it: the PUTs
/// that reach the store hold their in-flight slots for as long as the test wants.
struct Stall {
    gate: tokio::sync::Semaphore,
    waiting: AtomicU64,
}

impl Hook for Stall {
    async fn around<T: Send>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        if op == "put_update" {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            // Closing the gate is what opens it: every waiter gets its error at once.
            let _ = self.gate.acquire().await;
        }
        call.await
    }
}

/// The in-flight guard on its own, deterministically: a server in this process on a
/// store whose writes stall. `max_inflight_requests` PUTs reach the store and hold every
/// slot; the next PUTs to valid endpoints are shed with 503 and `Retry-After` (counted
/// as `inflight`), while bad parameters and forged tokens are still answered 400 and 404.
#[tokio::test]
async fn a_stalled_store_holds_every_slot_and_the_excess_is_shed_with_503() {
    let store = Arc::new(Hooked::new(
        Arc::new(MemoryStore::new()),
        Stall {
            gate: tokio::sync::Semaphore::new(0),
            waiting: AtomicU64::new(0),
        },
    ));
    let mut config = Config::default();
    config.server.ws_addr = "127.0.0.1:0".parse().unwrap();
    config.server.endpoint_addr = "127.0.0.1:0".parse().unwrap();
    config.server.admin_addr = "127.0.0.1:0".parse().unwrap();
    config.server.max_inflight_requests = CAPACITY;
    config.server.max_queue_delay = Duration::ZERO;
    let key = simplepush::app_server::token::generate_key();
    let shutdown = CancellationToken::new();
    let server = simplepush::server::Server::bind(
        &config,
        store.clone(),
        std::slice::from_ref(&key),
        shutdown.clone(),
    )
    .unwrap();
    let base = format!("http://{}", server.endpoint_addr().unwrap());
    let admin = format!("http://{}", server.admin_addr().unwrap());
    let running = tokio::spawn(server.run());

    let tokens = simplepush::app_server::token::TokenCodec::new(&[key]).unwrap();
    let mut endpoints = Vec::new();
    for _ in 0..CAPACITY + 1 {
        let uaid = Uaid::new(uuid::Uuid::new_v4().simple().to_string());
        let channel = ChannelId::new(chid());
        // Seen now: retention (on by default) keeps them for `device_ttl`.
        let now = common::unix_now();
        store.register(&uaid, &channel, 10, now).await.unwrap();
        endpoints.push(format!("{base}/update/{}", tokens.encode(&uaid, &channel)));
    }

    let client = client();
    let held: Vec<_> = endpoints[..CAPACITY]
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { put(&client, &url, 10 + i as u64).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.hook().waiting.load(Ordering::SeqCst) < CAPACITY as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the PUTs never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let spare = &endpoints[CAPACITY];
    let statuses = join_all((0..STORM).map(|i| put_reason(&client, spare, 100 + i as u64))).await;
    for (status, reason) in &statuses {
        assert_eq!(*status, 503, "with every slot held each PUT is shed");
        assert_eq!(reason, "too many requests in flight");
    }
    // Parameters and the token are checked before a slot is needed.
    let bad_version = client.put(spare).body("version=-1").send().await.unwrap();
    assert_eq!(bad_version.status().as_u16(), 400);
    let forged = client
        .put(format!(
            "{base}/update/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        ))
        .body("version=1")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 404);
    let metrics = client.get(format!("{admin}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("simplepush_requests_shed_total")
                && l.contains("\"inflight\"")
                && l.ends_with(&format!(" {STORM}"))),
        "{metrics}"
    );

    // The store comes back: the held PUTs are stored, and the next one gets a slot.
    store.hook().gate.close();
    for held in held {
        assert_eq!(held.await.unwrap(), 202);
    }
    assert_eq!(put(&client, spare, 1000).await, 202);
    shutdown.cancel();
    tokio::time::timeout(2 * WAIT, running)
        .await
        .unwrap()
        .unwrap();
}
