//! What the engine is told: peers, identities, secrets, proposals, selectors, knobs.

use super::pool::PoolConfig;
use super::proposal::{EspProposal, IkeProposal};
use super::wire::{id_type, Identification, TrafficSelector};
use crate::crypto::SecretBytes;
use crate::esp::{Lifetime, ReplayWindow};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// An IKE identity (RFC 7296 section 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Address(IpAddr),
    Fqdn(String),
    Email(String),
    KeyId(Vec<u8>),
    /// An X.500 distinguished name, DER (a certificate's subject).
    Dn(Vec<u8>),
}

impl Identity {
    /// Reads an SD-EWAN/strongSwan style identifier: an IP address, `@fqdn`, `@#hex` key id,
    /// a distinguished name (`C=CH, O=Example, CN=gw.example`, relative names separated by
    /// commas or slashes), `user@domain`, or a bare name taken as an FQDN.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Self::Address(addr);
        }
        if let Some(der) = super::dn::from_text(text) {
            return Self::Dn(der);
        }
        if let Some(hex) = text.strip_prefix("@#") {
            let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
                .map(|i| {
                    hex.get(2 * i..2 * i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            if let Some(bytes) = bytes.filter(|_| hex.len() % 2 == 0) {
                return Self::KeyId(bytes);
            }
        }
        if let Some(fqdn) = text.strip_prefix('@') {
            return Self::Fqdn(fqdn.to_string());
        }
        if text.contains('@') {
            return Self::Email(text.to_string());
        }
        Self::Fqdn(text.to_string())
    }

    /// Whether the identity a peer sent, `id`, is this one. Distinguished names compare by
    /// attribute and value (string types and letter case aside), as a DN written in the
    /// configuration and one taken from a certificate differ in their encoding.
    pub fn matches(&self, id: &Identification) -> bool {
        match self {
            Self::Dn(der) if id.kind == id_type::DER_ASN1_DN => super::dn::equal(der, &id.data),
            _ => self.to_wire() == *id,
        }
    }

    pub fn to_wire(&self) -> Identification {
        match self {
            Self::Address(IpAddr::V4(a)) => {
                Identification::new(id_type::IPV4_ADDR, a.octets().to_vec())
            }
            Self::Address(IpAddr::V6(a)) => {
                Identification::new(id_type::IPV6_ADDR, a.octets().to_vec())
            }
            Self::Fqdn(name) => Identification::new(id_type::FQDN, name.as_bytes().to_vec()),
            Self::Email(name) => {
                Identification::new(id_type::RFC822_ADDR, name.as_bytes().to_vec())
            }
            Self::KeyId(bytes) => Identification::new(id_type::KEY_ID, bytes.clone()),
            Self::Dn(der) => Identification::new(id_type::DER_ASN1_DN, der.clone()),
        }
    }
}

/// One tunnel peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// Unique name (the SD-EWAN resource and connection name).
    pub name: String,
    /// Our IKE socket address (port 500).
    pub local: SocketAddr,
    /// The peer's IKE address; `None` accepts any initiator (responder only).
    pub remote: Option<SocketAddr>,
    pub local_id: Identity,
    /// `None` accepts any identity that proves the PSK.
    pub remote_id: Option<Identity>,
    pub psk: SecretBytes,
    /// X.509 authentication: our certificate and key, and the CA the peer's certificate
    /// must come from. `None`: the pre-shared key.
    pub certs: Option<std::sync::Arc<super::cert::Credentials>>,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    /// Our side of the tunnel (TSi when we initiate). With `virtual_ips` it must cover the
    /// addresses the peer may assign (usually every address of the family: the peer narrows
    /// it), and the CHILD_SA gets the assigned address only.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side.
    pub remote_ts: Vec<TrafficSelector>,
    pub child_lifetime: Lifetime,
    /// When we rekey the IKE SA (RFC 7296 section 1.3.2), less up to a tenth at random so
    /// that both ends seldom start at once. `None`: never (the peer may).
    pub ike_lifetime: Option<Duration>,
    /// Virtual IPs to ask the peer for in IKE_AUTH (RFC 7296 section 2.19), as swanctl's
    /// `vips`: an unspecified address (`0.0.0.0`, `::`) asks for any address of its family,
    /// another one for that address. Empty: none (the tunnel uses `local_ts` as it is).
    pub virtual_ips: Vec<IpAddr>,
    /// The pool (a name in [`EngineConfig::pools`]) a peer that asks for a virtual IP gets
    /// one from; the CHILD_SA's remote side is then narrowed to that address. `None`:
    /// requests are ignored, as RFC 7296 lets a responder do.
    pub pool: Option<String>,
}

