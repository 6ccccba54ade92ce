//! The security association: configuration in, prepared state and counters out.

use super::replay::ReplayWindow;
use super::EspError;
use crate::crypto::{
    AeadAlgorithm, CbcAlgorithm, CbcHmac, CryptoBackend, MacAlgorithm, PreparedAead, SecretBytes,
    SymCtx,
};
use std::fmt;

/// Monotonic time in nanoseconds, as the dataplane counts it (never read here: passed in).
pub type Nanos = u64;

/// The transforms of an ESP SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspSuite {
    /// AES-GCM with a 16-byte ICV (RFC 4106).
    Gcm(AeadAlgorithm),
    /// AES-CBC (RFC 3602) with HMAC-SHA-2 (RFC 4868).
    CbcHmac(CbcAlgorithm, MacAlgorithm),
}

impl EspSuite {
    /// Encryption key length as taken from KEYMAT (GCM: AES key plus 4-byte salt).
    pub fn encryption_key_len(self) -> usize {
        match self {
            Self::Gcm(a) => a.key_len() + AeadAlgorithm::SALT_LEN,
            Self::CbcHmac(c, _) => c.key_len(),
        }
    }

    /// Integrity key length as taken from KEYMAT (0 for AEAD).
    pub fn integrity_key_len(self) -> usize {
        match self {
            Self::Gcm(_) => 0,
            Self::CbcHmac(_, m) => m.key_len(),
        }
    }

    /// Length of the IV carried in each packet.
    pub fn iv_len(self) -> usize {
        match self {
            Self::Gcm(_) => AeadAlgorithm::IV_LEN,
            Self::CbcHmac(..) => CbcAlgorithm::BLOCK_LEN,
        }
    }

    pub fn icv_len(self) -> usize {
        match self {
            Self::Gcm(_) => AeadAlgorithm::TAG_LEN,
            Self::CbcHmac(_, m) => m.icv_len(),
        }
    }

    /// What payload plus trailer is padded to.
    ///
    /// AES-GCM needs only 4 (RFC 4106 section 3.2), but pads here to the AES block as well
    /// (RFC 4303 section 2.4 lets a sender add up to 255 bytes): a last partial block costs
    /// the AEAD more than the whole blocks before it. With `ring`, sealing the 68 bytes a
    /// 64-byte packet needs took 114 ns and the 80 bytes of whole blocks 86 ns; at 512 bytes,
    /// 166 against 146 ns. The price is up to 12 bytes more on the wire.
    pub fn block_len(self) -> usize {
        match self {
            Self::Gcm(_) | Self::CbcHmac(..) => CbcAlgorithm::BLOCK_LEN,
        }
    }
}

/// Keys for one direction, as carved from KEYMAT.
#[derive(Clone, PartialEq, Eq)]
pub struct EspKeys {
    /// Encryption key (with the trailing 4-byte salt for GCM).
    pub encryption: SecretBytes,
    /// Integrity key (empty for GCM).
    pub integrity: SecretBytes,
}

impl fmt::Debug for EspKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EspKeys(<redacted>)")
    }
}

/// Soft and hard limits; soft asks for a rekey, hard stops the SA. Times count from creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub soft_bytes: Option<u64>,
    pub hard_bytes: Option<u64>,
    pub soft_time: Option<Nanos>,
    pub hard_time: Option<Nanos>,
}

/// Where an SA stands against its [`Lifetime`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LifetimeState {
    Fresh,
    /// Past a soft limit: rekey now.
    Soft,
    /// Past a hard limit: packets are refused.
    Hard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Everything needed to build one direction of an ESP SA: plain data, as IKE produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaConfig {
    pub spi: u32,
    pub suite: EspSuite,
    pub keys: EspKeys,
    /// Extended (64-bit) sequence numbers, RFC 4304.
    pub esn: bool,
    /// Inbound only: replay window in packets (0 disables anti-replay).
    pub replay_window: u32,
    pub lifetime: Lifetime,
}

/// Per-SA counters. Bytes count inner packets (what the user sent), as `ip xfrm` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaCounters {
    pub packets: u64,
    pub bytes: u64,
    pub replay_drops: u64,
    pub auth_failures: u64,
    /// Bad trailers, unsupported inner protocols, truncated ciphertext.
    pub other_drops: u64,
    pub lifetime_drops: u64,
}

// The GCM key inline (see `PreparedAead`): the SA is made once and never moved per packet.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SaCrypto {
    Gcm { aead: PreparedAead, salt: [u8; 4] },
    CbcHmac(Box<dyn CbcHmac>),
}

/// One direction of a CHILD_SA, ready for packets.
pub struct Sa {
    pub(crate) spi: u32,
    pub(crate) suite: EspSuite,
    pub(crate) esn: bool,
    pub(crate) direction: Direction,
    pub(crate) crypto: SaCrypto,
    /// Outbound: the last sequence number used.
    pub(crate) seq: u64,
    /// Inbound: the replay window (also infers ESN high bits).
    pub(crate) replay: ReplayWindow,
    pub(crate) lifetime: Lifetime,
    pub(crate) created: Nanos,
    pub(crate) counters: SaCounters,
    /// Outbound: the highest sequence number the SA may send (`u32::MAX`, or `u64::MAX`
    /// with ESN), so that the per-packet check is one compare.
    pub(crate) seq_limit: u64,
    /// The hard limits as the per-packet check wants them ([`Sa::past_hard_limit`]): the
    /// byte count and the time at which the SA expires, `u64::MAX` for no limit (a count of
    /// 2^64 bytes or an uptime of 584 years is never reached).
    pub(crate) hard_bytes: u64,
    pub(crate) hard_deadline: Nanos,
}

