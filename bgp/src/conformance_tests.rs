//! Protocol conformance probes: a whole session fed crafted bytes, with
//! the RFC-required outcome checked on the wire (which NOTIFICATION, with
//! which data), on the state machine (reset or still Established) and in
//! the RIB afterwards. One test per rule, named after it, the RFC section
//! cited beside it.

use crate::attrs::AsSegment;
use crate::config::SessionConfig;
use crate::fsm::{Action, DownReason, Event, Session, State, Timer};
use crate::notification::{self, Notification};
use crate::policy::Policy;
use crate::rib::decision::DecisionConfig;
use crate::rib::{PeerId, PeerInfo, Rib, RibConfig};
use crate::update_check::*;
use crate::wire::{MSG_KEEPALIVE, MSG_NOTIFICATION, MSG_OPEN, MSG_UPDATE};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr};

const LOCAL_AS: u32 = 65000;
const PEER_AS: u32 = 65001;
const PEER_ID: [u8; 4] = [192, 0, 2, 1];
/// Our address on the session (what the shell would learn from TCP).
const LOCAL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

// ---------------------------------------------------------------- bytes

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// A header with an arbitrary length field and `body` after it.
fn raw_msg(len: u16, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&len.to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

fn keepalive() -> Vec<u8> {
    msg(MSG_KEEPALIVE, &[])
}

fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, code];
    if flags & FLAG_EXTENDED != 0 {
        v.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    } else {
        v.push(u8::try_from(value.len()).unwrap());
    }
    v.extend_from_slice(value);
    v
}

