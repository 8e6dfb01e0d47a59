//! `hold` (issue #7): a cluster of simplepush nodes sharing memcached holds many idle
//! devices at once; measures what holding them costs and checks that none was lost.
//!
//! The devices are spread evenly over the nodes' websocket listeners, one [`Fleet`] per
//! node. After `--secs` of holding, every device must still be connected as counted by
//! both sides: the nodes (`/status/` "clients") and the workers (their open sockets, read
//! in /proc). Everything started is held by a guard (memcached, nodes, workers), so it is
//! stopped when the scenario ends, also on error; Ctrl-C reaches the whole process group.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::fleet::Fleet;
use super::report::{Metric, Outcome};
use super::scenario::{
    Backend, Bench, Params, connect_job, connect_timeout, genkey, merge_connects, round1,
    worker_count,
};
use super::target::{self, ServerProc};
use crate::memcached::Cluster;

/// The goal of issue #7: devices held at once on this box.
const GOAL: usize = 200_000;
/// Devices one node is given by default: a node may open 20,000 files (the box's hard
/// limit), of which the server keeps 256 for itself and a few for memcached and routing.
pub const MAX_DEVICES_PER_NODE: usize = 18_000;
/// Time for fresh nodes to settle (allocator, runtime threads, memcache pools) before
/// the first RSS reading.
const SETTLE: Duration = Duration::from_millis(500);
/// Time between the last register and the RSS reading, for the handshakes' transient
/// buffers to be freed.
const AFTER_CONNECTS: Duration = Duration::from_secs(2);
/// Time limit of one `/status/` or memcached `stats` request.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Nodes used for `connections` devices when `--nodes` is not given.
pub fn default_nodes(connections: usize) -> usize {
    connections.div_ceil(MAX_DEVICES_PER_NODE).max(1)
}

