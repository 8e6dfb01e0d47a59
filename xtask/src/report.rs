//! The summary table printed at the end of a run: one row per step, with its wall time.

use std::fmt;
use std::time::Duration;

use crate::matrix::Step;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The step succeeded.
    Ok,
    /// The step failed; the run stopped here.
    Failed,
    /// The run stopped before this step.
    NotRun,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::NotRun => "not run",
        })
    }
}

/// The rows of the summary, in run order.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<(Step, Outcome, Duration)>,
}

impl Report {
    /// Records how `step` went and how long it took.
    pub fn record(&mut self, step: Step, outcome: Outcome, took: Duration) {
        self.rows.push((step, outcome, took));
    }

    /// The table, ready to print.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<10} {:<10} {:<8} {:>9}\n",
            "leg", "step", "result", "seconds"
        );
        let mut total = Duration::ZERO;
        for (step, outcome, took) in &self.rows {
            total += *took;
            let seconds = match outcome {
                Outcome::NotRun => "-".to_owned(),
                Outcome::Ok | Outcome::Failed => format!("{:.1}", took.as_secs_f64()),
            };
            out += &format!(
                "{:<10} {:<10} {:<8} {:>9}\n",
                step.leg_name(),
                step.name(),
                outcome,
                seconds
            );
        }
        out += &format!("{:<30} {:>9.1}\n", "total", total.as_secs_f64());
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Outcome, Report};
    use crate::matrix::{Leg, Step};

    #[test]
    fn render_lists_every_step_with_its_result_and_the_total() {
        let mut report = Report::default();
        report.record(Step::Fmt, Outcome::Ok, Duration::from_millis(1500));
        report.record(
            Step::Test(Leg::Sqlite),
            Outcome::Failed,
            Duration::from_secs(20),
        );
        report.record(Step::Test(Leg::All), Outcome::NotRun, Duration::ZERO);

        let table = report.render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["-", "fmt", "ok", "1.5"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["sqlite", "test", "FAILED", "20.0"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["all", "test", "not", "run", "-"]
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            ["total", "21.5"]
        );
    }
}
