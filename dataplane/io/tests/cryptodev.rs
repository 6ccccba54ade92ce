//! The DPDK cryptodev backend against the software poll-mode drivers (`crypto_aesni_gcm`,
//! `crypto_aesni_mb`, `crypto_openssl`): every operation gives the bytes the software backend
//! gives, forged tags and ICVs are refused, and ESP made on a device opens in software and
//! the other way round. One test in one process, since the EAL starts once per process.
//!
//! Without the plugins this prints a SKIP line, unless `CI` is set: then it fails.

#![cfg(feature = "dpdk")]

use switchyard_dataplane::async_crypto::{AsyncCrypto, AsyncOp};
use switchyard_dataplane::buffer::PacketBuffer;
use switchyard_dataplane::graph::Packet;
use switchyard_io::cryptodev::{Cryptodev, CryptodevConfig};
use switchyard_io::dpdk::{DpdkConfig, DpdkDriver, Eal, Mbuf};
use switchyard_ipsec::crypto::{
    AeadAlgorithm, CbcAlgorithm, CryptoBackend, CryptoError, MacAlgorithm, SecretBytes,
    SoftwareBackend, SymOp,
};
use switchyard_ipsec::esp::{
    self, Direction, EspKeys, EspSuite, Lifetime, OuterHeader, Sa, SaConfig,
};

fn missing_capability(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("DPDK cryptodev capability missing (CI is set, so this fails): {what}");
    }
    eprintln!("SKIP cryptodev: {what}");
}

/// The devices under test and what each of them does (`crypto_aesni_gcm` is AEAD only).
const DEVICES: &[(&str, bool)] = &[
    ("crypto_aesni_gcm0", false),
    ("crypto_aesni_mb0", true),
    ("crypto_openssl0", true),
];

/// Deterministic bytes of length `len`, different for each `seed`.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(29)
                .wrapping_add(seed.wrapping_mul(71))
        })
        .collect()
}

