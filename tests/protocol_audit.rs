//! An independent audit of the real binary against docs/protocol.md: each test pins one rule
//! (or one edge of a rule) that the other black-box suites leave uncovered or check only
//! loosely, over real sockets, as a strict third-party client would exercise it.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{
    Device, Reply, Server, WAIT, assert_error_frame, assert_keys, chid, hex_id, http, http_with,
    updates,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

// ---- private tools ---------------------------------------------------------------------

/// The harness's builder with the queue-delay load shedder off: these tests audit
/// protocol answers, and on a loaded 2-core box the shedder (rightly) answers PUTs with
/// 503 while the runtime lags, which would make them fail for reasons of load alone.
fn builder() -> common::Builder {
    Server::builder().set("server", "max_queue_delay", "\"0\"")
}

/// True when `id` is a UUIDv4 as 32 lower-case hex digits (a minted uaid).
fn is_minted_uaid(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.as_bytes()[12] == b'4'
}

/// A connected device with one registered channel: (device, uaid, channelID, endpoint).
async fn live_channel(server: &Server) -> (Device, String, String, String) {
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    (device, uaid, channel, endpoint)
}

/// The token part of a pushEndpoint.
fn token_of(endpoint: &str) -> &str {
    endpoint.split_once("/update/").unwrap().1
}

/// `PUT` a body with this Content-Type to a pushEndpoint.
async fn put_typed(server: &Server, endpoint: &str, content_type: &str, body: &str) -> Reply {
    http(
        "PUT",
        &server.reachable(endpoint),
        Some(content_type),
        Some(body),
    )
    .await
}

/// The health URLs of both listeners, with and without the trailing slash.
fn health_urls(server: &Server, page: &str) -> Vec<String> {
    let mut out = Vec::new();
    for path in [format!("/{page}/"), format!("/{page}")] {
        out.push(server.endpoint_url(&path));
        out.push(server.ws_http_url(&path));
    }
    out
}

/// Opens a websocket by hand, offering `protocol` when given. Returns the response head
/// (read byte by byte, so nothing after it is consumed) and the stream.
async fn raw_handshake(addr: SocketAddr, protocol: Option<&str>) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = String::from(
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    if let Some(protocol) = protocol {
        request.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8())
            .await
            .expect("no handshake reply")
            .expect("connection ended during the handshake");
        head.push(byte);
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

/// The values of header `name` (case-insensitive) in a raw response head.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_owned())
        .collect()
}

// ---- §1, §6 listeners and health ------------------------------------------------------

/// §6 `GET /status/`, `GET /realstatus/`; RFC 9110 §9.1: a general-purpose server MUST
/// support HEAD wherever it supports GET (pushgo's handlers answered any method).
#[tokio::test]
async fn head_on_status_and_realstatus_is_200_on_both_listeners() {
    let server = builder().start().await;
    let mut failures = Vec::new();
    for page in ["status", "realstatus"] {
        for url in health_urls(&server, page) {
            let reply = http("HEAD", &url, None, None).await;
            if reply.status != 200 {
                failures.push(format!("HEAD {url} -> {}", reply.status));
            }
        }
    }
    assert!(failures.is_empty(), "HEAD not served: {failures:#?}");
}

/// §5 "Error bodies are JSON", also for paths that do not exist, on both listeners.
#[tokio::test]
async fn unknown_paths_are_404_with_a_json_error_body_on_both_listeners() {
    let server = builder().start().await;
    for url in [
        server.endpoint_url("/nope"),
        server.ws_http_url("/nope"),
        server.endpoint_url("/update/"),
        server.endpoint_url("/update"),
    ] {
        let reply = http("PUT", &url, None, Some("version=1")).await;
        reply.assert_error(404, &["Not Found"]);
    }
}

// ---- §2 framing ------------------------------------------------------------------------

/// §2 "If the client offers subprotocol `push-notification`, select it": also when it is
/// one of several offered.
#[tokio::test]
async fn push_notification_is_selected_when_offered_among_others() {
    let server = builder().start().await;
    let (head, _stream) = raw_handshake(server.ws, Some("chat, push-notification")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header_values(&head, "sec-websocket-protocol"),
        vec!["push-notification".to_owned()],
        "{head}"
    );
}

