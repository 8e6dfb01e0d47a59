//! `simplepush client`: a small device for demos and scripts. It keeps one websocket to a
//! server, registers its channels, and prints one parseable line on stdout for each thing
//! that happens:
//!
//! ```text
//! uaid <uaid>                              after every hello (every (re)connection)
//! endpoint <channelID> <pushEndpoint>      after every register, one per channel
//! notification <channelID> <version> [data]
//! expired <channelID>
//! ```
//!
//! `data` is the rest of the line, with backslashes and control characters escaped
//! (`\\`, `\n`, `\r`, `\t`, `\u{1b}`) so that one notification is always one line.
//! Everything printed is acknowledged (all updates of a frame in one ack). The device's
//! uaid and channelIDs live in a state file, so a restarted client resumes the same
//! device; a dropped connection is retried with exponential backoff. Diagnostics go to the
//! log (stderr), never to stdout.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::device::protocol::is_uuid_shaped;

/// How long connecting (TCP and the websocket handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to answer a hello, a register or a websocket Ping.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which the client checks the connection with a websocket Ping: a server
/// that vanished without closing the socket is noticed within this plus `REPLY_TIMEOUT`.
const IDLE_PING: Duration = Duration::from_secs(50);
/// The first delay before reconnecting; it doubles per failed attempt up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest delay between reconnection attempts.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long a closing client waits for the server's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The close code of a socket replaced by a newer connection of the same uaid.
const CLOSE_REPLACED: u16 = 4000;

/// What `simplepush client` connects to and where it keeps its identity.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// The server's websocket URL (ws:// only).
    #[arg(long, value_name = "URL", default_value = "ws://localhost:8080/")]
    pub server: String,
    /// How many channels to keep registered: missing ones are created, extra ones are
    /// unregistered [default: those in the state file, or 1 for a new device].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub channels: Option<u16>,
    /// The state file keeping the device's uaid and channelIDs (JSON), so that a restarted
    /// client resumes the same device; created when missing.
    #[arg(long, value_name = "FILE", default_value = "simplepush-client.json")]
    pub state: PathBuf,
}

/// Why the client stopped for good; everything else is retried.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The state file cannot be read or written.
    #[error("cannot use the state file {path}")]
    StateIo {
        /// The state file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The state file holds something else than a client's state.
    #[error("the state file {path} is not a simplepush client state: {reason}")]
    StateInvalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The server URL cannot be used.
    #[error("cannot connect to {url}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused a command with a 4xx status: retrying would be refused again.
    #[error("the server refused {message_type} with {status}: {reason}")]
    Refused {
        /// The refused command.
        message_type: String,
        /// The status of the error frame.
        status: u64,
        /// The server's reason.
        reason: String,
    },
    /// Another connection said hello with this device's uaid (close code 4000): two
    /// clients share one state file, and reconnecting would only take turns.
    #[error(
        "another client connected as this device (uaid {uaid}); give each client its own --state file"
    )]
    Replaced {
        /// The device's uaid.
        uaid: String,
    },
    /// Stdout is closed (the reader went away).
    #[error("cannot write to stdout")]
    Output(#[source] io::Error),
}

/// The state file's content.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// The uaid the server gave this device; empty before the first hello.
    #[serde(default)]
    uaid: String,
    /// The device's channels, in the order they were created.
    #[serde(default, rename = "channelIDs")]
    channel_ids: Vec<String>,
}

