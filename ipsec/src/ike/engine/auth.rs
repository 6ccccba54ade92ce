//! AUTH payloads (RFC 7296 section 2.15): the pre-shared key, or an X.509 signature with the
//! certificate before it (see `cert.rs`), as a peer's configuration says.

use super::*;
use crate::crypto::PrfAlgorithm;
use crate::crypto::SecretBytes;
use crate::ike::keys::signed_octets;
use crate::ike::wire::Identification;

/// What AUTH covers besides the identity: the sender's first message and the other end's
/// nonce, with the sender's SK_p.
pub(super) struct Signed<'a> {
    pub prf: PrfAlgorithm,
    pub real_message: &'a [u8],
    pub nonce: &'a [u8],
    pub sk_p: &'a SecretBytes,
}

impl Signed<'_> {
    /// The pre-shared-key AUTH value for identity `id`.
    fn psk_auth(&self, psk: &SecretBytes, id: &Identification) -> SecretBytes {
        psk_auth(
            self.prf,
            psk.expose(),
            self.real_message,
            self.nonce,
            self.sk_p,
            &id.body(),
        )
    }

    /// The octets a signature for identity `id` covers.
    fn octets(&self, id: &Identification) -> Vec<u8> {
        signed_octets(
            self.prf,
            self.real_message,
            self.nonce,
            self.sk_p,
            &id.body(),
        )
    }
}

impl Engine {
    /// Our AUTH payload for the peer configuration `peer` and our identity `id`, and the
    /// CERT payload to send before it when we authenticate with a certificate. `None` when
    /// signing failed (counted).
    pub(super) fn our_auth(
        &mut self,
        peer: usize,
        signed: &Signed<'_>,
        id: &Identification,
        peer_hashes: &[u16],
    ) -> Option<(Vec<Payload>, Payload)> {
        let config = &self.config.peers[peer];
        match &config.certs {
            None => {
                let auth = signed.psk_auth(&config.psk, id);
                Some((
                    Vec::new(),
                    Payload::Auth {
                        method: AUTH_METHOD_PSK,
                        data: auth.expose().to_vec(),
                    },
                ))
            }
            Some(certs) => match certs.sign(&signed.octets(id), peer_hashes) {
                Ok(auth) => Some((certs.cert_payloads(), auth)),
                Err(_) => {
                    self.counters.tx_seal_failures += 1;
                    None
                }
            },
        }
    }

    /// Whether the peer's AUTH (`method`, `data`) proves identity `id` for the peer
    /// configuration `peer`: the pre-shared key, or a certificate from our CA among
    /// `payloads` naming `id`, valid at the caller's calendar time `wall`, and a signature
    /// under its key.
    pub(super) fn peer_auth_ok(
        &mut self,
        peer: usize,
        signed: &Signed<'_>,
        id: &Identification,
        (method, data): (u8, &[u8]),
        payloads: &[Payload],
        wall: SystemTime,
    ) -> bool {
        let config = &self.config.peers[peer];
        match &config.certs {
            None => {
                let expected = signed.psk_auth(&config.psk, id);
                method == AUTH_METHOD_PSK && bool::from(expected.expose().ct_eq(data))
            }
            Some(certs) => {
                let octets = signed.octets(id);
                match certs.verify_peer(payloads, id, method, data, &octets, wall) {
                    Ok(()) => true,
                    Err(_) => {
                        self.counters.cert_rejected += 1;
                        false
                    }
                }
            }
        }
    }
}
