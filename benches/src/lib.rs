//! Shared set-up for Switchyard's benchmarks (see `benches/README.md`).
//!
//! [`RouterRig`] is a two-port router graph with its tables and neighbors, plus a fixed set of
//! frames and the buffers to carry them. [`RouterRig::forward_vector`] refills the same buffers
//! from the frames, runs one vector through the graph and takes the buffers back, so a loop
//! over it allocates nothing: what is measured is the graph, not the allocator.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use switchyard_dataplane::buffer::{
    HeapBuffer, PacketBuffer, DEFAULT_BUFFER_SIZE, DEFAULT_HEADROOM,
};
use switchyard_dataplane::graph::{Graph, Packet, VECTOR_SIZE};
use switchyard_dataplane::nodes::router_graph;
use switchyard_dataplane::tables::{Interface, RouteTarget, StaticRoute, Tables};
use switchyard_dataplane::wire::{
    checksum, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
};
use switchyard_dataplane::worker::WorkerState;

/// The router's port 0 (where the frames arrive).
pub const ROUTER_MAC0: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
/// The router's port 1 (where they leave).
pub const ROUTER_MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
/// The sender on port 0.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// The two ECMP gateways on port 1.
pub const GATEWAY_MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0, 0x53], [0x02, 0, 0, 0, 0, 0x54]];

/// Which address family the frames are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 UDP, 60-byte frames (64 bytes on the wire with the FCS).
    V4,
    /// IPv6 UDP, 64-byte frames (the smallest IPv6 UDP frame with a little payload).
    V6,
}

impl Family {
    /// Parses `v4` / `v6`.
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "v4" | "ipv4" => Some(Family::V4),
            "v6" | "ipv6" => Some(Family::V6),
            _ => None,
        }
    }
}

/// A router graph, its tables and state, frames to feed it and the buffers they go in.
pub struct RouterRig {
    /// The graph under test.
    pub graph: Graph<HeapBuffer>,
    /// Two interfaces, attached and local routes, a /16 (IPv4) and /48 (IPv6) via two ECMP
    /// gateways on port 1.
    pub tables: Tables,
    /// Permanent neighbors for the client and both gateways.
    pub state: WorkerState,
    /// The frames, one per packet of a vector, each with its own source port (and destination).
    pub frames: Vec<Vec<u8>>,
    /// Buffers not in the graph.
    free: Vec<HeapBuffer>,
    now: u64,
}

impl RouterRig {
    /// A rig whose vector is `count` frames of `family` (count at most [`VECTOR_SIZE`]).
    pub fn new(family: Family, count: usize) -> Self {
        let count = count.clamp(1, VECTOR_SIZE);
        let mut a = Interface::new("c0", ROUTER_MAC0, 1500);
        a.ipv4.push("198.18.1.1/24".parse().expect("literal"));
        a.ipv6.push("2001:db8:1::1/64".parse().expect("literal"));
        let mut b = Interface::new("s0", ROUTER_MAC1, 1500);
        b.ipv4.push("198.18.2.1/24".parse().expect("literal"));
        b.ipv6.push("2001:db8:2::1/64".parse().expect("literal"));
        let gw4: [IpAddr; 2] = [
            Ipv4Addr::new(198, 18, 2, 3).into(),
            Ipv4Addr::new(198, 18, 2, 4).into(),
        ];
        let gw6: [IpAddr; 2] = [
            "2001:db8:2::3".parse::<Ipv6Addr>().expect("literal").into(),
            "2001:db8:2::4".parse::<Ipv6Addr>().expect("literal").into(),
        ];
        let tables = Tables::build(
            1,
            vec![a, b],
            &[
                StaticRoute {
                    prefix: "198.19.0.0/16".parse().expect("literal"),
                    target: RouteTarget::Via(gw4.iter().map(|g| (Some(*g), None)).collect()),
                },
                StaticRoute {
                    prefix: "2001:db8:100::/48".parse().expect("literal"),
                    target: RouteTarget::Via(gw6.iter().map(|g| (Some(*g), None)).collect()),
                },
            ],
        )
        .expect("the rig's tables are valid");
        let mut state = WorkerState::default();
        for (gw, mac) in gw4.iter().chain(&gw6).zip(GATEWAY_MACS.iter().cycle()) {
            state.neighbors.insert_permanent(1, *gw, *mac);
        }
        state
            .neighbors
            .insert_permanent(0, Ipv4Addr::new(198, 18, 1, 2).into(), CLIENT_MAC);
        state.neighbors.insert_permanent(
            0,
            "2001:db8:1::2".parse::<Ipv6Addr>().expect("literal").into(),
            CLIENT_MAC,
        );
        let frames = (0..count).map(|i| frame(family, i as u16)).collect();
        RouterRig {
            graph: router_graph(2).expect("the router graph wires"),
            tables,
            state,
            frames,
            free: (0..count)
                .map(|_| HeapBuffer::new(DEFAULT_BUFFER_SIZE, DEFAULT_HEADROOM))
                .collect(),
            now: 1_000_000_000,
        }
    }

