//! GRE, IP-in-IP and ESP: header parse and re-emit, decapsulation, ESP trailer and padding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::wire::{esp, ipip, EspPacket, EspRepr, EspTrailer, GrePacket, GreRepr};

fuzz_target!(|data: &[u8]| {
    let mut gre = data.to_vec();
    if let Ok(mut packet) = GrePacket::new_checked(&mut gre[..]) {
        packet.fill_checksum();
        let packet = GrePacket::new_unchecked(&gre[..]);
        let repr = GreRepr::parse(&packet).expect("checksum just filled");
        let payload = packet.payload();
        let mut out = vec![0u8; repr.buffer_len(payload.len())];
        let mut emitted = GrePacket::new_unchecked(&mut out[..]);
        repr.emit(&mut emitted).expect("buffer sized by buffer_len");
        emitted.payload_mut().copy_from_slice(payload);
        emitted.fill_checksum();
        assert_eq!(
            GreRepr::parse(&GrePacket::new_unchecked(&out[..])),
            Ok(repr)
        );
    }

    if let Ok(Some(tunnel)) = ipip::decapsulate(data) {
        assert_eq!(
            tunnel.inner_packet.as_ptr(),
            data[tunnel.inner_offset..].as_ptr()
        );
    }

    if let Ok(packet) = EspPacket::new_checked(data) {
        if let Ok(repr) = EspRepr::parse(&packet) {
            let mut out = [0u8; 8];
            repr.emit(&mut EspPacket::new_unchecked(&mut out[..]))
                .expect("buffer sized by header_len");
            assert_eq!(&out[..], &data[..8]);
        }
    }

    if let Ok((trailer, payload)) = EspTrailer::parse(data) {
        let mut tail = vec![0u8; trailer.len()];
        trailer.emit(&mut tail).expect("sized by len");
        assert_eq!(&tail[..], &data[payload.len()..]);
    }
    let _ = esp::classify_udp_encap(data);
});
