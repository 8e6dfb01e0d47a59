//! Black-box tests of the device protocol (docs/protocol.md framing, §3 errors, §4
//! messages) against the real binary over a real websocket.

mod common;

use std::time::{Duration, Instant};

use common::{End, Server, assert_error_frame, assert_keys, chid, expired, hex_id, updates};
use serde_json::json;

/// True when `id` is a UUIDv4 as 32 lower-case hex digits.
fn is_minted_uaid(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.as_bytes()[12] == b'4'
        && matches!(id.as_bytes()[16], b'8' | b'9' | b'a' | b'b')
}

/// Registers `channel` for a fresh device, disconnects it, and waits until the server
/// sees it offline. Returns (uaid, pushEndpoint).
async fn offline_channel(server: &Server, channel: &str) -> (String, String) {
    let (mut device, uaid) = server.device().await;
    let endpoint = device.register(channel).await;
    device.close().await;
    server.wait_for_clients(0).await;
    (uaid, endpoint)
}

// ---- §2 framing ----------------------------------------------------------------------

#[tokio::test]
async fn hello_reply_has_exactly_message_type_uaid_and_status() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": "", "channelIDs": []}))
        .await;
    assert_keys(&reply, &["messageType", "uaid", "status"]);
    assert_eq!(reply["status"], json!(200));
}

#[tokio::test]
async fn binary_frame_carrying_json_is_accepted() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    device
        .send_binary(br#"{"messageType":"hello","uaid":""}"#)
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["messageType"], json!("hello"));
    assert_eq!(reply["status"], json!(200));
    let channel = chid();
    device
        .send_binary(
            json!({"messageType": "register", "channelID": channel})
                .to_string()
                .as_bytes(),
        )
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["messageType"], json!("register"));
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["channelID"], json!(channel));
}

#[tokio::test]
async fn subprotocol_push_notification_is_selected_when_offered() {
    let server = Server::start().await;
    let mut device = server.connect_offering("push-notification").await;
    assert_eq!(device.protocol.as_deref(), Some("push-notification"));
    device.hello("").await;
}

#[tokio::test]
async fn subprotocol_is_not_required() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    assert_eq!(device.protocol, None, "no subprotocol was offered");
    let uaid = device.hello("").await;
    assert!(is_minted_uaid(&uaid));
}

#[tokio::test]
async fn empty_object_frame_is_a_ping_answered_with_exactly_empty_object() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    for ping in ["{}", " { } ", "\n{\t}\r\n"] {
        device.send_text(ping).await;
        assert_eq!(device.recv_text().await, "{}", "reply to ping {ping:?}");
    }
}

#[tokio::test]
async fn ping_message_type_is_answered_with_exactly_empty_object() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device.send(json!({"messageType": "ping"})).await;
    assert_eq!(device.recv_text().await, "{}");
    device.send(json!({"messageType": "PING"})).await;
    assert_eq!(device.recv_text().await, "{}");
}

#[tokio::test]
async fn ping_is_allowed_before_hello() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    device.send_text("{}").await;
    assert_eq!(device.recv_text().await, "{}");
    device.send(json!({"messageType": "ping"})).await;
    assert_eq!(device.recv_text().await, "{}");
    let uaid = device.hello("").await;
    assert!(is_minted_uaid(&uaid));
}

#[tokio::test]
async fn message_type_is_matched_case_insensitively_and_replies_are_lower_case() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "HeLLo", "uaid": ""}))
        .await;
    assert_eq!(reply["status"], json!(200));
    let channel = chid();
    device
        .send(json!({"messageType": "REGISTER", "channelID": channel}))
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["messageType"], json!("register"));
    assert_eq!(reply["status"], json!(200));
    device
        .send(json!({"messageType": "UnRegister", "channelID": channel}))
        .await;
    let reply = device.recv().await;
    assert_eq!(
        reply,
        json!({"messageType": "unregister", "status": 200, "channelID": channel})
    );
}

#[tokio::test]
async fn object_keys_are_matched_case_insensitively() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let uaid = hex_id();
    let channel = chid();
    // The uaid is kept (not minted) only if `uaiD` was read; a minted one would differ.
    let reply = device
        .hello_with(json!({"MESSAGETYPE": "hello", "uaiD": uaid, "ChannelIDs": []}))
        .await;
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["uaid"], json!(uaid));
    device
        .send(json!({"messagetype": "register", "CHANNELID": channel}))
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["status"], json!(200), "{reply}");
    assert_eq!(reply["channelID"], json!(channel));
    let endpoint = reply["pushEndpoint"].as_str().unwrap().to_owned();
    server.put_version(&endpoint, 9, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 9, None)]
    );
    device
        .send(json!({"MessageType": "ack", "Updates": [{"ChannelId": channel, "VERSION": 9}]}))
        .await;
    device.ping().await;
    device.close().await;
    // The ack was understood: nothing is flushed at the next hello.
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    device.ping().await;
}

#[tokio::test]
async fn unknown_extra_keys_are_ignored() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": "", "wakeup_hostport": {"ip": "1.2.3.4"}, "x": 1}))
        .await;
    assert_eq!(reply["status"], json!(200));
    let channel = chid();
    device
        .send(
            json!({"messageType": "register", "channelID": channel, "key": "abc", "extra": [1, 2]}),
        )
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["status"], json!(200), "{reply}");
}