fn update(withdrawn: &[u8], attrs: &[Vec<u8>], nlri: &[u8]) -> Vec<u8> {
    let a: Vec<u8> = attrs.concat();
    let mut b = u16::try_from(withdrawn.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&u16::try_from(a.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&a);
    b.extend_from_slice(nlri);
    msg(MSG_UPDATE, &b)
}

fn origin() -> Vec<u8> {
    attr(0x40, ORIGIN, &[0])
}

/// AS_SEQUENCE of 4-octet ASNs.
fn as_path4(asns: &[u32]) -> Vec<u8> {
    let mut v = vec![2, u8::try_from(asns.len()).unwrap()];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    attr(0x40, AS_PATH, &v)
}

/// AS_SEQUENCE of 2-octet ASNs.
fn as_path2(asns: &[u16]) -> Vec<u8> {
    let mut v = vec![2, u8::try_from(asns.len()).unwrap()];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    attr(0x40, AS_PATH, &v)
}

fn next_hop(nh: [u8; 4]) -> Vec<u8> {
    attr(0x40, NEXT_HOP, &nh)
}

fn base() -> Vec<Vec<u8>> {
    vec![origin(), as_path4(&[PEER_AS]), next_hop([198, 51, 100, 1])]
}

fn with(extra: Vec<u8>) -> Vec<Vec<u8>> {
    let mut b = base();
    b.push(extra);
    b
}

/// 203.0.113.0/24.
const NLRI: &[u8] = &[24, 203, 0, 113];

fn p4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn p6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

/// MP_REACH_NLRI for IPv6 unicast, global next hop 2001:db8::1, with
/// 2001:db8:1::/48.
fn mp_reach_v6(flags: u8) -> Vec<u8> {
    attr(
        flags,
        MP_REACH,
        &mp_reach_v6_via([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    )
}

/// MP_REACH_NLRI's value for 2001:db8:1::/48 via `next_hop`.
fn mp_reach_v6_via(next_hop: [u8; 16]) -> Vec<u8> {
    let mut v = vec![0, 2, 1, 16];
    v.extend(next_hop);
    v.push(0);
    v.extend([48, 0x20, 1, 0x0d, 0xb8, 0, 1]);
    v
}

/// OPEN with the MP capabilities for IPv4 and IPv6 unicast, and the
/// 4-octet AS capability when `asn4` is set.
fn open_msg(my_as: u16, hold: u16, id: [u8; 4], asn4: Option<u32>, extra_params: &[u8]) -> Vec<u8> {
    let mut caps = vec![1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1];
    if let Some(a) = asn4 {
        caps.extend([65, 4]);
        caps.extend_from_slice(&a.to_be_bytes());
    }
    let mut params = vec![2, u8::try_from(caps.len()).unwrap()];
    params.extend_from_slice(&caps);
    params.extend_from_slice(extra_params);
    let mut b = vec![4];
    b.extend_from_slice(&my_as.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(u8::try_from(params.len()).unwrap());
    b.extend_from_slice(&params);
    msg(MSG_OPEN, &b)
}

fn peer_open() -> Vec<u8> {
    open_msg(PEER_AS as u16, 90, PEER_ID, Some(PEER_AS), &[])
}

// --------------------------------------------------------------- harness

/// The NOTIFICATION among `actions`, if one was sent.
fn sent_notification(actions: &[Action]) -> Option<Notification> {
    actions.iter().find_map(|a| match a {
        Action::Send(b) if b.get(18) == Some(&MSG_NOTIFICATION) => {
            Notification::decode_body(&b[19..])
        }
        _ => None,
    })
}

fn expect_notification(actions: &[Action], code: u8, subcode: u8) -> Notification {
    let n = sent_notification(actions)
        .unwrap_or_else(|| panic!("no NOTIFICATION sent, expected {code}/{subcode}: {actions:?}"));
    assert_eq!((n.code, n.subcode), (code, subcode), "{n:?}");
    n
}

fn cfg() -> SessionConfig {
    SessionConfig::new(LOCAL_AS, Ipv4Addr::new(10, 0, 0, 1), PEER_AS)
}

/// A session in OpenSent: our OPEN went out, the peer's is awaited.
fn open_sent(c: SessionConfig) -> Session {
    let mut s = Session::new(c);
    s.handle(Event::ManualStart);
    s.handle(Event::TcpConnected);
    assert_eq!(s.state(), State::OpenSent);
    s
}

/// A session and a RIB, with UPDATEs carried from one to the other the
/// way the shell does.
struct Peer {
    session: Session,
    rib: Rib,
    id: PeerId,
}

impl Peer {
    fn established_with(c: SessionConfig, open: &[u8]) -> Self {
        let mut session = open_sent(c);
        let a = session.handle_bytes(open);
        assert_eq!(session.state(), State::OpenConfirm, "{a:?}");
        let a = session.handle_bytes(&keepalive());
        assert!(a.iter().any(|x| matches!(x, Action::SessionUp(_))));
        let mut rib = Rib::new(RibConfig {
            local_as: LOCAL_AS,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            cluster_id: None,
            decision: DecisionConfig::default(),
        });
        let neg = session.negotiated().unwrap();
        let id = rib.add_peer(PeerInfo {
            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            router_id: neg.peer_router_id,
            peer_as: neg.peer_as,
            local_as: LOCAL_AS,
            rr_client: false,
            multihop: false,
            local_address: Some(LOCAL_ADDR),
            local_address_v6: None,
            import: Policy::accept_all(),
            export: None,
        });
        Self { session, rib, id }
    }

    /// eBGP, 4-octet AS on both sides.
    fn ebgp() -> Self {
        Self::established_with(cfg(), &peer_open())
    }

    /// eBGP with a peer that does not speak 4-octet AS (RFC 6793 OLD).
    fn ebgp_two_octet() -> Self {
        Self::established_with(cfg(), &open_msg(PEER_AS as u16, 90, PEER_ID, None, &[]))
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Action> {
        let actions = self.session.handle_bytes(bytes);
        for a in &actions {
            match a {
                Action::Update(u) => self.rib.apply_update(self.id, u),
                Action::SessionDown(_) => self.rib.peer_down(self.id),
                _ => {}
            }
        }
        actions
    }

    fn v4(&self) -> Vec<Ipv4Net> {
        self.rib.adj_rib_in_v4(self.id).map(|(p, _)| *p).collect()
    }

    fn v6(&self) -> Vec<Ipv6Net> {
        self.rib.adj_rib_in_v6(self.id).map(|(p, _)| *p).collect()
    }

    fn attrs_of(&self, p: &str) -> std::sync::Arc<crate::attrs::PathAttrs> {
        let p = p4(p);
        self.rib
            .adj_rib_in_v4(self.id)
            .find(|(q, _)| **q == p)
            .map(|(_, path)| path.attrs.clone())
            .unwrap_or_else(|| panic!("{p} not in the RIB"))
    }

    /// Announces 203.0.113.0/24 cleanly first.
    fn with_route(mut self) -> Self {
        let a = self.feed(&update(&[], &base(), NLRI));
        assert!(sent_notification(&a).is_none());
        assert_eq!(self.v4(), vec![p4("203.0.113.0/24")]);
        self
    }

    /// The UPDATE was handled by treat-as-withdraw (RFC 7606 §2): no
    /// NOTIFICATION, the session stays up, and the prefix is gone.
    fn assert_treated_as_withdraw(&self, actions: &[Action]) {
        assert!(sent_notification(actions).is_none(), "{actions:?}");
        assert_eq!(self.session.state(), State::Established);
        let u = actions
            .iter()
            .find_map(|a| match a {
                Action::Update(u) => Some(u),
                _ => None,
            })
            .expect("an Update action");
        assert!(u.treated_as_withdraw.is_some(), "{u:?}");
        assert!(self.v4().is_empty(), "{:?}", self.v4());
        assert_eq!(self.session.errors().treat_as_withdraw, 1);
    }

    /// The UPDATE reset the session with `code/subcode` (RFC 7606 §2
    /// session reset): the peer's routes are gone.
    fn assert_reset(&self, actions: &[Action], subcode: u8) -> Notification {
        let n = expect_notification(actions, notification::code::UPDATE_MESSAGE, subcode);
        assert_eq!(self.session.state(), State::Idle);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::SessionDown(DownReason::Sent(_)))));
        assert!(self.v4().is_empty());
        assert_eq!(self.session.errors().notifications_sent, 1);
        n
    }
}

// ------------------------------------------------- RFC 4271 §6.1 header

#[test]
fn header_marker_not_all_ones_is_connection_not_synchronized() {
    let mut p = Peer::ebgp();
    let mut ka = keepalive();
    ka[0] = 0xfe;
    let a = p.feed(&ka);
    let n = expect_notification(&a, 1, notification::header::CONNECTION_NOT_SYNCHRONIZED);
    assert!(n.data.is_empty());
    assert_eq!(p.session.state(), State::Idle);
}

#[test]
fn header_length_below_19_is_bad_message_length_with_the_length() {
    let mut p = Peer::ebgp();
    let a = p.feed(&raw_msg(18, MSG_KEEPALIVE, &[]));
    let n = expect_notification(&a, 1, notification::header::BAD_MESSAGE_LENGTH);
    assert_eq!(n.data, vec![0, 18]);
}

#[test]
fn header_length_above_4096_without_extended_messages() {
    let mut c = cfg();
    c.extended_message = false;
    let mut p = Peer::established_with(c, &peer_open());
    let a = p.feed(&raw_msg(4097, MSG_UPDATE, &[0; 4078]));
    let n = expect_notification(&a, 1, notification::header::BAD_MESSAGE_LENGTH);
    assert_eq!(n.data, vec![0x10, 0x01]);
}

#[test]
fn header_keepalive_with_a_body_is_bad_message_length() {
    let mut p = Peer::ebgp();
    let a = p.feed(&raw_msg(20, MSG_KEEPALIVE, &[0]));
    let n = expect_notification(&a, 1, notification::header::BAD_MESSAGE_LENGTH);
    assert_eq!(n.data, vec![0, 20]);
}

#[test]
fn header_open_longer_than_4096_even_with_extended_messages() {
    // RFC 8654 §4: OPEN stays bound by 4096.
    let mut s = open_sent(cfg());
    let a = s.handle_bytes(&raw_msg(4097, MSG_OPEN, &[0; 4078]));
    let n = expect_notification(&a, 1, notification::header::BAD_MESSAGE_LENGTH);
    assert_eq!(n.data, vec![0x10, 0x01]);
}

#[test]
fn header_unknown_type_is_bad_message_type_with_the_type() {
    for ty in [0u8, 6, 200] {
        let mut p = Peer::ebgp();
        let a = p.feed(&msg(ty, &[]));
        let n = expect_notification(&a, 1, notification::header::BAD_MESSAGE_TYPE);
        assert_eq!(n.data, vec![ty]);
    }
}

// ---------------------------------------------------- RFC 4271 §6.2 OPEN

#[test]
fn open_unsupported_version_names_version_4() {
    let mut s = open_sent(cfg());
    let mut o = peer_open();
    o[19] = 5;
    let a = s.handle_bytes(&o);
    let n = expect_notification(&a, 2, notification::open::UNSUPPORTED_VERSION);
    assert_eq!(n.data, vec![0, 4]);
    assert_eq!(s.state(), State::Idle);
}

#[test]
fn open_bad_peer_as() {
    let mut s = open_sent(cfg());
    let a = s.handle_bytes(&open_msg(65002, 90, PEER_ID, Some(65002), &[]));
    expect_notification(&a, 2, notification::open::BAD_PEER_AS);
}

#[test]
fn open_as_trans_without_four_octet_capability_is_bad_peer_as() {
    // RFC 6793 §4.1 / RFC 4271 §6.2.
    let mut c = cfg();
    c.peer_as = 4_200_000_000;
    let mut s = open_sent(c.clone());
    let a = s.handle_bytes(&open_msg(23456, 90, PEER_ID, None, &[]));
    expect_notification(&a, 2, notification::open::BAD_PEER_AS);
    let mut s = open_sent(c);
    let a = s.handle_bytes(&open_msg(23456, 90, PEER_ID, Some(4_200_000_000), &[]));
    assert!(sent_notification(&a).is_none());
    assert_eq!(s.state(), State::OpenConfirm);
}

#[test]
fn open_four_octet_capability_with_as_zero_is_bad_peer_as() {
    // RFC 7607 §2.
    let mut s = open_sent(cfg());
    let a = s.handle_bytes(&open_msg(PEER_AS as u16, 90, PEER_ID, Some(0), &[]));
    expect_notification(&a, 2, notification::open::BAD_PEER_AS);
}

#[test]
fn open_hold_time_one_or_two_is_unacceptable_zero_is_fine() {
    for hold in [1, 2] {
        let mut s = open_sent(cfg());
        let a = s.handle_bytes(&open_msg(PEER_AS as u16, hold, PEER_ID, Some(PEER_AS), &[]));
        expect_notification(&a, 2, notification::open::UNACCEPTABLE_HOLD_TIME);
    }
    let mut s = open_sent(cfg());
    let a = s.handle_bytes(&open_msg(PEER_AS as u16, 0, PEER_ID, Some(PEER_AS), &[]));
    assert!(sent_notification(&a).is_none());
    assert!(a.contains(&Action::CancelTimer(Timer::Hold)));
    assert_eq!(s.negotiated().map(|n| n.hold_time), Some(0));
}

#[test]
fn open_bad_bgp_identifier() {
    let mut s = open_sent(cfg());
    let a = s.handle_bytes(&open_msg(PEER_AS as u16, 90, [0; 4], Some(PEER_AS), &[]));
    expect_notification(&a, 2, notification::open::BAD_BGP_IDENTIFIER);
    // RFC 6286 §2.2: iBGP with our own identifier.
    let mut c = cfg();
    c.peer_as = LOCAL_AS;
    let mut s = open_sent(c);
    let a = s.handle_bytes(&open_msg(
        LOCAL_AS as u16,
        90,
        [10, 0, 0, 1],
        Some(LOCAL_AS),
        &[],
    ));
    expect_notification(&a, 2, notification::open::BAD_BGP_IDENTIFIER);
}

#[test]
fn open_unsupported_optional_parameter() {
    let mut s = open_sent(cfg());
    let a = s.handle_bytes(&open_msg(
        PEER_AS as u16,
        90,
        PEER_ID,
        Some(PEER_AS),
        &[9, 2, 0, 0],
    ));
    expect_notification(&a, 2, notification::open::UNSUPPORTED_OPTIONAL_PARAMETER);
}

#[test]
fn open_unknown_capability_is_ignored() {
    // RFC 5492 §3: an unrecognised capability is ignored.
    let mut s = open_sent(cfg());
    let a = s.handle_bytes(&open_msg(
        PEER_AS as u16,
        90,
        PEER_ID,
        Some(PEER_AS),
        &[2, 4, 222, 2, 1, 2],
    ));
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert_eq!(s.state(), State::OpenConfirm);
}

// ------------------------------------------- RFC 4271 §8 state machine

#[test]
fn fsm_update_or_keepalive_in_open_sent_is_fsm_error() {
    // RFC 4271 §8.2.2 OpenSent, RFC 6608 §4 subcode 1.
    for m in [keepalive(), update(&[], &[], &[])] {
        let mut s = open_sent(cfg());
        let a = s.handle_bytes(&m);
        expect_notification(&a, 5, notification::fsm::UNEXPECTED_IN_OPEN_SENT);
        assert_eq!(s.state(), State::Idle);
    }
}

#[test]
fn fsm_update_in_open_confirm_is_fsm_error() {
    let mut s = open_sent(cfg());
    s.handle_bytes(&peer_open());
    let a = s.handle_bytes(&update(&[], &[], &[]));
    expect_notification(&a, 5, notification::fsm::UNEXPECTED_IN_OPEN_CONFIRM);
}

#[test]
fn fsm_open_in_established_is_fsm_error() {
    let mut p = Peer::ebgp();
    let a = p.feed(&peer_open());
    expect_notification(&a, 5, notification::fsm::UNEXPECTED_IN_ESTABLISHED);
    assert_eq!(p.session.state(), State::Idle);
}

#[test]
fn fsm_hold_timer_expiry_sends_4_0_and_drops_routes() {
    let mut p = Peer::ebgp().with_route();
    let a = p.session.handle(Event::TimerExpired(Timer::Hold));
    let n = expect_notification(&a, notification::code::HOLD_TIMER_EXPIRED, 0);
    assert!(n.data.is_empty());
    assert!(a.iter().any(|x| matches!(x, Action::SessionDown(_))));
    assert_eq!(p.session.state(), State::Idle);
}

#[test]
fn fsm_notification_received_is_not_answered_and_later_bytes_ignored() {
    let mut s = open_sent(cfg());
    let mut bytes = msg(MSG_NOTIFICATION, &[2, 1, 0, 4]);
    bytes.extend(keepalive());
    bytes.extend(update(&[], &[], &[]));
    let a = s.handle_bytes(&bytes);
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert!(!a.iter().any(|x| matches!(x, Action::Send(_))));
    assert_eq!(s.state(), State::Idle);
    assert!(s.handle_bytes(&keepalive()).is_empty());
}

#[test]
fn fsm_keepalive_and_update_restart_the_hold_timer() {
    let mut p = Peer::ebgp();
    for m in [keepalive(), update(&[], &base(), NLRI)] {
        let a = p.feed(&m);
        assert!(a
            .iter()
            .any(|x| matches!(x, Action::ArmTimer(Timer::Hold, _))));
    }
}

// ----------------------------------- RFC 4271 §6.3 / RFC 7606 UPDATE

#[test]
fn update_total_attribute_length_overrun_resets() {
    // RFC 7606 §4 / RFC 4271 §6.3: the NLRI field cannot be found.
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&msg(MSG_UPDATE, &[0, 0, 0, 40, 0x40, 1, 1, 0]));
    p.assert_reset(&a, notification::update::MALFORMED_ATTRIBUTE_LIST);
}

#[test]
fn update_withdrawn_length_overrun_resets() {
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&msg(MSG_UPDATE, &[0, 30, 24, 10, 0, 0, 0, 0]));
    p.assert_reset(&a, notification::update::MALFORMED_ATTRIBUTE_LIST);
}

