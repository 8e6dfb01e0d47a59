//! The memcache store of simplepush (being written).
