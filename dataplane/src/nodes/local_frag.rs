//! Fragments addressed to the router: reassembled (see [`crate::reassembly`]), and a
//! reassembled echo request answered with an echo reply that is itself fragmented to the
//! path's MTU, so `ping -s 3000` to a router address works as it does to a host. Other
//! reassembled datagrams get what their unfragmented kind gets (UDP: port unreachable; an
//! unknown protocol: protocol unreachable, or for IPv6 a parameter problem).
//! `esp{4,6}-decrypt` reassembles ESP (raw, or in UDP to the NAT-T port) here too, before it
//! decrypts (RFC 4303 3.4.1), and passes on what turns out not to be ESP ([`pass_on`]).

use std::net::{IpAddr, Ipv6Addr};

use super::fragment::write_ipv6_fragment;
use crate::buffer::PacketBuffer;
use crate::graph::{Context, Meta, Packet};
use crate::reassembly::{Fragment, FragmentKey, Outcome, TIMEOUT_V4, TIMEOUT_V6};
use crate::wire::{
    checksum, Icmpv4Message, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    Ipv6Repr,
};

/// A reassembled datagram, ready to be answered.
pub(crate) struct Whole {
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
    /// Its identification (16 bits for IPv4).
    pub ident: u32,
}

/// What became of a fragment.
pub(crate) enum Reassembled {
    /// Held until its datagram completes.
    Queued,
    /// Dropped (overlap, too big, too many in progress).
    Dropped,
    /// The datagram it completed.
    Whole(Whole),
}

fn outcome(o: Outcome, ident: u32) -> Reassembled {
    match o {
        Outcome::Incomplete => Reassembled::Queued,
        Outcome::Dropped(_) => Reassembled::Dropped,
        Outcome::Complete { header, payload } => Reassembled::Whole(Whole {
            header,
            payload,
            ident,
        }),
    }
}

/// Adds an IPv4 fragment (the packet in `data`).
pub(crate) fn add_v4<B>(cx: &mut Context<'_, B>, data: &[u8]) -> Reassembled {
    let ip = Ipv4Packet::new_unchecked(data);
    let key = FragmentKey {
        src: IpAddr::V4(ip.src_addr()),
        dst: IpAddr::V4(ip.dst_addr()),
        id: u32::from(ip.ident()),
        protocol: ip.protocol().0,
    };
    let offset = usize::from(ip.fragment_offset());
    let frag = Fragment {
        offset,
        more: ip.more_fragments(),
        data: ip.payload(),
        header: (offset == 0).then(|| &data[..ip.header_len()]),
    };
    outcome(
        cx.state.reassembly.add(key, frag, TIMEOUT_V4, cx.now),
        key.id,
    )
}

/// Adds an IPv6 fragment whose fragment header starts at `at` (40 when it follows the fixed
/// header; further on behind hop-by-hop, destination options or routing headers, which the
/// caller has already acted on and which the reassembled datagram goes without).
pub(crate) fn add_v6<B>(cx: &mut Context<'_, B>, data: &[u8], at: usize) -> Reassembled {
    let ip = Ipv6Packet::new_unchecked(data);
    let Some(fh) = data.get(at..at + 8) else {
        return Reassembled::Dropped;
    };
    let word = u16::from_be_bytes([fh[2], fh[3]]);
    let key = FragmentKey {
        src: IpAddr::V6(ip.src_addr()),
        dst: IpAddr::V6(ip.dst_addr()),
        id: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
        protocol: 0,
    };
    let offset = usize::from(word & 0xfff8);
    let frag = Fragment {
        offset,
        more: word & 1 != 0,
        data: data
            .get(at + 8..ip.packet_len().min(data.len()))
            .unwrap_or_default(),
        // The first fragment's headers as they came, through its fragment header: what a
        // time exceeded (reassembly) quotes when the rest never comes (RFC 8200 4.5).
        header: (offset == 0).then_some(&data[..at + 8]),
    };
    match outcome(
        cx.state.reassembly.add(key, frag, TIMEOUT_V6, cx.now),
        key.id,
    ) {
        // The datagram goes on with the fixed header alone, naming the header that followed
        // the fragment header.
        Reassembled::Whole(mut whole) => {
            let next = whole.header[whole.header.len() - 8];
            whole.header.truncate(40);
            whole.header[6] = next;
            Reassembled::Whole(whole)
        }
        other => other,
    }
}

