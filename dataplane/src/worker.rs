//! State a worker keeps across vectors: what it has learned (neighbors) and what it rations
//! (ICMP errors, neighbor requests). Unlike [`crate::tables::Tables`] this is mutable and
//! belongs to one worker.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use fnv::FnvHashMap;

use crate::conntrack::{Conntrack, ConntrackConfig};
use crate::fib::Route;
use crate::flows::FlowDirectory;
use crate::graph::Nanos;
use crate::path_mtu::PathMtuCache;
use crate::reassembly::Reassembler;
use crate::services::{AffinityTable, ServiceCounters};
use crate::tables::Tables;
use crate::virtual_reassembly::VirtualReassembly;

const SECOND: Nanos = 1_000_000_000;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_sec: u64,
    burst: u64,
    /// Tokens scaled by one second, so refills need no division per packet.
    scaled_tokens: u64,
    last: Nanos,
    /// Requests refused for want of tokens.
    pub refused: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u64, burst: u64) -> Self {
        TokenBucket {
            rate_per_sec,
            burst,
            scaled_tokens: burst.saturating_mul(SECOND),
            last: 0,
            refused: 0,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Nanos) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let cap = self.burst.saturating_mul(SECOND);
        self.scaled_tokens = self
            .scaled_tokens
            .saturating_add(elapsed.saturating_mul(self.rate_per_sec))
            .min(cap);
        if self.scaled_tokens >= SECOND {
            self.scaled_tokens -= SECOND;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// A learned (or configured) neighbor, in the states of RFC 4861 7.3.2 (which Linux applies to
/// ARP as well): INCOMPLETE while `mac` is unknown; REACHABLE until `reachable_until`; then
/// STALE, used as it is; DELAY from the first use of a stale entry, and PROBE
/// [`NEIGHBOR_DELAY_FIRST_PROBE`] later, while `probe_at` is set: unicast requests to `mac`
/// every second until one is answered or [`NEIGHBOR_MAX_PROBES`] went unanswered, when the
/// entry is forgotten ([`NeighborTable::due_probes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// Its link-layer address, once known.
    pub mac: Option<[u8; 6]>,
    /// When `mac` was last learned or confirmed.
    pub confirmed: Nanos,
    /// Until when the neighbor is known to be reachable: [`NEIGHBOR_REACHABLE_TIME`] after an
    /// answer to a request; 0 for an address only heard of (a solicitation's source, an
    /// unsolicited advertisement), which is stale from the start.
    pub reachable_until: Nanos,
    /// When we last asked for it (ARP request or neighbor solicitation).
    pub requested: Option<Nanos>,
    /// Configured by hand: never expires, never overwritten by what is learned.
    pub permanent: bool,
    /// Unanswered requests sent straight to `mac` to confirm it (RFC 4861 7.3.3's probes).
    pub probes: u8,
    /// DELAY and PROBE: when the next unicast probe is due.
    pub probe_at: Option<Nanos>,
}

impl Neighbor {
    /// A neighbor whose address is `mac`, reachable until `reachable_until`.
    fn new(mac: Option<[u8; 6]>, now: Nanos, reachable_until: Nanos) -> Self {
        Neighbor {
            mac,
            confirmed: now,
            reachable_until,
            requested: None,
            permanent: false,
            probes: 0,
            probe_at: None,
        }
    }

    /// Its address while it is reachable (REACHABLE, or configured by hand).
    fn fresh_mac(&self, now: Nanos) -> Option<[u8; 6]> {
        let fresh = self.permanent || now < self.reachable_until;
        self.mac.filter(|_| fresh)
    }

    /// Records that the neighbor answered (or was heard) at `mac`: REACHABLE when
    /// `reachable`, else STALE; any probing stops.
    fn confirm(&mut self, mac: [u8; 6], now: Nanos, reachable: bool) {
        self.mac = Some(mac);
        self.confirmed = now;
        self.reachable_until = if reachable {
            now.saturating_add(NEIGHBOR_REACHABLE_TIME)
        } else {
            0
        };
        self.requested = None;
        self.probes = 0;
        self.probe_at = None;
    }
}

/// Unicast probes before a neighbor's address is given up (RFC 4861's MAX_UNICAST_SOLICIT).
pub const NEIGHBOR_MAX_PROBES: u8 = 3;

/// How long a learned entry is used without being confirmed again.
pub const NEIGHBOR_LIFETIME: Nanos = 600 * SECOND;
/// How long an answer keeps a neighbor REACHABLE (RFC 4861's REACHABLE_TIME, Linux's
/// base_reachable_time).
pub const NEIGHBOR_REACHABLE_TIME: Nanos = 30 * SECOND;
/// How long a stale entry in use waits for a confirmation before it is probed (RFC 4861's
/// DELAY_FIRST_PROBE_TIME).
pub const NEIGHBOR_DELAY_FIRST_PROBE: Nanos = 5 * SECOND;
/// Least time between two requests for the same neighbor (RFC 4861's RETRANS_TIMER).
pub const NEIGHBOR_REQUEST_INTERVAL: Nanos = SECOND;
/// Most entries; when full, new neighbors are not learned (counted).
pub const NEIGHBOR_CAPACITY: usize = 65_536;

/// The answer of [`NeighborTable::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Known: send to this address.
    Known([u8; 6]),
    /// Unknown: send a request now.
    Request,
    /// Unknown and a request went out recently: drop and wait.
    Pending,
}

