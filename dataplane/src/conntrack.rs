//! Connection tracking: a per-worker table of flows, found from both directions.
//!
//! One table per worker thread, so nothing here locks. Each connection is one [`ConnEntry`] in a
//! slab; a cuckoo hash index maps both of its tuples (the `original` one and the `reply` one the
//! NAT layer chose) to the same slab slot, tagged with the direction, so the value is stored once
//! and a lookup from either side is one index bucket (two at worst) and one entry read.
//!
//! The index is a bucketised cuckoo table (8 slots of 8 bytes = one cache line per bucket, like
//! DPDK's `rte_hash` and VPP's bihash): each slot holds 32 bits of the key's hash and the slab
//! reference. A key lives in one of two buckets, so a lookup never probes more than two lines
//! however full the table is, and removal just clears a slot. The second bucket is derived from
//! the stored hash bits (partial-key cuckoo), so moving a slot never rereads its entry.
//!
//! Memory is bounded: the slab never holds more than `capacity` entries and the index is sized
//! once, up front, for twice that many tuples. When the table is full an insert reclaims room
//! (an expired entry if one is cheap to find, else the oldest unassured one) or fails with
//! [`ConntrackError::Full`]. After warm-up no operation allocates.
//!
//! TCP follows a simplified version of the Linux/VPP middlebox state machine (no sequence
//! window tracking): the state moves on SYN, SYN-ACK, FIN, ACK and RST by direction, and each
//! state has its own timeout. A client's SYN on a closing or closed connection starts a new
//! one on the same tuples (port reuse), reported as [`Verdict::Reopened`] so that the caller
//! judges and balances it as the new connection it is; on an established one it passes and
//! changes nothing, as Linux ignores it. Expiry is lazy (a lookup that finds an expired
//! entry removes it) and incremental ([`Conntrack::expire`] visits a bounded number of
//! slots per call).
//!
//! An established flow's packet costs one call, [`Conntrack::lookup_track_v4`] for IPv4: the
//! key read as integers, one hash, the index probe, the expiry check against the timeout the
//! entry keeps for its state, the tracking (packets that leave the state as it is, most of
//! them, skip the state machine), and the translation for the packet's direction, worked out
//! from the two tuples when the entry was inserted ([`Translation`]).
//!
//! The dataplane never reads a clock: every call that needs the time takes `now`.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;

use thiserror::Error;

use crate::flows::FlowDirectory;
use crate::graph::Nanos;
use crate::nat::Translation;

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// TCP header flag bits, as on the wire.
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function (ignored by tracking).
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field significant.
    pub const URG: u8 = 0x20;
}
use tcp_flags::{ACK, FIN, RST, SYN, URG};

const SECOND: Nanos = 1_000_000_000;

/// Largest capacity accepted; slab references must fit in 31 bits.
pub const MAX_CAPACITY: u32 = 1 << 30;

/// A connection's 5-tuple as seen in one direction.
///
/// For ICMP echo the identifier stands in for both ports ([`FlowKey::icmp_echo`]), so the
/// reversed key of a request is the key of its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (ICMP echo: the identifier).
    pub src_port: u16,
    /// Destination port (ICMP echo: the identifier).
    pub dst_port: u16,
}

/// `198.18.1.2:40000 > 198.51.100.10:80 proto 6` (`[addr]:port` for IPv6), as a trace shows it.
impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let src = std::net::SocketAddr::new(self.src, self.src_port);
        let dst = std::net::SocketAddr::new(self.dst, self.dst_port);
        write!(f, "{src} > {dst} proto {}", self.proto)
    }
}

impl FlowKey {
    /// A key from its parts.
    pub const fn new(src: IpAddr, dst: IpAddr, proto: u8, src_port: u16, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            proto,
            src_port,
            dst_port,
        }
    }

    /// The key of an ICMP or ICMPv6 echo request or reply (protocol chosen by `dst`'s family).
    pub const fn icmp_echo(src: IpAddr, dst: IpAddr, identifier: u16) -> Self {
        let proto = match dst {
            IpAddr::V4(_) => PROTO_ICMP,
            IpAddr::V6(_) => PROTO_ICMPV6,
        };
        Self::new(src, dst, proto, identifier, identifier)
    }

    /// The same flow seen from the other end, without address translation.
    pub const fn reversed(&self) -> Self {
        Self::new(self.dst, self.src, self.proto, self.dst_port, self.src_port)
    }

    /// The key to look up for an ICMP error that quotes a packet with key `quoted`.
    ///
    /// The error travels back towards the quoted packet's sender, that is in the other
    /// direction of the quoted packet's flow, so it is tracked under the reversed tuple; the
    /// direction [`Conntrack::lookup`] returns is the one to translate the error as.
    pub const fn for_icmp_error(quoted: &FlowKey) -> Self {
        quoted.reversed()
    }
}

/// An IPv4 [`FlowKey`] as the fast path reads it from a packet: addresses as integers, so
/// hashing and comparing it with a tracked tuple never matches on an address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    /// Source address (host order: `Ipv4Addr::to_bits`).
    pub src: u32,
    /// Destination address (host order).
    pub dst: u32,
    /// IP protocol number.
    pub proto: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowKeyV4 {
    /// The same tuple as a [`FlowKey`].
    pub const fn to_key(&self) -> FlowKey {
        FlowKey::new(
            IpAddr::V4(Ipv4Addr::from_bits(self.src)),
            IpAddr::V4(Ipv4Addr::from_bits(self.dst)),
            self.proto,
            self.src_port,
            self.dst_port,
        )
    }

    /// The tuple of `key`, if it is an IPv4 one.
    pub const fn from_key(key: &FlowKey) -> Option<Self> {
        match (key.src, key.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(Self {
                src: src.to_bits(),
                dst: dst.to_bits(),
                proto: key.proto,
                src_port: key.src_port,
                dst_port: key.dst_port,
            }),
            _ => None,
        }
    }

    /// The same flow seen from the other end, without address translation.
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// True if `key` is this tuple.
    #[inline]
    fn matches(&self, key: &FlowKey) -> bool {
        let addrs = match (key.src, key.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                src.to_bits() == self.src && dst.to_bits() == self.dst
            }
            _ => false,
        };
        addrs
            && key.proto == self.proto
            && key.src_port == self.src_port
            && key.dst_port == self.dst_port
    }
}

/// Which way a packet travels relative to the connection's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Same way as the first packet (matches [`ConnEntry::original`]).
    Original = 0,
    /// The answer's way (matches [`ConnEntry::reply`]).
    Reply = 1,
}

impl Direction {
    /// Index into per-direction arrays such as [`ConnEntry::packets`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The other direction.
    pub const fn opposite(self) -> Self {
        match self {
            Direction::Original => Direction::Reply,
            Direction::Reply => Direction::Original,
        }
    }
}

/// Connection state. TCP uses `SynSent` to `Close`; other protocols `Unreplied`/`Replied`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Inserted; no packet tracked yet.
    New,
    /// TCP: SYN seen from the originator.
    SynSent,
    /// TCP: SYN-ACK seen from the responder.
    SynReceived,
    /// TCP: handshake complete (or picked up mid-stream when not strict).
    Established,
    /// TCP: one side sent FIN.
    FinWait,
    /// TCP: the other side acknowledged the first FIN and may still send.
    CloseWait,
    /// TCP: both sides sent FIN; waiting for the last ACK.
    LastAck,
    /// TCP: both FINs acknowledged.
    TimeWait,
    /// TCP: reset.
    Close,
    /// UDP, ICMP, others: packets seen one way only.
    Unreplied,
    /// UDP, ICMP, others: packets seen both ways.
    Replied,
}

/// What [`Conntrack::track`] made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The packet fits the connection; state, counters and `last_seen` were updated.
    Valid,
    /// The packet is the originator's SYN on the tuples of a closing or closed TCP connection
    /// (a client reusing its port): a new connection. The entry was started over as if
    /// inserted for it (state `SynSent`, age and counters from this packet, unassured).
    /// It is still the old connection's entry, with the old translation: the caller treats
    /// the packet as a new connection's first (NetworkPolicy judges it under the policy in
    /// force now; the service proxy forgets the entry and balances afresh), as Linux
    /// conntrack, for a SYN after TIME_WAIT or a reset, kills the old entry and looks the
    /// packet up again as NEW.
    Reopened,
    /// The packet does not fit the connection's state (for example a first TCP packet without
    /// SYN when strict, or flags no TCP stack sends); nothing was updated. Count and drop.
    Invalid,
    /// The id no longer names a live entry (removed or reclaimed since it was looked up).
    Stale,
}

/// What [`Conntrack::lookup_track_v4`] found and did: the entry, the packet's direction on
/// it, the verdict of tracking the packet, and the entry's caller value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The entry.
    pub id: EntryId,
    /// Which of the entry's tuples the packet has.
    pub dir: Direction,
    /// [`Verdict::Valid`], [`Verdict::Reopened`] or [`Verdict::Invalid`] (never `Stale`: the
    /// entry was just found).
    pub verdict: Verdict,
    /// The entry's caller value ([`ConnEntry::user`]).
    pub user: u32,
}

/// Why an insert failed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ConntrackError {
    /// The table is at capacity and nothing could be reclaimed.
    #[error("conntrack table full")]
    Full,
    /// One of the tuples already belongs to a live connection.
    #[error("tuple already tracked")]
    Exists,
}

/// Timeouts per state, in nanoseconds of idleness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN sent, no answer yet.
    pub syn_sent: Nanos,
    /// TCP SYN-ACK seen.
    pub syn_received: Nanos,
    /// TCP established.
    pub established: Nanos,
    /// TCP first FIN seen.
    pub fin_wait: Nanos,
    /// TCP first FIN acknowledged.
    pub close_wait: Nanos,
    /// TCP both FINs seen.
    pub last_ack: Nanos,
    /// TCP both FINs acknowledged.
    pub time_wait: Nanos,
    /// TCP reset, and TCP entries inserted but never validly tracked.
    pub close: Nanos,
    /// UDP seen one way.
    pub udp_unreplied: Nanos,
    /// UDP seen both ways.
    pub udp_replied: Nanos,
    /// ICMP and ICMPv6 (echo).
    pub icmp: Nanos,
    /// Any other protocol.
    pub generic: Nanos,
}

impl Default for Timeouts {
    /// Linux `nf_conntrack` defaults, with the established and close-wait values kube-proxy
    /// sets (`--conntrack-tcp-timeout-established` 24 h, `-close-wait` 1 h).
    fn default() -> Self {
        Self {
            syn_sent: 120 * SECOND,
            syn_received: 60 * SECOND,
            established: 86_400 * SECOND,
            fin_wait: 120 * SECOND,
            close_wait: 3_600 * SECOND,
            last_ack: 30 * SECOND,
            time_wait: 120 * SECOND,
            close: 10 * SECOND,
            udp_unreplied: 30 * SECOND,
            udp_replied: 120 * SECOND,
            icmp: 30 * SECOND,
            generic: 600 * SECOND,
        }
    }
}

