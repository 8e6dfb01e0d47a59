//! Retention (`[store] device_ttl`): a background task that removes the devices not seen
//! for a device TTL and the expired WebPush messages still on disk, in short bounded
//! steps so that PUTs and hellos are never held up (docs/operations.md "Retention").
//! Sessions record their devices as seen (`Store::touch`); this task only sweeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use simplepush_store::{Store, StoreError, Swept};
use tokio_util::sync::CancellationToken;

use crate::app::unix_now;
use crate::config::Config;
use crate::ops::metrics::{Metrics, REMOVED_DEVICES, REMOVED_MESSAGES};

/// The most devices, and separately the most expired messages, one store step removes:
/// a step then takes milliseconds, and the store's other callers wait for it no longer.
pub const BATCH: usize = 256;

/// The pause between two steps of a round: the store's writer and the runtime serve
/// whatever queued behind the step before the next one starts.
const PAUSE: Duration = Duration::from_millis(5);

/// Rounds come every eighth of the TTL, but never more often than this...
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// ...nor less often than this: with the default 60-day TTL, a round a minute, which
/// costs one indexed look-up when there is nothing to remove.
const MAX_PERIOD: Duration = Duration::from_secs(60);

/// How often retention looks for something to remove with this TTL: an eighth of it,
/// within 100 ms and a minute. A device is then removed at most `ttl` + 1 s (the
/// store counts whole seconds) + one period after it was last seen.
pub fn period(ttl: Duration) -> Duration {
    (ttl / 8).clamp(MIN_PERIOD, MAX_PERIOD)
}

/// `ttl` in whole seconds, rounded up: the store keeps last-seen times in seconds, and
/// a device must never go early.
fn whole_seconds(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// Why `[store] device_ttl` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "[store] device_ttl must be \"0\" (keep every device) or at least \"1s\" \
     (last-seen times are whole seconds): {0:?} given"
)]
pub struct TtlTooShort(pub Duration);

/// Checks `[store] device_ttl`, and warns when it is shorter than what a device may
/// have stored: retention then removes updates and messages whose own TTL has not run
/// out, with their device. That is the rule (a device not seen is gone, whatever it
/// holds), but rarely what an operator meant.
pub fn check(config: &Config) -> Result<(), TtlTooShort> {
    let ttl = config.store.device_ttl;
    if ttl.is_zero() {
        return Ok(());
    }
    if ttl < Duration::from_secs(1) {
        return Err(TtlTooShort(ttl));
    }
    let protocol = &config.protocol;
    let longest = protocol.message_ttl.max(protocol.max_ttl);
    if ttl < longest {
        tracing::warn!(
            device_ttl = ?ttl,
            message_ttl = ?protocol.message_ttl,
            max_ttl = ?protocol.max_ttl,
            "device_ttl is shorter than message_ttl or max_ttl: a device not seen for \
             device_ttl is removed with its pending updates and messages, expired or not"
        );
    }
    Ok(())
}

/// The retention task of one server.
pub struct Retention {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    ttl: Duration,
}

