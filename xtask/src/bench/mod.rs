//! `cargo xtask bench`: a load generator for simplepush and the numbers it measures.
//!
//! Devices are opened by worker processes (`bench-worker`, this same executable), at most
//! 18,000 sockets each, every socket bound to its own source address in 127.0.0.0/8 so
//! that more than 64K connections fit. PUTs are sent open loop at a fixed rate and every
//! latency goes into an HDR histogram. Each scenario also runs against a bare warp
//! baseline (`bench-baseline`) so results read as a ratio to it. Every process started
//! (servers, memcached, workers) is held by a guard that kills it when dropped, so a run
//! ends by itself and leaves nothing behind, on success or error.

mod baseline;
mod fleet;
mod hold;
mod report;
mod scenario;
mod stats;
mod store_scale;
mod target;
mod worker;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::sys;
use report::Outcome;
use scenario::{Backend, Bench, Params};
use worker::Dialect;

pub use baseline::main as baseline_main;
pub(crate) use scenario::genkey;
pub(crate) use target::{ScratchDir, ServerProc, parse_listening_line};
pub use worker::main as worker_main;
pub(crate) use worker::{Socket, request};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N idle devices (hello + 1 register): server RSS per connection, idle CPU.
    Idle,
    /// hello + register rate and latency.
    Connect,
    /// PUT → notification → ack at a fixed rate: latency, lost, server CPU per notification.
    Notify,
    /// 10× the sustainable PUT rate for a bounded time: 503 share and latency, RSS.
    Overload,
    /// Two nodes + two memcached: devices on A, PUTs to B, routed notifications per second.
    Cluster,
    /// Many idle devices (default 200,000) spread over `--nodes` memcache nodes, held for
    /// `--secs`: devices still connected, RSS per connection, memcached RSS, idle CPU.
    Hold,
    /// Every scenario above, in that order.
    All,
    /// A tiny run of every scenario on every backend given: checks the generator (fails on
    /// a lost notification or an error), asserts no timing.
    Smoke,
    /// sqlite and rocksdb holding `--small` and `--devices` registered devices (two
    /// channels each, offline), in the same run: PUT rate and p99, hello + flush p99,
    /// RSS, bytes on disk per device, start-up time, then retention (a short device TTL)
    /// and the disk it reclaims. Not part of `all`.
    StoreScale,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The scenario.
    #[arg(value_enum)]
    scenario: Scenario,

    /// The devices' and pushes' protocol(s), in turn (repeatable or comma-separated;
    /// default simplepush, smoke: both). With both, `notify` also prints WebPush's server
    /// CPU per notification as a ratio to SimplePush's of the same run.
    #[arg(long = "dialect", value_enum, value_delimiter = ',')]
    dialects: Vec<Dialect>,

    /// Storage backend(s) to run against (repeatable or comma-separated).
    #[arg(long = "backend", value_delimiter = ',', default_value = "memory")]
    backends: Vec<String>,

    /// Devices to connect (default: per scenario, see README "Performance").
    #[arg(long)]
    connections: Option<usize>,

    /// Connects/s (idle, connect, hold) or PUTs/s (notify, cluster); for overload the
    /// sustainable rate, of which 10× is offered.
    #[arg(long)]
    rate: Option<f64>,

    /// Length of the measured phase, seconds (store-scale: of each PUT phase; a store
    /// size's is three rounds that share it).
    #[arg(long)]
    secs: Option<f64>,

    /// Worker processes generating load (default: 2, more when sockets need them).
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// The simplepush binary to measure, instead of building one.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,

    /// Build (or pick) the debug binary instead of the release one.
    #[arg(long)]
    debug: bool,

    /// Skip the baseline runs.
    #[arg(long)]
    no_baseline: bool,

    /// `[store] fsync` of sqlite and rocksdb (the server's default is true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fsync: bool,

    /// The overload node's `max_inflight_requests`.
    #[arg(long, default_value_t = 256)]
    overload_inflight: usize,

    /// Simplepush nodes of `hold` (default: one per 18,000 devices, which keeps each
    /// under the 20,000 open-file limit).
    #[arg(long)]
    nodes: Option<usize>,

    /// store-scale: devices of the large store.
    #[arg(long, default_value_t = 1_000_000)]
    devices: u64,

    /// store-scale: devices of the small store, measured in the same run.
    #[arg(long, default_value_t = 1000)]
    small: u64,

    /// store-scale: the longest the retention sweep may take, seconds.
    #[arg(long, default_value_t = 1800.0)]
    sweep_timeout: f64,
}

/// Every backend the bench knows, by its `--store` name.
pub const BACKENDS: [&str; 4] = ["memory", "sqlite", "rocksdb", "memcache"];

/// Set in the environment of the release xtask a debug one re-runs the bench in.
const RELEASE_GENERATOR: &str = "SIMPLEPUSH_BENCH_RELEASE_GENERATOR";

