//! The forwarding information base: longest-prefix match over IPv4 and IPv6 routes, each
//! leading to a local delivery, an attached subnet, or a group of equal-cost next hops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use crate::lpm6::Lpm6;
use crate::mtrie::Mtrie4;

/// One way out: a port and, unless the destination is on-link, the gateway to send to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// Port to send on.
    pub port: u16,
    /// Gateway address; `None` means the destination itself is on the port's link.
    pub gateway: Option<IpAddr>,
}

/// What the FIB says to do with a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// An address of this node: deliver locally.
    Local,
    /// A subnet attached to `port`: the destination is its own next hop.
    Attached {
        /// The port the subnet is on.
        port: u16,
    },
    /// One or more equal-cost next hops; a flow hash picks one.
    Via(Arc<[NextHop]>),
    /// Silently discard.
    Blackhole,
    /// Discard and answer with ICMP destination unreachable.
    Unreachable,
}

impl Route {
    /// The next hop for `dst`, or `None` for local, blackhole and unreachable routes.
    /// `flow_hash` is called only when there are several paths to choose from.
    #[inline]
    pub fn next_hop(&self, dst: IpAddr, flow_hash: impl FnOnce() -> u32) -> Option<NextHop> {
        match self {
            Route::Attached { port } => Some(NextHop {
                port: *port,
                gateway: Some(dst),
            }),
            Route::Via(paths) => {
                let mut hop = *pick_path(paths, flow_hash)?;
                hop.gateway.get_or_insert(dst);
                Some(hop)
            }
            _ => None,
        }
    }
}

/// The path of an equal-cost group that a flow takes, `None` for an empty group. `flow_hash` is
/// called only when there are several paths to choose from.
#[inline]
pub fn pick_path(paths: &[NextHop], flow_hash: impl FnOnce() -> u32) -> Option<&NextHop> {
    let i = if paths.len() <= 1 {
        0
    } else {
        // Multiply-shift maps the hash onto the paths evenly without a division.
        ((u64::from(flow_hash()) * paths.len() as u64) >> 32) as usize
    };
    paths.get(i)
}

/// Most paths of a route that [`Gateways4`] holds; wider equal-cost groups are read from
/// their [`Route`].
pub const GATEWAYS4_MAX: usize = 4;

/// One path of a route through IPv4 gateways, as `ip4-lookup`'s common case reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path4 {
    /// The gateway (0.0.0.0 when `on_link`).
    pub gateway: Ipv4Addr,
    /// The port to send on.
    pub port: u16,
    /// No gateway: the destination is on the port's link and is its own next hop.
    pub on_link: bool,
}

/// The paths of a compiled IPv4 route in a fixed-size array, for the common case of the
/// lookup: a [`Route::Via`] of 1 to [`GATEWAYS4_MAX`] paths, none through an IPv6 gateway,
/// in the route's order, or a [`Route::Attached`] as its one on-link path. `count` is 0 for every other route (and for no route), which the
/// lookup then reads from the [`Route`] itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateways4 {
    /// Paths in use, at most [`GATEWAYS4_MAX`]; 0 for a route that is not one of these.
    pub count: u32,
    /// The paths; those past `count` are unused.
    pub paths: [Path4; GATEWAYS4_MAX],
}

impl Gateways4 {
    /// No paths: the route is read from its [`Route`].
    pub const NONE: Gateways4 = Gateways4 {
        count: 0,
        paths: [Path4 {
            gateway: Ipv4Addr::UNSPECIFIED,
            port: 0,
            on_link: false,
        }; GATEWAYS4_MAX],
    };

    /// The compact form of `route`, or `count` 0 when it has none.
    fn of(route: &Route) -> Gateways4 {
        let mut g = Gateways4::NONE;
        let hops = match route {
            Route::Via(hops) => hops,
            // An attached network: one on-link path, the destination its own next hop, as
            // `Route::next_hop` makes it.
            Route::Attached { port } => {
                g.paths[0] = Path4 {
                    gateway: Ipv4Addr::UNSPECIFIED,
                    port: *port,
                    on_link: true,
                };
                g.count = 1;
                return g;
            }
            _ => return g,
        };
        if hops.len() > GATEWAYS4_MAX {
            return g;
        }
        for (path, hop) in g.paths.iter_mut().zip(hops.iter()) {
            *path = match hop.gateway {
                Some(IpAddr::V4(gw)) => Path4 {
                    gateway: gw,
                    port: hop.port,
                    on_link: false,
                },
                None => Path4 {
                    gateway: Ipv4Addr::UNSPECIFIED,
                    port: hop.port,
                    on_link: true,
                },
                Some(IpAddr::V6(_)) => return Gateways4::NONE,
            };
        }
        g.count = hops.len() as u32;
        g
    }

