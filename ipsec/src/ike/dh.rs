//! Diffie-Hellman groups 14 (MODP-2048, RFC 3526), 19 (ECP-256, RFC 5903) and 31
//! (Curve25519, RFC 8031). ECDH comes from `ring`; MODP uses `crypto-bigint`'s constant-time
//! Montgomery exponentiation.

use crate::crypto::{CryptoError, SecretBytes};
use crypto_bigint::modular::{MontyForm, MontyParams};
use crypto_bigint::{Odd, U2048};
use ring::agreement;
use ring::rand::SecureRandom;
use zeroize::Zeroize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    Modp2048,
    Ecp256,
    Curve25519,
}

impl DhGroup {
    pub fn id(self) -> u16 {
        match self {
            Self::Modp2048 => 14,
            Self::Ecp256 => 19,
            Self::Curve25519 => 31,
        }
    }

    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            14 => Some(Self::Modp2048),
            19 => Some(Self::Ecp256),
            31 => Some(Self::Curve25519),
            _ => None,
        }
    }

    /// Length of the KE payload's key exchange data.
    pub fn public_len(self) -> usize {
        match self {
            Self::Modp2048 => 256,
            Self::Ecp256 => 64,
            Self::Curve25519 => 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    #[error("peer public value has the wrong length or is invalid")]
    InvalidPublic,
    #[error("crypto: {0}")]
    Crypto(CryptoError),
}

/// RFC 3526 section 3: the 2048-bit MODP prime, generator 2.
const MODP_2048_PRIME: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// Private exponent size: 512 bits, well above the 2 x 112 bits RFC 3526 section 8 asks
/// for at this strength, and four times cheaper than a full-size exponent.
const MODP_EXPONENT_BITS: u32 = 512;

fn modp_params() -> MontyParams<{ U2048::LIMBS }> {
    let p = U2048::from_be_hex(MODP_2048_PRIME);
    // The constant is odd; `Odd::new` cannot fail on it.
    MontyParams::new_vartime(Odd::new(p).unwrap_or(Odd::<U2048>::from_be_hex(MODP_2048_PRIME)))
}

/// A MODP private exponent, zeroed on drop.
pub struct ModpSecret(U2048);

impl Drop for ModpSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// An ephemeral private key, used once.
pub enum DhPrivate {
    Modp(ModpSecret),
    Ecdh(agreement::EphemeralPrivateKey, DhGroup),
}

impl std::fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DhPrivate(<redacted>)")
    }
}

/// Generates a key pair; returns the private key and the KE payload data.
pub fn generate(
    group: DhGroup,
    rng: &dyn SecureRandom,
) -> Result<(DhPrivate, Vec<u8>), CryptoError> {
    match group {
        DhGroup::Modp2048 => {
            let mut bytes = [0u8; 256];
            rng.fill(&mut bytes[256 - MODP_EXPONENT_BITS as usize / 8..])
                .map_err(|_| CryptoError::Random)?;
            let x = U2048::from_be_slice(&bytes);
            bytes.fill(0);
            let g = MontyForm::new(&U2048::from_u8(2), modp_params());
            let public = g.pow_bounded_exp(&x, MODP_EXPONENT_BITS).retrieve();
            Ok((
                DhPrivate::Modp(ModpSecret(x)),
                public.to_be_bytes().to_vec(),
            ))
        }
        DhGroup::Ecp256 | DhGroup::Curve25519 => {
            let algorithm = ecdh_algorithm(group);
            let private = agreement::EphemeralPrivateKey::generate(algorithm, rng)
                .map_err(|_| CryptoError::Random)?;
            let public = private
                .compute_public_key()
                .map_err(|_| CryptoError::Backend)?;
            let bytes = public.as_ref();
            // RFC 5903 section 7: x || y, without the 0x04 point-format octet ring adds.
            let data = match group {
                DhGroup::Ecp256 => bytes.get(1..).unwrap_or_default().to_vec(),
                _ => bytes.to_vec(),
            };
            Ok((DhPrivate::Ecdh(private, group), data))
        }
    }
}

fn ecdh_algorithm(group: DhGroup) -> &'static agreement::Algorithm {
    match group {
        DhGroup::Ecp256 => &agreement::ECDH_P256,
        _ => &agreement::X25519,
    }
}

