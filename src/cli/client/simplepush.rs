//! The SimplePush device: says hello with its uaid and channelIDs, registers every
//! channel, prints each update (`notification <channelID> <version> [data]`) and each
//! expired channel, and acknowledges all of a frame's in one ack.

use serde_json::{Map, Value, json};

use super::connection::{Dialect, Handled};
use super::{Identity, escape, print};

/// A SimplePush device.
pub(super) struct SimplePush {
    identity: Identity,
}

impl SimplePush {
    pub fn new(identity: Identity) -> SimplePush {
        SimplePush { identity }
    }
}

impl Dialect for SimplePush {
    fn hello(&self) -> Value {
        json!({
            "messageType": "hello",
            "uaid": self.identity.state.uaid,
            "channelIDs": self.identity.state.channel_ids,
        })
    }

    /// Registers every channel at every hello: register is idempotent, and its reply
    /// carries each channel's current endpoint (it changes when the server's token key
    /// or the device's uaid does).
    async fn on_hello(&mut self, uaid: &str) -> Handled {
        self.identity.adopt_uaid(uaid).await?;
        let channels = &self.identity.state.channel_ids;
        let mut frames: Vec<Value> = channels
            .iter()
            .map(|channel| json!({"messageType": "register", "channelID": channel}))
            .collect();
        frames.extend(self.identity.unregisters());
        Ok(frames)
    }

    async fn on_register(&mut self, channel_id: &str, endpoint: &str) -> Handled {
        print(&format!("endpoint {channel_id} {endpoint}")).await?;
        Ok(Vec::new())
    }

    async fn on_notification(&mut self, message: &Map<String, Value>) -> Handled {
        let mut acked = Vec::new();
        for update in list(message, "updates") {
            let channel = update.get("channelID").and_then(Value::as_str);
            let version = update.get("version").and_then(Value::as_u64);
            let (Some(channel), Some(version)) = (channel, version) else {
                tracing::warn!(%update, "ignoring a malformed update");
                continue;
            };
            let line = match update.get("data").and_then(Value::as_str) {
                Some(data) if !data.is_empty() => {
                    format!("notification {channel} {version} {}", escape(data))
                }
                _ => format!("notification {channel} {version}"),
            };
            print(&line).await?;
            acked.push(json!({"channelID": channel, "version": version}));
        }
        let mut expired = Vec::new();
        for channel in list(message, "expired") {
            let Some(channel) = channel.as_str() else {
                tracing::warn!(%channel, "ignoring a malformed expired entry");
                continue;
            };
            print(&format!("expired {channel}")).await?;
            expired.push(channel.to_owned());
        }
        if acked.is_empty() && expired.is_empty() {
            return Ok(Vec::new());
        }
        let mut ack = Map::new();
        ack.insert("messageType".to_owned(), json!("ack"));
        if !acked.is_empty() {
            ack.insert("updates".to_owned(), Value::Array(acked));
        }
        if !expired.is_empty() {
            ack.insert("expired".to_owned(), json!(expired));
        }
        Ok(vec![Value::Object(ack)])
    }
}

/// The array under `key`, empty when absent or not an array.
fn list<'m>(message: &'m Map<String, Value>, key: &str) -> &'m [Value] {
    message
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}
