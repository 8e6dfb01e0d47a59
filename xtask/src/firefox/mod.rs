//! The Firefox check (`cargo xtask firefox`, and the end of `cargo xtask test`'s `all`
//! leg): a real Firefox — Debian's `firefox-esr`, headless, fresh profile — subscribes a
//! page to push through the debug binary and its service worker must receive, exactly,
//! what an app server pushed: while connected, while offline, and across a browser
//! restart, on several backends and through a two-node cluster; its subscription must
//! never change (`pushsubscriptionchange` never fires).
//!
//! Firefox is driven over Marionette (its built-in remote protocol, [`marionette`]); the
//! page and its worker come from a tiny HTTP server ([`site`]); the app server's
//! encryption and VAPID signature are in [`app_server`].

mod app_server;
mod browser;
mod marionette;
mod site;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::bench::{ScratchDir, ServerProc};
use crate::memcached;
use app_server::AppServer;
use browser::{Firefox, Profile};
use site::Site;

pub use browser::installed;

/// Options of `cargo xtask firefox`.
#[derive(Debug, Args)]
pub struct FirefoxArgs {
    /// Backends to run the single-node cases on (repeatable or comma-separated).
    #[arg(
        long = "backend",
        value_enum,
        value_delimiter = ',',
        default_values_t = Backend::ALL
    )]
    backends: Vec<Backend>,

    /// Skip the two-node cluster case (memcache backend, memcached started here).
    #[arg(long)]
    no_cluster: bool,

    /// The simplepush binary to test, instead of building the debug binary with every
    /// backend (the one `cargo xtask test`'s `all` leg builds).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

/// A single-node backend the cases run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The in-memory store.
    Memory,
    /// SQLite, durable.
    Sqlite,
    /// RocksDB, durable.
    Rocksdb,
}

