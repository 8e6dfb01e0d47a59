//! Black-box tests of the health pages (docs/protocol.md) on both public listeners (the
//! operator listener's detailed `/realstatus/` is in admin.rs).

mod common;

use common::{Server, http};
use serde_json::json;

/// The health URLs of both listeners, with and without the trailing slash.
fn urls(server: &Server, page: &str) -> Vec<String> {
    let mut out = Vec::new();
    for path in [format!("/{page}/"), format!("/{page}")] {
        out.push(server.endpoint_url(&path));
        out.push(server.ws_http_url(&path));
    }
    out
}

#[tokio::test]
async fn status_reports_ok_clients_and_crate_version_on_both_listeners() {
    let server = Server::start().await;
    for url in urls(&server, "status") {
        let reply = http("GET", &url, None, None).await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.body);
        assert_eq!(
            reply.json(),
            json!({"status": "OK", "clients": 0, "version": env!("CARGO_PKG_VERSION")}),
            "{url}"
        );
    }
}

#[tokio::test]
async fn status_counts_connected_clients() {
    let server = Server::start().await;
    let (first, _) = server.device().await;
    let (_second, _) = server.device().await;
    server.wait_for_clients(2).await;
    let reply = http("GET", &server.ws_http_url("/status/"), None, None).await;
    assert_eq!(reply.json()["clients"], json!(2));
    first.close().await;
    server.wait_for_clients(1).await;
}

#[tokio::test]
async fn realstatus_is_200_json_when_the_store_works_on_both_listeners() {
    let server = Server::start().await;
    for url in urls(&server, "realstatus") {
        let reply = http("GET", &url, None, None).await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.body);
        assert_eq!(reply.json(), json!({"status": "OK"}), "{url}");
    }
}

/// With the memcache backend, `/realstatus/` turns 503 when memcached goes away: the
/// public listeners say only ERROR, the operator listener says why.
#[cfg(feature = "memcache")]
#[tokio::test]
async fn realstatus_is_503_when_the_store_is_down() {
    let mut memcached = common::Memcached::start().await;
    let server = memcached.server().start().await;
    let reply = http("GET", &server.endpoint_url("/realstatus/"), None, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    memcached.stop();
    for url in urls(&server, "realstatus") {
        let reply = http("GET", &url, None, None).await;
        assert_eq!(reply.status, 503, "{url}: {}", reply.body);
        assert_eq!(reply.json(), json!({"status": "ERROR"}), "{url}");
    }
    let reply = http("GET", &server.admin_url("/realstatus/"), None, None).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["store"]["status"], json!("ERROR"), "{body}");
    assert!(body["store"]["error"].is_string(), "{body}");
}
