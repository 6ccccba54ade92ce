//! ESP decapsulation in batches on the `crypto_aesni_gcm` cryptodev, N batches, for
//! `valgrind --tool=callgrind`: the instructions ESP adds to the device's own AEAD are
//! `Ir(decap) - Ir(open)` at the same N (see `benches/callgrind.sh esp-dev`).
//!
//! ```text
//! esp_dev_n open|decap|prepare|finish SIZE [BATCHES]
//! ```
//!
//! `open` is the device opening 32 buffers of SIZE bytes at a time (the limit
//! `benches/esp.rs` measures as `raw_aes128gcm_open_batch32`); `decap` is tunnel-mode ESP
//! (GCM-128, UDP-encapsulated IPv4) of 32 SIZE-byte inner packets as the decrypt node runs it:
//! prepare, one burst, finish (`esp_gcm128_decap_batch32`); `prepare` and `finish` are those
//! halves alone, 32 times per batch, without the device. The EAL starts with `--no-huge`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use switchyard_io::cryptodev::{Cryptodev, CryptodevConfig};
use switchyard_io::dpdk::Eal;
use switchyard_ipsec::crypto::{
    AeadAlgorithm, CryptoBackend, SecretBytes, SoftwareBackend, SymCtx, SymOp, SymParams,
};
use switchyard_ipsec::esp::{
    decapsulate_finish, decapsulate_prepare, decapsulate_prepare_into, encapsulate_in_place,
    Direction, EspKeys, EspSuite, Lifetime, OuterHeader, Sa, SaConfig,
};

const BATCH: usize = 32;
const HEADROOM: usize = 64;
const TAILROOM: usize = 64;

