//! `updatetoken` (being written).
