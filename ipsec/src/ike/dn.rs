//! Distinguished names as IKE identities (ID_DER_ASN1_DN, RFC 7296 section 3.5): written as
//! text in a configuration, strongSwan's way (`C=CH, O=Example, CN=gw.example`, or with
//! slashes: `/C=CH/O=Example/CN=gw.example`), sent as DER, and compared with a name from the
//! wire or a certificate by attribute and value, since the same name may be encoded with
//! other string types.

use x509_parser::prelude::*;

/// Attribute names we read, and their OIDs (DER content bytes).
const ATTRIBUTES: &[(&str, &[u8])] = &[
    ("CN", &[0x55, 0x04, 0x03]),
    ("C", &[0x55, 0x04, 0x06]),
    ("L", &[0x55, 0x04, 0x07]),
    ("ST", &[0x55, 0x04, 0x08]),
    ("O", &[0x55, 0x04, 0x0a]),
    ("OU", &[0x55, 0x04, 0x0b]),
    ("serialNumber", &[0x55, 0x04, 0x05]),
    ("surname", &[0x55, 0x04, 0x04]),
    ("title", &[0x55, 0x04, 0x0c]),
    ("street", &[0x55, 0x04, 0x09]),
    ("postalCode", &[0x55, 0x04, 0x11]),
    ("givenName", &[0x55, 0x04, 0x2a]),
    ("E", &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
    (
        "emailAddress",
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
    ),
    (
        "DC",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
    ),
    (
        "UID",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
    ),
];

/// DER tags.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;

/// Appends a DER element: tag, length, content.
fn element(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// The DER of the name `text`, or `None` when it is not a name of known attributes (an FQDN
/// or an address, say: they have no `=`).
pub fn from_text(text: &str) -> Option<Vec<u8>> {
    if !text.contains('=') {
        return None;
    }
    let parts: Vec<&str> = text
        .split([',', '/'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let mut rdns = Vec::new();
    for part in &parts {
        let (key, value) = part.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        let (name, oid) = ATTRIBUTES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))?;
        if value.is_empty() {
            return None;
        }
        let string_type = match *name {
            "C" if value.bytes().all(|b| b.is_ascii_alphanumeric()) => PRINTABLE_STRING,
            "E" | "emailAddress" | "DC" if value.is_ascii() => IA5_STRING,
            _ => UTF8_STRING,
        };
        let mut pair = Vec::new();
        element(&mut pair, OID, oid);
        element(&mut pair, string_type, value.as_bytes());
        let mut seq = Vec::new();
        element(&mut seq, SEQUENCE, &pair);
        element(&mut rdns, SET, &seq);
    }
    if rdns.is_empty() {
        return None;
    }
    let mut der = Vec::new();
    element(&mut der, SEQUENCE, &rdns);
    Some(der)
}

/// The attributes of a DER name, in order, as (OID, value); `None` when it does not parse.
fn attributes(der: &[u8]) -> Option<Vec<(Vec<u8>, String)>> {
    let (rest, name) = X509Name::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    name.iter_attributes()
        .map(|a| {
            let value = a.as_str().ok()?.to_string();
            Some((a.attr_type().as_bytes().to_vec(), value))
        })
        .collect()
}

/// Whether two DER names are the same name: the same attributes in the same order with
/// equal values (ASCII case aside), whatever string types encode them. Names that do not
/// parse are equal only byte for byte.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    match (attributes(a), attributes(b)) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(&y)
                    .all(|((oa, va), (ob, vb))| oa == ob && va.eq_ignore_ascii_case(vb))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_encode_as_der_names_x509_reads_back() {
        let der = from_text("C=CH, O=strongSwan Project, CN=moon.strongswan.org").unwrap();
        let (_, name) = X509Name::from_der(&der).unwrap();
        assert_eq!(
            name.to_string(),
            "C=CH, O=strongSwan Project, CN=moon.strongswan.org"
        );
        // Slashes, spaces, letter case of the keys, e-mail and domain components.
        let der = from_text("/c=CH/o=Example/cn=gw/E=gw@example.org/DC=example").unwrap();
        assert_eq!(attributes(&der).unwrap().len(), 5);
        // A long value takes a long-form length.
        let long = "x".repeat(300);
        let der = from_text(&format!("CN={long}")).unwrap();
        assert_eq!(attributes(&der).unwrap()[0].1, long);
    }

    #[test]
    fn other_identifiers_are_not_names() {
        for text in [
            "gw.example.org",
            "@gw.example.org",
            "user@example.org",
            "198.51.100.1",
            "CN=",
            "XX=unknown attribute",
            "CN=a, nonsense",
            "=",
        ] {
            assert_eq!(from_text(text), None, "{text}");
        }
    }

    #[test]
    fn names_compare_by_attribute_and_value_not_encoding() {
        let ours = from_text("C=CH, O=Example, CN=gw.example").unwrap();
        // The same name with every value a PrintableString and other letter case.
        let mut theirs = Vec::new();
        let mut rdns = Vec::new();
        for (oid, value) in [
            (&[0x55, 0x04, 0x06][..], "CH"),
            (&[0x55, 0x04, 0x0a][..], "example"),
            (&[0x55, 0x04, 0x03][..], "GW.example"),
        ] {
            let mut pair = Vec::new();
            element(&mut pair, OID, oid);
            element(&mut pair, PRINTABLE_STRING, value.as_bytes());
            let mut seq = Vec::new();
            element(&mut seq, SEQUENCE, &pair);
            element(&mut rdns, SET, &seq);
        }
        element(&mut theirs, SEQUENCE, &rdns);
        assert_ne!(ours, theirs);
        assert!(equal(&ours, &theirs));
        assert!(!equal(
            &ours,
            &from_text("C=CH, O=Example, CN=other").unwrap()
        ));
        assert!(!equal(
            &ours,
            &from_text("O=Example, C=CH, CN=gw.example").unwrap()
        ));
        assert!(!equal(&ours, &from_text("C=CH, O=Example").unwrap()));
        assert!(!equal(&ours, b"\x30\x03garbage"));
        assert!(equal(b"\x01\x02", b"\x01\x02"));
    }
}
