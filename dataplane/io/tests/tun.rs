//! The TUN device against the kernel of a namespace of the test's own: addresses and routes
//! set through netlink, packets both ways.

mod netns;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use netns::{in_netns, Lab};
use switchyard_io::tun::Tun;

const TUN: &str = "sytun0";
const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 98, 7);

fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = netns::checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    p.extend_from_slice(payload);
    p
}

#[test]
fn tun_carries_packets_between_us_and_the_kernel() {
    let Some(lab) = Lab::new("tun") else { return };
    let (mut tun, sock) = in_netns(&lab.ns_a, || {
        let tun = Tun::create(TUN).expect("create tun");
        tun.no_ipv6_link_local().expect("addr_gen_mode");
        // The lab turns IPv6 off for new devices; this device wants it.
        tun.enable_ipv6().expect("enable IPv6 on the tun");
        tun.set_mtu(1400).expect("mtu");
        tun.set_up().expect("up");
        tun.add_host_address(IpAddr::V4(HOST)).expect("v4 address");
        tun.add_host_address("2001:db8:99::1".parse().unwrap())
            .expect("v6 address");
        tun.add_route("198.18.98.0".parse().unwrap(), 24)
            .expect("v4 route");
        tun.add_route("::".parse().unwrap(), 0).expect("v6 default");
        // The same route twice is refused, not replaced.
        assert!(tun.add_route("198.18.98.0".parse().unwrap(), 24).is_err());
        let sock = UdpSocket::bind((HOST, 5000)).expect("bind");
        (tun, sock)
    });
    let addrs = String::from_utf8_lossy(&lab.exec(&lab.ns_a, &["ip", "addr", "show", TUN]).stdout)
        .into_owned();
    assert!(addrs.contains("inet 198.18.99.1/32"), "{addrs}");
    assert!(addrs.contains("inet6 2001:db8:99::1/128"), "{addrs}");
    assert!(!addrs.contains("fe80"), "no link-local wanted: {addrs}");
    assert!(
        addrs.contains("mtu 1400") && addrs.contains(",UP"),
        "{addrs}"
    );
    let routes = String::from_utf8_lossy(
        &lab.exec(&lab.ns_a, &["ip", "-6", "route", "show", "default"])
            .stdout,
    )
    .into_owned();
    assert!(routes.contains(&format!("dev {TUN}")), "{routes}");

    // Kernel → tun.
    sock.send_to(b"hello", (PEER, 6000)).expect("send");
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    let pkt = loop {
        if let Some(n) = tun.read_into(&mut buf).expect("read") {
            // Skip anything else the kernel may send (there should be nothing).
            if buf[0] >> 4 == 4 && buf[9] == 17 {
                break buf[..n].to_vec();
            }
        }
        assert!(Instant::now() < deadline, "nothing read from the tun");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(&pkt[12..16], &HOST.octets());
    assert_eq!(&pkt[16..20], &PEER.octets());
    assert_eq!(&pkt[28..], b"hello");

    // Tun → kernel.
    tun.write(&ipv4_udp(PEER, HOST, 6000, 5000, b"world"))
        .expect("write");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (n, from) = sock.recv_from(&mut buf).expect("the kernel delivered it");
    assert_eq!(&buf[..n], b"world");
    assert_eq!(from, (PEER, 6000).into());
    // Nothing waiting: None, not an error.
    while tun.read_into(&mut buf).expect("read").is_some() {}
    assert_eq!(tun.read_into(&mut buf).expect("read"), None);
}

/// A UDP/IPv6 datagram from `src` to `dst` with its checksum (which IPv6 requires).
fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // The pseudo-header: addresses, length, next header; then the datagram.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&udp);
    let c = netns::checksum(&pseudo);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&udp);
    p
}

/// A device with a link's link-local address (the punt path's device of one port): the kernel
/// takes a packet to that address from the device, and a socket's answer to the sender's
/// link-local address scoped to the device comes out of it; nothing else holds a link-local
/// address or route for it.
#[test]
fn a_links_device_carries_its_link_local_address() {
    let Some(lab) = Lab::new("tunll") else { return };
    let me: Ipv6Addr = "fe80::ff:fe00:10".parse().unwrap();
    let peer: Ipv6Addr = "fe80::c1".parse().unwrap();
    let (mut tun, sock) = in_netns(&lab.ns_a, || {
        let tun = Tun::create("sytun0-0").expect("create tun");
        tun.no_ipv6_link_local().expect("addr_gen_mode");
        tun.enable_ipv6().expect("enable IPv6 on the tun");
        tun.set_up().expect("up");
        tun.add_link_local_address(me).expect("link-local address");
        let scope = tun.index();
        let sock = UdpSocket::bind(SocketAddrV6::new(me, 5001, 0, scope)).expect("bind");
        (tun, sock)
    });
    let addrs = String::from_utf8_lossy(
        &lab.exec(&lab.ns_a, &["ip", "-6", "addr", "show", "sytun0-0"])
            .stdout,
    )
    .into_owned();
    assert!(
        addrs.contains(&format!("inet6 {me}/64 scope link")),
        "{addrs}"
    );
    assert_eq!(addrs.matches("inet6").count(), 1, "{addrs}");
    let routes = String::from_utf8_lossy(
        &lab.exec(&lab.ns_a, &["ip", "-6", "route", "show", "dev", "sytun0-0"])
            .stdout,
    )
    .into_owned();
    assert!(routes.contains("fe80::/64"), "{routes}");

    // Tun → kernel: to our link-local address, taken by the socket bound to it.
    tun.write(&ipv6_udp(peer, me, 6001, 5001, b"hello"))
        .expect("write");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("the kernel delivered it");
    assert_eq!(&buf[..n], b"hello");
    let SocketAddr::V6(from) = from else {
        panic!("{from}")
    };
    assert_eq!(
        (*from.ip(), from.port(), from.scope_id()),
        (peer, 6001, tun.index())
    );

    // Kernel → tun: the answer, from our link-local address to the peer's.
    sock.send_to(b"world", from).expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pkt = loop {
        if let Some(n) = tun.read_into(&mut buf).expect("read") {
            // Skip what else the kernel sends out of a link (MLD reports, solicitations).
            if buf[0] >> 4 == 6 && buf[6] == 17 {
                break buf[..n].to_vec();
            }
        }
        assert!(Instant::now() < deadline, "nothing read from the tun");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(&pkt[8..24], &me.octets());
    assert_eq!(&pkt[24..40], &peer.octets());
    assert_eq!(&pkt[48..], b"world");
}
