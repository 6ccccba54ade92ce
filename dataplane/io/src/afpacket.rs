//! The AF_PACKET driver: one packet socket per kernel interface, receiving through a
//! `TPACKET_V2` ring and transmitting with `sendmmsg`.
//!
//! Each port is an `AF_PACKET`/`SOCK_RAW` socket bound to one interface for `ETH_P_ALL`, in
//! promiscuous mode, with `PACKET_QDISC_BYPASS` (transmit straight to the driver) and
//! `PACKET_IGNORE_OUTGOING` (we do not see our own transmissions, nor anything else the host sends
//! on that interface).
//!
//! Receive: the kernel fills the fixed-size frame slots of a memory-mapped `TPACKET_V2` ring, each
//! with its own status word; `rx_burst` copies each frame into a pooled [`HeapBuffer`] and hands
//! its slot back at once. `TPACKET_V3` was used before: it hands whole blocks over, when full or
//! when a retire timer of at least 1 ms fires, so at low packet rates every packet waited up to
//! a millisecond in the ring (a TCP handshake through the router took about 1 ms); a V2 slot is
//! ours as soon as the kernel has written it. The kernel strips an 802.1Q/802.1ad tag into the frame header
//! (`TP_STATUS_VLAN_VALID`) whatever the offload settings are; the driver puts it back so the
//! graph sees the frame as it was on the wire.
//!
//! Transmit: one `sendmmsg` per burst, with an iovec pointing at each buffer's bytes: no copy in
//! user space, no second ring and no completion scan. On veth the kernel's per-packet transmit
//! work dominates either way; a `TPACKET_V2` TX ring has not been measured against it yet.
//!
//! Checksums: a kernel TCP/UDP stack on the other end of a veth leaves checksums for "hardware"
//! that veth never runs (`CHECKSUM_PARTIAL`); such frames carry `TP_STATUS_CSUMNOTREADY` and their
//! L4 checksum field is not valid. The driver counts them ([`PortStats::rx_csum_not_ready`]) and
//! flags them per packet ([`AfPacketDriver::last_rx_flags`]). Test labs turn the offload off on the
//! kernel side with `ethtool -K IFNAME tx off` (which also turns off TSO: veth otherwise passes
//! 64 KiB TCP super-frames that do not fit a buffer and are dropped as oversize).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard_dataplane::{BufferPool, HeapBuffer, PacketBuffer};

use crate::{Driver, IoError, PortId, PortInfo};

/// Sizes of the receive ring and the buffer pool.
#[derive(Clone, Debug)]
pub struct AfPacketConfig {
    /// Bytes in one ring block (a power of two, a multiple of the page size): the kernel
    /// allocates the ring in blocks of this size, each holding `block_size / frame_size` slots.
    pub block_size: u32,
    /// Blocks in each port's receive ring.
    pub block_count: u32,
    /// Bytes in one frame slot, its `tpacket2_hdr` and address included (a multiple of 16);
    /// longer frames are cut by the kernel and dropped here as oversize.
    pub frame_size: u32,
    /// Buffers in the driver's pool (shared by all ports).
    pub pool_size: usize,
    /// Spread each interface's traffic over several drivers (one per worker): with
    /// `Some(group)`, port `i`'s socket joins the `PACKET_FANOUT` group `group + i` of its
    /// interface, which the kernel balances by flow hash (addresses and ports, the same for
    /// every fragment of a datagram, which is not reassembled). Every driver of a set opens
    /// the same interfaces with the same `group`.
    pub fanout: Option<u16>,
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        AfPacketConfig {
            block_size: 1 << 16,
            block_count: 64,
            frame_size: 2048,
            pool_size: 4096,
            fanout: None,
        }
    }
}

/// Counters kept by the driver for one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received and handed to the caller.
    pub rx_packets: u64,
    /// Bytes of those frames (with reinserted VLAN tags).
    pub rx_bytes: u64,
    /// Received frames whose L4 checksum was left for offload (`TP_STATUS_CSUMNOTREADY`).
    pub rx_csum_not_ready: u64,
    /// Received frames whose VLAN tag the kernel had stripped and the driver put back.
    pub rx_vlan_reinserted: u64,
    /// Received frames dropped because they did not fit a buffer or were cut by the ring.
    pub rx_oversize: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Frames the kernel refused (ring/queue full, too big, interface down).
    pub tx_dropped: u64,
}

/// Kernel-side counters of a packet socket (`PACKET_STATISTICS`; reading them resets them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames the socket saw since the last read.
    pub packets: u32,
    /// Frames dropped because the ring was full.
    pub drops: u32,
}