/// Runs `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    for backend in &args.backends {
        if !BACKENDS.contains(&backend.as_str()) {
            bail!("unknown backend {backend:?}: one of {BACKENDS:?}");
        }
    }
    // `cargo xtask` builds xtask in the dev profile, and the load comes from xtask
    // itself (its worker processes, store-scale's PUTs): unoptimized, it was the
    // bottleneck (store-scale sent ~5,000 PUTs/s instead of ~25,000). A measuring run
    // goes on in the release build; smoke and `--debug` runs only check behaviour.
    if cfg!(debug_assertions)
        && !args.debug
        && args.scenario != Scenario::Smoke
        && std::env::var_os(RELEASE_GENERATOR).is_none()
    {
        return rerun_in_release();
    }
    let smoke = args.scenario == Scenario::Smoke;
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => build(&args.backends, args.scenario, args.debug)?,
    };
    let bench = Bench {
        binary,
        baseline: !args.no_baseline,
        fsync: args.fsync,
        strict: smoke,
    };
    if args.scenario == Scenario::StoreScale {
        return store_scale(&bench, args);
    }
    let scenarios: &[Scenario] = match args.scenario {
        Scenario::All | Scenario::Smoke => &[
            Scenario::Idle,
            Scenario::Connect,
            Scenario::Notify,
            Scenario::Overload,
            Scenario::Cluster,
            Scenario::Hold,
        ],
        one => std::slice::from_ref(match one {
            Scenario::Idle => &Scenario::Idle,
            Scenario::Connect => &Scenario::Connect,
            Scenario::Notify => &Scenario::Notify,
            Scenario::Overload => &Scenario::Overload,
            Scenario::Hold => &Scenario::Hold,
            _ => &Scenario::Cluster,
        }),
    };
    // Taken once: every result of this run carries the day it started and the box.
    let stamp = report::Stamp::measure();
    println!("bench: {stamp}");
    let dialects = match (args.dialects.is_empty(), smoke) {
        (false, _) => args.dialects.clone(),
        (true, false) => vec![Dialect::Simplepush],
        (true, true) => vec![Dialect::Simplepush, Dialect::Webpush],
    };
    let mut outcomes = Vec::new();
    for (&scenario, &dialect) in scenarios
        .iter()
        .flat_map(|s| dialects.iter().map(move |d| (s, d)))
    {
        // Smoke checks WebPush where it differs: devices, pushes, notifications, routing.
        if smoke
            && dialect == Dialect::Webpush
            && matches!(scenario, Scenario::Overload | Scenario::Hold)
        {
            continue;
        }
        if matches!(scenario, Scenario::Cluster | Scenario::Hold) {
            // One run of nodes sharing memcached; it needs the memcache feature.
            if smoke && !args.backends.iter().any(|b| b == "memcache") {
                continue;
            }
            let p = params(args, scenario, smoke, dialect);
            let outcome = if scenario == Scenario::Cluster {
                bench.cluster(&p).context("scenario cluster")?
            } else {
                // Smoke spreads its few devices over two nodes, to check the spreading.
                let nodes = args.nodes.or(smoke.then_some(2));
                bench.hold(&p, nodes).context("scenario hold")?
            };
            println!("{}\n{}", outcome.table(), outcome.json_line(&stamp));
            outcomes.push(outcome);
            continue;
        }
        for name in &args.backends {
            let backend = Backend::start(name)?;
            let p = params(args, scenario, smoke, dialect);
            let outcome = match scenario {
                Scenario::Idle => bench.idle(&backend, &p),
                Scenario::Connect => bench.connect(&backend, &p),
                Scenario::Notify => bench.notify(&backend, &p),
                _ => bench.overload(&backend, &p, args.overload_inflight),
            }
            .with_context(|| format!("scenario {scenario:?} ({}) on {name}", dialect.name()))?;
            println!("{}\n{}", outcome.table(), outcome.json_line(&stamp));
            outcomes.push(outcome);
        }
    }
    if smoke {
        outcomes.extend(store_scale_smoke(&bench, &args.backends)?);
    }
    println!("\nbench: {} scenario run(s) finished", outcomes.len());
    for line in comparisons(&outcomes) {
        println!("bench: {line}");
    }
    Ok(())
}

