//! The WebPush device (docs/protocol.md), as a browser is one: it says hello with
//! `use_webpush`, subscribes one channel (restricted to an app server's VAPID key when
//! given) and keeps that subscription across connections, writes the subscription JSON
//! an app server needs, and decrypts every message with its own key pair and auth secret
//! (RFC 8291, `aes128gcm`). Each message is acked with code 100, or 101 when it does not
//! decrypt.

use std::io;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use serde_json::{Map, Value, json};

use super::connection::{Dialect, Handled};
use super::{ClientError, Identity, escape, print};
use crate::cli::payload::{self, AUTH_LEN};
use crate::cli::subscription::Subscription;

/// Ack codes of a WebPush device.
const DELIVERED: u16 = 100;
const DECRYPTION_FAILED: u16 = 101;
const NOT_DELIVERED: u16 = 102;

/// A WebPush device.
pub(super) struct WebPush {
    identity: Identity,
    secret: SecretKey,
    auth: [u8; AUTH_LEN],
    /// The app server's public key (base64url) its channel is restricted to.
    vapid_public_key: Option<String>,
    /// Where the subscription JSON goes.
    subscription_out: PathBuf,
}

impl WebPush {
    /// A device with the keys of its state file.
    pub fn new(
        identity: Identity,
        vapid_public_key: Option<String>,
        subscription_out: PathBuf,
    ) -> Result<WebPush, ClientError> {
        let invalid = |reason: String| ClientError::StateInvalid {
            path: identity.path.clone(),
            reason,
        };
        let keys = identity
            .state
            .webpush
            .as_ref()
            .ok_or_else(|| invalid("no WebPush keys".to_owned()))?;
        let (secret, auth) = keys.decode().map_err(invalid)?;
        Ok(WebPush {
            identity,
            secret,
            auth,
            vapid_public_key,
            subscription_out,
        })
    }

    /// The endpoint of an earlier subscription, if it was made with today's key.
    fn kept_endpoint(&self) -> Option<String> {
        let kept = self.identity.state.webpush.as_ref()?;
        if kept.application_server_key != self.vapid_public_key {
            return None;
        }
        kept.endpoint.clone()
    }

    /// Writes the subscription JSON for this endpoint and prints the `endpoint` and
    /// `subscription` lines.
    async fn subscribed(&self, channel_id: &str, endpoint: &str) -> Result<(), ClientError> {
        let subscription = Subscription {
            endpoint: endpoint.to_owned(),
            p256dh: self.secret.public_key(),
            auth: self.auth,
        };
        self.write_subscription(&subscription).await?;
        print(&format!("endpoint {channel_id} {endpoint}")).await?;
        print(&format!("subscription {}", self.subscription_out.display())).await
    }

    /// Writes the subscription unless the file already says exactly that (replaced
    /// through a file beside it, so a reader never sees half of it).
    async fn write_subscription(&self, subscription: &Subscription) -> Result<(), ClientError> {
        let path = &self.subscription_out;
        let text = subscription.to_json();
        if tokio::fs::read_to_string(path).await.ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let io_error = |source: io::Error| ClientError::SubscriptionIo {
            path: path.clone(),
            source,
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        tokio::fs::write(&temporary, text).await.map_err(io_error)?;
        tokio::fs::rename(&temporary, path).await.map_err(io_error)
    }

    /// What a message's `data` says: the text, or why there is none to show.
    fn decrypt(&self, message: &Map<String, Value>) -> Result<Option<String>, String> {
        let Some(data) = message.get("data") else {
            return Ok(None);
        };
        let data = data.as_str().ok_or("data is not a string")?;
        let encoding = message
            .get("headers")
            .and_then(|h| h.get("encoding"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !encoding.eq_ignore_ascii_case("aes128gcm") {
            return Err(format!(
                "content encoding {encoding:?} is not supported (only aes128gcm)"
            ));
        }
        let body = URL_SAFE_NO_PAD
            .decode(data.trim_end_matches('='))
            .map_err(|e| format!("data is not base64url: {e}"))?;
        let plaintext =
            payload::decrypt(&self.secret, &self.auth, &body).map_err(|e| e.to_string())?;
        Ok(Some(String::from_utf8_lossy(&plaintext).into_owned()))
    }
}

impl Dialect for WebPush {
    fn hello(&self) -> Value {
        // As Firefox: the uaid only once there is one.
        let mut hello = json!({"messageType": "hello", "broadcasts": {}, "use_webpush": true});
        if !self.identity.state.uaid.is_empty() {
            hello["uaid"] = json!(self.identity.state.uaid);
        }
        hello
    }

    /// Subscribes (registers its channel) only when it has no subscription yet, the
    /// server gave it a new uaid (it forgot the old one, and its endpoint with it), or the
    /// app server key changed; otherwise, as a browser, it keeps the endpoint it has.
    async fn on_hello(&mut self, uaid: &str) -> Handled {
        let new_uaid = self.identity.adopt_uaid(uaid).await?;
        let channel = self.identity.state.channel_ids.first().cloned();
        let mut frames = Vec::new();
        match (self.kept_endpoint().filter(|_| !new_uaid), channel) {
            (Some(endpoint), Some(channel)) => self.subscribed(&channel, &endpoint).await?,
            (_, channel) => {
                let mut register = json!({"messageType": "register", "channelID": channel});
                if let Some(key) = &self.vapid_public_key {
                    register["key"] = json!(key);
                }
                frames.push(register);
            }
        }
        frames.extend(self.identity.unregisters());
        Ok(frames)
    }

    async fn on_register(&mut self, channel_id: &str, endpoint: &str) -> Handled {
        let key = &self.vapid_public_key;
        if let Some(kept) = self.identity.state.webpush.as_mut()
            && (kept.endpoint.as_deref() != Some(endpoint) || kept.application_server_key != *key)
        {
            kept.endpoint = Some(endpoint.to_owned());
            kept.application_server_key = key.clone();
            self.identity.state.save(&self.identity.path).await?;
        }
        self.subscribed(channel_id, endpoint).await?;
        Ok(Vec::new())
    }

    async fn on_notification(&mut self, message: &Map<String, Value>) -> Handled {
        let channel = message.get("channelID").and_then(Value::as_str);
        let version = message.get("version").and_then(Value::as_str);
        let (Some(channel), Some(version)) = (channel, version) else {
            tracing::warn!(
                ?message,
                "ignoring a notification without channelID or version"
            );
            return Ok(Vec::new());
        };
        let ours = self
            .identity
            .state
            .channel_ids
            .iter()
            .any(|c| c.eq_ignore_ascii_case(channel));
        let code = if !ours {
            tracing::warn!(
                channel,
                "a notification for a channel this device does not have"
            );
            NOT_DELIVERED
        } else {
            match self.decrypt(message) {
                Ok(Some(text)) if !text.is_empty() => {
                    print(&format!(
                        "notification {channel} {version} {}",
                        escape(&text)
                    ))
                    .await?;
                    DELIVERED
                }
                Ok(_) => {
                    tracing::info!(channel, version, "a notification without data");
                    print(&format!("notification {channel} {version}")).await?;
                    DELIVERED
                }
                Err(why) => {
                    tracing::warn!(channel, version, "cannot decrypt a notification: {why}");
                    print(&format!("undecryptable {channel} {version} {why}")).await?;
                    DECRYPTION_FAILED
                }
            }
        };
        Ok(vec![json!({
            "messageType": "ack",
            "updates": [{"channelID": channel, "version": version, "code": code}],
        })])
    }
}
