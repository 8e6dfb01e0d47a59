//! Cluster routing (docs/protocol.md): nodes sharing a memcached pool record which node
//! holds each device, forward live updates to it over the router listener, and tell the
//! previous node to close a device's stale socket when it reconnects elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Buf;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use simplepush_store::{ChannelId, Message, MessageId, Store, StoreError, Uaid, Update};
use url::Url;
use warp::http::{HeaderMap, Method, StatusCode, header};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::app::{App, unix_now};
use crate::app_server::endpoint::read_body;
use crate::app_server::webpush;
use crate::device::protocol::is_uuid_shaped;
use crate::device::registry::Delivery;
use crate::error::{HttpError, json_response};

mod peers;
mod signature;

pub use peers::Peers;
use signature::{Refusal, Signer};

/// Time limit of one node-to-node request: a node that is down costs at most this.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);

/// Peers remembered for `/realstatus/`; a poisoned store cannot grow the list beyond.
const MAX_PEER_HEALTH: usize = 1024;

/// An update forwarded to the node holding the device.
#[derive(Debug, Serialize, Deserialize)]
struct Routed {
    #[serde(rename = "channelID")]
    channel_id: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(rename = "expiresAt")]
    expires_at: u64,
}

/// A WebPush message forwarded to the node holding the device: the routed body is
/// `{"message": {...}}`, so it never parses as an update.
#[derive(Debug, Serialize, Deserialize)]
struct RoutedMessage {
    #[serde(rename = "channelID")]
    channel_id: String,
    id: String,
    ttl: u64,
    #[serde(rename = "expiresAt")]
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    urgency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crypto_key: Option<String>,
    /// The body, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

impl RoutedMessage {
    fn new(message: &Message) -> RoutedMessage {
        let payload = message.payload.as_ref();
        RoutedMessage {
            channel_id: message.channel.as_str().to_owned(),
            id: message.id.as_str().to_owned(),
            ttl: message.ttl,
            expires_at: message.expires_at,
            topic: message.topic.clone(),
            urgency: message.urgency.as_str().to_owned(),
            encoding: payload.map(|p| p.encoding.clone()),
            encryption: payload.and_then(|p| p.encryption.clone()),
            crypto_key: payload.and_then(|p| p.crypto_key.clone()),
            body: payload.map(|p| URL_SAFE_NO_PAD.encode(&p.body)),
        }
    }
}

/// What this node last saw of a peer: never a URL with a uaid, only what kind of
/// failure it was.
#[derive(Debug, Clone, Serialize)]
struct PeerHealth {
    reachable: bool,
    /// `connect`, `timeout`, `request` (unreachable); `unauthorized` (secret or clocks
    /// differ), `status` (another unexpected answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// The outcome of forwarding an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Delivered live on the device's node.
    Delivered,
    /// Not delivered (no other node holds the device, or it failed): stored only.
    Stored,
    /// The node record named a URL outside `[router] peers`: not contacted.
    Refused,
}

impl Route {
    /// Whether the device got the update live.
    pub fn delivered(self) -> bool {
        self == Route::Delivered
    }

    /// The `result` label of `routed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Route::Delivered => "hit",
            Route::Stored => "miss",
            Route::Refused => "refused",
        }
    }
}

/// This node's place in a cluster.
#[derive(Debug)]
pub struct Cluster {
    /// How peers reach this node's router.
    me: String,
    signer: Signer,
    peers: Peers,
    client: reqwest::Client,
    health: Mutex<HashMap<String, PeerHealth>>,
}

