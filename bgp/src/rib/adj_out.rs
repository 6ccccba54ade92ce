//! Adj-RIB-Out (RFC 4271 §3.2, §9.1.3): what each peer is told, after
//! split horizon, route reflection (RFC 4456) and export policy.
//!
//! Without ADD-PATH a peer hears the best path of each prefix. With
//! ADD-PATH send negotiated for a family (RFC 7911) it hears every usable
//! path of the prefix, the multipath set first, each exported on its own
//! (split horizon, reflection and policy are per path). RFC 7911 leaves
//! the choice of paths open; "all of them" is what BIRD's `add paths tx`
//! does and what lets a route-reflector client see every exit and build
//! its own ECMP set, as if it had our sessions. Each advertised path gets
//! an identifier of ours, kept for as long as the path (its source peer
//! and the source's own identifier) is advertised: an attribute change
//! replaces it in place and a withdrawal names exactly that path.

use super::{Path, PeerId, PeerInfo, Rib, RibPrefix, Table};
use crate::attrs::{well_known, PathAttrs, RawAttr};
use crate::policy::Outcome;
use crate::update_check::IPV6_EXT_COMMUNITIES;
use crate::update_rx::Nlri;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Routes last advertised to one peer.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    pub v4: OutTable<Ipv4Net>,
    pub v6: OutTable<Ipv6Net>,
}

impl AdjRibOut {
    /// An empty Adj-RIB-Out; `add_path_*`: ADD-PATH send was negotiated
    /// for the family, so every usable path goes out, not just the best.
    pub fn new(add_path_v4: bool, add_path_v6: bool) -> Self {
        Self {
            v4: OutTable::new(add_path_v4),
            v6: OutTable::new(add_path_v6),
        }
    }
}

/// A path as we advertised it under ADD-PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentPath {
    /// Our path identifier for it on this session.
    pub id: u32,
    /// Where it came from: source peer and the source's path identifier.
    pub from: (PeerId, u32),
    pub attrs: Arc<PathAttrs>,
}

/// One family of an [`AdjRibOut`].
#[derive(Debug)]
pub struct OutTable<P> {
    add_path: bool,
    /// Best-path mode: the one path each prefix was advertised with.
    best: BTreeMap<P, Arc<PathAttrs>>,
    /// ADD-PATH mode: every path advertised per prefix, by identifier.
    all: BTreeMap<P, Vec<SentPath>>,
}

impl<P> Default for OutTable<P> {
    fn default() -> Self {
        Self::new(false)
    }
}

impl<P> OutTable<P> {
    pub fn new(add_path: bool) -> Self {
        Self {
            add_path,
            best: BTreeMap::new(),
            all: BTreeMap::new(),
        }
    }

    pub fn add_path(&self) -> bool {
        self.add_path
    }

    /// Prefixes advertised.
    pub fn len(&self) -> usize {
        self.best.len() + self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Paths advertised: more than [`OutTable::len`] under ADD-PATH.
    pub fn paths(&self) -> usize {
        self.best.len() + self.all.values().map(Vec::len).sum::<usize>()
    }
}

impl<P: RibPrefix> OutTable<P> {
    /// Everything advertised, as it was sent: what a route refresh (RFC
    /// 2918) sends again, identifiers unchanged.
    pub fn announcements(&self) -> Vec<(Nlri<P>, Arc<PathAttrs>)> {
        let best = self.best.iter().map(|(p, a)| {
            (
                Nlri {
                    prefix: *p,
                    path_id: 0,
                },
                Arc::clone(a),
            )
        });
        let all = self.all.iter().flat_map(|(p, v)| {
            v.iter().map(|s| {
                (
                    Nlri {
                        prefix: *p,
                        path_id: s.id,
                    },
                    Arc::clone(&s.attrs),
                )
            })
        });
        best.chain(all).collect()
    }

    /// What was advertised for `prefix`: our identifier (0 without
    /// ADD-PATH) and the attributes.
    pub fn get(&self, prefix: &P) -> Vec<(u32, Arc<PathAttrs>)> {
        if let Some(a) = self.best.get(prefix) {
            return vec![(0, Arc::clone(a))];
        }
        self.all.get(prefix).map_or_else(Vec::new, |v| {
            v.iter().map(|s| (s.id, Arc::clone(&s.attrs))).collect()
        })
    }
}

/// What to send to bring a peer up to date. Path identifiers are 0
/// unless the family sends ADD-PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutChanges<P> {
    pub announce: Vec<(Nlri<P>, Arc<PathAttrs>)>,
    pub withdraw: Vec<Nlri<P>>,
}

impl<P> Default for OutChanges<P> {
    fn default() -> Self {
        Self {
            announce: Vec::new(),
            withdraw: Vec::new(),
        }
    }
}

