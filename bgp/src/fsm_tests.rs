//! State machine tests: two sessions wired back to back, and single
//! sessions fed hand-made bytes.

use crate::config::SessionConfig;
use crate::fsm::*;
use crate::notification;
use crate::wire;
use std::net::Ipv4Addr;
use std::time::Duration;

fn cfg(local: u32, id: u8, peer: u32) -> SessionConfig {
    SessionConfig::new(local, Ipv4Addr::new(10, 0, 0, id), peer)
}

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

fn notification_sent(actions: &[Action]) -> Option<(u8, u8)> {
    actions.iter().find_map(|a| match a {
        Action::Send(b) if b.get(18) == Some(&wire::MSG_NOTIFICATION) => Some((b[19], b[20])),
        _ => None,
    })
}

/// Brings two sessions to Established; returns them.
fn established(a_cfg: SessionConfig, b_cfg: SessionConfig) -> (Session, Session) {
    let mut a = Session::new(a_cfg);
    let mut b = Session::new(b_cfg);
    let acts = a.handle(Event::ManualStart);
    assert!(acts.contains(&Action::Connect));
    assert_eq!(a.state(), State::Connect);
    b.handle(Event::ManualStart);
    assert_eq!(b.state(), State::Active);
    let a_open = sent(&a.handle(Event::TcpConnected));
    let b_open = sent(&b.handle(Event::TcpConnected));
    assert_eq!((a.state(), b.state()), (State::OpenSent, State::OpenSent));
    let a_ka = sent(&a.handle_bytes(&b_open));
    let b_ka = sent(&b.handle_bytes(&a_open));
    assert_eq!(
        (a.state(), b.state()),
        (State::OpenConfirm, State::OpenConfirm)
    );
    let up_a = a.handle_bytes(&b_ka);
    let up_b = b.handle_bytes(&a_ka);
    assert!(up_a.iter().any(|x| matches!(x, Action::SessionUp(_))));
    assert!(up_b.iter().any(|x| matches!(x, Action::SessionUp(_))));
    assert_eq!(
        (a.state(), b.state()),
        (State::Established, State::Established)
    );
    (a, b)
}

fn passive(mut c: SessionConfig) -> SessionConfig {
    c.passive = true;
    c
}

#[test]
fn ebgp_session_comes_up_and_negotiates_hold_time() {
    let mut ca = cfg(65000, 1, 65001);
    ca.hold_time = 30;
    let (a, b) = established(ca, passive(cfg(65001, 2, 65000)));
    assert_eq!(a.negotiated().map(|n| n.hold_time), Some(30));
    assert_eq!(b.negotiated().map(|n| n.keepalive_time), Some(10));
    assert!(!a.negotiated().unwrap().ibgp);
}

#[test]
fn four_octet_ibgp_session_comes_up() {
    let (a, _) = established(
        cfg(4_200_000_000, 1, 4_200_000_000),
        passive(cfg(4_200_000_000, 2, 4_200_000_000)),
    );
    let n = a.negotiated().unwrap();
    assert!(n.ibgp && n.four_octet_as && n.extended_message);
}

#[test]
fn hold_time_zero_arms_no_timers() {
    let mut ca = cfg(65000, 1, 65001);
    ca.hold_time = 0;
    let mut a = Session::new(ca);
    let mut b = Session::new(passive(cfg(65001, 2, 65000)));
    a.handle(Event::ManualStart);
    b.handle(Event::ManualStart);
    let a_open = sent(&a.handle(Event::TcpConnected));
    b.handle(Event::TcpConnected);
    let acts = b.handle_bytes(&a_open);
    assert!(acts.contains(&Action::CancelTimer(Timer::Keepalive)));
    assert!(!acts
        .iter()
        .any(|x| matches!(x, Action::ArmTimer(Timer::Keepalive | Timer::Hold, _))));
}

