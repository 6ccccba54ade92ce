//! Routing information bases (RFC 4271 §3.2, §9).
//!
//! Layout, chosen for a million routes from one peer:
//! - one [`Table`] per family maps each prefix to its candidate paths,
//!   one per (peer, path id). That list *is* every peer's post-policy
//!   Adj-RIB-In for the prefix ([`Rib::adj_rib_in_v4`] is a view of it), and
//!   its first entry is the Loc-RIB best path, so a route costs one map
//!   entry, not three;
//! - a [`Path`] is 16 bytes: an `Arc` to an interned attribute set plus
//!   peer and path ids. Prefixes announced together share one set;
//! - a B-tree keeps prefixes ordered (UPDATE packing and `show` output
//!   want that) and grows without rehash spikes.
//!
//! Pre-policy Adj-RIB-In is not kept: route refresh (RFC 2918) asks the
//! peer to resend when import policy changes.

pub mod adj_out;
pub mod decision;
mod stale;

use crate::attrs::{AttrInterner, PathAttrs};
use crate::config::Family;
use crate::policy::{Outcome, Policy};
use crate::update_rx::{Nlri, ParsedUpdate};
use decision::{DecisionConfig, FlatIgp, IgpCost, Reach};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A prefix type a [`Table`] can hold.
pub trait RibPrefix: Copy + Ord + Debug + Into<IpNet> {
    const FAMILY: Family;
}
impl RibPrefix for Ipv4Net {
    const FAMILY: Family = Family::Ipv4Unicast;
}
impl RibPrefix for Ipv6Net {
    const FAMILY: Family = Family::Ipv6Unicast;
}

fn family_index(f: Family) -> usize {
    match f {
        Family::Ipv4Unicast => 0,
        Family::Ipv6Unicast => 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl PeerId {
    /// Routes this speaker originates itself.
    pub const LOCAL: PeerId = PeerId(0);
}

/// What the RIB needs to know about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub address: IpAddr,
    pub router_id: Ipv4Addr,
    pub peer_as: u32,
    pub local_as: u32,
    /// RFC 4456 route-reflector client (meaningful when we reflect).
    pub rr_client: bool,
    /// An eBGP peer more than one hop away (multihop TTL): its next hops
    /// need only resolve, as iBGP ones do, not be on an attached subnet.
    pub multihop: bool,
    /// Our address on this session: the next hop we announce to eBGP.
    pub local_address: Option<Ipv4Addr>,
    pub local_address_v6: Option<Ipv6Addr>,
    pub import: Policy,
    /// `None`: the default, which differs by kind of peer: an iBGP peer
    /// hears whatever split horizon and route reflection allow; an eBGP
    /// peer hears only the routes we originate (RFC 8212 §3: no route
    /// from one neighbour AS to another without a policy saying so; and a
    /// node agent has no business announcing another node's Service
    /// addresses, which that node withdraws when its endpoints go).
    pub export: Option<Policy>,
}

impl PeerInfo {
    pub fn is_ebgp(&self) -> bool {
        self.peer_as != self.local_as
    }
}

/// One candidate route for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub attrs: Arc<PathAttrs>,
    pub peer: PeerId,
    pub path_id: u32,
}

/// Candidates for one prefix. Invariant: the best path (if any is usable)
/// is first, followed by the rest of the multipath set.
#[derive(Debug, Clone)]
enum PathList {
    One(Path),
    Many(Box<Multi>),
}

#[derive(Debug, Clone)]
struct Multi {
    paths: Vec<Path>,
    /// Number of leading paths that form the multipath set; 0 when no
    /// path is usable.
    selected: usize,
}

impl PathList {
    fn as_slice(&self) -> &[Path] {
        match self {
            PathList::One(p) => std::slice::from_ref(p),
            PathList::Many(m) => &m.paths,
        }
    }
}

/// One family's routes.
#[derive(Debug)]
pub struct Table<P> {
    routes: BTreeMap<P, PathList>,
    /// Prefixes whose selected paths changed since [`Table::take_changes`].
    dirty: Vec<P>,
}

impl<P: RibPrefix> Default for Table<P> {
    fn default() -> Self {
        Self {
            routes: BTreeMap::new(),
            dirty: Vec::new(),
        }
    }
}

