//! The tokio shell around the sans-IO core: it owns the TCP sockets and
//! the timers, drives one [`crate::fsm::Session`] per configured peer and
//! the shared [`crate::rib::Rib`], and tells the agent what changed.
//!
//! One task (the *core*) owns every session, the RIB and every timer, so
//! no lock is ever taken; the peer set may change while it runs
//! ([`SpeakerHandle::set_peers`], `add_peer`, `remove_peer`, and
//! [`SpeakerHandle::reconfigure`] for the local AS), and only the sessions
//! a change names are touched; per-connection reader and writer tasks move
//! bytes, and connect attempts run in their own tasks. A peer's error
//! ends that peer's session only: the core never panics on peer input
//! and every failure is handled per peer. Reads reach the core through a
//! bounded queue, so a peer that floods us is slowed by TCP flow control
//! rather than by our memory.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard_bgp::speaker::SpeakerError> {
//! use switchyard_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
//! let mut cfg = SpeakerConfig::new(65000, "198.51.100.1".parse().unwrap());
//! cfg.peers.push(PeerConfig::new("127.0.0.2".parse().unwrap(), 65001));
//! let (handle, mut events) = Speaker::start(cfg).await?;
//! handle.advertise(vec!["203.0.113.10/32".parse().unwrap()], None).await?;
//! while let Some(ev) = events.recv().await { /* program the FIB */ }
//! # Ok(()) }
//! ```

mod conn;
mod core;
pub mod peer_set;
mod state_file;

use crate::config::{AddPathMode, Family};
use crate::fsm::State;
use crate::policy::Policy;
use crate::rib::decision::IgpCost;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The well-known BGP port.
pub const BGP_PORT: u16 = 179;

/// Speaker-wide configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Where to accept connections; `None` makes every peer active-only.
    pub listen: Option<SocketAddr>,
    pub peers: Vec<PeerConfig>,
    /// Most next hops installed per prefix (1 = no ECMP).
    pub multipath_max: usize,
    /// Act as a route reflector (RFC 4456) with this cluster id.
    pub cluster_id: Option<Ipv4Addr>,
    /// Graceful restart of our own (RFC 4724 §4.1, the Restarting
    /// Speaker). `None`: we only help restarting peers and announce the
    /// capability without families.
    pub restart: Option<RestartConfig>,
}

/// Graceful restart as the Restarting Speaker (RFC 4724 §4.1).
///
/// The speaker keeps `state_dir/bgp-restart-state`
/// ([`crate::restart_state`]): the learned routes it has put into the FIB
/// (written when they change, at most every few seconds, and at
/// shutdown) and a heartbeat (the file's modification time, touched
/// every second). At start, a state younger than `restart_time` means we
/// restart: the saved routes are handed to the FIB at once (the first
/// [`SpeakerEvent::BestPathsChanged`]), our OPENs carry the Restart State
/// bit and the Forwarding State bit of every family, and route selection
/// is deferred ([`crate::restarting`]) until the peers' End-of-RIB or
/// `selection_deferral`. A missing, unreadable, corrupt or old file is
/// logged and the speaker starts normally.
///
/// Either way our OPENs announce graceful restart for our families with
/// `restart_time`, so peers keep our routes while we are away, and
/// [`SpeakerHandle::shutdown_for_restart`] ends sessions the way that
/// lets them: TCP closed, no NOTIFICATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartConfig {
    pub state_dir: PathBuf,
    /// The Restart Time we announce, in seconds (1..=4095).
    pub restart_time: u16,
    /// The Selection_Deferral_Timer.
    pub selection_deferral: Duration,
}

impl RestartConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            restart_time: crate::restarting::DEFAULT_RESTART_TIME_SECS,
            selection_deferral: Duration::from_secs(
                crate::restarting::DEFAULT_SELECTION_DEFERRAL_SECS.into(),
            ),
        }
    }
}

