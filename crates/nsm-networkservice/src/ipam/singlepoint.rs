//! `singlepointipam` (server): one endpoint address per prefix, one client address per connection.
//!
//! **Request**: the endpoint's address in the first prefix with room (chosen once, on first use) goes
//! to `dst_ip_addrs` and the next free address to `src_ip_addrs`, both with the prefix's own length
//! (e.g. 192.168.0.0/24 → dst 192.168.0.0/24, src 192.168.0.1/24); no routes are added, the subnet
//! covers both. `excluded_prefixes` are skipped; a refresh keeps the client address unless it or the
//! endpoint address became excluded. If the endpoint address itself is excluded by a request, a new one
//! is chosen for new connections and the old one stays reserved for the connections using it (Go does
//! the same). **Close**: frees the client address. **State**: a lease per connection id; a failed first
//! Request frees its lease. No free address → `ResourceExhausted` naming the prefixes.

use std::collections::HashMap;

use async_trait::async_trait;
use ipnet::IpNet;
use nsm_api::connectioncontext::IpContext;
use nsm_api::{Connection, NetworkServiceRequest};
use nsm_core::{Ctx, NetworkServiceServer, Next, NsmError, Result};
use parking_lot::Mutex;

use super::pool::{Excluded, Pool};
use super::{
    LeaseBook, close_with_lease, parse_cidr, remove_addr, request_with_lease, strip_foreign,
};

const NAME: &str = "singlepointipam";

/// Allocates client addresses next to one endpoint address per prefix.
pub struct SinglePointIpamServer {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    pools: Vec<Pool>,
    /// The endpoint's own address in each pool, once chosen.
    own: Vec<Option<u128>>,
    leases: HashMap<String, Lease>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    pool: usize,
    dst: u128,
    src: u128,
}

impl SinglePointIpamServer {
    /// Allocates from `prefixes`, in order (IPv4 and IPv6 alike).
    pub fn new(prefixes: Vec<IpNet>) -> Self {
        let pools: Vec<Pool> = prefixes.into_iter().map(Pool::new).collect();
        Self {
            state: Mutex::new(State {
                own: vec![None; pools.len()],
                pools,
                leases: HashMap::new(),
            }),
        }
    }

    /// Number of client addresses currently handed out (one per connection), for leak checks.
    pub fn leased(&self) -> usize {
        self.state.lock().leases.len()
    }

    fn lease_for(&self, id: &str, ipc: &mut IpContext) -> Result<(String, String, bool)> {
        let excluded = Excluded::parse(&ipc.excluded_prefixes);
        let mut st = self.state.lock();
        if st.pools.is_empty() {
            return Err(NsmError::internal(NAME, "no prefixes configured"));
        }
        if let Some(old) = st.leases.get(id).copied() {
            let pool = &st.pools[old.pool];
            let (dst, src) = (pool.cidr(old.dst, false), pool.cidr(old.src, false));
            if !pool.is_excluded(&excluded, old.dst) && !pool.is_excluded(&excluded, old.src) {
                return Ok((dst, src, false));
            }
            remove_addr(&mut ipc.dst_ip_addrs, &dst);
            remove_addr(&mut ipc.src_ip_addrs, &src);
            st.free(id);
        }
        let lease = match st.recover(ipc, &excluded) {
            Some(lease) => lease,
            None => st.allocate(&excluded)?,
        };
        st.leases.insert(id.to_string(), lease);
        let pool = &st.pools[lease.pool];
        let (dst, src) = (pool.cidr(lease.dst, false), pool.cidr(lease.src, false));
        strip_foreign(ipc, &[dst.clone(), src.clone()]);
        Ok((dst, src, true))
    }
}

impl State {
    /// The client address the request brings, if it has a pool's own prefix length and is free there
    /// (an earlier run of this endpoint handed it out); the endpoint address it brings becomes the
    /// pool's own one if none is chosen yet. Takes them.
    fn recover(&mut self, ipc: &IpContext, excluded: &Excluded) -> Option<Lease> {
        for (src_ip, len) in ipc.src_ip_addrs.iter().filter_map(|a| parse_cidr(a)) {
            for i in 0..self.pools.len() {
                let pool = &mut self.pools[i];
                if pool.net().prefix_len() != len {
                    continue;
                }
                let Some(src) = pool.offset_of(src_ip) else {
                    continue;
                };
                if !pool.is_free(excluded, src) {
                    continue;
                }
                let wanted_own = ipc
                    .dst_ip_addrs
                    .iter()
                    .filter_map(|a| parse_cidr(a))
                    .filter(|(_, l)| *l == len)
                    .find_map(|(ip, _)| pool.offset_of(ip))
                    .filter(|d| *d != src && pool.is_free(excluded, *d));
                let own = match (self.own[i], wanted_own) {
                    (Some(own), _) if !pool.is_excluded(excluded, own) => own,
                    (_, Some(own)) => {
                        pool.take(own);
                        self.own[i] = Some(own);
                        own
                    }
                    _ => continue,
                };
                if own == src {
                    continue;
                }
                pool.take(src);
                return Some(Lease {
                    pool: i,
                    dst: own,
                    src,
                });
            }
        }
        None
    }

    fn allocate(&mut self, excluded: &Excluded) -> Result<Lease> {
        for i in 0..self.pools.len() {
            let pool = &mut self.pools[i];
            let own = match self.own[i] {
                Some(own) if !pool.is_excluded(excluded, own) => own,
                _ => {
                    let Some(own) = pool.first_free(excluded, None) else {
                        continue;
                    };
                    pool.take(own);
                    self.own[i] = Some(own);
                    own
                }
            };
            let Some(src) = pool.first_free(excluded, None) else {
                continue;
            };
            pool.take(src);
            return Ok(Lease {
                pool: i,
                dst: own,
                src,
            });
        }
        let nets: Vec<String> = self.pools.iter().map(|p| p.net().to_string()).collect();
        Err(NsmError::ResourceExhausted {
            element: NAME,
            what: format!(
                "no free client address left in {} (outside the excluded prefixes)",
                nets.join(", ")
            ),
        })
    }

