//! Compiled ACLs: what the dataplane classifier consumes.
//!
//! Every rule is an allow rule. NetworkPolicy is a union of allows over a default deny, and
//! `ipBlock.except` is compiled by prefix subtraction rather than deny rules, so rule order
//! never changes a verdict: a classifier may reorder, merge or search rules any way it likes
//! and only needs "does any rule match". Order is kept canonical (sorted) only so that equal
//! rule sets compare equal and pods can share one ACL.
//!
//! Replies are not in the ACLs: the dataplane lets packets of connections that conntrack has
//! seen allowed in the other direction pass without consulting the ACL, which is what makes
//! "replies to allowed connections are allowed" hold in both directions.
//!
//! An [`Acl`] is a list of [`AclPart`]s, one per origin (the node, or one rule of one policy),
//! each holding its rules as a shared, immutable [`RuleSet`]. Many ACLs hold the same set (a
//! selector peer of a policy in force in many namespaces), so a peer change makes one new set,
//! and the ACLs that held the old one are rebuilt from their parts, not their rules. Set ids
//! stand for content, which keeps interning ACLs and keying classifiers cheap.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::{Direction, PolicyKey};

/// Inclusive port range; `0..=65535` matches every port (and port-less protocols, which the
/// dataplane classifies with port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// Where an ACL rule came from, so hit counters can be reported per policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleOrigin {
    /// The node's own addresses, always allowed (see the crate docs).
    Node,
    /// Rule `rule` (index into `spec.ingress` or `spec.egress`) of a policy.
    Policy {
        policy: Arc<PolicyKey>,
        direction: Direction,
        rule: u32,
    },
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOrigin::Node => f.write_str("node"),
            RuleOrigin::Policy {
                policy,
                direction,
                rule,
            } => write!(f, "{policy} {direction}[{rule}]"),
        }
    }
}

/// One allow rule: the peer prefix (source for ingress ACLs, destination for egress ACLs),
/// the IP protocol (`None`: any) and the destination port range, with where it came from.
/// [`Acl::rules`] yields these; the ACL itself keeps rules without origins, in shared
/// [`RuleSet`]s, one per origin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclRule {
    pub origin: RuleOrigin,
    pub peer: IpNet,
    pub protocol: Option<u8>,
    pub ports: PortRange,
}

impl AclRule {
    pub fn matches(&self, peer: IpAddr, protocol: u8, port: u16) -> bool {
        self.spec().matches(peer, protocol, port)
    }

    /// The rule without its origin.
    pub fn spec(&self) -> RuleSpec {
        RuleSpec {
            peer: self.peer,
            protocol: self.protocol,
            ports: self.ports,
        }
    }
}

/// What an allow rule matches, without its origin: the part the dataplane classifies on.
/// Ordered by peer, then protocol, then ports, as [`AclRule`] orders rules of one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    pub peer: IpNet,
    pub protocol: Option<u8>,
    pub ports: PortRange,
}

impl RuleSpec {
    pub fn matches(&self, peer: IpAddr, protocol: u8, port: u16) -> bool {
        self.peer.contains(&peer)
            && self.protocol.is_none_or(|p| p == protocol)
            && self.ports.contains(port)
    }
}

/// Identity of one [`RuleSet`] value. Every new set gets a new id, unique in the process
/// (across compilers too), so two sets with the same id hold the same rules, and a consumer can
/// key what it derives from sets (the dataplane: a classifier) by their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSetId(pub u64);

impl RuleSetId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        RuleSetId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The rules one policy rule allows to one pod, sorted and without duplicates, origin left out.
///
/// Why a set of its own: the rules of one policy rule are the same for every pod the policy
/// selects (egress) or for every pod with the same named ports (ingress), and often for many
/// policies (every namespace's "backends everywhere" egress rule names the same pods). Keeping
/// them once, behind an `Arc`, lets a peer change patch one set instead of every ACL that holds
/// it, and lets ACLs that differ only in where their rules came from share a classifier.
#[derive(Debug)]
pub struct RuleSet {
    id: RuleSetId,
    rules: Vec<RuleSpec>,
}

