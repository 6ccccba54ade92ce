//! RFC 7606 revised error handling, done on the raw UPDATE body before
//! netgauze decodes it.
//!
//! netgauze fails a whole message on the first bad attribute, but RFC 7606
//! needs a per-attribute decision: *attribute discard*, *treat-as-withdraw*
//! or *session reset*, the most severe winning (§3 h). This walk checks
//! framing, flags, lengths and the attribute-specific rules of §7 without
//! allocating per prefix, records where every attribute is, and decides.
//! [`sanitize`] then cuts out what must not reach netgauze.

use crate::config::Family;
use crate::notification::{update as sub, Notification};

pub const ORIGIN: u8 = 1;
pub const AS_PATH: u8 = 2;
pub const NEXT_HOP: u8 = 3;
pub const MED: u8 = 4;
pub const LOCAL_PREF: u8 = 5;
pub const ATOMIC_AGGREGATE: u8 = 6;
pub const AGGREGATOR: u8 = 7;
pub const COMMUNITIES: u8 = 8;
pub const ORIGINATOR_ID: u8 = 9;
pub const CLUSTER_LIST: u8 = 10;
pub const MP_REACH: u8 = 14;
pub const MP_UNREACH: u8 = 15;
pub const EXT_COMMUNITIES: u8 = 16;
pub const AS4_PATH: u8 = 17;
pub const AS4_AGGREGATOR: u8 = 18;
pub const IPV6_EXT_COMMUNITIES: u8 = 25;
pub const LARGE_COMMUNITIES: u8 = 32;

pub const FLAG_OPTIONAL: u8 = 0x80;
pub const FLAG_TRANSITIVE: u8 = 0x40;
pub const FLAG_PARTIAL: u8 = 0x20;
pub const FLAG_EXTENDED: u8 = 0x10;

/// What the session knows that changes how an UPDATE is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateContext {
    pub ibgp: bool,
    /// The peer's AS; for eBGP the leftmost AS_PATH entry must match.
    pub peer_as: u32,
    pub four_octet_as: bool,
    pub families: Vec<Family>,
    pub add_path_v4: bool,
    pub add_path_v6: bool,
}

impl UpdateContext {
    fn add_path(&self, f: Family) -> bool {
        match f {
            Family::Ipv4Unicast => self.add_path_v4,
            Family::Ipv6Unicast => self.add_path_v6,
        }
    }
}

/// The RFC 7606 approach chosen for a message; ordered by severity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Some attributes are dropped, the rest of the message is used.
    AttributeDiscard,
    /// Every prefix the message announces is withdrawn instead. The
    /// notification says why (it is logged, never sent).
    TreatAsWithdraw(Notification),
    SessionReset(Notification),
}

impl Verdict {
    fn rank(&self) -> u8 {
        match self {
            Verdict::Accept => 0,
            Verdict::AttributeDiscard => 1,
            Verdict::TreatAsWithdraw(_) => 2,
            Verdict::SessionReset(_) => 3,
        }
    }
}

/// Where one attribute sits in the body, and whether it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrSpan {
    pub flags: u8,
    pub code: u8,
    /// The whole attribute (header included) within the UPDATE body.
    pub start: usize,
    pub end: usize,
    /// Offset of the value within the body.
    pub value_start: usize,
    pub keep: bool,
}

/// The result of the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub verdict: Verdict,
    pub withdrawn: (usize, usize),
    pub attrs_range: (usize, usize),
    pub nlri: (usize, usize),
    pub attrs: Vec<AttrSpan>,
    /// Whether the message announces anything (body NLRI or MP_REACH NLRI).
    pub has_reach: bool,
    /// Byte ranges of prefixes within MP_(UN)REACH_NLRI that are well
    /// formed but not unicast (RFC 4271 §6.3: semantically incorrect NLRI
    /// are ignored); [`sanitize`] cuts them out.
    pub ignored_prefixes: Vec<(usize, usize)>,
}

