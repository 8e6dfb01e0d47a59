//! End-to-end tests of `simplepush client`, `simplepush push` and `simplepush genkey`: the
//! real binary runs as a device and as an app server, in both dialects, against a live
//! server started by the harness.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::webpush::{Browser, b64};
use common::{Server, WAIT, chid, hex_id, metric, token_key, unix_now};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

const BIN: &str = env!("CARGO_BIN_EXE_simplepush");

/// How long a reconnection may take: the first retries wait up to 1, 2 and 4 s.
const RECONNECT_WAIT: Duration = Duration::from_secs(20);

/// A running `simplepush client`, killed when dropped; its stdout read line by line.
struct Client {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Lines read but not yet asked for (see [`Client::expect`]).
    backlog: VecDeque<String>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Client {
    /// Starts `simplepush client --server <ws> --state <state> <args>`.
    fn start(server: &str, state: &Path, args: &[&str]) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("client.log");
        let mut child = Command::new(BIN)
            .arg("client")
            .args(["--server", server])
            .arg("--state")
            .arg(state)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        // A plain thread: the pipe is blocking.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Client {
            child,
            lines,
            backlog: VecDeque::new(),
            log,
            _dir: dir,
        }
    }

    /// The words of the first line starting with `kind` (a word), waiting up to `wait`
    /// for it. Other lines are kept for later calls, so the order in which the server's
    /// replies and flushed notifications arrive does not matter.
    async fn expect_within(&mut self, kind: &str, wait: Duration) -> Vec<String> {
        let matches = |line: &str| line.split(' ').next() == Some(kind);
        if let Some(i) = self.backlog.iter().position(|l| matches(l)) {
            let line = self.backlog.remove(i).unwrap();
            return words(&line);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if matches(&line) => return words(&line),
                Ok(Some(line)) => self.backlog.push_back(line),
                Ok(None) => panic!(
                    "client stdout ended before a `{kind}` line; read {:?}",
                    self.backlog
                ),
                Err(_) => panic!("no `{kind}` line within {wait:?}; read {:?}", self.backlog),
            }
        }
    }

    /// [`Client::expect_within`] with the usual wait.
    async fn expect(&mut self, kind: &str) -> Vec<String> {
        self.expect_within(kind, WAIT).await
    }

    /// The first line starting with `kind`, whole (see [`Client::expect_within`]).
    async fn expect_line_within(&mut self, kind: &str, wait: Duration) -> String {
        // Lines are split on single spaces, so joining them gives the line back exactly.
        self.expect_within(kind, wait).await.join(" ")
    }

    /// [`Client::expect_line_within`] with the usual wait.
    async fn expect_line(&mut self, kind: &str) -> String {
        self.expect_line_within(kind, WAIT).await
    }

    /// The `uaid` line.
    async fn uaid(&mut self) -> String {
        let line = self.expect("uaid").await;
        assert_eq!(line.len(), 2, "{line:?}");
        line[1].clone()
    }

    /// The next `endpoint` line: (channelID, pushEndpoint).
    async fn endpoint(&mut self) -> (String, String) {
        let line = self.expect("endpoint").await;
        assert_eq!(line.len(), 3, "{line:?}");
        (line[1].clone(), line[2].clone())
    }

    /// Asserts that every line read so far was asked for.
    fn assert_nothing_else(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.backlog.push_back(line);
        }
        assert!(
            self.backlog.is_empty(),
            "unexpected lines {:?}",
            self.backlog
        );
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the client to exit.
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "client did not exit in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the client logged on stderr.
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- client log ----\n{}", self.log_text());
        }
    }
}

fn words(line: &str) -> Vec<String> {
    line.split(' ').map(str::to_owned).collect()
}

/// Runs `simplepush <args>` to completion: (exit status, stdout, stderr).
async fn simplepush(args: &[&str]) -> (ExitStatus, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        output.status,
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Runs `simplepush push <endpoint> <args>`; returns its exit status and its one line.
async fn push(endpoint: &str, args: &[&str]) -> (ExitStatus, String) {
    let mut all = vec!["push", endpoint];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = simplepush(&all).await;
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout {stdout:?}, stderr {stderr:?}"
    );
    (status, stdout.trim_end().to_owned())
}

/// Runs `simplepush push` and asserts its outcome line and a zero exit.
async fn push_ok(endpoint: &str, args: &[&str], outcome: &str) {
    let (status, line) = push(endpoint, args).await;
    assert_eq!(line, outcome, "push {args:?}");
    assert!(status.success(), "push {args:?} exited with {status}");
}

