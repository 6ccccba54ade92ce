//! ESP per packet on one core (issue 8): tunnel-mode encapsulation and decapsulation with the
//! software backend, at 64, 512 and 1420-byte inner packets, against the limit measured in the
//! same run: the same library's raw AEAD seal/open of the same bytes (`ring` AES-128-GCM, the
//! suite the software backend runs it with).
//!
//! ```sh
//! cargo bench -p switchyard-benches --bench esp
//! ```
//!
//! The same runs again on DPDK cryptodevs (`esp_cryptodev/...`): the `crypto_aesni_gcm` and
//! `crypto_aesni_mb` software poll-mode drivers, through the backend the dataplane uses
//! (`--crypto cryptodev:DEVICE`), against that backend's own AEAD seal/open of the same bytes.
//! The EAL starts with `--no-huge`; without the plugins the cryptodev runs are left out.
//!
//! Each iteration copies the packet into a work buffer first (ESP works in place), in the raw
//! runs as well, so the ratio compares like with like: everything ESP adds to the AEAD (header,
//! padding, trailer, sequence number and anti-replay, the outer IPv4 and UDP headers).
//!
//! A second limit, `raw_aes128gcm_seal_payload`, seals what ESP itself seals: the inner packet,
//! padding and the two trailer bytes, padded to the AES block (80 bytes for a 64-byte packet;
//! ESP pads GCM to 16 bytes because a partial last block costs ring more than a whole one, see
//! `EspSuite::block_len`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use switchyard_io::cryptodev::{Cryptodev, CryptodevConfig};
use switchyard_io::dpdk::Eal;
use switchyard_ipsec::crypto::{
    AeadAlgorithm, CbcAlgorithm, CryptoBackend, MacAlgorithm, SecretBytes, SoftwareBackend, SymCtx,
    SymOp, SymParams,
};
use switchyard_ipsec::esp::{
    decapsulate, decapsulate_finish, decapsulate_prepare_into, encapsulate_finish,
    encapsulate_in_place, encapsulate_prepare, Direction, EspKeys, EspSuite, Lifetime, OuterHeader,
    Sa, SaConfig,
};

const SIZES: [usize; 3] = [64, 512, 1420];
/// Packets per batch in the batch runs (the dataplane's crypto batch).
const BATCH: usize = 32;
const GCM: EspSuite = EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16);
const CBC: EspSuite = EspSuite::CbcHmac(CbcAlgorithm::Aes256Cbc, MacAlgorithm::HmacSha256_128);

fn config(suite: EspSuite) -> SaConfig {
    let (enc_len, int_len) = match suite {
        EspSuite::Gcm(a) => (a.key_len() + AeadAlgorithm::SALT_LEN, 0),
        EspSuite::CbcHmac(c, m) => (c.key_len(), m.key_len()),
    };
    let bytes = |n: usize, k: u8| (0..n).map(|i| (i as u8).wrapping_mul(13) ^ k).collect();
    SaConfig {
        spi: 0x1000,
        suite,
        keys: EspKeys {
            encryption: SecretBytes::new(bytes(enc_len, 0x11)),
            integrity: SecretBytes::new(bytes(int_len, 0x22)),
        },
        esn: false,
        // No anti-replay on the decapsulation side: the benchmark opens one packet again and
        // again (the window's own cost is a few instructions, measured in the ipsec tests).
        replay_window: 0,
        lifetime: Lifetime::default(),
    }
}

/// An IPv4 packet of `len` bytes (header plus zeroed payload), as a host behind the tunnel sends.
fn inner_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 18, 1, 2]);
    p[16..20].copy_from_slice(&[203, 0, 113, 5]);
    p
}

fn outer() -> OuterHeader {
    OuterHeader::new(
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
    )
    .with_udp(4500, 4500)
}

/// Room around the inner packet for the outer headers and the trailer.
const HEADROOM: usize = 64;
const TAILROOM: usize = 64;

fn esp(c: &mut Criterion) {
    let backend = SoftwareBackend::new();
    for size in SIZES {
        let inner = inner_packet(size);
        let mut group = c.benchmark_group(format!("esp/{size}B"));
        group.throughput(Throughput::Elements(1));

        // The limit: the AEAD alone over the same bytes, with ESP's 8 bytes of AAD; and over
        // ESP's own plaintext: the packet, padding to the AES block, the trailer.
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0x11; 16]).expect("key"));
        let payload = vec![0u8; (size + 2).div_ceil(16) * 16];
        for (name, plain) in [
            ("raw_aes128gcm_seal", &inner),
            ("raw_aes128gcm_seal_payload", &payload),
        ] {
            let mut work = vec![0u8; plain.len()];
            let mut counter = 0u64;
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    work.copy_from_slice(plain);
                    counter += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&counter.to_be_bytes());
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from([0u8; 8]),
                            &mut work,
                        )
                        .expect("seal");
                    black_box(tag.as_ref()[0]);
                })
            });
        }
        let sealed = {
            let mut w = inner.clone();
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from([0u8; 8]),
                    &mut w,
                )
                .expect("seal");
            w.extend_from_slice(tag.as_ref());
            w
        };
        let mut open_work = vec![0u8; sealed.len()];
        group.bench_function(BenchmarkId::new("raw_aes128gcm_open", size), |b| {
            b.iter(|| {
                open_work.copy_from_slice(&sealed);
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::from([0u8; 8]),
                        &mut open_work,
                    )
                    .expect("open");
                black_box(plain.len());
            })
        });

        esp_suites(
            &mut group,
            &backend,
            size,
            &inner,
            &[("gcm128", GCM), ("cbc256_sha256", CBC)],
        );
        group.finish();
    }
}

