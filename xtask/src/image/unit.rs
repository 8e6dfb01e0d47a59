//! The check of dist/simplepush.service, without a running systemd (CI machines and
//! containers have none): what the unit promises about the server (its drain time, the
//! store directory, no reload) is read from the file; `systemd-analyze verify` checks a
//! copy whose ExecStart names the built binary (it insists the binary exists), and any
//! complaint it prints fails the check, warnings included (an unknown key or a bad value
//! is only a warning to it); `systemd-analyze security --offline` scores its sandbox.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::check::DRAIN_LIMIT;
use crate::bench::ScratchDir;
use crate::sys;

/// Where the unit expects the binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/simplepush";

/// The highest `systemd-analyze security` exposure accepted, in its tenths (1.5 shown is
/// 15 here): 2.0, the top of the "OK" band. The unit scores 1.5 today.
const EXPOSURE_THRESHOLD: u32 = 20;

/// Fewest descriptors `LimitNOFILE=` may give: a node is for many devices.
const MIN_NOFILE: u64 = 65_536;

/// Checks dist/simplepush.service, verifying it against `binary`.
pub fn check(binary: &Path) -> Result<()> {
    let path = sys::workspace_root().join("dist/simplepush.service");
    let text = std::fs::read_to_string(&path).context("reading dist/simplepush.service")?;
    expect_promises(&text)?;
    let exec_start = service_value(&text, "ExecStart").context("no ExecStart=")?;
    let args: Vec<&str> = exec_start.split_whitespace().skip(1).collect();
    expect_flags_known(binary, &args)?;

    let binary =
        std::fs::canonicalize(binary).with_context(|| format!("finding {}", binary.display()))?;
    let scratch = ScratchDir::new("unit")?;
    let copy = scratch.path().join("simplepush.service");
    std::fs::write(
        &copy,
        text.replace(
            &format!("ExecStart={INSTALLED_BINARY} "),
            &format!("ExecStart={} ", binary.display()),
        ),
    )?;

    println!("$ systemd-analyze verify --man=no simplepush.service (ExecStart: the built binary)");
    let output = systemd_analyze(&["verify", "--man=no"], &copy)?;
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || !complaints.trim().is_empty() {
        bail!(
            "systemd-analyze verify ({}) found problems:\n{}",
            output.status,
            complaints.trim()
        );
    }

    let threshold = format!("--threshold={EXPOSURE_THRESHOLD}");
    let output = systemd_analyze(&["security", "--offline=yes", &threshold], &copy)?;
    let report = String::from_utf8_lossy(&output.stdout);
    let overall = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or("no overall exposure level printed")
        .trim_start_matches(['→', ' ']);
    if !output.status.success() {
        bail!(
            "systemd-analyze security: {overall}, above {:.1}:\n{report}{}",
            f64::from(EXPOSURE_THRESHOLD) / 10.0,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!("unit: verified; {overall}");
    Ok(())
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Result<std::process::Output> {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .output()
        .context("running systemd-analyze (package systemd)")
}

/// What the unit must say for the server as it is: a stop timeout above its drain time,
/// SIGTERM, the store in the state directory, no ExecReload (the server has no reload),
/// a restart on failure, enough descriptors, no privileges.
fn expect_promises(text: &str) -> Result<()> {
    let value = |key: &str| service_value(text, key).with_context(|| format!("no {key}="));
    let exec_start = value("ExecStart")?;
    for part in [
        INSTALLED_BINARY,
        "--config /etc/simplepush/config.toml",
        "--store-path /var/lib/simplepush",
    ] {
        if !exec_start.contains(part) {
            bail!("ExecStart= must contain `{part}`: {exec_start}");
        }
    }
    for (key, wanted) in [
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "simplepush"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
    ] {
        let found = value(key)?;
        if found != wanted {
            bail!("{key}={found}, expected {key}={wanted}");
        }
    }
    if service_value(text, "ExecReload").is_some() {
        bail!("ExecReload= is set, but the server has no reload (it reads its config once)");
    }
    let stop = value("TimeoutStopSec")?;
    let stop = humantime::parse_duration(stop)
        .or_else(|_| stop.parse::<u64>().map(Duration::from_secs))
        .map_err(|_| anyhow::anyhow!("TimeoutStopSec={stop} is not a duration"))?;
    if stop <= DRAIN_LIMIT {
        bail!("TimeoutStopSec= is {stop:?}: it must exceed the drain time ({DRAIN_LIMIT:?})");
    }
    let nofile = value("LimitNOFILE")?;
    let nofile: u64 = nofile
        .parse()
        .with_context(|| format!("LimitNOFILE={nofile} is not a number"))?;
    if nofile < MIN_NOFILE {
        bail!("LimitNOFILE={nofile} is below {MIN_NOFILE}");
    }
    Ok(())
}

/// `binary` must accept the ExecStart flags (`--help` at the end: clap rejects an unknown
/// flag before it prints help).
fn expect_flags_known(binary: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "the binary refuses ExecStart's flags {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The last value of `key` in the [Service] section (systemd: a later line wins; an
/// empty value counts as set).
fn service_value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let mut section = "";
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[Service]" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            found = Some(v.trim());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{expect_promises, service_value};

    fn unit() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/simplepush.service");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_repository_unit_keeps_its_promises() {
        expect_promises(&unit()).unwrap();
    }

    #[test]
    fn a_reload_a_short_stop_timeout_or_another_signal_is_refused() {
        let good = unit();
        let with_reload = good.replace(
            "[Service]\n",
            "[Service]\nExecReload=/bin/kill -HUP $MAINPID\n",
        );
        assert!(expect_promises(&with_reload).is_err());
        let short = good.replace("TimeoutStopSec=30s", "TimeoutStopSec=10s");
        assert_ne!(short, good);
        assert!(expect_promises(&short).is_err());
        let int = good.replace("KillSignal=SIGTERM", "KillSignal=SIGINT");
        assert_ne!(int, good);
        assert!(expect_promises(&int).is_err());
    }

    #[test]
    fn service_values_come_from_the_service_section_and_the_last_line_wins() {
        let text = "[Unit]\nDescription=x\n[Service]\n# Description=no\nA=1\nA=2\nB=\n";
        assert_eq!(service_value(text, "A"), Some("2"));
        assert_eq!(service_value(text, "B"), Some(""));
        assert_eq!(service_value(text, "Description"), None);
    }
}
