//! `/status/` and `/realstatus/` (PROTOCOL.md §6), on both listeners.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::error::json_response;

/// A store check slower than this counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /status/`: alive, with the number of sockets connected here.
pub fn status(app: &App) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "OK",
            "clients": app.registry.connections(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

/// `GET /realstatus/`: a store round trip; 503 when it fails.
pub async fn real_status(app: Arc<App>) -> Response {
    let started = Instant::now();
    let check = tokio::time::timeout(CHECK_TIMEOUT, app.store.check()).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let (status, store) = match check {
        Ok(Ok(())) => (
            StatusCode::OK,
            serde_json::json!({"backend": app.store.name(), "status": "OK", "latency_ms": millis}),
        ),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"backend": app.store.name(), "status": "ERROR", "error": error.to_string()}),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"backend": app.store.name(), "status": "ERROR", "error": "store check timed out"}),
        ),
    };
    let overall = if status == StatusCode::OK {
        "OK"
    } else {
        "ERROR"
    };
    let mut body = serde_json::json!({
        "status": overall,
        "clients": app.registry.connections(),
        "version": env!("CARGO_PKG_VERSION"),
        "store": store,
    });
    if let Some(cluster) = &app.cluster {
        body["cluster"] = cluster.health();
    }
    json_response(status, &body)
}
