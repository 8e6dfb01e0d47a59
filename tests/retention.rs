//! Retention over real sockets (`[store] device_ttl`, docs/operations.md "Retention"):
//! a server with a two-second device TTL forgets idle devices of both dialects, and
//! keeps the devices that come back or stay connected. Each test runs its own server,
//! concurrently with the others; they run on whatever store the matrix leg names.

mod common;

use std::time::{Duration, Instant};

use common::webpush::{Browser, Push, webpush_hello};
use common::{Device, Server, WAIT, chid, metric};
use serde_json::{Value, json};

/// The device TTL of every server here.
const TTL: Duration = Duration::from_secs(2);

/// How often an active device comes back (or pings): half the TTL.
const BEAT: Duration = Duration::from_secs(1);

/// How long the active devices stay active: three TTLs, so that a device retention
/// failed to keep would have been removed at least once meanwhile.
const ACTIVE_FOR: Duration = Duration::from_secs(6);

/// A server that forgets devices not seen for [`TTL`].
async fn server() -> Server {
    Server::builder()
        .arg("--device-ttl")
        .arg("2s")
        .start()
        .await
}

/// memcached forgets by itself (item lifetimes) and retention counts nothing there.
fn forgets_by_itself() -> bool {
    std::env::var("SIMPLEPUSH_TEST_STORE").is_ok_and(|store| store == "memcache")
}

