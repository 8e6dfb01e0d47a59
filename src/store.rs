//! Chooses and opens the store backend named in the config: the one place that knows
//! which backends were compiled in. Also resolves the token keys, which the embedded
//! backends keep beside their data, and creates their data directory (0700) and key file
//! (0600) for this user only.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use simplepush_store::{MemoryStore, Store};

use crate::config::{Backend, Config};

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
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Creates the data directory of the embedded backends and its missing parents, for this
/// user only (0700): it holds every device's channels and the token key. A directory
/// that exists is the operator's and keeps its mode; a warning says when others may
/// read it.
pub fn create_data_dir(dir: &Path) -> Result<(), OpenError> {
    let failed = |source| OpenError::DataDir {
        path: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) => {
            warn_if_shared(dir, &meta);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed),
        Err(e) => Err(failed(e)),
    }
}

/// Warns when users other than the owner may read or enter `path`.
fn warn_if_shared(path: &Path, meta: &std::fs::Metadata) {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "other users may read this (it holds device data or the token key): \
             consider `chmod go-rwx`"
        );
    }
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
            create_data_dir(&store.path)?;
            let options = simplepush_sqlite::SqliteOptions { fsync: store.fsync };
            Ok(Arc::new(
                simplepush_sqlite::SqliteStore::open(&store.path, options).map_err(failed)?,
            ))
        }
        #[cfg(feature = "rocksdb")]
        Backend::Rocksdb => {
            create_data_dir(&store.path)?;
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
                // Retention is the items' lifetime: memcached forgets a device
                // `device_ttl` after it was last seen, at a hello or register (zero:
                // never). A record
                // holds the device's pending updates and message index, so a
                // `device_ttl` shorter than `message_ttl` or `max_ttl` drops them with
                // their device before they expire: by design, the device is gone
                // (`retention::check` warns at startup).
                ttl: store.device_ttl,
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
        Backend::Memcache | Backend::Memory => Ok(vec![crate::app_server::token::generate_key()]),
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
        Ok(text) => {
            if let Ok(meta) = std::fs::metadata(&path) {
                warn_if_shared(&path, &meta);
            }
            return Ok(text.trim().to_owned());
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
        Err(_) => {}
    }
    create_data_dir(dir)?;
    let key = crate::app_server::token::generate_key();
    let temporary = dir.join("token.key.tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true).mode(0o600);
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
        assert!(crate::app_server::token::TokenCodec::new(&[first]).is_ok());
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_data_dir_and_key_are_for_this_user_only() {
        let dir = tempfile::tempdir().unwrap();
        // Loose permissions around it must not leak into what is created.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("parent").join("data");
        kept_key(&data).unwrap();
        assert_eq!(mode(&data), 0o700, "data directory");
        assert_eq!(mode(&dir.path().join("parent")), 0o700, "created parent");
        assert_eq!(mode(&data.join("token.key")), 0o600, "token.key");

        let other = dir.path().join("other");
        create_data_dir(&other).unwrap();
        assert_eq!(mode(&other), 0o700);
    }

    #[test]
    fn an_existing_data_dir_keeps_the_operators_mode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        create_data_dir(dir.path()).unwrap();
        kept_key(dir.path()).unwrap();
        assert_eq!(mode(dir.path()), 0o750);
        assert_eq!(mode(&dir.path().join("token.key")), 0o600);
    }
}