/// `cargo xtask bench store-scale`: the small and the large store on each backend.
fn store_scale(bench: &Bench, args: &BenchArgs) -> Result<()> {
    let stamp = report::Stamp::measure();
    println!("bench: {stamp}");
    let params = store_scale::ScaleParams {
        small: args.small,
        large: args.devices,
        secs: args.secs.unwrap_or(10.0),
        sample: 20_000,
        hellos: 2000,
        sweep_timeout: std::time::Duration::from_secs_f64(args.sweep_timeout),
        settle_cap: 120.0,
        strict: false,
    };
    let outcomes = store_scale::run(bench, &args.backends, &params)?;
    println!();
    for outcome in &outcomes {
        println!("{}", outcome.json_line(&stamp));
    }
    let missed: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            o.metrics
                .iter()
                .filter(|m| m.target.is_some_and(|(_, met)| !met))
                .map(move |m| format!("{} {} on {}", o.scenario, m.name, o.backend))
        })
        .collect();
    if missed.is_empty() {
        println!("bench: store-scale: every target met");
    } else {
        println!("bench: store-scale: targets NOT met: {}", missed.join(", "));
    }
    Ok(())
}

/// store-scale at a tiny size on the durable backends given (smoke): fill, serve, the
/// sweep of retention; fails on any failed request or device, asserts no timing.
fn store_scale_smoke(bench: &Bench, backends: &[String]) -> Result<Vec<Outcome>> {
    let durable: Vec<String> = backends
        .iter()
        .filter(|b| matches!(b.as_str(), "sqlite" | "rocksdb"))
        .cloned()
        .collect();
    if durable.is_empty() {
        return Ok(Vec::new());
    }
    let began = std::time::Instant::now();
    let params = store_scale::ScaleParams {
        small: 100,
        large: 400,
        secs: 0.5,
        sample: 400,
        hellos: 50,
        sweep_timeout: std::time::Duration::from_secs(60),
        settle_cap: 0.0,
        strict: true,
    };
    let outcomes = store_scale::run(bench, &durable, &params).context("scenario store-scale")?;
    println!(
        "bench: store-scale smoke took {:.1} s",
        began.elapsed().as_secs_f64()
    );
    Ok(outcomes)
}

/// Ratios between notify runs of the same invocation: WebPush's server CPU per
/// notification to SimplePush's on each backend (goal ≤ 1.5), and each backend's to the
/// memory store's in each dialect (goal ≤ 2, memcache ≤ 3).
fn comparisons(outcomes: &[Outcome]) -> Vec<String> {
    const CPU: &str = "server_cpu_us_per_notification";
    let cpu = |dialect: Dialect, backend: &str| {
        outcomes
            .iter()
            .filter(|o| o.scenario == "notify" && o.dialect == dialect && o.backend == backend)
            .flat_map(|o| &o.metrics)
            .find(|m| m.name == CPU)
            .map(|m| m.value)
    };
    let mut lines = Vec::new();
    let mut seen = Vec::new();
    for o in outcomes.iter().filter(|o| o.scenario == "notify") {
        if seen.contains(&(o.dialect, &o.backend)) {
            continue;
        }
        seen.push((o.dialect, &o.backend));
        let Some(value) = cpu(o.dialect, &o.backend) else {
            continue;
        };
        let mut line = |what: String, of: f64, goal: f64| {
            let ratio = value / of.max(1e-9);
            let met = if ratio <= goal { "met" } else { "NOT met" };
            lines.push(format!(
                "notify {what}: {ratio:.2} × ({value:.1} / {of:.1} µs server CPU per \
                 notification; goal <= {goal}: {met})"
            ));
        };
        if o.dialect == Dialect::Webpush
            && let Some(of) = cpu(Dialect::Simplepush, &o.backend)
        {
            line(format!("on {}, webpush / simplepush", o.backend), of, 1.5);
        }
        if o.backend != "memory"
            && let Some(of) = cpu(o.dialect, "memory")
        {
            let goal = if o.backend == "memcache" { 3.0 } else { 2.0 };
            line(
                format!("{}, {} / memory", o.dialect.name(), o.backend),
                of,
                goal,
            );
        }
    }
    lines
}

/// The parameters of `scenario`: the flags, else the scenario's defaults (tiny for smoke).
fn params(args: &BenchArgs, scenario: Scenario, smoke: bool, dialect: Dialect) -> Params {
    let (connections, rate, secs) = match (scenario, smoke) {
        (Scenario::Idle, true) => (50, 500.0, 1.0),
        (Scenario::Overload, true) => (50, 2000.0, 1.0),
        (Scenario::Hold, true) => (100, 500.0, 1.0),
        (_, true) => (50, 200.0, 1.0),
        (Scenario::Idle, false) => (19_000, 5000.0, 10.0),
        (Scenario::Connect, false) => (10_000, 20_000.0, 0.0),
        (Scenario::Notify, false) => (1000, 10_000.0, 10.0),
        (Scenario::Overload, false) => (1000, 100_000.0, 3.0),
        (Scenario::Hold, false) => (200_000, 2000.0, 10.0),
        (_, false) => (1000, 5000.0, 10.0),
    };
    let rate = match (scenario, args.rate) {
        (Scenario::Overload, Some(sustainable)) => sustainable * 10.0,
        (_, Some(rate)) => rate,
        (_, None) => rate,
    };
    Params {
        connections: args.connections.unwrap_or(connections),
        rate,
        secs: args.secs.unwrap_or(secs),
        workers: args.workers,
        dialect,
    }
}