fn usage() -> ! {
    eprintln!("usage: esp_dev_n open|decap|prepare|finish SIZE [BATCHES]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or_else(|| usage());
    let size: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .filter(|s| (20..=9000).contains(s))
        .unwrap_or_else(|| usage());
    let batches: u64 = match args.get(3) {
        None => 1000,
        Some(s) => s.parse().unwrap_or_else(|_| usage()),
    };
    let eal_args: Vec<String> = [
        "esp_dev_n",
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "256",
        "-l",
        "0",
        "--log-level",
        "lib.eal:error",
        "--vdev",
        "crypto_aesni_gcm0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = Eal::init(&eal_args).unwrap_or_else(|e| {
        eprintln!("esp_dev_n: EAL: {e}");
        std::process::exit(1)
    });
    let dev =
        Cryptodev::start(&eal, &CryptodevConfig::new("crypto_aesni_gcm0")).unwrap_or_else(|e| {
            eprintln!("esp_dev_n: crypto_aesni_gcm0: {e}");
            std::process::exit(1)
        });

    let mut inner = vec![0u8; size];
    inner[0] = 0x45;
    inner[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    inner[8] = 64;
    inner[9] = 17;
    let config = SaConfig {
        spi: 0x1000,
        suite: EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16),
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

    match mode {
        "open" => {
            let aead = dev
                .aead(AeadAlgorithm::Aes128Gcm16, &[0x11; 16])
                .expect("key");
            let mut sealed = inner.clone();
            let mut tag = [0u8; 16];
            aead.seal(&[0; 12], &[0; 8], &mut sealed, &mut tag)
                .expect("seal");
            let mut bufs = vec![vec![0u8; size + 16]; BATCH];
            for _ in 0..batches {
                let mut ops: [SymOp<'_>; BATCH] = std::array::from_fn(|_| SymOp::default());
                for (op, buf) in ops.iter_mut().zip(bufs.iter_mut()) {
                    buf[..size].copy_from_slice(&sealed);
                    buf[size..].copy_from_slice(&tag);
                    let mut params = SymParams {
                        seal: false,
                        aad_len: 8,
                        text: 0..size,
                        digest_at: size,
                        icv_len: 16,
                        ..SymParams::default()
                    };
                    params.expected[..16].copy_from_slice(&tag);
                    *op = SymOp {
                        buf,
                        ctx: Some(SymCtx::Aead(aead.as_ref())),
                        params,
                        result: Ok(()),
                    };
                }
                dev.process(&mut ops);
                black_box(ops.iter().all(|o| o.result.is_ok()));
            }
        }
        "decap" => {
            // Sealed once in software: the same bytes the device opens.
            let software = SoftwareBackend::new();
            let mut out_sa = Sa::new(&software, &config, Direction::Outbound, 0).expect("SA");
            let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
            buf[HEADROOM..HEADROOM + size].copy_from_slice(&inner);
            let range =
                encapsulate_in_place(&mut out_sa, &mut buf, HEADROOM..HEADROOM + size, &outer, 0)
                    .expect("encapsulate");
            let packet = buf[range].to_vec();
            let mut in_sa = Sa::new(&dev, &config, Direction::Inbound, 0).expect("SA");
            let mut works = vec![vec![0u8; packet.len()]; BATCH];
            let mut pendings = Vec::with_capacity(BATCH);
            for _ in 0..batches {
                pendings.clear();
                let mut ops: [SymOp<'_>; BATCH] = std::array::from_fn(|_| SymOp::default());
                for (op, work) in ops.iter_mut().zip(works.iter_mut()) {
                    work.copy_from_slice(&packet);
                    // The parameters are written straight into the operation (no copy of them).
                    let pending = decapsulate_prepare_into(&mut in_sa, work, 0, &mut op.params)
                        .expect("prepare");
                    pendings.push(pending);
                    op.buf = work;
                    op.result = Ok(());
                }
                for op in ops.iter_mut() {
                    op.ctx = Some(in_sa.crypto_ctx());
                }
                dev.process(&mut ops);
                // Only the results are read back, as the node does (not the operations moved
                // out whole).
                let mut results = [Ok(()); BATCH];
                for (r, op) in results.iter_mut().zip(&ops) {
                    *r = op.result;
                }
                for ((work, pending), r) in works.iter_mut().zip(&pendings).zip(results) {
                    let d = decapsulate_finish(&mut in_sa, pending, work, r).expect("finish");
                    black_box(d.inner);
                }
            }
        }
        // The two halves alone, without the device (for their instructions).
        "prepare" | "finish" => {
            let software = SoftwareBackend::new();
            let mut out_sa = Sa::new(&software, &config, Direction::Outbound, 0).expect("SA");
            let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
            buf[HEADROOM..HEADROOM + size].copy_from_slice(&inner);
            let range =
                encapsulate_in_place(&mut out_sa, &mut buf, HEADROOM..HEADROOM + size, &outer, 0)
                    .expect("encapsulate");
            let packet = buf[range].to_vec();
            let mut in_sa = Sa::new(&dev, &config, Direction::Inbound, 0).expect("SA");
            let mut work = packet.clone();
            let (pending, params) = decapsulate_prepare(&mut in_sa, &mut work, 0).expect("prepare");
            let mut scratch = SymParams::default();
            let mut ops = [SymOp {
                buf: &mut work,
                ctx: Some(in_sa.crypto_ctx()),
                params,
                result: Ok(()),
            }];
            dev.process(&mut ops);
            let opened = work.clone();
            for _ in 0..batches * BATCH as u64 {
                if mode == "prepare" {
                    work.copy_from_slice(&packet);
                    let prepared = decapsulate_prepare_into(
                        &mut in_sa,
                        black_box(&mut work),
                        0,
                        black_box(&mut scratch),
                    );
                    black_box(prepared.is_ok());
                } else {
                    work.copy_from_slice(&opened);
                    let d = decapsulate_finish(&mut in_sa, &pending, black_box(&mut work), Ok(()));
                    black_box(d.map(|d| d.inner).ok());
                }
            }
        }
        _ => usage(),
    }
}
