//! The SD-EWAN resources (`batch.sdewan.akraino.org/v1alpha1`): `IpsecProposal`, `IpsecSite`
//! and `IpsecHost` with their connection lists, as plain structs whose JSON names match the
//! SD-EWAN CRDs, so the agent can read the same custom resources. Conversion into
//! [`PeerConfig`]s for the IKE engine lives here too.

use crate::crypto::SecretBytes;
use crate::esp::Lifetime;
use crate::ike::cp::any_selector;
use crate::ike::pool::{PoolConfig, PoolError};
use crate::ike::proposal::{EspProposal, IkeProposal, ProposalError};
use crate::ike::wire::TrafficSelector;
use crate::ike::{Credentials, Identity, PeerConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The label naming which SD-EWAN CNF a resource is for.
pub const PURPOSE_LABEL: &str = "sdewanPurpose";

/// The part of `metadata` Switchyard uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// `SdewanStatus` (common_types.go).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdewanStatus {
    #[serde(rename = "appliedVersion", default)]
    pub applied_version: String,
    #[serde(rename = "appliedTime", default)]
    pub applied_time: Option<String>,
    #[serde(rename = "inSync", default)]
    pub in_sync: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecProposalSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub encryption_algorithm: String,
    pub hash_algorithm: String,
    pub dh_group: String,
}

impl IpsecProposalSpec {
    /// The strongSwan-style string SD-EWAN renders: "aes128-sha256-modp2048".
    pub fn proposal_string(&self) -> String {
        [
            &self.encryption_algorithm,
            &self.hash_algorithm,
            &self.dh_group,
        ]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpsecProposal {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IpsecProposalSpec,
    #[serde(default)]
    pub status: SdewanStatus,
}

/// A connection of an `IpsecSite` (site-to-site: local and remote subnets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteConnection {
    pub name: String,
    pub conn_type: String,
    pub mode: String,
    pub local_subnet: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_updown: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_firewall: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_subnet: String,
    /// The peer's virtual IP: an address pool (a prefix, `first-last`, an address, or a
    /// comma-separated list of those, one per family) the peer gets its address from when it
    /// asks (strongSwan's `rightsourceip`, which the SD-EWAN CNF renders this into).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_sourceip: String,
    /// DNS servers handed out with a `remote_sourceip` address (comma-separated). Not in the
    /// SD-EWAN CRDs: Switchyard's addition, strongSwan's `rightdns`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_dns: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_updown: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_firewall: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crypto_proposal: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mark: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub if_id: String,
    /// When the CHILD_SA is rekeyed, as strongSwan's `rekey_time`: seconds, or a number with
    /// `s`, `m`, `h` or `d`. It expires a tenth later (strongSwan's default `life_time`).
    /// Empty: one hour. Not in the SD-EWAN CRDs (its CNF leaves strongSwan's defaults):
    /// Switchyard's addition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rekey_time: String,
    /// When the CHILD_SA is rekeyed by volume, as strongSwan's `rekey_bytes`: bytes, or a
    /// number with `k`, `m` or `g` (powers of 1024), counted per direction. It expires a
    /// tenth later. Empty: no byte limit. Switchyard's addition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rekey_bytes: String,
}

/// The fields `IpsecSiteSpec` and `IpsecHostSpec` share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecSiteSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub remote: String,
    pub authentication_method: String,
    #[serde(default)]
    pub crypto_proposal: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_identifier: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_identifier: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub force_crypto_proposal: String,
    #[serde(
        default,
        rename = "pre_shared_key",
        skip_serializing_if = "String::is_empty"
    )]
    pub pre_shared_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_public_cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_private_cert: String,
    #[serde(
        default,
        rename = "shared_ca",
        skip_serializing_if = "String::is_empty"
    )]
    pub shared_ca: String,
    /// When the IKE SA is rekeyed, as strongSwan's connection `rekey_time`: seconds, or a
    /// number with `s`, `m`, `h` or `d`; `0` never (the peer may). Empty: 4 hours, strongSwan's
    /// default. Not in the SD-EWAN CRDs: Switchyard's addition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ike_rekey_time: String,
    #[serde(default)]
    pub connections: Vec<SiteConnection>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpsecSite {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IpsecSiteSpec,
    #[serde(default)]
    pub status: SdewanStatus,
}

