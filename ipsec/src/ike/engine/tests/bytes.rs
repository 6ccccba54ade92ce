//! CHILD_SA lifetimes by bytes (RFC 4301 section 4.4.2.1): the shell reports what the
//! dataplane counted, the engine rekeys at the soft limit and deletes at the hard one.

use super::*;

fn byte_pair(soft: Option<u64>, hard: Option<u64>) -> Pair {
    let mut p = lifetime_pair("aes128gcm16", 100, 110);
    let a = &mut p.a.config.peers[0];
    a.child_lifetime = crate::esp::Lifetime {
        soft_bytes: soft,
        hard_bytes: hard,
        ..Default::default()
    };
    p
}

#[test]
fn the_soft_byte_limit_rekeys_once_and_the_successor_starts_from_zero() {
    let mut p = byte_pair(Some(1_000_000), Some(1_100_000));
    assert!(p.a.has_byte_limits() && !p.b.has_byte_limits());
    p.connect();
    let old = installs(&p.events_a)[0].clone();
    assert_eq!(p.a.next_timeout(), None, "no time limits");
    assert!(p.a.child_bytes(old.inbound.spi, 999_999, p.now).is_empty());
    let actions = p.a.child_bytes(old.inbound.spi, 1_000_000, p.now);
    assert_eq!(p.a.counters().child_rekeys_started, 1);
    p.run(actions);
    let a_new = installs(&p.events_a)[1].clone();
    assert_eq!(deleted(&p.events_a), vec![old.inbound.spi]);
    assert_eq!(
        children(&p.a),
        vec![(a_new.inbound.spi, a_new.outbound.spi)]
    );
    // The old SA's counters keep climbing in the dataplane until it goes: no second rekey.
    assert!(p
        .a
        .child_bytes(old.inbound.spi, 1_050_000, p.now)
        .is_empty());
    // The new one is judged by its own counters.
    assert!(p.a.child_bytes(a_new.inbound.spi, 10, p.now).is_empty());
    assert_eq!(p.a.counters().child_rekeys_started, 1);
}

#[test]
fn the_hard_byte_limit_deletes_the_child_sa_on_both_sides() {
    let mut p = byte_pair(None, Some(5_000));
    let id = p.connect();
    let child = installs(&p.events_a)[0].clone();
    let actions = p.a.child_bytes(child.inbound.spi, 5_000, p.now);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::DeleteChildSa { inbound_spi, .. } if *inbound_spi == child.inbound.spi
    )));
    p.run(actions);
    assert_eq!(p.a.counters().child_sas_expired, 1);
    assert!(children(&p.a).is_empty() && children(&p.b).is_empty());
    assert_eq!(deleted(&p.events_b), vec![child.outbound.spi]);
    assert_eq!(
        p.a.state(id),
        Some(IkeState::Established),
        "the IKE SA stays"
    );
}

#[test]
fn bytes_for_an_unknown_spi_are_ignored() {
    let mut p = byte_pair(Some(10), Some(20));
    p.connect();
    assert!(p.a.child_bytes(0xdead_beef, u64::MAX, p.now).is_empty());
}
