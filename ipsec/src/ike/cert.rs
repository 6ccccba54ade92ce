//! X.509 authentication with a given CA (RFC 7296 sections 3.6 to 3.8, RFC 7427 digital
//! signatures), as SD-EWAN's `authentication_method: pubkey` with `local_public_cert`,
//! `local_private_cert` and `shared_ca`.
//!
//! What is checked of the peer: its end-entity certificate (the first CERT payload, X.509
//! signature encoding) leads to the configured CA, directly or through intermediate CA
//! certificates it sends in further CERT payloads (each one a CA by its basic constraints,
//! at most [`MAX_INTERMEDIATES`]), and every certificate on the way is valid now; the IKE
//! identity it claims is in the certificate (an FQDN, e-mail or address identity among the
//! subjectAltNames, a DN identity equal to the subject); and its AUTH payload is its
//! signature, under that certificate's key, over the octets RFC 7296 section 2.15 names. No
//! revocation lists.
//!
//! What we send: our certificate in a CERT payload, then the intermediates that followed it in
//! `local_public_cert` (a PEM chain), a CERTREQ naming our CA (strongSwan sends its
//! certificate only when asked), and AUTH as an RFC 7427 digital signature (method 14:
//! ECDSA or RSA PKCS#1 v1.5 with SHA-256) when the peer announced SIGNATURE_HASH_ALGORITHMS
//! with SHA-256, else the classic method of the key (ECDSA P-256 with SHA-256, method 9;
//! RSA keys have no classic method we sign with, SHA-1 being off the table, so 14 anyway).
//! Keys: ECDSA P-256 or P-384 in PKCS#8, RSA in PKCS#8 or PKCS#1.

use std::time::SystemTime;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use x509_parser::prelude::*;

use super::wire::{id_type, Identification, Payload};

/// AUTH methods (RFC 7296 section 3.8, RFC 4754, RFC 7427).
pub mod auth_method {
    pub const RSA_SIGNATURE: u8 = 1;
    pub const SHARED_KEY: u8 = 2;
    pub const ECDSA_SHA256_P256: u8 = 9;
    pub const ECDSA_SHA384_P384: u8 = 10;
    pub const DIGITAL_SIGNATURE: u8 = 14;
}

/// CERT and CERTREQ encoding: X.509 Certificate - Signature.
pub const CERT_X509_SIGNATURE: u8 = 4;

/// RFC 7427 hash algorithm identifiers (SIGNATURE_HASH_ALGORITHMS).
pub mod hash_algorithm {
    pub const SHA2_256: u16 = 2;
    pub const SHA2_384: u16 = 3;
    pub const SHA2_512: u16 = 4;
}

/// The SIGNATURE_HASH_ALGORITHMS we announce.
pub const OUR_HASHES: [u16; 3] = [
    hash_algorithm::SHA2_256,
    hash_algorithm::SHA2_384,
    hash_algorithm::SHA2_512,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{0}: no PEM or DER data")]
    NoData(&'static str),
    #[error("{0}: {1}")]
    Parse(&'static str, String),
    #[error("the private key: not a PKCS#8 ECDSA P-256/P-384 or a PKCS#8/PKCS#1 RSA key")]
    Key,
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("signing failed")]
    Sign,
}

/// Why a peer's certificate authentication failed (logged, counted as an auth failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertError {
    #[error("no certificate (CERT payload, X.509 signature encoding)")]
    NoCertificate,
    #[error("the certificate does not parse")]
    Malformed,
    #[error("the certificate is not signed by the CA")]
    NotFromCa,
    #[error("the certificate or the CA is not valid now")]
    Expired,
    #[error("the identity is not in the certificate")]
    IdentityMismatch,
    #[error("AUTH method {0} not supported")]
    Method(u8),
    #[error("the signature does not verify")]
    BadSignature,
}

enum SigningKey {
    Ecdsa { pkcs8: Vec<u8>, p384: bool },
    Rsa(Box<RsaKeyPair>),
}

/// Most intermediate CA certificates between a peer's certificate and our CA.
pub const MAX_INTERMEDIATES: usize = 4;

