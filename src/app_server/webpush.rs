//! The app servers' WebPush side (docs/protocol.md, RFC 8030): `POST /wpush/v1/{token}`
//! and `/wpush/v2/{token}` queue an encrypted message for a subscription and deliver it
//! live when the device is connected; `DELETE /m/{token}` withdraws a queued message.
//! The server never decrypts: the body and its encoding headers travel as sent.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::Stream;
use simplepush_store::{Message, Payload, QueueOutcome, Urgency};
use tracing::Instrument;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use crate::app::{App, unix_now};
use crate::app_server::endpoint::read_body;
use crate::app_server::token::{WebPushTarget, WebPushVersion, key_digest};
use crate::app_server::{message_id, vapid};
use crate::error::{HttpError, json_response};
use crate::ops::metrics::{SHED_INFLIGHT, SHED_QUEUE_DELAY};

/// A push body must arrive within this time once its headers are in (as for
/// `/update`: it is read before any in-flight slot is taken).
const BODY_TIMEOUT: Duration = Duration::from_secs(3);

/// A TTL 0 message is never stored, only handed to a session connected now; sessions
/// drop live messages that have expired, so it is given this long to be written to the
/// device (here, or on the node it is routed to).
const TTL_ZERO_HANDOFF_SECS: u64 = 3;

/// Longest `Topic` (RFC 8030 §5.4).
const MAX_TOPIC_LEN: usize = 32;

/// Longest `Encryption` or `Crypto-Key` header kept with a message: they hold a salt, a
/// key or two, and a few names (about 150 bytes in practice).
const MAX_CRYPTO_HEADER_LEN: usize = 1024;

fn bad(reason: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, reason)
}

/// The `TTL` header: seconds, a non-negative integer (a huge one counts as the
/// largest); required.
pub fn parse_ttl(value: Option<&str>) -> Result<u64, HttpError> {
    let text = value
        .map(str::trim)
        .ok_or_else(|| bad("the TTL header is required (seconds to keep the message)"))?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("TTL must be a non-negative integer (seconds)"));
    }
    Ok(text.parse::<u64>().unwrap_or(u64::MAX))
}

/// The `Topic` header: at most 32 characters of the base64url alphabet.
pub fn parse_topic(value: Option<&str>) -> Result<Option<String>, HttpError> {
    let Some(topic) = value.map(str::trim) else {
        return Ok(None);
    };
    let valid = (1..=MAX_TOPIC_LEN).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(Some(topic.to_owned()))
    } else {
        Err(bad(
            "Topic must be 1 to 32 characters of the base64url alphabet",
        ))
    }
}

/// The `Urgency` header: very-low, low, normal (the default) or high.
pub fn parse_urgency(value: Option<&str>) -> Result<Urgency, HttpError> {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(Urgency::Normal),
        Some(text) => Urgency::parse(&text)
            .ok_or_else(|| bad("Urgency must be very-low, low, normal or high")),
    }
}

/// The payload of a push: none for an empty body; otherwise the body with its
/// `Content-Encoding`, which must be `aes128gcm`, or `aesgcm` with the `Encryption` and
/// `Crypto-Key` headers the device needs to decrypt it.
pub fn payload(
    body: Vec<u8>,
    encoding: Option<&str>,
    encryption: Option<&str>,
    crypto_key: Option<&str>,
) -> Result<Option<Payload>, HttpError> {
    if body.is_empty() {
        return Ok(None);
    }
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    let present = |value: Option<&str>, name: &str| -> Result<Option<String>, HttpError> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Err(bad(format!(
                "Content-Encoding aesgcm needs the {name} header"
            ))),
            Some(v) if v.len() > MAX_CRYPTO_HEADER_LEN => Err(bad(format!(
                "{name} is longer than {MAX_CRYPTO_HEADER_LEN} bytes"
            ))),
            Some(v) => Ok(Some(v.to_owned())),
        }
    };
    match encoding.as_deref() {
        Some("aes128gcm") => Ok(Some(Payload {
            encoding: "aes128gcm".to_owned(),
            encryption: None,
            crypto_key: None,
            body,
        })),
        Some("aesgcm") => Ok(Some(Payload {
            encoding: "aesgcm".to_owned(),
            encryption: present(encryption, "Encryption")?,
            crypto_key: present(crypto_key, "Crypto-Key")?,
            body,
        })),
        Some(_) => Err(bad(
            "Content-Encoding must be aes128gcm (or aesgcm with Encryption and Crypto-Key)",
        )),
        None => Err(bad(
            "a body needs Content-Encoding: aes128gcm (or aesgcm with Encryption and Crypto-Key)",
        )),
    }
}