/// The reply to a reassembled IPv4 echo request, as (header, ICMP message); `None` when the
/// datagram is not one.
pub(crate) fn echo_reply_v4(whole: &Whole, ident: u16) -> Option<([u8; 20], Vec<u8>)> {
    // The header came from a checked packet, but its lengths describe that first fragment.
    if whole.header.len() < 20 {
        return None;
    }
    let req = Ipv4Packet::new_unchecked(&whole.header[..]);
    let msg = &whole.payload;
    if req.protocol() != IpProtocol::ICMP
        || msg.len() < 8
        || msg[0] != Icmpv4Message::ECHO_REQUEST.0
        || !checksum::verify(msg)
    {
        return None;
    }
    let mut reply = msg.clone();
    reply[0] = Icmpv4Message::ECHO_REPLY.0;
    reply[2..4].fill(0);
    let c = checksum::checksum(&reply);
    reply[2..4].copy_from_slice(&c.to_be_bytes());
    let mut header = [0u8; 20];
    let mut ip = Ipv4Packet::new_unchecked(&mut header[..]);
    ip.set_version_and_header_len(20);
    ip.set_ident(ident);
    ip.set_ttl(super::ip4::DEFAULT_TTL);
    ip.set_protocol(IpProtocol::ICMP);
    ip.set_src_addr(req.dst_addr());
    ip.set_dst_addr(req.src_addr());
    Some((header, reply))
}

/// Sends `payload` behind `header` (20 bytes, no options) as IPv4 fragments of at most `mtu`
/// bytes, in buffers from `like`'s pool: the first goes in `first`, the rest are spawned to
/// `next`. Returns false when buffers ran out.
pub(crate) fn send_v4<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    first: &mut Packet<B>,
    header: &[u8; 20],
    payload: &[u8],
    mtu: usize,
    next: u16,
) -> bool {
    let meta = own_meta(&first.meta);
    send_v4_as(cx, first, meta, header, payload, mtu, next)
}

/// [`send_v4`] with `meta` for the packets instead of this node's own.
fn send_v4_as<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    first: &mut Packet<B>,
    meta: Meta,
    header: &[u8; 20],
    payload: &[u8],
    mtu: usize,
    next: u16,
) -> bool {
    let room = (mtu.min(first.buf.len() + first.buf.tailroom()) - 20) / 8 * 8;
    let chunks = payload.len().div_ceil(room.max(8)).max(1);
    for k in 0..chunks {
        let start = k * room;
        let end = (start + room).min(payload.len());
        let write = |data: &mut [u8]| {
            data[..20].copy_from_slice(header);
            data[20..].copy_from_slice(&payload[start..end]);
            let mut ip = Ipv4Packet::new_unchecked(data);
            ip.set_total_len((20 + end - start) as u16);
            ip.set_fragment(false, end < payload.len(), start as u16);
            ip.fill_checksum();
        };
        if !emit(cx, first, meta, k == 0, 20 + end - start, write, next) {
            return false;
        }
    }
    true
}

