//! `point2pointipam` (server): a host address for each end of a connection, and a route to the other.
//!
//! **Request**: the first two free addresses (skipping `excluded_prefixes`) of the first prefix with room
//! become `dst_ip_addrs` (endpoint side) and `src_ip_addrs` (client side) as /32 or /128; `src_routes`
//! gains the endpoint's address and `dst_routes` the client's. E.g. 192.168.0.0/16 → dst
//! 192.168.0.0/32, src 192.168.0.1/32. A refresh keeps the pair unless one of them is now excluded, in
//! which case the old pair is removed from the context and freed and a new one allocated.
//! **Close**: frees the pair. **State**: a lease per connection id; a failed first Request frees its
//! lease. No free pair → `ResourceExhausted` naming the prefixes.

use std::collections::HashMap;

use async_trait::async_trait;
use ipnet::IpNet;
use nsm_api::connectioncontext::IpContext;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;

use super::pool::{Excluded, Pool};
use super::{
    LeaseBook, close_with_lease, parse_cidr, remove_addr, remove_route, request_with_lease,
    strip_foreign,
};

const NAME: &str = "point2pointipam";

/// Allocates point-to-point address pairs.
pub struct Point2PointIpamServer {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    pools: Vec<Pool>,
    leases: HashMap<String, Lease>,
}

/// The pair handed to one connection.
#[derive(Debug, Clone, Copy)]
struct Lease {
    pool: usize,
    dst: u128,
    src: u128,
}

impl Point2PointIpamServer {
    /// Allocates from `prefixes`, in order (IPv4 and IPv6 alike).
    pub fn new(prefixes: Vec<IpNet>) -> Self {
        Self {
            state: Mutex::new(State {
                pools: prefixes.into_iter().map(Pool::new).collect(),
                leases: HashMap::new(),
            }),
        }
    }

    /// Number of addresses currently handed out (two per connection), for leak checks.
    pub fn leased(&self) -> usize {
        self.state.lock().pools.iter().map(Pool::taken).sum()
    }

    /// Finds or allocates the connection's pair; returns it as strings and whether it is new.
    fn lease_for(&self, id: &str, ipc: &mut IpContext) -> Result<(String, String, bool)> {
        let excluded = Excluded::parse(&ipc.excluded_prefixes);
        let mut st = self.state.lock();
        if st.pools.is_empty() {
            return Err(NsmError::internal(NAME, "no prefixes configured"));
        }
        if let Some(old) = st.leases.get(id).copied() {
            let pool = &st.pools[old.pool];
            let (dst, src) = (pool.cidr(old.dst, true), pool.cidr(old.src, true));
            if !pool.is_excluded(&excluded, old.dst) && !pool.is_excluded(&excluded, old.src) {
                return Ok((dst, src, false));
            }
            // Part of the pair is now excluded: take it out of the context and start over.
            remove_addr(&mut ipc.dst_ip_addrs, &dst);
            remove_addr(&mut ipc.src_ip_addrs, &src);
            remove_route(&mut ipc.src_routes, &dst);
            remove_route(&mut ipc.dst_routes, &src);
            st.free(id);
        }
        let lease = match st.recover(ipc, &excluded) {
            Some(lease) => lease,
            None => st.allocate(&excluded)?,
        };
        st.leases.insert(id.to_string(), lease);
        let pool = &st.pools[lease.pool];
        let (dst, src) = (pool.cidr(lease.dst, true), pool.cidr(lease.src, true));
        strip_foreign(ipc, &[dst.clone(), src.clone()]);
        Ok((dst, src, true))
    }
}

impl State {
    /// The pair the request brings, if both addresses are host addresses of one pool and free there
    /// (an earlier run of this endpoint handed them out). Takes them.
    fn recover(&mut self, ipc: &IpContext, excluded: &Excluded) -> Option<Lease> {
        let host = |s: &String| {
            let (ip, len) = parse_cidr(s)?;
            (u32::from(len) == if ip.is_ipv4() { 32 } else { 128 }).then_some(ip)
        };
        for dst_ip in ipc.dst_ip_addrs.iter().filter_map(host) {
            for src_ip in ipc.src_ip_addrs.iter().filter_map(host) {
                for (i, pool) in self.pools.iter_mut().enumerate() {
                    let (Some(dst), Some(src)) = (pool.offset_of(dst_ip), pool.offset_of(src_ip))
                    else {
                        continue;
                    };
                    if dst != src && pool.is_free(excluded, dst) && pool.is_free(excluded, src) {
                        pool.take(dst);
                        pool.take(src);
                        return Some(Lease { pool: i, dst, src });
                    }
                }
            }
        }
        None
    }

    fn allocate(&mut self, excluded: &Excluded) -> Result<Lease> {
        for (i, pool) in self.pools.iter_mut().enumerate() {
            let Some(dst) = pool.first_free(excluded, None) else {
                continue;
            };
            let Some(src) = pool.first_free(excluded, Some(dst)) else {
                continue;
            };
            pool.take(dst);
            pool.take(src);
            return Ok(Lease { pool: i, dst, src });
        }
        let nets: Vec<String> = self.pools.iter().map(|p| p.net().to_string()).collect();
        Err(NsmError::ResourceExhausted {
            element: NAME,
            what: format!(
                "no two free addresses left in {} (outside the excluded prefixes)",
                nets.join(", ")
            ),
        })
    }

