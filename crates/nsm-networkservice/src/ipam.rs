//! `ipam` (being written).
