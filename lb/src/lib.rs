//! Load balancing for Switchyard: Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, section 3.4) over named, weighted
//! backends.
//!
//! - [`MaglevTable`]: the lookup table the dataplane indexes with a flow hash, built fast
//!   (see [`maglev`] for how) and identically on every node from the same backend set.
//! - [`reference`](mod@reference): the paper's populate loop written out plainly, the oracle the fast build is
//!   tested against and the baseline the benchmark measures it against.
//! - [`hash`]: FNV-1a 64, the hash of backend names that places them in the table.
//! - [`service`]: Kubernetes Services as plain data, and [`service::ServiceTable::compile`],
//!   which turns them into frontends and backend sets by kube-proxy's rules.
//!
//! No I/O here: everything is plain data in, plain data out.

pub mod hash;
pub mod maglev;
pub mod reference;
pub mod service;

pub use maglev::{
    Backend, BackendIndex, MaglevError, MaglevTable, TableSize, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE,
    MIN_TABLE_SIZE,
};
