//! ESP (RFC 4303) in tunnel mode as pure functions over byte buffers.
//!
//! * [`Sa`] is one direction of a CHILD_SA: SPI, prepared crypto, sequence counter or replay
//!   window, lifetimes and counters. It is built from a plain [`SaConfig`] (what IKE
//!   negotiated) by a [`CryptoBackend`](crate::crypto::CryptoBackend).
//! * [`encapsulate_in_place`] turns an inner IPv4/IPv6 packet, placed in a buffer with
//!   headroom and tailroom, into an outer IPv4/IPv6 packet carrying ESP (optionally in UDP,
//!   RFC 3948); [`encapsulate`] is the allocating convenience.
//! * [`decapsulate`] takes an outer packet, finds the SA by SPI through [`SaLookup`], checks
//!   replay and integrity, decrypts in place and returns where the inner packet lies.
//!
//! Nothing here panics on packet bytes or allocates on the decap path; errors are typed and
//! counted on the SA when one was found.

mod codec;
mod replay;
mod sa;

pub use codec::{
    decapsulate, decapsulate_finish, decapsulate_prepare, decapsulate_prepare_into, encapsulate,
    encapsulate_finish, encapsulate_in_place, encapsulate_prepare, encapsulate_prepare_into,
    DecapPending, Decapsulated, EncapPending, OuterHeader, SaLookup, ESP_PROTOCOL, IPIP_PROTOCOL,
    IPV6_PROTOCOL, NAT_T_PORT,
};
pub use replay::{ReplayError, ReplayWindow};
pub use sa::{
    Direction, EspKeys, EspSuite, Lifetime, LifetimeState, Nanos, Sa, SaConfig, SaCounters,
};

use crate::crypto::CryptoError;

/// Why ESP processing refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    #[error("packet truncated")]
    Truncated,
    #[error("malformed outer header")]
    Malformed,
    #[error("not an ESP packet")]
    NotEsp,
    #[error("outer packet is a fragment")]
    Fragment,
    #[error("no inbound SA for SPI {0:#010x}")]
    UnknownSpi(u32),
    #[error("replayed packet: {0}")]
    Replay(#[from] ReplayError),
    #[error("integrity check failed")]
    Authentication,
    #[error("bad padding or trailer")]
    BadTrailer,
    #[error("inner protocol {0} not supported in tunnel mode")]
    UnsupportedNextHeader(u8),
    #[error("dummy packet (next header 59)")]
    Dummy,
    #[error("inner packet is not IPv4 or IPv6")]
    InnerNotIp,
    #[error("outbound sequence numbers exhausted: the SA must be rekeyed")]
    SequenceExhausted,
    #[error("SA lifetime expired")]
    Expired,
    #[error("buffer lacks headroom or tailroom")]
    BufferTooSmall,
    #[error("SA used in the wrong direction")]
    WrongDirection,
    #[error("address family of the outer header does not match")]
    FamilyMismatch,
    #[error("crypto: {0}")]
    Crypto(CryptoError),
}
