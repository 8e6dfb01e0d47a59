//! What operators see and what keeps the server standing: Prometheus [`metrics`],
//! [`health`] pages, the live [`dashboard`], and [`overload`] shedding.

pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod overload;
