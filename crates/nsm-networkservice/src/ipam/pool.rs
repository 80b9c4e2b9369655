//! An address pool over one prefix, and the excluded ranges a request brings.
//!
//! Addresses are kept as `u128` (IPv4 in the low 32 bits) so both families share one code path. A pool
//! remembers only the addresses it handed out; finding a free one walks from its low-water mark (below
//! which every address is taken), jumping over excluded ranges, so the cost is bounded by the number of
//! exclusions and the holes left by freed leases — not by the number of leases (10,000 clients on one
//! endpoint allocate in constant time each) and never by the size of the prefix (an IPv6 /64 is fine).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// A prefix and the addresses taken from it.
#[derive(Debug)]
pub(super) struct Pool {
    net: IpNet,
    first: u128,
    last: u128,
    taken: BTreeSet<u128>,
    /// Every address in `first..low_water` is taken.
    low_water: u128,
}

impl Pool {
    pub(super) fn new(net: IpNet) -> Self {
        let net = net.trunc();
        Self {
            first: to_u128(net.network()),
            last: to_u128(net.broadcast()),
            net,
            taken: BTreeSet::new(),
            low_water: to_u128(net.network()),
        }
    }

    pub(super) fn net(&self) -> IpNet {
        self.net
    }

    fn is_v4(&self) -> bool {
        matches!(self.net, IpNet::V4(_))
    }

    /// `addr/len`, with `len` the pool's own prefix length or a host length (32/128).
    pub(super) fn cidr(&self, addr: u128, host: bool) -> String {
        let len = match (host, self.is_v4()) {
            (true, true) => 32,
            (true, false) => 128,
            (false, _) => self.net.prefix_len(),
        };
        format!("{}/{len}", self.ip(addr))
    }

    pub(super) fn ip(&self, addr: u128) -> IpAddr {
        if self.is_v4() {
            // Pool addresses of an IPv4 pool fit in 32 bits by construction.
            IpAddr::V4(Ipv4Addr::from(u32::try_from(addr).unwrap_or(u32::MAX)))
        } else {
            IpAddr::V6(Ipv6Addr::from(addr))
        }
    }

    /// The lowest address that is neither taken, excluded nor `skip`.
    pub(super) fn first_free(&self, excluded: &Excluded, skip: Option<u128>) -> Option<u128> {
        let mut cur = self.low_water.max(self.first);
        while cur <= self.last {
            if let Some(end) = excluded.covering_end(self.is_v4(), cur) {
                cur = end.checked_add(1)?;
            } else if self.taken.contains(&cur) || skip == Some(cur) {
                cur = cur.checked_add(1)?;
            } else {
                return Some(cur);
            }
        }
        None
    }

    pub(super) fn take(&mut self, addr: u128) {
        self.taken.insert(addr);
        while self.low_water <= self.last && self.taken.contains(&self.low_water) {
            match self.low_water.checked_add(1) {
                Some(next) => self.low_water = next,
                None => break,
            }
        }
    }

    pub(super) fn free(&mut self, addr: u128) {
        if self.taken.remove(&addr) {
            self.low_water = self.low_water.min(addr);
        }
    }

    pub(super) fn taken(&self) -> usize {
        self.taken.len()
    }

    /// `ip` as a pool address, if the pool's prefix holds it.
    pub(super) fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        self.net.contains(&ip).then(|| to_u128(ip))
    }

    /// True if `addr` is neither taken nor excluded.
    pub(super) fn is_free(&self, excluded: &Excluded, addr: u128) -> bool {
        !self.taken.contains(&addr) && !self.is_excluded(excluded, addr)
    }

    pub(super) fn is_excluded(&self, excluded: &Excluded, addr: u128) -> bool {
        excluded.covering_end(self.is_v4(), addr).is_some()
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Address ranges a request asks not to use (`ip_context.excluded_prefixes`).
#[derive(Debug, Default)]
pub(super) struct Excluded {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl Excluded {
    /// Parses `addr/len` prefixes; entries that are not prefixes are ignored, as Go does.
    pub(super) fn parse(prefixes: &[String]) -> Self {
        let mut e = Self::default();
        for net in prefixes
            .iter()
            .filter_map(|p| p.trim().parse::<IpNet>().ok())
        {
            let range = (to_u128(net.network()), to_u128(net.broadcast()));
            match net {
                IpNet::V4(_) => e.v4.push(range),
                IpNet::V6(_) => e.v6.push(range),
            }
        }
        e
    }

    /// The end of the furthest-reaching excluded range that contains `addr`.
    fn covering_end(&self, v4: bool, addr: u128) -> Option<u128> {
        let ranges = if v4 { &self.v4 } else { &self.v6 };
        ranges
            .iter()
            .filter(|(start, end)| *start <= addr && addr <= *end)
            .map(|(_, end)| *end)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_water_mark_skips_leases_and_returns_to_freed_holes() {
        let mut pool = Pool::new("fd00::/112".parse().unwrap());
        let none = Excluded::default();
        for _ in 0..10_000 {
            let a = pool.first_free(&none, None).unwrap();
            pool.take(a);
        }
        assert_eq!(pool.taken(), 10_000);
        assert_eq!(pool.first_free(&none, None), Some(pool.first + 10_000));
        pool.free(pool.first + 17);
        assert_eq!(
            pool.first_free(&none, None),
            Some(pool.first + 17),
            "the hole is reused first"
        );
        pool.take(pool.first + 17);
        assert_eq!(pool.first_free(&none, None), Some(pool.first + 10_000));
    }

    #[test]
    fn the_last_address_of_the_whole_space_does_not_overflow() {
        let mut pool = Pool::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"
                .parse()
                .unwrap(),
        );
        let none = Excluded::default();
        pool.take(pool.first);
        pool.take(pool.last);
        assert_eq!(pool.first_free(&none, None), None);
    }

    #[test]
    fn skips_taken_and_excluded_addresses() {
        let mut pool = Pool::new("10.0.0.0/29".parse().unwrap());
        let excluded =
            Excluded::parse(&["10.0.0.0/31".into(), "garbage".into(), "fd00::/8".into()]);
        let a = pool.first_free(&excluded, None).unwrap();
        assert_eq!(pool.cidr(a, true), "10.0.0.2/32");
        pool.take(a);
        assert_eq!(
            pool.cidr(pool.first_free(&excluded, None).unwrap(), false),
            "10.0.0.3/29"
        );
        let everything = Excluded::parse(&["0.0.0.0/0".into()]);
        assert_eq!(pool.first_free(&everything, None), None);
    }

    #[test]
    fn large_ipv6_pools_do_not_scan_the_prefix() {
        let pool = Pool::new("fd00::/64".parse().unwrap());
        let excluded = Excluded::parse(&["fd00::/65".into()]);
        let a = pool.first_free(&excluded, None).unwrap();
        assert_eq!(pool.cidr(a, true), "fd00::8000:0:0:0/128");
        let all = Excluded::parse(&["fd00::/64".into()]);
        assert_eq!(pool.first_free(&all, None), None);
    }
}
