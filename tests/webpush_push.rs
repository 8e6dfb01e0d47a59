//! WebPush for app servers over real sockets (docs/protocol.md): `POST /wpush/v1|v2/{token}`
//! (statuses, headers, VAPID) and `DELETE /m/{token}`.
//!
//! Until the WebPush websocket session exists, a subscription is made by registering the
//! channel through a SimplePush socket (the store's channels are the same for both
//! dialects) and minting its WebPush endpoint with the server's token key.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Reply, Server, chid, hex_id, http, http_with, token_key, unix_now};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use simplepush::app_server::token::TokenCodec;
use simplepush_store::{ChannelId, Uaid};

/// Request headers: (name, value).
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// A server that mints with `key`, with these `[protocol]` settings.
async fn server(key: &str, protocol: &[(&str, &str)]) -> Server {
    let mut builder = Server::builder().set("server", "token_keys", &format!("[\"{key}\"]"));
    for (name, value) in protocol {
        builder = builder.protocol(name, value);
    }
    builder.start().await
}

/// A channel registered for a device that then went away: (uaid, channelID).
async fn registered_channel(server: &Server) -> (String, String) {
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    device.register(&channel).await;
    device.close().await;
    server.wait_for_clients(0).await;
    (uaid, channel)
}

/// The `/wpush/...` path of a channel: v1, or v2 bound to `vapid_key`.
fn wpush_path(key: &str, uaid: &str, channel: &str, vapid_key: Option<&[u8]>) -> String {
    let codec = TokenCodec::new(&[key]).unwrap();
    let token = codec.encode_webpush(&Uaid::from(uaid), &ChannelId::from(channel), vapid_key);
    match vapid_key {
        None => format!("/wpush/v1/{token}"),
        Some(_) => format!("/wpush/v2/{token}"),
    }
}

/// POSTs to a path of the endpoint listener with these headers and body.
async fn post(server: &Server, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    http_with("POST", &server.endpoint_url(path), headers, body).await
}

/// The origin a VAPID `aud` must name: the server's default endpoint_url.
fn audience(server: &Server) -> String {
    format!("http://localhost:{}", server.endpoint.port())
}

fn key_pair() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

/// An ES256 JWT with these claims, signed by `pair`.
fn jwt(pair: &EcdsaKeyPair, claims: Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ES256"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// `Authorization: vapid t=..., k=...` for these claims.
fn vapid(pair: &EcdsaKeyPair, claims: Value) -> String {
    format!(
        "vapid t={}, k={}",
        jwt(pair, claims),
        URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())
    )
}

fn good_claims(server: &Server) -> Value {
    json!({"aud": audience(server), "exp": unix_now() + 3600, "sub": "mailto:ops@example.com"})
}

/// Asserts a 201 with `TTL: ttl` and a Location under `/m/`; answers the Location.
fn assert_created(reply: &Reply, server: &Server, ttl: u64) -> String {
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        reply.header("ttl").as_deref(),
        Some(ttl.to_string().as_str())
    );
    let location = reply.header("location").expect("Location");
    let prefix = format!("{}/m/", audience(server));
    assert!(
        location.starts_with(&prefix) && location.len() > prefix.len(),
        "{location}"
    );
    location
}

