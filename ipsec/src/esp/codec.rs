//! Tunnel-mode encapsulation and decapsulation.

use super::sa::{Direction, Nanos, Sa, SaCrypto};
use super::EspError;
use crate::crypto::{AeadAlgorithm, CbcAlgorithm, CbcHmac, CryptoError, SymParams};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// IP protocol number of ESP.
pub const ESP_PROTOCOL: u8 = 50;
/// Next header for an inner IPv4 packet.
pub const IPIP_PROTOCOL: u8 = 4;
/// Next header for an inner IPv6 packet.
pub const IPV6_PROTOCOL: u8 = 41;
const UDP_PROTOCOL: u8 = 17;
const NO_NEXT_HEADER: u8 = 59;
/// UDP port of encapsulated ESP and IKE after NAT detection (RFC 3948).
pub const NAT_T_PORT: u16 = 4500;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const UDP_HEADER_LEN: usize = 8;
const IPV4_UDP_LEN: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN;
const IPV6_UDP_LEN: usize = IPV6_HEADER_LEN + UDP_HEADER_LEN;
const ESP_HEADER_LEN: usize = 8;
const TAG_LEN: usize = AeadAlgorithm::TAG_LEN;

/// The outer header to put around ESP: tunnel endpoints and, behind a NAT, UDP ports.
///
/// It is made once per SA and policy ([`new`](Self::new), [`with_udp`](Self::with_udp),
/// [`with_ttl`](Self::with_ttl)) and keeps the header's bytes as a template: every field that
/// is the same for each packet is in place, the lengths, the traffic class and the checksums
/// are zero. Encapsulation copies the template and patches the lengths and the traffic class
/// (the inner packet's DSCP and ECN field); the IPv4 checksum is the template's one's
/// complement sum, kept aside, plus the two words that changed (RFC 1624's incremental
/// update, from zero). Building the header field by field cost some 60 instructions a packet;
/// the copy and patch cost about 30.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OuterHeader {
    src: IpAddr,
    dst: IpAddr,
    udp: Option<(u16, u16)>,
    ttl: u8,
    kind: OuterKind,
    /// The header with zero lengths, traffic class and checksums; `len()` bytes of it are
    /// used.
    template: [u8; MAX_OUTER_LEN],
    /// IPv4: the one's complement sum of the template's IP header, folded to 16 bits (not
    /// complemented). Unused for IPv6, which has no header checksum.
    sum: u16,
}

/// The longest outer header: IPv6 and UDP.
const MAX_OUTER_LEN: usize = IPV6_HEADER_LEN + UDP_HEADER_LEN;

/// The shape of an [`OuterHeader`], which says how long its template is and what to patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OuterKind {
    Ipv4,
    Ipv4Udp,
    Ipv6,
    Ipv6Udp,
    /// Addresses of two families: refused per packet ([`EspError::FamilyMismatch`]).
    Mismatch,
}

impl fmt::Debug for OuterHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OuterHeader")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("udp", &self.udp)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl OuterHeader {
    pub fn new(src: IpAddr, dst: IpAddr) -> Self {
        Self {
            src,
            dst,
            udp: None,
            ttl: 64,
            kind: OuterKind::Mismatch,
            template: [0; MAX_OUTER_LEN],
            sum: 0,
        }
        .with_template()
    }

    pub fn with_udp(mut self, src_port: u16, dst_port: u16) -> Self {
        self.udp = Some((src_port, dst_port));
        self.with_template()
    }

    /// The outer TTL or hop limit (64 unless set).
    pub fn with_ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self.with_template()
    }

    pub fn src(&self) -> IpAddr {
        self.src
    }

    pub fn dst(&self) -> IpAddr {
        self.dst
    }

    /// `(source port, destination port)` for UDP encapsulation (RFC 3948).
    pub fn udp(&self) -> Option<(u16, u16)> {
        self.udp
    }

    pub fn ttl(&self) -> u8 {
        self.ttl
    }

    /// Length of the IP (and UDP) header.
    pub fn len(&self) -> usize {
        let ip = match self.src {
            IpAddr::V4(_) => IPV4_HEADER_LEN,
            IpAddr::V6(_) => IPV6_HEADER_LEN,
        };
        ip + if self.udp.is_some() {
            UDP_HEADER_LEN
        } else {
            0
        }
    }

    /// Both addresses of one family.
    pub fn families_match(&self) -> bool {
        self.kind != OuterKind::Mismatch
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `f` of [`len`](Self::len), called with the length as a constant for each kind of
    /// header: inlined, the code of `f` is then made once per kind, with the offsets of
    /// everything after the outer header known to the compiler.
    #[inline(always)]
    fn with_len<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        match self.kind {
            OuterKind::Ipv4 => f(IPV4_HEADER_LEN),
            OuterKind::Ipv4Udp => f(IPV4_UDP_LEN),
            OuterKind::Ipv6 => f(IPV6_HEADER_LEN),
            OuterKind::Ipv6Udp => f(IPV6_UDP_LEN),
            OuterKind::Mismatch => f(self.len()),
        }
    }

    /// Fills in the kind, the template and its sum from the addresses, ports and TTL.
    fn with_template(mut self) -> Self {
        let protocol = if self.udp.is_some() {
            UDP_PROTOCOL
        } else {
            ESP_PROTOCOL
        };
        let t = &mut self.template;
        *t = [0; MAX_OUTER_LEN];
        let ip_len = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                // DF set, ID 0: an atomic datagram (RFC 6864).
                t[0] = 0x45;
                t[6] = 0x40;
                t[8] = self.ttl;
                t[9] = protocol;
                t[12..16].copy_from_slice(&src.octets());
                t[16..20].copy_from_slice(&dst.octets());
                self.kind = if self.udp.is_some() {
                    OuterKind::Ipv4Udp
                } else {
                    OuterKind::Ipv4
                };
                IPV4_HEADER_LEN
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                t[0] = 0x60;
                t[6] = protocol;
                t[7] = self.ttl;
                t[8..24].copy_from_slice(&src.octets());
                t[24..40].copy_from_slice(&dst.octets());
                self.kind = if self.udp.is_some() {
                    OuterKind::Ipv6Udp
                } else {
                    OuterKind::Ipv6
                };
                IPV6_HEADER_LEN
            }
            _ => {
                self.kind = OuterKind::Mismatch;
                return self;
            }
        };
        if let Some((src_port, dst_port)) = self.udp {
            // The length is patched per packet; the checksum stays zero over IPv4, as RFC
            // 3948 section 2.1 recommends, and is filled in over IPv6 once the crypto ran.
            t[ip_len..ip_len + 2].copy_from_slice(&src_port.to_be_bytes());
            t[ip_len + 2..ip_len + 4].copy_from_slice(&dst_port.to_be_bytes());
        }
        self.sum = if ip_len == IPV4_HEADER_LEN {
            !checksum(&[&t[..IPV4_HEADER_LEN]])
        } else {
            0
        };
        self
    }

    /// Writes the outer header at the start of `header` for an outer packet of `total` bytes,
    /// with traffic class (IPv4: type of service) `tos`, DSCP and ECN. `false` if the header
    /// does not fit or the addresses are of two families.
    #[inline(always)]
    fn write(&self, header: &mut [u8], total: usize, tos: u8) -> bool {
        let total = total as u16;
        match self.kind {
            OuterKind::Ipv4 => self.write_v4::<IPV4_HEADER_LEN>(header, total, tos),
            OuterKind::Ipv4Udp => self.write_v4::<IPV4_UDP_LEN>(header, total, tos),
            OuterKind::Ipv6 => self.write_v6::<IPV6_HEADER_LEN>(header, total, tos),
            OuterKind::Ipv6Udp => self.write_v6::<IPV6_UDP_LEN>(header, total, tos),
            OuterKind::Mismatch => false,
        }
    }

    /// The first `N` bytes of the template, copied to the start of `header`.
    #[inline(always)]
    fn stamp<'a, const N: usize>(&self, header: &'a mut [u8]) -> Option<&'a mut [u8; N]> {
        let header = header.first_chunk_mut::<N>()?;
        *header = *self.template.first_chunk::<N>()?;
        Some(header)
    }

    /// [`write`](Self::write) for IPv4 with an `N`-byte header (20, or 28 with UDP).
    #[inline(always)]
    fn write_v4<const N: usize>(&self, header: &mut [u8], total: u16, tos: u8) -> bool {
        let Some(h) = self.stamp::<N>(header) else {
            return false;
        };
        h[1] = tos;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        // The template's sum plus the two changed words: the type of service is the low byte
        // of the first, the total length the second. Two folds bring any such sum back to 16
        // bits.
        let sum = u32::from(self.sum) + u32::from(tos) + u32::from(total);
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        if N > IPV4_HEADER_LEN {
            let udp_len = total.wrapping_sub(IPV4_HEADER_LEN as u16);
            h[IPV4_HEADER_LEN + 4..IPV4_HEADER_LEN + 6].copy_from_slice(&udp_len.to_be_bytes());
        }
        true
    }

    /// [`write`](Self::write) for IPv6 with an `N`-byte header (40, or 48 with UDP).
    #[inline(always)]
    fn write_v6<const N: usize>(&self, header: &mut [u8], total: u16, tclass: u8) -> bool {
        let Some(h) = self.stamp::<N>(header) else {
            return false;
        };
        h[0] = 0x60 | (tclass >> 4);
        h[1] = tclass << 4;
        let payload = total.wrapping_sub(IPV6_HEADER_LEN as u16);
        h[4..6].copy_from_slice(&payload.to_be_bytes());
        if N > IPV6_HEADER_LEN {
            let udp_len = total.wrapping_sub(IPV6_HEADER_LEN as u16);
            h[IPV6_HEADER_LEN + 4..IPV6_HEADER_LEN + 6].copy_from_slice(&udp_len.to_be_bytes());
        }
        true
    }
}

