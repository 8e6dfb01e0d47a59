//! One load-generating process (`cargo xtask bench-worker JOB`): opens its share of device
//! websockets (hello + register, each from a source address in 127.0.0.0/8), then on `go`
//! sends PUTs open-loop at a fixed rate and times each notification back. Devices speak
//! the job's [`Dialect`]: SimplePush (PUT `version=N`), or WebPush (POST of an opaque
//! `aes128gcm` body that starts with N, which comes back base64url in the notification's
//! `data`; the server never decrypts, so the rest of the body is random bytes).
//!
//! It talks to the parent over pipes: it prints `ready {json}` once its devices are
//! connected and `done {json}` after the PUT phase; it reads `go` from stdin, and ends
//! when stdin says `stop` or closes. Sockets are closed by the kernel as it exits.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::stats::Latency;

/// Time limit of one device's connect + hello + register.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of one PUT.
const PUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Source addresses used per worker (127.0.<worker+1>.1 ..= .200).
const SOURCES_PER_WORKER: usize = 200;

/// Bytes of each WebPush body: 8 for the sequence number, the rest random (a small
/// encrypted payload; the protocol allows 4096).
pub const WEBPUSH_BODY_BYTES: usize = 256;
/// The TTL header of each WebPush POST, seconds.
const WEBPUSH_TTL: u32 = 60;

/// The protocol the generator's devices and app server speak (docs/protocol.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// hello + register; `PUT /update/{token}` with `version=N`; ack of `updates`.
    #[default]
    Simplepush,
    /// hello with `use_webpush`; `POST /wpush/v1/{token}` with an `aes128gcm` body and a
    /// TTL; notification with `data`; ack with code 100.
    Webpush,
}

impl Dialect {
    /// The name used in tables, JSON lines and flags.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Simplepush => "simplepush",
            Dialect::Webpush => "webpush",
        }
    }

    /// Where a pushEndpoint's path starts (the baseline serves the same paths).
    fn endpoint_prefix(self) -> &'static str {
        match self {
            Dialect::Simplepush => "/update/",
            Dialect::Webpush => "/wpush/v1/",
        }
    }

    /// The hello a fresh device of this dialect sends.
    fn hello(self) -> Value {
        match self {
            Dialect::Simplepush => json!({"messageType": "hello", "uaid": "", "channelIDs": []}),
            Dialect::Webpush => {
                json!({"messageType": "hello", "broadcasts": {}, "use_webpush": true})
            }
        }
    }

    /// The sequence number (1..) a notification carries and the ack of it; `None` for a
    /// frame that is not a notification.
    fn notification(self, message: &Value) -> Option<(Vec<u64>, Value)> {
        if message["messageType"] != json!("notification") {
            return None;
        }
        match self {
            Dialect::Simplepush => {
                let updates = message["updates"].as_array().cloned().unwrap_or_default();
                let versions = updates
                    .iter()
                    .filter_map(|u| u["version"].as_u64())
                    .collect();
                let acks: Vec<Value> = updates
                    .iter()
                    .map(|u| json!({"channelID": u["channelID"], "version": u["version"]}))
                    .collect();
                Some((versions, json!({"messageType": "ack", "updates": acks})))
            }
            Dialect::Webpush => {
                let seq = message["data"]
                    .as_str()
                    .and_then(|data| URL_SAFE_NO_PAD.decode(data.trim_end_matches('=')).ok())
                    .and_then(|body| Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?)));
                let ack = json!({"messageType": "ack", "updates": [{
                    "channelID": message["channelID"],
                    "version": message["version"],
                    "code": 100,
                }]});
                Some((seq.into_iter().collect(), ack))
            }
        }
    }
}

/// A WebPush body: `seq` (big endian), then `pad`.
fn webpush_body(seq: u64, pad: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + pad.len());
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(pad);
    body
}

/// `len` random bytes (from the standard library's randomly keyed hasher).
fn random_bytes(len: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut bytes = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while bytes.len() < len {
        let mut hasher = state.build_hasher();
        hasher.write_u64(i);
        bytes.extend_from_slice(&hasher.finish().to_le_bytes());
        i += 1;
    }
    bytes.truncate(len);
    bytes
}

