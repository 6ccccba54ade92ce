//! The BGP session state machine, brought to Established with a well-formed peer OPEN and
//! KEEPALIVE, then fed the input as received bytes (in chunks, some wrapped in a valid
//! header), interleaved with timer and TCP events. Must never panic, and every action must be
//! well formed: bytes sent parse as exactly one BGP message, timers are armed with sane
//! durations, SessionUp/Update only in Established, SessionDown only when leaving it.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchyard_bgp::config::{AddPathMode, Family, GracefulRestartConfig, SessionConfig};
use switchyard_bgp::fsm::{Action, Event, Session, State, Timer};
use switchyard_bgp::notification::Notification;
use switchyard_bgp::open;
use switchyard_bgp::wire::{self, Framer};

const LOCAL_AS: u32 = 65000;
const PEER_AS: u32 = 4_200_000_001;

/// Our side and the peer's, chosen by a selector byte so eBGP/iBGP, hold time 0, ADD-PATH
/// and extended messages are all exercised.
fn configs(sel: u8) -> (SessionConfig, SessionConfig) {
    let ibgp = sel & 1 != 0;
    let peer_as = if ibgp { LOCAL_AS } else { PEER_AS };
    let mut ours = SessionConfig::new(LOCAL_AS, Ipv4Addr::new(198, 18, 0, 1), peer_as);
    let mut theirs = SessionConfig::new(peer_as, Ipv4Addr::new(198, 18, 0, 2), LOCAL_AS);
    if sel & 2 != 0 {
        theirs.hold_time = 0;
    } else {
        theirs.hold_time = 3 + u16::from(sel >> 5);
    }
    if sel & 4 != 0 {
        let both = AddPathMode {
            send: true,
            receive: true,
        };
        for c in [&mut ours, &mut theirs] {
            c.add_path = vec![(Family::Ipv4Unicast, both), (Family::Ipv6Unicast, both)];
        }
    }
    if sel & 8 != 0 {
        theirs.extended_message = false;
        theirs.families = vec![Family::Ipv4Unicast];
    }
    if sel & 16 != 0 {
        theirs.graceful_restart = Some(GracefulRestartConfig {
            restart_time: 120,
            restarting: false,
            families: vec![Family::Ipv4Unicast],
            forwarding_preserved: vec![Family::Ipv4Unicast],
        });
    }
    (ours, theirs)
}

/// Checks one batch of actions, given the state before and after it.
fn check(actions: &[Action], before: State, after: State) {
    let mut ups = 0;
    let mut downs = 0;
    for a in actions {
        match a {
            Action::Send(bytes) => {
                let mut f = Framer::new();
                f.push(bytes);
                let frame = f
                    .next_frame(wire::MAX_EXTENDED_MESSAGE_LEN)
                    .unwrap_or_else(|n| panic!("we sent a bad header ({n:?}): {bytes:?}"))
                    .unwrap_or_else(|| panic!("we sent a partial message: {bytes:?}"));
                assert_eq!(frame.bytes.len(), bytes.len(), "one message per Send");
                assert_eq!(f.pending(), 0);
                match frame.msg_type {
                    wire::MSG_NOTIFICATION => {
                        let n = Notification::decode_body(frame.body()).unwrap();
                        assert!((1..=7).contains(&n.code), "{n:?}");
                    }
                    wire::MSG_OPEN => {
                        open::decode(&frame).unwrap();
                    }
                    wire::MSG_KEEPALIVE => {}
                    other => panic!("the FSM sent message type {other}"),
                }
            }
            Action::ArmTimer(t, d) => {
                assert!(*d > Duration::ZERO, "{t:?} armed for zero");
                if *t == Timer::Keepalive {
                    assert!(*d <= Duration::from_secs(65535));
                }
            }
            Action::SessionUp(neg) => {
                ups += 1;
                assert!(neg.hold_time == 0 || neg.hold_time >= 3);
                assert_eq!(after, State::Established);
            }
            Action::SessionDown(_) => {
                downs += 1;
                assert!(matches!(before, State::Established | State::OpenConfirm));
                assert_ne!(after, State::Established);
            }
            Action::Update(_) | Action::RouteRefresh(_) => {
                // A KEEPALIVE earlier in the same read may have completed the handshake.
                assert!(matches!(before, State::Established | State::OpenConfirm));
            }
            Action::Connect | Action::Disconnect | Action::CancelTimer(_) => {}
        }
    }
    assert!(ups <= 1 && downs <= 1);
    if ups == 1 {
        assert_ne!(before, State::Established);
    }
    if downs == 1 && before == State::OpenConfirm {
        assert_eq!(ups, 1, "down without having been up");
    }
}

