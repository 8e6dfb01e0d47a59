//! `cargo xtask fuzz`: runs every libFuzzer target of `tests/fuzz` for a fixed time each.
//!
//! The targets are built by cargo-fuzz (installed with `cargo install` when missing and
//! running as root). cargo-fuzz passes nightly-only flags (`-Zsanitizer`, sanitizer
//! coverage options); on a stable toolchain they are unlocked with `RUSTC_BOOTSTRAP=1`,
//! which this machine's only toolchain needs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::sys;

/// The fuzz targets of `tests/fuzz/fuzz_targets`, in run order.
pub const TARGETS: [&str; 6] = [
    "protocol_parse",
    "token_decode",
    "endpoint_form",
    "webpush_frame",
    "vapid",
    "webpush_request",
];

/// Seconds each target runs as the last step of `cargo xtask test`.
pub const CI_SECONDS: u64 = 10;

/// The cargo-fuzz release installed when it is missing (pinned, so CI is reproducible).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The fuzz crate, relative to the workspace root.
const FUZZ_DIR: &str = "tests/fuzz";

/// How the targets are instrumented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sanitizer {
    /// AddressSanitizer: out-of-bounds and use-after-free in unsafe code are caught.
    Address,
    /// Coverage only: faster, catches panics and aborts.
    None,
}

impl Sanitizer {
    fn name(self) -> &'static str {
        match self {
            Sanitizer::Address => "address",
            Sanitizer::None => "none",
        }
    }
}

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,

    /// Run only this target (repeatable, or comma-separated). Default: every target.
    #[arg(long = "target", value_name = "TARGET", value_delimiter = ',', value_parser = TARGETS)]
    targets: Vec<String>,

    /// Sanitizer to build the targets with.
    #[arg(long, value_enum, default_value_t = Sanitizer::Address)]
    sanitizer: Sanitizer,
}

/// Runs the targets `args` names, each for `args.seconds`, and fails at the first crash.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        TARGETS
            .iter()
            .copied()
            .filter(|t| args.targets.iter().any(|a| a == t))
            .collect()
    };
    run_targets(&targets, args.seconds, args.sanitizer)
}

/// Runs every target for `seconds` each with AddressSanitizer (the step of `cargo xtask test`).
pub fn run_all(seconds: u64) -> Result<()> {
    run_targets(&TARGETS, seconds, Sanitizer::Address)
}

fn run_targets(targets: &[&str], seconds: u64, sanitizer: Sanitizer) -> Result<()> {
    ensure_cargo_fuzz()?;
    let started = Instant::now();
    cargo_fuzz_build(sanitizer)?;
    println!(
        "fuzz: targets built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut summary = Vec::new();
    for target in targets {
        let stats = run_target(target, seconds, sanitizer)?;
        summary.push(format!("{target}: {stats}"));
    }
    println!(
        "fuzz: no crash in {} target(s), {seconds} s each:",
        targets.len()
    );
    for line in summary {
        println!("    {line}");
    }
    Ok(())
}

/// Fuzzes one target for `seconds`; returns libFuzzer's final counts, in words.
fn run_target(target: &str, seconds: u64, sanitizer: Sanitizer) -> Result<String> {
    let root = sys::workspace_root().join(FUZZ_DIR);
    let corpus = root.join("corpus").join(target);
    let seeds = root.join("seeds").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("creating the corpus directory {}", corpus.display()))?;
    let corpus = corpus.display().to_string();
    let seeds = seeds.display().to_string();
    let max_time = format!("-max_total_time={seconds}");
    let mut args = vec![target, corpus.as_str()];
    if std::path::Path::new(&seeds).is_dir() {
        args.push(seeds.as_str());
    }
    // One input taking seconds is a finding (a hang), not something to wait out.
    args.extend([
        "--",
        max_time.as_str(),
        "-timeout=10",
        "-print_final_stats=1",
    ]);
    let mut stats = Vec::new();
    if let Err(err) = cargo_fuzz_run(&args, sanitizer, &mut stats) {
        bail!(
            "fuzz target `{target}` failed ({err:#}): the input that crashed it is in \
             {}/artifacts/{target}/ (reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run \
             --fuzz-dir {FUZZ_DIR} {target} <file>`)",
            root.display()
        );
    }
    Ok(stats.join(", "))
}

