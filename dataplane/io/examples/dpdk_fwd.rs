//! Bare DPDK forwarding through `switchyard_io::dpdk`: port 0 RX → port 1 TX and port 1 RX →
//! port 0 TX, no processing, for a bounded time; prints the forwarding rate. A baseline for the
//! router (what the driver alone costs) next to `dpdk-testpmd --forward-mode=io`.
//!
//! ```text
//! dpdk_fwd [--seconds N] [--burst N] [--ports NAME0,NAME1] [-- EAL ARGS...]
//! ```
//!
//! Without EAL arguments it runs on two `net_null` vdevs with `--no-huge -m 512 -l 0`.
//! Output, last line: `dpdk_fwd: Mpps=<rate> packets=<n> seconds=<s>`.

#[cfg(not(feature = "dpdk"))]
fn main() {
    eprintln!("dpdk_fwd: built without the `dpdk` feature");
    std::process::exit(2);
}

#[cfg(feature = "dpdk")]
fn main() {
    if let Err(e) = fwd::run() {
        eprintln!("dpdk_fwd: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "dpdk")]
mod fwd {
    use std::time::{Duration, Instant};

    use switchyard_io::dpdk::{DpdkConfig, DpdkDriver, Eal};
    use switchyard_io::Driver;

    struct Options {
        seconds: f64,
        burst: usize,
        ports: Vec<String>,
        eal: Vec<String>,
    }

    fn parse() -> Result<Options, String> {
        let mut o = Options {
            seconds: 5.0,
            burst: 32,
            ports: vec!["net_null0".into(), "net_null1".into()],
            eal: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                "--seconds" => {
                    o.seconds = value("--seconds")?
                        .parse()
                        .map_err(|e| format!("--seconds: {e}"))?;
                }
                "--burst" => {
                    o.burst = value("--burst")?
                        .parse()
                        .map_err(|e| format!("--burst: {e}"))?;
                }
                "--ports" => o.ports = value("--ports")?.split(',').map(String::from).collect(),
                "--" => {
                    o.eal = args.by_ref().collect();
                }
                "-h" | "--help" => {
                    return Err(
                        "usage: dpdk_fwd [--seconds N] [--burst N] [--ports A,B] [-- EAL ARGS]"
                            .into(),
                    )
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        if !(o.seconds > 0.0 && o.seconds <= 600.0) {
            return Err("--seconds must be in (0, 600]".into());
        }
        if o.burst == 0 || o.burst > 512 {
            return Err("--burst must be in 1..=512".into());
        }
        if o.ports.len() != 2 {
            return Err("--ports takes exactly two device names".into());
        }
        if o.eal.is_empty() {
            let prefix = format!("sy_fwd_{}", std::process::id());
            o.eal = [
                "--no-huge",
                "--no-pci",
                "--no-shconf",
                "-m",
                "512",
                "-l",
                "0",
                "--file-prefix",
                &prefix,
                "--vdev",
                "net_null0",
                "--vdev",
                "net_null1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
        }
        Ok(o)
    }

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        let o = parse()?;
        let eal = Eal::init(&o.eal)?;
        let cfg = DpdkConfig {
            mbufs: 16383,
            ..DpdkConfig::default()
        };
        let mut d = DpdkDriver::new(&eal, &o.ports, &cfg)?;
        for p in d.ports() {
            eprintln!("dpdk_fwd: port {} mac {:02x?} mtu {}", p.name, p.mac, p.mtu);
        }
        let mut bufs = Vec::with_capacity(o.burst);
        let mut forwarded = 0u64;
        let mut polls = 0u32;
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(o.seconds);
        loop {
            for (rx, tx) in [(0, 1), (1, 0)] {
                if d.rx_burst(rx, &mut bufs, o.burst)? > 0 {
                    forwarded += d.tx_burst(tx, &mut bufs)? as u64;
                }
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(1024) && Instant::now() >= deadline {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        for port in 0..2 {
            let s = d.stats(port)?;
            eprintln!(
                "dpdk_fwd: {} rx {} tx {} tx-unsent {} rx-missed {} rx-nombuf {}",
                d.ports()[usize::from(port)].name,
                s.rx_packets,
                s.tx_packets,
                s.tx_unsent,
                s.rx_missed,
                s.rx_nombuf
            );
        }
        println!(
            "dpdk_fwd: Mpps={:.3} packets={forwarded} seconds={secs:.3}",
            forwarded as f64 / secs / 1e6
        );
        Ok(())
    }
}
