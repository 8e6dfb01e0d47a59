//! A WebPush push (RFC 8030): the data encrypted for the subscription's keys (RFC 8291,
//! `aes128gcm`), optionally signed with VAPID (RFC 8292), `POST`ed to the subscription's
//! endpoint with `TTL` (and `Topic`, `Urgency`). Reported as `201 Created` with the
//! `Location` and `TTL` the server answered, or the error status with its reason.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, LOCATION, RETRY_AFTER};

use super::{PushError, describe_error, endpoint_url, http_client};
use crate::cli::payload;
use crate::cli::subscription::Subscription;
use crate::cli::vapid::VapidKey;

/// The `Urgency` header (RFC 8030 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Urgency {
    /// On power and Wi-Fi only.
    VeryLow,
    /// On power or Wi-Fi.
    Low,
    /// Not on low battery.
    Normal,
    /// Always.
    High,
}

impl Urgency {
    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// A WebPush push: to whom, what, and how it is signed.
#[derive(Debug, Clone)]
pub struct WebPushRequest {
    /// The subscription: endpoint and keys.
    pub subscription: Subscription,
    /// The plaintext (not empty); `None` for a push without data.
    pub data: Option<String>,
    /// The VAPID key to sign with, if any.
    pub vapid: Option<VapidKey>,
    /// The VAPID contact (`sub`).
    pub subject: String,
    /// Seconds the server keeps the message for an offline device.
    pub ttl: u64,
    /// The `Topic` header.
    pub topic: Option<String>,
    /// The `Urgency` header.
    pub urgency: Option<Urgency>,
}

/// What the server answered to a WebPush push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushOutcome {
    /// The HTTP status.
    pub status: u16,
    /// `Created`, or the error and its reason.
    pub description: String,
    /// The message's URL (`Location`), on success.
    pub location: Option<String>,
    /// The `TTL` the server used.
    pub ttl: Option<String>,
}

impl WebPushOutcome {
    /// Whether the message was accepted: `201`.
    pub fn is_success(&self) -> bool {
        self.status == 201
    }
}

impl fmt::Display for WebPushOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.description)?;
        if let Some(location) = &self.location {
            write!(f, "\nLocation: {location}")?;
        }
        if let Some(ttl) = &self.ttl {
            write!(f, "\nTTL: {ttl}")?;
        }
        Ok(())
    }
}

/// Encrypts, signs and `POST`s the push; returns the server's answer, whatever its
/// status. Redirects are not followed.
pub async fn push_webpush(request: &WebPushRequest) -> Result<WebPushOutcome, PushError> {
    let subscription = &request.subscription;
    let url = endpoint_url(&subscription.endpoint)?;
    let body = match &request.data {
        Some(data) => Some(
            payload::encrypt(&subscription.p256dh, &subscription.auth, data.as_bytes())
                .map_err(PushError::Encrypt)?,
        ),
        None => None,
    };
    let request_error = |source| PushError::Request {
        method: "POST",
        endpoint: subscription.endpoint.clone(),
        source,
    };
    let client = http_client().map_err(request_error)?;
    let mut post = client
        .post(url.clone())
        .header("TTL", request.ttl.to_string());
    if let Some(body) = body {
        post = post
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
    }
    if let Some(topic) = &request.topic {
        post = post.header("Topic", topic);
    }
    if let Some(urgency) = request.urgency {
        post = post.header("Urgency", urgency.as_str());
    }
    if let Some(vapid) = &request.vapid {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let origin = url.origin().ascii_serialization();
        post = post.header(
            AUTHORIZATION,
            vapid.authorization(&origin, &request.subject, now),
        );
    }
    let response = post.send().await.map_err(request_error)?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (location, ttl, retry_after) = (
        header(LOCATION.as_str()),
        header("ttl"),
        header(RETRY_AFTER.as_str()),
    );
    let body = response.text().await.map_err(request_error)?;
    Ok(WebPushOutcome::from_reply(
        status,
        location,
        ttl,
        retry_after.as_deref(),
        &body,
    ))
}

impl WebPushOutcome {
    /// The outcome of a reply with this status, headers and body.
    fn from_reply(
        status: u16,
        location: Option<String>,
        ttl: Option<String>,
        retry_after: Option<&str>,
        body: &str,
    ) -> WebPushOutcome {
        if status == 201 {
            return WebPushOutcome {
                status,
                description: "Created".to_owned(),
                location,
                ttl,
            };
        }
        let mut description = describe_error(status, body);
        if let Some(retry_after) = retry_after {
            description.push_str(&format!(" (retry after {retry_after} s)"));
        }
        WebPushOutcome {
            status,
            description,
            location: None,
            ttl: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_prints_location_and_ttl_on_their_own_lines() {
        let outcome = WebPushOutcome::from_reply(
            201,
            Some("http://localhost:8081/m/abc".to_owned()),
            Some("60".to_owned()),
            None,
            "",
        );
        assert!(outcome.is_success());
        assert_eq!(
            outcome.to_string(),
            "201 Created\nLocation: http://localhost:8081/m/abc\nTTL: 60"
        );
    }

    #[test]
    fn errors_carry_the_servers_reason() {
        let body = r#"{"status":403,"error":"Forbidden","reason":"VAPID key is not the one this subscription was made with"}"#;
        let outcome = WebPushOutcome::from_reply(403, None, None, None, body);
        assert!(!outcome.is_success());
        assert_eq!(
            outcome.to_string(),
            "403 Forbidden: VAPID key is not the one this subscription was made with"
        );
        let busy = WebPushOutcome::from_reply(503, None, None, Some("3"), "");
        assert_eq!(
            busy.to_string(),
            "503 Service Unavailable (retry after 3 s)"
        );
    }
}
