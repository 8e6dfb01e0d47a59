//! One memcached server of the pool, spoken to with the meta protocol: the async
//! client (`memcache::exp::AsyncMetaClient`) writes each request in one piece and keeps
//! its own pool of connections, dialed on first use and dropped, never reused, when an
//! exchange fails midway (so a late answer after a timeout is never read as the next
//! one). Nothing blocks a thread: a slow memcached holds only the tasks waiting on it.

use std::time::Duration;

use memcache::exp::{
    AsyncMetaClient, Delete, Error as MetaError, Get, Meta, MetaClientBuilder, MutationStatus,
};
use tokio::sync::OnceCell;

use crate::error::Error;

/// A memcached server and the connections to it.
pub(crate) struct Server {
    /// `host:port`, for errors and hashing.
    pub(crate) name: String,
    pool_size: usize,
    timeout: Duration,
    /// Made at the first operation, which resolves the name (without blocking).
    client: OnceCell<AsyncMetaClient>,
}

impl Server {
    /// A server whose connections are opened on demand, at most `pool_size` at once;
    /// does no I/O.
    pub(crate) fn new(name: String, pool_size: u32, timeout: Duration) -> Server {
        Server {
            name,
            pool_size: usize::try_from(pool_size).unwrap_or(usize::MAX),
            timeout,
            client: OnceCell::new(),
        }
    }

    /// The client, made (and the name resolved, within the timeout) on first use.
    async fn client(&self) -> Result<&AsyncMetaClient, Error> {
        let make = || async {
            let connect = MetaClientBuilder::new()
                .max_idle(self.pool_size)
                .max_connections(Some(self.pool_size))
                .connect_timeout(Some(self.timeout))
                .io_timeout(Some(self.timeout))
                .connect_async(self.name.as_str());
            match tokio::time::timeout(self.timeout, connect).await {
                Ok(made) => made,
                Err(_) => Err(MetaError::Io(std::io::ErrorKind::TimedOut.into())),
            }
        };
        self.failed(self.client.get_or_try_init(make).await)
    }

    /// Names this server in a client error.
    fn failed<T>(&self, result: Result<T, MetaError>) -> Result<T, Error> {
        result.map_err(|source| Error::Memcache {
            server: self.name.clone(),
            source,
        })
    }

    /// The value at `key` and its CAS token, if there is an item.
    pub(crate) async fn get_with_cas(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, Error> {
        let request = self.client().await?.get(key).meta(Meta::default().cas());
        let found = self.failed(request.send().await)?;
        match (found.hit(), found.value, found.item.cas) {
            (false, _, _) => Ok(None),
            (true, Some(value), Some(cas)) => Ok(Some((value, cas))),
            (true, _, _) => Err(Error::Undecodable {
                key: key.to_owned(),
                reason: "the server answered a hit without a value or a CAS token".into(),
            }),
        }
    }

    /// The value at `key`, if there is an item.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let found = self.failed(self.client().await?.get(key).send().await)?;
        Ok(if found.hit() { found.value } else { None })
    }

    /// The values at `keys`, in order (`None` where there is no item), in one pipelined
    /// exchange.
    pub(crate) async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let client = self.client().await?;
        let answers = self.failed(client.run_many(keys.iter().map(Get::new)).await)?;
        answers
            .into_iter()
            .map(|answer| {
                let found = self.failed(answer)?;
                Ok(if found.hit() { found.value } else { None })
            })
            .collect()
    }

    /// Deletes the items at `keys` (missing ones are fine) in one pipelined exchange.
    pub(crate) async fn delete_many(&self, keys: &[&str]) -> Result<(), Error> {
        let client = self.client().await?;
        let answers = self.failed(client.run_many(keys.iter().map(Delete::new)).await)?;
        for answer in answers {
            self.failed(answer)?;
        }
        Ok(())
    }

    /// Stores `value` at `key` if the item still has the CAS token `cas`; answers
    /// whether it did (false: changed or gone since).
    pub(crate) async fn compare_and_set(
        &self,
        key: &str,
        value: &[u8],
        expires: u32,
        cas: u64,
    ) -> Result<bool, Error> {
        let client = self.client().await?;
        let request = client.set(key, value).ttl_raw(expires).compare_cas(cas);
        let stored = self.failed(request.send().await)?;
        Ok(stored.status == MutationStatus::Applied)
    }

    /// Stores `value` at `key` if there is no item yet; answers whether it did.
    pub(crate) async fn add(&self, key: &str, value: &[u8], expires: u32) -> Result<bool, Error> {
        let request = self.client().await?.set(key, value).ttl_raw(expires).add();
        let stored = self.failed(request.send().await)?;
        Ok(stored.status == MutationStatus::Applied)
    }

    /// Stores `value` at `key`, whatever is there.
    pub(crate) async fn set(&self, key: &str, value: &[u8], expires: u32) -> Result<(), Error> {
        let request = self.client().await?.set(key, value).ttl_raw(expires);
        let stored = self.failed(request.send().await)?;
        if stored.status == MutationStatus::Applied {
            Ok(())
        } else {
            Err(Error::NotStored {
                server: self.name.clone(),
                key: key.to_owned(),
            })
        }
    }

    /// Deletes the item at `key`; a missing one is fine.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), Error> {
        self.failed(self.client().await?.delete(key).send().await)
            .map(drop)
    }

    /// Gives the item at `key` a new lifetime; a missing one is fine.
    pub(crate) async fn touch(&self, key: &str, expires: u32) -> Result<(), Error> {
        let request = self
            .client()
            .await?
            .get(key)
            .touch_raw(expires)
            .without_value();
        self.failed(request.send().await).map(drop)
    }

    /// Gives each item of `items` (key, expiration) its new lifetime, in one pipelined
    /// exchange; missing ones are fine.
    pub(crate) async fn touch_many(&self, items: &[(&str, u32)]) -> Result<(), Error> {
        let client = self.client().await?;
        let touches = items
            .iter()
            .map(|&(key, expires)| Get::new(key).touch_raw(expires).without_value());
        let answers = self.failed(client.run_many(touches).await)?;
        for answer in answers {
            self.failed(answer)?;
        }
        Ok(())
    }
}
