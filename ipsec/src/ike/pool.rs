//! Address pools for virtual IPs (RFC 7296 section 2.19): what a hub hands to the hosts that
//! ask for an internal address, in the manner of strongSwan's in-memory pools (swanctl's
//! `pools { NAME { addrs = ... } }`, ipsec.conf's `rightsourceip = 198.18.100.0/24`), which
//! is what SD-EWAN's `remote_sourceip` becomes in its CNF.
//!
//! A lease belongs to the IKE SA that holds it and is remembered for the peer's identity
//! after that SA goes: the same host coming back gets the same address if nobody else took
//! it meanwhile. Never-used addresses go first, then the longest-forgotten remembered ones,
//! so a full pool still serves new hosts while any lease is offline.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::engine::IkeSaId;
use super::wire::Identification;

/// Why a pool could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("bad address range {0:?} (want a prefix, first-last or an address)")]
    Range(String),
    #[error("address range {0:?} mixes families or runs backwards")]
    Order(String),
    #[error("bad DNS server {0:?}")]
    Dns(String),
    #[error("pool {0:?} has no addresses")]
    Empty(String),
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(v6: bool, value: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        // In range by construction: IPv4 ranges hold IPv4 values only.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

impl AddressRange {
    /// Reads what strongSwan's `addrs` and SD-EWAN's `remote_sourceip` take: a prefix
    /// (`198.18.100.0/24`; with more than two addresses its first and last are left out, as
    /// strongSwan does: the network's own and its broadcast address), `first-last`
    /// (`198.18.100.5-198.18.100.9`, both in), or one address.
    pub fn parse(text: &str) -> Result<Self, PoolError> {
        let text = text.trim();
        let bad = || PoolError::Range(text.to_string());
        if let Some((first, last)) = text.split_once('-') {
            let first: IpAddr = first.trim().parse().map_err(|_| bad())?;
            let last: IpAddr = last.trim().parse().map_err(|_| bad())?;
            if first.is_ipv4() != last.is_ipv4() || bits(first) > bits(last) {
                return Err(PoolError::Order(text.to_string()));
            }
            return Ok(Self { first, last });
        }
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (
                a.trim().parse::<IpAddr>().map_err(|_| bad())?,
                Some(l.trim().parse::<u32>().map_err(|_| bad())?),
            ),
            None => (text.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(width);
        if len > width {
            return Err(bad());
        }
        let host_bits = width - len;
        let span = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let base = bits(addr) & !span;
        let (mut first, mut last) = (base, base | span);
        if span >= 2 {
            first += 1;
            last -= 1;
        }
        let v6 = addr.is_ipv6();
        Ok(Self {
            first: from_bits(v6, first),
            last: from_bits(v6, last),
        })
    }

    pub fn is_ipv6(&self) -> bool {
        self.first.is_ipv6()
    }

    /// How many addresses it holds, saturating at `u128::MAX`.
    pub fn size(&self) -> u128 {
        (bits(self.last) - bits(self.first)).saturating_add(1)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv6() == self.is_ipv6()
            && (bits(self.first)..=bits(self.last)).contains(&bits(addr))
    }

    /// The address `offset` places after the first, if in range.
    fn nth(&self, offset: u128) -> Option<IpAddr> {
        let value = bits(self.first).checked_add(offset)?;
        (value <= bits(self.last)).then(|| from_bits(self.is_ipv6(), value))
    }
}

impl std::fmt::Display for AddressRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Unique name (for SD-EWAN: the resource and connection it belongs to).
    pub name: String,
    /// Its addresses, any mix of families; one address of each family per host.
    pub ranges: Vec<AddressRange>,
    /// DNS servers handed out with the addresses, to hosts that ask for them.
    pub dns: Vec<IpAddr>,
}

impl PoolConfig {
    /// A pool from comma-separated ranges (see [`AddressRange::parse`]) and DNS servers.
    pub fn parse(name: &str, ranges: &str, dns: &str) -> Result<Self, PoolError> {
        let ranges = ranges
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(AddressRange::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if ranges.is_empty() {
            return Err(PoolError::Empty(name.to_string()));
        }
        let dns = dns
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| PoolError::Dns(s.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_string(),
            ranges,
            dns,
        })
    }
}

/// A pool at one moment, for `show ipsec` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    /// Addresses in the pool, saturating.
    pub size: u128,
    /// Leases held by IKE SAs now.
    pub online: usize,
    /// Leases remembered for identities whose IKE SA is gone.
    pub offline: usize,
}

