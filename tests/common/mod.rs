//! Black-box test harness: starts the real `simplepush` binary on ephemeral ports and
//! talks to it over real sockets (a websocket device and a plain HTTP app server).
//!
//! Every test starts its own server, so tests run in parallel; the child process is
//! killed when the [`Server`] is dropped, also when the test fails.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod webpush;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame, a reply or the server's startup line.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running `simplepush` child process and the addresses it bound.
pub struct Server {
    child: Child,
    /// The websocket listener.
    pub ws: SocketAddr,
    /// The endpoint (app server) listener.
    pub endpoint: SocketAddr,
    /// The operator listener (metrics, dashboard, detailed health).
    pub admin: SocketAddr,
    /// The router listener of a cluster node (memcache backend); `None` otherwise.
    pub router: Option<SocketAddr>,
    log: PathBuf,
    dir: TempDir,
}

/// Builds the config file and the command line of a [`Server`].
pub struct Builder {
    sections: Vec<(String, Vec<(String, String)>)>,
    args: Vec<String>,
    open_files: Option<u64>,
    envs: Vec<(String, String)>,
}

/// Environment variables the server reads settings from; the harness clears them so that
/// a developer's shell cannot change a test (set them with [`Builder::env`]).
const SETTING_ENVS: [&str; 4] = [
    "SIMPLEPUSH_TOKEN_KEYS",
    "SIMPLEPUSH_TOKEN_KEYS_FILE",
    "SIMPLEPUSH_ROUTER_SECRET",
    "SIMPLEPUSH_ROUTER_SECRET_FILE",
];

impl Builder {
    /// Sets `key = value` in `[section]`; `value` is a TOML literal (`"\"1s\""`, `"3"`).
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Self {
        let entries = match self.sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, entries)) => entries,
            None => {
                self.sections.push((section.to_owned(), Vec::new()));
                &mut self.sections.last_mut().unwrap().1
            }
        };
        entries.retain(|(k, _)| k != key);
        entries.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Leaves `key` out of `[section]`, so the server uses its built-in default (undoes a
    /// setting of [`Server::builder`]).
    pub fn unset(mut self, section: &str, key: &str) -> Self {
        if let Some((_, entries)) = self.sections.iter_mut().find(|(s, _)| s == section) {
            entries.retain(|(k, _)| k != key);
        }
        self
    }

    /// Sets a `[protocol]` key to a TOML literal.
    pub fn protocol(self, key: &str, value: &str) -> Self {
        self.set("protocol", key, value)
    }

    /// Gives a memcache node what it needs to start: a fresh `[router] secret` and a
    /// fresh `[server] token_keys` (a node refuses to start without either).
    pub fn cluster_secrets(self) -> Self {
        self.set("router", "secret", &format!("\"{}\"", hex_id()))
            .set("server", "token_keys", &format!("[\"{}\"]", token_key()))
    }

    /// Runs the server with this config and expects it to refuse to start: answers its
    /// exit status and what it wrote to stderr. Panics if it prints its listening line.
    pub async fn start_failure(self) -> (ExitStatus, String) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("test-config.toml");
        std::fs::write(&config, self.toml()).unwrap();
        let args = self.args.clone();
        let output = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_simplepush"))
                .arg("--config")
                .arg(&config)
                .args(["--ws-addr", "127.0.0.1:0", "--endpoint-addr", "127.0.0.1:0"])
                .args(&args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + WAIT;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let output = child.wait_with_output().unwrap();
                    panic!(
                        "the server did not exit: it started ({})",
                        String::from_utf8_lossy(&output.stdout)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            !stdout.contains("listening"),
            "the server started: {stdout}"
        );
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Starts the server with this open-file limit (soft and hard, so it cannot raise
    /// it): how a box with a low `ulimit -n` runs it.
    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Sets an environment variable of the server process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    fn toml(&self) -> String {
        let mut text = String::new();
        for (section, entries) in &self.sections {
            text.push_str(&format!("[{section}]\n"));
            for (key, value) in entries {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    }

    /// Writes the config into a fresh directory, starts the binary there and waits for
    /// its `simplepush listening ...` line.
    pub async fn start(self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("test-config.toml");
        std::fs::write(&config, self.toml()).unwrap();
        let log = dir.path().join("server.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_simplepush"));
        for name in SETTING_ENVS {
            command.env_remove(name);
        }
        command
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&config)
            .args(["--ws-addr", "127.0.0.1:0", "--endpoint-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(&self.args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(limit) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec and only calls setrlimit,
            // which is async-signal-safe.
            unsafe {
                command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<Option<String>>();
        // A plain thread: the pipe is blocking. It keeps draining stdout afterwards so
        // the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            for _ in lines {}
        });
        let mut server = Server {
            child,
            ws: SocketAddr::from(([0, 0, 0, 0], 0)),
            endpoint: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            router: None,
            log,
            dir,
        };
        let line = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => panic!(
                "server exited before its listening line:\n{}",
                server.log_text()
            ),
            Err(_) => panic!("no listening line within 20 s:\n{}", server.log_text()),
        };
        let listening = parse_listening_line(&line);
        let need = |name: &str| {
            listening.get(name).copied().unwrap_or_else(|| {
                panic!(
                    "no {name}= in the startup line {line:?}:\n{}",
                    server.log_text()
                )
            })
        };
        let (ws, endpoint, admin) = (need("ws"), need("endpoint"), need("admin"));
        server.ws = ws;
        server.endpoint = endpoint;
        server.admin = admin;
        server.router = listening.get("router").copied();
        server
    }
}

/// Parses `simplepush listening ws=ADDR endpoint=ADDR admin=ADDR` (a cluster node adds
/// `router=ADDR`) into its named addresses.
fn parse_listening_line(line: &str) -> std::collections::HashMap<String, SocketAddr> {
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        words.get(..2),
        Some(&["simplepush", "listening"][..]),
        "startup line {line:?}"
    );
    words[2..]
        .iter()
        .map(|word| {
            let (name, addr) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("no NAME=ADDR: {word:?} in {line:?}"));
            let addr = addr
                .parse()
                .unwrap_or_else(|e| panic!("{word:?} in {line:?}: {e}"));
            (name.to_owned(), addr)
        })
        .collect()
}

