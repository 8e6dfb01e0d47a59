//! `/status/` and `/realstatus/` (docs/protocol.md). The public listeners' `/realstatus/`
//! says only OK or ERROR; the operator listener's tells why (store latency and error,
//! cluster peers), which is no business of the internet.

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

/// The store round trip both `/realstatus/` pages make: its outcome (the error in words)
/// and how long it took, in milliseconds.
async fn check_store(app: &App) -> (Result<(), String>, f64) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(CHECK_TIMEOUT, app.store.check()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("store check timed out".to_owned()),
    };
    (outcome, started.elapsed().as_secs_f64() * 1000.0)
}

/// `GET /realstatus/` on the public listeners: a store round trip; 200
/// `{"status":"OK"}`, or 503 `{"status":"ERROR"}` when it fails. No detail.
pub async fn public_real_status(app: Arc<App>) -> Response {
    match check_store(&app).await {
        (Ok(()), _) => json_response(StatusCode::OK, &serde_json::json!({"status": "OK"})),
        (Err(_), _) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "ERROR"}),
        ),
    }
}

/// `GET /realstatus/` on the operator listener: a store round trip with its latency or
/// error, and the cluster's view of its peers; 503 when the store check fails.
pub async fn real_status(app: Arc<App>) -> Response {
    let (outcome, millis) = check_store(&app).await;
    let (status, store) = match outcome {
        Ok(()) => (
            StatusCode::OK,
            serde_json::json!({"backend": app.store.name(), "status": "OK", "latency_ms": millis}),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"backend": app.store.name(), "status": "ERROR", "error": error}),
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