#[tokio::test]
async fn frame_over_max_message_bytes_closes_with_1009() {
    let server = Server::builder()
        .protocol("max_message_bytes", "1024")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    let padding = "x".repeat(1100);
    device
        .send(json!({"messageType": "register", "channelID": chid(), "pad": padding}))
        .await;
    assert_eq!(device.recv_close().await, 1009);
    let (mut device, _) = server.device().await;
    device.send_binary(&[b' '; 1100]).await;
    assert_eq!(device.recv_close().await, 1009, "binary frame");
}

#[tokio::test]
async fn frame_within_max_message_bytes_is_accepted() {
    let server = Server::builder()
        .protocol("max_message_bytes", "1024")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    let mut frame = json!({"messageType": "register", "channelID": channel, "pad": ""});
    let len = frame.to_string().len();
    frame["pad"] = json!("x".repeat(1000 - len));
    assert_eq!(frame.to_string().len(), 1000);
    device.send(frame).await;
    let reply = device.recv().await;
    assert_eq!(reply["status"], json!(200), "{reply}");
}

#[tokio::test]
async fn invalid_json_closes_with_1007_and_no_reply() {
    let server = Server::start().await;
    for bad in ["not json", "{\"messageType\":\"hello\"", "{}}"] {
        let mut device = server.connect().await;
        device.send_text(bad).await;
        assert_eq!(device.recv_close().await, 1007, "for {bad:?}");
    }
    for bad in [&b"not json"[..], &[0xff, 0xfe, b'{', b'}'][..]] {
        let mut device = server.connect().await;
        device.send_binary(bad).await;
        assert_eq!(device.recv_close().await, 1007, "for binary {bad:?}");
    }
}

#[tokio::test]
async fn json_that_is_not_an_object_closes_with_1007_and_no_reply() {
    let server = Server::start().await;
    for bad in ["[]", "[{}]", "\"hello\"", "42", "null", "true"] {
        let (mut device, _) = server.device().await;
        device.send_text(bad).await;
        assert_eq!(device.recv_close().await, 1007, "for {bad:?}");
    }
}

// ---- §3 errors -----------------------------------------------------------------------

#[tokio::test]
async fn unknown_message_type_gets_401_invalid_command_and_close_1000() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device.send(json!({"messageType": "BoGus"})).await;
    device
        .expect_refusal(401, "Invalid Command", &[("messageType", json!("bogus"))])
        .await;
}

#[tokio::test]
async fn empty_message_type_gets_401_and_close_1000() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device.send(json!({"messageType": ""})).await;
    device
        .expect_refusal(401, "Invalid Command", &[("messageType", json!(""))])
        .await;
}

#[tokio::test]
async fn missing_message_type_gets_401_and_close_1000() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    device.send(json!({"uaid": ""})).await;
    device.expect_refusal(401, "Invalid Command", &[]).await;
}

#[tokio::test]
async fn non_string_message_type_gets_401_and_close_1000() {
    let server = Server::start().await;
    for bad in [json!(42), json!(null), json!(["hello"]), json!({"a": 1})] {
        let mut device = server.connect().await;
        device.send(json!({"messageType": bad, "uaid": ""})).await;
        device.expect_refusal(401, "Invalid Command", &[]).await;
    }
}

#[tokio::test]
async fn register_before_hello_gets_401_echoing_channel_id() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let channel = chid();
    device
        .send(json!({"messageType": "register", "channelID": channel}))
        .await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[
                ("messageType", json!("register")),
                ("channelID", json!(channel)),
            ],
        )
        .await;
}

#[tokio::test]
async fn unregister_before_hello_gets_401_echoing_channel_id() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let channel = chid();
    device
        .send(json!({"messageType": "unregister", "channelID": channel}))
        .await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[
                ("messageType", json!("unregister")),
                ("channelID", json!(channel)),
            ],
        )
        .await;
}

#[tokio::test]
async fn ack_before_hello_gets_401_echoing_updates() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let acked = json!([{"channelID": chid(), "version": 3}]);
    device
        .send(json!({"messageType": "ack", "updates": acked}))
        .await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("messageType", json!("ack")), ("updates", acked)],
        )
        .await;
}

#[tokio::test]
async fn register_with_channel_id_not_a_uuid_gets_401_echoing_it() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device
        .send(json!({"messageType": "register", "channelID": "xyz"}))
        .await;
    let frame = device.recv().await;
    assert_error_frame(
        &frame,
        401,
        "Invalid Command",
        &[
            ("messageType", json!("register")),
            ("channelID", json!("xyz")),
        ],
    );
    assert_keys(
        &frame,
        &["messageType", "status", "error", "reason", "channelID"],
    );
    assert_eq!(device.recv_close().await, 1000);
}

#[tokio::test]
async fn register_with_non_string_or_missing_channel_id_gets_401() {
    let server = Server::start().await;
    let bad_frames = [
        json!({"messageType": "register", "channelID": 42}),
        json!({"messageType": "register", "channelID": null}),
        json!({"messageType": "register"}),
    ];
    for bad in bad_frames {
        let (mut device, _) = server.device().await;
        device.send(bad.clone()).await;
        device
            .expect_refusal(
                401,
                "Invalid Command",
                &[("messageType", json!("register"))],
            )
            .await;
    }
}

