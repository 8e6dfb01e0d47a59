//! The parent's side of the worker processes: starts them with their share of a job,
//! waits for their `ready`/`done` lines, and stops (or kills) them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use super::worker::Job;

/// Sockets one worker may hold: the box allows 20,000 open files per process.
pub const MAX_SOCKETS_PER_WORKER: usize = 18_000;

/// Worker processes running one job between them; killed and reaped on drop.
pub struct Fleet {
    workers: Vec<Worker>,
    lines: mpsc::Receiver<(usize, String)>,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fleet {
    /// Starts `count` workers, splitting the job's connections and rates evenly; worker
    /// `i` gets index `i` (its source addresses).
    pub fn start(job: &Job, count: usize) -> Result<Fleet> {
        let count = count.max(1);
        let exe = std::env::current_exe().context("own executable")?;
        let (tx, lines) = mpsc::channel();
        let mut workers = Vec::with_capacity(count);
        for i in 0..count {
            let mut share = job.clone();
            share.index = u8::try_from(i).context("too many workers")?;
            share.connections = job.connections / count + usize::from(i < job.connections % count);
            share.connect_rate = job.connect_rate / count as f64;
            share.put_rate = job.put_rate / count as f64;
            share.max_inflight_puts = (job.max_inflight_puts / count).max(1);
            let mut child = Command::new(&exe)
                .arg("bench-worker")
                .arg(serde_json::to_string(&share)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a bench worker")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let stdin = child.stdin.take();
            // Pushed first, so an error below still kills the children started so far.
            workers.push(Worker { child, stdin });
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((i, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Fleet { workers, lines })
    }

    /// Waits until every worker printed `tag {json}`; returns the parsed reports in worker
    /// order.
    pub fn collect<T: DeserializeOwned>(&mut self, tag: &str, timeout: Duration) -> Result<Vec<T>> {
        let deadline = Instant::now() + timeout;
        let mut reports: Vec<Option<T>> = (0..self.workers.len()).map(|_| None).collect();
        while reports.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (i, line) = match self.lines.recv_timeout(left) {
                Ok(got) => got,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("workers did not report `{tag}` within {timeout:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("every worker exited before reporting `{tag}`")
                }
            };
            if let Some(json) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                reports[i] = Some(
                    serde_json::from_str(json)
                        .with_context(|| format!("worker {i}: bad `{tag}` report"))?,
                );
            }
            for (i, worker) in self.workers.iter_mut().enumerate() {
                if reports[i].is_none()
                    && let Some(status) = worker.child.try_wait()?
                {
                    bail!("worker {i} exited ({status}) before reporting `{tag}`");
                }
            }
        }
        Ok(reports.into_iter().flatten().collect())
    }

    /// Sends `line` to every worker.
    pub fn tell(&mut self, line: &str) -> Result<()> {
        for worker in &mut self.workers {
            if let Some(stdin) = &mut worker.stdin {
                writeln!(stdin, "{line}").context("writing to a worker")?;
                stdin.flush()?;
            }
        }
        Ok(())
    }

    /// Tells the workers to stop and waits a little for them; stragglers are killed.
    pub fn stop(mut self) {
        let _ = self.tell("stop");
        for worker in &mut self.workers {
            worker.stdin = None;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for worker in &mut self.workers {
            while Instant::now() < deadline {
                if !matches!(worker.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Drop kills whatever is left.
    }
}
