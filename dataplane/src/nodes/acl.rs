//! `ip4-acl` and `ip6-acl`: NetworkPolicy, after the NAT node (so a packet to a Service is
//! judged by the pod it was sent to) and before the lookup.
//!
//! A packet is checked against the egress ACL of its source and the ingress ACL of its
//! destination, when these are local pods isolated in that direction. Policy is stateful:
//! a packet of a tracked connection (either way) passes without a rule check, an allowed
//! new flow is tracked so that its replies pass, and ICMP errors about a tracked flow pass.
//! A client's SYN on the tuples of a closed or closing TCP connection (port reuse) opens a
//! new connection: it is judged as one, under the policy in force when it comes. So is an
//! echo request the wrong way round for the ping it keys to (the pinged end's own ping with
//! the same identifier): only the echo reply is a reply. A TCP, UDP or SCTP packet without a
//! whole transport header has nothing to judge it by and is dropped when an ACL applies.
//! Traffic this node originates is allowed (the node's own traffic convention); a denied
//! new service connection is forgotten again.
//!
//! A new service connection is judged after DNAT but before SNAT: from the client's own
//! address to the backend it was sent to. Judging the masqueraded packet would take the
//! client pod out of its egress ACL and show the backend's ingress ACL this node's address,
//! which every isolated ACL admits. A pod reaching itself through a Service (hairpin) is
//! allowed, as its traffic to its own address is (the policy crate's convention).

use std::net::IpAddr;

use crate::buffer::PacketBuffer;
use crate::conntrack::{Direction as ConnDirection, FlowKey, Verdict, PROTO_ICMP, PROTO_ICMPV6};
use crate::graph::{Context, NextIndex, Node, Packet, DROP, HANDOFF};
use crate::nat::{self, Tuple};
use crate::policy::{AclDirection, AclTable, PolicyTables};
use crate::services::NOT_A_SERVICE;
use crate::{family_node_info, node_errors};

