//! Graceful restart end to end without IO: a peer's session restarts
//! against ours, and our helper and RIB keep, replace and sweep its
//! routes as RFC 4724 §4.2 says. Both ends are this crate's FSM, wired
//! back to back; the peer's UPDATEs come from `update_tx`.

use crate::attrs::{AsPath, Origin, PathAttrs};
use crate::capability::Negotiated;
use crate::config::{Family, GracefulRestartConfig, SessionConfig};
use crate::fsm::{Action, Event, Session};
use crate::graceful_restart::{GrAction, GrEvent, GrHelper, GrTimer};
use crate::rib::decision::DecisionConfig;
use crate::rib::{PeerId, PeerInfo, Rib, RibConfig};
use crate::update_rx::Nlri;
use crate::update_tx::{self, TxParams};
use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

const OURS: u32 = 65000;
const THEIRS: u32 = 65001;

fn sent(actions: &[Action]) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Our side: a session, the helper, the RIB and the peer's RIB id.
struct Us {
    session: Session,
    helper: GrHelper,
    rib: Rib,
    id: Option<PeerId>,
    negotiated: Option<Negotiated>,
}

impl Us {
    fn new() -> Self {
        let mut cfg = SessionConfig::new(OURS, Ipv4Addr::new(10, 0, 0, 1), THEIRS);
        cfg.graceful_restart = Some(GracefulRestartConfig::helper_only());
        Self {
            session: Session::new(cfg),
            helper: GrHelper::new(true, Duration::from_secs(360)),
            rib: Rib::new(RibConfig {
                local_as: OURS,
                router_id: Ipv4Addr::new(10, 0, 0, 1),
                cluster_id: None,
                decision: DecisionConfig::default(),
            }),
            id: None,
            negotiated: None,
        }
    }

    /// Does what the speaker's core does with the session's actions.
    fn run(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SessionUp(neg) => {
                    if !self.helper.retaining() {
                        self.id = Some(self.rib.add_peer(PeerInfo {
                            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
                            router_id: neg.peer_router_id,
                            peer_as: neg.peer_as,
                            local_as: OURS,
                            rr_client: false,
                            multihop: false,
                            local_address: None,
                            local_address_v6: None,
                            import: crate::policy::Policy::accept_all(),
                            export: None,
                        }));
                    }
                    let gr = self.helper.handle(GrEvent::SessionUp {
                        peer: neg.peer_graceful_restart.as_ref(),
                        families: &neg.families,
                    });
                    self.negotiated = Some(*neg);
                    self.gr(gr);
                }
                Action::SessionDown(why) => {
                    let neg = self.negotiated.take();
                    let gr = self.helper.handle(GrEvent::SessionDown {
                        peer: neg.as_ref().and_then(|n| n.peer_graceful_restart.as_ref()),
                        tcp_only: why == crate::fsm::DownReason::TcpClosed,
                    });
                    self.gr(gr);
                }
                Action::Update(u) => {
                    let id = self.id.expect("UPDATE before the session is up");
                    self.rib.apply_update(id, &u);
                    if let Some(f) = u.end_of_rib {
                        let gr = self.helper.handle(GrEvent::EndOfRib(f));
                        self.gr(gr);
                    }
                }
                _ => {}
            }
        }
    }

    fn gr(&mut self, actions: Vec<GrAction>) {
        for a in actions {
            match a {
                GrAction::RetainStale(f) => self.rib.mark_stale(self.id.unwrap(), &f),
                GrAction::DeleteAll => {
                    if let Some(id) = self.id.take() {
                        self.rib.remove_peer(id);
                    }
                }
                GrAction::SweepStale(fs) => {
                    for f in fs {
                        self.rib.sweep_stale(self.id.unwrap(), f);
                    }
                }
                GrAction::ArmTimer(..) | GrAction::CancelTimer(_) => {}
            }
        }
    }

    fn next_hops(&self, p: &str) -> usize {
        self.rib.multipath(&self.rib.v4, &p.parse().unwrap()).len()
    }
}

/// The peer: it can restart for IPv4 and IPv6; `back` sets the Restart
/// State bit and claims IPv4 forwarding state preserved.
fn their_session(back: bool) -> Session {
    let mut cfg = SessionConfig::new(THEIRS, Ipv4Addr::new(10, 0, 0, 2), OURS);
    cfg.passive = true;
    cfg.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 120,
        restarting: back,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        forwarding_preserved: if back {
            vec![Family::Ipv4Unicast]
        } else {
            Vec::new()
        },
    });
    Session::new(cfg)
}

