//! The WebPush dialect of the device websocket (docs/protocol.md): what a device says
//! once its hello carried `"use_webpush": true`, and the frames the server sends it.
//! The session machinery (timers, retry, registry) is shared with SimplePush
//! ([`crate::device::session`]); only the parsing and the replies differ.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value};
use simplepush_store::{ChannelId, Message, MessageId, Uaid};

use crate::app::App;
use crate::device::protocol::{ErrorFrame, Fields, Refusal, echoing, parse_channel};

/// The longest uaid a WebPush device may keep, in characters (docs/protocol.md).
pub const MAX_UAID_CHARS: usize = 128;

/// The pushEndpoint of a WebPush channel: `/wpush/v1/{token}`, or `/wpush/v2/{token}`
/// bound to the app server's `key` when the device sent one. Every call gives another
/// endpoint (tokens carry a random nonce).
pub fn push_endpoint(app: &App, uaid: &Uaid, channel: &ChannelId, key: Option<&[u8]>) -> String {
    let version = if key.is_some() { 2 } else { 1 };
    let token = app.tokens.encode_webpush(uaid, channel, key);
    format!("{}/wpush/v{version}/{token}", app.endpoint_url)
}

/// The longest message id an ack or nack can name, in bytes: longer ones name no
/// message the server minted and are skipped.
pub const MAX_ID_BYTES: usize = 128;

/// Messages read from the store and sent at once: at hello, on retry, and again once
/// the device has acknowledged what it was sent.
pub const PAGE: usize = 100;

/// A message from a device in a WebPush session, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `{}` or `{"messageType":"ping"}`.
    Ping,
    /// Another `hello`: the socket already had its one reply.
    Hello,
    /// `register`, with the app server's key (the raw 65-byte point) when one was sent.
    Register {
        /// As sent.
        channel_id: String,
        /// A valid uncompressed P-256 point.
        key: Option<Vec<u8>>,
    },
    /// `unregister` of a UUID-shaped channel id.
    Unregister {
        /// As sent.
        channel_id: String,
    },
    /// `ack` of delivered messages.
    Ack {
        /// Each listed message id with its `code`, if one was sent as an integer.
        updates: Vec<(String, Option<u64>)>,
        /// `updates` exactly as sent: what an error frame echoes.
        sent_updates: Value,
    },
    /// `nack`: the page's handler failed; counted, no reply.
    Nack {
        /// The `code`, if sent as an integer.
        code: Option<u64>,
    },
    /// `broadcast_subscribe`: accepted; the server knows no broadcasts.
    BroadcastSubscribe,
    /// Any other `messageType` (or none): ignored, as Firefox ignores what it does not know.
    Unknown,
}

impl Command {
    /// The label the command is counted under.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Hello => "hello",
            Command::Register { .. } => "register",
            Command::Unregister { .. } => "unregister",
            Command::Ack { .. } => "ack",
            Command::Nack { .. } => "nack",
            Command::BroadcastSubscribe => "broadcast_subscribe",
            Command::Unknown => "unknown",
        }
    }
}

/// Parses one websocket message of a WebPush session. Invalid JSON or a non-object is
/// [`Refusal::NotAnObject`] (close 1007), as in every session.
pub fn parse(frame: &[u8]) -> Result<Command, Refusal> {
    let value: Value = serde_json::from_slice(frame).map_err(|_| Refusal::NotAnObject)?;
    let Value::Object(object) = value else {
        return Err(Refusal::NotAnObject);
    };
    if object.is_empty() {
        return Ok(Command::Ping);
    }
    let fields = Fields::new(object);
    let message_type = match fields.get("messagetype") {
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        _ => return Ok(Command::Unknown),
    };
    let command = match message_type.as_str() {
        "ping" => Ok(Command::Ping),
        "hello" => Ok(Command::Hello),
        "register" => parse_register(&fields),
        "unregister" => parse_channel(&fields).map(|channel_id| Command::Unregister { channel_id }),
        "ack" => parse_ack(&fields),
        "nack" => Ok(Command::Nack {
            code: fields.get("code").and_then(Value::as_u64),
        }),
        "broadcast_subscribe" => Ok(Command::BroadcastSubscribe),
        _ => Ok(Command::Unknown),
    };
    command.map_err(|frame| Refusal::Invalid(frame.for_type(&message_type)))
}

