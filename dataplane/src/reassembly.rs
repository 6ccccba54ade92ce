//! Reassembly of fragmented datagrams addressed to this node (RFC 791 3.2, RFC 8200 4.5).
//!
//! Fragments are copied out of their buffers into a per-datagram byte vector, so a datagram
//! may be larger than any one packet buffer; the caller decides what to do with the whole.
//! Bounded in every direction: datagrams in progress, size, and time. Overlapping fragments
//! discard the datagram (RFC 5722, and the same for IPv4: overlaps are a known evasion trick).

use std::net::IpAddr;

use fnv::FnvHashMap;

use crate::graph::Nanos;

/// Most datagrams being reassembled at once.
pub const MAX_IN_PROGRESS: usize = 64;
/// Largest datagram payload accepted.
pub const MAX_PAYLOAD: usize = 65_535;
/// How long an incomplete IPv4 datagram is kept (Linux's `ipfrag_time`).
pub const TIMEOUT_V4: Nanos = 30_000_000_000;
/// How long an incomplete IPv6 datagram is kept (RFC 8200 4.5).
pub const TIMEOUT_V6: Nanos = 60_000_000_000;

/// Which datagram a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Identification (16 bits for IPv4).
    pub id: u32,
    /// Upper-layer protocol (IPv4 only; 0 for IPv6).
    pub protocol: u8,
}

/// One fragment, as the IP layer found it.
#[derive(Clone, Copy, Debug)]
pub struct Fragment<'a> {
    /// Offset of `data` in the datagram's payload, in bytes.
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
    /// The fragment's part of the payload.
    pub data: &'a [u8],
    /// For the first fragment: the header to put in front of the whole payload.
    pub header: Option<&'a [u8]>,
}

/// What adding a fragment gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Waiting for more.
    Incomplete,
    /// The whole datagram: the first fragment's header and the full payload.
    Complete {
        /// The first fragment's header bytes, as given.
        header: Vec<u8>,
        /// The reassembled payload.
        payload: Vec<u8>,
    },
    /// The fragment (and its datagram) were dropped.
    Dropped(DropReason),
}

/// Why a fragment was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It overlaps data already received.
    Overlap,
    /// The datagram would exceed [`MAX_PAYLOAD`].
    TooBig,
    /// Too many datagrams in progress.
    Full,
    /// Offsets that cannot be (a middle fragment whose length is not a multiple of 8, data
    /// past the end the last fragment announced).
    Inconsistent,
}

#[derive(Debug)]
struct Partial {
    header: Option<Vec<u8>>,
    /// How many bytes of data the first fragment carried (with `header`, the first fragment
    /// as it came).
    first_len: usize,
    payload: Vec<u8>,
    /// Received byte ranges, sorted and disjoint.
    ranges: Vec<(usize, usize)>,
    total: Option<usize>,
    started: Nanos,
    timeout: Nanos,
}

/// Datagrams in reassembly.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: FnvHashMap<FragmentKey, Partial>,
    /// Datagrams dropped because they did not complete in time.
    pub timeouts: u64,
    /// The first fragments (header and what data came with them) of datagrams that timed out,
    /// to answer with time exceeded (reassembly), RFC 1122 3.3.2 and RFC 8200 4.5; taken by
    /// the graph's housekeeping. Bounded by [`MAX_IN_PROGRESS`].
    pub timed_out_first: Vec<Vec<u8>>,
}

/// A datagram's first fragment again, as it came: its header (lengths and all, which
/// describe that fragment) and its data, cut to [`TIMED_OUT_QUOTE`] bytes, which is all an
/// error may quote of it.
fn first_fragment(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity((header.len() + data.len()).min(TIMED_OUT_QUOTE));
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    bytes.truncate(TIMED_OUT_QUOTE);
    bytes
}

/// Most bytes of a timed-out datagram's first fragment kept for the ICMP error: what an
/// IPv6 error can quote (the IPv4 one quotes less).
const TIMED_OUT_QUOTE: usize = 1232;

