//! The router's graph nodes.
//!
//! ```text
//! ethernet-input ─┬─► arp-input ──────────────────────────────────────────────► tx
//!                 ├─► ip4-input ─► ip4-lookup ─┬─► ip4-rewrite ─┐
//!                 │                            ├─► ip4-local ──► (echo reply) ─► ip4-lookup
//!                 │                            └─► icmp4-error ────────────────► ip4-lookup
//!                 └─► ip6-input ─► ip6-lookup ─┬─► ip6-rewrite ─┴► neighbor-output ─► tx
//!                                              ├─► ip6-local (echo, ND) ───────► ip6-lookup / tx
//!                                              └─► icmp6-error ────────────────► ip6-lookup
//! ```
//!
//! Errors found while forwarding (TTL expired, no route, too big) send the packet to the ICMP
//! error node of its family, which rebuilds it in place into the ICMP message and routes that
//! back to the source. An unknown next hop makes `neighbor-output` send a request from a
//! second buffer and hold the packet until the answer arrives; that is the only allocation
//! outside start-up, and it is rationed to one request a second per neighbor.

use std::sync::Arc;

use switchyard_ipsec::crypto::{CryptoBackend, SoftwareBackend};

use crate::async_crypto::AsyncCrypto;
use crate::buffer::PacketBuffer;
use crate::graph::{Graph, GraphError, Node};
use crate::wire::{EtherType, EthernetAddress, EthernetFrame};

pub mod acl;
pub mod arp;
pub mod esp;
pub mod ethernet;
pub mod fragment;
pub mod host;
pub mod icmp4;
pub mod icmp6;
pub mod ip4;
pub mod ip4_options;
pub mod ip6;
pub mod ip6_options;
mod local_frag;
pub mod nat;
pub mod neighbor;
mod redirect;
mod tcp_reset;
pub mod tunnel;
pub mod vreass;

/// The router graph: every node above, entered at `ethernet-input`.
pub fn router_graph<B: PacketBuffer + 'static>(ports: usize) -> Result<Graph<B>, GraphError> {
    Graph::new(router_nodes(Vec::new()), "ethernet-input", ports)
}

/// The router's nodes in graph order, with `extra` after the lookups (whose next nodes they
/// are spliced in as).
fn router_nodes<B: PacketBuffer + 'static>(extra: Vec<Box<dyn Node<B>>>) -> Vec<Box<dyn Node<B>>> {
    let mut nodes: Vec<Box<dyn Node<B>>> = vec![
        Box::new(ethernet::EthernetInput),
        Box::new(arp::ArpInput),
        Box::new(ip4::Ip4Input),
        Box::new(ip6::Ip6Input),
        Box::new(vreass::Ip4Vreass::<B>::default()),
        Box::new(vreass::Ip6Vreass::<B>::default()),
        Box::new(nat::Ip4Nat::default()),
        Box::new(nat::Ip6Nat::default()),
        Box::new(acl::Ip4Acl::default()),
        Box::new(acl::Ip6Acl::default()),
        Box::new(ip4::Ip4Lookup),
        Box::new(ip6::Ip6Lookup),
    ];
    nodes.extend(extra);
    nodes.extend([
        Box::new(ip4::Ip4Local) as Box<dyn Node<B>>,
        Box::new(ip6::Ip6Local),
        Box::new(icmp4::Icmp4Error),
        Box::new(icmp6::Icmp6Error),
        Box::new(ip4::Ip4Rewrite),
        Box::new(ip6::Ip6Rewrite),
        Box::new(neighbor::NeighborOutput),
    ]);
    nodes
}

/// The router graph with IPsec: [`router_graph`]'s nodes plus `esp{4,6}-encrypt`, spliced
/// between each lookup and its rewrite, and `esp{4,6}-decrypt`, between each lookup and its
/// local node (see [`esp`]). With no SAs in the tables they pass every packet. ESP crypto runs
/// in software; [`ipsec_router_graph_with`] takes another backend.
pub fn ipsec_router_graph<B: PacketBuffer + 'static>(ports: usize) -> Result<Graph<B>, GraphError> {
    ipsec_router_graph_with(ports, Arc::new(SoftwareBackend::new()))
}

