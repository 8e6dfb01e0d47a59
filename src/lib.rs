//! simplepush: a push server. Devices keep a websocket to us; app servers send to
//! per-channel endpoints; we store each message first, deliver it live when the device
//! is connected, and flush what is pending at its next hello.
//!
//! The house, room by room (imports point down this list, never up):
//! - [`device`]: the devices' side: the websocket handshake, one session per socket,
//!   the protocol's messages, the registry of devices connected here, the command limit.
//! - [`app_server`]: the app servers' side: the endpoints they send to and the tokens in
//!   their URLs.
//! - [`cluster`]: node-to-node routing when nodes share memcached.
//! - [`ops`]: what operators see: metrics, health, the dashboard, overload shedding.
//! - [`cli`]: the `client`, `push` and `genkey --vapid` subcommands, in both dialects, to
//!   try a server end to end.
//!
//! And what holds them together:
//! - [`config`] and [`flags`]: the TOML configuration, its defaults and its flags.
//! - [`server`]: binds the listeners and runs until shutdown; [`listener`]: the accept
//!   loop under every listener; [`routes`]: the warp routes of each listener;
//!   [`tls`]: optional TLS on the public listeners.
//! - [`store`]: opens the configured backend; [`retention`]: the background task that
//!   removes devices not seen for `device_ttl`. [`error`]: failures to statuses.
//! - [`app`]: the state shared by everything above.

pub mod app;
pub mod app_server;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod device;
pub mod error;
pub mod flags;
pub mod listener;
pub mod ops;
pub mod retention;
pub mod routes;
pub mod server;
pub mod store;
pub mod tls;
