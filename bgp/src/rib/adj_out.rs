//! Adj-RIB-Out (RFC 4271 §3.2, §9.1.3): what each peer is told, after
//! split horizon, route reflection (RFC 4456) and export policy.

use super::{Path, PeerId, PeerInfo, Rib, RibPrefix, Table};
use crate::attrs::PathAttrs;
use crate::policy::Outcome;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Routes last advertised to one peer.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    pub v4: BTreeMap<Ipv4Net, Arc<PathAttrs>>,
    pub v6: BTreeMap<Ipv6Net, Arc<PathAttrs>>,
}

/// What to send to bring a peer up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutChanges<P> {
    pub announce: Vec<(P, Arc<PathAttrs>)>,
    pub withdraw: Vec<P>,
}

impl<P> Default for OutChanges<P> {
    fn default() -> Self {
        Self {
            announce: Vec::new(),
            withdraw: Vec::new(),
        }
    }
}

impl Rib {
    /// The attributes `path` is advertised to `to` with, or `None` when
    /// it must not be advertised there.
    pub fn export_attrs(&self, to: PeerId, prefix: IpNet, path: &Path) -> Option<PathAttrs> {
        if to == path.peer {
            return None;
        }
        let target = self.peer(to)?;
        let source = self.peer(path.peer)?;
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
        match target.export.apply(prefix, &a) {
            Outcome::Reject => None,
            Outcome::Unchanged => Some(a),
            Outcome::Changed(b) => Some(*b),
        }
    }

    /// Compares the Loc-RIB best paths of `prefixes` with what `to` was
    /// told, records the new state in `out`, and returns the difference.
    pub fn sync_adj_rib_out_v4(
        &mut self,
        to: PeerId,
        out: &mut AdjRibOut,
        prefixes: &[Ipv4Net],
    ) -> OutChanges<Ipv4Net> {
        let bests: Vec<Option<PathAttrs>> = prefixes
            .iter()
            .map(|p| self.export_best(&self.v4, to, p))
            .collect();
        self.diff(&mut out.v4, prefixes, bests)
    }

    pub fn sync_adj_rib_out_v6(
        &mut self,
        to: PeerId,
        out: &mut AdjRibOut,
        prefixes: &[Ipv6Net],
    ) -> OutChanges<Ipv6Net> {
        let bests: Vec<Option<PathAttrs>> = prefixes
            .iter()
            .map(|p| self.export_best(&self.v6, to, p))
            .collect();
        self.diff(&mut out.v6, prefixes, bests)
    }

    fn export_best<P: RibPrefix>(&self, t: &Table<P>, to: PeerId, p: &P) -> Option<PathAttrs> {
        let best = self.best(t, p)?;
        self.export_attrs(to, (*p).into(), &best)
    }

    fn diff<P: RibPrefix>(
        &mut self,
        sent: &mut BTreeMap<P, Arc<PathAttrs>>,
        prefixes: &[P],
        wanted: Vec<Option<PathAttrs>>,
    ) -> OutChanges<P> {
        let mut ch = OutChanges::default();
        for (p, w) in prefixes.iter().zip(wanted) {
            match w {
                None => {
                    if sent.remove(p).is_some() {
                        ch.withdraw.push(*p);
                    }
                }
                Some(a) => {
                    if sent.get(p).is_some_and(|old| **old == a) {
                        continue;
                    }
                    let a = self.intern(a);
                    sent.insert(*p, Arc::clone(&a));
                    ch.announce.push((*p, a));
                }
            }
        }
        ch
    }
}

/// RFC 4271 §5.1: to eBGP we prepend our AS, put ourselves as next hop,
/// and drop iBGP-only attributes; MED learned from another AS is not
/// passed on (§5.1.4).
fn to_ebgp(a: &mut PathAttrs, target: &PeerInfo, local: bool, prefix: IpNet) {
    a.as_path.prepend(target.local_as, 1);
    a.local_pref = None;
    a.originator_id = None;
    a.cluster_list.clear();
    if !local {
        a.med = None;
    }
    a.next_hop = None;
    a.next_hop_local = None;
    set_next_hop_self(a, target, prefix);
}

fn set_next_hop_self(a: &mut PathAttrs, target: &PeerInfo, prefix: IpNet) {
    a.next_hop = match prefix {
        IpNet::V4(_) => target.local_address.map(IpAddr::V4),
        IpNet::V6(_) => target.local_address_v6.map(IpAddr::V6),
    };
}
