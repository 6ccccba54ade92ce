//! ESP GCM-128 encapsulation of a 64-byte packet, many times, for callgrind: compare the
//! instructions per packet with the raw seal of `ring` below it.
//!
//! `cargo build --release -p switchyard-ipsec --example esp_callgrind &&
//!  valgrind --tool=callgrind target/release/examples/esp_callgrind`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use switchyard_ipsec::crypto::{AeadAlgorithm, SecretBytes, SoftwareBackend};
use switchyard_ipsec::esp::{
    encapsulate_in_place, Direction, EspKeys, EspSuite, Lifetime, OuterHeader, Sa, SaConfig,
};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let config = SaConfig {
        spi: 0x1000,
        suite: EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16),
        keys: EspKeys {
            encryption: SecretBytes::new((0..20u8).collect()),
            integrity: SecretBytes::new(Vec::new()),
        },
        esn: true,
        replay_window: 0,
        lifetime: Lifetime::default(),
    };
    let mut sa = Sa::new(&SoftwareBackend::new(), &config, Direction::Outbound, 0).unwrap();
    let outer = OuterHeader::new(
        IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 2, 2)),
    )
    .with_udp(4500, 4500);
    let mut inner = vec![0u8; 64];
    inner[0] = 0x45;
    let mut buf = vec![0u8; 256];
    let headroom = 64;
    for _ in 0..n {
        buf[headroom..headroom + 64].copy_from_slice(&inner);
        let r = encapsulate_in_place(&mut sa, &mut buf, headroom..headroom + 64, &outer, 0);
        black_box(r.ok());
    }
}
