//! IPv6 fixed header (RFC 8200 section 3) and a bounded extension-header walker.

use std::net::Ipv6Addr;

use super::bytes::{read_array, read_u16, read_u32, write_u16, write_u32, Field};
use super::error::WireError;
use super::ip::IpProtocol;

/// The most extension headers the walker follows before giving up. Real traffic carries at
/// most a handful (RFC 8200 section 4.1 recommends an order that yields at most six); a bound
/// keeps the per-packet cost constant whatever an attacker sends.
pub const MAX_EXTENSION_HEADERS: usize = 8;

mod field {
    use super::Field;
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = 40;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the fixed header, version 6 and that the declared payload fits in the buffer.
    /// Jumbograms (payload length 0 with a Jumbo Payload option) are not supported: a zero
    /// payload length reads as an empty payload.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 6 {
            return Err(WireError::BadVersion);
        }
        if Self::HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn ver_tc_flow(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read_array::<16>(self.buffer.as_ref(), field::SRC))
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read_array::<16>(self.buffer.as_ref(), field::DST))
    }

    /// Bytes after the fixed header, up to the payload length (extension headers included).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..self.packet_len()]
    }

    /// Fixed header plus payload, without link-layer padding.
    #[inline]
    pub fn packet_len(&self) -> usize {
        Self::HEADER_LEN + usize::from(self.payload_len())
    }

    /// Walks the extension headers to the upper-layer header; see [`Ipv6ExtensionHeaders`].
    ///
    /// Walked: hop-by-hop options (only as the first header, else
    /// [`WireError::HopByHopNotFirst`]), routing, fragment, destination options and AH. Anything
    /// else ends the walk and is reported as the upper-layer protocol, including ESP (its
    /// payload is encrypted), No Next Header, and extension headers this walker does not parse
    /// (Mobility, HIP, Shim6): the caller decides, typically via
    /// [`IpProtocol::is_ipv6_extension_header`], whether to send a Parameter Problem.
    ///
    /// A fragment header with a non-zero offset also ends the walk, because what follows it is
    /// the middle of the original datagram rather than a header.
    pub fn extension_headers(&self) -> Result<Ipv6ExtensionHeaders, WireError> {
        walk(self.buffer.as_ref(), self.packet_len(), &mut None)
    }

    /// When the chain has a hop-by-hop header anywhere but first
    /// ([`WireError::HopByHopNotFirst`]): the offset of the Next Header field that names it,
    /// the pointer of the Parameter Problem owed (RFC 8200 section 4, code 1).
    pub fn misplaced_hop_by_hop(&self) -> Option<usize> {
        let mut at = None;
        let walked = walk(self.buffer.as_ref(), self.packet_len(), &mut at);
        at.filter(|_| walked == Err(WireError::HopByHopNotFirst))
    }
}

/// The result of walking a packet's extension-header chain. Offsets count from the first byte
/// of the IPv6 header, so they index straight into the packet buffer and are the values an
/// ICMPv6 Parameter Problem pointer needs (RFC 4443 section 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6ExtensionHeaders {
    /// The protocol of the first header the walker did not step over.
    pub upper_protocol: IpProtocol,
    /// Where that header starts (equal to the packet length for No Next Header at the end).
    pub upper_offset: usize,
    /// Where the Next Header byte naming `upper_protocol` sits: 6 when there are no extension
    /// headers. This is the pointer for "unrecognized Next Header type" (code 1).
    pub next_header_offset: usize,
    /// The fragment header, if one was seen.
    pub fragment: Option<Ipv6FragmentInfo>,
    /// The routing and destination options headers, in the order of the chain: what the
    /// packet's destination processes one after the other (RFC 8200 4.1).
    pub for_destination: DestinationHeaders,
    /// How many extension headers were stepped over.
    pub count: usize,
}

/// The routing and destination options headers of a chain, in order, each as its protocol
/// and where it starts ([`Ipv6ExtensionHeaders::for_destination`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DestinationHeaders {
    headers: [(u8, u16); MAX_EXTENSION_HEADERS],
    len: u8,
}

