//! The IKE daemon: the tokio shell around the sans-IO [`Engine`].
//!
//! It owns one UDP socket on port 500 and one on the NAT-T port (4500) for every local address
//! the peers use, feeds every datagram and every timeout into the engine, sends what the engine
//! returns, and keeps the record of IKE SAs and installed CHILD_SAs that `show ipsec` and the
//! dataplane read. Datagrams on 4500 go to the engine as they are: it strips the RFC 3948
//! non-ESP marker itself and ignores ESP and keepalives (those belong to the dataplane).
//! What the engine sends goes out byte for byte, from the socket of its local address and
//! port: IKE on 4500 carries the marker the engine put in front, and a NAT-keepalive (one
//! 0xFF byte, RFC 3948 section 2.3) none. When the engine follows a peer whose NAT changed
//! its mapping, the CHILD_SAs' tunnel addresses are replaced in place and published again
//! (the dataplane keeps per-SA state by SPI, so sequence numbers and replay windows carry
//! on).
//!
//! This file depends on nothing else in the binary (std, tokio, tracing and the ipsec crate),
//! so the integration tests can compile it into themselves and drive it in a namespace.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use switchyard_dataplane::ipsec_tables::SpiReports;
use switchyard_ipsec::ike::{
    Action, ChildSaInstall, Engine, EngineConfig, Failure, IkeCounters, IkeSaId, IkeState,
    PoolStatus, VirtualIp,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What the daemon is told at start.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub engine: EngineConfig,
    /// Peers (by name) to connect to as soon as the sockets are bound.
    pub initiate: Vec<String>,
    /// When an IKE SA with one of those peers fails (no answer, refused, lost to DPD), try
    /// again after this long, doubling each time up to [`MAX_RECONNECT`] (reset once one is
    /// up). `None`: never. A peer's own delete is not a failure and is not retried.
    pub reconnect: Option<std::time::Duration>,
    /// Where ESP that arrives on the NAT-T sockets goes (UDP payloads, without IP and UDP
    /// headers), when the dataplane does not take it before the host stack sees it.
    pub esp_tap: Option<mpsc::UnboundedSender<Datagram>>,
    /// What the dataplane counted per CHILD_SA, for lifetimes in bytes: read every
    /// [`USAGE_POLL`] when a connection has a byte limit.
    pub usage: Option<ChildUsage>,
    /// Where the dataplane reports ESP with SPIs of no CHILD_SA: each sender with an IKE SA
    /// is told, in an INFORMATIONAL exchange carrying INVALID_SPI (RFC 7296 3.10.1), at most
    /// once per [`INVALID_SPI_EVERY`] per SPI. Read every [`SPI_REPORT_POLL`].
    pub spi_reports: Option<Arc<SpiReports>>,
}

/// How often the dataplane's reports of unknown SPIs are read.
pub const SPI_REPORT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Least time between two INVALID_SPI notifications about one SPI to one sender.
pub const INVALID_SPI_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes a CHILD_SA carried, by (our inbound SPI, our outbound SPI): the larger of the two
/// directions. `None`: not in the dataplane (yet).
#[derive(Clone)]
pub struct ChildUsage(pub Arc<dyn Fn(u32, u32) -> Option<u64> + Send + Sync>);

impl std::fmt::Debug for ChildUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChildUsage")
    }
}

/// How often byte counters are read against byte lifetimes: often enough that traffic
/// between two reads stays well inside the tenth between soft and hard limit at the rates
/// byte limits are set for (a few loads of shared counters per SA each time).
pub const USAGE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest wait between attempts to reconnect a failed peer.
pub const MAX_RECONNECT: std::time::Duration = std::time::Duration::from_secs(300);