impl Scan {
    fn raise(&mut self, v: Verdict) {
        if v.rank() > self.verdict.rank() {
            self.verdict = v;
        }
    }
    fn discard(&mut self, idx: usize) {
        if let Some(a) = self.attrs.get_mut(idx) {
            a.keep = false;
        }
        self.raise(Verdict::AttributeDiscard);
    }
    fn withdraw(&mut self, subcode: u8, data: &[u8]) {
        self.raise(Verdict::TreatAsWithdraw(Notification::update(
            subcode, data,
        )));
    }
    fn reset(&mut self, subcode: u8, data: &[u8]) {
        self.raise(Verdict::SessionReset(Notification::update(subcode, data)));
    }
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Walks a run of NLRI (RFC 4271 §4.3 prefix encoding, RFC 7911 path ids).
/// Returns the number of prefixes, or `None` on a syntax error.
pub fn check_nlri(b: &[u8], max_bits: u8, add_path: bool) -> Option<usize> {
    walk_nlri(b, max_bits, add_path, |_, _, _, _| {})
}

/// [`check_nlri`], calling `each(start, end, prefix_len, prefix_bytes)`
/// for every prefix, with `start..end` the whole entry (path id
/// included) within `b`.
fn walk_nlri(
    b: &[u8],
    max_bits: u8,
    add_path: bool,
    mut each: impl FnMut(usize, usize, u8, &[u8]),
) -> Option<usize> {
    let mut at = 0;
    let mut n = 0;
    while at < b.len() {
        let start = at;
        if add_path {
            at += 4;
        }
        let bits = *b.get(at)?;
        if bits > max_bits {
            return None;
        }
        let end = at + 1 + usize::from(bits).div_ceil(8);
        let prefix = b.get(at + 1..end)?;
        each(start, end, bits, prefix);
        at = end;
        n += 1;
    }
    Some(n)
}

/// Whether netgauze takes a well-formed prefix as unicast; it refuses
/// multicast and broadcast ones, which RFC 4271 §6.3 has us ignore.
fn unicast_prefix(family: Family, bits: u8, prefix: &[u8]) -> bool {
    use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv6Unicast};
    match family {
        Family::Ipv4Unicast => {
            let mut a = [0u8; 4];
            a.iter_mut().zip(prefix).for_each(|(d, s)| *d = *s);
            ipnet::Ipv4Net::new(a.into(), bits).is_ok_and(|n| Ipv4Unicast::from_net(n).is_ok())
        }
        Family::Ipv6Unicast => {
            let mut a = [0u8; 16];
            a.iter_mut().zip(prefix).for_each(|(d, s)| *d = *s);
            ipnet::Ipv6Net::new(a.into(), bits).is_ok_and(|n| Ipv6Unicast::from_net(n).is_ok())
        }
    }
}

/// Walks the NLRI of an MP_(UN)REACH_NLRI found at `at` in the body,
/// recording the prefixes to ignore. `None` on a syntax error.
fn check_mp_nlri(
    v: &[u8],
    at: usize,
    family: Family,
    ctx: &UpdateContext,
    s: &mut Scan,
) -> Option<usize> {
    let max_bits = match family {
        Family::Ipv4Unicast => 32,
        Family::Ipv6Unicast => 128,
    };
    let ignored = &mut s.ignored_prefixes;
    walk_nlri(
        v,
        max_bits,
        ctx.add_path(family),
        |start, end, bits, prefix| {
            if !unicast_prefix(family, bits, prefix) {
                ignored.push((at + start, at + end));
            }
        },
    )
}

/// The (optional, transitive) flag values RFC 4271 and later RFCs fix for
/// each attribute we recognise; `None` for unrecognised codes.
fn expected_flags(code: u8) -> Option<(bool, bool)> {
    Some(match code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => (false, true),
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH | MP_UNREACH => (true, false),
        AGGREGATOR | COMMUNITIES | EXT_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR
        | IPV6_EXT_COMMUNITIES | LARGE_COMMUNITIES => (true, true),
        _ => return None,
    })
}