/// Finds inbound SAs by SPI (and destination, for tables keyed by both).
pub trait SaLookup {
    fn inbound_sa(&mut self, spi: u32, dst: IpAddr) -> Option<&mut Sa>;
}

impl SaLookup for HashMap<u32, Sa> {
    fn inbound_sa(&mut self, spi: u32, _dst: IpAddr) -> Option<&mut Sa> {
        self.get_mut(&spi)
    }
}

impl SaLookup for Sa {
    fn inbound_sa(&mut self, spi: u32, _dst: IpAddr) -> Option<&mut Sa> {
        (self.spi == spi).then_some(self)
    }
}

/// Where a decapsulated inner packet lies in the caller's buffer, and what carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapsulated {
    pub spi: u32,
    /// The full (ESN-inferred) sequence number.
    pub sequence: u64,
    pub inner: Range<usize>,
    /// [`IPIP_PROTOCOL`] or [`IPV6_PROTOCOL`].
    pub next_header: u8,
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    /// The peer's UDP source port when encapsulated (its NAT mapping).
    pub udp_src_port: Option<u16>,
    /// The outer header's ECN field (the low two bits of its traffic class), for the caller
    /// to carry into the inner header as RFC 6040 section 4.2 says (RFC 4301 section
    /// 5.1.2.1): a congestion mark set on the way must reach the inner packet, or the
    /// packet be dropped when that is not ECN-capable.
    pub outer_ecn: u8,
}

/// Encapsulates `inner` into a new buffer: outer IP, optional UDP, ESP.
pub fn encapsulate(
    sa: &mut Sa,
    inner: &[u8],
    outer: &OuterHeader,
    now: Nanos,
) -> Result<Vec<u8>, EspError> {
    let headroom = outer.len() + ESP_HEADER_LEN + sa.suite.iv_len();
    let mut buf = vec![0u8; headroom + inner.len() + sa.esp_overhead()];
    buf[headroom..headroom + inner.len()].copy_from_slice(inner);
    let range = encapsulate_in_place(sa, &mut buf, headroom..headroom + inner.len(), outer, now)?;
    buf.truncate(range.end);
    buf.drain(..range.start);
    Ok(buf)
}

/// Encapsulates the inner packet at `buf[inner]` in place and returns where the outer packet
/// lies. Needs `outer.len() + 8 + IV` bytes before `inner.start` and
/// [`Sa::esp_overhead`] bytes after `inner.end` (less suffices for lucky lengths).
///
/// This is [`encapsulate_prepare`], the crypto on the calling core, and
/// [`encapsulate_finish`]; the dataplane runs the three steps over a whole vector of packets
/// so that a crypto device gets them in bursts. Here the three share one body, and an AEAD
/// is called straight from it: nonce and AAD are built on the stack, not carried in a
/// [`SymParams`]. The AES-GCM body is written for GCM's IV and ICV lengths, which are then
/// constants to the compiler, not looked up in the suite per packet.
pub fn encapsulate_in_place(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
) -> Result<Range<usize>, EspError> {
    match &sa.crypto {
        // One copy of the GCM body per outer header length, each with its offsets constant.
        SaCrypto::Gcm { .. } => match outer.kind {
            OuterKind::Ipv4 => encap_gcm(sa, buf, inner, outer, now, IPV4_HEADER_LEN),
            OuterKind::Ipv4Udp => encap_gcm(sa, buf, inner, outer, now, IPV4_UDP_LEN),
            OuterKind::Ipv6 => encap_gcm(sa, buf, inner, outer, now, IPV6_HEADER_LEN),
            OuterKind::Ipv6Udp => encap_gcm(sa, buf, inner, outer, now, IPV6_UDP_LEN),
            OuterKind::Mismatch => encap_gcm(sa, buf, inner, outer, now, outer.len()),
        },
        SaCrypto::CbcHmac(ctx) => {
            let lengths = cbc_lengths(&**ctx);
            let layout = write_encap(sa, buf, inner, outer, now, lengths, outer.len())?;
            let SaCrypto::CbcHmac(ctx) = &sa.crypto else {
                return Err(EspError::Crypto(CryptoError::Backend));
            };
            let params = cbc_encap_params(sa.spi, sa.esn, &**ctx, buf, &layout)?;
            let crypto = sa.crypto_ctx().run_here(&params, buf);
            sa.seq = layout.seq;
            finish_encap(sa, &layout.pending(), buf, crypto)
        }
    }
}

