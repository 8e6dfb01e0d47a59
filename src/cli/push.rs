//! `simplepush push`: an app server on the command line. It `PUT`s one version (and
//! optional data) to a pushEndpoint and reports what the server answered as one line:
//! `200 delivered`, `202 stored`, or the error status with the reason from the JSON body.

use std::fmt;
use std::time::Duration;

use clap::Args;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

/// How long one `PUT` may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a body that is not a JSON error is quoted in the outcome.
const QUOTED_BODY_CHARS: usize = 200;

/// What `simplepush push` sends, and where.
#[derive(Debug, Clone, Args)]
pub struct Request {
    /// The channel's pushEndpoint (`http://…/update/<token>`), as `simplepush client` printed it.
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: String,
    /// The version to push, an integer from 0 to 2^63-1; only the device's latest version
    /// matters. Without it the server uses the current UNIX time in seconds.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(..=i64::MAX.unsigned_abs()))]
    pub version: Option<u64>,
    /// Data delivered with the version (the server accepts up to `max_data_bytes`, 4096 by
    /// default).
    #[arg(long, value_name = "TEXT")]
    pub data: Option<String>,
}

impl Request {
    /// The form-encoded body: `version=N&data=S`, each part only when given.
    pub fn body(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        if let Some(version) = self.version {
            form.append_pair("version", &version.to_string());
        }
        if let Some(data) = &self.data {
            form.append_pair("data", data);
        }
        form.finish()
    }
}

/// What the server answered to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP status.
    pub status: u16,
    /// `delivered`, `stored`, or the error and its reason.
    pub description: String,
}

impl Outcome {
    /// Whether the update was accepted: `200` (delivered live) or `202` (stored until the
    /// device connects).
    pub fn is_success(&self) -> bool {
        matches!(self.status, 200 | 202)
    }

    /// The outcome of a reply with this status, `Retry-After` header and body.
    pub fn from_reply(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
        let mut description = match status {
            200 => "delivered".to_owned(),
            202 => "stored".to_owned(),
            _ => describe_error(status, body),
        };
        if let Some(retry_after) = retry_after {
            description.push_str(&format!(" (retry after {retry_after} s)"));
        }
        Outcome {
            status,
            description,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.description)
    }
}

/// The JSON error body of PROTOCOL.md §5: `{"status":N,"error":"..","reason":".."}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: Option<String>,
    reason: Option<String>,
}

/// `Error: reason` from a JSON error body; the status's name and the start of the body
/// when the body is something else (a proxy's HTML page, say).
fn describe_error(status: u16, body: &str) -> String {
    let name = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown Status");
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: Some(error),
            reason: Some(reason),
        }) => format!("{error}: {reason}"),
        Ok(ErrorBody {
            error: Some(error),
            reason: None,
        }) => error,
        _ => {
            let quoted: String = body
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(QUOTED_BODY_CHARS)
                .collect();
            if quoted.is_empty() {
                name.to_owned()
            } else {
                format!("{name}: {quoted}")
            }
        }
    }
}

/// Why a push got no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The endpoint is not a URL this tool can `PUT` to.
    #[error("{endpoint} is not a usable pushEndpoint: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request failed before a reply came (refused, timed out, reset).
    #[error("PUT {endpoint} failed")]
    Request {
        /// The endpoint as given.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
}

/// `PUT`s the request's version and data to its endpoint and returns the server's answer,
/// whatever its status. Redirects are not followed: an endpoint answers itself.
pub async fn push(request: &Request) -> Result<Outcome, PushError> {
    let endpoint_error = |reason: String| PushError::Endpoint {
        endpoint: request.endpoint.clone(),
        reason,
    };
    let url = Url::parse(&request.endpoint).map_err(|e| endpoint_error(e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(endpoint_error(
                "https needs TLS, which this build of simplepush does not include".to_owned(),
            ));
        }
        other => return Err(endpoint_error(format!("unsupported scheme `{other}`"))),
    }
    let request_error = |source| PushError::Request {
        endpoint: request.endpoint.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(request_error)?;
    let response = client
        .put(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(request.body())
        .send()
        .await
        .map_err(request_error)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.map_err(request_error)?;
    Ok(Outcome::from_reply(status, retry_after.as_deref(), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Option<u64>, data: Option<&str>) -> Request {
        Request {
            endpoint: "http://localhost:8081/update/x".to_owned(),
            version,
            data: data.map(str::to_owned),
        }
    }

    #[test]
    fn body_has_only_the_given_parts_form_encoded() {
        assert_eq!(request(None, None).body(), "");
        assert_eq!(request(Some(5), None).body(), "version=5");
        assert_eq!(
            request(Some(7), Some("a b&c=d")).body(),
            "version=7&data=a+b%26c%3Dd"
        );
        assert_eq!(request(None, Some("x")).body(), "data=x");
    }

    #[test]
    fn success_statuses_are_named() {
        let delivered = Outcome::from_reply(200, None, "{}");
        assert_eq!(delivered.to_string(), "200 delivered");
        assert!(delivered.is_success());
        assert_eq!(
            Outcome::from_reply(202, None, "{}").to_string(),
            "202 stored"
        );
    }

    #[test]
    fn json_error_body_gives_error_and_reason() {
        let body = r#"{"status":410,"error":"Gone","reason":"channel unregistered"}"#;
        let outcome = Outcome::from_reply(410, None, body);
        assert_eq!(outcome.to_string(), "410 Gone: channel unregistered");
        assert!(!outcome.is_success());
    }

    #[test]
    fn retry_after_is_reported() {
        let body = r#"{"status":503,"error":"Service Unavailable","reason":"busy"}"#;
        assert_eq!(
            Outcome::from_reply(503, Some("5"), body).to_string(),
            "503 Service Unavailable: busy (retry after 5 s)"
        );
    }

    #[test]
    fn other_bodies_are_quoted_on_one_line() {
        assert_eq!(
            Outcome::from_reply(502, None, "<html>\n  bad   gateway\n</html>").to_string(),
            "502 Bad Gateway: <html> bad gateway </html>"
        );
        assert_eq!(
            Outcome::from_reply(500, None, "").to_string(),
            "500 Internal Server Error"
        );
        let long = "x".repeat(1000);
        let outcome = Outcome::from_reply(500, None, &long);
        assert_eq!(
            outcome.description.len(),
            "Internal Server Error: ".len() + QUOTED_BODY_CHARS
        );
    }

    #[tokio::test]
    async fn non_http_endpoints_are_refused_before_sending() {
        let mut https = request(Some(1), None);
        https.endpoint = "https://push.example.com/update/x".to_owned();
        assert!(matches!(
            push(&https).await,
            Err(PushError::Endpoint { reason, .. }) if reason.contains("TLS")
        ));
        let mut garbage = request(Some(1), None);
        garbage.endpoint = "not a url".to_owned();
        assert!(matches!(
            push(&garbage).await,
            Err(PushError::Endpoint { .. })
        ));
    }
}
