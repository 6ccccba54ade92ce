//! `ip4-nat` and `ip6-nat`: the service proxy. Between ip-input and ip-lookup, so that what
//! the lookup sees is already the backend's address (or, for answers, the client's).
//!
//! For each TCP, UDP or SCTP packet:
//! 1. a tracked connection (either direction) is translated as its conntrack entry says (a
//!    client's SYN on the tuples of a closed one is a new connection: the old entry goes and
//!    the packet starts over, as below);
//! 2. otherwise, a packet to a Service frontend starts a connection: the frontend's backend
//!    set for this sender (internal or external, by the traffic policies) is picked from with
//!    Maglev over the flow hash (the client address alone with ClientIP affinity), the
//!    source is masqueraded when kube-proxy would, the connection is tracked with both
//!    tuples, and the packet is rewritten;
//! 3. a frontend with no usable endpoint refuses (ICMP port unreachable, for TCP too) or,
//!    when a Local traffic policy leaves no local endpoint, drops, as kube-proxy does;
//! 4. a new connection to a cluster IP on a port or protocol no Service has (TCP, UDP and
//!    SCTP on another port, pings and other ICMP queries, other protocols) is refused with an
//!    ICMP port unreachable, as kube-proxy's `cluster-ips-check` chain does;
//! 5. anything else passes untouched.
//!
//! ICMP errors about a tracked connection are translated back (outer header and the quoted
//! packet) so the client's stack matches them to its socket, and marked as related to it
//! (`meta.conn`, `meta.conn_related`) for NetworkPolicy.
//!
//! A fragment after the first carries no ports: it takes its first fragment's, which
//! `ip{4,6}-vreass` learned ([`crate::virtual_reassembly`]), and is translated as that
//! fragment's connection, addresses only.

use std::net::IpAddr;

use switchyard_lb::service::{
    BackendAddr, Forwarding, Frontend, FrontendEntry, FrontendKind, Target,
};

use super::tunnel::{self, TunnelKind};
use super::{flow_hash, vreass};
use crate::buffer::PacketBuffer;
use crate::conntrack::{
    Conntrack, ConntrackError, Direction, EntryId, FlowKey, Verdict, PROTO_ICMP, PROTO_ICMPV6,
};
use crate::fib::Route;
use crate::graph::{Context, Handoff, NextIndex, Node, Packet, DROP, HANDOFF};
use crate::nat::{self, Plain4, Translation, Tuple};
use crate::services::{Services, TUNNELLED};
use crate::tables::Tables;
use crate::{family_node_info, node_errors};

node_errors! {
    pub enum NatError {
        Translated = ("translated", "packets of tracked connections translated"),
        NewConnection = ("new_connection", "connections started to a service backend"),
        Masqueraded = ("masqueraded", "new connections source-NATed to this node"),
        Rejected = ("rejected", "to a service with no endpoints: refused"),
        NoLocalEndpoint = ("no_local_endpoint", "traffic policy Local and no local endpoint: dropped"),
        Invalid = ("invalid", "TCP segment that does not fit its connection's state: dropped"),
        TableFull = ("table_full", "connection table full: new connection dropped"),
        Clash = ("clash", "connection tuple already tracked: dropped"),
        PortRemapped = ("port_remapped", "new connections given another source port: the reply tuple was taken"),
        NoSnatPort = ("no_snat_port", "no free masquerade port or no address towards the backend: dropped"),
        Fragment = ("fragment", "non-first fragment whose first one's ports are not known: not translated"),
        FragmentFollowed = ("fragment_followed", "non-first fragments translated as their first fragment's connection"),
        FragmentWithoutConnection = ("fragment_without_connection", "non-first fragment to a service whose first fragment made no connection: dropped"),
        IcmpTranslated = ("icmp_translated", "ICMP errors about tracked connections translated"),
        Reopened = ("reopened", "TCP SYNs on the tuples of a closed or closing connection: its entry forgotten, the SYN taken as a new connection's"),
        Encapsulated = ("encapsulated", "packets sent to a backend in a GRE or IP-in-IP tunnel"),
        Decapsulated = ("decapsulated", "tunnel packets to this node unwrapped"),
        BadTunnel = ("bad_tunnel", "tunnel packet with a bad GRE header or inner packet: dropped"),
        TunnelEcnDrop = ("tunnel_ecn_drop", "tunnel packet marked Congestion Experienced around an inner packet that is not ECN-capable: dropped (RFC 6040 4.2)"),
        NoTunnelSource = ("no_tunnel_source", "no route or address towards a tunnel's far end: dropped"),
        TooBigForTunnel = ("too_big_for_tunnel", "too big once encapsulated and not to be fragmented: ICMP sent"),
        TtlExpired = ("ttl_expired", "TTL or hop limit expired before encapsulation: ICMP sent"),
        Delivered = ("delivered", "direct server return: sent to a local backend unchanged"),
        SourceDenied = ("source_denied", "new connection to a load-balancer IP from outside its loadBalancerSourceRanges: dropped"),
        HandedOff = ("handed_off", "packets of connections another worker tracks: handed to it"),
        HostToItself = ("host_to_itself", "the host's connection to a service address of its own whose endpoint is the host itself, with no cluster IP of the family to stand in for the host: dropped"),
        PolicyEgressDenied = ("policy_egress_denied", "new flow a Service tunnels or delivers untranslated, denied by the client's egress NetworkPolicy (judged as to the backend): dropped"),
        PolicyIngressDenied = ("policy_ingress_denied", "new flow a Service tunnels or delivers untranslated, denied by the backend's ingress NetworkPolicy: dropped"),
        PolicyTrackFailed = ("policy_track_failed", "a tunnelled or delivered flow NetworkPolicy allowed could not be tracked: its replies may be denied"),
        NoServicePort = ("no_service_port", "new connection to a cluster IP on a port or protocol no service has: refused (a later fragment: dropped)"),
    }
}

