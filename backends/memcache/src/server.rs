//! One memcached server of the pool, spoken to with the meta protocol: the client
//! (`memcache::exp::MetaClient`) writes each request in one piece and keeps its own
//! pool of connections, dialed on first use and dropped, never reused, when an exchange
//! fails midway (so a late answer after a timeout is never read as the next one).

use std::time::Duration;

use memcache::exp::{Error as MetaError, Meta, MetaClient, MutationStatus};

use crate::address::Address;
use crate::error::Error;

/// A memcached server and the connections to it.
pub(crate) struct Server {
    /// `host:port`, for errors and hashing.
    pub(crate) name: String,
    client: MetaClient,
}

impl Server {
    /// A server whose connections are opened on demand, at most `pool_size` at once;
    /// resolves the address but does no other I/O.
    pub(crate) fn new(
        address: Address,
        pool_size: u32,
        timeout: Duration,
    ) -> Result<Server, Error> {
        let pool_size = usize::try_from(pool_size).unwrap_or(usize::MAX);
        let client = MetaClient::builder()
            .max_idle(pool_size)
            .max_connections(Some(pool_size))
            .connect_timeout(Some(timeout))
            .io_timeout(Some(timeout))
            .connect(address.name.as_str())
            .map_err(|source| Error::Memcache {
                server: address.name.clone(),
                source,
            })?;
        Ok(Server {
            name: address.name,
            client,
        })
    }

    /// Names this server in a client error.
    fn failed<T>(&self, result: Result<T, MetaError>) -> Result<T, Error> {
        result.map_err(|source| Error::Memcache {
            server: self.name.clone(),
            source,
        })
    }

    /// The value at `key` and its CAS token, if there is an item.
    pub(crate) fn get_with_cas(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, Error> {
        let found = self.failed(self.client.get(key).meta(Meta::default().cas()).send())?;
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
    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let found = self.failed(self.client.get(key).send())?;
        Ok(if found.hit() { found.value } else { None })
    }

    /// Stores `value` at `key` if the item still has the CAS token `cas`; answers
    /// whether it did (false: changed or gone since).
    pub(crate) fn compare_and_set(
        &self,
        key: &str,
        value: &[u8],
        expires: u32,
        cas: u64,
    ) -> Result<bool, Error> {
        let request = self
            .client
            .set(key, value)
            .ttl_raw(expires)
            .compare_cas(cas);
        let stored = self.failed(request.send())?;
        Ok(stored.status == MutationStatus::Applied)
    }

    /// Stores `value` at `key` if there is no item yet; answers whether it did.
    pub(crate) fn add(&self, key: &str, value: &[u8], expires: u32) -> Result<bool, Error> {
        let stored = self.failed(self.client.set(key, value).ttl_raw(expires).add().send())?;
        Ok(stored.status == MutationStatus::Applied)
    }

    /// Stores `value` at `key`, whatever is there.
    pub(crate) fn set(&self, key: &str, value: &[u8], expires: u32) -> Result<(), Error> {
        let stored = self.failed(self.client.set(key, value).ttl_raw(expires).send())?;
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
    pub(crate) fn delete(&self, key: &str) -> Result<(), Error> {
        self.failed(self.client.delete(key).send()).map(drop)
    }

    /// Gives the item at `key` a new lifetime; a missing one is fine.
    pub(crate) fn touch(&self, key: &str, expires: u32) -> Result<(), Error> {
        let request = self.client.get(key).touch_raw(expires).without_value();
        self.failed(request.send()).map(drop)
    }
}