/// Engine-wide knobs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub peers: Vec<PeerConfig>,
    /// Address pools for virtual IPs, named by [`PeerConfig::pool`].
    pub pools: Vec<PoolConfig>,
    /// First retransmission delay; doubles each time (RFC 7296 section 2.1).
    pub retransmit_base: Duration,
    /// Transmissions of one request before the SA is declared dead.
    pub retransmit_limit: u32,
    /// Responder: require a COOKIE (RFC 7296 section 2.6) once this many half-open SAs exist.
    pub cookie_threshold: Option<usize>,
    /// Responder: refuse new IKE SAs (dropping their IKE_SA_INIT, counted) while this many
    /// are half-open, cookie or not: a bound on the state a flood from real addresses makes.
    pub half_open_limit: Option<usize>,
    /// Responder: a half-open SA not authenticated within this time is forgotten.
    pub half_open_timeout: Duration,
    /// Dead peer detection (RFC 7296 section 2.4): an established IKE SA whose peer has sent
    /// nothing for this long gets a liveness check (strongSwan's `dpd_delay`). `None`: none
    /// of our own.
    pub dpd_delay: Option<Duration>,
    /// Replay window for inbound CHILD_SAs.
    pub replay_window: u32,
    /// The NAT-T port (4500): IKE moves there when a NAT is detected, with the non-ESP marker.
    pub natt_port: u16,
    /// Use UDP encapsulation even without a NAT (strongSwan's `encap = yes`).
    pub force_udp_encap: bool,
    /// Behind a NAT, a NAT-keepalive (RFC 3948 section 2.3: one 0xFF byte from the NAT-T
    /// port) goes to the peer once we have sent it nothing for this long, so that the NAT
    /// keeps the mapping the peer reaches us by. RFC 3948 section 4 suggests 20 seconds, as
    /// strongSwan's `keep_alive`. `None`: never.
    pub nat_keepalive: Option<Duration>,
    /// Announce and use IKE fragmentation (RFC 7383): protected messages larger than a
    /// fragment are sent as Encrypted Fragment messages, and such fragments are accepted.
    pub fragmentation: bool,
    /// The largest IP datagram a fragment may travel in. `None`: RFC 7383 section 2.5.1's
    /// recommendation, 576 bytes over IPv4 and 1280 over IPv6.
    pub fragment_size: Option<usize>,
}

impl EngineConfig {
    /// The largest IKE message (UDP payload, without the non-ESP marker) one fragment may
    /// be, towards `remote`: the fragment size less the IP and UDP headers, and less the
    /// marker when `natt`.
    pub fn fragment_message_len(&self, remote: SocketAddr, natt: bool) -> usize {
        let (datagram, ip_header) = match remote {
            SocketAddr::V4(_) => (self.fragment_size.unwrap_or(576), 20),
            SocketAddr::V6(_) => (self.fragment_size.unwrap_or(1280), 40),
        };
        datagram.saturating_sub(ip_header + 8 + if natt { 4 } else { 0 })
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            pools: Vec::new(),
            retransmit_base: Duration::from_secs(1),
            retransmit_limit: 5,
            cookie_threshold: None,
            half_open_limit: None,
            half_open_timeout: Duration::from_secs(30),
            dpd_delay: None,
            replay_window: ReplayWindow::DEFAULT_SIZE,
            natt_port: 4500,
            force_udp_encap: false,
            nat_keepalive: Some(Duration::from_secs(20)),
            fragmentation: true,
            fragment_size: None,
        }
    }
}
