//! The DPDK driver: ethdev ports (physical NICs or vdevs such as `net_ring0`, `net_null0`,
//! `net_af_packet0`, `net_tap0`) with one RX and one TX queue per worker each, receiving into and
//! transmitting from DPDK mbufs without copying.
//!
//! Three pieces:
//!
//! - [`Eal`]: proof that `rte_eal_init` ran. DPDK allows it once per process, so [`Eal::init`]
//!   succeeds at most once; later calls return an error.
//! - [`DpdkDriver`]: looks ports up by device name, configures and starts them with a shared
//!   mbuf pool, and implements [`Driver`].
//! - [`Mbuf`]: an owned `rte_mbuf`, implementing [`PacketBuffer`]; dropping it frees it.
//!
//! Poll-mode drivers are shared plugins in Debian; the EAL loads every plugin found in
//! [`Eal::plugin_dir`] (DPDK's build-time `RTE_EAL_PMD_PATH`) during `rte_eal_init`, so
//! nothing has to be passed for vdevs to work. `-d DIR_OR_FILE` adds more.
//!
//! Only single-segment mbufs reach the graph: a chained mbuf received from a port is linearised
//! into its first segment, or dropped and counted when it does not fit.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use switchyard_dataplane::PacketBuffer;
use switchyard_dpdk_sys as sys;

use crate::{Driver, IoError, PortId, PortInfo};

/// Set by the first [`Eal::init`], successful or not: DPDK refuses a second `rte_eal_init`
/// even after a failed one.
static EAL_INIT_CALLED: AtomicBool = AtomicBool::new(false);

/// Makes mempool names unique within the process.
static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

/// DPDK's description of error number `errnum` (positive).
fn strerror(errnum: i32) -> String {
    // SAFETY: rte_strerror accepts any value and returns a pointer to a NUL-terminated string,
    // either static or in a per-thread buffer that stays valid until the next call on this
    // thread; it is copied out at once.
    let msg = unsafe { CStr::from_ptr(sys::rte_strerror(errnum)) };
    msg.to_string_lossy().into_owned()
}

/// The calling thread's `rte_errno`.
fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer; no preconditions.
    unsafe { sys::sy_rte_errno() }
}

/// An `IoError::Dpdk` for a call that returned `-errno`.
fn dpdk_error(what: impl std::fmt::Display, ret: i32) -> IoError {
    errno_error(what, -ret)
}

/// An `IoError::Dpdk` for error number `errnum`.
fn errno_error(what: impl std::fmt::Display, errnum: i32) -> IoError {
    IoError::Dpdk(format!("{what}: {} (errno {errnum})", strerror(errnum)))
}

/// Proof that the DPDK environment abstraction layer is initialised in this process.
///
/// Zero-sized, so it can be shared with worker threads by reference.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Runs `rte_eal_init` with `args` (EAL arguments only, without a program name), e.g.
    /// `--no-huge --no-pci --no-shconf -m 512 --file-prefix NAME -l 0 --vdev net_ring0`.
    ///
    /// Only one call per process can succeed; any further call returns [`IoError::Dpdk`]. The
    /// thread that calls this becomes DPDK's main lcore.
    pub fn init(args: &[String]) -> Result<Eal, IoError> {
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("switchyard").map_err(|e| IoError::BadArguments(e.to_string()))?);
        for a in args {
            owned.push(CString::new(a.as_str()).map_err(|_| {
                IoError::BadArguments(format!("EAL argument with a NUL byte: {a:?}"))
            })?);
        }
        if EAL_INIT_CALLED.swap(true, Ordering::SeqCst) {
            return Err(IoError::Dpdk(
                "the EAL is already initialised in this process (rte_eal_init runs once)".into(),
            ));
        }
        // The EAL may keep pointers into argv (and getopt permutes it), so argv and its strings
        // live for the rest of the process. This happens once.
        let strings: &'static mut [CString] = Vec::leak(owned);
        let argv: &'static mut [*mut c_char] = Vec::leak(
            strings
                .iter_mut()
                .map(|s| s.as_ptr().cast_mut())
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect(),
        );
        let argc = i32::try_from(strings.len())
            .map_err(|_| IoError::BadArguments("too many EAL arguments".into()))?;
        // SAFETY: argv holds argc valid NUL-terminated strings followed by a NULL, all leaked
        // so they outlive the EAL; the swap above guarantees this is the process's only call.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            let errnum = rte_errno();
            return Err(IoError::Dpdk(format!(
                "rte_eal_init({}) failed: {} (errno {errnum})",
                args.join(" "),
                strerror(errnum)
            )));
        }
        Ok(Eal { _private: () })
    }

    /// Registers the calling thread with DPDK (`rte_thread_register`), giving it an lcore id so
    /// that mempool per-lcore caches work on it. Call it from worker threads that DPDK did not
    /// start; threads that do not call it still work, only without the cache.
    pub fn register_thread(&self) -> Result<(), IoError> {
        // SAFETY: the EAL is initialised (self exists); registering a thread has no other
        // precondition and is a no-op error for an already-registered one.
        let ret = unsafe { sys::rte_thread_register() };
        if ret < 0 {
            return Err(errno_error("rte_thread_register", rte_errno()));
        }
        Ok(())
    }

    /// The CPU of the EAL's `n`-th worker lcore (`-l` after the main one, in order; `n` from
    /// 1), for the `n`-th extra worker thread; `None` when the EAL has fewer lcores.
    pub fn worker_cpu(&self, n: usize) -> Option<usize> {
        let mut lcore = u32::MAX;
        for _ in 0..n {
            // SAFETY: reads the EAL's lcore configuration; any value of `lcore` is accepted
            // (u32::MAX starts the walk at lcore 0).
            lcore = unsafe { sys::rte_get_next_lcore(lcore, 1, 0) };
            if lcore >= sys::RTE_MAX_LCORE {
                return None;
            }
        }
        // SAFETY: reads the EAL's lcore configuration; `lcore` is a valid lcore id.
        let cpu = unsafe { sys::rte_lcore_to_cpu_id(lcore as i32) };
        usize::try_from(cpu).ok()
    }

    /// The calling thread's lcore id, or `None` for a thread DPDK does not know.
    pub fn lcore_id(&self) -> Option<u32> {
        // SAFETY: reads a thread-local integer; no preconditions.
        let id = unsafe { sys::sy_rte_lcore_id() };
        (id != sys::LCORE_ID_ANY).then_some(id)
    }

    /// Number of ethdev ports DPDK has probed (vdevs from `--vdev` included).
    pub fn port_count(&self) -> u16 {
        // SAFETY: the EAL is initialised; the call only reads the port table.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// The directory from which the EAL loads its poll-mode driver plugins.
    pub fn plugin_dir() -> &'static str {
        CStr::from_bytes_with_nul(sys::RTE_EAL_PMD_PATH)
            .ok()
            .and_then(|c| c.to_str().ok())
            .unwrap_or("")
    }
}

