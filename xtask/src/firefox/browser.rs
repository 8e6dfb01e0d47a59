//! A real Firefox (Debian's `firefox-esr`), headless, on a fresh profile, driven over
//! Marionette; killed with its whole process group when dropped.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::marionette::{self, Marionette};

/// The executable Debian's package installs.
pub const EXECUTABLE: &str = "firefox-esr";

/// How long Firefox may take to start and accept a Marionette session (a cold start of a
/// fresh profile on a loaded two-core machine takes a few seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one Marionette command may take (scripts have their own, shorter, limit).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an asynchronous script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Firefox may take to exit after Marionette:Quit.
const QUIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often startup and exit are polled.
const POLL: Duration = Duration::from_millis(50);

/// Preferences of every profile (`user.js`), besides the push server's URL. Firefox reads
/// them at startup; set by the user, they also win over the ones Marionette recommends
/// (which, among others, switch the push connection off).
const PREFERENCES: &[(&str, PrefValue)] = &[
    // Marionette on a free port, written to `MarionetteActivePort` in the profile.
    ("marionette.port", PrefValue::Int(0)),
    // Push: a plain ws:// server, no permission prompt, every step logged on stdout.
    ("dom.push.connection.enabled", PrefValue::Bool(true)),
    (
        "dom.push.testing.allowInsecureServerURL",
        PrefValue::Bool(true),
    ),
    ("dom.push.testing.ignorePermission", PrefValue::Bool(true)),
    ("dom.push.loglevel", PrefValue::Str("Debug")),
    ("devtools.console.stdout.chrome", PrefValue::Bool(true)),
    ("devtools.console.stdout.content", PrefValue::Bool(true)),
    // Only the check switches between online and offline.
    ("network.manage-offline-status", PrefValue::Bool(false)),
    (
        "network.captive-portal-service.enabled",
        PrefValue::Bool(false),
    ),
    (
        "network.connectivity-service.enabled",
        PrefValue::Bool(false),
    ),
    // No first-run pages, default-browser questions or session restore.
    ("browser.shell.checkDefaultBrowser", PrefValue::Bool(false)),
    (
        "browser.startup.homepage_override.mstone",
        PrefValue::Str("ignore"),
    ),
    ("browser.startup.page", PrefValue::Int(0)),
    ("browser.startup.homepage", PrefValue::Str("about:blank")),
    (
        "startup.homepage_welcome_url",
        PrefValue::Str("about:blank"),
    ),
    ("browser.aboutwelcome.enabled", PrefValue::Bool(false)),
    ("browser.newtabpage.enabled", PrefValue::Bool(false)),
    (
        "browser.sessionstore.resume_from_crash",
        PrefValue::Bool(false),
    ),
    ("browser.tabs.warnOnClose", PrefValue::Bool(false)),
    ("browser.warnOnQuit", PrefValue::Bool(false)),
    ("toolkit.startup.max_resumed_crashes", PrefValue::Int(-1)),
    // Nothing phones home: updates, telemetry, studies, remote settings, safe browsing.
    ("app.update.disabledForTesting", PrefValue::Bool(true)),
    ("app.update.auto", PrefValue::Bool(false)),
    ("app.normandy.enabled", PrefValue::Bool(false)),
    ("app.normandy.api_url", PrefValue::Str("")),
    ("app.shield.optoutstudies.enabled", PrefValue::Bool(false)),
    (
        "datareporting.policy.dataSubmissionEnabled",
        PrefValue::Bool(false),
    ),
    (
        "datareporting.healthreport.uploadEnabled",
        PrefValue::Bool(false),
    ),
    ("datareporting.usage.uploadEnabled", PrefValue::Bool(false)),
    ("toolkit.telemetry.enabled", PrefValue::Bool(false)),
    ("toolkit.telemetry.unified", PrefValue::Bool(false)),
    ("toolkit.telemetry.server", PrefValue::Str("")),
    (
        "services.settings.server",
        PrefValue::Str("data:,#remote-settings-off"),
    ),
    (
        "messaging-system.rsexperimentloader.enabled",
        PrefValue::Bool(false),
    ),
    (
        "browser.safebrowsing.downloads.enabled",
        PrefValue::Bool(false),
    ),
    (
        "browser.safebrowsing.downloads.remote.enabled",
        PrefValue::Bool(false),
    ),
    (
        "browser.safebrowsing.malware.enabled",
        PrefValue::Bool(false),
    ),
    (
        "browser.safebrowsing.phishing.enabled",
        PrefValue::Bool(false),
    ),
    (
        "browser.safebrowsing.blockedURIs.enabled",
        PrefValue::Bool(false),
    ),
    ("browser.region.network.url", PrefValue::Str("")),
    ("browser.region.update.enabled", PrefValue::Bool(false)),
    ("browser.search.update", PrefValue::Bool(false)),
    ("extensions.update.enabled", PrefValue::Bool(false)),
    ("extensions.getAddons.cache.enabled", PrefValue::Bool(false)),
    (
        "extensions.systemAddon.update.enabled",
        PrefValue::Bool(false),
    ),
    ("geo.provider.network.url", PrefValue::Str("")),
    ("network.dns.disablePrefetch", PrefValue::Bool(true)),
    ("network.prefetch-next", PrefValue::Bool(false)),
    ("network.http.speculative-parallel-limit", PrefValue::Int(0)),
    ("browser.urlbar.suggest.searches", PrefValue::Bool(false)),
    ("browser.topsites.contile.enabled", PrefValue::Bool(false)),
    ("browser.ml.enable", PrefValue::Bool(false)),
];

