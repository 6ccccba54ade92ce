//! A TUN device: the punt path between the dataplane and the host's own IP stack, as VPP's
//! linux-cp and kube-router use one.
//!
//! Packets the dataplane hands to the host (TCP and UDP to the router's addresses, ICMP errors
//! about the host's packets, ...) are written to the device, so the kernel receives them as if
//! from a link; what the kernel sends out of the device (its answers, connections it opens)
//! is read back and routed by the dataplane. Each read or write is one raw IP packet
//! (`IFF_TUN | IFF_NO_PI`: no Ethernet header, no packet-information prefix).
//!
//! The device is set up without shelling out: the link and its MTU with `SIOCSIF*` ioctls, its
//! addresses and routes with rtnetlink (`RTM_NEWADDR`, `RTM_NEWROUTE`), the messages built
//! here byte by byte. Netlink rather than `SIOCSIFADDR` for IPv4 too: the ioctl sets only one
//! address per device, and a router has one per port.
//!
//! The device disappears with its file descriptor, and its addresses and routes with it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::IoError;

/// Longest interface name Linux accepts, without the terminating NUL.
const IFNAMSIZ: usize = 16;

// <linux/sockios.h>; spelled out because not every libc release exports them for every
// target.
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFMTU: libc::c_ulong = 0x8922;
const SIOCGIFINDEX: libc::c_ulong = 0x8933;

// <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h>.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_F_PERMANENT: u8 = 0x80;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
/// What `rtm_table` says for a table whose number does not fit a byte (`RTA_TABLE` has it).
const RT_TABLE_COMPAT: u8 = 252;
// <linux/fib_rules.h>: policy routing rules.
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const FRA_IIFNAME: u16 = 3;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FRA_IP_PROTO: u16 = 22;
const FRA_DPORT_RANGE: u16 = 24;
const FR_ACT_TO_TBL: u8 = 1;

/// The prefix length of a link-local address: fe80::/64 (RFC 4291 2.5.6).
const LINK_LOCAL_PREFIX_LEN: u8 = 64;

/// The kernel's table of local and broadcast routes, which the rule of preference 0 looks up.
pub const RT_TABLE_LOCAL: u32 = 255;

/// `struct ifreq`: a name and a 24-byte union, of which we use the leading short (flags) or
/// int (MTU, index).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        for (d, s) in r.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        r
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// A TUN device, non-blocking.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    index: u32,
}

impl Tun {
    /// Creates the TUN device `name` in the calling thread's network namespace. It starts
    /// down, without addresses.
    pub fn create(name: &str) -> Result<Tun, IoError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(IoError::BadArguments(format!(
                "{name:?} is not a usable interface name (1 to 15 bytes, no '/', ' ')"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| IoError::Os {
                what: "opening /dev/net/tun".into(),
                source,
            })?;
        let mut req = IfReq::new(name);
        req.set_short((libc::IFF_TUN | libc::IFF_NO_PI) as i16);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is (repr(C), the
        // kernel's 40-byte layout), live for the call; the fd is an open /dev/net/tun.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF as _,
                &mut req as *mut IfReq,
            )
        };
        if rc < 0 {
            return Err(IoError::last_os_error(format!("TUNSETIFF {name}")));
        }
        let ctl = control_socket()?;
        let mut req = IfReq::new(name);
        ifreq_ioctl(&ctl, SIOCGIFINDEX, &mut req, name)?;
        let index = u32::try_from(req.int()).map_err(|_| {
            IoError::BadArguments(format!("{name}: kernel gave a negative ifindex"))
        })?;
        Ok(Tun {
            file,
            name: name.to_string(),
            index,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Reads one packet into `buf`: `Ok(None)` when none is waiting. A packet longer than
    /// `buf` is cut short by the kernel.
    pub fn read_into(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one packet, which the kernel receives as from a link. Fails with `WouldBlock`
    /// when the device's queue is full (the packet is then not sent).
    pub fn write(&mut self, packet: &[u8]) -> io::Result<()> {
        let n = self.file.write(packet)?;
        if n != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("tun took {n} of {} bytes", packet.len()),
            ));
        }
        Ok(())
    }

    /// Sets the device's MTU.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), IoError> {
        let ctl = control_socket()?;
        let mut req = IfReq::new(&self.name);
        req.set_int(i32::from(mtu));
        ifreq_ioctl(&ctl, SIOCSIFMTU, &mut req, &self.name)
    }

