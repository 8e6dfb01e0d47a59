//! `simplepush push`: an app server on the command line, in either dialect.
//!
//! - SimplePush (`push ENDPOINT [--version N] [--data TEXT]`): one `PUT` of a version
//!   and data to a pushEndpoint; prints `200 delivered`, `202 stored` or the error.
//! - WebPush (`push --subscription FILE [--data TEXT] [--vapid-key FILE] …`): the data
//!   encrypted for the subscription (RFC 8291), optionally signed with VAPID (RFC 8292),
//!   `POST`ed to its endpoint (RFC 8030); prints `201 Created` with the `Location` and
//!   `TTL` answered, or the error.
//!
//! Errors that are the user's (a bad file, JSON, key or endpoint) exit with 2, see
//! [`PushError::exit_code`].

mod simplepush;
mod webpush;

pub use self::simplepush::{Outcome, Request, push};
pub use self::webpush::{Urgency, WebPushOutcome, WebPushRequest, push_webpush};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::cli::payload::PayloadError;
use crate::cli::subscription::{Subscription, SubscriptionError};
use crate::cli::vapid::{KeyFileError, VapidKey};

/// How long one request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a body that is not a JSON error is quoted in the outcome.
const QUOTED_BODY_CHARS: usize = 200;

/// The VAPID contact when `--subject` is not given.
pub const DEFAULT_SUBJECT: &str = "mailto:simplepush@localhost";

/// The `TTL` when `--ttl` is not given.
pub const DEFAULT_TTL: u64 = 60;

/// Where the WebPush options are listed in `--help`.
const WEBPUSH: &str = "WebPush (with --subscription)";

/// What `simplepush push` sends, and where: a SimplePush `ENDPOINT`, or a WebPush
/// `--subscription`. WebPush options both require `--subscription` and conflict with
/// `ENDPOINT`: clap drops a requirement that conflicts with a present argument, so
/// `requires` alone would let `push ENDPOINT --ttl 5` through silently.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// SimplePush: the channel's pushEndpoint (`http://…/update/<token>`), as `simplepush
    /// client` printed it.
    #[arg(
        value_name = "ENDPOINT",
        required_unless_present = "subscription",
        conflicts_with = "subscription"
    )]
    pub endpoint: Option<String>,
    /// SimplePush: the version to push, an integer from 0 to 2^63-1; only the device's
    /// latest version matters. Without it the server uses the current UNIX time in seconds.
    #[arg(long, value_name = "N", conflicts_with = "subscription",
          value_parser = clap::value_parser!(u64).range(..=i64::MAX.unsigned_abs()))]
    pub version: Option<u64>,
    /// The data. SimplePush: delivered as is (the server accepts up to `max_data_bytes`,
    /// 4096 by default). WebPush: encrypted for the subscription (aes128gcm, 103 bytes
    /// more on the wire); without it the push carries no data.
    #[arg(long, value_name = "TEXT")]
    pub data: Option<String>,
    /// Push with WebPush to this subscription: a JSON file as a browser's
    /// `PushSubscription.toJSON()` gives it (`{"endpoint":…,"keys":{"p256dh":…,"auth":…}}`),
    /// e.g. the one `simplepush client --webpush` writes.
    #[arg(long, value_name = "FILE", help_heading = WEBPUSH)]
    pub subscription: Option<PathBuf>,
    /// Sign the push with VAPID with this private key (PEM, as `simplepush genkey --vapid`
    /// writes it). Endpoints restricted to a key (`/wpush/v2/`) take only pushes signed
    /// with it.
    #[arg(long, value_name = "FILE", help_heading = WEBPUSH,
          requires = "subscription", conflicts_with = "endpoint")]
    pub vapid_key: Option<PathBuf>,
    /// The VAPID contact (the JWT's `sub`): a mailto: or https: URL [default:
    /// mailto:simplepush@localhost].
    #[arg(long, value_name = "URL", help_heading = WEBPUSH,
          requires = "vapid_key", conflicts_with = "endpoint", value_parser = parse_subject)]
    pub subject: Option<String>,
    /// How long, in seconds, the server keeps the message for a device that is offline
    /// (0: deliver now or never); the server may lower it [default: 60].
    #[arg(long, value_name = "SECONDS", help_heading = WEBPUSH,
          requires = "subscription", conflicts_with = "endpoint")]
    pub ttl: Option<u64>,
    /// A topic (up to 32 characters of A-Z a-z 0-9 - _): a newer message with the same
    /// topic replaces one the device has not received yet.
    #[arg(long, value_name = "TOPIC", help_heading = WEBPUSH,
          requires = "subscription", conflicts_with = "endpoint", value_parser = parse_topic)]
    pub topic: Option<String>,
    /// How urgent the message is, for devices that save battery.
    #[arg(long, value_name = "URGENCY", value_enum, help_heading = WEBPUSH,
          requires = "subscription", conflicts_with = "endpoint")]
    pub urgency: Option<Urgency>,
}

/// `--subject`: a `mailto:` or `https:` URL, as RFC 8292 asks and servers check.
fn parse_subject(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let rest = ["mailto:", "https:"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme));
    match rest {
        Some(rest) if !rest.trim().is_empty() => Ok(text.to_owned()),
        _ => Err("must be a mailto: or https: URL (e.g. mailto:you@example.com)".to_owned()),
    }
}

/// `--topic`: at most 32 characters of the base64url alphabet (RFC 8030 §5.4).
fn parse_topic(text: &str) -> Result<String, String> {
    let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if text.is_empty() || text.len() > 32 || !text.chars().all(alphabet) {
        return Err("must be 1 to 32 characters of A-Z a-z 0-9 - _".to_owned());
    }
    Ok(text.to_owned())
}