#[tokio::test]
async fn register_rejects_ids_that_are_not_uuid_shaped() {
    let server = Server::start().await;
    let bad_ids = [
        // dashes in the wrong places
        "0123456-789ab-cdef-0123-456789abcdef0".to_owned(),
        "01234567-89abc-def0-1234-56789abcdef".to_owned(),
        // 32 characters that are not all hex
        "g123456789abcdef0123456789abcdef".to_owned(),
        // too short, too long
        "0123456789abcdef0123456789abcde".to_owned(),
        "0123456789abcdef0123456789abcdef0".to_owned(),
        // a valid id with braces
        format!("{{{}}}", chid()),
        String::new(),
    ];
    for bad in bad_ids {
        let (mut device, _) = server.device().await;
        device
            .send(json!({"messageType": "register", "channelID": bad}))
            .await;
        device
            .expect_refusal(401, "Invalid Command", &[("channelID", json!(bad))])
            .await;
    }
}

#[tokio::test]
async fn hello_with_non_array_channel_ids_gets_401_echoing_uaid() {
    let server = Server::start().await;
    let uaid = hex_id();
    for bad in [json!("abc"), json!({"a": 1}), json!(7)] {
        let mut device = server.connect().await;
        device
            .send(json!({"messageType": "hello", "uaid": uaid, "channelIDs": bad}))
            .await;
        device
            .expect_refusal(
                401,
                "Invalid Command",
                &[("messageType", json!("hello")), ("uaid", json!(uaid))],
            )
            .await;
    }
}

#[tokio::test]
async fn hello_with_non_string_uaid_gets_401() {
    let server = Server::start().await;
    for bad in [json!(42), json!(["x"]), json!({"a": 1})] {
        let mut device = server.connect().await;
        device
            .send(json!({"messageType": "hello", "uaid": bad}))
            .await;
        device
            .expect_refusal(401, "Invalid Command", &[("messageType", json!("hello"))])
            .await;
    }
}

#[tokio::test]
async fn unregister_without_channel_id_gets_401() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device.send(json!({"messageType": "unregister"})).await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("messageType", json!("unregister"))],
        )
        .await;
}

#[tokio::test]
async fn ack_with_neither_updates_nor_expired_gets_401() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device.send(json!({"messageType": "ack"})).await;
    device
        .expect_refusal(401, "Invalid Command", &[("messageType", json!("ack"))])
        .await;
}

#[tokio::test]
async fn ack_with_malformed_updates_gets_401_echoing_them() {
    let server = Server::start().await;
    let bad_updates = [
        json!("x"),
        json!([{"channelID": chid(), "version": "5"}]),
        json!([{"channelID": 5, "version": 5}]),
        json!([7]),
    ];
    for bad in bad_updates {
        let (mut device, _) = server.device().await;
        device
            .send(json!({"messageType": "ack", "updates": bad}))
            .await;
        device
            .expect_refusal(
                401,
                "Invalid Command",
                &[("messageType", json!("ack")), ("updates", bad.clone())],
            )
            .await;
    }
}

#[tokio::test]
async fn pings_faster_than_min_ping_interval_get_401_too_many_pings_and_close() {
    let server = Server::builder()
        .protocol("min_ping_interval", "\"10s\"")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    device.send_text("{}").await;
    assert_eq!(device.recv_text().await, "{}");
    device.send(json!({"messageType": "PING"})).await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[
                ("messageType", json!("ping")),
                ("reason", json!("too many pings")),
            ],
        )
        .await;
}

#[tokio::test]
async fn ping_after_min_ping_interval_is_accepted() {
    let server = Server::builder()
        .protocol("min_ping_interval", "\"1s\"")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    device.ping().await;
    // A timer rule: the interval has to pass for real.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    device.ping().await;
}

#[tokio::test]
async fn ack_with_non_array_expired_gets_401() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device
        .send(json!({"messageType": "ack", "expired": "x"}))
        .await;
    device
        .expect_refusal(401, "Invalid Command", &[("messageType", json!("ack"))])
        .await;
}

#[tokio::test]
async fn second_hello_with_other_uaid_gets_503_and_close() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let other = hex_id();
    device
        .send(json!({"messageType": "hello", "uaid": other}))
        .await;
    let frame = device.recv().await;
    assert_error_frame(
        &frame,
        503,
        "Service Unavailable",
        &[("messageType", json!("hello")), ("uaid", json!(other))],
    );
    assert_keys(
        &frame,
        &["messageType", "status", "error", "reason", "uaid"],
    );
    assert_eq!(device.recv_close().await, 1000);
}

#[cfg(feature = "memcache")]
#[tokio::test]
async fn storage_unavailable_gets_503_service_unavailable_and_close() {
    let mut memcached = common::Memcached::start().await;
    let server = memcached.server().start().await;
    let (mut device, _) = server.device().await;
    device.register(&chid()).await;
    memcached.stop();
    let channel = chid();
    device
        .send(json!({"messageType": "register", "channelID": channel}))
        .await;
    device
        .expect_refusal(
            503,
            "Service Unavailable",
            &[
                ("messageType", json!("register")),
                ("channelID", json!(channel)),
            ],
        )
        .await;
}