impl Backend {
    /// Every single-node backend, in run order.
    pub const ALL: [Backend; 3] = [Backend::Memory, Backend::Sqlite, Backend::Rocksdb];

    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Rocksdb => "rocksdb",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How long a pushed message may take to reach the service worker (a restart included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to see Firefox connect or go away.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the worker's records and the server's client count are polled.
const POLL: Duration = Duration::from_millis(200);
/// Lines of each log in a failure report.
const FIREFOX_LOG_LINES: usize = 80;
const SERVER_LOG_LINES: usize = 40;

/// Runs `cargo xtask firefox`: preflight (installs firefox-esr as root), builds the debug
/// binary unless given one, then the check.
pub fn run(args: &FirefoxArgs) -> Result<()> {
    crate::preflight::firefox()?;
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => build()?,
    };
    check(&binary, &args.backends, !args.no_cluster)
}

/// Builds the debug binary with every backend (the feature set of the `all` leg).
fn build() -> Result<PathBuf> {
    crate::bench::build_simplepush(&["memcache", "rocksdb", "sqlite"], true)
}

/// The check: the three single-node cases on each of `backends`, then (with `cluster`)
/// the two-node case. Prints how long each part took.
pub fn check(binary: &Path, backends: &[Backend], cluster: bool) -> Result<()> {
    println!("firefox: {}", browser::version()?);
    let started = Instant::now();
    let site = Site::start()?;
    let scratch = ScratchDir::new("firefox")?;
    let vapid = AppServer::new(binary, scratch.path())?;
    for &backend in backends {
        let part = Instant::now();
        single_node(binary, backend, &site, &vapid)
            .with_context(|| format!("the Firefox check on {backend}"))?;
        println!(
            "firefox: {backend}: live, offline and restart cases passed in {:.1} s",
            part.elapsed().as_secs_f64()
        );
    }
    if cluster {
        let part = Instant::now();
        two_nodes(binary, &site, &vapid).context("the Firefox check on a two-node cluster")?;
        println!(
            "firefox: cluster: push to node B delivered through node A in {:.1} s",
            part.elapsed().as_secs_f64()
        );
    }
    println!(
        "firefox: every case passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The config of one node on `backend`, every listener on a free loopback port, the data
/// in its scratch directory. `server_extra` goes at the end of `[server]` (and may open
/// further sections), `store_extra` at the end of `[store]`.
fn server_config(backend: &str, store_extra: &str, server_extra: &str) -> String {
    format!(
        "[server]\nws_addr = \"127.0.0.1:0\"\nendpoint_addr = \"127.0.0.1:0\"\n\
         admin_addr = \"127.0.0.1:0\"\n{server_extra}\
         [store]\nbackend = \"{backend}\"\npath = \"data\"\n{store_extra}\
         [log]\nlevel = \"info,simplepush=debug\"\n"
    )
}

/// Cases 1–3 on one node: live, offline, restart.
fn single_node(binary: &Path, backend: Backend, site: &Site, vapid: &AppServer) -> Result<()> {
    let server = ServerProc::simplepush(binary, &server_config(backend.name(), "", ""))?;
    let scratch = ScratchDir::new(&format!("firefox-{backend}"))?;
    let profile = Profile::create(scratch.path(), &format!("ws://{}/", server.ws))?;
    single_node_cases(&server, backend, site, vapid, &profile)
        .map_err(|err| explain(err, &profile, &[("server", &server)]))
}

fn single_node_cases(
    server: &ServerProc,
    backend: Backend,
    site: &Site,
    vapid: &AppServer,
    profile: &Profile,
) -> Result<()> {
    let texts = [
        unique_text(backend.name(), "live"),
        unique_text(backend.name(), "offline"),
        unique_text(backend.name(), "restart"),
    ];

    profile.mark("start Firefox, subscribe");
    let mut firefox = Firefox::start(profile)?;
    let page = Page::open(&mut firefox, site)?;
    let subscription = page.subscribe(&mut firefox, vapid)?;
    let endpoint = endpoint_of(&subscription)?;
    let expected_prefix = format!("http://localhost:{}/wpush/v2/", server.endpoint.port());
    if !endpoint.starts_with(&expected_prefix) {
        bail!("the subscription's endpoint {endpoint} does not start with {expected_prefix}");
    }
    wait_for_clients(server.endpoint, 1)?;

    profile.mark("case 1: live push");
    expect_created(vapid.push(&subscription, &texts[0])?, "live")?;
    page.wait_for_events(&mut firefox, &texts[..1])?;

    profile.mark("case 2: offline, push, online");
    firefox.set_offline(true)?;
    wait_for_clients(server.endpoint, 0).context("after going offline")?;
    expect_created(vapid.push(&subscription, &texts[1])?, "offline")?;
    // Stored, not delivered: the worker must not have it while Firefox is offline.
    page.expect_events_now(&mut firefox, &texts[..1])
        .context("while offline")?;
    firefox.set_offline(false)?;
    page.wait_for_events(&mut firefox, &texts[..2])
        .context("after going back online")?;
    page.expect_endpoint(&mut firefox, &endpoint)?;

    profile.mark("case 3: quit, push, restart");
    firefox.quit()?;
    wait_for_clients(server.endpoint, 0).context("after Firefox quit")?;
    expect_created(vapid.push(&subscription, &texts[2])?, "restart")?;
    profile.mark("restart Firefox on the same profile");
    let mut firefox = Firefox::start(profile)?;
    let page = Page::open(&mut firefox, site)?;
    page.wait_for_events(&mut firefox, &texts)
        .context("after the restart")?;
    page.expect_endpoint(&mut firefox, &endpoint)
        .context("after the restart")?;
    profile.mark("done");
    firefox.quit()
}

/// Case 4: two memcache nodes; Firefox on node A, the push POSTed to node B.
fn two_nodes(binary: &Path, site: &Site, vapid: &AppServer) -> Result<()> {
    let memcached = memcached::Cluster::start(2)?;
    let servers: Vec<String> = memcached
        .env_value()
        .split(',')
        .map(|addr| format!("\"{addr}\""))
        .collect();
    let key = crate::bench::genkey(binary)?;
    let secret = format!("firefox-check-{}", nonce());
    let config = server_config(
        "memcache",
        &format!("servers = [{}]\n", servers.join(", ")),
        &format!(
            "token_keys = [\"{key}\"]\n[router]\naddr = \"127.0.0.1:0\"\nsecret = \"{secret}\"\n"
        ),
    );
    let node_a = ServerProc::simplepush(binary, &config)?;
    let node_b = ServerProc::simplepush(binary, &config)?;
    let scratch = ScratchDir::new("firefox-cluster")?;
    let profile = Profile::create(scratch.path(), &format!("ws://{}/", node_a.ws))?;
    two_nodes_case(&node_a, &node_b, site, vapid, &profile).map_err(|err| {
        explain(
            err,
            &profile,
            &[
                ("node A (Firefox's)", &node_a),
                ("node B (pushed to)", &node_b),
            ],
        )
    })
}

fn two_nodes_case(
    node_a: &ServerProc,
    node_b: &ServerProc,
    site: &Site,
    vapid: &AppServer,
    profile: &Profile,
) -> Result<()> {
    let text = unique_text("cluster", "routed");
    profile.mark("start Firefox on node A, subscribe");
    let mut firefox = Firefox::start(profile)?;
    let page = Page::open(&mut firefox, site)?;
    let subscription = page.subscribe(&mut firefox, vapid)?;
    let endpoint = endpoint_of(&subscription)?;
    wait_for_clients(node_a.endpoint, 1)?;
    wait_for_clients(node_b.endpoint, 0)?;

    profile.mark("case 4: push to node B");
    // The same endpoint path on node B (the nodes share their token keys), at B's
    // endpoint URL (the default, `http://localhost:PORT`), the VAPID audience B accepts.
    let on_b = with_origin(
        &endpoint,
        &format!("http://localhost:{}", node_b.endpoint.port()),
    )?;
    let mut pushed = serde_json::from_str::<Value>(&subscription)?;
    pushed["endpoint"] = json!(on_b);
    expect_created(vapid.push(&pushed.to_string(), &text)?, "push to node B")?;
    page.wait_for_events(&mut firefox, std::slice::from_ref(&text))?;
    page.expect_endpoint(&mut firefox, &endpoint)?;
    profile.mark("done");
    firefox.quit()
}

/// A failure with the logs that explain it: Firefox's push log, then each server's.
fn explain(
    err: anyhow::Error,
    profile: &Profile,
    servers: &[(&str, &ServerProc)],
) -> anyhow::Error {
    let mut text = format!(
        "{err:#}\n\n--- Firefox's log: push service, errors and the check's marks (last {FIREFOX_LOG_LINES} such lines) ---\n{}\n",
        profile.log_tail(FIREFOX_LOG_LINES)
    );
    for (name, server) in servers {
        text += &format!(
            "--- {name}'s log (last {SERVER_LOG_LINES} lines) ---\n{}\n",
            server.log_tail_lines(SERVER_LOG_LINES)
        );
    }
    anyhow!(text)
}

/// The page open in Firefox, through which the check subscribes and reads what the
/// service worker recorded.
struct Page;

/// Registers the worker, waits until it is active, subscribes.
const SUBSCRIBE: &str = r#"
const [key, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const registration = await navigator.serviceWorker.register("/sw.js");
  await navigator.serviceWorker.ready;
  const subscription = await registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: key,
  });
  return JSON.stringify(subscription.toJSON());
})().then((ok) => done({ ok }), (error) => done({ error: String(error) }));
"#;

