//! Where failures become protocol answers: store errors to websocket error frames, and
//! every endpoint failure to its HTTP status with a JSON body. The one place statuses
//! are chosen for errors.

use simplepush_store::StoreError;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::protocol::ErrorFrame;

/// Seconds an app server is asked to wait after a 503.
const RETRY_AFTER_SECS: u32 = 5;

/// The error frame for a store failure: 503 when retrying may help, else 500.
pub fn store_error_frame(error: &StoreError) -> ErrorFrame {
    tracing::warn!(%error, "store failure on a websocket command");
    if error.is_transient() {
        ErrorFrame::new(503, "storage unavailable, try again later")
    } else {
        ErrorFrame::new(500, "internal error")
    }
}

/// An endpoint failure: its status and the reason shown to the app server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The status answered.
    pub status: StatusCode,
    /// What was wrong, in plain words.
    pub reason: String,
}

impl HttpError {
    /// An error with `status` and `reason`.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> HttpError {
        HttpError {
            status,
            reason: reason.into(),
        }
    }

    /// 503: the server is overloaded or a dependency is down; retry later.
    pub fn unavailable(reason: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, reason)
    }

    /// The JSON response `{"status":..,"error":..,"reason":..}`, with `Retry-After` on 503.
    pub fn into_response(self) -> Response {
        let body = serde_json::json!({
            "status": self.status.as_u16(),
            "error": self.status.canonical_reason().unwrap_or("Error"),
            "reason": self.reason,
        });
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<StoreError> for HttpError {
    fn from(error: StoreError) -> HttpError {
        tracing::warn!(%error, "store failure on an endpoint request");
        if error.is_transient() {
            HttpError::unavailable("storage unavailable, try again later")
        } else {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
