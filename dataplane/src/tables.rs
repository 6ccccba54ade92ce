//! The immutable tables the control plane publishes to the workers.
//!
//! The control plane builds the next [`Tables`] off to the side and swaps it in with one atomic
//! pointer store ([`TablesHandle::publish`]); a worker loads the current one once per vector
//! and never waits for anyone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::fib::{Fib, NextHop, Route};
use crate::policy::PolicyTables;
use crate::services::Services;

/// An interface as the dataplane sees it: its link-layer identity and its addresses. The
/// driver's ports are the first interfaces (interface `i` is port `i`); 802.1Q VLAN
/// subinterfaces follow them, each on a port ([`Interface::vlan`]). Packet metadata
/// (`rx_port`, `tx_port`), routes and the neighbor table name interfaces by this index; only
/// the transmit sink maps a subinterface to its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Name, for people.
    pub name: String,
    /// Ethernet address.
    pub mac: [u8; 6],
    /// Largest IP packet the link carries.
    pub mtu: u16,
    /// IPv4 addresses with their subnet lengths.
    pub ipv4: Vec<Ipv4Net>,
    /// IPv6 global addresses with their subnet lengths.
    pub ipv6: Vec<Ipv6Net>,
    /// The IPv6 link-local address (from the MAC, modified EUI-64).
    pub link_local: Ipv6Addr,
    /// For a VLAN subinterface: its port and VLAN id; `None` for a port.
    pub vlan: Option<Vlan>,
}

/// What makes an interface a VLAN subinterface: the port its frames use and the 802.1Q VLAN
/// id they are tagged with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vlan {
    /// The port (an interface index below the first subinterface's).
    pub parent: u16,
    /// The VLAN id, 1 to 4094.
    pub vid: u16,
}

impl Vlan {
    /// The largest VLAN id a subinterface can have (4095 is reserved, IEEE 802.1Q 9.6).
    pub const MAX_VID: u16 = 4094;
}

impl Interface {
    /// An interface with no addresses yet; the link-local address is derived from `mac`.
    pub fn new(name: impl Into<String>, mac: [u8; 6], mtu: u16) -> Self {
        Interface {
            name: name.into(),
            mac,
            mtu,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            link_local: link_local_from_mac(mac),
            vlan: None,
        }
    }

    /// A VLAN subinterface of `parent` (the interface of port `parent_port`) for VLAN `vid`:
    /// the port's MAC (and so its link-local address) and MTU, no addresses yet.
    pub fn vlan_subinterface(
        name: impl Into<String>,
        parent: &Interface,
        parent_port: u16,
        vid: u16,
    ) -> Self {
        Interface {
            vlan: Some(Vlan {
                parent: parent_port,
                vid,
            }),
            ..Interface::new(name, parent.mac, parent.mtu)
        }
    }

    /// The address to use as source for packets this node sends out of the interface.
    pub fn primary_ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4.first().map(|n| n.addr())
    }

    /// The global address to use as source, or the link-local one when there is none.
    pub fn primary_ipv6(&self) -> Ipv6Addr {
        self.ipv6.first().map_or(self.link_local, |n| n.addr())
    }

    /// True if `addr` is one of this interface's IPv6 addresses, link-local included.
    pub fn has_ipv6(&self, addr: Ipv6Addr) -> bool {
        addr == self.link_local || self.ipv6.iter().any(|n| n.addr() == addr)
    }

    /// True if `addr` is the Subnet-Router anycast address (the prefix with a zero interface
    /// identifier, RFC 4291 2.6.1) of one of this interface's IPv6 subnets.
    pub fn is_subnet_router_anycast(&self, addr: Ipv6Addr) -> bool {
        self.ipv6
            .iter()
            .any(|n| n.prefix_len() < 127 && n.network() == addr)
    }

    /// True if `addr` is one of this interface's IPv4 addresses.
    pub fn has_ipv4(&self, addr: Ipv4Addr) -> bool {
        self.ipv4.iter().any(|n| n.addr() == addr)
    }
}

/// The modified EUI-64 link-local address for an Ethernet address (RFC 4291 appendix A).
pub fn link_local_from_mac(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// A static route as configured: a prefix and where it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    /// Destination prefix.
    pub prefix: IpNet,
    /// What to do with it.
    pub target: RouteTarget,
}

