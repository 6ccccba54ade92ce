//! Tunnel-mode encapsulation and decapsulation.

use super::sa::{Direction, EspSuite, Nanos, Sa, SaCrypto};
use super::EspError;
use crate::crypto::{AeadAlgorithm, CbcHmac, CryptoError, SymParams};
use std::collections::HashMap;
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
const ESP_HEADER_LEN: usize = 8;
const TAG_LEN: usize = AeadAlgorithm::TAG_LEN;

/// The outer header to put around ESP: tunnel endpoints and, behind a NAT, UDP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `(source port, destination port)` for UDP encapsulation (RFC 3948).
    pub udp: Option<(u16, u16)>,
    pub ttl: u8,
}

impl OuterHeader {
    pub fn new(src: IpAddr, dst: IpAddr) -> Self {
        Self {
            src,
            dst,
            udp: None,
            ttl: 64,
        }
    }

    pub fn with_udp(mut self, src_port: u16, dst_port: u16) -> Self {
        self.udp = Some((src_port, dst_port));
        self
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
        self.src.is_ipv4() == self.dst.is_ipv4()
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
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
/// [`SymParams`].
pub fn encapsulate_in_place(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
) -> Result<Range<usize>, EspError> {
    let layout = write_encap(sa, buf, inner, outer, now)?;
    let crypto = match &sa.crypto {
        SaCrypto::Gcm { aead, salt } => {
            let (mut nonce, mut aad) = ([0u8; 12], [0u8; 12]);
            let aad_len =
                gcm_encap_nonce(sa.spi, sa.esn, salt, buf, &layout, &mut nonce, &mut aad)?;
            let aad = &aad[..usize::from(aad_len)];
            let (text, tag) = buf
                .get_mut(layout.ct_at..layout.end)
                .map(|b| b.split_at_mut(layout.ct_end - layout.ct_at))
                .and_then(|(text, tag)| Some((text, tag.first_chunk_mut::<TAG_LEN>()?)))
                .ok_or(EspError::BufferTooSmall)?;
            aead.seal(&nonce, aad, text, tag)
        }
        SaCrypto::CbcHmac(ctx) => {
            let params = cbc_encap_params(sa.spi, sa.esn, &**ctx, buf, &layout)?;
            sa.crypto_ctx().run_here(&params, buf)
        }
    };
    sa.seq = layout.seq;
    finish_encap(sa, &layout.pending(), buf, crypto)
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
pub fn encapsulate_prepare(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
) -> Result<(EncapPending, SymParams), EspError> {
    let layout = write_encap(sa, buf, inner, outer, now)?;
    let params = match &sa.crypto {
        SaCrypto::Gcm { salt, .. } => {
            let mut params = SymParams {
                seal: true,
                text: layout.ct_at..layout.ct_end,
                digest_at: layout.ct_end,
                icv_len: TAG_LEN as u8,
                ..SymParams::default()
            };
            let mut nonce = [0u8; 12];
            params.aad_len = gcm_encap_nonce(
                sa.spi,
                sa.esn,
                salt,
                buf,
                &layout,
                &mut nonce,
                &mut params.aad,
            )?;
            params.iv[..12].copy_from_slice(&nonce);
            params
        }
        SaCrypto::CbcHmac(ctx) => cbc_encap_params(sa.spi, sa.esn, &**ctx, buf, &layout)?,
    };
    sa.seq = layout.seq;
    Ok((layout.pending(), params))
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
/// and the trailer. Inlined into both callers, so that the one-packet path keeps the layout
/// in registers.
#[inline(always)]
fn write_encap(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
) -> Result<EncapLayout, EspError> {
    if sa.direction != Direction::Outbound {
        return Err(EspError::WrongDirection);
    }
    // Tunnel mode copies the inner DSCP (RFC 4301 section 5.1.2.1); ECN stays 0 here.
    // Read it now: the inner header is about to be encrypted in place.
    let (next_header, dscp) = match buf.get(inner.clone()).ok_or(EspError::BufferTooSmall)? {
        [b0, b1, ..] if b0 >> 4 == 4 => (IPIP_PROTOCOL, b1 & 0xfc),
        [b0, b1, ..] if b0 >> 4 == 6 => (IPV6_PROTOCOL, ((b0 << 4) | (b1 >> 4)) & 0xfc),
        _ => return Err(EspError::InnerNotIp),
    };
    if !outer.families_match() {
        return Err(EspError::FamilyMismatch);
    }
    if sa.past_hard_limit(now) {
        sa.counters.lifetime_drops += 1;
        return Err(EspError::Expired);
    }
    let seq = sa.seq.checked_add(1).ok_or(EspError::SequenceExhausted)?;
    if !sa.esn && seq > u64::from(u32::MAX) {
        return Err(EspError::SequenceExhausted);
    }

    let suite = sa.suite;
    let inner_len = inner.len();
    let align = suite.block_len();
    let pad_len = (align - (inner_len + 2) % align) % align;
    let start = inner
        .start
        .checked_sub(outer.len() + ESP_HEADER_LEN + suite.iv_len())
        .ok_or(EspError::BufferTooSmall)?;
    let esp_at = start + outer.len();
    let ct_at = inner.start;
    let ct_end = ct_at + inner_len + pad_len + 2;
    let end = ct_end + suite.icv_len();
    if end > buf.len() {
        return Err(EspError::BufferTooSmall);
    }

    // Trailer: monotonic padding 1, 2, 3, ..., pad length, next header. The pattern is
    // stored whole, one 16-byte store: an ICV of at least 16 bytes follows the trailer, so
    // the 16 bytes after the inner packet lie before `end`, inside the buffer.
    *buf.get_mut(inner.end..)
        .and_then(|tail| tail.first_chunk_mut::<16>())
        .ok_or(EspError::BufferTooSmall)? = PADDING;
    buf[ct_end - 2] = pad_len as u8;
    buf[ct_end - 1] = next_header;

    let header = buf
        .get_mut(esp_at..)
        .and_then(|h| h.first_chunk_mut::<ESP_HEADER_LEN>())
        .ok_or(EspError::BufferTooSmall)?;
    header[..4].copy_from_slice(&sa.spi.to_be_bytes());
    header[4..].copy_from_slice(&(seq as u32).to_be_bytes());
    write_outer(buf, start, end, outer, dscp);
    Ok(EncapLayout {
        start,
        esp_at,
        ct_at,
        ct_end,
        end,
        inner_len,
        seq,
        udp6_checksum: outer.udp.is_some() && outer.src.is_ipv6(),
    })
}

/// GCM (RFC 4106): writes the explicit IV, fills in the nonce and the AAD and returns the
/// AAD's length. The IV is the 64-bit sequence number: unique per SA, as section 3.1
/// requires, and free to produce.
#[inline(always)]
fn gcm_encap_nonce(
    spi: u32,
    esn: bool,
    salt: &[u8; 4],
    buf: &mut [u8],
    layout: &EncapLayout,
    nonce: &mut [u8; 12],
    aad: &mut [u8; 12],
) -> Result<u8, EspError> {
    let iv = layout.seq.to_be_bytes();
    *buf.get_mut(layout.esp_at + ESP_HEADER_LEN..)
        .and_then(|b| b.first_chunk_mut::<8>())
        .ok_or(EspError::BufferTooSmall)? = iv;
    nonce[..4].copy_from_slice(salt);
    nonce[4..].copy_from_slice(&iv);
    Ok(gcm_aad(aad, spi, layout.seq, esn))
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

/// Writes the outer IP (and UDP) header into `buf[start..]`; the packet ends at `end`.
#[inline(always)]
fn write_outer(buf: &mut [u8], start: usize, end: usize, outer: &OuterHeader, dscp: u8) {
    let total = end - start;
    let protocol = if outer.udp.is_some() {
        UDP_PROTOCOL
    } else {
        ESP_PROTOCOL
    };
    let ip_len = match (outer.src, outer.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            // The header as five 32-bit words, the checksum word zero; DF set, ID 0: an
            // atomic datagram (RFC 6864).
            let mut words = [
                u32::from_be_bytes([0x45, dscp, (total >> 8) as u8, total as u8]),
                0x0000_4000,
                u32::from_be_bytes([outer.ttl, protocol, 0, 0]),
                u32::from(src),
                u32::from(dst),
            ];
            let sum: u64 = words.iter().map(|&w| u64::from(w)).sum();
            words[2] |= u32::from(fold(sum));
            if let Some(h) = buf
                .get_mut(start..)
                .and_then(|b| b.first_chunk_mut::<IPV4_HEADER_LEN>())
            {
                for (bytes, word) in h.chunks_exact_mut(4).zip(words) {
                    bytes.copy_from_slice(&word.to_be_bytes());
                }
            }
            IPV4_HEADER_LEN
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let h = &mut buf[start..start + IPV6_HEADER_LEN];
            h[0] = 0x60 | (dscp >> 4);
            h[1] = dscp << 4;
            h[2..4].copy_from_slice(&[0, 0]);
            h[4..6].copy_from_slice(&((total - IPV6_HEADER_LEN) as u16).to_be_bytes());
            h[6] = protocol;
            h[7] = outer.ttl;
            h[8..24].copy_from_slice(&src.octets());
            h[24..40].copy_from_slice(&dst.octets());
            IPV6_HEADER_LEN
        }
        // Checked by the caller.
        _ => return,
    };
    if let Some((src_port, dst_port)) = outer.udp {
        let udp_at = start + ip_len;
        let udp_len = (end - udp_at) as u16;
        let u = &mut buf[udp_at..udp_at + UDP_HEADER_LEN];
        u[0..2].copy_from_slice(&src_port.to_be_bytes());
        u[2..4].copy_from_slice(&dst_port.to_be_bytes());
        u[4..6].copy_from_slice(&udp_len.to_be_bytes());
        // IPv4: zero checksum, as RFC 3948 section 2.1 recommends. IPv6 requires one, over
        // the ciphertext: [`fill_udp6_checksum`] once the crypto ran.
        u[6..8].copy_from_slice(&[0, 0]);
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

struct OuterParsed {
    src: IpAddr,
    dst: IpAddr,
    /// Range of the ESP packet in the buffer.
    esp: Range<usize>,
    udp_src_port: Option<u16>,
}

#[inline(always)]
fn parse_outer(packet: &[u8]) -> Result<OuterParsed, EspError> {
    let version = packet.first().ok_or(EspError::Truncated)? >> 4;
    let (src, dst, protocol, l4) = match version {
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
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), h[9], ihl..total)
        }
        6 => {
            let h = packet.get(..IPV6_HEADER_LEN).ok_or(EspError::Truncated)?;
            let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let total = IPV6_HEADER_LEN + payload;
            if total > packet.len() {
                return Err(EspError::Truncated);
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&h[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                h[6],
                IPV6_HEADER_LEN..total,
            )
        }
        _ => return Err(EspError::Malformed),
    };
    match protocol {
        ESP_PROTOCOL => Ok(OuterParsed {
            src,
            dst,
            esp: l4,
            udp_src_port: None,
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
            let payload = l4.start + UDP_HEADER_LEN..l4.start + udp_len;
            match &packet[payload.clone()] {
                // NAT keepalive or IKE behind the non-ESP marker: not ours.
                [0xff] | [0, 0, 0, 0, ..] => Err(EspError::NotEsp),
                _ => Ok(OuterParsed {
                    src,
                    dst,
                    esp: payload,
                    udp_src_port: Some(src_port),
                }),
            }
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
    let sa = lookup
        .inbound_sa(spi, outer.dst)
        .ok_or(EspError::UnknownSpi(spi))?;
    decap_with(sa, packet, &outer, spi, seq_low, now).map_err(|error| count_refusal(sa, error))
}

/// A decapsulation waiting for its crypto (see [`decapsulate_prepare`]).
#[derive(Debug, Clone)]
pub struct DecapPending {
    spi: u32,
    sequence: u64,
    ct_at: usize,
    ct_end: usize,
    outer_src: IpAddr,
    outer_dst: IpAddr,
    udp_src_port: Option<u16>,
}

impl DecapPending {
    /// The SA's SPI, to find it again for the crypto and [`decapsulate_finish`].
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The outer destination, as [`SaLookup::inbound_sa`] wants it.
    pub fn outer_dst(&self) -> IpAddr {
        self.outer_dst
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
/// [`decapsulate_finish`].
pub fn decapsulate_prepare<L: SaLookup + ?Sized>(
    lookup: &mut L,
    packet: &mut [u8],
    now: Nanos,
) -> Result<(DecapPending, SymParams), EspError> {
    let (outer, spi, seq_low) = parse_esp(packet)?;
    let sa = lookup
        .inbound_sa(spi, outer.dst)
        .ok_or(EspError::UnknownSpi(spi))?;
    prepare_with(sa, packet, &outer, spi, seq_low, now).map_err(|error| count_refusal(sa, error))
}

/// The outer headers of an ESP packet, its SPI and the low half of its sequence number.
#[inline(always)]
fn parse_esp(packet: &[u8]) -> Result<(OuterParsed, u32, u32), EspError> {
    let outer = parse_outer(packet)?;
    let header = packet
        .get(outer.esp.start..)
        .and_then(|h| h.first_chunk::<ESP_HEADER_LEN>())
        .ok_or(EspError::Truncated)?;
    let [s0, s1, s2, s3, q0, q1, q2, q3] = *header;
    let spi = u32::from_be_bytes([s0, s1, s2, s3]);
    if spi == 0 {
        return Err(EspError::Malformed);
    }
    Ok((outer, spi, u32::from_be_bytes([q0, q1, q2, q3])))
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
    let layout = check_decap(sa, outer, seq_low, now)?;
    let crypto = match &sa.crypto {
        SaCrypto::Gcm { aead, salt } => {
            let (mut nonce, mut aad) = ([0u8; 12], [0u8; 12]);
            let aad_len =
                gcm_decap_nonce(spi, sa.esn, salt, packet, &layout, &mut nonce, &mut aad)?;
            let (text, tag) = packet
                .get_mut(layout.ct_at..layout.esp_end)
                .map(|b| b.split_at_mut(layout.ct_end - layout.ct_at))
                .and_then(|(text, tag)| Some((text, tag.first_chunk::<TAG_LEN>()?)))
                .ok_or(EspError::Truncated)?;
            aead.open(&nonce, &aad[..usize::from(aad_len)], text, tag)
        }
        SaCrypto::CbcHmac(_) => {
            let params = cbc_decap_params(sa.esn, packet, &layout)?;
            sa.crypto_ctx().run_here(&params, packet)
        }
    };
    finish_with(sa, &layout.pending(spi, outer), packet, crypto)
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
            sequence: self.sequence,
            ct_at: self.ct_at,
            ct_end: self.ct_end,
            outer_src: outer.src,
            outer_dst: outer.dst,
            udp_src_port: outer.udp_src_port,
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
) -> Result<DecapLayout, EspError> {
    if sa.direction != Direction::Inbound {
        return Err(EspError::WrongDirection);
    }
    if sa.past_hard_limit(now) {
        return Err(EspError::Expired);
    }
    let suite = sa.suite;
    let esp = outer.esp.clone();
    let ct_at = esp.start + ESP_HEADER_LEN + suite.iv_len();
    let ct_end = esp
        .end
        .checked_sub(suite.icv_len())
        .filter(|&e| e >= ct_at + 2)
        .ok_or(EspError::Truncated)?;
    if let EspSuite::CbcHmac(..) = suite {
        if (ct_end - ct_at) % 16 != 0 {
            return Err(EspError::Truncated);
        }
    }
    Ok(DecapLayout {
        esp_at: esp.start,
        ct_at,
        ct_end,
        esp_end: esp.end,
        sequence: sa.replay.check(seq_low)?,
    })
}

/// GCM (RFC 4106): fills in the nonce (the salt and the packet's explicit IV) and the AAD,
/// and returns the AAD's length.
#[inline(always)]
fn gcm_decap_nonce(
    spi: u32,
    esn: bool,
    salt: &[u8; 4],
    packet: &[u8],
    layout: &DecapLayout,
    nonce: &mut [u8; 12],
    aad: &mut [u8; 12],
) -> Result<u8, EspError> {
    let iv = packet
        .get(layout.esp_at + ESP_HEADER_LEN..)
        .and_then(|b| b.first_chunk::<8>())
        .ok_or(EspError::Truncated)?;
    nonce[..4].copy_from_slice(salt);
    nonce[4..].copy_from_slice(iv);
    Ok(gcm_aad(aad, spi, layout.sequence, esn))
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

/// The first half of [`decapsulate`] once the SA is found, for the batch path.
fn prepare_with(
    sa: &mut Sa,
    packet: &mut [u8],
    outer: &OuterParsed,
    spi: u32,
    seq_low: u32,
    now: Nanos,
) -> Result<(DecapPending, SymParams), EspError> {
    let layout = check_decap(sa, outer, seq_low, now)?;
    let params = match &sa.crypto {
        SaCrypto::Gcm { salt, .. } => {
            let mut params = SymParams {
                seal: false,
                text: layout.ct_at..layout.ct_end,
                icv_len: TAG_LEN as u8,
                ..SymParams::default()
            };
            let mut nonce = [0u8; 12];
            params.aad_len = gcm_decap_nonce(
                spi,
                sa.esn,
                salt,
                packet,
                &layout,
                &mut nonce,
                &mut params.aad,
            )?;
            params.iv[..12].copy_from_slice(&nonce);
            params.expected[..TAG_LEN].copy_from_slice(
                packet
                    .get(layout.ct_end..)
                    .and_then(|b| b.first_chunk::<TAG_LEN>())
                    .ok_or(EspError::Truncated)?,
            );
            params
        }
        SaCrypto::CbcHmac(_) => cbc_decap_params(sa.esn, packet, &layout)?,
    };
    Ok((layout.pending(spi, outer), params))
}

/// The second half of [`decapsulate`], once the crypto ran with `crypto` as its result:
/// moves the replay window, checks the trailer and counts the packet. On success the inner
/// packet is at `packet[result.inner]`.
pub fn decapsulate_finish<L: SaLookup + ?Sized>(
    lookup: &mut L,
    pending: &DecapPending,
    packet: &mut [u8],
    crypto: Result<(), CryptoError>,
) -> Result<Decapsulated, EspError> {
    let sa = lookup
        .inbound_sa(pending.spi, pending.outer_dst)
        .ok_or(EspError::UnknownSpi(pending.spi))?;
    finish_with(sa, pending, packet, crypto).map_err(|error| count_refusal(sa, error))
}

/// Whether the padding at `packet[start..end]` is RFC 4303's default 1, 2, 3, ... For the
/// usual lengths (up to 16) one compare of the 16 bytes that end at `end`, under a mask:
/// no call to `memcmp` for a few bytes.
#[inline(always)]
fn padding_is_monotonic(packet: &[u8], start: usize, end: usize) -> bool {
    let len = end - start;
    let window = end
        .checked_sub(16)
        .and_then(|at| packet.get(at..end))
        .and_then(|w| w.first_chunk::<16>());
    let expected = PADDING_ENDS.get(len..).and_then(|e| e.first_chunk::<16>());
    let mask = PADDING_MASKS.get(len..).and_then(|m| m.first_chunk::<16>());
    match (window, expected, mask) {
        (Some(window), Some(expected), Some(mask)) => {
            u128::from_ne_bytes(*window) & u128::from_ne_bytes(*mask)
                == u128::from_ne_bytes(*expected)
        }
        _ => packet[start..end]
            .iter()
            .zip(1..=u8::MAX)
            .all(|(&byte, want)| byte == want),
    }
}

/// `PADDING_ENDS[len..len + 16]`: the last 16 bytes before the trailer when the padding is
/// `len` (at most 16) bytes long, with zeros for the bytes before the padding, which
/// `PADDING_MASKS[len..len + 16]` masks off.
const PADDING_ENDS: [u8; 32] = {
    let mut ends = [0; 32];
    let mut i = 0;
    while i < 16 {
        ends[16 + i] = PADDING[i];
        i += 1;
    }
    ends
};
const PADDING_MASKS: [u8; 32] = {
    let mut masks = [0; 32];
    let mut i = 16;
    while i < 32 {
        masks[i] = 0xff;
        i += 1;
    }
    masks
};

#[inline(always)]
fn finish_with(
    sa: &mut Sa,
    pending: &DecapPending,
    packet: &mut [u8],
    crypto: Result<(), CryptoError>,
) -> Result<Decapsulated, EspError> {
    match crypto {
        Ok(()) => {}
        Err(CryptoError::Authentication) => return Err(EspError::Authentication),
        Err(e) => return Err(EspError::Crypto(e)),
    }
    let (ct_at, ct_end) = (pending.ct_at, pending.ct_end);
    if ct_end > packet.len() || ct_end < ct_at + 2 {
        return Err(EspError::Truncated);
    }
    let seq = pending.sequence;
    // Only an authenticated packet may move the window.
    sa.replay.accept(seq)?;

    let pad_len = usize::from(packet[ct_end - 2]);
    let next_header = packet[ct_end - 1];
    let inner_end = (ct_end - 2)
        .checked_sub(pad_len)
        .filter(|&e| e >= ct_at)
        .ok_or(EspError::BadTrailer)?;
    if !padding_is_monotonic(packet, inner_end, ct_end - 2) {
        return Err(EspError::BadTrailer);
    }
    let version = packet.get(ct_at).map(|b| b >> 4);
    match (next_header, version) {
        (IPIP_PROTOCOL, Some(4)) | (IPV6_PROTOCOL, Some(6)) if inner_end > ct_at => {}
        (IPIP_PROTOCOL | IPV6_PROTOCOL, _) => return Err(EspError::InnerNotIp),
        (NO_NEXT_HEADER, _) => return Err(EspError::Dummy),
        (other, _) => return Err(EspError::UnsupportedNextHeader(other)),
    }
    sa.counters.packets += 1;
    sa.counters.bytes += (inner_end - ct_at) as u64;
    Ok(Decapsulated {
        spi: pending.spi,
        sequence: seq,
        inner: ct_at..inner_end,
        next_header,
        outer_src: pending.outer_src,
        outer_dst: pending.outer_dst,
        udp_src_port: pending.udp_src_port,
    })
}

#[cfg(test)]
mod tests;
