//! `clientinfo` (being written).
