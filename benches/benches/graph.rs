//! ns/packet of the router graph on in-memory vectors: 256 64-byte UDP frames (one source port
//! each, so the flow hash and ECMP see 256 flows) routed through a /16 (/48 for IPv6) to two
//! ECMP gateways with permanent neighbors. The same buffers are refilled every iteration, so
//! the loop allocates nothing; the refill (a 60–64-byte copy per packet) is included, as a
//! driver's receive would be.
//!
//! `cargo bench -p switchyard-benches --bench graph`; criterion reports time per iteration and
//! Melem/s; ns/packet = time / 256.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard_benches::{Family, RouterRig};
use switchyard_dataplane::graph::VECTOR_SIZE;

fn router_graph(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_graph");
    group.throughput(Throughput::Elements(VECTOR_SIZE as u64));
    for (name, family) in [("ipv4_udp_64B", Family::V4), ("ipv6_udp_64B", Family::V6)] {
        let mut rig = RouterRig::new(family, VECTOR_SIZE);
        if let Err(e) = rig.check() {
            panic!("{name}: the graph does not forward the benchmark's frames: {e}");
        }
        group.bench_function(name, |b| b.iter(|| black_box(rig.forward_vector())));
        // The refill alone (what a driver's receive would cost here), to subtract.
        group.bench_function(format!("{name}_refill_only"), |b| {
            b.iter(|| black_box(rig.refill_only()))
        });
        if let Err(e) = rig.check() {
            panic!("{name}: after the run: {e}");
        }
    }
    group.finish();
}

criterion_group!(benches, router_graph);
criterion_main!(benches);
