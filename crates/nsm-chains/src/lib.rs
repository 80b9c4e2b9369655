//! The chains nsm-rs components run, one file each, readable top to bottom like the Go sdk's
//! `chains/*`: [`endpoint`] (the base every server hop shares), [`client`], [`nsmgr`], [`forwarder`],
//! [`registry_memory`] and [`icmp_responder`].
//!
//! Each builder returns the chain(s) plus a [`tonic::service::Routes`] ready to serve, so a binary or
//! the sandbox only has to bind a URL.

#![forbid(unsafe_code)]

pub mod client;
pub mod endpoint;
pub mod forwarder;
pub mod icmp_responder;
pub mod nsmgr;
pub mod registry_client;
pub mod registry_memory;
