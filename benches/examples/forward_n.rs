//! Forwards N packets through the router graph (the same rig as `benches/graph.rs`), for
//! `valgrind --tool=callgrind` or `perf stat`: instructions per packet are
//! `(Ir(N2) - Ir(N1)) / (N2 - N1)`, which cancels start-up (see `benches/callgrind.sh`).
//! It also counts heap allocations in the forwarding loop, which should be zero.
//!
//! ```text
//! forward_n [v4|v6|svc] [PACKETS]     (default v4 1000000; rounded up to whole vectors of 256)
//! ```
//!
//! `svc` sends the service rig's established TCP segments through the service proxy (see
//! `benches/service.rs`).
//!
//! ```text
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use switchyard_benches::{Family, RouterRig, ServiceRig};
use switchyard_dataplane::graph::VECTOR_SIZE;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A rig that forwards a vector.
trait Forward {
    fn forward_vector(&mut self) -> usize;
}

impl Forward for RouterRig {
    fn forward_vector(&mut self) -> usize {
        RouterRig::forward_vector(self)
    }
}

impl Forward for ServiceRig {
    fn forward_vector(&mut self) -> usize {
        ServiceRig::forward_vector(self)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let service = args.get(1).is_some_and(|s| s == "svc");
    let family = match args.get(1).map(|s| Family::parse(s)) {
        None => Family::V4,
        Some(Some(f)) => f,
        Some(None) if service => Family::V4,
        Some(None) => {
            eprintln!("usage: forward_n [v4|v6|svc] [PACKETS]");
            std::process::exit(2)
        }
    };
    let packets: u64 = match args.get(2).map(|s| s.parse::<u64>()) {
        None => 1_000_000,
        Some(Ok(n)) if n <= 10_000_000_000 => n,
        Some(_) => {
            eprintln!("PACKETS must be a number up to 1e10");
            std::process::exit(2)
        }
    };
    let vectors = packets.div_ceil(VECTOR_SIZE as u64);
    let mut router;
    let mut services;
    let rig: &mut dyn Forward = if service {
        services = ServiceRig::new(VECTOR_SIZE);
        if let Err(e) = services.check() {
            eprintln!("the service proxy does not translate the frames: {e}");
            std::process::exit(1)
        }
        &mut services
    } else {
        router = RouterRig::new(family, VECTOR_SIZE);
        if let Err(e) = router.check() {
            eprintln!("the graph does not forward the frames: {e}");
            std::process::exit(1)
        }
        &mut router
    };
    // One warm-up vector so every queue has its capacity.
    rig.forward_vector();
    let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut sent = 0u64;
    for _ in 0..vectors {
        sent += std::hint::black_box(rig.forward_vector()) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
    let n = vectors * VECTOR_SIZE as u64;
    println!(
        "forward_n: family={family:?} packets={n} sent={sent} allocations={allocs} ns_per_packet={:.1}",
        secs * 1e9 / n as f64
    );
    if sent != n {
        std::process::exit(1)
    }
}