#[test]
fn update_nlri_prefix_too_long_resets_with_invalid_network_field() {
    // RFC 7606 §5.3, RFC 4271 §6.3 Invalid Network Field.
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&update(&[], &base(), &[33, 10, 0, 0, 0, 0]));
    p.assert_reset(&a, notification::update::INVALID_NETWORK_FIELD);
}

#[test]
fn update_mp_reach_prefix_too_long_resets() {
    // RFC 7606 §5.3 / RFC 4760 §7.
    let mut p = Peer::ebgp().with_route();
    let mut v = vec![0, 2, 1, 16];
    v.extend([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.push(0);
    v.extend([129; 18]);
    let a = p.feed(&update(
        &[],
        &[origin(), as_path4(&[PEER_AS]), attr(0x80, MP_REACH, &v)],
        &[],
    ));
    p.assert_reset(&a, notification::update::OPTIONAL_ATTRIBUTE);
}

#[test]
fn update_duplicate_mp_reach_resets() {
    // RFC 7606 §3 g.
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&update(
        &[],
        &[
            origin(),
            as_path4(&[PEER_AS]),
            mp_reach_v6(0x80),
            mp_reach_v6(0x80),
        ],
        &[],
    ));
    p.assert_reset(&a, notification::update::MALFORMED_ATTRIBUTE_LIST);
}

#[test]
fn update_unrecognised_well_known_resets_with_the_attribute() {
    // RFC 4271 §6.3: Data is the unrecognised attribute.
    let mut p = Peer::ebgp().with_route();
    let unknown = attr(0x40, 99, &[1, 2]);
    let a = p.feed(&update(&[], &with(unknown.clone()), NLRI));
    let n = p.assert_reset(&a, notification::update::UNRECOGNIZED_WELL_KNOWN);
    assert_eq!(n.data, unknown);
}

#[test]
fn update_missing_well_known_is_treat_as_withdraw() {
    // RFC 7606 §3 d: not the 3/3 session reset of RFC 4271.
    for missing in [ORIGIN, AS_PATH, NEXT_HOP] {
        let mut p = Peer::ebgp().with_route();
        let attrs: Vec<_> = base().into_iter().filter(|a| a[1] != missing).collect();
        let a = p.feed(&update(&[], &attrs, NLRI));
        p.assert_treated_as_withdraw(&a);
    }
}

#[test]
fn update_bad_origin_is_treat_as_withdraw() {
    // RFC 7606 §7.1.
    for value in [&[3u8][..], &[0, 0]] {
        let mut p = Peer::ebgp().with_route();
        let attrs = vec![
            attr(0x40, ORIGIN, value),
            as_path4(&[PEER_AS]),
            next_hop([198, 51, 100, 1]),
        ];
        let a = p.feed(&update(&[], &attrs, NLRI));
        p.assert_treated_as_withdraw(&a);
    }
}

#[test]
fn update_malformed_as_path_is_treat_as_withdraw() {
    // RFC 7606 §7.2: overrun, unknown segment type, zero-length segment.
    let mut good = vec![2, 1];
    good.extend(PEER_AS.to_be_bytes());
    let cases: Vec<Vec<u8>> = vec![
        vec![2, 2, 0, 0, 0xfe, 0x09],
        {
            let mut v = good.clone();
            v[0] = 7;
            v
        },
        {
            let mut v = good.clone();
            v.extend([2, 0]);
            v
        },
        {
            let mut v = good.clone();
            v.push(2);
            v
        },
    ];
    for path in cases {
        let mut p = Peer::ebgp().with_route();
        let attrs = vec![
            origin(),
            attr(0x40, AS_PATH, &path),
            next_hop([198, 51, 100, 1]),
        ];
        let a = p.feed(&update(&[], &attrs, NLRI));
        p.assert_treated_as_withdraw(&a);
    }
}

#[test]
fn update_ebgp_leftmost_as_not_the_peer_is_treat_as_withdraw() {
    // RFC 4271 §6.3 Malformed AS_PATH, handled per RFC 7606 §7.2.
    let mut p = Peer::ebgp().with_route();
    let attrs = vec![
        origin(),
        as_path4(&[65099, PEER_AS]),
        next_hop([198, 51, 100, 1]),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    p.assert_treated_as_withdraw(&a);
}

#[test]
fn update_as_path_with_as_zero_is_treat_as_withdraw() {
    // RFC 7607 §2: AS 0 in AS_PATH makes the UPDATE malformed (RFC 7606).
    let mut p = Peer::ebgp().with_route();
    let attrs = vec![
        origin(),
        as_path4(&[PEER_AS, 0, 65010]),
        next_hop([198, 51, 100, 1]),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    p.assert_treated_as_withdraw(&a);
}

#[test]
fn update_attribute_flags_conflict_is_treat_as_withdraw() {
    // RFC 7606 §3 c.
    let mut p = Peer::ebgp().with_route();
    let attrs = vec![
        attr(0xc0, ORIGIN, &[0]),
        as_path4(&[PEER_AS]),
        next_hop([198, 51, 100, 1]),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    p.assert_treated_as_withdraw(&a);
}

#[test]
fn update_mp_reach_flags_conflict_withdraws_its_prefixes_too() {
    // RFC 7606 §3 c: treat-as-withdraw, and by §2 that withdraws every
    // prefix of the UPDATE, MP_REACH_NLRI's included.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(
        &[],
        &[origin(), as_path4(&[PEER_AS]), mp_reach_v6(0x80)],
        &[],
    ));
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.v6(), vec![p6("2001:db8:1::/48")]);
    let a = p.feed(&update(
        &[],
        &[origin(), as_path4(&[PEER_AS]), mp_reach_v6(0xc0)],
        &[],
    ));
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert_eq!(p.session.state(), State::Established);
    assert!(p.v6().is_empty(), "{:?}", p.v6());
}

#[test]
fn update_treat_as_withdraw_withdraws_body_and_mp_prefixes() {
    // RFC 7606 §2: all NLRI of the message, in either encoding.
    let mut p = Peer::ebgp().with_route();
    p.feed(&update(
        &[],
        &[origin(), as_path4(&[PEER_AS]), mp_reach_v6(0x80)],
        &[],
    ));
    assert_eq!(p.v6().len(), 1);
    let a = p.feed(&update(
        &[],
        &[
            attr(0x40, ORIGIN, &[9]),
            as_path4(&[PEER_AS]),
            next_hop([198, 51, 100, 1]),
            mp_reach_v6(0x80),
        ],
        NLRI,
    ));
    p.assert_treated_as_withdraw(&a);
    assert!(p.v6().is_empty());
}

#[test]
fn update_next_hop_wrong_length_is_treat_as_withdraw() {
    // RFC 7606 §7.3.
    let mut p = Peer::ebgp().with_route();
    let attrs = vec![
        origin(),
        as_path4(&[PEER_AS]),
        attr(0x40, NEXT_HOP, &[198, 51, 100, 1, 0]),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    p.assert_treated_as_withdraw(&a);
}

#[test]
fn update_next_hop_semantically_invalid_ignores_the_route() {
    // RFC 4271 §6.3: 0.0.0.0, multicast, broadcast, loopback: the route is
    // ignored, no NOTIFICATION.
    for nh in [
        [0, 0, 0, 0],
        [224, 0, 0, 5],
        [255, 255, 255, 255],
        [127, 0, 0, 1],
    ] {
        let mut p = Peer::ebgp().with_route();
        let a = p.feed(&update(
            &[],
            &[origin(), as_path4(&[PEER_AS]), next_hop(nh)],
            NLRI,
        ));
        assert!(sent_notification(&a).is_none());
        assert_eq!(p.session.state(), State::Established);
        assert!(p.v4().is_empty(), "{nh:?}");
    }
}

#[test]
fn mp_reach_next_hop_semantically_invalid_ignores_the_routes() {
    // RFC 4760 §3, RFC 2545 §3: an IPv6 next hop nobody can forward to
    // (unspecified, loopback, multicast, IPv4-mapped) makes the routes
    // unusable, without a NOTIFICATION, and they replace what the peer
    // had announced.
    let bad: [[u8; 16]; 4] = [
        [0; 16],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1],
    ];
    for nh in bad {
        let mut p = Peer::ebgp();
        p.feed(&update(
            &[],
            &[origin(), as_path4(&[PEER_AS]), mp_reach_v6(0x80)],
            &[],
        ));
        assert_eq!(p.v6(), [p6("2001:db8:1::/48")]);
        let reach = attr(0x80, MP_REACH, &mp_reach_v6_via(nh));
        let a = p.feed(&update(&[], &[origin(), as_path4(&[PEER_AS]), reach], &[]));
        p.assert_treated_as_withdraw(&a);
        assert!(p.v6().is_empty(), "{nh:?}");
    }
    // A link-local next hop alone is what peers on one link may send.
    let mut p = Peer::ebgp();
    let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let reach = attr(0x80, MP_REACH, &mp_reach_v6_via(link_local));
    p.feed(&update(&[], &[origin(), as_path4(&[PEER_AS]), reach], &[]));
    assert_eq!(p.v6(), [p6("2001:db8:1::/48")]);
}

#[test]
fn update_next_hop_equal_to_our_address_ignores_the_route() {
    // RFC 4271 §6.3: "the NEXT_HOP attribute is not the IP address of
    // the receiving speaker" — otherwise the route is ignored (log, no
    // NOTIFICATION), and it replaces what the peer had announced.
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&update(
        &[],
        &[
            origin(),
            as_path4(&[PEER_AS]),
            next_hop(LOCAL_ADDR.octets()),
        ],
        NLRI,
    ));
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.session.state(), State::Established);
    assert!(p.v4().is_empty(), "{:?}", p.v4());
}

