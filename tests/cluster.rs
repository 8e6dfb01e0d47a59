//! Cluster routing (PROTOCOL.md §7) on real processes: nodes sharing two memcached
//! servers forward live updates to the node holding the device, close its stale socket
//! when it reconnects elsewhere, and fall back to "stored" when that node is dead.

#![cfg(feature = "memcache")]

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{End, Memcached, Reply, Server, WAIT, chid, hex_id, http, http_with, updates};
use serde_json::{Value, json};

/// Memcached servers and cluster nodes sharing them, a token key and a router secret.
/// Nodes are declared first so they stop before the memcached they use.
struct Cluster {
    nodes: Vec<Server>,
    memcached: Vec<Memcached>,
    secret: String,
}

impl Cluster {
    /// Starts two memcached servers and `nodes` nodes, all with both servers in
    /// `[store] servers`, one shared token key and one shared router secret.
    async fn start(nodes: usize) -> Cluster {
        let memcached = vec![Memcached::start().await, Memcached::start().await];
        let servers: Vec<String> = memcached
            .iter()
            .map(|m| format!("\"127.0.0.1:{}\"", m.port))
            .collect();
        let servers = format!("[{}]", servers.join(", "));
        let key = genkey();
        let secret = hex_id();
        let mut started = Vec::with_capacity(nodes);
        for _ in 0..nodes {
            let node = Server::builder()
                .set("store", "backend", "\"memcache\"")
                .set("store", "servers", &servers)
                .set("server", "token_keys", &format!("[\"{key}\"]"))
                .set("router", "addr", "\"127.0.0.1:0\"")
                .set("router", "secret", &format!("\"{secret}\""))
                .start()
                .await;
            assert!(node.router.is_some(), "a memcache node binds a router");
            started.push(node);
        }
        Cluster {
            nodes: started,
            memcached,
            secret,
        }
    }
}

/// A fresh token key from `simplepush genkey` (base64url of 32 bytes, unpadded).
fn genkey() -> String {
    // A short-lived child; blocking for it is harmless in a test.
    let output = Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .arg("genkey")
        .output()
        .unwrap();
    assert!(output.status.success(), "simplepush genkey: {output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(key.len(), 43, "genkey printed {key:?}");
    key
}

/// The same pushEndpoint (same token) on `node`'s endpoint listener.
fn on_node(push_endpoint: &str, node: &Server) -> String {
    let (_, token) = push_endpoint
        .split_once("/update/")
        .unwrap_or_else(|| panic!("no /update/ in {push_endpoint}"));
    node.endpoint_url(&format!("/update/{token}"))
}

/// A hello that resumes `uaid` with its channels; asserts the uaid is kept.
async fn resume(device: &mut common::Device, uaid: &str, channels: &[&str]) {
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": channels}))
        .await;
    assert_eq!(reply["status"], json!(200), "hello reply {reply}");
    assert_eq!(reply["uaid"], json!(uaid), "the uaid must be kept: {reply}");
}

/// One request to a router listener, with an optional `Authorization` header.
async fn router_request(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<String>,
) -> Reply {
    let mut headers = Vec::new();
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    http_with(method, url, &headers, body.as_deref()).await
}

/// A well-formed routed update, so that only the secret and the uaid decide the answer.
fn routed_update(channel: &str, version: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"channelID": channel, "version": version, "expiresAt": now + 3600}).to_string()
}

#[tokio::test]
async fn updates_follow_the_device_across_nodes_and_survive_a_dead_node() {
    let mut cluster = Cluster::start(3).await;
    let [n1, n2, n3] = cluster.nodes.as_mut_slice() else {
        panic!("three nodes expected");
    };

    // On node 1; the app server PUTs to node 3, which forwards to node 1.
    let (mut on1, uaid) = n1.device().await;
    let channel = chid();
    let endpoint = on1.register(&channel).await;
    let via3 = on_node(&endpoint, n3);
    n3.put_version(&via3, 1, 200).await;
    let frame = on1.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channel.clone(), 1, None)]);
    on1.ack(&channel, 1).await;
    on1.ping().await;

    // Reconnecting to node 2 closes the stale socket on node 1 with 4000.
    let mut on2 = n2.connect().await;
    resume(&mut on2, &uaid, &[&channel]).await;
    assert_eq!(
        on1.recv_end_within(WAIT).await,
        End::Close(4000, "replaced".to_owned()),
        "node 1's socket must be closed as replaced"
    );
    // Version 1 was acked: no flush comes before the ping reply.
    on2.ping().await;
    n3.put_version(&via3, 2, 200).await;
    let frame = on2.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channel.clone(), 2, None)]);
    on2.ack(&channel, 2).await;
    on2.ping().await;

    // The node the device left forwards too, data included.
    let reply = n1
        .put(&on_node(&endpoint, n1), "version=3&data=moved")
        .await;
    assert_eq!(reply.status, 200, "PUT via node 1: {}", reply.body);
    let frame = on2.recv_notification().await;
    assert_eq!(
        updates(&frame),
        vec![(channel.clone(), 3, Some("moved".to_owned()))]
    );
    on2.ack(&channel, 3).await;
    on2.ping().await;

    // Node 2 dies: the update is stored (202) and flushed at the next hello elsewhere.
    n2.kill();
    assert_eq!(on2.recv_end_within(WAIT).await, End::Dropped);
    n3.put_version(&via3, 4, 202).await;
    let mut back_on1 = n1.connect().await;
    resume(&mut back_on1, &uaid, &[&channel]).await;
    let flush = back_on1.recv_notification().await;
    assert_eq!(updates(&flush), vec![(channel.clone(), 4, None)]);
    assert_eq!(flush.get("expired"), None, "nothing expired: {flush}");
    back_on1.ack(&channel, 4).await;
    back_on1.ping().await;

    // The record now names node 1 again: node 3 forwards there.
    n3.put_version(&via3, 5, 200).await;
    let frame = back_on1.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channel.clone(), 5, None)]);

    // Node 3 reports what it saw of its peers.
    let reply = http("GET", &n3.admin_url("/realstatus/"), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let peers = &reply.json()["cluster"]["peers"];
    assert_eq!(
        peers[n2.router_url("")]["reachable"],
        json!(false),
        "node 2 is down: {peers}"
    );
    assert_eq!(
        peers[n1.router_url("")]["reachable"],
        json!(true),
        "node 1 answered: {peers}"
    );
}

