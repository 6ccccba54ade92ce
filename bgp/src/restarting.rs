//! Graceful restart, the Restarting Speaker's side (RFC 4724 §4.1), sans
//! IO: we came back from a restart with the forwarding state we had
//! (learned routes put back into the FIB from the saved state, see
//! [`crate::restart_state`]), and keep it until the peers have told us
//! everything again.
//!
//! One [`SelectionDeferral`] for the whole speaker, alive only while we
//! restart. Per family it holds back route selection, that is the FIB
//! update that would replace the restored routes and our initial UPDATEs
//! and End-of-RIB to graceful-restart peers, until End-of-RIB has come
//! from every peer that counts, or the Selection_Deferral_Timer expires:
//!
//! ```text
//!   start (state file young enough)      every counted peer sent End-of-RIB(f)
//!   ──────────────────────────────► Deferring(f) ─────────────────────────────► Complete(f)
//!   ArmTimer(deferral)                      │  Selection_Deferral_Timer        (select, replace the
//!                                           └────────────────────────────────► restored routes of f,
//!                                                                              send UPDATEs + EoR)
//! ```
//!
//! Which peers count: every configured peer we do graceful restart with
//! counts from the start (we do not know yet what its OPEN will say);
//! once its session is up it stops counting if it did not announce
//! graceful restart, or if it set the Restart State bit itself (§4.1: we
//! MUST NOT wait for a peer that restarts too), and it counts only for the
//! families the session carries. A peer removed from the configuration
//! stops counting. A session that goes down again keeps its place: it may
//! come back, and the timer bounds the wait.
//!
//! Before any peer is configured nothing completes but the timer: the
//! peers of a node agent often arrive a moment after the speaker starts
//! (the iBGP mesh is planned from Node objects), and replacing the FIB
//! with an empty selection then would throw away what we restored.

use crate::capability::PeerGracefulRestart;
use crate::config::Family;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// The Selection_Deferral_Timer by default, in seconds (FRR's
/// `select-defer-time` default; RFC 4724 §4.1 leaves the value to us).
pub const DEFAULT_SELECTION_DEFERRAL_SECS: u16 = 360;

/// The Restart Time we announce by default, in seconds (RFC 4724 §3
/// suggests it be less than the hold time; 120 is what BIRD, FRR and
/// GoBGP use).
pub const DEFAULT_RESTART_TIME_SECS: u16 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferralEvent<'a> {
    /// A peer we do graceful restart with was configured, or restarted
    /// with new settings, while we still defer: it counts, for every
    /// deferred family, until its new session says otherwise.
    PeerAdded(IpAddr),
    PeerRemoved(IpAddr),
    /// The peer's session is Established: its graceful-restart capability
    /// (if any) and the families the session carries.
    SessionUp {
        peer: IpAddr,
        gr: Option<&'a PeerGracefulRestart>,
        families: &'a [Family],
    },
    EndOfRib {
        peer: IpAddr,
        family: Family,
    },
    /// The Selection_Deferral_Timer expired.
    TimerExpired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeferralAction {
    /// Start the Selection_Deferral_Timer.
    ArmTimer(Duration),
    CancelTimer,
    /// Route selection may run for these families: replace their restored
    /// FIB entries with what was learned (deleting the restored ones not
    /// learned again) and send our UPDATEs and End-of-RIB for them.
    Complete(Vec<Family>),
}

/// Why a family stopped waiting, for the log and `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletedBy {
    EndOfRib,
    Timer,
}

/// The speaker-wide deferral of route selection while we restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionDeferral {
    /// Families whose selection is still deferred.
    deferred: Vec<Family>,
    /// Per counted peer, the families whose End-of-RIB we still need.
    waiting: BTreeMap<IpAddr, BTreeSet<Family>>,
    /// A counted peer's families are known only once its session is up.
    up: BTreeSet<IpAddr>,
    /// Some peer was configured at some point: until then nothing
    /// completes before the timer.
    had_peers: bool,
    completed_by: Option<CompletedBy>,
}