/// Our own graceful restart, as `switchyard show bgp` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartStatus {
    /// Restarting speaker configured (a state directory is set).
    pub enabled: bool,
    /// This start was a graceful restart (the state was young enough).
    pub restarted: bool,
    /// Families whose route selection is still deferred.
    pub deferred: Vec<Family>,
    /// Peers whose End-of-RIB we still wait for.
    pub waiting_for: Vec<IpAddr>,
    /// Time left on the Selection_Deferral_Timer.
    pub deferral_left: Option<Duration>,
    /// Restored routes still in the FIB awaiting selection.
    pub restored_routes: usize,
    /// Why the last start was or was not a restart.
    pub start_note: String,
}

impl SpeakerConfig {
    /// Listens on `0.0.0.0:179`, no peers, no multipath.
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> Self {
        Self {
            local_as,
            router_id,
            listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), BGP_PORT)),
            peers: Vec::new(),
            multipath_max: 1,
            cluster_id: None,
            restart: None,
        }
    }
}

/// One configured neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    /// The peer's BGP port for our active connects.
    pub port: u16,
    pub remote_as: u32,
    /// Source address of our connects. Defaults to the listen address
    /// when that is a specific address of the same family.
    pub local_address: Option<IpAddr>,
    /// Only accept connections from this peer, never connect.
    pub passive: bool,
    /// eBGP multihop: the TTL of our packets. Without it an eBGP session
    /// uses TTL 1 (directly connected); iBGP uses the system default.
    pub multihop_ttl: Option<u8>,
    /// RFC 2385 TCP MD5 signature key (at most 80 bytes).
    pub md5_password: Option<String>,
    pub route_reflector_client: bool,
    /// Proposed hold time in seconds (0, or at least 3).
    pub hold_time: u16,
    pub connect_retry_time: u16,
    /// Hold timer while waiting for the peer's OPEN.
    pub open_hold_time: u16,
    pub families: Vec<Family>,
    /// ADD-PATH (RFC 7911) per family. Receive: the peer may send several
    /// paths per prefix (a route reflector's, say), each a candidate for
    /// ECMP. Send: the peer hears every usable path of a prefix, not just
    /// the best (see [`crate::rib::adj_out`]).
    pub add_path: Vec<(Family, AddPathMode)>,
    /// Help this peer restart gracefully (RFC 4724 §4.2): when its
    /// session ends by TCP alone and it announced graceful restart, keep
    /// its routes (marked stale) for its Restart Time, and once it is back
    /// delete only those it did not announce again by its End-of-RIB.
    /// Without [`SpeakerConfig::restart`] we announce the capability
    /// without families (we keep no forwarding state of our own across a
    /// restart); with it, our families too, and the peer counts for our
    /// own restart's deferral. Off: no capability at all. On by default,
    /// as in most routers.
    pub graceful_restart: bool,
    /// Longest wait, in seconds, for a restarted peer's End-of-RIB before
    /// its remaining stale routes are deleted.
    pub stale_routes_time: u16,
    /// Next hop we announce for IPv4 routes when we are the next hop
    /// (eBGP, or our own routes without one). Defaults to the local
    /// address of the TCP connection when that is IPv4.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// The same for IPv6; defaults to the connection's local address
    /// when that is IPv6. An IPv6 family over an IPv4 session needs it.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Most paths (prefixes; more under ADD-PATH) kept from this peer per
    /// family, after import policy (RFC 4271 §6.7). One more ends the
    /// session with Cease / Maximum Number of Prefixes Reached (RFC 4486
    /// §4: the family and the limit as data); its routes go, and the
    /// session stays down (connections refused with Connection Rejected)
    /// for its ConnectRetryTime before it starts again. `None`: no limit.
    pub max_prefixes: Option<u32>,
    pub import: Policy,
    /// `None`: the default (RFC 8212 §3, see [`crate::rib::PeerInfo::export`]):
    /// to an eBGP peer only the routes we originate, to iBGP everything.
    pub export: Option<Policy>,
}

