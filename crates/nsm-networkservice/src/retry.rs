//! `retry` (being written).
