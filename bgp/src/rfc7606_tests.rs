//! Table tests for UPDATE error handling: one row per RFC 4271 §6.3 /
//! RFC 7606 rule, with hand-built bytes.

use crate::config::Family;
use crate::notification::update as sub;
use crate::update_check::*;
use crate::update_rx::decode;

const PEER_AS: u32 = 65001;

fn ctx(ibgp: bool) -> UpdateContext {
    UpdateContext {
        ibgp,
        peer_as: if ibgp { 65000 } else { PEER_AS },
        four_octet_as: true,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        add_path_v4: false,
        add_path_v6: false,
    }
}

fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, code];
    if flags & FLAG_EXTENDED != 0 {
        v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        v.push(value.len() as u8);
    }
    v.extend_from_slice(value);
    v
}

fn body(withdrawn: &[u8], attrs: &[Vec<u8>], nlri: &[u8]) -> Vec<u8> {
    let a: Vec<u8> = attrs.concat();
    let mut v = (withdrawn.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(withdrawn);
    v.extend_from_slice(&(a.len() as u16).to_be_bytes());
    v.extend_from_slice(&a);
    v.extend_from_slice(nlri);
    v
}

fn origin() -> Vec<u8> {
    attr(0x40, ORIGIN, &[0])
}
fn as_path(first: u32) -> Vec<u8> {
    let mut v = vec![2, 1];
    v.extend_from_slice(&first.to_be_bytes());
    attr(0x40, AS_PATH, &v)
}
fn next_hop() -> Vec<u8> {
    attr(0x40, NEXT_HOP, &[198, 51, 100, 1])
}
fn base() -> Vec<Vec<u8>> {
    vec![origin(), as_path(PEER_AS), next_hop()]
}
fn with(extra: Vec<u8>) -> Vec<Vec<u8>> {
    let mut b = base();
    b.push(extra);
    b
}
const NLRI: &[u8] = &[24, 203, 0, 113];

#[derive(Debug, PartialEq)]
enum Want {
    Accept,
    Discard,
    Withdraw(u8),
    Reset(u8),
}

fn verdict(b: &[u8], c: &UpdateContext) -> Want {
    match scan(b, c).verdict {
        Verdict::Accept => Want::Accept,
        Verdict::AttributeDiscard => Want::Discard,
        Verdict::TreatAsWithdraw(n) => Want::Withdraw(n.subcode),
        Verdict::SessionReset(n) => Want::Reset(n.subcode),
    }
}

#[test]
fn rfc7606_table() {
    use Want::*;
    let mp_reach_v6 = |nh_len: u8, nlri: &[u8]| {
        let mut v = vec![0, 2, 1, nh_len];
        v.extend(std::iter::repeat_n(0x20, usize::from(nh_len)));
        v.push(0);
        v.extend_from_slice(nlri);
        attr(0x80, MP_REACH, &v)
    };
    let v6_nlri = [64, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1];
    let rows: Vec<(&str, bool, Vec<u8>, Want)> = vec![
        ("well-formed", false, body(&[], &base(), NLRI), Accept),
        // §4 / RFC 4271 §6.3: lengths beyond the message.
        (
            "withdrawn length overrun",
            false,
            vec![0, 9, 0, 0],
            Reset(sub::MALFORMED_ATTRIBUTE_LIST),
        ),
        (
            "attr length overrun",
            false,
            vec![0, 0, 0, 9, 0x40],
            Reset(sub::MALFORMED_ATTRIBUTE_LIST),
        ),
        // §5.3: unparseable NLRI.
        (
            "nlri prefix len 33",
            false,
            body(&[], &base(), &[33, 1, 2, 3, 4, 5]),
            Reset(sub::INVALID_NETWORK_FIELD),
        ),
        (
            "nlri truncated",
            false,
            body(&[], &base(), &[24, 1, 2]),
            Reset(sub::INVALID_NETWORK_FIELD),
        ),
        (
            "withdrawn truncated",
            false,
            body(&[32, 1], &[], &[]),
            Reset(sub::INVALID_NETWORK_FIELD),
        ),
        // §4: attribute overruns the attribute section / short header.
        (
            "attr value overrun",
            false,
            body(&[], &[origin(), vec![0x40, 2, 50, 2]], NLRI),
            Withdraw(sub::ATTRIBUTE_LENGTH),
        ),
        (
            "short attr header",
            false,
            body(&[], &[origin(), vec![0x40, 2]], NLRI),
            Withdraw(sub::MALFORMED_ATTRIBUTE_LIST),
        ),
        // §3 c: O/T flags wrong.
        (
            "origin flagged optional",
            false,
            body(
                &[],
                &[attr(0xc0, ORIGIN, &[0]), as_path(PEER_AS), next_hop()],
                NLRI,
            ),
            Withdraw(sub::ATTRIBUTE_FLAGS),
        ),
        (
            "med flagged transitive",
            false,
            body(&[], &with(attr(0xc0, MED, &[0, 0, 0, 1])), NLRI),
            Withdraw(sub::ATTRIBUTE_FLAGS),
        ),
        // §3 d: missing well-known mandatory.
        (
            "missing origin",
            false,
            body(&[], &[as_path(PEER_AS), next_hop()], NLRI),
            Withdraw(sub::MISSING_WELL_KNOWN),
        ),
        (
            "missing as_path",
            false,
            body(&[], &[origin(), next_hop()], NLRI),
            Withdraw(sub::MISSING_WELL_KNOWN),
        ),
        (
            "missing next_hop",
            false,
            body(&[], &[origin(), as_path(PEER_AS)], NLRI),
            Withdraw(sub::MISSING_WELL_KNOWN),
        ),
        (
            "withdraw-only needs no attrs",
            false,
            body(NLRI, &[], &[]),
            Accept,
        ),
        (
            "mp_reach needs no NEXT_HOP",
            false,
            body(
                &[],
                &[origin(), as_path(PEER_AS), mp_reach_v6(16, &v6_nlri)],
                &[],
            ),
            Accept,
        ),
        // §3 g: repeats.
        (
            "duplicate MED discarded",
            false,
            body(
                &[],
                &[
                    origin(),
                    as_path(PEER_AS),
                    next_hop(),
                    attr(0x80, MED, &[0, 0, 0, 1]),
                    attr(0x80, MED, &[0, 0, 0, 2]),
                ],
                NLRI,
            ),
            Discard,
        ),
        (
            "duplicate MP_REACH",
            false,
            body(
                &[],
                &[
                    origin(),
                    as_path(PEER_AS),
                    mp_reach_v6(16, &v6_nlri),
                    mp_reach_v6(16, &v6_nlri),
                ],
                &[],
            ),
            Reset(sub::MALFORMED_ATTRIBUTE_LIST),
        ),
        // RFC 4271 §6.3 unrecognised well-known.
        (
            "unknown well-known",
            false,
            body(&[], &with(attr(0x40, 99, &[1])), NLRI),
            Reset(sub::UNRECOGNIZED_WELL_KNOWN),
        ),
        (
            "unknown optional transitive kept",
            false,
            body(&[], &with(attr(0xc0, 99, &[1])), NLRI),
            Accept,
        ),
        (
            "unknown optional non-transitive ignored",
            false,
            body(&[], &with(attr(0x80, 99, &[1])), NLRI),
            Accept,
        ),
        // §7.1 ORIGIN.
        (
            "origin length 2",
            false,
            body(
                &[],
                &[attr(0x40, ORIGIN, &[0, 0]), as_path(PEER_AS), next_hop()],
                NLRI,
            ),
            Withdraw(sub::INVALID_ORIGIN),
        ),
        (
            "origin value 3",
            false,
            body(
                &[],
                &[attr(0x40, ORIGIN, &[3]), as_path(PEER_AS), next_hop()],
                NLRI,
            ),
            Withdraw(sub::INVALID_ORIGIN),
        ),
        // §7.2 AS_PATH.
        (
            "as_path zero-length segment",
            false,
            body(
                &[],
                &[origin(), attr(0x40, AS_PATH, &[2, 0]), next_hop()],
                NLRI,
            ),
            Withdraw(sub::MALFORMED_AS_PATH),
        ),
        (
            "as_path bad segment type",
            false,
            body(
                &[],
                &[
                    origin(),
                    attr(0x40, AS_PATH, &[7, 1, 0, 0, 0xfd, 0xe9]),
                    next_hop(),
                ],
                NLRI,
            ),
            Withdraw(sub::MALFORMED_AS_PATH),
        ),
        (
            "as_path segment overrun",
            false,
            body(
                &[],
                &[
                    origin(),
                    attr(0x40, AS_PATH, &[2, 2, 0, 0, 0xfd, 0xe9]),
                    next_hop(),
                ],
                NLRI,
            ),
            Withdraw(sub::MALFORMED_AS_PATH),
        ),
        (
            "ebgp first AS not peer",
            false,
            body(&[], &[origin(), as_path(65099), next_hop()], NLRI),
            Withdraw(sub::MALFORMED_AS_PATH),
        ),
        (
            "confed segment",
            true,
            body(
                &[],
                &[
                    origin(),
                    attr(0x40, AS_PATH, &[3, 1, 0, 0, 0xfd, 0xe9]),
                    next_hop(),
                    attr(0x40, LOCAL_PREF, &[0, 0, 0, 100]),
                ],
                NLRI,
            ),
            Withdraw(sub::MALFORMED_AS_PATH),
        ),
        (
            "ibgp empty as_path ok",
            true,
            body(&[], &[origin(), attr(0x40, AS_PATH, &[]), next_hop()], NLRI),
            Accept,
        ),
        // §7.3 NEXT_HOP.
        (
            "next_hop length 5",
            false,
            body(
                &[],
                &[
                    origin(),
                    as_path(PEER_AS),
                    attr(0x40, NEXT_HOP, &[1, 2, 3, 4, 5]),
                ],
                NLRI,
            ),
            Withdraw(sub::ATTRIBUTE_LENGTH),
        ),
        (
            "next_hop 0.0.0.0",
            false,
            body(
                &[],
                &[
                    origin(),
                    as_path(PEER_AS),
                    attr(0x40, NEXT_HOP, &[0, 0, 0, 0]),
                ],
                NLRI,
            ),
            Withdraw(sub::INVALID_NEXT_HOP),
        ),
        // §7.4 MED, §7.5 LOCAL_PREF.
        (
            "med length 3",
            false,
            body(&[], &with(attr(0x80, MED, &[0, 0, 1])), NLRI),
            Withdraw(sub::ATTRIBUTE_LENGTH),
        ),
        (
            "local_pref from ebgp discarded",
            false,
            body(&[], &with(attr(0x40, LOCAL_PREF, &[0, 0, 0, 100])), NLRI),
            Discard,
        ),
        (
            "local_pref ibgp length 2",
            true,
            body(&[], &with(attr(0x40, LOCAL_PREF, &[0, 100])), NLRI),
            Withdraw(sub::ATTRIBUTE_LENGTH),
        ),
        // §7.6 ATOMIC_AGGREGATE, §7.7 AGGREGATOR.
        (
            "atomic_aggregate length 1",
            false,
            body(&[], &with(attr(0x40, ATOMIC_AGGREGATE, &[1])), NLRI),
            Discard,
        ),
        (
            "aggregator length 6 on 4-octet session",
            false,
            body(
                &[],
                &with(attr(0xc0, AGGREGATOR, &[0, 1, 1, 1, 1, 1])),
                NLRI,
            ),
            Discard,
        ),
        // §3 c flags errors, except where the attribute's errors are handled by discarding
        // it (§3 f; RFC 6793 §6; §7.5, §7.9, §7.10 from eBGP).
        (
            "med flagged transitive",
            false,
            body(&[], &with(attr(0xc0, MED, &[0, 0, 0, 1])), NLRI),
            Withdraw(sub::ATTRIBUTE_FLAGS),
        ),
        (
            "atomic_aggregate flagged optional",
            false,
            body(&[], &with(attr(0xc0, ATOMIC_AGGREGATE, &[])), NLRI),
            Discard,
        ),
        (
            "aggregator flagged well-known",
            false,
            body(
                &[],
                &with(attr(0x40, AGGREGATOR, &[0, 0, 0xfd, 0xe9, 1, 1, 1, 1])),
                NLRI,
            ),
            Discard,
        ),
        (
            "local_pref from ebgp flagged optional",
            false,
            body(&[], &with(attr(0x80, LOCAL_PREF, &[0, 0, 0, 100])), NLRI),
            Discard,
        ),
        (
            "local_pref from ibgp flagged optional",
            true,
            body(&[], &with(attr(0x80, LOCAL_PREF, &[0, 0, 0, 100])), NLRI),
            Withdraw(sub::ATTRIBUTE_FLAGS),
        ),
        (
            "as4_path flagged non-transitive",
            false,
            body(
                &[],
                &with(attr(0x80, AS4_PATH, &[2, 1, 0, 0, 0xfd, 0xe9])),
                NLRI,
            ),
            Discard,
        ),
        // §7.8 COMMUNITIES.
        (
            "communities length 5",
            false,
            body(&[], &with(attr(0xc0, COMMUNITIES, &[0, 0, 0, 1, 9])), NLRI),
            Withdraw(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "communities length 0",
            false,
            body(&[], &with(attr(0xc0, COMMUNITIES, &[])), NLRI),
            Withdraw(sub::OPTIONAL_ATTRIBUTE),
        ),
        // §7.9 ORIGINATOR_ID, §7.10 CLUSTER_LIST.
        (
            "originator from ebgp discarded",
            false,
            body(&[], &with(attr(0x80, ORIGINATOR_ID, &[1, 1, 1, 1])), NLRI),
            Discard,
        ),
        (
            "originator ibgp length 3",
            true,
            body(&[], &with(attr(0x80, ORIGINATOR_ID, &[1, 1, 1])), NLRI),
            Withdraw(sub::ATTRIBUTE_LENGTH),
        ),
        (
            "cluster_list ibgp length 6",
            true,
            body(
                &[],
                &with(attr(0x80, CLUSTER_LIST, &[1, 1, 1, 1, 2, 2])),
                NLRI,
            ),
            Withdraw(sub::ATTRIBUTE_LENGTH),
        ),
        (
            "cluster_list from ebgp discarded",
            false,
            body(&[], &with(attr(0x80, CLUSTER_LIST, &[1, 1, 1, 1])), NLRI),
            Discard,
        ),
        // §7.11 / §7.12 MP_REACH / MP_UNREACH.
        (
            "mp_reach v6 next hop length 4",
            false,
            body(
                &[],
                &[origin(), as_path(PEER_AS), mp_reach_v6(4, &v6_nlri)],
                &[],
            ),
            Reset(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "mp_reach v6 link-local next hop ok",
            false,
            body(
                &[],
                &[origin(), as_path(PEER_AS), mp_reach_v6(32, &v6_nlri)],
                &[],
            ),
            Accept,
        ),
        (
            "mp_reach nlri len 129",
            false,
            body(
                &[],
                &[origin(), as_path(PEER_AS), mp_reach_v6(16, &[129, 1])],
                &[],
            ),
            Reset(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "mp_reach truncated",
            false,
            body(
                &[],
                &[origin(), as_path(PEER_AS), attr(0x80, MP_REACH, &[0, 2])],
                &[],
            ),
            Reset(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "mp_unreach nlri truncated",
            false,
            body(&[], &[attr(0x80, MP_UNREACH, &[0, 2, 1, 64, 0x20])], &[]),
            Reset(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "mp_reach unknown family ignored",
            false,
            body(
                &[],
                &with(attr(0x80, MP_REACH, &[0, 25, 70, 4, 1, 1, 1, 1, 0])),
                NLRI,
            ),
            Discard,
        ),
        // §7.14 extended communities, RFC 8092 large communities.
        (
            "ext communities length 7",
            false,
            body(&[], &with(attr(0xc0, EXT_COMMUNITIES, &[0; 7])), NLRI),
            Withdraw(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "ipv6 ext communities length 19",
            false,
            body(&[], &with(attr(0xc0, IPV6_EXT_COMMUNITIES, &[0; 19])), NLRI),
            Withdraw(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "large communities length 11",
            false,
            body(&[], &with(attr(0xc0, LARGE_COMMUNITIES, &[0; 11])), NLRI),
            Withdraw(sub::OPTIONAL_ATTRIBUTE),
        ),
        // RFC 6793: AS4_PATH / AS4_AGGREGATOR from a 4-octet peer.
        (
            "as4_path on 4-octet session",
            false,
            body(
                &[],
                &with(attr(0xc0, AS4_PATH, &[2, 1, 0, 0, 0xfd, 0xe9])),
                NLRI,
            ),
            Discard,
        ),
        // §3 h: the most severe wins.
        (
            "discard + withdraw = withdraw",
            false,
            body(
                &[],
                &[
                    origin(),
                    as_path(PEER_AS),
                    next_hop(),
                    attr(0x40, ATOMIC_AGGREGATE, &[1]),
                    attr(0xc0, COMMUNITIES, &[1]),
                ],
                NLRI,
            ),
            Withdraw(sub::OPTIONAL_ATTRIBUTE),
        ),
        (
            "withdraw + reset = reset",
            false,
            body(
                &[],
                &[
                    attr(0x40, ORIGIN, &[9]),
                    as_path(PEER_AS),
                    next_hop(),
                    attr(0x40, 99, &[]),
                ],
                NLRI,
            ),
            Reset(sub::UNRECOGNIZED_WELL_KNOWN),
        ),
    ];
    for (name, ibgp, b, want) in rows {
        assert_eq!(verdict(&b, &ctx(ibgp)), want, "{name}");
        // Whatever the verdict, decode must agree and never panic.
        let d = decode(&b, &ctx(ibgp));
        match want {
            Want::Reset(s) => assert_eq!(d.map_err(|n| (n.code, n.subcode)), Err((3, s)), "{name}"),
            Want::Withdraw(_) => {
                let u = d.unwrap_or_else(|n| panic!("{name}: {n}"));
                assert!(u.treated_as_withdraw.is_some(), "{name}");
                assert!(
                    u.announced_v4.is_empty() && u.announced_v6.is_empty(),
                    "{name}"
                );
            }
            _ => {
                let u = d.unwrap_or_else(|n| panic!("{name}: {n}"));
                assert_eq!(u.attributes_discarded, want == Want::Discard, "{name}");
            }
        }
    }
}

/// RFC 4271 §6.3: Optional Attribute Error (3/9) carries the attribute, type, length and
/// value, as it came; RFC 4760 §7 sends it for a malformed MP_REACH or MP_UNREACH.
#[test]
fn mp_reach_and_unreach_errors_carry_the_attribute() {
    let mut reach = vec![0, 2, 1, 8];
    reach.extend([0x20; 8]);
    reach.extend([0, 64, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 1]);
    let reach = attr(0x80, MP_REACH, &reach);
    let unreach = attr(0x80, MP_UNREACH, &[0, 2, 1, 129]);
    for a in [reach, unreach] {
        let b = body(&[], &[origin(), as_path(PEER_AS), a.clone()], &[]);
        match scan(&b, &ctx(false)).verdict {
            Verdict::SessionReset(n) => {
                assert_eq!((n.code, n.subcode, n.data), (3, sub::OPTIONAL_ATTRIBUTE, a));
            }
            v => panic!("{v:?}"),
        }
    }
}

#[test]
fn treat_as_withdraw_withdraws_every_announced_prefix() {
    let v6 = {
        let mut v = vec![0, 2, 1, 16];
        v.extend([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v.push(0);
        v.extend([48, 0x20, 1, 0x0d, 0xb8, 0, 1]);
        attr(0x80, MP_REACH, &v)
    };
    let b = body(
        &[],
        &[attr(0x40, ORIGIN, &[7]), as_path(PEER_AS), next_hop(), v6],
        &[24, 203, 0, 113, 32, 198, 51, 100, 7],
    );
    let u = decode(&b, &ctx(false)).unwrap();
    assert_eq!(u.withdrawn_v4.len(), 2);
    assert_eq!(u.withdrawn_v6.len(), 1);
    assert!(u.attrs_v4.is_none() && u.attrs_v6.is_none());
}

#[test]
fn decode_full_update_fields() {
    let attrs = vec![
        origin(),
        as_path(PEER_AS),
        next_hop(),
        attr(0x80, MED, &[0, 0, 0, 5]),
        attr(0xc0, COMMUNITIES, &[0xfd, 0xe9, 0, 1]),
        attr(
            0xc0,
            LARGE_COMMUNITIES,
            &[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3],
        ),
        attr(0xc0, EXT_COMMUNITIES, &[0, 2, 0xfd, 0xe9, 0, 0, 0, 1]),
        attr(0xc0 | FLAG_PARTIAL, 99, &[7]),
    ];
    let u = decode(&body(&[], &attrs, NLRI), &ctx(false)).unwrap();
    let a = u.attrs_v4.unwrap();
    assert_eq!(a.med, Some(5));
    assert_eq!(a.communities, vec![0xfde9_0001]);
    assert_eq!(a.large_communities, vec![[1, 2, 3]]);
    assert_eq!(a.extended_communities.len(), 1);
    assert_eq!(a.unknown.len(), 1);
    assert_eq!(a.as_path.first_as(), Some(PEER_AS));
    assert_eq!(u.announced_v4[0].prefix.to_string(), "203.0.113.0/24");
}

#[test]
fn end_of_rib_markers() {
    assert_eq!(
        decode(&body(&[], &[], &[]), &ctx(false))
            .unwrap()
            .end_of_rib,
        Some(Family::Ipv4Unicast)
    );
    let eor6 = body(&[], &[attr(0x80, MP_UNREACH, &[0, 2, 1])], &[]);
    assert_eq!(
        decode(&eor6, &ctx(false)).unwrap().end_of_rib,
        Some(Family::Ipv6Unicast)
    );
}

#[test]
fn as4_path_merged_on_two_octet_session() {
    let mut c = ctx(false);
    c.four_octet_as = false;
    // AS_PATH: 65001 23456 (2-octet); AS4_PATH: 4200000000.
    let p2 = attr(0x40, AS_PATH, &[2, 2, 0xfd, 0xe9, 0x5b, 0xa0]);
    let p4 = attr(0xc0, AS4_PATH, &[2, 1, 0xfa, 0x56, 0xea, 0x00]);
    let b = body(&[], &[origin(), p2, next_hop(), p4], NLRI);
    let a = decode(&b, &c).unwrap().attrs_v4.unwrap();
    assert_eq!(
        a.as_path,
        crate::attrs::AsPath::from_sequence(vec![65001])
            .segments
            .into_iter()
            .chain(crate::attrs::AsPath::from_sequence(vec![4_200_000_000]).segments)
            .collect::<Vec<_>>()
            .pipe(|segments| crate::attrs::AsPath { segments })
    );
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}