/// How the driver sets up its ports and its mbuf pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkConfig {
    /// Mbufs in the pool shared by all of the driver's ports (best as 2^n - 1). The default,
    /// 8191 mbufs of 2176 bytes, is about 20 MiB: it fits `--no-huge -m 512` with room to spare.
    pub mbufs: u32,
    /// Per-lcore mempool cache size (at most 512, and at most `mbufs / 1.5`). DPDK serves an
    /// allocation of `n` mbufs from this cache only when `n` is below its size; larger ones go
    /// to the shared ring, which hands out the pool's mbufs in turn, each cold in the CPU's
    /// caches. Keep it above the largest receive burst (the router asks for a whole vector,
    /// 256), so that a worker recycles the same few hundred mbufs, warm.
    pub mbuf_cache: u32,
    /// Bytes per mbuf, headroom (128) included.
    pub data_room: u16,
    /// Receive descriptors per port (adjusted to what the device allows).
    pub rx_desc: u16,
    /// Transmit descriptors per port (adjusted to what the device allows).
    pub tx_desc: u16,
    /// Put each port in promiscuous mode (devices that cannot are left as they are).
    pub promiscuous: bool,
    /// RX and TX queues per port, one pair per worker ([`DpdkDriver::split`]). With more
    /// than one, receive-side scaling spreads packets by flow hash over the queues on devices
    /// that offer it; others spread them their own way (`net_af_packet` with `qpairs=N`: a
    /// kernel fanout group).
    pub queues: u16,
    /// When the EAL runs without hugetlbfs and without PCI devices (`--no-huge --no-pci`: virtual
    /// devices only), place the mbuf pool in memory the driver maps and advises as transparent
    /// huge pages, instead of the EAL's 4 KiB pages. The packets' headers and data are then
    /// reached through a handful of TLB entries instead of hundreds (see
    /// [`DpdkDriver::pool_on_huge_pages`]). Falls back to the EAL's memory when the kernel or
    /// DPDK refuses.
    pub transparent_huge_pages: bool,
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            mbufs: 8191,
            mbuf_cache: 512,
            data_room: sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            rx_desc: 1024,
            tx_desc: 1024,
            promiscuous: true,
            queues: 1,
            transparent_huge_pages: true,
        }
    }
}

/// One port's counters: the device's own (`rte_eth_stats_get`) and the driver's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received by the device.
    pub rx_packets: u64,
    /// Packets transmitted by the device.
    pub tx_packets: u64,
    /// Bytes received by the device.
    pub rx_bytes: u64,
    /// Bytes transmitted by the device.
    pub tx_bytes: u64,
    /// Packets the device dropped because its receive queue was full.
    pub rx_missed: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Receive failures for want of an mbuf.
    pub rx_nombuf: u64,
    /// Chained (multi-segment) mbufs received and linearised by the driver.
    pub rx_linearised: u64,
    /// Chained mbufs received and dropped because they did not fit one segment.
    pub rx_multiseg_dropped: u64,
    /// Packets given to `tx_burst` that the device did not take, freed by the driver.
    pub tx_unsent: u64,
}

