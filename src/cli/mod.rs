//! The command-line tools that talk to a running server from the outside: a demo device
//! (`simplepush client`, SimplePush or WebPush) and an app server (`simplepush push`, a
//! SimplePush `PUT` or an encrypted, VAPID-signed WebPush `POST`), and the VAPID key
//! maker behind `simplepush genkey --vapid`. They speak only the wire protocol of
//! docs/protocol.md, so they work against any SimplePush or WebPush server. Besides
//! them, the hidden `fill` loads a store directly for `cargo xtask bench store-scale`.

pub mod client;
pub mod fill;
pub mod genkey;
pub mod payload;
pub mod push;
pub mod subscription;
pub mod vapid;
