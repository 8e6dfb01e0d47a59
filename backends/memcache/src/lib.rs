//! The memcache store of simplepush: devices kept in a pool of memcached servers
//! shared by a cluster of nodes. Volatile by design (see [`MemcacheStore`]).
//!
//! - `store`: [`MemcacheStore`], the [`simplepush_store::Store`] implementation.
//! - `options`: [`MemcacheOptions`] and item lifetimes.
//! - `record`: how a device, its message index and its queued messages are encoded
//!   in items.
//! - `key`: memcached-safe keys from device-supplied ids.
//! - `rendezvous`: which server holds a key.
//! - `server`: one server, spoken to with the meta protocol over a pool of connections.
//! - `address`: server addresses as operators write them.
//! - `error`: private errors, folded into [`simplepush_store::StoreError`].

mod address;
mod error;
mod key;
mod options;
mod record;
mod rendezvous;
mod server;
mod store;

pub use options::MemcacheOptions;
pub use store::MemcacheStore;
