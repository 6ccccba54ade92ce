//! DPDK driver against kernel interfaces through the `net_af_packet` and `net_tap` vdevs.
//!
//! Network safety: everything happens in a network namespace this test creates (a veth pair
//! and a tap device, no addresses, no routes) and deletes again, even when it fails. The EAL
//! must start inside the namespace, so the test re-runs its own binary under `ip netns exec`
//! with `SY_DPDK_AF_PACKET_CHILD` set; that child process is the one that initialises DPDK.
//!
//! Without `ip` or namespaces this test prints a SKIP line, unless `CI` is set: then it fails.

#![cfg(feature = "dpdk")]

use std::process::Command;

use switchyard_dataplane::PacketBuffer;
use switchyard_io::dpdk::{DpdkConfig, DpdkDriver, Eal, Mbuf};
use switchyard_io::Driver;

const CHILD_ENV: &str = "SY_DPDK_AF_PACKET_CHILD";
const TEST_NAME: &str = "dpdk_af_packet_and_tap_in_a_namespace";
/// An EtherType from the local experimental range, to tell our frames from kernel chatter.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn missing_capability(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("capability missing (CI is set, so this fails): {what}");
    }
    eprintln!("SKIP {TEST_NAME}: {what}");
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the namespace (and with it the veth pair and the tap) when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

#[test]
fn dpdk_af_packet_and_tap_in_a_namespace() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let ns = Netns(format!("sy-dpdk-{}", std::process::id()));
    if let Err(e) = ip(&["netns", "add", &ns.0]) {
        return missing_capability(&e);
    }
    let setup = [
        vec![
            "-n", &ns.0, "link", "add", "sydp0", "type", "veth", "peer", "name", "sydp1",
        ],
        vec!["-n", &ns.0, "link", "set", "sydp0", "up"],
        vec!["-n", &ns.0, "link", "set", "sydp1", "up"],
    ];
    for cmd in &setup {
        if let Err(e) = ip(cmd) {
            return missing_capability(&e);
        }
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("running the test binary in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr.lines().find(|l| l.starts_with("SKIP")) {
        return missing_capability(line);
    }
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("child ok"),
        "child did not finish:\n{stdout}\n{stderr}"
    );
}

fn frame(seq: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&ETHERTYPE);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = seq.wrapping_add(i as u8);
    }
    f
}

/// Receives our frames (by EtherType) from `port`, polling a bounded number of times.
fn rx_ours(d: &mut DpdkDriver, port: u16, want: usize) -> Vec<Mbuf> {
    let mut ours = Vec::new();
    let mut burst = Vec::new();
    for _ in 0..2000 {
        d.rx_burst(port, &mut burst, 32).unwrap();
        for m in burst.drain(..) {
            if m.len() >= 14 && m.data()[12..14] == ETHERTYPE {
                ours.push(m);
            }
        }
        if ours.len() >= want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    ours
}

/// Runs inside the namespace, in its own process.
fn child() {
    let prefix = format!("sy_test_afp_{}", std::process::id());
    let args: Vec<String> = [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "512",
        "-l",
        "0",
        "--log-level",
        "lib.eal:error",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_af_packet0,iface=sydp0",
        "--vdev",
        "net_af_packet1,iface=sydp1",
        "--vdev",
        "net_tap0,iface=sytap0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = match Eal::init(&args) {
        Ok(eal) => eal,
        Err(e) => return eprintln!("SKIP: EAL init: {e}"),
    };
    let names: Vec<String> = ["net_af_packet0", "net_af_packet1", "net_tap0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut d = match DpdkDriver::new(&eal, &names, &DpdkConfig::default()) {
        Ok(d) => d,
        Err(e) => return eprintln!("SKIP: opening af_packet/tap ports: {e}"),
    };
    // The af_packet ports carry the veths' addresses and MTU.
    assert_eq!(d.ports()[0].mtu, 1500);
    assert_ne!(d.ports()[0].mac, [0; 6]);
    assert_ne!(d.ports()[0].mac, d.ports()[1].mac);

    // sydp0 -> veth -> sydp1, byte for byte, in order.
    let frames: Vec<Vec<u8>> = (0..16u8)
        .map(|i| frame(i, 60 + 90 * usize::from(i)))
        .collect();
    let mut tx: Vec<Mbuf> = frames.iter().map(|f| d.mbuf_from(f).unwrap()).collect();
    assert_eq!(d.tx_burst(0, &mut tx).unwrap(), frames.len());
    let got = rx_ours(&mut d, 1, frames.len());
    assert_eq!(got.len(), frames.len());
    for (m, f) in got.iter().zip(&frames) {
        assert_eq!(m.data(), &f[..]);
    }

    // And back the other way, after adding a header in front.
    let mut back = got;
    for m in &mut back {
        assert!(m.push_front(4));
        // New Ethernet header and a 4-byte tag, over the old header.
        let hdr = &mut m.data_mut()[..18];
        hdr[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        hdr[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        hdr[12..14].copy_from_slice(&ETHERTYPE);
        hdr[14..].copy_from_slice(b"SYRT");
    }
    let n = back.len();
    assert_eq!(d.tx_burst(1, &mut back).unwrap(), n);
    let returned = rx_ours(&mut d, 0, n);
    assert_eq!(returned.len(), n);
    for (m, f) in returned.iter().zip(&frames) {
        assert_eq!(&m.data()[14..18], b"SYRT");
        assert_eq!(&m.data()[18..], &f[14..]);
    }

    // The tap port is up and takes frames (the kernel drops them: no addresses anywhere).
    let mut t = vec![d.mbuf_from(&frame(1, 60)).unwrap()];
    assert_eq!(d.tx_burst(2, &mut t).unwrap(), 1);
    println!("child ok");
}
