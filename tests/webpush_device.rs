//! The WebPush dialect of the device websocket (docs/protocol.md), over real sockets: the
//! hello's uaid rules and its one reply, register with and without the app server's
//! key, unregister, ack, nack, ping, what is ignored, and the delivery of queued
//! messages (at hello, on retry, a page at a time). SimplePush devices on the same
//! server are unaffected.
//!
//! Messages are queued straight into the store of a server running in this process
//! (the app-server side, `POST /wpush/`, is built elsewhere); everything else runs
//! against the real binary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use common::{Server, WAIT, assert_keys, chid, hex_id, metric, token_key};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use simplepush::app_server::token::{TokenCodec, WebPushVersion, key_digest};
use simplepush::config::Config;
use simplepush_store::{
    ChannelId, MemoryStore, Message, MessageId, Payload, QueueOutcome, Store, Uaid, Urgency,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Queued messages the server sends at once (`webpush::PAGE`).
const PAGE: usize = 100;

/// How long a test waits to be sure that nothing more comes.
const QUIET: Duration = Duration::from_millis(300);

/// The P-256 generator point, uncompressed: an app server key on the curve.
fn vapid_key() -> Vec<u8> {
    let hex = concat!(
        "04",
        "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
        "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
    );
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn webpush_hello(uaid: Option<&str>) -> Value {
    let mut hello = json!({"messageType": "hello", "broadcasts": {}, "use_webpush": true});
    if let Some(uaid) = uaid {
        hello["uaid"] = json!(uaid);
    }
    hello
}

/// Says a WebPush hello; asserts the exact reply and returns the uaid.
async fn hello(device: &mut common::Device, uaid: Option<&str>) -> String {
    let reply = device.hello_with(webpush_hello(uaid)).await;
    assert_keys(
        &reply,
        &["messageType", "uaid", "status", "use_webpush", "broadcasts"],
    );
    assert_eq!(reply["status"], json!(200), "{reply}");
    assert_eq!(reply["use_webpush"], json!(true), "{reply}");
    assert_eq!(reply["broadcasts"], json!({}), "{reply}");
    reply["uaid"].as_str().unwrap().to_owned()
}

/// Registers `channel` (with `key`, if any) and returns the reply.
async fn register(device: &mut common::Device, channel: &str, key: Option<&str>) -> Value {
    let mut frame = json!({"messageType": "register", "channelID": channel});
    if let Some(key) = key {
        frame["key"] = json!(key);
    }
    device.send(frame).await;
    device.recv().await
}

/// A server whose token key the test knows.
async fn server_with_key() -> (Server, TokenCodec) {
    let key = token_key();
    let server = Server::builder()
        .env("SIMPLEPUSH_TOKEN_KEYS", &key)
        .start()
        .await;
    (server, TokenCodec::new(&[key]).unwrap())
}

/// The version and token of a `/wpush/` pushEndpoint of `server`.
fn wpush_token(server: &Server, endpoint: &str) -> (WebPushVersion, String) {
    let base = format!("http://localhost:{}/wpush/", server.endpoint.port());
    let rest = endpoint
        .strip_prefix(&base)
        .unwrap_or_else(|| panic!("{endpoint} is not under {base}"));
    let (version, token) = rest.split_once('/').unwrap();
    let version = match version {
        "v1" => WebPushVersion::V1,
        "v2" => WebPushVersion::V2,
        other => panic!("endpoint version {other}"),
    };
    (version, token.to_owned())
}

#[tokio::test]
async fn hello_keeps_a_known_uaid_and_mints_for_any_other() {
    let server = Server::start().await;
    // No uaid: a fresh one.
    let mut device = server.connect().await;
    let uaid = hello(&mut device, None).await;
    assert_eq!(uaid.len(), 32, "{uaid}");
    // A uaid the store does not know yet (no channels): a fresh one.
    let mut again = server.connect().await;
    assert_ne!(hello(&mut again, Some(&uaid)).await, uaid);
    drop(again);
    // Once it has a channel, it is kept.
    let reply = register(&mut device, &chid(), None).await;
    assert_eq!(reply["status"], json!(200), "{reply}");
    drop(device);
    let mut device = server.connect().await;
    assert_eq!(hello(&mut device, Some(&uaid)).await, uaid);
    // Never seen, empty, too long: fresh ones.
    for sent in [hex_id(), String::new(), "u".repeat(129)] {
        let mut other = server.connect().await;
        let got = hello(&mut other, Some(&sent)).await;
        assert_ne!(got, sent);
        assert_eq!(got.len(), 32, "{got}");
    }
}

#[tokio::test]
async fn the_newest_webpush_socket_of_a_uaid_wins() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let uaid = hello(&mut device, None).await;
    register(&mut device, &chid(), None).await;
    device.close().await;
    let mut device = server.connect().await;
    assert_eq!(hello(&mut device, Some(&uaid)).await, uaid);
    // The newest socket of a uaid wins, as in SimplePush.
    let mut newer = server.connect().await;
    assert_eq!(hello(&mut newer, Some(&uaid)).await, uaid);
    let end = device.recv_end_within(WAIT).await;
    assert_eq!(end, common::End::Close(4000, "replaced".into()));
    newer.ping().await;
}

#[tokio::test]
async fn a_webpush_socket_answers_hello_exactly_once() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let uaid = hello(&mut device, None).await;
    device.send(webpush_hello(Some(&uaid))).await;
    device.send(webpush_hello(Some(&hex_id()))).await;
    device
        .send(json!({"messageType": "hello", "uaid": uaid}))
        .await;
    // The next frame is the ping's: no second hello reply, no refusal, no close.
    device.ping().await;
}

