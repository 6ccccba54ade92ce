//! Switchyard's packet dataplane.
//!
//! Everything here is plain, safe, I/O-free code: wire formats, the vector graph engine and its
//! nodes, the FIB and the immutable [`tables::Tables`] the control plane publishes. Time is passed
//! in by the caller; packet I/O lives in `switchyard-io`.

pub mod buffer;
pub mod wire;

pub use buffer::{BufferPool, HeapBuffer, PacketBuffer};
pub mod acl;
pub mod async_crypto;
pub mod conntrack;
pub mod fib;
pub mod flows;
pub mod graph;
pub mod ipsec_tables;
pub mod lpm6;
pub mod mld;
pub mod mtrie;
pub mod nat;
pub mod nodes;
pub mod path_mtu;
pub mod policy;
pub mod reassembly;
pub mod router_adverts;
pub mod services;
pub mod tables;
pub mod virtual_reassembly;
pub mod worker;
