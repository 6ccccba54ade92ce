//! `switchyard router`: the dataplane as a plain router, configured from flags alone.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use switchyard_dataplane::async_crypto::AsyncCrypto;
use switchyard_dataplane::graph::{Graph, Meta, NodeCounters, Packet, VECTOR_SIZE};
use switchyard_dataplane::nodes::router_graph;
use switchyard_dataplane::router_adverts::{IrdpConfig, RaConfig};
use switchyard_dataplane::tables::{Interface, Tables, TablesHandle};
use switchyard_dataplane::worker::{LearnedNeighbor, SharedState, WorkerState};
use switchyard_dataplane::PacketBuffer;
use switchyard_io::cryptodev::{Cryptodev, CryptodevConfig};
use switchyard_io::dpdk::Mbuf;
use switchyard_io::{Driver, PortInfo};
use switchyard_ipsec::crypto::{CryptoBackend, SoftwareBackend};

use crate::cli::{self, CryptoChoice, Dataplane, RouterArgs};
use crate::punt::{PuntCounters, PuntPath};
use crate::state::{DataplaneSnapshot, Shared, CONNTRACK_SAMPLE};

/// How long an idle worker waits for packets before looking at the clock and flags again.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// How often the neighbor table is aged.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// What a caller running the dataplane (the agent) plugs into it.
#[derive(Default)]
pub struct Hooks {
    /// Called once the ports are open and the tables from the flags are built, with the
    /// handle the worker loads its tables from and those base tables. The control plane
    /// starts here and publishes through the handle from then on.
    pub on_ready: Option<OnReady>,
    /// Where the worker publishes a snapshot of its counters once a second.
    pub shared: Option<Arc<Shared>>,
    /// SD-EWAN resources from the Kubernetes API (`--sdewan-purpose`): the IPsec service
    /// runs, and follows them.
    pub ipsec_feed: Option<crate::ipsec::kube::Feed>,
    /// The NodePort range (the agent's `--service-node-port-range`): with `--punt-tun`, the
    /// host's own connections to these ports on its addresses are routed into the dataplane
    /// ([`crate::punt::HostNodePortRules`]).
    pub node_ports: Option<(u16, u16)>,
}

/// See [`Hooks::on_ready`].
pub type OnReady = Box<dyn FnOnce(&TablesHandle, &Tables) -> anyhow::Result<()>>;

/// Runs the router until a signal or the `--duration` ends it.
pub fn run(args: RouterArgs) -> anyhow::Result<()> {
    run_with(&args, Hooks::default())
}

/// Runs the dataplane configured by `args`, with the caller's `hooks`.
pub fn run_with(args: &RouterArgs, hooks: Hooks) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let workers = args.workers.max(1);
    if workers > 1 {
        let with = if args.dataplane == Dataplane::Pcap {
            Some("the pcap dataplane")
        } else if args.dataplane == Dataplane::Afxdp {
            // A second socket's libxdp program replaces the first's on the interface (seen
            // without a bpffs, where libxdp has no dispatcher): one socket per interface.
            Some("the afxdp dataplane")
        } else {
            None
        };
        if let Some(with) = with {
            bail!("--workers {workers}: more than one worker does not work with {with} yet");
        }
    }
    let eal = match (args.dataplane, &args.crypto) {
        (Dataplane::Dpdk, _) | (_, CryptoChoice::Cryptodev(_)) => Some(start_eal(args)?),
        _ => None,
    };
    let crypto = Crypto::from_args(args, eal.as_ref())?;
    match args.dataplane {
        Dataplane::Afpacket => {
            use switchyard_io::afpacket::{AfPacketConfig, AfPacketDriver};
            // Fanout group ids are per network namespace: one range per process.
            let config = AfPacketConfig {
                fanout: (workers > 1).then(|| (std::process::id() as u16).wrapping_mul(64)),
                ..AfPacketConfig::default()
            };
            let drivers = (0..workers)
                .map(|_| AfPacketDriver::with_config(&args.interfaces, &config))
                .collect::<Result<Vec<_>, _>>()
                .context("starting the AF_PACKET dataplane")?;
            run_workers(drivers, args, hooks, crypto, &stop, None, |_| false)
        }
        Dataplane::Afxdp => {
            let driver = switchyard_io::afxdp::AfXdpDriver::new(&args.interfaces, 0)
                .context("starting the AF_XDP dataplane")?;
            let drivers = vec![driver];
            run_workers(drivers, args, hooks, crypto, &stop, None, |_| false)
        }
        Dataplane::Dpdk => {
            let eal = eal.as_ref().context("the EAL is started for dpdk")?;
            let driver = switchyard_io::dpdk::DpdkDriver::new(
                eal,
                &args.interfaces,
                &switchyard_io::dpdk::DpdkConfig {
                    queues: workers,
                    ..switchyard_io::dpdk::DpdkConfig::default()
                },
            )
            .context("starting the DPDK dataplane")?;
            tracing::info!(
                pool = driver.pool_name(),
                transparent_huge_pages = driver.pool_on_huge_pages(),
                "mbuf pool ready"
            );
            run_workers(
                driver.split(),
                args,
                hooks,
                crypto,
                &stop,
                Some(eal),
                |_| false,
            )
        }
        Dataplane::Pcap => {
            let ports = args
                .interfaces
                .iter()
                .enumerate()
                .map(|(i, spec)| pcap_port(i, spec))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let driver =
                switchyard_io::pcap::PcapDriver::new(ports).context("opening the pcap files")?;
            // A replay ends when every input file has been read.
            run_workers(vec![driver], args, hooks, crypto, &stop, None, |d| {
                (0..d.ports().len() as u16).all(|p| d.rx_done(p))
            })
        }
    }
}