/// The node's next nodes, in the order both families list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
enum Next {
    Drop,
    /// The lookup of the node's own family.
    Lookup,
    /// The ICMP error node of the node's own family.
    Error,
    /// The lookup of the other family (a tunnel whose outer header is of the other family).
    OtherLookup,
    /// IPv4 input (a decapsulated IPv4 packet).
    Input4,
    /// IPv6 input (a decapsulated IPv6 packet).
    Input6,
    /// Rewrite of the node's own family, the next hop already chosen (direct server return).
    Rewrite,
    /// The ACL node of the node's own family (when NetworkPolicy is enforced).
    Acl,
    /// Another worker, the one tracking the packet's connection.
    Handoff,
    /// Virtual reassembly of the node's own family (a fragment, first seen here).
    Vreass,
}

const NEXT4: &[&str] = &[
    DROP,
    "ip4-lookup",
    "icmp4-error",
    "ip6-lookup",
    "ip4-input",
    "ip6-input",
    "ip4-rewrite",
    "ip4-acl",
    HANDOFF,
    "ip4-vreass",
];
const NEXT6: &[&str] = &[
    DROP,
    "ip6-lookup",
    "icmp6-error",
    "ip4-lookup",
    "ip4-input",
    "ip6-input",
    "ip6-rewrite",
    "ip6-acl",
    HANDOFF,
    "ip6-vreass",
];

/// The NAT node of IPv4 (`V6 = false`) or IPv6.
#[derive(Debug, Default)]
pub struct IpNat<const V6: bool>;

/// `ip4-nat`.
pub type Ip4Nat = IpNat<false>;
/// `ip6-nat`.
pub type Ip6Nat = IpNat<true>;

impl<B: PacketBuffer, const V6: bool> Node<B> for IpNat<V6> {
    family_node_info!(NatError, "ip4-nat", NEXT4, "ip6-nat", NEXT6);

    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        // With NetworkPolicy enforced, what would go to the lookup goes through the ACLs.
        let lookup = if cx.tables.policy.is_some() {
            Next::Acl
        } else {
            Next::Lookup
        };
        let Some(services) = cx.tables.services.clone() else {
            next.fill(lookup as NextIndex);
            return;
        };
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            let to = if V6 {
                translate(cx, &services, pkt)
            } else {
                translate_plain4(cx, &services, pkt)
            };
            *n = match to {
                Next::Lookup => lookup,
                other => other,
            } as NextIndex;
        }
    }
}

/// With several workers, for a packet this worker's connection table just missed under
/// `key`: the worker that tracks it, if another one does, with the packet marked for it
/// (`meta.handoff`). Only misses pay for the shared directory; packets already handed over
/// stay. The host's packets (from the punt device, `local_origin`) are handed on like the
/// others: all of them come in at the first worker, but a host-network backend's answer
/// belongs to the connection whichever worker took the client's first packet.
pub(crate) fn tracked_elsewhere<B>(
    cx: &mut Context<'_, B>,
    pkt: &mut Packet<B>,
    key: &FlowKey,
) -> Option<u16> {
    if !cx.state.conntrack.is_shared() || pkt.meta.handoff.is_set() {
        return None;
    }
    let owner = cx.state.conntrack.owner_elsewhere(key, cx.now)?;
    pkt.meta.handoff = Handoff::to(owner);
    if pkt.meta.trace != 0 {
        cx.trace(&pkt.meta, format_args!("{key}: tracked by worker {owner}"));
    }
    Some(owner)
}

/// [`translate`], with a short path for the common packet (IPv4 TCP or UDP without options
/// or fragments, see [`Plain4`]): one conntrack call finds and tracks its connection and hands
/// back the rewrite worked out when the connection started.
#[inline]
fn translate_plain4<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
) -> Next {
    let data = pkt.buf.data_mut();
    let Some(plain) = Plain4::parse(data) else {
        return translate(cx, services, pkt);
    };
    let len = plain.end as u32;
    let ct = &mut cx.state.conntrack;
    let Some((hit, translation)) = ct.lookup_track_v4(&plain.key, plain.tcp_flags, len, cx.now)
    else {
        return start_parsed(cx, services, pkt);
    };
    match hit.verdict {
        Verdict::Valid => {}
        Verdict::Invalid => return invalid_parsed(cx, services, pkt, (hit.id, hit.dir), hit.user),
        Verdict::Stale => return Next::Lookup,
        Verdict::Reopened => return reopen_parsed(cx, services, pkt, hit.id),
    }
    let translated = match translation {
        Translation::None => false,
        Translation::Ipv4(rewrite) => rewrite.apply(data, &plain),
        // A tunnelled flow's packets from the client (see `policy_admits_untranslated`).
        Translation::General if hit.user == TUNNELLED => {
            return follow_untranslated(cx, services, pkt, (hit.id, hit.dir), None)
        }
        Translation::General => rewrite_to_target(&cx.state.conntrack, data, hit.id, hit.dir),
    };
    pkt.meta.conn = Some(hit.id);
    cx.state
        .service_counters
        .packet(hit.user, hit.dir.index(), len);
    if translated {
        cx.error(NatError::Translated);
        if pkt.meta.trace != 0 {
            // The packet had the tuple it was found by.
            if let Some(entry) = cx.state.conntrack.get(hit.id) {
                let dir = hit.dir;
                let (key, to) = (*entry.key(dir), nat::target_tuple(entry, dir));
                cx.trace(&pkt.meta, format_args!("{key} {dir:?}: to {to}"));
            }
        }
    }
    Next::Lookup
}

