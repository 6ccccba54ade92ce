//! Path attributes as the RIB sees them, and the interner that lets a
//! million prefixes share one copy of each distinct attribute set.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

impl Origin {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Origin::Igp),
            1 => Some(Origin::Egp),
            2 => Some(Origin::Incomplete),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Sequence(Vec<u32>),
    Set(Vec<u32>),
    /// RFC 5065 confederation segments: they do not count in path length.
    ConfedSequence(Vec<u32>),
    ConfedSet(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    pub fn from_sequence(asns: impl Into<Vec<u32>>) -> Self {
        let asns = asns.into();
        if asns.is_empty() {
            return Self::default();
        }
        Self {
            segments: vec![AsSegment::Sequence(asns)],
        }
    }

    /// Length for the decision process (RFC 4271 §9.1.2.2 a): an AS_SET
    /// counts as one, confederation segments do not count (RFC 5065 §5.3).
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
                AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => 0,
            })
            .sum()
    }

    /// The neighbouring AS for MED comparison (RFC 4271 §9.1.2.2 c): the
    /// first AS of a leading AS_SEQUENCE, if any.
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment::Sequence(v)) => v.first().copied(),
            _ => None,
        }
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| match s {
            AsSegment::Sequence(v)
            | AsSegment::Set(v)
            | AsSegment::ConfedSequence(v)
            | AsSegment::ConfedSet(v) => v.contains(&asn),
        })
    }

    /// Prepends `asn` `times` times (export to eBGP, or policy prepend).
    /// Segments hold at most 255 ASNs on the wire, so a full leading
    /// sequence gets a new one in front.
    pub fn prepend(&mut self, asn: u32, times: usize) {
        for _ in 0..times {
            match self.segments.first_mut() {
                Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, asn),
                _ => self.segments.insert(0, AsSegment::Sequence(vec![asn])),
            }
        }
    }
}

/// The well-known communities of RFC 1997 that restrict where a route goes.
pub mod well_known {
    /// Not advertised outside the AS (in a confederation, outside the
    /// confederation): never to an eBGP peer.
    pub const NO_EXPORT: u32 = 0xFFFF_FF01;
    /// Not advertised to any peer.
    pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
    /// Not advertised to eBGP peers, confederation members included. We
    /// are never in a confederation (RFC 5065), so it means NO_EXPORT.
    pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;
}

/// An attribute we do not interpret but must pass on (optional
/// transitive, RFC 4271 §5): kept as raw bytes with its flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

/// One distinct set of path attributes. Routes hold it through an `Arc`
/// obtained from [`AttrInterner`], so equal sets are one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    pub origin: Origin,
    pub as_path: AsPath,
    /// NEXT_HOP for IPv4, the MP_REACH global address for IPv6.
    pub next_hop: Option<IpAddr>,
    /// The optional IPv6 link-local next hop (RFC 2545 §3).
    pub next_hop_local: Option<Ipv6Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub extended_communities: Vec<[u8; 8]>,
    pub large_communities: Vec<[u32; 3]>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub unknown: Vec<RawAttr>,
}

impl PathAttrs {
    pub fn new(origin: Origin, as_path: AsPath, next_hop: Option<IpAddr>) -> Self {
        Self {
            origin,
            as_path,
            next_hop,
            next_hop_local: None,
            med: None,
            local_pref: None,
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            extended_communities: Vec::new(),
            large_communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

/// Hash-consing table for attribute sets.
#[derive(Debug, Default)]
pub struct AttrInterner {
    set: HashSet<Arc<PathAttrs>>,
}

impl AttrInterner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn intern(&mut self, attrs: PathAttrs) -> Arc<PathAttrs> {
        if let Some(a) = self.set.get(&attrs) {
            return Arc::clone(a);
        }
        let a = Arc::new(attrs);
        self.set.insert(Arc::clone(&a));
        a
    }

    /// Drops sets no route uses any more; call after large withdrawals.
    pub fn collect_garbage(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_len_counts_set_as_one_and_skips_confed() {
        let p = AsPath {
            segments: vec![
                AsSegment::ConfedSequence(vec![1, 2]),
                AsSegment::Sequence(vec![3, 4]),
                AsSegment::Set(vec![5, 6, 7]),
            ],
        };
        assert_eq!(p.path_len(), 3);
        assert_eq!(p.first_as(), None);
        assert!(p.contains(6));
    }

    #[test]
    fn prepend_makes_new_segment_when_full() {
        let mut p = AsPath::from_sequence(vec![1; 255]);
        p.prepend(9, 2);
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.first_as(), Some(9));
        assert_eq!(p.path_len(), 257);
    }

    #[test]
    fn interner_shares_and_collects() {
        let mut i = AttrInterner::new();
        let a = i.intern(PathAttrs::new(Origin::Igp, AsPath::default(), None));
        let b = i.intern(PathAttrs::new(Origin::Igp, AsPath::default(), None));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        i.collect_garbage();
        assert!(i.is_empty());
    }
}