/// §2 "never require it": a client offering only other subprotocols still connects, and
/// (RFC 6455 §4.2.2) the server selects none it was not offered.
#[tokio::test]
async fn other_subprotocols_are_not_required_nor_selected() {
    let server = builder().start().await;
    let (head, stream) = raw_handshake(server.ws, Some("chat")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        header_values(&head, "sec-websocket-protocol").is_empty(),
        "{head}"
    );
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    ws.send(Message::text(r#"{"messageType":"hello","uaid":""}"#))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    let Some(Ok(Message::Text(text))) = reply else {
        panic!("no hello reply: {reply:?}");
    };
    let reply: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(reply["status"], json!(200), "{reply}");
}

/// RFC 6455 §4.1 (which §2's "select it" has to respect): the selected subprotocol must be
/// one the client offered, byte for byte; otherwise the client MUST fail the connection
/// (tungstenite and browsers compare exactly). A client offering `Push-Notification` gets
/// either no subprotocol or exactly that spelling back.
#[tokio::test]
async fn selected_subprotocol_is_exactly_a_value_the_client_offered() {
    let server = builder().start().await;
    let (head, _stream) = raw_handshake(server.ws, Some("Push-Notification")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let selected = header_values(&head, "sec-websocket-protocol");
    assert!(
        selected.is_empty() || selected == ["Push-Notification"],
        "the server selected {selected:?}, which the client never offered"
    );
}

/// §2 keys and `messageType` are plain JSON strings: unicode escapes, other key orders,
/// whitespace around the object and extra keys anywhere are all understood.
#[tokio::test]
async fn odd_but_valid_json_is_understood() {
    let server = builder().start().await;
    let mut device = server.connect().await;
    // `\u006d` is `m`, `\u0068` is `h`; uaid first; a trailing newline.
    device
        .send_text("{\"uaid\":\"\",\"\\u006dessageType\":\"\\u0068eLLo\"}\n")
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["messageType"], json!("hello"), "{reply}");
    assert_eq!(reply["status"], json!(200), "{reply}");

    // A channelID whose first character is escaped is that channelID.
    let channel = chid();
    let escaped = format!(
        "\\u{:04x}{}",
        u32::from(channel.chars().next().unwrap()),
        &channel[1..]
    );
    device
        .send_text(&format!(
            "  {{ \"channelID\" : \"{escaped}\" ,\r\n \"messageType\" : \"register\" }}  "
        ))
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["status"], json!(200), "{reply}");
    assert_eq!(reply["channelID"], json!(channel), "{reply}");
    let endpoint = reply["pushEndpoint"].as_str().unwrap().to_owned();

    // Extra keys on a ping, on an ack entry and on an unregister are ignored.
    device
        .send(json!({"messageType": "ping", "x": {"y": [1, 2]}}))
        .await;
    assert_eq!(device.recv_text().await, "{}");
    server.put_version(&endpoint, 4, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 4, None)]
    );
    device
        .send(json!({
            "messageType": "ack",
            "updates": [{"channelID": channel, "version": 4, "data": "x", "extra": null}],
            "note": true,
        }))
        .await;
    device.ping().await;
    device
        .send(json!({"channelID": channel, "messageType": "unregister", "why": "bye"}))
        .await;
    assert_eq!(
        device.recv().await,
        json!({"messageType": "unregister", "status": 200, "channelID": channel})
    );
}

/// §2 "Frames larger than `max_message_bytes` ... close the socket (1009)": a frame of
/// exactly the limit is not larger.
#[tokio::test]
async fn frame_of_exactly_max_message_bytes_is_accepted_and_one_byte_more_closes_1009() {
    let server = builder()
        .protocol("max_message_bytes", "1024")
        .start()
        .await;
    for (size, accepted) in [(1024, true), (1025, false)] {
        let (mut device, _) = server.device().await;
        let mut frame = json!({"messageType": "register", "channelID": chid(), "pad": ""});
        let len = frame.to_string().len();
        frame["pad"] = json!("x".repeat(size - len));
        assert_eq!(frame.to_string().len(), size);
        device.send(frame).await;
        if accepted {
            let reply = device.recv().await;
            assert_eq!(reply["status"], json!(200), "{size} bytes: {reply}");
        } else {
            assert_eq!(device.recv_close().await, 1009, "{size} bytes");
        }
    }
}