impl<P> OutChanges<P> {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// The exported attributes of the paths a peer should hear for one
/// prefix, each with its source.
type Wanted = Vec<((PeerId, u32), PathAttrs)>;

impl Rib {
    /// The attributes `path` is advertised to `to` with, or `None` when
    /// it must not be advertised there.
    pub fn export_attrs(&self, to: PeerId, prefix: IpNet, path: &Path) -> Option<PathAttrs> {
        if to == path.peer {
            return None;
        }
        let target = self.peer(to)?;
        let source = self.peer(path.peer)?;
        // RFC 1997: what the well-known communities forbid, as received
        // (an export policy may add them for the next AS to honour).
        let communities = &path.attrs.communities;
        if communities.contains(&well_known::NO_ADVERTISE) {
            return None;
        }
        if target.is_ebgp()
            && (communities.contains(&well_known::NO_EXPORT)
                || communities.contains(&well_known::NO_EXPORT_SUBCONFED))
        {
            return None;
        }
        // RFC 8212 §3: without an export policy of its own, an eBGP peer
        // hears only the routes we originate, never what another peer
        // taught us: a node must not become a transit AS, nor pass one
        // node's Service addresses off as its own (see `PeerInfo::export`).
        if target.is_ebgp() && target.export.is_none() && path.peer != PeerId::LOCAL {
            return None;
        }
        let from_ibgp = path.peer != PeerId::LOCAL && !source.is_ebgp();
        let mut a = (*path.attrs).clone();
        if from_ibgp && !target.is_ebgp() {
            // RFC 4271 §9.2 iBGP split horizon, relaxed by RFC 4456 §6:
            // client routes go to everyone, non-client routes to clients.
            let cluster = self.config().cluster_id?;
            if !source.rr_client && !target.rr_client {
                return None;
            }
            // RFC 4456 §8: never reflect a route back to its originator.
            if a.originator_id == Some(target.router_id) {
                return None;
            }
            a.originator_id.get_or_insert(source.router_id);
            a.cluster_list.insert(0, cluster);
        }
        if target.is_ebgp() {
            to_ebgp(&mut a, target, path.peer == PeerId::LOCAL, prefix);
        } else {
            a.local_pref
                .get_or_insert(self.config().decision.default_local_pref);
            if a.next_hop.is_none() {
                set_next_hop_self(&mut a, target, prefix);
            }
        }
        match target.export.as_ref().map(|p| p.apply(prefix, &a)) {
            Some(Outcome::Reject) => None,
            None | Some(Outcome::Unchanged) => Some(a),
            Some(Outcome::Changed(b)) => Some(*b),
        }
    }

    /// Compares what `to` should hear for `prefixes` (the Loc-RIB best
    /// path, or every usable path under ADD-PATH) with what it was told,
    /// records the new state in `out`, and returns the difference.
    pub fn sync_adj_rib_out_v4(
        &mut self,
        to: PeerId,
        out: &mut AdjRibOut,
        prefixes: &[Ipv4Net],
    ) -> OutChanges<Ipv4Net> {
        let all = out.v4.add_path;
        let wanted: Vec<Wanted> = prefixes
            .iter()
            .map(|p| self.exported(&self.v4, to, p, all))
            .collect();
        self.diff(&mut out.v4, prefixes, wanted)
    }

    pub fn sync_adj_rib_out_v6(
        &mut self,
        to: PeerId,
        out: &mut AdjRibOut,
        prefixes: &[Ipv6Net],
    ) -> OutChanges<Ipv6Net> {
        let all = out.v6.add_path;
        let wanted: Vec<Wanted> = prefixes
            .iter()
            .map(|p| self.exported(&self.v6, to, p, all))
            .collect();
        self.diff(&mut out.v6, prefixes, wanted)
    }

    /// The paths of `p` that `to` should hear, exported: the best one, or
    /// with `all` every usable one, best first.
    fn exported<P: RibPrefix>(&self, t: &Table<P>, to: PeerId, p: &P, all: bool) -> Wanted {
        let paths = if all {
            self.usable_paths(t, p)
        } else {
            self.best(t, p).into_iter().collect()
        };
        paths
            .iter()
            .filter_map(|path| {
                let a = self.export_attrs(to, (*p).into(), path)?;
                Some(((path.peer, path.path_id), a))
            })
            .collect()
    }

    fn diff<P: RibPrefix>(
        &mut self,
        out: &mut OutTable<P>,
        prefixes: &[P],
        wanted: Vec<Wanted>,
    ) -> OutChanges<P> {
        let mut ch = OutChanges::default();
        for (p, want) in prefixes.iter().zip(wanted) {
            if out.add_path {
                self.diff_all(&mut out.all, *p, want, &mut ch);
            } else {
                self.diff_best(&mut out.best, *p, want.into_iter().next(), &mut ch);
            }
        }
        ch
    }

