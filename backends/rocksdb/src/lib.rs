//! The rocksdb store of simplepush (being written).
