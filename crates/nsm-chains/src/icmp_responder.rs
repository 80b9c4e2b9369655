//! The icmp-responder endpoint (Go `cmd-nse-icmp-responder`).
//!
//! endpoint chain → recvfd → point2pointipam(CIDR) → mechanisms{KERNEL: kernel server, NOOP:
//! nothing} → dnscontext(configs) → *additional* → sendfd (the endpoint's network namespace goes back
//! to the forwarder as an fd on unix sockets; recvfd claims the copy a forwarder passes back on each
//! refresh and Close, which Go's cmd-nse leaves unclaimed)

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;
use nsm_api::connectioncontext::DnsConfig;
use nsm_api::mechanisms::{kernel, noop};
use nsm_core::chain::Element;
use nsm_networkservice::dnscontext::DnsContextServer;
use nsm_networkservice::ipam::point2point::Point2PointIpamServer;
use nsm_networkservice::mechanisms::MechanismsServer;
use nsm_networkservice::mechanisms::kernel::KernelServer;
use nsm_networkservice::mechanisms::recvfd::RecvFdServer;
use nsm_networkservice::mechanisms::sendfd::SendFdServer;

use crate::endpoint::{Endpoint, EndpointOptions};

/// A built icmp-responder and its address pool.
pub struct IcmpResponder {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its IPAM (to count leases).
    pub ipam: Arc<Point2PointIpamServer>,
}

/// Passes every call on unchanged (the NOOP mechanism has nothing to set up).
struct Passthrough;

#[nsm_core::async_trait]
impl nsm_core::NetworkServiceServer for Passthrough {
    async fn request(
        &self,
        ctx: &mut nsm_core::Ctx,
        request: nsm_api::NetworkServiceRequest,
        next: nsm_core::Next,
    ) -> nsm_core::Result<nsm_api::Connection> {
        next.request(ctx, request).await
    }
    async fn close(
        &self,
        ctx: &mut nsm_core::Ctx,
        conn: nsm_api::Connection,
        next: nsm_core::Next,
    ) -> nsm_core::Result<()> {
        next.close(ctx, conn).await
    }
    fn name(&self) -> &'static str {
        "null"
    }
}

impl IcmpResponder {
    /// Builds the endpoint on `base` options, serving addresses from `cidrs`.
    pub fn new(base: EndpointOptions, cidrs: Vec<IpNet>, dns: Vec<DnsConfig>) -> Self {
        Self::with_netns_url(base, cidrs, dns, None)
    }

    /// Like [`IcmpResponder::new`], but the KERNEL mechanism names `netns_url` as the endpoint's
    /// network namespace (a process without fd passing: `file:///proc/<pid>/ns/net`).
    pub fn with_netns_url(
        mut base: EndpointOptions,
        cidrs: Vec<IpNet>,
        dns: Vec<DnsConfig>,
        netns_url: Option<String>,
    ) -> Self {
        let kernel_server = match netns_url {
            Some(url) => KernelServer::new(None).with_netns_url(url),
            None => KernelServer::new(None),
        };
        let ipam = Arc::new(Point2PointIpamServer::new(cidrs));
        let mechanisms: BTreeMap<String, Element> = [
            (
                kernel::MECHANISM.to_string(),
                Arc::new(kernel_server) as Element,
            ),
            (
                noop::MECHANISM.to_string(),
                Arc::new(Passthrough) as Element,
            ),
        ]
        .into();
        let mut additional: Vec<Element> = vec![
            Arc::new(RecvFdServer::new()),
            ipam.clone(),
            Arc::new(MechanismsServer::new(mechanisms)),
            Arc::new(DnsContextServer::new(dns)),
        ];
        additional.append(&mut base.additional);
        additional.push(Arc::new(SendFdServer::new()));
        base.additional = additional;
        Self {
            endpoint: Endpoint::new(base),
            ipam,
        }
    }
}
