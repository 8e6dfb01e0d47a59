//! The routes of each listener, one function per route, each a warp filter answering
//! with a complete response (so nothing reaches warp's default rejection page).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::app::App;
use crate::app_server::token::WebPushVersion;
use crate::app_server::{endpoint, webpush};
use crate::device::upgrade;
use crate::error::HttpError;
use crate::ops::health;

fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// Which `/realstatus/` a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// OK or ERROR and nothing else (the public listeners).
    Public,
    /// Store latency and error, cluster peers (the operator listener).
    Operator,
}

/// `/status`, `/status/`, `/realstatus`, `/realstatus/`; GET or HEAD (load balancers
/// often check with HEAD; the body is then left out).
pub fn health(
    app: Arc<App>,
    detail: Detail,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path::full())
        .and(with_app(app))
        .and_then(
            move |path: warp::path::FullPath, app: Arc<App>| async move {
                match path.as_str() {
                    "/status" | "/status/" => Ok(health::status(&app)),
                    "/realstatus" | "/realstatus/" => Ok(match detail {
                        Detail::Public => health::public_real_status(app).await,
                        Detail::Operator => health::real_status(app).await,
                    }),
                    _ => Err(warp::reject::not_found()),
                }
            },
        )
}

/// `GET /metrics`: Prometheus text format (operator listener).
pub fn metrics(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::get()
        .and(warp::path!("metrics"))
        .and(with_app(app))
        .map(|app: Arc<App>| {
            let text = app.metrics.render(app.registry.connections());
            let mut response = Response::new(text.into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        })
}

/// `GET /` with a websocket upgrade: a device session.
pub fn websocket(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(with_app(app))
        .map(|method, headers, on_upgrade, app| upgrade::accept(app, method, headers, on_upgrade))
}

/// `/update/{token}`: PUT an update; OPTIONS; anything else 405.
pub fn update(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::path!("update" / String)
        .and(warp::method())
        .and(query)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::stream())
        .and(with_app(app))
        .then(|token, method, query, content_type, body, app| {
            endpoint::handle(app, method, token, query, content_type, Box::pin(body))
        })
}

/// `/wpush/v1/{token}` and `/wpush/v2/{token}`: POST a WebPush message; OPTIONS;
/// anything else 405.
pub fn webpush(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let version = warp::path!("wpush" / "v1" / String)
        .map(|token| (WebPushVersion::V1, token))
        .or(warp::path!("wpush" / "v2" / String).map(|token| (WebPushVersion::V2, token)))
        .unify();
    version
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_app(app))
        .then(|(version, token), method, headers, body, app| {
            webpush::handle_push(app, version, method, token, headers, Box::pin(body))
        })
}

/// `/m/{token}`: DELETE a queued WebPush message; OPTIONS; anything else 405.
pub fn message(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("m" / String)
        .and(warp::method())
        .and(with_app(app))
        .then(|token, method, app| webpush::handle_message(app, method, token))
}

/// Everything else: a JSON 404.
pub fn not_found() -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    warp::any().map(|| HttpError::new(StatusCode::NOT_FOUND, "no such resource").into_response())
}

/// The cluster's node-to-node listener.
pub fn router_listener(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    crate::cluster::routes(app).or(not_found()).unify()
}

/// Adds CORS headers (the endpoint listener, when `cors = true`).
fn with_cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("PUT, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "content-type, content-encoding, ttl, topic, urgency, authorization, encryption, crypto-key",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("location, ttl"),
    );
    response
}

/// The devices' listener: the websocket and health.
pub fn ws_listener(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    health(app.clone(), Detail::Public)
        .or(websocket(app))
        .unify()
        .or(not_found())
        .unify()
}

/// The app servers' listener: updates, WebPush pushes and message deletes, health.
pub fn endpoint_listener(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let cors = app.cors;
    health(app.clone(), Detail::Public)
        .or(update(app.clone()))
        .unify()
        .or(webpush(app.clone()))
        .unify()
        .or(message(app))
        .unify()
        .or(not_found())
        .unify()
        .map(move |response: Response| if cors { with_cors(response) } else { response })
}

/// The operator listener: metrics, the dashboard and detailed health. Never CORS: no
/// page of another origin is meant to read it.
pub fn admin_listener(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    health(app.clone(), Detail::Operator)
        .or(metrics(app))
        .unify()
        .or(crate::ops::dashboard::route())
        .unify()
        .or(not_found())
        .unify()
}
