//! Throwaway memcached servers on free loopback ports, stopped when their guard is dropped.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sys;

/// The variable through which the tests learn the memcached servers, as
/// `127.0.0.1:P1,127.0.0.1:P2`.
pub const ENV: &str = "SIMPLEPUSH_TEST_MEMCACHED";

/// How many times a server start is retried when its port was taken in the meantime.
const START_ATTEMPTS: u32 = 5;
/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A group of memcached servers, all stopped when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    servers: Vec<Memcached>,
}

impl Cluster {
    /// Starts `count` servers, each on its own free loopback port, and waits until each
    /// accepts connections.
    pub fn start(count: usize) -> Result<Self> {
        let mut servers = Vec::with_capacity(count);
        for _ in 0..count {
            // On error, the servers already started are dropped, hence stopped.
            servers.push(Memcached::start()?);
        }
        Ok(Cluster { servers })
    }

    /// The value of [`ENV`] for these servers: `127.0.0.1:P1,127.0.0.1:P2,...`.
    pub fn env_value(&self) -> String {
        let addrs: Vec<String> = self.servers.iter().map(|s| s.addr().to_string()).collect();
        addrs.join(",")
    }
}

/// One memcached process; dropping the guard kills it and waits for it, so no server
/// outlives the run, whether it ends in success, an error or a panic.
#[derive(Debug)]
pub struct Memcached {
    child: Child,
    addr: SocketAddr,
}

/// How one attempt to start a server on a given port went.
enum Attempt {
    /// The server runs and answers on its port.
    Ready(Memcached),
    /// Someone else bound the port between our choice and memcached's bind.
    PortTaken,
}

impl Memcached {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_with(free_port)
    }

    /// Like [`Memcached::start`], with the ports to try coming from `pick_port`.
    ///
    /// A port is free when picked but may be taken before memcached binds it; that attempt
    /// is then retried with a new port, a few times.
    fn start_with(mut pick_port: impl FnMut() -> io::Result<u16>) -> Result<Self> {
        for _ in 0..START_ATTEMPTS {
            let port = pick_port().context("no free loopback port for memcached")?;
            match Self::try_start(port)? {
                Attempt::Ready(server) => return Ok(server),
                Attempt::PortTaken => println!("memcached: port {port} was taken, trying another"),
            }
        }
        bail!("memcached: every one of {START_ATTEMPTS} ports tried was taken")
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn try_start(port: u16) -> Result<Attempt> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut command = Command::new("memcached");
        command
            .args(["-l", "127.0.0.1", "-p", &port.to_string()])
            // No UDP (its port would need to be free too), 64 MiB of cache.
            .args(["-U", "0", "-m", "64"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Kept to explain an early exit; without -v memcached writes nothing else.
            .stderr(Stdio::piped());
        if sys::is_root() {
            // memcached refuses to run as root unless told which user to be.
            command.args(["-u", "root"]);
        }
        let child = command
            .spawn()
            .context("could not run memcached (is it installed and on PATH?)")?;
        // From here on, every early return drops the guard, which stops the process.
        let mut server = Memcached { child, addr };
        let deadline = Instant::now() + READY_TIMEOUT;

        loop {
            if let Some(status) = server.child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut pipe) = server.child.stderr.take() {
                    // Best effort: the message only decorates the error below.
                    let _ = pipe.read_to_string(&mut stderr);
                }
                if stderr.contains("Address already in use") {
                    return Ok(Attempt::PortTaken);
                }
                bail!(
                    "memcached on port {port} exited ({status}): {}",
                    stderr.trim()
                );
            }
            match server_pid(addr) {
                // Our own memcached answered (the pid tells it from a stranger on the port).
                Ok(pid) if pid == server.child.id() => {
                    println!("memcached: pid {pid} ready on {addr}");
                    return Ok(Attempt::Ready(server));
                }
                Ok(_) => return Ok(Attempt::PortTaken),
                Err(_) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                Err(err) => {
                    bail!("memcached on {addr} did not answer within {READY_TIMEOUT:?}: {err}")
                }
            }
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        // Fails only if it already exited, which is what we want anyway.
        let _ = self.child.kill();
        // Reap it, so that its port is closed once drop returns.
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now: bind port 0, read the port, close.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Asks the memcached at `addr` for its pid (`stats` command, `STAT pid N` line).
fn server_pid(addr: SocketAddr) -> io::Result<u32> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"stats\r\n")?;

    let mut pid = None;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line == "END" {
            break;
        }
        if let Some(value) = line.strip_prefix("STAT pid ") {
            pid = value.trim().parse().ok();
        }
    }
    pid.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no `STAT pid` in the reply"))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::panic::{self, AssertUnwindSafe};

    use super::{Cluster, Memcached, free_port};
    use crate::sys;

    /// These tests need a real memcached (`cargo xtask test` installs it first); without
    /// one they fail, naming the package, rather than pass without checking anything.
    fn memcached_installed() -> bool {
        assert!(
            sys::find_on_path("memcached").is_some(),
            "memcached is not on PATH: apt-get install -y memcached"
        );
        true
    }

    /// Stores then reads back a value through the memcached text protocol.
    fn set_then_get(addr: SocketAddr, key: &str, value: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "set {key} 0 0 {}\r\n{value}\r\nget {key}\r\n",
            value.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "STORED\r\n");
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("VALUE {key} 0 {}\r\n", value.len()));
        let mut data = vec![0; value.len() + 2];
        reader.read_exact(&mut data).unwrap();
        String::from_utf8(data).unwrap().trim_end().to_owned()
    }

    fn assert_stopped(addr: SocketAddr) {
        let err = TcpStream::connect(addr).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "{addr} still accepts"
        );
    }

    #[test]
    fn cluster_starts_two_working_servers_and_stops_them_on_drop() {
        if !memcached_installed() {
            return;
        }
        let cluster = Cluster::start(2).unwrap();
        let addrs: Vec<SocketAddr> = cluster.servers.iter().map(Memcached::addr).collect();
        assert_ne!(addrs[0].port(), addrs[1].port());
        assert_eq!(cluster.env_value(), format!("{},{}", addrs[0], addrs[1]));
        assert!(cluster.env_value().starts_with("127.0.0.1:"));
        for (i, addr) in addrs.iter().enumerate() {
            assert_eq!(
                set_then_get(*addr, "xtask-key", &format!("v{i}")),
                format!("v{i}")
            );
        }

        drop(cluster);
        for addr in addrs {
            assert_stopped(addr);
        }
    }

    #[test]
    fn start_retries_with_another_port_when_the_first_is_taken() {
        if !memcached_installed() {
            return;
        }
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let calls = Cell::new(0);
        let server = Memcached::start_with(|| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                Ok(taken)
            } else {
                free_port()
            }
        })
        .unwrap();

        assert!(calls.get() >= 2, "the taken port was not retried");
        assert_ne!(server.addr().port(), taken);
        assert_eq!(set_then_get(server.addr(), "k", "retried"), "retried");
    }

    #[test]
    fn server_is_stopped_when_the_run_panics() {
        if !memcached_installed() {
            return;
        }
        let addr = Cell::new(None);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let server = Memcached::start().unwrap();
            addr.set(Some(server.addr()));
            panic!("a failing step");
        }));

        assert!(outcome.is_err());
        assert_stopped(addr.get().unwrap());
    }
}