/// The state file's content.
fn state_of(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A TCP proxy in front of a server's listener that the test can cut, and point at
/// another server (a restarted one, on new ports).
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    target: Arc<Mutex<SocketAddr>>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let target = Arc::new(Mutex::new(target));
        let links = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (up, links, target) = (up.clone(), links.clone(), target.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        // Down: the connection is closed at once.
                        continue;
                    }
                    let target = *target.lock().unwrap();
                    let link = tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            }
        })
        .abort_handle();
        Proxy {
            addr,
            up,
            target,
            links,
            accept,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// New connections go to `target`.
    fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test]
async fn client_prints_pushed_notifications_and_acks_them() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device.json");
    let mut client = Client::start(&server.ws_url(), &state, &["--channels", "2"]);
    let uaid = client.uaid().await;
    let (first, first_endpoint) = client.endpoint().await;
    let (second, second_endpoint) = client.endpoint().await;
    assert_ne!(first, second);
    assert!(first_endpoint.contains("/update/"), "{first_endpoint}");
    assert_eq!(
        state_of(&state),
        json!({"uaid": uaid, "channelIDs": [first, second]})
    );

    push_ok(
        &first_endpoint,
        &["--version", "7", "--data", "hello world"],
        "200 delivered",
    )
    .await;
    assert_eq!(
        client.expect("notification").await,
        ["notification", &first, "7", "hello", "world"]
    );
    // Without --version the server uses the time.
    let before = unix_now();
    push_ok(&second_endpoint, &[], "200 delivered").await;
    let line = client.expect("notification").await;
    assert_eq!(line.len(), 3, "{line:?}");
    assert_eq!(line[1], second);
    let version: u64 = line[2].parse().unwrap();
    assert!((before..=unix_now()).contains(&version), "{line:?}");
    client.assert_nothing_else();

    // SIGTERM: a clean exit, after the acks were sent.
    client.terminate();
    let status = client.wait_exit().await;
    assert!(status.success(), "client exited with {status}");
    server.wait_for_clients(0).await;
    // Nothing is pending any more: the hello is followed by nothing but the ping reply.
    let mut device = server.connect().await;
    let reply = device
        .hello_with(json!({"messageType": "hello", "uaid": uaid, "channelIDs": [first, second]}))
        .await;
    assert_eq!(reply["uaid"], json!(uaid), "{reply}");
    device.ping().await;
}

#[tokio::test]
async fn restarted_client_resumes_the_device_and_gets_what_was_pushed_meanwhile() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device.json");
    let mut client = Client::start(&server.ws_url(), &state, &[]);
    let uaid = client.uaid().await;
    let (channel, endpoint) = client.endpoint().await;
    push_ok(&endpoint, &["--version", "5"], "200 delivered").await;
    assert_eq!(
        client.expect("notification").await,
        ["notification", &channel, "5"]
    );
    client.terminate();
    assert!(client.wait_exit().await.success());
    server.wait_for_clients(0).await;

    push_ok(
        &endpoint,
        &["--version", "6", "--data", "while you were away"],
        "202 stored",
    )
    .await;

    let mut client = Client::start(&server.ws_url(), &state, &[]);
    assert_eq!(client.uaid().await, uaid);
    let (again, _) = client.endpoint().await;
    assert_eq!(again, channel);
    assert_eq!(
        client.expect("notification").await,
        [
            "notification",
            &channel,
            "6",
            "while",
            "you",
            "were",
            "away"
        ]
    );
    client.assert_nothing_else();
    assert_eq!(
        state_of(&state),
        json!({"uaid": uaid, "channelIDs": [channel]})
    );
}

#[tokio::test]
async fn client_reconnects_when_the_connection_drops() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.ws).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device.json");
    let mut client = Client::start(&proxy.ws_url(), &state, &[]);
    let uaid = client.uaid().await;
    let (channel, endpoint) = client.endpoint().await;
    server.wait_for_clients(1).await;

    proxy.cut();
    server.wait_for_clients(0).await;
    push_ok(&endpoint, &["--version", "11", "--data", "x"], "202 stored").await;
    proxy.restore();

    assert_eq!(
        client.expect_within("notification", RECONNECT_WAIT).await,
        ["notification", &channel, "11", "x"]
    );
    assert_eq!(
        client.uaid().await,
        uaid,
        "the same device after reconnecting"
    );
    assert_eq!(client.endpoint().await.0, channel);
    push_ok(&endpoint, &["--version", "12"], "200 delivered").await;
    assert_eq!(
        client.expect("notification").await,
        ["notification", &channel, "12"]
    );
    assert!(
        client.log_text().contains("reconnecting"),
        "{}",
        client.log_text()
    );
}