/// A preference value as `user.js` spells it.
#[derive(Debug, Clone, Copy)]
enum PrefValue {
    Bool(bool),
    Int(i64),
    Str(&'static str),
}

/// `user_pref("name", value);` for one preference.
fn user_pref(name: &str, value: &str) -> String {
    format!("user_pref({}, {value});\n", Value::from(name))
}

/// The whole `user.js` of a profile whose push server is `push_server_url`.
pub fn user_js(push_server_url: &str) -> String {
    let mut text = String::from("// Written by `cargo xtask firefox` for one run.\n");
    text += &user_pref(
        "dom.push.serverURL",
        &Value::from(push_server_url).to_string(),
    );
    for (name, value) in PREFERENCES {
        let value = match value {
            PrefValue::Bool(b) => b.to_string(),
            PrefValue::Int(i) => i.to_string(),
            PrefValue::Str(s) => Value::from(*s).to_string(),
        };
        text += &user_pref(name, &value);
    }
    text
}

/// A Firefox profile directory with its `user.js`, and the log file every Firefox
/// started on it writes its stdout and stderr to.
#[derive(Debug)]
pub struct Profile {
    dir: PathBuf,
    log: PathBuf,
}

impl Profile {
    /// Creates a fresh profile in `dir/profile` whose push server is `push_server_url`;
    /// Firefox's output goes to `dir/firefox.log`.
    pub fn create(dir: &Path, push_server_url: &str) -> Result<Profile> {
        let profile = dir.join("profile");
        fs::create_dir_all(&profile).with_context(|| format!("creating {}", profile.display()))?;
        fs::write(profile.join("user.js"), user_js(push_server_url)).context("writing user.js")?;
        Ok(Profile {
            dir: profile,
            log: dir.join("firefox.log"),
        })
    }

    /// Appends a line of ours to the log, to mark where a step begins.
    pub fn mark(&self, text: &str) {
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(file, "=== check: {text}");
        }
    }