// The short path's rare branches parse the packet again rather than keep its tuple: holding
// it for them costs the common packet stores and loads.

/// [`start`] for a packet the short path found no connection for.
#[cold]
fn start_parsed<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
) -> Next {
    match Tuple::parse(pkt.buf.data()) {
        Some(t) => start(cx, services, pkt, &t),
        None => Next::Lookup,
    }
}

/// A packet the short path found not to fit the TCP state of its connection (entry `id`,
/// travelling `dir`, caller value `user`): dropped, unless the entry is a tunnelled flow's.
/// Such a flow is often seen one way only (its backend answers the client directly), so its
/// TCP state does not judge its packets.
#[cold]
fn invalid_parsed<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    hit: (EntryId, Direction),
    user: u32,
) -> Next {
    if user == TUNNELLED {
        return follow_untranslated(cx, services, pkt, hit, None);
    }
    cx.error(NatError::Invalid);
    Next::Drop
}

/// [`reopen`] for a packet the short path found reopening entry `id`.
#[cold]
fn reopen_parsed<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    id: EntryId,
) -> Next {
    match Tuple::parse(pkt.buf.data()) {
        Some(t) => reopen(cx, services, pkt, id, &t),
        None => Next::Lookup,
    }
}

/// A client's SYN on the tuples of entry `id`, a closing or closed connection
/// ([`Verdict::Reopened`]): a new connection, which Linux conntrack (and so kube-proxy) would
/// make a new entry for, killing the old one. So here: the old entry goes and the packet
/// starts over, balanced among the Service's backends as they are now (the old backend may
/// have left it; TCP connections to a backend that left are kept until they close) and
/// judged by NetworkPolicy as a new connection (`meta.conn_new`). A tuple that is no longer
/// a Service's passes untranslated, as any packet to a plain address.
#[cold]
fn reopen<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    id: EntryId,
    t: &Tuple,
) -> Next {
    cx.state.conntrack.remove(id);
    cx.error(NatError::Reopened);
    if pkt.meta.trace != 0 {
        cx.trace(
            &pkt.meta,
            format_args!("{}: SYN on a closed connection, started anew", t.key),
        );
    }
    start(cx, services, pkt, t)
}

/// Rewrites the packet `ip` of entry `id`, travelling in `dir`, to its target tuple with the
/// general [`nat::rewrite`]; false if nothing was rewritten.
#[cold]
fn rewrite_to_target(ct: &Conntrack, ip: &mut [u8], id: EntryId, dir: Direction) -> bool {
    let (Some(entry), Some(t)) = (ct.get(id), Tuple::parse(ip)) else {
        return false;
    };
    nat::rewrite(ip, &t, &nat::target_tuple(entry, dir))
}

fn translate<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
) -> Next {
    let Some(mut t) = Tuple::parse(pkt.buf.data()) else {
        // A first fragment too short for its transport header is for virtual reassembly
        // to drop.
        if vreass::unseen_fragment(pkt) {
            return Next::Vreass;
        }
        return Next::Lookup;
    };
    // Fragments take the short path's miss, so they cost the packets that are not nothing:
    // each goes through virtual reassembly once, then comes back. One another worker
    // handed over went through that worker's.
    if t.fragment {
        if !pkt.meta.vreass_done {
            return Next::Vreass;
        }
        vreass::take_up_handed(cx, pkt);
    }
    if t.later_fragment && t.has_ports() {
        if !t.follow_first(pkt.buf.data(), &cx.state.virtual_reassembly) {
            cx.error(NatError::Fragment);
            return Next::Lookup;
        }
        return translate_later_fragment(cx, services, pkt, &t);
    }
    if matches!(
        t.key.proto,
        tunnel::PROTO_IPIP | tunnel::PROTO_IPV6 | tunnel::PROTO_GRE
    ) && services.accept_tunnels
        && !t.fragment
        && is_local(cx.tables, t.key.dst)
    {
        return decapsulate(cx, pkt, &t);
    }
    if !t.has_ports() {
        return icmp_error(cx, services, pkt, &t);
    }
    let len = t.end as u32;
    if let Some((id, dir)) = cx.state.conntrack.lookup(&t.key, cx.now) {
        match cx.state.conntrack.track(id, dir, t.tcp_flags, len, cx.now) {
            Verdict::Valid => {}
            Verdict::Invalid
                if cx
                    .state
                    .conntrack
                    .get(id)
                    .is_some_and(|e| e.user == TUNNELLED) => {}
            Verdict::Invalid => {
                cx.error(NatError::Invalid);
                return Next::Drop;
            }
            Verdict::Stale => return Next::Lookup,
            Verdict::Reopened => return reopen(cx, services, pkt, id, &t),
        }
        let Some(entry) = cx.state.conntrack.get(id) else {
            return Next::Lookup;
        };
        if entry.user == TUNNELLED {
            return follow_untranslated(cx, services, pkt, (id, dir), Some(&t));
        }
        pkt.meta.conn = Some(id);
        cx.state
            .service_counters
            .packet(entry.user, dir.index(), len);
        if nat::is_translated(entry) {
            let to = nat::target_tuple(entry, dir);
            if nat::rewrite(pkt.buf.data_mut(), &t, &to) {
                cx.error(NatError::Translated);
                if pkt.meta.trace != 0 {
                    cx.trace(&pkt.meta, format_args!("{} {dir:?}: to {to}", t.key));
                }
            }
        }
        return Next::Lookup;
    }
    start(cx, services, pkt, &t)
}

