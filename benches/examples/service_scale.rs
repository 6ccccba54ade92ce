//! Rule-programming time and first-packet latency of the service proxy with many Services
//! (issue 4; `benches/kube_proxy_compare.sh` runs this next to kube-proxy's rulesets).
//!
//! For each N: N ClusterIP Services `bench/svc-<i>` (198.18.128.0 + i, port 80/TCP), each with
//! ten ready endpoints of their own (endpoint j of Service i is `198.19.0.0 + (10i + j) mod 65536`,
//! port `8080 + (10i + j) / 65536`, the same addresses the comparison script writes into the
//! kube-proxy rulesets).
//!
//! - programming: what the agent does per sync once it holds the Services (see
//!   `proxy/src/agent/mod.rs`): `ServiceTable::compile`, a new `Tables` with the result, and its
//!   publication through a `TablesHandle`; median of `--runs` runs. The resident memory the
//!   compiled tables added (from `/proc/self/statm`, 4 KiB pages) is shown next to it.
//! - first packet: for `--samples` Services picked at random, one TCP SYN of a new connection
//!   from the client to the Service is pushed through the router graph as a vector of one and
//!   timed on its own (refill of the buffer, ethernet-input, ip4-input, service lookup, Maglev
//!   pick, conntrack insert, DNAT, FIB lookup, rewrite, neighbor output); p50/p99 in µs. Before
//!   timing, a warm-up and a check that SYNs leave towards one of their Service's endpoints.
//!
//! `service_scale [--samples K] [--runs R] [--json FILE] [N...]` (default N: 1000 5000 10000
//! 30000; at most 32768, the size of the VIP range).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_benches::{tcp4_frame, Family, RouterRig};
use switchyard_dataplane::buffer::{
    HeapBuffer, PacketBuffer, DEFAULT_BUFFER_SIZE, DEFAULT_HEADROOM,
};
use switchyard_dataplane::graph::Packet;
use switchyard_dataplane::services::Services;
use switchyard_dataplane::tables::{Tables, TablesHandle};
use switchyard_dataplane::wire::Ipv4Packet;
use switchyard_lb::service::{
    CompileOptions, Endpoint, Protocol, Service, ServiceName, ServicePort, ServiceTable,
};

/// Endpoints per Service.
const ENDPOINTS: u32 = 10;
/// First Service address (198.18.128.0/17 holds 32768).
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 0);
/// First endpoint address (198.19.0.0/16, routed by the rig via its two gateways on port 1).
const ENDPOINT_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// The client, on the rig's port 0.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The rig's clock (graph time is passed in, never read).
const NOW: u64 = 1_000_000_000;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(VIP_BASE) + i)
}

fn endpoint(i: u32, j: u32) -> (Ipv4Addr, u16) {
    let k = i * ENDPOINTS + j;
    let port = 8080 + u16::try_from(k / 65_536).unwrap_or(0);
    (Ipv4Addr::from(u32::from(ENDPOINT_BASE) + k % 65_536), port)
}

fn services(n: u32) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            name: ServiceName {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
            },
            cluster_ips: vec![vip(i).into()],
            external_ips: vec![],
            load_balancer_ips: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: (0..ENDPOINTS)
                    .map(|j| {
                        let (addr, port) = endpoint(i, j);
                        Endpoint::ready(addr.into(), port, false)
                    })
                    .collect(),
            }],
            affinity_timeout_secs: None,
            external_traffic_policy: Default::default(),
            internal_traffic_policy: Default::default(),
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            forwarding: Default::default(),
        })
        .collect()
}

