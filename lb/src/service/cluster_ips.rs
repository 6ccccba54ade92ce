//! [`ClusterIps`]: every cluster IP of the Services, for refusing what no Service port takes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fnv::FnvHashSet;

/// The cluster IPs of the compiled Services (those with at least one port, both families,
/// with endpoints or without): kube-proxy's `cluster-ips` set, whose addresses refuse a new
/// connection on any port or protocol no Service port matched (`ip daddr @cluster-ips
/// reject`), so that a client fails at once instead of its packet wandering off the node.
///
/// Looked up only when a packet matched no frontend, which traffic between pods mostly is:
/// the lowest and highest address of each family (cluster IPs come from one service range)
/// turn most such packets away with two comparisons, before the set is hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterIps {
    addrs: FnvHashSet<IpAddr>,
    /// Lowest and highest IPv4 cluster IP; lowest above highest when there is none.
    v4: (u32, u32),
    /// The same for IPv6.
    v6: (u128, u128),
}

impl Default for ClusterIps {
    fn default() -> Self {
        ClusterIps {
            addrs: FnvHashSet::default(),
            v4: (u32::MAX, 0),
            v6: (u128::MAX, 0),
        }
    }
}

impl ClusterIps {
    /// True if `addr` is a cluster IP.
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        let within = match addr {
            IpAddr::V4(a) => (self.v4.0..=self.v4.1).contains(&u32::from(a)),
            IpAddr::V6(a) => (self.v6.0..=self.v6.1).contains(&u128::from(a)),
        };
        within && self.addrs.contains(&addr)
    }

    /// Number of cluster IPs.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The cluster IPs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().copied()
    }

    /// Bytes the set takes on the heap (one control byte per entry of capacity).
    pub fn approx_heap_bytes(&self) -> usize {
        self.addrs.capacity() * (size_of::<IpAddr>() + 1)
    }
}

/// The claims of Services on cluster IPs (two Services should not share one, but the API
/// objects may say so for a while), kept with the [`ClusterIps`] they make.
#[derive(Debug, Default)]
pub(super) struct ClusterIpClaims {
    claims: BTreeMap<IpAddr, usize>,
}

impl ClusterIpClaims {
    /// One more Service claims each of `addrs` (distinct).
    pub(super) fn claim(&mut self, addrs: &[IpAddr], ips: &mut ClusterIps) {
        for &addr in addrs {
            *self.claims.entry(addr).or_default() += 1;
            ips.addrs.insert(addr);
        }
        self.bound(ips);
    }

    /// One Service fewer claims each of `addrs` (as given to [`ClusterIpClaims::claim`]).
    pub(super) fn release(&mut self, addrs: &[IpAddr], ips: &mut ClusterIps) {
        for addr in addrs {
            if let Some(count) = self.claims.get_mut(addr) {
                *count -= 1;
                if *count == 0 {
                    self.claims.remove(addr);
                    ips.addrs.remove(addr);
                }
            }
        }
        self.bound(ips);
    }

    /// Sets the bounds of `ips` from the claims, by the ends of each family's range of
    /// them (`IpAddr` orders IPv4 addresses before IPv6 ones).
    fn bound(&self, ips: &mut ClusterIps) {
        let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED)..=IpAddr::V4(Ipv4Addr::BROADCAST);
        let mut range = self.claims.range(v4).map(|(a, _)| a);
        ips.v4 = match (range.next(), range.next_back()) {
            (Some(IpAddr::V4(lo)), Some(IpAddr::V4(hi))) => (u32::from(*lo), u32::from(*hi)),
            (Some(IpAddr::V4(only)), None) => (u32::from(*only), u32::from(*only)),
            _ => (u32::MAX, 0),
        };
        let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED)..;
        let mut range = self.claims.range(v6).map(|(a, _)| a);
        ips.v6 = match (range.next(), range.next_back()) {
            (Some(IpAddr::V6(lo)), Some(IpAddr::V6(hi))) => (u128::from(*lo), u128::from(*hi)),
            (Some(IpAddr::V6(only)), None) => (u128::from(*only), u128::from(*only)),
            _ => (u128::MAX, 0),
        };
    }
}
