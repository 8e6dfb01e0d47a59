//! One device's websocket session: reads its commands, answers them, delivers its
//! updates live, re-sends what it has not acknowledged, and closes with the code
//! docs/protocol.md names. One task per socket; its only timer is reset, never spawned.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use simplepush_store::{ChannelId, RegisterOutcome, StoreError, Uaid, Update};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};
use tracing::Instrument;

use crate::app::{App, unix_now};
use crate::device::protocol::{
    self, Command, ErrorFrame, HelloReply, Notification, Refusal, RegisterReply, UnregisterReply,
    UpdateEntry, is_uuid_shaped,
};
use crate::device::registry::{ConnectionGuard, Delivery, Peer, Signals, Stamp};
use crate::device::throttle::Throttle;
use crate::device::webpush;
use crate::error::store_error_frame;

/// The websocket of one device.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// How long to wait for the device to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session ends, and so which close frame it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// An error frame was sent: close 1000.
    AfterError,
    /// Not JSON, not an object, or invalid UTF-8: close 1007.
    InvalidPayload,
    /// A message over `max_message_bytes`: close 1009.
    TooBig,
    /// A websocket protocol violation: close 1002.
    ProtocolViolation,
    /// No hello in time: close 1000.
    HelloTimeout,
    /// A newer socket took the uaid: close 4000.
    Replaced,
    /// The device stopped reading: close 1008.
    TooSlow,
    /// The server shuts down: close 1001.
    Shutdown,
    /// The device closed, or the connection broke: nothing more to send.
    Gone,
}

impl End {
    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::AfterError => (CloseCode::Normal, ""),
            End::InvalidPayload => (CloseCode::Invalid, "invalid message"),
            End::TooBig => (CloseCode::Size, "message too big"),
            End::ProtocolViolation => (CloseCode::Protocol, "protocol error"),
            End::HelloTimeout => (CloseCode::Normal, "hello timeout"),
            End::Replaced => (CloseCode::Library(4000), "replaced"),
            End::TooSlow => (CloseCode::Policy, "not reading"),
            End::Shutdown => (CloseCode::Away, "server shutting down"),
            End::Gone => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

/// What woke the session up.
enum Event {
    Signals(Signals),
    Frame(Option<Result<Message, WsError>>),
}

fn keepalive_config(app: &App) -> KeepaliveConfig {
    KeepaliveConfig {
        interval: app.protocol.ping_interval,
        timeout: app.protocol.pong_timeout,
    }
}

/// Serves one device until its socket closes; `connected` counts it meanwhile.
///
/// Not an `async fn`: its arguments would then stay in the future beside the session
/// they move into, and an idle socket would carry the websocket twice.
pub fn run(
    app: Arc<App>,
    socket: Socket,
    connected: ConnectionGuard,
) -> impl Future<Output = ()> + Send + 'static {
    let peer = app.registry.peer();
    let started = app.registry.now();
    let keepalive = KeepaliveTimer::new(started, keepalive_config(&app));
    let mut session = Session {
        app,
        socket,
        peer,
        started,
        uaid: None,
        last_ping: None,
        retry_at: None,
        touch_at: None,
        keepalive,
        messages: 0,
        webpush: None,
        throttle: Throttle::default(),
        _connected: connected,
    };
    async move {
        let end = session.serve().await;
        // Boxed, so that the loop's state does not also keep room for the closing.
        Box::pin(session.finish(end)).await;
    }
}

struct Session {
    app: Arc<App>,
    socket: Socket,
    peer: Arc<Peer>,
    /// When the socket was accepted. (Moments are [`Stamp`]s, half an `Instant`: an
    /// idle socket's memory is mostly this struct.)
    started: Stamp,
    /// Set by the first successful hello.
    uaid: Option<Uaid>,
    /// When the last accepted ping arrived.
    last_ping: Option<Stamp>,
    /// When unacknowledged updates are sent again, if any were sent.
    retry_at: Option<Stamp>,
    /// When the device is next recorded as seen in the store (retention), once it said
    /// hello: a device that stays connected is never forgotten. Eight bytes, and the
    /// registry's sweeper wakes the session for it: no timer of its own.
    touch_at: Option<Stamp>,
    /// Dead-peer detection.
    keepalive: KeepaliveTimer,
    /// Messages received from the device (a u32, so that it shares its word with
    /// `webpush`: an idle session stays as small as before the WebPush dialect).
    messages: u32,
    /// Set by a hello with `use_webpush` (docs/protocol.md): the socket then speaks
    /// WebPush, and this counts the messages sent to it that it has not acknowledged
    /// yet (roughly: acks of other ids count too), so the next page of queued messages
    /// goes out once the last page is acknowledged.
    webpush: Option<u16>,
    /// The device's allowance of commands (`command_rate`, `command_burst`).
    throttle: Throttle,
    /// Counts this socket among the node's connections.
    _connected: ConnectionGuard,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.app.registry.retire(&self.peer);
    }
}

