//! The Restarting Speaker's selection deferral (RFC 4724 §4.1), without
//! IO: which peers' End-of-RIB it waits for, per family, and when the
//! Selection_Deferral_Timer cuts the wait short.

use crate::capability::{local_capabilities, negotiate, PeerGracefulRestart};
use crate::config::{Family, GracefulRestartConfig, SessionConfig};
use crate::restarting::{CompletedBy, DeferralAction, DeferralEvent, SelectionDeferral};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use Family::{Ipv4Unicast as V4, Ipv6Unicast as V6};

const TIMER: Duration = Duration::from_secs(360);

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
}

fn helper() -> PeerGracefulRestart {
    PeerGracefulRestart {
        restart_time: 120,
        restarting: false,
        forwarding_preserved: vec![],
        families: vec![V4, V6],
    }
}

fn start(peers: &[u8]) -> SelectionDeferral {
    let (d, a) = SelectionDeferral::start(&[V4, V6], peers.iter().map(|n| ip(*n)), TIMER);
    assert_eq!(a, [DeferralAction::ArmTimer(TIMER)]);
    assert!(d.deferring());
    d
}

fn up(d: &mut SelectionDeferral, n: u8, gr: Option<&PeerGracefulRestart>) -> Vec<DeferralAction> {
    d.handle(DeferralEvent::SessionUp {
        peer: ip(n),
        gr,
        families: &[V4, V6],
    })
}

fn eor(d: &mut SelectionDeferral, n: u8, family: Family) -> Vec<DeferralAction> {
    d.handle(DeferralEvent::EndOfRib {
        peer: ip(n),
        family,
    })
}

/// Selection for a family runs once every counted peer has sent its
/// End-of-RIB for it; the timer is cancelled when nothing is deferred.
#[test]
fn waits_for_end_of_rib_from_every_peer_per_family() {
    let mut d = start(&[1, 2]);
    let gr = helper();
    assert!(up(&mut d, 1, Some(&gr)).is_empty());
    assert!(eor(&mut d, 1, V4).is_empty(), "peer 2 not even up yet");
    assert_eq!(d.waiting_for(), [ip(1), ip(2)]);
    assert!(up(&mut d, 2, Some(&gr)).is_empty());
    assert_eq!(eor(&mut d, 2, V4), [DeferralAction::Complete(vec![V4])]);
    assert!(!d.is_deferred(V4) && d.is_deferred(V6));
    // A repeated End-of-RIB changes nothing.
    assert!(eor(&mut d, 2, V4).is_empty());
    assert!(eor(&mut d, 2, V6).is_empty());
    assert_eq!(d.waiting_for(), [ip(1)]);
    assert_eq!(
        eor(&mut d, 1, V6),
        [
            DeferralAction::Complete(vec![V6]),
            DeferralAction::CancelTimer
        ]
    );
    assert!(!d.deferring());
    assert_eq!(d.completed_by(), Some(CompletedBy::EndOfRib));
    // Over: nothing reopens it.
    assert!(up(&mut d, 3, Some(&gr)).is_empty());
    assert!(d.handle(DeferralEvent::TimerExpired).is_empty());
}

/// §4.1: peers without the capability, and peers that restart too
/// (Restart State bit), are not waited for.
#[test]
fn peers_without_gr_or_restarting_themselves_do_not_count() {
    let mut d = start(&[1, 2, 3]);
    let restarting = PeerGracefulRestart {
        restarting: true,
        ..helper()
    };
    assert!(up(&mut d, 1, None).is_empty());
    assert!(up(&mut d, 2, Some(&restarting)).is_empty());
    assert_eq!(d.waiting_for(), [ip(3)]);
    assert!(up(&mut d, 3, Some(&helper())).is_empty());
    assert_eq!(eor(&mut d, 3, V4), [DeferralAction::Complete(vec![V4])]);
    // The restarting peer's End-of-RIB does not matter either way.
    assert!(eor(&mut d, 2, V6).is_empty());
    assert_eq!(
        eor(&mut d, 3, V6),
        [
            DeferralAction::Complete(vec![V6]),
            DeferralAction::CancelTimer
        ]
    );
}

