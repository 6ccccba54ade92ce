//! Building UPDATEs for an Adj-RIB-Out change set: prefixes grouped by
//! attribute set, packed into as few messages as the negotiated maximum
//! allows (RFC 4271 §9.2, RFC 8654), IPv6 in MP_REACH/MP_UNREACH (RFC
//! 4760) with a global and optional link-local next hop (RFC 2545).
//! Prefixes come as [`Nlri`]: their path identifier is written when the
//! session sends ADD-PATH (RFC 7911) and ignored otherwise.

use crate::attrs::{AsPath, AsSegment, Origin, PathAttrs};
use crate::capability::AS_TRANS;
use crate::update_check as code;
use crate::update_rx::Nlri;
use crate::wire::{self, EncodeError};
use ipnet::{Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::community::{Community, LargeCommunity};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::path_attribute::{
    Aggregator, As2Aggregator, As2PathSegment, As4Aggregator, As4Path, As4PathSegment,
    AsPath as NgAsPath, AsPathSegmentType, AtomicAggregate, ClusterId, ClusterList, Communities,
    LargeCommunities, LocalPreference, MpReach, MpUnreach, MultiExitDiscriminator, NextHop,
    Origin as NgOrigin, Originator, PathAttribute, PathAttributeValue, UnknownAttribute,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_parse_utils::WritablePdu;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// How the session encodes UPDATEs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxParams {
    pub four_octet_as: bool,
    /// RFC 7911: NLRI carry their path identifier.
    pub add_path: bool,
    /// 4096, or 65535 with extended messages.
    pub max_len: usize,
}

/// Fixed bytes of an UPDATE: header, withdrawn length, attribute length.
const UPDATE_OVERHEAD: usize = wire::HEADER_LEN + 4;

fn nlri_len(bits: u8, add_path: bool) -> usize {
    1 + usize::from(bits).div_ceil(8) + if add_path { 4 } else { 0 }
}

fn attr(o: bool, t: bool, ext: bool, v: PathAttributeValue) -> Result<PathAttribute, EncodeError> {
    PathAttribute::from(o, t, false, ext, v)
        .map_err(|(_, e)| EncodeError::Netgauze(format!("{e:?}")))
}

fn seg_type(s: &AsSegment) -> (AsPathSegmentType, &[u32]) {
    match s {
        AsSegment::Set(v) | AsSegment::ConfedSet(v) => (AsPathSegmentType::AsSet, v),
        AsSegment::Sequence(v) | AsSegment::ConfedSequence(v) => (AsPathSegmentType::AsSequence, v),
    }
}

/// AS_PATH, plus AS4_PATH when a 2-octet peer needs it (RFC 6793 §4.2.2).
fn as_path_attrs(
    p: &AsPath,
    four: bool,
) -> Result<(PathAttribute, Option<PathAttribute>), EncodeError> {
    let asn_len = if four { 4 } else { 2 };
    let ext = p
        .segments
        .iter()
        .map(|s| 2 + seg_type(s).1.len() * asn_len)
        .sum::<usize>()
        > 255;
    if four {
        let segs: Vec<_> = p
            .segments
            .iter()
            .map(|s| {
                let (t, v) = seg_type(s);
                As4PathSegment::new(t, v.to_vec())
            })
            .collect();
        let path = attr(
            false,
            true,
            ext,
            PathAttributeValue::AsPath(NgAsPath::As4PathSegments(segs.into())),
        )?;
        return Ok((path, None));
    }
    let mut needs_as4 = false;
    let segs: Vec<_> = p
        .segments
        .iter()
        .map(|s| {
            let (t, v) = seg_type(s);
            let v2: Vec<u16> = v
                .iter()
                .map(|a| {
                    u16::try_from(*a).unwrap_or_else(|_| {
                        needs_as4 = true;
                        AS_TRANS as u16
                    })
                })
                .collect();
            As2PathSegment::new(t, v2)
        })
        .collect();
    let path = attr(
        false,
        true,
        ext,
        PathAttributeValue::AsPath(NgAsPath::As2PathSegments(segs.into())),
    )?;
    let mut as4 = None;
    if needs_as4 {
        let segs: Vec<_> = p
            .segments
            .iter()
            .map(|s| {
                let (t, v) = seg_type(s);
                As4PathSegment::new(t, v.to_vec())
            })
            .collect();
        let ext4 = p
            .segments
            .iter()
            .map(|s| 2 + seg_type(s).1.len() * 4)
            .sum::<usize>()
            > 255;
        as4 = Some(attr(
            true,
            true,
            ext4,
            PathAttributeValue::As4Path(As4Path::new(segs)),
        )?);
    }
    Ok((path, as4))
}

/// AGGREGATOR, and for a peer without 4-octet AS numbers whose
/// aggregating AS does not fit in two octets, AGGREGATOR with AS_TRANS
/// plus AS4_AGGREGATOR with the real AS (RFC 6793 §4.2.2: MUST).
fn aggregator_attrs(
    asn: u32,
    id: std::net::Ipv4Addr,
    four: bool,
) -> Result<(PathAttribute, Option<PathAttribute>), EncodeError> {
    if four {
        let ag = Aggregator::As4Aggregator(As4Aggregator::new(asn, id));
        return Ok((
            attr(true, true, false, PathAttributeValue::Aggregator(ag))?,
            None,
        ));
    }
    let two = u16::try_from(asn).ok();
    let ag = Aggregator::As2Aggregator(As2Aggregator::new(two.unwrap_or(AS_TRANS as u16), id));
    let aggregator = attr(true, true, false, PathAttributeValue::Aggregator(ag))?;
    if two.is_some() {
        return Ok((aggregator, None));
    }
    // netgauze has no AS4_AGGREGATOR of its own: the 8 bytes as they go.
    let mut value = asn.to_be_bytes().to_vec();
    value.extend_from_slice(&id.octets());
    let as4 = attr(
        true,
        true,
        false,
        PathAttributeValue::UnknownAttribute(UnknownAttribute::new(code::AS4_AGGREGATOR, value)),
    )?;
    Ok((aggregator, Some(as4)))
}

/// Every attribute except the next hop / MP_REACH.
fn common_attrs(a: &PathAttrs, p: &TxParams) -> Result<Vec<PathAttribute>, EncodeError> {
    let origin = match a.origin {
        Origin::Igp => NgOrigin::IGP,
        Origin::Egp => NgOrigin::EGP,
        Origin::Incomplete => NgOrigin::Incomplete,
    };
    let mut v = vec![attr(
        false,
        true,
        false,
        PathAttributeValue::Origin(origin),
    )?];
    let (as_path, as4_path) = as_path_attrs(&a.as_path, p.four_octet_as)?;
    v.push(as_path);
    if let Some(m) = a.med {
        v.push(attr(
            true,
            false,
            false,
            PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(m)),
        )?);
    }
    if let Some(lp) = a.local_pref {
        v.push(attr(
            false,
            true,
            false,
            PathAttributeValue::LocalPreference(LocalPreference::new(lp)),
        )?);
    }
    if a.atomic_aggregate {
        v.push(attr(
            false,
            true,
            false,
            PathAttributeValue::AtomicAggregate(AtomicAggregate),
        )?);
    }
    let mut as4_aggregator = None;
    if let Some((asn, id)) = a.aggregator {
        let (aggregator, as4) = aggregator_attrs(asn, id, p.four_octet_as)?;
        v.push(aggregator);
        as4_aggregator = as4;
    }
    if !a.communities.is_empty() {
        let c: Vec<_> = a.communities.iter().map(|c| Community::new(*c)).collect();
        let ext = c.len() * 4 > 255;
        v.push(attr(
            true,
            true,
            ext,
            PathAttributeValue::Communities(Communities::new(c)),
        )?);
    }
    if let Some(id) = a.originator_id {
        v.push(attr(
            true,
            false,
            false,
            PathAttributeValue::Originator(Originator::new(id)),
        )?);
    }
    if !a.cluster_list.is_empty() {
        let c: Vec<_> = a.cluster_list.iter().map(|c| ClusterId::new(*c)).collect();
        let ext = c.len() * 4 > 255;
        v.push(attr(
            true,
            false,
            ext,
            PathAttributeValue::ClusterList(ClusterList::new(c)),
        )?);
    }
    if !a.extended_communities.is_empty() {
        let bytes: Vec<u8> = a.extended_communities.concat();
        let ext = bytes.len() > 255;
        v.push(attr(
            true,
            true,
            ext,
            PathAttributeValue::UnknownAttribute(UnknownAttribute::new(
                code::EXT_COMMUNITIES,
                bytes,
            )),
        )?);
    }
    // In type-code order (RFC 4271 §5: SHOULD), AS4_PATH (17) and
    // AS4_AGGREGATOR (18) go after the extended communities (16).
    v.extend(as4_path);
    v.extend(as4_aggregator);
    if !a.large_communities.is_empty() {
        let c: Vec<_> = a
            .large_communities
            .iter()
            .map(|c| LargeCommunity::new(c[0], c[1], c[2]))
            .collect();
        let ext = c.len() * 12 > 255;
        v.push(attr(
            true,
            true,
            ext,
            PathAttributeValue::LargeCommunities(LargeCommunities::new(c)),
        )?);
    }
    for u in &a.unknown {
        let ext = u.value.len() > 255;
        let pa = PathAttribute::from(
            u.flags & code::FLAG_OPTIONAL != 0,
            u.flags & code::FLAG_TRANSITIVE != 0,
            u.flags & code::FLAG_PARTIAL != 0,
            ext,
            PathAttributeValue::UnknownAttribute(UnknownAttribute::new(u.code, u.value.clone())),
        )
        .map_err(|(_, e)| EncodeError::Netgauze(format!("{e:?}")))?;
        v.push(pa);
    }
    Ok(v)
}