#[tokio::test]
async fn client_registers_again_when_the_server_forgot_its_uaid() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device.json");
    let (stale, channel) = (hex_id(), chid());
    std::fs::write(
        &state,
        json!({"uaid": stale, "channelIDs": [channel]}).to_string(),
    )
    .unwrap();

    let mut client = Client::start(&server.ws_url(), &state, &[]);
    let uaid = client.uaid().await;
    assert_ne!(uaid, stale, "the server does not know the stale uaid");
    let (registered, endpoint) = client.endpoint().await;
    assert_eq!(registered, channel, "the channel is kept");
    assert_eq!(
        state_of(&state),
        json!({"uaid": uaid, "channelIDs": [channel]})
    );
    push_ok(&endpoint, &["--version", "3"], "200 delivered").await;
    assert_eq!(
        client.expect("notification").await,
        ["notification", &channel, "3"]
    );
}

#[tokio::test]
async fn fewer_channels_unregisters_the_extra_ones() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device.json");
    let mut client = Client::start(&server.ws_url(), &state, &["--channels", "2"]);
    let uaid = client.uaid().await;
    let (first, _) = client.endpoint().await;
    let (second, second_endpoint) = client.endpoint().await;
    client.terminate();
    assert!(client.wait_exit().await.success());
    server.wait_for_clients(0).await;

    let mut client = Client::start(&server.ws_url(), &state, &["--channels", "1"]);
    assert_eq!(client.uaid().await, uaid);
    assert_eq!(client.endpoint().await.0, first);
    assert_eq!(
        state_of(&state),
        json!({"uaid": uaid, "channelIDs": [first]})
    );
    // The unregister follows the register; once the channel's endpoint answers 410 it
    // went through.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, line) = push(&second_endpoint, &["--version", "1"]).await;
        if line.starts_with("410 ") {
            assert!(!status.success());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel {second} still live: {line}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_clients_sharing_a_state_file_make_the_older_one_exit() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device.json");
    let mut older = Client::start(&server.ws_url(), &state, &[]);
    let uaid = older.uaid().await;
    older.endpoint().await;
    let mut newer = Client::start(&server.ws_url(), &state, &[]);
    assert_eq!(newer.uaid().await, uaid);
    let status = older.wait_exit().await;
    assert!(!status.success(), "older client exited with {status}");
    assert!(
        older.log_text().contains("another client"),
        "{}",
        older.log_text()
    );
}

#[tokio::test]
async fn push_reports_errors_with_a_non_zero_exit() {
    let server = Server::start().await;
    let (mut device, _uaid) = server.device().await;
    let channel = chid();
    let endpoint = device.register(&channel).await;

    // A forged token: one character of it changed.
    let (base, token) = endpoint.split_once("/update/").unwrap();
    let mut forged: Vec<char> = token.chars().collect();
    let middle = forged.len() / 2;
    forged[middle] = if forged[middle] == 'A' { 'B' } else { 'A' };
    let forged = format!("{base}/update/{}", forged.iter().collect::<String>());
    let (status, line) = push(&forged, &["--version", "1"]).await;
    assert!(line.starts_with("404 Not Found: "), "{line}");
    assert_eq!(status.code(), Some(1));

    let (status, line) = push(&endpoint, &["--data", &"x".repeat(5000)]).await;
    assert!(line.starts_with("413 "), "{line}");
    assert!(!status.success());

    device.unregister(&channel).await;
    let (status, line) = push(&endpoint, &["--version", "2"]).await;
    assert!(line.starts_with("410 Gone: "), "{line}");
    assert!(!status.success());

    // Versions the server would refuse are refused by the command line already.
    let (status, stdout, stderr) =
        simplepush(&["push", &endpoint, "--version", "9223372036854775808"]).await;
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("--version"), "{stderr}");

    // Nothing listening: no outcome line, an error on stderr.
    let (status, stdout, stderr) =
        simplepush(&["push", "http://127.0.0.1:1/update/x", "--version", "1"]).await;
    assert!(!status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("PUT"), "{stderr}");
}