/// What one worker does; built by the parent, passed as JSON on the command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Index of this worker (0..), which picks its source addresses.
    pub index: u8,
    /// Websocket listener to connect devices to.
    pub ws: SocketAddr,
    /// Endpoint listener to PUT to (the pushEndpoint's path on this address).
    pub put_to: SocketAddr,
    /// Devices to connect.
    pub connections: usize,
    /// Device connects started per second (open loop, but at most `connect_concurrency`
    /// at once).
    pub connect_rate: f64,
    /// Device connects in progress at once, at most.
    pub connect_concurrency: usize,
    /// The target is the bare echo baseline: replies are echoes, no pushEndpoint.
    pub baseline: bool,
    /// PUTs per second in the PUT phase (0: no PUT phase).
    pub put_rate: f64,
    /// Length of the PUT phase, seconds.
    pub put_secs: f64,
    /// PUTs in flight at once, at most; a PUT due when the limit is reached is skipped
    /// (and counted), so the schedule never slips.
    pub max_inflight_puts: usize,
    /// How long to wait for late notifications after the last PUT answered, seconds.
    pub grace_secs: f64,
    /// The protocol of the devices and of the pushes.
    #[serde(default)]
    pub dialect: Dialect,
}

/// What the worker reports after connecting (`ready`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    /// Devices connected, hello + register done.
    pub connected: usize,
    /// Devices that failed.
    pub failed: usize,
    /// The first failure, for the error message.
    pub first_error: Option<String>,
    /// From the first connect started to the last register answered, seconds.
    pub secs: f64,
    /// Connect + hello + register latency.
    pub latency: Latency,
}

/// What the worker reports after the PUT phase (`done`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PutReport {
    /// PUTs the schedule called for.
    pub scheduled: u64,
    /// PUTs skipped because `max_inflight_puts` were in flight.
    pub skipped: u64,
    /// PUTs that got no HTTP answer (connection error, timeout).
    pub errors: u64,
    /// The first such error, for the error message.
    pub first_error: Option<String>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Latency of 2xx answers.
    pub ok_latency: Latency,
    /// Latency of 503 answers.
    pub unavailable_latency: Latency,
    /// From PUT sent to notification received.
    pub notify_latency: Latency,
    /// Notifications received (first copy of each version).
    pub received: u64,
    /// Updates answered 200/202 but never received.
    pub lost: u64,
    /// Notification copies beyond the first of a version.
    pub duplicates: u64,
    /// Devices whose socket ended during the run.
    pub dropped_devices: usize,
    /// From the first PUT sent to the last answer or notification, seconds.
    pub secs: f64,
}

/// Entry point of `cargo xtask bench-worker JOB`.
pub fn main(job_json: &str) -> Result<()> {
    let job: Job = serde_json::from_str(job_json).context("bad worker job")?;
    // Each device is a file descriptor: take what the hard limit allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("worker runtime")?
        .block_on(run(job))
}

/// Per-version bookkeeping of the PUT phase, shared by the PUT and device tasks.
struct Tracker {
    start: Instant,
    /// Nanoseconds since `start` + 1 at which PUT `seq` was sent; 0: not sent.
    sent_at: Vec<AtomicU64>,
    /// Status of PUT `seq` (0: none yet).
    status: Vec<AtomicU64>,
    /// Notification copies received of `seq`.
    copies: Vec<AtomicU8>,
    notify: Mutex<Latency>,
    /// Nanoseconds since `start` of the last event, for the phase length.
    last_event: AtomicU64,
}

