//! IPsec's part of [`Tables`](crate::tables::Tables): the security policy database (traffic
//! selectors → outbound SA) and the inbound SA table, as the IKE daemon's CHILD_SAs describe
//! them.
//!
//! Everything here is immutable configuration: keys, selectors, tunnel endpoints. What
//! changes per packet (the outbound sequence number, the replay window, the prepared cipher
//! contexts) lives in the `esp{4,6}-encrypt` / `esp{4,6}-decrypt` nodes of each worker,
//! keyed by SPI, so it survives a swap of the tables. Per-SA counters are shared atomics the
//! nodes add to and the control plane reads.
//!
//! Sequence numbers and replay windows are per worker: an SA is used by one worker only
//! (VPP pins SAs to a thread the same way). With several workers, the ESP nodes hand a
//! packet whose SA another worker keeps to that worker
//! ([`crate::worker::WorkerState::sa_owner`], spread by SPI).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_ipsec::esp::{OuterHeader, SaConfig};
use switchyard_ipsec::ike::wire::TrafficSelector;
use switchyard_ipsec::ike::ChildSaInstall;

/// Counters of one direction of a CHILD_SA, added to by the workers.
#[derive(Debug, Default)]
pub struct SaStats {
    /// Packets encrypted or decrypted.
    pub packets: AtomicU64,
    /// Their inner bytes.
    pub bytes: AtomicU64,
    /// Inbound: replayed or too old.
    pub replay_drops: AtomicU64,
    /// Inbound: the ICV did not verify.
    pub auth_failures: AtomicU64,
    /// Inbound: decrypted, but the inner packet is outside the SA's selectors.
    pub policy_drops: AtomicU64,
    /// Anything else: bad trailers, expired lifetimes, exhausted sequence numbers.
    pub other_drops: AtomicU64,
}

impl SaStats {
    /// Adds one to a counter (relaxed: counters, not synchronisation).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A plain copy, for `show ipsec` and metrics.
    pub fn snapshot(&self) -> SaStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SaStatsSnapshot {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            replay_drops: get(&self.replay_drops),
            auth_failures: get(&self.auth_failures),
            policy_drops: get(&self.policy_drops),
            other_drops: get(&self.other_drops),
        }
    }
}

/// [`SaStats`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SaStatsSnapshot {
    pub packets: u64,
    pub bytes: u64,
    pub replay_drops: u64,
    pub auth_failures: u64,
    pub policy_drops: u64,
    pub other_drops: u64,
}

/// An outbound policy: packets from `local_ts` to `remote_ts` go into `sa`'s tunnel.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// The inner source must match one of these.
    pub local_ts: Vec<TrafficSelector>,
    /// The inner destination must match one of these.
    pub remote_ts: Vec<TrafficSelector>,
    /// Keys and parameters of the outbound SA.
    pub sa: SaConfig,
    /// The tunnel: our address, the peer's, UDP ports when encapsulated (RFC 3948).
    pub outer: OuterHeader,
    /// The SA's counters.
    pub stats: Arc<SaStats>,
}

/// An inbound SA, found by SPI.
#[derive(Debug, Clone)]
pub struct InboundSa {
    /// Keys, replay window size, lifetime.
    pub sa: SaConfig,
    /// Our tunnel address (the outer destination).
    pub local: IpAddr,
    /// The decrypted packet's destination must match one of these ...
    pub local_ts: Vec<TrafficSelector>,
    /// ... and its source one of these (RFC 4301 section 5.2).
    pub remote_ts: Vec<TrafficSelector>,
    /// The SA's counters.
    pub stats: Arc<SaStats>,
}

impl InboundSa {
    /// Whether the SA's selectors cover `flow`: from one of the peer's (`remote_ts`) to one
    /// of ours (`local_ts`), as a packet that came out of it must be (RFC 4301 section 5.2).
    #[inline]
    pub fn covers(&self, flow: &FlowSelector) -> bool {
        flow_between(&self.remote_ts, &self.local_ts, flow)
    }
}

/// Whether `flow` goes from an address (and port) one of `from` matches to one one of `to`
/// matches.
#[inline]
fn flow_between(from: &[TrafficSelector], to: &[TrafficSelector], flow: &FlowSelector) -> bool {
    from.iter()
        .any(|ts| selector_matches(ts, flow.src, flow.proto, flow.src_port))
        && to
            .iter()
            .any(|ts| selector_matches(ts, flow.dst, flow.proto, flow.dst_port))
}