#[tokio::test]
async fn registering_more_than_max_channels_gets_503_and_close() {
    let server = Server::builder()
        .protocol("max_channels", "3")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    let channels = [chid(), chid(), chid()];
    for channel in &channels {
        device.register(channel).await;
    }
    // Re-registering a live channel does not count twice.
    device.register(&channels[0]).await;
    // Unregistering frees a slot.
    device.unregister(&channels[1]).await;
    device.register(&chid()).await;
    let fourth = chid();
    device
        .send(json!({"messageType": "register", "channelID": fourth}))
        .await;
    device
        .expect_refusal(
            503,
            "Service Unavailable",
            &[
                ("messageType", json!("register")),
                ("channelID", json!(fourth)),
            ],
        )
        .await;
}

// ---- §4 hello ------------------------------------------------------------------------

#[tokio::test]
async fn hello_with_empty_uaid_mints_lower_case_hex_uuid_v4() {
    let server = Server::start().await;
    let mut first = server.connect().await;
    let a = first.hello("").await;
    let mut second = server.connect().await;
    let b = second.hello("").await;
    assert!(is_minted_uaid(&a), "minted uaid {a:?}");
    assert!(is_minted_uaid(&b), "minted uaid {b:?}");
    assert_ne!(a, b);
}

#[tokio::test]
async fn hello_without_uaid_mints_a_uaid() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let reply = device.hello_with(json!({"messageType": "hello"})).await;
    assert_eq!(reply["status"], json!(200));
    assert!(is_minted_uaid(reply["uaid"].as_str().unwrap()), "{reply}");
}

#[tokio::test]
async fn hello_with_uaid_not_uuid_shaped_mints_a_new_one() {
    let server = Server::start().await;
    let bad_uaids = [
        "not-a-uuid".to_owned(),
        "0123456789abcdef0123456789abcdeg".to_owned(),
        format!("{}0", hex_id()),
    ];
    for bad in bad_uaids {
        let mut device = server.connect().await;
        let uaid = device.hello(&bad).await;
        assert_ne!(uaid, bad);
        assert!(is_minted_uaid(&uaid), "minted uaid {uaid:?} for {bad:?}");
    }
}

#[tokio::test]
async fn hello_keeps_a_never_seen_uuid_uaid_as_sent() {
    let server = Server::start().await;
    let dashed_upper = uuid::Uuid::new_v4().to_string().to_uppercase();
    for sent in [hex_id(), dashed_upper] {
        let mut device = server.connect().await;
        assert_eq!(device.hello(&sent).await, sent);
    }
}

#[tokio::test]
async fn hello_with_empty_channel_ids_keeps_unknown_uaid() {
    let server = Server::start().await;
    let uaid = hex_id();
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": []}))
        .await;
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["uaid"], json!(uaid));
}

#[tokio::test]
async fn hello_with_channel_ids_for_uaid_unknown_to_store_mints_a_new_one() {
    let server = Server::start().await;
    let uaid = hex_id();
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": [chid()]}))
        .await;
    assert_eq!(reply["status"], json!(200));
    let minted = reply["uaid"].as_str().unwrap();
    assert_ne!(minted, uaid);
    assert!(is_minted_uaid(minted), "{reply}");
}

#[tokio::test]
async fn hello_with_channel_ids_for_known_uaid_keeps_it() {
    let server = Server::start().await;
    let channel = chid();
    let (uaid, _) = offline_channel(&server, &channel).await;
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": [channel]}))
        .await;
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["uaid"], json!(uaid));
}

#[tokio::test]
async fn hello_with_more_than_max_channels_ids_mints_a_new_uaid_and_drops_old_data() {
    let server = Server::builder()
        .protocol("max_channels", "3")
        .start()
        .await;
    let channel = chid();
    let (uaid, endpoint) = offline_channel(&server, &channel).await;
    server.put_version(&endpoint, 5, 202).await;
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({
            "messageType": "hello",
            "uaid": uaid,
            "channelIDs": [channel, chid(), chid(), chid()],
        }))
        .await;
    assert_eq!(reply["status"], json!(200));
    let minted = reply["uaid"].as_str().unwrap();
    assert_ne!(minted, uaid);
    assert!(is_minted_uaid(minted), "{reply}");
    // Nothing of the old uaid is flushed to the new one...
    device.ping().await;
    // ...and the old channel is gone from the store.
    server
        .put(&endpoint, "version=6")
        .await
        .assert_error(410, &["Gone"]);
}

#[tokio::test]
async fn second_hello_with_same_or_empty_uaid_gets_200_with_current_uaid() {
    let server = Server::start().await;
    let (mut device, uaid) = server.device().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid}))
        .await;
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["uaid"], json!(uaid));
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": ""}))
        .await;
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["uaid"], json!(uaid));
    // The socket stays usable.
    device.register(&chid()).await;
}

#[tokio::test]
async fn newer_connection_for_uaid_closes_older_with_4000_replaced() {
    let server = Server::start().await;
    let (mut old, uaid) = server.device().await;
    let channel = chid();
    let endpoint = old.register(&channel).await;
    let mut new = server.connect().await;
    assert_eq!(new.hello(&uaid).await, uaid);
    match old.recv_end_within(common::WAIT).await {
        End::Close(code, reason) => {
            assert_eq!(code, 4000);
            assert_eq!(reason, "replaced");
        }
        end => panic!("old socket ended with {end:?}"),
    }
    // Updates now go to the newest socket.
    server.put_version(&endpoint, 8, 200).await;
    assert_eq!(
        updates(&new.recv_notification().await),
        vec![(channel, 8, None)]
    );
}