impl Tracker {
    fn new(total: usize) -> Tracker {
        Tracker {
            start: Instant::now(),
            sent_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
            status: (0..total).map(|_| AtomicU64::new(0)).collect(),
            copies: (0..total).map(|_| AtomicU8::new(0)).collect(),
            notify: Mutex::new(Latency::default()),
            last_event: AtomicU64::new(0),
        }
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn mark_event(&self) {
        self.last_event
            .fetch_max(self.now_nanos(), Ordering::Relaxed);
    }

    /// A notification for `version` arrived.
    fn received(&self, version: u64) {
        let Some(seq) = version.checked_sub(1).and_then(|s| usize::try_from(s).ok()) else {
            return;
        };
        let (Some(copies), Some(sent)) = (self.copies.get(seq), self.sent_at.get(seq)) else {
            return;
        };
        if copies.fetch_add(1, Ordering::Relaxed) == 0 {
            let sent = sent.load(Ordering::Relaxed);
            if sent > 0 {
                let micros = self.now_nanos().saturating_sub(sent - 1) / 1000;
                if let Ok(mut latency) = self.notify.lock() {
                    latency.record(micros);
                }
            }
        }
        self.mark_event();
    }
}

async fn run(job: Job) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(None::<Arc<Tracker>>);
    let (go_tx, mut go_rx) = watch::channel(false);
    // stdin: `go` starts the PUT phase; `stop` or end of file ends the worker.
    let stdin_task = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "go" => {
                    let _ = go_tx.send(true);
                }
                "stop" => break,
                _ => {}
            }
        }
    });

    let dropped = Arc::new(AtomicUsize::new(0));
    let (report, endpoints) = connect_all(&job, stop_rx, dropped.clone()).await;
    println!("ready {}", serde_json::to_string(&report)?);

    let wait_go = async {
        while !*go_rx.borrow_and_update() {
            if go_rx.changed().await.is_err() {
                return false;
            }
        }
        true
    };
    let go = tokio::select! {
        go = wait_go => go,
        _ = stdin_cancelled(&stdin_task) => false,
    };
    if go && job.put_rate > 0.0 {
        let report = put_phase(&job, &endpoints, &stop_tx, &dropped).await;
        println!("done {}", serde_json::to_string(&report)?);
    } else if go {
        println!("done {}", serde_json::to_string(&PutReport::default())?);
    }
    // Wait for `stop` or the end of stdin; the devices stay connected until then.
    let _ = stdin_task.await;
    drop(stop_tx);
    Ok(())
}

/// Resolves when the stdin task ended (stop or end of file).
async fn stdin_cancelled(task: &tokio::task::JoinHandle<()>) {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The source address of device `i` of worker `index`.
fn source_addr(index: u8, i: usize) -> Ipv4Addr {
    // `i % 200 + 1` is at most 200, so it fits a u8.
    let host = u8::try_from(i % SOURCES_PER_WORKER + 1).unwrap_or(1);
    Ipv4Addr::new(127, 0, index.saturating_add(1), host)
}

/// Connects every device of the job; returns the report and the PUT URL of each device
/// that connected.
async fn connect_all(
    job: &Job,
    stop: watch::Receiver<Option<Arc<Tracker>>>,
    dropped: Arc<AtomicUsize>,
) -> (ConnectReport, Vec<String>) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(job.connect_concurrency.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / job.connect_rate.max(1.0));
    for i in 0..job.connections {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let (tx, job, stop, dropped) = (tx.clone(), job.clone(), stop.clone(), dropped.clone());
        tokio::spawn(async move {
            let began = Instant::now();
            let result = tokio::time::timeout(
                CONNECT_TIMEOUT,
                connect_device(&job, source_addr(job.index, i)),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("connect timed out")));
            drop(permit);
            match result {
                Ok((socket, url)) => {
                    let _ = tx.send(Ok((began.elapsed(), url)));
                    device_loop(socket, job.dialect, stop, dropped).await;
                }
                Err(err) => {
                    let _ = tx.send(Err(format!("{err:#}")));
                }
            }
        });
    }
    drop(tx);
    let mut report = ConnectReport::default();
    let mut endpoints = Vec::with_capacity(job.connections);
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Ok((took, url)) => {
                report.connected += 1;
                report
                    .latency
                    .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                endpoints.push(url);
            }
            Err(err) => {
                report.failed += 1;
                report.first_error.get_or_insert(err);
            }
        }
        if report.connected + report.failed == job.connections {
            break;
        }
    }
    report.secs = start.elapsed().as_secs_f64();
    (report, endpoints)
}