/// §8 `max_message_bytes = 65536` by default: a 64 KiB frame is accepted.
#[tokio::test]
async fn default_max_message_bytes_accepts_a_64_kib_frame() {
    let server = builder().start().await;
    let (mut device, _) = server.device().await;
    let mut frame = json!({"messageType": "register", "channelID": chid(), "pad": ""});
    let len = frame.to_string().len();
    frame["pad"] = json!("x".repeat(65_536 - len));
    assert_eq!(frame.to_string().len(), 65_536);
    device.send(frame).await;
    let reply = device.recv().await;
    assert_eq!(reply["status"], json!(200), "{reply}");
}

// ---- §3 errors -------------------------------------------------------------------------

/// §3 "The frame echoes the identifying fields the client sent (... `updates` for ack)":
/// what the client sent, not a rebuilt copy of it.
#[tokio::test]
async fn ack_refusal_echoes_updates_exactly_as_sent() {
    let server = builder().start().await;
    let mut device = server.connect().await;
    // Keys in other cases (§2 allows them) and an extra key (§2 ignores it).
    let sent = json!([{"ChannelID": chid(), "VERSION": 3, "note": "x"}]);
    device
        .send(json!({"messageType": "ack", "updates": sent}))
        .await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("messageType", json!("ack")), ("updates", sent)],
        )
        .await;
}

/// §3 echoes "the identifying fields the client sent": an ack carrying only `expired`
/// sent no `updates`, so the refusal has none to echo.
#[tokio::test]
async fn ack_refusal_does_not_echo_updates_the_client_never_sent() {
    let server = builder().start().await;
    let mut device = server.connect().await;
    device
        .send(json!({"messageType": "ack", "expired": [chid()]}))
        .await;
    let frame = device.recv().await;
    assert_error_frame(&frame, 401, "Invalid Command", &[]);
    assert_eq!(
        frame.get("updates"),
        None,
        "the client sent no updates: {frame}"
    );
    assert_eq!(device.recv_close().await, 1000);
}

/// §3: an error frame has `messageType`, `status`, `error`, `reason` and only the echoed
/// identifying field of its command.
#[tokio::test]
async fn error_frames_carry_exactly_the_documented_fields() {
    let server = builder()
        .protocol("min_ping_interval", "\"10s\"")
        .start()
        .await;
    let base = ["messageType", "status", "error", "reason"];
    let channel = chid();
    let cases = [
        (
            json!({"messageType": "unregister", "channelID": channel}),
            Some("channelID"),
        ),
        (
            json!({"messageType": "register", "channelID": channel}),
            Some("channelID"),
        ),
        (
            json!({"messageType": "ack", "updates": [{"channelID": channel, "version": 1}]}),
            Some("updates"),
        ),
        (json!({"messageType": "nope", "uaid": "x"}), None),
        (
            json!({"messageType": "hello", "uaid": hex_id(), "channelIDs": "x"}),
            Some("uaid"),
        ),
    ];
    for (sent, echoed) in cases {
        let mut device = server.connect().await;
        device.send(sent.clone()).await;
        let frame = device.recv().await;
        assert_eq!(frame["status"], json!(401), "{sent} -> {frame}");
        let mut keys = base.to_vec();
        keys.extend(echoed);
        assert_keys(&frame, &keys);
        if let Some(key) = echoed {
            assert_eq!(frame[key], sent[key], "echo of {key}");
        }
        assert_eq!(device.recv_close().await, 1000, "after {frame}");
    }
    let mut device = server.connect().await;
    device.ping().await;
    device.send_text("{}").await;
    let frame = device.recv().await;
    assert_keys(&frame, &base);
    assert_eq!(frame["reason"], json!("too many pings"));
    assert_eq!(frame["messageType"], json!("ping"));
}

/// §3 "malformed fields (wrong JSON types, channelID not a UUID)": read as applying to
/// every channelID a command carries, so also to an ack's `updates[].channelID`.
#[tokio::test]
async fn ack_with_channel_id_not_a_uuid_gets_401() {
    let server = builder().start().await;
    let (mut device, _) = server.device().await;
    let sent = json!([{"channelID": "xyz", "version": 1}]);
    device
        .send(json!({"messageType": "ack", "updates": sent}))
        .await;
    // A ping right behind it: its `{}` coming first means the ack was taken silently.
    device.send_text("{}").await;
    let frame = device.recv().await;
    assert_ne!(frame, json!({}), "the ack was accepted without a refusal");
    assert_error_frame(
        &frame,
        401,
        "Invalid Command",
        &[("messageType", json!("ack")), ("updates", sent)],
    );
    assert_eq!(device.recv_close().await, 1000);
}

