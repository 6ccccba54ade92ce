//! IPv6: fixed header round trip and the bounded extension-header walker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::wire::ipv6::MAX_EXTENSION_HEADERS;
use switchyard_dataplane::wire::{Ipv6Packet, Ipv6Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Ipv6Packet::new_checked(data) else {
        return;
    };
    if let Ok(ext) = packet.extension_headers() {
        assert!(ext.upper_offset <= packet.packet_len());
        assert!(ext.next_header_offset < ext.upper_offset.max(7));
        assert!(ext.count <= MAX_EXTENSION_HEADERS);
        assert_eq!(data[ext.next_header_offset], ext.upper_protocol.0);
    }
    let Ok(repr) = Ipv6Repr::parse(&packet) else {
        return;
    };
    let mut out = vec![0u8; repr.buffer_len()];
    let mut emitted = Ipv6Packet::new_unchecked(&mut out[..]);
    repr.emit(&mut emitted).expect("buffer sized by buffer_len");
    emitted.payload_mut().copy_from_slice(packet.payload());
    assert_eq!(&out[..], &data[..repr.buffer_len()]);
});