    /// Brings the link up.
    pub fn set_up(&self) -> Result<(), IoError> {
        let ctl = control_socket()?;
        let mut req = IfReq::new(&self.name);
        ifreq_ioctl(&ctl, SIOCGIFFLAGS, &mut req, &self.name)?;
        req.set_short(req.short() | libc::IFF_UP as i16);
        ifreq_ioctl(&ctl, SIOCSIFFLAGS, &mut req, &self.name)
    }

    /// Stops the kernel from making up an IPv6 link-local address for the device (and with it
    /// router solicitations and MLD reports): the device is not a real link, and one that
    /// stands for a link gets that link's address ([`Tun::add_link_local_address`]). Call
    /// before [`Tun::set_up`]. Writes the `addr_gen_mode` sysctl.
    pub fn no_ipv6_link_local(&self) -> Result<(), IoError> {
        let path = format!("/proc/sys/net/ipv6/conf/{}/addr_gen_mode", self.name);
        std::fs::write(&path, "1\n").map_err(|source| IoError::Os {
            what: format!("writing {path}"),
            source,
        })
    }

    /// Turns IPv6 on for the device, in case the namespace's default has it off. Writes the
    /// `disable_ipv6` sysctl; call after [`Tun::no_ipv6_link_local`].
    pub fn enable_ipv6(&self) -> Result<(), IoError> {
        let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.name);
        std::fs::write(&path, "0\n").map_err(|source| IoError::Os {
            what: format!("writing {path}"),
            source,
        })
    }

    /// Adds `addr` to the device as a host address (/32 or /128), so that the kernel owns it
    /// without believing any subnet is on the device. IPv6 addresses skip duplicate address
    /// detection.
    pub fn add_host_address(&self, addr: IpAddr) -> Result<(), IoError> {
        add_host_address_to(self.index, addr).map_err(|e| match e {
            IoError::Os { source, .. } => IoError::Os {
                what: format!("adding {addr} to {}", self.name),
                source,
            },
            other => other,
        })
    }

    /// Adds the IPv6 link-local address `addr` to the device as a link's own address: with
    /// the /64 of fe80::, so that the kernel routes link-local destinations scoped to the
    /// device (`fe80::1%name`, a socket's scope id) out of it, without duplicate address
    /// detection. Call after [`Tun::enable_ipv6`].
    pub fn add_link_local_address(&self, addr: Ipv6Addr) -> Result<(), IoError> {
        let msg = address_message(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            self.index,
            IpAddr::V6(addr),
            LINK_LOCAL_PREFIX_LEN,
            1,
        );
        netlink_request(&msg).map_err(|source| IoError::Os {
            what: format!("adding {addr}/{LINK_LOCAL_PREFIX_LEN} to {}", self.name),
            source,
        })
    }

    /// Routes `prefix`/`len` out of the device (`len` 0: the default route). Fails (with
    /// "File exists") rather than replace a route already there.
    pub fn add_route(&self, prefix: IpAddr, len: u8) -> Result<(), IoError> {
        self.add_route_in_table(prefix, len, u32::from(RT_TABLE_MAIN))
    }

    /// [`Tun::add_route`] in routing table `table` (for policy routing, see [`RouteRule`]).
    /// The route goes with the device.
    pub fn add_route_in_table(&self, prefix: IpAddr, len: u8, table: u32) -> Result<(), IoError> {
        let msg = new_route_message(self.index, prefix, len, table, 2);
        netlink_request(&msg).map_err(|source| IoError::Os {
            what: format!(
                "adding route {prefix}/{len} via {} in table {table}",
                self.name
            ),
            source,
        })
    }

    /// Lets the kernel take packets from the device whose source is one of its own addresses
    /// (an answer the dataplane translated to come from the node, to the node): IPv4 drops
    /// them as martians unless the device has `accept_local`. Also turns the device's
    /// reverse-path filter off (the `all` setting still applies; either way such a packet's
    /// reverse route leads back into the device). Writes the IPv4 sysctls.
    pub fn accept_local_sources(&self) -> Result<(), IoError> {
        for (key, value) in [("accept_local", "1\n"), ("rp_filter", "0\n")] {
            let path = format!("/proc/sys/net/ipv4/conf/{}/{key}", self.name);
            std::fs::write(&path, value).map_err(|source| IoError::Os {
                what: format!("writing {path}"),
                source,
            })?;
        }
        Ok(())
    }
}

