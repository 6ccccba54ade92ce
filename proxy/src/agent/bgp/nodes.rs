//! BGP peers from Node objects, as kube-router takes them: the peers this node's annotations
//! name, this node's AS and route-reflector role, and the iBGP full mesh among the nodes.
//!
//! # Annotations
//!
//! Read under `switchyard.io/` and, as kube-router writes them, under `kube-router.io/`;
//! where both are set, `switchyard.io/` wins. The peer keys are one group (their lists line up
//! entry by entry, so mixing the two prefixes could pair one's addresses with the other's AS
//! numbers): if any `switchyard.io/peer.*` key is set, all four are read from there. The same
//! holds for the two `rr.*` keys; `node.asn` stands alone.
//!
//! | key | value |
//! |---|---|
//! | `peer.ips` | comma list of peer addresses |
//! | `peer.asns` | comma list of their AS numbers, one per address |
//! | `peer.passwords` | optional comma list of their TCP MD5 passwords, base64 (as kube-router), one per address; an empty entry is no password |
//! | `peer.ports` | optional comma list of their ports, one per address (default 179) |
//! | `node.asn` | this node's AS (instead of `--bgp-asn`) |
//! | `rr.server` | this node is a route reflector with this cluster id (IPv4 or a number) |
//! | `rr.client` | this node is a route-reflector client (the value names the cluster) |
//!
//! A bad value is reported once and the node's last good annotations stay in force; nothing
//! here logs a password or panics.
//!
//! # The mesh
//!
//! With the iBGP mesh on (the default, kube-router's `--enable-ibgp`), every other Node whose
//! AS (its `node.asn`, else `--bgp-asn`) is ours becomes an iBGP peer at its first InternalIP of
//! this node's address family, on our own BGP port (every node listens on the same one). Route
//! reflection narrows it: a client peers only with reflectors, and so only reflectors peer with
//! a client (kube-router leaves the second half out, which leaves sessions that the client
//! refuses forever); a reflector marks its clients as such.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Node;
use switchyard_bgp::speaker::{PeerConfig, BGP_PORT};

use crate::agent::objects::ObjectStore;

/// The annotation prefixes, the one that wins first.
pub const PREFIXES: [&str; 2] = ["switchyard.io/", "kube-router.io/"];

const PEER_IPS: &str = "peer.ips";
const PEER_ASNS: &str = "peer.asns";
const PEER_PASSWORDS: &str = "peer.passwords";
const PEER_PORTS: &str = "peer.ports";
const NODE_ASN: &str = "node.asn";
const RR_SERVER: &str = "rr.server";
const RR_CLIENT: &str = "rr.client";

/// What is wrong with a Node's BGP annotations. The messages name the key and, except for
/// passwords, the bad value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("{key}: {value:?} is not an IP address")]
    BadAddress { key: String, value: String },
    #[error("{key}: {value} cannot be a BGP peer")]
    UnusableAddress { key: String, value: IpAddr },
    #[error("{key}: {value} is listed twice")]
    DuplicateAddress { key: String, value: IpAddr },
    #[error("{key}: {value:?} is not an AS number (1-4294967295)")]
    BadAsn { key: String, value: String },
    #[error("{key}: {value:?} is not a port (1-65535)")]
    BadPort { key: String, value: String },
    /// The value is never shown: it is a secret, even when malformed.
    #[error("{key}: entry {index} is not base64")]
    BadPasswordEncoding { key: String, index: usize },
    #[error("{key}: entry {index} must decode to 1-80 bytes of UTF-8 text")]
    BadPassword { key: String, index: usize },
    #[error("{key} has {got} entries but {ips_key} has {want}: the lists must line up")]
    LengthMismatch {
        key: String,
        got: usize,
        ips_key: String,
        want: usize,
    },
    #[error("{key}: {value:?} is not a cluster id (an IPv4 address or a number up to 4294967295)")]
    BadClusterId { key: String, value: String },
}

/// A peer one of this node's annotations names.
#[derive(Clone, PartialEq, Eq)]
pub struct AnnotatedPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
    pub password: Option<String>,
}

// By hand: the password must never reach a log.
impl fmt::Debug for AnnotatedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnnotatedPeer")
            .field("address", &self.address)
            .field("asn", &self.asn)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A node's route-reflector role (RFC 4456).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RrRole {
    #[default]
    None,
    /// A reflector, with this cluster id.
    Server(Ipv4Addr),
    /// A client of the reflectors of this cluster.
    Client(Ipv4Addr),
}

/// What another node's annotations tell the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub asn: Option<u32>,
    pub rr: RrRole,
}