impl Server {
    /// A builder whose config turns the ping rate limit off (tests use pings as a
    /// "nothing else was sent before this" barrier); everything else is the default.
    ///
    /// The store is the memory backend unless `SIMPLEPUSH_TEST_STORE` names another
    /// (`sqlite`, `rocksdb`: in the server's fresh directory; `memcache`: the servers in
    /// `SIMPLEPUSH_TEST_MEMCACHED`, default `127.0.0.1:11211`), so the whole suite can run
    /// against every backend compiled in.
    pub fn builder() -> Builder {
        let mut builder = Builder {
            sections: Vec::new(),
            args: Vec::new(),
            open_files: None,
            envs: Vec::new(),
        }
        .protocol("min_ping_interval", "\"0\"")
        // Cluster nodes bind a router listener too; never a fixed port in tests.
        .set("router", "addr", "\"127.0.0.1:0\"");
        if let Ok(backend) = std::env::var("SIMPLEPUSH_TEST_STORE") {
            builder = builder.set("store", "backend", &format!("\"{backend}\""));
            if backend == "memcache" {
                let servers = std::env::var("SIMPLEPUSH_TEST_MEMCACHED")
                    .unwrap_or_else(|_| "127.0.0.1:11211".to_owned());
                let list: Vec<String> = servers.split(',').map(|s| format!("\"{s}\"")).collect();
                builder = builder.set("store", "servers", &format!("[{}]", list.join(", ")));
                builder = builder.cluster_secrets();
            }
        }
        builder
    }

    /// A server with the default settings (and no ping rate limit).
    pub async fn start() -> Server {
        Self::builder().start().await
    }

