//! Updates answered 202 survive `kill -9` on the durable backends: the real binary is
//! killed with SIGKILL while devices are offline, started again on the same data, and
//! every device gets its latest versions; endpoints minted before the crash still work.
//! The server is also killed in the middle of a stream of concurrent PUTs: every PUT it
//! answered 202 before dying is delivered after the restart.

mod common;

#[cfg(any(feature = "sqlite", feature = "rocksdb"))]
mod durable {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use tokio::sync::Notify;

    use crate::common::{Server, WAIT, chid, updates};

    /// The path and query of a pushEndpoint, so it can be sent to a restarted server,
    /// whose port differs.
    fn path_of(push_endpoint: &str) -> &str {
        let after_scheme = push_endpoint
            .split_once("://")
            .map_or(push_endpoint, |(_, r)| r);
        &after_scheme[after_scheme.find('/').unwrap_or(after_scheme.len())..]
    }

    async fn start(backend: &str, data: &Path) -> Server {
        Server::builder()
            .set("store", "backend", &format!("\"{backend}\""))
            .set(
                "store",
                "path",
                &format!("{:?}", data.display().to_string()),
            )
            .start()
            .await
    }

    pub async fn updates_survive_kill_9(backend: &str) {
        let data = tempfile::tempdir().unwrap();
        let data = data.path().join("store");
        let server = start(backend, &data).await;

        // Three devices with three channels each, then offline.
        let mut devices = Vec::new();
        for _ in 0..3 {
            let mut device = server.connect().await;
            let uaid = device.hello("").await;
            let mut channels = Vec::new();
            for _ in 0..3 {
                let channel = chid();
                let endpoint = device.register(&channel).await;
                channels.push((channel, endpoint));
            }
            device.close().await;
            devices.push((uaid, channels));
        }
        server.wait_for_clients(0).await;

        // Versions go up, and a stale lower one arrives last: 202 for each.
        for (d, (_, channels)) in devices.iter().enumerate() {
            for (c, (_, endpoint)) in channels.iter().enumerate() {
                let latest = 100 + (d * 10 + c) as u64;
                for version in [5, latest, 7] {
                    server.put_version(endpoint, version, 202).await;
                }
            }
        }
        drop(server); // SIGKILL: no shutdown, no flush.

        let server = start(backend, &data).await;
        for (d, (uaid, channels)) in devices.iter().enumerate() {
            let mut device = server.connect().await;
            let ids: Vec<&str> = channels.iter().map(|(c, _)| c.as_str()).collect();
            let reply = device
                .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": ids}))
                .await;
            assert_eq!(
                reply["uaid"],
                json!(uaid),
                "the store still knows the device"
            );
            let frame = device.recv_notification().await;
            let mut expected: Vec<(String, u64, Option<String>)> = channels
                .iter()
                .enumerate()
                .map(|(c, (channel, _))| (channel.clone(), 100 + (d * 10 + c) as u64, None))
                .collect();
            expected.sort();
            assert_eq!(updates(&frame), expected, "device {d} after the crash");

            // Acknowledge everything at once (a partial ack would flush the rest).
            let acks: Vec<_> = expected
                .iter()
                .map(|(channel, version, _)| json!({"channelID": channel, "version": version}))
                .collect();
            device
                .send(json!({"messageType": "ack", "updates": acks}))
                .await;
            device.ping().await;

            // The endpoints minted before the crash still open and deliver live.
            for (channel, endpoint) in channels {
                let url = server.endpoint_url(path_of(endpoint));
                server.put_version(&url, 2000, 200).await;
                let live = device.recv_notification().await;
                assert_eq!(updates(&live), vec![(channel.clone(), 2000, None)]);
            }
        }
    }

    /// Devices in the stream test, each with this many channels.
    const DEVICES: usize = 4;
    const CHANNELS: usize = 8;
    /// PUTs answered before the kill: a few per channel, well inside the stream (every
    /// one an fsync: a busy disk may take a while).
    const ANSWERED_BEFORE_KILL: usize = 96;
    /// Upper bound of each channel's stream, far beyond what runs before the kill.
    const MAX_VERSION: u64 = 100_000;

    /// What one channel's writer saw: the last version answered 202, the last one sent.
    struct Stream {
        channel: String,
        acknowledged: u64,
        sent: u64,
    }

