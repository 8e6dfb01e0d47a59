//! The private error of the SQLite store, folded into [`StoreError`] by meaning.

use std::path::PathBuf;

use rusqlite::ErrorCode;
use simplepush_store::StoreError;

/// Everything that can go wrong inside the SQLite store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// SQLite (or rusqlite's conversion of a value) failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The directory that holds the database could not be created.
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// SQLite refused to switch the database to WAL mode.
    #[error("the database stays in journal mode {0:?} instead of WAL")]
    NoWal(String),
    /// The database was written by a newer build whose schema this one cannot read.
    #[error("the database has schema version {found}; this build knows up to {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A version that an SQLite INTEGER cannot hold.
    #[error("version {0} is beyond the largest storable version {max}", max = i64::MAX)]
    VersionOutOfRange(u64),
    /// A message TTL that an SQLite INTEGER cannot hold.
    #[error("TTL {0} is beyond the largest storable TTL {max}", max = i64::MAX)]
    TtlOutOfRange(u64),
    /// The store was closed; nothing more can be read or written.
    #[error("the store is closed")]
    Closed,
    /// The health check did not read back what it wrote.
    #[error("health check wrote beat {written} but read back {read:?}")]
    CheckMismatch { written: i64, read: Option<i64> },
    /// The blocking task running a query panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The writer thread failed to start or to close.
    #[error(transparent)]
    Writer(StoreError),
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Sqlite(error) => match sqlite_meaning(&error) {
                Meaning::Unavailable => StoreError::Unavailable(message),
                Meaning::Corrupt => StoreError::Corrupt(message),
                Meaning::Internal => StoreError::Internal(message),
            },
            Error::CreateDir { .. } | Error::Closed => StoreError::Unavailable(message),
            Error::SchemaTooNew { .. } => StoreError::Corrupt(message),
            Error::NoWal(_)
            | Error::VersionOutOfRange(_)
            | Error::TtlOutOfRange(_)
            | Error::CheckMismatch { .. }
            | Error::Task(_) => StoreError::Internal(message),
            Error::Writer(error) => error,
        }
    }
}

/// What a rusqlite error means to the caller.
enum Meaning {
    /// The file or its lock cannot be had right now; retrying later may work.
    Unavailable,
    /// What is stored cannot be decoded.
    Corrupt,
    /// A bug, or anything else.
    Internal,
}

fn sqlite_meaning(error: &rusqlite::Error) -> Meaning {
    match error {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OperationInterrupted => Meaning::Unavailable,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Meaning::Corrupt,
            _ => Meaning::Internal,
        },
        // A stored value of the wrong type, sign or encoding.
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::InvalidColumnType(..) => Meaning::Corrupt,
        _ => Meaning::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> Error {
        Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn busy_and_io_errors_are_unavailable() {
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_CANTOPEN,
            rusqlite::ffi::SQLITE_FULL,
        ] {
            let error = StoreError::from(sqlite(code));
            assert!(
                matches!(error, StoreError::Unavailable(_)),
                "{code}: {error}"
            );
            assert!(error.is_transient());
        }
    }

    #[test]
    fn undecodable_data_is_corrupt() {
        for error in [
            sqlite(rusqlite::ffi::SQLITE_CORRUPT),
            sqlite(rusqlite::ffi::SQLITE_NOTADB),
            Error::Sqlite(rusqlite::Error::IntegralValueOutOfRange(1, -1)),
            Error::SchemaTooNew {
                found: 9,
                supported: 1,
            },
        ] {
            let error = StoreError::from(error);
            assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
        }
    }

    #[test]
    fn other_errors_are_internal() {
        let constraint = StoreError::from(sqlite(rusqlite::ffi::SQLITE_CONSTRAINT));
        assert!(
            matches!(constraint, StoreError::Internal(_)),
            "{constraint}"
        );
        let version = StoreError::from(Error::VersionOutOfRange(u64::MAX));
        assert!(matches!(version, StoreError::Internal(_)), "{version}");
        assert!(version.to_string().contains(&u64::MAX.to_string()));
    }
}