impl Bench {
    /// `hold`: starts memcached and `nodes` memcache nodes (default
    /// [`default_nodes`]), connects `p.connections` devices (hello + one register) at
    /// `p.rate` per second spread evenly over the nodes, holds them for `p.secs`, then
    /// counts the survivors on both sides. With `strict`, a failed or lost device fails.
    pub fn hold(&self, p: &Params, nodes: Option<usize>) -> Result<Outcome> {
        let nodes = nodes.unwrap_or_else(|| default_nodes(p.connections)).max(1);
        let shares = spread(p.connections, nodes);
        if let Some(&most) = shares.iter().max()
            && most > MAX_DEVICES_PER_NODE
        {
            eprintln!(
                "bench: hold gives a node {most} devices, more than the {MAX_DEVICES_PER_NODE} \
                 its open-file limit leaves room for: expect refusals"
            );
        }
        // Locals drop in reverse order: the nodes go first, then the workers, then the
        // memcached servers. Killed nodes close their sockets at once; stopping the
        // workers first would make each node forget its devices in memcached one by one
        // (a storm of blocking threads that measures nothing).
        let backend = Backend::start("memcache")?;
        let mut fleets = Vec::with_capacity(nodes);
        let memcached = memcached_addrs(&backend)?;
        let key = genkey(&self.binary)?;
        let extra = format!("token_keys = [\"{key}\"]\n");
        let mut servers = Vec::with_capacity(nodes);
        for i in 0..nodes {
            servers.push(
                self.start_server(&backend, &extra)
                    .with_context(|| format!("starting node {i}"))?,
            );
        }
        std::thread::sleep(SETTLE);
        let rss_before = sum_rss(&servers)?;
        let cpu_before = sum_cpu(&servers)?;

        // One fleet per node. Each fleet numbers its workers from 0, so fleets share
        // source addresses; that is harmless: an address has ~28,000 ephemeral ports and
        // gets about 1,000 devices at 200,000.
        let per_fleet = p.workers.div_ceil(nodes).max(1);
        let mut workers = 0;
        for (server, &share) in servers.iter().zip(&shares) {
            if share == 0 {
                continue;
            }
            let part = Params {
                connections: share,
                rate: p.rate * share as f64 / p.connections.max(1) as f64,
                ..p.clone()
            };
            let count = worker_count(share, per_fleet);
            let job = connect_job(server.ws, server.endpoint, &part, false);
            fleets.push(Fleet::start(&job, count)?);
            workers += count;
        }
        let deadline = Instant::now() + connect_timeout(p);
        let mut reports = Vec::with_capacity(workers);
        for fleet in &mut fleets {
            let left = deadline.saturating_duration_since(Instant::now());
            reports.extend(fleet.collect("ready", left)?);
        }
        let connects = merge_connects(reports, self.strict)?;
        for server in &mut servers {
            server.check_alive()?;
        }
        let cpu_connected = sum_cpu(&servers)?;

        std::thread::sleep(AFTER_CONNECTS);
        let rss_after = sum_rss(&servers)?;
        let cpu0 = sum_cpu(&servers)?;
        std::thread::sleep(Duration::from_secs_f64(p.secs));
        let cpu1 = sum_cpu(&servers)?;
        let rss_end = sum_rss(&servers)?;
        let threads = servers
            .iter()
            .map(|s| thread_count(s.pid()))
            .sum::<Result<u64>>()?;
        for server in &mut servers {
            server.check_alive()?;
        }

        let clients = node_clients(&servers)?;
        let (workers_alive, worker_sockets) = worker_sockets()?;
        let cache = memcached
            .iter()
            .map(|&addr| MemcachedStats::ask(addr))
            .collect::<Result<Vec<_>>>()?;
        drop(servers);
        for fleet in &mut fleets {
            let _ = fleet.tell("stop");
        }
        for fleet in fleets {
            fleet.stop();
        }

        let status_clients: usize = clients.iter().sum();
        let held = status_clients.min(worker_sockets);
        if workers_alive != workers {
            eprintln!("bench: {workers_alive} of {workers} workers were still running");
        }
        if self.strict && (held != connects.connected || status_clients != worker_sockets) {
            bail!(
                "hold: {} devices connected, but {status_clients} held by the nodes and \
                 {worker_sockets} by the workers",
                connects.connected
            );
        }
        let connected = connects.connected;
        let latency = connects.latency.summary();
        let rss_per_conn = (rss_after - rss_before) as f64 * 1024.0 / connected.max(1) as f64;
        let metrics = vec![
            Metric::new("held", held as f64, "").goal(">= 200,000 held", held >= GOAL),
            Metric::new("connected", connected as f64, ""),
            Metric::new("connect_failed", connects.failed as f64, ""),
            Metric::new("lost_while_held", connected.saturating_sub(held) as f64, ""),
            Metric::new("status_clients", status_clients as f64, ""),
            Metric::new("worker_sockets", worker_sockets as f64, ""),
            Metric::new(
                "node_clients_min",
                clients.iter().min().copied().unwrap_or(0) as f64,
                "",
            ),
            Metric::new(
                "node_clients_max",
                clients.iter().max().copied().unwrap_or(0) as f64,
                "",
            ),
            Metric::new(
                "connect_rate_per_sec",
                (connected as f64 / connects.secs.max(1e-9)).round(),
                "/s",
            ),
            Metric::new("connect_p50_us", latency.p50_us as f64, "µs"),
            Metric::new("connect_p99_us", latency.p99_us as f64, "µs"),
            Metric::new(
                "node_cpu_us_per_connect",
                ((cpu_connected - cpu_before) * 1e6 / connected.max(1) as f64).round(),
                "µs",
            ),
            Metric::new("rss_before_kib", rss_before as f64, "KiB"),
            Metric::new("rss_after_kib", rss_after as f64, "KiB"),
            Metric::new("rss_end_kib", rss_end as f64, "KiB"),
            Metric::new("node_threads", threads as f64, ""),
            Metric::new("rss_per_conn_bytes", rss_per_conn.round(), "B"),
            Metric::new(
                "memcached_rss_kib",
                cache.iter().map(|c| c.rss_kib).sum::<u64>() as f64,
                "KiB",
            ),
            Metric::new(
                "memcached_items",
                cache.iter().map(|c| c.items).sum::<u64>() as f64,
                "",
            ),
            Metric::new(
                "memcached_used_percent",
                round1(
                    100.0 * cache.iter().map(|c| c.bytes).sum::<u64>() as f64
                        / cache.iter().map(|c| c.limit).sum::<u64>().max(1) as f64,
                ),
                "%",
            ),
            Metric::new(
                "memcached_evictions",
                cache.iter().map(|c| c.evictions).sum::<u64>() as f64,
                "",
            ),
            Metric::new(
                "idle_cpu_percent",
                round1(100.0 * (cpu1 - cpu0) / p.secs.max(1e-9)),
                "%",
            ),
        ];
        Ok(Outcome {
            scenario: "hold",
            dialect: p.dialect,
            backend: format!("memcache, {nodes} nodes"),
            params: vec![
                ("connections", p.connections as f64),
                ("nodes", nodes as f64),
                ("workers", workers as f64),
                ("connect_rate", p.rate),
                ("hold_secs", p.secs),
            ],
            metrics,
        })
    }
}