// ---- §4 hello ------------------------------------------------------------------------

/// §4 "A second hello on the same socket with the same or empty uaid: 200 with the
/// current uaid": a missing uaid is an empty one.
#[tokio::test]
async fn second_hello_without_uaid_gets_200_with_current_uaid() {
    let server = builder().start().await;
    let (mut device, uaid) = server.device().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "channelIDs": []}))
        .await;
    assert_eq!(
        reply,
        json!({"messageType": "hello", "uaid": uaid, "status": 200})
    );
    device.register(&chid()).await;
}

/// §4 mints only when `channelIDs` has *more than* `max_channels` entries: exactly that
/// many (duplicates included) keeps a known uaid and its pending updates.
#[tokio::test]
async fn hello_with_exactly_max_channels_ids_keeps_a_known_uaid() {
    let server = builder().protocol("max_channels", "3").start().await;
    let (device, uaid, channel, endpoint) = live_channel(&server).await;
    device.close().await;
    server.wait_for_clients(0).await;
    server.put_version(&endpoint, 5, 202).await;
    for ids in [
        json!([channel, chid(), chid()]),
        json!([channel, channel]),
        json!([channel]),
    ] {
        let mut device = server.connect().await;
        let reply = device
            .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": ids}))
            .await;
        assert_eq!(reply["uaid"], json!(uaid), "channelIDs {ids}");
        assert_eq!(
            updates(&device.recv_notification().await),
            vec![(channel.clone(), 5, None)],
            "channelIDs {ids}"
        );
        device.close().await;
        server.wait_for_clients(0).await;
    }
}

/// §8 `max_channels = 200` by default, as hello counts it: 200 entries keep a known
/// uaid, 201 mint a new one.
#[tokio::test]
async fn default_max_channels_is_200_for_hello() {
    let server = builder().start().await;
    let (device, uaid, channel, _) = live_channel(&server).await;
    device.close().await;
    server.wait_for_clients(0).await;
    let mut ids: Vec<String> = vec![channel];
    ids.extend((1..200).map(|_| chid()));
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": ids}))
        .await;
    assert_eq!(reply["uaid"], json!(uaid), "200 channelIDs");
    device.close().await;
    server.wait_for_clients(0).await;
    ids.push(chid());
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": ids}))
        .await;
    let minted = reply["uaid"].as_str().unwrap();
    assert_ne!(minted, uaid, "201 channelIDs");
    assert!(is_minted_uaid(minted), "{reply}");
}

/// §4 "uaid is missing/empty/not UUID-shaped" mints; a UUID-shaped one (32 hex or 36
/// with dashes at 8/13/18/23, any case) is kept as sent. The boundaries of that shape.
#[tokio::test]
async fn hello_uaid_shapes_at_the_boundaries() {
    let server = builder().start().await;
    let dashed = chid();
    let mut mixed = hex_id();
    mixed.replace_range(..4, "ABCD");
    for uaid in [
        hex_id().to_uppercase(),
        dashed.to_uppercase(),
        dashed.replace('-', ""),
        mixed,
    ] {
        let mut device = server.connect().await;
        assert_eq!(device.hello(&uaid).await, uaid, "UUID-shaped uaid");
    }
    for uaid in [
        hex_id() + "abcd",                                             // 36 hex, no dashes
        hex_id()[..31].to_owned(),                                     // 31 hex
        format!("{}-{}{}", &dashed[..7], &dashed[7..8], &dashed[9..]), // dash at 7, not 8
        format!("{{{}}}", hex_id()),                                   // braces
    ] {
        let mut device = server.connect().await;
        let got = device.hello(&uaid).await;
        assert_ne!(got, uaid);
        assert!(is_minted_uaid(&got), "{got:?} minted for {uaid:?}");
    }
}