/// Counters the driver keeps itself, per port.
#[derive(Clone, Copy, Debug, Default)]
struct DriverCounters {
    rx_linearised: u64,
    rx_multiseg_dropped: u64,
    tx_unsent: u64,
}

/// A DPDK packet buffer: one owned, single-segment `rte_mbuf`. Dropping it frees it.
///
/// `repr(transparent)` over a non-null pointer, so a `Vec<Mbuf>` is an array of
/// `struct rte_mbuf *` that the burst functions fill and drain in place.
#[repr(transparent)]
pub struct Mbuf {
    m: NonNull<sys::rte_mbuf>,
}

impl Mbuf {
    /// Takes ownership of `m`.
    ///
    /// # Safety
    ///
    /// `m` must be a valid mbuf owned by the caller (no other reference to it survives),
    /// allocated from a pktmbuf pool that stays alive as long as any mbuf from it exists
    /// (including siblings made with [`PacketBuffer::alloc_sibling`]). The driver's own pools
    /// are never freed.
    pub unsafe fn from_raw(m: NonNull<sys::rte_mbuf>) -> Self {
        Mbuf { m }
    }

    /// Gives up ownership; the caller must free the mbuf or hand it to DPDK.
    pub fn into_raw(self) -> NonNull<sys::rte_mbuf> {
        let m = self.m;
        std::mem::forget(self);
        m
    }

    /// The mbuf, for DPDK calls the driver does not wrap.
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.m.as_ptr()
    }

    /// The DPDK port the mbuf was received on (set by the receiving PMD).
    pub fn rx_port(&self) -> u16 {
        self.raw().port
    }

    /// Segments in the mbuf chain (1 for every mbuf the driver hands out).
    pub fn segments(&self) -> u16 {
        self.raw().nb_segs
    }

    #[inline]
    fn raw(&self) -> &sys::rte_mbuf {
        // SAFETY: self owns a valid mbuf (constructor contract); shared access through &self.
        unsafe { self.m.as_ref() }
    }

    #[inline]
    fn raw_mut(&mut self) -> &mut sys::rte_mbuf {
        // SAFETY: self owns a valid mbuf exclusively (constructor contract); &mut self.
        unsafe { self.m.as_mut() }
    }

    #[inline]
    fn data_ptr(&self) -> *mut u8 {
        let raw = self.raw();
        // SAFETY: buf_addr points at buf_len bytes and data_off <= buf_len, so the sum stays
        // inside the mbuf's buffer (this is rte_pktmbuf_mtod).
        unsafe { raw.buf_addr.cast::<u8>().add(usize::from(raw.data_off)) }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf (and its chain); nothing else refers to it after this.
        unsafe { sys::sy_rte_pktmbuf_free(self.m.as_ptr()) }
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("headroom", &self.headroom())
            .field("segments", &self.segments())
            .finish()
    }
}

impl PacketBuffer for Mbuf {
    fn alloc_sibling(&self) -> Option<Self> {
        // SAFETY: self's pool is a live pktmbuf pool (from_raw contract: it outlives every
        // mbuf taken from it); the result is NULL or a fresh mbuf that nobody else owns.
        let m = unsafe { sys::sy_rte_pktmbuf_alloc(self.raw().pool) };
        // SAFETY: a fresh mbuf from a pool that outlives it, as above.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m) })
    }

