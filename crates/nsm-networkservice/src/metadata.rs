//! `metadata` (being written).
