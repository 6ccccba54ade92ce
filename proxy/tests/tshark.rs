//! What the router puts on the wire, as Wireshark sees it: capture on the client's eth0 while
//! the client resolves the router (ARP, ND), pings it, sends TTL/hop-limit 1 probes, opens a TCP
//! connection through it, pings unrouted addresses, solicits a router advertisement (RFC 1256)
//! and queries multicast listeners (MLDv2); then `tshark` must find every expected packet and
//! no malformed packet or expert error (bad checksums included).
//!
//!   cargo test -p switchyard --test tshark
//!   SWITCHYARD_LAB_KERNEL=1 cargo test -p switchyard --test tshark   # Linux as the router

mod common;

use common::dissect::{frames, tshark, ERROR_FILTER};
use common::*;
use std::time::{Duration, Instant};

fn capture_and_dissect(driver: Driver) {
    let test = format!("tshark::{}", driver.name());
    let Some(mut lab) = Lab::new(&test, &["tcpdump", "tshark"]) else {
        return;
    };
    lab.start_router(driver, &["--trace", "3", "--ipv4-rdisc"]);
    let router_mac = lab.mac(Ns::Node, "c0");

    // Capture, bounded in time (timeout) and size (-c).
    let pcap = lab.dir.join("client-eth0.pcap");
    let mut capture = lab.spawn(
        Ns::Client,
        "tcpdump",
        &format!(
            "tcpdump -n -i eth0 -U --immediate-mode -c 20000 -w {}",
            pcap.display()
        ),
        Duration::from_secs(50),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.read("tcpdump.err").contains("listening on") {
        assert!(
            Instant::now() < deadline,
            "tcpdump did not start: {}",
            lab.read("tcpdump.err")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Forget the router's MAC so resolution shows in the capture.
    lab.exec_ok(
        Ns::Client,
        "ip -4 neigh flush dev eth0; ip -6 neigh flush dev eth0",
    );
    let probes = [
        format!("ping -n -c 2 -i 0.2 -W 2 {ROUTER_C0_V4}"), // ARP + echo
        format!("ping -n -c 2 -i 0.2 -W 2 {ROUTER_C0_V6}"), // ND + echo
        format!("ping -n -c 2 -i 0.2 -W 2 {SERVER_V4}"),    // forwarded echo
        format!("ping -n -c 2 -i 0.2 -W 2 {SERVER_V6}"),
        format!("ping -n -c 2 -i 0.3 -W 2 -t 1 {SERVER_V4}"), // time exceeded
        format!("ping -n -6 -c 2 -i 0.3 -W 2 -t 1 {SERVER_V6}"), // ICMPv6 time exceeded
        format!("ping -n -c 2 -i 0.3 -W 2 {UNROUTED_V4}"),    // destination unreachable
        format!("ping -n -6 -c 2 -i 0.3 -W 2 {UNROUTED_V6}"), // ICMPv6 destination unreachable
    ];
    for p in &probes {
        // Success or failure is judged from the capture below.
        let _ = lab.exec(Ns::Client, p);
    }
    // An ICMP router solicitation to all-routers, as a host's rdisc sends it; the answer
    // comes within 2 s.
    let solicit = format!(
        "python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, \
         socket.IPPROTO_ICMP); s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, \
         socket.inet_aton(\"{CLIENT_V4}\")); s.sendto(bytes([10, 0, 0xf5, 0xff, 0, 0, 0, 0]), \
         (\"224.0.0.2\", 0))'"
    );
    lab.exec_ok(Ns::Client, &solicit);
    // A general MLDv2 query from the client's link-local address to all-nodes, as a
    // multicast router sends it (maximum response delay 1 s): the router reports its groups.
    let query = "python3 -c 'import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, \
         socket.IPPROTO_ICMPV6); i = socket.if_nametoindex(\"eth0\"); \
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, i); \
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1); \
         s.sendto(bytes([130, 0, 0, 0, 3, 0xe8, 0, 0] + [0] * 16 + [2, 125, 0, 0]), \
         (\"ff02::1\", 0, 0, i))'";
    lab.exec_ok(Ns::Client, query);
    std::thread::sleep(Duration::from_millis(2500));
    lab.tcp_transfer(false, 64 * 1024, 5004);
    lab.tcp_transfer(true, 64 * 1024, 5006);

    std::thread::sleep(Duration::from_millis(300));
    let pid = capture.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = wait_bounded(&mut capture, Duration::from_secs(10));
    assert!(status.is_some(), "tcpdump did not stop");
    let router = lab.finish();
    eprintln!("tcpdump: {}", lab.read("tcpdump.err").trim());

    let mac = router_mac.as_str();
    let expected: Vec<(&str, String)> = vec![
        ("ARP request for 198.18.1.1", format!("arp.opcode == 1 && arp.dst.proto_ipv4 == {ROUTER_C0_V4}")),
        (
            "ARP reply from 198.18.1.1 with c0's MAC",
            format!("arp.opcode == 2 && arp.src.proto_ipv4 == {ROUTER_C0_V4} && arp.src.hw_mac == {mac} && eth.src == {mac}"),
        ),
        (
            "neighbor solicitation for 2001:db8:1::1",
            format!("icmpv6.type == 135 && icmpv6.nd.ns.target_address == {ROUTER_C0_V6}"),
        ),
        (
            "neighbor advertisement for 2001:db8:1::1 (solicited, router flag, target MAC = c0)",
            format!(
                "icmpv6.type == 136 && icmpv6.nd.na.target_address == {ROUTER_C0_V6} && \
                 icmpv6.nd.na.flag.s == 1 && icmpv6.nd.na.flag.r == 1 && icmpv6.opt.linkaddr == {mac}"
            ),
        ),
        ("echo reply from 198.18.1.1", format!("icmp.type == 0 && ip.src == {ROUTER_C0_V4}")),
        ("echo reply from 2001:db8:1::1", format!("icmpv6.type == 129 && ipv6.src == {ROUTER_C0_V6}")),
        (
            "forwarded echo reply from 198.18.2.2, TTL decremented to 63",
            format!("icmp.type == 0 && ip.src == {SERVER_V4} && ip.ttl == 63 && eth.src == {mac}"),
        ),
        (
            "forwarded echo reply from 2001:db8:2::2, hop limit 63",
            format!("icmpv6.type == 129 && ipv6.src == {SERVER_V6} && ipv6.hlim == 63 && eth.src == {mac}"),
        ),
        (
            "ICMP time exceeded from 198.18.1.1 quoting the probe to 198.18.2.2",
            format!("icmp.type == 11 && icmp.code == 0 && ip.src == {ROUTER_C0_V4} && ip.dst == {SERVER_V4}"),
        ),
        (
            "ICMPv6 time exceeded (hop limit) from 2001:db8:1::1 quoting the probe",
            format!("icmpv6.type == 3 && icmpv6.code == 0 && ipv6.src == {ROUTER_C0_V6} && ipv6.dst == {SERVER_V6}"),
        ),
        (
            "ICMP destination unreachable from 198.18.1.1 for 198.19.255.9",
            format!("icmp.type == 3 && ip.src == {ROUTER_C0_V4} && ip.dst == {UNROUTED_V4}"),
        ),
        (
            "ICMPv6 destination unreachable from 2001:db8:1::1 for 2001:db8:ff::9",
            format!("icmpv6.type == 1 && ipv6.src == {ROUTER_C0_V6} && ipv6.dst == {UNROUTED_V6}"),
        ),
        (
            "forwarded TCP SYN-ACK from 198.18.2.2",
            format!("tcp.flags.syn == 1 && tcp.flags.ack == 1 && ip.src == {SERVER_V4} && ip.ttl == 63"),
        ),
        (
            "forwarded TCP FIN from 198.18.2.2",
            format!("tcp.flags.fin == 1 && ip.src == {SERVER_V4}"),
        ),
        (
            "ICMP router solicitation to 224.0.0.2",
            format!("icmp.type == 10 && ip.src == {CLIENT_V4} && ip.dst == 224.0.0.2"),
        ),
        (
            "ICMP router advertisement from 198.18.1.1 to 224.0.0.1, TTL 1, listing 198.18.1.1",
            format!(
                "icmp.type == 9 && ip.src == {ROUTER_C0_V4} && ip.dst == 224.0.0.1 && ip.ttl == 1 \
                 && icmp.num_addrs == 1 && icmp.router_address == {ROUTER_C0_V4} && eth.src == {mac}"
            ),
        ),
        (
            "MLDv2 report from c0's link-local address to ff02::16, hop limit 1, all-routers listed",
            format!(
                "icmpv6.type == 143 && ipv6.src == fe80::/10 && ipv6.dst == ff02::16 && ipv6.hlim == 1 \
                 && icmpv6.mldr.mar.multicast_address == ff02::2 && eth.src == {mac}"
            ),
        ),
        (
            "forwarded TCP SYN-ACK from 2001:db8:2::2",
            format!("tcp.flags.syn == 1 && tcp.flags.ack == 1 && ipv6.src == {SERVER_V6} && ipv6.hlim == 63"),
        ),
    ];

    let mut missing = Vec::new();
    for (what, filter) in &expected {
        let hits = frames(&pcap, filter);
        if hits.is_empty() {
            eprintln!("✗ {what}\n    filter: {filter}");
            missing.push(*what);
        } else {
            eprintln!(
                "✓ {what}: {} frame(s), e.g. {}",
                hits.len(),
                hits[0].replace('\t', " ")
            );
        }
    }

    // Dissection problems anywhere in the capture: malformed packets and expert-info errors
    // (bad checksums are errors once validation is on).
    let bad = frames(&pcap, ERROR_FILTER);
    let expert = tshark(&pcap, &["-q", "-z", "expert,error"]);

    if !missing.is_empty() || !bad.is_empty() {
        let all = tshark(&pcap, &[]);
        panic!(
            "capture check failed\nmissing: {missing:#?}\nframes with errors:\n{}\n{expert}\n\
             ---- whole capture ----\n{all}\n{}",
            bad.join("\n"),
            router.map(|r| r.to_string()).unwrap_or_default()
        );
    }
}

#[test]
fn afpacket_wire_dissects_cleanly() {
    capture_and_dissect(Driver::AfPacket);
}

#[test]
fn afxdp_wire_dissects_cleanly() {
    capture_and_dissect(Driver::AfXdp);
}

#[test]
fn dpdk_wire_dissects_cleanly() {
    capture_and_dissect(Driver::Dpdk);
}

/// The harness's own check: the error filter does catch a bad IPv4 checksum and a truncated
/// header (needs only tshark, no root).
#[test]
fn error_filter_catches_bad_packets() {
    if let Err(reason) = prerequisites_tshark() {
        skip_or_fail("tshark::error_filter_catches_bad_packets", &reason);
        return;
    }
    let eth = [[0x02u8; 6], [0x04; 6]].concat();
    let mut good_icmp = vec![8u8, 0, 0, 0, 0, 1, 0, 1];
    good_icmp.extend_from_slice(b"xxxxxxxx");
    let c = inet_checksum(&good_icmp);
    good_icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + good_icmp.len()) as u16;
    let mut ip = vec![0x45u8, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0xde, 0xad]); // wrong header checksum
    ip.extend_from_slice(&[198, 18, 1, 2, 198, 18, 2, 2]);
    let bad_checksum = [&eth[..], &[0x08, 0x00], &ip, &good_icmp].concat();
    let truncated = [&eth[..], &[0x08, 0x00], &ip[..10]].concat();

    let mut pcap = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        pcap.extend_from_slice(&v.to_le_bytes()); // magic, version 2.4, zone, sigfigs, snaplen, DLT_EN10MB
    }
    for frame in [&bad_checksum, &truncated] {
        let len = frame.len() as u32;
        for v in [0u32, 0, len, len] {
            pcap.extend_from_slice(&v.to_le_bytes());
        }
        pcap.extend_from_slice(frame);
    }
    let path = std::env::temp_dir().join(format!(
        "switchyard-tshark-self-{}.pcap",
        std::process::id()
    ));
    std::fs::write(&path, &pcap).expect("write pcap");
    let _cleanup = RemoveOnDrop(path.clone());
    let bad = frames(&path, ERROR_FILTER);
    assert_eq!(bad.len(), 2, "error filter missed a bad frame: {bad:?}");
}

fn prerequisites_tshark() -> Result<(), String> {
    let ok = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v tshark >/dev/null && command -v timeout >/dev/null",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err("missing tshark (scripts/install-deps.sh)".into())
    }
}

fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Removes a scratch file also when the test panics.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
