//! The reset a host owes a TCP segment for a port nobody listens on (RFC 9293 3.10.7.1): the
//! router has no TCP services of its own, so every segment to its addresses gets one.

use crate::wire::{IpAddrPair, TcpFlags, TcpPacket, TcpRepr};

/// The RST answering `segment` (sent between `addrs`), or `None` when the segment is itself a
/// reset, malformed, or fails its checksum: those are dropped silently.
pub(crate) fn reset_for(segment: &[u8], addrs: &IpAddrPair) -> Option<TcpRepr<'static>> {
    let tcp = TcpPacket::new_checked(segment).ok()?;
    let seg = TcpRepr::parse(&tcp, addrs).ok()?;
    if seg.flags.contains(TcpFlags::RST) {
        return None;
    }
    let (seq_number, ack_number, flags) = if seg.flags.contains(TcpFlags::ACK) {
        (seg.ack_number, 0, TcpFlags::RST)
    } else {
        // SYN and FIN each occupy one sequence number.
        let len = seg.payload.len() as u32
            + u32::from(seg.flags.contains(TcpFlags::SYN))
            + u32::from(seg.flags.contains(TcpFlags::FIN));
        (
            0,
            seg.seq_number.wrapping_add(len),
            TcpFlags::RST | TcpFlags::ACK,
        )
    };
    Some(TcpRepr {
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        seq_number,
        ack_number,
        flags,
        window_len: 0,
        urgent_ptr: 0,
        max_seg_size: None,
        payload: &[],
    })
}

/// The same pair seen from the other end.
pub(crate) fn reversed(addrs: &IpAddrPair) -> IpAddrPair {
    match *addrs {
        IpAddrPair::V4 { src, dst } => IpAddrPair::V4 { src: dst, dst: src },
        IpAddrPair::V6 { src, dst } => IpAddrPair::V6 { src: dst, dst: src },
    }
}
