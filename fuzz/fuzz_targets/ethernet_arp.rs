//! Ethernet, VLAN tags and ARP: parse whatever arrives, and re-emit what parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, L2Header,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = EthernetFrame::new_checked(data) {
        if let Ok(repr) = EthernetRepr::parse(&frame) {
            let mut out = [0u8; 14];
            repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
            assert_eq!(&out[..], &data[..14]);
        }
    }

    if let Ok(l2) = L2Header::parse(data) {
        assert!(l2.header_len <= data.len());
        let l3 = &data[l2.header_len..];
        if l2.ethertype == EtherType::ARP {
            check_arp(l3);
        }
    }
    check_arp(data);
});

fn check_arp(data: &[u8]) {
    let Ok(packet) = ArpPacket::new_checked(data) else {
        return;
    };
    let Ok(repr) = ArpRepr::parse(&packet) else {
        return;
    };
    let mut out = [0u8; ArpRepr::LEN];
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
    assert_eq!(&out[..], &data[..ArpRepr::LEN]);
    let reparsed = ArpRepr::parse(&ArpPacket::new_unchecked(&out[..]));
    assert_eq!(reparsed, Ok(repr));
}
