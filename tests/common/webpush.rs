//! WebPush test clients (docs/protocol.md): a [`Browser`] that speaks the WebPush dialect
//! over the websocket as Firefox does and decrypts what arrives, and an app server
//! ([`Push`], [`Vapid`]) that encrypts for a subscription, signs VAPID and POSTs.
//!
//! The crypto is the `ece` crate (RFC 8188/8291, and the legacy `aesgcm` draft) and
//! `ring` (ES256 for VAPID); nothing here is hand-written crypto.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ece::EcKeyComponents;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::{Device, Reply, Server, WAIT, unix_now};

/// base64url without padding, as WebPush writes keys and payloads.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url, padded or not.
pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("not base64url ({e}): {text:?}"))
}

/// One subscription as `PushSubscription` holds it: the endpoint, the P-256 ECDH key pair
/// (`p256dh` is its public half) and the 16-byte auth secret.
#[derive(Clone)]
pub struct Subscription {
    /// The channelID the browser minted for it.
    pub channel_id: String,
    /// The pushEndpoint the server answered.
    pub endpoint: String,
    /// The uncompressed public key (65 bytes), what the app server encrypts to.
    pub p256dh: Vec<u8>,
    /// The auth secret shared with the app server.
    pub auth: [u8; 16],
    keys: EcKeyComponents,
}

impl Subscription {
    fn new(channel_id: String, endpoint: String) -> Subscription {
        let (pair, auth) = ece::generate_keypair_and_auth_secret().unwrap();
        Subscription {
            channel_id,
            endpoint,
            p256dh: pair.pub_as_raw().unwrap(),
            auth,
            keys: pair.raw_components().unwrap(),
        }
    }

    /// Decrypts what a notification carried as the browser does: `aes128gcm`, or the
    /// legacy `aesgcm` with the salt from `headers.encryption` and the sender's key from
    /// `headers.crypto_key`. Panics when it does not decrypt.
    pub fn decrypt(&self, notification: &Notification) -> Vec<u8> {
        let data = notification
            .data
            .as_ref()
            .unwrap_or_else(|| panic!("no data in {}", notification.frame));
        let headers = &notification.frame["headers"];
        let encoding = headers["encoding"].as_str().unwrap_or_default();
        match encoding {
            "aes128gcm" => ece::decrypt(&self.keys, &self.auth, data)
                .unwrap_or_else(|e| panic!("aes128gcm does not decrypt ({e:?}): {headers}")),
            "aesgcm" => {
                let encryption = headers["encryption"]
                    .as_str()
                    .unwrap_or_else(|| panic!("aesgcm without headers.encryption: {headers}"));
                let crypto_key = headers["crypto_key"]
                    .as_str()
                    .unwrap_or_else(|| panic!("aesgcm without headers.crypto_key: {headers}"));
                let salt = unb64(
                    param(encryption, "salt")
                        .unwrap_or_else(|| panic!("no salt in {encryption:?}")),
                );
                let rs = param(encryption, "rs").map_or(4096, |rs| rs.parse().unwrap());
                let dh = unb64(
                    param(crypto_key, "dh").unwrap_or_else(|| panic!("no dh in {crypto_key:?}")),
                );
                let block =
                    ece::legacy::AesGcmEncryptedBlock::new(&dh, &salt, rs, data.clone()).unwrap();
                ece::legacy::decrypt_aesgcm(&self.keys, &self.auth, &block)
                    .unwrap_or_else(|e| panic!("aesgcm does not decrypt ({e:?}): {headers}"))
            }
            other => panic!("unknown encoding {other:?} in {}", notification.frame),
        }
    }
}

/// `name=value` out of a header like `salt=..;rs=4096` or `dh=..; p256ecdsa=..` (either
/// separator, as the legacy headers were written both ways).
fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split([';', ','])
        .filter_map(|part| part.trim().split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// A notification frame of a WebPush session.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The whole frame.
    pub frame: Value,
    /// Its channelID.
    pub channel_id: String,
    /// Its message id (`version`, a string).
    pub version: String,
    /// Its `data`, base64url-decoded.
    pub data: Option<Vec<u8>>,
}

