//! The operator listener (`[server] admin_addr`, docs/protocol.md): `/metrics`,
//! `/dashboard/` and the detailed `/realstatus/` live there and nowhere else; the public
//! listeners' `/realstatus/` says only OK or ERROR.

mod common;

use common::{Reply, Server, http, http_with};
use serde_json::json;

/// The operator's pages, as paths.
const OPERATOR_PAGES: [&str; 3] = ["/metrics", "/dashboard/", "/dashboard"];

#[tokio::test]
async fn metrics_and_dashboard_are_404_on_the_public_listeners_and_200_on_the_admin_one() {
    let server = Server::start().await;
    for path in OPERATOR_PAGES {
        for url in [server.endpoint_url(path), server.ws_http_url(path)] {
            http("GET", &url, None, None)
                .await
                .assert_error(404, &["Not Found"]);
        }
        let reply = http("GET", &server.admin_url(path), None, None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("simplepush_connections"), "{metrics}");
}

#[tokio::test]
async fn public_realstatus_is_only_the_status_word_and_the_admin_one_has_the_detail() {
    let server = Server::start().await;
    for path in ["/realstatus/", "/realstatus"] {
        for url in [server.endpoint_url(path), server.ws_http_url(path)] {
            let reply = http("GET", &url, None, None).await;
            assert_eq!(reply.status, 200, "{url}: {}", reply.body);
            assert_eq!(reply.body, r#"{"status":"OK"}"#, "{url}");
        }
        let reply = http("GET", &server.admin_url(path), None, None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["status"], json!("OK"), "{body}");
        assert_eq!(body["store"]["status"], json!("OK"), "{body}");
        assert!(body["store"]["latency_ms"].is_number(), "{body}");
        assert!(body["store"]["backend"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn admin_listener_answers_status_and_json_404_for_anything_else() {
    let server = Server::start().await;
    let (_device, _) = server.device().await;
    server.wait_for_clients(1).await;
    let reply = http("GET", &server.admin_url("/status/"), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["clients"], json!(1));
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("PUT", "/update/x"),
        ("GET", "/dashboard/x"),
    ] {
        http(method, &server.admin_url(path), None, Some(""))
            .await
            .assert_error(404, &["Not Found"]);
    }
}

/// Every `Access-Control-*` header of a reply.
fn cors_headers(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn cors_never_applies_to_the_admin_listener() {
    let server = Server::builder()
        .set("server", "cors", "true")
        .start()
        .await;
    let origin = [("origin", "https://elsewhere.example")];
    // The switch is on: the endpoint listener does send CORS headers.
    let public = http_with("GET", &server.endpoint_url("/status/"), &origin, None).await;
    assert!(
        !cors_headers(&public).is_empty(),
        "cors = true but the endpoint listener sent no CORS header"
    );
    let preflight = [
        ("origin", "https://elsewhere.example"),
        ("access-control-request-method", "GET"),
    ];
    for (method, path, headers) in [
        ("GET", "/metrics", &origin[..]),
        ("GET", "/dashboard/", &origin),
        ("GET", "/realstatus/", &origin),
        ("GET", "/status/", &origin),
        ("GET", "/nope", &origin),
        ("OPTIONS", "/metrics", &preflight),
    ] {
        let reply = http_with(method, &server.admin_url(path), headers, None).await;
        assert_eq!(
            cors_headers(&reply),
            Vec::<String>::new(),
            "{method} {path} on the admin listener"
        );
    }
}
