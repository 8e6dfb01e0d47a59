//! `cargo xtask test`: runs the planned steps one after another, stops at the first failure.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::fuzz;
use crate::matrix::{self, Leg, Step};
use crate::memcached::{self, Cluster};
use crate::preflight;
use crate::report::{Outcome, Report};
use crate::sys;

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only this leg (repeatable, or comma-separated); legs always run in matrix
    /// order. Default: every leg.
    #[arg(long = "leg", value_name = "LEG", value_enum, value_delimiter = ',')]
    legs: Vec<Leg>,

    /// Skip clippy, for quicker local runs (CI keeps it).
    #[arg(long)]
    no_clippy: bool,

    /// Skip the final fuzz step, for quicker local runs (CI keeps it).
    #[arg(long)]
    no_fuzz: bool,
}

/// What the steps share: the memcached servers, alive from their start to the end of the
/// run, and whether the run has the `all` leg (with its Firefox check and image step).
#[derive(Debug, Default)]
struct RunState {
    memcached: Option<Cluster>,
    all_leg: bool,
}

/// Runs the matrix described by `args`, prints the summary, and fails if a step failed.
pub fn run(args: &TestArgs) -> Result<()> {
    let steps = matrix::plan(&args.legs, !args.no_clippy, !args.no_fuzz);

    let mut report = Report::default();
    let mut state = RunState {
        all_leg: steps.contains(&Step::Test(Leg::All)),
        ..RunState::default()
    };
    let mut failure = None;
    for &step in &steps {
        if failure.is_some() {
            report.record(step, Outcome::NotRun, Duration::ZERO);
            continue;
        }
        println!("\n==> {}", step.label());
        let started = Instant::now();
        let result = run_step(step, &mut state);
        let took = started.elapsed();
        let outcome = if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Failed
        };
        println!(
            "<== {}: {outcome} in {:.1} s",
            step.label(),
            took.as_secs_f64()
        );
        report.record(step, outcome, took);
        if let Err(err) = result {
            failure = Some(err.context(format!("step `{}` failed", step.label())));
        }
    }
    // Stop the servers before the summary, so that its last line is the last word.
    drop(state);

    println!("\nsummary:\n{}", report.render());
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn run_step(step: Step, state: &mut RunState) -> Result<()> {
    match step {
        Step::Preflight => preflight::run(state.all_leg),
        Step::Fmt => cargo(&["fmt", "--all", "--", "--check"], &[]),
        Step::StartMemcached => {
            let cluster = Cluster::start(2)?;
            println!("memcached: {}={}", memcached::ENV, cluster.env_value());
            state.memcached = Some(cluster);
            Ok(())
        }
        Step::Clippy(leg) => {
            let mut args = vec![
                "clippy".to_owned(),
                "--workspace".into(),
                "--all-targets".into(),
            ];
            args.extend(leg.cargo_feature_args());
            args.extend(["--".into(), "-D".into(), "warnings".into()]);
            cargo(&args, &[])
        }
        Step::Test(leg) => {
            let mut args = vec!["test".to_owned(), "--workspace".into()];
            args.extend(leg.cargo_feature_args());
            let mut env = Vec::new();
            if let Some(store) = leg.store_under_test() {
                env.push(("SIMPLEPUSH_TEST_STORE", store.to_owned()));
            }
            if leg.needs_memcached() {
                let Some(cluster) = &state.memcached else {
                    bail!("leg {} needs memcached, which was not started", leg.name());
                };
                env.push((memcached::ENV, cluster.env_value()));
            }
            cargo(&args, &env)?;
            if leg == Leg::All {
                // The generator's own check, on the debug binary this leg just built
                // (every backend compiled in; never a release RocksDB build in CI).
                println!("\n$ cargo xtask bench smoke (debug binary, every backend)");
                crate::bench::smoke(&crate::bench::binary_path(true), &crate::bench::BACKENDS)?;
                println!("\n$ cargo xtask interop: pywebpush against the debug binary");
                crate::interop::pywebpush(&crate::bench::binary_path(true))?;
                println!("\n$ cargo xtask firefox: a real Firefox against the debug binary");
                crate::firefox::check(
                    &crate::bench::binary_path(true),
                    &crate::firefox::Backend::ALL,
                    true,
                )?;
            }
            Ok(())
        }
        Step::Image => {
            // The debug binary the all leg built (never a release RocksDB build in CI).
            println!("$ cargo xtask image-test --binary <the all leg's debug binary>");
            crate::image::check(
                &crate::bench::binary_path(true),
                "debug build of the all leg (memcache, rocksdb, sqlite)",
            )
        }
        Step::Fuzz => fuzz::run_all(fuzz::CI_SECONDS),
    }
}

/// Runs cargo with `args` in the workspace root, output going straight to ours; everything
/// else in the environment (`CARGO_TARGET_DIR`, `RUSTC_WRAPPER`, ...) passes through.
fn cargo<S: AsRef<str>>(args: &[S], env: &[(&str, String)]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let shown_env: String = env
        .iter()
        .map(|(key, value)| format!("{key}={value} "))
        .collect();
    println!("$ {shown_env}cargo {}", args.join(" "));

    let mut command = Command::new(sys::cargo());
    command
        .args(&args)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .current_dir(sys::workspace_root());
    let status = command.status().context("could not run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
