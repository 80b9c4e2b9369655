//! Subcommands of `nsm`, one module each.

pub mod bench;
pub mod config;
pub mod registry;