#[test]
fn update_next_hop_ignored_without_body_nlri() {
    // RFC 4760 §3: an UPDATE whose only NLRI is in MP_REACH_NLRI SHOULD
    // NOT carry NEXT_HOP, and the receiver SHOULD ignore it; a bad one
    // must not cost the IPv6 routes.
    for nh in [
        next_hop([0, 0, 0, 0]),
        attr(0x40, NEXT_HOP, &[1, 2, 3, 4, 5]),
    ] {
        let mut p = Peer::ebgp();
        let a = p.feed(&update(
            &[],
            &[origin(), as_path4(&[PEER_AS]), nh, mp_reach_v6(0x80)],
            &[],
        ));
        assert!(sent_notification(&a).is_none());
        assert_eq!(p.v6(), vec![p6("2001:db8:1::/48")]);
    }
}

#[test]
fn update_local_pref_from_ebgp_is_discarded() {
    // RFC 7606 §7.5 (and RFC 4271 §5.1.5).
    let mut p = Peer::ebgp();
    p.feed(&update(
        &[],
        &with(attr(0x40, LOCAL_PREF, &[0, 0, 0, 200])),
        NLRI,
    ));
    assert_eq!(p.attrs_of("203.0.113.0/24").local_pref, None);
    // Even malformed: it is discarded, not a reason to withdraw.
    let mut p = Peer::ebgp();
    p.feed(&update(&[], &with(attr(0x40, LOCAL_PREF, &[0, 1])), NLRI));
    assert_eq!(p.v4(), vec![p4("203.0.113.0/24")]);
}