#[tokio::test]
async fn help_documents_every_flag_and_version_works() {
    let (status, stdout, _) = simplepush(&["--version"]).await;
    assert!(status.success());
    assert_eq!(
        stdout.trim_end(),
        format!("simplepush {}", env!("CARGO_PKG_VERSION"))
    );
    let (status, client_help, _) = simplepush(&["client", "--help"]).await;
    assert!(status.success());
    for flag in ["--server <URL>", "--channels <N>", "--state <FILE>"] {
        assert!(client_help.contains(flag), "{flag} in {client_help}");
    }
    assert!(client_help.contains("[default: ws://localhost:8080/]"));
    for flag in [
        "--webpush",
        "--vapid-public-key <KEY>",
        "--subscription-out <FILE>",
    ] {
        assert!(client_help.contains(flag), "{flag} in {client_help}");
    }
    let (status, push_help, _) = simplepush(&["push", "--help"]).await;
    assert!(status.success());
    for flag in [
        "[ENDPOINT]",
        "--version <N>",
        "--data <TEXT>",
        "--subscription <FILE>",
        "--vapid-key <FILE>",
        "--subject <URL>",
        "--ttl <SECONDS>",
        "--topic <TOPIC>",
        "--urgency <URGENCY>",
    ] {
        assert!(push_help.contains(flag), "{flag} in {push_help}");
    }
    for value in ["very-low", "low", "normal", "high", "[default: 60]"] {
        assert!(push_help.contains(value), "{value} in {push_help}");
    }
    let (status, genkey_help, _) = simplepush(&["genkey", "--help"]).await;
    assert!(status.success());
    for flag in ["--vapid", "--out <FILE>", "[default: vapid.pem]"] {
        assert!(genkey_help.contains(flag), "{flag} in {genkey_help}");
    }
    // Every flag has a description, on its line or (long help) on the next one.
    for help in [&client_help, &push_help, &genkey_help] {
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(value) = line.trim_start().strip_prefix("- ") {
                // A possible value and its description: `- very-low: On power…`.
                let described = value.split_once(": ").is_some_and(|(_, d)| !d.is_empty());
                assert!(described, "undocumented value: {line:?} in {help}");
                continue;
            }
            let start = line.trim_start();
            let argument = start.starts_with('-')
                || start.starts_with('<')
                || (start.starts_with('[')
                    && !start.starts_with("[default")
                    && !start.starts_with("[possible"));
            if !argument {
                continue;
            }
            let inline = line.trim().split_once("  ").map(|(_, d)| d.trim());
            let indent = line.len() - line.trim_start().len();
            let below = lines.get(i + 1).filter(|next| {
                !next.trim().is_empty() && next.len() - next.trim_start().len() > indent
            });
            assert!(
                inline.is_some_and(|d| !d.is_empty()) || below.is_some(),
                "undocumented: {line:?} in {help}"
            );
        }
    }
}

// ---- WebPush: `genkey --vapid`, `client --webpush`, `push --subscription` ----

/// Runs `simplepush genkey --vapid --out <path>` and returns the public key it printed,
/// checked to be a base64url uncompressed P-256 point.
async fn genkey_vapid(path: &Path) -> String {
    let (status, stdout, stderr) =
        simplepush(&["genkey", "--vapid", "--out", path.to_str().unwrap()]).await;
    assert!(status.success(), "genkey --vapid: {stderr}");
    let key = stdout.trim_end().to_owned();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let point = URL_SAFE_NO_PAD.decode(&key).unwrap();
    assert_eq!((point.len(), point[0]), (65, 4), "{key}");
    key
}

/// Runs `simplepush push --subscription <file> <args>`: (exit status, stdout, stderr).
async fn push_to(subscription: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut all = vec!["push", "--subscription", subscription.to_str().unwrap()];
    all.extend_from_slice(args);
    simplepush(&all).await
}

/// Runs `simplepush push --subscription`, asserts `201 Created` with a `Location` on
/// `/m/` and the `TTL` given, and a zero exit.
async fn push_created(subscription: &Path, args: &[&str], ttl: u64) {
    let (status, stdout, stderr) = push_to(subscription, args).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "push {args:?}: {stdout:?} {stderr}");
    assert_eq!(lines[0], "201 Created", "push {args:?}: {stderr}");
    let location = lines[1].strip_prefix("Location: ").unwrap_or_default();
    assert!(
        location.starts_with("http://") && location.contains("/m/"),
        "{stdout}"
    );
    assert_eq!(lines[2], format!("TTL: {ttl}"));
    assert!(status.success(), "push {args:?} exited with {status}");
}

