//! Property tests of the Maglev table: it equals the paper's populate loop (the reference) slot
//! for slot, it is balanced, adding or removing a backend moves few entries, and weights give
//! proportional shares. `cargo test -p switchyard-lb -- --nocapture` prints the measured figures.

use proptest::prelude::*;
use switchyard_lb::{
    reference, Backend, BackendIndex, MaglevError, MaglevTable, TableSize, DEFAULT_TABLE_SIZE,
};

/// Names like a Service's endpoints: `address:port`, the realistic, highly structured case for
/// a byte-wise hash.
fn endpoint_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256))
        .collect()
}

fn equal_weights(names: &[String]) -> Vec<Backend> {
    names.iter().map(|n| Backend::new(n.clone(), 1)).collect()
}

fn table(size: u32, backends: Vec<Backend>) -> MaglevTable {
    let size = TableSize::new(size).expect("test sizes are valid");
    MaglevTable::with_size(size, backends).expect("test backend sets are valid")
}

/// The backend name in every slot, to compare tables whose backend indices differ.
fn slot_names(table: &MaglevTable) -> Vec<&str> {
    table
        .entries()
        .iter()
        .map(|&i| {
            table
                .backend(i)
                .expect("entries index backends")
                .name
                .as_str()
        })
        .collect()
}

/// Fraction of slots whose backend differs between two tables of the same size.
fn moved_fraction(before: &MaglevTable, after: &MaglevTable) -> f64 {
    let (a, b) = (slot_names(before), slot_names(after));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

/// (min, max) slots per weighted backend.
fn min_max(table: &MaglevTable) -> (u32, u32) {
    let counts: Vec<u32> = table
        .slot_counts()
        .into_iter()
        .zip(table.backends())
        .filter(|(_, b)| b.weight > 0)
        .map(|(c, _)| c)
        .collect();
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    (min, max)
}

fn unique_names(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set("[a-zA-Z0-9.:-]{1,24}", 1..max)
        .prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// (1) The fast build equals the reference exactly, weights and zero weights included.
    #[test]
    fn fast_build_equals_reference(
        set in proptest::collection::btree_map(
            "[a-zA-Z0-9.:-]{1,24}",
            prop_oneof![3 => Just(1u32), 3 => 0u32..10, 1 => 0u32..1000],
            1..60,
        ),
        size in prop::sample::select(vec![7u32, 61, 251, 1009, 4093, 65_537]),
    ) {
        let backends: Vec<Backend> = set.into_iter().map(|(n, w)| Backend::new(n, w)).collect();
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        prop_assume!(weighted <= size as usize);
        let t = table(size, backends.clone());
        let expected = reference::populate(size, &backends);
        if weighted == 0 {
            prop_assert!(t.is_empty());
            prop_assert!(expected.iter().all(Option::is_none));
        } else {
            let got: Vec<Option<usize>> = t.entries().iter().map(|e| Some(e.get())).collect();
            prop_assert_eq!(got, expected);
        }
    }

    /// (2) Equal weights: every backend takes one slot per round, so shares differ by at most
    /// one slot, whatever the names (max/min <= ceil(M/N) / floor(M/N)).
    #[test]
    fn equal_weights_are_balanced_to_one_slot(
        names in unique_names(300),
        size in prop::sample::select(vec![1009u32, 4093, 65_537]),
    ) {
        prop_assume!(names.len() <= size as usize);
        let t = table(size, equal_weights(&names));
        let (min, max) = min_max(&t);
        prop_assert!(max - min <= 1, "min {min} max {max}");
        prop_assert_eq!(t.slot_counts().iter().sum::<u32>(), size);
    }

    /// (3) Removing or adding one backend moves few entries: the ideal is the removed or added
    /// backend's share, 1/N; Maglev moves a little more because the other backends' walks
    /// shift. Bound: 2x ideal plus 1% of the table.
    #[test]
    fn one_backend_more_or_less_moves_few_entries(
        names in unique_names(200),
        pick in any::<prop::sample::Index>(),
    ) {
        prop_assume!(names.len() >= 2);
        let size = DEFAULT_TABLE_SIZE;
        let all = table(size, equal_weights(&names));
        let gone = pick.get(&names);
        let rest: Vec<String> = names.iter().filter(|n| *n != gone).cloned().collect();
        let fewer = table(size, equal_weights(&rest));
        let n = names.len() as f64;
        // Removing from N backends (ideal 1/N), or adding to N - 1 (ideal 1/N again).
        let moved = moved_fraction(&all, &fewer);
        prop_assert!(moved <= 2.0 / n + 0.01, "N {n}: moved {moved:.4}, ideal {:.4}", 1.0 / n);
        prop_assert!(moved >= 1.0 / n - 1.0 / size as f64, "the removed backend's slots move");
    }

    /// (4) Weighted shares: backend i gets within 2 + N * w_i / sum(w) slots of
    /// M * w_i / sum(w) (it has taken floor(r * w_i / W) turns after round r, and the last
    /// round is partial).
    #[test]
    fn weighted_shares_are_proportional(
        set in proptest::collection::btree_map(
            "[a-z0-9.:]{1,16}",
            prop_oneof![1u32..5, 1u32..1000, Just(0u32)],
            1..100,
        ),
        size in prop::sample::select(vec![4093u32, 65_537]),
    ) {
        let backends: Vec<Backend> = set.into_iter().map(|(n, w)| Backend::new(n, w)).collect();
        let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        prop_assume!(total > 0.0);
        let t = table(size, backends);
        let n = t.backends().iter().filter(|b| b.weight > 0).count() as f64;
        for (backend, count) in t.backends().iter().zip(t.slot_counts()) {
            let share = f64::from(backend.weight) / total;
            let ideal = f64::from(size) * share;
            let slack = 2.0 + n * share + 1e-9;
            prop_assert!(
                (f64::from(count) - ideal).abs() <= slack,
                "{backend:?}: {count} slots, ideal {ideal:.1}, slack {slack:.1}"
            );
        }
    }

    /// Same set, any order: the same table.
    #[test]
    fn input_order_does_not_matter(names in unique_names(50), seed in any::<u64>()) {
        let backends: Vec<Backend> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Backend::new(n.clone(), (i % 3) as u32))
            .collect();
        let mut shuffled = backends.clone();
        // A cheap deterministic shuffle driven by the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(table(1009, backends), table(1009, shuffled));
    }

    /// Lookups never miss on a non-empty table and agree with slot `hash mod M`.
    #[test]
    fn lookup_is_slot_hash_mod_m(names in unique_names(20), hash in any::<u64>()) {
        let t = table(251, equal_weights(&names));
        let index = t.lookup(hash);
        prop_assert_eq!(index, Some(t.entries()[(hash % 251) as usize]));
        prop_assert_eq!(
            t.lookup_backend(hash).map(|b| b.name.as_str()),
            index.and_then(|i| t.backend(i)).map(|b| b.name.as_str())
        );
    }
}

