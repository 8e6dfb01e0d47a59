//! The records the store speaks in.

use crate::{ChannelId, MessageId};

/// A version an app server sent for a channel, with its optional data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The app server's version number (only the greatest matters).
    pub version: u64,
    /// Opaque data sent along, if any.
    pub data: Option<String>,
    /// UNIX seconds after which the update is no longer delivered but reported expired.
    pub expires_at: u64,
}

impl Update {
    /// Whether the update is past its expiry at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }

    /// Whether this update takes the place of `pending`: it has a greater version, or
    /// `pending` has expired at `now` (the rule of [`crate::Store::put_update`]).
    pub fn supersedes(&self, pending: &Update, now: u64) -> bool {
        self.version > pending.version || pending.is_expired(now)
    }
}

/// What a device has waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Unexpired pending updates, one per channel, in no particular order.
    pub updates: Vec<(ChannelId, Update)>,
    /// Channels whose pending update expired and has not been acknowledged as such.
    pub expired: Vec<ChannelId>,
}

impl Pending {
    /// Whether there is nothing to tell the device.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.expired.is_empty()
    }
}

/// The answer to [`crate::Store::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The channel is registered (newly, or it already was).
    Registered,
    /// The uaid already has the maximum number of live channels; nothing changed.
    TooManyChannels,
}

/// The answer to [`crate::Store::put_update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The channel is registered; the update is pending unless a greater version was.
    Stored,
    /// The channel is not registered for that uaid (unregistered or never known).
    Gone,
}

/// How soon an app server wants a WebPush message delivered (RFC 8030 `Urgency`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Urgency {
    /// `very-low`: only when the device is on power and wi-fi.
    VeryLow,
    /// `low`.
    Low,
    /// `normal`, the default.
    #[default]
    Normal,
    /// `high`: deliver at once.
    High,
}

impl Urgency {
    /// The header value: `very-low`, `low`, `normal` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    /// The urgency a header value names (exactly as RFC 8030 spells them), if any.
    pub fn parse(text: &str) -> Option<Urgency> {
        match text {
            "very-low" => Some(Urgency::VeryLow),
            "low" => Some(Urgency::Low),
            "normal" => Some(Urgency::Normal),
            "high" => Some(Urgency::High),
            _ => None,
        }
    }
}

/// The encrypted body of a WebPush message and what the device needs to decrypt it.
/// The server never decrypts: it carries these bytes and headers as the app server sent
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The request's `Content-Encoding`: `aes128gcm` (RFC 8291) or the legacy `aesgcm`.
    pub encoding: String,
    /// `aesgcm` only: the request's `Encryption` header.
    pub encryption: Option<String>,
    /// `aesgcm` only: the request's `Crypto-Key` header.
    pub crypto_key: Option<String>,
    /// The encrypted body (at most the server's limit, 4096 bytes by default).
    pub body: Vec<u8>,
}

/// A WebPush message queued for a channel until the device acknowledges it or it
/// expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Minted by the server, unique, increasing in the order messages arrive.
    pub id: MessageId,
    /// The channel (subscription) it was pushed to.
    pub channel: ChannelId,
    /// The `TTL` it was accepted with, in seconds (told to the device).
    pub ttl: u64,
    /// UNIX seconds from which it is no longer delivered (dropped silently).
    pub expires_at: u64,
    /// The app server's `Topic`: a newer message with the same topic replaces it.
    pub topic: Option<String>,
    /// The app server's `Urgency`.
    pub urgency: Urgency,
    /// The body and its encoding; `None` for a push without data.
    pub payload: Option<Payload>,
}

impl Message {
    /// Whether the message is past its expiry at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }
}

/// The answer to [`crate::Store::put_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOutcome {
    /// The message is queued (replacing the channel's message of the same topic, if any).
    Stored,
    /// The channel is not registered for that uaid (unregistered or never known).
    Gone,
    /// The channel already holds the most unexpired messages it may; nothing changed.
    Full,
}

/// What one [`crate::Store::sweep`] step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Devices removed for not having been seen since the cutoff.
    pub devices: u64,
    /// Expired WebPush messages removed from storage.
    pub messages: u64,
    /// The step stopped at its limit: there may be more to remove now.
    pub more: bool,
}