#[tokio::test]
async fn register_gives_v1_without_key_and_v2_bound_to_the_key() {
    let (server, tokens) = server_with_key().await;
    let mut device = server.connect().await;
    let uaid = hello(&mut device, None).await;

    let channel = chid();
    let reply = register(&mut device, &channel, None).await;
    assert_keys(
        &reply,
        &["messageType", "uaid", "status", "channelID", "pushEndpoint"],
    );
    assert_eq!(reply["messageType"], json!("register"));
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["uaid"], json!(uaid));
    assert_eq!(reply["channelID"], json!(channel));
    let endpoint = reply["pushEndpoint"].as_str().unwrap();
    let (version, token) = wpush_token(&server, endpoint);
    assert_eq!(version, WebPushVersion::V1);
    let target = tokens.decode_webpush(version, &token).unwrap();
    assert_eq!(target.uaid.as_str(), uaid);
    assert_eq!(target.channel.as_str(), channel);
    assert_eq!(target.key_digest, None);

    let key = vapid_key();
    let mut endpoints = vec![endpoint.to_owned()];
    for text in [URL_SAFE_NO_PAD.encode(&key), URL_SAFE.encode(&key)] {
        let channel = chid().to_uppercase();
        let reply = register(&mut device, &channel, Some(&text)).await;
        assert_eq!(reply["status"], json!(200), "{reply}");
        assert_eq!(reply["channelID"], json!(channel), "as sent");
        let endpoint = reply["pushEndpoint"].as_str().unwrap();
        let (version, token) = wpush_token(&server, endpoint);
        assert_eq!(version, WebPushVersion::V2, "{endpoint}");
        let target = tokens.decode_webpush(version, &token).unwrap();
        assert_eq!(target.channel.as_str(), channel);
        assert_eq!(target.key_digest, Some(key_digest(&key)));
        // A v2 token is no v1 token.
        assert!(tokens.decode_webpush(WebPushVersion::V1, &token).is_none());
        endpoints.push(endpoint.to_owned());
    }
    // Registering a channel again is idempotent, and every call gives a new endpoint.
    let again = register(&mut device, &channel, None).await;
    assert_eq!(again["status"], json!(200), "{again}");
    endpoints.push(again["pushEndpoint"].as_str().unwrap().to_owned());
    let mut distinct = endpoints.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), endpoints.len(), "{endpoints:?}");
}

#[tokio::test]
async fn register_with_a_key_off_the_curve_is_refused_and_closed() {
    let server = Server::start().await;
    let key = vapid_key();
    let mut off_curve = key.clone();
    off_curve[64] ^= 1;
    for bad in [
        URL_SAFE_NO_PAD.encode(&off_curve),
        URL_SAFE_NO_PAD.encode(&key[..33]),
        "not a key".to_owned(),
    ] {
        let mut device = server.connect().await;
        hello(&mut device, None).await;
        let channel = chid();
        device
            .send(json!({"messageType": "register", "channelID": channel, "key": bad}))
            .await;
        device
            .expect_refusal(401, "Invalid Command", &[("channelID", json!(channel))])
            .await;
    }
    // A channelID that is not a UUID is refused as in SimplePush.
    let mut device = server.connect().await;
    hello(&mut device, None).await;
    device
        .send(json!({"messageType": "register", "channelID": "xyz"}))
        .await;
    device
        .expect_refusal(401, "Invalid Command", &[("channelID", json!("xyz"))])
        .await;
}