impl Cluster {
    /// A cluster member reachable by peers at `me` (its router URL), signing with
    /// `secret`, contacting only router URLs within `peers`.
    pub fn new(me: String, secret: &str, peers: Peers) -> Cluster {
        let client = reqwest::Client::builder()
            .timeout(ROUTE_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(90))
            // Router traffic goes straight to the peer: never through a proxy from the
            // environment, never on to wherever a redirect points.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Cluster {
            me: me.trim_end_matches('/').to_owned(),
            signer: Signer::new(secret),
            peers,
            client,
            health: Mutex::new(HashMap::new()),
        }
    }

    /// This node's router URL.
    pub fn url(&self) -> &str {
        &self.me
    }

    /// Whether peers configured like this node would contact it.
    pub fn admits_itself(&self) -> bool {
        self.peers.admit(&self.me).is_some()
    }

    /// Records that `uaid` is now connected here; the node it was on before (if another)
    /// is told to close its stale socket.
    pub async fn announce(&self, store: &dyn Store, uaid: &Uaid) -> Result<(), StoreError> {
        let previous = store.node(uaid).await?;
        store.set_node(uaid, &self.me).await?;
        if let Some(previous) = previous.filter(|node| *node != self.me) {
            let Some((_, request)) = self.request(Method::DELETE, &previous, uaid, Vec::new())
            else {
                return Ok(());
            };
            // The device is already served here: the old node's answer changes nothing.
            tokio::spawn(async move {
                match request.send().await {
                    Ok(response) if response.status().is_success() => {}
                    Ok(response) => tracing::debug!(
                        status = %response.status(),
                        "the previous node did not close the stale socket"
                    ),
                    Err(error) => {
                        let error = error.without_url();
                        tracing::debug!(%error, "telling the previous node to close failed")
                    }
                }
            });
        }
        Ok(())
    }

    /// Clears the record of `uaid` if it still names this node (the device left).
    ///
    /// `still_here` is asked once the record is cleared: a newer session of the device
    /// on this node that recorded itself while the clear was on its way would have lost
    /// its record, so it is written again.
    pub async fn forget(&self, store: &dyn Store, uaid: &Uaid, still_here: impl Fn() -> bool) {
        match store.clear_node(uaid, &self.me).await {
            Ok(true) if still_here() => {
                if let Err(error) = store.set_node(uaid, &self.me).await {
                    tracing::debug!(%error, "recording the node again failed");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "clearing the node record failed"),
        }
    }

    /// Forwards an update to the node holding `uaid`; any failure means "stored, not
    /// delivered".
    pub async fn route(
        &self,
        store: &dyn Store,
        uaid: &Uaid,
        channel: &ChannelId,
        update: &Update,
    ) -> Route {
        let body = Routed {
            channel_id: channel.as_str().to_owned(),
            version: update.version,
            data: update.data.clone(),
            expires_at: update.expires_at,
        };
        self.forward(store, uaid, serde_json::to_vec(&body).unwrap_or_default())
            .await
    }

    /// Forwards a WebPush message to the node holding `uaid`, as [`Cluster::route`]
    /// does an update.
    pub async fn route_message(&self, store: &dyn Store, uaid: &Uaid, message: &Message) -> Route {
        let body = serde_json::json!({ "message": RoutedMessage::new(message) });
        self.forward(store, uaid, serde_json::to_vec(&body).unwrap_or_default())
            .await
    }

    /// Sends a routed `body` to the node holding `uaid`.
    async fn forward(&self, store: &dyn Store, uaid: &Uaid, body: Vec<u8>) -> Route {
        let node = match store.node(uaid).await {
            Ok(Some(node)) if node != self.me => node,
            Ok(_) => return Route::Stored,
            Err(error) => {
                tracing::debug!(%error, "looking up the device's node failed");
                return Route::Stored;
            }
        };
        let Some((origin, request)) = self.request(Method::PUT, &node, uaid, body) else {
            return Route::Refused;
        };
        let request = request.header(header::CONTENT_TYPE, "application/json");
        let (route, health) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let error = match status {
                    StatusCode::OK | StatusCode::NOT_FOUND => None,
                    StatusCode::UNAUTHORIZED => Some("unauthorized"),
                    _ => Some("status"),
                };
                if error.is_some() {
                    tracing::debug!(%status, "the device's node refused a routed update");
                }
                let route = if status == StatusCode::OK {
                    Route::Delivered
                } else {
                    Route::Stored
                };
                (
                    route,
                    PeerHealth {
                        reachable: true,
                        error,
                    },
                )
            }
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timeout"
                } else if error.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                let error = error.without_url();
                tracing::debug!(%error, "routing to the device's node failed");
                (
                    Route::Stored,
                    PeerHealth {
                        reachable: false,
                        error: Some(kind),
                    },
                )
            }
        };
        let mut peers = self.lock_health();
        if peers.len() < MAX_PEER_HEALTH || peers.contains_key(&origin) {
            peers.insert(origin, health);
        }
        route
    }

    /// A signed request for `/route/{uaid}` on `node`, with the node's origin; `None`
    /// (and not contacted) when `node` is not a router URL within the peers.
    fn request(
        &self,
        method: Method,
        node: &str,
        uaid: &Uaid,
        body: Vec<u8>,
    ) -> Option<(String, reqwest::RequestBuilder)> {
        let Some(base) = self.peers.admit(node) else {
            tracing::debug!("a node record names a router outside [router] peers: not contacted");
            return None;
        };
        let mut url: Url = base.clone();
        url.path_segments_mut()
            .ok()?
            .clear()
            .push("route")
            .push(uaid.as_str());
        let signature = self.signer.sign(&method, url.path(), &body, unix_now());
        let mut request = self.client.request(method, url).body(body);
        for (name, value) in signature {
            request = request.header(name, value);
        }
        Some((base.origin().ascii_serialization(), request))
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerHealth>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Peers this node has talked to, whether they answered, and what kind of failure
    /// the last one was.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.me,
            "peers": self.lock_health().clone(),
        })
    }
}

