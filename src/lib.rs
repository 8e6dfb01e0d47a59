//! simplepush: a SimplePush server. Devices keep a websocket to us; app servers `PUT`
//! versions to endpoints; we store each update first, deliver it live when the device
//! is connected, and flush what is pending at its next hello.
//!
//! A map of the modules:
//! - [`config`]: the TOML configuration and its defaults.
//! - [`server`]: binds the listeners and runs until shutdown.
//! - [`listener`]: the accept loop under every listener.
//! - [`routes`]: the warp routes of each listener.
//! - [`upgrade`]: the websocket handshake. [`session`]: one device's socket.
//! - [`throttle`]: the per-socket limit on device commands.
//! - [`protocol`]: parsing device messages, building replies.
//! - [`endpoint`]: `PUT /update/{token}`. [`health`]: `/status/`, `/realstatus/`.
//! - [`registry`]: devices connected here. [`token`]: endpoint tokens.
//! - [`store`]: opens the configured backend. [`error`]: failures to statuses.
//! - [`tls`]: optional TLS on the public listeners.
//! - [`metrics`]: Prometheus metrics and the store's timing wrapper.
//! - [`overload`]: sheds endpoint requests while the runtime's queue delay is too long.
//! - [`dashboard`]: `/dashboard/` (operator listener), a live page over `/metrics` and
//!   `/realstatus/`.
//! - [`cluster`]: node-to-node routing when nodes share memcached.
//! - [`cli`]: the `client` and `push` subcommands, to try a server end to end.
//! - [`app`]: the state shared by everything above.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod endpoint;
pub mod error;
pub mod flags;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod overload;
pub mod protocol;
pub mod registry;
pub mod routes;
pub mod server;
pub mod session;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod upgrade;