/// Where a configured route leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Equal-cost gateways, each with an optional port (found from the attached subnets when
    /// not given) or a port alone for an on-link prefix.
    Via(Vec<(Option<IpAddr>, Option<u16>)>),
    /// Discard silently.
    Blackhole,
    /// Discard with ICMP unreachable.
    Unreachable,
}

/// Why a configuration could not become tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TablesError {
    /// A gateway is not on any attached subnet, so no port can be found for it.
    #[error(
        "gateway {gateway} of route {prefix} is not on an attached subnet; name the interface"
    )]
    UnresolvedGateway {
        /// The route.
        prefix: IpNet,
        /// Its gateway.
        gateway: IpAddr,
    },
    /// A route names a port that does not exist.
    #[error("route {prefix} names port {port}, which does not exist")]
    NoSuchPort {
        /// The route.
        prefix: IpNet,
        /// The port.
        port: u16,
    },
    /// A route has neither a gateway nor a port.
    #[error("route {0} has no next hop")]
    EmptyNextHop(IpNet),
    /// A VLAN subinterface names a port that does not exist or is itself a subinterface.
    #[error("VLAN subinterface {name}: port {parent} does not exist")]
    NoSuchVlanParent {
        /// The subinterface.
        name: String,
        /// The port it names.
        parent: u16,
    },
    /// A VLAN id outside 1-4094.
    #[error("VLAN subinterface {name}: VLAN id {vid} is not between 1 and 4094")]
    BadVlanId {
        /// The subinterface.
        name: String,
        /// Its VLAN id.
        vid: u16,
    },
    /// Two subinterfaces of one port with the same VLAN id.
    #[error("VLAN subinterface {name}: its port already has a subinterface for VLAN {vid}")]
    DuplicateVlan {
        /// The second subinterface.
        name: String,
        /// The VLAN id.
        vid: u16,
    },
    /// A gateway's family differs from its route's.
    #[error("route {prefix} has a gateway {gateway} of the other address family")]
    FamilyMismatch {
        /// The route.
        prefix: IpNet,
        /// Its gateway.
        gateway: IpAddr,
    },
}

/// Everything the workers forward by, as one immutable value.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// Increases with every publication.
    pub version: u64,
    /// The interfaces, indexed by interface id: the ports first, then VLAN subinterfaces.
    pub interfaces: Vec<Interface>,
    /// The VLAN subinterfaces by [`Tables::vlan_key`] (port and VLAN id), sorted, for
    /// `ethernet-input` to find the interface of a tagged frame.
    pub vlans: Vec<(u32, u16)>,
    /// Routes.
    pub fib: Fib,
    /// Hand what is addressed to this node and not answered by the dataplane itself (TCP,
    /// UDP, ICMP errors, other protocols, fragments) to the host's stack through the punt
    /// sink, instead of refusing it with a reset or an ICMP error.
    pub punt_to_host: bool,
    /// The last octets of the attached subnets' broadcast addresses, as a 256-bit set: lets
    /// `ip4-input` rule out a broadcast source with one bit test (see
    /// [`Tables::is_directed_broadcast`]).
    pub broadcast_tails: [u64; 4],
    /// The smallest of those last octets (255 when there are none): below it an address
    /// cannot be a broadcast one, which `ip4-input` tells with one compare.
    pub broadcast_tail_min: u8,
    /// Drop every packet with a loose or strict source route option (RFC 7126's advice, and
    /// Linux's default) instead of following it as RFC 1812 5.2.4.1 requires by default.
    pub drop_source_routed: bool,
    /// Send IPv6 router advertisements on every port with an IPv6 prefix, and answer router
    /// solicitations (RFC 4861 6.2); `None`: neither, the RFC's default.
    pub router_adverts: Option<crate::router_adverts::RaConfig>,
    /// Send IPv4 router advertisements on every port with an IPv4 address and answer router
    /// solicitations (RFC 1256, ICMP router discovery); `None`: neither.
    pub ipv4_router_discovery: Option<crate::router_adverts::IrdpConfig>,
    /// The service proxy's tables; `None` on a plain router, whose packets then skip the
    /// `ip{4,6}-nat` nodes.
    pub services: Option<Arc<Services>>,
    /// NetworkPolicy ACLs; `None` when nothing is enforced, and packets skip the
    /// `ip{4,6}-acl` nodes.
    pub policy: Option<Arc<PolicyTables>>,
    /// IPsec SPD and SAs; `None` (or empty) when no tunnel is up, and the `esp{4,6}-*` nodes
    /// (present only in [`crate::nodes::ipsec_router_graph`]) pass everything.
    pub ipsec: Option<Arc<crate::ipsec_tables::IpsecTables>>,
}

