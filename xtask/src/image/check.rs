//! The container check: the image built from a binary, in private podman storage, run
//! with a mounted store directory. Over a real websocket and real PUTs: a device gets an
//! update live, another one's update is stored while it is offline (202); `podman stop`
//! (SIGTERM) closes the connected device with 1001 and the container exits 0 within the
//! drain time; a second container on the same directory delivers the stored update at
//! hello and still accepts the first container's pushEndpoint.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::podman::{Container, Podman};
use super::{Built, IMAGE_UID};
use crate::bench::{ScratchDir, Socket, parse_listening_line, request};
use crate::firefox::wait_for_clients;

/// How long a container may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reply, a notification or a close frame may take.
const WAIT: Duration = Duration::from_secs(10);
/// The longest a graceful stop may take: requests in flight get 10 s (DRAIN_TIMEOUT in
/// src/listener.rs), then sessions 5 s (SESSION_DRAIN in src/server.rs); a margin on top.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// `podman stop --time`: SIGKILL after this many seconds, well past [`DRAIN_LIMIT`], so
/// that a slow drain shows as slow rather than as killed.
const STOP_TIMEOUT_SECS: u64 = 30;
/// Lines of the server's log in a failure report.
const LOG_LINES: usize = 30;

/// Builds the image of `binary` (`origin` says what it is) and runs the cases.
pub fn container(binary: &Path, origin: &str) -> Result<()> {
    let started = Instant::now();
    let podman = Podman::private()?;
    let tag = format!("localhost/simplepush-check:{}", std::process::id());
    let built = super::build(&podman, binary, std::slice::from_ref(&tag))?;
    println!(
        "image: {tag} from the {origin}: {}; {}; built in {:.1} s",
        built.size_line(),
        built.backends_line(),
        started.elapsed().as_secs_f64()
    );
    if built.backend == "memory" {
        bail!(
            "the binary has neither sqlite nor rocksdb: the restart case needs a durable \
             store (build with --features rocksdb or sqlite)"
        );
    }
    expect_image_config(&podman, &built, binary)?;

    let data = ScratchDir::new("image-data")?;
    std::os::unix::fs::chown(data.path(), Some(IMAGE_UID), Some(IMAGE_UID))
        .context("giving the store directory to the image's user")?;
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cases(&podman, &built, data.path()))?;
    println!(
        "image: served, stored across a restart on the same volume and stopped cleanly \
         ({}) in {:.1} s",
        built.backend,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What `podman image inspect` says must be what dist/Containerfile means.
fn expect_image_config(podman: &Podman, built: &Built, binary: &Path) -> Result<()> {
    let text = podman.output(&["image", "inspect", &built.tag])?;
    let inspected: Value = serde_json::from_str(&text)?;
    let config = &inspected[0]["Config"];
    let expect = |what: &str, found: &Value, wanted: Value| -> Result<()> {
        if *found != wanted {
            bail!("the image's {what} is {found}, expected {wanted}");
        }
        Ok(())
    };
    let uid = format!("{IMAGE_UID}:{IMAGE_UID}");
    expect("user", &config["User"], json!(uid))?;
    expect("entrypoint", &config["Entrypoint"], json!(["/simplepush"]))?;
    expect(
        "working directory",
        &config["WorkingDir"],
        json!("/etc/simplepush"),
    )?;
    expect("stop signal", &config["StopSignal"], json!("SIGTERM"))?;
    expect(
        "exposed ports",
        &config["ExposedPorts"],
        json!({"8080/tcp": {}, "8081/tcp": {}}),
    )?;
    let labels = &config["Labels"];
    let label = |name: &str| labels[format!("org.opencontainers.image.{name}")].clone();
    expect(
        "version label",
        &label("version"),
        json!(super::binary_version(binary)?),
    )?;
    expect("title label", &label("title"), json!("simplepush"))?;
    expect("licenses label", &label("licenses"), json!("MPL-2.0"))?;
    for name in ["revision", "created", "description"] {
        let value = label(name);
        if value
            .as_str()
            .is_none_or(|v| v.is_empty() || v == "unknown")
        {
            bail!("the image's {name} label is {value}");
        }
    }
    for name in ["url", "source"] {
        if !label(name).is_null() {
            bail!("the image has a {name} label: nothing may point outside the repository");
        }
    }
    Ok(())
}

/// The cases, on two containers in turn over the same store directory.
async fn cases(podman: &Podman, built: &Built, data: &Path) -> Result<()> {
    let first = Server::start(podman, "first", &built.tag, data, built.backend)?;
    expect_store_owned_by_image_user(data)?;
    let (uaid, channel, path, version) = first
        .explain(first_container(&first).await)
        .context("the first container")?;
    drop(first);

    let second = Server::start(podman, "second", &built.tag, data, built.backend)?;
    second
        .explain(second_container(&second, &uaid, &channel, &path, version).await)
        .context("the second container, on the same store")
}

/// Live delivery to one device, a 202 for another that went away, then SIGTERM. Returns
/// the offline device's uaid, channel, endpoint path and the version stored for it.
async fn first_container(server: &Server<'_>) -> Result<(String, String, String, u64)> {
    let mut live = Device::connect(server.ws).await?;
    live.hello("", &[]).await?;
    let (live_channel, live_path) = live.register().await?;

    let mut away = Device::connect(server.ws).await?;
    let uaid = away.hello("", &[]).await?;
    let (channel, path) = away.register().await?;
    away.close().await;
    wait_for_clients(server.endpoint, 1).context("after a device closed its socket")?;

    // Stored: the device is offline.
    let version = 7;
    let status = put(
        server.endpoint,
        &path,
        version,
        Some("kept across a restart"),
    )
    .await?;
    if status != 202 {
        bail!("a PUT for an offline device was answered {status}, expected 202 stored");
    }
    // Delivered live.
    let status = put(server.endpoint, &live_path, 1, None).await?;
    if status != 200 {
        bail!("a PUT for a connected device was answered {status}, expected 200 delivered");
    }
    live.expect_update(&live_channel, 1, None).await?;

    server.stop_expecting_1001(&mut live).await?;
    Ok((uaid, channel, path, version))
}

/// The device that went away comes back: its stored update arrives at hello, and its
/// old pushEndpoint (minted by the first container) delivers live.
async fn second_container(
    server: &Server<'_>,
    uaid: &str,
    channel: &str,
    path: &str,
    version: u64,
) -> Result<()> {
    let mut device = Device::connect(server.ws).await?;
    let again = device.hello(uaid, &[channel]).await?;
    if again != uaid {
        bail!("hello with the stored uaid {uaid} got {again}: the store was lost");
    }
    device
        .expect_update(channel, version, Some("kept across a restart"))
        .await
        .context("the update stored before the restart")?;
    let status = put(server.endpoint, path, version + 1, None).await?;
    if status != 200 {
        bail!(
            "a PUT to the pushEndpoint minted before the restart was answered {status}, \
             expected 200 (the token key must persist in the store directory)"
        );
    }
    device.expect_update(channel, version + 1, None).await?;
    server.stop_expecting_1001(&mut device).await
}

/// The store directory must hold what the server wrote, owned by the image's user.
fn expect_store_owned_by_image_user(data: &Path) -> Result<()> {
    let mut entries = 0;
    for entry in std::fs::read_dir(data)? {
        let entry = entry?;
        let uid = entry.metadata()?.uid();
        if uid != IMAGE_UID {
            bail!(
                "{} in the store is owned by uid {uid}, expected the image's user {IMAGE_UID}",
                entry.path().display()
            );
        }
        entries += 1;
    }
    if entries == 0 {
        bail!("the server wrote nothing into the mounted store directory");
    }
    Ok(())
}

/// A running container of the image, its listeners on free loopback ports of the host.
struct Server<'a> {
    container: Container<'a>,
    ws: SocketAddr,
    endpoint: SocketAddr,
}

