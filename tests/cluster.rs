//! Cluster routing (docs/protocol.md) on real processes: nodes sharing two memcached
//! servers forward live updates to the node holding the device, close its stale socket
//! when it reconnects elsewhere, and fall back to "stored" when that node is dead.

#![cfg(feature = "memcache")]

mod common;

use std::process::Command;

use common::{
    End, Memcached, Reply, Server, WAIT, chid, hex_id, http, http_with, router_signature, updates,
};
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

/// One request to a router listener with these extra headers.
async fn router_request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&str>,
) -> Reply {
    let mut all: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if body.is_some() {
        all.push(("content-type", "application/json"));
    }
    http_with(method, url, &all, body).await
}

/// A signed router request to `node`, timestamped now.
async fn signed_request(
    node: &Server,
    secret: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let headers = router_signature(secret, method, path, common::unix_now(), body.unwrap_or(""));
    router_request(method, &node.router_url(path), &headers, body).await
}

/// A well-formed routed update, so that only the signature and the uaid decide the answer.
fn routed_update(channel: &str, version: u64) -> String {
    let now = simplepush_store::unix_now();
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
async fn router_requests_must_be_signed_fresh_and_new() {
    let cluster = Cluster::start(1).await;
    let node = &cluster.nodes[0];
    let secret = cluster.secret.as_str();
    let (mut device, uaid) = node.device().await;
    let channel = chid();
    device.register(&channel).await;
    let path = format!("/route/{uaid}");
    let route = node.router_url(&path);
    let now = common::unix_now();

    // No header, the old static bearer secret, a MAC made with another secret, a MAC
    // over another body, a stale and a far-future timestamp: all 401.
    let body = routed_update(&channel, 7);
    let other = hex_id();
    let wrong_body = router_signature(secret, "PUT", &path, now, &routed_update(&channel, 6));
    let refused: Vec<(&str, Vec<(String, String)>)> = vec![
        ("no header", vec![]),
        (
            "a bearer secret",
            vec![("authorization".to_owned(), format!("Bearer {secret}"))],
        ),
        (
            "another secret",
            router_signature(&other, "PUT", &path, now, &body),
        ),
        ("another body", wrong_body),
        (
            "a stale timestamp",
            router_signature(secret, "PUT", &path, now - 120, &body),
        ),
        (
            "a future timestamp",
            router_signature(secret, "PUT", &path, now + 120, &body),
        ),
        (
            "another path",
            router_signature(secret, "PUT", "/route/x", now, &body),
        ),
    ];
    for (what, headers) in &refused {
        let reply = router_request("PUT", &route, headers, Some(&body)).await;
        assert_eq!(reply.status, 401, "PUT with {what}: {}", reply.body);
        reply.assert_error(401, &["Unauthorized"]);
    }
    let reply = router_request("DELETE", &route, &[], None).await;
    assert_eq!(reply.status, 401, "unsigned DELETE: {}", reply.body);
    // Nothing got through: no notification, and the socket is still open.
    device.ping().await;

    // Signed, a uaid not connected here is a 404 for both verbs.
    let elsewhere = format!("/route/{}", hex_id());
    let body = routed_update(&chid(), 7);
    for (method, body) in [("PUT", Some(body.as_str())), ("DELETE", None)] {
        let reply = signed_request(node, secret, method, &elsewhere, body).await;
        assert_eq!(
            reply.status, 404,
            "{method} for another uaid: {}",
            reply.body
        );
        reply.assert_error(404, &["Not Found"]);
    }

    // Signed and fresh, the connected device is reached...
    let body = routed_update(&channel, 8);
    let headers = router_signature(secret, "PUT", &path, common::unix_now(), &body);
    let reply = router_request("PUT", &route, &headers, Some(&body)).await;
    assert_eq!(reply.status, 200, "routed PUT: {}", reply.body);
    let frame = device.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channel.clone(), 8, None)]);
    device.ack(&channel, 8).await;
    // ... once: the same request again is a replay.
    let reply = router_request("PUT", &route, &headers, Some(&body)).await;
    assert_eq!(reply.status, 401, "replayed PUT: {}", reply.body);
    reply.assert_error(401, &["Unauthorized"]);
    device.ping().await;

    // A DELETE for a device whose node record names this very node is a late request
    // from a node the device passed through: refused (409), the socket stays. (A DELETE
    // from the device's new node closes it: see the three-node test.)
    let reply = signed_request(node, secret, "DELETE", &path, None).await;
    assert_eq!(reply.status, 409, "routed DELETE: {}", reply.body);
    reply.assert_error(409, &["Conflict"]);
    device.ping().await;
}

#[tokio::test]
async fn routed_updates_are_checked_like_a_put() {
    let cluster = Cluster::start(1).await;
    let node = &cluster.nodes[0];
    let (mut device, uaid) = node.device().await;
    let channel = chid();
    device.register(&channel).await;
    let path = format!("/route/{uaid}");
    let expires = common::unix_now() + 3600;
    let bad = [
        (
            "a channel that is no UUID",
            json!({"channelID": "x/../y", "version": 1, "expiresAt": expires}),
        ),
        (
            "data over max_data_bytes",
            json!({"channelID": channel, "version": 1, "expiresAt": expires, "data": "x".repeat(4097)}),
        ),
        (
            "a version over i64::MAX",
            json!({"channelID": channel, "version": 9_223_372_036_854_775_808_u64, "expiresAt": expires}),
        ),
    ];
    for (what, body) in bad {
        let body = body.to_string();
        let reply = signed_request(node, &cluster.secret, "PUT", &path, Some(&body)).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.body);
        reply.assert_error(400, &["Bad Request"]);
    }
    // Nothing was delivered.
    device.ping().await;
}