impl<P: RibPrefix> Table<P> {
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// All candidates for a prefix, best first.
    pub fn paths(&self, p: &P) -> &[Path] {
        self.routes.get(p).map_or(&[], PathList::as_slice)
    }

    pub fn prefixes(&self) -> impl Iterator<Item = &P> {
        self.routes.keys()
    }

    /// Prefixes whose best or multipath set changed (each at most once
    /// per call, in arrival order).
    pub fn take_changes(&mut self) -> Vec<P> {
        let mut v = std::mem::take(&mut self.dirty);
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Speaker-wide RIB settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Set to act as a route reflector (RFC 4456) with this cluster id.
    pub cluster_id: Option<Ipv4Addr>,
    pub decision: DecisionConfig,
}

/// Why an announced route was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    AsLoop,
    OriginatorLoop,
    ClusterLoop,
    Policy,
    /// RFC 4271 §6.3: the NEXT_HOP is our own address on the session.
    NextHopSelf,
}

pub struct Rib {
    cfg: RibConfig,
    peers: Vec<Option<PeerInfo>>,
    interner: AttrInterner,
    igp: Box<dyn IgpCost + Send + Sync>,
    pub v4: Table<Ipv4Net>,
    pub v6: Table<Ipv6Net>,
    /// Paths held per peer (by [`PeerId`]) and family, kept as they come
    /// and go so that a maximum-prefix check costs nothing per UPDATE.
    received: Vec<[usize; 2]>,
    /// Paths of restarting peers kept as stale (RFC 4724 §4.2), by
    /// (prefix, path id). Only peers in a restart have an entry, so the
    /// common case costs one emptiness check per UPDATE.
    stale: BTreeMap<PeerId, BTreeSet<(IpNet, u32)>>,
    /// Counters of rejected announcements, by reason.
    pub rejected: [u64; 5],
}

impl Debug for Rib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rib")
            .field("v4", &self.v4.len())
            .field("v6", &self.v6.len())
            .finish()
    }
}