    /// The websocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.ws)
    }

    /// A URL on the endpoint listener.
    pub fn endpoint_url(&self, path: &str) -> String {
        format!("http://{}{}", self.endpoint, path)
    }

    /// A URL on the operator listener (metrics, dashboard, detailed health).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// A URL on the websocket listener (health pages).
    pub fn ws_http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.ws, path)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connects a device without offering a subprotocol.
    pub async fn connect(&self) -> Device {
        Device::connect(&self.ws_url(), None).await
    }

    /// Connects a device that offers `protocol` in `Sec-WebSocket-Protocol`.
    pub async fn connect_offering(&self, protocol: &str) -> Device {
        Device::connect(&self.ws_url(), Some(protocol)).await
    }

    /// Connects and says hello with an empty uaid; returns the device and its uaid.
    pub async fn device(&self) -> (Device, String) {
        let mut device = self.connect().await;
        let uaid = device.hello("").await;
        (device, uaid)
    }

    /// `GET /status/` on the endpoint listener, as JSON.
    pub async fn status(&self) -> Value {
        let reply = http("GET", &self.endpoint_url("/status/"), None, None).await;
        assert_eq!(reply.status, 200, "/status/: {}", reply.body);
        reply.json()
    }

    /// `GET /metrics` (Prometheus text) on the operator listener, asserting it answered
    /// 200.
    pub async fn metrics_text(&self) -> String {
        let reply = http("GET", &self.admin_url("/metrics"), None, None).await;
        assert_eq!(reply.status, 200, "/metrics: {}", reply.body);
        reply.body
    }

    /// Waits until `/status/` reports `clients == n`: the server has noticed connects
    /// and disconnects, so a following PUT sees the device as online or offline.
    pub async fn wait_for_clients(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if status["clients"].as_u64() == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clients never became {n}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM to the server.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// The server's process id (to read `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL (no graceful shutdown) and waits until it is gone:
    /// its sockets are closed by the kernel when this returns.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// A URL on the router listener of a cluster node.
    pub fn router_url(&self, path: &str) -> String {
        let router = self
            .router
            .unwrap_or_else(|| panic!("not a cluster node: no router= in its startup line"));
        format!("http://{router}{path}")
    }

    /// Waits for the server to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Turns a pushEndpoint into a URL this test can reach (`localhost` may resolve to
    /// `::1` first while the server listens on 127.0.0.1 only).
    pub fn reachable(&self, push_endpoint: &str) -> String {
        push_endpoint.replacen("http://localhost:", "http://127.0.0.1:", 1)
    }

    /// `PUT` the form `body` (no Content-Type) to a pushEndpoint.
    pub async fn put(&self, push_endpoint: &str, body: &str) -> Reply {
        http("PUT", &self.reachable(push_endpoint), None, Some(body)).await
    }

    /// `PUT version=N` to a pushEndpoint and asserts the status (200 live, 202 stored).
    pub async fn put_version(&self, push_endpoint: &str, version: u64, status: u16) {
        let reply = self.put(push_endpoint, &format!("version={version}")).await;
        assert_eq!(
            reply.status, status,
            "PUT version={version}: {}",
            reply.body
        );
        assert_eq!(reply.json(), json!({}), "PUT success body");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log_text());
        }
    }
}

/// An HTTP reply.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Asserts a JSON error body `{"status":N,"error":..,"reason":..}` with status `N`.
    pub fn assert_error(&self, status: u16, errors: &[&str]) {
        assert_eq!(self.status, status, "status; body {}", self.body);
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "error Content-Type {content_type:?}"
        );
        let body = self.json();
        assert_eq!(body["status"], json!(status), "body {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            errors.contains(&error),
            "error {error:?} not one of {errors:?}"
        );
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "reason missing in {body}");
    }
}

/// Sends one HTTP request (no proxy, no redirects) and reads the whole reply.
pub async fn http(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let headers: Vec<(&str, &str)> = content_type
        .map(|c| ("content-type", c))
        .into_iter()
        .collect();
    http_with(method, url, &headers, body).await
}

/// Sends one HTTP request with these headers (no proxy, no redirects) and reads the
/// whole reply.
pub async fn http_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// The headers that sign a router request as README's "Running a cluster" describes:
/// HMAC-SHA256 keyed by the secret over method, path, timestamp, nonce and body.
pub fn router_signature(
    secret: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    body: &str,
) -> Vec<(String, String)> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let nonce = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{method}\n{path}\n{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body.as_bytes());
    let mac = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, &message).as_ref());
    vec![
        (
            "authorization".to_owned(),
            format!("SimplepushRouter {mac}"),
        ),
        ("x-simplepush-timestamp".to_owned(), timestamp.to_string()),
        ("x-simplepush-nonce".to_owned(), nonce),
    ]
}

