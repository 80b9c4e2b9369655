//! `updatepath` (being written).
