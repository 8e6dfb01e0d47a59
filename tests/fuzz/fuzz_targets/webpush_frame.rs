//! Fuzz target: the device side of WebPush (docs/protocol.md) on arbitrary websocket
//! payloads: `simplepush::device::webpush::parse` (a frame of a WebPush session) never
//! panics and its verdicts agree with §9, and the dialect detection of the first hello
//! (`simplepush::device::protocol::parse`, `"use_webpush": true`) agrees with the frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use simplepush::device::protocol::{self, Refusal, is_uuid_shaped};
use simplepush::device::webpush::{self, Command, MAX_ID_BYTES};

/// The SimplePush ack cap the session passes to `distinct_ids`.
const MAX_ACKED: usize = 100;

/// The values the device sent under `key`, matched case-insensitively.
fn values<'a>(object: &'a Map<String, Value>, key: &str) -> Vec<&'a Value> {
    object
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .collect()
}

fn check_refusal(refusal: &Refusal, object: Option<&Map<String, Value>>) {
    match refusal {
        Refusal::NotAnObject => assert!(object.is_none(), "a JSON object was refused as not one"),
        Refusal::Invalid(frame) => {
            assert!(object.is_some(), "an error frame for what is not an object");
            assert_eq!((frame.status, frame.error), (401, "Invalid Command"));
            assert!(!frame.reason.is_empty(), "error frame without a reason");
            let text = protocol::to_text(frame);
            let reply: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("error frame is not JSON ({e}): {text}"));
            assert_eq!(reply["status"], Value::from(401), "{text}");
        }
    }
}

/// The dialect detection: only a hello with a JSON `true` under `use_webpush` is WebPush.
fn check_dialect(object: Option<&Map<String, Value>>, data: &[u8]) {
    let Ok(protocol::Command::Hello { uaid, webpush, .. }) = protocol::parse(data) else {
        return;
    };
    let object = object.unwrap_or_else(|| panic!("a hello that is not an object"));
    let flags = values(object, "use_webpush");
    if webpush {
        assert!(
            flags.contains(&&Value::Bool(true)),
            "WebPush without use_webpush: true"
        );
    } else if let [flag] = flags.as_slice() {
        assert_ne!(
            *flag,
            &Value::Bool(true),
            "use_webpush: true read as SimplePush"
        );
    }
    if webpush && let Some(uaid) = uaid.as_deref() {
        // What the server replies with when it keeps the uaid is JSON echoing it.
        if webpush::uaid_acceptable(uaid) {
            let text = protocol::to_text(&webpush::HelloReply::new(uaid));
            let reply: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("hello reply is not JSON ({e}): {text}"));
            assert_eq!(reply["uaid"], Value::from(uaid), "{text}");
            assert_eq!(reply["use_webpush"], Value::Bool(true), "{text}");
        } else {
            let chars = uaid.chars().count();
            assert!(
                chars == 0 || chars > webpush::MAX_UAID_CHARS,
                "{uaid:?} refused"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let value = serde_json::from_slice::<Value>(data).ok();
    let object = match &value {
        Some(Value::Object(object)) => Some(object),
        _ => None,
    };
    check_dialect(object, data);
    let command = match webpush::parse(data) {
        Ok(command) => command,
        Err(refusal) => return check_refusal(&refusal, object),
    };
    let object = object.unwrap_or_else(|| panic!("{command:?} from what is not an object"));
    assert!(!command.name().is_empty());
    match command {
        Command::Register { channel_id, key } => {
            assert!(is_uuid_shaped(&channel_id), "registered {channel_id:?}");
            if let Some(key) = key {
                assert!(key.len() == 65 && key[0] == 4, "key {key:?}");
            }
        }
        Command::Unregister { channel_id } => {
            assert!(is_uuid_shaped(&channel_id), "unregistered {channel_id:?}");
        }
        Command::Ack {
            updates,
            sent_updates,
        } => {
            let Value::Array(sent) = &sent_updates else {
                panic!("ack of updates {sent_updates}");
            };
            assert_eq!(sent.len(), updates.len(), "every update is kept");
            for (id, code) in &updates {
                let _ = webpush::ack_code_label(*code);
                assert!(sent.iter().any(|item| {
                    item.as_object()
                        .is_some_and(|o| values(o, "version").contains(&&Value::from(id.as_str())))
                }));
            }
            if let Some(ids) = webpush::distinct_ids(&updates, MAX_ACKED) {
                assert!(ids.len() <= MAX_ACKED);
                let mut names: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
                assert!(
                    names
                        .iter()
                        .all(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
                );
                let count = names.len();
                names.sort_unstable();
                names.dedup();
                assert_eq!(names.len(), count, "an id acked twice");
            }
        }
        Command::Nack { code } => {
            let _ = webpush::nack_code_label(code);
        }
        Command::Ping => {
            let types = values(object, "messagetype");
            assert!(
                object.is_empty()
                    || types
                        .iter()
                        .any(|t| t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("ping"))),
                "ping from {object:?}"
            );
        }
        Command::Hello | Command::BroadcastSubscribe | Command::Unknown => {}
    }
});
