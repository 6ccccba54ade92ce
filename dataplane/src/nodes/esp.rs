//! `esp{4,6}-encrypt` and `esp{4,6}-decrypt`: IPsec ESP in tunnel mode (RFC 4303), with UDP
//! encapsulation (RFC 3948) when the SA says so.
//!
//! They are spliced into the router graph by [`super::ipsec_router_graph`]:
//!
//! ```text
//! ip4-lookup ─┬─(forward)─► esp4-encrypt ─┬─(no policy)──► ip4-rewrite
//!             │                           └─(encrypted)──► ip4-lookup / ip6-lookup (outer)
//!             └─(local)───► esp4-decrypt ─┬─(not ESP)────► ip4-local
//!                                         └─(decrypted)──► ip4-input / ip6-input (inner)
//! ```
//!
//! The encrypt node looks the forwarded packet up in the SPD ([`IpsecTables::outbound_for`]);
//! a match goes into the tunnel: the inner TTL is decremented here (the tunnel is a hop), the
//! outer header is built in the headroom and the padding and ICV in the tailroom (the outer
//! traffic class copies the inner one, ECN included: RFC 6040's normal mode), and the
//! outer packet is routed again as this node's own (`local_origin`). IKE (UDP 500 and 4500)
//! and ESP always bypass the SPD, so the outer packet passes on its second visit.
//!
//! The decrypt node takes ESP addressed to this node, raw (protocol 50) or in UDP to 4500
//! with a non-zero first word (zero is the non-ESP marker of IKE, which goes on to
//! `ip4-local` and the host stack), finds the SA by SPI, checks the replay window and the
//! ICV, decrypts in place, checks the inner packet against the SA's selectors, carries a
//! congestion mark of the outer header into it ([`super::tunnel::apply_outer_ecn`], RFC 6040
//! 4.2), and sends it to the input node of its family as `decapsulated` and `esp_decrypted`.
//! ESP comes in fragments when the peer (or a router) fragmented it after encryption (an
//! inner packet that may be fragmented and does not fit once encrypted; this node's encrypt
//! node does so too): RFC 4303 3.4.1 reassembles before ESP processing, so the decrypt node
//! reassembles fragments of raw ESP for this node, and of UDP for the tunnel end of one of
//! its SAs (a non-first fragment does not say its port), in the worker's reassembly table
//! ([`crate::reassembly`], the one `ip{4,6}-local` uses), puts the whole datagram back in
//! the buffer of the fragment that completed it, and decrypts that. A datagram larger than
//! a buffer is dropped; reassembled UDP that is not ESP (IKE, say) goes on to the local
//! node, fragmented again at the link's MTU if need be.
//!
//! RFC 4301 5.2 (step 3b) has cleartext that an inbound SA's selectors cover dropped: it
//! should have come through the SA. Both nodes check what they pass on in the clear (the
//! encrypt node forwarded packets that match no outbound policy, the decrypt node what is
//! for one of this node's addresses and is not ESP), unless it came out of ESP
//! (`esp_decrypted`) or is this node's own; IKE and ESP themselves, ICMP errors about
//! them, neighbor discovery and link-scope traffic are let through whatever the selectors.
//! Without IPsec tables neither node looks at a packet.
//!
//! Each node keeps the per-worker state of the SAs (prepared ciphers, sequence numbers,
//! replay windows) by SPI. An SA's state is made on its first packet (the one allocation,
//! once per SA) and dropped when the tables no longer name the SA. The two encrypt nodes of
//! a worker share one such state ([`OutboundState`]): an SA whose selectors name both
//! families carries IPv4 and IPv6 inner packets, which reach it through different nodes, and
//! must still number them from one sequence (the peer's replay window would refuse the
//! second family's packets otherwise).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fnv::FnvBuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use switchyard_ipsec::crypto::{
    CryptoBackend, CryptoError, SoftwareBackend, SymCtx, SymOp, SymParams,
};
use switchyard_ipsec::esp::{self, Direction, EspError, ReplayError, Sa};

use crate::async_crypto::{AsyncCrypto, AsyncOp};
use crate::buffer::PacketBuffer;
use crate::fib::Route;
use crate::graph::{Context, Meta, Nanos, NextIndex, Node, Packet, DROP, HANDOFF, PARK};
use crate::ipsec_tables::{FlowSelector, IpsecTables, SaStats};
use crate::tables::Tables;
use crate::wire::Ipv4Packet;
use crate::{family_node_info, node_errors};

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_FRAGMENT: u8 = 44;
const PROTO_ESP: u8 = 50;
const PROTO_ICMPV6: u8 = 58;
const PROTO_SCTP: u8 = 132;
const IKE_PORT: u16 = 500;
const NAT_T_PORT: u16 = 4500;

node_errors! {
    pub enum EspEncryptError {
        Encrypted = ("encrypted", "packets put into an ESP tunnel"),
        HandedOff = ("handed_off", "for an SA another worker keeps: handed to it"),
        TtlExpired = ("ttl_expired", "TTL or hop limit expired before encryption: ICMP sent"),
        TooBig = ("too_big", "too big once encrypted and not to be fragmented: ICMP sent"),
        NoRoute = ("no_route", "no route to the tunnel's far end: dropped"),
        NoBuffer = ("no_buffer", "not enough headroom or tailroom for ESP: dropped"),
        SaSetup = ("sa_setup", "the SA's keys could not be prepared: dropped"),
        SequenceExhausted = ("sequence_exhausted", "SA out of sequence numbers (needs a rekey): dropped"),
        Expired = ("expired", "SA past its hard lifetime: dropped"),
        Failed = ("failed", "encryption failed: dropped"),
        CleartextProtected = ("cleartext_protected", "came in the clear, but an inbound SA's selectors cover it: dropped (RFC 4301 5.2)"),
    }
}