#[tokio::test]
async fn unregister_answers_200_and_the_channel_is_gone() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let uaid = hello(&mut device, None).await;
    let channel = chid();
    register(&mut device, &channel, None).await;
    for _ in 0..2 {
        device
            .send(json!({"messageType": "unregister", "channelID": channel, "code": 200}))
            .await;
        let reply = device.recv().await;
        assert_eq!(
            reply,
            json!({"messageType": "unregister", "channelID": channel, "status": 200})
        );
    }
    device.close().await;
    // Its only channel is gone: the store no longer knows the uaid.
    let mut device = server.connect().await;
    assert_ne!(hello(&mut device, Some(&uaid)).await, uaid);
}

#[tokio::test]
async fn unknown_types_broadcast_subscribe_and_nacks_get_no_reply_and_no_close() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    hello(&mut device, None).await;
    for frame in [
        json!({"messageType": "bogus"}),
        json!({"messageType": "broadcast_subscribe", "broadcasts": {"remote-settings/monitor_changes": "v1"}}),
        json!({"messageType": "nack", "version": "m1", "code": 301}),
        json!({"messageType": "ack", "updates": [{"channelID": chid(), "version": "unknown-id", "code": 100}]}),
        json!({"uaid": "no type"}),
    ] {
        device.send(frame).await;
    }
    device.ping().await;
    device.ping().await;
    let metrics = server.metrics_text().await;
    for (name, label, value) in [
        ("webpush_commands_total", r#"command="unknown""#, 2),
        (
            "webpush_commands_total",
            r#"command="broadcast_subscribe""#,
            1,
        ),
        ("webpush_commands_total", r#"command="hello""#, 1),
        ("webpush_commands_total", r#"command="ping""#, 2),
        ("webpush_nacks_total", r#"code="301""#, 1),
        ("webpush_acks_total", r#"code="100""#, 1),
    ] {
        assert_eq!(metric(&metrics, name, label), Some(value), "{name} {label}");
    }
}

#[tokio::test]
async fn malformed_frames_still_close_the_socket() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    hello(&mut device, None).await;
    device.send_text("[1]").await;
    assert_eq!(device.recv_close().await, 1007);
    let mut device = server.connect().await;
    hello(&mut device, None).await;
    device
        .send(json!({"messageType": "ack", "updates": [{"version": 5}]}))
        .await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("updates", json!([{"version": 5}]))],
        )
        .await;
}

#[tokio::test]
async fn the_command_throttle_applies_to_webpush_sessions() {
    let server = Server::builder()
        .protocol("command_rate", "1")
        .protocol("command_burst", "3")
        .start()
        .await;
    let mut device = server.connect().await;
    hello(&mut device, None).await;
    for _ in 0..10 {
        device.send_text("{}").await;
    }
    // Some pings within the burst (and what the rate refilled meanwhile), then the
    // refusal and the close.
    let mut answered = 0;
    let frame = loop {
        let frame = device.recv().await;
        if frame != json!({}) {
            break frame;
        }
        answered += 1;
    };
    assert!(answered < 10, "{answered}");
    common::assert_error_frame(&frame, 401, "Invalid Command", &[]);
    assert_eq!(frame["messageType"], json!("ping"), "{frame}");
    assert_eq!(device.recv_close().await, 1000);
}

#[tokio::test]
async fn simplepush_devices_on_the_same_server_are_unaffected() {
    let server = Server::start().await;
    let mut webpush = server.connect().await;
    hello(&mut webpush, None).await;
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    assert!(endpoint.contains("/update/"), "{endpoint}");
    // The SimplePush hello reply has no WebPush fields; a second one is answered.
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "use_webpush": true}))
        .await;
    assert_eq!(
        reply,
        json!({"messageType": "hello", "uaid": uaid, "status": 200})
    );
    server.put_version(&endpoint, 7, 200).await;
    let frame = device.recv_notification().await;
    assert_eq!(common::updates(&frame), vec![(channel.clone(), 7, None)]);
    device.ack(&channel, 7).await;
    // Unknown types still close a SimplePush socket.
    device.send(json!({"messageType": "bogus"})).await;
    device.expect_refusal(401, "Invalid Command", &[]).await;
    webpush.ping().await;
}