/// How a table is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most connections held; clamped to `1..=MAX_CAPACITY`.
    pub capacity: u32,
    /// Refuse TCP connections whose first packet is not a SYN. Off by default, like Linux's
    /// `nf_conntrack_tcp_loose`, so flows survive an agent restart.
    pub tcp_strict: bool,
    /// Idle timeouts per state.
    pub timeouts: Timeouts,
    /// Hash seed. Give each node a random one so remote hosts cannot aim tuples at one bucket.
    pub seed: u64,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            capacity: 262_144,
            tcp_strict: false,
            timeouts: Timeouts::default(),
            seed: 0x5357_4954_4348_5944,
        }
    }
}

/// Names one entry. Ids of removed entries go stale rather than naming a later entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryId {
    index: u32,
    /// Never zero, so that `Option<EntryId>` takes no more room than an id (it is in every
    /// packet's `Meta`).
    generation: NonZeroU32,
}

/// One tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEntry {
    /// The tuple of the first packet, as it arrived.
    pub original: FlowKey,
    /// The tuple answers arrive with (after NAT, not simply `original.reversed()`).
    pub reply: FlowKey,
    /// When the last valid packet was tracked.
    pub last_seen: Nanos,
    /// When the entry was inserted (or a closed TCP connection reopened).
    pub created: Nanos,
    /// Packets per direction, indexed by [`Direction::index`].
    pub packets: [u64; 2],
    /// Bytes per direction, indexed by [`Direction::index`].
    pub bytes: [u64; 2],
    /// Caller's value, e.g. the chosen backend.
    pub user: u32,
    /// Caller's mark.
    pub mark: u32,
    /// Where the connection stands.
    pub state: ConnState,
    /// Traffic seen both ways (TCP: and established). Assured entries are never evicted to
    /// make room, only expired or removed.
    pub assured: bool,
}

impl ConnEntry {
    /// The tuple packets in direction `dir` carry.
    pub const fn key(&self, dir: Direction) -> &FlowKey {
        match dir {
            Direction::Original => &self.original,
            Direction::Reply => &self.reply,
        }
    }
}

/// Event counters, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Entries inserted.
    pub inserts: u64,
    /// Entries removed by [`Conntrack::remove`] or [`Conntrack::flush_matching`].
    pub removals: u64,
    /// Unexpired entries evicted to make room.
    pub evictions: u64,
    /// Entries removed because their timeout passed.
    pub expirations: u64,
    /// Inserts refused because the table was full.
    pub full_drops: u64,
    /// Inserts refused because a tuple was already tracked.
    pub clashes: u64,
    /// Packets [`Conntrack::track`] judged invalid.
    pub invalid: u64,
}

const NIL: u32 = u32::MAX;

/// A slab slot: the entry plus bookkeeping the caller never sees.
#[derive(Clone, Copy, Debug)]
struct Slot {
    entry: ConnEntry,
    generation: NonZeroU32,
    /// Free list (free slots) or unassured FIFO (live unassured entries).
    prev: u32,
    next: u32,
    live: bool,
    /// TCP: the side that sent the first FIN, which tells retransmissions from answers.
    closer: Direction,
    /// The connection's Service backend is no longer a serving endpoint
    /// ([`Conntrack::set_backend_gone`]): a client's SYN on it, established, is a new
    /// connection.
    backend_gone: bool,
    /// How packets of each direction are translated, indexed by [`Direction::index`]: a
    /// function of the two tuples, worked out once at insert so that the per-packet rewrite
    /// is a few stores and two checksum additions.
    nat: [Translation; 2],
    /// The idle timeout of the entry's state ([`timeout`]), kept with the state so that the
    /// expiry check of every lookup is one addition.
    timeout: Nanos,
}

impl Slot {
    /// When the entry expires if no packet comes.
    #[inline]
    fn deadline(&self) -> Nanos {
        self.entry.last_seen.saturating_add(self.timeout)
    }

    /// True if a valid packet with `tcp_flags` leaves the state as it is, as most do: an ACK
    /// (PSH, URG and the ECN bits aside) on an established TCP connection, whatever its
    /// direction, or a datagram on a replied flow. Only the counters and the time move.
    #[inline]
    fn steady(&self, tcp_flags: Option<u8>) -> bool {
        let entry = &self.entry;
        match entry.state {
            ConnState::Established => {
                entry.original.proto == PROTO_TCP
                    && tcp_flags.is_some_and(|f| f & (FIN | SYN | RST | ACK) == ACK)
            }
            ConnState::Replied => entry.original.proto != PROTO_TCP,
            _ => false,
        }
    }

    /// Counts a valid packet (the state already moved) and assures the entry if it now
    /// qualifies; true if it just did (the caller takes it off the unassured list).
    #[inline(always)]
    fn count(&mut self, dir: Direction, len: u32, now: Nanos) -> bool {
        let entry = &mut self.entry;
        entry.last_seen = now;
        let d = dir.index();
        entry.packets[d] = entry.packets[d].wrapping_add(1);
        entry.bytes[d] = entry.bytes[d].wrapping_add(u64::from(len));
        let assure =
            !entry.assured && entry.packets[Direction::Reply.index()] > 0 && assurable(entry.state);
        entry.assured |= assure;
        assure
    }

    /// What [`Conntrack::lookup_track_v4`] tells of this slot, slab slot `index`.
    #[inline(always)]
    fn tracked(&self, index: usize, dir: Direction, verdict: Verdict) -> Tracked {
        Tracked {
            id: EntryId {
                index: index as u32,
                generation: self.generation,
            },
            dir,
            verdict,
            user: self.entry.user,
        }
    }
}

/// The per-worker connection table. See the module documentation.
#[derive(Debug)]
pub struct Conntrack {
    config: ConntrackConfig,
    slots: Vec<Slot>,
    free: u32,
    /// Oldest and newest live unassured entries (eviction candidates, oldest first).
    unassured_head: u32,
    unassured_tail: u32,
    len: u32,
    /// Where the next [`Conntrack::expire`] sweep resumes.
    cursor: usize,
    index: Index,
    hasher: FlowHasher,
    counters: Counters,
    /// With several workers: the directory of every worker's tuples, and this worker's
    /// number ([`Conntrack::share`]).
    shared: Option<(Arc<FlowDirectory>, u16)>,
}

/// Slots an insert into a full table inspects for an expired entry before evicting.
const RECLAIM_SCAN: usize = 8;

impl Conntrack {
    /// An empty table. The index is allocated now for the whole capacity; the slab reserves
    /// its address space now and is touched (committed) as it fills.
    pub fn new(config: ConntrackConfig) -> Self {
        let capacity = config.capacity.clamp(1, MAX_CAPACITY);
        let config = ConntrackConfig { capacity, ..config };
        Self {
            config,
            slots: Vec::with_capacity(capacity as usize),
            free: NIL,
            unassured_head: NIL,
            unassured_tail: NIL,
            len: 0,
            cursor: 0,
            index: Index::new(2 * capacity as usize),
            hasher: FlowHasher::new(config.seed),
            counters: Counters::default(),
            shared: None,
        }
    }

    /// Makes this the table of worker `worker` among several sharing `directory`: entries
    /// claim their tuples there when inserted (a tuple another worker tracks is a clash) and
    /// give them back when they go.
    pub fn share(&mut self, directory: Arc<FlowDirectory>, worker: u16) {
        self.shared = Some((directory, worker));
    }

    /// True when the table is one of several ([`Conntrack::share`]).
    #[inline]
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// For a packet with tuple `key` that this table does not track (live): the worker that
    /// does, if it is another one.
    pub fn owner_elsewhere(&self, key: &FlowKey, now: Nanos) -> Option<u16> {
        let (directory, me) = self.shared.as_ref()?;
        let hash = self.hasher.hash(key);
        if self
            .find(hash, key)
            .is_some_and(|(index, _)| !self.expired(index, now))
        {
            return None;
        }
        directory.owner(key).filter(|owner| owner != me)
    }

    /// True when no live entry here, nor any other worker's, has tuple `key`: a new
    /// connection may take it (e.g. as its reply tuple).
    pub fn tuple_free(&mut self, key: &FlowKey, now: Nanos) -> bool {
        if self.lookup(key, now).is_some() {
            return false;
        }
        match &self.shared {
            Some((directory, me)) => directory.owner(key).is_none_or(|owner| owner == *me),
            None => true,
        }
    }

    /// The configuration in force (capacity clamped).
    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    /// Live entries (some may have expired without being noticed yet).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// No live entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Event counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes the table occupies when full: slab plus index.
    pub fn memory_bytes(&self) -> usize {
        self.config.capacity as usize * std::mem::size_of::<Slot>() + self.index.memory_bytes()
    }