/// The endpoint of the current subscription (null when there is none).
const ENDPOINT: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  const registration = await navigator.serviceWorker.getRegistration("/");
  if (!registration) return null;
  const subscription = await registration.pushManager.getSubscription();
  return subscription ? subscription.endpoint : null;
})().then((ok) => done({ ok }), (error) => done({ error: String(error) }));
"#;

/// Every event the worker recorded, in order, as a JSON array.
const EVENTS: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  const cache = await caches.open("events");
  const events = [];
  for (const request of await cache.keys()) {
    const response = await cache.match(request);
    events.push(JSON.parse(await response.text()));
  }
  return JSON.stringify(events);
})().then((ok) => done({ ok }), (error) => done({ error: String(error) }));
"#;

impl Page {
    fn open(firefox: &mut Firefox, site: &Site) -> Result<Page> {
        firefox.open(&site.url())?;
        Ok(Page)
    }

    /// Subscribes with `vapid`'s public key; returns `subscription.toJSON()` as JSON.
    fn subscribe(&self, firefox: &mut Firefox, vapid: &AppServer) -> Result<String> {
        let answer = firefox
            .run_in_page(SUBSCRIBE, json!([vapid.public_b64()]))
            .context("subscribing")?;
        let subscription = answer
            .as_str()
            .with_context(|| format!("subscribe answered {answer}"))?;
        expect_keys(subscription)?;
        Ok(subscription.to_owned())
    }