/// [`encapsulate_in_place`] for AES-GCM with an outer header of `outer_len` bytes (a
/// constant where the caller matched on the header's kind). The packet is checked against
/// the buffer once and split into its parts (headers, plaintext, tag), which are then
/// written without further bounds checks.
#[inline(always)]
fn encap_gcm(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
    outer_len: usize,
) -> Result<Range<usize>, EspError> {
    let (next_header, tos, seq) = check_encap(sa, buf, &inner, outer, now)?;
    let SaCrypto::Gcm { aead, salt } = &sa.crypto else {
        return Err(EspError::Crypto(CryptoError::Backend));
    };
    let head_len = outer_len + ESP_HEADER_LEN + AeadAlgorithm::IV_LEN;
    let inner_len = inner.len();
    let pad_len = pad_len(inner_len);
    let text_len = inner_len + pad_len + 2;
    let start = inner
        .start
        .checked_sub(head_len)
        .ok_or(EspError::BufferTooSmall)?;
    // `inner` lies in `buf` (checked above), so this cannot overflow.
    let end = inner.end + pad_len + 2 + TAG_LEN;
    let packet = buf.get_mut(start..end).ok_or(EspError::BufferTooSmall)?;
    let (head, body) = packet
        .split_at_mut_checked(head_len)
        .ok_or(EspError::BufferTooSmall)?;
    // The trailer's one 16-byte store (see `write_encap`) reaches into the tag's room.
    *body
        .get_mut(inner_len..)
        .and_then(|b| b.first_chunk_mut::<16>())
        .ok_or(EspError::BufferTooSmall)? = trailer(pad_len, next_header);
    let (text, tag) = body
        .split_at_mut_checked(text_len)
        .ok_or(EspError::BufferTooSmall)?;
    let tag: &mut [u8; TAG_LEN] = tag.try_into().map_err(|_| EspError::BufferTooSmall)?;
    if pad_len == 15 {
        if let [.., last] = text {
            *last = next_header;
        }
    }

    // The ESP header and the explicit IV (RFC 4106 section 3.1: the 64-bit sequence number,
    // unique per SA and free to produce), after the outer header.
    let (outer_head, esp) = head
        .split_at_mut_checked(outer_len)
        .ok_or(EspError::BufferTooSmall)?;
    let esp: &mut [u8; ESP_HEADER_LEN + AeadAlgorithm::IV_LEN] =
        esp.try_into().map_err(|_| EspError::BufferTooSmall)?;
    let seq_bytes = seq.to_be_bytes();
    esp[..4].copy_from_slice(&sa.spi.to_be_bytes());
    esp[4..8].copy_from_slice(&seq_bytes[4..]);
    esp[8..].copy_from_slice(&seq_bytes);
    if !outer.write(outer_head, end - start, tos) {
        return Err(EspError::FamilyMismatch);
    }

    let nonce = GcmNonce::new(salt, seq_bytes);
    let aad = GcmAad::new(sa.spi, seq, sa.esn);
    let crypto = aead.seal(nonce.get(), aad.get(), text, tag);
    sa.seq = seq;
    let pending = EncapPending {
        range: start..end,
        inner_len,
        udp6_checksum: outer.kind == OuterKind::Ipv6Udp,
    };
    finish_encap(sa, &pending, buf, crypto)
}

/// The checks every encapsulation makes before it writes anything: the SA's direction, the
/// inner packet (which gives the next header and the traffic class to copy), the outer
/// header, the lifetime and the sequence number. Returns the next header, the traffic class
/// and the sequence number the packet is to carry.
#[inline(always)]
fn check_encap(
    sa: &mut Sa,
    buf: &[u8],
    inner: &Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
) -> Result<(u8, u8, u64), EspError> {
    if sa.direction != Direction::Outbound {
        return Err(EspError::WrongDirection);
    }
    // Tunnel mode copies the inner DSCP (RFC 4301 section 5.1.2.1) and, in RFC 6040's
    // normal mode (section 4.1, which updates RFC 4301), the inner ECN field as it is, CE
    // included: the whole traffic class. Read it now: the inner header is about to be
    // encrypted in place.
    let (next_header, tos) = match buf.get(inner.clone()).ok_or(EspError::BufferTooSmall)? {
        [b0, b1, ..] if b0 >> 4 == 4 => (IPIP_PROTOCOL, *b1),
        [b0, b1, ..] if b0 >> 4 == 6 => (IPV6_PROTOCOL, (b0 << 4) | (b1 >> 4)),
        _ => return Err(EspError::InnerNotIp),
    };
    if !outer.families_match() {
        return Err(EspError::FamilyMismatch);
    }
    if sa.past_hard_limit(now) {
        sa.counters.lifetime_drops += 1;
        return Err(EspError::Expired);
    }
    // `seq_limit` is the last number the SA may send: 2^32 - 1, or 2^64 - 1 with ESN.
    if sa.seq >= sa.seq_limit {
        return Err(EspError::SequenceExhausted);
    }
    Ok((next_header, tos, sa.seq + 1))
}

/// Padding for `inner_len` bytes of payload: payload, padding and the two trailer bytes come
/// to a multiple of the AES block for both suites (see `EspSuite::block_len`).
#[inline(always)]
fn pad_len(inner_len: usize) -> usize {
    const ALIGN: usize = CbcAlgorithm::BLOCK_LEN;
    (ALIGN - (inner_len + 2) % ALIGN) % ALIGN
}

/// An encapsulation waiting for its crypto (see [`encapsulate_prepare`]).
#[derive(Debug, Clone)]
pub struct EncapPending {
    /// Where the outer packet lies in the buffer.
    range: Range<usize>,
    inner_len: usize,
    /// UDP over IPv6: the UDP checksum, which covers the ciphertext, is still to be filled.
    udp6_checksum: bool,
}

/// The first half of [`encapsulate_in_place`]: checks the SA and the packet, takes the next
/// sequence number, writes the outer header, the ESP header, IV and trailer, and says what the
/// crypto must do (the outer header is outside what it reads or writes).
/// Run the returned [`SymParams`] on the same buffer with [`Sa::crypto_ctx`], then call
/// [`encapsulate_finish`].
///
/// [`encapsulate_prepare_into`] without a [`SymParams`] at hand.
#[inline]
pub fn encapsulate_prepare(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
) -> Result<(EncapPending, SymParams), EspError> {
    let mut params = SymParams::default();
    let pending = encapsulate_prepare_into(sa, buf, inner, outer, now, &mut params)?;
    Ok((pending, params))
}

/// [`encapsulate_prepare`] that writes what the crypto must do into `params`, typically
/// those of the batch operation ([`SymOp`](crate::crypto::SymOp)) that will run it (as
/// [`decapsulate_prepare_into`] does), and returns the rest. On error `params` is left as
/// it was.
#[inline(always)]
pub fn encapsulate_prepare_into(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
    params: &mut SymParams,
) -> Result<EncapPending, EspError> {
    let layout = match &sa.crypto {
        SaCrypto::Gcm { .. } => {
            let layout = outer.with_len(|outer_len| {
                write_encap(sa, buf, inner, outer, now, GCM_LENGTHS, outer_len)
            })?;
            let SaCrypto::Gcm { salt, .. } = &sa.crypto else {
                return Err(EspError::Crypto(CryptoError::Backend));
            };
            // The explicit IV is the 64-bit sequence number (RFC 4106 section 3.1: unique
            // per SA, and free to produce).
            let iv = layout.seq.to_be_bytes();
            *buf.get_mut(layout.esp_at + ESP_HEADER_LEN..)
                .and_then(|b| b.first_chunk_mut::<8>())
                .ok_or(EspError::BufferTooSmall)? = iv;
            let aad = GcmAad::new(sa.spi, layout.seq, sa.esn);
            let nonce = GcmNonce::new(salt, iv);
            set_gcm_params(params, true, nonce, aad, layout.ct_at..layout.ct_end);
            layout
        }
        SaCrypto::CbcHmac(ctx) => {
            let lengths = cbc_lengths(&**ctx);
            let layout = write_encap(sa, buf, inner, outer, now, lengths, outer.len())?;
            let SaCrypto::CbcHmac(ctx) = &sa.crypto else {
                return Err(EspError::Crypto(CryptoError::Backend));
            };
            *params = cbc_encap_params(sa.spi, sa.esn, &**ctx, buf, &layout)?;
            layout
        }
    };
    sa.seq = layout.seq;
    Ok(layout.pending())
}

/// The per-packet IV and ICV lengths of a suite, passed to the inlined per-packet code so
/// that for AES-GCM they are constants.
#[derive(Clone, Copy)]
struct SuiteLengths {
    iv: usize,
    icv: usize,
}

