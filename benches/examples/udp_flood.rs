//! A bounded UDP flood from one interface, for `benches/kernel_vs_userspace.sh`: 60-byte (64 on
//! the wire) Ethernet/IPv4/UDP frames with correct checksums, one source port per frame out of
//! 1024 (so forwarders see many flows), sent as fast as an AF_PACKET socket takes them, until
//! SECONDS pass or PACKETS are sent. Run it inside the namespace that holds the interface.
//!
//! ```text
//! udp_flood IF DST_MAC SRC_IP DST_IP [SECONDS (default 5, at most 60)] [PACKETS (default 1e8)]
//! ```
//! Output: `udp_flood: sent=<n> seconds=<s> pps=<rate>`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use switchyard_benches::udp4_frame;
use switchyard_dataplane::HeapBuffer;
use switchyard_io::afpacket::AfPacketDriver;
use switchyard_io::Driver;

const BURST: usize = 64;
const FLOWS: u16 = 1024;

fn usage() -> ! {
    eprintln!("usage: udp_flood IF DST_MAC SRC_IP DST_IP [SECONDS] [PACKETS]");
    std::process::exit(2)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for m in mac.iter_mut() {
        *m = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        usage()
    }
    let dst_mac = parse_mac(&args[1]).unwrap_or_else(|| usage());
    let src: Ipv4Addr = args[2].parse().unwrap_or_else(|_| usage());
    let dst: Ipv4Addr = args[3].parse().unwrap_or_else(|_| usage());
    let seconds: u64 = args
        .get(4)
        .map_or(Ok(5), |s| s.parse())
        .unwrap_or_else(|_| usage());
    let limit = Duration::from_secs(seconds.clamp(1, 60));
    let max: u64 = args
        .get(5)
        .map_or(Ok(100_000_000), |s| s.parse())
        .unwrap_or_else(|_| usage());
    let mut d = match AfPacketDriver::new(std::slice::from_ref(&args[0])) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("udp_flood: {e}");
            std::process::exit(1)
        }
    };
    let src_mac = d.ports()[0].mac;
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| udp4_frame(dst_mac, src_mac, src, dst, (10_000 + i, 5_001), i, 60))
        .collect();
    let mut bufs: Vec<HeapBuffer> = Vec::with_capacity(BURST);
    let (mut sent, mut next, mut errors) = (0u64, 0usize, 0u64);
    let start = Instant::now();
    while sent < max && start.elapsed() < limit {
        let n = (max - sent).min(BURST as u64) as usize;
        for _ in 0..n {
            bufs.push(HeapBuffer::from_bytes(&frames[next]));
            next = (next + 1) % frames.len();
        }
        match d.tx_burst(0, &mut bufs) {
            Ok(k) => sent += k as u64,
            Err(_) => errors += 1,
        }
        bufs.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "udp_flood: sent={sent} seconds={secs:.3} pps={:.0} errors={errors}",
        sent as f64 / secs
    );
}