node_errors! {
    pub enum EspDecryptError {
        Decrypted = ("decrypted", "ESP packets decrypted"),
        HandedOff = ("handed_off", "for an SA another worker keeps: handed to it"),
        UnknownSpi = ("unknown_spi", "ESP with an SPI of no inbound SA: dropped"),
        Replay = ("replay", "replayed or older than the replay window: dropped"),
        IcvFailed = ("icv_failed", "integrity check failed: dropped"),
        PolicyMismatch = ("policy_mismatch", "inner packet outside the SA's selectors: dropped"),
        Malformed = ("malformed", "truncated or malformed ESP, bad padding: dropped"),
        FragmentQueued = ("fragment_queued", "fragments of ESP (or of UDP to a tunnel end) held for reassembly"),
        FragmentDropped = ("fragment_dropped", "fragments dropped by reassembly: overlapping, too big, or too many datagrams in reassembly"),
        Reassembled = ("reassembled", "datagrams reassembled from fragments (RFC 4303 3.4.1)"),
        ReassembledTooBig = ("reassembled_too_big", "reassembled ESP larger than a packet buffer: dropped"),
        ReassembledNotEsp = ("reassembled_not_esp", "reassembled UDP that is not ESP (IKE, say): on to the local node"),
        NoBuffer = ("no_buffer", "no buffer to pass a reassembled datagram on in: dropped"),
        Dummy = ("dummy", "dummy packets (next header 59): dropped"),
        Expired = ("expired", "SA past its hard lifetime: dropped"),
        SaSetup = ("sa_setup", "the SA's keys could not be prepared: dropped"),
        EcnDrop = ("ecn_drop", "outer header marked Congestion Experienced around an inner packet that is not ECN-capable: dropped (RFC 6040 4.2)"),
        CleartextProtected = ("cleartext_protected", "came in the clear, but an inbound SA's selectors cover it: dropped (RFC 4301 5.2)"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
enum EncryptNext {
    Drop,
    /// Not for a tunnel: on to the rewrite of the node's family.
    Rewrite,
    Lookup4,
    Lookup6,
    /// The ICMP error node of the node's family.
    Error,
    /// Kept by the node while an asynchronous engine encrypts it.
    Park,
    /// The worker that keeps the packet's SA.
    Handoff,
}

const ENCRYPT_NEXT4: &[&str] = &[
    DROP,
    "ip4-rewrite",
    "ip4-lookup",
    "ip6-lookup",
    "icmp4-error",
    PARK,
    HANDOFF,
];
const ENCRYPT_NEXT6: &[&str] = &[
    DROP,
    "ip6-rewrite",
    "ip4-lookup",
    "ip6-lookup",
    "icmp6-error",
    PARK,
    HANDOFF,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
enum DecryptNext {
    Drop,
    /// Not ESP: on to the local node of the node's family.
    Local,
    Input4,
    Input6,
    /// Kept by the node while an asynchronous engine decrypts it.
    Park,
    /// The worker that keeps the packet's SA.
    Handoff,
}

const DECRYPT_NEXT4: &[&str] = &[DROP, "ip4-local", "ip4-input", "ip6-input", PARK, HANDOFF];
const DECRYPT_NEXT6: &[&str] = &[DROP, "ip6-local", "ip4-input", "ip6-input", PARK, HANDOFF];

/// True (and `meta.handoff` set) when another worker keeps SA `spi`: with several workers,
/// each SA is used by one of them ([`crate::worker::WorkerState::sa_owner`]), whose
/// sequence numbers and replay window it is.
fn hand_off_sa<B>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>, spi: u32) -> bool {
    let Some(owner) = cx.state.sa_owner(spi) else {
        return false;
    };
    pkt.meta.handoff = crate::graph::Handoff::to(owner);
    cx.trace(
        &pkt.meta,
        format_args!("SA {spi:08x}: kept by worker {owner}"),
    );
    true
}

/// The per-worker state of SAs, by SPI, with the generation of the tables it follows, and
/// the crypto backend that prepares their keys.
struct SaCache {
    sas: HashMap<u32, Sa, FnvBuildHasher>,
    generation: Option<u64>,
    backend: Arc<dyn CryptoBackend>,
}

impl SaCache {
    fn new(backend: Arc<dyn CryptoBackend>) -> Self {
        Self {
            sas: HashMap::default(),
            generation: None,
            backend,
        }
    }
}

impl Default for SaCache {
    /// Crypto in software.
    fn default() -> Self {
        Self::new(Arc::new(SoftwareBackend::new()))
    }
}

impl std::fmt::Debug for SaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaCache")
            .field("sas", &self.sas.len())
            .field("generation", &self.generation)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl SaCache {
    /// Forgets every SA (the tables have no IPsec part any more).
    fn forget_all(&mut self) {
        if self.generation.is_some() {
            self.sas.clear();
            self.generation = None;
        }
    }

    /// Forgets SAs the new tables no longer have.
    fn follow(&mut self, tables: &IpsecTables, outbound: bool) {
        if self.generation == Some(tables.generation) {
            return;
        }
        self.generation = Some(tables.generation);
        if outbound {
            self.sas
                .retain(|spi, _| tables.outbound.iter().any(|p| p.sa.spi == *spi));
        } else {
            self.sas
                .retain(|spi, _| tables.inbound_by_spi(*spi).is_some());
        }
    }
}

/// The outbound SA state one worker's `esp4-encrypt` and `esp6-encrypt` share (see the
/// module documentation). Each node takes it for the length of a vector (one uncontended
/// lock per vector, never per packet).
#[derive(Debug, Clone)]
pub struct OutboundState(Arc<Mutex<SaCache>>);

impl OutboundState {
    /// Empty, with ESP crypto on `backend`.
    pub fn new(backend: Arc<dyn CryptoBackend>) -> Self {
        Self(Arc::new(Mutex::new(SaCache::new(backend))))
    }
}

/// The encrypt node of IPv4 (`V6 = false`) or IPv6, for packets in buffers of type `B`.
pub struct EspEncrypt<B, const V6: bool> {
    shared: OutboundState,
    /// The shared state while the node runs a vector; an empty stand-in between vectors.
    cache: SaCache,
    /// This vector's packets between the halves of their encapsulation.
    pending: Vec<Pending<EncryptWork>>,
    /// Packets with an asynchronous engine, when the node has one.
    parked: Option<Parked<B, EncryptWork>>,
}

impl<B, const V6: bool> std::fmt::Debug for EspEncrypt<B, V6> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspEncrypt")
            .field("cache", &self.cache)
            .field("asynchronous", &self.parked.is_some())
            .finish()
    }
}

impl<B, const V6: bool> Default for EspEncrypt<B, V6> {
    /// Crypto in software, state of its own.
    fn default() -> Self {
        Self::sharing(&OutboundState::new(Arc::new(SoftwareBackend::new())))
    }
}

impl<B, const V6: bool> EspEncrypt<B, V6> {
    /// The node with ESP crypto on `backend` and outbound state of its own (a graph with one
    /// encrypt node).
    pub fn new(backend: Arc<dyn CryptoBackend>) -> Self {
        Self::sharing(&OutboundState::new(backend))
    }

    /// The node with `state`, shared with the worker's other encrypt node.
    pub fn sharing(state: &OutboundState) -> Self {
        let backend = state
            .0
            .lock()
            .map(|c| Arc::clone(&c.backend))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner().backend));
        Self {
            shared: state.clone(),
            cache: SaCache::new(backend),
            pending: Vec::new(),
            parked: None,
        }
    }

    /// The node handing its crypto to `engine` asynchronously (the device behind the
    /// backend): packets are parked while it works, and go on when a poll finds them done.
    pub fn with_engine(mut self, engine: Arc<dyn AsyncCrypto<B>>) -> Self {
        self.parked = Some(Parked::new(engine));
        self
    }
}

/// `esp4-encrypt`.
pub type Esp4Encrypt<B> = EspEncrypt<B, false>;
/// `esp6-encrypt`.
pub type Esp6Encrypt<B> = EspEncrypt<B, true>;

/// The decrypt node of IPv4 (`V6 = false`) or IPv6, for packets in buffers of type `B`.
pub struct EspDecrypt<B, const V6: bool> {
    cache: SaCache,
    /// When this node last reported ESP with an unknown SPI to the IKE daemon
    /// ([`SpiReports`](crate::ipsec_tables::SpiReports)): at most one report per
    /// [`SPI_REPORT_EVERY`], so a flood of such packets costs the workers nothing more.
    last_spi_report: Option<Nanos>,
    /// This vector's packets between the halves of their decapsulation.
    pending: Vec<Pending<esp::DecapPending>>,
    /// Packets with an asynchronous engine, when the node has one.
    parked: Option<Parked<B, esp::DecapPending>>,
}

impl<B, const V6: bool> std::fmt::Debug for EspDecrypt<B, V6> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspDecrypt")
            .field("cache", &self.cache)
            .field("asynchronous", &self.parked.is_some())
            .finish()
    }
}

impl<B, const V6: bool> Default for EspDecrypt<B, V6> {
    /// Crypto in software.
    fn default() -> Self {
        Self::new(Arc::new(SoftwareBackend::new()))
    }
}

