//! Crypto for ESP and IKE behind one trait, so that the dataplane can swap the software
//! implementation for a DPDK cryptodev later without touching the ESP or IKE code.
//!
//! A [`CryptoBackend`] turns raw key bytes into prepared per-SA contexts (the key schedule is
//! done once, at SA install): an [`Aead`] for AES-GCM, or a [`CbcHmac`] pair for AES-CBC with
//! an HMAC-SHA-2 integrity check. The contexts work in place on caller buffers and never
//! allocate. Key bytes are held in [`SecretBytes`], which zeroes itself on drop and never prints.

mod software;

pub use software::{SoftwareBackend, SoftwareGcm};

use std::fmt;
use std::ops::Range;
use zeroize::Zeroizing;

/// AEAD ciphers (RFC 4106 for ESP, RFC 5282 for IKE): AES-GCM with a 16-byte ICV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    Aes128Gcm16,
    Aes256Gcm16,
}

impl AeadAlgorithm {
    /// The AES key length, without the 4-byte salt.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm16 => 16,
            Self::Aes256Gcm16 => 32,
        }
    }

    /// Both GCM variants carry a 16-byte tag.
    pub const TAG_LEN: usize = 16;
    /// The implicit part of the nonce, taken from the keying material (RFC 4106 section 4).
    pub const SALT_LEN: usize = 4;
    /// The explicit part of the nonce, carried in every packet (RFC 4106 section 3.1).
    pub const IV_LEN: usize = 8;
}

/// Block ciphers used in CBC mode (RFC 3602).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CbcAlgorithm {
    Aes128Cbc,
    Aes256Cbc,
}

impl CbcAlgorithm {
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Cbc => 16,
            Self::Aes256Cbc => 32,
        }
    }

    /// AES block size, which is also the IV length.
    pub const BLOCK_LEN: usize = 16;
}

/// Integrity algorithms: HMAC-SHA-2 truncated to half the hash (RFC 4868).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacAlgorithm {
    HmacSha256_128,
    HmacSha384_192,
    HmacSha512_256,
}

impl MacAlgorithm {
    /// Key length: the full hash output (RFC 4868 section 2.1.1).
    pub fn key_len(self) -> usize {
        match self {
            Self::HmacSha256_128 => 32,
            Self::HmacSha384_192 => 48,
            Self::HmacSha512_256 => 64,
        }
    }

    /// Length of the truncated ICV.
    pub fn icv_len(self) -> usize {
        self.key_len() / 2
    }
}

/// Pseudo-random functions for IKE (RFC 4868 section 2.1.2): untruncated HMAC-SHA-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrfAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl PrfAlgorithm {
    /// Output length, which is also the preferred key length (SK_d, SK_pi, SK_pr).
    pub fn output_len(self) -> usize {
        match self {
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }

    fn ring_algorithm(self) -> ring::hmac::Algorithm {
        match self {
            Self::HmacSha256 => ring::hmac::HMAC_SHA256,
            Self::HmacSha384 => ring::hmac::HMAC_SHA384,
            Self::HmacSha512 => ring::hmac::HMAC_SHA512,
        }
    }

    /// `prf(key, data...)`: HMAC over the concatenation of `parts`.
    pub fn compute(self, key: &[u8], parts: &[&[u8]]) -> SecretBytes {
        let key = ring::hmac::Key::new(self.ring_algorithm(), key);
        let mut ctx = ring::hmac::Context::with_key(&key);
        for part in parts {
            ctx.update(part);
        }
        SecretBytes::new(ctx.sign().as_ref().to_vec())
    }

    /// `prf+(key, seed)` truncated to `len` bytes (RFC 7296 section 2.13). `None` if `len`
    /// needs more than 255 iterations.
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Option<SecretBytes> {
        let rounds = len.div_ceil(self.output_len());
        if rounds > 255 {
            return None;
        }
        let mut out = Zeroizing::new(Vec::with_capacity(rounds * self.output_len()));
        let mut previous = SecretBytes::new(Vec::new());
        for counter in 1..=rounds as u8 {
            previous = self.compute(key, &[previous.expose(), seed, &[counter]]);
            out.extend_from_slice(previous.expose());
        }
        out.truncate(len);
        Some(SecretBytes(out))
    }
}