    /// The path a flow takes, as [`pick_path`] picks it from the route's paths: `None` when
    /// `count` is 0. `flow_hash` is called only when there are several paths.
    #[inline(always)]
    pub fn pick(&self, flow_hash: impl FnOnce() -> u32) -> Option<&Path4> {
        let n = u64::from(self.count);
        if n == 0 {
            return None;
        }
        let i = if n == 1 {
            0
        } else {
            ((u64::from(flow_hash()) * n) >> 32) as usize
        };
        // i < count <= GATEWAYS4_MAX, a power of two: the mask keeps it and drops the
        // bounds check.
        const _: () = assert!(GATEWAYS4_MAX.is_power_of_two());
        Some(&self.paths[i & (GATEWAYS4_MAX - 1)])
    }
}

/// A [`Fib`]'s compiled IPv4 routes borrowed for many lookups (see [`Fib::view4`]).
#[derive(Clone, Copy, Debug)]
pub struct Fib4View<'a> {
    trie: crate::mtrie::Mtrie4View<'a>,
    routes: &'a [Route],
    /// Indexed by the trie's raw value: entry 0 for no route, entry `i + 1` for `routes[i]`.
    gateways: &'a [Gateways4],
}

impl<'a> Fib4View<'a> {
    /// [`Fib::lookup4`] of `dst`, given as a host-order word.
    #[inline(always)]
    pub fn lookup(&self, dst: u32) -> Option<&'a Route> {
        self.trie
            .lookup(dst)
            .and_then(|i| self.routes.get(i as usize))
    }

    /// The paths of the route of `dst` (a host-order word) in their compact form, when it is
    /// a route through up to [`GATEWAYS4_MAX`] IPv4 gateways (or on-link paths) or an attached
    /// network; `count` 0
    /// when it is any other route or none ([`Fib4View::lookup`] then says which).
    #[inline(always)]
    pub fn gateways(&self, dst: u32) -> &'a Gateways4 {
        self.gateways
            .get(self.trie.lookup_raw(dst) as usize)
            .unwrap_or(&Gateways4::NONE)
    }
}

/// A [`Fib`]'s compiled IPv6 routes borrowed for many lookups (see [`Fib::view6`]).
#[derive(Clone, Copy, Debug)]
pub struct Fib6View<'a> {
    lpm: &'a Lpm6,
    routes: &'a [Route],
}

impl<'a> Fib6View<'a> {
    /// [`Fib::lookup6`] of `dst`.
    #[inline(always)]
    pub fn lookup(&self, dst: Ipv6Addr) -> Option<&'a Route> {
        self.lpm
            .lookup(dst)
            .and_then(|i| self.routes.get(i as usize))
    }
}

/// IPv4 and IPv6 route tables.
///
/// Edits go to binary tries (`prefix-trie`); [`Fib::compile`] then builds the lookup
/// structures the workers use over a flat route list: a 16-8-8 multibit trie for IPv4; for
/// IPv6 a multibit trie over the top 64 bits and hash tables per prefix length for the longer
/// prefixes. Until the next compile, lookups fall back to the binary tries, so a FIB is always
/// correct, only slower when left uncompiled.
#[derive(Clone, Debug, Default)]
pub struct Fib {
    v4: PrefixMap<Ipv4Net, Route>,
    v6: PrefixMap<Ipv6Net, Route>,
    len: usize,
    compiled4: Option<Compiled4>,
    compiled6: Option<Compiled6>,
}

/// The IPv6 routes as the fast path reads them.
#[derive(Clone, Debug)]
struct Compiled6 {
    lpm: Lpm6,
    routes: Vec<Route>,
}

/// The IPv4 routes as the fast path reads them.
#[derive(Clone, Debug)]
struct Compiled4 {
    trie: Mtrie4,
    routes: Vec<Route>,
    /// [`Gateways4`] of no route (entry 0) and of each of `routes` (entry `i + 1`).
    gateways: Vec<Gateways4>,
}

impl Fib {
    /// An empty FIB.
    pub fn new() -> Self {
        Fib::default()
    }