/// Checks AS_PATH / AS4_PATH segments (RFC 7606 §7.2): known segment
/// type, non-zero count, no overrun. Returns the first segment's type and
/// first AS when well formed.
fn check_as_path(mut v: &[u8], asn_len: usize) -> Option<Option<(u8, u32)>> {
    let mut first = None;
    while !v.is_empty() {
        let (&ty, rest) = v.split_first()?;
        let (&count, rest) = rest.split_first()?;
        if !(1..=4).contains(&ty) || count == 0 {
            return None;
        }
        let len = usize::from(count) * asn_len;
        let asns = rest.get(..len)?;
        // RFC 7607 §2: AS 0 anywhere makes the path malformed.
        if asns
            .chunks_exact(asn_len)
            .any(|a| a.iter().all(|b| *b == 0))
        {
            return None;
        }
        if first.is_none() {
            let asn = if asn_len == 4 {
                u32::from_be_bytes([asns[0], asns[1], asns[2], asns[3]])
            } else {
                u32::from(u16::from_be_bytes([asns[0], asns[1]]))
            };
            first = Some((ty, asn));
        }
        v = rest.get(len..)?;
    }
    Some(first)
}

/// Scans an UPDATE body (the bytes after the 19-byte header).
pub fn scan(body: &[u8], ctx: &UpdateContext) -> Scan {
    let mut s = Scan {
        verdict: Verdict::Accept,
        withdrawn: (0, 0),
        attrs_range: (0, 0),
        nlri: (0, 0),
        attrs: Vec::new(),
        has_reach: false,
        ignored_prefixes: Vec::new(),
    };
    // RFC 4271 §6.3 / RFC 7606 §4: lengths that exceed the message make
    // it impossible to find the NLRI: Malformed Attribute List, reset.
    let Some(wlen) = read_u16(body, 0).map(usize::from) else {
        s.reset(sub::MALFORMED_ATTRIBUTE_LIST, &[]);
        return s;
    };
    let Some(alen) = read_u16(body, 2 + wlen).map(usize::from) else {
        s.reset(sub::MALFORMED_ATTRIBUTE_LIST, &[]);
        return s;
    };
    let a_start = 4 + wlen;
    if a_start + alen > body.len() {
        s.reset(sub::MALFORMED_ATTRIBUTE_LIST, &[]);
        return s;
    }
    s.withdrawn = (2, 2 + wlen);
    s.attrs_range = (a_start, a_start + alen);
    s.nlri = (a_start + alen, body.len());
    // RFC 7606 §5.3: NLRI that cannot be parsed means session reset.
    let v4_ok = |r: (usize, usize)| check_nlri(&body[r.0..r.1], 32, ctx.add_path_v4);
    if v4_ok(s.withdrawn).is_none() {
        s.reset(sub::INVALID_NETWORK_FIELD, &[]);
        return s;
    }
    match v4_ok(s.nlri) {
        None => {
            s.reset(sub::INVALID_NETWORK_FIELD, &[]);
            return s;
        }
        Some(n) => s.has_reach = n > 0,
    }
    walk_attributes(body, ctx, &mut s);
    if matches!(s.verdict, Verdict::SessionReset(_)) {
        return s;
    }
    check_mandatory(&mut s);
    check_missing_nlri(&mut s);
    s
}

/// RFC 7606 §5.2: an UPDATE that announces nothing yet carries
/// attributes other than MP_UNREACH_NLRI is not one RFC 4271 or RFC 4724
/// defines, so its NLRI may have been misread: any error in it that is
/// not a session reset is a treat-as-withdraw.
fn check_missing_nlri(s: &mut Scan) {
    if s.has_reach || s.verdict != Verdict::AttributeDiscard {
        return;
    }
    if s.attrs.iter().all(|a| a.code == MP_UNREACH) {
        return;
    }
    let code = s.attrs.iter().find(|a| !a.keep).map_or(0, |a| a.code);
    s.withdraw(sub::MALFORMED_ATTRIBUTE_LIST, &[code]);
}

