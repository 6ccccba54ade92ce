//! Helpers shared by the wire tests.

/// Decodes hex written with arbitrary whitespace, as captures are pasted into tests.
pub(crate) fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => panic!("not a hex digit: {}", b as char),
        })
        .collect();
    assert!(
        digits.chunks_exact(2).remainder().is_empty(),
        "odd number of hex digits"
    );
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}

/// Asserts that `check` rejects every strict prefix of `bytes` (and does not panic on it).
pub(crate) fn assert_prefixes_rejected<E>(bytes: &[u8], check: impl Fn(&[u8]) -> Result<(), E>) {
    for len in 0..bytes.len() {
        assert!(
            check(&bytes[..len]).is_err(),
            "prefix of {len} of {} bytes was accepted",
            bytes.len()
        );
    }
}