impl DestinationHeaders {
    fn push(&mut self, protocol: IpProtocol, offset: usize) {
        if let Some(slot) = self.headers.get_mut(usize::from(self.len)) {
            *slot = (protocol.0, offset as u16);
            self.len += 1;
        }
    }

    /// Each header's protocol (routing or destination options) and offset, in chain order.
    pub fn iter(&self) -> impl Iterator<Item = (IpProtocol, usize)> + '_ {
        self.headers[..usize::from(self.len)]
            .iter()
            .map(|&(p, at)| (IpProtocol(p), usize::from(at)))
    }
}

/// What a fragment header (RFC 8200 section 4.5) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6FragmentInfo {
    /// Fragment offset in bytes.
    pub offset: u16,
    pub more_fragments: bool,
    pub ident: u32,
    /// Where the fragment header starts in the packet.
    pub header_offset: usize,
}

impl Ipv6FragmentInfo {
    /// True for any fragment except an "atomic fragment" (offset 0, M clear, RFC 6946).
    #[inline]
    pub fn is_fragmented(&self) -> bool {
        self.offset != 0 || self.more_fragments
    }
}

/// Walks the chain; on [`WireError::HopByHopNotFirst`], `misplaced` gets the offset of the
/// Next Header field that named the hop-by-hop header.
fn walk(
    buf: &[u8],
    end: usize,
    misplaced: &mut Option<usize>,
) -> Result<Ipv6ExtensionHeaders, WireError> {
    let end = end.min(buf.len());
    let mut next = IpProtocol(*buf.get(field::NEXT_HEADER).ok_or(WireError::Truncated)?);
    let mut next_header_offset = field::NEXT_HEADER;
    let mut offset = Ipv6Packet::<&[u8]>::HEADER_LEN;
    let mut fragment = None;
    let mut for_destination = DestinationHeaders::default();
    let mut count = 0;
    // Every walked header starts with Next Header and a length byte.
    let length_byte = |at: usize| {
        if at + 2 <= end {
            Ok(buf[at + 1])
        } else {
            Err(WireError::Truncated)
        }
    };
    loop {
        let header_len = match next {
            IpProtocol::HOP_BY_HOP if count != 0 => {
                *misplaced = Some(next_header_offset);
                return Err(WireError::HopByHopNotFirst);
            }
            IpProtocol::HOP_BY_HOP | IpProtocol::ROUTING | IpProtocol::DEST_OPTS => {
                (usize::from(length_byte(offset)?) + 1) * 8
            }
            IpProtocol::AH => (usize::from(length_byte(offset)?) + 2) * 4,
            IpProtocol::FRAGMENT => 8,
            _ => break,
        };
        if count == MAX_EXTENSION_HEADERS {
            return Err(WireError::TooManyExtensionHeaders);
        }
        if offset + header_len > end {
            return Err(WireError::Truncated);
        }
        count += 1;
        let header = &buf[offset..offset + header_len];
        let this = next;
        if matches!(this, IpProtocol::ROUTING | IpProtocol::DEST_OPTS) {
            for_destination.push(this, offset);
        }
        next = IpProtocol(header[0]);
        next_header_offset = offset;
        offset += header_len;
        if this == IpProtocol::FRAGMENT {
            let word = read_u16(header, 2);
            let info = Ipv6FragmentInfo {
                offset: word & 0xfff8,
                more_fragments: word & 0x0001 != 0,
                ident: read_u32(header, 4),
                header_offset: next_header_offset,
            };
            fragment = Some(info);
            if info.offset != 0 {
                break;
            }
        }
    }
    Ok(Ipv6ExtensionHeaders {
        upper_protocol: next,
        upper_offset: offset,
        next_header_offset,
        fragment,
        for_destination,
        count,
    })
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Writes version 6, traffic class and flow label.
    #[inline]
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, word);
    }

    #[inline]
    pub fn set_payload_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, value);
    }

    #[inline]
    pub fn set_next_header(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value.0;
    }

    #[inline]
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    /// Decrements the hop limit and returns the new value; zero stays zero. IPv6 has no header
    /// checksum, so there is nothing to patch.
    #[inline]
    pub fn decrement_hop_limit(&mut self) -> u8 {
        let hop_limit = self.hop_limit().saturating_sub(1);
        self.set_hop_limit(hop_limit);
        hop_limit
    }

    /// Sets the source address. L4 checksums covering it must be patched separately.
    #[inline]
    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&value.octets());
    }

    /// Sets the destination address. L4 checksums covering it must be patched separately.
    #[inline]
    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&value.octets());
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.packet_len();
        &mut self.buffer.as_mut()[Self::HEADER_LEN..end]
    }
}