/// A server in this process, on a store the test reaches.
struct InProcess {
    ws: String,
    store: Arc<MemoryStore>,
    shutdown: CancellationToken,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl InProcess {
    fn start(retry_interval: Duration) -> InProcess {
        let store = Arc::new(MemoryStore::new());
        let mut config = Config::default();
        config.server.ws_addr = "127.0.0.1:0".parse().unwrap();
        config.server.endpoint_addr = "127.0.0.1:0".parse().unwrap();
        config.server.admin_addr = "127.0.0.1:0".parse().unwrap();
        config.protocol.min_ping_interval = Duration::ZERO;
        config.protocol.retry_interval = retry_interval;
        let shutdown = CancellationToken::new();
        let server = simplepush::server::Server::bind(
            &config,
            store.clone(),
            &[token_key()],
            shutdown.clone(),
        )
        .unwrap();
        let ws = format!("ws://{}/", server.ws_addr().unwrap());
        tokio::spawn(server.run());
        InProcess {
            ws,
            store,
            shutdown,
        }
    }

    async fn connect(&self) -> Ws {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&self.ws))
            .await
            .unwrap()
            .unwrap();
        Ws(ws)
    }

    /// Queues a message of `channel` with this id.
    async fn put(&self, uaid: &str, channel: &str, id: &str, payload: Option<Payload>) {
        let now = common::unix_now();
        self.put_at(uaid, channel, id, payload, now, now + 600)
            .await;
    }

    async fn put_at(
        &self,
        uaid: &str,
        channel: &str,
        id: &str,
        payload: Option<Payload>,
        now: u64,
        expires_at: u64,
    ) {
        let message = Message {
            id: MessageId::new(id),
            channel: ChannelId::new(channel),
            ttl: 600,
            expires_at,
            topic: None,
            urgency: Urgency::Normal,
            payload,
        };
        let outcome = self
            .store
            .put_message(&Uaid::new(uaid), &message, 1000, now)
            .await
            .unwrap();
        assert_eq!(outcome, QueueOutcome::Stored);
    }
}

