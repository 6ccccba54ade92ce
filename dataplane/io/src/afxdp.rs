//! The AF_XDP driver: one XDP socket per interface on one queue, through `xsk-rs` (libxdp).
//!
//! Each port has its own UMEM: half its frames sit in the fill ring for the kernel to receive
//! into, the other half are for transmit. libxdp attaches its default XDP program, which
//! redirects every packet of the queue to the socket through an XSKMAP. The driver asks for
//! generic (SKB) mode, the one veth and every NIC support; native mode is a later option.
//!
//! Receive copies each frame out of the UMEM into a pooled [`HeapBuffer`] and gives the frame
//! straight back to the fill ring; transmit copies each buffer into a free UMEM frame. The copies
//! cost little next to generic mode's own skb handling and keep the graph on one buffer type;
//! receiving into UMEM frames without a copy would need a [`PacketBuffer`] over UMEM frames, a
//! later optimisation for native zero-copy mode.
//!
//! A socket closed a moment ago may still hold its queue in the kernel: binding again gives
//! `EBUSY` for a short while, so opening retries for up to a second.

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use switchyard_dataplane::{BufferPool, HeapBuffer, PacketBuffer};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::afpacket::interface_info;
use crate::{Driver, IoError, PortId, PortInfo};

/// Sizes of the UMEM, rings and buffer pool.
#[derive(Clone, Debug)]
pub struct AfXdpConfig {
    /// Bytes per UMEM frame (2048 or 4096). 2048 leaves 1792 bytes for a frame after XDP's
    /// headroom: enough for a 1500-byte MTU.
    pub frame_size: u32,
    /// UMEM frames per port (a power of two); half receive, half transmit.
    pub frame_count: u32,
    /// Buffers in the driver's pool (shared by all ports).
    pub pool_size: usize,
}

impl Default for AfXdpConfig {
    fn default() -> Self {
        AfXdpConfig {
            frame_size: 2048,
            frame_count: 4096,
            pool_size: 4096,
        }
    }
}

/// Counters kept by the driver for one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPortStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames transmitted (queued to the TX ring).
    pub tx_packets: u64,
    /// Frames dropped at transmit: no free UMEM frame or TX ring slot, or too big for a frame.
    pub tx_dropped: u64,
}

/// The XDP program libxdp attached for us, detached again when the port closes: without a
/// bpffs (as on hosts that do not mount /sys/fs/bpf) libxdp attaches its program without a
/// dispatcher and leaves it behind on close, and the next bind fails with EBUSY.
struct AttachedProg {
    /// The namespace the interface lives in (ifindexes are per namespace).
    netns: std::fs::File,
    ifindex: i32,
    prog_id: u32,
}

impl AttachedProg {
    /// The id of the generic-mode XDP program on `ifindex` in the calling thread's namespace.
    fn query(ifindex: i32) -> u32 {
        let mut id = 0u32;
        // SAFETY: `id` is a live u32 for the call to write into.
        let rc = unsafe {
            libxdp_sys::bpf_xdp_query_id(
                ifindex,
                XdpFlags::XDP_FLAGS_SKB_MODE.bits() as i32,
                &mut id,
            )
        };
        if rc < 0 {
            0
        } else {
            id
        }
    }
}

impl Drop for AttachedProg {
    /// Detaches the program if it is still the one on the interface. Runs on a short-lived
    /// thread inside the interface's namespace, whichever thread drops the driver.
    fn drop(&mut self) {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: `netns` is an open network-namespace file; setns changes only this
                // scoped thread's namespace.
                if unsafe { libc::setns(self.netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return;
                }
                // Program ids are unique system-wide: only ours is ever detached.
                if AttachedProg::query(self.ifindex) == self.prog_id {
                    // SAFETY: plain libbpf call; a null opts pointer is allowed.
                    unsafe {
                        libxdp_sys::bpf_xdp_detach(
                            self.ifindex,
                            XdpFlags::XDP_FLAGS_SKB_MODE.bits(),
                            std::ptr::null(),
                        );
                    }
                }
            });
        });
    }
}

/// The socket's queues, dropped before the XDP program is detached.
struct Queues {
    tx_q: TxQueue,
    rx_q: RxQueue,
    fill_q: FillQueue,
    comp_q: CompQueue,
    umem: Umem,
}