    /// The entry tracking `key`, and which of its tuples `key` is. Updates nothing, except
    /// that an entry found expired is removed (counted as an expiration) and not returned.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: Nanos) -> Option<(EntryId, Direction)> {
        self.lookup_hashed(self.hasher.hash(key), key, now)
    }

    #[inline]
    fn lookup_hashed(
        &mut self,
        hash: u64,
        key: &FlowKey,
        now: Nanos,
    ) -> Option<(EntryId, Direction)> {
        let (index, dir) = self.find(hash, key)?;
        if self.expired(index, now) {
            self.release(index);
            self.counters.expirations += 1;
            return None;
        }
        Some((self.id_of(index), dir))
    }

    /// [`Conntrack::lookup`], [`Conntrack::track`] and the parts of [`Conntrack::get`] that
    /// forwarding needs, in one call and one hash, for an IPv4 packet: the fast path of an
    /// established flow. With the result comes how the packet is to be translated (worked
    /// out when the entry was inserted). `None` (nothing updated but the removal of an
    /// expired entry) when no live entry tracks `key`.
    #[inline]
    pub fn lookup_track_v4(
        &mut self,
        key: &FlowKeyV4,
        tcp_flags: Option<u8>,
        len: u32,
        now: Nanos,
    ) -> Option<(Tracked, &Translation)> {
        let hash = self.hasher.hash_v4(key);
        let slots = &self.slots;
        let found = self.index.find(hash, |r| {
            let (index, dir) = slab_unref(r);
            slots
                .get(index)
                .is_some_and(|s| key.matches(s.entry.key(dir)))
        })?;
        let (index, dir) = slab_unref(found);
        let slot = &mut self.slots[index];
        if now >= slot.deadline() {
            self.release(index);
            self.counters.expirations += 1;
            return None;
        }
        let verdict = if slot.steady(tcp_flags) {
            // `track_slot`, with the slot at hand.
            if slot.count(dir, len, now) {
                self.unlink_unassured(index);
            }
            Verdict::Valid
        } else {
            self.track_transition(index, dir, tcp_flags, len, now)
        };
        let slot = &self.slots[index];
        Some((slot.tracked(index, dir, verdict), &slot.nat[dir.index()]))
    }

    /// [`Conntrack::lookup`] for a vector of keys: `out[i]` answers `keys[i]` (extra elements
    /// of either slice are left alone).
    ///
    /// Faster per key than one lookup at a time on a table bigger than the caches: the keys
    /// go through in groups, first hashing each and reading its index bucket, then reading
    /// each candidate entry, then resolving. The reads of one pass do not depend on each
    /// other, so their cache misses overlap instead of queueing (VPP's vector discipline;
    /// safe Rust has no prefetch instruction, so plain reads stand in for it).
    pub fn lookup_batch(
        &mut self,
        keys: &[FlowKey],
        now: Nanos,
        out: &mut [Option<(EntryId, Direction)>],
    ) {
        const GROUP: usize = 16;
        for (keys, out) in keys.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            let mut hashes = [0u64; GROUP];
            let mut touched = 0;
            for (hash, key) in hashes.iter_mut().zip(keys) {
                *hash = self.hasher.hash(key);
                touched ^= self.index.first_bucket(*hash).0[0];
            }
            for &hash in &hashes[..keys.len()] {
                // The first tag match is almost always the entry; only its line is wanted.
                if let Some(r) = self.index.find(hash, |_| true) {
                    let (index, _) = slab_unref(r);
                    touched ^= self.slots.get(index).map_or(0, |s| s.entry.last_seen);
                }
            }
            std::hint::black_box(touched);
            for ((key, &hash), out) in keys.iter().zip(&hashes).zip(out) {
                *out = self.lookup_hashed(hash, key, now);
            }
        }
    }

    /// [`Conntrack::lookup`] for an ICMP error quoting a packet with key `quoted`.
    pub fn lookup_icmp_error(
        &mut self,
        quoted: &FlowKey,
        now: Nanos,
    ) -> Option<(EntryId, Direction)> {
        self.lookup(&FlowKey::for_icmp_error(quoted), now)
    }

    /// The entry `id` names, if it is still live.
    pub fn get(&self, id: EntryId) -> Option<&ConnEntry> {
        self.live_slot(id).map(|i| &self.slots[i].entry)
    }

    /// When entry `id` expires if no packet comes.
    pub fn expires_at(&self, id: EntryId) -> Option<Nanos> {
        self.live_slot(id).map(|i| self.deadline(i))
    }

    /// Sets the caller's value of entry `id`; false if `id` is stale.
    pub fn set_user(&mut self, id: EntryId, user: u32) -> bool {
        self.live_slot(id)
            .map(|i| self.slots[i].entry.user = user)
            .is_some()
    }

    /// Sets the translation [`Conntrack::lookup_track_v4`] hands back for packets of entry
    /// `id` travelling `dir` (made from its tuples at insertion); false if `id` is stale. A
    /// caller that keeps its own meaning for an entry's packets sets
    /// [`Translation::General`] to be sent off the short path with them.
    pub fn set_translation(&mut self, id: EntryId, dir: Direction, t: Translation) -> bool {
        self.live_slot(id)
            .map(|i| self.slots[i].nat[dir.index()] = t)
            .is_some()
    }

    /// Sets the mark of entry `id`; false if `id` is stale.
    pub fn set_mark(&mut self, id: EntryId, mark: u32) -> bool {
        self.live_slot(id)
            .map(|i| self.slots[i].entry.mark = mark)
            .is_some()
    }

    /// Accounts a packet of `len` bytes travelling in `dir` on entry `id`: moves the state,
    /// adds to the counters, refreshes `last_seen`. `tcp_flags` is the TCP header's flag byte
    /// (required for TCP, ignored otherwise). An invalid packet changes nothing.
    #[inline]
    pub fn track(
        &mut self,
        id: EntryId,
        dir: Direction,
        tcp_flags: Option<u8>,
        len: u32,
        now: Nanos,
    ) -> Verdict {
        match self.live_slot(id) {
            Some(index) => self.track_slot(index, dir, tcp_flags, len, now),
            None => Verdict::Stale,
        }
    }

    /// [`Conntrack::track`] of the live entry in slab slot `index`.
    #[inline]
    fn track_slot(
        &mut self,
        index: usize,
        dir: Direction,
        tcp_flags: Option<u8>,
        len: u32,
        now: Nanos,
    ) -> Verdict {
        if !self.slots[index].steady(tcp_flags) {
            return self.track_transition(index, dir, tcp_flags, len, now);
        }
        if self.slots[index].count(dir, len, now) {
            self.unlink_unassured(index);
        }
        Verdict::Valid
    }

    /// [`Conntrack::track_slot`] of a packet that may move the state.
    fn track_transition(
        &mut self,
        index: usize,
        dir: Direction,
        tcp_flags: Option<u8>,
        len: u32,
        now: Nanos,
    ) -> Verdict {
        let slot = &self.slots[index];
        let next = if slot.entry.original.proto == PROTO_TCP {
            tcp_flags.and_then(|flags| {
                tcp_next(
                    slot.entry.state,
                    slot.closer,
                    dir,
                    flags,
                    self.config.tcp_strict,
                )
            })
        } else {
            Some((datagram_next(slot.entry.state, dir), slot.closer))
        };
        let Some((mut state, closer)) = next else {
            self.counters.invalid += 1;
            return Verdict::Invalid;
        };
        // A client's SYN on an established connection whose backend has left its Service: a
        // new connection reusing the tuple, not a late retransmission for a backend that is
        // gone (which would take it until the entry's established timeout ran out; Linux
        // lets such a flow die within minutes, its retransmissions unanswered).
        if slot.backend_gone
            && slot.entry.state == ConnState::Established
            && dir == Direction::Original
            && tcp_flags.and_then(tcp_event) == Some(TcpEvent::Syn)
        {
            state = ConnState::SynSent;
        }
        let reopened = reopens(slot.entry.state, state);
        if reopened {
            // A new connection on the same tuples: start it over, evictable again.
            self.slots[index].backend_gone = false;
            let entry = &mut self.slots[index].entry;
            entry.created = now;
            entry.packets = [0; 2];
            entry.bytes = [0; 2];
            if entry.assured {
                entry.assured = false;
                self.link_unassured(index);
            }
        }
        let slot = &mut self.slots[index];
        slot.closer = closer;
        slot.entry.state = state;
        slot.timeout = timeout(&self.config.timeouts, &slot.entry);
        if slot.count(dir, len, now) {
            self.unlink_unassured(index);
        }
        if reopened {
            Verdict::Reopened
        } else {
            Verdict::Valid
        }
    }

    /// Starts tracking a connection whose first packet has tuple `original` and whose answers
    /// will have tuple `reply` (as the NAT layer chose). Tuples held by expired entries are
    /// reclaimed; a live one is [`ConntrackError::Exists`]. When the table is full, an expired
    /// entry (the oldest unassured one, or one near the sweep cursor) is reclaimed, else the
    /// oldest unassured entry is evicted, else the insert fails with [`ConntrackError::Full`].
    pub fn insert(
        &mut self,
        original: FlowKey,
        reply: FlowKey,
        user: u32,
        now: Nanos,
    ) -> Result<EntryId, ConntrackError> {
        let original_hash = self.hasher.hash(&original);
        let symmetric = reply == original;
        let reply_hash = if symmetric {
            original_hash
        } else {
            self.hasher.hash(&reply)
        };
        for (hash, key) in [(original_hash, &original), (reply_hash, &reply)] {
            if let Some((index, _)) = self.find(hash, key) {
                if !self.expired(index, now) {
                    self.counters.clashes += 1;
                    return Err(ConntrackError::Exists);
                }
                self.release(index);
                self.counters.expirations += 1;
            }
        }
        if self.len >= self.config.capacity {
            self.reclaim(now)?;
        }
        if let Some((directory, me)) = &self.shared {
            let claimed = directory.claim(&original, *me).and_then(|()| {
                directory.claim(&reply, *me).inspect_err(|_| {
                    directory.release(&original, *me);
                })
            });
            if claimed.is_err() {
                self.counters.clashes += 1;
                return Err(ConntrackError::Exists);
            }
        }
        let index = self.allocate();
        let placed = self
            .index
            .insert(original_hash, slab_ref(index, Direction::Original));
        let placed = placed
            && (symmetric || {
                let ok = self
                    .index
                    .insert(reply_hash, slab_ref(index, Direction::Reply));
                if !ok {
                    self.index
                        .remove(original_hash, slab_ref(index, Direction::Original));
                }
                ok
            });
        if !placed {
            // The index could not seat the tuples (cuckoo path search gave up): as full.
            if let Some((directory, me)) = &self.shared {
                directory.release(&original, *me);
                directory.release(&reply, *me);
            }
            self.push_free(index);
            self.counters.full_drops += 1;
            return Err(ConntrackError::Full);
        }
        let slot = &mut self.slots[index];
        slot.entry = ConnEntry {
            original,
            reply,
            last_seen: now,
            created: now,
            packets: [0; 2],
            bytes: [0; 2],
            user,
            mark: 0,
            state: ConnState::New,
            assured: false,
        };
        slot.timeout = timeout(&self.config.timeouts, &slot.entry);
        slot.live = true;
        slot.closer = Direction::Original;
        slot.backend_gone = false;
        slot.nat = Translation::pair(&original, &reply);
        self.len += 1;
        self.link_unassured(index);
        self.counters.inserts += 1;
        Ok(self.id_of(index))
    }

    /// Stops tracking entry `id`; returns what it held, or `None` if `id` is stale.
    pub fn remove(&mut self, id: EntryId) -> Option<ConnEntry> {
        let index = self.live_slot(id)?;
        let entry = self.slots[index].entry;
        self.release(index);
        self.counters.removals += 1;
        Some(entry)
    }

    /// Removes expired entries among the next `budget` slab slots (continuing where the last
    /// call stopped, wrapping around), so a worker can call it between vectors and bound the
    /// pause. A budget of at least the slab size sweeps every slot once. Returns how many
    /// entries it removed.
    pub fn expire(&mut self, now: Nanos, budget: usize) -> usize {
        let mut removed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            let index = self.advance_cursor();
            if self.slots[index].live && self.expired(index, now) {
                self.release(index);
                removed += 1;
            }
        }
        self.counters.expirations += removed as u64;
        removed
    }

    /// Removes every entry `matches` accepts (e.g. all flows to a removed backend) and returns
    /// how many. Walks the whole slab: a control-plane event, not a per-packet call.
    pub fn flush_matching(&mut self, mut matches: impl FnMut(&ConnEntry) -> bool) -> usize {
        let mut removed = 0;
        for index in 0..self.slots.len() {
            if self.slots[index].live && matches(&self.slots[index].entry) {
                self.release(index);
                removed += 1;
            }
        }
        self.counters.removals += removed as u64;
        removed
    }

    /// Marks each live TCP entry by whether `gone` says its Service backend has left (no
    /// longer a serving endpoint of its Service port): a client's SYN on an established
    /// connection so marked is [`Verdict::Reopened`], a new connection (the service proxy
    /// balances it afresh), where otherwise it passes on the old entry as a late
    /// retransmission. The connection's other packets are untouched (kube-proxy leaves TCP
    /// connections to departed endpoints alone). Returns how many are marked.
    pub fn set_backend_gone(&mut self, mut gone: impl FnMut(&ConnEntry) -> bool) -> usize {
        let mut marked = 0;
        for slot in self.slots.iter_mut().filter(|s| s.live) {
            slot.backend_gone = slot.entry.original.proto == PROTO_TCP && gone(&slot.entry);
            marked += usize::from(slot.backend_gone);
        }
        marked
    }

    /// Every live entry, in slab order (for `show conntrack`).
    pub fn iter(&self) -> impl Iterator<Item = (EntryId, &ConnEntry)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.live)
            .map(|(index, slot)| (self.id_of(index), &slot.entry))
    }

    #[inline]
    fn find(&self, hash: u64, key: &FlowKey) -> Option<(usize, Direction)> {
        let slots = &self.slots;
        let found = self.index.find(hash, |r| {
            let (index, dir) = slab_unref(r);
            slots.get(index).is_some_and(|s| s.entry.key(dir) == key)
        })?;
        Some(slab_unref(found))
    }

    fn id_of(&self, index: usize) -> EntryId {
        EntryId {
            index: index as u32,
            generation: self.slots[index].generation,
        }
    }

    #[inline]
    fn live_slot(&self, id: EntryId) -> Option<usize> {
        let index = id.index as usize;
        let slot = self.slots.get(index)?;
        (slot.live && slot.generation == id.generation).then_some(index)
    }

    #[inline]
    fn deadline(&self, index: usize) -> Nanos {
        self.slots[index].deadline()
    }

    #[inline]
    fn expired(&self, index: usize, now: Nanos) -> bool {
        now >= self.deadline(index)
    }

    fn advance_cursor(&mut self) -> usize {
        if self.cursor >= self.slots.len() {
            self.cursor = 0;
        }
        let index = self.cursor;
        self.cursor += 1;
        index
    }

    /// Makes room for one entry in a full table, or fails with `Full`.
    fn reclaim(&mut self, now: Nanos) -> Result<(), ConntrackError> {
        let oldest = self.unassured_head;
        if oldest != NIL && self.expired(oldest as usize, now) {
            self.release(oldest as usize);
            self.counters.expirations += 1;
            return Ok(());
        }
        for _ in 0..RECLAIM_SCAN.min(self.slots.len()) {
            let index = self.advance_cursor();
            if self.slots[index].live && self.expired(index, now) {
                self.release(index);
                self.counters.expirations += 1;
                return Ok(());
            }
        }
        if oldest != NIL {
            self.release(oldest as usize);
            self.counters.evictions += 1;
            return Ok(());
        }
        self.counters.full_drops += 1;
        Err(ConntrackError::Full)
    }

    /// A free slab slot, reusing freed ones first. The caller has checked `len < capacity`.
    fn allocate(&mut self) -> usize {
        if self.free != NIL {
            let index = self.free as usize;
            self.free = self.slots[index].next;
            return index;
        }
        self.slots.push(Slot {
            entry: ConnEntry {
                original: EMPTY_KEY,
                reply: EMPTY_KEY,
                last_seen: 0,
                created: 0,
                packets: [0; 2],
                bytes: [0; 2],
                user: 0,
                mark: 0,
                state: ConnState::New,
                assured: false,
            },
            generation: NonZeroU32::MIN,
            prev: NIL,
            next: NIL,
            live: false,
            closer: Direction::Original,
            backend_gone: false,
            nat: [Translation::None; 2],
            timeout: 0,
        });
        self.slots.len() - 1
    }

    fn push_free(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.live = false;
        slot.generation = slot.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
        slot.next = self.free;
        self.free = index as u32;
    }

    /// Drops a live entry from the index and the lists and frees its slot.
    fn release(&mut self, index: usize) {
        let entry = self.slots[index].entry;
        if let Some((directory, me)) = &self.shared {
            directory.release(&entry.original, *me);
            directory.release(&entry.reply, *me);
        }
        self.index.remove(
            self.hasher.hash(&entry.original),
            slab_ref(index, Direction::Original),
        );
        if entry.reply != entry.original {
            self.index.remove(
                self.hasher.hash(&entry.reply),
                slab_ref(index, Direction::Reply),
            );
        }
        if !entry.assured {
            self.unlink_unassured(index);
        }
        self.len -= 1;
        self.push_free(index);
    }

    fn link_unassured(&mut self, index: usize) {
        let tail = self.unassured_tail;
        self.slots[index].prev = tail;
        self.slots[index].next = NIL;
        if tail == NIL {
            self.unassured_head = index as u32;
        } else {
            self.slots[tail as usize].next = index as u32;
        }
        self.unassured_tail = index as u32;
    }

    fn unlink_unassured(&mut self, index: usize) {
        let Slot { prev, next, .. } = self.slots[index];
        if prev == NIL {
            self.unassured_head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.unassured_tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }
}

