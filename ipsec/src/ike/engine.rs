//! The IKEv2 engine: IKE_SA_INIT, IKE_AUTH with PSK, the first CHILD_SA, INFORMATIONAL
//! (delete, liveness), retransmissions, cookies and NAT traversal, CHILD_SA and IKE SA rekeys
//! both ways (ours on lifetimes), IKE fragmentation (RFC 7383), INITIAL_CONTACT (sent and
//! honoured), as a sans-IO state machine.
//!
//! Feed it datagrams with [`Engine::handle`] and the clock with [`Engine::handle_timeout`];
//! start tunnels with [`Engine::connect`]. Every call returns the [`Action`]s to carry out:
//! datagrams to send, CHILD_SAs to install or remove in the dataplane, timers, and events.

use super::config::{EngineConfig, PeerConfig};
use super::cp::AddressRequest;
use super::dh::{self, DhGroup, DhPrivate};
use super::keys::{derive_child_keys, derive_ike_keys, derive_rekeyed_ike_keys, psk_auth, IkeKeys};
use super::pool::AddressPool;
use super::proposal::{self, ChildSuite, EspChoice, EspProposal, IkeProposal, IkeSuite, Pfs};
use super::sk::{open_fragment, open_message, seal_fragments, SkCipher};
use super::wire::{
    cfg, exchange, id_type, notify, protocol, Header, Identification, Message, Notify, ParseError,
    Payload, TrafficSelector, AUTH_METHOD_PSK, FLAG_INITIATOR, FLAG_RESPONSE, VERSION,
};
use crate::crypto::SoftwareBackend;
use crate::esp::{EspSuite, SaConfig};
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};
use subtle::ConstantTimeEq;

mod auth;
mod virtual_ip;
use auth::Signed;
use virtual_ip::{assigned_addresses, sa_local_ts, sa_remote_ts, CfgAnswer};

/// An IKE SA, named by our own SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaId(pub u64);

/// Why an IKE SA or CHILD_SA could not be set up or was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer answered with this error Notify type.
    PeerError(u16),
    /// The peer's AUTH did not verify (or its identity was not the expected one).
    AuthenticationFailed,
    /// The peer's answer did not match anything we offered.
    ProposalMismatch,
    /// The peer's answer was missing payloads or malformed.
    InvalidSyntax,
    /// No answer after all retransmissions.
    Timeout,
    /// The peer asked for a DH group we do not offer.
    UnsupportedGroup(u16),
    /// The local configuration cannot be used.
    Config,
    /// We asked for a virtual IP and the peer's answer assigned none we could use (no
    /// Configuration payload, or only malformed or unusable addresses).
    NoVirtualIp,
}

/// Keys and parameters of a new CHILD_SA, for the dataplane.
#[derive(Debug, Clone)]
pub struct ChildSaInstall {
    pub ike_sa: IkeSaId,
    pub peer: String,
    pub inbound: SaConfig,
    pub outbound: SaConfig,
    pub local_addr: IpAddr,
    pub remote_addr: IpAddr,
    /// `(local port, remote port)` when ESP travels in UDP (RFC 3948).
    pub udp_encap: Option<(u16, u16)>,
    /// Narrowed selectors: our side and the peer's side.
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Virtual IPs the peer assigned us (RFC 7296 section 2.19): our side of the tunnel is
    /// these addresses, which the dataplane must treat as its own.
    pub local_vips: Vec<IpAddr>,
    /// Addresses we leased to the peer from a pool: its side of the tunnel, which the
    /// dataplane routes into it.
    pub remote_vips: Vec<IpAddr>,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Action {
    Send {
        local: SocketAddr,
        remote: SocketAddr,
        bytes: Vec<u8>,
    },
    InstallChildSa(Box<ChildSaInstall>),
    DeleteChildSa {
        ike_sa: IkeSaId,
        inbound_spi: u32,
        outbound_spi: u32,
    },
    /// The peer, behind a NAT, now writes from another address or port (the NAT's mapping
    /// changed) and the IKE SA follows it (RFC 7296 section 2.23): the outbound SAs of these
    /// CHILD_SAs must now be sent to `remote_addr` (from `local_addr`), UDP-encapsulated
    /// with `udp_encap`, as [`ChildSaInstall`]'s fields of the same names. Keys, SPIs,
    /// sequence numbers and replay windows are unchanged.
    UpdateChildSaAddresses {
        ike_sa: IkeSaId,
        /// `(inbound SPI, outbound SPI)` of each CHILD_SA.
        spis: Vec<(u32, u32)>,
        local_addr: IpAddr,
        remote_addr: IpAddr,
        udp_encap: Option<(u16, u16)>,
    },
    /// Call [`Engine::handle_timeout`] at (or after) this instant.
    ArmTimer {
        ike_sa: IkeSaId,
        at: Instant,
    },
    /// An IKE SA is up: set up, or made by the peer rekeying one (whose CHILD_SAs it takes
    /// over; the old one is then `Closed` by the peer's delete).
    Established {
        ike_sa: IkeSaId,
        peer: String,
    },
    /// The IKE SA could not be set up, or died.
    Failed {
        ike_sa: IkeSaId,
        peer: String,
        reason: Failure,
    },
    /// Our rekey of the IKE SA was refused, or answered unusably, for good: the SA carries
    /// on unrekeyed (informational; a refusal for being busy is retried instead).
    IkeRekeyFailed {
        ike_sa: IkeSaId,
        peer: String,
        reason: Failure,
    },
    /// The IKE SA is up but its CHILD_SA was refused.
    ChildFailed {
        ike_sa: IkeSaId,
        peer: String,
        reason: Failure,
    },
    /// The IKE SA was deleted (by us or the peer).
    Closed {
        ike_sa: IkeSaId,
        peer: String,
    },
}

/// Why an API call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("no peer named {0:?}")]
    UnknownPeer(String),
    #[error("peer {0:?} has no remote address to connect to")]
    NoRemote(String),
    #[error("no such IKE SA")]
    UnknownSa,
    #[error("an exchange is already outstanding (window size 1)")]
    Busy,
    #[error("peer {0:?} has no usable proposal")]
    NoProposal(String),
    #[error("random number generator failed")]
    Random,
    #[error("peer {0:?} names address pool {1:?}, which is not configured")]
    UnknownPool(String, String),
}

/// Named drop and event counters, as `show ipsec` and `/metrics` report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IkeCounters {
    pub rx_messages: u64,
    pub rx_malformed: u64,
    /// Messages of another IKE major version (answered with INVALID_MAJOR_VERSION when
    /// a request of a later version).
    pub rx_bad_version: u64,
    pub rx_not_ike: u64,
    pub rx_unknown_spi: u64,
    /// INVALID_IKE_SPI answers sent to requests for IKE SAs we do not have.
    pub tx_invalid_ike_spi: u64,
    /// Unprotected INVALID_IKE_SPI answers to our requests (counted; no SA changes on one).
    pub rx_invalid_ike_spi: u64,
    pub rx_bad_message_id: u64,
    pub rx_integrity_failures: u64,
    pub rx_unexpected: u64,
    pub retransmits: u64,
    /// Liveness checks started because a peer was quiet for the DPD delay.
    pub dpd_sent: u64,
    /// NAT-keepalives sent (RFC 3948 section 4: we are behind a NAT).
    pub nat_keepalives: u64,
    /// Established IKE SAs that moved to a peer's new address or port (RFC 7296 section
    /// 2.23: its NAT's mapping changed), CHILD_SAs and all.
    pub peer_moves: u64,
    pub responses_resent: u64,
    pub auth_failures: u64,
    pub no_proposal_chosen: u64,
    pub invalid_ke: u64,
    pub ts_unacceptable: u64,
    pub cookies_sent: u64,
    pub cookies_rejected: u64,
    pub established: u64,
    pub failed: u64,
    pub child_sas_installed: u64,
    pub half_open_expired: u64,
    /// IKE_SA_INIT requests dropped because `half_open_limit` SAs were half-open.
    pub half_open_refused: u64,
    /// Retransmitted IKE_SA_INIT requests ignored because their SA's IKE_AUTH had arrived
    /// (RFC 7296 section 2.1).
    pub stale_init_requests: u64,
    /// IKE SAs removed, without a Delete, because the peer announced INITIAL_CONTACT on
    /// a new one (RFC 7296 section 2.4: it restarted and has none of them any more).
    pub initial_contact_removals: u64,
    /// CHILD_SAs the peer rekeyed (CREATE_CHILD_SA with REKEY_SA).
    pub child_sas_rekeyed: u64,
    /// IKE SAs the peer rekeyed.
    pub ike_sas_rekeyed: u64,
    /// CHILD_SAs we rekeyed at their soft lifetime.
    pub child_rekeys_started: u64,
    /// Rekeys of one CHILD_SA by both ends at once (RFC 7296 section 2.8.1).
    pub child_rekey_collisions: u64,
    /// Our rekeys the peer refused (TEMPORARY_FAILURE is retried, the others are not).
    pub child_rekey_failures: u64,
    /// CHILD_SAs deleted at their hard lifetime.
    pub child_sas_expired: u64,
    /// IKE SAs we rekeyed at their lifetime.
    pub ike_rekeys_started: u64,
    /// Rekeys of one IKE SA by both ends at once.
    pub ike_rekey_collisions: u64,
    /// Our IKE SA rekeys the peer refused or answered unusably.
    pub ike_rekey_failures: u64,
    /// Virtual IPs leased to peers from our pools.
    pub virtual_ips_leased: u64,
    /// Virtual IP requests refused with INTERNAL_ADDRESS_FAILURE (pool exhausted, or no
    /// address of the family asked for).
    pub internal_address_failures: u64,
    /// Our requests for a virtual IP that got no usable address back.
    pub virtual_ip_failures: u64,
    /// Configuration payload attributes skipped as malformed.
    pub cp_malformed: u64,
    /// Encrypted Fragment messages sent (RFC 7383), counted when a message was split.
    pub tx_fragments: u64,
    /// Messages we could not protect (no fragment size leaves room, a crypto failure).
    pub tx_seal_failures: u64,
    /// Authenticated fragments received.
    pub rx_fragments: u64,
    /// Fragments dropped: not negotiated, duplicate, too many, too large, or superseded.
    pub rx_fragments_dropped: u64,
    /// Messages put back together from fragments.
    pub rx_reassembled: u64,
    /// Peers' certificates or signatures refused (no certificate, not from our CA, expired,
    /// identity not in it, bad signature).
    pub cert_rejected: u64,
    /// Error answers to unprotected requests not sent: over [`UNPROTECTED_ERRORS_PER_SECOND`].
    pub unprotected_errors_limited: u64,
}

/// Most error notifications answering unprotected requests sent per second, and the burst
/// allowed (RFC 7296 section 2.21.4: a node needs to limit the rate of its answers to
/// unprotected messages, or it becomes a reflector for forged ones).
pub const UNPROTECTED_ERRORS_PER_SECOND: u32 = 200;

/// Rations the error notifications sent outside an IKE SA (INVALID_MAJOR_VERSION,
/// UNSUPPORTED_CRITICAL_PAYLOAD, NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD): a token bucket.
#[derive(Debug, Default)]
struct ErrorBudget {
    tokens: u32,
    /// When tokens were last added; `None` before the first answer.
    refilled: Option<Instant>,
}

