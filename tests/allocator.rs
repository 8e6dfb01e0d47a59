//! The binary's allocator settings are in effect (src/main.rs `malloc_conf`): jemalloc
//! reads them from an exported symbol and silently ignores a misnamed one, so look for
//! what they cause in the running server.

#![cfg(feature = "jemalloc")]

mod common;

use std::time::{Duration, Instant};

use common::Server;

/// The names of the server process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn freed_memory_is_purged_by_jemallocs_background_thread() {
    let server = Server::start().await;
    // Wake the server so that every arena is in use.
    let (_device, _uaid) = server.device().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = thread_names(server.pid());
        if names.iter().any(|name| name.starts_with("jemalloc_bg_thd")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no jemalloc background thread among {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