/// A device's websocket.
pub(crate) type Socket = WebSocketStream<TcpStream>;

/// Connects from `source`, says hello and registers one channel; returns the socket and
/// the URL to PUT to for that channel.
async fn connect_device(job: &Job, source: Ipv4Addr) -> Result<(Socket, String)> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket.connect(job.ws).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let mut config = WebSocketConfig::default();
    // Small buffers: a worker holds thousands of mostly idle sockets.
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{}/", job.ws),
        stream,
        Some(config),
    )
    .await
    .context("websocket handshake")?;
    let hello = request(&mut socket, job.dialect.hello(), "hello").await?;
    if !job.baseline && hello["status"] != json!(200) {
        bail!("hello answered {hello}");
    }
    let channel = match job.dialect {
        Dialect::Simplepush => random_hex32(),
        // Firefox's channelIDs are dashed UUIDs.
        Dialect::Webpush => dashed(&random_hex32()),
    };
    let register = request(
        &mut socket,
        json!({"messageType": "register", "channelID": channel}),
        "register",
    )
    .await?;
    let prefix = job.dialect.endpoint_prefix();
    let path = if job.baseline {
        format!("{prefix}{channel}")
    } else {
        let endpoint = register["pushEndpoint"]
            .as_str()
            .with_context(|| format!("register answered {register}"))?;
        let at = endpoint
            .find(prefix)
            .with_context(|| format!("pushEndpoint without {prefix}: {endpoint}"))?;
        endpoint[at..].to_owned()
    };
    Ok((socket, format!("http://{}{path}", job.put_to)))
}

/// Sends `message` and waits for the reply whose messageType is `kind`.
pub(crate) async fn request(socket: &mut Socket, message: Value, kind: &str) -> Result<Value> {
    socket
        .send(Message::text(message.to_string()))
        .await
        .with_context(|| format!("sending {kind}"))?;
    loop {
        let frame = socket
            .next()
            .await
            .with_context(|| format!("socket closed before the {kind} reply"))?
            .with_context(|| format!("reading the {kind} reply"))?;
        let Message::Text(text) = frame else {
            continue;
        };
        let reply: Value = serde_json::from_str(text.as_str())?;
        if reply["messageType"] == json!(kind) {
            return Ok(reply);
        }
    }
}

/// A random 32-hex-digit channelID (UUID-shaped without dashes).
fn random_hex32() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut text = String::with_capacity(32);
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        text.push_str(&format!("{:016x}", hasher.finish()));
    }
    text
}

/// `hex32` as a UUID: dashes at 8, 13, 18 and 23.
fn dashed(hex32: &str) -> String {
    let (a, rest) = hex32.split_at(8);
    let (b, rest) = rest.split_at(4);
    let (c, rest) = rest.split_at(4);
    let (d, e) = rest.split_at(4);
    format!("{a}-{b}-{c}-{d}-{e}")
}