impl ErrorBudget {
    /// Takes a token if there is one at `now`.
    fn allow(&mut self, now: Instant) -> bool {
        let rate = UNPROTECTED_ERRORS_PER_SECOND;
        match self.refilled {
            None => {
                self.tokens = rate;
                self.refilled = Some(now);
            }
            Some(then) => {
                let earned =
                    now.saturating_duration_since(then).as_millis() * u128::from(rate) / 1000;
                if earned > 0 {
                    self.tokens = rate.min(
                        self.tokens
                            .saturating_add(earned.min(u128::from(rate)) as u32),
                    );
                    self.refilled = Some(now);
                }
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// A virtual IP of an IKE SA, for `show ipsec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualIp {
    pub ike_sa: IkeSaId,
    pub peer: String,
    pub address: IpAddr,
    /// `None`: the peer assigned it to us. `Some(pool)`: we leased it to the peer from that
    /// pool.
    pub pool: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IkeState {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    HalfOpen,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    Established,
    /// Our Delete is outstanding.
    Deleting,
}

struct Outstanding {
    message_id: u32,
    /// Its exchange type: the answer must be of the same (RFC 7296 section 2.3).
    exchange: u8,
    /// The request as sent: one message, or its fragments (RFC 7383).
    messages: Vec<Vec<u8>>,
    transmissions: u32,
    next_at: Instant,
}

/// Fragments of one incoming message (RFC 7383 section 2.6), each already authenticated and
/// decrypted.
struct Reassembly {
    message_id: u32,
    response: bool,
    /// The first inner payload's type, from fragment 1.
    first_payload: u8,
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
}

/// One authenticated, decrypted fragment.
struct Fragment {
    message_id: u32,
    response: bool,
    first_payload: u8,
    number: u16,
    total: u16,
    part: Vec<u8>,
}

/// The most fragments one message may come in: a 64 KiB message in fragments of a 576-byte
/// IPv4 datagram is about 130.
const MAX_FRAGMENTS: u16 = 256;

/// The most bytes of inner payloads one reassembled message may hold.
const MAX_REASSEMBLED: usize = 64 * 1024;

struct Child {
    inbound_spi: u32,
    outbound_spi: u32,
    /// What it was made of: its successor is proposed with the same (RFC 7296 section 2.8).
    suite: ChildSuite,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    /// When we start rekeying it: its soft lifetime less up to a tenth, so that the two ends
    /// seldom start at once (section 2.8.1). `None`: never, or it is being replaced.
    rekey_at: Option<Instant>,
    /// Its hard lifetime: it is deleted then, replaced or not.
    expire_at: Option<Instant>,
    /// A rekey of it is under way or done (ours or the peer's): its soft byte limit no
    /// longer starts one.
    replaced: bool,
    /// The Diffie-Hellman group its rekey's KE payload uses, when the peer asked for
    /// another than our configuration's first (INVALID_KE_PAYLOAD, RFC 7296 section 1.3).
    pfs_group: Option<DhGroup>,
}

/// What our outstanding request on an established IKE SA is for, when its answer needs
/// more than freeing the window.
enum Pending {
    ChildRekey(Box<ChildRekey>),
    IkeRekey(Box<IkeRekey>),
    /// An INFORMATIONAL deleting CHILD_SAs, named by our inbound SPIs. They leave the
    /// dataplane once the peer answers: until then it may still send on them.
    ChildDelete(Vec<u32>),
}

/// Our CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 section 1.3.2).
struct IkeRekey {
    our_spi: u64,
    nonce: Vec<u8>,
    /// Our proposals as offered (see [`preferring`]).
    offered: Vec<IkeProposal>,
    /// The KE payload's group, and our private value in it.
    group: DhGroup,
    dh: DhPrivate,
    /// This is the one retry with the group the peer asked for (INVALID_KE_PAYLOAD).
    retry: bool,
    /// The peer rekeyed it meanwhile (section 2.8.1): the nonces of its exchange (its,
    /// ours) and the IKE SA that exchange made.
    collision: Option<(Vec<u8>, Vec<u8>, u64)>,
}

/// Our CREATE_CHILD_SA rekeying a CHILD_SA (RFC 7296 section 1.3.3).
struct ChildRekey {
    /// The CHILD_SA being replaced (our inbound SPI).
    old: u32,
    our_spi: u32,
    nonce: Vec<u8>,
    offered: EspProposal,
    dh: Option<DhPrivate>,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    /// The peer rekeyed the same CHILD_SA meanwhile (section 2.8.1): the nonces of its
    /// exchange (its, ours) and our inbound SPI of the CHILD_SA that exchange made.
    collision: Option<(Vec<u8>, Vec<u8>, u32)>,
}

/// What keys a CHILD_SA: the nonces of the exchange that made it (IKE_SA_INIT's for the
/// first one), the PFS secret, and which side started that exchange.
struct ChildExchange {
    nonce_i: Vec<u8>,
    nonce_r: Vec<u8>,
    pfs_shared: Option<crate::crypto::SecretBytes>,
    we_initiated: bool,
    our_spi: u32,
}

struct IkeSa {
    spi_i: u64,
    spi_r: u64,
    initiator: bool,
    peer: usize,
    state: IkeState,
    local: SocketAddr,
    remote: SocketAddr,
    suite: Option<IkeSuite>,
    nonce_i: Vec<u8>,
    nonce_r: Vec<u8>,
    dh_group: DhGroup,
    dh: Option<DhPrivate>,
    ke_public: Vec<u8>,
    keys: Option<IkeKeys>,
    tx: Option<SkCipher>,
    rx: Option<SkCipher>,
    /// The IKE_SA_INIT messages as sent and received: the AUTH payloads sign them (RFC 7296
    /// section 2.15). Emptied once IKE_AUTH is done, as nothing else needs them.
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    /// Responder: SHA-256 of the IKE_SA_INIT request that made this SA, kept for its life.
    /// A request with the same hash is a retransmission of it (answered again while
    /// half-open, ignored once IKE_AUTH arrived); SPIi and address alone cannot tell a
    /// retransmission from a new request (RFC 7296 section 2.1).
    init_digest: Option<Vec<u8>>,
    /// The peer's identity (IDi or IDr) as authenticated in IKE_AUTH; `None` before. What
    /// INITIAL_CONTACT is matched on (RFC 7296 section 2.4).
    peer_id: Option<Identification>,
    cookie: Option<Vec<u8>>,
    next_request_id: u32,
    expected_peer_id: u32,
    outstanding: Option<Outstanding>,
    /// What `outstanding` is for, when its answer needs more than freeing the window.
    pending: Option<Pending>,
    /// Our last answer (one message, or its fragments), for a retransmitted request.
    last_response: Option<(u32, Vec<Vec<u8>>)>,
    /// When the peer last sent an authenticated message: dead peer detection asks after it
    /// once it has been quiet for [`EngineConfig::dpd_delay`].
    last_heard: Instant,
    iv_counter: u64,
    /// Both ends announced IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (RFC 7383).
    fragmentation: bool,
    /// The message whose fragments are arriving.
    reassembly: Option<Reassembly>,
    /// The hash algorithms the peer verifies signatures with (RFC 7427), from its
    /// IKE_SA_INIT message.
    peer_hashes: Vec<u16>,
    /// ESP goes in UDP (RFC 3948): a NAT was detected on either side, or it is forced.
    nat: bool,
    /// We are behind a NAT: the peer's NAT_DETECTION_DESTINATION_IP did not match our
    /// address (RFC 7296 section 2.23). We then send NAT-keepalives, and do not follow the
    /// peer to another address.
    behind_nat: bool,
    /// The peer is behind a NAT (its NAT_DETECTION_SOURCE_IP did not match where its
    /// message came from): while we are not, we follow it when its address changes.
    peer_behind_nat: bool,
    /// When we last sent the peer anything on this SA: a NAT-keepalive is due once that is
    /// [`EngineConfig::nat_keepalive`] ago.
    last_sent: Instant,
    child_spi: u32,
    children: Vec<Child>,
    created: Instant,
    /// Virtual IPs the peer assigned us.
    virtual_ips: Vec<IpAddr>,
    /// Addresses leased to the peer, from the pool of `self.peer` (released when the SA goes).
    leased: Vec<IpAddr>,
    /// When we rekey it (see [`PeerConfig::ike_lifetime`]). `None`: never, or under way.
    rekey_at: Option<Instant>,
    /// Initiator: why the last unusable answer to our IKE_SA_INIT failed it (an error
    /// notify, a malformed answer). Unauthenticated, so possibly forged: we keep waiting
    /// for a good answer and report this only when none comes (RFC 7296 section 2.21.1).
    init_failure: Option<Failure>,
}

impl IkeSa {
    /// The IKE SA that replaces this one in a rekey (RFC 7296 section 1.3.2): the same peer,
    /// addresses and negotiated options, new SPIs `(SPIi, SPIr, we are the initiator)`,
    /// suite, nonces `(Ni, Nr)`, keys and ciphers `(outbound, inbound)`, established at
    /// `now` and rekeyed at `rekey_at`; no CHILD_SAs or virtual IPs yet (the caller moves
    /// them).
    fn successor(
        &self,
        (spi_i, spi_r, initiator): (u64, u64, bool),
        suite: IkeSuite,
        (nonce_i, nonce_r): (Vec<u8>, Vec<u8>),
        keys: IkeKeys,
        (tx, rx): (SkCipher, SkCipher),
        (now, rekey_at): (Instant, Option<Instant>),
    ) -> IkeSa {
        IkeSa {
            spi_i,
            spi_r,
            initiator,
            peer: self.peer,
            state: IkeState::Established,
            local: self.local,
            remote: self.remote,
            suite: Some(suite),
            nonce_i,
            nonce_r,
            dh_group: suite.dh,
            dh: None,
            ke_public: Vec::new(),
            keys: Some(keys),
            tx: Some(tx),
            rx: Some(rx),
            init_request: Vec::new(),
            init_response: Vec::new(),
            init_digest: None,
            peer_id: self.peer_id.clone(),
            cookie: None,
            next_request_id: 0,
            expected_peer_id: 0,
            outstanding: None,
            pending: None,
            last_response: None,
            last_heard: now,
            iv_counter: 0,
            fragmentation: self.fragmentation,
            reassembly: None,
            peer_hashes: self.peer_hashes.clone(),
            nat: self.nat,
            behind_nat: self.behind_nat,
            peer_behind_nat: self.peer_behind_nat,
            last_sent: now,
            child_spi: self.child_spi,
            children: Vec::new(),
            created: now,
            virtual_ips: Vec::new(),
            leased: Vec::new(),
            rekey_at,
            init_failure: None,
        }
    }

    fn header(&self, exchange_type: u8, message_id: u32, response: bool) -> Header {
        let mut flags = if self.initiator { FLAG_INITIATOR } else { 0 };
        if response {
            flags |= FLAG_RESPONSE;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: 0,
            version: VERSION,
            exchange: exchange_type,
            flags,
            message_id,
            length: 0,
        }
    }
}

/// The engine: every IKE SA of this node.
pub struct Engine {
    config: EngineConfig,
    backend: SoftwareBackend,
    rng: ring::rand::SystemRandom,
    sas: HashMap<u64, IkeSa>,
    cookie_secret: [u8; 32],
    counters: IkeCounters,
    /// Error answers to unprotected requests, rationed.
    error_budget: ErrorBudget,
    pools: Vec<AddressPool>,
    /// Per peer (by index), its pool's index in `pools`.
    peer_pools: Vec<Option<usize>>,
    /// The last answers of IKE SAs that ended, oldest first, for their retransmitted
    /// requests ([`Closed`]).
    closed: std::collections::VecDeque<Closed>,
}

/// The last answer of an IKE SA that ended (an authentication refused, a malformed
/// IKE_AUTH, a Delete answered): a retransmission of the request it answered gets it again,
/// protected as the first was, rather than an INVALID_IKE_SPI, for the last [`MAX_CLOSED`]
/// SAs (RFC 7296 section 2.1: a response is remembered, and may be forgotten after a while).
struct Closed {
    spi_i: u64,
    spi_r: u64,
    message_id: u32,
    response: Vec<Vec<u8>>,
}

/// How many ended SAs' last answers are kept.
const MAX_CLOSED: usize = 256;

/// Our SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 section 4).
fn signature_hashes() -> Payload {
    let data = super::cert::OUR_HASHES
        .iter()
        .flat_map(|h| h.to_be_bytes())
        .collect();
    Payload::Notify(Notify::new(notify::SIGNATURE_HASH_ALGORITHMS, data))
}

/// The hash algorithms a peer announced in its IKE_SA_INIT message.
fn announced_hashes(payloads: &[Payload]) -> Vec<u16> {
    notifies(payloads)
        .filter(|n| n.kind == notify::SIGNATURE_HASH_ALGORITHMS)
        .flat_map(|n| {
            n.data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
        })
        .collect()
}

/// Per peer of `config`, its pool's index in `pools`.
fn peer_pools(
    config: &EngineConfig,
    pools: &[AddressPool],
) -> Result<Vec<Option<usize>>, EngineError> {
    config
        .peers
        .iter()
        .map(|p| match &p.pool {
            None => Ok(None),
            Some(name) => pools
                .iter()
                .position(|pool| pool.name() == name)
                .map(Some)
                .ok_or_else(|| EngineError::UnknownPool(p.name.clone(), name.clone())),
        })
        .collect()
}

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 section 2.23).
fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

/// `period` from `now`, less up to a tenth at random: two ends configured alike then seldom
/// rekey at once (RFC 7296 section 2.8.1), as strongSwan's `rand_time`.
fn jittered(rng: &ring::rand::SystemRandom, now: Instant, period: Duration) -> Instant {
    let spread = u64::try_from(period.as_nanos() / 10).unwrap_or(u64::MAX);
    let mut b = [0u8; 8];
    let jitter = match (spread, rng.fill(&mut b)) {
        (0, _) | (_, Err(_)) => 0,
        (spread, Ok(())) => u64::from_be_bytes(b) % spread,
    };
    now + period.saturating_sub(Duration::from_nanos(jitter))
}

/// A request to start an IKE SA (RFC 7296 sections 1.2 and 3.1): IKE_SA_INIT, Message ID
/// zero, the responder's SPI zero and the Initiator flag set.
fn is_init_request(header: &Header) -> bool {
    header.exchange == exchange::IKE_SA_INIT
        && !header.is_response()
        && header.from_initiator()
        && header.spi_i != 0
        && header.spi_r == 0
        && header.message_id == 0
}

fn notifies(payloads: &[Payload]) -> impl Iterator<Item = &Notify> {
    payloads.iter().filter_map(|p| match p {
        Payload::Notify(n) => Some(n),
        _ => None,
    })
}

/// The group an INVALID_KE_PAYLOAD notify asks for (two octets, RFC 7296 section 3.10.1).
fn requested_group(payloads: &[Payload]) -> Option<DhGroup> {
    notifies(payloads)
        .find(|n| n.kind == notify::INVALID_KE_PAYLOAD)
        .and_then(|n| n.data.get(..2))
        .and_then(|b| DhGroup::from_id(u16::from_be_bytes([b[0], b[1]])))
}

/// `proposals` with `group` first: those that have it ahead of the others, and in each it
/// ahead of the other groups. A responder picks in the order offered, so it takes the group
/// of our KE payload when it can, and that costs no extra round trip (strongSwan likewise
/// keeps the old IKE SA's group when rekeying).
fn preferring(proposals: &[IkeProposal], group: DhGroup) -> Vec<IkeProposal> {
    let mut out = proposals.to_vec();
    for p in &mut out {
        if let Some(i) = p.dh.iter().position(|&g| g == group) {
            p.dh[..=i].rotate_right(1);
        }
    }
    out.sort_by_key(|p| p.dh.first() != Some(&group));
    out
}

/// Whether two identities a peer sent name the same party: byte for byte, or distinguished
/// names equal by attribute and value (as [`super::config::Identity::matches`]).
fn same_identity(a: &Identification, b: &Identification) -> bool {
    a.kind == b.kind
        && (a.data == b.data
            || (a.kind == id_type::DER_ASN1_DN && super::dn::equal(&a.data, &b.data)))
}

fn first_error(payloads: &[Payload]) -> Option<u16> {
    notifies(payloads).find(|n| n.is_error()).map(|n| n.kind)
}

/// Errors in an IKE_AUTH response that refuse only its CHILD_SA: the IKE SA is set up all
/// the same (RFC 7296 section 1.2). Any other error type, an unknown one included, fails
/// the whole request (section 3.10.1).
fn refuses_only_the_child_sa(error: u16) -> bool {
    matches!(
        error,
        notify::NO_PROPOSAL_CHOSEN
            | notify::TS_UNACCEPTABLE
            | notify::SINGLE_PAIR_REQUIRED
            | notify::INTERNAL_ADDRESS_FAILURE
            | notify::FAILED_CP_REQUIRED
    )
}

fn ts_intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let same_family = a.start.is_ipv4() == b.start.is_ipv4()
        && a.end.is_ipv4() == a.start.is_ipv4()
        && b.end.is_ipv4() == b.start.is_ipv4();
    if !same_family {
        return None;
    }
    let protocol = match (a.protocol, b.protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    (start <= end && start_port <= end_port).then_some(TrafficSelector {
        protocol,
        start_port,
        end_port,
        start,
        end,
    })
}

/// Responder narrowing (RFC 7296 section 2.9): every non-empty intersection.
fn narrow(offered: &[TrafficSelector], allowed: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for o in offered {
        for a in allowed {
            if let Some(ts) = ts_intersect(o, a) {
                if !out.contains(&ts) {
                    out.push(ts);
                }
            }
        }
    }
    out
}

/// Initiator check: the responder may only narrow what we proposed.
fn within(answer: &[TrafficSelector], proposed: &[TrafficSelector]) -> bool {
    !answer.is_empty()
        && answer.iter().all(|a| {
            proposed
                .iter()
                .any(|p| ts_intersect(a, p).as_ref() == Some(a))
        })
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let rng = ring::rand::SystemRandom::new();
        let mut cookie_secret = [0u8; 32];
        rng.fill(&mut cookie_secret)
            .map_err(|_| EngineError::Random)?;
        let pools: Vec<AddressPool> = config.pools.iter().cloned().map(AddressPool::new).collect();
        let peer_pools = peer_pools(&config, &pools)?;
        Ok(Self {
            config,
            backend: SoftwareBackend::new(),
            rng,
            sas: HashMap::new(),
            cookie_secret,
            counters: IkeCounters::default(),
            error_budget: ErrorBudget::default(),
            pools,
            peer_pools,
            closed: std::collections::VecDeque::new(),
        })
    }

    /// Replaces the configuration while running, as a changed set of SD-EWAN resources asks.
    /// A peer whose configuration is unchanged (same name, same settings, same pool) keeps
    /// its IKE SAs; the IKE SAs of peers that are gone or changed are deleted: the peer is
    /// told when the SA's window is free (best effort, no answer awaited) and the CHILD_SAs
    /// leave the dataplane at once. Pools that are unchanged keep their leases. Nothing
    /// changes when the new configuration is refused (a peer naming an unknown pool).
    pub fn reconfigure(
        &mut self,
        config: EngineConfig,
        now: Instant,
    ) -> Result<Vec<Action>, EngineError> {
        let mut pools: Vec<AddressPool> = Vec::with_capacity(config.pools.len());
        for wanted in &config.pools {
            pools.push(AddressPool::new(wanted.clone()));
        }
        let new_peer_pools = peer_pools(&config, &pools)?;
        let pool_config = |engine: &Engine, peer: usize| {
            engine.peer_pools[peer].map(|i| engine.pools[i].config().clone())
        };
        // Each current peer's index in the new configuration, if it survives unchanged.
        let survivors: Vec<Option<usize>> = (0..self.config.peers.len())
            .map(|old| {
                let peer = &self.config.peers[old];
                let new = config.peers.iter().position(|p| p.name == peer.name)?;
                let same_pool =
                    pool_config(self, old) == new_peer_pools[new].map(|i| config.pools[i].clone());
                (config.peers[new] == *peer && same_pool).then_some(new)
            })
            .collect();
        let mut actions = Vec::new();
        let mut doomed: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, sa)| survivors[sa.peer].is_none())
            .map(|(&id, _)| id)
            .collect();
        doomed.sort_unstable();
        for id in doomed {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            if sa.state == IkeState::Established && sa.outstanding.is_none() {
                let delete = Payload::Delete {
                    protocol: protocol::IKE,
                    spis: Vec::new(),
                };
                self.send_request(id, exchange::INFORMATIONAL, &[delete], now, &mut actions);
                // Not waiting for the answer: no retransmission.
                actions.retain(|a| !matches!(a, Action::ArmTimer { ike_sa, .. } if ike_sa.0 == id));
                if let Some(sa) = self.sas.get_mut(&id) {
                    sa.state = IkeState::Deleting;
                }
            }
            self.remove(id, &mut actions, None);
        }
        // Unchanged pools keep their state (leases of the surviving SAs among it).
        for pool in &mut pools {
            if let Some(old) = self.pools.iter().position(|p| p.config() == pool.config()) {
                *pool = self.pools.swap_remove(old);
            }
        }
        for sa in self.sas.values_mut() {
            if let Some(new) = survivors[sa.peer] {
                sa.peer = new;
            }
        }
        self.config = config;
        self.pools = pools;
        self.peer_pools = new_peer_pools;
        Ok(actions)
    }

    pub fn counters(&self) -> &IkeCounters {
        &self.counters
    }

    /// The state of an IKE SA, if it exists.
    pub fn state(&self, id: IkeSaId) -> Option<IkeState> {
        self.sas.get(&id.0).map(|sa| sa.state)
    }

    /// All IKE SAs with their peer name and state (for `show ipsec`).
    pub fn sas(&self) -> Vec<(IkeSaId, String, IkeState)> {
        let mut out: Vec<_> = self
            .sas
            .iter()
            .map(|(&id, sa)| {
                let name = self
                    .config
                    .peers
                    .get(sa.peer)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                (IkeSaId(id), name, sa.state)
            })
            .collect();
        out.sort_by_key(|e| e.0);
        out
    }

    /// The established IKE SA with the peer at `addr` (its address, whatever the port: a
    /// peer behind a NAT sends ESP from the address it does IKE from), the lowest id when
    /// there are several (during a rekey); for telling a sender of ESP about an SPI we do not
    /// know ([`Self::report_invalid_spi`]).
    pub fn established_sa_with(&self, addr: std::net::IpAddr) -> Option<IkeSaId> {
        self.sas
            .iter()
            .filter(|(_, sa)| sa.state == IkeState::Established && sa.remote.ip() == addr)
            .map(|(&id, _)| IkeSaId(id))
            .min_by_key(|id| id.0)
    }

