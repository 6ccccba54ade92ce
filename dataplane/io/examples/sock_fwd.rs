//! Baseline for benchmarks: forwards every frame between two interfaces with a kernel-socket
//! driver for a bounded time, printing packets per second; or generates 64-byte frames.
//!
//! ```text
//! sock_fwd fwd afpacket|afxdp IF1 IF2 [SECONDS]   forward IF1 <-> IF2, print pps each second
//! sock_fwd gen IF DST_MAC [SECONDS]               send 64-byte frames to DST_MAC (AF_PACKET)
//! ```
//!
//! Run it inside the namespace that holds the interfaces (`ip netns exec NS ...`). SECONDS is
//! at most 600 (default 10).

use std::time::{Duration, Instant};

use switchyard_dataplane::HeapBuffer;
use switchyard_io::afpacket::AfPacketDriver;
use switchyard_io::{Driver, IoError};

const BURST: usize = 64;

fn usage() -> ! {
    eprintln!(
        "usage: sock_fwd fwd afpacket|afxdp IF1 IF2 [SECONDS]\n       sock_fwd gen IF DST_MAC [SECONDS]"
    );
    std::process::exit(2)
}

fn seconds(arg: Option<&String>) -> Duration {
    let s = arg
        .map_or(Ok(10), |a| a.parse::<u64>())
        .unwrap_or_else(|_| usage());
    Duration::from_secs(s.clamp(1, 600))
}

/// Forwards port 0 <-> port 1 until `limit`, printing the rate each second.
fn forward<D: Driver>(mut d: D, limit: Duration) -> Result<(), IoError> {
    let start = Instant::now();
    let mut tick = start;
    let (mut total, mut window) = (0u64, 0u64);
    let mut bufs = Vec::with_capacity(BURST);
    while start.elapsed() < limit {
        let mut idle = true;
        for (from, to) in [(0, 1), (1, 0)] {
            let n = d.rx_burst(from, &mut bufs, BURST)?;
            if n > 0 {
                idle = false;
                window += d.tx_burst(to, &mut bufs)? as u64;
                // Whatever tx_burst did not take is dropped.
                d.recycle(&mut bufs);
            }
        }
        if idle {
            d.wait(Duration::from_millis(1));
        }
        if tick.elapsed() >= Duration::from_secs(1) {
            println!(
                "{:.0} pps forwarded",
                window as f64 / tick.elapsed().as_secs_f64()
            );
            total += window;
            window = 0;
            tick = Instant::now();
        }
    }
    total += window;
    println!(
        "total {total} packets in {:.1} s: {:.0} pps",
        start.elapsed().as_secs_f64(),
        total as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Sends 64-byte frames to `dst` as fast as the socket takes them until `limit`.
fn generate(ifname: &str, dst: [u8; 6], limit: Duration) -> Result<(), IoError> {
    let mut d = AfPacketDriver::new(&[ifname.to_string()])?;
    let src = d.ports()[0].mac;
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut bufs = Vec::with_capacity(BURST);
    while start.elapsed() < limit {
        bufs.extend((0..BURST).map(|_| HeapBuffer::from_bytes(&frame)));
        sent += d.tx_burst(0, &mut bufs)? as u64;
    }
    println!(
        "generated {sent} frames: {:.0} pps",
        sent as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
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
    let result = match args.first().map(String::as_str) {
        Some("fwd") if args.len() >= 4 => {
            let ifs = [args[2].clone(), args[3].clone()];
            let limit = seconds(args.get(4));
            match args[1].as_str() {
                "afpacket" => AfPacketDriver::new(&ifs).and_then(|d| forward(d, limit)),
                #[cfg(feature = "afxdp")]
                "afxdp" => {
                    switchyard_io::afxdp::AfXdpDriver::new(&ifs, 0).and_then(|d| forward(d, limit))
                }
                _ => usage(),
            }
        }
        Some("gen") if args.len() >= 3 => {
            let dst = parse_mac(&args[2]).unwrap_or_else(|| usage());
            generate(&args[1], dst, seconds(args.get(3)))
        }
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("sock_fwd: {e}");
        std::process::exit(1);
    }
}
