//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are carried as folded, *uncomplemented* 16-bit ones'-complement values so that pieces
//! (pseudo-header, header, payload) can be summed separately and combined with [`combine`]; only
//! the final value is complemented with [`finish`]. Every piece except the last must have an even
//! length, because the sum is over 16-bit words.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::ip::IpProtocol;

/// Folds a wide ones'-complement accumulator into 16 bits with end-around carry.
///
/// Four fixed steps instead of a loop (no branch to mispredict): 64 → 33 → 18 → 17 → 16 bits.
/// A non-zero accumulator never folds to zero, and the folded value is unique in `1..=0xffff`,
/// so this gives exactly what folding 16 bits at a time until it fits gives.
#[inline]
fn fold(acc: u64) -> u16 {
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Adds a 64-bit word with end-around carry; ones'-complement addition in any word size folds
/// to the same 16-bit sum, and eight bytes a step is several times faster than two.
#[inline]
fn add64(acc: u64, word: u64) -> u64 {
    let (sum, carry) = acc.overflowing_add(word);
    sum + u64::from(carry)
}

/// The folded ones'-complement sum of `data` read as big-endian 16-bit words; an odd trailing
/// byte is padded with zero, as RFC 1071 specifies.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    let mut acc = 0u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let word = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc = add64(acc, word);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        acc = add64(acc, u64::from_be_bytes(tail));
    }
    fold(acc)
}

/// The folded sum of an option-less, 20-byte IPv4 header: five 32-bit words, no loop and no
/// tail handling, for the per-packet header check.
#[inline]
pub fn sum_ipv4_header(h: &[u8; 20]) -> u16 {
    let word = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold(word(0) + word(4) + word(8) + word(12) + word(16))
}

/// True if an option-less, 20-byte IPv4 header carries a valid checksum: its sum is all-ones.
///
/// The same test as `sum_ipv4_header(h) == 0xffff` in fewer steps. The header is read as two
/// 8-byte words and one 4-byte word in the machine's byte order, which only permutes the bytes
/// of the sum (RFC 1071 2(B)), and all-ones is all-ones in either order. Their sum's carries
/// out of 64 bits are added back in (2^64 ≡ 1 mod 0xffff), all in registers. Instead of
/// folding, a ones'-complement sum is all-ones exactly when the plain sum is a non-zero
/// multiple of 0xffff (2^16 ≡ 1 mod 0xffff, and a non-zero sum never folds to zero); for an odd
/// divisor that is one multiply by its inverse modulo 2^64 and one compare (the product is at
/// most `u64::MAX / 0xffff` exactly for the multiples), without a division or a wide multiply.
#[inline]
pub fn ipv4_header_ok(h: &[u8; 20]) -> bool {
    let word8 = |i: usize| {
        u64::from_ne_bytes([
            h[i],
            h[i + 1],
            h[i + 2],
            h[i + 3],
            h[i + 4],
            h[i + 5],
            h[i + 6],
            h[i + 7],
        ])
    };
    let word4 = u64::from(u32::from_ne_bytes([h[16], h[17], h[18], h[19]]));
    let (acc, c1) = word8(0).overflowing_add(word8(8));
    let (acc, c2) = acc.overflowing_add(word4);
    // End-around carries. When this addition carries too, `acc` ends at most 1, so adding
    // that last carry cannot overflow. `acc` is 0 only for an all-zero header.
    let (acc, c3) = acc.overflowing_add(u64::from(c1) + u64::from(c2));
    let acc = acc + u64::from(c3);
    acc != 0 && acc.wrapping_mul(INVERSE_OF_FFFF) <= u64::MAX / 0xffff
}

/// The inverse of 0xffff modulo 2^64: `0xffff * INVERSE_OF_FFFF` wraps to 1. Newton's
/// iteration, each step doubling the correct low bits (an odd number is its own inverse
/// modulo 8: 3 bits, then 6, 12, 24, 48, 96).
const INVERSE_OF_FFFF: u64 = {
    let d: u64 = 0xffff;
    let mut x = d;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(d.wrapping_mul(x)));
        i += 1;
    }
    x
};
const _: () = assert!(INVERSE_OF_FFFF.wrapping_mul(0xffff) == 1);