/// Per-packet receive flags for the packets of the last [`Driver::rx_burst`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxFlags(u8);

impl RxFlags {
    const CSUM_NOT_READY: u8 = 1;
    const VLAN_REINSERTED: u8 = 2;

    /// The L4 checksum was left for offload and is not valid in the frame.
    pub fn csum_not_ready(self) -> bool {
        self.0 & Self::CSUM_NOT_READY != 0
    }

    /// The VLAN tag was stripped by the kernel and put back by the driver.
    pub fn vlan_reinserted(self) -> bool {
        self.0 & Self::VLAN_REINSERTED != 0
    }
}

/// Length of an Ethernet destination + source address.
const ETH_ADDRS_LEN: usize = 12;
/// Length of an 802.1Q tag (TPID + TCI).
const VLAN_TAG_LEN: usize = 4;
/// The 802.1Q TPID, used when the kernel does not report one.
const ETH_P_8021Q: u16 = 0x8100;

/// Looks up an interface's index, MAC and MTU through `fd` (any socket of the right namespace).
pub(crate) fn interface_info(fd: RawFd, name: &str) -> Result<(u32, PortInfo), IoError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(IoError::NoSuchInterface(name.to_string()));
    }
    let cname = CString::new(name)
        .map_err(|_| IoError::BadArguments(format!("interface name {name:?} contains NUL")))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(IoError::NoSuchInterface(name.to_string()));
    }

    let mut req = ifreq_for(&cname);
    // SAFETY: `req` is a properly initialised ifreq with the name set; SIOCGIFHWADDR writes the
    // hardware address into its union and nothing else.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(IoError::last_os_error(format!("SIOCGIFHWADDR {name}")));
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the hwaddr member of the union is the one written.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = *b as u8;
    }

    let mut req = ifreq_for(&cname);
    // SAFETY: as above; SIOCGIFMTU writes an int into the union.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(IoError::last_os_error(format!("SIOCGIFMTU {name}")));
    }
    // SAFETY: SIOCGIFMTU succeeded, so the mtu member of the union is the one written.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    let mtu = u16::try_from(mtu.max(0)).unwrap_or(u16::MAX);

    Ok((
        ifindex,
        PortInfo {
            name: name.to_string(),
            mac,
            mtu,
        },
    ))
}

fn ifreq_for(name: &CString) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (arrays, integers and a union of them); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: &T) -> std::io::Result<()> {
    // SAFETY: `val` points at a live T and the length passed is exactly its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn os_err(what: String) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError::Os { what, source }
}

/// A memory-mapped `TPACKET_V2` receive ring: `frame_count` slots of `frame_size` bytes, each
/// starting with a `tpacket2_hdr` whose status says whether the kernel or we own it.
struct RxRing {
    base: *mut u8,
    len: usize,
    frame_size: usize,
    frame_count: usize,
    /// The slot to look at next.
    next: usize,
}

// SAFETY: the ring is a private mapping owned by this struct alone; the raw pointer is only
// dereferenced through `&mut self` methods, so moving it to another thread is sound.
unsafe impl Send for RxRing {}

impl RxRing {
    fn frame_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: i < frame_count and frame_count * frame_size <= len (the slots fill the
        // blocks exactly), so the offset stays inside the mapping.
        unsafe { self.base.add(i * self.frame_size) }
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        let hdr = self.frame_ptr(i).cast::<libc::tpacket2_hdr>();
        // SAFETY: every slot starts with a tpacket2_hdr (kernel ABI) whose first field is the
        // u32 status; slots are 16-byte aligned; the kernel writes it concurrently, which is
        // why it is accessed only atomically. The reference lives no longer than `self`, which
        // keeps the mapping alive.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*hdr).tp_status)) }
    }

