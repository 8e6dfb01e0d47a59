//! The websocket messages of docs/protocol.md: parsing what devices send (keys and
//! `messageType` matched case-insensitively) and the frames the server sends back.

use serde::Serialize;
use serde_json::{Map, Value};

/// A message from a device, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `{}` or `{"messageType":"ping"}`.
    Ping,
    /// `hello`: the device's uaid (None when missing or empty) and channel ids, if sent.
    Hello {
        /// The uaid as sent; `None` when missing, null or empty.
        uaid: Option<String>,
        /// `channelIDs` as sent; `None` when the key is absent.
        channel_ids: Option<Vec<String>>,
        /// `"use_webpush": true`: the socket speaks WebPush (docs/protocol.md).
        webpush: bool,
    },
    /// `register` of a UUID-shaped channel id.
    Register {
        /// As sent.
        channel_id: String,
    },
    /// `unregister` of a UUID-shaped channel id.
    Unregister {
        /// As sent.
        channel_id: String,
    },
    /// `ack` of delivered updates and reported expiries.
    Ack {
        /// (channelID, version) pairs.
        updates: Vec<(String, u64)>,
        /// Channel ids whose expiry is acknowledged.
        expired: Vec<String>,
        /// `updates` exactly as sent, if sent: what an error frame echoes.
        sent_updates: Option<Value>,
    },
}

impl Command {
    /// The command's `messageType` ("ping" for `{}`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Hello { .. } => "hello",
            Command::Register { .. } => "register",
            Command::Unregister { .. } => "unregister",
            Command::Ack { .. } => "ack",
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Not JSON, or JSON that is not an object: close 1007 with no reply.
    NotAnObject,
    /// A command the server answers with an error frame and close.
    Invalid(ErrorFrame),
}

/// An error reply (docs/protocol.md), sent before the server closes the socket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorFrame {
    /// The command's type, lower-cased, when the device sent one as a string.
    #[serde(rename = "messageType", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// 401, 500 or 503.
    pub status: u16,
    /// "Invalid Command", "Service Unavailable" or "Internal Server Error".
    pub error: &'static str,
    /// What was wrong, in plain words.
    pub reason: String,
    /// The identifying fields the device sent (uaid, channelID, updates), echoed.
    #[serde(flatten)]
    pub echo: Map<String, Value>,
}

impl ErrorFrame {
    /// A frame for `status` with the matching `error` text.
    pub fn new(status: u16, reason: impl Into<String>) -> ErrorFrame {
        let error = match status {
            401 => "Invalid Command",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        ErrorFrame {
            message_type: None,
            status,
            error,
            reason: reason.into(),
            echo: Map::new(),
        }
    }

    /// The same frame, naming the command it answers.
    pub fn for_type(mut self, message_type: &str) -> ErrorFrame {
        self.message_type = Some(message_type.to_owned());
        self
    }

    /// The same frame, echoing `key: value`.
    pub fn echo(mut self, key: &str, value: Value) -> ErrorFrame {
        self.echo.insert(key.to_owned(), value);
        self
    }
}

/// Whether `id` is UUID-shaped: 32 hex digits, or 36 characters with dashes at 8, 13, 18
/// and 23; any case.
pub fn is_uuid_shaped(id: &str) -> bool {
    let bytes = id.as_bytes();
    match bytes.len() {
        32 => bytes.iter().all(u8::is_ascii_hexdigit),
        36 => bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

/// A JSON object whose keys are looked up case-insensitively.
pub(crate) struct Fields(Map<String, Value>);

impl Fields {
    pub(crate) fn new(object: Map<String, Value>) -> Fields {
        Fields(
            object
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        )
    }

    /// The value of `key` (lower-case), treating `null` as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
}

/// Parses one websocket message.
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
        None => return Err(invalid(ErrorFrame::new(401, "messageType is missing"))),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(invalid(
                ErrorFrame::new(401, "messageType is empty").for_type(""),
            ));
        }
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(_) => return Err(invalid(ErrorFrame::new(401, "messageType is not a string"))),
    };
    let command = match message_type.as_str() {
        "ping" => Ok(Command::Ping),
        "hello" => parse_hello(&fields),
        "register" => parse_channel(&fields).map(|channel_id| Command::Register { channel_id }),
        "unregister" => parse_channel(&fields).map(|channel_id| Command::Unregister { channel_id }),
        "ack" => parse_ack(&fields),
        other => Err(ErrorFrame::new(
            401,
            format!("unknown messageType `{other}`"),
        )),
    };
    command.map_err(|frame| invalid(frame.for_type(&message_type)))
}

