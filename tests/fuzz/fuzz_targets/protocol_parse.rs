//! Fuzz target: `simplepush::device::protocol::parse` on arbitrary websocket payloads never panics,
//! and what it accepts or refuses agrees with docs/protocol.md.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use simplepush::device::protocol::{self, Command, Refusal, is_uuid_shaped};

fuzz_target!(|data: &[u8]| {
    match protocol::parse(data) {
        Ok(Command::Register { channel_id } | Command::Unregister { channel_id }) => {
            assert!(
                is_uuid_shaped(&channel_id),
                "accepted channelID {channel_id:?}"
            );
        }
        Ok(Command::Hello { uaid, .. }) => {
            assert_ne!(uaid.as_deref(), Some(""), "an empty uaid must read as none");
        }
        Ok(Command::Ping | Command::Ack { .. }) => {}
        Err(Refusal::NotAnObject) => {
            // Only what is not a JSON object is refused without a reply.
            assert!(
                !matches!(serde_json::from_slice::<Value>(data), Ok(Value::Object(_))),
                "a JSON object was refused as not an object"
            );
        }
        Err(Refusal::Invalid(frame)) => {
            assert_eq!((frame.status, frame.error), (401, "Invalid Command"));
            assert!(!frame.reason.is_empty(), "error frame without a reason");
            if let Some(message_type) = &frame.message_type {
                assert_eq!(message_type, &message_type.to_ascii_lowercase());
            }
            // The frame the device gets is JSON carrying the same status.
            let text = protocol::to_text(&frame);
            let reply: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("error frame is not JSON ({e}): {text}"));
            assert_eq!(reply["status"], Value::from(401), "{text}");
        }
    }
});