/// AES-GCM's lengths (RFC 4106: an 8-byte explicit IV, a 16-byte ICV).
const GCM_LENGTHS: SuiteLengths = SuiteLengths {
    iv: AeadAlgorithm::IV_LEN,
    icv: TAG_LEN,
};

/// AES-CBC's lengths: a block of IV, the HMAC's truncated ICV.
fn cbc_lengths(ctx: &dyn CbcHmac) -> SuiteLengths {
    SuiteLengths {
        iv: CbcAlgorithm::BLOCK_LEN,
        icv: ctx.mac().icv_len(),
    }
}

/// Where the parts of an encapsulation lie in the buffer, once [`write_encap`] wrote all but
/// the IV and the ICV.
struct EncapLayout {
    /// The outer header.
    start: usize,
    /// The ESP header, then the IV.
    esp_at: usize,
    /// The plaintext (inner packet, padding, trailer): `ct_at..ct_end`; then the ICV.
    ct_at: usize,
    ct_end: usize,
    end: usize,
    inner_len: usize,
    /// The sequence number the packet carries, not yet taken from the SA.
    seq: u64,
    udp6_checksum: bool,
}

impl EncapLayout {
    fn pending(&self) -> EncapPending {
        EncapPending {
            range: self.start..self.end,
            inner_len: self.inner_len,
            udp6_checksum: self.udp6_checksum,
        }
    }
}

/// What every encapsulation does before the crypto's own part: checks the SA and the packet,
/// picks the next sequence number and writes the outer header, the ESP header (not the IV)
/// and the trailer. Inlined into every caller, so that the suite's `lengths` and the outer
/// header's length `outer_len` are constants where the caller knows them.
#[inline(always)]
fn write_encap(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
    lengths: SuiteLengths,
    outer_len: usize,
) -> Result<EncapLayout, EspError> {
    let (next_header, tos, seq) = check_encap(sa, buf, &inner, outer, now)?;
    let inner_len = inner.len();
    let pad_len = pad_len(inner_len);
    let start = inner
        .start
        .checked_sub(outer_len + ESP_HEADER_LEN + lengths.iv)
        .ok_or(EspError::BufferTooSmall)?;
    let esp_at = start + outer_len;
    let ct_at = inner.start;
    let ct_end = ct_at + inner_len + pad_len + 2;
    let end = ct_end + lengths.icv;
    if end > buf.len() {
        return Err(EspError::BufferTooSmall);
    }

    // Trailer: monotonic padding 1, 2, 3, ..., pad length, next header, taken from a table
    // and stored whole, one 16-byte store (what follows the trailer in it is overwritten by
    // the ICV): an ICV of at least 16 bytes follows, so the 16 bytes after the inner packet
    // lie before `end`, inside the buffer. One store, not three: when the inner packet ends
    // on a block, the cipher's load of the last block is then forwarded from that one store.
    // With 15 bytes of padding the next header is the 17th byte, stored on its own.
    *buf.get_mut(inner.end..)
        .and_then(|tail| tail.first_chunk_mut::<16>())
        .ok_or(EspError::BufferTooSmall)? = trailer(pad_len, next_header);
    if pad_len == 15 {
        *buf.get_mut(ct_end - 1).ok_or(EspError::BufferTooSmall)? = next_header;
    }

    let header = buf
        .get_mut(esp_at..)
        .and_then(|h| h.first_chunk_mut::<ESP_HEADER_LEN>())
        .ok_or(EspError::BufferTooSmall)?;
    header[..4].copy_from_slice(&sa.spi.to_be_bytes());
    header[4..].copy_from_slice(&(seq as u32).to_be_bytes());
    let written = buf
        .get_mut(start..esp_at)
        .is_some_and(|h| outer.write(h, end - start, tos));
    if !written {
        return Err(EspError::BufferTooSmall);
    }
    Ok(EncapLayout {
        start,
        esp_at,
        ct_at,
        ct_end,
        end,
        inner_len,
        seq,
        udp6_checksum: outer.kind == OuterKind::Ipv6Udp,
    })
}

/// AES-CBC with HMAC: writes the IV (and with ESN the high half of the sequence number where
/// the ICV goes) and says what the crypto must do.
fn cbc_encap_params(
    spi: u32,
    esn: bool,
    ctx: &dyn CbcHmac,
    buf: &mut [u8],
    layout: &EncapLayout,
) -> Result<SymParams, EspError> {
    let (esp_at, ct_at, ct_end) = (layout.esp_at, layout.ct_at, layout.ct_end);
    let mut nonce = [0u8; 16];
    nonce[..4].copy_from_slice(&spi.to_be_bytes());
    nonce[8..].copy_from_slice(&layout.seq.to_be_bytes());
    let iv = ctx.derive_iv(&nonce).map_err(EspError::Crypto)?;
    buf[esp_at + ESP_HEADER_LEN..ct_at].copy_from_slice(&iv);
    // The ICV covers the ESP header, IV and ciphertext, and with ESN the high half of the
    // sequence number after them (RFC 4303 section 2.2.1): it goes where the ICV will be
    // written, so the HMAC reads one contiguous range.
    let mut auth = esp_at..ct_end;
    if esn {
        buf[ct_end..ct_end + 4].copy_from_slice(&((layout.seq >> 32) as u32).to_be_bytes());
        auth.end += 4;
    }
    Ok(SymParams {
        seal: true,
        iv,
        text: ct_at..ct_end,
        auth,
        digest_at: ct_end,
        icv_len: ctx.mac().icv_len() as u8,
        ..SymParams::default()
    })
}

/// RFC 4303 section 2.4's default padding: 1, 2, 3, ... (we send at most 15 bytes of it,
/// since payload and trailer are padded to 16; peers may send up to 255).
const PADDING: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

/// The 16 bytes after the inner packet: `pad_len` (at most 15) bytes of [`PADDING`], the pad
/// length and the next header (but for 15 bytes of padding, after which it does not fit);
/// the bytes after them are left as [`PADDING`] has them. Looked up, not shifted into place:
/// a variable shift of 128 bits costs a dozen instructions.
#[inline(always)]
fn trailer(pad_len: usize, next_header: u8) -> [u8; 16] {
    let table = if next_header == IPIP_PROTOCOL {
        &TRAILERS_IPV4
    } else {
        &TRAILERS_IPV6
    };
    match table.get(pad_len) {
        Some(trailer) => *trailer,
        None => trailer_of(pad_len as u8 & 15, next_header),
    }
}

/// [`trailer`] for every padding length, for one next header.
const fn trailers(next_header: u8) -> [[u8; 16]; 16] {
    let mut all = [[0; 16]; 16];
    let mut pad_len = 0;
    while pad_len < 16 {
        all[pad_len] = trailer_of(pad_len as u8, next_header);
        pad_len += 1;
    }
    all
}

/// One entry of [`trailers`].
const fn trailer_of(pad_len: u8, next_header: u8) -> [u8; 16] {
    let mut t = PADDING;
    let at = pad_len as usize;
    if at < 16 {
        t[at] = pad_len;
    }
    if at + 1 < 16 {
        t[at + 1] = next_header;
    }
    t
}

const TRAILERS_IPV4: [[u8; 16]; 16] = trailers(IPIP_PROTOCOL);
const TRAILERS_IPV6: [[u8; 16]; 16] = trailers(IPV6_PROTOCOL);

/// The second half of [`encapsulate_in_place`], once the crypto ran with `crypto` as its
/// result: counts the packet. Returns where the outer packet lies.
pub fn encapsulate_finish(
    sa: &mut Sa,
    pending: &EncapPending,
    buf: &mut [u8],
    crypto: Result<(), CryptoError>,
) -> Result<Range<usize>, EspError> {
    finish_encap(sa, pending, buf, crypto)
}