/// A peer whose only peers are not waited for completes at once; with
/// none configured at all, only the timer ends the wait (the peers of a
/// node agent may come a moment later).
#[test]
fn nobody_to_wait_for() {
    let mut d = start(&[1]);
    assert_eq!(
        up(&mut d, 1, None),
        [
            DeferralAction::Complete(vec![V4, V6]),
            DeferralAction::CancelTimer
        ]
    );

    let mut d = start(&[]);
    assert!(d.waiting_for().is_empty());
    assert!(eor(&mut d, 9, V4).is_empty());
    assert!(d.deferring(), "no peer yet: wait for one or the timer");
    assert!(d.handle(DeferralEvent::PeerAdded(ip(4))).is_empty());
    assert!(up(&mut d, 4, Some(&helper())).is_empty());
    assert_eq!(eor(&mut d, 4, V4), [DeferralAction::Complete(vec![V4])]);
}

/// The session's families bound what a peer owes; a removed peer owes
/// nothing; the timer completes whatever is left.
#[test]
fn families_removal_and_timer() {
    let mut d = start(&[1, 2]);
    let a = d.handle(DeferralEvent::SessionUp {
        peer: ip(1),
        gr: Some(&helper()),
        families: &[V4],
    });
    assert!(a.is_empty());
    assert_eq!(eor(&mut d, 1, V4), Vec::<DeferralAction>::new(), "peer 2");
    assert_eq!(
        d.handle(DeferralEvent::PeerRemoved(ip(2))),
        [
            DeferralAction::Complete(vec![V4, V6]),
            DeferralAction::CancelTimer
        ],
        "peer 1 carries no IPv6, peer 2 is gone"
    );

    let mut d = start(&[1]);
    assert!(up(&mut d, 1, Some(&helper())).is_empty());
    assert_eq!(eor(&mut d, 1, V6), [DeferralAction::Complete(vec![V6])]);
    assert_eq!(
        d.handle(DeferralEvent::TimerExpired),
        [DeferralAction::Complete(vec![V4])]
    );
    assert!(!d.deferring());
    assert_eq!(d.completed_by(), Some(CompletedBy::Timer));
    assert!(d.waiting_for().is_empty());
}

/// A peer not configured for graceful restart is never counted, even if
/// its session comes up.
#[test]
fn uncounted_peer_is_ignored() {
    let mut d = start(&[1]);
    assert!(up(&mut d, 7, None).is_empty());
    assert!(eor(&mut d, 7, V4).is_empty());
    assert_eq!(d.waiting_for(), [ip(1)]);
}

/// RFC 4724 §3 on the wire: a restarting speaker's OPEN carries the
/// Restart State bit, its Restart Time and the Forwarding State bit of
/// each family; the peer decodes exactly that.
#[test]
fn restarting_capability_round_trip() {
    let mut ours = SessionConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1), 65001);
    ours.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 120,
        restarting: true,
        families: vec![V4, V6],
        forwarding_preserved: vec![V4, V6],
    });
    let mut theirs = SessionConfig::new(65001, Ipv4Addr::new(10, 0, 0, 2), 65000);
    theirs.graceful_restart = Some(GracefulRestartConfig::helper_only());
    let n = negotiate(
        &theirs,
        65000,
        Ipv4Addr::new(10, 0, 0, 1),
        90,
        &local_capabilities(&ours),
    );
    assert_eq!(
        n.peer_graceful_restart,
        Some(PeerGracefulRestart {
            restart_time: 120,
            restarting: true,
            forwarding_preserved: vec![V4, V6],
            families: vec![V4, V6],
        })
    );
}

/// A peer restarted with new settings counts again from scratch: what
/// its old session sent no longer matters.
#[test]
fn peer_added_again_counts_from_scratch() {
    let mut d = start(&[1, 2]);
    assert!(up(&mut d, 1, Some(&helper())).is_empty());
    assert!(eor(&mut d, 1, V4).is_empty());
    assert!(d.handle(DeferralEvent::PeerAdded(ip(1))).is_empty());
    assert!(up(&mut d, 2, None).is_empty());
    assert_eq!(d.waiting_for(), [ip(1)]);
    assert!(up(&mut d, 1, Some(&helper())).is_empty());
    assert_eq!(eor(&mut d, 1, V4), [DeferralAction::Complete(vec![V4])]);
}