/// The reply to a reassembled IPv6 echo request from `reply_from`: (fixed header, message).
/// `upper` is the datagram's upper-layer protocol and where its header starts in the payload
/// (past destination options).
pub(crate) fn echo_reply_v6(
    whole: &Whole,
    upper: (IpProtocol, usize),
    reply_from: Ipv6Addr,
) -> Option<(Ipv6Repr, Vec<u8>)> {
    if whole.header.len() < 40 {
        return None;
    }
    let req = Ipv6Packet::new_unchecked(&whole.header[..]);
    let msg = whole.payload.get(upper.1..)?;
    let (src, dst) = (req.src_addr(), req.dst_addr());
    if upper.0 != IpProtocol::ICMPV6
        || msg.len() < 8
        || msg[0] != Icmpv6Message::ECHO_REQUEST.0
        || !Icmpv6Packet::new_checked(msg).is_ok_and(|m| m.verify_checksum(&src, &dst))
    {
        return None;
    }
    let mut reply = msg.to_vec();
    let mut m = Icmpv6Packet::new_unchecked(&mut reply[..]);
    m.set_msg_type(Icmpv6Message::ECHO_REPLY);
    m.fill_checksum(&reply_from, &src);
    let repr = Ipv6Repr {
        src_addr: reply_from,
        dst_addr: src,
        next_header: IpProtocol::ICMPV6,
        payload_len: reply.len(),
        hop_limit: super::ip6::DEFAULT_HOP_LIMIT,
        traffic_class: 0,
        flow_label: 0,
    };
    Some((repr, reply))
}

/// Sends an IPv6 packet (`repr` and `payload`), with fragment headers when it does not fit
/// in `mtu` (RFC 8200 4.5; the source fragments, routers never do).
pub(crate) fn send_v6<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    first: &mut Packet<B>,
    repr: &Ipv6Repr,
    payload: &[u8],
    mtu: usize,
    ident: u32,
    next: u16,
) -> bool {
    let meta = own_meta(&first.meta);
    send_v6_as(cx, first, meta, repr, payload, mtu, ident, next)
}

/// [`send_v6`] with `meta` for the packets instead of this node's own.
#[allow(clippy::too_many_arguments)]
fn send_v6_as<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    first: &mut Packet<B>,
    meta: Meta,
    repr: &Ipv6Repr,
    payload: &[u8],
    mtu: usize,
    ident: u32,
    next: u16,
) -> bool {
    let capacity = mtu.min(first.buf.len() + first.buf.tailroom());
    if 40 + payload.len() <= capacity {
        let write = |data: &mut [u8]| {
            let _ = repr.emit(&mut Ipv6Packet::new_unchecked(&mut data[..40]));
            data[40..].copy_from_slice(payload);
        };
        return emit(cx, first, meta, true, 40 + payload.len(), write, next);
    }
    let room = capacity.saturating_sub(48) / 8 * 8;
    if room == 0 {
        return false;
    }
    let mut fixed = [0u8; 40];
    let _ = repr.emit(&mut Ipv6Packet::new_unchecked(&mut fixed[..]));
    let chunks = payload.len().div_ceil(room);
    for k in 0..chunks {
        let start = k * room;
        let end = (start + room).min(payload.len());
        let write = |data: &mut [u8]| {
            let more = end < payload.len();
            write_ipv6_fragment(data, &fixed, start, more, ident, &payload[start..end]);
        };
        if !emit(cx, first, meta, k == 0, 48 + end - start, write, next) {
            return false;
        }
    }
    true
}

/// The metadata of a packet this node makes in answer to one that came with `meta`.
fn own_meta(meta: &Meta) -> Meta {
    Meta {
        rx_port: meta.rx_port,
        local_origin: true,
        trace: meta.trace,
        ..Meta::default()
    }
}

/// Writes `len` bytes with `write` into the first packet's buffer or a new one, with `meta`
/// (not traced, in a new one); new ones are spawned to `next`.
#[allow(clippy::too_many_arguments)]
fn emit<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    first: &mut Packet<B>,
    meta: Meta,
    is_first: bool,
    len: usize,
    write: impl FnOnce(&mut [u8]),
    next: u16,
) -> bool {
    if is_first {
        first.meta = meta;
        return super::rebuild(&mut first.buf, len, write);
    }
    let Some(mut buf) = first.buf.alloc_sibling() else {
        return false;
    };
    if !super::rebuild(&mut buf, len, write) {
        return false;
    }
    cx.spawn(
        Packet {
            buf,
            meta: Meta { trace: 0, ..meta },
        },
        next,
    );
    true
}