const EMPTY_KEY: FlowKey = FlowKey::new(
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    0,
    0,
    0,
);

/// The idle timeout of `entry` in its current state.
#[inline]
fn timeout(t: &Timeouts, entry: &ConnEntry) -> Nanos {
    let proto = entry.original.proto;
    match entry.state {
        ConnState::SynSent => t.syn_sent,
        ConnState::SynReceived => t.syn_received,
        ConnState::Established => t.established,
        ConnState::FinWait => t.fin_wait,
        ConnState::CloseWait => t.close_wait,
        ConnState::LastAck => t.last_ack,
        ConnState::TimeWait => t.time_wait,
        ConnState::Close => t.close,
        ConnState::New if proto == PROTO_TCP => t.close,
        ConnState::New | ConnState::Unreplied | ConnState::Replied => match proto {
            PROTO_UDP if entry.state == ConnState::Replied => t.udp_replied,
            PROTO_UDP => t.udp_unreplied,
            PROTO_ICMP | PROTO_ICMPV6 => t.icmp,
            _ => t.generic,
        },
    }
}

/// States in which a connection that has answered becomes assured.
fn assurable(state: ConnState) -> bool {
    !matches!(
        state,
        ConnState::New | ConnState::SynSent | ConnState::SynReceived | ConnState::Close
    )
}

/// UDP, ICMP and other protocols: replied once anything came back.
fn datagram_next(state: ConnState, dir: Direction) -> ConnState {
    match (state, dir) {
        (ConnState::Replied, _) | (_, Direction::Reply) => ConnState::Replied,
        _ => ConnState::Unreplied,
    }
}

/// What a TCP segment's flags mean to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpEvent {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
}

/// Classifies flags the way Linux's `tcp_valid_flags` does (PSH and the ECN bits ignored):
/// anything else, e.g. SYN+FIN, a bare FIN or no flags at all, is never sent by a real stack.
fn tcp_event(flags: u8) -> Option<TcpEvent> {
    let urg = flags & URG != 0;
    match (flags & (FIN | SYN | RST | ACK), urg) {
        (SYN, _) => Some(TcpEvent::Syn),
        (f, false) if f == SYN | ACK => Some(TcpEvent::SynAck),
        (RST, false) => Some(TcpEvent::Rst),
        (f, false) if f == RST | ACK => Some(TcpEvent::Rst),
        (f, _) if f == FIN | ACK => Some(TcpEvent::Fin),
        (ACK, _) => Some(TcpEvent::Ack),
        _ => None,
    }
}

/// The TCP state after a segment with `flags` in direction `dir`, and the side that sent the
/// first FIN; `None` if the segment does not fit. Without sequence tracking, the first
/// closer is what tells a retransmitted FIN from the other side's FIN.
fn tcp_next(
    state: ConnState,
    closer: Direction,
    dir: Direction,
    flags: u8,
    strict: bool,
) -> Option<(ConnState, Direction)> {
    use ConnState::*;
    use Direction::{Original, Reply};
    use TcpEvent::*;
    let event = tcp_event(flags)?;
    let same = dir == closer;
    let next = match (state, event, dir) {
        // A SYN from the client on a closing or closed connection is a new connection on the
        // same tuples: a client reusing its port before the old close was fully seen.
        (New | SynSent | FinWait | CloseWait | LastAck | TimeWait | Close, Syn, Original) => {
            SynSent
        }
        // A SYN on an established connection (a late retransmission, or a reuse after a close
        // we did not see) passes and changes nothing, as Linux conntrack ignores it.
        (Established, Syn, Original) => Established,
        (New, Ack, Original) if !strict => Established,
        (SynSent, SynAck | Syn, Reply) => SynReceived,
        (SynReceived, Syn, Original) | (SynReceived, SynAck, _) => SynReceived,
        (SynReceived, Ack, _) => Established,
        (Established, Ack, _) | (Established, SynAck, Reply) => Established,
        (SynReceived | Established, Fin, _) => return Some((FinWait, dir)),
        (FinWait, Fin, _) if !same => LastAck,
        (FinWait, Ack, _) if !same => CloseWait,
        (FinWait, Fin | Ack, _) => FinWait,
        (CloseWait, Fin, _) if !same => LastAck,
        (CloseWait, Fin | Ack, _) => CloseWait,
        (LastAck, Ack, _) if same => TimeWait,
        (LastAck, Fin | Ack, _) => LastAck,
        (TimeWait, Fin | Ack, _) => TimeWait,
        (Close, Fin | Ack, _) => Close,
        (New, ..) => return None,
        (
            SynSent | SynReceived | Established | FinWait | CloseWait | LastAck | TimeWait,
            Rst,
            _,
        ) => Close,
        (Close, Rst, _) => Close,
        _ => return None,
    };
    Some((next, closer))
}

/// True when going from `from` to `to` starts a new connection on the tuples of a closing or
/// closed one, or of an established one whose backend is gone (its counters and age start
/// over).
fn reopens(from: ConnState, to: ConnState) -> bool {
    use ConnState::*;
    to == SynSent
        && matches!(
            from,
            Established | FinWait | CloseWait | LastAck | TimeWait | Close
        )
}

