//! `timeout` (being written).
