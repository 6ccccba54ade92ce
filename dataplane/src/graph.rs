//! The vector graph engine.
//!
//! Packets move through named [`Node`]s in vectors of up to [`VECTOR_SIZE`]. A node looks at a
//! whole vector at once and says, per packet, which of its next nodes the packet goes to; the
//! engine then hands each next node its share. Three next nodes are built in and end a packet's
//! walk: [`DROP`] (buffer returned to the driver), [`TX`] (sent on `meta.tx_port`) and [`PUNT`]
//! (handed to the control plane). Every node keeps named error counters and, for packets picked
//! for tracing, writes a line saying what it decided.
//!
//! The per-packet cost of the engine itself is kept to moving packets between vectors: a
//! driver's burst enters with [`Graph::receive_burst`] (the queue grown once, no trace check
//! when nothing is traced), a vector whose packets all go to one next node is handed over
//! whole, and one whose packets all leave by one port is appended to that port's transmit
//! queue in one go.

use std::fmt;
use std::num::NonZeroU64;

use crate::buffer::PacketBuffer;
use crate::router_adverts::Advertiser;
use crate::tables::Tables;
use crate::worker::WorkerState;

/// Most packets a node is given at once.
pub const VECTOR_SIZE: usize = 256;

/// Name of the built-in next node that frees the packet.
pub const DROP: &str = "drop";
/// Name of the built-in next node that transmits the packet on `meta.tx_port`.
pub const TX: &str = "tx";
/// Name of the built-in next node that hands the packet to the control plane.
pub const PUNT: &str = "punt";
/// Name of the built-in next node that gives the packet to the node that sent it there, to
/// keep while work on it runs elsewhere (crypto on a device): [`Node::park`] takes it, and
/// [`Node::poll`] sends it on when the work is done.
pub const PARK: &str = "park";
/// Name of the built-in next node that hands the packet to another worker, the one in
/// `meta.handoff` (which owns the packet's connection, see [`crate::flows`]).
pub const HANDOFF: &str = "handoff";
/// Name of the built-in next node that parks the packet until the neighbor table learns
/// something new, then gives it back to the node that parked it (or drops it after
/// [`HOLD_TIME`]).
pub const HOLD: &str = "hold";

/// Longest a packet is held waiting for its next hop to be resolved: three one-second
/// requests, as Linux's default `mcast_solicit`.
pub const HOLD_TIME: Nanos = 3_000_000_000;
/// How often held packets go back to the node that held them, which then asks for their
/// next hop again (RFC 4861's RetransTimer).
pub const RETRY_HELD_EVERY: Nanos = 1_000_000_000;
/// Most packets held at once; more are dropped (counted in [`Graph::hold_overflow`]).
pub const MAX_HELD: usize = 256;

/// Nanoseconds on the caller's monotonic clock; the dataplane never reads a clock itself.
pub type Nanos = u64;

/// Per-packet state carried from node to node beside the buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Port the packet was received on.
    pub rx_port: u16,
    /// Port to transmit on, set by the lookup.
    pub tx_port: u16,
    /// Where the packet goes next at layer 3: the gateway, or the destination when on-link.
    pub next_hop: Option<std::net::IpAddr>,
    /// ICMP error to build, set by a node before passing the packet to an ICMP error node:
    /// type, code and the 32-bit field that follows the checksum (MTU, pointer).
    pub icmp_error: Option<(u8, u8, u32)>,
    /// The packet was made by this node (an ICMP error or echo reply), not received: it is not
    /// forwarded with a TTL decrement.
    pub local_origin: bool,
    /// The packet arrived in a link-layer broadcast or multicast frame.
    pub l2_multicast: bool,
    /// The packet came out of a tunnel this node terminated (GRE, IP-in-IP, ESP).
    pub decapsulated: bool,
    /// The packet came out of an ESP tunnel this node terminated, and its inner header was
    /// checked against its SA's selectors: the inbound check of cleartext against the SAs'
    /// selectors (RFC 4301 5.2) lets it pass, as it does not what other tunnels carried.
    pub esp_decrypted: bool,
    /// The connection-tracking entry the packet belongs to (or, with `conn_related`, is an
    /// ICMP error about), when the NAT node found or made one, or the ACL node found one that
    /// the packet reopens.
    pub conn: Option<crate::conntrack::EntryId>,
    /// `conn` was made, or started over, for this packet (a new connection, not yet allowed
    /// by policy).
    pub conn_new: bool,
    /// The packet is an ICMP error about `conn` (it quotes one of the connection's packets),
    /// not a packet of the connection: NetworkPolicy passes it as related.
    pub conn_related: bool,
    /// When the packet was first parked in [`HOLD`], if it was.
    pub held_since: Option<NonZeroU64>,
    /// 1 + index of this packet's trace record, or 0 when it is not traced.
    pub trace: u32,
    /// The worker the packet is handed to ([`HANDOFF`]); on the receiving worker, the one it
    /// is (so it is not handed on again).
    pub handoff: Handoff,
    /// A fragment that went through virtual reassembly (`ip{4,6}-vreass`): its datagram's
    /// ports are in the worker's table, if its protocol is one whose fragments are followed.
    pub vreass_done: bool,
}

/// [`Meta::handoff`]: a worker index or none, in one byte (so `Meta` stays in 64 bytes, which
/// every packet move copies). Up to 254 workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff(u8);

impl Handoff {
    /// No worker.
    pub const NONE: Handoff = Handoff(0);

    /// Worker `worker` (saturating at the largest that fits).
    pub fn to(worker: u16) -> Handoff {
        Handoff(u8::try_from(worker).map_or(u8::MAX, |w| w.saturating_add(1)))
    }

    /// The worker, if there is one.
    pub fn worker(self) -> Option<u16> {
        self.0.checked_sub(1).map(u16::from)
    }

    /// True when the packet has been or is being handed to a worker.
    pub fn is_set(self) -> bool {
        self.0 != 0
    }
}

/// A packet and its metadata.
#[derive(Debug)]
pub struct Packet<B> {
    /// The bytes.
    pub buf: B,
    /// What the nodes know about it so far.
    pub meta: Meta,
}

impl<B> Packet<B> {
    /// A freshly received packet.
    pub fn received(buf: B, rx_port: u16) -> Self {
        Packet {
            buf,
            meta: Meta {
                rx_port,
                ..Meta::default()
            },
        }
    }
}

/// A named error counter a node declares: a short key (for metrics labels) and a sentence
/// (for people).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorInfo {
    /// Stable short name, e.g. `bad_checksum`.
    pub key: &'static str,
    /// What it means.
    pub text: &'static str,
}