/// A policy routing rule (`ip rule`, in the calling thread's network namespace): packets
/// that match are looked up in `table`. Unset fields match anything; to delete, they are
/// wildcards too (the kernel deletes the first rule matching what is set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// The preference (lower is looked at first).
    pub priority: u32,
    /// The routing table.
    pub table: u32,
    /// Only packets from this interface; `lo` for the host's own.
    pub iif: Option<String>,
    /// Only this IP protocol.
    pub ip_proto: Option<u8>,
    /// Only destination ports in this range (both ends included).
    pub dports: Option<(u16, u16)>,
}

impl RouteRule {
    /// Adds the rule; an identical rule already there is an error ("File exists").
    pub fn add(&self) -> Result<(), IoError> {
        netlink_request(&rule_message(RTM_NEWRULE, self, 1)).map_err(|source| IoError::Os {
            what: format!("adding rule {self}"),
            source,
        })
    }

    /// Deletes the first rule that matches this one; none is an error ("No such file or
    /// directory").
    pub fn delete(&self) -> Result<(), IoError> {
        netlink_request(&rule_message(RTM_DELRULE, self, 1)).map_err(|source| IoError::Os {
            what: format!("deleting rule {self}"),
            source,
        })
    }
}

impl std::fmt::Display for RouteRule {
    /// As `ip rule` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = if self.ipv6 { "-6" } else { "-4" };
        write!(f, "{family} pref {}", self.priority)?;
        if let Some(iif) = &self.iif {
            write!(f, " iif {iif}")?;
        }
        if let Some(proto) = self.ip_proto {
            write!(f, " ipproto {proto}")?;
        }
        if let Some((first, last)) = self.dports {
            write!(f, " dport {first}-{last}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Which of several descriptors (TUN devices) have something to read, found by one `poll(2)`
/// without waiting: reading only those costs one system call for the lot instead of a read
/// per idle device.
#[derive(Debug)]
pub struct ReadyFds {
    pollfds: Vec<libc::pollfd>,
}

impl ReadyFds {
    /// For the descriptors `fds`, in this order.
    pub fn new(fds: &[RawFd]) -> Self {
        ReadyFds {
            pollfds: fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        }
    }

    /// Polls them all at once, without waiting; false when none is ready (or the poll
    /// failed), and then [`ReadyFds::is_ready`] says false for each.
    pub fn poll(&mut self) -> bool {
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        // SAFETY: `pollfds` is a live, exclusively borrowed array of `len` pollfd; timeout 0.
        let ready = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                0,
            )
        };
        ready > 0
    }

    /// Whether descriptor `i` was readable (or in error, which a read then reports) at the
    /// last [`ReadyFds::poll`].
    pub fn is_ready(&self, i: usize) -> bool {
        self.pollfds.get(i).is_some_and(|p| p.revents != 0)
    }
}

/// An `AF_INET` datagram socket, the handle the `SIOC*IF*` ioctls go through.
fn control_socket() -> Result<OwnedFd, IoError> {
    // SAFETY: plain socket(2) call with constant arguments; no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(IoError::last_os_error("socket(AF_INET, SOCK_DGRAM)"));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_ioctl(
    sock: &OwnedFd,
    request: libc::c_ulong,
    req: &mut IfReq,
    name: &str,
) -> Result<(), IoError> {
    // SAFETY: every request used here reads and/or writes one `struct ifreq`, which `req` is,
    // live and exclusively borrowed for the call; sock is an open socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut IfReq) };
    if rc < 0 {
        return Err(IoError::last_os_error(format!(
            "ioctl {request:#x} on {name}"
        )));
    }
    Ok(())
}

/// A netlink message under construction: header, family header, attributes, each padded to
/// four bytes.
struct NetlinkMessage(Vec<u8>);

impl NetlinkMessage {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        NetlinkMessage(b)
    }