#[test]
fn wrong_peer_as_gets_bad_peer_as() {
    let mut a = Session::new(cfg(65000, 1, 65009));
    let mut b = Session::new(passive(cfg(65001, 2, 65000)));
    a.handle(Event::ManualStart);
    b.handle(Event::ManualStart);
    a.handle(Event::TcpConnected);
    let b_open = sent(&b.handle(Event::TcpConnected));
    let acts = a.handle_bytes(&b_open);
    assert_eq!(notification_sent(&acts), Some((2, 2)));
    assert_eq!(a.state(), State::Idle);
    assert!(acts.contains(&Action::Disconnect));
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let mut a = Session::new(cfg(65000, 1, 65001));
    a.handle(Event::ManualStart);
    a.handle(Event::TcpConnected);
    let acts = a.handle_bytes(&wire::keepalive());
    assert_eq!(notification_sent(&acts), Some((5, 1)));

    let (mut a, _) = established(cfg(65000, 1, 65001), passive(cfg(65001, 2, 65000)));
    let open = crate::open::encode_local(&cfg(65001, 2, 65000)).unwrap();
    let acts = a.handle_bytes(&open);
    assert_eq!(notification_sent(&acts), Some((5, 3)));
    assert!(acts
        .iter()
        .any(|x| matches!(x, Action::SessionDown(DownReason::Sent(_)))));
}

#[test]
fn hold_timer_expiry_sends_4_0_and_keepalive_timer_sends_keepalive() {
    let (mut a, _) = established(cfg(65000, 1, 65001), passive(cfg(65001, 2, 65000)));
    let acts = a.handle(Event::TimerExpired(Timer::Keepalive));
    assert_eq!(sent(&acts), wire::keepalive());
    assert!(acts.contains(&Action::ArmTimer(Timer::Keepalive, Duration::from_secs(30))));
    let acts = a.handle(Event::TimerExpired(Timer::Hold));
    assert_eq!(notification_sent(&acts), Some((4, 0)));
    assert_eq!(a.state(), State::Idle);
    // Still administratively up: it will retry.
    assert!(acts.contains(&Action::ArmTimer(
        Timer::ConnectRetry,
        Duration::from_secs(120)
    )));
    let acts = a.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert!(acts.contains(&Action::Connect));
    assert_eq!(a.state(), State::Connect);
}

#[test]
fn manual_stop_sends_cease_and_stays_idle() {
    let (mut a, mut b) = established(cfg(65000, 1, 65001), passive(cfg(65001, 2, 65000)));
    let acts = a.handle(Event::ManualStop);
    assert_eq!(notification_sent(&acts), Some((6, 2)));
    assert!(acts.contains(&Action::CancelTimer(Timer::ConnectRetry)));
    let acts_b = b.handle_bytes(&sent(&acts));
    assert!(acts_b.iter().any(|x| matches!(
        x,
        Action::SessionDown(DownReason::Received(n)) if n.code == 6 && n.subcode == 2
    )));
    assert_eq!(a.handle(Event::TimerExpired(Timer::ConnectRetry)), vec![]);
}

#[test]
fn deconfigured_peer_gets_cease_3_and_stays_down() {
    let (mut a, mut b) = established(cfg(65000, 1, 65001), passive(cfg(65001, 2, 65000)));
    let acts = a.handle(Event::ManualStopWith(
        notification::cease::PEER_DECONFIGURED,
    ));
    assert_eq!(notification_sent(&acts), Some((6, 3)));
    assert!(acts.iter().any(|x| matches!(
        x,
        Action::SessionDown(DownReason::Sent(n)) if n.code == 6 && n.subcode == 3
    )));
    assert!(acts.contains(&Action::Disconnect));
    assert!(acts.contains(&Action::CancelTimer(Timer::ConnectRetry)));
    assert_eq!(a.state(), State::Idle);
    let acts_b = b.handle_bytes(&sent(&acts));
    assert!(acts_b.iter().any(|x| matches!(
        x,
        Action::SessionDown(DownReason::Received(n)) if n.code == 6 && n.subcode == 3
    )));
    assert_eq!(a.handle(Event::TimerExpired(Timer::ConnectRetry)), vec![]);
    // Before any BGP connection there is nobody to tell.
    let mut idle = Session::new(cfg(65000, 1, 65001));
    idle.handle(Event::ManualStart);
    let acts = idle.handle(Event::ManualStopWith(
        notification::cease::PEER_DECONFIGURED,
    ));
    assert_eq!(notification_sent(&acts), None);
    assert_eq!(idle.state(), State::Idle);
}