impl Retention {
    /// Retention on `store` with a device TTL of `ttl` (not zero), counted in `metrics`.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, ttl: Duration) -> Retention {
        Retention {
            store,
            metrics,
            ttl,
        }
    }

    /// Runs a round every [`period`] until `shutdown`; a round in progress stops after
    /// its current step. A failed round is logged once (and counted by the store's
    /// metrics, `store_errors_total{op="sweep"}`); the next round tries again.
    pub async fn run(self, shutdown: CancellationToken) {
        let period = period(self.ttl);
        tracing::debug!(device_ttl = ?self.ttl, ?period, "retention started");
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.round(&shutdown).await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("retention sweeps work again");
                }
                Ok(_) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "retention sweep failed (retrying every round)");
                }
                Err(error) => tracing::debug!(%error, "retention sweep failed"),
            }
        }
    }

    /// One round: store steps of at most [`BATCH`] removals each, a short pause between
    /// them, while the store says there is more (or until `shutdown`). Answers what it
    /// removed, or the error that stopped it (what earlier steps removed is counted).
    pub async fn round(&self, shutdown: &CancellationToken) -> Result<Swept, StoreError> {
        let started = Instant::now();
        let now = unix_now();
        let cutoff = now.saturating_sub(whole_seconds(self.ttl));
        let mut total = Swept::default();
        let result = loop {
            let step = match self.store.sweep(cutoff, now, BATCH).await {
                Ok(step) => step,
                Err(error) => break Err(error),
            };
            total.devices += step.devices;
            total.messages += step.messages;
            let removed = &self.metrics.retention_removed;
            removed
                .with_label_values(&[REMOVED_DEVICES])
                .inc_by(step.devices);
            removed
                .with_label_values(&[REMOVED_MESSAGES])
                .inc_by(step.messages);
            if !step.more || shutdown.is_cancelled() {
                break Ok(());
            }
            tokio::time::sleep(PAUSE).await;
        };
        let took = started.elapsed();
        self.metrics
            .retention_round_seconds
            .observe(took.as_secs_f64());
        if total.devices > 0 || total.messages > 0 {
            tracing::info!(
                devices = total.devices,
                messages = total.messages,
                duration_ms = took.as_millis() as u64,
                "retention removed devices not seen for device_ttl and expired messages"
            );
        }
        result.map(|()| total)
    }
}

#[cfg(test)]
mod tests {
    use simplepush_store::{ChannelId, Hook, Hooked, MemoryStore, Message, MessageId, Uaid};

    use super::*;
    use crate::ops::metrics::{Meter, MeteredStore};

