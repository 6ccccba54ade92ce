//! Unit tests that need the crate's internals: every turn schedule against the reference.

use proptest::prelude::*;

use super::*;
use crate::reference;

fn names_and_weights() -> impl Strategy<Value = Vec<(String, u32)>> {
    // Weights from a small range plus occasional heavy ones, so both schedules see sets where
    // most backends skip most rounds.
    let weight = prop_oneof![4 => 0u32..4, 1 => 50u32..200];
    proptest::collection::btree_map("[a-z0-9.:]{1,12}", weight, 1..40)
        .prop_map(|m| m.into_iter().collect())
}

fn sizes() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![7u32, 13, 61, 251, 1009, 4093])
}

fn as_options(entries: &[BackendIndex]) -> Vec<Option<usize>> {
    entries.iter().map(|e| Some(e.get())).collect()
}

proptest! {
    #[test]
    fn every_schedule_matches_the_reference(
        set in names_and_weights(),
        size in sizes(),
    ) {
        let mut backends: Vec<Backend> =
            set.into_iter().map(|(n, w)| Backend::new(n, w)).collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        prop_assume!(weighted <= size as usize);
        let expected = reference::populate(size, &backends);
        for schedule in [Schedule::Scan, Schedule::Heap, Schedule::RoundRobin, Schedule::Auto] {
            let entries = populate(size, &backends, schedule);
            if weighted == 0 {
                prop_assert!(entries.is_empty());
                prop_assert!(expected.iter().all(Option::is_none));
            } else {
                prop_assert_eq!(&as_options(&entries), &expected, "{:?}", schedule);
            }
        }
    }
}

proptest! {
    /// Equal weights take the round-robin paths: windows up to 128 backends, walks beyond, and
    /// the tail search in both.
    #[test]
    fn equal_weights_match_the_reference(
        n in 1usize..300,
        weight in 1u32..4,
        size in prop::sample::select(vec![7u32, 13, 61, 251, 1009, 4093, 65_537]),
        salt in any::<u16>(),
    ) {
        let mut backends: Vec<Backend> = (0..n)
            .map(|i| Backend::new(format!("{salt:x}-{i}"), weight))
            .collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        prop_assume!(n <= size as usize);
        let expected = reference::populate(size, &backends);
        prop_assert_eq!(&as_options(&populate(size, &backends, Schedule::Auto)), &expected);
    }
}

proptest! {
    /// Sorting by 16-byte prefixes first gives plain string order, also for names that share
    /// more than 16 bytes, begin one another or hold NUL bytes (what the prefixes are padded
    /// with).
    #[test]
    fn names_sort_in_string_order(
        names in proptest::collection::vec("[ab\\x00]{0,20}", 0..40),
    ) {
        let backends: Vec<Backend> =
            names.iter().map(|name| Backend::new(name.clone(), 1)).collect();
        let mut expected = names;
        expected.sort();
        let sorted: Vec<String> = sorted_by_name(backends).into_iter().map(|b| b.name).collect();
        prop_assert_eq!(sorted, expected);
    }
}

/// Every round-robin path at its edges: windows (up to 128 backends and 512 slots each), order
/// maps (up to 31 backends at 65537 slots, none below 4096 slots), the tail search (none below
/// 1024 slots).
#[test]
fn round_robin_paths_match_the_reference_at_their_edges() {
    for size in [1021u32, 4099, 65_537] {
        for n in [1usize, 2, 7, 8, 10, 31, 32, 100, 128, 129, 300, 1000] {
            if n > size as usize {
                continue;
            }
            let mut backends: Vec<Backend> = (0..n)
                .map(|i| Backend::new(format!("10.0.{}.{}:80", i / 256, i % 256), 1))
                .collect();
            backends.sort_by(|a, b| a.name.cmp(&b.name));
            let expected = reference::populate(size, &backends);
            let entries = populate(size, &backends, Schedule::Auto);
            assert_eq!(as_options(&entries), expected, "{n} backends, {size} slots");
        }
    }
}

#[test]
fn primes_are_recognised() {
    let primes: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
    assert_eq!(
        primes,
        [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
    );
    assert!(is_prime(65_537));
    assert!(is_prime(655_373));
    assert!(!is_prime(65_536));
    assert!(!is_prime(65_535));
    assert!(is_prime(16_777_213)); // the largest prime below 2^24
}
