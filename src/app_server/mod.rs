//! The app servers' side: the [`endpoint`] they send SimplePush updates to and the
//! [`webpush`] endpoints (RFC 8030) they push messages to, addressed by the unforgeable
//! [`token`]s in their URLs, with [`vapid`] proving who pushes.

pub mod endpoint;
pub mod message_id;
pub mod token;
pub mod vapid;
pub mod webpush;
