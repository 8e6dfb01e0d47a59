//! Overload of the endpoint (PROTOCOL.md §5), by each of its two guards: a small
//! `max_inflight_requests` with ten times that many concurrent PUTs, and a tiny
//! `max_queue_delay` with a storm that keeps the server's runtime behind. The server
//! stays up, sheds the excess with 503 and `Retry-After`, stores every update it
//! accepted, keeps serving devices, and answers normally once the storm is over. No
//! latency is asserted (that is for benchmarks).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, WAIT, chid, updates};
use futures_util::future::join_all;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Reads an HTTP reply's status line from a raw connection.
async fn read_status(stream: &mut TcpStream) -> u16 {
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while !reply.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("no reply")
            .unwrap();
        assert!(n > 0, "connection ended without a reply");
        reply.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&reply);
    line.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("status line {line}"))
}

/// Opens a PUT to `endpoint` whose body never finishes (two of its ten bytes are
/// missing), so it holds a request slot until the server's body timeout.
async fn hold_slot(server: &Server, endpoint: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.endpoint).await.unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nversion=",
        path_of(endpoint)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Whether the server has already answered (or closed) a held request.
fn was_answered(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("held request: {e}"),
    }
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
async fn ten_times_the_inflight_limit_is_shed_with_503_and_everyone_else_is_served() {
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

    // 1. Every slot taken by a request whose body never finishes: the server cannot
    //    get through them, so what comes next is shed, deterministically.
    let mut holders = Vec::new();
    for (i, (_, endpoint)) in channels.iter().take(CAPACITY).enumerate() {
        holders.push((i, hold_slot(&server, endpoint).await));
    }
    // Until the holders have their slots, a probe may still get through (202), and a
    // holder that came second to a probe is itself shed: it is sent again. On a loaded
    // machine the server may take a while to read the holders' headers.
    let (probe_channel, probe_endpoint) = &channels[CAPACITY];
    let deadline = tokio::time::Instant::now() + 6 * WAIT;
    let mut version = 1000;
    loop {
        version += 1;
        match put(&client, probe_endpoint, version).await {
            503 => break,
            202 => accepted(&mut greatest, probe_channel, version),
            other => panic!("probe PUT got {other}"),
        }
        for (i, stream) in &mut holders {
            if was_answered(stream) {
                *stream = hold_slot(&server, &channels[*i].1).await;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slots never filled"
        );
    }

    let storm = channels.iter().cycle().take(STORM).enumerate();
    let statuses =
        join_all(storm.map(|(i, (_, endpoint))| put(&client, endpoint, 5000 + i as u64))).await;
    assert!(
        statuses.iter().all(|s| *s == 503),
        "with every slot taken each PUT is shed: {statuses:?}"
    );

    // Devices are not endpoint requests: a device connects, says hello and registers.
    let (mut device, _) = server.device().await;
    let channel = chid();
    let live_endpoint = server.reachable(&device.register(&channel).await);
    device.ping().await;
    assert_eq!(server.status().await["status"], json!("OK"));

    // The held requests finish (versions 10..13) and free their slots.
    for (i, stream) in &mut holders {
        stream.write_all(format!("1{i}").as_bytes()).await.unwrap();
        assert_eq!(read_status(stream).await, 202, "held request {i}");
        accepted(&mut greatest, &channels[*i].0, 10 + *i as u64);
    }
    drop(holders);
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
