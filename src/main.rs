//! The `simplepush` binary: parses flags, loads the config, starts logging, opens the
//! store and runs the server until SIGINT or SIGTERM.

/// jemalloc: measured ~10 % less memory per idle connection than glibc malloc.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start. Stock jemalloc purges freed pages only
/// while the program keeps allocating, so after a burst (a reconnect storm's handshakes)
/// an idle server kept their memory for good; a background thread returns it within
/// about a second instead. Muzzy pages (`MADV_FREE`) would still count as resident, so
/// purging skips that stage. A thin `&[u8; N]`: jemalloc reads a `char *` here.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use simplepush::config::{Config, LogFormat};
use simplepush::flags::ConfigFlags;
use simplepush::server::Server;
use tokio_util::sync::CancellationToken;

/// A SimplePush server: devices keep a websocket open, app servers PUT versions to their
/// endpoints, and every update is stored before it is delivered.
#[derive(Debug, Parser)]
#[command(name = "simplepush", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Print a fresh random token key for `[server] token_keys`; with --vapid, make a
    /// VAPID key pair for a WebPush app server.
    Genkey(simplepush::cli::genkey::Options),
    /// Be a device: connect, register channels, print each pushEndpoint and every
    /// notification (and acknowledge it), until Ctrl-C.
    ///
    /// Lines on stdout: `uaid <uaid>`, `endpoint <channelID> <url>`,
    /// `notification <channelID> <version> [data]`, `expired <channelID>`. The uaid and
    /// channelIDs are kept in the state file, so a restart resumes the same device.
    /// With --webpush it is a WebPush device, as a browser is: it also prints
    /// `subscription <file>` (the subscription JSON it wrote for app servers), the data of
    /// each notification decrypted, and `undecryptable <channelID> <version> <why>` for a
    /// message it cannot decrypt. Diagnostics go to stderr (filter them with RUST_LOG).
    Client(simplepush::cli::client::Options),
    /// Be an app server: PUT a version (and data) to a SimplePush pushEndpoint, or with
    /// --subscription POST encrypted data to a WebPush subscription; print the answer.
    ///
    /// SimplePush prints `200 delivered`, `202 stored` (the device is offline: it gets the
    /// update when it reconnects) or the error status and reason; exits with 0 only for
    /// 200 and 202. WebPush prints `201 Created` and the `Location:` and `TTL:` answered,
    /// or the error status and reason; exits with 0 only for 201. A bad file, JSON, key or
    /// endpoint exits with 2.
    Push(simplepush::cli::push::Options),
    /// The loader of `cargo xtask bench store-scale`: registers --devices devices in the
    /// configured store, opened as `serve` opens it, and writes a sample of them with
    /// their pushEndpoints.
    #[command(hide = true)]
    Fill(Box<FillArgs>),
}

/// `fill`: the store's flags as `serve` takes them, and what to load.
#[derive(Debug, Args)]
struct FillArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    options: simplepush::cli::fill::Options,
}

/// Flags of `serve`; each overrides the config file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Config file (TOML, see config.sample.toml). Default: ./config.toml when present.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: ConfigFlags,
}

impl ServeArgs {
    /// The config file, with these flags applied over it.
    fn config(self) -> anyhow::Result<Config> {
        let default_file = Path::new("config.toml");
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None if default_file.exists() => Config::load(default_file)?,
            None => Config::default(),
        };
        self.flags.apply(&mut config);
        // Secrets may come from files (token_keys_file, secret_file): read them now,
        // so the server only ever sees the values.
        config.load_secret_files()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let serve = match cli.command {
        Some(Command::Genkey(options)) => {
            match simplepush::cli::genkey::run(&options) {
                Ok(line) => println!("{line}"),
                Err(error) => exit_with(2, error.into()),
            }
            return Ok(());
        }
        Some(Command::Client(options)) => return run_client(options),
        Some(Command::Push(args)) => return run_push(&args),
        Some(Command::Fill(args)) => return run_fill(*args),
        Some(Command::Serve(args)) => *args,
        None => cli.serve,
    };
    let config = serve.config()?;
    init_logging(&config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve_until_signalled(config))
}

/// RocksDB's and SQLite's own allocations (C and C++) go to glibc's malloc: jemalloc is
/// Rust's allocator only. glibc gives each thread that allocates an arena of its own, up
/// to eight per core, and each keeps what was freed in it; after a burst of reads on
/// the blocking pool a RocksDB server at a million devices held 2.0–2.2 × the RSS of
/// the same load on a thousand. Two arenas: 1.33 × (README "Performance").
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, which glibc locks itself.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// The most arenas glibc's malloc may use ([`limit_malloc_arenas`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// `simplepush client`: runs until SIGINT/SIGTERM, then closes its socket cleanly.
fn run_client(options: simplepush::cli::client::Options) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,simplepush=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        simplepush::cli::client::run(options, shutdown).await
    })?;
    Ok(())
}

/// `simplepush push`: prints the answer; exits with 1 unless the push was accepted, with
/// 2 when the input was wrong.
fn run_push(args: &simplepush::cli::push::Options) -> anyhow::Result<()> {
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(simplepush::cli::push::run(args))
        .unwrap_or_else(|error| exit_with(error.exit_code(), error.into()));
    println!("{answer}");
    if !answer.is_success() {
        std::process::exit(1);
    }
    Ok(())
}

/// `simplepush fill`: prints one `filled devices=N ... rate=R` line when done.
fn run_fill(args: FillArgs) -> anyhow::Result<()> {
    let config = args.serve.config()?;
    init_logging(&config)?;
    let filled = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(simplepush::cli::fill::run(&config, &args.options))?;
    println!("{filled}");
    Ok(())
}

/// Reports an error as returning it from `main` would, but exits with `code`.
fn exit_with(code: i32, error: anyhow::Error) -> ! {
    eprintln!("Error: {error:?}");
    std::process::exit(code);
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log level `{}`", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn serve_until_signalled(config: Config) -> anyhow::Result<()> {
    // Every device is a file descriptor: take all the system allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    let store = simplepush::store::open(&config)?;
    let keys = simplepush::store::token_keys(&config)?;
    let shutdown = CancellationToken::new();
    let server = Server::bind(&config, store.clone(), &keys, shutdown.clone())?;
    let (ws, endpoint, admin) = (
        server.ws_addr()?,
        server.endpoint_addr()?,
        server.admin_addr()?,
    );
    tracing::info!(%ws, %endpoint, %admin, endpoint_url = server.endpoint_url(), store = store.name(), "listening");
    // The one line on stdout: scripts and tests wait for it to know the ports.
    match server.router_addr().transpose()? {
        Some(router) => println!(
            "simplepush listening ws={ws} endpoint={endpoint} admin={admin} router={router}"
        ),
        None => println!("simplepush listening ws={ws} endpoint={endpoint} admin={admin}"),
    }
    tokio::spawn(watch_signals(shutdown));
    server.run().await;
    tracing::info!("stopped");
    Ok(())
}

/// The first SIGINT/SIGTERM shuts down gracefully; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    std::process::exit(130);
}