/// A connection of an `IpsecHost` (a host asks a hub for a virtual IP: `local_sourceip`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConnection {
    pub name: String,
    pub conn_type: String,
    pub mode: String,
    /// Our virtual IP, asked of the peer in IKE_AUTH (strongSwan's `leftsourceip`):
    /// `%config` (or `%config4`) for any IPv4 address, `%config6` for any IPv6 one, an
    /// address to ask for that one (the peer may give another), comma-separated for both
    /// families. Empty: no virtual IP, our side is our IKE address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_sourceip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_updown: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_firewall: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_subnet: String,
    /// The peer's virtual IP: an address pool (a prefix, `first-last`, an address, or a
    /// comma-separated list of those, one per family) the peer gets its address from when it
    /// asks (strongSwan's `rightsourceip`, which the SD-EWAN CNF renders this into).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_sourceip: String,
    /// DNS servers handed out with a `remote_sourceip` address (comma-separated). Not in the
    /// SD-EWAN CRDs: Switchyard's addition, strongSwan's `rightdns`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_dns: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_updown: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_firewall: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crypto_proposal: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mark: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub if_id: String,
    /// When the CHILD_SA is rekeyed, as strongSwan's `rekey_time`: seconds, or a number with
    /// `s`, `m`, `h` or `d`. It expires a tenth later (strongSwan's default `life_time`).
    /// Empty: one hour. Not in the SD-EWAN CRDs (its CNF leaves strongSwan's defaults):
    /// Switchyard's addition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rekey_time: String,
    /// When the CHILD_SA is rekeyed by volume, as strongSwan's `rekey_bytes`: bytes, or a
    /// number with `k`, `m` or `g` (powers of 1024), counted per direction. It expires a
    /// tenth later. Empty: no byte limit. Switchyard's addition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rekey_bytes: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecHostSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub remote: String,
    pub authentication_method: String,
    #[serde(default)]
    pub crypto_proposal: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_identifier: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_identifier: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub force_crypto_proposal: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pre_shared_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_public_cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_private_cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shared_ca: String,
    /// See [`IpsecSiteSpec::ike_rekey_time`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ike_rekey_time: String,
    #[serde(default)]
    pub connections: Vec<HostConnection>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpsecHost {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IpsecHostSpec,
    #[serde(default)]
    pub status: SdewanStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdewanError {
    #[error("{0}: authentication method {1:?} not supported (psk or pubkey)")]
    AuthMethod(String, String),
    #[error("{0}: certificate authentication: {1}")]
    Cert(String, String),
    #[error("{0}: no pre-shared key")]
    NoPsk(String),
    #[error("{0}: bad remote {1:?}")]
    Remote(String, String),
    #[error("{0}: bad subnet {1:?}")]
    Subnet(String, String),
    #[error("{0}: {1}")]
    Proposal(String, ProposalError),
    #[error("{0}: no crypto proposal")]
    NoProposal(String),
    #[error("{0}: bad local_sourceip {1:?} (want %config, %config4, %config6 or addresses)")]
    SourceIp(String, String),
    #[error("{0}: remote_sourceip: {1}")]
    Pool(String, PoolError),
    #[error("{0}: bad rekey_time {1:?} (want seconds, or a number with s, m, h or d)")]
    RekeyTime(String, String),
    #[error("{0}: bad rekey_bytes {1:?} (want bytes, or a number with k, m or g)")]
    RekeyBytes(String, String),
}

/// strongSwan's IKE SA `rekey_time` default.
pub const DEFAULT_IKE_REKEY_TIME: Duration = Duration::from_secs(4 * 3600);

/// strongSwan's CHILD_SA `rekey_time` default.
pub const DEFAULT_CHILD_REKEY_TIME: Duration = Duration::from_secs(3600);

/// A CHILD_SA lifetime from a `rekey_time` (empty: [`DEFAULT_CHILD_REKEY_TIME`]) and a
/// `rekey_bytes` (empty: none): soft at each, hard a tenth later, as strongSwan's defaults
/// (`life_time` is `rekey_time` plus 10 %, `life_bytes` `rekey_bytes` plus 10 %).
pub fn child_lifetime(
    name: &str,
    rekey_time: &str,
    rekey_bytes: &str,
) -> Result<Lifetime, SdewanError> {
    let text = rekey_time.trim();
    let soft = if text.is_empty() {
        DEFAULT_CHILD_REKEY_TIME
    } else {
        parse_duration(text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| SdewanError::RekeyTime(name.to_string(), text.to_string()))?
    };
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let bytes = rekey_bytes.trim();
    let soft_bytes = if bytes.is_empty() {
        None
    } else {
        Some(
            parse_bytes(bytes)
                .filter(|&b| b > 0)
                .ok_or_else(|| SdewanError::RekeyBytes(name.to_string(), bytes.to_string()))?,
        )
    };
    Ok(Lifetime {
        soft_time: Some(nanos(soft)),
        hard_time: Some(nanos(soft + soft / 10)),
        soft_bytes,
        hard_bytes: soft_bytes.map(|b| b.saturating_add(b / 10)),
    })
}

/// A byte count: a number, or one followed by `k`, `m` or `g` (either case, powers of 1024).
fn parse_bytes(text: &str) -> Option<u64> {
    let (number, shift) = match text.as_bytes().last()?.to_ascii_lowercase() {
        b'k' => (&text[..text.len() - 1], 10),
        b'm' => (&text[..text.len() - 1], 20),
        b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The IKE SA's rekey period from an `ike_rekey_time` (empty: [`DEFAULT_IKE_REKEY_TIME`];
/// `0`: never).
pub fn ike_lifetime(name: &str, text: &str) -> Result<Option<Duration>, SdewanError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Some(DEFAULT_IKE_REKEY_TIME));
    }
    let period = parse_duration(text)
        .ok_or_else(|| SdewanError::RekeyTime(name.to_string(), text.to_string()))?;
    Ok((!period.is_zero()).then_some(period))
}

