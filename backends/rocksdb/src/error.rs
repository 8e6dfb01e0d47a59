//! Folds RocksDB's and tokio's errors into [`StoreError`] by meaning.

use rocksdb::ErrorKind;
use simplepush_store::StoreError;

/// A RocksDB error as the store reports it: I/O trouble and contention may pass, so
/// they are [`StoreError::Unavailable`]; damaged files are [`StoreError::Corrupt`];
/// everything else (bad arguments, unsupported options) is a bug or a misconfiguration.
pub(crate) fn from_rocksdb(error: rocksdb::Error) -> StoreError {
    let kind = error.kind();
    let message = error.into_string();
    match kind {
        ErrorKind::IOError
        | ErrorKind::Busy
        | ErrorKind::TimedOut
        | ErrorKind::TryAgain
        | ErrorKind::Incomplete
        | ErrorKind::Aborted
        | ErrorKind::ShutdownInProgress => StoreError::Unavailable(message),
        ErrorKind::Corruption => StoreError::Corrupt(message),
        _ => StoreError::Internal(message),
    }
}

/// A blocking task that did not finish: cancelled means the runtime is shutting down
/// (retrying elsewhere may work); a panic is a bug.
pub(crate) fn from_join(error: tokio::task::JoinError) -> StoreError {
    if error.is_cancelled() {
        StoreError::Unavailable("rocksdb task cancelled".to_owned())
    } else {
        StoreError::Internal(format!("rocksdb task failed: {error}"))
    }
}
