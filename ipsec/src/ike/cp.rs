//! The Configuration payload (RFC 7296 sections 2.19 and 3.15) as this implementation uses it:
//! a host asks for an internal ("virtual") address in IKE_AUTH with a CFG_REQUEST, and the hub
//! answers with a CFG_REPLY that assigns one, with DNS servers when asked.
//!
//! Only what that needs is read: INTERNAL_IP4_ADDRESS, INTERNAL_IP4_NETMASK,
//! INTERNAL_IP4_DNS, INTERNAL_IP6_ADDRESS and INTERNAL_IP6_DNS. Other attributes (subnets,
//! application versions, vendor ones) are skipped, as section 3.15 lets both sides do. An
//! attribute of a known type with a length its type does not allow is skipped and counted,
//! never trusted: a peer cannot make us install an address it did not spell out in full.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{cfg, ConfigAttribute, TrafficSelector};

/// What a CFG_REQUEST asks for, of what this implementation serves.
///
/// One address per family: a second INTERNAL_IP4_ADDRESS in the same request is ignored (RFC
/// 7296 allows several; strongSwan and SD-EWAN ask for one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRequest {
    /// INTERNAL_IP4_ADDRESS: `Some(None)` asks for any address, `Some(Some(a))` for `a` (a
    /// host coming back asks for the address it had; the hub may give another).
    pub ip4: Option<Option<Ipv4Addr>>,
    /// INTERNAL_IP6_ADDRESS, the same way.
    pub ip6: Option<Option<Ipv6Addr>>,
    /// INTERNAL_IP4_NETMASK was asked for.
    pub netmask: bool,
    /// INTERNAL_IP4_DNS was asked for.
    pub dns4: bool,
    /// INTERNAL_IP6_DNS was asked for.
    pub dns6: bool,
}

/// What a CFG_REPLY assigns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressReply {
    pub ip4: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    /// The address and its prefix length.
    pub ip6: Option<(Ipv6Addr, u8)>,
    pub dns: Vec<IpAddr>,
}

/// An attribute list read leniently: what was understood, and how many attributes of a known
/// type were skipped because their value was malformed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed<T> {
    pub value: T,
    pub malformed: usize,
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

fn ipv6(bytes: &[u8]) -> Option<Ipv6Addr> {
    <[u8; 16]>::try_from(bytes).ok().map(Ipv6Addr::from)
}

/// An address a peer may assign as a host's own: not unspecified, loopback, multicast,
/// broadcast or link-local. Anything else in a reply is garbage, not an assignment.
pub fn is_assignable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

impl AddressRequest {
    /// Asks for one address of each family in `wanted` (an unspecified address: any).
    pub fn for_addresses(wanted: &[IpAddr]) -> Self {
        let mut request = Self::default();
        for addr in wanted {
            match addr {
                IpAddr::V4(a) if request.ip4.is_none() => {
                    request.ip4 = Some((!a.is_unspecified()).then_some(*a));
                }
                IpAddr::V6(a) if request.ip6.is_none() => {
                    request.ip6 = Some((!a.is_unspecified()).then_some(*a));
                }
                _ => {}
            }
        }
        request
    }

    /// True when an address of some family is asked for.
    pub fn wants_address(&self) -> bool {
        self.ip4.is_some() || self.ip6.is_some()
    }