#[tokio::test]
async fn pending_updates_are_flushed_in_one_frame_after_hello() {
    let server = Server::start().await;
    let (mut device, uaid) = server.device().await;
    let (a, b, c) = (chid(), chid(), chid());
    let endpoint_a = device.register(&a).await;
    let endpoint_b = device.register(&b).await;
    device.register(&c).await;
    device.close().await;
    server.wait_for_clients(0).await;
    server.put_version(&endpoint_a, 5, 202).await;
    let reply = server.put(&endpoint_b, "version=7&data=hi").await;
    assert_eq!(reply.status, 202, "{}", reply.body);

    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": [a, b, c]}))
        .await;
    assert_eq!(reply["uaid"], json!(uaid));
    let frame = device.recv_notification().await;
    assert_keys(&frame, &["messageType", "updates"]);
    let mut want = vec![(a, 5, None), (b, 7, Some("hi".to_owned()))];
    want.sort();
    assert_eq!(updates(&frame), want);
    device.ping().await;
}

#[tokio::test]
async fn no_hello_within_hello_timeout_closes_socket() {
    let server = Server::builder()
        .protocol("hello_timeout", "\"1s\"")
        .start()
        .await;
    let started = Instant::now();
    let mut device = server.connect().await;
    // Any close (or a dropped connection) will do; no frame may come first.
    device.recv_end_within(Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}"
    );
    // A device that did say hello stays connected past the timeout.
    let (mut device, _) = server.device().await;
    assert_eq!(device.recv_within(Duration::from_millis(1500)).await, None);
    device.ping().await;
}

#[tokio::test]
async fn a_silent_device_is_pinged_after_ping_interval_and_kept_while_it_answers() {
    let server = Server::builder()
        .protocol("ping_interval", "\"1s\"")
        .protocol("pong_timeout", "\"1s\"")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    let started = Instant::now();
    assert!(device.recv_ping_within(Duration::from_secs(4)).await);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "pinged after {elapsed:?}"
    );
    // Reading answers each Ping with a Pong: several intervals later the socket is alive.
    assert!(device.recv_ping_within(Duration::from_secs(4)).await);
    assert!(device.recv_ping_within(Duration::from_secs(4)).await);
    device.ping().await;
    assert_eq!(server.status().await["clients"], json!(1));
}

#[tokio::test]
async fn a_device_that_never_answers_a_ping_is_dropped_after_pong_timeout() {
    let server = Server::builder()
        .protocol("ping_interval", "\"1s\"")
        .protocol("pong_timeout", "\"1s\"")
        .start()
        .await;
    let (device, _) = server.device().await;
    server.wait_for_clients(1).await;
    // Never reading, the device never answers: ping after ~1 s, dropped ~1 s later.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(8);
    while server.status().await["clients"] != json!(0) {
        assert!(Instant::now() < deadline, "a dead peer was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800),
        "dropped after {elapsed:?}, before ping_interval + pong_timeout"
    );
    drop(device);
}

// ---- §4 register ---------------------------------------------------------------------

#[tokio::test]
async fn register_reply_echoes_channel_id_as_sent_with_uaid_and_push_endpoint() {
    let server = Server::start().await;
    let (mut device, uaid) = server.device().await;
    let channel = chid().to_uppercase();
    device
        .send(json!({"messageType": "register", "channelID": channel}))
        .await;
    let reply = device.recv().await;
    assert_keys(
        &reply,
        &["messageType", "uaid", "status", "channelID", "pushEndpoint"],
    );
    assert_eq!(reply["messageType"], json!("register"));
    assert_eq!(reply["uaid"], json!(uaid));
    assert_eq!(reply["status"], json!(200));
    assert_eq!(reply["channelID"], json!(channel));
    let endpoint = reply["pushEndpoint"].as_str().unwrap();
    let prefix = format!("http://localhost:{}/update/", server.endpoint.port());
    assert!(endpoint.starts_with(&prefix), "pushEndpoint {endpoint}");
    assert!(endpoint.len() > prefix.len(), "empty token in {endpoint}");
    // The update carries the channelID exactly as registered.
    server.put_version(endpoint, 1, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 1, None)]
    );
}

#[tokio::test]
async fn register_accepts_uuid_shaped_ids_in_any_case() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let plain = hex_id();
    let mixed: String = chid()
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    for channel in [plain.clone(), plain.to_uppercase(), chid(), mixed] {
        let endpoint = device.register(&channel).await;
        server.put_version(&endpoint, 2, 200).await;
        assert_eq!(
            updates(&device.recv_notification().await),
            vec![(channel, 2, None)]
        );
    }
}

#[tokio::test]
async fn registering_same_channel_again_is_idempotent_and_keeps_pending_version() {
    let server = Server::start().await;
    let channel = chid();
    let (uaid, first_endpoint) = offline_channel(&server, &channel).await;
    server.put_version(&first_endpoint, 3, 202).await;

    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 3, None)]
    );
    let second_endpoint = device.register(&channel).await;
    device.close().await;
    server.wait_for_clients(0).await;

    // The pending version survived the second register.
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 3, None)]
    );
    // Both endpoints work.
    server.put_version(&second_endpoint, 4, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 4, None)]
    );
    server.put_version(&first_endpoint, 5, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 5, None)]
    );
}