#[tokio::test]
async fn a_node_outside_the_peers_is_never_contacted() {
    let memcached = Memcached::start().await;
    let key = common::token_key();
    let secret = hex_id();
    let node = |peers: Option<&str>| {
        let mut builder = memcached
            .server()
            .set("server", "token_keys", &format!("[\"{key}\"]"))
            .set("router", "secret", &format!("\"{secret}\""));
        if let Some(peers) = peers {
            builder = builder.set("router", "peers", peers);
        }
        builder.start()
    };
    let a = node(None).await;
    // B only routes to a documentation network: A's loopback URL is outside it.
    let b = node(Some("[\"192.0.2.0/24\", \"peer.invalid\"]")).await;
    let (mut device, uaid) = a.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    b.put_version(&on_node(&endpoint, &b), 1, 202).await;
    // Not delivered live: the next frame is the ping reply.
    device.ping().await;
    let metrics = b.metrics_text().await;
    let refused = metrics
        .lines()
        .find(|line| line.starts_with("simplepush_routed_total{result=\"refused\""));
    assert!(
        refused.is_some_and(|line| line.ends_with(" 1")),
        "B counts one refused route:\n{metrics}"
    );
    // Stored: the device gets it at its next hello.
    drop(device);
    a.wait_for_clients(0).await;
    let mut again = a.connect().await;
    resume(&mut again, &uaid, &[&channel]).await;
    let flush = again.recv_notification().await;
    assert_eq!(updates(&flush), vec![(channel, 1, None)]);
}

#[tokio::test]
async fn a_second_socket_on_the_same_node_keeps_the_device_routable() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (mut first, uaid) = a.device().await;
    let channel = chid();
    let endpoint = first.register(&channel).await;
    // The same device again on the same node: the older socket is replaced.
    let mut second = a.connect().await;
    resume(&mut second, &uaid, &[&channel]).await;
    assert_eq!(
        first.recv_end_within(WAIT).await,
        End::Close(4000, "replaced".to_owned())
    );
    a.wait_for_clients(1).await;
    // The older socket's close must not have cleared the record the newer one holds.
    b.put_version(&on_node(&endpoint, b), 1, 200).await;
    let frame = second.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channel, 1, None)]);
}

#[tokio::test]
async fn realstatus_and_logs_never_show_a_uaid() {
    let mut cluster = Cluster::start(2).await;
    let [a, b] = cluster.nodes.as_mut_slice() else {
        panic!("two nodes expected");
    };
    let (mut device, uaid) = a.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    // A dies with the device's record naming it: B's forward fails.
    a.kill();
    b.put_version(&on_node(&endpoint, b), 1, 202).await;
    for url in [
        b.endpoint_url("/realstatus/"),
        b.ws_http_url("/realstatus/"),
        b.admin_url("/realstatus/"),
    ] {
        let reply = http("GET", &url, None, None).await;
        assert!(
            !reply.body.contains(&uaid),
            "{url} shows the uaid: {}",
            reply.body
        );
        assert!(
            !reply.body.contains("/route/"),
            "{url} shows a route URL: {}",
            reply.body
        );
        if url != b.admin_url("/realstatus/") {
            // The public listeners say only OK or ERROR.
            assert_eq!(
                reply.json()["cluster"],
                Value::Null,
                "{url}: {}",
                reply.body
            );
            continue;
        }
        let peer = &reply.json()["cluster"]["peers"][a.router_url("")];
        assert_eq!(peer["reachable"], json!(false), "{url}: {}", reply.body);
        let kind = peer["error"].as_str().unwrap_or_default();
        assert!(
            ["connect", "timeout", "request"].contains(&kind),
            "{url}: error kind {kind:?}"
        );
    }
    let log = b.log_text();
    assert!(!log.contains(&uaid), "B logged the uaid:\n{log}");
}

#[tokio::test]
async fn store_timeouts_are_logged_without_the_uaid() {
    // A "memcached" that accepts connections and never answers: every operation times
    // out, and the client's timeout error names the key it was for.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let node = Server::builder()
        .set("store", "backend", "\"memcache\"")
        .set("store", "servers", &format!("[\"127.0.0.1:{port}\"]"))
        .set("store", "timeout", "\"200ms\"")
        .cluster_secrets()
        .start()
        .await;
    let mut device = node.connect().await;
    let uaid = hex_id();
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": [chid()]}))
        .await;
    assert_eq!(reply["status"], json!(503), "hello reply {reply}");
    let log = node.log_text();
    assert!(
        log.contains("store failure"),
        "the failure is logged:\n{log}"
    );
    assert!(!log.contains(&uaid), "the log names the uaid:\n{log}");
    drop(silent);
}

#[tokio::test]
async fn a_memcache_node_refuses_to_start_without_a_secret_or_token_keys() {
    let memcached = Memcached::start().await;
    for secret in [None, Some("\"\""), Some("\"  \"")] {
        let mut builder = memcached.server().unset("router", "secret");
        if let Some(secret) = secret {
            builder = builder.set("router", "secret", secret);
        }
        let (status, stderr) = builder.start_failure().await;
        assert!(!status.success(), "secret {secret:?}: {status}");
        assert!(
            stderr.contains("[router] secret"),
            "secret {secret:?}: {stderr}"
        );
    }
    let (status, stderr) = memcached
        .server()
        .unset("server", "token_keys")
        .start_failure()
        .await;
    assert!(!status.success(), "no token_keys: {status}");
    assert!(
        stderr.contains("[server] token_keys"),
        "no token_keys: {stderr}"
    );
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