/// A WebPush device: one websocket in a WebPush session, and the subscriptions the browser
/// keeps across connections.
pub struct Browser {
    device: Device,
    /// The uaid of the last hello reply.
    pub uaid: String,
    /// The subscriptions, kept across reconnects.
    pub subscriptions: Vec<Subscription>,
}

impl Browser {
    /// Connects and says hello with `use_webpush` and no uaid (a fresh browser).
    pub async fn connect(server: &Server) -> Browser {
        let mut device = server.connect().await;
        let reply = webpush_hello(&mut device, None).await;
        Browser {
            device,
            uaid: reply["uaid"].as_str().unwrap().to_owned(),
            subscriptions: Vec::new(),
        }
    }

    /// Opens a new socket and says hello with the uaid held (as Firefox does while it
    /// has subscriptions; none when it has none); asserts the reply echoes it and
    /// returns the reply. Closes the old socket first.
    pub async fn reconnect(&mut self, server: &Server) -> Value {
        let old = std::mem::replace(&mut self.device, server.connect().await);
        old.close().await;
        let uaid = (!self.subscriptions.is_empty()).then(|| self.uaid.clone());
        let reply = webpush_hello(&mut self.device, uaid.as_deref()).await;
        if let Some(uaid) = uaid {
            assert_eq!(reply["uaid"], json!(uaid), "uaid not echoed: {reply}");
        }
        self.uaid = reply["uaid"].as_str().unwrap().to_owned();
        reply
    }

    /// Closes the socket (the browser goes offline) and waits until the server has
    /// noticed, so a following push finds the device offline.
    pub async fn go_offline(self, server: &Server, remaining_clients: u64) -> Offline {
        let Browser {
            device,
            uaid,
            subscriptions,
        } = self;
        device.close().await;
        server.wait_for_clients(remaining_clients).await;
        Offline {
            uaid,
            subscriptions,
        }
    }

    /// The socket, for raw frames.
    pub fn device(&mut self) -> &mut Device {
        &mut self.device
    }