/// Declares a node's error counters as an enum whose variants index its counter array.
///
/// ```ignore
/// node_errors! {
///     pub enum Ip4InputError {
///         BadChecksum = ("bad_checksum", "IPv4 header checksum is wrong"),
///     }
/// }
/// ```
#[macro_export]
macro_rules! node_errors {
    ($vis:vis enum $name:ident { $($variant:ident = ($key:literal, $text:literal)),+ $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        #[allow(missing_docs)]
        $vis enum $name { $($variant),+ }

        impl $name {
            /// The counters, in variant order.
            pub const INFO: &'static [$crate::graph::ErrorInfo] = &[
                $($crate::graph::ErrorInfo { key: $key, text: $text }),+
            ];
        }

        impl From<$name> for usize {
            #[inline]
            fn from(e: $name) -> usize {
                e as usize
            }
        }
    };
}

/// Declares a node's next nodes as an enum whose variants index its next-node list.
///
/// ```ignore
/// node_nexts! {
///     enum Next { Lookup = "ip4-lookup", Drop = "drop" }
/// }
/// ```
#[macro_export]
macro_rules! node_nexts {
    ($vis:vis enum $name:ident { $($variant:ident = $node:expr),+ $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u16)]
        #[allow(missing_docs)]
        $vis enum $name { $($variant),+ }

        impl $name {
            /// The next nodes' names, in variant order.
            pub const NAMES: &'static [&'static str] = &[$($node),+];
        }

        impl From<$name> for $crate::graph::NextIndex {
            #[inline]
            fn from(n: $name) -> $crate::graph::NextIndex {
                n as $crate::graph::NextIndex
            }
        }
    };
}

/// Implements [`Node`] for a node that decides each packet on its own: `$decide` is an
/// associated function `fn(&mut Context<B>, &mut Packet<B>) -> $next`, called for every
/// packet of the vector in turn.
///
/// ```ignore
/// per_packet_node!(Ip4Input, "ip4-input", InputNext, Ip4InputError, check);
/// ```
#[macro_export]
macro_rules! per_packet_node {
    ($node:ty, $name:literal, $next:ty, $errors:ty, $decide:ident) => {
        impl<B: $crate::buffer::PacketBuffer> $crate::graph::Node<B> for $node {
            fn name(&self) -> &'static str {
                $name
            }
            fn next_nodes(&self) -> &'static [&'static str] {
                <$next>::NAMES
            }
            fn errors(&self) -> &'static [$crate::graph::ErrorInfo] {
                <$errors>::INFO
            }
            fn process(
                &mut self,
                cx: &mut $crate::graph::Context<'_, B>,
                pkts: &mut [$crate::graph::Packet<B>],
                next: &mut [$crate::graph::NextIndex],
            ) {
                for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                    *n = Self::$decide(cx, pkt).into();
                }
            }
        }
    };
}

/// The `name`, `next_nodes` and `errors` methods of a node that is generic over the IP family
/// with a `const V6: bool` parameter (one type, two nodes in the graph).
///
/// ```ignore
/// impl<B: PacketBuffer, const V6: bool> Node<B> for IpAcl<V6> {
///     family_node_info!(AclError, "ip4-acl", NEXT4, "ip6-acl", NEXT6);
///     fn process(...) { ... }
/// }
/// ```
#[macro_export]
macro_rules! family_node_info {
    ($errors:ty, $name4:literal, $next4:expr, $name6:literal, $next6:expr) => {
        fn name(&self) -> &'static str {
            if V6 {
                $name6
            } else {
                $name4
            }
        }
        fn next_nodes(&self) -> &'static [&'static str] {
            if V6 {
                $next6
            } else {
                $next4
            }
        }
        fn errors(&self) -> &'static [$crate::graph::ErrorInfo] {
            <$errors>::INFO
        }
    };
}

/// Index into a node's [`Node::next_nodes`].
pub type NextIndex = u16;

/// A graph node.
pub trait Node<B: PacketBuffer> {
    /// The node's name, unique in the graph, e.g. `ip4-input`.
    fn name(&self) -> &'static str;
    /// The names of the nodes this one passes packets to; a packet's [`NextIndex`] indexes this.
    fn next_nodes(&self) -> &'static [&'static str];
    /// The node's error counters; [`Context::error`] takes indexes into this.
    fn errors(&self) -> &'static [ErrorInfo];
    /// Processes a vector: for each packet `pkts[i]` sets `next[i]`.
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]);

    /// Takes a packet this node sent to [`PARK`], in the order of its vector. A node that
    /// never parks keeps the default, which gives the packet back (to be dropped).
    fn park(&mut self, pkt: Packet<B>) -> Result<(), Packet<B>> {
        Err(pkt)
    }

    /// Sends on parked packets whose work is done, with [`Context::spawn`], and returns how
    /// many it still keeps. Called after every dispatch while the node keeps any.
    fn poll(&mut self, _cx: &mut Context<'_, B>) -> usize {
        0
    }
}

/// What a node sees of the world while it processes a vector.
pub struct Context<'a, B> {
    /// The forwarding tables in force for this vector.
    pub tables: &'a Tables,
    /// State the worker keeps across vectors (neighbors, rate limiters).
    pub state: &'a mut WorkerState,
    /// The time, as given by the caller.
    pub now: Nanos,
    errors: &'a mut [u64],
    trace: &'a mut Trace,
    spawned: &'a mut Vec<(Packet<B>, NextIndex)>,
    node: &'static str,
}

impl<B> Context<'_, B> {
    /// Sends an extra packet, made by the node, to its next node `next`.
    pub fn spawn(&mut self, pkt: Packet<B>, next: impl Into<NextIndex>) {
        self.spawned.push((pkt, next.into()));
    }

    /// Counts one occurrence of the node's error `e`.
    #[inline]
    pub fn error(&mut self, e: impl Into<usize>) {
        if let Some(c) = self.errors.get_mut(e.into()) {
            *c += 1;
        }
    }

    /// False when no trace line written now could be kept: no packet has been picked for
    /// tracing since the records were last taken ([`Trace::add`] keeps a line only for a
    /// packet with a record). Nodes test this once per vector and then skip their
    /// per-packet `meta.trace` tests, as the engine does when it hands a vector over.
    #[inline]
    pub fn tracing(&self) -> bool {
        !self.trace.records.is_empty()
    }

    /// Adds a line to the trace of `meta`'s packet, if it is traced. Take care to call this
    /// only behind `meta.trace != 0` when building the line costs anything.
    #[inline]
    pub fn trace(&mut self, meta: &Meta, line: fmt::Arguments<'_>) {
        if meta.trace != 0 {
            self.trace_line(meta.trace, line);
        }
    }

    #[cold]
    #[inline(never)]
    fn trace_line(&mut self, id: u32, line: fmt::Arguments<'_>) {
        self.trace.add(id, self.node, line.to_string());
    }
}