#[test]
fn updates_flow_and_malformed_update_resets() {
    let (mut a, _) = established(cfg(65000, 1, 65001), passive(cfg(65001, 2, 65000)));
    // ORIGIN IGP, AS_PATH [65001], NEXT_HOP 198.51.100.1, NLRI 203.0.113.0/24
    let body: Vec<u8> = vec![
        0, 0, 0, 20, 0x40, 1, 1, 0, 0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, 0x40, 3, 4, 198, 51, 100,
        1, 24, 203, 0, 113,
    ];
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(wire::MSG_UPDATE);
    msg.extend_from_slice(&body);
    let acts = a.handle_bytes(&msg);
    let upd = acts.iter().find_map(|x| match x {
        Action::Update(u) => Some(u),
        _ => None,
    });
    assert_eq!(upd.map(|u| u.announced_v4.len()), Some(1));
    assert!(acts.contains(&Action::ArmTimer(Timer::Hold, Duration::from_secs(90))));
    // Withdrawn Routes Length beyond the message: 3/1 and down.
    let mut bad = msg.clone();
    bad[20] = 0xff;
    let acts = a.handle_bytes(&bad);
    assert_eq!(notification_sent(&acts), Some((3, 1)));
    assert_eq!(a.state(), State::Idle);
}

#[test]
fn header_error_in_established() {
    let (mut a, _) = established(cfg(65000, 1, 65001), passive(cfg(65001, 2, 65000)));
    let mut ka = wire::keepalive();
    ka[0] = 0;
    assert_eq!(notification_sent(&a.handle_bytes(&ka)), Some((1, 1)));
}

#[test]
fn connect_failure_and_retry() {
    let mut a = Session::new(cfg(65000, 1, 65001));
    a.handle(Event::ManualStart);
    a.handle(Event::TcpConnectFailed);
    assert_eq!(a.state(), State::Active);
    let acts = a.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert!(acts.contains(&Action::Connect));
    assert_eq!(a.state(), State::Connect);
    // Passive sessions never connect.
    let mut p = Session::new(passive(cfg(65000, 1, 65001)));
    p.handle(Event::ManualStart);
    let acts = p.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert!(!acts.contains(&Action::Connect));
    assert_eq!(p.state(), State::Active);
}

/// RFC 4271 §8.2.2: a connection that fails in OpenSent (the peer closed
/// it before its OPEN, as a restarting peer does) leaves us in Active,
/// listening for the peer's own connection, not in Idle refusing it.
#[test]
fn connection_lost_in_open_sent_goes_to_active() {
    let mut s = Session::new(cfg(65000, 1, 65001));
    s.handle(Event::ManualStart);
    s.handle(Event::TcpConnected);
    assert_eq!(s.state(), State::OpenSent);
    let a = s.handle(Event::TcpClosed);
    assert_eq!(s.state(), State::Active);
    assert!(a.contains(&Action::Disconnect), "{a:?}");
    assert!(a.contains(&Action::CancelTimer(Timer::Hold)), "{a:?}");
    assert!(
        a.contains(&Action::ArmTimer(
            Timer::ConnectRetry,
            Duration::from_secs(120)
        )),
        "{a:?}"
    );
    assert!(!a.iter().any(|x| matches!(x, Action::SessionDown(_))));
    assert_eq!(notification_sent(&a), None);
    // The peer's connection is taken at once.
    assert!(!sent(&s.handle(Event::TcpConnected)).is_empty());
    assert_eq!(s.state(), State::OpenSent);
}