fn invalid(frame: ErrorFrame) -> Refusal {
    Refusal::Invalid(frame)
}

/// Adds the field the device sent under `key` to the error frame.
pub(crate) fn echoing(fields: &Fields, key: &str, name: &str, frame: ErrorFrame) -> ErrorFrame {
    match fields.get(key) {
        Some(value) => frame.echo(name, value.clone()),
        None => frame,
    }
}

fn parse_hello(fields: &Fields) -> Result<Command, ErrorFrame> {
    let fail = |reason: &str| echoing(fields, "uaid", "uaid", ErrorFrame::new(401, reason));
    let uaid = match fields.get("uaid") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(fail("uaid is not a string")),
    };
    let channel_ids = array_field(fields, "channelids", string_item).map_err(|e| match e {
        Malformed::NotArray => fail("channelIDs is not an array"),
        Malformed::BadItem => fail("channelIDs must be an array of strings"),
    })?;
    // Only a JSON `true` asks for WebPush; anything else is a SimplePush hello.
    let webpush = fields.get("use_webpush") == Some(&Value::Bool(true));
    Ok(Command::Hello {
        uaid,
        channel_ids,
        webpush,
    })
}

pub(crate) fn parse_channel(fields: &Fields) -> Result<String, ErrorFrame> {
    let fail = |reason: &str| {
        echoing(
            fields,
            "channelid",
            "channelID",
            ErrorFrame::new(401, reason),
        )
    };
    match fields.get("channelid") {
        None => Err(fail("channelID is missing")),
        Some(Value::String(id)) if is_uuid_shaped(id) => Ok(id.clone()),
        Some(Value::String(_)) => Err(fail("channelID is not a UUID")),
        Some(_) => Err(fail("channelID is not a string")),
    }
}

fn parse_ack(fields: &Fields) -> Result<Command, ErrorFrame> {
    let fail = |reason: &str| echoing(fields, "updates", "updates", ErrorFrame::new(401, reason));
    let updates = array_field(fields, "updates", parse_acked_update).map_err(|e| match e {
        Malformed::NotArray => fail("updates is not an array"),
        Malformed::BadItem => {
            fail("each of updates must be {\"channelID\": UUID string, \"version\": integer}")
        }
    })?;
    let expired = array_field(fields, "expired", uuid_item).map_err(|e| match e {
        Malformed::NotArray => fail("expired is not an array"),
        Malformed::BadItem => fail("expired must be an array of channelIDs (UUID strings)"),
    })?;
    if updates.is_none() && expired.is_none() {
        return Err(fail("ack needs updates or expired"));
    }
    Ok(Command::Ack {
        updates: updates.unwrap_or_default(),
        expired: expired.unwrap_or_default(),
        sent_updates: fields.get("updates").cloned(),
    })
}

/// How an array field is malformed.
enum Malformed {
    /// The field is not an array.
    NotArray,
    /// An item is not what the field holds.
    BadItem,
}

/// An optional array field (absent or null: `None`) whose every item `item` accepts.
fn array_field<T>(
    fields: &Fields,
    key: &str,
    item: impl Fn(&Value) -> Option<T>,
) -> Result<Option<Vec<T>>, Malformed> {
    match fields.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(item)
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or(Malformed::BadItem),
        Some(_) => Err(Malformed::NotArray),
    }
}

fn string_item(item: &Value) -> Option<String> {
    item.as_str().map(str::to_owned)
}

/// A channelID item: a UUID-shaped string (any other can name no channel).
fn uuid_item(item: &Value) -> Option<String> {
    item.as_str()
        .filter(|id| is_uuid_shaped(id))
        .map(str::to_owned)
}