impl Reassembler {
    /// Adds a fragment; `timeout` is how long its datagram may take.
    pub fn add(
        &mut self,
        key: FragmentKey,
        frag: Fragment<'_>,
        timeout: Nanos,
        now: Nanos,
    ) -> Outcome {
        let end = frag.offset + frag.data.len();
        if end > MAX_PAYLOAD {
            self.partial.remove(&key);
            return Outcome::Dropped(DropReason::TooBig);
        }
        if frag.more && !frag.data.len().is_multiple_of(8) {
            return Outcome::Dropped(DropReason::Inconsistent);
        }
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_IN_PROGRESS {
            return Outcome::Dropped(DropReason::Full);
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            header: None,
            first_len: 0,
            payload: Vec::new(),
            ranges: Vec::new(),
            total: None,
            started: now,
            timeout,
        });
        if let Err(reason) = Self::merge(p, &frag, end) {
            self.partial.remove(&key);
            return Outcome::Dropped(reason);
        }
        let complete = p.total.is_some_and(|t| p.ranges == [(0, t)]) && p.header.is_some();
        if !complete {
            return Outcome::Incomplete;
        }
        match self.partial.remove(&key) {
            Some(Partial {
                header: Some(header),
                payload,
                ..
            }) => Outcome::Complete { header, payload },
            _ => Outcome::Incomplete,
        }
    }

    fn merge(p: &mut Partial, frag: &Fragment<'_>, end: usize) -> Result<(), DropReason> {
        if !frag.more {
            if p.total.is_some_and(|t| t != end) || p.ranges.last().is_some_and(|r| r.1 > end) {
                return Err(DropReason::Inconsistent);
            }
            p.total = Some(end);
        } else if p.total.is_some_and(|t| end > t) {
            return Err(DropReason::Inconsistent);
        }
        if frag.data.is_empty() {
            return Ok(());
        }
        // A fragment the network duplicated changes nothing (RFC 791's algorithm just copies
        // it again; RFC 5722 section 4 lets IPv6 drop exact duplicates quietly too); any other
        // overlap discards the datagram (RFC 5722).
        let covered = p.ranges.iter().any(|&(s, e)| s <= frag.offset && end <= e);
        if covered && p.payload.get(frag.offset..end) == Some(frag.data) {
            return Ok(());
        }
        if p.ranges.iter().any(|&(s, e)| frag.offset < e && s < end) {
            return Err(DropReason::Overlap);
        }
        if p.payload.len() < end {
            p.payload.resize(end, 0);
        }
        p.payload[frag.offset..end].copy_from_slice(frag.data);
        if let Some(h) = frag.header {
            p.header = Some(h.to_vec());
            p.first_len = frag.data.len();
        }
        // Insert and coalesce with touching neighbours.
        let i = p.ranges.partition_point(|r| r.0 < frag.offset);
        p.ranges.insert(i, (frag.offset, end));
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(p.ranges.len());
        for &(s, e) in &p.ranges {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        p.ranges = merged;
        Ok(())
    }

    /// Drops datagrams that ran out of time, returning how many; keeps the first fragment of
    /// each that had one in [`Reassembler::timed_out_first`].
    pub fn expire(&mut self, now: Nanos) -> usize {
        let before = self.partial.len();
        let first = &mut self.timed_out_first;
        self.partial.retain(|_, p| {
            let live = now.saturating_sub(p.started) < p.timeout;
            if !live && first.len() < MAX_IN_PROGRESS {
                if let Some(header) = &p.header {
                    let data = &p.payload[..p.first_len.min(p.payload.len())];
                    first.push(first_fragment(header, data));
                }
            }
            live
        });
        let expired = before - self.partial.len();
        self.timeouts += expired as u64;
        expired
    }

    /// Datagrams in progress.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    /// True when nothing is in progress.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> FragmentKey {
        FragmentKey {
            src: "198.18.1.2".parse().unwrap(),
            dst: "198.18.1.1".parse().unwrap(),
            id: 7,
            protocol: 1,
        }
    }

    fn frag(offset: usize, more: bool, data: &[u8]) -> Fragment<'_> {
        Fragment {
            offset,
            more,
            data,
            header: (offset == 0).then_some(&[0x45u8][..]),
        }
    }

    #[test]
    fn out_of_order_fragments_complete_once() {
        let payload: Vec<u8> = (0..40u8).collect();
        let mut r = Reassembler::default();
        assert_eq!(
            r.add(key(), frag(32, false, &payload[32..]), TIMEOUT_V4, 0),
            Outcome::Incomplete
        );
        assert_eq!(
            r.add(key(), frag(0, true, &payload[..16]), TIMEOUT_V4, 0),
            Outcome::Incomplete
        );
        assert_eq!(
            r.add(key(), frag(16, true, &payload[16..32]), TIMEOUT_V4, 0),
            Outcome::Complete {
                header: vec![0x45],
                payload: payload.clone()
            }
        );
        assert!(r.is_empty());
    }

    #[test]
    fn overlaps_and_oversize_drop_the_datagram() {
        let mut r = Reassembler::default();
        r.add(key(), frag(0, true, &[0; 16]), TIMEOUT_V4, 0);
        assert_eq!(
            r.add(key(), frag(8, true, &[0; 16]), TIMEOUT_V4, 0),
            Outcome::Dropped(DropReason::Overlap)
        );
        assert!(r.is_empty());
        assert_eq!(
            r.add(key(), frag(65_528, false, &[0; 16]), TIMEOUT_V4, 0),
            Outcome::Dropped(DropReason::TooBig)
        );
        assert_eq!(
            r.add(key(), frag(0, true, &[0; 5]), TIMEOUT_V4, 0),
            Outcome::Dropped(DropReason::Inconsistent)
        );
    }

    #[test]
    fn incomplete_datagrams_time_out() {
        let mut r = Reassembler::default();
        r.add(key(), frag(0, true, &[1; 8]), TIMEOUT_V4, 0);
        assert_eq!(r.expire(TIMEOUT_V4 - 1), 0);
        assert_eq!(r.expire(TIMEOUT_V4), 1);
        assert_eq!(r.timeouts, 1);
        assert!(r.is_empty());
    }

    proptest! {
        #[test]
        fn any_order_of_fragments_reassembles(
            len in 1usize..3000,
            chunk in 1usize..64,
            seed in any::<u64>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let step = chunk * 8;
            let mut pieces: Vec<(usize, bool)> = (0..len)
                .step_by(step)
                .map(|o| (o, o + step < len))
                .collect();
            // A deterministic shuffle from the seed.
            let mut s = seed;
            for i in (1..pieces.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                pieces.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut r = Reassembler::default();
            let mut done = None;
            for (o, more) in pieces {
                let end = (o + step).min(len);
                match r.add(key(), frag(o, more, &payload[o..end]), TIMEOUT_V4, 0) {
                    Outcome::Incomplete => {}
                    Outcome::Complete { payload: p, .. } => done = Some(p),
                    Outcome::Dropped(d) => prop_assert!(false, "dropped: {:?}", d),
                }
            }
            prop_assert_eq!(done, Some(payload));
        }
    }
}
