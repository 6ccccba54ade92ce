//! IPv4 fragmentation for forwarded packets larger than the next link's MTU (RFC 791 3.2,
//! RFC 1812 5.2.6), and IPv6 fragmentation of this node's own packets, as their source (RFC
//! 8200 4.5; routers never fragment IPv6 in transit): the first fragment stays in the packet's
//! own buffer, the others are built in sibling buffers.

use crate::buffer::PacketBuffer;
use crate::wire::{IpProtocol, Ipv4Packet};

/// Why a packet could not be fragmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentError {
    /// The MTU cannot carry the header plus eight bytes of data.
    MtuTooSmall,
    /// No buffer for a fragment.
    NoBuffer,
}

/// The options of `options` that RFC 791 says are copied into every fragment (the copy flag,
/// the option type's top bit), padded with end-of-list to a multiple of four bytes.
fn copied_options(options: &[u8], out: &mut [u8; 40]) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < options.len() {
        let kind = options[i];
        match kind {
            0 => break,
            1 => i += 1,
            _ => {
                let Some(&olen) = options.get(i + 1) else {
                    break;
                };
                let olen = usize::from(olen);
                if olen < 2 || i + olen > options.len() {
                    break;
                }
                if kind & 0x80 != 0 {
                    out[len..len + olen].copy_from_slice(&options[i..i + olen]);
                    len += olen;
                }
                i += olen;
            }
        }
    }
    let padded = len.div_ceil(4) * 4;
    out[len..padded].fill(0);
    padded
}

/// Splits the IPv4 packet in `first` (already TTL-decremented) into fragments of at most `mtu`
/// bytes. `first` keeps the first fragment; every further one is passed to `emit` in order.
/// Nothing is changed when an error is returned.
pub fn fragment_ipv4<B: PacketBuffer>(
    first: &mut B,
    mtu: usize,
    mut emit: impl FnMut(B),
) -> Result<usize, FragmentError> {
    let (hlen, total, offset0, more0, rest_options, rest_options_len) = {
        let ip = Ipv4Packet::new_unchecked(first.data());
        let mut opts = [0u8; 40];
        let n = copied_options(ip.options(), &mut opts);
        (
            ip.header_len(),
            usize::from(ip.total_len()),
            usize::from(ip.fragment_offset()),
            ip.more_fragments(),
            opts,
            n,
        )
    };
    let first_room = mtu.saturating_sub(hlen) / 8 * 8;
    let rest_hlen = 20 + rest_options_len;
    let rest_room = mtu.saturating_sub(rest_hlen) / 8 * 8;
    if first_room == 0 || rest_room == 0 {
        return Err(FragmentError::MtuTooSmall);
    }
    // Build the later fragments first, while the whole payload is still in `first`.
    let mut later = Vec::new();
    let mut at = hlen + first_room;
    while at < total {
        let len = rest_room.min(total - at);
        let mut frag = first.alloc_sibling().ok_or(FragmentError::NoBuffer)?;
        frag.truncate(0);
        if !frag.push_back(rest_hlen + len) {
            return Err(FragmentError::NoBuffer);
        }
        let src = first.data();
        let dst = frag.data_mut();
        dst[..20].copy_from_slice(&src[..20]);
        dst[20..rest_hlen].copy_from_slice(&rest_options[..rest_options_len]);
        dst[rest_hlen..].copy_from_slice(&src[at..at + len]);
        let last = at + len == total;
        let mut ip = Ipv4Packet::new_unchecked(dst);
        ip.set_version_and_header_len(rest_hlen);
        ip.set_total_len((rest_hlen + len) as u16);
        ip.set_fragment(false, more0 || !last, (offset0 + at - hlen) as u16);
        ip.fill_checksum();
        later.push(frag);
        at += len;
    }
    first.truncate(hlen + first_room);
    let mut ip = Ipv4Packet::new_unchecked(first.data_mut());
    ip.set_total_len((hlen + first_room) as u16);
    ip.set_fragment(false, true, offset0 as u16);
    ip.fill_checksum();
    let count = 1 + later.len();
    later.into_iter().for_each(&mut emit);
    Ok(count)
}

/// Writes an IPv6 fragment into `out` (48 bytes plus `chunk`): `header`, a fixed header
/// whose Next Header names the fragmented protocol, with Payload Length and Next Header made
/// those of a fragment; then the fragment header (`offset` in bytes, a multiple of 8, More
/// Fragments `more`, identification `ident`); then `chunk`.
pub(crate) fn write_ipv6_fragment(
    out: &mut [u8],
    header: &[u8; 40],
    offset: usize,
    more: bool,
    ident: u32,
    chunk: &[u8],
) {
    out[..40].copy_from_slice(header);
    set_fragment_fields(out, header[6], offset, more, ident, chunk.len());
    out[48..48 + chunk.len()].copy_from_slice(chunk);
}