    /// Reads the attributes of a CFG_REQUEST. In a request every value may be empty; a
    /// requested address of all zeroes means any.
    pub fn parse(attributes: &[ConfigAttribute]) -> Parsed<Self> {
        let mut out = Parsed::<Self>::default();
        let r = &mut out.value;
        for a in attributes {
            let v = a.value.as_slice();
            let ok = match a.kind {
                cfg::INTERNAL_IP4_ADDRESS => match v.len() {
                    0 => {
                        r.ip4.get_or_insert(None);
                        true
                    }
                    4 => {
                        let wanted = ipv4(v).filter(|a| !a.is_unspecified());
                        r.ip4.get_or_insert(wanted);
                        true
                    }
                    _ => false,
                },
                cfg::INTERNAL_IP6_ADDRESS => match v.len() {
                    0 => {
                        r.ip6.get_or_insert(None);
                        true
                    }
                    17 => {
                        let wanted = ipv6(&v[..16]).filter(|a| !a.is_unspecified());
                        r.ip6.get_or_insert(wanted);
                        true
                    }
                    _ => false,
                },
                cfg::INTERNAL_IP4_NETMASK => {
                    r.netmask = true;
                    matches!(v.len(), 0 | 4)
                }
                cfg::INTERNAL_IP4_DNS => {
                    r.dns4 = true;
                    matches!(v.len(), 0 | 4)
                }
                cfg::INTERNAL_IP6_DNS => {
                    r.dns6 = true;
                    matches!(v.len(), 0 | 16)
                }
                _ => true,
            };
            if !ok {
                out.malformed += 1;
            }
        }
        out
    }

    /// The attributes of this request.
    pub fn attributes(&self) -> Vec<ConfigAttribute> {
        let mut out = Vec::new();
        if let Some(wanted) = self.ip4 {
            out.push(ConfigAttribute {
                kind: cfg::INTERNAL_IP4_ADDRESS,
                value: wanted.map_or_else(Vec::new, |a| a.octets().to_vec()),
            });
        }
        if let Some(wanted) = self.ip6 {
            let value = wanted.map_or_else(Vec::new, |a| {
                let mut v = a.octets().to_vec();
                v.push(128);
                v
            });
            out.push(ConfigAttribute {
                kind: cfg::INTERNAL_IP6_ADDRESS,
                value,
            });
        }
        for (asked, kind) in [
            (self.netmask, cfg::INTERNAL_IP4_NETMASK),
            (self.dns4, cfg::INTERNAL_IP4_DNS),
            (self.dns6, cfg::INTERNAL_IP6_DNS),
        ] {
            if asked {
                out.push(ConfigAttribute {
                    kind,
                    value: Vec::new(),
                });
            }
        }
        out
    }
}

impl AddressReply {
    /// Reads the attributes of a CFG_REPLY. Every value must be complete here, and an address
    /// must be one a host can own ([`is_assignable`]); the first good address of each family
    /// counts.
    pub fn parse(attributes: &[ConfigAttribute]) -> Parsed<Self> {
        let mut out = Parsed::<Self>::default();
        let r = &mut out.value;
        for a in attributes {
            let v = a.value.as_slice();
            let ok = match a.kind {
                cfg::INTERNAL_IP4_ADDRESS => {
                    match ipv4(v).filter(|a| is_assignable(IpAddr::V4(*a))) {
                        Some(addr) => {
                            r.ip4.get_or_insert(addr);
                            true
                        }
                        None => false,
                    }
                }
                cfg::INTERNAL_IP6_ADDRESS => {
                    let addr = (v.len() == 17)
                        .then(|| ipv6(&v[..16]))
                        .flatten()
                        .filter(|a| is_assignable(IpAddr::V6(*a)) && v[16] <= 128);
                    match addr {
                        Some(addr) => {
                            r.ip6.get_or_insert((addr, v[16]));
                            true
                        }
                        None => false,
                    }
                }
                cfg::INTERNAL_IP4_NETMASK => match ipv4(v) {
                    Some(mask) => {
                        r.netmask.get_or_insert(mask);
                        true
                    }
                    None => false,
                },
                cfg::INTERNAL_IP4_DNS => match ipv4(v) {
                    Some(dns) => {
                        r.dns.push(IpAddr::V4(dns));
                        true
                    }
                    None => false,
                },
                cfg::INTERNAL_IP6_DNS => match ipv6(v) {
                    Some(dns) => {
                        r.dns.push(IpAddr::V6(dns));
                        true
                    }
                    None => false,
                },
                _ => true,
            };
            if !ok {
                out.malformed += 1;
            }
        }
        out
    }

