//! An IKEv2 responder fed datagrams from one peer address, with time advancing. Two sources of
//! datagrams are mixed: arbitrary bytes, and the messages of a real initiator that holds the
//! *wrong* pre-shared key, optionally corrupted by the input. The initiator gets the
//! responder's answers, so exchanges reach IKE_AUTH with correct SK keys and the fuzzer can
//! work on what follows. Must never panic; no side may ever install a CHILD_SA or report an
//! IKE SA established (nobody here knows the responder's key); every datagram the responder
//! sends goes to the peer it came from and is an IKE message.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use switchyard_ipsec::crypto::SecretBytes;
use switchyard_ipsec::ike::proposal::{EspProposal, IkeProposal};
use switchyard_ipsec::ike::wire::{Header, TrafficSelector};
use switchyard_ipsec::ike::{Action, Engine, EngineConfig, Identity, PeerConfig, PoolConfig};

const INITIATOR: &str = "198.51.100.1:500";
const RESPONDER: &str = "198.51.100.2:500";
const NATT_PORT: u16 = 4500;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ts(start: &str, end: &str) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
    }
}

/// One side's configuration. Elliptic-curve groups only, so each exchange is cheap.
fn peer(initiator: bool, psk: &[u8], ike: &str, esp: &str) -> PeerConfig {
    let (mine, theirs) = (
        ts("198.18.0.0", "198.18.0.255"),
        ts("198.19.0.0", "198.19.0.255"),
    );
    PeerConfig {
        name: "site".into(),
        local: addr(if initiator { INITIATOR } else { RESPONDER }),
        remote: initiator.then(|| addr(RESPONDER)),
        local_id: Identity::parse(if initiator {
            "@a.example"
        } else {
            "@b.example"
        }),
        remote_id: Some(Identity::parse(if initiator {
            "@b.example"
        } else {
            "@a.example"
        })),
        psk: SecretBytes::from_slice(psk),
        certs: None,
        ike_proposals: ike
            .split(',')
            .map(|p| IkeProposal::parse(p).unwrap())
            .collect(),
        esp_proposals: esp
            .split(',')
            .map(|p| EspProposal::parse(p).unwrap())
            .collect(),
        local_ts: vec![if initiator { mine } else { theirs }],
        remote_ts: vec![if initiator { theirs } else { mine }],
        child_lifetime: Default::default(),
        ike_lifetime: None,
        virtual_ips: Vec::new(),
        // The responder hands out virtual IPs (to initiators that could authenticate).
        pool: (!initiator).then(|| "pool".to_string()),
    }
}

fn responder_peer() -> &'static PeerConfig {
    static P: OnceLock<PeerConfig> = OnceLock::new();
    P.get_or_init(|| {
        peer(
            false,
            b"the responder's secret",
            "aes128gcm16-prfsha256-ecp256,aes256-sha256-x25519",
            "aes128gcm16-esn-noesn,aes256-sha256",
        )
    })
}

/// The initiator's proposals, chosen by the input: GCM or CBC for the SK payload; and
/// whether it asks for virtual IPs (a Configuration payload in IKE_AUTH).
fn initiator_peer(sel: u8) -> PeerConfig {
    let (ike, esp) = if sel & 1 == 0 {
        ("aes128gcm16-prfsha256-ecp256", "aes128gcm16-esn")
    } else {
        ("aes256-sha256-x25519", "aes256-sha256")
    };
    let mut p = peer(true, b"a guess at the secret", ike, esp);
    if sel & 4 != 0 {
        p.virtual_ips = vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()];
    }
    p
}

/// An address no peer is configured for.
fn stranger() -> SocketAddr {
    addr("203.0.113.9:500")
}

