//! The memcache store's own errors, folded into [`StoreError`] by meaning.

use memcache::exp::Error as MetaError;
use simplepush_store::StoreError;

/// What went wrong inside the memcache store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A memcached operation failed.
    #[error("memcached {server}: {source}")]
    Memcache {
        /// The server's `host:port`.
        server: String,
        /// The client's error.
        source: MetaError,
    },
    /// memcached declined to store an unconditional write (out of memory, too large).
    #[error("memcached {server} did not store {key}")]
    NotStored { server: String, key: String },
    /// Compare-and-swap kept losing to concurrent writers.
    #[error("gave up on {key} after {attempts} attempts: concurrent writers kept changing it")]
    Contended { key: String, attempts: u32 },
    /// An item could not be decoded.
    #[error("item {key} is undecodable: {reason}")]
    Undecodable { key: String, reason: String },
    /// A record could not be encoded.
    #[error("item {key} could not be encoded: {reason}")]
    Unencodable { key: String, reason: String },
    /// A record would exceed what memcached stores in one item.
    #[error(
        "item {key} would be {bytes} bytes, over memcached's item limit of {limit} bytes \
         (too many channels with large data); the change was not stored"
    )]
    TooLarge {
        key: String,
        bytes: usize,
        limit: usize,
    },
    /// The health check read back something other than what it wrote.
    #[error("memcached {server} answered the health check with other data")]
    CheckMismatch { server: String },
    /// The store was configured wrongly.
    #[error("invalid memcache store configuration: {0}")]
    Config(String),
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Memcache { ref source, .. } if is_too_large(source) => {
                StoreError::TooLarge(message)
            }
            Error::TooLarge { .. } => StoreError::TooLarge(message),
            Error::Memcache { source, .. } if is_unavailable(&source) => {
                StoreError::Unavailable(message)
            }
            Error::CheckMismatch { .. } | Error::NotStored { .. } => {
                StoreError::Unavailable(message)
            }
            Error::Contended { .. } => StoreError::Conflict(message),
            Error::Undecodable { .. } => StoreError::Corrupt(message),
            Error::Memcache { .. } | Error::Unencodable { .. } | Error::Config(_) => {
                StoreError::Internal(message)
            }
        }
    }
}

/// Whether memcached refused an item over its `-I` (an `item_limit` set higher than
/// the servers' own). The client reports that answer to a write as ambiguous.
fn is_too_large(error: &MetaError) -> bool {
    match error {
        MetaError::Server(reply) => reply.contains("too large"),
        MetaError::Ambiguous { source, .. } => is_too_large(source),
        _ => false,
    }
}

/// Whether a client error means "the server cannot be reached or refused; retry later"
/// rather than a mistake on our side.
fn is_unavailable(error: &MetaError) -> bool {
    matches!(
        error,
        // Connection refused or reset, no answer in time (also after the request was
        // written: `Ambiguous`), out of memory or a garbled answer from a struggling
        // server.
        MetaError::Io(_)
            | MetaError::Timeout { .. }
            | MetaError::Ambiguous { .. }
            | MetaError::Server(_)
            | MetaError::Protocol(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memcache(source: MetaError) -> StoreError {
        Error::Memcache {
            server: "h:1".into(),
            source,
        }
        .into()
    }

    #[test]
    fn connection_failures_are_unavailable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = memcache(MetaError::Io(refused));
        assert!(
            matches!(error, StoreError::Unavailable(ref m) if m.contains("h:1")),
            "{error}"
        );
        let timeout = MetaError::Timeout { key: b"k".to_vec() };
        assert!(matches!(memcache(timeout), StoreError::Unavailable(_)));
    }

    #[test]
    fn errors_map_by_meaning() {
        let conflict: StoreError = Error::Contended {
            key: "k".into(),
            attempts: 3,
        }
        .into();
        assert!(matches!(conflict, StoreError::Conflict(_)));
        let corrupt: StoreError = Error::Undecodable {
            key: "k".into(),
            reason: "x".into(),
        }
        .into();
        assert!(matches!(corrupt, StoreError::Corrupt(_)));
        let large: StoreError = Error::TooLarge {
            key: "k".into(),
            bytes: 2,
            limit: 1,
        }
        .into();
        assert!(matches!(large, StoreError::TooLarge(ref m) if m.contains("item limit")));
        let refused = memcache(MetaError::Server("object too large for cache".into()));
        assert!(matches!(refused, StoreError::TooLarge(_)), "{refused:?}");
        let written = memcache(MetaError::Ambiguous {
            key: b"k".to_vec(),
            source: Box::new(MetaError::Server("object too large for cache".into())),
        });
        assert!(matches!(written, StoreError::TooLarge(_)), "{written:?}");
        let full = memcache(MetaError::Server("out of memory storing object".into()));
        assert!(matches!(full, StoreError::Unavailable(_)), "{full:?}");
        // CLIENT_ERROR: a request memcached refuses to parse is our mistake.
        let rejected = memcache(MetaError::Rejected("bad data chunk".into()));
        assert!(matches!(rejected, StoreError::Internal(_)));
    }
}