impl PeerConfig {
    pub fn new(address: IpAddr, remote_as: u32) -> Self {
        Self {
            address,
            port: BGP_PORT,
            remote_as,
            local_address: None,
            passive: false,
            multihop_ttl: None,
            md5_password: None,
            route_reflector_client: false,
            hold_time: 90,
            connect_retry_time: 120,
            open_hold_time: 240,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            add_path: Vec::new(),
            graceful_restart: true,
            stale_routes_time: crate::graceful_restart::DEFAULT_STALE_SECS,
            next_hop_v4: None,
            next_hop_v6: None,
            max_prefixes: None,
            import: Policy::accept_all(),
            export: None,
        }
    }
}

/// Errors of the shell itself (protocol errors end one session and are
/// reported as [`SpeakerEvent::SessionDown`]).
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TCP MD5 key for {peer}: {source}")]
    Md5 {
        peer: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the speaker has stopped")]
    Stopped,
}

/// What the agent hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeakerEvent {
    SessionUp {
        peer: IpAddr,
        asn: u32,
    },
    SessionDown {
        peer: IpAddr,
        reason: String,
    },
    /// Learned routes whose ECMP set changed, in one batch per burst of
    /// input so the FIB is rebuilt once, not once per prefix.
    BestPathsChanged(Vec<BestPaths>),
}

/// The next hops to install for a prefix; empty means remove it. Our own
/// originated routes never appear here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestPaths {
    pub prefix: IpNet,
    pub next_hops: Vec<IpAddr>,
}

/// One neighbour as `switchyard show bgp` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborStatus {
    pub addr: IpAddr,
    pub asn: u32,
    pub state: State,
    /// Time since the session reached Established.
    pub uptime: Option<Duration>,
    pub prefixes_in: usize,
    pub prefixes_out: usize,
    /// Times the session left Established.
    pub flaps: u64,
    /// Why the session last went down.
    pub last_error: Option<String>,
    /// Errors the current session handled (RFC 7606 treat-as-withdraw and attribute
    /// discard, ignored prefixes, NOTIFICATIONs both ways).
    pub errors: crate::fsm::ErrorCounters,
}

/// A prefix with every candidate path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub prefix: IpNet,
    pub paths: Vec<RoutePath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePath {
    /// `None` for routes we originate.
    pub peer: Option<IpAddr>,
    pub next_hop: Option<IpAddr>,
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub best: bool,
    /// Member of the ECMP set (the best path included).
    pub multipath: bool,
    /// Kept from a peer that is restarting (RFC 4724): still used, until
    /// the peer announces it again or its End-of-RIB says it is gone.
    pub stale: bool,
    /// Put back into the FIB from the saved state after our own restart
    /// (always stale too); in force until route selection runs.
    pub restored: bool,
}

/// A route we originate (service VIP, pod CIDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalRoute {
    pub prefix: IpNet,
    /// `None`: each peer gets our session address (or the configured
    /// `next_hop_v4`/`next_hop_v6`).
    pub next_hop: Option<IpAddr>,
}

/// What a change of the peer set did, by address (never the settings:
/// they may hold passwords).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<IpAddr>,
    /// Restarted with new settings.
    pub changed: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

impl PeerChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug)]
enum Command {
    Advertise(Vec<LocalRoute>),
    Withdraw(Vec<IpNet>),
    SetLocalRoutes(Vec<LocalRoute>),
    Neighbors(oneshot::Sender<Vec<NeighborStatus>>),
    Routes(oneshot::Sender<Vec<RouteEntry>>),
    SetPeers(Vec<PeerConfig>, oneshot::Sender<PeerChanges>),
    AddPeer(Box<PeerConfig>, oneshot::Sender<PeerChanges>),
    RemovePeer(IpAddr, oneshot::Sender<PeerChanges>),
    Reconfigure {
        local_as: u32,
        cluster_id: Option<Ipv4Addr>,
        reply: oneshot::Sender<bool>,
    },
    RestartStatus(oneshot::Sender<RestartStatus>),
    SetNextHopResolver(Arc<dyn IgpCost + Send + Sync>),
    /// `true`: for a restart (TCP closed without NOTIFICATION where the
    /// peer keeps our routes).
    Shutdown(bool, oneshot::Sender<()>),
}