/// Slots of [`NeighborTable`]'s cache of recent answers (direct-mapped).
const RECENT_SLOTS: usize = 16;

/// The cache slot for a neighbor: low bits of the address mixed with the port.
#[inline]
fn recent_slot(port: u16, ip: &IpAddr) -> usize {
    let low = match ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    (usize::from(low) ^ usize::from(port)) % RECENT_SLOTS
}

#[derive(Clone, Copy, Debug)]
struct LastAnswer {
    key: (u16, IpAddr),
    mac: [u8; 6],
    /// Until when the neighbor stays REACHABLE, the answer good without a look at its entry.
    fresh_until: Nanos,
    generation: u64,
}

/// Neighbors by port and IP address (ARP for IPv4, ND for IPv6).
#[derive(Clone, Debug, Default)]
pub struct NeighborTable {
    entries: FnvHashMap<(u16, IpAddr), Neighbor>,
    /// Bumped whenever an address is learned, changes or is forgotten, so packets waiting for
    /// one know when to look again, and so the last answer can be reused.
    generation: u64,
    /// Recent answers, reused while nothing changed: traffic goes to few next hops at a time
    /// (one, or the members of an ECMP group), and this skips the hash lookup for them.
    recent: [Option<LastAnswer>; RECENT_SLOTS],
    /// Entries not learned because the table was full.
    pub full: u64,
    /// With several workers, what this table learned from the wire since the worker last
    /// passed it on: the answer to one worker's request may reach another worker, so each
    /// hands what it learns to the others ([`NeighborTable::share`]). `None` (the default):
    /// nothing is kept.
    pub shared: Option<Vec<LearnedNeighbor>>,
    /// Entries in DELAY or PROBE, for [`NeighborTable::due_probes`] (an entry may stay
    /// listed after it left them; it is dropped from the list when next looked at).
    probing: Vec<(u16, IpAddr)>,
    /// Unicast probes sent (RFC 4861 7.3.3).
    pub probes_sent: u64,
    /// Entries forgotten because their probes went unanswered.
    pub unreachable: u64,
}

/// A neighbor address learned by one worker, for the others ([`NeighborTable::shared`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedNeighbor {
    /// The port it was learned on.
    pub port: u16,
    /// Its IP address.
    pub ip: IpAddr,
    /// Its link-layer address.
    pub mac: [u8; 6],
}

impl NeighborTable {
    /// Looks up `ip` on `port` to send a packet to it, and rations requests.
    #[inline]
    pub fn resolve(&mut self, port: u16, ip: IpAddr, now: Nanos) -> Resolution {
        match self.recently_known(port, ip, now) {
            Some(mac) => Resolution::Known(mac),
            None => self.resolve_slow(port, ip, now),
        }
    }

    /// The cached answer of an earlier [`Resolution::Known`], if it still holds.
    #[inline]
    fn recently_known(&self, port: u16, ip: IpAddr, now: Nanos) -> Option<[u8; 6]> {
        let last = self.recent[recent_slot(port, &ip)].as_ref()?;
        let fresh =
            last.key == (port, ip) && now < last.fresh_until && last.generation == self.generation;
        fresh.then_some(last.mac)
    }

