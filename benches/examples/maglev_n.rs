//! Builds a Maglev table for BACKENDS backends COUNT times, for `valgrind --tool=callgrind`
//! (instructions per build are `(Ir(C2) - Ir(C1)) / (C2 - C1)`), or with `time` times the build
//! and the paper's loop alternately, ROUNDS each, and prints the fastest of each and their ratio
//! (what `benches/maglev.rs` prints first, without criterion).
//!
//! ```text
//! maglev_n build BACKENDS COUNT [SIZE]
//! maglev_n time BACKENDS ROUNDS [SIZE]
//! ```
//!
//! SIZE is the table size, a prime (default 65537).
//!
//! Backends are named as in `benches/maglev.rs`, `10.x.y.z:8080`, weight 1.

use std::hint::black_box;
use std::time::Duration;

use switchyard_benches::time_alone;
use switchyard_lb::{reference, Backend, MaglevTable, TableSize};

fn usage() -> ! {
    eprintln!("usage: maglev_n build|time BACKENDS COUNT [SIZE]");
    std::process::exit(2)
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let name = format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256);
            Backend::new(name, 1)
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(n), Some(count)) = (
        args.first(),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        usage()
    };
    let size = match args
        .get(3)
        .map(|a| a.parse::<u32>().ok().map(TableSize::new))
    {
        None => TableSize::DEFAULT,
        Some(Some(Ok(size))) => size,
        Some(_) => usage(),
    };
    let set = backends(n);
    let build = || MaglevTable::with_size(size, black_box(set.clone())).ok();
    match mode.as_str() {
        "build" => {
            for _ in 0..count {
                black_box(build());
            }
        }
        "time" => {
            // As the bench times them (`time_alone`): the builds alone.
            let (mut ours, mut paper) = (Duration::MAX, Duration::MAX);
            for _ in 0..count {
                ours = ours.min(time_alone(set.clone(), |set| {
                    MaglevTable::with_size(size, black_box(set)).ok()
                }));
                paper = paper.min(time_alone(&set, |set| {
                    reference::populate(size.get(), black_box(set))
                }));
            }
            println!(
                "{n} backends, M = {}, fastest of {count}: switchyard {:.3} ms, paper {:.3} ms, \
                 {:.2}x",
                size.get(),
                ours.as_secs_f64() * 1e3,
                paper.as_secs_f64() * 1e3,
                paper.as_secs_f64() / ours.as_secs_f64()
            );
        }
        _ => usage(),
    }
}
