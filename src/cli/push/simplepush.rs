//! A SimplePush push: one `PUT` of a version (and optional data) to a pushEndpoint,
//! reported as one line: `200 delivered`, `202 stored`, or the error status with the
//! reason from the JSON body.

use std::fmt;

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use super::{PushError, describe_error, endpoint_url, http_client};

/// A SimplePush push: where, and what.
#[derive(Debug, Clone)]
pub struct Request {
    /// The channel's pushEndpoint (`http://…/update/<token>`).
    pub endpoint: String,
    /// The version; without it the server uses the current UNIX time in seconds.
    pub version: Option<u64>,
    /// Data delivered with the version.
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

/// `PUT`s the request's version and data to its endpoint and returns the server's answer,
/// whatever its status. Redirects are not followed: an endpoint answers itself.
pub async fn push(request: &Request) -> Result<Outcome, PushError> {
    let url = endpoint_url(&request.endpoint)?;
    let request_error = |source| PushError::Request {
        method: "PUT",
        endpoint: request.endpoint.clone(),
        source,
    };
    let client = http_client().map_err(request_error)?;
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
            "Internal Server Error: ".len() + super::super::QUOTED_BODY_CHARS
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