/// A header as text; one that is not visible ASCII counts as malformed.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, HttpError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| bad(format!("the {name} header is not ASCII text")))
        })
        .transpose()
}

/// The origin (`scheme://host[:port]`) of `endpoint_url`: what a VAPID `aud` must say.
pub fn origin(endpoint_url: &str) -> String {
    url::Url::parse(endpoint_url)
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_else(|_| endpoint_url.trim_end_matches('/').to_owned())
}

/// Answers one request to `/wpush/{v1,v2}/{token}`.
pub async fn handle_push<S, B>(
    app: Arc<App>,
    version: WebPushVersion,
    method: Method,
    token: String,
    headers: HeaderMap,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let id = app.request_ids.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id, method = %method);
    async move {
        match method {
            Method::POST => {
                let response = push(&app, version, &token, &headers, body)
                    .await
                    .unwrap_or_else(refusal);
                app.metrics
                    .webpush_pushes
                    .with_label_values(&[response.status().as_str()])
                    .inc();
                response
            }
            Method::OPTIONS => json_response(StatusCode::OK, &serde_json::json!({})),
            _ => not_allowed("use POST", "POST, OPTIONS"),
        }
    }
    .instrument(span)
    .await
}

/// Answers one request to `/m/{token}`.
pub async fn handle_message(app: Arc<App>, method: Method, token: String) -> Response {
    let id = app.request_ids.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id, method = %method);
    async move {
        match method {
            Method::DELETE => {
                let response = delete(&app, &token)
                    .await
                    .unwrap_or_else(HttpError::into_response);
                app.metrics
                    .message_deletes
                    .with_label_values(&[response.status().as_str()])
                    .inc();
                response
            }
            Method::OPTIONS => json_response(StatusCode::OK, &serde_json::json!({})),
            _ => not_allowed("use DELETE", "DELETE, OPTIONS"),
        }
    }
    .instrument(span)
    .await
}

fn not_allowed(reason: &str, allow: &'static str) -> Response {
    let mut response = HttpError::new(StatusCode::METHOD_NOT_ALLOWED, reason).into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// An error response; a 401 also names the scheme it wants (`WWW-Authenticate: vapid`).
fn refusal(error: HttpError) -> Response {
    let unauthorized = error.status == StatusCode::UNAUTHORIZED;
    let mut response = error.into_response();
    if unauthorized {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("vapid"));
    }
    response
}

/// Refuses before any work while the runtime is overloaded (as `/update` does).
fn shed(app: &App) -> Result<(), HttpError> {
    if app.queue_delay.overloaded() {
        app.metrics
            .requests_shed
            .with_label_values(&[SHED_QUEUE_DELAY])
            .inc();
        return Err(HttpError::unavailable(
            "server overloaded (queue delay), try again later",
        ));
    }
    Ok(())
}

/// Checks the VAPID credentials of a push to `target`: 401 when invalid (or missing on
/// a v2 endpoint), 403 when signed with another key than a v2 subscription's.
fn authorize(
    app: &App,
    target: &WebPushTarget,
    headers: &HeaderMap,
    now: u64,
) -> Result<(), HttpError> {
    let fail = |failure: vapid::Failure| {
        app.metrics
            .vapid_failures
            .with_label_values(&[failure.label()])
            .inc();
        let status = if failure == vapid::Failure::KeyMismatch {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        HttpError::new(status, failure.reason())
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| fail(vapid::Failure::Header)))
        .transpose()?;
    let crypto_key = headers.get("crypto-key").and_then(|v| v.to_str().ok());
    let credentials = vapid::credentials(authorization, crypto_key).map_err(fail)?;
    match (credentials, &target.key_digest) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(fail(vapid::Failure::Missing)),
        (Some(credentials), expected) => {
            credentials
                .verify(&origin(&app.endpoint_url), now)
                .map_err(fail)?;
            match expected {
                Some(digest) if *digest != key_digest(credentials.key()) => {
                    Err(fail(vapid::Failure::KeyMismatch))
                }
                _ => Ok(()),
            }
        }
    }
}