    /// The address [`NeighborTable::resolve`] would answer [`Resolution::Known`] with, without
    /// any of its side effects (no entry made, no request rationed); `None` when it would
    /// answer anything else. For nodes that take the common case themselves and leave the
    /// rest to `neighbor-output`.
    pub fn known(&self, port: u16, ip: IpAddr, now: Nanos) -> Option<[u8; 6]> {
        if let Some(mac) = self.recently_known(port, ip, now) {
            return Some(mac);
        }
        self.entries.get(&(port, ip))?.fresh_mac(now)
    }

    fn resolve_slow(&mut self, port: u16, ip: IpAddr, now: Nanos) -> Resolution {
        let at_capacity = self.entries.len() >= NEIGHBOR_CAPACITY;
        let entry = match self.entries.get_mut(&(port, ip)) {
            Some(e) => e,
            None if at_capacity => {
                self.full += 1;
                return Resolution::Pending;
            }
            None => self
                .entries
                .entry((port, ip))
                .or_insert(Neighbor::new(None, 0, 0)),
        };
        let may_request = entry
            .requested
            .is_none_or(|t| now.saturating_sub(t) >= NEIGHBOR_REQUEST_INTERVAL);
        let age = now.saturating_sub(entry.confirmed);
        if let Some(mac) = entry.fresh_mac(now) {
            self.recent[recent_slot(port, &ip)] = Some(LastAnswer {
                key: (port, ip),
                mac,
                fresh_until: if entry.permanent {
                    Nanos::MAX
                } else {
                    entry.reachable_until
                },
                generation: self.generation,
            });
            return Resolution::Known(mac);
        }
        match entry.mac {
            Some(mac) if age < NEIGHBOR_LIFETIME => {
                // STALE: still used; the first use starts DELAY, after which the neighbor is
                // probed (`due_probes`) unless it confirms itself meanwhile.
                if entry.probe_at.is_none() {
                    entry.probe_at = Some(now.saturating_add(NEIGHBOR_DELAY_FIRST_PROBE));
                    self.probing.push((port, ip));
                }
                Resolution::Known(mac)
            }
            _ if may_request => {
                entry.requested = Some(now);
                Resolution::Request
            }
            _ => Resolution::Pending,
        }
    }

    /// Changes whenever an address is learned or changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The address known for `ip` on `port`, without side effects.
    pub fn get(&self, port: u16, ip: IpAddr) -> Option<[u8; 6]> {
        self.entries.get(&(port, ip)).and_then(|e| e.mac)
    }

    /// Records that `ip` on `port` is at `mac`, and reachable (an ARP packet from it). With
    /// `create` false only an entry that already exists is updated (RFC 826's merge, for
    /// packets not addressed to us).
    pub fn learn(&mut self, port: u16, ip: IpAddr, mac: [u8; 6], now: Nanos, create: bool) {
        self.heard(port, ip, mac, now, create, true);
    }

    /// Records that `ip` on `port` is at `mac` as a neighbor solicitation or router
    /// solicitation from it says (RFC 4861 7.2.3, 6.2.6): a new entry, or one whose address
    /// changes, is STALE; an entry with the same address stays as it was.
    pub fn learn_stale(&mut self, port: u16, ip: IpAddr, mac: [u8; 6], now: Nanos) {
        if self.get(port, ip) != Some(mac) {
            self.heard(port, ip, mac, now, true, false);
        }
    }

    /// [`NeighborTable::learn`] and [`NeighborTable::learn_stale`]: the entry becomes
    /// REACHABLE when `reachable`, else STALE.
    fn heard(
        &mut self,
        port: u16,
        ip: IpAddr,
        mac: [u8; 6],
        now: Nanos,
        create: bool,
        reachable: bool,
    ) {
        if let Some(e) = self.entries.get_mut(&(port, ip)) {
            if !e.permanent {
                if e.mac != Some(mac) {
                    self.generation += 1;
                }
                e.confirm(mac, now, reachable);
                if let Some(shared) = &mut self.shared {
                    shared.push(LearnedNeighbor { port, ip, mac });
                }
            }
            return;
        }
        if !create {
            return;
        }
        if self.entries.len() >= NEIGHBOR_CAPACITY {
            self.full += 1;
            return;
        }
        if let Some(shared) = &mut self.shared {
            shared.push(LearnedNeighbor { port, ip, mac });
        }
        self.generation += 1;
        let mut neighbor = Neighbor::new(None, now, 0);
        neighbor.confirm(mac, now, reachable);
        self.entries.insert((port, ip), neighbor);
    }