/// Runs one worker per driver until `stop`: the first on this thread, with the tables from
/// the flags and everything `hooks` plugs in, the others on threads of their own, loading the
/// same tables and handing each other the neighbors they learn. Prints the report when all
/// have stopped.
fn run_workers<D>(
    drivers: Vec<D>,
    args: &RouterArgs,
    hooks: Hooks,
    crypto: Crypto,
    stop: &AtomicBool,
    eal: Option<&switchyard_io::dpdk::Eal>,
    finished: impl Fn(&D) -> bool,
) -> anyhow::Result<()>
where
    D: Driver + Send,
    D::Buffer: 'static,
{
    let count = u16::try_from(drivers.len()).context("too many workers")?;
    let mut drivers = drivers.into_iter();
    let first = drivers.next().context("no driver to run")?;
    let mut main = Router::new(first, args, hooks, crypto)?;
    if count == 1 {
        let report = main.run_until(args, stop, finished)?;
        return report.print(args);
    }
    let exchange = Arc::new(Exchange::new(usize::from(count), main.punt.is_some()));
    main.join(0, count, &exchange);
    let tables = main.tables.clone();
    std::thread::scope(|scope| {
        let mut others = Vec::new();
        for (i, driver) in drivers.enumerate() {
            let index = i as u16 + 1;
            let (tables, exchange) = (tables.clone(), Arc::clone(&exchange));
            let crypto = main.crypto.clone();
            let ipsec = main.ipsec.is_some();
            let spawned = std::thread::Builder::new()
                .name(format!("worker{index}"))
                .spawn_scoped(scope, move || {
                    // The thread inherits the main thread's CPUs, which the EAL narrows to its
                    // main lcore: run on the EAL's next lcore, or anywhere.
                    let cpu = eal.and_then(|e| e.worker_cpu(usize::from(index)));
                    if let Err(e) = switchyard_io::pin_thread(cpu) {
                        tracing::warn!(worker = index, error = %e, "CPU affinity not set");
                    }
                    if let Some(eal) = eal {
                        // Without an lcore id the thread works, only without a mempool cache.
                        if let Err(e) = eal.register_thread() {
                            tracing::warn!(worker = index, error = %e, "no DPDK lcore id");
                        }
                    }
                    let mut worker = Router::worker(driver, args, tables, crypto, ipsec)?;
                    worker.join(index, count, &exchange);
                    worker.run_until(args, stop, |_| false)
                });
            match spawned {
                Ok(handle) => others.push(handle),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e).context("starting a worker thread");
                }
            }
        }
        let result = main.run_until(args, stop, finished);
        // However the first worker ended, the others end with it.
        stop.store(true, Ordering::Relaxed);
        let mut report = result?;
        for handle in others {
            let other = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
            report.merge(other);
        }
        report.print(args)
    })
}

/// Inboxes, one per worker, for what one worker sends another.
struct Inboxes<T> {
    inboxes: Vec<Mutex<Vec<T>>>,
    /// Set when a worker's inbox has something: one relaxed load per turn otherwise.
    waiting: Vec<AtomicBool>,
}

