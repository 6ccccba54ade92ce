//! Best-path selection (RFC 4271 §9.1.2) and multipath.
//!
//! Selection follows the RFC's elimination order rather than a pairwise
//! comparator: MED is only comparable between routes from the same
//! neighbour AS, so pairwise "better than" is not transitive and a sort
//! would be ill-defined. Candidate lists are short (one per peer), so
//! each step is a pass over a few entries.

use super::{Path, PeerInfo};
use crate::attrs::PathAttrs;
use std::net::{IpAddr, Ipv4Addr};

/// Decision knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionConfig {
    /// Compare MED between routes from different neighbour ASes.
    pub always_compare_med: bool,
    /// Maximum paths installed for ECMP (1 = no multipath).
    pub max_paths: usize,
    /// LOCAL_PREF assumed when absent (eBGP-learned routes).
    pub default_local_pref: u32,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            always_compare_med: false,
            max_paths: 1,
            default_local_pref: 100,
        }
    }
}

/// How a learned route's next hop has to be reached for the route to be
/// usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// From a single-hop eBGP peer: on a subnet we are attached to (RFC
    /// 4271 §5.1.3: the next hop of an external peer one hop away is an
    /// address on a shared subnet; anything else could only be reached
    /// through routes the peer itself may be giving us).
    Connected,
    /// From iBGP or a multihop eBGP peer: through any route the node has
    /// without BGP (RFC 4271 §9.1.2.1, "resolvable").
    Resolved,
}

/// Next-hop resolution and IGP cost (RFC 4271 §9.1.2.1, §9.1.2.2 e): the
/// cost to reach a next hop, `None` when it cannot be reached the way
/// `reach` asks, which makes the route unusable: it neither wins the
/// decision nor is advertised. Our own routes are not asked about.
pub trait IgpCost: std::fmt::Debug {
    fn cost(&self, next_hop: Option<IpAddr>, reach: Reach) -> Option<u32>;
}

/// A shared resolver (the speaker keeps one across RIB rebuilds).
impl<T: IgpCost + ?Sized> IgpCost for std::sync::Arc<T> {
    fn cost(&self, next_hop: Option<IpAddr>, reach: Reach) -> Option<u32> {
        (**self).cost(next_hop, reach)
    }
}

/// Every next hop reachable at cost 0: the default, for a speaker that
/// knows nothing of the forwarding table (tests, route servers). The
/// agent installs a resolver of its attached subnets and static routes
/// ([`crate::speaker::SpeakerHandle::set_next_hop_resolver`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatIgp;

impl IgpCost for FlatIgp {
    fn cost(&self, _: Option<IpAddr>, _: Reach) -> Option<u32> {
        Some(0)
    }
}

/// What the decision needs to know about a candidate, computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub index: usize,
    pub local_pref: u32,
    pub as_path_len: usize,
    pub origin: u8,
    pub med: u32,
    pub neighbor_as: Option<u32>,
    pub ebgp: bool,
    pub igp_cost: u32,
    pub router_id: Ipv4Addr,
    pub cluster_len: usize,
    pub peer_address: IpAddr,
    pub path_id: u32,
}

pub fn candidate(
    index: usize,
    attrs: &PathAttrs,
    path: &Path,
    peer: &PeerInfo,
    igp_cost: u32,
    cfg: &DecisionConfig,
) -> Candidate {
    Candidate {
        index,
        local_pref: attrs.local_pref.unwrap_or(cfg.default_local_pref),
        as_path_len: attrs.as_path.path_len(),
        origin: attrs.origin as u8,
        // RFC 4271 §9.1.2.2 c: a missing MED is the lowest value.
        med: attrs.med.unwrap_or(0),
        // Locally originated routes have an empty path: neighbour AS is
        // then our own.
        neighbor_as: attrs.as_path.first_as().or(Some(peer.local_as)),
        ebgp: peer.is_ebgp(),
        igp_cost,
        // RFC 4456 §9: ORIGINATOR_ID stands in for the router id.
        router_id: attrs.originator_id.unwrap_or(peer.router_id),
        cluster_len: attrs.cluster_list.len(),
        peer_address: peer.address,
        path_id: path.path_id,
    }
}

fn keep_min<K: Ord + Copy>(c: &mut Vec<Candidate>, key: impl Fn(&Candidate) -> K) {
    if let Some(m) = c.iter().map(&key).min() {
        c.retain(|x| key(x) == m);
    }
}

/// Steps a–e: everything up to and including the IGP cost. The
/// survivors are the multipath-equal set.
fn through_igp(mut c: Vec<Candidate>, cfg: &DecisionConfig) -> Vec<Candidate> {
    keep_min(&mut c, |x| std::cmp::Reverse(x.local_pref));
    keep_min(&mut c, |x| x.as_path_len);
    keep_min(&mut c, |x| x.origin);
    // c) MED, within each neighbour AS (or across all).
    let snapshot = c.clone();
    c.retain(|x| {
        !snapshot
            .iter()
            .any(|y| (cfg.always_compare_med || y.neighbor_as == x.neighbor_as) && y.med < x.med)
    });
    // d) eBGP over iBGP.
    if c.iter().any(|x| x.ebgp) {
        c.retain(|x| x.ebgp);
    }
    keep_min(&mut c, |x| x.igp_cost);
    c
}

/// Steps f–g and the final tie breaks; returns the winner's index.
fn tie_break(mut c: Vec<Candidate>) -> Option<usize> {
    keep_min(&mut c, |x| u32::from(x.router_id));
    keep_min(&mut c, |x| x.cluster_len);
    keep_min(&mut c, |x| x.peer_address);
    keep_min(&mut c, |x| x.path_id);
    c.first().map(|x| x.index)
}

/// The best candidate and the multipath set (best first, at most
/// `cfg.max_paths`). For eBGP, multipath members share the best's
/// neighbour AS.
pub fn select(c: Vec<Candidate>, cfg: &DecisionConfig) -> Option<(usize, Vec<usize>)> {
    let equal = through_igp(c, cfg);
    let best = tie_break(equal.clone())?;
    let best_c = equal.iter().find(|x| x.index == best).copied()?;
    let mut rest: Vec<Candidate> = equal
        .into_iter()
        .filter(|x| x.index != best)
        .filter(|x| !best_c.ebgp || x.neighbor_as == best_c.neighbor_as)
        .collect();
    // Deterministic order for the extra paths: the same tie breaks.
    rest.sort_by_key(|x| {
        (
            u32::from(x.router_id),
            x.cluster_len,
            x.peer_address,
            x.path_id,
        )
    });
    let mut multi = vec![best];
    multi.extend(rest.iter().map(|x| x.index));
    multi.truncate(cfg.max_paths.max(1));
    Some((best, multi))
}