/// Starts `simplepush client --webpush` writing its subscription to `subscription`.
fn webpush_client(server: &str, state: &Path, subscription: &Path, args: &[&str]) -> Client {
    let mut all = vec![
        "--webpush",
        "--subscription-out",
        subscription.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    Client::start(server, state, &all)
}

/// The lines a WebPush client prints once subscribed: (uaid, channelID, endpoint).
async fn subscribed(client: &mut Client, subscription: &Path) -> (String, String, String) {
    let uaid = client.uaid().await;
    let (channel, endpoint) = client.endpoint().await;
    assert_eq!(
        client.expect("subscription").await,
        ["subscription", subscription.to_str().unwrap()]
    );
    (uaid, channel, endpoint)
}

/// The text of the next `notification` line of `channel`: what follows
/// `notification <channelID> <version> `, or `None` for a notification without data.
async fn notification_text(client: &mut Client, channel: &str) -> Option<String> {
    let line = client.expect_line("notification").await;
    let mut parts = line.splitn(4, ' ');
    assert_eq!(parts.next(), Some("notification"));
    assert_eq!(parts.next(), Some(channel), "{line}");
    let version = parts.next().unwrap_or_default();
    assert!(!version.is_empty(), "{line}");
    parts.next().map(str::to_owned)
}

/// Waits until the server counted `n` WebPush acks with `code`.
async fn wait_for_acks(server: &Server, code: u16, n: u64) {
    let label = format!("code=\"{code}\"");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = server.metrics_text().await;
        let acks = metric(&metrics, "webpush_acks_total", &label);
        if acks == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks with code {code}: {acks:?}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webpush_client_decrypts_exactly_what_push_sends_to_its_subscription() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, subscription) = (dir.path().join("device.json"), dir.path().join("sub.json"));
    let mut client = webpush_client(&server.ws_url(), &state, &subscription, &[]);
    let (uaid, channel, endpoint) = subscribed(&mut client, &subscription).await;
    assert!(endpoint.contains("/wpush/v1/"), "{endpoint}");

    // The subscription is in the shape of a browser's PushSubscription.toJSON().
    let json = state_of(&subscription);
    let keys = &json["keys"];
    assert_eq!(
        json,
        json!({"endpoint": endpoint, "expirationTime": null,
               "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}})
    );
    let p256dh = URL_SAFE_NO_PAD
        .decode(keys["p256dh"].as_str().unwrap())
        .unwrap();
    assert_eq!((p256dh.len(), p256dh[0]), (65, 4));
    let auth = URL_SAFE_NO_PAD
        .decode(keys["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(auth.len(), 16);
    // The state keeps the device and the keys' secret halves.
    let kept = state_of(&state);
    assert_eq!(kept["uaid"], json!(uaid));
    assert_eq!(kept["channelIDs"], json!([channel]));
    assert_eq!(kept["webpush"]["auth"], keys["auth"]);
    assert!(kept["webpush"]["privateKey"].is_string(), "{kept}");

    let text = "hello wörld,  two spaces and a trailing one ";
    push_created(&subscription, &["--data", text], 60).await;
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some(text)
    );
    wait_for_acks(&server, 100, 1).await;

    push_created(
        &subscription,
        &[
            "--data",
            "second",
            "--ttl",
            "120",
            "--topic",
            "news",
            "--urgency",
            "high",
        ],
        120,
    )
    .await;
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some("second")
    );
    // Without --data: a push without a payload.
    push_created(&subscription, &[], 60).await;
    assert_eq!(notification_text(&mut client, &channel).await, None);
    wait_for_acks(&server, 100, 3).await;
    client.assert_nothing_else();
    assert!(
        client.log_text().contains("without data"),
        "{}",
        client.log_text()
    );
}

#[tokio::test]
async fn genkey_vapid_makes_the_key_that_a_restricted_subscription_needs() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours.pem"), dir.path().join("theirs.pem"));
    let key = genkey_vapid(&ours).await;
    let pem = std::fs::read_to_string(&ours).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    // An existing key file is never overwritten.
    let (status, stdout, stderr) =
        simplepush(&["genkey", "--vapid", "--out", ours.to_str().unwrap()]).await;
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&ours).unwrap(), pem);
    let other_key = genkey_vapid(&theirs).await;
    assert_ne!(key, other_key);
    // Plain genkey still prints a token key (32 bytes) and writes nothing.
    let (status, stdout, _) = simplepush(&["genkey"]).await;
    assert!(status.success());
    assert_eq!(
        URL_SAFE_NO_PAD.decode(stdout.trim_end()).unwrap().len(),
        32,
        "{stdout}"
    );

    let (state, subscription) = (dir.path().join("device.json"), dir.path().join("sub.json"));
    let mut client = webpush_client(
        &server.ws_url(),
        &state,
        &subscription,
        &["--vapid-public-key", &key],
    );
    let (_, channel, endpoint) = subscribed(&mut client, &subscription).await;
    assert!(endpoint.contains("/wpush/v2/"), "{endpoint}");

    // Signed with another key: 403, and a non-zero exit with the server's reason.
    let (status, stdout, stderr) = push_to(
        &subscription,
        &["--vapid-key", theirs.to_str().unwrap(), "--data", "forged"],
    )
    .await;
    assert!(stdout.starts_with("403 Forbidden: "), "{stdout}{stderr}");
    assert!(stdout.contains("VAPID"), "{stdout}");
    assert_eq!(status.code(), Some(1));
    // Not signed at all: 401.
    let (status, stdout, _) = push_to(&subscription, &["--data", "unsigned"]).await;
    assert!(stdout.starts_with("401 "), "{stdout}");
    assert_eq!(status.code(), Some(1));

    push_created(
        &subscription,
        &[
            "--vapid-key",
            ours.to_str().unwrap(),
            "--subject",
            "https://example.com/contact",
            "--data",
            "signed by us",
        ],
        60,
    )
    .await;
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some("signed by us")
    );
    push_created(
        &subscription,
        &[
            "--vapid-key",
            ours.to_str().unwrap(),
            "--data",
            "default subject",
        ],
        60,
    )
    .await;
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some("default subject")
    );
    client.assert_nothing_else();
}