impl<T> Inboxes<T> {
    fn new(workers: usize) -> Self {
        Inboxes {
            inboxes: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            waiting: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Puts `items` in worker `to`'s inbox.
    fn send(&self, to: usize, items: impl IntoIterator<Item = T>) {
        let Some(inbox) = self.inboxes.get(to) else {
            return;
        };
        inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(items);
        self.waiting[to].store(true, Ordering::Release);
    }

    /// What the others sent worker `to` since it last looked, into `out`.
    fn receive(&self, to: usize, out: &mut Vec<T>) {
        if !self.waiting[to].swap(false, Ordering::Acquire) {
            return;
        }
        out.append(
            &mut self.inboxes[to]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }
}

/// A packet on its way to the worker that tracks its connection: its bytes (each driver's
/// buffers stay with the driver) and what the graph knew of it.
struct Handed {
    bytes: Vec<u8>,
    meta: Meta,
    /// The node that handed it off, where the other worker (same graph) takes it up.
    node: usize,
}

/// What the workers of one dataplane exchange.
struct Exchange {
    /// Neighbors one learned, for the others
    /// ([`switchyard_dataplane::worker::NeighborTable::shared`]).
    neighbors: Inboxes<LearnedNeighbor>,
    /// IPv6 path MTUs one learned from Packet Too Big messages, for the others
    /// ([`switchyard_dataplane::path_mtu::PathMtuCache::shared`]).
    path_mtus: Inboxes<(Ipv6Addr, u16)>,
    /// Packets of connections another worker tracks ([`switchyard_dataplane::flows`]).
    packets: Inboxes<Handed>,
    /// Connection tuples and sessionAffinity choices.
    state: SharedState,
    /// Each further worker's latest counters, for the first to publish as one.
    snapshots: Mutex<Vec<Option<DataplaneSnapshot>>>,
    /// Packets for the host stack, which the first worker's TUN devices reach (`--punt-tun`;
    /// none without it), with the interface each came in on (which picks the device of a
    /// link-scoped one, see [`PuntPath::send_bytes`]).
    punted: Option<Inboxes<(u16, Vec<u8>)>>,
}

impl Exchange {
    fn new(workers: usize, punt: bool) -> Self {
        Exchange {
            punted: punt.then(|| Inboxes::new(1)),
            neighbors: Inboxes::new(workers),
            path_mtus: Inboxes::new(workers),
            packets: Inboxes::new(workers),
            state: SharedState::default(),
            snapshots: Mutex::new((0..workers).map(|_| None).collect()),
        }
    }
}

/// Starts DPDK's EAL with the --eal arguments.
fn start_eal(args: &RouterArgs) -> anyhow::Result<switchyard_io::dpdk::Eal> {
    let eal_args: Vec<String> = args
        .eal
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    switchyard_io::dpdk::Eal::init(&eal_args).context("starting DPDK's EAL")
}

/// The ESP crypto backend --crypto asks for, and the cryptodev behind it if there is one
/// (for its counters in the exit report).
#[derive(Clone)]
struct Crypto {
    backend: Arc<dyn CryptoBackend>,
    device: Option<Arc<Cryptodev>>,
}

impl Crypto {
    fn from_args(
        args: &RouterArgs,
        eal: Option<&switchyard_io::dpdk::Eal>,
    ) -> anyhow::Result<Self> {
        let CryptoChoice::Cryptodev(device) = &args.crypto else {
            return Ok(Self {
                backend: Arc::new(SoftwareBackend::new()),
                device: None,
            });
        };
        let eal = eal.context("the EAL is started for a cryptodev")?;
        let dev = Cryptodev::start(eal, &CryptodevConfig::new(device.as_str()))
            .with_context(|| format!("starting cryptodev {device}"))?;
        if args.ipsec.is_none() {
            tracing::warn!(
                device,
                "--crypto names a cryptodev but there is no --ipsec: unused"
            );
        }
        tracing::info!(
            device,
            driver = dev.driver_name(),
            queue_pairs = dev.queue_pairs(),
            "ESP crypto on a DPDK cryptodev"
        );
        let dev = Arc::new(dev);
        Ok(Self {
            backend: Arc::clone(&dev) as Arc<dyn CryptoBackend>,
            device: Some(dev),
        })
    }

    /// A line for the exit report.
    fn report(&self) -> Option<String> {
        let dev = self.device.as_ref()?;
        let s = dev.stats();
        Some(format!(
            "cryptodev {} ({}): {} operations, {} failed, {} in software, {} queue pairs stuck, \
             {} abandoned\n",
            dev.device_name(),
            dev.driver_name(),
            s.operations,
            s.failed,
            s.software_calls,
            s.stuck_queue_pairs,
            s.abandoned
        ))
    }

    /// The device as an asynchronous engine for packets in buffers of type `B`: there is one
    /// when the packets are DPDK mbufs (the DPDK driver), which the device can take as they
    /// are. With another driver the ESP nodes run the device's bursts synchronously.
    fn engine<B: 'static>(&self) -> Option<Arc<dyn AsyncCrypto<B>>> {
        let dev = self.device.as_ref()?;
        let engine: Box<dyn std::any::Any> =
            Box::new(Arc::clone(dev) as Arc<dyn AsyncCrypto<Mbuf>>);
        engine
            .downcast::<Arc<dyn AsyncCrypto<B>>>()
            .ok()
            .map(|e| *e)
    }
}

/// A pcap port from `IN.pcap:OUT.pcap` (either side may be empty), with a made-up MAC.
fn pcap_port(index: usize, spec: &str) -> anyhow::Result<switchyard_io::pcap::PcapPortConfig> {
    let (rx, tx) = spec.split_once(':').unwrap_or((spec, ""));
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    Ok(switchyard_io::pcap::PcapPortConfig {
        info: PortInfo {
            name: spec.to_string(),
            mac: [
                0x02,
                0,
                0,
                0,
                0,
                u8::try_from(index + 1).context("too many pcap ports")?,
            ],
            mtu: 1500,
        },
        rx: path(rx),
        tx: path(tx),
    })
}

/// The IPv6 minimum link MTU (RFC 8200 5).
const IPV6_MIN_MTU: u16 = 1280;

/// Builds the tables the flags describe for the driver's ports: the ports, then the VLAN
/// subinterfaces of `--vlan`, with their addresses, MTUs and routes.
pub fn tables_from_args(ports: &[PortInfo], args: &RouterArgs) -> anyhow::Result<Tables> {
    let vlans = args.vlan_subinterfaces()?;
    let names = args.interface_names()?;
    let mut interfaces: Vec<Interface> = ports
        .iter()
        .map(|p| Interface::new(p.name.clone(), p.mac, p.mtu))
        .collect();
    for m in &args.macs {
        let (port, mac) = cli::parse_port_mac(&names, m)?;
        let Some(ifc) = interfaces.get_mut(usize::from(port)) else {
            bail!("--mac {m:?}: a VLAN subinterface has its port's MAC; set the port's");
        };
        *ifc = Interface {
            mac,
            link_local: switchyard_dataplane::tables::link_local_from_mac(mac),
            ..ifc.clone()
        };
    }
    for v in &vlans {
        let parent = interfaces
            .get(usize::from(v.parent))
            .with_context(|| format!("--vlan {:?}: the driver has no such port", v.name))?;
        let sub = Interface::vlan_subinterface(v.name.clone(), parent, v.parent, v.vid);
        interfaces.push(sub);
    }
    for a in &args.addresses {
        let (port, net) = cli::parse_address(&names, a)?;
        let ifc = &mut interfaces[usize::from(port)];
        match net {
            IpNet::V4(n) => ifc.ipv4.push(n),
            IpNet::V6(n) => ifc.ipv6.push(n),
        }
    }
    let mut mtus = Vec::with_capacity(args.mtus.len());
    for m in &args.mtus {
        let (port, mtu) = cli::parse_mtu(&names, m)?;
        let ifc = &mut interfaces[usize::from(port)];
        // RFC 8200 5: every link IPv6 runs over carries 1280-byte packets; below that the
        // router's own packets and errors (up to 1280 bytes, RFC 4443 2.4(c)) could not leave.
        if let Some(v6) = ifc.ipv6.first().filter(|_| mtu < IPV6_MIN_MTU) {
            bail!(
                "--mtu {m:?}: below the IPv6 minimum of {IPV6_MIN_MTU} bytes (RFC 8200 5), and \
                 interface {} has the IPv6 address {v6}",
                ifc.name
            );
        }
        ifc.mtu = mtu;
        mtus.push((port, m));
    }
    // A subinterface's MTU: its port's unless --mtu set one, and never more (its frames are
    // the port's, tag aside, as a Linux VLAN device's).
    for i in ports.len()..interfaces.len() {
        let Some(parent) = interfaces[i].vlan.map(|v| usize::from(v.parent)) else {
            continue;
        };
        let parent_mtu = interfaces[parent].mtu;
        match mtus.iter().rev().find(|(p, _)| usize::from(*p) == i) {
            Some((_, m)) if interfaces[i].mtu > parent_mtu => bail!(
                "--mtu {m:?}: more than the MTU of port {} ({parent_mtu})",
                interfaces[parent].name
            ),
            Some(_) => {}
            None => {
                let ifc = &mut interfaces[i];
                if let Some(v6) = ifc.ipv6.first().filter(|_| parent_mtu < IPV6_MIN_MTU) {
                    bail!(
                        "VLAN subinterface {}: its port's MTU {parent_mtu} is below the IPv6 \
                         minimum of {IPV6_MIN_MTU} bytes (RFC 8200 5), and it has the IPv6 \
                         address {v6}",
                        ifc.name
                    );
                }
                ifc.mtu = parent_mtu;
            }
        }
    }
    let routes = args
        .routes
        .iter()
        .map(|r| cli::parse_route(&names, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tables::build(1, interfaces, &routes)?)
}

/// One worker: a driver, the graph and the state it keeps.
struct Router<D: Driver> {
    driver: D,
    graph: Graph<D::Buffer>,
    tables: TablesHandle,
    state: WorkerState,
    /// The TUN device to the host stack (`--punt-tun`).
    punt: Option<PuntPath<D::Buffer>>,
    /// Where snapshots go.
    shared: Option<Arc<Shared>>,
    /// The IKE daemon (`--ipsec`), wound down before the worker stops forwarding.
    ipsec: Option<crate::ipsec::IpsecService>,
    /// Where ESP crypto runs.
    crypto: Crypto,
    /// With several workers: this one's index and what they exchange.
    exchange: Option<(usize, Arc<Exchange>)>,
    /// Neighbors from the other workers, merged each turn.
    learned: Vec<LearnedNeighbor>,
    /// Packets from the other workers, taken in each turn.
    handed: Vec<Handed>,
    /// Packets handed to other workers, and those dropped for want of a buffer on arrival.
    handoff: (u64, u64),
}

impl<D: Driver> Router<D>
where
    D::Buffer: 'static,
{
    fn new(driver: D, args: &RouterArgs, mut hooks: Hooks, crypto: Crypto) -> anyhow::Result<Self> {
        let ports = driver.ports().to_vec();
        if ports.len() != args.interfaces.len() {
            bail!(
                "the driver opened {} ports for {} interfaces",
                ports.len(),
                args.interfaces.len()
            );
        }
        let mut tables = tables_from_args(&ports, args)?;
        tables.punt_to_host = args.punt_tun.is_some();
        tables.drop_source_routed = args.drop_source_routed;
        if args.ipv6_ra {
            let mut ra = RaConfig::new(args.ipv6_ra_interval, args.ipv6_ra_lifetime)
                .map_err(|e| anyhow::anyhow!("--ipv6-ra: {e}"))?;
            ra.link_mtu = args.ipv6_ra_mtu;
            tables.router_adverts = Some(ra);
        }
        if args.ipv4_rdisc {
            let mut rd = IrdpConfig::new(args.ipv4_rdisc_interval, args.ipv4_rdisc_lifetime)
                .map_err(|e| anyhow::anyhow!("--ipv4-rdisc: {e}"))?;
            rd.preference = args.ipv4_rdisc_preference;
            rd.broadcast = args.ipv4_rdisc_broadcast;
            tables.ipv4_router_discovery = Some(rd);
        }
        let mut state = WorkerState::default();
        let names = args.interface_names()?;
        for n in &args.neighbors {
            let (port, ip, mac) = cli::parse_neighbor(&names, n)?;
            state.neighbors.insert_permanent(port, ip, mac);
        }
        let ipsec_feed = hooks.ipsec_feed.take();
        let ipsec = args.ipsec.is_some() || ipsec_feed.is_some();
        if ipsec
            && crypto.device.is_some()
            && std::any::TypeId::of::<D::Buffer>() == std::any::TypeId::of::<Mbuf>()
        {
            tracing::info!("ESP crypto asynchronous: packets wait parked while the device works");
        }
        let mut graph = Self::graph(ports.len(), ipsec, &crypto)?;
        graph.trace.pending = args.trace;
        for (p, ifc) in ports.iter().zip(&tables.interfaces) {
            tracing::info!(
                port = %p.name,
                mac = %format_mac(&p.mac),
                mtu = ifc.mtu,
                addresses = %interface_addresses(ifc),
                "port ready"
            );
        }
        for ifc in tables.interfaces.iter().skip(ports.len()) {
            let Some(vlan) = ifc.vlan else { continue };
            tracing::info!(
                subinterface = %ifc.name,
                port = %ports[usize::from(vlan.parent)].name,
                vlan = vlan.vid,
                mtu = ifc.mtu,
                addresses = %interface_addresses(ifc),
                "VLAN subinterface ready"
            );
        }
        let punt = match &args.punt_tun {
            Some(name) => Some(PuntPath::new(name, &tables, &graph, hooks.node_ports)?),
            None => None,
        };
        let handle = TablesHandle::new(tables.clone());
        let ipsec = match (&args.ipsec, ipsec_feed) {
            (None, None) => {
                if args.ike_fragment_size.is_some() {
                    tracing::warn!(
                        "--ike-fragment-size without --ipsec or --sdewan-purpose: unused"
                    );
                }
                None
            }
            (path, feed) => {
                let settings = crate::ipsec::Settings {
                    path: path.clone(),
                    feed,
                    punt_tun: punt.as_ref().map(|p| p.index()),
                    fragment_size: args.ike_fragment_size,
                };
                let service = crate::ipsec::start(settings, &handle, &tables)?;
                if let Some(shared) = &hooks.shared {
                    shared.set_ipsec(service.view());
                }
                Some(service)
            }
        };
        if let Some(on_ready) = hooks.on_ready {
            on_ready(&handle, &tables)?;
        }
        Ok(Router {
            driver,
            graph,
            tables: handle,
            state,
            punt,
            shared: hooks.shared,
            ipsec,
            crypto,
            exchange: None,
            learned: Vec::new(),
            handed: Vec::new(),
            handoff: (0, 0),
        })
    }

    /// A further worker: forwards with the tables the first one loads (ESP with `crypto`
    /// when there is IPsec), nothing else.
    fn worker(
        driver: D,
        args: &RouterArgs,
        tables: TablesHandle,
        crypto: Crypto,
        ipsec: bool,
    ) -> anyhow::Result<Self> {
        let ports = driver.ports().len();
        let mut state = WorkerState::default();
        let names = args.interface_names()?;
        for n in &args.neighbors {
            let (port, ip, mac) = cli::parse_neighbor(&names, n)?;
            state.neighbors.insert_permanent(port, ip, mac);
        }
        let mut graph = Self::graph(ports, ipsec, &crypto)?;
        graph.trace.pending = args.trace;
        Ok(Router {
            driver,
            graph,
            tables,
            state,
            punt: None,
            shared: None,
            ipsec: None,
            crypto,
            exchange: None,
            learned: Vec::new(),
            handed: Vec::new(),
            handoff: (0, 0),
        })
    }

    /// The graph of a worker: the router's, with the ESP nodes when there is IPsec (on the
    /// cryptodev asynchronously when the packets are mbufs it can take).
    fn graph(ports: usize, ipsec: bool, crypto: &Crypto) -> anyhow::Result<Graph<D::Buffer>> {
        Ok(if ipsec {
            switchyard_dataplane::nodes::ipsec_router_graph_async(
                ports,
                Arc::clone(&crypto.backend),
                crypto.engine::<D::Buffer>(),
            )?
        } else {
            router_graph(ports)?
        })
    }

    /// Makes this worker `index` of `count`, sharing and exchanging through `exchange`.
    fn join(&mut self, index: u16, count: u16, exchange: &Arc<Exchange>) {
        self.state.set_worker(index, count);
        self.state.share(index, &exchange.state);
        self.exchange = Some((usize::from(index), Arc::clone(exchange)));
    }

    /// Passes on the neighbors (and path MTUs) this worker learned and takes in the others';
    /// true if it took neighbors in (packets waiting for them may go now).
    fn exchange_neighbors(&mut self, now: u64) -> bool {
        let Some((me, exchange)) = &self.exchange else {
            return false;
        };
        if let Some(out) = self.state.neighbors.shared.as_mut() {
            if !out.is_empty() {
                for to in (0..exchange.neighbors.inboxes.len()).filter(|to| to != me) {
                    exchange.neighbors.send(to, out.iter().copied());
                }
                out.clear();
            }
        }
        exchange.neighbors.receive(*me, &mut self.learned);
        Self::exchange_path_mtus(&mut self.state, *me, exchange, now);
        if self.learned.is_empty() {
            return false;
        }
        self.state.neighbors.merge_learned(&self.learned, now);
        self.learned.clear();
        true
    }

    /// Passes on the path MTUs this worker learned and takes in the others': a Packet Too
    /// Big reaches the worker its flow hashes to, the next echo request from that
    /// destination perhaps another.
    fn exchange_path_mtus(state: &mut WorkerState, me: usize, exchange: &Exchange, now: u64) {
        if let Some(out) = state.path_mtu.shared.as_mut() {
            if !out.is_empty() {
                for to in (0..exchange.path_mtus.inboxes.len()).filter(|&to| to != me) {
                    exchange.path_mtus.send(to, out.iter().copied());
                }
                out.clear();
            }
        }
        let mut learned = Vec::new();
        exchange.path_mtus.receive(me, &mut learned);
        if !learned.is_empty() {
            state.path_mtu.merge_learned(&learned, now);
        }
    }

    /// Sends what the graph punted to the host stack: through this worker's TUN device, or
    /// the first worker's (with the others' punted packets), or nowhere without one.
    fn punt_to_host(&mut self) {
        let punted = self.exchange.as_ref().and_then(|(_, e)| e.punted.as_ref());
        match (self.punt.as_mut(), punted) {
            (Some(punt), _) => punt.send(&mut self.graph.punt, &mut self.graph.dropped),
            (None, Some(punted)) if !self.graph.punt.is_empty() => {
                let bytes = self
                    .graph
                    .punt
                    .iter()
                    .map(|p| (p.meta.rx_port, p.buf.data().to_vec()));
                punted.send(0, bytes.collect::<Vec<_>>());
                let bufs = self.graph.punt.drain(..).map(|p| p.buf);
                self.graph.dropped.extend(bufs);
            }
            // Without --punt-tun nothing consumes punted packets.
            (None, _) => {
                let bufs = self.graph.punt.drain(..).map(|p| p.buf);
                self.graph.dropped.extend(bufs);
            }
        }
    }

    /// Writes what the other workers punted to the host (the first worker, with `--punt-tun`).
    fn punt_others_to_host(&mut self) {
        let punted = self.exchange.as_ref().and_then(|(_, e)| e.punted.as_ref());
        if let (Some(punt), Some(punted)) = (self.punt.as_mut(), punted) {
            let mut bytes = Vec::new();
            punted.receive(0, &mut bytes);
            punt.send_bytes(&mut bytes);
        }
    }

    /// Sends the packets the graph handed off to the workers that track their connections
    /// (as bytes: the buffer goes back to this worker's driver).
    fn send_handed_off(&mut self) {
        let Some((_, exchange)) = &self.exchange else {
            return;
        };
        for (node, pkt) in self.graph.handoff.drain(..) {
            let to = pkt.meta.handoff.worker().map_or(usize::MAX, usize::from);
            let handed = Handed {
                bytes: pkt.buf.data().to_vec(),
                meta: pkt.meta,
                node,
            };
            exchange.packets.send(to, [handed]);
            self.graph.dropped.push(pkt.buf);
            self.handoff.0 += 1;
        }
    }

    /// Takes in the packets other workers handed to this one, at the node that handed them
    /// off, in buffers of this worker's driver; returns how many.
    fn receive_handed(&mut self) -> usize {
        let Some((me, exchange)) = &self.exchange else {
            return 0;
        };
        exchange.packets.receive(*me, &mut self.handed);
        let mut taken = 0;
        for Handed { bytes, meta, node } in self.handed.drain(..) {
            let Some(mut buf) = self.driver.alloc() else {
                self.handoff.1 += 1;
                continue;
            };
            if !buf.push_back(bytes.len()) {
                self.handoff.1 += 1;
                self.graph.dropped.push(buf);
                continue;
            }
            buf.data_mut().copy_from_slice(&bytes);
            let meta = Meta {
                trace: 0,
                conn: None,
                conn_new: false,
                conn_related: false,
                held_since: None,
                handoff: switchyard_dataplane::graph::Handoff::to(*me as u16),
                ..meta
            };
            self.graph.inject(node, Packet { buf, meta });
            taken += 1;
        }
        taken
    }

    /// The worker's counters and state, for the servers that show them.
    fn snapshot(&self, rx: u64, tx: u64, io_errors: u64) -> DataplaneSnapshot {
        let ct = &self.state.conntrack;
        DataplaneSnapshot {
            taken_at: std::time::SystemTime::now(),
            tables_version: self.tables.load().version,
            rx,
            tx,
            io_errors,
            nodes: self.graph.counters(),
            conntrack_len: ct.len(),
            conntrack_capacity: ct.config().capacity,
            conntrack: *ct.counters(),
            connections: ct.iter().take(CONNTRACK_SAMPLE).map(|(_, e)| *e).collect(),
            backends: self
                .state
                .service_counters
                .iter()
                .map(|((f, b), c)| (*f, *b, *c))
                .collect(),
            neighbors: self
                .state
                .neighbors
                .iter()
                .map(|((port, ip), n)| (*port, *ip, n.mac))
                .collect(),
            acl_hits: self
                .state
                .acl_hits
                .iter()
                .map(|h| (h.rules().to_vec(), h.default_action()))
                .collect(),
            parked: self.graph.parked(),
            cryptodev: self.crypto.device.as_ref().map(|d| {
                (
                    d.device_name().to_string(),
                    d.driver_name().to_string(),
                    d.stats(),
                )
            }),
        }
    }

    /// Publishes the worker's counters: the first worker those of all of them, summed, to
    /// the servers; the others theirs to the first.
    fn publish_snapshot(&self, rx: u64, tx: u64, io_errors: u64) {
        match (&self.shared, &self.exchange) {
            (Some(shared), None) => shared.set_dataplane(self.snapshot(rx, tx, io_errors)),
            (shared, Some((me, exchange))) => {
                let mut snapshots = exchange
                    .snapshots
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mine = self.snapshot(rx, tx, io_errors);
                match shared {
                    Some(shared) => {
                        let mut all = mine;
                        for other in snapshots.iter().flatten() {
                            all.merge(other);
                        }
                        shared.set_dataplane(all);
                    }
                    None => snapshots[*me] = Some(mine),
                }
            }
            (None, None) => {}
        }
    }

    /// True once a signal or the deadline asks the worker to stop and the IKE daemon (if
    /// any) has told its peers: its Delete messages still need the dataplane.
    fn stop_requested(&mut self, stop: &AtomicBool, deadline: Option<Instant>) -> bool {
        let asked = stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
        match &mut self.ipsec {
            Some(ipsec) if asked => ipsec.wind_down(),
            _ => asked,
        }
    }

    /// Forwards until a signal, the deadline, or `finished` says the input is exhausted;
    /// returns what it did.
    fn run_until(
        mut self,
        args: &RouterArgs,
        stop: &AtomicBool,
        finished: impl Fn(&D) -> bool,
    ) -> anyhow::Result<Report> {
        let start = Instant::now();
        let deadline = args
            .duration
            .map(|d| start + Duration::from_secs_f64(d.max(0.0)));
        let nports = self.driver.ports().len() as u16;
        let burst = usize::from(args.rx_burst).clamp(1, VECTOR_SIZE);
        let mut rx: Vec<D::Buffer> = Vec::with_capacity(VECTOR_SIZE);
        let mut io_errors = 0u64;
        let mut last_housekeeping = start;
        let (mut rx_total, mut tx_total) = (0u64, 0u64);
        tracing::info!("forwarding");
        while !self.stop_requested(stop, deadline) {
            if let Some(shared) = &self.shared {
                let wanted = shared.trace.take_wanted();
                self.graph.trace.pending = self.graph.trace.pending.saturating_add(wanted);
            }
            let mut received = 0;
            for port in 0..nports {
                match self.driver.rx_burst(port, &mut rx, burst) {
                    Ok(_) => {}
                    Err(e) => {
                        io_errors += 1;
                        if io_errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = io_errors, "receive failed");
                        }
                    }
                }
                received += rx.len();
                self.graph.receive_burst(&mut rx, port);
            }
            if let Some(punt) = self.punt.as_mut() {
                received += punt.receive(&mut self.driver, &mut self.graph);
            }
            // Packets other workers handed over count as theirs, not received again.
            let handed = self.receive_handed();
            self.punt_others_to_host();
            let now = Instant::now();
            // Held packets given another go (or answered as unreachable) need a dispatch.
            let mut retried = false;
            if now.duration_since(last_housekeeping) >= HOUSEKEEPING_EVERY {
                last_housekeeping = now;
                self.state.expire(nanos_since(start, now));
                let driver = &mut self.driver;
                retried = self
                    .graph
                    .housekeeping(&mut self.state, nanos_since(start, now), || driver.alloc());
                self.driver.recycle(&mut self.graph.dropped);
                self.publish_snapshot(rx_total, tx_total, io_errors);
            }
            let tables = self.tables.load();
            let driver = &mut self.driver;
            // Router advertisements are timed to the half second (RFC 4861 6.2.6): checked
            // every turn, queued straight for transmission.
            retried |= self.graph.advertise_routers(
                &tables,
                &mut self.state,
                nanos_since(start, now),
                || driver.alloc(),
            );
            // And multicast listener reports (RFC 3810: a random delay within a second of a
            // change, or within a query's maximum response delay).
            retried |= self.graph.report_listeners(
                &tables,
                &mut self.state,
                nanos_since(start, now),
                || driver.alloc(),
            );
            // So are neighbor probes (RFC 4861 7.3.3: one a second while in PROBE).
            retried |= self.graph.probe_neighbors(
                &tables,
                &mut self.state,
                nanos_since(start, now),
                || driver.alloc(),
            );
            let merged = self.exchange_neighbors(nanos_since(start, now));
            // With crypto in flight the loop keeps turning (the dispatch polls the device),
            // received packets or not; neighbors from another worker may release held ones.
            if received == 0 && handed == 0 && self.graph.parked() == 0 && !merged && !retried {
                if finished(&self.driver) {
                    break;
                }
                match &self.punt {
                    Some(punt) => self.driver.wait_also(IDLE_WAIT, punt.fds()),
                    None => self.driver.wait(IDLE_WAIT),
                }
                continue;
            }
            rx_total += received as u64;
            self.state.sync_services(&tables);
            self.graph
                .dispatch(&tables, &mut self.state, nanos_since(start, now));
            self.send_handed_off();
            if let Some(shared) = &self.shared {
                // Traces asked for over the admin socket go there once their packets are
                // through the graph (those of `--trace` stay for the exit report).
                if shared.trace.is_active() && !self.graph.trace.records().is_empty() {
                    shared.trace.hand_over(self.graph.trace.take());
                }
            }
            for port in 0..nports {
                let queue = &mut self.graph.tx[usize::from(port)];
                if queue.is_empty() {
                    continue;
                }
                match self.driver.tx_burst(port, queue) {
                    Ok(n) => tx_total += n as u64,
                    Err(e) => {
                        io_errors += 1;
                        queue.clear();
                        if io_errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = io_errors, "transmit failed");
                        }
                    }
                }
            }
            self.punt_to_host();
            self.driver.recycle(&mut self.graph.dropped);
        }
        // RFC 4861 6.2.5: hosts learn at once that this router is going.
        let tables = self.tables.load();
        let driver = &mut self.driver;
        if self
            .graph
            .withdraw_router_adverts(&tables, &self.state, || driver.alloc())
        {
            for (port, queue) in self.graph.tx.iter_mut().enumerate() {
                if !queue.is_empty() {
                    let sent = self.driver.tx_burst(port as u16, queue);
                    tx_total += sent.unwrap_or(0) as u64;
                    self.graph.dropped.append(queue);
                }
            }
        }
        self.driver.recycle(&mut self.graph.dropped);
        if let Some(punt) = self.punt.as_mut() {
            punt.release(&mut self.graph.dropped);
            self.driver.recycle(&mut self.graph.dropped);
        }
        let elapsed = start.elapsed();
        Ok(Report {
            seconds: elapsed.as_secs_f64(),
            rx: rx_total,
            tx: tx_total,
            io_errors,
            looped: self.graph.looped,
            neighbors: self.state.neighbors.len(),
            nodes: self.graph.counters(),
            punt: self
                .punt
                .as_ref()
                .map(|p| (p.name().to_string(), p.counters)),
            workers: vec![(rx_total, tx_total)],
            handoff: self.handoff,
            crypto: self.crypto.report(),
            traces: self
                .graph
                .trace
                .take()
                .iter()
                .map(|t| t.to_string())
                .collect(),
        })
    }
}

