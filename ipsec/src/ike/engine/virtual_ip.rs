//! Virtual IPs in the engine (RFC 7296 sections 2.19 and 3.15): the responder's side (a pool
//! lease for a peer that sends CFG_REQUEST, the CHILD_SA's remote side narrowed to it, the
//! lease released with the IKE SA) and the initiator's (the address a CFG_REPLY assigns).

use std::net::IpAddr;

use super::{Engine, IkeSa, IkeSaId, PeerConfig, VirtualIp};
use crate::ike::cp::{host_selector, AddressReply, AddressRequest};
use crate::ike::pool::PoolStatus;
use crate::ike::wire::{cfg, ConfigAttribute, Identification, Payload, TrafficSelector};

/// What the responder answers to the peer's Configuration payload.
pub(super) enum CfgAnswer {
    /// No CP in the answer: none asked for, or this connection has no pool (RFC 7296 section
    /// 3.15.4: a responder without Configuration payload support ignores them).
    None,
    /// CP(CFG_REPLY), and the addresses it leases (possibly none: DNS servers only).
    Reply {
        payload: Payload,
        leased: Vec<IpAddr>,
    },
    /// An address was asked for and none could be given: INTERNAL_ADDRESS_FAILURE, no
    /// CHILD_SA, the IKE SA stays (section 3.15.4).
    AddressFailure,
}

fn cfg_payload(payloads: &[Payload], wanted: u8) -> Option<&[ConfigAttribute]> {
    payloads.iter().find_map(|p| match p {
        Payload::Cp {
            cfg_type,
            attributes,
        } if *cfg_type == wanted => Some(attributes.as_slice()),
        _ => None,
    })
}

/// The addresses a CFG_REPLY in `payloads` assigns, of the families in `asked`, and how many
/// of its attributes were malformed.
pub(super) fn assigned_addresses(payloads: &[Payload], asked: &[IpAddr]) -> (Vec<IpAddr>, u64) {
    let Some(attributes) = cfg_payload(payloads, cfg::REPLY) else {
        return (Vec::new(), 0);
    };
    let reply = AddressReply::parse(attributes);
    let addresses = reply
        .value
        .addresses()
        .into_iter()
        .filter(|a| asked.iter().any(|w| w.is_ipv4() == a.is_ipv4()))
        .collect();
    (addresses, reply.malformed as u64)
}

/// Our side of the IKE SA's CHILD_SAs: its virtual IPs when the peer assigned some, else the
/// configured selectors.
pub(super) fn sa_local_ts(sa: &IkeSa, peer: &PeerConfig) -> Vec<TrafficSelector> {
    if sa.virtual_ips.is_empty() {
        peer.local_ts.clone()
    } else {
        sa.virtual_ips.iter().copied().map(host_selector).collect()
    }
}

/// The peer's side: the addresses leased to it, else the configured selectors.
pub(super) fn sa_remote_ts(sa: &IkeSa, peer: &PeerConfig) -> Vec<TrafficSelector> {
    if sa.leased.is_empty() {
        peer.remote_ts.clone()
    } else {
        sa.leased.iter().copied().map(host_selector).collect()
    }
}

impl Engine {
    /// Answers the CFG_REQUEST of an IKE_AUTH request on SA `id` (whose peer is set), from the
    /// peer's pool: one address per family asked for that the pool has, for identity `owner`.
    pub(super) fn serve_cfg_request(
        &mut self,
        id: u64,
        owner: &Identification,
        payloads: &[Payload],
    ) -> CfgAnswer {
        let Some(attributes) = cfg_payload(payloads, cfg::REQUEST) else {
            return CfgAnswer::None;
        };
        let Some(sa) = self.sas.get(&id) else {
            return CfgAnswer::None;
        };
        let Some(pool_index) = self.peer_pools.get(sa.peer).copied().flatten() else {
            return CfgAnswer::None;
        };
        let request = AddressRequest::parse(attributes);
        self.counters.cp_malformed += request.malformed as u64;
        let request = request.value;
        let pool = &mut self.pools[pool_index];
        let mut reply = AddressReply::default();
        let mut leased = Vec::new();
        let holder = IkeSaId(id);
        if let Some(wanted) = request.ip4 {
            if let Some(IpAddr::V4(a)) = pool.acquire(owner, holder, false, wanted.map(IpAddr::V4))
            {
                reply.ip4 = Some(a);
                // The host's own /32: its side of the CHILD_SA is that address alone.
                reply.netmask = request.netmask.then_some(std::net::Ipv4Addr::BROADCAST);
                leased.push(IpAddr::V4(a));
            }
        }
        if let Some(wanted) = request.ip6 {
            if let Some(IpAddr::V6(a)) = pool.acquire(owner, holder, true, wanted.map(IpAddr::V6)) {
                reply.ip6 = Some((a, 128));
                leased.push(IpAddr::V6(a));
            }
        }
        if request.wants_address() && leased.is_empty() {
            self.counters.internal_address_failures += 1;
            return CfgAnswer::AddressFailure;
        }
        if request.dns4 {
            reply.dns.extend(pool.dns(false));
        }
        if request.dns6 {
            reply.dns.extend(pool.dns(true));
        }
        self.counters.virtual_ips_leased += leased.len() as u64;
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.leased.extend(leased.iter().copied());
        }
        let attributes = reply.attributes();
        if attributes.is_empty() {
            return CfgAnswer::None;
        }
        CfgAnswer::Reply {
            payload: Payload::Cp {
                cfg_type: cfg::REPLY,
                attributes,
            },
            leased,
        }
    }

    /// Gives the leases of an IKE SA that is gone back to its pool (remembered for the peer's
    /// identity).
    pub(super) fn release_leases(&mut self, sa: &IkeSa, id: IkeSaId) {
        if sa.leased.is_empty() {
            return;
        }
        if let Some(pool) = self.peer_pools.get(sa.peer).copied().flatten() {
            self.pools[pool].release(id);
        }
    }

    /// Every virtual IP of every IKE SA: those peers assigned us and those we leased.
    pub fn virtual_ips(&self) -> Vec<VirtualIp> {
        let mut out = Vec::new();
        for (&id, sa) in &self.sas {
            let peer = self.peer_name(sa.peer);
            let pool = self
                .peer_pools
                .get(sa.peer)
                .copied()
                .flatten()
                .map(|p| self.pools[p].name().to_string());
            for &address in &sa.virtual_ips {
                out.push(VirtualIp {
                    ike_sa: IkeSaId(id),
                    peer: peer.clone(),
                    address,
                    pool: None,
                });
            }
            for &address in &sa.leased {
                out.push(VirtualIp {
                    ike_sa: IkeSaId(id),
                    peer: peer.clone(),
                    address,
                    pool: pool.clone(),
                });
            }
        }
        out.sort_by_key(|a| (a.ike_sa, a.address));
        out
    }

    /// The address pools and their leases.
    pub fn pools(&self) -> Vec<PoolStatus> {
        self.pools.iter().map(|p| p.status()).collect()
    }
}
