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
    let mut plaintext = inner;
    let pad_len = match cipher {
        SkCipher::Gcm { .. } => 0,
        SkCipher::Cbc(_) => (16 - (plaintext.len() + 1) % 16) % 16,
    };
    plaintext.extend(std::iter::repeat_n(0u8, pad_len));
    plaintext.push(pad_len as u8);
    let body_len = cipher.iv_len() + plaintext.len() + cipher.icv_len();
    let total = HEADER_LEN + 4 + body_len;
    let header = Header {
        next_payload: payload_type::SK,
        length: total as u32,
        ..header
    };
    let mut out = vec![0u8; HEADER_LEN];
    header.emit(&mut out);
    out.push(payloads.first().map_or(payload_type::NONE, Payload::kind));
    out.push(0);
    out.extend_from_slice(&((body_len + 4) as u16).to_be_bytes());
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
    let body_at = offset + 4;
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
    let pad_len = usize::from(*plaintext.last().ok_or(SkError::Truncated)?);
    let inner_len = plaintext
        .len()
        .checked_sub(pad_len + 1)
        .ok_or(SkError::Truncated)?;
    Ok(wire::parse_payloads(
        first_payload,
        &plaintext[..inner_len],
    )?)
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
}