/// A strongSwan duration: seconds, or a number followed by `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return None,
    };
    number
        .trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(scale)
        .map(Duration::from_secs)
}

/// Resolves `crypto_proposal` entries: names of `IpsecProposal` resources, or proposal
/// strings written inline.
pub fn resolve_proposals(entries: &[String], proposals: &[IpsecProposal]) -> Vec<String> {
    entries
        .iter()
        .map(|entry| {
            proposals
                .iter()
                .find(|p| {
                    &p.metadata.name == entry || (!p.spec.name.is_empty() && &p.spec.name == entry)
                })
                .map_or_else(|| entry.clone(), |p| p.spec.proposal_string())
        })
        .collect()
}

/// Parses "198.18.0.0/24", a bare address, or a comma-separated list of them.
pub fn subnets_to_selectors(text: &str) -> Option<Vec<TrafficSelector>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (addr, len) = match part.split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
            None => (part.parse::<IpAddr>().ok()?, None),
        };
        let (start, end) = match addr {
            IpAddr::V4(a) => {
                let len = u32::from(len.unwrap_or(32));
                if len > 32 {
                    return None;
                }
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let base = u32::from(a) & mask;
                (
                    IpAddr::V4(Ipv4Addr::from(base)),
                    IpAddr::V4(Ipv4Addr::from(base | !mask)),
                )
            }
            IpAddr::V6(a) => {
                let len = u32::from(len.unwrap_or(128));
                if len > 128 {
                    return None;
                }
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                let base = u128::from(a) & mask;
                (
                    IpAddr::V6(Ipv6Addr::from(base)),
                    IpAddr::V6(Ipv6Addr::from(base | !mask)),
                )
            }
        };
        out.push(TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start,
            end,
        });
    }
    Some(out)
}

struct Common<'a> {
    resource: &'a str,
    remote: &'a str,
    authentication_method: &'a str,
    crypto_proposal: &'a [String],
    local_identifier: &'a str,
    remote_identifier: &'a str,
    pre_shared_key: &'a str,
    local_public_cert: &'a str,
    local_private_cert: &'a str,
    shared_ca: &'a str,
    ike_rekey_time: &'a str,
}

