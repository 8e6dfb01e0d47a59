//! The command-line tools that talk to a running server from the outside: a demo device
//! (`simplepush client`) and an app server (`simplepush push`). Both speak only the wire
//! protocol of PROTOCOL.md, so they work against any SimplePush server.

pub mod client;
pub mod push;