/// One connection's certificate, key and CA.
pub struct Credentials {
    cert_der: Vec<u8>,
    /// Intermediate CA certificates sent after ours, in the order given.
    chain_der: Vec<Vec<u8>>,
    key: SigningKey,
    ca_der: Vec<u8>,
    /// SHA-1 of the CA's SubjectPublicKeyInfo: how CERTREQ names it.
    ca_keyid: Vec<u8>,
    /// Our certificate's subject, DER: our identity when none is configured.
    subject_der: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        self.cert_der == other.cert_der
            && self.ca_der == other.ca_der
            && self.public_key() == other.public_key()
    }
}

/// The DER blocks of `text`: PEM blocks with one of `tags`, or `text` itself when it is not
/// PEM (DER read from a file).
fn der_blocks(what: &'static str, text: &[u8], tags: &[&str]) -> Result<Vec<Vec<u8>>, CertError> {
    if !text.windows(10).any(|w| w == b"-----BEGIN") {
        return match text.is_empty() {
            true => Err(CertError::NoData(what)),
            false => Ok(vec![text.to_vec()]),
        };
    }
    let blocks = ::pem::parse_many(text).map_err(|e| CertError::Parse(what, e.to_string()))?;
    let out: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| tags.contains(&p.tag()))
        .map(|p| p.into_contents())
        .collect();
    match out.is_empty() {
        true => Err(CertError::NoData(what)),
        false => Ok(out),
    }
}

fn parse_cert<'a>(what: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>, CertError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CertError::Parse(what, e.to_string()))
}