/// Something that happened, in order, for whoever listens (the dataplane publisher, tests).
#[derive(Debug, Clone)]
pub enum Event {
    Established {
        ike_sa: IkeSaId,
        peer: String,
    },
    Failed {
        ike_sa: IkeSaId,
        peer: String,
        reason: Failure,
    },
    ChildInstalled(Arc<ChildSaInstall>),
    ChildFailed {
        ike_sa: IkeSaId,
        peer: String,
        reason: Failure,
    },
    ChildDeleted {
        ike_sa: IkeSaId,
        inbound_spi: u32,
        outbound_spi: u32,
    },
    /// An installed CHILD_SA's tunnel moved with its peer (a NAT's new mapping): the same
    /// SA, with the new addresses and UDP ports.
    ChildMoved(Arc<ChildSaInstall>),
    Closed {
        ike_sa: IkeSaId,
        peer: String,
    },
}

/// What `show ipsec` prints: the engine's SAs, the installed CHILD_SAs, counters.
#[derive(Debug, Clone, Default)]
pub struct DaemonState {
    pub ike_sas: Vec<(IkeSaId, String, IkeState)>,
    pub child_sas: Vec<Arc<ChildSaInstall>>,
    pub counters: IkeCounters,
    /// Virtual IPs: those peers assigned us and those we leased to peers.
    pub virtual_ips: Vec<VirtualIp>,
    /// The address pools virtual IPs are leased from.
    pub pools: Vec<PoolStatus>,
    /// Datagrams that could not be sent (by the socket's error).
    pub send_errors: u64,
}

/// Requests to the running daemon.
#[derive(Debug)]
pub enum Command {
    Connect(String),
    /// Deletes every IKE SA (INFORMATIONAL Delete), then keeps running.
    DeleteAll,
    /// Checks that the peer of an IKE SA is alive (an empty INFORMATIONAL request).
    Dpd(IkeSaId),
    /// Sends a datagram from one of the daemon's sockets (ESP in UDP from port 4500).
    SendRaw(Datagram),
    /// Replaces the peers and pools (and which peers we connect to) while running: see
    /// [`Engine::reconfigure`]. Sockets are bound for new addresses; a configuration the
    /// engine refuses is logged and the running one kept.
    Reconfigure {
        engine: Box<EngineConfig>,
        initiate: Vec<String>,
    },
    Shutdown,
}

/// Called on the daemon's task with every installed CHILD_SA each time the set changes,
/// before the daemon sends anything else: the dataplane has a new SA before the answer that
/// lets the peer use it goes out.
pub type ChildSaHook = Box<dyn FnMut(&[Arc<ChildSaInstall>]) + Send>;

/// The running daemon.
pub struct Daemon {
    pub state: Arc<Mutex<DaemonState>>,
    pub events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// The addresses the sockets are bound to.
    pub bound: Vec<SocketAddr>,
}

impl Daemon {
    /// Binds the sockets (on the calling thread, so in its network namespace) and starts the
    /// daemon on the current tokio runtime.
    pub fn start(config: DaemonConfig) -> io::Result<Self> {
        Self::start_with_hook(config, None)
    }

    /// [`Daemon::start`], with a hook told of every change of the installed CHILD_SAs.
    pub fn start_with_hook(config: DaemonConfig, hook: Option<ChildSaHook>) -> io::Result<Self> {
        let natt_port = config.engine.natt_port;
        let mut sockets = HashMap::new();
        for addr in socket_addresses(&config.engine) {
            sockets.insert(addr, bind(addr)?);
        }
        let engine = Engine::new(config.engine.clone())
            .map_err(|e| io::Error::other(format!("IKE engine: {e}")))?;
        let state = Arc::new(Mutex::new(DaemonState::default()));
        let (event_tx, events) = mpsc::unbounded_channel();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (rx_tx, rx_rx) = mpsc::channel(1024);
        let mut readers = Vec::new();
        for (addr, socket) in &sockets {
            readers.push(tokio::spawn(read_socket(
                *addr,
                Arc::clone(socket),
                rx_tx.clone(),
            )));
        }
        let bound = sockets.keys().copied().collect();
        let shell = Shell {
            datagrams: rx_tx,
            readers,
            engine,
            sockets,
            state: Arc::clone(&state),
            events: event_tx,
            esp_tap: config.esp_tap.clone(),
            natt_port,
            hook,
            initiate: config.initiate.iter().cloned().collect(),
            reconnect: config.reconnect,
            retries: HashMap::new(),
            usage: config.usage.clone(),
            spi_reports: config.spi_reports.clone(),
            invalid_spis_sent: HashMap::new(),
        };
        for name in &config.initiate {
            let _ = commands.send(Command::Connect(name.clone()));
        }
        let task = tokio::spawn(shell.run(rx_rx, command_rx));
        Ok(Self {
            state,
            events,
            commands,
            task,
            bound,
        })
    }

