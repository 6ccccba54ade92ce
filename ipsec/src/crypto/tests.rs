use super::*;
use crate::test_util::hex;

fn backend() -> SoftwareBackend {
    SoftwareBackend::new()
}

/// GCM specification (McGrew & Viega) test cases 3, 4 (AES-128) and 16 (AES-256).
#[test]
fn gcm_spec_vectors() {
    let plaintext = hex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
    );
    let iv: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    type Case<'a> = (AeadAlgorithm, &'a str, usize, &'a [u8], &'a str, &'a str);
    let cases: [Case; 3] = [
        (
            AeadAlgorithm::Aes128Gcm16,
            "feffe9928665731c6d6a8f9467308308",
            64,
            &[],
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
            "4d5c2af327cd64a62cf35abd2ba6fab4",
        ),
        (
            AeadAlgorithm::Aes128Gcm16,
            "feffe9928665731c6d6a8f9467308308",
            60,
            &aad,
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            "5bc94fbc3221a5db94fae95ae7121a47",
        ),
        (
            AeadAlgorithm::Aes256Gcm16,
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            60,
            &aad,
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        ),
    ];
    for (algorithm, key, len, aad, ciphertext, tag) in cases {
        let aead = backend().aead(algorithm, &hex(key)).unwrap();
        let mut buf = plaintext[..len].to_vec();
        let mut out_tag = [0u8; 16];
        aead.seal(&iv, aad, &mut buf, &mut out_tag).unwrap();
        assert_eq!(buf, hex(ciphertext));
        assert_eq!(out_tag.to_vec(), hex(tag));
        aead.open(&iv, aad, &mut buf, &out_tag).unwrap();
        assert_eq!(buf, plaintext[..len]);
        out_tag[0] ^= 1;
        assert_eq!(
            aead.open(&iv, aad, &mut buf, &out_tag),
            Err(CryptoError::Authentication)
        );
    }
    assert_eq!(
        backend().aead(AeadAlgorithm::Aes256Gcm16, &[0; 16]).err(),
        Some(CryptoError::KeyLength)
    );
}

/// RFC 3602 section 4 cases 1 and 2 (AES-128-CBC), NIST SP 800-38A F.2.5 (AES-256-CBC).
#[test]
fn cbc_vectors() {
    let cases = [
        (
            CbcAlgorithm::Aes128Cbc,
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            hex("53696e676c6520626c6f636b206d7367"), // "Single block msg"
            "e353779c1079aeb82708942dbe77181a",
        ),
        (
            CbcAlgorithm::Aes128Cbc,
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            (0u8..32).collect(),
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
        ),
        (
            CbcAlgorithm::Aes256Cbc,
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "000102030405060708090a0b0c0d0e0f",
            hex("6bc1bee22e409f96e93d7e117393172a"),
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6",
        ),
    ];
    for (cipher, key, iv, plaintext, ciphertext) in cases {
        let ctx = backend()
            .cbc_hmac(cipher, &hex(key), MacAlgorithm::HmacSha256_128, &[7; 32])
            .unwrap();
        let iv: [u8; 16] = hex(iv).try_into().unwrap();
        let mut buf = plaintext.clone();
        ctx.encrypt(&iv, &mut buf).unwrap();
        assert_eq!(buf, hex(ciphertext));
        ctx.decrypt(&iv, &mut buf).unwrap();
        assert_eq!(buf, plaintext);
        assert_eq!(
            ctx.encrypt(&iv, &mut [0u8; 15]),
            Err(CryptoError::BufferLength)
        );
    }
}