// ---- §4 unregister -------------------------------------------------------------------

#[tokio::test]
async fn unregister_is_200_and_idempotent_for_unknown_and_repeated_channels() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    device.unregister(&chid()).await;
    device.register(&channel).await;
    device.unregister(&channel).await;
    device.unregister(&channel).await;
    // The socket stays open and usable.
    device.register(&chid()).await;
}

#[tokio::test]
async fn unregistered_channel_endpoint_answers_410() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 1, 200).await;
    device.recv_notification().await;
    device.unregister(&channel).await;
    server
        .put(&endpoint, "version=2")
        .await
        .assert_error(410, &["Gone"]);
    device.ping().await;
}

#[tokio::test]
async fn unregister_drops_pending_update() {
    let server = Server::start().await;
    let channel = chid();
    let (uaid, endpoint) = offline_channel(&server, &channel).await;
    server.put_version(&endpoint, 4, 202).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 4, None)]
    );
    device.unregister(&channel).await;
    device.close().await;
    server.wait_for_clients(0).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    device.ping().await;
}

#[tokio::test]
async fn client_unregister_is_never_reported_in_expired() {
    let server = Server::start().await;
    let (mut device, uaid) = server.device().await;
    let (gone, kept) = (chid(), chid());
    let gone_endpoint = device.register(&gone).await;
    let kept_endpoint = device.register(&kept).await;
    server.put_version(&gone_endpoint, 1, 200).await;
    device.recv_notification().await;
    device.unregister(&gone).await;
    device.close().await;
    server.wait_for_clients(0).await;
    server.put_version(&kept_endpoint, 2, 202).await;

    let mut device = server.connect().await;
    device.hello(&uaid).await;
    let frame = device.recv_notification().await;
    assert_eq!(frame.get("expired"), None, "{frame}");
    assert_eq!(updates(&frame), vec![(kept, 2, None)]);
}

// ---- §4 ack --------------------------------------------------------------------------

#[tokio::test]
async fn ack_gets_no_reply() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 6, 200).await;
    device.recv_notification().await;
    device.ack(&channel, 6).await;
    // The very next frame is the ping reply.
    device.ping().await;
}

#[tokio::test]
async fn ack_of_pending_or_newer_version_drops_it() {
    let server = Server::start().await;
    let (mut device, uaid) = server.device().await;
    let (a, b) = (chid(), chid());
    let endpoint_a = device.register(&a).await;
    let endpoint_b = device.register(&b).await;
    server.put_version(&endpoint_a, 6, 200).await;
    device.recv_notification().await;
    server.put_version(&endpoint_b, 6, 200).await;
    device.recv_notification().await;
    // One ack for both, so that nothing is left pending in between (which would flush).
    device
        .send(json!({
            "messageType": "ack",
            "updates": [{"channelID": a, "version": 6}, {"channelID": b, "version": 10}],
        }))
        .await;
    device.ping().await;
    device.close().await;
    server.wait_for_clients(0).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    device.ping().await;
}

#[tokio::test]
async fn ack_of_older_version_keeps_newer_which_is_resent() {
    let server = Server::start().await;
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 5, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 5, None)]
    );
    server.put_version(&endpoint, 7, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 7, None)]
    );
    // The ack for 5 raced the update to 7: 7 stays pending and is flushed again.
    device.ack(&channel, 5).await;
    let frame = device.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channel.clone(), 7, None)]);
    device.ack(&channel, 7).await;
    device.ping().await;
    device.close().await;
    server.wait_for_clients(0).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    device.ping().await;
}

#[tokio::test]
async fn ack_that_leaves_updates_pending_flushes_them_in_one_frame() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let (a, b, c) = (chid(), chid(), chid());
    for (channel, version) in [(&a, 1), (&b, 2), (&c, 3)] {
        let endpoint = device.register(channel).await;
        server.put_version(&endpoint, version, 200).await;
        device.recv_notification().await;
    }
    device.ack(&a, 1).await;
    let frame = device.recv_notification().await;
    let mut want = vec![(b.clone(), 2, None), (c.clone(), 3, None)];
    want.sort();
    assert_eq!(updates(&frame), want);
    device
        .send(json!({
            "messageType": "ack",
            "updates": [{"channelID": b, "version": 2}, {"channelID": c, "version": 3}],
        }))
        .await;
    device.ping().await;
}

#[tokio::test]
async fn ack_with_only_expired_is_accepted_without_reply() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    device
        .send(json!({"messageType": "ack", "expired": [chid()]}))
        .await;
    device.ping().await;
    device
        .send(json!({"messageType": "ack", "updates": [], "expired": []}))
        .await;
    device.ping().await;
}

// ---- §4 notification -----------------------------------------------------------------

#[tokio::test]
async fn live_update_is_one_update_with_numeric_version_and_no_data() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 12, 200).await;
    let frame = device.recv_notification().await;
    assert_eq!(
        frame,
        json!({"messageType": "notification", "updates": [{"channelID": channel, "version": 12}]})
    );
}