    #[test]
    fn rounds_come_every_eighth_of_the_ttl_within_bounds() {
        assert_eq!(period(Duration::from_secs(2)), Duration::from_millis(250));
        assert_eq!(period(Duration::from_secs(1)), Duration::from_millis(125));
        assert_eq!(period(Duration::from_millis(400)), MIN_PERIOD);
        assert_eq!(period(Duration::from_secs(60 * 86_400)), MAX_PERIOD);
        assert_eq!(whole_seconds(Duration::from_millis(1_500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
    }

    #[test]
    fn a_ttl_under_a_second_is_refused_and_zero_turns_retention_off() {
        let mut config = Config::default();
        assert_eq!(check(&config), Ok(()), "the default");
        config.store.device_ttl = Duration::ZERO;
        assert_eq!(check(&config), Ok(()));
        config.store.device_ttl = Duration::from_millis(500);
        let error = check(&config).unwrap_err();
        assert!(error.to_string().contains("device_ttl"), "{error}");
        config.store.device_ttl = Duration::from_secs(2);
        assert_eq!(check(&config), Ok(()), "short, with a warning");
    }

    fn metered(store: Arc<dyn Store>) -> (Arc<dyn Store>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new("memory"));
        metrics.preset();
        (
            Arc::new(MeteredStore::new(store, Meter(metrics.clone()))),
            metrics,
        )
    }

    fn removed(metrics: &Metrics, what: &str) -> u64 {
        metrics.retention_removed.with_label_values(&[what]).get()
    }

    #[tokio::test]
    async fn a_round_removes_every_device_not_seen_in_batches_and_keeps_the_others() {
        let (store, metrics) = metered(Arc::new(MemoryStore::new()));
        let now = unix_now();
        let channel = ChannelId::from("c");
        let stale = BATCH * 2 + 3;
        for i in 0..stale {
            let uaid = Uaid::new(format!("old{i}"));
            store
                .register(&uaid, &channel, 10, now - 100)
                .await
                .unwrap();
        }
        let touched = Uaid::from("touched");
        store
            .register(&touched, &channel, 10, now - 100)
            .await
            .unwrap();
        store.touch(&touched, now).await.unwrap();
        let fresh = Uaid::from("fresh");
        store.register(&fresh, &channel, 10, now).await.unwrap();

        let retention = Retention::new(store.clone(), metrics.clone(), Duration::from_secs(10));
        let swept = retention.round(&CancellationToken::new()).await.unwrap();
        assert_eq!(swept.devices, stale as u64);
        assert!(!store.knows_uaid(&Uaid::from("old0")).await.unwrap());
        assert!(store.knows_uaid(&touched).await.unwrap());
        assert!(store.knows_uaid(&fresh).await.unwrap());
        assert_eq!(removed(&metrics, REMOVED_DEVICES), stale as u64);
        let steps = metrics
            .store_seconds
            .with_label_values(&["sweep"])
            .get_sample_count();
        assert_eq!(steps, 3, "{stale} devices in steps of {BATCH}");
        assert_eq!(metrics.retention_round_seconds.get_sample_count(), 1);

        let again = retention.round(&CancellationToken::new()).await.unwrap();
        assert_eq!((again.devices, again.messages), (0, 0));
        assert_eq!(removed(&metrics, REMOVED_DEVICES), stale as u64);
    }

    #[tokio::test]
    async fn a_round_removes_expired_messages_and_keeps_live_ones() {
        let (store, metrics) = metered(Arc::new(MemoryStore::new()));
        let now = unix_now();
        let (uaid, channel) = (Uaid::from("u"), ChannelId::from("c"));
        store.register(&uaid, &channel, 10, now).await.unwrap();
        for (id, expires_at) in [("gone", now - 1), ("live", now + 3600)] {
            let message = Message {
                id: MessageId::new(id),
                channel: channel.clone(),
                ttl: 60,
                expires_at,
                topic: None,
                urgency: Default::default(),
                payload: None,
            };
            store
                .put_message(&uaid, &message, 10, now - 10)
                .await
                .unwrap();
        }
        let retention = Retention::new(store.clone(), metrics.clone(), Duration::from_secs(60));
        let swept = retention.round(&CancellationToken::new()).await.unwrap();
        assert_eq!((swept.devices, swept.messages), (0, 1));
        assert_eq!(removed(&metrics, REMOVED_MESSAGES), 1);
        let left = store.messages(&uaid, now, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, MessageId::new("live"));
    }

    /// Fails the retention calls, as a store that cannot reach its storage; passes the
    /// others through.
    struct RetentionDown;

    impl Hook for RetentionDown {
        async fn around<T: Send>(
            &self,
            op: &'static str,
            call: impl Future<Output = Result<T, StoreError>> + Send,
        ) -> Result<T, StoreError> {
            match op {
                "touch" | "sweep" => Err(StoreError::Unavailable("down".into())),
                _ => call.await,
            }
        }
    }

    #[tokio::test]
    async fn a_failing_round_is_counted_and_the_task_carries_on_until_shutdown() {
        let (store, metrics) = metered(Arc::new(Hooked::new(
            Arc::new(MemoryStore::new()),
            RetentionDown,
        )));
        let ttl = Duration::from_secs(8);
        let retention = Retention::new(store.clone(), metrics.clone(), ttl);
        let error = retention.round(&CancellationToken::new()).await;
        assert!(
            matches!(error, Err(StoreError::Unavailable(_))),
            "{error:?}"
        );
        assert_eq!(metrics.store_errors.with_label_values(&["sweep"]).get(), 1);
        assert_eq!(metrics.retention_round_seconds.get_sample_count(), 1);

        // The task's first round comes at once; it fails, and the task waits for the
        // next one until shutdown stops it.
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(retention.run(shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.retention_round_seconds.get_sample_count() < 2 {
            assert!(Instant::now() < deadline, "no round");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!task.is_finished(), "a failed round does not end the task");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("retention stops at shutdown")
            .unwrap();
        assert_eq!(metrics.store_errors.with_label_values(&["sweep"]).get(), 2);
        assert_eq!(removed(&metrics, REMOVED_DEVICES), 0);
    }
}
