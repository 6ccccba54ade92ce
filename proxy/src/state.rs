//! What the agent knows about itself, shared between the worker, the control plane and the
//! servers that show it (`/metrics`, `/healthz`, `/readyz`, the admin socket).
//!
//! The worker never waits for anyone: once a second (at housekeeping) it builds a
//! [`DataplaneSnapshot`] and swaps it in; the control plane does the same with a
//! [`ControlSnapshot`] after each sync. Readers take the current `Arc` and read at leisure.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use switchyard_dataplane::conntrack::{ConnEntry, Counters as ConntrackCounters};
use switchyard_dataplane::graph::{NodeCounters, TraceRecord};
use switchyard_dataplane::services::BackendCounters;
use switchyard_dataplane::tables::Tables;
use switchyard_io::cryptodev::CryptodevStats;
use switchyard_lb::service::{BackendAddr, Frontend, Service};

/// Most conntrack entries a snapshot carries (for `switchyard show conntrack`).
pub const CONNTRACK_SAMPLE: usize = 4096;

/// The dataplane as one worker saw it at `taken_at`.
#[derive(Clone, Debug)]
pub struct DataplaneSnapshot {
    /// When it was taken.
    pub taken_at: SystemTime,
    /// The version of the tables in force.
    pub tables_version: u64,
    /// Packets received and sent, and I/O errors, since start.
    pub rx: u64,
    /// Packets sent.
    pub tx: u64,
    /// Receive/transmit errors.
    pub io_errors: u64,
    /// Per graph node: packets, vectors and per-reason counters.
    pub nodes: Vec<NodeCounters>,
    /// Live connections.
    pub conntrack_len: usize,
    /// Connection table capacity.
    pub conntrack_capacity: u32,
    /// Connection table events.
    pub conntrack: ConntrackCounters,
    /// Up to [`CONNTRACK_SAMPLE`] live connections.
    pub connections: Vec<ConnEntry>,
    /// Traffic per service frontend and backend.
    pub backends: Vec<(Frontend, BackendAddr, BackendCounters)>,
    /// Neighbors: port, address, MAC.
    pub neighbors: Vec<(u16, IpAddr, Option<[u8; 6]>)>,
    /// NetworkPolicy hit counters of the tables in force (`tables_version`), one entry per
    /// ACL in `PolicyTables::acls` order: hits per rule, and hits of the default (deny).
    pub acl_hits: Vec<(Vec<u64>, u64)>,
    /// Packets graph nodes keep parked (ESP crypto in flight on a device).
    pub parked: usize,
    /// The ESP cryptodev, if `--crypto` names one: device, driver and counters.
    pub cryptodev: Option<(String, String, CryptodevStats)>,
}

impl DataplaneSnapshot {
    /// Adds another worker's snapshot (taken about the same time, same tables) to this one:
    /// counters summed node by node, connection table by table, backend by backend, rule by
    /// rule; neighbors and sampled connections joined.
    pub fn merge(&mut self, other: &DataplaneSnapshot) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.io_errors += other.io_errors;
        for (mine, theirs) in self.nodes.iter_mut().zip(&other.nodes) {
            mine.packets += theirs.packets;
            mine.vectors += theirs.vectors;
            for ((_, count), (_, more)) in mine.errors.iter_mut().zip(&theirs.errors) {
                *count += more;
            }
        }
        self.conntrack_len += other.conntrack_len;
        self.conntrack_capacity = self
            .conntrack_capacity
            .saturating_add(other.conntrack_capacity);
        let (c, o) = (&mut self.conntrack, &other.conntrack);
        c.inserts += o.inserts;
        c.removals += o.removals;
        c.evictions += o.evictions;
        c.expirations += o.expirations;
        c.full_drops += o.full_drops;
        c.clashes += o.clashes;
        c.invalid += o.invalid;
        let room = CONNTRACK_SAMPLE.saturating_sub(self.connections.len());
        self.connections
            .extend(other.connections.iter().take(room).copied());
        for (frontend, backend, counters) in &other.backends {
            match self
                .backends
                .iter_mut()
                .find(|(f, b, _)| f == frontend && b == backend)
            {
                Some((_, _, mine)) => {
                    mine.connections += counters.connections;
                    for d in 0..2 {
                        mine.packets[d] += counters.packets[d];
                        mine.bytes[d] += counters.bytes[d];
                    }
                }
                None => self.backends.push((*frontend, *backend, *counters)),
            }
        }
        for n in &other.neighbors {
            if !self.neighbors.iter().any(|m| (m.0, m.1) == (n.0, n.1)) {
                self.neighbors.push(*n);
            }
        }
        // Hit counters only add up over the same ACLs (tables of the same version).
        if self.tables_version == other.tables_version {
            for ((rules, default), (more, more_default)) in
                self.acl_hits.iter_mut().zip(&other.acl_hits)
            {
                for (hits, more) in rules.iter_mut().zip(more) {
                    *hits += more;
                }
                *default += more_default;
            }
        }
        self.parked += other.parked;
    }
}

