//! `clienturl` (being written).