    /// The assigned addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ip4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ip6.map(|(a, _)| IpAddr::V6(a)))
            .collect()
    }

    /// The attributes of this reply.
    pub fn attributes(&self) -> Vec<ConfigAttribute> {
        let mut out = Vec::new();
        if let Some(a) = self.ip4 {
            out.push(ConfigAttribute {
                kind: cfg::INTERNAL_IP4_ADDRESS,
                value: a.octets().to_vec(),
            });
        }
        if let Some(mask) = self.netmask {
            out.push(ConfigAttribute {
                kind: cfg::INTERNAL_IP4_NETMASK,
                value: mask.octets().to_vec(),
            });
        }
        if let Some((a, prefix)) = self.ip6 {
            let mut value = a.octets().to_vec();
            value.push(prefix);
            out.push(ConfigAttribute {
                kind: cfg::INTERNAL_IP6_ADDRESS,
                value,
            });
        }
        for dns in &self.dns {
            out.push(match dns {
                IpAddr::V4(a) => ConfigAttribute {
                    kind: cfg::INTERNAL_IP4_DNS,
                    value: a.octets().to_vec(),
                },
                IpAddr::V6(a) => ConfigAttribute {
                    kind: cfg::INTERNAL_IP6_DNS,
                    value: a.octets().to_vec(),
                },
            });
        }
        out
    }
}

/// The selector of one address, every protocol and port: a virtual IP's side of a CHILD_SA.
pub fn host_selector(addr: IpAddr) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start: addr,
        end: addr,
    }
}