impl Credentials {
    /// Reads our certificate, our private key and the CA's certificate (PEM, or DER).
    pub fn new(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, CertError> {
        let mut chain_der = der_blocks("the certificate", cert, &["CERTIFICATE"])?;
        let cert_der = chain_der.remove(0);
        for der in &chain_der {
            parse_cert("an intermediate certificate", der)?;
        }
        let ca_der = der_blocks("the CA", ca, &["CERTIFICATE"])?.remove(0);
        let key_der =
            der_blocks("the private key", key, &["PRIVATE KEY", "RSA PRIVATE KEY"])?.remove(0);
        let rng = SystemRandom::new();
        let key =
            if EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &key_der, &rng)
                .is_ok()
            {
                SigningKey::Ecdsa {
                    pkcs8: key_der,
                    p384: false,
                }
            } else if EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                &key_der,
                &rng,
            )
            .is_ok()
            {
                SigningKey::Ecdsa {
                    pkcs8: key_der,
                    p384: true,
                }
            } else if let Ok(k) =
                RsaKeyPair::from_pkcs8(&key_der).or_else(|_| RsaKeyPair::from_der(&key_der))
            {
                SigningKey::Rsa(Box::new(k))
            } else {
                return Err(CertError::Key);
            };
        let parsed = parse_cert("the certificate", &cert_der)?;
        let subject_der = parsed.subject().as_raw().to_vec();
        let cert_key = parsed.public_key().subject_public_key.data.to_vec();
        let ca = parse_cert("the CA", &ca_der)?;
        let ca_keyid =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, ca.public_key().raw)
                .as_ref()
                .to_vec();
        let out = Credentials {
            cert_der,
            chain_der,
            key,
            ca_der,
            ca_keyid,
            subject_der,
            rng,
        };
        if out.public_key() != cert_key {
            return Err(CertError::KeyMismatch);
        }
        Ok(out)
    }

    fn public_key(&self) -> Vec<u8> {
        match &self.key {
            SigningKey::Ecdsa { pkcs8, p384 } => {
                let alg = if *p384 {
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING
                } else {
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING
                };
                EcdsaKeyPair::from_pkcs8(alg, pkcs8, &self.rng)
                    .map(|k| k.public_key().as_ref().to_vec())
                    .unwrap_or_default()
            }
            SigningKey::Rsa(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// Our certificate's subject as an ASN.1 DN identity.
    pub fn subject_identity(&self) -> Identification {
        Identification::new(id_type::DER_ASN1_DN, self.subject_der.clone())
    }

    /// The CERT payloads: our certificate, then the intermediates.
    pub fn cert_payloads(&self) -> Vec<Payload> {
        std::iter::once(&self.cert_der)
            .chain(&self.chain_der)
            .map(|der| {
                let mut body = vec![CERT_X509_SIGNATURE];
                body.extend_from_slice(der);
                Payload::Other {
                    kind: super::wire::payload_type::CERT,
                    body,
                }
            })
            .collect()
    }

    /// The CERTREQ payload naming our CA.
    pub fn certreq_payload(&self) -> Payload {
        let mut body = vec![CERT_X509_SIGNATURE];
        body.extend_from_slice(&self.ca_keyid);
        Payload::Other {
            kind: super::wire::payload_type::CERTREQ,
            body,
        }
    }

    /// Our AUTH payload: a signature over `octets`, as the peer's announced hashes allow.
    pub fn sign(&self, octets: &[u8], peer_hashes: &[u16]) -> Result<Payload, CertError> {
        let digital = peer_hashes.contains(&hash_algorithm::SHA2_256);
        let (method, data) = match &self.key {
            SigningKey::Ecdsa { pkcs8, p384 } => {
                let (alg, oid_last, method) = match (digital, p384) {
                    (true, false) => (&signature::ECDSA_P256_SHA256_ASN1_SIGNING, 2, 14),
                    (true, true) => (&signature::ECDSA_P384_SHA384_ASN1_SIGNING, 3, 14),
                    (false, false) => (
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        0,
                        auth_method::ECDSA_SHA256_P256,
                    ),
                    (false, true) => (
                        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                        0,
                        auth_method::ECDSA_SHA384_P384,
                    ),
                };
                let key =
                    EcdsaKeyPair::from_pkcs8(alg, pkcs8, &self.rng).map_err(|_| CertError::Sign)?;
                let sig = key.sign(&self.rng, octets).map_err(|_| CertError::Sign)?;
                let mut data = Vec::new();
                if method == auth_method::DIGITAL_SIGNATURE {
                    // ecdsa-with-SHA256 / -SHA384 (RFC 7427 appendix A.3), no parameters.
                    let algorithm = [
                        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, oid_last,
                    ];
                    data.push(algorithm.len() as u8);
                    data.extend_from_slice(&algorithm);
                }
                data.extend_from_slice(sig.as_ref());
                (method, data)
            }
            SigningKey::Rsa(key) => {
                let mut sig = vec![0u8; key.public().modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &self.rng, octets, &mut sig)
                    .map_err(|_| CertError::Sign)?;
                // sha256WithRSAEncryption with NULL parameters (RFC 7427 appendix A.1).
                let algorithm = [
                    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
                    0x05, 0x00,
                ];
                let mut data = vec![algorithm.len() as u8];
                data.extend_from_slice(&algorithm);
                data.extend_from_slice(&sig);
                (auth_method::DIGITAL_SIGNATURE, data)
            }
        };
        Ok(Payload::Auth { method, data })
    }

    /// Checks the peer: its certificate (first CERT payload of `payloads`, the others its
    /// intermediates) against our CA at `now`, its identity `id` against the certificate,
    /// and its AUTH (`method`, `data`) as a signature over `octets`.
    pub fn verify_peer(
        &self,
        payloads: &[Payload],
        id: &Identification,
        method: u8,
        data: &[u8],
        octets: &[u8],
        now: SystemTime,
    ) -> Result<(), PeerCertError> {
        let mut certs = payloads.iter().filter_map(|p| match p {
            Payload::Other { kind, body }
                if *kind == super::wire::payload_type::CERT
                    && body.first() == Some(&CERT_X509_SIGNATURE) =>
            {
                Some(&body[1..])
            }
            _ => None,
        });
        let der = certs.next().ok_or(PeerCertError::NoCertificate)?;
        let parse = |der| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|_| PeerCertError::Malformed)
        };
        let cert = parse(der)?;
        let intermediates = certs
            .take(MAX_INTERMEDIATES)
            .map(parse)
            .collect::<Result<Vec<_>, _>>()?;
        let ca = parse(&self.ca_der)?;
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let at = ASN1Time::from_timestamp(secs).map_err(|_| PeerCertError::Expired)?;
        // Up the chain from the peer's certificate, each step to an intermediate CA that
        // signed the last one, until our CA signed one; all valid now.
        let mut current = &cert;
        let mut steps = 0;
        while !signed_by(current, &ca) {
            steps += 1;
            current = intermediates
                .iter()
                .find(|i| is_ca(i) && signed_by(current, i))
                .filter(|_| steps <= MAX_INTERMEDIATES)
                .ok_or(PeerCertError::NotFromCa)?;
            if !current.validity().is_valid_at(at) {
                return Err(PeerCertError::Expired);
            }
        }
        if !cert.validity().is_valid_at(at) || !ca.validity().is_valid_at(at) {
            return Err(PeerCertError::Expired);
        }
        if !identity_in(&cert, id) {
            return Err(PeerCertError::IdentityMismatch);
        }
        verify_signature(&cert, method, data, octets)
    }
}

