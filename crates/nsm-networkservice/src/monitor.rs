//! `monitor` (being written).