/// In `out`, a fixed header followed by room for a fragment header: makes them those of a
/// fragment of `len` bytes of data of a `next_header` datagram (Payload Length, Next Header,
/// and the fragment header's fields).
fn set_fragment_fields(
    out: &mut [u8],
    next_header: u8,
    offset: usize,
    more: bool,
    ident: u32,
    len: usize,
) {
    out[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    out[6] = IpProtocol::FRAGMENT.0;
    out[40] = next_header;
    out[41] = 0;
    let word = offset as u16 | u16::from(more);
    out[42..44].copy_from_slice(&word.to_be_bytes());
    out[44..48].copy_from_slice(&ident.to_be_bytes());
}

/// Splits an IPv6 packet this node made (`first`: the fixed header straight followed by the
/// upper-layer message, as its echo replies are) into fragments of at most `mtu` bytes with
/// identification `ident`. `first` keeps the first fragment; each further one is passed to
/// `emit` as soon as it is made, so no list of them is kept: on [`FragmentError::NoBuffer`]
/// some may have gone, and `first`, unchanged, is for the caller to drop (the datagram could
/// not be reassembled anyway). Refused without a change for want of the 8 bytes of headroom
/// the first fragment's header takes, or of an MTU holding 8 bytes of data.
pub fn fragment_ipv6<B: PacketBuffer>(
    first: &mut B,
    mtu: usize,
    ident: u32,
    mut emit: impl FnMut(B),
) -> Result<usize, FragmentError> {
    let room = mtu.saturating_sub(48) / 8 * 8;
    let Some(&header) = first.data().first_chunk::<40>() else {
        return Err(FragmentError::MtuTooSmall);
    };
    if room == 0 {
        return Err(FragmentError::MtuTooSmall);
    }
    if first.headroom() < 8 {
        return Err(FragmentError::NoBuffer);
    }
    let payload_len = first.len() - 40;
    let mut count = 1;
    let mut at = room;
    while at < payload_len {
        let len = room.min(payload_len - at);
        let mut frag = first.alloc_sibling().ok_or(FragmentError::NoBuffer)?;
        frag.truncate(0);
        if !frag.push_back(48 + len) {
            return Err(FragmentError::NoBuffer);
        }
        let chunk = &first.data()[40 + at..40 + at + len];
        let last = at + len == payload_len;
        write_ipv6_fragment(frag.data_mut(), &header, at, !last, ident, chunk);
        emit(frag);
        count += 1;
        at += len;
    }
    // The first fragment in place: the fixed header moves 8 bytes forward, making room for
    // the fragment header between it and the data.
    let len = room.min(payload_len);
    first.truncate(40 + len);
    if !first.push_front(8) {
        return Err(FragmentError::NoBuffer);
    }
    let data = first.data_mut();
    data.copy_within(8..48, 0);
    set_fragment_fields(data, header[6], 0, len < payload_len, ident, len);
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::HeapBuffer;
    use crate::wire::{IpProtocol, Ipv4Repr};
    use proptest::prelude::*;

    fn packet(payload_len: usize, options: &[u8], offset: u16, more: bool) -> Vec<u8> {
        let hlen = 20 + options.len();
        let mut b = vec![0u8; hlen + payload_len];
        let repr = Ipv4Repr {
            src_addr: "198.18.1.2".parse().unwrap(),
            dst_addr: "198.18.2.2".parse().unwrap(),
            protocol: IpProtocol::UDP,
            payload_len: hlen - 20 + payload_len,
            ttl: 63,
            dscp: 0,
            ecn: 0,
            ident: 0xbeef,
            dont_fragment: false,
            more_fragments: more,
            fragment_offset: offset,
        };
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]))
            .unwrap();
        b[20..hlen].copy_from_slice(options);
        for (i, x) in b[hlen..].iter_mut().enumerate() {
            *x = (i * 7) as u8;
        }
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_version_and_header_len(hlen);
        ip.fill_checksum();
        b
    }

    /// Reassembles fragments by offset and checks every header.
    fn reassemble(frags: &[Vec<u8>], mtu: usize) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut last_more = true;
        for f in frags {
            let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(f.len() <= mtu);
            assert_eq!(usize::from(ip.total_len()), f.len());
            assert_eq!(ip.ident(), 0xbeef);
            let off = usize::from(ip.fragment_offset());
            if data.len() < off {
                data.resize(off, 0);
            }
            assert_eq!(data.len(), off, "fragments must be contiguous");
            data.extend_from_slice(ip.payload());
            last_more = ip.more_fragments();
        }
        (data, last_more)
    }

    #[test]
    fn copies_only_copy_flagged_options_into_later_fragments() {
        // Security-like option (type 0x82, copied) and record route (type 7, not copied).
        let options = [0x82, 4, 1, 2, 7, 7, 4, 0, 0, 0, 0, 0];
        let pkt = packet(3000, &options, 0, false);
        let mut first = HeapBuffer::from_bytes(&pkt);
        let mut frags = vec![];
        let n = fragment_ipv4(&mut first, 1500, |b| frags.push(b.data().to_vec())).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            Ipv4Packet::new_checked(first.data()).unwrap().options(),
            &options
        );
        for f in &frags {
            assert_eq!(
                Ipv4Packet::new_checked(&f[..]).unwrap().options(),
                &[0x82, 4, 1, 2]
            );
        }
        frags.insert(0, first.data().to_vec());
        let (data, more) = reassemble(&frags, 1500);
        assert_eq!(&data[..], &pkt[32..]);
        assert!(!more);
    }

    #[test]
    fn too_small_mtu_is_refused_without_change() {
        let pkt = packet(100, &[], 0, false);
        let mut first = HeapBuffer::from_bytes(&pkt);
        assert_eq!(
            fragment_ipv4(&mut first, 24, |_| {}),
            Err(FragmentError::MtuTooSmall)
        );
        assert_eq!(first.data(), &pkt[..]);
    }

    /// An IPv6 packet of `payload_len` bytes of ICMPv6 (no extension headers).
    fn packet6(payload_len: usize) -> Vec<u8> {
        let mut b = vec![0x60, 0, 0, 0, 0, 0, 58, 64];
        b[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
        b.extend_from_slice(
            &"2001:db8:1::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        b.extend_from_slice(
            &"2001:db8:9::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        b.extend((0..payload_len).map(|i| (i * 7) as u8));
        b
    }

    /// Fragments `pkt` with [`fragment_ipv6`] and checks every fragment's headers; returns the
    /// fragments in order and the reassembled payload.
    fn fragment6(pkt: &[u8], mtu: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut first = HeapBuffer::from_bytes(pkt);
        let mut frags = vec![];
        let n = fragment_ipv6(&mut first, mtu, 0xfeed_0001, |b| {
            frags.push(b.data().to_vec())
        })
        .unwrap();
        frags.insert(0, first.data().to_vec());
        assert_eq!(n, frags.len());
        let mut data = Vec::new();
        for (k, f) in frags.iter().enumerate() {
            assert!(f.len() <= mtu);
            assert_eq!(&f[..4], &pkt[..4]);
            assert_eq!(&f[7..40], &pkt[7..40], "hop limit and addresses kept");
            assert_eq!(usize::from(u16::from_be_bytes([f[4], f[5]])), f.len() - 40);
            assert_eq!((f[6], f[40], f[41]), (44, pkt[6], 0));
            let word = u16::from_be_bytes([f[42], f[43]]);
            assert_eq!(usize::from(word & 0xfff8), data.len(), "contiguous");
            assert_eq!(word & 1 == 1, k + 1 < frags.len(), "M on all but the last");
            assert_eq!(&f[44..48], &0xfeed_0001u32.to_be_bytes());
            if k + 1 < frags.len() {
                assert_eq!((f.len() - 48) % 8, 0);
            }
            data.extend_from_slice(&f[48..]);
        }
        (frags, data)
    }

    #[test]
    fn own_ipv6_packet_is_fragmented_with_fragment_headers() {
        let pkt = packet6(3000);
        let (frags, data) = fragment6(&pkt, 1280);
        assert_eq!(frags.len(), 3);
        assert_eq!(frags[0].len(), 1280);
        assert_eq!(&data[..], &pkt[40..]);
    }

    #[test]
    fn ipv6_fragmentation_without_headroom_or_room_is_refused_unchanged() {
        let pkt = packet6(2000);
        let mut buf = HeapBuffer::new(4096, 0);
        buf.fill(&pkt);
        assert_eq!(
            fragment_ipv6(&mut buf, 1280, 1, |_| panic!("nothing emitted")),
            Err(FragmentError::NoBuffer)
        );
        assert_eq!(buf.data(), &pkt[..]);
        let mut buf = HeapBuffer::from_bytes(&pkt);
        assert_eq!(
            fragment_ipv6(&mut buf, 55, 1, |_| panic!("nothing emitted")),
            Err(FragmentError::MtuTooSmall)
        );
        assert_eq!(buf.data(), &pkt[..]);
    }

    proptest! {
        #[test]
        fn own_ipv6_fragments_reassemble_to_the_original(
            len in 9usize..4000,
            mtu in 56usize..1500,
        ) {
            let pkt = packet6(len);
            prop_assume!(pkt.len() > mtu);
            let (_, data) = fragment6(&pkt, mtu);
            prop_assert_eq!(&data[..], &pkt[40..]);
        }

        #[test]
        fn fragments_reassemble_to_the_original(
            len in 9usize..1900,
            mtu in 68usize..1500,
            offset in 0u16..100,
            more in any::<bool>(),
        ) {
            let pkt = packet(len, &[], offset * 8, more);
            prop_assume!(pkt.len() > mtu);
            let mut first = HeapBuffer::from_bytes(&pkt);
            let mut frags = vec![];
            fragment_ipv4(&mut first, mtu, |b| frags.push(b.data().to_vec())).unwrap();
            frags.insert(0, first.data().to_vec());
            let (data, last_more) = reassemble(&frags, mtu);
            prop_assert_eq!(&data[usize::from(offset) * 8..], &pkt[20..]);
            prop_assert_eq!(last_more, more);
        }
    }
}
