//! IKEv2 tunnels established per second by one responder (issue 8): a fresh initiator engine
//! per tunnel runs IKE_SA_INIT and IKE_AUTH (PSK) with one CHILD_SA against a single
//! responder engine, datagrams handed across in memory. Only the responder's work is timed
//! (`Engine::handle` on its side: DH, key derivation, AUTH, proposal and selector choice); the
//! initiators' work is done outside the measurement, as on a hub where the branches pay their
//! own side.
//!
//! ```sh
//! cargo bench -p switchyard-benches --bench ike
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard_ipsec::crypto::SecretBytes;
use switchyard_ipsec::ike::proposal::{EspProposal, IkeProposal};
use switchyard_ipsec::ike::wire::TrafficSelector;
use switchyard_ipsec::ike::{Action, Engine, EngineConfig, Identity, PeerConfig};

const HUB: &str = "198.51.100.1:500";
const BRANCH: &str = "198.51.100.2:500";

fn selector(start: &str, end: &str) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start: start.parse().expect("address"),
        end: end.parse().expect("address"),
    }
}

fn peer(initiator: bool, ike: &str) -> PeerConfig {
    let (branch, hub) = (
        selector("198.18.0.0", "198.18.0.255"),
        selector("203.0.113.0", "203.0.113.255"),
    );
    PeerConfig {
        name: "site".to_string(),
        local: (if initiator { BRANCH } else { HUB })
            .parse()
            .expect("address"),
        remote: initiator.then(|| HUB.parse().expect("address")),
        local_id: Identity::parse(if initiator {
            "@branch.example"
        } else {
            "@hub.example"
        }),
        // The hub takes any branch that proves the key.
        remote_id: initiator.then(|| Identity::parse("@hub.example")),
        psk: SecretBytes::from_slice(b"switchyard-bench-psk"),
        certs: None,
        ike_proposals: vec![IkeProposal::parse(ike).expect("IKE proposal")],
        esp_proposals: vec![EspProposal::parse("aes128gcm16").expect("ESP proposal")],
        local_ts: vec![if initiator { branch } else { hub }],
        remote_ts: vec![if initiator { hub } else { branch }],
        child_lifetime: Default::default(),
        ike_lifetime: None,
        virtual_ips: Vec::new(),
        pool: None,
    }
}

fn engine(peer: PeerConfig) -> Engine {
    Engine::new(EngineConfig {
        peers: vec![peer],
        ..EngineConfig::default()
    })
    .expect("engine")
}

/// The datagrams in `actions`, as (local, remote, bytes).
fn sends(actions: Vec<Action>) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send {
                local,
                remote,
                bytes,
            } => Some((local, remote, bytes)),
            _ => None,
        })
        .collect()
}

/// One tunnel from a fresh branch: returns the time the hub spent on it, and whether both
/// sides ended with the CHILD_SA installed.
fn tunnel(hub: &mut Engine, ike: &str) -> (Duration, bool) {
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut branch = engine(peer(true, ike));
    let (_, first) = branch.connect("site", now).expect("connect");
    let mut to_hub = sends(first);
    let mut spent = Duration::ZERO;
    let mut installed = 0;
    for _ in 0..8 {
        if to_hub.is_empty() {
            break;
        }
        let mut to_branch = Vec::new();
        for (local, remote, bytes) in to_hub.drain(..) {
            let started = Instant::now();
            let actions = hub.handle(&bytes, remote, local, now, wall);
            spent += started.elapsed();
            installed += actions
                .iter()
                .filter(|a| matches!(a, Action::InstallChildSa(_)))
                .count();
            to_branch.extend(sends(actions));
        }
        for (local, remote, bytes) in to_branch {
            let actions = branch.handle(&bytes, remote, local, now, wall);
            installed += actions
                .iter()
                .filter(|a| matches!(a, Action::InstallChildSa(_)))
                .count();
            to_hub.extend(sends(actions));
        }
    }
    (spent, installed == 2)
}

fn ike(c: &mut Criterion) {
    let mut group = c.benchmark_group("ike_responder");
    group.throughput(Throughput::Elements(1));
    for (name, ike) in [
        ("x25519", "aes128gcm16-prfsha256-x25519"),
        ("ecp256", "aes128gcm16-prfsha256-ecp256"),
        ("modp2048", "aes128gcm16-prfsha256-modp2048"),
    ] {
        let mut hub = engine(peer(false, ike));
        assert!(
            tunnel(&mut hub, ike).1,
            "{name}: the tunnel did not come up"
        );
        group.bench_function(format!("tunnel_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (spent, up) = tunnel(&mut hub, ike);
                    assert!(up, "{name}: a tunnel did not come up");
                    total += spent;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ike);
criterion_main!(benches);