    /// Fails unless the page's subscription still has `endpoint`.
    fn expect_endpoint(&self, firefox: &mut Firefox, endpoint: &str) -> Result<()> {
        let now = firefox.run_in_page(ENDPOINT, json!([]))?;
        if now != json!(endpoint) {
            bail!(
                "the subscription changed: getSubscription() gives {now}, subscribed as {endpoint:?}"
            );
        }
        Ok(())
    }

    /// What the worker recorded so far.
    fn events(&self, firefox: &mut Firefox) -> Result<Vec<Event>> {
        let answer = firefox.run_in_page(EVENTS, json!([]))?;
        let text = answer.as_str().context("events are a JSON string")?;
        let values: Vec<Value> = serde_json::from_str(text)?;
        Ok(values.iter().map(Event::from_json).collect())
    }

    /// Fails unless the worker recorded exactly the pushes `texts`, in order, now.
    fn expect_events_now(&self, firefox: &mut Firefox, texts: &[String]) -> Result<()> {
        let events = self.events(firefox)?;
        compare_events(&events, texts).map_err(|why| anyhow!(why))
    }

    /// Waits until the worker recorded the last of `texts`, then fails unless it recorded
    /// exactly `texts`, in order. A `pushsubscriptionchange` fails at once.
    fn wait_for_events(&self, firefox: &mut Firefox, texts: &[String]) -> Result<()> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let last = texts.last().context("no text to wait for")?;
        loop {
            let events = self.events(firefox)?;
            let arrived = events.iter().any(|e| e.push_text() == Some(last.as_str()));
            let changed = events
                .iter()
                .any(|e| matches!(e, Event::SubscriptionChange));
            if arrived || changed {
                return compare_events(&events, texts).map_err(|why| anyhow!(why));
            }
            if Instant::now() > deadline {
                bail!(
                    "the service worker did not get {last:?} within {DELIVERY_TIMEOUT:?}; \
                     it recorded {}",
                    describe(&events)
                );
            }
            thread::sleep(POLL);
        }
    }
}

/// One event the worker recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A `push`, with its data as text (`None`: a push without data).
    Push(Option<String>),
    /// A `pushsubscriptionchange`.
    SubscriptionChange,
    /// Anything else (the worker records nothing else; shown if it ever does).
    Other(String),
}

impl Event {
    fn from_json(value: &Value) -> Event {
        match value["kind"].as_str() {
            Some("push") => Event::Push(value["text"].as_str().map(str::to_owned)),
            Some("pushsubscriptionchange") => Event::SubscriptionChange,
            _ => Event::Other(value.to_string()),
        }
    }

    fn push_text(&self) -> Option<&str> {
        match self {
            Event::Push(text) => text.as_deref(),
            _ => None,
        }
    }
}

