//! Prometheus metrics (`GET /metrics` on the operator listener): what the server does,
//! labelled by store backend. [`MeteredStore`] times every store call.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use simplepush_store::{Hook, Hooked, StoreError};

/// Latency buckets in seconds, from 50 µs to 5 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The `op` label of every store call [`MeteredStore`] times, one per [`Store`] method
/// (the single `ack` and `ack_expired` count as `ack_many`). Preset, so that `/metrics`
/// and the dashboard list an operation before its first call.
pub const STORE_OPS: &[&str] = &[
    "knows_uaid",
    "registered",
    "register",
    "unregister",
    "put_update",
    "pending",
    "ack_many",
    "put_message",
    "messages",
    "ack_messages",
    "delete_message",
    "touch",
    "sweep",
    "drop_uaid",
    "set_node",
    "node",
    "clear_node",
    "check",
];

/// Duration buckets of a retention round, in seconds: from 1 ms (nothing to remove) to
/// 5 minutes (a large backlog, removed in many short steps).
const ROUND_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// `retention_removed_total` label: devices removed for not having been seen.
pub const REMOVED_DEVICES: &str = "devices";
/// `retention_removed_total` label: expired WebPush messages removed from storage.
pub const REMOVED_MESSAGES: &str = "messages";

/// `requests_shed_total` reason: the in-flight limit was reached.
pub const SHED_INFLIGHT: &str = "inflight";
/// `requests_shed_total` reason: the runtime's queue delay was over its limit.
pub const SHED_QUEUE_DELAY: &str = "queue_delay";

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    connections: IntGauge,
    /// Device commands handled, by `command` (hello, register, unregister, ack, ping).
    pub commands: IntCounterVec,
    /// Endpoint requests answered, by `status` (200 live, 202 stored, 4xx/5xx rejected).
    pub updates: IntCounterVec,
    /// Endpoint requests refused with 503 before any work, by `reason` (`inflight`: the
    /// in-flight limit; `queue_delay`: the runtime's scheduling delay).
    pub requests_shed: IntCounterVec,
    /// Notifications sent again because they were not acknowledged in time.
    pub retries: IntCounter,
    /// Updates forwarded to another node, by `result` (hit: delivered there, miss).
    pub routed: IntCounterVec,
    /// Store call latency, by `op`.
    pub store_seconds: HistogramVec,
    /// Failed store calls, by `op`.
    pub store_errors: IntCounterVec,
    /// From an endpoint request's arrival to its notification written to the device.
    pub delivery_seconds: Histogram,
    /// Closed device sockets, by `reason`.
    pub closes: IntCounterVec,
    /// WebPush pushes (`POST /wpush/...`) answered, by `status`.
    pub webpush_pushes: IntCounterVec,
    /// WebPush pushes accepted, by `encoding` (aes128gcm, aesgcm, none: no body).
    pub webpush_encodings: IntCounterVec,
    /// WebPush pushes refused for their VAPID credentials, by `reason`.
    pub vapid_failures: IntCounterVec,
    /// `DELETE /m/{id}` requests answered, by `status`.
    pub message_deletes: IntCounterVec,
    /// What WebPush device sessions do.
    pub device_webpush: DeviceWebPushMetrics,
    /// Removed by retention, by `what` ([`REMOVED_DEVICES`], [`REMOVED_MESSAGES`]).
    pub retention_removed: IntCounterVec,
    /// How long a retention round took, all its steps and the pauses between them.
    pub retention_round_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of metrics for a server on `backend`.
    pub fn new(backend: &str) -> Metrics {
        let labels = [("backend".to_owned(), backend.to_owned())]
            .into_iter()
            .collect();
        let registry =
            Registry::new_custom(Some("simplepush".to_owned()), Some(labels)).unwrap_or_default();
        let counter = |name: &str, help: &str, label: &str| {
            let metric = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            let _ = registry.register(Box::new(metric.clone()));
            metric
        };
        let commands = counter("commands_total", "Device commands handled.", "command");
        let updates = counter(
            "updates_total",
            "Endpoint requests answered, by status.",
            "status",
        );
        let requests_shed = counter(
            "requests_shed_total",
            "Endpoint requests refused with 503 before any work, by reason.",
            "reason",
        );
        let routed = counter(
            "routed_total",
            "Updates forwarded to another node.",
            "result",
        );
        let store_errors = counter("store_errors_total", "Failed store calls.", "op");
        let closes = counter(
            "closes_total",
            "Closed device sockets, by reason.",
            "reason",
        );
        let webpush_pushes = counter(
            "webpush_pushes_total",
            "WebPush pushes answered, by status.",
            "status",
        );
        let webpush_encodings = counter(
            "webpush_encodings_total",
            "WebPush pushes accepted, by Content-Encoding (none: no body).",
            "encoding",
        );
        let vapid_failures = counter(
            "vapid_failures_total",
            "WebPush pushes refused for their VAPID credentials, by reason.",
            "reason",
        );
        let message_deletes = counter(
            "message_deletes_total",
            "DELETE /m/{id} requests answered, by status.",
            "status",
        );
        let retention_removed = counter(
            "retention_removed_total",
            "Removed by retention: devices not seen for device_ttl, expired messages.",
            "what",
        );
        let connections = IntGauge::new("connections", "Device sockets open on this node.")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let retries = IntCounter::new(
            "retries_total",
            "Notifications re-sent after retry_interval.",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let store_seconds = HistogramVec::new(
            HistogramOpts::new("store_seconds", "Store call latency.").buckets(BUCKETS.to_vec()),
            &["op"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_seconds",
                "From an endpoint request to its notification written to the device.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let retention_round_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "retention_round_seconds",
                "How long a retention round took, its pauses included.",
            )
            .buckets(ROUND_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        for metric in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(retries.clone()),
            Box::new(store_seconds.clone()),
            Box::new(delivery_seconds.clone()),
            Box::new(retention_round_seconds.clone()),
        ] {
            let _ = registry.register(metric);
        }
        let device_webpush = DeviceWebPushMetrics::new(&registry);
        Metrics {
            registry,
            connections,
            commands,
            updates,
            requests_shed,
            retries,
            routed,
            store_seconds,
            store_errors,
            delivery_seconds,
            closes,
            webpush_pushes,
            webpush_encodings,
            vapid_failures,
            message_deletes,
            device_webpush,
            retention_removed,
            retention_round_seconds,
        }
    }

    /// The Prometheus text exposition, with `connections` sockets open now.
    pub fn render(&self, connections: usize) -> String {
        self.connections
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        let mut text = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8(text).unwrap_or_default()
    }

    /// Counts one of each labelled series, so they show (at 0) before their first event.
    pub fn preset(&self) {
        for command in ["hello", "register", "unregister", "ack", "ping"] {
            self.commands.with_label_values(&[command]);
        }
        for status in ["200", "202", "400", "404", "410", "413", "503"] {
            self.updates.with_label_values(&[status]);
        }
        for reason in [SHED_INFLIGHT, SHED_QUEUE_DELAY] {
            self.requests_shed.with_label_values(&[reason]);
        }
        for status in [
            "201", "400", "401", "403", "404", "410", "413", "429", "503",
        ] {
            self.webpush_pushes.with_label_values(&[status]);
        }
        for op in STORE_OPS {
            self.store_seconds.with_label_values(&[op]);
            self.store_errors.with_label_values(&[op]);
        }
        for encoding in ["aes128gcm", "aesgcm", "none"] {
            self.webpush_encodings.with_label_values(&[encoding]);
        }
        for status in ["204", "404"] {
            self.message_deletes.with_label_values(&[status]);
        }
        for what in [REMOVED_DEVICES, REMOVED_MESSAGES] {
            self.retention_removed.with_label_values(&[what]);
        }
        self.device_webpush.preset();
    }
}

/// What WebPush device sessions do (docs/protocol.md).
pub struct DeviceWebPushMetrics {
    /// Commands of WebPush sessions, by `command` (hello, register, unregister, ack,
    /// nack, ping, broadcast_subscribe, unknown).
    pub commands: IntCounterVec,
    /// Acknowledged messages, by the ack's `code` (100, 101, 102, other).
    pub acks: IntCounterVec,
    /// Nacks, by `code` (301, 302, 303, other).
    pub nacks: IntCounterVec,
    /// Notification frames written to WebPush devices (first sends and re-sends).
    pub notifications: IntCounter,
}

impl DeviceWebPushMetrics {
    fn new(registry: &Registry) -> DeviceWebPushMetrics {
        let counter = |name: &str, help: &str, label: &str| {
            let metric = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            let _ = registry.register(Box::new(metric.clone()));
            metric
        };
        let notifications = IntCounter::new(
            "webpush_notifications_total",
            "Notifications written to WebPush devices.",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = registry.register(Box::new(notifications.clone()));
        DeviceWebPushMetrics {
            commands: counter(
                "webpush_commands_total",
                "WebPush device commands handled.",
                "command",
            ),
            acks: counter(
                "webpush_acks_total",
                "Messages acknowledged by WebPush devices, by code.",
                "code",
            ),
            nacks: counter(
                "webpush_nacks_total",
                "Nacks from WebPush devices, by code.",
                "code",
            ),
            notifications,
        }
    }

    fn preset(&self) {
        for command in [
            "hello",
            "register",
            "unregister",
            "ack",
            "nack",
            "ping",
            "broadcast_subscribe",
            "unknown",
        ] {
            self.commands.with_label_values(&[command]);
        }
        for code in ["100", "101", "102", "other"] {
            self.acks.with_label_values(&[code]);
        }
        for code in ["301", "302", "303", "other"] {
            self.nacks.with_label_values(&[code]);
        }
    }
}

/// A [`Store`] that records the latency and failures of every call of another.
pub type MeteredStore = Hooked<Meter>;

/// The [`Hook`] of a [`MeteredStore`]: times each call into `simplepush_store_seconds`
/// and counts its failure in `simplepush_store_errors_total`, by operation.
pub struct Meter(pub Arc<Metrics>);

impl Hook for Meter {
    async fn around<T: Send>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.0
            .store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.0.store_errors.with_label_values(&[op]).inc();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simplepush_store::{ChannelId, MemoryStore, Message, MessageId, Store, Uaid, Update};

    #[tokio::test]
    async fn metered_store_counts_calls_and_renders_with_the_backend_label() {
        let metrics = Arc::new(Metrics::new("memory"));
        let store = MeteredStore::new(Arc::new(MemoryStore::new()), Meter(metrics.clone()));
        let uaid = Uaid::from("u");
        store
            .register(&uaid, &ChannelId::from("c"), 10, 1)
            .await
            .unwrap();
        store.pending(&uaid, 0).await.unwrap();
        metrics.commands.with_label_values(&["hello"]).inc();
        let text = metrics.render(3);
        assert!(
            text.contains(r#"simplepush_connections{backend="memory"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"simplepush_store_seconds_count{op="register",backend="memory"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"simplepush_commands_total{command="hello",backend="memory"} 1"#),
            "{text}"
        );
    }

    /// Every method of the trait, once, through a metered store: each op label it
    /// records is one [`STORE_OPS`] presets (or the dashboard would never list it).
    #[tokio::test]
    async fn store_ops_name_every_timed_store_call() {
        let metrics = Arc::new(Metrics::new("memory"));
        let store = MeteredStore::new(Arc::new(MemoryStore::new()), Meter(metrics.clone()));
        let (uaid, channel) = (Uaid::from("u"), ChannelId::from("c"));
        let update = Update {
            version: 1,
            data: None,
            expires_at: u64::MAX,
        };
        let message = Message {
            id: MessageId::new("m"),
            channel: channel.clone(),
            ttl: 60,
            expires_at: u64::MAX,
            topic: None,
            urgency: Default::default(),
            payload: None,
        };
        let _ = store.knows_uaid(&uaid).await;
        let _ = store.registered(&uaid, &channel).await;
        let _ = store.register(&uaid, &channel, 10, 1).await;
        let _ = store.put_update(&uaid, &channel, update, 0).await;
        let _ = store.pending(&uaid, 0).await;
        let _ = store.ack(&uaid, &channel, 1).await;
        let _ = store.put_message(&uaid, &message, 10, 0).await;
        let _ = store.messages(&uaid, 0, 10).await;
        let ids = std::slice::from_ref(&message.id);
        let _ = store.ack_messages(&uaid, ids, 0).await;
        let _ = store.delete_message(&uaid, &channel, &message.id, 0).await;
        let _ = store.set_node(&uaid, "n").await;
        let _ = store.node(&uaid).await;
        let _ = store.clear_node(&uaid, "n").await;
        let _ = store.touch(&uaid, 1).await;
        let _ = store.sweep(0, 0, 10).await;
        let _ = store.unregister(&uaid, &channel).await;
        let _ = store.touch(&uaid, 0).await;
        let _ = store.sweep(0, 0, 1).await;
        let _ = store.drop_uaid(&uaid).await;
        let _ = store.check().await;
        let text = metrics.render(0);
        let mut timed: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("simplepush_store_seconds_count{op=\""))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        timed.sort_unstable();
        let mut preset = STORE_OPS.to_vec();
        preset.sort_unstable();
        assert_eq!(timed, preset);

        // Preset, every op shows at zero before its first call.
        let fresh = Metrics::new("memory");
        fresh.preset();
        let text = fresh.render(0);
        for op in STORE_OPS {
            let line = format!(r#"simplepush_store_seconds_count{{op="{op}",backend="memory"}} 0"#);
            assert!(text.contains(&line), "no {line} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn metered_store_counts_a_batch_of_acks_as_one_call() {
        let metrics = Arc::new(Metrics::new("memory"));
        let store = MeteredStore::new(Arc::new(MemoryStore::new()), Meter(metrics.clone()));
        let uaid = Uaid::from("u");
        let updates: Vec<(ChannelId, u64)> = (0..50).map(|i| (ChannelId::from("c"), i)).collect();
        let expired = vec![ChannelId::from("c"); 50];
        store.ack_many(&uaid, &updates, &expired, 0).await.unwrap();
        store.ack(&uaid, &ChannelId::from("c"), 1).await.unwrap();
        let text = metrics.render(0);
        assert!(
            text.contains(r#"simplepush_store_seconds_count{op="ack_many",backend="memory"} 2"#),
            "{text}"
        );
    }
}
