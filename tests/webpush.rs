//! End-to-end black-box tests of WebPush (docs/protocol.md): a browser-like device on the
//! websocket, an app server that encrypts (RFC 8291) and signs (RFC 8292) its pushes, and
//! every payload decrypted on arrival, so the bytes are proven intact end to end.
//!
//! The store is whatever `SIMPLEPUSH_TEST_STORE` names (memory by default).

mod common;

use common::webpush::{
    Browser, Push, Vapid, assert_created, delete_message, parse_notification, unb64,
};
use common::{Server, assert_keys, chid, unix_now, updates};
use serde_json::json;

/// Every byte value, repeated to `len` bytes.
fn all_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 256) as u8).collect()
}

#[tokio::test]
async fn aes128gcm_payload_arrives_live_and_decrypts() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;

    let reply = Push::to(&subscription)
        .ttl(120)
        .urgency("high")
        .aes128gcm(&subscription, b"hello, browser")
        .send(&server)
        .await;
    assert_created(&reply, 120);

    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"hello, browser");
    assert_eq!(notification.channel_id, subscription.channel_id);
    assert_eq!(
        notification.frame["ttl"],
        json!(120),
        "{}",
        notification.frame
    );
    assert_eq!(
        notification.frame["headers"],
        json!({"encoding": "aes128gcm"}),
        "{}",
        notification.frame
    );
    assert_keys(
        &notification.frame,
        &[
            "messageType",
            "channelID",
            "version",
            "ttl",
            "data",
            "headers",
        ],
    );
    browser.ack(&notification).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn aesgcm_payload_arrives_live_with_its_headers_and_decrypts() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;

    let reply = Push::to(&subscription)
        .aesgcm(&subscription, b"legacy encoding")
        .send(&server)
        .await;
    assert_created(&reply, 60);

    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"legacy encoding");
    let headers = &notification.frame["headers"];
    assert_keys(headers, &["encoding", "encryption", "crypto_key"]);
    assert_eq!(headers["encoding"], json!("aesgcm"));
    browser.ack(&notification).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn largest_encrypted_bodies_of_every_byte_value_decrypt() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;

    // ece pads to 128-byte blocks: 3967 bytes of plaintext are the largest aes128gcm
    // body under 4096 (86 header + 3968 + 16 tag); 3965 the largest single aesgcm record.
    for (encoding, len) in [("aes128gcm", 3967), ("aesgcm", 3965)] {
        let plaintext = all_bytes(len);
        let push = Push::to(&subscription);
        let push = match encoding {
            "aes128gcm" => push.aes128gcm(&subscription, &plaintext),
            _ => push.aesgcm(&subscription, &plaintext),
        };
        assert!(
            push.body_len() > 3900 && push.body_len() <= 4096,
            "{encoding}"
        );
        assert_created(&push.send(&server).await, 60);
        let (notification, decrypted) = browser.recv_decrypted().await;
        assert!(
            decrypted == plaintext,
            "{encoding}: {len} bytes did not arrive intact"
        );
        browser.ack(&notification).await;
    }
    browser.expect_nothing().await;
}

#[tokio::test]
async fn body_of_exactly_4096_bytes_is_carried_verbatim_and_one_more_is_413() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;

    // The server never decrypts: any bytes labelled aes128gcm are carried as they are.
    let body = all_bytes(4096);
    let reply = Push::to(&subscription)
        .raw_body("aes128gcm", body.clone())
        .send(&server)
        .await;
    assert_created(&reply, 60);
    let notification = browser.recv_notification().await;
    assert!(
        notification.data.as_deref() == Some(&body[..]),
        "4096 bytes not carried verbatim"
    );
    browser.ack(&notification).await;

    let reply = Push::to(&subscription)
        .raw_body("aes128gcm", all_bytes(4097))
        .send(&server)
        .await;
    reply.assert_error(413, &["Payload Too Large", "Request Entity Too Large"]);
    browser.expect_nothing().await;
}