/// §4 "No hello within `hello_timeout` of connecting: close": pings (allowed before
/// hello) do not postpone it.
#[tokio::test]
async fn pings_before_hello_do_not_postpone_the_hello_timeout() {
    let server = builder().protocol("hello_timeout", "\"1s\"").start().await;
    let started = std::time::Instant::now();
    let mut device = server.connect().await;
    device.ping().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    device.ping().await;
    device.recv_end_within(Duration::from_millis(1500)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1900),
        "closed only after {elapsed:?}"
    );
}

// ---- §4 register / unregister ----------------------------------------------------------

/// §8 `max_channels = 200` by default, as register counts it: the 201st live channel is
/// refused with 503 and the socket closed.
#[tokio::test]
async fn default_max_channels_is_200_for_register() {
    let server = builder().start().await;
    let (mut device, _) = server.device().await;
    for _ in 0..200 {
        device.register(&chid()).await;
    }
    let extra = chid();
    device
        .send(json!({"messageType": "register", "channelID": extra}))
        .await;
    device
        .expect_refusal(
            503,
            "Service Unavailable",
            &[
                ("messageType", json!("register")),
                ("channelID", json!(extra)),
            ],
        )
        .await;
}

/// §4 "channelID must be UUID-shaped: 32 hex, or 36 with dashes at 8/13/18/23": the
/// near misses a sloppy check lets through.
#[tokio::test]
async fn register_rejects_uuid_lookalikes() {
    let server = builder().start().await;
    let dashed = chid();
    let plain = hex_id();
    let bad = [
        plain.clone() + "abcd",                        // 36 hex, no dashes
        dashed[..35].to_owned(),                       // 35 characters
        format!("{dashed}0"),                          // 37 characters
        format!("urn:uuid:{dashed}"),                  // URN form
        format!(" {plain}"),                           // leading space
        format!("{plain}\n"),                          // trailing newline
        dashed.replacen('-', "_", 1),                  // wrong separator
        format!("{}g{}", &dashed[..9], &dashed[10..]), // non-hex among dashes
        "０".repeat(32),                               // full-width digits
    ];
    for id in bad {
        let (mut device, _) = server.device().await;
        device
            .send(json!({"messageType": "register", "channelID": id}))
            .await;
        device
            .expect_refusal(401, "Invalid Command", &[("channelID", json!(id))])
            .await;
    }
}

/// channelIDs are minted by devices, so two devices may pick the same one: each has its
/// own channel, endpoint and pending update.
#[tokio::test]
async fn same_channel_id_under_two_uaids_are_two_channels() {
    let server = builder().start().await;
    let (mut a, _) = server.device().await;
    let (mut b, _) = server.device().await;
    let channel = chid();
    let endpoint_a = a.register(&channel).await;
    let endpoint_b = b.register(&channel).await;
    assert_ne!(token_of(&endpoint_a), token_of(&endpoint_b));
    server.put_version(&endpoint_a, 1, 200).await;
    assert_eq!(
        updates(&a.recv_notification().await),
        vec![(channel.clone(), 1, None)]
    );
    b.ping().await;
    a.unregister(&channel).await;
    server
        .put(&endpoint_a, "version=2")
        .await
        .assert_error(410, &["Gone"]);
    server.put_version(&endpoint_b, 3, 200).await;
    assert_eq!(
        updates(&b.recv_notification().await),
        vec![(channel, 3, None)]
    );
    a.ping().await;
}

/// §4 "IDs are stored and echoed exactly as sent", on unregister too; the endpoint of
/// that channel then answers 410.
#[tokio::test]
async fn unregister_of_upper_case_channel_echoes_it_and_ends_its_endpoint() {
    let server = builder().start().await;
    let (mut device, _) = server.device().await;
    let channel = chid().to_uppercase();
    let endpoint = device.register(&channel).await;
    device.unregister(&channel).await;
    server
        .put(&endpoint, "version=1")
        .await
        .assert_error(410, &["Gone"]);
}

/// §4 unregister drops the channel; registering it again is a register like any other:
/// 200 and a working endpoint.
#[tokio::test]
async fn registering_an_unregistered_channel_again_gives_a_working_endpoint() {
    let server = builder().start().await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    device.register(&channel).await;
    device.unregister(&channel).await;
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 9, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 9, None)]
    );
}