/// `total` split into `parts` shares that differ by at most one.
fn spread(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// The addresses of the backend's memcached servers.
fn memcached_addrs(backend: &Backend) -> Result<Vec<SocketAddr>> {
    let list = backend
        .memcached
        .as_ref()
        .map(Cluster::env_value)
        .context("the memcache backend started no memcached")?;
    list.split(',')
        .map(|addr| {
            addr.parse()
                .with_context(|| format!("memcached address {addr:?}"))
        })
        .collect()
}

/// Resident memory of all `servers`, KiB.
fn sum_rss(servers: &[ServerProc]) -> Result<u64> {
    servers.iter().map(ServerProc::rss_kib).sum()
}

/// Threads of process `pid` (`Threads:` of /proc/PID/status): a node's blocking pool
/// grows under a connect storm, and each thread keeps some memory.
fn thread_count(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no Threads: in /proc/PID/status")
}

/// CPU time used so far by all `servers`, seconds.
fn sum_cpu(servers: &[ServerProc]) -> Result<f64> {
    servers.iter().map(ServerProc::cpu_secs).sum()
}

/// The `clients` of each node's `/status/` (the sockets it holds), in node order.
fn node_clients(servers: &[ServerProc]) -> Result<Vec<usize>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("status runtime")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(ASK_TIMEOUT)
        .build()?;
    runtime.block_on(async {
        let mut clients = Vec::with_capacity(servers.len());
        for server in servers {
            let url = format!("http://{}/status/", server.endpoint);
            let text = client
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("GET {url}"))?
                .text()
                .await
                .with_context(|| format!("GET {url}"))?;
            clients.push(parse_clients(&text).with_context(|| format!("{url} answered {text}"))?);
        }
        Ok(clients)
    })
}

/// `clients` of a `/status/` body.
fn parse_clients(body: &str) -> Option<usize> {
    let status: serde_json::Value = serde_json::from_str(body).ok()?;
    usize::try_from(status["clients"].as_u64()?).ok()
}

/// The `bench-worker` children of this process that are still running, and the
/// established TCP connections they hold between them: a device whose socket ended is
/// closed by its worker, so this is what the generator itself sees connected.
fn worker_sockets() -> Result<(usize, usize)> {
    let me = std::process::id();
    let mut workers = 0;
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        else {
            continue;
        };
        // A process may end between the listing and these reads: it is skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parent_pid(&stat) != Some(me) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).nth(1) != Some(b"bench-worker".as_slice()) {
            continue;
        }
        workers += 1;
        socket_inodes(pid, &mut inodes)?;
    }
    // Workers also hold a few non-TCP sockets (the runtime's): only established TCP
    // connections are devices.
    let table = read_tcp_table(inodes.len()).context("reading /proc/self/net/tcp")?;
    let established = count_established(table.as_slice(), &inodes)?;
    Ok((workers, established))
}

/// /proc/self/net/tcp, read in as few `read` calls as possible: the kernel restarts its
/// walk of the table at each call and may then repeat (or, if the table changed, skip)
/// rows, so the buffer is sized for the whole table (~150 bytes a row, two rows per
/// loopback connection).
fn read_tcp_table(connections: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open("/proc/self/net/tcp")?;
    let mut table = vec![0; (connections * 2 + 16_384) * 160];
    let mut len = 0;
    loop {
        if len == table.len() {
            table.resize(len * 2, 0);
        }
        match file.read(&mut table[len..])? {
            0 => break,
            n => len += n,
        }
    }
    table.truncate(len);
    Ok(table)
}

/// The parent pid (field 4) of a /proc/PID/stat line; the command name (field 2) may
/// hold spaces and parentheses, so fields are counted from its last `)`.
fn parent_pid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Adds the inodes of the sockets process `pid` has open to `inodes`.
fn socket_inodes(pid: u32, inodes: &mut HashSet<u64>) -> Result<()> {
    let dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed while listing is no longer open: not counted.
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(())
}

/// Sockets of `inodes` that a /proc/net/tcp table shows ESTABLISHED (`01`); a row the
/// kernel repeated counts once.
fn count_established(table: impl BufRead, inodes: &HashSet<u64>) -> std::io::Result<usize> {
    let mut counted = HashSet::new();
    // The first line is the header.
    for line in table.lines().skip(1) {
        let line = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if fields.get(3) == Some(&"01")
            && let Some(inode) = fields.get(9).and_then(|i| i.parse().ok())
            && inodes.contains(&inode)
        {
            counted.insert(inode);
        }
    }
    Ok(counted.len())
}