    /// Refills the buffers with the frames, forwards them as one vector and takes the buffers
    /// back. Returns how many were transmitted.
    #[inline]
    pub fn forward_vector(&mut self) -> usize {
        // As the router's loop does with a driver's burst: fill the buffers, then hand them
        // to the graph together. (Buffers beyond the frames, of which there are none, would
        // be dropped, as before.)
        for (frame, buf) in self.frames.iter().zip(self.free.iter_mut()) {
            buf.fill(frame);
        }
        self.free.truncate(self.frames.len());
        self.graph.receive_burst(&mut self.free, 0);
        self.graph.dispatch(&self.tables, &mut self.state, self.now);
        let mut sent = 0;
        for q in &mut self.graph.tx {
            sent += q.len();
            self.free.append(q);
        }
        self.free.append(&mut self.graph.dropped);
        self.free.extend(self.graph.punt.drain(..).map(|p| p.buf));
        sent
    }

    /// The harness alone, for comparison in the same run: refills the buffers exactly as
    /// [`RouterRig::forward_vector`] does, and wraps each in a received packet, without the graph.
    #[inline]
    pub fn refill_only(&mut self) -> usize {
        let mut n = 0;
        for (frame, buf) in self.frames.iter().zip(self.free.iter_mut()) {
            buf.fill(frame);
            let pkt = Packet::received(std::hint::black_box(&mut *buf), 0);
            n += usize::from(pkt.buf.len() > 0);
        }
        n
    }

    /// Forwards one vector and checks every frame left on port 1 towards one of the gateways,
    /// rewritten (TTL or hop limit one less), and that both gateways got some: the benchmark
    /// must measure forwarding, not dropping.
    pub fn check(&mut self) -> Result<(), String> {
        for (frame, mut buf) in self.frames.iter().zip(self.free.drain(..)) {
            buf.fill(frame);
            self.graph.receive(Packet::received(buf, 0));
        }
        self.graph.dispatch(&self.tables, &mut self.state, self.now);
        let n = self.frames.len();
        let result = (|| {
            if self.graph.tx[1].len() != n {
                return Err(format!(
                    "{} of {n} frames sent on port 1 ({} on port 0, {} dropped, {} punted); counters: {:?}",
                    self.graph.tx[1].len(),
                    self.graph.tx[0].len(),
                    self.graph.dropped.len(),
                    self.graph.punt.len(),
                    self.graph.counters()
                ));
            }
            let mut per_gateway = [0usize; 2];
            for (buf, frame) in self.graph.tx[1].iter().zip(&self.frames) {
                let out = buf.data();
                let g = GATEWAY_MACS
                    .iter()
                    .position(|m| out[..6] == m[..])
                    .ok_or("a frame went to an unknown MAC")?;
                per_gateway[g] += 1;
                if out[6..12] != ROUTER_MAC1 {
                    return Err("source MAC not rewritten".into());
                }
                let hop = if frame[12..14] == [0x08, 0x00] {
                    22
                } else {
                    21
                };
                if out[hop] + 1 != frame[hop] {
                    return Err("TTL / hop limit not decremented".into());
                }
            }
            if n >= 16 && per_gateway.contains(&0) {
                return Err(format!("ECMP did not spread flows: {per_gateway:?}"));
            }
            Ok(())
        })();
        for q in &mut self.graph.tx {
            self.free.append(q);
        }
        self.free.append(&mut self.graph.dropped);
        self.free.extend(self.graph.punt.drain(..).map(|p| p.buf));
        result
    }
}