    /// True when the next slot holds a frame for us.
    fn ready(&self) -> bool {
        self.status(self.next).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Hands the current slot back to the kernel and moves to the next one.
    fn release(&mut self) {
        self.status(self.next)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.next = (self.next + 1) % self.frame_count;
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned, and nothing borrows the mapping any
        // more (every borrow is tied to &self/&mut self).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// Scratch space for one `sendmmsg` call, kept to avoid allocating per burst.
struct TxScratch {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers inside are rewritten before every use and only point at buffers
// borrowed for the duration of one `tx_burst` call; nothing is shared between threads.
unsafe impl Send for TxScratch {}

struct Port {
    // Field order matters: the ring is unmapped before the socket closes.
    ring: RxRing,
    fd: OwnedFd,
    stats: PortStats,
}

/// An AF_PACKET driver over one or more kernel interfaces (see the module documentation).
pub struct AfPacketDriver {
    info: Vec<PortInfo>,
    ports: Vec<Port>,
    pool: BufferPool,
    tx: TxScratch,
    last_rx_flags: Vec<RxFlags>,
    pollfds: Vec<libc::pollfd>,
}

impl std::fmt::Debug for AfPacketDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacketDriver")
            .field("ports", &self.info)
            .finish()
    }
}

impl AfPacketDriver {
    /// Opens one port per interface name with the default sizes.
    pub fn new(ifnames: &[String]) -> Result<Self, IoError> {
        Self::with_config(ifnames, &AfPacketConfig::default())
    }

    /// Opens one port per interface name.
    pub fn with_config(ifnames: &[String], config: &AfPacketConfig) -> Result<Self, IoError> {
        if ifnames.is_empty() {
            return Err(IoError::BadArguments("no interfaces given".into()));
        }
        if ifnames.len() > usize::from(PortId::MAX) {
            return Err(IoError::BadArguments("too many interfaces".into()));
        }
        // A page-multiple power-of-two block, at least one, and frame slots that divide it
        // (so slot i sits at i * frame_size), 16-byte aligned and big enough for a header.
        if !config.block_size.is_power_of_two()
            || config.block_size < 4096
            || config.block_count == 0
            || !config.frame_size.is_multiple_of(16)
            || (config.frame_size as usize) < libc::TPACKET2_HDRLEN + 128
            || config.frame_size > config.block_size
            || !config.block_size.is_multiple_of(config.frame_size)
        {
            return Err(IoError::BadArguments(format!(
                "AF_PACKET block size {} / count {} / frame size {} not usable",
                config.block_size, config.block_count, config.frame_size
            )));
        }
        let mut info = Vec::with_capacity(ifnames.len());
        let mut ports = Vec::with_capacity(ifnames.len());
        for (i, name) in ifnames.iter().enumerate() {
            let fanout = config.fanout.map(|g| g.wrapping_add(i as u16));
            let (port_info, port) = open_port(name, config, fanout)?;
            info.push(port_info);
            ports.push(port);
        }
        let pollfds = ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            })
            .collect();
        Ok(AfPacketDriver {
            info,
            ports,
            pool: BufferPool::new(
                config.pool_size,
                switchyard_dataplane::buffer::DEFAULT_BUFFER_SIZE,
            ),
            tx: TxScratch {
                msgs: Vec::new(),
                iovs: Vec::new(),
            },
            last_rx_flags: Vec::new(),
            pollfds,
        })
    }

    /// The driver's counters for `port`.
    pub fn stats(&self, port: PortId) -> Option<&PortStats> {
        self.ports.get(usize::from(port)).map(|p| &p.stats)
    }

    /// Reads (and resets) the kernel's counters for `port`'s socket.
    pub fn kernel_stats(&self, port: PortId) -> Result<KernelStats, IoError> {
        let p = self.port(port)?;
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is a writable tpacket_stats and `len` its size, as PACKET_STATISTICS on
        // a TPACKET_V2 socket expects.
        let rc = unsafe {
            libc::getsockopt(
                p.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(IoError::last_os_error("PACKET_STATISTICS"));
        }
        Ok(KernelStats {
            packets: st.tp_packets,
            drops: st.tp_drops,
        })
    }

    /// Flags of the packets appended by the last `rx_burst`, in the same order.
    pub fn last_rx_flags(&self) -> &[RxFlags] {
        &self.last_rx_flags
    }

    /// The buffer pool (for its miss counter).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    fn port(&self, port: PortId) -> Result<&Port, IoError> {
        self.ports
            .get(usize::from(port))
            .ok_or_else(|| IoError::NoSuchInterface(format!("port {port}")))
    }
}

