//! `simplepush client`: a small device for demos and scripts. It keeps one websocket to a
//! server, registers its channels, and prints one parseable line on stdout for each thing
//! that happens:
//!
//! ```text
//! uaid <uaid>                              after every hello (every (re)connection)
//! endpoint <channelID> <pushEndpoint>      after every register, one per channel
//! subscription <file>                      WebPush: after the register, where the
//!                                          subscription JSON was written
//! notification <channelID> <version> [data]
//! undecryptable <channelID> <version> <why>   WebPush: a message it cannot decrypt
//! expired <channelID>                      SimplePush
//! ```
//!
//! `data` is the rest of the line (for WebPush, the decrypted text), with backslashes and
//! control characters escaped (`\\`, `\n`, `\r`, `\t`, `\u{1b}`) so that one notification
//! is always one line. Everything printed is acknowledged. The device's identity lives in
//! a state file, so a restarted client resumes the same device; a dropped connection is
//! retried with exponential backoff. Diagnostics go to the log (stderr), never to stdout.
//!
//! The SimplePush device (`simplepush.rs`) and the WebPush one (`webpush.rs`, `--webpush`,
//! which makes its own keys and decrypts as a browser does) share the socket handling of
//! `connection.rs` and the state file of `state.rs`.

mod connection;
mod simplepush;
mod state;
mod webpush;

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::state::{State, WebPushState};

/// What `simplepush client` connects to and where it keeps its identity.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// The server's websocket URL (ws:// only).
    #[arg(long, value_name = "URL", default_value = "ws://localhost:8080/")]
    pub server: String,
    /// How many channels to keep registered: missing ones are created, extra ones are
    /// unregistered [default: those in the state file, or 1 for a new device]. A WebPush
    /// device has one.
    #[arg(long, value_name = "N", conflicts_with = "webpush",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub channels: Option<u16>,
    /// The state file keeping the device's uaid and channelIDs (and a WebPush device's
    /// private key and auth secret) as JSON, so that a restarted client resumes the same
    /// device; created when missing [default: simplepush-client.json, with --webpush
    /// webpush-client.json].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Be a WebPush device, as a browser is: say hello with `use_webpush`, subscribe one
    /// channel with a fresh P-256 key pair and auth secret, write the subscription JSON
    /// for app servers (`simplepush push --subscription`), and print every message
    /// decrypted (aes128gcm).
    #[arg(long)]
    pub webpush: bool,
    /// With --webpush: the app server's VAPID public key (base64url, as `simplepush genkey
    /// --vapid` prints it; a page's `applicationServerKey`). The endpoint then accepts
    /// only pushes signed with its private key.
    #[arg(long, value_name = "KEY", requires = "webpush",
          value_parser = crate::cli::vapid::parse_public_key)]
    pub vapid_public_key: Option<String>,
    /// With --webpush: where to write the subscription JSON (endpoint and keys, as a
    /// browser's `PushSubscription.toJSON()`) [default: subscription.json].
    #[arg(long, value_name = "FILE", requires = "webpush")]
    pub subscription_out: Option<PathBuf>,
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
    /// The state file holds something else than this client's state.
    #[error("the state file {path} is not a simplepush client state: {reason}")]
    StateInvalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The subscription JSON cannot be written.
    #[error("cannot write the subscription to {path}")]
    SubscriptionIo {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
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

/// Runs the client until `shutdown` is cancelled, printing its lines on stdout.
///
/// Returns `Ok` after a shutdown (the socket closed cleanly), an error when going on is
/// pointless (see [`ClientError`]). Lost connections are retried with exponential backoff
/// (1 s doubling to 60 s, with jitter), reset once a connection gets its hello answered.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), ClientError> {
    connection::check_url(&options.server)?;
    let path = options.state.clone().unwrap_or_else(|| {
        PathBuf::from(if options.webpush {
            "webpush-client.json"
        } else {
            "simplepush-client.json"
        })
    });
    let loaded = State::load(&path).await?;
    let other_dialect = |reason: &str| ClientError::StateInvalid {
        path: path.clone(),
        reason: format!("{reason}; give each kind of client its own --state file"),
    };
    match (options.webpush, &loaded.webpush) {
        (true, None) if !loaded.channel_ids.is_empty() => {
            return Err(other_dialect("it belongs to a SimplePush device"));
        }
        (false, Some(_)) => return Err(other_dialect("it belongs to a WebPush device")),
        _ => {}
    }
    let mut state = loaded.clone();
    let wanted = if options.webpush {
        Some(1)
    } else {
        options.channels
    };
    let to_unregister = state.plan_channels(wanted);
    if options.webpush && state.webpush.is_none() {
        state.webpush = Some(WebPushState::generate());
    }
    if state != loaded {
        // Written before connecting: an unwritable state file fails at once, and a
        // WebPush device's keys are kept before anyone can encrypt to them.
        state.save(&path).await?;
    }
    let identity = Identity {
        state,
        path,
        to_unregister,
    };
    if options.webpush {
        let subscription_out = options
            .subscription_out
            .unwrap_or_else(|| PathBuf::from("subscription.json"));
        let mut device =
            webpush::WebPush::new(identity, options.vapid_public_key, subscription_out)?;
        connection::run(&options.server, &mut device, &shutdown).await
    } else {
        let mut device = simplepush::SimplePush::new(identity);
        connection::run(&options.server, &mut device, &shutdown).await
    }
}

/// What both dialects keep between connections: the state, its file, and the channels
/// dropped by `--channels` (unregistered after the next hello).
struct Identity {
    state: State,
    path: PathBuf,
    to_unregister: Vec<String>,
}

impl Identity {
    /// The hello was answered with `uaid`: keeps it and prints it. Answers whether it
    /// is new: the first one, or the server lost the old one's data (its channels and
    /// endpoints are gone and must be registered again).
    async fn adopt_uaid(&mut self, uaid: &str) -> Result<bool, ClientError> {
        let new = self.state.uaid != uaid;
        if new {
            if !self.state.uaid.is_empty() {
                tracing::warn!(
                    old = %self.state.uaid,
                    new = uaid,
                    "the server gave this device a new uaid (it lost the old one's data); \
                     registering again"
                );
            }
            self.state.uaid = uaid.to_owned();
            self.state.save(&self.path).await?;
        }
        print(&format!("uaid {uaid}")).await?;
        Ok(new)
    }

    /// An unregister for each channel dropped since the last hello.
    fn unregisters(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.to_unregister)
            .into_iter()
            .map(|channel| json!({"messageType": "unregister", "channelID": channel}))
            .collect()
    }
}

/// Writes one line to stdout, flushed so that a reader sees it at once. The write
/// blocks (a full pipe), so it runs off the runtime; lines keep their order because
/// each is awaited before the next.
async fn print(line: &str) -> Result<(), ClientError> {
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
}