/// RFC 4231 test cases 1 and 2, truncated as RFC 4868 uses them.
#[test]
fn hmac_sha2_vectors() {
    let key1 = [0x0bu8; 20];
    let hi = b"Hi There";
    let jefe = b"what do ya want for nothing?";
    let full = [
        (
            PrfAlgorithm::HmacSha256,
            &key1[..],
            &hi[..],
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            PrfAlgorithm::HmacSha384,
            &key1[..],
            &hi[..],
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c\
             faea9ea9076ede7f4af152e8b2fa9cb6",
        ),
        (
            PrfAlgorithm::HmacSha512,
            &key1[..],
            &hi[..],
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde\
             daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        ),
        (
            PrfAlgorithm::HmacSha256,
            &b"Jefe"[..],
            &jefe[..],
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
    ];
    for (prf, key, data, expected) in full {
        // Split input: the multi-part interface must equal one-shot HMAC.
        let (a, b) = data.split_at(3);
        assert_eq!(prf.compute(key, &[a, b]).expose(), &hex(expected)[..]);
    }
    // The MAC side: HMAC-SHA-256-128 and HMAC-SHA-512-256 are the leading halves.
    // (RFC 4868 keys are the full hash length; HMAC itself accepts any key length.)
    for (mac, prf) in [
        (MacAlgorithm::HmacSha256_128, PrfAlgorithm::HmacSha256),
        (MacAlgorithm::HmacSha384_192, PrfAlgorithm::HmacSha384),
        (MacAlgorithm::HmacSha512_256, PrfAlgorithm::HmacSha512),
    ] {
        let key = vec![0x0bu8; mac.key_len()];
        let ctx = backend()
            .cbc_hmac(CbcAlgorithm::Aes128Cbc, &[0; 16], mac, &key)
            .unwrap();
        let mut icv = vec![0u8; mac.icv_len()];
        ctx.sign(&[hi], &mut icv).unwrap();
        assert_eq!(icv, prf.compute(&key, &[hi]).expose()[..mac.icv_len()]);
        ctx.verify(&[&hi[..2], &hi[2..]], &icv).unwrap();
        icv[3] ^= 0x80;
        assert_eq!(ctx.verify(&[hi], &icv), Err(CryptoError::Authentication));
        assert_eq!(
            ctx.verify(&[hi], &icv[..4]),
            Err(CryptoError::Authentication)
        );
    }
}

#[test]
fn prf_plus_expands_and_is_prefix_stable() {
    let prf = PrfAlgorithm::HmacSha256;
    let long = prf.prf_plus(b"key", b"seed", 100).unwrap();
    let short = prf.prf_plus(b"key", b"seed", 40).unwrap();
    assert_eq!(long.len(), 100);
    assert_eq!(&long.expose()[..40], short.expose());
    // T1 = prf(K, S | 0x01)
    assert_eq!(
        &long.expose()[..32],
        prf.compute(b"key", &[b"seed", &[1]]).expose()
    );
    assert!(prf.prf_plus(b"key", b"seed", 32 * 256).is_none());
    assert_eq!(format!("{long:?}"), "SecretBytes(<100 bytes redacted>)");
}

#[test]
fn secret_split() {
    let mut secret = SecretBytes::from_slice(&[1, 2, 3, 4, 5]);
    assert_eq!(secret.take_prefix(2).unwrap().expose(), &[1, 2]);
    assert_eq!(secret.expose(), &[3, 4, 5]);
    assert!(secret.take_prefix(4).is_none());
}

/// The software backend's prepared key, called without dynamic dispatch, seals and opens as
/// its boxed [`Aead`] does (and as a backend without a concrete type, which gets the box).
#[test]
fn prepared_aead_matches_the_boxed_one() {
    let backend = backend();
    for (algorithm, key) in [
        (AeadAlgorithm::Aes128Gcm16, vec![7u8; 16]),
        (AeadAlgorithm::Aes256Gcm16, vec![9u8; 32]),
    ] {
        let prepared = backend.prepared_aead(algorithm, &key).unwrap();
        assert!(matches!(prepared, PreparedAead::Software(_)));
        assert_eq!(prepared.algorithm(), algorithm);
        let boxed = PreparedAead::Backend(backend.aead(algorithm, &key).unwrap());
        let nonce = [3u8; 12];
        let aad = [1, 2, 3, 4, 5, 6, 7, 8];
        let plain: Vec<u8> = (0..77u8).collect();
        let (mut a, mut b) = (plain.clone(), plain.clone());
        let (mut tag_a, mut tag_b) = ([0u8; 16], [0u8; 16]);
        prepared.seal(&nonce, &aad, &mut a, &mut tag_a).unwrap();
        boxed.seal(&nonce, &aad, &mut b, &mut tag_b).unwrap();
        assert_eq!((&a, tag_a), (&b, tag_b));
        prepared.open(&nonce, &aad, &mut a, &tag_a).unwrap();
        assert_eq!(a, plain);
        tag_b[0] ^= 1;
        assert_eq!(
            prepared.open(&nonce, &aad, &mut b, &tag_b),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            backend.prepared_aead(algorithm, &key[1..]).err(),
            Some(CryptoError::KeyLength)
        );
    }
}
