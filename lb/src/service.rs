//! The Service model: Kubernetes Services and their endpoints as plain data, and the compiled
//! form the dataplane looks packets up in.
//!
//! Input ([`Service`], [`ServicePort`], [`Endpoint`]) is what a reducer makes of the API objects
//! (no Kubernetes types here). [`ServiceTable::compile`] turns a set of them into
//! [`Frontend`] → [`FrontendEntry`] entries, one per address/protocol/port a packet may be
//! sent to, each saying what to do with packets from inside and from outside the cluster.
//!
//! The rules are kube-proxy's (`pkg/proxy/topology.go` and its nftables and iptables proxiers),
//! so that swapping kube-proxy for Switchyard changes nothing a workload can observe.
//!
//! # Usable endpoints
//!
//! Chosen per Service port and per IP family: kube-proxy runs one proxier per family, and an
//! endpoint of the other family is ignored.
//!
//! - **Cluster endpoints** are the ready ones. If none is ready anywhere, they are the ones
//!   still serving while terminating: during a rollout that has left only terminating pods,
//!   serving them beats refusing every connection.
//! - **Local endpoints** follow the same rule among the endpoints on this node alone (a local
//!   terminating pod is used when no local pod is ready, even if remote ones are).
//! - **Topology hints** narrow the ready cluster endpoints, as kube-proxy's
//!   `topologyModeFromHints` does: when every ready endpoint carries node hints and one names
//!   this node, only those naming it are used (PreferSameNode); otherwise, when every ready
//!   endpoint carries zone hints and one names this node's zone, only those (the
//!   EndpointSlice controller's topology-aware routing and PreferClose). Partial hints are
//!   ignored. Local endpoints and the serving-terminating fallback are not filtered.
//!
//! # Which endpoints a packet goes to
//!
//! A traffic policy picks a set: Cluster → the cluster endpoints, Local → the local ones.
//!
//! | frontend | `internal` (from inside the cluster) | `external` (from outside) |
//! |---|---|---|
//! | cluster IP | by internalTrafficPolicy | as `internal`, masqueraded |
//! | NodePort, external IP, LB IP | cluster endpoints (the "short-circuit") | by externalTrafficPolicy |
//!
//! NodePort, external-IP and load-balancer traffic is masqueraded, from either side, when the
//! externalTrafficPolicy is Cluster, and not at all when it is Local.
//!
//! - **No usable endpoint at all**: every frontend gets [`Target::Reject`] for both classes of
//!   sender, so clients fail at once (ICMP port unreachable, for TCP too, as kube-proxy's
//!   bare `reject` answers) instead of timing out.
//! - **Local policy, no local endpoint**: [`Target::Drop`]. The Service does have endpoints,
//!   on other nodes; a silent drop lets the client retry and a load balancer's health check
//!   move traffic away, where a reject would claim the Service is down.
//! - **Short-circuit**: a pod on this node that sends to a NodePort or load-balancer address is
//!   treated as if its packet had gone out to the load balancer and come back to a node that
//!   has endpoints: it may use any endpoint, whatever the externalTrafficPolicy.
//! - **Masquerade**: with externalTrafficPolicy Cluster the backend may be on another node, so
//!   the source becomes this node's address and replies come back here to be un-NATed.
//!   Keeping the client's address is the point of Local, so Local traffic is not rewritten. A
//!   cluster IP reached from outside the cluster (a route to the service range pointing at a
//!   node) is masqueraded for the same reason as Cluster traffic (kube-proxy does so when it
//!   can tell cluster traffic from the rest, which is the dataplane's to tell here). Three
//!   cases kube-proxy also masquerades are the dataplane's to spot, as they depend on the
//!   packet, not the Service: traffic the node itself originates towards a NodePort or LB
//!   address with externalTrafficPolicy Local, the node's own traffic to a cluster IP when
//!   pods are told by their addresses (its source is not a pod's), and hairpin traffic (a
//!   backend reaching itself through its Service).
//!
//! # Frontends
//!
//! One per (cluster IP, port), (external IP, port) and (load-balancer IP, port), and one per
//! NodePort: keyed with the unspecified address of each family the Service has a cluster IP in
//! when [`CompileOptions::node_port_addresses`] is empty, else one per listed address of such a
//! family. External and load-balancer IPs of a family the Service has no cluster IP in are
//! ignored, as kube-proxy's proxier for that family does not see the Service, and reported.
//!
//! Compiling is deterministic: Services are taken in [`ServiceName`] order and ports in spec
//! order, and when two claim the same frontend the first keeps it and the other is reported
//! ([`ServiceError::Overlap`]). A bad port or frontend is skipped and reported; everything else
//! is compiled.
//!
//! # Backend sets
//!
//! Every distinct list of backends becomes one [`BackendSet`], a [`MaglevTable`] over backends
//! named `addr:port`, so every node builds the same table and a flow picks the same backend
//! whichever node it lands on. Sets are shared through [`Arc`]: a frontend's `internal` and
//! `external` targets, the ports and address kinds of one Service, and Services with identical
//! endpoints all point at one set. Unless [`CompileOptions::table_size`] fixes it, a set's table
//! size is [`auto_table_size`]: the smallest of a few primes giving at least 100 slots per
//! backend (the Maglev paper's bound for shares within about 1% of each other), which keeps
//! 30,000 Services of 10 endpoints near 4 KiB of table each instead of 256 KiB at the default
//! size.
//!
//! # Affinity and established connections
//!
//! sessionAffinity ClientIP is kept per Service port and family: every frontend of a port
//! shares one [`FrontendEntry::affinity_key`], as kube-proxy's affinity sets belong to the
//! port's endpoints. A tracked connection keeps its backend while that backend still serves
//! ([`FrontendEntry::serving`]), whatever the traffic policies, topology or termination say
//! about new connections, as kube-proxy's conntrack cleanup does.
//!
//! # Source ranges
//!
//! `loadBalancerSourceRanges` (of the frontend's family; ranges of the other family are
//! ignored, as that family's kube-proxy does not see them) restrict who may open connections
//! to a Service's load-balancer IPs, from outside the cluster or inside; other frontends
//! (cluster IPs, NodePorts, external IPs) are not restricted. Established connections are
//! left alone.
//!
//! # Health checks
//!
//! A Service with externalTrafficPolicy Local and a health-check NodePort gets an entry in
//! [`ServiceTable::health_checks`] with its number of local ready endpoints: load balancers
//! probe it and send traffic only to nodes that will not drop it.
//!
//! # Cluster IPs
//!
//! [`ServiceTable::cluster_ips`] holds every cluster IP of a Service with at least one port,
//! with usable endpoints or without: a new connection to one of them on a port or protocol
//! that no frontend matches is refused (kube-proxy's `cluster-ips` set and its
//! `cluster-ips-check` chain), not routed on as if to any address.
//!
//! # Not implemented
//!
//! The `allowFromNode` exception of kube-proxy's firewall (a load-balancer IP reached from the
//! node itself when a source range covers a node address) is not modelled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::maglev::{MaglevError, MaglevTable};

