//! The app servers' side (docs/protocol.md): `PUT /update/{token}` stores an update and
//! delivers it live when the device is connected here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::Instrument;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use simplepush_store::{PutOutcome, Update};
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use crate::app::{App, unix_now};
use crate::error::{HttpError, json_response};
use crate::ops::metrics::{SHED_INFLIGHT, SHED_QUEUE_DELAY};

/// A request body must arrive within this time once its headers are in. It is read
/// before any in-flight slot is taken (a sender that never finishes its body must not
/// hold one), so only the connection waits; an app server sends a few KiB at once.
const BODY_TIMEOUT: Duration = Duration::from_secs(3);

/// The parameters of an update, as the app server sent them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// `version`, unparsed.
    pub version: Option<String>,
    /// `data`.
    pub data: Option<String>,
}

impl Params {
    /// Fills what is missing from `other` (the query string backs up the body).
    fn or(self, other: Params) -> Params {
        Params {
            version: self.version.or(other.version),
            data: self.data.or(other.data),
        }
    }

    fn set(&mut self, key: &str, value: String) {
        match key {
            "version" => self.version = Some(value),
            "data" => self.data = Some(value),
            _ => {}
        }
    }
}

/// How a request body is to be read, by its Content-Type.
#[derive(Debug, PartialEq, Eq)]
enum BodyKind {
    Form,
    Multipart(String),
    Ignored,
}

fn body_kind(content_type: Option<&str>) -> Result<BodyKind, HttpError> {
    // An empty Content-Type says no more than an absent one.
    let Some(content_type) = content_type.filter(|c| !c.trim().is_empty()) else {
        return Ok(BodyKind::Form);
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "multipart/form-data" => multer::parse_boundary(content_type)
            .map(BodyKind::Multipart)
            .map_err(|_| {
                HttpError::new(StatusCode::BAD_REQUEST, "multipart body without a boundary")
            }),
        _ => Ok(BodyKind::Ignored),
    }
}

/// Parses `application/x-www-form-urlencoded` text (also the query string).
pub fn parse_form(bytes: &[u8]) -> Params {
    let mut params = Params::default();
    for (key, value) in form_urlencoded::parse(bytes) {
        params.set(&key, value.into_owned());
    }
    params
}

async fn parse_multipart(body: Bytes, boundary: String) -> Result<Params, HttpError> {
    let bad = |e: multer::Error| {
        HttpError::new(StatusCode::BAD_REQUEST, format!("bad multipart body: {e}"))
    };
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut params = Params::default();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().map(str::to_owned);
        let text = field.text().await.map_err(bad)?;
        if let Some(name) = name {
            params.set(&name, text);
        }
    }
    Ok(params)
}

/// The version to store: the app server's, or the current time when it sent none.
pub fn parse_version(version: Option<&str>, now: u64) -> Result<u64, HttpError> {
    match version.map(str::trim) {
        None | Some("") => Ok(now),
        Some(text) if text.bytes().all(|b| b.is_ascii_digit()) => text
            .parse::<i64>()
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(bad_version),
        Some(_) => Err(bad_version()),
    }
}

fn bad_version() -> HttpError {
    HttpError::new(
        StatusCode::BAD_REQUEST,
        "version must be a non-negative integer that fits in 63 bits",
    )
}

/// The largest body read: the data, percent-encoded, with room for the rest.
fn body_limit(max_data_bytes: usize) -> usize {
    max_data_bytes.saturating_mul(3).saturating_add(4096)
}

/// Reads a whole body, refusing (413) one larger than `limit` bytes.
pub(crate) async fn read_body<S, B>(mut body: S, limit: usize) -> Result<Bytes, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut collected = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk
            .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("reading body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(collected))
}

/// Answers one request to `/update/{token}`.
pub async fn handle<S, B>(
    app: Arc<App>,
    method: Method,
    token: String,
    query: String,
    content_type: Option<String>,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    // Whatever this request logs carries its id (never the token: it names a device).
    let id = app.request_ids.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id, method = %method);
    async move {
        let response = match method {
            Method::PUT => {
                let response = put(&app, &token, &query, content_type.as_deref(), body).await;
                let status = match &response {
                    Ok(response) => response.status(),
                    Err(error) => error.status,
                };
                app.metrics
                    .updates
                    .with_label_values(&[status.as_str()])
                    .inc();
                response
            }
            Method::OPTIONS => Ok(json_response(StatusCode::OK, &serde_json::json!({}))),
            _ => {
                let mut response =
                    HttpError::new(StatusCode::METHOD_NOT_ALLOWED, "use PUT").into_response();
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("PUT, OPTIONS"));
                Ok(response)
            }
        };
        response.unwrap_or_else(HttpError::into_response)
    }
    .instrument(span)
    .await
}