/// Frame `i` of a vector: UDP from the client (source port 10000 + i) to a destination inside
/// the routed prefix that also depends on `i`.
pub fn frame(family: Family, i: u16) -> Vec<u8> {
    let sport = 10_000u16.wrapping_add(i);
    let dport = 5_001u16;
    match family {
        Family::V4 => udp4_frame(
            ROUTER_MAC0,
            CLIENT_MAC,
            Ipv4Addr::new(198, 18, 1, 2),
            Ipv4Addr::new(198, 19, (i >> 8) as u8, (i & 0xff) as u8 | 1),
            (sport, dport),
            i,
            60,
        ),
        Family::V6 => {
            let payload_len = 64 - 14 - 40 - 8;
            let udp = udp_datagram(sport, dport, payload_len);
            let dst = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i + 1);
            let repr = Ipv6Repr {
                src_addr: "2001:db8:1::2".parse().expect("literal"),
                dst_addr: dst,
                next_header: IpProtocol::UDP,
                payload_len: udp.len(),
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            };
            let mut ip = vec![0u8; 40 + udp.len()];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut ip[..]))
                .expect("the buffer fits the header");
            ip[40..].copy_from_slice(&udp);
            let pseudo = pseudo_sum(&ip[8..40], IpProtocol::UDP, udp.len());
            set_udp_checksum(&mut ip[40..], pseudo);
            ethernet(ROUTER_MAC0, CLIENT_MAC, 0x86dd, &ip)
        }
    }
}

/// An Ethernet/IPv4/UDP frame of `frame_len` bytes (at least 42) with correct checksums, TTL 64
/// and DF set.
pub fn udp4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (sport, dport): (u16, u16),
    ident: u16,
    frame_len: usize,
) -> Vec<u8> {
    let udp = udp_datagram(sport, dport, frame_len.max(42) - 14 - 20 - 8);
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: IpProtocol::UDP,
        payload_len: udp.len(),
        ttl: 64,
        dscp: 0,
        ecn: 0,
        ident,
        dont_fragment: true,
        more_fragments: false,
        fragment_offset: 0,
    };
    let mut ip = vec![0u8; 20 + udp.len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut ip[..]))
        .expect("the buffer fits the header");
    ip[20..].copy_from_slice(&udp);
    let pseudo = pseudo_sum(&ip[12..20], IpProtocol::UDP, udp.len());
    set_udp_checksum(&mut ip[20..], pseudo);
    ethernet(dst_mac, src_mac, 0x0800, &ip)
}

fn udp_datagram(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let len = 8 + payload_len;
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend((0..payload_len).map(|k| k as u8));
    u
}

