//! Multicast listener reports (MLDv2, RFC 3810): the router tells the link which IPv6
//! multicast groups it listens to, so that switches snooping MLD forward those groups to it.
//! Its groups are those of RFC 4291 2.8 that a router joins: the solicited-node group of
//! each of its addresses (link-local and Subnet-Router anycast included, RFC 4861 7.2.1) and
//! the all-routers groups ff02::2 and ff05::2; never all-nodes, ff02::1 (RFC 3810 6).
//!
//! It is a listener only, not a multicast router: it sends
//!
//! - unsolicited reports (state changes: `CHANGE_TO_EXCLUDE_MODE` with no sources) when a
//!   port's groups change, the first straight away and [`ROBUSTNESS`] in all, a random
//!   delay of at most [`UNSOLICITED_REPORT_INTERVAL`] apart (RFC 3810 6.1);
//! - current-state reports (`MODE_IS_EXCLUDE`) in answer to a query, after a random delay of
//!   at most the query's Maximum Response Delay (6.2). Queries from a non-link-local source
//!   are discarded (5.1.14); an MLDv1 query (RFC 2710) is answered the same way.
//!
//! Reports go from the port's link-local address to all-MLDv2-routers (ff02::16), with hop
//! limit 1 and a Router Alert hop-by-hop option (RFC 3810 5). The first worker keeps the
//! unsolicited schedule; any worker answers the queries it receives, as with router
//! advertisements.

use std::net::Ipv6Addr;

use crate::buffer::PacketBuffer;
use crate::graph::Nanos;
use crate::router_adverts::Jitter;
use crate::tables::Interface;
use crate::wire::{EtherType, Icmpv6Packet, IpProtocol, Ipv6Packet, Ipv6Repr};

const SECOND: Nanos = 1_000_000_000;

/// The Robustness Variable's default (RFC 3810 9.1): unsolicited reports are sent this
/// many times.
pub const ROBUSTNESS: u8 = 2;
/// The Unsolicited Report Interval's default (RFC 3810 9.11).
pub const UNSOLICITED_REPORT_INTERVAL: Nanos = SECOND;

/// ICMPv6 type of a Multicast Listener Query (RFC 2710, RFC 3810 5.1).
pub const QUERY: u8 = 130;
/// ICMPv6 type of an MLDv1 report (RFC 2710).
pub const REPORT_V1: u8 = 131;
/// ICMPv6 type of an MLDv1 done (RFC 2710).
pub const DONE_V1: u8 = 132;
/// ICMPv6 type of a Version 2 Multicast Listener Report (RFC 3810 5.2).
pub const REPORT_V2: u8 = 143;

/// All MLDv2-capable routers, where reports go (RFC 3810 5.2.14).
pub const ALL_MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);

/// Multicast address record types (RFC 3810 5.2.12).
const MODE_IS_EXCLUDE: u8 = 2;
const CHANGE_TO_EXCLUDE_MODE: u8 = 4;

/// Bytes of a multicast address record without sources.
const RECORD_LEN: usize = 20;
/// The hop-by-hop options header every MLD message carries: next header ICMPv6, length 0
/// (8 bytes), Router Alert with value 0 (MLD, RFC 2711), then a two-byte PadN.
const HOP_BY_HOP: [u8; 8] = [58, 0, 5, 2, 0, 0, 1, 0];

/// The groups `ifc` listens to and reports, each once (sorted), all-nodes left out.
pub fn groups(ifc: &Interface) -> Vec<Ipv6Addr> {
    use crate::nodes::ip6::solicited_node;
    let mut groups = vec![
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
        Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 2),
        solicited_node(&ifc.link_local),
    ];
    for net in &ifc.ipv6 {
        groups.push(solicited_node(&net.addr()));
        if net.prefix_len() < 127 {
            groups.push(solicited_node(&net.network()));
        }
    }
    // Solicited-node groups repeat (addresses that share their last 24 bits); a report's
    // records may come in any order.
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// The Maximum Response Delay a query asks for: MLDv2's Maximum Response Code (RFC 3810
/// 5.1.3, in milliseconds, with an exponential form from 32768 on) or MLDv1's plain
/// milliseconds (RFC 2710 3.4).
pub fn max_response_delay(msg: &[u8]) -> Nanos {
    let code = msg
        .get(4..6)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let millis = if msg.len() >= 28 && code >= 0x8000 {
        let mant = u64::from(code & 0x0fff);
        let exp = u64::from((code >> 12) & 0x7);
        (mant | 0x1000) << (exp + 3)
    } else {
        u64::from(code)
    };
    millis * 1_000_000
}