    #[inline]
    fn data(&self) -> &[u8] {
        // SAFETY: the first segment holds data_len initialised bytes at data_ptr(), inside the
        // mbuf's buffer, which self owns; the borrow of self keeps it alive and unchanged.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), usize::from(self.raw().data_len)) }
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.raw().data_len);
        // SAFETY: as in data(); &mut self gives exclusive access to the owned buffer.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(), len) }
    }

    #[inline]
    fn headroom(&self) -> usize {
        usize::from(self.raw().data_off)
    }

    /// The length alone: `data_len`, without forming the slice (no `buf_addr` load).
    #[inline]
    fn len(&self) -> usize {
        usize::from(self.raw().data_len)
    }

    #[inline]
    fn tailroom(&self) -> usize {
        let raw = self.raw();
        usize::from(raw.buf_len)
            .saturating_sub(usize::from(raw.data_off) + usize::from(raw.data_len))
    }

    // The four edits below are DPDK's rte_pktmbuf_prepend/adj/append/trim for a single-segment
    // mbuf, written on the fields directly so that they inline: through the C shim each was a
    // function call on the per-packet path.

    #[inline]
    fn push_front(&mut self, n: usize) -> bool {
        let m = self.raw_mut();
        let Ok(n16) = u16::try_from(n) else {
            return false;
        };
        if n16 > m.data_off {
            return false;
        }
        m.data_off -= n16;
        m.data_len += n16;
        m.pkt_len += u32::from(n16);
        true
    }

    /// `rte_pktmbuf_prepend` and a copy of the header to the new front, with one headroom
    /// check: the default (`push_front`, then `data_mut`) would check the length again.
    #[inline]
    fn push_header<const N: usize>(&mut self, header: &[u8; N]) -> bool {
        let Ok(n16) = u16::try_from(N) else {
            return false;
        };
        let m = self.raw_mut();
        if n16 > m.data_off {
            return false;
        }
        // data_off + data_len <= buf_len <= u16::MAX, so the length cannot overflow.
        m.data_off -= n16;
        m.data_len += n16;
        m.pkt_len += u32::from(n16);
        // SAFETY: the N bytes at data_ptr() were headroom until now, inside the mbuf's buffer
        // (data_off >= 0 after the check); self owns the buffer exclusively (&mut self), and
        // `header` is a separate borrow, so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), self.data_ptr(), N) };
        true
    }

    #[inline]
    fn pull_front(&mut self, n: usize) -> bool {
        let m = self.raw_mut();
        let Ok(n16) = u16::try_from(n) else {
            return false;
        };
        if n16 > m.data_len {
            return false;
        }
        m.data_off += n16;
        m.data_len -= n16;
        m.pkt_len -= u32::from(n16);
        true
    }

    #[inline]
    fn push_back(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        let m = self.raw_mut();
        // n <= tailroom < buf_len <= u16::MAX.
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        let m = self.raw_mut();
        let cur = usize::from(m.data_len);
        if len < cur {
            // cur - len < cur <= u16::MAX.
            let cut = (cur - len) as u16;
            m.data_len -= cut;
            m.pkt_len -= u32::from(cut);
        }
    }
}

/// A DPDK mbuf pool. Never freed: mbufs may outlive the driver that created it, and every
/// live mbuf points back into its pool.
#[derive(Clone, Debug)]
struct MbufPool {
    mp: NonNull<sys::rte_mempool>,
    name: String,
    /// The mbufs are in memory the driver mapped on transparent huge pages (see
    /// [`DpdkConfig::transparent_huge_pages`]), not in the EAL's.
    on_huge_pages: bool,
}

/// Size of a transparent huge page (x86-64 and arm64 with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

impl MbufPool {
    fn create(cfg: &DpdkConfig) -> Result<Self, IoError> {
        let name = format!("sy_mbufs_{}", POOL_SEQ.fetch_add(1, Ordering::Relaxed));
        let cname =
            CString::new(name.as_str()).map_err(|e| IoError::BadArguments(e.to_string()))?;
        if cfg.transparent_huge_pages && Self::eal_memory_is_small_pages() {
            if let Some(mp) = Self::create_on_huge_pages(cfg, &cname) {
                return Ok(MbufPool {
                    mp,
                    name,
                    on_huge_pages: true,
                });
            }
        }
        // SAFETY: the EAL is initialised (the caller holds an Eal); cname is a valid C string
        // that DPDK copies; the numeric arguments are checked by DPDK.
        let mp = unsafe {
            sys::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                cfg.mbufs,
                cfg.mbuf_cache,
                0,
                cfg.data_room,
                sys::SOCKET_ID_ANY,
            )
        };
        let mp = NonNull::new(mp).ok_or_else(|| {
            let errnum = rte_errno();
            IoError::Dpdk(format!(
                "rte_pktmbuf_pool_create({name}, {} mbufs of {} bytes, cache {}): {} (errno \
                 {errnum})",
                cfg.mbufs,
                cfg.data_room,
                cfg.mbuf_cache,
                strerror(errnum)
            ))
        })?;
        Ok(MbufPool {
            mp,
            name,
            on_huge_pages: false,
        })
    }

    /// True when the EAL runs without hugetlbfs (`--no-huge`: its memory is in 4 KiB pages)
    /// and without the PCI bus (`--no-pci`: every port is a virtual device, which copies or
    /// hands packets to the kernel and never DMAs from memory the EAL did not map for it).
    fn eal_memory_is_small_pages() -> bool {
        // SAFETY: both read settings of the initialised EAL; no preconditions.
        unsafe { sys::rte_eal_has_hugepages() == 0 && sys::rte_eal_has_pci() == 0 }
    }

    /// The pool in anonymous memory of its own, advised to the kernel as transparent huge
    /// pages before anything touches it. On 4 KiB pages, a vector of 256 packets spans some
    /// 300 pages of mbufs (the ones in flight and those the PMDs copy from), many more than the
    /// first-level TLB holds, so every header and data access of every node pass missed it;
    /// on 2 MiB pages the whole pool is a dozen. `None` (nothing kept) when the memory cannot
    /// be had or advised, or DPDK refuses it: the caller then takes the EAL's memory.
    fn create_on_huge_pages(cfg: &DpdkConfig, name: &CStr) -> Option<NonNull<sys::rte_mempool>> {
        // SAFETY: a pure computation on sizes.
        let bytes = unsafe { sys::sy_pktmbuf_pool_mem_size(cfg.mbufs, cfg.data_room) };
        let len = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        // One huge page more, so that a huge-page-aligned start can be picked inside.
        let map_len = len + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let skip = (HUGE_PAGE - (map as usize) % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: skip < HUGE_PAGE and skip + len <= map_len: inside the mapping.
        let addr = unsafe { map.cast::<u8>().add(skip) };
        // SAFETY: [addr, addr + len) lies inside the mapping made above, which nothing else
        // uses; advising it changes how the kernel backs it, not its contents.
        let advised = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) } == 0;
        let mp = if advised {
            // SAFETY: the EAL is initialised; name is a valid C string that DPDK copies;
            // [addr, addr + len) is mapped, writable and used by nothing else, and holds the
            // pool's objects (len >= the size the shim computed). It is never unmapped once the
            // pool holds it (pools are never freed).
            unsafe {
                sys::sy_pktmbuf_pool_create_in(
                    name.as_ptr(),
                    cfg.mbufs,
                    cfg.mbuf_cache,
                    cfg.data_room,
                    sys::SOCKET_ID_ANY,
                    addr.cast(),
                    len,
                )
            }
        } else {
            std::ptr::null_mut()
        };
        let mp = NonNull::new(mp);
        if mp.is_none() {
            // SAFETY: the mapping made above, which nothing refers to (the pool was not made,
            // or was freed by the shim on failure).
            unsafe { libc::munmap(map, map_len) };
        }
        mp
    }

    fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: mp is a live pktmbuf pool (never freed); the result is NULL or a fresh mbuf
        // that nobody else owns.
        let m = unsafe { sys::sy_rte_pktmbuf_alloc(self.mp.as_ptr()) };
        // SAFETY: a fresh mbuf from a pool that is never freed.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m) })
    }
}