    /// RFC 4861 7.3.3's DELAY and PROBE: appends to `out` the neighbors due a unicast probe
    /// at `now` (port, address, the cached MAC to send it to), each probed again a second
    /// later; an entry that went [`NEIGHBOR_MAX_PROBES`] probes unanswered is forgotten, so
    /// that its next use asks the whole link again.
    pub fn due_probes(&mut self, now: Nanos, out: &mut Vec<(u16, IpAddr, [u8; 6])>) {
        let mut i = 0;
        while i < self.probing.len() {
            let key = self.probing[i];
            let (keep, forget) = match self.entries.get_mut(&key) {
                Some(e) => match (e.probe_at, e.mac) {
                    (Some(at), Some(mac)) if !e.permanent => {
                        if at > now {
                            (true, false)
                        } else if e.probes >= NEIGHBOR_MAX_PROBES {
                            (false, true)
                        } else {
                            out.push((key.0, key.1, mac));
                            e.probes += 1;
                            e.requested = Some(now);
                            e.probe_at = Some(now.saturating_add(NEIGHBOR_REQUEST_INTERVAL));
                            self.probes_sent += 1;
                            (true, false)
                        }
                    }
                    _ => (false, false),
                },
                None => (false, false),
            };
            if forget {
                self.entries.remove(&key);
                self.generation += 1;
                self.unreachable += 1;
            }
            if keep {
                i += 1;
            } else {
                self.probing.swap_remove(i);
            }
        }
    }

    /// Takes in a neighbor advertisement for `ip` on `port` (RFC 4861 7.2.5): ignored without
    /// an entry; an entry still waiting for its address takes it; a different address
    /// replaces the cached one only with the Override flag (without it the entry just goes
    /// stale, to be confirmed again before long); a solicited advertisement confirms the
    /// entry. Permanent entries stay as they are.
    pub fn advertised(
        &mut self,
        port: u16,
        ip: IpAddr,
        mac: Option<[u8; 6]>,
        solicited: bool,
        override_: bool,
        now: Nanos,
    ) {
        let Some(e) = self.entries.get_mut(&(port, ip)) else {
            return;
        };
        if e.permanent {
            return;
        }
        let taken = match (e.mac, mac) {
            (None, None) => return,
            (None, Some(new)) => Some(new),
            (Some(old), Some(new)) if old != new && !override_ => {
                // Keep the address; STALE from now on (unless it already is).
                if e.fresh_mac(now).is_some() {
                    e.reachable_until = 0;
                    e.probe_at = None;
                }
                self.generation += 1;
                return;
            }
            (Some(old), Some(new)) if old != new => Some(new),
            _ => None,
        };
        if let Some(new) = taken {
            // An unsolicited one only says where the address is, not that it is reachable.
            e.confirm(new, now, solicited);
            self.generation += 1;
            if let Some(shared) = &mut self.shared {
                shared.push(LearnedNeighbor { port, ip, mac: new });
            }
        } else if solicited {
            if let Some(mac) = e.mac {
                e.confirm(mac, now, true);
            }
            self.generation += 1;
        }
    }

    /// Takes in what another worker learned, as if this worker had seen the packets itself
    /// (packets waiting for one of these neighbors go out); not passed on again.
    pub fn merge_learned(&mut self, learned: &[LearnedNeighbor], now: Nanos) {
        let shared = self.shared.take();
        for n in learned {
            self.learn(n.port, n.ip, n.mac, now, true);
        }
        self.shared = shared;
    }

    /// Adds a permanent entry.
    pub fn insert_permanent(&mut self, port: u16, ip: IpAddr, mac: [u8; 6]) {
        self.generation += 1;
        let mut neighbor = Neighbor::new(Some(mac), 0, 0);
        neighbor.permanent = true;
        self.entries.insert((port, ip), neighbor);
    }