impl Tables {
    /// Builds tables from interfaces and static routes: each interface address becomes a
    /// local route and its subnet an attached route; then the static routes are added.
    pub fn build(
        version: u64,
        interfaces: Vec<Interface>,
        routes: &[StaticRoute],
    ) -> Result<Self, TablesError> {
        let vlans = Self::index_vlans(&interfaces)?;
        let mut fib = Fib::new();
        for (port, ifc) in interfaces.iter().enumerate() {
            let port = port as u16;
            for net in &ifc.ipv4 {
                fib.insert(IpNet::V4(*net), Route::Attached { port });
                if net.prefix_len() < 31 {
                    // The subnet's zero address, an obsolete broadcast form, is silently
                    // discarded (RFC 1812 4.2.3.1); its broadcast address is received, never
                    // forwarded.
                    fib.insert(IpNet::V4(Ipv4Net::from(net.network())), Route::Blackhole);
                    fib.insert(IpNet::V4(Ipv4Net::from(net.broadcast())), Route::Local);
                }
                fib.insert(IpNet::V4(Ipv4Net::from(net.addr())), Route::Local);
            }
            for net in &ifc.ipv6 {
                fib.insert(IpNet::V6(*net), Route::Attached { port });
                if net.prefix_len() < 127 {
                    // The Subnet-Router anycast address (RFC 4291 2.6.1) is this router's.
                    fib.insert(IpNet::V6(Ipv6Net::from(net.network())), Route::Local);
                }
                fib.insert(IpNet::V6(Ipv6Net::from(net.addr())), Route::Local);
            }
        }
        let mut tables = Tables {
            version,
            interfaces,
            vlans,
            fib,
            punt_to_host: false,
            broadcast_tails: [0; 4],
            broadcast_tail_min: u8::MAX,
            drop_source_routed: false,
            router_adverts: None,
            ipv4_router_discovery: None,
            services: None,
            policy: None,
            ipsec: None,
        };
        for net in tables.interfaces.iter().flat_map(|i| &i.ipv4) {
            if net.prefix_len() < 31 {
                let tail = net.broadcast().octets()[3];
                tables.broadcast_tails[usize::from(tail / 64)] |= 1 << (tail % 64);
                tables.broadcast_tail_min = tables.broadcast_tail_min.min(tail);
            }
        }
        for r in routes {
            let route = tables.resolve(r)?;
            tables.fib.insert(r.prefix, route);
        }
        tables.fib.compile();
        Ok(tables)
    }

    /// True when an IPv4 address with this last octet may be an attached subnet's broadcast
    /// address (a first test, one compare; [`Tables::is_directed_broadcast`] decides).
    #[inline(always)]
    pub fn may_be_directed_broadcast(&self, last_octet: u8) -> bool {
        last_octet >= self.broadcast_tail_min
    }

    /// True when `addr` is the broadcast address of a subnet attached to this node, which is
    /// never a valid source (RFC 1812 4.2.2.11, 5.3.7).
    pub fn is_directed_broadcast(&self, addr: Ipv4Addr) -> bool {
        let tail = addr.octets()[3];
        self.broadcast_tails[usize::from(tail / 64)] & (1 << (tail % 64)) != 0
            && self
                .interfaces
                .iter()
                .flat_map(|i| &i.ipv4)
                .any(|n| n.prefix_len() < 31 && n.broadcast() == addr)
    }

