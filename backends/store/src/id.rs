//! Identifier newtypes, so a uaid is never passed where a channel id belongs.

use std::fmt;
use std::sync::Arc;

/// A device id. Minted by the server (32 lower-case hex) or kept as the device sent it.
/// Shared, not copied: the session, the registry and the memory store each hold one for
/// every connected device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uaid(Arc<str>);

/// A channel id, minted by the device; stored and echoed exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);

/// A WebPush message id, minted by the server: printable ASCII without spaces, at most
/// 64 bytes, unique, and increasing (as strings, byte by byte) in the order messages
/// arrive, so that stores keep the order by sorting on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

macro_rules! string_id {
    ($name:ident) => {
        impl $name {
            /// Wraps an id; the caller has validated its shape.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into().into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s.into())
            }
        }
    };
}

string_id!(Uaid);
string_id!(ChannelId);
string_id!(MessageId);
