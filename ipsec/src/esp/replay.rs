//! Anti-replay (RFC 4303 section 3.4.3) with extended sequence numbers (RFC 4303 appendix A).
//!
//! The check is split in two because the window may only move for packets whose integrity
//! has been verified: [`ReplayWindow::check`] infers the full 64-bit sequence number and
//! rejects duplicates and packets older than the window *before* the (costly) ICV check;
//! [`ReplayWindow::accept`] records the packet after it.

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("sequence number already received")]
    Duplicate,
    #[error("sequence number left of the replay window")]
    TooOld,
}

/// A sliding window over the highest sequence numbers received, as a ring of bits.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Window size in packets, a multiple of 64; 0 disables the check (ESN inference still
    /// needs a window, so it then uses 2^31 as RFC 4303 appendix A suggests for a receiver
    /// without anti-replay).
    size: u64,
    esn: bool,
    /// Highest sequence number accepted so far (0: none yet).
    top: u64,
    /// Bit `n & mask` set when sequence number `n` (within the window) was accepted: a ring
    /// of a power of two bits, at least `size`, so that finding a bit is a mask, not a
    /// division (two of them per packet, each dearer than the rest of the check).
    bits: Vec<u64>,
    /// The ring's length in bits, less one.
    mask: u64,
}

impl ReplayWindow {
    /// The default window: 1024 packets, enough for multi-queue reordering at line rate.
    pub const DEFAULT_SIZE: u32 = 1024;