/// A fragment after the first, its ports filled in from the first: translated as the
/// connection its first fragment found or made, addresses only (the transport header and
/// its checksum are in the first fragment). It moves no connection state (it has no TCP
/// flags) and never starts a connection: a first fragment that made none was refused. What
/// tunnels or delivers without a connection (the edge role, direct server return) it
/// follows the same way as its first: Maglev picks the same backend for the same ports.
#[cold]
fn translate_later_fragment<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    t: &Tuple,
) -> Next {
    let Some((id, dir)) = cx.state.conntrack.lookup(&t.key, cx.now) else {
        if tracked_elsewhere(cx, pkt, &t.key).is_some() {
            cx.error(NatError::HandedOff);
            return Next::Handoff;
        }
        let dst_is_local = is_local(cx.tables, t.key.dst);
        let Some(frontend) = services.find(t.key.dst, t.key.proto, t.key.dst_port, dst_is_local)
        else {
            return no_frontend(cx, services, pkt, t);
        };
        if !sends_untranslated(frontend, pkt.meta.decapsulated) {
            cx.error(NatError::FragmentWithoutConnection);
            return Next::Drop;
        }
        return new_connection(cx, services, frontend, pkt, t);
    };
    let Some(entry) = cx.state.conntrack.get(id) else {
        return Next::Lookup;
    };
    if entry.user == TUNNELLED {
        return follow_untranslated(cx, services, pkt, (id, dir), Some(t));
    }
    pkt.meta.conn = Some(id);
    cx.state
        .service_counters
        .packet(entry.user, dir.index(), t.end as u32);
    if nat::is_translated(entry) {
        let to = nat::target_tuple(entry, dir);
        if nat::rewrite(pkt.buf.data_mut(), t, &to) {
            cx.error(NatError::FragmentFollowed);
            if pkt.meta.trace != 0 {
                cx.trace(
                    &pkt.meta,
                    format_args!("{} {dir:?} fragment: to {to}", t.key),
                );
            }
        }
    }
    Next::Lookup
}

/// A packet no connection tracks: starts one if it is to a Service frontend, else passes.
fn start<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    t: &Tuple,
) -> Next {
    if tracked_elsewhere(cx, pkt, &t.key).is_some() {
        cx.error(NatError::HandedOff);
        return Next::Handoff;
    }
    let dst_is_local = is_local(cx.tables, t.key.dst);
    let Some(frontend) = services.find(t.key.dst, t.key.proto, t.key.dst_port, dst_is_local) else {
        return no_frontend(cx, services, pkt, t);
    };
    new_connection(cx, services, frontend, pkt, t)
}

/// A packet that no connection tracks and no frontend takes: passes, unless it is to a
/// cluster IP. Then it is refused, as kube-proxy's `ip daddr @cluster-ips reject` for new
/// connections does (a bare `reject`: ICMP port unreachable whatever the protocol), so a
/// client of a port the Service does not have fails at once instead of its packet following
/// the default route off the node. The set is looked at only here, on the miss.
#[inline]
fn no_frontend<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    t: &Tuple,
) -> Next {
    if !services.is_cluster_ip(t.key.dst) {
        return Next::Lookup;
    }
    // A stray reset is no new connection (Linux conntrack calls it invalid, which the reject
    // rule's `ct state new` does not match), and no error is ever sent about one.
    if t.tcp_flags.is_some_and(|f| f & 0x04 != 0) {
        return Next::Lookup;
    }
    refuse_cluster_ip(cx, pkt, t)
}

/// [`no_frontend`] for a cluster IP. A fragment after the first is dropped: its first was
/// refused, and an ICMP error is never sent about a later fragment (RFC 1122 3.2.2).
#[cold]
fn refuse_cluster_ip<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    pkt: &mut Packet<B>,
    t: &Tuple,
) -> Next {
    cx.error(NatError::NoServicePort);
    if pkt.meta.trace != 0 {
        cx.trace(
            &pkt.meta,
            format_args!("{}: cluster IP, no service port: refused", t.key),
        );
    }
    if t.later_fragment {
        return Next::Drop;
    }
    port_unreachable(pkt, t)
}

fn is_local(tables: &Tables, addr: IpAddr) -> bool {
    matches!(tables.fib.lookup(addr), Some(Route::Local))
}