impl RuleSet {
    /// A set with a fresh id; `rules` must be sorted and without duplicates.
    pub(crate) fn new(rules: Vec<RuleSpec>) -> Self {
        debug_assert!(rules.windows(2).all(|w| w[0] < w[1]));
        Self {
            id: RuleSetId::next(),
            rules,
        }
    }

    pub fn id(&self) -> RuleSetId {
        self.id
    }

    pub fn rules(&self) -> &[RuleSpec] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Equal when the rules are (ids aside: two compilers number their sets independently).
impl PartialEq for RuleSet {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id || self.rules == other.rules
    }
}

impl Eq for RuleSet {}

/// The rules of one origin in an ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclPart {
    pub origin: RuleOrigin,
    /// Never empty: an origin that allows nothing has no part.
    pub rules: Arc<RuleSet>,
}

/// What happens to a packet no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DefaultAction {
    /// The pod is not isolated in this direction.
    Allow,
    /// The pod is isolated: only what a rule allows passes.
    Deny,
}

/// One pod's ACL for one direction, possibly shared by many pods.
///
/// The rules, in order, are those of its parts in turn: parts sorted by origin, each part's
/// rules sorted, so the whole list is sorted by ([`RuleOrigin`], peer, protocol, ports) and
/// equal rule lists compare equal. Rule `i` of [`Acl::rules`] is what a classifier built from
/// this list reports as index `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub direction: Direction,
    pub default: DefaultAction,
    parts: Vec<AclPart>,
}

impl Acl {
    /// The ACL of a pod no policy isolates in `direction`.
    pub fn open(direction: Direction) -> Self {
        Self {
            direction,
            default: DefaultAction::Allow,
            parts: Vec::new(),
        }
    }

    /// An isolating ACL from `parts`, which must be sorted by origin, origins distinct, and
    /// none empty.
    pub(crate) fn isolated(direction: Direction, parts: Vec<AclPart>) -> Self {
        debug_assert!(parts.windows(2).all(|w| w[0].origin < w[1].origin));
        debug_assert!(parts.iter().all(|p| !p.rules.is_empty()));
        Self {
            direction,
            default: DefaultAction::Deny,
            parts,
        }
    }

    /// The rules grouped by origin, in rule order.
    pub fn parts(&self) -> &[AclPart] {
        &self.parts
    }

    /// Every rule, in order, with its origin.
    pub fn rules(&self) -> impl Iterator<Item = AclRule> + '_ {
        self.parts.iter().flat_map(|part| {
            part.rules.rules().iter().map(|spec| AclRule {
                origin: part.origin.clone(),
                peer: spec.peer,
                protocol: spec.protocol,
                ports: spec.ports,
            })
        })
    }

    /// Rule `index`, with its origin.
    pub fn rule(&self, index: usize) -> Option<AclRule> {
        let mut index = index;
        for part in &self.parts {
            match part.rules.rules().get(index) {
                Some(spec) => {
                    return Some(AclRule {
                        origin: part.origin.clone(),
                        peer: spec.peer,
                        protocol: spec.protocol,
                        ports: spec.ports,
                    })
                }
                None => index -= part.rules.len(),
            }
        }
        None
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.rules.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Index of the first rule matching, for hit counters.
    pub fn first_match(&self, peer: IpAddr, protocol: u8, port: u16) -> Option<usize> {
        let mut before = 0;
        for part in &self.parts {
            let rules = part.rules.rules();
            if let Some(i) = rules.iter().position(|r| r.matches(peer, protocol, port)) {
                return Some(before + i);
            }
            before += rules.len();
        }
        None
    }

    /// What identifies this ACL's content among the ACLs of one compiler: its parts by
    /// origin and set id. Cheap (a few parts), unlike comparing rules.
    pub(crate) fn key(&self) -> AclKey {
        AclKey {
            direction: self.direction,
            default: self.default,
            parts: self
                .parts
                .iter()
                .map(|p| (p.origin.clone(), p.rules.id()))
                .collect(),
        }
    }
}

/// Whether `acl` lets a packet pass: `peer` is the source address for an ingress ACL and the
/// destination address for an egress ACL; `port` is the destination port (0 if none).
pub fn acl_allows(acl: &Acl, peer: IpAddr, protocol: u8, port: u16) -> bool {
    match acl.default {
        DefaultAction::Allow => true,
        DefaultAction::Deny => acl.first_match(peer, protocol, port).is_some(),
    }
}

