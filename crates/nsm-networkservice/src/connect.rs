//! `connect` (being written).
