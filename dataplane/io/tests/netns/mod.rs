//! Test labs for the kernel-socket drivers: two network namespaces joined by a veth pair, made
//! per test with unique names and deleted on drop (also when the test fails).
//!
//! ```text
//!   ns A (driver side)                 ns B (kernel side)
//!   veth0 198.18.0.1/24  <── veth ──>  veth1 198.18.0.2/24
//! ```
//!
//! The driver under test is opened inside ns A from a thread that joined it with `setns`; sockets
//! keep the namespace they were created in, so the test thread can use them afterwards.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use switchyard_dataplane::{HeapBuffer, PacketBuffer};
use switchyard_io::{Driver, PortId};

pub const A_IP: [u8; 4] = [198, 18, 0, 1];
pub const B_IP: [u8; 4] = [198, 18, 0, 2];
/// An address nobody's kernel owns: the test answers for it through the driver.
pub const RESPONDER_IP: [u8; 4] = [198, 18, 0, 3];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether a missing capability must fail the test (CI) or may skip it.
pub fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and the test cannot run: {why}");
    }
    eprintln!("SKIP: {why}");
}

/// Runs a command, returning its output; panics with the command line if it cannot start.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and a veth pair between them.
pub struct Lab {
    pub ns_a: String,
    pub ns_b: String,
}