/// This node's BGP annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBgp {
    pub member: Member,
    pub peers: Vec<AnnotatedPeer>,
}

type Annotations = BTreeMap<String, String>;

/// The value of `name` under the first prefix that has it, with its full key.
fn lookup<'a>(a: &'a Annotations, name: &str) -> Option<(String, &'a str)> {
    PREFIXES.iter().find_map(|prefix| {
        let key = format!("{prefix}{name}");
        a.get(&key).map(|v| (key, v.as_str()))
    })
}

/// The prefix a group of keys is read under: the first that has any of them.
fn group_prefix(a: &Annotations, names: &[&str]) -> Option<&'static str> {
    PREFIXES.into_iter().find(|prefix| {
        names
            .iter()
            .any(|n| a.contains_key(&format!("{prefix}{n}")))
    })
}

/// A comma list; an empty value is an empty list.
fn entries(value: &str) -> Vec<&str> {
    if value.trim().is_empty() {
        Vec::new()
    } else {
        value.split(',').map(str::trim).collect()
    }
}

fn parse_asn(key: &str, value: &str) -> Result<u32, AnnotationError> {
    match value.trim().parse::<u32>() {
        Ok(asn) if asn != 0 => Ok(asn),
        _ => Err(AnnotationError::BadAsn {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

/// `node.asn`, if set.
pub fn node_asn(a: &Annotations) -> Result<Option<u32>, AnnotationError> {
    lookup(a, NODE_ASN)
        .map(|(key, value)| parse_asn(&key, value))
        .transpose()
}

/// A cluster id as kube-router takes it: a number or an IPv4 address.
fn parse_cluster_id(key: &str, value: &str) -> Result<Ipv4Addr, AnnotationError> {
    let v = value.trim();
    v.parse::<u32>()
        .map(Ipv4Addr::from)
        .or_else(|_| v.parse::<Ipv4Addr>())
        .map_err(|_| AnnotationError::BadClusterId {
            key: key.to_string(),
            value: value.to_string(),
        })
}

/// The route-reflector role; `rr.server` wins over `rr.client`, as in kube-router.
pub fn rr_role(a: &Annotations) -> Result<RrRole, AnnotationError> {
    let Some(prefix) = group_prefix(a, &[RR_SERVER, RR_CLIENT]) else {
        return Ok(RrRole::None);
    };
    for (name, role) in [
        (RR_SERVER, RrRole::Server as fn(Ipv4Addr) -> RrRole),
        (RR_CLIENT, RrRole::Client),
    ] {
        let key = format!("{prefix}{name}");
        if let Some(value) = a.get(&key) {
            return parse_cluster_id(&key, value).map(role);
        }
    }
    Ok(RrRole::None)
}

/// The peers `peer.*` names.
pub fn annotated_peers(a: &Annotations) -> Result<Vec<AnnotatedPeer>, AnnotationError> {
    let group = [PEER_IPS, PEER_ASNS, PEER_PASSWORDS, PEER_PORTS];
    let Some(prefix) = group_prefix(a, &group) else {
        return Ok(Vec::new());
    };
    let key = |name: &str| format!("{prefix}{name}");
    let list = |name: &str| a.get(&key(name)).map(|v| entries(v));
    let ips_key = key(PEER_IPS);
    let ips = list(PEER_IPS).unwrap_or_default();
    let lined_up = |name: &str, got: usize| {
        if got == ips.len() {
            Ok(())
        } else {
            Err(AnnotationError::LengthMismatch {
                key: key(name),
                got,
                ips_key: ips_key.clone(),
                want: ips.len(),
            })
        }
    };
    let asns = list(PEER_ASNS).unwrap_or_default();
    lined_up(PEER_ASNS, asns.len())?;
    // Optional lists: an empty value is the same as none (one peer, no password).
    let optional = |name: &str| list(name).filter(|l| !l.is_empty());
    let passwords = optional(PEER_PASSWORDS);
    if let Some(p) = &passwords {
        lined_up(PEER_PASSWORDS, p.len())?;
    }
    let ports = optional(PEER_PORTS);
    if let Some(p) = &ports {
        lined_up(PEER_PORTS, p.len())?;
    }
    let mut peers: Vec<AnnotatedPeer> = Vec::with_capacity(ips.len());
    for (i, ip) in ips.iter().enumerate() {
        let address: IpAddr = ip.parse().map_err(|_| AnnotationError::BadAddress {
            key: ips_key.clone(),
            value: (*ip).to_string(),
        })?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(AnnotationError::UnusableAddress {
                key: ips_key.clone(),
                value: address,
            });
        }
        if peers.iter().any(|p| p.address == address) {
            return Err(AnnotationError::DuplicateAddress {
                key: ips_key.clone(),
                value: address,
            });
        }
        let asn = parse_asn(&key(PEER_ASNS), asns[i])?;
        let port = match ports.as_ref().map(|p| p[i]) {
            None => BGP_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => {
                    return Err(AnnotationError::BadPort {
                        key: key(PEER_PORTS),
                        value: p.to_string(),
                    })
                }
            },
        };
        let password = match passwords.as_ref().map(|p| p[i]) {
            None | Some("") => None,
            Some(encoded) => Some(decode_password(&key(PEER_PASSWORDS), i, encoded)?),
        };
        peers.push(AnnotatedPeer {
            address,
            asn,
            port,
            password,
        });
    }
    Ok(peers)
}

/// A base64 password (standard alphabet, padded, as Go's `base64.StdEncoding` that
/// kube-router uses), which must be a usable TCP MD5 key.
fn decode_password(key: &str, index: usize, encoded: &str) -> Result<String, AnnotationError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| AnnotationError::BadPasswordEncoding {
            key: key.to_string(),
            index,
        })?;
    match String::from_utf8(bytes) {
        Ok(s) if !s.is_empty() && s.len() <= switchyard_io::tcp_md5::MAX_KEY_LEN => Ok(s),
        _ => Err(AnnotationError::BadPassword {
            key: key.to_string(),
            index,
        }),
    }
}

