//! IKE key derivation (RFC 7296 sections 2.13-2.18) and PSK authentication (section 2.15).

use super::proposal::{ChildSuite, Encryption, IkeSuite};
use crate::crypto::{PrfAlgorithm, SecretBytes};
use crate::esp::EspKeys;

/// The seven IKE SA secrets.
#[derive(Debug, Clone)]
pub struct IkeKeys {
    pub sk_d: SecretBytes,
    pub sk_ai: SecretBytes,
    pub sk_ar: SecretBytes,
    pub sk_ei: SecretBytes,
    pub sk_er: SecretBytes,
    pub sk_pi: SecretBytes,
    pub sk_pr: SecretBytes,
}

/// SKEYSEED = prf(Ni | Nr, g^ir); {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
/// = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr). HMAC PRFs take the whole Ni | Nr as key.
pub fn derive_ike_keys(
    suite: &IkeSuite,
    nonce_i: &[u8],
    nonce_r: &[u8],
    shared: &SecretBytes,
    spi_i: u64,
    spi_r: u64,
) -> Option<IkeKeys> {
    let mut nonces = Vec::with_capacity(nonce_i.len() + nonce_r.len());
    nonces.extend_from_slice(nonce_i);
    nonces.extend_from_slice(nonce_r);
    let skeyseed = suite.prf.compute(&nonces, &[shared.expose()]);
    keys_from_skeyseed(suite, &skeyseed, nonces, spi_i, spi_r)
}

/// A rekeyed IKE SA (RFC 7296 section 2.18): SKEYSEED = prf(SK_d (old), g^ir (new) | Ni |
/// Nr), with the old IKE SA's PRF (the exchange belongs to it); the rest as for a new SA,
/// with the new SPIs and the new suite.
#[allow(clippy::too_many_arguments)]
pub fn derive_rekeyed_ike_keys(
    suite: &IkeSuite,
    old_prf: PrfAlgorithm,
    old_sk_d: &SecretBytes,
    nonce_i: &[u8],
    nonce_r: &[u8],
    shared: &SecretBytes,
    spi_i: u64,
    spi_r: u64,
) -> Option<IkeKeys> {
    let skeyseed = old_prf.compute(old_sk_d.expose(), &[shared.expose(), nonce_i, nonce_r]);
    let mut nonces = Vec::with_capacity(nonce_i.len() + nonce_r.len());
    nonces.extend_from_slice(nonce_i);
    nonces.extend_from_slice(nonce_r);
    keys_from_skeyseed(suite, &skeyseed, nonces, spi_i, spi_r)
}

/// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi |
/// SPIr); `nonces` is Ni | Nr.
fn keys_from_skeyseed(
    suite: &IkeSuite,
    skeyseed: &SecretBytes,
    nonces: Vec<u8>,
    spi_i: u64,
    spi_r: u64,
) -> Option<IkeKeys> {
    let prf = suite.prf;
    let mut seed = nonces;
    seed.extend_from_slice(&spi_i.to_be_bytes());
    seed.extend_from_slice(&spi_r.to_be_bytes());
    let prf_len = prf.output_len();
    let integ_len = suite.integrity.map_or(0, |m| m.key_len());
    let enc_len = suite.encryption.keymat_len();
    let total = 3 * prf_len + 2 * integ_len + 2 * enc_len;
    let mut stream = prf.prf_plus(skeyseed.expose(), &seed, total)?;
    Some(IkeKeys {
        sk_d: stream.take_prefix(prf_len)?,
        sk_ai: stream.take_prefix(integ_len)?,
        sk_ar: stream.take_prefix(integ_len)?,
        sk_ei: stream.take_prefix(enc_len)?,
        sk_er: stream.take_prefix(enc_len)?,
        sk_pi: stream.take_prefix(prf_len)?,
        sk_pr: stream.take_prefix(prf_len)?,
    })
}