#[test]
fn update_med_wrong_length_is_treat_as_withdraw() {
    // RFC 7606 §7.4.
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&update(&[], &with(attr(0x80, MED, &[0, 0, 1])), NLRI));
    p.assert_treated_as_withdraw(&a);
}

#[test]
fn update_atomic_aggregate_with_a_value_is_discarded() {
    // RFC 7606 §7.6.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(
        &[],
        &with(attr(0x40, ATOMIC_AGGREGATE, &[1])),
        NLRI,
    ));
    assert!(sent_notification(&a).is_none());
    assert!(!p.attrs_of("203.0.113.0/24").atomic_aggregate);
    assert_eq!(p.session.errors().attribute_discard, 1);
}

#[test]
fn update_aggregator_wrong_length_is_discarded() {
    // RFC 7606 §7.7: 8 octets on a 4-octet session.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(
        &[],
        &with(attr(0xc0, AGGREGATOR, &[0xfd, 0xe9, 10, 0, 0, 1])),
        NLRI,
    ));
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.attrs_of("203.0.113.0/24").aggregator, None);
}

#[test]
fn update_aggregator_with_as_zero_is_discarded() {
    // RFC 7607 §2: AS 0 must not be propagated in AGGREGATOR.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(
        &[],
        &with(attr(0xc0, AGGREGATOR, &[0, 0, 0, 0, 10, 0, 0, 1])),
        NLRI,
    ));
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.attrs_of("203.0.113.0/24").aggregator, None);
}