fn walk_attributes(body: &[u8], ctx: &UpdateContext, s: &mut Scan) {
    let (mut at, end) = s.attrs_range;
    let mut seen = [false; 256];
    while at < end {
        // RFC 7606 §4: too few bytes for an attribute header, or a length
        // running past the attribute section: treat-as-withdraw, and the
        // NLRI is still found through Total Attribute Length.
        let flags = body[at];
        let hdr = if flags & FLAG_EXTENDED != 0 { 4 } else { 3 };
        if end - at < hdr {
            s.withdraw(sub::MALFORMED_ATTRIBUTE_LIST, &[]);
            return;
        }
        let code = body[at + 1];
        let vlen = if hdr == 4 {
            usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]))
        } else {
            usize::from(body[at + 2])
        };
        let vstart = at + hdr;
        if vstart + vlen > end {
            s.withdraw(sub::ATTRIBUTE_LENGTH, &[]);
            return;
        }
        let idx = s.attrs.len();
        s.attrs.push(AttrSpan {
            flags,
            code,
            start: at,
            end: vstart + vlen,
            value_start: vstart,
            keep: true,
        });
        at = vstart + vlen;
        let raw = &body[s.attrs[idx].start..s.attrs[idx].end];
        // RFC 7606 §3 g: a repeated MP_(UN)REACH resets the session, any
        // other repeat is discarded after the first.
        if seen[usize::from(code)] {
            if code == MP_REACH || code == MP_UNREACH {
                s.reset(sub::MALFORMED_ATTRIBUTE_LIST, &[]);
                return;
            }
            s.discard(idx);
            continue;
        }
        seen[usize::from(code)] = true;
        let optional = flags & FLAG_OPTIONAL != 0;
        let transitive = flags & FLAG_TRANSITIVE != 0;
        match expected_flags(code) {
            None if !optional => {
                // RFC 4271 §6.3, unchanged by RFC 7606.
                s.reset(sub::UNRECOGNIZED_WELL_KNOWN, raw);
                return;
            }
            None => {
                // Unrecognised optional: non-transitive ones are quietly
                // ignored; transitive ones are carried, never given to
                // netgauze (it may know the code and disagree).
                if !transitive {
                    s.attrs[idx].keep = false;
                }
                continue;
            }
            Some((o, t)) if (o, t) != (optional, transitive) => {
                // RFC 7606 §3 c, but for attributes whose errors are handled by discarding
                // them (see `discarded_on_error`).
                if discarded_on_error(code, ctx) {
                    s.discard(idx);
                    continue;
                }
                s.withdraw(sub::ATTRIBUTE_FLAGS, raw);
                // MP_(UN)REACH_NLRI are still read: treat-as-withdraw
                // needs their prefixes (RFC 7606 §2), and one that
                // cannot be parsed still resets the session.
                if code != MP_REACH && code != MP_UNREACH {
                    continue;
                }
            }
            Some(_) => {}
        }
        let v = &body[vstart..vstart + vlen];
        check_attribute(code, v, raw, idx, ctx, s);
        if matches!(s.verdict, Verdict::SessionReset(_)) {
            return;
        }
    }
}

/// Attributes whose errors, bad flags included, are handled by discarding the attribute
/// rather than the route: ATOMIC_AGGREGATE and AGGREGATOR (RFC 7606 §3 f: where RFC 4271
/// says reset, as it does for flags, they are discarded), AS4_PATH and AS4_AGGREGATOR (RFC
/// 6793 §6), and from an external peer LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST, which are
/// discarded from there whatever they hold (RFC 7606 §7.5, §7.9, §7.10).
fn discarded_on_error(code: u8, ctx: &UpdateContext) -> bool {
    matches!(
        code,
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR
    ) || (!ctx.ibgp && matches!(code, LOCAL_PREF | ORIGINATOR_ID | CLUSTER_LIST))
}