/// Ones'-complement addition of two folded sums.
#[inline]
pub fn combine(a: u16, b: u16) -> u16 {
    // At most 0x1fffe: one end-around carry is enough.
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Turns a folded sum into the value stored in a checksum field.
#[inline]
pub fn finish(sum: u16) -> u16 {
    !sum
}

/// The Internet checksum of `data`, ready to store in a checksum field.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// True if `data`, including its checksum field, sums to all-ones (a valid checksum).
#[inline]
pub fn verify(data: &[u8]) -> bool {
    sum(data) == 0xffff
}

/// Folded sum of the IPv4 pseudo-header (RFC 793 section 3.1, RFC 768).
#[inline]
pub fn pseudo_header_ipv4(
    src: &Ipv4Addr,
    dst: &Ipv4Addr,
    protocol: IpProtocol,
    length: u32,
) -> u16 {
    let acc = u64::from(u32::from(*src))
        + u64::from(u32::from(*dst))
        + u64::from(protocol.0)
        + u64::from(length);
    fold(acc)
}

/// Folded sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
#[inline]
pub fn pseudo_header_ipv6(
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
    next_header: IpProtocol,
    length: u32,
) -> u16 {
    let acc = add64(u64::from(sum(&src.octets())), u64::from(sum(&dst.octets())));
    fold(acc + u64::from(next_header.0) + u64::from(length))
}

/// RFC 1624 equation 3: the checksum after one 16-bit word changes from `old` to `new`,
/// `HC' = ~(~HC + ~m + m')`. Unlike equation 2 it never yields the +0/-0 mismatch that makes a
/// full recompute and an update disagree.
#[inline]
pub fn update16(old_csum: u16, old: u16, new: u16) -> u16 {
    !combine(combine(!old_csum, !old), new)
}

/// [`update16`] for the IPv4 TTL/protocol word when the TTL (its high byte, at least 1) drops
/// by one: `~m + m'` is then always `0xfeff`, so the update is one add and one carry
/// (RFC 1624 equation 3, the same value [`update16`] gives).
#[inline]
pub fn update_ttl_decrement(old_csum: u16) -> u16 {
    let s = u32::from(!old_csum) + 0xfeff;
    !(((s & 0xffff) + (s >> 16)) as u16)
}

/// [`update_ttl_decrement`] on a checksum as it lies in the packet, read and written back in
/// native byte order: the same 16 bits in the header, without the two byte swaps.
///
/// Ones'-complement sums commute with swapping the bytes of every word, so adding `0x0100`
/// (what the decrement takes off the TTL/protocol word, in ones' complement) to the checksum
/// in network order is adding `0x0100` byte-swapped to it in native order. The end-around
/// carry is taken as Linux's `ip_decrease_ttl` takes it, which gives exactly
/// [`update_ttl_decrement`]'s value (never `0xffff`; a test compares all 65,536 checksums).
#[inline]
pub fn ttl_decrement_update_ne(old_csum_ne: u16) -> u16 {
    let add = u32::from(u16::from_ne_bytes(0x0100u16.to_be_bytes()));
    let s = u32::from(old_csum_ne) + add;
    (s + u32::from(s >= 0xffff)) as u16
}

/// [`update16`] for a 32-bit field (two adjacent, word-aligned 16-bit words).
#[inline]
pub fn update32(old_csum: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!old_csum)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from((new >> 16) as u16)
        + u64::from(new as u16);
    !fold(acc)
}

/// The checksum after an IPv4 address it covers (IPv4 header, or an L4 pseudo-header) changes.
#[inline]
pub fn update_ipv4_addr(old_csum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    update32(old_csum, u32::from(old), u32::from(new))
}

/// The L4 checksum after an IPv6 address in its pseudo-header changes.
#[inline]
pub fn update_ipv6_addr(old_csum: u16, old: &Ipv6Addr, new: &Ipv6Addr) -> u16 {
    // ~HC + ~old + new, where ~old of a sum is the complement of the folded sum.
    let acc = u64::from(!old_csum) + u64::from(!sum(&old.octets())) + u64::from(sum(&new.octets()));
    !fold(acc)
}

/// Several changes to the fields a checksum covers, summed so that they are applied with one
/// fold (RFC 1624 equation 3 over many words: `HC' = ~(~HC + Σ~m + Σm')`). NAT changes up to
/// two addresses and two ports at once; this costs one fold instead of four.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// A 16-bit word changes from `old` to `new`.
    #[inline]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A word-aligned 32-bit field (an IPv4 address) changes.
    #[inline]
    pub fn replace32(&mut self, old: u32, new: u32) {
        let old = !old;
        self.0 += u64::from(old >> 16) + u64::from(old & 0xffff);
        self.0 += u64::from(new >> 16) + u64::from(new & 0xffff);
    }

    /// A word-aligned run of bytes of even length (an IPv6 address) changes.
    #[inline]
    pub fn replace_bytes(&mut self, old: &[u8], new: &[u8]) {
        self.0 += u64::from(!sum(old)) + u64::from(sum(new));
    }

    /// Adds another delta's changes (those of the fields both checksums cover).
    #[inline]
    pub fn add(&mut self, other: Delta) {
        self.0 += other.0;
    }

    /// The checksum `csum` after the changes.
    #[inline]
    pub fn apply(self, csum: u16) -> u16 {
        !fold(u64::from(!csum) + self.0)
    }

    /// The changes folded to 16 bits, to keep and apply later with [`apply_folded`].
    #[inline]
    pub fn folded(self) -> u16 {
        fold(self.0)
    }
}

