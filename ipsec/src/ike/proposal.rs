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
/// Diffie-Hellman transforms are not looked at: this is IKE_AUTH's selection, whose CHILD_SA
/// is keyed without a Diffie-Hellman exchange of its own (RFC 7296 section 1.2);
/// CREATE_CHILD_SA's is [`select_esp_for_ke`].
pub fn select_esp(offered: &[Proposal], ours: &[EspProposal]) -> Option<(u8, u32, ChildSuite)> {
    offered.iter().find_map(|o| {
        let spi = esp_spi(o)?;
        ours.iter()
            .find_map(|p| p.accept(o))
            .map(|suite| (o.number, spi, suite))
    })
}

/// The peer's SPI of an ESP proposal, unless reserved (RFC 4303 section 2.1).
fn esp_spi(offered: &Proposal) -> Option<u32> {
    let spi = u32::from_be_bytes(offered.spi.as_slice().try_into().ok()?);
    (spi > 255).then_some(spi)
}

/// The Diffie-Hellman transform chosen for a CHILD_SA made by CREATE_CHILD_SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pfs {
    /// The proposal has no Diffie-Hellman transform: no PFS, and none named in the answer.
    NotOffered,
    /// NONE (transform ID 0) was chosen among the proposal's: no PFS.
    Declined,
    /// PFS with this group.
    Group(DhGroup),
}

/// A CHILD_SA proposal chosen in CREATE_CHILD_SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspChoice {
    /// The offered proposal's number, which the answer carries (RFC 7296 section 3.3.1).
    pub number: u8,
    /// The peer's SPI.
    pub spi: u32,
    pub suite: ChildSuite,
    pub pfs: Pfs,
}

impl EspProposal {
    /// Whether a CHILD_SA made with this proposal may use `group` for PFS: one it names, or
    /// any group we implement when it names none (PFS the peer asks for takes nothing away
    /// from a configuration that does not ask for it).
    fn allows_group(&self, group: DhGroup) -> bool {
        self.dh.is_empty() || self.dh.contains(&group)
    }

    /// Whether it may do without PFS: only when it names no group. A configuration that
    /// names groups asks for PFS, and a peer must not talk it out of it (strongSwan's rule:
    /// a group in a proposal makes the key exchange mandatory).
    fn allows_no_pfs(&self) -> bool {
        self.dh.is_empty()
    }

    /// The first Diffie-Hellman transform of `offered` (in the peer's order) this proposal
    /// takes: a group it allows, or doing without (no DH transform at all, or NONE).
    fn first_acceptable_dh(&self, offered: &Proposal) -> Option<Pfs> {
        let mut dh = offered
            .transforms
            .iter()
            .filter(|t| t.kind == transform::DH)
            .peekable();
        if dh.peek().is_none() {
            return self.allows_no_pfs().then_some(Pfs::NotOffered);
        }
        dh.filter(|t| !t.unknown_attributes)
            .find_map(|t| match t.id {
                0 => self.allows_no_pfs().then_some(Pfs::Declined),
                id => DhGroup::from_id(id)
                    .filter(|&g| self.allows_group(g))
                    .map(Pfs::Group),
            })
    }
}

