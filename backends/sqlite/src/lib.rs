//! The SQLite store of simplepush: [`SqliteStore`] keeps channels, pending updates and
//! node records in one database file in WAL mode, written through a single connection
//! and read through a small pool of read-only connections.
//!
//! - `store.rs`: [`SqliteStore`], [`SqliteOptions`] and the [`Store`](simplepush_store::Store)
//!   implementation (every SQL statement lives there).
//! - `connection.rs`: opening the writer and reader connections with their pragmas.
//! - `schema.rs`: the tables and their migrations, versioned by `PRAGMA user_version`.
//! - `error.rs`: the private error, folded into [`StoreError`](simplepush_store::StoreError)
//!   by meaning.

mod connection;
mod error;
mod schema;
mod store;

pub use store::{SqliteOptions, SqliteStore};