fn parse_acked_update(item: &Value) -> Option<(String, u64)> {
    let Value::Object(object) = item else {
        return None;
    };
    let fields = Fields::new(object.clone());
    let channel = uuid_item(fields.get("channelid")?)?;
    let version = fields.get("version")?.as_u64()?;
    Some((channel, version))
}

/// `{"messageType":"hello","uaid":..,"status":200}`.
#[derive(Debug, Serialize)]
pub struct HelloReply<'a> {
    #[serde(rename = "messageType")]
    message_type: &'static str,
    uaid: &'a str,
    status: u16,
}

impl<'a> HelloReply<'a> {
    /// A successful hello for `uaid`.
    pub fn new(uaid: &'a str) -> Self {
        HelloReply {
            message_type: "hello",
            uaid,
            status: 200,
        }
    }
}

/// `{"messageType":"register","uaid":..,"status":200,"channelID":..,"pushEndpoint":..}`.
#[derive(Debug, Serialize)]
pub struct RegisterReply<'a> {
    #[serde(rename = "messageType")]
    message_type: &'static str,
    uaid: &'a str,
    status: u16,
    #[serde(rename = "channelID")]
    channel_id: &'a str,
    #[serde(rename = "pushEndpoint")]
    push_endpoint: &'a str,
}

impl<'a> RegisterReply<'a> {
    /// A successful register.
    pub fn new(uaid: &'a str, channel_id: &'a str, push_endpoint: &'a str) -> Self {
        RegisterReply {
            message_type: "register",
            uaid,
            status: 200,
            channel_id,
            push_endpoint,
        }
    }
}

/// `{"messageType":"unregister","status":200,"channelID":..}`.
#[derive(Debug, Serialize)]
pub struct UnregisterReply<'a> {
    #[serde(rename = "messageType")]
    message_type: &'static str,
    status: u16,
    #[serde(rename = "channelID")]
    channel_id: &'a str,
}

impl<'a> UnregisterReply<'a> {
    /// A successful unregister.
    pub fn new(channel_id: &'a str) -> Self {
        UnregisterReply {
            message_type: "unregister",
            status: 200,
            channel_id,
        }
    }
}

/// One entry of a notification's `updates`.
#[derive(Debug, Serialize)]
pub struct UpdateEntry<'a> {
    /// The channel, as the device registered it.
    #[serde(rename = "channelID")]
    pub channel_id: &'a str,
    /// The app server's version.
    pub version: u64,
    /// Data, only when the app server sent some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a str>,
}

/// `{"messageType":"notification","updates":[..],"expired":[..]}`.
#[derive(Debug, Serialize)]
pub struct Notification<'a> {
    #[serde(rename = "messageType")]
    message_type: &'static str,
    updates: Vec<UpdateEntry<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    expired: &'a [&'a str],
}

impl<'a> Notification<'a> {
    /// A notification of `updates`, reporting `expired` channels when there are any.
    pub fn new(updates: Vec<UpdateEntry<'a>>, expired: &'a [&'a str]) -> Self {
        Notification {
            message_type: "notification",
            updates,
            expired,
        }
    }
}

/// Serializes a reply. Serialization of these types cannot fail.
pub fn to_text<T: Serialize>(reply: &T) -> String {
    serde_json::to_string(reply).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn empty_object_is_a_ping_whitespace_allowed() {
        assert_eq!(parse_str(" { \n } "), Ok(Command::Ping));
        assert_eq!(parse_str(r#"{"messageType":"PING"}"#), Ok(Command::Ping));
    }

    #[test]
    fn not_json_or_not_object_is_refused_without_reply() {
        for s in [
            "",
            "nope",
            "[]",
            "12",
            "\"hello\"",
            "null",
            "{\"a\":",
            "{}}",
        ] {
            assert_eq!(parse_str(s), Err(Refusal::NotAnObject), "{s:?}");
        }
    }

    #[test]
    fn deeply_nested_json_is_refused_not_overflowed() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_str(&deep), Err(Refusal::NotAnObject));
        let object = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_str(&object), Err(Refusal::NotAnObject));
    }

