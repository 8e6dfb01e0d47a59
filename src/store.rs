//! Chooses and opens the store backend named in the config: the one place that knows
//! which backends were compiled in. Also resolves the token keys, which the embedded
//! backends keep beside their data.

use std::path::Path;
use std::sync::Arc;

use simplepush_store::{MemoryStore, Store};

use crate::config::{Backend, Config};

/// The least lifetime of a memcached record (renewed by every write and hello).
#[cfg(feature = "memcache")]
const MEMCACHE_MIN_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The backend was not compiled into this binary.
    #[error(
        "store backend `{0}` is not compiled in: rebuild with `cargo build --release --features {0}`"
    )]
    NotCompiled(&'static str),
    /// The backend refused to open.
    #[error("cannot open the {backend} store: {source}")]
    Store {
        /// Which backend.
        backend: &'static str,
        /// Why.
        source: simplepush_store::StoreError,
    },
    /// The key file could not be read or written.
    #[error("token key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens the configured backend.
pub fn open(config: &Config) -> Result<Arc<dyn Store>, OpenError> {
    let store = &config.store;
    let backend = store.backend.name();
    let failed = |source| OpenError::Store { backend, source };
    match store.backend {
        Backend::Memory => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let options = simplepush_sqlite::SqliteOptions { fsync: store.fsync };
            Ok(Arc::new(
                simplepush_sqlite::SqliteStore::open(&store.path, options).map_err(failed)?,
            ))
        }
        #[cfg(feature = "rocksdb")]
        Backend::Rocksdb => {
            let options = simplepush_rocksdb::RocksOptions { fsync: store.fsync };
            Ok(Arc::new(
                simplepush_rocksdb::RocksStore::open(&store.path, options).map_err(failed)?,
            ))
        }
        #[cfg(feature = "memcache")]
        Backend::Memcache => {
            let options = simplepush_memcache::MemcacheOptions {
                pool_size: store.pool_size,
                timeout: store.timeout,
                // Records hold channel registrations too, which must outlive any
                // one message: keep them at least a month past their last write.
                ttl: config.protocol.message_ttl.max(MEMCACHE_MIN_TTL),
                item_limit: store.item_limit,
            };
            Ok(Arc::new(
                simplepush_memcache::MemcacheStore::connect(&store.servers, options)
                    .map_err(failed)?,
            ))
        }
        #[allow(unreachable_patterns)]
        other => {
            let _ = failed;
            Err(OpenError::NotCompiled(other.name()))
        }
    }
}

/// The token keys to use: the configured ones; else, for the embedded backends, the key
/// kept in `<path>/token.key` (created on first start); else a fresh key for this run.
pub fn token_keys(config: &Config) -> Result<Vec<String>, OpenError> {
    if !config.server.token_keys.is_empty() {
        return Ok(config.server.token_keys.clone());
    }
    match config.store.backend {
        Backend::Sqlite | Backend::Rocksdb => Ok(vec![kept_key(&config.store.path)?]),
        // A memcache node without configured keys refuses to start (`Server::bind`).
        Backend::Memcache | Backend::Memory => Ok(vec![crate::token::generate_key()]),
    }
}

/// Reads the key kept beside the data, creating it (mode 0600) on first use.
fn kept_key(dir: &Path) -> Result<String, OpenError> {
    let path = dir.join("token.key");
    let error = |source| OpenError::KeyFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
        Err(_) => {}
    }
    std::fs::create_dir_all(dir).map_err(error)?;
    let key = crate::token::generate_key();
    let temporary = dir.join("token.key.tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(error)?;
        file.write_all(key.as_bytes()).map_err(error)?;
        file.sync_all().map_err(error)?;
    }
    std::fs::rename(&temporary, &path).map_err(error)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = kept_key(&dir.path().join("data")).unwrap();
        let second = kept_key(&dir.path().join("data")).unwrap();
        assert_eq!(first, second);
        assert!(crate::token::TokenCodec::new(&[first]).is_ok());
    }
}