    pub fn command(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> DaemonState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Deletes the IKE SAs, waits briefly for the peers' answers, and stops.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.task.await;
    }
}

/// A UDP payload and its addresses.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bytes: Vec<u8>,
}

async fn read_socket(local: SocketAddr, socket: Arc<UdpSocket>, out: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, remote)) => {
                let datagram = Datagram {
                    local,
                    remote,
                    bytes: buf[..len].to_vec(),
                };
                if out.send(datagram).await.is_err() {
                    return;
                }
            }
            // ICMP port unreachable from an earlier send shows up here on Linux: keep going.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                tracing::warn!(%local, error = %e, "ipsec: receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The addresses the daemon listens on for `config`: each peer's local address, on its IKE
/// port and the NAT-T port.
fn socket_addresses(config: &EngineConfig) -> BTreeSet<SocketAddr> {
    let addrs: BTreeSet<IpAddr> = config.peers.iter().map(|p| p.local.ip()).collect();
    let ports: BTreeSet<u16> = config
        .peers
        .iter()
        .map(|p| p.local.port())
        .chain([config.natt_port])
        .collect();
    addrs
        .iter()
        .flat_map(|ip| ports.iter().map(|port| SocketAddr::new(*ip, *port)))
        .collect()
}

/// A non-blocking UDP socket bound to `addr` (in the calling thread's network namespace).
fn bind(addr: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let socket = StdUdpSocket::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.set_nonblocking(true)?;
    Ok(Arc::new(UdpSocket::from_std(socket)?))
}

struct Shell {
    /// Where the socket readers send what they receive (for readers of sockets bound later).
    datagrams: mpsc::Sender<Datagram>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    engine: Engine,
    sockets: HashMap<SocketAddr, Arc<UdpSocket>>,
    state: Arc<Mutex<DaemonState>>,
    events: mpsc::UnboundedSender<Event>,
    esp_tap: Option<mpsc::UnboundedSender<Datagram>>,
    natt_port: u16,
    hook: Option<ChildSaHook>,
    /// Peers we start tunnels to, and the reconnect policy for them.
    initiate: BTreeSet<String>,
    reconnect: Option<std::time::Duration>,
    /// Failed peers: when to try again, and the wait after that.
    retries: HashMap<String, (tokio::time::Instant, std::time::Duration)>,
    usage: Option<ChildUsage>,
    spi_reports: Option<Arc<SpiReports>>,
    /// When each (sender, SPI) was last told INVALID_SPI.
    invalid_spis_sent: HashMap<(IpAddr, u32), Instant>,
}

/// ESP on the NAT-T port: not the non-ESP marker, not a one-byte keepalive (RFC 3948).
fn is_esp(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[..4] != [0, 0, 0, 0]
}