/// Packs a slab index and direction into a non-zero 32-bit index reference.
#[inline]
fn slab_ref(index: usize, dir: Direction) -> u32 {
    ((index as u32) << 1 | dir as u32) + 1
}

#[inline]
fn slab_unref(r: u32) -> (usize, Direction) {
    let r = r - 1;
    let dir = if r & 1 == 0 {
        Direction::Original
    } else {
        Direction::Reply
    };
    ((r >> 1) as usize, dir)
}

/// A seeded multiply-fold hash of a [`FlowKey`] (the folded multiply of foldhash/wyhash):
/// a few nanoseconds, well mixed in both halves, and unpredictable without the seed.
#[derive(Clone, Copy, Debug)]
struct FlowHasher {
    keys: [u64; 4],
    /// The mix of two addresses' zero high halves (IPv4), worked out once for `hash_v4`.
    zero_high: u64,
}

impl FlowHasher {
    fn new(seed: u64) -> Self {
        // splitmix64 spreads one seed over the keys.
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let keys = [next(), next(), next(), next()];
        Self {
            keys,
            zero_high: fold(keys[2], keys[3]),
        }
    }

    #[inline]
    fn hash(&self, key: &FlowKey) -> u64 {
        let (src_lo, src_hi, src_v4) = address_words(key.src);
        let (dst_lo, dst_hi, dst_v4) = address_words(key.dst);
        let rest = u64::from(key.src_port) << 48
            | u64::from(key.dst_port) << 32
            | u64::from(key.proto) << 8
            | u64::from(src_v4) << 1
            | u64::from(dst_v4);
        self.hash_words([src_lo, src_hi], [dst_lo, dst_hi], rest)
    }

    /// [`FlowHasher::hash`] of `key.to_key()`, without the address-family matches.
    #[inline]
    fn hash_v4(&self, key: &FlowKeyV4) -> u64 {
        let rest = u64::from(key.src_port) << 48
            | u64::from(key.dst_port) << 32
            | u64::from(key.proto) << 8
            | 0b11;
        let low = fold(
            u64::from(key.src) ^ self.keys[0],
            u64::from(key.dst) ^ self.keys[1],
        );
        Self::finish(low, self.zero_high, rest)
    }

    /// The hash of two addresses (low and high 64 bits) and the rest of a key: the low
    /// halves and the high halves are mixed apart (so IPv4's zero high halves can be mixed
    /// once, up front), then together with the rest.
    #[inline(always)]
    fn hash_words(&self, src: [u64; 2], dst: [u64; 2], rest: u64) -> u64 {
        let low = fold(src[0] ^ self.keys[0], dst[0] ^ self.keys[1]);
        let high = fold(src[1] ^ self.keys[2], dst[1] ^ self.keys[3]);
        Self::finish(low, high, rest)
    }

    #[inline(always)]
    fn finish(low: u64, high: u64, rest: u64) -> u64 {
        fold(low ^ rest, high ^ rest.rotate_left(32))
    }
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

#[inline]
fn address_words(address: IpAddr) -> (u64, u64, bool) {
    match address {
        IpAddr::V4(a) => (u64::from(a.to_bits()), 0, true),
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            (bits as u64, (bits >> 64) as u64, false)
        }
    }
}

/// Slots per index bucket: one 64-byte cache line.
const WAYS: usize = 8;

/// One index bucket. A slot is `tag << 32 | slab reference`, or 0 when empty (references
/// are never 0).
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(64))]
struct Bucket([u64; WAYS]);

/// Most buckets one cuckoo path search may visit before an insert gives up.
const MAX_SEARCH: usize = 512;

/// A step of a cuckoo path search: `bucket` was reached by moving slot `slot` of the step
/// `parent` (`usize::MAX` for the key's own two buckets).
#[derive(Clone, Copy, Debug)]
struct Step {
    bucket: usize,
    parent: usize,
    slot: usize,
}

/// Bucketised partial-key cuckoo hash from a key's hash to 32-bit slab references.
#[derive(Debug)]
struct Index {
    buckets: Vec<Bucket>,
    mask: usize,
    /// Reused path-search queue, so inserts do not allocate.
    search: Vec<Step>,
}

impl Index {
    /// Room for `items` at most 80% full: cuckoo tables with 8-way buckets seat items easily
    /// up to about 95%, so inserts stay cheap.
    fn new(items: usize) -> Self {
        let buckets = (items * 5 / 4).div_ceil(WAYS).next_power_of_two().max(2);
        Self {
            buckets: vec![Bucket::default(); buckets],
            mask: buckets - 1,
            search: Vec::with_capacity(MAX_SEARCH),
        }
    }

