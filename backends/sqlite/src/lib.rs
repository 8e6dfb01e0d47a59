//! The sqlite store of simplepush (being written).