impl<B, const V6: bool> EspDecrypt<B, V6> {
    /// The node with ESP crypto on `backend`.
    pub fn new(backend: Arc<dyn CryptoBackend>) -> Self {
        Self {
            cache: SaCache::new(backend),
            last_spi_report: None,
            pending: Vec::new(),
            parked: None,
        }
    }

    /// The node handing its crypto to `engine` asynchronously (see
    /// [`EspEncrypt::with_engine`]).
    pub fn with_engine(mut self, engine: Arc<dyn AsyncCrypto<B>>) -> Self {
        self.parked = Some(Parked::new(engine));
        self
    }

    /// Reports ESP with the unknown SPI `spi` in packet `ip` to the IKE daemon (by its
    /// sender, the outer source), unless this node reported one less than
    /// [`SPI_REPORT_EVERY`] ago.
    #[cold]
    fn report_unknown_spi(&mut self, now: Nanos, ipsec: &IpsecTables, ip: &[u8], spi: u32) {
        if self
            .last_spi_report
            .is_some_and(|last| now.saturating_sub(last) < SPI_REPORT_EVERY)
        {
            return;
        }
        let sender = match ip.first().map(|b| b >> 4) {
            Some(4) => ip
                .get(12..16)
                .and_then(|a| <[u8; 4]>::try_from(a).ok())
                .map(IpAddr::from),
            Some(6) => ip
                .get(8..24)
                .and_then(|a| <[u8; 16]>::try_from(a).ok())
                .map(IpAddr::from),
            _ => None,
        };
        if let Some(sender) = sender {
            self.last_spi_report = Some(now);
            ipsec.spi_reports.report(sender, spi);
        }
    }
}

/// Least time between two reports of unknown SPIs from one decrypt node (10 a second).
pub const SPI_REPORT_EVERY: Nanos = 100_000_000;

/// `esp4-decrypt`.
pub type Esp4Decrypt<B> = EspDecrypt<B, false>;
/// `esp6-decrypt`.
pub type Esp6Decrypt<B> = EspDecrypt<B, true>;

/// A packet of the vector whose crypto is still to run: which one, its SA, how the crypto
/// went, and what the node's second half needs. What the crypto must do is not carried
/// here: the first half writes it straight into the operation that runs it (see
/// [`run_halves`]), so that its hundred-odd bytes are not copied from record to record.
#[derive(Debug)]
struct Pending<W> {
    index: usize,
    spi: u32,
    result: Result<(), CryptoError>,
    work: W,
}

/// What one half of a node decided for a packet: done (with its next node), or on to the
/// crypto batch.
enum Step<P> {
    Done(NextIndex),
    Crypto(P),
}

/// Operations the nodes hand to the backend at once (a device's burst).
const CRYPTO_BATCH: usize = 32;

/// An ESP node as its two halves around the crypto, so that one loop ([`run_halves`]) runs
/// both nodes.
trait Halves<B: PacketBuffer> {
    type Work;
    /// The node's next index for [`PARK`].
    const PARK: NextIndex;
    fn cache(&self) -> &SaCache;
    fn pending(&mut self) -> &mut Vec<Pending<Self::Work>>;
    /// The node's SA state and its asynchronous side, both at once.
    fn cache_and_parked(&mut self) -> (&SaCache, Option<&mut Parked<B, Self::Work>>);
    /// On [`Step::Crypto`], what the crypto must do is in `params` (left unspecified
    /// otherwise).
    fn first_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        params: &mut SymParams,
    ) -> Step<Pending<Self::Work>>;
    fn second_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        p: Pending<Self::Work>,
    ) -> NextIndex;
}

/// Every packet's first half, the crypto in batches, and every second half. The vector is
/// taken in stretches that each hold (at most) one batch of packets for the crypto: their
/// first halves write what the crypto must do straight into the batch's operations, the
/// batch runs, then their second halves. With an asynchronous engine the crypto packets are
/// parked instead, their second half run when a poll finds them done ([`poll_parked`]).
fn run_halves<B: PacketBuffer, N: Halves<B>>(
    node: &mut N,
    cx: &mut Context<'_, B>,
    ipsec: &Arc<IpsecTables>,
    pkts: &mut [Packet<B>],
    next: &mut [NextIndex],
) {
    if node.cache_and_parked().1.is_some() {
        park_halves(node, cx, ipsec, pkts, next);
        return;
    }
    // Taken out while the node's halves run; put back (empty, its capacity kept) at the end.
    let mut pending = std::mem::take(node.pending());
    let mut start = 0;
    while start < pkts.len() {
        pending.clear();
        let mut ops: [SymOp<'_>; CRYPTO_BATCH] = std::array::from_fn(|_| SymOp::default());
        let mut end = start;
        while let (Some(pkt), Some(n), Some(op)) = (
            pkts.get_mut(end),
            next.get_mut(end),
            ops.get_mut(pending.len()),
        ) {
            match node.first_half(cx, ipsec, pkt, &mut op.params) {
                Step::Done(next) => *n = next,
                Step::Crypto(p) => pending.push(Pending { index: end, ..p }),
            }
            end += 1;
        }
        if !pending.is_empty() {
            let cache = node.cache();
            run_crypto(
                &*cache.backend,
                &cache.sas,
                &mut ops,
                &mut pending,
                &mut pkts[start..end],
                start,
            );
            for p in pending.drain(..) {
                let index = p.index;
                next[index] = node.second_half(cx, ipsec, &mut pkts[index], p);
            }
        }
        start = end;
    }
    *node.pending() = pending;
}

/// [`run_halves`] with an asynchronous engine: every packet's first half, the crypto
/// packets bound for the engine, which [`Node::park`] then brings one by one.
fn park_halves<B: PacketBuffer, N: Halves<B>>(
    node: &mut N,
    cx: &mut Context<'_, B>,
    ipsec: &Arc<IpsecTables>,
    pkts: &mut [Packet<B>],
    next: &mut [NextIndex],
) {
    // One scratch for the vector: the first half overwrites what the crypto reads.
    let mut params = SymParams::default();
    for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
        match node.first_half(cx, ipsec, pkt, &mut params) {
            Step::Done(next) => *n = next,
            Step::Crypto(pending) => {
                if let Some(parked) = node.cache_and_parked().1 {
                    parked.parking.push_back(Parking {
                        pending,
                        params: params.clone(),
                        ipsec: Arc::clone(ipsec),
                    });
                    *n = N::PARK;
                } else {
                    // Not reached: the caller saw the engine. Next 0 is the drop.
                    *n = 0 as NextIndex;
                }
            }
        }
    }
}

/// The asynchronous side of an ESP node: its engine and the packets the engine has, between
/// the node's halves.
struct Parked<B, W> {
    engine: Arc<dyn AsyncCrypto<B>>,
    /// The current vector's packets bound for the engine, in vector order, until
    /// [`Node::park`] brings each one.
    parking: VecDeque<Parking<W>>,
    /// Parked packets not handed to the engine yet.
    to_submit: Vec<AsyncOp<B>>,
    /// The work of every parked packet, in the order parked.
    flights: VecDeque<Flight<W>>,
    next_tag: u64,
    /// Completed operations, between the engine's poll and the second halves.
    done: Vec<AsyncOp<B>>,
}

/// A packet bound for the engine: its work, what the crypto must do, and the tables it was
/// prepared with.
struct Parking<W> {
    pending: Pending<W>,
    params: SymParams,
    ipsec: Arc<IpsecTables>,
}

