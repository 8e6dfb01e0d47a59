//! The app servers' side: the [`endpoint`] they send updates to, addressed by the
//! unforgeable [`token`]s in their URLs.

pub mod endpoint;
pub mod token;