/// Reads a connected device's socket until the worker stops: records each notification
/// and acks it at once.
async fn device_loop(
    mut socket: Socket,
    dialect: Dialect,
    mut stop: watch::Receiver<Option<Arc<Tracker>>>,
    dropped: Arc<AtomicUsize>,
) {
    loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let Some((versions, ack)) = dialect.notification(&message) else {
            continue;
        };
        if let Some(tracker) = stop.borrow().as_ref() {
            for version in versions {
                tracker.received(version);
            }
        }
        if socket.send(Message::text(ack.to_string())).await.is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// Sends `put_rate × put_secs` PUTs open loop, round-robin over the devices, then waits
/// for the answers and the notifications.
async fn put_phase(
    job: &Job,
    endpoints: &[String],
    stop: &watch::Sender<Option<Arc<Tracker>>>,
    dropped: &AtomicUsize,
) -> PutReport {
    let mut report = PutReport::default();
    let dropped_before = dropped.load(Ordering::Relaxed);
    if endpoints.is_empty() {
        return report;
    }
    let total = (job.put_rate * job.put_secs).round().max(1.0) as usize;
    let tracker = Arc::new(Tracker::new(total));
    // Devices read the tracker from the watch channel.
    let _ = stop.send(Some(tracker.clone()));
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(PUT_TIMEOUT)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(job.max_inflight_puts)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            report.errors = total as u64;
            report.first_error = Some(err.to_string());
            return report;
        }
    };
    let inflight = Arc::new(tokio::sync::Semaphore::new(job.max_inflight_puts.max(1)));
    let pad: Arc<[u8]> = random_bytes(WEBPUSH_BODY_BYTES.saturating_sub(8)).into();
    let answers = Arc::new(Mutex::new(PutReport::default()));
    let interval = Duration::from_secs_f64(1.0 / job.put_rate);
    let mut tasks = tokio::task::JoinSet::new();
    let mut seq = 0;
    while seq < total {
        // Send every PUT that is due, then sleep until the next one: the schedule is
        // fixed, whatever the answers do.
        let now = tracker.start.elapsed();
        while seq < total && interval.mul_f64(seq as f64) <= now {
            let Ok(permit) = inflight.clone().try_acquire_owned() else {
                report.skipped += 1;
                seq += 1;
                continue;
            };
            let url = endpoints[seq % endpoints.len()].clone();
            let (client, tracker, answers) = (client.clone(), tracker.clone(), answers.clone());
            let this = seq;
            let version = this as u64 + 1;
            let request = match job.dialect {
                Dialect::Simplepush => client.put(url).body(format!("version={version}")),
                Dialect::Webpush => client
                    .post(url)
                    .header("Content-Encoding", "aes128gcm")
                    .header("TTL", WEBPUSH_TTL)
                    .body(webpush_body(version, &pad)),
            };
            tasks.spawn(async move {
                let _permit = permit;
                let sent = Instant::now();
                tracker.sent_at[this].store(tracker.now_nanos() + 1, Ordering::Relaxed);
                let result = request.send().await;
                let result = match result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // Read the body so the connection goes back to the pool.
                        let _ = response.bytes().await;
                        Ok(status)
                    }
                    Err(err) => Err(err),
                };
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracker.mark_event();
                let Ok(mut answers) = answers.lock() else {
                    return;
                };
                match result {
                    Ok(status) => {
                        tracker.status[this].store(u64::from(status), Ordering::Relaxed);
                        *answers.statuses.entry(status).or_default() += 1;
                        if (200..300).contains(&status) {
                            answers.ok_latency.record(micros);
                        } else if status == 503 {
                            answers.unavailable_latency.record(micros);
                        }
                    }
                    Err(err) => {
                        answers.errors += 1;
                        answers
                            .first_error
                            .get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            });
            seq += 1;
        }
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        if seq < total {
            let next = interval.mul_f64(seq as f64);
            let wait = next.saturating_sub(tracker.start.elapsed());
            tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
        }
    }
    while tasks.join_next().await.is_some() {}

    // Wait for the notifications of accepted PUTs, up to the grace period.
    let expected: Vec<usize> = if job.baseline {
        Vec::new()
    } else {
        (0..total)
            .filter(|&s| matches!(tracker.status[s].load(Ordering::Relaxed), 200..=202))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(job.grace_secs);
    while Instant::now() < deadline
        && expected
            .iter()
            .any(|&s| tracker.copies[s].load(Ordering::Relaxed) == 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let answers = match Arc::try_unwrap(answers) {
        Ok(mutex) => mutex.into_inner().unwrap_or_default(),
        Err(shared) => shared.lock().map(|a| clone_answers(&a)).unwrap_or_default(),
    };
    report.scheduled = total as u64;
    report.errors = answers.errors;
    report.first_error = answers.first_error;
    report.statuses = answers.statuses;
    report.ok_latency = answers.ok_latency;
    report.unavailable_latency = answers.unavailable_latency;
    report.lost = expected
        .iter()
        .filter(|&&s| tracker.copies[s].load(Ordering::Relaxed) == 0)
        .count() as u64;
    for copies in &tracker.copies {
        let copies = u64::from(copies.load(Ordering::Relaxed));
        report.received += copies.min(1);
        report.duplicates += copies.saturating_sub(1);
    }
    if let Ok(latency) = tracker.notify.lock() {
        report.notify_latency = latency.clone();
    }
    report.dropped_devices = dropped.load(Ordering::Relaxed) - dropped_before;
    report.secs = tracker.last_event.load(Ordering::Relaxed) as f64 / 1e9;
    report
}

fn clone_answers(answers: &PutReport) -> PutReport {
    PutReport {
        errors: answers.errors,
        first_error: answers.first_error.clone(),
        statuses: answers.statuses.clone(),
        ok_latency: answers.ok_latency.clone(),
        unavailable_latency: answers.unavailable_latency.clone(),
        ..PutReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::{Dialect, Tracker, dashed, random_hex32, source_addr, webpush_body};
    use base64::Engine as _;
    use serde_json::json;
    use std::net::Ipv4Addr;

    #[test]
    fn source_addresses_stay_in_loopback_and_spread() {
        assert_eq!(source_addr(0, 0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(source_addr(1, 199), Ipv4Addr::new(127, 0, 2, 200));
        assert_eq!(source_addr(1, 200), Ipv4Addr::new(127, 0, 2, 1));
        assert!(source_addr(255, 12345).is_loopback());
    }

    #[test]
    fn channel_ids_are_fresh_hex() {
        let (a, b) = (random_hex32(), random_hex32());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn webpush_notifications_give_back_the_posted_sequence_and_ack_with_code_100() {
        let body = webpush_body(42, &[7; 248]);
        assert_eq!(body.len(), super::WEBPUSH_BODY_BYTES);
        let data = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&body);
        let message = json!({"messageType": "notification", "channelID": "c", "version": "m1",
            "ttl": 60, "data": data, "headers": {"encoding": "aes128gcm"}});
        let (seqs, ack) = Dialect::Webpush.notification(&message).unwrap();
        assert_eq!(seqs, vec![42]);
        assert_eq!(
            ack,
            json!({"messageType": "ack",
                "updates": [{"channelID": "c", "version": "m1", "code": 100}]})
        );
        // Padded base64url is accepted too; a body without data is acked, not counted.
        let padded = json!({"messageType": "notification", "data": format!("{data}==")});
        assert_eq!(Dialect::Webpush.notification(&padded).unwrap().0, vec![42]);
        let empty = json!({"messageType": "notification", "version": "m2"});
        assert!(Dialect::Webpush.notification(&empty).unwrap().0.is_empty());
        assert!(Dialect::Webpush.notification(&json!({})).is_none());
    }

    #[test]
    fn simplepush_notifications_ack_every_update() {
        let message = json!({"messageType": "notification", "updates": [
            {"channelID": "a", "version": 3}, {"channelID": "b", "version": 5}]});
        let (seqs, ack) = Dialect::Simplepush.notification(&message).unwrap();
        assert_eq!(seqs, vec![3, 5]);
        assert_eq!(ack["updates"][1], json!({"channelID": "b", "version": 5}));
    }

    #[test]
    fn webpush_channel_ids_are_dashed_uuids() {
        let id = dashed(&random_hex32());
        assert_eq!(id.len(), 36);
        assert_eq!(
            id.char_indices()
                .filter(|(_, c)| *c == '-')
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            vec![8, 13, 18, 23]
        );
    }

    #[test]
    fn tracker_counts_duplicates_once_for_latency() {
        let tracker = Tracker::new(3);
        tracker.sent_at[1].store(1, std::sync::atomic::Ordering::Relaxed);
        tracker.received(2);
        tracker.received(2);
        tracker.received(0); // no such version: ignored
        tracker.received(99);
        assert_eq!(
            tracker.copies[1].load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(tracker.notify.lock().unwrap().count(), 1);
    }
}