/// The router listener: `PUT /route/{uaid}` delivers an update to a device connected
/// here (200, or 404 when it is not), `DELETE /route/{uaid}` closes its socket (4000;
/// 409 when the store says the device is connected to this node again). Every request
/// must be signed (see `signature`); the headers and the timestamp are checked before
/// the body is read, the MAC over it after.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("route" / String)
        .and(warp::path::full())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |uaid: String, path: FullPath, method, headers, body| {
            let app = app.clone();
            async move {
                let request = Request {
                    uaid: Uaid::new(uaid),
                    path,
                    method,
                    headers,
                };
                handle(&app, request, Box::pin(body))
                    .await
                    .unwrap_or_else(HttpError::into_response)
            }
        })
}

/// Smallest limit of a routed update's body.
const MAX_ROUTED_BYTES: usize = 64 * 1024;

/// Largest routed body: `max_data_bytes` of data, JSON-escaped (up to 6 bytes per
/// byte), and the other fields.
fn body_limit(max_data_bytes: usize) -> usize {
    max_data_bytes
        .saturating_mul(6)
        .saturating_add(1024)
        .max(MAX_ROUTED_BYTES)
}

/// What a router request is, apart from its body.
struct Request {
    uaid: Uaid,
    path: FullPath,
    method: Method,
    headers: HeaderMap,
}

async fn handle<S, B>(app: &App, request: Request, body: S) -> Result<Response, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let Some(cluster) = &app.cluster else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "not a cluster node"));
    };
    let Request {
        uaid,
        path,
        method,
        headers,
    } = request;
    let unauthorized = |reason: &'static str| HttpError::new(StatusCode::UNAUTHORIZED, reason);
    let now = unix_now();
    let signed = Signer::read(&headers, now).map_err(unauthorized)?;
    if method != Method::PUT && method != Method::DELETE {
        return Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT or DELETE",
        ));
    }
    let body = read_body(body, body_limit(app.protocol.max_data_bytes)).await?;
    match cluster
        .signer
        .accept(&signed, &method, path.as_str(), &body, now)
    {
        Ok(()) => {}
        Err(Refusal::Invalid(reason)) => return Err(unauthorized(reason)),
        Err(Refusal::Full) => {
            return Err(HttpError::unavailable(
                "too many recent router requests; retry later",
            ));
        }
    }
    let not_here = || HttpError::new(StatusCode::NOT_FOUND, "device not connected here");
    if method == Method::PUT {
        let delivered = match routed_delivery(&body, app.protocol.max_data_bytes)? {
            Delivery::Update(channel, update) => {
                let peer = app.registry.get(&uaid).ok_or_else(not_here)?;
                peer.deliver(channel, update, tokio::time::Instant::now())
            }
            Delivery::Message(message) => {
                let peer = app.registry.get(&uaid).ok_or_else(not_here)?;
                peer.deliver_message(*message, tokio::time::Instant::now())
            }
        };
        if !delivered {
            return Err(not_here());
        }
    } else {
        let peer = app.registry.get(&uaid).ok_or_else(not_here)?;
        // A device that moved away and straight back is ours again: a late request
        // from the node it passed through must not close its new socket.
        if let Ok(Some(node)) = app.store.node(&uaid).await
            && node == cluster.me
        {
            return Err(HttpError::new(
                StatusCode::CONFLICT,
                "device is connected here again",
            ));
        }
        peer.replace();
    }
    Ok(json_response(StatusCode::OK, &serde_json::json!({})))
}