/// `cargo fuzz build` of every target.
fn cargo_fuzz_build(sanitizer: Sanitizer) -> Result<()> {
    let (mut command, shown) = cargo_fuzz("build", sanitizer, &[]);
    let status = command.status().context("could not run cargo fuzz")?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// `cargo fuzz run ARGS`: echoes its output line by line and keeps libFuzzer's final
/// stats (libFuzzer writes to stderr).
fn cargo_fuzz_run(args: &[&str], sanitizer: Sanitizer, stats: &mut Vec<String>) -> Result<()> {
    let (mut command, shown) = cargo_fuzz("run", sanitizer, args);
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .context("could not run cargo fuzz")?;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading cargo fuzz's output")?;
            if !is_progress(&line) {
                eprintln!("{line}");
            }
            if let Some(stat) = final_stat(&line) {
                stats.push(stat);
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// The command `cargo fuzz SUBCOMMAND --fuzz-dir .. --target-dir .. --sanitizer .. -a ARGS`
/// in the workspace root, with the toolchain's nightly features unlocked; also printed.
fn cargo_fuzz(subcommand: &str, sanitizer: Sanitizer, extra: &[&str]) -> (Command, String) {
    let target_dir = target_dir().display().to_string();
    let mut args = vec![
        "fuzz",
        subcommand,
        "--fuzz-dir",
        FUZZ_DIR,
        "--target-dir",
        &target_dir,
        "--sanitizer",
        sanitizer.name(),
        // Debug assertions and overflow checks, so arithmetic bugs panic.
        "-a",
    ];
    args.extend(extra);
    let shown = format!("RUSTC_BOOTSTRAP=1 cargo {}", args.join(" "));
    println!("$ {shown}");
    let mut command = Command::new(sys::cargo());
    command
        .args(&args)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(sys::workspace_root());
    (command, shown)
}

/// `stat::number_of_executed_units: 123` becomes `123 runs`; the peak RSS line too.
fn final_stat(line: &str) -> Option<String> {
    let (name, value) = line.strip_prefix("stat::")?.split_once(':')?;
    let value = value.trim();
    match name {
        "number_of_executed_units" => Some(format!("{value} runs")),
        "peak_rss_mb" => Some(format!("peak RSS {value} MB")),
        "new_units_added" => Some(format!("{value} new corpus entries")),
        _ => None,
    }
}

/// libFuzzer's per-input progress lines (`#123\tNEW ...`, `\tNEW_FUNC ...`): thousands in
/// a short run, so they are not echoed; everything else (stats, crashes) is.
fn is_progress(line: &str) -> bool {
    line.starts_with("\tNEW_FUNC")
        || line
            .strip_prefix('#')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The fuzz build's target directory: beside the workspace's, since its flags differ
/// (sharing one directory would rebuild everything each time either is built).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| sys::workspace_root().join("target"))
        .join("fuzz")
}

/// Makes sure `cargo fuzz` runs: installs it as root, else says how.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new(sys::cargo())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    let install = [
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ];
    if !sys::is_root() {
        bail!(
            "cargo-fuzz is missing; install it with:\n    cargo {}",
            install.join(" ")
        );
    }
    println!("fuzz: cargo-fuzz is missing; $ cargo {}", install.join(" "));
    let status = Command::new(sys::cargo())
        .args(install)
        .status()
        .context("could not run cargo install")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", install.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{FUZZ_DIR, TARGETS, final_stat, is_progress};
    use crate::sys;

    /// Every target xtask runs exists, and every target in the fuzz crate is run.
    #[test]
    fn targets_match_the_fuzz_crate() {
        let dir = sys::workspace_root().join(FUZZ_DIR).join("fuzz_targets");
        let mut found: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|name| name.strip_suffix(".rs").map(str::to_owned))
            .collect();
        found.sort();
        let mut listed: Vec<&str> = TARGETS.to_vec();
        listed.sort_unstable();
        assert_eq!(found, listed);
    }

    #[test]
    fn final_stats_are_kept_in_words() {
        assert_eq!(
            final_stat("stat::number_of_executed_units: 4711").as_deref(),
            Some("4711 runs")
        );
        assert_eq!(
            final_stat("stat::peak_rss_mb:  77").as_deref(),
            Some("peak RSS 77 MB")
        );
        assert_eq!(final_stat("stat::slowest_unit_time_sec: 0"), None);
        assert_eq!(final_stat("#2 INITED cov: 3"), None);
    }

    #[test]
    fn only_per_input_progress_is_hidden() {
        assert!(is_progress("#902\tNEW    cov: 1989 ft: 5585"));
        assert!(is_progress("\tNEW_FUNC[1/15]: 0x55a4 in serde_json"));
        assert!(!is_progress(
            "==4242==ERROR: AddressSanitizer: heap-buffer-overflow"
        ));
        assert!(!is_progress(
            "thread '<unnamed>' panicked at fuzz_targets/x.rs:3:5:"
        ));
        assert!(!is_progress("stat::number_of_executed_units: 4711"));
    }
}