/// CHILD_SA keys: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr). The initiator-to-responder
/// keys come first, encryption before integrity (RFC 7296 section 2.17).
pub fn derive_child_keys(
    prf: PrfAlgorithm,
    sk_d: &SecretBytes,
    pfs_shared: Option<&SecretBytes>,
    nonce_i: &[u8],
    nonce_r: &[u8],
    suite: &ChildSuite,
) -> Option<(EspKeys, EspKeys)> {
    let mut seed = Vec::new();
    if let Some(shared) = pfs_shared {
        seed.extend_from_slice(shared.expose());
    }
    seed.extend_from_slice(nonce_i);
    seed.extend_from_slice(nonce_r);
    let enc_len = suite.encryption.keymat_len();
    let integ_len = suite.integrity.map_or(0, |m| m.key_len());
    let mut stream = prf.prf_plus(sk_d.expose(), &seed, 2 * (enc_len + integ_len))?;
    let mut take = || -> Option<EspKeys> {
        Some(EspKeys {
            encryption: stream.take_prefix(enc_len)?,
            integrity: stream.take_prefix(integ_len)?,
        })
    };
    let initiator_to_responder = take()?;
    let responder_to_initiator = take()?;
    Some((initiator_to_responder, responder_to_initiator))
}

/// The pad string of RFC 7296 section 2.15.
const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>), where
/// SignedOctets = RealMessage | Nonce of the peer | prf(SK_p, RestOfIDPayload).
pub fn psk_auth(
    prf: PrfAlgorithm,
    psk: &[u8],
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &SecretBytes,
    id_body: &[u8],
) -> SecretBytes {
    let maced_id = prf.compute(sk_p.expose(), &[id_body]);
    let key = prf.compute(psk, &[KEY_PAD]);
    prf.compute(key.expose(), &[real_message, peer_nonce, maced_id.expose()])
}

/// The octets an AUTH signature covers (RFC 7296 section 2.15): RealMessage | Nonce of the
/// peer | prf(SK_p, RestOfIDPayload).
pub fn signed_octets(
    prf: PrfAlgorithm,
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &SecretBytes,
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf.compute(sk_p.expose(), &[id_body]);
    [real_message, peer_nonce, maced_id.expose()].concat()
}

/// Whether `encryption` needs separate integrity keys.
pub fn needs_integrity(encryption: Encryption) -> bool {
    !encryption.is_aead()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MacAlgorithm;
    use crate::ike::dh::DhGroup;

    #[test]
    fn key_lengths_follow_the_suite() {
        let suite = IkeSuite {
            encryption: Encryption::AesCbc256,
            prf: PrfAlgorithm::HmacSha384,
            integrity: Some(MacAlgorithm::HmacSha512_256),
            dh: DhGroup::Curve25519,
        };
        let shared = SecretBytes::from_slice(&[5; 32]);
        let keys = derive_ike_keys(&suite, &[1; 32], &[2; 32], &shared, 1, 2).unwrap();
        assert_eq!(keys.sk_d.len(), 48);
        assert_eq!(keys.sk_ai.len(), 64);
        assert_eq!(keys.sk_ei.len(), 32);
        assert_eq!(keys.sk_pr.len(), 48);
        assert_ne!(keys.sk_ei, keys.sk_er);
        // The stream is SKEYSEED-keyed prf+: SK_d is its first block.
        let skeyseed =
            PrfAlgorithm::HmacSha384.compute(&[[1u8; 32], [2u8; 32]].concat(), &[&[5; 32]]);
        let mut seed = [[1u8; 32], [2u8; 32]].concat();
        seed.extend_from_slice(&1u64.to_be_bytes());
        seed.extend_from_slice(&2u64.to_be_bytes());
        seed.push(1);
        assert_eq!(
            keys.sk_d,
            PrfAlgorithm::HmacSha384.compute(skeyseed.expose(), &[&seed])
        );

        let child = ChildSuite {
            encryption: Encryption::AesGcm16_128,
            integrity: None,
            esn: false,
        };
        let (i2r, r2i) = derive_child_keys(
            PrfAlgorithm::HmacSha256,
            &keys.sk_d,
            None,
            &[1; 16],
            &[2; 16],
            &child,
        )
        .unwrap();
        assert_eq!(i2r.encryption.len(), 20);
        assert!(i2r.integrity.is_empty());
        assert_ne!(i2r.encryption, r2i.encryption);
    }

    #[test]
    fn psk_auth_is_the_rfc_construction() {
        let prf = PrfAlgorithm::HmacSha256;
        let sk_p = SecretBytes::from_slice(&[9; 32]);
        let auth = psk_auth(prf, b"secret", b"msg", b"nonce", &sk_p, b"id");
        let inner = prf.compute(b"secret", &[b"Key Pad for IKEv2"]);
        let id = prf.compute(&[9; 32], &[b"id"]);
        let expected = prf.compute(
            inner.expose(),
            &[&[b"msgnonce".as_slice(), id.expose()].concat()],
        );
        assert_eq!(auth, expected);
    }
}