/// A routed body: an update, or `{"message": {...}}`.
fn routed_delivery(body: &[u8], max_data_bytes: usize) -> Result<Delivery, HttpError> {
    let bad = |reason: String| HttpError::new(StatusCode::BAD_REQUEST, reason);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("bad routed body: {e}")))?;
    match value.get("message") {
        Some(message) => {
            let routed = RoutedMessage::deserialize(message)
                .map_err(|e| bad(format!("bad routed message: {e}")))?;
            Ok(Delivery::Message(Box::new(routed_message(
                routed,
                max_data_bytes,
            )?)))
        }
        None => {
            let (channel, update) = routed_update(body, max_data_bytes)?;
            Ok(Delivery::Update(channel, update))
        }
    }
}

/// A routed message checked like an app server's push: a UUID channelID, a message id
/// as this server mints them, a valid topic, urgency and encoding, a body within
/// `max_data_bytes`; 400 otherwise.
fn routed_message(routed: RoutedMessage, max_data_bytes: usize) -> Result<Message, HttpError> {
    let bad = |reason: &str| HttpError::new(StatusCode::BAD_REQUEST, reason.to_owned());
    if !is_uuid_shaped(&routed.channel_id) {
        return Err(bad("channelID must be a UUID"));
    }
    if routed.id.is_empty()
        || routed.id.len() > 64
        || !routed.id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad("message id must be 1..64 printable characters"));
    }
    let topic = webpush::parse_topic(routed.topic.as_deref())?;
    let urgency = webpush::parse_urgency(Some(&routed.urgency))?;
    let body = match &routed.body {
        Some(body) => URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("body must be base64url"))?,
        None => Vec::new(),
    };
    if body.len() > max_data_bytes {
        return Err(bad("body is over max_data_bytes"));
    }
    let payload = webpush::payload(
        body,
        routed.encoding.as_deref(),
        routed.encryption.as_deref(),
        routed.crypto_key.as_deref(),
    )?;
    Ok(Message {
        id: MessageId::new(routed.id),
        channel: ChannelId::new(routed.channel_id),
        ttl: routed.ttl,
        expires_at: routed.expires_at,
        topic,
        urgency,
        payload,
    })
}

