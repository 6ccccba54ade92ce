//! The in-memory driver: ports whose receive side is fed by the caller and whose transmit side
//! is kept for the caller to inspect. Used by tests, benchmarks and the pcap replay.

use std::collections::VecDeque;

use switchyard_dataplane::{BufferPool, HeapBuffer, PacketBuffer};

use crate::{Driver, IoError, PortId, PortInfo};

/// One in-memory port.
#[derive(Debug, Default)]
struct MemPort {
    rx: VecDeque<HeapBuffer>,
    tx: Vec<HeapBuffer>,
}

/// An in-memory driver with a buffer pool.
#[derive(Debug)]
pub struct MemDriver {
    info: Vec<PortInfo>,
    ports: Vec<MemPort>,
    pool: BufferPool,
    /// Keep transmitted packets for [`MemDriver::take_tx`]; a benchmark turns this off so that
    /// transmitted buffers go straight back to the pool.
    pub keep_tx: bool,
}

impl MemDriver {
    /// A driver with the given ports and a pool of `pool_size` buffers.
    pub fn new(ports: Vec<PortInfo>, pool_size: usize) -> Self {
        MemDriver {
            ports: ports.iter().map(|_| MemPort::default()).collect(),
            info: ports,
            pool: BufferPool::new(pool_size, switchyard_dataplane::buffer::DEFAULT_BUFFER_SIZE),
            keep_tx: true,
        }
    }

    /// Queues a copy of `frame` to be received on `port`.
    pub fn inject(&mut self, port: PortId, frame: &[u8]) -> Result<(), IoError> {
        let mut buf = self.pool.get();
        buf.fill(frame);
        self.port(port)?.rx.push_back(buf);
        Ok(())
    }

    /// Takes the frames transmitted on `port` so far, as byte vectors.
    pub fn take_tx(&mut self, port: PortId) -> Result<Vec<Vec<u8>>, IoError> {
        let sent = std::mem::take(&mut self.port(port)?.tx);
        let frames = sent.iter().map(|b| b.data().to_vec()).collect();
        for buf in sent {
            self.pool.put(buf);
        }
        Ok(frames)
    }

    /// The buffer pool (for its miss counter).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    fn port(&mut self, port: PortId) -> Result<&mut MemPort, IoError> {
        crate::port_entry(&mut self.ports, port)
    }
}

impl Driver for MemDriver {
    type Buffer = HeapBuffer;

    fn ports(&self) -> &[PortInfo] {
        &self.info
    }

    fn alloc(&mut self) -> Option<HeapBuffer> {
        Some(self.pool.get())
    }

    fn rx_burst(
        &mut self,
        port: PortId,
        out: &mut Vec<HeapBuffer>,
        max: usize,
    ) -> Result<usize, IoError> {
        let rx = &mut self.port(port)?.rx;
        let n = max.min(rx.len());
        out.extend(rx.drain(..n));
        Ok(n)
    }

    fn tx_burst(&mut self, port: PortId, pkts: &mut Vec<HeapBuffer>) -> Result<usize, IoError> {
        let n = pkts.len();
        if self.keep_tx {
            self.port(port)?.tx.append(pkts);
        } else {
            self.port(port)?;
            for buf in pkts.drain(..) {
                self.pool.put(buf);
            }
        }
        Ok(n)
    }

    fn recycle(&mut self, bufs: &mut Vec<HeapBuffer>) {
        for buf in bufs.drain(..) {
            self.pool.put(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str) -> PortInfo {
        PortInfo {
            name: name.into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        }
    }

    #[test]
    fn injected_frames_come_out_of_rx_and_tx_is_kept() {
        let mut d = MemDriver::new(vec![port("a"), port("b")], 8);
        d.inject(0, &[1, 2, 3]).unwrap();
        let mut v = Vec::new();
        assert_eq!(d.rx_burst(0, &mut v, 32).unwrap(), 1);
        assert_eq!(v[0].data(), &[1, 2, 3]);
        d.tx_burst(1, &mut v).unwrap();
        assert!(v.is_empty());
        assert_eq!(d.take_tx(1).unwrap(), vec![vec![1, 2, 3]]);
        assert!(d.rx_burst(7, &mut v, 1).is_err());
    }
}
