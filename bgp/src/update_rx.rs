//! Received UPDATEs: RFC 7606 scan, netgauze decode, conversion into the
//! RIB's own types.

use crate::attrs::{AsPath, AsSegment, Origin, PathAttrs, RawAttr};
use crate::capability::AS_TRANS;
use crate::config::Family;
use crate::notification::{update as sub, Notification};
use crate::update_check::{self, Scan, UpdateContext, Verdict};
use ipnet::{Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::path_attribute::{
    Aggregator, AsPath as NgAsPath, AsPathSegmentType, MpReach, MpUnreach, Origin as NgOrigin,
    PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

/// A prefix with its ADD-PATH identifier (0 when ADD-PATH is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nlri<P> {
    pub prefix: P,
    pub path_id: u32,
}

/// One UPDATE, ready for the RIB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedUpdate {
    pub withdrawn_v4: Vec<Nlri<Ipv4Net>>,
    pub withdrawn_v6: Vec<Nlri<Ipv6Net>>,
    pub announced_v4: Vec<Nlri<Ipv4Net>>,
    pub announced_v6: Vec<Nlri<Ipv6Net>>,
    /// Attributes for `announced_v4` (next hop from NEXT_HOP).
    pub attrs_v4: Option<PathAttrs>,
    /// Attributes for `announced_v6` (next hops from MP_REACH_NLRI).
    pub attrs_v6: Option<PathAttrs>,
    /// RFC 4724 §2 End-of-RIB marker.
    pub end_of_rib: Option<Family>,
    /// Set when RFC 7606 treat-as-withdraw was applied: why.
    pub treated_as_withdraw: Option<Notification>,
    /// Set when some attributes were discarded (RFC 7606 attribute discard).
    pub attributes_discarded: bool,
    /// Prefixes left out as semantically incorrect (RFC 4271 §6.3: a
    /// multicast or broadcast prefix is logged and ignored).
    pub ignored_prefixes: usize,
}

/// Decodes an UPDATE body. `Err` is a NOTIFICATION to send (session reset).
pub fn decode(body: &[u8], ctx: &UpdateContext) -> Result<ParsedUpdate, Notification> {
    let scan = update_check::scan(body, ctx);
    let reach_only = match &scan.verdict {
        Verdict::SessionReset(n) => return Err(n.clone()),
        Verdict::TreatAsWithdraw(_) => true,
        Verdict::Accept | Verdict::AttributeDiscard => false,
    };
    let clean = update_check::sanitize(body, &scan, reach_only);
    let bytes = clean.as_deref().unwrap_or(body);
    let mut ng = parsing_context(ctx);
    let msg = BgpUpdateMessage::parse(&mut SliceReader::new(bytes), &mut ng).map_err(|e| {
        // The scan accepted what netgauze refused: reset, the conservative
        // choice, with the subcode netgauze derives.
        let n: netgauze_bgp_pkt::notification::UpdateMessageError = e.into();
        Notification::update(netgauze_update_subcode(&n), Vec::new())
    })?;
    let as4_aggregator = raw_value(body, &scan, update_check::AS4_AGGREGATOR)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(|v| {
            let asn = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
            (asn, Ipv4Addr::new(v[4], v[5], v[6], v[7]))
        });
    let as4_path = raw_value(body, &scan, update_check::AS4_PATH).map(read_as4_path);
    let mut out = convert(&msg, ctx, as4_aggregator, as4_path.as_ref())?;
    out.end_of_rib = end_of_rib(body, &scan, ctx);
    out.attributes_discarded = scan.verdict == Verdict::AttributeDiscard;
    let ignored = ng.parsing_errors();
    out.ignored_prefixes = scan.ignored_prefixes.len()
        + ignored.non_unicast_withdraw_nlri().len()
        + ignored.non_unicast_update_nlri().len();
    add_raw_attributes(body, &scan, &mut out);
    if let Verdict::TreatAsWithdraw(why) = scan.verdict {
        // RFC 7606 §2: every announced prefix is handled as withdrawn.
        out.withdrawn_v4.append(&mut out.announced_v4);
        out.withdrawn_v6.append(&mut out.announced_v6);
        out.attrs_v4 = None;
        out.attrs_v6 = None;
        out.treated_as_withdraw = Some(why);
    }
    Ok(out)
}