impl DhPrivate {
    /// The shared secret g^ir, as IKE uses it: MODP zero-padded to the prime's length
    /// (RFC 7296 section 2.14), ECP-256 the x coordinate (RFC 5903), X25519 the 32 bytes.
    pub fn agree(self, peer: &[u8]) -> Result<SecretBytes, DhError> {
        match self {
            DhPrivate::Modp(x) => {
                if peer.len() != 256 {
                    return Err(DhError::InvalidPublic);
                }
                let y = U2048::from_be_slice(peer);
                let p = U2048::from_be_hex(MODP_2048_PRIME);
                let p_minus_1 = p.wrapping_sub(&U2048::ONE);
                // 1 < y < p - 1 (RFC 7296 section 5: check the peer's public value).
                if y <= U2048::ONE || y >= p_minus_1 {
                    return Err(DhError::InvalidPublic);
                }
                let y = MontyForm::new(&y, modp_params());
                let shared = y.pow_bounded_exp(&x.0, MODP_EXPONENT_BITS).retrieve();
                Ok(SecretBytes::new(shared.to_be_bytes().to_vec()))
            }
            DhPrivate::Ecdh(private, group) => {
                if peer.len() != group.public_len() {
                    return Err(DhError::InvalidPublic);
                }
                let mut encoded = Vec::with_capacity(65);
                if group == DhGroup::Ecp256 {
                    encoded.push(0x04);
                }
                encoded.extend_from_slice(peer);
                let shared = agreement::agree_ephemeral(
                    private,
                    &agreement::UnparsedPublicKey::new(ecdh_algorithm(group), &encoded),
                    SecretBytes::from_slice,
                )
                .map_err(|_| DhError::InvalidPublic)?;
                if shared.expose().iter().all(|&b| b == 0) {
                    // X25519 with a small-order point (RFC 8031 section 2.3).
                    return Err(DhError::InvalidPublic);
                }
                Ok(shared)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::Uint;

    #[test]
    fn every_group_agrees() {
        let rng = ring::rand::SystemRandom::new();
        for group in [DhGroup::Modp2048, DhGroup::Ecp256, DhGroup::Curve25519] {
            let (a, a_pub) = generate(group, &rng).unwrap();
            let (b, b_pub) = generate(group, &rng).unwrap();
            assert_eq!(a_pub.len(), group.public_len());
            assert_eq!(b_pub.len(), group.public_len());
            let s1 = a.agree(&b_pub).unwrap();
            let s2 = b.agree(&a_pub).unwrap();
            assert_eq!(s1, s2, "{group:?}");
            assert_eq!(DhGroup::from_id(group.id()), Some(group));
        }
    }

    #[test]
    fn invalid_peer_values_are_refused() {
        let rng = ring::rand::SystemRandom::new();
        for group in [DhGroup::Modp2048, DhGroup::Ecp256, DhGroup::Curve25519] {
            let (a, _) = generate(group, &rng).unwrap();
            assert_eq!(a.agree(&[1, 2, 3]).err(), Some(DhError::InvalidPublic));
        }
        let (a, _) = generate(DhGroup::Modp2048, &rng).unwrap();
        let mut one = [0u8; 256];
        one[255] = 1;
        assert_eq!(a.agree(&one).err(), Some(DhError::InvalidPublic));
        let (a, _) = generate(DhGroup::Curve25519, &rng).unwrap();
        assert_eq!(a.agree(&[0u8; 32]).err(), Some(DhError::InvalidPublic));
        let (a, _) = generate(DhGroup::Ecp256, &rng).unwrap();
        assert_eq!(
            a.agree(&[7u8; 64]).err(),
            Some(DhError::InvalidPublic),
            "not on the curve"
        );
    }

    /// The prime constant is typed by hand: a Fermat test catches any typo.
    #[test]
    fn modp_prime_passes_fermat() {
        let p = U2048::from_be_hex(MODP_2048_PRIME);
        let g = MontyForm::new(&Uint::from_u8(3), modp_params());
        assert_eq!(g.pow(&p.wrapping_sub(&U2048::ONE)).retrieve(), U2048::ONE);
    }
}