    fn memory_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>()
    }

    #[inline]
    fn tag(hash: u64) -> u64 {
        hash >> 32
    }

    /// A key's other bucket; never the same one (the offset is odd), and symmetric.
    #[inline]
    fn alternate(&self, bucket: usize, tag: u64) -> usize {
        let offset = (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) as usize;
        bucket ^ ((offset | 1) & self.mask)
    }

    /// The first reference whose tag matches `hash` and that `is_key` confirms.
    #[inline]
    fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = Self::tag(hash);
        let first = hash as usize & self.mask;
        let mut in_bucket = |bucket: &Bucket| {
            bucket
                .0
                .iter()
                .find(|&&slot| slot >> 32 == tag && slot != 0 && is_key(slot as u32))
                .map(|&slot| slot as u32)
        };
        // The second bucket is worked out only when the first does not hold the key.
        in_bucket(&self.buckets[first])
            .or_else(|| in_bucket(&self.buckets[self.alternate(first, tag)]))
    }

    #[inline]
    fn first_bucket(&self, hash: u64) -> &Bucket {
        &self.buckets[hash as usize & self.mask]
    }

    fn remove(&mut self, hash: u64, r: u32) {
        let tag = Self::tag(hash);
        let item = tag << 32 | u64::from(r);
        let first = hash as usize & self.mask;
        for bucket in [first, self.alternate(first, tag)] {
            if let Some(slot) = self.buckets[bucket].0.iter_mut().find(|s| **s == item) {
                *slot = 0;
                return;
            }
        }
    }

    fn empty_slot(&self, bucket: usize) -> Option<usize> {
        self.buckets[bucket].0.iter().position(|&s| s == 0)
    }

    /// Seats `r` under `hash`, moving other items along a cuckoo path if both buckets are
    /// full. False if no path was found.
    fn insert(&mut self, hash: u64, r: u32) -> bool {
        let tag = Self::tag(hash);
        let item = tag << 32 | u64::from(r);
        let first = hash as usize & self.mask;
        let roots = [first, self.alternate(first, tag)];
        for bucket in roots {
            if let Some(slot) = self.empty_slot(bucket) {
                self.buckets[bucket].0[slot] = item;
                return true;
            }
        }
        // A path found by one search can be invalidated by its own earlier moves when it
        // visits a bucket twice; every move is checked, so retrying is safe.
        for _ in 0..3 {
            if let Some((bucket, slot)) = self.make_room(roots) {
                self.buckets[bucket].0[slot] = item;
                return true;
            }
        }
        false
    }

    /// Breadth-first search for a bucket with a free slot reachable from `roots`, then moves
    /// items one step each along the path, last first. Returns the freed root slot.
    fn make_room(&mut self, roots: [usize; 2]) -> Option<(usize, usize)> {
        self.search.clear();
        for bucket in roots {
            self.search.push(Step {
                bucket,
                parent: usize::MAX,
                slot: 0,
            });
        }
        let mut at = 0;
        let (mut end, mut hole) = loop {
            let step = *self.search.get(at)?;
            let mut found = None;
            for slot in 0..WAYS {
                let child = self.alternate(step.bucket, self.buckets[step.bucket].0[slot] >> 32);
                if self.search.len() >= MAX_SEARCH {
                    break;
                }
                self.search.push(Step {
                    bucket: child,
                    parent: at,
                    slot,
                });
                if let Some(free) = self.empty_slot(child) {
                    found = Some((self.search.len() - 1, free));
                    break;
                }
            }
            if let Some(found) = found {
                break found;
            }
            at += 1;
        };
        // Walk back to the root, moving each parent's item into the hole its child left.
        loop {
            let step = self.search[end];
            if step.parent == usize::MAX {
                return Some((step.bucket, hole));
            }
            let from = self.search[step.parent].bucket;
            let item = self.buckets[from].0[step.slot];
            let fits = item != 0
                && self.alternate(from, item >> 32) == step.bucket
                && self.buckets[step.bucket].0[hole] == 0;
            if !fits {
                return None;
            }
            self.buckets[step.bucket].0[hole] = item;
            self.buckets[from].0[step.slot] = 0;
            hole = step.slot;
            end = step.parent;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    const S: Nanos = SECOND;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
    }

    fn tcp(src: u8, sport: u16, dst: u8, dport: u16) -> FlowKey {
        FlowKey::new(v4(src), v4(dst), PROTO_TCP, sport, dport)
    }

    fn udp(src: u8, sport: u16, dst: u8, dport: u16) -> FlowKey {
        FlowKey::new(v4(src), v4(dst), PROTO_UDP, sport, dport)
    }

    fn table(capacity: u32) -> Conntrack {
        Conntrack::new(ConntrackConfig {
            capacity,
            ..ConntrackConfig::default()
        })
    }

    fn state(ct: &Conntrack, id: EntryId) -> ConnState {
        ct.get(id).map_or(ConnState::New, |e| e.state)
    }

    /// A client-to-VIP connection DNATed to a backend: the reply comes from the backend.
    fn dnat_flow() -> (FlowKey, FlowKey) {
        let original = tcp(1, 40_000, 100, 80);
        let reply = tcp(20, 8080, 1, 40_000);
        (original, reply)
    }

    fn handshake(ct: &mut Conntrack, id: EntryId, now: Nanos) {
        use Direction::*;
        assert_eq!(ct.track(id, Original, Some(SYN), 60, now), Verdict::Valid);
        assert_eq!(state(ct, id), ConnState::SynSent);
        assert_eq!(
            ct.track(id, Reply, Some(SYN | ACK), 60, now),
            Verdict::Valid
        );
        assert_eq!(state(ct, id), ConnState::SynReceived);
        assert_eq!(ct.track(id, Original, Some(ACK), 52, now), Verdict::Valid);
        assert_eq!(state(ct, id), ConnState::Established);
    }

    #[test]
    fn three_way_handshake_establishes_and_assures() {
        let mut ct = table(16);
        let (original, reply) = dnat_flow();
        let id = ct.insert(original, reply, 7, 0).unwrap();
        assert!(!ct.get(id).unwrap().assured);
        handshake(&mut ct, id, 5 * S);
        let entry = ct.get(id).unwrap();
        assert!(entry.assured);
        assert_eq!(entry.packets, [2, 1]);
        assert_eq!(entry.bytes, [112, 60]);
        assert_eq!(entry.user, 7);
        assert_eq!(ct.expires_at(id), Some(5 * S + 86_400 * S));
    }

    #[test]
    fn fin_both_ways_reaches_time_wait_then_expires() {
        use Direction::*;
        let mut ct = table(16);
        let (original, reply) = dnat_flow();
        let id = ct.insert(original, reply, 0, 0).unwrap();
        handshake(&mut ct, id, 0);
        assert_eq!(
            ct.track(id, Original, Some(FIN | ACK), 52, S),
            Verdict::Valid
        );
        assert_eq!(state(&ct, id), ConnState::FinWait);
        // A retransmitted FIN from the same side is not the other side's FIN.
        assert_eq!(
            ct.track(id, Original, Some(FIN | ACK), 52, S),
            Verdict::Valid
        );
        assert_eq!(state(&ct, id), ConnState::FinWait);
        assert_eq!(ct.track(id, Reply, Some(ACK), 52, S), Verdict::Valid);
        assert_eq!(state(&ct, id), ConnState::CloseWait);
        assert_eq!(
            ct.track(id, Reply, Some(FIN | ACK | tcp_flags::PSH), 52, S),
            Verdict::Valid
        );
        assert_eq!(state(&ct, id), ConnState::LastAck);
        assert_eq!(ct.track(id, Original, Some(ACK), 52, 2 * S), Verdict::Valid);
        assert_eq!(state(&ct, id), ConnState::TimeWait);
        let end = 2 * S + 120 * S;
        assert_eq!(ct.lookup(&reply, end - 1), Some((id, Reply)));
        assert_eq!(ct.lookup(&original, end), None);
        assert_eq!(ct.len(), 0);
        assert_eq!(ct.counters().expirations, 1);
        assert_eq!(ct.get(id), None);
    }

    #[test]
    fn simultaneous_close_and_reopen_from_time_wait() {
        use Direction::*;
        let mut ct = table(16);
        let (original, reply) = dnat_flow();
        let id = ct.insert(original, reply, 0, 0).unwrap();
        handshake(&mut ct, id, 0);
        ct.track(id, Original, Some(FIN | ACK), 52, 0);
        ct.track(id, Reply, Some(FIN | ACK), 52, 0);
        assert_eq!(state(&ct, id), ConnState::LastAck);
        ct.track(id, Reply, Some(ACK), 52, 0);
        assert_eq!(
            state(&ct, id),
            ConnState::LastAck,
            "the second closer's ACK"
        );
        ct.track(id, Original, Some(ACK), 52, 0);
        assert_eq!(state(&ct, id), ConnState::TimeWait);
        // Port reuse: a new SYN starts the connection over, unassured again, and says so.
        assert_eq!(
            ct.track(id, Original, Some(SYN), 60, 3 * S),
            Verdict::Reopened
        );
        let entry = ct.get(id).unwrap();
        assert_eq!(
            (entry.state, entry.assured, entry.created),
            (ConnState::SynSent, false, 3 * S)
        );
        assert_eq!(entry.packets, [1, 0]);
    }

    /// A SYN on an established connection passes on it (a late retransmission) unless the
    /// connection's backend is marked gone: then it is a new connection on the tuple.
    #[test]
    fn a_syn_on_an_established_connection_to_a_departed_backend_starts_a_new_one() {
        use Direction::*;
        let mut ct = table(16);
        let (original, reply) = dnat_flow();
        let id = ct.insert(original, reply, 7, 0).unwrap();
        handshake(&mut ct, id, 0);
        assert_eq!(ct.track(id, Original, Some(SYN), 60, S), Verdict::Valid);
        assert_eq!(state(&ct, id), ConnState::Established);
        assert_eq!(ct.set_backend_gone(|e| e.user == 7), 1);
        // Its other packets, and the backend's, are the connection's still.
        assert_eq!(ct.track(id, Original, Some(ACK), 52, S), Verdict::Valid);
        assert_eq!(ct.track(id, Reply, Some(SYN | ACK), 60, S), Verdict::Valid);
        assert_eq!(
            ct.track(id, Original, Some(SYN), 60, 2 * S),
            Verdict::Reopened
        );
        assert_eq!(state(&ct, id), ConnState::SynSent);
        // Started over: the mark goes with the old connection.
        handshake(&mut ct, id, 3 * S);
        assert_eq!(ct.track(id, Original, Some(SYN), 60, 4 * S), Verdict::Valid);
        // Unmarked again (the backend serves once more): a SYN passes as before.
        ct.set_backend_gone(|_| true);
        ct.set_backend_gone(|_| false);
        assert_eq!(ct.track(id, Original, Some(SYN), 60, 5 * S), Verdict::Valid);
    }

    #[test]
    fn a_syn_on_a_closing_connection_starts_a_new_one() {
        use Direction::*;
        for closing in [
            &[(Original, FIN | ACK)][..],
            &[(Reply, FIN | ACK)][..],
            &[(Original, FIN | ACK), (Reply, FIN | ACK)][..],
        ] {
            let mut ct = table(16);
            let (original, reply) = dnat_flow();
            let id = ct.insert(original, reply, 0, 0).unwrap();
            handshake(&mut ct, id, 0);
            for &(dir, flags) in closing {
                ct.track(id, dir, Some(flags), 52, 0);
            }
            let before = state(&ct, id);
            assert!(
                matches!(
                    before,
                    ConnState::FinWait | ConnState::CloseWait | ConnState::LastAck
                ),
                "{before:?}"
            );
            // The client reuses its port before the old close was fully seen.
            assert_eq!(
                ct.track(id, Original, Some(SYN), 60, S),
                Verdict::Reopened,
                "from {before:?}"
            );
            let entry = ct.get(id).unwrap();
            assert_eq!(
                (entry.state, entry.assured, entry.created, entry.packets),
                (ConnState::SynSent, false, S, [1, 0]),
                "from {before:?}"
            );
        }
    }

    #[test]
    fn reset_closes_and_expires_after_close_timeout() {
        let mut ct = table(16);
        let (original, reply) = dnat_flow();
        let id = ct.insert(original, reply, 0, 0).unwrap();
        handshake(&mut ct, id, 0);
        assert_eq!(
            ct.track(id, Direction::Reply, Some(RST | ACK), 40, S),
            Verdict::Valid
        );
        assert_eq!(state(&ct, id), ConnState::Close);
        assert_eq!(ct.expires_at(id), Some(11 * S));
        assert_eq!(ct.expire(11 * S, 100), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn invalid_segments_change_nothing() {
        use Direction::*;
        let mut ct = table(16);
        let id = ct.insert(tcp(1, 1, 2, 2), tcp(2, 2, 1, 1), 0, 0).unwrap();
        for flags in [0, FIN, SYN | FIN, SYN | RST, RST, SYN | ACK] {
            assert_eq!(
                ct.track(id, Original, Some(flags), 40, S),
                Verdict::Invalid,
                "{flags:#x}"
            );
        }
        assert_eq!(ct.track(id, Original, None, 40, S), Verdict::Invalid);
        let entry = ct.get(id).unwrap();
        assert_eq!(
            (entry.state, entry.last_seen, entry.packets),
            (ConnState::New, 0, [0, 0])
        );
        assert_eq!(ct.counters().invalid, 7);
        handshake(&mut ct, id, S);
        // A SYN on an established connection is let through and changes nothing (Linux
        // ignores it too); a SYN-ACK from the client is invalid.
        assert_eq!(ct.track(id, Original, Some(SYN), 60, S), Verdict::Valid);
        assert_eq!(state(&ct, id), ConnState::Established);
        assert_eq!(
            ct.track(id, Original, Some(SYN | ACK), 60, S),
            Verdict::Invalid
        );
        assert_eq!(state(&ct, id), ConnState::Established);
    }

    #[test]
    fn strict_refuses_mid_stream_pickup_loose_accepts_unassured() {
        use Direction::*;
        let key = tcp(1, 1, 2, 2);
        let mut strict = Conntrack::new(ConntrackConfig {
            tcp_strict: true,
            ..ConntrackConfig::default()
        });
        let id = strict.insert(key, key.reversed(), 0, 0).unwrap();
        assert_eq!(
            strict.track(id, Original, Some(ACK), 40, 0),
            Verdict::Invalid
        );
        // Never validly tracked: it goes in the short close timeout.
        assert_eq!(strict.expires_at(id), Some(10 * S));

        let mut loose = table(16);
        let id = loose.insert(key, key.reversed(), 0, 0).unwrap();
        assert_eq!(loose.track(id, Original, Some(ACK), 40, 0), Verdict::Valid);
        assert_eq!(state(&loose, id), ConnState::Established);
        assert!(!loose.get(id).unwrap().assured);
        assert_eq!(loose.track(id, Reply, Some(ACK), 40, 0), Verdict::Valid);
        assert!(loose.get(id).unwrap().assured);
    }

    #[test]
    fn udp_timeouts_unreplied_then_replied() {
        use Direction::*;
        let mut ct = table(16);
        let key = udp(1, 5353, 2, 53);
        let id = ct.insert(key, key.reversed(), 0, 0).unwrap();
        ct.track(id, Original, None, 80, 0);
        assert_eq!(state(&ct, id), ConnState::Unreplied);
        assert_eq!(ct.expires_at(id), Some(30 * S));
        ct.track(id, Reply, None, 120, S);
        assert_eq!(state(&ct, id), ConnState::Replied);
        assert!(ct.get(id).unwrap().assured);
        assert_eq!(ct.expires_at(id), Some(121 * S));
        assert!(ct.lookup(&key, 120 * S).is_some());
        assert!(ct.lookup(&key, 121 * S).is_none());

        let lonely = udp(3, 1, 4, 1);
        let id = ct.insert(lonely, lonely.reversed(), 0, 0).unwrap();
        ct.track(id, Original, None, 80, 0);
        assert!(ct.lookup(&lonely, 29 * S).is_some());
        assert!(ct.lookup(&lonely, 30 * S).is_none());
    }

    #[test]
    fn icmp_echo_and_errors() {
        use Direction::*;
        let mut ct = table(16);
        let request = FlowKey::icmp_echo(v4(1), v4(2), 0x1234);
        assert_eq!(request.proto, PROTO_ICMP);
        let reply = FlowKey::icmp_echo(v4(2), v4(1), 0x1234);
        assert_eq!(request.reversed(), reply);
        let id = ct.insert(request, reply, 0, 0).unwrap();
        ct.track(id, Original, None, 84, 0);
        assert_eq!(ct.lookup(&reply, S), Some((id, Reply)));
        assert_eq!(ct.expires_at(id), Some(30 * S));

        let six = FlowKey::icmp_echo(IpAddr::V6(Ipv6Addr::LOCALHOST), v4(9), 1);
        assert_eq!(six.proto, PROTO_ICMP, "family of the destination decides");

        // A router past the backend rejects a DNATed packet: the error quotes the translated
        // tuple and travels back towards the client, so it belongs to the reply direction.
        let (original, nat_reply) = dnat_flow();
        let id = ct.insert(original, nat_reply, 0, 0).unwrap();
        let quoted = nat_reply.reversed();
        assert_eq!(ct.lookup_icmp_error(&quoted, 0), Some((id, Reply)));
        // An error about a reply packet (already un-DNATed) goes the original way.
        assert_eq!(
            ct.lookup_icmp_error(&original.reversed(), 0),
            Some((id, Original))
        );
    }

    #[test]
    fn both_directions_with_nat_rewritten_reply() {
        let mut ct = table(16);
        let (original, reply) = dnat_flow();
        let id = ct.insert(original, reply, 3, 0).unwrap();
        assert_eq!(ct.lookup(&original, 0), Some((id, Direction::Original)));
        assert_eq!(ct.lookup(&reply, 0), Some((id, Direction::Reply)));
        assert_eq!(
            ct.lookup(&original.reversed(), 0),
            None,
            "the VIP never answers"
        );
        // SNAT as well: the backend sees the node's address and a new port.
        let snat_reply = tcp(20, 8080, 250, 61_000);
        let other = tcp(5, 1234, 100, 80);
        let id2 = ct.insert(other, snat_reply, 4, 0).unwrap();
        assert_eq!(ct.lookup(&snat_reply, 0), Some((id2, Direction::Reply)));
        assert_eq!(ct.get(id2).unwrap().key(Direction::Reply), &snat_reply);
        // Either tuple taken by a live entry refuses the insert.
        assert_eq!(
            ct.insert(tcp(9, 9, 9, 9), reply, 0, 0),
            Err(ConntrackError::Exists)
        );
        assert_eq!(
            ct.insert(original, tcp(9, 9, 9, 9), 0, 0),
            Err(ConntrackError::Exists)
        );
        assert_eq!(ct.counters().clashes, 2);
        // A flow to itself has one tuple; it is found as the original direction.
        let me = tcp(1, 7, 1, 7);
        let id3 = ct.insert(me, me, 0, 0).unwrap();
        assert_eq!(ct.lookup(&me, 0), Some((id3, Direction::Original)));
        assert!(ct.remove(id3).is_some());
        assert_eq!(ct.lookup(&me, 0), None);
    }

    #[test]
    fn expired_tuple_is_reclaimed_on_insert() {
        let mut ct = table(16);
        let key = udp(1, 1, 2, 2);
        let old = ct.insert(key, key.reversed(), 0, 0).unwrap();
        assert_eq!(
            ct.insert(key, key.reversed(), 0, S),
            Err(ConntrackError::Exists)
        );
        let new = ct.insert(key, key.reversed(), 0, 31 * S).unwrap();
        assert_ne!(old, new);
        assert_eq!(ct.get(old), None);
        assert_eq!(ct.counters().expirations, 1);
    }

    #[test]
    fn full_table_evicts_oldest_unassured_then_refuses() {
        use Direction::*;
        let mut ct = table(4);
        let ids: Vec<EntryId> = (0..4)
            .map(|i| {
                ct.insert(udp(1, i, 2, 53), udp(2, 53, 1, i), 0, i.into())
                    .unwrap()
            })
            .collect();
        // Entry 0 is assured: entry 1 is the oldest unassured.
        ct.track(ids[0], Reply, None, 1, 5);
        let new = ct
            .insert(udp(1, 10, 2, 53), udp(2, 53, 1, 10), 0, 6)
            .unwrap();
        assert_eq!(ct.get(ids[1]), None);
        assert!(ct.get(ids[0]).is_some());
        assert_eq!(ct.counters().evictions, 1);
        for id in [ids[2], ids[3], new] {
            ct.track(id, Reply, None, 1, 7);
        }
        assert_eq!(
            ct.insert(udp(1, 11, 2, 53), udp(2, 53, 1, 11), 0, 8),
            Err(ConntrackError::Full)
        );
        assert_eq!(ct.counters().full_drops, 1);
        assert_eq!(ct.len(), 4);
        // Once something has expired, it makes room instead.
        let later = 8 + 120 * S;
        assert!(ct
            .insert(udp(1, 11, 2, 53), udp(2, 53, 1, 11), 0, later)
            .is_ok());
        assert_eq!(ct.counters().expirations, 1);
        assert_eq!(ct.counters().evictions, 1);
    }

    #[test]
    fn incremental_expiry_respects_budget() {
        let mut ct = table(256);
        for i in 0..100u16 {
            let key = udp(1, i, 2, 53);
            let id = ct.insert(key, key.reversed(), 0, 0).unwrap();
            ct.track(id, Direction::Original, None, 1, 0);
        }
        let keep = udp(9, 9, 9, 9);
        let kept = ct.insert(keep, keep.reversed(), 0, 20 * S).unwrap();
        assert_eq!(ct.expire(29 * S, 1000), 0);
        let mut removed = 0;
        for _ in 0..10 {
            let now = ct.expire(30 * S, 10);
            assert!(now <= 10);
            removed += now;
        }
        assert_eq!(removed, 100 - ct.len() + 1);
        removed += ct.expire(30 * S, 10);
        assert_eq!(removed, 100);
        assert_eq!(ct.len(), 1);
        assert!(ct.get(kept).is_some());
        assert_eq!(ct.counters().expirations, 100);
    }

    #[test]
    fn flush_matching_removes_flows_of_a_backend() {
        let mut ct = table(64);
        for i in 0..30u16 {
            let backend = u32::from(i % 3);
            ct.insert(tcp(1, i, 100, 80), tcp(20, 80, 1, i), backend, 0)
                .unwrap();
        }
        assert_eq!(ct.flush_matching(|e| e.user == 1), 10);
        assert_eq!(ct.len(), 20);
        assert!(ct.iter().all(|(_, e)| e.user != 1));
        assert_eq!(ct.lookup(&tcp(1, 1, 100, 80), 0), None);
        assert!(ct.lookup(&tcp(1, 2, 100, 80), 0).is_some());
        assert_eq!(ct.counters().removals, 10);
    }

    #[test]
    fn stale_ids_are_refused() {
        let mut ct = table(4);
        let key = udp(1, 1, 2, 2);
        let id = ct.insert(key, key.reversed(), 0, 0).unwrap();
        assert!(ct.remove(id).is_some());
        let again = ct.insert(key, key.reversed(), 0, 0).unwrap();
        assert_eq!(ct.get(id), None);
        assert_eq!(ct.remove(id), None);
        assert_eq!(
            ct.track(id, Direction::Original, None, 1, 0),
            Verdict::Stale
        );
        assert!(!ct.set_mark(id, 1));
        assert!(ct.set_mark(again, 9));
        assert_eq!(ct.get(again).unwrap().mark, 9);
        let forged = EntryId {
            index: 1_000,
            generation: NonZeroU32::MIN,
        };
        assert_eq!(
            ct.track(forged, Direction::Reply, Some(0xff), u32::MAX, u64::MAX),
            Verdict::Stale
        );
    }

    #[test]
    fn index_holds_a_full_table_of_many_flows() {
        let n = 50_000u32;
        let mut ct = table(n);
        let key = |i: u32| {
            FlowKey::new(
                IpAddr::V4(Ipv4Addr::from_bits(0xc612_0000 | i)),
                v4(1),
                PROTO_TCP,
                (i % 60_000) as u16,
                80,
            )
        };
        let reply = |i: u32| key(i).reversed();
        let ids: Vec<EntryId> = (0..n)
            .map(|i| ct.insert(key(i), reply(i), i, 0).unwrap())
            .collect();
        for i in (0..n).step_by(7) {
            assert_eq!(
                ct.lookup(&key(i), 0),
                Some((ids[i as usize], Direction::Original))
            );
            assert_eq!(
                ct.lookup(&reply(i), 0),
                Some((ids[i as usize], Direction::Reply))
            );
        }
        for i in (0..n).step_by(2) {
            ct.remove(ids[i as usize]);
        }
        for i in 0..n {
            assert_eq!(ct.lookup(&key(i), 0).is_some(), i % 2 == 1);
        }
        assert_eq!(ct.counters().evictions, 0);
        assert_eq!(ct.counters().full_drops, 0);
    }

    #[test]
    fn memory_per_entry() {
        let ct = table(1 << 20);
        println!(
            "conntrack: slot {} B, index {} B/entry, {} B/entry at capacity",
            std::mem::size_of::<Slot>(),
            ct.index.memory_bytes() / (1 << 20),
            ct.memory_bytes() / (1 << 20)
        );
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }

    proptest! {
        /// The IPv4 hash is the general hash of the same tuple, so both paths find the same
        /// index buckets.
        #[test]
        fn ipv4_hash_is_the_general_hash(
            seed in any::<u64>(), src in any::<u32>(), dst in any::<u32>(),
            proto in any::<u8>(), src_port in any::<u16>(), dst_port in any::<u16>(),
        ) {
            let hasher = FlowHasher::new(seed);
            let key = FlowKeyV4 { src, dst, proto, src_port, dst_port };
            prop_assert_eq!(hasher.hash_v4(&key), hasher.hash(&key.to_key()));
        }
    }

    /// The slow reference: a map of tuples to ids and a map of ids to entries, plus the
    /// unassured entries in insertion order.
    #[derive(Default)]
    struct Model {
        entries: HashMap<EntryId, (ConnEntry, Direction)>,
        keys: HashMap<FlowKey, (EntryId, Direction)>,
        unassured: Vec<EntryId>,
        counters: Counters,
    }

    impl Model {
        fn expired(&self, id: EntryId, now: Nanos) -> bool {
            let (entry, _) = &self.entries[&id];
            now >= entry
                .last_seen
                .saturating_add(timeout(&Timeouts::default(), entry))
        }

        fn drop_entry(&mut self, id: EntryId) -> ConnEntry {
            let (entry, _) = self.entries.remove(&id).unwrap();
            self.keys.remove(&entry.original);
            self.keys.remove(&entry.reply);
            self.unassured.retain(|&u| u != id);
            entry
        }

        fn lookup(&mut self, key: &FlowKey, now: Nanos) -> Option<(EntryId, Direction)> {
            let (id, dir) = *self.keys.get(key)?;
            if self.expired(id, now) {
                self.drop_entry(id);
                self.counters.expirations += 1;
                return None;
            }
            Some((id, dir))
        }

        fn track(
            &mut self,
            id: EntryId,
            dir: Direction,
            flags: Option<u8>,
            len: u32,
            now: Nanos,
        ) -> Verdict {
            let Some((entry, closer)) = self.entries.get_mut(&id) else {
                return Verdict::Stale;
            };
            let next = if entry.original.proto == PROTO_TCP {
                flags.and_then(|f| tcp_next(entry.state, *closer, dir, f, false))
            } else {
                Some((datagram_next(entry.state, dir), *closer))
            };
            let Some((state, new_closer)) = next else {
                self.counters.invalid += 1;
                return Verdict::Invalid;
            };
            let reopened = reopens(entry.state, state);
            if reopened {
                entry.created = now;
                entry.packets = [0; 2];
                entry.bytes = [0; 2];
                if entry.assured {
                    entry.assured = false;
                    self.unassured.push(id);
                }
            }
            *closer = new_closer;
            entry.state = state;
            entry.last_seen = now;
            entry.packets[dir.index()] += 1;
            entry.bytes[dir.index()] += u64::from(len);
            if !entry.assured && entry.packets[1] > 0 && assurable(state) {
                entry.assured = true;
                self.unassured.retain(|&u| u != id);
            }
            if reopened {
                Verdict::Reopened
            } else {
                Verdict::Valid
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert {
            original: FlowKey,
            reply: FlowKey,
            user: u32,
        },
        Lookup(FlowKey),
        /// `lookup_track_v4`, against the model's lookup, track and entry.
        LookupTrack {
            key: FlowKey,
            flags: Option<u8>,
            len: u32,
        },
        Track {
            pick: usize,
            dir: bool,
            flags: Option<u8>,
            len: u32,
        },
        /// A whole conversation (handshake, data, close from the original side) on one entry,
        /// which random flags alone rarely produce.
        Converse(usize),
        Remove(usize),
        Expire(usize),
        Flush(u32),
    }

    fn key_strategy() -> impl Strategy<Value = FlowKey> {
        let addr = prop_oneof![
            (1u8..4).prop_map(v4),
            Just(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
        ];
        let proto = prop_oneof![
            Just(PROTO_TCP),
            Just(PROTO_UDP),
            Just(PROTO_ICMP),
            Just(132u8)
        ];
        (addr.clone(), addr, proto, 1u16..4, 1u16..3)
            .prop_map(|(src, dst, proto, sp, dp)| FlowKey::new(src, dst, proto, sp, dp))
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let flags = prop_oneof![
            2 => Just(SYN),
            2 => Just(SYN | ACK),
            3 => Just(ACK),
            3 => Just(FIN | ACK),
            1 => Just(RST),
            1 => any::<u8>(),
        ];
        prop_oneof![
            3 => (key_strategy(), any::<bool>(), 0u8..3, 0u32..3).prop_map(|(original, nat, to, user)| {
                let mut reply = original.reversed();
                if nat {
                    reply.src = IpAddr::V4(Ipv4Addr::new(203, 0, 113, to));
                }
                Op::Insert { original, reply, user }
            }),
            3 => key_strategy().prop_map(Op::Lookup),
            6 => (key_strategy(), any::<bool>(), proptest::option::weighted(0.9, flags.clone()), 0u32..1500)
                .prop_map(|(key, reverse, flags, len)| Op::LookupTrack {
                    // Often the reverse of an inserted original: the reply of an untranslated flow.
                    key: if reverse { key.reversed() } else { key },
                    flags,
                    len,
                }),
            12 => (any::<usize>(), any::<bool>(), proptest::option::weighted(0.9, flags), 0u32..1500)
                .prop_map(|(pick, dir, flags, len)| Op::Track { pick, dir, flags, len }),
            1 => any::<usize>().prop_map(Op::Converse),
            1 => any::<usize>().prop_map(Op::Remove),
            1 => prop_oneof![0usize..6, Just(usize::MAX)].prop_map(Op::Expire),
            1 => (0u32..3).prop_map(Op::Flush),
        ]
    }

    fn check(ct: &Conntrack, model: &Model) {
        assert_eq!(ct.len(), model.entries.len());
        for (&id, (entry, _)) in &model.entries {
            assert_eq!(ct.get(id), Some(entry));
        }
        assert_eq!(ct.counters(), &model.counters);
    }

    /// Entries the model has and the table no longer does.
    fn vanished(ct: &Conntrack, model: &Model) -> Vec<EntryId> {
        model
            .entries
            .keys()
            .copied()
            .filter(|&id| ct.get(id).is_none())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matches_reference_model(
            ops in proptest::collection::vec(
                (op_strategy(), prop_oneof![8 => 0u64..3, 1 => 0u64..300]),
                1..200,
            ),
        ) {
            let capacity = 4;
            let mut ct = table(capacity);
            let mut model = Model::default();
            let mut ids: Vec<EntryId> = Vec::new();
            let mut now = 0;
            for (op, step) in ops {
                now += step * S;
                match op {
                    Op::Insert { original, reply, user } => {
                        // Tuples held by expired entries are reclaimed first, as the table does.
                        let mut clash = false;
                        for key in [original, reply] {
                            if let Some(&(id, _)) = model.keys.get(&key) {
                                if model.expired(id, now) {
                                    model.drop_entry(id);
                                    model.counters.expirations += 1;
                                } else {
                                    clash = true;
                                    break;
                                }
                            }
                        }
                        let got = ct.insert(original, reply, user, now);
                        if clash {
                            prop_assert_eq!(got, Err(ConntrackError::Exists));
                            model.counters.clashes += 1;
                        } else {
                            let full = model.entries.len() >= capacity as usize;
                            let gone = vanished(&ct, &model);
                            if full {
                                // The table's choice: an expired entry, or the oldest unassured.
                                match got {
                                    Ok(_) => {
                                        prop_assert_eq!(gone.len(), 1);
                                        let victim = gone[0];
                                        if model.expired(victim, now) {
                                            model.counters.expirations += 1;
                                        } else {
                                            prop_assert_eq!(Some(&victim), model.unassured.first());
                                            model.counters.evictions += 1;
                                        }
                                        model.drop_entry(victim);
                                    }
                                    Err(e) => {
                                        prop_assert_eq!(e, ConntrackError::Full);
                                        prop_assert!(model.unassured.is_empty());
                                        prop_assert!(gone.is_empty());
                                        model.counters.full_drops += 1;
                                    }
                                }
                            } else {
                                prop_assert!(gone.is_empty());
                            }
                            if let Ok(id) = got {
                                let entry = ConnEntry {
                                    original, reply, last_seen: now, created: now,
                                    packets: [0; 2], bytes: [0; 2], user, mark: 0,
                                    state: ConnState::New, assured: false,
                                };
                                model.entries.insert(id, (entry, Direction::Original));
                                model.keys.insert(reply, (id, Direction::Reply));
                                model.keys.insert(original, (id, Direction::Original));
                                model.unassured.push(id);
                                model.counters.inserts += 1;
                                ids.push(id);
                            }
                        }
                    }
                    Op::Lookup(key) => {
                        prop_assert_eq!(ct.lookup(&key, now), model.lookup(&key, now));
                    }
                    Op::LookupTrack { key, flags, len } => {
                        let Some(key4) = FlowKeyV4::from_key(&key) else {
                            // IPv6: not for the IPv4 path.
                            check(&ct, &model);
                            continue;
                        };
                        prop_assert_eq!(key4.to_key(), key);
                        let got = ct.lookup_track_v4(&key4, flags, len, now);
                        let expected = model.lookup(&key, now).map(|(id, dir)| {
                            let verdict = model.track(id, dir, flags, len, now);
                            let entry = &model.entries[&id].0;
                            let translation = if dir == Direction::Original {
                                Translation::between(&entry.original, &entry.reply.reversed())
                            } else {
                                Translation::between(&entry.reply, &entry.original.reversed())
                            };
                            (Tracked { id, dir, verdict, user: entry.user }, translation)
                        });
                        prop_assert_eq!(got.map(|(t, tr)| (t, *tr)), expected);
                    }
                    Op::Track { pick, dir, flags, len } if !ids.is_empty() => {
                        // Recent ids mostly: long enough conversations to reach every state.
                        let id = ids[ids.len() - 1 - pick % ids.len().min(3)];
                        let dir = if dir { Direction::Reply } else { Direction::Original };
                        prop_assert_eq!(ct.track(id, dir, flags, len, now), model.track(id, dir, flags, len, now));
                    }
                    Op::Converse(pick) if !ids.is_empty() => {
                        use Direction::{Original, Reply};
                        let id = ids[ids.len() - 1 - pick % ids.len().min(3)];
                        let script = [
                            (Original, SYN), (Reply, SYN | ACK), (Original, ACK), (Reply, ACK),
                            (Original, FIN | ACK), (Reply, ACK), (Reply, FIN | ACK), (Original, ACK),
                        ];
                        for (dir, flags) in script {
                            let got = ct.track(id, dir, Some(flags), 64, now);
                            prop_assert_eq!(got, model.track(id, dir, Some(flags), 64, now));
                        }
                    }
                    Op::Remove(pick) if !ids.is_empty() => {
                        let id = ids[pick % ids.len()];
                        let expected = model.entries.contains_key(&id).then(|| model.drop_entry(id));
                        if expected.is_some() {
                            model.counters.removals += 1;
                        }
                        prop_assert_eq!(ct.remove(id), expected);
                    }
                    Op::Expire(budget) => {
                        let removed = ct.expire(now, budget);
                        let gone = vanished(&ct, &model);
                        prop_assert_eq!(removed, gone.len());
                        for id in gone {
                            prop_assert!(model.expired(id, now));
                            model.drop_entry(id);
                        }
                        model.counters.expirations += removed as u64;
                        if budget == usize::MAX {
                            let left = model.entries.keys().any(|&id| model.expired(id, now));
                            prop_assert!(!left, "a full sweep leaves nothing expired");
                        }
                    }
                    Op::Flush(user) => {
                        let doomed: Vec<EntryId> = model.entries.iter()
                            .filter(|(_, (e, _))| e.user == user).map(|(&id, _)| id).collect();
                        prop_assert_eq!(ct.flush_matching(|e| e.user == user), doomed.len());
                        model.counters.removals += doomed.len() as u64;
                        for id in doomed {
                            model.drop_entry(id);
                        }
                    }
                    Op::Track { .. } | Op::Converse(_) | Op::Remove(_) => {}
                }
                check(&ct, &model);
            }
        }
    }
}
