//! The punt path to the host stack: a TUN device in the router's namespace that carries what
//! the dataplane punts to the kernel and what the kernel sends back into the graph.
//!
//! IPv6 link-local traffic has a device per link besides: `NAME-i` for interface `i` (a port
//! or a VLAN subinterface) with IPv6, holding the interface's link-local address. A
//! link-local address names a host on one link only (RFC 4291 2.5.6), and the kernel tells
//! links apart by device (the scope of `fe80::1%NAME-1`), so a packet to or from one goes to
//! the host through its link's device, and what the host sends out of that device to a
//! link-local address leaves by that interface and no other. Host services then work on the
//! ports' link-local addresses (a BGP session with a neighbor's fe80:: address), as on the
//! global ones, which stay on the main device.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::Context as _;
use switchyard_dataplane::graph::{Graph, Packet, VECTOR_SIZE};
use switchyard_dataplane::nodes::host::{self, HostFamily};
use switchyard_dataplane::tables::{Interface, Tables};
use switchyard_dataplane::PacketBuffer;
use switchyard_io::tun::{ReadyFds, RouteRule, Tun, RT_TABLE_LOCAL};
use switchyard_io::{Driver, IoError};

/// What went through the punt path, for the exit report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PuntCounters {
    /// Punted packets written to the TUN device.
    pub to_host: u64,
    /// Punted packets the device did not take (queue full, error).
    pub to_host_dropped: u64,
    /// Packets read from the device and injected into the graph.
    pub from_host: u64,
    /// Packets read from the devices and dropped: malformed, multicast, link-local from the
    /// main device or with a link-local source to a destination beyond the link.
    pub from_host_dropped: u64,
    /// Reads skipped because the driver's pool had no buffer.
    pub no_buffer: u64,
    /// Failed reads.
    pub read_errors: u64,
}

/// The device of one interface's link, for the host's IPv6 link-local traffic on it.
struct LinkDevice {
    tun: Tun,
    /// The interface (port or VLAN subinterface) the device stands for.
    ifc: u16,
}

/// The TUN devices and where their packets enter the graph.
pub struct PuntPath<B> {
    /// Held for its undoing on drop (before the device's, though either order works).
    _node_port_rules: Option<HostNodePortRules>,
    /// The main device: the router's addresses, default routes, everything but link-local.
    tun: Tun,
    /// The links' devices, one per interface with IPv6.
    links: Vec<LinkDevice>,
    /// For each interface, its device's index in `links`, if it has one.
    link_of: Vec<Option<usize>>,
    /// Every device's descriptor, the main one first, to wait on.
    fds: Vec<RawFd>,
    /// The same descriptors for one `poll`, when there are links' devices: one call finds
    /// which have packets, so that polling idle devices costs one system call a turn, as
    /// reading the main device alone did.
    ready: ReadyFds,
    ip4_entry: usize,
    ip6_entry: usize,
    /// A buffer kept for the next read, so that polling an idle device costs no allocation.
    spare: Option<B>,
    pub counters: PuntCounters,
}

