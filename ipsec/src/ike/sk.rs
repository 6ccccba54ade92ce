//! The Encrypted (SK) payload (RFC 7296 section 3.14; AES-GCM per RFC 5282).

use super::keys::IkeKeys;
use super::proposal::{Encryption, IkeSuite};
use super::wire::{self, emit_payloads, payload_type, Header, ParseError, Payload, HEADER_LEN};
use crate::crypto::{
    Aead, AeadAlgorithm, CbcHmac, CryptoBackend, CryptoError, MacAlgorithm, SecretBytes,
};

/// One direction's SK_e (and SK_a), prepared.
pub enum SkCipher {
    Gcm { aead: Box<dyn Aead>, salt: [u8; 4] },
    Cbc(Box<dyn CbcHmac>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SkError {
    #[error("SK payload too short")]
    Truncated,
    #[error("integrity check failed")]
    Integrity,
    #[error("inner payloads: {0}")]
    Parse(#[from] ParseError),
    #[error("crypto: {0}")]
    Crypto(CryptoError),
}

impl SkCipher {
    /// An IKE SA's SK ciphers as `(outbound, inbound)`: the original initiator seals with
    /// SK_ei/SK_ai and opens with SK_er/SK_ar, the original responder the other way round.
    pub fn pair(
        backend: &dyn CryptoBackend,
        suite: &IkeSuite,
        keys: &IkeKeys,
        initiator: bool,
    ) -> Result<(Self, Self), CryptoError> {
        let ours = |e, a| Self::new(backend, suite.encryption, suite.integrity, e, a);
        let (i, r) = (
            ours(&keys.sk_ei, &keys.sk_ai)?,
            ours(&keys.sk_er, &keys.sk_ar)?,
        );
        Ok(if initiator { (i, r) } else { (r, i) })
    }

    pub fn new(
        backend: &dyn CryptoBackend,
        encryption: Encryption,
        integrity: Option<MacAlgorithm>,
        sk_e: &SecretBytes,
        sk_a: &SecretBytes,
    ) -> Result<Self, CryptoError> {
        if let Some(aead) = encryption.aead() {
            let key = sk_e.expose();
            if key.len() != aead.key_len() + AeadAlgorithm::SALT_LEN {
                return Err(CryptoError::KeyLength);
            }
            let (key, salt_bytes) = key.split_at(aead.key_len());
            let mut salt = [0u8; 4];
            salt.copy_from_slice(salt_bytes);
            return Ok(Self::Gcm {
                aead: backend.aead(aead, key)?,
                salt,
            });
        }
        let (Some(cbc), Some(mac)) = (encryption.cbc(), integrity) else {
            return Err(CryptoError::KeyLength);
        };
        Ok(Self::Cbc(backend.cbc_hmac(
            cbc,
            sk_e.expose(),
            mac,
            sk_a.expose(),
        )?))
    }

    fn iv_len(&self) -> usize {
        match self {
            Self::Gcm { .. } => AeadAlgorithm::IV_LEN,
            Self::Cbc(_) => 16,
        }
    }

    /// The length of `len` bytes of plaintext with padding and the pad length byte: GCM
    /// needs no padding, CBC pads to its block.
    fn padded_len(&self, len: usize) -> usize {
        match self {
            Self::Gcm { .. } => len + 1,
            Self::Cbc(_) => (len + 1).div_ceil(16) * 16,
        }
    }

    fn icv_len(&self) -> usize {
        match self {
            Self::Gcm { .. } => AeadAlgorithm::TAG_LEN,
            Self::Cbc(c) => c.mac().icv_len(),
        }
    }
}

/// Builds a message whose payloads all travel inside one SK payload. `iv_nonce` must never
/// repeat under this cipher (a per-SA message counter).
pub fn seal_message(
    header: Header,
    payloads: &[Payload],
    cipher: &SkCipher,
    iv_nonce: u64,
) -> Result<Vec<u8>, CryptoError> {
    let inner = emit_payloads(payloads, payload_type::NONE);
    let first = payloads.first().map_or(payload_type::NONE, Payload::kind);
    seal(
        header,
        payload_type::SK,
        first,
        None,
        inner,
        cipher,
        iv_nonce,
    )
}

/// Seals an inner payload chain given as bytes (tests build chains `emit_payloads` would
/// not, such as an unknown payload marked critical).
#[cfg(test)]
pub(crate) fn seal_raw(
    header: Header,
    first_payload: u8,
    inner: Vec<u8>,
    cipher: &SkCipher,
    iv_nonce: u64,
) -> Result<Vec<u8>, CryptoError> {
    seal(
        header,
        payload_type::SK,
        first_payload,
        None,
        inner,
        cipher,
        iv_nonce,
    )
}

/// Why a message could not be sealed into fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("a fragment of at most {0} bytes has no room for content")]
    TooSmall(usize),
    #[error("more than 65535 fragments")]
    TooMany,
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
}

/// Builds a protected message as RFC 7383 section 2.5 sends it: one SK message when it fits
/// in `max_len` bytes, otherwise Encrypted Fragment (SKF) messages of at most `max_len` bytes
/// each, which together carry the inner payloads. Every message takes the next value of
/// `iv_counter` as its IV nonce.
pub fn seal_fragments(
    header: Header,
    payloads: &[Payload],
    cipher: &SkCipher,
    iv_counter: &mut u64,
    max_len: usize,
) -> Result<Vec<Vec<u8>>, FragmentError> {
    let inner = emit_payloads(payloads, payload_type::NONE);
    let first = payloads.first().map_or(payload_type::NONE, Payload::kind);
    let fixed = cipher.iv_len() + cipher.icv_len();
    if HEADER_LEN + 4 + fixed + cipher.padded_len(inner.len()) <= max_len {
        *iv_counter += 1;
        let message = seal(
            header,
            payload_type::SK,
            first,
            None,
            inner,
            cipher,
            *iv_counter,
        )?;
        return Ok(vec![message]);
    }
    // Room for plaintext in one fragment, then the most content that pads into it.
    let room = max_len.saturating_sub(HEADER_LEN + 8 + fixed);
    let content = match cipher {
        SkCipher::Gcm { .. } => room.saturating_sub(1),
        SkCipher::Cbc(_) => (room / 16 * 16).saturating_sub(1),
    };
    if content == 0 {
        return Err(FragmentError::TooSmall(max_len));
    }
    let total = u16::try_from(inner.len().div_ceil(content)).map_err(|_| FragmentError::TooMany)?;
    let mut out = Vec::with_capacity(usize::from(total));
    for (number, chunk) in (1..=total).zip(inner.chunks(content)) {
        // Only fragment 1 names the first inner payload (section 2.5).
        let next = if number == 1 {
            first
        } else {
            payload_type::NONE
        };
        *iv_counter += 1;
        out.push(seal(
            header,
            payload_type::SKF,
            next,
            Some((number, total)),
            chunk.to_vec(),
            cipher,
            *iv_counter,
        )?);
    }
    Ok(out)
}

/// Seals `plaintext` (an inner payload chain, or a fragment of one) as the last payload of
/// a message: an SK payload, or with `fragment` = (number, total) an SKF payload. The
/// associated data (GCM) or the ICV's input (CBC) is everything before the IV: the IKE
/// header and the payload's own header, fragment fields included (RFC 7383 section 2.5).
fn seal(
    header: Header,
    kind: u8,
    next: u8,
    fragment: Option<(u16, u16)>,
    mut plaintext: Vec<u8>,
    cipher: &SkCipher,
    iv_nonce: u64,
) -> Result<Vec<u8>, CryptoError> {
    let pad_len = cipher.padded_len(plaintext.len()) - plaintext.len() - 1;
    plaintext.extend(std::iter::repeat_n(0u8, pad_len));
    plaintext.push(pad_len as u8);
    let payload_header = if fragment.is_some() { 8 } else { 4 };
    let payload_len = payload_header + cipher.iv_len() + plaintext.len() + cipher.icv_len();
    let header = Header {
        next_payload: kind,
        length: (HEADER_LEN + payload_len) as u32,
        ..header
    };
    let mut out = vec![0u8; HEADER_LEN];
    header.emit(&mut out);
    out.push(next);
    out.push(0);
    out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    if let Some((number, total)) = fragment {
        out.extend_from_slice(&number.to_be_bytes());
        out.extend_from_slice(&total.to_be_bytes());
    }
    let aad_end = out.len();
    match cipher {
        SkCipher::Gcm { aead, salt } => {
            let iv = iv_nonce.to_be_bytes();
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(salt);
            nonce[4..].copy_from_slice(&iv);
            let mut tag = [0u8; AeadAlgorithm::TAG_LEN];
            aead.seal(&nonce, &out[..aad_end], &mut plaintext, &mut tag)?;
            out.extend_from_slice(&iv);
            out.extend_from_slice(&plaintext);
            out.extend_from_slice(&tag);
        }
        SkCipher::Cbc(ctx) => {
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&header.spi_i.to_be_bytes());
            nonce[8..].copy_from_slice(&iv_nonce.to_be_bytes());
            let iv = ctx.derive_iv(&nonce)?;
            ctx.encrypt(&iv, &mut plaintext)?;
            out.extend_from_slice(&iv);
            out.extend_from_slice(&plaintext);
            let mut icv = vec![0u8; ctx.mac().icv_len()];
            ctx.sign(&[&out], &mut icv)?;
            out.extend_from_slice(&icv);
        }
    }
    Ok(out)
}

/// Checks and decrypts the SK payload at `offset` (its generic header) of `message`, and
/// parses the inner payloads.
pub fn open_message(
    message: &[u8],
    offset: usize,
    first_payload: u8,
    cipher: &SkCipher,
) -> Result<Vec<Payload>, SkError> {
    let inner = open(message, offset + 4, cipher)?;
    Ok(wire::parse_payloads(first_payload, &inner)?)
}

/// Checks and decrypts the SKF payload at `offset` (its generic header) of `message`: the
/// fragment's share of the inner payload chain, to be joined with the others' before
/// parsing.
pub fn open_fragment(message: &[u8], offset: usize, cipher: &SkCipher) -> Result<Vec<u8>, SkError> {
    open(message, offset + 8, cipher)
}

/// Checks and decrypts what follows `body_at` (IV, ciphertext, ICV) and strips the padding.
fn open(message: &[u8], body_at: usize, cipher: &SkCipher) -> Result<Vec<u8>, SkError> {
    let iv_len = cipher.iv_len();
    let icv_len = cipher.icv_len();
    let ct_at = body_at + iv_len;
    let ct_end = message
        .len()
        .checked_sub(icv_len)
        .filter(|&e| e > ct_at)
        .ok_or(SkError::Truncated)?;
    let mut plaintext = message[ct_at..ct_end].to_vec();
    match cipher {
        SkCipher::Gcm { aead, salt } => {
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(salt);
            nonce[4..].copy_from_slice(&message[body_at..ct_at]);
            let mut tag = [0u8; AeadAlgorithm::TAG_LEN];
            tag.copy_from_slice(&message[ct_end..]);
            aead.open(&nonce, &message[..body_at], &mut plaintext, &tag)
                .map_err(|_| SkError::Integrity)?;
        }
        SkCipher::Cbc(ctx) => {
            ctx.verify(&[&message[..ct_end]], &message[ct_end..])
                .map_err(|_| SkError::Integrity)?;
            if plaintext.len() % 16 != 0 {
                return Err(SkError::Truncated);
            }
            let mut iv = [0u8; 16];
            iv.copy_from_slice(&message[body_at..ct_at]);
            ctx.decrypt(&iv, &mut plaintext).map_err(SkError::Crypto)?;
        }
    }
    // Authenticated from here on: a bad padding is the peer's syntax error, to be answered
    // (RFC 7296 section 2.21.3), not a forgery to drop.
    let bad_padding =
        || SkError::Parse(ParseError::Malformed("SK padding longer than the payload"));
    let pad_len = usize::from(*plaintext.last().ok_or_else(bad_padding)?);
    let inner_len = plaintext
        .len()
        .checked_sub(pad_len + 1)
        .ok_or_else(bad_padding)?;
    plaintext.truncate(inner_len);
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SoftwareBackend;
    use crate::ike::wire::{exchange, Message, Notify, VERSION};

    #[test]
    fn seal_open_both_families() {
        let backend = SoftwareBackend::new();
        let header = Header {
            spi_i: 1,
            spi_r: 2,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::INFORMATIONAL,
            flags: 0,
            message_id: 7,
            length: 0,
        };
        let payloads = vec![
            Payload::Notify(Notify::new(16384, vec![])),
            Payload::Nonce(vec![3; 20]),
        ];
        for (enc, integ) in [
            (Encryption::AesGcm16_128, None),
            (Encryption::AesGcm16_256, None),
            (Encryption::AesCbc128, Some(MacAlgorithm::HmacSha256_128)),
            (Encryption::AesCbc256, Some(MacAlgorithm::HmacSha512_256)),
        ] {
            let sk_e = SecretBytes::new(vec![1; enc.keymat_len()]);
            let sk_a = SecretBytes::new(vec![2; integ.map_or(0, |m| m.key_len())]);
            let cipher = SkCipher::new(&backend, enc, integ, &sk_e, &sk_a).unwrap();
            let bytes = seal_message(header, &payloads, &cipher, 9).unwrap();
            let parsed = Message::parse(&bytes).unwrap();
            let Some(&Payload::Encrypted {
                first_payload,
                offset,
            }) = parsed.payloads.last()
            else {
                panic!("no SK payload");
            };
            assert_eq!(
                open_message(&bytes, offset, first_payload, &cipher).unwrap(),
                payloads
            );
            for flip in [20, 30, bytes.len() - 1, bytes.len() / 2] {
                let mut bad = bytes.clone();
                bad[flip] ^= 4;
                assert!(open_message(&bad, offset, first_payload, &cipher).is_err());
            }
            let empty = seal_message(header, &[], &cipher, 10).unwrap();
            assert_eq!(
                open_message(&empty, HEADER_LEN, 0, &cipher).unwrap(),
                vec![]
            );
        }
    }

    /// Fragments of every size from barely-fits to whole: each within the limit, each
    /// opening on its own, and together the original inner payloads (RFC 7383 section 2.5).
    #[test]
    fn fragments_split_and_join_within_the_limit() {
        let backend = SoftwareBackend::new();
        let header = Header {
            spi_i: 5,
            spi_r: 6,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::IKE_AUTH,
            flags: 0,
            message_id: 1,
            length: 0,
        };
        let payloads = vec![
            Payload::Nonce(vec![7; 200]),
            Payload::VendorId(vec![8; 100]),
            Payload::Notify(Notify::new(16384, vec![1, 2, 3])),
        ];
        let inner = emit_payloads(&payloads, payload_type::NONE);
        for (enc, integ) in [
            (Encryption::AesGcm16_128, None),
            (Encryption::AesCbc256, Some(MacAlgorithm::HmacSha256_128)),
        ] {
            let sk_e = SecretBytes::new(vec![1; enc.keymat_len()]);
            let sk_a = SecretBytes::new(vec![2; integ.map_or(0, |m| m.key_len())]);
            let cipher = SkCipher::new(&backend, enc, integ, &sk_e, &sk_a).unwrap();
            let mut counter = 0;
            assert!(matches!(
                seal_fragments(header, &payloads, &cipher, &mut counter, 60),
                Err(FragmentError::TooSmall(60))
            ));
            for max_len in (100..=520).step_by(7) {
                let messages =
                    seal_fragments(header, &payloads, &cipher, &mut counter, max_len).unwrap();
                let mut joined = Vec::new();
                for (i, message) in messages.iter().enumerate() {
                    assert!(message.len() <= max_len, "{max_len}: {}", message.len());
                    let parsed = Message::parse(message).unwrap();
                    assert_eq!(parsed.header.length as usize, message.len());
                    match parsed.payloads.last() {
                        Some(&Payload::Encrypted {
                            first_payload,
                            offset,
                        }) => {
                            assert_eq!(messages.len(), 1);
                            let opened =
                                open_message(message, offset, first_payload, &cipher).unwrap();
                            assert_eq!(opened, payloads);
                        }
                        Some(&Payload::EncryptedFragment {
                            first_payload,
                            offset,
                            number,
                            total,
                        }) => {
                            assert_eq!((number, total), (i as u16 + 1, messages.len() as u16));
                            let first = if number == 1 { payload_type::NONCE } else { 0 };
                            assert_eq!(first_payload, first);
                            joined.extend(open_fragment(message, offset, &cipher).unwrap());
                            let mut bad = message.clone();
                            bad[HEADER_LEN + 5] ^= 1; // the fragment number is authenticated
                            assert!(open_fragment(&bad, offset, &cipher).is_err());
                        }
                        other => panic!("{other:?}"),
                    }
                }
                if messages.len() > 1 {
                    assert_eq!(joined, inner, "{max_len}");
                }
            }
        }
    }
}