/// Errors from crypto operations. Deliberately carries no detail about *why* an
/// authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("wrong key length")]
    KeyLength,
    #[error("buffer length does not suit the algorithm")]
    BufferLength,
    #[error("integrity check failed")]
    Authentication,
    #[error("random number generator failed")]
    Random,
    #[error("backend failure")]
    Backend,
}

/// Key material: zeroed on drop, redacted in `Debug`, never `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The key bytes. Named so that every use is easy to find in review.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Splits off the first `n` bytes (for carving SK_* and KEYMAT out of prf+ output).
    /// `None` if fewer than `n` bytes remain.
    pub fn take_prefix(&mut self, n: usize) -> Option<SecretBytes> {
        if n > self.0.len() {
            return None;
        }
        let rest = self.0.split_off(n);
        let head = std::mem::replace(&mut *self.0, rest);
        Some(SecretBytes::new(head))
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// A prepared AES-GCM key.
pub trait Aead: Send + Sync {
    fn algorithm(&self) -> AeadAlgorithm;

    /// The context as `Any`, so that a backend can find its own contexts in a batch.
    fn as_any(&self) -> &dyn std::any::Any;

    /// Encrypts `in_out` in place and writes the tag.
    fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError>;

    /// Checks the tag and decrypts `in_out` in place. On [`CryptoError::Authentication`] the
    /// buffer content is unspecified.
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError>;
}

/// A prepared AES-CBC key plus a prepared HMAC key (encrypt-then-MAC, as ESP and IKE do).
pub trait CbcHmac: Send + Sync {
    fn cipher(&self) -> CbcAlgorithm;
    fn mac(&self) -> MacAlgorithm;

    /// The context as `Any`, so that a backend can find its own contexts in a batch.
    fn as_any(&self) -> &dyn std::any::Any;

    /// CBC-encrypts `in_out` (a multiple of 16 bytes) in place, no padding.
    fn encrypt(&self, iv: &[u8; 16], in_out: &mut [u8]) -> Result<(), CryptoError>;

    /// CBC-decrypts `in_out` (a multiple of 16 bytes) in place, no padding.
    fn decrypt(&self, iv: &[u8; 16], in_out: &mut [u8]) -> Result<(), CryptoError>;

    /// The truncated HMAC over the concatenation of `parts`; `icv` is `mac().icv_len()` long.
    fn sign(&self, parts: &[&[u8]], icv: &mut [u8]) -> Result<(), CryptoError>;

    /// Checks a truncated HMAC in constant time.
    fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> Result<(), CryptoError>;

    /// An unpredictable IV derived from a value never repeated under this key: the block
    /// cipher applied to the nonce (NIST SP 800-38A appendix C, first method).
    fn derive_iv(&self, nonce: &[u8; 16]) -> Result<[u8; 16], CryptoError> {
        let mut block = *nonce;
        self.encrypt(&[0; 16], &mut block)?;
        Ok(block)
    }
}

/// A source of prepared crypto contexts: software here, a DPDK cryptodev later.
pub trait CryptoBackend: Send + Sync {
    /// A short name for logs and `show ipsec`.
    fn name(&self) -> &'static str;

    /// Prepares an AES-GCM key (`key` without the salt).
    fn aead(&self, algorithm: AeadAlgorithm, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError>;

    /// Prepares an AES-GCM key for a per-packet path (ESP's SAs): what
    /// [`aead`](Self::aead) makes, unless the backend has a concrete type to offer that its
    /// caller can call without dynamic dispatch (the software backend's [`SoftwareGcm`]).
    fn prepared_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<PreparedAead, CryptoError> {
        self.aead(algorithm, key).map(PreparedAead::Backend)
    }

    /// Prepares an AES-CBC key and an HMAC key.
    fn cbc_hmac(
        &self,
        cipher: CbcAlgorithm,
        cipher_key: &[u8],
        mac: MacAlgorithm,
        mac_key: &[u8],
    ) -> Result<Box<dyn CbcHmac>, CryptoError>;

    /// Fills `out` with cryptographically secure random bytes.
    fn random(&self, out: &mut [u8]) -> Result<(), CryptoError>;

    /// Runs a batch of packet operations, each on its own buffer, and sets each one's
    /// `result`. The contexts in the batch may come from any backend. This one runs them one
    /// by one on the calling core; a device backend hands them over in bursts.
    fn process(&self, ops: &mut [SymOp<'_>]) {
        for op in ops {
            op.run_here();
        }
    }
}

/// A prepared AES-GCM key as a per-packet path holds it ([`CryptoBackend::prepared_aead`]).
///
/// Sealing 64 bytes takes `ring` about 750 instructions, and a call through `Box<dyn Aead>`
/// added some 40 more (the indirect call, the wrapper's own frame, the tag copied through a
/// temporary): the software case is therefore a concrete type whose methods inline into the
/// ESP code, and only other backends (a cryptodev) are called through the trait.
// The software key (its AES key schedule and GHASH table) is held inline, not boxed: the
// per-packet path then reaches it without another pointer to follow, and the enum is made
// once per SA and never moved per packet.
#[allow(clippy::large_enum_variant)]
pub enum PreparedAead {
    /// The software backend's key, called directly.
    Software(SoftwareGcm),
    /// Any other backend's key.
    Backend(Box<dyn Aead>),
}

impl PreparedAead {
    /// The key as an [`Aead`], for batches ([`SymCtx::Aead`]) and for the backend's own
    /// lookups ([`Aead::as_any`]).
    #[inline]
    pub fn as_dyn(&self) -> &dyn Aead {
        match self {
            Self::Software(gcm) => gcm,
            Self::Backend(aead) => aead.as_ref(),
        }
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.as_dyn().algorithm()
    }

    /// [`Aead::seal`]: inline for the software key, through the trait otherwise.
    #[inline(always)]
    pub fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        match self {
            Self::Software(gcm) => gcm.seal(nonce, aad, in_out, tag),
            Self::Backend(aead) => aead.seal(nonce, aad, in_out, tag),
        }
    }

    /// [`Aead::open`]: inline for the software key, through the trait otherwise.
    #[inline(always)]
    pub fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        match self {
            Self::Software(gcm) => gcm.open(nonce, aad, in_out, tag),
            Self::Backend(aead) => aead.open(nonce, aad, in_out, tag),
        }
    }
}

impl fmt::Debug for PreparedAead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::Software(_) => "Software",
            Self::Backend(_) => "Backend",
        };
        write!(f, "PreparedAead::{kind}({:?})", self.algorithm())
    }
}