impl<B: PacketBuffer> PuntPath<B> {
    /// Makes the TUN device `name` in this namespace, gives it the router's addresses as host
    /// addresses and routes everything else out of it; and the device `name-i` of each
    /// interface `i` with IPv6, with the interface's link-local address
    /// ([`PuntPath::link_device`]). With `node_ports` (the agent's NodePort range), also the
    /// host's own TCP, UDP and SCTP connections to those ports on its own addresses
    /// ([`HostNodePortRules`]).
    pub fn new(
        name: &str,
        tables: &Tables,
        graph: &Graph<B>,
        node_ports: Option<(u16, u16)>,
    ) -> anyhow::Result<Self> {
        let tun = Tun::create(name).with_context(|| format!("creating TUN device {name}"))?;
        let v4: Vec<Ipv4Addr> = tables
            .interfaces
            .iter()
            .flat_map(|i| i.ipv4.iter().map(|n| n.addr()))
            .collect();
        let v6: Vec<Ipv6Addr> = tables
            .interfaces
            .iter()
            .flat_map(|i| i.ipv6.iter().map(|n| n.addr()))
            .collect();
        // The largest port MTU: packets too big for a smaller link draw an ICMP error from the
        // dataplane, which is punted back, so the host's path MTU discovery does the rest.
        let mtu = tables
            .interfaces
            .iter()
            .map(|i| i.mtu)
            .max()
            .unwrap_or(1500);
        tun.set_mtu(mtu)
            .with_context(|| format!("setting the MTU of {name}"))?;
        if !v6.is_empty() {
            if let Err(e) = tun.no_ipv6_link_local() {
                tracing::warn!(error = %e, "the TUN device may get a link-local address");
            }
            tun.enable_ipv6()
                .with_context(|| format!("enabling IPv6 on {name}"))?;
        }
        tun.set_up()
            .with_context(|| format!("bringing {name} up"))?;
        for a in v4
            .iter()
            .map(|&a| IpAddr::V4(a))
            .chain(v6.iter().map(|&a| IpAddr::V6(a)))
        {
            tun.add_host_address(a)
                .with_context(|| format!("adding {a} to {name}"))?;
        }
        let defaults = [
            (!v4.is_empty()).then_some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            (!v6.is_empty()).then_some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        ];
        for d in defaults.into_iter().flatten() {
            tun.add_route(d, 0).with_context(|| {
                format!(
                    "adding the default route via {name} (does this namespace have one \
                     already? the router needs a namespace of its own for --punt-tun)"
                )
            })?;
        }
        let node_port_rules = match node_ports {
            Some(ports) => Some(HostNodePortRules::install(
                &tun,
                !v4.is_empty(),
                !v6.is_empty(),
                ports,
            )?),
            None => None,
        };
        let mut links = Vec::new();
        let mut link_of = vec![None; tables.interfaces.len()];
        for (i, ifc) in tables.interfaces.iter().enumerate() {
            if ifc.ipv6.is_empty() {
                continue;
            }
            let Ok(index) = u16::try_from(i) else { break };
            match Self::link_device(name, index, ifc) {
                Ok(tun) => {
                    link_of[i] = Some(links.len());
                    links.push(LinkDevice { tun, ifc: index });
                }
                // The rest of the punt path works without it.
                Err(e) => tracing::warn!(
                    interface = %ifc.name,
                    error = %format!("{e:#}"),
                    "no link-local addresses for the host on this interface"
                ),
            }
        }
        let fds: Vec<RawFd> = std::iter::once(tun.as_raw_fd())
            .chain(links.iter().map(|l| l.tun.as_raw_fd()))
            .collect();
        let ready = ReadyFds::new(if links.is_empty() { &[] } else { &fds });
        tracing::info!(
            tun = name,
            mtu,
            addresses = v4.len() + v6.len(),
            link_devices = links.len(),
            "punt path to the host stack ready"
        );
        Ok(PuntPath {
            _node_port_rules: node_port_rules,
            tun,
            links,
            link_of,
            fds,
            ready,
            ip4_entry: graph
                .node_index(host::IP4_ENTRY)
                .context("the graph has no ip4-lookup")?,
            ip6_entry: graph
                .node_index(host::IP6_ENTRY)
                .context("the graph has no ip6-lookup")?,
            spare: None,
            counters: PuntCounters::default(),
        })
    }

