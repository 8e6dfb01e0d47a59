//! Load shedding by queue delay: a sampler task measures how late the runtime runs a
//! timer (the scheduling delay every woken task, and so every request, waits through),
//! and the endpoint refuses PUTs with 503 while the smoothed delay is over
//! `[server] max_queue_delay`.
//!
//! An in-flight limit cannot see a CPU-bound server: its handler is fast, so requests
//! queue in the kernel and in the run queue, never in the handler. The time a task waits
//! to run can: shedding on it answers the excess with a cheap 503 instead of a slow 2xx.
//! The sampler sleeps while no endpoint request comes, so an idle server pays nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How often the sampler wakes while requests come: short enough to notice a backlog
/// within tens of milliseconds, long enough to cost little (100 wake-ups a second).
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(10);

/// Time constant of the smoothing: a stall weighs by how long it lasted, so one late
/// tick after a long stall counts at once, while a brief hiccup fades within ~50 ms.
const SMOOTHING: Duration = Duration::from_millis(50);

/// With no endpoint request for this long the sampler goes dormant (no timer at all)
/// until the next one.
const DORMANT_AFTER: Duration = Duration::from_secs(1);

/// Shedding warnings are logged at most this often (the state can flip many times a
/// second at the edge of overload).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The runtime's smoothed scheduling delay, and whether it is over the limit.
#[derive(Debug)]
pub struct QueueDelay {
    /// Over this, [`QueueDelay::overloaded`]; zero disables shedding and sampling.
    limit: Duration,
    /// The smoothed delay in microseconds; written by the sampler only.
    smoothed_micros: AtomicU64,
    /// Set when a request asks [`QueueDelay::overloaded`]; the sampler clears it once
    /// per [`DORMANT_AFTER`] and goes dormant when it was not set again meanwhile.
    demand: AtomicBool,
    /// Wakes a dormant sampler.
    wake: Notify,
}