/// The error frame of a hello the store could not answer, echoing the uaid as sent
/// (either dialect).
fn hello_refusal(error: &StoreError, sent: Option<String>) -> ErrorFrame {
    let frame = store_error_frame(error).for_type("hello");
    match sent {
        Some(sent) => frame.echo("uaid", Value::String(sent)),
        None => frame,
    }
}

/// What the keepalive asks for when its time comes.
#[derive(Debug, PartialEq, Eq)]
enum Keepalive {
    /// Nothing yet.
    Wait,
    /// Send a websocket Ping.
    Ping,
    /// No answer to our Ping: the peer is gone.
    Dead,
}

/// Sends a websocket Ping after `interval` of silence and gives up on the peer when
/// nothing arrives within `timeout` of it. Hearing a frame never touches the timer: the
/// deadline is recomputed only when it fires. The durations come from the config on each
/// call (every session keeps only its instants).
#[derive(Debug)]
struct KeepaliveTimer {
    last_heard: Stamp,
    next: Stamp,
    awaiting_pong: bool,
}

/// `ping_interval` (zero: keepalive off) and `pong_timeout`.
#[derive(Debug, Clone, Copy)]
struct KeepaliveConfig {
    interval: Duration,
    timeout: Duration,
}

impl KeepaliveTimer {
    fn new(now: Stamp, config: KeepaliveConfig) -> Self {
        KeepaliveTimer {
            last_heard: now,
            next: now + config.interval,
            awaiting_pong: false,
        }
    }

    /// When the keepalive next needs a look, if it is on.
    fn due(&self, config: KeepaliveConfig) -> Option<Stamp> {
        (!config.interval.is_zero()).then_some(self.next)
    }

    /// The peer sent something.
    fn heard(&mut self, now: Stamp) {
        self.last_heard = now;
        self.awaiting_pong = false;
    }

    fn check(&mut self, now: Stamp, config: KeepaliveConfig) -> Keepalive {
        if config.interval.is_zero() || now < self.next {
            return Keepalive::Wait;
        }
        if self.awaiting_pong {
            return Keepalive::Dead;
        }
        let quiet_until = self.last_heard + config.interval;
        if now < quiet_until {
            self.next = quiet_until;
            return Keepalive::Wait;
        }
        self.awaiting_pong = true;
        self.next = now + config.timeout;
        Keepalive::Ping
    }
}

/// A step that may end the session.
type Step = Result<(), End>;

impl Session {
    async fn serve(&mut self) -> End {
        loop {
            // The registry's sweeper raises TIMER once this passes: no timer per socket.
            let wanted = [
                self.uaid.is_none().then(|| self.hello_deadline()),
                self.retry_at,
                self.touch_at,
                self.keepalive.due(keepalive_config(&self.app)),
            ]
            .into_iter()
            .flatten()
            .min();
            self.app.registry.set_deadline(&self.peer, wanted);
            // The handlers' futures are boxed and carry the span: they live only while
            // something is being handled, so an idle session keeps just this loop. The
            // event lives only inside this block, moved into its handler before the
            // handler is awaited, so the loop's state keeps no room for a frame.
            let handler: Pin<Box<dyn Future<Output = Step> + Send + '_>> = {
                let peer = &*self.peer;
                let event = tokio::select! {
                    biased;
                    signals = poll_fn(|cx| peer.poll_signals(cx)) => Event::Signals(signals),
                    frame = self.socket.next() => Event::Frame(frame),
                };
                let span = self.span();
                match event {
                    Event::Signals(signals) => Box::pin(self.on_signals(signals).instrument(span)),
                    Event::Frame(frame) => {
                        self.keepalive.heard(self.app.registry.now());
                        Box::pin(self.on_frame(frame).instrument(span))
                    }
                }
            };
            let step = handler.await;
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// What this session logs is in this span, made afresh for each event (entered
    /// only while it handles something): an idle session keeps no span.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("conn", id = self.peer.id())
    }

    /// A socket that has not said hello by then is closed.
    fn hello_deadline(&self) -> Stamp {
        self.started + self.app.protocol.hello_timeout
    }

    /// Shutdown, then mail, then timers.
    async fn on_signals(&mut self, signals: Signals) -> Step {
        if signals.contains(Signals::SHUTDOWN) {
            return Err(End::Shutdown);
        }
        if signals.contains(Signals::MAIL) {
            self.deliver_mail().await?;
        }
        if signals.contains(Signals::TIMER) {
            self.on_timer().await?;
        }
        Ok(())
    }