/// The trace of the packets picked for tracing: for each, the nodes it visited and what each
/// decided.
#[derive(Debug, Default)]
pub struct Trace {
    /// Packets still to pick: each received packet is traced while this is above zero.
    pub pending: u32,
    records: Vec<TraceRecord>,
}

/// One traced packet's walk through the graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// `(node, line)` in the order they were written.
    pub lines: Vec<(&'static str, String)>,
}

impl Trace {
    fn pick(&mut self, meta: &mut Meta) {
        if self.pending > 0 && self.records.len() < u32::MAX as usize {
            self.pending -= 1;
            self.records.push(TraceRecord::default());
            meta.trace = self.records.len() as u32;
        }
    }

    fn add(&mut self, id: u32, node: &'static str, line: String) {
        if let Some(r) = (id as usize)
            .checked_sub(1)
            .and_then(|i| self.records.get_mut(i))
        {
            r.lines.push((node, line));
        }
    }

    /// The records so far.
    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }

    /// Takes the records so far, leaving none.
    pub fn take(&mut self) -> Vec<TraceRecord> {
        std::mem::take(&mut self.records)
    }
}

impl fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (node, line) in &self.lines {
            writeln!(f, "  {node:<16} {line}")?;
        }
        Ok(())
    }
}

/// Counters of one node, as "show runtime" and `/metrics` present them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Node name.
    pub name: &'static str,
    /// Vectors processed.
    pub vectors: u64,
    /// Packets processed.
    pub packets: u64,
    /// Per error: the declared info and its count.
    pub errors: Vec<(ErrorInfo, u64)>,
}

/// Where a next-node arc leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Node(usize),
    Drop,
    Tx,
    Punt,
    Hold,
    Park,
    Handoff,
}

struct Slot<B> {
    node: Box<dyn Node<B>>,
    arcs: Vec<Target>,
    queue: Vec<Packet<B>>,
    errors: Vec<u64>,
    vectors: u64,
    packets: u64,
    /// Packets the node keeps (parked, or given back by its last poll as still kept).
    parked: usize,
}