    /// Registers a fresh channel (with the app server's VAPID public key when given),
    /// makes a key pair and auth secret for it, and returns the subscription.
    pub async fn subscribe(&mut self, vapid: Option<&Vapid>) -> Subscription {
        let channel_id = super::chid();
        let mut register = json!({"messageType": "register", "channelID": channel_id});
        if let Some(vapid) = vapid {
            register["key"] = json!(vapid.public_b64());
        }
        self.device.send(register).await;
        let reply = self.device.recv().await;
        assert_eq!(reply["messageType"], json!("register"), "{reply}");
        assert_eq!(reply["status"], json!(200), "register reply {reply}");
        assert_eq!(reply["channelID"], json!(channel_id), "{reply}");
        let endpoint = reply["pushEndpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("no pushEndpoint in {reply}"))
            .to_owned();
        let version = if vapid.is_some() { "v2" } else { "v1" };
        assert!(
            endpoint.contains(&format!("/wpush/{version}/")),
            "{version} endpoint expected: {endpoint}"
        );
        let subscription = Subscription::new(channel_id, endpoint);
        self.subscriptions.push(subscription.clone());
        subscription
    }

    /// Unregisters a subscription as Firefox does (`code: 200`); asserts the reply.
    pub async fn unsubscribe(&mut self, subscription: &Subscription) {
        let channel_id = &subscription.channel_id;
        self.device
            .send(json!({"messageType": "unregister", "channelID": channel_id, "code": 200}))
            .await;
        let reply = self.device.recv().await;
        assert_eq!(
            reply,
            json!({"messageType": "unregister", "channelID": channel_id, "status": 200})
        );
        self.subscriptions.retain(|s| &s.channel_id != channel_id);
    }

    /// The next frame, which must be a WebPush notification.
    pub async fn recv_notification(&mut self) -> Notification {
        let frame = self.device.recv().await;
        parse_notification(frame)
    }

    /// The next notification, decrypted by its subscription; returns it and the
    /// plaintext.
    pub async fn recv_decrypted(&mut self) -> (Notification, Vec<u8>) {
        let notification = self.recv_notification().await;
        let plaintext = self
            .subscription(&notification.channel_id)
            .decrypt(&notification);
        (notification, plaintext)
    }

    /// The subscription of a channelID (panics on a channel the browser never made).
    pub fn subscription(&self, channel_id: &str) -> &Subscription {
        self.subscriptions
            .iter()
            .find(|s| s.channel_id == channel_id)
            .unwrap_or_else(|| panic!("notification for unknown channel {channel_id}"))
    }

    /// Acks a notification by its id, code 100 (delivered); no reply is expected.
    pub async fn ack(&mut self, notification: &Notification) {
        self.device
            .send(json!({
                "messageType": "ack",
                "updates": [{
                    "channelID": notification.channel_id,
                    "version": notification.version,
                    "code": 100,
                }],
            }))
            .await;
    }

    /// Pings and expects `{}` as the very next frame: nothing else was pending.
    pub async fn expect_nothing(&mut self) {
        self.device.ping().await;
    }
}

/// A browser whose socket is closed; it keeps its uaid and subscriptions.
pub struct Offline {
    /// The uaid the browser holds.
    pub uaid: String,
    /// Its subscriptions.
    pub subscriptions: Vec<Subscription>,
}

impl Offline {
    /// Connects again and says hello with the uaid held; asserts it is echoed.
    pub async fn reconnect(self, server: &Server) -> Browser {
        let mut device = server.connect().await;
        let uaid = (!self.subscriptions.is_empty()).then_some(self.uaid.as_str());
        let reply = webpush_hello(&mut device, uaid).await;
        if let Some(uaid) = uaid {
            assert_eq!(reply["uaid"], json!(uaid), "uaid not echoed: {reply}");
        }
        Browser {
            device,
            uaid: reply["uaid"].as_str().unwrap().to_owned(),
            subscriptions: self.subscriptions,
        }
    }
}

/// Sends Firefox's hello (`use_webpush`, `broadcasts`, the uaid only when given) and
/// asserts the WebPush reply shape; returns the reply.
pub async fn webpush_hello(device: &mut Device, uaid: Option<&str>) -> Value {
    let mut hello = json!({"messageType": "hello", "broadcasts": {}, "use_webpush": true});
    if let Some(uaid) = uaid {
        hello["uaid"] = json!(uaid);
    }
    let reply = device.hello_with(hello).await;
    assert_eq!(reply["status"], json!(200), "hello reply {reply}");
    assert_eq!(reply["use_webpush"], json!(true), "hello reply {reply}");
    let uaid = reply["uaid"].as_str().unwrap_or_default();
    assert!(
        (1..=128).contains(&uaid.len()),
        "uaid of 1..128 chars: {reply}"
    );
    reply
}

/// Checks a frame is a WebPush notification (§9) and picks it apart.
pub fn parse_notification(frame: Value) -> Notification {
    assert_eq!(frame["messageType"], json!("notification"), "{frame}");
    let channel_id = frame["channelID"]
        .as_str()
        .unwrap_or_else(|| panic!("no channelID in {frame}"))
        .to_owned();
    let version = frame["version"]
        .as_str()
        .unwrap_or_else(|| panic!("version is not a string: {frame}"))
        .to_owned();
    assert!(!version.is_empty(), "empty version in {frame}");
    assert!(frame["ttl"].is_u64(), "ttl is not a number: {frame}");
    let data = frame.get("data").map(|data| {
        unb64(
            data.as_str()
                .unwrap_or_else(|| panic!("data is not a string: {frame}")),
        )
    });
    assert_eq!(
        data.is_some(),
        frame.get("headers").is_some(),
        "data and headers come together: {frame}"
    );
    Notification {
        frame,
        channel_id,
        version,
        data,
    }
}

/// An app server's VAPID key pair (P-256), signing ES256 JWTs.
pub struct Vapid {
    pair: EcdsaKeyPair,
}

impl Default for Vapid {
    fn default() -> Self {
        Self::new()
    }
}

impl Vapid {
    /// A fresh key pair.
    pub fn new() -> Vapid {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Vapid { pair }
    }

