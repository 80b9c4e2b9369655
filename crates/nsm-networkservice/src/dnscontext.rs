//! `dnscontext` (being written).