/// Balance and disruption with realistic `address:port` names and with opaque ones (pod UIDs),
/// at the paper's size and at ten times it; prints the figures (`--nocapture`).
#[test]
fn balance_and_disruption_figures() {
    let uid_names = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "{:016x}-pod",
                    (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                )
            })
            .collect()
    };
    let cases: [(&str, u32, &[usize]); 3] = [
        ("addr:port", DEFAULT_TABLE_SIZE, &[10, 100, 1000]),
        ("pod-uid", DEFAULT_TABLE_SIZE, &[10, 100, 1000]),
        ("addr:port", 655_373, &[1000]),
    ];
    for (kind, size, ns) in cases {
        for &n in ns {
            let names = if kind == "pod-uid" {
                uid_names(n)
            } else {
                endpoint_names(n)
            };
            disruption_figures(kind, size, &names);
        }
    }
}

fn disruption_figures(kind: &str, size: u32, names: &[String]) {
    let n = names.len();
    let all = table(size, equal_weights(names));
    let (min, max) = min_max(&all);
    assert!(max - min <= 1);

    // Remove each of a spread of backends in turn, then add a new one.
    let mut removal = Vec::new();
    for k in (0..n).step_by((n / 10).max(1)) {
        let rest: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != k)
            .map(|(_, s)| s.clone())
            .collect();
        removal.push(moved_fraction(&all, &table(size, equal_weights(&rest))));
    }
    let mut more = names.to_vec();
    more.push("203.0.113.254:8080".to_owned());
    let added = moved_fraction(&all, &table(size, equal_weights(&more)));

    let ideal_remove = 1.0 / n as f64;
    let ideal_add = 1.0 / (n + 1) as f64;
    let worst_remove = removal.iter().copied().fold(0.0, f64::max);
    let mean_remove = removal.iter().sum::<f64>() / removal.len() as f64;
    println!(
        "{kind:9} M={size} N={n}: slots/backend min {min} max {max} (max/min {:.4}); \
         remove one: moved mean {mean_remove:.4} worst {worst_remove:.4} \
         (ideal {ideal_remove:.4}, {:.2}x); add one: moved {added:.4} (ideal {ideal_add:.4}, {:.2}x)",
        f64::from(max) / f64::from(min),
        mean_remove / ideal_remove,
        added / ideal_add,
    );
    assert!(worst_remove <= 2.0 * ideal_remove + 0.01);
    assert!(added <= 2.0 * ideal_add + 0.01);
}