fn new_connection<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    frontend: &FrontendEntry,
    pkt: &mut Packet<B>,
    t: &Tuple,
) -> Next {
    let src = t.key.src;
    let from_cluster = pkt.meta.local_origin || services.is_cluster_source(src);
    let internal = match frontend.kind {
        FrontendKind::ClusterIp => from_cluster || services.cluster_cidrs.is_empty(),
        _ => from_cluster,
    };
    let target = if internal {
        &frontend.internal
    } else {
        &frontend.external
    };
    // A Service with no endpoints rejects every client, allowed or not: kube-proxy builds
    // the source-range firewall only in front of endpoints.
    if let Target::Reject = target {
        return reject(cx, pkt, t);
    }
    if let Some(ranges) = &frontend.source_ranges {
        if !ranges.iter().any(|net| net.contains(&src)) {
            cx.error(NatError::SourceDenied);
            if pkt.meta.trace != 0 {
                cx.trace(
                    &pkt.meta,
                    format_args!(
                        "{}: {src} not in loadBalancerSourceRanges",
                        frontend.service
                    ),
                );
            }
            return Next::Drop;
        }
    }
    let set = match target {
        Target::Backends(set) => set,
        Target::Reject => return reject(cx, pkt, t),
        Target::Drop => {
            cx.error(NatError::NoLocalEndpoint);
            return Next::Drop;
        }
    };
    // A new connection's backend by its whole tuple, as kube-proxy's random pick spreads
    // connections: a client that lost its affinity may land anywhere.
    let tuple_hash = u64::from(flow_hash(
        &addr_words(src),
        t.key.proto,
        u32::from(t.key.src_port) << 16 | u32::from(t.key.dst_port),
    ));
    let backend = match frontend.affinity_timeout_secs {
        Some(secs) => {
            // Per Service port, not per address: the same client reaching the port by its
            // cluster IP, a NodePort or an external address keeps one backend.
            let key = frontend.affinity_key;
            let timeout = u64::from(secs) * 1_000_000_000;
            let now = cx.now;
            cx.state.with_affinity(|affinity| {
                let kept = affinity.get(&key, src, timeout, now, |b| set.backends.contains(b));
                let chosen = kept.or_else(|| set.pick(tuple_hash));
                if let Some(b) = chosen {
                    affinity.record(key, src, b, now);
                }
                chosen
            })
        }
        None => set.pick(tuple_hash),
    };
    let Some(backend) = backend else {
        return reject(cx, pkt, t);
    };
    if sends_untranslated(frontend, pkt.meta.decapsulated) {
        if !policy_admits_untranslated(cx, pkt, t, backend) {
            return Next::Drop;
        }
        return match (frontend.forwarding, pkt.meta.decapsulated) {
            (Forwarding::DsrIpip, true) => deliver(cx, pkt, backend.addr),
            (Forwarding::Gre, _) => encapsulate(cx, pkt, t, TunnelKind::Gre, backend.addr),
            _ => encapsulate(cx, pkt, t, TunnelKind::Ipip, backend.addr),
        };
    }
    // kube-proxy's --masquerade-all covers cluster IPs only; NodePorts, external and
    // load-balancer IPs follow their externalTrafficPolicy, so Local keeps the client address.
    let masquerade = backend.addr == src
        || match frontend.kind {
            // By the source address alone, as kube-proxy's `ip saddr != <cluster CIDR>`: the
            // node's own traffic counts as internal for the traffic policies but is not a
            // pod's, so it is masqueraded too when there is a cluster CIDR to tell pods by.
            FrontendKind::ClusterIp => {
                services.masquerade_all
                    || (frontend.masquerade_external
                        && !services.cluster_cidrs.is_empty()
                        && !services.is_cluster_source(src))
            }
            _ if internal => frontend.masquerade_internal || pkt.meta.local_origin,
            _ => frontend.masquerade_external,
        };
    // A backend on one of this node's own addresses (a host-network endpoint here) is not
    // masqueraded: kube-proxy's DNAT in PREROUTING makes such a packet local, so it goes to
    // INPUT and never meets POSTROUTING's MASQUERADE, and the host sees the client's address.
    // The host answers through the punt path into this node, where the connection finds it.
    // The host reaching its own endpoint is the exception (see `snat`): it always is.
    let masquerade = if is_local(cx.tables, backend.addr) {
        pkt.meta.local_origin
    } else {
        masquerade
    };
    let (reply_dst, reply_dst_port) = if masquerade {
        match snat(
            cx,
            services,
            t,
            (backend.addr, backend.port),
            frontend.affinity_key.addr,
        ) {
            Some(a) => a,
            None => return Next::Drop,
        }
    } else {
        // Two services on one backend port, reached from the same client port, would share a
        // reply tuple (the first connection may linger in TIME_WAIT): give the later one another
        // source port, as Linux's NAT does on a tuple clash.
        match reply_port(cx, services, t, src, backend.addr, backend.port) {
            Some(port) => {
                if port != t.key.src_port {
                    cx.error(NatError::PortRemapped);
                }
                (src, port)
            }
            None => {
                cx.error(NatError::Clash);
                return Next::Drop;
            }
        }
    };
    let reply = FlowKey::new(
        backend.addr,
        reply_dst,
        t.key.proto,
        backend.port,
        reply_dst_port,
    );
    let slot = cx.state.service_counters.slot(
        Frontend {
            addr: t.key.dst,
            proto: t.key.proto,
            port: t.key.dst_port,
        },
        backend,
    );
    let ct = &mut cx.state.conntrack;
    let id = match ct.insert(t.key, reply, slot, cx.now) {
        Ok(id) => id,
        Err(ConntrackError::Full) => {
            cx.error(NatError::TableFull);
            return Next::Drop;
        }
        Err(_) => {
            cx.error(NatError::Clash);
            return Next::Drop;
        }
    };
    if ct.track(id, Direction::Original, t.tcp_flags, t.end as u32, cx.now) != Verdict::Valid {
        ct.remove(id);
        cx.error(NatError::Invalid);
        return Next::Drop;
    }
    cx.error(NatError::NewConnection);
    pkt.meta.conn = Some(id);
    pkt.meta.conn_new = true;
    cx.state.service_counters.connection(slot);
    cx.state.service_counters.packet(slot, 0, t.end as u32);
    if masquerade {
        cx.error(NatError::Masqueraded);
    }
    let to = reply.reversed();
    if pkt.meta.trace != 0 {
        cx.trace(
            &pkt.meta,
            format_args!("{}: new connection, now {to}", frontend.service),
        );
    }
    nat::rewrite(pkt.buf.data_mut(), t, &to);
    Next::Lookup
}