/// What one memcached server reports about itself (`stats`), and its RSS.
struct MemcachedStats {
    /// VmRSS of its process, KiB.
    rss_kib: u64,
    /// Items stored (`curr_items`).
    items: u64,
    /// Items evicted to make room (`evictions`): registrations lost to the cache size.
    evictions: u64,
    /// Bytes its items take (`bytes`).
    bytes: u64,
    /// Its memory limit, `-m` (`limit_maxbytes`).
    limit: u64,
}

impl MemcachedStats {
    /// Asks the server at `addr`.
    fn ask(addr: SocketAddr) -> Result<MemcachedStats> {
        let stats = memcached_stats(addr).with_context(|| format!("memcached {addr} stats"))?;
        let number = |name: &str| -> Result<u64> {
            stats
                .get(name)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("memcached {addr}: no `STAT {name}`"))
        };
        let pid = u32::try_from(number("pid")?)?;
        Ok(MemcachedStats {
            rss_kib: target::rss_kib(pid)?,
            items: number("curr_items")?,
            evictions: number("evictions")?,
            bytes: number("bytes")?,
            limit: number("limit_maxbytes")?,
        })
    }
}

/// The `STAT name value` lines of memcached's `stats` command.
fn memcached_stats(addr: SocketAddr) -> Result<HashMap<String, String>> {
    let mut stream = TcpStream::connect_timeout(&addr, ASK_TIMEOUT)?;
    stream.set_read_timeout(Some(ASK_TIMEOUT))?;
    stream.set_write_timeout(Some(ASK_TIMEOUT))?;
    stream.write_all(b"stats\r\n")?;
    let mut stats = HashMap::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line == "END" {
            return Ok(stats);
        }
        if let Some((name, value)) = line
            .strip_prefix("STAT ")
            .and_then(|rest| rest.split_once(' '))
        {
            stats.insert(name.to_owned(), value.trim().to_owned());
        }
    }
    bail!("the reply ended before END")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{
        count_established, default_nodes, parent_pid, parse_clients, spread, thread_count,
        worker_sockets,
    };

    #[test]
    fn devices_are_spread_evenly_and_nodes_stay_under_the_file_limit() {
        assert_eq!(spread(10, 3), vec![4, 3, 3]);
        assert_eq!(spread(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(spread(200_000, 12).iter().sum::<usize>(), 200_000);
        assert_eq!(default_nodes(200_000), 12);
        assert_eq!(default_nodes(18_000), 1);
        assert_eq!(default_nodes(18_001), 2);
        assert_eq!(default_nodes(0), 1);
        let most = spread(200_000, default_nodes(200_000))[0];
        assert!(most <= super::MAX_DEVICES_PER_NODE, "{most}");
    }

    #[test]
    fn parses_status_and_proc_stat() {
        assert_eq!(parse_clients(r#"{"status":"OK","clients":17}"#), Some(17));
        assert_eq!(parse_clients(r#"{"status":"OK"}"#), None);
        assert_eq!(parse_clients("<html>"), None);
        assert_eq!(parent_pid("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parent_pid("no parenthesis"), None);
        assert!(thread_count(std::process::id()).unwrap() >= 1);
    }

    #[test]
    fn only_established_rows_of_the_given_sockets_count() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                      retrnsmt   uid  timeout inode";
        let rows = [
            "   0: 0100007F:A7F5 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 11 1",
            "   1: 0100017F:8CA0 0100007F:A7F5 01 00000000:00000000 00:00000000 00000000 0 0 12 1",
            "   2: 0100017F:8CA2 0100007F:A7F5 01 00000000:00000000 00:00000000 00000000 0 0 13 1",
            "   3: 0100017F:8CA4 0100007F:A7F5 08 00000000:00000000 00:00000000 00000000 0 0 14 1",
            "   4: 0100007F:A7F5 0100017F:8CA0 01 00000000:00000000 00:00000000 00000000 0 0 15 1",
            "   1: 0100017F:8CA0 0100007F:A7F5 01 00000000:00000000 00:00000000 00000000 0 0 12 1",
        ];
        let table = format!("{header}\n{}\n", rows.join("\n"));
        let ours: HashSet<u64> = [11, 12, 13, 14].into_iter().collect();
        // 11 listens, 14 is in CLOSE_WAIT, 15 is the server's side of 12, and the row
        // of 12 is repeated.
        assert_eq!(count_established(table.as_bytes(), &ours).unwrap(), 2);
    }

    #[test]
    fn a_process_without_workers_counts_none() {
        assert_eq!(worker_sockets().unwrap(), (0, 0));
    }
}
