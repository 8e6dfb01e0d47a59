//! What every request and session of a running server shares.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

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

    /// How often the session `spread` (its id) records its connected device as seen
    /// again; see [`touch_interval`]. `None` without retention, when nothing is
    /// recorded.
    pub fn touch_interval(&self, spread: u64) -> Option<Duration> {
        touch_interval(self.device_ttl, spread)
    }

    /// When an update received now expires.
    pub fn expires_at(&self, now: u64) -> u64 {
        now.saturating_add(self.protocol.message_ttl.as_secs())
    }
}

/// How often a connected device is recorded as seen again with a device TTL of `ttl`,
/// so that retention never forgets a device that stays connected: between a quarter and
/// a half of `ttl`, by `spread` (any number that differs from session to session). The
/// sessions of a reconnect storm, all connected within seconds of each other, then do
/// not touch the store all at once for ever after. `None` when `ttl` is zero.
pub fn touch_interval(ttl: Duration, spread: u64) -> Option<Duration> {
    if ttl.is_zero() {
        return None;
    }
    let step = u32::try_from(spread % 256).unwrap_or(0);
    let early = (ttl / 4)
        .checked_mul(step)
        .map_or(Duration::ZERO, |d| d / 256);
    Some(ttl / 2 - early)
}

pub use simplepush_store::unix_now;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_devices_are_touched_between_a_quarter_and_half_of_the_ttl() {
        let ttl = Duration::from_secs(2);
        assert_eq!(touch_interval(Duration::ZERO, 7), None, "no retention");
        assert_eq!(touch_interval(ttl, 0), Some(Duration::from_secs(1)));
        assert_eq!(touch_interval(ttl, 256), Some(Duration::from_secs(1)));
        assert_eq!(touch_interval(ttl, 128), Some(Duration::from_millis(750)));
        let earliest = touch_interval(ttl, 255).unwrap();
        assert!(
            earliest > ttl / 4 && earliest < Duration::from_millis(505),
            "{earliest:?}"
        );
        let spread: std::collections::HashSet<_> =
            (0..1000).filter_map(|id| touch_interval(ttl, id)).collect();
        assert_eq!(spread.len(), 256, "sessions spread over 256 phases");
        // A huge TTL neither overflows nor goes below a quarter.
        let huge = Duration::MAX;
        assert!(touch_interval(huge, 255).unwrap() >= huge / 4);
    }
}