/// §4 "Client-initiated unregisters are never reported back in `expired`" and unregister
/// "Drops the channel and its pending update": also when that update had expired.
#[tokio::test]
async fn unregistering_an_expired_channel_ends_its_expiry_reports() {
    let server = builder().protocol("message_ttl", "\"1s\"").start().await;
    let (device, uaid, channel, endpoint) = live_channel(&server).await;
    device.close().await;
    server.wait_for_clients(0).await;
    server.put_version(&endpoint, 1, 202).await;
    // The update's TTL has to pass for real while the device is away.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    let frame = device.recv_notification().await;
    assert_eq!(common::expired(&frame), vec![channel.clone()], "{frame}");
    device.unregister(&channel).await;
    device.close().await;
    server.wait_for_clients(0).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    device.ping().await;
}

// ---- §4 ack / ping / notification --------------------------------------------------------

/// §4 ack: "No reply", also for channels the server never heard of.
#[tokio::test]
async fn ack_of_unknown_channels_gets_no_reply_and_keeps_the_socket() {
    let server = builder().start().await;
    let (mut device, _) = server.device().await;
    device
        .send(json!({
            "messageType": "ack",
            "updates": [{"channelID": chid(), "version": 1}],
            "expired": [chid()],
        }))
        .await;
    device.ping().await;
    device.register(&chid()).await;
}

/// §8 `min_ping_interval = "20s"` by default (the harness turns it off; this server's
/// config leaves the key out).
#[tokio::test]
async fn default_min_ping_interval_refuses_a_second_ping_at_once() {
    let server = builder()
        .unset("protocol", "min_ping_interval")
        .start()
        .await;
    let mut device = server.connect().await;
    device.ping().await;
    device.send(json!({})).await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("reason", json!("too many pings"))],
        )
        .await;
}

/// §4 notification `data` is the app server's text: any Unicode and the characters JSON
/// must escape arrive unchanged.
#[tokio::test]
async fn data_with_unicode_and_json_special_characters_arrives_intact() {
    let server = builder().start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let data = "héllo \"quoted\" back\\slash\nnew\tline ✓ 🎉 <&> \u{1}";
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("version", "6")
        .append_pair("data", data)
        .finish();
    let reply = server.put(&endpoint, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 6, Some(data.to_owned()))]
    );
}

// ---- §5 endpoint -------------------------------------------------------------------------

/// §8 `max_data_bytes = 4096` by default, counted in bytes: 4096 bytes of two-byte
/// characters pass, one byte more is a 413.
#[tokio::test]
async fn default_max_data_bytes_is_4096_bytes() {
    let server = builder().start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let exact = "é".repeat(2048);
    assert_eq!(exact.len(), 4096);
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("version", "1")
        .append_pair("data", &exact)
        .finish();
    let reply = server.put(&endpoint, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 1, Some(exact.clone()))]
    );
    let over = form_urlencoded::Serializer::new(String::new())
        .append_pair("version", "2")
        .append_pair("data", &(exact + "x"))
        .finish();
    server
        .put(&endpoint, &over)
        .await
        .assert_error(413, &["Payload Too Large", "Content Too Large"]);
    device.ping().await;
}

/// §5 the body is parsed for the form types whatever the case of their name and the
/// spacing of their parameters (media types are case-insensitive, RFC 9110 §8.3.1).
#[tokio::test]
async fn form_content_types_are_matched_case_insensitively() {
    let server = builder().start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let cases = [
        (41, "APPLICATION/X-WWW-FORM-URLENCODED", None),
        (
            42,
            "application/x-www-form-urlencoded ; charset=utf-8",
            None,
        ),
        (43, "Multipart/Form-Data; boundary=Bnd43", Some("Bnd43")),
        (44, "multipart/form-data; boundary=\"q-44\"", Some("q-44")),
    ];
    for (version, content_type, boundary) in cases {
        let body = match boundary {
            None => format!("version={version}&data=d{version}"),
            Some(b) => format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n{version}\r\n\
                 --{b}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\nd{version}\r\n\
                 --{b}--\r\n"
            ),
        };
        let reply = put_typed(&server, &endpoint, content_type, &body).await;
        assert_eq!(reply.status, 200, "{content_type}: {}", reply.body);
        assert_eq!(
            updates(&device.recv_notification().await),
            vec![(channel.clone(), version, Some(format!("d{version}")))],
            "{content_type}"
        );
    }
}