/// Checks what an engine asked for and collects its datagrams.
fn absorb(
    actions: Vec<Action>,
    is_responder: bool,
    out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
) {
    for a in actions {
        match a {
            Action::Send {
                local,
                remote,
                bytes,
            } => {
                let (me, them) = if is_responder {
                    (addr(RESPONDER), addr(INITIATOR))
                } else {
                    (addr(INITIATOR), addr(RESPONDER))
                };
                assert_eq!(local.ip(), me.ip(), "sent from a foreign address");
                // The responder may also answer the stranger of op 7 (whose SAs then time out).
                assert!(
                    remote.ip() == them.ip() || (is_responder && remote.ip() == stranger().ip()),
                    "sent to someone who never wrote: {remote}"
                );
                let ike = if local.port() == NATT_PORT {
                    assert_eq!(&bytes[..4], &[0, 0, 0, 0], "non-ESP marker missing");
                    &bytes[4..]
                } else {
                    &bytes[..]
                };
                Header::parse(ike).unwrap_or_else(|e| panic!("sent a non-IKE datagram: {e:?}"));
                out.push((local, remote, bytes));
            }
            Action::InstallChildSa(install) => {
                panic!("CHILD_SA installed without the key: {install:?}")
            }
            Action::Established { peer, .. } => panic!("IKE SA {peer} established without the key"),
            Action::ArmTimer { .. }
            | Action::DeleteChildSa { .. }
            | Action::UpdateChildSaAddresses { .. }
            | Action::Failed { .. }
            | Action::ChildFailed { .. }
            | Action::IkeRekeyFailed { .. }
            | Action::Closed { .. } => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, rest @ ..] = data else {
        return;
    };
    let mut rest = rest;
    let mut responder = Engine::new(EngineConfig {
        peers: vec![responder_peer().clone()],
        pools: vec![PoolConfig::parse("pool", "198.18.100.0/30,2001:db8:100::/126", "").unwrap()],
        cookie_threshold: (sel & 2 != 0).then_some(1),
        natt_port: NATT_PORT,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut initiator = Engine::new(EngineConfig {
        peers: vec![initiator_peer(*sel)],
        natt_port: NATT_PORT,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut now = Instant::now();
    let wall = SystemTime::now();
    // Datagrams in flight: to the responder, and back to the initiator.
    let mut to_r: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    let mut to_i: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    let mut ops = 0;
    while let [op, len, tail @ ..] = rest {
        let (op, len) = (*op, *len);
        ops += 1;
        if ops > 64 {
            break;
        }
        let len = usize::from(len).min(tail.len());
        let (bytes, after) = tail.split_at(len);
        rest = after;
        match op % 8 {
            // An arbitrary datagram from the peer's address, to port 500 or 4500.
            0 | 1 => {
                let (src_port, dst_port) = if op & 0x10 != 0 {
                    (NATT_PORT, NATT_PORT)
                } else {
                    (500, 500)
                };
                let mut local = addr(RESPONDER);
                local.set_port(dst_port);
                let mut remote = addr(INITIATOR);
                remote.set_port(src_port);
                let mut datagram = Vec::with_capacity(bytes.len() + 4);
                if dst_port == NATT_PORT && op & 0x20 != 0 {
                    datagram.extend_from_slice(&[0, 0, 0, 0]);
                }
                datagram.extend_from_slice(bytes);
                let acts = responder.handle(&datagram, local, remote, now, wall);
                absorb(acts, true, &mut to_i);
            }
            // The initiator starts an exchange.
            2 => {
                if let Ok((_, acts)) = initiator.connect("site", now) {
                    absorb(acts, false, &mut to_r);
                }
            }
            // Deliver the oldest datagram to the responder; the input's bytes are (offset,
            // xor) pairs to corrupt it with (none: delivered intact).
            3 | 4 => {
                if !to_r.is_empty() {
                    let (local, remote, mut d) = to_r.remove(0);
                    for pair in bytes.chunks_exact(2) {
                        if !d.is_empty() {
                            let at = usize::from(pair[0]) * d.len() / 256;
                            d[at] ^= pair[1];
                        }
                    }
                    // The initiator's local is the responder's remote.
                    let acts = responder.handle(&d, remote, local, now, wall);
                    absorb(acts, true, &mut to_i);
                }
            }
            // Deliver the responder's answers to the initiator.
            5 => {
                for (local, remote, d) in std::mem::take(&mut to_i) {
                    let acts = initiator.handle(&d, remote, local, now, wall);
                    absorb(acts, false, &mut to_r);
                }
            }
            // Time passes: retransmissions, give-ups, half-open expiry.
            6 => {
                let secs = bytes.first().copied().unwrap_or(1);
                now += Duration::from_millis(u64::from(secs) * 250);
                let acts = responder.handle_timeout(now);
                absorb(acts, true, &mut to_i);
                let acts = initiator.handle_timeout(now);
                absorb(acts, false, &mut to_r);
            }
            // A datagram from the wrong address entirely: must be ignored or refused.
            _ => {
                let acts = responder.handle(bytes, addr(RESPONDER), stranger(), now, wall);
                for a in &acts {
                    if let Action::Send { remote, .. } = a {
                        assert_eq!(*remote, stranger(), "answered someone else");
                    }
                }
                let mut ignored = Vec::new();
                absorb(acts, true, &mut ignored);
            }
        }
        let _ = responder.next_timeout();
        let _ = responder.sas();
    }
});