fn nanos_since(start: Instant, now: Instant) -> u64 {
    u64::try_from(now.duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

/// An interface's addresses with their prefix lengths, space-separated, for the log.
fn interface_addresses(ifc: &Interface) -> String {
    let v4 = ifc.ipv4.iter().map(|n| n.to_string());
    let v6 = ifc.ipv6.iter().map(|n| n.to_string());
    v4.chain(v6).collect::<Vec<_>>().join(" ")
}

fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// What the router did, printed on exit.
struct Report {
    seconds: f64,
    rx: u64,
    tx: u64,
    io_errors: u64,
    looped: u64,
    neighbors: usize,
    nodes: Vec<NodeCounters>,
    /// The punt TUN device's name and counters, with `--punt-tun`.
    punt: Option<(String, PuntCounters)>,
    /// Packets received and sent by each worker.
    workers: Vec<(u64, u64)>,
    /// Packets handed to other workers, and those lost on arrival for want of a buffer.
    handoff: (u64, u64),
    /// The cryptodev's line, if there is one.
    crypto: Option<String>,
    /// Packets traced (`--trace`), as text.
    traces: Vec<String>,
}

impl Report {
    /// Adds another worker's report to this one's (same graph, node for node).
    fn merge(&mut self, other: Report) {
        self.seconds = self.seconds.max(other.seconds);
        self.rx += other.rx;
        self.tx += other.tx;
        self.io_errors += other.io_errors;
        self.looped += other.looped;
        self.neighbors = self.neighbors.max(other.neighbors);
        for (mine, theirs) in self.nodes.iter_mut().zip(other.nodes) {
            mine.packets += theirs.packets;
            mine.vectors += theirs.vectors;
            for ((_, count), (_, more)) in mine.errors.iter_mut().zip(theirs.errors) {
                *count += more;
            }
        }
        self.workers.extend(other.workers);
        self.handoff.0 += other.handoff.0;
        self.handoff.1 += other.handoff.1;
        self.traces.extend(other.traces);
    }

    /// Prints the report, the traces, and writes `--stats-json`.
    fn print(&self, args: &RouterArgs) -> anyhow::Result<()> {
        print!("{}", self.text());
        if let Some(line) = &self.crypto {
            print!("{line}");
        }
        for (i, t) in self.traces.iter().enumerate() {
            println!("trace of packet {}:\n{t}", i + 1);
        }
        if let Some(path) = &args.stats_json {
            std::fs::write(path, self.json())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// VPP-style: per node, packets and vectors, then every non-zero counter.
    fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "switchyard router: {:.1} s, {} packets received, {} sent, {} neighbors, {} I/O errors",
            self.seconds, self.rx, self.tx, self.neighbors, self.io_errors
        );
        if self.workers.len() > 1 {
            for (i, (rx, tx)) in self.workers.iter().enumerate() {
                let _ = writeln!(s, "worker {i}: {rx} packets received, {tx} sent");
            }
            if self.handoff != (0, 0) {
                let _ = writeln!(
                    s,
                    "{} packets handed to the worker tracking their connection ({} lost: no \
                     buffer)",
                    self.handoff.0, self.handoff.1
                );
            }
        }
        let _ = writeln!(
            s,
            "{:<16} {:>10} {:>8}  counters",
            "node", "packets", "vectors"
        );
        for n in &self.nodes {
            if n.packets == 0 {
                continue;
            }
            let _ = writeln!(s, "{:<16} {:>10} {:>8}", n.name, n.packets, n.vectors);
            for (info, count) in &n.errors {
                if *count > 0 {
                    let _ = writeln!(
                        s,
                        "{:<16} {:>10}           {} ({})",
                        "", count, info.key, info.text
                    );
                }
            }
        }
        if let Some((name, c)) = &self.punt {
            let _ = writeln!(
                s,
                "punt {name}: {} packets to the host ({} dropped), {} from the host \
                 ({} dropped), {} reads without a buffer, {} read errors",
                c.to_host,
                c.to_host_dropped,
                c.from_host,
                c.from_host_dropped,
                c.no_buffer,
                c.read_errors
            );
        }
        if self.looped > 0 {
            let _ = writeln!(
                s,
                "{} packets dropped for looping in the graph",
                self.looped
            );
        }
        s
    }

    fn json(&self) -> String {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let errors: serde_json::Map<String, serde_json::Value> = n
                    .errors
                    .iter()
                    .map(|(i, c)| (i.key.to_string(), (*c).into()))
                    .collect();
                serde_json::json!({
                    "name": n.name, "packets": n.packets, "vectors": n.vectors, "errors": errors,
                })
            })
            .collect();
        let punt = self.punt.as_ref().map(|(name, c)| {
            serde_json::json!({
                "tun": name, "to_host": c.to_host, "to_host_dropped": c.to_host_dropped,
                "from_host": c.from_host, "from_host_dropped": c.from_host_dropped,
                "no_buffer": c.no_buffer, "read_errors": c.read_errors,
            })
        });
        let workers: Vec<serde_json::Value> = self
            .workers
            .iter()
            .map(|(rx, tx)| serde_json::json!({ "rx": rx, "tx": tx }))
            .collect();
        serde_json::json!({
            "seconds": self.seconds, "rx": self.rx, "tx": self.tx, "io_errors": self.io_errors,
            "looped": self.looped, "neighbors": self.neighbors, "nodes": nodes, "punt": punt,
            "workers": workers, "handed_off": self.handoff.0, "handoff_lost": self.handoff.1,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    /// `switchyard router` with ports c0 and s0 and the flags `flags`, turned into tables.
    fn tables_for(flags: &[&str]) -> anyhow::Result<Tables> {
        let mut line = vec!["switchyard", "router", "-i", "c0", "-i", "s0"];
        line.extend_from_slice(flags);
        let Command::Router(args) = Cli::try_parse_from(line)?.command else {
            unreachable!("a router command line");
        };
        let ports = ["c0", "s0"].map(|name| PortInfo {
            name: name.into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
        });
        tables_from_args(&ports, &args)
    }

    /// `--vlan`: subinterfaces after the ports, with the port's MAC and MTU unless --mtu
    /// sets a smaller one; their names work in --address, --route and --mtu.
    #[test]
    fn vlan_subinterfaces_follow_the_ports() {
        let tables = tables_for(&[
            "--vlan",
            "s0.100",
            "--vlan",
            "c0.7",
            "--mac",
            "s0=02:00:00:00:00:05",
            "--mtu",
            "s0=9000",
            "--mtu",
            "c0.7=1400",
            "--address",
            "s0.100=198.51.100.1/24",
            "--address",
            "c0.7=2001:db8:7::1/64",
            "--route",
            "203.0.113.0/24=198.51.100.9",
        ])
        .unwrap();
        let names: Vec<&str> = tables.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["c0", "s0", "s0.100", "c0.7"]);
        let sub = &tables.interfaces[2];
        assert_eq!(sub.vlan.map(|v| (v.parent, v.vid)), Some((1, 100)));
        assert_eq!((sub.mac, sub.mtu), ([2, 0, 0, 0, 0, 5], 9000));
        assert_eq!(tables.interfaces[3].mtu, 1400);
        assert_eq!(tables.vlan_subinterface(1, 100), Some(2));
        assert_eq!(tables.vlan_subinterface(0, 7), Some(3));
        let hop = tables
            .fib
            .lookup("203.0.113.5".parse().unwrap())
            .map(|r| format!("{r:?}"))
            .unwrap_or_default();
        assert!(hop.contains("port: 2"), "{hop}");

        let err = |flags: &[&str]| format!("{:#}", tables_for(flags).expect_err("refused"));
        assert!(err(&["--vlan", "s0.100", "--mtu", "s0.100=1600"]).contains("more than the MTU"));
        assert!(err(&["--vlan", "s0.4095"]).contains("out of range"));
        assert!(err(&["--vlan", "x0.1"]).contains("no interface named"));
        assert!(err(&["--vlan", "s0.1", "--mac", "s0.1=02:00:00:00:00:01"]).contains("MAC"));
        assert!(err(&["--address", "s0.1=198.51.100.1/24"]).contains("no interface named"));
    }

    /// RFC 8200 5: an IPv6 link carries 1280-byte packets; a port with IPv6 addresses is not
    /// given a smaller MTU, an IPv4-only one may be (down to IPv4's 576).
    #[test]
    fn mtu_below_1280_is_refused_on_a_port_with_ipv6() {
        let err = tables_for(&["--address", "c0=2001:db8:1::1/64", "--mtu", "c0=1000"])
            .expect_err("--mtu 1000 on an IPv6 port")
            .to_string();
        assert!(
            err.contains("c0=1000") && err.contains("1280") && err.contains("2001:db8:1::1"),
            "{err}"
        );
        let tables = tables_for(&[
            "--address",
            "c0=198.18.1.1/24",
            "--address",
            "s0=2001:db8:2::1/64",
            "--mtu",
            "c0=1000",
            "--mtu",
            "s0=1280",
        ])
        .unwrap();
        assert_eq!(
            (tables.interfaces[0].mtu, tables.interfaces[1].mtu),
            (1000, 1280)
        );
    }
}