/// A websocket client of an [`InProcess`] server.
struct Ws(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    async fn send(&mut self, value: Value) {
        self.0
            .send(WsMessage::text(value.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame within `wait`, as JSON; `None` when nothing came.
    async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.0.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(WsMessage::Text(text)))) => {
                    return Some(serde_json::from_str(text.as_str()).unwrap());
                }
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await.expect("no frame in time")
    }

    /// A ping answered by exactly `{}` next: nothing else was sent before it.
    async fn ping(&mut self) {
        self.send(json!({})).await;
        assert_eq!(self.recv().await, json!({}));
    }

    async fn hello(&mut self, uaid: Option<&str>) -> String {
        self.send(webpush_hello(uaid)).await;
        let reply = self.recv().await;
        assert_eq!(reply["messageType"], json!("hello"), "{reply}");
        assert_eq!(reply["use_webpush"], json!(true), "{reply}");
        reply["uaid"].as_str().unwrap().to_owned()
    }

    async fn register(&mut self, channel: &str) {
        self.send(json!({"messageType": "register", "channelID": channel}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply["status"], json!(200), "{reply}");
    }

    async fn ack(&mut self, ids: &[&str]) {
        let updates: Vec<Value> = ids
            .iter()
            .map(|id| json!({"channelID": "any", "version": id, "code": 100}))
            .collect();
        self.send(json!({"messageType": "ack", "updates": updates}))
            .await;
    }
}

/// A device with one channel that then goes away: its uaid and channel.
async fn subscribed(server: &InProcess) -> (String, String) {
    let mut device = server.connect().await;
    let uaid = device.hello(None).await;
    let channel = chid();
    device.register(&channel).await;
    drop(device);
    (uaid, channel)
}

#[tokio::test]
async fn queued_messages_come_at_hello_one_frame_each_until_acked() {
    let server = InProcess::start(Duration::from_secs(600));
    let (uaid, channel) = subscribed(&server).await;
    let body = vec![0xfb, 0xff, 0x00, 0x01];
    server
        .put(
            &uaid,
            &channel,
            "m0001",
            Some(Payload {
                encoding: "aes128gcm".into(),
                encryption: None,
                crypto_key: None,
                body: body.clone(),
            }),
        )
        .await;
    server.put(&uaid, &channel, "m0002", None).await;
    server
        .put(
            &uaid,
            &channel,
            "m0003",
            Some(Payload {
                encoding: "aesgcm".into(),
                encryption: Some("salt=abc".into()),
                crypto_key: Some("dh=def".into()),
                body: b"hi".to_vec(),
            }),
        )
        .await;

    let mut device = server.connect().await;
    assert_eq!(device.hello(Some(&uaid)).await, uaid);
    let first = device.recv().await;
    assert_eq!(
        first,
        json!({"messageType": "notification", "channelID": channel, "version": "m0001",
               "ttl": 600, "data": URL_SAFE_NO_PAD.encode(&body),
               "headers": {"encoding": "aes128gcm"}})
    );
    let second = device.recv().await;
    assert_eq!(
        second,
        json!({"messageType": "notification", "channelID": channel, "version": "m0002", "ttl": 600})
    );
    let third = device.recv().await;
    assert_eq!(
        third,
        json!({"messageType": "notification", "channelID": channel, "version": "m0003",
               "ttl": 600, "data": "aGk",
               "headers": {"encoding": "aesgcm", "encryption": "salt=abc", "crypto_key": "dh=def"}})
    );
    device.ping().await;
    // Ack two (one of them twice, the other with a decryption failure code): no reply.
    device.ack(&["m0001", "m0001"]).await;
    device
        .send(json!({"messageType": "ack", "updates": [{"channelID": channel, "version": "m0003", "code": 101}]}))
        .await;
    device.ping().await;
    drop(device);

    // The unacknowledged one comes again at the next hello, and only it.
    let mut device = server.connect().await;
    device.hello(Some(&uaid)).await;
    let again = device.recv().await;
    assert_eq!(again["version"], json!("m0002"), "{again}");
    device.ping().await;
    device.ack(&["m0002"]).await;
    device.ping().await;
    drop(device);

    let mut device = server.connect().await;
    device.hello(Some(&uaid)).await;
    device.ping().await;
}

#[tokio::test]
async fn expired_messages_are_dropped_silently() {
    let server = InProcess::start(Duration::from_secs(600));
    let (uaid, channel) = subscribed(&server).await;
    let now = common::unix_now();
    server
        .put_at(&uaid, &channel, "old", None, now - 100, now - 50)
        .await;
    server.put(&uaid, &channel, "new", None).await;
    let mut device = server.connect().await;
    device.hello(Some(&uaid)).await;
    assert_eq!(device.recv().await["version"], json!("new"));
    device.ping().await;
}

#[tokio::test]
async fn unacked_messages_are_sent_again_after_retry_interval_on_the_open_socket() {
    let server = InProcess::start(Duration::from_secs(2));
    let (uaid, channel) = subscribed(&server).await;
    server.put(&uaid, &channel, "m1", None).await;
    let mut device = server.connect().await;
    device.hello(Some(&uaid)).await;
    assert_eq!(device.recv().await["version"], json!("m1"));
    // Not acked: it comes again on this socket.
    let again = device.recv().await;
    assert_eq!(again["version"], json!("m1"), "{again}");
    device.ack(&["m1"]).await;
    device.ping().await;
    // Acked: nothing more, also not after another retry interval.
    assert_eq!(device.recv_within(Duration::from_secs(3)).await, None);
}

#[tokio::test]
async fn a_long_queue_goes_out_a_page_at_a_time_the_next_after_acks() {
    let server = InProcess::start(Duration::from_secs(600));
    let (uaid, channel) = subscribed(&server).await;
    let total = 130;
    let ids: Vec<String> = (0..total).map(|i| format!("m{i:04}")).collect();
    for id in &ids {
        server.put(&uaid, &channel, id, None).await;
    }
    let mut device = server.connect().await;
    device.hello(Some(&uaid)).await;
    let mut first_page = Vec::new();
    for _ in 0..PAGE {
        first_page.push(device.recv().await["version"].as_str().unwrap().to_owned());
    }
    assert_eq!(first_page, ids[..PAGE]);
    // Nothing beyond the page until it is acknowledged.
    assert_eq!(device.recv_within(QUIET).await, None);
    // Acking the page, one frame each as Firefox does, brings the rest.
    for id in &first_page {
        device.ack(&[id]).await;
    }
    let mut rest = Vec::new();
    for _ in first_page.len()..total {
        rest.push(device.recv().await["version"].as_str().unwrap().to_owned());
    }
    assert_eq!(rest, ids[first_page.len()..]);
    device.ping().await;
}

/// POSTs a push without VAPID to a `/wpush/v1/` endpoint; asserts 201.
async fn push(server: &Server, endpoint: &str, body: Option<&str>) {
    let mut headers = vec![("ttl", "60")];
    if body.is_some() {
        headers.push(("content-encoding", "aes128gcm"));
    }
    let reply = common::http_with("POST", &server.reachable(endpoint), &headers, body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[tokio::test]
async fn live_pushes_are_one_frame_each_and_sent_again_until_acked() {
    // Long enough for the first ack to arrive before the retry on a busy machine.
    let server = Server::builder()
        .protocol("retry_interval", "\"2s\"")
        .start()
        .await;
    let mut device = server.connect().await;
    let uaid = hello(&mut device, None).await;
    let channel = chid();
    let reply = register(&mut device, &channel, None).await;
    let endpoint = reply["pushEndpoint"].as_str().unwrap().to_owned();
    push(&server, &endpoint, Some("one")).await;
    push(&server, &endpoint, None).await;
    let first = device.recv().await;
    assert_eq!(first["messageType"], json!("notification"), "{first}");
    assert_eq!(first["channelID"], json!(channel), "{first}");
    assert_eq!(
        first["data"],
        json!(URL_SAFE_NO_PAD.encode("one")),
        "{first}"
    );
    let second = device.recv().await;
    assert_eq!(second["messageType"], json!("notification"), "{second}");
    assert!(second.get("data").is_none(), "{second}");
    let (a, b) = (first["version"].clone(), second["version"].clone());
    assert_ne!(a, b);
    // Only the first is acknowledged: the second comes again on this socket.
    device
        .send(json!({"messageType": "ack", "updates": [{"channelID": channel, "version": a, "code": 100}]}))
        .await;
    let again = device.recv().await;
    assert_eq!(again["version"], b, "{again}");
    device
        .send(json!({"messageType": "ack", "updates": [{"channelID": channel, "version": b, "code": 102}]}))
        .await;
    device.ping().await;
    assert_eq!(device.recv_within(Duration::from_secs(3)).await, None);
    device.close().await;
    // Both acknowledged: nothing at the next hello.
    let mut device = server.connect().await;
    assert_eq!(hello(&mut device, Some(&uaid)).await, uaid);
    device.ping().await;
    let metrics = server.metrics_text().await;
    for (name, label, value) in [
        ("webpush_notifications_total", "", 3),
        ("webpush_acks_total", r#"code="100""#, 1),
        ("webpush_acks_total", r#"code="102""#, 1),
        ("retries_total", "", 1),
    ] {
        assert_eq!(metric(&metrics, name, label), Some(value), "{name} {label}");
    }
}

#[tokio::test]
async fn a_simplepush_session_of_the_same_uaid_gets_no_webpush_message() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let uaid = hello(&mut device, None).await;
    let channel = chid();
    let reply = register(&mut device, &channel, None).await;
    let endpoint = reply["pushEndpoint"].as_str().unwrap().to_owned();
    device.close().await;
    // The same uaid as a SimplePush device: the message is not for it.
    let mut simplepush = server.connect().await;
    assert_eq!(simplepush.hello(&uaid).await, uaid);
    push(&server, &endpoint, Some("kept")).await;
    simplepush.ping().await;
    assert_eq!(simplepush.recv_within(QUIET).await, None);
    simplepush.close().await;
    // It waits for the next WebPush hello.
    let mut device = server.connect().await;
    assert_eq!(hello(&mut device, Some(&uaid)).await, uaid);
    let frame = device.recv().await;
    assert_eq!(
        frame["data"],
        json!(URL_SAFE_NO_PAD.encode("kept")),
        "{frame}"
    );
}