impl Member {
    /// What the mesh reads of a node's annotations.
    pub fn from_annotations(a: &Annotations) -> Result<Member, AnnotationError> {
        Ok(Member {
            asn: node_asn(a)?,
            rr: rr_role(a)?,
        })
    }
}

impl NodeBgp {
    /// Everything this node's annotations say; the first problem found if any.
    pub fn from_annotations(a: &Annotations) -> Result<NodeBgp, AnnotationError> {
        Ok(NodeBgp {
            member: Member::from_annotations(a)?,
            peers: annotated_peers(a)?,
        })
    }
}

/// Where a peer of the running set comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerSource {
    /// `--bgp-peer` or the configuration file.
    Flag,
    /// This node's `peer.*` annotations.
    Annotation,
    /// Another node, by the iBGP mesh.
    Mesh,
}

impl PeerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerSource::Flag => "flag",
            PeerSource::Annotation => "annotation",
            PeerSource::Mesh => "mesh",
        }
    }
}

/// The agent's own BGP settings the plan starts from.
#[derive(Clone)]
pub struct Defaults {
    /// `--bgp-asn`: ours and every node's unless its `node.asn` says otherwise.
    pub asn: u32,
    /// `--bgp-peer`s: they win over an annotated or meshed peer at the same address.
    pub static_peers: Vec<PeerConfig>,
    /// Peer with the other nodes.
    pub mesh: bool,
    /// The port every node's speaker listens on.
    pub mesh_port: u16,
    /// `--bgp-cluster-id`.
    pub cluster_id: Option<Ipv4Addr>,
    pub router_id: Ipv4Addr,
    /// `--bgp-next-hop`, for every peer.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
}

/// The speaker's settings that come from the Node objects. (No `Debug`: the peers' settings
/// hold their passwords.)
#[derive(Clone, PartialEq, Eq)]
pub struct Plan {
    pub local_as: u32,
    pub cluster_id: Option<Ipv4Addr>,
    /// The whole peer set, flags first, then annotations, then the mesh.
    pub peers: Vec<PeerConfig>,
    pub sources: BTreeMap<IpAddr, PeerSource>,
}

/// The Nodes' last good BGP annotations, and the problems found in them.
#[derive(Debug, Default)]
pub struct NodePeers {
    /// Ours, as last read without a problem.
    own: Option<NodeBgp>,
    /// Every other node's, as last read without a problem.
    members: BTreeMap<String, Member>,
    /// The problem each node's annotations have now (a node's last good ones stand in).
    problems: BTreeMap<String, String>,
}

/// A node's problem that was not there at the last plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewProblem {
    pub node: String,
    pub error: AnnotationError,
}