struct XdpPort {
    // Fields drop in order: the socket and UMEM go before the program is detached.
    q: Queues,
    // Held only to be dropped (detached) after `q`.
    _prog: Option<AttachedProg>,
    /// UMEM frames free for transmit.
    tx_free: Vec<FrameDesc>,
    stats: XdpPortStats,
    mtu_room: usize,
    /// Slots in each ring.
    ring_size: usize,
}

/// An AF_XDP driver over one or more kernel interfaces (see the module documentation).
pub struct AfXdpDriver {
    info: Vec<PortInfo>,
    ports: Vec<XdpPort>,
    pool: BufferPool,
    /// Descriptor scratch for ring transfers, kept to avoid allocating per burst.
    descs: Vec<FrameDesc>,
    pollfds: Vec<libc::pollfd>,
}

impl std::fmt::Debug for AfXdpDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpDriver")
            .field("ports", &self.info)
            .finish()
    }
}

/// An xsk-rs error as an OS error: the underlying `io::Error` when there is one.
fn xsk_err(what: String, e: impl std::error::Error) -> IoError {
    let source = match std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
    {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::other(e.to_string()),
    };
    IoError::Os {
        what: format!("{what} ({e})"),
        source,
    }
}

/// Largest burst moved through a ring in one go.
const BURST: usize = 256;

impl AfXdpDriver {
    /// Opens one port per interface, each an XDP socket on `queue`, with the default sizes.
    pub fn new(ifnames: &[String], queue: u32) -> Result<Self, IoError> {
        Self::with_config(ifnames, queue, &AfXdpConfig::default())
    }

    /// Opens one port per interface, each an XDP socket on `queue`.
    pub fn with_config(
        ifnames: &[String],
        queue: u32,
        config: &AfXdpConfig,
    ) -> Result<Self, IoError> {
        if ifnames.is_empty() {
            return Err(IoError::BadArguments("no interfaces given".into()));
        }
        if ifnames.len() > usize::from(PortId::MAX) {
            return Err(IoError::BadArguments("too many interfaces".into()));
        }
        if !config.frame_count.is_power_of_two() || config.frame_count < 64 {
            return Err(IoError::BadArguments(format!(
                "AF_XDP frame count {} is not a power of two >= 64",
                config.frame_count
            )));
        }
        // A plain socket of the calling thread's namespace, for the interface ioctls.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(IoError::last_os_error("socket(AF_INET)"));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let ctl = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut info = Vec::with_capacity(ifnames.len());
        let mut ports = Vec::with_capacity(ifnames.len());
        for name in ifnames {
            let (ifindex, port_info) = interface_info(ctl.as_raw_fd(), name)?;
            let ifindex =
                i32::try_from(ifindex).map_err(|_| IoError::NoSuchInterface(name.to_string()))?;
            ports.push(open_port(name, ifindex, queue, config)?);
            info.push(port_info);
        }
        let pollfds = ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.q.rx_q.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(AfXdpDriver {
            info,
            ports,
            pool: BufferPool::new(
                config.pool_size,
                switchyard_dataplane::buffer::DEFAULT_BUFFER_SIZE,
            ),
            descs: vec![FrameDesc::default(); BURST],
            pollfds,
        })
    }

    /// The driver's counters for `port`.
    pub fn stats(&self, port: PortId) -> Option<&XdpPortStats> {
        self.ports.get(usize::from(port)).map(|p| &p.stats)
    }

    /// The kernel's counters for `port`'s socket (drops for a full RX ring or an empty fill ring,
    /// invalid descriptors).
    pub fn kernel_stats(&self, port: PortId) -> Result<xsk_rs::socket::XdpStatistics, IoError> {
        let p = self
            .ports
            .get(usize::from(port))
            .ok_or_else(|| IoError::NoSuchInterface(format!("port {port}")))?;
        p.q.rx_q
            .fd()
            .xdp_statistics()
            .map_err(|source| IoError::Os {
                what: "XDP_STATISTICS".into(),
                source,
            })
    }

    /// The buffer pool (for its miss counter).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }
}

