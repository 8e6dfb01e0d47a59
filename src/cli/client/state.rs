//! The client's state file: who the device is (its uaid and channelIDs) and, for a
//! WebPush device, the keys its subscription was made with, so that a restarted client
//! resumes the same device and still decrypts what was pushed to it.

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use serde::{Deserialize, Serialize};

use super::ClientError;
use crate::cli::payload::AUTH_LEN;
use crate::device::protocol::is_uuid_shaped;

/// The state file's content.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct State {
    /// The uaid the server gave this device; empty before the first hello.
    #[serde(default)]
    pub uaid: String,
    /// The device's channels, in the order they were created.
    #[serde(default, rename = "channelIDs")]
    pub channel_ids: Vec<String>,
    /// A WebPush device's keys and subscription; absent for a SimplePush device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webpush: Option<WebPushState>,
}

/// What a WebPush device keeps: the private half of its `p256dh` key and the auth
/// secret (base64url), and, once subscribed, the endpoint it got and the app server key
/// it subscribed with. Like a browser it keeps its subscription across connections and
/// subscribes again only when the server forgot the device or the key changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebPushState {
    #[serde(rename = "privateKey")]
    private_key: String,
    auth: String,
    /// The pushEndpoint of the channel, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The VAPID public key the channel was registered with, if any.
    #[serde(
        default,
        rename = "applicationServerKey",
        skip_serializing_if = "Option::is_none"
    )]
    pub application_server_key: Option<String>,
}

impl WebPushState {
    /// A fresh key pair and auth secret.
    pub fn generate() -> WebPushState {
        let secret = SecretKey::random(&mut rand_core::OsRng);
        let mut auth = [0u8; AUTH_LEN];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
        WebPushState {
            private_key: URL_SAFE_NO_PAD.encode(secret.to_bytes()),
            auth: URL_SAFE_NO_PAD.encode(auth),
            endpoint: None,
            application_server_key: None,
        }
    }

    /// The private key and auth secret, or what is wrong with them.
    pub fn decode(&self) -> Result<(SecretKey, [u8; AUTH_LEN]), String> {
        let secret = URL_SAFE_NO_PAD
            .decode(&self.private_key)
            .ok()
            .and_then(|bytes| SecretKey::from_slice(&bytes).ok())
            .ok_or("webpush.privateKey is not a base64url P-256 private key")?;
        let auth = URL_SAFE_NO_PAD
            .decode(&self.auth)
            .ok()
            .and_then(|bytes| <[u8; AUTH_LEN]>::try_from(bytes.as_slice()).ok())
            .ok_or("webpush.auth is not a base64url 16-byte secret")?;
        Ok((secret, auth))
    }
}

impl State {
    /// Reads the state file; a missing file is a new device.
    pub async fn load(path: &Path) -> Result<State, ClientError> {
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(ClientError::StateIo {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let invalid = |reason: String| ClientError::StateInvalid {
            path: path.to_owned(),
            reason,
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if !state.uaid.is_empty() && !is_uuid_shaped(&state.uaid) {
            return Err(invalid(format!("uaid {:?} is not a UUID", state.uaid)));
        }
        let mut seen = HashSet::new();
        for channel in &state.channel_ids {
            if !is_uuid_shaped(channel) {
                return Err(invalid(format!("channelID {channel:?} is not a UUID")));
            }
            if !seen.insert(channel.to_ascii_lowercase()) {
                return Err(invalid(format!("channelID {channel} is listed twice")));
            }
        }
        if let Some(keys) = &state.webpush {
            keys.decode().map_err(invalid)?;
        }
        Ok(state)
    }

    /// Replaces the state file (written beside it, then renamed over it, so that a crash
    /// never leaves half a file). Only its owner may read it: it may hold a private key.
    pub async fn save(&self, path: &Path) -> Result<(), ClientError> {
        let io_error = |source| ClientError::StateIo {
            path: path.to_owned(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| io_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        text.push('\n');
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let write = {
            let temporary = temporary.clone();
            move || -> io::Result<()> {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&temporary)?;
                file.write_all(text.as_bytes())?;
                file.sync_all()
            }
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| io_error(io::Error::other(e)))?
            .map_err(io_error)?;
        tokio::fs::rename(&temporary, path).await.map_err(io_error)
    }

    /// Keeps the first `wanted` channels (all when `None`, at least one) and creates
    /// missing ones; returns the channels dropped.
    pub fn plan_channels(&mut self, wanted: Option<u16>) -> Vec<String> {
        let wanted = match wanted {
            Some(n) => usize::from(n),
            None => self.channel_ids.len().max(1),
        };
        let dropped = self
            .channel_ids
            .split_off(wanted.min(self.channel_ids.len()));
        while self.channel_ids.len() < wanted {
            self.channel_ids.push(uuid::Uuid::new_v4().to_string());
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_topped_up_or_dropped_in_order() {
        let mut new_device = State::default();
        assert!(new_device.plan_channels(None).is_empty());
        assert_eq!(new_device.channel_ids.len(), 1);
        assert!(is_uuid_shaped(&new_device.channel_ids[0]));

        let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let mut kept = State {
            channel_ids: ids.clone(),
            ..State::default()
        };
        assert!(kept.plan_channels(None).is_empty());
        assert_eq!(kept.channel_ids, ids);

        let mut fewer = kept.clone();
        assert_eq!(fewer.plan_channels(Some(1)), ids[1..]);
        assert_eq!(fewer.channel_ids, ids[..1]);

        let mut more = kept.clone();
        assert!(more.plan_channels(Some(5)).is_empty());
        assert_eq!(more.channel_ids[..3], ids[..]);
        assert_eq!(more.channel_ids.len(), 5);
        assert_ne!(more.channel_ids[3], more.channel_ids[4]);
    }

    #[tokio::test]
    async fn state_round_trips_and_bad_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).await.unwrap(), State::default());

        let state = State {
            uaid: uuid::Uuid::new_v4().simple().to_string(),
            channel_ids: vec![uuid::Uuid::new_v4().to_string()],
            webpush: None,
        };
        state.save(&path).await.unwrap();
        assert_eq!(State::load(&path).await.unwrap(), state);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"channelIDs\""), "{text}");
        assert!(!text.contains("webpush"), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut keys = WebPushState::generate();
        keys.endpoint = Some("http://localhost:8081/wpush/v1/x".to_owned());
        let webpush = State {
            webpush: Some(keys),
            ..state
        };
        webpush.save(&path).await.unwrap();
        let loaded = State::load(&path).await.unwrap();
        assert_eq!(loaded, webpush);
        let (secret, auth) = loaded.webpush.unwrap().decode().unwrap();
        let (again, again_auth) = webpush.webpush.as_ref().unwrap().decode().unwrap();
        assert_eq!((secret.to_bytes(), auth), (again.to_bytes(), again_auth));

        for bad in [
            "not json",
            r#"{"uaid":"nope","channelIDs":[]}"#,
            r#"{"uaid":"","channelIDs":["xyz"]}"#,
            r#"{"channelIDs":["5a0fc5d5-3f0a-4f4c-9c5b-2e3c1a2b3c4d","5A0FC5D5-3F0A-4F4C-9C5B-2E3C1A2B3C4D"]}"#,
            r#"{"webpush":{"privateKey":"AAAA","auth":"BTBZMqHH6r4Tts7J_aSIgg"}}"#,
            r#"{"webpush":{"privateKey":"q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94","auth":"AAAA"}}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(
                    State::load(&path).await,
                    Err(ClientError::StateInvalid { .. })
                ),
                "{bad}"
            );
        }
    }
}