/// Whether a Service flow that goes on untranslated (tunnelled to its backend, or delivered
/// to it by direct server return) may: NetworkPolicy judges it as a translated connection,
/// from the client to the backend ([`acl::judge_unconnected`]). An allowed flow that an ACL
/// judges either way is tracked ([`TUNNELLED`]), so its replies pass the client's ingress ACL
/// and its later packets skip the rules; one already tracked (`meta.conn`) is not judged again.
///
/// [`acl::judge_unconnected`]: super::acl::judge_unconnected
fn policy_admits_untranslated<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    pkt: &mut Packet<B>,
    t: &Tuple,
    backend: BackendAddr,
) -> bool {
    let Some(policy) = cx.tables.policy.clone() else {
        return true;
    };
    if pkt.meta.conn.is_some() {
        return true;
    }
    match super::acl::judge_unconnected(cx, &policy, pkt, t, (backend.addr, backend.port)) {
        Ok(false) => true,
        Ok(true) => {
            let ct = &mut cx.state.conntrack;
            match ct.insert(t.key, t.key.reversed(), TUNNELLED, cx.now) {
                Ok(id) => {
                    ct.track(id, Direction::Original, t.tcp_flags, t.end as u32, cx.now);
                    // The client's packets leave the short path, to be sent on again.
                    ct.set_translation(id, Direction::Original, Translation::General);
                    pkt.meta.conn = Some(id);
                }
                Err(_) => cx.error(NatError::PolicyTrackFailed),
            }
            true
        }
        Err(denied) => {
            cx.error(match denied {
                super::acl::AclError::EgressDenied => NatError::PolicyEgressDenied,
                _ => NatError::PolicyIngressDenied,
            });
            false
        }
    }
}

/// A packet of a flow tracked as [`TUNNELLED`] (entry `id`, travelling `dir`): the client's
/// packets go the Service's way again, tunnelled or delivered to the backend Maglev picks
/// for their tuple (the one it picked for the first); the replies pass. When the address is
/// no longer such a Service's, the entry is forgotten and the packet starts over. `t`: the
/// packet's tuple when the caller has it (a later fragment's has its first one's ports).
#[cold]
#[inline(never)]
fn follow_untranslated<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    (id, dir): (EntryId, Direction),
    t: Option<&Tuple>,
) -> Next {
    pkt.meta.conn = Some(id);
    if dir == Direction::Reply {
        return Next::Lookup;
    }
    let Some(t) = t.copied().or_else(|| Tuple::parse(pkt.buf.data())) else {
        return Next::Lookup;
    };
    let dst_is_local = is_local(cx.tables, t.key.dst);
    match services.find(t.key.dst, t.key.proto, t.key.dst_port, dst_is_local) {
        Some(frontend) if sends_untranslated(frontend, pkt.meta.decapsulated) => {
            new_connection(cx, services, frontend, pkt, &t)
        }
        _ => {
            cx.state.conntrack.remove(id);
            pkt.meta.conn = None;
            start(cx, services, pkt, &t)
        }
    }
}

/// Whether `frontend` sends a packet on untranslated: tunnelled where it arrives first, or
/// delivered by direct server return once out of its tunnel (`decapsulated`).
fn sends_untranslated(frontend: &FrontendEntry, decapsulated: bool) -> bool {
    matches!(
        (frontend.forwarding, decapsulated),
        (Forwarding::Gre | Forwarding::Ipip, false) | (Forwarding::DsrIpip, _)
    )
}