/// Entry point.
pub struct Speaker;

impl Speaker {
    /// Validates `config`, binds the listener and spawns the speaker on
    /// the current tokio runtime. Sessions start at once.
    pub async fn start(
        config: SpeakerConfig,
    ) -> Result<(SpeakerHandle, mpsc::UnboundedReceiver<SpeakerEvent>), SpeakerError> {
        validate(&config)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let local_addr = core::spawn(config, cmd_rx, ev_tx)?;
        Ok((
            SpeakerHandle {
                tx: cmd_tx,
                local_addr,
            },
            ev_rx,
        ))
    }
}

fn validate(c: &SpeakerConfig) -> Result<(), SpeakerError> {
    if c.router_id.is_unspecified() {
        return Err(SpeakerError::Config("router id 0.0.0.0".into()));
    }
    if let Some(r) = &c.restart {
        // RFC 4724 §3: 12 bits; 0 would tell the peers not to wait at all.
        if !(1..=4095).contains(&r.restart_time) {
            return Err(SpeakerError::Config(
                "graceful restart time must be 1-4095 seconds".into(),
            ));
        }
        if r.selection_deferral.is_zero() {
            return Err(SpeakerError::Config("selection deferral time 0".into()));
        }
    }
    if c.local_as == 0 {
        return Err(SpeakerError::Config("local AS 0".into()));
    }
    validate_peers(&c.peers, c.listen.is_some())
}

/// A whole peer set: each peer, and no address twice.
fn validate_peers(peers: &[PeerConfig], listening: bool) -> Result<(), SpeakerError> {
    for (i, p) in peers.iter().enumerate() {
        if peers[..i].iter().any(|q| q.address == p.address) {
            return Err(SpeakerError::Config(format!(
                "peer {} configured twice",
                p.address
            )));
        }
        validate_peer(p, listening)?;
    }
    Ok(())
}

fn validate_peer(p: &PeerConfig, listening: bool) -> Result<(), SpeakerError> {
    let err = |m: &str| Err(SpeakerError::Config(format!("peer {}: {m}", p.address)));
    if p.remote_as == 0 {
        return err("remote AS 0");
    }
    if matches!(p.hold_time, 1 | 2) {
        return err("hold time must be 0 or >= 3");
    }
    if p.connect_retry_time == 0 || p.open_hold_time == 0 {
        return err("connect retry or OPEN hold time 0");
    }
    if p.multihop_ttl == Some(0) {
        return err("multihop TTL 0");
    }
    if let Some(k) = &p.md5_password {
        if k.is_empty() || k.len() > switchyard_io::tcp_md5::MAX_KEY_LEN {
            return err("MD5 password of 1..=80 bytes");
        }
    }
    if p.passive && !listening {
        return err("passive, but nothing listens");
    }
    Ok(())
}

/// Talks to a running speaker; cheap to clone. Dropping every handle
/// stops the speaker (sessions get Cease / Administrative Shutdown).
#[derive(Debug, Clone)]
pub struct SpeakerHandle {
    tx: mpsc::Sender<Command>,
    local_addr: Option<SocketAddr>,
}

impl SpeakerHandle {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    async fn send(&self, c: Command) -> Result<(), SpeakerError> {
        self.tx.send(c).await.map_err(|_| SpeakerError::Stopped)
    }

