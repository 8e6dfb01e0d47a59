//! What a scenario measured, printed as a readable table and as one JSON line stamped
//! with when, at which commit and on what machine it was measured.

use std::fmt;
use std::process::Command;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::worker::Dialect;
use crate::sys;

/// When, at which commit and on what machine a run measured its results: read from the
/// clock, git and the kernel when the run starts, never written into the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The UTC day the run started, `YYYY-MM-DD`.
    pub date: String,
    /// `git rev-parse --short HEAD`, with `-dirty` when the work tree has uncommitted
    /// changes; `unknown` outside a git checkout.
    pub commit: String,
    /// Cores, memory and kernel, e.g. `2 cores, 23.5 GiB, Linux 6.1.0-18-amd64`.
    pub machine: String,
}

impl Stamp {
    /// Reads the stamp of a run starting now.
    pub fn measure() -> Stamp {
        let cores = std::thread::available_parallelism().ok().map(usize::from);
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok();
        Stamp {
            date: utc_date(SystemTime::now()),
            commit: commit(),
            machine: machine(cores, meminfo.as_deref(), kernel.as_deref()),
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "measured {} (UTC) at commit {} on {}",
            self.date, self.commit, self.machine
        )
    }
}

/// The UTC day of `time`, `YYYY-MM-DD`.
fn utc_date(time: SystemTime) -> String {
    // RFC 3339 starts with the date: `2026-11-24T09:30:00Z`.
    let text = humantime::format_rfc3339_seconds(time).to_string();
    text.get(..10).unwrap_or(&text).to_owned()
}

/// The checked-out commit, `-dirty` with uncommitted changes, `unknown` without git.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(sys::workspace_root())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) if !hash.is_empty() => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{hash}-dirty") } else { hash }
        }
        _ => "unknown".to_owned(),
    }
}

/// `N cores, M GiB, Linux K` from the core count, `/proc/meminfo` and the kernel
/// release; a part that could not be read says so.
fn machine(cores: Option<usize>, meminfo: Option<&str>, kernel: Option<&str>) -> String {
    let cores = cores.map_or_else(|| "? cores".to_owned(), |n| format!("{n} cores"));
    let memory = meminfo.and_then(mem_total_kib).map_or_else(
        || "? GiB".to_owned(),
        |kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)),
    );
    let kernel = kernel
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .unwrap_or("unknown");
    format!("{cores}, {memory}, Linux {kernel}")
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One measured number, with the baseline's and the goal it is held to.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Key in the JSON line, e.g. `p99_us`.
    pub name: &'static str,
    /// simplepush's value.
    pub value: f64,
    /// Unit shown in the table.
    pub unit: &'static str,
    /// The baseline's value of the same metric, when it has one.
    pub baseline: Option<f64>,
    /// The project's goal, as text, and whether it was met.
    pub target: Option<(&'static str, bool)>,
}

impl Metric {
    /// A metric without baseline or target.
    pub fn new(name: &'static str, value: f64, unit: &'static str) -> Metric {
        Metric {
            name,
            value,
            unit,
            baseline: None,
            target: None,
        }
    }

    /// Sets the baseline's value.
    pub fn vs(mut self, baseline: Option<f64>) -> Metric {
        self.baseline = baseline;
        self
    }

    /// Sets the goal and whether `value` meets it.
    pub fn goal(mut self, text: &'static str, met: bool) -> Metric {
        self.target = Some((text, met));
        self
    }
}

/// The result of one scenario on one backend.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: &'static str,
    /// The protocol the devices spoke.
    pub dialect: Dialect,
    /// Backend name.
    pub backend: String,
    /// The run's parameters (connections, rate, seconds...).
    pub params: Vec<(&'static str, f64)>,
    /// The numbers.
    pub metrics: Vec<Metric>,
}

impl Outcome {
    /// One JSON object on one line, stamped with `stamp`.
    pub fn json_line(&self, stamp: &Stamp) -> String {
        let mut metrics = Map::new();
        let mut baseline = Map::new();
        let mut targets = Map::new();
        for metric in &self.metrics {
            metrics.insert(metric.name.into(), number(metric.value));
            if let Some(value) = metric.baseline {
                baseline.insert(metric.name.into(), number(value));
            }
            if let Some((text, met)) = metric.target {
                targets.insert(metric.name.into(), json!({"target": text, "met": met}));
            }
        }
        let params: Map<String, Value> = self
            .params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), number(*v)))
            .collect();
        json!({
            "scenario": self.scenario,
            "dialect": self.dialect.name(),
            "backend": self.backend,
            "date": stamp.date,
            "commit": stamp.commit,
            "machine": stamp.machine,
            "params": params,
            "metrics": metrics,
            "baseline": baseline,
            "targets": targets,
        })
        .to_string()
    }

    /// A plain-text table: metric, value, baseline, ratio, target.
    pub fn table(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", show(*v)))
            .collect();
        let mut out = format!(
            "== {} ({}) on {} ({})\n",
            self.scenario,
            self.dialect.name(),
            self.backend,
            params.join(", ")
        );
        out.push_str(&format!(
            "  {:<26} {:>14} {:>14} {:>8}  {}\n",
            "metric", "simplepush", "baseline", "ratio", "target"
        ));
        for m in &self.metrics {
            let value = format!("{} {}", show(m.value), m.unit);
            let (base, ratio) = match m.baseline {
                Some(b) => (
                    format!("{} {}", show(b), m.unit),
                    if b != 0.0 {
                        format!("{:.2}", m.value / b)
                    } else {
                        "-".into()
                    },
                ),
                None => ("-".into(), "-".into()),
            };
            let target = match m.target {
                Some((text, true)) => format!("{text}: met"),
                Some((text, false)) => format!("{text}: NOT met"),
                None => String::new(),
            };
            out.push_str(&format!(
                "  {:<26} {value:>14} {base:>14} {ratio:>8}  {target}\n",
                m.name
            ));
        }
        out
    }
}

