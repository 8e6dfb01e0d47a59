//! Cluster routing (PROTOCOL.md §7): nodes sharing a memcached pool record which node
//! holds each device, forward live updates to it over the router listener, and tell the
//! previous node to close a device's stale socket when it reconnects elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Buf;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use simplepush_store::{ChannelId, Store, StoreError, Uaid, Update};
use subtle::ConstantTimeEq;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::app::App;
use crate::endpoint::read_body;
use crate::error::{HttpError, json_response};

/// Time limit of one node-to-node request: a node that is down costs at most this.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// What this node last saw of a peer.
#[derive(Debug, Clone, Serialize)]
struct PeerHealth {
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// This node's place in a cluster.
#[derive(Debug)]
pub struct Cluster {
    /// How peers reach this node's router.
    me: String,
    secret: String,
    client: reqwest::Client,
    peers: Mutex<HashMap<String, PeerHealth>>,
}

impl Cluster {
    /// A cluster member reachable by peers at `me` (its router URL), sharing `secret`.
    pub fn new(me: String, secret: String) -> Cluster {
        let client = reqwest::Client::builder()
            .timeout(ROUTE_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Cluster {
            me: me.trim_end_matches('/').to_owned(),
            secret,
            client,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// This node's router URL.
    pub fn url(&self) -> &str {
        &self.me
    }

    /// Records that `uaid` is now connected here; the node it was on before (if another)
    /// is told to close its stale socket.
    pub async fn announce(&self, store: &dyn Store, uaid: &Uaid) -> Result<(), StoreError> {
        let previous = store.node(uaid).await?;
        store.set_node(uaid, &self.me).await?;
        if let Some(previous) = previous.filter(|node| *node != self.me) {
            let request = self.request(Method::DELETE, &previous, uaid);
            // The device is already served here: the old node's answer changes nothing.
            tokio::spawn(async move {
                match request.send().await {
                    Ok(response) if response.status().is_success() => {}
                    Ok(response) => tracing::debug!(
                        status = %response.status(),
                        "the previous node did not close the stale socket"
                    ),
                    Err(error) => {
                        tracing::debug!(%error, "telling the previous node to close failed")
                    }
                }
            });
        }
        Ok(())
    }

    /// Clears the record of `uaid` if it still names this node (the device left).
    pub async fn forget(&self, store: &dyn Store, uaid: &Uaid) {
        if let Err(error) = store.clear_node(uaid, &self.me).await {
            tracing::debug!(%error, "clearing the node record failed");
        }
    }

    /// Forwards an update to the node holding `uaid`. Answers whether it was delivered
    /// live there; any failure means "stored, not delivered".
    pub async fn route(
        &self,
        store: &dyn Store,
        uaid: &Uaid,
        channel: &ChannelId,
        update: &Update,
    ) -> bool {
        let node = match store.node(uaid).await {
            Ok(Some(node)) if node != self.me => node,
            Ok(_) => return false,
            Err(error) => {
                tracing::debug!(%error, "looking up the device's node failed");
                return false;
            }
        };
        let body = Routed {
            channel_id: channel.as_str().to_owned(),
            version: update.version,
            data: update.data.clone(),
            expires_at: update.expires_at,
        };
        let request = self
            .request(Method::PUT, &node, uaid)
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default());
        let outcome = request.send().await;
        let (delivered, health) = match outcome {
            Ok(response) => (
                response.status() == StatusCode::OK,
                PeerHealth {
                    reachable: true,
                    error: None,
                },
            ),
            Err(error) => (
                false,
                PeerHealth {
                    reachable: false,
                    error: Some(error.to_string()),
                },
            ),
        };
        self.lock_peers().insert(node, health);
        delivered
    }

    fn request(&self, method: Method, node: &str, uaid: &Uaid) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{node}/route/{uaid}"))
            .bearer_auth(&self.secret)
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerHealth>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Peers this node has talked to, and whether they answered.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.me,
            "peers": self.lock_peers().clone(),
        })
    }

    /// Whether a router request carries the shared secret.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let expected = format!("Bearer {}", self.secret);
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .is_some_and(|got| bool::from(got.ct_eq(expected.as_bytes())))
    }
}

/// The router listener: `PUT /route/{uaid}` delivers an update to a device connected
/// here (200, or 404 when it is not), `DELETE /route/{uaid}` closes its socket (4000;
/// 409 when the store says the device is connected to this node again).
/// The secret is checked before any body is read.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("route" / String)
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |uaid: String, method, headers, body| {
            let app = app.clone();
            async move {
                handle(&app, Uaid::new(uaid), method, &headers, Box::pin(body))
                    .await
                    .unwrap_or_else(HttpError::into_response)
            }
        })
}

/// Largest routed update: a version and at most `max_data_bytes` of data, JSON-escaped.
const MAX_ROUTED_BYTES: usize = 64 * 1024;

async fn handle<S, B>(
    app: &App,
    uaid: Uaid,
    method: Method,
    headers: &HeaderMap,
    body: S,
) -> Result<Response, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let Some(cluster) = &app.cluster else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "not a cluster node"));
    };
    if !cluster.authorized(headers) {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "wrong or missing router secret",
        ));
    }
    let not_here = || HttpError::new(StatusCode::NOT_FOUND, "device not connected here");
    match method {
        Method::PUT => {
            let body = read_body(body, MAX_ROUTED_BYTES).await?;
            let routed: Routed = serde_json::from_slice(&body).map_err(|e| {
                HttpError::new(StatusCode::BAD_REQUEST, format!("bad routed update: {e}"))
            })?;
            let update = Update {
                version: routed.version,
                data: routed.data,
                expires_at: routed.expires_at,
            };
            let peer = app.registry.get(&uaid).ok_or_else(not_here)?;
            let channel = ChannelId::new(routed.channel_id);
            if !peer.deliver(channel, update, tokio::time::Instant::now()) {
                return Err(not_here());
            }
        }
        Method::DELETE => {
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
        _ => {
            return Err(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "use PUT or DELETE",
            ));
        }
    }
    Ok(json_response(StatusCode::OK, &serde_json::json!({})))
}