    #[test]
    fn keys_and_message_type_are_case_insensitive() {
        let cmd = parse_str(r#"{"MESSAGETYPE":"HeLLo","uaiD":"abc","ChannelIDs":["x"]}"#);
        assert_eq!(
            cmd,
            Ok(Command::Hello {
                uaid: Some("abc".into()),
                channel_ids: Some(vec!["x".into()]),
                webpush: false,
            })
        );
        let id = "5A0FC5D5-3F0A-4F4C-9C5B-2E3C1A2B3C4D";
        let cmd = parse_str(&format!(
            r#"{{"messagetype":"REGISTER","CHANNELID":"{id}"}}"#
        ));
        assert_eq!(
            cmd,
            Ok(Command::Register {
                channel_id: id.into()
            })
        );
    }

    #[test]
    fn hello_with_empty_or_null_uaid_has_none() {
        let cmd = parse_str(r#"{"messageType":"hello","uaid":"","channelIDs":null}"#);
        assert_eq!(
            cmd,
            Ok(Command::Hello {
                uaid: None,
                channel_ids: None,
                webpush: false,
            })
        );
    }

    #[test]
    fn hello_asks_for_webpush_only_with_use_webpush_true() {
        let webpush = |s: &str| match parse_str(s) {
            Ok(Command::Hello { webpush, .. }) => webpush,
            other => panic!("{s}: {other:?}"),
        };
        assert!(webpush(
            r#"{"messageType":"hello","broadcasts":{},"use_webpush":true}"#
        ));
        assert!(webpush(
            r#"{"messageType":"hello","USE_WEBPUSH":true,"uaid":"u"}"#
        ));
        for s in [
            r#"{"messageType":"hello"}"#,
            r#"{"messageType":"hello","use_webpush":false}"#,
            r#"{"messageType":"hello","use_webpush":"true"}"#,
            r#"{"messageType":"hello","use_webpush":1}"#,
            r#"{"messageType":"hello","use_webpush":null}"#,
        ] {
            assert!(!webpush(s), "{s}");
        }
    }

    #[test]
    fn hello_with_wrong_types_is_401_echoing_uaid() {
        let frame = refused(r#"{"messageType":"hello","uaid":12}"#);
        assert_eq!((frame.status, frame.error), (401, "Invalid Command"));
        assert_eq!(frame.echo.get("uaid"), Some(&json!(12)));
        assert_eq!(frame.message_type.as_deref(), Some("hello"));
        let frame = refused(r#"{"messageType":"hello","uaid":"u","channelIDs":"x"}"#);
        assert_eq!(frame.echo.get("uaid"), Some(&json!("u")));
        refused(r#"{"messageType":"hello","channelIDs":[1]}"#);
    }

    #[test]
    fn message_type_missing_empty_unknown_or_not_string_is_401() {
        for s in [
            r#"{"uaid":"x"}"#,
            r#"{"messageType":""}"#,
            r#"{"messageType":"bogus"}"#,
            r#"{"messageType":7}"#,
        ] {
            let frame = refused(s);
            assert_eq!((frame.status, frame.error), (401, "Invalid Command"), "{s}");
        }
        assert_eq!(
            refused(r#"{"messageType":"Bogus"}"#)
                .message_type
                .as_deref(),
            Some("bogus")
        );
    }

    #[test]
    fn uuid_shapes() {
        assert!(is_uuid_shaped("5a0fc5d53f0a4f4c9c5b2e3c1a2b3c4d"));
        assert!(is_uuid_shaped("5A0FC5D5-3F0A-4F4C-9C5B-2E3C1A2B3C4D"));
        assert!(!is_uuid_shaped("5a0fc5d5-3f0a4f4c-9c5b-2e3c1a2b3c4d0"));
        assert!(!is_uuid_shaped("5a0fc5d53f0a4f4c9c5b2e3c1a2b3c4g"));
        assert!(!is_uuid_shaped("xyz"));
        assert!(!is_uuid_shaped(""));
    }

    #[test]
    fn register_needs_a_uuid_string_and_echoes_it() {
        let frame = refused(r#"{"messageType":"register","channelID":"xyz"}"#);
        assert_eq!(frame.reason, "channelID is not a UUID");
        assert_eq!(frame.echo.get("channelID"), Some(&json!("xyz")));
        let frame = refused(r#"{"messageType":"unregister"}"#);
        assert_eq!(frame.status, 401);
        assert_eq!(frame.message_type.as_deref(), Some("unregister"));
        refused(r#"{"messageType":"register","channelID":5}"#);
    }

    #[test]
    fn ack_parses_updates_and_expired() {
        let (a, b) = (
            "5a0fc5d5-3f0a-4f4c-9c5b-2e3c1a2b3c4d",
            "6a0fc5d53f0a4f4c9c5b2e3c1a2b3c4d",
        );
        let text = format!(
            r#"{{"messageType":"ack","updates":[{{"CHANNELID":"{a}","Version":3}}],"expired":["{b}"]}}"#
        );
        assert_eq!(
            parse_str(&text),
            Ok(Command::Ack {
                updates: vec![(a.into(), 3)],
                expired: vec![b.into()],
                sent_updates: Some(json!([{"CHANNELID": a, "Version": 3}])),
            })
        );
        let cmd = parse_str(r#"{"messageType":"ack","expired":[]}"#);
        assert_eq!(
            cmd,
            Ok(Command::Ack {
                updates: vec![],
                expired: vec![],
                sent_updates: None,
            })
        );
    }

    #[test]
    fn ack_without_updates_or_with_bad_ones_is_401_echoing_updates() {
        refused(r#"{"messageType":"ack"}"#);
        let frame = refused(r#"{"messageType":"ack","updates":[{"channelID":"a","version":"3"}]}"#);
        assert_eq!(
            frame.echo.get("updates"),
            Some(&json!([{"channelID":"a","version":"3"}]))
        );
        refused(r#"{"messageType":"ack","updates":[{"channelID":"a","version":-1}]}"#);
        refused(r#"{"messageType":"ack","updates":[{"channelID":"a","version":1.5}]}"#);
        refused(r#"{"messageType":"ack","updates":{}}"#);
        refused(r#"{"messageType":"ack","expired":[1]}"#);
        // Only a UUID can name a channel.
        let frame = refused(r#"{"messageType":"ack","updates":[{"channelID":"xyz","version":1}]}"#);
        assert_eq!(
            frame.echo.get("updates"),
            Some(&json!([{"channelID":"xyz","version":1}]))
        );
        refused(r#"{"messageType":"ack","expired":["xyz"]}"#);
    }

    #[test]
    fn replies_have_the_exact_field_names() {
        let hello: Value = serde_json::from_str(&to_text(&HelloReply::new("u"))).unwrap();
        assert_eq!(
            hello,
            json!({"messageType":"hello","uaid":"u","status":200})
        );
        let reg: Value =
            serde_json::from_str(&to_text(&RegisterReply::new("u", "c", "http://e"))).unwrap();
        assert_eq!(
            reg,
            json!({"messageType":"register","uaid":"u","status":200,"channelID":"c","pushEndpoint":"http://e"})
        );
        let entries = vec![
            UpdateEntry {
                channel_id: "c",
                version: 7,
                data: None,
            },
            UpdateEntry {
                channel_id: "d",
                version: 8,
                data: Some("x"),
            },
        ];
        let n: Value = serde_json::from_str(&to_text(&Notification::new(entries, &[]))).unwrap();
        assert_eq!(
            n,
            json!({"messageType":"notification","updates":[{"channelID":"c","version":7},{"channelID":"d","version":8,"data":"x"}]})
        );
        let err = ErrorFrame::new(503, "down")
            .for_type("register")
            .echo("channelID", json!("c"));
        let e: Value = serde_json::from_str(&to_text(&err)).unwrap();
        assert_eq!(
            e,
            json!({"messageType":"register","status":503,"error":"Service Unavailable","reason":"down","channelID":"c"})
        );
    }
}
