//! Packet I/O drivers.
//!
//! Every driver implements [`Driver`]: ports with a name, MAC and MTU, and burst receive and
//! transmit of [`PacketBuffer`]s. This crate and `switchyard-dpdk-sys` are the only places where
//! `unsafe` lives; each block says why it is sound in a `// SAFETY:` line.

use switchyard_dataplane::PacketBuffer;

pub mod afpacket;
#[cfg(feature = "afxdp")]
pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod cryptodev;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod mem;
pub mod pcap;
pub mod tcp_md5;
pub mod tun;

/// What a driver knows about one of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// The name the user gave (kernel interface name, DPDK device name, ...).
    pub name: String,
    /// The port's Ethernet address.
    pub mac: [u8; 6],
    /// Largest IP packet the port carries (the link MTU, without the Ethernet header).
    pub mtu: u16,
}

/// A driver error, always with what the driver was doing.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The named interface or device does not exist.
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// DPDK returned an error.
    #[error("dpdk: {0}")]
    Dpdk(String),
    /// The arguments given to the driver are not usable.
    #[error("bad driver arguments: {0}")]
    BadArguments(String),
    /// A pcap file could not be read or written.
    #[error("pcap: {0}")]
    Pcap(String),
}

impl IoError {
    /// An OS error from the last failed system call, labelled with `what`.
    pub fn last_os_error(what: impl Into<String>) -> Self {
        IoError::Os {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// Runs the calling thread on `cpu` only, or, with `None`, on every CPU the process may use:
/// a thread spawned by one the EAL pinned to its main lcore inherits that single CPU, and a
/// second worker would then share the first one's core.
pub fn pin_thread(cpu: Option<usize>) -> Result<(), IoError> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus: Vec<usize> = match cpu {
        Some(c) => vec![c],
        None => (0..online.max(1).min(libc::CPU_SETSIZE as usize)).collect(),
    };
    for c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(IoError::BadArguments(format!("CPU {c} out of range")));
        }
        // SAFETY: `set` is a valid cpu_set_t and `c` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(IoError::last_os_error("sched_setaffinity"));
    }
    Ok(())
}

/// Index of a port within its driver.
pub type PortId = u16;

/// The entry for `port` in a driver's per-port list, or the error every driver gives for a
/// port it does not have.
pub(crate) fn port_entry<T>(ports: &mut [T], port: PortId) -> Result<&mut T, IoError> {
    ports
        .get_mut(usize::from(port))
        .ok_or_else(|| IoError::NoSuchInterface(format!("port {port}")))
}

/// A packet I/O driver with one or more ports, used by one worker.
pub trait Driver {
    /// The buffers this driver receives into and transmits from.
    type Buffer: PacketBuffer;

    /// The driver's ports; a port's [`PortId`] is its index here.
    fn ports(&self) -> &[PortInfo];

    /// Receives up to `max` packets from `port`, appending them to `out`; returns how many.
    /// Never blocks.
    fn rx_burst(
        &mut self,
        port: PortId,
        out: &mut Vec<Self::Buffer>,
        max: usize,
    ) -> Result<usize, IoError>;

    /// Transmits the packets in `pkts` on `port`, draining it; returns how many were sent.
    /// Packets the port could not take are freed and not counted.
    fn tx_burst(&mut self, port: PortId, pkts: &mut Vec<Self::Buffer>) -> Result<usize, IoError>;

    /// A fresh, empty buffer from the driver's own pool (default headroom in front), for
    /// packets that do not come from a port, such as those read from a TUN device. `None` when
    /// the pool is exhausted.
    fn alloc(&mut self) -> Option<Self::Buffer>;

    /// Takes back buffers the graph has finished with (dropped or consumed), draining `bufs`.
    fn recycle(&mut self, bufs: &mut Vec<Self::Buffer>) {
        bufs.clear();
    }

    /// Waits up to `timeout` for any port to have packets to receive; drivers that cannot wait
    /// return at once. Lets a worker sleep when idle instead of spinning.
    fn wait(&mut self, timeout: std::time::Duration) {
        let _ = timeout;
    }

    /// As [`Driver::wait`], but also wakes when one of `extra` (file descriptors such as a TUN
    /// device's) is readable. Drivers that cannot wait return at once.
    fn wait_also(&mut self, timeout: std::time::Duration, extra: &[std::os::fd::RawFd]) {
        let _ = extra;
        self.wait(timeout);
    }
}
