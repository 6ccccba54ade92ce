//! Proposals: what a configuration offers and accepts, their wire transforms, the
//! strongSwan-style strings SD-EWAN uses ("aes128gcm16-prfsha256-modp2048"), and selection.

use super::dh::DhGroup;
use super::wire::{protocol, transform, Proposal, Transform};
use crate::crypto::{AeadAlgorithm, CbcAlgorithm, MacAlgorithm, PrfAlgorithm};
use crate::esp::EspSuite;

/// Encryption transforms (IANA "Transform Type 1").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encryption {
    AesCbc128,
    AesCbc256,
    AesGcm16_128,
    AesGcm16_256,
}

impl Encryption {
    const ENCR_AES_CBC: u16 = 12;
    const ENCR_AES_GCM_16: u16 = 20;

    pub fn transform(self) -> Transform {
        let (id, bits) = match self {
            Self::AesCbc128 => (Self::ENCR_AES_CBC, 128),
            Self::AesCbc256 => (Self::ENCR_AES_CBC, 256),
            Self::AesGcm16_128 => (Self::ENCR_AES_GCM_16, 128),
            Self::AesGcm16_256 => (Self::ENCR_AES_GCM_16, 256),
        };
        Transform {
            kind: transform::ENCR,
            id,
            key_len: Some(bits),
            unknown_attributes: false,
        }
    }

    fn from_transform(t: &Transform) -> Option<Self> {
        match (t.id, t.key_len) {
            (Self::ENCR_AES_CBC, Some(128)) => Some(Self::AesCbc128),
            (Self::ENCR_AES_CBC, Some(256)) => Some(Self::AesCbc256),
            (Self::ENCR_AES_GCM_16, Some(128)) => Some(Self::AesGcm16_128),
            (Self::ENCR_AES_GCM_16, Some(256)) => Some(Self::AesGcm16_256),
            _ => None,
        }
    }

    pub fn is_aead(self) -> bool {
        matches!(self, Self::AesGcm16_128 | Self::AesGcm16_256)
    }

    pub fn aead(self) -> Option<AeadAlgorithm> {
        match self {
            Self::AesGcm16_128 => Some(AeadAlgorithm::Aes128Gcm16),
            Self::AesGcm16_256 => Some(AeadAlgorithm::Aes256Gcm16),
            _ => None,
        }
    }

    pub fn cbc(self) -> Option<CbcAlgorithm> {
        match self {
            Self::AesCbc128 => Some(CbcAlgorithm::Aes128Cbc),
            Self::AesCbc256 => Some(CbcAlgorithm::Aes256Cbc),
            _ => None,
        }
    }

    /// Key material taken for this transform (GCM: key plus 4-byte salt, RFC 4106/5282).
    pub fn keymat_len(self) -> usize {
        match self {
            Self::AesCbc128 => 16,
            Self::AesCbc256 => 32,
            Self::AesGcm16_128 => 20,
            Self::AesGcm16_256 => 36,
        }
    }
}

fn prf_id(prf: PrfAlgorithm) -> u16 {
    match prf {
        PrfAlgorithm::HmacSha256 => 5,
        PrfAlgorithm::HmacSha384 => 6,
        PrfAlgorithm::HmacSha512 => 7,
    }
}

fn prf_from_id(id: u16) -> Option<PrfAlgorithm> {
    match id {
        5 => Some(PrfAlgorithm::HmacSha256),
        6 => Some(PrfAlgorithm::HmacSha384),
        7 => Some(PrfAlgorithm::HmacSha512),
        _ => None,
    }
}

fn integ_id(mac: MacAlgorithm) -> u16 {
    match mac {
        MacAlgorithm::HmacSha256_128 => 12,
        MacAlgorithm::HmacSha384_192 => 13,
        MacAlgorithm::HmacSha512_256 => 14,
    }
}

fn integ_from_id(id: u16) -> Option<MacAlgorithm> {
    match id {
        12 => Some(MacAlgorithm::HmacSha256_128),
        13 => Some(MacAlgorithm::HmacSha384_192),
        14 => Some(MacAlgorithm::HmacSha512_256),
        _ => None,
    }
}

/// Why a proposal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("unknown algorithm {0:?}")]
    Unknown(String),
    #[error("proposal {0:?} lacks {1}")]
    Incomplete(String, &'static str),
    #[error("proposal {0:?} mixes AEAD and non-AEAD ciphers with integrity")]
    Inconsistent(String),
}

/// An IKE SA proposal: acceptable algorithms of each type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeProposal {
    pub encryption: Vec<Encryption>,
    pub prf: Vec<PrfAlgorithm>,
    /// Empty for AEAD-only proposals.
    pub integrity: Vec<MacAlgorithm>,
    pub dh: Vec<DhGroup>,
}

