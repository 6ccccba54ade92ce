//! Validation of the parts of a policy the API server would check, and the errors it reports.
//!
//! The compiler and the reference evaluator both use these predicates, so "what counts as
//! invalid" is defined once; what an invalid part *means* (nothing allowed, pods stay isolated)
//! is implemented separately in each of them.

use ipnet::IpNet;

use crate::model::{LabelSelector, Labels, Peer, PolicyKey, PortRef, PortSpec, SelectorOperator};

/// Why a part of a policy is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("invalid label key {0:?}")]
    LabelKey(String),
    #[error("invalid label value {0:?}")]
    LabelValue(String),
    #[error("operator {0} needs at least one value")]
    MissingValues(&'static str),
    #[error("operator {0} takes no values")]
    UnexpectedValues(&'static str),
    #[error("unknown selector operator {0:?}")]
    Operator(String),
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    #[error("except {except:?} is not a strict subset of cidr {cidr:?}")]
    ExceptOutsideCidr { cidr: String, except: String },
    #[error("a peer needs exactly one of ipBlock or selectors")]
    PeerShape,
    #[error("unknown protocol {0:?}")]
    Protocol(String),
    #[error("port 0 is not a valid port")]
    PortZero,
    #[error("invalid port name {0:?}")]
    PortName(String),
    #[error("endPort needs a numeric port")]
    EndPortWithoutNumber,
    #[error("endPort {end} is below port {port}")]
    EndPortBelowPort { port: u16, end: u16 },
}

/// A problem found in one policy, with where it is. The policy is still enforced: the pods it
/// selects stay isolated in the directions it names, and the invalid part allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {policy}: {path}: {reason}")]
pub struct PolicyError {
    pub policy: PolicyKey,
    /// JSON-path-like location, e.g. `spec.ingress[0].from[1].ipBlock`.
    pub path: String,
    pub reason: Invalid,
}

/// Label name part: 1..=63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// DNS-1123 subdomain: dot-separated lowercase labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.first()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.last()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

/// A label value: empty, or a label name.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// An IANA service name as container port names must be: 1..=15 of `[a-z0-9-]`, at least one
/// letter, no hyphen at either end, no two hyphens in a row.
pub fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
        && !s.contains("--")
}

/// Checks a label selector.
pub fn check_selector(selector: &LabelSelector) -> Result<(), Invalid> {
    for (k, v) in &selector.match_labels {
        if !is_label_key(k) {
            return Err(Invalid::LabelKey(k.clone()));
        }
        if !is_label_value(v) {
            return Err(Invalid::LabelValue(v.clone()));
        }
    }
    for req in &selector.match_expressions {
        if !is_label_key(&req.key) {
            return Err(Invalid::LabelKey(req.key.clone()));
        }
        match &req.operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                if req.values.is_empty() {
                    let op = if req.operator == SelectorOperator::In {
                        "In"
                    } else {
                        "NotIn"
                    };
                    return Err(Invalid::MissingValues(op));
                }
                if let Some(v) = req.values.iter().find(|v| !is_label_value(v)) {
                    return Err(Invalid::LabelValue(v.clone()));
                }
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                if !req.values.is_empty() {
                    let op = if req.operator == SelectorOperator::Exists {
                        "Exists"
                    } else {
                        "DoesNotExist"
                    };
                    return Err(Invalid::UnexpectedValues(op));
                }
            }
            SelectorOperator::Unknown(op) => return Err(Invalid::Operator(op.clone())),
        }
    }
    Ok(())
}

/// Whether a (valid) selector matches `labels`. Every requirement must hold.
pub(crate) fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|req| {
            let value = labels.get(&req.key);
            match req.operator {
                SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                SelectorOperator::Exists => value.is_some(),
                SelectorOperator::DoesNotExist => value.is_none(),
                SelectorOperator::Unknown(_) => false,
            }
        })
}

/// Parses a CIDR. Host bits are accepted and cleared, as the API server's legacy parsing does.
pub fn parse_cidr(s: &str) -> Result<IpNet, Invalid> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| Invalid::Cidr(s.to_string()))
}

/// Parses an ipBlock: the CIDR and its exceptions, each a strict subset of the CIDR.
pub fn parse_ip_block(cidr: &str, except: &[String]) -> Result<(IpNet, Vec<IpNet>), Invalid> {
    let net = parse_cidr(cidr)?;
    let mut out = Vec::with_capacity(except.len());
    for e in except {
        let ex = parse_cidr(e)?;
        if !(net.contains(&ex) && ex.prefix_len() > net.prefix_len()) {
            return Err(Invalid::ExceptOutsideCidr {
                cidr: cidr.to_string(),
                except: e.clone(),
            });
        }
        out.push(ex);
    }
    Ok((net, out))
}

/// Checks a peer's shape and contents.
pub fn check_peer(peer: &Peer) -> Result<(), Invalid> {
    match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
        (Some(block), None, None) => parse_ip_block(&block.cidr, &block.except).map(|_| ()),
        (None, pods, namespaces) if pods.is_some() || namespaces.is_some() => {
            if let Some(s) = pods {
                check_selector(s)?;
            }
            if let Some(s) = namespaces {
                check_selector(s)?;
            }
            Ok(())
        }
        _ => Err(Invalid::PeerShape),
    }
}

/// Checks a port entry.
pub fn check_port(spec: &PortSpec) -> Result<(), Invalid> {
    if let crate::model::Protocol::Unknown(p) = &spec.protocol {
        return Err(Invalid::Protocol(p.clone()));
    }
    match (&spec.port, spec.end_port) {
        (Some(PortRef::Number(0)), _) => Err(Invalid::PortZero),
        (Some(PortRef::Number(port)), Some(end)) if end < *port => {
            Err(Invalid::EndPortBelowPort { port: *port, end })
        }
        (Some(PortRef::Name(_)), Some(_)) | (None, Some(_)) => Err(Invalid::EndPortWithoutNumber),
        (Some(PortRef::Name(name)), None) if !is_port_name(name) => {
            Err(Invalid::PortName(name.clone()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key(crate::model::NAMESPACE_NAME_LABEL));
        assert!(!is_label_key(""));
        assert!(!is_label_key("-app"));
        assert!(!is_label_key("Bad.Prefix/name"));
        assert!(!is_label_key("a/b/c"));
        assert!(!is_label_key(&"x".repeat(64)));
    }

    #[test]
    fn port_names() {
        assert!(is_port_name("http"));
        assert!(is_port_name("h2c-80"));
        assert!(!is_port_name("80"));
        assert!(!is_port_name("HTTP"));
        assert!(!is_port_name("a--b"));
        assert!(!is_port_name("-a"));
        assert!(!is_port_name("sixteen-chars-xx"));
    }

    #[test]
    fn ip_blocks() {
        assert!(parse_ip_block("10.0.0.0/8", &["10.1.0.0/16".into()]).is_ok());
        assert!(parse_ip_block("10.0.0.0/8", &["10.0.0.0/8".into()]).is_err());
        assert!(parse_ip_block("10.0.0.0/8", &["11.0.0.0/16".into()]).is_err());
        assert!(parse_ip_block("10.0.0.0/8", &["2001:db8::/64".into()]).is_err());
        assert!(parse_ip_block("10.0.0.0", &[]).is_err());
        assert_eq!(
            parse_cidr("10.1.2.3/8").ok(),
            "10.0.0.0/8".parse::<IpNet>().ok()
        );
    }
}