impl fmt::Debug for Sa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("suite", &self.suite)
            .field("esn", &self.esn)
            .field("direction", &self.direction)
            .field("seq", &self.seq)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Sa {
    /// Prepares an SA: checks key lengths and runs the key schedules once.
    pub fn new(
        backend: &dyn CryptoBackend,
        config: &SaConfig,
        direction: Direction,
        now: Nanos,
    ) -> Result<Self, EspError> {
        if config.spi == 0 {
            return Err(EspError::Malformed);
        }
        let enc = config.keys.encryption.expose();
        let crypto = match config.suite {
            EspSuite::Gcm(algorithm) => {
                if enc.len() != algorithm.key_len() + AeadAlgorithm::SALT_LEN {
                    return Err(EspError::Crypto(crate::crypto::CryptoError::KeyLength));
                }
                let (key, salt) = enc.split_at(algorithm.key_len());
                let mut salt_bytes = [0u8; 4];
                salt_bytes.copy_from_slice(salt);
                SaCrypto::Gcm {
                    aead: backend
                        .prepared_aead(algorithm, key)
                        .map_err(EspError::Crypto)?,
                    salt: salt_bytes,
                }
            }
            EspSuite::CbcHmac(cipher, mac) => SaCrypto::CbcHmac(
                backend
                    .cbc_hmac(cipher, enc, mac, config.keys.integrity.expose())
                    .map_err(EspError::Crypto)?,
            ),
        };
        Ok(Self {
            spi: config.spi,
            suite: config.suite,
            esn: config.esn,
            direction,
            crypto,
            seq: 0,
            replay: ReplayWindow::new(config.replay_window, config.esn),
            lifetime: config.lifetime,
            created: now,
            counters: SaCounters::default(),
            seq_limit: if config.esn {
                u64::MAX
            } else {
                u64::from(u32::MAX)
            },
            hard_bytes: config.lifetime.hard_bytes.unwrap_or(u64::MAX),
            // `age >= hard_time` with `age = now - created` (0 before `created`): the same
            // as `now >= created + hard_time`, except that a limit of 0 has expired even
            // before `created`.
            hard_deadline: match config.lifetime.hard_time {
                None => u64::MAX,
                Some(0) => 0,
                Some(limit) => now.saturating_add(limit),
            },
        })
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The SA's prepared crypto context, for a batch of operations
    /// ([`CryptoBackend::process`]).
    #[inline]
    pub fn crypto_ctx(&self) -> SymCtx<'_> {
        match &self.crypto {
            SaCrypto::Gcm { aead, .. } => SymCtx::Aead(aead.as_dyn()),
            SaCrypto::CbcHmac(ctx) => SymCtx::CbcHmac(ctx.as_ref()),
        }
    }

    pub fn suite(&self) -> EspSuite {
        self.suite
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn esn(&self) -> bool {
        self.esn
    }

    pub fn counters(&self) -> &SaCounters {
        &self.counters
    }

    /// Outbound: the last sequence number sent. Inbound: the highest accepted.
    pub fn sequence(&self) -> u64 {
        match self.direction {
            Direction::Outbound => self.seq,
            Direction::Inbound => self.replay.top(),
        }
    }

    /// Sets the next outbound sequence number base (tests of wrap-around and ESN).
    pub fn set_sequence(&mut self, last_sent: u64) {
        self.seq = last_sent;
    }

    /// Where the SA stands against its lifetime at `now`.
    pub fn lifetime_state(&self, now: Nanos) -> LifetimeState {
        let age = now.saturating_sub(self.created);
        let bytes = self.counters.bytes;
        let over = |limit: Option<u64>, value: u64| limit.is_some_and(|l| value >= l);
        if over(self.lifetime.hard_bytes, bytes) || over(self.lifetime.hard_time, age) {
            LifetimeState::Hard
        } else if over(self.lifetime.soft_bytes, bytes) || over(self.lifetime.soft_time, age) {
            LifetimeState::Soft
        } else {
            LifetimeState::Fresh
        }
    }

    /// Past a hard limit at `now`: [`lifetime_state`](Self::lifetime_state) is `Hard`. The
    /// per-packet check, without the soft limits.
    #[inline]
    pub fn past_hard_limit(&self, now: Nanos) -> bool {
        (self.counters.bytes >= self.hard_bytes) | (now >= self.hard_deadline)
    }

    /// Bytes added to the inner packet: ESP header, IV, worst-case padding, trailer, ICV
    /// (not the outer IP or UDP header).
    pub fn esp_overhead(&self) -> usize {
        8 + self.suite.iv_len() + self.suite.block_len() - 1 + 2 + self.suite.icv_len()
    }
}