/// A CHILD_SA (ESP) proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspProposal {
    pub encryption: Vec<Encryption>,
    pub integrity: Vec<MacAlgorithm>,
    /// PFS groups for CREATE_CHILD_SA; not used in IKE_AUTH (RFC 7296 section 1.2).
    pub dh: Vec<DhGroup>,
    /// Acceptable ESN settings, preferred first.
    pub esn: Vec<bool>,
}

/// The algorithms chosen for an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeSuite {
    pub encryption: Encryption,
    pub prf: PrfAlgorithm,
    pub integrity: Option<MacAlgorithm>,
    pub dh: DhGroup,
}

/// The algorithms chosen for a CHILD_SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildSuite {
    pub encryption: Encryption,
    pub integrity: Option<MacAlgorithm>,
    pub esn: bool,
}

impl ChildSuite {
    pub fn esp_suite(&self) -> Option<EspSuite> {
        match (
            self.encryption.aead(),
            self.encryption.cbc(),
            self.integrity,
        ) {
            (Some(a), _, None) => Some(EspSuite::Gcm(a)),
            (_, Some(c), Some(m)) => Some(EspSuite::CbcHmac(c, m)),
            _ => None,
        }
    }
}

struct Tokens {
    encryption: Vec<Encryption>,
    prf: Vec<PrfAlgorithm>,
    integrity: Vec<MacAlgorithm>,
    /// PRFs implied by integrity tokens (strongSwan's rule when no prf token is given).
    implied_prf: Vec<PrfAlgorithm>,
    dh: Vec<DhGroup>,
    esn: Vec<bool>,
}

fn tokens(text: &str) -> Result<Tokens, ProposalError> {
    let mut t = Tokens {
        encryption: Vec::new(),
        prf: Vec::new(),
        integrity: Vec::new(),
        implied_prf: Vec::new(),
        dh: Vec::new(),
        esn: Vec::new(),
    };
    for token in text
        .trim()
        .split('-')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let lower = token.to_ascii_lowercase();
        match lower.as_str() {
            "aes128" | "aes128cbc" => t.encryption.push(Encryption::AesCbc128),
            "aes256" | "aes256cbc" => t.encryption.push(Encryption::AesCbc256),
            "aes128gcm16" | "aes128gcm128" | "aes128gcm" => {
                t.encryption.push(Encryption::AesGcm16_128)
            }
            "aes256gcm16" | "aes256gcm128" | "aes256gcm" => {
                t.encryption.push(Encryption::AesGcm16_256)
            }
            "sha256" | "sha2_256" => {
                t.integrity.push(MacAlgorithm::HmacSha256_128);
                t.implied_prf.push(PrfAlgorithm::HmacSha256);
            }
            "sha384" | "sha2_384" => {
                t.integrity.push(MacAlgorithm::HmacSha384_192);
                t.implied_prf.push(PrfAlgorithm::HmacSha384);
            }
            "sha512" | "sha2_512" => {
                t.integrity.push(MacAlgorithm::HmacSha512_256);
                t.implied_prf.push(PrfAlgorithm::HmacSha512);
            }
            "prfsha256" => t.prf.push(PrfAlgorithm::HmacSha256),
            "prfsha384" => t.prf.push(PrfAlgorithm::HmacSha384),
            "prfsha512" => t.prf.push(PrfAlgorithm::HmacSha512),
            "modp2048" => t.dh.push(DhGroup::Modp2048),
            "ecp256" => t.dh.push(DhGroup::Ecp256),
            "curve25519" | "x25519" => t.dh.push(DhGroup::Curve25519),
            "esn" => t.esn.push(true),
            "noesn" => t.esn.push(false),
            _ => return Err(ProposalError::Unknown(token.to_string())),
        }
    }
    if t.encryption.is_empty() {
        return Err(ProposalError::Incomplete(
            text.to_string(),
            "an encryption algorithm",
        ));
    }
    let aead = t.encryption.iter().any(|e| e.is_aead());
    let cbc = t.encryption.iter().any(|e| !e.is_aead());
    if aead && cbc {
        return Err(ProposalError::Inconsistent(text.to_string()));
    }
    Ok(t)
}

