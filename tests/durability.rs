//! Updates answered 202 survive `kill -9` on the durable backends: the real binary is
//! killed with SIGKILL while devices are offline, started again on the same data, and
//! every device gets its latest versions; endpoints minted before the crash still work.
//! The server is also killed in the middle of a stream of concurrent PUTs: every PUT it
//! answered 202 before dying is delivered after the restart. The same holds for WebPush
//! (docs/protocol.md): every encrypted push answered 201 before the kill reaches the
//! browser after the restart, decrypted, in order, and its endpoints still take pushes.

mod common;

#[cfg(any(feature = "sqlite", feature = "rocksdb"))]
mod durable {
    use std::collections::HashMap;
    use std::future::Future;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use tokio::sync::Notify;

    use crate::common::webpush::{
        Browser, Push, Subscription, Vapid, assert_created, parse_notification,
    };
    use crate::common::{Builder, Server, WAIT, chid, updates};

    /// The path and query of a pushEndpoint, so it can be sent to a restarted server,
    /// whose port differs.
    fn path_of(push_endpoint: &str) -> &str {
        let after_scheme = push_endpoint
            .split_once("://")
            .map_or(push_endpoint, |(_, r)| r);
        &after_scheme[after_scheme.find('/').unwrap_or(after_scheme.len())..]
    }

    /// A server on this backend and data directory.
    fn builder(backend: &str, data: &Path) -> Builder {
        Server::builder()
            .set("store", "backend", &format!("\"{backend}\""))
            .set(
                "store",
                "path",
                &format!("{:?}", data.display().to_string()),
            )
    }

    async fn start(backend: &str, data: &Path) -> Server {
        builder(backend, data).start().await
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

    /// What one target's writer saw: the last number answered as stored, the last one
    /// sent.
    struct Stream {
        acknowledged: u64,
        sent: u64,
    }

    /// Sends 1, 2, 3, ... up to `max` through `send` until the server goes away: `send(n)`
    /// asserts the answer and is true, or is false when no answer came.
    async fn stream_until_killed<F, Fut>(
        target: String,
        max: u64,
        mut send: F,
        answered: Arc<AtomicUsize>,
        enough: Arc<Notify>,
        answered_before_kill: usize,
    ) -> Stream
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut acknowledged = 0;
        for n in 1..=max {
            if !send(n).await {
                return Stream {
                    acknowledged,
                    sent: n,
                };
            }
            acknowledged = n;
            if answered.fetch_add(1, Ordering::SeqCst) + 1 == answered_before_kill {
                enough.notify_one();
            }
        }
        panic!("the stream to {target} ended before the server was killed");
    }

    /// One writer per target, all at once; SIGKILL once `answered_before_kill` requests
    /// were answered. Answers what each target's writer saw.
    async fn kill_mid_stream<F, Fut>(
        server: &mut Server,
        backend: &str,
        writers: Vec<(String, F)>,
        max: u64,
        answered_before_kill: usize,
    ) -> HashMap<String, Stream>
    where
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let answered = Arc::new(AtomicUsize::new(0));
        let enough = Arc::new(Notify::new());
        let writers: Vec<_> = writers
            .into_iter()
            .map(|(target, send)| {
                let stream = stream_until_killed(
                    target.clone(),
                    max,
                    send,
                    answered.clone(),
                    enough.clone(),
                    answered_before_kill,
                );
                (target, tokio::spawn(stream))
            })
            .collect();
        tokio::time::timeout(12 * WAIT, enough.notified())
            .await
            .expect("the stream stalled");
        server.kill();
        let mut streams = HashMap::new();
        for (target, writer) in writers {
            streams.insert(target, writer.await.unwrap());
        }
        let total: u64 = streams.values().map(|s| s.acknowledged).sum();
        assert!(total >= answered_before_kill as u64, "{total} answered");
        let unanswered = streams.values().filter(|s| s.sent > s.acknowledged).count();
        eprintln!(
            "{backend}: killed after {total} answered requests, {unanswered} targets had one in flight"
        );
        streams
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(WAIT)
            .build()
            .unwrap()
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
        let client = client();
        let writers: Vec<_> = devices
            .iter()
            .flat_map(|(_, channels)| channels.iter())
            .map(|(channel, url)| {
                let (client, url) = (client.clone(), url.clone());
                let put = move |version: u64| {
                    let request = client.put(&url).body(format!("version={version}"));
                    async move {
                        let Ok(response) = request.send().await else {
                            return false;
                        };
                        assert_eq!(response.status().as_u16(), 202, "PUT version={version}");
                        true
                    }
                };
                (channel.clone(), put)
            })
            .collect();
        let streams = kill_mid_stream(
            &mut server,
            backend,
            writers,
            MAX_VERSION,
            ANSWERED_BEFORE_KILL,
        )
        .await;

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