#[tokio::test]
async fn push_without_data_arrives_without_data_or_headers() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;

    assert_created(&Push::to(&subscription).send(&server).await, 60);
    let notification = browser.recv_notification().await;
    assert_keys(
        &notification.frame,
        &["messageType", "channelID", "version", "ttl"],
    );
    browser.ack(&notification).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn offline_push_arrives_at_next_hello_and_once_acked_is_gone() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let offline = browser.go_offline(&server, 0).await;

    let reply = Push::to(&subscription)
        .aes128gcm(&subscription, b"while you were away")
        .send(&server)
        .await;
    assert_created(&reply, 60);

    let mut browser = offline.reconnect(&server).await;
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"while you were away");
    browser.ack(&notification).await;
    browser.expect_nothing().await;

    browser.reconnect(&server).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn unacked_message_is_redelivered_at_reconnect() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;

    let reply = Push::to(&subscription)
        .aes128gcm(&subscription, b"ack me")
        .send(&server)
        .await;
    assert_created(&reply, 60);
    let (first, _) = browser.recv_decrypted().await;

    browser.reconnect(&server).await;
    let (again, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"ack me");
    assert_eq!(again.version, first.version, "same message id");
    browser.ack(&again).await;
    browser.expect_nothing().await;

    browser.reconnect(&server).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn topic_replaces_the_undelivered_message() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let offline = browser.go_offline(&server, 0).await;

    for text in ["first score", "final score"] {
        let reply = Push::to(&subscription)
            .topic("scores")
            .aes128gcm(&subscription, text.as_bytes())
            .send(&server)
            .await;
        assert_created(&reply, 60);
    }
    // Another topic is a separate message and stays.
    let reply = Push::to(&subscription)
        .topic("weather")
        .aes128gcm(&subscription, b"rain")
        .send(&server)
        .await;
    assert_created(&reply, 60);

    let mut browser = offline.reconnect(&server).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let (notification, plaintext) = browser.recv_decrypted().await;
        browser.ack(&notification).await;
        got.push(String::from_utf8(plaintext).unwrap());
    }
    got.sort();
    assert_eq!(got, ["final score", "rain"]);
    browser.expect_nothing().await;
}

#[tokio::test]
async fn ttl_zero_reaches_a_connected_device_only() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;

    let reply = Push::to(&subscription)
        .ttl(0)
        .aes128gcm(&subscription, b"now or never")
        .send(&server)
        .await;
    assert_created(&reply, 0);
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"now or never");
    browser.ack(&notification).await;

    let offline = browser.go_offline(&server, 0).await;
    let reply = Push::to(&subscription)
        .ttl(0)
        .aes128gcm(&subscription, b"too late")
        .send(&server)
        .await;
    assert_created(&reply, 0);
    let mut browser = offline.reconnect(&server).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn delete_withdraws_a_pending_message() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let offline = browser.go_offline(&server, 0).await;

    let withdrawn = Push::to(&subscription)
        .aes128gcm(&subscription, b"never mind")
        .send(&server)
        .await;
    let location = assert_created(&withdrawn, 60);
    let kept = Push::to(&subscription)
        .aes128gcm(&subscription, b"this one")
        .send(&server)
        .await;
    assert_created(&kept, 60);

    let reply = delete_message(&server, &location).await;
    assert_eq!(reply.status, 204, "DELETE {location}: {}", reply.body);

    let mut browser = offline.reconnect(&server).await;
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"this one");
    browser.ack(&notification).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn forged_message_location_is_404() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let reply = Push::to(&subscription).send(&server).await;
    let location = assert_created(&reply, 60);
    let notification = browser.recv_notification().await;

    // Change one character in the middle of the id: a forged message id is a clean 404.
    let (base, id) = location.rsplit_once('/').unwrap();
    let mut id: Vec<char> = id.chars().collect();
    let middle = id.len() / 2;
    id[middle] = if id[middle] == 'A' { 'B' } else { 'A' };
    let forged = format!("{base}/{}", id.into_iter().collect::<String>());
    let reply = delete_message(&server, &forged).await;
    reply.assert_error(404, &["Not Found"]);

    browser.ack(&notification).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn v2_endpoint_takes_only_pushes_signed_with_its_key() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let vapid = Vapid::new();
    let subscription = browser.subscribe(Some(&vapid)).await;

    let reply = Push::to(&subscription)
        .vapid(&vapid)
        .aes128gcm(&subscription, b"signed")
        .send(&server)
        .await;
    assert_created(&reply, 60);
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"signed");
    browser.ack(&notification).await;

    // The older header form, with the aesgcm Crypto-Key sharing the header.
    let reply = Push::to(&subscription)
        .vapid_legacy(&vapid)
        .aesgcm(&subscription, b"signed the old way")
        .send(&server)
        .await;
    assert_created(&reply, 60);
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"signed the old way");
    browser.ack(&notification).await;

    let unsigned = Push::to(&subscription)
        .aes128gcm(&subscription, b"unsigned")
        .send(&server)
        .await;
    unsigned.assert_error(401, &["Unauthorized"]);

    let other = Push::to(&subscription)
        .vapid(&Vapid::new())
        .aes128gcm(&subscription, b"someone else")
        .send(&server)
        .await;
    other.assert_error(403, &["Forbidden"]);

    browser.expect_nothing().await;
}