fn open_port(
    name: &str,
    ifindex: i32,
    queue: u32,
    config: &AfXdpConfig,
) -> Result<XdpPort, IoError> {
    let frame_count = NonZeroU32::new(config.frame_count)
        .ok_or_else(|| IoError::BadArguments("AF_XDP frame count 0".into()))?;
    let half = config.frame_count / 2;
    let ring = QueueSize::new(half)
        .map_err(|e| IoError::BadArguments(format!("AF_XDP ring size: {e}")))?;
    let frame_size = FrameSize::new(config.frame_size)
        .map_err(|e| IoError::BadArguments(format!("AF_XDP frame size: {e}")))?;
    let umem_config = UmemConfig::builder()
        .frame_size(frame_size)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| IoError::BadArguments(format!("AF_XDP UMEM config: {e}")))?;
    let mtu_room = umem_config.mtu() as usize;
    let socket_config = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::empty())
        .xdp_flags(XdpFlags::XDP_FLAGS_SKB_MODE)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let ifname: Interface = name
        .parse()
        .map_err(|_| IoError::BadArguments(format!("interface name {name:?}")))?;

    let (umem, mut descs) = Umem::new(umem_config, frame_count, false)
        .map_err(|e| xsk_err(format!("AF_XDP UMEM for {name}"), e))?;

    let netns = std::fs::File::open("/proc/thread-self/ns/net").map_err(|source| IoError::Os {
        what: "open /proc/thread-self/ns/net".into(),
        source,
    })?;
    let prog_before = AttachedProg::query(ifindex);
    let mut tries = 0;
    let (tx_q, rx_q, rings) = loop {
        // SAFETY: the UMEM is new and not shared, so no socket is bound to (name, queue) through
        // it and INHIBIT_PROG_LOAD is not required.
        match unsafe { Socket::new(socket_config, &umem, &ifname, queue) } {
            Ok(s) => break s,
            Err(e) => {
                let busy = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .and_then(std::io::Error::raw_os_error)
                    == Some(libc::EBUSY);
                if busy && tries < 20 {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let mut err = xsk_err(format!("AF_XDP socket on {name} queue {queue}"), e);
                if busy && prog_before != 0 {
                    if let IoError::Os { what, .. } = &mut err {
                        what.push_str(&format!(
                            "; XDP program {prog_before} is attached to {name} (left by an \
                             earlier run? `ip link set dev {name} xdpgeneric off` removes it)"
                        ));
                    }
                }
                return Err(err);
            }
        }
    };
    let (mut fill_q, comp_q) = rings.ok_or_else(|| {
        IoError::BadArguments(format!(
            "AF_XDP socket on {name}: no fill/completion rings (UMEM already bound?)"
        ))
    })?;

    let tx_free = descs.split_off(half as usize);
    // SAFETY: these descriptors are frames of this UMEM that nobody else holds; from now on the
    // kernel owns them until they come back through the RX ring.
    let filled = unsafe { fill_q.produce(&descs) };
    if filled != descs.len() {
        return Err(IoError::BadArguments(format!(
            "AF_XDP fill ring on {name} took {filled} of {} frames",
            descs.len()
        )));
    }
    let prog_after = AttachedProg::query(ifindex);
    let prog = (prog_before == 0 && prog_after != 0).then_some(AttachedProg {
        netns,
        ifindex,
        prog_id: prog_after,
    });
    Ok(XdpPort {
        q: Queues {
            tx_q,
            rx_q,
            fill_q,
            comp_q,
            umem,
        },
        _prog: prog,
        tx_free,
        stats: XdpPortStats::default(),
        mtu_room,
        ring_size: half as usize,
    })
}

impl XdpPort {
    /// Takes back frames the kernel has finished transmitting.
    fn reclaim(&mut self, scratch: &mut [FrameDesc]) {
        // SAFETY: the completion ring only ever holds frames of this UMEM that we put on the TX
        // ring; once completed they are ours again.
        let n = unsafe { self.q.comp_q.consume(scratch) };
        self.tx_free.extend_from_slice(&scratch[..n]);
    }
}