    /// Subscriptions of the browser in the WebPush stream test.
    const SUBSCRIPTIONS: usize = 6;
    /// Pushes answered 201 before the kill (each an fsync, as above): more than one page
    /// of queued messages, so the restarted server delivers them page by page.
    const PUSHES_BEFORE_KILL: usize = 160;
    /// Each subscription's stream stops here; the server queues this many per channel.
    const MAX_PUSHES: u64 = 1000;
    /// The `TTL` of every push: well below `max_ttl`, so answered as sent.
    const PUSH_TTL: u64 = 3600;

    /// What subscription `index` of the stream test carries as its push number `n`.
    fn payload(index: usize, n: u64) -> String {
        format!("subscription {index} push {n}")
    }

    /// The push number of a payload of subscription `index`.
    fn payload_number(index: usize, plaintext: &[u8]) -> Option<u64> {
        let text = std::str::from_utf8(plaintext).ok()?;
        text.strip_prefix(&format!("subscription {index} push "))?
            .parse()
            .ok()
    }

    /// An encrypted push of payload `n` to subscription `index`: even ones are restricted
    /// (v2) and signed with VAPID, every third uses the legacy `aesgcm`.
    fn push(index: usize, subscription: &Subscription, vapid: &Vapid, n: u64) -> Push {
        let plaintext = payload(index, n);
        let push = Push::to(subscription).ttl(PUSH_TTL);
        let push = if index % 3 == 2 {
            push.aesgcm(subscription, plaintext.as_bytes())
        } else {
            push.aes128gcm(subscription, plaintext.as_bytes())
        };
        if index.is_multiple_of(2) {
            push.vapid(vapid)
        } else {
            push
        }
    }

    pub async fn answered_pushes_survive_kill_9_mid_stream(backend: &str) {
        let data = tempfile::tempdir().unwrap();
        let data = data.path().join("store");
        let max_queued = MAX_PUSHES.to_string();
        let mut server = builder(backend, &data)
            .protocol("max_queued_messages", &max_queued)
            .start()
            .await;

        let vapid = Arc::new(Vapid::new());
        let mut browser = Browser::connect(&server).await;
        for index in 0..SUBSCRIPTIONS {
            browser
                .subscribe((index.is_multiple_of(2)).then_some(&*vapid))
                .await;
        }
        let offline = browser.go_offline(&server, 0).await;

        // One app server per subscription, all at once; SIGKILL mid-stream.
        let client = client();
        let writers: Vec<_> = offline
            .subscriptions
            .iter()
            .enumerate()
            .map(|(index, subscription)| {
                let url = server.reachable(&subscription.endpoint);
                let channel = subscription.channel_id.clone();
                let (client, subscription, vapid) =
                    (client.clone(), subscription.clone(), vapid.clone());
                let send = move |n: u64| {
                    let request = push(index, &subscription, &vapid, n);
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let Ok(reply) = request.try_send(&client, &url).await else {
                            return false;
                        };
                        assert_created(&reply, PUSH_TTL);
                        true
                    }
                };
                (channel, send)
            })
            .collect();
        let streams = kill_mid_stream(
            &mut server,
            backend,
            writers,
            MAX_PUSHES,
            PUSHES_BEFORE_KILL,
        )
        .await;

