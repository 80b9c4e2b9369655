//! `dnscontext`: DNS configuration carried in the connection context.
//!
//! - [`DnsContextServer`] (endpoint): adds its configured `DNSConfig`s to `context.dns_context`.
//! - [`DnsContextClient`] (NSC): after each successful Request, writes a CoreDNS `Corefile` and a
//!   `resolv.conf` pointing at the local CoreDNS; on Close, drops that connection's configs and rewrites.

mod client;
mod corefile;
mod server;

pub use client::DnsContextClient;
pub use corefile::render_corefile;
pub use server::DnsContextServer;