node_errors! {
    pub enum AclError {
        Established = ("established", "packets of tracked connections: passed without a rule check"),
        AllowedNew = ("allowed_new", "new flows allowed by a rule (and tracked)"),
        Unisolated = ("unisolated", "packets between pods not isolated in that direction"),
        IngressDenied = ("ingress_denied", "denied: no ingress rule of the destination pod allows it"),
        EgressDenied = ("egress_denied", "denied: no egress rule of the source pod allows it"),
        Related = ("related", "ICMP errors about tracked connections: passed"),
        SelfTraffic = ("self", "new connections of a pod to itself through a Service: allowed"),
        LinkScoped = ("link_scoped", "link-scoped IPv6 (neighbor and router discovery, MLD) with this node: not judged"),
        HandedOff = ("handed_off", "packets of connections another worker tracks: handed to it"),
        TrackFailed = ("track_failed", "allowed, but the connection table refused the flow: replies may be denied"),
        FragmentFollowed = ("fragment_followed", "non-first fragments judged by their first fragment's ports"),
        Unparsed = ("unparsed", "dropped: TCP, UDP or SCTP without a whole transport header, from or to an isolated pod"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
enum Next {
    Drop,
    Lookup,
    /// Another worker, the one tracking the packet's connection.
    Handoff,
    /// Virtual reassembly (a fragment the NAT node did not look at: no services).
    Vreass,
}

const NEXT4: &[&str] = &[DROP, "ip4-lookup", HANDOFF, "ip4-vreass"];
const NEXT6: &[&str] = &[DROP, "ip6-lookup", HANDOFF, "ip6-vreass"];

/// The ACL node of IPv4 (`V6 = false`) or IPv6.
#[derive(Debug, Default)]
pub struct IpAcl<const V6: bool>;

/// `ip4-acl`.
pub type Ip4Acl = IpAcl<false>;
/// `ip6-acl`.
pub type Ip6Acl = IpAcl<true>;

impl<B: PacketBuffer, const V6: bool> Node<B> for IpAcl<V6> {
    family_node_info!(AclError, "ip4-acl", NEXT4, "ip6-acl", NEXT6);

    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        let Some(policy) = cx.tables.policy.clone() else {
            next.fill(Next::Lookup as NextIndex);
            return;
        };
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            *n = judge(cx, &policy, pkt) as NextIndex;
        }
    }
}

/// The flow key policy tracks a packet under: ports for TCP/UDP/SCTP, the identifier for ICMP
/// echo, nothing for other protocols.
fn policy_key(ip: &[u8], t: &Tuple) -> FlowKey {
    let icmp = t.key.proto == PROTO_ICMP || t.key.proto == PROTO_ICMPV6;
    // A later fragment has no ICMP header; its key took its first fragment's identifier.
    if icmp && !t.later_fragment {
        if let Some(m) = ip.get(t.l4_offset..t.l4_offset + 8) {
            let echo = matches!(
                (t.key.proto, m[0]),
                (PROTO_ICMP, 0 | 8) | (PROTO_ICMPV6, 128 | 129)
            );
            if echo {
                let ident = u16::from_be_bytes([m[4], m[5]]);
                return FlowKey::icmp_echo(t.key.src, t.key.dst, ident);
            }
        }
    }
    t.key
}

/// For an ICMP or ICMPv6 echo (its first fragment, or whole): whether it is the request;
/// `None` for anything else.
#[inline]
fn echo_request(ip: &[u8], t: &Tuple) -> Option<bool> {
    if !(t.key.proto == PROTO_ICMP || t.key.proto == PROTO_ICMPV6) || t.later_fragment {
        return None;
    }
    match (t.key.proto, *ip.get(t.l4_offset)?) {
        (PROTO_ICMP, 8) | (PROTO_ICMPV6, 128) => Some(true),
        (PROTO_ICMP, 0) | (PROTO_ICMPV6, 129) => Some(false),
        _ => None,
    }
}

/// An IPv6 multicast or link-local address (IPv4 has ARP for what these carry).
fn is_link_scoped(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V6(a) => a.is_multicast() || a.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

fn judge<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    policy: &PolicyTables,
    pkt: &mut Packet<B>,
) -> Next {
    if pkt.meta.local_origin {
        return Next::Lookup;
    }
    if pkt.meta.conn.is_some() && !pkt.meta.conn_new {
        // The NAT node found the packet's connection, or the one its ICMP error is about.
        cx.error(if pkt.meta.conn_related {
            AclError::Related
        } else {
            AclError::Established
        });
        return Next::Lookup;
    }
    let Some(mut t) = Tuple::parse(pkt.buf.data()) else {
        // A first fragment too short for its transport header is for virtual reassembly
        // to drop.
        if super::vreass::unseen_fragment(pkt) {
            return Next::Vreass;
        }
        // Any other TCP, UDP or SCTP packet without a whole transport header (or IPv6
        // extension headers that do not parse) has no ports to judge or track it by. It
        // passes only where no ACL would judge it: an isolated pod gets no packet that a rule
        // did not admit, however malformed.
        if judged_by_addresses(policy, pkt.buf.data()) {
            cx.error(AclError::Unparsed);
            return Next::Drop;
        }
        return Next::Lookup;
    };
    // Without services the NAT node passes fragments on unseen: they go through virtual
    // reassembly from here (and come back through it). With services, NAT took up what
    // another worker handed over.
    if t.fragment {
        if !pkt.meta.vreass_done {
            return Next::Vreass;
        }
        if cx.tables.services.is_none() {
            super::vreass::take_up_handed(cx, pkt);
        }
    }
    // A later fragment is judged by its first fragment's ports: the same verdict. Ports not
    // known (a protocol virtual reassembly does not follow) leave it judged as port 0.
    if t.later_fragment && t.follow_first(pkt.buf.data(), &cx.state.virtual_reassembly) {
        cx.error(AclError::FragmentFollowed);
    }
    // Link-scoped IPv6 (neighbor and router discovery, MLD: multicast or link-local
    // addresses) only ever reaches this node, never another pod, and an isolated pod must
    // still find its gateway: not NetworkPolicy's to judge.
    if is_link_scoped(t.key.src) || is_link_scoped(t.key.dst) {
        cx.error(AclError::LinkScoped);
        return Next::Lookup;
    }
    let ends = judged_ends(cx, pkt, &t);
    if pkt.meta.conn_new && ends.src == ends.dst {
        cx.error(AclError::SelfTraffic);
        return Next::Lookup;
    }
    let egress = policy.acl_for(ends.src, AclDirection::Egress);
    let ingress = policy.acl_for(ends.dst, AclDirection::Ingress);
    let isolated = egress.is_some() || ingress.is_some();
    // The replies travel the other way. When an ACL judges that way (the destination's
    // egress, the source's ingress), an unisolated flow is still tracked, so its replies pass
    // as replies instead of being judged as new connections.
    let judged_back = policy.acl_for(ends.dst, AclDirection::Egress).is_some()
        || policy.acl_for(ends.src, AclDirection::Ingress).is_some();
    if !isolated && !judged_back {
        cx.error(AclError::Unisolated);
        return Next::Lookup;
    }
    let key = policy_key(pkt.buf.data(), &t);
    // An echo the wrong way round for the flow it keys to (a request from the pinged end
    // with the identifier of the other end's ping, or an unasked reply) is no reply: it is
    // judged as a new query and not tracked over that flow's entry.
    let mut wrong_way_echo = false;
    if !pkt.meta.conn_new {
        if let Some((id, dir)) = cx.state.conntrack.lookup(&key, cx.now).filter(|(_, dir)| {
            wrong_way_echo = echo_request(pkt.buf.data(), &t)
                .is_some_and(|request| request != (*dir == ConnDirection::Original));
            !wrong_way_echo
        }) {
            // A later fragment has no TCP flags: its first moved the state for it.
            let reopened = !t.later_fragment
                && cx
                    .state
                    .conntrack
                    .track(id, dir, t.tcp_flags, t.end as u32, cx.now)
                    == Verdict::Reopened;
            if !reopened {
                cx.error(AclError::Established);
                return Next::Lookup;
            }
            // A SYN reusing the tuples of a closed connection opens a new one, which only
            // the policy in force now may allow: it is judged below as new, on the entry
            // started over for it (forgotten if denied). Without services (the NAT node
            // would have found the entry first) the entry is untranslated: the packet's
            // own ends are the ones to judge.
            pkt.meta.conn = Some(id);
            pkt.meta.conn_new = true;
        } else if !wrong_way_echo {
            let quoted = nat::quoted_tuple(pkt.buf.data(), &t).map(|(q, _)| q.key);
            if let Some(quoted) = &quoted {
                if cx
                    .state
                    .conntrack
                    .lookup_icmp_error(quoted, cx.now)
                    .is_some()
                {
                    cx.error(AclError::Related);
                    return Next::Lookup;
                }
            }
            // Not tracked here: perhaps by another worker.
            let tracked_as = quoted.as_ref().map_or(key, FlowKey::for_icmp_error);
            if super::nat::tracked_elsewhere(cx, pkt, &tracked_as).is_some() {
                cx.error(AclError::HandedOff);
                return Next::Handoff;
            }
        }
    }
    // Flows are tracked from their first packet; a later fragment of one that is not
    // tracked only passes.
    let track = !pkt.meta.conn_new && !t.later_fragment && !wrong_way_echo;
    if !isolated {
        cx.error(AclError::Unisolated);
        if track {
            track_new(cx, &key, &t);
        }
        return Next::Lookup;
    }
    if let Err(denied) = rules_allow(cx, pkt, (egress, ingress), &ends, &t) {
        cx.error(denied);
        if let (Some(id), true) = (pkt.meta.conn, pkt.meta.conn_new) {
            cx.state.conntrack.remove(id);
        }
        return Next::Drop;
    }
    cx.error(AclError::AllowedNew);
    if track {
        track_new(cx, &key, &t);
    }
    Next::Lookup
}

/// An ACL that judges one end of a flow, with its index (for the hit counters).
type JudgingAcl<'a> = Option<(u32, &'a AclTable)>;