fn open_port(
    name: &str,
    config: &AfPacketConfig,
    fanout: Option<u16>,
) -> Result<(PortInfo, Port), IoError> {
    // Protocol 0: receive nothing until the ring is set up and the socket bound to its interface.
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(IoError::last_os_error("socket(AF_PACKET)"));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let (ifindex, info) = interface_info(fd.as_raw_fd(), name)?;
    let ifindex_c =
        libc::c_int::try_from(ifindex).map_err(|_| IoError::NoSuchInterface(name.to_string()))?;
    let fdr = fd.as_raw_fd();

    let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
    setsockopt(fdr, libc::SOL_PACKET, libc::PACKET_VERSION, &version)
        .map_err(os_err(format!("PACKET_VERSION on {name}")))?;
    let one: libc::c_int = 1;
    setsockopt(fdr, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)
        .map_err(os_err(format!("PACKET_QDISC_BYPASS on {name}")))?;
    setsockopt(fdr, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
        .map_err(os_err(format!("PACKET_IGNORE_OUTGOING on {name}")))?;

    let frames_per_block = config.block_size / config.frame_size;
    let req = libc::tpacket_req {
        tp_block_size: config.block_size,
        tp_block_nr: config.block_count,
        tp_frame_size: config.frame_size,
        tp_frame_nr: frames_per_block * config.block_count,
    };
    setsockopt(fdr, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
        .map_err(os_err(format!("PACKET_RX_RING on {name}")))?;
    let len = config.block_size as usize * config.block_count as usize;
    // SAFETY: mapping the ring the kernel just allocated for this socket, shared, at a
    // kernel-chosen address; the result is checked against MAP_FAILED.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_LOCKED,
            fdr,
            0,
        )
    };
    let base = if base == libc::MAP_FAILED {
        // MAP_LOCKED can fail under a small RLIMIT_MEMLOCK: retry without it.
        // SAFETY: as above.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fdr,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(IoError::last_os_error(format!("mmap RX ring on {name}")));
        }
        base
    } else {
        base
    };
    let ring = RxRing {
        base: base.cast(),
        len,
        frame_size: config.frame_size as usize,
        frame_count: (frames_per_block * config.block_count) as usize,
        next: 0,
    };

    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex_c;
    // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fdr,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(IoError::last_os_error(format!("bind AF_PACKET to {name}")));
    }

    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex_c,
        mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setsockopt(fdr, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
        .map_err(os_err(format!("PACKET_ADD_MEMBERSHIP promisc on {name}")))?;
    if let Some(group) = fanout {
        // Hash mode without PACKET_FANOUT_FLAG_DEFRAG: a router forwards fragments as they
        // come, and the flow hash of a fragment leaves out the ports anyway.
        let arg = libc::c_int::from(group) | (libc::PACKET_FANOUT_HASH as libc::c_int) << 16;
        setsockopt(fdr, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)
            .map_err(os_err(format!("PACKET_FANOUT group {group} on {name}")))?;
    }

    Ok((
        info,
        Port {
            ring,
            fd,
            stats: PortStats::default(),
        },
    ))
}

/// What `copy_frame` needs of a frame's `tpacket2_hdr`.
struct FrameHeader {
    status: u32,
    len: u32,
    snaplen: u32,
    mac: u16,
    vlan_tci: u16,
    vlan_tpid: u16,
}

/// Copies the received frame `frame` into `buf`, putting back an 802.1Q/802.1ad tag the kernel
/// stripped into the header. `None` when the frame was cut by the ring or does not fit `buf`.
fn copy_frame(h: &FrameHeader, frame: &[u8], buf: &mut HeapBuffer) -> Option<RxFlags> {
    if h.snaplen < h.len {
        return None;
    }
    let len = frame.len();
    let mut flags = 0u8;
    if h.status & libc::TP_STATUS_CSUMNOTREADY != 0 {
        flags |= RxFlags::CSUM_NOT_READY;
    }
    let area = buf.receive_area();
    if h.status & libc::TP_STATUS_VLAN_VALID != 0 && len >= ETH_ADDRS_LEN {
        let total = len + VLAN_TAG_LEN;
        if total > area.len() {
            return None;
        }
        let tpid = if h.status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
            h.vlan_tpid
        } else {
            ETH_P_8021Q
        };
        area[..ETH_ADDRS_LEN].copy_from_slice(&frame[..ETH_ADDRS_LEN]);
        area[ETH_ADDRS_LEN..ETH_ADDRS_LEN + 2].copy_from_slice(&tpid.to_be_bytes());
        area[ETH_ADDRS_LEN + 2..ETH_ADDRS_LEN + 4].copy_from_slice(&h.vlan_tci.to_be_bytes());
        area[ETH_ADDRS_LEN + VLAN_TAG_LEN..total].copy_from_slice(&frame[ETH_ADDRS_LEN..]);
        buf.set_received(total);
        flags |= RxFlags::VLAN_REINSERTED;
    } else {
        if len > area.len() {
            return None;
        }
        area[..len].copy_from_slice(frame);
        buf.set_received(len);
    }
    Some(RxFlags(flags))
}