#[tokio::test]
async fn v1_endpoint_takes_pushes_with_and_without_vapid() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let vapid = Vapid::new();

    let pushes = [
        Push::to(&subscription).aes128gcm(&subscription, b"plain"),
        Push::to(&subscription)
            .vapid(&vapid)
            .aes128gcm(&subscription, b"vapid"),
        Push::to(&subscription)
            .vapid_legacy(&vapid)
            .aes128gcm(&subscription, b"webpush"),
    ];
    for (push, text) in pushes.into_iter().zip(["plain", "vapid", "webpush"]) {
        assert_created(&push.send(&server).await, 60);
        let (notification, plaintext) = browser.recv_decrypted().await;
        assert_eq!(plaintext, text.as_bytes());
        browser.ack(&notification).await;
    }
    browser.expect_nothing().await;
}

#[tokio::test]
async fn invalid_vapid_is_401_on_v1_and_v2() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let vapid = Vapid::new();
    let v1 = browser.subscribe(None).await;
    let v2 = browser.subscribe(Some(&vapid)).await;

    for subscription in [&v1, &v2] {
        let origin = common::webpush::origin(&subscription.endpoint);
        let bad_claims = [
            ("expired", json!({"aud": origin, "exp": unix_now() - 60})),
            (
                "more than 24 h away",
                json!({"aud": origin, "exp": unix_now() + 25 * 3600}),
            ),
            (
                "wrong aud",
                json!({"aud": "https://push.example.net", "exp": unix_now() + 3600}),
            ),
            (
                "aud with a path",
                json!({"aud": subscription.endpoint, "exp": unix_now() + 3600}),
            ),
            (
                "sub not mailto/https",
                json!({"aud": origin, "exp": unix_now() + 3600, "sub": "ftp://x"}),
            ),
        ];
        for (why, claims) in bad_claims {
            let reply = Push::to(subscription)
                .vapid_claims(&vapid, &claims)
                .aes128gcm(subscription, b"bad jwt")
                .send(&server)
                .await;
            assert_eq!(
                reply.status, 401,
                "{why} on {}: {}",
                subscription.endpoint, reply.body
            );
        }
        // A signature that does not verify.
        let mut jwt = vapid.sign(&common::webpush::Vapid::claims(&subscription.endpoint));
        jwt.truncate(jwt.len() - 4);
        jwt.push_str("AAAA");
        let reply = Push::to(subscription)
            .header(
                "Authorization",
                &format!("vapid t={jwt}, k={}", vapid.public_b64()),
            )
            .aes128gcm(subscription, b"forged signature")
            .send(&server)
            .await;
        assert_eq!(reply.status, 401, "bad signature: {}", reply.body);
    }
    browser.expect_nothing().await;
}