    /// Builds the IPv4 fast-path structure from the routes as they are now.
    pub fn compile(&mut self) {
        let routes: Vec<Route> = self.v4.iter().map(|(_, r)| r.clone()).collect();
        let trie = Mtrie4::build(self.v4.iter().enumerate().map(|(i, (p, _))| (p, i as u32)));
        let gateways = std::iter::once(Gateways4::NONE)
            .chain(routes.iter().map(Gateways4::of))
            .collect();
        self.compiled4 = Some(Compiled4 {
            trie,
            routes,
            gateways,
        });
        let routes: Vec<Route> = self.v6.iter().map(|(_, r)| r.clone()).collect();
        let lpm = Lpm6::build(self.v6.iter().enumerate().map(|(i, (p, _))| (p, i as u32)));
        self.compiled6 = Some(Compiled6 { lpm, routes });
    }

    /// Adds or replaces the route for `prefix` (host bits are ignored).
    pub fn insert(&mut self, prefix: ipnet::IpNet, route: Route) {
        self.compiled4 = None;
        self.compiled6 = None;
        let old = match prefix {
            ipnet::IpNet::V4(p) => self.v4.insert(p.trunc(), route),
            ipnet::IpNet::V6(p) => self.v6.insert(p.trunc(), route),
        };
        if old.is_none() {
            self.len += 1;
        }
    }

    /// Removes the route for `prefix`, returning it.
    pub fn remove(&mut self, prefix: ipnet::IpNet) -> Option<Route> {
        self.compiled4 = None;
        self.compiled6 = None;
        let old = match prefix {
            ipnet::IpNet::V4(p) => self.v4.remove(&p.trunc()),
            ipnet::IpNet::V6(p) => self.v6.remove(&p.trunc()),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The route for exactly `prefix`.
    pub fn get(&self, prefix: ipnet::IpNet) -> Option<&Route> {
        match prefix {
            ipnet::IpNet::V4(p) => self.v4.get(&p.trunc()),
            ipnet::IpNet::V6(p) => self.v6.get(&p.trunc()),
        }
    }

    /// Longest-prefix match for an IPv4 destination.
    #[inline]
    pub fn lookup4(&self, dst: Ipv4Addr) -> Option<&Route> {
        if let Some(c) = &self.compiled4 {
            return c.trie.lookup(dst).and_then(|i| c.routes.get(i as usize));
        }
        self.v4.get_lpm(&Ipv4Net::from(dst)).map(|(_, route)| route)
    }

    /// The compiled IPv4 table borrowed for a run of lookups, such as a vector's: the trie and
    /// the route list are found once instead of at every lookup. `None` until [`Fib::compile`]
    /// (then [`Fib::lookup4`] reads the binary trie).
    #[inline]
    pub fn view4(&self) -> Option<Fib4View<'_>> {
        let c = self.compiled4.as_ref()?;
        Some(Fib4View {
            trie: c.trie.view()?,
            routes: &c.routes,
            gateways: &c.gateways,
        })
    }

    /// The compiled IPv6 table borrowed for a run of lookups, as [`Fib::view4`]. `None` until
    /// [`Fib::compile`].
    #[inline]
    pub fn view6(&self) -> Option<Fib6View<'_>> {
        let c = self.compiled6.as_ref()?;
        Some(Fib6View {
            lpm: &c.lpm,
            routes: &c.routes,
        })
    }

    /// Longest-prefix match for an IPv6 destination.
    #[inline]
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<&Route> {
        if let Some(c) = &self.compiled6 {
            return c.lpm.lookup(dst).and_then(|i| c.routes.get(i as usize));
        }
        self.v6.get_lpm(&Ipv6Net::from(dst)).map(|(_, route)| route)
    }

    /// Longest-prefix match for either family.
    pub fn lookup(&self, dst: IpAddr) -> Option<&Route> {
        match dst {
            IpAddr::V4(a) => self.lookup4(a),
            IpAddr::V6(a) => self.lookup6(a),
        }
    }

