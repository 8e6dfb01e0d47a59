//! The memcache store's own errors, folded into [`StoreError`] by meaning.
//!
//! Keys hold uaids, and a uaid is a device's credential: no message names a key, only
//! the kind of item (`sp1:d:…`), and the client's errors are rendered without theirs.

use std::fmt;

use memcache::exp::Error as MetaError;
use simplepush_store::StoreError;

/// What went wrong inside the memcache store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A memcached operation failed.
    #[error("memcached {server}: {}", Keyless(source))]
    Memcache {
        /// The server's `host:port`.
        server: String,
        /// The client's error.
        source: MetaError,
    },
    /// memcached declined to store an unconditional write (out of memory, too large).
    #[error("memcached {server} did not store {}", kind(key))]
    NotStored { server: String, key: String },
    /// Compare-and-swap kept losing to concurrent writers.
    #[error(
        "gave up on {} after {attempts} attempts: concurrent writers kept changing it",
        kind(key)
    )]
    Contended { key: String, attempts: u32 },
    /// An item could not be decoded.
    #[error("item {} is undecodable: {reason}", kind(key))]
    Undecodable { key: String, reason: String },
    /// A record could not be encoded.
    #[error("item {} could not be encoded: {reason}", kind(key))]
    Unencodable { key: String, reason: String },
    /// A record would exceed what memcached stores in one item.
    #[error(
        "item {} would be {bytes} bytes, over memcached's item limit of {limit} bytes \
         (too many channels with large data); the change was not stored",
        kind(key)
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

/// A key without the ids in it: `sp1:d:…` for `sp1:d:<uaid>`, `sp1:m:…` for
/// `sp1:m:<uaid>:<message id>` (what follows the second `:` is never shown).
fn kind(key: &str) -> String {
    let second = key.match_indices(':').nth(1).map(|(at, _)| at);
    match second {
        Some(end) => format!("{}…", &key[..=end]),
        None => "an item".to_owned(),
    }
}

/// A client error rendered without the key it names (timeouts and ambiguous outcomes
/// carry the key of their request).
struct Keyless<'a>(&'a MetaError);

impl fmt::Display for Keyless<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            MetaError::Timeout { key } => {
                write!(
                    f,
                    "timed out on a request for {}",
                    kind(&String::from_utf8_lossy(key))
                )
            }
            MetaError::Ambiguous { key, source } => write!(
                f,
                "the outcome of a request for {} is unknown: {}",
                kind(&String::from_utf8_lossy(key)),
                Keyless(source)
            ),
            other => other.fmt(f),
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
    fn messages_never_name_a_key() {
        let uaid = "2f0d9038380946a88b51253642ca9677";
        let key = format!("sp1:d:{uaid}");
        let timeout = || MetaError::Timeout {
            key: key.clone().into_bytes(),
        };
        let messages = [
            memcache(timeout()).to_string(),
            memcache(MetaError::Ambiguous {
                key: key.clone().into_bytes(),
                source: Box::new(timeout()),
            })
            .to_string(),
            StoreError::from(Error::NotStored {
                server: "h:1".into(),
                key: key.clone(),
            })
            .to_string(),
            StoreError::from(Error::Contended {
                key: key.clone(),
                attempts: 3,
            })
            .to_string(),
            StoreError::from(Error::Undecodable {
                key: key.clone(),
                reason: "x".into(),
            })
            .to_string(),
            StoreError::from(Error::Unencodable {
                key: key.clone(),
                reason: "x".into(),
            })
            .to_string(),
            StoreError::from(Error::TooLarge {
                key: key.clone(),
                bytes: 2,
                limit: 1,
            })
            .to_string(),
        ];
        for message in messages {
            assert!(!message.contains(uaid), "{message}");
            assert!(message.contains("sp1:d:…"), "{message}");
        }
        // Message items: neither the uaid nor the message id.
        let key = format!("sp1:m:{uaid}:0001-secret");
        let messages = [
            memcache(MetaError::Timeout {
                key: key.clone().into_bytes(),
            })
            .to_string(),
            StoreError::from(Error::Undecodable {
                key: key.clone(),
                reason: "x".into(),
            })
            .to_string(),
        ];
        for message in messages {
            assert!(!message.contains(uaid), "{message}");
            assert!(!message.contains("secret"), "{message}");
            assert!(message.contains("sp1:m:…"), "{message}");
        }
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