#[derive(Debug, Clone)]
struct Lease {
    owner: Identification,
    /// The IKE SA using it; `None` once that SA is gone (remembered for the owner).
    holder: Option<IkeSaId>,
    /// When it went offline (a sequence number), its key in `AddressPool::offline`.
    released: u64,
}

/// The most leases remembered for identities that are gone; the oldest is forgotten past it.
/// A bound on memory, not on the pool: remembered addresses are handed to others anyway when
/// nothing else is free.
const MAX_OFFLINE: usize = 65_536;

/// A pool with its leases.
#[derive(Debug, Clone)]
pub struct AddressPool {
    config: PoolConfig,
    leases: HashMap<IpAddr, Lease>,
    /// Each owner's remembered address per family (`true`: IPv6).
    by_owner: HashMap<(Identification, bool), IpAddr>,
    /// Offline leases by release order, oldest first.
    offline: BTreeMap<u64, IpAddr>,
    /// Per range, how many of its addresses have been handed out at least once.
    cursors: Vec<u128>,
    release_clock: u64,
}

impl AddressPool {
    pub fn new(config: PoolConfig) -> Self {
        let cursors = vec![0; config.ranges.len()];
        Self {
            config,
            leases: HashMap::new(),
            by_owner: HashMap::new(),
            offline: BTreeMap::new(),
            cursors,
            release_clock: 0,
        }
    }