impl State {
    /// Reads the state file; a missing file is a new device.
    async fn load(path: &Path) -> Result<State, ClientError> {
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(ClientError::StateIo {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let invalid = |reason: String| ClientError::StateInvalid {
            path: path.to_owned(),
            reason,
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if !state.uaid.is_empty() && !is_uuid_shaped(&state.uaid) {
            return Err(invalid(format!("uaid {:?} is not a UUID", state.uaid)));
        }
        let mut seen = HashSet::new();
        for channel in &state.channel_ids {
            if !is_uuid_shaped(channel) {
                return Err(invalid(format!("channelID {channel:?} is not a UUID")));
            }
            if !seen.insert(channel.to_ascii_lowercase()) {
                return Err(invalid(format!("channelID {channel} is listed twice")));
            }
        }
        Ok(state)
    }

    /// Replaces the state file (written beside it, then renamed over it, so that a crash
    /// never leaves half a file).
    async fn save(&self, path: &Path) -> Result<(), ClientError> {
        let io_error = |source| ClientError::StateIo {
            path: path.to_owned(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| io_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        text.push('\n');
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(io_error)?;
        file.write_all(text.as_bytes()).await.map_err(io_error)?;
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        tokio::fs::rename(&temporary, path).await.map_err(io_error)
    }

    /// Keeps the first `wanted` channels (all when `None`, at least one) and creates
    /// missing ones; returns the channels dropped.
    fn plan_channels(&mut self, wanted: Option<u16>) -> Vec<String> {
        let wanted = match wanted {
            Some(n) => usize::from(n),
            None => self.channel_ids.len().max(1),
        };
        let dropped = self
            .channel_ids
            .split_off(wanted.min(self.channel_ids.len()));
        while self.channel_ids.len() < wanted {
            self.channel_ids.push(uuid::Uuid::new_v4().to_string());
        }
        dropped
    }
}

/// Runs the client until `shutdown` is cancelled, printing its lines on stdout.
///
/// Returns `Ok` after a shutdown (the socket closed cleanly), an error when going on is
/// pointless (see [`ClientError`]). Lost connections are retried with exponential backoff
/// (1 s doubling to 60 s, with jitter), reset once a connection gets its hello answered.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), ClientError> {
    check_url(&options.server)?;
    let loaded = State::load(&options.state).await?;
    let mut state = loaded.clone();
    let to_unregister = state.plan_channels(options.channels);
    if state != loaded {
        // Written before connecting: an unwritable state file fails at once.
        state.save(&options.state).await?;
    }
    let mut client = Client {
        options,
        state,
        to_unregister,
        shutdown,
    };
    let mut retry = FIRST_RETRY;
    loop {
        let (why, established) = match client.session().await? {
            End::Shutdown => return Ok(()),
            End::Lost { why, established } => (why, established),
        };
        if established {
            retry = FIRST_RETRY;
        }
        let delay = jittered(retry);
        tracing::warn!(server = %client.options.server, "{why}; reconnecting in {delay:.1?}");
        tokio::select! {
            _ = client.shutdown.cancelled() => return Ok(()),
            _ = sleep(delay) => {}
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Refuses URLs that can never work, so that they fail at once instead of being retried.
fn check_url(url: &str) -> Result<(), ClientError> {
    let refuse = |reason: &str| ClientError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("ws") => {}
        Some("wss") => {
            return Err(refuse(
                "wss:// needs TLS, which this build of simplepush does not include",
            ));
        }
        _ => return Err(refuse("the URL must start with ws://")),
    }
    url.into_client_request()
        .map(drop)
        .map_err(|e| refuse(&e.to_string()))
}

/// A delay between `base / 2` and `base`, so that many clients dropped at once do not
/// all reconnect at the same instant.
fn jittered(base: Duration) -> Duration {
    let random = f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0;
    base / 2 + (base / 2).mul_f64(random)
}

/// How a session ended.
enum End {
    /// Told to shut down; the socket was closed cleanly.
    Shutdown,
    /// The connection failed or was lost; worth retrying.
    Lost {
        /// What happened, for the log.
        why: String,
        /// Whether the server had answered the hello (resets the backoff).
        established: bool,
    },
}

/// The client between connections.
struct Client {
    options: Options,
    state: State,
    /// Channels dropped by `--channels`, unregistered after the next successful hello.
    to_unregister: Vec<String>,
    shutdown: CancellationToken,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Client {
    /// Connects and runs one session until it ends.
    async fn session(&mut self) -> Result<End, ClientError> {
        let connect = timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async(self.options.server.as_str()),
        );
        let socket = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(End::Shutdown),
            result = connect => match result {
                Err(_) => return Ok(lost("connecting timed out", false)),
                Ok(Err(tungstenite::Error::Url(error))) => {
                    return Err(ClientError::Url {
                        url: self.options.server.clone(),
                        reason: error.to_string(),
                    });
                }
                Ok(Err(error)) => return Ok(lost(format!("cannot connect: {error}"), false)),
                Ok(Ok((socket, _response))) => socket,
            },
        };
        tracing::info!(server = %self.options.server, "connected");
        let mut session = Session {
            client: self,
            socket,
            established: false,
            awaiting_registers: HashSet::new(),
        };
        session.run().await
    }

    /// Writes one line to stdout, flushed so that a reader sees it at once. The write
    /// blocks (a full pipe), so it runs off the runtime; lines keep their order because
    /// each is awaited before the next.
    async fn print(&mut self, line: &str) -> Result<(), ClientError> {
        let line = format!("{line}\n");
        let written = tokio::task::spawn_blocking(move || {
            let mut out = io::stdout().lock();
            out.write_all(line.as_bytes())?;
            out.flush()
        })
        .await
        .map_err(|e| ClientError::Output(io::Error::other(e)))?;
        written.map_err(ClientError::Output)
    }
}

/// One connection.
struct Session<'a> {
    client: &'a mut Client,
    socket: Socket,
    /// Whether the server answered the hello.
    established: bool,
    /// Channels whose register reply has not come yet.
    awaiting_registers: HashSet<String>,
}

/// What to do after a frame: go on, or end the session.
type Step = Result<Option<End>, ClientError>;

impl Session<'_> {
    async fn run(&mut self) -> Result<End, ClientError> {
        let hello = json!({
            "messageType": "hello",
            "uaid": self.client.state.uaid,
            "channelIDs": self.client.state.channel_ids,
        });
        if let Some(end) = self.send(hello).await {
            return Ok(end);
        }
        let mut pinged = false;
        loop {
            let waiting = !self.established || !self.awaiting_registers.is_empty() || pinged;
            let deadline = Instant::now() + if waiting { REPLY_TIMEOUT } else { IDLE_PING };
            let next = tokio::select! {
                _ = self.client.shutdown.cancelled() => {
                    self.close().await;
                    return Ok(End::Shutdown);
                }
                next = timeout_at(deadline, self.socket.next()) => next,
            };
            let message = match next {
                Err(_) if waiting => {
                    return Ok(self.lost("the server did not answer in time".to_owned()));
                }
                Err(_) => {
                    // Silence: check that the server is still there.
                    let ping = timeout(
                        REPLY_TIMEOUT,
                        self.socket.send(Message::Ping(Default::default())),
                    );
                    if !matches!(ping.await, Ok(Ok(()))) {
                        return Ok(self.lost("the connection broke".to_owned()));
                    }
                    pinged = true;
                    continue;
                }
                Ok(None) => return Ok(self.lost("the server dropped the connection".to_owned())),
                Ok(Some(Err(error))) => {
                    return Ok(self.lost(format!("the connection broke: {error}")));
                }
                Ok(Some(Ok(message))) => message,
            };
            pinged = false;
            let step = match message {
                Message::Text(text) => self.on_text(text.as_str()).await?,
                Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(text) => self.on_text(text).await?,
                    Err(_) => {
                        tracing::warn!("ignoring a binary frame that is not UTF-8");
                        None
                    }
                },
                Message::Close(frame) => Some(self.on_close(frame)?),
                // Pongs are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            };
            if let Some(end) = step {
                return Ok(end);
            }
        }
    }

    fn lost(&self, why: String) -> End {
        lost(why, self.established)
    }

    /// Sends a JSON message; `Some` when the connection is gone.
    async fn send(&mut self, message: Value) -> Option<End> {
        let send = self.socket.send(Message::text(message.to_string()));
        match timeout(REPLY_TIMEOUT, send).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(self.lost(format!("cannot send: {error}"))),
            Err(_) => Some(self.lost("sending timed out".to_owned())),
        }
    }

    /// Closes the socket with 1000 and waits (briefly) for the server's close.
    async fn close(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client exiting".into(),
        };
        let _ = timeout(CLOSE_TIMEOUT, async {
            if self.socket.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = self.socket.next().await {}
            }
        })
        .await;
    }

