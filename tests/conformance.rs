//! Runs the store conformance suite against every backend compiled in.

mod memory {
    use std::sync::Arc;

    use simplepush_store::{MemoryStore, testkit::TestStore};

    async fn make() -> (TestStore, ()) {
        (Arc::new(MemoryStore::new()), ())
    }

    simplepush_store::conformance_suite!(make());
}