#[tokio::test]
async fn live_update_carries_data_when_sent() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    let reply = server
        .put(&endpoint, "version=13&data=hello%20world%26more")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let frame = device.recv_notification().await;
    assert_eq!(
        frame,
        json!({"messageType": "notification", "updates": [
            {"channelID": channel, "version": 13, "data": "hello world&more"}
        ]})
    );
}

#[tokio::test]
async fn unacked_live_update_is_resent_after_retry_interval() {
    let server = Server::builder()
        .protocol("retry_interval", "\"1s\"")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 3, 200).await;
    let delivered = Instant::now();
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel.clone(), 3, None)]
    );
    let frame = device.recv_notification().await;
    let elapsed = delivered.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "re-sent after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(3500),
        "re-sent after {elapsed:?}"
    );
    assert_eq!(updates(&frame), vec![(channel.clone(), 3, None)]);
    // Once acked, it is not sent again.
    device.ack(&channel, 3).await;
    assert_eq!(device.recv_within(Duration::from_millis(2500)).await, None);
}

#[tokio::test]
async fn retry_resends_all_pending_updates_in_one_frame() {
    let server = Server::builder()
        .protocol("retry_interval", "\"1s\"")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    let (a, b) = (chid(), chid());
    let endpoint_a = device.register(&a).await;
    let endpoint_b = device.register(&b).await;
    server.put_version(&endpoint_a, 1, 200).await;
    device.recv_notification().await;
    server.put_version(&endpoint_b, 2, 200).await;
    device.recv_notification().await;
    let frame = device.recv_notification().await;
    let mut want = vec![(a, 1, None), (b, 2, None)];
    want.sort();
    assert_eq!(updates(&frame), want);
}

#[tokio::test]
async fn unacked_live_update_is_resent_at_next_hello() {
    let server = Server::start().await;
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 11, 200).await;
    device.recv_notification().await;
    device.close().await;
    server.wait_for_clients(0).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 11, None)]
    );
}

#[tokio::test]
async fn expired_update_is_reported_in_expired_until_acked_and_channel_stays() {
    let server = Server::builder()
        .protocol("message_ttl", "\"1s\"")
        .start()
        .await;
    let channel = chid();
    let (uaid, endpoint) = offline_channel(&server, &channel).await;
    server.put_version(&endpoint, 1, 202).await;
    // The one wait of this test: the update's TTL has to pass while the device is away.
    tokio::time::sleep(Duration::from_millis(1600)).await;

    for _ in 0..2 {
        let mut device = server.connect().await;
        device.hello(&uaid).await;
        let frame = device.recv_notification().await;
        assert_eq!(expired(&frame), vec![channel.clone()], "{frame}");
        assert_eq!(updates(&frame), vec![], "{frame}");
        device.close().await;
        server.wait_for_clients(0).await;
    }

    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        expired(&device.recv_notification().await),
        vec![channel.clone()]
    );
    device
        .send(json!({"messageType": "ack", "expired": [channel]}))
        .await;
    device.ping().await;
    device.close().await;
    server.wait_for_clients(0).await;

    let mut device = server.connect().await;
    device.hello(&uaid).await;
    device.ping().await;
    // The channel is still registered.
    server.put_version(&endpoint, 2, 200).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channel, 2, None)]
    );
}

#[tokio::test]
async fn flush_reports_expired_and_pending_updates_in_one_frame() {
    let server = Server::builder()
        .protocol("message_ttl", "\"2s\"")
        .start()
        .await;
    let (mut device, uaid) = server.device().await;
    let (old, fresh) = (chid(), chid());
    let old_endpoint = device.register(&old).await;
    let fresh_endpoint = device.register(&fresh).await;
    device.close().await;
    server.wait_for_clients(0).await;
    server.put_version(&old_endpoint, 1, 202).await;
    // A timer rule: `old` expires while `fresh` (sent after the wait) does not.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    server.put_version(&fresh_endpoint, 2, 202).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    let frame = device.recv_notification().await;
    assert_keys(&frame, &["messageType", "updates", "expired"]);
    assert_eq!(updates(&frame), vec![(fresh, 2, None)]);
    assert_eq!(expired(&frame), vec![old]);
    device.ping().await;
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits() {
    let mut server = Server::start().await;
    let (mut device, _) = server.device().await;
    server.terminate();
    assert_eq!(device.recv_close().await, 1001);
    let status = server.wait_exit().await;
    assert!(status.success(), "exit status {status}");
}

// ---- acks of many channels, and the command allowance ----------------------------------

/// An ack naming more distinct channels than `max_channels` (in `updates` or in
/// `expired`) is refused with 401, its `updates` echoed as sent, and the socket closed:
/// no device has that many, and each would cost the store work.
#[tokio::test]
async fn ack_naming_more_than_max_channels_is_refused() {
    let server = Server::builder()
        .protocol("max_channels", "3")
        .start()
        .await;
    let four: Vec<String> = (0..4).map(|_| chid()).collect();
    let sent = json!(
        four.iter()
            .map(|c| json!({"channelID": c, "version": 1}))
            .collect::<Vec<_>>()
    );
    let (mut device, _) = server.device().await;
    device
        .send(json!({"messageType": "ack", "updates": sent}))
        .await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("messageType", json!("ack")), ("updates", sent.clone())],
        )
        .await;

    let (mut device, _) = server.device().await;
    device
        .send(json!({"messageType": "ack", "updates": [], "expired": four}))
        .await;
    device
        .expect_refusal(
            401,
            "Invalid Command",
            &[("messageType", json!("ack")), ("updates", json!([]))],
        )
        .await;
}