    fn free(&mut self, id: &str) {
        if let Some(lease) = self.leases.remove(id) {
            self.pools[lease.pool].free(lease.src);
        }
    }
}

impl LeaseBook for SinglePointIpamServer {
    const ROUTES: bool = false;

    fn lease_for(&self, id: &str, ipc: &mut IpContext) -> Result<(String, String, bool)> {
        SinglePointIpamServer::lease_for(self, id, ipc)
    }

    fn free(&self, id: &str) {
        self.state.lock().free(id);
    }
}

#[async_trait]
impl NetworkServiceServer for SinglePointIpamServer {
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

    fn ipam(prefixes: &[&str]) -> Arc<SinglePointIpamServer> {
        Arc::new(SinglePointIpamServer::new(
            prefixes.iter().map(|p| p.parse().unwrap()).collect(),
        ))
    }

    fn addrs(conn: &Connection) -> (Vec<String>, Vec<String>) {
        let ip = conn.context.clone().unwrap().ip_context.unwrap();
        assert!(ip.src_routes.is_empty() && ip.dst_routes.is_empty());
        (ip.dst_ip_addrs, ip.src_ip_addrs)
    }

    #[tokio::test]
    async fn a_restarted_endpoint_gives_clients_their_old_addresses_back() {
        let c = chain(vec![ipam(&["192.168.0.0/24"])]);
        let a = c
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let b = c
            .run_request(&mut ctx(), request("b", "svc", &[]))
            .await
            .unwrap();
        let fresh = ipam(&["192.168.0.0/24"]);
        let c = chain(vec![fresh.clone()]);
        let again = |conn: &Connection| NetworkServiceRequest {
            connection: Some(conn.clone()),
            ..Default::default()
        };
        let b2 = c.run_request(&mut ctx(), again(&b)).await.unwrap();
        let a2 = c.run_request(&mut ctx(), again(&a)).await.unwrap();
        assert_eq!(addrs(&b2), addrs(&b));
        assert_eq!(addrs(&a2), addrs(&a));
        assert_eq!(fresh.leased(), 2);
        // Another CIDR: the old addresses are replaced, not kept next to the new ones.
        let other = chain(vec![ipam(&["192.168.7.0/24"])]);
        let moved = other.run_request(&mut ctx(), again(&a)).await.unwrap();
        assert_eq!(
            addrs(&moved),
            (vec!["192.168.7.0/24".into()], vec!["192.168.7.1/24".into()])
        );
    }

    #[tokio::test]
    async fn endpoint_address_is_shared_and_clients_get_their_own() {
        let ipam = ipam(&["192.168.0.0/24"]);
        let c = chain(vec![ipam.clone()]);
        let a = c
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let b = c
            .run_request(&mut ctx(), request("b", "svc", &[]))
            .await
            .unwrap();
        assert_eq!(
            addrs(&a),
            (vec!["192.168.0.0/24".into()], vec!["192.168.0.1/24".into()])
        );
        assert_eq!(
            addrs(&b),
            (vec!["192.168.0.0/24".into()], vec!["192.168.0.2/24".into()])
        );
        let again = c
            .run_request(
                &mut ctx(),
                NetworkServiceRequest {
                    connection: Some(a.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(addrs(&again), addrs(&a));
        assert_eq!(ipam.leased(), 2);
        c.run_close(&mut ctx(), a).await.unwrap();
        assert_eq!(ipam.leased(), 1);
        let c2 = c
            .run_request(&mut ctx(), request("c", "svc", &[]))
            .await
            .unwrap();
        assert_eq!(
            addrs(&c2).1,
            ["192.168.0.1/24"],
            "the freed address is reused"
        );
    }

    #[tokio::test]
    async fn ipv6_and_exhaustion_without_leaks() {
        let ipam = ipam(&["fd00::/127"]);
        let c = chain(vec![ipam.clone()]);
        let a = c
            .run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        assert_eq!(
            addrs(&a),
            (vec!["fd00::/127".into()], vec!["fd00::1/127".into()])
        );
        let err = c
            .run_request(&mut ctx(), request("b", "svc", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.to_string().contains("fd00::/127"), "{err}");
        assert_eq!(ipam.leased(), 1);

        let failing = Probe::failing(|_| Some(NsmError::unavailable("connect", "down")));
        let ipam2 = self::ipam(&["10.0.0.0/30"]);
        chain(vec![ipam2.clone(), failing])
            .run_request(&mut ctx(), request("x", "svc", &[]))
            .await
            .unwrap_err();
        assert_eq!(ipam2.leased(), 0);
    }

    #[tokio::test]
    async fn excluded_endpoint_address_moves_for_new_connections() {
        let ipam = ipam(&["10.0.0.0/29"]);
        let c = chain(vec![ipam.clone()]);
        c.run_request(&mut ctx(), request("a", "svc", &[]))
            .await
            .unwrap();
        let mut req = request("b", "svc", &[]);
        ip_context(req.connection.as_mut().unwrap()).excluded_prefixes = vec!["10.0.0.0/31".into()];
        let b = c.run_request(&mut ctx(), req).await.unwrap();
        assert_eq!(
            addrs(&b),
            (vec!["10.0.0.2/29".into()], vec!["10.0.0.3/29".into()])
        );
    }
}