impl SelectionDeferral {
    /// Deferral of `families` with the `peers` we do graceful restart
    /// with; the actions arm the timer.
    pub fn start(
        families: &[Family],
        peers: impl IntoIterator<Item = IpAddr>,
        timer: Duration,
    ) -> (Self, Vec<DeferralAction>) {
        let mut deferred: Vec<Family> = families.to_vec();
        deferred.sort();
        deferred.dedup();
        let all: BTreeSet<Family> = deferred.iter().copied().collect();
        let waiting: BTreeMap<IpAddr, BTreeSet<Family>> =
            peers.into_iter().map(|p| (p, all.clone())).collect();
        let d = Self {
            deferred,
            had_peers: !waiting.is_empty(),
            waiting,
            up: BTreeSet::new(),
            completed_by: None,
        };
        (d, vec![DeferralAction::ArmTimer(timer)])
    }

    /// True while any family is deferred.
    pub fn deferring(&self) -> bool {
        !self.deferred.is_empty()
    }

    pub fn is_deferred(&self, f: Family) -> bool {
        self.deferred.contains(&f)
    }

    pub fn deferred(&self) -> &[Family] {
        &self.deferred
    }

    /// Peers whose End-of-RIB we still wait for (any family).
    pub fn waiting_for(&self) -> Vec<IpAddr> {
        self.waiting
            .iter()
            .filter(|(_, fs)| fs.iter().any(|f| self.deferred.contains(f)))
            .map(|(p, _)| *p)
            .collect()
    }

    /// How the last family completed, once one has.
    pub fn completed_by(&self) -> Option<CompletedBy> {
        self.completed_by
    }

    pub fn handle(&mut self, event: DeferralEvent<'_>) -> Vec<DeferralAction> {
        if !self.deferring() {
            return Vec::new();
        }
        match event {
            DeferralEvent::PeerAdded(p) => {
                self.up.remove(&p);
                self.waiting
                    .insert(p, self.deferred.iter().copied().collect());
                self.had_peers = true;
                // Adding a peer never completes anything.
                return Vec::new();
            }
            DeferralEvent::PeerRemoved(p) => {
                self.waiting.remove(&p);
                self.up.remove(&p);
            }
            DeferralEvent::SessionUp { peer, gr, families } => {
                if !self.waiting.contains_key(&peer) {
                    // Not a peer we count (graceful restart off for it).
                    return Vec::new();
                }
                self.up.insert(peer);
                match gr {
                    // §4.1: peers without the capability do not count,
                    // nor do peers restarting themselves.
                    None => {
                        self.waiting.remove(&peer);
                    }
                    Some(g) if g.restarting => {
                        self.waiting.remove(&peer);
                    }
                    Some(_) => {
                        let fs = self
                            .deferred
                            .iter()
                            .copied()
                            .filter(|f| families.contains(f))
                            .collect();
                        self.waiting.insert(peer, fs);
                    }
                }
            }
            DeferralEvent::EndOfRib { peer, family } => {
                if let Some(fs) = self.waiting.get_mut(&peer) {
                    fs.remove(&family);
                }
            }
            DeferralEvent::TimerExpired => {
                let all = std::mem::take(&mut self.deferred);
                self.waiting.clear();
                self.completed_by = Some(CompletedBy::Timer);
                return vec![DeferralAction::Complete(all)];
            }
        }
        self.complete_done()
    }

    /// Completes the families no counted peer still owes End-of-RIB for.
    /// Nothing completes before any peer was configured (see the module
    /// documentation).
    fn complete_done(&mut self) -> Vec<DeferralAction> {
        if !self.had_peers {
            return Vec::new();
        }
        let done: Vec<Family> = self
            .deferred
            .iter()
            .copied()
            .filter(|f| self.waiting.values().all(|fs| !fs.contains(f)))
            .collect();
        if done.is_empty() {
            return Vec::new();
        }
        self.deferred.retain(|f| !done.contains(f));
        self.completed_by = Some(CompletedBy::EndOfRib);
        let mut out = vec![DeferralAction::Complete(done)];
        if self.deferred.is_empty() {
            self.waiting.clear();
            out.push(DeferralAction::CancelTimer);
        }
        out
    }
}