async fn push<S, B>(
    app: &App,
    version: WebPushVersion,
    token: &str,
    headers: &HeaderMap,
    body: S,
) -> Result<Response, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    shed(app)?;
    // Opens without I/O; its verdict waits until the request itself is checked (400
    // and 413 before 404, as on `/update`).
    let target = app.tokens.decode_webpush(version, token);
    let max_data = app.protocol.max_data_bytes;
    let body: Bytes = tokio::time::timeout(BODY_TIMEOUT, read_body(body, max_data))
        .await
        .map_err(|_| HttpError::new(StatusCode::REQUEST_TIMEOUT, "request body too slow"))??;
    let received = tokio::time::Instant::now();
    let now = unix_now();
    let requested_ttl = parse_ttl(header_text(headers, "ttl")?)?;
    let topic = parse_topic(header_text(headers, "topic")?)?;
    let urgency = parse_urgency(header_text(headers, "urgency")?)?;
    let payload = payload(
        body.to_vec(),
        header_text(headers, "content-encoding")?,
        header_text(headers, "encryption")?,
        header_text(headers, "crypto-key")?,
    )?;
    let Some(target) = target else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "no such subscription",
        ));
    };
    authorize(app, &target, headers, now)?;
    // The slot covers the store write and the delivery, as on `/update`.
    let Ok(_permit) = app.inflight.try_acquire() else {
        app.metrics
            .requests_shed
            .with_label_values(&[SHED_INFLIGHT])
            .inc();
        return Err(HttpError::unavailable("too many requests in flight"));
    };
    let ttl = requested_ttl.min(app.protocol.max_ttl.as_secs());
    let encoding = payload
        .as_ref()
        .map_or("none", |p| match p.encoding.as_str() {
            "aesgcm" => "aesgcm",
            _ => "aes128gcm",
        });
    let message = Message {
        id: message_id::mint(),
        channel: target.channel.clone(),
        ttl,
        expires_at: now.saturating_add(if ttl == 0 { TTL_ZERO_HANDOFF_SECS } else { ttl }),
        topic,
        urgency,
        payload,
    };
    let location = format!(
        "{}/m/{}",
        app.endpoint_url,
        app.tokens
            .encode_message(&target.uaid, &message.channel, &message.id)
    );
    // TTL 0: for a device connected now only, never stored; a channel that is gone is
    // still told (410), so the app server drops the subscription.
    if ttl == 0
        && !app
            .store
            .registered(&target.uaid, &message.channel)
            .await
            .map_err(HttpError::from_push_store)?
    {
        return Err(HttpError::new(StatusCode::GONE, "subscription expired"));
    }
    if ttl > 0 {
        let max_queued = app.protocol.max_queued_messages;
        match app
            .store
            .put_message(&target.uaid, &message, max_queued, now)
            .await
            .map_err(HttpError::from_push_store)?
        {
            QueueOutcome::Stored => {}
            QueueOutcome::Gone => {
                return Err(HttpError::new(StatusCode::GONE, "subscription expired"));
            }
            QueueOutcome::Full => {
                return Err(HttpError::too_many(format!(
                    "the subscription already holds {max_queued} undelivered messages"
                )));
            }
        }
    }
    deliver(app, &target, message, received).await;
    app.metrics
        .webpush_encodings
        .with_label_values(&[encoding])
        .inc();
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::CREATED;
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert("ttl", HeaderValue::from(ttl));
    Ok(response)
}

/// Hands a message to the device's session, here or on the node holding it; a device
/// that is not reachable gets it from the store at its next hello.
async fn deliver(
    app: &App,
    target: &WebPushTarget,
    message: Message,
    received: tokio::time::Instant,
) {
    match (app.registry.get(&target.uaid), &app.cluster) {
        (Some(peer), _) => {
            peer.deliver_message(message, received);
        }
        (None, Some(cluster)) => {
            let route = cluster
                .route_message(&*app.store, &target.uaid, &message)
                .await;
            app.metrics.routed.with_label_values(&[route.label()]).inc();
        }
        (None, None) => {}
    }
}

