//! The SQLite store of simplepush: [`SqliteStore`] keeps channels, pending updates,
//! queued WebPush messages, node records and when each device was last seen in one
//! database file in WAL mode, written through a single connection (on a thread of its
//! own, committing concurrent writes together) and read through a small pool of
//! read-only connections. Retention sweeps in short steps through that writer and gives
//! the pages it frees back to the file system (incremental vacuum).
//!
//! - `store.rs`: [`SqliteStore`], [`SqliteOptions`] and the [`Store`](simplepush_store::Store)
//!   implementation (every SQL statement lives there).
//! - `writer.rs`: the writer thread and its group commit.
//! - `connection.rs`: opening the writer and reader connections with their pragmas.
//! - `schema.rs`: the tables and their migrations, versioned by `PRAGMA user_version`.
//! - `error.rs`: the private error, folded into [`StoreError`](simplepush_store::StoreError)
//!   by meaning.

mod connection;
mod error;
mod schema;
mod store;
mod writer;

pub use store::{SqliteOptions, SqliteStore};
