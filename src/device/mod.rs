//! The devices' side: a device upgrades to a websocket ([`upgrade`]), keeps one
//! [`session`] per socket that speaks SimplePush ([`protocol`]) or, once its hello asked
//! for it, WebPush ([`webpush`]), is found by app servers through the [`registry`] of
//! devices connected here, and may send only so many commands ([`throttle`]).

pub mod protocol;
pub mod registry;
pub mod session;
pub mod throttle;
pub mod upgrade;
pub mod webpush;