async fn delete(app: &App, token: &str) -> Result<Response, HttpError> {
    shed(app)?;
    let Some((uaid, channel, id)) = app.tokens.decode_message(token) else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "no such message"));
    };
    let Ok(_permit) = app.inflight.try_acquire() else {
        app.metrics
            .requests_shed
            .with_label_values(&[SHED_INFLIGHT])
            .inc();
        return Err(HttpError::unavailable("too many requests in flight"));
    };
    // Whether it was still queued or not, it will not be delivered from now on.
    app.store
        .delete_message(&uaid, &channel, &id, unix_now())
        .await?;
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules() {
        assert_eq!(parse_ttl(Some("0")), Ok(0));
        assert_eq!(parse_ttl(Some(" 60 ")), Ok(60));
        assert_eq!(parse_ttl(Some("99999999999999999999999")), Ok(u64::MAX));
        for bad in [
            None,
            Some(""),
            Some("-1"),
            Some("1.5"),
            Some("abc"),
            Some("+5"),
            Some("1e3"),
        ] {
            assert_eq!(
                parse_ttl(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn topic_rules() {
        assert_eq!(parse_topic(None), Ok(None));
        assert_eq!(parse_topic(Some("news-1_A")), Ok(Some("news-1_A".into())));
        let longest = "a".repeat(32);
        assert_eq!(parse_topic(Some(&longest)), Ok(Some(longest.clone())));
        for bad in ["", &"a".repeat(33), "a b", "a=", "a/b", "a+b", "ü"] {
            assert_eq!(
                parse_topic(Some(bad)).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn urgency_rules() {
        assert_eq!(parse_urgency(None), Ok(Urgency::Normal));
        assert_eq!(parse_urgency(Some("very-low")), Ok(Urgency::VeryLow));
        assert_eq!(parse_urgency(Some("low")), Ok(Urgency::Low));
        assert_eq!(parse_urgency(Some("normal")), Ok(Urgency::Normal));
        assert_eq!(parse_urgency(Some("High")), Ok(Urgency::High));
        for bad in ["", "urgent", "very low", "verylow"] {
            assert_eq!(
                parse_urgency(Some(bad)).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn content_encoding_rules() {
        // No body: no payload, whatever the headers.
        assert_eq!(payload(Vec::new(), None, None, None), Ok(None));
        assert_eq!(payload(Vec::new(), Some("gzip"), None, None), Ok(None));
        let body = vec![1, 2, 3];
        let p = payload(body.clone(), Some("aes128gcm"), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.encoding.as_str(), p.body.as_slice()),
            ("aes128gcm", &body[..])
        );
        assert_eq!(p.encryption, None);
        let p = payload(
            body.clone(),
            Some("AESGCM"),
            Some("salt=abc"),
            Some("dh=def;p256ecdsa=ghi"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.encoding, "aesgcm");
        assert_eq!(p.encryption.as_deref(), Some("salt=abc"));
        assert_eq!(p.crypto_key.as_deref(), Some("dh=def;p256ecdsa=ghi"));
        let long = "x".repeat(MAX_CRYPTO_HEADER_LEN + 1);
        for (encoding, encryption, crypto_key) in [
            (None, None, None),
            (Some("gzip"), None, None),
            (Some("aesgcm128"), Some("salt=a"), Some("dh=b")),
            (Some("aesgcm"), None, Some("dh=b")),
            (Some("aesgcm"), Some("salt=a"), None),
            (Some("aesgcm"), Some(" "), Some("dh=b")),
            (Some("aesgcm"), Some(long.as_str()), Some("dh=b")),
        ] {
            assert_eq!(
                payload(body.clone(), encoding, encryption, crypto_key)
                    .unwrap_err()
                    .status,
                StatusCode::BAD_REQUEST,
                "{encoding:?} {encryption:?} {crypto_key:?}"
            );
        }
    }

    #[test]
    fn the_audience_is_the_origin_of_the_endpoint_url() {
        assert_eq!(
            origin("https://push.example.net"),
            "https://push.example.net"
        );
        assert_eq!(
            origin("https://push.example.net:443/"),
            "https://push.example.net"
        );
        assert_eq!(origin("http://localhost:8081"), "http://localhost:8081");
        assert_eq!(
            origin("https://Push.Example.net/base/path"),
            "https://push.example.net"
        );
    }
}