/// The attribute-specific rules of RFC 7606 §7 (and RFC 6793 §6, RFC 8092
/// §6 for AS4_* and large communities).
// One arm per attribute reads as the RFC's table; moving conditions into
// match guards would split each rule over two places.
#[allow(clippy::collapsible_match)]
fn check_attribute(code: u8, v: &[u8], raw: &[u8], idx: usize, ctx: &UpdateContext, s: &mut Scan) {
    let asn_len = if ctx.four_octet_as { 4 } else { 2 };
    let nonzero_multiple = |n: usize| !v.is_empty() && v.len().is_multiple_of(n);
    match code {
        ORIGIN => {
            if v.len() != 1 || v[0] > 2 {
                s.withdraw(sub::INVALID_ORIGIN, raw);
            }
        }
        AS_PATH => match check_as_path(v, asn_len) {
            None => s.withdraw(sub::MALFORMED_AS_PATH, &[]),
            // We are not a confederation member (RFC 5065): confed
            // segments from any peer make the path malformed.
            Some(_) if as_path_has_confed(v, asn_len) => {
                s.withdraw(sub::MALFORMED_AS_PATH, &[]);
            }
            // RFC 4271 §6.3: from eBGP the leftmost AS is the peer's.
            Some(first) if !ctx.ibgp => {
                if !matches!(first, Some((2, asn)) if asn == ctx.peer_as) {
                    s.withdraw(sub::MALFORMED_AS_PATH, &[]);
                }
            }
            Some(_) => {}
        },
        NEXT_HOP => {
            // RFC 4271 §6.3: a semantically wrong next hop makes the
            // route unusable, without a NOTIFICATION.
            let usable = |v: &[u8]| <[u8; 4]>::try_from(v).is_ok_and(usable_ipv4_next_hop);
            if s.nlri.0 == s.nlri.1 {
                // RFC 4760 §3: with no NLRI but MP_REACH_NLRI's, NEXT_HOP
                // SHOULD be ignored, so a bad one costs nothing more.
                if !usable(v) {
                    s.discard(idx);
                }
            } else if v.len() != 4 {
                s.withdraw(sub::ATTRIBUTE_LENGTH, raw);
            } else if !usable(v) {
                s.withdraw(sub::INVALID_NEXT_HOP, raw);
            }
        }
        MED => {
            if v.len() != 4 {
                s.withdraw(sub::ATTRIBUTE_LENGTH, raw);
            }
        }
        LOCAL_PREF => {
            if !ctx.ibgp {
                s.discard(idx);
            } else if v.len() != 4 {
                s.withdraw(sub::ATTRIBUTE_LENGTH, raw);
            }
        }
        ATOMIC_AGGREGATE => {
            if !v.is_empty() {
                s.discard(idx);
            }
        }
        AGGREGATOR => {
            // RFC 7606 §7.7; RFC 7607 §2: AS 0 is not passed on.
            if v.len() != asn_len + 4 || v[..asn_len].iter().all(|b| *b == 0) {
                s.discard(idx);
            }
        }
        COMMUNITIES => {
            if !nonzero_multiple(4) {
                s.withdraw(sub::OPTIONAL_ATTRIBUTE, raw);
            }
        }
        ORIGINATOR_ID => {
            if !ctx.ibgp {
                s.discard(idx);
            } else if v.len() != 4 {
                s.withdraw(sub::ATTRIBUTE_LENGTH, raw);
            }
        }
        CLUSTER_LIST => {
            if !ctx.ibgp {
                s.discard(idx);
            } else if !nonzero_multiple(4) {
                s.withdraw(sub::ATTRIBUTE_LENGTH, raw);
            }
        }
        EXT_COMMUNITIES => {
            if !nonzero_multiple(8) {
                s.withdraw(sub::OPTIONAL_ATTRIBUTE, raw);
            }
        }
        IPV6_EXT_COMMUNITIES => {
            if !nonzero_multiple(20) {
                s.withdraw(sub::OPTIONAL_ATTRIBUTE, raw);
            }
        }
        LARGE_COMMUNITIES => {
            if !nonzero_multiple(12) {
                s.withdraw(sub::OPTIONAL_ATTRIBUTE, raw);
            }
        }
        AS4_PATH => {
            // RFC 6793: from a 4-octet speaker it is ignored (§4.1);
            // malformed it is discarded (§6). Confederation segments are
            // not allowed in it, but only they are dropped, when it is
            // read (§3: "MUST discard these path segments ... and
            // continue processing").
            if ctx.four_octet_as || check_as_path(v, 4).is_none() {
                s.discard(idx);
            }
        }
        AS4_AGGREGATOR => {
            if ctx.four_octet_as || v.len() != 8 || v[..4] == [0; 4] {
                s.discard(idx);
            }
        }
        MP_REACH => check_mp_reach(v, raw, idx, ctx, s),
        MP_UNREACH => check_mp_unreach(v, raw, idx, ctx, s),
        _ => {
            // Recognised by flags table but not interpreted: pass on.
        }
    }
}

fn as_path_has_confed(mut v: &[u8], asn_len: usize) -> bool {
    while let [ty, count, rest @ ..] = v {
        if *ty >= 3 {
            return true;
        }
        v = rest.get(usize::from(*count) * asn_len..).unwrap_or(&[]);
    }
    false
}

