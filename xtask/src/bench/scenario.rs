//! The scenarios: each starts its server(s) and workers, measures, stops everything
//! (guards) and returns an [`Outcome`], comparing with the baseline where one applies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::fleet::{Fleet, MAX_SOCKETS_PER_WORKER};
use super::report::{Metric, Outcome};
use super::stats::Latency;
use super::target::ServerProc;
use super::worker::{ConnectReport, Dialect, Job, PutReport};
use crate::memcached::Cluster;

/// Parameters of one scenario run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Devices to connect.
    pub connections: usize,
    /// Connects per second (idle, connect) or PUTs per second (notify, overload, cluster).
    pub rate: f64,
    /// Length of the measured phase, seconds.
    pub secs: f64,
    /// Worker processes (0: enough for the sockets, at least 2 for load).
    pub workers: usize,
    /// The protocol of the devices and pushes (overload's probe is always SimplePush).
    pub dialect: Dialect,
}

/// What every scenario needs: the binary, the backend, and the switches.
pub struct Bench {
    /// The `simplepush` binary.
    pub binary: PathBuf,
    /// Whether to also measure the baseline.
    pub baseline: bool,
    /// `[store] fsync` for sqlite and rocksdb.
    pub fsync: bool,
    /// Fail when a device or a notification is lost (smoke).
    pub strict: bool,
}

/// A backend under test, with the memcached servers it needs.
pub struct Backend {
    /// `memory`, `sqlite`, `rocksdb` or `memcache`.
    pub name: String,
    pub(crate) memcached: Option<Cluster>,
}

impl Backend {
    /// Prepares `name`: starts two memcached servers for `memcache`.
    pub fn start(name: &str) -> Result<Backend> {
        let memcached = if name == "memcache" {
            Some(Cluster::start(2)?)
        } else {
            None
        };
        Ok(Backend {
            name: name.to_owned(),
            memcached,
        })
    }