#[test]
fn cryptodev_matches_software() {
    let prefix = format!("sy_test_crypto_{}", std::process::id());
    let mut args: Vec<String> = [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "512",
        "-l",
        "0",
        "--log-level",
        "lib.eal:error",
        "--file-prefix",
        &prefix,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (dev, _) in DEVICES {
        args.push("--vdev".into());
        args.push((*dev).into());
    }
    // A port for its mbuf pool: the asynchronous path takes packets in mbufs.
    args.push("--vdev".into());
    args.push("net_null0".into());
    let eal = match Eal::init(&args) {
        Ok(eal) => eal,
        Err(e) => return missing_capability(&format!("EAL init: {e}")),
    };
    let software = SoftwareBackend::new();
    let driver = match DpdkDriver::new(&eal, &["net_null0".to_string()], &DpdkConfig::default()) {
        Ok(d) => d,
        Err(e) => return missing_capability(&format!("net_null0: {e}")),
    };

    let missing = Cryptodev::start(&eal, &CryptodevConfig::new("crypto_nonexistent0"));
    let err = missing.expect_err("no such device").to_string();
    assert!(err.contains("crypto_nonexistent0"), "{err}");

    for &(name, cbc) in DEVICES {
        let dev = match Cryptodev::start(&eal, &CryptodevConfig::new(name)) {
            Ok(d) => d,
            Err(e) => return missing_capability(&format!("{name}: {e}")),
        };
        assert_eq!(dev.device_name(), name);
        assert!(!dev.driver_name().is_empty());
        gcm_matches(&dev, &software, name);
        if cbc {
            cbc_hmac_matches(&dev, &software, name);
        }
        let before = dev.stats();
        esp_round_trips(&dev, &software, name, cbc);
        let esp = dev.stats();
        // ESP runs on the device: only ESN with CBC+HMAC (two-piece ICV) goes to software.
        assert!(esp.operations > before.operations, "{name}: {esp:?}");
        assert_eq!(esp.session_failures, 0, "{name}: {esp:?}");
        if !cbc {
            assert_eq!(esp.software_calls, before.software_calls, "{name}: {esp:?}");
        }
        threads_share_the_device(&dev, name);
        let after = dev.stats();
        assert_eq!(after.operations, esp.operations + 2000, "{name}: {after:?}");
        assert_eq!(after.stuck_queue_pairs, 0);
        batches_match_software(&dev, &software, name, cbc);
        let batches = dev.stats();
        assert_eq!(
            batches.software_calls, after.software_calls,
            "{name}: {batches:?}"
        );
        assert_eq!(batches.session_failures, 0, "{name}: {batches:?}");
        asynchronous_on_mbufs(&dev, &driver, &software, name, cbc);
        let done = dev.stats();
        assert_eq!(done.abandoned, 0, "{name}: {done:?}");
        assert!(done.operations > batches.operations, "{name}: {done:?}");
        assert_eq!(
            done.software_calls, batches.software_calls,
            "{name}: {done:?}"
        );
    }
}

/// ESP through the asynchronous side, on the packets' own mbufs: a burst and more sealed on
/// the device (submitted, then polled until all are back, in order) opens in software; sealed
/// in software it opens on the device, a forged one alone refused.
fn asynchronous_on_mbufs(
    dev: &Cryptodev,
    driver: &DpdkDriver,
    software: &SoftwareBackend,
    name: &str,
    cbc: bool,
) {
    let outer = test_outer();
    const N: usize = 45;
    let poll_all = |n: usize| {
        let mut done: Vec<AsyncOp<Mbuf>> = Vec::new();
        for _ in 0..1_000_000 {
            AsyncCrypto::poll(dev, &mut done);
            if done.len() == n {
                break;
            }
        }
        assert_eq!(done.len(), n, "{name}: every operation comes back");
        assert_eq!(dev.in_flight(), 0);
        done
    };
    for suite in gcm_and_cbc(cbc, CbcAlgorithm::Aes128Cbc) {
        let config = sa_config(suite, false);
        let packets: Vec<Vec<u8>> = (0..N).map(|i| inner(40 + i * 29)).collect();
        let mut out = Sa::new(dev, &config, Direction::Outbound, 0).unwrap();
        let mut ops = Vec::new();
        let mut jobs = Vec::new();
        for (tag, p) in packets.iter().enumerate() {
            let mut m = driver.mbuf_from(p).expect("an mbuf");
            let head = outer.len() + 8 + suite.iv_len();
            assert!(m.push_front(head) && m.push_back(out.esp_overhead()));
            let (job, params) =
                esp::encapsulate_prepare(&mut out, m.data_mut(), head..head + p.len(), &outer, 0)
                    .unwrap();
            jobs.push(job);
            ops.push(AsyncOp {
                pkt: Packet::received(m, 0),
                params,
                tag: tag as u64,
                result: Ok(()),
            });
        }
        let ctxs = vec![Some(out.crypto_ctx()); N];
        assert_eq!(dev.submit(&mut ops, &ctxs), N, "{name}: all taken");
        assert!(ops.is_empty());
        let mut inb = Sa::new(software, &config, Direction::Inbound, 0).unwrap();
        let mut wires = Vec::new();
        for (i, mut op) in poll_all(N).into_iter().enumerate() {
            assert_eq!(op.tag, i as u64, "{name}: in submission order");
            let range =
                esp::encapsulate_finish(&mut out, &jobs[i], op.pkt.buf.data_mut(), op.result)
                    .unwrap_or_else(|e| panic!("{name} {suite:?} #{i}: {e:?}"));
            let mut wire = op.pkt.buf.data()[range].to_vec();
            wires.push(wire.clone());
            let d = esp::decapsulate(&mut inb, &mut wire, 0)
                .unwrap_or_else(|e| panic!("{name} {suite:?} #{i}: {e:?}"));
            assert_eq!(&wire[d.inner], &packets[i][..]);
        }

        // Opened on the device, the fifth forged.
        wires[4][30] ^= 0x40;
        let mut inb = Sa::new(dev, &config, Direction::Inbound, 0).unwrap();
        let mut ops = Vec::new();
        let mut jobs = Vec::new();
        for (tag, w) in wires.iter().enumerate() {
            let mut m = driver.mbuf_from(w).expect("an mbuf");
            let (job, params) = esp::decapsulate_prepare(&mut inb, m.data_mut(), 0).unwrap();
            jobs.push(job);
            ops.push(AsyncOp {
                pkt: Packet::received(m, 0),
                params,
                tag: tag as u64,
                result: Ok(()),
            });
        }
        let ctxs = vec![Some(inb.crypto_ctx()); N];
        assert_eq!(dev.submit(&mut ops, &ctxs), N);
        for (i, mut op) in poll_all(N).into_iter().enumerate() {
            let d = esp::decapsulate_finish(&mut inb, &jobs[i], op.pkt.buf.data_mut(), op.result);
            if i == 4 {
                assert_eq!(d.unwrap_err(), esp::EspError::Authentication, "{name}");
                continue;
            }
            let d = d.unwrap_or_else(|e| panic!("{name} {suite:?} #{i}: {e:?}"));
            assert_eq!(&op.pkt.buf.data()[d.inner], &packets[i][..]);
        }
    }
}

fn gcm_matches(dev: &Cryptodev, software: &SoftwareBackend, name: &str) {
    for algorithm in [AeadAlgorithm::Aes128Gcm16, AeadAlgorithm::Aes256Gcm16] {
        let key = bytes(1, algorithm.key_len());
        let hw = dev.aead(algorithm, &key).unwrap();
        let sw = software.aead(algorithm, &key).unwrap();
        // 8 and 12: ESP's AAD on the device; 20: IKE-like, the software fallback.
        for aad_len in [8, 12, 20] {
            for len in [1, 16, 63, 64, 512, 1420, 9000] {
                let nonce: [u8; 12] = bytes(len as u8, 12).try_into().unwrap();
                let aad = bytes(3, aad_len);
                let plain = bytes(4, len);
                let (mut a, mut b) = (plain.clone(), plain.clone());
                let (mut tag_a, mut tag_b) = ([0u8; 16], [0u8; 16]);
                hw.seal(&nonce, &aad, &mut a, &mut tag_a).unwrap();
                sw.seal(&nonce, &aad, &mut b, &mut tag_b).unwrap();
                assert_eq!(a, b, "{name} {algorithm:?} aad {aad_len} len {len}");
                assert_eq!(tag_a, tag_b, "{name} {algorithm:?} tag");
                hw.open(&nonce, &aad, &mut a, &tag_a).unwrap();
                assert_eq!(a, plain, "{name} open");
                let mut forged = tag_b;
                forged[15] ^= 1;
                assert_eq!(
                    hw.open(&nonce, &aad, &mut b, &forged),
                    Err(CryptoError::Authentication),
                    "{name} forged tag"
                );
            }
        }
    }
}

fn cbc_hmac_matches(dev: &Cryptodev, software: &SoftwareBackend, name: &str) {
    for cipher in [CbcAlgorithm::Aes128Cbc, CbcAlgorithm::Aes256Cbc] {
        for mac in [
            MacAlgorithm::HmacSha256_128,
            MacAlgorithm::HmacSha384_192,
            MacAlgorithm::HmacSha512_256,
        ] {
            let ck = bytes(5, cipher.key_len());
            let mk = bytes(6, mac.key_len());
            let hw = dev.cbc_hmac(cipher, &ck, mac, &mk).unwrap();
            let sw = software.cbc_hmac(cipher, &ck, mac, &mk).unwrap();
            for len in [16, 64, 512, 1424] {
                let iv: [u8; 16] = bytes(7, 16).try_into().unwrap();
                let plain = bytes(8, len);
                let (mut a, mut b) = (plain.clone(), plain.clone());
                hw.encrypt(&iv, &mut a).unwrap();
                sw.encrypt(&iv, &mut b).unwrap();
                assert_eq!(a, b, "{name} {cipher:?} encrypt {len}");
                hw.decrypt(&iv, &mut a).unwrap();
                assert_eq!(a, plain, "{name} {cipher:?} decrypt {len}");

                let mut icv_a = vec![0u8; mac.icv_len()];
                let mut icv_b = vec![0u8; mac.icv_len()];
                hw.sign(&[&b], &mut icv_a).unwrap();
                sw.sign(&[&b], &mut icv_b).unwrap();
                assert_eq!(icv_a, icv_b, "{name} {mac:?} sign");
                // Two pieces (ESN): the software fallback, same answer.
                hw.sign(&[&b[..8], &b[8..]], &mut icv_a).unwrap();
                assert_eq!(icv_a, icv_b, "{name} {mac:?} two pieces");
                hw.verify(&[&b], &icv_b).unwrap();
                icv_b[0] ^= 0x80;
                assert_eq!(
                    hw.verify(&[&b], &icv_b),
                    Err(CryptoError::Authentication),
                    "{name} {mac:?} forged ICV"
                );
                assert_eq!(hw.derive_iv(&iv), sw.derive_iv(&iv));
            }
            let mut odd = vec![0u8; 17];
            assert_eq!(
                hw.encrypt(&[0; 16], &mut odd),
                Err(CryptoError::BufferLength)
            );
        }
    }
}

/// AES-128-GCM, and when the device does CBC too, `cbc` with HMAC-SHA-256.
fn gcm_and_cbc(cbc: bool, cipher: CbcAlgorithm) -> Vec<EspSuite> {
    let mut suites = vec![EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16)];
    if cbc {
        suites.push(EspSuite::CbcHmac(cipher, MacAlgorithm::HmacSha256_128));
    }
    suites
}

