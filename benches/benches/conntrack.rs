//! Conntrack (`switchyard_dataplane::conntrack`) at 1M entries: insert, established-flow
//! lookup + track, and lookup miss, in ns per operation; and memory per entry.
//!
//! `cargo bench -p switchyard-benches --bench conntrack`. The table is filled once with
//! 1,048,576 DNATed TCP connections, each walked through the handshake to Established.
//! Every iteration handles the next 1024 of 262,144 precomputed keys in a pseudo-random order
//! (hits: half original, half reply tuples), so lookups miss the CPU caches as a real flow
//! mix does; ns/op = time / 1024. `established_hot_*` repeats one batch, so its entries stay
//! in cache: the CPU cost without the memory latency. `*_lookup_batch_*` uses
//! `Conntrack::lookup_batch`, whose staged reads let the cache misses of a batch overlap. Inserts go into the full-sized table and are removed again outside
//! the timed region, so the table stays at 1M entries.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard_dataplane::conntrack::{
    tcp_flags, Conntrack, ConntrackConfig, Direction, EntryId, FlowKey, PROTO_TCP,
};

const ENTRIES: u32 = 1 << 20;
const BATCH: usize = 1024;
/// Keys per benchmark: 256 batches, far more memory than the caches hold.
const KEYS: usize = 256 * BATCH;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);

/// Client `i`'s connection to the VIP and the reply tuple after DNAT to a backend.
fn flow(i: u32) -> (FlowKey, FlowKey) {
    // 1024 ports per client: up to 2^27 flows stay inside 198.18.0.0/15.
    let client = IpAddr::V4(Ipv4Addr::from_bits(0xc612_0000 + (i >> 10)));
    let port = 1024 + (i & 0x3ff) as u16;
    let backend = IpAddr::V4(Ipv4Addr::new(198, 19, (i % 251) as u8, 10));
    let original = FlowKey::new(client, IpAddr::V4(VIP), PROTO_TCP, port, 80);
    let reply = FlowKey::new(backend, client, PROTO_TCP, 8080, port);
    (original, reply)
}

/// splitmix64, for a fixed pseudo-random order.
fn shuffled(n: usize, count: usize, mut state: u64) -> Vec<u32> {
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % n as u64) as u32
        })
        .collect()
}

fn filled() -> Conntrack {
    let mut ct = Conntrack::new(ConntrackConfig {
        capacity: ENTRIES + BATCH as u32,
        ..ConntrackConfig::default()
    });
    let handshake = [
        (Direction::Original, tcp_flags::SYN),
        (Direction::Reply, tcp_flags::SYN | tcp_flags::ACK),
        (Direction::Original, tcp_flags::ACK),
    ];
    for i in 0..ENTRIES {
        let (original, reply) = flow(i);
        let id = match ct.insert(original, reply, i % 251, 0) {
            Ok(id) => id,
            Err(e) => panic!("fill {i}: {e}"),
        };
        for (dir, flags) in handshake {
            ct.track(id, dir, Some(flags), 64, 0);
        }
    }
    assert_eq!(ct.len(), ENTRIES as usize);
    ct
}

fn conntrack(c: &mut Criterion) {
    let mut ct = filled();
    println!(
        "conntrack: {} entries, {} bytes per entry at capacity (slab + index)",
        ct.len(),
        ct.memory_bytes() / ct.config().capacity as usize
    );
    let mut group = c.benchmark_group("conntrack_1m");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    // Many batches, walked in turn: each iteration touches entries no recent one did.
    let hits: Vec<FlowKey> = shuffled(ENTRIES as usize, KEYS, 1)
        .into_iter()
        .enumerate()
        .map(|(n, i)| {
            let (original, reply) = flow(i);
            if n % 2 == 0 {
                original
            } else {
                reply
            }
        })
        .collect();
    let mut batches = hits.chunks(BATCH).cycle();
    group.bench_function("established_lookup_track_x1024", |b| {
        b.iter(|| {
            for key in black_box(batches.next().unwrap_or_default()) {
                if let Some((id, dir)) = ct.lookup(key, 1) {
                    ct.track(id, dir, Some(tcp_flags::ACK), 64, 1);
                }
            }
        })
    });

    let misses: Vec<FlowKey> = shuffled(ENTRIES as usize, KEYS, 2)
        .into_iter()
        .map(|i| flow(i).0.reversed())
        .collect();
    // The same 1024 flows every time: the per-packet CPU cost once they are cache-resident.
    let hot = &hits[..BATCH];
    group.bench_function("established_hot_lookup_track_x1024", |b| {
        b.iter(|| {
            for key in black_box(hot) {
                if let Some((id, dir)) = ct.lookup(key, 1) {
                    ct.track(id, dir, Some(tcp_flags::ACK), 64, 1);
                }
            }
        })
    });

    let mut batches = hits.chunks(BATCH).cycle();
    let mut found = vec![None; BATCH];
    group.bench_function("established_lookup_batch_track_x1024", |b| {
        b.iter(|| {
            ct.lookup_batch(black_box(batches.next().unwrap_or_default()), 1, &mut found);
            for &(id, dir) in found.iter().flatten() {
                ct.track(id, dir, Some(tcp_flags::ACK), 64, 1);
            }
        })
    });

    let mut batches = misses.chunks(BATCH).cycle();
    group.bench_function("lookup_miss_x1024", |b| {
        b.iter(|| {
            black_box(batches.next().unwrap_or_default())
                .iter()
                .filter(|key| ct.lookup(key, 1).is_some())
                .count()
        })
    });

    // Fresh tuples: clients past the filled range.
    let fresh: Vec<(FlowKey, FlowKey)> = shuffled(1 << 24, KEYS, 3)
        .into_iter()
        .map(|i| flow(ENTRIES + i))
        .collect();
    let mut batches = fresh.chunks(BATCH).cycle();
    let mut ids: Vec<EntryId> = Vec::with_capacity(BATCH);
    group.bench_function("insert_x1024", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for &(original, reply) in black_box(batches.next().unwrap_or_default()) {
                    if let Ok(id) = ct.insert(original, reply, 0, 1) {
                        ids.push(id);
                    }
                }
                total += start.elapsed();
                for id in ids.drain(..) {
                    ct.remove(id);
                }
            }
            total
        })
    });
    group.finish();
    assert_eq!(ct.counters().evictions + ct.counters().full_drops, 0);
}

criterion_group!(benches, conntrack);
criterion_main!(benches);