    /// A window of `size` packets (rounded up to a multiple of 64; 0 disables anti-replay).
    pub fn new(size: u32, esn: bool) -> Self {
        let size = u64::from(size).div_ceil(64) * 64;
        let ring = if size == 0 {
            0
        } else {
            size.next_power_of_two()
        };
        Self {
            size,
            esn,
            top: 0,
            bits: vec![0; (ring / 64) as usize],
            mask: ring.saturating_sub(1),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The highest sequence number accepted.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The window size used for ESN inference.
    fn inference_size(&self) -> u64 {
        if self.size == 0 {
            1 << 31
        } else {
            self.size
        }
    }

    /// The full sequence number for the low 32 bits carried in a packet (RFC 4303
    /// appendix A2.2), or the reason to drop it. Does not change the window.
    #[inline(always)]
    pub fn check(&self, seq_low: u32) -> Result<u64, ReplayError> {
        let seq = if self.esn {
            self.infer(seq_low).ok_or(ReplayError::TooOld)?
        } else {
            u64::from(seq_low)
        };
        if seq == 0 {
            // Never sent: the first packet of an SA carries 1 (RFC 4303 section 3.3.3).
            return Err(ReplayError::TooOld);
        }
        if self.size == 0 || seq > self.top {
            return Ok(seq);
        }
        let age = self.top - seq;
        if age >= self.size {
            return Err(ReplayError::TooOld);
        }
        if self.bit(seq) {
            return Err(ReplayError::Duplicate);
        }
        Ok(seq)
    }

    fn infer(&self, seq_low: u32) -> Option<u64> {
        let window = self.inference_size();
        let top_low = self.top & 0xffff_ffff;
        let top_high = self.top >> 32;
        let seq_low = u64::from(seq_low);
        let high = if top_low >= window - 1 {
            // Case A: the window lies within one 2^32 subspace.
            if seq_low >= top_low + 1 - window {
                top_high
            } else {
                top_high.checked_add(1)?
            }
        } else {
            // Case B: the window spans two subspaces.
            let wrapped_start = (top_low + (1 << 32) + 1 - window) & 0xffff_ffff;
            if seq_low >= wrapped_start {
                // In the first subspace there is no previous one: a fresh SA's window
                // reaches back to 0, not below it.
                top_high.saturating_sub(1)
            } else {
                top_high
            }
        };
        if high > u64::from(u32::MAX) {
            return None;
        }
        Some(high << 32 | seq_low)
    }

    /// Records a packet whose integrity has been verified. `seq` must come from
    /// [`Self::check`]; re-checks so that a race between check and accept (two packets with
    /// the same number in one vector) cannot let both through.
    #[inline(always)]
    pub fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        if self.size == 0 {
            self.top = self.top.max(seq);
            return Ok(());
        }
        if seq > self.top {
            let advance = seq - self.top;
            if advance >= self.size {
                self.bits.iter_mut().for_each(|word| *word = 0);
            } else {
                for n in self.top + 1..seq {
                    self.clear_bit(n);
                }
            }
            self.top = seq;
            self.set_bit(seq);
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        if self.bit(seq) {
            return Err(ReplayError::Duplicate);
        }
        self.set_bit(seq);
        Ok(())
    }

    fn index(&self, seq: u64) -> (usize, u64) {
        let slot = seq & self.mask;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    fn bit(&self, seq: u64) -> bool {
        let (word, mask) = self.index(seq);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set_bit(&mut self, seq: u64) {
        let (word, mask) = self.index(seq);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= mask;
        }
    }

    fn clear_bit(&mut self, seq: u64) {
        let (word, mask) = self.index(seq);
        if let Some(w) = self.bits.get_mut(word) {
            *w &= !mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn receive(window: &mut ReplayWindow, seq_low: u32) -> Result<u64, ReplayError> {
        let seq = window.check(seq_low)?;
        window.accept(seq)?;
        Ok(seq)
    }

    #[test]
    fn duplicates_and_old_packets() {
        let mut w = ReplayWindow::new(64, false);
        assert_eq!(receive(&mut w, 0), Err(ReplayError::TooOld));
        assert_eq!(receive(&mut w, 1), Ok(1));
        assert_eq!(receive(&mut w, 1), Err(ReplayError::Duplicate));
        assert_eq!(receive(&mut w, 5), Ok(5));
        assert_eq!(receive(&mut w, 3), Ok(3)); // out of order, inside the window
        assert_eq!(receive(&mut w, 3), Err(ReplayError::Duplicate));
        assert_eq!(receive(&mut w, 100), Ok(100));
        // 100 - 36 = 64: just outside a 64-packet window; 37 just inside.
        assert_eq!(receive(&mut w, 36), Err(ReplayError::TooOld));
        assert_eq!(receive(&mut w, 37), Ok(37));
        assert_eq!(receive(&mut w, 5), Err(ReplayError::TooOld));
    }

    #[test]
    fn window_slide_clears_stale_bits() {
        let mut w = ReplayWindow::new(64, false);
        for seq in 1..=64 {
            receive(&mut w, seq).unwrap();
        }
        // Slide by 10: slots of 1..=10 are reused for 65..=74 and must read as fresh.
        receive(&mut w, 74).unwrap();
        for seq in 65..74 {
            assert_eq!(receive(&mut w, seq), Ok(u64::from(seq)));
        }
        assert_eq!(receive(&mut w, 10), Err(ReplayError::TooOld));
        assert_eq!(receive(&mut w, 11), Err(ReplayError::Duplicate));
        // A jump larger than the window clears everything.
        receive(&mut w, 1000).unwrap();
        assert_eq!(receive(&mut w, 999), Ok(999));
        assert_eq!(receive(&mut w, 936), Err(ReplayError::TooOld));
    }

    #[test]
    fn default_window_size() {
        let mut w = ReplayWindow::new(ReplayWindow::DEFAULT_SIZE, false);
        assert_eq!(w.size(), 1024);
        receive(&mut w, 2000).unwrap();
        assert_eq!(receive(&mut w, 977), Ok(977));
        assert_eq!(receive(&mut w, 976), Err(ReplayError::TooOld));
        // Sizes round up to whole words.
        assert_eq!(ReplayWindow::new(100, false).size(), 128);
    }

    #[test]
    fn esn_wraps_into_the_next_subspace() {
        let mut w = ReplayWindow::new(128, true);
        receive(&mut w, u32::MAX - 1).unwrap();
        assert_eq!(w.top(), u64::from(u32::MAX - 1));
        // Low 32 bits wrap: the high half is inferred as 1.
        assert_eq!(receive(&mut w, 2), Ok((1 << 32) | 2));
        // Window now spans two subspaces: a late packet from before the wrap is still
        // placed in subspace 0 (case B).
        assert_eq!(receive(&mut w, u32::MAX), Ok(u64::from(u32::MAX)));
        assert_eq!(receive(&mut w, u32::MAX - 1), Err(ReplayError::Duplicate));
        assert_eq!(receive(&mut w, 1), Ok((1 << 32) | 1));
        // Low 0 in subspace 1 is a real packet with ESN (full number 2^32).
        assert_eq!(receive(&mut w, 0), Ok(1 << 32));
        // Left of the window's start in the low half: appendix A infers the *next*
        // subspace, far ahead; the ICV check (keyed with those high bits) then refuses it.
        assert_eq!(
            w.check(u32::MAX - 300),
            Ok((1 << 32) | u64::from(u32::MAX - 300))
        );
    }

    #[test]
    fn without_esn_numbers_do_not_wrap() {
        let mut w = ReplayWindow::new(64, false);
        receive(&mut w, u32::MAX).unwrap();
        assert_eq!(receive(&mut w, 1), Err(ReplayError::TooOld));
    }

    #[test]
    fn disabled_window_accepts_repeats() {
        let mut w = ReplayWindow::new(0, false);
        assert_eq!(receive(&mut w, 5), Ok(5));
        assert_eq!(receive(&mut w, 5), Ok(5));
        assert_eq!(receive(&mut w, 0), Err(ReplayError::TooOld));
    }

    /// Differential test against a set of every accepted number.
    fn reference(size: u64, accepted: &std::collections::BTreeSet<u64>, seq: u64) -> bool {
        let top = accepted.iter().next_back().copied().unwrap_or(0);
        seq != 0 && (seq > top || (top - seq < size && !accepted.contains(&seq)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_reference(
            seqs in proptest::collection::vec(1u64..3000, 1..200),
            // 192: a window whose ring of bits (256) is longer than the window itself.
            size in prop_oneof![Just(128u32), Just(192u32)],
        ) {
            let mut w = ReplayWindow::new(size, false);
            let mut accepted = std::collections::BTreeSet::new();
            for seq in seqs {
                let expected = reference(u64::from(size), &accepted, seq);
                let got = receive(&mut w, seq as u32).is_ok();
                prop_assert_eq!(got, expected, "seq {}", seq);
                if got {
                    accepted.insert(seq);
                }
            }
        }

        #[test]
        fn esn_inference_recovers_nearby_numbers(top in 1u64..(u64::MAX >> 1), delta in -100i64..1000) {
            let mut w = ReplayWindow::new(1024, true);
            w.accept(top).unwrap();
            let seq = top as i64 + delta;
            if seq > 0 && delta != 0 {
                let seq = seq as u64;
                prop_assert_eq!(w.check(seq as u32), Ok(seq));
            }
        }
    }
}