    /// Sends versions 1, 2, 3, ... to one endpoint until the server goes away.
    async fn stream_puts(
        client: reqwest::Client,
        channel: String,
        url: String,
        answered: Arc<AtomicUsize>,
        enough: Arc<Notify>,
    ) -> Stream {
        let mut acknowledged = 0;
        for version in 1..=MAX_VERSION {
            let response = client
                .put(&url)
                .body(format!("version={version}"))
                .send()
                .await;
            let Ok(response) = response else {
                return Stream {
                    channel,
                    acknowledged,
                    sent: version,
                };
            };
            assert_eq!(response.status().as_u16(), 202, "PUT version={version}");
            acknowledged = version;
            if answered.fetch_add(1, Ordering::SeqCst) + 1 == ANSWERED_BEFORE_KILL {
                enough.notify_one();
            }
        }
        panic!("the stream to {channel} ended before the server was killed");
    }

    pub async fn answered_puts_survive_kill_9_mid_stream(backend: &str) {
        let data = tempfile::tempdir().unwrap();
        let data = data.path().join("store");
        let mut server = start(backend, &data).await;

        let mut devices = Vec::new();
        for _ in 0..DEVICES {
            let mut device = server.connect().await;
            let uaid = device.hello("").await;
            let mut channels = Vec::new();
            for _ in 0..CHANNELS {
                let channel = chid();
                let endpoint = server.reachable(&device.register(&channel).await);
                channels.push((channel, endpoint));
            }
            device.close().await;
            devices.push((uaid, channels));
        }
        server.wait_for_clients(0).await;

        // One writer per channel, all at once; SIGKILL once enough PUTs were answered.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(WAIT)
            .build()
            .unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let enough = Arc::new(Notify::new());
        let writers: Vec<_> = devices
            .iter()
            .flat_map(|(_, channels)| channels.iter())
            .map(|(channel, url)| {
                tokio::spawn(stream_puts(
                    client.clone(),
                    channel.clone(),
                    url.clone(),
                    answered.clone(),
                    enough.clone(),
                ))
            })
            .collect();
        tokio::time::timeout(12 * WAIT, enough.notified())
            .await
            .expect("the PUT stream stalled");
        server.kill();
        let mut streams = std::collections::HashMap::new();
        for writer in writers {
            let stream = writer.await.unwrap();
            streams.insert(stream.channel.clone(), stream);
        }
        let total: u64 = streams.values().map(|s| s.acknowledged).sum();
        assert!(total >= ANSWERED_BEFORE_KILL as u64, "{total} answered");
        let unanswered = streams.values().filter(|s| s.sent > s.acknowledged).count();
        eprintln!(
            "{backend}: killed after {total} answered PUTs, {unanswered} channels had one in flight"
        );

        let server = start(backend, &data).await;
        for (uaid, channels) in &devices {
            let mut device = server.connect().await;
            let ids: Vec<&str> = channels.iter().map(|(c, _)| c.as_str()).collect();
            let reply = device
                .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": ids}))
                .await;
            assert_eq!(
                reply["uaid"],
                json!(uaid),
                "the store still knows the device"
            );
            let delivered = updates(&device.recv_notification().await);
            for (channel, _) in channels {
                let stream = &streams[channel];
                let version = delivered
                    .iter()
                    .find(|(c, _, _)| c == channel)
                    .map(|(_, v, _)| *v);
                if stream.acknowledged > 0 {
                    let version = version.unwrap_or_else(|| {
                        panic!(
                            "{channel}: version {} was answered 202, nothing delivered",
                            stream.acknowledged
                        )
                    });
                    assert!(
                        (stream.acknowledged..=stream.sent).contains(&version),
                        "{channel}: delivered {version}; answered up to {}, sent up to {}",
                        stream.acknowledged,
                        stream.sent
                    );
                } else if let Some(version) = version {
                    assert!(version <= stream.sent, "{channel}: never sent {version}");
                }
            }
            assert!(
                delivered
                    .iter()
                    .all(|(c, _, _)| channels.iter().any(|(own, _)| own == c)),
                "another device's channel in {delivered:?}"
            );
            device.close().await;
        }
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_answered_puts_survive_kill_9_mid_stream() {
    durable::answered_puts_survive_kill_9_mid_stream("sqlite").await;
}

#[cfg(feature = "rocksdb")]
#[tokio::test]
async fn rocksdb_answered_puts_survive_kill_9_mid_stream() {
    durable::answered_puts_survive_kill_9_mid_stream("rocksdb").await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_updates_survive_kill_9() {
    durable::updates_survive_kill_9("sqlite").await;
}

#[cfg(feature = "rocksdb")]
#[tokio::test]
async fn rocksdb_updates_survive_kill_9() {
    durable::updates_survive_kill_9("rocksdb").await;
}