    fn servers(&self) -> String {
        let list = self
            .memcached
            .as_ref()
            .map(Cluster::env_value)
            .unwrap_or_default();
        let quoted: Vec<String> = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| format!("\"{s}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }
}

/// The server config of a benchmark node. Pings and commands are not throttled: the
/// generator's devices ack every notification, at whatever rate a scenario pushes.
fn config(bench: &Bench, backend: &Backend, extra_server: &str) -> String {
    let mut text = format!(
        "[server]\nws_addr = \"127.0.0.1:0\"\nendpoint_addr = \"127.0.0.1:0\"\n\
         admin_addr = \"127.0.0.1:0\"\n{extra_server}\
         [protocol]\nmin_ping_interval = \"0\"\ncommand_rate = 0\n\
         [store]\nbackend = \"{}\"\npath = \"data\"\nfsync = {}\n",
        backend.name, bench.fsync
    );
    if backend.memcached.is_some() {
        text.push_str(&format!("servers = {}\n", backend.servers()));
        text.push_str("[router]\naddr = \"127.0.0.1:0\"\nsecret = \"bench-secret\"\n");
    }
    text.push_str("[log]\nlevel = \"warn\"\n");
    text
}

impl Bench {
    pub(crate) fn start_server(&self, backend: &Backend, extra: &str) -> Result<ServerProc> {
        // A memcache node refuses to start without token keys: a single node gets its own.
        if backend.memcached.is_some() && !extra.contains("token_keys") {
            let extra = format!("{extra}token_keys = [\"{}\"]\n", genkey(&self.binary)?);
            return ServerProc::simplepush(&self.binary, &config(self, backend, &extra));
        }
        ServerProc::simplepush(&self.binary, &config(self, backend, extra))
    }

    /// `idle`: RSS per connection and CPU while idle.
    pub fn idle(&self, backend: &Backend, p: &Params) -> Result<Outcome> {
        let base = self.maybe(|| idle_run(&mut ServerProc::baseline()?, p, true, false))?;
        let mut server = self.start_server(backend, "")?;
        let run = idle_run(&mut server, p, false, self.strict)?;
        let per_conn = run.rss_delta_kib * 1024.0 / run.connected.max(1) as f64;
        let base_per_conn = base
            .as_ref()
            .map(|b| b.rss_delta_kib * 1024.0 / b.connected.max(1) as f64);
        let mut metrics = vec![
            Metric::new("connected", run.connected as f64, "")
                .vs(base.as_ref().map(|b| b.connected as f64)),
            Metric::new("rss_per_conn_bytes", per_conn.round(), "B")
                .vs(base_per_conn.map(f64::round))
                .goal(
                    "<= 2048 B at 15,000+",
                    per_conn <= 2048.0 && run.connected >= 15_000,
                ),
            Metric::new("rss_before_kib", run.rss_before_kib, "KiB"),
            Metric::new(
                "rss_after_kib",
                run.rss_before_kib + run.rss_delta_kib,
                "KiB",
            ),
            Metric::new("idle_cpu_percent", run.idle_cpu_percent, "%")
                .vs(base.as_ref().map(|b| b.idle_cpu_percent)),
        ];
        metrics.push(Metric::new("connect_failed", run.failed as f64, ""));
        Ok(Outcome {
            scenario: "idle",
            dialect: p.dialect,
            backend: backend.name.clone(),
            params: vec![
                ("connections", p.connections as f64),
                ("connect_rate", p.rate),
                ("idle_secs", p.secs),
            ],
            metrics,
        })
    }

    /// `connect`: hello + register rate and latency.
    pub fn connect(&self, backend: &Backend, p: &Params) -> Result<Outcome> {
        let base = self.maybe(|| connect_run(&mut ServerProc::baseline()?, p, true, false))?;
        let mut server = self.start_server(backend, "")?;
        let run = connect_run(&mut server, p, false, self.strict)?;
        let b = base.as_ref();
        let lat = run.report.latency.summary();
        let blat = b.map(|b| b.report.latency.summary());
        Ok(Outcome {
            scenario: "connect",
            dialect: p.dialect,
            backend: backend.name.clone(),
            params: vec![
                ("connections", p.connections as f64),
                ("offered_rate", p.rate),
            ],
            metrics: vec![
                Metric::new("connected", run.report.connected as f64, ""),
                Metric::new("connect_failed", run.report.failed as f64, ""),
                Metric::new("rate_per_sec", run.rate.round(), "/s")
                    .vs(b.map(|b| b.rate.round()))
                    .goal(">= 10,000/s", run.rate >= 10_000.0),
                Metric::new("p50_us", lat.p50_us as f64, "µs").vs(blat.map(|l| l.p50_us as f64)),
                Metric::new("p99_us", lat.p99_us as f64, "µs").vs(blat.map(|l| l.p99_us as f64)),
                Metric::new("p999_us", lat.p999_us as f64, "µs").vs(blat.map(|l| l.p999_us as f64)),
                Metric::new("server_cpu_us_per_connect", run.cpu_us_per.round(), "µs")
                    .vs(b.map(|b| b.cpu_us_per.round())),
            ],
        })
    }

    /// `notify`: PUT → notification → ack at a fixed rate.
    pub fn notify(&self, backend: &Backend, p: &Params) -> Result<Outcome> {
        let base = self.maybe(|| {
            let mut server = ServerProc::baseline()?;
            let (ws, put_to) = (server.ws, server.endpoint);
            put_run(&mut [&mut server], ws, put_to, p, true, false)
        })?;
        let mut server = self.start_server(backend, "")?;
        let (ws, put_to) = (server.ws, server.endpoint);
        let run = put_run(&mut [&mut server], ws, put_to, p, false, self.strict)?;
        let lat = run.report.notify_latency.summary();
        let put = run.report.ok_latency.summary();
        let b = base.as_ref();
        // The baseline has no notification: its PUT round trip is the comparison.
        let bput = b.map(|b| b.report.ok_latency.summary());
        let p99_goal = match p.dialect {
            Dialect::Simplepush => ("< 5000 µs at 10,000/s", 10_000.0),
            Dialect::Webpush => ("< 5000 µs at 5,000/s", 5_000.0),
        };
        let mut metrics = put_metrics(&run);
        metrics.extend([
            Metric::new("notify_p50_us", lat.p50_us as f64, "µs").vs(bput.map(|l| l.p50_us as f64)),
            Metric::new("notify_p99_us", lat.p99_us as f64, "µs")
                .vs(bput.map(|l| l.p99_us as f64))
                .goal(p99_goal.0, lat.p99_us < 5000 && p.rate >= p99_goal.1),
            Metric::new("notify_p999_us", lat.p999_us as f64, "µs")
                .vs(bput.map(|l| l.p999_us as f64)),
            Metric::new("put_p99_us", put.p99_us as f64, "µs").vs(bput.map(|l| l.p99_us as f64)),
        ]);
        let cpu = Metric::new(
            "server_cpu_us_per_notification",
            round1(run.cpu_us_per),
            "µs",
        )
        .vs(b.map(|b| round1(b.cpu_us_per)));
        // WebPush's CPU goal is relative to SimplePush's: `run` compares them when the
        // same invocation measured both.
        metrics.push(match p.dialect {
            Dialect::Simplepush => cpu.goal("<= 25 µs", run.cpu_us_per <= 25.0),
            Dialect::Webpush => cpu,
        });
        Ok(Outcome {
            scenario: "notify",
            dialect: p.dialect,
            backend: backend.name.clone(),
            params: vec![
                ("connections", p.connections as f64),
                ("rate", p.rate),
                ("secs", p.secs),
            ],
            metrics,
        })
    }

    /// `overload`: PUTs at `p.rate` (10× the sustainable rate) against a node whose
    /// in-flight limit is small enough to be reached. A [`Probe`] (one well-behaved app
    /// server and its device, outside the saturated workers) measures what the server
    /// answers someone who is not part of the storm, during it and after it.
    pub fn overload(&self, backend: &Backend, p: &Params, max_inflight: usize) -> Result<Outcome> {
        let extra = format!("max_inflight_requests = {max_inflight}\n");
        let mut server = self.start_server(backend, &extra)?;
        let (ws, put_to) = (server.ws, server.endpoint);
        let rss_before = server.rss_kib()? as f64;
        let probe = Probe::start(ws, put_to, server.admin)?;
        let run = put_run(&mut [&mut server], ws, put_to, p, false, false);
        let during = probe.finish();
        let run = run?;
        let during = during?;
        // The storm is over: the same app server again, alone.
        let after = Probe::start(ws, put_to, server.admin)?;
        std::thread::sleep(PROBE_AFTER);
        let after = after.finish()?;
        let rss_after = server.rss_kib()? as f64;
        if self.strict && run.report.lost + during.lost + after.lost > 0 {
            bail!(
                "overload: {} accepted updates were never delivered",
                run.report.lost + during.lost + after.lost
            );
        }
        let r = &run.report;
        let answered: u64 = r.statuses.values().sum();
        let unavailable = r.statuses.get(&503).copied().unwrap_or(0);
        let l503 = r.unavailable_latency.summary();
        let mut metrics = put_metrics(&run);
        metrics.extend([
            Metric::new(
                "share_503_percent",
                round1(100.0 * unavailable as f64 / answered.max(1) as f64),
                "%",
            ),
            Metric::new("p50_503_us", l503.p50_us as f64, "µs"),
            Metric::new("p99_503_us", l503.p99_us as f64, "µs")
                .goal("< 1000 µs", unavailable > 0 && l503.p99_us < 1000),
            Metric::new("p99_2xx_us", r.ok_latency.summary().p99_us as f64, "µs"),
            Metric::new("shed_queue_delay", after.shed_queue_delay as f64, ""),
            Metric::new("shed_inflight", after.shed_inflight as f64, ""),
        ]);
        let probe_2xx = during.ok.summary();
        let probe_503 = during.unavailable.summary();
        let probe_notify = during.notify.summary();
        let answered = during.ok.count() + during.unavailable.count();
        metrics.extend([
            Metric::new("probe_puts", during.sent as f64, ""),
            Metric::new(
                "probe_503_percent",
                round1(100.0 * probe_503.count as f64 / answered.max(1) as f64),
                "%",
            ),
            Metric::new("probe_p50_2xx_us", probe_2xx.p50_us as f64, "µs"),
            Metric::new("probe_p99_2xx_us", probe_2xx.p99_us as f64, "µs"),
            Metric::new("probe_p50_503_us", probe_503.p50_us as f64, "µs"),
            Metric::new("probe_p99_503_us", probe_503.p99_us as f64, "µs"),
            Metric::new("probe_notify_p99_us", probe_notify.p99_us as f64, "µs"),
            Metric::new("probe_errors", during.errors as f64, ""),
            Metric::new("probe_lost", (during.lost + after.lost) as f64, "")
                .goal("0", during.lost + after.lost == 0),
            Metric::new(
                "after_2xx_percent",
                round1(100.0 * after.ok.count() as f64 / after.sent.max(1) as f64),
                "%",
            )
            .goal("100 %", after.sent > 0 && after.ok.count() == after.sent),
            Metric::new("after_p99_2xx_us", after.ok.summary().p99_us as f64, "µs"),
            Metric::new("rss_before_kib", rss_before, "KiB"),
            Metric::new("rss_after_kib", rss_after, "KiB"),
        ]);
        Ok(Outcome {
            scenario: "overload",
            dialect: p.dialect,
            backend: backend.name.clone(),
            params: vec![
                ("connections", p.connections as f64),
                ("offered_rate", p.rate),
                ("secs", p.secs),
                ("max_inflight_requests", max_inflight as f64),
            ],
            metrics,
        })
    }

    /// `cluster`: devices on node A, PUTs to node B; B routes every update to A.
    pub fn cluster(&self, p: &Params) -> Result<Outcome> {
        let backend = Backend::start("memcache")?;
        let key = genkey(&self.binary)?;
        let extra = format!("token_keys = [\"{key}\"]\n");
        let mut a = self.start_server(&backend, &extra)?;
        let mut b = self.start_server(&backend, &extra)?;
        let (ws, put_to) = (a.ws, b.endpoint);
        let run = put_run(&mut [&mut a, &mut b], ws, put_to, p, false, self.strict)?;
        let lat = run.report.notify_latency.summary();
        let routed = run.report.received as f64 / run.report.secs.max(1e-9);
        let mut metrics = put_metrics(&run);
        metrics.extend([
            Metric::new("routed_per_sec", routed.round(), "/s"),
            Metric::new("notify_p50_us", lat.p50_us as f64, "µs"),
            Metric::new("notify_p99_us", lat.p99_us as f64, "µs"),
            Metric::new("notify_p999_us", lat.p999_us as f64, "µs"),
            Metric::new("cpu_us_per_notification_both", round1(run.cpu_us_per), "µs"),
        ]);
        Ok(Outcome {
            scenario: "cluster",
            dialect: p.dialect,
            backend: "memcache, 2 nodes".into(),
            params: vec![
                ("connections", p.connections as f64),
                ("rate", p.rate),
                ("secs", p.secs),
            ],
            metrics,
        })
    }

    /// Runs `f` when the baseline is wanted.
    fn maybe<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        if self.baseline {
            f().context("baseline").map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A probe PUT is sent this often (a well-behaved app server, not a storm).
const PROBE_PERIOD: Duration = Duration::from_millis(20);
/// How long the probe runs alone once the storm is over.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// Time limit of one probe step (connect, PUT, notification).
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// What the probe saw.
#[derive(Debug, Default)]
struct ProbeReport {
    /// PUTs sent.
    sent: u64,
    /// PUTs without an answer, with an unexpected status, or a 503 without Retry-After.
    errors: u64,
    /// Latency of 200/202 answers.
    ok: Latency,
    /// Latency of 503 answers.
    unavailable: Latency,
    /// From a PUT answered 200 to its notification on the device.
    notify: Latency,
    /// Updates answered 200 or 202 whose notification never came.
    lost: u64,
    /// `simplepush_requests_shed_total` by reason, read from `/metrics` at the end.
    shed_queue_delay: u64,
    shed_inflight: u64,
}

/// One well-behaved app server PUTting to its own connected device every
/// [`PROBE_PERIOD`], on a thread of its own: it is not one of the saturated workers, so
/// its latencies are the server's, not the load generator's own queueing.
struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<ProbeReport>>,
}

impl Probe {
    /// Connects the probe's device and starts PUTting.
    /// `admin` is the node's operator listener, where the shed counts are read.
    fn start(
        ws: std::net::SocketAddr,
        endpoint: std::net::SocketAddr,
        admin: Option<std::net::SocketAddr>,
    ) -> Result<Probe> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-probe".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("probe runtime")?
                    .block_on(probe_run(ws, endpoint, admin, &flag))
            })
            .context("starting the probe thread")?;
        Ok(Probe { stop, thread })
    }