/// ESP that arrived with the SPI of no inbound SA, by sender and SPI, for the IKE daemon to
/// tell the sender of (RFC 7296 3.10.1, INVALID_SPI, sent in an INFORMATIONAL exchange on the
/// IKE SA with it): a short queue the decrypt nodes add to and the daemon empties. A worker
/// never waits on it: a report that finds it busy or full is left out (the sender keeps
/// sending, and is reported again).
#[derive(Debug, Default)]
pub struct SpiReports {
    queue: Mutex<VecDeque<(IpAddr, u32)>>,
}

impl SpiReports {
    /// Most reports waiting at once.
    pub const CAPACITY: usize = 64;

    /// Reports ESP from `sender` with the unknown SPI `spi`, unless it is waiting already.
    pub fn report(&self, sender: IpAddr, spi: u32) {
        let Ok(mut queue) = self.queue.try_lock() else {
            return;
        };
        if queue.len() < Self::CAPACITY && !queue.contains(&(sender, spi)) {
            queue.push_back((sender, spi));
        }
    }

    /// Takes the waiting reports, oldest first.
    pub fn take(&self) -> Vec<(IpAddr, u32)> {
        self.queue
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }
}

/// The SPD and SA table.
#[derive(Debug, Clone, Default)]
pub struct IpsecTables {
    /// Changes whenever the set of SAs does; the nodes drop the state of SAs that are gone
    /// when they see a new one.
    pub generation: u64,
    /// Outbound policies, first match wins.
    pub outbound: Vec<OutboundPolicy>,
    /// Inbound SAs, in no order (found by SPI).
    pub inbound: Vec<InboundSa>,
    /// Virtual IPs peers assigned us (IKEv2 configuration payload): addresses of this node
    /// while their CHILD_SAs live. [`Tables::set_ipsec`](crate::tables::Tables::set_ipsec)
    /// gives them local routes, and `ip{4,6}-local` answers for them as for the ports'.
    pub local_addresses: Vec<IpAddr>,
    /// Virtual IPs we leased to peers, each with the far end of its tunnel. `esp-encrypt`
    /// sees forwarded packets only, so a host's virtual IP needs a route:
    /// [`Tables::set_ipsec`](crate::tables::Tables::set_ipsec) gives it the route of the
    /// tunnel's far end, and the SPD then takes the packet into the tunnel.
    pub leased_addresses: Vec<(IpAddr, IpAddr)>,
    /// The FIB entries [`Tables::set_ipsec`](crate::tables::Tables::set_ipsec) added for the
    /// two above (those already routed otherwise are left alone), taken out again when
    /// these tables are replaced.
    pub fib_entries: Vec<ipnet::IpNet>,
    /// Where the decrypt nodes report ESP with an unknown SPI (shared with the IKE daemon,
    /// and from one version of the tables to the next).
    pub spi_reports: Arc<SpiReports>,
}

/// Whether `addr` (with `proto` and `port`) falls in the selector. Protocols without ports
/// match as port 0, which any full port range (the usual case) contains.
#[inline]
pub fn selector_matches(ts: &TrafficSelector, addr: IpAddr, proto: u8, port: u16) -> bool {
    (ts.protocol == 0 || ts.protocol == proto)
        && (ts.start_port..=ts.end_port).contains(&port)
        && match (ts.start, ts.end, addr) {
            (IpAddr::V4(s), IpAddr::V4(e), IpAddr::V4(a)) => s <= a && a <= e,
            (IpAddr::V6(s), IpAddr::V6(e), IpAddr::V6(a)) => s <= a && a <= e,
            _ => false,
        }
}