/// What a port owes the link.
#[derive(Clone, Debug, Default)]
struct PortState {
    /// The groups last announced.
    groups: Vec<Ipv6Addr>,
    /// When the next unsolicited report is due, and how many are left.
    unsolicited: Option<(Nanos, u8)>,
    /// When the answer to a query is due.
    answer: Option<Nanos>,
}

/// Which report is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// An unsolicited one: the port's groups changed (or it came up).
    StateChange,
    /// An answer to a query.
    CurrentState,
}

/// When each port reports its groups.
#[derive(Clone, Debug, Default)]
pub struct Listener {
    ports: Vec<PortState>,
    /// The tables version whose ports were last looked at.
    pub(crate) tables_version: Option<u64>,
    rng: Jitter,
}

impl Listener {
    fn port(&mut self, port: u16) -> &mut PortState {
        let i = usize::from(port);
        if self.ports.len() <= i {
            self.ports.resize_with(i + 1, PortState::default);
        }
        &mut self.ports[i]
    }

    /// The groups of `port` are now `groups` (none: the port has no IPv6): a change is
    /// announced straight away, [`ROBUSTNESS`] times.
    pub fn set_groups(&mut self, port: u16, groups: Vec<Ipv6Addr>, now: Nanos) {
        let state = self.port(port);
        if state.groups == groups {
            return;
        }
        state.unsolicited = (!groups.is_empty()).then_some((now, ROBUSTNESS));
        if groups.is_empty() {
            state.answer = None;
        }
        state.groups = groups;
    }

    /// The groups of `port` are now `groups`, announced by another worker: this one only
    /// answers queries about them.
    pub fn set_groups_quietly(&mut self, port: u16, groups: Vec<Ipv6Addr>) {
        let state = self.port(port);
        if groups.is_empty() {
            state.answer = None;
        }
        state.groups = groups;
    }

    /// A query arrived on `port` asking for answers within `max_delay`: the current-state
    /// report goes out after a random part of it, or sooner if one was due sooner already
    /// (RFC 3810 6.2).
    pub fn queried(&mut self, port: u16, now: Nanos, max_delay: Nanos) {
        let at = now + self.rng.up_to(max_delay);
        let state = self.port(port);
        state.answer = Some(state.answer.map_or(at, |due| due.min(at)));
    }

    /// The reports due at `now`, each taken as sent: (port, kind).
    pub fn due(&mut self, now: Nanos) -> Vec<(u16, ReportKind)> {
        let mut due = Vec::new();
        for port in 0..self.ports.len() {
            if let Some((at, left)) = self.ports[port].unsolicited {
                if at <= now {
                    let next = now + 1 + self.rng.up_to(UNSOLICITED_REPORT_INTERVAL - 1);
                    self.ports[port].unsolicited = (left > 1).then_some((next, left - 1));
                    due.push((port as u16, ReportKind::StateChange));
                    continue;
                }
            }
            if self.ports[port].answer.is_some_and(|at| at <= now) {
                self.ports[port].answer = None;
                due.push((port as u16, ReportKind::CurrentState));
            }
        }
        due
    }

    /// The groups `port` announces.
    pub fn groups_of(&self, port: u16) -> &[Ipv6Addr] {
        self.ports
            .get(usize::from(port))
            .map_or(&[], |p| &p.groups[..])
    }
}

