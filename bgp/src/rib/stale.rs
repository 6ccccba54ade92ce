//! Stale paths of a restarting peer (RFC 4724 §4.2, the Receiving
//! Speaker): kept and used for forwarding exactly like fresh ones while
//! the peer is away, replaced by what it announces once back, and deleted
//! at its End-of-RIB or when it does not come back in time.
//!
//! A path stays a normal [`Path`](super::Path) in its table; staleness is
//! a side set of (prefix, path id) per peer. The decision process never
//! looks at it (§4.2: stale and other routes are not told apart in
//! forwarding), which is also what lets a path announced again with the
//! same attributes replace its stale self without any FIB change.

use super::{remove_all, PeerId, Rib, RibPrefix};
use crate::config::Family;
use crate::update_rx::Nlri;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeSet;

fn family_of(p: &IpNet) -> Family {
    match p {
        IpNet::V4(_) => Family::Ipv4Unicast,
        IpNet::V6(_) => Family::Ipv6Unicast,
    }
}

impl Rib {
    /// The peer's session ended and it may be restarting: its paths of
    /// the `keep` families become stale, its other paths are deleted.
    /// Paths still stale from an earlier restart are deleted first (RFC
    /// 4724 §4.2: "to deal with possible consecutive restarts").
    pub fn mark_stale(&mut self, peer: PeerId, keep: &[Family]) {
        if peer == PeerId::LOCAL {
            return;
        }
        for f in Family::ALL {
            self.sweep_stale(peer, f);
            if !keep.contains(&f) {
                self.drop_family(peer, f);
            }
        }
        let mut set = BTreeSet::new();
        if keep.contains(&Family::Ipv4Unicast) {
            set.extend(
                self.adj_rib_in_v4(peer)
                    .map(|(p, path)| (IpNet::V4(*p), path.path_id)),
            );
        }
        if keep.contains(&Family::Ipv6Unicast) {
            set.extend(
                self.adj_rib_in_v6(peer)
                    .map(|(p, path)| (IpNet::V6(*p), path.path_id)),
            );
        }
        if set.is_empty() {
            self.stale.remove(&peer);
        } else {
            self.stale.insert(peer, set);
        }
        self.interner.collect_garbage();
    }

    /// Deletes the peer's paths of `family` that are still stale (its
    /// End-of-RIB came, or we stopped waiting for it); returns how many.
    pub fn sweep_stale(&mut self, peer: PeerId, family: Family) -> usize {
        let Some(set) = self.stale.get_mut(&peer) else {
            return 0;
        };
        let gone: Vec<(IpNet, u32)> = set
            .iter()
            .filter(|(p, _)| family_of(p) == family)
            .copied()
            .collect();
        set.retain(|(p, _)| family_of(p) != family);
        if set.is_empty() {
            self.stale.remove(&peer);
        }
        for (prefix, path_id) in &gone {
            match *prefix {
                IpNet::V4(prefix) => self.withdraw_v4(
                    peer,
                    Nlri {
                        prefix,
                        path_id: *path_id,
                    },
                ),
                IpNet::V6(prefix) => self.withdraw_v6(
                    peer,
                    Nlri {
                        prefix,
                        path_id: *path_id,
                    },
                ),
            }
        }
        if !gone.is_empty() {
            self.interner.collect_garbage();
        }
        gone.len()
    }

    /// True if the peer's path (`prefix`, `path_id`) is stale.
    pub fn is_stale(&self, peer: PeerId, prefix: IpNet, path_id: u32) -> bool {
        self.stale
            .get(&peer)
            .is_some_and(|s| s.contains(&(prefix, path_id)))
    }

    /// How many of the peer's paths are stale.
    pub fn stale_count(&self, peer: PeerId) -> usize {
        self.stale.get(&peer).map_or(0, |s| s.len())
    }

    /// Paths `nlri` were announced or withdrawn again: no longer stale.
    pub(super) fn unmark_stale<P: RibPrefix>(&mut self, peer: PeerId, nlri: &[Nlri<P>]) {
        if self.stale.is_empty() {
            return;
        }
        let Some(set) = self.stale.get_mut(&peer) else {
            return;
        };
        for n in nlri {
            set.remove(&(n.prefix.into(), n.path_id));
        }
        if set.is_empty() {
            self.stale.remove(&peer);
        }
    }

    /// Deletes every path of `peer` in one family.
    fn drop_family(&mut self, peer: PeerId, family: Family) {
        match family {
            Family::Ipv4Unicast => {
                let (table, ctx) = self.parts::<Ipv4Net>();
                remove_all(table, &ctx, peer);
            }
            Family::Ipv6Unicast => {
                let (table, ctx) = self.parts::<Ipv6Net>();
                remove_all(table, &ctx, peer);
            }
        }
        if let Some(c) = self.count(peer, family) {
            *c = 0;
        }
    }
}