/// ESP encapsulation and decapsulation of `inner` with each of `suites` on `backend`.
fn esp_suites(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    backend: &dyn CryptoBackend,
    size: usize,
    inner: &[u8],
    suites: &[(&str, EspSuite)],
) {
    // Built once, as the dataplane builds it once per policy: the header keeps a template
    // that takes longer to make than to use.
    let outer = outer();
    for &(name, suite) in suites {
        let cfg = config(suite);
        let mut out_sa = Sa::new(backend, &cfg, Direction::Outbound, 0).expect("SA");
        let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
        group.bench_function(BenchmarkId::new(format!("esp_{name}_encap"), size), |b| {
            b.iter(|| {
                buf[HEADROOM..HEADROOM + size].copy_from_slice(inner);
                let range = encapsulate_in_place(
                    &mut out_sa,
                    &mut buf,
                    HEADROOM..HEADROOM + size,
                    &outer,
                    0,
                )
                .expect("encapsulate");
                black_box(range);
            })
        });
        // As the dataplane's encrypt node runs it: a vector's worth of packets prepared, their
        // crypto handed to the backend as one batch (a burst on a device), then finished.
        // Reported per batch of BATCH packets.
        // Like the dataplane, with no allocation per batch: the operations in an array.
        let mut bufs = vec![vec![0u8; HEADROOM + size + TAILROOM]; BATCH];
        let mut jobs = Vec::with_capacity(BATCH);
        group.bench_function(
            BenchmarkId::new(format!("esp_{name}_encap_batch{BATCH}"), size),
            |b| {
                b.iter(|| {
                    jobs.clear();
                    let mut ops: [SymOp<'_>; BATCH] = std::array::from_fn(|_| SymOp::default());
                    for (op, buf) in ops.iter_mut().zip(bufs.iter_mut()) {
                        buf[HEADROOM..HEADROOM + size].copy_from_slice(inner);
                        let (job, params) = encapsulate_prepare(
                            &mut out_sa,
                            buf,
                            HEADROOM..HEADROOM + size,
                            &outer,
                            0,
                        )
                        .expect("prepare");
                        jobs.push(job);
                        *op = SymOp {
                            buf,
                            ctx: None,
                            params,
                            result: Ok(()),
                        };
                    }
                    for op in ops.iter_mut() {
                        op.ctx = Some(out_sa.crypto_ctx());
                    }
                    backend.process(&mut ops);
                    let results = ops.map(|o| o.result);
                    for ((buf, job), r) in bufs.iter_mut().zip(&jobs).zip(results) {
                        black_box(encapsulate_finish(&mut out_sa, job, buf, r).expect("finish"));
                    }
                })
            },
        );
        // One packet to open again and again.
        let mut packet = vec![0u8; HEADROOM + size + TAILROOM];
        packet[HEADROOM..HEADROOM + size].copy_from_slice(inner);
        let range = encapsulate_in_place(
            &mut out_sa,
            &mut packet,
            HEADROOM..HEADROOM + size,
            &outer,
            0,
        )
        .expect("encapsulate");
        let packet = packet[range].to_vec();
        let mut in_sa = Sa::new(backend, &cfg, Direction::Inbound, 0).expect("SA");
        let mut work = vec![0u8; packet.len()];
        group.bench_function(BenchmarkId::new(format!("esp_{name}_decap"), size), |b| {
            b.iter(|| {
                work.copy_from_slice(&packet);
                let d = decapsulate(&mut in_sa, &mut work, 0).expect("decapsulate");
                black_box(d.inner);
            })
        });
        // The decrypt node's way, as for encapsulation above: per batch of BATCH packets.
        let mut works = vec![vec![0u8; packet.len()]; BATCH];
        let mut pendings = Vec::with_capacity(BATCH);
        group.bench_function(
            BenchmarkId::new(format!("esp_{name}_decap_batch{BATCH}"), size),
            |b| {
                b.iter(|| {
                    pendings.clear();
                    let mut ops: [SymOp<'_>; BATCH] = std::array::from_fn(|_| SymOp::default());
                    for (op, work) in ops.iter_mut().zip(works.iter_mut()) {
                        work.copy_from_slice(&packet);
                        let pending = decapsulate_prepare_into(&mut in_sa, work, 0, &mut op.params)
                            .expect("prepare");
                        pendings.push(pending);
                        op.buf = work;
                        op.result = Ok(());
                    }
                    for op in ops.iter_mut() {
                        op.ctx = Some(in_sa.crypto_ctx());
                    }
                    backend.process(&mut ops);
                    // Only the results are read back, as the node does (not the operations
                    // moved out whole).
                    let mut results = [Ok(()); BATCH];
                    for (r, op) in results.iter_mut().zip(&ops) {
                        *r = op.result;
                    }
                    for ((work, pending), r) in works.iter_mut().zip(&pendings).zip(results) {
                        let d = decapsulate_finish(&mut in_sa, pending, work, r).expect("finish");
                        black_box(d.inner);
                    }
                })
            },
        );
    }
}

/// The cryptodevs the ESP runs repeat on, if the EAL and the plugins are there.
fn cryptodevs() -> Vec<Cryptodev> {
    let args: Vec<String> = [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "512",
        "-l",
        "0",
        "--log-level",
        "lib.eal:error",
        "--log-level",
        "crypto:error",
        "--vdev",
        "crypto_aesni_gcm0",
        "--vdev",
        "crypto_aesni_mb0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = match Eal::init(&args) {
        Ok(eal) => eal,
        Err(e) => {
            eprintln!("no cryptodev runs: {e}");
            return Vec::new();
        }
    };
    ["crypto_aesni_gcm0", "crypto_aesni_mb0"]
        .iter()
        .filter_map(
            |d| match Cryptodev::start(&eal, &CryptodevConfig::new(*d)) {
                Ok(dev) => Some(dev),
                Err(e) => {
                    eprintln!("no {d} runs: {e}");
                    None
                }
            },
        )
        .collect()
}

fn esp_cryptodev(c: &mut Criterion) {
    for dev in cryptodevs() {
        let device = dev.driver_name().to_string();
        for size in SIZES {
            let inner = inner_packet(size);
            let mut group = c.benchmark_group(format!("esp_cryptodev/{device}/{size}B"));
            group.throughput(Throughput::Elements(1));
            // The limit: the backend's AEAD alone over the same bytes, ESP's 8 bytes of AAD.
            let aead = dev
                .aead(AeadAlgorithm::Aes128Gcm16, &[0x11; 16])
                .expect("key");
            let mut work = vec![0u8; size];
            let mut tag = [0u8; 16];
            let mut counter = 0u64;
            group.bench_function(BenchmarkId::new("raw_aes128gcm_seal", size), |b| {
                b.iter(|| {
                    work.copy_from_slice(&inner);
                    counter += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&counter.to_be_bytes());
                    aead.seal(&nonce, &[0; 8], &mut work, &mut tag)
                        .expect("seal");
                    black_box(tag[0]);
                })
            });
            let mut sealed = inner.clone();
            aead.seal(&[0; 12], &[0; 8], &mut sealed, &mut tag)
                .expect("seal");
            let sealed_tag = tag;
            group.bench_function(BenchmarkId::new("raw_aes128gcm_open", size), |b| {
                b.iter(|| {
                    work.copy_from_slice(&sealed);
                    aead.open(&[0; 12], &[0; 8], &mut work, &sealed_tag)
                        .expect("open");
                    black_box(work[0]);
                })
            });
            // The limit in bursts, as the ESP batches run: the same AEAD alone over BATCH
            // buffers handed over at once (per batch; divide by BATCH for a packet).
            let mut raw_bufs = vec![vec![0u8; size + 16]; BATCH];
            for seal in [true, false] {
                let name = if seal { "seal" } else { "open" };
                group.bench_function(
                    BenchmarkId::new(format!("raw_aes128gcm_{name}_batch{BATCH}"), size),
                    |b| {
                        b.iter(|| {
                            let mut ops: [SymOp<'_>; BATCH] =
                                std::array::from_fn(|_| SymOp::default());
                            for (op, buf) in ops.iter_mut().zip(raw_bufs.iter_mut()) {
                                let mut params = SymParams {
                                    seal,
                                    aad_len: 8,
                                    text: 0..size,
                                    digest_at: size,
                                    icv_len: 16,
                                    ..SymParams::default()
                                };
                                if seal {
                                    buf[..size].copy_from_slice(&inner);
                                } else {
                                    buf[..size].copy_from_slice(&sealed);
                                    buf[size..].copy_from_slice(&sealed_tag);
                                    params.expected[..16].copy_from_slice(&sealed_tag);
                                }
                                *op = SymOp {
                                    buf,
                                    ctx: Some(SymCtx::Aead(aead.as_ref())),
                                    params,
                                    result: Ok(()),
                                };
                            }
                            dev.process(&mut ops);
                            black_box(ops.iter().all(|o| o.result.is_ok()))
                        })
                    },
                );
            }
            // crypto_aesni_gcm does AES-GCM only.
            let suites: &[(&str, EspSuite)] = if device == "crypto_aesni_gcm" {
                &[("gcm128", GCM)]
            } else {
                &[("gcm128", GCM), ("cbc256_sha256", CBC)]
            };
            esp_suites(&mut group, &dev, size, &inner, suites);
            group.finish();
        }
        eprintln!("{device}: {:?}", dev.stats());
    }
}

criterion_group!(benches, esp, esp_cryptodev);
criterion_main!(benches);