fn describe(events: &[Event]) -> String {
    if events.is_empty() {
        return "nothing".to_owned();
    }
    let items: Vec<String> = events
        .iter()
        .map(|event| match event {
            Event::Push(Some(text)) => format!("push {text:?}"),
            Event::Push(None) => "push without data".to_owned(),
            Event::SubscriptionChange => "pushsubscriptionchange".to_owned(),
            Event::Other(json) => format!("unknown {json}"),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// `Ok` when `events` are exactly pushes of `texts`, in order; else why not.
fn compare_events(events: &[Event], texts: &[String]) -> std::result::Result<(), String> {
    if events.contains(&Event::SubscriptionChange) {
        return Err(format!(
            "pushsubscriptionchange fired: Firefox dropped the subscription (the worker \
             recorded {})",
            describe(events)
        ));
    }
    let expected: Vec<Event> = texts.iter().map(|t| Event::Push(Some(t.clone()))).collect();
    if events != expected {
        return Err(format!(
            "the service worker recorded {}, expected exactly {}",
            describe(events),
            describe(&expected)
        ));
    }
    Ok(())
}

/// Fails unless the subscription carries the keys an app server encrypts with: a P-256
/// point (`p256dh`, 65 bytes) and an `auth` secret (16 bytes), base64url.
fn expect_keys(subscription: &str) -> Result<()> {
    let value: Value = serde_json::from_str(subscription)
        .with_context(|| format!("the subscription is not JSON: {subscription}"))?;
    let length = |name: &str| {
        value["keys"][name]
            .as_str()
            .and_then(|text| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok())
            .map(|bytes| bytes.len())
    };
    if length("p256dh") != Some(65) || length("auth") != Some(16) {
        bail!(
            "Firefox's subscription has no usable encryption keys: {subscription} (Firefox \
             makes them only when the server's hello reply says \"use_webpush\": true)"
        );
    }
    Ok(())
}

fn expect_created(status: u16, what: &str) -> Result<()> {
    if status != 201 {
        bail!("the {what} push was answered {status}, expected 201 Created");
    }
    Ok(())
}

fn endpoint_of(subscription: &str) -> Result<String> {
    let value: Value = serde_json::from_str(subscription)?;
    value["endpoint"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no endpoint in the subscription {subscription}"))
}

/// `url` with its scheme, host and port replaced by `origin`'s.
fn with_origin(url: &str, origin: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("URL {url:?}"))?;
    let mut moved = reqwest::Url::parse(origin).with_context(|| format!("origin {origin:?}"))?;
    moved.set_path(parsed.path());
    moved.set_query(parsed.query());
    Ok(moved.to_string())
}

/// A message no other case or run sends: names the case, carries a nonce and a
/// non-ASCII character (the text crosses UTF-8 encryption and decoding).
fn unique_text(part: &str, case: &str) -> String {
    format!("{part} {case} {} — é", nonce())
}

fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n}", std::process::id())
}

/// Waits until the server at `endpoint` counts `count` connected devices
/// (`GET /status/`'s `clients`).
pub(crate) fn wait_for_clients(endpoint: SocketAddr, count: u64) -> Result<()> {
    let deadline = Instant::now() + CONNECTION_TIMEOUT;
    loop {
        let now = clients(endpoint)?;
        if now == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the server on {endpoint} counts {now} connected devices after \
                 {CONNECTION_TIMEOUT:?}, expected {count}"
            );
        }
        thread::sleep(POLL);
    }
}

/// `clients` of `GET /status/`.
fn clients(endpoint: SocketAddr) -> Result<u64> {
    let mut stream = TcpStream::connect_timeout(&endpoint, Duration::from_secs(5))
        .with_context(|| format!("connecting to {endpoint}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /status/ HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("no body in /status/")?;
    let status: Value =
        serde_json::from_str(body).with_context(|| format!("/status/ answered {body:?}"))?;
    status["clients"]
        .as_u64()
        .with_context(|| format!("no clients in /status/ {status}"))
}

#[cfg(test)]
mod tests {
    use super::{Event, compare_events, expect_keys, unique_text, with_origin};

    #[test]
    fn events_must_be_exactly_the_pushes_in_order() {
        let texts = vec!["a".to_owned(), "b".to_owned()];
        let push = |t: &str| Event::Push(Some(t.to_owned()));
        assert!(compare_events(&[push("a"), push("b")], &texts).is_ok());
        let err = compare_events(&[push("b"), push("a")], &texts).unwrap_err();
        assert!(err.contains("expected exactly"), "{err}");
        assert!(compare_events(&[push("a"), push("b"), push("b")], &texts).is_err());
        assert!(compare_events(&[push("a")], &texts).is_err());
        let err =
            compare_events(&[push("a"), push("b"), Event::SubscriptionChange], &texts).unwrap_err();
        assert!(err.starts_with("pushsubscriptionchange fired"), "{err}");
    }

    #[test]
    fn a_url_moves_to_another_origin_keeping_its_path() {
        assert_eq!(
            with_origin("http://localhost:1/wpush/v2/abc", "http://127.0.0.1:2").unwrap(),
            "http://127.0.0.1:2/wpush/v2/abc"
        );
    }

    #[test]
    fn a_subscription_needs_both_keys() {
        let p256dh = format!("B{}", "A".repeat(86));
        let auth = "A".repeat(22);
        let good = format!(r#"{{"endpoint":"e","keys":{{"p256dh":"{p256dh}","auth":"{auth}"}}}}"#);
        expect_keys(&good).unwrap();
        let err = expect_keys(r#"{"endpoint":"e","keys":{}}"#).unwrap_err();
        assert!(err.to_string().contains("use_webpush"), "{err}");
        let short = format!(r#"{{"endpoint":"e","keys":{{"p256dh":"{p256dh}","auth":"AAAA"}}}}"#);
        assert!(expect_keys(&short).is_err());
    }

    #[test]
    fn texts_are_unique() {
        assert_ne!(unique_text("m", "live"), unique_text("m", "live"));
    }
}