/// An address as 32-bit words for [`flow_hash`].
fn addr_words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(a) => [u32::from(a), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            std::array::from_fn(|i| {
                u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// This node's address towards `backend` (for the host reaching itself, a Service address)
/// and a free port on it for the connection `t`; `None`, counted by why, when there is none.
/// `cluster_ip` is the Service's cluster IP of the connection's family.
fn snat<B>(
    cx: &mut Context<'_, B>,
    services: &Services,
    t: &Tuple,
    (backend, backend_port): (IpAddr, u16),
    cluster_ip: IpAddr,
) -> Option<(IpAddr, u16)> {
    let addr = match source_towards(cx.tables, backend) {
        Some(addr) => addr,
        // The host reaching a Service whose endpoint is the host itself (through the punt
        // device): both ends are the host's own addresses, so from either the host would
        // answer over its loopback and this node would never see the answer. A Service
        // address stands in for the client instead: the one the host connected to, or, for a
        // NodePort on the node's own address, the Service's cluster IP. The host's answer to
        // it takes the route into this node, which translates it back. (kube-proxy's DNAT in
        // OUTPUT needs no such help, the kernel un-translates on loopback.)
        None if is_local(cx.tables, backend) => {
            match [t.key.dst, cluster_ip]
                .into_iter()
                .find(|&a| !is_local(cx.tables, a) && a.is_ipv4() == backend.is_ipv4())
            {
                Some(stand_in) => stand_in,
                None => {
                    cx.error(NatError::HostToItself);
                    return None;
                }
            }
        }
        None => {
            cx.error(NatError::NoSnatPort);
            return None;
        }
    };
    let Some(port) = reply_port(cx, services, t, addr, backend, backend_port) else {
        cx.error(NatError::NoSnatPort);
        return None;
    };
    Some((addr, port))
}

/// A source port for a new connection from `src_addr` to `backend` whose reply tuple is not
/// tracked yet: the client's own port when it is free (as Linux keeps it), else one of the
/// masquerade range probed from a point that depends on the flow, so concurrent clients
/// spread over the range.
fn reply_port<B>(
    cx: &mut Context<'_, B>,
    services: &Services,
    t: &Tuple,
    src_addr: IpAddr,
    backend: IpAddr,
    backend_port: u16,
) -> Option<u16> {
    let (lo, hi) = (*services.snat_ports.start(), *services.snat_ports.end());
    // An empty range (lo > hi) offers no ports of its own.
    let span = hi.checked_sub(lo).map_or(0, |d| u32::from(d) + 1);
    let probes = if span == 0 { 0 } else { 64 };
    let start = u32::from(flow_hash(
        &addr_words(t.key.src),
        t.key.proto,
        u32::from(t.key.src_port),
    ) as u16);
    // The client's port is kept when free; the masqueraded address only hands out ports in
    // its range.
    let own =
        (src_addr == t.key.src || (lo..=hi).contains(&t.key.src_port)).then_some(t.key.src_port);
    own.into_iter()
        .chain((0..probes).map(|i| lo + ((start + i * 7919) % span) as u16))
        .find(|&port| {
            let reply = FlowKey::new(backend, src_addr, t.key.proto, backend_port, port);
            cx.state.conntrack.tuple_free(&reply, cx.now)
        })
}

/// The address this node sends from towards `dst`: the primary address of the interface the
/// route leaves by.
fn source_towards(tables: &Tables, dst: IpAddr) -> Option<IpAddr> {
    source_and_mtu_towards(tables, dst).map(|(a, _)| a)
}

/// [`source_towards`] and the MTU of that interface.
fn source_and_mtu_towards(tables: &Tables, dst: IpAddr) -> Option<(IpAddr, u16)> {
    let port = match tables.fib.lookup(dst)? {
        Route::Attached { port } => *port,
        Route::Via(hops) => hops.first()?.port,
        _ => return None,
    };
    let ifc = tables.interface(port)?;
    let addr = match dst {
        IpAddr::V4(_) => IpAddr::V4(ifc.primary_ipv4()?),
        IpAddr::V6(_) => IpAddr::V6(ifc.primary_ipv6()),
    };
    Some((addr, ifc.mtu))
}

/// Refuses a connection to a service without endpoints with an ICMP (ICMPv6) port
/// unreachable, whatever the protocol, TCP included: kube-proxy's rule is a bare `reject`
/// (nftables) or `-j REJECT` (iptables), which answers icmp(6)-port-unreachable, never a TCP
/// reset. A kernel TCP client sees ECONNREFUSED either way; on the wire the answer is an ICMP
/// error, rate-limited with the node's others as the kernel's are.
fn reject<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>, t: &Tuple) -> Next {
    cx.error(NatError::Rejected);
    port_unreachable(pkt, t)
}

/// Sends the packet to the ICMP error node to be answered with a port unreachable.
fn port_unreachable<B>(pkt: &mut Packet<B>, t: &Tuple) -> Next {
    pkt.meta.icmp_error = Some(match t.key.dst {
        IpAddr::V4(_) => (3, 3, 0),
        IpAddr::V6(_) => (1, 4, 0),
    });
    Next::Error
}

/// For a packet without ports (ICMP, other protocols): translates an ICMP error about a
/// tracked connection; refuses what opens a connection to a cluster IP (an ICMP query, or a
/// protocol Services have no ports in; see [`no_frontend`]); passes other packets on.
fn icmp_error<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    services: &Services,
    pkt: &mut Packet<B>,
    t: &Tuple,
) -> Next {
    let Some((quoted, at)) = nat::quoted_tuple(pkt.buf.data(), t) else {
        if opens_connection(pkt.buf.data(), t) {
            return no_frontend(cx, services, pkt, t);
        }
        return Next::Lookup;
    };
    let Some((id, dir)) = cx.state.conntrack.lookup_icmp_error(&quoted.key, cx.now) else {
        let key = FlowKey::for_icmp_error(&quoted.key);
        if tracked_elsewhere(cx, pkt, &key).is_some() {
            cx.error(NatError::HandedOff);
            return Next::Handoff;
        }
        return Next::Lookup;
    };
    let Some(entry) = cx.state.conntrack.get(id) else {
        return Next::Lookup;
    };
    // Related to the connection: NetworkPolicy passes it as such (once translated, its quote
    // is no longer one of the entry's tuples, so the ACL could not find the entry again), and
    // a translated one gets no ICMP redirect.
    pkt.meta.conn = Some(id);
    pkt.meta.conn_related = true;
    if !nat::is_translated(entry) {
        return Next::Lookup;
    }
    // The quoted packet travelled the other way; give it back its untranslated tuple.
    let quoted_to = match dir {
        Direction::Reply => entry.original,
        Direction::Original => entry.reply,
    };
    let outer_src = if t.key.src == quoted.key.dst {
        quoted_to.dst
    } else {
        t.key.src
    };
    if nat::rewrite_icmp_error(
        pkt.buf.data_mut(),
        t,
        &quoted,
        at,
        &quoted_to,
        outer_src,
        quoted_to.src,
    ) {
        cx.error(NatError::IcmpTranslated);
    }
    Next::Lookup
}

/// True if the packet `ip` (without ports, tuple `t`) would open a connection in Linux
/// conntrack: an ICMP query ([`nat::is_icmp_query`]), or any packet of a protocol other than
/// ICMP (tracked generically). A later fragment carries no ICMP header: it counts as one of
/// its datagram's.
fn opens_connection(ip: &[u8], t: &Tuple) -> bool {
    match t.key.proto {
        PROTO_ICMP | PROTO_ICMPV6 if !t.later_fragment => ip
            .get(t.l4_offset)
            .is_some_and(|&ty| nat::is_icmp_query(t.key.proto, ty)),
        _ => true,
    }
}

/// Unwraps a tunnel packet addressed to this node and sends the inner packet to the input
/// node of its family, marked as decapsulated.
fn decapsulate<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>, t: &Tuple) -> Next {
    match tunnel::decapsulate(&mut pkt.buf, t.key.proto, t.l4_offset, t.end) {
        Ok(inner_v6) => {
            cx.error(NatError::Decapsulated);
            pkt.meta.decapsulated = true;
            // The inner packet is a new one: the worker tracking its connection may be another,
            // and, a fragment, it has not been through virtual reassembly.
            pkt.meta.handoff = Handoff::NONE;
            pkt.meta.vreass_done = false;
            pkt.meta.local_origin = false;
            if pkt.meta.trace != 0 {
                cx.trace(&pkt.meta, format_args!("decapsulated from {}", t.key.src));
            }
            if inner_v6 {
                Next::Input6
            } else {
                Next::Input4
            }
        }
        Err(tunnel::DecapError::CongestedNotEct) => {
            cx.error(NatError::TunnelEcnDrop);
            Next::Drop
        }
        Err(_) => {
            cx.error(NatError::BadTunnel);
            Next::Drop
        }
    }
}

