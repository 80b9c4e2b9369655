//! `trimpath` (being written).
