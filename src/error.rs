//! Where failures become protocol answers: store errors to websocket error frames, and
//! every endpoint failure to its HTTP status with a JSON body. The one place statuses
//! are chosen for errors.

use simplepush_store::StoreError;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::device::protocol::ErrorFrame;

/// Seconds an app server is asked to wait after a 503.
const RETRY_AFTER_SECS: u32 = 5;

/// Seconds an app server is asked to wait after a 429 (a channel's queue is full: it
/// drains only when the device comes back, so not too soon).
const RETRY_AFTER_FULL_SECS: u32 = 60;

/// Why a change was refused when the device's stored data would outgrow the store.
const TOO_LARGE_REASON: &str = "the device's pending data is too large for the store";

/// The error frame for a store failure: 503 when retrying may help or the device's
/// record is full (the websocket has no status for "too large"), else 500.
pub fn store_error_frame(error: &StoreError) -> ErrorFrame {
    tracing::warn!(%error, "store failure on a websocket command");
    if let StoreError::TooLarge(_) = error {
        ErrorFrame::new(
            503,
            format!("{TOO_LARGE_REASON}: acknowledge or unregister channels first"),
        )
    } else if error.is_transient() {
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

    /// 429: the channel holds all the messages it may; retry later.
    pub fn too_many(reason: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::TOO_MANY_REQUESTS, reason)
    }

    /// A store failure on a WebPush push (`/wpush/...`): as [`From<StoreError>`], except
    /// that a device record too large for the store is 429 (the push itself is within
    /// its limit, 413 would tell the app server to shrink it; it is the queue that must
    /// drain).
    pub fn from_push_store(error: StoreError) -> HttpError {
        if let StoreError::TooLarge(_) = error {
            tracing::warn!(%error, "store failure on a push");
            HttpError::too_many(format!(
                "{TOO_LARGE_REASON} until the device receives what is queued"
            ))
        } else {
            HttpError::from(error)
        }
    }

    /// The JSON response `{"status":..,"error":..,"reason":..}`, with `Retry-After` on 503
    /// and 429.
    pub fn into_response(self) -> Response {
        let body = serde_json::json!({
            "status": self.status.as_u16(),
            "error": self.status.canonical_reason().unwrap_or("Error"),
            "reason": self.reason,
        });
        let mut response = json_response(self.status, &body);
        let retry_after = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECS),
            StatusCode::TOO_MANY_REQUESTS => Some(RETRY_AFTER_FULL_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for HttpError {
    fn from(error: StoreError) -> HttpError {
        tracing::warn!(%error, "store failure on an endpoint request");
        if let StoreError::TooLarge(_) = error {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{TOO_LARGE_REASON} until the device acknowledges what it has"),
            )
        } else if error.is_transient() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_device_record_is_413_on_put_and_503_on_the_socket() {
        let full = StoreError::TooLarge("item sp1:d:x would be 2 MiB".into());
        let http = HttpError::from(full.clone());
        assert_eq!(http.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(http.reason.contains("too large for the store"), "{http:?}");
        let frame = store_error_frame(&full);
        assert_eq!((frame.status, frame.error), (503, "Service Unavailable"));
        assert!(
            frame.reason.contains("too large for the store"),
            "{frame:?}"
        );
        // The store's own words (keys, sizes) stay in the log.
        assert!(!http.reason.contains("sp1") && !frame.reason.contains("sp1"));
    }

    #[test]
    fn a_full_device_record_is_429_with_retry_after_on_a_push() {
        let full = StoreError::TooLarge("item sp1:d:x would be 2 MiB".into());
        let http = HttpError::from_push_store(full);
        assert_eq!(http.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(!http.reason.contains("sp1"), "{http:?}");
        let response = http.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "60");
        let down = HttpError::from_push_store(StoreError::Unavailable("down".into()));
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.into_response().headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn other_store_errors_keep_their_statuses() {
        let down = StoreError::Unavailable("down".into());
        assert_eq!(
            HttpError::from(down.clone()).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(store_error_frame(&down).status, 503);
        let broken = StoreError::Internal("bug".into());
        assert_eq!(
            HttpError::from(broken.clone()).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(store_error_frame(&broken).status, 500);
    }
}
