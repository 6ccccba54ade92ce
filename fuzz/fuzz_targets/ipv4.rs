//! IPv4: view, repr round trip, and the in-place router operations on valid headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::wire::{Ipv4Packet, Ipv4Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Ipv4Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.options(),
        packet.payload(),
        packet.is_first_fragment(),
    );

    // Fix the checksum on a copy so the repr path is reached, not just the checksum check.
    let mut copy = data.to_vec();
    let mut fixed = Ipv4Packet::new_unchecked(&mut copy[..]);
    fixed.fill_checksum();
    let repr = match Ipv4Repr::parse(&fixed) {
        Ok(repr) => repr,
        Err(err) => panic!("valid header rejected: {err}"),
    };

    // TTL decrement keeps the checksum valid (RFC 1624 update).
    let before = fixed.ttl();
    let after = fixed.decrement_ttl();
    assert_eq!(after, before.saturating_sub(1));
    assert!(fixed.verify_checksum());

    let mut out = vec![0u8; repr.buffer_len()];
    let mut emitted = Ipv4Packet::new_unchecked(&mut out[..]);
    if repr.emit(&mut emitted).is_ok() {
        let reparsed = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&out[..]));
        assert_eq!(reparsed, Ok(repr));
    }
});