    /// The earliest instant at which [`Self::handle_timeout`] has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        let timers = self
            .sas
            .values()
            .filter_map(|sa| match (&sa.outstanding, sa.state) {
                (Some(o), _) => Some(o.next_at),
                (None, IkeState::HalfOpen) => Some(sa.created + self.config.half_open_timeout),
                // A rekey waits for a free window, so only an idle SA's CHILD_SA timers count
                // (a busy one would otherwise ask to be woken again and again).
                (None, IkeState::Established) => sa
                    .children
                    .iter()
                    .flat_map(|c| [c.rekey_at, c.expire_at])
                    .chain([
                        sa.rekey_at,
                        self.config.dpd_delay.map(|d| sa.last_heard + d),
                    ])
                    .flatten()
                    .min(),
                _ => None,
            });
        // Keepalives go out busy or idle: a request outstanding is retransmitted at
        // growing intervals, which may leave the NAT longer without a packet.
        let keepalives = self.sas.values().filter_map(|sa| self.keepalive_due(sa));
        timers.chain(keepalives).min()
    }

    /// When the next NAT-keepalive of an SA is due (RFC 3948 section 4): only behind a NAT,
    /// on an established SA that moved to the NAT-T port (so that ESP goes in UDP, whose
    /// mapping the keepalive keeps), [`EngineConfig::nat_keepalive`] after the last thing
    /// we sent the peer.
    fn keepalive_due(&self, sa: &IkeSa) -> Option<Instant> {
        let interval = self.config.nat_keepalive?;
        (sa.behind_nat
            && sa.state == IkeState::Established
            && sa.local.port() == self.config.natt_port)
            .then(|| sa.last_sent + interval)
    }

    fn random_u64(&self) -> Result<u64, EngineError> {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b).map_err(|_| EngineError::Random)?;
        Ok(u64::from_be_bytes(b))
    }

    fn new_spi(&self) -> Result<u64, EngineError> {
        loop {
            let spi = self.random_u64()?;
            if spi != 0 && !self.sas.contains_key(&spi) {
                return Ok(spi);
            }
        }
    }

    fn new_child_spi(&self) -> Result<u32, EngineError> {
        loop {
            let spi = (self.random_u64()? >> 32) as u32;
            // 1-255 are reserved by IANA (RFC 4303 section 2.1).
            if spi > 255 {
                return Ok(spi);
            }
        }
    }

    fn nonce(&self) -> Result<Vec<u8>, EngineError> {
        let mut n = vec![0u8; 32];
        self.rng.fill(&mut n).map_err(|_| EngineError::Random)?;
        Ok(n)
    }

    fn send(&self, local: SocketAddr, remote: SocketAddr, message: &[u8]) -> Action {
        let mut bytes = Vec::with_capacity(message.len() + 4);
        if local.port() == self.config.natt_port {
            // The non-ESP marker (RFC 3948 section 2.2).
            bytes.extend_from_slice(&[0, 0, 0, 0]);
        }
        bytes.extend_from_slice(message);
        Action::Send {
            local,
            remote,
            bytes,
        }
    }

    fn peer_name(&self, index: usize) -> String {
        self.config
            .peers
            .get(index)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    // ---------------------------------------------------------------- initiator start

    /// Starts an IKE SA (and its first CHILD_SA) towards the named peer.
    pub fn connect(
        &mut self,
        peer_name: &str,
        now: Instant,
    ) -> Result<(IkeSaId, Vec<Action>), EngineError> {
        let index = self
            .config
            .peers
            .iter()
            .position(|p| p.name == peer_name)
            .ok_or_else(|| EngineError::UnknownPeer(peer_name.to_string()))?;
        let peer = &self.config.peers[index];
        let remote = peer
            .remote
            .ok_or_else(|| EngineError::NoRemote(peer_name.to_string()))?;
        let group = peer
            .ike_proposals
            .first()
            .and_then(|p| p.dh.first())
            .copied()
            .ok_or_else(|| EngineError::NoProposal(peer_name.to_string()))?;
        let local = peer.local;
        let spi_i = self.new_spi()?;
        let (dh, ke_public) = dh::generate(group, &self.rng).map_err(|_| EngineError::Random)?;
        let sa = IkeSa {
            spi_i,
            spi_r: 0,
            initiator: true,
            peer: index,
            state: IkeState::InitSent,
            local,
            remote,
            suite: None,
            nonce_i: self.nonce()?,
            nonce_r: Vec::new(),
            dh_group: group,
            dh: Some(dh),
            ke_public,
            keys: None,
            tx: None,
            rx: None,
            init_request: Vec::new(),
            init_response: Vec::new(),
            init_digest: None,
            peer_id: None,
            cookie: None,
            next_request_id: 0,
            expected_peer_id: 0,
            outstanding: None,
            pending: None,
            last_response: None,
            last_heard: now,
            iv_counter: 0,
            fragmentation: false,
            reassembly: None,
            peer_hashes: Vec::new(),
            nat: false,
            behind_nat: false,
            peer_behind_nat: false,
            last_sent: now,
            child_spi: self.new_child_spi()?,
            children: Vec::new(),
            created: now,
            virtual_ips: Vec::new(),
            leased: Vec::new(),
            rekey_at: None,
            init_failure: None,
        };
        self.sas.insert(spi_i, sa);
        let mut actions = Vec::new();
        self.send_init_request(spi_i, now, &mut actions);
        Ok((IkeSaId(spi_i), actions))
    }

    fn send_init_request(&mut self, id: u64, now: Instant, actions: &mut Vec<Action>) {
        let Some(sa) = self.sas.get(&id) else { return };
        let peer = &self.config.peers[sa.peer];
        let mut payloads = Vec::new();
        if let Some(cookie) = &sa.cookie {
            payloads.push(Payload::Notify(Notify::new(notify::COOKIE, cookie.clone())));
        }
        // Numbered from 1, as answers are checked (`proposal::check_ike_answer`).
        let proposals = peer
            .ike_proposals
            .iter()
            .zip(1..=u8::MAX)
            .map(|(p, number)| p.to_wire(number, &[]))
            .collect();
        payloads.push(Payload::Sa(proposals));
        payloads.push(Payload::Ke {
            group: sa.dh_group.id(),
            data: sa.ke_public.clone(),
        });
        payloads.push(Payload::Nonce(sa.nonce_i.clone()));
        payloads.push(Payload::Notify(Notify::new(
            notify::NAT_DETECTION_SOURCE_IP,
            nat_hash(sa.spi_i, 0, sa.local),
        )));
        payloads.push(Payload::Notify(Notify::new(
            notify::NAT_DETECTION_DESTINATION_IP,
            nat_hash(sa.spi_i, 0, sa.remote),
        )));
        if self.config.fragmentation {
            payloads.push(Payload::Notify(Notify::new(
                notify::IKEV2_FRAGMENTATION_SUPPORTED,
                Vec::new(),
            )));
        }
        payloads.push(signature_hashes());
        let bytes = Message::emit(sa.header(exchange::IKE_SA_INIT, 0, false), &payloads);
        let (local, remote) = (sa.local, sa.remote);
        actions.push(self.send(local, remote, &bytes));
        let next_at = now + self.config.retransmit_base;
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.init_request = bytes.clone();
            sa.next_request_id = 1;
            sa.outstanding = Some(Outstanding {
                message_id: 0,
                exchange: exchange::IKE_SA_INIT,
                messages: vec![bytes],
                transmissions: 1,
                next_at,
            });
        }
        actions.push(Action::ArmTimer {
            ike_sa: IkeSaId(id),
            at: next_at,
        });
    }

    /// Sends an encrypted request on an SA (window of one) and arms its retransmission.
    fn send_request(
        &mut self,
        id: u64,
        exchange_type: u8,
        payloads: &[Payload],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        sa.pending = None;
        let message_id = sa.next_request_id;
        let header = sa.header(exchange_type, message_id, false);
        let Some(messages) = self.seal(id, header, payloads) else {
            return;
        };
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let next_at = now + self.config.retransmit_base;
        sa.next_request_id = message_id.wrapping_add(1);
        sa.outstanding = Some(Outstanding {
            message_id,
            exchange: exchange_type,
            messages: messages.clone(),
            transmissions: 1,
            next_at,
        });
        sa.last_sent = now;
        let (local, remote) = (sa.local, sa.remote);
        self.send_all(local, remote, &messages, actions);
        actions.push(Action::ArmTimer {
            ike_sa: IkeSaId(id),
            at: next_at,
        });
    }

    /// Sends an encrypted response and remembers it for retransmitted requests.
    fn send_response(
        &mut self,
        id: u64,
        exchange_type: u8,
        message_id: u32,
        payloads: &[Payload],
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let header = sa.header(exchange_type, message_id, true);
        let Some(messages) = self.seal(id, header, payloads) else {
            return;
        };
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        sa.expected_peer_id = message_id.wrapping_add(1);
        let (local, remote) = (sa.local, sa.remote);
        self.send_all(local, remote, &messages, actions);
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.last_response = Some((message_id, messages));
        }
    }

    /// Protects a message of an established (or authenticating) IKE SA: one SK message, or,
    /// when fragmentation was negotiated and the message is larger than a fragment may be,
    /// its Encrypted Fragment messages (RFC 7383 section 2.5). `None` when the SA has no
    /// keys or sealing failed (counted).
    fn seal(&mut self, id: u64, header: Header, payloads: &[Payload]) -> Option<Vec<Vec<u8>>> {
        let sa = self.sas.get_mut(&id)?;
        let tx = sa.tx.as_ref()?;
        let max_len = if sa.fragmentation {
            self.config
                .fragment_message_len(sa.remote, sa.local.port() == self.config.natt_port)
        } else {
            usize::MAX
        };
        match seal_fragments(header, payloads, tx, &mut sa.iv_counter, max_len) {
            Ok(messages) => {
                if messages.len() > 1 {
                    self.counters.tx_fragments += messages.len() as u64;
                }
                Some(messages)
            }
            Err(_) => {
                self.counters.tx_seal_failures += 1;
                None
            }
        }
    }

    /// Sends the messages of one request or response (several when fragmented).
    fn send_all(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        messages: &[Vec<u8>],
        actions: &mut Vec<Action>,
    ) {
        actions.extend(messages.iter().map(|m| self.send(local, remote, m)));
    }

    /// Deletes an IKE SA and all its CHILD_SAs (INFORMATIONAL with Delete).
    pub fn delete_ike_sa(&mut self, id: IkeSaId, now: Instant) -> Result<Vec<Action>, EngineError> {
        let sa = self.sas.get(&id.0).ok_or(EngineError::UnknownSa)?;
        let mut actions = Vec::new();
        if sa.state != IkeState::Established {
            // Nothing authenticated to tell: just forget it.
            self.remove(id.0, &mut actions, None);
            return Ok(actions);
        }
        if sa.outstanding.is_some() {
            return Err(EngineError::Busy);
        }
        let delete = Payload::Delete {
            protocol: protocol::IKE,
            spis: Vec::new(),
        };
        self.send_request(id.0, exchange::INFORMATIONAL, &[delete], now, &mut actions);
        if let Some(sa) = self.sas.get_mut(&id.0) {
            sa.state = IkeState::Deleting;
        }
        Ok(actions)
    }

    /// Sends an empty INFORMATIONAL request (dead peer detection, RFC 7296 section 2.4); a
    /// peer that never answers makes the SA fail with [`Failure::Timeout`].
    pub fn send_dpd(&mut self, id: IkeSaId, now: Instant) -> Result<Vec<Action>, EngineError> {
        let sa = self.sas.get(&id.0).ok_or(EngineError::UnknownSa)?;
        if sa.state != IkeState::Established {
            return Err(EngineError::UnknownSa);
        }
        if sa.outstanding.is_some() {
            return Err(EngineError::Busy);
        }
        let mut actions = Vec::new();
        self.send_request(id.0, exchange::INFORMATIONAL, &[], now, &mut actions);
        Ok(actions)
    }

    /// Tells the peer that an ESP packet arrived for an SPI we do not know (RFC 7296
    /// section 2.21.4), on the IKE SA with that peer.
    pub fn report_invalid_spi(
        &mut self,
        id: IkeSaId,
        spi: u32,
        now: Instant,
    ) -> Result<Vec<Action>, EngineError> {
        let sa = self.sas.get(&id.0).ok_or(EngineError::UnknownSa)?;
        if sa.state != IkeState::Established {
            return Err(EngineError::UnknownSa);
        }
        if sa.outstanding.is_some() {
            return Err(EngineError::Busy);
        }
        let n = Payload::Notify(Notify {
            protocol: protocol::ESP,
            spi: spi.to_be_bytes().to_vec(),
            kind: notify::INVALID_SPI,
            data: Vec::new(),
        });
        let mut actions = Vec::new();
        self.send_request(id.0, exchange::INFORMATIONAL, &[n], now, &mut actions);
        Ok(actions)
    }

    /// Sends one INFORMATIONAL request carrying the error `kind` on an SA about to be removed:
    /// sent once, neither retransmitted nor waited for, since nothing will be left to answer.
    fn send_last_word(&mut self, id: u64, kind: u16, actions: &mut Vec<Action>) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let message_id = sa.next_request_id;
        sa.next_request_id = message_id.wrapping_add(1);
        let header = sa.header(exchange::INFORMATIONAL, message_id, false);
        let payloads = [Payload::Notify(Notify::new(kind, Vec::new()))];
        if let Some(messages) = self.seal(id, header, &payloads) {
            let sa = &self.sas[&id];
            self.send_all(sa.local, sa.remote, &messages, actions);
        }
    }

    fn remove(&mut self, id: u64, actions: &mut Vec<Action>, failure: Option<Failure>) {
        let Some(sa) = self.sas.remove(&id) else {
            return;
        };
        // (An IKE_SA_INIT answer, message 0, is found by its own retransmission check.)
        if let Some((message_id @ 1.., response)) = &sa.last_response {
            if self.closed.len() == MAX_CLOSED {
                self.closed.pop_front();
            }
            self.closed.push_back(Closed {
                spi_i: sa.spi_i,
                spi_r: sa.spi_r,
                message_id: *message_id,
                response: response.clone(),
            });
        }
        self.release_leases(&sa, IkeSaId(id));
        let peer = self.peer_name(sa.peer);
        for child in &sa.children {
            actions.push(Action::DeleteChildSa {
                ike_sa: IkeSaId(id),
                inbound_spi: child.inbound_spi,
                outbound_spi: child.outbound_spi,
            });
        }
        match failure {
            Some(reason) => {
                self.counters.failed += 1;
                actions.push(Action::Failed {
                    ike_sa: IkeSaId(id),
                    peer,
                    reason,
                });
            }
            None if sa.state == IkeState::Established || sa.state == IkeState::Deleting => {
                actions.push(Action::Closed {
                    ike_sa: IkeSaId(id),
                    peer,
                });
            }
            None => {}
        }
    }

    // ---------------------------------------------------------------- timers

    /// Retransmits, gives up, and forgets stale half-open SAs.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut ids: Vec<u64> = self.sas.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(sa) = self.sas.get_mut(&id) else {
                continue;
            };
            if sa.state == IkeState::HalfOpen && sa.outstanding.is_none() {
                if now >= sa.created + self.config.half_open_timeout {
                    self.counters.half_open_expired += 1;
                    self.sas.remove(&id);
                }
                continue;
            }
            let Some(o) = &mut sa.outstanding else {
                continue;
            };
            if now < o.next_at {
                continue;
            }
            if o.transmissions >= self.config.retransmit_limit {
                let reason = match sa.state {
                    IkeState::InitSent => sa.init_failure.unwrap_or(Failure::Timeout),
                    _ => Failure::Timeout,
                };
                self.remove(id, &mut actions, Some(reason));
                continue;
            }
            // Exponential back-off: base, 2 x base, 4 x base, ...
            let delay = self.config.retransmit_base * 2u32.saturating_pow(o.transmissions);
            o.transmissions += 1;
            o.next_at = now + delay;
            let (messages, at) = (o.messages.clone(), o.next_at);
            sa.last_sent = now;
            let (local, remote) = (sa.local, sa.remote);
            self.counters.retransmits += 1;
            self.send_all(local, remote, &messages, &mut actions);
            actions.push(Action::ArmTimer {
                ike_sa: IkeSaId(id),
                at,
            });
        }
        let mut ids: Vec<u64> = self.sas.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.child_timers(id, now, &mut actions);
            self.dead_peer_detection(id, now, &mut actions);
            // Last: a request sent above refreshes the NAT's mapping as well.
            self.nat_keepalive(id, now, &mut actions);
        }
        actions
    }

    /// RFC 3948 section 4: behind a NAT, a NAT-keepalive once we have been silent towards
    /// the peer for [`EngineConfig::nat_keepalive`], so that the NAT keeps the mapping by
    /// which the peer's ESP and IKE reach us. It is one 0xFF byte from the NAT-T port
    /// (section 2.3), without the non-ESP marker: the receiver tells it from IKE and ESP by
    /// its length, and drops it.
    fn nat_keepalive(&mut self, id: u64, now: Instant, actions: &mut Vec<Action>) {
        let Some(sa) = self.sas.get(&id) else {
            return;
        };
        if self.keepalive_due(sa).is_none_or(|due| now < due) {
            return;
        }
        let (local, remote) = (sa.local, sa.remote);
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.last_sent = now;
        }
        self.counters.nat_keepalives += 1;
        actions.push(Action::Send {
            local,
            remote,
            bytes: vec![0xff],
        });
    }

    /// RFC 7296 section 2.4: an established SA whose peer has been quiet for the DPD delay
    /// (and with no request of ours outstanding) gets an empty INFORMATIONAL request; a peer
    /// that never answers it makes the SA fail with [`Failure::Timeout`] once the
    /// retransmissions run out.
    fn dead_peer_detection(&mut self, id: u64, now: Instant, actions: &mut Vec<Action>) {
        let Some(delay) = self.config.dpd_delay else {
            return;
        };
        let due = self.sas.get(&id).is_some_and(|sa| {
            sa.state == IkeState::Established
                && sa.outstanding.is_none()
                && now >= sa.last_heard + delay
        });
        if due {
            self.counters.dpd_sent += 1;
            self.send_request(id, exchange::INFORMATIONAL, &[], now, actions);
        }
    }

    // ---------------------------------------------------------------- input

    /// Processes one UDP payload received on `local` from `remote`. `now` drives the
    /// protocol's timers; `wall` is the calendar time, which only certificate validity
    /// periods are checked against. Both come from the caller: the engine reads no clock.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        wall: SystemTime,
    ) -> Vec<Action> {
        self.counters.rx_messages += 1;
        let mut actions = Vec::new();
        let bytes = if local.port() == self.config.natt_port {
            match datagram {
                [0, 0, 0, 0, rest @ ..] => rest,
                _ => {
                    // ESP or a keepalive: the dataplane's business.
                    self.counters.rx_not_ike += 1;
                    return actions;
                }
            }
        } else {
            datagram
        };
        let header = match Header::parse(bytes) {
            Ok(h) => h,
            Err(ParseError::UnsupportedVersion(major)) if major > 2 => {
                // RFC 7296 section 2.5: drop it, and answer a request with
                // INVALID_MAJOR_VERSION in a version 2.0 header (the closest we support).
                self.counters.rx_bad_version += 1;
                if let Some(request) = Header::read(bytes).ok().filter(|h| !h.is_response()) {
                    let (kind, data) = (notify::INVALID_MAJOR_VERSION, Vec::new());
                    self.reply_unprotected(&request, local, remote, kind, data, now, &mut actions);
                }
                return actions;
            }
            Err(ParseError::UnsupportedVersion(_)) => {
                // IKEv1 (or a zero version): not ours to answer.
                self.counters.rx_bad_version += 1;
                return actions;
            }
            Err(_) => {
                self.counters.rx_malformed += 1;
                return actions;
            }
        };
        let message = match Message::parse(bytes) {
            Ok(m) => m,
            Err(error) => {
                self.counters.rx_malformed += 1;
                // An unknown payload marked critical is rejected with a response naming it
                // (RFC 7296 section 2.5). Anything else malformed here goes unanswered:
                // INVALID_SYNTAX may only be sent protected, once the Message ID and the
                // checksum were found valid (section 3.10.1).
                if let ParseError::UnsupportedCritical(t) = error {
                    if is_init_request(&header) {
                        let kind = notify::UNSUPPORTED_CRITICAL_PAYLOAD;
                        let data = vec![t];
                        self.reply_unprotected(
                            &header,
                            local,
                            remote,
                            kind,
                            data,
                            now,
                            &mut actions,
                        );
                    }
                }
                return actions;
            }
        };
        if header.exchange == exchange::IKE_SA_INIT {
            if is_init_request(&header) {
                self.init_request(&message, bytes, local, remote, now, &mut actions);
            } else if header.is_response() && !header.from_initiator() {
                self.init_response(&message, bytes, now, &mut actions);
            } else {
                self.counters.rx_unexpected += 1;
            }
            return actions;
        }
        // Everything else is protected and belongs to an SA: our SPI is SPIr when the sender
        // is the original initiator, SPIi otherwise.
        let our_spi = if header.from_initiator() {
            header.spi_r
        } else {
            header.spi_i
        };
        let sa = self.sas.get(&our_spi).filter(|sa| {
            sa.spi_i == header.spi_i
                && sa.spi_r == header.spi_r
                && sa.initiator != header.from_initiator()
        });
        let Some(sa) = sa else {
            self.unknown_ike_sa(&header, local, remote, now, &mut actions);
            return actions;
        };
        if header.is_response() {
            // An answer to the request outstanding, or to nothing we sent: ignored.
            match &sa.outstanding {
                Some(o) if o.message_id == header.message_id && o.exchange == header.exchange => {}
                _ => {
                    self.counters.rx_bad_message_id += 1;
                    return actions;
                }
            }
        } else if header.message_id != sa.expected_peer_id {
            match &sa.last_response {
                // A retransmitted request: the same answer again (RFC 7296 section 2.1); of
                // a fragmented one, only its first fragment asks for that (RFC 7383
                // section 2.6.1), or one lost fragment would bring the whole answer back
                // once per fragment received.
                Some((id, response))
                    if *id == header.message_id
                        && !matches!(
                            message.payloads.last(),
                            Some(Payload::EncryptedFragment { number: 2.., .. })
                        ) =>
                {
                    let response = response.clone();
                    self.counters.responses_resent += 1;
                    self.send_all(local, remote, &response, &mut actions);
                }
                _ => self.counters.rx_bad_message_id += 1,
            }
            return actions;
        }
        let protected = matches!(
            message.payloads.last(),
            Some(Payload::Encrypted { .. } | Payload::EncryptedFragment { .. })
        );
        if header.is_response() && !protected {
            self.unprotected_answer(&message.payloads);
            return actions;
        }
        let Some(rx) = &sa.rx else {
            self.counters.rx_unexpected += 1;
            return actions;
        };
        let opened = match message.payloads.last() {
            Some(&Payload::Encrypted {
                first_payload,
                offset,
            }) => open_message(bytes, offset, first_payload, rx),
            Some(&Payload::EncryptedFragment {
                first_payload,
                offset,
                number,
                total,
            }) if sa.fragmentation => {
                let part = match open_fragment(bytes, offset, rx) {
                    Ok(part) => part,
                    Err(_) => {
                        self.counters.rx_integrity_failures += 1;
                        return actions;
                    }
                };
                let fragment = Fragment {
                    message_id: header.message_id,
                    response: header.is_response(),
                    first_payload,
                    number,
                    total,
                    part,
                };
                match self.reassemble(our_spi, fragment) {
                    Some((first, inner)) => {
                        super::wire::parse_payloads(first, &inner).map_err(Into::into)
                    }
                    None => return actions,
                }
            }
            Some(Payload::EncryptedFragment { .. }) => {
                // Fragments on an SA that did not negotiate them (RFC 7383 section 2.3).
                self.counters.rx_fragments_dropped += 1;
                return actions;
            }
            _ => {
                self.counters.rx_malformed += 1;
                return actions;
            }
        };
        let payloads = match opened {
            Ok(p) => p,
            Err(super::sk::SkError::Parse(error)) => {
                self.counters.rx_malformed += 1;
                if !header.is_response() {
                    // An unknown payload marked critical names itself (RFC 7296 section
                    // 3.2); anything else is INVALID_SYNTAX (section 3.10.1).
                    let n = Payload::Notify(match error {
                        ParseError::UnsupportedCritical(t) => {
                            Notify::new(notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t])
                        }
                        _ => Notify::new(notify::INVALID_SYNTAX, Vec::new()),
                    });
                    self.send_response(
                        our_spi,
                        header.exchange,
                        header.message_id,
                        &[n],
                        &mut actions,
                    );
                    // A refused IKE_AUTH leaves no IKE SA (RFC 7296 section 2.21.2).
                    let half_open = self
                        .sas
                        .get(&our_spi)
                        .is_some_and(|sa| sa.state == IkeState::HalfOpen);
                    if header.exchange == exchange::IKE_AUTH && half_open {
                        self.remove(our_spi, &mut actions, Some(Failure::InvalidSyntax));
                    }
                }
                return actions;
            }
            Err(_) => {
                self.counters.rx_integrity_failures += 1;
                return actions;
            }
        };
        if let Some(sa) = self.sas.get_mut(&our_spi) {
            sa.last_heard = now;
        }
        self.follow_peer(our_spi, local, remote, &mut actions);
        let before = actions.len();
        match (header.exchange, header.is_response()) {
            (exchange::IKE_AUTH, false) => {
                self.auth_request(our_spi, &header, &payloads, now, wall, &mut actions)
            }
            (exchange::IKE_AUTH, true) => {
                self.auth_response(our_spi, &payloads, now, wall, &mut actions)
            }
            (exchange::INFORMATIONAL, false) => {
                self.informational_request(our_spi, &header, &payloads, &mut actions)
            }
            (exchange::INFORMATIONAL, true) => self.informational_response(our_spi, &mut actions),
            (exchange::CREATE_CHILD_SA, false) => {
                self.create_child_request(our_spi, &header, &payloads, now, &mut actions)
            }
            (exchange::CREATE_CHILD_SA, true) => {
                self.create_child_response(our_spi, &payloads, now, &mut actions)
            }
            (_, false) => self.refuse_request(our_spi, &header, &mut actions),
            _ => self.counters.rx_unexpected += 1,
        }
        // An answer or a request of ours refreshes the NAT's mapping as a keepalive would.
        if actions[before..]
            .iter()
            .any(|a| matches!(a, Action::Send { .. }))
        {
            if let Some(sa) = self.sas.get_mut(&our_spi) {
                sa.last_sent = now;
            }
        }
        actions
    }

    /// After an authenticated message on IKE SA `id`, which came to `local` from `remote`:
    /// RFC 7296 section 2.23 has the end that is not behind a NAT send everything to the
    /// address and port of the peer's last valid authenticated message, as a NAT behind
    /// which the peer is may change its mapping; the end behind a NAT SHOULD NOT follow
    /// such changes (anyone who sees a packet could replay it from elsewhere and draw the
    /// traffic away). Before authentication completes, the responder follows the
    /// initiator's move to the NAT-T port (which the initiator makes when either end is
    /// behind a NAT, section 2.23). When an established SA moves, its CHILD_SAs' tunnel
    /// moves with it ([`Action::UpdateChildSaAddresses`]).
    fn follow_peer(
        &mut self,
        id: u64,
        local: SocketAddr,
        remote: SocketAddr,
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if (sa.local, sa.remote) == (local, remote) {
            return;
        }
        let follows = sa.state == IkeState::HalfOpen || (sa.peer_behind_nat && !sa.behind_nat);
        if !follows {
            return;
        }
        sa.local = local;
        sa.remote = remote;
        if !matches!(sa.state, IkeState::Established | IkeState::Deleting) {
            return;
        }
        self.counters.peer_moves += 1;
        if sa.children.is_empty() {
            return;
        }
        actions.push(Action::UpdateChildSaAddresses {
            ike_sa: IkeSaId(id),
            spis: sa
                .children
                .iter()
                .map(|c| (c.inbound_spi, c.outbound_spi))
                .collect(),
            local_addr: local.ip(),
            remote_addr: remote.ip(),
            udp_encap: sa.nat.then(|| (local.port(), remote.port())),
        });
    }

    /// An authenticated request this SA does not take (an exchange type we do not know, an
    /// IKE_AUTH after authentication): RFC 7296 section 2.21.3 wants every erroneous request
    /// of an authenticated SA answered, here with INVALID_SYNTAX (3.10.1), so that the peer's
    /// window moves on. Before authentication it is dropped.
    fn refuse_request(&mut self, id: u64, header: &Header, actions: &mut Vec<Action>) {
        self.counters.rx_unexpected += 1;
        let authenticated = self
            .sas
            .get(&id)
            .is_some_and(|sa| matches!(sa.state, IkeState::Established | IkeState::Deleting));
        if authenticated {
            let n = Payload::Notify(Notify::new(notify::INVALID_SYNTAX, Vec::new()));
            self.send_response(id, header.exchange, header.message_id, &[n], actions);
        }
    }

    /// Stores an authenticated fragment (RFC 7383 section 2.6) and, once every fragment of
    /// its message is in, returns the first inner payload's type and the joined inner
    /// payload chain. One message is reassembled at a time per SA (the window is one): a
    /// fragment of another message replaces what was gathered. A fragment naming more
    /// fragments than those gathered so far restarts the message (the sender lowered its
    /// fragment size); one naming fewer is dropped.
    fn reassemble(&mut self, id: u64, fragment: Fragment) -> Option<(u8, Vec<u8>)> {
        let sa = self.sas.get_mut(&id)?;
        self.counters.rx_fragments += 1;
        if fragment.total > MAX_FRAGMENTS {
            self.counters.rx_fragments_dropped += 1;
            return None;
        }
        let index = usize::from(fragment.number - 1);
        let restart = match &sa.reassembly {
            Some(r) if r.message_id == fragment.message_id && r.response == fragment.response => {
                match usize::from(fragment.total).cmp(&r.parts.len()) {
                    std::cmp::Ordering::Less => {
                        self.counters.rx_fragments_dropped += 1;
                        return None;
                    }
                    std::cmp::Ordering::Equal => false,
                    std::cmp::Ordering::Greater => true,
                }
            }
            _ => true,
        };
        if restart {
            sa.reassembly = Some(Reassembly {
                message_id: fragment.message_id,
                response: fragment.response,
                first_payload: 0,
                parts: vec![None; usize::from(fragment.total)],
                received: 0,
                bytes: 0,
            });
        }
        let r = sa.reassembly.as_mut()?;
        if r.parts[index].is_some() || r.bytes + fragment.part.len() > MAX_REASSEMBLED {
            self.counters.rx_fragments_dropped += 1;
            return None;
        }
        if fragment.number == 1 {
            r.first_payload = fragment.first_payload;
        }
        r.bytes += fragment.part.len();
        r.received += 1;
        r.parts[index] = Some(fragment.part);
        if r.received < r.parts.len() {
            return None;
        }
        let r = sa.reassembly.take()?;
        self.counters.rx_reassembled += 1;
        let inner = r.parts.into_iter().flatten().flatten().collect();
        Some((r.first_payload, inner))
    }

    /// Answers `request` with an unprotected Notify (RFC 7296 section 2.21.1): the same SPIs,
    /// exchange and Message ID, the Response flag, the Initiator flag as the other end of
    /// the request's sender, version 2.0, to the address and port it came from. Error
    /// notifications are rationed ([`ErrorBudget`]); COOKIE answers are not, being the
    /// defence against floods. Whether the answer went out.
    #[allow(clippy::too_many_arguments)]
    fn reply_unprotected(
        &mut self,
        request: &Header,
        local: SocketAddr,
        remote: SocketAddr,
        kind: u16,
        data: Vec<u8>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> bool {
        if kind != notify::COOKIE && !self.error_budget.allow(now) {
            self.counters.unprotected_errors_limited += 1;
            return false;
        }
        let initiator = if request.from_initiator() {
            0
        } else {
            FLAG_INITIATOR
        };
        let header = Header {
            spi_i: request.spi_i,
            spi_r: request.spi_r,
            next_payload: 0,
            version: VERSION,
            exchange: request.exchange,
            flags: FLAG_RESPONSE | initiator,
            message_id: request.message_id,
            length: 0,
        };
        let bytes = Message::emit(header, &[Payload::Notify(Notify::new(kind, data))]);
        actions.push(self.send(local, remote, &bytes));
        true
    }

    /// A message for an IKE SA we do not have, besides a request to start one (RFC 7296
    /// section 2.21.4): most likely for one we forgot (a restart, a half-open SA timed out)
    /// that the peer still uses. A response is never answered, or two ends that both lost
    /// the SA would answer each other for ever. A request gets INVALID_IKE_SPI, unprotected
    /// and rationed: the peer then learns at once that its SA is gone rather than
    /// retransmitting until it gives up.
    fn unknown_ike_sa(
        &mut self,
        header: &Header,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.counters.rx_unknown_spi += 1;
        if header.is_response() {
            return;
        }
        // The retransmitted last request of an SA that ended: its answer again.
        let closed = self.closed.iter().rev().find(|c| {
            c.spi_i == header.spi_i && c.spi_r == header.spi_r && c.message_id == header.message_id
        });
        if let Some(closed) = closed {
            let response = closed.response.clone();
            self.counters.responses_resent += 1;
            self.send_all(local, remote, &response, actions);
            return;
        }
        let kind = notify::INVALID_IKE_SPI;
        if self.reply_unprotected(header, local, remote, kind, Vec::new(), now, actions) {
            self.counters.tx_invalid_ike_spi += 1;
        }
    }

    /// An unprotected answer to our request outstanding on IKE SA `id`: an error the peer
    /// could not protect, or a forgery by anyone who saw the request. Only INVALID_IKE_SPI
    /// means anything, the peer saying it has no such SA, and RFC 7296 section 2.21.4 says a
    /// node receiving it MUST NOT change the state of any existing SA, only take it as a hint
    /// to check liveness: anyone who saw our request can forge one. So the SA is left as it
    /// is, half-open (IKE_AUTH sent) or established: the outstanding request goes on being
    /// retransmitted, which is that check, and a peer that really lost the SA is found dead
    /// when it times out. Anything else unprotected is dropped.
    fn unprotected_answer(&mut self, payloads: &[Payload]) {
        if notifies(payloads).any(|n| n.kind == notify::INVALID_IKE_SPI) {
            self.counters.rx_invalid_ike_spi += 1;
        } else {
            self.counters.rx_malformed += 1;
        }
    }

    fn cookie_for(&self, nonce_i: &[u8], remote: IpAddr, spi_i: u64) -> Vec<u8> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(nonce_i);
        match remote {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&spi_i.to_be_bytes());
        ctx.update(&self.cookie_secret);
        let mut cookie = vec![0u8];
        cookie.extend_from_slice(ctx.finish().as_ref());
        cookie
    }

    // ---------------------------------------------------------------- IKE_SA_INIT

    fn init_request(
        &mut self,
        message: &Message,
        raw: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let header = message.header;
        // RFC 7296 section 2.1: a retransmission of the request of a half-open SA gets the
        // same answer; one of an SA whose IKE_AUTH already arrived is ignored; anything else
        // is a new request, even with the SPIi of an existing SA (two initiators behind one
        // NAT may pick the same, an initiator may restart), and makes a new SA. The whole
        // request, by its hash, tells them apart. The port is not compared: the SA follows
        // the initiator to the NAT-T port once IKE_AUTH arrives.
        let digest = ring::digest::digest(&ring::digest::SHA256, raw)
            .as_ref()
            .to_vec();
        let earlier = self.sas.values().find(|sa| {
            !sa.initiator
                && sa.spi_i == header.spi_i
                && sa.remote.ip() == remote.ip()
                && sa.init_digest.as_deref() == Some(digest.as_slice())
        });
        if let Some(sa) = earlier {
            if sa.state == IkeState::HalfOpen && !sa.init_response.is_empty() {
                let response = sa.init_response.clone();
                self.counters.responses_resent += 1;
                actions.push(self.send(local, remote, &response));
            } else {
                self.counters.stale_init_requests += 1;
            }
            return;
        }
        let payloads = &message.payloads;
        let mut sa_payload = None;
        let mut ke = None;
        let mut nonce = None;
        for p in payloads {
            match p {
                Payload::Sa(proposals) => sa_payload = Some(proposals),
                Payload::Ke { group, data } => ke = Some((*group, data)),
                Payload::Nonce(n) => nonce = Some(n),
                _ => {}
            }
        }
        let (Some(offered), Some((ke_group, ke_data)), Some(nonce_i)) = (sa_payload, ke, nonce)
        else {
            // Not answered: INVALID_SYNTAX only ever goes protected (RFC 7296 section
            // 3.10.1).
            self.counters.rx_malformed += 1;
            return;
        };
        // Cookies under load (RFC 7296 section 2.6), and a bound on half-open SAs.
        let half_open =
            if self.config.cookie_threshold.is_some() || self.config.half_open_limit.is_some() {
                self.sas
                    .values()
                    .filter(|sa| sa.state == IkeState::HalfOpen)
                    .count()
            } else {
                0
            };
        if let Some(threshold) = self.config.cookie_threshold {
            if half_open >= threshold {
                let expected = self.cookie_for(nonce_i, remote.ip(), header.spi_i);
                let presented = match payloads.first() {
                    Some(Payload::Notify(n)) if n.kind == notify::COOKIE => Some(&n.data),
                    _ => None,
                };
                let valid = presented.is_some_and(|c| bool::from(c.as_slice().ct_eq(&expected)));
                if !valid {
                    if presented.is_some() {
                        self.counters.cookies_rejected += 1;
                    }
                    self.counters.cookies_sent += 1;
                    self.reply_unprotected(
                        &header,
                        local,
                        remote,
                        notify::COOKIE,
                        expected,
                        now,
                        actions,
                    );
                    return;
                }
            }
        }
        if self
            .config
            .half_open_limit
            .is_some_and(|limit| half_open >= limit)
        {
            self.counters.half_open_refused += 1;
            return;
        }
        let candidates: Vec<usize> = self
            .config
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.remote.is_none_or(|r| r.ip() == remote.ip()))
            .map(|(i, _)| i)
            .collect();
        // Proposals of an initial exchange carry no SPI (RFC 7296 section 3.3.1): one that
        // does is malformed, and not chosen.
        let offered: Vec<super::wire::Proposal> = offered
            .iter()
            .filter(|p| p.spi.is_empty())
            .cloned()
            .collect();
        let chosen = candidates.iter().find_map(|&i| {
            proposal::select_ike_for_ke(&offered, &self.config.peers[i].ike_proposals, ke_group)
                .map(|(n, s)| (i, n, s))
        });
        let Some((peer, number, suite)) = chosen else {
            self.counters.no_proposal_chosen += 1;
            self.reply_unprotected(
                &header,
                local,
                remote,
                notify::NO_PROPOSAL_CHOSEN,
                Vec::new(),
                now,
                actions,
            );
            return;
        };
        if ke_group != suite.dh.id() {
            self.counters.invalid_ke += 1;
            let group = suite.dh.id().to_be_bytes().to_vec();
            self.reply_unprotected(
                &header,
                local,
                remote,
                notify::INVALID_KE_PAYLOAD,
                group,
                now,
                actions,
            );
            return;
        }
        let Ok((dh, ke_public)) = dh::generate(suite.dh, &self.rng) else {
            return;
        };
        let Ok(shared) = dh.agree(ke_data) else {
            // A public value of the wrong length or out of range (RFC 7296 sections 3.4 and
            // 5): dropped, as any malformed IKE_SA_INIT request.
            self.counters.rx_malformed += 1;
            return;
        };
        let (Ok(spi_r), Ok(nonce_r), Ok(child_spi)) =
            (self.new_spi(), self.nonce(), self.new_child_spi())
        else {
            return;
        };
        // NAT detection: hashes over the request's SPIs (SPIr still zero).
        let nat_src: Vec<&Notify> = notifies(payloads)
            .filter(|n| n.kind == notify::NAT_DETECTION_SOURCE_IP)
            .collect();
        let nat_dst: Vec<&Notify> = notifies(payloads)
            .filter(|n| n.kind == notify::NAT_DETECTION_DESTINATION_IP)
            .collect();
        let peer_natted = !nat_src.is_empty()
            && !nat_src
                .iter()
                .any(|n| n.data == nat_hash(header.spi_i, 0, remote));
        let we_natted = !nat_dst.is_empty()
            && !nat_dst
                .iter()
                .any(|n| n.data == nat_hash(header.spi_i, 0, local));
        let Some(keys) = derive_ike_keys(&suite, nonce_i, &nonce_r, &shared, header.spi_i, spi_r)
        else {
            return;
        };
        let Ok((tx, rx)) = SkCipher::pair(&self.backend, &suite, &keys, false) else {
            return;
        };
        let mut response_payloads = vec![
            Payload::Sa(vec![IkeProposal::from_suite(&suite).to_wire(number, &[])]),
            Payload::Ke {
                group: suite.dh.id(),
                data: ke_public,
            },
            Payload::Nonce(nonce_r.clone()),
            Payload::Notify(Notify::new(
                notify::NAT_DETECTION_SOURCE_IP,
                nat_hash(header.spi_i, spi_r, local),
            )),
            Payload::Notify(Notify::new(
                notify::NAT_DETECTION_DESTINATION_IP,
                nat_hash(header.spi_i, spi_r, remote),
            )),
        ];
        let peer_fragments =
            notifies(payloads).any(|n| n.kind == notify::IKEV2_FRAGMENTATION_SUPPORTED);
        if self.config.fragmentation && peer_fragments {
            response_payloads.push(Payload::Notify(Notify::new(
                notify::IKEV2_FRAGMENTATION_SUPPORTED,
                Vec::new(),
            )));
        }
        let peer_hashes = announced_hashes(payloads);
        if !peer_hashes.is_empty() {
            response_payloads.push(signature_hashes());
        }
        if let Some(certs) = &self.config.peers[peer].certs {
            // Ask for the initiator's certificate from our CA (strongSwan sends it only
            // when asked).
            response_payloads.push(certs.certreq_payload());
        }
        let sa = IkeSa {
            spi_i: header.spi_i,
            spi_r,
            initiator: false,
            peer,
            state: IkeState::HalfOpen,
            local,
            remote,
            suite: Some(suite),
            nonce_i: nonce_i.clone(),
            nonce_r,
            dh_group: suite.dh,
            dh: None,
            ke_public: Vec::new(),
            keys: Some(keys),
            tx: Some(tx),
            rx: Some(rx),
            init_request: raw.to_vec(),
            init_response: Vec::new(),
            init_digest: Some(digest),
            peer_id: None,
            cookie: None,
            next_request_id: 0,
            expected_peer_id: 1,
            outstanding: None,
            pending: None,
            last_response: None,
            last_heard: now,
            iv_counter: 0,
            fragmentation: self.config.fragmentation && peer_fragments,
            reassembly: None,
            peer_hashes,
            nat: peer_natted || we_natted || self.config.force_udp_encap,
            behind_nat: we_natted,
            peer_behind_nat: peer_natted,
            last_sent: now,
            child_spi,
            children: Vec::new(),
            created: now,
            virtual_ips: Vec::new(),
            leased: Vec::new(),
            rekey_at: None,
            init_failure: None,
        };
        let bytes = Message::emit(
            sa.header(exchange::IKE_SA_INIT, 0, true),
            &response_payloads,
        );
        let mut sa = sa;
        sa.init_response = bytes.clone();
        sa.last_response = Some((0, vec![bytes.clone()]));
        self.sas.insert(spi_r, sa);
        actions.push(self.send(local, remote, &bytes));
        actions.push(Action::ArmTimer {
            ike_sa: IkeSaId(spi_r),
            at: now + self.config.half_open_timeout,
        });
    }

    fn init_response(
        &mut self,
        message: &Message,
        raw: &[u8],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let header = message.header;
        let id = header.spi_i;
        let Some(sa) = self.sas.get_mut(&id) else {
            self.counters.rx_unknown_spi += 1;
            return;
        };
        if sa.state != IkeState::InitSent || !sa.initiator || header.message_id != 0 {
            self.counters.rx_unexpected += 1;
            return;
        }
        let payloads = &message.payloads;
        let peer = &self.config.peers[sa.peer];
        // COOKIE: retry with it in front, everything else unchanged.
        if let Some(cookie) = notifies(payloads).find(|n| n.kind == notify::COOKIE) {
            if cookie.data.is_empty() || cookie.data.len() > 64 {
                self.counters.rx_malformed += 1;
                return;
            }
            sa.cookie = Some(cookie.data.clone());
            self.send_init_request(id, now, actions);
            return;
        }
        if let Some(n) = notifies(payloads).find(|n| n.kind == notify::INVALID_KE_PAYLOAD) {
            let requested = n.data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            let group = requested.and_then(DhGroup::from_id).filter(|g| {
                *g != sa.dh_group && peer.ike_proposals.iter().any(|p| p.dh.contains(g))
            });
            let Some(group) = group else {
                sa.init_failure = Some(Failure::UnsupportedGroup(requested.unwrap_or(0)));
                return;
            };
            let Ok((dh, public)) = dh::generate(group, &self.rng) else {
                return;
            };
            sa.dh_group = group;
            sa.dh = Some(dh);
            sa.ke_public = public;
            self.send_init_request(id, now, actions);
            return;
        }
        // Everything unauthenticated that would fail the IKE SA only marks it: a forged
        // answer must not end the exchange a real one may still complete (RFC 7296 section
        // 2.21.1). The retransmissions go on; the last such failure is reported if they
        // run out.
        if let Some(error) = first_error(payloads) {
            sa.init_failure = Some(Failure::PeerError(error));
            return;
        }
        let mut answer = None;
        let mut ke = None;
        let mut nonce = None;
        for p in payloads {
            match p {
                Payload::Sa(proposals) => answer = Some(proposals),
                Payload::Ke { group, data } => ke = Some((*group, data)),
                Payload::Nonce(n) => nonce = Some(n),
                _ => {}
            }
        }
        let (Some(answer), Some((ke_group, ke_data)), Some(nonce_r)) = (answer, ke, nonce) else {
            sa.init_failure = Some(Failure::InvalidSyntax);
            return;
        };
        if header.spi_r == 0 {
            // A real answer names the responder's SPI (RFC 7296 section 3.1).
            sa.init_failure = Some(Failure::InvalidSyntax);
            return;
        }
        let Some(suite) = proposal::check_ike_answer(answer, &peer.ike_proposals) else {
            sa.init_failure = Some(Failure::ProposalMismatch);
            return;
        };
        if suite.dh != sa.dh_group || ke_group != suite.dh.id() {
            sa.init_failure = Some(Failure::ProposalMismatch);
            return;
        }
        // The private value is used up by the agreement: a KE of the wrong size must not
        // cost it, so that the real answer can still complete the exchange.
        if ke_data.len() != suite.dh.public_len() {
            sa.init_failure = Some(Failure::InvalidSyntax);
            return;
        }
        let Some(dh) = sa.dh.take() else { return };
        let Ok(shared) = dh.agree(ke_data) else {
            self.remove(id, actions, Some(Failure::InvalidSyntax));
            return;
        };
        let spi_r = header.spi_r;
        let Some(keys) = derive_ike_keys(&suite, &sa.nonce_i, nonce_r, &shared, sa.spi_i, spi_r)
        else {
            return;
        };
        let Ok((tx, rx)) = SkCipher::pair(&self.backend, &suite, &keys, true) else {
            return;
        };
        let nat_src: Vec<&Notify> = notifies(payloads)
            .filter(|n| n.kind == notify::NAT_DETECTION_SOURCE_IP)
            .collect();
        let nat_dst: Vec<&Notify> = notifies(payloads)
            .filter(|n| n.kind == notify::NAT_DETECTION_DESTINATION_IP)
            .collect();
        let peer_natted = !nat_src.is_empty()
            && !nat_src
                .iter()
                .any(|n| n.data == nat_hash(sa.spi_i, spi_r, sa.remote));
        let we_natted = !nat_dst.is_empty()
            && !nat_dst
                .iter()
                .any(|n| n.data == nat_hash(sa.spi_i, spi_r, sa.local));
        let peer_supports_natt = !nat_src.is_empty() && !nat_dst.is_empty();
        sa.nat = peer_natted || we_natted || self.config.force_udp_encap;
        sa.behind_nat = we_natted;
        sa.peer_behind_nat = peer_natted;
        sa.fragmentation = self.config.fragmentation
            && notifies(payloads).any(|n| n.kind == notify::IKEV2_FRAGMENTATION_SUPPORTED);
        sa.peer_hashes = announced_hashes(payloads);
        if sa.nat && peer_supports_natt {
            // Move IKE to the NAT-T port (RFC 7296 section 2.23).
            sa.local.set_port(self.config.natt_port);
            sa.remote.set_port(self.config.natt_port);
        }
        sa.spi_r = spi_r;
        sa.suite = Some(suite);
        sa.nonce_r = nonce_r.clone();
        sa.init_response = raw.to_vec();
        sa.tx = Some(tx);
        sa.rx = Some(rx);
        sa.outstanding = None;
        sa.init_failure = None;
        sa.state = IkeState::AuthSent;

        // IKE_AUTH request: IDi, [CERT, CERTREQ], [IDr], AUTH, ...
        let id_i = peer.local_id.to_wire();
        let (peer_index, init_request, peer_hashes) =
            (sa.peer, sa.init_request.clone(), sa.peer_hashes.clone());
        let signed = Signed {
            prf: suite.prf,
            real_message: &init_request,
            nonce: nonce_r,
            sk_p: &keys.sk_pi,
        };
        let Some((certs, auth)) = self.our_auth(peer_index, &signed, &id_i, &peer_hashes) else {
            self.remove(id, actions, Some(Failure::Config));
            return;
        };
        let only_contact = self.only_contact(id, peer_index, None);
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let peer = &self.config.peers[peer_index];
        sa.keys = Some(keys);
        let mut out = vec![Payload::IdI(id_i)];
        if let Some(ours) = &peer.certs {
            out.extend(certs);
            out.push(ours.certreq_payload());
        }
        if only_contact {
            // RFC 7296 section 2.4: the peer may drop the SAs it still has with us, which
            // we have not got (we restarted, or they failed here unnoticed there).
            out.push(Payload::Notify(Notify::new(
                notify::INITIAL_CONTACT,
                Vec::new(),
            )));
        }
        if let Some(remote_id) = &peer.remote_id {
            out.push(Payload::IdR(remote_id.to_wire()));
        }
        out.push(auth);
        if !peer.virtual_ips.is_empty() {
            // RFC 7296 section 2.19: CP(CFG_REQUEST) goes between AUTH and SAi2.
            out.push(Payload::Cp {
                cfg_type: cfg::REQUEST,
                attributes: AddressRequest::for_addresses(&peer.virtual_ips).attributes(),
            });
        }
        // Numbered from 1, as the answer is checked (`proposal::check_esp_answer`).
        let proposals = peer
            .esp_proposals
            .iter()
            .zip(1..=u8::MAX)
            .map(|(p, number)| p.to_wire(number, sa.child_spi, false))
            .collect();
        out.push(Payload::Sa(proposals));
        out.push(Payload::TsI(peer.local_ts.clone()));
        out.push(Payload::TsR(peer.remote_ts.clone()));
        self.send_request(id, exchange::IKE_AUTH, &out, now, actions);
    }

    // ---------------------------------------------------------------- INITIAL_CONTACT

    /// Whether IKE SA `id`, of peer configuration `peer`, is the only one with that peer,
    /// so that its IKE_AUTH may carry INITIAL_CONTACT (RFC 7296 section 2.4): no other SA of
    /// the configuration exists, but those authenticated as another identity than `peer_id`
    /// (`None`: not known yet, as for an initiator). An SA not authenticated yet counts as
    /// the same peer: an exchange of either end under way (both connecting at once) must
    /// not have the other end drop the SA it completes.
    fn only_contact(&self, id: u64, peer: usize, peer_id: Option<&Identification>) -> bool {
        !self.sas.iter().any(|(&other, sa)| {
            other != id
                && sa.peer == peer
                && match (&sa.peer_id, peer_id) {
                    (Some(theirs), Some(wanted)) => same_identity(theirs, wanted),
                    _ => true,
                }
        })
    }

    /// The peer of IKE SA `id`, just authenticated, sent INITIAL_CONTACT in its first
    /// IKE_AUTH message (RFC 7296 section 2.4): it restarted, and every other IKE SA of ours
    /// with the same peer configuration and authenticated identity is gone at its end. They
    /// are removed with their CHILD_SAs at once, rather than when dead peer detection gives
    /// up on them, and without a Delete, which the peer could only answer with
    /// INVALID_IKE_SPI. SAs not authenticated yet are left alone.
    fn initial_contact(&mut self, id: u64, payloads: &[Payload], actions: &mut Vec<Action>) {
        if !notifies(payloads).any(|n| n.kind == notify::INITIAL_CONTACT) {
            return;
        }
        let Some(sa) = self.sas.get(&id) else { return };
        let Some(peer_id) = &sa.peer_id else { return };
        let mut stale: Vec<u64> = self
            .sas
            .iter()
            .filter(|(&other, other_sa)| {
                other != id
                    && other_sa.peer == sa.peer
                    && other_sa
                        .peer_id
                        .as_ref()
                        .is_some_and(|theirs| same_identity(theirs, peer_id))
            })
            .map(|(&other, _)| other)
            .collect();
        stale.sort_unstable();
        for other in stale {
            self.counters.initial_contact_removals += 1;
            self.remove(other, actions, None);
        }
    }

    // ---------------------------------------------------------------- IKE_AUTH

    fn auth_request(
        &mut self,
        id: u64,
        header: &Header,
        payloads: &[Payload],
        now: Instant,
        wall: SystemTime,
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get(&id) else { return };
        if sa.state != IkeState::HalfOpen || header.message_id != 1 {
            return self.refuse_request(id, header, actions);
        }
        let _ = now;
        let mut id_i = None;
        let mut auth = None;
        let mut offered = None;
        let mut ts_i = None;
        let mut ts_r = None;
        for p in payloads {
            match p {
                Payload::IdI(i) => id_i = Some(i),
                Payload::Auth { method, data } => auth = Some((*method, data)),
                Payload::Sa(s) => offered = Some(s),
                Payload::TsI(t) => ts_i = Some(t),
                Payload::TsR(t) => ts_r = Some(t),
                _ => {}
            }
        }
        // IDi, AUTH, SAi2, TSi and TSr are all required (RFC 7296 section 1.2; we offer no
        // childless IKE_AUTH, RFC 6023). A request without them fails as a whole: the
        // initiator takes INVALID_SYNTAX to mean just that (section 3.10.1).
        let (Some(id_i), Some((method, auth_data)), Some(offered), Some(ts_i), Some(ts_r)) =
            (id_i, auth, offered, ts_i, ts_r)
        else {
            let n = Payload::Notify(Notify::new(notify::INVALID_SYNTAX, Vec::new()));
            self.send_response(id, exchange::IKE_AUTH, header.message_id, &[n], actions);
            self.remove(id, actions, Some(Failure::InvalidSyntax));
            return;
        };
        let (Some(suite), Some(keys)) = (sa.suite, &sa.keys) else {
            return;
        };
        let remote_ip = sa.remote.ip();
        // The peer configuration: the address matched at IKE_SA_INIT, now the identity too.
        let peer = self
            .config
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.remote.is_none_or(|r| r.ip() == remote_ip))
            .find(|(_, p)| p.remote_id.as_ref().is_none_or(|r| r.matches(id_i)))
            .map(|(i, _)| i);
        let (init_request, nonce_r, sk_pi) = (
            sa.init_request.clone(),
            sa.nonce_r.clone(),
            keys.sk_pi.clone(),
        );
        let signed = Signed {
            prf: suite.prf,
            real_message: &init_request,
            nonce: &nonce_r,
            sk_p: &sk_pi,
        };
        let verified = peer.is_some_and(|i| {
            self.peer_auth_ok(i, &signed, id_i, (method, auth_data), payloads, wall)
        });
        let Some(peer_index) = peer.filter(|_| verified) else {
            self.counters.auth_failures += 1;
            let n = Payload::Notify(Notify::new(notify::AUTHENTICATION_FAILED, Vec::new()));
            self.send_response(id, exchange::IKE_AUTH, header.message_id, &[n], actions);
            self.remove(id, actions, Some(Failure::AuthenticationFailed));
            return;
        };
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.peer = peer_index;
            sa.peer_id = Some(id_i.clone());
        }
        self.initial_contact(id, payloads, actions);
        // Ours too, when we have no other SA with this peer: it may hold some we lost.
        let only_contact = self.only_contact(id, peer_index, Some(id_i));
        // A virtual IP for the peer, if it asks and this connection has a pool.
        let configuration = self.serve_cfg_request(id, id_i, payloads);
        let Some(sa) = self.sas.get(&id) else { return };
        let (Some(suite), Some(keys)) = (sa.suite, &sa.keys) else {
            return;
        };
        let id_r = self.config.peers[peer_index].local_id.to_wire();
        let (init_response, nonce_i, sk_pr, peer_hashes) = (
            sa.init_response.clone(),
            sa.nonce_i.clone(),
            keys.sk_pr.clone(),
            sa.peer_hashes.clone(),
        );
        let signed = Signed {
            prf: suite.prf,
            real_message: &init_response,
            nonce: &nonce_i,
            sk_p: &sk_pr,
        };
        let Some((certs, auth_r)) = self.our_auth(peer_index, &signed, &id_r, &peer_hashes) else {
            let n = Payload::Notify(Notify::new(notify::AUTHENTICATION_FAILED, Vec::new()));
            self.send_response(id, exchange::IKE_AUTH, header.message_id, &[n], actions);
            self.remove(id, actions, Some(Failure::Config));
            return;
        };
        let Some(sa) = self.sas.get(&id) else { return };
        let peer = &self.config.peers[peer_index];
        // IDr, [CERT...], AUTH, ...
        let mut out = vec![Payload::IdR(id_r)];
        out.extend(certs);
        out.push(auth_r);
        if only_contact {
            out.push(Payload::Notify(Notify::new(
                notify::INITIAL_CONTACT,
                Vec::new(),
            )));
        }
        // The CHILD_SA.
        let mut install = None;
        let mut child_failure = None;
        let remote_allowed = match configuration {
            CfgAnswer::None => peer.remote_ts.clone(),
            CfgAnswer::Reply { payload, leased } => {
                out.push(payload);
                if leased.is_empty() {
                    peer.remote_ts.clone()
                } else {
                    leased.into_iter().map(super::cp::host_selector).collect()
                }
            }
            CfgAnswer::AddressFailure => {
                // RFC 7296 section 3.15.4: the IKE SA is set up, no CHILD_SA.
                child_failure = Some(notify::INTERNAL_ADDRESS_FAILURE);
                Vec::new()
            }
        };
        if child_failure.is_none() {
            match proposal::select_esp(offered, &peer.esp_proposals) {
                None => {
                    self.counters.no_proposal_chosen += 1;
                    child_failure = Some(notify::NO_PROPOSAL_CHOSEN);
                }
                Some((number, peer_spi, child_suite)) => {
                    let narrowed_i = narrow(ts_i, &remote_allowed);
                    let narrowed_r = narrow(ts_r, &peer.local_ts);
                    if narrowed_i.is_empty() || narrowed_r.is_empty() {
                        self.counters.ts_unacceptable += 1;
                        child_failure = Some(notify::TS_UNACCEPTABLE);
                    } else {
                        out.push(Payload::Sa(vec![EspProposal::from_suite(&child_suite)
                            .to_wire(number, sa.child_spi, false)]));
                        out.push(Payload::TsI(narrowed_i.clone()));
                        out.push(Payload::TsR(narrowed_r.clone()));
                        install = Some((peer_spi, child_suite, narrowed_r, narrowed_i));
                    }
                }
            }
        }
        if let Some(kind) = child_failure {
            out.push(Payload::Notify(Notify::new(kind, Vec::new())));
        }
        let peer_name = peer.name.clone();
        let rekey_at = peer
            .ike_lifetime
            .map(|period| jittered(&self.rng, now, period));
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.state = IkeState::Established;
            sa.rekey_at = rekey_at;
            // Both AUTH payloads are done: nothing needs the IKE_SA_INIT messages now
            // (`init_digest` still recognises a late retransmission of the request).
            sa.init_request = Vec::new();
            sa.init_response = Vec::new();
        }
        self.counters.established += 1;
        actions.push(Action::Established {
            ike_sa: IkeSaId(id),
            peer: peer_name.clone(),
        });
        // Install before answering: the initiator sends ESP as soon as it reads the answer,
        // and a shell that carries out the actions in order has the SA in place by then.
        match install {
            Some((peer_spi, child_suite, local_ts, remote_ts)) => {
                self.install_child(id, peer_spi, child_suite, local_ts, remote_ts, now, actions)
            }
            None => actions.push(Action::ChildFailed {
                ike_sa: IkeSaId(id),
                peer: peer_name,
                reason: Failure::PeerError(child_failure.unwrap_or(notify::INVALID_SYNTAX)),
            }),
        }
        self.send_response(id, exchange::IKE_AUTH, header.message_id, &out, actions);
    }

    fn auth_response(
        &mut self,
        id: u64,
        payloads: &[Payload],
        now: Instant,
        wall: SystemTime,
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if sa.state != IkeState::AuthSent {
            self.counters.rx_unexpected += 1;
            return;
        }
        sa.outstanding = None;
        let mut id_r = None;
        let mut auth = None;
        let mut answer = None;
        let mut ts_i = None;
        let mut ts_r = None;
        for p in payloads {
            match p {
                Payload::IdR(i) => id_r = Some(i),
                Payload::Auth { method, data } => auth = Some((*method, data)),
                Payload::Sa(s) => answer = Some(s),
                Payload::TsI(t) => ts_i = Some(t),
                Payload::TsR(t) => ts_r = Some(t),
                _ => {}
            }
        }
        let (Some(id_r), Some((method, auth_data))) = (id_r, auth) else {
            let reason = match first_error(payloads) {
                Some(notify::AUTHENTICATION_FAILED) => Failure::AuthenticationFailed,
                Some(other) => Failure::PeerError(other),
                None => Failure::InvalidSyntax,
            };
            if reason == Failure::AuthenticationFailed {
                self.counters.auth_failures += 1;
            }
            self.remove(id, actions, Some(reason));
            return;
        };
        let (Some(suite), Some(keys)) = (sa.suite, &sa.keys) else {
            return;
        };
        let peer_index = sa.peer;
        let (init_response, nonce_i, sk_pr) = (
            sa.init_response.clone(),
            sa.nonce_i.clone(),
            keys.sk_pr.clone(),
        );
        let signed = Signed {
            prf: suite.prf,
            real_message: &init_response,
            nonce: &nonce_i,
            sk_p: &sk_pr,
        };
        let id_ok = self.config.peers[peer_index]
            .remote_id
            .as_ref()
            .is_none_or(|r| r.matches(id_r));
        if !id_ok
            || !self.peer_auth_ok(
                peer_index,
                &signed,
                id_r,
                (method, auth_data),
                payloads,
                wall,
            )
        {
            self.counters.auth_failures += 1;
            // The responder authenticated us, so it holds the SA as established: say why it
            // goes (section 2.21.2 allows this one request started by an error in a response).
            self.send_last_word(id, notify::AUTHENTICATION_FAILED, actions);
            self.remove(id, actions, Some(Failure::AuthenticationFailed));
            return;
        }
        if let Some(error) = first_error(payloads).filter(|&e| !refuses_only_the_child_sa(e)) {
            self.remove(id, actions, Some(Failure::PeerError(error)));
            return;
        }
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.peer_id = Some(id_r.clone());
            // Both AUTH payloads are done: nothing needs the IKE_SA_INIT messages now.
            sa.init_request = Vec::new();
            sa.init_response = Vec::new();
        }
        self.initial_contact(id, payloads, actions);
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let peer = &self.config.peers[sa.peer];
        sa.state = IkeState::Established;
        sa.rekey_at = peer
            .ike_lifetime
            .map(|period| jittered(&self.rng, now, period));
        let peer_name = peer.name.clone();
        let our_child_spi = sa.child_spi;
        self.counters.established += 1;
        actions.push(Action::Established {
            ike_sa: IkeSaId(id),
            peer: peer_name.clone(),
        });
        // The virtual IPs the peer assigned, when we asked for some.
        let vips = (!peer.virtual_ips.is_empty()).then(|| {
            let (addresses, malformed) = assigned_addresses(payloads, &peer.virtual_ips);
            self.counters.cp_malformed += malformed;
            addresses
        });
        let child = match (answer, ts_i, ts_r, first_error(payloads)) {
            (_, _, _, Some(error)) => Err(Failure::PeerError(error)),
            _ if vips.as_ref().is_some_and(Vec::is_empty) => Err(Failure::NoVirtualIp),
            (Some(answer), Some(ts_i), Some(ts_r), None) => {
                match proposal::check_esp_answer(answer, &peer.esp_proposals) {
                    Some((peer_spi, child_suite))
                        if within(ts_i, &peer.local_ts) && within(ts_r, &peer.remote_ts) =>
                    {
                        // With a virtual IP our side is that address, whatever the peer
                        // left of what we proposed (RFC 7296 section 2.19).
                        let local_ts = match &vips {
                            Some(vips) => {
                                let hosts: Vec<_> =
                                    vips.iter().copied().map(super::cp::host_selector).collect();
                                narrow(ts_i, &hosts)
                            }
                            None => ts_i.clone(),
                        };
                        if local_ts.is_empty() {
                            Err(Failure::PeerError(notify::TS_UNACCEPTABLE))
                        } else {
                            Ok((peer_spi, child_suite, local_ts, ts_r.clone()))
                        }
                    }
                    Some(_) => Err(Failure::PeerError(notify::TS_UNACCEPTABLE)),
                    None => Err(Failure::ProposalMismatch),
                }
            }
            _ => Err(Failure::InvalidSyntax),
        };
        if let Some(vips) = vips {
            sa.virtual_ips = vips;
        }
        match child {
            Ok((peer_spi, child_suite, local_ts, remote_ts)) => {
                self.install_child(id, peer_spi, child_suite, local_ts, remote_ts, now, actions)
            }
            Err(reason) => {
                actions.push(Action::ChildFailed {
                    ike_sa: IkeSaId(id),
                    peer: peer_name,
                    reason,
                });
                if reason == Failure::NoVirtualIp {
                    self.counters.virtual_ip_failures += 1;
                }
                if answer.is_some() && first_error(payloads).is_none() {
                    // The peer set up a CHILD_SA we cannot use (no virtual IP for it, a
                    // proposal or selectors we did not offer): have it deleted (our
                    // inbound SPI names it, RFC 7296 section 3.11).
                    let delete = Payload::Delete {
                        protocol: protocol::ESP,
                        spis: vec![our_child_spi.to_be_bytes().to_vec()],
                    };
                    self.send_request(id, exchange::INFORMATIONAL, &[delete], now, actions);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn install_child(
        &mut self,
        id: u64,
        peer_spi: u32,
        suite: ChildSuite,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get(&id) else {
            return;
        };
        // The first CHILD_SA: keyed from the IKE_SA_INIT nonces, no PFS.
        let exchange = ChildExchange {
            nonce_i: sa.nonce_i.clone(),
            nonce_r: sa.nonce_r.clone(),
            pfs_shared: None,
            we_initiated: sa.initiator,
            our_spi: sa.child_spi,
        };
        self.install_child_with(
            id, &exchange, peer_spi, suite, local_ts, remote_ts, now, actions,
        );
    }

    /// Installs a CHILD_SA negotiated in an exchange (IKE_AUTH or CREATE_CHILD_SA).
    #[allow(clippy::too_many_arguments)]
    fn install_child_with(
        &mut self,
        id: u64,
        exchange: &ChildExchange,
        peer_spi: u32,
        suite: ChildSuite,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(lifetime) = self
            .sas
            .get(&id)
            .map(|sa| self.config.peers[sa.peer].child_lifetime)
        else {
            return;
        };
        let (rekey_at, expire_at) = self.child_deadlines(now, &lifetime);
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let (Some(ike_suite), Some(keys)) = (sa.suite, &sa.keys) else {
            return;
        };
        let Some(esp_suite): Option<EspSuite> = suite.esp_suite() else {
            return;
        };
        let Some((i2r, r2i)) = derive_child_keys(
            ike_suite.prf,
            &keys.sk_d,
            exchange.pfs_shared.as_ref(),
            &exchange.nonce_i,
            &exchange.nonce_r,
            &suite,
        ) else {
            return;
        };
        let (inbound_keys, outbound_keys) = if exchange.we_initiated {
            (r2i, i2r)
        } else {
            (i2r, r2i)
        };
        let peer = &self.config.peers[sa.peer];
        let make = |spi, keys, window| SaConfig {
            spi,
            suite: esp_suite,
            keys,
            esn: suite.esn,
            replay_window: window,
            lifetime: peer.child_lifetime,
        };
        let install = ChildSaInstall {
            ike_sa: IkeSaId(id),
            peer: peer.name.clone(),
            inbound: make(exchange.our_spi, inbound_keys, self.config.replay_window),
            outbound: make(peer_spi, outbound_keys, 0),
            local_addr: sa.local.ip(),
            remote_addr: sa.remote.ip(),
            udp_encap: sa.nat.then(|| (sa.local.port(), sa.remote.port())),
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            local_vips: sa.virtual_ips.clone(),
            remote_vips: sa.leased.clone(),
        };
        sa.children.push(Child {
            inbound_spi: exchange.our_spi,
            outbound_spi: peer_spi,
            suite,
            local_ts,
            remote_ts,
            rekey_at,
            expire_at,
            replaced: false,
            pfs_group: None,
        });
        self.counters.child_sas_installed += 1;
        actions.push(Action::InstallChildSa(Box::new(install)));
    }

    // ---------------------------------------------------------------- CREATE_CHILD_SA

    /// The peer creates a CHILD_SA or rekeys one (RFC 7296 sections 1.3.1 and 1.3.3), with
    /// PFS when it sends a KE payload, or rekeys the IKE SA (section 1.3.2). A new CHILD_SA
    /// is installed beside the old one, which the peer deletes once it has moved over.
    fn create_child_request(
        &mut self,
        id: u64,
        header: &Header,
        payloads: &[Payload],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let answer = |engine: &mut Self, n: Notify, actions: &mut Vec<Action>| {
            let n = Payload::Notify(n);
            engine.send_response(
                id,
                exchange::CREATE_CHILD_SA,
                header.message_id,
                &[n],
                actions,
            );
        };
        let refuse = |engine: &mut Self, kind: u16, actions: &mut Vec<Action>| {
            answer(engine, Notify::new(kind, Vec::new()), actions);
        };
        let Some(sa) = self.sas.get(&id) else { return };
        match sa.state {
            IkeState::Established => {}
            // Being deleted: RFC 7296 section 2.25.2.
            IkeState::Deleting => {
                refuse(self, notify::TEMPORARY_FAILURE, actions);
                return;
            }
            // Not authenticated yet: the exchange after IKE_SA_INIT is IKE_AUTH (section
            // 1.2), and answering would spend the Message ID it must have.
            IkeState::InitSent | IkeState::HalfOpen | IkeState::AuthSent => {
                self.counters.rx_unexpected += 1;
                return;
            }
        }
        let mut rekey = None;
        let mut offered = None;
        let mut nonce_i = None;
        let mut ke = None;
        let mut ts_i = None;
        let mut ts_r = None;
        for p in payloads {
            match p {
                Payload::Notify(n) if n.kind == notify::REKEY_SA => {
                    let spi = <[u8; 4]>::try_from(n.spi.as_slice())
                        .ok()
                        .map(u32::from_be_bytes);
                    rekey = Some((n.protocol, spi));
                }
                Payload::Sa(s) => offered = Some(s),
                Payload::Nonce(n) => nonce_i = Some(n),
                Payload::Ke { group, data } => ke = Some((*group, data)),
                Payload::TsI(t) => ts_i = Some(t),
                Payload::TsR(t) => ts_r = Some(t),
                _ => {}
            }
        }
        let (Some(offered), Some(nonce_i)) = (offered, nonce_i) else {
            refuse(self, notify::INVALID_SYNTAX, actions);
            return;
        };
        if offered.iter().all(|p| p.protocol == protocol::IKE) {
            // Our rekey or delete of a CHILD_SA is under way: RFC 7296 section 2.25.2.
            if matches!(
                sa.pending,
                Some(Pending::ChildRekey(_) | Pending::ChildDelete(_))
            ) {
                refuse(self, notify::TEMPORARY_FAILURE, actions);
                return;
            }
            let ke = ke.map(|(group, data)| (group, data.as_slice()));
            self.rekey_ike_request(id, header, offered, nonce_i, ke, now, actions);
            return;
        }
        let (Some(ts_i), Some(ts_r)) = (ts_i, ts_r) else {
            refuse(self, notify::INVALID_SYNTAX, actions);
            return;
        };
        // The CHILD_SA being rekeyed, by our inbound SPI.
        let mut rekeyed = None;
        if let Some((proto, spi)) = rekey {
            // A REKEY_SA notify must name an SA: an ESP one by its 4-byte SPI (RFC 7296
            // section 3.10.1).
            let Some(spi) = spi else {
                refuse(self, notify::INVALID_SYNTAX, actions);
                return;
            };
            // Our rekey of the IKE SA is under way: RFC 7296 section 2.25.2.
            if matches!(sa.pending, Some(Pending::IkeRekey(_))) {
                refuse(self, notify::TEMPORARY_FAILURE, actions);
                return;
            }
            // The SPI in REKEY_SA is one the peer receives on: our outbound one.
            let known = (proto == protocol::ESP)
                .then(|| {
                    sa.children
                        .iter()
                        .find(|c| c.outbound_spi == spi || c.inbound_spi == spi)
                })
                .flatten();
            let Some(child) = known else {
                // Naming the SA it could not find: the protocol and the SPI (RFC 7296
                // section 3.10).
                let n = Notify {
                    protocol: proto,
                    spi: spi.to_be_bytes().to_vec(),
                    kind: notify::CHILD_SA_NOT_FOUND,
                    data: Vec::new(),
                };
                answer(self, n, actions);
                return;
            };
            // We replaced it already and are deleting it (RFC 7296 section 2.25).
            if matches!(&sa.pending, Some(Pending::ChildDelete(spis)) if spis.contains(&child.inbound_spi))
            {
                refuse(self, notify::TEMPORARY_FAILURE, actions);
                return;
            }
            rekeyed = Some(child.inbound_spi);
        }
        let peer = &self.config.peers[sa.peer];
        let choice =
            proposal::select_esp_for_ke(offered, &peer.esp_proposals, ke.map(|(group, _)| group));
        let Some(EspChoice {
            number,
            spi: peer_spi,
            suite: child_suite,
            pfs: chosen_dh,
        }) = choice
        else {
            self.counters.no_proposal_chosen += 1;
            refuse(self, notify::NO_PROPOSAL_CHOSEN, actions);
            return;
        };
        // PFS in the group of the KE payload when the choice is that group; another group
        // is asked for (RFC 7296 section 1.3.1); NONE, or a proposal without Diffie-Hellman,
        // goes without PFS (a KE payload then goes unused).
        let usable_ke = match (chosen_dh, ke) {
            (Pfs::Group(group), Some((id, data))) if group.id() == id => Some((group, data)),
            (Pfs::Group(group), _) => {
                self.counters.invalid_ke += 1;
                let n = Notify::new(
                    notify::INVALID_KE_PAYLOAD,
                    group.id().to_be_bytes().to_vec(),
                );
                answer(self, n, actions);
                return;
            }
            (Pfs::NotOffered | Pfs::Declined, _) => None,
        };
        let mut pfs = None;
        if let Some((group, data)) = usable_ke {
            let Ok((private, public)) = dh::generate(group, &self.rng) else {
                return;
            };
            let Ok(shared) = private.agree(data) else {
                refuse(self, notify::INVALID_SYNTAX, actions);
                return;
            };
            pfs = Some((group, public, shared));
        }
        // With virtual IPs, each side of a new CHILD_SA is at most its virtual IP.
        let narrowed_i = narrow(ts_i, &sa_remote_ts(sa, peer));
        let narrowed_r = narrow(ts_r, &sa_local_ts(sa, peer));
        if narrowed_i.is_empty() || narrowed_r.is_empty() {
            self.counters.ts_unacceptable += 1;
            refuse(self, notify::TS_UNACCEPTABLE, actions);
            return;
        }
        let (Ok(our_spi), Ok(nonce_r)) = (self.new_child_spi(), self.nonce()) else {
            return;
        };
        let mut answer = EspProposal::from_suite(&child_suite);
        let mut out = Vec::new();
        if let Some((group, public, _)) = &pfs {
            answer.dh = vec![*group];
            out.push(Payload::Sa(vec![answer.to_wire(number, our_spi, true)]));
            out.push(Payload::Nonce(nonce_r.clone()));
            out.push(Payload::Ke {
                group: group.id(),
                data: public.clone(),
            });
        } else {
            let mut chosen = answer.to_wire(number, our_spi, false);
            if chosen_dh == Pfs::Declined {
                // NONE was chosen among the Diffie-Hellman transforms offered: the answer
                // names it, one transform of each type offered (RFC 7296 section 3.3.6).
                chosen.transforms.push(super::wire::Transform {
                    kind: super::wire::transform::DH,
                    id: 0,
                    key_len: None,
                    unknown_attributes: false,
                });
            }
            out.push(Payload::Sa(vec![chosen]));
            out.push(Payload::Nonce(nonce_r.clone()));
        }
        out.push(Payload::TsI(narrowed_i.clone()));
        out.push(Payload::TsR(narrowed_r.clone()));
        let exchange = ChildExchange {
            nonce_i: nonce_i.clone(),
            nonce_r,
            pfs_shared: pfs.map(|(_, _, shared)| shared),
            we_initiated: false,
            our_spi,
        };
        // Installed before the answer goes out (see `auth_request`).
        self.install_child_with(
            id,
            &exchange,
            peer_spi,
            child_suite,
            narrowed_r,
            narrowed_i,
            now,
            actions,
        );
        if let (Some(old), Some(sa)) = (rekeyed, self.sas.get_mut(&id)) {
            self.counters.child_sas_rekeyed += 1;
            // The peer deletes the old one; we no longer rekey it.
            if let Some(child) = sa.children.iter_mut().find(|c| c.inbound_spi == old) {
                child.rekey_at = None;
                child.replaced = true;
            }
            // Our own rekey of it is under way: both ends rekeyed it at once.
            if let Some(Pending::ChildRekey(ours)) = &mut sa.pending {
                if ours.old == old {
                    self.counters.child_rekey_collisions += 1;
                    ours.collision = Some((exchange.nonce_i, exchange.nonce_r, our_spi));
                }
            }
        }
        self.send_response(
            id,
            exchange::CREATE_CHILD_SA,
            header.message_id,
            &out,
            actions,
        );
    }

    /// The peer rekeys the IKE SA (RFC 7296 sections 1.3.2 and 2.18): a new IKE SA with the
    /// SPIs of this exchange, keyed from the old SK_d and a fresh Diffie-Hellman secret, takes
    /// over the CHILD_SAs; the peer then deletes the old one (which takes nothing with it).
    #[allow(clippy::too_many_arguments)]
    fn rekey_ike_request(
        &mut self,
        id: u64,
        header: &Header,
        offered: &[super::wire::Proposal],
        nonce_i: &[u8],
        ke: Option<(u16, &[u8])>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let answer_error = |engine: &mut Self, kind: u16, data: Vec<u8>, a: &mut Vec<Action>| {
            let n = Payload::Notify(Notify::new(kind, data));
            engine.send_response(id, exchange::CREATE_CHILD_SA, header.message_id, &[n], a);
        };
        let Some(sa) = self.sas.get(&id) else { return };
        let (Some(old_suite), Some(old_keys)) = (sa.suite, sa.keys.as_ref()) else {
            return;
        };
        let peer = &self.config.peers[sa.peer];
        // As in IKE_SA_INIT: a proposal acceptable with the KE payload's group first, so
        // that a guess we can take costs no INVALID_KE_PAYLOAD round trip (RFC 7296 section
        // 1.3.2 makes the KE payload mandatory; without one, the choice's group is asked
        // for below).
        let chosen = match ke {
            Some((group, _)) => proposal::select_ike_for_ke(offered, &peer.ike_proposals, group),
            None => proposal::select_ike(offered, &peer.ike_proposals),
        };
        let Some((number, suite)) = chosen else {
            self.counters.no_proposal_chosen += 1;
            answer_error(self, notify::NO_PROPOSAL_CHOSEN, Vec::new(), actions);
            return;
        };
        let peer_spi = offered
            .iter()
            .find(|p| p.number == number)
            .and_then(|p| <[u8; 8]>::try_from(p.spi.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|&spi| spi != 0);
        let Some(peer_spi) = peer_spi else {
            answer_error(self, notify::INVALID_SYNTAX, Vec::new(), actions);
            return;
        };
        let Some((_, ke_data)) = ke.filter(|(group, _)| *group == suite.dh.id()) else {
            self.counters.invalid_ke += 1;
            let group = suite.dh.id().to_be_bytes().to_vec();
            answer_error(self, notify::INVALID_KE_PAYLOAD, group, actions);
            return;
        };
        let Ok((private, public)) = dh::generate(suite.dh, &self.rng) else {
            return;
        };
        let Ok(shared) = private.agree(ke_data) else {
            answer_error(self, notify::INVALID_SYNTAX, Vec::new(), actions);
            return;
        };
        let (Ok(our_spi), Ok(nonce_r)) = (self.new_spi(), self.nonce()) else {
            return;
        };
        let Some(keys) = derive_rekeyed_ike_keys(
            &suite,
            old_suite.prf,
            &old_keys.sk_d,
            nonce_i,
            &nonce_r,
            &shared,
            peer_spi,
            our_spi,
        ) else {
            return;
        };
        let Ok((tx, rx)) = SkCipher::pair(&self.backend, &suite, &keys, false) else {
            return;
        };
        let response = [
            Payload::Sa(vec![
                IkeProposal::from_suite(&suite).to_wire(number, &our_spi.to_be_bytes())
            ]),
            Payload::Nonce(nonce_r.clone()),
            Payload::Ke {
                group: suite.dh.id(),
                data: public,
            },
        ];
        self.send_response(
            id,
            exchange::CREATE_CHILD_SA,
            header.message_id,
            &response,
            actions,
        );
        let Some(old) = self.sas.get_mut(&id) else {
            return;
        };
        let children = std::mem::take(&mut old.children);
        // The virtual IPs go with the CHILD_SAs: the old SA's delete must not release them.
        let virtual_ips = std::mem::take(&mut old.virtual_ips);
        let leased = std::mem::take(&mut old.leased);
        if let Some(pool) = self.peer_pools.get(old.peer).copied().flatten() {
            self.pools[pool].transfer(IkeSaId(id), IkeSaId(our_spi));
        }
        let rekey_at = self.config.peers[old.peer]
            .ike_lifetime
            .map(|period| jittered(&self.rng, now, period));
        let new = IkeSa {
            children,
            virtual_ips,
            leased,
            ..old.successor(
                (peer_spi, our_spi, false),
                suite,
                (nonce_i.to_vec(), nonce_r),
                keys,
                (tx, rx),
                (now, rekey_at),
            )
        };
        // Our own rekey of it is under way: both ends rekeyed it at once.
        if let Some(Pending::IkeRekey(ours)) = &mut old.pending {
            self.counters.ike_rekey_collisions += 1;
            ours.collision = Some((nonce_i.to_vec(), new.nonce_r.clone(), our_spi));
        }
        let peer_name = self.peer_name(new.peer);
        self.sas.insert(our_spi, new);
        self.counters.ike_sas_rekeyed += 1;
        actions.push(Action::Established {
            ike_sa: IkeSaId(our_spi),
            peer: peer_name,
        });
    }

    // ---------------------------------------------------------------- our CHILD_SA rekeys

    /// When a CHILD_SA made now is to be rekeyed and when it expires, from the peer's
    /// lifetime. The rekey comes up to a tenth before the soft lifetime, at random, so two
    /// ends with the same configuration seldom rekey at once (RFC 7296 section 2.8.1).
    /// Tells the engine how many bytes the CHILD_SA with our inbound SPI `inbound_spi` has
    /// carried (the larger of its two directions, as the dataplane counts them). Past its
    /// soft byte limit it is rekeyed, past its hard one deleted (RFC 4301 section 4.4.2.1),
    /// as its time limits would: the shell polls the dataplane's counters and calls this.
    pub fn child_bytes(&mut self, inbound_spi: u32, bytes: u64, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some((&id, sa)) = self
            .sas
            .iter_mut()
            .find(|(_, sa)| sa.children.iter().any(|c| c.inbound_spi == inbound_spi))
        else {
            return actions;
        };
        let lifetime = self.config.peers[sa.peer].child_lifetime;
        let Some(child) = sa
            .children
            .iter_mut()
            .find(|c| c.inbound_spi == inbound_spi)
        else {
            return actions;
        };
        let mut due = false;
        if lifetime.hard_bytes.is_some_and(|hard| bytes >= hard) {
            child.expire_at = Some(now);
            due = true;
        } else if lifetime.soft_bytes.is_some_and(|soft| bytes >= soft) && !child.replaced {
            child.rekey_at = Some(child.rekey_at.map_or(now, |at| at.min(now)));
            due = true;
        }
        if due {
            self.child_timers(id, now, &mut actions);
        }
        actions
    }

    /// Whether any CHILD_SA has a byte limit (the shell need not poll counters otherwise).
    pub fn has_byte_limits(&self) -> bool {
        self.config.peers.iter().any(|p| {
            let l = &p.child_lifetime;
            l.soft_bytes.is_some() || l.hard_bytes.is_some()
        })
    }

    fn child_deadlines(
        &self,
        now: Instant,
        lifetime: &crate::esp::Lifetime,
    ) -> (Option<Instant>, Option<Instant>) {
        let rekey_at = lifetime
            .soft_time
            .map(|soft| jittered(&self.rng, now, Duration::from_nanos(soft)));
        let expire_at = lifetime
            .hard_time
            .map(|hard| now + Duration::from_nanos(hard));
        (rekey_at, expire_at)
    }

    /// CHILD_SA lifetimes of an established IKE SA: deletes those past their hard lifetime
    /// and starts rekeying the first one past its rekey time, when the window is free.
    fn child_timers(&mut self, id: u64, now: Instant, actions: &mut Vec<Action>) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if sa.state != IkeState::Established {
            return;
        }
        let mut expired = Vec::new();
        sa.children.retain(|c| {
            let keep = c.expire_at.is_none_or(|at| now < at);
            if !keep {
                expired.push(c.inbound_spi);
                actions.push(Action::DeleteChildSa {
                    ike_sa: IkeSaId(id),
                    inbound_spi: c.inbound_spi,
                    outbound_spi: c.outbound_spi,
                });
            }
            keep
        });
        self.counters.child_sas_expired += expired.len() as u64;
        if sa.outstanding.is_some() {
            // The peer's own hard lifetime removes its side of what expired here.
            return;
        }
        if !expired.is_empty() {
            // Already out of the dataplane: the Delete only tells the peer.
            self.send_child_delete(id, expired, Vec::new(), now, actions);
            return;
        }
        let due = sa
            .children
            .iter()
            .find(|c| c.rekey_at.is_some_and(|at| at <= now))
            .map(|c| c.inbound_spi);
        if let Some(old) = due {
            self.start_child_rekey(id, old, now, actions);
        } else if sa.rekey_at.is_some_and(|at| at <= now) {
            self.start_ike_rekey(id, now, actions);
        }
    }

    /// Sends an INFORMATIONAL Delete naming `told` and `removed_on_answer` (our inbound SPIs);
    /// the latter leave the dataplane when the peer answers.
    fn send_child_delete(
        &mut self,
        id: u64,
        told: Vec<u32>,
        removed_on_answer: Vec<u32>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let spis = told
            .iter()
            .chain(&removed_on_answer)
            .map(|spi| spi.to_be_bytes().to_vec())
            .collect();
        let delete = Payload::Delete {
            protocol: protocol::ESP,
            spis,
        };
        self.send_request(id, exchange::INFORMATIONAL, &[delete], now, actions);
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.pending = Some(Pending::ChildDelete(removed_on_answer));
        }
    }

    /// Starts rekeying a CHILD_SA (RFC 7296 section 1.3.3): CREATE_CHILD_SA with REKEY_SA
    /// naming it, its proposal (with a KE payload when the configuration asks for PFS) and
    /// its selectors. The old SA keeps carrying traffic until the new one is installed.
    fn start_child_rekey(&mut self, id: u64, old: u32, now: Instant, actions: &mut Vec<Action>) {
        let Some(sa) = self.sas.get(&id) else { return };
        let Some(child) = sa.children.iter().find(|c| c.inbound_spi == old) else {
            return;
        };
        let peer = &self.config.peers[sa.peer];
        // PFS with every group we are configured for, the KE payload's first: that of our
        // configuration, or the one the peer asked for last time.
        let mut groups: Vec<DhGroup> = Vec::new();
        for &g in child
            .pfs_group
            .iter()
            .chain(peer.esp_proposals.iter().flat_map(|p| &p.dh))
        {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let group = groups.first().copied();
        let mut offered = EspProposal::from_suite(&child.suite);
        offered.dh = groups;
        let (local_ts, remote_ts) = (child.local_ts.clone(), child.remote_ts.clone());
        let (Ok(our_spi), Ok(nonce)) = (self.new_child_spi(), self.nonce()) else {
            return;
        };
        let (dh, ke) = match group {
            Some(group) => match dh::generate(group, &self.rng) {
                Ok((private, public)) => (Some(private), Some((group, public))),
                Err(_) => return,
            },
            None => (None, None),
        };
        let mut payloads = vec![
            Payload::Notify(Notify {
                protocol: protocol::ESP,
                spi: old.to_be_bytes().to_vec(),
                kind: notify::REKEY_SA,
                data: Vec::new(),
            }),
            Payload::Sa(vec![offered.to_wire(1, our_spi, ke.is_some())]),
            Payload::Nonce(nonce.clone()),
        ];
        if let Some((group, data)) = ke {
            payloads.push(Payload::Ke {
                group: group.id(),
                data,
            });
        }
        payloads.push(Payload::TsI(local_ts.clone()));
        payloads.push(Payload::TsR(remote_ts.clone()));
        self.send_request(id, exchange::CREATE_CHILD_SA, &payloads, now, actions);
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if let Some(child) = sa.children.iter_mut().find(|c| c.inbound_spi == old) {
            child.rekey_at = None;
            child.replaced = true;
        }
        self.counters.child_rekeys_started += 1;
        sa.pending = Some(Pending::ChildRekey(Box::new(ChildRekey {
            old,
            our_spi,
            nonce,
            offered,
            dh,
            local_ts,
            remote_ts,
            collision: None,
        })));
    }

    /// The answer to our CHILD_SA rekey: installs the new SA, then deletes the old one, or,
    /// when both ends rekeyed it at once, the redundant new one if it is ours (RFC 7296
    /// section 2.8.1: the SA whose exchange had the lowest of the four nonces).
    fn create_child_response(
        &mut self,
        id: u64,
        payloads: &[Payload],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        sa.outstanding = None;
        let rekey = match sa.pending.take() {
            Some(Pending::ChildRekey(rekey)) => rekey,
            Some(Pending::IkeRekey(rekey)) => {
                self.ike_rekey_response(id, *rekey, payloads, now, actions);
                return;
            }
            _ => {
                self.counters.rx_unexpected += 1;
                return;
            }
        };
        let ChildRekey {
            old,
            our_spi,
            nonce,
            offered,
            dh,
            local_ts,
            remote_ts,
            collision,
        } = *rekey;
        if let Some(group) = requested_group(payloads) {
            // The peer wants PFS with another group: again with that one, once, if ours
            // allows it and it is not the one refused (RFC 7296 section 1.3).
            let peer = &self.config.peers[sa.peer];
            let allowed = peer.esp_proposals.iter().any(|p| p.dh.contains(&group))
                && offered.dh.first() != Some(&group);
            let child = sa
                .children
                .iter_mut()
                .find(|c| c.inbound_spi == old && c.pfs_group.is_none());
            if let (true, Some(child)) = (allowed, child) {
                child.pfs_group = Some(group);
                child.rekey_at = Some(now);
                child.replaced = false;
                self.counters.invalid_ke += 1;
                return;
            }
        }
        if let Some(error) = first_error(payloads) {
            self.child_rekey_failed(id, old, error, now, actions);
            return;
        }
        let mut answer = None;
        let mut nonce_r = None;
        let mut ke = None;
        let mut ts_i = None;
        let mut ts_r = None;
        for p in payloads {
            match p {
                Payload::Sa(s) => answer = Some(s),
                Payload::Nonce(n) => nonce_r = Some(n),
                Payload::Ke { group, data } => ke = Some((*group, data)),
                Payload::TsI(t) => ts_i = Some(t),
                Payload::TsR(t) => ts_r = Some(t),
                _ => {}
            }
        }
        // What we sent went as proposal number 1.
        let chosen =
            answer.and_then(|a| proposal::check_esp_answer(a, std::slice::from_ref(&offered)));
        // Past this point the peer has set up a CHILD_SA, whatever we make of it.
        let made = answer.is_some();
        let (Some((peer_spi, suite)), Some(nonce_r), Some(ts_i), Some(ts_r)) =
            (chosen, nonce_r, ts_i, ts_r)
        else {
            self.refuse_rekey_answer(
                id,
                (old, our_spi, made),
                notify::NO_PROPOSAL_CHOSEN,
                now,
                actions,
            );
            return;
        };
        if !within(ts_i, &local_ts) || !within(ts_r, &remote_ts) {
            self.refuse_rekey_answer(
                id,
                (old, our_spi, made),
                notify::TS_UNACCEPTABLE,
                now,
                actions,
            );
            return;
        }
        let pfs_shared = match (dh, ke) {
            (None, _) => None,
            (Some(private), Some((group, data)))
                if Some(group) == offered.dh.first().map(|g| g.id()) =>
            {
                match private.agree(data) {
                    Ok(shared) => Some(shared),
                    Err(_) => {
                        self.refuse_rekey_answer(
                            id,
                            (old, our_spi, made),
                            notify::INVALID_SYNTAX,
                            now,
                            actions,
                        );
                        return;
                    }
                }
            }
            (Some(_), _) => {
                self.refuse_rekey_answer(
                    id,
                    (old, our_spi, made),
                    notify::INVALID_KE_PAYLOAD,
                    now,
                    actions,
                );
                return;
            }
        };
        let exchange = ChildExchange {
            nonce_i: nonce,
            nonce_r: nonce_r.clone(),
            pfs_shared,
            we_initiated: true,
            our_spi,
        };
        self.install_child_with(
            id,
            &exchange,
            peer_spi,
            suite,
            ts_i.clone(),
            ts_r.clone(),
            now,
            actions,
        );
        let ours_redundant = collision.as_ref().is_some_and(|(their_i, their_r, _)| {
            let ours = exchange.nonce_i.as_slice().min(exchange.nonce_r.as_slice());
            ours < their_i.as_slice().min(their_r.as_slice())
        });
        let Some(sa) = self.sas.get(&id) else { return };
        let delete = if ours_redundant {
            // The peer's exchange made the CHILD_SA that stays; the peer deletes the old one.
            our_spi
        } else if sa.children.iter().any(|c| c.inbound_spi == old) {
            old
        } else {
            // The peer deleted it already.
            return;
        };
        self.send_child_delete(id, Vec::new(), vec![delete], now, actions);
    }

    /// The peer's answer to our rekey of `old` is not one we can take, for `error`: the
    /// rekey has failed. When the answer set up a CHILD_SA on the peer's side (`made`),
    /// under our new inbound SPI `our_spi`, which nothing here will ever use, the peer is
    /// told to delete it (RFC 7296 section 3.11: named by our inbound SPI).
    fn refuse_rekey_answer(
        &mut self,
        id: u64,
        (old, our_spi, made): (u32, u32, bool),
        error: u16,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.child_rekey_failed(id, old, error, now, actions);
        if made {
            self.send_child_delete(id, vec![our_spi], Vec::new(), now, actions);
        }
    }

    /// The peer refused our rekey of `old` (or answered with nothing usable).
    fn child_rekey_failed(
        &mut self,
        id: u64,
        old: u32,
        error: u16,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.counters.child_rekey_failures += 1;
        let retry = self.random_u64().unwrap_or(0) % 4 + 1;
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let peer = self.config.peers[sa.peer].name.clone();
        let Some(pos) = sa.children.iter().position(|c| c.inbound_spi == old) else {
            return;
        };
        match error {
            // Busy with something else, a rekey of its own included (RFC 7296 section
            // 2.25): try again in a moment.
            notify::TEMPORARY_FAILURE => {
                sa.children[pos].rekey_at = Some(now + self.config.retransmit_base * retry as u32);
                sa.children[pos].replaced = false;
            }
            // The peer has no such SA any more: neither have we.
            notify::CHILD_SA_NOT_FOUND => {
                let child = sa.children.remove(pos);
                actions.push(Action::DeleteChildSa {
                    ike_sa: IkeSaId(id),
                    inbound_spi: child.inbound_spi,
                    outbound_spi: child.outbound_spi,
                });
            }
            // Anything else will not change by asking again: the SA lives out its hard
            // lifetime.
            _ => actions.push(Action::ChildFailed {
                ike_sa: IkeSaId(id),
                peer,
                reason: Failure::PeerError(error),
            }),
        }
    }

    // ---------------------------------------------------------------- our IKE SA rekeys

    /// Starts rekeying the IKE SA (RFC 7296 section 1.3.2), its KE payload in the SA's own
    /// Diffie-Hellman group.
    fn start_ike_rekey(&mut self, id: u64, now: Instant, actions: &mut Vec<Action>) {
        let Some(suite) = self.sas.get(&id).and_then(|sa| sa.suite) else {
            return;
        };
        self.send_ike_rekey(id, suite.dh, false, now, actions);
    }

    /// Sends our IKE SA rekey: CREATE_CHILD_SA with our configured proposals (`group`
    /// first, see [`preferring`]) under our new SPI, a nonce and a fresh Diffie-Hellman
    /// value in `group`. `retry`: this is the one retry with the group the peer asked for.
    fn send_ike_rekey(
        &mut self,
        id: u64,
        group: DhGroup,
        retry: bool,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get(&id) else { return };
        let offered = preferring(&self.config.peers[sa.peer].ike_proposals, group);
        let (Ok(our_spi), Ok(nonce)) = (self.new_spi(), self.nonce()) else {
            return;
        };
        let Ok((private, public)) = dh::generate(group, &self.rng) else {
            return;
        };
        let spi = our_spi.to_be_bytes();
        let payloads = [
            Payload::Sa(
                offered
                    .iter()
                    .zip(1..=u8::MAX)
                    .map(|(p, number)| p.to_wire(number, &spi))
                    .collect(),
            ),
            Payload::Nonce(nonce.clone()),
            Payload::Ke {
                group: group.id(),
                data: public,
            },
        ];
        self.send_request(id, exchange::CREATE_CHILD_SA, &payloads, now, actions);
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        sa.rekey_at = None;
        if !retry {
            self.counters.ike_rekeys_started += 1;
        }
        sa.pending = Some(Pending::IkeRekey(Box::new(IkeRekey {
            our_spi,
            nonce,
            offered,
            group,
            dh: private,
            retry,
            collision: None,
        })));
    }

    /// Our IKE SA rekey ends without a new SA, for `reason`: the SA carries on unrekeyed
    /// until it is deleted.
    fn ike_rekey_failed(&mut self, id: u64, reason: Failure, actions: &mut Vec<Action>) {
        self.counters.ike_rekey_failures += 1;
        if let Some(sa) = self.sas.get(&id) {
            actions.push(Action::IkeRekeyFailed {
                ike_sa: IkeSaId(id),
                peer: self.peer_name(sa.peer),
                reason,
            });
        }
    }

    /// Moves the CHILD_SAs, virtual IPs and leases of IKE SA `from` to `to`.
    fn take_over(&mut self, from: u64, to: u64) {
        let Some(old) = self.sas.get_mut(&from) else {
            return;
        };
        let children = std::mem::take(&mut old.children);
        let virtual_ips = std::mem::take(&mut old.virtual_ips);
        let leased = std::mem::take(&mut old.leased);
        if let Some(pool) = self.peer_pools.get(old.peer).copied().flatten() {
            self.pools[pool].transfer(IkeSaId(from), IkeSaId(to));
        }
        if let Some(new) = self.sas.get_mut(&to) {
            new.children.extend(children);
            new.virtual_ips.extend(virtual_ips);
            new.leased.extend(leased);
        }
    }

    /// The answer to our IKE SA rekey: the new IKE SA takes over the CHILD_SAs and the old
    /// one is deleted. When both ends rekeyed at once, the new SA whose exchange had the
    /// lowest of the four nonces is redundant and deleted by its initiator; the other end
    /// deletes the old one (RFC 7296 section 2.8.1).
    fn ike_rekey_response(
        &mut self,
        id: u64,
        rekey: IkeRekey,
        payloads: &[Payload],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let mut answer = None;
        let mut nonce_r = None;
        let mut ke = None;
        for p in payloads {
            match p {
                Payload::Sa(s) => answer = Some(s),
                Payload::Nonce(n) => nonce_r = Some(n),
                Payload::Ke { group, data } => ke = Some((*group, data)),
                _ => {}
            }
        }
        // The peer wants the KE payload in another group (RFC 7296 sections 1.3 and
        // 3.10.1): again with that one, once, if we offered it; not when the peer's own
        // rekey has replaced the SA meanwhile.
        let wanted = notifies(payloads)
            .find(|n| n.kind == notify::INVALID_KE_PAYLOAD)
            .map(|n| {
                n.data
                    .get(..2)
                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
            });
        if let Some(wanted) = wanted {
            let offered =
                DhGroup::from_id(wanted).filter(|g| rekey.offered.iter().any(|p| p.dh.contains(g)));
            match offered {
                Some(group)
                    if group != rekey.group && !rekey.retry && rekey.collision.is_none() =>
                {
                    self.counters.invalid_ke += 1;
                    self.send_ike_rekey(id, group, true, now, actions);
                }
                Some(_) => {
                    let reason = Failure::PeerError(notify::INVALID_KE_PAYLOAD);
                    self.ike_rekey_failed(id, reason, actions);
                }
                None => self.ike_rekey_failed(id, Failure::UnsupportedGroup(wanted), actions),
            }
            return;
        }
        let chosen = answer.and_then(|a| {
            let suite = proposal::check_ike_answer(a, &rekey.offered)?;
            let spi = <[u8; 8]>::try_from(a.first()?.spi.as_slice()).ok()?;
            Some((suite, u64::from_be_bytes(spi))).filter(|(_, spi)| *spi != 0)
        });
        let error = first_error(payloads);
        let (None, Some((suite, peer_spi)), Some(nonce_r), Some((group, ke_data))) =
            (error, chosen, nonce_r, ke)
        else {
            if error == Some(notify::TEMPORARY_FAILURE) {
                // Busy (a rekey of its own, RFC 7296 section 2.25): again in a moment.
                self.counters.ike_rekey_failures += 1;
                let retry = self.random_u64().unwrap_or(0) % 4 + 1;
                if let Some(sa) = self.sas.get_mut(&id) {
                    sa.rekey_at = Some(now + self.config.retransmit_base * retry as u32);
                }
                return;
            }
            // Anything else would not change by asking again.
            let reason = match (error, chosen) {
                (Some(error), _) => Failure::PeerError(error),
                (None, None) => Failure::ProposalMismatch,
                (None, Some(_)) => Failure::InvalidSyntax,
            };
            self.ike_rekey_failed(id, reason, actions);
            return;
        };
        let Some(old) = self.sas.get(&id) else { return };
        let (Some(old_suite), Some(old_keys)) = (old.suite, old.keys.as_ref()) else {
            return;
        };
        // The KE payloads must both be in the chosen proposal's group.
        let shared = (group == suite.dh.id() && suite.dh == rekey.group)
            .then(|| rekey.dh.agree(ke_data).ok())
            .flatten();
        let keys = shared.and_then(|shared| {
            derive_rekeyed_ike_keys(
                &suite,
                old_suite.prf,
                &old_keys.sk_d,
                &rekey.nonce,
                nonce_r,
                &shared,
                rekey.our_spi,
                peer_spi,
            )
        });
        let ciphers = keys
            .as_ref()
            .and_then(|keys| SkCipher::pair(&self.backend, &suite, keys, true).ok());
        let (Some(keys), Some((tx, rx))) = (keys, ciphers) else {
            self.ike_rekey_failed(id, Failure::InvalidSyntax, actions);
            return;
        };
        let peer = &self.config.peers[old.peer];
        let rekey_at = peer
            .ike_lifetime
            .map(|period| jittered(&self.rng, now, period));
        let new = old.successor(
            (rekey.our_spi, peer_spi, true),
            suite,
            (rekey.nonce, nonce_r.clone()),
            keys,
            (tx, rx),
            (now, rekey_at),
        );
        let ours_redundant = rekey
            .collision
            .as_ref()
            .is_some_and(|(their_i, their_r, _)| {
                let ours = new.nonce_i.as_slice().min(new.nonce_r.as_slice());
                ours < their_i.as_slice().min(their_r.as_slice())
            });
        let peer_name = peer.name.clone();
        self.sas.insert(rekey.our_spi, new);
        if ours_redundant {
            // The peer's new IKE SA has the CHILD_SAs already and the peer deletes the old
            // one: ours goes at once, with nothing on it.
            if let Ok(more) = self.delete_ike_sa(IkeSaId(rekey.our_spi), now) {
                actions.extend(more);
            }
            return;
        }
        // The CHILD_SAs move over, from the peer's redundant new SA too when there is one
        // (it deletes that one, which must take nothing with it).
        self.take_over(id, rekey.our_spi);
        if let Some((_, _, theirs)) = rekey.collision {
            self.take_over(theirs, rekey.our_spi);
        }
        actions.push(Action::Established {
            ike_sa: IkeSaId(rekey.our_spi),
            peer: peer_name,
        });
        if let Ok(more) = self.delete_ike_sa(IkeSaId(id), now) {
            actions.extend(more);
        }
    }

    // ---------------------------------------------------------------- INFORMATIONAL

    fn informational_request(
        &mut self,
        id: u64,
        header: &Header,
        payloads: &[Payload],
        actions: &mut Vec<Action>,
    ) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if !matches!(sa.state, IkeState::Established | IkeState::Deleting) {
            self.counters.rx_unexpected += 1;
            return;
        }
        let mut response = Vec::new();
        let mut delete_ike = false;
        let mut deleted_children = Vec::new();
        // CHILD_SAs our own outstanding Delete names: both ends closing them at once.
        let deleting: &[u32] = match &sa.pending {
            Some(Pending::ChildDelete(spis)) => spis,
            _ => &[],
        };
        let mut crossed = Vec::new();
        for p in payloads {
            if let Payload::Delete {
                protocol: proto,
                spis,
            } = p
            {
                match *proto {
                    protocol::IKE => delete_ike = true,
                    protocol::ESP => {
                        // The peer names its inbound SPIs, our outbound ones.
                        for spi in spis {
                            let Ok(bytes) = <[u8; 4]>::try_from(spi.as_slice()) else {
                                continue;
                            };
                            let outbound = u32::from_be_bytes(bytes);
                            if let Some(pos) =
                                sa.children.iter().position(|c| c.outbound_spi == outbound)
                            {
                                let child = sa.children.remove(pos);
                                if deleting.contains(&child.inbound_spi) {
                                    crossed.push(child);
                                } else {
                                    deleted_children.push(child);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if !deleted_children.is_empty() {
            response.push(Payload::Delete {
                protocol: protocol::ESP,
                spis: deleted_children
                    .iter()
                    .map(|c| c.inbound_spi.to_be_bytes().to_vec())
                    .collect(),
            });
        }
        // The crossed ones go too, but the answer does not name them: our request does
        // already, and naming them twice could delete the wrong SA (RFC 7296 section 1.4.1).
        for child in deleted_children.into_iter().chain(crossed) {
            actions.push(Action::DeleteChildSa {
                ike_sa: IkeSaId(id),
                inbound_spi: child.inbound_spi,
                outbound_spi: child.outbound_spi,
            });
        }
        // An initiator that could not authenticate us says so in an INFORMATIONAL of its own
        // (RFC 7296 section 2.21.2): the SA we took as established is then gone on its side.
        let refused = first_error(payloads) == Some(notify::AUTHENTICATION_FAILED);
        if delete_ike || refused {
            // Answer with an empty INFORMATIONAL, then forget everything.
            self.send_response(id, exchange::INFORMATIONAL, header.message_id, &[], actions);
            let failure = refused.then(|| {
                self.counters.auth_failures += 1;
                Failure::AuthenticationFailed
            });
            self.remove(id, actions, failure);
            return;
        }
        self.send_response(
            id,
            exchange::INFORMATIONAL,
            header.message_id,
            &response,
            actions,
        );
    }

    fn informational_response(&mut self, id: u64, actions: &mut Vec<Action>) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        sa.outstanding = None;
        if let Some(Pending::ChildDelete(spis)) = sa.pending.take() {
            for spi in spis {
                if let Some(pos) = sa.children.iter().position(|c| c.inbound_spi == spi) {
                    let child = sa.children.remove(pos);
                    actions.push(Action::DeleteChildSa {
                        ike_sa: IkeSaId(id),
                        inbound_spi: child.inbound_spi,
                        outbound_spi: child.outbound_spi,
                    });
                }
            }
        }
        if sa.state == IkeState::Deleting {
            self.remove(id, actions, None);
        }
    }

    /// The peer configuration an SA uses (for the shell's bookkeeping).
    pub fn peer_of(&self, id: IkeSaId) -> Option<&PeerConfig> {
        self.sas
            .get(&id.0)
            .and_then(|sa| self.config.peers.get(sa.peer))
    }

    #[cfg(test)]
    pub(crate) fn sk_d_for_test(&self, id: IkeSaId) -> Option<crate::crypto::SecretBytes> {
        self.sas
            .get(&id.0)
            .and_then(|sa| sa.keys.as_ref())
            .map(|k| k.sk_d.clone())
    }
}

#[cfg(test)]
mod tests;