#[test]
fn tables_are_stable_across_builds_and_versions() {
    // Pinned: a change here changes every node's table, so mixed versions would disagree.
    let t = table(13, equal_weights(&endpoint_names(3)));
    let slots: Vec<usize> = t.entries().iter().map(|i| i.get()).collect();
    assert_eq!(slots, PINNED_13_SLOTS);
}

const PINNED_13_SLOTS: [usize; 13] = [0, 2, 2, 1, 2, 2, 1, 0, 0, 0, 1, 1, 0];

#[test]
fn empty_and_zero_weight_sets_miss_without_panicking() {
    let empty = MaglevTable::new(Vec::new()).expect("empty set is valid");
    assert!(empty.is_empty());
    assert_eq!(empty.lookup(42), None);
    assert_eq!(empty.lookup_backend(u64::MAX), None);

    let zero = MaglevTable::new([Backend::new("a", 0), Backend::new("b", 0)]).expect("valid");
    assert!(zero.is_empty());
    assert_eq!(zero.lookup(0), None);
    assert_eq!(zero.backends().len(), 2);

    let some = table(61, vec![Backend::new("a", 0), Backend::new("b", 3)]);
    assert_eq!(some.slot_counts(), [0, 61]);
    assert_eq!(some.lookup(7), Some(some.entries()[7]));
    assert_eq!(some.lookup_backend(7).map(|b| b.name.as_str()), Some("b"));
}

#[test]
fn bad_sizes_and_sets_are_typed_errors() {
    assert_eq!(TableSize::new(65_536), Err(MaglevError::NotPrime(65_536)));
    assert!(matches!(
        TableSize::new(5),
        Err(MaglevError::TooSmall { size: 5, .. })
    ));
    assert!(matches!(
        TableSize::new(0),
        Err(MaglevError::TooSmall { .. })
    ));
    assert!(matches!(
        TableSize::new(16_777_259),
        Err(MaglevError::TooLarge { .. })
    ));
    assert_eq!(TableSize::default().get(), DEFAULT_TABLE_SIZE);
    assert_eq!(TableSize::try_from(7).map(TableSize::get), Ok(7));

    let dup = MaglevTable::new([
        Backend::new("a", 1),
        Backend::new("b", 1),
        Backend::new("a", 2),
    ]);
    assert_eq!(dup, Err(MaglevError::DuplicateBackend("a".to_owned())));

    let size = TableSize::new(7).expect("prime");
    let many = MaglevTable::with_size(size, equal_weights(&endpoint_names(8)));
    assert_eq!(
        many,
        Err(MaglevError::TooManyBackends {
            backends: 8,
            size: 7
        })
    );
    // Zero-weight backends do not count against the size.
    let mut fits = equal_weights(&endpoint_names(7));
    fits.push(Backend::new("idle", 0));
    assert!(MaglevTable::with_size(size, fits).is_ok());
}

#[test]
fn backend_index_round_trips() {
    let t = table(61, equal_weights(&endpoint_names(4)));
    for (i, backend) in t.backends().iter().enumerate() {
        let index: BackendIndex = t
            .entries()
            .iter()
            .copied()
            .find(|e| e.get() == i)
            .expect("every backend has a slot");
        assert_eq!(usize::from(index), i);
        assert_eq!(t.backend(index), Some(backend));
    }
}