fn attrs_len(v: &[PathAttribute]) -> usize {
    v.iter().map(WritablePdu::len).sum()
}

/// Groups announcements by attribute set (pointer identity: sets are
/// interned), keeping first-seen order.
fn group<P: Copy>(announce: &[(P, Arc<PathAttrs>)]) -> Vec<(Arc<PathAttrs>, Vec<P>)> {
    let mut index: HashMap<*const PathAttrs, usize> = HashMap::new();
    let mut groups: Vec<(Arc<PathAttrs>, Vec<P>)> = Vec::new();
    for (p, a) in announce {
        let i = *index.entry(Arc::as_ptr(a)).or_insert_with(|| {
            groups.push((Arc::clone(a), Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(*p);
    }
    groups
}

/// Splits `items` into runs whose encoded size fits `room`.
fn chunks<P: Copy>(items: &[P], room: usize, cost: impl Fn(&P) -> usize) -> Vec<&[P]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let c = cost(it);
        if used + c > room && i > start {
            out.push(&items[start..i]);
            start = i;
            used = 0;
        }
        used += c;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

fn v4_addr(n: &Nlri<Ipv4Net>, params: &TxParams) -> Option<Ipv4UnicastAddress> {
    // Multicast-range prefixes cannot be carried as unicast NLRI.
    Ipv4Unicast::from_net(n.prefix)
        .ok()
        .map(|u| Ipv4UnicastAddress::new(params.add_path.then_some(n.path_id), u))
}

fn v6_addr(n: &Nlri<Ipv6Net>, params: &TxParams) -> Option<Ipv6UnicastAddress> {
    Ipv6Unicast::from_net(n.prefix)
        .ok()
        .map(|u| Ipv6UnicastAddress::new(params.add_path.then_some(n.path_id), u))
}

/// IPv4 unicast UPDATEs: withdrawals first, then one run of messages per
/// attribute set.
pub fn build_v4(
    announce: &[(Nlri<Ipv4Net>, Arc<PathAttrs>)],
    withdraw: &[Nlri<Ipv4Net>],
    params: &TxParams,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut out = Vec::new();
    let room = params.max_len.saturating_sub(UPDATE_OVERHEAD);
    let cost = |n: &Nlri<Ipv4Net>| nlri_len(n.prefix.prefix_len(), params.add_path);
    for run in chunks(withdraw, room, cost) {
        let w: Vec<_> = run.iter().filter_map(|p| v4_addr(p, params)).collect();
        out.push(wire::encode_update(
            BgpUpdateMessage::new(w, vec![], vec![]),
            params.max_len,
        )?);
    }
    for (a, prefixes) in group(announce) {
        let mut attrs = common_attrs(&a, params)?;
        // Missing next hop is a caller bug; skip rather than send garbage.
        let Some(IpAddr::V4(nh)) = a.next_hop else {
            continue;
        };
        attrs.insert(
            2,
            attr(
                false,
                true,
                false,
                PathAttributeValue::NextHop(NextHop::new(nh)),
            )?,
        );
        let room = room.saturating_sub(attrs_len(&attrs));
        for run in chunks(&prefixes, room, cost) {
            let n: Vec<_> = run.iter().filter_map(|p| v4_addr(p, params)).collect();
            out.push(wire::encode_update(
                BgpUpdateMessage::new(vec![], attrs.clone(), n),
                params.max_len,
            )?);
        }
    }
    Ok(out)
}

/// IPv6 unicast UPDATEs through MP_UNREACH_NLRI / MP_REACH_NLRI.
pub fn build_v6(
    announce: &[(Nlri<Ipv6Net>, Arc<PathAttrs>)],
    withdraw: &[Nlri<Ipv6Net>],
    params: &TxParams,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut out = Vec::new();
    let cost = |n: &Nlri<Ipv6Net>| nlri_len(n.prefix.prefix_len(), params.add_path);
    let empty_unreach = attr(
        true,
        false,
        true,
        PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: Box::new([]) }),
    )?;
    let room = params
        .max_len
        .saturating_sub(UPDATE_OVERHEAD + empty_unreach.len());
    for run in chunks(withdraw, room, cost) {
        let n: Vec<_> = run.iter().filter_map(|p| v6_addr(p, params)).collect();
        let a = attr(
            true,
            false,
            true,
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: n.into() }),
        )?;
        out.push(wire::encode_update(
            BgpUpdateMessage::new(vec![], vec![a], vec![]),
            params.max_len,
        )?);
    }
    for (a, prefixes) in group(announce) {
        let Some(IpAddr::V6(global)) = a.next_hop else {
            continue;
        };
        let attrs = common_attrs(&a, params)?;
        let reach = |nlri: Vec<Ipv6UnicastAddress>| {
            attr(
                true,
                false,
                true,
                PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                    next_hop_global: global,
                    next_hop_local: a.next_hop_local,
                    nlri: nlri.into(),
                }),
            )
        };
        let fixed = attrs_len(&attrs) + reach(Vec::new())?.len();
        let room = params.max_len.saturating_sub(UPDATE_OVERHEAD + fixed);
        for run in chunks(&prefixes, room, cost) {
            let n: Vec<_> = run.iter().filter_map(|p| v6_addr(p, params)).collect();
            // RFC 7606 §5.1: MP_REACH_NLRI goes first.
            let mut all = vec![reach(n)?];
            all.extend(attrs.iter().cloned());
            out.push(wire::encode_update(
                BgpUpdateMessage::new(vec![], all, vec![]),
                params.max_len,
            )?);
        }
    }
    Ok(out)
}

/// RFC 4724 §2 End-of-RIB for a family.
pub fn end_of_rib(family: crate::config::Family) -> Result<Vec<u8>, EncodeError> {
    match family {
        crate::config::Family::Ipv4Unicast => wire::encode_update(
            BgpUpdateMessage::new(vec![], vec![], vec![]),
            wire::MAX_MESSAGE_LEN,
        ),
        crate::config::Family::Ipv6Unicast => {
            let a = attr(
                true,
                false,
                false,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: Box::new([]) }),
            )?;
            wire::encode_update(
                BgpUpdateMessage::new(vec![], vec![a], vec![]),
                wire::MAX_MESSAGE_LEN,
            )
        }
    }
}