/// The tunnel ends the ESP tests use.
fn test_outer() -> OuterHeader {
    OuterHeader::new(
        "203.0.113.1".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    )
}

fn sa_config(suite: EspSuite, esn: bool) -> SaConfig {
    SaConfig {
        spi: 0x1000_0001,
        suite,
        keys: EspKeys {
            encryption: SecretBytes::new(bytes(9, suite.encryption_key_len())),
            integrity: SecretBytes::new(bytes(10, suite.integrity_key_len())),
        },
        esn,
        replay_window: 1024,
        lifetime: Lifetime::default(),
    }
}

/// An IPv4 packet 198.18.0.1 → 198.18.0.2 of `len` bytes.
fn inner(len: usize) -> Vec<u8> {
    let mut p = bytes(11, len);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[198, 18, 0, 1]);
    p[16..20].copy_from_slice(&[198, 18, 0, 2]);
    p
}

fn esp_round_trips(dev: &Cryptodev, software: &SoftwareBackend, name: &str, cbc: bool) {
    let mut suites = vec![
        EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16),
        EspSuite::Gcm(AeadAlgorithm::Aes256Gcm16),
    ];
    if cbc {
        suites.push(EspSuite::CbcHmac(
            CbcAlgorithm::Aes128Cbc,
            MacAlgorithm::HmacSha256_128,
        ));
        suites.push(EspSuite::CbcHmac(
            CbcAlgorithm::Aes256Cbc,
            MacAlgorithm::HmacSha512_256,
        ));
    }
    let outer = OuterHeader::new(
        "203.0.113.1".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    );
    for suite in suites {
        for esn in [false, true] {
            let config = sa_config(suite, esn);
            let backends: [&dyn CryptoBackend; 2] = [dev, software];
            for (from, to) in [(0, 1), (1, 0)] {
                let mut out = Sa::new(backends[from], &config, Direction::Outbound, 0).unwrap();
                let mut inb = Sa::new(backends[to], &config, Direction::Inbound, 0).unwrap();
                for len in [20, 100, 1400] {
                    let packet = inner(len);
                    let mut wire = esp::encapsulate(&mut out, &packet, &outer, 0).unwrap();
                    let d = esp::decapsulate(&mut inb, &mut wire, 0).unwrap_or_else(|e| {
                        panic!("{name} {suite:?} esn {esn} {from}->{to}: {e:?}")
                    });
                    assert_eq!(&wire[d.inner], &packet[..]);
                }
                // A forged packet is refused and leaves the SA working.
                let mut wire = esp::encapsulate(&mut out, &inner(60), &outer, 0).unwrap();
                let last = wire.len() - 1;
                wire[last] ^= 1;
                assert!(esp::decapsulate(&mut inb, &mut wire, 0).is_err());
                let mut wire = esp::encapsulate(&mut out, &inner(60), &outer, 0).unwrap();
                assert!(esp::decapsulate(&mut inb, &mut wire, 0).is_ok());
            }
        }
    }
}