/// Errors found while wiring a graph.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    /// Two nodes have the same name.
    #[error("two graph nodes are named {0}")]
    DuplicateNode(&'static str),
    /// A node names a next node that does not exist.
    #[error("node {node} names next node {next}, which does not exist")]
    UnknownNext {
        /// The node.
        node: &'static str,
        /// The missing next node.
        next: &'static str,
    },
    /// The named input node does not exist.
    #[error("input node {0} does not exist")]
    UnknownInput(&'static str),
}

/// True if every element of `next` is `first`. Without an early exit, so that it compiles to
/// a few wide compares per vector rather than a loop with a branch per packet.
#[inline]
fn all_equal(next: &[NextIndex], first: NextIndex) -> bool {
    next.iter().fold(0, |acc, &x| acc | (x ^ first)) == 0
}

/// Most passes over the nodes in one dispatch; a packet still queued after that is in a loop
/// and is dropped (counted in [`Graph::looped`]).
const MAX_PASSES: usize = 16;

/// A packet parked by [`HOLD`].
struct Held<B> {
    pkt: Packet<B>,
    /// The slot to give it back to.
    slot: usize,
}

/// A wired graph of nodes with its sinks: packets to transmit, to punt and to free.
pub struct Graph<B> {
    slots: Vec<Slot<B>>,
    input: usize,
    next_scratch: Vec<NextIndex>,
    spawned: Vec<(Packet<B>, NextIndex)>,
    held: Vec<Held<B>>,
    /// The neighbor table generation the held packets last saw.
    held_generation: u64,
    /// When held packets were last given another go.
    held_retried: Nanos,
    /// Packets dropped because too many were held.
    pub hold_overflow: u64,
    /// Held packets dropped because their next hop stayed unresolved for [`HOLD_TIME`].
    pub hold_expired: u64,
    /// Packets to transmit, per port.
    pub tx: Vec<Vec<B>>,
    /// The port of each VLAN subinterface (interface `tx.len() + i` leaves by port
    /// `vlan_ports[i]`; `u16::MAX` for an interface that is not one), from the tables of the
    /// last dispatch: the `tx` sink puts a subinterface's frames, tagged by the node that put
    /// the header on, on its port's queue.
    vlan_ports: Vec<u16>,
    /// Packets for the control plane.
    pub punt: Vec<Packet<B>>,
    /// Packets for other workers ([`HANDOFF`]), each with the node that handed it off, where
    /// the other worker takes it up.
    pub handoff: Vec<(usize, Packet<B>)>,
    /// Buffers to give back to the driver.
    pub dropped: Vec<B>,
    /// Packets dropped because they went round the graph more than [`MAX_PASSES`] times.
    pub looped: u64,
    /// Packets for a port that does not exist.
    pub bad_tx_port: u64,
    /// Packets injected at a node index that does not exist.
    pub bad_inject: u64,
    /// Packets sent to [`PARK`] by a node that does not keep packets.
    pub bad_park: u64,
    /// Which packets to trace, and the traces made.
    pub trace: Trace,
}

impl<B: PacketBuffer> Graph<B> {
    /// Wires `nodes` into a graph whose received packets enter at `input`, with `ports` ports.
    /// Nodes are run in the order given, so list them from input towards output.
    pub fn new(
        nodes: Vec<Box<dyn Node<B>>>,
        input: &'static str,
        ports: usize,
    ) -> Result<Self, GraphError> {
        let names: Vec<&'static str> = nodes.iter().map(|n| n.name()).collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(GraphError::DuplicateNode(name));
            }
        }
        let find = |n: &'static str| names.iter().position(|m| *m == n);
        let mut slots = Vec::with_capacity(nodes.len());
        for node in nodes {
            let arcs = node
                .next_nodes()
                .iter()
                .map(|&next| match next {
                    DROP => Ok(Target::Drop),
                    TX => Ok(Target::Tx),
                    PUNT => Ok(Target::Punt),
                    HOLD => Ok(Target::Hold),
                    PARK => Ok(Target::Park),
                    HANDOFF => Ok(Target::Handoff),
                    _ => find(next).map(Target::Node).ok_or(GraphError::UnknownNext {
                        node: node.name(),
                        next,
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            slots.push(Slot {
                errors: vec![0; node.errors().len()],
                arcs,
                queue: Vec::with_capacity(VECTOR_SIZE),
                node,
                vectors: 0,
                packets: 0,
                parked: 0,
            });
        }
        Ok(Graph {
            input: find(input).ok_or(GraphError::UnknownInput(input))?,
            slots,
            next_scratch: vec![0; VECTOR_SIZE],
            spawned: Vec::new(),
            held: Vec::new(),
            held_generation: 0,
            held_retried: 0,
            hold_overflow: 0,
            hold_expired: 0,
            tx: (0..ports)
                .map(|_| Vec::with_capacity(VECTOR_SIZE))
                .collect(),
            vlan_ports: Vec::new(),
            punt: Vec::new(),
            handoff: Vec::new(),
            dropped: Vec::with_capacity(VECTOR_SIZE),
            looped: 0,
            bad_tx_port: 0,
            bad_inject: 0,
            bad_park: 0,
            trace: Trace::default(),
        })
    }

    /// Reroutes every arc from node `node` to node `old` through node `via` instead (a
    /// feature spliced into a path, as VPP's feature arcs do: `via` passes what it does not
    /// take on to `old` by its own arcs). Traces still name `old` as the next node of `node`.
    pub fn splice(
        &mut self,
        node: &'static str,
        old: &'static str,
        via: &'static str,
    ) -> Result<(), GraphError> {
        let find = |name: &'static str| {
            self.node_index(name)
                .ok_or(GraphError::UnknownNext { node, next: name })
        };
        let (from, old_i, via_i) = (
            self.node_index(node)
                .ok_or(GraphError::UnknownInput(node))?,
            find(old)?,
            find(via)?,
        );
        for arc in &mut self.slots[from].arcs {
            if *arc == Target::Node(old_i) {
                *arc = Target::Node(via_i);
            }
        }
        Ok(())
    }

    /// Queues a received packet at the input node.
    #[inline]
    pub fn receive(&mut self, mut pkt: Packet<B>) {
        self.trace.pick(&mut pkt.meta);
        self.slots[self.input].queue.push(pkt);
    }

    /// Queues every buffer of `bufs`, received on `port`, at the input node, leaving `bufs`
    /// empty: [`Graph::receive`] for a driver's whole burst, with the queue grown once and,
    /// when no packet is to be traced, no per-packet trace check.
    #[inline]
    pub fn receive_burst(&mut self, bufs: &mut Vec<B>, port: u16) {
        if self.trace.pending > 0 {
            for buf in bufs.drain(..) {
                self.receive(Packet::received(buf, port));
            }
            return;
        }
        let queue = &mut self.slots[self.input].queue;
        queue.reserve(bufs.len());
        for buf in bufs.drain(..) {
            queue.push(Packet::received(buf, port));
        }
    }

    /// The index of the node named `name`, for [`Graph::inject`].
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.node.name() == name)
    }

    /// Queues a packet at node `node` (an index from [`Graph::node_index`]) instead of the
    /// input: for packets that enter the graph part-way, such as those the host stack sends
    /// through the punt path, which start at the IP header and go to the lookup. A packet
    /// for an index that does not exist is dropped (counted in [`Graph::bad_inject`]).
    #[inline]
    pub fn inject(&mut self, node: usize, mut pkt: Packet<B>) {
        match self.slots.get_mut(node) {
            Some(slot) => {
                self.trace.pick(&mut pkt.meta);
                slot.queue.push(pkt);
            }
            None => {
                self.bad_inject += 1;
                self.dropped.push(pkt.buf);
            }
        }
    }

    /// Runs the nodes until every queued packet has reached a sink, then gives held packets
    /// another go if the neighbor table learned something meanwhile.
    pub fn dispatch(&mut self, tables: &Tables, state: &mut WorkerState, now: Nanos) {
        self.run_passes(tables, state, now);
        if self.release_held(state, now) {
            self.run_passes(tables, state, now);
        }
        // Parked packets whose work finished meanwhile go on at once; a device that answers
        // in well under a dispatch (a software crypto PMD) costs no extra turn of the loop.
        for _ in 0..MAX_PASSES {
            if !self.poll_parked(tables, state, now) {
                break;
            }
            self.run_passes(tables, state, now);
        }
    }

    /// Packets nodes keep parked (crypto in flight): while there are any, the caller should
    /// keep calling [`Graph::dispatch`], even without new packets.
    pub fn parked(&self) -> usize {
        self.slots.iter().map(|s| s.parked).sum()
    }

    /// Polls every node that keeps parked packets; true if any sent packets on.
    fn poll_parked(&mut self, tables: &Tables, state: &mut WorkerState, now: Nanos) -> bool {
        let mut moved = false;
        for i in 0..self.slots.len() {
            if self.slots[i].parked == 0 {
                continue;
            }
            let slot = &mut self.slots[i];
            let mut cx = Context {
                tables,
                state,
                now,
                errors: &mut slot.errors,
                trace: &mut self.trace,
                spawned: &mut self.spawned,
                node: slot.node.name(),
            };
            slot.parked = slot.node.poll(&mut cx);
            if !self.spawned.is_empty() {
                moved = true;
                let arcs = std::mem::take(&mut self.slots[i].arcs);
                self.forward_spawned(i, &arcs, now);
                self.slots[i].arcs = arcs;
            }
        }
        moved
    }

    /// Gives held packets another go once a second (so their resolution is asked for again)
    /// and answers those that waited too long; call about once a second. True when packets
    /// were queued: the caller should dispatch.
    pub fn housekeeping(
        &mut self,
        state: &mut WorkerState,
        now: Nanos,
        mut alloc: impl FnMut() -> Option<B>,
    ) -> bool
    where
        B: crate::buffer::PacketBuffer,
    {
        let mut queued = !self.held.is_empty() && self.release_held(state, now);
        // Datagrams that never completed: time exceeded (reassembly) to their senders, about
        // the first fragment (RFC 1122 3.3.2, RFC 8200 4.5).
        for bytes in std::mem::take(&mut state.reassembly.timed_out_first) {
            let Some(mut buf) = alloc() else {
                break;
            };
            buf.truncate(0);
            if !buf.push_back(bytes.len()) {
                self.dropped.push(buf);
                continue;
            }
            buf.data_mut().copy_from_slice(&bytes);
            let (node, error) = match bytes.first().map(|b| b >> 4) {
                Some(6) => ("icmp6-error", (3, 1)),
                _ => ("icmp4-error", (11, 1)),
            };
            match self.node_index(node) {
                Some(slot) => {
                    let meta = Meta {
                        icmp_error: Some((error.0, error.1, 0)),
                        ..Meta::default()
                    };
                    self.slots[slot].queue.push(Packet { buf, meta });
                    queued = true;
                }
                None => self.dropped.push(buf),
            }
        }
        queued
    }

    /// Queues the router advertisements that are due for transmission, IPv6 (RFC 4861) and
    /// IPv4 (RFC 1256) as configured (see [`crate::router_adverts`]); cheap when none is, so
    /// call it every turn. The first worker keeps the unsolicited schedule of every port with
    /// an address of the family. True when frames were queued.
    pub fn advertise_routers(
        &mut self,
        tables: &Tables,
        state: &mut WorkerState,
        now: Nanos,
        mut alloc: impl FnMut() -> Option<B>,
    ) -> bool
    where
        B: crate::buffer::PacketBuffer,
    {
        self.sync_vlan_ports(tables);
        let mut queued = false;
        let worker = state.worker;
        if let Some(config) = &tables.router_adverts {
            queued |= self.advertise_family(
                (&mut state.router_adverts, tables, worker, now),
                config.intervals(),
                |ifc| !ifc.ipv6.is_empty(),
                |buf, ifc| crate::nodes::icmp6::nd::make_router_advert(buf, ifc, config),
                &mut alloc,
            );
        }
        if let Some(config) = &tables.ipv4_router_discovery {
            queued |= self.advertise_family(
                (&mut state.ipv4_router_adverts, tables, worker, now),
                config.intervals(),
                |ifc| !ifc.ipv4.is_empty(),
                |buf, ifc| crate::nodes::icmp4::make_router_advert(buf, ifc, config),
                &mut alloc,
            );
        }
        queued
    }

    /// [`Graph::advertise_routers`] for one family: the ports whose interface `advertises`
    /// by `schedule` (started or stopped here by the first worker when the tables changed),
    /// each advertisement made by `build`. True when frames were queued.
    fn advertise_family(
        &mut self,
        (schedule, tables, worker, now): (&mut Advertiser, &Tables, u16, Nanos),
        intervals: (u16, u16),
        advertises: impl Fn(&crate::tables::Interface) -> bool,
        build: impl Fn(&mut B, &crate::tables::Interface) -> bool,
        alloc: &mut impl FnMut() -> Option<B>,
    ) -> bool {
        if worker == 0 && schedule.tables_version != Some(tables.version) {
            schedule.tables_version = Some(tables.version);
            for (port, ifc) in tables.interfaces.iter().enumerate() {
                if advertises(ifc) {
                    schedule.start(port as u16, now);
                } else {
                    schedule.stop(port as u16);
                }
            }
        }
        let mut queued = false;
        let due: Vec<u16> = schedule.due(now).collect();
        for port in due {
            let Some(ifc) = tables.interface(port).filter(|i| advertises(i)) else {
                schedule.stop(port);
                continue;
            };
            let Some(mut buf) = alloc() else {
                break;
            };
            schedule.sent(port, now, intervals);
            let built = build(&mut buf, ifc);
            queued |= self.queue_frame(port, buf, built);
        }
        queued
    }

    /// Queues the multicast listener reports that are due ([`crate::mld`]): the first worker
    /// announces each port's groups when they change (the tables' addresses), any worker
    /// answers the queries it received. Cheap when nothing is due, so call it every turn.
    /// True when frames were queued.
    pub fn report_listeners(
        &mut self,
        tables: &Tables,
        state: &mut WorkerState,
        now: Nanos,
        mut alloc: impl FnMut() -> Option<B>,
    ) -> bool
    where
        B: crate::buffer::PacketBuffer,
    {
        self.sync_vlan_ports(tables);
        let listener = &mut state.listener_reports;
        if listener.tables_version != Some(tables.version) {
            listener.tables_version = Some(tables.version);
            for (port, ifc) in tables.interfaces.iter().enumerate() {
                // Ports without IPv6 have no groups; only the first worker announces.
                let groups = if ifc.ipv6.is_empty() {
                    Vec::new()
                } else {
                    crate::mld::groups(ifc)
                };
                if state.worker == 0 {
                    listener.set_groups(port as u16, groups, now);
                } else {
                    listener.set_groups_quietly(port as u16, groups);
                }
            }
        }
        let mut queued = false;
        for (port, kind) in listener.due(now) {
            let Some(ifc) = tables.interface(port) else {
                continue;
            };
            let Some(mut buf) = alloc() else {
                break;
            };
            let built = crate::mld::make_report(&mut buf, ifc, listener.groups_of(port), kind);
            queued |= self.queue_frame(port, buf, built);
        }
        queued
    }

    /// Sends the unicast probes of neighbors in DELAY or PROBE that are due (RFC 4861 7.3.3,
    /// [`crate::worker::NeighborTable::due_probes`]); cheap when none is, so call it every
    /// turn. True when frames were queued.
    pub fn probe_neighbors(
        &mut self,
        tables: &Tables,
        state: &mut WorkerState,
        now: Nanos,
        mut alloc: impl FnMut() -> Option<B>,
    ) -> bool
    where
        B: crate::buffer::PacketBuffer,
    {
        self.sync_vlan_ports(tables);
        let mut due = Vec::new();
        state.neighbors.due_probes(now, &mut due);
        let mut queued = false;
        for (port, ip, mac) in due {
            let Some(ifc) = tables.interface(port) else {
                continue;
            };
            let Some(mut buf) = alloc() else {
                break;
            };
            let built = crate::nodes::neighbor::make_request(&mut buf, ifc, ip, Some(mac));
            queued |= self.queue_frame(port, buf, built);
        }
        queued
    }

    /// Queues `buf` for transmission on interface `port` if it was `built`; true if it was
    /// queued.
    fn queue_frame(&mut self, port: u16, buf: B, built: bool) -> bool {
        let port = self.tx_port_of(port);
        match self.tx.get_mut(usize::from(port)) {
            Some(q) if built => {
                q.push(buf);
                true
            }
            _ => {
                self.dropped.push(buf);
                false
            }
        }
    }

    /// Takes in the VLAN subinterfaces of `tables` for the `tx` sink (see
    /// `vlan_ports`): one test per call without them.
    #[inline]
    fn sync_vlan_ports(&mut self, tables: &Tables) {
        if !tables.vlans.is_empty() || !self.vlan_ports.is_empty() {
            self.set_vlan_ports(tables);
        }
    }

    #[cold]
    #[inline(never)]
    fn set_vlan_ports(&mut self, tables: &Tables) {
        self.vlan_ports.clear();
        let ports = self.tx.len();
        self.vlan_ports.extend(
            tables
                .interfaces
                .iter()
                .skip(ports)
                .map(|i| i.vlan.map_or(u16::MAX, |v| v.parent)),
        );
    }

    /// The port interface `ifc` transmits on: itself for a port, the parent of a VLAN
    /// subinterface; `u16::MAX` for neither.
    #[inline]
    fn tx_port_of(&self, ifc: u16) -> u16 {
        match usize::from(ifc).checked_sub(self.tx.len()) {
            None => ifc,
            Some(i) => self.vlan_ports.get(i).copied().unwrap_or(u16::MAX),
        }
    }

    /// The `tx` sink for a packet whose `tx_port` is not a port: a VLAN subinterface's goes
    /// to its port's queue, anything else is dropped.
    #[cold]
    #[inline(never)]
    fn transmit_other(&mut self, pkt: Packet<B>) {
        let port = self.tx_port_of(pkt.meta.tx_port);
        match self.tx.get_mut(usize::from(port)) {
            Some(q) => q.push(pkt.buf),
            None => {
                self.bad_tx_port += 1;
                self.dropped.push(pkt.buf);
            }
        }
    }

    /// Queues a final router advertisement with a lifetime of zero on every port that
    /// advertised (RFC 4861 6.2.5, RFC 1256 4.3), for a router about to stop: hosts drop it
    /// as a default router at once instead of when its lifetime runs out. The first worker's
    /// job; true when frames were queued.
    pub fn withdraw_router_adverts(
        &mut self,
        tables: &Tables,
        state: &WorkerState,
        mut alloc: impl FnMut() -> Option<B>,
    ) -> bool
    where
        B: crate::buffer::PacketBuffer,
    {
        if state.worker != 0 {
            return false;
        }
        self.sync_vlan_ports(tables);
        let last6 = tables
            .router_adverts
            .as_ref()
            .map(|c| crate::router_adverts::RaConfig {
                default_lifetime: 0,
                ..c.clone()
            });
        let last4 =
            tables
                .ipv4_router_discovery
                .as_ref()
                .map(|c| crate::router_adverts::IrdpConfig {
                    lifetime: 0,
                    ..c.clone()
                });
        let mut queued = false;
        for (port, ifc) in tables.interfaces.iter().enumerate() {
            let port = port as u16;
            if let Some(config) = last6.as_ref().filter(|_| !ifc.ipv6.is_empty()) {
                let Some(mut buf) = alloc() else { break };
                let built = crate::nodes::icmp6::nd::make_router_advert(&mut buf, ifc, config);
                queued |= self.queue_frame(port, buf, built);
            }
            if let Some(config) = last4.as_ref().filter(|_| !ifc.ipv4.is_empty()) {
                let Some(mut buf) = alloc() else { break };
                let built = crate::nodes::icmp4::make_router_advert(&mut buf, ifc, config);
                queued |= self.queue_frame(port, buf, built);
            }
        }
        queued
    }

    /// Number of packets held for neighbor resolution.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Expires old held packets and, when the neighbor table changed or a second went by since
    /// the last retry, queues the rest back at the nodes that held them (which ask for the
    /// address again, at most once a second: RFC 4861 7.2.2's retransmissions). A packet that
    /// waited [`HOLD_TIME`] in vain is answered with destination unreachable (address
    /// unreachable, RFC 4861 7.2.2; host unreachable, RFC 1812 5.2.7.1) unless this node made
    /// it. True if any were queued.
    fn release_held(&mut self, state: &WorkerState, now: Nanos) -> bool {
        let generation = state.neighbors.generation();
        let retry = now.saturating_sub(self.held_retried) >= RETRY_HELD_EVERY;
        let changed = generation != self.held_generation || retry;
        self.held_generation = generation;
        if retry {
            self.held_retried = now;
        }
        let mut requeued = false;
        for h in std::mem::take(&mut self.held) {
            let since = h.pkt.meta.held_since.map_or(now, NonZeroU64::get);
            if now.saturating_sub(since) >= HOLD_TIME {
                self.hold_expired += 1;
                requeued |= self.unreachable(h.pkt);
            } else if changed {
                self.slots[h.slot].queue.push(h.pkt);
                requeued = true;
            } else {
                self.held.push(h);
            }
        }
        requeued
    }

    /// Sends a packet whose next hop never answered to the ICMP error node of its family
    /// (destination unreachable: host for IPv4, address for IPv6); drops it if this node made
    /// it or the graph has no such node. True if queued.
    fn unreachable(&mut self, mut pkt: Packet<B>) -> bool
    where
        B: crate::buffer::PacketBuffer,
    {
        let (node, error) = match pkt.buf.data().first().map(|b| b >> 4) {
            Some(4) => ("icmp4-error", (3, 1)),
            Some(6) => ("icmp6-error", (1, 3)),
            _ => ("", (0, 0)),
        };
        match self.node_index(node) {
            Some(slot) if !pkt.meta.local_origin => {
                pkt.meta.icmp_error = Some((error.0, error.1, 0));
                pkt.meta.held_since = None;
                self.slots[slot].queue.push(pkt);
                true
            }
            _ => {
                self.dropped.push(pkt.buf);
                false
            }
        }
    }

    fn run_passes(&mut self, tables: &Tables, state: &mut WorkerState, now: Nanos) {
        self.sync_vlan_ports(tables);
        for _ in 0..MAX_PASSES {
            let mut ran = false;
            for i in 0..self.slots.len() {
                while !self.slots[i].queue.is_empty() {
                    ran = true;
                    self.run_node(i, tables, state, now);
                }
            }
            if !ran {
                return;
            }
        }
        for slot in &mut self.slots {
            for pkt in slot.queue.drain(..) {
                self.looped += 1;
                self.dropped.push(pkt.buf);
            }
        }
    }

    fn run_node(&mut self, i: usize, tables: &Tables, state: &mut WorkerState, now: Nanos) {
        // Take at most one vector; anything beyond waits for the next turn.
        let mut pkts = std::mem::take(&mut self.slots[i].queue);
        let rest = if pkts.len() > VECTOR_SIZE {
            pkts.split_off(VECTOR_SIZE)
        } else {
            Vec::new()
        };
        let n = pkts.len();
        let slot = &mut self.slots[i];
        slot.queue = rest;
        slot.vectors += 1;
        slot.packets += n as u64;
        let next = &mut self.next_scratch[..n];
        next.fill(0);
        let mut cx = Context {
            tables,
            state,
            now,
            errors: &mut slot.errors,
            trace: &mut self.trace,
            spawned: &mut self.spawned,
            node: slot.node.name(),
        };
        slot.node.process(&mut cx, &mut pkts, next);

        if let Some(pkts) = self.hand_over_whole(i, pkts) {
            self.scatter(i, pkts, now);
        }
    }

    /// When every packet of the vector goes to the same node and that node's queue is empty,
    /// hands the whole vector over in one move instead of packet by packet (most vectors, on
    /// the forwarding path); when every packet goes to `tx`, queues them for transmission in
    /// one tight loop. Gives the vector back when it cannot do either.
    #[inline]
    fn hand_over_whole(&mut self, i: usize, pkts: Vec<Packet<B>>) -> Option<Vec<Packet<B>>> {
        let n = pkts.len();
        let first = *self.next_scratch.first()?;
        if n == 0 || !self.spawned.is_empty() || !all_equal(&self.next_scratch[..n], first) {
            return Some(pkts);
        }
        let j = match self.slots[i].arcs.get(usize::from(first)).copied() {
            Some(Target::Node(j)) if j != i && self.slots[j].queue.is_empty() => Some(j),
            Some(Target::Tx) => None,
            _ => return Some(pkts),
        };
        if !self.trace.records.is_empty() {
            for pkt in pkts.iter().filter(|p| p.meta.trace != 0) {
                self.trace_next(i, pkt.meta.trace, first);
            }
        }
        let spare = match j {
            Some(j) => std::mem::replace(&mut self.slots[j].queue, pkts),
            None => self.transmit_all(pkts),
        };
        if self.slots[i].queue.is_empty() {
            self.slots[i].queue = spare;
        }
        None
    }

    /// Puts every packet of a vector on its port's transmit queue (a whole vector for the
    /// `tx` sink, as from `neighbor-output`), and returns the emptied vector.
    #[inline]
    fn transmit_all(&mut self, mut pkts: Vec<Packet<B>>) -> Vec<Packet<B>> {
        // Usually the whole vector leaves by one port: then the buffers are appended in one
        // go, the queue grown once rather than checked per packet.
        // The test is an OR over the vector without an early exit, a few instructions per
        // packet and no branch.
        let port = pkts.first().map_or(0, |p| p.meta.tx_port);
        if pkts.iter().fold(0, |acc, p| acc | (p.meta.tx_port ^ port)) == 0 {
            if let Some(q) = self.tx.get_mut(usize::from(port)) {
                q.extend(pkts.drain(..).map(|p| p.buf));
                return pkts;
            }
        }
        for pkt in pkts.drain(..) {
            match self.tx.get_mut(usize::from(pkt.meta.tx_port)) {
                Some(q) => q.push(pkt.buf),
                None => self.transmit_other(pkt),
            }
        }
        pkts
    }

    /// Sends each packet of a processed vector (and any the node spawned) on its way.
    fn scatter(&mut self, i: usize, mut pkts: Vec<Packet<B>>, now: Nanos) {
        // The node's arcs and the next indexes are lent out for the loop, so that each packet
        // is moved straight to its queue in one inlined step (most go to a sink: transmit).
        let arcs = std::mem::take(&mut self.slots[i].arcs);
        let next = std::mem::take(&mut self.next_scratch);
        for (pkt, &nx) in pkts.drain(..).zip(next.iter()) {
            self.forward(i, &arcs, pkt, nx, now);
        }
        self.next_scratch = next;
        self.forward_spawned(i, &arcs, now);
        self.slots[i].arcs = arcs;
        // Give the (now empty) vector's allocation back if the queue did not grow meanwhile.
        if self.slots[i].queue.is_empty() {
            self.slots[i].queue = pkts;
        }
    }

    /// Moves the packets node `i` spawned (whose arcs are `arcs`, lent out) on their way.
    fn forward_spawned(&mut self, i: usize, arcs: &[Target], now: Nanos) {
        let mut spawned = std::mem::take(&mut self.spawned);
        for (pkt, nx) in spawned.drain(..) {
            self.forward(i, arcs, pkt, nx, now);
        }
        self.spawned = spawned;
    }

    /// Moves a packet leaving slot `i` (whose arcs are `arcs`) by its next index `nx`.
    #[inline(always)]
    fn forward(&mut self, i: usize, arcs: &[Target], pkt: Packet<B>, nx: NextIndex, now: Nanos) {
        let target = arcs.get(usize::from(nx)).copied().unwrap_or(Target::Drop);
        if pkt.meta.trace != 0 {
            self.trace_next(i, pkt.meta.trace, nx);
        }
        match target {
            Target::Node(j) => self.slots[j].queue.push(pkt),
            Target::Drop => self.dropped.push(pkt.buf),
            Target::Punt => self.punt.push(pkt),
            Target::Handoff => self.handoff.push((i, pkt)),
            Target::Hold if self.held.len() < MAX_HELD => {
                let mut pkt = pkt;
                pkt.meta
                    .held_since
                    .get_or_insert(NonZeroU64::new(now).unwrap_or(NonZeroU64::MIN));
                self.held.push(Held { pkt, slot: i });
            }
            Target::Hold => {
                self.hold_overflow += 1;
                self.dropped.push(pkt.buf);
            }
            Target::Park => match self.slots[i].node.park(pkt) {
                Ok(()) => self.slots[i].parked += 1,
                Err(pkt) => {
                    self.bad_park += 1;
                    self.dropped.push(pkt.buf);
                }
            },
            Target::Tx => match self.tx.get_mut(usize::from(pkt.meta.tx_port)) {
                Some(q) => q.push(pkt.buf),
                None => self.transmit_other(pkt),
            },
        }
    }

    /// Records in a packet's trace which next node slot `i` sent it to.
    #[inline(never)]
    #[cold]
    fn trace_next(&mut self, i: usize, trace: u32, nx: NextIndex) {
        let node = &self.slots[i].node;
        let to = node
            .next_nodes()
            .get(usize::from(nx))
            .copied()
            .unwrap_or(DROP);
        self.trace.add(trace, node.name(), format!("-> {to}"));
    }

    /// Every node's counters.
    pub fn counters(&self) -> Vec<NodeCounters> {
        self.slots
            .iter()
            .map(|s| NodeCounters {
                name: s.node.name(),
                vectors: s.vectors,
                packets: s.packets,
                errors: s
                    .node
                    .errors()
                    .iter()
                    .copied()
                    .zip(s.errors.iter().copied())
                    .collect(),
            })
            .collect()
    }

    /// The value of one error counter, by node name and error key (for tests and metrics).
    pub fn error_count(&self, node: &str, key: &str) -> Option<u64> {
        let slot = self.slots.iter().find(|s| s.node.name() == node)?;
        let i = slot.node.errors().iter().position(|e| e.key == key)?;
        slot.errors.get(i).copied()
    }
}