/// Resident set size in bytes (second field of /proc/self/statm, 4 KiB pages); 0 if unknown.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// A small deterministic generator (xorshift64*), so runs pick the same Services.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (((x >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// What the agent does per sync: compile, build the next tables, publish them.
fn program(svcs: &[Service], base: &Tables, handle: &TablesHandle, version: u64) -> Arc<Tables> {
    let (table, errors) = ServiceTable::compile(svcs, &CompileOptions::default());
    assert!(
        errors.is_empty(),
        "the generated services compile: {errors:?}"
    );
    let tables = Arc::new(Tables {
        version,
        services: Some(Arc::new(Services {
            table,
            ..Services::default()
        })),
        ..base.clone()
    });
    handle.publish_arc(Arc::clone(&tables));
    tables
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Pushes one SYN for Service `i` through the graph outside any timing and checks it left on
/// port 1 towards one of the Service's endpoints.
fn check_syn(rig: &mut RouterRig, i: u32, sport: u16) -> Result<(), String> {
    let mut buf = HeapBuffer::new(DEFAULT_BUFFER_SIZE, DEFAULT_HEADROOM);
    buf.fill(&tcp4_frame(CLIENT, vip(i), (sport, 80), 0x02));
    rig.graph.receive(Packet::received(buf, 0));
    rig.graph.dispatch(&rig.tables, &mut rig.state, NOW);
    let result = match rig.graph.tx[1].first() {
        None => Err(format!(
            "the SYN to {} was not sent to a backend; counters: {:?}",
            vip(i),
            rig.graph.counters()
        )),
        Some(out) => {
            let ip = Ipv4Packet::new_checked(&out.data()[14..]).map_err(|e| e.to_string())?;
            let dst = ip.dst_addr();
            let dport = u16::from_be_bytes([ip.payload()[2], ip.payload()[3]]);
            if (0..ENDPOINTS).any(|j| endpoint(i, j) == (dst, dport)) {
                Ok(())
            } else {
                Err(format!("SYN to {} went to {dst}:{dport}", vip(i)))
            }
        }
    };
    for q in &mut rig.graph.tx {
        q.clear();
    }
    rig.graph.dropped.clear();
    rig.graph.punt.clear();
    result
}

struct Row {
    n: u32,
    frontends: usize,
    program_ms: f64,
    program_runs: Vec<f64>,
    added_rss_mib: f64,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    samples: usize,
}

fn measure(n: u32, samples: usize, runs: usize) -> Result<Row, String> {
    let svcs = services(n);
    let mut rig = RouterRig::new(Family::V4, 1);
    let base = rig.tables.clone();
    let handle = TablesHandle::new(base.clone());

    // Programming: the first run also gives the memory the compiled tables hold.
    let rss_before = rss_bytes();
    let mut times = Vec::with_capacity(runs);
    let mut tables = None;
    for r in 0..runs.max(1) {
        drop(tables.take());
        handle.publish(base.clone());
        let start = Instant::now();
        let t = program(&svcs, &base, &handle, 2 + r as u64);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        tables = Some(t);
    }
    let rss_after = rss_bytes();
    let tables = tables.ok_or("no programming run")?;
    let frontends = tables
        .services
        .as_ref()
        .map_or(0, |s| s.table.frontends.len());
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let program_ms = sorted[sorted.len() / 2];

    // First packet.
    rig.tables = (*tables).clone();
    drop(tables);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(n));
    for k in 0..32u16 {
        check_syn(&mut rig, rng.below(n), 60_000 + k)?;
    }
    // Warm-up: new connections (source ports of their own) to random Services, untimed.
    let mut sport = 1024u16;
    for _ in 0..256 {
        rig.frames[0] = tcp4_frame(CLIENT, vip(rng.below(n)), (sport, 80), 0x02);
        sport += 1;
        rig.forward_vector();
    }
    let samples = samples.min(usize::from(59_000 - sport));
    let mut lat = Vec::with_capacity(samples);
    let mut sent = 0usize;
    for _ in 0..samples {
        rig.frames[0] = tcp4_frame(CLIENT, vip(rng.below(n)), (sport, 80), 0x02);
        sport += 1;
        let start = Instant::now();
        sent += rig.forward_vector();
        lat.push(start.elapsed());
    }
    if sent != samples {
        return Err(format!(
            "{sent} of {samples} SYNs were forwarded; counters: {:?}",
            rig.graph.counters()
        ));
    }
    let mean_us = lat.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.max(1) as f64;
    lat.sort();
    Ok(Row {
        n,
        frontends,
        program_ms,
        program_runs: times,
        added_rss_mib: rss_after.saturating_sub(rss_before) as f64 / (1024.0 * 1024.0),
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        mean_us,
        samples,
    })
}

fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let runs: Vec<String> = r.program_runs.iter().map(|t| format!("{t:.3}")).collect();
            format!(
                "{{\"n\":{},\"frontends\":{},\"program_ms\":{:.3},\"program_runs_ms\":[{}],\
                 \"added_rss_mib\":{:.1},\"first_packet_p50_us\":{:.3},\
                 \"first_packet_p99_us\":{:.3},\"first_packet_mean_us\":{:.3},\"samples\":{}}}",
                r.n,
                r.frontends,
                r.program_ms,
                runs.join(","),
                r.added_rss_mib,
                r.p50_us,
                r.p99_us,
                r.mean_us,
                r.samples
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

fn usage() -> ! {
    eprintln!("usage: service_scale [--samples K] [--runs R] [--json FILE] [N...]   (N <= 32768)");
    std::process::exit(2)
}

fn main() {
    let mut samples = 1000usize;
    let mut runs = 3usize;
    let mut json_path = None;
    let mut ns = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--samples" => {
                samples = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--json" => json_path = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            n => match n.parse::<u32>() {
                Ok(n) if (1..=32_768).contains(&n) => ns.push(n),
                _ => usage(),
            },
        }
    }
    if ns.is_empty() {
        ns = vec![1000, 5000, 10_000, 30_000];
    }
    println!(
        "{:>6} | {:>9} | {:>10} | {:>9} | {:>14} | {:>14} | {:>8}",
        "N", "frontends", "program ms", "+RSS MiB", "1st-pkt p50 µs", "1st-pkt p99 µs", "samples"
    );
    let mut rows = Vec::new();
    for n in ns {
        match measure(n, samples, runs) {
            Ok(r) => {
                println!(
                    "{:>6} | {:>9} | {:>10.2} | {:>9.1} | {:>14.3} | {:>14.3} | {:>8}",
                    r.n, r.frontends, r.program_ms, r.added_rss_mib, r.p50_us, r.p99_us, r.samples
                );
                rows.push(r);
            }
            Err(e) => {
                eprintln!("N={n}: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Some(path) = json_path {
        if let Err(e) = std::fs::write(&path, json(&rows)) {
            eprintln!("writing {path}: {e}");
            std::process::exit(1);
        }
    }
}
