//! Runs the store conformance suite against every backend compiled in.

mod memory {
    use std::sync::Arc;

    use simplepush_store::{MemoryStore, testkit::TestStore};

    async fn make() -> (TestStore, ()) {
        (Arc::new(MemoryStore::new()), ())
    }

    simplepush_store::conformance_suite!(make());
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::sync::Arc;

    use simplepush_sqlite::{SqliteOptions, SqliteStore};
    use simplepush_store::testkit::TestStore;
    use tempfile::TempDir;

    /// A store in a fresh directory; the directory is the guard.
    async fn make() -> (TestStore, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        (Arc::new(store), dir)
    }

    simplepush_store::conformance_suite!(make());
}

#[cfg(feature = "rocksdb")]
mod rocksdb {
    use std::sync::Arc;

    use simplepush_rocksdb::{RocksOptions, RocksStore};
    use simplepush_store::testkit::TestStore;
    use tempfile::TempDir;

    /// A store in a fresh directory, opened off the runtime (opening blocks); the
    /// directory is the guard.
    async fn make() -> (TestStore, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let store =
            tokio::task::spawn_blocking(move || RocksStore::open(&path, RocksOptions::default()))
                .await
                .unwrap()
                .unwrap();
        (Arc::new(store), dir)
    }

    simplepush_store::conformance_suite!(make());
}

#[cfg(feature = "memcache")]
mod memcache {
    use std::sync::Arc;
    use std::time::Duration;

    use simplepush_memcache::{MemcacheOptions, MemcacheStore};
    use simplepush_store::testkit::TestStore;

    /// The servers under test, from `SIMPLEPUSH_TEST_MEMCACHED` (`host:port,...`, set by
    /// `cargo xtask test`). Without it the suite fails rather than silently passing.
    fn servers() -> Vec<String> {
        let list = std::env::var("SIMPLEPUSH_TEST_MEMCACHED").unwrap_or_default();
        let servers: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .map(str::to_owned)
            .collect();
        assert!(
            !servers.is_empty(),
            "SIMPLEPUSH_TEST_MEMCACHED is not set: the memcache conformance tests need \
             running memcached servers, e.g. SIMPLEPUSH_TEST_MEMCACHED=127.0.0.1:11211,\
             127.0.0.1:11212 (`cargo xtask test` starts them and sets it)"
        );
        servers
    }

    /// A store on the shared servers; the suite's fresh random ids keep tests apart.
    async fn make() -> (TestStore, ()) {
        let store = MemcacheStore::connect(&servers(), MemcacheOptions::default()).unwrap();
        (Arc::new(store), ())
    }

    /// How long the retention behaviours' items live. The store gives each item a
    /// second more for memcached's one-second clock, so one lives between this and two
    /// seconds more. The behaviours check at five eighths of it (kept) and at ten
    /// eighths (gone): 15 s is a second clear of the longest 14.
    const LIFETIME: Duration = Duration::from_secs(12);

    /// A store whose items live [`LIFETIME`] after the device was last seen (registered or touched).
    async fn make_short_lived() -> (TestStore, ()) {
        let options = MemcacheOptions {
            ttl: LIFETIME,
            ..MemcacheOptions::default()
        };
        let store = MemcacheStore::connect(&servers(), options).unwrap();
        (Arc::new(store), ())
    }

    simplepush_store::conformance_suite!(make(), forgets_by_itself: make_short_lived(), LIFETIME);
}