    /// The tail of Firefox's log that explains a failure: the push service's lines (every
    /// frame received, every step of the service), errors and warnings, and our marks.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let relevant: Vec<&str> = text.lines().filter(|line| is_relevant(line)).collect();
        relevant[relevant.len().saturating_sub(lines)..]
            .iter()
            .map(|line| shorten(line))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Longest line of a failure report: a frame with a 4 KiB message fits, a dump of a
/// whole subscription record does not.
const MAX_LINE: usize = 1500;

/// `line`, cut at [`MAX_LINE`] bytes (on a character boundary).
fn shorten(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_owned();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [… {} more bytes]", &line[..end], line.len() - end)
}

/// Whether a line of Firefox's output belongs in a failure report: the push service's
/// own lines (not its database's, which dump whole records), errors, our marks.
fn is_relevant(line: &str) -> bool {
    if line.starts_with("console.debug: PushDB:") {
        return false;
    }
    line.starts_with("=== check:")
        || line.contains("Push")
        || line.starts_with("console.error")
        || line.starts_with("console.warn")
        || line.starts_with("JavaScript error")
        || line.contains("ServiceWorker")
}

/// A running Firefox with a Marionette session; killed (its whole process group) and
/// reaped when dropped, whatever state it is in.
#[derive(Debug)]
pub struct Firefox {
    child: Child,
    driver: Marionette,
}

impl Firefox {
    /// Starts Firefox headless on `profile` and opens a Marionette session.
    pub fn start(profile: &Profile) -> Result<Firefox> {
        let port_file = profile.dir.join("MarionetteActivePort");
        // A file left by an earlier run names a port nobody listens on any more.
        let _ = fs::remove_file(&port_file);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&profile.log)
            .context("opening the Firefox log")?;
        let mut command = Command::new(EXECUTABLE);
        command
            .args(["--headless", "--marionette", "--remote-allow-system-access"])
            .arg("--profile")
            .arg(&profile.dir)
            .arg("--no-remote")
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Firefox starts content processes, and Drop kills
            // them all with one signal.
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {EXECUTABLE} (is it installed?)"))?;
        let mut guard = Starting { child: Some(child) };
        let port = wait_for_port(&port_file, guard.child())?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut driver = Marionette::connect(addr, COMMAND_TIMEOUT)?;
        driver.new_session()?;
        driver.set_script_timeout(SCRIPT_TIMEOUT)?;
        Ok(Firefox {
            child: guard.take(),
            driver,
        })
    }

    /// Loads `url` in the tab.
    pub fn open(&mut self, url: &str) -> Result<()> {
        self.driver.navigate(url)
    }

    /// Runs an asynchronous script in the page (see [`Marionette::execute_async`]). The
    /// scripts of this check answer `{ok: value}` or `{error: "..."}`; the value is
    /// returned, the error becomes one.
    pub fn run_in_page(&mut self, script: &str, args: Value) -> Result<Value> {
        let answer = self.driver.execute_async(script, args)?;
        if let Some(error) = answer.get("error") {
            bail!("the page's script failed: {}", error.as_str().unwrap_or(""));
        }
        answer
            .get("ok")
            .cloned()
            .with_context(|| format!("the page's script answered {answer}"))
    }

    /// Switches the browser offline or back online, as the File menu's "Work Offline"
    /// does (`Services.io.offline`, a chrome-privileged setting).
    pub fn set_offline(&mut self, offline: bool) -> Result<()> {
        self.driver.set_context(marionette::ScriptContext::Chrome)?;
        let result = self.driver.execute(
            "Services.io.offline = arguments[0]; return Services.io.offline;",
            json!([offline]),
        );
        self.driver
            .set_context(marionette::ScriptContext::Content)?;
        let now = result?;
        if now != json!(offline) {
            bail!("Services.io.offline is {now} after setting it to {offline}");
        }
        Ok(())
    }