/// Builds simplepush with the features the backends (and the cluster) need and returns
/// the binary's path.
fn build(backends: &[String], scenario: Scenario, debug: bool) -> Result<PathBuf> {
    let mut features: Vec<&str> = backends
        .iter()
        .map(String::as_str)
        .filter(|b| *b != "memory")
        .collect();
    if matches!(scenario, Scenario::Cluster | Scenario::Hold | Scenario::All)
        && !features.contains(&"memcache")
    {
        features.push("memcache");
    }
    features.sort_unstable();
    features.dedup();
    build_simplepush(&features, debug)
}

/// Builds simplepush (debug or release) with `features` and returns the binary's path.
pub fn build_simplepush(features: &[&str], debug: bool) -> Result<PathBuf> {
    let mut args = vec!["-p", "simplepush"];
    if !debug {
        args.push("--release");
    }
    let features = features.join(",");
    if !features.is_empty() {
        args.extend(["--features", &features]);
    }
    cargo_build(&args)?;
    Ok(binary_path(debug))
}

/// Runs `cargo build` with `args` in the workspace, printing the command.
fn cargo_build(args: &[&str]) -> Result<()> {
    let mut command = Command::new(sys::cargo());
    command.arg("build").args(args);
    println!("$ {command:?}");
    let status = command
        .current_dir(sys::workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("`cargo build {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds xtask in release and runs this bench command in it (the load generator
/// must be optimized); fails as it fails.
fn rerun_in_release() -> Result<()> {
    cargo_build(&["--release", "-p", "xtask"])?;
    let xtask = target_dir().join("release").join("xtask");
    let status = Command::new(&xtask)
        .args(std::env::args_os().skip(1))
        .env(RELEASE_GENERATOR, "1")
        .status()
        .with_context(|| format!("running {}", xtask.display()))?;
    if !status.success() {
        bail!("the release bench failed ({status})");
    }
    Ok(())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace) or
/// `target/`.
fn target_dir() -> PathBuf {
    let root = sys::workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

/// Where cargo puts the simplepush binary: [`target_dir`], then `release/` or `debug/`.
pub fn binary_path(debug: bool) -> PathBuf {
    target_dir()
        .join(if debug { "debug" } else { "release" })
        .join("simplepush")
}

/// `cargo xtask bench smoke` with an already built binary (the last step of
/// `cargo xtask test`): every scenario, tiny, on `backends`.
pub fn smoke(binary: &Path, backends: &[&str]) -> Result<()> {
    let args = BenchArgs {
        scenario: Scenario::Smoke,
        dialects: Vec::new(),
        backends: backends.iter().map(|b| (*b).to_owned()).collect(),
        connections: None,
        rate: None,
        secs: None,
        workers: 2,
        binary: Some(binary.to_owned()),
        debug: true,
        no_baseline: false,
        fsync: true,
        overload_inflight: 8,
        nodes: None,
        devices: 1_000_000,
        small: 1000,
        sweep_timeout: 1800.0,
    };
    run(&args)
}

#[cfg(test)]
mod tests {
    use super::comparisons;
    use super::report::{Metric, Outcome};
    use super::worker::Dialect;

    fn notify(dialect: Dialect, backend: &str, cpu: f64) -> Outcome {
        Outcome {
            scenario: "notify",
            dialect,
            backend: backend.into(),
            params: Vec::new(),
            metrics: vec![Metric::new("server_cpu_us_per_notification", cpu, "µs")],
        }
    }

    #[test]
    fn notify_runs_are_compared_across_dialects_and_with_memory() {
        let lines = comparisons(&[
            notify(Dialect::Simplepush, "memory", 100.0),
            notify(Dialect::Simplepush, "sqlite", 150.0),
            notify(Dialect::Webpush, "memory", 160.0),
            notify(Dialect::Webpush, "sqlite", 400.0),
        ]);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("notify simplepush, sqlite / memory: 1.50 ×"));
        assert!(lines[0].ends_with("goal <= 2: met)"), "{}", lines[0]);
        assert!(lines[1].starts_with("notify on memory, webpush / simplepush: 1.60 ×"));
        assert!(lines[1].ends_with("goal <= 1.5: NOT met)"), "{}", lines[1]);
        assert!(lines[2].starts_with("notify on sqlite, webpush / simplepush: 2.67 ×"));
        assert!(lines[3].starts_with("notify webpush, sqlite / memory: 2.50 ×"));
        // One dialect on one backend: nothing to compare.
        assert!(comparisons(&[notify(Dialect::Webpush, "memory", 1.0)]).is_empty());
    }
}