impl Lab {
    /// Builds the lab, or returns None (after `skip_or_fail`) when this machine cannot.
    pub fn new(tag: &str) -> Option<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip_or_fail("needs root for network namespaces");
            return None;
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Lab {
            ns_a: format!("sy-t-{tag}-{pid}-{n}a"),
            ns_b: format!("sy-t-{tag}-{pid}-{n}b"),
        };
        for ns in [&lab.ns_a, &lab.ns_b] {
            let out = run(&["ip", "netns", "add", ns]);
            if !out.status.success() {
                skip_or_fail(&format!(
                    "ip netns add failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                return None;
            }
        }
        // The pair is made inside the namespaces, so its names never exist in the root one.
        let out = run(&[
            "ip", "-n", &lab.ns_a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
            "netns", &lab.ns_b,
        ]);
        if !out.status.success() {
            skip_or_fail(&format!(
                "veth not available: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        for (ns, dev, ip) in [(&lab.ns_a, "veth0", A_IP), (&lab.ns_b, "veth1", B_IP)] {
            // No IPv6: keeps router solicitations and MLD reports out of the counts.
            must(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ]);
            must(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
            let cidr = format!("{}/24", dotted(ip));
            must(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        Some(lab)
    }

    /// Runs `args` inside namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A device's MAC address, read in its namespace.
    pub fn mac(&self, ns: &str, dev: &str) -> [u8; 6] {
        let out = self.exec(ns, &["cat", &format!("/sys/class/net/{dev}/address")]);
        // /sys in a netns-exec'd process shows that namespace's devices (ip remounts /sys).
        parse_mac(String::from_utf8_lossy(&out.stdout).trim())
            .unwrap_or_else(|| panic!("no MAC for {dev} in {ns}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair with them.
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

pub fn dotted(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for m in mac.iter_mut() {
        *m = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

/// Runs `f` on a thread that has joined network namespace `ns`, returning its result.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: the descriptor is a network namespace file held open by `file`; setns
            // changes only this (scoped, short-lived) thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// A plain packet socket on one interface, used as the kernel-side peer.
pub struct PeerSocket {
    fd: std::os::fd::OwnedFd,
}

impl PeerSocket {
    /// Opens a packet socket bound to `dev`; call inside the device's namespace.
    pub fn open(dev: &str) -> PeerSocket {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: plain libc calls with valid arguments; results are checked.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert_ne!(ifindex, 0, "no {dev}");
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(raw);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            PeerSocket { fd }
        }
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: frame is a live slice of the given length.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            rc,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Receives frames (incoming only) for up to `timeout`, returning those `keep` accepts.
    pub fn recv_until(
        &self,
        timeout: Duration,
        mut keep: impl FnMut(&[u8]) -> bool,
        want: usize,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; recvfrom writes at most its size.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and sll are live and their sizes are passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n <= 0 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..n as usize];
            if keep(frame) {
                got.push(frame.to_vec());
            }
        }
        got
    }
}

/// An Ethernet frame with an experimental EtherType (0x88b5) and a numbered payload.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(b"SYTEST");
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push(f.len() as u8);
    }
    f
}

/// The sequence number of a `test_frame` (untagged or tagged), if it is one.
pub fn test_frame_seq(f: &[u8]) -> Option<u32> {
    let body = if f.len() >= 16 && f[12..14] == [0x81, 0x00] {
        &f[16..]
    } else {
        f.get(12..)?
    };
    if body.len() < 12 || body[..2] != [0x88, 0xb5] || &body[2..8] != b"SYTEST" {
        return None;
    }
    Some(u32::from_be_bytes(body[8..12].try_into().ok()?))
}

pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The reply to `frame` if it is an ARP request for `ip` or an ICMP echo request to `ip`,
/// built by hand (this is the kernel peer's view of a router, without the graph).
pub fn answer(frame: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Option<Vec<u8>> {
    if frame.len() < 42 {
        return None;
    }
    let ethertype = [frame[12], frame[13]];
    if ethertype == [0x08, 0x06] {
        let arp = &frame[14..];
        // Ethernet/IPv4 request for our address.
        if arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || arp[24..28] != ip {
            return None;
        }
        let mut r = Vec::with_capacity(42);
        r.extend_from_slice(&frame[6..12]);
        r.extend_from_slice(&mac);
        r.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
        r.extend_from_slice(&mac);
        r.extend_from_slice(&ip);
        r.extend_from_slice(&arp[8..14]);
        r.extend_from_slice(&arp[14..18]);
        return Some(r);
    }
    if ethertype == [0x08, 0x00] {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        if frame[14] >> 4 != 4 || ihl < 20 || frame.len() < 14 + total || total < ihl + 8 {
            return None;
        }
        if frame[23] != 1 || frame[30..34] != ip || frame[14 + ihl] != 8 {
            return None;
        }
        let mut r = frame[..14 + total].to_vec();
        r[..6].copy_from_slice(&frame[6..12]);
        r[6..12].copy_from_slice(&mac);
        // Swap addresses, reset TTL, recompute the header checksum.
        r[26..30].copy_from_slice(&frame[30..34]);
        r[30..34].copy_from_slice(&frame[26..30]);
        r[22] = 64;
        r[24..26].copy_from_slice(&[0, 0]);
        let c = checksum(&r[14..14 + ihl]);
        r[24..26].copy_from_slice(&c.to_be_bytes());
        // Echo reply, ICMP checksum over the whole message.
        let icmp = 14 + ihl;
        r[icmp] = 0;
        r[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
        let c = checksum(&r[icmp..]);
        r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
        return Some(r);
    }
    None
}

/// Receives on `port` and answers ARP and ping for `ip` until `done` says stop or `limit`
/// passes. Returns (frames received, replies sent).
pub fn serve<D: Driver<Buffer = HeapBuffer>>(
    d: &mut D,
    port: PortId,
    mac: [u8; 6],
    ip: [u8; 4],
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> (usize, usize) {
    let deadline = Instant::now() + limit;
    let (mut rx, mut tx) = (0, 0);
    let mut bufs = Vec::new();
    let mut out = Vec::new();
    while Instant::now() < deadline && !done() {
        d.wait(Duration::from_millis(10));
        let n = d.rx_burst(port, &mut bufs, 32).expect("rx_burst");
        rx += n;
        for b in bufs.iter() {
            if let Some(reply) = answer(b.data(), mac, ip) {
                out.push(HeapBuffer::from_bytes(&reply));
            }
        }
        d.recycle(&mut bufs);
        if !out.is_empty() {
            tx += d.tx_burst(port, &mut out).expect("tx_burst");
        }
    }
    (rx, tx)
}