#[test]
fn update_communities_not_multiple_of_four_is_treat_as_withdraw() {
    // RFC 7606 §7.8.
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&update(
        &[],
        &with(attr(0xc0, COMMUNITIES, &[0, 1, 0, 2, 3])),
        NLRI,
    ));
    p.assert_treated_as_withdraw(&a);
}

#[test]
fn update_duplicate_attribute_keeps_the_first() {
    // RFC 7606 §3 g.
    let mut p = Peer::ebgp();
    let mut attrs = base();
    attrs.push(attr(0x40, ORIGIN, &[2]));
    let a = p.feed(&update(&[], &attrs, NLRI));
    assert!(sent_notification(&a).is_none());
    assert_eq!(
        p.attrs_of("203.0.113.0/24").origin,
        crate::attrs::Origin::Igp
    );
}

#[test]
fn update_unknown_optional_non_transitive_is_ignored() {
    // RFC 4271 §5.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(&[], &with(attr(0x80, 201, &[1, 2, 3])), NLRI));
    assert!(sent_notification(&a).is_none());
    assert!(p.attrs_of("203.0.113.0/24").unknown.is_empty());
}

#[test]
fn update_unknown_optional_transitive_is_kept_with_partial() {
    // RFC 4271 §5 / §9: passed on with the Partial bit set.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(&[], &with(attr(0xc0, 202, &[1, 2, 3])), NLRI));
    assert!(sent_notification(&a).is_none());
    let u = &p.attrs_of("203.0.113.0/24").unknown;
    assert_eq!(u.len(), 1);
    assert_eq!((u[0].code, u[0].value.clone()), (202, vec![1, 2, 3]));
    assert_ne!(u[0].flags & FLAG_PARTIAL, 0);
}

#[test]
fn update_extended_length_on_a_short_attribute_is_fine() {
    // RFC 4271 §4.3: Extended Length may be used for any length.
    let mut p = Peer::ebgp();
    let attrs = vec![
        attr(0x50, ORIGIN, &[1]),
        attr(0x50, AS_PATH, &{
            let mut v = vec![2, 1];
            v.extend(PEER_AS.to_be_bytes());
            v
        }),
        attr(0x50, NEXT_HOP, &[198, 51, 100, 1]),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert_eq!(
        p.attrs_of("203.0.113.0/24").origin,
        crate::attrs::Origin::Egp
    );
}

#[test]
fn update_attributes_without_nlri_are_fine() {
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&update(&[], &base(), &[]));
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.v4(), vec![p4("203.0.113.0/24")]);
}