    /// The public key, uncompressed (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key, base64url (what `applicationServerKey` and `k=` carry).
    pub fn public_b64(&self) -> String {
        b64(self.public_key())
    }

    /// An ES256 JWT over these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let header = b64(json!({"typ": "JWT", "alg": "ES256"}).to_string().as_bytes());
        let claims = b64(claims.to_string().as_bytes());
        let input = format!("{header}.{claims}");
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }

    /// The claims a careful app server sends for this endpoint: `aud` its origin,
    /// `exp` 12 h away, a `mailto:` subject.
    pub fn claims(endpoint: &str) -> Value {
        json!({
            "aud": origin(endpoint),
            "exp": unix_now() + 12 * 3600,
            "sub": "mailto:push-admin@example.com",
        })
    }
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin(url: &str) -> String {
    let url = url::Url::parse(url).unwrap_or_else(|e| panic!("not a URL ({e}): {url}"));
    url.origin().ascii_serialization()
}

/// How a push is authorized.
enum Auth {
    /// `Authorization: vapid t=<jwt>, k=<key>` (RFC 8292).
    Vapid { jwt: String, key: String },
    /// `Authorization: WebPush <jwt>` with `Crypto-Key: p256ecdsa=<key>` (older drafts).
    WebPush { jwt: String, key: String },
}

/// One push request of an app server, built up and then sent with [`Push::send`].
pub struct Push {
    endpoint: String,
    headers: Vec<(String, String)>,
    crypto_key: Vec<String>,
    auth: Option<Auth>,
    body: Vec<u8>,
}

impl Push {
    /// A push to this endpoint with `TTL: 60` and no body.
    pub fn to(subscription: &Subscription) -> Push {
        Push::to_endpoint(&subscription.endpoint)
    }

    /// A push to a raw endpoint URL with `TTL: 60` and no body.
    pub fn to_endpoint(endpoint: &str) -> Push {
        Push {
            endpoint: endpoint.to_owned(),
            headers: vec![("TTL".to_owned(), "60".to_owned())],
            crypto_key: Vec::new(),
            auth: None,
            body: Vec::new(),
        }
    }

