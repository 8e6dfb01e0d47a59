//! The interop check at the end of `cargo xtask test`'s `all` leg: a library that app
//! servers really use (Python's pywebpush, pinned) pushes through the debug binary to a
//! browser-like device that decrypts each message (tests/interop/pywebpush_check.py).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::ServerProc;
use crate::sys;

/// What the check needs from PyPI, pinned so that a run is reproducible (pywebpush brings
/// http_ece, py-vapid and cryptography).
const PYTHON_PACKAGES: [&str; 2] = ["pywebpush==2.5.0", "websockets==17.4"];

/// The check script, relative to the workspace root.
const SCRIPT: &str = "tests/interop/pywebpush_check.py";

/// The whole check may take this long (it pushes four messages).
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Installs the pinned packages when missing, serves a memory store with `binary`, and
/// runs the script against it.
pub fn pywebpush(binary: &Path) -> Result<()> {
    let python = sys::find_on_path("python3").context("python3 is not on PATH")?;
    let installed = Command::new(&python)
        .args(["-c", "import pywebpush, websockets, http_ece, py_vapid"])
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        println!("$ python3 -m pip install {}", PYTHON_PACKAGES.join(" "));
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PYTHON_PACKAGES)
            .status()
            .context("running pip")?;
        if !status.success() {
            bail!(
                "could not install {}: run `python3 -m pip install {}`",
                PYTHON_PACKAGES.join(" "),
                PYTHON_PACKAGES.join(" ")
            );
        }
    }
    let config = "[server]\nws_addr = \"127.0.0.1:0\"\nendpoint_addr = \"127.0.0.1:0\"\n\
                  admin_addr = \"127.0.0.1:0\"\n";
    let mut server = ServerProc::simplepush(binary, config)?;
    let script = sys::workspace_root().join(SCRIPT);
    println!("$ python3 {SCRIPT} ws://{}/", server.ws);
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(format!("ws://{}/", server.ws))
        .spawn()
        .context("running the interop script")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the pywebpush check took over {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    server.check_alive()?;
    if !status.success() {
        bail!(
            "the pywebpush check failed ({status}); server log:\n{}",
            server.log_tail()
        );
    }
    Ok(())
}