/// RFC 7606 §7.11 / RFC 4760 §7: a next hop of the wrong length or NLRI
/// that cannot be parsed leaves us unable to find the prefixes: reset with
/// Optional Attribute Error, the attribute (`raw`) as data (RFC 4271 §6.3).
/// Families we did not negotiate are ignored.
fn check_mp_reach(v: &[u8], raw: &[u8], idx: usize, ctx: &UpdateContext, s: &mut Scan) {
    let (Some(afi), Some(&safi), Some(&nh_len)) = (read_u16(v, 0), v.get(2), v.get(3)) else {
        s.reset(sub::OPTIONAL_ATTRIBUTE, raw);
        return;
    };
    let Some(family) = Family::from_afi_safi(afi, safi).filter(|f| ctx.families.contains(f)) else {
        s.discard(idx);
        return;
    };
    let nh_ok = match family {
        Family::Ipv4Unicast => nh_len == 4,
        Family::Ipv6Unicast => nh_len == 16 || nh_len == 32,
    };
    let nlri_at = 4 + usize::from(nh_len) + 1;
    if !nh_ok || v.len() < nlri_at {
        s.reset(sub::OPTIONAL_ATTRIBUTE, raw);
        return;
    }
    // RFC 4760 §3 and RFC 4271 §6.3: a next hop no router could forward
    // to makes the attribute's routes unusable, as NEXT_HOP's do.
    let nh = &v[4..4 + usize::from(nh_len)];
    let usable = match family {
        Family::Ipv4Unicast => nh.first_chunk().is_some_and(|a| usable_ipv4_next_hop(*a)),
        Family::Ipv6Unicast => nh.first_chunk().is_some_and(|a| usable_ipv6_next_hop(*a)),
    };
    if !usable {
        s.withdraw(sub::INVALID_NEXT_HOP, &[]);
    }
    let at = s.attrs[idx].value_start + nlri_at;
    match check_mp_nlri(&v[nlri_at..], at, family, ctx, s) {
        None => s.reset(sub::OPTIONAL_ATTRIBUTE, raw),
        Some(n) => s.has_reach |= n > 0,
    }
}

/// An IPv4 next hop a route may use: a unicast host address, not this
/// host's own loopback (127/8 is not reachable on any link: BIRD and
/// Linux refuse it too).
fn usable_ipv4_next_hop(a: [u8; 4]) -> bool {
    let nh = std::net::Ipv4Addr::from(a);
    !(nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() || nh.is_loopback())
}

/// The global IPv6 next hop of MP_REACH_NLRI (RFC 2545 §3): not the
/// unspecified or loopback address, not multicast, and not an
/// IPv4-mapped address (what a speaker with no IPv6 address of its own
/// may fill in; no IPv6 neighbor has it). A link-local address alone
/// stays usable: peers on one link may send only that.
fn usable_ipv6_next_hop(a: [u8; 16]) -> bool {
    let nh = std::net::Ipv6Addr::from(a);
    !(nh.is_unspecified() || nh.is_loopback() || nh.is_multicast() || nh.to_ipv4_mapped().is_some())
}

fn check_mp_unreach(v: &[u8], raw: &[u8], idx: usize, ctx: &UpdateContext, s: &mut Scan) {
    let (Some(afi), Some(&safi)) = (read_u16(v, 0), v.get(2)) else {
        s.reset(sub::OPTIONAL_ATTRIBUTE, raw);
        return;
    };
    let Some(family) = Family::from_afi_safi(afi, safi).filter(|f| ctx.families.contains(f)) else {
        s.discard(idx);
        return;
    };
    let at = s.attrs[idx].value_start + 3;
    if check_mp_nlri(&v[3..], at, family, ctx, s).is_none() {
        s.reset(sub::OPTIONAL_ATTRIBUTE, raw);
    }
}

/// RFC 7606 §3 d: a message that announces routes without ORIGIN,
/// AS_PATH, or (for body NLRI) NEXT_HOP is treated as withdraw.
fn check_mandatory(s: &mut Scan) {
    if !s.has_reach {
        return;
    }
    let present = |code: u8| s.attrs.iter().any(|a| a.code == code);
    let mut missing = None;
    if !present(ORIGIN) {
        missing = Some(ORIGIN);
    } else if !present(AS_PATH) {
        missing = Some(AS_PATH);
    } else if s.nlri.1 > s.nlri.0 && !present(NEXT_HOP) {
        missing = Some(NEXT_HOP);
    }
    if let Some(code) = missing {
        s.withdraw(sub::MISSING_WELL_KNOWN, &[code]);
    }
}

