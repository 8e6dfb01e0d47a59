//! A WebPush subscription as JSON, in the shape browsers' `PushSubscription.toJSON()`
//! gives it and pages hand to their app servers:
//!
//! ```json
//! {"endpoint":"http://…/wpush/v1/…","expirationTime":null,
//!  "keys":{"p256dh":"<base64url P-256 point>","auth":"<base64url 16 bytes>"}}
//! ```
//!
//! `simplepush client --webpush` writes one; `simplepush push --subscription` reads one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::PublicKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde::{Deserialize, Serialize};

use crate::cli::payload::AUTH_LEN;

/// A subscription: where to push, and the keys to encrypt for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The push endpoint URL.
    pub endpoint: String,
    /// The device's P-256 public key (`keys.p256dh`).
    pub p256dh: PublicKey,
    /// The auth secret shared with app servers (`keys.auth`).
    pub auth: [u8; AUTH_LEN],
}

/// Why a text is not a usable subscription; each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// Not JSON of the toJSON shape (serde names the missing or mistyped field).
    #[error("not a push subscription JSON ({0})")]
    Json(String),
    /// `keys.p256dh` is not a base64url uncompressed P-256 point.
    #[error("keys.p256dh is not a base64url P-256 public key ({0})")]
    P256dh(String),
    /// `keys.auth` is not 16 bytes of base64url.
    #[error("keys.auth is not a base64url 16-byte secret ({0})")]
    Auth(String),
}

/// The JSON shape.
#[derive(Debug, Serialize, Deserialize)]
struct Json {
    endpoint: String,
    /// Milliseconds since the epoch, or `null`; kept for the shape, not interpreted.
    #[serde(rename = "expirationTime", default)]
    expiration_time: Option<serde_json::Number>,
    keys: KeysJson,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeysJson {
    p256dh: String,
    auth: String,
}

impl Subscription {
    /// Parses the toJSON shape (`expirationTime` may be missing; other fields are
    /// ignored). Keys are base64url, padded or not, as browsers and libraries write them.
    pub fn parse(text: &str) -> Result<Subscription, SubscriptionError> {
        let json: Json =
            serde_json::from_str(text).map_err(|e| SubscriptionError::Json(e.to_string()))?;
        let p256dh = decode(&json.keys.p256dh).map_err(SubscriptionError::P256dh)?;
        if p256dh.len() != 65 {
            return Err(SubscriptionError::P256dh(format!(
                "{} bytes, not an uncompressed point of 65",
                p256dh.len()
            )));
        }
        let p256dh = PublicKey::from_sec1_bytes(&p256dh)
            .map_err(|_| SubscriptionError::P256dh("not a point on the curve".to_owned()))?;
        let auth = decode(&json.keys.auth).map_err(SubscriptionError::Auth)?;
        let auth = <[u8; AUTH_LEN]>::try_from(auth.as_slice())
            .map_err(|_| SubscriptionError::Auth(format!("{} bytes", auth.len())))?;
        Ok(Subscription {
            endpoint: json.endpoint,
            p256dh,
            auth,
        })
    }

    /// The toJSON shape, pretty-printed, with `"expirationTime": null`.
    pub fn to_json(&self) -> String {
        let json = Json {
            endpoint: self.endpoint.clone(),
            expiration_time: None,
            keys: KeysJson {
                p256dh: URL_SAFE_NO_PAD.encode(self.p256dh.to_encoded_point(false).as_bytes()),
                auth: URL_SAFE_NO_PAD.encode(self.auth),
            },
        };
        // A struct of strings always serializes.
        let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// base64url, with or without padding.
fn decode(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    fn text(p256dh: &str, auth: &str) -> String {
        json!({
            "endpoint": "http://localhost:8081/wpush/v1/abc",
            "expirationTime": null,
            "keys": {"p256dh": p256dh, "auth": auth},
        })
        .to_string()
    }

    #[test]
    fn the_browser_shape_round_trips() {
        let subscription = Subscription::parse(&text(P256DH, AUTH)).unwrap();
        assert_eq!(subscription.endpoint, "http://localhost:8081/wpush/v1/abc");
        let written: Value = serde_json::from_str(&subscription.to_json()).unwrap();
        assert_eq!(
            written,
            serde_json::from_str::<Value>(&text(P256DH, AUTH)).unwrap()
        );
        assert_eq!(
            Subscription::parse(&subscription.to_json()).unwrap(),
            subscription
        );
    }

    #[test]
    fn expiration_time_may_be_missing_or_a_number_and_padding_is_accepted() {
        let without = json!({
            "endpoint": "http://e/", "keys": {"p256dh": format!("{P256DH}="), "auth": format!("{AUTH}==")},
        });
        assert!(Subscription::parse(&without.to_string()).is_ok());
        let with_time = json!({
            "endpoint": "http://e/", "expirationTime": 1_900_000_000_000u64,
            "keys": {"p256dh": P256DH, "auth": AUTH}, "extra": true,
        });
        assert!(Subscription::parse(&with_time.to_string()).is_ok());
    }

    #[test]
    fn each_bad_part_is_named() {
        let json_error = |text: &str| match Subscription::parse(text) {
            Err(SubscriptionError::Json(reason)) => reason,
            other => panic!("{other:?}"),
        };
        assert!(json_error("not json").contains("expected"));
        assert!(json_error(r#"{"endpoint":"http://e/"}"#).contains("keys"));
        assert!(json_error(r#"{"endpoint":"http://e/","keys":{"p256dh":"x"}}"#).contains("auth"));
        for p256dh in ["***", "BCVx", &P256DH.replace("BCVx", "BDVx")] {
            assert!(
                matches!(
                    Subscription::parse(&text(p256dh, AUTH)),
                    Err(SubscriptionError::P256dh(_))
                ),
                "{p256dh}"
            );
        }
        for auth in ["***", "BTBZMqHH6r4Tts7J_aSI"] {
            assert!(
                matches!(
                    Subscription::parse(&text(P256DH, auth)),
                    Err(SubscriptionError::Auth(_))
                ),
                "{auth}"
            );
        }
    }
}