/// A routed update checked like an app server's PUT: a UUID channelID, a version an
/// endpoint would accept, at most `max_data_bytes` of data; 400 otherwise.
fn routed_update(body: &[u8], max_data_bytes: usize) -> Result<(ChannelId, Update), HttpError> {
    let bad = |reason: String| HttpError::new(StatusCode::BAD_REQUEST, reason);
    let routed: Routed =
        serde_json::from_slice(body).map_err(|e| bad(format!("bad routed update: {e}")))?;
    if !is_uuid_shaped(&routed.channel_id) {
        return Err(bad("channelID must be a UUID".to_owned()));
    }
    if routed.version > i64::MAX as u64 {
        return Err(bad("version is over 2^63-1".to_owned()));
    }
    if routed
        .data
        .as_ref()
        .is_some_and(|d| d.len() > max_data_bytes)
    {
        return Err(bad(format!("data is over {max_data_bytes} bytes")));
    }
    let update = Update {
        version: routed.version,
        data: routed.data,
        expires_at: routed.expires_at,
    };
    Ok((ChannelId::new(routed.channel_id), update))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_updates_are_checked_like_a_put() {
        let channel = "5a0fc5d5-3f0a-4f4c-9c5b-2e3c1a2b3c4d";
        let update = |fields: serde_json::Value| routed_update(fields.to_string().as_bytes(), 4);
        let good = update(
            serde_json::json!({"channelID": channel, "version": 1, "expiresAt": 9, "data": "abcd"}),
        );
        assert!(good.is_ok());
        for bad in [
            serde_json::json!({"channelID": "x", "version": 1, "expiresAt": 9}),
            serde_json::json!({"channelID": channel, "version": 1, "expiresAt": 9, "data": "abcde"}),
            serde_json::json!({"channelID": channel, "version": 9_223_372_036_854_775_808_u64, "expiresAt": 9}),
            serde_json::json!({"channelID": channel, "version": -1, "expiresAt": 9}),
        ] {
            let error = update(bad.clone()).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn routed_messages_round_trip_and_are_checked_like_a_push() {
        let message = Message {
            id: MessageId::from("0000019a2b3c4d5e0123456789abcdef"),
            channel: ChannelId::from("5a0fc5d5-3f0a-4f4c-9c5b-2e3c1a2b3c4d"),
            ttl: 60,
            expires_at: 1_800_000_060,
            topic: Some("news".into()),
            urgency: simplepush_store::Urgency::High,
            payload: Some(simplepush_store::Payload {
                encoding: "aesgcm".into(),
                encryption: Some("salt=a".into()),
                crypto_key: Some("dh=b".into()),
                body: vec![0, 255, 7],
            }),
        };
        let body = serde_json::json!({ "message": RoutedMessage::new(&message) }).to_string();
        match routed_delivery(body.as_bytes(), 4096) {
            Ok(Delivery::Message(routed)) => assert_eq!(*routed, message),
            other => panic!("{other:?}"),
        }
        let bare = Message {
            topic: None,
            payload: None,
            ..message.clone()
        };
        let body = serde_json::json!({ "message": RoutedMessage::new(&bare) }).to_string();
        match routed_delivery(body.as_bytes(), 4096) {
            Ok(Delivery::Message(routed)) => assert_eq!(*routed, bare),
            other => panic!("{other:?}"),
        }
        // An update body still routes as an update.
        let update = serde_json::json!({"channelID": message.channel.as_str(), "version": 1, "expiresAt": 9});
        assert!(matches!(
            routed_delivery(update.to_string().as_bytes(), 4096),
            Ok(Delivery::Update(..))
        ));
        let good = serde_json::to_value(RoutedMessage::new(&message)).unwrap();
        for (field, value) in [
            ("channelID", serde_json::json!("x")),
            ("id", serde_json::json!("")),
            ("id", serde_json::json!("has space")),
            ("topic", serde_json::json!("a/b")),
            ("urgency", serde_json::json!("urgent")),
            ("encoding", serde_json::json!("gzip")),
            ("encryption", serde_json::Value::Null),
            ("body", serde_json::json!("!!")),
            ("body", serde_json::json!(URL_SAFE_NO_PAD.encode([0u8; 5]))),
            ("ttl", serde_json::json!(-1)),
        ] {
            let mut bad = good.clone();
            bad[field] = value.clone();
            let body = serde_json::json!({ "message": bad }).to_string();
            let error = routed_delivery(body.as_bytes(), 4).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{field}: {value}");
        }
    }

    #[test]
    fn a_routed_body_fits_the_largest_data() {
        assert_eq!(body_limit(4096), MAX_ROUTED_BYTES);
        assert!(body_limit(100_000) > 600_000);
        assert_eq!(body_limit(usize::MAX), usize::MAX);
    }

    #[tokio::test]
    async fn forgetting_keeps_the_record_of_a_newer_session_here() {
        let store = simplepush_store::MemoryStore::new();
        let me = "http://127.0.0.1:3000";
        let cluster = Cluster::new(me.into(), "s", Peers::around([127, 0, 0, 1].into()));
        let uaid = Uaid::from("a1");

        // A newer session recorded itself before the older one's clear landed.
        store.set_node(&uaid, me).await.unwrap();
        cluster.forget(&store, &uaid, || true).await;
        assert_eq!(store.node(&uaid).await.unwrap().as_deref(), Some(me));

        // No session holds the device here: the record goes.
        cluster.forget(&store, &uaid, || false).await;
        assert_eq!(store.node(&uaid).await.unwrap(), None);

        // A record naming another node is never touched.
        store
            .set_node(&uaid, "http://127.0.0.2:3000")
            .await
            .unwrap();
        cluster.forget(&store, &uaid, || true).await;
        assert_eq!(
            store.node(&uaid).await.unwrap().as_deref(),
            Some("http://127.0.0.2:3000")
        );
    }
}