/// Turns `buf` into an MLDv2 report of `groups` from `ifc` (as many as fit its MTU), with
/// its Ethernet header. False when it could not be built.
pub fn make_report<B: PacketBuffer>(
    buf: &mut B,
    ifc: &Interface,
    groups: &[Ipv6Addr],
    kind: ReportKind,
) -> bool {
    let room = usize::from(ifc.mtu).saturating_sub(40 + HOP_BY_HOP.len() + 8);
    let groups = &groups[..groups.len().min(room / RECORD_LEN)];
    let msg_len = 8 + groups.len() * RECORD_LEN;
    let ip = Ipv6Repr {
        src_addr: ifc.link_local,
        dst_addr: ALL_MLDV2_ROUTERS,
        next_header: IpProtocol::HOP_BY_HOP,
        payload_len: HOP_BY_HOP.len() + msg_len,
        hop_limit: 1,
        traffic_class: 0,
        flow_label: 0,
    };
    let record_type = match kind {
        ReportKind::StateChange => CHANGE_TO_EXCLUDE_MODE,
        ReportKind::CurrentState => MODE_IS_EXCLUDE,
    };
    let mut ok = false;
    let rebuilt = crate::nodes::rebuild(buf, 40 + ip.payload_len, |data| {
        let (header, rest) = data.split_at_mut(40);
        if ip.emit(&mut Ipv6Packet::new_unchecked(header)).is_err() {
            return;
        }
        let (hop_by_hop, msg) = rest.split_at_mut(HOP_BY_HOP.len());
        hop_by_hop.copy_from_slice(&HOP_BY_HOP);
        msg.fill(0);
        msg[0] = REPORT_V2;
        msg[6..8].copy_from_slice(&(groups.len() as u16).to_be_bytes());
        for (record, group) in msg[8..].chunks_exact_mut(RECORD_LEN).zip(groups) {
            record[0] = record_type;
            record[4..].copy_from_slice(&group.octets());
        }
        Icmpv6Packet::new_unchecked(msg).fill_checksum(&ifc.link_local, &ALL_MLDV2_ROUTERS);
        ok = true;
    });
    rebuilt
        && ok
        && crate::nodes::push_ethernet(
            buf,
            crate::nodes::icmp6::nd::multicast_mac(&ALL_MLDV2_ROUTERS),
            ifc,
            EtherType::IPV6,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_response_codes_decode() {
        let query = |code: u16, len: usize| {
            let mut m = vec![QUERY, 0, 0, 0];
            m.extend_from_slice(&code.to_be_bytes());
            m.resize(len, 0);
            m
        };
        assert_eq!(max_response_delay(&query(10_000, 28)), 10 * SECOND);
        // 0x8000 | exp 0 | mant 0: (0x1000) << 3 ms.
        assert_eq!(max_response_delay(&query(0x8000, 28)), 32_768 * 1_000_000);
        // MLDv1: plain milliseconds, whatever the value.
        assert_eq!(max_response_delay(&query(0x9000, 24)), 0x9000 * 1_000_000);
    }

    #[test]
    fn a_change_is_reported_twice_then_queries_are_answered_in_time() {
        let mut l = Listener::default();
        let g = vec![Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2)];
        l.set_groups(1, g.clone(), 100);
        assert_eq!(l.due(100), [(1, ReportKind::StateChange)]);
        assert!(l.due(100).is_empty());
        let later = 100 + UNSOLICITED_REPORT_INTERVAL;
        assert_eq!(l.due(later), [(1, ReportKind::StateChange)]);
        assert!(l.due(later + 10 * SECOND).is_empty(), "twice only");
        // The same groups again: nothing new to say.
        l.set_groups(1, g, later);
        assert!(l.due(later + 20 * SECOND).is_empty());
        let t = later + 30 * SECOND;
        l.queried(1, t, SECOND);
        let answered = (0..=10).find_map(|k| {
            let at = t + k * SECOND / 10;
            (!l.due(at).is_empty()).then_some(at)
        });
        assert!(answered.is_some_and(|at| at <= t + SECOND));
        assert_eq!(l.groups_of(1).len(), 1);
        assert!(l.groups_of(7).is_empty());
    }
}