    /// Originates `prefixes` (added to what is already advertised).
    pub async fn advertise(
        &self,
        prefixes: Vec<IpNet>,
        next_hop: Option<IpAddr>,
    ) -> Result<(), SpeakerError> {
        let routes = prefixes
            .into_iter()
            .map(|prefix| LocalRoute { prefix, next_hop })
            .collect();
        self.send(Command::Advertise(routes)).await
    }

    pub async fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), SpeakerError> {
        self.send(Command::Withdraw(prefixes)).await
    }

    /// Replaces the whole set of originated routes; only the difference
    /// goes on the wire. What a reconciler wants.
    pub async fn set_local_routes(&self, routes: Vec<LocalRoute>) -> Result<(), SpeakerError> {
        self.send(Command::SetLocalRoutes(routes)).await
    }

    pub async fn neighbors(&self) -> Result<Vec<NeighborStatus>, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Neighbors(tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Loc-RIB with every candidate path, prefixes in order.
    pub async fn routes(&self) -> Result<Vec<RouteEntry>, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Routes(tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Makes `peers` the peer set: peers not in it are stopped with
    /// Cease / Peer De-configured (RFC 4486) and what they taught us is
    /// withdrawn, peers whose settings changed restart (Cease / Other
    /// Configuration Change), new ones start; the others are not touched.
    /// An invalid set is refused whole and the running one kept.
    pub async fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<PeerChanges, SpeakerError> {
        validate_peers(&peers, self.local_addr.is_some())?;
        let (tx, rx) = oneshot::channel();
        self.send(Command::SetPeers(peers, tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Adds a peer, or replaces the one with the same address (which then
    /// restarts if its settings differ).
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<PeerChanges, SpeakerError> {
        validate_peer(&peer, self.local_addr.is_some())?;
        let (tx, rx) = oneshot::channel();
        self.send(Command::AddPeer(Box::new(peer), tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Stops the session with `addr` (Cease / Peer De-configured) and
    /// forgets the peer; its routes are withdrawn.
    pub async fn remove_peer(&self, addr: IpAddr) -> Result<PeerChanges, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::RemovePeer(addr, tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// A new local AS and route-reflector cluster id. If either differs,
    /// every session restarts (Cease / Other Configuration Change) and the
    /// learned routes are withdrawn until they are learned again; our own
    /// routes stay. True if anything changed.
    pub async fn reconfigure(
        &self,
        local_as: u32,
        cluster_id: Option<Ipv4Addr>,
    ) -> Result<bool, SpeakerError> {
        if local_as == 0 {
            return Err(SpeakerError::Config("local AS 0".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Reconfigure {
            local_as,
            cluster_id,
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Closes every session with Cease / Administrative Shutdown and
    /// stops the speaker.
    pub async fn shutdown(&self) -> Result<(), SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(false, tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Stops the speaker to restart it (RFC 4724 §4.1): the restart state
    /// is saved, and sessions whose peer keeps our routes across a restart
    /// (graceful restart negotiated, our families announced) end with a
    /// bare TCP close so that it does; the others get Cease /
    /// Administrative Shutdown. Without [`SpeakerConfig::restart`] this is
    /// [`SpeakerHandle::shutdown`].
    pub async fn shutdown_for_restart(&self) -> Result<(), SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(true, tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Decides from now on which next hops are reachable (RFC 4271
    /// §9.1.2.1: a route whose next hop is not is neither selected nor
    /// advertised) and at what IGP cost, and runs route selection again
    /// for every prefix: give a new one whenever the node's interfaces,
    /// addresses or static routes change. Until the first, every next hop
    /// is taken as reachable at cost 0.
    pub async fn set_next_hop_resolver(
        &self,
        resolver: Arc<dyn IgpCost + Send + Sync>,
    ) -> Result<(), SpeakerError> {
        self.send(Command::SetNextHopResolver(resolver)).await
    }

    /// Our own graceful restart: whether route selection is deferred and
    /// for whom we wait.
    pub async fn restart_status(&self) -> Result<RestartStatus, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::RestartStatus(tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }
}