/// [`ipsec_router_graph`] with ESP crypto on `backend` (a DPDK cryptodev, say), which the four
/// ESP nodes share.
pub fn ipsec_router_graph_with<B: PacketBuffer + 'static>(
    ports: usize,
    backend: Arc<dyn CryptoBackend>,
) -> Result<Graph<B>, GraphError> {
    ipsec_router_graph_async(ports, backend, None)
}

/// [`ipsec_router_graph_with`], the ESP nodes handing their packets' crypto to `engine`
/// asynchronously when there is one (a cryptodev taking the packets' own mbufs): packets are
/// parked while the device works and re-enter the graph when [`Graph::dispatch`] finds them
/// done. `backend` still prepares the SAs' contexts and runs what the engine cannot take.
pub fn ipsec_router_graph_async<B: PacketBuffer + 'static>(
    ports: usize,
    backend: Arc<dyn CryptoBackend>,
    engine: Option<Arc<dyn AsyncCrypto<B>>>,
) -> Result<Graph<B>, GraphError> {
    // One outbound state for both encrypt nodes: an SA may carry both inner families.
    let outbound = esp::OutboundState::new(Arc::clone(&backend));
    let mut decrypt4 = esp::Esp4Decrypt::new(Arc::clone(&backend));
    let mut decrypt6 = esp::Esp6Decrypt::new(backend);
    let mut encrypt4 = esp::Esp4Encrypt::sharing(&outbound);
    let mut encrypt6 = esp::Esp6Encrypt::sharing(&outbound);
    if let Some(engine) = engine {
        decrypt4 = decrypt4.with_engine(Arc::clone(&engine));
        decrypt6 = decrypt6.with_engine(Arc::clone(&engine));
        encrypt4 = encrypt4.with_engine(Arc::clone(&engine));
        encrypt6 = encrypt6.with_engine(engine);
    }
    let nodes = router_nodes(vec![
        Box::new(decrypt4),
        Box::new(decrypt6),
        Box::new(encrypt4),
        Box::new(encrypt6),
    ]);
    let mut graph = Graph::new(nodes, "ethernet-input", ports)?;
    graph.splice("ip4-lookup", "ip4-rewrite", "esp4-encrypt")?;
    graph.splice("ip6-lookup", "ip6-rewrite", "esp6-encrypt")?;
    graph.splice("ip4-lookup", "ip4-local", "esp4-decrypt")?;
    graph.splice("ip6-lookup", "ip6-local", "esp6-decrypt")?;
    Ok(graph)
}

/// Length of an untagged Ethernet header.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// Length of an Ethernet header with one 802.1Q tag.
pub const VLAN_HEADER_LEN: usize = ETHERNET_HEADER_LEN + crate::wire::VlanTag::LEN;

/// Puts the Ethernet header of a frame out of `ifc` in front of the packet: from its MAC,
/// with its 802.1Q tag when it is a VLAN subinterface. False when there is no headroom.
#[inline]
pub(crate) fn push_ethernet<B: PacketBuffer>(
    buf: &mut B,
    dst: [u8; 6],
    ifc: &crate::tables::Interface,
    ethertype: EtherType,
) -> bool {
    if let Some(vlan) = ifc.vlan {
        return push_tagged(buf, &tagged_header(dst, ifc.mac, vlan.vid, ethertype));
    }
    if !buf.push_front(ETHERNET_HEADER_LEN) {
        return false;
    }
    // Written through the fixed-size header, so the three fields cost no bounds checks.
    let Some(header) = buf.data_mut().first_chunk_mut::<ETHERNET_HEADER_LEN>() else {
        return false;
    };
    let mut frame = EthernetFrame::new_unchecked(&mut header[..]);
    frame.set_dst_addr(EthernetAddress(dst));
    frame.set_src_addr(EthernetAddress(ifc.mac));
    frame.set_ethertype(ethertype);
    true
}