impl<'a> Server<'a> {
    /// Runs the image with `data` at /data and waits for its listening line. Only the
    /// addresses are flags: the rest (store, its path, JSON logs) must come from the
    /// image's own config, which the log shows.
    fn start(
        podman: &'a Podman,
        which: &str,
        image: &str,
        data: &Path,
        backend: &str,
    ) -> Result<Server<'a>> {
        let name = format!("simplepush-check-{}-{which}", std::process::id());
        let mut volume = OsString::from(data.as_os_str());
        volume.push(":/data");
        let args: Vec<OsString> = [
            OsString::from("--volume"),
            volume,
            image.into(),
            "--ws-addr".into(),
            "127.0.0.1:0".into(),
            "--endpoint-addr".into(),
            "127.0.0.1:0".into(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
        ]
        .into();
        let container = Container::run(podman, &name, &args)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            let (stdout, _) = container.logs()?;
            if let Some(line) = stdout
                .lines()
                .find(|line| line.starts_with("simplepush listening"))
            {
                break line.to_owned();
            }
            let state = container.inspect("{{.State.Status}}")?;
            if state != "running" && state != "created" {
                bail!(
                    "the container is {state} before listening; its log:\n{}",
                    container.log_tail(LOG_LINES)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the container did not listen within {START_TIMEOUT:?}; its log:\n{}",
                    container.log_tail(LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let listening = parse_listening_line(&line)?;
        let server = Server {
            container,
            ws: listening.ws,
            endpoint: listening.endpoint,
        };
        server.expect_config_read(backend)?;
        println!(
            "image: container {which} listening: ws={} endpoint={}",
            server.ws, server.endpoint
        );
        Ok(server)
    }

    /// The log must be JSON (the image's `[log] format`) and name the image config's
    /// store: proof the server read /etc/simplepush/config.toml without `--config`.
    fn expect_config_read(&self, backend: &str) -> Result<()> {
        let (_, stderr) = self.container.logs()?;
        let listening = stderr
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|entry| entry["fields"]["message"] == "listening")
            .with_context(|| {
                format!("no JSON `listening` line in the container's log:\n{stderr}")
            })?;
        if listening["fields"]["store"] != backend {
            bail!(
                "the container serves the {} store, its config says {backend}",
                listening["fields"]["store"]
            );
        }
        Ok(())
    }

    /// `podman stop` (SIGTERM): `device` must get close code 1001, and the container
    /// must exit 0, having logged `stopped`, within [`DRAIN_LIMIT`].
    async fn stop_expecting_1001(&self, device: &mut Device) -> Result<()> {
        let started = Instant::now();
        let name = &self.container.name;
        println!("$ podman stop --time {STOP_TIMEOUT_SECS} {name}");
        let mut stop = self
            .container
            .podman()
            .command()
            .args(["stop", "--time", &STOP_TIMEOUT_SECS.to_string(), name])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("running podman stop")?;
        let closed = device.expect_close().await;
        let stopped = tokio::task::spawn_blocking(move || stop.wait()).await??;
        let took = started.elapsed();
        closed?;
        if !stopped.success() {
            bail!("podman stop failed ({stopped})");
        }
        let exit = self.container.inspect("{{.State.ExitCode}}")?;
        if exit != "0" {
            bail!("the container exited with {exit} after SIGTERM, expected 0");
        }
        if took > DRAIN_LIMIT {
            bail!("the container took {took:?} to stop, more than {DRAIN_LIMIT:?}");
        }
        let (_, log) = self.container.logs()?;
        let last = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .next_back();
        if last.as_ref().map(|entry| &entry["fields"]["message"]) != Some(&json!("stopped")) {
            bail!("the server's last log line is {last:?}, expected `stopped`");
        }
        println!(
            "image: SIGTERM: the device got 1001, the container exited 0 in {:.2} s",
            took.as_secs_f64()
        );
        Ok(())
    }

    /// `result`, with the server's log appended when it is an error.
    fn explain<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|err| {
            anyhow!(
                "{err:#}\n--- the container's log (last {LOG_LINES} lines) ---\n{}",
                self.container.log_tail(LOG_LINES)
            )
        })
    }
}