impl Driver for AfPacketDriver {
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
        self.last_rx_flags.clear();
        let p = crate::port_entry(&mut self.ports, port)?;
        let ring = &mut p.ring;
        let mut n = 0;
        // Each iteration takes one user-owned slot and hands it back, so this ends after at
        // most max iterations (and at the first slot the kernel still owns).
        while n < max && ring.ready() {
            let slot = ring.frame_ptr(ring.next);
            // SAFETY: the slot is user-owned (status read with Acquire in `ready`), so the
            // kernel has finished writing its header and frame; the header lies at the start
            // of the slot, which is at least TPACKET2_HDRLEN bytes long.
            let h = unsafe {
                let hdr = &*slot.cast::<libc::tpacket2_hdr>();
                FrameHeader {
                    status: hdr.tp_status,
                    len: hdr.tp_len,
                    snaplen: hdr.tp_snaplen,
                    mac: hdr.tp_mac,
                    vlan_tci: hdr.tp_vlan_tci,
                    vlan_tpid: hdr.tp_vlan_tpid,
                }
            };
            let (mac, snaplen) = (usize::from(h.mac), h.snaplen as usize);
            if mac + snaplen > ring.frame_size {
                // A frame reaching outside its slot would be a kernel bug; drop it rather than
                // read outside the mapping.
                p.stats.rx_oversize += 1;
                ring.release();
                continue;
            }
            // SAFETY: mac + snaplen bytes from the slot's start lie inside the slot (checked
            // above), which is user-owned until `release` below; the slice is dropped before.
            let frame = unsafe { std::slice::from_raw_parts(slot.add(mac), snaplen) };
            let mut buf = self.pool.get();
            let copied = copy_frame(&h, frame, &mut buf);
            ring.release();
            match copied {
                Some(flags) => {
                    p.stats.rx_packets += 1;
                    p.stats.rx_bytes += buf.len() as u64;
                    if flags.csum_not_ready() {
                        p.stats.rx_csum_not_ready += 1;
                    }
                    if flags.vlan_reinserted() {
                        p.stats.rx_vlan_reinserted += 1;
                    }
                    out.push(buf);
                    self.last_rx_flags.push(flags);
                    n += 1;
                }
                None => {
                    p.stats.rx_oversize += 1;
                    self.pool.put(buf);
                }
            }
        }
        Ok(n)
    }

    fn tx_burst(&mut self, port: PortId, pkts: &mut Vec<HeapBuffer>) -> Result<usize, IoError> {
        let Some(p) = self.ports.get_mut(usize::from(port)) else {
            for buf in pkts.drain(..) {
                self.pool.put(buf);
            }
            return Err(IoError::NoSuchInterface(format!("port {port}")));
        };
        let count = pkts.len();
        if count == 0 {
            return Ok(0);
        }
        let tx = &mut self.tx;
        tx.iovs.clear();
        tx.msgs.clear();
        for buf in pkts.iter() {
            let data = buf.data();
            tx.iovs.push(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
        }
        for iov in tx.iovs.iter_mut() {
            // SAFETY: msghdr is plain old data; all-zero (no name, no control) is valid.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            tx.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        let mut sent = 0usize;
        let mut i = 0usize;
        let mut interrupts = 0;
        // Each pass sends at least one message, skips one, or is an EINTR (at most 8 of those).
        while i < count {
            let batch = (count - i).min(1024);
            // SAFETY: msgs[i..i + batch] are initialised mmsghdrs whose iovecs point at the
            // buffers in `pkts`, which are neither moved nor freed during the call.
            let rc = unsafe {
                libc::sendmmsg(
                    p.fd.as_raw_fd(),
                    tx.msgs.as_mut_ptr().add(i),
                    batch as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                sent += rc as usize;
                i += rc as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) if interrupts < 8 => interrupts += 1,
                Some(libc::EAGAIN | libc::ENOBUFS) => break,
                // Too big, interface down, ...: drop this frame and go on with the next.
                _ => i += 1,
            }
        }
        p.stats.tx_packets += sent as u64;
        p.stats.tx_dropped += (count - sent) as u64;
        tx.iovs.clear();
        tx.msgs.clear();
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
        if self.ports.iter().any(|p| p.ring.ready()) {
            return;
        }
        let own = self.pollfds.len();
        for pfd in self.pollfds.iter_mut() {
            pfd.revents = 0;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interface_is_named() {
        match AfPacketDriver::new(&["sy-no-such0".to_string()]) {
            Err(IoError::NoSuchInterface(n)) => assert_eq!(n, "sy-no-such0"),
            // Without CAP_NET_RAW the socket itself fails first.
            Err(IoError::Os { .. }) => {}
            other => panic!("unexpected: {other:?}"),
        }
        assert!(matches!(
            AfPacketDriver::new(&["a-name-much-too-long-for-linux".to_string()]),
            Err(IoError::NoSuchInterface(_)) | Err(IoError::Os { .. })
        ));
        assert!(matches!(
            AfPacketDriver::new(&[]),
            Err(IoError::BadArguments(_))
        ));
    }
}
