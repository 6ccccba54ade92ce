//! The service proxy's part of [`crate::tables::Tables`]: the compiled Services and the
//! node-wide settings kube-proxy takes as flags.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use switchyard_lb::service::{BackendAddr, Frontend, FrontendEntry, ServiceTable};

use crate::conntrack::ConnEntry;

/// Everything the `ip{4,6}-nat` nodes translate by.
#[derive(Clone, Debug)]
pub struct Services {
    /// Frontends and their backends.
    pub table: ServiceTable,
    /// Where pods live (kube-proxy's `--cluster-cidr`): sources in these are "internal" for
    /// the traffic policies and are not masqueraded on their way to a cluster IP. Empty: no
    /// detection, every source counts as internal for cluster IPs and as external for the
    /// other kinds of address.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic to cluster IPs (kube-proxy's `--masquerade-all`). Traffic to
    /// NodePorts, external and load-balancer IPs is masqueraded by its externalTrafficPolicy
    /// whatever this says, as kube-proxy does: Local keeps the client's address.
    pub masquerade_all: bool,
    /// The node addresses NodePorts open on every address answer on (kube-proxy's
    /// `--nodeport-addresses`: the node's addresses within these ranges). Empty: all of them.
    /// NodePorts compiled for listed addresses (keyed by the address itself) are not filtered.
    pub node_port_ranges: Vec<IpNet>,
    /// Ports masqueraded connections are given on this node's addresses.
    pub snat_ports: RangeInclusive<u16>,
    /// When a backend leaves its Service, also forget the TCP connections to it (the next
    /// segment is balanced afresh, and a backend that does not know the connection resets
    /// it). UDP and SCTP flows are always forgotten, so clients do not talk into the void.
    pub flush_tcp_on_removal: bool,
    /// Terminate GRE and IP-in-IP tunnels addressed to this node (from an edge load balancer)
    /// and treat what they carry as received.
    pub accept_tunnels: bool,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            table: ServiceTable::default(),
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            node_port_ranges: Vec::new(),
            // As Linux's default ip_local_port_range tail, clear of ephemeral client ports
            // that the node's own stack hands out first.
            snat_ports: 32768..=60999,
            flush_tcp_on_removal: false,
            accept_tunnels: true,
        }
    }
}

impl Services {
    /// The frontend a packet to `dst`/`proto`/`port` hits. `dst_is_local` says whether `dst` is
    /// one of this node's addresses, where NodePorts open on every address also answer.
    #[inline]
    pub fn find(
        &self,
        dst: IpAddr,
        proto: u8,
        port: u16,
        dst_is_local: bool,
    ) -> Option<&FrontendEntry> {
        let exact = Frontend {
            addr: dst,
            proto,
            port,
        };
        if let Some(entry) = self.table.frontends.get(&exact) {
            return Some(entry);
        }
        if !dst_is_local || !self.is_node_port_address(dst) {
            return None;
        }
        let any = match dst {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        self.table.frontends.get(&Frontend {
            addr: any,
            proto,
            port,
        })
    }

    /// True if `dst` is a Service's cluster IP: a new connection to it that no frontend
    /// took is refused. For packets [`Services::find`] found no frontend for only.
    #[inline]
    pub fn is_cluster_ip(&self, dst: IpAddr) -> bool {
        self.table.cluster_ips.contains(dst)
    }

    /// True if NodePorts open on every node address answer on `addr` (one of the node's own),
    /// by `node_port_ranges`.
    #[inline]
    pub fn is_node_port_address(&self, addr: IpAddr) -> bool {
        self.node_port_ranges.is_empty() || self.node_port_ranges.iter().any(|n| n.contains(&addr))
    }

    /// True if `src` is a pod address by `cluster_cidrs`.
    #[inline]
    pub fn is_cluster_source(&self, src: IpAddr) -> bool {
        self.cluster_cidrs.iter().any(|n| n.contains(&src))
    }

    /// True if the connection `entry` (made by the NAT node: `original` is what the client
    /// sent, `reply.src` the backend) still goes to a serving endpoint of its frontend's
    /// Service port. As kube-proxy's conntrack cleanup, this ignores traffic policies,
    /// topology and termination: a change to the Service does not cut a flow to a pod that
    /// still serves, though new connections may go elsewhere.
    pub fn still_valid(&self, entry: &ConnEntry, dst_is_local: bool) -> bool {
        let o = &entry.original;
        let Some(frontend) = self.find(o.dst, o.proto, o.dst_port, dst_is_local) else {
            return false;
        };
        let backend = (entry.reply.src, entry.reply.src_port);
        frontend
            .serving
            .binary_search_by(|b| (b.addr, b.port).cmp(&backend))
            .is_ok()
    }
}

/// sessionAffinity ClientIP: which backend each client was last sent to, per Service port
/// (keyed by [`FrontendEntry::affinity_key`]), so that a client keeps its backend for the
/// affinity timeout after its last new connection (kube-proxy's `recent` match, or its nftables
/// affinity sets), even when the backend set changes around it.
#[derive(Debug, Default)]
pub struct AffinityTable {
    entries: fnv::FnvHashMap<(Frontend, IpAddr), (BackendAddr, crate::graph::Nanos)>,
}

/// Most clients remembered per worker; beyond it new clients go by hash alone until expiry
/// makes room.
pub const AFFINITY_CAPACITY: usize = 65_536;

impl AffinityTable {
    /// The backend `client` keeps for `frontend`, if it was chosen less than `timeout` ago and
    /// `valid` still accepts it.
    pub fn get(
        &self,
        frontend: &Frontend,
        client: IpAddr,
        timeout: crate::graph::Nanos,
        now: crate::graph::Nanos,
        valid: impl Fn(&BackendAddr) -> bool,
    ) -> Option<BackendAddr> {
        let (backend, used) = self.entries.get(&(*frontend, client))?;
        (now.saturating_sub(*used) < timeout && valid(backend)).then_some(*backend)
    }