#[test]
fn update_nlri_trailing_bits_are_irrelevant() {
    // RFC 4271 §4.3: "the value of trailing bits is irrelevant".
    let mut p = Peer::ebgp();
    let a = p.feed(&update(&[], &base(), &[19, 10, 0, 63]));
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.v4(), vec![p4("10.0.32.0/19")]);
    // A withdrawal with other trailing bits names the same prefix.
    p.feed(&update(&[19, 10, 0, 33], &[], &[]));
    assert!(p.v4().is_empty());
}

#[test]
fn update_mp_nlri_trailing_bits_are_irrelevant() {
    let mut p = Peer::ebgp();
    let mut v = vec![0, 2, 1, 16];
    v.extend([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.push(0);
    v.extend([44, 0x20, 1, 0x0d, 0xb8, 0, 0x1f]);
    p.feed(&update(
        &[],
        &[origin(), as_path4(&[PEER_AS]), attr(0x80, MP_REACH, &v)],
        &[],
    ));
    assert_eq!(p.v6(), vec![p6("2001:db8:10::/44")]);
}

// -------------------------------------------------- RFC 6793 4-octet AS

#[test]
fn as4_aggregator_replaces_as_trans_aggregator() {
    // RFC 6793 §4.2.3: AGGREGATOR with AS_TRANS is completed by
    // AS4_AGGREGATOR.
    let mut p = Peer::ebgp_two_octet();
    let mut as4_agg = 4_200_000_000u32.to_be_bytes().to_vec();
    as4_agg.extend([10, 9, 9, 9]);
    let attrs = vec![
        origin(),
        as_path2(&[PEER_AS as u16]),
        next_hop([198, 51, 100, 1]),
        attr(0xc0, AGGREGATOR, &[0x5b, 0xa0, 10, 1, 1, 1]),
        attr(0xc0, AS4_AGGREGATOR, &as4_agg),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    assert!(sent_notification(&a).is_none());
    assert_eq!(
        p.attrs_of("203.0.113.0/24").aggregator,
        Some((4_200_000_000, Ipv4Addr::new(10, 9, 9, 9)))
    );
}

#[test]
fn as4_attributes_ignored_when_aggregator_is_not_as_trans() {
    // RFC 6793 §4.2.3: an AGGREGATOR that is not AS_TRANS was added by
    // an OLD speaker after the AS4_* were: AS4_AGGREGATOR and AS4_PATH
    // are ignored.
    let mut p = Peer::ebgp_two_octet();
    let mut as4_agg = 4_200_000_000u32.to_be_bytes().to_vec();
    as4_agg.extend([10, 9, 9, 9]);
    let mut as4_path = vec![2, 1];
    as4_path.extend(4_200_000_001u32.to_be_bytes());
    let attrs = vec![
        origin(),
        as_path2(&[PEER_AS as u16, 23456]),
        next_hop([198, 51, 100, 1]),
        attr(0xc0, AGGREGATOR, &[0xfd, 0xe9, 10, 1, 1, 1]),
        attr(0xc0, AS4_PATH, &as4_path),
        attr(0xc0, AS4_AGGREGATOR, &as4_agg),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    assert!(sent_notification(&a).is_none());
    let got = p.attrs_of("203.0.113.0/24");
    assert_eq!(got.aggregator, Some((65001, Ipv4Addr::new(10, 1, 1, 1))));
    assert_eq!(
        got.as_path.segments,
        vec![AsSegment::Sequence(vec![PEER_AS, 23456])]
    );
}

#[test]
fn as4_path_merged_from_old_speaker() {
    // RFC 6793 §4.2.3.
    let mut p = Peer::ebgp_two_octet();
    let mut as4_path = vec![2, 1];
    as4_path.extend(4_200_000_001u32.to_be_bytes());
    let attrs = vec![
        origin(),
        as_path2(&[PEER_AS as u16, 23456]),
        next_hop([198, 51, 100, 1]),
        attr(0xc0, AS4_PATH, &as4_path),
    ];
    p.feed(&update(&[], &attrs, NLRI));
    assert_eq!(
        p.attrs_of("203.0.113.0/24").as_path.segments,
        vec![
            AsSegment::Sequence(vec![PEER_AS]),
            AsSegment::Sequence(vec![4_200_000_001])
        ]
    );
}

#[test]
fn as4_path_with_as_zero_is_discarded() {
    // RFC 7607 §2 with RFC 6793 §6: a malformed AS4_PATH is discarded.
    let mut p = Peer::ebgp_two_octet();
    let mut as4_path = vec![2, 1];
    as4_path.extend(0u32.to_be_bytes());
    let attrs = vec![
        origin(),
        as_path2(&[PEER_AS as u16, 23456]),
        next_hop([198, 51, 100, 1]),
        attr(0xc0, AS4_PATH, &as4_path),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    assert!(sent_notification(&a).is_none());
    assert_eq!(
        p.attrs_of("203.0.113.0/24").as_path.segments,
        vec![AsSegment::Sequence(vec![PEER_AS, 23456])]
    );
}

#[test]
fn as4_path_confed_segments_are_dropped_not_the_path() {
    // RFC 6793 §3: AS_CONFED_SEQUENCE / AS_CONFED_SET in AS4_PATH are
    // discarded, and the rest of AS4_PATH still completes the path.
    let mut p = Peer::ebgp_two_octet();
    let mut as4_path = vec![3, 1];
    as4_path.extend(64_512u32.to_be_bytes());
    as4_path.extend([2, 1]);
    as4_path.extend(4_200_000_001u32.to_be_bytes());
    as4_path.extend([4, 1]);
    as4_path.extend(64_513u32.to_be_bytes());
    let attrs = vec![
        origin(),
        as_path2(&[PEER_AS as u16, 23456]),
        next_hop([198, 51, 100, 1]),
        attr(0xc0, AS4_PATH, &as4_path),
    ];
    let a = p.feed(&update(&[], &attrs, NLRI));
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert!(!parsed(&a).attributes_discarded);
    assert_eq!(
        p.attrs_of("203.0.113.0/24").as_path.segments,
        vec![
            AsSegment::Sequence(vec![PEER_AS]),
            AsSegment::Sequence(vec![4_200_000_001])
        ]
    );
    assert!(p.attrs_of("203.0.113.0/24").unknown.is_empty());
}

// ------------------------------------------------ RFC 2918 route refresh

/// ROUTE-REFRESH for AFI 1 / SAFI 1.
fn route_refresh_v4() -> Vec<u8> {
    msg(crate::wire::MSG_ROUTE_REFRESH, &[0, 1, 0, 1])
}

#[test]
fn route_refresh_honoured_when_we_advertised_the_capability() {
    // RFC 2918 §4: a request is answered when *we* advertised the
    // capability; this peer's OPEN has none (capability 2 absent).
    let mut p = Peer::ebgp();
    assert!(!p.session.negotiated().unwrap().route_refresh);
    let a = p.feed(&route_refresh_v4());
    assert!(
        a.contains(&Action::RouteRefresh(crate::config::Family::Ipv4Unicast)),
        "{a:?}"
    );
    assert_eq!(p.session.state(), State::Established);
    // Without our advertisement it is ignored (not an error either).
    let mut c = cfg();
    c.route_refresh = false;
    let mut p = Peer::established_with(c, &peer_open());
    let a = p.feed(&route_refresh_v4());
    assert!(
        !a.iter().any(|x| matches!(x, Action::RouteRefresh(_))),
        "{a:?}"
    );
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.session.state(), State::Established);
}

#[test]
fn update_multicast_prefixes_are_ignored_not_fatal() {
    // RFC 4271 §6.3: a semantically incorrect prefix (an unexpected
    // multicast address) is logged and ignored; the rest of the UPDATE
    // stands, in the NLRI field as in MP_REACH_NLRI.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(&[], &base(), &[4, 224, 24, 203, 0, 113]));
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert_eq!(p.v4(), vec![p4("203.0.113.0/24")]);

    let mut v = vec![0, 2, 1, 16];
    v.extend([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.push(0);
    v.extend([16, 0xff, 0x02, 48, 0x20, 1, 0x0d, 0xb8, 0, 1, 8, 0xff]);
    let a = p.feed(&update(
        &[],
        &[origin(), as_path4(&[PEER_AS]), attr(0x80, MP_REACH, &v)],
        &[],
    ));
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert_eq!(p.session.state(), State::Established);
    assert_eq!(p.v6(), vec![p6("2001:db8:1::/48")]);

    // The same in MP_UNREACH_NLRI: the unicast prefix is withdrawn.
    let a = p.feed(&update(
        &[],
        &[attr(
            0x80,
            MP_UNREACH,
            &[0, 2, 1, 16, 0xff, 0x02, 48, 0x20, 1, 0x0d, 0xb8, 0, 1],
        )],
        &[],
    ));
    assert!(sent_notification(&a).is_none(), "{a:?}");
    assert!(p.v6().is_empty());
    assert_eq!(p.session.errors().ignored_prefixes, 4);
}

fn parsed(actions: &[Action]) -> &crate::update_rx::ParsedUpdate {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Update(u) => Some(&**u),
            _ => None,
        })
        .expect("an Update action")
}

// ----------------------------------------- RFC 4724 §2 End-of-RIB marker

#[test]
fn end_of_rib_markers_are_recognised() {
    let mut p = Peer::ebgp();
    let a = p.feed(&update(&[], &[], &[]));
    assert_eq!(
        parsed(&a).end_of_rib,
        Some(crate::config::Family::Ipv4Unicast)
    );
    let a = p.feed(&update(&[], &[attr(0x80, MP_UNREACH, &[0, 2, 1])], &[]));
    assert_eq!(
        parsed(&a).end_of_rib,
        Some(crate::config::Family::Ipv6Unicast)
    );
}

#[test]
fn error_handling_does_not_turn_an_update_into_end_of_rib() {
    // What RFC 7606 drops from an UPDATE must not leave the empty UPDATE
    // of RFC 4724 §2 behind: that would end a peer's graceful restart
    // early.
    let cases = vec![
        vec![attr(0x40, ORIGIN, &[7])],
        vec![attr(0x80, 201, &[1])],
        vec![attr(0x40, ATOMIC_AGGREGATE, &[1])],
        vec![attr(0xc0, MP_UNREACH, &[0, 2, 1])],
    ];
    for attrs in cases {
        let mut p = Peer::ebgp();
        let a = p.feed(&update(&[], &attrs, &[]));
        assert!(sent_notification(&a).is_none(), "{a:?}");
        assert_eq!(parsed(&a).end_of_rib, None, "{attrs:?}");
    }
    // A withdrawal of only ignored (multicast) prefixes is no marker
    // either.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(&[4, 224], &[], &[]));
    assert_eq!(parsed(&a).end_of_rib, None);
}

#[test]
fn update_errors_without_reachable_nlri_are_treat_as_withdraw() {
    // RFC 7606 §5.2: no reachable NLRI but attributes besides
    // MP_UNREACH_NLRI, and an attribute-discard error: treat-as-withdraw;
    // the withdrawals in it still happen.
    let mut p = Peer::ebgp().with_route();
    let a = p.feed(&update(
        NLRI,
        &[origin(), attr(0x40, ATOMIC_AGGREGATE, &[1])],
        &[],
    ));
    assert!(sent_notification(&a).is_none());
    assert!(parsed(&a).treated_as_withdraw.is_some());
    assert!(p.v4().is_empty());
    assert_eq!(p.session.state(), State::Established);
}

#[test]
fn update_prefix_both_withdrawn_and_announced_is_announced() {
    // RFC 4271 §4.3: treated as though WITHDRAWN ROUTES did not hold it.
    let mut p = Peer::ebgp();
    let a = p.feed(&update(NLRI, &base(), NLRI));
    assert!(sent_notification(&a).is_none());
    assert_eq!(p.v4(), vec![p4("203.0.113.0/24")]);
}
