//! End-to-end tests of `simplepush client` and `simplepush push`: the real binary runs as
//! a device and as an app server against a live server started by the harness.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, WAIT, chid, hex_id, unix_now};
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

/// A TCP proxy in front of the server's websocket listener that the test can cut.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (up, links) = (up.clone(), links.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        // Down: the connection is closed at once.
                        continue;
                    }
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
            links,
            accept,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
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
    let (status, push_help, _) = simplepush(&["push", "--help"]).await;
    assert!(status.success());
    for flag in ["<ENDPOINT>", "--version <N>", "--data <TEXT>"] {
        assert!(push_help.contains(flag), "{flag} in {push_help}");
    }
    // Every flag has a description, on its line or (long help) on the next one.
    for help in [&client_help, &push_help] {
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with('-') && !line.trim_start().starts_with('<') {
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
