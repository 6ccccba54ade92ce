//! Graceful restart, the Receiving Speaker's side (RFC 4724 §4.2; our own
//! restart is [`crate::restarting`]), sans IO: when a peer that can restart loses its session without a
//! NOTIFICATION, keep forwarding along what it taught us until it is
//! back and has said everything again.
//!
//! One [`GrHelper`] per peer outlives its sessions (a session's FSM is
//! replaced on every connection). The shell feeds it what happened to the
//! session and carries out the [`GrAction`]s on the RIB
//! ([`crate::rib::Rib::mark_stale`], [`crate::rib::Rib::sweep_stale`]) and
//! on two timers:
//!
//! ```text
//!            TCP gone, peer had GR          session back (per family:
//!   Idle ───────────────────────────► Restarting ──── F bit set? keep : sweep) ──► Recovering
//!    ▲   RetainStale, arm Restart         │                                          │
//!    │                                    │ Restart timer: DeleteAll                  │ End-of-RIB(f): SweepStale(f)
//!    └────────────────────────────────────┴──────────────────────────────────────────┘ Stale timer: SweepStale(rest)
//! ```
//!
//! Only a session that ended by TCP alone counts as a restart: a
//! NOTIFICATION sent or received (hold timer, Cease, errors) ends it the
//! normal way (we do not negotiate RFC 8538's N bit). Besides the peer's
//! Restart Time, a bound of our own on waiting for End-of-RIB (the MAY of
//! §4.2) keeps a peer that never sends one from pinning stale routes.

use crate::capability::PeerGracefulRestart;
use crate::config::Family;
use std::time::Duration;

/// How long, in seconds, we wait for End-of-RIB after a restarted peer is
/// back, by default (the value FRR and Cisco use for their stale-path
/// timer).
pub const DEFAULT_STALE_SECS: u16 = 360;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrTimer {
    /// The peer's Restart Time: how long it may take to come back.
    Restart,
    /// Our bound on waiting for its End-of-RIB once it is back.
    Stale,
}

