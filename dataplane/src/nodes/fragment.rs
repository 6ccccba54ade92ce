//! IPv4 fragmentation for forwarded packets larger than the next link's MTU (RFC 791 3.2,
//! RFC 1812 5.2.6): the first fragment stays in the packet's own buffer, the others are built in
//! sibling buffers.

use crate::buffer::PacketBuffer;
use crate::wire::Ipv4Packet;

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

    proptest! {
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