/// The fixed IPv6 header as a plain value. Extension headers are part of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        Ipv6Packet::<&[u8]>::HEADER_LEN
    }

    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the fixed header. Fails if the buffer is too short for it or the payload length
    /// does not fit in 16 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Ipv6Packet<T>,
    ) -> Result<(), WireError> {
        let payload_len = u16::try_from(self.payload_len).map_err(|_| WireError::BadLength)?;
        if packet.buffer.as_ref().len() < self.header_len() {
            return Err(WireError::BufferTooSmall);
        }
        packet.set_version_tc_flow(self.traffic_class, self.flow_label);
        packet.set_payload_len(payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    const SRC: &str = "20010db8000000000000000000000001";
    const DST: &str = "20010db8000000000000000000000002";

    /// Fixed header with the given payload length and next header, then `rest`.
    fn packet(next: u8, rest: &str) -> Vec<u8> {
        let rest = hex(rest);
        let mut bytes = hex(&format!(
            "60000000 {:04x} {next:02x} 40 {SRC} {DST}",
            rest.len()
        ));
        bytes.extend_from_slice(&rest);
        bytes
    }

    #[test]
    fn fixed_header_roundtrip() {
        let bytes = packet(17, "c350 0035 0008 0000");
        let p = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        let repr = Ipv6Repr::parse(&p).unwrap();
        assert_eq!(repr.next_header, IpProtocol::UDP);
        assert_eq!((repr.payload_len, repr.hop_limit), (8, 64));
        assert_eq!(repr.src_addr, "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        let mut out = vec![0u8; repr.buffer_len()];
        let mut emitted = Ipv6Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut emitted).unwrap();
        emitted.payload_mut().copy_from_slice(p.payload());
        assert_eq!(out, bytes);
        assert_prefixes_rejected(&bytes, |b| Ipv6Packet::new_checked(b).map(|_| ()));

        let mut bad = bytes.clone();
        bad[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&bad[..]),
            Err(WireError::BadVersion)
        );
    }

    #[test]
    fn walks_chain() {
        // Hop-by-hop (PadN) → routing (type 0 header, 16 bytes) → fragment (first, M=1) →
        // destination options → TCP.
        let bytes = packet(
            0,
            "2b00 0104 00000000
             2c01 0000 00000000 00000000 00000000
             3c00 0001 deadbeef
             0600 0104 00000000
             0050 0050",
        );
        let p = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        let ext = p.extension_headers().unwrap();
        assert_eq!(ext.upper_protocol, IpProtocol::TCP);
        assert_eq!(ext.count, 4);
        assert_eq!(ext.upper_offset, 40 + 8 + 16 + 8 + 8);
        assert_eq!(ext.next_header_offset, 40 + 8 + 16 + 8);
        let frag = ext.fragment.unwrap();
        assert_eq!(
            (frag.offset, frag.more_fragments, frag.ident),
            (0, true, 0xdeadbeef)
        );
        assert_eq!(frag.header_offset, 64);
        assert!(frag.is_fragmented());
        assert_prefixes_rejected(&bytes, |b| {
            Ipv6Packet::new_checked(b)?.extension_headers().map(|_| ())
        });
    }

    #[test]
    fn no_extension_headers() {
        let bytes = packet(58, "8000 0000");
        let ext = Ipv6Packet::new_checked(&bytes[..])
            .unwrap()
            .extension_headers()
            .unwrap();
        assert_eq!(
            (
                ext.upper_protocol,
                ext.upper_offset,
                ext.next_header_offset,
                ext.count
            ),
            (IpProtocol::ICMPV6, 40, 6, 0)
        );
    }

    #[test]
    fn later_fragment_stops_walk() {
        let bytes = packet(44, "0600 05a9 00000001 0102030405060708");
        let ext = Ipv6Packet::new_checked(&bytes[..])
            .unwrap()
            .extension_headers()
            .unwrap();
        let frag = ext.fragment.unwrap();
        assert_eq!((frag.offset, frag.more_fragments), (1448, true));
        assert_eq!(
            (ext.upper_protocol, ext.upper_offset),
            (IpProtocol::TCP, 48)
        );
    }

    #[test]
    fn unknown_header_pointer() {
        // Destination options then an unknown next header 0x8f: the pointer is the destination
        // options header's Next Header byte.
        let bytes = packet(60, "8f00 0104 00000000 ffff");
        let ext = Ipv6Packet::new_checked(&bytes[..])
            .unwrap()
            .extension_headers()
            .unwrap();
        assert_eq!(
            (ext.upper_protocol, ext.next_header_offset, ext.upper_offset),
            (IpProtocol(0x8f), 40, 48)
        );
    }

    #[test]
    fn chain_errors() {
        let late_hbh = packet(60, "0000 0104 00000000 3b00 0104 00000000");
        let p = Ipv6Packet::new_checked(&late_hbh[..]).unwrap();
        assert_eq!(p.extension_headers(), Err(WireError::HopByHopNotFirst));

        let mut rest = String::new();
        for _ in 0..MAX_EXTENSION_HEADERS + 1 {
            rest.push_str("3c00 0104 00000000 ");
        }
        let long = packet(60, &rest);
        let p = Ipv6Packet::new_checked(&long[..]).unwrap();
        assert_eq!(
            p.extension_headers(),
            Err(WireError::TooManyExtensionHeaders)
        );

        // A header whose length runs past the payload length, even though the buffer is longer.
        let mut overrun = packet(60, "3b01 0000 00000000");
        overrun.extend_from_slice(&[0; 8]);
        let p = Ipv6Packet::new_checked(&overrun[..]).unwrap();
        assert_eq!(p.extension_headers(), Err(WireError::Truncated));
    }

    #[test]
    fn authentication_header_length() {
        // AH with payload length 4: (4 + 2) * 4 = 24 bytes, then UDP.
        let bytes = packet(
            51,
            "1104 0000 00001000 00000001 00000000 00000000 00000000 0001 0002 0008 0000",
        );
        let ext = Ipv6Packet::new_checked(&bytes[..])
            .unwrap()
            .extension_headers()
            .unwrap();
        assert_eq!(
            (ext.upper_protocol, ext.upper_offset),
            (IpProtocol::UDP, 64)
        );
    }

    #[test]
    fn hop_limit() {
        let mut bytes = packet(59, "");
        let mut p = Ipv6Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(p.decrement_hop_limit(), 63);
        p.set_hop_limit(0);
        assert_eq!(p.decrement_hop_limit(), 0);
    }

    proptest! {
        #[test]
        fn never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..160), nh in any::<u8>()) {
            if data.len() >= 40 {
                data[0] = 0x60;
                let plen = ((data.len() - 40) as u16).to_be_bytes();
                data[4..6].copy_from_slice(&plen);
                data[6] = [0, 43, 44, 60, 51, nh][usize::from(nh) % 6];
            }
            if let Ok(packet) = Ipv6Packet::new_checked(&data[..]) {
                let _ = Ipv6Repr::parse(&packet);
                if let Ok(ext) = packet.extension_headers() {
                    prop_assert!(ext.upper_offset <= data.len());
                    prop_assert!(ext.next_header_offset < data.len());
                }
            }
        }
    }
}