/// A certificate, key or CA field: the PEM text itself, or the path of a file holding it
/// (PEM or DER), as the SD-EWAN CNF mounts them.
fn pem_or_file(name: &str, field: &str, value: &str) -> Result<Vec<u8>, SdewanError> {
    let value = value.trim();
    if value.contains("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    if value.is_empty() {
        return Err(SdewanError::Cert(name.to_string(), format!("no {field}")));
    }
    std::fs::read(value)
        .map_err(|e| SdewanError::Cert(name.to_string(), format!("{field} {value}: {e}")))
}

/// The credentials of `pubkey` authentication.
fn credentials(name: &str, common: &Common<'_>) -> Result<Credentials, SdewanError> {
    let cert = pem_or_file(name, "local_public_cert", common.local_public_cert)?;
    let key = pem_or_file(name, "local_private_cert", common.local_private_cert)?;
    let ca = pem_or_file(name, "shared_ca", common.shared_ca)?;
    Credentials::new(&cert, &key, &ca)
        .map_err(|e| SdewanError::Cert(name.to_string(), e.to_string()))
}

fn peer_from(
    common: &Common<'_>,
    connection: &str,
    connection_proposals: &[String],
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    local: SocketAddr,
    proposals: &[IpsecProposal],
) -> Result<PeerConfig, SdewanError> {
    let name = format!("{}/{}", common.resource, connection);
    let method = common.authentication_method.trim();
    let certs = if method.eq_ignore_ascii_case("psk") {
        if common.pre_shared_key.is_empty() {
            return Err(SdewanError::NoPsk(name));
        }
        None
    } else if method.eq_ignore_ascii_case("pubkey") {
        Some(Arc::new(credentials(&name, common)?))
    } else {
        return Err(SdewanError::AuthMethod(name, method.to_string()));
    };
    let remote = match common.remote.trim() {
        "" | "%any" | "0.0.0.0" | "::" => None,
        text => Some(SocketAddr::new(
            text.parse::<IpAddr>()
                .map_err(|_| SdewanError::Remote(name.clone(), text.to_string()))?,
            500,
        )),
    };
    let ike: Vec<IkeProposal> = resolve_proposals(common.crypto_proposal, proposals)
        .iter()
        .map(|p| IkeProposal::parse(p).map_err(|e| SdewanError::Proposal(name.clone(), e)))
        .collect::<Result<_, _>>()?;
    let esp_names = if connection_proposals.is_empty() {
        common.crypto_proposal
    } else {
        connection_proposals
    };
    // Connection proposals name ESP transforms; an IKE-style string also carries a DH group,
    // which for ESP means PFS on rekey and is accepted.
    let esp: Vec<EspProposal> = resolve_proposals(esp_names, proposals)
        .iter()
        .map(|p| EspProposal::parse(p).map_err(|e| SdewanError::Proposal(name.clone(), e)))
        .collect::<Result<_, _>>()?;
    if ike.is_empty() || esp.is_empty() {
        return Err(SdewanError::NoProposal(name));
    }
    let local_id = match (common.local_identifier.is_empty(), &certs) {
        // With a certificate, its subject (strongSwan's default identity).
        (true, Some(c)) => Identity::Dn(c.subject_identity().data),
        (true, None) => Identity::Address(local.ip()),
        (false, _) => Identity::parse(common.local_identifier),
    };
    let remote_id = match (common.remote_identifier.is_empty(), &certs) {
        // With certificates, any identity the peer's certificate from the CA holds.
        (true, Some(_)) => None,
        (true, None) => remote.map(|r| Identity::Address(r.ip())),
        (false, _) => Some(Identity::parse(common.remote_identifier)),
    };
    let ike_lifetime = ike_lifetime(&name, common.ike_rekey_time)?;
    Ok(PeerConfig {
        name,
        local,
        remote,
        local_id,
        remote_id,
        psk: SecretBytes::from_slice(common.pre_shared_key.as_bytes()),
        certs,
        ike_proposals: ike,
        esp_proposals: esp,
        local_ts,
        remote_ts,
        child_lifetime: Default::default(),
        ike_lifetime,
        virtual_ips: Vec::new(),
        pool: None,
    })
}