    fn diff_best<P: RibPrefix>(
        &mut self,
        sent: &mut BTreeMap<P, Arc<PathAttrs>>,
        p: P,
        want: Option<((PeerId, u32), PathAttrs)>,
        ch: &mut OutChanges<P>,
    ) {
        let nlri = Nlri {
            prefix: p,
            path_id: 0,
        };
        match want {
            None => {
                if sent.remove(&p).is_some() {
                    ch.withdraw.push(nlri);
                }
            }
            Some((_, a)) => {
                if sent.get(&p).is_some_and(|old| **old == a) {
                    return;
                }
                let a = self.intern(a);
                sent.insert(p, Arc::clone(&a));
                ch.announce.push((nlri, a));
            }
        }
    }

    /// ADD-PATH: paths still advertised keep their identifiers; new ones
    /// take the smallest free ones. An identifier freed by a path that
    /// left and taken by a new one in the same pass is not withdrawn: the
    /// announcement replaces it (RFC 7911 §4, one path per identifier).
    fn diff_all<P: RibPrefix>(
        &mut self,
        sent: &mut BTreeMap<P, Vec<SentPath>>,
        p: P,
        want: Wanted,
        ch: &mut OutChanges<P>,
    ) {
        let mut old = sent.remove(&p).unwrap_or_default();
        let mut now: Vec<SentPath> = Vec::with_capacity(want.len());
        let mut fresh = Vec::new();
        for (from, a) in want {
            match old.iter().position(|s| s.from == from) {
                Some(i) => {
                    let s = old.swap_remove(i);
                    if *s.attrs == a {
                        now.push(s);
                    } else {
                        let attrs = self.intern(a);
                        ch.announce.push((nlri(p, s.id), Arc::clone(&attrs)));
                        now.push(SentPath { attrs, ..s });
                    }
                }
                None => fresh.push((from, a)),
            }
        }
        let mut next = 1u32;
        for (from, a) in fresh {
            while now.iter().any(|s| s.id == next) {
                next += 1;
            }
            let attrs = self.intern(a);
            ch.announce.push((nlri(p, next), Arc::clone(&attrs)));
            now.push(SentPath {
                id: next,
                from,
                attrs,
            });
        }
        for s in old {
            if !now.iter().any(|n| n.id == s.id) {
                ch.withdraw.push(nlri(p, s.id));
            }
        }
        if !now.is_empty() {
            now.sort_unstable_by_key(|s| s.id);
            sent.insert(p, now);
        }
    }
}

fn nlri<P>(prefix: P, path_id: u32) -> Nlri<P> {
    Nlri { prefix, path_id }
}

/// RFC 4271 §5.1: to eBGP we prepend our AS, put ourselves as next hop,
/// and drop iBGP-only attributes; MED learned from another AS is not
/// passed on (§5.1.4). Non-transitive extended communities stay in the
/// AS (RFC 4360 §6, RFC 5701 §2 for the IPv6-address-specific ones).
fn to_ebgp(a: &mut PathAttrs, target: &PeerInfo, local: bool, prefix: IpNet) {
    a.as_path.prepend(target.local_as, 1);
    a.local_pref = None;
    a.originator_id = None;
    a.cluster_list.clear();
    a.extended_communities.retain(|c| transitive_extended(c[0]));
    a.unknown
        .retain_mut(|u| u.code != IPV6_EXT_COMMUNITIES || keep_transitive_v6_extended(u));
    if !local {
        a.med = None;
    }
    a.next_hop = None;
    a.next_hop_local = None;
    set_next_hop_self(a, target, prefix);
}

/// The Transitive bit of an extended community's type high octet (RFC
/// 4360 §2: set means non-transitive, "T" is 0 for transitive).
fn transitive_extended(type_high: u8) -> bool {
    type_high & 0x40 == 0
}

/// Drops the non-transitive entries of an IPv6-address-specific extended
/// communities attribute (20 bytes each); false when none is left.
fn keep_transitive_v6_extended(u: &mut RawAttr) -> bool {
    let kept: Vec<u8> = u
        .value
        .chunks_exact(20)
        .filter(|c| transitive_extended(c[0]))
        .flatten()
        .copied()
        .collect();
    u.value = kept;
    !u.value.is_empty()
}

fn set_next_hop_self(a: &mut PathAttrs, target: &PeerInfo, prefix: IpNet) {
    a.next_hop = match prefix {
        IpNet::V4(_) => target.local_address.map(IpAddr::V4),
        IpNet::V6(_) => target.local_address_v6.map(IpAddr::V6),
    };
}