fn step(s: &mut Session, f: impl FnOnce(&mut Session) -> Vec<Action>) {
    let before = s.state();
    let actions = f(s);
    let after = s.state();
    check(&actions, before, after);
}

fn framed(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((wire::HEADER_LEN + body.len()) as u16).to_be_bytes());
    m.push(msg_type);
    m.extend_from_slice(body);
    m
}

fuzz_target!(|data: &[u8]| {
    let [sel, rest @ ..] = data else {
        return;
    };
    let mut rest = rest;
    let (ours, theirs) = configs(*sel);
    let peer_open = open::encode_local(&theirs).unwrap();
    let mut s = Session::new(ours);
    step(&mut s, |s| s.handle(Event::ManualStart));
    assert_eq!(s.state(), State::Connect);
    let handshake = |s: &mut Session| {
        step(s, |s| s.handle(Event::TcpConnected));
        assert_eq!(s.state(), State::OpenSent);
        step(s, |s| s.handle_bytes(&peer_open));
        assert_eq!(s.state(), State::OpenConfirm);
        step(s, |s| s.handle_bytes(&wire::keepalive()));
        assert_eq!(s.state(), State::Established);
    };
    handshake(&mut s);

    // Ops: [op][len][bytes..]
    while let [op, len, tail @ ..] = rest {
        let (op, len) = (*op, *len);
        let len = usize::from(len).min(tail.len());
        let (bytes, after) = tail.split_at(len);
        rest = after;
        match op % 16 {
            // Raw received bytes (most ops), in the chunk the input gives.
            0..=7 => step(&mut s, |s| s.handle_bytes(bytes)),
            // A message with a correct header around the input: type from the op.
            8..=10 => {
                let ty = [wire::MSG_UPDATE, wire::MSG_UPDATE, wire::MSG_ROUTE_REFRESH]
                    [usize::from(op % 16 - 8)];
                let ty = if op & 0x80 != 0 { op >> 4 & 7 } else { ty };
                step(&mut s, |s| s.handle_bytes(&framed(ty, bytes)));
            }
            11 => step(&mut s, |s| s.handle(Event::TimerExpired(Timer::Keepalive))),
            12 => step(&mut s, |s| s.handle(Event::TimerExpired(Timer::Hold))),
            13 => step(&mut s, |s| {
                s.handle(Event::TimerExpired(Timer::ConnectRetry))
            }),
            14 => {
                let event = match op >> 4 & 3 {
                    0 => Event::TcpClosed,
                    1 => Event::TcpConnectFailed,
                    2 => Event::ManualStop,
                    _ => Event::ManualStart,
                };
                step(&mut s, |s| s.handle(event));
            }
            // Reconnect: once Idle or waiting to connect, bring the session back up.
            _ => match s.state() {
                State::Idle => {
                    step(&mut s, |s| s.handle(Event::ManualStart));
                }
                State::Connect | State::Active => handshake(&mut s),
                _ => step(&mut s, |s| s.handle(Event::TcpConnected)),
            },
        }
        // The machine never sits in Established without what it negotiated.
        if s.state() == State::Established || s.state() == State::OpenConfirm {
            assert!(s.negotiated().is_some());
        }
    }
});