impl Rib {
    pub fn new(cfg: RibConfig) -> Self {
        let local = PeerInfo {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            router_id: cfg.router_id,
            peer_as: cfg.local_as,
            local_as: cfg.local_as,
            rr_client: false,
            multihop: false,
            local_address: None,
            local_address_v6: None,
            import: Policy::accept_all(),
            export: None,
        };
        Self {
            cfg,
            peers: vec![Some(local)],
            interner: AttrInterner::new(),
            igp: Box::new(FlatIgp),
            v4: Table::default(),
            v6: Table::default(),
            received: vec![[0; 2]],
            stale: BTreeMap::new(),
            rejected: [0; 5],
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.cfg
    }

    /// Installs the IGP cost hook, which also decides next-hop
    /// reachability, and runs the decision again for every prefix (RFC
    /// 4271 §9.1.2.1: routes whose next hop became reachable or
    /// unreachable); the prefixes whose selection changed are reported by
    /// [`Table::take_changes`]. For when the node's interfaces, addresses
    /// or static routes change.
    pub fn set_igp(&mut self, igp: Box<dyn IgpCost + Send + Sync>) {
        let old = std::mem::replace(&mut self.igp, igp);
        let before = DecisionCtx {
            peers: &self.peers,
            igp: old.as_ref(),
            cfg: &self.cfg.decision,
        };
        let after = DecisionCtx {
            peers: &self.peers,
            igp: self.igp.as_ref(),
            cfg: &self.cfg.decision,
        };
        reselect(&mut self.v4, &before, &after);
        reselect(&mut self.v6, &before, &after);
    }

    pub fn add_peer(&mut self, info: PeerInfo) -> PeerId {
        let id = PeerId(self.peers.len() as u32);
        self.peers.push(Some(info));
        self.received.push([0; 2]);
        id
    }

    /// How many paths of `family` the peer's post-policy Adj-RIB-In holds
    /// (one per prefix, or more with ADD-PATH): what a maximum-prefix
    /// limit is checked against (RFC 4271 §6.7).
    pub fn received(&self, peer: PeerId, family: Family) -> usize {
        self.received
            .get(peer.0 as usize)
            .map_or(0, |c| c[family_index(family)])
    }

    fn count(&mut self, peer: PeerId, family: Family) -> Option<&mut usize> {
        self.received
            .get_mut(peer.0 as usize)
            .map(|c| &mut c[family_index(family)])
    }

    pub fn peer(&self, id: PeerId) -> Option<&PeerInfo> {
        self.peers.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// New settings for a registered peer whose routes stay (a peer back
    /// from a graceful restart keeps its id, so its re-announcements
    /// replace its stale paths). Existing routes are re-evaluated on
    /// their next change.
    pub fn set_peer_info(&mut self, id: PeerId, info: PeerInfo) {
        if id == PeerId::LOCAL {
            return;
        }
        if let Some(slot @ Some(_)) = self.peers.get_mut(id.0 as usize) {
            *slot = Some(info);
        }
    }

    pub fn peer_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter(|(i, p)| *i > 0 && p.is_some())
            .map(|(i, _)| PeerId(i as u32))
    }

    /// Forgets a peer after dropping its routes.
    pub fn remove_peer(&mut self, id: PeerId) {
        self.peer_down(id);
        if id != PeerId::LOCAL {
            if let Some(slot) = self.peers.get_mut(id.0 as usize) {
                *slot = None;
            }
        }
    }

    pub fn intern(&mut self, attrs: PathAttrs) -> Arc<PathAttrs> {
        self.interner.intern(attrs)
    }

    /// Distinct attribute sets in use (after garbage collection).
    pub fn attribute_sets(&mut self) -> usize {
        self.interner.collect_garbage();
        self.interner.len()
    }

    /// Applies one received UPDATE from `peer`.
    pub fn apply_update(&mut self, peer: PeerId, u: &ParsedUpdate) {
        for n in &u.withdrawn_v4 {
            self.withdraw_v4(peer, *n);
        }
        for n in &u.withdrawn_v6 {
            self.withdraw_v6(peer, *n);
        }
        if let Some(a) = &u.attrs_v4 {
            self.announce_v4(peer, a, &u.announced_v4);
        }
        if let Some(a) = &u.attrs_v6 {
            self.announce_v6(peer, a, &u.announced_v6);
        }
    }

    pub fn announce_v4(&mut self, peer: PeerId, attrs: &PathAttrs, nlri: &[Nlri<Ipv4Net>]) {
        self.announce(peer, attrs, nlri);
    }

    pub fn announce_v6(&mut self, peer: PeerId, attrs: &PathAttrs, nlri: &[Nlri<Ipv6Net>]) {
        self.announce(peer, attrs, nlri);
    }

    pub fn withdraw_v4(&mut self, peer: PeerId, n: Nlri<Ipv4Net>) {
        self.withdraw(peer, n);
    }

    pub fn withdraw_v6(&mut self, peer: PeerId, n: Nlri<Ipv6Net>) {
        self.withdraw(peer, n);
    }

    fn withdraw<P: RibPrefix>(&mut self, peer: PeerId, n: Nlri<P>)
    where
        Self: TableOf<P>,
    {
        self.unmark_stale(peer, std::slice::from_ref(&n));
        let (table, ctx) = self.parts::<P>();
        let gone = remove_path(table, &ctx, n.prefix, |p| {
            p.peer == peer && p.path_id == n.path_id
        });
        if let Some(c) = self.count(peer, P::FAMILY) {
            *c = c.saturating_sub(gone);
        }
    }

    /// Originates a route from this speaker (service VIPs, pod CIDR).
    pub fn originate(&mut self, prefix: IpNet, attrs: PathAttrs) {
        match prefix {
            IpNet::V4(p) => self.announce_v4(
                PeerId::LOCAL,
                &attrs,
                &[Nlri {
                    prefix: p,
                    path_id: 0,
                }],
            ),
            IpNet::V6(p) => self.announce_v6(
                PeerId::LOCAL,
                &attrs,
                &[Nlri {
                    prefix: p,
                    path_id: 0,
                }],
            ),
        }
    }

    pub fn withdraw_local(&mut self, prefix: IpNet) {
        match prefix {
            IpNet::V4(p) => self.withdraw_v4(
                PeerId::LOCAL,
                Nlri {
                    prefix: p,
                    path_id: 0,
                },
            ),
            IpNet::V6(p) => self.withdraw_v6(
                PeerId::LOCAL,
                Nlri {
                    prefix: p,
                    path_id: 0,
                },
            ),
        }
    }

    /// Drops every route learned from `peer` (session down without
    /// graceful restart). A full walk: cheaper than a per-peer index for
    /// the usual few peers, and it allocates nothing.
    pub fn peer_down(&mut self, peer: PeerId) {
        self.stale.remove(&peer);
        let (table, ctx) = self.parts::<Ipv4Net>();
        remove_all(table, &ctx, peer);
        let (table, ctx) = self.parts::<Ipv6Net>();
        remove_all(table, &ctx, peer);
        if let Some(c) = self.received.get_mut(peer.0 as usize) {
            *c = [0; 2];
        }
        self.interner.collect_garbage();
    }

    /// A peer's post-policy Adj-RIB-In for IPv4 (a view of the table).
    pub fn adj_rib_in_v4(&self, peer: PeerId) -> impl Iterator<Item = (&Ipv4Net, &Path)> {
        adj_rib_in(&self.v4, peer)
    }

    pub fn adj_rib_in_v6(&self, peer: PeerId) -> impl Iterator<Item = (&Ipv6Net, &Path)> {
        adj_rib_in(&self.v6, peer)
    }

    /// The Loc-RIB best path.
    pub fn best<P: RibPrefix>(&self, table: &Table<P>, p: &P) -> Option<Path> {
        self.multipath(table, p).into_iter().next()
    }

    /// The multipath (ECMP) set, best first; empty when nothing is usable.
    pub fn multipath<P: RibPrefix>(&self, table: &Table<P>, p: &P) -> Vec<Path> {
        match table.routes.get(p) {
            None => Vec::new(),
            Some(PathList::One(path)) => {
                if self.ctx().usable(path) {
                    vec![path.clone()]
                } else {
                    Vec::new()
                }
            }
            Some(PathList::Many(m)) => m.paths[..m.selected].to_vec(),
        }
    }

    /// Every usable candidate (next hop resolvable), the multipath set
    /// first: what a peer hears under ADD-PATH.
    pub fn usable_paths<P: RibPrefix>(&self, table: &Table<P>, p: &P) -> Vec<Path> {
        let ctx = self.ctx();
        match table.routes.get(p) {
            None => Vec::new(),
            Some(list) => list
                .as_slice()
                .iter()
                .filter(|x| ctx.usable(x))
                .cloned()
                .collect(),
        }
    }

    fn ctx(&self) -> DecisionCtx<'_> {
        DecisionCtx {
            peers: &self.peers,
            igp: self.igp.as_ref(),
            cfg: &self.cfg.decision,
        }
    }