impl NodePeers {
    /// The problems in force, one line per node.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|(node, e)| format!("Node {node}: {e}"))
            .collect()
    }

    /// Reads the Nodes in `store` (the one named `node_name` is ours) into the peer set and
    /// the settings they give; returns it with the problems seen for the first time.
    pub fn plan(
        &mut self,
        store: &ObjectStore,
        node_name: &str,
        d: &Defaults,
    ) -> (Plan, Vec<NewProblem>) {
        let mut new = Vec::new();
        let mut seen_problems = BTreeMap::new();
        let mut note = |node: &str, error: AnnotationError| {
            let line = error.to_string();
            if self.problems.get(node) != Some(&line) {
                new.push(NewProblem {
                    node: node.to_string(),
                    error,
                });
            }
            seen_problems.insert(node.to_string(), line);
        };
        let own_node = store.nodes.get(&(String::new(), node_name.to_string()));
        if let Some(node) = own_node {
            match NodeBgp::from_annotations(annotations(node)) {
                Ok(bgp) => self.own = Some(bgp),
                Err(e) => note(node_name, e),
            }
        }
        let mut present = BTreeSet::new();
        if d.mesh {
            for ((_, name), node) in &store.nodes {
                if name == node_name {
                    continue;
                }
                present.insert(name.clone());
                match Member::from_annotations(annotations(node)) {
                    Ok(m) => {
                        self.members.insert(name.clone(), m);
                    }
                    Err(e) => note(name, e),
                }
            }
        }
        self.members.retain(|name, _| present.contains(name));
        self.problems = seen_problems;

        let own = self.own.clone().unwrap_or_default();
        let local_as = own.member.asn.unwrap_or(d.asn);
        let mut peers: Vec<PeerConfig> = Vec::new();
        let mut sources = BTreeMap::new();
        let mut push = |p: PeerConfig, source: PeerSource| {
            if let std::collections::btree_map::Entry::Vacant(e) = sources.entry(p.address) {
                e.insert(source);
                peers.push(p);
            }
        };
        for p in &d.static_peers {
            push(p.clone(), PeerSource::Flag);
        }
        for a in &own.peers {
            let mut p = PeerConfig::new(a.address, a.asn);
            p.port = a.port;
            p.md5_password.clone_from(&a.password);
            p.next_hop_v4 = d.next_hop_v4;
            p.next_hop_v6 = d.next_hop_v6;
            push(p, PeerSource::Annotation);
        }
        if d.mesh {
            let own_ips: Vec<IpAddr> = own_node
                .map(|n| internal_ips(n).collect())
                .unwrap_or_default();
            let family_v4 = own_ips.first().is_none_or(IpAddr::is_ipv4);
            for (name, node) in store.nodes.iter().map(|((_, n), node)| (n, node)) {
                let Some(them) = self.members.get(name) else {
                    continue;
                };
                if them.asn.unwrap_or(d.asn) != local_as || !meshed(own.member.rr, them.rr) {
                    continue;
                }
                let Some(address) = internal_ips(node).find(|ip| ip.is_ipv4() == family_v4) else {
                    continue;
                };
                // A Node claiming one of our addresses would have us peer with ourselves.
                if own_ips.contains(&address) {
                    continue;
                }
                let mut p = PeerConfig::new(address, local_as);
                p.port = d.mesh_port;
                p.route_reflector_client = matches!(
                    (own.member.rr, them.rr),
                    (RrRole::Server(_), RrRole::Client(_))
                );
                p.next_hop_v4 = d.next_hop_v4;
                p.next_hop_v6 = d.next_hop_v6;
                push(p, PeerSource::Mesh);
            }
        }
        // A reflector's cluster id: its annotation, else the flag, else (with clients) the
        // router id, as BIRD and FRR default it.
        let cluster_id = match own.member.rr {
            RrRole::Server(id) => Some(id),
            _ => d.cluster_id.or_else(|| {
                peers
                    .iter()
                    .any(|p| p.route_reflector_client)
                    .then_some(d.router_id)
            }),
        };
        let plan = Plan {
            local_as,
            cluster_id,
            peers,
            sources,
        };
        (plan, new)
    }
}

/// Whether two nodes of the same AS peer, by their route-reflector roles: clients only with
/// reflectors, everyone else with everyone.
fn meshed(a: RrRole, b: RrRole) -> bool {
    match (a, b) {
        (RrRole::Client(_), RrRole::Server(_)) | (RrRole::Server(_), RrRole::Client(_)) => true,
        (RrRole::Client(_), _) | (_, RrRole::Client(_)) => false,
        _ => true,
    }
}

fn annotations(node: &Node) -> &Annotations {
    static EMPTY: Annotations = BTreeMap::new();
    node.metadata.annotations.as_ref().unwrap_or(&EMPTY)
}

/// A Node's InternalIP addresses in the order its status lists them (unparsable ones left
/// out: the reducers already report them).
fn internal_ips(node: &Node) -> impl Iterator<Item = IpAddr> + '_ {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.trim().parse().ok())
}

#[cfg(test)]
mod tests;