impl IkeProposal {
    /// Parses "aes128gcm16-prfsha256-modp2048", "aes256-sha256-ecp256", ...
    pub fn parse(text: &str) -> Result<Self, ProposalError> {
        let t = tokens(text)?;
        let aead = t.encryption[0].is_aead();
        let prf = if t.prf.is_empty() {
            t.implied_prf
        } else {
            t.prf
        };
        if prf.is_empty() {
            return Err(ProposalError::Incomplete(text.to_string(), "a PRF"));
        }
        if !aead && t.integrity.is_empty() {
            return Err(ProposalError::Incomplete(
                text.to_string(),
                "an integrity algorithm",
            ));
        }
        if aead && !t.integrity.is_empty() {
            return Err(ProposalError::Inconsistent(text.to_string()));
        }
        if t.dh.is_empty() {
            return Err(ProposalError::Incomplete(text.to_string(), "a DH group"));
        }
        Ok(Self {
            encryption: t.encryption,
            prf,
            integrity: t.integrity,
            dh: t.dh,
        })
    }

    pub fn to_wire(&self, number: u8, spi: &[u8]) -> Proposal {
        let mut transforms: Vec<Transform> =
            self.encryption.iter().map(|e| e.transform()).collect();
        transforms.extend(self.prf.iter().map(|&p| Transform {
            kind: transform::PRF,
            id: prf_id(p),
            key_len: None,
            unknown_attributes: false,
        }));
        transforms.extend(self.integrity.iter().map(|&m| Transform {
            kind: transform::INTEG,
            id: integ_id(m),
            key_len: None,
            unknown_attributes: false,
        }));
        transforms.extend(self.dh.iter().map(|&g| Transform {
            kind: transform::DH,
            id: g.id(),
            key_len: None,
            unknown_attributes: false,
        }));
        Proposal {
            number,
            protocol: protocol::IKE,
            spi: spi.to_vec(),
            transforms,
        }
    }

    /// The one-of-each proposal that describes a chosen suite (the responder's answer).
    pub fn from_suite(suite: &IkeSuite) -> Self {
        Self {
            encryption: vec![suite.encryption],
            prf: vec![suite.prf],
            integrity: suite.integrity.into_iter().collect(),
            dh: vec![suite.dh],
        }
    }

    /// Picks from `offered` (one wire proposal) what this proposal accepts.
    fn accept(&self, offered: &Proposal) -> Option<IkeSuite> {
        if offered.protocol != protocol::IKE {
            return None;
        }
        let encryption = pick(offered, transform::ENCR, |t| {
            Encryption::from_transform(t).filter(|e| self.encryption.contains(e))
        })?;
        let prf = pick(offered, transform::PRF, |t| {
            prf_from_id(t.id).filter(|p| self.prf.contains(p))
        })?;
        let integrity = if encryption.is_aead() {
            // An AEAD proposal must not carry integrity other than NONE (id 0).
            if offered
                .transforms
                .iter()
                .any(|t| t.kind == transform::INTEG && t.id != 0)
            {
                return None;
            }
            None
        } else {
            Some(pick(offered, transform::INTEG, |t| {
                integ_from_id(t.id).filter(|m| self.integrity.contains(m))
            })?)
        };
        let dh = pick(offered, transform::DH, |t| {
            DhGroup::from_id(t.id).filter(|g| self.dh.contains(g))
        })?;
        Some(IkeSuite {
            encryption,
            prf,
            integrity,
            dh,
        })
    }
}

impl EspProposal {
    /// Parses "aes128gcm16", "aes256-sha512", "aes128gcm16-modp2048-esn", ...
    pub fn parse(text: &str) -> Result<Self, ProposalError> {
        let t = tokens(text)?;
        let aead = t.encryption[0].is_aead();
        if !t.prf.is_empty() {
            return Err(ProposalError::Inconsistent(text.to_string()));
        }
        if !aead && t.integrity.is_empty() {
            return Err(ProposalError::Incomplete(
                text.to_string(),
                "an integrity algorithm",
            ));
        }
        if aead && !t.integrity.is_empty() {
            return Err(ProposalError::Inconsistent(text.to_string()));
        }
        Ok(Self {
            encryption: t.encryption,
            integrity: t.integrity,
            dh: t.dh,
            esn: if t.esn.is_empty() { vec![false] } else { t.esn },
        })
    }

    /// The wire proposal; `with_dh` adds the PFS groups (CREATE_CHILD_SA only).
    pub fn to_wire(&self, number: u8, spi: u32, with_dh: bool) -> Proposal {
        let mut transforms: Vec<Transform> =
            self.encryption.iter().map(|e| e.transform()).collect();
        transforms.extend(self.integrity.iter().map(|&m| Transform {
            kind: transform::INTEG,
            id: integ_id(m),
            key_len: None,
            unknown_attributes: false,
        }));
        if with_dh {
            transforms.extend(self.dh.iter().map(|&g| Transform {
                kind: transform::DH,
                id: g.id(),
                key_len: None,
                unknown_attributes: false,
            }));
        }
        transforms.extend(self.esn.iter().map(|&e| Transform {
            kind: transform::ESN,
            id: u16::from(e),
            key_len: None,
            unknown_attributes: false,
        }));
        Proposal {
            number,
            protocol: protocol::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms,
        }
    }

