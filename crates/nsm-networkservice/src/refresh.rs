//! `refresh` (being written).