impl Driver for AfXdpDriver {
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
        let p = crate::port_entry(&mut self.ports, port)?;
        let mut total = 0;
        // Bounded by max / BURST + 1 passes; each pass ends the loop unless it filled a burst.
        while total < max {
            let want = (max - total).min(BURST);
            let descs = &mut self.descs[..want];
            // SAFETY: the descriptors written are frames of this UMEM handed back by the kernel.
            let n = unsafe { p.q.rx_q.consume(descs) };
            if n == 0 {
                break;
            }
            for d in descs[..n].iter() {
                // SAFETY: the frame came out of the RX ring, so the kernel no longer writes it,
                // and it is not on any ring until it is produced to the fill ring below.
                let data = unsafe { p.q.umem.data(d) };
                let mut buf = self.pool.get();
                buf.fill(data.contents());
                out.push(buf);
            }
            // SAFETY: the frames were read above and are not used again until the kernel hands
            // them back through the RX ring.
            let back = unsafe { p.q.fill_q.produce(&descs[..n]) };
            debug_assert_eq!(back, n, "fill ring holds every receive frame");
            p.stats.rx_packets += n as u64;
            total += n;
            if n < want {
                break;
            }
        }
        if total > 0 && p.q.fill_q.needs_wakeup() {
            let _ = p.q.fill_q.wakeup(p.q.rx_q.fd_mut(), 0);
        }
        Ok(total)
    }

    fn tx_burst(&mut self, port: PortId, pkts: &mut Vec<HeapBuffer>) -> Result<usize, IoError> {
        let Some(p) = self.ports.get_mut(usize::from(port)) else {
            for buf in pkts.drain(..) {
                self.pool.put(buf);
            }
            return Err(IoError::NoSuchInterface(format!("port {port}")));
        };
        p.reclaim(&mut self.descs);
        let mut sent = 0;
        let count = pkts.len();
        let mut start = 0;
        // Each pass queues one chunk of up to BURST frames.
        while start < count {
            let chunk = &pkts[start..(start + BURST).min(count)];
            start += chunk.len();
            let mut n = 0;
            for buf in chunk {
                let data = buf.data();
                if data.len() > p.mtu_room {
                    continue;
                }
                let Some(mut d) = p.tx_free.pop() else {
                    break;
                };
                // SAFETY: `d` is a free TX frame of this UMEM, on no ring, so nothing else
                // reads or writes it.
                let mut frame = unsafe { p.q.umem.data_mut(&mut d) };
                let mut cursor = frame.cursor();
                cursor.set_pos(0);
                // Fits: checked against the frame's data room above.
                let _ = std::io::Write::write_all(&mut cursor, data);
                self.descs[n] = d;
                n += 1;
            }
            // SAFETY: the frames were written above and are not touched again until they come
            // back through the completion ring.
            let queued = unsafe { p.q.tx_q.produce(&self.descs[..n]) };
            if queued != n {
                // The TX ring was full (produce is all-or-nothing): the frames stay ours.
                p.tx_free.extend_from_slice(&self.descs[..n]);
            } else {
                sent += n;
            }
        }
        // Copy (generic) mode transmits only when kicked, and at most 32 frames per kick
        // (the kernel's TX_BATCH_SIZE): kick until the ring is drained, a bounded number of times.
        if sent > 0 {
            for _ in 0..sent.div_ceil(32) + 1 {
                let _ = p.q.tx_q.wakeup();
                if p.q.tx_q.nb_free_exact() as usize >= p.ring_size {
                    break;
                }
            }
        }
        p.stats.tx_packets += sent as u64;
        p.stats.tx_dropped += (count - sent) as u64;
        for buf in pkts.drain(..) {
            self.pool.put(buf);
        }
        Ok(sent)
    }

    fn recycle(&mut self, bufs: &mut Vec<HeapBuffer>) {
        for buf in bufs.drain(..) {
            self.pool.put(buf);
        }
    }

    fn wait(&mut self, timeout: Duration) {
        self.wait_also(timeout, &[]);
    }

    fn wait_also(&mut self, timeout: Duration, extra: &[std::os::fd::RawFd]) {
        for (p, pfd) in self.ports.iter_mut().zip(self.pollfds.iter_mut()) {
            if p.q.rx_q.nb_avail(1) > 0 {
                return;
            }
            pfd.revents = 0;
        }
        let own = self.pollfds.len();
        self.pollfds.extend(extra.iter().map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pollfds` is a live array of pollfd of the given length.
        unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                ms,
            );
        }
        self.pollfds.truncate(own);
    }
}
