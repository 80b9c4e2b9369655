//! Subcommands of `nsm`, one module each.

pub mod bench;
pub mod common;
pub mod config;
pub mod ctl;
pub mod forwarder;
pub mod identity;
pub mod nsc;
pub mod nse;
pub mod nsmgr;
pub mod registry;
pub mod up;