impl GrTimer {
    pub const ALL: [GrTimer; 2] = [GrTimer::Restart, GrTimer::Stale];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrEvent<'a> {
    /// The session left Established. `peer` is the graceful-restart
    /// capability the peer sent for that session; `tcp_only` is true when
    /// the connection ended without a NOTIFICATION either way.
    SessionDown {
        peer: Option<&'a PeerGracefulRestart>,
        tcp_only: bool,
    },
    /// The session is Established again, with the peer's new capability
    /// and the families the session carries.
    SessionUp {
        peer: Option<&'a PeerGracefulRestart>,
        families: &'a [Family],
    },
    /// The peer sent End-of-RIB for a family.
    EndOfRib(Family),
    TimerExpired(GrTimer),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrAction {
    /// Keep the peer's routes of these families as stale and delete its
    /// others ([`crate::rib::Rib::mark_stale`]).
    RetainStale(Vec<Family>),
    /// Delete every route of the peer: a normal session end, or it did not
    /// come back within its Restart Time.
    DeleteAll,
    /// Delete the peer's routes still stale in these families.
    SweepStale(Vec<Family>),
    ArmTimer(GrTimer, Duration),
    CancelTimer(GrTimer),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrState {
    /// Nothing retained.
    Idle,
    /// The session is down; these families are kept stale.
    Restarting(Vec<Family>),
    /// The session is back; these families wait for End-of-RIB.
    Recovering(Vec<Family>),
}

/// The per-peer helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrHelper {
    enabled: bool,
    stale_time: Duration,
    state: GrState,
}

impl GrHelper {
    /// `enabled: false` makes every session end delete the peer's routes.
    pub fn new(enabled: bool, stale_time: Duration) -> Self {
        Self {
            enabled,
            stale_time,
            state: GrState::Idle,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> &GrState {
        &self.state
    }

    /// True while routes of the peer are kept stale or await End-of-RIB.
    pub fn retaining(&self) -> bool {
        self.state != GrState::Idle
    }

    pub fn handle(&mut self, event: GrEvent<'_>) -> Vec<GrAction> {
        let mut out = Vec::new();
        match event {
            GrEvent::SessionDown { peer, tcp_only } => self.session_down(peer, tcp_only, &mut out),
            GrEvent::SessionUp { peer, families } => self.session_up(peer, families, &mut out),
            GrEvent::EndOfRib(f) => {
                if let GrState::Recovering(pending) = &mut self.state {
                    if pending.contains(&f) {
                        pending.retain(|g| *g != f);
                        out.push(GrAction::SweepStale(vec![f]));
                        if pending.is_empty() {
                            out.push(GrAction::CancelTimer(GrTimer::Stale));
                            self.state = GrState::Idle;
                        }
                    }
                }
            }
            GrEvent::TimerExpired(GrTimer::Restart) => {
                if matches!(self.state, GrState::Restarting(_)) {
                    out.push(GrAction::DeleteAll);
                    self.state = GrState::Idle;
                }
            }
            GrEvent::TimerExpired(GrTimer::Stale) => {
                if let GrState::Recovering(pending) = &self.state {
                    out.push(GrAction::SweepStale(pending.clone()));
                    self.state = GrState::Idle;
                }
            }
        }
        out
    }

    fn session_down(
        &mut self,
        peer: Option<&PeerGracefulRestart>,
        tcp_only: bool,
        out: &mut Vec<GrAction>,
    ) {
        for t in GrTimer::ALL {
            out.push(GrAction::CancelTimer(t));
        }
        // A Restart Time of 0 says the peer will not be back in time.
        let keep: Vec<Family> = match peer {
            Some(gr) if self.enabled && tcp_only && gr.restart_time > 0 => gr.families.clone(),
            _ => Vec::new(),
        };
        if keep.is_empty() {
            out.push(GrAction::DeleteAll);
            self.state = GrState::Idle;
            return;
        }
        let restart = peer.map_or(0, |gr| gr.restart_time);
        out.push(GrAction::RetainStale(keep.clone()));
        out.push(GrAction::ArmTimer(
            GrTimer::Restart,
            Duration::from_secs(restart.into()),
        ));
        self.state = GrState::Restarting(keep);
    }

    fn session_up(
        &mut self,
        peer: Option<&PeerGracefulRestart>,
        families: &[Family],
        out: &mut Vec<GrAction>,
    ) {
        let GrState::Restarting(kept) = &self.state else {
            return;
        };
        out.push(GrAction::CancelTimer(GrTimer::Restart));
        // §4.2: a family the new OPEN does not list with its Forwarding
        // State bit set lost its forwarding state: its stale routes go now.
        let preserved = |f: &Family| {
            families.contains(f)
                && peer.is_some_and(|gr| {
                    gr.families.contains(f) && gr.forwarding_preserved.contains(f)
                })
        };
        let (wait, drop): (Vec<Family>, Vec<Family>) = kept.iter().partition(|f| preserved(f));
        if !drop.is_empty() {
            out.push(GrAction::SweepStale(drop));
        }
        if wait.is_empty() {
            self.state = GrState::Idle;
        } else {
            out.push(GrAction::ArmTimer(GrTimer::Stale, self.stale_time));
            self.state = GrState::Recovering(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Family::{Ipv4Unicast as V4, Ipv6Unicast as V6};

    fn cap(restart_time: u16, families: &[Family], preserved: &[Family]) -> PeerGracefulRestart {
        PeerGracefulRestart {
            restart_time,
            restarting: false,
            forwarding_preserved: preserved.to_vec(),
            families: families.to_vec(),
        }
    }

    fn helper() -> GrHelper {
        GrHelper::new(true, Duration::from_secs(360))
    }

    fn down(h: &mut GrHelper, peer: Option<&PeerGracefulRestart>, tcp_only: bool) -> Vec<GrAction> {
        h.handle(GrEvent::SessionDown { peer, tcp_only })
    }

    fn cancels() -> Vec<GrAction> {
        vec![
            GrAction::CancelTimer(GrTimer::Restart),
            GrAction::CancelTimer(GrTimer::Stale),
        ]
    }

    /// RFC 4724 §4.2: only a TCP-only end of a session with a peer that
    /// announced families to restart for keeps routes; everything else is
    /// the normal deletion.
    #[test]
    fn what_a_session_end_keeps() {
        let gr = cap(120, &[V4, V6], &[]);
        let mut h = helper();
        let a = down(&mut h, Some(&gr), true);
        assert_eq!(
            a[2..],
            [
                GrAction::RetainStale(vec![V4, V6]),
                GrAction::ArmTimer(GrTimer::Restart, Duration::from_secs(120)),
            ]
        );
        assert_eq!(h.state(), &GrState::Restarting(vec![V4, V6]));

        let delete_all = [cancels(), vec![GrAction::DeleteAll]].concat();
        let cases: [(&str, GrHelper, Option<PeerGracefulRestart>, bool); 5] = [
            ("NOTIFICATION", helper(), Some(gr.clone()), false),
            ("no capability", helper(), None, true),
            (
                "helper off",
                GrHelper::new(false, Duration::ZERO),
                Some(gr.clone()),
                true,
            ),
            ("restart time 0", helper(), Some(cap(0, &[V4], &[])), true),
            (
                "no families (BIRD's `aware`)",
                helper(),
                Some(cap(120, &[], &[])),
                true,
            ),
        ];
        for (name, mut h, peer, tcp_only) in cases {
            assert_eq!(down(&mut h, peer.as_ref(), tcp_only), delete_all, "{name}");
            assert!(!h.retaining(), "{name}");
        }
    }

    /// §4.2: back with the Forwarding State bit for v4 only: v6 goes at
    /// once, v4 waits for its End-of-RIB (bounded by our stale timer).
    #[test]
    fn back_with_forwarding_state_waits_for_end_of_rib() {
        let mut h = helper();
        down(&mut h, Some(&cap(120, &[V4, V6], &[])), true);
        let back = cap(120, &[V4, V6], &[V4]);
        let a = h.handle(GrEvent::SessionUp {
            peer: Some(&back),
            families: &[V4, V6],
        });
        assert_eq!(
            a,
            [
                GrAction::CancelTimer(GrTimer::Restart),
                GrAction::SweepStale(vec![V6]),
                GrAction::ArmTimer(GrTimer::Stale, Duration::from_secs(360)),
            ]
        );
        assert_eq!(h.state(), &GrState::Recovering(vec![V4]));
        assert!(h.handle(GrEvent::EndOfRib(V6)).is_empty(), "not waited for");
        assert_eq!(
            h.handle(GrEvent::EndOfRib(V4)),
            [
                GrAction::SweepStale(vec![V4]),
                GrAction::CancelTimer(GrTimer::Stale),
            ]
        );
        assert!(!h.retaining());
        assert!(h.handle(GrEvent::EndOfRib(V4)).is_empty());
    }

    /// §4.2: no capability, a family missing from it or not carried by
    /// the new session: its stale routes go at once.
    #[test]
    fn back_without_forwarding_state_sweeps_at_once() {
        let gone = cap(120, &[V4, V6], &[V4, V6]);
        let cases: [(&str, Option<PeerGracefulRestart>, &[Family]); 3] = [
            ("no capability", None, &[V4, V6]),
            ("families missing", Some(cap(120, &[], &[])), &[V4, V6]),
            ("family not negotiated", Some(gone.clone()), &[]),
        ];
        for (name, back, families) in cases {
            let mut h = helper();
            down(&mut h, Some(&gone), true);
            let a = h.handle(GrEvent::SessionUp {
                peer: back.as_ref(),
                families,
            });
            assert_eq!(
                a,
                [
                    GrAction::CancelTimer(GrTimer::Restart),
                    GrAction::SweepStale(vec![V4, V6]),
                ],
                "{name}"
            );
            assert!(!h.retaining(), "{name}");
        }
    }

    /// §4.2: not back within the Restart Time: everything goes. Back but
    /// no End-of-RIB within our bound: what is still stale goes. Timers
    /// that fire in another state do nothing.
    #[test]
    fn timers() {
        let gr = cap(5, &[V4, V6], &[V4, V6]);
        let mut h = helper();
        assert!(h.handle(GrEvent::TimerExpired(GrTimer::Restart)).is_empty());
        down(&mut h, Some(&gr), true);
        assert!(h.handle(GrEvent::TimerExpired(GrTimer::Stale)).is_empty());
        assert_eq!(
            h.handle(GrEvent::TimerExpired(GrTimer::Restart)),
            [GrAction::DeleteAll]
        );
        assert!(!h.retaining());

        down(&mut h, Some(&gr), true);
        h.handle(GrEvent::SessionUp {
            peer: Some(&gr),
            families: &[V4, V6],
        });
        h.handle(GrEvent::EndOfRib(V6));
        assert!(h.handle(GrEvent::TimerExpired(GrTimer::Restart)).is_empty());
        assert_eq!(
            h.handle(GrEvent::TimerExpired(GrTimer::Stale)),
            [GrAction::SweepStale(vec![V4])]
        );
        assert!(!h.retaining());
    }

    /// §4.2: down again before End-of-RIB: a new restart (the RIB deletes
    /// what is still stale from the first one); a NOTIFICATION instead
    /// ends it all.
    #[test]
    fn consecutive_restarts() {
        let gr = cap(30, &[V4], &[V4]);
        let mut h = helper();
        down(&mut h, Some(&gr), true);
        h.handle(GrEvent::SessionUp {
            peer: Some(&gr),
            families: &[V4],
        });
        let a = down(&mut h, Some(&gr), true);
        assert_eq!(
            a,
            [
                cancels(),
                vec![
                    GrAction::RetainStale(vec![V4]),
                    GrAction::ArmTimer(GrTimer::Restart, Duration::from_secs(30)),
                ]
            ]
            .concat()
        );
        h.handle(GrEvent::SessionUp {
            peer: Some(&gr),
            families: &[V4],
        });
        assert_eq!(
            down(&mut h, Some(&gr), false),
            [cancels(), vec![GrAction::DeleteAll]].concat()
        );
        assert!(!h.retaining());
    }
}