/// One SimplePush device on a real websocket.
struct Device {
    socket: Socket,
}

impl Device {
    async fn connect(ws: SocketAddr) -> Result<Device> {
        let stream = tokio::net::TcpStream::connect(ws)
            .await
            .with_context(|| format!("connecting to {ws}"))?;
        let (socket, _) = tokio_tungstenite::client_async(format!("ws://{ws}/"), stream)
            .await
            .context("websocket handshake")?;
        Ok(Device { socket })
    }

    /// Says hello as `uaid` with `channels` ("" and none for a new device); returns
    /// the uaid the server answered.
    async fn hello(&mut self, uaid: &str, channels: &[&str]) -> Result<String> {
        let hello = json!({"messageType": "hello", "uaid": uaid, "channelIDs": channels});
        let reply = self.request(hello, "hello").await?;
        if reply["status"] != 200 {
            bail!("hello answered {reply}");
        }
        reply["uaid"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no uaid in {reply}"))
    }

    /// Registers a fresh channel; returns it and the path of its pushEndpoint.
    async fn register(&mut self) -> Result<(String, String)> {
        let channel = fresh_channel();
        let reply = self
            .request(
                json!({"messageType": "register", "channelID": channel}),
                "register",
            )
            .await?;
        let endpoint = reply["pushEndpoint"]
            .as_str()
            .with_context(|| format!("register answered {reply}"))?;
        let at = endpoint
            .find("/update/")
            .with_context(|| format!("a pushEndpoint without /update/: {endpoint}"))?;
        Ok((channel, endpoint[at..].to_owned()))
    }

    async fn request(&mut self, message: Value, kind: &str) -> Result<Value> {
        tokio::time::timeout(WAIT, request(&mut self.socket, message, kind))
            .await
            .map_err(|_| anyhow!("no {kind} reply within {WAIT:?}"))?
    }

    /// Waits for a notification, which must hold exactly `version` (and `data`) for
    /// `channel`; acknowledges it.
    async fn expect_update(
        &mut self,
        channel: &str,
        version: u64,
        data: Option<&str>,
    ) -> Result<()> {
        let message = tokio::time::timeout(WAIT, self.next_text())
            .await
            .map_err(|_| anyhow!("no notification within {WAIT:?}"))??;
        if message["messageType"] != "notification" {
            bail!("expected a notification, got {message}");
        }
        let mut expected = json!({"channelID": channel, "version": version});
        if let Some(data) = data {
            expected["data"] = json!(data);
        }
        if message["updates"] != json!([expected]) {
            bail!("the notification is {message}, expected exactly the update {expected}");
        }
        let ack =
            json!({"messageType": "ack", "updates": [{"channelID": channel, "version": version}]});
        self.socket.send(Message::text(ack.to_string())).await?;
        Ok(())
    }

    /// The next text frame, as JSON.
    async fn next_text(&mut self) -> Result<Value> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(text.as_str())?),
                Some(Ok(Message::Close(frame))) => bail!("the socket closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => bail!("the socket ended"),
            }
        }
    }

    /// Waits for the server's close frame, which must carry 1001 (going away).
    async fn expect_close(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("no close frame within {DRAIN_LIMIT:?} of SIGTERM"))?;
            match frame {
                Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => {
                    // Polling on sends our close frame back, as a browser does, so the
                    // server need not wait for it.
                    let rest = async { while self.socket.next().await.is_some() {} };
                    let _ = tokio::time::timeout(WAIT, rest).await;
                    return Ok(());
                }
                Some(Ok(Message::Close(frame))) => {
                    bail!("the server closed with {frame:?}, expected 1001")
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => bail!("the socket failed before a close frame: {err}"),
                None => bail!("the socket ended without a close frame"),
            }
        }
    }

    /// Closes the socket cleanly.
    async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// `PUT {endpoint}{path}` with `version` (and `data`); returns the status.
async fn put(endpoint: SocketAddr, path: &str, version: u64, data: Option<&str>) -> Result<u16> {
    let mut body = format!("version={version}");
    if let Some(data) = data {
        body.push_str("&data=");
        body.push_str(&form_urlencoded(data));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()?;
    let response = client
        .put(format!("http://{endpoint}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .with_context(|| format!("PUT {path}"))?;
    Ok(response.status().as_u16())
}

/// `text` for a form body: spaces as `+`, everything but letters and digits escaped.
fn form_urlencoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (byte as char).to_string(),
            b' ' => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A channelID no other run uses: 32 hex digits from the clock and a counter.
fn fresh_channel() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:08x}{:08x}", nanos as u64, std::process::id(), n)
}

#[cfg(test)]
mod tests {
    use super::{form_urlencoded, fresh_channel};

    #[test]
    fn form_bodies_escape_what_is_not_alphanumeric() {
        assert_eq!(
            form_urlencoded("kept across a restart"),
            "kept+across+a+restart"
        );
        assert_eq!(form_urlencoded("a&b=c"), "a%26b%3Dc");
    }

    #[test]
    fn channels_are_32_hex_digits_and_fresh() {
        let (a, b) = (fresh_channel(), fresh_channel());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