fn parsing_context(ctx: &UpdateContext) -> BgpParsingContext {
    let mut add_path = HashMap::new();
    add_path.insert(AddressType::Ipv4Unicast, ctx.add_path_v4);
    add_path.insert(AddressType::Ipv6Unicast, ctx.add_path_v6);
    // Multicast/broadcast "unicast" prefixes are dropped, not fatal
    // (RFC 4271 §6.3: semantically incorrect NLRI are ignored).
    BgpParsingContext::new(
        ctx.four_octet_as,
        HashMap::new(),
        add_path,
        false,
        false,
        false,
        true,
    )
}

fn netgauze_update_subcode(e: &netgauze_bgp_pkt::notification::UpdateMessageError) -> u8 {
    use netgauze_bgp_pkt::notification::UpdateMessageError as E;
    match e {
        E::Unspecific { .. } => 0,
        E::MalformedAttributeList { .. } => sub::MALFORMED_ATTRIBUTE_LIST,
        E::UnrecognizedWellKnownAttribute { .. } => sub::UNRECOGNIZED_WELL_KNOWN,
        E::MissingWellKnownAttribute { .. } => sub::MISSING_WELL_KNOWN,
        E::AttributeFlagsError { .. } => sub::ATTRIBUTE_FLAGS,
        E::AttributeLengthError { .. } => sub::ATTRIBUTE_LENGTH,
        E::InvalidOriginAttribute { .. } => sub::INVALID_ORIGIN,
        E::InvalidNextHopAttribute { .. } => sub::INVALID_NEXT_HOP,
        E::OptionalAttributeError { .. } => sub::OPTIONAL_ATTRIBUTE,
        E::InvalidNetworkField { .. } => sub::INVALID_NETWORK_FIELD,
        E::MalformedAsPath { .. } => sub::MALFORMED_AS_PATH,
    }
}

