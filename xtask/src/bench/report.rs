//! What a scenario measured, printed as a readable table and as one JSON line.

use serde_json::{Map, Value, json};

/// The date stamped on results (the box's clock is not trusted to be set).
pub const DATE: &str = "2026-11-24";
/// The machine the README numbers were measured on.
pub const MACHINE: &str = "2 cores, 24 GiB";

/// One measured number, with the baseline's and the goal it is held to.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Key in the JSON line, e.g. `p99_us`.
    pub name: &'static str,
    /// simplepush's value.
    pub value: f64,
    /// Unit shown in the table.
    pub unit: &'static str,
    /// The baseline's value of the same metric, when it has one.
    pub baseline: Option<f64>,
    /// The project's goal, as text, and whether it was met.
    pub target: Option<(&'static str, bool)>,
}

impl Metric {
    /// A metric without baseline or target.
    pub fn new(name: &'static str, value: f64, unit: &'static str) -> Metric {
        Metric {
            name,
            value,
            unit,
            baseline: None,
            target: None,
        }
    }

    /// Sets the baseline's value.
    pub fn vs(mut self, baseline: Option<f64>) -> Metric {
        self.baseline = baseline;
        self
    }

    /// Sets the goal and whether `value` meets it.
    pub fn goal(mut self, text: &'static str, met: bool) -> Metric {
        self.target = Some((text, met));
        self
    }
}

/// The result of one scenario on one backend.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: &'static str,
    /// Backend name.
    pub backend: String,
    /// The run's parameters (connections, rate, seconds...).
    pub params: Vec<(&'static str, f64)>,
    /// The numbers.
    pub metrics: Vec<Metric>,
}

impl Outcome {
    /// One JSON object on one line.
    pub fn json_line(&self) -> String {
        let mut metrics = Map::new();
        let mut baseline = Map::new();
        let mut targets = Map::new();
        for metric in &self.metrics {
            metrics.insert(metric.name.into(), number(metric.value));
            if let Some(value) = metric.baseline {
                baseline.insert(metric.name.into(), number(value));
            }
            if let Some((text, met)) = metric.target {
                targets.insert(metric.name.into(), json!({"target": text, "met": met}));
            }
        }
        let params: Map<String, Value> = self
            .params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), number(*v)))
            .collect();
        json!({
            "scenario": self.scenario,
            "backend": self.backend,
            "date": DATE,
            "machine": MACHINE,
            "params": params,
            "metrics": metrics,
            "baseline": baseline,
            "targets": targets,
        })
        .to_string()
    }

    /// A plain-text table: metric, value, baseline, ratio, target.
    pub fn table(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", show(*v)))
            .collect();
        let mut out = format!(
            "== {} on {} ({})\n",
            self.scenario,
            self.backend,
            params.join(", ")
        );
        out.push_str(&format!(
            "  {:<26} {:>14} {:>14} {:>8}  {}\n",
            "metric", "simplepush", "baseline", "ratio", "target"
        ));
        for m in &self.metrics {
            let value = format!("{} {}", show(m.value), m.unit);
            let (base, ratio) = match m.baseline {
                Some(b) => (
                    format!("{} {}", show(b), m.unit),
                    if b != 0.0 {
                        format!("{:.2}", m.value / b)
                    } else {
                        "-".into()
                    },
                ),
                None => ("-".into(), "-".into()),
            };
            let target = match m.target {
                Some((text, true)) => format!("{text}: met"),
                Some((text, false)) => format!("{text}: NOT met"),
                None => String::new(),
            };
            out.push_str(&format!(
                "  {:<26} {value:>14} {base:>14} {ratio:>8}  {target}\n",
                m.name
            ));
        }
        out
    }
}

/// A number for JSON: integers stay integers, others get 3 decimals.
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        json!(value as i64)
    } else {
        json!((value * 1000.0).round() / 1000.0)
    }
}

/// A number for the table.
fn show(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        format!("{}", value as i64)
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::{Metric, Outcome};

    #[test]
    fn json_line_and_table_carry_values_ratios_and_targets() {
        let outcome = Outcome {
            scenario: "notify",
            backend: "memory".into(),
            params: vec![("rate", 10000.0)],
            metrics: vec![
                Metric::new("p99_us", 900.0, "µs")
                    .vs(Some(300.0))
                    .goal("< 5000 µs", true),
                Metric::new("lost", 0.0, ""),
            ],
        };
        let line: serde_json::Value = serde_json::from_str(&outcome.json_line()).unwrap();
        assert_eq!(line["metrics"]["p99_us"], 900);
        assert_eq!(line["baseline"]["p99_us"], 300);
        assert_eq!(line["targets"]["p99_us"]["met"], true);
        assert_eq!(line["params"]["rate"], 10000);
        let table = outcome.table();
        assert!(table.contains("3.00"), "{table}");
        assert!(table.contains("< 5000 µs: met"), "{table}");
        assert_eq!(line["metrics"]["lost"], 0);
    }
}