#[tokio::test]
async fn push_encrypts_for_a_subscription_a_browser_made() {
    let server = Server::start().await;
    let mut browser = Browser::connect(&server).await;
    let made = browser.subscribe(None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("browser.json");
    // Exactly what toJSON() gives, then the same without expirationTime.
    let keys = json!({"p256dh": b64(&made.p256dh), "auth": b64(&made.auth)});
    for (json, text) in [
        (
            json!({"endpoint": made.endpoint, "expirationTime": null, "keys": keys}),
            "from the command line",
        ),
        (
            json!({"endpoint": made.endpoint, "keys": keys}),
            "without expirationTime",
        ),
    ] {
        std::fs::write(&file, json.to_string()).unwrap();
        push_created(&file, &["--data", text], 60).await;
        let (notification, plaintext) = browser.recv_decrypted().await;
        assert_eq!(
            notification.frame["headers"]["encoding"],
            json!("aes128gcm")
        );
        assert_eq!(notification.channel_id, made.channel_id);
        assert_eq!(String::from_utf8(plaintext).unwrap(), text);
        browser.ack(&notification).await;
    }
    browser.expect_nothing().await;
}

#[tokio::test]
async fn webpush_client_says_when_a_message_does_not_decrypt() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (state, subscription) = (dir.path().join("device.json"), dir.path().join("sub.json"));
    let mut client = webpush_client(&server.ws_url(), &state, &subscription, &[]);
    let (_, channel, _) = subscribed(&mut client, &subscription).await;
    // The right endpoint, but encrypted for someone else's keys.
    let mut stranger = state_of(&subscription);
    let (keys, auth) = ece::generate_keypair_and_auth_secret().unwrap();
    stranger["keys"] = json!({"p256dh": b64(&keys.pub_as_raw().unwrap()), "auth": b64(&auth)});
    let file = dir.path().join("stranger.json");
    std::fs::write(&file, stranger.to_string()).unwrap();
    push_created(&file, &["--data", "not for you"], 60).await;
    let line = client.expect_line("undecryptable").await;
    let words: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(words[1], channel, "{line}");
    assert!(words[3].contains("does not decrypt"), "{line}");
    wait_for_acks(&server, 101, 1).await;
    client.assert_nothing_else();
}