/// A parked packet's work, known by its operation's tag.
struct Flight<W> {
    tag: u64,
    pending: Pending<W>,
    ipsec: Arc<IpsecTables>,
}

impl<B, W> Parked<B, W> {
    fn new(engine: Arc<dyn AsyncCrypto<B>>) -> Self {
        Self {
            engine,
            parking: VecDeque::new(),
            to_submit: Vec::with_capacity(CRYPTO_BATCH),
            flights: VecDeque::new(),
            next_tag: 0,
            done: Vec::new(),
        }
    }

    /// Takes a packet the node sent to [`PARK`]: the next of the vector's parking work.
    fn park(&mut self, pkt: Packet<B>) -> Result<(), Packet<B>> {
        let Some(Parking {
            pending,
            params,
            ipsec,
        }) = self.parking.pop_front()
        else {
            return Err(pkt);
        };
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.to_submit.push(AsyncOp {
            pkt,
            params,
            tag,
            result: Ok(()),
        });
        self.flights.push_back(Flight {
            tag,
            pending,
            ipsec,
        });
        Ok(())
    }

    /// The flight of operation `tag` (nearly always the oldest: engines answer in order).
    fn take_flight(&mut self, tag: u64) -> Option<Flight<W>> {
        let at = self.flights.iter().position(|f| f.tag == tag)?;
        self.flights.remove(at)
    }
}

/// Hands the parked packets to the engine, runs here what it does not take, and sends every
/// completed packet through the node's second half. Returns how many packets stay parked.
fn poll_parked<B: PacketBuffer, N: Halves<B>>(node: &mut N, cx: &mut Context<'_, B>) -> usize {
    let (cache, Some(parked)) = node.cache_and_parked() else {
        return 0;
    };
    let mut done = std::mem::take(&mut parked.done);
    // The operations to submit are the newest flights, in the same order.
    let mut offered = parked.flights.len() - parked.to_submit.len();
    while !parked.to_submit.is_empty() {
        let n = parked.to_submit.len().min(CRYPTO_BATCH);
        let ctxs: [Option<SymCtx<'_>>; CRYPTO_BATCH] = std::array::from_fn(|i| {
            let f = parked.flights.get(offered + i).filter(|_| i < n)?;
            cache.sas.get(&f.pending.spi).map(Sa::crypto_ctx)
        });
        let taken = parked.engine.submit(&mut parked.to_submit, &ctxs[..n]);
        offered += taken;
        if taken < n {
            // The engine is full: the rest runs here, now.
            for mut op in parked.to_submit.drain(..) {
                let ctx = parked
                    .flights
                    .get(offered)
                    .and_then(|f| cache.sas.get(&f.pending.spi))
                    .map(Sa::crypto_ctx);
                offered += 1;
                let mut sym = SymOp {
                    buf: op.pkt.buf.data_mut(),
                    ctx,
                    params: std::mem::take(&mut op.params),
                    result: Err(CryptoError::Backend),
                };
                cache.backend.process(std::slice::from_mut(&mut sym));
                op.result = sym.result;
                done.push(op);
            }
        }
    }
    parked.engine.poll(&mut done);
    for op in done.drain(..) {
        let flight = node
            .cache_and_parked()
            .1
            .and_then(|parked| parked.take_flight(op.tag));
        let Some(flight) = flight else {
            // Not one of ours (an engine's mistake): dropped (next 0 is the drop).
            cx.spawn(op.pkt, 0 as NextIndex);
            continue;
        };
        let mut pkt = op.pkt;
        let pending = Pending {
            result: op.result,
            ..flight.pending
        };
        let next = node.second_half(cx, &flight.ipsec, &mut pkt, pending);
        cx.spawn(pkt, next);
    }
    match node.cache_and_parked() {
        (_, Some(parked)) => {
            parked.done = done;
            parked.flights.len()
        }
        _ => 0,
    }
}

/// Runs one batch: the operations `ops[..pending.len()]`, whose parameters the first halves
/// wrote, on the pending packets' bytes with their SAs' contexts, on `backend`. `pkts` is
/// the stretch of the vector the batch came from, the packet of vector index `base` first.
fn run_crypto<'a, B: PacketBuffer, W>(
    backend: &dyn CryptoBackend,
    sas: &'a HashMap<u32, Sa, FnvBuildHasher>,
    ops: &mut [SymOp<'a>],
    pending: &mut [Pending<W>],
    pkts: &'a mut [Packet<B>],
    base: usize,
) {
    // The batch's packets, in vector order: split each off the rest of the stretch.
    let mut rest = pkts;
    let mut base = base;
    let mut filled = 0;
    for (op, p) in ops.iter_mut().zip(pending.iter()) {
        let Some((pkt, tail)) = std::mem::take(&mut rest)
            .get_mut(p.index.wrapping_sub(base)..)
            .and_then(<[Packet<B>]>::split_first_mut)
        else {
            break;
        };
        rest = tail;
        base = p.index + 1;
        op.buf = pkt.buf.data_mut();
        op.ctx = sas.get(&p.spi).map(Sa::crypto_ctx);
        filled += 1;
    }
    let ops = &mut ops[..filled];
    backend.process(ops);
    for (op, p) in ops.iter().zip(pending.iter_mut()) {
        p.result = op.result;
    }
    // Not run (never expected: every pending packet is in the stretch): refused.
    for p in pending.iter_mut().skip(filled) {
        p.result = Err(CryptoError::Backend);
    }
}

/// The addresses, protocol, transport ports and payload offset of an IP packet; `None`
/// when it is not a well-formed IPv4/IPv6 packet. IPv6 extension headers are not walked
/// (the protocol is then the first next header, as a transit router sees it).
fn flow_of(data: &[u8]) -> Option<(FlowSelector, usize, bool)> {
    let (src, dst, proto, l4, first_fragment) = match data.first()? >> 4 {
        4 => {
            let h = data.get(..20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            (
                IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
                IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
                h[9],
                ihl,
                offset == 0,
            )
        }
        6 => {
            let h = data.get(..40)?;
            let mut s = [0u8; 16];
            s.copy_from_slice(&h[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&h[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                h[6],
                40,
                true,
            )
        }
        _ => return None,
    };
    let ports = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP if first_fragment => data.get(l4..l4 + 4).map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }),
        _ => None,
    };
    let (src_port, dst_port) = ports.unwrap_or((0, 0));
    Some((
        FlowSelector {
            src,
            dst,
            proto,
            src_port,
            dst_port,
        },
        l4,
        first_fragment,
    ))
}

/// IKE and ESP never go through the SPD (RFC 4301 section 5.1: IKE bypasses; ESP that we
/// made must not be encrypted again).
#[inline]
fn bypasses_spd(flow: &FlowSelector) -> bool {
    flow.proto == PROTO_ESP
        || (flow.proto == PROTO_UDP
            && [IKE_PORT, NAT_T_PORT]
                .iter()
                .any(|p| flow.src_port == *p || flow.dst_port == *p))
}