    /// Stops PUTting and returns what was seen.
    fn finish(self) -> Result<ProbeReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

async fn probe_run(
    ws: std::net::SocketAddr,
    endpoint: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<ProbeReport> {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;

    let (mut device, _) = tokio::time::timeout(
        PROBE_WAIT,
        tokio_tungstenite::connect_async(format!("ws://{ws}/")),
    )
    .await
    .context("probe device: connect timed out")?
    .context("probe device: connect")?;
    let mut ask = async |message: Value, kind: &str| -> Result<Value> {
        device.send(Message::text(message.to_string())).await?;
        loop {
            let frame = tokio::time::timeout(PROBE_WAIT, device.next())
                .await
                .with_context(|| format!("probe device: no {kind} reply"))?
                .with_context(|| format!("probe device: closed before the {kind} reply"))??;
            if let Message::Text(text) = frame {
                let reply: Value = serde_json::from_str(text.as_str())?;
                if reply["messageType"] == json!(kind) {
                    return Ok(reply);
                }
            }
        }
    };
    ask(
        json!({"messageType": "hello", "uaid": "", "channelIDs": []}),
        "hello",
    )
    .await?;
    let channel = probe_channel();
    let reply = ask(
        json!({"messageType": "register", "channelID": channel}),
        "register",
    )
    .await?;
    let push_endpoint = reply["pushEndpoint"]
        .as_str()
        .with_context(|| format!("probe device: register answered {reply}"))?;
    let path = push_endpoint
        .find("/update/")
        .map(|at| &push_endpoint[at..])
        .with_context(|| format!("pushEndpoint without /update/: {push_endpoint}"))?;
    let url = format!("http://{endpoint}{path}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_WAIT)
        .tcp_nodelay(true)
        .build()?;
    let mut report = ProbeReport::default();
    let mut ticks = tokio::time::interval(PROBE_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut version = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        ticks.tick().await;
        version += 1;
        report.sent += 1;
        let sent = std::time::Instant::now();
        let response = match client
            .put(&url)
            .body(format!("version={version}"))
            .send()
            .await
        {
            Ok(response) => response,
            Err(_) => {
                report.errors += 1;
                continue;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let _ = response.bytes().await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        match status {
            200 | 202 => report.ok.record(micros),
            503 if retry_after => {
                report.unavailable.record(micros);
                continue;
            }
            _ => {
                report.errors += 1;
                continue;
            }
        }
        // Accepted: the device must get it (stored first, so also when it was 202).
        let delivered = tokio::time::timeout(PROBE_WAIT, async {
            while let Some(Ok(frame)) = device.next().await {
                let Message::Text(text) = frame else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                let updates = frame["updates"].as_array().cloned().unwrap_or_default();
                for update in &updates {
                    let seen = update["version"].as_u64().unwrap_or(0);
                    let ack = json!({"messageType": "ack", "updates": [update]});
                    let _ = device.send(Message::text(ack.to_string())).await;
                    if seen >= version {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if delivered {
            report
                .notify
                .record(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
        } else {
            report.lost += 1;
        }
    }
    let _ = device.close(None).await;
    if let Some(admin) = admin
        && let Ok(response) = client.get(format!("http://{admin}/metrics")).send().await
        && let Ok(text) = response.text().await
    {
        report.shed_queue_delay = shed_count(&text, "queue_delay");
        report.shed_inflight = shed_count(&text, "inflight");
    }
    Ok(report)
}

/// A fresh random channelID for a probe (32 hex digits, like the workers' devices).
fn probe_channel() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(0), half(1))
}

/// `simplepush_requests_shed_total{reason=...}` in a `/metrics` text (0 when absent).
fn shed_count(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("simplepush_requests_shed_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum()
}

pub(crate) fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// The metrics every PUT scenario shares.
fn put_metrics(run: &PutRun) -> Vec<Metric> {
    let r = &run.report;
    let ok: u64 = r
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    vec![
        Metric::new("puts_sent", (r.scheduled - r.skipped) as f64, ""),
        Metric::new("puts_skipped_by_generator", r.skipped as f64, ""),
        Metric::new("put_2xx", ok as f64, ""),
        Metric::new("put_errors", r.errors as f64, ""),
        Metric::new(
            "sent_per_sec",
            ((r.scheduled - r.skipped) as f64 / r.secs.max(1e-9)).round(),
            "/s",
        ),
        Metric::new("received", r.received as f64, ""),
        Metric::new("lost", r.lost as f64, "").goal("0", r.lost == 0),
        Metric::new("duplicates", r.duplicates as f64, ""),
        Metric::new("dropped_devices", r.dropped_devices as f64, ""),
    ]
}

/// How many workers to use: enough for the sockets, `wanted` if given.
pub(crate) fn worker_count(connections: usize, wanted: usize) -> usize {
    let needed = connections.div_ceil(MAX_SOCKETS_PER_WORKER).max(1);
    wanted.max(needed)
}

pub(crate) fn connect_job(
    ws: std::net::SocketAddr,
    put_to: std::net::SocketAddr,
    p: &Params,
    baseline: bool,
) -> Job {
    Job {
        index: 0,
        ws,
        put_to,
        connections: p.connections,
        connect_rate: p.rate,
        connect_concurrency: 2000,
        baseline,
        put_rate: 0.0,
        put_secs: 0.0,
        max_inflight_puts: 1,
        grace_secs: 0.0,
        dialect: p.dialect,
    }
}

/// Sums the worker reports of the connect phase; fails when `strict` and one failed.
pub(crate) fn merge_connects(reports: Vec<ConnectReport>, strict: bool) -> Result<ConnectReport> {
    let mut total = ConnectReport::default();
    for r in reports {
        total.connected += r.connected;
        total.failed += r.failed;
        total.secs = total.secs.max(r.secs);
        total.latency.merge(&r.latency);
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    if let Some(err) = &total.first_error {
        eprintln!(
            "bench: {} device(s) failed to connect; first: {err}",
            total.failed
        );
        if strict {
            bail!("{} device(s) failed to connect: {err}", total.failed);
        }
    }
    Ok(total)
}

pub(crate) fn connect_timeout(p: &Params) -> Duration {
    Duration::from_secs_f64(p.connections as f64 / p.rate.max(1.0) * 3.0 + 60.0)
}

struct IdleRun {
    connected: usize,
    failed: usize,
    rss_before_kib: f64,
    rss_delta_kib: f64,
    idle_cpu_percent: f64,
}

fn idle_run(server: &mut ServerProc, p: &Params, baseline: bool, strict: bool) -> Result<IdleRun> {
    // Let the server settle (allocator, runtime threads) before the baseline RSS.
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = server.rss_kib()? as f64;
    let job = connect_job(server.ws, server.endpoint, p, baseline);
    let mut fleet = Fleet::start(&job, worker_count(p.connections, 1))?;
    let report = merge_connects(fleet.collect("ready", connect_timeout(p))?, strict)?;
    server.check_alive()?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = server.rss_kib()? as f64;
    let cpu0 = server.cpu_secs()?;
    std::thread::sleep(Duration::from_secs_f64(p.secs));
    let cpu1 = server.cpu_secs()?;
    fleet.stop();
    Ok(IdleRun {
        connected: report.connected,
        failed: report.failed,
        rss_before_kib: rss_before,
        rss_delta_kib: rss_after - rss_before,
        idle_cpu_percent: round1(100.0 * (cpu1 - cpu0) / p.secs.max(1e-9)),
    })
}

struct ConnectRun {
    report: ConnectReport,
    rate: f64,
    cpu_us_per: f64,
}

fn connect_run(
    server: &mut ServerProc,
    p: &Params,
    baseline: bool,
    strict: bool,
) -> Result<ConnectRun> {
    let job = connect_job(server.ws, server.endpoint, p, baseline);
    let cpu0 = server.cpu_secs()?;
    let mut fleet = Fleet::start(&job, worker_count(p.connections, p.workers.max(2)))?;
    let report = merge_connects(fleet.collect("ready", connect_timeout(p))?, strict)?;
    let cpu1 = server.cpu_secs()?;
    server.check_alive()?;
    fleet.stop();
    let rate = report.connected as f64 / report.secs.max(1e-9);
    let cpu_us_per = (cpu1 - cpu0) * 1e6 / report.connected.max(1) as f64;
    Ok(ConnectRun {
        report,
        rate,
        cpu_us_per,
    })
}

struct PutRun {
    report: PutReport,
    /// Server CPU (all `servers` together) per notification received, or per 2xx PUT for
    /// the baseline.
    cpu_us_per: f64,
}

/// Connects `p.connections` devices to `ws`, then PUTs at `p.rate` for `p.secs` to
/// `put_to`; CPU is summed over `servers`.
fn put_run(
    servers: &mut [&mut ServerProc],
    ws: std::net::SocketAddr,
    put_to: std::net::SocketAddr,
    p: &Params,
    baseline: bool,
    strict: bool,
) -> Result<PutRun> {
    let job = Job {
        connect_rate: 5000.0,
        put_rate: p.rate,
        put_secs: p.secs,
        // Enough for 100 ms of answers at the offered rate; beyond that the generator
        // skips (and counts) rather than piling up sockets.
        max_inflight_puts: ((p.rate * 0.1) as usize).clamp(64, 4000),
        grace_secs: 5.0,
        ..connect_job(
            ws,
            put_to,
            &Params {
                rate: 5000.0,
                ..p.clone()
            },
            baseline,
        )
    };
    let mut fleet = Fleet::start(&job, worker_count(p.connections, p.workers.max(2)))?;
    let connects = merge_connects(
        fleet.collect(
            "ready",
            connect_timeout(&Params {
                rate: 5000.0,
                ..p.clone()
            }),
        )?,
        strict,
    )?;
    if connects.connected == 0 {
        bail!("no device connected");
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu =
        |servers: &[&mut ServerProc]| -> Result<f64> { servers.iter().map(|s| s.cpu_secs()).sum() };
    let cpu0 = cpu(servers)?;
    fleet.tell("go")?;
    let reports: Vec<PutReport> =
        fleet.collect("done", Duration::from_secs_f64(p.secs * 3.0 + 60.0))?;
    let cpu1 = cpu(servers)?;
    for server in servers.iter_mut() {
        server.check_alive()?;
    }
    fleet.stop();
    let mut total = PutReport::default();
    for r in reports {
        total.scheduled += r.scheduled;
        total.skipped += r.skipped;
        total.errors += r.errors;
        for (status, n) in r.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
        total.ok_latency.merge(&r.ok_latency);
        total.unavailable_latency.merge(&r.unavailable_latency);
        total.notify_latency.merge(&r.notify_latency);
        total.received += r.received;
        total.lost += r.lost;
        total.duplicates += r.duplicates;
        total.dropped_devices += r.dropped_devices;
        total.secs = total.secs.max(r.secs);
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    if let Some(err) = &total.first_error {
        eprintln!("bench: {} PUT(s) got no answer; first: {err}", total.errors);
    }
    if strict {
        if total.lost > 0 {
            bail!(
                "{} accepted update(s) never reached their device",
                total.lost
            );
        }
        if total.errors > 0 || total.received == 0 && !baseline {
            bail!(
                "PUTs failed ({} errors, {} notifications received)",
                total.errors,
                total.received
            );
        }
    }
    let per = if baseline {
        total.ok_latency.count()
    } else {
        total.received
    };
    let cpu_us_per = (cpu1 - cpu0) * 1e6 / per.max(1) as f64;
    Ok(PutRun {
        report: total,
        cpu_us_per,
    })
}

/// A fresh token key from `simplepush genkey`, shared by the nodes of a cluster.
pub(crate) fn genkey(binary: &Path) -> Result<String> {
    let output = std::process::Command::new(binary)
        .arg("genkey")
        .output()
        .context("simplepush genkey")?;
    if !output.status.success() {
        bail!("simplepush genkey failed: {output:?}");
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_counts_are_read_by_reason_and_absent_ones_are_zero() {
        let metrics = "# TYPE simplepush_requests_shed_total counter\n\
            simplepush_requests_shed_total{reason=\"inflight\",backend=\"memory\"} 3\n\
            simplepush_requests_shed_total{reason=\"queue_delay\",backend=\"memory\"} 1234\n\
            simplepush_updates_total{status=\"503\",backend=\"memory\"} 1237\n";
        assert_eq!(shed_count(metrics, "queue_delay"), 1234);
        assert_eq!(shed_count(metrics, "inflight"), 3);
        assert_eq!(shed_count("simplepush_updates_total 5\n", "queue_delay"), 0);
    }

    #[test]
    fn probe_channels_are_fresh_32_hex_digits() {
        let (a, b) = (probe_channel(), probe_channel());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