#[tokio::test]
async fn push_input_errors_say_which_and_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let p256dh = b64(&ece::generate_keypair_and_auth_secret()
        .unwrap()
        .0
        .pub_as_raw()
        .unwrap());
    let good = file(
        "good.json",
        &json!({"endpoint": "http://127.0.0.1:1/wpush/v1/x", "expirationTime": null,
                "keys": {"p256dh": p256dh, "auth": b64(&[1; 16])}})
        .to_string(),
    );
    let missing = dir.path().join("missing.json");
    let not_json = file("not.json", "<html>");
    let no_auth = file(
        "no-auth.json",
        &json!({"endpoint": "http://e/", "keys": {"p256dh": p256dh}}).to_string(),
    );
    let bad_point = file(
        "bad-point.json",
        &json!({"endpoint": "http://e/", "keys": {"p256dh": b64(&[4; 65]), "auth": b64(&[1; 16])}})
            .to_string(),
    );
    let https = file(
        "https.json",
        &json!({"endpoint": "https://push.example.com/x", "keys": {"p256dh": p256dh, "auth": b64(&[1; 16])}})
            .to_string(),
    );
    let garbage_key = file("garbage.pem", "not a key\n");
    let missing = missing.to_str().unwrap();
    for (args, says) in [
        (vec!["push", "--subscription", missing], "missing.json"),
        (
            vec!["push", "--subscription", &not_json],
            "not a push subscription JSON",
        ),
        (vec!["push", "--subscription", &no_auth], "`auth`"),
        (vec!["push", "--subscription", &bad_point], "keys.p256dh"),
        (vec!["push", "--subscription", &https], "TLS"),
        (
            vec!["push", "--subscription", &good, "--vapid-key", &garbage_key],
            "garbage.pem is not a P-256 private key",
        ),
        (
            vec!["push", "--subscription", &good, "--data", ""],
            "--data",
        ),
        (
            vec![
                "push",
                "--subscription",
                &good,
                "--vapid-key",
                &garbage_key,
                "--subject",
                "me",
            ],
            "--subject",
        ),
        (
            vec!["push", "--subscription", &good, "--urgency", "asap"],
            "--urgency",
        ),
        (
            vec!["push", "--subscription", &good, "--topic", "a/b"],
            "--topic",
        ),
        (
            vec!["push", "--subscription", &good, "--version", "1"],
            "--version",
        ),
        (
            vec!["push", "http://127.0.0.1:1/update/x", "--ttl", "5"],
            "--ttl",
        ),
        (vec!["push", "--urgency", "high"], "--subscription"),
        (
            vec![
                "push",
                "http://127.0.0.1:1/update/x",
                "--subject",
                "mailto:a@b",
            ],
            "--subject",
        ),
        (vec!["push"], "<ENDPOINT>"),
        (vec!["genkey", "--out", "x.pem"], "--vapid"),
    ] {
        let (status, stdout, stderr) = simplepush(&args).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(
            stderr.contains(says),
            "{args:?} should say {says:?}: {stderr}"
        );
    }
    // Nothing listening: not the user's input, exit 1.
    let (status, stdout, stderr) = simplepush(&["push", "--subscription", &good]).await;
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("POST"), "{stderr}");
    assert!(
        !Path::new("x.pem").exists(),
        "genkey without --vapid wrote a file"
    );
}

/// A server whose websocket and endpoint listeners sit behind proxies, so that a
/// restarted server (on new ports) is reached at the same URLs: the client reconnects to
/// the same ws URL, and the endpoints it was given keep their origin.
struct Restartable {
    ws: Proxy,
    endpoint: Proxy,
    token_key: String,
    store: Vec<String>,
    server: Server,
}

impl Restartable {
    async fn start(store: &[&str]) -> Restartable {
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
        let (ws, endpoint) = (Proxy::start(nowhere).await, Proxy::start(nowhere).await);
        let token_key = token_key();
        let store: Vec<String> = store.iter().map(|s| (*s).to_owned()).collect();
        let server = Self::server(&endpoint, &token_key, &store).await;
        ws.retarget(server.ws);
        endpoint.retarget(server.endpoint);
        Restartable {
            ws,
            endpoint,
            token_key,
            store,
            server,
        }
    }

    async fn server(endpoint: &Proxy, token_key: &str, store: &[String]) -> Server {
        let mut builder = Server::builder()
            .set(
                "server",
                "endpoint_url",
                &format!("\"http://{}\"", endpoint.addr),
            )
            .set("server", "token_keys", &format!("[\"{token_key}\"]"));
        for arg in store {
            builder = builder.arg(arg);
        }
        builder.start().await
    }

    /// Stops the server (SIGTERM) and starts another on the same store.
    async fn restart(&mut self) {
        self.server.terminate();
        assert!(self.server.wait_exit().await.success());
        self.server = Self::server(&self.endpoint, &self.token_key, &self.store).await;
        self.ws.retarget(self.server.ws);
        self.endpoint.retarget(self.server.endpoint);
    }
}

