//! FNV-1a 64 (Fowler–Noll–Vo), the hash Maglev uses to place backend names.
//!
//! FNV-1a is tiny, has no state beyond one `u64`, and is specified bit for bit, so every node,
//! every build and every restart agree on where a backend goes: that is the property Maglev
//! needs from this hash (speed hardly matters: it runs once per backend per table build).

/// The FNV-1a 64 offset basis.
pub const FNV1A64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// The FNV 64-bit prime.
pub const FNV1A64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Seed of the hash that gives a backend's starting slot (`offset`) in the Maglev table.
pub const OFFSET_SEED: u64 = 0x6f66_6673_6574; // "offset"
/// Seed of the hash that gives a backend's stride (`skip`) through the Maglev table.
pub const SKIP_SEED: u64 = 0x736b_6970; // "skip"

/// Continues an FNV-1a 64 hash from `state` over `bytes`: for each byte, xor then multiply.
#[inline]
pub const fn fnv1a64_extend(mut state: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        state ^= bytes[i] as u64;
        state = state.wrapping_mul(FNV1A64_PRIME);
        i += 1;
    }
    state
}

/// Plain FNV-1a 64 of `bytes` (the published function; its test vectors apply).
#[inline]
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(FNV1A64_OFFSET_BASIS, bytes)
}

/// FNV-1a 64 of `bytes`, seeded.
///
/// The seed is applied by hashing its 8 little-endian bytes first, from the standard offset
/// basis, and then `bytes`: that is, plain FNV-1a 64 of `seed.to_le_bytes() ++ bytes`. Two seeds
/// give two different hashes of one name (Maglev's `h1` and `h2`) while staying pure FNV-1a,
/// so any FNV-1a implementation can reproduce them.
#[inline]
pub const fn fnv1a64_seeded(seed: u64, bytes: &[u8]) -> u64 {
    fnv1a64_extend(fnv1a64(&seed.to_le_bytes()), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv, test vectors for FNV-1a 64).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn seeding_is_fnv_of_the_seed_bytes_then_the_name() {
        let mut joined = OFFSET_SEED.to_le_bytes().to_vec();
        joined.extend_from_slice(b"198.51.100.1:8080");
        assert_eq!(
            fnv1a64_seeded(OFFSET_SEED, b"198.51.100.1:8080"),
            fnv1a64(&joined)
        );
        assert_ne!(
            fnv1a64_seeded(OFFSET_SEED, b"198.51.100.1:8080"),
            fnv1a64_seeded(SKIP_SEED, b"198.51.100.1:8080")
        );
    }
}
