//! `/dashboard/`: one self-contained HTML page on the operator listener whose numbers,
//! rendered in headless Chromium, follow what a device and an app server do, in both
//! dialects (SimplePush, and WebPush of docs/protocol.md).
//!
//! The browser tests need Debian's `chromium` package (`/usr/bin/chromium`, or the path
//! in `SIMPLEPUSH_TEST_CHROMIUM`); without it they fail and say how to install it. Most
//! load the page once and read the DOM it rendered (`--dump-dom`); the plots' test keeps
//! the page open in real time and reads it over the DevTools protocol while pushes happen.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::webpush::{Browser, Push, Vapid, assert_created, delete_message};
use common::{Server, chid, http};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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
    device.ack(&channel, 1).await;
    device.ping().await;

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
    assert_eq!(number(&after, "store-ack_many-calls"), 1.0);
    // The put and the ack ran before the page was opened: their percentiles are still
    // figures (of every call since start), and an op never called says so.
    for op in ["put_update", "ack_many", "register"] {
        assert_store_percentiles(&after, op, "start");
    }
    assert_no_store_calls(&after, "drop_uaid");
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

/// The plots of the last 15 minutes, in a page left open while pushes happen: they start
/// empty, gain a point each second, and show the pushes of both dialects by outcome,
/// the connections and the delivery latency; the store table gives every op that ran
/// its percentiles.
#[tokio::test]
async fn dashboard_in_chromium_plots_pushes_as_they_happen() {
    let chromium = chromium();
    let server = Server::start().await;
    let mut device = server.connect().await;
    device.hello("").await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    let vapid = Vapid::new();
    let mut browser = Browser::connect(&server).await;
    let subscription = browser.subscribe(Some(&vapid)).await;

    let mut page = LivePage::open(&chromium, &server.admin_url("/dashboard/")).await;
    let quiet = page
        .wait_for("two samples in the plots", |dom| {
            // The script draws the plots at its first poll, after the page has loaded.
            dom.contains(" id=\"plot-connections\"") && points(dom, "plot-connections") >= 2
        })
        .await;
    assert!(
        quiet.contains("since this page was opened"),
        "the page does not say where the plots start"
    );
    assert_eq!(number(&quiet, "plot-connections-connections"), 2.0);
    for id in [
        "plot-simplepush-spLive",
        "plot-simplepush-spErrors",
        "plot-webpush-wp201",
        "plot-webpush-wp4xx",
    ] {
        assert_eq!(number(&quiet, id), 0.0, "#{id} before any push");
    }
    assert_eq!(attribute(&quiet, "plot-latency", "data-max"), "");
    // Ops that ran only before the page was opened have figures since start.
    assert_store_percentiles(&quiet, "register", "start");
    assert_no_store_calls(&quiet, "put_update");
    let lines_before = [
        line_points(&quiet, "plot-simplepush-spLive-line"),
        line_points(&quiet, "plot-webpush-wp201-line"),
        line_points(&quiet, "plot-connections-connections-line"),
    ];

    // A burst of pushes in both dialects, each delivered and acked, with a refused one
    // of each dialect beside, until the page's newest sample has them all.
    let unknown = server.endpoint_url("/update/unknown-token");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut version = 0;
    let burst = loop {
        version += 1;
        server.put_version(&endpoint, version, 200).await;
        device.recv_notification().await;
        device.ack(&channel, version).await;
        let refused = http("PUT", &unknown, None, Some("version=1")).await;
        assert!(
            refused.status >= 400,
            "PUT to an unknown endpoint: {}",
            refused.status
        );
        let reply = Push::to(&subscription)
            .aes128gcm(&subscription, b"burst")
            .vapid(&vapid)
            .send(&server)
            .await;
        assert_created(&reply, 60);
        let (message, _) = browser.recv_decrypted().await;
        browser.ack(&message).await;
        let forged = Push::to(&subscription)
            .vapid(&Vapid::new())
            .send(&server)
            .await;
        assert_eq!(forged.status, 403, "{}", forged.body);

        let dom = page.dom().await;
        let newest = [
            "plot-simplepush-spLive",
            "plot-simplepush-spErrors",
            "plot-webpush-wp201",
            "plot-webpush-wp4xx",
        ]
        .map(|id| number(&dom, id));
        if newest.iter().all(|rate| *rate > 0.0) {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "after {version} rounds of pushes the plots' newest rates are {newest:?}:\n{dom}"
        );
    };
    for (id, before) in [
        "plot-simplepush-spLive-line",
        "plot-webpush-wp201-line",
        "plot-connections-connections-line",
    ]
    .into_iter()
    .zip(lines_before)
    {
        let after = line_points(&burst, id);
        assert!(after > before, "#{id} had {before} points and has {after}");
    }
    for id in ["plot-simplepush", "plot-webpush"] {
        let max: f64 = attribute(&burst, id, "data-max").parse().unwrap();
        assert!(max > 0.0, "#{id} peaks at {max}");
    }
    assert_eq!(number(&burst, "plot-simplepush-spStored"), 0.0);
    assert_eq!(number(&burst, "plot-webpush-wp5xx"), 0.0);
    assert_eq!(number(&burst, "plot-connections-connections"), 2.0);
    let (p50, p99) = (
        number(&burst, "plot-latency-p50"),
        number(&burst, "plot-latency-p99"),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= 5.0,
        "latency p50 {p50} s, p99 {p99} s"
    );
    assert!(line_points(&burst, "plot-latency-p99-line") >= 1);
    // Pictures to look at, in both colour schemes.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    page.screenshot(&dir.join("dashboard-plots.png")).await;
    let dark = json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]});
    page.call("Emulation.setEmulatedMedia", dark).await;
    page.screenshot(&dir.join("dashboard-plots-dark.png")).await;

    // Every ack reached the store before the page looks again.
    device.ping().await;
    browser.expect_nothing().await;
    let settled = page
        .wait_for("a poll after the last ack", |dom| {
            points(dom, "plot-connections") > points(&burst, "plot-connections")
        })
        .await;
    assert_eq!(number(&settled, "store-put_update-calls"), version as f64);
    for op in ["put_update", "ack_many", "put_message", "ack_messages"] {
        assert_store_percentiles(&settled, op, "minute");
    }
    assert_store_percentiles(&settled, "register", "start");
    assert_no_store_calls(&settled, "drop_uaid");
    device.close().await;
}