/// The body of [`encapsulate_finish`], inlined into it and into [`encapsulate_in_place`].
#[inline(always)]
fn finish_encap(
    sa: &mut Sa,
    pending: &EncapPending,
    buf: &mut [u8],
    crypto: Result<(), CryptoError>,
) -> Result<Range<usize>, EspError> {
    if let Err(e) = crypto {
        sa.counters.other_drops += 1;
        return Err(EspError::Crypto(e));
    }
    let range = pending.range.clone();
    if range.end > buf.len() {
        return Err(EspError::BufferTooSmall);
    }
    if pending.udp6_checksum {
        fill_udp6_checksum(buf, range.start, range.end);
    }
    sa.counters.packets += 1;
    sa.counters.bytes += pending.inner_len as u64;
    Ok(range)
}

/// GCM's nonce (RFC 4106 section 4): the salt, then the packet's explicit IV, in 16 bytes of
/// which the cipher reads the first 12. Made as one integer and stored in two 8-byte halves:
/// written as 4 and 8 bytes, it was read back with an 8-byte load that spans both stores,
/// which the processor cannot forward from its store buffer, and each packet waited for it.
struct GcmNonce([u8; 16]);

impl GcmNonce {
    #[inline(always)]
    fn new(salt: &[u8; 4], iv: [u8; 8]) -> Self {
        let salt = u128::from(u32::from_le_bytes(*salt));
        Self((salt | u128::from(u64::from_le_bytes(iv)) << 32).to_le_bytes())
    }

    #[inline(always)]
    fn get(&self) -> &[u8; 12] {
        let Self(bytes) = self;
        bytes.first_chunk().unwrap_or(&[0; 12])
    }
}

/// GCM's additional authenticated data (see [`gcm_aad`]), made as integers for the reason
/// [`GcmNonce`] is: without ESN the SPI and the sequence number are one 8-byte store.
enum GcmAad {
    Plain([u8; 8]),
    Esn([u8; 12]),
}

impl GcmAad {
    #[inline(always)]
    fn new(spi: u32, seq: u64, esn: bool) -> Self {
        if esn {
            let mut aad = [0u8; 12];
            gcm_aad(&mut aad, spi, seq, true);
            Self::Esn(aad)
        } else {
            Self::Plain((u64::from(spi) << 32 | (seq & 0xffff_ffff)).to_be_bytes())
        }
    }

    #[inline(always)]
    fn get(&self) -> &[u8] {
        match self {
            Self::Plain(aad) => aad,
            Self::Esn(aad) => aad,
        }
    }
}

/// Writes GCM's additional authenticated data into `aad` and returns its length: RFC 4106
/// section 5, the SPI and the 32-bit sequence number, or the SPI and the 64-bit ESN.
#[inline(always)]
fn gcm_aad(aad: &mut [u8; 12], spi: u32, seq: u64, esn: bool) -> u8 {
    aad[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        aad[4..].copy_from_slice(&seq.to_be_bytes());
        12
    } else {
        aad[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        8
    }
}

/// Fills in the UDP checksum of ESP-in-UDP over IPv6 whose IPv6 header is at `buf[start..]`
/// and which ends at `end` (RFC 8200 8.1: a UDP checksum of zero is not allowed).
fn fill_udp6_checksum(buf: &mut [u8], start: usize, end: usize) {
    let udp_at = start + IPV6_HEADER_LEN;
    let udp_len = (end - udp_at) as u32;
    let mut pseudo = [0u8; 40];
    pseudo[..32].copy_from_slice(&buf[start + 8..start + IPV6_HEADER_LEN]);
    pseudo[32..36].copy_from_slice(&udp_len.to_be_bytes());
    pseudo[39] = UDP_PROTOCOL;
    let mut sum = checksum(&[&pseudo, &buf[udp_at..end]]);
    if sum == 0 {
        sum = 0xffff;
    }
    buf[udp_at + 6..udp_at + 8].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each a multiple of
/// four bytes long except possibly the last). Summed four bytes at a time: the one's
/// complement sum of 32-bit words folds to that of the 16-bit words.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut words = part.chunks_exact(4);
        for word in &mut words {
            sum += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
        }
        let mut tail = [0u8; 4];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        sum += u64::from(u32::from_be_bytes(tail));
    }
    fold(sum)
}

/// The one's complement of a one's complement sum, folded to 16 bits.
#[inline]
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What decapsulation needs of the outer headers. Not the addresses: they are read where
/// they lie when wanted ([`outer_addresses`]), not carried through the whole decapsulation
/// as two 17-byte `IpAddr`s, which cost some 20 instructions a packet in copies.
struct OuterParsed {
    /// Range of the ESP packet in the buffer.
    esp: Range<usize>,
    udp_src_port: Option<u16>,
    /// The outer ECN field ([`Decapsulated::outer_ecn`]).
    ecn: u8,
}

#[inline(always)]
fn parse_outer(packet: &[u8]) -> Result<OuterParsed, EspError> {
    let version = packet.first().ok_or(EspError::Truncated)? >> 4;
    let (protocol, l4, ecn) = match version {
        4 => {
            let h = packet.get(..IPV4_HEADER_LEN).ok_or(EspError::Truncated)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if ihl < IPV4_HEADER_LEN || total < ihl {
                return Err(EspError::Malformed);
            }
            if total > packet.len() {
                return Err(EspError::Truncated);
            }
            let fragment = u16::from_be_bytes([h[6], h[7]]);
            if fragment & 0x3fff != 0 {
                return Err(EspError::Fragment);
            }
            (h[9], ihl..total, h[1] & 3)
        }
        6 => {
            let h = packet.get(..IPV6_HEADER_LEN).ok_or(EspError::Truncated)?;
            let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let total = IPV6_HEADER_LEN + payload;
            if total > packet.len() {
                return Err(EspError::Truncated);
            }
            (h[6], IPV6_HEADER_LEN..total, (h[1] >> 4) & 3)
        }
        _ => return Err(EspError::Malformed),
    };
    match protocol {
        ESP_PROTOCOL => Ok(OuterParsed {
            esp: l4,
            udp_src_port: None,
            ecn,
        }),
        UDP_PROTOCOL => {
            let u = packet
                .get(l4.start..l4.start + UDP_HEADER_LEN)
                .ok_or(EspError::Truncated)?;
            let src_port = u16::from_be_bytes([u[0], u[1]]);
            let dst_port = u16::from_be_bytes([u[2], u[3]]);
            let udp_len = usize::from(u16::from_be_bytes([u[4], u[5]]));
            if udp_len < UDP_HEADER_LEN || l4.start + udp_len > l4.end {
                return Err(EspError::Malformed);
            }
            if dst_port != NAT_T_PORT {
                return Err(EspError::NotEsp);
            }
            // A NAT keepalive or IKE behind the non-ESP marker is not ours: told apart by
            // `parse_esp`, where the marker is an SPI of zero (one compare it makes anyway).
            Ok(OuterParsed {
                esp: l4.start + UDP_HEADER_LEN..l4.start + udp_len,
                udp_src_port: Some(src_port),
                ecn,
            })
        }
        _ => Err(EspError::NotEsp),
    }
}

/// Decapsulates the outer packet in `packet` in place. On success the inner packet is at
/// `packet[result.inner]`. Errors after the SA was found are counted on it.
///
/// This is [`decapsulate_prepare`], the crypto on the calling core, and
/// [`decapsulate_finish`] (see [`encapsulate_in_place`]), with one SA lookup for the three.
pub fn decapsulate<L: SaLookup + ?Sized>(
    lookup: &mut L,
    packet: &mut [u8],
    now: Nanos,
) -> Result<Decapsulated, EspError> {
    let (outer, spi, seq_low) = parse_esp(packet)?;
    let (_, dst) = outer_addresses(packet).ok_or(EspError::Malformed)?;
    let sa = lookup
        .inbound_sa(spi, dst)
        .ok_or(EspError::UnknownSpi(spi))?;
    decap_with(sa, packet, &outer, spi, seq_low, now).map_err(|error| count_refusal(sa, error))
}