/// A number for JSON: integers stay integers, others get 3 decimals.
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        json!(value as i64)
    } else {
        json!((value * 1000.0).round() / 1000.0)
    }
}

/// A number for the table.
fn show(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        format!("{}", value as i64)
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::{Dialect, Metric, Outcome, Stamp, machine, mem_total_kib, utc_date};
    use std::process::Command;
    use std::time::{Duration, UNIX_EPOCH};

    /// What a command prints, trimmed.
    fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn the_stamp_is_today_in_utc_on_this_machine() {
        let before = run("date", &["-u", "+%F"]);
        let stamp = Stamp::measure();
        let after = run("date", &["-u", "+%F"]);
        // `before` and `after` differ only when the test straddles midnight.
        assert!(
            stamp.date == before || stamp.date == after,
            "{stamp:?}, date -u says {before}"
        );
        let cores = run("nproc", &[]);
        assert!(
            stamp.machine.starts_with(&format!("{cores} cores, ")),
            "{stamp:?}, nproc says {cores}"
        );
        let kernel = run("uname", &["-r"]);
        assert!(
            stamp.machine.ends_with(&format!("Linux {kernel}")),
            "{stamp:?}"
        );
        let head = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(crate::sys::workspace_root())
            .output()
            .ok()
            .filter(|out| out.status.success());
        match head {
            Some(out) => {
                let head = String::from_utf8(out.stdout).unwrap();
                assert!(
                    stamp.commit.starts_with(head.trim()),
                    "{stamp:?}, HEAD {head}"
                );
            }
            // A source tree without git (an unpacked release).
            None => assert_eq!(stamp.commit, "unknown"),
        }
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        let leap_day_end = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(utc_date(leap_day_end), "2024-02-29");
        assert_eq!(
            utc_date(leap_day_end + Duration::from_secs(1)),
            "2024-03-01"
        );
    }

    #[test]
    fn machine_reads_meminfo_and_says_what_it_could_not_read() {
        let meminfo = "MemTotal:       24683584 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(24_683_584));
        assert_eq!(
            machine(Some(2), Some(meminfo), Some("6.1.0-18-amd64\n")),
            "2 cores, 23.5 GiB, Linux 6.1.0-18-amd64"
        );
        assert_eq!(
            machine(None, Some("garbage"), None),
            "? cores, ? GiB, Linux unknown"
        );
    }

    #[test]
    fn json_line_and_table_carry_values_ratios_and_targets() {
        let outcome = Outcome {
            scenario: "notify",
            dialect: Dialect::Webpush,
            backend: "memory".into(),
            params: vec![("rate", 10000.0)],
            metrics: vec![
                Metric::new("p99_us", 900.0, "µs")
                    .vs(Some(300.0))
                    .goal("< 5000 µs", true),
                Metric::new("lost", 0.0, ""),
            ],
        };
        let stamp = Stamp {
            date: "2000-01-02".into(),
            commit: "abc1234-dirty".into(),
            machine: "3 cores, 1.0 GiB, Linux 6.1".into(),
        };
        let line: serde_json::Value = serde_json::from_str(&outcome.json_line(&stamp)).unwrap();
        assert_eq!(line["date"], "2000-01-02");
        assert_eq!(line["dialect"], "webpush");
        assert_eq!(line["commit"], "abc1234-dirty");
        assert_eq!(line["machine"], "3 cores, 1.0 GiB, Linux 6.1");
        assert_eq!(line["metrics"]["p99_us"], 900);
        assert_eq!(line["baseline"]["p99_us"], 300);
        assert_eq!(line["targets"]["p99_us"]["met"], true);
        assert_eq!(line["params"]["rate"], 10000);
        let table = outcome.table();
        assert!(table.contains("3.00"), "{table}");
        assert!(
            table.starts_with("== notify (webpush) on memory"),
            "{table}"
        );
        assert!(table.contains("< 5000 µs: met"), "{table}");
        assert_eq!(line["metrics"]["lost"], 0);
    }
}