/// §5 body parsed when Content-Type "is absent": a header with an empty value names no
/// type, and pushgo (the reference where docs/protocol.md is silent) treated it as absent.
#[tokio::test]
async fn empty_content_type_header_is_treated_as_absent() {
    let server = builder().start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let reply = http_with(
        "PUT",
        &server.reachable(&endpoint),
        &[("content-type", "")],
        Some("version=45&data=e"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 45, Some("e".to_owned()))]
    );
}

/// §5 parameters in the body and the query: as pushgo (Go's `FormValue`), the body wins
/// per parameter and the query fills in what the body lacks; an ignored body leaves the
/// query alone.
#[tokio::test]
async fn body_parameters_take_precedence_over_the_query_per_parameter() {
    let server = builder().start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let url = format!("{endpoint}?version=7&data=from%20query");
    let reply = server.put(&url, "version=5").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 5, Some("from query".to_owned()))]
    );
    let url = format!("{endpoint}?version=8");
    let reply = put_typed(&server, &url, "text/plain", "version=9&data=body").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 8, None)]
    );
}

/// §5 "`version` ... Not a non-negative integer that fits i64: 400": leading zeros still
/// spell a non-negative integer.
#[tokio::test]
async fn version_with_leading_zeros_is_that_integer() {
    let server = builder().start().await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    let reply = server.put(&endpoint, "version=007").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 7, None)]
    );
}

/// §5 "Other methods: 405" — HEAD and extension methods too — and RFC 9110 §15.5.6: a
/// 405 MUST carry `Allow` listing the methods the resource supports.
#[tokio::test]
async fn other_methods_get_405_with_an_allow_header() {
    let server = builder().start().await;
    let (mut device, _, _, endpoint) = live_channel(&server).await;
    let url = server.reachable(&endpoint);
    let mut missing = Vec::new();
    for method in ["GET", "POST", "DELETE", "PATCH", "HEAD", "PROPFIND"] {
        let reply = http(method, &url, None, None).await;
        assert_eq!(reply.status, 405, "{method}: {}", reply.body);
        if method != "HEAD" {
            reply.assert_error(405, &["Method Not Allowed"]);
        }
        let allow = reply.header("allow").unwrap_or_default().to_uppercase();
        if !allow.split(',').any(|m| m.trim() == "PUT") {
            missing.push(format!("{method}: Allow {allow:?}"));
        }
    }
    device.ping().await;
    assert!(missing.is_empty(), "405 without Allow: PUT: {missing:#?}");
}

/// §5 "a key list allows rotation (first key mints, all keys open)". With memory stores
/// a restarted server knows no channel, so 410 (token opened, channel unknown) and 404
/// (token not ours) tell apart which keys open a token.
#[tokio::test]
async fn token_key_rotation_first_key_mints_all_keys_open() {
    use base64::Engine;
    let key = |byte: u8| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([byte; 32]);
    let (old, new) = (key(1), key(2));
    let start = |keys: String| {
        builder()
            .set("server", "token_keys", &keys)
            .set("store", "backend", "\"memory\"")
            .start()
    };
    let first = start(format!("[\"{old}\"]")).await;
    let (_device, _, _, endpoint) = live_channel(&first).await;
    let old_token = token_of(&endpoint).to_owned();
    drop(first);

    let rotated = start(format!("[\"{new}\", \"{old}\"]")).await;
    let url = rotated.endpoint_url(&format!("/update/{old_token}"));
    rotated
        .put(&url, "version=1")
        .await
        .assert_error(410, &["Gone"]);
    let (mut device, _, channel, endpoint) = live_channel(&rotated).await;
    let new_token = token_of(&endpoint).to_owned();
    rotated.put_version(&endpoint, 2, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 2, None)]
    );
    drop(rotated);

    let retired = start(format!("[\"{new}\"]")).await;
    for (token, status, error) in [(new_token, 410, "Gone"), (old_token, 404, "Not Found")] {
        let url = retired.endpoint_url(&format!("/update/{token}"));
        retired
            .put(&url, "version=3")
            .await
            .assert_error(status, &[error]);
    }
}

// ---- §8 operator-facing names ------------------------------------------------------------