/// A WebPush client subscribed through a [`Restartable`] server, and one push decrypted.
async fn webpush_client_before_a_restart(
    server: &Restartable,
    dir: &Path,
) -> (Client, PathBuf, String, String) {
    let (state, subscription) = (dir.join("device.json"), dir.join("sub.json"));
    let mut client = webpush_client(&server.ws.ws_url(), &state, &subscription, &[]);
    let (uaid, channel, endpoint) = subscribed(&mut client, &subscription).await;
    assert!(
        endpoint.starts_with(&format!("http://{}/wpush/", server.endpoint.addr)),
        "{endpoint}"
    );
    push_created(&subscription, &["--data", "before the restart"], 60).await;
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some("before the restart")
    );
    // Acked before the restart, so it is not delivered again after it.
    wait_for_acks(&server.server, 100, 1).await;
    (client, subscription, uaid, channel)
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn webpush_client_survives_a_server_restart_with_the_same_subscription() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_str().unwrap();
    let mut server = Restartable::start(&["--store", "sqlite", "--store-path", path]).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut client, subscription, uaid, channel) =
        webpush_client_before_a_restart(&server, dir.path()).await;
    let before = std::fs::read_to_string(&subscription).unwrap();

    server.restart().await;
    // Pushed while the client has not reconnected yet: stored, then delivered.
    push_created(&subscription, &["--data", "while reconnecting"], 60).await;
    assert_eq!(
        client.expect_within("uaid", RECONNECT_WAIT).await,
        ["uaid", &uaid],
        "the same device after the restart"
    );
    let (again, _) = client.endpoint().await;
    assert_eq!(again, channel);
    client.expect("subscription").await;
    assert_eq!(
        std::fs::read_to_string(&subscription).unwrap(),
        before,
        "the same subscription"
    );
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some("while reconnecting")
    );
    push_created(&subscription, &["--data", "after the restart"], 60).await;
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some("after the restart")
    );
    client.assert_nothing_else();
}

#[tokio::test]
async fn webpush_client_resubscribes_when_a_restarted_server_forgot_it() {
    let mut server = Restartable::start(&["--store", "memory"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut client, subscription, uaid, channel) =
        webpush_client_before_a_restart(&server, dir.path()).await;
    let before = state_of(&subscription);
    let old = dir.path().join("old-sub.json");
    std::fs::copy(&subscription, &old).unwrap();

    server.restart().await;
    let line = client.expect_within("uaid", RECONNECT_WAIT).await;
    assert_ne!(line[1], uaid, "the memory store forgot the device");
    let (again, endpoint) = client.endpoint().await;
    assert_eq!(again, channel, "the channel is kept");
    client.expect("subscription").await;
    let after = state_of(&subscription);
    assert_eq!(after["endpoint"], json!(endpoint));
    assert_ne!(after["endpoint"], before["endpoint"]);
    assert_eq!(after["keys"], before["keys"], "the same keys");
    // The old subscription is gone; the new one works with the same keys.
    let (status, stdout, _) = push_to(&old, &["--data", "to the old endpoint"]).await;
    assert!(stdout.starts_with('4'), "{stdout}");
    assert_eq!(status.code(), Some(1));
    push_created(&subscription, &["--data", "resubscribed"], 60).await;
    assert_eq!(
        notification_text(&mut client, &channel).await.as_deref(),
        Some("resubscribed")
    );
    client.assert_nothing_else();
}

#[tokio::test]
async fn state_files_of_one_dialect_are_refused_by_the_other() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("device.json");
    let mut simple = Client::start(&server.ws_url(), &state, &[]);
    simple.endpoint().await;
    simple.terminate();
    assert!(simple.wait_exit().await.success());
    let subscription = dir.path().join("sub.json");
    let mut webpush = webpush_client(&server.ws_url(), &state, &subscription, &[]);
    assert!(!webpush.wait_exit().await.success());
    assert!(
        webpush.log_text().contains("SimplePush device"),
        "{}",
        webpush.log_text()
    );
    assert!(!subscription.exists());

    let webpush_state = dir.path().join("webpush.json");
    let mut webpush = webpush_client(&server.ws_url(), &webpush_state, &subscription, &[]);
    subscribed(&mut webpush, &subscription).await;
    let mut simple = Client::start(&server.ws_url(), &webpush_state, &[]);
    assert!(!simple.wait_exit().await.success());
    assert!(
        simple.log_text().contains("WebPush device"),
        "{}",
        simple.log_text()
    );
}