/// Asserts that the store table gives `op` real p50 and p99 figures, of its calls over
/// `window` (`minute`: the last minute; `start`: since the server started).
fn assert_store_percentiles(dom: &str, op: &str, window: &str) {
    let (p50, p99) = (
        number(dom, &format!("store-{op}-p50")),
        number(dom, &format!("store-{op}-p99")),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= 5.0,
        "store {op}: p50 {p50} s, p99 {p99} s"
    );
    assert_eq!(
        attribute(dom, &format!("store-{op}-window"), "data-value"),
        window,
        "store {op}"
    );
}

/// Asserts that the store table lists `op` as not called yet, in words.
fn assert_no_store_calls(dom: &str, op: &str) {
    assert_eq!(number(dom, &format!("store-{op}-calls")), 0.0, "store {op}");
    let id = format!("store-{op}-p50");
    let cell = tag(dom, &id);
    let text = dom[dom.find(cell).unwrap() + cell.len() + 1..]
        .split('<')
        .next()
        .unwrap();
    assert_eq!(text, "no calls yet", "#{id}");
}

/// The samples a plot holds (its figure's `data-points`).
fn points(dom: &str, plot: &str) -> usize {
    let value = attribute(dom, plot, "data-points");
    value
        .parse()
        .unwrap_or_else(|_| panic!("#{plot} data-points {value:?}"))
}