/// What the server answered, in either dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// To a SimplePush `PUT`.
    SimplePush(Outcome),
    /// To a WebPush `POST`.
    WebPush(WebPushOutcome),
}

impl Answer {
    /// Whether the push was accepted (200 or 202 for SimplePush, 201 for WebPush).
    pub fn is_success(&self) -> bool {
        match self {
            Answer::SimplePush(outcome) => outcome.is_success(),
            Answer::WebPush(outcome) => outcome.is_success(),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::SimplePush(outcome) => outcome.fmt(f),
            Answer::WebPush(outcome) => outcome.fmt(f),
        }
    }
}

/// Why a push got no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The endpoint is not a URL this tool can push to.
    #[error("{endpoint} is not a usable push endpoint: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The subscription file cannot be read.
    #[error("cannot read the subscription file {path}")]
    SubscriptionIo {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The subscription file is not a subscription.
    #[error("the subscription file {path} is unusable")]
    Subscription {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: SubscriptionError,
    },
    /// The VAPID key file cannot be used.
    #[error(transparent)]
    VapidKey(#[from] KeyFileError),
    /// `--data ""` with WebPush: an empty record is not valid aes128gcm.
    #[error("--data is empty: leave it out to push without data")]
    EmptyData,
    /// The payload could not be encrypted.
    #[error("cannot encrypt the data")]
    Encrypt(#[source] PayloadError),
    /// The request failed before a reply came (refused, timed out, reset).
    #[error("{method} {endpoint} failed")]
    Request {
        /// `PUT` or `POST`.
        method: &'static str,
        /// The endpoint as given.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
}

impl PushError {
    /// The process's exit code: 2 when the input was wrong (a file, its JSON, a key, an
    /// endpoint), 1 when the push itself failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            PushError::Endpoint { .. }
            | PushError::SubscriptionIo { .. }
            | PushError::Subscription { .. }
            | PushError::VapidKey(_)
            | PushError::EmptyData => 2,
            PushError::Encrypt(_) | PushError::Request { .. } => 1,
        }
    }
}

/// Pushes as the arguments say and returns the server's answer, whatever its status.
pub async fn run(args: &Options) -> Result<Answer, PushError> {
    let Some(path) = &args.subscription else {
        let request = Request {
            endpoint: args.endpoint.clone().unwrap_or_default(),
            version: args.version,
            data: args.data.clone(),
        };
        return push(&request).await.map(Answer::SimplePush);
    };
    let text =
        tokio::fs::read_to_string(path)
            .await
            .map_err(|source| PushError::SubscriptionIo {
                path: path.clone(),
                source,
            })?;
    let subscription = Subscription::parse(&text).map_err(|source| PushError::Subscription {
        path: path.clone(),
        source,
    })?;
    let vapid = match &args.vapid_key {
        Some(path) => Some(VapidKey::read(path)?),
        None => None,
    };
    if args.data.as_deref() == Some("") {
        return Err(PushError::EmptyData);
    }
    let request = WebPushRequest {
        subscription,
        data: args.data.clone(),
        vapid,
        subject: args
            .subject
            .clone()
            .unwrap_or_else(|| DEFAULT_SUBJECT.to_owned()),
        ttl: args.ttl.unwrap_or(DEFAULT_TTL),
        topic: args.topic.clone(),
        urgency: args.urgency,
    };
    push_webpush(&request).await.map(Answer::WebPush)
}

/// An endpoint as a URL this tool can reach: `http` only (no TLS in this build).
fn endpoint_url(endpoint: &str) -> Result<Url, PushError> {
    let endpoint_error = |reason: String| PushError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let url = Url::parse(endpoint).map_err(|e| endpoint_error(e.to_string()))?;
    match url.scheme() {
        "http" => Ok(url),
        "https" => Err(endpoint_error(
            "https needs TLS, which this build of simplepush does not include".to_owned(),
        )),
        other => Err(endpoint_error(format!("unsupported scheme `{other}`"))),
    }
}

/// The HTTP client of one push: a timeout, and no redirects (an endpoint answers itself).
fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The JSON error body of docs/protocol.md: `{"status":N,"error":"..","reason":".."}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: Option<String>,
    reason: Option<String>,
}

/// `Error: reason` from a JSON error body; the status's name and the start of the body
/// when the body is something else (a proxy's HTML page, say).
fn describe_error(status: u16, body: &str) -> String {
    let name = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown Status");
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: Some(error),
            reason: Some(reason),
        }) => format!("{error}: {reason}"),
        Ok(ErrorBody {
            error: Some(error),
            reason: None,
        }) => error,
        _ => {
            let quoted: String = body
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(QUOTED_BODY_CHARS)
                .collect();
            if quoted.is_empty() {
                name.to_owned()
            } else {
                format!("{name}: {quoted}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_mailto_or_https() {
        assert!(parse_subject("mailto:ops@example.com").is_ok());
        assert!(parse_subject("HTTPS://example.com/contact").is_ok());
        for bad in ["", "ops@example.com", "mailto:", "http://example.com"] {
            assert!(parse_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_are_short_base64url() {
        assert!(parse_topic("news-1_A").is_ok());
        assert!(parse_topic(&"a".repeat(32)).is_ok());
        for bad in ["", "a b", "a/b", "ünï", &"a".repeat(33)] {
            assert!(parse_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_errors_exit_with_2() {
        assert_eq!(PushError::EmptyData.exit_code(), 2);
        assert_eq!(endpoint_url("ftp://x/").unwrap_err().exit_code(), 2);
        assert!(endpoint_url("http://localhost:8081/wpush/v1/x").is_ok());
    }
}