/// A set of DPDK ethdev ports, sharing one mbuf pool, and one RX and one TX queue of each.
///
/// A driver uses queue `q` of every port (0 unless [`DpdkDriver::split`] made it);
/// `&mut self` on the burst calls keeps a queue to one thread at a time, as DPDK requires.
/// The ports stop when the last driver sharing them is dropped.
#[derive(Debug)]
pub struct DpdkDriver {
    info: Vec<PortInfo>,
    port_ids: Vec<u16>,
    queue: u16,
    queues: u16,
    counters: Vec<DriverCounters>,
    pool: MbufPool,
    /// Stops the ports once the last driver of a [`DpdkDriver::split`] set is gone.
    started: Arc<StartedPorts>,
}

/// Ports this process configured and started; dropping it stops them.
#[derive(Debug, Default)]
struct StartedPorts(std::sync::Mutex<Vec<u16>>);

impl Drop for StartedPorts {
    fn drop(&mut self) {
        let ids = self.0.get_mut().map(std::mem::take).unwrap_or_default();
        for id in ids {
            // SAFETY: id is a valid port this driver configured; stopping a stopped port is
            // harmless. Mbufs still held elsewhere stay valid: the pool is never freed, and no
            // driver is left to poll the port's queues.
            unsafe { sys::rte_eth_dev_stop(id) };
        }
    }
}

// SAFETY: the driver holds DPDK port ids and a mempool pointer. Mempools are multi-thread
// safe (ring_mp_mc), and the queues are used only through &mut self, so moving the driver to
// another thread (a worker) cannot create concurrent access to a queue. Mbuf stays !Send.
unsafe impl Send for DpdkDriver {}

impl DpdkDriver {
    /// Opens the ports named in `port_names` (DPDK device names: `net_ring0`, `net_null0`,
    /// `net_af_packet0`, `0000:01:00.0`, ...). [`PortId`] `i` is `port_names[i]`.
    ///
    /// All names are looked up before any port is touched: an unknown one gives
    /// [`IoError::NoSuchInterface`] and leaves every port as it was.
    pub fn new(_eal: &Eal, port_names: &[String], cfg: &DpdkConfig) -> Result<Self, IoError> {
        if port_names.is_empty() {
            return Err(IoError::BadArguments("no DPDK ports given".into()));
        }
        if port_names.len() > usize::from(PortId::MAX) {
            return Err(IoError::BadArguments("too many DPDK ports".into()));
        }
        let mut port_ids = Vec::with_capacity(port_names.len());
        for name in port_names {
            let id = lookup_port(name)?;
            if port_ids.contains(&id) {
                return Err(IoError::BadArguments(format!(
                    "DPDK port {name} given twice"
                )));
            }
            port_ids.push(id);
        }
        if cfg.queues == 0 {
            return Err(IoError::BadArguments("0 queues per DPDK port".into()));
        }
        let pool = MbufPool::create(cfg)?;
        let started = Arc::new(StartedPorts::default());
        let mut info = Vec::with_capacity(port_ids.len());
        for (name, &id) in port_names.iter().zip(&port_ids) {
            // Recorded before setup so that a port that failed half-way is stopped.
            if let Ok(mut ids) = started.0.lock() {
                ids.push(id);
            }
            info.push(setup_port(name, id, &pool, cfg)?);
        }
        Ok(DpdkDriver {
            counters: vec![DriverCounters::default(); port_ids.len()],
            info,
            port_ids,
            queue: 0,
            queues: cfg.queues,
            pool,
            started,
        })
    }

