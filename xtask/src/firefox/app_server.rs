//! The app server of the Firefox check is the project's own command line, as an operator
//! would use it: `simplepush genkey --vapid` makes the run's VAPID key pair, and
//! `simplepush push --subscription FILE --data TEXT --vapid-key FILE` encrypts each
//! message for the subscription Firefox made (RFC 8291, `aes128gcm`) and POSTs it signed
//! with VAPID (RFC 8292). So a browser's own subscription JSON goes through the same code
//! path as a user's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

/// The `TTL` of every push (seconds): long enough to outlive a browser restart.
const TTL_SECS: u64 = 300;

/// The `sub` claim of every VAPID token: who runs this app server.
const CONTACT: &str = "mailto:firefox-check@localhost";

/// The binary's `genkey` and `push` commands, with this run's VAPID key.
#[derive(Debug)]
pub struct AppServer {
    binary: PathBuf,
    dir: PathBuf,
    key: PathBuf,
    public_b64: String,
    pushes: AtomicUsize,
}

impl AppServer {
    /// Makes the run's VAPID key pair with `simplepush genkey --vapid` in `dir`.
    pub fn new(binary: &Path, dir: &Path) -> Result<AppServer> {
        let key = dir.join("vapid.pem");
        let output = run(Command::new(binary)
            .args(["genkey", "--vapid", "--out"])
            .arg(&key))?;
        if !output.status.success() {
            bail!("simplepush genkey --vapid failed: {}", describe(&output));
        }
        let public_b64 = String::from_utf8(output.stdout)
            .context("genkey --vapid printed something else than text")?
            .trim()
            .to_owned();
        Ok(AppServer {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            key,
            public_b64,
            pushes: AtomicUsize::new(0),
        })
    }

    /// The public key, base64url (65-byte uncompressed point): `applicationServerKey`.
    pub fn public_b64(&self) -> &str {
        &self.public_b64
    }

    /// Pushes `text` to the subscription (`PushSubscription.toJSON()` as Firefox gave it)
    /// with `simplepush push --subscription`, and returns the HTTP status it printed.
    pub fn push(&self, subscription_json: &str, text: &str) -> Result<u16> {
        let n = self.pushes.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("subscription-{n}.json"));
        std::fs::write(&file, subscription_json)
            .with_context(|| format!("writing {}", file.display()))?;
        let output = run(Command::new(&self.binary)
            .arg("push")
            .arg("--subscription")
            .arg(&file)
            .args(["--data", text, "--ttl", &TTL_SECS.to_string()])
            .args(["--subject", CONTACT])
            .arg("--vapid-key")
            .arg(&self.key))?;
        status_of(&output)
    }
}

/// Runs a command to its end, keeping what it printed.
fn run(command: &mut Command) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("running {command:?}"))
}

/// The status on the first line `push` printed (`201 Created`, `403 Forbidden: …`); a
/// failure without one (a bad file, no answer) is an error with everything it said.
fn status_of(output: &Output) -> Result<u16> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .split_whitespace()
        .next()
        .and_then(|word| word.parse::<u16>().ok())
        .with_context(|| format!("simplepush push printed no status: {}", describe(output)))
}

/// Exit status, stdout and stderr of a command, for an error message.
fn describe(output: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{ExitStatus, Output};

    use super::status_of;

    fn output(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_status_is_read_from_the_first_line_push_printed() {
        let created = output(0, "201 Created\nLocation: http://l/m/x\nTTL: 300\n", "");
        assert_eq!(status_of(&created).unwrap(), 201);
        let refused = output(1, "403 Forbidden: another key\n", "");
        assert_eq!(status_of(&refused).unwrap(), 403);
        let broken = output(2, "", "the subscription is not JSON");
        let err = status_of(&broken).unwrap_err().to_string();
        assert!(err.contains("the subscription is not JSON"), "{err}");
    }
}