/// [`Delta::apply`] of a delta kept as [`Delta::folded`]: the same checksum, with one
/// end-around carry instead of a whole fold. (Folding keeps a sum's value mod 0xffff and keeps
/// zero apart from every other sum, and `apply` folds `!csum + delta`, which is zero only when
/// both are.)
#[inline]
pub fn apply_folded(folded: u16, csum: u16) -> u16 {
    !combine(!csum, folded)
}

/// The L4 checksum after a port (or any other 16-bit aligned field) changes.
#[inline]
pub fn update_port(old_csum: u16, old: u16, new: u16) -> u16 {
    update16(old_csum, old, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;
    use proptest::prelude::*;

    /// Straightforward RFC 1071 reference: 16-bit words, 32-bit accumulator.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn ttl_decrement_update_ne_is_update_ttl_decrement_in_native_order() {
        for c in 0..=u16::MAX {
            let ne = u16::from_ne_bytes(c.to_be_bytes());
            let expected = update_ttl_decrement(c);
            assert_eq!(
                ttl_decrement_update_ne(ne).to_ne_bytes(),
                expected.to_be_bytes(),
                "{c:#06x}"
            );
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(sum(&hex("0001 f203 f4f5 f6f7")), 0xddf2);
    }

    #[test]
    fn ipv4_header_known_checksum() {
        // A widely published IPv4 header whose checksum is b861.
        let header = hex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7");
        assert!(verify(&header));
        let mut zeroed = header.clone();
        zeroed[10..12].fill(0);
        assert_eq!(checksum(&zeroed), 0xb861);
    }

    #[test]
    fn update_ipv6_addr_matches_recompute() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:ffff::abcd".parse().unwrap();
        let payload = hex("1234 5678 0000 9abc");
        let full = |addr: &Ipv6Addr| {
            finish(combine(
                pseudo_header_ipv6(addr, &b, IpProtocol::UDP, 8),
                sum(&payload),
            ))
        };
        assert_eq!(update_ipv6_addr(full(&a), &a, &b), full(&b));
    }

    /// The loop the fixed-step [`fold`] replaces.
    fn reference_fold(mut acc: u64) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn ttl_decrement_update_is_update16() {
        for csum in 0..=0xffffu16 {
            for (ttl, proto) in [
                (1u16, 0u16),
                (1, 255),
                (2, 6),
                (64, 17),
                (255, 255),
                (128, 1),
            ] {
                let old = ttl << 8 | proto;
                let new = (ttl - 1) << 8 | proto;
                assert_eq!(
                    update_ttl_decrement(csum),
                    update16(csum, old, new),
                    "{csum:#x} {ttl}"
                );
            }
        }
    }

    #[test]
    fn fold_matches_the_loop_at_the_edges() {
        for acc in [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0x1_ffff,
            0xffff_ffff,
            0x1_0000_0000,
        ]
        .into_iter()
        .chain([
            u64::MAX,
            u64::MAX - 1,
            0xffff_0000_ffff_0000,
            0x8000_0000_0000_0000,
        ]) {
            assert_eq!(fold(acc), reference_fold(acc), "{acc:#x}");
        }
        for a in (0..=0xffffu16).step_by(7).chain([0xffff]) {
            for b in (0..=0xffffu16).step_by(251).chain([0xfffe, 0xffff]) {
                assert_eq!(combine(a, b), reference_fold(u64::from(a) + u64::from(b)));
            }
        }
    }

    /// The carries out of 64 bits in `ipv4_header_ok`: headers of mostly 0xff bytes make
    /// every one of them, and the all-zero header (whose sum is zero, not all-ones) fails.
    #[test]
    fn ipv4_header_ok_at_the_carry_edges() {
        let mut cases = vec![[0u8; 20], [0xff; 20]];
        for at in 0..20 {
            for v in [0x00, 0x01, 0xfe] {
                let mut h = [0xff; 20];
                h[at] = v;
                cases.push(h);
                let mut h = [0u8; 20];
                h[at] = v;
                cases.push(h);
            }
        }
        let mut h = [0xff; 20];
        h[16..].copy_from_slice(&[0, 0, 0, 1]);
        cases.push(h);
        for h in cases {
            assert_eq!(ipv4_header_ok(&h), sum(&h) == 0xffff, "{h:02x?}");
        }
        assert_eq!(INVERSE_OF_FFFF.wrapping_mul(0xffff), 1);
    }

    proptest! {
        #[test]
        fn fold_matches_the_loop(acc in any::<u64>()) {
            prop_assert_eq!(fold(acc), reference_fold(acc));
        }

        #[test]
        fn a_folded_delta_applies_as_the_whole(
            words in proptest::collection::vec(any::<(u16, u16)>(), 0..8),
            csum in any::<u16>(),
        ) {
            let mut d = Delta::default();
            for (old, new) in words {
                d.replace16(old, new);
            }
            prop_assert_eq!(apply_folded(d.folded(), csum), d.apply(csum));
        }

        #[test]
        fn combine_matches_the_loop(a in any::<u16>(), b in any::<u16>()) {
            prop_assert_eq!(combine(a, b), reference_fold(u64::from(a) + u64::from(b)));
        }

        #[test]
        fn ipv4_header_sum_matches_the_general_sum(h in any::<[u8; 20]>()) {
            prop_assert_eq!(sum_ipv4_header(&h), sum(&h));
            prop_assert_eq!(ipv4_header_ok(&h), sum(&h) == 0xffff);
        }

        #[test]
        fn ttl_decrement_in_native_order_matches_rfc_1624(ttl in 2u8.., proto in any::<u8>(), rest in any::<[u8; 18]>()) {
            let mut h = [0u8; 20];
            h[..8].copy_from_slice(&rest[..8]);
            h[8] = ttl;
            h[9] = proto;
            h[12..].copy_from_slice(&rest[10..]);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let ne = ttl_decrement_update_ne(u16::from_ne_bytes([h[10], h[11]]));
            h[8] = ttl - 1;
            h[10..12].copy_from_slice(&ne.to_ne_bytes());
            prop_assert!(ipv4_header_ok(&h));
        }

        #[test]
        fn ipv4_header_ok_accepts_every_filled_checksum(mut h in any::<[u8; 20]>()) {
            h[10..12].fill(0);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            prop_assert!(ipv4_header_ok(&h));
            h[11] ^= 1;
            prop_assert!(!ipv4_header_ok(&h));
        }

        #[test]
        fn sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(sum(&data), reference_sum(&data));
        }

        #[test]
        fn split_sums_combine(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..150) {
            let cut = (cut * 2).min(data.len() & !1);
            prop_assert_eq!(combine(sum(&data[..cut]), sum(&data[cut..])), sum(&data));
        }

        /// Rewriting any aligned 16- or 32-bit field of a packet and updating incrementally gives
        /// exactly the checksum a full recompute gives. The packet starts with a non-zero word
        /// (as every real header or pseudo-header does), which rules out the all-zero case where
        /// +0 and -0 legitimately differ.
        #[test]
        fn incremental_equals_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 8..200),
            at in 0usize..100,
            new16 in any::<u16>(),
            new32 in any::<u32>(),
        ) {
            data[0] = 0x45;
            data.truncate(data.len() & !1);
            let csum = checksum(&data);
            let at16 = ((at * 2) % (data.len() - 1)) & !1;
            let old16 = u16::from_be_bytes([data[at16], data[at16 + 1]]);
            let mut changed = data.clone();
            changed[at16..at16 + 2].copy_from_slice(&new16.to_be_bytes());
            prop_assert_eq!(update16(csum, old16, new16), checksum(&changed));
            prop_assert_eq!(update_port(csum, old16, new16), checksum(&changed));

            if data.len() >= 4 {
                let at32 = ((at * 2) % (data.len() - 3)) & !1;
                let old32 = u32::from_be_bytes([data[at32], data[at32 + 1], data[at32 + 2], data[at32 + 3]]);
                let mut changed = data.clone();
                changed[at32..at32 + 4].copy_from_slice(&new32.to_be_bytes());
                prop_assert_eq!(update32(csum, old32, new32), checksum(&changed));
                prop_assert_eq!(
                    update_ipv4_addr(csum, Ipv4Addr::from(old32), Ipv4Addr::from(new32)),
                    checksum(&changed)
                );
            }
        }

        #[test]
        fn ipv6_addr_update_random(
            a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), c in any::<[u8; 16]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (a, b, c) = (Ipv6Addr::from(a), Ipv6Addr::from(b), Ipv6Addr::from(c));
            let len = payload.len() as u32;
            let full = |src: &Ipv6Addr| finish(combine(
                pseudo_header_ipv6(src, &c, IpProtocol::TCP, len), sum(&payload)));
            prop_assert_eq!(update_ipv6_addr(full(&a), &a, &b), full(&b));
        }
    }
}