    fn free(&mut self, id: &str) {
        if let Some(lease) = self.leases.remove(id) {
            let pool = &mut self.pools[lease.pool];
            pool.free(lease.dst);
            pool.free(lease.src);
        }
    }
}

impl LeaseBook for Point2PointIpamServer {
    const ROUTES: bool = true;

    fn lease_for(&self, id: &str, ipc: &mut IpContext) -> Result<(String, String, bool)> {
        Point2PointIpamServer::lease_for(self, id, ipc)
    }

    fn free(&self, id: &str) {
        self.state.lock().free(id);
    }
}

#[async_trait]
impl NetworkServiceServer for Point2PointIpamServer {
    async fn request(
        &self,
        ctx: &mut Ctx,
        request: NetworkServiceRequest,
        next: Next,
    ) -> Result<Connection> {
        request_with_lease(self, ctx, request, next).await
    }

    async fn close(&self, ctx: &mut Ctx, conn: Connection, next: Next) -> Result<()> {
        close_with_lease(self, ctx, conn, next).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::Code;

    use super::*;
    use crate::discover::testing::{Probe, chain, ctx, request};
    use crate::ipam::ip_context;

    fn ipam(prefixes: &[&str]) -> Arc<Point2PointIpamServer> {
        Arc::new(Point2PointIpamServer::new(
            prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        ))
    }

    fn ipc(conn: &Connection) -> IpContext {
        conn.context.clone().unwrap().ip_context.unwrap()
    }

    fn routes(r: &[nsm_api::connectioncontext::Route]) -> Vec<&str> {
        r.iter().map(|r| r.prefix.as_str()).collect()
    }

    #[tokio::test]
    async fn allocates_pairs_with_routes_and_keeps_them_on_refresh() {
        let ipam = ipam(&["192.168.0.0/16"]);
        let c = chain(vec![ipam.clone()]);
        let conn = c
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let ip = ipc(&conn);
        assert_eq!(ip.dst_ip_addrs, ["192.168.0.0/32"]);
        assert_eq!(ip.src_ip_addrs, ["192.168.0.1/32"]);
        assert_eq!(routes(&ip.src_routes), ["192.168.0.0/32"]);
        assert_eq!(routes(&ip.dst_routes), ["192.168.0.1/32"]);

        let refreshed = c
            .run_request(
                &mut ctx(),
                NetworkServiceRequest {
                    connection: Some(conn),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(ipc(&refreshed), ip, "same pair, nothing duplicated");

        let other = c
            .run_request(&mut ctx(), request("b", "svc", &[]))
            .await
            .unwrap();
        assert_eq!(ipc(&other).dst_ip_addrs, ["192.168.0.2/32"]);
        assert_eq!(ipc(&other).src_ip_addrs, ["192.168.0.3/32"]);
        assert_eq!(ipam.leased(), 4);
    }

    #[tokio::test]
    async fn honours_excluded_prefixes_now_and_on_refresh() {
        let ipam = ipam(&["10.0.0.0/24"]);
        let c = chain(vec![ipam.clone()]);
        let mut req = request("a", "svc", &[]);
        ip_context(req.connection.as_mut().unwrap()).excluded_prefixes = vec!["10.0.0.0/30".into()];
        let conn = c.run_request(&mut ctx(), req).await.unwrap();
        assert_eq!(ipc(&conn).dst_ip_addrs, ["10.0.0.4/32"]);
        assert_eq!(ipc(&conn).src_ip_addrs, ["10.0.0.5/32"]);

        // Refresh where the old pair became excluded: a new pair replaces it everywhere.
        let mut req = NetworkServiceRequest {
            connection: Some(conn),
            ..Default::default()
        };
        ip_context(req.connection.as_mut().unwrap())
            .excluded_prefixes
            .push("10.0.0.4/31".into());
        let conn = c.run_request(&mut ctx(), req).await.unwrap();
        let ip = ipc(&conn);
        assert_eq!(ip.dst_ip_addrs, ["10.0.0.6/32"]);
        assert_eq!(ip.src_ip_addrs, ["10.0.0.7/32"]);
        assert_eq!(routes(&ip.src_routes), ["10.0.0.6/32"]);
        assert_eq!(routes(&ip.dst_routes), ["10.0.0.7/32"]);
        assert_eq!(ipam.leased(), 2, "the old pair was freed");
    }

    #[tokio::test]
    async fn frees_on_close_and_on_failed_first_request() {
        let ipam = ipam(&["10.0.0.0/24"]);
        let c = chain(vec![ipam.clone()]);
        let mut ctx = ctx();
        let conn = c
            .run_request(&mut ctx, request("a", "svc", &[]))
            .await
            .unwrap();
        c.run_close(&mut ctx, conn).await.unwrap();
        assert_eq!(ipam.leased(), 0);

        let failing = Probe::failing(|_| Some(NsmError::unavailable("connect", "down")));
        let c = chain(vec![ipam.clone(), failing]);
        c.run_request(&mut ctx, request("b", "svc", &[]))
            .await
            .unwrap_err();
        assert_eq!(ipam.leased(), 0);
    }

    #[tokio::test]
    async fn keeps_the_lease_when_a_refresh_fails() {
        let ipam = ipam(&["10.0.0.0/24"]);
        let conn = chain(vec![ipam.clone()])
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let failing = Probe::failing(|_| Some(NsmError::unavailable("connect", "down")));
        let req = NetworkServiceRequest {
            connection: Some(conn),
            ..Default::default()
        };
        chain(vec![ipam.clone(), failing])
            .run_request(&mut ctx(), req)
            .await
            .unwrap_err();
        assert_eq!(ipam.leased(), 2);
    }

    #[tokio::test]
    async fn exhausted_pool_is_resource_exhausted_and_leaks_nothing() {
        let ipam = ipam(&["10.0.0.0/31", "10.0.1.0/32"]);
        let c = chain(vec![ipam.clone()]);
        c.run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let err = c
            .run_request(&mut ctx(), request("b", "svc", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        let msg = err.to_string();
        assert!(msg.contains("10.0.0.0/31, 10.0.1.0/32"), "{msg}");
        assert_eq!(ipam.leased(), 2);
    }

    #[tokio::test]
    async fn a_restarted_endpoint_gives_each_client_its_old_pair_back() {
        let first = ipam(&["10.0.0.0/24"]);
        let c = chain(vec![first.clone()]);
        let a = c
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let b = c
            .run_request(&mut ctx(), request("b", "svc", &[]))
            .await
            .unwrap();
        // The endpoint restarts (empty lease table); b refreshes first, then a.
        let second = ipam(&["10.0.0.0/24"]);
        let c = chain(vec![second.clone()]);
        let again = |conn: &Connection| NetworkServiceRequest {
            connection: Some(conn.clone()),
            ..Default::default()
        };
        let b2 = c.run_request(&mut ctx(), again(&b)).await.unwrap();
        let a2 = c.run_request(&mut ctx(), again(&a)).await.unwrap();
        assert_eq!(ipc(&b2), ipc(&b), "no reshuffle, nothing duplicated");
        assert_eq!(ipc(&a2), ipc(&a));
        assert_eq!(second.leased(), 4);
        // A brand-new client gets fresh addresses, not theirs.
        let n = c
            .run_request(&mut ctx(), request("n", "svc", &[]))
            .await
            .unwrap();
        assert_eq!(ipc(&n).dst_ip_addrs, ["10.0.0.4/32"]);
    }

    #[tokio::test]
    async fn addresses_of_another_cidr_or_taken_ones_are_replaced() {
        let old = ipam(&["10.0.0.0/24"]);
        let a = chain(vec![old])
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let other = ipam(&["10.1.0.0/24"]);
        let healed = chain(vec![other.clone()])
            .run_request(
                &mut ctx(),
                NetworkServiceRequest {
                    connection: Some(a.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let ip = ipc(&healed);
        assert_eq!(ip.dst_ip_addrs, ["10.1.0.0/32"]);
        assert_eq!(ip.src_ip_addrs, ["10.1.0.1/32"]);
        assert_eq!(routes(&ip.src_routes), ["10.1.0.0/32"]);
        assert_eq!(routes(&ip.dst_routes), ["10.1.0.1/32"]);

        // Same CIDR, but someone else already holds the pair: a new pair, the old one dropped.
        let same = ipam(&["10.0.0.0/24"]);
        let c = chain(vec![same.clone()]);
        c.run_request(&mut ctx(), request("z", "svc", &[]))
            .await
            .unwrap();
        let moved = c
            .run_request(
                &mut ctx(),
                NetworkServiceRequest {
                    connection: Some(a),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(ipc(&moved).dst_ip_addrs, ["10.0.0.2/32"]);
        assert_eq!(ipc(&moved).src_ip_addrs, ["10.0.0.3/32"]);
        assert_eq!(routes(&ipc(&moved).src_routes), ["10.0.0.2/32"]);
        assert_eq!(same.leased(), 4);
    }

    #[tokio::test]
    async fn next_prefix_is_used_when_the_first_is_full() {
        let ipam = ipam(&["10.0.0.0/31", "fd00::/126"]);
        let c = chain(vec![ipam.clone()]);
        c.run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let conn = c
            .run_request(&mut ctx(), request("b", "svc", &[]))
            .await
            .unwrap();
        assert_eq!(ipc(&conn).dst_ip_addrs, ["fd00::/128"]);
        assert_eq!(ipc(&conn).src_ip_addrs, ["fd00::1/128"]);
        assert_eq!(routes(&ipc(&conn).dst_routes), ["fd00::1/128"]);
    }
}