/// Fixed-bucket histogram of durations in seconds, Prometheus style (cumulative on export).
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, seconds, increasing.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more for +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Sync latency buckets: 1 ms to 10 s.
pub const SYNC_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Adds one observation.
    pub fn observe(&mut self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// The control plane's state after its last sync.
#[derive(Clone, Debug)]
pub struct ControlSnapshot {
    /// The first full sync has been programmed (kube-proxy's readiness).
    pub ready: bool,
    /// When the last sync was programmed.
    pub last_sync: Option<SystemTime>,
    /// Monotonic time of the last sync, for staleness checks.
    pub last_sync_instant: Option<Instant>,
    /// Since when a change seen by the control plane waits to be programmed (`None`: nothing
    /// pending). `/healthz` fails when this is older than its timeout, as kube-proxy's does.
    pub pending_since: Option<SystemTime>,
    /// Syncs done.
    pub syncs: u64,
    /// From change seen to tables published.
    pub sync_latency: Histogram,
    /// This node may take load-balancer traffic: its Node is not being deleted and has no
    /// `ToBeDeletedByClusterAutoscaler` taint (true while the Node is unknown). `/healthz`
    /// fails otherwise, as kube-proxy's does.
    pub node_eligible: bool,
    /// The Services as reduced (what `show services` lists), in name order.
    pub services: Arc<[Arc<Service>]>,
    /// The tables last published (FIB, compiled services).
    pub tables: Option<Arc<Tables>>,
    /// Problems found in the objects at the last sync, one line each.
    pub problems: Vec<String>,
    /// Where the objects come from, for people.
    pub source: String,
}

impl Default for ControlSnapshot {
    fn default() -> Self {
        ControlSnapshot {
            ready: false,
            last_sync: None,
            last_sync_instant: None,
            pending_since: None,
            syncs: 0,
            sync_latency: Histogram::new(SYNC_BUCKETS),
            node_eligible: true,
            services: Arc::new([]),
            tables: None,
            problems: Vec::new(),
            source: String::new(),
        }
    }
}

/// Most BGP routes a snapshot carries (for `switchyard show bgp`).
pub const BGP_ROUTES_SAMPLE: usize = 10_000;

/// The BGP speaker as last seen (refreshed once a second by the BGP thread).
#[derive(Clone, Debug, Default)]
pub struct BgpSnapshot {
    /// False when the agent runs no speaker (no `--bgp-asn`).
    pub enabled: bool,
    /// Our AS.
    pub local_as: u32,
    /// Our router id.
    pub router_id: Option<std::net::Ipv4Addr>,
    /// When the neighbors and routes were read from the speaker.
    pub taken_at: Option<SystemTime>,
    /// The sessions.
    pub neighbors: Vec<switchyard_bgp::speaker::NeighborStatus>,
    /// Up to [`BGP_ROUTES_SAMPLE`] prefixes of the Loc-RIB, with every candidate path.
    pub routes: Vec<switchyard_bgp::speaker::RouteEntry>,
    /// Prefixes in the Loc-RIB (learned and our own).
    pub routes_total: usize,
    /// Prefixes we originate (service addresses, pod CIDRs).
    pub advertised: usize,
    /// Learned prefixes installed in the dataplane FIB at the last publication.
    pub installed: usize,
    /// Where each configured peer comes from (flag, Node annotation, iBGP mesh).
    pub peer_sources:
        std::collections::BTreeMap<std::net::IpAddr, crate::agent::bgp::nodes::PeerSource>,
    /// Bad Node BGP annotations seen (each counted once, when it appears).
    pub annotation_errors: u64,
    /// The bad Node BGP annotations now in place, one line per node (each node's last good
    /// settings stand in for them).
    pub annotation_problems: Vec<String>,
    /// Our own graceful restart (`--bgp-state-dir`): deferral of route selection.
    pub restart: switchyard_bgp::speaker::RestartStatus,
}

/// Most traced packets one `switchyard trace` collects.
pub const TRACE_MAX: u32 = 100;

/// Packet tracing asked for over the admin socket (`switchyard trace`): the admin side asks
/// for a number of packets, the worker marks that many of the next packets it receives and
/// hands their traces over once they have been through the graph.
#[derive(Debug, Default)]
pub struct TraceRequests {
    /// Packets the worker should start tracing; it takes the number when it next looks (a
    /// relaxed load per loop: the request costs the worker nothing until there is one).
    wanted: AtomicU32,
    /// A trace is being collected (only one at a time).
    active: AtomicBool,
    /// The traces handed over so far.
    done: Mutex<Vec<TraceRecord>>,
}

impl TraceRequests {
    /// Starts collecting the traces of the next `packets` packets; false if a trace is
    /// already being collected.
    pub fn start(&self, packets: u32) -> bool {
        if self.active.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Ok(mut done) = self.done.lock() {
            done.clear();
        }
        self.wanted.store(packets.min(TRACE_MAX), Ordering::Release);
        true
    }

    /// The traces handed over so far.
    pub fn collected(&self) -> usize {
        self.done.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Stops collecting and returns the traces.
    pub fn finish(&self) -> Vec<TraceRecord> {
        self.wanted.store(0, Ordering::Release);
        let done = self
            .done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        self.active.store(false, Ordering::Release);
        done
    }

    /// For the worker: packets to start tracing now (zero almost always).
    pub fn take_wanted(&self) -> u32 {
        if self.wanted.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.wanted.swap(0, Ordering::AcqRel)
    }

    /// For the worker: true while someone collects traces.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// For the worker: hands over finished traces.
    pub fn hand_over(&self, records: Vec<TraceRecord>) {
        if let Ok(mut done) = self.done.lock() {
            let room = (TRACE_MAX as usize).saturating_sub(done.len());
            done.extend(records.into_iter().take(room));
        }
    }
}

/// The shared state.
#[derive(Debug)]
pub struct Shared {
    dataplane: Mutex<Option<Arc<DataplaneSnapshot>>>,
    control: Mutex<Arc<ControlSnapshot>>,
    bgp: Mutex<Arc<BgpSnapshot>>,
    /// Packet traces asked for over the admin socket.
    pub trace: TraceRequests,
    /// The IPsec service, when the agent runs one (`--ipsec`).
    ipsec: Mutex<Option<crate::ipsec::IpsecView>>,
    /// When the agent started.
    pub started: SystemTime,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            dataplane: Mutex::new(None),
            control: Mutex::new(Arc::new(ControlSnapshot::default())),
            bgp: Mutex::new(Arc::new(BgpSnapshot::default())),
            trace: TraceRequests::default(),
            ipsec: Mutex::new(None),
            started: SystemTime::now(),
        }
    }
}

