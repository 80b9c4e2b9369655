//! Subcommands of `nsm`, one module each.

pub mod config;
pub mod registry;