/// The value of the series `simplepush_{name}` with `label` (any backend) in `metrics`.
pub fn metric(metrics: &str, name: &str, label: &str) -> Option<u64> {
    let prefix = format!("simplepush_{name}{{");
    metrics
        .lines()
        .find(|line| line.starts_with(&prefix) && line.contains(label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

pub use simplepush_store::unix_now;

/// A fresh channelID (36 chars, lower case, dashed).
pub fn chid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh token key, as `simplepush genkey` prints them (base64url of 32 random bytes).
pub fn token_key() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh uaid-shaped id (32 lower-case hex).
pub fn hex_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Asserts that `value` is an object with exactly these keys.
pub fn assert_keys(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    let mut got: Vec<&str> = object.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "keys of {value}");
}

/// Asserts a websocket error frame: status, `error`, a non-empty `reason`, and the
/// echoed fields.
pub fn assert_error_frame(frame: &Value, status: u16, error: &str, echoed: &[(&str, Value)]) {
    assert_eq!(frame["status"], json!(status), "status of {frame}");
    assert_eq!(frame["error"], json!(error), "error of {frame}");
    let reason = frame["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "reason missing in {frame}");
    for (key, value) in echoed {
        assert_eq!(&frame[*key], value, "echoed {key} in {frame}");
    }
}

/// What ended a websocket.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// A close frame without a code.
    CloseWithoutCode,
    /// The connection ended without a close frame.
    Dropped,
}

/// A device: one websocket client.
pub struct Device {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `Sec-WebSocket-Protocol` the server selected, if any.
    pub protocol: Option<String>,
}

impl Device {
    async fn connect(url: &str, protocol: Option<&str>) -> Device {
        let mut request = url.into_client_request().unwrap();
        if let Some(protocol) = protocol {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(protocol).unwrap(),
            );
        }
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect failed");
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Device { ws, protocol }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .unwrap();
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next data frame, or what ended the socket; `None` when nothing came in `wait`.
    async fn next_frame(&mut self, wait: Duration) -> Option<Result<String, End>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            return Some(match next {
                Some(Ok(Message::Text(text))) => Ok(text.as_str().to_owned()),
                Some(Ok(Message::Binary(bytes))) => {
                    panic!("server sent a binary frame: {bytes:?}")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    Err(End::Close(u16::from(code), reason.as_str().to_owned()))
                }
                Some(Ok(Message::Close(None))) => Err(End::CloseWithoutCode),
                Some(Err(_)) | None => Err(End::Dropped),
            });
        }
    }

    /// Whether a websocket Ping arrives within `wait` (panics on a data frame or an end).
    /// Reading is also what makes the client answer it with a Pong.
    pub async fn recv_ping_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(Some(Ok(Message::Ping(_)))) => return true,
                Ok(Some(Ok(Message::Pong(_) | Message::Frame(_)))) => continue,
                Ok(other) => panic!("expected a websocket Ping, got {other:?}"),
            }
        }
    }

    /// The next text frame as it was sent.
    pub async fn recv_text(&mut self) -> String {
        match self.next_frame(WAIT).await {
            Some(Ok(text)) => text,
            Some(Err(end)) => panic!("socket ended instead of a frame: {end:?}"),
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next text frame, parsed as JSON.
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
    }

    /// The next frame if one arrives within `wait` (panics if the socket ends).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        match self.next_frame(wait).await {
            Some(Ok(text)) => Some(serde_json::from_str(&text).unwrap()),
            Some(Err(end)) => panic!("socket ended instead of a frame: {end:?}"),
            None => None,
        }
    }

    /// Expects the socket to end next (no data frame first), within `wait`.
    pub async fn recv_end_within(&mut self, wait: Duration) -> End {
        match self.next_frame(wait).await {
            Some(Ok(text)) => panic!("expected the socket to close, got frame {text}"),
            Some(Err(end)) => end,
            None => panic!("socket still open after {wait:?}"),
        }
    }

    /// Expects a close frame next and returns its code.
    pub async fn recv_close(&mut self) -> u16 {
        match self.recv_end_within(WAIT).await {
            End::Close(code, _) => code,
            end => panic!("expected a close frame with a code, got {end:?}"),
        }
    }

    /// Sends a ping `{}` and expects exactly `{}` as the very next frame: proves that
    /// nothing else was sent before it.
    pub async fn ping(&mut self) {
        self.send_text("{}").await;
        let reply = self.recv_text().await;
        assert_eq!(reply, "{}", "expected the ping reply, got another frame");
    }

    /// Sends a hello with this uaid (and no channelIDs); asserts 200, returns the uaid.
    pub async fn hello(&mut self, uaid: &str) -> String {
        let reply = self
            .hello_with(json!({"messageType": "hello", "uaid": uaid}))
            .await;
        assert_eq!(reply["status"], json!(200), "hello reply {reply}");
        reply["uaid"].as_str().unwrap().to_owned()
    }

    /// Sends a hello frame and returns the reply.
    pub async fn hello_with(&mut self, hello: Value) -> Value {
        self.send(hello).await;
        let reply = self.recv().await;
        assert_eq!(reply["messageType"], json!("hello"), "hello reply {reply}");
        reply
    }

    /// Registers a channel; asserts 200 and returns the pushEndpoint.
    pub async fn register(&mut self, channel_id: &str) -> String {
        self.send(json!({"messageType": "register", "channelID": channel_id}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply["messageType"], json!("register"), "{reply}");
        assert_eq!(reply["status"], json!(200), "register reply {reply}");
        assert_eq!(reply["channelID"], json!(channel_id), "{reply}");
        reply["pushEndpoint"].as_str().unwrap().to_owned()
    }

    /// Unregisters a channel; asserts the 200 reply.
    pub async fn unregister(&mut self, channel_id: &str) {
        self.send(json!({"messageType": "unregister", "channelID": channel_id}))
            .await;
        let reply = self.recv().await;
        assert_eq!(
            reply,
            json!({"messageType": "unregister", "status": 200, "channelID": channel_id})
        );
    }

    /// Acks one update (no reply is expected).
    pub async fn ack(&mut self, channel_id: &str, version: u64) {
        self.send(json!({
            "messageType": "ack",
            "updates": [{"channelID": channel_id, "version": version}],
        }))
        .await;
    }

    /// Expects an error frame (docs/protocol.md) with `status`, `error` and the `echoed`
    /// fields next, then the server's close with 1000.
    pub async fn expect_refusal(&mut self, status: u16, error: &str, echoed: &[(&str, Value)]) {
        let frame = self.recv().await;
        assert_error_frame(&frame, status, error, echoed);
        assert_eq!(self.recv_close().await, 1000, "close after {frame}");
    }

    /// Expects a notification frame next and returns it.
    pub async fn recv_notification(&mut self) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["messageType"], json!("notification"), "{frame}");
        frame
    }

    /// Closes the socket cleanly and waits for the server's close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// The `updates` of a notification as (channelID, version, data) sorted by channelID.
