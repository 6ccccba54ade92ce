//! Capability advertisement (RFC 5492) and negotiation: what both ends
//! agreed to, computed once when the peer's OPEN arrives.

use crate::config::{AddPathMode, Family, SessionConfig};
use netgauze_bgp_pkt::capabilities::{
    AddPathAddressFamily, AddPathCapability, BgpCapability, FourOctetAsCapability,
    GracefulRestartAddressFamily, GracefulRestartCapability, MultiProtocolExtensionsCapability,
};
use std::net::Ipv4Addr;

/// AS_TRANS (RFC 6793 §9): put in the 2-octet My AS field when our AS
/// does not fit.
pub const AS_TRANS: u32 = 23456;

/// The capabilities we put in our OPEN.
pub fn local_capabilities(cfg: &SessionConfig) -> Vec<BgpCapability> {
    let mut caps: Vec<BgpCapability> = cfg
        .families
        .iter()
        .map(|f| {
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                f.address_type(),
            ))
        })
        .collect();
    if cfg.route_refresh {
        caps.push(BgpCapability::RouteRefresh);
    }
    caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
        cfg.local_as,
    )));
    if let Some(gr) = &cfg.graceful_restart {
        let fams: Vec<_> = cfg
            .families
            .iter()
            .filter(|f| gr.families.contains(f))
            .map(|f| {
                GracefulRestartAddressFamily::new(
                    gr.forwarding_preserved.contains(f),
                    f.address_type(),
                )
            })
            .collect();
        caps.push(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(gr.restarting, false, gr.restart_time & 0x0fff, fams),
        ));
    }
    let add_path: Vec<_> = cfg
        .add_path
        .iter()
        .filter(|(f, m)| cfg.families.contains(f) && (m.send || m.receive))
        .map(|(f, m)| AddPathAddressFamily::new(f.address_type(), m.send, m.receive))
        .collect();
    if !add_path.is_empty() {
        caps.push(BgpCapability::AddPath(AddPathCapability::new(add_path)));
    }
    if cfg.extended_message {
        caps.push(BgpCapability::ExtendedMessage);
    }
    caps
}

/// The peer's graceful-restart capability (RFC 4724 §3), kept so a
/// helper can decide what to retain when the session drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGracefulRestart {
    pub restart_time: u16,
    pub restarting: bool,
    /// Families for which the peer preserved forwarding state.
    pub forwarding_preserved: Vec<Family>,
    pub families: Vec<Family>,
}

/// What both speakers agreed on for this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_as: u32,
    pub peer_router_id: Ipv4Addr,
    pub ibgp: bool,
    /// min(ours, theirs); 0 means no Hold and no Keepalive timer.
    pub hold_time: u16,
    pub keepalive_time: u16,
    pub four_octet_as: bool,
    pub families: Vec<Family>,
    /// Both ends advertised ROUTE-REFRESH: we may send the peer one. Its
    /// requests to us depend on our advertisement alone (RFC 2918 §4).
    pub route_refresh: bool,
    pub extended_message: bool,
    /// Families where we may send path identifiers.
    pub add_path_send: Vec<Family>,
    /// Families where the peer's NLRI carry path identifiers.
    pub add_path_receive: Vec<Family>,
    pub peer_graceful_restart: Option<PeerGracefulRestart>,
}

impl Negotiated {
    pub fn max_message_len(&self) -> usize {
        if self.extended_message {
            crate::wire::MAX_EXTENDED_MESSAGE_LEN
        } else {
            crate::wire::MAX_MESSAGE_LEN
        }
    }

    pub fn add_path_rx(&self, f: Family) -> bool {
        self.add_path_receive.contains(&f)
    }

    pub fn add_path_tx(&self, f: Family) -> bool {
        self.add_path_send.contains(&f)
    }
}