    /// Sets (replaces) a header.
    pub fn header(mut self, name: &str, value: &str) -> Push {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Leaves a header out (e.g. `TTL`).
    pub fn without(mut self, name: &str) -> Push {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// `TTL: seconds`.
    pub fn ttl(self, seconds: u64) -> Push {
        self.header("TTL", &seconds.to_string())
    }

    /// `Topic: topic`.
    pub fn topic(self, topic: &str) -> Push {
        self.header("Topic", topic)
    }

    /// `Urgency: urgency`.
    pub fn urgency(self, urgency: &str) -> Push {
        self.header("Urgency", urgency)
    }

    /// The plaintext encrypted for the subscription with `aes128gcm` (RFC 8291).
    pub fn aes128gcm(self, subscription: &Subscription, plaintext: &[u8]) -> Push {
        let body = ece::encrypt(&subscription.p256dh, &subscription.auth, plaintext).unwrap();
        self.raw_body("aes128gcm", body)
    }

    /// The plaintext encrypted for the subscription with the legacy `aesgcm`: the body,
    /// and the salt and sender key in `Encryption` and `Crypto-Key: dh=`.
    pub fn aesgcm(mut self, subscription: &Subscription, plaintext: &[u8]) -> Push {
        let block =
            ece::legacy::encrypt_aesgcm(&subscription.p256dh, &subscription.auth, plaintext)
                .unwrap();
        for (name, value) in block.headers(None) {
            if name == "Crypto-Key" {
                self.crypto_key.push(value);
            } else {
                self = self.header(name, &value);
            }
        }
        let body = unb64(&block.body());
        self.raw_body("aesgcm", body)
    }

    /// A body as is, labelled with this `Content-Encoding`.
    pub fn raw_body(mut self, encoding: &str, body: Vec<u8>) -> Push {
        self.body = body;
        self.header("Content-Encoding", encoding)
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Signed with VAPID (`vapid t=.., k=..`), the usual claims for the endpoint.
    pub fn vapid(self, vapid: &Vapid) -> Push {
        let claims = Vapid::claims(&self.endpoint);
        self.vapid_claims(vapid, &claims)
    }

    /// Signed with VAPID over these claims.
    pub fn vapid_claims(mut self, vapid: &Vapid, claims: &Value) -> Push {
        self.auth = Some(Auth::Vapid {
            jwt: vapid.sign(claims),
            key: vapid.public_b64(),
        });
        self
    }

    /// Signed with the older form: `Authorization: WebPush <jwt>` and
    /// `Crypto-Key: p256ecdsa=<key>`, the usual claims.
    pub fn vapid_legacy(mut self, vapid: &Vapid) -> Push {
        self.auth = Some(Auth::WebPush {
            jwt: vapid.sign(&Vapid::claims(&self.endpoint)),
            key: vapid.public_b64(),
        });
        self
    }

    /// POSTs it; answers the status, headers and body.
    pub async fn send(self, server: &Server) -> Reply {
        let url = server.reachable(&self.endpoint);
        let (headers, body) = self.into_parts();
        request("POST", &url, &headers, body).await
    }

    /// POSTs it to `url` (the endpoint as this test reaches it) with `client`; an error
    /// when no answer came (e.g. the server was killed).
    pub async fn try_send(self, client: &reqwest::Client, url: &str) -> reqwest::Result<Reply> {
        let (headers, body) = self.into_parts();
        let mut request = client.post(url);
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The request headers (with the authorization) and the body.
    fn into_parts(self) -> (Vec<(String, String)>, Vec<u8>) {
        let mut headers = self.headers;
        let mut crypto_key = self.crypto_key;
        match self.auth {
            Some(Auth::Vapid { jwt, key }) => {
                headers.push(("Authorization".into(), format!("vapid t={jwt}, k={key}")));
            }
            Some(Auth::WebPush { jwt, key }) => {
                headers.push(("Authorization".into(), format!("WebPush {jwt}")));
                crypto_key.push(format!("p256ecdsa={key}"));
            }
            None => {}
        }
        if !crypto_key.is_empty() {
            headers.push(("Crypto-Key".into(), crypto_key.join("; ")));
        }
        (headers, self.body)
    }
}

/// `DELETE` a message by its `Location` (as the 201 answered it).
pub async fn delete_message(server: &Server, location: &str) -> Reply {
    request("DELETE", &server.reachable(location), &[], Vec::new()).await
}

/// One HTTP request with a binary body (no proxy, no redirects).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Reply {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// Asserts a push was accepted: 201, a `Location` on `/m/`, and the `TTL` used; returns
/// the `Location`.
pub fn assert_created(reply: &Reply, ttl: u64) -> String {
    assert_eq!(reply.status, 201, "push not accepted: {}", reply.body);
    assert_eq!(
        reply.header("ttl").as_deref(),
        Some(ttl.to_string().as_str()),
        "TTL used"
    );
    let location = reply
        .header("location")
        .unwrap_or_else(|| panic!("201 without Location"));
    assert!(location.contains("/m/"), "Location {location:?}");
    location
}