/// The prepared context a [`SymOp`] runs with.
#[derive(Clone, Copy)]
pub enum SymCtx<'a> {
    Aead(&'a dyn Aead),
    CbcHmac(&'a dyn CbcHmac),
}

/// What a [`SymOp`] does to its buffer, as offsets into it (plain values, so the ESP code
/// can make them before the buffer and the context are at hand).
#[derive(Clone, Debug, Default)]
pub struct SymParams {
    /// Encrypt and sign, or check and decrypt.
    pub seal: bool,
    /// AES-GCM: the 12-byte nonce (the rest is unused). AES-CBC: the IV.
    pub iv: [u8; 16],
    /// AES-GCM's additional authenticated data (8 or 12 bytes for ESP).
    pub aad: [u8; 12],
    pub aad_len: u8,
    /// The bytes to encrypt or decrypt in place.
    pub text: Range<usize>,
    /// AES-CBC + HMAC: the bytes the ICV covers (a superset of `text`).
    pub auth: Range<usize>,
    /// Sealing: where the tag or ICV is written (`icv_len` bytes). Opening, when
    /// `tag_in_place` is set: where the received tag lies.
    pub digest_at: usize,
    /// Opening: the received tag is in the buffer at `digest_at`, where it stays until the
    /// operation is done (ESP's AES-GCM): it is read there, by a device and by
    /// [`SymCtx::run_here`] alike, and `expected` is left unfilled (copying the tag aside
    /// for nobody cost every packet a 16-byte load and store, and the field's zeroing).
    pub tag_in_place: bool,
    /// Tag or ICV length.
    pub icv_len: u8,
    /// Opening without `tag_in_place`: the received tag or ICV (saved aside: ESP with
    /// extended sequence numbers writes the high half of the sequence number where the ICV
    /// was, for the HMAC). Unspecified with `tag_in_place`.
    pub expected: [u8; 32],
}

/// One packet's cipher and integrity work in a batch ([`CryptoBackend::process`]).
pub struct SymOp<'a> {
    pub buf: &'a mut [u8],
    /// `None`: an empty slot, left alone.
    pub ctx: Option<SymCtx<'a>>,
    pub params: SymParams,
    pub result: Result<(), CryptoError>,
}

