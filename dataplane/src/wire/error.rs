//! The one error type every parser in [`crate::wire`] returns.

/// Why a buffer was rejected as a packet of some format.
///
/// Variants are precise so that graph nodes can count drops by reason (VPP-style per-node error
/// counters) and so that ICMP error generation can tell a malformed header from a short buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer ends before the fixed header, or before a length the header declares.
    #[error("packet truncated")]
    Truncated,
    /// The version field (IPv4, IPv6, GRE) is not the one this view understands.
    #[error("unsupported version")]
    BadVersion,
    /// A header-length field (IPv4 IHL, TCP data offset, extension header length) is invalid.
    #[error("bad header length")]
    BadHeaderLength,
    /// The IPv4 total length is smaller than the header it must contain.
    #[error("bad total length")]
    BadTotalLength,
    /// Some other length field (UDP length, ARP address lengths, ESP pad length) is inconsistent.
    #[error("bad length field")]
    BadLength,
    /// The checksum (Internet checksum or CRC32c) does not match the bytes.
    #[error("bad checksum")]
    BadChecksum,
    /// An IPv6 hop-by-hop options header appears somewhere other than right after the fixed
    /// header (RFC 8200 section 4.1).
    #[error("hop-by-hop options header not first")]
    HopByHopNotFirst,
    /// More IPv6 extension headers than [`crate::wire::ipv6::MAX_EXTENSION_HEADERS`]; bounding the
    /// walk keeps per-packet work constant and defeats header-chain amplification.
    #[error("too many IPv6 extension headers")]
    TooManyExtensionHeaders,
    /// A TLV option (TCP, NDP) has a zero or overlong length.
    #[error("malformed option")]
    BadOption,
    /// ESP padding bytes are not the monotonic sequence 1, 2, 3, ... (RFC 4303 section 2.4).
    #[error("bad ESP padding")]
    BadPadding,
    /// A field holds a value the protocol forbids (e.g. a multicast NDP target, a non-zero code
    /// where zero is required, a reserved SPI).
    #[error("malformed field")]
    Malformed,
    /// The packet is a valid fragment, but this operation needs the whole datagram.
    #[error("fragmented packet")]
    Fragmented,
    /// Well-formed, but a variant (hardware type, message type, routing bits) we do not handle.
    #[error("unsupported packet variant")]
    Unsupported,
    /// The output buffer is too small for what is being emitted.
    #[error("output buffer too small")]
    BufferTooSmall,
}