/// The virtual IPs `local_sourceip` asks for (see [`HostConnection::local_sourceip`]).
pub fn parse_virtual_ips(name: &str, text: &str) -> Result<Vec<IpAddr>, SdewanError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr = match part.to_ascii_lowercase().as_str() {
            "%config" | "%config4" | "%cfg" | "%modeconfig" | "%modecfg" => {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
            "%config6" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => part
                .parse()
                .map_err(|_| SdewanError::SourceIp(name.to_string(), text.to_string()))?,
        };
        if !out.iter().any(|a: &IpAddr| a.is_ipv4() == addr.is_ipv4()) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// The pool a connection's `remote_sourceip` describes, named `resource/connection`. Only
/// address pools: `%config` and `%poolname` name pools held elsewhere (strongSwan's attribute
/// plugins), which Switchyard does not have.
fn connection_pool(
    name: &str,
    remote_sourceip: &str,
    remote_dns: &str,
) -> Result<Option<PoolConfig>, SdewanError> {
    let text = remote_sourceip.trim();
    if text.is_empty() {
        return Ok(None);
    }
    PoolConfig::parse(name, text, remote_dns)
        .map(Some)
        .map_err(|e| SdewanError::Pool(name.to_string(), e))
}

/// A connection's remote selectors when it has a pool and no `remote_subnet`: the pool's
/// addresses (each peer's CHILD_SA is narrowed to its own lease).
fn pool_selectors(pool: &PoolConfig) -> Vec<TrafficSelector> {
    pool.ranges
        .iter()
        .map(|r| TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: r.first,
            end: r.last,
        })
        .collect()
}

fn selectors(
    name: &str,
    text: &str,
    fallback: IpAddr,
) -> Result<Vec<TrafficSelector>, SdewanError> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('%') {
        return Ok(subnets_to_selectors(&fallback.to_string()).unwrap_or_default());
    }
    subnets_to_selectors(text)
        .ok_or_else(|| SdewanError::Subnet(name.to_string(), text.to_string()))
}

impl IpsecSite {
    /// One peer per connection, `local` being this node's IKE address.
    pub fn to_peers(
        &self,
        local: SocketAddr,
        proposals: &[IpsecProposal],
    ) -> Result<Vec<PeerConfig>, SdewanError> {
        let s = &self.spec;
        let common = Common {
            resource: &self.metadata.name,
            remote: &s.remote,
            authentication_method: &s.authentication_method,
            crypto_proposal: &s.crypto_proposal,
            local_identifier: &s.local_identifier,
            remote_identifier: &s.remote_identifier,
            pre_shared_key: &s.pre_shared_key,
            local_public_cert: &s.local_public_cert,
            local_private_cert: &s.local_private_cert,
            shared_ca: &s.shared_ca,
            ike_rekey_time: &s.ike_rekey_time,
        };
        s.connections
            .iter()
            .map(|c| {
                let remote_fallback = s
                    .remote
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                let local_ts = selectors(&c.name, &c.local_subnet, local.ip())?;
                let pool = connection_pool(
                    &format!("{}/{}", self.metadata.name, c.name),
                    &c.remote_sourceip,
                    &c.remote_dns,
                )?;
                let remote_ts = match &pool {
                    Some(pool) if c.remote_subnet.trim().is_empty() => pool_selectors(pool),
                    _ => selectors(&c.name, &c.remote_subnet, remote_fallback)?,
                };
                let mut peer = peer_from(
                    &common,
                    &c.name,
                    &c.crypto_proposal,
                    local_ts,
                    remote_ts,
                    local,
                    proposals,
                )?;
                peer.pool = pool.map(|p| p.name);
                peer.child_lifetime = child_lifetime(&peer.name, &c.rekey_time, &c.rekey_bytes)?;
                Ok(peer)
            })
            .collect()
    }

    /// The address pools of the connections with a `remote_sourceip`.
    pub fn pools(&self) -> Result<Vec<PoolConfig>, SdewanError> {
        let mut out = Vec::new();
        for c in &self.spec.connections {
            let name = format!("{}/{}", self.metadata.name, c.name);
            out.extend(connection_pool(&name, &c.remote_sourceip, &c.remote_dns)?);
        }
        Ok(out)
    }
}

