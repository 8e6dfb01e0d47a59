//! Updates answered 202 survive `kill -9` on the durable backends: the real binary is
//! killed with SIGKILL while devices are offline, started again on the same data, and
//! every device gets its latest versions; endpoints minted before the crash still work.

mod common;

#[cfg(any(feature = "sqlite", feature = "rocksdb"))]
mod durable {
    use std::path::Path;

    use serde_json::json;

    use crate::common::{Server, chid, updates};

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