/// The edge role: sends the packet, unchanged but for its TTL, in a tunnel to `to` (a node
/// or pod that terminates it).
fn encapsulate<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    pkt: &mut Packet<B>,
    t: &Tuple,
    kind: TunnelKind,
    to: IpAddr,
) -> Next {
    let Some((src, mtu)) = source_and_mtu_towards(cx.tables, to) else {
        cx.error(NatError::NoTunnelSource);
        return Next::Drop;
    };
    let inner_v6 = t.key.dst.is_ipv6();
    let overhead = tunnel::overhead(kind, to);
    let data = pkt.buf.data_mut();
    let may_fragment = !inner_v6 && data.get(6).is_some_and(|b| b & 0x40 == 0);
    if t.end + overhead > usize::from(mtu) && !may_fragment {
        cx.error(NatError::TooBigForTunnel);
        let inner_mtu = u32::from(mtu).saturating_sub(overhead as u32);
        pkt.meta.icmp_error = Some(if inner_v6 {
            (2, 0, inner_mtu.max(1280))
        } else {
            (3, 4, inner_mtu)
        });
        return Next::Error;
    }
    // The tunnel is a hop: the inner TTL goes down here, as a router's would.
    if let Some(error) = tunnel::inner_hop(data, inner_v6) {
        cx.error(NatError::TtlExpired);
        pkt.meta.icmp_error = Some(error);
        return Next::Error;
    }
    let ident = cx.state.next_fragment_ident() as u16;
    if !tunnel::encapsulate(&mut pkt.buf, kind, src, to, ident) {
        cx.error(NatError::NoTunnelSource);
        return Next::Drop;
    }
    cx.error(NatError::Encapsulated);
    pkt.meta.local_origin = true;
    if pkt.meta.trace != 0 {
        cx.trace(&pkt.meta, format_args!("{kind:?} tunnel {src} -> {to}"));
    }
    if to.is_ipv6() == inner_v6 {
        Next::Lookup
    } else {
        Next::OtherLookup
    }
}

/// Direct server return, backend side: the packet goes to the local backend `to` as it is
/// (still addressed to the service, which the backend holds on a loopback interface); the
/// backend answers the client directly.
fn deliver<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>, to: IpAddr) -> Next {
    let Some(hop) = cx.tables.fib.lookup(to).and_then(|r| r.next_hop(to, || 0)) else {
        cx.error(NatError::NoTunnelSource);
        return Next::Drop;
    };
    super::set_next_hop(cx, pkt, to, hop);
    cx.error(NatError::Delivered);
    Next::Rewrite
}