/// One's-complement sum of the pseudo-header: the addresses, protocol and length.
fn pseudo_sum(addrs: &[u8], proto: IpProtocol, len: usize) -> Vec<u8> {
    let mut p = addrs.to_vec();
    p.extend_from_slice(&[0, u8::from(proto)]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

fn set_udp_checksum(udp: &mut [u8], mut pseudo: Vec<u8>) {
    pseudo.extend_from_slice(udp);
    let c = match checksum::checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The service proxy's rig: the router rig with one ClusterIP Service (198.51.100.10:80/TCP)
/// over ten backends on port 1, fed 64-byte TCP ACK segments from `count` client ports.
pub struct ServiceRig {
    /// The router rig with services in its tables.
    pub rig: RouterRig,
}

/// The Service address of [`ServiceRig`].
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

impl ServiceRig {
    /// A rig whose vector is `count` segments of as many connections.
    pub fn new(count: usize) -> Self {
        use std::sync::Arc;
        use switchyard_dataplane::services::Services;
        use switchyard_lb::service::{
            CompileOptions, Endpoint, Protocol, Service, ServiceName, ServicePort, ServiceTable,
        };
        let mut rig = RouterRig::new(Family::V4, count);
        let backends: Vec<Ipv4Addr> = (0..10).map(|i| Ipv4Addr::new(198, 18, 2, 10 + i)).collect();
        let service = Service {
            name: ServiceName {
                namespace: "bench".into(),
                name: "web".into(),
            },
            cluster_ips: vec![SERVICE_VIP.into()],
            external_ips: vec![],
            load_balancer_ips: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: backends
                    .iter()
                    .map(|b| Endpoint::ready((*b).into(), 8080, true))
                    .collect(),
            }],
            affinity_timeout_secs: None,
            external_traffic_policy: Default::default(),
            internal_traffic_policy: Default::default(),
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            forwarding: Default::default(),
        };
        let (table, errors) = ServiceTable::compile(&[service], &CompileOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        rig.tables.services = Some(Arc::new(Services {
            table,
            ..Services::default()
        }));
        rig.tables.version = 2;
        for b in &backends {
            rig.state
                .neighbors
                .insert_permanent(1, (*b).into(), GATEWAY_MACS[0]);
        }
        rig.frames = (0..rig.frames.len())
            .map(|i| tcp4_ack_frame(10_000 + i as u16))
            .collect();
        ServiceRig { rig }
    }

    /// Forwards one vector (see [`RouterRig::forward_vector`]).
    #[inline]
    pub fn forward_vector(&mut self) -> usize {
        self.rig.forward_vector()
    }

    /// Forgets every connection, so the next vector starts new ones.
    pub fn forget_connections(&mut self) -> usize {
        self.rig.state.conntrack.flush_matching(|_| true)
    }

    /// Forwards one vector and checks that every segment left on port 1 for a backend's port
    /// 8080, with the client's address kept.
    pub fn check(&mut self) -> Result<(), String> {
        let rig = &mut self.rig;
        for (frame, mut buf) in rig.frames.iter().zip(rig.free.drain(..)) {
            buf.fill(frame);
            rig.graph.receive(Packet::received(buf, 0));
        }
        rig.graph.dispatch(&rig.tables, &mut rig.state, rig.now);
        let n = rig.frames.len();
        let result = (|| {
            if rig.graph.tx[1].len() != n {
                return Err(format!(
                    "{} of {n} segments sent to backends; counters: {:?}",
                    rig.graph.tx[1].len(),
                    rig.graph.counters()
                ));
            }
            for buf in &rig.graph.tx[1] {
                let ip = Ipv4Packet::new_checked(&buf.data()[14..]).map_err(|e| e.to_string())?;
                if ip.src_addr() != Ipv4Addr::new(198, 18, 1, 2)
                    || ip.dst_addr().octets()[..3] != [198, 18, 2]
                    || ip.payload()[2..4] != 8080u16.to_be_bytes()
                {
                    return Err(format!(
                        "not translated: {} -> {}",
                        ip.src_addr(),
                        ip.dst_addr()
                    ));
                }
            }
            Ok(())
        })();
        for q in &mut rig.graph.tx {
            rig.free.append(q);
        }
        rig.free.append(&mut rig.graph.dropped);
        result
    }
}

/// A 64-byte (60 without FCS) Ethernet/IPv4/TCP ACK from the client's port `sport` to the
/// service, with correct checksums.
pub fn tcp4_ack_frame(sport: u16) -> Vec<u8> {
    tcp4_frame(Ipv4Addr::new(198, 18, 1, 2), SERVICE_VIP, (sport, 80), 0x10)
}

/// A 60-byte Ethernet frame carrying a 40-byte IPv4/TCP segment (no payload, then Ethernet
/// padding) from the client on the router's port 0, with the given addresses, ports and flags
/// (e.g. `0x02` for a SYN), correct checksums, TTL 64 and DF set.
pub fn tcp4_frame(src: Ipv4Addr, dst: Ipv4Addr, (sport, dport): (u16, u16), flags: u8) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    if flags & 0x10 != 0 {
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: IpProtocol::TCP,
        payload_len: tcp.len(),
        ttl: 64,
        dscp: 0,
        ecn: 0,
        ident: sport,
        dont_fragment: true,
        more_fragments: false,
        fragment_offset: 0,
    };
    let mut ip = vec![0u8; 20 + tcp.len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut ip[..]))
        .expect("the buffer fits the header");
    let mut pseudo = pseudo_sum(&ip[12..20], IpProtocol::TCP, tcp.len());
    pseudo.extend_from_slice(&tcp);
    let c = checksum::checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ip[20..].copy_from_slice(&tcp);
    let mut frame = ethernet(ROUTER_MAC0, CLIENT_MAC, 0x0800, &ip);
    frame.resize(60, 0); // Ethernet padding after the 40-byte IP packet
    frame
}

/// How long `build` takes alone: its input is made before the clock starts and what it builds
/// is dropped after the clock stops. The Maglev benches time both builds this way:
/// `MaglevTable` takes its backends by value where the paper's loop borrows them, and copying
/// the set in and freeing it with the table would time a thousand string allocations that are
/// the caller's, not the build's.
pub fn time_alone<I, O>(input: I, build: impl FnOnce(I) -> O) -> std::time::Duration {
    let start = std::time::Instant::now();
    let built = build(input);
    let elapsed = start.elapsed();
    drop(std::hint::black_box(built));
    elapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_is_forwarded_in_both_families() {
        for family in [Family::V4, Family::V6] {
            let mut rig = RouterRig::new(family, VECTOR_SIZE);
            rig.check().unwrap();
            // Buffers come back: a second round works the same.
            assert_eq!(rig.forward_vector(), VECTOR_SIZE);
            rig.check().unwrap();
        }
        assert_eq!(frame(Family::V4, 0).len(), 60);
        assert_eq!(frame(Family::V6, 0).len(), 64);
    }
}