pub fn updates(frame: &Value) -> Vec<(String, u64, Option<String>)> {
    let mut out: Vec<_> = frame["updates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| {
            (
                u["channelID"].as_str().unwrap().to_owned(),
                u["version"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("version is not a JSON number: {u}")),
                u.get("data").map(|d| d.as_str().unwrap().to_owned()),
            )
        })
        .collect();
    out.sort();
    out
}

/// The `expired` channelIDs of a notification, sorted (empty when absent).
pub fn expired(frame: &Value) -> Vec<String> {
    let mut out: Vec<String> = frame["expired"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// A private memcached on an ephemeral port, stopped when dropped (also on failure).
#[cfg(feature = "memcache")]
pub struct Memcached {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

#[cfg(feature = "memcache")]
impl Memcached {
    /// Starts memcached and waits until it accepts connections.
    pub async fn start() -> Memcached {
        Memcached::start_with_memory(16).await
    }

    /// [`Memcached::start`] with `megabytes` of item memory: an item growing towards the
    /// 1 MiB item size takes a 1 MiB slab page in each size class it passes through, and
    /// memcached evicts it when it runs out of pages.
    pub async fn start_with_memory(megabytes: u32) -> Memcached {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new("memcached")
            .args(["-u", "root", "-l", "127.0.0.1", "-U", "0", "-p"])
            .arg(port.to_string())
            .arg("-m")
            .arg(megabytes.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let memcached = Memcached { child, port };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "memcached did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        memcached
    }

    /// A server builder for the memcache backend on this memcached, with short store
    /// timeouts so that a stopped memcached is noticed quickly.
    pub fn server(&self) -> Builder {
        Server::builder()
            .set(
                "store",
                "servers",
                &format!("[\"127.0.0.1:{}\"]", self.port),
            )
            .set("store", "timeout", "\"200ms\"")
            .cluster_secrets()
            .arg("--store")
            .arg("memcache")
    }

    /// Stops memcached: the store becomes unavailable.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "memcache")]
impl Drop for Memcached {
    fn drop(&mut self) {
        self.stop();
    }
}
