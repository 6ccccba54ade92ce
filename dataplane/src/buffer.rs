//! Packet buffers.
//!
//! The graph works on any [`PacketBuffer`]: a contiguous run of bytes with room in front (to push
//! encapsulation headers without copying) and behind. DPDK mbufs implement it in `switchyard-io`;
//! [`HeapBuffer`] is the safe implementation used by every other driver and by tests, recycled
//! through a [`BufferPool`] so the steady state allocates nothing.

/// Bytes reserved in front of received data, enough for an outer Ethernet + IPv6 + GRE header
/// or an ICMP error built in place around the packet that caused it.
pub const DEFAULT_HEADROOM: usize = 128;

/// Data room of a pooled buffer: a jumbo-less Ethernet frame plus headroom, as DPDK's default.
pub const DEFAULT_BUFFER_SIZE: usize = 2048 + DEFAULT_HEADROOM;

/// One packet's bytes, owned by one worker.
///
/// `data()` is the packet as it stands now: nodes strip headers with [`pull_front`] and add
/// them with [`push_front`], so the front of `data()` is always the header being looked at.
///
/// [`pull_front`]: PacketBuffer::pull_front
/// [`push_front`]: PacketBuffer::push_front
pub trait PacketBuffer {
    /// The packet's bytes.
    fn data(&self) -> &[u8];
    /// The packet's bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Free bytes in front of the data.
    fn headroom(&self) -> usize;
    /// Free bytes after the data.
    fn tailroom(&self) -> usize;
    /// Grows the packet by `n` bytes at the front. Returns false, changing nothing, when the
    /// headroom is smaller than `n`. The new bytes are unspecified.
    fn push_front(&mut self, n: usize) -> bool;
    /// Removes `n` bytes from the front. Returns false, changing nothing, when the packet is
    /// shorter than `n`.
    fn pull_front(&mut self, n: usize) -> bool;
    /// Grows the packet by `n` bytes at the end. Returns false, changing nothing, when the
    /// tailroom is smaller than `n`. The new bytes are unspecified.
    fn push_back(&mut self, n: usize) -> bool;
    /// Shortens the packet to `len` bytes; does nothing when it is already that short.
    fn truncate(&mut self, len: usize);

    /// Grows the packet by `N` bytes at the front and writes `header` there: [`push_front`]
    /// and a write of the new front, which a buffer may do in fewer steps (one headroom check,
    /// no second look at the length). Returns false, changing nothing, when the headroom is
    /// smaller than `N`.
    ///
    /// [`push_front`]: PacketBuffer::push_front
    #[inline]
    fn push_header<const N: usize>(&mut self, header: &[u8; N]) -> bool
    where
        Self: Sized,
    {
        if !self.push_front(N) {
            return false;
        }
        match self.data_mut().first_chunk_mut::<N>() {
            Some(front) => {
                *front = *header;
                true
            }
            None => {
                self.pull_front(N);
                false
            }
        }
    }

    /// A new empty buffer of the same kind (same pool, same headroom), for the rare packet a
    /// node sends besides the one it was given (a neighbor request while the packet waits).
    /// `None` when none can be had; the caller then does without.
    fn alloc_sibling(&self) -> Option<Self>
    where
        Self: Sized;

    /// Length of the packet in bytes.
    #[inline]
    fn len(&self) -> usize {
        self.data().len()
    }

    /// True for a packet of no bytes.
    #[inline]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Largest [`HeapBuffer`]: offsets are kept in 32 bits to keep packets small in vectors.
pub const MAX_BUFFER_SIZE: usize = 1 << 20;

/// A packet buffer on the heap: `bytes[start..end]` is the packet.
#[derive(Clone)]
pub struct HeapBuffer {
    bytes: Box<[u8]>,
    /// Headroom a freshly filled packet starts after.
    base: u32,
    start: u32,
    end: u32,
}

impl HeapBuffer {
    /// An empty buffer of `size` bytes (at most [`MAX_BUFFER_SIZE`]) with `headroom` of them in
    /// front of the data.
    pub fn new(size: usize, headroom: usize) -> Self {
        let size = size.min(MAX_BUFFER_SIZE);
        let headroom = headroom.min(size) as u32;
        HeapBuffer {
            bytes: vec![0; size].into_boxed_slice(),
            base: headroom,
            start: headroom,
            end: headroom,
        }
    }

    /// A buffer of the default size holding a copy of `packet` after the default headroom.
    /// Packets longer than the data room are cut to it.
    pub fn from_bytes(packet: &[u8]) -> Self {
        let mut buf = HeapBuffer::new(
            DEFAULT_BUFFER_SIZE.max(DEFAULT_HEADROOM + packet.len()),
            DEFAULT_HEADROOM,
        );
        buf.fill(packet);
        buf
    }

    /// Replaces the contents with a copy of `packet`, after the headroom, and returns how many
    /// bytes were taken (fewer than `packet.len()` when it does not fit).
    pub fn fill(&mut self, packet: &[u8]) -> usize {
        let n = self.set_received(packet.len());
        let start = self.start as usize;
        self.bytes[start..start + n].copy_from_slice(&packet[..n]);
        n
    }