impl<B: PacketBuffer> fmt::Debug for Graph<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field(
                "nodes",
                &self.slots.iter().map(|s| s.node.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::HeapBuffer;

    /// Every packet move copies `Meta`: it must stay in one cache line's worth of bytes.
    #[test]
    fn meta_fits_in_64_bytes() {
        assert!(std::mem::size_of::<Meta>() <= 64);
    }

    node_errors! {
        enum TestError {
            Odd = ("odd", "first byte is odd"),
        }
    }

    /// Sends packets whose first byte is even to `second`, odd ones to drop.
    struct First;
    impl Node<HeapBuffer> for First {
        fn name(&self) -> &'static str {
            "first"
        }
        fn next_nodes(&self) -> &'static [&'static str] {
            &["second", DROP]
        }
        fn errors(&self) -> &'static [ErrorInfo] {
            TestError::INFO
        }
        fn process(
            &mut self,
            cx: &mut Context<'_, HeapBuffer>,
            pkts: &mut [Packet<HeapBuffer>],
            next: &mut [NextIndex],
        ) {
            for (p, n) in pkts.iter().zip(next.iter_mut()) {
                if p.buf.data()[0] % 2 == 1 {
                    cx.error(TestError::Odd);
                    *n = 1;
                } else {
                    cx.trace(&p.meta, format_args!("even"));
                    *n = 0;
                }
            }
        }
    }

    /// Transmits on port 1.
    struct Second;
    impl Node<HeapBuffer> for Second {
        fn name(&self) -> &'static str {
            "second"
        }
        fn next_nodes(&self) -> &'static [&'static str] {
            &[TX]
        }
        fn errors(&self) -> &'static [ErrorInfo] {
            &[]
        }
        fn process(
            &mut self,
            _cx: &mut Context<'_, HeapBuffer>,
            pkts: &mut [Packet<HeapBuffer>],
            next: &mut [NextIndex],
        ) {
            for (p, n) in pkts.iter_mut().zip(next.iter_mut()) {
                p.meta.tx_port = 1;
                *n = 0;
            }
        }
    }

    #[test]
    fn packets_reach_sinks_counted_and_traced() {
        let mut g: Graph<HeapBuffer> =
            Graph::new(vec![Box::new(First), Box::new(Second)], "first", 2).unwrap();
        g.trace.pending = 1;
        for i in 0..600u32 {
            g.receive(Packet::received(HeapBuffer::from_bytes(&[i as u8]), 0));
        }
        g.dispatch(&Tables::default(), &mut WorkerState::default(), 0);
        assert_eq!(g.tx[1].len(), 300);
        assert_eq!(g.dropped.len(), 300);
        assert_eq!(g.error_count("first", "odd"), Some(300));
        let c = g.counters();
        assert_eq!(c[0].packets, 600);
        assert_eq!(c[0].vectors, 3);
        let t = g.trace.take();
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0].lines,
            vec![
                ("first", "even".to_string()),
                ("first", "-> second".to_string()),
                ("second", "-> tx".to_string())
            ]
        );
    }

    /// Transmits each packet on the port its first byte names.
    struct ByFirstByte;
    impl Node<HeapBuffer> for ByFirstByte {
        fn name(&self) -> &'static str {
            "by-first-byte"
        }
        fn next_nodes(&self) -> &'static [&'static str] {
            &[TX]
        }
        fn errors(&self) -> &'static [ErrorInfo] {
            &[]
        }
        fn process(
            &mut self,
            _cx: &mut Context<'_, HeapBuffer>,
            pkts: &mut [Packet<HeapBuffer>],
            next: &mut [NextIndex],
        ) {
            for (p, n) in pkts.iter_mut().zip(next.iter_mut()) {
                p.meta.tx_port = u16::from(p.buf.data()[0]);
                *n = 0;
            }
        }
    }

    #[test]
    fn bursts_are_received_traced_and_sent_by_port() {
        let run = |ports: &[u8], trace: u32| {
            let mut g: Graph<HeapBuffer> =
                Graph::new(vec![Box::new(ByFirstByte)], "by-first-byte", 2).unwrap();
            g.trace.pending = trace;
            let mut burst: Vec<HeapBuffer> = ports
                .iter()
                .map(|&p| HeapBuffer::from_bytes(&[p]))
                .collect();
            g.receive_burst(&mut burst, 0);
            assert!(burst.is_empty());
            g.dispatch(&Tables::default(), &mut WorkerState::default(), 0);
            (
                g.tx[0].len(),
                g.tx[1].len(),
                g.bad_tx_port,
                g.trace.take().len(),
            )
        };
        // One port for the whole vector (appended at once), mixed ports, a port that does not
        // exist; traced or not.
        assert_eq!(run(&[1; 300], 0), (0, 300, 0, 0));
        assert_eq!(run(&[1; 300], 2), (0, 300, 0, 2));
        assert_eq!(run(&[0, 1, 1, 0, 1], 0), (2, 3, 0, 0));
        assert_eq!(run(&[1, 1, 7, 0], 1), (1, 2, 1, 1));
        assert_eq!(run(&[7, 7], 0), (0, 0, 2, 0));
    }

    #[test]
    fn injected_packets_start_at_their_node() {
        let mut g: Graph<HeapBuffer> =
            Graph::new(vec![Box::new(First), Box::new(Second)], "first", 2).unwrap();
        let second = g.node_index("second").unwrap();
        assert_eq!(g.node_index("nope"), None);
        g.trace.pending = 1;
        // Odd first byte: "first" would drop it, "second" transmits it.
        g.inject(second, Packet::received(HeapBuffer::from_bytes(&[1]), 0));
        g.inject(99, Packet::received(HeapBuffer::from_bytes(&[1]), 0));
        g.dispatch(&Tables::default(), &mut WorkerState::default(), 0);
        assert_eq!(g.tx[1].len(), 1);
        assert_eq!(g.dropped.len(), 1);
        assert_eq!(g.bad_inject, 1);
        assert_eq!(g.error_count("first", "odd"), Some(0));
        let t = g.trace.take();
        assert_eq!(t[0].lines, vec![("second", "-> tx".to_string())]);
    }

    #[test]
    fn wiring_errors_are_reported() {
        let r = Graph::<HeapBuffer>::new(vec![Box::new(First)], "first", 1);
        assert_eq!(
            r.err(),
            Some(GraphError::UnknownNext {
                node: "first",
                next: "second"
            })
        );
        let r = Graph::<HeapBuffer>::new(vec![Box::new(Second)], "nope", 1);
        assert_eq!(r.err(), Some(GraphError::UnknownInput("nope")));
    }
}