    /// Makes the device `name-i` of interface `i` (`ifc`): its MTU, IPv6 with the interface's
    /// link-local address and no other (so the kernel routes fe80::/64 scoped to the device
    /// out of it, and nothing else: the main device keeps the default routes).
    fn link_device(name: &str, i: u16, ifc: &Interface) -> anyhow::Result<Tun> {
        let link_name = format!("{name}-{i}");
        let tun = Tun::create(&link_name)
            .with_context(|| format!("creating TUN device {link_name} for {}", ifc.name))?;
        tun.set_mtu(ifc.mtu)
            .with_context(|| format!("setting the MTU of {link_name}"))?;
        // Without this the kernel would make up a link-local address of its own for it.
        tun.no_ipv6_link_local()
            .with_context(|| format!("keeping the kernel's link-local address off {link_name}"))?;
        tun.enable_ipv6()
            .with_context(|| format!("enabling IPv6 on {link_name}"))?;
        tun.set_up()
            .with_context(|| format!("bringing {link_name} up"))?;
        tun.add_link_local_address(ifc.link_local)
            .with_context(|| format!("adding {} to {link_name}", ifc.link_local))?;
        tracing::info!(
            tun = %link_name,
            interface = %ifc.name,
            address = %ifc.link_local,
            "link-local punt device ready"
        );
        Ok(tun)
    }

    /// Every device's descriptor (the main one first), to wait on.
    pub fn fds(&self) -> &[RawFd] {
        &self.fds
    }

    /// Reads at most a vector of packets from the host (the main device first, then the
    /// links') and injects them into the graph; returns how many were read. With links'
    /// devices, one `poll` finds the devices with packets waiting, and only those are read.
    pub fn receive<D: Driver<Buffer = B>>(
        &mut self,
        driver: &mut D,
        graph: &mut Graph<B>,
    ) -> usize {
        let PuntPath {
            tun,
            links,
            ready,
            ip4_entry,
            ip6_entry,
            spare,
            counters,
            ..
        } = self;
        let mut reader = Reader {
            entries: (*ip4_entry, *ip6_entry),
            spare,
            counters,
        };
        if links.is_empty() {
            return reader.read(tun, None, VECTOR_SIZE, driver, graph);
        }
        if !ready.poll() {
            return 0;
        }
        let mut read = 0;
        if ready.is_ready(0) {
            read += reader.read(tun, None, VECTOR_SIZE, driver, graph);
        }
        for (i, link) in links.iter_mut().enumerate() {
            if read >= VECTOR_SIZE {
                break;
            }
            if ready.is_ready(i + 1) {
                read += reader.read(
                    &mut link.tun,
                    Some(link.ifc),
                    VECTOR_SIZE - read,
                    driver,
                    graph,
                );
            }
        }
        read
    }

    /// The device a punted packet that came in on interface `rx_port` goes to: its link's
    /// for link-scoped IPv6 ([`host::link_scoped`]), else the main one.
    fn device_for(&mut self, rx_port: u16, ip: &[u8]) -> &mut Tun {
        let link = self.link_of.get(usize::from(rx_port)).copied().flatten();
        match link {
            Some(i) if host::link_scoped(ip) => &mut self.links[i].tun,
            _ => &mut self.tun,
        }
    }

    /// Writes the graph's punted packets to the host, handing their buffers to `dropped`.
    pub fn send(&mut self, punted: &mut Vec<Packet<B>>, dropped: &mut Vec<B>) {
        for p in punted.drain(..) {
            let written = self
                .device_for(p.meta.rx_port, p.buf.data())
                .write(p.buf.data());
            match written {
                Ok(()) => self.counters.to_host += 1,
                Err(_) => self.counters.to_host_dropped += 1,
            }
            dropped.push(p.buf);
        }
    }

    /// Writes packets another worker punted (as the interface each came in on and its bytes)
    /// to the host.
    pub fn send_bytes(&mut self, punted: &mut Vec<(u16, Vec<u8>)>) {
        for (rx_port, bytes) in punted.drain(..) {
            match self.device_for(rx_port, &bytes).write(&bytes) {
                Ok(()) => self.counters.to_host += 1,
                Err(_) => self.counters.to_host_dropped += 1,
            }
        }
    }

    /// Gives the spare buffer back before the driver goes away.
    pub fn release(&mut self, dropped: &mut Vec<B>) {
        if let Some(b) = self.spare.take() {
            dropped.push(b);
        }
    }