/// A channel named many times in one ack counts once toward `max_channels`, and is
/// acked at the greatest version named, whatever the order.
#[tokio::test]
async fn ack_repeating_its_channels_counts_each_once_at_its_greatest_version() {
    let server = Server::builder()
        .protocol("max_channels", "3")
        .start()
        .await;
    let (mut device, uaid) = server.device().await;
    let channels: Vec<String> = (0..3).map(|_| chid()).collect();
    for channel in &channels {
        let endpoint = device.register(channel).await;
        server.put_version(&endpoint, 5, 200).await;
        device.recv_notification().await;
    }
    // 300 entries over three channels: the first two acked up to 5 somewhere in the
    // list, the third only up to 4.
    let mut entries = Vec::new();
    for round in 0..100u64 {
        for (k, channel) in channels.iter().enumerate() {
            let version = if k == 2 { round % 5 } else { round % 6 };
            entries.push(json!({"channelID": channel, "version": version}));
        }
    }
    device
        .send(json!({"messageType": "ack", "updates": entries, "expired": [channels[0], channels[0]]}))
        .await;
    // Something is left, so the ack is answered with a flush of exactly that.
    let frame = device.recv_notification().await;
    assert_eq!(updates(&frame), vec![(channels[2].clone(), 5, None)]);
    device.close().await;
    server.wait_for_clients(0).await;
    let mut device = server.connect().await;
    device.hello(&uaid).await;
    assert_eq!(
        updates(&device.recv_notification().await),
        vec![(channels[2].clone(), 5, None)]
    );
}

/// A device that says hello, registers `max_channels` channels back to back and acks
/// them all in one frame stays well within the default command allowance.
#[tokio::test]
async fn registering_max_channels_back_to_back_is_never_throttled() {
    let server = Server::start().await;
    let (mut device, _) = server.device().await;
    let channels: Vec<String> = (0..200).map(|_| chid()).collect();
    for channel in &channels {
        device.register(channel).await;
    }
    let acks: Vec<_> = channels
        .iter()
        .map(|c| json!({"channelID": c, "version": 1}))
        .collect();
    device
        .send(json!({"messageType": "ack", "updates": acks, "expired": channels}))
        .await;
    for _ in 0..50 {
        device.ping().await;
    }
}

/// Commands beyond the default burst (500) come faster than the default rate (50 a
/// second) refills it: 401 "too many commands", then close 1000, like pings too fast.
#[tokio::test]
async fn commands_beyond_the_default_burst_get_too_many_commands_and_close() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let started = Instant::now();
    let mut answered = 0u64;
    let refusal = loop {
        device.send_text("{}").await;
        let text = device.recv_text().await;
        if text != "{}" {
            break serde_json::from_str::<serde_json::Value>(&text).unwrap();
        }
        answered += 1;
        assert!(answered < 5_000, "5,000 pings and no refusal");
    };
    let elapsed = started.elapsed();
    assert_error_frame(
        &refusal,
        401,
        "Invalid Command",
        &[
            ("messageType", json!("ping")),
            ("reason", json!("too many commands")),
        ],
    );
    assert_eq!(device.recv_close().await, 1000);
    let refilled = (elapsed.as_secs_f64() * 50.0).ceil() as u64;
    assert!(
        (500..=500 + refilled).contains(&answered),
        "{answered} answered in {elapsed:?} before the refusal"
    );
}

/// A device that keeps under `command_rate` is never refused, however long it goes on,
/// even with a small burst; any command counts, not just pings.
#[tokio::test]
async fn a_device_under_the_command_rate_is_never_refused() {
    let server = Server::builder()
        .protocol("command_rate", "40")
        .protocol("command_burst", "4")
        .start()
        .await;
    let (mut device, _) = server.device().await;
    let channel = chid();
    // 20 a second for two seconds: half the rate.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..40 {
        tick.tick().await;
        if i % 2 == 0 {
            device.ping().await;
        } else {
            device.register(&channel).await;
        }
    }
}

/// The refusal of a command beyond the allowance names the command and echoes its
/// identifying field; `--command-burst` sets the burst.
#[tokio::test]
async fn too_many_commands_echoes_the_refused_command() {
    let server = Server::builder()
        .protocol("command_rate", "1")
        .arg("--command-burst")
        .arg("3")
        .start()
        .await;
    let started = Instant::now();
    let (mut device, _) = server.device().await;
    let channel = chid();
    let mut answered = 1; // the hello
    let frame = loop {
        device
            .send(json!({"messageType": "register", "channelID": channel}))
            .await;
        let frame = device.recv().await;
        if frame["status"] != json!(200) {
            break frame;
        }
        answered += 1;
        assert!(answered < 100, "100 commands and no refusal");
    };
    assert_error_frame(
        &frame,
        401,
        "Invalid Command",
        &[
            ("messageType", json!("register")),
            ("channelID", json!(channel)),
            ("reason", json!("too many commands")),
        ],
    );
    assert_eq!(device.recv_close().await, 1000);
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        (3..=3 + refilled).contains(&answered),
        "{answered} commands answered"
    );
}