impl Default for SymOp<'_> {
    fn default() -> Self {
        Self {
            buf: &mut [],
            ctx: None,
            params: SymParams::default(),
            result: Err(CryptoError::Backend),
        }
    }
}

impl SymOp<'_> {
    /// Runs the operation on the calling core with the context's own methods.
    pub fn run_here(&mut self) {
        self.result = match self.ctx {
            Some(ctx) => ctx.run_here(&self.params, self.buf),
            None => Err(CryptoError::Backend),
        };
    }
}

impl SymCtx<'_> {
    /// Runs the operation `params` describes on `buf`, on the calling core, with the
    /// context's own methods. The AEAD part is inlined: ESP's one-packet paths call it
    /// between their two halves, where the offsets are still in registers, and nothing of
    /// `params` need be in memory but the nonce and the AAD.
    #[inline(always)]
    pub fn run_here(self, p: &SymParams, buf: &mut [u8]) -> Result<(), CryptoError> {
        match self {
            SymCtx::Aead(aead) => {
                let nonce = p.iv.first_chunk::<12>().ok_or(CryptoError::BufferLength)?;
                let aad = p
                    .aad
                    .get(..usize::from(p.aad_len))
                    .ok_or(CryptoError::BufferLength)?;
                if p.seal {
                    let text = buf
                        .get_mut(p.text.clone())
                        .ok_or(CryptoError::BufferLength)?;
                    let mut tag = [0u8; AeadAlgorithm::TAG_LEN];
                    aead.seal(nonce, aad, text, &mut tag)?;
                    *buf.get_mut(p.digest_at..)
                        .and_then(|b| b.first_chunk_mut::<{ AeadAlgorithm::TAG_LEN }>())
                        .ok_or(CryptoError::BufferLength)? = tag;
                    Ok(())
                } else {
                    let tag = if p.tag_in_place {
                        // Copied out first: `text` borrows the buffer mutably.
                        *buf.get(p.digest_at..)
                            .and_then(|b| b.first_chunk::<{ AeadAlgorithm::TAG_LEN }>())
                            .ok_or(CryptoError::BufferLength)?
                    } else {
                        *p.expected
                            .first_chunk::<{ AeadAlgorithm::TAG_LEN }>()
                            .ok_or(CryptoError::BufferLength)?
                    };
                    let text = buf
                        .get_mut(p.text.clone())
                        .ok_or(CryptoError::BufferLength)?;
                    aead.open(nonce, aad, text, &tag)
                }
            }
            SymCtx::CbcHmac(ctx) => run_cbc_hmac_here(ctx, p, buf),
        }
    }
}

/// [`SymCtx::run_here`] for AES-CBC with HMAC: encrypt then sign, or verify then decrypt.
fn run_cbc_hmac_here(ctx: &dyn CbcHmac, p: &SymParams, buf: &mut [u8]) -> Result<(), CryptoError> {
    let icv_len = usize::from(p.icv_len);
    let len = buf.len();
    let fits = |r: &Range<usize>| r.start <= r.end && r.end <= len;
    if !fits(&p.text) || !fits(&p.auth) || icv_len != ctx.mac().icv_len() {
        return Err(CryptoError::BufferLength);
    }
    let expected = p.expected.get(..icv_len).ok_or(CryptoError::BufferLength)?;
    if p.seal {
        if !fits(&(p.digest_at..p.digest_at + icv_len)) {
            return Err(CryptoError::BufferLength);
        }
        ctx.encrypt(&p.iv, &mut buf[p.text.clone()])?;
        let mut icv = [0u8; 32];
        let icv = &mut icv[..icv_len];
        ctx.sign(&[&buf[p.auth.clone()]], icv)?;
        buf[p.digest_at..p.digest_at + icv_len].copy_from_slice(icv);
        Ok(())
    } else {
        ctx.verify(&[&buf[p.auth.clone()]], expected)?;
        ctx.decrypt(&p.iv, &mut buf[p.text.clone()])
    }
}

#[cfg(test)]
mod tests;
