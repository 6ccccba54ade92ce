//! The software backend: `ring` for AES-GCM and HMAC, `aws-lc-rs` for AES-CBC (which `ring`
//! does not offer).

use super::{
    Aead, AeadAlgorithm, CbcAlgorithm, CbcHmac, CryptoBackend, CryptoError, MacAlgorithm,
    PreparedAead,
};
use aws_lc_rs::cipher as lc;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

/// Crypto in software on the calling core.
#[derive(Debug)]
pub struct SoftwareBackend {
    rng: ring::rand::SystemRandom,
}

impl SoftwareBackend {
    pub fn new() -> Self {
        Self {
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

impl Default for SoftwareBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// AES-GCM on `ring`: the software backend's [`Aead`], and the concrete key ESP holds when
/// its SAs run in software ([`PreparedAead::Software`](super::PreparedAead)). Its
/// [`seal`](Self::seal) and [`open`](Self::open) are inlined into their caller: the per-packet
/// path then calls `ring` directly, with no dynamic dispatch and no tag copied through a
/// temporary.
pub struct SoftwareGcm {
    algorithm: AeadAlgorithm,
    key: ring::aead::LessSafeKey,
}

impl SoftwareGcm {
    /// Prepares `key` (without the salt) for `algorithm`.
    pub fn new(algorithm: AeadAlgorithm, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != algorithm.key_len() {
            return Err(CryptoError::KeyLength);
        }
        let ring_algorithm = match algorithm {
            AeadAlgorithm::Aes128Gcm16 => &ring::aead::AES_128_GCM,
            AeadAlgorithm::Aes256Gcm16 => &ring::aead::AES_256_GCM,
        };
        let unbound =
            ring::aead::UnboundKey::new(ring_algorithm, key).map_err(|_| CryptoError::KeyLength)?;
        Ok(Self {
            algorithm,
            key: ring::aead::LessSafeKey::new(unbound),
        })
    }

    /// [`Aead::seal`], inlined.
    #[inline(always)]
    pub fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let out = self
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), in_out)
            .map_err(|_| CryptoError::BufferLength)?;
        *tag = *out.as_ref().first_chunk().ok_or(CryptoError::Backend)?;
        Ok(())
    }

    /// [`Aead::open`], inlined.
    #[inline(always)]
    pub fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        self.key
            .open_in_place_separate_tag(
                nonce,
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                in_out,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::Authentication)
    }
}

impl Aead for SoftwareGcm {
    fn algorithm(&self) -> AeadAlgorithm {
        self.algorithm
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        SoftwareGcm::seal(self, nonce, aad, in_out, tag)
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        SoftwareGcm::open(self, nonce, aad, in_out, tag)
    }
}

struct LcCbcRingHmac {
    cipher: CbcAlgorithm,
    mac: MacAlgorithm,
    encrypting: lc::EncryptingKey,
    decrypting: lc::DecryptingKey,
    hmac: ring::hmac::Key,
}

impl LcCbcRingHmac {
    fn full_mac(&self, parts: &[&[u8]]) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.hmac);
        for part in parts {
            ctx.update(part);
        }
        ctx.sign()
    }
}

impl CbcHmac for LcCbcRingHmac {
    fn cipher(&self) -> CbcAlgorithm {
        self.cipher
    }

    fn mac(&self) -> MacAlgorithm {
        self.mac
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn encrypt(&self, iv: &[u8; 16], in_out: &mut [u8]) -> Result<(), CryptoError> {
        if in_out.len() % CbcAlgorithm::BLOCK_LEN != 0 {
            return Err(CryptoError::BufferLength);
        }
        let context = lc::EncryptionContext::Iv128(aws_lc_rs::iv::FixedLength::from(*iv));
        self.encrypting
            .less_safe_encrypt(in_out, context)
            .map(|_| ())
            .map_err(|_| CryptoError::Backend)
    }

    fn decrypt(&self, iv: &[u8; 16], in_out: &mut [u8]) -> Result<(), CryptoError> {
        if in_out.len() % CbcAlgorithm::BLOCK_LEN != 0 {
            return Err(CryptoError::BufferLength);
        }
        let context = lc::DecryptionContext::Iv128(aws_lc_rs::iv::FixedLength::from(*iv));
        self.decrypting
            .decrypt(in_out, context)
            .map(|_| ())
            .map_err(|_| CryptoError::Backend)
    }

    fn sign(&self, parts: &[&[u8]], icv: &mut [u8]) -> Result<(), CryptoError> {
        if icv.len() != self.mac.icv_len() {
            return Err(CryptoError::BufferLength);
        }
        let tag = self.full_mac(parts);
        icv.copy_from_slice(&tag.as_ref()[..icv.len()]);
        Ok(())
    }

    fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> Result<(), CryptoError> {
        if icv.len() != self.mac.icv_len() {
            return Err(CryptoError::Authentication);
        }
        let tag = self.full_mac(parts);
        if bool::from(tag.as_ref()[..icv.len()].ct_eq(icv)) {
            Ok(())
        } else {
            Err(CryptoError::Authentication)
        }
    }
}

impl CryptoBackend for SoftwareBackend {
    fn name(&self) -> &'static str {
        "software"
    }

    fn aead(&self, algorithm: AeadAlgorithm, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError> {
        Ok(Box::new(SoftwareGcm::new(algorithm, key)?))
    }

    fn prepared_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<PreparedAead, CryptoError> {
        SoftwareGcm::new(algorithm, key).map(PreparedAead::Software)
    }

    fn cbc_hmac(
        &self,
        cipher: CbcAlgorithm,
        cipher_key: &[u8],
        mac: MacAlgorithm,
        mac_key: &[u8],
    ) -> Result<Box<dyn CbcHmac>, CryptoError> {
        if cipher_key.len() != cipher.key_len() || mac_key.len() != mac.key_len() {
            return Err(CryptoError::KeyLength);
        }
        let lc_algorithm = match cipher {
            CbcAlgorithm::Aes128Cbc => &lc::AES_128,
            CbcAlgorithm::Aes256Cbc => &lc::AES_256,
        };
        let unbound = || {
            lc::UnboundCipherKey::new(lc_algorithm, cipher_key).map_err(|_| CryptoError::KeyLength)
        };
        let encrypting = lc::EncryptingKey::cbc(unbound()?).map_err(|_| CryptoError::Backend)?;
        let decrypting = lc::DecryptingKey::cbc(unbound()?).map_err(|_| CryptoError::Backend)?;
        let hmac_algorithm = match mac {
            MacAlgorithm::HmacSha256_128 => ring::hmac::HMAC_SHA256,
            MacAlgorithm::HmacSha384_192 => ring::hmac::HMAC_SHA384,
            MacAlgorithm::HmacSha512_256 => ring::hmac::HMAC_SHA512,
        };
        Ok(Box::new(LcCbcRingHmac {
            cipher,
            mac,
            encrypting,
            decrypting,
            hmac: ring::hmac::Key::new(hmac_algorithm, mac_key),
        }))
    }

    fn random(&self, out: &mut [u8]) -> Result<(), CryptoError> {
        self.rng.fill(out).map_err(|_| CryptoError::Random)
    }
}