        // Restarted on the same data (and token key): the endpoints keep their paths, on
        // the new port of the server's endpoint_url (which VAPID's `aud` names).
        let server = start(backend, &data).await;
        let mut offline = offline;
        for subscription in &mut offline.subscriptions {
            let path = path_of(&subscription.endpoint);
            subscription.endpoint = format!("http://localhost:{}{path}", server.endpoint.port());
        }
        let mut browser = offline.reconnect(&server).await;

        // Pages of queued messages until a ping finds none: each page decrypted, then
        // acknowledged in one frame (which sends the next page).
        let mut delivered: HashMap<String, Vec<u64>> = HashMap::new();
        let mut pages = 0;
        loop {
            browser.device().send_text("{}").await;
            let mut page = Vec::new();
            loop {
                let frame = browser.device().recv().await;
                if frame == json!({}) {
                    break;
                }
                page.push(parse_notification(frame));
            }
            if page.is_empty() {
                break;
            }
            pages += 1;
            for notification in &page {
                let channel = &notification.channel_id;
                let index = browser
                    .subscriptions
                    .iter()
                    .position(|s| &s.channel_id == channel)
                    .unwrap_or_else(|| panic!("notification for unknown channel {channel}"));
                let plaintext = browser.subscriptions[index].decrypt(notification);
                let n = payload_number(index, &plaintext).unwrap_or_else(|| {
                    panic!("{channel}: not a payload of its own: {plaintext:?}")
                });
                delivered.entry(channel.clone()).or_default().push(n);
            }
            let acks: Vec<_> = page
                .iter()
                .map(|n| json!({"channelID": n.channel_id, "version": n.version, "code": 100}))
                .collect();
            browser
                .device()
                .send(json!({"messageType": "ack", "updates": acks}))
                .await;
        }

        // Every push answered 201 arrived once, in order; the one in flight at most once.
        let total: usize = delivered.values().map(Vec::len).sum();
        eprintln!("{backend}: {total} messages delivered in {pages} pages after the restart");
        assert!(pages >= 2, "{total} messages in {pages} page(s)");
        for subscription in &browser.subscriptions {
            let channel = &subscription.channel_id;
            let stream = &streams[channel];
            let got = delivered.get(channel).map_or(&[][..], Vec::as_slice);
            let last = got.len() as u64;
            assert_eq!(
                got,
                (1..=last).collect::<Vec<_>>(),
                "{channel}: pushes delivered out of order, twice or with gaps"
            );
            assert!(
                (stream.acknowledged..=stream.sent).contains(&last),
                "{channel}: delivered 1..={last}; answered up to {}, sent up to {}",
                stream.acknowledged,
                stream.sent
            );
        }

        // Acknowledged means gone; the endpoints minted before the crash still deliver.
        browser.reconnect(&server).await;
        browser.expect_nothing().await;
        let subscriptions = browser.subscriptions.clone();
        for (index, subscription) in subscriptions.iter().enumerate() {
            let reply = push(index, subscription, &vapid, MAX_PUSHES + 1)
                .send(&server)
                .await;
            assert_created(&reply, PUSH_TTL);
            let (notification, plaintext) = browser.recv_decrypted().await;
            assert_eq!(notification.channel_id, subscription.channel_id);
            assert_eq!(plaintext, payload(index, MAX_PUSHES + 1).as_bytes());
            browser.ack(&notification).await;
        }
        browser.expect_nothing().await;
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

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_answered_pushes_survive_kill_9_mid_stream() {
    durable::answered_pushes_survive_kill_9_mid_stream("sqlite").await;
}

#[cfg(feature = "rocksdb")]
#[tokio::test]
async fn rocksdb_answered_pushes_survive_kill_9_mid_stream() {
    durable::answered_pushes_survive_kill_9_mid_stream("rocksdb").await;
}