/// The Ethernet header of a frame on VLAN `vid`: an 802.1Q tag (TPID 0x8100, priority 0,
/// DEI 0) between the source address and the EtherType.
pub(crate) fn tagged_header(
    dst: [u8; 6],
    src: [u8; 6],
    vid: u16,
    ethertype: EtherType,
) -> [u8; VLAN_HEADER_LEN] {
    let mut header = [0u8; VLAN_HEADER_LEN];
    header[..6].copy_from_slice(&dst);
    header[6..12].copy_from_slice(&src);
    header[12..14].copy_from_slice(&EtherType::VLAN.0.to_be_bytes());
    let tag = crate::wire::VlanTag {
        pcp: 0,
        dei: false,
        vid,
    };
    header[14..16].copy_from_slice(&tag.tci().to_be_bytes());
    header[16..].copy_from_slice(&ethertype.0.to_be_bytes());
    header
}

/// Puts a tagged header in front of the packet; false, the packet untouched, without the
/// headroom. Out of line: only frames of VLAN subinterfaces take it.
#[cold]
#[inline(never)]
pub(crate) fn push_tagged<B: PacketBuffer>(buf: &mut B, header: &[u8; VLAN_HEADER_LEN]) -> bool {
    if !buf.push_front(VLAN_HEADER_LEN) {
        return false;
    }
    match buf.data_mut().first_chunk_mut::<VLAN_HEADER_LEN>() {
        Some(front) => {
            *front = *header;
            true
        }
        None => {
            buf.pull_front(VLAN_HEADER_LEN);
            false
        }
    }
}

/// Records the lookup's decision in the packet's metadata (and its trace).
#[inline]
pub(crate) fn set_next_hop<B>(
    cx: &mut crate::graph::Context<'_, B>,
    pkt: &mut crate::graph::Packet<B>,
    dst: std::net::IpAddr,
    hop: crate::fib::NextHop,
) {
    pkt.meta.tx_port = hop.port;
    pkt.meta.next_hop = hop.gateway;
    if pkt.meta.trace != 0 {
        trace_next_hop(cx, pkt, dst);
    }
}

/// The trace line saying which next hop the lookup chose for `dst` (already in the metadata).
#[cold]
#[inline(never)]
pub(crate) fn trace_next_hop<B>(
    cx: &mut crate::graph::Context<'_, B>,
    pkt: &crate::graph::Packet<B>,
    dst: std::net::IpAddr,
) {
    let via = pkt.meta.next_hop.unwrap_or(dst);
    cx.trace(
        &pkt.meta,
        format_args!("{dst}: next hop {via} on port {}", pkt.meta.tx_port),
    );
}

/// Replaces the packet's bytes with `len` bytes written by `write` (for messages built from
/// scratch in a recycled buffer, such as neighbor requests). False when the buffer is too small.
pub(crate) fn rebuild<B: PacketBuffer>(
    buf: &mut B,
    len: usize,
    write: impl FnOnce(&mut [u8]),
) -> bool {
    buf.truncate(0);
    if !buf.push_back(len) {
        return false;
    }
    let data = buf.data_mut();
    data.fill(0);
    write(data);
    true
}

/// The MTU of the port the previous packet of a vector left by, for `ip{4,6}-rewrite`: a
/// vector's packets leave by one or a few ports, so the interface is looked up when the port
/// changes rather than for every packet (as `ethernet-input` keeps the receiving port's MAC).
/// Kept for one vector only: the tables do not change within it.
pub(crate) struct PortMtu {
    /// The port, or `u32::MAX` (no port) before the first lookup.
    port: u32,
    mtu: u16,
}

impl PortMtu {
    pub(crate) fn new() -> Self {
        PortMtu {
            port: u32::MAX,
            mtu: 0,
        }
    }

    /// The MTU of `port`'s interface; `None` if there is no such interface.
    #[inline]
    pub(crate) fn get(&mut self, tables: &crate::tables::Tables, port: u16) -> Option<u16> {
        if self.port != u32::from(port) {
            self.mtu = tables.interface(port)?.mtu;
            self.port = u32::from(port);
        }
        Some(self.mtu)
    }
}