mod backends;
mod cluster_ips;
mod compile;
mod endpoints;
mod incremental;
#[cfg(test)]
mod kube_proxy_probes;
#[cfg(test)]
mod tests;

pub use backends::{auto_table_size, AUTO_TABLE_SIZES, SLOTS_PER_BACKEND};
pub use cluster_ips::ClusterIps;
pub use incremental::ServiceCompiler;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of SCTP.
pub const PROTO_SCTP: u8 = 132;

/// A Service's identity: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => PROTO_SCTP,
        }
    }

    /// The protocol with IP protocol number `number`, if a Service can use it.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            PROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// externalTrafficPolicy / internalTrafficPolicy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// How packets reach a chosen backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// Rewrite the destination to the backend (and back on replies): kube-proxy's way.
    #[default]
    Nat,
    /// Encapsulate in GRE (RFC 2784) towards the backend, destination unchanged.
    Gre,
    /// Encapsulate in IP-in-IP (RFC 2003 / 2473) towards the backend, destination unchanged.
    Ipip,
    /// Direct server return: IP-in-IP to the backend, which answers the client itself with
    /// the service address as source; replies never come back through this node.
    DsrIpip,
}

/// One endpoint of a Service port, as an EndpointSlice describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The endpoint's address (pod IP, or a node IP for tunnelled backends).
    pub addr: IpAddr,
    /// The port the Service port's targetPort resolved to for this endpoint.
    pub port: u16,
    /// True if the endpoint runs on this node (its `nodeName` is ours).
    pub is_local: bool,
    /// EndpointConditions.ready (absent in the API means true).
    pub ready: bool,
    /// EndpointConditions.serving (absent means true, as kube-proxy reads it).
    pub serving: bool,
    /// EndpointConditions.terminating (absent means false).
    pub terminating: bool,
    /// The EndpointSlice's topology hints for this endpoint, as they concern this node.
    pub hints: TopologyHints,
}