    /// Longest-prefix match for either family with the prefix that matched, for the control
    /// plane (the route tables, not the compiled tries the fast path reads).
    pub fn lookup_prefix(&self, dst: IpAddr) -> Option<(ipnet::IpNet, &Route)> {
        match dst {
            IpAddr::V4(a) => self
                .v4
                .get_lpm(&Ipv4Net::from(a))
                .map(|(p, r)| (ipnet::IpNet::V4(p), r)),
            IpAddr::V6(a) => self
                .v6
                .get_lpm(&Ipv6Net::from(a))
                .map(|(p, r)| (ipnet::IpNet::V6(p), r)),
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every route, IPv4 first, each family in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (ipnet::IpNet, &Route)> {
        self.v4
            .iter()
            .map(|(p, r)| (ipnet::IpNet::V4(p), r))
            .chain(self.v6.iter().map(|(p, r)| (ipnet::IpNet::V6(p), r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn view4_agrees_with_the_uncompiled_lookup() {
        let mut fib = Fib::new();
        fib.insert(net("0.0.0.0/0"), Route::Blackhole);
        fib.insert(net("198.18.0.0/15"), Route::Attached { port: 1 });
        fib.insert(net("198.18.1.0/24"), Route::Attached { port: 2 });
        fib.insert(net("198.18.1.1/32"), Route::Local);
        assert!(fib.view4().is_none(), "not compiled yet");
        let before: Vec<_> = ["198.18.1.1", "198.18.1.2", "198.19.0.9", "203.0.113.1"]
            .iter()
            .map(|a| a.parse::<Ipv4Addr>().unwrap())
            .map(|a| (a, fib.lookup4(a).cloned()))
            .collect();
        fib.compile();
        let view = fib.view4().unwrap();
        for (a, route) in before {
            assert_eq!(view.lookup(u32::from(a)), route.as_ref(), "{a}");
        }
    }

    #[test]
    fn view6_agrees_with_the_uncompiled_lookup_and_edits_uncompile_it() {
        let mut fib = Fib::new();
        fib.insert(net("::/0"), Route::Blackhole);
        fib.insert(net("2001:db8::/32"), Route::Attached { port: 1 });
        fib.insert(net("2001:db8:1::/64"), Route::Attached { port: 2 });
        fib.insert(net("2001:db8:1::1/128"), Route::Local);
        assert!(fib.view6().is_none(), "not compiled yet");
        let probes = [
            "2001:db8:1::1",
            "2001:db8:1::2",
            "2001:db8:7::9",
            "2001:db9::1",
        ];
        let lookups = |fib: &Fib| -> Vec<_> {
            probes
                .iter()
                .map(|a| a.parse::<Ipv6Addr>().unwrap())
                .map(|a| (a, fib.lookup6(a).cloned()))
                .collect()
        };
        let before = lookups(&fib);
        fib.compile();
        let view = fib.view6().unwrap();
        for (a, route) in &before {
            assert_eq!(view.lookup(*a), route.as_ref(), "{a}");
        }
        fib.insert(net("2001:db8:7::/48"), Route::Local);
        assert!(fib.view6().is_none(), "an edit drops the compiled table");
        let edited = lookups(&fib);
        assert_eq!(edited[2].1, Some(Route::Local));
        fib.compile();
        let view = fib.view6().unwrap();
        for (a, route) in &edited {
            assert_eq!(view.lookup(*a), route.as_ref(), "{a}");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let mut fib = Fib::new();
        fib.insert(net("0.0.0.0/0"), Route::Blackhole);
        fib.insert(net("198.18.0.0/15"), Route::Attached { port: 1 });
        fib.insert(net("198.18.1.0/24"), Route::Attached { port: 2 });
        fib.insert(net("198.18.1.1/32"), Route::Local);
        let l = |s: &str| fib.lookup(s.parse().unwrap()).cloned();
        assert_eq!(l("198.18.1.1"), Some(Route::Local));
        assert_eq!(l("198.18.1.2"), Some(Route::Attached { port: 2 }));
        assert_eq!(l("198.19.0.9"), Some(Route::Attached { port: 1 }));
        assert_eq!(l("203.0.113.1"), Some(Route::Blackhole));
        assert_eq!(l("2001:db8::1"), None);
        assert_eq!(fib.len(), 4);
        assert_eq!(
            fib.remove(net("198.18.1.0/24")),
            Some(Route::Attached { port: 2 })
        );
        assert_eq!(
            fib.lookup("198.18.1.2".parse().unwrap()),
            Some(&Route::Attached { port: 1 })
        );
    }

    #[test]
    fn ecmp_spreads_flows_over_every_path() {
        let gw = |s: &str| NextHop {
            port: 0,
            gateway: Some(s.parse().unwrap()),
        };
        let paths: Arc<[NextHop]> =
            vec![gw("198.18.0.2"), gw("198.18.0.3"), gw("198.18.0.4")].into();
        let route = Route::Via(paths.clone());
        let mut seen = [0u32; 3];
        for h in 0..3000u32 {
            let hop = route
                .next_hop("203.0.113.9".parse().unwrap(), || {
                    h.wrapping_mul(2654435761)
                })
                .unwrap();
            seen[paths.iter().position(|p| *p == hop).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    /// The trie against a linear scan over the same prefixes.
    fn reference(routes: &[(Ipv4Net, u16)], dst: Ipv4Addr) -> Option<u16> {
        routes
            .iter()
            .filter(|(p, _)| p.contains(&dst))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(_, v)| *v)
    }

    /// The compact paths of the view pick, for every hash, the path `pick_path` picks from
    /// the route, with the destination as the next hop of an on-link path; every route they
    /// do not cover says so (`count` 0).
    #[test]
    fn view4_gateways_pick_what_the_route_picks() {
        let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
        let hop = |port, gateway| NextHop { port, gateway };
        let mut fib = Fib::new();
        let via = |hops: Vec<NextHop>| Route::Via(hops.into());
        fib.insert(net("0.0.0.0/0"), via(vec![hop(3, v4("198.18.9.1"))]));
        fib.insert(
            net("198.19.0.0/16"),
            via(vec![hop(1, v4("198.18.2.3")), hop(2, v4("198.18.2.4"))]),
        );
        fib.insert(
            net("198.19.1.0/24"),
            via(vec![hop(1, None), hop(2, v4("198.18.2.4")), hop(4, None)]),
        );
        fib.insert(
            net("203.0.113.0/24"),
            via(vec![
                hop(1, v4("198.18.2.3")),
                hop(2, "2001:db8::1".parse().ok()),
            ]),
        );
        fib.insert(
            net("198.51.100.0/24"),
            via((0..5).map(|i| hop(i, v4("198.18.2.7"))).collect()),
        );
        fib.insert(net("198.18.2.0/24"), Route::Attached { port: 2 });
        fib.insert(net("198.18.2.1/32"), Route::Local);
        fib.insert(net("198.18.200.0/24"), Route::Unreachable);
        fib.insert(net("198.19.7.0/24"), via(vec![]));
        fib.compile();
        let view = fib.view4().unwrap();
        let probes = [
            "198.18.99.3",
            "198.19.200.1",
            "198.19.1.77",
            "203.0.113.5",
            "198.51.100.9",
            "198.18.2.9",
            "198.18.2.1",
            "198.18.200.1",
            "198.19.7.1",
        ];
        for dst in probes.map(|a| a.parse::<Ipv4Addr>().unwrap()) {
            let route = view.lookup(u32::from(dst)).unwrap();
            let gateways = view.gateways(u32::from(dst));
            let covered = match route {
                Route::Attached { .. } => true,
                Route::Via(hops) => {
                    !hops.is_empty()
                        && hops.len() <= GATEWAYS4_MAX
                        && hops
                            .iter()
                            .all(|h| !matches!(h.gateway, Some(IpAddr::V6(_))))
                }
                _ => false,
            };
            assert_eq!(gateways.count != 0, covered, "{dst}");
            for hash in [0, 1, 0x5555_5555, 0x8000_0000, 0xc000_0001, u32::MAX] {
                let picked = gateways.pick(|| hash).map(|p| NextHop {
                    port: p.port,
                    gateway: Some(IpAddr::V4(if p.on_link { dst } else { p.gateway })),
                });
                let expected = covered
                    .then(|| route.next_hop(IpAddr::V4(dst), || hash))
                    .flatten();
                assert_eq!(picked, expected, "{dst} hash {hash:#x}");
            }
        }
    }

    proptest! {
        #[test]
        fn lookup_matches_linear_scan(
            raw in prop::collection::vec((any::<u32>(), 0u8..=32, any::<u16>()), 1..64),
            probes in prop::collection::vec(any::<u32>(), 1..64),
        ) {
            let mut fib = Fib::new();
            let mut routes: Vec<(Ipv4Net, u16)> = Vec::new();
            for (addr, len, port) in raw {
                let p = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
                routes.retain(|(q, _)| *q != p);
                routes.push((p, port));
                fib.insert(ipnet::IpNet::V4(p), Route::Attached { port });
            }
            let mut compiled = fib.clone();
            compiled.compile();
            for probe in probes {
                let dst = Ipv4Addr::from(probe);
                for f in [&fib, &compiled] {
                    let got = match f.lookup4(dst) {
                        Some(Route::Attached { port }) => Some(*port),
                        _ => None,
                    };
                    prop_assert_eq!(got, reference(&routes, dst));
                }
            }
        }
    }
}