/// Sends a reassembled datagram that turned out not to be for the node that reassembled it
/// on to `next` as it came, not as this node's own (it keeps `first`'s metadata): whole
/// when it fits the receiving link's MTU and a buffer, else in fragments again, of at most
/// that, with its own identification, so the next node (the host stack, through the punt
/// path) reassembles it once more. An IPv4 header's options are left out (none concerns
/// what is passed on: a UDP datagram to this node); an IPv6 datagram was reassembled from
/// fragments right behind the fixed header, so it has none. False when buffers ran out.
pub(crate) fn pass_on<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    first: &mut Packet<B>,
    whole: &Whole,
    next: u16,
) -> bool {
    let mtu = cx
        .tables
        .interface(first.meta.rx_port)
        .map_or(1280, |i| usize::from(i.mtu));
    let meta = first.meta;
    match whole.header.first().map(|b| b >> 4) {
        Some(4) => {
            let Some(&h) = whole.header.first_chunk::<20>() else {
                return false;
            };
            let mut header = h;
            header[0] = 0x45;
            // Room for at least one 8-byte block behind the header.
            send_v4_as(cx, first, meta, &header, &whole.payload, mtu.max(28), next)
        }
        Some(6) if whole.header.len() >= 40 => {
            let ip = Ipv6Packet::new_unchecked(&whole.header[..]);
            let repr = Ipv6Repr {
                src_addr: ip.src_addr(),
                dst_addr: ip.dst_addr(),
                next_header: ip.next_header(),
                payload_len: whole.payload.len(),
                hop_limit: ip.hop_limit(),
                traffic_class: ip.traffic_class(),
                flow_label: ip.flow_label(),
            };
            send_v6_as(
                cx,
                first,
                meta,
                &repr,
                &whole.payload,
                mtu.max(1280),
                whole.ident,
                next,
            )
        }
        _ => false,
    }
}

/// Puts a reassembled datagram back together in `pkt`'s buffer as one unfragmented packet
/// (lengths, fragment fields and the IPv4 checksum set as if it had come whole). False,
/// leaving the buffer as it was, when it does not fit: a buffer is as large as it is (no
/// chains of buffers here), so a datagram reassembled from fragments of a link with a
/// larger MTU, or past a buffer's size, cannot be handled whole.
pub(crate) fn rebuild_whole<B: PacketBuffer>(pkt: &mut Packet<B>, whole: &Whole) -> bool {
    let hlen = whole.header.len();
    let total = hlen + whole.payload.len();
    let v4 = match whole.header.first().map(|b| b >> 4) {
        Some(4) if hlen >= 20 && total <= usize::from(u16::MAX) => true,
        Some(6) if hlen == 40 && whole.payload.len() <= usize::from(u16::MAX) => false,
        _ => return false,
    };
    if total > pkt.buf.len() + pkt.buf.tailroom() {
        return false;
    }
    super::rebuild(&mut pkt.buf, total, |data| {
        data[..hlen].copy_from_slice(&whole.header);
        data[hlen..].copy_from_slice(&whole.payload);
        if v4 {
            let mut ip = Ipv4Packet::new_unchecked(data);
            ip.set_total_len(total as u16);
            let df = ip.dont_fragment();
            ip.set_fragment(df, false, 0);
            ip.fill_checksum();
        } else {
            Ipv6Packet::new_unchecked(data).set_payload_len(whole.payload.len() as u16);
        }
    })
}

/// A fresh identification for this node's own fragments.
pub(crate) fn next_ident<B>(cx: &mut Context<'_, B>) -> u32 {
    cx.state.next_fragment_ident()
}
