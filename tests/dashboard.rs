//! `/dashboard/`: one self-contained HTML page on the operator listener whose numbers,
//! rendered in headless Chromium, follow what a device and an app server do, in both
//! dialects (SimplePush, and WebPush of PROTOCOL.md §9).
//!
//! The browser test needs Debian's `chromium` package (`/usr/bin/chromium`, or the path
//! in `SIMPLEPUSH_TEST_CHROMIUM`); without it the test fails and says how to install it.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::webpush::{Browser, Push, Vapid, assert_created, delete_message};
use common::{Server, chid, http};
use serde_json::json;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// One page load may take this long (a cold Chromium start included) before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn dashboard_is_one_self_contained_html_page_on_the_admin_listener() {
    let server = Server::start().await;
    let reply = http("GET", &server.admin_url("/dashboard/"), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let policy = reply.header("content-security-policy").unwrap_or_default();
    for directive in ["default-src 'none'", "connect-src 'self'"] {
        assert!(
            policy.contains(directive),
            "CSP {policy:?} lacks {directive}"
        );
    }
    let page = &reply.body;
    assert!(page.starts_with("<!doctype html>"), "{page}");
    for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the page refers to something outside itself ({external:?})"
        );
    }
    // It reads the server's own data, with root-relative URLs.
    for own in ["\"/metrics\"", "\"/realstatus/\""] {
        assert!(page.contains(own), "the page never fetches {own}");
    }

    let bare = http("GET", &server.admin_url("/dashboard"), None, None).await;
    assert_eq!(bare.status, 200);
    assert_eq!(&bare.body, page, "/dashboard and /dashboard/ differ");

    let below = http("GET", &server.admin_url("/dashboard/x"), None, None).await;
    below.assert_error(404, &["Not Found"]);
    for public in [
        server.ws_http_url("/dashboard/"),
        server.endpoint_url("/dashboard/"),
    ] {
        let reply = http("GET", &public, None, None).await;
        reply.assert_error(404, &["Not Found"]);
    }
}

#[tokio::test]
async fn dashboard_in_chromium_follows_connections_and_live_updates() {
    let chromium = chromium();
    let server = Server::start().await;
    let url = server.admin_url("/dashboard/");

    let before = load(&chromium, &url, None).await;
    assert_eq!(attribute(&before, "poll", "data-state"), "ok", "{before}");
    assert_eq!(number(&before, "connections"), 0.0);
    assert_eq!(number(&before, "live-total"), 0.0);
    assert_eq!(attribute(&before, "store-status", "data-value"), "OK");
    // Only a cluster node (the memcache backend) shows the cluster section.
    let cluster = tag(&before, "cluster");
    assert_eq!(
        cluster.contains(" hidden"),
        server.router.is_none(),
        "{cluster}"
    );

    let mut device = server.connect().await;
    device.hello("").await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 1, 200).await;
    device.recv_notification().await;

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let after = load(&chromium, &url, Some(&screenshot)).await;
    assert_eq!(number(&after, "connections"), 1.0, "{after}");
    assert_eq!(number(&after, "live-total"), 1.0);
    assert_eq!(number(&after, "updates-200-total"), 1.0);
    assert_eq!(number(&after, "updates-202-total"), 0.0);
    assert_eq!(number(&after, "commands-hello-total"), 1.0);
    assert_eq!(number(&after, "commands-register-total"), 1.0);
    assert_eq!(number(&after, "store-put_update-calls"), 1.0);
    let p99 = number(&after, "delivery-p99");
    assert!(p99 > 0.0 && p99 <= 5.0, "delivery p99 {p99} s");
    assert!(number(&after, "delivery-p50") <= p99);

    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    eprintln!("dashboard screenshot: {}", screenshot.display());
    device.close().await;
}