/// RFC 4301 5.2 (step 3b; 5.1's inbound SPD check): true when a packet that comes in the
/// clear is one an inbound SA's selectors cover (its source among the peer's, its
/// destination among ours), which should have come through that SA and is to be dropped;
/// else anyone could send, around the tunnel, traffic the tunnel is there to protect.
/// What came out of ESP (checked against its own SA's selectors on the way out of it) and
/// this node's own packets are not inbound cleartext; nor is traffic exempt from the SPD
/// ([`spd_exempt`], looked at only when selectors cover a packet). `payload` is the packet
/// (or the reassembled payload) whose transport header starts at `l4`. Callers run it only
/// with IPsec tables, so the plain router never pays for it.
#[inline]
fn cleartext_protected(
    ipsec: &IpsecTables,
    meta: &Meta,
    flow: &FlowSelector,
    payload: &[u8],
    l4: usize,
) -> bool {
    if meta.esp_decrypted || meta.local_origin {
        return false;
    }
    ipsec.inbound.iter().any(|sa| sa.covers(flow)) && !spd_exempt(flow, payload, l4)
}

/// Cleartext let in even where inbound selectors cover it (a road warrior's 0.0.0.0/0 and
/// ::/0 cover everything): IKE and ESP themselves ([`bypasses_spd`], RFC 4301 5.1); ICMP
/// errors about them (RFC 4301 6.1.1 leaves unprotected errors to local policy; these come
/// from routers on the tunnel's path and carry its path MTU, section 8.2); IPv6 neighbor
/// and router discovery (RFC 4861: never leaves the link, and without it the link fails);
/// and link-scope, multicast and broadcast traffic, which no tunnel carries.
#[cold]
#[inline(never)]
fn spd_exempt(flow: &FlowSelector, payload: &[u8], l4: usize) -> bool {
    if bypasses_spd(flow) {
        return true;
    }
    let link_scope = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            s.is_link_local() || d.is_link_local() || d.is_multicast() || d.is_broadcast()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let link_local = |a: Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
            d.is_multicast() || link_local(s) || link_local(d)
        }
        _ => false,
    };
    if link_scope {
        return true;
    }
    let Some(&kind) = payload.get(l4) else {
        return false;
    };
    // The quoted packet follows the 8-byte ICMP header.
    let about_bypass = || {
        payload
            .get(l4 + 8..)
            .and_then(flow_of)
            .is_some_and(|(quoted, _, _)| bypasses_spd(&quoted))
    };
    match flow.proto {
        // Router solicitation and advertisement, neighbor solicitation and advertisement,
        // redirect.
        PROTO_ICMPV6 if (133..=137).contains(&kind) => true,
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        PROTO_ICMPV6 if (1..=4).contains(&kind) => about_bypass(),
        // Destination unreachable, source quench, time exceeded, parameter problem.
        PROTO_ICMP if matches!(kind, 3 | 4 | 11 | 12) => about_bypass(),
        _ => false,
    }
}

/// Traces a packet [`cleartext_protected`] refused.
#[cold]
fn refuse_cleartext<B>(cx: &mut Context<'_, B>, meta: &Meta, flow: &FlowSelector) {
    if meta.trace != 0 {
        cx.trace(
            meta,
            format_args!(
                "{} > {}: in the clear, but an inbound SA covers it: dropped",
                flow.src, flow.dst
            ),
        );
    }
}

/// RFC 4303 3.4.1: ESP is reassembled before it is processed. Adds the fragment of `pkt` (its
/// IPv6 fragment header at `at`) to the worker's reassembly; with its datagram whole, puts
/// that back in `pkt`'s buffer and returns where its ESP header starts, or passes on to the
/// local node what turns out not to be ESP. Every other outcome is a drop: held (counted as
/// queued) or refused.
#[cold]
#[inline(never)]
fn reassemble<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    ipsec: &IpsecTables,
    pkt: &mut Packet<B>,
    at: usize,
) -> Result<usize, DecryptNext> {
    let data = pkt.buf.data();
    let v6 = data.first().is_some_and(|b| b >> 4 == 6);
    // A fragment RFC 8200 4.5 has answered with a parameter problem: `ip6-local`'s to answer.
    if v6 && super::ip6::fragment_problem(data, at).is_some() {
        return Err(DecryptNext::Local);
    }
    let outcome = if v6 {
        super::local_frag::add_v6(cx, data, at)
    } else {
        super::local_frag::add_v4(cx, data)
    };
    let whole = match outcome {
        super::local_frag::Reassembled::Queued => {
            cx.error(EspDecryptError::FragmentQueued);
            return Err(DecryptNext::Drop);
        }
        super::local_frag::Reassembled::Dropped => {
            cx.error(EspDecryptError::FragmentDropped);
            return Err(DecryptNext::Drop);
        }
        super::local_frag::Reassembled::Whole(whole) => whole,
    };
    cx.error(EspDecryptError::Reassembled);
    let hlen = whole.header.len();
    let proto = match whole.header.get(if v6 { 6 } else { 9 }) {
        Some(&p) => p,
        None => {
            cx.error(EspDecryptError::Malformed);
            return Err(DecryptNext::Drop);
        }
    };
    let payload = &whole.payload;
    let esp_at = match proto {
        PROTO_ESP => hlen,
        PROTO_UDP => {
            let port = |at: usize| {
                payload
                    .get(at..at + 2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]))
            };
            let esp = payload.get(8..).unwrap_or_default();
            if port(2) == Some(NAT_T_PORT) && esp.len() >= 8 && esp[..4] != [0, 0, 0, 0] {
                hlen + 8
            } else {
                return Err(pass_on(cx, ipsec, pkt, &whole, port(0), port(2)));
            }
        }
        _ => {
            cx.error(EspDecryptError::Malformed);
            return Err(DecryptNext::Drop);
        }
    };
    if !super::local_frag::rebuild_whole(pkt, &whole) {
        cx.error(EspDecryptError::ReassembledTooBig);
        return Err(DecryptNext::Drop);
    }
    if pkt.meta.trace != 0 {
        cx.trace(
            &pkt.meta,
            format_args!("ESP reassembled from fragments: {} bytes", pkt.buf.len()),
        );
    }
    Ok(esp_at)
}

/// A reassembled UDP datagram that is not ESP (IKE, whose messages may be fragmented): on to
/// the local node, as the cleartext it is ([`cleartext_protected`]), whole or fragmented
/// again ([`super::local_frag::pass_on`]).
fn pass_on<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    ipsec: &IpsecTables,
    pkt: &mut Packet<B>,
    whole: &super::local_frag::Whole,
    src_port: Option<u16>,
    dst_port: Option<u16>,
) -> DecryptNext {
    let Some((src, dst)) = flow_of(&whole.header).map(|(f, _, _)| (f.src, f.dst)) else {
        cx.error(EspDecryptError::Malformed);
        return DecryptNext::Drop;
    };
    let flow = FlowSelector {
        src,
        dst,
        proto: PROTO_UDP,
        src_port: src_port.unwrap_or(0),
        dst_port: dst_port.unwrap_or(0),
    };
    if cleartext_protected(ipsec, &pkt.meta, &flow, &whole.payload, 0) {
        refuse_cleartext(cx, &pkt.meta, &flow);
        cx.error(EspDecryptError::CleartextProtected);
        return DecryptNext::Drop;
    }
    cx.error(EspDecryptError::ReassembledNotEsp);
    if !super::local_frag::pass_on(cx, pkt, whole, DecryptNext::Local as NextIndex) {
        cx.error(EspDecryptError::NoBuffer);
        return DecryptNext::Drop;
    }
    DecryptNext::Local
}

/// The MTU of the link towards `dst`.
fn mtu_towards(tables: &Tables, dst: IpAddr) -> Option<u16> {
    let port = match tables.fib.lookup(dst)? {
        Route::Attached { port } => *port,
        Route::Via(hops) => hops.first()?.port,
        Route::Local => return Some(u16::MAX),
        _ => return None,
    };
    tables.interface(port).map(|i| i.mtu)
}