impl Shell {
    async fn run(
        mut self,
        mut datagrams: mpsc::Receiver<Datagram>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut polls_usage = self.usage.is_some() && self.engine.has_byte_limits();
        let mut usage_poll = tokio::time::interval(USAGE_POLL);
        usage_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut spi_poll = tokio::time::interval(SPI_REPORT_POLL);
        spi_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self
                .engine
                .next_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(far);
            let wake = stopping.map_or(wake, |s| wake.min(s));
            let wake = self
                .retries
                .values()
                .map(|(at, _)| *at)
                .filter(|_| stopping.is_none())
                .fold(wake, |w, at| w.min(at));
            tokio::select! {
                Some(d) = datagrams.recv() => {
                    if d.local.port() == self.natt_port && is_esp(&d.bytes) {
                        if let Some(tap) = &self.esp_tap {
                            let _ = tap.send(d);
                            continue;
                        }
                    }
                    let actions = self.engine.handle(&d.bytes, d.local, d.remote, Instant::now(), SystemTime::now());
                    self.carry_out(actions).await;
                }
                command = commands.recv() => match command {
                    Some(Command::Connect(name)) => match self.engine.connect(&name, Instant::now()) {
                        Ok((id, actions)) => {
                            tracing::info!(peer = %name, ike_sa = %format!("{:016x}", id.0), "ipsec: connecting");
                            self.carry_out(actions).await;
                        }
                        Err(e) => tracing::warn!(peer = %name, error = %e, "ipsec: cannot connect"),
                    },
                    Some(Command::DeleteAll) => self.delete_all().await,
                    Some(Command::Dpd(id)) => match self.engine.send_dpd(id, Instant::now()) {
                        Ok(actions) => self.carry_out(actions).await,
                        Err(e) => tracing::debug!(error = %e, "ipsec: no DPD"),
                    },
                    Some(Command::SendRaw(d)) => {
                        if let Some(socket) = self.socket_for(d.local) {
                            if let Err(e) = socket.send_to(&d.bytes, d.remote).await {
                                tracing::debug!(error = %e, "ipsec: raw send failed");
                            }
                        }
                    }
                    Some(Command::Reconfigure { engine, initiate }) => {
                        if stopping.is_none() {
                            self.reconfigure(*engine, initiate).await;
                            polls_usage = self.usage.is_some() && self.engine.has_byte_limits();
                        }
                    }
                    Some(Command::Shutdown) | None => {
                        if stopping.is_none() {
                            self.delete_all().await;
                            stopping = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(500));
                        }
                    }
                },
                _ = usage_poll.tick(), if polls_usage && stopping.is_none() => {
                    self.check_usage().await;
                }
                _ = spi_poll.tick(), if self.spi_reports.is_some() && stopping.is_none() => {
                    self.report_invalid_spis().await;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if stopping.is_some_and(|s| tokio::time::Instant::now() >= s) {
                        break;
                    }
                    let actions = self.engine.handle_timeout(Instant::now());
                    self.carry_out(actions).await;
                    if stopping.is_none() {
                        self.reconnect_due().await;
                    }
                }
            }
            if stopping.is_some() && self.engine.sas().is_empty() {
                break;
            }
        }
        for reader in &self.readers {
            reader.abort();
        }
    }

    /// See [`Command::Reconfigure`].
    async fn reconfigure(&mut self, engine: EngineConfig, initiate: Vec<String>) {
        for addr in socket_addresses(&engine) {
            if self.sockets.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(socket) => {
                    self.readers.push(tokio::spawn(read_socket(
                        addr,
                        Arc::clone(&socket),
                        self.datagrams.clone(),
                    )));
                    self.sockets.insert(addr, socket);
                }
                Err(e) => tracing::warn!(error = %e, "ipsec: cannot listen for IKE"),
            }
        }
        let peers = engine.peers.len();
        match self.engine.reconfigure(engine, Instant::now()) {
            Ok(actions) => {
                tracing::info!(
                    peers,
                    initiate = initiate.len(),
                    "ipsec: configuration replaced"
                );
                self.carry_out(actions).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ipsec: configuration refused, keeping the running one");
                return;
            }
        }
        self.initiate = initiate.into_iter().collect();
        let initiate = &self.initiate;
        self.retries.retain(|peer, _| initiate.contains(peer));
        let up: BTreeSet<String> = self
            .engine
            .sas()
            .into_iter()
            .map(|(_, peer, _)| peer)
            .collect();
        let due: Vec<String> = self.initiate.difference(&up).cloned().collect();
        for name in due {
            match self.engine.connect(&name, Instant::now()) {
                Ok((id, actions)) => {
                    tracing::info!(peer = %name, ike_sa = %format!("{:016x}", id.0), "ipsec: connecting");
                    self.carry_out(actions).await;
                }
                Err(e) => tracing::warn!(peer = %name, error = %e, "ipsec: cannot connect"),
            }
        }
        // Children of deleted SAs left the dataplane in carry_out; the state shows the rest.
        if let Ok(mut s) = self.state.lock() {
            s.ike_sas = self.engine.sas();
        }
    }

    /// Tells the engine what each CHILD_SA has carried (lifetimes in bytes).
    async fn check_usage(&mut self) {
        let Some(usage) = self.usage.clone() else {
            return;
        };
        let children = self
            .state
            .lock()
            .map(|s| s.child_sas.clone())
            .unwrap_or_default();
        for child in children {
            let (inbound, outbound) = (child.inbound.spi, child.outbound.spi);
            if let Some(bytes) = (usage.0)(inbound, outbound) {
                let actions = self.engine.child_bytes(inbound, bytes, Instant::now());
                self.carry_out(actions).await;
            }
        }
    }

    /// Tells the senders of ESP with SPIs of no CHILD_SA, which the dataplane reported,
    /// that they use an SPI we do not know (RFC 7296 3.10.1): on the IKE SA with each, if
    /// there is one, and at most once per [`INVALID_SPI_EVERY`] per SPI. A peer that lost
    /// track of a CHILD_SA (its delete or ours went missing) learns of it, instead of
    /// sending into the void until its lifetime runs out.
    async fn report_invalid_spis(&mut self) {
        let Some(reports) = self.spi_reports.clone() else {
            return;
        };
        let now = Instant::now();
        self.invalid_spis_sent
            .retain(|_, at| now.duration_since(*at) < INVALID_SPI_EVERY);
        for (sender, spi) in reports.take() {
            if self.invalid_spis_sent.contains_key(&(sender, spi)) {
                continue;
            }
            let Some(id) = self.engine.established_sa_with(sender) else {
                continue;
            };
            match self.engine.report_invalid_spi(id, spi, now) {
                Ok(actions) => {
                    self.invalid_spis_sent.insert((sender, spi), now);
                    tracing::info!(peer = %sender, spi = %format!("{spi:08x}"), "ipsec: ESP with an unknown SPI: INVALID_SPI sent");
                    self.carry_out(actions).await;
                }
                // An exchange in flight: the next report gets its turn.
                Err(e) => {
                    tracing::debug!(peer = %sender, error = %e, "ipsec: INVALID_SPI not sent")
                }
            }
        }
    }

    /// Connects the failed peers whose wait is over.
    async fn reconnect_due(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .retries
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            if let Some((at, _)) = self.retries.get_mut(&name) {
                // Not again until this attempt has failed too (which reschedules it).
                *at = now + MAX_RECONNECT * 12;
            }
            match self.engine.connect(&name, Instant::now()) {
                Ok((id, actions)) => {
                    tracing::info!(peer = %name, ike_sa = %format!("{:016x}", id.0), "ipsec: reconnecting");
                    self.carry_out(actions).await;
                }
                Err(e) => tracing::warn!(peer = %name, error = %e, "ipsec: cannot reconnect"),
            }
        }
    }

    /// Schedules the next attempt for a peer whose IKE SA failed.
    fn schedule_reconnect(&mut self, peer: &str) {
        let Some(base) = self.reconnect.filter(|_| self.initiate.contains(peer)) else {
            return;
        };
        let wait = self
            .retries
            .get(peer)
            .map_or(base, |(_, next)| *next)
            .min(MAX_RECONNECT);
        tracing::info!(%peer, seconds = wait.as_secs_f64(), "ipsec: will reconnect");
        self.retries.insert(
            peer.to_string(),
            (
                tokio::time::Instant::now() + wait,
                (wait * 2).min(MAX_RECONNECT),
            ),
        );
    }

    async fn delete_all(&mut self) {
        for (id, _, _) in self.engine.sas() {
            match self.engine.delete_ike_sa(id, Instant::now()) {
                Ok(actions) => self.carry_out(actions).await,
                Err(e) => tracing::debug!(error = %e, "ipsec: delete deferred"),
            }
        }
    }

    fn child_sas_changed(&mut self) {
        if let Some(hook) = self.hook.as_mut() {
            let children = self
                .state
                .lock()
                .map(|s| s.child_sas.clone())
                .unwrap_or_default();
            hook(&children);
        }
    }

    fn socket_for(&self, local: SocketAddr) -> Option<&Arc<UdpSocket>> {
        self.sockets.get(&local).or_else(|| {
            // The engine follows the address a request arrived on; fall back to any socket
            // on the same port (e.g. an SA set up before the address was known).
            self.sockets
                .iter()
                .find(|(a, _)| a.port() == local.port() && a.is_ipv4() == local.is_ipv4())
                .map(|(_, s)| s)
        })
    }

    async fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send {
                    local,
                    remote,
                    bytes,
                } => {
                    let sent = match self.socket_for(local) {
                        Some(socket) => socket.send_to(&bytes, remote).await.map(|_| ()),
                        None => Err(io::Error::other("no socket")),
                    };
                    if let Err(e) = sent {
                        tracing::warn!(%local, %remote, error = %e, "ipsec: send failed");
                        if let Ok(mut s) = self.state.lock() {
                            s.send_errors += 1;
                        }
                    }
                }
                Action::ArmTimer { .. } => {} // the loop asks next_timeout() every turn
                Action::InstallChildSa(install) => {
                    let install: Arc<ChildSaInstall> = Arc::from(install);
                    tracing::info!(
                        peer = %install.peer,
                        inbound_spi = %format!("{:08x}", install.inbound.spi),
                        outbound_spi = %format!("{:08x}", install.outbound.spi),
                        suite = ?install.inbound.suite,
                        udp_encap = ?install.udp_encap,
                        local_vips = ?install.local_vips,
                        remote_vips = ?install.remote_vips,
                        "ipsec: CHILD_SA installed"
                    );
                    if let Ok(mut s) = self.state.lock() {
                        s.child_sas.push(Arc::clone(&install));
                    }
                    self.child_sas_changed();
                    let _ = self.events.send(Event::ChildInstalled(install));
                }
                Action::DeleteChildSa {
                    ike_sa,
                    inbound_spi,
                    outbound_spi,
                } => {
                    tracing::info!(
                        inbound_spi = %format!("{inbound_spi:08x}"),
                        outbound_spi = %format!("{outbound_spi:08x}"),
                        "ipsec: CHILD_SA deleted"
                    );
                    // By SPIs alone: a CHILD_SA moves to the new IKE SA when that is rekeyed.
                    if let Ok(mut s) = self.state.lock() {
                        s.child_sas.retain(|c| {
                            !(c.inbound.spi == inbound_spi && c.outbound.spi == outbound_spi)
                        });
                    }
                    self.child_sas_changed();
                    let _ = self.events.send(Event::ChildDeleted {
                        ike_sa,
                        inbound_spi,
                        outbound_spi,
                    });
                }
                Action::UpdateChildSaAddresses {
                    ike_sa,
                    spis,
                    local_addr,
                    remote_addr,
                    udp_encap,
                } => {
                    let tunnel = Tunnel {
                        local_addr,
                        remote_addr,
                        udp_encap,
                    };
                    let moved = match self.state.lock() {
                        Ok(mut s) => move_children(&mut s.child_sas, &spis, tunnel),
                        Err(_) => Vec::new(),
                    };
                    tracing::info!(
                        ike_sa = %format!("{:016x}", ike_sa.0),
                        %remote_addr,
                        ?udp_encap,
                        child_sas = moved.len(),
                        "ipsec: peer moved, its CHILD_SAs follow"
                    );
                    if !moved.is_empty() {
                        self.child_sas_changed();
                    }
                    for child in moved {
                        let _ = self.events.send(Event::ChildMoved(child));
                    }
                }
                Action::Established { ike_sa, peer } => {
                    self.retries.remove(&peer);
                    tracing::info!(%peer, ike_sa = %format!("{:016x}", ike_sa.0), "ipsec: IKE SA established");
                    let _ = self.events.send(Event::Established { ike_sa, peer });
                }
                Action::Failed {
                    ike_sa,
                    peer,
                    reason,
                } => {
                    tracing::warn!(%peer, ?reason, "ipsec: IKE SA failed");
                    self.schedule_reconnect(&peer);
                    let _ = self.events.send(Event::Failed {
                        ike_sa,
                        peer,
                        reason,
                    });
                }
                Action::IkeRekeyFailed {
                    ike_sa,
                    peer,
                    reason,
                } => {
                    tracing::warn!(%peer, ike_sa = %format!("{:016x}", ike_sa.0), ?reason, "ipsec: IKE SA rekey failed, carrying on unrekeyed");
                }
                Action::ChildFailed {
                    ike_sa,
                    peer,
                    reason,
                } => {
                    tracing::warn!(%peer, ?reason, "ipsec: CHILD_SA failed");
                    let _ = self.events.send(Event::ChildFailed {
                        ike_sa,
                        peer,
                        reason,
                    });
                }
                Action::Closed { ike_sa, peer } => {
                    tracing::info!(%peer, "ipsec: IKE SA closed");
                    let _ = self.events.send(Event::Closed { ike_sa, peer });
                }
            }
        }
        let virtual_ips = self.engine.virtual_ips();
        if let Ok(mut s) = self.state.lock() {
            log_virtual_ip_changes(&s.virtual_ips, &virtual_ips);
            s.ike_sas = self.engine.sas();
            s.counters = *self.engine.counters();
            s.virtual_ips = virtual_ips;
            s.pools = self.engine.pools();
        }
    }
}