async fn put<S, B>(
    app: &App,
    token: &str,
    query: &str,
    content_type: Option<&str>,
    body: S,
) -> Result<Response, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    // Shedding by queue delay comes before any work (body, token, store): a refusal
    // must stay cheap for the server to get out of overload by answering it.
    if app.queue_delay.overloaded() {
        app.metrics
            .requests_shed
            .with_label_values(&[SHED_QUEUE_DELAY])
            .inc();
        return Err(HttpError::unavailable(
            "server overloaded (queue delay), try again later",
        ));
    }
    // The token is in the path and opens without I/O; its verdict waits, because the
    // parameters are checked first (docs/protocol.md: 400 and 413 before 404).
    let target = app.tokens.decode(token);
    // The body is read without an in-flight slot, under its own short deadline: a
    // sender that never finishes costs its connection only, not a slot that a
    // well-behaved app server needs.
    let max_data = app.protocol.max_data_bytes;
    let body = tokio::time::timeout(BODY_TIMEOUT, read_body(body, body_limit(max_data)))
        .await
        .map_err(|_| HttpError::new(StatusCode::REQUEST_TIMEOUT, "request body too slow"))??;
    let from_body = match body_kind(content_type)? {
        BodyKind::Form => parse_form(&body),
        BodyKind::Multipart(boundary) => parse_multipart(body, boundary).await?,
        BodyKind::Ignored => Params::default(),
    };
    let params = from_body.or(parse_form(query.as_bytes()));
    let received = tokio::time::Instant::now();
    let now = unix_now();
    let version = parse_version(params.version.as_deref(), now)?;
    let data = params.data.filter(|d| !d.is_empty());
    if data.as_ref().is_some_and(|d| d.len() > max_data) {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("data is larger than {max_data} bytes"),
        ));
    }
    let Some((uaid, channel)) = target else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "no such endpoint"));
    };
    // The slot covers the work on a valid endpoint, the store write and the delivery,
    // so `max_inflight_requests` bounds the load on the store.
    let Ok(_permit) = app.inflight.try_acquire() else {
        app.metrics
            .requests_shed
            .with_label_values(&[SHED_INFLIGHT])
            .inc();
        return Err(HttpError::unavailable("too many requests in flight"));
    };
    let update = Update {
        version,
        data,
        expires_at: app.expires_at(now),
    };
    match app
        .store
        .put_update(&uaid, &channel, update.clone(), now)
        .await?
    {
        PutOutcome::Gone => Err(HttpError::new(StatusCode::GONE, "channel unregistered")),
        PutOutcome::Stored => {
            let local = app.registry.get(&uaid);
            let live = match (local, &app.cluster) {
                (Some(peer), _) => peer.deliver(channel, update, received),
                (None, Some(cluster)) => {
                    let route = cluster.route(&*app.store, &uaid, &channel, &update).await;
                    app.metrics.routed.with_label_values(&[route.label()]).inc();
                    route.delivered()
                }
                (None, None) => false,
            };
            let status = if live {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok(json_response(status, &serde_json::json!({})))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        assert_eq!(parse_version(None, 77), Ok(77));
        assert_eq!(parse_version(Some(""), 77), Ok(77));
        assert_eq!(parse_version(Some("0"), 77), Ok(0));
        assert_eq!(
            parse_version(Some("9223372036854775807"), 77),
            Ok(i64::MAX as u64)
        );
        for bad in [
            "9223372036854775808",
            "-1",
            "+1",
            "1.5",
            "abc",
            "1e3",
            "0x10",
            "１",
        ] {
            assert_eq!(
                parse_version(Some(bad), 77).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn form_parsing_decodes_and_ignores_other_keys() {
        let params = parse_form(b"version=12&data=hello%20world&x=1");
        assert_eq!(params.version.as_deref(), Some("12"));
        assert_eq!(params.data.as_deref(), Some("hello world"));
        assert_eq!(parse_form(b"\xff\xfe=\x00"), Params::default());
    }

    #[test]
    fn content_types() {
        assert_eq!(body_kind(None), Ok(BodyKind::Form));
        assert_eq!(
            body_kind(Some("Application/X-WWW-Form-Urlencoded; charset=utf-8")),
            Ok(BodyKind::Form)
        );
        assert_eq!(
            body_kind(Some("multipart/form-data; boundary=xyz")),
            Ok(BodyKind::Multipart("xyz".into()))
        );
        assert_eq!(body_kind(Some("application/json")), Ok(BodyKind::Ignored));
        assert!(body_kind(Some("multipart/form-data")).is_err());
    }

    #[tokio::test]
    async fn multipart_fields_are_read() {
        let body = "--b\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n42\r\n--b\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\nhi\r\n--b--\r\n";
        let params = parse_multipart(Bytes::from(body), "b".into())
            .await
            .unwrap();
        assert_eq!(
            params,
            Params {
                version: Some("42".into()),
                data: Some("hi".into())
            }
        );
        let err = parse_multipart(Bytes::from("garbage"), "b".into())
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}
