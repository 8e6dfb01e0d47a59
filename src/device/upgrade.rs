//! The websocket handshake, done here rather than by `warp::ws` so the socket's buffers
//! can be sized for a million idle devices (tungstenite's defaults hold 128 KiB each).

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use crate::app::App;
use crate::device::session;
use crate::error::HttpError;

/// The subprotocol SimplePush clients may offer; selected when offered, never required.
const SUBPROTOCOL: &str = "push-notification";

/// Bytes read from a socket at a time, and so the read buffer every idle socket keeps.
/// Most SimplePush commands (register, ack, ping, a short hello) fit; larger ones still
/// arrive whole (the buffer grows for them).
const READ_CHUNK: usize = 128;

/// The entry of the comma-separated header `name` that is `token` (case-insensitively),
/// exactly as the client spelled it.
fn listed<'h>(headers: &'h HeaderMap, name: header::HeaderName, token: &str) -> Option<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|t| t.eq_ignore_ascii_case(token))
}

/// The socket settings for a device connection.
pub fn socket_config(max_message_bytes: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_CHUNK;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = max_message_bytes.saturating_mul(4).max(1 << 20);
    config.max_message_size = Some(max_message_bytes);
    config.max_frame_size = Some(max_message_bytes);
    config
}

/// Answers a request to the websocket path: 101 and a session, or why not.
pub fn accept(
    app: Arc<App>,
    method: Method,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Response {
    if method != Method::GET
        || listed(&headers, header::CONNECTION, "upgrade").is_none()
        || listed(&headers, header::UPGRADE, "websocket").is_none()
    {
        return HttpError::new(StatusCode::BAD_REQUEST, "expected a websocket upgrade")
            .into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response =
            HttpError::new(StatusCode::UPGRADE_REQUIRED, "websocket version 13 only")
                .into_response();
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let (Some(key), Some(on_upgrade)) = (headers.get(header::SEC_WEBSOCKET_KEY), on_upgrade) else {
        return HttpError::new(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key")
            .into_response();
    };
    if app.shutdown.is_cancelled() {
        return HttpError::unavailable("shutting down").into_response();
    }
    let Some(connected) = app.registry.try_connect(app.max_connections) else {
        return HttpError::unavailable("too many connections").into_response();
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let config = socket_config(app.protocol.max_message_bytes);
    let sessions = app.sessions.clone();
    sessions.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                // A task of its own: an idle session's memory is then the session alone,
                // not also this handshake's state.
                sessions.spawn(session::run(app, socket, connected));
            }
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    let mut response = Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers_out = response.headers_mut();
    headers_out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers_out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept_key) {
        headers_out.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    // Echoed as offered: clients compare the selected subprotocol byte for byte.
    if let Some(offered) = listed(&headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        && let Ok(value) = HeaderValue::from_str(offered)
    {
        headers_out.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    response
}