    /// Loop checks (RFC 4271 §9.1.2, RFC 4456 §8).
    fn loop_check(&self, peer: PeerId, attrs: &PathAttrs) -> Result<(), Rejection> {
        let Some(info) = self.peer(peer) else {
            return Err(Rejection::Policy);
        };
        // Whoever it came from, eBGP or iBGP: a path through our own AS has looped (an iBGP
        // peer never adds our AS, so on iBGP it came back round through another AS).
        if peer != PeerId::LOCAL && attrs.as_path.contains(self.cfg.local_as) {
            return Err(Rejection::AsLoop);
        }
        if peer != PeerId::LOCAL && attrs.originator_id == Some(self.cfg.router_id) {
            return Err(Rejection::OriginatorLoop);
        }
        if let Some(c) = self.cfg.cluster_id {
            if attrs.cluster_list.contains(&c) {
                return Err(Rejection::ClusterLoop);
            }
        }
        let next_hop_self = match attrs.next_hop {
            Some(IpAddr::V4(a)) => info.local_address == Some(a),
            Some(IpAddr::V6(a)) => info.local_address_v6 == Some(a),
            None => false,
        };
        if peer != PeerId::LOCAL && next_hop_self {
            return Err(Rejection::NextHopSelf);
        }
        Ok(())
    }