impl<B: PacketBuffer, const V6: bool> Node<B> for EspEncrypt<B, V6> {
    family_node_info!(
        EspEncryptError,
        "esp4-encrypt",
        ENCRYPT_NEXT4,
        "esp6-encrypt",
        ENCRYPT_NEXT6
    );

    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        self.with_shared_state(|node| node.run_vector(cx, pkts, next));
    }

    fn park(&mut self, pkt: Packet<B>) -> Result<(), Packet<B>> {
        match &mut self.parked {
            Some(parked) => parked.park(pkt),
            None => Err(pkt),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_, B>) -> usize {
        self.with_shared_state(|node| poll_parked(node, cx))
    }
}

impl<B, const V6: bool> EspEncrypt<B, V6> {
    /// Runs `f` with the outbound state shared with the other encrypt node in `self.cache`.
    fn with_shared_state<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let shared = Arc::clone(&self.shared.0);
        // Every update is complete when the lock is released: a poisoned one is still sound.
        let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut self.cache, &mut state);
        let r = f(self);
        std::mem::swap(&mut self.cache, &mut state);
        r
    }
}

impl<B: PacketBuffer, const V6: bool> EspEncrypt<B, V6> {
    fn run_vector(
        &mut self,
        cx: &mut Context<'_, B>,
        pkts: &mut [Packet<B>],
        next: &mut [NextIndex],
    ) {
        let Some(ipsec) = cx.tables.ipsec.clone() else {
            self.cache.forget_all();
            next.fill(EncryptNext::Rewrite as NextIndex);
            return;
        };
        self.cache.follow(&ipsec, true);
        // Inbound SAs alone still have cleartext checked against their selectors.
        if ipsec.is_empty() {
            next.fill(EncryptNext::Rewrite as NextIndex);
            return;
        }
        run_halves(self, cx, &ipsec, pkts, next);
    }
}

/// What the encrypt node's second half needs to know of a packet.
#[derive(Debug)]
struct EncryptWork {
    job: esp::EncapPending,
    policy: usize,
    mtu: u16,
    inner_len: usize,
    flow: FlowSelector,
}

impl<B: PacketBuffer, const V6: bool> EspEncrypt<B, V6> {
    /// The first half: SPD lookup, checks, the inner hop, room for ESP, and the ESP header
    /// and trailer ([`esp::encapsulate_prepare_into`], which writes what the crypto must do
    /// into `params`).
    fn first_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        params: &mut SymParams,
    ) -> Step<Pending<EncryptWork>> {
        match self.try_prepare(cx, ipsec, pkt, params) {
            Ok(p) => Step::Crypto(p),
            Err(next) => Step::Done(next as NextIndex),
        }
    }

    fn try_prepare(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        params: &mut SymParams,
    ) -> Result<Pending<EncryptWork>, EncryptNext> {
        let Some((flow, l4, _)) = flow_of(pkt.buf.data()) else {
            return Err(EncryptNext::Rewrite);
        };
        if bypasses_spd(&flow) {
            return Err(EncryptNext::Rewrite);
        }
        let Some(policy_index) = ipsec.outbound_index_for(&flow) else {
            if cleartext_protected(ipsec, &pkt.meta, &flow, pkt.buf.data(), l4) {
                refuse_cleartext(cx, &pkt.meta, &flow);
                cx.error(EspEncryptError::CleartextProtected);
                return Err(EncryptNext::Drop);
            }
            return Err(EncryptNext::Rewrite);
        };
        let policy = &ipsec.outbound[policy_index];
        if hand_off_sa(cx, pkt, policy.sa.spi) {
            cx.error(EspEncryptError::HandedOff);
            return Err(EncryptNext::Handoff);
        }
        let outer = policy.outer;
        let Some(mtu) = mtu_towards(cx.tables, outer.dst()) else {
            cx.error(EspEncryptError::NoRoute);
            return Err(EncryptNext::Drop);
        };
        let sa = match self.cache.sas.entry(policy.sa.spi) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match Sa::new(
                    &*self.cache.backend,
                    &policy.sa,
                    Direction::Outbound,
                    cx.now,
                ) {
                    Ok(sa) => e.insert(sa),
                    Err(_) => {
                        cx.error(EspEncryptError::SaSetup);
                        return Err(EncryptNext::Drop);
                    }
                }
            }
        };
        let inner_len = pkt.buf.len();
        let head = outer.len() + 8 + sa.suite().iv_len();
        let suite = sa.suite();
        let block = suite.block_len();
        let encrypted_len = head + (inner_len + 2).div_ceil(block) * block + suite.icv_len();
        let data = pkt.buf.data_mut();
        let inner_v6 = !flow.src.is_ipv4();
        if encrypted_len > usize::from(mtu) {
            let may_fragment = !inner_v6 && data.get(6).is_some_and(|b| b & 0x40 == 0);
            if !may_fragment {
                cx.error(EspEncryptError::TooBig);
                let room = u32::from(mtu).saturating_sub((encrypted_len - inner_len) as u32);
                // Leave room for the padding to the next block too.
                let inner_mtu = room.saturating_sub(block as u32 - 1);
                pkt.meta.icmp_error = Some(if inner_v6 {
                    (2, 0, inner_mtu.max(1280))
                } else {
                    (3, 4, inner_mtu)
                });
                return Err(EncryptNext::Error);
            }
        }
        // The tunnel is a hop: the inner TTL goes down here, as a router's would.
        if !pkt.meta.local_origin {
            if let Some(error) = super::tunnel::inner_hop(data, inner_v6) {
                cx.error(EspEncryptError::TtlExpired);
                pkt.meta.icmp_error = Some(error);
                return Err(EncryptNext::Error);
            }
        }
        let tail = sa.esp_overhead();
        if !pkt.buf.push_front(head) {
            cx.error(EspEncryptError::NoBuffer);
            return Err(EncryptNext::Drop);
        }
        if !pkt.buf.push_back(tail) {
            cx.error(EspEncryptError::NoBuffer);
            return Err(EncryptNext::Drop);
        }
        match esp::encapsulate_prepare_into(
            sa,
            pkt.buf.data_mut(),
            head..head + inner_len,
            &outer,
            cx.now,
            params,
        ) {
            Ok(job) => Ok(Pending {
                index: 0,
                spi: policy.sa.spi,
                result: Ok(()),
                work: EncryptWork {
                    job,
                    policy: policy_index,
                    mtu,
                    inner_len,
                    flow,
                },
            }),
            Err(e) => Err(self.refuse(cx, &policy.stats, e)),
        }
    }

    /// Counts a packet ESP refused and drops it.
    fn refuse(&self, cx: &mut Context<'_, B>, stats: &SaStats, e: EspError) -> EncryptNext {
        cx.error(match e {
            EspError::SequenceExhausted => EspEncryptError::SequenceExhausted,
            EspError::Expired => EspEncryptError::Expired,
            EspError::BufferTooSmall => EspEncryptError::NoBuffer,
            _ => EspEncryptError::Failed,
        });
        SaStats::add(&stats.other_drops, 1);
        EncryptNext::Drop
    }

    /// The second half, after the crypto: the outer header ([`esp::encapsulate_finish`]),
    /// post-encryption fragmentation leave, counters, and on to the outer lookup.
    fn second_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        p: Pending<EncryptWork>,
    ) -> EncryptNext {
        let w = p.work;
        let Some(policy) = ipsec.outbound.get(w.policy) else {
            cx.error(EspEncryptError::Failed);
            return EncryptNext::Drop;
        };
        let Some(sa) = self.cache.sas.get_mut(&p.spi) else {
            cx.error(EspEncryptError::Failed);
            return EncryptNext::Drop;
        };
        let range = match esp::encapsulate_finish(sa, &w.job, pkt.buf.data_mut(), p.result) {
            Ok(r) => r,
            Err(e) => return self.refuse(cx, &policy.stats, e),
        };
        let (mtu, inner_len, flow, outer) = (w.mtu, w.inner_len, w.flow, policy.outer);
        pkt.buf.pull_front(range.start);
        pkt.buf.truncate(range.end - range.start);
        if range.end - range.start > usize::from(mtu) {
            // The inner packet allowed fragmentation: so does the outer one (RFC 4459's
            // post-encryption fragmentation; the peer reassembles), with an identification
            // of its own (RFC 6864 4.1: a fragmentable datagram's must not repeat soon).
            let ident = cx.state.next_fragment_ident() as u16;
            let data = pkt.buf.data_mut();
            if outer.src().is_ipv4() && data.len() >= 20 {
                data[6] &= !0x40;
                let mut ip = Ipv4Packet::new_unchecked(&mut data[..]);
                ip.set_ident(ident);
                ip.fill_checksum();
            }
        }
        SaStats::add(&policy.stats.packets, 1);
        SaStats::add(&policy.stats.bytes, inner_len as u64);
        cx.error(EspEncryptError::Encrypted);
        if pkt.meta.trace != 0 {
            cx.trace(
                &pkt.meta,
                format_args!(
                    "{} > {}: ESP spi {:08x} to {}",
                    flow.src,
                    flow.dst,
                    policy.sa.spi,
                    outer.dst()
                ),
            );
        }
        pkt.meta.local_origin = true;
        pkt.meta.decapsulated = false;
        pkt.meta.esp_decrypted = false;
        if outer.dst().is_ipv4() {
            EncryptNext::Lookup4
        } else {
            EncryptNext::Lookup6
        }
    }
}