    fn put(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len() as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.put(data);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn ip_bytes(addr: &IpAddr) -> (u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

/// [`Tun::add_host_address`] for the device with interface index `index`, for a thread that
/// does not own the [`Tun`] (the IKE daemon adding the virtual IPs a peer assigned us).
pub fn add_host_address_to(index: u32, addr: IpAddr) -> Result<(), IoError> {
    netlink_request(&new_address_message(index, addr, 1)).map_err(|source| IoError::Os {
        what: format!("adding {addr} to interface {index}"),
        source,
    })
}

/// Takes a host address that [`add_host_address_to`] added off interface `index` again.
pub fn remove_host_address_from(index: u32, addr: IpAddr) -> Result<(), IoError> {
    netlink_request(&address_message(
        RTM_DELADDR,
        NLM_F_REQUEST | NLM_F_ACK,
        index,
        addr,
        host_prefix_len(&addr),
        1,
    ))
    .map_err(|source| IoError::Os {
        what: format!("removing {addr} from interface {index}"),
        source,
    })
}

/// `RTM_NEWADDR` for a host address (/32, /128) on interface `index`.
fn new_address_message(index: u32, addr: IpAddr, seq: u32) -> Vec<u8> {
    address_message(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        index,
        addr,
        host_prefix_len(&addr),
        seq,
    )
}

/// The prefix length of a host address: 32 or 128.
fn host_prefix_len(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// An address message (`RTM_NEWADDR`, `RTM_DELADDR`) for `addr`/`prefix_len` on `index`.
fn address_message(
    kind: u16,
    flags: u16,
    index: u32,
    addr: IpAddr,
    prefix_len: u8,
    seq: u32,
) -> Vec<u8> {
    let (family, bytes) = ip_bytes(&addr);
    let mut m = NetlinkMessage::new(kind, flags, seq);
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut ifa = vec![family, prefix_len, IFA_F_PERMANENT, RT_SCOPE_UNIVERSE];
    ifa.extend_from_slice(&index.to_ne_bytes());
    m.put(&ifa);
    m.attr(IFA_LOCAL, &bytes);
    m.attr(IFA_ADDRESS, &bytes);
    if addr.is_ipv6() {
        m.attr(
            IFA_FLAGS,
            &(IFA_F_NODAD | u32::from(IFA_F_PERMANENT)).to_ne_bytes(),
        );
    }
    m.finish()
}

/// `RTM_NEWROUTE` for `prefix`/`len` out of interface `index`, in routing table `table`.
fn new_route_message(index: u32, prefix: IpAddr, len: u8, table: u32, seq: u32) -> Vec<u8> {
    let (family, bytes) = ip_bytes(&prefix);
    let mut m = NetlinkMessage::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    );
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    // No gateway: the device is point-to-point, so the route is link-scoped (as `ip route add
    // default dev tun0` makes it).
    let mut rtm = vec![
        family,
        len,
        0,
        0,
        u8::try_from(table).unwrap_or(RT_TABLE_COMPAT),
        RTPROT_STATIC,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ];
    rtm.extend_from_slice(&0u32.to_ne_bytes());
    m.put(&rtm);
    if len > 0 {
        m.attr(RTA_DST, &bytes);
    }
    m.attr(RTA_OIF, &index.to_ne_bytes());
    if table != u32::from(RT_TABLE_MAIN) {
        m.attr(RTA_TABLE, &table.to_ne_bytes());
    }
    m.finish()
}

/// `RTM_NEWRULE` (exclusive: an identical rule is an error) or `RTM_DELRULE` for `rule`.
fn rule_message(kind: u16, rule: &RouteRule, seq: u32) -> Vec<u8> {
    let flags = if kind == RTM_NEWRULE {
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    } else {
        NLM_F_REQUEST | NLM_F_ACK
    };
    let mut m = NetlinkMessage::new(kind, flags, seq);
    let family = if rule.ipv6 {
        libc::AF_INET6
    } else {
        libc::AF_INET
    } as u8;
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
    let mut frh = vec![
        family,
        0,
        0,
        0,
        u8::try_from(rule.table).unwrap_or(RT_TABLE_COMPAT),
        0,
        0,
        FR_ACT_TO_TBL,
    ];
    frh.extend_from_slice(&0u32.to_ne_bytes());
    m.put(&frh);
    m.attr(FRA_PRIORITY, &rule.priority.to_ne_bytes());
    m.attr(FRA_TABLE, &rule.table.to_ne_bytes());
    if let Some(iif) = &rule.iif {
        let mut name = iif.as_bytes().to_vec();
        name.push(0);
        m.attr(FRA_IIFNAME, &name);
    }
    if let Some(proto) = rule.ip_proto {
        m.attr(FRA_IP_PROTO, &[proto]);
    }
    if let Some((first, last)) = rule.dports {
        // struct fib_rule_port_range: start and end, host order.
        let mut range = first.to_ne_bytes().to_vec();
        range.extend_from_slice(&last.to_ne_bytes());
        m.attr(FRA_DPORT_RANGE, &range);
    }
    m.finish()
}

/// Sends one request on a fresh rtnetlink socket and waits for its acknowledgement.
fn netlink_request(msg: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2) call with constant arguments; no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let mut sock = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // An unconnected netlink socket sends to the kernel.
    sock.write_all(msg)?;
    let mut reply = [0u8; 4096];
    // Bounded: the kernel answers every request carrying NLM_F_ACK, so this returns.
    loop {
        let n = sock.read(&mut reply)?;
        match parse_ack(&reply[..n]) {
            Some(Ok(())) => return Ok(()),
            Some(Err(errno)) => return Err(io::Error::from_raw_os_error(errno)),
            None if n == 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink socket closed without an answer",
                ))
            }
            None => continue,
        }
    }
}