    /// True when `addr` is the zero address, { <Network-prefix>, 0 }, of a subnet attached to
    /// this node (shorter than /31): an obsolete form of its broadcast address, which RFC
    /// 1812 4.2.3.1 has routers treat as one.
    pub fn is_subnet_zero(&self, addr: Ipv4Addr) -> bool {
        self.interfaces
            .iter()
            .flat_map(|i| &i.ipv4)
            .any(|n| n.prefix_len() < 31 && n.network() == addr)
    }

    /// A copy of these tables with `routes` added (learned routes, e.g. from BGP), the FIB
    /// recompiled. A route whose prefix already has one (an address of this node, an attached
    /// subnet or a static route from the flags) is left out: those win. Routes that cannot
    /// be resolved are left out and returned as errors.
    pub fn with_extra_routes(&self, routes: &[StaticRoute]) -> (Tables, Vec<TablesError>) {
        let mut tables = self.clone();
        let mut errors = Vec::new();
        for r in routes {
            if tables.fib.get(r.prefix).is_some() {
                continue;
            }
            match tables.resolve(r) {
                Ok(route) => tables.fib.insert(r.prefix, route),
                Err(e) => errors.push(e),
            }
        }
        tables.fib.compile();
        (tables, errors)
    }

    fn resolve(&self, r: &StaticRoute) -> Result<Route, TablesError> {
        let hops = match &r.target {
            RouteTarget::Blackhole => return Ok(Route::Blackhole),
            RouteTarget::Unreachable => return Ok(Route::Unreachable),
            RouteTarget::Via(hops) => hops,
        };
        let mut paths = Vec::with_capacity(hops.len());
        for &(gateway, port) in hops {
            if let Some(gw) = gateway {
                if gw.is_ipv4() != r.prefix.addr().is_ipv4() {
                    return Err(TablesError::FamilyMismatch {
                        prefix: r.prefix,
                        gateway: gw,
                    });
                }
            }
            let port = match (gateway, port) {
                (_, Some(p)) if usize::from(p) < self.interfaces.len() => p,
                (_, Some(p)) => {
                    return Err(TablesError::NoSuchPort {
                        prefix: r.prefix,
                        port: p,
                    })
                }
                (Some(gw), None) => {
                    self.attached_port(gw)
                        .ok_or(TablesError::UnresolvedGateway {
                            prefix: r.prefix,
                            gateway: gw,
                        })?
                }
                (None, None) => return Err(TablesError::EmptyNextHop(r.prefix)),
            };
            paths.push(NextHop { port, gateway });
        }
        if paths.is_empty() {
            return Err(TablesError::EmptyNextHop(r.prefix));
        }
        Ok(Route::Via(paths.into()))
    }

    /// The port whose attached subnet holds `addr`.
    pub fn attached_port(&self, addr: IpAddr) -> Option<u16> {
        self.interfaces
            .iter()
            .position(|ifc| match addr {
                IpAddr::V4(a) => ifc.ipv4.iter().any(|n| n.contains(&a)),
                IpAddr::V6(a) => ifc.ipv6.iter().any(|n| n.contains(&a)),
            })
            .map(|p| p as u16)
    }

    /// The interface of `port`, if it exists.
    #[inline]
    pub fn interface(&self, port: u16) -> Option<&Interface> {
        self.interfaces.get(usize::from(port))
    }

    /// The key of a VLAN subinterface in [`Tables::vlans`].
    #[inline]
    pub fn vlan_key(port: u16, vid: u16) -> u32 {
        u32::from(port) << 16 | u32::from(vid)
    }

    /// The interface of VLAN `vid` on port `port`, if one is configured.
    #[inline]
    pub fn vlan_subinterface(&self, port: u16, vid: u16) -> Option<u16> {
        let key = Self::vlan_key(port, vid);
        self.vlans
            .binary_search_by_key(&key, |&(k, _)| k)
            .ok()
            .map(|i| self.vlans[i].1)
    }

    /// The port the frames of interface `ifc` leave by: its own index for a port, the
    /// parent's for a VLAN subinterface.
    #[inline]
    pub fn port_of(&self, ifc: u16) -> Option<u16> {
        let i = self.interface(ifc)?;
        Some(i.vlan.map_or(ifc, |v| v.parent))
    }