/// Rebuilds the body for netgauze: dropped attributes removed, unknown
/// transitive attributes removed (they are read from the raw bytes), the
/// Partial bit cleared where netgauze insists on zero. With
/// `reach_only`, only MP_REACH/MP_UNREACH are kept (treat-as-withdraw needs
/// nothing but the prefixes). Returns `None` when the body can be used
/// as is.
pub fn sanitize(body: &[u8], s: &Scan, reach_only: bool) -> Option<Vec<u8>> {
    let needs_change = reach_only
        || !s.ignored_prefixes.is_empty()
        || s.attrs.iter().any(|a| {
            !a.keep || !decoded_by_netgauze(a.code) || wire_flags(a.flags, a.code) != a.flags
        });
    if !needs_change {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..s.withdrawn.1]);
    out.extend_from_slice(&[0, 0]);
    let attr_start = out.len();
    for a in &s.attrs {
        let interpreted = decoded_by_netgauze(a.code);
        let wanted = if reach_only {
            a.code == MP_REACH || a.code == MP_UNREACH
        } else {
            true
        };
        if !a.keep || !interpreted || !wanted {
            continue;
        }
        copy_attribute(body, a, &s.ignored_prefixes, &mut out);
    }
    let alen = out.len() - attr_start;
    let alen = u16::try_from(alen).unwrap_or(u16::MAX).to_be_bytes();
    out[attr_start - 2] = alen[0];
    out[attr_start - 1] = alen[1];
    out.extend_from_slice(&body[s.nlri.0..s.nlri.1]);
    Some(out)
}

/// Appends attribute `a` with the flags netgauze wants, and without the
/// `ignored` prefixes that fall inside it.
fn copy_attribute(body: &[u8], a: &AttrSpan, ignored: &[(usize, usize)], out: &mut Vec<u8>) {
    let mut cut = ignored
        .iter()
        .filter(|(from, to)| a.value_start <= *from && *to <= a.end)
        .peekable();
    if cut.peek().is_none() {
        out.push(wire_flags(a.flags, a.code));
        out.extend_from_slice(&body[a.start + 1..a.end]);
        return;
    }
    // Shorter now: a new header, with Extended Length to keep it simple.
    let mut value = Vec::with_capacity(a.end - a.value_start);
    let mut from = a.value_start;
    for (skip_from, skip_to) in cut {
        value.extend_from_slice(&body[from..*skip_from]);
        from = *skip_to;
    }
    value.extend_from_slice(&body[from..a.end]);
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.push(wire_flags(a.flags, a.code) | FLAG_EXTENDED);
    out.push(a.code);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&value);
}

pub fn is_recognised(code: u8) -> bool {
    expected_flags(code).is_some()
}

/// Attributes handed to netgauze; the rest (unrecognised, extended
/// communities, AS4_AGGREGATOR, which netgauze does not know, and
/// AS4_PATH, whose confederation segments it cannot read) are read from
/// the raw bytes, which is all they need.
pub fn decoded_by_netgauze(code: u8) -> bool {
    expected_flags(code).is_some()
        && !matches!(
            code,
            EXT_COMMUNITIES | IPV6_EXT_COMMUNITIES | AS4_AGGREGATOR | AS4_PATH
        )
}

/// The flags a recognised attribute is handed to netgauze with, which
/// refuses any it does not expect: Optional and Transitive as the RFCs
/// fix them (a conflict has already decided the verdict, RFC 7606 §3 c),
/// and Partial cleared where RFC 4271 §4.3 says it is 0 (RFC 7606 leaves
/// a wrong Partial bit out of its checks, so we accept it and normalise).
/// Extended Length is kept: it says how to read the length.
fn wire_flags(flags: u8, code: u8) -> u8 {
    let Some((optional, transitive)) = expected_flags(code) else {
        return flags;
    };
    let mut f = flags & (FLAG_PARTIAL | FLAG_EXTENDED);
    if optional {
        f |= FLAG_OPTIONAL;
    }
    if transitive {
        f |= FLAG_TRANSITIVE;
    }
    if !(optional && transitive) {
        f &= !FLAG_PARTIAL;
    }
    f
}