/// A decapsulation waiting for its crypto (see [`decapsulate_prepare`]).
///
/// It holds no outer addresses: [`decapsulate_finish`] reads them back from the outer
/// header, which the crypto leaves alone. Carried here, as they were (two 17-byte `IpAddr`s),
/// they were copied three times per packet (out of the parse, into this, and with this
/// through the caller's batch) for one read, which most callers then did not use.
#[derive(Debug, Clone)]
pub struct DecapPending {
    spi: u32,
    udp_src_port: Option<u16>,
    outer_ecn: u8,
    sequence: u64,
    ct_at: usize,
    ct_end: usize,
}

impl DecapPending {
    /// The SA's SPI, to find it again for the crypto and [`decapsulate_finish`].
    pub fn spi(&self) -> u32 {
        self.spi
    }
}

/// Counts a refusal on the SA it happened on, and passes it on.
#[cold]
fn count_refusal(sa: &mut Sa, error: EspError) -> EspError {
    let counters = &mut sa.counters;
    match error {
        EspError::Replay(_) => counters.replay_drops += 1,
        EspError::Authentication => counters.auth_failures += 1,
        EspError::Expired => counters.lifetime_drops += 1,
        _ => counters.other_drops += 1,
    }
    error
}

/// The first half of [`decapsulate`]: parses the outer packet, finds the SA, checks its
/// lifetime and the replay window, and says what the crypto must do. Run the returned
/// [`SymParams`] on the same buffer with the SA's [`Sa::crypto_ctx`], then call
/// [`decapsulate_finish`] with the same buffer.
///
/// [`decapsulate_prepare_into`] without a [`SymParams`] at hand.
#[inline]
pub fn decapsulate_prepare<L: SaLookup + ?Sized>(
    lookup: &mut L,
    packet: &mut [u8],
    now: Nanos,
) -> Result<(DecapPending, SymParams), EspError> {
    let mut params = SymParams::default();
    let pending = decapsulate_prepare_into(lookup, packet, now, &mut params)?;
    Ok((pending, params))
}

/// [`decapsulate_prepare`] that writes what the crypto must do into `params`, typically
/// those of the batch operation ([`SymOp`](crate::crypto::SymOp)) that will run it, and
/// returns the rest. Returned together, the two came to some 180 bytes, which the caller
/// copied (with a call to `memcpy`) before moving each part where it goes; written in place,
/// nothing is copied. On error `params` is left as it was.
///
/// Inlined into the caller's loop: called, it spent some 15 instructions a packet on its
/// frame and passed its result through memory.
#[inline(always)]
pub fn decapsulate_prepare_into<L: SaLookup + ?Sized>(
    lookup: &mut L,
    packet: &mut [u8],
    now: Nanos,
    params: &mut SymParams,
) -> Result<DecapPending, EspError> {
    let (outer, spi, seq_low) = parse_esp(packet)?;
    let sa = lookup
        .inbound_sa(spi, outer_dst(packet))
        .ok_or(EspError::UnknownSpi(spi))?;
    prepare_with(sa, packet, &outer, spi, seq_low, now, params)
        .map_err(|error| count_refusal(sa, error))
}

/// The outer headers of an ESP packet, its SPI and the low half of its sequence number.
/// One check in the common case: a header of 8 bytes with an SPI other than zero.
#[inline(always)]
fn parse_esp(packet: &[u8]) -> Result<(OuterParsed, u32, u32), EspError> {
    let outer = parse_outer(packet)?;
    // Within the ESP packet (a NAT keepalive's one byte may be followed by a link's padding).
    let header = packet
        .get(outer.esp.clone())
        .and_then(|h| h.first_chunk::<ESP_HEADER_LEN>());
    match header {
        Some(&[s0, s1, s2, s3, q0, q1, q2, q3]) if [s0, s1, s2, s3] != [0; 4] => Ok((
            outer,
            u32::from_be_bytes([s0, s1, s2, s3]),
            u32::from_be_bytes([q0, q1, q2, q3]),
        )),
        _ => Err(refuse_esp_header(packet, &outer)),
    }
}

/// Why [`parse_esp`] found no ESP header: in UDP, a NAT keepalive (one byte, 0xff) or a
/// message behind the non-ESP marker (four zero bytes where the SPI would be: IKE) is not
/// ESP at all; else the header is cut short, or has the SPI zero, which no SA has.
#[cold]
#[inline(never)]
fn refuse_esp_header(packet: &[u8], outer: &OuterParsed) -> EspError {
    let esp = packet.get(outer.esp.clone()).unwrap_or_default();
    if outer.udp_src_port.is_some() && matches!(esp, [0xff] | [0, 0, 0, 0, ..]) {
        return EspError::NotEsp;
    }
    if esp.len() < ESP_HEADER_LEN {
        EspError::Truncated
    } else {
        EspError::Malformed
    }
}

/// [`decapsulate`] once the SA is found: the checks, the crypto and the second half in one
/// body. An AEAD is called straight from it, on the ciphertext and the ICV where they lie.
#[inline(always)]
fn decap_with(
    sa: &mut Sa,
    packet: &mut [u8],
    outer: &OuterParsed,
    spi: u32,
    seq_low: u32,
    now: Nanos,
) -> Result<Decapsulated, EspError> {
    match &sa.crypto {
        SaCrypto::Gcm { .. } => decap_gcm(sa, packet, outer, spi, seq_low, now),
        SaCrypto::CbcHmac(ctx) => {
            let layout = check_decap(sa, outer, seq_low, now, cbc_lengths(&**ctx))?;
            let params = cbc_decap_params(sa.esn, packet, &layout)?;
            let crypto = sa.crypto_ctx().run_here(&params, packet);
            let pending = layout.pending(spi, outer);
            let (src, dst) = outer_addresses(packet).ok_or(EspError::Malformed)?;
            finish_with(sa, &pending, packet, crypto, src, dst)
        }
    }
}

/// [`decap_with`] for AES-GCM: the ESP packet is split once into its parts (header and IV,
/// ciphertext, tag), which are then read without further bounds checks, and the inner packet
/// is checked in the plaintext where it lies.
#[inline(always)]
fn decap_gcm(
    sa: &mut Sa,
    packet: &mut [u8],
    outer: &OuterParsed,
    spi: u32,
    seq_low: u32,
    now: Nanos,
) -> Result<Decapsulated, EspError> {
    let layout = check_decap(sa, outer, seq_low, now, GCM_LENGTHS)?;
    let SaCrypto::Gcm { aead, salt } = &sa.crypto else {
        return Err(EspError::Crypto(CryptoError::Backend));
    };
    // The outer headers apart from the ESP packet, to read the addresses from once the
    // crypto has run.
    let (outer_bytes, rest) = packet
        .split_at_mut_checked(layout.esp_at)
        .ok_or(EspError::Truncated)?;
    // `check_decap` found the ESP packet longer than its header, IV and ICV.
    let esp = rest
        .get_mut(..layout.esp_end - layout.esp_at)
        .ok_or(EspError::Truncated)?;
    let (head, body) = esp
        .split_at_mut_checked(ESP_HEADER_LEN + AeadAlgorithm::IV_LEN)
        .ok_or(EspError::Truncated)?;
    let (text, tag) = body
        .split_at_mut_checked(layout.ct_end - layout.ct_at)
        .ok_or(EspError::Truncated)?;
    let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| EspError::Truncated)?;
    let head: &[u8; ESP_HEADER_LEN + AeadAlgorithm::IV_LEN] =
        (&*head).try_into().map_err(|_| EspError::Truncated)?;
    let [.., i0, i1, i2, i3, i4, i5, i6, i7] = *head;
    let nonce = GcmNonce::new(salt, [i0, i1, i2, i3, i4, i5, i6, i7]);
    let aad = GcmAad::new(spi, layout.sequence, sa.esn);
    let crypto = aead.open(nonce.get(), aad.get(), text, tag);
    let (inner_len, next_header) = finish_plaintext(sa, layout.sequence, text, crypto)?;
    // Read last, straight into the result (`parse_outer` checked the header, so this does
    // not fail).
    let (outer_src, outer_dst) = outer_addresses(outer_bytes).ok_or(EspError::Malformed)?;
    Ok(Decapsulated {
        spi,
        sequence: layout.sequence,
        inner: layout.ct_at..layout.ct_at + inner_len,
        next_header,
        outer_src,
        outer_dst,
        udp_src_port: outer.udp_src_port,
        outer_ecn: outer.ecn,
    })
}