    /// Forgets entries not confirmed within [`NEIGHBOR_LIFETIME`] and requests unanswered for
    /// as long.
    pub fn expire(&mut self, now: Nanos) {
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            e.permanent
                || now.saturating_sub(e.confirmed.max(e.requested.unwrap_or(0))) < NEIGHBOR_LIFETIME
        });
        if self.entries.len() != before {
            self.generation += 1;
        }
    }

    /// Every entry, for `show`.
    pub fn iter(&self) -> impl Iterator<Item = (&(u16, IpAddr), &Neighbor)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What several workers share ([`WorkerState::share`]).
#[derive(Debug, Default)]
pub struct SharedState {
    /// Which worker tracks which connection tuple.
    pub flows: Arc<FlowDirectory>,
    /// sessionAffinity ClientIP choices.
    pub affinity: Arc<Mutex<AffinityTable>>,
}

/// Everything one worker keeps across vectors.
#[derive(Debug)]
pub struct WorkerState {
    /// ARP and ND cache.
    pub neighbors: NeighborTable,
    /// Rations the ICMP errors this node originates (RFC 1812 4.3.2.8, RFC 4443 2.4(f)).
    pub icmp_errors: TokenBucket,
    /// Fragments addressed to this node, waiting for the rest of their datagrams.
    pub reassembly: Reassembler,
    /// Fragmented datagrams being forwarded: the ports their first fragments carried, for
    /// the later ones (`ip{4,6}-vreass`, NAT, ACLs).
    pub virtual_reassembly: VirtualReassembly,
    /// Path MTUs learned from Packet Too Big messages about this node's own IPv6 packets
    /// (RFC 8201), which `ip6-local` fragments its echo replies to.
    pub path_mtu: PathMtuCache,
    /// The identification last given to a datagram this node fragmented or encapsulated.
    pub fragment_ident: u32,
    /// What [`WorkerState::next_fragment_ident`] adds: the number of workers, each starting
    /// from its own index, so that no two give out the same identification.
    pub fragment_ident_step: u32,
    /// This worker's index among `workers` ([`WorkerState::set_worker`]).
    pub worker: u16,
    /// How many workers there are.
    pub workers: u16,
    /// The service proxy's connections.
    pub conntrack: Conntrack,
    /// sessionAffinity ClientIP choices.
    pub affinity: AffinityTable,
    /// With several workers, the choices all of them share instead of `affinity`: a client's
    /// connections reach different workers ([`WorkerState::with_affinity`]).
    pub shared_affinity: Option<Arc<Mutex<AffinityTable>>>,
    /// Traffic per service frontend and backend.
    pub service_counters: ServiceCounters,
    /// Per ACL of the tables in force (same order as `PolicyTables::acls`): rule hits.
    pub acl_hits: Vec<crate::acl::AclHits>,
    /// When each port sends its next IPv6 router advertisement.
    pub router_adverts: crate::router_adverts::Advertiser,
    /// The IPv4 router discovery schedule (RFC 1256), kept as `router_adverts` is.
    pub ipv4_router_adverts: crate::router_adverts::Advertiser,
    /// When each port reports the IPv6 multicast groups it listens to (MLDv2).
    pub listener_reports: crate::mld::Listener,
    /// The version of the tables the connections were last checked against.
    services_version: u64,
}

impl WorkerState {
    /// Ages what is kept by time: neighbors, and datagrams in reassembly.
    pub fn expire(&mut self, now: Nanos) {
        self.neighbors.expire(now);
        self.reassembly.expire(now);
        self.virtual_reassembly.expire(now);
        // A slice of the connection table per call; callers call this often.
        self.conntrack.expire(now, 1024);
        // Kubernetes caps sessionAffinityConfig.clientIP.timeoutSeconds at one day.
        self.with_affinity(|affinity| affinity.expire(now, 86_400 * SECOND));
    }

    /// Runs `f` on the sessionAffinity table in force: the shared one with several workers
    /// (a short lock, taken by new connections to affinity Services only), else this
    /// worker's.
    pub fn with_affinity<R>(&mut self, f: impl FnOnce(&mut AffinityTable) -> R) -> R {
        match &self.shared_affinity {
            // Every change is one map operation: a table a panicking worker left is usable.
            Some(shared) => f(&mut shared.lock().unwrap_or_else(PoisonError::into_inner)),
            None => f(&mut self.affinity),
        }
    }