/// Responder selection in CREATE_CHILD_SA (RFC 7296 section 1.3.1), where the initiator's
/// KE payload, if any, guesses a Diffie-Hellman group: as [`select_ike_for_ke`], the first
/// offered proposal acceptable with that group (or, without a KE payload, acceptable
/// without PFS); else the first one acceptable with the first of its Diffie-Hellman
/// transforms we take. When that is a group other than the KE payload's, the caller asks
/// for it with INVALID_KE_PAYLOAD (section 1.3.1: a responder choosing a proposal in
/// another group, NONE aside, refuses the request and names the group it wants). A
/// proposal whose SPI is reserved is unacceptable, as in [`select_esp`].
pub fn select_esp_for_ke(
    offered: &[Proposal],
    ours: &[EspProposal],
    ke_group: Option<u16>,
) -> Option<EspChoice> {
    let acceptable = |pick_dh: &dyn Fn(&EspProposal, &Proposal) -> Option<Pfs>| {
        offered.iter().find_map(|o| {
            let spi = esp_spi(o)?;
            ours.iter().find_map(|p| {
                let suite = p.accept(o)?;
                let pfs = pick_dh(p, o)?;
                Some(EspChoice {
                    number: o.number,
                    spi,
                    suite,
                    pfs,
                })
            })
        })
    };
    let with_guess = acceptable(&|ours, o| {
        let has = |id: u16| {
            o.transforms
                .iter()
                .any(|t| t.kind == transform::DH && t.id == id && !t.unknown_attributes)
        };
        match ke_group {
            Some(id) => DhGroup::from_id(id)
                .filter(|&g| has(id) && ours.allows_group(g))
                .map(Pfs::Group),
            None if !o.transforms.iter().any(|t| t.kind == transform::DH) => {
                ours.allows_no_pfs().then_some(Pfs::NotOffered)
            }
            None => (has(0) && ours.allows_no_pfs()).then_some(Pfs::Declined),
        }
    });
    with_guess.or_else(|| acceptable(&|ours, o| ours.first_acceptable_dh(o)))
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

/// The proposal we sent under `number`: ours are numbered from 1 in the order offered.
fn sent_as<T>(offered: &[T], number: u8) -> Option<&T> {
    offered.get(usize::from(number).checked_sub(1)?)
}

/// Initiator side: the responder's answer must be a single proposal, narrowed to one
/// transform of each type, that the proposal we sent under its number accepts (RFC 7296
/// section 3.3.1: the number "MUST match the number on the proposal sent that was
/// accepted"). `offered` is what we sent, numbered from 1.
pub fn check_ike_answer(answer: &[Proposal], offered: &[IkeProposal]) -> Option<IkeSuite> {
    match answer {
        [one] if one_of_each(one) => sent_as(offered, one.number)?.accept(one),
        _ => None,
    }
}

/// [`check_ike_answer`] for a CHILD_SA: the peer's SPI and the suite.
pub fn check_esp_answer(answer: &[Proposal], offered: &[EspProposal]) -> Option<(u32, ChildSuite)> {
    match answer {
        [one] if one_of_each(one) => {
            let sent = sent_as(offered, one.number)?;
            select_esp(std::slice::from_ref(one), std::slice::from_ref(sent))
                .map(|(_, spi, s)| (spi, s))
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
        // Our answer check: the answer's number names the proposal we sent under it.
        assert_eq!(
            check_ike_answer(&[IkeProposal::from_suite(&suite).to_wire(1, &[])], &ours),
            Some(suite)
        );
        for number in [0, 2] {
            assert_eq!(
                check_ike_answer(
                    &[IkeProposal::from_suite(&suite).to_wire(number, &[])],
                    &ours
                ),
                None,
                "we sent one proposal, numbered 1"
            );
        }
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

    /// RFC 7296 1.3.1: CREATE_CHILD_SA's choice weighs the Diffie-Hellman transforms: the
    /// KE payload's group where a proposal offers it and we take it, else the first group of
    /// the first proposal we take (which the caller asks for).
    #[test]
    fn child_sa_selection_weighs_the_ke_payloads_group() {
        let offered = vec![
            EspProposal::parse("aes128gcm16-ecp256")
                .unwrap()
                .to_wire(1, 0x1000, true),
            EspProposal::parse("aes128gcm16-modp2048")
                .unwrap()
                .to_wire(2, 0x1000, true),
        ];
        let choice = |ours: &str, ke: Option<u16>| {
            select_esp_for_ke(&offered, &[EspProposal::parse(ours).unwrap()], ke)
                .map(|c| (c.number, c.pfs))
        };
        let modp2048 = Some((2, Pfs::Group(DhGroup::Modp2048)));
        for ke in [Some(19), Some(14), Some(31), None] {
            assert_eq!(choice("aes128gcm16-modp2048", ke), modp2048, "{ke:?}");
        }
        // Our proposal names no group: the peer's PFS is taken as offered.
        assert_eq!(choice("aes128gcm16", Some(14)), modp2048);
        let ecp256 = Some((1, Pfs::Group(DhGroup::Ecp256)));
        assert_eq!(choice("aes128gcm16", Some(19)), ecp256);
        assert_eq!(choice("aes128gcm16", None), ecp256);
        assert_eq!(choice("aes128gcm16-x25519", Some(31)), None);
        // A reserved SPI still makes a proposal unacceptable.
        let reserved = [EspProposal::parse("aes128gcm16")
            .unwrap()
            .to_wire(1, 7, false)];
        let ours = [EspProposal::parse("aes128gcm16").unwrap()];
        assert_eq!(select_esp_for_ke(&reserved, &ours, None), None);
    }

    /// RFC 7296 3.3.1: a CHILD_SA answer is checked against the proposal we sent under its
    /// number, and only that one.
    #[test]
    fn esp_answers_are_checked_against_the_proposal_of_their_number() {
        let sent = vec![
            EspProposal::parse("aes256gcm16").unwrap(),
            EspProposal::parse("aes128gcm16").unwrap(),
        ];
        let answer = |number| {
            [EspProposal::parse("aes128gcm16")
                .unwrap()
                .to_wire(number, 0x2000, false)]
        };
        assert!(check_esp_answer(&answer(2), &sent).is_some());
        for number in [0, 1, 3, 7] {
            assert_eq!(check_esp_answer(&answer(number), &sent), None, "#{number}");
        }
    }
}
