//! Crypto that completes after it is asked for: the interface between the ESP nodes and a
//! device with engines of its own (Intel QAT, or a DPDK software PMD through the same API).
//!
//! The ESP nodes prepare a vector's packets, park them ([`crate::graph::PARK`]), and hand
//! them over, buffer and all, with [`AsyncCrypto::submit`]; the worker goes on with other
//! packets while the device works. Each dispatch polls ([`AsyncCrypto::poll`]) and the
//! completed packets re-enter the graph at the node's second half. Ownership of the packet
//! travels with the operation, so the device has the bytes to itself without any `unsafe`
//! here: the buffer cannot be touched or freed while it is in flight.
//!
//! [`DeferredSoftware`] is the same contract in software, with completion held back until the
//! poll: the asynchronous path of the nodes tested without a device.

use std::collections::VecDeque;
use std::sync::Mutex;

use switchyard_ipsec::crypto::{CryptoError, SymCtx, SymParams};

use crate::buffer::PacketBuffer;
use crate::graph::Packet;

/// One packet's crypto, owned by whoever runs it until it completes.
#[derive(Debug)]
pub struct AsyncOp<B> {
    /// The packet; `params` are offsets into its data.
    pub pkt: Packet<B>,
    pub params: SymParams,
    /// The submitter's name for the operation.
    pub tag: u64,
    /// Set on completion.
    pub result: Result<(), CryptoError>,
}

/// A crypto engine that takes packets and gives them back later, in the order taken.
pub trait AsyncCrypto<B>: Send + Sync {
    /// Takes operations from the front of `ops`, in order, each to run with the context at
    /// the same index of `ctxs`, and returns how many it took (they are removed from `ops`;
    /// the caller runs the rest itself). Each context must belong to this engine's backend;
    /// one that does not is run at once and completes at the next poll like the others.
    fn submit(&self, ops: &mut Vec<AsyncOp<B>>, ctxs: &[Option<SymCtx<'_>>]) -> usize;

    /// Appends the operations completed since the last poll to `done`, in submission order,
    /// each with its result (a sealed packet has its tag in place). An operation the device
    /// never gives back is not returned: it stays the device's, counted by the engine.
    fn poll(&self, done: &mut Vec<AsyncOp<B>>);

    /// Operations submitted by this thread and not yet returned by a poll.
    fn in_flight(&self) -> usize;
}

/// Software crypto with the asynchronous contract: submit only takes the packets, poll runs
/// them and hands them back. For tests of the asynchronous path without a device.
pub struct DeferredSoftware<B> {
    queue: Mutex<VecDeque<AsyncOp<B>>>,
}

impl<B> Default for DeferredSoftware<B> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
        }
    }
}

impl<B: PacketBuffer + Send> AsyncCrypto<B> for DeferredSoftware<B> {
    fn submit(&self, ops: &mut Vec<AsyncOp<B>>, ctxs: &[Option<SymCtx<'_>>]) -> usize {
        let n = ops.len().min(ctxs.len());
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (mut op, ctx) in ops.drain(..n).zip(ctxs) {
            // The crypto runs now (the context is only borrowed for this call), but the
            // packet stays here, untouched by the caller, until the next poll.
            op.result = match ctx {
                Some(ctx) => ctx.run_here(&op.params, op.pkt.buf.data_mut()),
                None => Err(CryptoError::Backend),
            };
            queue.push_back(op);
        }
        n
    }

    fn poll(&self, done: &mut Vec<AsyncOp<B>>) {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        done.extend(queue.drain(..));
    }

    fn in_flight(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}