    /// One driver per queue (the [`DpdkConfig::queues`] the ports were set up with), in
    /// queue order, for one worker each. They share the ports and the mbuf pool.
    pub fn split(self) -> Vec<DpdkDriver> {
        (0..self.queues)
            .map(|queue| DpdkDriver {
                info: self.info.clone(),
                port_ids: self.port_ids.clone(),
                queue,
                queues: 1,
                counters: vec![DriverCounters::default(); self.port_ids.len()],
                pool: self.pool.clone(),
                started: Arc::clone(&self.started),
            })
            .collect()
    }

    /// The queue of every port this driver uses.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The DPDK port id behind `port`.
    pub fn dpdk_port_id(&self, port: PortId) -> Option<u16> {
        self.port_ids.get(usize::from(port)).copied()
    }

    /// A fresh, empty mbuf from the driver's pool (128 bytes of headroom), or `None` when the
    /// pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        self.pool.alloc()
    }

    /// Appends `n` fresh, empty mbufs to `out`, all or none: returns false, leaving `out`
    /// unchanged, when the pool does not have `n` free.
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        let Ok(count) = u32::try_from(n) else {
            return false;
        };
        out.reserve(n);
        let start = out.len();
        // SAFETY: out has room for n more elements after start, and Mbuf is repr(transparent)
        // over NonNull<rte_mbuf>; the pool is live. On success DPDK wrote n fresh mbufs that
        // nobody else owns; on failure it wrote nothing we keep.
        let ret = unsafe {
            sys::sy_rte_pktmbuf_alloc_bulk(
                self.pool.mp.as_ptr(),
                out.as_mut_ptr().add(start).cast::<*mut sys::rte_mbuf>(),
                count,
            )
        };
        if ret != 0 {
            return false;
        }
        // SAFETY: out[start..start + n] now hold valid, owned mbufs.
        unsafe { out.set_len(start + n) };
        true
    }

    /// An mbuf holding a copy of `bytes`, or `None` when the pool is exhausted or the bytes do
    /// not fit one mbuf.
    pub fn mbuf_from(&self, bytes: &[u8]) -> Option<Mbuf> {
        let mut m = self.pool.alloc()?;
        if !m.push_back(bytes.len()) {
            return None;
        }
        m.data_mut().copy_from_slice(bytes);
        Some(m)
    }

    /// Mbufs currently free in the driver's pool.
    pub fn pool_available(&self) -> u32 {
        // SAFETY: the pool is live (never freed); the count is a racy snapshot, which is fine.
        unsafe { sys::rte_mempool_avail_count(self.pool.mp.as_ptr()) }
    }

    /// Name of the driver's mempool.
    pub fn pool_name(&self) -> &str {
        &self.pool.name
    }

    /// True when the mbuf pool is in memory the driver advised as transparent huge pages
    /// ([`DpdkConfig::transparent_huge_pages`] asked for it and it could be had). Whether the
    /// kernel found huge pages for it is its own business (`AnonHugePages` in
    /// `/proc/PID/smaps`).
    pub fn pool_on_huge_pages(&self) -> bool {
        self.pool.on_huge_pages
    }

    /// The device and driver counters of `port`.
    pub fn stats(&self, port: PortId) -> Result<PortStats, IoError> {
        let id = self.port_id(port)?;
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: id is a valid, configured port; s is a writable rte_eth_stats.
        let ret = unsafe { sys::rte_eth_stats_get(id, &mut s) };
        if ret != 0 {
            return Err(dpdk_error(format!("rte_eth_stats_get(port {id})"), ret));
        }
        let c = self.counters[usize::from(port)];
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
            rx_linearised: c.rx_linearised,
            rx_multiseg_dropped: c.rx_multiseg_dropped,
            tx_unsent: c.tx_unsent,
        })
    }

    /// Zeroes the device and driver counters of `port`.
    pub fn reset_stats(&mut self, port: PortId) -> Result<(), IoError> {
        let id = self.port_id(port)?;
        // SAFETY: id is a valid, configured port.
        let ret = unsafe { sys::rte_eth_stats_reset(id) };
        if ret != 0 {
            return Err(dpdk_error(format!("rte_eth_stats_reset(port {id})"), ret));
        }
        self.counters[usize::from(port)] = DriverCounters::default();
        Ok(())
    }

    fn port_id(&self, port: PortId) -> Result<u16, IoError> {
        self.dpdk_port_id(port)
            .ok_or_else(|| IoError::NoSuchInterface(format!("port {port}")))
    }

    /// Linearises (or drops) the chained mbufs among `out[start..]`.
    #[cold]
    fn fix_multiseg(&mut self, port: PortId, out: &mut Vec<Mbuf>, start: usize) {
        let counters = &mut self.counters[usize::from(port)];
        let mut i = start;
        while i < out.len() {
            if out[i].segments() > 1 {
                // SAFETY: out[i] is owned by out and not aliased; linearize copies the chain
                // into the first segment and frees the others, or fails leaving it intact.
                let ret = unsafe { sys::sy_rte_pktmbuf_linearize(out[i].as_ptr()) };
                if ret == 0 {
                    counters.rx_linearised += 1;
                } else {
                    counters.rx_multiseg_dropped += 1;
                    drop(out.remove(i));
                    continue;
                }
            }
            i += 1;
        }
    }
}