/// An endpoint's topology hints (EndpointSlice `hints.forZones`, `hints.forNodes`), reduced
/// to what they say about this node: absent (`None`), naming this node's zone (or this node)
/// (`Some(true)`), or naming only others (`Some(false)`). When every ready endpoint of a port
/// carries hints and some name this node, kube-proxy sends cluster traffic only to those
/// (see [`module documentation`](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TopologyHints {
    /// `hints.forZones` names this node's zone.
    pub zone: Option<bool>,
    /// `hints.forNodes` names this node (`trafficDistribution: PreferSameNode`).
    pub node: Option<bool>,
}

impl Endpoint {
    /// A ready, serving, non-terminating endpoint.
    pub fn ready(addr: IpAddr, port: u16, is_local: bool) -> Self {
        Endpoint {
            addr,
            port,
            is_local,
            ready: true,
            serving: true,
            terminating: false,
            hints: TopologyHints::default(),
        }
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (may be empty when the Service has one port).
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The port on the cluster IPs, external IPs and load-balancer IPs.
    pub port: u16,
    /// The NodePort, if the Service type allocates one.
    pub node_port: Option<u16>,
    /// The endpoints for this port (from the Service's EndpointSlices, matched by port name).
    pub endpoints: Vec<Endpoint>,
}

/// A Service, reduced to what the dataplane needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub name: ServiceName,
    /// spec.clusterIPs (one per family; empty for headless, which the reducer drops).
    pub cluster_ips: Vec<IpAddr>,
    /// spec.externalIPs.
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress[].ip.
    pub load_balancer_ips: Vec<IpAddr>,
    /// spec.ports.
    pub ports: Vec<ServicePort>,
    /// sessionAffinity ClientIP with its timeout in seconds; `None` for no affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// spec.externalTrafficPolicy (applies to NodePorts, external IPs and load-balancer IPs).
    pub external_traffic_policy: TrafficPolicy,
    /// spec.internalTrafficPolicy (applies to cluster IPs).
    pub internal_traffic_policy: TrafficPolicy,
    /// spec.healthCheckNodePort (LoadBalancer Services with externalTrafficPolicy Local).
    pub health_check_node_port: Option<u16>,
    /// spec.loadBalancerSourceRanges: the clients that may open connections to the
    /// load-balancer IPs (empty: anyone).
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// How packets reach the chosen backend.
    pub forwarding: Forwarding,
}

/// Where a packet is addressed: the key the dataplane looks services up by.
///
/// NodePorts are keyed with the unspecified address of their family (`0.0.0.0` / `::`) when
/// they are open on every node address; the dataplane tries the exact key first and, for a
/// destination that is one of the node's own addresses, the unspecified one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// Destination address.
    pub addr: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port.
    pub port: u16,
}

/// Which kind of Service address a frontend is (it decides which traffic policy applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontendKind {
    /// A cluster IP.
    ClusterIp,
    /// A NodePort on a node address.
    NodePort,
    /// An external IP.
    ExternalIp,
    /// A load-balancer ingress IP.
    LoadBalancer,
}