fn parse_register(fields: &Fields) -> Result<Command, ErrorFrame> {
    let channel_id = parse_channel(fields)?;
    let fail = |reason: &str| {
        echoing(
            fields,
            "channelid",
            "channelID",
            ErrorFrame::new(401, reason),
        )
    };
    let key = match fields.get("key") {
        None => None,
        Some(Value::String(key)) => Some(
            decode_key(key)
                .ok_or_else(|| fail("key is not a base64url P-256 public key (65-byte point)"))?,
        ),
        Some(_) => return Err(fail("key is not a string")),
    };
    Ok(Command::Register { channel_id, key })
}

/// The raw point of an app server's key: base64url, padded or not, of a 65-byte
/// uncompressed point that lies on P-256.
pub fn decode_key(text: &str) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
    if bytes.len() != 65 || bytes[0] != 0x04 {
        return None;
    }
    p256::PublicKey::from_sec1_bytes(&bytes).ok()?;
    Some(bytes)
}

fn parse_ack(fields: &Fields) -> Result<Command, ErrorFrame> {
    let fail = |reason: &str| echoing(fields, "updates", "updates", ErrorFrame::new(401, reason));
    let Some(sent) = fields.get("updates") else {
        return Err(fail("ack needs updates"));
    };
    let Value::Array(items) = sent else {
        return Err(fail("updates is not an array"));
    };
    let updates = items
        .iter()
        .map(acked_message)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| fail("each of updates must be {\"version\": string, \"code\": integer}"))?;
    Ok(Command::Ack {
        updates,
        sent_updates: sent.clone(),
    })
}

/// One entry of an ack: its `version` (a message id) and its `code`.
fn acked_message(item: &Value) -> Option<(String, Option<u64>)> {
    let Value::Object(object) = item else {
        return None;
    };
    let fields = Fields::new(object.clone());
    let version = fields.get("version")?.as_str()?.to_owned();
    let code = match fields.get("code") {
        None => None,
        Some(code) => Some(code.as_u64()?),
    };
    Some((version, code))
}

/// The message ids of one ack, each once; `None` when it names more than `max`
/// distinct ids (the SimplePush ack's cap, docs/protocol.md). Ids too long to be one
/// the server minted are left out.
pub fn distinct_ids(updates: &[(String, Option<u64>)], max: usize) -> Option<Vec<MessageId>> {
    let mut ids: Vec<&str> = updates
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    (ids.len() <= max).then(|| ids.into_iter().map(MessageId::from).collect())
}

/// The label an ack's code is counted under: the codes Firefox sends, else `other`.
pub fn ack_code_label(code: Option<u64>) -> &'static str {
    match code {
        Some(100) => "100",
        Some(101) => "101",
        Some(102) => "102",
        _ => "other",
    }
}

/// The label a nack's code is counted under: the codes Firefox sends, else `other`.
pub fn nack_code_label(code: Option<u64>) -> &'static str {
    match code {
        Some(301) => "301",
        Some(302) => "302",
        Some(303) => "303",
        _ => "other",
    }
}

/// Whether a uaid a WebPush device sent may be kept at all (1..128 characters).
pub fn uaid_acceptable(uaid: &str) -> bool {
    (1..=MAX_UAID_CHARS).contains(&uaid.chars().count())
}

/// `{"messageType":"hello","uaid":..,"status":200,"use_webpush":true,"broadcasts":{}}`.
#[derive(Debug, Serialize)]
pub struct HelloReply<'a> {
    #[serde(rename = "messageType")]
    message_type: &'static str,
    uaid: &'a str,
    status: u16,
    use_webpush: bool,
    broadcasts: Map<String, Value>,
}

impl<'a> HelloReply<'a> {
    /// A successful WebPush hello for `uaid`.
    pub fn new(uaid: &'a str) -> Self {
        HelloReply {
            message_type: "hello",
            uaid,
            status: 200,
            use_webpush: true,
            broadcasts: Map::new(),
        }
    }
}

