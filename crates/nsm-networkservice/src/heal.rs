//! `heal` (being written).