#[tokio::test]
async fn unsubscribed_endpoint_is_410() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let vapid = Vapid::new();
    let v1 = browser.subscribe(None).await;
    let v2 = browser.subscribe(Some(&vapid)).await;
    // Pending messages are dropped with the subscription.
    assert_created(&Push::to(&v1).send(&server).await, 60);
    let notification = browser.recv_notification().await;
    assert_eq!(notification.channel_id, v1.channel_id);

    browser.unsubscribe(&v1).await;
    browser.unsubscribe(&v2).await;
    let reply = Push::to(&v1).aes128gcm(&v1, b"gone").send(&server).await;
    reply.assert_error(410, &["Gone"]);
    let reply = Push::to(&v2)
        .vapid(&vapid)
        .aes128gcm(&v2, b"gone")
        .send(&server)
        .await;
    reply.assert_error(410, &["Gone"]);
    browser.expect_nothing().await;
}

#[tokio::test]
async fn every_channel_gets_a_distinct_endpoint() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let vapid = Vapid::new();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        endpoints.push(browser.subscribe(None).await.endpoint);
        endpoints.push(browser.subscribe(Some(&vapid)).await.endpoint);
    }
    let mut unique = endpoints.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), endpoints.len(), "{endpoints:?}");
}

#[tokio::test]
async fn simplepush_device_works_beside_a_webpush_one() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let (mut device, _uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;

    server.put_version(&endpoint, 7, 200).await;
    let frame = device.recv_notification().await;
    assert_eq!(updates(&frame), [(channel.clone(), 7, None)]);
    device.ack(&channel, 7).await;

    let reply = Push::to(&subscription)
        .aes128gcm(&subscription, b"webpush")
        .send(&server)
        .await;
    assert_created(&reply, 60);
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"webpush");
    browser.ack(&notification).await;

    // Neither saw the other's message.
    device.ping().await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn hello_without_known_uaid_gets_a_fresh_one() {
    let server = Server::start().await;
    let mut device = server.connect().await;
    let never_seen = common::hex_id();
    let reply = common::webpush::webpush_hello(&mut device, Some(&never_seen)).await;
    assert_ne!(reply["uaid"], json!(never_seen), "{reply}");
    assert_eq!(reply["broadcasts"], json!({}), "{reply}");
}

#[tokio::test]
async fn bad_push_headers_are_400() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let cases = [
        ("no TTL", Push::to(&subscription).without("TTL")),
        (
            "TTL not a number",
            Push::to(&subscription).header("TTL", "soon"),
        ),
        (
            "body without Content-Encoding",
            Push::to(&subscription)
                .aes128gcm(&subscription, b"x")
                .without("Content-Encoding"),
        ),
        (
            "unknown Content-Encoding",
            Push::to(&subscription).raw_body("gzip", b"xyz".to_vec()),
        ),
        (
            "aesgcm without Encryption",
            Push::to(&subscription)
                .aesgcm(&subscription, b"x")
                .without("Encryption"),
        ),
        ("bad Urgency", Push::to(&subscription).urgency("urgent")),
        (
            "Topic too long",
            Push::to(&subscription).topic(&"a".repeat(33)),
        ),
        ("Topic not base64url", Push::to(&subscription).topic("a b")),
    ];
    for (why, push) in cases {
        let reply = push.send(&server).await;
        assert_eq!(reply.status, 400, "{why}: {}", reply.body);
    }
    browser.expect_nothing().await;
}