/// Where a CHILD_SA's ESP goes: its outer addresses and, with NAT traversal, UDP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub local_addr: IpAddr,
    pub remote_addr: IpAddr,
    /// `(local port, remote port)` when ESP travels in UDP (RFC 3948).
    pub udp_encap: Option<(u16, u16)>,
}

/// Gives the installed CHILD_SAs named by `spis` (inbound, outbound) the tunnel `to`, in
/// place (their order, which the SPD follows, stays); returns those that changed. Keys and
/// SPIs stay: the dataplane finds its per-SA state by SPI, so the outbound sequence numbers
/// and the replay windows carry on across the republish.
pub fn move_children(
    children: &mut [Arc<ChildSaInstall>],
    spis: &[(u32, u32)],
    to: Tunnel,
) -> Vec<Arc<ChildSaInstall>> {
    let mut moved = Vec::new();
    for child in children.iter_mut() {
        let named = spis.contains(&(child.inbound.spi, child.outbound.spi));
        let current = Tunnel {
            local_addr: child.local_addr,
            remote_addr: child.remote_addr,
            udp_encap: child.udp_encap,
        };
        if !named || current == to {
            continue;
        }
        let mut next = ChildSaInstall::clone(child);
        next.local_addr = to.local_addr;
        next.remote_addr = to.remote_addr;
        next.udp_encap = to.udp_encap;
        *child = Arc::new(next);
        moved.push(Arc::clone(child));
    }
    moved
}

/// One line per virtual IP that came or went.
fn log_virtual_ip_changes(before: &[VirtualIp], after: &[VirtualIp]) {
    // Not by IKE SA: a rekeyed IKE SA takes its virtual IPs along.
    let same = |a: &VirtualIp, b: &VirtualIp| {
        a.address == b.address && a.peer == b.peer && a.pool == b.pool
    };
    for v in after.iter().filter(|v| !before.iter().any(|b| same(v, b))) {
        match &v.pool {
            Some(pool) => {
                tracing::info!(peer = %v.peer, address = %v.address, %pool, "ipsec: virtual IP leased")
            }
            None => {
                tracing::info!(peer = %v.peer, address = %v.address, "ipsec: virtual IP assigned to us")
            }
        }
    }
    for v in before.iter().filter(|v| !after.iter().any(|a| same(v, a))) {
        tracing::info!(peer = %v.peer, address = %v.address, leased = v.pool.is_some(), "ipsec: virtual IP released");
    }
}
