//! `cargo xtask`: project automation for simplepush, written in Rust instead of shell.

mod bench;
mod firefox;
mod fuzz;
mod image;
mod interop;
mod matrix;
mod memcached;
mod preflight;
mod report;
mod sys;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project automation for simplepush (the CI logic lives here, not in shell).",
    long_about = "Project automation for simplepush. `cargo xtask test` is what CI runs \
                  (.ci/run calls it): the formatting check, then clippy and the tests for \
                  every storage backend."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The tasks `cargo xtask` knows.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the CI matrix: preflight, `cargo fmt --check`, then clippy and the tests for
    /// each backend leg (memory, sqlite, memcache, rocksdb, all), stopping at the first
    /// failure.
    #[command(long_about = "Run the CI matrix, stopping at the first failure.\n\n\
        1. preflight: memcached, libclang and the other system packages must be \
        installed, firefox-esr, podman, runc, systemd and binutils too when the all leg \
        runs (as root they are installed with \
        apt-get, otherwise the command to run is printed);\n\
        2. cargo fmt --all -- --check;\n\
        3. for each leg: cargo clippy --workspace --all-targets <features> -- -D warnings, \
        then cargo test --workspace <features>. The memcache and all legs get two fresh \
        memcached servers on free loopback ports, passed in SIMPLEPUSH_TEST_MEMCACHED. The \
        all leg then checks its debug binary: `cargo xtask bench smoke`, the pywebpush \
        interop check and the Firefox check (`cargo xtask firefox`); its `image` step builds \
        the container image from that binary and checks it and the systemd unit \
        (`cargo xtask image-test`);\n\
        4. every fuzz target of tests/fuzz for 10 s (`cargo xtask fuzz`; skip with --no-fuzz).\n\n\
        Legs run in a fixed order chosen so that RocksDB's C++ is built once. \
        CARGO_TARGET_DIR and RUSTC_WRAPPER are passed through to cargo unchanged.")]
    Test(test::TestArgs),
    /// Load-test simplepush and measure it against a bare baseline (see README
    /// "Performance"): idle, connect, notify, overload, cluster, hold, all, smoke, or
    /// store-scale (the durable stores full, 1,000 vs 1,000,000 devices).
    Bench(bench::BenchArgs),
    /// Internal: one load-generating process of `bench` (job as JSON).
    #[command(hide = true)]
    BenchWorker { job: String },
    /// Internal: the bare baseline server of `bench`.
    #[command(hide = true)]
    BenchBaseline,
    /// Fuzz the parsers of untrusted input (tests/fuzz) with cargo-fuzz, each target for
    /// `--seconds` (installs cargo-fuzz when missing and root).
    Fuzz(fuzz::FuzzArgs),
    /// Drive a real Firefox (firefox-esr, headless, over Marionette) against the debug
    /// binary: its service worker must receive what an app server pushed while it was
    /// connected, offline and quit, on memory, sqlite and rocksdb, and through a
    /// two-node memcache cluster (installs firefox-esr when missing and root).
    Firefox(firefox::FirefoxArgs),
    /// Build the container image of dist/Containerfile (FROM scratch: the binary and the
    /// shared libraries it links) with podman, or docker with `--engine docker`.
    Image(image::ImageArgs),
    /// Check the container image and the systemd unit: build the image from the debug
    /// binary into private podman storage, serve, stop with SIGTERM, restart on the same
    /// volume; `systemd-analyze verify` dist/simplepush.service (needs root).
    ImageTest(image::ImageTestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchWorker { job } => bench::worker_main(&job),
        Command::BenchBaseline => bench::baseline_main(),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Firefox(args) => firefox::run(&args),
        Command::Image(args) => image::run(&args),
        Command::ImageTest(args) => image::run_test(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn cli_definition_is_consistent() {
        // clap's own checks: conflicting names, bad defaults, missing help.
        Cli::command().debug_assert();
    }
}