    /// With several workers, the one that uses IPsec SA `spi` (its sequence numbers and
    /// replay window live there), when it is not this one. Spread by SPI, the same on every
    /// worker.
    #[inline]
    pub fn sa_owner(&self, spi: u32) -> Option<u16> {
        if self.workers <= 1 {
            return None;
        }
        // Multiply-shift: SPIs spread evenly over the workers without a division.
        let owner =
            ((u64::from(spi.wrapping_mul(0x9e37_79b1)) * u64::from(self.workers)) >> 32) as u16;
        (owner != self.worker).then_some(owner)
    }

    /// A fresh identification for a datagram this node fragments or encapsulates.
    pub fn next_fragment_ident(&mut self) -> u32 {
        self.fragment_ident = self.fragment_ident.wrapping_add(self.fragment_ident_step);
        self.fragment_ident
    }

    /// Worker `index` of `count`: identifications of its own (see
    /// [`WorkerState::fragment_ident_step`]), and, with more than one worker, neighbors and
    /// path MTUs learned kept for the others ([`NeighborTable::shared`],
    /// [`PathMtuCache::shared`]).
    pub fn set_worker(&mut self, index: u16, count: u16) {
        let count = count.max(1);
        (self.worker, self.workers) = (index, count);
        self.fragment_ident = u32::from(index);
        self.fragment_ident_step = u32::from(count);
        self.neighbors.shared = (count > 1).then(Vec::new);
        self.path_mtu.shared = (count > 1).then(Vec::new);
    }

    /// One of several workers that share `shared` (built once for all of them): connections
    /// claim their tuples in its directory and sessionAffinity choices are common.
    pub fn share(&mut self, index: u16, shared: &SharedState) {
        self.conntrack.share(Arc::clone(&shared.flows), index);
        self.shared_affinity = Some(Arc::clone(&shared.affinity));
    }

    /// A worker with a connection table of its own making.
    pub fn with_conntrack(config: ConntrackConfig) -> Self {
        WorkerState {
            conntrack: Conntrack::new(config),
            ..WorkerState::default()
        }
    }

    /// Call when new tables come into force: forgets the connections whose backend left its
    /// Service (UDP and SCTP always, TCP when configured), and marks the TCP ones it keeps
    /// ([`Conntrack::set_backend_gone`]: a client's SYN on one starts a new connection).
    /// Returns how many were forgotten.
    pub fn sync_services(&mut self, tables: &Tables) -> usize {
        if tables.version == self.services_version {
            return 0;
        }
        self.services_version = tables.version;
        // Rule hit counters follow the ACLs they count (a new version may renumber them).
        self.acl_hits = tables.policy.as_deref().map_or_else(Vec::new, |p| {
            p.acls
                .iter()
                .map(|a| crate::acl::AclHits::new(&a.classifier))
                .collect()
        });
        let Some(services) = tables.services.as_deref() else {
            return self
                .conntrack
                .flush_matching(|e| e.user != crate::services::NOT_A_SERVICE);
        };
        let local = |e: &crate::conntrack::ConnEntry| {
            matches!(tables.fib.lookup(e.original.dst), Some(Route::Local))
        };
        let flushed = self.conntrack.flush_matching(|e| {
            let tcp = e.original.proto == crate::conntrack::PROTO_TCP;
            if e.user == crate::services::NOT_A_SERVICE {
                // A datagram flow tracked (by policy) before its destination became a
                // Service would pass untranslated for as long as it keeps sending: kube-proxy
                // clears such flows when a Service address gets endpoints, so do we.
                let o = &e.original;
                return !tcp
                    && services
                        .find(o.dst, o.proto, o.dst_port, local(e))
                        .is_some();
            }
            if e.user == crate::services::TUNNELLED {
                // Kept while the address still sends such flows on untranslated (its
                // backends are picked per packet); else its packets start over.
                let o = &e.original;
                return !services
                    .find(o.dst, o.proto, o.dst_port, local(e))
                    .is_some_and(|f| f.forwarding != switchyard_lb::service::Forwarding::Nat);
            }
            if tcp && !services.flush_tcp_on_removal {
                return false;
            }
            !services.still_valid(e, local(e))
        });
        // TCP connections to a backend that left stay (as kube-proxy leaves them), but a
        // client's SYN reusing one's tuple starts a new connection.
        self.conntrack.set_backend_gone(|e| {
            e.user < crate::services::TUNNELLED && !services.still_valid(e, local(e))
        });
        flushed
    }
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState {
            neighbors: NeighborTable::default(),
            // As Linux's default icmp_msgs_per_sec / icmp_msgs_burst.
            icmp_errors: TokenBucket::new(1000, 50),
            reassembly: Reassembler::default(),
            virtual_reassembly: VirtualReassembly::default(),
            path_mtu: PathMtuCache::default(),
            fragment_ident: 0,
            fragment_ident_step: 1,
            worker: 0,
            workers: 1,
            conntrack: Conntrack::new(ConntrackConfig::default()),
            affinity: AffinityTable::default(),
            shared_affinity: None,
            service_counters: ServiceCounters::default(),
            acl_hits: Vec::new(),
            router_adverts: crate::router_adverts::Advertiser::default(),
            ipv4_router_adverts: crate::router_adverts::Advertiser::ipv4(),
            listener_reports: crate::mld::Listener::default(),
            services_version: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(10, 2);
        assert!(b.allow(0));
        assert!(b.allow(0));
        assert!(!b.allow(0));
        assert!(!b.allow(SECOND / 20));
        assert!(b.allow(SECOND / 10));
        assert!(b.allow(SECOND));
        assert_eq!(b.refused, 2);
    }