    /// The main device's name.
    pub fn name(&self) -> &str {
        self.tun.name()
    }

    /// The main device's interface index (the IKE daemon puts the virtual IPs it gets there).
    pub fn index(&self) -> u32 {
        self.tun.index()
    }
}

/// What reading from the devices shares: where packets enter the graph, the spare buffer
/// and the counters.
struct Reader<'a, B> {
    /// The entry nodes of IPv4 and IPv6 packets.
    entries: (usize, usize),
    spare: &'a mut Option<B>,
    counters: &'a mut PuntCounters,
}

impl<B: PacketBuffer> Reader<'_, B> {
    /// Reads at most `budget` packets from `tun`, the device of interface `link`'s link or
    /// (`None`) the main one, and injects them into the graph; returns how many were read.
    fn read<D: Driver<Buffer = B>>(
        &mut self,
        tun: &mut Tun,
        link: Option<u16>,
        budget: usize,
        driver: &mut D,
        graph: &mut Graph<B>,
    ) -> usize {
        let mut read = 0;
        while read < budget {
            let Some(mut buf) = self.spare.take().or_else(|| driver.alloc()) else {
                self.counters.no_buffer += 1;
                break;
            };
            buf.truncate(0);
            let room = buf.tailroom();
            if !buf.push_back(room) {
                self.counters.no_buffer += 1;
                graph.dropped.push(buf);
                break;
            }
            match tun.read_into(buf.data_mut()) {
                Ok(Some(len)) => {
                    read += 1;
                    buf.truncate(len);
                    let checked = match link {
                        None => host::from_host(&mut buf),
                        Some(ifc) => host::from_host_on_link(&mut buf, ifc),
                    };
                    match checked {
                        Ok((family, meta)) => {
                            let entry = match family {
                                HostFamily::Ipv4 => self.entries.0,
                                HostFamily::Ipv6 => self.entries.1,
                            };
                            self.counters.from_host += 1;
                            graph.inject(entry, Packet { buf, meta });
                        }
                        Err(_) => {
                            self.counters.from_host_dropped += 1;
                            graph.dropped.push(buf);
                        }
                    }
                }
                Ok(None) => {
                    buf.truncate(0);
                    *self.spare = Some(buf);
                    break;
                }
                Err(e) => {
                    self.counters.read_errors += 1;
                    if self.counters.read_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = self.counters.read_errors, "TUN read failed");
                    }
                    buf.truncate(0);
                    *self.spare = Some(buf);
                    break;
                }
            }
        }
        read
    }
}

/// The routing table of the host's NodePort connections: a default route into the TUN device.
pub const NODE_PORT_TABLE: u32 = 0x5359;
/// The preference of the rules that send the host's NodePort connections to
/// [`NODE_PORT_TABLE`]; the local table's rule moves from 0 to just after them.
pub const NODE_PORT_PREF: u32 = 100;
/// Where the local table's rule moves to, while the NodePort rules are in place.
pub const LOCAL_PREF: u32 = 101;

/// Policy routing that sends the host's own connections to a NodePort on one of its own
/// addresses into the dataplane, as kube-proxy's OUTPUT rules (`fib daddr type local` and
/// the NodePort set; `KUBE-NODEPORTS` with `--dst-type LOCAL`) catch them. Left alone, the
/// kernel delivers a packet to its own address over loopback, so the dataplane never sees
/// it and nothing answers on the NodePort.
///
/// For each family the device has addresses in, rules (`ip rule`) of preference
/// [`NODE_PORT_PREF`] send TCP, UDP and SCTP from the host itself (`iif lo`; packets that
/// arrive from the device are still delivered locally) to ports in the NodePort range into
/// [`NODE_PORT_TABLE`], a default route out of the device; the local table's rule moves
/// from preference 0 to [`LOCAL_PREF`], as a rule cannot come before 0. IPv4 also gets
/// `accept_local` on the device: the service's answer arrives from it with the node's own
/// address as source. Rules outlive the process: a previous run's are replaced at start,
/// and dropping this puts the namespace back as it was.
pub struct HostNodePortRules {
    families: Vec<bool>,
}

