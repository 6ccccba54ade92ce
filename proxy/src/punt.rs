//! The punt path to the host stack: a TUN device in the router's namespace that carries what
//! the dataplane punts to the kernel and what the kernel sends back into the graph.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::Context as _;
use switchyard_dataplane::graph::{Graph, Packet, VECTOR_SIZE};
use switchyard_dataplane::nodes::host::{self, HostFamily};
use switchyard_dataplane::tables::Tables;
use switchyard_dataplane::PacketBuffer;
use switchyard_io::tun::Tun;
use switchyard_io::Driver;

/// What went through the punt path, for the exit report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PuntCounters {
    /// Punted packets written to the TUN device.
    pub to_host: u64,
    /// Punted packets the device did not take (queue full, error).
    pub to_host_dropped: u64,
    /// Packets read from the device and injected into the graph.
    pub from_host: u64,
    /// Packets read from the device and dropped: malformed, multicast, link-local.
    pub from_host_dropped: u64,
    /// Reads skipped because the driver's pool had no buffer.
    pub no_buffer: u64,
    /// Failed reads.
    pub read_errors: u64,
}

/// The TUN device and where its packets enter the graph.
pub struct PuntPath<B> {
    tun: Tun,
    ip4_entry: usize,
    ip6_entry: usize,
    /// A buffer kept for the next read, so that polling an idle device costs no allocation.
    spare: Option<B>,
    pub counters: PuntCounters,
}

impl<B: PacketBuffer> PuntPath<B> {
    /// Makes the TUN device `name` in this namespace, gives it the router's addresses as host
    /// addresses and routes everything else out of it.
    pub fn new(name: &str, tables: &Tables, graph: &Graph<B>) -> anyhow::Result<Self> {
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
        tracing::info!(
            tun = name,
            mtu,
            addresses = v4.len() + v6.len(),
            "punt path to the host stack ready"
        );
        Ok(PuntPath {
            tun,
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

    /// The device's descriptor, to wait on.
    pub fn fd(&self) -> RawFd {
        self.tun.as_raw_fd()
    }

    /// Reads at most a vector of packets from the host and injects them into the graph;
    /// returns how many were read.
    pub fn receive<D: Driver<Buffer = B>>(
        &mut self,
        driver: &mut D,
        graph: &mut Graph<B>,
    ) -> usize {
        let mut read = 0;
        while read < VECTOR_SIZE {
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
            match self.tun.read_into(buf.data_mut()) {
                Ok(Some(len)) => {
                    read += 1;
                    buf.truncate(len);
                    match host::from_host(&mut buf) {
                        Ok((family, meta)) => {
                            let entry = match family {
                                HostFamily::Ipv4 => self.ip4_entry,
                                HostFamily::Ipv6 => self.ip6_entry,
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
                    self.spare = Some(buf);
                    break;
                }
                Err(e) => {
                    self.counters.read_errors += 1;
                    if self.counters.read_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = self.counters.read_errors, "TUN read failed");
                    }
                    buf.truncate(0);
                    self.spare = Some(buf);
                    break;
                }
            }
        }
        read
    }

    /// Writes the graph's punted packets to the host, handing their buffers to `dropped`.
    pub fn send(&mut self, punted: &mut Vec<Packet<B>>, dropped: &mut Vec<B>) {
        for p in punted.drain(..) {
            match self.tun.write(p.buf.data()) {
                Ok(()) => self.counters.to_host += 1,
                Err(_) => self.counters.to_host_dropped += 1,
            }
            dropped.push(p.buf);
        }
    }

    /// Writes packets another worker punted (as bytes) to the host.
    pub fn send_bytes(&mut self, punted: &mut Vec<Vec<u8>>) {
        for bytes in punted.drain(..) {
            match self.tun.write(&bytes) {
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

    /// The device's name.
    pub fn name(&self) -> &str {
        self.tun.name()
    }

    /// The device's interface index (the IKE daemon puts the virtual IPs it gets there).
    pub fn index(&self) -> u32 {
        self.tun.index()
    }
}
