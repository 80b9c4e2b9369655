//! `mechanisms` (being written).