/// The points of one plot line: its `data-points`, checked against the points its path
/// data really has (one `M` or `L` each).
fn line_points(dom: &str, line: &str) -> usize {
    let count = points(dom, line);
    let d = attribute(dom, line, "d");
    let drawn = d.matches(['M', 'L']).count();
    assert_eq!(drawn, count, "#{line} d={d:?}");
    count
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

/// A headless Chromium showing one page, in real time, driven over the DevTools
/// protocol: the test reads the page's DOM while the page keeps polling.
struct LivePage {
    browser: Browsing,
    devtools: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// The Chromium process and its profile directory; the browser is killed when this is
/// dropped, also when a test fails (its helper processes follow it).
struct Browsing {
    child: Child,
    profile: tempfile::TempDir,
}

impl LivePage {
    /// Starts Chromium on `url` and connects to the page's DevTools socket.
    async fn open(chromium: &Path, url: &str) -> LivePage {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Its timers run at full pace although nobody looks at the page.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--window-size=1200,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let mut browser = Browsing { child, profile };
        let port = browser.devtools_port().await;
        let targets = http(
            "GET",
            &format!("http://127.0.0.1:{port}/json/list"),
            None,
            None,
        )
        .await;
        let targets: Vec<serde_json::Value> = serde_json::from_str(&targets.body).unwrap();
        let socket = targets
            .iter()
            .find(|t| t["type"] == "page" && t["url"] == url)
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page {url} among {targets:#?}"));
        let devtools = tokio_tungstenite::connect_async(socket).await.unwrap().0;
        LivePage {
            browser,
            devtools,
            next_id: 0,
        }
    }

    /// Calls DevTools `method` with `params` on the page and returns its result.
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({"id": id, "method": method, "params": params});
        self.devtools
            .send(Message::text(call.to_string()))
            .await
            .unwrap();
        // Events may come first; the answer carries the call's id.
        loop {
            let frame = tokio::time::timeout(CHROMIUM_TIMEOUT, self.devtools.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}:\n{}", self.browser.log()))
                .unwrap_or_else(|| panic!("DevTools closed:\n{}", self.browser.log()))
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let mut answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                break answer["result"].take();
            }
        }
    }

    /// The page's DOM as it is now, serialized.
    async fn dom(&mut self) -> String {
        match self.try_dom().await {
            Ok(dom) => dom,
            Err(result) => panic!("no DOM: {result}"),
        }
    }

    /// The page's DOM, serialized; the evaluation's result when there is none yet (the
    /// page still loading).
    async fn try_dom(&mut self) -> Result<String, serde_json::Value> {
        let expression = "document.documentElement.outerHTML";
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        match result["result"]["value"].as_str() {
            Some(dom) => Ok(dom.to_owned()),
            None => Err(result),
        }
    }

    /// Saves a PNG of the page as it is now at `path`.
    async fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let result = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let data = result["data"].as_str().unwrap_or_default();
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("dashboard screenshot: {}", path.display());
    }

    /// The DOM once `ready` holds for it; fails after [`CHROMIUM_TIMEOUT`] saying `what`
    /// it waited for.
    async fn wait_for(&mut self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + CHROMIUM_TIMEOUT;
        loop {
            // Before the page has loaded there is no DOM, or no plots yet.
            let dom = self.try_dom().await.unwrap_or_else(|e| e.to_string());
            if dom.contains("id=\"plots\"") && ready(&dom) {
                return dom;
            }
            assert!(Instant::now() < deadline, "no {what}:\n{dom}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Browsing {
    /// The port of the DevTools listener, from the file Chromium writes once it listens.
    async fn devtools_port(&mut self) -> u16 {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + CHROMIUM_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(Ok(port)) = text.lines().next().map(str::parse) {
                return port;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("Chromium exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not listen within {CHROMIUM_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Chromium's stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Browsing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