    fn announce<P: RibPrefix>(&mut self, peer: PeerId, attrs: &PathAttrs, nlri: &[Nlri<P>])
    where
        Self: TableOf<P>,
    {
        if let Err(r) = self.loop_check(peer, attrs) {
            self.rejected[r as usize] += nlri.len() as u64;
            // A looped or rejected re-announcement replaces the old path:
            // withdraw what we had.
            for n in nlri {
                self.withdraw(peer, *n);
            }
            return;
        }
        // RFC 4724 §4.2: what the peer announces again is no longer stale.
        self.unmark_stale(peer, nlri);
        let shared = self.interner.intern(attrs.clone());
        let policy = self.peer(peer).map(|i| i.import.clone());
        let trivial = policy
            .as_ref()
            .is_none_or(|p| p.rules.is_empty() && p.default_accept);
        for n in nlri {
            let a = if trivial {
                Arc::clone(&shared)
            } else {
                match policy.as_ref().map(|p| p.apply(n.prefix.into(), attrs)) {
                    Some(Outcome::Changed(x)) => self.interner.intern(*x),
                    Some(Outcome::Unchanged) | None => Arc::clone(&shared),
                    Some(Outcome::Reject) => {
                        self.rejected[Rejection::Policy as usize] += 1;
                        self.withdraw(peer, *n);
                        continue;
                    }
                }
            };
            let path = Path {
                attrs: a,
                peer,
                path_id: n.path_id,
            };
            let (table, ctx) = self.parts::<P>();
            if insert_path(table, &ctx, n.prefix, path) {
                if let Some(c) = self.count(peer, P::FAMILY) {
                    *c += 1;
                }
            }
        }
    }

    /// A table and the decision context, borrowed from disjoint fields.
    fn parts<P: RibPrefix>(&mut self) -> (&mut Table<P>, DecisionCtx<'_>)
    where
        Self: TableOf<P>,
    {
        let ctx = DecisionCtx {
            peers: &self.peers,
            igp: self.igp.as_ref(),
            cfg: &self.cfg.decision,
        };
        (<Self as TableOf<P>>::table(&mut self.v4, &mut self.v6), ctx)
    }
}

/// Picks the table for a prefix type.
pub trait TableOf<P> {
    fn table<'a>(v4: &'a mut Table<Ipv4Net>, v6: &'a mut Table<Ipv6Net>) -> &'a mut Table<P>;
}

impl TableOf<Ipv4Net> for Rib {
    fn table<'a>(v4: &'a mut Table<Ipv4Net>, _: &'a mut Table<Ipv6Net>) -> &'a mut Table<Ipv4Net> {
        v4
    }
}

impl TableOf<Ipv6Net> for Rib {
    fn table<'a>(_: &'a mut Table<Ipv4Net>, v6: &'a mut Table<Ipv6Net>) -> &'a mut Table<Ipv6Net> {
        v6
    }
}

fn adj_rib_in<P: RibPrefix>(t: &Table<P>, peer: PeerId) -> impl Iterator<Item = (&P, &Path)> {
    t.routes.iter().flat_map(move |(p, l)| {
        l.as_slice()
            .iter()
            .filter(move |x| x.peer == peer)
            .map(move |x| (p, x))
    })
}

/// Borrowed pieces the decision needs, split from `Rib` so a table can be
/// borrowed mutably at the same time.
struct DecisionCtx<'a> {
    peers: &'a [Option<PeerInfo>],
    igp: &'a (dyn IgpCost + Send + Sync),
    cfg: &'a DecisionConfig,
}

impl DecisionCtx<'_> {
    fn peer(&self, id: PeerId) -> Option<&PeerInfo> {
        self.peers.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// The IGP cost of a path's next hop; `None` when the path is not
    /// usable (peer gone, next hop unreachable). Our own routes are always
    /// usable: their next hop, if any, is ours to announce.
    fn cost(&self, p: &Path) -> Option<u32> {
        let info = self.peer(p.peer)?;
        if p.peer == PeerId::LOCAL {
            return Some(0);
        }
        let reach = if info.is_ebgp() && !info.multihop {
            Reach::Connected
        } else {
            Reach::Resolved
        };
        self.igp.cost(p.attrs.next_hop, reach)
    }

    fn usable(&self, p: &Path) -> bool {
        self.cost(p).is_some()
    }

    /// Reorders `paths` so the multipath set leads; returns its size.
    fn select(&self, paths: &mut [Path]) -> usize {
        let cands: Vec<_> = paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let info = self.peer(p.peer)?;
                let cost = self.cost(p)?;
                Some(decision::candidate(i, &p.attrs, p, info, cost, self.cfg))
            })
            .collect();
        let Some((_, multi)) = decision::select(cands, self.cfg) else {
            return 0;
        };
        // Move the chosen indices to the front, in order.
        let mut order: Vec<usize> = multi.clone();
        order.extend((0..paths.len()).filter(|i| !multi.contains(i)));
        let reordered: Vec<Path> = order.iter().map(|&i| paths[i].clone()).collect();
        paths.clone_from_slice(&reordered);
        multi.len()
    }
}

