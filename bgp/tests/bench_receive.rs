//! Receive benchmark (issue 6): one sender replays pre-built UPDATEs
//! into our speaker and then into BIRD, in the same run; time until the
//! last prefix reached Loc-RIB (for us: the last BestPathsChanged entry,
//! i.e. the FIB feed) and peak memory. Not a pass/fail test:
//!
//! ```text
//! cargo test -p switchyard-bgp --release --test bench_receive -- --ignored --nocapture
//! ```
//!
//! Prefixes: IPv4 /32s must come from 198.18.0.0/15 (network-safety
//! rule), which holds 131,072 of them; the million-route run uses IPv6
//! /128s from 2001:db8::/32. BENCH_V6_ROUTES overrides that count.

mod common;

use common::*;
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_bgp::attrs::{AsPath, Origin, PathAttrs};
use switchyard_bgp::speaker::{Speaker, SpeakerEvent};
use switchyard_bgp::update_rx::Nlri;
use switchyard_bgp::update_tx::{build_v4, build_v6, TxParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SENDER_AS: u32 = 65030;

fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&(19 + body.len() as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

fn open() -> Vec<u8> {
    let mut b = vec![4];
    b.extend_from_slice(&23456u16.to_be_bytes());
    b.extend_from_slice(&240u16.to_be_bytes());
    b.extend_from_slice(&[198, 51, 100, 30]);
    let mut caps = vec![1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 65, 4];
    caps.extend_from_slice(&SENDER_AS.to_be_bytes());
    b.push(caps.len() as u8 + 2);
    b.push(2);
    b.push(caps.len() as u8);
    b.extend_from_slice(&caps);
    message(1, &b)
}

async fn read_msg(s: &mut TcpStream) -> Option<u8> {
    let mut h = [0u8; 19];
    s.read_exact(&mut h).await.ok()?;
    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let mut body = vec![0u8; len.checked_sub(19)?];
    s.read_exact(&mut body).await.ok()?;
    Some(h[18])
}

fn attrs(nh: std::net::IpAddr) -> Arc<PathAttrs> {
    Arc::new(PathAttrs::new(
        Origin::Igp,
        AsPath::from_sequence(vec![SENDER_AS]),
        Some(nh),
    ))
}

fn feed(v6_count: u32) -> (Vec<u8>, usize, Vec<u8>, usize) {
    let p = TxParams {
        four_octet_as: true,
        add_path: false,
        max_len: 4096,
    };
    let a4 = attrs("198.51.100.30".parse().unwrap());
    let base4 = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let v4: Vec<_> = (0..1u32 << 17)
        .map(|i| {
            let prefix = Ipv4Net::new(Ipv4Addr::from(base4 + i), 32).unwrap();
            (Nlri { prefix, path_id: 0 }, Arc::clone(&a4))
        })
        .collect();
    let a6 = attrs("2001:db8::30".parse().unwrap());
    let base6 = u128::from("2001:db8:100::".parse::<Ipv6Addr>().unwrap());
    let v6: Vec<_> = (0..v6_count)
        .map(|i| {
            let prefix = Ipv6Net::new(Ipv6Addr::from(base6 + u128::from(i)), 128).unwrap();
            (Nlri { prefix, path_id: 0 }, Arc::clone(&a6))
        })
        .collect();
    let m4 = build_v4(&v4, &[], &p).unwrap().concat();
    let m6 = build_v6(&v6, &[], &p).unwrap().concat();
    (m4, v4.len(), m6, v6.len())
}

/// Accepts one receiver, handshakes, writes `feed`, then keeps the
/// session open (draining what the receiver sends) until dropped.
/// Returns when the whole feed is written, with the write start time.
async fn serve(l: TcpListener, feed: Arc<Vec<u8>>) -> (Instant, tokio::task::JoinHandle<()>) {
    let (mut s, _) = l.accept().await.unwrap();
    assert_eq!(read_msg(&mut s).await, Some(1));
    s.write_all(&open()).await.unwrap();
    s.write_all(&message(4, &[])).await.unwrap();
    assert_eq!(read_msg(&mut s).await, Some(4));
    let (mut rd, mut wr) = s.into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let start = Instant::now();
    let keep = tokio::spawn(async move {
        wr.write_all(&feed).await.unwrap();
        loop {
            tokio::time::sleep(Duration::from_secs(20)).await;
            if wr.write_all(&message(4, &[])).await.is_err() {
                break;
            }
        }
        drain.abort();
    });
    (start, keep)
}

fn status_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn ours(net: u8, feed: Arc<Vec<u8>>, n: usize) -> (Duration, u64) {
    let l = TcpListener::bind((ip(net, 4), 0)).await.unwrap();
    let mut cfg = speaker_config(net);
    cfg.listen = None;
    let mut p = peer_config(ip(net, 4), l.local_addr().unwrap().port(), SENDER_AS);
    p.hold_time = 240;
    cfg.peers.push(p);
    // Peak RSS of this process from here on (clear_refs 5 resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = status_kb("self", "VmRSS:");
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let (start, keep) = serve(l, feed).await;
    let mut got = 0usize;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(120), ev.recv()).await {
            Ok(Some(SpeakerEvent::BestPathsChanged(v))) => got += v.len(),
            Ok(Some(_)) => {}
            _ => panic!("speaker feed stalled at {got} of {n}"),
        }
    }
    let t = start.elapsed();
    let peak = status_kb("self", "VmHWM:").saturating_sub(base);
    keep.abort();
    h.shutdown().await.unwrap();
    (t, peak)
}

