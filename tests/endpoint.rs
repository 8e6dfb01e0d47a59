//! Black-box tests of the app-server endpoint (docs/protocol.md): `PUT /update/{token}`
//! over real HTTP against the real binary, with a real websocket device behind it.

mod common;

use base64::Engine;
use common::{Device, Server, chid, http, unix_now, updates};
use serde_json::json;

/// A connected device with one registered channel: (device, uaid, channelID, endpoint).
async fn live_channel(server: &Server) -> (Device, String, String, String) {
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    (device, uaid, channel, endpoint)
}

/// The token part of a pushEndpoint.
fn token_of(endpoint: &str) -> &str {
    let (_, token) = endpoint.split_once("/update/").unwrap();
    assert!(!token.is_empty());
    token
}

/// `PUT` with a Content-Type.
async fn put_typed(
    server: &Server,
    endpoint: &str,
    content_type: &str,
    body: &str,
) -> common::Reply {
    http(
        "PUT",
        &server.reachable(endpoint),
        Some(content_type),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn put_to_connected_device_is_200_empty_object_and_delivered_live() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let reply = server.put(&endpoint, "version=21").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({}));
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 21, None)]
    );
}

#[tokio::test]
async fn put_to_offline_device_is_stored_202_and_flushed_at_hello() {
    let server = Server::start().await;
    let (device, uaid, channel, endpoint) = live_channel(&server).await;
    device.close().await;
    server.wait_for_clients(0).await;
    let reply = server.put(&endpoint, "version=22&data=later").await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json(), json!({}));
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 22, Some("later".to_owned()))]
    );
}

#[tokio::test]
async fn put_parameters_in_query_are_accepted() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let url = format!("{endpoint}?version=42&data=from%20query");
    let reply = server.put(&url, "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 42, Some("from query".to_owned()))]
    );
}

#[tokio::test]
async fn put_body_with_form_urlencoded_content_type_is_parsed() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    for (version, content_type) in [
        (31, "application/x-www-form-urlencoded"),
        (32, "application/x-www-form-urlencoded; charset=UTF-8"),
    ] {
        let reply = put_typed(
            &server,
            &endpoint,
            content_type,
            &format!("version={version}&data=a+b"),
        )
        .await;
        assert_eq!(reply.status, 200, "{content_type}: {}", reply.body);
        assert_eq!(
            updates(&device.recv_notification().await),
            vec![(channel.clone(), version, Some("a b".to_owned()))]
        );
    }
}

#[tokio::test]
async fn put_body_with_multipart_form_data_is_parsed() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let boundary = "XyZzYboundary42";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n77\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\nmulti part\r\n\
         --{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let reply = put_typed(&server, &endpoint, &content_type, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 77, Some("multi part".to_owned()))]
    );
}

#[tokio::test]
async fn put_body_with_other_content_type_is_ignored() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    for content_type in ["text/plain", "application/json"] {
        let before = unix_now();
        let reply = put_typed(&server, &endpoint, content_type, "version=99&data=ignored").await;
        let after = unix_now();
        assert_eq!(reply.status, 200, "{content_type}: {}", reply.body);
        let got = updates(&device.recv_notification().await);
        assert_eq!(got.len(), 1);
        let (id, version, data) = &got[0];
        assert_eq!(id, &channel);
        assert!(
            (before..=after).contains(version),
            "{content_type}: version {version}"
        );
        assert_eq!(data, &None, "{content_type}: body must be ignored");
    }
}

#[tokio::test]
async fn put_without_or_with_empty_version_uses_current_unix_time() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    for body in ["", "version=", "data=x&version="] {
        let before = unix_now();
        let reply = server.put(&endpoint, body).await;
        let after = unix_now();
        assert_eq!(reply.status, 200, "body {body:?}: {}", reply.body);
        let got = updates(&device.recv_notification().await);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, channel);
        assert!(
            (before..=after).contains(&got[0].1),
            "body {body:?}: {got:?}"
        );
    }
}

#[tokio::test]
async fn put_with_version_not_a_non_negative_i64_is_400() {
    let server = Server::start().await;
    let (mut device, _, _, endpoint) = live_channel(&server).await;
    for bad in [
        "abc",
        "-1",
        "1.5",
        "1e3",
        "0x10",
        "9223372036854775808",
        "18446744073709551616",
    ] {
        let reply = server.put(&endpoint, &format!("version={bad}")).await;
        reply.assert_error(400, &["Bad Request"]);
        let url = format!("{endpoint}?version={bad}");
        server
            .put(&url, "")
            .await
            .assert_error(400, &["Bad Request"]);
    }
    // Nothing reached the device.
    device.ping().await;
}