/// The rules of the source's egress ACL and the destination's ingress ACL (each where there
/// is one) for a new flow between `ends`: the first that admits nothing says why. Rule hits
/// are counted.
fn rules_allow<B>(
    cx: &mut Context<'_, B>,
    pkt: &Packet<B>,
    (egress, ingress): (JudgingAcl<'_>, JudgingAcl<'_>),
    ends: &Ends,
    t: &Tuple,
) -> Result<(), AclError> {
    // ICMP and other port-less protocols are matched as port 0 (rules with ports never match
    // them; rules without ports do).
    let port = ends.dst_port * u16::from(t.has_ports());
    for (acl, peer, denied) in [
        (egress, ends.dst, AclError::EgressDenied),
        (ingress, ends.src, AclError::IngressDenied),
    ] {
        let Some((index, table)) = acl else { continue };
        let matched = table.classifier.classify(peer, t.key.proto, port);
        if let Some(hits) = cx.state.acl_hits.get_mut(index as usize) {
            hits.record(matched);
        }
        if matched.is_none() {
            if pkt.meta.trace != 0 {
                cx.trace(&pkt.meta, format_args!("{denied:?} by {}", table.name));
            }
            return Err(denied);
        }
    }
    Ok(())
}

/// NetworkPolicy for the first packet of a Service flow that is sent on without a
/// translation of its own: in a GRE or IP-in-IP tunnel to its backend (the node the client's
/// packet reached), or delivered unchanged to a local backend (direct server return). It is
/// judged as a translated connection is, from the client's address to the backend's address
/// and port. `Ok(true)`: allowed, and an ACL judges one way or the other, so the flow is to
/// be tracked (its replies then pass as replies, its later packets without a rule check);
/// `Ok(false)`: no ACL judges it; `Err`: denied, and why (for the caller to count: this
/// is not the ACL node's). Traffic this node originates is allowed, as in [`judge`].
pub(crate) fn judge_unconnected<B>(
    cx: &mut Context<'_, B>,
    policy: &PolicyTables,
    pkt: &Packet<B>,
    t: &Tuple,
    backend: (IpAddr, u16),
) -> Result<bool, AclError> {
    if pkt.meta.local_origin {
        return Ok(false);
    }
    let ends = Ends {
        src: t.key.src,
        dst: backend.0,
        dst_port: backend.1,
    };
    if ends.src == ends.dst {
        return Ok(false);
    }
    let egress = policy.acl_for(ends.src, AclDirection::Egress);
    let ingress = policy.acl_for(ends.dst, AclDirection::Ingress);
    let judged_back = policy.acl_for(ends.dst, AclDirection::Egress).is_some()
        || policy.acl_for(ends.src, AclDirection::Ingress).is_some();
    if egress.is_none() && ingress.is_none() {
        return Ok(judged_back && !t.later_fragment);
    }
    rules_allow(cx, pkt, (egress, ingress), &ends, t)?;
    // A later fragment only passes: its first one made the entry, or was refused.
    Ok(!t.later_fragment)
}