/// A backend as the dataplane uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    /// Address to send to.
    pub addr: IpAddr,
    /// Port to send to (for encapsulating modes, the frontend's port is kept instead).
    pub port: u16,
}

impl BackendAddr {
    /// The backend's Maglev name, `addr:port` (`[addr]:port` for IPv6): the same on every
    /// node, so every node builds the same table.
    pub fn name(&self) -> String {
        SocketAddr::new(self.addr, self.port).to_string()
    }
}

/// A set of backends and the Maglev table that spreads flows over them.
///
/// Build it with [`BackendSet::new`], which keeps `backends` in the table's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSet {
    /// The backends, in the order the Maglev table's [`crate::BackendIndex`] values name them
    /// (sorted by backend name, as [`MaglevTable::backends`] is).
    pub backends: Vec<BackendAddr>,
    /// The Maglev table over `backends` (backend names are `addr:port`, so every node builds
    /// the same table).
    pub maglev: MaglevTable,
}

impl BackendSet {
    /// The backend for a flow with hash `hash`, or `None` when the set is empty.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<BackendAddr> {
        let index = self.maglev.lookup(hash)?;
        self.backends.get(index.get()).copied()
    }

    /// True if the set has no backend.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// What to do with a packet to a frontend, for one class of sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Load-balance over these backends.
    Backends(Arc<BackendSet>),
    /// The Service has no usable endpoints at all: refuse with an ICMP port unreachable
    /// (whatever the protocol), as kube-proxy's REJECT rules do.
    Reject,
    /// The traffic policy is Local and no local endpoint is usable: drop silently, as
    /// kube-proxy does.
    Drop,
}

/// The compiled entry for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntry {
    /// The Service it belongs to.
    pub service: Arc<ServiceName>,
    /// The Service port's name.
    pub port_name: Arc<str>,
    /// What kind of address the frontend is.
    pub kind: FrontendKind,
    /// For packets from inside the cluster (pods, this node). For a cluster IP this follows
    /// internalTrafficPolicy; for the other kinds kube-proxy sends cluster traffic to all
    /// endpoints whatever the externalTrafficPolicy ("short-circuit").
    pub internal: Target,
    /// For packets from outside the cluster. Follows externalTrafficPolicy (a cluster IP
    /// reached from outside is treated as internal with masquerade).
    pub external: Target,
    /// Source-NAT external traffic to the node address (externalTrafficPolicy Cluster, or a
    /// cluster IP reached from outside the cluster).
    pub masquerade_external: bool,
    /// Source-NAT internal traffic to the node address: true for NodePorts, external IPs and
    /// load-balancer IPs with externalTrafficPolicy Cluster (kube-proxy masquerades everything
    /// sent to those, pods included), false for cluster IPs and for externalTrafficPolicy
    /// Local. Hairpin traffic (a backend reaching itself) needs masquerading whatever this
    /// says; that is for the dataplane to spot.
    pub masquerade_internal: bool,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_timeout_secs: Option<u32>,
    /// What sessionAffinity is kept per: the Service port's frontend on its cluster IP of this
    /// frontend's family. kube-proxy remembers a client's endpoint per Service port (one
    /// affinity set per endpoint of the port), so a client keeps its backend whichever of the
    /// port's addresses it connects to: cluster IP, NodePort on any node address, external
    /// or load-balancer IP.
    pub affinity_key: Frontend,
    /// How packets reach the backend.
    pub forwarding: Forwarding,
    /// The port's serving endpoints of this frontend's family, whatever the traffic policies,
    /// topology or termination (those ready or serving), sorted by address and port: the
    /// backends a tracked connection may keep when the Service changes. kube-proxy's
    /// conntrack cleanup removes only flows to endpoints that are no longer serving, so a
    /// rollout does not cut a flow to a pod that is terminating but still serving. Shared by
    /// the port's frontends.
    pub serving: Arc<[BackendAddr]>,
    /// The sources allowed to open connections (a load-balancer IP of a Service with
    /// loadBalancerSourceRanges in this frontend's family); `None`: any source. New
    /// connections from elsewhere are dropped, as kube-proxy's firewall chain does.
    pub source_ranges: Option<Arc<[IpNet]>>,
}

