//! `store-scale` (issue #13): how the durable stores behave when they hold many devices.
//!
//! For each backend, an empty store is measured once (start-up, disk); then, in the same
//! run, a small store (`--small`, 1,000 devices) and a large one (`--devices`, 1,000,000):
//! 1. `simplepush fill` (the hidden loader, the backend crate itself) registers the
//!    devices, two channels each, last seen [`SEEN_AGO`] ago, and writes a random sample
//!    of them with their pushEndpoints;
//! 2. the release server starts on that store (with retention on, a long device TTL that
//!    keeps them all) and stops: the store is now at rest (RocksDB replayed the loader's
//!    log into tables), its bytes on disk are the devices' cost. It starts again:
//!    start-up time (spawn → `/status/` 200), RSS;
//! 3. PUTs to random sampled devices, all offline (202), closed loop with a fixed number
//!    in flight, in [`PUT_ROUNDS`] rounds: the medians of their rates and of their p99s,
//!    p50 over all;
//! 4. hello + flush: some sampled devices get an update on each channel, then say hello
//!    with their uaid and channels; the time from hello to the last pending notification,
//!    then they ack (nothing stays pending). RSS, and again after 5 s idle; a clean
//!    stop (SIGTERM); bytes on disk again (with what the PUTs wrote);
//! 5. retention: the server restarts with a device TTL of [`SHORT_TTL`], so every device
//!    but those that said hello is past it; PUTs to the live devices while the sweep runs
//!    (until the removed-devices counter of `/metrics` reaches the expected count); once
//!    the files stop changing (the store's own compaction), a clean stop, a start and
//!    stop (at rest again), and the disk it left, compared with the empty store's plus
//!    the live devices' share (RocksDB's info logs left out of both: text diagnostics
//!    that grow with each start, not with devices). Then the same PUTs on a restarted
//!    server with nothing to sweep, for comparison.
//!
//! The ratios of the large run to the small one are held to the targets, and
//! every miss is printed as such. Data directories live under the system temp dir and
//! are removed at the end; every process started is killed if the run fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::report::{Metric, Outcome};
use super::scenario::{Bench, round1};
use super::stats::Latency;
use super::target::{ScratchDir, ServerProc};
use super::worker::Dialect;

/// How long ago the filled devices were last seen.
const SEEN_AGO: &str = "2d";
/// The device TTL while serving: longer than [`SEEN_AGO`], so nothing is swept.
const LONG_TTL: &str = "30d";
/// The device TTL of the retention phase: shorter than [`SEEN_AGO`], so every device
/// that did not say hello in this run is past it.
const SHORT_TTL: &str = "1d";
/// The server flag that sets the device TTL; a binary without it has no retention.
const TTL_FLAG: &str = "--device-ttl";
/// PUTs in flight at once in the PUT phases.
const PUT_CONCURRENCY: usize = 64;
/// Rounds of each size's PUT phase, which share its `--secs`. The rate and p99 a size
/// reports are the medians of the rounds' rates and of their p99s: on a shared box one
/// disturbed stretch (another process, a neighbour's disk) moved a whole 10 s phase's p99
/// by a third, at any store size. The phase keeps its length, so the store takes as many
/// writes as before.
const PUT_ROUNDS: usize = 3;
/// Devices saying hello at once.
const HELLO_CONCURRENCY: usize = 16;
/// Time limit of one PUT, and of one device's hello + flush.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to answer `/status/` once it printed its listening line.
const STATUS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server idles after the load before its RSS is read again.
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(5);
/// How often the retention phase reads `/metrics`.
const METRICS_PERIOD: Duration = Duration::from_millis(250);

/// The sizes and lengths of a store-scale run.
#[derive(Debug, Clone)]
pub struct ScaleParams {
    /// The small store's devices.
    pub small: u64,
    /// The large store's devices.
    pub large: u64,
    /// Length of each PUT phase (a size's is [`PUT_ROUNDS`] rounds), seconds.
    pub secs: f64,
    /// Sampled devices (PUT targets), at most.
    pub sample: usize,
    /// Devices that say hello (and stay live through retention), at most; at most half
    /// of the sample, so that retention has something to remove at any size.
    pub hellos: usize,
    /// The longest the sweep may take before the run gives up on it.
    pub sweep_timeout: Duration,
    /// The longest to wait, after the sweep, for the files to stop changing (a store's
    /// own compaction), seconds; they must stay unchanged for 5 s (0: do not wait).
    pub settle_cap: f64,
    /// Fail on any failed request or device (smoke).
    pub strict: bool,
}

/// One sampled device, as `simplepush fill` wrote it.
#[derive(Debug, Clone, Deserialize)]
struct SampleDevice {
    uaid: String,
    channels: Vec<SampleChannel>,
}

#[derive(Debug, Clone, Deserialize)]
struct SampleChannel {
    #[serde(rename = "channelID")]
    channel_id: String,
    endpoint: String,
}

impl SampleChannel {
    /// The pushEndpoint's path (`/update/…`), to be sent to the server's real address.
    fn path(&self) -> Result<&str> {
        let at = self
            .endpoint
            .find("/update/")
            .with_context(|| format!("endpoint without /update/: {}", self.endpoint))?;
        Ok(&self.endpoint[at..])
    }
}

/// Bytes of a directory tree: allocated on disk and apparent, and the allocated bytes
/// by kind of file.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// Allocated (`st_blocks` × 512), what `du` counts.
    pub allocated: u64,
    /// Sum of file lengths.
    pub apparent: u64,
    /// Allocated bytes by kind (see [`file_kind`]).
    pub kinds: BTreeMap<&'static str, u64>,
}