/// Whether a packet whose transport header could not be read would meet an ACL: the
/// source's egress or the destination's ingress, by the addresses of its IP header (which
/// ip-input checked), link-scoped IPv6 left alone as for every packet. Off the common path.
#[cold]
fn judged_by_addresses(policy: &PolicyTables, ip: &[u8]) -> bool {
    let ends = match ip.first().map(|b| b >> 4) {
        Some(4) => ip.get(12..20).and_then(|a| {
            let src: [u8; 4] = a[..4].try_into().ok()?;
            let dst: [u8; 4] = a[4..].try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }),
        Some(6) => ip.get(8..40).and_then(|a| {
            let src: [u8; 16] = a[..16].try_into().ok()?;
            let dst: [u8; 16] = a[16..].try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }),
        _ => None,
    };
    // Without addresses there is nothing to pass it by: closed.
    let Some((src, dst)) = ends else {
        return true;
    };
    if is_link_scoped(src) || is_link_scoped(dst) {
        return false;
    }
    policy.acl_for(src, AclDirection::Egress).is_some()
        || policy.acl_for(dst, AclDirection::Ingress).is_some()
}

/// The addresses and destination port a packet is judged by.
struct Ends {
    src: IpAddr,
    dst: IpAddr,
    dst_port: u16,
}

/// The packet's own ends, except for a new service
/// connection: its client's address, before any SNAT, and the backend's address and port,
/// from the connection the NAT node just made.
fn judged_ends<B: PacketBuffer>(cx: &Context<'_, B>, pkt: &Packet<B>, t: &Tuple) -> Ends {
    let translated = match (pkt.meta.conn, pkt.meta.conn_new) {
        (Some(id), true) => cx.state.conntrack.get(id),
        _ => None,
    };
    match translated {
        Some(entry) => Ends {
            src: entry.original.src,
            dst: entry.reply.src,
            dst_port: entry.reply.src_port,
        },
        None => Ends {
            src: t.key.src,
            dst: t.key.dst,
            dst_port: t.key.dst_port,
        },
    }
}

/// Tracks an allowed new flow (no translation), so its replies pass.
fn track_new<B>(cx: &mut Context<'_, B>, key: &FlowKey, t: &Tuple) {
    let reply = key.reversed();
    match cx
        .state
        .conntrack
        .insert(*key, reply, NOT_A_SERVICE, cx.now)
    {
        Ok(id) => {
            cx.state.conntrack.track(
                id,
                crate::conntrack::Direction::Original,
                t.tcp_flags,
                t.end as u32,
                cx.now,
            );
        }
        Err(_) => cx.error(AclError::TrackFailed),
    }
}
