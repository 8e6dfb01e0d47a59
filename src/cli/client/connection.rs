//! The socket side of `simplepush client`, shared by both dialects: connecting, sending
//! the dialect's hello, reply timeouts, idle pings, error frames and close codes, a clean
//! close on shutdown, and reconnecting with backoff. What to say and what to print is
//! the [`Dialect`]'s.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::ClientError;

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

/// What a dialect decides on a connection. Replies with a non-200 `status` never reach
/// it: a 4xx ends the client ([`ClientError::Refused`]), anything else reconnects.
pub(super) trait Dialect {
    /// The hello that opens every connection.
    fn hello(&self) -> Value;

    /// The server answered the hello with this uaid (once per connection): the frames
    /// to send next. Each `register` among them must be answered within the reply
    /// timeout, or the connection is dropped and made again.
    async fn on_hello(&mut self, uaid: &str) -> Handled;

    /// A register reply: the channel's pushEndpoint.
    async fn on_register(&mut self, channel_id: &str, endpoint: &str) -> Handled;

    /// A notification frame: the frames to send back (the ack).
    async fn on_notification(&mut self, message: &Map<String, Value>) -> Handled;
}

/// What a dialect's handler answers: the frames to send, or why the client must stop.
pub(super) type Handled = Result<Vec<Value>, ClientError>;

/// Runs a dialect on `server` until `shutdown` is cancelled.
///
/// Returns `Ok` after a shutdown (the socket closed cleanly), an error when going on is
/// pointless (see [`ClientError`]). Lost connections are retried with exponential backoff
/// (1 s doubling to 60 s, with jitter), reset once a connection gets its hello answered.
pub(super) async fn run<D: Dialect>(
    server: &str,
    dialect: &mut D,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let mut retry = FIRST_RETRY;
    loop {
        let (why, established) = match session(server, dialect, shutdown).await? {
            End::Shutdown => return Ok(()),
            End::Lost { why, established } => (why, established),
        };
        if established {
            retry = FIRST_RETRY;
        }
        let delay = jittered(retry);
        tracing::warn!(server, "{why}; reconnecting in {delay:.1?}");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = sleep(delay) => {}
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Refuses URLs that can never work, so that they fail at once instead of being retried.
pub(super) fn check_url(url: &str) -> Result<(), ClientError> {
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

fn lost(why: impl Into<String>, established: bool) -> End {
    End::Lost {
        why: why.into(),
        established,
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects and runs one session until it ends.
async fn session<D: Dialect>(
    server: &str,
    dialect: &mut D,
    shutdown: &CancellationToken,
) -> Result<End, ClientError> {
    let connect = timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(server));
    let socket = tokio::select! {
        _ = shutdown.cancelled() => return Ok(End::Shutdown),
        result = connect => match result {
            Err(_) => return Ok(lost("connecting timed out", false)),
            Ok(Err(tungstenite::Error::Url(error))) => {
                return Err(ClientError::Url {
                    url: server.to_owned(),
                    reason: error.to_string(),
                });
            }
            Ok(Err(error)) => return Ok(lost(format!("cannot connect: {error}"), false)),
            Ok(Ok((socket, _response))) => socket,
        },
    };
    tracing::info!(server, "connected");
    let mut session = Session {
        dialect,
        shutdown,
        socket,
        uaid: None,
        awaiting_registers: HashSet::new(),
    };
    session.run().await
}

/// One connection.
struct Session<'a, D> {
    dialect: &'a mut D,
    shutdown: &'a CancellationToken,
    socket: Socket,
    /// The uaid of the hello reply, once it came.
    uaid: Option<String>,
    /// Channels whose register reply has not come yet.
    awaiting_registers: HashSet<String>,
}

/// What to do after a frame: go on, or end the session.
type Step = Result<Option<End>, ClientError>;

impl<D: Dialect> Session<'_, D> {
    async fn run(&mut self) -> Result<End, ClientError> {
        let hello = self.dialect.hello();
        if let Some(end) = self.send(hello).await {
            return Ok(end);
        }
        let mut pinged = false;
        loop {
            let waiting = self.uaid.is_none() || !self.awaiting_registers.is_empty() || pinged;
            let deadline = Instant::now() + if waiting { REPLY_TIMEOUT } else { IDLE_PING };
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => {
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
        lost(why, self.uaid.is_some())
    }

    /// Sends a JSON message; `Some` when the connection is gone. A register is awaited.
    async fn send(&mut self, message: Value) -> Option<End> {
        if message.get("messageType").and_then(Value::as_str) == Some("register")
            && let Some(channel) = message.get("channelID").and_then(Value::as_str)
        {
            self.awaiting_registers.insert(channel.to_owned());
        }
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
                uaid: self.uaid.clone().unwrap_or_default(),
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
        let handled = match message_type.as_str() {
            "hello" => {
                let Some(uaid) = message.get("uaid").and_then(Value::as_str) else {
                    return Ok(Some(self.lost("the hello reply has no uaid".to_owned())));
                };
                if self.uaid.is_some() {
                    return Ok(None);
                }
                self.uaid = Some(uaid.to_owned());
                tracing::info!(uaid, "hello answered");
                self.dialect.on_hello(uaid).await
            }
            "register" => {
                let channel = message.get("channelID").and_then(Value::as_str);
                let endpoint = message.get("pushEndpoint").and_then(Value::as_str);
                let (Some(channel), Some(endpoint)) = (channel, endpoint) else {
                    return Ok(Some(self.lost(
                        "a register reply lacks channelID or pushEndpoint".to_owned(),
                    )));
                };
                self.awaiting_registers.remove(channel);
                self.dialect.on_register(channel, endpoint).await
            }
            "notification" => self.dialect.on_notification(&message).await,
            other => {
                tracing::debug!(message_type = other, "ignoring a message");
                Ok(Vec::new())
            }
        };
        for frame in handled? {
            if let Some(end) = self.send(frame).await {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    /// An error frame: a 4xx would be refused again, anything else is worth a retry.
    fn on_error(&self, message_type: String, status: u64, message: &Map<String, Value>) -> Step {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