    /// Checks the VLAN subinterfaces (a port that is not itself a subinterface, an id from 1
    /// to 4094, one subinterface per port and id) and indexes them for [`Tables::vlans`].
    fn index_vlans(interfaces: &[Interface]) -> Result<Vec<(u32, u16)>, TablesError> {
        let mut vlans = Vec::new();
        for (i, ifc) in interfaces.iter().enumerate() {
            let Some(vlan) = ifc.vlan else { continue };
            let parent_ok = interfaces
                .get(usize::from(vlan.parent))
                .is_some_and(|p| p.vlan.is_none());
            if !parent_ok {
                return Err(TablesError::NoSuchVlanParent {
                    name: ifc.name.clone(),
                    parent: vlan.parent,
                });
            }
            if vlan.vid == 0 || vlan.vid > Vlan::MAX_VID {
                return Err(TablesError::BadVlanId {
                    name: ifc.name.clone(),
                    vid: vlan.vid,
                });
            }
            let key = Self::vlan_key(vlan.parent, vlan.vid);
            if vlans.iter().any(|&(k, _)| k == key) {
                return Err(TablesError::DuplicateVlan {
                    name: ifc.name.clone(),
                    vid: vlan.vid,
                });
            }
            vlans.push((key, i as u16));
        }
        vlans.sort_unstable();
        Ok(vlans)
    }

    /// True if `addr` is a unicast IPv4 address of this node (a port's, or a virtual IP an
    /// IPsec peer assigned us).
    pub fn is_local_ipv4(&self, addr: Ipv4Addr) -> bool {
        self.interfaces.iter().any(|i| i.has_ipv4(addr)) || self.is_virtual_ip(IpAddr::V4(addr))
    }

    /// True if `addr` is an IPv6 address of this node (link-local ones included).
    pub fn is_local_ipv6(&self, addr: Ipv6Addr) -> bool {
        self.interfaces.iter().any(|i| i.has_ipv6(addr)) || self.is_virtual_ip(IpAddr::V6(addr))
    }

    #[inline]
    fn is_virtual_ip(&self, addr: IpAddr) -> bool {
        self.ipsec
            .as_ref()
            .is_some_and(|i| i.is_local_address(addr))
    }

    /// Makes `ipsec` the IPsec part of these tables, with the FIB entries its virtual IPs
    /// need: a local route for each address a peer assigned us, and for each address we
    /// leased to a peer the route of its tunnel's far end (so that traffic to it is forwarded
    /// and meets the SPD). The entries the IPsec part in place had added are taken out first;
    /// prefixes routed otherwise (a port's address, a static or learned route) are left as
    /// they are. The FIB is recompiled when anything changed.
    pub fn set_ipsec(&mut self, ipsec: Option<crate::ipsec_tables::IpsecTables>) {
        let mut changed = false;
        if let Some(old) = self.ipsec.take() {
            for prefix in &old.fib_entries {
                changed |= self.fib.remove(*prefix).is_some();
            }
        }
        self.ipsec = ipsec.map(|mut ipsec| {
            ipsec.fib_entries.clear();
            let host = |addr: IpAddr| IpNet::from(addr);
            for &addr in &ipsec.local_addresses {
                let prefix = host(addr);
                if self.fib.get(prefix).is_none() {
                    self.fib.insert(prefix, Route::Local);
                    ipsec.fib_entries.push(prefix);
                }
            }
            for &(addr, far_end) in &ipsec.leased_addresses {
                let prefix = host(addr);
                if self.fib.get(prefix).is_some() {
                    continue;
                }
                let route = match self.fib.lookup(far_end) {
                    Some(Route::Attached { port }) => Route::Via(Arc::from([NextHop {
                        port: *port,
                        gateway: Some(far_end),
                    }])),
                    Some(route @ Route::Via(_)) => route.clone(),
                    _ => continue,
                };
                self.fib.insert(prefix, route);
                ipsec.fib_entries.push(prefix);
            }
            changed |= !ipsec.fib_entries.is_empty();
            Arc::new(ipsec)
        });
        if changed {
            self.fib.compile();
        }
    }
}