impl<B: PacketBuffer, const V6: bool> Node<B> for EspDecrypt<B, V6> {
    family_node_info!(
        EspDecryptError,
        "esp4-decrypt",
        DECRYPT_NEXT4,
        "esp6-decrypt",
        DECRYPT_NEXT6
    );

    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        let Some(ipsec) = cx.tables.ipsec.clone() else {
            self.cache.forget_all();
            next.fill(DecryptNext::Local as NextIndex);
            return;
        };
        self.cache.follow(&ipsec, false);
        if ipsec.inbound.is_empty() {
            next.fill(DecryptNext::Local as NextIndex);
            return;
        }
        run_halves(self, cx, &ipsec, pkts, next);
    }

    fn park(&mut self, pkt: Packet<B>) -> Result<(), Packet<B>> {
        match &mut self.parked {
            Some(parked) => parked.park(pkt),
            None => Err(pkt),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_, B>) -> usize {
        poll_parked(self, cx)
    }
}

/// Counts an inbound packet ESP refused (on the node and on the SA) and drops it.
fn refuse_inbound<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    pkt: &Packet<B>,
    stats: &SaStats,
    spi: u32,
    e: EspError,
) -> DecryptNext {
    let (error, counter) = match e {
        EspError::Replay(ReplayError::Duplicate | ReplayError::TooOld) => {
            (EspDecryptError::Replay, &stats.replay_drops)
        }
        EspError::Authentication => (EspDecryptError::IcvFailed, &stats.auth_failures),
        EspError::Expired => (EspDecryptError::Expired, &stats.other_drops),
        EspError::Dummy => (EspDecryptError::Dummy, &stats.other_drops),
        EspError::UnknownSpi(_) => (EspDecryptError::UnknownSpi, &stats.other_drops),
        _ => (EspDecryptError::Malformed, &stats.other_drops),
    };
    cx.error(error);
    SaStats::add(counter, 1);
    if pkt.meta.trace != 0 {
        cx.trace(&pkt.meta, format_args!("ESP spi {spi:08x}: {e}"));
    }
    DecryptNext::Drop
}

/// What the decrypt node makes of a packet the lookup found to be for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbound {
    /// ESP, its header at this offset.
    Esp(usize),
    /// A fragment of raw ESP, or of UDP to the tunnel end of an SA (it may be ESP): to be
    /// reassembled first (RFC 4303 3.4.1). IPv6: its fragment header at this offset.
    Fragment(usize),
    /// Anything else for one of this node's unicast addresses, with its payload offset: the
    /// local node's, once checked against the inbound SAs' selectors.
    Clear(FlowSelector, usize),
    /// Not for one of this node's unicast addresses, or not a well-formed packet: the local
    /// node's as it is.
    Other,
}

/// Sorts a packet for this node ([`Inbound`]). ESP is told by its protocol, or, in UDP, by
/// the NAT-T port and a first word that is not the non-ESP marker (IKE: the host's; so are
/// one-byte keepalives).
fn classify(tables: &Tables, ipsec: &IpsecTables, data: &[u8]) -> Inbound {
    let Some((flow, l4, first_fragment)) = flow_of(data) else {
        return Inbound::Other;
    };
    let local = match flow.dst {
        IpAddr::V4(a) => tables.is_local_ipv4(a),
        IpAddr::V6(a) => tables.is_local_ipv6(a),
    };
    if !local {
        return Inbound::Other;
    }
    match flow.src {
        IpAddr::V4(_) if !first_fragment || data.get(6).is_some_and(|b| b & 0x20 != 0) => {
            return fragment_kind(ipsec, &flow, flow.proto, 0, l4);
        }
        IpAddr::V6(_) if flow.proto == PROTO_FRAGMENT => {
            // The fragment header right after the fixed one names the protocol of the
            // fragmentable part (fragments behind other extension headers are left to
            // `ip6-local`, as ESP behind them is).
            return match data.get(l4) {
                Some(&next) => fragment_kind(ipsec, &flow, next, l4, l4),
                None => Inbound::Other,
            };
        }
        _ => {}
    }
    match flow.proto {
        PROTO_ESP => Inbound::Esp(l4),
        PROTO_UDP if flow.dst_port == NAT_T_PORT => match data.get(l4 + 8..) {
            Some(esp) if esp.len() >= 8 && esp[..4] != [0, 0, 0, 0] => Inbound::Esp(l4 + 8),
            _ => Inbound::Clear(flow, l4),
        },
        _ => Inbound::Clear(flow, l4),
    }
}

/// [`classify`] for a fragment of protocol `proto` (its fragment header at `at`, IPv6): one
/// to reassemble when it may be ESP, else one for the local node (checked as cleartext).
#[cold]
fn fragment_kind(
    ipsec: &IpsecTables,
    flow: &FlowSelector,
    proto: u8,
    at: usize,
    l4: usize,
) -> Inbound {
    let to_tunnel_end = || ipsec.inbound.iter().any(|sa| sa.local == flow.dst);
    match proto {
        PROTO_ESP => Inbound::Fragment(at),
        PROTO_UDP if to_tunnel_end() => Inbound::Fragment(at),
        _ => Inbound::Clear(*flow, l4),
    }
}