/// Devices retention removed so far, per `/metrics` on the operator listener.
async fn removed_devices(server: &Server) -> u64 {
    let text = server.metrics_text().await;
    metric(&text, "retention_removed_total", r#"what="devices""#)
        .unwrap_or_else(|| panic!("no retention_removed_total{{what=\"devices\"}}:\n{text}"))
}

/// Waits until the server has forgotten the device last written at `last_write`,
/// without touching it (a hello or a PUT would keep it). A sweeping store counts what
/// it removes: polled until the counter moves. memcached counts nothing: its items
/// expire on its own one-second clock, and the store gives them a second more than
/// the TTL so that none ends early, so one may live almost two seconds longer; there
/// the wait is a TTL and three seconds.
async fn wait_until_forgotten(server: &Server, last_write: Instant) {
    if forgets_by_itself() {
        tokio::time::sleep_until((last_write + TTL + Duration::from_secs(3)).into()).await;
        assert_eq!(
            removed_devices(server).await,
            0,
            "memcached forgets uncounted"
        );
        return;
    }
    let deadline = last_write + TTL + Duration::from_secs(5);
    while removed_devices(server).await == 0 {
        assert!(
            Instant::now() < deadline,
            "retention removed nothing in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A SimplePush hello with the uaid and channels the device holds; the uaid answered.
async fn hello_as(device: &mut Device, uaid: &str, channel: &str) -> String {
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": [channel]}))
        .await;
    assert_eq!(reply["status"], json!(200), "hello reply {reply}");
    reply["uaid"].as_str().unwrap().to_owned()
}

/// The version of the single update of a notification.
fn version(frame: &Value) -> u64 {
    let updates = common::updates(frame);
    assert_eq!(updates.len(), 1, "one update: {frame}");
    updates[0].1
}

#[tokio::test]
async fn an_idle_simplepush_device_is_forgotten_with_its_pending_update() {
    let server = server().await;
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    device.close().await;
    server.wait_for_clients(0).await;
    server.put_version(&endpoint, 7, 202).await;
    let last_write = Instant::now();

    wait_until_forgotten(&server, last_write).await;
    let reply = server.put(&endpoint, "version=8").await;
    assert_eq!(
        reply.status, 410,
        "PUT to a forgotten device: {}",
        reply.body
    );
    let mut device = server.connect().await;
    let fresh = hello_as(&mut device, &uaid, &channel).await;
    assert_ne!(fresh, uaid, "a forgotten device gets a fresh uaid");
    // Nothing of the old device is delivered to the new one: the ping's reply comes
    // next.
    device.ping().await;
    if !forgets_by_itself() {
        assert_eq!(removed_devices(&server).await, 1);
    }
}

/// A SimplePush device that comes back every [`BEAT`] for [`ACTIVE_FOR`], then gets an
/// update.
async fn come_back_simplepush(server: &Server) {
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    device.close().await;
    let started = Instant::now();
    while started.elapsed() < ACTIVE_FOR {
        tokio::time::sleep(BEAT).await;
        let mut device = server.connect().await;
        assert_eq!(hello_as(&mut device, &uaid, &channel).await, uaid);
        device.close().await;
    }
    let mut device = server.connect().await;
    assert_eq!(hello_as(&mut device, &uaid, &channel).await, uaid);
    server.put_version(&endpoint, 3, 200).await;
    assert_eq!(version(&device.recv_notification().await), 3);
}

/// A WebPush browser that comes back every [`BEAT`] for [`ACTIVE_FOR`], then gets a
/// push.
async fn come_back_webpush(server: &Server) {
    let mut browser = Browser::connect(server).await;
    let subscription = browser.subscribe(None).await;
    let started = Instant::now();
    while started.elapsed() < ACTIVE_FOR {
        tokio::time::sleep(BEAT).await;
        // Asserts that the uaid held is echoed.
        browser.reconnect(server).await;
    }
    let reply = Push::to(&subscription).send(server).await;
    assert_eq!(reply.status, 201, "push: {}", reply.body);
    let notification = browser.recv_notification().await;
    assert_eq!(notification.channel_id, subscription.channel_id);
}

/// A SimplePush device that stays connected for [`ACTIVE_FOR`], only pinging, then
/// reconnects and gets an update.
async fn stay_connected(server: &Server) {
    let (mut device, uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    let started = Instant::now();
    while started.elapsed() < ACTIVE_FOR {
        tokio::time::sleep(BEAT).await;
        device.ping().await;
    }
    device.close().await;
    let mut device = server.connect().await;
    assert_eq!(hello_as(&mut device, &uaid, &channel).await, uaid);
    server.put_version(&endpoint, 5, 200).await;
    assert_eq!(version(&device.recv_notification().await), 5);
}

/// The active devices side by side on one server, so the test takes [`ACTIVE_FOR`]
/// once whatever the number of test threads.
#[tokio::test]
async fn devices_that_come_back_or_stay_connected_keep_their_uaid_past_three_ttls() {
    let server = server().await;
    tokio::join!(
        come_back_simplepush(&server),
        come_back_webpush(&server),
        stay_connected(&server),
    );
    if !forgets_by_itself() {
        assert_eq!(removed_devices(&server).await, 0);
    }
}

#[tokio::test]
async fn an_idle_webpush_subscription_is_forgotten_with_its_queued_message() {
    let server = server().await;
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(None).await;
    let offline = browser.go_offline(&server, 0).await;
    let reply = Push::to(&subscription).send(&server).await;
    assert_eq!(reply.status, 201, "queued while offline: {}", reply.body);

    // A push with TTL 0 only asks whether the subscription is still there (it stores
    // nothing, so it keeps nothing alive): 201 until the device is forgotten, then 410.
    let deadline = Instant::now() + TTL + WAIT;
    loop {
        let probe = Push::to(&subscription).ttl(0).send(&server).await;
        if probe.status == 410 {
            break;
        }
        assert_eq!(probe.status, 201, "TTL 0 probe: {}", probe.body);
        assert!(
            Instant::now() < deadline,
            "the subscription was never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = Push::to(&subscription).send(&server).await;
    assert_eq!(
        reply.status, 410,
        "push to a forgotten device: {}",
        reply.body
    );

    let mut device = server.connect().await;
    let reply = webpush_hello(&mut device, Some(&offline.uaid)).await;
    assert_ne!(
        reply["uaid"],
        json!(offline.uaid),
        "a forgotten WebPush device gets a fresh uaid: {reply}"
    );
    // Its queued message went with it: nothing comes before the ping's reply.
    device.ping().await;
    if !forgets_by_itself() {
        assert_eq!(removed_devices(&server).await, 1);
    }
}
