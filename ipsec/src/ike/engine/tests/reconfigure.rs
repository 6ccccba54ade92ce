//! Replacing the configuration while tunnels are up (SD-EWAN resources changing).

use super::*;

fn closed(events: &[Action]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Action::Closed { .. }))
        .count()
}

#[test]
fn an_unchanged_peer_keeps_its_sas_even_when_others_come_before_it() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    let before = installs(&p.events_a)[0].clone();
    let mut config = p.a.config.clone();
    let mut other = config.peers[0].clone();
    other.name = "someone-else".into();
    other.remote = Some("198.51.100.9:500".parse().unwrap());
    config.peers.insert(0, other);
    let actions = p.a.reconfigure(config, p.now).unwrap();
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(
        p.a.sas(),
        vec![(id, "to-b".to_string(), IkeState::Established)]
    );
    // Still working: a liveness check goes through, and a rekey uses the right peer.
    let dpd = p.a.send_dpd(id, p.now).unwrap();
    p.run(dpd);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    let old = before.inbound.spi;
    let mut actions = Vec::new();
    p.a.start_child_rekey(id.0, old, p.now, &mut actions);
    p.run(actions);
    assert_eq!(installs(&p.events_a).len(), 2);
}

#[test]
fn a_removed_peer_is_deleted_and_told() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    let child = installs(&p.events_a)[0].clone();
    let config = EngineConfig {
        peers: Vec::new(),
        ..p.a.config.clone()
    };
    let actions = p.a.reconfigure(config, p.now).unwrap();
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::DeleteChildSa { inbound_spi, .. } if *inbound_spi == child.inbound.spi
    )));
    assert!(!actions.iter().any(|a| matches!(a, Action::ArmTimer { .. })));
    assert_eq!(p.a.state(id), None);
    p.run(actions);
    assert_eq!(closed(&p.events_a), 1);
    assert_eq!(closed(&p.events_b), 1, "B was told");
    assert!(p.b.sas().is_empty());
    assert_eq!(
        p.a.connect("to-b", p.now).err(),
        Some(EngineError::UnknownPeer("to-b".into()))
    );
}

#[test]
fn a_changed_peer_is_deleted_and_comes_back_with_the_new_settings() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    let mut config = p.a.config.clone();
    config.peers[0].esp_proposals = vec![EspProposal::parse("aes256gcm16").unwrap()];
    let actions = p.a.reconfigure(config, p.now).unwrap();
    p.run(actions);
    assert_eq!(p.a.state(id), None);
    assert!(p.b.sas().is_empty());
    // B accepts only AES-128-GCM: the new settings are what A now proposes.
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    p.run(actions);
    assert!(matches!(
        child_failure(&p.events_a),
        Some(Failure::PeerError(notify::NO_PROPOSAL_CHOSEN))
    ));
}

#[test]
fn a_peer_naming_an_unknown_pool_is_refused_and_nothing_changes() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    let mut config = p.a.config.clone();
    config.peers[0].pool = Some("nowhere".into());
    assert_eq!(
        p.a.reconfigure(config, p.now).err(),
        Some(EngineError::UnknownPool("to-b".into(), "nowhere".into()))
    );
    assert_eq!(p.a.state(id), Some(IkeState::Established));
}

#[test]
fn leases_of_an_unchanged_pool_survive_and_a_changed_pool_ends_its_tunnels() {
    let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.0/24"));
    let id = p.connect();
    assert!(p.b.sas().len() == 1 && p.a.state(id) == Some(IkeState::Established));
    let leased = p.b.pools().first().map(|s| s.online).unwrap_or(0);
    assert_eq!(leased, 1);
    let same = p.b.config.clone();
    assert!(p.b.reconfigure(same.clone(), p.now).unwrap().is_empty());
    assert_eq!(p.b.pools()[0].online, 1, "the lease stays");
    let mut changed = same;
    changed.pools[0] = PoolConfig::parse(&changed.pools[0].name, "198.18.101.0/24", "").unwrap();
    let actions = p.b.reconfigure(changed, p.now).unwrap();
    p.run_both(Vec::new(), actions);
    assert!(p.b.sas().is_empty());
    assert_eq!(p.b.pools()[0].online, 0);
    assert_eq!(p.a.state(id), None, "A was told");
}