impl QueueDelay {
    /// A monitor that reports overload above `limit` (`Duration::ZERO`: never). It
    /// measures nothing until [`QueueDelay::run`] is spawned.
    pub fn new(limit: Duration) -> QueueDelay {
        QueueDelay {
            limit,
            smoothed_micros: AtomicU64::new(0),
            demand: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Whether a request should be shed now: the smoothed delay exceeds the limit.
    /// Call it once per request: it also keeps the sampler awake. Costs an atomic load
    /// or two (a store and a wake-up only for the first request after a quiet second).
    pub fn overloaded(&self) -> bool {
        if self.limit.is_zero() {
            return false;
        }
        if !self.demand.load(Ordering::Relaxed) && !self.demand.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
        self.over_limit()
    }

    fn over_limit(&self) -> bool {
        !self.limit.is_zero() && self.current() > self.limit
    }

    /// The smoothed scheduling delay last measured (zero while dormant).
    pub fn current(&self) -> Duration {
        Duration::from_micros(self.smoothed_micros.load(Ordering::Relaxed))
    }

    /// The configured limit (zero: disabled).
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Samples the delay every [`SAMPLE_PERIOD`] while requests come, until `shutdown`;
    /// returns at once when shedding is disabled. Spawn it as its own task, so that its
    /// lateness is that of any other woken task. Run at most one per monitor: it is the
    /// only writer.
    pub async fn run(&self, shutdown: CancellationToken) {
        if self.limit.is_zero() {
            return;
        }
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut warned: Option<Instant> = None;
        loop {
            // Dormant: a notify_one() that came first left a permit, so none is missed.
            while !self.demand.load(Ordering::Relaxed) {
                tokio::select! {
                    biased;
                    () = &mut cancelled => return,
                    () = self.wake.notified() => {}
                }
            }
            let mut ticks = tokio::time::interval(SAMPLE_PERIOD);
            // After a stall, Burst would fire the missed ticks back to back and report
            // ever smaller fake delays; Skip would realign to the old grid. Delay
            // measures the stall once and starts a fresh period from now.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last = ticks.tick().await;
            let mut idle_check = last + DORMANT_AFTER;
            loop {
                let due = tokio::select! {
                    biased;
                    () = &mut cancelled => return,
                    due = ticks.tick() => due,
                };
                let now = Instant::now();
                let was_over = self.over_limit();
                self.record(now.saturating_duration_since(due), now - last);
                last = now;
                if !was_over && self.over_limit() && warned.is_none_or(|at| now - at >= WARN_EVERY)
                {
                    warned = Some(now);
                    tracing::warn!(
                        queue_delay = ?self.current(),
                        max_queue_delay = ?self.limit,
                        "overloaded: shedding endpoint requests with 503"
                    );
                }
                if now >= idle_check {
                    idle_check = now + DORMANT_AFTER;
                    if !self.demand.swap(false, Ordering::Relaxed) {
                        break;
                    }
                }
            }
            // Nobody asks: what was measured would be stale by the next request.
            self.smoothed_micros.store(0, Ordering::Relaxed);
        }
    }

    /// Folds in one sample: the timer ran `lag` late, `elapsed` after the previous
    /// sample. The weight grows with `elapsed`, so the average is over time, not over
    /// samples (a stall yields few samples, each of which must count for its length).
    fn record(&self, lag: Duration, elapsed: Duration) {
        let weight = 1.0 - (-elapsed.as_secs_f64() / SMOOTHING.as_secs_f64()).exp();
        let old = self.smoothed_micros.load(Ordering::Relaxed) as f64;
        let sample = lag.as_micros() as f64;
        let smoothed = old + (sample - old) * weight;
        // `as` saturates; the value is non-negative and finite.
        self.smoothed_micros
            .store(smoothed.round() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_long_stall_counts_at_once_and_a_short_hiccup_does_not() {
        let monitor = QueueDelay::new(20 * MS);
        monitor.record(200 * MS, 210 * MS);
        assert!(monitor.overloaded(), "{:?}", monitor.current());
        assert!(monitor.current() > 190 * MS, "{:?}", monitor.current());

        let monitor = QueueDelay::new(20 * MS);
        for _ in 0..10 {
            monitor.record(Duration::ZERO, SAMPLE_PERIOD);
        }
        monitor.record(25 * MS, SAMPLE_PERIOD + 25 * MS);
        assert!(!monitor.overloaded(), "{:?}", monitor.current());
    }

    #[test]
    fn the_delay_fades_once_ticks_are_on_time_again() {
        let monitor = QueueDelay::new(20 * MS);
        monitor.record(200 * MS, 210 * MS);
        let mut ticks = 0;
        while monitor.overloaded() {
            monitor.record(Duration::ZERO, SAMPLE_PERIOD);
            ticks += 1;
        }
        // ln(200 / 20) * 50 ms ≈ 115 ms of on-time ticks.
        assert!((10..=13).contains(&ticks), "{ticks} ticks");
    }

    #[test]
    fn a_zero_limit_never_sheds() {
        let monitor = QueueDelay::new(Duration::ZERO);
        monitor.record(Duration::from_secs(5), Duration::from_secs(5));
        assert!(!monitor.overloaded());
    }

    /// Blocks the runtime's only thread: a due tick runs at least `length` late, as a
    /// request does behind a CPU-bound backlog.
    async fn stall(length: Duration) {
        std::thread::sleep(length);
        tokio::time::sleep(MS).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_sampler_sees_a_stalled_runtime_then_recovers_and_stops_on_shutdown() {
        let monitor = Arc::new(QueueDelay::new(20 * MS));
        let shutdown = CancellationToken::new();
        let sampler = tokio::spawn({
            let (monitor, shutdown) = (monitor.clone(), shutdown.clone());
            async move { monitor.run(shutdown).await }
        });
        assert!(!monitor.overloaded(), "a request wakes the sampler");
        tokio::time::sleep(50 * MS).await;
        stall(150 * MS).await;
        assert!(monitor.overloaded(), "{:?}", monitor.current());
        // Once ticks are on time again the delay fades (bounded: a loaded machine may
        // run them a little late).
        let deadline = Instant::now() + Duration::from_secs(5);
        while monitor.overloaded() {
            assert!(Instant::now() < deadline, "{:?}", monitor.current());
            tokio::time::sleep(SAMPLE_PERIOD).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), sampler)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_sampler_sleeps_while_no_request_asks() {
        let monitor = Arc::new(QueueDelay::new(20 * MS));
        let shutdown = CancellationToken::new();
        let sampler = tokio::spawn({
            let (monitor, shutdown) = (monitor.clone(), shutdown.clone());
            async move { monitor.run(shutdown).await }
        });
        // Nobody asked yet: a stall goes unmeasured, the sampler has no timer.
        tokio::time::sleep(50 * MS).await;
        stall(150 * MS).await;
        assert_eq!(monitor.current(), Duration::ZERO);
        // A request wakes it; it measures a stall until it has gone a quiet second.
        assert!(!monitor.overloaded());
        tokio::time::sleep(50 * MS).await;
        stall(150 * MS).await;
        assert!(monitor.current() > 100 * MS, "{:?}", monitor.current());
        let deadline = Instant::now() + DORMANT_AFTER * 5;
        while monitor.current() != Duration::ZERO {
            assert!(Instant::now() < deadline, "never went dormant");
            tokio::time::sleep(SAMPLE_PERIOD).await;
        }
        stall(150 * MS).await;
        assert_eq!(monitor.current(), Duration::ZERO, "dormant again");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), sampler)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_disabled_sampler_returns_at_once() {
        let monitor = QueueDelay::new(Duration::ZERO);
        tokio::time::timeout(
            Duration::from_secs(5),
            monitor.run(CancellationToken::new()),
        )
        .await
        .unwrap();
        assert_eq!(monitor.limit(), Duration::ZERO);
    }
}