/// The result in an `NLMSG_ERROR` reply (`Ok` for an acknowledgement), or `None` when the
/// datagram holds none.
fn parse_ack(mut data: &[u8]) -> Option<Result<(), i32>> {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            return None;
        }
        if kind == NLMSG_ERROR && len >= 20 {
            let err = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
            return Some(if err == 0 { Ok(()) } else { Err(-err) });
        }
        data = &data[(len + 3) & !3..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_layout() {
        let m = new_address_message(7, "198.18.1.1".parse().unwrap(), 9);
        // header 16 + ifaddrmsg 8 + two 8-byte attributes.
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 9);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 32, IFA_F_PERMANENT, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(u16::from_ne_bytes([m[24], m[25]]), 8);
        assert_eq!(u16::from_ne_bytes([m[26], m[27]]), IFA_LOCAL);
        assert_eq!(&m[28..32], &[198, 18, 1, 1]);
        // Its removal: the same body under another type, without create flags.
        let d = address_message(
            RTM_DELADDR,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            "198.18.1.1".parse().unwrap(),
            32,
            9,
        );
        assert_eq!(u16::from_ne_bytes([d[4], d[5]]), RTM_DELADDR);
        assert_eq!(u16::from_ne_bytes([d[6], d[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&d[16..], &m[16..]);

        let m = new_address_message(7, "2001:db8:1::1".parse().unwrap(), 1);
        // header 16 + ifaddrmsg 8 + two 20-byte addresses + 8-byte flags.
        assert_eq!(m.len(), 72);
        assert_eq!(m[17], 128);
        assert_eq!(u16::from_ne_bytes([m[66], m[67]]), IFA_FLAGS);
        assert_eq!(
            u32::from_ne_bytes(m[68..72].try_into().unwrap()) & IFA_F_NODAD,
            IFA_F_NODAD
        );

        // A link-local address: the /64 its link's route comes from.
        let m = address_message(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            7,
            "fe80::1".parse().unwrap(),
            LINK_LOCAL_PREFIX_LEN,
            1,
        );
        assert_eq!(m.len(), 72);
        assert_eq!(&m[16..18], &[libc::AF_INET6 as u8, 64]);
        assert_eq!(&m[28..30], &[0xfe, 0x80]);
    }

    #[test]
    fn route_message_layout() {
        let m = new_route_message(3, "0.0.0.0".parse().unwrap(), 0, 254, 2);
        // header 16 + rtmsg 12 + oif 8: no destination for the default route.
        assert_eq!(m.len(), 36);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWROUTE);
        assert_eq!(
            &m[16..24],
            &[
                libc::AF_INET as u8,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_STATIC,
                RT_SCOPE_LINK,
                RTN_UNICAST
            ]
        );
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), RTA_OIF);
        assert_eq!(u32::from_ne_bytes(m[32..36].try_into().unwrap()), 3);
        let m = new_route_message(3, "2001:db8::".parse().unwrap(), 32, 254, 2);
        assert_eq!(m.len(), 16 + 12 + 20 + 8);
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), RTA_DST);
        // Another table: its number in RTA_TABLE, the compatibility value in the header.
        let m = new_route_message(3, "0.0.0.0".parse().unwrap(), 0, 21337, 2);
        assert_eq!(m.len(), 44);
        assert_eq!(m[20], RT_TABLE_COMPAT);
        assert_eq!(u16::from_ne_bytes([m[38], m[39]]), RTA_TABLE);
        assert_eq!(u32::from_ne_bytes(m[40..44].try_into().unwrap()), 21337);
    }

    #[test]
    fn rule_message_layout() {
        let rule = RouteRule {
            ipv6: true,
            priority: 100,
            table: 21337,
            iif: Some("lo".into()),
            ip_proto: Some(6),
            dports: Some((30000, 32767)),
        };
        assert_eq!(
            rule.to_string(),
            "-6 pref 100 iif lo ipproto 6 dport 30000-32767 lookup 21337"
        );
        let m = rule_message(RTM_NEWRULE, &rule, 1);
        // header 16 + fib_rule_hdr 12 + priority 8 + table 8 + iif 8 + proto 8 + ports 8.
        assert_eq!(m.len(), 68);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWRULE);
        assert_eq!(
            &m[16..24],
            &[
                libc::AF_INET6 as u8,
                0,
                0,
                0,
                RT_TABLE_COMPAT,
                0,
                0,
                FR_ACT_TO_TBL
            ]
        );
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), FRA_PRIORITY);
        assert_eq!(u32::from_ne_bytes(m[32..36].try_into().unwrap()), 100);
        assert_eq!(u16::from_ne_bytes([m[38], m[39]]), FRA_TABLE);
        assert_eq!(u16::from_ne_bytes([m[44], m[45]]), 7, "lo and its NUL");
        assert_eq!(u16::from_ne_bytes([m[46], m[47]]), FRA_IIFNAME);
        assert_eq!(&m[48..51], b"lo\0");
        assert_eq!(u16::from_ne_bytes([m[54], m[55]]), FRA_IP_PROTO);
        assert_eq!(m[56], 6);
        assert_eq!(u16::from_ne_bytes([m[62], m[63]]), FRA_DPORT_RANGE);
        assert_eq!(u16::from_ne_bytes([m[64], m[65]]), 30000);
        assert_eq!(u16::from_ne_bytes([m[66], m[67]]), 32767);
        // The local table's rule, to delete: no match fields, the table in the header.
        let local = RouteRule {
            ipv6: false,
            priority: 0,
            table: RT_TABLE_LOCAL,
            iif: None,
            ip_proto: None,
            dports: None,
        };
        let d = rule_message(RTM_DELRULE, &local, 1);
        assert_eq!(d.len(), 44);
        assert_eq!(u16::from_ne_bytes([d[6], d[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(
            d[16..24],
            [libc::AF_INET as u8, 0, 0, 0, 255, 0, 0, FR_ACT_TO_TBL]
        );
    }

    #[test]
    fn acks_and_errors_parse() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some(Ok(())));
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some(Err(libc::EEXIST)));
        assert_eq!(parse_ack(&ack[..10]), None);
        ack[0..4].copy_from_slice(&400u32.to_ne_bytes());
        assert_eq!(parse_ack(&ack), None);
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "a-name-far-too-long", "a/b"] {
            assert!(matches!(Tun::create(bad), Err(IoError::BadArguments(_))));
        }
    }
}
