//! The RocksDB store of simplepush: a [`Store`](simplepush_store::Store) on local disk
//! that keeps every acknowledged update across restarts and crashes.
//!
//! [`RocksStore::open`] opens (or creates) a database directory; [`RocksOptions`] says
//! how hard each write is pushed to disk.

mod error;
mod key;
mod record;
mod store;

pub use store::RocksStore;

/// How [`RocksStore`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksOptions {
    /// Sync the write-ahead log to disk before a write returns (the default). An update
    /// answered as stored then survives a crash of the process *and* of the machine.
    /// Without it every write still goes to the write-ahead log before it returns, so
    /// it survives the process being killed, but the last writes before a power loss
    /// may be lost; writes are much cheaper.
    pub fsync: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self { fsync: true }
    }
}
