//! TLS on the public listeners: with `tls_cert`/`tls_key` set, devices connect over
//! wss://, pushEndpoints are https://, and the whole exchange works through TLS; a client
//! that does not speak TLS gets nothing and does not disturb the server.

mod common;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

use common::{Server, WAIT, chid};

/// A server with a fresh self-signed certificate for `localhost`, and a connector that
/// trusts exactly that certificate.
async fn tls_server() -> (Server, TlsConnector, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let quoted = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let server = Server::builder()
        .set("server", "tls_cert", &quoted(&cert_path))
        .set("server", "tls_key", &quoted(&key_path))
        .start()
        .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(certified.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, TlsConnector::from(Arc::new(config)), dir)
}

async fn tls_connect(connector: &TlsConnector, addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// One HTTP/1.1 request over TLS; answers the status and body.
async fn https(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    head: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = tls_connect(connector, addr).await;
    let request = format!(
        "{head} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"));
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

async fn next_json<S>(socket: &mut S) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let frame = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("a frame in time")
        .expect("socket open")
        .expect("a frame");
    serde_json::from_str(frame.to_text().unwrap()).unwrap()
}

#[tokio::test]
async fn devices_and_app_servers_work_over_tls() {
    let (server, connector, _dir) = tls_server().await;
    let stream = tls_connect(&connector, server.ws).await;
    let (mut device, _) = tokio_tungstenite::client_async("wss://localhost/", stream)
        .await
        .unwrap();

    device
        .send(Message::text(
            json!({"messageType": "hello", "uaid": ""}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut device).await["status"], json!(200));
    let channel = chid();
    device
        .send(Message::text(
            json!({"messageType": "register", "channelID": channel}).to_string(),
        ))
        .await
        .unwrap();
    let reply = next_json(&mut device).await;
    let endpoint = reply["pushEndpoint"].as_str().unwrap().to_owned();
    let prefix = format!("https://localhost:{}/update/", server.endpoint.port());
    assert!(endpoint.starts_with(&prefix), "{endpoint}");

    let path = &endpoint["https://localhost:".len() + server.endpoint.port().to_string().len()..];
    let (status, body) = https(
        &connector,
        server.endpoint,
        &format!("PUT {path}"),
        "version=42",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    let notification = next_json(&mut device).await;
    assert_eq!(
        notification["updates"],
        json!([{"channelID": channel, "version": 42}])
    );

    let (status, body) = https(&connector, server.ws, "GET /status/", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        json!("OK")
    );
}

#[tokio::test]
async fn plain_clients_get_no_service_and_the_server_carries_on() {
    let (server, connector, _dir) = tls_server().await;
    let mut plain = TcpStream::connect(server.endpoint).await.unwrap();
    plain
        .write_all(b"GET /status/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut response)).await;
    assert!(
        !response.starts_with(b"HTTP/1.1 200"),
        "a plain request must not be served: {:?}",
        String::from_utf8_lossy(&response)
    );
    let (status, _) = https(&connector, server.endpoint, "GET /status/", "").await;
    assert_eq!(status, 200);
}