/// RFC 4724 §2: an UPDATE with nothing in it is the IPv4 End-of-RIB; one
/// with only an MP_UNREACH_NLRI without prefixes is that family's. Read
/// from the message as received: what error handling dropped does not
/// make an UPDATE a marker.
fn end_of_rib(body: &[u8], scan: &Scan, ctx: &UpdateContext) -> Option<Family> {
    if body == [0, 0, 0, 0] {
        return Some(Family::Ipv4Unicast);
    }
    let no_prefixes = scan.withdrawn.0 == scan.withdrawn.1 && scan.nlri.0 == scan.nlri.1;
    match scan.attrs.as_slice() {
        [a] if no_prefixes
            && a.keep
            && a.code == update_check::MP_UNREACH
            && scan.verdict == Verdict::Accept =>
        {
            match body.get(a.value_start..a.end)? {
                [afi0, afi1, safi] => {
                    Family::from_afi_safi(u16::from_be_bytes([*afi0, *afi1]), *safi)
                        .filter(|f| ctx.families.contains(f))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The value of a kept attribute, straight from the body.
fn raw_value<'a>(body: &'a [u8], scan: &Scan, code: u8) -> Option<&'a [u8]> {
    scan.attrs
        .iter()
        .find(|a| a.keep && a.code == code)
        .and_then(|a| body.get(a.value_start..a.end))
}

/// `as4_aggregator` and `as4_path` are the AS4_AGGREGATOR and AS4_PATH
/// (RFC 6793 §3) of a session without 4-octet ASNs, read from the raw
/// bytes.
fn convert(
    msg: &BgpUpdateMessage,
    ctx: &UpdateContext,
    as4_aggregator: Option<(u32, Ipv4Addr)>,
    as4_path: Option<&AsPath>,
) -> Result<ParsedUpdate, Notification> {
    let mut out = ParsedUpdate {
        withdrawn_v4: msg.withdraw_routes().iter().map(v4).collect(),
        announced_v4: msg.nlri().iter().map(v4).collect(),
        ..Default::default()
    };
    let mut base = PathAttrs::new(Origin::Incomplete, AsPath::default(), None);
    let mut v6_next_hop = None;
    let mut mp_reach_v4_nh = None;
    for attr in msg.path_attributes() {
        match attr.value() {
            PathAttributeValue::Origin(o) => {
                base.origin = match o {
                    NgOrigin::IGP => Origin::Igp,
                    NgOrigin::EGP => Origin::Egp,
                    NgOrigin::Incomplete => Origin::Incomplete,
                };
            }
            PathAttributeValue::AsPath(p) => base.as_path = as_path(p),
            PathAttributeValue::NextHop(nh) => base.next_hop = Some(IpAddr::V4(nh.next_hop())),
            PathAttributeValue::MultiExitDiscriminator(m) => base.med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => base.local_pref = Some(l.metric()),
            PathAttributeValue::AtomicAggregate(_) => base.atomic_aggregate = true,
            PathAttributeValue::Aggregator(a) => {
                base.aggregator = Some(match a {
                    Aggregator::As2Aggregator(a) => (u32::from(*a.asn()), a.origin()),
                    Aggregator::As4Aggregator(a) => (*a.asn(), a.origin()),
                })
            }
            PathAttributeValue::Communities(c) => {
                base.communities = c.communities().iter().map(|c| c.value()).collect()
            }
            PathAttributeValue::LargeCommunities(c) => {
                base.large_communities = c
                    .communities()
                    .iter()
                    .map(|c| [c.global_admin(), c.local_data1(), c.local_data2()])
                    .collect()
            }
            PathAttributeValue::Originator(o) => base.originator_id = Some(o.id()),
            PathAttributeValue::ClusterList(c) => {
                base.cluster_list = c.cluster_list().iter().map(|c| c.id()).collect()
            }
            PathAttributeValue::MpReach(r) => match r {
                MpReach::Ipv6Unicast {
                    next_hop_global,
                    next_hop_local,
                    nlri,
                } => {
                    v6_next_hop = Some((*next_hop_global, *next_hop_local));
                    out.announced_v6 = nlri.iter().map(v6).collect();
                }
                MpReach::Ipv4Unicast { next_hop, nlri, .. } => {
                    mp_reach_v4_nh = Some(*next_hop);
                    out.announced_v4.extend(nlri.iter().map(v4));
                }
                _ => {}
            },
            PathAttributeValue::MpUnreach(u) => match u {
                MpUnreach::Ipv6Unicast { nlri } => {
                    out.withdrawn_v6 = nlri.iter().map(v6).collect();
                }
                MpUnreach::Ipv4Unicast { nlri } => {
                    out.withdrawn_v4.extend(nlri.iter().map(v4));
                }
                _ => {}
            },
            _ => {}
        }
    }
    // RFC 6793 §4.2.3: from an OLD speaker, an AGGREGATOR that is not
    // AS_TRANS was added after the AS4_* attributes, which are then
    // ignored; otherwise AS4_AGGREGATOR names the aggregating node and
    // AS4_PATH completes the path.
    if !ctx.four_octet_as {
        let aggregator_as = base.aggregator.map(|(asn, _)| asn);
        if aggregator_as.is_none_or(|asn| asn == AS_TRANS) {
            if let Some(p4) = as4_path {
                base.as_path = merge_as4_path(&base.as_path, p4);
            }
            if let (Some(_), Some(a4)) = (aggregator_as, as4_aggregator) {
                base.aggregator = Some(a4);
            }
        }
    }
    if !out.announced_v6.is_empty() {
        let mut a = base.clone();
        if let Some((g, l)) = v6_next_hop {
            a.next_hop = Some(IpAddr::V6(g));
            a.next_hop_local = l;
        }
        out.attrs_v6 = Some(a);
    }
    if !out.announced_v4.is_empty() {
        if let Some(nh) = mp_reach_v4_nh {
            base.next_hop = Some(nh);
        }
        out.attrs_v4 = Some(base);
    }
    Ok(out)
}

// RFC 4271 §4.3: the bits after the prefix length are irrelevant, so
// they are cleared; 10.0.63.0/19 is 10.0.32.0/19 and withdraws it.
fn v4(a: &netgauze_bgp_pkt::nlri::Ipv4UnicastAddress) -> Nlri<Ipv4Net> {
    Nlri {
        prefix: a.network().address().trunc(),
        path_id: a.path_id().unwrap_or(0),
    }
}

fn v6(a: &netgauze_bgp_pkt::nlri::Ipv6UnicastAddress) -> Nlri<Ipv6Net> {
    Nlri {
        prefix: a.network().address().trunc(),
        path_id: a.path_id().unwrap_or(0),
    }
}

fn segment(ty: AsPathSegmentType, asns: Vec<u32>) -> AsSegment {
    match ty {
        AsPathSegmentType::AsSet => AsSegment::Set(asns),
        AsPathSegmentType::AsSequence => AsSegment::Sequence(asns),
    }
}

fn as_path(p: &NgAsPath) -> AsPath {
    let segments = match p {
        NgAsPath::As2PathSegments(s) => s
            .iter()
            .map(|s| {
                segment(
                    s.segment_type(),
                    s.as_numbers().iter().map(|a| u32::from(*a)).collect(),
                )
            })
            .collect(),
        NgAsPath::As4PathSegments(s) => s
            .iter()
            .map(|s| segment(s.segment_type(), s.as_numbers().to_vec()))
            .collect(),
    };
    AsPath { segments }
}

/// An AS4_PATH value the scan found well formed, without its
/// confederation segments: RFC 6793 §3 forbids them there and has the
/// receiver drop them and go on with the rest.
fn read_as4_path(mut v: &[u8]) -> AsPath {
    let mut segments = Vec::new();
    while let [ty, count, rest @ ..] = v {
        let len = usize::from(*count) * 4;
        let Some(asns) = rest.get(..len) else { break };
        let asns: Vec<u32> = asns
            .chunks_exact(4)
            .map(|a| u32::from_be_bytes([a[0], a[1], a[2], a[3]]))
            .collect();
        match ty {
            1 => segments.push(AsSegment::Set(asns)),
            2 => segments.push(AsSegment::Sequence(asns)),
            _ => {}
        }
        v = &rest[len..];
    }
    AsPath { segments }
}

/// RFC 6793 §4.2.3: rebuild the true path from AS_PATH (with AS_TRANS)
/// and AS4_PATH. If AS4_PATH is longer than AS_PATH it is ignored;
/// otherwise the leading AS_PATH entries it does not cover are kept.
fn merge_as4_path(path: &AsPath, as4: &AsPath) -> AsPath {
    let n = path.path_len();
    let m = as4.path_len();
    if m > n {
        return path.clone();
    }
    let mut keep = n - m;
    let mut segments = Vec::new();
    for s in &path.segments {
        if keep == 0 {
            break;
        }
        match s {
            AsSegment::Sequence(v) if v.len() > keep => {
                segments.push(AsSegment::Sequence(v[..keep].to_vec()));
                keep = 0;
            }
            AsSegment::Sequence(v) => {
                keep -= v.len();
                segments.push(s.clone());
            }
            other => {
                keep = keep.saturating_sub(1);
                segments.push(other.clone());
            }
        }
    }
    segments.extend(as4.segments.iter().cloned());
    AsPath { segments }
}

/// Extended communities and unrecognised transitive attributes come from
/// the raw bytes. Unrecognised ones get the Partial bit (RFC 4271 §5:
/// set when an unrecognised optional transitive attribute is passed on).
fn add_raw_attributes(body: &[u8], scan: &Scan, out: &mut ParsedUpdate) {
    let mut ext = Vec::new();
    let mut unknown = Vec::new();
    for a in scan.attrs.iter().filter(|a| a.keep) {
        let value = &body[a.value_start..a.end];
        if a.code == update_check::AS4_AGGREGATOR || a.code == update_check::AS4_PATH {
            // Merged into the aggregator and the AS path by `convert`.
            continue;
        }
        if a.code == update_check::EXT_COMMUNITIES {
            ext.extend(
                value
                    .chunks_exact(8)
                    .filter_map(|c| <[u8; 8]>::try_from(c).ok()),
            );
        } else if !update_check::decoded_by_netgauze(a.code) {
            let partial = if update_check::is_recognised(a.code) {
                0
            } else {
                update_check::FLAG_PARTIAL
            };
            unknown.push(RawAttr {
                flags: (a.flags | partial) & !update_check::FLAG_EXTENDED,
                code: a.code,
                value: value.to_vec(),
            });
        }
    }
    for attrs in [out.attrs_v4.as_mut(), out.attrs_v6.as_mut()]
        .into_iter()
        .flatten()
    {
        attrs.extended_communities.clone_from(&ext);
        attrs.unknown.clone_from(&unknown);
    }
}
