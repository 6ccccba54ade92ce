//! ns/packet of the service proxy on in-memory vectors: 256 64-byte TCP segments to a
//! ClusterIP (ten backends), each of its own connection, through the whole graph (ethernet,
//! ip4-input, ip4-nat with conntrack, lookup, rewrite, neighbor).
//!
//! - `established`: the connections are tracked; each segment is a lookup, a state update and
//!   a DNAT rewrite.
//! - `new_flow`: the table is emptied before each vector (outside the timing), so each segment
//!   is a service lookup, a Maglev pick, a conntrack insert and the rewrite.
//! - `router_only`: the same rig's plain router path (UDP to a routed prefix) for scale.
//!
//! `cargo bench -p switchyard-benches --bench service`; ns/packet = time / 256.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard_benches::{Family, RouterRig, ServiceRig};
use switchyard_dataplane::graph::VECTOR_SIZE;

fn service_proxy(c: &mut Criterion) {
    let mut group = c.benchmark_group("service_proxy");
    group.throughput(Throughput::Elements(VECTOR_SIZE as u64));
    let mut rig = ServiceRig::new(VECTOR_SIZE);
    if let Err(e) = rig.check() {
        panic!("the service rig does not translate its segments: {e}");
    }
    group.bench_function("established_tcp_64B", |b| {
        b.iter(|| black_box(rig.forward_vector()))
    });
    group.bench_function("new_flow_tcp_64B", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rig.forget_connections();
                let start = Instant::now();
                black_box(rig.forward_vector());
                total += start.elapsed();
            }
            total
        })
    });
    if let Err(e) = rig.check() {
        panic!("after the run: {e}");
    }
    let mut router = RouterRig::new(Family::V4, VECTOR_SIZE);
    group.bench_function("router_only_udp_64B", |b| {
        b.iter(|| black_box(router.forward_vector()))
    });
    group.finish();
}

criterion_group!(benches, service_proxy);
criterion_main!(benches);