/// The helper's own parser agrees with the §9 example frame.
#[test]
fn notification_frame_of_the_contract_parses() {
    let frame = json!({"messageType": "notification", "channelID": chid(), "version": "m1",
        "ttl": 60, "data": "AAEC", "headers": {"encoding": "aes128gcm"}});
    let notification = parse_notification(frame);
    assert_eq!(notification.data, Some(unb64("AAEC")));
    assert_eq!(notification.data, Some(vec![0, 1, 2]));
}

#[tokio::test]
async fn unacked_message_is_resent_on_the_open_socket_after_retry_interval() {
    let server = Server::builder()
        .protocol("retry_interval", "\"1s\"")
        .start()
        .await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let reply = Push::to(&subscription)
        .aes128gcm(&subscription, b"again")
        .send(&server)
        .await;
    assert_created(&reply, 60);
    let (first, _) = browser.recv_decrypted().await;

    // No ack: the same message comes again on this socket (within WAIT > 1 s).
    let (again, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"again");
    assert_eq!(again.version, first.version);
    browser.ack(&again).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn ack_with_any_code_is_final_and_nack_gets_no_reply() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    for code in [101, 102] {
        let reply = Push::to(&subscription)
            .aes128gcm(&subscription, format!("code {code}").as_bytes())
            .send(&server)
            .await;
        assert_created(&reply, 60);
        let notification = browser.recv_notification().await;
        browser
            .device()
            .send(json!({"messageType": "ack", "updates": [{
                "channelID": notification.channel_id,
                "version": notification.version,
                "code": code,
            }]}))
            .await;
        if code == 102 {
            // The page's handler failed: Firefox nacks too; no reply, no close.
            browser
                .device()
                .send(json!({"messageType": "nack", "version": notification.version, "code": 301}))
                .await;
        }
    }
    browser.expect_nothing().await;
    browser.reconnect(&server).await;
    browser.expect_nothing().await;
}

#[tokio::test]
async fn ttl_above_the_maximum_is_lowered_and_answered() {
    let server = Server::builder()
        .protocol("max_ttl", "\"1h\"")
        .start()
        .await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let reply = Push::to(&subscription)
        .ttl(30 * 86_400)
        .aes128gcm(&subscription, b"long")
        .send(&server)
        .await;
    assert_created(&reply, 3600);
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"long");
    assert_eq!(notification.frame["ttl"], json!(3600));
    browser.ack(&notification).await;
    browser.expect_nothing().await;
}

/// WebPush across a memcache cluster: the push lands on another node than the one
/// holding the socket, live and then offline (docs/protocol.md).
#[cfg(feature = "memcache")]
#[tokio::test]
async fn webpush_follows_the_device_across_cluster_nodes() {
    let memcached = common::Memcached::start().await;
    let key = common::token_key();
    let secret = common::hex_id();
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
    let mut browser = Browser::connect(&nodes[0]).await;
    let subscription = browser.subscribe(None).await;
    let (_, token) = subscription.endpoint.split_once("/wpush/v1/").unwrap();
    let elsewhere = nodes[1].endpoint_url(&format!("/wpush/v1/{token}"));

    let reply = Push::to_endpoint(&elsewhere)
        .aes128gcm(&subscription, b"routed live")
        .send(&nodes[1])
        .await;
    assert_created(&reply, 60);
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"routed live");
    browser.ack(&notification).await;
    browser.expect_nothing().await;

    let offline = browser.go_offline(&nodes[0], 0).await;
    let reply = Push::to_endpoint(&elsewhere)
        .aes128gcm(&subscription, b"stored in memcached")
        .send(&nodes[1])
        .await;
    assert_created(&reply, 60);
    let mut browser = offline.reconnect(&nodes[1]).await;
    let (notification, plaintext) = browser.recv_decrypted().await;
    assert_eq!(plaintext, b"stored in memcached");
    browser.ack(&notification).await;
    browser.expect_nothing().await;
}
