//! `discover` (being written).
