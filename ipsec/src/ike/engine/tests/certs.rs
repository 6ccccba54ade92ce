//! X.509 authentication between two engines (certificates made by rcgen for the test).

use super::*;
use crate::ike::cert::{auth_method, Credentials};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use std::sync::Arc;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A certificate for `dns` from `ca`, and its key (PKCS#8 PEM).
fn leaf(
    ca: &Ca,
    dns: &str,
    alg: &'static SignatureAlgorithm,
    edit: impl Fn(&mut CertificateParams),
) -> (String, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, dns);
    edit(&mut params);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn credentials(ca: &Ca, (cert, key): &(String, String)) -> Arc<Credentials> {
    Arc::new(Credentials::new(cert.as_bytes(), key.as_bytes(), ca.cert.pem().as_bytes()).unwrap())
}

fn cert_pair(a: Arc<Credentials>, b: Arc<Credentials>) -> Pair {
    let ike = "aes128gcm16-prfsha256-x25519";
    let mut pa = peer("to-b", A, Some(B), ike, "aes128gcm16", b"unused");
    let mut pb = peer("from-a", B, None, ike, "aes128gcm16", b"unused");
    pa.certs = Some(a);
    pb.certs = Some(b);
    Pair::new(pa, pb)
}

#[test]
fn certificates_from_the_ca_establish_with_ecdsa_p256_and_p384() {
    let ca = ca("Switchyard test CA");
    for (alg_a, alg_b) in [
        (&PKCS_ECDSA_P256_SHA256, &PKCS_ECDSA_P256_SHA256),
        (&PKCS_ECDSA_P384_SHA384, &PKCS_ECDSA_P256_SHA256),
    ] {
        let a = credentials(&ca, &leaf(&ca, "a.example", alg_a, |_| {}));
        let b = credentials(&ca, &leaf(&ca, "b.example", alg_b, |_| {}));
        let mut p = cert_pair(a, b);
        let id = p.connect();
        assert!(established(&p.events_a) && established(&p.events_b));
        assert_eq!(p.a.state(id), Some(IkeState::Established));
        assert_eq!(
            p.a.counters().cert_rejected + p.b.counters().cert_rejected,
            0
        );
        esp_round_trip(installs(&p.events_a)[0], installs(&p.events_b)[0]);
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused_on_both_sides() {
    let ca_ok = ca("Switchyard test CA");
    let ca_other = ca("Someone else");
    let a = credentials(
        &ca_ok,
        &leaf(&ca_other, "a.example", &PKCS_ECDSA_P256_SHA256, |_| {}),
    );
    let b = credentials(
        &ca_ok,
        &leaf(&ca_ok, "b.example", &PKCS_ECDSA_P256_SHA256, |_| {}),
    );
    let mut p = cert_pair(a, b);
    p.connect();
    assert_eq!(failure(&p.events_a), Some(Failure::AuthenticationFailed));
    assert_eq!(failure(&p.events_b), Some(Failure::AuthenticationFailed));
    assert_eq!(p.b.counters().cert_rejected, 1);
    assert!(installs(&p.events_a).is_empty() && installs(&p.events_b).is_empty());
}

#[test]
fn an_expired_certificate_or_a_foreign_identity_is_refused() {
    let ca = ca("Switchyard test CA");
    let b = credentials(
        &ca,
        &leaf(&ca, "b.example", &PKCS_ECDSA_P256_SHA256, |_| {}),
    );
    let expired = leaf(&ca, "a.example", &PKCS_ECDSA_P256_SHA256, |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    // A certificate for another name than the identity A claims (@a.example).
    let other_name = leaf(&ca, "c.example", &PKCS_ECDSA_P256_SHA256, |_| {});
    for a in [expired, other_name] {
        let mut p = cert_pair(credentials(&ca, &a), Arc::clone(&b));
        p.connect();
        assert_eq!(failure(&p.events_b), Some(Failure::AuthenticationFailed));
        assert_eq!(p.b.counters().cert_rejected, 1);
    }
}

#[test]
fn credentials_that_do_not_fit_are_refused_at_configuration() {
    let ca = ca("Switchyard test CA");
    let (cert, _) = leaf(&ca, "a.example", &PKCS_ECDSA_P256_SHA256, |_| {});
    let (_, other_key) = leaf(&ca, "a.example", &PKCS_ECDSA_P256_SHA256, |_| {});
    let ca_pem = ca.cert.pem();
    assert_eq!(
        Credentials::new(cert.as_bytes(), other_key.as_bytes(), ca_pem.as_bytes()).err(),
        Some(crate::ike::cert::CertError::KeyMismatch)
    );
    assert!(Credentials::new(b"garbage", other_key.as_bytes(), ca_pem.as_bytes()).is_err());
    assert!(Credentials::new(cert.as_bytes(), b"", ca_pem.as_bytes()).is_err());
}

#[test]
fn signatures_follow_the_peers_hashes_and_verify_both_ways() {
    let ca = ca("Switchyard test CA");
    let a = credentials(
        &ca,
        &leaf(&ca, "a.example", &PKCS_ECDSA_P256_SHA256, |_| {}),
    );
    let b = credentials(
        &ca,
        &leaf(&ca, "b.example", &PKCS_ECDSA_P256_SHA256, |_| {}),
    );
    let octets = b"the octets RFC 7296 section 2.15 names";
    let id = Identity::parse("@a.example").to_wire();
    for (hashes, method) in [
        (&[2u16, 3, 4][..], auth_method::DIGITAL_SIGNATURE),
        (&[][..], auth_method::ECDSA_SHA256_P256),
    ] {
        let Payload::Auth { method: m, data } = a.sign(octets, hashes).unwrap() else {
            panic!("not AUTH");
        };
        assert_eq!(m, method);
        let cert = a.cert_payloads().remove(0);
        let now = std::time::SystemTime::now();
        assert_eq!(
            b.verify_peer(std::slice::from_ref(&cert), &id, m, &data, octets, now),
            Ok(())
        );
        let mut bad = data.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(b
            .verify_peer(std::slice::from_ref(&cert), &id, m, &bad, octets, now)
            .is_err());
        assert!(b.verify_peer(&[], &id, m, &data, octets, now).is_err());
    }
}

/// An RSA key (2048 bits, PKCS#8, made once with `openssl genpkey`: ring cannot generate
/// RSA keys) with a certificate from the ECDSA CA: RFC 7427 sha256WithRSAEncryption both ways.
#[test]
fn an_rsa_certificate_signs_with_rfc_7427_pkcs1_sha256() {
    let ca = ca("Switchyard test CA");
    let rsa = KeyPair::from_pem(include_str!("fixtures/rsa2048.pem")).unwrap();
    let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "a.example");
    let cert = params.signed_by(&rsa, &ca.cert, &ca.key).unwrap();
    let a = credentials(&ca, &(cert.pem(), rsa.serialize_pem()));
    let b = credentials(
        &ca,
        &leaf(&ca, "b.example", &PKCS_ECDSA_P256_SHA256, |_| {}),
    );
    let mut p = cert_pair(a, b);
    p.connect();
    assert!(established(&p.events_a) && established(&p.events_b));
}

/// An intermediate CA under `ca`, marked as a CA or (`ca_flag` false) not.
fn intermediate(ca: &Ca, name: &str, ca_flag: bool) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    if ca_flag {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Ca { cert, key }
}

#[test]
fn a_certificate_under_an_intermediate_ca_establishes_when_the_chain_is_sent() {
    let root = ca("Switchyard test root");
    let b = credentials(
        &root,
        &leaf(&root, "b.example", &PKCS_ECDSA_P256_SHA256, |_| {}),
    );
    // A's certificate comes from an intermediate; its PEM carries the intermediate after it.
    let sub = intermediate(&root, "Switchyard test intermediate", true);
    let (cert, key) = leaf(&sub, "a.example", &PKCS_ECDSA_P256_SHA256, |_| {});
    let chain = format!("{cert}{}", sub.cert.pem());
    let a = credentials(&root, &(chain, key.clone()));
    assert_eq!(a.cert_payloads().len(), 2);
    let mut p = cert_pair(a, Arc::clone(&b));
    p.connect();
    assert!(established(&p.events_a) && established(&p.events_b));
    assert_eq!(p.b.counters().cert_rejected, 0);

    // Without the intermediate, or with one that is not a CA, B cannot reach its CA.
    let not_ca = intermediate(&root, "Not a CA", false);
    let (cert_nc, key_nc) = leaf(&not_ca, "a.example", &PKCS_ECDSA_P256_SHA256, |_| {});
    for (cert, key) in [
        (cert, key),
        (format!("{cert_nc}{}", not_ca.cert.pem()), key_nc),
    ] {
        let mut p = cert_pair(credentials(&root, &(cert, key)), Arc::clone(&b));
        p.connect();
        assert_eq!(failure(&p.events_b), Some(Failure::AuthenticationFailed));
        assert_eq!(p.b.counters().cert_rejected, 1);
    }
}

/// A calendar time, `secs` after 1970 (UTC).
fn calendar(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Sets up an IKE SA with A's certificate valid from January 1st of `from` to January 1st
/// of `until`, both ends at calendar time `wall`: whether B took A's certificate.
fn accepted(from: i32, until: i32, wall: SystemTime) -> bool {
    let ca = ca("Switchyard test CA");
    let a = leaf(&ca, "a.example", &PKCS_ECDSA_P256_SHA256, |p| {
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
    });
    let b = leaf(&ca, "b.example", &PKCS_ECDSA_P256_SHA256, |_| {});
    let mut p = cert_pair(credentials(&ca, &a), credentials(&ca, &b));
    p.wall = wall;
    p.connect();
    let accepted = established(&p.events_b);
    assert_eq!(
        failure(&p.events_b),
        (!accepted).then_some(Failure::AuthenticationFailed)
    );
    assert_eq!(p.b.counters().cert_rejected, u64::from(!accepted));
    accepted
}

/// The engine checks validity periods at the calendar time its caller passes, whatever the
/// host's clock says: a certificate of 2040 is refused the day before and taken once its
/// period has begun.
#[test]
fn a_certificate_not_yet_valid_at_the_callers_time_is_refused() {
    assert!(!accepted(2040, 2041, calendar(2_208_902_400)), "2039-12-31");
    assert!(accepted(2040, 2041, calendar(2_224_713_600)), "2040-07-01");
}

/// And a certificate of 2001 is taken within its period and refused after it.
#[test]
fn a_certificate_expired_at_the_callers_time_is_refused() {
    assert!(accepted(2001, 2002, calendar(993_945_600)), "2001-07-01");
    assert!(!accepted(2001, 2002, calendar(1_025_481_600)), "2002-07-01");
}