    /// Records that `client` was sent to `backend` now.
    pub fn record(
        &mut self,
        frontend: Frontend,
        client: IpAddr,
        backend: BackendAddr,
        now: crate::graph::Nanos,
    ) {
        if self.entries.len() >= AFFINITY_CAPACITY
            && !self.entries.contains_key(&(frontend, client))
        {
            return;
        }
        self.entries.insert((frontend, client), (backend, now));
    }

    /// Forgets entries idle for longer than `max_timeout` (the longest affinity timeout).
    pub fn expire(&mut self, now: crate::graph::Nanos, max_timeout: crate::graph::Nanos) {
        self.entries
            .retain(|_, (_, used)| now.saturating_sub(*used) < max_timeout);
    }

    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Packets and bytes of one frontend's traffic to one backend, both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounters {
    /// Connections started.
    pub connections: u64,
    /// Packets, client to backend ([0]) and back ([1]).
    pub packets: [u64; 2],
    /// Bytes (IP packet lengths), same order.
    pub bytes: [u64; 2],
}

/// Per-worker traffic counters per (frontend, backend). A connection is given its counter's
/// slot when it starts (kept in its conntrack entry's `user` value), so a packet of a
/// tracked connection is counted with one array index, no hashing.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    slots: fnv::FnvHashMap<(Frontend, BackendAddr), u32>,
    keys: Vec<(Frontend, BackendAddr)>,
    counters: Vec<BackendCounters>,
}

/// The `user` value of connections that are not to a Service (tracked for NetworkPolicy):
/// no counter slot, and never flushed by a Service change.
pub const NOT_A_SERVICE: u32 = u32::MAX;

/// The `user` value of a Service flow sent on without a translation (a GRE or IP-in-IP
/// tunnel to the backend, or direct server return's delivery), tracked because NetworkPolicy
/// judges it: its packets keep going the Service's way, its replies pass as replies. No
/// counter slot (slots stay below [`MAX_COUNTED_PAIRS`]).
pub const TUNNELLED: u32 = u32::MAX - 2;

/// Most (frontend, backend) pairs counted per worker; pairs beyond it are not counted.
pub const MAX_COUNTED_PAIRS: usize = 1 << 20;

impl ServiceCounters {
    /// The slot of (frontend, backend), made on first use.
    pub fn slot(&mut self, frontend: Frontend, backend: BackendAddr) -> u32 {
        if let Some(&s) = self.slots.get(&(frontend, backend)) {
            return s;
        }
        if self.keys.len() >= MAX_COUNTED_PAIRS {
            // Past the limit: counted nowhere, but still a Service connection.
            return NOT_A_SERVICE - 1;
        }
        let s = self.keys.len() as u32;
        self.slots.insert((frontend, backend), s);
        self.keys.push((frontend, backend));
        self.counters.push(BackendCounters::default());
        s
    }

    /// Counts a new connection on `slot`.
    #[inline]
    pub fn connection(&mut self, slot: u32) {
        if let Some(c) = self.counters.get_mut(slot as usize) {
            c.connections += 1;
        }
    }

    /// Counts a packet of `len` bytes travelling `dir` (0: to the backend) on `slot`.
    #[inline]
    pub fn packet(&mut self, slot: u32, dir: usize, len: u32) {
        if let Some(c) = self.counters.get_mut(slot as usize) {
            c.packets[dir & 1] += 1;
            c.bytes[dir & 1] += u64::from(len);
        }
    }

    /// Every counted pair and its counters.
    pub fn iter(&self) -> impl Iterator<Item = (&(Frontend, BackendAddr), &BackendCounters)> {
        self.keys.iter().zip(&self.counters)
    }
}