/// Where the parts of an inbound ESP packet lie, and its full sequence number.
struct DecapLayout {
    esp_at: usize,
    /// The ciphertext: `ct_at..ct_end`; then the ICV up to `esp_end`.
    ct_at: usize,
    ct_end: usize,
    esp_end: usize,
    sequence: u64,
}

impl DecapLayout {
    fn pending(&self, spi: u32, outer: &OuterParsed) -> DecapPending {
        DecapPending {
            spi,
            udp_src_port: outer.udp_src_port,
            outer_ecn: outer.ecn,
            sequence: self.sequence,
            ct_at: self.ct_at,
            ct_end: self.ct_end,
        }
    }
}

/// The checks before the crypto: direction, lifetime, lengths, and the replay window (which
/// also gives the full sequence number).
#[inline(always)]
fn check_decap(
    sa: &Sa,
    outer: &OuterParsed,
    seq_low: u32,
    now: Nanos,
    lengths: SuiteLengths,
) -> Result<DecapLayout, EspError> {
    if sa.direction != Direction::Inbound {
        return Err(EspError::WrongDirection);
    }
    if sa.past_hard_limit(now) {
        return Err(EspError::Expired);
    }
    let esp = outer.esp.clone();
    let ct_at = esp.start + ESP_HEADER_LEN + lengths.iv;
    let ct_end = esp
        .end
        .checked_sub(lengths.icv)
        .filter(|&e| e >= ct_at + 2)
        .ok_or(EspError::Truncated)?;
    // CBC's ciphertext is whole blocks (its IV is one block long; GCM's is 8 bytes).
    if lengths.iv == CbcAlgorithm::BLOCK_LEN && (ct_end - ct_at) % CbcAlgorithm::BLOCK_LEN != 0 {
        return Err(EspError::Truncated);
    }
    Ok(DecapLayout {
        esp_at: esp.start,
        ct_at,
        ct_end,
        esp_end: esp.end,
        sequence: sa.replay.check(seq_low)?,
    })
}

/// AES-CBC with HMAC: what the crypto must do. With ESN the high half of the sequence
/// number goes where the ICV was (saved aside first), so the HMAC reads one range.
fn cbc_decap_params(
    esn: bool,
    packet: &mut [u8],
    layout: &DecapLayout,
) -> Result<SymParams, EspError> {
    let (esp_at, ct_at, ct_end) = (layout.esp_at, layout.ct_at, layout.ct_end);
    let icv_len = layout.esp_end - ct_end;
    let mut params = SymParams {
        seal: false,
        text: ct_at..ct_end,
        auth: esp_at..ct_end,
        icv_len: icv_len as u8,
        ..SymParams::default()
    };
    params
        .expected
        .get_mut(..icv_len)
        .ok_or(EspError::Truncated)?
        .copy_from_slice(&packet[ct_end..layout.esp_end]);
    params
        .iv
        .copy_from_slice(&packet[esp_at + ESP_HEADER_LEN..ct_at]);
    if esn {
        packet[ct_end..ct_end + 4].copy_from_slice(&((layout.sequence >> 32) as u32).to_be_bytes());
        params.auth.end += 4;
    }
    Ok(params)
}

/// The first half of [`decapsulate`] once the SA is found, for the batch path; inlined as
/// [`encapsulate_prepare`] is.
#[inline(always)]
fn prepare_with(
    sa: &mut Sa,
    packet: &mut [u8],
    outer: &OuterParsed,
    spi: u32,
    seq_low: u32,
    now: Nanos,
    params: &mut SymParams,
) -> Result<DecapPending, EspError> {
    match &sa.crypto {
        SaCrypto::Gcm { salt, .. } => {
            prepare_gcm(sa, salt, packet, outer, spi, seq_low, now, params)
        }
        SaCrypto::CbcHmac(ctx) => {
            let layout = check_decap(sa, outer, seq_low, now, cbc_lengths(&**ctx))?;
            *params = cbc_decap_params(sa.esn, packet, &layout)?;
            Ok(layout.pending(spi, outer))
        }
    }
}

/// [`prepare_with`] for AES-GCM (RFC 4106), reading the packet as [`decap_gcm`] does: the
/// ESP header and the IV as one 16-byte chunk. The nonce and the AAD are made as whole
/// values ([`GcmNonce`], whose last 4 bytes are zero, fills the 16-byte IV field in one
/// store; [`GcmAad`] without ESN is one 8-byte store), for the reason given at
/// [`GcmNonce`]: built piecewise in a scratch array and copied over, as they were, the
/// wider loads that copy them (here, then into the device's operation) spanned two stores.
///
/// The tag stays where it lies and is read there (`tag_in_place`): it is not copied into
/// `expected`, which is left as it was.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn prepare_gcm(
    sa: &Sa,
    salt: &[u8; 4],
    packet: &[u8],
    outer: &OuterParsed,
    spi: u32,
    seq_low: u32,
    now: Nanos,
    params: &mut SymParams,
) -> Result<DecapPending, EspError> {
    let layout = check_decap(sa, outer, seq_low, now, GCM_LENGTHS)?;
    let head = packet
        .get(layout.esp_at..)
        .and_then(|h| h.first_chunk::<{ ESP_HEADER_LEN + AeadAlgorithm::IV_LEN }>())
        .ok_or(EspError::Truncated)?;
    // The tag ends the ESP packet, which lies in `packet` (`parse_outer`); checked all the
    // same, as cheaply as a compare can.
    if layout.esp_end > packet.len() {
        return Err(EspError::Truncated);
    }
    let [.., i0, i1, i2, i3, i4, i5, i6, i7] = *head;
    let nonce = GcmNonce::new(salt, [i0, i1, i2, i3, i4, i5, i6, i7]);
    let aad = GcmAad::new(spi, layout.sequence, sa.esn);
    set_gcm_params(params, false, nonce, aad, layout.ct_at..layout.ct_end);
    Ok(layout.pending(spi, outer))
}