    pub fn from_suite(suite: &ChildSuite) -> Self {
        Self {
            encryption: vec![suite.encryption],
            integrity: suite.integrity.into_iter().collect(),
            dh: Vec::new(),
            esn: vec![suite.esn],
        }
    }

    fn accept(&self, offered: &Proposal) -> Option<ChildSuite> {
        if offered.protocol != protocol::ESP || offered.spi.len() != 4 {
            return None;
        }
        let encryption = pick(offered, transform::ENCR, |t| {
            Encryption::from_transform(t).filter(|e| self.encryption.contains(e))
        })?;
        let integrity = if encryption.is_aead() {
            if offered
                .transforms
                .iter()
                .any(|t| t.kind == transform::INTEG && t.id != 0)
            {
                return None;
            }
            None
        } else {
            Some(pick(offered, transform::INTEG, |t| {
                integ_from_id(t.id).filter(|m| self.integrity.contains(m))
            })?)
        };
        // No ESN transform means "no ESN" (RFC 7296 section 3.3.2 makes it mandatory for
        // ESP, but be lenient with a missing one).
        let esn = if offered.transforms.iter().any(|t| t.kind == transform::ESN) {
            pick(offered, transform::ESN, |t| match t.id {
                0 => Some(false).filter(|e| self.esn.contains(e)),
                1 => Some(true).filter(|e| self.esn.contains(e)),
                _ => None,
            })?
        } else if self.esn.contains(&false) {
            false
        } else {
            return None;
        };
        Some(ChildSuite {
            encryption,
            integrity,
            esn,
        })
    }
}

/// The first transform of `kind` in the offer that `accept` maps to a value; one with
/// attributes we do not understand is unacceptable (RFC 7296 section 3.3.6). Every transform
/// type this implementation does not know makes the proposal unacceptable.
fn pick<T>(offered: &Proposal, kind: u8, accept: impl Fn(&Transform) -> Option<T>) -> Option<T> {
    if offered.transforms.iter().any(|t| {
        !matches!(
            t.kind,
            transform::ENCR | transform::PRF | transform::INTEG | transform::DH | transform::ESN
        )
    }) {
        return None;
    }
    offered
        .transforms
        .iter()
        .filter(|t| t.kind == kind && !t.unknown_attributes)
        .find_map(accept)
}

/// Responder selection: the first offered proposal (in the initiator's order) that one of
/// ours accepts, with its proposal number.
pub fn select_ike(offered: &[Proposal], ours: &[IkeProposal]) -> Option<(u8, IkeSuite)> {
    offered.iter().find_map(|o| {
        ours.iter()
            .find_map(|p| p.accept(o))
            .map(|suite| (o.number, suite))
    })
}

/// Responder selection in IKE_SA_INIT, where the initiator has guessed a Diffie-Hellman
/// group with its KE payload: the first offered proposal acceptable with that group, else
/// [`select_ike`]'s choice, whose group then differs and is asked for with
/// INVALID_KE_PAYLOAD (RFC 7296 sections 1.2 and 2.7). A guess that can be taken costs no
/// extra round trip.
pub fn select_ike_for_ke(
    offered: &[Proposal],
    ours: &[IkeProposal],
    ke_group: u16,
) -> Option<(u8, IkeSuite)> {
    let with_guess = offered.iter().find_map(|o| {
        let guessed = o
            .transforms
            .iter()
            .any(|t| t.kind == transform::DH && t.id == ke_group);
        if !guessed {
            return None;
        }
        let only_guess = Proposal {
            transforms: o
                .transforms
                .iter()
                .filter(|t| t.kind != transform::DH || t.id == ke_group)
                .copied()
                .collect(),
            ..o.clone()
        };
        ours.iter()
            .find_map(|p| p.accept(&only_guess))
            .map(|suite| (o.number, suite))
    });
    with_guess.or_else(|| select_ike(offered, ours))
}

/// Responder selection for a CHILD_SA: `(proposal number, peer's SPI, suite)`. A proposal
/// whose SPI is reserved (0 to 255, RFC 4303 section 2.1: never on the wire) is unacceptable.
pub fn select_esp(offered: &[Proposal], ours: &[EspProposal]) -> Option<(u8, u32, ChildSuite)> {
    offered.iter().find_map(|o| {
        let spi = u32::from_be_bytes(o.spi.as_slice().try_into().ok()?);
        if spi <= 255 {
            return None;
        }
        ours.iter()
            .find_map(|p| p.accept(o))
            .map(|suite| (o.number, spi, suite))
    })
}