    #[test]
    fn neighbor_requests_are_rationed_and_answers_learned() {
        let mut t = NeighborTable::default();
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(t.resolve(0, ip, 0), Resolution::Request);
        assert_eq!(t.resolve(0, ip, 1000), Resolution::Pending);
        assert_eq!(t.resolve(0, ip, SECOND), Resolution::Request);
        assert_eq!(t.known(0, ip, SECOND), None);
        t.learn(0, ip, [2; 6], 2 * SECOND, false);
        // `known` agrees with `resolve` on a fresh neighbor, before and after it is cached,
        // and leaves a stale one to `resolve`.
        assert_eq!(t.known(0, ip, 3 * SECOND), Some([2; 6]));
        assert_eq!(t.resolve(0, ip, 3 * SECOND), Resolution::Known([2; 6]));
        assert_eq!(t.known(0, ip, 3 * SECOND), Some([2; 6]));
        // Stale: `known` leaves it to `resolve`, which still uses the address.
        assert_eq!(t.known(0, ip, 70 * SECOND), None);
        assert_eq!(t.resolve(0, ip, 70 * SECOND), Resolution::Known([2; 6]));
        assert_eq!(t.resolve(0, ip, 70 * SECOND), Resolution::Known([2; 6]));
        t.expire(700 * SECOND);
        assert!(t.is_empty());
    }