impl IpsecHost {
    /// One peer per connection. With `local_sourceip` the host asks the hub for a virtual IP
    /// (RFC 7296 section 2.19) and proposes every address of the family for its side, which
    /// the hub narrows to the address it assigns; without it, its side is its IKE address.
    pub fn to_peers(
        &self,
        local: SocketAddr,
        proposals: &[IpsecProposal],
    ) -> Result<Vec<PeerConfig>, SdewanError> {
        let s = &self.spec;
        let common = Common {
            resource: &self.metadata.name,
            remote: &s.remote,
            authentication_method: &s.authentication_method,
            crypto_proposal: &s.crypto_proposal,
            local_identifier: &s.local_identifier,
            remote_identifier: &s.remote_identifier,
            pre_shared_key: &s.pre_shared_key,
            local_public_cert: &s.local_public_cert,
            local_private_cert: &s.local_private_cert,
            shared_ca: &s.shared_ca,
            ike_rekey_time: &s.ike_rekey_time,
        };
        s.connections
            .iter()
            .map(|c| {
                let remote_fallback = s
                    .remote
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                let virtual_ips = parse_virtual_ips(&c.name, &c.local_sourceip)?;
                let local_ts = if virtual_ips.is_empty() {
                    selectors(&c.name, "", local.ip())?
                } else {
                    virtual_ips
                        .iter()
                        .map(|a| any_selector(a.is_ipv6()))
                        .collect()
                };
                let pool = connection_pool(
                    &format!("{}/{}", self.metadata.name, c.name),
                    &c.remote_sourceip,
                    &c.remote_dns,
                )?;
                let remote_ts = match &pool {
                    Some(pool) if c.remote_subnet.trim().is_empty() => pool_selectors(pool),
                    _ => selectors(&c.name, &c.remote_subnet, remote_fallback)?,
                };
                let mut peer = peer_from(
                    &common,
                    &c.name,
                    &c.crypto_proposal,
                    local_ts,
                    remote_ts,
                    local,
                    proposals,
                )?;
                peer.virtual_ips = virtual_ips;
                peer.pool = pool.map(|p| p.name);
                peer.child_lifetime = child_lifetime(&peer.name, &c.rekey_time, &c.rekey_bytes)?;
                Ok(peer)
            })
            .collect()
    }

