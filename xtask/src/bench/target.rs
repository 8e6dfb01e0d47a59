//! The processes a benchmark measures: `simplepush` nodes and the bare baseline server,
//! each started on free loopback ports, read through /proc, and killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for a server opening a large store (store-scale).
const LARGE_START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A private scratch directory, removed when dropped.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A fresh directory under the system temp dir.
    pub fn new(label: &str) -> Result<ScratchDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "simplepush-bench-{}-{}-{label}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A measured server process (simplepush or the baseline), killed and reaped on drop.
#[derive(Debug)]
pub struct ServerProc {
    child: Child,
    /// Websocket listener.
    pub ws: SocketAddr,
    /// Endpoint (PUT) listener.
    pub endpoint: SocketAddr,
    /// Operator listener (`/metrics`) of simplepush; the baseline has none.
    pub admin: Option<SocketAddr>,
    /// Router listener of a cluster node.
    pub router: Option<SocketAddr>,
    log: PathBuf,
    // Dropped after the child is killed (field order); `None` when the caller owns it.
    _dir: Option<ScratchDir>,
}

impl ServerProc {
    /// Starts `simplepush --config <dir>/bench.toml` with `config` as that file.
    pub fn simplepush(binary: &Path, config: &str) -> Result<ServerProc> {
        let dir = ScratchDir::new("server")?;
        let file = dir.path().join("bench.toml");
        std::fs::write(&file, config).context("writing the server config")?;
        let mut command = Command::new(binary);
        command.arg("--config").arg(&file);
        Self::start_in(command, dir)
    }

    /// Starts `simplepush --config <dir>/<config> <args>` in `dir`, which the caller
    /// keeps (a data directory that outlives the server), logging to `<dir>/<log>`.
    /// Waits up to 10 minutes for the listening line: a large store may open slowly.
    pub fn simplepush_in(
        binary: &Path,
        dir: &Path,
        config: &str,
        args: &[String],
        log: &str,
    ) -> Result<ServerProc> {
        let mut command = Command::new(binary);
        command.arg("--config").arg(dir.join(config)).args(args);
        Self::start(
            command,
            dir.to_owned(),
            dir.join(log),
            None,
            LARGE_START_TIMEOUT,
        )
    }

    /// Starts the baseline (`cargo xtask bench-baseline`, this same executable).
    pub fn baseline() -> Result<ServerProc> {
        let dir = ScratchDir::new("baseline")?;
        let mut command = Command::new(std::env::current_exe().context("own executable")?);
        command.arg("bench-baseline");
        Self::start_in(command, dir)
    }

    /// Starts `command` in `dir`, which it owns, logging to `<dir>/server.log`.
    fn start_in(command: Command, dir: ScratchDir) -> Result<ServerProc> {
        let log = dir.path().join("server.log");
        Self::start(
            command,
            dir.path().to_owned(),
            log,
            Some(dir),
            START_TIMEOUT,
        )
    }

    fn start(
        mut command: Command,
        cwd: PathBuf,
        log: PathBuf,
        dir: Option<ScratchDir>,
        timeout: Duration,
    ) -> Result<ServerProc> {
        let stderr = std::fs::File::create(&log).context("creating the server log")?;
        let mut child = command
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut server = ServerProc {
            child,
            ws: SocketAddr::from(([127, 0, 0, 1], 0)),
            endpoint: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            router: None,
            log,
            _dir: dir,
        };
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        let line = match rx.recv_timeout(timeout) {
            Ok(Some(line)) => line,
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("server exited before listening:\n{}", server.log_tail())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "server did not listen within {timeout:?}:\n{}",
                    server.log_tail()
                )
            }
        };
        let listening = parse_listening_line(&line)?;
        server.ws = listening.ws;
        server.endpoint = listening.endpoint;
        server.admin = listening.admin;
        server.router = listening.router;
        Ok(server)
    }

    /// The process id, for /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log tail when the server has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("server exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        self.log_tail_lines(20)
    }

    /// The last `count` lines the server logged.
    pub fn log_tail_lines(&self, count: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }

    /// Resident memory now, in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_secs(&self) -> Result<f64> {
        cpu_secs(self.pid())
    }

    /// Stops the server as an operator does (SIGTERM), waits for it to exit and fails
    /// unless it exited cleanly; killed after a minute.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("running kill")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed ({sent})");
        }
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("server exited with {status}:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "server did not stop within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses a server's startup line names.
#[derive(Debug)]
pub struct Listening {
    /// `ws=`.
    pub ws: SocketAddr,
    /// `endpoint=`.
    pub endpoint: SocketAddr,
    /// `admin=` (simplepush only).
    pub admin: Option<SocketAddr>,
    /// `router=` (cluster nodes only).
    pub router: Option<SocketAddr>,
}

/// Parses `simplepush listening ws=ADDR endpoint=ADDR [admin=ADDR] [router=ADDR]`.
pub fn parse_listening_line(line: &str) -> Result<Listening> {
    let mut ws = None;
    let mut endpoint = None;
    let mut admin = None;
    let mut router = None;
    let mut words = line.split_whitespace();
    if words.next() != Some("simplepush") || words.next() != Some("listening") {
        bail!("unexpected startup line {line:?}");
    }
    for word in words {
        let (key, value) = word.split_once('=').context("word without =")?;
        let addr: SocketAddr = value
            .parse()
            .with_context(|| format!("address in {line:?}"))?;
        match key {
            "ws" => ws = Some(addr),
            "endpoint" => endpoint = Some(addr),
            "admin" => admin = Some(addr),
            "router" => router = Some(addr),
            _ => {}
        }
    }
    match (ws, endpoint) {
        (Some(ws), Some(endpoint)) => Ok(Listening {
            ws,
            endpoint,
            admin,
            router,
        }),
        _ => bail!("no ws= or endpoint= in {line:?}"),
    }
}

/// VmRSS of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS in /proc/PID/status")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of process `pid` (all its threads), seconds.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_cpu_ticks(&stat).context("bad /proc/PID/stat")?;
    Ok(ticks as f64 / clock_ticks_per_sec())
}

/// utime (field 14) + stime (field 15); the command name (field 2) may hold spaces, so
/// fields are counted from its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK`, 100 when it cannot be asked.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu_ticks, parse_listening_line, parse_vm_rss, rss_kib};

    #[test]
    fn parses_the_listening_line() {
        let baseline =
            parse_listening_line("simplepush listening ws=127.0.0.1:1 endpoint=127.0.0.1:2")
                .unwrap();
        assert_eq!(
            (baseline.ws.port(), baseline.endpoint.port()),
            (1, 2),
            "{baseline:?}"
        );
        assert!(baseline.admin.is_none() && baseline.router.is_none());
        let node = parse_listening_line(
            "simplepush listening ws=127.0.0.1:1 endpoint=127.0.0.1:2 admin=127.0.0.1:4 \
             router=127.0.0.1:3",
        )
        .unwrap();
        assert_eq!(node.router.unwrap().port(), 3);
        assert_eq!(node.admin.unwrap().port(), 4);
        assert!(parse_listening_line("hello").is_err());
    }

    #[test]
    fn parses_proc_files() {
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_vm_rss("Name: x\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