    fn on_close(&self, frame: Option<CloseFrame>) -> Result<End, ClientError> {
        match frame {
            Some(frame) if u16::from(frame.code) == CLOSE_REPLACED => Err(ClientError::Replaced {
                uaid: self.client.state.uaid.clone(),
            }),
            Some(frame) => Ok(self.lost(format!(
                "the server closed the connection ({} {})",
                u16::from(frame.code),
                frame.reason
            ))),
            None => Ok(self.lost("the server closed the connection".to_owned())),
        }
    }

    async fn on_text(&mut self, text: &str) -> Step {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            tracing::warn!(frame = text, "ignoring a frame that is not a JSON object");
            return Ok(None);
        };
        if message.is_empty() {
            // The answer to a `{}` ping; this client sends none, but it is harmless.
            return Ok(None);
        }
        let message_type = message
            .get("messageType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if let Some(status) = message.get("status").and_then(Value::as_u64)
            && status != 200
        {
            return self.on_error(message_type, status, &message);
        }
        match message_type.as_str() {
            "hello" => self.on_hello(&message).await,
            "register" => self.on_register(&message).await,
            "notification" => self.on_notification(&message).await,
            "unregister" => Ok(None),
            other => {
                tracing::debug!(message_type = other, "ignoring a message");
                Ok(None)
            }
        }
    }