    /// The address pools of the connections with a `remote_sourceip`.
    pub fn pools(&self) -> Result<Vec<PoolConfig>, SdewanError> {
        let mut out = Vec::new();
        for c in &self.spec.connections {
            let name = format!("{}/{}", self.metadata.name, c.name);
            out.extend(connection_pool(&name, &c.remote_sourceip, &c.remote_dns)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rekey_time` as strongSwan writes it; the hard lifetime a tenth later; an hour when
    /// it is not given (strongSwan's CHILD_SA defaults).
    #[test]
    fn rekey_time_gives_the_child_lifetime() {
        let secs = |l: Lifetime| {
            (
                l.soft_time.map(|n| n / 1_000_000_000),
                l.hard_time.map(|n| n / 1_000_000_000),
            )
        };
        for (text, soft, hard) in [
            ("", 3600, 3960),
            ("30", 30, 33),
            ("10s", 10, 11),
            ("2m", 120, 132),
            ("1h", 3600, 3960),
            ("1d", 86400, 95040),
        ] {
            let got = child_lifetime("c", text, "").unwrap();
            assert_eq!(secs(got), (Some(soft), Some(hard)), "{text:?}");
            assert_eq!((got.soft_bytes, got.hard_bytes), (None, None));
        }
        for bad in ["0", "x", "5y", "-3", "h"] {
            assert!(child_lifetime("c", bad, "").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ike_rekey_time_sets_the_ike_sa_period() {
        assert_eq!(ike_lifetime("s", "").unwrap(), Some(DEFAULT_IKE_REKEY_TIME));
        assert_eq!(
            ike_lifetime("s", "2h").unwrap(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(ike_lifetime("s", "0").unwrap(), None);
        assert!(ike_lifetime("s", "soon").is_err());
    }

    /// `rekey_bytes` as strongSwan writes it; the hard limit a tenth more.
    #[test]
    fn rekey_bytes_gives_byte_limits() {
        for (text, soft) in [
            ("1000", 1000),
            ("64k", 64 << 10),
            ("500M", 500 << 20),
            ("2g", 2 << 30),
        ] {
            let got = child_lifetime("c", "", text).unwrap();
            assert_eq!(got.soft_bytes, Some(soft), "{text:?}");
            assert_eq!(got.hard_bytes, Some(soft + soft / 10), "{text:?}");
            assert!(got.soft_time.is_some(), "the time limit stays");
        }
        for bad in ["0", "k", "1t", "-5", "99999999999g"] {
            assert!(
                matches!(
                    child_lifetime("c", "", bad),
                    Err(SdewanError::RekeyBytes(..))
                ),
                "{bad:?}"
            );
        }
    }

    const PROPOSAL: &str = r#"{
        "apiVersion": "batch.sdewan.akraino.org/v1alpha1",
        "kind": "IpsecProposal",
        "metadata": {"name": "ipsecproposal1", "namespace": "default",
                     "labels": {"sdewanPurpose": "cnf1"}},
        "spec": {"encryption_algorithm": "aes128", "hash_algorithm": "sha256", "dh_group": "modp2048"}
    }"#;

    const SITE: &str = r#"{
        "apiVersion": "batch.sdewan.akraino.org/v1alpha1",
        "kind": "IpsecSite",
        "metadata": {"name": "ipsecsite1", "labels": {"sdewanPurpose": "cnf1"}},
        "spec": {
            "remote": "203.0.113.2",
            "authentication_method": "psk",
            "pre_shared_key": "test_key",
            "local_identifier": "@site-a",
            "remote_identifier": "@site-b",
            "crypto_proposal": ["ipsecproposal1", "aes128gcm16-prfsha256-x25519"],
            "force_crypto_proposal": "0",
            "connections": [{
                "name": "connA",
                "conn_type": "tunnel",
                "mode": "start",
                "local_subnet": "198.18.1.0/24",
                "remote_subnet": "198.18.2.0/24,2001:db8:2::/48",
                "crypto_proposal": ["aes128gcm16"]
            }]
        }
    }"#;

    const HOST: &str = r#"{
        "apiVersion": "batch.sdewan.akraino.org/v1alpha1",
        "kind": "IpsecHost",
        "metadata": {"name": "ipsechost1"},
        "spec": {
            "remote": "%any",
            "authentication_method": "psk",
            "pre_shared_key": "k",
            "crypto_proposal": ["ipsecproposal1"],
            "connections": [{"name": "c1", "conn_type": "tunnel", "mode": "add",
                             "local_sourceip": "%config", "remote_subnet": "198.19.0.0/16"}]
        }
    }"#;

    #[test]
    fn parses_the_sdewan_resources() {
        let proposal: IpsecProposal = serde_json::from_str(PROPOSAL).unwrap();
        assert_eq!(proposal.spec.proposal_string(), "aes128-sha256-modp2048");
        assert_eq!(
            proposal
                .metadata
                .labels
                .get(PURPOSE_LABEL)
                .map(String::as_str),
            Some("cnf1")
        );
        let site: IpsecSite = serde_json::from_str(SITE).unwrap();
        assert_eq!(site.spec.connections[0].local_subnet, "198.18.1.0/24");
        assert_eq!(site.spec.pre_shared_key, "test_key");
        // JSON names survive a round trip.
        let back = serde_json::to_value(&site).unwrap();
        assert_eq!(back["spec"]["connections"][0]["conn_type"], "tunnel");
        assert_eq!(back["spec"]["pre_shared_key"], "test_key");
        let host: IpsecHost = serde_json::from_str(HOST).unwrap();
        assert_eq!(host.spec.connections[0].local_sourceip, "%config");
    }

    #[test]
    fn converts_to_engine_peers() {
        let proposal: IpsecProposal = serde_json::from_str(PROPOSAL).unwrap();
        let site: IpsecSite = serde_json::from_str(SITE).unwrap();
        let local: SocketAddr = "203.0.113.1:500".parse().unwrap();
        let peers = site
            .to_peers(local, std::slice::from_ref(&proposal))
            .unwrap();
        assert_eq!(peers.len(), 1);
        let p = &peers[0];
        assert_eq!(p.name, "ipsecsite1/connA");
        assert_eq!(p.remote, Some("203.0.113.2:500".parse().unwrap()));
        assert_eq!(p.ike_proposals.len(), 2);
        assert_eq!(
            p.ike_proposals[0],
            IkeProposal::parse("aes128-sha256-modp2048").unwrap()
        );
        assert_eq!(
            p.esp_proposals,
            vec![EspProposal::parse("aes128gcm16").unwrap()]
        );
        assert_eq!(p.local_id, Identity::Fqdn("site-a".into()));
        assert_eq!(p.remote_ts.len(), 2);
        assert_eq!(
            p.remote_ts[0].end,
            "198.18.2.255".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.remote_ts[1].end,
            "2001:db8:2:ffff:ffff:ffff:ffff:ffff"
                .parse::<IpAddr>()
                .unwrap()
        );
        assert!(
            !format!("{p:?}").contains("test_key"),
            "no secret in Debug output"
        );

        let host: IpsecHost = serde_json::from_str(HOST).unwrap();
        let peers = host.to_peers(local, &[proposal]).unwrap();
        assert_eq!(peers[0].remote, None, "%any: responder only");

        let mut bad = site.clone();
        bad.spec.authentication_method = "eap".into();
        assert!(matches!(
            bad.to_peers(local, &[]),
            Err(SdewanError::AuthMethod(..))
        ));
        let mut bad = site;
        bad.spec.connections[0].local_subnet = "198.18.1.0/40".into();
        assert!(matches!(
            bad.to_peers(local, &[]),
            Err(SdewanError::Subnet(..))
        ));
    }

    /// The virtual IP fields as the SD-EWAN CNF hands them to strongSwan: `local_sourceip`
    /// asks the hub for an address (`leftsourceip`), `remote_sourceip` is the hub's pool
    /// (`rightsourceip`).
    #[test]
    fn virtual_ips_and_pools() {
        let proposal: IpsecProposal = serde_json::from_str(PROPOSAL).unwrap();
        let local: SocketAddr = "203.0.113.1:500".parse().unwrap();
        let host: IpsecHost = serde_json::from_str(HOST).unwrap();
        let peers = host
            .to_peers(local, std::slice::from_ref(&proposal))
            .unwrap();
        assert_eq!(
            peers[0].virtual_ips,
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        );
        assert_eq!(peers[0].local_ts, vec![any_selector(false)]);
        assert_eq!(peers[0].pool, None);
        assert!(host.pools().unwrap().is_empty());

        let mut hub: IpsecSite = serde_json::from_str(SITE).unwrap();
        hub.spec.remote = "%any".into();
        let conn = &mut hub.spec.connections[0];
        conn.remote_subnet = String::new();
        conn.remote_sourceip = "198.18.100.5-198.18.100.6, 2001:db8:100::/120".into();
        conn.remote_dns = "198.18.0.53".into();
        let peers = hub
            .to_peers(local, std::slice::from_ref(&proposal))
            .unwrap();
        assert_eq!(peers[0].pool.as_deref(), Some("ipsecsite1/connA"));
        assert_eq!(peers[0].remote_ts.len(), 2, "the pool's ranges");
        assert_eq!(
            peers[0].remote_ts[0].end,
            "198.18.100.6".parse::<IpAddr>().unwrap()
        );
        let pools = hub.pools().unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].name, "ipsecsite1/connA");
        assert_eq!(pools[0].ranges.len(), 2);
        assert_eq!(pools[0].dns, vec!["198.18.0.53".parse::<IpAddr>().unwrap()]);
        // The field survives a round trip under its own name.
        let back = serde_json::to_value(&hub).unwrap();
        assert_eq!(back["spec"]["connections"][0]["remote_dns"], "198.18.0.53");

        assert_eq!(
            parse_virtual_ips("c", "%config4, %config6, 198.18.9.9").unwrap(),
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            ],
            "one per family"
        );
        assert_eq!(
            parse_virtual_ips("c", "198.18.9.9").unwrap(),
            vec!["198.18.9.9".parse::<IpAddr>().unwrap()]
        );
        assert!(matches!(
            parse_virtual_ips("c", "%dhcp"),
            Err(SdewanError::SourceIp(..))
        ));
        let mut bad = hub.clone();
        bad.spec.connections[0].remote_sourceip = "%config".into();
        assert!(matches!(
            bad.to_peers(local, &[]),
            Err(SdewanError::Pool(..))
        ));
        assert!(matches!(bad.pools(), Err(SdewanError::Pool(..))));
    }
}