    /// What the pool was made from.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The DNS servers of one family.
    pub fn dns(&self, v6: bool) -> impl Iterator<Item = IpAddr> + '_ {
        self.config
            .dns
            .iter()
            .copied()
            .filter(move |a| a.is_ipv6() == v6)
    }

    /// True when the pool has addresses of that family.
    pub fn has_family(&self, v6: bool) -> bool {
        self.config.ranges.iter().any(|r| r.is_ipv6() == v6)
    }

    fn contains(&self, addr: IpAddr) -> bool {
        self.config.ranges.iter().any(|r| r.contains(addr))
    }

    /// Leases an address of one family to `holder`, whose peer proved identity `owner`:
    /// the owner's remembered address if it is free, else `wanted` if that is in the pool and
    /// unused, else a never-used address, else the longest-offline remembered one. `None`:
    /// nothing of that family is free.
    pub fn acquire(
        &mut self,
        owner: &Identification,
        holder: IkeSaId,
        v6: bool,
        wanted: Option<IpAddr>,
    ) -> Option<IpAddr> {
        let remembered = self
            .by_owner
            .get(&(owner.clone(), v6))
            .copied()
            .filter(|a| self.leases.get(a).is_some_and(|l| l.holder.is_none()));
        let wanted = wanted
            .filter(|a| a.is_ipv6() == v6 && self.contains(*a) && !self.leases.contains_key(a));
        let addr = remembered
            .or(wanted)
            .or_else(|| self.never_used(v6))
            .or_else(|| self.oldest_offline(v6))?;
        self.take(addr, owner, holder, v6);
        Some(addr)
    }

    fn never_used(&mut self, v6: bool) -> Option<IpAddr> {
        for (i, range) in self.config.ranges.iter().enumerate() {
            if range.is_ipv6() != v6 {
                continue;
            }
            // Addresses handed out on request may sit ahead of the cursor: step over them.
            while let Some(addr) = range.nth(self.cursors[i]) {
                self.cursors[i] += 1;
                if !self.leases.contains_key(&addr) {
                    return Some(addr);
                }
            }
        }
        None
    }

    fn oldest_offline(&self, v6: bool) -> Option<IpAddr> {
        self.offline.values().copied().find(|a| a.is_ipv6() == v6)
    }

    fn take(&mut self, addr: IpAddr, owner: &Identification, holder: IkeSaId, v6: bool) {
        if let Some(old) = self.leases.remove(&addr) {
            self.offline.remove(&old.released);
            if self.by_owner.get(&(old.owner.clone(), v6)) == Some(&addr) {
                self.by_owner.remove(&(old.owner, v6));
            }
        }
        self.leases.insert(
            addr,
            Lease {
                owner: owner.clone(),
                holder: Some(holder),
                released: 0,
            },
        );
        self.by_owner.insert((owner.clone(), v6), addr);
    }

    /// Puts the leases of an IKE SA that is gone offline (remembered for their owners);
    /// returns how many.
    pub fn release(&mut self, holder: IkeSaId) -> usize {
        let mut released = 0;
        for (addr, lease) in self.leases.iter_mut() {
            if lease.holder == Some(holder) {
                self.release_clock += 1;
                lease.holder = None;
                lease.released = self.release_clock;
                self.offline.insert(self.release_clock, *addr);
                released += 1;
            }
        }
        while self.offline.len() > MAX_OFFLINE {
            let Some((_, addr)) = self.offline.pop_first() else {
                break;
            };
            if let Some(lease) = self.leases.remove(&addr) {
                let key = (lease.owner, addr.is_ipv6());
                if self.by_owner.get(&key) == Some(&addr) {
                    self.by_owner.remove(&key);
                }
            }
        }
        released
    }

    /// Hands the leases of one IKE SA to another (the peer rekeyed the IKE SA).
    pub fn transfer(&mut self, from: IkeSaId, to: IkeSaId) {
        for lease in self.leases.values_mut() {
            if lease.holder == Some(from) {
                lease.holder = Some(to);
            }
        }
    }

    pub fn status(&self) -> PoolStatus {
        PoolStatus {
            name: self.config.name.clone(),
            size: self
                .config
                .ranges
                .iter()
                .fold(0u128, |n, r| n.saturating_add(r.size())),
            online: self.leases.len() - self.offline.len(),
            offline: self.offline.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::wire::id_type;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn id(name: &str) -> Identification {
        Identification::new(id_type::FQDN, name.as_bytes().to_vec())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool(ranges: &str) -> AddressPool {
        AddressPool::new(PoolConfig::parse("p", ranges, "").unwrap())
    }

    #[test]
    fn ranges_parse_as_strongswan_reads_them() {
        let r = AddressRange::parse("198.18.100.0/24").unwrap();
        assert_eq!(
            (r.first, r.last),
            (ip("198.18.100.1"), ip("198.18.100.254"))
        );
        assert_eq!(r.size(), 254);
        let r = AddressRange::parse("198.18.100.4/31").unwrap();
        assert_eq!((r.first, r.last), (ip("198.18.100.4"), ip("198.18.100.5")));
        let r = AddressRange::parse(" 198.18.100.5 - 198.18.100.6 ").unwrap();
        assert_eq!(r.size(), 2);
        assert_eq!(r.to_string(), "198.18.100.5-198.18.100.6");
        let r = AddressRange::parse("198.18.100.9").unwrap();
        assert_eq!(r.size(), 1);
        let r = AddressRange::parse("2001:db8:100::/120").unwrap();
        assert_eq!(r.first, ip("2001:db8:100::1"));
        assert_eq!(r.size(), 254);
        assert_eq!(AddressRange::parse("::/0").unwrap().size(), u128::MAX - 1);
        for bad in [
            "",
            "198.18.100.0/33",
            "2001:db8::/129",
            "198.18.1.9-198.18.1.2",
            "198.18.1.1-2001:db8::1",
            "%config",
            "pool1",
        ] {
            assert!(AddressRange::parse(bad).is_err(), "{bad}");
        }
        assert!(PoolConfig::parse("p", " , ", "").is_err());
        assert!(PoolConfig::parse("p", "198.18.1.0/24", "nope").is_err());
        let p = PoolConfig::parse(
            "p",
            "198.18.1.0/24, 2001:db8:1::/64",
            "198.18.0.53,2001:db8::53",
        )
        .unwrap();
        assert_eq!(p.ranges.len(), 2);
        assert_eq!(p.dns.len(), 2);
    }

    #[test]
    fn leases_come_back_to_the_same_identity() {
        let mut p = pool("198.18.100.0/29");
        let a = p.acquire(&id("a"), IkeSaId(1), false, None).unwrap();
        let b = p.acquire(&id("b"), IkeSaId(2), false, None).unwrap();
        assert_eq!((a, b), (ip("198.18.100.1"), ip("198.18.100.2")));
        assert_eq!(
            p.acquire(&id("a"), IkeSaId(3), true, None),
            None,
            "no IPv6 here"
        );
        assert_eq!(p.release(IkeSaId(1)), 1);
        assert_eq!(p.status().online, 1);
        assert_eq!(p.status().offline, 1);
        // Someone else gets a new address; "a" gets its own back.
        let c = p.acquire(&id("c"), IkeSaId(4), false, None).unwrap();
        assert_eq!(c, ip("198.18.100.3"));
        assert_eq!(p.acquire(&id("a"), IkeSaId(5), false, None), Some(a));
        // A second SA of "a" while the first holds its address: another address.
        let again = p.acquire(&id("a"), IkeSaId(6), false, None).unwrap();
        assert_ne!(again, a);
    }

    #[test]
    fn wanted_addresses_and_exhaustion() {
        let mut p = pool("198.18.100.5-198.18.100.7");
        assert_eq!(
            p.acquire(&id("a"), IkeSaId(1), false, Some(ip("198.18.100.7"))),
            Some(ip("198.18.100.7"))
        );
        // Taken, or outside the pool: something else.
        assert_eq!(
            p.acquire(&id("b"), IkeSaId(2), false, Some(ip("198.18.100.7"))),
            Some(ip("198.18.100.5"))
        );
        assert_eq!(
            p.acquire(&id("c"), IkeSaId(3), false, Some(ip("198.18.200.1"))),
            Some(ip("198.18.100.6"))
        );
        // The cursor steps over the address given on request.
        assert_eq!(p.acquire(&id("d"), IkeSaId(4), false, None), None, "full");
        assert_eq!(p.status().online, 3);
        // Once "b" is gone, its remembered address serves "d".
        p.release(IkeSaId(2));
        assert_eq!(
            p.acquire(&id("d"), IkeSaId(4), false, None),
            Some(ip("198.18.100.5"))
        );
        // ... and "b" does not get it back while "d" holds it.
        assert_eq!(p.acquire(&id("b"), IkeSaId(5), false, None), None);
    }

    #[test]
    fn rekeyed_sas_keep_their_leases() {
        let mut p = pool("2001:db8:100::/126");
        let a = p.acquire(&id("a"), IkeSaId(1), true, None).unwrap();
        assert_eq!(a, ip("2001:db8:100::1"));
        p.transfer(IkeSaId(1), IkeSaId(9));
        assert_eq!(p.release(IkeSaId(1)), 0, "the old SA holds nothing");
        assert_eq!(p.release(IkeSaId(9)), 1);
    }

    proptest! {
        #[test]
        fn never_two_holders_for_one_address(ops in proptest::collection::vec((0u8..6, 0u8..4, any::<bool>()), 1..80)) {
            let mut p = pool("198.18.100.0/29");
            let mut held: HashMap<u64, IpAddr> = HashMap::new();
            let mut next = 1u64;
            for (who, what, release) in ops {
                if release {
                    let victims: Vec<u64> = held.keys().copied().filter(|k| k % 4 == u64::from(what)).collect();
                    for k in victims {
                        held.remove(&k);
                        p.release(IkeSaId(k));
                    }
                } else if let Some(addr) = p.acquire(&id(&who.to_string()), IkeSaId(next), false, None) {
                    prop_assert!(AddressRange::parse("198.18.100.0/29").unwrap().contains(addr));
                    held.insert(next, addr);
                    next += 1;
                }
                let unique: HashSet<IpAddr> = held.values().copied().collect();
                prop_assert_eq!(unique.len(), held.len());
                prop_assert_eq!(p.status().online, held.len());
                prop_assert!(held.len() <= 6);
            }
        }
    }
}