    /// An error frame: a 4xx would be refused again, anything else is worth a retry.
    fn on_error(
        &self,
        message_type: String,
        status: u64,
        message: &serde_json::Map<String, Value>,
    ) -> Step {
        let reason = message
            .get("reason")
            .and_then(Value::as_str)
            .or_else(|| message.get("error").and_then(Value::as_str))
            .unwrap_or("no reason given")
            .to_owned();
        if (400..500).contains(&status) {
            return Err(ClientError::Refused {
                message_type,
                status,
                reason,
            });
        }
        Ok(Some(self.lost(format!(
            "the server answered {message_type} with {status}: {reason}"
        ))))
    }

    async fn on_hello(&mut self, message: &serde_json::Map<String, Value>) -> Step {
        let Some(uaid) = message.get("uaid").and_then(Value::as_str) else {
            return Ok(Some(self.lost("the hello reply has no uaid".to_owned())));
        };
        if self.established {
            return Ok(None);
        }
        self.established = true;
        let client = &mut *self.client;
        if client.state.uaid != uaid {
            if !client.state.uaid.is_empty() {
                tracing::warn!(
                    old = %client.state.uaid,
                    new = uaid,
                    "the server gave this device a new uaid (it lost the old one's data); \
                     registering its channels again"
                );
            }
            client.state.uaid = uaid.to_owned();
            client.state.save(&client.options.state).await?;
        }
        tracing::info!(uaid, "hello answered");
        client.print(&format!("uaid {uaid}")).await?;
        // Register is idempotent: registering every time gets each channel's current
        // endpoint (it changes when the server's token key does).
        for channel in self.client.state.channel_ids.clone() {
            self.awaiting_registers.insert(channel.clone());
            let register = json!({"messageType": "register", "channelID": channel});
            if let Some(end) = self.send(register).await {
                return Ok(Some(end));
            }
        }
        for channel in std::mem::take(&mut self.client.to_unregister) {
            let unregister = json!({"messageType": "unregister", "channelID": channel});
            if let Some(end) = self.send(unregister).await {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    async fn on_register(&mut self, message: &serde_json::Map<String, Value>) -> Step {
        let channel = message.get("channelID").and_then(Value::as_str);
        let endpoint = message.get("pushEndpoint").and_then(Value::as_str);
        let (Some(channel), Some(endpoint)) = (channel, endpoint) else {
            return Ok(Some(self.lost(
                "a register reply lacks channelID or pushEndpoint".to_owned(),
            )));
        };
        self.awaiting_registers.remove(channel);
        self.client
            .print(&format!("endpoint {channel} {endpoint}"))
            .await?;
        Ok(None)
    }

    async fn on_notification(&mut self, message: &serde_json::Map<String, Value>) -> Step {
        let mut acked = Vec::new();
        for update in list(message, "updates") {
            let channel = update.get("channelID").and_then(Value::as_str);
            let version = update.get("version").and_then(Value::as_u64);
            let (Some(channel), Some(version)) = (channel, version) else {
                tracing::warn!(%update, "ignoring a malformed update");
                continue;
            };
            let line = match update.get("data").and_then(Value::as_str) {
                Some(data) if !data.is_empty() => {
                    format!("notification {channel} {version} {}", escape(data))
                }
                _ => format!("notification {channel} {version}"),
            };
            self.client.print(&line).await?;
            acked.push(json!({"channelID": channel, "version": version}));
        }
        let mut expired = Vec::new();
        for channel in list(message, "expired") {
            let Some(channel) = channel.as_str() else {
                tracing::warn!(%channel, "ignoring a malformed expired entry");
                continue;
            };
            self.client.print(&format!("expired {channel}")).await?;
            expired.push(channel.to_owned());
        }
        if acked.is_empty() && expired.is_empty() {
            return Ok(None);
        }
        let mut ack = serde_json::Map::new();
        ack.insert("messageType".to_owned(), json!("ack"));
        if !acked.is_empty() {
            ack.insert("updates".to_owned(), Value::Array(acked));
        }
        if !expired.is_empty() {
            ack.insert("expired".to_owned(), json!(expired));
        }
        Ok(self.send(Value::Object(ack)).await)
    }
}

fn lost(why: impl Into<String>, established: bool) -> End {
    End::Lost {
        why: why.into(),
        established,
    }
}

/// The array under `key`, empty when absent or not an array.
fn list<'m>(message: &'m serde_json::Map<String, Value>, key: &str) -> &'m [Value] {
    message
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `data` with backslashes and control characters escaped, so it stays on one line.
fn escape(data: &str) -> Cow<'_, str> {
    if !data.chars().any(|c| c == '\\' || c.is_control()) {
        return Cow::Borrowed(data);
    }
    let mut escaped = String::with_capacity(data.len() + 8);
    for c in data.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_stays_on_one_line() {
        assert_eq!(escape("hello world"), "hello world");
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("\u{1b}[0m"), "\\u{1b}[0m");
        assert_eq!(escape("ünïcödé"), "ünïcödé");
    }