/// A problem found while compiling; the offending frontend or port is skipped, the rest is
/// compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Two Services (or two ports of one) claim the same address, protocol and port.
    #[error("{service}: {frontend:?} is already used by {owner}; skipped")]
    Overlap {
        /// The Service that was skipped.
        service: ServiceName,
        /// The contested frontend.
        frontend: Frontend,
        /// The Service that keeps it.
        owner: ServiceName,
    },
    /// A port number of 0.
    #[error("{service}: port {port_name:?} has port 0; skipped")]
    ZeroPort {
        /// The Service.
        service: ServiceName,
        /// The port's name.
        port_name: String,
    },
    /// A NodePort of 0 (the port's other frontends are compiled).
    #[error("{service}: port {port_name:?} has NodePort 0; its NodePorts are skipped")]
    ZeroNodePort {
        /// The Service.
        service: ServiceName,
        /// The port's name.
        port_name: String,
    },
    /// An external or load-balancer IP of a family the Service has no cluster IP in: kube-proxy
    /// ignores it (its proxier for that family does not see the Service), and so do we.
    #[error("{service}: {addr} is not of an IP family of the cluster IPs; skipped")]
    FamilyMismatch {
        /// The Service.
        service: ServiceName,
        /// The ignored address.
        addr: IpAddr,
    },
    /// Two different Services of the same name were given: neither is compiled, since which
    /// one is meant cannot be told (identical copies are compiled once, silently).
    #[error("{service}: given more than once, with different contents; skipped")]
    DuplicateService {
        /// The name given more than once.
        service: ServiceName,
    },
    /// Two Services claim the same health-check NodePort.
    #[error("{service}: health-check NodePort {port} is already used by {owner}; skipped")]
    HealthCheckOverlap {
        /// The Service that was skipped.
        service: ServiceName,
        /// The contested port.
        port: u16,
        /// The Service that keeps it.
        owner: ServiceName,
    },
    /// A backend set could not be built (more endpoints than a fixed table size has slots);
    /// the port's frontends are skipped.
    #[error("{service}: port {port_name:?}: {error}; skipped")]
    Backends {
        /// The Service.
        service: ServiceName,
        /// The port's name.
        port_name: String,
        /// Why the Maglev table could not be built.
        error: MaglevError,
    },
    /// [`CompileOptions::table_size`] is not a valid Maglev table size; sizes are chosen
    /// automatically instead.
    #[error("table size option: {0}; sizing tables automatically")]
    TableSize(MaglevError),
}

/// Compile-time settings that are not part of any Service.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Addresses NodePorts are open on; empty means every address of the node (keyed with the
    /// unspecified address, see [`Frontend`]).
    pub node_port_addresses: Vec<IpAddr>,
    /// Maglev table size for every backend set (a prime, see [`crate::TableSize`]); `None` to
    /// size each set by its number of backends ([`auto_table_size`]).
    pub table_size: Option<u32>,
}

/// All Services, compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// Frontend → entry.
    pub frontends: HashMap<Frontend, FrontendEntry>,
    /// Health-check NodePorts: port → (Service, number of local ready endpoints). Only Services
    /// with externalTrafficPolicy Local have one. Endpoints are counted by address, over all
    /// ports (a pod serving two ports counts once), taking the larger count of the two IP
    /// families (a dual-stack pod has one address in each).
    pub health_checks: HashMap<u16, (Arc<ServiceName>, usize)>,
    /// Every cluster IP of the Services with a port, whether or not it has endpoints and
    /// whichever of its frontends it kept: new connections to one of these on a port or
    /// protocol no frontend matches are refused, as kube-proxy's `cluster-ips-check` does.
    pub cluster_ips: ClusterIps,
}
