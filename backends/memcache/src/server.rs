//! One memcached server of the pool: its client, and the rebuild of its connections
//! after a socket error.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use memcache::{Client, MemcacheError};
use scheduled_thread_pool::ScheduledThreadPool;

use crate::address::Address;
use crate::error::Error;

/// A memcached server and the connection pool to it.
pub(crate) struct Server {
    /// `host:port`, for errors and hashing.
    pub(crate) name: String,
    address: Address,
    pool_size: u32,
    timeout: Duration,
    threads: Arc<ScheduledThreadPool>,
    /// Replaced wholesale by [`Server::reset`].
    client: RwLock<Arc<Client>>,
}

impl Server {
    /// A server whose connections are opened on demand; does no I/O.
    pub(crate) fn new(
        address: Address,
        pool_size: u32,
        timeout: Duration,
        threads: Arc<ScheduledThreadPool>,
    ) -> Result<Server, Error> {
        let client =
            build(&address, pool_size, timeout, &threads).map_err(|source| Error::Memcache {
                server: address.name.clone(),
                source,
            })?;
        Ok(Server {
            name: address.name.clone(),
            address,
            pool_size,
            timeout,
            threads,
            client: RwLock::new(Arc::new(client)),
        })
    }

    /// The client to run one operation with.
    pub(crate) fn client(&self) -> Arc<Client> {
        // The lock only guards an Arc swap, which cannot be left half done.
        Arc::clone(&self.client.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Names this server in a client error, and replaces the connections when the
    /// error may have left one out of step (see [`Server::reset`]).
    pub(crate) fn failed<T>(&self, result: Result<T, MemcacheError>) -> Result<T, Error> {
        result.map_err(|source| {
            if may_desync(&source) {
                self.reset();
            }
            Error::Memcache {
                server: self.name.clone(),
                source,
            }
        })
    }

    /// Drops every pooled connection by replacing the pool. After a socket timeout a
    /// connection may still receive the late answer, which the client would read as
    /// the answer to its next request (a compare-and-swap could then "succeed" without
    /// storing anything); the client never discards such a connection itself.
    fn reset(&self) {
        // Building a pool does no I/O and does not fail; should it ever, the old pool
        // stays, which is no worse than before.
        if let Ok(fresh) = build(&self.address, self.pool_size, self.timeout, &self.threads) {
            *self.client.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        }
    }
}

/// Whether `error` may leave the connection it happened on mid-answer.
fn may_desync(error: &MemcacheError) -> bool {
    matches!(
        error,
        MemcacheError::IOError(_) | MemcacheError::ServerError(_) | MemcacheError::ParseError(_)
    )
}

/// A client with its own pool of up to `pool_size` connections to `address`.
fn build(
    address: &Address,
    pool_size: u32,
    timeout: Duration,
    threads: &Arc<ScheduledThreadPool>,
) -> Result<Client, MemcacheError> {
    let pool = r2d2::Pool::builder()
        .max_size(pool_size)
        // Open connections on demand, and never block here.
        .min_idle(Some(0))
        // No `version` round trip before every operation: a connection that broke fails
        // its operation with an I/O error, and that error replaces the whole pool
        // (`may_desync`), so a stale connection costs one failed call, not a check on
        // every call (which halved throughput).
        .test_on_check_out(false)
        .connection_timeout(timeout)
        .thread_pool(Arc::clone(threads))
        .build_unchecked(memcache::ConnectionManager::new(address.url.clone()));
    // One pool per client: this crate picks the server (see `rendezvous`).
    Client::with_pool(pool)
}