/// WebPush figures beside the SimplePush ones: pushes by status and encoding, the
/// browser's acks and nacks by code, VAPID failures by reason, message deletes.
#[tokio::test]
async fn dashboard_in_chromium_shows_webpush_beside_simplepush() {
    let chromium = chromium();
    let server = Server::start().await;
    let url = server.admin_url("/dashboard/");

    let before = load(&chromium, &url, None).await;
    for id in [
        "webpush-pushes-total",
        "webpush-201-total",
        "webpush-encoding-aes128gcm-total",
        "webpush-ack-100-total",
        "webpush-nack-301-total",
        "webpush-notifications-total",
        "vapid-failures-total",
        "message-deletes-204-total",
    ] {
        assert_eq!(number(&before, id), 0.0, "#{id} before any WebPush");
    }

    // A restricted (v2) subscription and an open (v1) one.
    let vapid = Vapid::new();
    let mut browser = Browser::connect(&server).await;
    let restricted = browser.subscribe(Some(&vapid)).await;
    let open = browser.subscribe(None).await;

    // Delivered live and acknowledged: aes128gcm, VAPID-signed.
    let reply = Push::to(&restricted)
        .aes128gcm(&restricted, b"one")
        .vapid(&vapid)
        .send(&server)
        .await;
    assert_created(&reply, 60);
    let (first, _) = browser.recv_decrypted().await;
    browser.ack(&first).await;

    // Delivered live, then the page's handler fails: a nack.
    let reply = Push::to(&open).aesgcm(&open, b"two").send(&server).await;
    assert_created(&reply, 60);
    let (second, _) = browser.recv_decrypted().await;
    browser
        .device()
        .send(json!({"messageType": "nack", "version": second.version, "code": 301}))
        .await;

    // Signed with another key: 403 and a VAPID failure.
    let reply = Push::to(&restricted)
        .aes128gcm(&restricted, b"forged")
        .vapid(&Vapid::new())
        .send(&server)
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);

    // Stored for the offline browser, then withdrawn.
    let offline = browser.go_offline(&server, 0).await;
    let reply = Push::to(&open).send(&server).await;
    let location = assert_created(&reply, 60);
    assert_eq!(delete_message(&server, &location).await.status, 204);
    // Back online: the nacked message comes again (a nack does not remove it), the
    // withdrawn one never.
    let mut browser = offline.reconnect(&server).await;
    let again = browser.recv_notification().await;
    assert_eq!(again.version, second.version);
    browser.ack(&again).await;
    browser.expect_nothing().await;

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-webpush.png");
    let _ = std::fs::remove_file(&screenshot);
    let after = load(&chromium, &url, Some(&screenshot)).await;
    eprintln!("dashboard screenshot: {}", screenshot.display());
    assert_eq!(number(&after, "connections"), 1.0, "{after}");
    assert_eq!(number(&after, "webpush-pushes-total"), 4.0);
    assert_eq!(number(&after, "webpush-201-total"), 3.0);
    assert_eq!(number(&after, "webpush-403-total"), 1.0);
    assert_eq!(number(&after, "webpush-encoding-aes128gcm-total"), 1.0);
    assert_eq!(number(&after, "webpush-encoding-aesgcm-total"), 1.0);
    assert_eq!(number(&after, "webpush-encoding-none-total"), 1.0);
    assert_eq!(number(&after, "webpush-notifications-total"), 3.0);
    assert_eq!(number(&after, "webpush-ack-100-total"), 2.0);
    assert_eq!(number(&after, "webpush-nack-301-total"), 1.0);
    assert_eq!(number(&after, "webpush-commands-hello-total"), 2.0);
    assert_eq!(number(&after, "webpush-commands-register-total"), 2.0);
    assert_eq!(number(&after, "vapid-failures-total"), 1.0);
    assert_eq!(number(&after, "vapid-key_mismatch-total"), 1.0);
    assert_eq!(number(&after, "message-deletes-204-total"), 1.0);
    // The SimplePush figures stay apart.
    assert_eq!(number(&after, "live-total"), 0.0);
    assert_eq!(number(&after, "commands-hello-total"), 0.0);
    assert_eq!(number(&after, "commands-register-total"), 0.0);
}

