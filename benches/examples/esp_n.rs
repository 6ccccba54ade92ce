//! Runs one ESP operation N times, for `valgrind --tool=callgrind`: instructions per operation
//! are `(Ir(N2) - Ir(N1)) / (N2 - N1)` (see `benches/callgrind.sh esp`).
//!
//! ```text
//! esp_n seal|open|encap|decap SIZE [COUNT]
//! ```
//!
//! `seal`/`open` are `ring` AES-128-GCM over SIZE bytes with ESP's 8 bytes of AAD (the limit
//! `benches/esp.rs` measures); `encap`/`decap` are tunnel-mode ESP (GCM-128, UDP-encapsulated
//! IPv4) of a SIZE-byte inner IPv4 packet, as `benches/esp.rs` runs them.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use switchyard_ipsec::crypto::{AeadAlgorithm, SecretBytes, SoftwareBackend};
use switchyard_ipsec::esp::{
    decapsulate, encapsulate_in_place, Direction, EspKeys, EspSuite, Lifetime, OuterHeader, Sa,
    SaConfig,
};

const HEADROOM: usize = 64;
const TAILROOM: usize = 64;

fn usage() -> ! {
    eprintln!("usage: esp_n seal|open|encap|decap SIZE [COUNT]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or_else(|| usage());
    let size: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let count: u64 = match args.get(3) {
        None => 100_000,
        Some(s) => s.parse().unwrap_or_else(|_| usage()),
    };
    if !(20..=9000).contains(&size) {
        usage();
    }
    let mut inner = vec![0u8; size];
    inner[0] = 0x45;
    inner[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    inner[8] = 64;
    inner[9] = 17;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0x11; 16]).expect("key"));
    let backend = SoftwareBackend::new();
    let suite = EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16);
    let config = SaConfig {
        spi: 0x1000,
        suite,
        keys: EspKeys {
            encryption: SecretBytes::new((0..20u8).collect()),
            integrity: SecretBytes::new(Vec::new()),
        },
        esn: false,
        replay_window: 0,
        lifetime: Lifetime::default(),
    };
    let outer = OuterHeader::new(
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
    )
    .with_udp(4500, 4500);
    let mut out_sa = Sa::new(&backend, &config, Direction::Outbound, 0).expect("SA");
    let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
    match mode {
        "seal" => {
            let mut work = inner.clone();
            for n in 0..count {
                work.copy_from_slice(&inner);
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from([0u8; 8]),
                        &mut work,
                    )
                    .expect("seal");
                black_box(tag.as_ref()[0]);
            }
        }
        "open" => {
            let mut sealed = inner.clone();
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from([0u8; 8]),
                    &mut sealed,
                )
                .expect("seal");
            sealed.extend_from_slice(tag.as_ref());
            let mut work = sealed.clone();
            for _ in 0..count {
                work.copy_from_slice(&sealed);
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::from([0u8; 8]),
                        &mut work,
                    )
                    .expect("open");
                black_box(plain.len());
            }
        }
        "encap" => {
            for _ in 0..count {
                buf[HEADROOM..HEADROOM + size].copy_from_slice(&inner);
                let range = encapsulate_in_place(
                    &mut out_sa,
                    &mut buf,
                    HEADROOM..HEADROOM + size,
                    &outer,
                    0,
                )
                .expect("encapsulate");
                black_box(range);
            }
        }
        "decap" => {
            buf[HEADROOM..HEADROOM + size].copy_from_slice(&inner);
            let range =
                encapsulate_in_place(&mut out_sa, &mut buf, HEADROOM..HEADROOM + size, &outer, 0)
                    .expect("encapsulate");
            let packet = buf[range].to_vec();
            let mut in_sa = Sa::new(&backend, &config, Direction::Inbound, 0).expect("SA");
            let mut work = packet.clone();
            for _ in 0..count {
                work.copy_from_slice(&packet);
                let d = decapsulate(&mut in_sa, &mut work, 0).expect("decapsulate");
                black_box(d.inner);
            }
        }
        _ => usage(),
    }
}
