//! `excludedprefixes` (being written).