    #[test]
    fn workers_share_what_they_learn() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let (mut asked, mut answered) = (WorkerState::default(), WorkerState::default());
        asked.set_worker(0, 2);
        answered.set_worker(1, 2);
        assert_eq!(asked.neighbors.resolve(0, ip, 0), Resolution::Request);
        // The reply reaches the other worker.
        answered.neighbors.learn(0, ip, [2; 6], SECOND, true);
        let learned = answered.neighbors.shared.as_mut().unwrap().split_off(0);
        assert_eq!(
            learned,
            [LearnedNeighbor {
                port: 0,
                ip,
                mac: [2; 6]
            }]
        );
        let generation = asked.neighbors.generation();
        asked.neighbors.merge_learned(&learned, SECOND);
        assert!(
            asked.neighbors.generation() > generation,
            "held packets are released"
        );
        assert_eq!(
            asked.neighbors.resolve(0, ip, SECOND),
            Resolution::Known([2; 6])
        );
        assert_eq!(
            asked.neighbors.shared.as_deref(),
            Some(&[][..]),
            "not passed back"
        );
        // Identifications: 0, 2, 4, ... and 1, 3, 5, ...
        assert_eq!(
            [asked.next_fragment_ident(), asked.next_fragment_ident()],
            [2, 4]
        );
        assert_eq!(
            [
                answered.next_fragment_ident(),
                answered.next_fragment_ident()
            ],
            [3, 5]
        );
    }

    /// RFC 4861 7.3.3: REACHABLE for REACHABLE_TIME; then STALE, and in use DELAY for 5 s;
    /// then PROBE, three unicast probes a second apart; unanswered, the entry is forgotten
    /// and the next use asks the whole link.
    #[test]
    fn stale_entries_in_use_are_probed_then_given_up() {
        let mut t = NeighborTable::default();
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let mut due = Vec::new();
        t.learn(0, ip, [2; 6], 0, true);
        assert_eq!(t.resolve(0, ip, 29 * SECOND), Resolution::Known([2; 6]));
        t.due_probes(29 * SECOND, &mut due);
        assert!(due.is_empty(), "reachable: no probe");
        let stale = NEIGHBOR_REACHABLE_TIME + SECOND;
        assert_eq!(t.resolve(0, ip, stale), Resolution::Known([2; 6]));
        t.due_probes(stale + 4 * SECOND, &mut due);
        assert!(due.is_empty(), "DELAY: no probe for 5 s");
        for i in 0..u64::from(NEIGHBOR_MAX_PROBES) {
            let now = stale + NEIGHBOR_DELAY_FIRST_PROBE + i * SECOND;
            t.due_probes(now, &mut due);
            assert_eq!(due, [(0, ip, [2; 6])], "probe {i}");
            due.clear();
            t.due_probes(now + SECOND / 2, &mut due);
            assert!(due.is_empty(), "a second apart");
            assert_eq!(t.resolve(0, ip, now), Resolution::Known([2; 6]));
        }
        let end = stale + NEIGHBOR_DELAY_FIRST_PROBE + 3 * SECOND;
        t.due_probes(end, &mut due);
        assert!(due.is_empty());
        assert_eq!((t.get(0, ip), t.unreachable, t.probes_sent), (None, 1, 3));
        assert_eq!(t.resolve(0, ip, end), Resolution::Request);
    }

    #[test]
    fn an_answer_while_probing_makes_the_entry_reachable_again() {
        let mut t = NeighborTable::default();
        let ip: IpAddr = "2001:db8::2".parse().unwrap();
        let mut due = Vec::new();
        t.learn(0, ip, [2; 6], 0, true);
        let stale = NEIGHBOR_REACHABLE_TIME;
        t.resolve(0, ip, stale);
        t.due_probes(stale + NEIGHBOR_DELAY_FIRST_PROBE, &mut due);
        assert_eq!(due.len(), 1);
        let answered = stale + NEIGHBOR_DELAY_FIRST_PROBE + SECOND / 2;
        t.advertised(0, ip, Some([2; 6]), true, false, answered);
        due.clear();
        t.due_probes(answered + 10 * SECOND, &mut due);
        assert!(due.is_empty());
        assert_eq!(t.known(0, ip, answered + SECOND), Some([2; 6]));
    }

    /// RFC 4861 7.2.3: a solicitation's source link-layer address makes a new entry STALE,
    /// and a changed one STALE with the new address; the same address changes nothing.
    #[test]
    fn solicitations_leave_entries_stale() {
        let mut t = NeighborTable::default();
        let ip: IpAddr = "2001:db8::2".parse().unwrap();
        t.learn_stale(0, ip, [2; 6], SECOND);
        assert_eq!((t.get(0, ip), t.known(0, ip, SECOND)), (Some([2; 6]), None));
        // In use: DELAY, and the same address heard again does not undo it.
        t.resolve(0, ip, 2 * SECOND);
        t.learn_stale(0, ip, [2; 6], 3 * SECOND);
        let mut due = Vec::new();
        t.due_probes(2 * SECOND + NEIGHBOR_DELAY_FIRST_PROBE, &mut due);
        assert_eq!(due.len(), 1);
        // A reachable entry told of another address becomes STALE with it.
        t.learn(0, ip, [2; 6], 10 * SECOND, true);
        t.learn_stale(0, ip, [3; 6], 11 * SECOND);
        assert_eq!(
            (t.get(0, ip), t.known(0, ip, 11 * SECOND)),
            (Some([3; 6]), None)
        );
    }

    #[test]
    fn merge_does_not_create_entries() {
        let mut t = NeighborTable::default();
        t.learn(1, "198.18.0.9".parse().unwrap(), [1; 6], 0, false);
        assert!(t.is_empty());
        t.insert_permanent(1, "198.18.0.9".parse().unwrap(), [3; 6]);
        t.learn(1, "198.18.0.9".parse().unwrap(), [1; 6], 0, true);
        assert_eq!(t.get(1, "198.18.0.9".parse().unwrap()), Some([3; 6]));
    }
}