/// The 5-tuple policies look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSelector {
    /// Inner source address.
    pub src: IpAddr,
    /// Inner destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub proto: u8,
    /// Source port (0 for protocols without ports and for non-first fragments).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl IpsecTables {
    /// True when there is nothing to do (the nodes then pass every packet).
    pub fn is_empty(&self) -> bool {
        self.outbound.is_empty() && self.inbound.is_empty()
    }

    /// The first outbound policy matching the flow.
    #[inline]
    pub fn outbound_for(&self, flow: &FlowSelector) -> Option<&OutboundPolicy> {
        self.outbound_index_for(flow).map(|i| &self.outbound[i])
    }

    /// The index in `outbound` of the first policy matching the flow.
    #[inline]
    pub fn outbound_index_for(&self, flow: &FlowSelector) -> Option<usize> {
        self.outbound
            .iter()
            .position(|p| flow_between(&p.local_ts, &p.remote_ts, flow))
    }

    /// The inbound SA with this SPI.
    #[inline]
    pub fn inbound_by_spi(&self, spi: u32) -> Option<&InboundSa> {
        self.inbound.iter().find(|s| s.sa.spi == spi)
    }

    /// Adds a CHILD_SA as the IKE engine hands it over: its outbound policy (our selectors →
    /// the peer's) and its inbound SA.
    pub fn add_child(&mut self, child: &ChildSaInstall) {
        let mut outer = OuterHeader::new(child.local_addr, child.remote_addr);
        if let Some((local_port, remote_port)) = child.udp_encap {
            outer = outer.with_udp(local_port, remote_port);
        }
        self.outbound.push(OutboundPolicy {
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            sa: child.outbound.clone(),
            outer,
            stats: Arc::default(),
        });
        self.inbound.push(InboundSa {
            sa: child.inbound.clone(),
            local: child.local_addr,
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            stats: Arc::default(),
        });
        for &addr in &child.local_vips {
            if !self.local_addresses.contains(&addr) {
                self.local_addresses.push(addr);
            }
        }
        for &addr in &child.remote_vips {
            if !self.leased_addresses.iter().any(|(a, _)| *a == addr) {
                self.leased_addresses.push((addr, child.remote_addr));
            }
        }
    }

    /// True when `addr` is a virtual IP a peer assigned us.
    #[inline]
    pub fn is_local_address(&self, addr: IpAddr) -> bool {
        !self.local_addresses.is_empty() && self.local_addresses.contains(&addr)
    }

    /// Tables for a set of CHILD_SAs (newest last: an older SA with the same selectors, kept
    /// during a rekey, stays behind the newer one for outbound traffic). Counters of SAs
    /// present in `previous` carry over.
    pub fn from_children<'a>(
        generation: u64,
        children: impl IntoIterator<Item = &'a ChildSaInstall>,
        previous: Option<&IpsecTables>,
    ) -> Self {
        let mut t = IpsecTables {
            generation,
            ..Default::default()
        };
        for child in children {
            t.add_child(child);
        }
        t.outbound.reverse();
        if let Some(prev) = previous {
            t.spi_reports = Arc::clone(&prev.spi_reports);
            for p in &mut t.outbound {
                if let Some(old) = prev.outbound.iter().find(|o| o.sa.spi == p.sa.spi) {
                    p.stats = Arc::clone(&old.stats);
                }
            }
            for s in &mut t.inbound {
                if let Some(old) = prev.inbound_by_spi(s.sa.spi) {
                    s.stats = Arc::clone(&old.stats);
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(start: &str, end: &str) -> TrafficSelector {
        TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
        }
    }

    #[test]
    fn selectors_match_by_range_family_protocol_and_port() {
        let t = ts("198.18.1.0", "198.18.1.255");
        assert!(selector_matches(&t, "198.18.1.7".parse().unwrap(), 6, 80));
        assert!(!selector_matches(&t, "198.18.2.7".parse().unwrap(), 6, 80));
        assert!(!selector_matches(&t, "2001:db8::1".parse().unwrap(), 6, 80));
        let tcp80 = TrafficSelector {
            protocol: 6,
            start_port: 80,
            end_port: 80,
            ..t
        };
        assert!(selector_matches(
            &tcp80,
            "198.18.1.7".parse().unwrap(),
            6,
            80
        ));
        assert!(!selector_matches(
            &tcp80,
            "198.18.1.7".parse().unwrap(),
            17,
            80
        ));
        assert!(!selector_matches(
            &tcp80,
            "198.18.1.7".parse().unwrap(),
            6,
            81
        ));
        let v6 = ts("2001:db8:1::", "2001:db8:1::ffff");
        assert!(selector_matches(
            &v6,
            "2001:db8:1::9".parse().unwrap(),
            58,
            0
        ));
    }
}
