//! Latency histograms (microseconds) that travel from worker processes to the parent as
//! JSON, and the few numbers reported from them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, in microseconds (a minute); larger values are clamped.
const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant figures.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // Bounds and precision are constants that hdrhistogram accepts.
        let histogram = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Latency(histogram)
    }
}

impl Latency {
    /// Records one latency.
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail; clamp defensively anyway.
        for value in other.0.iter_recorded() {
            self.0
                .saturating_record_n(value.value_iterated_to(), value.count_at_value());
        }
    }

    /// How many samples were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` (0..=1) in microseconds; 0 when empty.
    pub fn quantile(&self, quantile: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(quantile)
        }
    }

    /// p50, p99, p99.9 and max, in microseconds.
    pub fn summary(&self) -> Percentiles {
        Percentiles {
            count: self.count(),
            p50_us: self.quantile(0.5),
            p99_us: self.quantile(0.99),
            p999_us: self.quantile(0.999),
            max_us: if self.0.is_empty() { 0 } else { self.0.max() },
        }
    }
}

/// The reported shape of a latency distribution.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest sample, µs.
    pub max_us: u64,
}

impl Serialize for Latency {
    /// As `[[value, count], ...]` pairs: small, exact enough, no compression dependency.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u64, u64)> = self
            .0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        pairs.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(deserializer)?;
        let mut latency = Latency::default();
        for (value, count) in pairs {
            latency
                .0
                .saturating_record_n(value.clamp(1, MAX_MICROS), count);
        }
        Ok(latency)
    }
}

#[cfg(test)]
mod tests {
    use super::Latency;

    #[test]
    fn survives_json_and_merges() {
        let mut a = Latency::default();
        for v in 1..=1000 {
            a.record(v);
        }
        let text = serde_json::to_string(&a).unwrap();
        let b: Latency = serde_json::from_str(&text).unwrap();
        assert_eq!(b.count(), 1000);
        assert_eq!(b.quantile(0.5), a.quantile(0.5));
        let mut c = Latency::default();
        c.merge(&a);
        c.merge(&b);
        assert_eq!(c.count(), 2000);
        let s = c.summary();
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=1000).contains(&s.p99_us), "{s:?}");
        assert_eq!(Latency::default().summary().p99_us, 0);
    }
}
