//! BGP decoding on arbitrary bytes: the framer (RFC 4271 §6.1 header checks), OPEN decode and
//! validation with capability negotiation, the RFC 7606 UPDATE check and decode under every
//! session context, NOTIFICATION and ROUTE-REFRESH. Nothing may panic; what decodes must be
//! consistent (a frame is exactly as long as its length field, a NOTIFICATION re-encodes to
//! the bytes it came from).
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use switchyard_bgp::capability;
use switchyard_bgp::config::{Family, SessionConfig};
use switchyard_bgp::notification::Notification;
use switchyard_bgp::open;
use switchyard_bgp::update_check::{self, UpdateContext};
use switchyard_bgp::update_rx;
use switchyard_bgp::wire::{self, Frame, Framer};

/// The session context an UPDATE is read under, from one selector byte.
fn context(sel: u8) -> UpdateContext {
    let families = match (sel >> 4) & 3 {
        0 => vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        1 => vec![Family::Ipv4Unicast],
        2 => vec![Family::Ipv6Unicast],
        _ => Vec::new(),
    };
    UpdateContext {
        ibgp: sel & 1 != 0,
        peer_as: if sel & 0x40 != 0 {
            4_200_000_000
        } else {
            65001
        },
        four_octet_as: sel & 2 != 0,
        families,
        add_path_v4: sel & 4 != 0,
        add_path_v6: sel & 8 != 0,
    }
}

fn config(sel: u8) -> SessionConfig {
    let peer_as = if sel & 0x40 != 0 {
        4_200_000_000
    } else {
        65001
    };
    let local_as = if sel & 1 != 0 { peer_as } else { 65000 };
    SessionConfig::new(local_as, Ipv4Addr::new(10, 0, 0, 1), peer_as)
}

fn frame_of(msg_type: u8, body: &[u8]) -> Frame {
    let mut bytes = vec![0xff; 16];
    bytes.extend_from_slice(&((wire::HEADER_LEN + body.len()).min(65535) as u16).to_be_bytes());
    bytes.push(msg_type);
    bytes.extend_from_slice(body);
    Frame { msg_type, bytes }
}

fn decode_update(body: &[u8], sel: u8) {
    let ctx = context(sel);
    // The scan alone, then the whole decode (which runs the scan again).
    let scan = update_check::scan(body, &ctx);
    let _ = update_check::sanitize(body, &scan, true);
    let _ = update_check::sanitize(body, &scan, false);
    if let Ok(u) = update_rx::decode(body, &ctx) {
        // Announcements come with their attributes.
        if !u.announced_v4.is_empty() {
            assert!(u.attrs_v4.is_some(), "v4 NLRI without attributes: {u:?}");
        }
        if !u.announced_v6.is_empty() {
            assert!(u.attrs_v6.is_some(), "v6 NLRI without attributes: {u:?}");
        }
        if !ctx.add_path_v4 {
            assert!(u
                .announced_v4
                .iter()
                .chain(&u.withdrawn_v4)
                .all(|n| n.path_id == 0));
        }
        if !ctx.add_path_v6 {
            assert!(u
                .announced_v6
                .iter()
                .chain(&u.withdrawn_v6)
                .all(|n| n.path_id == 0));
        }
    }
}

fn decode_open(frame: &Frame, sel: u8) {
    if let Ok(msg) = open::decode(frame) {
        let cfg = config(sel);
        if let Ok(peer_as) = open::validate(&msg, &cfg) {
            let neg =
                capability::negotiate(&cfg, peer_as, msg.bgp_id, msg.hold_time, &msg.capabilities);
            assert!(neg.hold_time == 0 || neg.hold_time >= 3);
            assert!(neg.hold_time <= cfg.hold_time);
            assert!(neg.families.iter().all(|f| cfg.families.contains(f)));
        }
    }
}

fn decode_notification(body: &[u8]) {
    match Notification::decode_body(body) {
        Some(n) => {
            let encoded = n.encode();
            if body.len() <= wire::MAX_MESSAGE_LEN - wire::HEADER_LEN {
                assert_eq!(&encoded[wire::HEADER_LEN..], body);
            }
            let mut f = Framer::new();
            f.push(&encoded);
            let back = f.next_frame(wire::MAX_MESSAGE_LEN).unwrap().unwrap();
            assert_eq!(back.bytes, encoded);
        }
        None => assert!(body.len() < 2),
    }
}

fn decode_frame(frame: &Frame, sel: u8) {
    match frame.msg_type {
        wire::MSG_OPEN => decode_open(frame, sel),
        wire::MSG_UPDATE => decode_update(frame.body(), sel),
        wire::MSG_NOTIFICATION => decode_notification(frame.body()),
        wire::MSG_ROUTE_REFRESH => {
            let r = wire::decode_route_refresh(frame);
            assert_eq!(r.is_ok(), frame.body().len() == 4);
        }
        wire::MSG_KEEPALIVE => assert_eq!(frame.bytes.len(), wire::HEADER_LEN),
        other => panic!("framer passed message type {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, sel, rest @ ..] = data else {
        return;
    };
    match mode % 4 {
        // A TCP stream, pushed in chunks of a size taken from the selector.
        0 => {
            let max = if sel & 0x80 != 0 {
                wire::MAX_EXTENDED_MESSAGE_LEN
            } else {
                wire::MAX_MESSAGE_LEN
            };
            let chunk = usize::from(mode >> 2).max(1);
            let mut framer = Framer::new();
            let mut total = 0usize;
            let mut framed = 0usize;
            'feed: for piece in rest.chunks(chunk) {
                framer.push(piece);
                total += piece.len();
                loop {
                    match framer.next_frame(max) {
                        Ok(Some(frame)) => {
                            let len =
                                usize::from(u16::from_be_bytes([frame.bytes[16], frame.bytes[17]]));
                            assert_eq!(frame.bytes.len(), len);
                            assert!(len >= wire::HEADER_LEN && len <= max);
                            framed += len;
                            decode_frame(&frame, *sel);
                        }
                        Ok(None) => break,
                        Err(n) => {
                            assert_eq!(n.code, 1, "header errors are code 1: {n:?}");
                            break 'feed;
                        }
                    }
                }
                assert_eq!(framer.pending() + framed, total);
            }
        }
        // An UPDATE body, without the framing.
        1 => decode_update(rest, *sel),
        // An OPEN body.
        2 => decode_open(&frame_of(wire::MSG_OPEN, rest), *sel),
        // A NOTIFICATION or ROUTE-REFRESH body.
        _ => {
            decode_notification(rest);
            let _ = wire::decode_route_refresh(&frame_of(wire::MSG_ROUTE_REFRESH, rest));
        }
    }
});