    /// Quits as a user would and waits for the process to exit.
    pub fn quit(mut self) -> Result<()> {
        // The answer may be lost when the socket closes under it; the exit is what counts.
        let asked = self.driver.quit();
        let deadline = Instant::now() + QUIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Content processes may linger an instant after the parent; Drop kills
                // the group anyway.
                if !status.success() {
                    bail!("Firefox exited with {status} after Marionette:Quit");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Firefox did not exit within {QUIT_TIMEOUT:?} of Marionette:Quit ({})",
                    match asked {
                        Ok(()) => "acknowledged".to_owned(),
                        Err(err) => format!("{err:#}"),
                    }
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// A Firefox being started, killed if the start fails half-way.
struct Starting {
    child: Option<Child>,
}

impl Starting {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("taken only at the end")
    }

    fn take(&mut self) -> Child {
        self.child.take().expect("taken once")
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            kill_group(child);
        }
    }
}

/// Kills the process group `child` leads (Firefox and its content processes), then
/// reaps `child`.
fn kill_group(child: &mut Child) {
    // The group id is the leader's pid (`process_group(0)`). `kill` is a separate
    // program, so no unsafe code here; it fails harmlessly when the group is gone.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until Firefox has written its Marionette port (the file appears empty first).
fn wait_for_port(file: &Path, child: &mut Child) -> Result<u16> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("Firefox exited at startup ({status})");
        }
        if let Ok(text) = fs::read_to_string(file)
            && let Ok(port) = text.trim().parse::<u16>()
            && port != 0
        {
            return Ok(port);
        }
        if Instant::now() > deadline {
            bail!(
                "Firefox did not write {} within {START_TIMEOUT:?}",
                file.display()
            );
        }
        thread::sleep(POLL);
    }
}

/// Whether Firefox is installed (on PATH).
pub fn installed() -> bool {
    crate::sys::find_on_path(EXECUTABLE).is_some()
}

/// Firefox's version line (`Mozilla Firefox 153.8.0esr`).
pub fn version() -> Result<String> {
    let out = Command::new(EXECUTABLE)
        .arg("--version")
        .output()
        .with_context(|| format!("running {EXECUTABLE} --version"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::{is_relevant, kill_group, shorten, user_js};

    /// The live (not zombie) processes of process group `pgid`, from /proc.
    fn live_members(pgid: u32) -> Vec<u32> {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After the command name's closing parenthesis: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z") {
                members.push(pid);
            }
        }
        members
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn kill_group_stops_the_leader_and_every_child_it_started() {
        // Like Firefox and its content processes: a leader with children of its own.
        let mut leader = Command::new("sh")
            .args(["-c", "sleep 300 & sleep 300 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = leader.id();
        wait_until("the two children", || live_members(pgid).len() == 3);
        kill_group(&mut leader);
        wait_until("the group to be gone", || live_members(pgid).is_empty());
    }

    #[test]
    fn user_js_sets_the_server_and_keeps_the_push_connection_on() {
        let text = user_js("ws://127.0.0.1:1234/");
        assert!(text.contains("user_pref(\"dom.push.serverURL\", \"ws://127.0.0.1:1234/\");\n"));
        // Marionette's recommended preferences switch this off unless the user set it.
        assert!(text.contains("user_pref(\"dom.push.connection.enabled\", true);\n"));
        assert!(text.contains("user_pref(\"marionette.port\", 0);\n"));
        assert!(text.contains("user_pref(\"dom.push.loglevel\", \"Debug\");\n"));
        for line in text.lines().skip(1) {
            assert!(
                line.starts_with("user_pref(\"") && line.ends_with(");"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_log_tail_keeps_push_lines_errors_and_marks() {
        assert!(is_relevant(
            "console.debug: PushServiceWebSocket: \"wsOnMessageAvailable()\" \"{}\""
        ));
        assert!(is_relevant("=== check: case 1"));
        assert!(is_relevant("console.error: something"));
        assert!(!is_relevant("[GFX1-]: RenderCompositorSWGL failed"));
        assert!(!is_relevant(
            "console.debug: PushDB: \"put()\" ({pushEndpoint:\"\"})"
        ));
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let line = "é".repeat(1000);
        let short = shorten(&line);
        assert!(short.starts_with(&"é".repeat(750)), "{short}");
        assert!(short.ends_with("[… 500 more bytes]"), "{short}");
        assert_eq!(shorten("short"), "short");
    }
}
