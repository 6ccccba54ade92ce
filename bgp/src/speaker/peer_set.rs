//! The difference between the peers a speaker runs and the peers it
//! should run, so a new configuration touches only the sessions it
//! changes. Pure: the core task carries the result out.

use super::PeerConfig;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What turns one peer set into another. Peers are known by address: a
/// peer whose address stays but whose settings differ is `changed` (its
/// session must restart, since most settings are fixed once the OPEN is
/// sent); a peer whose settings are equal appears nowhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSetDiff {
    /// Addresses to stop (Cease / Peer De-configured) and forget.
    pub removed: Vec<IpAddr>,
    /// New settings for running peers (Cease / Other Configuration
    /// Change, then start again).
    pub changed: Vec<PeerConfig>,
    /// Peers to start.
    pub added: Vec<PeerConfig>,
}

impl PeerSetDiff {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.changed.is_empty() && self.added.is_empty()
    }
}

/// The diff from `current` to `wanted`, each list in address order.
/// Addresses are assumed unique within each side (the speaker validates
/// `wanted` first); of a repeated address the last entry counts.
pub fn diff(current: &[PeerConfig], wanted: &[PeerConfig]) -> PeerSetDiff {
    let now: BTreeMap<IpAddr, &PeerConfig> = current.iter().map(|p| (p.address, p)).collect();
    let next: BTreeMap<IpAddr, &PeerConfig> = wanted.iter().map(|p| (p.address, p)).collect();
    let mut d = PeerSetDiff::default();
    for (addr, old) in &now {
        match next.get(addr) {
            None => d.removed.push(*addr),
            Some(new) if new != old => d.changed.push((*new).clone()),
            Some(_) => {}
        }
    }
    d.added = next
        .iter()
        .filter(|(addr, _)| !now.contains_key(addr))
        .map(|(_, p)| (*p).clone())
        .collect();
    d
}

/// `current` with `d` carried out, as the core does it: removed and
/// changed peers leave their place, changed and added ones go to the end.
pub fn apply(current: &[PeerConfig], d: &PeerSetDiff) -> Vec<PeerConfig> {
    let leaving = |a: &IpAddr| d.removed.contains(a) || d.changed.iter().any(|c| c.address == *a);
    current
        .iter()
        .filter(|p| !leaving(&p.address))
        .cloned()
        .chain(d.changed.iter().cloned())
        .chain(d.added.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(last: u8, asn: u32) -> PeerConfig {
        PeerConfig::new(IpAddr::from([198, 51, 100, last]), asn)
    }

    #[test]
    fn added_removed_changed_and_untouched() {
        let current = vec![peer(1, 65001), peer(2, 65002), peer(3, 65003)];
        let mut changed = peer(2, 65002);
        changed.md5_password = Some("s3cret".into());
        let wanted = vec![peer(3, 65003), changed.clone(), peer(4, 65004)];
        let d = diff(&current, &wanted);
        assert_eq!(d.removed, vec![IpAddr::from([198, 51, 100, 1])]);
        assert_eq!(d.changed, vec![changed]);
        assert_eq!(d.added, vec![peer(4, 65004)]);
        assert!(diff(&current, &current).is_empty());
        assert_eq!(diff(&[], &current).added.len(), 3);
        assert_eq!(diff(&current, &[]).removed.len(), 3);
    }

    /// Sets of up to 8 peers over 12 addresses, each with one of three
    /// settings.
    fn peer_set() -> impl Strategy<Value = Vec<PeerConfig>> {
        proptest::collection::btree_map(0u8..12, 1u32..4, 0..8).prop_map(|m| {
            m.into_iter()
                .map(|(last, asn)| peer(last, 65000 + asn))
                .collect()
        })
    }

    fn by_address(v: &[PeerConfig]) -> BTreeMap<IpAddr, PeerConfig> {
        v.iter().map(|p| (p.address, p.clone())).collect()
    }

    proptest! {
        /// Carrying out the diff gives exactly the wanted set, and a peer
        /// whose settings are unchanged is never touched.
        #[test]
        fn diff_then_apply_gives_wanted(current in peer_set(), wanted in peer_set()) {
            let d = diff(&current, &wanted);
            prop_assert_eq!(by_address(&apply(&current, &d)), by_address(&wanted));
            for p in current.iter().filter(|p| wanted.contains(p)) {
                prop_assert!(!d.removed.contains(&p.address));
                prop_assert!(d.changed.iter().all(|c| c.address != p.address));
                prop_assert!(d.added.iter().all(|c| c.address != p.address));
            }
            prop_assert_eq!(d.is_empty(), by_address(&current) == by_address(&wanted));
        }
    }
}
