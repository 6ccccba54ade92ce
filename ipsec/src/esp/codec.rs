//! Tunnel-mode encapsulation and decapsulation.

use super::sa::{Direction, EspSuite, Nanos, Sa, SaCrypto};
use super::EspError;
use crate::crypto::{CryptoError, SymOp, SymParams};
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
/// so that a crypto device gets them in bursts.
pub fn encapsulate_in_place(
    sa: &mut Sa,
    buf: &mut [u8],
    inner: Range<usize>,
    outer: &OuterHeader,
    now: Nanos,
) -> Result<Range<usize>, EspError> {
    let (pending, params) = encapsulate_prepare(sa, buf, inner, outer, now)?;
    let mut op = SymOp {
        buf: &mut *buf,
        ctx: Some(sa.crypto_ctx()),
        params,
        result: Ok(()),
    };
    op.run_here();
    let result = op.result;
    encapsulate_finish(sa, &pending, buf, result)
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
    let iv_len = suite.iv_len();
    let start = inner
        .start
        .checked_sub(outer.len() + ESP_HEADER_LEN + iv_len)
        .ok_or(EspError::BufferTooSmall)?;
    let esp_at = start + outer.len();
    let ct_at = inner.start;
    let ct_end = ct_at + inner_len + pad_len + 2;
    let end = ct_end + suite.icv_len();
    if end > buf.len() {
        return Err(EspError::BufferTooSmall);
    }

    // Trailer: monotonic padding 1, 2, 3, ..., pad length, next header. The pattern is
    // copied whole when it fits before the end (the ICV, at least 16 bytes, follows the
    // trailer, so it does unless the caller left no room for it): one 16-byte store.
    match buf
        .get_mut(inner.end..)
        .and_then(|tail| tail.first_chunk_mut::<16>())
    {
        Some(room) => *room = PADDING,
        None => buf[inner.end..ct_end - 2].copy_from_slice(&PADDING[..pad_len]),
    }
    buf[ct_end - 2] = pad_len as u8;
    buf[ct_end - 1] = next_header;

    let spi = sa.spi.to_be_bytes();
    let seq_low = (seq as u32).to_be_bytes();
    let seq_high = ((seq >> 32) as u32).to_be_bytes();
    buf[esp_at..esp_at + 4].copy_from_slice(&spi);
    buf[esp_at + 4..esp_at + 8].copy_from_slice(&seq_low);

    let mut params = SymParams {
        seal: true,
        text: ct_at..ct_end,
        digest_at: ct_end,
        icv_len: suite.icv_len() as u8,
        ..SymParams::default()
    };
    match &sa.crypto {
        SaCrypto::Gcm { salt, .. } => {
            // The explicit IV is the 64-bit sequence number: unique per SA, as RFC 4106
            // section 3.1 requires, and free to produce.
            let iv = seq.to_be_bytes();
            buf[esp_at + 8..ct_at].copy_from_slice(&iv);
            params.iv[..4].copy_from_slice(salt);
            params.iv[4..12].copy_from_slice(&iv);
            params.aad_len = gcm_aad(&mut params.aad, &spi, &seq_low, sa.esn.then_some(&seq_high));
        }
        SaCrypto::CbcHmac(ctx) => {
            let mut nonce = [0u8; 16];
            nonce[..4].copy_from_slice(&spi);
            nonce[8..].copy_from_slice(&seq.to_be_bytes());
            params.iv = ctx.derive_iv(&nonce).map_err(EspError::Crypto)?;
            buf[esp_at + 8..ct_at].copy_from_slice(&params.iv);
            // The ICV covers the ESP header, IV and ciphertext, and with ESN the high half
            // of the sequence number after them (RFC 4303 section 2.2.1): it goes where the
            // ICV will be written, so the HMAC reads one contiguous range.
            params.auth = esp_at..ct_end;
            if sa.esn {
                buf[ct_end..ct_end + 4].copy_from_slice(&seq_high);
                params.auth.end += 4;
            }
        }
    }
    sa.seq = seq;
    write_outer(buf, start, end, outer, dscp);
    Ok((
        EncapPending {
            range: start..end,
            inner_len,
            udp6_checksum: outer.udp.is_some() && outer.src.is_ipv6(),
        },
        params,
    ))
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
fn gcm_aad(aad: &mut [u8; 12], spi: &[u8; 4], seq_low: &[u8; 4], seq_high: Option<&[u8; 4]>) -> u8 {
    aad[..4].copy_from_slice(spi);
    match seq_high {
        Some(high) => {
            aad[4..8].copy_from_slice(high);
            aad[8..12].copy_from_slice(seq_low);
            12
        }
        None => {
            aad[4..8].copy_from_slice(seq_low);
            8
        }
    }
}

/// Writes the outer IP (and UDP) header into `buf[start..]`; the packet ends at `end`.
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
/// [`decapsulate_finish`] (see [`encapsulate_in_place`]).
pub fn decapsulate<L: SaLookup + ?Sized>(
    lookup: &mut L,
    packet: &mut [u8],
    now: Nanos,
) -> Result<Decapsulated, EspError> {
    let (pending, params) = decapsulate_prepare(lookup, packet, now)?;
    let sa = lookup
        .inbound_sa(pending.spi, pending.outer_dst)
        .ok_or(EspError::UnknownSpi(pending.spi))?;
    let mut op = SymOp {
        buf: &mut *packet,
        ctx: Some(sa.crypto_ctx()),
        params,
        result: Ok(()),
    };
    op.run_here();
    let result = op.result;
    decapsulate_finish(lookup, &pending, packet, result)
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

/// Counts a refusal on the SA it happened on.
fn count_refusal(sa: &mut Sa, error: &EspError) {
    let counters = &mut sa.counters;
    match error {
        EspError::Replay(_) => counters.replay_drops += 1,
        EspError::Authentication => counters.auth_failures += 1,
        EspError::Expired => counters.lifetime_drops += 1,
        _ => counters.other_drops += 1,
    }
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
    let outer = parse_outer(packet)?;
    let esp = outer.esp.clone();
    let header = packet
        .get(esp.start..esp.start + ESP_HEADER_LEN)
        .ok_or(EspError::Truncated)?;
    let spi = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let seq_low = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if spi == 0 {
        return Err(EspError::Malformed);
    }
    let sa = lookup
        .inbound_sa(spi, outer.dst)
        .ok_or(EspError::UnknownSpi(spi))?;
    let result = prepare_with(sa, packet, &outer, spi, seq_low, now);
    if let Err(error) = &result {
        count_refusal(sa, error);
    }
    result
}

fn prepare_with(
    sa: &mut Sa,
    packet: &mut [u8],
    outer: &OuterParsed,
    spi: u32,
    seq_low: u32,
    now: Nanos,
) -> Result<(DecapPending, SymParams), EspError> {
    if sa.direction != Direction::Inbound {
        return Err(EspError::WrongDirection);
    }
    if sa.past_hard_limit(now) {
        return Err(EspError::Expired);
    }
    let suite = sa.suite;
    let esp = outer.esp.clone();
    let iv_at = esp.start + ESP_HEADER_LEN;
    let ct_at = iv_at + suite.iv_len();
    let icv_len = suite.icv_len();
    let ct_end = esp
        .end
        .checked_sub(icv_len)
        .filter(|&e| e >= ct_at + 2)
        .ok_or(EspError::Truncated)?;
    if let EspSuite::CbcHmac(..) = suite {
        if (ct_end - ct_at) % 16 != 0 {
            return Err(EspError::Truncated);
        }
    }
    let seq = sa.replay.check(seq_low)?;
    let spi_bytes = spi.to_be_bytes();
    let seq_low_bytes = seq_low.to_be_bytes();
    let seq_high_bytes = ((seq >> 32) as u32).to_be_bytes();

    let mut params = SymParams {
        seal: false,
        text: ct_at..ct_end,
        icv_len: icv_len as u8,
        ..SymParams::default()
    };
    params.expected[..icv_len].copy_from_slice(&packet[ct_end..esp.end]);
    match &sa.crypto {
        SaCrypto::Gcm { salt, .. } => {
            params.iv[..4].copy_from_slice(salt);
            params.iv[4..12].copy_from_slice(&packet[iv_at..ct_at]);
            params.aad_len = gcm_aad(
                &mut params.aad,
                &spi_bytes,
                &seq_low_bytes,
                sa.esn.then_some(&seq_high_bytes),
            );
        }
        SaCrypto::CbcHmac(_) => {
            params.iv.copy_from_slice(&packet[iv_at..ct_at]);
            params.auth = esp.start..ct_end;
            if sa.esn {
                // As on the way out: the high half goes where the ICV was (saved above).
                packet[ct_end..ct_end + 4].copy_from_slice(&seq_high_bytes);
                params.auth.end += 4;
            }
        }
    }
    Ok((
        DecapPending {
            spi,
            sequence: seq,
            ct_at,
            ct_end,
            outer_src: outer.src,
            outer_dst: outer.dst,
            udp_src_port: outer.udp_src_port,
        },
        params,
    ))
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
    let result = finish_with(sa, pending, packet, crypto);
    if let Err(error) = &result {
        count_refusal(sa, error);
    }
    result
}

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
    let padding = &packet[inner_end..ct_end - 2];
    let monotonic = match PADDING.get(..padding.len()) {
        Some(expected) => padding == expected,
        None => padding.iter().zip(1u8..).all(|(&byte, want)| byte == want),
    };
    if !monotonic {
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