#[tokio::test]
async fn put_with_largest_i64_version_is_accepted() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    server.put_version(&endpoint, i64::MAX as u64, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), i64::MAX as u64, None)]
    );
    server.put_version(&endpoint, 0, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 0, None)]
    );
}

#[tokio::test]
async fn put_with_data_over_max_data_bytes_is_413() {
    let server = Server::builder()
        .protocol("max_data_bytes", "16")
        .start()
        .await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let reply = server
        .put(&endpoint, &format!("version=1&data={}", "x".repeat(17)))
        .await;
    reply.assert_error(413, &["Payload Too Large", "Content Too Large"]);
    device.ping().await;
    let exact = "y".repeat(16);
    let reply = server
        .put(&endpoint, &format!("version=2&data={exact}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 2, Some(exact))]
    );
}

#[tokio::test]
async fn parameters_are_checked_before_the_token() {
    let server = Server::builder()
        .protocol("max_data_bytes", "16")
        .start()
        .await;
    let forged = server.endpoint_url("/update/not-a-real-token");
    server
        .put(&forged, "version=abc")
        .await
        .assert_error(400, &["Bad Request"]);
    let reply = server
        .put(&forged, &format!("version=1&data={}", "x".repeat(17)))
        .await;
    reply.assert_error(413, &["Payload Too Large", "Content Too Large"]);
    server
        .put(&forged, "version=1")
        .await
        .assert_error(404, &["Not Found"]);
}

#[tokio::test]
async fn forged_token_is_404_with_json_error_body() {
    let server = Server::start().await;
    for token in [
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "%00%ff",
        "a.b",
    ] {
        let reply = server
            .put(
                &server.endpoint_url(&format!("/update/{token}")),
                "version=1",
            )
            .await;
        reply.assert_error(404, &["Not Found"]);
        let body = reply.json();
        assert_eq!(body["status"], json!(404));
        assert_eq!(body["error"], json!("Not Found"));
    }
}

/// Replaces the character at `at` by another one of the same token alphabet family.
fn flip_at(token: &str, at: usize) -> String {
    token
        .char_indices()
        .map(|(i, c)| {
            if i == at {
                if c == '0' { '1' } else { '0' }
            } else {
                c
            }
        })
        .collect()
}

#[tokio::test]
async fn tampered_token_is_404() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let token = token_of(&endpoint).to_owned();
    let base = &endpoint[..endpoint.len() - token.len()];
    let n = token.len();
    let mut tampered: Vec<String> = [0, 1, n / 3, n / 2, n - 2]
        .into_iter()
        .map(|at| flip_at(&token, at))
        .collect();
    tampered.push(token[..n - 4].to_owned());
    tampered.push(format!("{token}00"));
    tampered.push(token.chars().rev().collect());
    for bad in tampered {
        assert_ne!(bad, token);
        let reply = server.put(&format!("{base}{bad}"), "version=1").await;
        reply.assert_error(404, &["Not Found"]);
    }
    // The genuine token still works and nothing else reached the device.
    device.ping().await;
    server.put_version(&endpoint, 2, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 2, None)]
    );
}

#[tokio::test]
async fn token_minted_by_another_server_is_404() {
    // Memory stores: each server generates its own key.
    let start = || Server::builder().arg("--store").arg("memory").start();
    let ours = start().await;
    let theirs = start().await;
    let (_device, _, _, endpoint) = live_channel(&theirs).await;
    let foreign = ours.endpoint_url(&format!("/update/{}", token_of(&endpoint)));
    ours.put(&foreign, "version=1")
        .await
        .assert_error(404, &["Not Found"]);
}

#[tokio::test]
async fn put_to_unregistered_channel_is_410_gone() {
    let server = Server::start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    device.unregister(&channel).await;
    let reply = server.put(&endpoint, "version=3").await;
    reply.assert_error(410, &["Gone"]);
    assert_eq!(reply.json()["status"], json!(410));
}