/// The DPDK port id of device `name`.
fn lookup_port(name: &str) -> Result<u16, IoError> {
    let cname = CString::new(name).map_err(|_| IoError::NoSuchInterface(name.to_owned()))?;
    let mut id = 0u16;
    // SAFETY: cname is a valid C string and id a writable u16; the EAL is initialised.
    let ret = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
    if ret != 0 {
        return Err(IoError::NoSuchInterface(name.to_owned()));
    }
    Ok(id)
}

/// Configures port `id` with `cfg.queues` RX and TX queues, starts it and reads its address
/// and MTU.
fn setup_port(name: &str, id: u16, pool: &MbufPool, cfg: &DpdkConfig) -> Result<PortInfo, IoError> {
    let mut dev = sys::rte_eth_dev_info::default();
    // SAFETY: id is a valid port; dev is a writable rte_eth_dev_info.
    let ret = unsafe { sys::rte_eth_dev_info_get(id, &mut dev) };
    if ret < 0 {
        return Err(dpdk_error(format!("device info of {name}"), ret));
    }
    let most = dev.max_rx_queues.min(dev.max_tx_queues);
    if cfg.queues > most {
        return Err(IoError::BadArguments(format!(
            "{name} has {most} RX/TX queue pair(s), {} asked for (one per worker; a vdev may \
             take more, e.g. qpairs=N for net_af_packet)",
            cfg.queues
        )));
    }
    let mut conf = sys::rte_eth_conf::default();
    if cfg.queues > 1 && dev.flow_type_rss_offloads != 0 {
        // Spread flows over the queues by every hash the device offers (a NULL key: its
        // default).
        conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = dev.flow_type_rss_offloads;
    }
    let queues = cfg.queues;
    // SAFETY: id is a valid port; conf is a configuration that DPDK copies. Fails with
    // -EBUSY if the port is already started (e.g. by another driver).
    let ret = unsafe { sys::rte_eth_dev_configure(id, queues, queues, &conf) };
    if ret < 0 {
        return Err(dpdk_error(format!("configuring {name} (port {id})"), ret));
    }
    let (mut rx_desc, mut tx_desc) = (cfg.rx_desc, cfg.tx_desc);
    // SAFETY: id is a valid configured port; both pointers are to writable u16s.
    let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_desc, &mut tx_desc) };
    if ret < 0 {
        return Err(dpdk_error(format!("descriptor counts for {name}"), ret));
    }
    // SAFETY: id is a valid port.
    let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
    // SOCKET_ID_ANY (-1) as unsigned is what DPDK expects for "any socket".
    let socket = socket as u32;
    for q in 0..queues {
        // SAFETY: id is configured with `queues` RX queues; a NULL rx_conf means the device
        // defaults; the pool is a live pktmbuf pool that is never freed.
        let ret = unsafe {
            sys::rte_eth_rx_queue_setup(id, q, rx_desc, socket, std::ptr::null(), pool.mp.as_ptr())
        };
        if ret < 0 {
            return Err(dpdk_error(format!("RX queue {q} setup on {name}"), ret));
        }
        // SAFETY: id is configured with `queues` TX queues; a NULL tx_conf means the device
        // defaults.
        let ret = unsafe { sys::rte_eth_tx_queue_setup(id, q, tx_desc, socket, std::ptr::null()) };
        if ret < 0 {
            return Err(dpdk_error(format!("TX queue {q} setup on {name}"), ret));
        }
    }
    // SAFETY: id is configured and both queues are set up.
    let ret = unsafe { sys::rte_eth_dev_start(id) };
    if ret < 0 {
        return Err(dpdk_error(format!("starting {name}"), ret));
    }
    if cfg.promiscuous {
        // SAFETY: id is a started port.
        let ret = unsafe { sys::rte_eth_promiscuous_enable(id) };
        if ret < 0 && ret != -libc::ENOTSUP {
            return Err(dpdk_error(format!("promiscuous mode on {name}"), ret));
        }
    }
    let mut addr = sys::rte_ether_addr::default();
    // SAFETY: id is a valid port; addr is a writable rte_ether_addr.
    let ret = unsafe { sys::rte_eth_macaddr_get(id, &mut addr) };
    if ret < 0 {
        return Err(dpdk_error(format!("MAC address of {name}"), ret));
    }
    let mut mtu = 0u16;
    // SAFETY: id is a valid port; mtu is a writable u16.
    let ret = unsafe { sys::rte_eth_dev_get_mtu(id, &mut mtu) };
    if ret < 0 || mtu == 0 {
        // Devices without an MTU of their own (some vdevs) carry standard Ethernet.
        mtu = sys::RTE_ETHER_MTU as u16;
    }
    Ok(PortInfo {
        name: name.to_owned(),
        mac: addr.addr_bytes,
        mtu,
    })
}