/// Whether an accepted proposal names one transform of each type, as the responder's
/// answer must (RFC 7296 section 3.3.6: it picks one of each, never offers a choice back).
fn one_of_each(answer: &Proposal) -> bool {
    answer
        .transforms
        .iter()
        .enumerate()
        .all(|(i, t)| answer.transforms[..i].iter().all(|u| u.kind != t.kind))
}

/// Initiator side: the responder's single proposal must be one we offered, narrowed to one
/// transform of each type.
pub fn check_ike_answer(answer: &[Proposal], ours: &[IkeProposal]) -> Option<IkeSuite> {
    match answer {
        [one] if one_of_each(one) => ours.iter().find_map(|p| p.accept(one)),
        _ => None,
    }
}

pub fn check_esp_answer(answer: &[Proposal], ours: &[EspProposal]) -> Option<(u32, ChildSuite)> {
    match answer {
        [one] if one_of_each(one) => {
            select_esp(std::slice::from_ref(one), ours).map(|(_, spi, s)| (spi, s))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strongswan_style_strings() {
        let p = IkeProposal::parse("aes128gcm16-prfsha256-modp2048").unwrap();
        assert_eq!(p.encryption, vec![Encryption::AesGcm16_128]);
        assert_eq!(p.prf, vec![PrfAlgorithm::HmacSha256]);
        assert!(p.integrity.is_empty());
        assert_eq!(p.dh, vec![DhGroup::Modp2048]);

        let p = IkeProposal::parse("aes256-sha512-ecp256-x25519").unwrap();
        assert_eq!(p.integrity, vec![MacAlgorithm::HmacSha512_256]);
        assert_eq!(p.prf, vec![PrfAlgorithm::HmacSha512], "implied by sha512");
        assert_eq!(p.dh, vec![DhGroup::Ecp256, DhGroup::Curve25519]);

        let e = EspProposal::parse("aes256gcm16-esn").unwrap();
        assert_eq!(e.esn, vec![true]);
        let e = EspProposal::parse("aes128-sha256").unwrap();
        assert_eq!(e.esn, vec![false]);

        assert!(matches!(
            IkeProposal::parse("3des-sha1-modp1024"),
            Err(ProposalError::Unknown(_))
        ));
        assert!(matches!(
            IkeProposal::parse("aes128-modp2048"),
            Err(ProposalError::Incomplete(..))
        ));
        assert!(matches!(
            IkeProposal::parse("aes128gcm16-sha256-modp2048"),
            Err(ProposalError::Inconsistent(_))
        ));
        assert!(matches!(
            IkeProposal::parse("aes128gcm16-prfsha256"),
            Err(ProposalError::Incomplete(..))
        ));
    }

    #[test]
    fn selection_follows_the_initiator_order() {
        let ours = vec![IkeProposal::parse("aes256-aes128-sha256-modp2048-x25519").unwrap()];
        let offered = vec![
            IkeProposal::parse("aes128gcm16-prfsha256-x25519")
                .unwrap()
                .to_wire(1, &[]),
            IkeProposal::parse("aes128-sha256-x25519-modp2048")
                .unwrap()
                .to_wire(2, &[]),
        ];
        let (number, suite) = select_ike(&offered, &ours).unwrap();
        assert_eq!(number, 2);
        assert_eq!(suite.encryption, Encryption::AesCbc128);
        assert_eq!(suite.dh, DhGroup::Curve25519);
        assert_eq!(
            check_ike_answer(&[IkeProposal::from_suite(&suite).to_wire(2, &[])], &ours),
            Some(suite)
        );
        let none = vec![IkeProposal::parse("aes128gcm16-prfsha384-ecp256").unwrap()];
        assert_eq!(select_ike(&offered, &none), None);
        // An answer that offers a choice back is no answer (RFC 7296 section 3.3.6).
        assert_eq!(check_ike_answer(&offered[1..], &ours), None);

        let esp_ours = vec![EspProposal::parse("aes128gcm16-esn-noesn").unwrap()];
        let esp_offer = vec![EspProposal::parse("aes128gcm16-noesn")
            .unwrap()
            .to_wire(1, 0xabcd, false)];
        let (_, spi, child) = select_esp(&esp_offer, &esp_ours).unwrap();
        assert_eq!((spi, child.esn), (0xabcd, false));
        assert_eq!(
            child.esp_suite(),
            Some(EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16))
        );
    }
}