/// Whether `issuer` issued and signed `cert`.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Whether `cert` may sign certificates (basic constraints with cA set).
fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Whether the IKE identity `id` is one the certificate vouches for.
fn identity_in(cert: &X509Certificate<'_>, id: &Identification) -> bool {
    if id.kind == id_type::DER_ASN1_DN {
        return super::dn::equal(cert.subject().as_raw(), &id.data);
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|name| match (id.kind, name) {
            (id_type::FQDN, GeneralName::DNSName(n)) => n.as_bytes().eq_ignore_ascii_case(&id.data),
            (id_type::RFC822_ADDR, GeneralName::RFC822Name(n)) => {
                n.as_bytes().eq_ignore_ascii_case(&id.data)
            }
            (id_type::IPV4_ADDR | id_type::IPV6_ADDR, GeneralName::IPAddress(a)) => {
                *a == id.data.as_slice()
            }
            _ => false,
        })
}

/// The OIDs of RFC 7427's AlgorithmIdentifiers we verify, as their DER content bytes.
const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
const RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];

/// The OID inside an AlgorithmIdentifier (SEQUENCE { OID, optional parameters }).
fn algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (&0x30, rest) = der.split_first()? else {
        return None;
    };
    let (&len, body) = rest.split_first()?;
    if len >= 0x80 || usize::from(len) != body.len() {
        return None;
    }
    let (&0x06, rest) = body.split_first()? else {
        return None;
    };
    let (&oid_len, rest) = rest.split_first()?;
    rest.get(..usize::from(oid_len))
}

fn verify_signature(
    cert: &X509Certificate<'_>,
    method: u8,
    data: &[u8],
    octets: &[u8],
) -> Result<(), PeerCertError> {
    let key = cert.public_key().subject_public_key.data.as_ref();
    let algorithm: &dyn signature::VerificationAlgorithm;
    let sig: &[u8];
    match method {
        auth_method::DIGITAL_SIGNATURE => {
            let len = usize::from(*data.first().ok_or(PeerCertError::BadSignature)?);
            let identifier = data.get(1..1 + len).ok_or(PeerCertError::BadSignature)?;
            sig = &data[1 + len..];
            let oid = algorithm_oid(identifier).ok_or(PeerCertError::BadSignature)?;
            algorithm = match oid {
                o if o == ECDSA_SHA256 => match key.len() {
                    97 => &signature::ECDSA_P384_SHA256_ASN1,
                    _ => &signature::ECDSA_P256_SHA256_ASN1,
                },
                o if o == ECDSA_SHA384 => match key.len() {
                    97 => &signature::ECDSA_P384_SHA384_ASN1,
                    _ => &signature::ECDSA_P256_SHA384_ASN1,
                },
                o if o == ECDSA_SHA512 => return Err(PeerCertError::Method(method)),
                o if o == RSA_SHA256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                o if o == RSA_SHA384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                o if o == RSA_SHA512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                _ => return Err(PeerCertError::Method(method)),
            };
        }
        auth_method::ECDSA_SHA256_P256 => {
            algorithm = &signature::ECDSA_P256_SHA256_FIXED;
            sig = data;
        }
        auth_method::ECDSA_SHA384_P384 => {
            algorithm = &signature::ECDSA_P384_SHA384_FIXED;
            sig = data;
        }
        auth_method::RSA_SIGNATURE => {
            algorithm = &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY;
            sig = data;
        }
        other => return Err(PeerCertError::Method(other)),
    }
    signature::UnparsedPublicKey::new(algorithm, key)
        .verify(octets, sig)
        .map_err(|_| PeerCertError::BadSignature)
}