    /// Whatever of the hello timeout, the touch, the retry and the keepalive is due.
    async fn on_timer(&mut self) -> Step {
        let now = self.app.registry.now();
        if self.uaid.is_none() && now >= self.hello_deadline() {
            return Err(End::HelloTimeout);
        }
        if self.touch_at.is_some_and(|at| now >= at) {
            if let Some(uaid) = &self.uaid {
                Self::touch(&self.app, uaid).await;
            }
            let every = self.app.touch_interval(self.peer.id());
            self.touch_at = every.map(|every| now + every);
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
            if self.flush().await? {
                self.app.metrics.retries.inc();
            }
        }
        match self.keepalive.check(now, keepalive_config(&self.app)) {
            Keepalive::Wait => Ok(()),
            Keepalive::Dead => Err(End::Gone),
            Keepalive::Ping => {
                let ping = self.socket.send(Message::Ping(Default::default()));
                match timeout(self.app.protocol.write_timeout, ping).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(End::Gone),
                }
            }
        }
    }

    /// Re-sends pending updates after `retry_interval` unless a retry is already due.
    fn arm_retry(&mut self) {
        if self.retry_at.is_none() {
            self.retry_at = Some(self.app.registry.now() + self.app.protocol.retry_interval);
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Step {
        match frame {
            None => Err(End::Gone),
            Some(Ok(Message::Text(text))) => self.on_message(text.as_bytes()).await,
            Some(Ok(Message::Binary(bytes))) => self.on_message(&bytes).await,
            Some(Ok(Message::Close(_))) => Err(End::Gone),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => Err(End::TooBig),
            Some(Err(WsError::Capacity(_))) => Err(End::TooBig),
            Some(Err(WsError::Utf8(_))) => Err(End::InvalidPayload),
            Some(Err(WsError::Protocol(_))) => Err(End::ProtocolViolation),
            Some(Err(_)) => Err(End::Gone),
        }
    }

    async fn on_message(&mut self, frame: &[u8]) -> Step {
        self.messages = self.messages.saturating_add(1);
        if self.webpush.is_some() {
            return self.on_webpush_message(frame).await;
        }
        let command = protocol::parse(frame);
        if let Ok(command) = &command {
            let name = command.name();
            let counter = match command {
                // The hello that makes the socket a WebPush session counts as WebPush.
                Command::Hello { webpush: true, .. } if self.uaid.is_none() => {
                    &self.app.metrics.device_webpush.commands
                }
                _ => &self.app.metrics.commands,
            };
            counter.with_label_values(&[name]).inc();
            if !self.admit() {
                return self.fail(too_many_commands(command)).await;
            }
        }
        match command {
            Err(Refusal::NotAnObject) => Err(End::InvalidPayload),
            Err(Refusal::Invalid(error)) => self.fail(error).await,
            Ok(Command::Ping) => self.ping().await,
            Ok(Command::Hello {
                uaid,
                webpush: true,
                ..
            }) if self.uaid.is_none() => self.webpush_hello(uaid).await,
            Ok(Command::Hello {
                uaid, channel_ids, ..
            }) => self.hello(uaid, channel_ids).await,
            Ok(Command::Register { channel_id }) => self.register(channel_id).await,
            Ok(Command::Unregister { channel_id }) => self.unregister(channel_id).await,
            Ok(Command::Ack {
                updates,
                expired,
                sent_updates,
            }) => self.ack(updates, expired, sent_updates).await,
        }
    }

    /// Whether the device's allowance of commands admits one more.
    fn admit(&mut self) -> bool {
        let (rate, burst) = (
            self.app.protocol.command_rate,
            self.app.protocol.command_burst,
        );
        self.throttle.admit(self.app.registry.now(), rate, burst)
    }

    /// A message of a WebPush session (docs/protocol.md).
    async fn on_webpush_message(&mut self, frame: &[u8]) -> Step {
        let command = webpush::parse(frame);
        if let Ok(command) = &command {
            let metrics = &self.app.metrics.device_webpush;
            metrics.commands.with_label_values(&[command.name()]).inc();
            if !self.admit() {
                return self.fail(webpush_too_many_commands(command)).await;
            }
        }
        match command {
            Err(Refusal::NotAnObject) => Err(End::InvalidPayload),
            Err(Refusal::Invalid(error)) => self.fail(error).await,
            Ok(webpush::Command::Ping) => self.ping().await,
            // One hello reply per socket; the server knows no broadcasts; what Firefox
            // may add later is ignored, as Firefox ignores what it does not know.
            Ok(
                webpush::Command::Hello
                | webpush::Command::BroadcastSubscribe
                | webpush::Command::Unknown,
            ) => Ok(()),
            Ok(webpush::Command::Register { channel_id, key }) => {
                self.webpush_register(channel_id, key).await
            }
            Ok(webpush::Command::Unregister { channel_id }) => {
                self.webpush_unregister(channel_id).await
            }
            Ok(webpush::Command::Ack {
                updates,
                sent_updates,
            }) => self.webpush_ack(updates, sent_updates).await,
            Ok(webpush::Command::Nack { code }) => {
                let label = webpush::nack_code_label(code);
                let nacks = &self.app.metrics.device_webpush.nacks;
                nacks.with_label_values(&[label]).inc();
                Ok(())
            }
        }
    }

    /// Sends an error frame; the session then closes with 1000.
    async fn fail(&mut self, error: ErrorFrame) -> Step {
        self.send(protocol::to_text(&error)).await?;
        Err(End::AfterError)
    }

    /// Sends a text frame. The frame is formatted here and written straight to the
    /// socket, so tungstenite's output buffer never grows to hold it: an idle session
    /// then keeps no copy of its largest reply.
    async fn send(&mut self, text: String) -> Step {
        let write_timeout = self.app.protocol.write_timeout;
        let mut bytes = Vec::with_capacity(text.len() + 10);
        let frame = Frame::message(text, OpCode::Data(Data::Text), true);
        if frame.format(&mut bytes).is_err() {
            return Err(End::Gone);
        }
        let write = async {
            // Whatever tungstenite still holds (say, a pong) goes out first.
            self.socket.flush().await.map_err(std::io::Error::other)?;
            let io = self.socket.get_mut();
            io.write_all(&bytes).await?;
            io.flush().await
        };
        match timeout(write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn ping(&mut self) -> Step {
        let min = self.app.protocol.min_ping_interval;
        let now = self.app.registry.now();
        if let Some(last) = self.last_ping
            && !min.is_zero()
            && now.since(last) < min
        {
            return self
                .fail(ErrorFrame::new(401, "too many pings").for_type("ping"))
                .await;
        }
        self.last_ping = Some(now);
        self.send("{}".to_owned()).await
    }

    async fn hello(&mut self, uaid: Option<String>, channel_ids: Option<Vec<String>>) -> Step {
        if let Some(current) = &self.uaid {
            return match uaid {
                Some(other) if other != current.as_str() => {
                    let error =
                        ErrorFrame::new(503, "this socket already said hello with another uaid")
                            .for_type("hello")
                            .echo("uaid", Value::String(other));
                    self.fail(error).await
                }
                _ => {
                    let reply = protocol::to_text(&HelloReply::new(current.as_str()));
                    self.send(reply).await
                }
            };
        }
        let uaid = match Self::choose_uaid(&self.app, uaid.clone(), channel_ids).await {
            Ok(uaid) => uaid,
            Err(e) => return self.fail(hello_refusal(&e, uaid)).await,
        };
        self.claim(&uaid).await?;
        // A replacement that raced our own claim is not ours to obey.
        let reply = protocol::to_text(&HelloReply::new(uaid.as_str()));
        self.said_hello_as(uaid);
        self.send(reply).await?;
        self.flush().await.map(drop)
    }

    /// The socket goes by `uaid` from now on; while it stays connected, the device is
    /// recorded as seen every [`App::touch_interval`].
    fn said_hello_as(&mut self, uaid: Uaid) {
        self.uaid = Some(uaid);
        let every = self.app.touch_interval(self.peer.id());
        self.touch_at = every.map(|every| self.app.registry.now() + every);
    }

    /// Records that the device of `uaid` is here, so that retention keeps it another
    /// `device_ttl` (nothing without retention). A failure is logged and counted
    /// (`store_errors_total{op="touch"}`) and never fails the hello: at worst retention
    /// forgets a device that was seen, and its next hello gets a fresh uaid.
    async fn touch(app: &App, uaid: &Uaid) {
        if app.device_ttl.is_zero() {
            return;
        }
        if let Err(error) = app.store.touch(uaid, unix_now()).await {
            tracing::warn!(%error, "recording the device as seen failed");
        }
    }

    /// Takes `uaid` on this node and in the cluster: the newest socket wins.
    async fn claim(&mut self, uaid: &Uaid) -> Step {
        self.app.registry.claim(uaid, &self.peer);
        if let Some(cluster) = &self.app.cluster
            && let Err(e) = cluster.announce(&*self.app.store, uaid).await
        {
            self.app.registry.release(uaid, &self.peer);
            let error = store_error_frame(&e).for_type("hello");
            return self
                .fail(error.echo("uaid", Value::String(uaid.to_string())))
                .await;
        }
        Ok(())
    }

    /// The hello that makes this socket a WebPush session (docs/protocol.md): its one
    /// reply, then every queued message.
    async fn webpush_hello(&mut self, sent: Option<String>) -> Step {
        let uaid = match Self::choose_webpush_uaid(&self.app, sent.as_deref()).await {
            Ok(uaid) => uaid,
            Err(e) => return self.fail(hello_refusal(&e, sent)).await,
        };
        self.claim(&uaid).await?;
        let reply = protocol::to_text(&webpush::HelloReply::new(uaid.as_str()));
        self.said_hello_as(uaid);
        self.webpush = Some(0);
        self.send(reply).await?;
        self.flush().await.map(drop)
    }

    /// A WebPush device keeps its uaid only while the store knows it (has channels of
    /// it); any other gets a fresh one, so that Firefox drops the subscriptions the
    /// server no longer has (lost, or removed by retention). A kept uaid is recorded as
    /// seen.
    async fn choose_webpush_uaid(app: &App, sent: Option<&str>) -> Result<Uaid, StoreError> {
        if let Some(sent) = sent.filter(|u| webpush::uaid_acceptable(u)) {
            let sent = Uaid::new(sent);
            // Seen first, then asked for: a sweep racing this hello has then either
            // removed the device already (a fresh uaid) or keeps it another TTL.
            Self::touch(app, &sent).await;
            if app.store.knows_uaid(&sent).await? {
                return Ok(sent);
            }
        }
        Ok(Uaid::new(uuid::Uuid::new_v4().simple().to_string()))
    }

    /// The uaid this device goes by, per the minting rules of docs/protocol.md; a kept
    /// one is recorded as seen.
    async fn choose_uaid(
        app: &App,
        sent: Option<String>,
        channel_ids: Option<Vec<String>>,
    ) -> Result<Uaid, StoreError> {
        let mint = || Uaid::new(uuid::Uuid::new_v4().simple().to_string());
        let Some(sent) = sent.filter(|u| is_uuid_shaped(u)) else {
            return Ok(mint());
        };
        let sent = Uaid::new(sent);
        let claimed = channel_ids.map_or(0, |ids| ids.len());
        if claimed > app.protocol.max_channels {
            app.store.drop_uaid(&sent).await?;
            return Ok(mint());
        }
        // Seen before the store is asked whether it knows the uaid, as in
        // `choose_webpush_uaid`.
        Self::touch(app, &sent).await;
        if claimed > 0 && !app.store.knows_uaid(&sent).await? {
            return Ok(mint());
        }
        Ok(sent)
    }

    /// The uaid, or the 401 for a command sent before hello.
    fn said_hello(
        &self,
        message_type: &str,
        echo: Option<(&str, Value)>,
    ) -> Result<Uaid, ErrorFrame> {
        self.uaid.clone().ok_or_else(|| {
            let error = ErrorFrame::new(401, "hello first").for_type(message_type);
            match echo {
                Some((key, value)) => error.echo(key, value),
                None => error,
            }
        })
    }

    async fn register(&mut self, channel_id: String) -> Step {
        let echo = ("channelID", Value::String(channel_id.clone()));
        let uaid = match self.said_hello("register", Some(echo.clone())) {
            Ok(uaid) => uaid,
            Err(error) => return self.fail(error).await,
        };
        let channel = ChannelId::new(channel_id);
        if let Some(error) = Self::register_channel(&self.app, &uaid, &channel).await {
            return self
                .fail(error.for_type("register").echo(echo.0, echo.1))
                .await;
        }
        let endpoint = self.app.push_endpoint(&uaid, &channel);
        let reply = RegisterReply::new(uaid.as_str(), channel.as_str(), &endpoint);
        self.send(protocol::to_text(&reply)).await
    }

    /// Registers `channel` in the store; the refusal, if it fails.
    async fn register_channel(app: &App, uaid: &Uaid, channel: &ChannelId) -> Option<ErrorFrame> {
        let max = app.protocol.max_channels;
        match app.store.register(uaid, channel, max, unix_now()).await {
            Ok(RegisterOutcome::Registered) => None,
            Ok(RegisterOutcome::TooManyChannels) => Some(ErrorFrame::new(
                503,
                format!("too many channels: at most {max} per uaid"),
            )),
            Err(e) => Some(store_error_frame(&e)),
        }
    }

    /// A WebPush register: as SimplePush's, with a `/wpush/` endpoint (v2, bound to
    /// the key, when the device sent the app server's key).
    async fn webpush_register(&mut self, channel_id: String, key: Option<Vec<u8>>) -> Step {
        let echo = ("channelID", Value::String(channel_id.clone()));
        let uaid = match self.said_hello("register", Some(echo.clone())) {
            Ok(uaid) => uaid,
            Err(error) => return self.fail(error).await,
        };
        let channel = ChannelId::new(channel_id);
        if let Some(error) = Self::register_channel(&self.app, &uaid, &channel).await {
            return self
                .fail(error.for_type("register").echo(echo.0, echo.1))
                .await;
        }
        let endpoint = webpush::push_endpoint(&self.app, &uaid, &channel, key.as_deref());
        let reply = RegisterReply::new(uaid.as_str(), channel.as_str(), &endpoint);
        self.send(protocol::to_text(&reply)).await
    }

    /// A WebPush unregister: the channel and its queued messages are dropped.
    async fn webpush_unregister(&mut self, channel_id: String) -> Step {
        let echo = ("channelID", Value::String(channel_id.clone()));
        let uaid = match self.said_hello("unregister", Some(echo.clone())) {
            Ok(uaid) => uaid,
            Err(error) => return self.fail(error).await,
        };
        let channel = ChannelId::new(channel_id);
        if let Err(e) = self.app.store.unregister(&uaid, &channel).await {
            let error = store_error_frame(&e).for_type("unregister");
            return self.fail(error.echo(echo.0, echo.1)).await;
        }
        let reply = protocol::to_text(&webpush::UnregisterReply::new(channel.as_str()));
        self.send(reply).await
    }

    /// A WebPush ack: every listed message is removed whatever its code, in one store
    /// call; the ids are deduplicated and capped as SimplePush's ack channels are.
    /// Once the device has acknowledged what it was sent, the next page goes out.
    async fn webpush_ack(
        &mut self,
        updates: Vec<(String, Option<u64>)>,
        sent_updates: Value,
    ) -> Step {
        let echo = ("updates", sent_updates);
        let uaid = match self.said_hello("ack", Some(echo.clone())) {
            Ok(uaid) => uaid,
            Err(error) => return self.fail(error).await,
        };
        let max = self.app.protocol.max_channels;
        let Some(ids) = webpush::distinct_ids(&updates, max) else {
            let reason = format!("an ack names at most {max} messages");
            let error = ErrorFrame::new(401, reason).for_type("ack");
            return self.fail(error.echo(echo.0, echo.1)).await;
        };
        let acks = &self.app.metrics.device_webpush.acks;
        for (_, code) in &updates {
            acks.with_label_values(&[webpush::ack_code_label(*code)])
                .inc();
        }
        if ids.is_empty() {
            return Ok(());
        }
        let store = self.app.store.clone();
        match store.ack_messages(&uaid, &ids, unix_now()).await {
            Ok(more) => {
                let unacked = self.webpush.unwrap_or(0);
                let unacked = unacked.saturating_sub(u16::try_from(ids.len()).unwrap_or(u16::MAX));
                self.webpush = Some(unacked);
                if !more {
                    // Nothing left to re-send.
                    self.retry_at = None;
                    Ok(())
                } else if unacked == 0 {
                    self.flush().await.map(drop)
                } else {
                    Ok(())
                }
            }
            Err(e) => {
                let error = store_error_frame(&e).for_type("ack");
                self.fail(error.echo(echo.0, echo.1)).await
            }
        }
    }

    async fn unregister(&mut self, channel_id: String) -> Step {
        let echo = ("channelID", Value::String(channel_id.clone()));
        let uaid = match self.said_hello("unregister", Some(echo.clone())) {
            Ok(uaid) => uaid,
            Err(error) => return self.fail(error).await,
        };
        let channel = ChannelId::new(channel_id);
        if let Err(e) = self.app.store.unregister(&uaid, &channel).await {
            let error = store_error_frame(&e).for_type("unregister");
            return self.fail(error.echo(echo.0, echo.1)).await;
        }
        let reply = protocol::to_text(&UnregisterReply::new(channel.as_str()));
        self.send(reply).await
    }

    /// `sent_updates`: the `updates` field exactly as sent, which a refusal echoes.
    ///
    /// Whatever the frame holds, one store call: a channel named twice counts once (at
    /// its greatest version), and more than `max_channels` distinct channels in
    /// `updates` or in `expired` are refused, since no device has more.
    async fn ack(
        &mut self,
        updates: Vec<(String, u64)>,
        expired: Vec<String>,
        sent_updates: Option<Value>,
    ) -> Step {
        let echo = || sent_updates.clone().map(|value| ("updates", value));
        let uaid = match self.said_hello("ack", echo()) {
            Ok(uaid) => uaid,
            Err(error) => return self.fail(error).await,
        };
        let max = self.app.protocol.max_channels;
        let Some(Acks { updates, expired }) = distinct_acks(updates, expired, max) else {
            let reason = format!("an ack names at most {max} channels in updates and in expired");
            let mut error = ErrorFrame::new(401, reason).for_type("ack");
            if let Some((key, value)) = echo() {
                error = error.echo(key, value);
            }
            return self.fail(error).await;
        };
        if updates.is_empty() && expired.is_empty() {
            return Ok(());
        }
        let store = self.app.store.clone();
        match store.ack_many(&uaid, &updates, &expired, unix_now()).await {
            Ok(true) => self.flush().await.map(drop),
            Ok(false) => Ok(()),
            Err(e) => {
                let mut error = store_error_frame(&e).for_type("ack");
                if let Some((key, value)) = echo() {
                    error = error.echo(key, value);
                }
                self.fail(error).await
            }
        }
    }

    /// Sends everything pending for the device in one notification, if anything is;
    /// answers whether it sent one.
    async fn flush(&mut self) -> Result<bool, End> {
        if self.webpush.is_some() {
            return self.flush_messages().await;
        }
        let Some(uaid) = self.uaid.clone() else {
            return Ok(false);
        };
        let pending = match self.app.store.pending(&uaid, unix_now()).await {
            Ok(pending) => pending,
            Err(e) => {
                // The device can still be served; the retry timer tries again.
                tracing::warn!(error = %e, "reading pending updates failed");
                self.arm_retry();
                return Ok(false);
            }
        };
        if pending.is_empty() {
            return Ok(false);
        }
        let entries = pending
            .updates
            .iter()
            .map(|(channel, update)| UpdateEntry {
                channel_id: channel.as_str(),
                version: update.version,
                data: update.data.as_deref(),
            })
            .collect();
        let expired: Vec<&str> = pending.expired.iter().map(ChannelId::as_str).collect();
        let text = protocol::to_text(&Notification::new(entries, &expired));
        if !pending.updates.is_empty() {
            self.arm_retry();
        }
        self.send(text).await.map(|()| true)
    }

    /// WebPush: sends the oldest page of the device's queued, unexpired messages, one
    /// frame each; answers whether it sent any. The messages queued for live delivery
    /// until then are dropped first: the read finds them in the store (a page sent while
    /// their delivery waited would otherwise send them twice; seen under load after an
    /// ack that left more queued). One of the page queued after that is dropped too
    /// ([`Peer::sent_page`]): stored before the read, it reached the mail late.
    async fn flush_messages(&mut self) -> Result<bool, End> {
        let Some(uaid) = self.uaid.clone() else {
            return Ok(false);
        };
        self.peer.forget_messages();
        let messages = match self
            .app
            .store
            .messages(&uaid, unix_now(), webpush::PAGE)
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                // The device can still be served; the retry timer tries again.
                tracing::warn!(error = %e, "reading queued messages failed");
                self.arm_retry();
                return Ok(false);
            }
        };
        self.webpush = Some(u16::try_from(messages.len()).unwrap_or(u16::MAX));
        self.peer
            .sent_page(messages.iter().map(|message| message.id.clone()).collect());
        if messages.is_empty() {
            return Ok(false);
        }
        self.arm_retry();
        for message in &messages {
            self.send(webpush::notification(message)).await?;
            self.app.metrics.device_webpush.notifications.inc();
        }
        Ok(true)
    }

    /// Delivers what endpoint requests queued for this device, one frame per update.
    async fn deliver_mail(&mut self) -> Step {
        let mail = self.peer.take();
        if mail.replaced {
            return Err(End::Replaced);
        }
        if mail.overflowed {
            return Err(End::TooSlow);
        }
        for (delivery, received) in mail.deliveries {
            // Each dialect's session takes its own deliveries; the other kind stays
            // stored for a hello in that dialect.
            match (delivery, self.webpush) {
                (Delivery::Update(channel, update), None) => {
                    self.send_live(&channel, &update).await?
                }
                (Delivery::Message(message), Some(unacked)) => {
                    if message.is_expired(unix_now()) {
                        continue;
                    }
                    self.webpush = Some(unacked.saturating_add(1));
                    self.arm_retry();
                    self.send(webpush::notification(&message)).await?;
                    self.app.metrics.device_webpush.notifications.inc();
                }
                _ => continue,
            }
            let waited = received.elapsed().as_secs_f64();
            self.app.metrics.delivery_seconds.observe(waited);
        }
        Ok(())
    }

    async fn send_live(&mut self, channel: &ChannelId, update: &Update) -> Step {
        let entry = UpdateEntry {
            channel_id: channel.as_str(),
            version: update.version,
            data: update.data.as_deref(),
        };
        let text = protocol::to_text(&Notification::new(vec![entry], &[]));
        self.arm_retry();
        self.send(text).await
    }

    /// Closes the session (see [`Session::close`]) and logs its one line.
    async fn finish(self, end: End) {
        let span = self.span();
        let (app, started, messages) = (Arc::clone(&self.app), self.started, self.messages);
        self.close(end).instrument(span.clone()).await;
        let duration = app.registry.now().since(started);
        // One line per connection; never the uaid at info level.
        span.in_scope(|| {
            tracing::info!(
                duration_ms = duration.as_millis() as u64,
                messages,
                reason = ?end,
                "connection closed"
            )
        });
    }

    /// Leaves the registry and closes the socket with the code `end` calls for.
    async fn close(mut self, end: End) {
        let reason = format!("{end:?}").to_ascii_lowercase();
        self.app.metrics.closes.with_label_values(&[&reason]).inc();
        if let Some(uaid) = &self.uaid {
            // A newer socket of the same uaid on this node keeps the node record: only
            // the session that still held the uaid here clears it.
            if self.app.registry.release(uaid, &self.peer)
                && let Some(cluster) = &self.app.cluster
            {
                let registry = &self.app.registry;
                let still_here = || registry.get(uaid).is_some();
                cluster.forget(&*self.app.store, uaid, still_here).await;
            }
        }
        if let Some(frame) = end.close_frame() {
            let closing = async {
                // Send our close frame, then read until the device answers with its own.
                if self.socket.close(Some(frame)).await.is_ok() {
                    while let Some(Ok(_)) = self.socket.next().await {}
                }
            };
            let _ = timeout(CLOSE_TIMEOUT, closing).await;
        }
    }
}

/// The refusal of a command beyond the socket's allowance (docs/protocol.md: 401, the
/// command's identifying field echoed).
fn too_many_commands(command: &Command) -> ErrorFrame {
    let error = ErrorFrame::new(401, "too many commands").for_type(command.name());
    let echo = match command {
        Command::Hello {
            uaid: Some(uaid), ..
        } => Some(("uaid", Value::String(uaid.clone()))),
        Command::Register { channel_id } | Command::Unregister { channel_id } => {
            Some(("channelID", Value::String(channel_id.clone())))
        }
        Command::Ack {
            sent_updates: Some(updates),
            ..
        } => Some(("updates", updates.clone())),
        _ => None,
    };
    match echo {
        Some((key, value)) => error.echo(key, value),
        None => error,
    }
}

/// The refusal of a WebPush command beyond the socket's allowance, as
/// [`too_many_commands`].
fn webpush_too_many_commands(command: &webpush::Command) -> ErrorFrame {
    let error = ErrorFrame::new(401, "too many commands").for_type(command.name());
    match command {
        webpush::Command::Register { channel_id, .. }
        | webpush::Command::Unregister { channel_id } => {
            error.echo("channelID", Value::String(channel_id.clone()))
        }
        webpush::Command::Ack { sent_updates, .. } => error.echo("updates", sent_updates.clone()),
        _ => error,
    }
}

/// The acks of one frame, each channel once.
#[derive(Debug, PartialEq, Eq)]
struct Acks {
    /// Each channel at the greatest version acked.
    updates: Vec<(ChannelId, u64)>,
    expired: Vec<ChannelId>,
}

/// The acks of one frame with each channel once; `None` when `updates` or `expired`
/// names more than `max` distinct channels.
fn distinct_acks(
    mut updates: Vec<(String, u64)>,
    mut expired: Vec<String>,
    max: usize,
) -> Option<Acks> {
    // By channel, the greatest version first, so that dedup keeps it.
    updates.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    updates.dedup_by(|later, first| later.0 == first.0);
    expired.sort_unstable();
    expired.dedup();
    if updates.len() > max || expired.len() > max {
        return None;
    }
    let updates = updates
        .into_iter()
        .map(|(channel, version)| (ChannelId::new(channel), version))
        .collect();
    let expired = expired.into_iter().map(ChannelId::new).collect();
    Some(Acks { updates, expired })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_pings_after_silence_and_gives_up_without_answer() {
        let start = Stamp::from_millis(1_000);
        let (interval, wait) = (Duration::from_secs(60), Duration::from_secs(10));
        let config = KeepaliveConfig {
            interval,
            timeout: wait,
        };
        let mut keepalive = KeepaliveTimer::new(start, config);
        assert_eq!(keepalive.due(config), Some(start + interval));
        assert_eq!(
            keepalive.check(start + Duration::from_secs(59), config),
            Keepalive::Wait
        );
        keepalive.heard(start + Duration::from_secs(30));
        assert_eq!(keepalive.check(start + interval, config), Keepalive::Wait);
        assert_eq!(keepalive.due(config), Some(start + Duration::from_secs(90)));
        assert_eq!(
            keepalive.check(start + Duration::from_secs(90), config),
            Keepalive::Ping
        );
        assert_eq!(
            keepalive.due(config),
            Some(start + Duration::from_secs(100))
        );
        assert_eq!(
            keepalive.check(start + Duration::from_secs(100), config),
            Keepalive::Dead
        );
    }

    #[test]
    fn keepalive_answered_pings_keep_the_peer() {
        let start = Stamp::from_millis(1_000);
        let config = KeepaliveConfig {
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        };
        let mut keepalive = KeepaliveTimer::new(start, config);
        assert_eq!(
            keepalive.check(start + Duration::from_secs(60), config),
            Keepalive::Ping
        );
        keepalive.heard(start + Duration::from_secs(61));
        assert_eq!(
            keepalive.check(start + Duration::from_secs(70), config),
            Keepalive::Wait
        );
        assert_eq!(
            keepalive.due(config),
            Some(start + Duration::from_secs(121))
        );
    }

    #[test]
    fn keepalive_zero_interval_is_off() {
        let start = Stamp::from_millis(1_000);
        let config = KeepaliveConfig {
            interval: Duration::ZERO,
            timeout: Duration::from_secs(10),
        };
        let mut keepalive = KeepaliveTimer::new(start, config);
        assert_eq!(keepalive.due(config), None);
        assert_eq!(
            keepalive.check(start + Duration::from_secs(3600), config),
            Keepalive::Wait
        );
    }

    #[test]
    fn distinct_acks_keep_each_channel_once_at_its_greatest_version() {
        let updates = vec![
            ("b".to_owned(), 3),
            ("a".to_owned(), 1),
            ("b".to_owned(), 9),
            ("a".to_owned(), 4),
            ("b".to_owned(), 2),
        ];
        let expired = vec!["x".to_owned(), "y".to_owned(), "x".to_owned()];
        let Acks { updates, expired } = distinct_acks(updates, expired, 2).unwrap();
        assert_eq!(
            updates,
            vec![(ChannelId::new("a"), 4), (ChannelId::new("b"), 9)]
        );
        assert_eq!(expired, vec![ChannelId::new("x"), ChannelId::new("y")]);
    }

    #[test]
    fn distinct_acks_refuse_more_channels_than_max() {
        let many = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        let repeated: Vec<(String, u64)> = (0..1000).map(|i| (format!("c{}", i % 3), i)).collect();
        assert!(distinct_acks(repeated, many(3), 3).is_some());
        let updates = many(4).into_iter().map(|c| (c, 1)).collect();
        assert!(distinct_acks(updates, Vec::new(), 3).is_none());
        assert!(distinct_acks(Vec::new(), many(4), 3).is_none());
        assert!(distinct_acks(Vec::new(), Vec::new(), 0).is_some());
    }
}