/// The transport protocols Services have ports in.
const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

impl HostNodePortRules {
    fn install(tun: &Tun, ipv4: bool, ipv6: bool, ports: (u16, u16)) -> anyhow::Result<Self> {
        let families: Vec<bool> = [(ipv4, false), (ipv6, true)]
            .into_iter()
            .filter_map(|(present, v6)| present.then_some(v6))
            .collect();
        // Made first so that a failure part way undoes what was done.
        let rules = HostNodePortRules { families };
        if ipv4 {
            tun.accept_local_sources()
                .context("letting the kernel take the node's own addresses from the TUN device")?;
        }
        for &v6 in &rules.families {
            let any = if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            tun.add_route_in_table(any, 0, NODE_PORT_TABLE)
                .context("routing the host's NodePort connections into the TUN device")?;
            // The local table's rule at LOCAL_PREF before it goes from 0, so that local
            // delivery never stops; either may be left from a run that did not finish.
            tolerate(
                local_rule(v6, LOCAL_PREF).add(),
                std::io::ErrorKind::AlreadyExists,
            )?;
            tolerate(local_rule(v6, 0).delete(), std::io::ErrorKind::NotFound)?;
            delete_all(&any_node_port_rule(v6))?;
            for proto in PORT_PROTOCOLS {
                let rule = RouteRule {
                    iif: Some("lo".into()),
                    ip_proto: Some(proto),
                    dports: Some(ports),
                    ..any_node_port_rule(v6)
                };
                rule.add()
                    .context("routing the host's NodePort connections")?;
            }
        }
        tracing::info!(
            ports = %format!("{}-{}", ports.0, ports.1),
            table = NODE_PORT_TABLE,
            "the host's connections to NodePorts on its own addresses go through the dataplane"
        );
        Ok(rules)
    }
}

impl Drop for HostNodePortRules {
    fn drop(&mut self) {
        for &v6 in &self.families {
            let undo = delete_all(&any_node_port_rule(v6))
                .and_then(|()| tolerate(local_rule(v6, 0).add(), std::io::ErrorKind::AlreadyExists))
                .and_then(|()| delete_all(&local_rule(v6, LOCAL_PREF)));
            if let Err(e) = undo {
                tracing::warn!(error = %format!("{e:#}"), "undoing the NodePort routing rules");
            }
        }
    }
}

/// The rule that looks up the local table, at preference `priority`.
fn local_rule(ipv6: bool, priority: u32) -> RouteRule {
    RouteRule {
        ipv6,
        priority,
        table: RT_TABLE_LOCAL,
        iif: None,
        ip_proto: None,
        dports: None,
    }
}

/// Any rule of ours (to delete: unset fields match anything).
fn any_node_port_rule(ipv6: bool) -> RouteRule {
    RouteRule {
        ipv6,
        priority: NODE_PORT_PREF,
        table: NODE_PORT_TABLE,
        iif: None,
        ip_proto: None,
        dports: None,
    }
}

/// Deletes every rule matching `rule`.
fn delete_all(rule: &RouteRule) -> anyhow::Result<()> {
    // Bounded: each round deletes one, and nothing else adds ours.
    for _ in 0..64 {
        if let Err(e) = rule.delete() {
            return tolerate(Err(e), std::io::ErrorKind::NotFound);
        }
    }
    anyhow::bail!("rules {rule} keep coming back")
}

/// `result`, with the OS error of kind `ok` taken as success.
fn tolerate(result: Result<(), IoError>, ok: std::io::ErrorKind) -> anyhow::Result<()> {
    match result {
        Err(IoError::Os { source, .. }) if source.kind() == ok => Ok(()),
        other => Ok(other?),
    }
}