/// The shared slot through which the control plane publishes tables to the workers.
#[derive(Debug, Clone)]
pub struct TablesHandle(Arc<ArcSwap<Tables>>);

impl TablesHandle {
    /// A handle holding `tables`.
    pub fn new(tables: Tables) -> Self {
        TablesHandle(Arc::new(ArcSwap::from_pointee(tables)))
    }

    /// The tables in force now.
    #[inline]
    pub fn load(&self) -> Arc<Tables> {
        self.0.load_full()
    }

    /// Makes `tables` the ones in force, in one atomic step.
    pub fn publish(&self, tables: Tables) {
        self.0.store(Arc::new(tables));
    }

    /// [`TablesHandle::publish`] for tables the caller keeps a reference to (to show them).
    pub fn publish_arc(&self, tables: Arc<Tables>) {
        self.0.store(tables);
    }

    /// Publishes `tables` when several publishers own parts of them (the control plane its
    /// services and routes, the IKE daemon its SAs): `keep` first copies into `tables` what
    /// the others own from the tables in force, and the swap happens only if those are still
    /// in force (else it is retried), so no publisher's part is lost. The version becomes the
    /// one in force plus one, so versions rise whoever publishes. Returns what was published.
    pub fn publish_keeping(
        &self,
        mut tables: Tables,
        keep: impl Fn(&Tables, &mut Tables),
    ) -> Arc<Tables> {
        loop {
            let current = self.0.load_full();
            keep(&current, &mut tables);
            tables.version = current.version + 1;
            let next = Arc::new(tables);
            let previous = self.0.compare_and_swap(&current, Arc::clone(&next));
            if Arc::ptr_eq(&previous, &current) {
                return next;
            }
            tables = Arc::try_unwrap(next).unwrap_or_else(|shared| (*shared).clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifc(name: &str, v4: &str, v6: &str) -> Interface {
        let mut i = Interface::new(name, [2, 0, 0, 0, 0, 1], 1500);
        i.ipv4.push(v4.parse().unwrap());
        i.ipv6.push(v6.parse().unwrap());
        i
    }

    #[test]
    fn addresses_become_local_and_attached_routes() {
        let t = Tables::build(
            1,
            vec![
                ifc("a", "198.18.0.1/24", "2001:db8:0:1::1/64"),
                ifc("b", "198.18.1.1/24", "2001:db8:0:2::1/64"),
            ],
            &[StaticRoute {
                prefix: "198.19.0.0/16".parse().unwrap(),
                target: RouteTarget::Via(vec![(Some("198.18.1.2".parse().unwrap()), None)]),
            }],
        )
        .unwrap();
        let l = |s: &str| t.fib.lookup(s.parse().unwrap()).cloned();
        assert_eq!(l("198.18.0.1"), Some(Route::Local));
        assert_eq!(l("198.18.0.255"), Some(Route::Local));
        assert_eq!(l("198.18.1.7"), Some(Route::Attached { port: 1 }));
        assert_eq!(l("2001:db8:0:2::1"), Some(Route::Local));
        assert_eq!(
            l("198.19.4.4"),
            Some(Route::Via(
                vec![NextHop {
                    port: 1,
                    gateway: Some("198.18.1.2".parse().unwrap())
                }]
                .into()
            ))
        );
    }

    #[test]
    fn unresolvable_gateway_is_an_error() {
        let e = Tables::build(
            1,
            vec![ifc("a", "198.18.0.1/24", "2001:db8::1/64")],
            &[StaticRoute {
                prefix: "0.0.0.0/0".parse().unwrap(),
                target: RouteTarget::Via(vec![(Some("203.0.113.1".parse().unwrap()), None)]),
            }],
        );
        assert!(matches!(e, Err(TablesError::UnresolvedGateway { .. })));
    }

    #[test]
    fn extra_routes_never_replace_existing_ones() {
        let gw = |s: &str| RouteTarget::Via(vec![(Some(s.parse().unwrap()), None)]);
        let base = Tables::build(
            1,
            vec![ifc("a", "198.18.0.1/24", "2001:db8::1/64")],
            &[StaticRoute {
                prefix: "198.19.0.0/16".parse().unwrap(),
                target: RouteTarget::Blackhole,
            }],
        )
        .unwrap();
        let extra = [
            StaticRoute {
                prefix: "198.19.0.0/16".parse().unwrap(),
                target: gw("198.18.0.2"),
            },
            StaticRoute {
                prefix: "198.18.0.1/32".parse().unwrap(),
                target: gw("198.18.0.2"),
            },
            StaticRoute {
                prefix: "203.0.113.0/24".parse().unwrap(),
                target: gw("198.18.0.2"),
            },
            StaticRoute {
                prefix: "198.51.100.0/24".parse().unwrap(),
                target: gw("198.51.100.1"),
            },
        ];
        let (t, errors) = base.with_extra_routes(&extra);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let l = |s: &str| t.fib.lookup(s.parse().unwrap()).cloned();
        assert_eq!(l("198.19.1.1"), Some(Route::Blackhole));
        assert_eq!(l("198.18.0.1"), Some(Route::Local));
        assert!(matches!(l("203.0.113.9"), Some(Route::Via(_))));
        assert_eq!(base.fib.lookup("203.0.113.9".parse().unwrap()), None);
    }

    #[test]
    fn ipsec_virtual_ips_enter_and_leave_the_fib() {
        use crate::ipsec_tables::IpsecTables;
        let mut t = Tables::build(
            1,
            vec![ifc("a", "198.18.0.1/24", "2001:db8::1/64")],
            &[StaticRoute {
                prefix: "203.0.113.0/24".parse().unwrap(),
                target: RouteTarget::Via(vec![(Some("198.18.0.2".parse().unwrap()), None)]),
            }],
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ours = IpsecTables {
            local_addresses: vec![ip("198.18.200.7"), ip("198.18.0.1")],
            // One peer on the link, one beyond a router, one we have no route to.
            leased_addresses: vec![
                (ip("198.18.100.1"), ip("198.18.0.9")),
                (ip("2001:db8:100::1"), ip("203.0.113.5")),
                (ip("198.18.100.2"), ip("198.51.100.77")),
            ],
            ..IpsecTables::default()
        };
        t.set_ipsec(Some(ours.clone()));
        let l = |t: &Tables, s: &str| t.fib.lookup(s.parse().unwrap()).cloned();
        assert_eq!(l(&t, "198.18.200.7"), Some(Route::Local));
        assert!(t.is_local_ipv4("198.18.200.7".parse().unwrap()));
        assert!(!t.is_local_ipv4("198.18.200.8".parse().unwrap()));
        assert_eq!(
            l(&t, "198.18.100.1"),
            Some(Route::Via(
                vec![NextHop {
                    port: 0,
                    gateway: Some(ip("198.18.0.9"))
                }]
                .into()
            ))
        );
        assert_eq!(l(&t, "2001:db8:100::1"), l(&t, "203.0.113.5"));
        assert_eq!(l(&t, "198.18.100.2"), None);
        let entries = &t.ipsec.as_ref().unwrap().fib_entries;
        assert_eq!(
            entries.len(),
            3,
            "the port's own address is not the IPsec part's"
        );
        // Replaced by tables without virtual IPs: the entries go, the rest stays.
        t.set_ipsec(Some(IpsecTables::default()));
        assert_eq!(l(&t, "198.18.200.7"), None);
        assert!(!t.is_local_ipv4("198.18.200.7".parse().unwrap()));
        assert_eq!(l(&t, "198.18.100.1"), None);
        assert_eq!(l(&t, "198.18.0.1"), Some(Route::Local));
        assert!(matches!(l(&t, "203.0.113.5"), Some(Route::Via(_))));
        // Applied to a FIB that never had them (the agent's next tables): the same result.
        t.set_ipsec(None);
        t.set_ipsec(Some(ours));
        assert_eq!(l(&t, "198.18.200.7"), Some(Route::Local));
    }

    #[test]
    fn link_local_is_modified_eui64() {
        assert_eq!(
            link_local_from_mac([0x00, 0x1b, 0x21, 0x3c, 0x4d, 0x5e]),
            "fe80::21b:21ff:fe3c:4d5e".parse::<Ipv6Addr>().unwrap()
        );
    }
}