/// Writes an AES-GCM operation's parameters for the ciphertext `text` with the ICV right
/// after it: sealed (the tag written there) or opened (the tag read where it lies). Every
/// field the crypto reads is written, as whole values: the AAD field whole, its unused tail
/// zero (an 8-byte and a 4-byte store), so the cipher's loads of it are forwarded.
#[inline(always)]
fn set_gcm_params(
    params: &mut SymParams,
    seal: bool,
    GcmNonce(nonce): GcmNonce,
    aad: GcmAad,
    text: std::ops::Range<usize>,
) {
    params.aad_len = match aad {
        GcmAad::Plain(aad) => {
            let (head, tail) = params.aad.split_at_mut(8);
            head.copy_from_slice(&aad);
            tail.fill(0);
            8
        }
        GcmAad::Esn(aad) => {
            params.aad = aad;
            12
        }
    };
    params.seal = seal;
    params.iv = nonce;
    params.digest_at = text.end;
    params.text = text;
    params.auth = 0..0;
    params.tag_in_place = !seal;
    params.icv_len = TAG_LEN as u8;
}

/// The second half of [`decapsulate`], once the crypto ran with `crypto` as its result:
/// moves the replay window, checks the trailer and counts the packet. `packet` is the
/// buffer [`decapsulate_prepare`] saw, outer header included. On success the inner packet
/// is at `packet[result.inner]`.
///
/// Inlined, as [`decapsulate_prepare_into`] is: what the caller does not read of the result
/// (most callers read the outer addresses only to trace the packet) is then not made.
#[inline(always)]
pub fn decapsulate_finish<L: SaLookup + ?Sized>(
    lookup: &mut L,
    pending: &DecapPending,
    packet: &mut [u8],
    crypto: Result<(), CryptoError>,
) -> Result<Decapsulated, EspError> {
    let (src, dst) = outer_addresses(packet).ok_or(EspError::Truncated)?;
    let sa = lookup
        .inbound_sa(pending.spi, dst)
        .ok_or(EspError::UnknownSpi(pending.spi))?;
    finish_with(sa, pending, packet, crypto, src, dst).map_err(|error| count_refusal(sa, error))
}

/// The outer destination for [`SaLookup::inbound_sa`], of a header [`parse_outer`] accepted
/// (the unspecified address for any other, which is never asked for). Infallible, so that
/// where the lookup does not use it (tables by SPI alone), it is not even read.
#[inline(always)]
fn outer_dst(packet: &[u8]) -> IpAddr {
    outer_addresses(packet).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |(_, dst)| dst)
}

/// The source and destination of the outer header at the start of `packet`, which
/// [`parse_outer`] checked (see [`OuterParsed`], [`DecapPending`]).
#[inline(always)]
fn outer_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => {
            let h = packet.first_chunk::<IPV4_HEADER_LEN>()?;
            let [.., s0, s1, s2, s3, d0, d1, d2, d3] = *h;
            Some((
                IpAddr::V4(Ipv4Addr::new(s0, s1, s2, s3)),
                IpAddr::V4(Ipv4Addr::new(d0, d1, d2, d3)),
            ))
        }
        6 => {
            let h = packet.first_chunk::<IPV6_HEADER_LEN>()?;
            let src: [u8; 16] = *h[8..].first_chunk()?;
            let dst: [u8; 16] = *h[24..].first_chunk()?;
            Some((
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
            ))
        }
        _ => None,
    }
}

/// Whether the `pad_len` bytes before the plaintext's last two (pad length, next header) are
/// RFC 4303's default padding 1, 2, 3, ... Up to 14 bytes of it (all we send, and more than
/// peers padding to 4 bytes send) are checked with one masked compare of the plaintext's last
/// 16 bytes; longer padding, or a plaintext shorter than 16 bytes, byte by byte.
#[inline(always)]
fn padding_is_monotonic(text: &[u8], pad_len: usize) -> bool {
    match (text.last_chunk::<16>(), PADDING_CHECKS.get(pad_len)) {
        (Some(last), Some(&(expected, mask))) => u128::from_le_bytes(*last) & mask == expected,
        _ => {
            let end = text.len().saturating_sub(2);
            end.checked_sub(pad_len)
                .and_then(|start| text.get(start..end))
                .is_some_and(|padding| {
                    padding
                        .iter()
                        .zip(1..=u8::MAX)
                        .all(|(&byte, want)| byte == want)
                })
        }
    }
}

/// For each padding length up to 14: the plaintext's last 16 bytes (as a little-endian
/// integer) when padded so, and the mask that keeps only the padding (not the inner packet
/// before it, nor the pad length and next header after it).
const PADDING_CHECKS: [(u128, u128); 15] = {
    let mut checks = [(0, 0); 15];
    let mut pad_len = 0;
    while pad_len < 15 {
        let mut bytes = [0u8; 16];
        let mut mask = [0u8; 16];
        let mut k = 0;
        while k < pad_len {
            bytes[14 - pad_len + k] = k as u8 + 1;
            mask[14 - pad_len + k] = 0xff;
            k += 1;
        }
        checks[pad_len] = (u128::from_le_bytes(bytes), u128::from_le_bytes(mask));
        pad_len += 1;
    }
    checks
};

/// The second half once the SA is found, with the outer addresses.
#[inline(always)]
fn finish_with(
    sa: &mut Sa,
    pending: &DecapPending,
    packet: &mut [u8],
    crypto: Result<(), CryptoError>,
    outer_src: IpAddr,
    outer_dst: IpAddr,
) -> Result<Decapsulated, EspError> {
    let (ct_at, ct_end) = (pending.ct_at, pending.ct_end);
    let text = match packet.get(ct_at..ct_end) {
        Some(text) => text,
        // Crypto errors first, as for a plaintext that is there.
        None => return crypto_result(crypto).and(Err(EspError::Truncated)),
    };
    let (inner_len, next_header) = finish_plaintext(sa, pending.sequence, text, crypto)?;
    Ok(Decapsulated {
        spi: pending.spi,
        sequence: pending.sequence,
        inner: ct_at..ct_at + inner_len,
        next_header,
        outer_src,
        outer_dst,
        udp_src_port: pending.udp_src_port,
        outer_ecn: pending.outer_ecn,
    })
}

/// The crypto's result as ESP reports it.
#[inline(always)]
fn crypto_result(crypto: Result<(), CryptoError>) -> Result<(), EspError> {
    match crypto {
        Ok(()) => Ok(()),
        Err(CryptoError::Authentication) => Err(EspError::Authentication),
        Err(e) => Err(EspError::Crypto(e)),
    }
}

/// Everything after the crypto of an inbound packet whose plaintext (inner packet, padding,
/// trailer) is `text`: the crypto's verdict, the replay window (only an authenticated packet
/// may move it), the trailer and the inner packet's version; counts the packet. Returns the
/// inner packet's length and its next header.
#[inline(always)]
fn finish_plaintext(
    sa: &mut Sa,
    sequence: u64,
    text: &[u8],
    crypto: Result<(), CryptoError>,
) -> Result<(usize, u8), EspError> {
    crypto_result(crypto)?;
    let [.., pad_len, next_header] = *text else {
        return Err(EspError::Truncated);
    };
    sa.replay.accept(sequence)?;

    let inner_len = (text.len() - 2)
        .checked_sub(usize::from(pad_len))
        .ok_or(EspError::BadTrailer)?;
    if !padding_is_monotonic(text, usize::from(pad_len)) {
        return Err(EspError::BadTrailer);
    }
    let version = text.first().map(|b| b >> 4);
    match (next_header, version) {
        (IPIP_PROTOCOL, Some(4)) | (IPV6_PROTOCOL, Some(6)) if inner_len > 0 => {}
        (IPIP_PROTOCOL | IPV6_PROTOCOL, _) => return Err(EspError::InnerNotIp),
        (NO_NEXT_HEADER, _) => return Err(EspError::Dummy),
        (other, _) => return Err(EspError::UnsupportedNextHeader(other)),
    }
    sa.counters.packets += 1;
    sa.counters.bytes += inner_len as u64;
    Ok((inner_len, next_header))
}

#[cfg(test)]
mod tests;