/// §8: the config block exactly as docs/protocol.md documents it (every key, its default
/// value) is accepted, and `endpoint_url` is the base of every pushEndpoint.
#[tokio::test]
async fn config_with_every_documented_key_is_accepted() {
    let server = builder()
        .set("server", "ws_addr", "\"0.0.0.0:8080\"")
        .set("server", "endpoint_addr", "\"0.0.0.0:8081\"")
        .set("server", "endpoint_url", "\"http://localhost:8081\"")
        .set("server", "token_keys", "[]")
        .protocol("hello_timeout", "\"30s\"")
        .protocol("min_ping_interval", "\"20s\"")
        .protocol("retry_interval", "\"60s\"")
        .protocol("message_ttl", "\"3d\"")
        .protocol("max_channels", "200")
        .protocol("max_data_bytes", "4096")
        .protocol("max_message_bytes", "65536")
        .set("store", "backend", "\"memory\"")
        .set("store", "path", "\"simplepush-data\"")
        .set("store", "servers", "[\"127.0.0.1:11211\"]")
        .set("router", "addr", "\"127.0.0.1:3000\"")
        .set("router", "url", "\"http://127.0.0.1:3000\"")
        .set("router", "secret", "\"\"")
        .start()
        .await;
    let (mut device, _, channel, endpoint) = live_channel(&server).await;
    assert!(
        endpoint.starts_with("http://localhost:8081/update/"),
        "pushEndpoint {endpoint}"
    );
    let url = server.endpoint_url(&format!("/update/{}", token_of(&endpoint)));
    server.put_version(&url, 3, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 3, None)]
    );
    // min_ping_interval = "20s" from the file is in force.
    device.ping().await;
    device.send_text("{}").await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("reason", json!("too many pings"))],
        )
        .await;
}

/// §8 "Durations are humane strings ("30s", "5m", "3d")".
#[tokio::test]
async fn durations_in_minutes_hours_and_days_are_accepted() {
    let server = builder()
        .protocol("hello_timeout", "\"5m\"")
        .protocol("retry_interval", "\"1h\"")
        .protocol("message_ttl", "\"3d\"")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    device.ping().await;
}

/// The §8 keys and the flag names a reader of docs/protocol.md would look for (a key's
/// name in kebab case, prefixed by its section where the bare name would be ambiguous).
const FLAGS: &[(&str, &[&str])] = &[
    ("[server] ws_addr", &["--ws-addr"]),
    ("[server] endpoint_addr", &["--endpoint-addr"]),
    ("[server] endpoint_url", &["--endpoint-url"]),
    ("[server] token_keys", &["--token-key"]),
    ("[server] admin_addr", &["--admin-addr"]),
    ("[protocol] hello_timeout", &["--hello-timeout"]),
    ("[protocol] min_ping_interval", &["--min-ping-interval"]),
    ("[protocol] retry_interval", &["--retry-interval"]),
    ("[protocol] message_ttl", &["--message-ttl"]),
    ("[protocol] max_channels", &["--max-channels"]),
    ("[protocol] max_data_bytes", &["--max-data-bytes"]),
    ("[protocol] max_message_bytes", &["--max-message-bytes"]),
    ("[store] backend", &["--store "]),
    ("[store] path", &["--store-path"]),
    ("[store] device_ttl", &["--device-ttl"]),
    (
        "[store] servers",
        &["--store-servers", "--servers", "--memcache"],
    ),
    ("[router] addr", &["--router-addr"]),
    ("[router] url", &["--router-url"]),
    ("[router] secret", &["--router-secret"]),
];

/// §8 "Config file ..., each key also settable by a flag": `--help` lists a flag for
/// every documented key.
#[test]
fn every_documented_key_has_a_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let missing: Vec<&str> = FLAGS
        .iter()
        .filter(|(_, names)| !names.iter().any(|name| help.contains(name)))
        .map(|(key, _)| *key)
        .collect();
    assert!(
        missing.is_empty(),
        "no flag for {missing:?} in --help:\n{help}"
    );
}

/// §8 "each key also settable by a flag", exercised: `--max-channels 1` limits register.
#[tokio::test]
async fn max_channels_is_settable_by_a_flag() {
    let server = builder().arg("--max-channels").arg("1").start().await;
    let (mut device, _) = server.device().await;
    device.register(&chid()).await;
    let second = chid();
    device
        .send(json!({"messageType": "register", "channelID": second}))
        .await;
    device
        .expect_refusal(503, "Service Unavailable", &[("channelID", json!(second))])
        .await;
}