/// The selector of every address of a family: what a host proposes for its own side before
/// it knows its virtual IP (the hub narrows it to the address it assigns).
pub fn any_selector(v6: bool) -> TrafficSelector {
    let (start, end) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::from(u128::MAX)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
        )
    };
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::wire::{emit_payloads, parse_payloads, payload_type, Payload};
    use proptest::prelude::*;

    fn attr(kind: u16, value: &[u8]) -> ConfigAttribute {
        ConfigAttribute {
            kind,
            value: value.to_vec(),
        }
    }

    #[test]
    fn requests_round_trip() {
        let any = AddressRequest::for_addresses(&[
            "0.0.0.0".parse().unwrap(),
            "::".parse().unwrap(),
            "198.18.9.9".parse().unwrap(),
        ]);
        assert_eq!(any.ip4, Some(None), "the first of a family counts");
        assert_eq!(any.ip6, Some(None));
        let parsed = AddressRequest::parse(&any.attributes());
        assert_eq!(
            parsed,
            Parsed {
                value: any,
                malformed: 0
            }
        );
        // strongSwan's empty INTERNAL_IP4_ADDRESS and our own with a wanted address.
        let wanted = AddressRequest {
            ip4: Some(Some("198.18.100.7".parse().unwrap())),
            ip6: Some(Some("2001:db8:100::7".parse().unwrap())),
            netmask: true,
            dns4: true,
            dns6: true,
        };
        let attributes = wanted.attributes();
        assert_eq!(attributes[0].value, [198, 18, 100, 7]);
        assert_eq!(attributes[1].value.len(), 17);
        assert_eq!(AddressRequest::parse(&attributes).value, wanted);
        // An all-zero address asks for any.
        let zero = AddressRequest::parse(&[attr(cfg::INTERNAL_IP4_ADDRESS, &[0; 4])]);
        assert_eq!(zero.value.ip4, Some(None));
    }

    #[test]
    fn malformed_request_attributes_are_skipped_and_counted() {
        let parsed = AddressRequest::parse(&[
            attr(cfg::INTERNAL_IP4_ADDRESS, &[1, 2, 3]),
            attr(cfg::INTERNAL_IP6_ADDRESS, &[0; 16]),
            attr(cfg::INTERNAL_IP4_DNS, &[1]),
            attr(0x4000, &[9; 40]),
        ]);
        assert_eq!(parsed.malformed, 3);
        assert!(!parsed.value.wants_address());
        assert!(parsed.value.dns4, "asked for, even if badly");
    }

    #[test]
    fn replies_round_trip_and_keep_only_assignable_addresses() {
        let reply = AddressReply {
            ip4: Some("198.18.100.1".parse().unwrap()),
            netmask: Some(Ipv4Addr::BROADCAST),
            ip6: Some(("2001:db8:100::1".parse().unwrap(), 128)),
            dns: vec![
                "198.18.0.53".parse().unwrap(),
                "2001:db8::53".parse().unwrap(),
            ],
        };
        let parsed = AddressReply::parse(&reply.attributes());
        assert_eq!(parsed.malformed, 0);
        assert_eq!(parsed.value, reply);
        assert_eq!(
            reply.addresses(),
            vec![
                "198.18.100.1".parse::<IpAddr>().unwrap(),
                "2001:db8:100::1".parse().unwrap()
            ]
        );
        // Empty, short, unspecified, loopback, broadcast, multicast, link-local: not
        // assignments.
        for bad in [
            attr(cfg::INTERNAL_IP4_ADDRESS, &[]),
            attr(cfg::INTERNAL_IP4_ADDRESS, &[198, 18, 1]),
            attr(cfg::INTERNAL_IP4_ADDRESS, &[0, 0, 0, 0]),
            attr(cfg::INTERNAL_IP4_ADDRESS, &[127, 0, 0, 1]),
            attr(cfg::INTERNAL_IP4_ADDRESS, &[255; 4]),
            attr(cfg::INTERNAL_IP4_ADDRESS, &[224, 0, 0, 1]),
            attr(cfg::INTERNAL_IP4_ADDRESS, &[169, 254, 1, 1]),
            attr(cfg::INTERNAL_IP6_ADDRESS, &[0; 17]),
            attr(
                cfg::INTERNAL_IP6_ADDRESS,
                &[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 64],
            ),
            attr(
                cfg::INTERNAL_IP6_ADDRESS,
                &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 129],
            ),
        ] {
            let parsed = AddressReply::parse(std::slice::from_ref(&bad));
            assert_eq!(parsed.malformed, 1, "{bad:?}");
            assert!(parsed.value.addresses().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn selectors() {
        let v4 = any_selector(false);
        assert_eq!(v4.end, IpAddr::V4(Ipv4Addr::BROADCAST));
        let host = host_selector("2001:db8::5".parse().unwrap());
        assert_eq!(host.start, host.end);
        assert_eq!((host.start_port, host.end_port), (0, u16::MAX));
    }

    #[test]
    fn oversized_attribute_lists_are_refused_by_the_codec() {
        let many = |n: usize| {
            let payload = Payload::Cp {
                cfg_type: cfg::REQUEST,
                attributes: vec![attr(cfg::INTERNAL_IP4_DNS, &[]); n],
            };
            parse_payloads(payload_type::CP, &emit_payloads(&[payload], 0))
        };
        assert!(many(cfg::MAX_ATTRIBUTES).is_ok());
        assert!(many(cfg::MAX_ATTRIBUTES + 1).is_err());
    }

    proptest! {
        #[test]
        fn any_attribute_list_is_read_without_panic(
            list in proptest::collection::vec((0u16..16, proptest::collection::vec(any::<u8>(), 0..24)), 0..40)
        ) {
            let attributes: Vec<ConfigAttribute> =
                list.iter().map(|(k, v)| attr(*k, v)).collect();
            let request = AddressRequest::parse(&attributes);
            let reply = AddressReply::parse(&attributes);
            prop_assert!(request.malformed <= attributes.len());
            prop_assert!(reply.value.addresses().iter().all(|a| is_assignable(*a)));
        }
    }
}