fn selected(list: &PathList, ctx: &DecisionCtx<'_>) -> Vec<(PeerId, u32, *const PathAttrs)> {
    let n = match list {
        PathList::One(p) => usize::from(ctx.usable(p)),
        PathList::Many(m) => m.selected,
    };
    list.as_slice()[..n]
        .iter()
        .map(|p| (p.peer, p.path_id, Arc::as_ptr(&p.attrs)))
        .collect()
}

/// Adds `path` or replaces the one it updates; true if it was added.
fn insert_path<P: RibPrefix>(
    t: &mut Table<P>,
    ctx: &DecisionCtx<'_>,
    prefix: P,
    path: Path,
) -> bool {
    use std::collections::btree_map::Entry;
    match t.routes.entry(prefix) {
        Entry::Vacant(v) => {
            v.insert(PathList::One(path));
            t.dirty.push(prefix);
            true
        }
        Entry::Occupied(mut o) => {
            let list = o.get_mut();
            let before = selected(list, ctx);
            let mut paths = std::mem::replace(
                list,
                PathList::Many(Box::new(Multi {
                    paths: Vec::new(),
                    selected: 0,
                })),
            )
            .into_vec();
            let added = match paths
                .iter_mut()
                .find(|p| p.peer == path.peer && p.path_id == path.path_id)
            {
                Some(slot) => {
                    *slot = path;
                    false
                }
                None => {
                    paths.push(path);
                    true
                }
            };
            *list = rebuild(paths, ctx);
            if selected(list, ctx) != before {
                t.dirty.push(prefix);
            }
            added
        }
    }
}

/// Removes the paths of `prefix` that `matches`; returns how many.
fn remove_path<P: RibPrefix>(
    t: &mut Table<P>,
    ctx: &DecisionCtx<'_>,
    prefix: P,
    matches: impl Fn(&Path) -> bool,
) -> usize {
    let Some(list) = t.routes.get_mut(&prefix) else {
        return 0;
    };
    if !list.as_slice().iter().any(&matches) {
        return 0;
    }
    let before = selected(list, ctx);
    let mut paths = std::mem::replace(
        list,
        PathList::Many(Box::new(Multi {
            paths: Vec::new(),
            selected: 0,
        })),
    )
    .into_vec();
    let had = paths.len();
    paths.retain(|p| !matches(p));
    let gone = had - paths.len();
    if paths.is_empty() {
        t.routes.remove(&prefix);
        t.dirty.push(prefix);
        return gone;
    }
    *list = rebuild(paths, ctx);
    if selected(list, ctx) != before {
        t.dirty.push(prefix);
    }
    gone
}

/// Runs the decision again for every prefix of `t` after a change of
/// the IGP hook: `before` judged the current selection, `after` makes the
/// new one.
fn reselect<P: RibPrefix>(t: &mut Table<P>, before: &DecisionCtx<'_>, after: &DecisionCtx<'_>) {
    for (prefix, list) in t.routes.iter_mut() {
        let old = selected(list, before);
        let paths = std::mem::replace(
            list,
            PathList::Many(Box::new(Multi {
                paths: Vec::new(),
                selected: 0,
            })),
        )
        .into_vec();
        *list = rebuild(paths, after);
        if selected(list, after) != old {
            t.dirty.push(*prefix);
        }
    }
}

fn remove_all<P: RibPrefix>(t: &mut Table<P>, ctx: &DecisionCtx<'_>, peer: PeerId) {
    let affected: Vec<P> = t
        .routes
        .iter()
        .filter(|(_, l)| l.as_slice().iter().any(|p| p.peer == peer))
        .map(|(p, _)| *p)
        .collect();
    for p in affected {
        remove_path(t, ctx, p, |x| x.peer == peer);
    }
}

fn rebuild(mut paths: Vec<Path>, ctx: &DecisionCtx<'_>) -> PathList {
    if paths.len() == 1 {
        if let Some(p) = paths.pop() {
            return PathList::One(p);
        }
    }
    let selected = ctx.select(&mut paths);
    PathList::Many(Box::new(Multi { paths, selected }))
}

impl PathList {
    fn into_vec(self) -> Vec<Path> {
        match self {
            PathList::One(p) => vec![p],
            PathList::Many(m) => m.paths,
        }
    }
}