#[tokio::test]
async fn put_to_channel_unknown_to_the_store_is_410_gone() {
    // A fixed token key opens the first server's tokens after a restart, but the memory
    // store forgot the channel.
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let keys = format!("[\"{key}\"]");
    let first = Server::builder()
        .set("server", "token_keys", &keys)
        .arg("--store")
        .arg("memory")
        .start()
        .await;
    let (_device, _, _, endpoint) = live_channel(&first).await;
    let token = token_of(&endpoint).to_owned();
    drop(first);
    let second = Server::builder()
        .set("server", "token_keys", &keys)
        .arg("--store")
        .arg("memory")
        .start()
        .await;
    let url = second.endpoint_url(&format!("/update/{token}"));
    second
        .put(&url, "version=1")
        .await
        .assert_error(410, &["Gone"]);
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = Server::start().await;
    let (mut device, _, _, endpoint) = live_channel(&server).await;
    let url = server.reachable(&endpoint);
    for method in ["GET", "POST", "DELETE", "PATCH"] {
        let reply = http(method, &url, None, Some("version=5")).await;
        reply.assert_error(405, &["Method Not Allowed"]);
    }
    device.ping().await;
}

#[tokio::test]
async fn options_is_200_without_cors_headers_by_default() {
    let server = Server::start().await;
    let (_device, _, _, endpoint) = live_channel(&server).await;
    let reply = http("OPTIONS", &server.reachable(&endpoint), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn options_and_put_carry_cors_headers_when_cors_is_on() {
    let server = Server::builder()
        .set("server", "cors", "true")
        .start()
        .await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let url = server.reachable(&endpoint);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let preflight = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 200);
    let headers = preflight.headers();
    let origin = headers
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        matches!(origin.as_deref(), Some("*") | Some("https://app.example")),
        "Access-Control-Allow-Origin {origin:?}"
    );
    let methods = headers
        .get("access-control-allow-methods")
        .map(|v| v.to_str().unwrap().to_uppercase())
        .unwrap_or_default();
    assert!(
        methods.contains("PUT"),
        "Access-Control-Allow-Methods {methods:?}"
    );

    let put = client
        .put(&url)
        .header("Origin", "https://app.example")
        .body("version=4")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    assert!(put.headers().contains_key("access-control-allow-origin"));
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 4, None)]
    );
}

#[tokio::test]
async fn lower_version_is_forwarded_live_but_does_not_replace_greater_pending() {
    let server = Server::start().await;
    let (mut device, uaid, channel, endpoint) = live_channel(&server).await;
    server.put_version(&endpoint, 10, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 10, None)]
    );
    server.put_version(&endpoint, 5, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 5, None)]
    );
    device.close().await;
    server.wait_for_clients(0).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 10, None)]
    );
}

#[tokio::test]
async fn store_keeps_only_the_greatest_version_with_its_data() {
    let server = Server::start().await;
    let (device, uaid, channel, endpoint) = live_channel(&server).await;
    device.close().await;
    server.wait_for_clients(0).await;
    for (version, data) in [(5, "five"), (9, "nine"), (7, "seven")] {
        let reply = server
            .put(&endpoint, &format!("version={version}&data={data}"))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 9, Some("nine".to_owned()))]
    );
    device.ping().await;
}

#[tokio::test]
async fn push_endpoint_base_is_the_configured_endpoint_url() {
    let server = Server::builder()
        .arg("--endpoint-url")
        .arg("https://push.example.test:4443")
        .start()
        .await;
    let (_device, _, _, endpoint) = live_channel(&server).await;
    assert!(
        endpoint.starts_with("https://push.example.test:4443/update/"),
        "pushEndpoint {endpoint}"
    );
    // The token works on the real listener.
    let url = server.endpoint_url(&format!("/update/{}", token_of(&endpoint)));
    server.put_version(&url, 1, 200).await;
}

/// With a persistent backend and no configured key, the generated key is kept beside the
/// data: endpoints, channels and pending updates survive a restart.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn endpoints_survive_a_restart_with_a_persistent_store() {
    let data = tempfile::tempdir().unwrap();
    let store_path = data.path().to_str().unwrap().to_owned();
    let start = || {
        Server::builder()
            .arg("--store")
            .arg("sqlite")
            .arg("--store-path")
            .arg(&store_path)
            .start()
    };
    let mut first = start().await;
    let (device, uaid, channel, endpoint) = live_channel(&first).await;
    device.close().await;
    first.wait_for_clients(0).await;
    first.put_version(&endpoint, 3, 202).await;
    first.terminate();
    assert!(first.wait_exit().await.success());
    drop(first);

    let second = start().await;
    let url = second.endpoint_url(&format!("/update/{}", token_of(&endpoint)));
    let mut device = second.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": [channel]}))
        .await;
    assert_eq!(reply["uaid"], json!(uaid), "the store still knows the uaid");
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 3, None)]
    );
    second.put_version(&url, 4, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 4, None)]
    );
}