/// In a cluster the page shows this node and the peers it routed to: a device on node B,
/// an update PUT to node A and forwarded, then A's dashboard lists B as reachable.
#[cfg(feature = "memcache")]
#[tokio::test]
async fn dashboard_in_chromium_lists_the_cluster_peers() {
    let chromium = chromium();
    let memcached = common::Memcached::start().await;
    let key = genkey();
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
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut device = b.connect().await;
    device.hello("").await;
    let endpoint = device.register(&chid()).await;
    let (_, token) = endpoint.split_once("/update/").unwrap();
    a.put_version(&a.endpoint_url(&format!("/update/{token}")), 1, 200)
        .await;
    device.recv_notification().await;

    let dom = load(&chromium, &a.admin_url("/dashboard/"), None).await;
    let section = tag(&dom, "cluster");
    assert!(
        !section.contains(" hidden"),
        "hidden on a cluster node: {section}"
    );
    assert_eq!(
        attribute(&dom, "cluster-node", "data-value"),
        a.router_url("")
    );
    let peer = format!("data-peer=\"{}\" data-state=\"ok\"", b.router_url(""));
    assert!(dom.contains(&peer), "no reachable peer {peer} in:\n{dom}");
    assert_eq!(attribute(&dom, "store-backend", "data-value"), "memcache");
    device.close().await;
}

/// A fresh token key from `simplepush genkey`, shared by the nodes of a cluster.
#[cfg(feature = "memcache")]
fn genkey() -> String {
    // A short-lived child; blocking for it is harmless in a test.
    let output = Command::new(env!("CARGO_BIN_EXE_simplepush"))
        .arg("genkey")
        .output()
        .unwrap();
    assert!(output.status.success(), "simplepush genkey: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The browser, or a failure that says how to get it (never a silent pass).
fn chromium() -> PathBuf {
    let path = std::env::var_os("SIMPLEPUSH_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    assert!(
        path.is_file(),
        "headless Chromium not found at {}: install it with `apt-get install -y chromium` \
         (or point SIMPLEPUSH_TEST_CHROMIUM at a Chromium binary)",
        path.display()
    );
    path
}

/// Loads `url` in a fresh headless Chromium, lets the page poll for three seconds of
/// virtual time, and returns the DOM it rendered; with `screenshot`, saves a PNG too.
async fn load(chromium: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=3000".to_owned(),
        "--window-size=1200,1100".to_owned(),
    ];
    if let Some(path) = screenshot {
        args.push(format!("--screenshot={}", path.display()));
    }
    args.push("--dump-dom".to_owned());
    args.push(url.to_owned());
    let chromium = chromium.to_owned();
    let stderr = profile.path().join("chromium.log");
    let dom = tokio::task::spawn_blocking(move || run(&chromium, &args, &stderr))
        .await
        .unwrap();
    assert!(
        dom.contains("id=\"connections\""),
        "Chromium did not render the dashboard:\n{dom}"
    );
    dom
}

/// Runs the browser with `args` and returns its stdout; kills it after
/// [`CHROMIUM_TIMEOUT`]. Its stderr goes to the file `stderr`, shown on failure.
fn run(chromium: &Path, args: &[String], stderr: &Path) -> String {
    let log = std::fs::File::create(stderr).unwrap();
    let mut child = Command::new(chromium)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let mut stdout = child.stdout.take().unwrap();
    // Drained on its own thread so that a large DOM never blocks Chromium on the pipe.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "Chromium did not finish within {CHROMIUM_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = reader.join().unwrap();
    assert!(
        status.success(),
        "Chromium failed ({status}); its log:\n{}",
        std::fs::read_to_string(stderr).unwrap_or_default()
    );
    dom
}

/// The start tag of the element with id `id` in serialized HTML.
fn tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the rendered page:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..end]
}

/// The value of attribute `name` on the element with id `id` in serialized HTML (empty
/// for an attribute without a value); panics when the element or attribute is missing.
fn attribute(dom: &str, id: &str, name: &str) -> String {
    let tag = tag(dom, id);
    let (_, rest) = tag
        .split_once(&format!(" {name}"))
        .unwrap_or_else(|| panic!("#{id} has no {name}: {tag}"));
    match rest.strip_prefix("=\"") {
        Some(quoted) => quoted.split('"').next().unwrap().to_owned(),
        None => String::new(),
    }
}

/// The number an element shows, from its `data-value`.
fn number(dom: &str, id: &str) -> f64 {
    let value = attribute(dom, id, "data-value");
    value
        .parse()
        .unwrap_or_else(|_| panic!("#{id} shows no number (data-value {value:?})"))
}