/// Intersects our configuration with the peer's capabilities. The OPEN
/// must already be validated ([`crate::open::validate`]).
pub fn negotiate(
    cfg: &SessionConfig,
    peer_as: u32,
    peer_router_id: Ipv4Addr,
    peer_hold: u16,
    caps: &[BgpCapability],
) -> Negotiated {
    let hold_time = cfg.hold_time.min(peer_hold);
    let mut peer_families = Vec::new();
    let mut route_refresh = false;
    let mut four_octet = false;
    let mut extended = false;
    let mut peer_add_path: Vec<(Family, AddPathMode)> = Vec::new();
    let mut gr = None;
    for cap in caps {
        match cap {
            BgpCapability::MultiProtocolExtensions(mp) => {
                if let Some(f) = Family::from_address_type(mp.address_type()) {
                    peer_families.push(f);
                }
            }
            BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh => {
                route_refresh = true
            }
            BgpCapability::FourOctetAs(_) => four_octet = true,
            BgpCapability::ExtendedMessage => extended = true,
            BgpCapability::AddPath(ap) => {
                for af in ap.address_families() {
                    if let Some(f) = Family::from_address_type(af.address_type()) {
                        peer_add_path.push((
                            f,
                            AddPathMode {
                                send: af.send(),
                                receive: af.receive(),
                            },
                        ));
                    }
                }
            }
            BgpCapability::GracefulRestartCapability(g) => {
                let mut families = Vec::new();
                let mut preserved = Vec::new();
                for af in g.address_families() {
                    if let Some(f) = Family::from_address_type(af.address_type()) {
                        families.push(f);
                        if af.forwarding_state() {
                            preserved.push(f);
                        }
                    }
                }
                gr = Some(PeerGracefulRestart {
                    restart_time: g.time(),
                    restarting: g.restart(),
                    forwarding_preserved: preserved,
                    families,
                });
            }
            _ => {}
        }
    }
    // RFC 4760 §8: a peer without any Multiprotocol capability speaks
    // IPv4 unicast only.
    let any_mp = caps
        .iter()
        .any(|c| matches!(c, BgpCapability::MultiProtocolExtensions(_)));
    if !any_mp {
        peer_families.push(Family::Ipv4Unicast);
    }
    let families: Vec<Family> = cfg
        .families
        .iter()
        .copied()
        .filter(|f| peer_families.contains(f))
        .collect();
    let ours = |f: Family| {
        cfg.add_path
            .iter()
            .find(|(g, _)| *g == f)
            .map(|(_, m)| *m)
            .unwrap_or_default()
    };
    let theirs = |f: Family| {
        peer_add_path
            .iter()
            .find(|(g, _)| *g == f)
            .map(|(_, m)| *m)
            .unwrap_or_default()
    };
    // RFC 7911 §5: send only where we said send and they said receive,
    // and the reverse for receive.
    let add_path_send = families
        .iter()
        .copied()
        .filter(|f| ours(*f).send && theirs(*f).receive)
        .collect();
    let add_path_receive = families
        .iter()
        .copied()
        .filter(|f| ours(*f).receive && theirs(*f).send)
        .collect();
    Negotiated {
        peer_as,
        peer_router_id,
        ibgp: peer_as == cfg.local_as,
        hold_time,
        keepalive_time: hold_time / 3,
        four_octet_as: four_octet,
        families,
        route_refresh: route_refresh && cfg.route_refresh,
        extended_message: extended && cfg.extended_message,
        add_path_send,
        add_path_receive,
        peer_graceful_restart: gr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GracefulRestartConfig;
    use netgauze_iana::address_family::AddressType;

    fn cfg() -> SessionConfig {
        let mut c = SessionConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1), 65001);
        c.add_path = vec![(
            Family::Ipv4Unicast,
            AddPathMode {
                send: true,
                receive: true,
            },
        )];
        c.graceful_restart = Some(GracefulRestartConfig {
            restart_time: 120,
            restarting: false,
            families: vec![Family::Ipv4Unicast],
            forwarding_preserved: vec![],
        });
        c
    }

    #[test]
    fn no_mp_capability_means_ipv4_unicast_only() {
        let n = negotiate(&cfg(), 65001, Ipv4Addr::new(1, 1, 1, 1), 30, &[]);
        assert_eq!(n.families, vec![Family::Ipv4Unicast]);
        assert_eq!((n.hold_time, n.keepalive_time), (30, 10));
        assert!(!n.four_octet_as && !n.route_refresh && !n.extended_message);
    }

    #[test]
    fn full_negotiation() {
        let caps = vec![
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                AddressType::Ipv6Unicast,
            )),
            BgpCapability::RouteRefresh,
            BgpCapability::FourOctetAs(FourOctetAsCapability::new(65001)),
            BgpCapability::ExtendedMessage,
            BgpCapability::AddPath(AddPathCapability::new(vec![
                AddPathAddressFamily::new(AddressType::Ipv4Unicast, false, true),
                AddPathAddressFamily::new(AddressType::Ipv6Unicast, true, true),
            ])),
        ];
        let n = negotiate(&cfg(), 65001, Ipv4Addr::new(1, 1, 1, 1), 0, &caps);
        assert_eq!(n.families, vec![Family::Ipv6Unicast]);
        assert_eq!((n.hold_time, n.keepalive_time), (0, 0));
        assert!(n.four_octet_as && n.route_refresh && n.extended_message);
        // IPv4 is not a common family, and we never offered IPv6 ADD-PATH.
        assert!(n.add_path_send.is_empty() && n.add_path_receive.is_empty());
        assert_eq!(n.max_message_len(), 65535);
    }

    #[test]
    fn add_path_directions() {
        let caps = vec![BgpCapability::AddPath(AddPathCapability::new(vec![
            AddPathAddressFamily::new(AddressType::Ipv4Unicast, false, true),
        ]))];
        let n = negotiate(&cfg(), 65001, Ipv4Addr::new(1, 1, 1, 1), 90, &caps);
        assert_eq!(n.add_path_send, vec![Family::Ipv4Unicast]);
        assert!(n.add_path_receive.is_empty());
    }

    #[test]
    fn local_caps_include_asn4_and_gr() {
        let caps = local_capabilities(&cfg());
        assert!(
            caps.contains(&BgpCapability::FourOctetAs(FourOctetAsCapability::new(
                65000
            )))
        );
        assert!(caps
            .iter()
            .any(|c| matches!(c, BgpCapability::GracefulRestartCapability(_))));
    }

    /// RFC 4724 §3: a helper lists no family; a restarting peer's
    /// capability comes back with its Restart State and Forwarding State
    /// bits.
    #[test]
    fn graceful_restart_helper_and_restarting_peer() {
        let mut ours = cfg();
        ours.graceful_restart = Some(GracefulRestartConfig::helper_only());
        let gr = local_capabilities(&ours)
            .into_iter()
            .find_map(|c| match c {
                BgpCapability::GracefulRestartCapability(g) => Some(g),
                _ => None,
            })
            .unwrap();
        assert!(gr.address_families().is_empty() && !gr.restart());

        let mut theirs = cfg();
        theirs.graceful_restart = Some(GracefulRestartConfig {
            restart_time: 90,
            restarting: true,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            forwarding_preserved: vec![Family::Ipv4Unicast],
        });
        let caps = local_capabilities(&theirs);
        let n = negotiate(&ours, 65001, Ipv4Addr::new(1, 1, 1, 1), 90, &caps);
        assert_eq!(
            n.peer_graceful_restart,
            Some(PeerGracefulRestart {
                restart_time: 90,
                restarting: true,
                forwarding_preserved: vec![Family::Ipv4Unicast],
                families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            })
        );
    }
}