/// Store unavailable: 503 with `Retry-After`, so the app server tries again later.
#[cfg(feature = "memcache")]
#[tokio::test]
async fn put_while_the_store_is_down_is_503_with_retry_after() {
    let mut memcached = common::Memcached::start().await;
    let server = memcached.server().start().await;
    let (_device, _, _, endpoint) = live_channel(&server).await;
    memcached.stop();
    let reply = server.put(&endpoint, "version=1").await;
    reply.assert_error(503, &["Service Unavailable"]);
    let retry_after = reply.header("retry-after").unwrap_or_default();
    assert!(
        retry_after.parse::<u64>().is_ok(),
        "Retry-After {retry_after:?}"
    );
}

/// `len` bytes of data that costs the most to encode as JSON: control characters (six
/// bytes each as `\u0001`), quotes and backslashes (two), and some non-ASCII.
#[cfg(feature = "memcache")]
fn hostile_data(len: usize) -> String {
    let pattern = ['\u{1}', '"', '\\', '\u{0}', 'é', '\u{1f}', '\u{7f}'];
    let mut data = String::with_capacity(len);
    for c in pattern.iter().cycle() {
        if data.len() + c.len_utf8() > len {
            break;
        }
        data.push(*c);
    }
    while data.len() < len {
        data.push('\u{1}');
    }
    data
}

/// A memcache device is one memcached item (1 MiB by default). Filling a device with the
/// protocol's largest data, in the characters costliest to escape: PUTs are 202 until the
/// item would not fit, then 413 with a reason, never 500; registers on the full device
/// are 200 or a 503 frame with a reason, never 500; and the device gets every update that
/// was stored at its next hello.
#[cfg(feature = "memcache")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_too_large_for_its_memcached_item_is_413_never_500() {
    let memcached = common::Memcached::start_with_memory(64).await;
    let server = memcached
        .server()
        .protocol("max_channels", "1000")
        .start()
        .await;
    let (mut device, uaid) = server.device().await;
    let mut channels = Vec::new();
    for _ in 0..300 {
        let channel = chid();
        let endpoint = device.register(&channel).await;
        channels.push((channel, endpoint));
    }
    device.close().await;

    let data = hostile_data(4096);
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("version", "7")
        .append_pair("data", &data)
        .finish();
    let mut stored = Vec::new();
    let mut refused = 0;
    for (channel, endpoint) in &channels {
        let reply = server.put(endpoint, &body).await;
        match reply.status {
            202 if refused == 0 => stored.push(channel.clone()),
            413 => {
                reply.assert_error(413, &["Payload Too Large"]);
                let reason = reply.json()["reason"].as_str().unwrap().to_owned();
                assert!(reason.contains("too large for the store"), "{reason}");
                refused += 1;
            }
            other => panic!(
                "PUT {} after {} stored, {refused} refused: {other} {}",
                stored.len() + refused + 1,
                stored.len(),
                reply.body
            ),
        }
    }
    // The protocol's own limit (200 channels of 4096 bytes) fits whatever the data;
    // 1 MiB holds no more than 256 updates of 4 KiB.
    assert!(
        (200..256).contains(&stored.len()),
        "{} stored before the first 413",
        stored.len()
    );
    assert_eq!(stored.len() + refused, channels.len());

    // Every stored update arrives, intact, at the next hello.
    let mut device = server.connect().await;
    assert_eq!(device.hello(&uaid).await, uaid);
    let delivered = updates(&device.recv_notification().await);
    let mut expected: Vec<(String, u64, Option<String>)> = stored
        .iter()
        .map(|channel| (channel.clone(), 7, Some(data.clone())))
        .collect();
    expected.sort();
    assert_eq!(delivered.len(), expected.len());
    assert!(
        delivered == expected,
        "delivered updates differ from those stored"
    );

    // Registering more channels fills what room is left, then is refused with a reason.
    let mut registered = 0;
    loop {
        let channel = chid();
        device
            .send(json!({"messageType": "register", "channelID": channel}))
            .await;
        let reply = device.recv().await;
        match reply["status"].as_u64() {
            Some(200) => registered += 1,
            Some(503) => {
                common::assert_error_frame(
                    &reply,
                    503,
                    "Service Unavailable",
                    &[("channelID", json!(channel))],
                );
                let reason = reply["reason"].as_str().unwrap();
                assert!(reason.contains("too large for the store"), "{reason}");
                break;
            }
            _ => panic!("register after {registered} more: {reply}"),
        }
        // A slot of 4 KiB is left at most, and each channel takes some 40 bytes.
        assert!(
            registered < 200,
            "the full device took {registered} more channels"
        );
    }
}
