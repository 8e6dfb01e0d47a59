//! The records the store speaks in.

use crate::ChannelId;

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
