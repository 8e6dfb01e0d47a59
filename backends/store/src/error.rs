//! The one error type every backend folds its own errors into, by meaning.

/// Why a store could not answer. Nothing stored before is changed by a failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The storage cannot be reached or refused the request; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Concurrent writers kept colliding and the change was given up; retry.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// Stored data could not be decoded.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// The change would make what the store keeps for one device larger than it can
    /// hold (e.g. a memcached item); nothing was changed. Retrying does not help until
    /// the device's pending data shrinks (acks, unregisters, expiry).
    #[error("store limit: {0}")]
    TooLarge(String),
    /// Anything else that went wrong inside the store.
    #[error("store internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the caller should answer "unavailable, retry later" (503) rather than
    /// "internal error" (500).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict(_))
    }
}