/// `{"messageType":"unregister","channelID":..,"status":200}`.
#[derive(Debug, Serialize)]
pub struct UnregisterReply<'a> {
    #[serde(rename = "messageType")]
    message_type: &'static str,
    #[serde(rename = "channelID")]
    channel_id: &'a str,
    status: u16,
}

impl<'a> UnregisterReply<'a> {
    /// A successful unregister.
    pub fn new(channel_id: &'a str) -> Self {
        UnregisterReply {
            message_type: "unregister",
            channel_id,
            status: 200,
        }
    }
}

/// The encoding headers of a notification with data.
#[derive(Debug, Serialize)]
struct Headers<'a> {
    encoding: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crypto_key: Option<&'a str>,
}

/// One message: `{"messageType":"notification","channelID":..,"version":"<id>",
/// "ttl":N[,"data":..,"headers":{..}]}`.
#[derive(Debug, Serialize)]
struct Notification<'a> {
    #[serde(rename = "messageType")]
    message_type: &'static str,
    #[serde(rename = "channelID")]
    channel_id: &'a str,
    version: &'a str,
    ttl: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Headers<'a>>,
}

/// The notification frame of `message`: `data` (the body, base64url without padding)
/// and `headers` only when it has a payload; `encryption` and `crypto_key` only for
/// the legacy `aesgcm` encoding.
pub fn notification(message: &Message) -> String {
    let (data, headers) = match &message.payload {
        None => (None, None),
        Some(payload) => {
            let legacy = payload.encoding.eq_ignore_ascii_case("aesgcm");
            let headers = Headers {
                encoding: &payload.encoding,
                encryption: payload.encryption.as_deref().filter(|_| legacy),
                crypto_key: payload.crypto_key.as_deref().filter(|_| legacy),
            };
            (Some(URL_SAFE_NO_PAD.encode(&payload.body)), Some(headers))
        }
    };
    crate::device::protocol::to_text(&Notification {
        message_type: "notification",
        channel_id: message.channel.as_str(),
        version: message.id.as_str(),
        ttl: message.ttl,
        data,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use simplepush_store::{ChannelId, Payload, Urgency};

    const CHID: &str = "5a0fc5d5-3f0a-4f4c-9c5b-2e3c1a2b3c4d";

    /// The P-256 generator point, uncompressed: a key that is on the curve.
    fn generator() -> Vec<u8> {
        let mut point = vec![0x04];
        point.extend(
            [
                "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
                "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
            ]
            .iter()
            .flat_map(|hex| {
                (0..hex.len())
                    .step_by(2)
                    .map(move |i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            }),
        );
        point
    }

    fn parse_str(s: &str) -> Result<Command, Refusal> {
        parse(s.as_bytes())
    }

    fn refused(s: &str) -> ErrorFrame {
        match parse_str(s) {
            Err(Refusal::Invalid(frame)) => frame,
            other => panic!("{s}: expected an error frame, got {other:?}"),
        }
    }

    #[test]
    fn pings_and_not_objects_as_in_every_session() {
        assert_eq!(parse_str(" {} "), Ok(Command::Ping));
        assert_eq!(parse_str(r#"{"messageType":"PING"}"#), Ok(Command::Ping));
        for s in ["", "[]", "1", "null", "{\"a\":"] {
            assert_eq!(parse_str(s), Err(Refusal::NotAnObject), "{s:?}");
        }
    }

    #[test]
    fn unknown_missing_or_odd_message_types_are_ignored() {
        for s in [
            r#"{"messageType":"bogus"}"#,
            r#"{"messageType":""}"#,
            r#"{"messageType":7}"#,
            r#"{"uaid":"x"}"#,
        ] {
            assert_eq!(parse_str(s), Ok(Command::Unknown), "{s}");
        }
        assert_eq!(
            parse_str(r#"{"messageType":"Broadcast_Subscribe","broadcasts":{"a":"v1"}}"#),
            Ok(Command::BroadcastSubscribe)
        );
        assert_eq!(
            parse_str(r#"{"messageType":"hello","use_webpush":true}"#),
            Ok(Command::Hello)
        );
    }

    #[test]
    fn register_without_key_or_with_a_point_on_the_curve() {
        assert_eq!(
            parse_str(&format!(
                r#"{{"messageType":"register","channelID":"{CHID}"}}"#
            )),
            Ok(Command::Register {
                channel_id: CHID.into(),
                key: None
            })
        );
        let point = generator();
        let unpadded = URL_SAFE_NO_PAD.encode(&point);
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&point);
        assert!(padded.ends_with('='));
        for key in [unpadded, padded] {
            let text =
                format!(r#"{{"messageType":"register","channelID":"{CHID}","key":"{key}"}}"#);
            assert_eq!(
                parse_str(&text),
                Ok(Command::Register {
                    channel_id: CHID.into(),
                    key: Some(point.clone())
                }),
                "{key}"
            );
        }
        let null_key = format!(r#"{{"messageType":"register","channelID":"{CHID}","key":null}}"#);
        assert!(matches!(
            parse_str(&null_key),
            Ok(Command::Register { key: None, .. })
        ));
    }

    #[test]
    fn register_with_a_bad_key_is_401_echoing_the_channel() {
        let point = generator();
        let mut off_curve = point.clone();
        off_curve[64] ^= 1;
        let mut compressed = vec![0x02];
        compressed.extend_from_slice(&point[1..33]);
        let mut wrong_tag = point.clone();
        wrong_tag[0] = 0x05;
        let bad_keys = [
            URL_SAFE_NO_PAD.encode(&off_curve),
            URL_SAFE_NO_PAD.encode(&compressed),
            URL_SAFE_NO_PAD.encode(&wrong_tag),
            URL_SAFE_NO_PAD.encode(&point[..64]),
            URL_SAFE_NO_PAD.encode([0u8; 65]),
            // '+' is not in the base64url alphabet.
            format!("+{}", URL_SAFE_NO_PAD.encode(&point)),
            "not base64!".to_owned(),
            String::new(),
        ];
        for key in bad_keys {
            let text =
                format!(r#"{{"messageType":"register","channelID":"{CHID}","key":"{key}"}}"#);
            let frame = refused(&text);
            assert_eq!(
                (frame.status, frame.error),
                (401, "Invalid Command"),
                "{key}"
            );
            assert_eq!(frame.message_type.as_deref(), Some("register"));
            assert_eq!(frame.echo.get("channelID"), Some(&json!(CHID)));
        }
        let frame = refused(&format!(
            r#"{{"messageType":"register","channelID":"{CHID}","key":5}}"#
        ));
        assert_eq!(frame.reason, "key is not a string");
        let frame = refused(r#"{"messageType":"register","channelID":"xyz"}"#);
        assert_eq!(frame.reason, "channelID is not a UUID");
    }

    #[test]
    fn unregister_needs_a_uuid_and_ignores_code() {
        assert_eq!(
            parse_str(&format!(
                r#"{{"messageType":"unregister","channelID":"{CHID}","code":200}}"#
            )),
            Ok(Command::Unregister {
                channel_id: CHID.into()
            })
        );
        assert_eq!(refused(r#"{"messageType":"unregister"}"#).status, 401);
    }

    #[test]
    fn ack_lists_string_versions_with_their_codes() {
        let text = format!(
            r#"{{"messageType":"ack","updates":[{{"channelID":"{CHID}","version":"m1","code":100}},{{"Version":"m2","CODE":102}},{{"version":"m3"}}]}}"#
        );
        match parse_str(&text) {
            Ok(Command::Ack {
                updates,
                sent_updates,
            }) => {
                assert_eq!(
                    updates,
                    vec![
                        ("m1".into(), Some(100)),
                        ("m2".into(), Some(102)),
                        ("m3".into(), None)
                    ]
                );
                assert_eq!(sent_updates.as_array().map(Vec::len), Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_acks_are_401_echoing_updates() {
        refused(r#"{"messageType":"ack"}"#);
        refused(r#"{"messageType":"ack","updates":{}}"#);
        let frame = refused(r#"{"messageType":"ack","updates":[{"version":3}]}"#);
        assert_eq!(frame.echo.get("updates"), Some(&json!([{"version":3}])));
        refused(r#"{"messageType":"ack","updates":[{"version":"m","code":"100"}]}"#);
        refused(r#"{"messageType":"ack","updates":["m"]}"#);
    }

    #[test]
    fn nack_is_counted_by_code() {
        assert_eq!(
            parse_str(r#"{"messageType":"nack","version":"m","code":301}"#),
            Ok(Command::Nack { code: Some(301) })
        );
        assert_eq!(
            parse_str(r#"{"messageType":"nack"}"#),
            Ok(Command::Nack { code: None })
        );
        assert_eq!(nack_code_label(Some(301)), "301");
        assert_eq!(nack_code_label(Some(303)), "303");
        assert_eq!(nack_code_label(Some(999)), "other");
        assert_eq!(ack_code_label(Some(100)), "100");
        assert_eq!(ack_code_label(Some(101)), "101");
        assert_eq!(ack_code_label(Some(102)), "102");
        assert_eq!(ack_code_label(None), "other");
    }

    #[test]
    fn distinct_ids_dedupe_skip_impossible_ids_and_cap() {
        let updates: Vec<(String, Option<u64>)> = ["b", "a", "b", "", &"x".repeat(129)]
            .iter()
            .map(|id| (id.to_string(), Some(100)))
            .collect();
        assert_eq!(
            distinct_ids(&updates, 2),
            Some(vec![MessageId::from("a"), MessageId::from("b")])
        );
        assert_eq!(distinct_ids(&updates, 1), None);
        let repeated: Vec<_> = (0..1000).map(|i| (format!("m{}", i % 3), None)).collect();
        assert_eq!(distinct_ids(&repeated, 3).map(|ids| ids.len()), Some(3));
    }

    #[test]
    fn uaids_of_1_to_128_characters_are_acceptable() {
        assert!(uaid_acceptable("u"));
        assert!(uaid_acceptable(&"é".repeat(128)));
        assert!(!uaid_acceptable(""));
        assert!(!uaid_acceptable(&"u".repeat(129)));
    }

    #[test]
    fn replies_have_the_exact_fields() {
        let hello: Value =
            serde_json::from_str(&crate::device::protocol::to_text(&HelloReply::new("u"))).unwrap();
        assert_eq!(
            hello,
            json!({"messageType":"hello","uaid":"u","status":200,"use_webpush":true,"broadcasts":{}})
        );
        let unregister: Value = serde_json::from_str(&crate::device::protocol::to_text(
            &UnregisterReply::new("c"),
        ))
        .unwrap();
        assert_eq!(
            unregister,
            json!({"messageType":"unregister","channelID":"c","status":200})
        );
    }

    fn message(payload: Option<Payload>) -> Message {
        Message {
            id: MessageId::from("m-1"),
            channel: ChannelId::from(CHID),
            ttl: 60,
            expires_at: u64::MAX,
            topic: Some("t".into()),
            urgency: Urgency::High,
            payload,
        }
    }

    #[test]
    fn a_notification_without_payload_has_no_data_nor_headers() {
        let frame: Value = serde_json::from_str(&notification(&message(None))).unwrap();
        assert_eq!(
            frame,
            json!({"messageType":"notification","channelID":CHID,"version":"m-1","ttl":60})
        );
    }

    #[test]
    fn a_notification_carries_the_body_base64url_unpadded_and_its_encoding() {
        let payload = Payload {
            encoding: "aes128gcm".into(),
            encryption: Some("ignored".into()),
            crypto_key: Some("ignored".into()),
            body: vec![0xfb, 0xff, 0xfe, 0x00],
        };
        let frame: Value = serde_json::from_str(&notification(&message(Some(payload)))).unwrap();
        assert_eq!(
            frame,
            json!({"messageType":"notification","channelID":CHID,"version":"m-1","ttl":60,
                   "data":"-__-AA","headers":{"encoding":"aes128gcm"}})
        );
    }

    #[test]
    fn an_aesgcm_notification_also_carries_encryption_and_crypto_key() {
        let payload = Payload {
            encoding: "aesgcm".into(),
            encryption: Some("salt=abc".into()),
            crypto_key: Some("dh=def".into()),
            body: b"hi".to_vec(),
        };
        let frame: Value = serde_json::from_str(&notification(&message(Some(payload)))).unwrap();
        assert_eq!(
            frame,
            json!({"messageType":"notification","channelID":CHID,"version":"m-1","ttl":60,
                   "data":"aGk","headers":{"encoding":"aesgcm","encryption":"salt=abc","crypto_key":"dh=def"}})
        );
    }
}