    #[test]
    fn channels_are_topped_up_or_dropped_in_order() {
        let mut new_device = State::default();
        assert!(new_device.plan_channels(None).is_empty());
        assert_eq!(new_device.channel_ids.len(), 1);
        assert!(is_uuid_shaped(&new_device.channel_ids[0]));

        let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let mut kept = State {
            uaid: String::new(),
            channel_ids: ids.clone(),
        };
        assert!(kept.plan_channels(None).is_empty());
        assert_eq!(kept.channel_ids, ids);

        let mut fewer = kept.clone();
        assert_eq!(fewer.plan_channels(Some(1)), ids[1..]);
        assert_eq!(fewer.channel_ids, ids[..1]);

        let mut more = kept.clone();
        assert!(more.plan_channels(Some(5)).is_empty());
        assert_eq!(more.channel_ids[..3], ids[..]);
        assert_eq!(more.channel_ids.len(), 5);
        assert_ne!(more.channel_ids[3], more.channel_ids[4]);
    }

    #[tokio::test]
    async fn state_round_trips_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).await.unwrap(), State::default());

        let state = State {
            uaid: uuid::Uuid::new_v4().simple().to_string(),
            channel_ids: vec![uuid::Uuid::new_v4().to_string()],
        };
        state.save(&path).await.unwrap();
        assert_eq!(State::load(&path).await.unwrap(), state);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"channelIDs\""), "{text}");

        for bad in [
            "not json",
            r#"{"uaid":"nope","channelIDs":[]}"#,
            r#"{"uaid":"","channelIDs":["xyz"]}"#,
            r#"{"channelIDs":["5a0fc5d5-3f0a-4f4c-9c5b-2e3c1a2b3c4d","5A0FC5D5-3F0A-4F4C-9C5B-2E3C1A2B3C4D"]}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(
                    State::load(&path).await,
                    Err(ClientError::StateInvalid { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_plain_websocket_urls_are_accepted() {
        assert!(check_url("ws://localhost:8080/").is_ok());
        assert!(check_url("WS://127.0.0.1:1/").is_ok());
        for bad in [
            "wss://push.example.com/",
            "http://localhost:8080/",
            "localhost:8080",
        ] {
            assert!(
                matches!(check_url(bad), Err(ClientError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn jitter_stays_between_half_and_full_delay() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_secs(8));
            assert!(delay >= Duration::from_secs(4) && delay <= Duration::from_secs(8));
        }
    }
}