    /// Space the packet may occupy after the headroom, for drivers that receive straight into
    /// the buffer. Follow with [`HeapBuffer::set_received`].
    pub fn receive_area(&mut self) -> &mut [u8] {
        &mut self.bytes[self.base as usize..]
    }

    /// Marks the first `len` bytes of [`HeapBuffer::receive_area`] as the packet (cut to the
    /// buffer) and returns how many that is.
    pub fn set_received(&mut self, len: usize) -> usize {
        let n = len.min(self.bytes.len() - self.base as usize);
        self.start = self.base;
        // base + n <= bytes.len() <= MAX_BUFFER_SIZE.
        self.end = self.base + n as u32;
        n
    }

    #[inline]
    fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

impl std::fmt::Debug for HeapBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapBuffer")
            .field("len", &self.len())
            .field("headroom", &self.start)
            .finish()
    }
}

impl PacketBuffer for HeapBuffer {
    fn alloc_sibling(&self) -> Option<Self> {
        Some(HeapBuffer::new(self.bytes.len(), self.base as usize))
    }

    #[inline]
    fn data(&self) -> &[u8] {
        &self.bytes[self.range()]
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let r = self.range();
        &mut self.bytes[r]
    }

    #[inline]
    fn headroom(&self) -> usize {
        self.start as usize
    }

    #[inline]
    fn tailroom(&self) -> usize {
        self.bytes.len() - self.end as usize
    }

    #[inline]
    fn push_front(&mut self, n: usize) -> bool {
        if n > self.start as usize {
            return false;
        }
        self.start -= n as u32;
        true
    }

    #[inline]
    fn push_header<const N: usize>(&mut self, header: &[u8; N]) -> bool {
        // The header goes right in front of `start`: one check that it is in the buffer.
        let start = self.start as usize;
        let Some(front) = start
            .checked_sub(N)
            .and_then(|at| self.bytes.get_mut(at..start))
        else {
            return false;
        };
        front.copy_from_slice(header);
        self.start -= N as u32;
        true
    }

    #[inline]
    fn pull_front(&mut self, n: usize) -> bool {
        if n > (self.end - self.start) as usize {
            return false;
        }
        self.start += n as u32;
        true
    }

    #[inline]
    fn push_back(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        self.end += n as u32;
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        if len < (self.end - self.start) as usize {
            self.end = self.start + len as u32;
        }
    }
}

/// A free list of [`HeapBuffer`]s, filled once at start so receiving does not allocate.
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<HeapBuffer>,
    buffer_size: usize,
    /// Buffers handed out when the free list was empty (each one an allocation).
    pub misses: u64,
}

impl BufferPool {
    /// A pool holding `count` buffers of `buffer_size` bytes.
    pub fn new(count: usize, buffer_size: usize) -> Self {
        BufferPool {
            free: (0..count)
                .map(|_| HeapBuffer::new(buffer_size, DEFAULT_HEADROOM))
                .collect(),
            buffer_size,
            misses: 0,
        }
    }

    /// An empty buffer from the pool, or a new one when the pool is empty.
    #[inline]
    pub fn get(&mut self) -> HeapBuffer {
        match self.free.pop() {
            Some(mut buf) => {
                buf.set_received(0);
                buf
            }
            None => {
                self.misses += 1;
                HeapBuffer::new(self.buffer_size, DEFAULT_HEADROOM)
            }
        }
    }

    /// Returns a buffer to the pool.
    #[inline]
    pub fn put(&mut self, buf: HeapBuffer) {
        self.free.push(buf);
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_respect_bounds() {
        let mut b = HeapBuffer::from_bytes(&[1, 2, 3, 4]);
        assert_eq!(b.data(), &[1, 2, 3, 4]);
        assert!(b.pull_front(2));
        assert_eq!(b.data(), &[3, 4]);
        assert!(!b.pull_front(3));
        assert!(b.push_front(2));
        assert_eq!(b.data(), &[1, 2, 3, 4]);
        assert!(!b.push_front(DEFAULT_HEADROOM + 1));
        b.truncate(1);
        assert_eq!(b.data(), &[1]);
        assert!(b.push_back(1));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn push_header_writes_the_new_front_or_changes_nothing() {
        let mut b = HeapBuffer::new(64, 4);
        b.fill(&[9, 9]);
        assert!(!b.push_header(&[1, 2, 3, 4, 5]));
        assert_eq!(b.data(), &[9, 9]);
        assert!(b.push_header(&[1, 2, 3]));
        assert_eq!(b.data(), &[1, 2, 3, 9, 9]);
        assert_eq!(b.headroom(), 1);
        assert!(b.push_header(&[7]));
        assert!(!b.push_header(&[7]));
        assert_eq!(b.data(), &[7, 1, 2, 3, 9, 9]);
    }

    #[test]
    fn oversized_input_is_cut_not_panicking() {
        let mut b = HeapBuffer::new(64, 16);
        assert_eq!(b.fill(&[7; 100]), 48);
        assert_eq!(b.len(), 48);
        assert!(!b.push_back(1));
    }
}