/// The value of `series` (written without its `backend` label) in a metrics text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            let start = name.find(",backend=\"")?;
            let end = start + name[start..].find("\"}")? + 1;
            let bare = format!("{}{}", &name[..start], &name[end..]);
            (bare == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_push_is_201_with_location_and_the_ttl_lowered_to_the_maximum() {
    let key = token_key();
    let server = server(&key, &[("max_ttl", "\"1h\"")]).await;
    let (uaid, channel) = registered_channel(&server).await;
    let path = wpush_path(&key, &uaid, &channel, None);

    let reply = post(
        &server,
        &path,
        &[
            ("ttl", "60"),
            ("content-encoding", "aes128gcm"),
            ("urgency", "high"),
        ],
        Some("encrypted bytes"),
    )
    .await;
    let first = assert_created(&reply, &server, 60);
    // Over the maximum: lowered, and the answer says so.
    let reply = post(&server, &path, &[("ttl", "999999")], None).await;
    let second = assert_created(&reply, &server, 3600);
    assert_ne!(first, second, "each message has its own Location");
    // The legacy encoding, with its headers.
    let reply = post(
        &server,
        &path,
        &[
            ("ttl", "5"),
            ("content-encoding", "aesgcm"),
            ("encryption", "salt=c2FsdA"),
            ("crypto-key", "dh=ZGg"),
        ],
        Some("x"),
    )
    .await;
    assert_created(&reply, &server, 5);

    let metrics = server.metrics_text().await;
    assert_eq!(
        metric(&metrics, "simplepush_webpush_pushes_total{status=\"201\"}"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "simplepush_webpush_encodings_total{encoding=\"aes128gcm\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "simplepush_webpush_encodings_total{encoding=\"aesgcm\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "simplepush_webpush_encodings_total{encoding=\"none\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_full_queue_is_429_until_a_message_is_deleted_and_a_topic_replaces() {
    let key = token_key();
    let server = server(&key, &[("max_queued_messages", "2")]).await;
    let (uaid, channel) = registered_channel(&server).await;
    let path = wpush_path(&key, &uaid, &channel, None);

    let first = assert_created(
        &post(&server, &path, &[("ttl", "60"), ("topic", "news")], None).await,
        &server,
        60,
    );
    assert_created(
        &post(&server, &path, &[("ttl", "60")], None).await,
        &server,
        60,
    );
    let full = post(&server, &path, &[("ttl", "60")], None).await;
    full.assert_error(429, &["Too Many Requests"]);
    assert!(
        full.header("retry-after").is_some(),
        "429 without Retry-After"
    );
    // The same topic takes the place of the queued message: not one more.
    assert_created(
        &post(&server, &path, &[("ttl", "60"), ("topic", "news")], None).await,
        &server,
        60,
    );
    post(&server, &path, &[("ttl", "60")], None)
        .await
        .assert_error(429, &["Too Many Requests"]);

    // Deleting a replaced message changes nothing; deleting a queued one makes room.
    let delete = http("DELETE", &server.reachable(&first), None, None).await;
    assert_eq!(delete.status, 204, "{}", delete.body);
    post(&server, &path, &[("ttl", "60")], None)
        .await
        .assert_error(429, &["Too Many Requests"]);
    let queued = assert_created(
        &post(&server, &path, &[("ttl", "60"), ("topic", "news")], None).await,
        &server,
        60,
    );
    let delete = http("DELETE", &server.reachable(&queued), None, None).await;
    assert_eq!(delete.status, 204, "{}", delete.body);
    // Idempotent.
    let again = http("DELETE", &server.reachable(&queued), None, None).await;
    assert_eq!(again.status, 204, "{}", again.body);
    assert_created(
        &post(&server, &path, &[("ttl", "60")], None).await,
        &server,
        60,
    );

    let metrics = server.metrics_text().await;
    assert_eq!(
        metric(&metrics, "simplepush_message_deletes_total{status=\"204\"}"),
        3.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn ttl_zero_is_never_stored() {
    let key = token_key();
    let server = server(&key, &[("max_queued_messages", "1")]).await;
    let (uaid, channel) = registered_channel(&server).await;
    let path = wpush_path(&key, &uaid, &channel, None);
    for _ in 0..3 {
        assert_created(
            &post(&server, &path, &[("ttl", "0")], None).await,
            &server,
            0,
        );
    }
    // The queue is still empty: one message fits, the next does not.
    assert_created(
        &post(&server, &path, &[("ttl", "60")], None).await,
        &server,
        60,
    );
    post(&server, &path, &[("ttl", "60")], None)
        .await
        .assert_error(429, &["Too Many Requests"]);
    // A TTL 0 push to a channel the store does not know is 410 all the same.
    let gone = wpush_path(&key, &uaid, &chid(), None);
    post(&server, &gone, &[("ttl", "0")], None)
        .await
        .assert_error(410, &["Gone"]);
}

#[tokio::test]
async fn bad_requests_are_400_or_413_before_the_token_is_judged() {
    let key = token_key();
    let server = server(&key, &[]).await;
    let forged = format!("/wpush/v1/{}", hex_id());
    let big = "x".repeat(4097);
    let long_topic = "t".repeat(33);
    let cases: Vec<(Headers, Option<&str>, u16)> = vec![
        (vec![], None, 400),
        (vec![("ttl", "")], None, 400),
        (vec![("ttl", "-1")], None, 400),
        (vec![("ttl", "ten")], None, 400),
        (vec![("ttl", "1.5")], None, 400),
        (vec![("ttl", "60"), ("topic", "has space")], None, 400),
        (vec![("ttl", "60"), ("topic", &long_topic)], None, 400),
        (vec![("ttl", "60"), ("urgency", "urgent")], None, 400),
        (vec![("ttl", "60")], Some("body"), 400),
        (
            vec![("ttl", "60"), ("content-encoding", "gzip")],
            Some("body"),
            400,
        ),
        (
            vec![
                ("ttl", "60"),
                ("content-encoding", "aesgcm"),
                ("crypto-key", "dh=a"),
            ],
            Some("body"),
            400,
        ),
        (
            vec![
                ("ttl", "60"),
                ("content-encoding", "aesgcm"),
                ("encryption", "salt=a"),
            ],
            Some("body"),
            400,
        ),
        (
            vec![("ttl", "60"), ("content-encoding", "aes128gcm")],
            Some(&big),
            413,
        ),
    ];
    for (headers, body, status) in cases {
        let reply = post(&server, &forged, &headers, body).await;
        let error = if status == 400 {
            "Bad Request"
        } else {
            "Payload Too Large"
        };
        reply.assert_error(status, &[error]);
    }
    // A well-formed push to a token that is not ours.
    post(&server, &forged, &[("ttl", "60")], None)
        .await
        .assert_error(404, &["Not Found"]);
    // A v1 token on the v2 path, and a SimplePush token, are not WebPush v2 tokens.
    let v1 = wpush_path(&key, &hex_id(), &chid(), None);
    let as_v2 = v1.replacen("/wpush/v1/", "/wpush/v2/", 1);
    post(&server, &as_v2, &[("ttl", "60")], None)
        .await
        .assert_error(404, &["Not Found"]);
    // The largest body is fine (and then the token is judged).
    let largest = "x".repeat(4096);
    post(
        &server,
        &forged,
        &[("ttl", "60"), ("content-encoding", "aes128gcm")],
        Some(&largest),
    )
    .await
    .assert_error(404, &["Not Found"]);
}

#[tokio::test]
async fn an_unknown_or_unregistered_channel_is_410() {
    let key = token_key();
    let server = server(&key, &[]).await;
    let never = wpush_path(&key, &hex_id(), &chid(), None);
    post(&server, &never, &[("ttl", "60")], None)
        .await
        .assert_error(410, &["Gone"]);

    let (mut device, uaid) = server.device().await;
    let channel = chid();
    device.register(&channel).await;
    device.unregister(&channel).await;
    device.close().await;
    let path = wpush_path(&key, &uaid, &channel, None);
    post(&server, &path, &[("ttl", "60")], None)
        .await
        .assert_error(410, &["Gone"]);
}

#[tokio::test]
async fn vapid_is_checked_on_v1_and_required_with_the_subscription_key_on_v2() {
    let key = token_key();
    let server = server(&key, &[]).await;
    let (uaid, channel) = registered_channel(&server).await;
    let app_key = key_pair();
    let other_key = key_pair();
    let v1 = wpush_path(&key, &uaid, &channel, None);
    let v2 = wpush_path(&key, &uaid, &channel, Some(app_key.public_key().as_ref()));
    let ttl = ("ttl", "60");

    // v1: with or without VAPID, but a present one must be valid.
    assert_created(&post(&server, &v1, &[ttl], None).await, &server, 60);
    let good = vapid(&app_key, good_claims(&server));
    assert_created(
        &post(&server, &v1, &[ttl, ("authorization", &good)], None).await,
        &server,
        60,
    );
    let expired = vapid(
        &app_key,
        json!({"aud": audience(&server), "exp": unix_now() - 10}),
    );
    let wrong_aud = vapid(
        &app_key,
        json!({"aud": "https://elsewhere.example", "exp": unix_now() + 60}),
    );
    let too_long = vapid(
        &app_key,
        json!({"aud": audience(&server), "exp": unix_now() + 48 * 3600}),
    );
    let bad_sub = vapid(
        &app_key,
        json!({"aud": audience(&server), "exp": unix_now() + 60, "sub": "ops@example.com"}),
    );
    for authorization in [
        &expired,
        &wrong_aud,
        &too_long,
        &bad_sub,
        &"vapid t=garbage, k=garbage".to_owned(),
        &"Basic dXNlcjpwdw==".to_owned(),
    ] {
        for path in [&v1, &v2] {
            let reply = post(
                &server,
                path,
                &[ttl, ("authorization", authorization)],
                None,
            )
            .await;
            reply.assert_error(401, &["Unauthorized"]);
            assert_eq!(reply.header("www-authenticate").as_deref(), Some("vapid"));
        }
    }

    // v2: missing 401, another key 403, its key 201 (both header forms).
    post(&server, &v2, &[ttl], None)
        .await
        .assert_error(401, &["Unauthorized"]);
    let other = vapid(&other_key, good_claims(&server));
    post(&server, &v2, &[ttl, ("authorization", &other)], None)
        .await
        .assert_error(403, &["Forbidden"]);
    assert_created(
        &post(&server, &v2, &[ttl, ("authorization", &good)], None).await,
        &server,
        60,
    );
    let legacy = format!("WebPush {}", jwt(&app_key, good_claims(&server)));
    let crypto_key = format!(
        "dh=ZGg;p256ecdsa={}",
        URL_SAFE_NO_PAD.encode(app_key.public_key().as_ref())
    );
    assert_created(
        &post(
            &server,
            &v2,
            &[ttl, ("authorization", &legacy), ("crypto-key", &crypto_key)],
            None,
        )
        .await,
        &server,
        60,
    );

    let metrics = server.metrics_text().await;
    for (reason, count) in [
        ("expired", 2.0),
        ("aud", 2.0),
        ("exp_too_far", 2.0),
        ("sub", 2.0),
        ("key", 2.0),
        ("header", 2.0),
        ("missing", 1.0),
        ("key_mismatch", 1.0),
    ] {
        let series = format!("simplepush_vapid_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), count, "{series}\n{metrics}");
    }
}

#[tokio::test]
async fn other_methods_are_405_and_message_tokens_are_unforgeable() {
    let key = token_key();
    let server = server(&key, &[]).await;
    let path = wpush_path(&key, &hex_id(), &chid(), None);
    for method in ["GET", "PUT", "DELETE"] {
        let reply = http(method, &server.endpoint_url(&path), None, None).await;
        reply.assert_error(405, &["Method Not Allowed"]);
        assert_eq!(reply.header("allow").as_deref(), Some("POST, OPTIONS"));
    }
    assert_eq!(
        http("OPTIONS", &server.endpoint_url(&path), None, None)
            .await
            .status,
        200
    );
    let message = server.endpoint_url(&format!("/m/{}", hex_id()));
    http("DELETE", &message, None, None)
        .await
        .assert_error(404, &["Not Found"]);
    // An endpoint token is not a message token.
    let endpoint_token = path.rsplit('/').next().unwrap();
    http(
        "DELETE",
        &server.endpoint_url(&format!("/m/{endpoint_token}")),
        None,
        None,
    )
    .await
    .assert_error(404, &["Not Found"]);
    for method in ["GET", "POST", "PUT"] {
        let reply = http(method, &message, None, None).await;
        reply.assert_error(405, &["Method Not Allowed"]);
        assert_eq!(reply.header("allow").as_deref(), Some("DELETE, OPTIONS"));
    }
}

/// A WebPush device (Firefox's hello) with one channel registered, with `key` if any:
/// (device, uaid, channelID, pushEndpoint reachable from here).
async fn webpush_device(
    server: &Server,
    key: Option<&EcdsaKeyPair>,
) -> (common::Device, String, String, String) {
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "broadcasts": {}, "use_webpush": true}))
        .await;
    assert_eq!(reply["status"], json!(200), "{reply}");
    let uaid = reply["uaid"].as_str().unwrap().to_owned();
    let channel = chid();
    let mut register = json!({"messageType": "register", "channelID": channel});
    if let Some(key) = key {
        register["key"] = json!(URL_SAFE_NO_PAD.encode(key.public_key().as_ref()));
    }
    device.send(register).await;
    let reply = device.recv().await;
    assert_eq!(reply["status"], json!(200), "{reply}");
    let endpoint = server.reachable(reply["pushEndpoint"].as_str().unwrap());
    (device, uaid, channel, endpoint)
}

/// POSTs to a full URL.
async fn post_url(url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    http_with("POST", url, headers, body).await
}

#[tokio::test]
async fn a_push_reaches_a_connected_webpush_device_with_its_body_and_headers() {
    let key = token_key();
    let server = server(&key, &[]).await;
    let app_key = key_pair();
    let (mut device, uaid, channel, endpoint) = webpush_device(&server, Some(&app_key)).await;
    assert!(endpoint.contains("/wpush/v2/"), "{endpoint}");
    let authorization = vapid(&app_key, good_claims(&server));

    let reply = post_url(
        &endpoint,
        &[
            ("ttl", "120"),
            ("content-encoding", "aes128gcm"),
            ("authorization", &authorization),
        ],
        Some("ciphertext\u{1}"),
    )
    .await;
    let location = assert_created(&reply, &server, 120);
    let frame = device.recv_notification().await;
    assert_eq!(frame["channelID"], json!(channel), "{frame}");
    assert_eq!(frame["ttl"], json!(120), "{frame}");
    assert_eq!(
        frame["data"],
        json!(URL_SAFE_NO_PAD.encode("ciphertext\u{1}")),
        "{frame}"
    );
    assert_eq!(
        frame["headers"],
        json!({"encoding": "aes128gcm"}),
        "{frame}"
    );
    // The Location names the message the device got.
    let codec = TokenCodec::new(&[&key]).unwrap();
    let token = location.rsplit('/').next().unwrap();
    let (m_uaid, m_channel, id) = codec.decode_message(token).expect("a message token");
    assert_eq!(
        (m_uaid.as_str(), m_channel.as_str()),
        (uaid.as_str(), channel.as_str())
    );
    assert_eq!(frame["version"], json!(id.as_str()), "{frame}");

    // The legacy encoding carries its headers to the device.
    let reply = post_url(
        &endpoint,
        &[
            ("ttl", "60"),
            ("content-encoding", "aesgcm"),
            ("encryption", "salt=c2FsdA"),
            ("crypto-key", "dh=ZGg"),
            ("authorization", &authorization),
        ],
        Some("x"),
    )
    .await;
    assert_created(&reply, &server, 60);
    let frame = device.recv_notification().await;
    assert_eq!(
        frame["headers"],
        json!({"encoding": "aesgcm", "encryption": "salt=c2FsdA", "crypto_key": "dh=ZGg"}),
        "{frame}"
    );
    // TTL 0 reaches a device connected now.
    assert_created(
        &post_url(
            &endpoint,
            &[("ttl", "0"), ("authorization", &authorization)],
            None,
        )
        .await,
        &server,
        0,
    );
    let frame = device.recv_notification().await;
    assert_eq!(frame["ttl"], json!(0), "{frame}");
    // A push without a body: no data, no headers.
    assert_created(
        &post_url(
            &endpoint,
            &[("ttl", "60"), ("authorization", &authorization)],
            None,
        )
        .await,
        &server,
        60,
    );
    let frame = device.recv_notification().await;
    assert!(
        frame.get("data").is_none() && frame.get("headers").is_none(),
        "{frame}"
    );
}

#[tokio::test]
async fn offline_pushes_wait_for_hello_unless_deleted_or_ttl_zero() {
    let key = token_key();
    let server = server(&key, &[]).await;
    let (device, uaid, channel, endpoint) = webpush_device(&server, None).await;
    assert!(endpoint.contains("/wpush/v1/"), "{endpoint}");
    device.close().await;
    server.wait_for_clients(0).await;

    let withdrawn = assert_created(
        &post_url(&endpoint, &[("ttl", "60")], None).await,
        &server,
        60,
    );
    assert_created(
        &post_url(&endpoint, &[("ttl", "0")], None).await,
        &server,
        0,
    );
    let kept = post_url(
        &endpoint,
        &[("ttl", "60"), ("content-encoding", "aes128gcm")],
        Some("kept"),
    )
    .await;
    assert_created(&kept, &server, 60);
    let delete = http("DELETE", &server.reachable(&withdrawn), None, None).await;
    assert_eq!(delete.status, 204, "{}", delete.body);

    let mut device = server.connect().await;
    let reply = device
        .hello_with(
            json!({"messageType": "hello", "broadcasts": {}, "use_webpush": true, "uaid": uaid}),
        )
        .await;
    assert_eq!(reply["uaid"], json!(uaid), "{reply}");
    let frame = device.recv_notification().await;
    assert_eq!(frame["channelID"], json!(channel), "{frame}");
    assert_eq!(
        frame["data"],
        json!(URL_SAFE_NO_PAD.encode("kept")),
        "{frame}"
    );
    // Nothing else: neither the withdrawn message nor the TTL 0 one.
    // (the ping's answer is the next frame.)
    device.ping().await;

    // Unsubscribed: 410 from now on.
    device
        .send(json!({"messageType": "unregister", "channelID": channel, "code": 200}))
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["status"], json!(200), "{reply}");
    post_url(&endpoint, &[("ttl", "60")], None)
        .await
        .assert_error(410, &["Gone"]);
}

/// Two nodes sharing a memcached: a push to one reaches the device on the other.
#[cfg(feature = "memcache")]
#[tokio::test]
async fn a_push_to_another_node_is_routed_to_the_device() {
    let memcached = common::Memcached::start().await;
    let key = token_key();
    let secret = hex_id();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let node = memcached
            .server()
            .set("server", "token_keys", &format!("[\"{key}\"]"))
            .set("router", "secret", &format!("\"{secret}\""))
            .start()
            .await;
        nodes.push(node);
    }
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let (mut device, _uaid, channel, endpoint) = webpush_device(n1, None).await;
    // The same endpoint on node 2's listener.
    let (_, path) = endpoint.split_once("/wpush/").unwrap();
    let via2 = n2.endpoint_url(&format!("/wpush/{path}"));
    let reply = post_url(
        &via2,
        &[
            ("ttl", "60"),
            ("content-encoding", "aes128gcm"),
            ("topic", "t1"),
            ("urgency", "low"),
        ],
        Some("routed"),
    )
    .await;
    assert_created(&reply, n2, 60);
    let frame = device.recv_notification().await;
    assert_eq!(frame["channelID"], json!(channel), "{frame}");
    assert_eq!(
        frame["data"],
        json!(URL_SAFE_NO_PAD.encode("routed")),
        "{frame}"
    );
    let metrics = n2.metrics_text().await;
    assert_eq!(
        metric(&metrics, "simplepush_routed_total{result=\"hit\"}"),
        1.0,
        "{metrics}"
    );
}

/// The store down: 503 with Retry-After, for pushes and deletes.
#[cfg(feature = "memcache")]
#[tokio::test]
async fn a_push_while_the_store_is_down_is_503_with_retry_after() {
    let mut memcached = common::Memcached::start().await;
    let key = token_key();
    let server = memcached
        .server()
        .set("server", "token_keys", &format!("[\"{key}\"]"))
        .start()
        .await;
    let path = wpush_path(&key, &hex_id(), &chid(), None);
    memcached.stop();
    let reply = post(&server, &path, &[("ttl", "60")], None).await;
    reply.assert_error(503, &["Service Unavailable"]);
    assert!(
        reply.header("retry-after").is_some(),
        "503 without Retry-After"
    );
    let codec = TokenCodec::new(&[&key]).unwrap();
    let message = codec.encode_message(
        &Uaid::from(hex_id().as_str()),
        &ChannelId::from(chid().as_str()),
        &simplepush_store::MessageId::from("00000000000000010000000000000001"),
    );
    let reply = http(
        "DELETE",
        &server.endpoint_url(&format!("/m/{message}")),
        None,
        None,
    )
    .await;
    reply.assert_error(503, &["Service Unavailable"]);
}
