//! Unit tests that need the crate's internals: both turn schedules against the reference.

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
    fn scan_and_heap_schedules_both_match_the_reference(
        set in names_and_weights(),
        size in sizes(),
    ) {
        let mut backends: Vec<Backend> =
            set.into_iter().map(|(n, w)| Backend::new(n, w)).collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        prop_assume!(weighted <= size as usize);
        let expected = reference::populate(size, &backends);
        for schedule in [Schedule::Scan, Schedule::Heap] {
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