#[tokio::test]
async fn router_requires_the_shared_secret() {
    let cluster = Cluster::start(1).await;
    let node = &cluster.nodes[0];
    let (mut device, uaid) = node.device().await;
    let channel = chid();
    device.register(&channel).await;
    let route = node.router_url(&format!("/route/{uaid}"));
    let good = format!("Bearer {}", cluster.secret);
    let wrong = format!("Bearer {}", hex_id());

    // No header, a wrong secret, and the right secret without the Bearer scheme.
    for authorization in [None, Some(wrong.as_str()), Some(cluster.secret.as_str())] {
        let routed = Some(routed_update(&channel, 7));
        for (method, body) in [("PUT", routed), ("DELETE", None)] {
            let reply = router_request(method, &route, authorization, body).await;
            assert_eq!(
                reply.status, 401,
                "{method} with Authorization {authorization:?}: {}",
                reply.body
            );
            reply.assert_error(401, &["Unauthorized"]);
        }
    }
    // Nothing got through: no notification, and the socket is still open.
    device.ping().await;

    // With the secret, a uaid not connected here is a 404 for both verbs.
    let elsewhere = node.router_url(&format!("/route/{}", hex_id()));
    let routed = Some(routed_update(&chid(), 7));
    for (method, body) in [("PUT", routed), ("DELETE", None)] {
        let reply = router_request(method, &elsewhere, Some(&good), body).await;
        assert_eq!(
            reply.status, 404,
            "{method} for another uaid: {}",
            reply.body
        );
        reply.assert_error(404, &["Not Found"]);
    }

    // And the connected device is reached.
    let reply = router_request("PUT", &route, Some(&good), Some(routed_update(&channel, 8))).await;
    assert_eq!(reply.status, 200, "routed PUT: {}", reply.body);
    let frame = device.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channel, 8, None)]);

    // A DELETE for a device whose node record names this very node is a late request
    // from a node the device passed through: refused (409), the socket stays. (A DELETE
    // from the device's new node closes it: see the three-node test.)
    let reply = router_request("DELETE", &route, Some(&good), None).await;
    assert_eq!(reply.status, 409, "routed DELETE: {}", reply.body);
    reply.assert_error(409, &["Conflict"]);
    device.ping().await;
}

#[tokio::test]
async fn realstatus_reports_the_memcache_store_and_the_cluster() {
    let mut cluster = Cluster::start(1).await;
    let node = &cluster.nodes[0];
    for url in [
        node.admin_url("/realstatus/"),
        node.admin_url("/realstatus"),
    ] {
        let reply = http("GET", &url, None, None).await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["status"], json!("OK"), "{url}: {body}");
        assert_eq!(body["store"]["backend"], json!("memcache"), "{url}: {body}");
        assert_eq!(body["store"]["status"], json!("OK"), "{url}: {body}");
        let cluster_health = &body["cluster"];
        assert!(
            cluster_health.is_object(),
            "{url}: no cluster object in {body}"
        );
        assert_eq!(
            cluster_health["node"],
            Value::String(node.router_url("")),
            "{url}: the node's own router URL"
        );
    }
    // The public listeners tell the internet nothing about the cluster.
    for url in [
        node.endpoint_url("/realstatus/"),
        node.ws_http_url("/realstatus"),
    ] {
        let reply = http("GET", &url, None, None).await;
        assert_eq!(reply.body, r#"{"status":"OK"}"#, "{url}");
    }

    // Both memcached servers are checked: losing either one is a 503.
    cluster.memcached[1].stop();
    let node = &cluster.nodes[0];
    let reply = http("GET", &node.admin_url("/realstatus/"), None, None).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.json()["store"]["status"],
        json!("ERROR"),
        "{}",
        reply.body
    );
}