/// Identity of an interned ACL. Ids are never reused, so a counter keyed by id cannot be
/// confused with a later ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclId(pub u32);

impl fmt::Display for AclId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acl{}", self.0)
    }
}

/// An ACL's content by reference: see [`Acl::key`]. Within one compiler a [`RuleSetId`] stands
/// for its rules, and the compiler keeps one current set per (peers, ports) definition, which
/// an origin fixes; so equal keys mean equal rules and, among the ACLs in use, equal rules mean
/// equal keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AclKey {
    direction: Direction,
    default: DefaultAction,
    parts: Vec<(RuleOrigin, RuleSetId)>,
}

/// Interning table: equal ACLs get one id and one allocation; reference counted by the pods
/// that use them and dropped when the last one lets go.
#[derive(Debug, Default)]
pub(crate) struct AclTable {
    by_key: HashMap<AclKey, AclId>,
    by_id: BTreeMap<AclId, (Arc<Acl>, usize)>,
    next: u32,
}

impl AclTable {
    pub(crate) fn intern(&mut self, acl: Acl) -> AclId {
        let key = acl.key();
        if let Some(id) = self.by_key.get(&key).copied() {
            if let Some(entry) = self.by_id.get_mut(&id) {
                entry.1 += 1;
            }
            return id;
        }
        let id = AclId(self.next);
        self.next = self.next.wrapping_add(1);
        self.by_key.insert(key, id);
        self.by_id.insert(id, (Arc::new(acl), 1));
        id
    }

    pub(crate) fn release(&mut self, id: AclId) {
        let gone = match self.by_id.get_mut(&id) {
            Some(entry) => {
                entry.1 = entry.1.saturating_sub(1);
                entry.1 == 0
            }
            None => false,
        };
        if gone {
            if let Some((acl, _)) = self.by_id.remove(&id) {
                self.by_key.remove(&acl.key());
            }
        }
    }

    pub(crate) fn get(&self, id: AclId) -> Option<&Arc<Acl>> {
        self.by_id.get(&id).map(|(acl, _)| acl)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (AclId, &Arc<Acl>)> {
        self.by_id.iter().map(|(id, (acl, _))| (*id, acl))
    }
}

/// `net` minus every prefix in `except`, as disjoint prefixes (order: address order).
pub(crate) fn subtract(net: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut parts = vec![net];
    for ex in except {
        let mut next = Vec::with_capacity(parts.len() + 8);
        for part in parts {
            remove(part, ex, &mut next);
        }
        parts = next;
    }
    parts
}

fn remove(part: IpNet, ex: &IpNet, out: &mut Vec<IpNet>) {
    if ex.contains(&part) {
        return;
    }
    if !part.contains(ex) {
        out.push(part);
        return;
    }
    // `part` strictly contains `ex`: keep the half without it, recurse into the other. (The
    // split cannot fail for a strict superset; if it did, dropping is the closed-side answer.)
    if let Ok(halves) = part.subnets(part.prefix_len().saturating_add(1)) {
        for half in halves {
            remove(half, ex, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|_| panic!("bad test prefix {s}"))
    }

    #[test]
    fn subtract_except() {
        let parts = subtract(net("10.0.0.0/8"), &[net("10.1.0.0/16"), net("10.0.0.0/24")]);
        let inside = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            parts.iter().any(|p| p.contains(&ip))
        };
        assert!(inside("10.2.0.1"));
        assert!(inside("10.0.1.0"));
        assert!(!inside("10.1.200.1"));
        assert!(!inside("10.0.0.255"));
        assert!(!inside("11.0.0.0"));
        assert!(parts.len() <= 8 + 16);
    }

    #[test]
    fn interning_shares_and_releases() {
        let mut t = AclTable::default();
        let a = t.intern(Acl::open(Direction::Ingress));
        let b = t.intern(Acl::open(Direction::Ingress));
        assert_eq!(a, b);
        assert_eq!(t.len(), 1);
        t.release(a);
        assert_eq!(t.len(), 1);
        t.release(b);
        assert_eq!(t.len(), 0);
        let c = t.intern(Acl::open(Direction::Ingress));
        assert_ne!(a, c, "ids are not reused");
    }
}
