//! ICMPv4, ICMPv6 and NDP: parse (with the checksum fixed up so parsing goes deep), re-emit,
//! re-parse; and the error builders on arbitrary "offending" packets.
#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::wire::{
    icmpv4, icmpv6, Icmpv4ErrorHeader, Icmpv4Packet, Icmpv4Repr, Icmpv6ErrorHeader, Icmpv6Packet,
    Icmpv6Repr,
};

const SRC: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const DST: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fuzz_target!(|data: &[u8]| {
    let mut v4 = data.to_vec();
    if let Ok(mut packet) = Icmpv4Packet::new_checked(&mut v4[..]) {
        packet.fill_checksum();
        let packet = Icmpv4Packet::new_unchecked(&v4[..]);
        if let Ok(repr) = Icmpv4Repr::parse(&packet) {
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]))
                .expect("buffer sized by buffer_len");
            let reparsed = Icmpv4Packet::new_unchecked(&out[..]);
            assert_eq!(Icmpv4Repr::parse(&reparsed), Ok(repr));
        }
    }

    let mut v6 = data.to_vec();
    if let Ok(mut packet) = Icmpv6Packet::new_checked(&mut v6[..]) {
        packet.fill_checksum(&SRC, &DST);
        let packet = Icmpv6Packet::new_unchecked(&v6[..]);
        if let Ok(repr) = Icmpv6Repr::parse(&packet, &SRC, &DST) {
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Icmpv6Packet::new_unchecked(&mut out[..]), &SRC, &DST)
                .expect("buffer sized by buffer_len");
            let reparsed = Icmpv6Packet::new_unchecked(&out[..]);
            assert_eq!(Icmpv6Repr::parse(&reparsed, &SRC, &DST), Ok(repr));
        }
    }

    let mut out = [0u8; 1500];
    let header = Icmpv4ErrorHeader::time_exceeded(0);
    let _ = icmpv4::error_allowed(data);
    if let Ok(len) = icmpv4::emit_error(&header, data, &mut out) {
        assert!(len + 20 <= icmpv4::MAX_ERROR_DATAGRAM_LEN);
        assert!(Icmpv4Packet::new_unchecked(&out[..len]).verify_checksum());
    }
    let header = Icmpv6ErrorHeader::param_problem(0, 6);
    let _ = icmpv6::error_allowed(&header, data);
    if let Ok(len) = icmpv6::emit_error(&header, &SRC, &DST, data, &mut out) {
        assert!(len + 40 <= icmpv6::MAX_ERROR_PACKET_LEN);
        assert!(Icmpv6Packet::new_unchecked(&out[..len]).verify_checksum(&SRC, &DST));
    }
});