/// OPEN, KEEPALIVE both ways; our actions are run.
fn handshake(us: &mut Us, them: &mut Session) {
    let a = us.session.handle(Event::ManualStart);
    us.run(a);
    them.handle(Event::ManualStart);
    let our_open = sent(&us.session.handle(Event::TcpConnected));
    let their_open = sent(&them.handle(Event::TcpConnected));
    let our_ka = sent(&us.session.handle_bytes(&their_open));
    let their_ka = sent(&them.handle_bytes(&our_open));
    let a = us.session.handle_bytes(&their_ka);
    us.run(a);
    them.handle_bytes(&our_ka);
    assert!(us.negotiated.is_some(), "session up");
}

fn announce(us: &mut Us, prefixes: &[&str], end_of_rib: bool) {
    let attrs = Arc::new(PathAttrs::new(
        Origin::Igp,
        AsPath::from_sequence(vec![THEIRS]),
        Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2))),
    ));
    let announce: Vec<(Nlri<Ipv4Net>, _)> = prefixes
        .iter()
        .map(|p| {
            (
                Nlri {
                    prefix: p.parse().unwrap(),
                    path_id: 0,
                },
                Arc::clone(&attrs),
            )
        })
        .collect();
    let params = TxParams {
        four_octet_as: true,
        add_path: false,
        max_len: 4096,
    };
    let mut bytes = update_tx::build_v4(&announce, &[], &params)
        .unwrap()
        .concat();
    if end_of_rib {
        bytes.extend(update_tx::end_of_rib(Family::Ipv4Unicast).unwrap());
    }
    let a = us.session.handle_bytes(&bytes);
    us.run(a);
}

#[test]
fn restart_keeps_forwarding_and_sweeps_at_end_of_rib() {
    let mut us = Us::new();
    let mut them = their_session(false);
    handshake(&mut us, &mut them);
    announce(&mut us, &["198.18.1.0/24", "198.18.2.0/24"], true);
    assert_eq!(us.rib.v4.len(), 2);
    us.rib.v4.take_changes();

    // The peer dies: its TCP connection ends without a NOTIFICATION.
    let a = us.session.handle(Event::TcpClosed);
    us.run(a);
    assert_eq!(
        us.helper.state(),
        &crate::graceful_restart::GrState::Restarting(vec![
            Family::Ipv4Unicast,
            Family::Ipv6Unicast,
        ])
    );
    assert_eq!(us.next_hops("198.18.1.0/24"), 1, "still forwarding");
    assert_eq!(us.rib.stale_count(us.id.unwrap()), 2);
    assert!(us.rib.v4.take_changes().is_empty(), "no FIB change");

    // Back, announcing one of the two again, then End-of-RIB.
    let mut them = their_session(true);
    handshake(&mut us, &mut them);
    assert!(us.helper.retaining());
    announce(&mut us, &["198.18.1.0/24"], false);
    assert!(
        us.rib.v4.take_changes().is_empty(),
        "announced again with equal attributes: no FIB change"
    );
    assert_eq!(us.rib.stale_count(us.id.unwrap()), 1);
    announce(&mut us, &[], true);
    assert!(!us.helper.retaining());
    assert_eq!(
        us.rib.v4.take_changes(),
        vec!["198.18.2.0/24".parse().unwrap()]
    );
    assert_eq!(us.next_hops("198.18.1.0/24"), 1);
    assert_eq!(us.next_hops("198.18.2.0/24"), 0);
}

#[test]
fn restart_time_over_deletes_everything() {
    let mut us = Us::new();
    let mut them = their_session(false);
    handshake(&mut us, &mut them);
    announce(&mut us, &["198.18.1.0/24"], true);
    let a = us.session.handle(Event::TcpClosed);
    us.run(a);
    assert_eq!(us.next_hops("198.18.1.0/24"), 1);
    let a = us.helper.handle(GrEvent::TimerExpired(GrTimer::Restart));
    us.gr(a);
    assert!(us.rib.v4.is_empty());
    assert!(us.id.is_none());
}

#[test]
fn notification_ends_without_restart() {
    let mut us = Us::new();
    let mut them = their_session(false);
    handshake(&mut us, &mut them);
    announce(&mut us, &["198.18.1.0/24"], true);
    // A Cease from the peer: a normal end.
    let cease = crate::notification::Notification::cease(2).encode();
    let a = us.session.handle_bytes(&cease);
    us.run(a);
    assert!(us.rib.v4.is_empty());
    assert!(!us.helper.retaining());
}