impl<B: PacketBuffer, const V6: bool> EspDecrypt<B, V6> {
    /// The first half: is it ESP for us, its SA, and the checks before the crypto
    /// ([`esp::decapsulate_prepare_into`]: lifetime, replay window), which writes what the
    /// crypto must do into `params`.
    fn first_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        params: &mut SymParams,
    ) -> Step<Pending<esp::DecapPending>> {
        match self.try_prepare(cx, ipsec, pkt, params) {
            Ok(p) => Step::Crypto(p),
            Err(next) => Step::Done(next as NextIndex),
        }
    }

    fn try_prepare(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        params: &mut SymParams,
    ) -> Result<Pending<esp::DecapPending>, DecryptNext> {
        let esp_at = match classify(cx.tables, ipsec, pkt.buf.data()) {
            Inbound::Esp(at) => at,
            Inbound::Fragment(at) => reassemble(cx, ipsec, pkt, at)?,
            Inbound::Clear(flow, l4) => {
                if cleartext_protected(ipsec, &pkt.meta, &flow, pkt.buf.data(), l4) {
                    refuse_cleartext(cx, &pkt.meta, &flow);
                    cx.error(EspDecryptError::CleartextProtected);
                    return Err(DecryptNext::Drop);
                }
                return Err(DecryptNext::Local);
            }
            Inbound::Other => return Err(DecryptNext::Local),
        };
        let data = pkt.buf.data();
        let Some(spi) = data
            .get(esp_at..esp_at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            cx.error(EspDecryptError::Malformed);
            return Err(DecryptNext::Drop);
        };
        let Some(entry) = ipsec.inbound_by_spi(spi) else {
            cx.error(EspDecryptError::UnknownSpi);
            self.report_unknown_spi(cx.now, ipsec, pkt.buf.data(), spi);
            return Err(DecryptNext::Drop);
        };
        if hand_off_sa(cx, pkt, spi) {
            cx.error(EspDecryptError::HandedOff);
            return Err(DecryptNext::Handoff);
        }
        let sa = match self.cache.sas.entry(spi) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match Sa::new(&*self.cache.backend, &entry.sa, Direction::Inbound, cx.now) {
                    Ok(sa) => e.insert(sa),
                    Err(_) => {
                        cx.error(EspDecryptError::SaSetup);
                        return Err(DecryptNext::Drop);
                    }
                }
            }
        };
        match esp::decapsulate_prepare_into(sa, pkt.buf.data_mut(), cx.now, params) {
            Ok(job) => Ok(Pending {
                index: 0,
                spi,
                result: Ok(()),
                work: job,
            }),
            Err(e) => Err(refuse_inbound(cx, pkt, &entry.stats, spi, e)),
        }
    }

    /// The second half, after the crypto: replay window, trailer ([`esp::decapsulate_finish`]),
    /// the inner packet against the SA's selectors, counters, and on to the inner input.
    fn second_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        p: Pending<esp::DecapPending>,
    ) -> DecryptNext {
        let spi = p.spi;
        let (Some(entry), Some(sa)) = (ipsec.inbound_by_spi(spi), self.cache.sas.get_mut(&spi))
        else {
            cx.error(EspDecryptError::UnknownSpi);
            return DecryptNext::Drop;
        };
        let stats = &entry.stats;
        let d = match esp::decapsulate_finish(sa, &p.work, pkt.buf.data_mut(), p.result) {
            Ok(d) => d,
            Err(e) => return refuse_inbound(cx, pkt, stats, spi, e),
        };
        pkt.buf.pull_front(d.inner.start);
        pkt.buf.truncate(d.inner.end - d.inner.start);
        // The inner packet must be one the SA was negotiated for (RFC 4301 section 5.2).
        let Some((flow, _, _)) = flow_of(pkt.buf.data()) else {
            cx.error(EspDecryptError::Malformed);
            SaStats::add(&stats.other_drops, 1);
            return DecryptNext::Drop;
        };
        if !entry.covers(&flow) {
            cx.error(EspDecryptError::PolicyMismatch);
            SaStats::add(&stats.policy_drops, 1);
            return DecryptNext::Drop;
        }
        // RFC 4301 5.1.2.1 and RFC 6040 4.2: a congestion mark the outer header picked up on
        // the way is carried into the inner one, or, when that is not ECN-capable, the packet
        // is dropped (the mark would be lost otherwise). One comparison when the outer field
        // is Not-ECT.
        if !super::tunnel::apply_outer_ecn(pkt.buf.data_mut(), !flow.src.is_ipv4(), d.outer_ecn) {
            cx.error(EspDecryptError::EcnDrop);
            SaStats::add(&stats.other_drops, 1);
            return DecryptNext::Drop;
        }
        SaStats::add(&stats.packets, 1);
        SaStats::add(&stats.bytes, pkt.buf.len() as u64);
        cx.error(EspDecryptError::Decrypted);
        if pkt.meta.trace != 0 {
            cx.trace(
                &pkt.meta,
                format_args!(
                    "ESP spi {spi:08x} seq {} from {}: {} > {}",
                    d.sequence, d.outer_src, flow.src, flow.dst
                ),
            );
        }
        pkt.meta.decapsulated = true;
        pkt.meta.esp_decrypted = true;
        // The inner packet is a new one: the worker tracking its connection may be another.
        pkt.meta.handoff = crate::graph::Handoff::NONE;
        pkt.meta.local_origin = false;
        if flow.src.is_ipv4() {
            DecryptNext::Input4
        } else {
            DecryptNext::Input6
        }
    }
}

impl<B: PacketBuffer, const V6: bool> Halves<B> for EspEncrypt<B, V6> {
    type Work = EncryptWork;
    const PARK: NextIndex = EncryptNext::Park as NextIndex;

    fn cache(&self) -> &SaCache {
        &self.cache
    }

    fn cache_and_parked(&mut self) -> (&SaCache, Option<&mut Parked<B, EncryptWork>>) {
        (&self.cache, self.parked.as_mut())
    }

    fn pending(&mut self) -> &mut Vec<Pending<EncryptWork>> {
        &mut self.pending
    }

    fn first_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        params: &mut SymParams,
    ) -> Step<Pending<EncryptWork>> {
        EspEncrypt::first_half(self, cx, ipsec, pkt, params)
    }

    fn second_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        p: Pending<EncryptWork>,
    ) -> NextIndex {
        EspEncrypt::second_half(self, cx, ipsec, pkt, p) as NextIndex
    }
}

impl<B: PacketBuffer, const V6: bool> Halves<B> for EspDecrypt<B, V6> {
    type Work = esp::DecapPending;
    const PARK: NextIndex = DecryptNext::Park as NextIndex;

    fn cache(&self) -> &SaCache {
        &self.cache
    }

    fn cache_and_parked(&mut self) -> (&SaCache, Option<&mut Parked<B, esp::DecapPending>>) {
        (&self.cache, self.parked.as_mut())
    }

    fn pending(&mut self) -> &mut Vec<Pending<esp::DecapPending>> {
        &mut self.pending
    }

    fn first_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        params: &mut SymParams,
    ) -> Step<Pending<esp::DecapPending>> {
        EspDecrypt::first_half(self, cx, ipsec, pkt, params)
    }

    fn second_half(
        &mut self,
        cx: &mut Context<'_, B>,
        ipsec: &IpsecTables,
        pkt: &mut Packet<B>,
        p: Pending<esp::DecapPending>,
    ) -> NextIndex {
        EspDecrypt::second_half(self, cx, ipsec, pkt, p) as NextIndex
    }
}
