//! TCP, UDP and SCTP over both address families: parse with fixed-up checksums, re-emit,
//! re-parse.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::wire::{
    IpAddrPair, SctpPacket, SctpRepr, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};

fn pairs() -> [IpAddrPair; 2] {
    [
        IpAddrPair::V4 {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
        },
        IpAddrPair::V6 {
            src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    for addrs in pairs() {
        let mut tcp = data.to_vec();
        if let Ok(mut packet) = TcpPacket::new_checked(&mut tcp[..]) {
            let _ = (packet.mss(), packet.window_scale());
            packet.fill_checksum(&addrs);
            let packet = TcpPacket::new_unchecked(&tcp[..]);
            if let Ok(repr) = TcpRepr::parse(&packet, &addrs) {
                let mut out = vec![0u8; repr.buffer_len()];
                repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]), &addrs)
                    .expect("buffer sized by buffer_len");
                let reparsed = TcpPacket::new_unchecked(&out[..]);
                assert_eq!(TcpRepr::parse(&reparsed, &addrs), Ok(repr));
            }
        }

        let mut udp = data.to_vec();
        if let Ok(mut packet) = UdpPacket::new_checked(&mut udp[..]) {
            packet.fill_checksum(&addrs);
            let packet = UdpPacket::new_unchecked(&udp[..]);
            let repr = UdpRepr::parse(&packet, &addrs).expect("checksum just filled");
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut UdpPacket::new_unchecked(&mut out[..]), &addrs)
                .expect("buffer sized by buffer_len");
            let reparsed = UdpPacket::new_unchecked(&out[..]);
            assert_eq!(UdpRepr::parse(&reparsed, &addrs), Ok(repr));
        }
    }

    let mut sctp = data.to_vec();
    if let Ok(mut packet) = SctpPacket::new_checked(&mut sctp[..]) {
        packet.fill_checksum();
        let packet = SctpPacket::new_unchecked(&sctp[..]);
        let _ = packet.chunks().count();
        if let Ok(repr) = SctpRepr::parse(&packet) {
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut SctpPacket::new_unchecked(&mut out[..]))
                .expect("buffer sized by buffer_len");
            assert_eq!(&out[..], &sctp[..]);
        }
    }
});
