//! `authorize` (being written).
