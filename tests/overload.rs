//! Overload of the endpoint (PROTOCOL.md §5): with a small `max_inflight_requests`, ten
//! times that many concurrent PUTs. The server stays up, sheds the excess with 503 and
//! `Retry-After`, stores every update it accepted, keeps serving devices, and answers
//! normally once the storm is over. No latency is asserted (that is for benchmarks).

mod common;

use std::collections::BTreeMap;

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

/// PUTs `version` and returns the status; a 503 must carry `Retry-After` and a JSON body.
async fn put(client: &reqwest::Client, url: &str, version: u64) -> u16 {
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
    }
    status
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
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

/// Records a version the server accepted for a channel (it keeps the greatest).
fn accepted(greatest: &mut BTreeMap<String, u64>, channel: &str, version: u64) {
    let entry = greatest.entry(channel.to_owned()).or_default();
    *entry = (*entry).max(version);
}

#[tokio::test]
async fn ten_times_the_inflight_limit_is_shed_with_503_and_everyone_else_is_served() {
    let server = Server::builder()
        .set("server", "max_inflight_requests", &CAPACITY.to_string())
        .start()
        .await;
    let client = client();

    // An offline device whose channels take the storm.
    let (mut offline, offline_uaid) = server.device().await;
    let mut channels = Vec::new();
    for _ in 0..8 {
        let channel = chid();
        let endpoint = server.reachable(&offline.register(&channel).await);
        channels.push((channel, endpoint));
    }
    offline.close().await;
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

    // Every update answered 202 was stored: the offline device gets, per channel, the
    // greatest version it was sent and nothing it was refused.
    let mut offline = server.connect().await;
    let ids: Vec<&str> = channels.iter().map(|(c, _)| c.as_str()).collect();
    let reply = offline
        .hello_with(json!({"messageType": "hello", "uaid": offline_uaid, "channelIDs": ids}))
        .await;
    assert_eq!(reply["uaid"], json!(offline_uaid));
    let expected: Vec<_> = greatest
        .into_iter()
        .map(|(channel, version)| (channel, version, None))
        .collect();
    assert_eq!(updates(&offline.recv_notification().await), expected);
    offline.close().await;
    device.close().await;
}
