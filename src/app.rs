//! What every request and session of a running server shares.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use simplepush_store::{ChannelId, Store, Uaid};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app_server::token::TokenCodec;
use crate::cluster::Cluster;
use crate::config::ProtocolConfig;
use crate::device::registry::Registry;
use crate::ops::metrics::Metrics;
use crate::ops::overload::QueueDelay;

/// The state of one server: its store, its connected devices, its keys and settings.
pub struct App {
    /// Where channels and pending updates live.
    pub store: Arc<dyn Store>,
    /// Devices connected to this node.
    pub registry: Registry,
    /// Mints and opens endpoint tokens.
    pub tokens: TokenCodec,
    /// Protocol timers and limits.
    pub protocol: ProtocolConfig,
    /// Base of every pushEndpoint, without a trailing slash.
    pub endpoint_url: String,
    /// Whether the endpoint listener answers with CORS headers.
    pub cors: bool,
    /// Device sockets allowed at once; beyond that, upgrades get 503.
    pub max_connections: usize,
    /// The listeners' socket budgets, from the open-file limit.
    pub sockets: crate::listener::Sockets,
    /// Endpoint requests allowed in flight at once; beyond that, 503.
    pub inflight: Semaphore,
    /// The runtime's scheduling delay; endpoint requests get 503 while it is too long.
    pub queue_delay: Arc<QueueDelay>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Numbers HTTP requests for logs.
    pub request_ids: AtomicU64,
    /// What the server counts, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// This node's place in a cluster (memcache backend), if it is in one.
    pub cluster: Option<Cluster>,
    /// Websocket sessions, so shutdown can wait for them to close.
    pub sessions: TaskTracker,
    /// Retention (`[store] device_ttl`): devices not seen for this long are removed;
    /// zero: never.
    pub device_ttl: Duration,
}

impl App {
    /// The pushEndpoint URL of a channel.
    pub fn push_endpoint(&self, uaid: &Uaid, channel: &ChannelId) -> String {
        format!(
            "{}/update/{}",
            self.endpoint_url,
            self.tokens.encode(uaid, channel)
        )
    }

    /// How often a connected device is recorded as seen again, so that retention never
    /// forgets a device that stays connected: twice per `device_ttl`. `None` without
    /// retention, when nothing is recorded.
    pub fn touch_interval(&self) -> Option<Duration> {
        (!self.device_ttl.is_zero()).then(|| self.device_ttl / 2)
    }

    /// When an update received now expires.
    pub fn expires_at(&self, now: u64) -> u64 {
        now.saturating_add(self.protocol.message_ttl.as_secs())
    }
}

/// The current UNIX time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