/// Several threads at once (more than queue pairs): each gets a queue pair, results stay right.
fn threads_share_the_device(dev: &Cryptodev, name: &str) {
    let key = bytes(12, 16);
    let aead = dev.aead(AeadAlgorithm::Aes128Gcm16, &key).unwrap();
    let reference = SoftwareBackend::new()
        .aead(AeadAlgorithm::Aes128Gcm16, &key)
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (aead, reference) = (&aead, &reference);
            s.spawn(move || {
                for i in 0..500u32 {
                    let mut nonce = [t; 12];
                    nonce[8..].copy_from_slice(&i.to_be_bytes());
                    let plain = bytes(t, 200 + (i as usize % 300));
                    let (mut a, mut b) = (plain.clone(), plain);
                    let (mut ta, mut tb) = ([0; 16], [0; 16]);
                    aead.seal(&nonce, &[t; 8], &mut a, &mut ta).unwrap();
                    reference.seal(&nonce, &[t; 8], &mut b, &mut tb).unwrap();
                    assert_eq!((a, ta), (b, tb), "{name} thread {t} op {i}");
                }
            });
        }
    });
}

/// ESP in batches of 40 (more than one burst) through `process`: sealed on the device and
/// opened in software, sealed in software and opened on the device, with one forged packet in
/// the batch that alone fails.
fn batches_match_software(dev: &Cryptodev, software: &SoftwareBackend, name: &str, cbc: bool) {
    let outer = test_outer();
    const N: usize = 40;
    const ROOM: usize = 64;
    for suite in gcm_and_cbc(cbc, CbcAlgorithm::Aes256Cbc) {
        for esn in [false, true] {
            let config = sa_config(suite, esn);
            let packets: Vec<Vec<u8>> = (0..N).map(|i| inner(40 + i * 31)).collect();

            // Sealed on the device in one batch, opened in software one by one.
            let mut out = Sa::new(dev, &config, Direction::Outbound, 0).unwrap();
            let mut bufs: Vec<Vec<u8>> = packets
                .iter()
                .map(|p| {
                    let mut b = vec![0u8; ROOM + p.len() + ROOM];
                    b[ROOM..ROOM + p.len()].copy_from_slice(p);
                    b
                })
                .collect();
            let mut pending = Vec::new();
            let mut params = Vec::new();
            for (b, p) in bufs.iter_mut().zip(&packets) {
                let (job, par) =
                    esp::encapsulate_prepare(&mut out, b, ROOM..ROOM + p.len(), &outer, 0).unwrap();
                pending.push(job);
                params.push(par);
            }
            let results: Vec<_> = {
                let mut ops: Vec<SymOp<'_>> = bufs
                    .iter_mut()
                    .zip(params)
                    .map(|(buf, params)| SymOp {
                        buf,
                        ctx: Some(out.crypto_ctx()),
                        params,
                        result: Ok(()),
                    })
                    .collect();
                dev.process(&mut ops);
                ops.iter().map(|o| o.result).collect()
            };
            let mut inb = Sa::new(software, &config, Direction::Inbound, 0).unwrap();
            let mut wires = Vec::new();
            for ((b, job), r) in bufs.iter_mut().zip(&pending).zip(results) {
                let range = esp::encapsulate_finish(&mut out, job, b, r)
                    .unwrap_or_else(|e| panic!("{name} {suite:?} esn {esn}: {e:?}"));
                let mut wire = b[range].to_vec();
                wires.push(wire.clone());
                let d = esp::decapsulate(&mut inb, &mut wire, 0).unwrap();
                assert_eq!(wire[d.inner].len(), packets[wires.len() - 1].len());
            }

            // Sealed in software (the wires above), opened on the device in one batch, the
            // seventh forged.
            let mut inb = Sa::new(dev, &config, Direction::Inbound, 0).unwrap();
            wires[6][30] ^= 0x40;
            let mut pending = Vec::new();
            let mut params = Vec::new();
            for w in wires.iter_mut() {
                let (job, par) = esp::decapsulate_prepare(&mut inb, w, 0).unwrap();
                pending.push(job);
                params.push(par);
            }
            let results: Vec<_> = {
                let mut ops: Vec<SymOp<'_>> = wires
                    .iter_mut()
                    .zip(params)
                    .map(|(buf, params)| SymOp {
                        buf,
                        ctx: Some(inb.crypto_ctx()),
                        params,
                        result: Ok(()),
                    })
                    .collect();
                dev.process(&mut ops);
                ops.iter().map(|o| o.result).collect()
            };
            for (i, ((w, job), r)) in wires.iter_mut().zip(&pending).zip(results).enumerate() {
                let d = esp::decapsulate_finish(&mut inb, job, w, r);
                if i == 6 {
                    assert_eq!(
                        d.unwrap_err(),
                        esp::EspError::Authentication,
                        "{name} {suite:?}"
                    );
                    continue;
                }
                let d = d.unwrap_or_else(|e| panic!("{name} {suite:?} esn {esn} #{i}: {e:?}"));
                assert_eq!(
                    &w[d.inner],
                    &packets[i][..],
                    "{name} {suite:?} esn {esn} #{i}"
                );
            }
            assert_eq!(inb.counters().auth_failures, 1);
        }
    }
}