impl Shared {
    /// The worker's latest snapshot, once it has taken one.
    pub fn dataplane(&self) -> Option<Arc<DataplaneSnapshot>> {
        self.dataplane.lock().map(|d| d.clone()).unwrap_or(None)
    }

    /// Publishes the worker's snapshot.
    pub fn set_dataplane(&self, snapshot: DataplaneSnapshot) {
        if let Ok(mut d) = self.dataplane.lock() {
            *d = Some(Arc::new(snapshot));
        }
    }

    /// The control plane's latest state.
    pub fn control(&self) -> Arc<ControlSnapshot> {
        self.control
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| Arc::new(ControlSnapshot::default()))
    }

    /// Changes the control plane's state.
    pub fn update_control(&self, change: impl FnOnce(&mut ControlSnapshot)) {
        if let Ok(mut c) = self.control.lock() {
            let mut next = (**c).clone();
            change(&mut next);
            *c = Arc::new(next);
        }
    }

    /// The IPsec service, if one runs.
    pub fn ipsec(&self) -> Option<crate::ipsec::IpsecView> {
        self.ipsec.lock().ok().and_then(|i| i.clone())
    }

    /// Registers the running IPsec service.
    pub fn set_ipsec(&self, view: crate::ipsec::IpsecView) {
        if let Ok(mut i) = self.ipsec.lock() {
            *i = Some(view);
        }
    }

    /// The BGP speaker's latest state.
    pub fn bgp(&self) -> Arc<BgpSnapshot> {
        self.bgp
            .lock()
            .map(|b| b.clone())
            .unwrap_or_else(|_| Arc::new(BgpSnapshot::default()))
    }

    /// Changes the BGP state.
    pub fn update_bgp(&self, change: impl FnOnce(&mut BgpSnapshot)) {
        if let Ok(mut b) = self.bgp.lock() {
            let mut next = (**b).clone();
            change(&mut next);
            *b = Arc::new(next);
        }
    }
}
