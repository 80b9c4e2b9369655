//! `filtermechanisms` (being written).
