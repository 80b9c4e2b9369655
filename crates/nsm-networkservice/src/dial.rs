//! `dial` (being written).
