//! `/metrics` on the operator listener: Prometheus text whose values move as a scripted
//! device and app server use the server.

mod common;

use common::{Server, chid, http};

/// The value of the series `name{labels...}` (labels in any order), if present.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse().ok()).flatten()
        })
}

async fn scrape(server: &Server) -> String {
    let reply = http("GET", &server.admin_url("/metrics"), None, None).await;
    assert_eq!(reply.status, 200);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    reply.body
}

#[tokio::test]
async fn metrics_move_with_a_scripted_session() {
    let server = Server::start().await;
    // The harness runs the suite on the backend a matrix leg names.
    let backend = std::env::var("SIMPLEPUSH_TEST_STORE").unwrap_or_else(|_| "memory".to_owned());
    let before = scrape(&server).await;
    let count =
        |text: &str, name: &str, labels: &[(&str, &str)]| value(text, name, labels).unwrap_or(0.0);
    assert_eq!(
        count(
            &before,
            "simplepush_connections",
            &[("backend", backend.as_str())]
        ),
        0.0
    );
    assert_eq!(
        count(&before, "simplepush_updates_total", &[("status", "200")]),
        0.0
    );

    let mut device = server.connect().await;
    device.hello("").await;
    let channel = chid();
    let endpoint = device.register(&channel).await;
    server.put_version(&endpoint, 1, 200).await;
    device.recv_notification().await;
    device.ack(&channel, 1).await;
    device.ping().await;
    let during = scrape(&server).await;
    assert_eq!(count(&during, "simplepush_connections", &[]), 1.0);
    for (command, n) in [
        ("hello", 1.0),
        ("register", 1.0),
        ("ack", 1.0),
        ("ping", 1.0),
    ] {
        assert_eq!(
            count(
                &during,
                "simplepush_commands_total",
                &[("command", command)]
            ),
            n,
            "{command}"
        );
    }
    assert_eq!(
        count(&during, "simplepush_updates_total", &[("status", "200")]),
        1.0
    );
    assert_eq!(
        count(&during, "simplepush_delivery_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        count(
            &during,
            "simplepush_store_seconds_count",
            &[("op", "put_update")]
        ),
        1.0
    );

    device.close().await;
    server.wait_for_clients(0).await;
    server.put_version(&endpoint, 2, 202).await;
    let bad = server.put(&endpoint, "version=-1").await;
    assert_eq!(bad.status, 400);
    let after = scrape(&server).await;
    assert_eq!(count(&after, "simplepush_connections", &[]), 0.0);
    assert_eq!(
        count(&after, "simplepush_updates_total", &[("status", "202")]),
        1.0
    );
    assert_eq!(
        count(&after, "simplepush_updates_total", &[("status", "400")]),
        1.0
    );
    assert_eq!(
        count(&after, "simplepush_closes_total", &[("reason", "gone")]),
        1.0
    );
    assert!(
        value(
            &after,
            "simplepush_store_seconds_bucket",
            &[("op", "pending"), ("backend", backend.as_str())]
        )
        .is_some()
    );
}