async fn bird(bin: &std::path::Path, net: u8, feed: Arc<Vec<u8>>, n: usize) -> (Duration, u64) {
    let l = TcpListener::bind((ip(net, 5), 0)).await.unwrap();
    let o = BirdOpts {
        router_id: "198.51.100.3".parse().unwrap(),
        addr: ip(net, 3),
        port: free_port(ip(net, 3)),
        asn: 65002,
        neighbor: (ip(net, 5), l.local_addr().unwrap().port(), SENDER_AS),
        nh4: "198.51.100.3".parse().unwrap(),
        nh6: "2001:db8::3".parse().unwrap(),
        password: None,
        static4: vec![],
        static6: vec![],
        extra: "  hold time 240;\n".into(),
    };
    let b = Bird::start(bin, &o);
    let (start, keep) = serve(l, feed).await;
    // "Routes: N imported, ..." from the protocol's counters: O(1) for
    // BIRD, unlike `show route count`, which walks the table and would
    // slow the very thing measured.
    let count = || -> usize {
        let s = b.protocol();
        // One such line per channel (ipv4, ipv6).
        s.lines()
            .filter(|l| l.trim_start().starts_with("Routes:"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|v| v.parse::<usize>().ok())
            .sum()
    };
    let end = Instant::now() + Duration::from_secs(120);
    while count() < n {
        assert!(Instant::now() < end, "BIRD stalled: {}", b.protocol());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = start.elapsed();
    let peak = status_kb(&b.proc.pid().to_string(), "VmHWM:");
    keep.abort();
    (t, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn receive_benchmark() {
    let Some(bins) = require(&["bird", "birdc"]) else {
        return;
    };
    let v6_count = std::env::var("BENCH_V6_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000u32);
    let (m4, n4, m6, n6) = feed(v6_count);
    let (m4, m6) = (Arc::new(m4), Arc::new(m6));
    println!(
        "feed: {n4} IPv4 /32 in {} KiB, {n6} IPv6 /128 in {} KiB (4096-byte UPDATEs)",
        m4.len() / 1024,
        m6.len() / 1024
    );
    let (t, rss) = ours(41, Arc::clone(&m4), n4).await;
    println!(
        "switchyard  IPv4 {n4:>8}: {:>7.3} s  peak RSS +{} MiB",
        t.as_secs_f64(),
        rss / 1024
    );
    let (t, rss) = bird(&bins[0], 42, m4, n4).await;
    println!(
        "BIRD        IPv4 {n4:>8}: {:>7.3} s  peak RSS  {} MiB",
        t.as_secs_f64(),
        rss / 1024
    );
    let (t, rss) = ours(43, Arc::clone(&m6), n6).await;
    println!(
        "switchyard  IPv6 {n6:>8}: {:>7.3} s  peak RSS +{} MiB",
        t.as_secs_f64(),
        rss / 1024
    );
    let (t, rss) = bird(&bins[0], 44, m6, n6).await;
    println!(
        "BIRD        IPv6 {n6:>8}: {:>7.3} s  peak RSS  {} MiB",
        t.as_secs_f64(),
        rss / 1024
    );
}
