//! Advertise benchmark (issue 6): the agent hands the speaker 10,000
//! service VIPs (/32 [`LocalRoute`]s through `set_local_routes`, as
//! `proxy/src/agent/bgp.rs` does) while sessions with gobgpd and BIRD are
//! up; the time is from the hand-over until both peers hold all of them
//! in their RIB. In the same run BIRD originates the same 10,000 routes
//! (a static protocol, `birdc configure`) to the same two peers, as the
//! reference. Not a pass/fail test:
//!
//! ```text
//! cargo test --release -p switchyard-bgp --test bench_advertise -- --ignored --nocapture
//! ```
//!
//! Peers count what they hold with O(1) queries (`gobgp global rib
//! summary`, BIRD's per-protocol import counter), polled every 20 ms, so
//! times are good to about that. BENCH_ROUTES and BENCH_ROUNDS override
//! 10,000 routes and 3 rounds; each round withdraws everything first.

mod common;

use common::*;
use ipnet::{IpNet, Ipv4Net};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchyard_bgp::speaker::{LocalRoute, Speaker, SpeakerHandle};

const GOBGP_AS: u32 = 65001;
const BIRD_AS: u32 = 65002;
/// How long one round may take before the benchmark gives up.
const ROUND_LIMIT: Duration = Duration::from_secs(300);

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` /32s from the benchmarking range 198.18.0.0/15.
fn vips(n: usize) -> Vec<Ipv4Net> {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    (0..n as u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(base + i), 32).unwrap())
        .collect()
}

/// The two receiving peers of one run, both peering with 127.0.`net`.1.
struct Receivers {
    gobgpd: Gobgpd,
    bird: Bird,
    bird_port: u16,
}

impl Receivers {
    fn start(bins: &[PathBuf], net: u8, origin_port: u16, origin_as: u32) -> Self {
        let go = GobgpdOpts {
            asn: GOBGP_AS,
            router_id: "198.51.100.2".parse().unwrap(),
            addr: ip(net, 2),
            port: free_port(ip(net, 2)),
            nh4: "198.51.100.2".parse().unwrap(),
            nh6: "2001:db8::2".parse().unwrap(),
            neighbors: vec![GobgpNeighbor {
                addr: ip(net, 1),
                port: origin_port,
                asn: origin_as,
                passive: false,
            }],
        };
        let bo = BirdOpts {
            router_id: "198.51.100.3".parse().unwrap(),
            addr: ip(net, 3),
            port: free_port(ip(net, 3)),
            asn: BIRD_AS,
            neighbor: (ip(net, 1), origin_port, origin_as),
            nh4: "198.51.100.3".parse().unwrap(),
            nh6: "2001:db8::3".parse().unwrap(),
            password: None,
            static4: vec![],
            static6: vec![],
            extra: "  hold time 240;\n".into(),
        };
        let gobgpd = Gobgpd::start(&bins[2], &go);
        let bird_port = bo.port;
        let bird = Bird::start(&bins[0], &bo);
        Self {
            gobgpd,
            bird,
            bird_port,
        }
    }

    fn gobgpd_port(&self) -> u16 {
        self.gobgpd.port
    }

    /// IPv4 destinations in gobgpd's global RIB.
    fn in_gobgpd(&self) -> Option<usize> {
        let s = self
            .gobgpd
            .cli(&["global", "rib", "summary", "-a", "ipv4"])
            .ok()?;
        // "Table ipv4-unicast\nDestination: 10000, Path: 10000"
        let d = s.split("Destination:").nth(1)?;
        d.split(',').next()?.trim().parse().ok()
    }

    /// Routes BIRD imported from the origin (the protocol's counter: O(1),
    /// unlike `show route count`, which walks the table).
    fn in_bird(&self) -> Option<usize> {
        self.bird
            .protocol()
            .lines()
            .find(|l| l.trim_start().starts_with("Routes:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// Polls both peers until each holds `n` routes; the times from
    /// `start` at which gobgpd and BIRD got there.
    fn wait_for(&self, n: usize, start: Instant) -> (Duration, Duration) {
        let (mut g, mut b) = (None, None);
        while g.is_none() || b.is_none() {
            if g.is_none() && self.in_gobgpd() == Some(n) {
                g = Some(start.elapsed());
            }
            if b.is_none() && self.in_bird() == Some(n) {
                b = Some(start.elapsed());
            }
            assert!(
                start.elapsed() < ROUND_LIMIT,
                "stalled: gobgpd {:?}, BIRD {:?} of {n}",
                self.in_gobgpd(),
                self.in_bird()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (g.unwrap_or_default(), b.unwrap_or_default())
    }

    fn wait_established(&self, what: &str) {
        let end = Instant::now() + Duration::from_secs(60);
        while !(self.gobgpd.neighbor_state().contains("Establ")
            && self.bird.protocol().contains("Established"))
        {
            assert!(
                Instant::now() < end,
                "{what}: sessions not up\n{}\n{}",
                self.gobgpd.neighbor_state(),
                self.bird.protocol()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn report(who: &str, round: usize, n: usize, (g, b): (Duration, Duration)) {
    println!(
        "{who:<10} round {round}: {n} routes in gobgpd {:>6.3} s, in BIRD {:>6.3} s, both {:>6.3} s",
        g.as_secs_f64(),
        b.as_secs_f64(),
        g.max(b).as_secs_f64()
    );
}

async fn ours(bins: &[PathBuf], net: u8, routes: &[Ipv4Net], rounds: usize) {
    let our_port = free_port(ip(net, 1));
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let peers = Receivers::start(bins, net, our_port, OUR_AS);
    let mut g = peer_config(ip(net, 2), peers.gobgpd_port(), GOBGP_AS);
    g.hold_time = 240;
    let mut b = peer_config(ip(net, 3), peers.bird_port, BIRD_AS);
    b.hold_time = 240;
    cfg.peers = vec![g, b];
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    wait_established(&h, ip(net, 2), 60).await;
    wait_established(&h, ip(net, 3), 60).await;
    tokio::task::block_in_place(|| peers.wait_established("switchyard"));
    for round in 1..=rounds {
        hand_over(&h, &[]).await;
        tokio::task::block_in_place(|| peers.wait_for(0, Instant::now()));
        // As the agent does: the whole wanted set, next hop per session.
        let local: Vec<LocalRoute> = routes
            .iter()
            .map(|p| LocalRoute {
                prefix: IpNet::V4(*p),
                next_hop: None,
            })
            .collect();
        let start = Instant::now();
        hand_over(&h, &local).await;
        let t = tokio::task::block_in_place(|| peers.wait_for(routes.len(), start));
        report("switchyard", round, routes.len(), t);
    }
    h.shutdown().await.unwrap();
}

async fn hand_over(h: &SpeakerHandle, routes: &[LocalRoute]) {
    h.set_local_routes(routes.to_vec()).await.unwrap();
}

/// BIRD as the originating speaker, with the same peers and routes.
fn reference(bins: &[PathBuf], net: u8, routes: &[Ipv4Net], rounds: usize) {
    let port = free_port(ip(net, 1));
    let peers = Receivers::start(bins, net, port, OUR_AS);
    let conf = |statics: &[Ipv4Net]| {
        let mut s = String::from(
            "log stderr all;\nrouter id 198.51.100.1;\nprotocol device { }\nprotocol static vips {\n  ipv4;\n",
        );
        for p in statics {
            s.push_str(&format!("  route {p} blackhole;\n"));
        }
        s.push_str("}\n");
        for (name, host, asn, peer_port) in [
            ("g", 2u8, GOBGP_AS, peers.gobgpd_port()),
            ("b", 3u8, BIRD_AS, peers.bird_port),
        ] {
            s.push_str(&format!(
                r#"protocol bgp {name} {{
  local {local} port {port} as {OUR_AS};
  neighbor {addr} port {peer_port} as {asn};
  multihop 2;
  hold time 240;
  connect retry time 1;
  ipv4 {{ import none; export filter {{ bgp_origin = ORIGIN_IGP; accept; }}; next hop address {OUR_NH4}; }};
}}
"#,
                local = ip(net, 1),
                addr = ip(net, host),
            ));
        }
        s
    };
    let origin = Bird::start_conf(&bins[0], &conf(&[]), &[]);
    peers.wait_established("BIRD");
    let file = origin.proc.dir.path().join("bird.conf");
    let reconfigure = |statics: &[Ipv4Net]| {
        std::fs::write(&file, conf(statics)).expect("write bird.conf");
        let out = origin.cli(&["configure"]).expect("birdc configure");
        assert!(out.contains("Reconfigured"), "{out}");
    };
    for round in 1..=rounds {
        reconfigure(&[]);
        peers.wait_for(0, Instant::now());
        let start = Instant::now();
        reconfigure(routes);
        let t = peers.wait_for(routes.len(), start);
        report("BIRD", round, routes.len(), t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn advertise_benchmark() {
    let Some(bins) = require(&["bird", "birdc", "gobgpd", "gobgp"]) else {
        return;
    };
    let n = env_or("BENCH_ROUTES", 10_000);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let routes = vips(n);
    println!("{n} service VIPs (/32) to gobgpd and BIRD over loopback, {rounds} rounds");
    ours(&bins, 45, &routes, rounds).await;
    tokio::task::block_in_place(|| reference(&bins, 46, &routes, rounds));
}