impl Disk {
    /// Measures the tree under `dir` (0 when it does not exist).
    pub fn measure(dir: &Path) -> Result<Disk> {
        use std::os::unix::fs::MetadataExt;
        let mut disk = Disk::default();
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            };
            for entry in entries {
                let entry = entry?;
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // A file a store removed while we walked (a compaction's input).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                if meta.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                let allocated = meta.blocks() * 512;
                disk.allocated += allocated;
                disk.apparent += meta.len();
                let name = entry.file_name();
                *disk
                    .kinds
                    .entry(file_kind(&name.to_string_lossy()))
                    .or_default() += allocated;
            }
        }
        Ok(disk)
    }

    /// Allocated bytes without RocksDB's info logs (`LOG`, `LOG.old.*`): diagnostics
    /// that grow with every start of the server (up to the files RocksDB keeps), not
    /// with what the store holds.
    pub fn data(&self) -> u64 {
        self.allocated - self.kinds.get("rocksdb-info-log").copied().unwrap_or(0)
    }

    /// `sst 12.3 MB, wal 1.0 MB, ...`, largest first.
    fn breakdown(&self) -> String {
        let mut kinds: Vec<(&&str, &u64)> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        kinds
            .iter()
            .map(|(kind, bytes)| format!("{kind} {}", human_bytes(**bytes)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a file in a sqlite or rocksdb data directory is, by its name.
fn file_kind(name: &str) -> &'static str {
    if name.ends_with(".sst") {
        "sst"
    } else if name.ends_with(".log") {
        // RocksDB's write-ahead log files are NNNNNN.log.
        "rocksdb-wal"
    } else if name.ends_with("-wal") {
        "sqlite-wal"
    } else if name.ends_with("-shm") {
        "sqlite-shm"
    } else if name.starts_with("LOG") {
        "rocksdb-info-log"
    } else if name.starts_with("MANIFEST") {
        "manifest"
    } else if name.starts_with("OPTIONS") {
        "options"
    } else if name == "token.key" {
        "token-key"
    } else if name.ends_with(".blob") {
        "blob"
    } else if name.contains("sqlite") || name.ends_with(".db") || name == "db" {
        "sqlite-db"
    } else {
        "other"
    }
}

/// `12.3 MB` (decimal units, as bytes per device are quoted).
fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// Whether `binary` has retention (its `--help` names [`TTL_FLAG`]).
fn has_retention(binary: &Path) -> Result<bool> {
    let out = Command::new(binary)
        .arg("--help")
        .output()
        .context("simplepush --help")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(TTL_FLAG))
}

/// The server config of every store-scale run: loopback listeners on free ports, no
/// limits on commands, the backend's data in `data/` beside the config.
fn config_text(backend: &str, fsync: bool) -> String {
    format!(
        "[server]\nws_addr = \"127.0.0.1:0\"\nendpoint_addr = \"127.0.0.1:0\"\n\
         admin_addr = \"127.0.0.1:0\"\n\
         [protocol]\nmin_ping_interval = \"0\"\ncommand_rate = 0\n\
         [store]\nbackend = \"{backend}\"\npath = \"data\"\nfsync = {fsync}\n\
         [log]\nlevel = \"warn\"\n"
    )
}

/// What an empty store measured.
#[derive(Debug, Clone)]
struct Empty {
    disk: Disk,
    startup_ms: f64,
    rss_kib: f64,
}

/// What one size measured.
#[derive(Debug, Clone)]
struct SizeRun {
    devices: u64,
    fill_secs: f64,
    /// Right after the loader closed the store.
    disk_fill: Disk,
    /// The first start, on the store as the loader left it.
    first_startup_ms: f64,
    /// A restart after a clean stop.
    startup_ms: f64,
    listening_ms: f64,
    rss_start_kib: f64,
    /// Right after the PUT and hello phases.
    rss_end_kib: f64,
    /// The part of it that is files mapped (the binary, libraries, any mmap of data).
    rss_file_kib: f64,
    /// [`IDLE_BEFORE_RSS`] later.
    rss_idle_kib: f64,
    /// Every round of the PUT phase together.
    put: PutLoad,
    /// Each round's rate and p99, in order.
    put_rounds: Vec<PutRound>,
    hello: HelloLoad,
    /// At rest: the devices with their channels, nothing pending, after a server's
    /// start and clean stop.
    disk: Disk,
    /// After the PUT and hello phases and a clean stop.
    disk_served: Disk,
    live: usize,
    retention: Option<RetentionRun>,
}

/// What the retention phase measured.
#[derive(Debug, Clone)]
struct RetentionRun {
    startup_ms: f64,
    expected: u64,
    removed: u64,
    sweep_secs: Option<f64>,
    during: PutLoad,
    after: PutLoad,
    hello: HelloLoad,
    settle_secs: f64,
    /// After the sweep (and the PUTs during it) and a clean stop.
    disk_served: Disk,
    /// At rest: after one more start and clean stop.
    disk: Disk,
}

/// Runs store-scale on each of `backends` (sqlite, rocksdb); answers one outcome per
/// size and one of the ratios per backend.
pub fn run(bench: &Bench, backends: &[String], p: &ScaleParams) -> Result<Vec<Outcome>> {
    for backend in backends {
        if !matches!(backend.as_str(), "sqlite" | "rocksdb") {
            bail!("store-scale measures the durable stores: sqlite or rocksdb, not {backend}");
        }
    }
    let retention = has_retention(&bench.binary)?;
    if !retention {
        eprintln!(
            "bench: this simplepush has no {TTL_FLAG}: the retention phase is skipped \
             (and its target counts as not met)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("bench runtime")?;
    let mut outcomes = Vec::new();
    for backend in backends {
        let empty = measure_empty(bench, backend, retention, &runtime)
            .with_context(|| format!("empty {backend} store"))?;
        println!(
            "bench: empty {backend} store: {} on disk ({}), start-up {:.0} ms, RSS {:.0} KiB",
            human_bytes(empty.disk.allocated),
            empty.disk.breakdown(),
            empty.startup_ms,
            empty.rss_kib
        );
        let mut runs = Vec::new();
        for devices in [p.small, p.large] {
            let run = measure_size(bench, backend, devices, retention, p, &runtime)
                .with_context(|| format!("{backend} store of {devices} devices"))?;
            let outcome = size_outcome(backend, &run, &empty);
            println!("{}", outcome.table());
            outcomes.push(outcome);
            runs.push(run);
        }
        if let [small, large] = runs.as_slice() {
            let outcome = ratio_outcome(backend, small, large, &empty);
            println!("{}", outcome.table());
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// Starts a server on a fresh data directory, stops it, and measures what it left.
fn measure_empty(
    bench: &Bench,
    backend: &str,
    retention: bool,
    runtime: &tokio::runtime::Runtime,
) -> Result<Empty> {
    let dir = ScratchDir::new(&format!("store-scale-{backend}-empty"))?;
    std::fs::write(
        dir.path().join("bench.toml"),
        config_text(backend, bench.fsync),
    )?;
    let (server, started) = start(bench, dir.path(), retention.then_some(LONG_TTL), runtime)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_kib = server.rss_kib()? as f64;
    server.stop()?;
    Ok(Empty {
        disk: Disk::measure(&dir.path().join("data"))?,
        startup_ms: started.status_ms,
        rss_kib,
    })
}

/// How long a server took to start.
struct Started {
    listening_ms: f64,
    status_ms: f64,
}

/// Starts the server in `dir` (config `bench.toml`, data in `data/`), with the device
/// TTL `ttl` when given; answers it and how long it took to print its listening line
/// and to answer `/status/` with 200.
fn start(
    bench: &Bench,
    dir: &Path,
    ttl: Option<&str>,
    runtime: &tokio::runtime::Runtime,
) -> Result<(ServerProc, Started)> {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let log = format!("server-{}.log", STARTS.fetch_add(1, Ordering::Relaxed));
    let args: Vec<String> = match ttl {
        Some(ttl) => vec![TTL_FLAG.to_owned(), ttl.to_owned()],
        None => Vec::new(),
    };
    let began = Instant::now();
    let mut server = ServerProc::simplepush_in(&bench.binary, dir, "bench.toml", &args, &log)?;
    let listening_ms = began.elapsed().as_secs_f64() * 1e3;
    let url = format!("http://{}/status/", server.endpoint);
    runtime.block_on(async {
        let client = client(1)?;
        let deadline = Instant::now() + STATUS_TIMEOUT;
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("/status/ did not answer 200 within {STATUS_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })?;
    let status_ms = began.elapsed().as_secs_f64() * 1e3;
    server.check_alive()?;
    Ok((
        server,
        Started {
            listening_ms,
            status_ms,
        },
    ))
}

/// An HTTP client for loopback load: no proxy, no Nagle, `pool` idle connections kept.
fn client(pool: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// Fill, serve, retention: every phase of one size on a fresh data directory.
fn measure_size(
    bench: &Bench,
    backend: &str,
    devices: u64,
    retention: bool,
    p: &ScaleParams,
    runtime: &tokio::runtime::Runtime,
) -> Result<SizeRun> {
    let dir = ScratchDir::new(&format!("store-scale-{backend}-{devices}"))?;
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("bench.toml"),
        config_text(backend, bench.fsync),
    )?;
    let sample_size = usize::try_from(devices).unwrap_or(usize::MAX).min(p.sample);
    println!("bench: {backend}: filling {devices} devices (sample {sample_size})");
    let fill_secs = fill(&bench.binary, dir.path(), devices, sample_size)?;
    let disk_fill = Disk::measure(&data)?;
    let sample = read_sample(&dir.path().join("sample.jsonl"))?;
    if sample.len() != sample_size {
        bail!("fill sampled {} devices, not {sample_size}", sample.len());
    }
    let live = p.hellos.min(sample.len() / 2);
    let versions = Arc::new(AtomicU64::new(1));

    let ttl = retention.then_some(LONG_TTL);
    // The first start replays what the loader left in a log (RocksDB flushes it into
    // tables); after it, the store is at rest: the devices and nothing else.
    let (first, first_started) = start(bench, dir.path(), ttl, runtime)?;
    first.stop()?;
    let disk_rest = Disk::measure(&data)?;

    println!("bench: {backend}: serving {devices} devices");
    let (mut server, started) = start(bench, dir.path(), ttl, runtime)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_start_kib = server.rss_kib()? as f64;
    let endpoint = server.endpoint;
    let targets = Arc::new(put_urls(endpoint, &sample)?);
    let mut put = PutLoad::default();
    let mut put_rounds = Vec::with_capacity(PUT_ROUNDS);
    for _ in 0..PUT_ROUNDS {
        let round = runtime.block_on(put_load(
            targets.clone(),
            versions.clone(),
            None,
            Duration::from_secs_f64(p.secs / PUT_ROUNDS as f64),
        ))?;
        check_puts("PUT phase", &round, p.strict)?;
        server.check_alive()?;
        let figures = PutRound::of(&round);
        println!(
            "bench: {backend}, {devices} devices: PUT round {}: {:.0}/s, p99 {} µs",
            put_rounds.len() + 1,
            figures.rate,
            figures.p99_us
        );
        put_rounds.push(figures);
        put.secs += round.secs;
        put.merge(round);
    }
    let hello = runtime.block_on(hello_phase(
        server.ws,
        endpoint,
        &sample[..live],
        versions.clone(),
    ))?;
    check_hellos("hello phase", &hello, p.strict)?;
    server.check_alive()?;
    let rss_end_kib = server.rss_kib()? as f64;
    let rss_file_kib = status_kib(server.pid(), "RssFile:").unwrap_or(0) as f64;
    // Again once the store's background work after the load (flushes, compactions)
    // had time to end and the allocator to return what it freed.
    std::thread::sleep(IDLE_BEFORE_RSS);
    server.check_alive()?;
    let rss_idle_kib = server.rss_kib()? as f64;
    server.stop()?;
    let disk_served = Disk::measure(&data)?;

    let retention = if retention {
        Some(measure_retention(
            bench,
            dir.path(),
            devices - live as u64,
            &sample[..live],
            versions,
            p,
            runtime,
        )?)
    } else {
        None
    };
    Ok(SizeRun {
        devices,
        fill_secs,
        disk_fill,
        first_startup_ms: first_started.status_ms,
        startup_ms: started.status_ms,
        listening_ms: started.listening_ms,
        rss_start_kib,
        rss_end_kib,
        rss_file_kib,
        rss_idle_kib,
        put,
        put_rounds,
        hello,
        disk: disk_rest,
        disk_served,
        live,
        retention,
    })
}

/// Runs `simplepush fill` in `dir`; answers the seconds its registers took (from its
/// `filled ... secs=S` line: without the process start and the sample file).
fn fill(binary: &Path, dir: &Path, devices: u64, sample: usize) -> Result<f64> {
    let out = Command::new(binary)
        .current_dir(dir)
        .args(["fill", "--config", "bench.toml", "--store-fsync=false"])
        .args(["--devices", &devices.to_string(), "--channels", "2"])
        .args(["--seen-ago", SEEN_AGO, "--sample", &sample.to_string()])
        .args(["--sample-out", "sample.jsonl"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running simplepush fill")?;
    if !out.status.success() {
        bail!("simplepush fill failed ({})", out.status);
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("bench: {line}");
    filled_secs(&line).with_context(|| format!("no secs= in the fill's line {line:?}"))
}

/// `S` of `filled devices=N channels=C secs=S rate=R`.
fn filled_secs(line: &str) -> Option<f64> {
    line.strip_prefix("filled ")?
        .split_whitespace()
        .find_map(|word| word.strip_prefix("secs="))?
        .parse()
        .ok()
}

fn read_sample(path: &Path) -> Result<Vec<SampleDevice>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("sample line {line}")))
        .collect()
}

/// The PUT URL of every channel of `devices` on the server at `endpoint`.
fn put_urls(endpoint: SocketAddr, devices: &[SampleDevice]) -> Result<Vec<String>> {
    devices
        .iter()
        .flat_map(|d| &d.channels)
        .map(|c| Ok(format!("http://{endpoint}{}", c.path()?)))
        .collect()
}

/// The retention phase on the store in `dir`: restart with the short TTL, PUTs to the
/// live devices while the sweep runs and after, hello again, stop, disk.
fn measure_retention(
    bench: &Bench,
    dir: &Path,
    expected: u64,
    live: &[SampleDevice],
    versions: Arc<AtomicU64>,
    p: &ScaleParams,
    runtime: &tokio::runtime::Runtime,
) -> Result<RetentionRun> {
    println!(
        "bench: retention: restarting with {TTL_FLAG} {SHORT_TTL}, expecting {expected} devices removed"
    );
    let (mut server, started) = start(bench, dir, Some(SHORT_TTL), runtime)?;
    let began = Instant::now();
    let admin = server.admin.context("no admin listener")?;
    let targets = Arc::new(put_urls(server.endpoint, live)?);
    let done = Arc::new(AtomicBool::new(false));
    let (during, swept) = runtime.block_on(async {
        let watcher = tokio::spawn(watch_sweep(
            admin,
            expected,
            p.sweep_timeout,
            began,
            done.clone(),
        ));
        let during = put_load(
            targets.clone(),
            versions.clone(),
            Some(done.clone()),
            p.sweep_timeout,
        )
        .await?;
        let swept = watcher.await.context("sweep watcher")??;
        Ok::<_, anyhow::Error>((during, swept))
    })?;
    server.check_alive()?;
    check_puts("PUT phase during the sweep", &during, p.strict)?;
    if p.strict && swept.finished.is_none() {
        bail!(
            "retention removed {} of {expected} devices within {:?}",
            swept.removed,
            p.sweep_timeout
        );
    }
    match swept.finished {
        Some(secs) => println!(
            "bench: retention: {} devices removed in {secs:.1} s",
            swept.removed
        ),
        None => eprintln!(
            "bench: retention: only {} of {expected} devices removed within {:?}",
            swept.removed, p.sweep_timeout
        ),
    }
    // What retention left, before anything else is written: the store's own
    // compaction after a big sweep first, then a clean stop, and at rest again, as the
    // full store was measured (RocksDB replays into tables the log of the PUTs above).
    let settle_secs = settle(&dir.join("data"), p.settle_cap);
    server.check_alive()?;
    server.stop()?;
    let disk_served = Disk::measure(&dir.join("data"))?;
    let (rest, _) = start(bench, dir, Some(SHORT_TTL), runtime)?;
    rest.stop()?;
    let disk = Disk::measure(&dir.join("data"))?;

    // The same PUTs on a server with nothing left to sweep.
    let (mut server, _) = start(bench, dir, Some(SHORT_TTL), runtime)?;
    let targets = Arc::new(put_urls(server.endpoint, live)?);
    let after = runtime.block_on(put_load(
        targets,
        versions.clone(),
        None,
        Duration::from_secs_f64(p.secs),
    ))?;
    check_puts("PUT phase after the sweep", &after, p.strict)?;
    // The live devices collect what the PUTs left.
    let hello = runtime.block_on(hello_phase(server.ws, server.endpoint, live, versions))?;
    check_hellos("hello phase after the sweep", &hello, p.strict)?;
    server.check_alive()?;
    server.stop()?;
    Ok(RetentionRun {
        startup_ms: started.status_ms,
        expected,
        removed: swept.removed,
        sweep_secs: swept.finished,
        during,
        after,
        hello,
        settle_secs,
        disk_served,
        disk,
    })
}

/// Waits until the bytes on disk under `data` have not changed for 5 s (a store's
/// background compactions after the sweep), at most `cap` seconds; answers how long.
fn settle(data: &Path, cap: f64) -> f64 {
    let began = Instant::now();
    if cap <= 0.0 {
        return 0.0;
    }
    let mut last = Disk::measure(data).map(|d| d.allocated).unwrap_or(0);
    let mut stable_since = Instant::now();
    while began.elapsed().as_secs_f64() < cap {
        std::thread::sleep(Duration::from_secs(1));
        let now = Disk::measure(data).map(|d| d.allocated).unwrap_or(0);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(5) {
            break;
        }
    }
    round1(began.elapsed().as_secs_f64())
}

/// What the sweep watcher saw.
struct Swept {
    removed: u64,
    /// Seconds from the server's start until `removed` reached the expected count.
    finished: Option<f64>,
}

/// Reads the removed-devices counter of `/metrics` until it reaches `expected` or
/// `timeout` passes; sets `done` either way.
async fn watch_sweep(
    admin: SocketAddr,
    expected: u64,
    timeout: Duration,
    began: Instant,
    done: Arc<AtomicBool>,
) -> Result<Swept> {
    let client = client(1)?;
    let url = format!("http://{admin}/metrics");
    let mut removed = 0;
    let mut last_print = Instant::now();
    let outcome = loop {
        if let Ok(response) = client.get(&url).send().await
            && let Ok(text) = response.text().await
        {
            removed = removed_devices(&text).unwrap_or(removed);
        }
        if removed >= expected {
            break Swept {
                removed,
                finished: Some(round1(began.elapsed().as_secs_f64())),
            };
        }
        if began.elapsed() >= timeout {
            break Swept {
                removed,
                finished: None,
            };
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            println!("bench: retention: {removed}/{expected} devices removed");
        }
        tokio::time::sleep(METRICS_PERIOD).await;
    };
    done.store(true, Ordering::Relaxed);
    Ok(outcome)
}

/// The devices retention removed so far, from a `/metrics` text.
fn removed_devices(metrics: &str) -> Option<u64> {
    const NAME: &str = "simplepush_retention_removed_total{";
    metrics
        .lines()
        .filter(|line| line.starts_with(NAME) && line.contains("what=\"devices\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .reduce(|a, b| a + b)
}

/// A `KEY:  N kB` line of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_value(&status, key)
}

fn status_value(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// PUT answers of a closed-loop phase.
#[derive(Debug, Clone, Default)]
struct PutLoad {
    /// Latency of 2xx answers.
    ok: Latency,
    /// Answers by status.
    statuses: BTreeMap<u16, u64>,
    /// PUTs without an answer.
    errors: u64,
    first_error: Option<String>,
    secs: f64,
}

impl PutLoad {
    fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    fn rate(&self) -> f64 {
        self.answered() as f64 / self.secs.max(1e-9)
    }

    fn not_202(&self) -> u64 {
        self.answered() - self.statuses.get(&202).copied().unwrap_or(0)
    }

    fn merge(&mut self, other: PutLoad) {
        self.ok.merge(&other.ok);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The figures of one PUT round.
#[derive(Debug, Clone, Copy)]
struct PutRound {
    rate: f64,
    p99_us: f64,
}

impl PutRound {
    fn of(load: &PutLoad) -> PutRound {
        PutRound {
            rate: load.rate(),
            p99_us: load.ok.summary().p99_us as f64,
        }
    }
}

impl SizeRun {
    /// The median of the rounds' PUT rates.
    fn put_rate(&self) -> f64 {
        median(self.put_rounds.iter().map(|r| r.rate))
    }

    /// The median of the rounds' PUT p99s, µs.
    fn put_p99_us(&self) -> f64 {
        median(self.put_rounds.iter().map(|r| r.p99_us))
    }
}

/// The middle value (the mean of the two middle ones for an even count; 0 for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Fails when `strict` and a PUT went unanswered or was not a 202 (every device is
/// offline); otherwise only says so.
fn check_puts(what: &str, load: &PutLoad, strict: bool) -> Result<()> {
    if load.errors + load.not_202() == 0 {
        return Ok(());
    }
    let message = format!(
        "{what}: {} PUT(s) unanswered (first: {}), answers {:?} (all should be 202)",
        load.errors,
        load.first_error.as_deref().unwrap_or("-"),
        load.statuses
    );
    if strict {
        bail!(message);
    }
    eprintln!("bench: {message}");
    Ok(())
}

/// A per-task generator of indexes (xorshift64*), seeded apart.
struct Pick(u64);

impl Pick {
    fn new(task: usize) -> Pick {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Pick((task as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ nanos | 1)
    }

    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let n = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (n % bound.max(1) as u64) as usize
    }
}

/// PUTs `version=N` (N from `versions`, ever increasing) to random `targets`,
/// [`PUT_CONCURRENCY`] in flight, until `secs` passed or `stop` is set.
async fn put_load(
    targets: Arc<Vec<String>>,
    versions: Arc<AtomicU64>,
    stop: Option<Arc<AtomicBool>>,
    secs: Duration,
) -> Result<PutLoad> {
    if targets.is_empty() {
        bail!("no device to PUT to");
    }
    let client = client(PUT_CONCURRENCY)?;
    let began = Instant::now();
    let deadline = began + secs;
    let mut tasks = Vec::with_capacity(PUT_CONCURRENCY);
    for task in 0..PUT_CONCURRENCY {
        let (client, targets, versions, stop) = (
            client.clone(),
            targets.clone(),
            versions.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut pick = Pick::new(task);
            let mut load = PutLoad::default();
            while Instant::now() < deadline
                && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
            {
                let url = &targets[pick.below(targets.len())];
                let version = versions.fetch_add(1, Ordering::Relaxed);
                put_once(&client, url, version, &mut load).await;
            }
            load
        }));
    }
    let mut total = PutLoad::default();
    for task in tasks {
        total.merge(task.await.context("PUT task")?);
    }
    total.secs = began.elapsed().as_secs_f64();
    Ok(total)
}

/// One PUT, its answer and latency recorded in `load`.
async fn put_once(client: &reqwest::Client, url: &str, version: u64, load: &mut PutLoad) {
    let sent = Instant::now();
    let answer = client
        .put(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("version={version}"))
        .send()
        .await;
    match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            *load.statuses.entry(status).or_default() += 1;
            if (200..300).contains(&status) {
                load.ok.record(micros);
            }
        }
        Err(e) => {
            load.errors += 1;
            if load.first_error.is_none() {
                load.first_error = Some(format!("{e:#}"));
            }
        }
    }
}

/// Hello + flush of a set of devices.
#[derive(Debug, Clone, Default)]
struct HelloLoad {
    /// From hello sent to the last pending notification received.
    latency: Latency,
    failed: u64,
    first_error: Option<String>,
}

fn check_hellos(what: &str, load: &HelloLoad, strict: bool) -> Result<()> {
    if load.failed == 0 {
        return Ok(());
    }
    let message = format!(
        "{what}: {} device(s) failed; first: {}",
        load.failed,
        load.first_error.as_deref().unwrap_or("-")
    );
    if strict {
        bail!(message);
    }
    eprintln!("bench: {message}");
    Ok(())
}

/// Gives every channel of `devices` a pending update (PUT, 202), then has each device
/// say hello with its uaid and channels, [`HELLO_CONCURRENCY`] at once, and times the
/// flush of those updates; each device acks what it got and closes.
async fn hello_phase(
    ws: SocketAddr,
    endpoint: SocketAddr,
    devices: &[SampleDevice],
    versions: Arc<AtomicU64>,
) -> Result<HelloLoad> {
    let client = client(PUT_CONCURRENCY)?;
    // The version each channel must get back, device by device.
    let mut expected: Vec<Vec<u64>> = devices
        .iter()
        .map(|d| {
            d.channels
                .iter()
                .map(|_| versions.fetch_add(1, Ordering::Relaxed))
                .collect()
        })
        .collect();
    let mut puts = Vec::new();
    for (d, device) in devices.iter().enumerate() {
        for (c, channel) in device.channels.iter().enumerate() {
            puts.push((d, c, format!("http://{endpoint}{}", channel.path()?)));
        }
    }
    let prepared = futures_util::stream::iter(puts)
        .map(|(d, c, url)| {
            let (client, version) = (client.clone(), expected[d][c]);
            async move {
                let mut load = PutLoad::default();
                put_once(&client, &url, version, &mut load).await;
                (d, load.statuses.contains_key(&202), load.first_error)
            }
        })
        .buffer_unordered(PUT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut result = HelloLoad::default();
    let mut skip = vec![false; devices.len()];
    for (d, accepted, error) in prepared {
        if !accepted && !skip[d] {
            skip[d] = true;
            result.failed += 1;
            if result.first_error.is_none() {
                result.first_error = Some(format!(
                    "the PUT before hello was not answered 202 ({})",
                    error.unwrap_or_else(|| "another status".into())
                ));
            }
        }
    }
    for (d, skipped) in skip.iter().enumerate() {
        if *skipped {
            expected[d].clear();
        }
    }
    let outcomes = futures_util::stream::iter(devices.iter().zip(&expected))
        .filter(|(_, versions)| std::future::ready(!versions.is_empty()))
        .map(|(device, versions)| async move {
            tokio::time::timeout(REQUEST_TIMEOUT, hello_flush(ws, device, versions))
                .await
                .unwrap_or_else(|_| bail!("no flush within {REQUEST_TIMEOUT:?}"))
        })
        .buffer_unordered(HELLO_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for outcome in outcomes {
        match outcome {
            Ok(micros) => result.latency.record(micros),
            Err(e) => {
                result.failed += 1;
                if result.first_error.is_none() {
                    result.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    Ok(result)
}

/// One returning device: connects, says hello with its uaid and channels, waits until
/// each channel's notification carries at least `expected` (its version), acks each
/// notification, closes. Answers microseconds from hello sent to the last one received.
async fn hello_flush(ws: SocketAddr, device: &SampleDevice, expected: &[u64]) -> Result<u64> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/"))
        .await
        .context("connect")?;
    let channels: Vec<&str> = device
        .channels
        .iter()
        .map(|c| c.channel_id.as_str())
        .collect();
    let hello = json!({"messageType": "hello", "uaid": device.uaid, "channelIDs": channels});
    let sent = Instant::now();
    socket.send(Message::text(hello.to_string())).await?;
    let mut missing: Vec<bool> = vec![true; channels.len()];
    let mut greeted = false;
    while !greeted || missing.iter().any(|m| *m) {
        let frame = socket
            .next()
            .await
            .context("the server closed before the flush")??;
        let Message::Text(text) = frame else { continue };
        let message: Value = serde_json::from_str(text.as_str())?;
        match message["messageType"].as_str() {
            Some("hello") => {
                if message["status"] != json!(200) || message["uaid"] != json!(device.uaid) {
                    bail!("hello answered {message}: the store lost the device");
                }
                greeted = true;
            }
            Some("notification") => {
                let updates = message["updates"].as_array().cloned().unwrap_or_default();
                for update in &updates {
                    let version = update["version"].as_u64().unwrap_or(0);
                    if let Some(i) = channels.iter().position(|c| update["channelID"] == *c)
                        && version >= expected[i]
                    {
                        missing[i] = false;
                    }
                }
                let ack = json!({"messageType": "ack", "updates": updates});
                socket.send(Message::text(ack.to_string())).await?;
            }
            _ => {}
        }
    }
    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _ = socket.close(None).await;
    Ok(micros)
}

/// The outcome of one size.
fn size_outcome(backend: &str, run: &SizeRun, empty: &Empty) -> Outcome {
    let n = run.devices.max(1) as f64;
    let put = run.put.ok.summary();
    let hello = run.hello.latency.summary();
    let mut metrics = vec![
        Metric::new("fill_secs", (run.fill_secs * 100.0).round() / 100.0, "s"),
        Metric::new(
            "fill_devices_per_sec",
            (n / run.fill_secs.max(1e-3)).round(),
            "/s",
        ),
        Metric::new("first_startup_ms", round1(run.first_startup_ms), "ms"),
        Metric::new("startup_ms", round1(run.startup_ms), "ms"),
        Metric::new("listening_ms", round1(run.listening_ms), "ms"),
        Metric::new("rss_start_kib", run.rss_start_kib, "KiB"),
        Metric::new("rss_end_kib", run.rss_end_kib, "KiB"),
        Metric::new("rss_end_file_kib", run.rss_file_kib, "KiB"),
        Metric::new("rss_idle_kib", run.rss_idle_kib, "KiB"),
        Metric::new("put_per_sec", run.put_rate().round(), "/s"),
        Metric::new("put_p50_us", put.p50_us as f64, "µs"),
        Metric::new("put_p99_us", run.put_p99_us(), "µs"),
        Metric::new("put_p99_us_all_rounds", put.p99_us as f64, "µs"),
        Metric::new(
            "put_202",
            *run.put.statuses.get(&202).unwrap_or(&0) as f64,
            "",
        ),
        Metric::new("put_not_202", run.put.not_202() as f64, ""),
        Metric::new("put_unanswered", run.put.errors as f64, ""),
        Metric::new("hellos", hello.count as f64, ""),
        Metric::new("hello_failed", run.hello.failed as f64, ""),
        Metric::new("hello_flush_p50_us", hello.p50_us as f64, "µs"),
        Metric::new("hello_flush_p99_us", hello.p99_us as f64, "µs"),
        Metric::new("disk_after_fill_bytes", run.disk_fill.allocated as f64, "B"),
        Metric::new("disk_bytes", run.disk.allocated as f64, "B"),
        Metric::new("disk_apparent_bytes", run.disk.apparent as f64, "B"),
        Metric::new(
            "disk_after_serving_bytes",
            run.disk_served.allocated as f64,
            "B",
        ),
        Metric::new(
            "bytes_per_device",
            (run.disk.allocated as f64 / n).round(),
            "B",
        ),
        Metric::new(
            "bytes_per_device_net",
            (run.disk.allocated.saturating_sub(empty.disk.allocated) as f64 / n).round(),
            "B",
        ),
        Metric::new("empty_disk_bytes", empty.disk.allocated as f64, "B"),
    ];
    println!(
        "bench: {backend}, {} devices on disk: after the fill {} ({}); at rest {} ({}); \
         after serving {} ({})",
        run.devices,
        human_bytes(run.disk_fill.allocated),
        run.disk_fill.breakdown(),
        human_bytes(run.disk.allocated),
        run.disk.breakdown(),
        human_bytes(run.disk_served.allocated),
        run.disk_served.breakdown()
    );
    if let Some(r) = &run.retention {
        let during = r.during.ok.summary();
        let after = r.after.ok.summary();
        let (allowed, _) = retention_goal(run, empty, r);
        metrics.extend([
            Metric::new("live_devices", run.live as f64, ""),
            Metric::new("retention_startup_ms", round1(r.startup_ms), "ms"),
            Metric::new("removed_devices", r.removed as f64, "")
                .goal("all not seen within the TTL", r.removed >= r.expected),
            Metric::new("sweep_secs", r.sweep_secs.unwrap_or(-1.0), "s"),
            Metric::new("put_per_sec_during_sweep", r.during.rate().round(), "/s"),
            Metric::new("put_p99_us_during_sweep", during.p99_us as f64, "µs"),
            Metric::new("put_per_sec_after_sweep", r.after.rate().round(), "/s"),
            Metric::new("put_p99_us_after_sweep", after.p99_us as f64, "µs"),
            Metric::new(
                "hello_flush_p99_us_after_sweep",
                r.hello.latency.summary().p99_us as f64,
                "µs",
            ),
            Metric::new("settle_secs", r.settle_secs, "s"),
            Metric::new(
                "disk_after_retention_served_bytes",
                r.disk_served.allocated as f64,
                "B",
            ),
            Metric::new("disk_after_retention_bytes", r.disk.allocated as f64, "B"),
            Metric::new(
                "disk_reclaimed_bytes",
                run.disk.allocated as f64 - r.disk.allocated as f64,
                "B",
            ),
            Metric::new(
                "retention_disk_over_empty_plus_live",
                (r.disk.data() as f64 / allowed.max(1.0) * 1.5 * 100.0).round() / 100.0,
                "×",
            ),
        ]);
        println!(
            "bench: {backend}, {} devices on disk after retention: {} ({}); at rest {} ({})",
            run.devices,
            human_bytes(r.disk_served.allocated),
            r.disk_served.breakdown(),
            human_bytes(r.disk.allocated),
            r.disk.breakdown()
        );
    }
    Outcome {
        scenario: "store-scale",
        dialect: Dialect::Simplepush,
        backend: backend.to_owned(),
        params: vec![("devices", run.devices as f64), ("channels", 2.0)],
        metrics,
    }
}

/// The disk retention may leave (1.5 × the empty store plus the live devices' share at
/// the net bytes per device of this size; data files only, see [`Disk::data`]) and
/// whether the sweep finished and left no more.
fn retention_goal(run: &SizeRun, empty: &Empty, r: &RetentionRun) -> (f64, bool) {
    let net = run.disk.data().saturating_sub(empty.disk.data()) as f64 / run.devices.max(1) as f64;
    let allowed = 1.5 * (empty.disk.data() as f64 + run.live as f64 * net);
    (
        allowed,
        r.sweep_secs.is_some() && (r.disk.data() as f64) <= allowed,
    )
}

/// The large run against the small one, held to the targets.
fn ratio_outcome(backend: &str, small: &SizeRun, large: &SizeRun, empty: &Empty) -> Outcome {
    let ratio = |a: f64, b: f64| (a / b.max(1e-9) * 100.0).round() / 100.0;
    let rate = ratio(small.put_rate(), large.put_rate());
    let p99 = ratio(large.put_p99_us(), small.put_p99_us());
    let rss = ratio(large.rss_end_kib, small.rss_end_kib);
    let per_device = (large.disk.allocated as f64 / large.devices.max(1) as f64).round();
    let hello = ratio(
        large.hello.latency.summary().p99_us as f64,
        small.hello.latency.summary().p99_us as f64,
    );
    let mut metrics = vec![
        Metric::new("put_rate_small_over_large", rate, "×").goal("<= 1.5", rate <= 1.5),
        Metric::new("put_p99_large_over_small", p99, "×").goal("<= 1.5", p99 <= 1.5),
        Metric::new("rss_large_over_small", rss, "×").goal("<= 1.2", rss <= 1.2),
        Metric::new(
            "rss_idle_large_over_small",
            ratio(large.rss_idle_kib, small.rss_idle_kib),
            "×",
        ),
        Metric::new("bytes_per_device_large", per_device, "B")
            .goal("<= 300 B", per_device <= 300.0),
        Metric::new("hello_p99_large_over_small", hello, "×"),
        Metric::new(
            "startup_large_over_small",
            ratio(large.startup_ms, small.startup_ms),
            "×",
        ),
    ];
    match &large.retention {
        Some(r) => {
            let (allowed, met) = retention_goal(large, empty, r);
            let value = ratio(r.disk.data() as f64, allowed / 1.5);
            metrics.push(
                Metric::new("retention_disk_over_empty_plus_live", value, "×").goal("<= 1.5", met),
            );
            // The same with every file, RocksDB's info logs included.
            let net = large.disk.allocated.saturating_sub(empty.disk.allocated) as f64
                / large.devices.max(1) as f64;
            let base = empty.disk.allocated as f64 + large.live as f64 * net;
            metrics.push(Metric::new(
                "retention_disk_all_files_over_empty_plus_live",
                ratio(r.disk.allocated as f64, base),
                "×",
            ));
            let during = r.during.ok.summary().p99_us as f64;
            let after = r.after.ok.summary().p99_us as f64;
            metrics.push(Metric::new(
                "sweep_put_p99_during_over_after",
                ratio(during, after),
                "×",
            ));
        }
        None => metrics.push(
            Metric::new("retention_disk_over_empty_plus_live", -1.0, "×")
                .goal("<= 1.5 (not measured: no retention)", false),
        ),
    }
    Outcome {
        scenario: "store-scale-ratios",
        dialect: Dialect::Simplepush,
        backend: backend.to_owned(),
        params: vec![
            ("small", small.devices as f64),
            ("large", large.devices as f64),
        ],
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_whatever_the_order() {
        assert_eq!(median([7.9, 4.9, 5.2].into_iter()), 5.2);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn files_of_both_stores_are_classified() {
        assert_eq!(file_kind("000123.sst"), "sst");
        assert_eq!(file_kind("000124.log"), "rocksdb-wal");
        assert_eq!(file_kind("LOG.old.1700000000"), "rocksdb-info-log");
        assert_eq!(file_kind("MANIFEST-000005"), "manifest");
        assert_eq!(file_kind("simplepush.sqlite3-wal"), "sqlite-wal");
        assert_eq!(file_kind("simplepush.sqlite3"), "sqlite-db");
        assert_eq!(file_kind("token.key"), "token-key");
    }

    #[test]
    fn disk_counts_every_file_under_the_tree() {
        let dir = ScratchDir::new("disk-test").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.sst"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.path().join("sub").join("token.key"), b"k").unwrap();
        std::fs::write(dir.path().join("LOG"), vec![b'x'; 5000]).unwrap();
        let disk = Disk::measure(dir.path()).unwrap();
        assert_eq!(disk.apparent, 15_001);
        assert!(disk.allocated >= 15_000, "{disk:?}");
        assert_eq!(disk.kinds.len(), 3, "{disk:?}");
        // RocksDB's info log is on disk but not data.
        assert_eq!(disk.allocated - disk.data(), disk.kinds["rocksdb-info-log"]);
        assert!(disk.kinds["rocksdb-info-log"] >= 5000, "{disk:?}");
        assert_eq!(
            Disk::measure(&dir.path().join("none")).unwrap().allocated,
            0
        );
    }

    #[test]
    fn removed_devices_are_read_from_metrics() {
        let text = "# TYPE simplepush_retention_removed_total counter\n\
            simplepush_retention_removed_total{what=\"devices\",backend=\"sqlite\"} 998000\n\
            simplepush_retention_removed_total{what=\"messages\",backend=\"sqlite\"} 7\n";
        assert_eq!(removed_devices(text), Some(998_000));
        assert_eq!(removed_devices("simplepush_connections 3\n"), None);
    }

    #[test]
    fn status_lines_are_read_by_key() {
        let status = "VmRSS:\t  4000 kB\nRssAnon:\t  3000 kB\nRssFile:\t  1000 kB\n";
        assert_eq!(status_value(status, "RssFile:"), Some(1000));
        assert_eq!(status_value(status, "RssShmem:"), None);
        assert!(status_kib(std::process::id(), "RssAnon:").unwrap() > 0);
    }

    #[test]
    fn the_fill_line_gives_its_seconds() {
        let line = "filled devices=1000000 channels=2 secs=61.5 rate=16260";
        assert_eq!(filled_secs(line), Some(61.5));
        assert_eq!(filled_secs("Error: no store"), None);
    }

    #[test]
    fn picks_stay_in_bounds_and_spread() {
        let mut pick = Pick::new(3);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[pick.below(10)] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
    }
}