impl Driver for DpdkDriver {
    type Buffer = Mbuf;

    fn ports(&self) -> &[PortInfo] {
        &self.info
    }

    fn alloc(&mut self) -> Option<Mbuf> {
        DpdkDriver::alloc(self)
    }

    fn rx_burst(
        &mut self,
        port: PortId,
        out: &mut Vec<Mbuf>,
        max: usize,
    ) -> Result<usize, IoError> {
        let id = self.port_id(port)?;
        let max = max.min(usize::from(u16::MAX));
        out.reserve(max);
        let start = out.len();
        // SAFETY: out has room for max more elements after start; Mbuf is repr(transparent)
        // over NonNull<rte_mbuf>, so the spare capacity is an array of max `rte_mbuf *` slots.
        // Queue self.queue of port id is set up and &mut self makes this its only user.
        let n = unsafe {
            sys::sy_rte_eth_rx_burst(
                id,
                self.queue,
                out.as_mut_ptr().add(start).cast::<*mut sys::rte_mbuf>(),
                max as u16,
            )
        };
        let n = usize::from(n);
        // SAFETY: the PMD wrote n valid, non-null mbuf pointers, now owned by us, into
        // out[start..start + n].
        unsafe { out.set_len(start + n) };
        // One pass without an early exit (a load and an OR per mbuf, no branch): chained
        // mbufs are rare.
        let chained = out[start..]
            .iter()
            .fold(0, |acc, m| acc | m.segments().wrapping_sub(1));
        if chained != 0 {
            self.fix_multiseg(port, out, start);
        }
        Ok(out.len() - start)
    }

    fn tx_burst(&mut self, port: PortId, pkts: &mut Vec<Mbuf>) -> Result<usize, IoError> {
        let id = self.port_id(port)?;
        let total = pkts.len();
        let base = pkts.as_mut_ptr().cast::<*mut sys::rte_mbuf>();
        let mut sent = 0usize;
        while sent < total {
            let chunk = (total - sent).min(usize::from(u16::MAX)) as u16;
            // SAFETY: base[sent..total] are owned, valid single-segment mbufs (Mbuf is
            // repr(transparent) over the pointer); queue self.queue of port id is set up and
            // &mut self makes this its only user. The PMD takes ownership of the first n it
            // returns.
            let n = unsafe { sys::sy_rte_eth_tx_burst(id, self.queue, base.add(sent), chunk) };
            sent += usize::from(n);
            if n < chunk {
                break;
            }
        }
        // SAFETY: forget every element without dropping: the first `sent` now belong to the
        // PMD, and the rest are freed just below. The allocation itself stays with pkts.
        unsafe { pkts.set_len(0) };
        if sent < total {
            // SAFETY: base[sent..total] are still-owned mbufs no longer reachable from pkts.
            unsafe { sys::rte_pktmbuf_free_bulk(base.add(sent), (total - sent) as u32) };
            self.counters[usize::from(port)].tx_unsent += (total - sent) as u64;
        }
        Ok(sent)
    }

    fn recycle(&mut self, bufs: &mut Vec<Mbuf>) {
        let n = bufs.len();
        let base = bufs.as_mut_ptr().cast::<*mut sys::rte_mbuf>();
        // SAFETY: the n elements are forgotten here and freed at once below, exactly once.
        unsafe { bufs.set_len(0) };
        // SAFETY: base[..n] are owned mbufs no longer reachable from bufs.
        unsafe { sys::rte_pktmbuf_free_bulk(base, n as u32) };
    }
}