/// A 32-bit flow hash from addresses, protocol and ports: cheap, and good enough to spread
/// flows over ECMP paths (a multiply-xorshift mix, as in many hash tables).
#[inline]
pub fn flow_hash(words: &[u32], proto: u8, ports: u32) -> u32 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(proto);
    for &w in words {
        h = (h ^ u64::from(w)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 32;
    }
    h = (h ^ u64::from(ports)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 29)) as u32
}

/// The hash that spreads flows over equal-cost paths, from two 32-bit address words, the
/// protocol and the ports (or the IPv6 flow label): [`flow_hash`]'s multiply-xorshift rounds
/// with the two address words taken as one 64-bit word, so two multiplies instead of three on
/// the per-packet path. The xorshifts matter: without them the result would be linear in the
/// ports, and consecutive ports would take the same path in long runs.
#[inline]
pub fn ecmp_hash(a: u32, b: u32, proto: u8, ports: u32) -> u32 {
    let mut h = (u64::from(a) << 32 | u64::from(b)) ^ 0x9e37_79b9_7f4a_7c15 ^ u64::from(proto);
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 32;
    h = (h ^ u64::from(ports)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 29)) as u32
}

/// The flow hash of an IPv4 packet: addresses, protocol and, unless it is a fragment, ports.
/// Fragments hash on addresses alone so that a datagram's fragments take one path.
#[inline]
pub fn ipv4_flow_hash<T: AsRef<[u8]>>(ip: &crate::wire::Ipv4Packet<T>) -> u32 {
    let ports = if ip.is_fragment() {
        0
    } else {
        l4_ports(ip.protocol(), ip.payload())
    };
    ecmp_hash(
        u32::from(ip.src_addr()),
        u32::from(ip.dst_addr()),
        ip.protocol().0,
        ports,
    )
}

/// The flow hash of an IPv6 packet. Transit routers do not walk extension headers (RFC 8200
/// section 4): the flow label stands in for the ports (RFC 6437).
#[inline]
pub fn ipv6_flow_hash<T: AsRef<[u8]>>(ip: &crate::wire::Ipv6Packet<T>) -> u32 {
    let low = |a: std::net::Ipv6Addr| {
        let s = a.segments();
        (u32::from(s[4]) << 16 | u32::from(s[5])) ^ (u32::from(s[6]) << 16 | u32::from(s[7]))
    };
    ecmp_hash(
        low(ip.src_addr()),
        low(ip.dst_addr()),
        ip.next_header().0,
        ip.flow_label(),
    )
}

/// The ports of a TCP, UDP or SCTP header at the start of `l4`, as one word; 0 otherwise.
#[inline]
pub(crate) fn l4_ports(proto: crate::wire::IpProtocol, l4: &[u8]) -> u32 {
    use crate::wire::IpProtocol;
    match proto {
        IpProtocol::TCP | IpProtocol::UDP | IpProtocol::SCTP if l4.len() >= 4 => {
            u32::from_be_bytes([l4[0], l4[1], l4[2], l4[3]])
        }
        _ => 0,
    }
}

/// True if `datagram` is a UDP datagram whose length fits and whose checksum is right for
/// `addrs` (none at all is right only over IPv4): what this node checks before it answers UDP
/// to one of its addresses, since a datagram that fails is discarded silently (RFC 1122
/// 4.1.3.4, RFC 8200 8.1).
pub(crate) fn udp_ok(datagram: &[u8], addrs: &crate::wire::IpAddrPair) -> bool {
    crate::wire::UdpPacket::new_checked(datagram).is_ok_and(|u| u.verify_checksum(addrs))
}

/// True for TCP, UDP and SCTP, the protocols Services have ports in.
pub(crate) fn is_transport(proto: crate::wire::IpProtocol) -> bool {
    use crate::wire::IpProtocol;
    matches!(proto, IpProtocol::TCP | IpProtocol::UDP | IpProtocol::SCTP)
}

#[cfg(test)]
mod tests;
