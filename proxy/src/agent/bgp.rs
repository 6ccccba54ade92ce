//! BGP in the agent: the `--bgp-*` flags, the peers (flags, Node annotations and the iBGP
//! mesh among the nodes, see [`nodes`]), the routes we originate (Service addresses and the
//! node's pod CIDRs) and the learned routes that go into the dataplane FIB.
//!
//! The speaker ([`switchyard_bgp::speaker`]) runs on a tokio runtime of its own ("bgp"
//! thread). The control-plane thread talks to it through channels: it hands over the full set
//! of routes to originate after every sync (the speaker sends only the difference), the whole
//! peer set whenever a Node change alters it (the speaker touches only the sessions that
//! differ), and it drains the learned ECMP sets between short waits on the cluster source, so
//! a learned route reaches the FIB within about 50 ms. Once a second the BGP thread reads the
//! neighbors, the Loc-RIB and our graceful-restart state into [`Shared`] for `switchyard show
//! bgp` and `/metrics`.
//!
//! With `--bgp-state-dir` the agent restarts gracefully (RFC 4724 §4.1, see
//! [`switchyard_bgp::speaker::RestartConfig`]): the speaker keeps the learned routes in a state
//! file, the agent's exit ([`Stopper`]) closes sessions without NOTIFICATION, and on the next
//! start the speaker's first learned batch is the saved routes, so they reach the FIB before
//! any session is up.

pub mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use ipnet::IpNet;
use switchyard_bgp::config::{AddPathMode, Family};
use switchyard_bgp::policy::Policy;
use switchyard_bgp::rib::decision::{IgpCost, Reach};
use switchyard_bgp::speaker::{
    BestPaths, LocalRoute, PeerConfig, RestartConfig, Speaker, SpeakerConfig, SpeakerError,
    SpeakerEvent, SpeakerHandle, BGP_PORT,
};
use switchyard_dataplane::fib::{Fib, Route};
use switchyard_dataplane::tables::{RouteTarget, StaticRoute, Tables};
use switchyard_lb::service::{Service, TrafficPolicy};

use crate::agent::objects::ObjectStore;
use crate::cli::{AgentArgs, BgpAdvertise};
use crate::state::{Shared, BGP_ROUTES_SAMPLE};

/// How often the BGP thread refreshes the snapshot in [`Shared`].
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Which kinds of routes we originate (`--bgp-advertise`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Advertise {
    pub cluster_ip: bool,
    pub external_ip: bool,
    pub load_balancer_ip: bool,
    pub pod_cidr: bool,
}

impl Advertise {
    /// From the flag's list; `none` must stand alone.
    pub fn from_kinds(kinds: &[BgpAdvertise]) -> anyhow::Result<Self> {
        let mut a = Advertise::default();
        if kinds.contains(&BgpAdvertise::None) {
            if kinds.len() > 1 {
                bail!("--bgp-advertise: `none` cannot be combined with other kinds");
            }
            return Ok(a);
        }
        for k in kinds {
            match k {
                BgpAdvertise::ClusterIp => a.cluster_ip = true,
                BgpAdvertise::ExternalIp => a.external_ip = true,
                BgpAdvertise::LoadBalancerIp => a.load_balancer_ip = true,
                BgpAdvertise::PodCidr => a.pod_cidr = true,
                BgpAdvertise::None => {}
            }
        }
        Ok(a)
    }
}

/// The speaker's settings from the flags (router id still to be defaulted).
#[derive(Clone)]
pub struct Settings {
    pub local_as: u32,
    pub router_id: Option<Ipv4Addr>,
    pub listen: Option<std::net::SocketAddr>,
    pub peers: Vec<PeerConfig>,
    pub advertise: Advertise,
    pub multipath: usize,
    pub cluster_id: Option<Ipv4Addr>,
    /// Peer with the other nodes (`--bgp-ibgp-mesh`).
    pub ibgp_mesh: bool,
    /// `--bgp-next-hop`, for the peers that come from Node objects too.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Graceful restart of our own (`--bgp-state-dir`); `None`: helper only.
    pub restart: Option<RestartConfig>,
}

// By hand: the peers' MD5 passwords must never reach a log.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("local_as", &self.local_as)
            .field("router_id", &self.router_id)
            .field("listen", &self.listen)
            .field(
                "peers",
                &self
                    .peers
                    .iter()
                    .map(|p| (p.address, p.remote_as))
                    .collect::<Vec<_>>(),
            )
            .field("advertise", &self.advertise)
            .field("multipath", &self.multipath)
            .field("cluster_id", &self.cluster_id)
            .field("ibgp_mesh", &self.ibgp_mesh)
            .field("next_hop_v4", &self.next_hop_v4)
            .field("next_hop_v6", &self.next_hop_v6)
            .field("restart", &self.restart)
            .finish()
    }
}

impl Settings {
    /// `None` when `--bgp-asn` is not given.
    pub fn from_args(args: &AgentArgs) -> anyhow::Result<Option<Self>> {
        let Some(local_as) = args.bgp_asn else {
            return Ok(None);
        };
        if local_as == 0 {
            bail!("--bgp-asn 0: not a valid AS number");
        }
        if args.bgp_multipath == 0 {
            bail!("--bgp-multipath 0: must be at least 1 (1 turns ECMP off)");
        }
        let mut nh4 = None;
        let mut nh6 = None;
        for nh in &args.bgp_next_hop {
            let slot_taken = match nh {
                IpAddr::V4(a) => nh4.replace(*a).is_some(),
                IpAddr::V6(a) => nh6.replace(*a).is_some(),
            };
            if slot_taken {
                bail!("--bgp-next-hop: give at most one IPv4 and one IPv6 address");
            }
            if nh.is_unspecified() || nh.is_multicast() || nh.is_loopback() {
                bail!("--bgp-next-hop {nh}: not a usable next hop");
            }
        }
        let mut peers: Vec<PeerConfig> = Vec::new();
        for spec in &args.bgp_peers {
            let mut p = parse_peer(spec)?;
            if peers.iter().any(|q| q.address == p.address) {
                bail!("--bgp-peer {}: given twice", p.address);
            }
            p.next_hop_v4 = nh4;
            p.next_hop_v6 = nh6;
            peers.push(p);
        }
        if !(1..=4095).contains(&args.bgp_graceful_restart_time) {
            bail!(
                "--bgp-graceful-restart-time {}: must be 1-4095 seconds (RFC 4724: 12 bits)",
                args.bgp_graceful_restart_time
            );
        }
        if args.bgp_selection_deferral_time == 0 {
            bail!("--bgp-selection-deferral-time 0: must be at least 1 second");
        }
        let restart = args.bgp_state_dir.as_ref().map(|dir| {
            let mut r = RestartConfig::new(dir.clone());
            r.restart_time = args.bgp_graceful_restart_time;
            r.selection_deferral = Duration::from_secs(args.bgp_selection_deferral_time.into());
            r
        });
        let listen = args.bgp_listen.0;
        if listen.is_none() {
            if let Some(p) = peers.iter().find(|p| p.passive) {
                bail!("--bgp-peer {}: passive, but --bgp-listen is off", p.address);
            }
        }
        Ok(Some(Settings {
            local_as,
            router_id: args.bgp_router_id,
            listen,
            peers,
            advertise: Advertise::from_kinds(&args.bgp_advertise)?,
            multipath: args.bgp_multipath,
            cluster_id: args.bgp_cluster_id,
            ibgp_mesh: args.bgp_ibgp_mesh,
            next_hop_v4: nh4,
            next_hop_v6: nh6,
            restart,
        }))
    }
}

/// `spec` with the password replaced, for error messages.
fn redact(spec: &str) -> String {
    spec.split(',')
        .map(|p| {
            if p.starts_with("password=") {
                "password=<redacted>"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `--bgp-peer ADDR=ASN[,port=N][,passive][,password=SECRET][,multihop=TTL]
/// [,rr-client][,hold=SECS][,connect-retry=SECS][,add-path=send|receive|both|off]
/// [,graceful-restart=on|off][,stale-time=SECS][,import=all|none][,max-prefix=N]`. Errors
/// never contain the password.
pub fn parse_peer(spec: &str) -> anyhow::Result<PeerConfig> {
    let shown = redact(spec);
    let err = |why: String| anyhow!("--bgp-peer {shown:?}: {why}");
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or_default();
    let (addr, asn) = head
        .split_once('=')
        .ok_or_else(|| err("expected ADDR=ASN[,OPTION...]".into()))?;
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| err(format!("{addr:?} is not an IP address")))?;
    let asn: u32 = match asn.trim().parse() {
        Ok(a) if a != 0 => a,
        _ => return Err(err(format!("{asn:?} is not an AS number (1-4294967295)"))),
    };
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(err(format!("{addr} cannot be a peer")));
    }
    let mut p = PeerConfig::new(addr, asn);
    for opt in parts {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (opt.trim(), None),
        };
        match (key, value) {
            ("passive", None) => p.passive = true,
            ("rr-client", None) => p.route_reflector_client = true,
            ("port", Some(v)) => {
                p.port = match v.trim().parse::<u16>() {
                    Ok(n) if n != 0 => n,
                    _ => return Err(err(format!("port {v:?} is not a port number (1-65535)"))),
                }
            }
            ("password", Some(v)) => {
                if v.is_empty() || v.len() > 80 {
                    return Err(err("the password must be 1 to 80 bytes".into()));
                }
                p.md5_password = Some(v.to_string());
            }
            ("multihop", Some(v)) => {
                p.multihop_ttl = match v.trim().parse::<u8>() {
                    Ok(n) if n != 0 => Some(n),
                    _ => return Err(err(format!("multihop {v:?} is not a TTL (1-255)"))),
                }
            }
            ("add-path", Some(v)) => {
                // RFC 7911 for both unicast families: what we offer to send and to receive.
                let (send, receive) = match v.trim() {
                    "send" => (true, false),
                    "receive" => (false, true),
                    "both" => (true, true),
                    "off" => (false, false),
                    _ => {
                        return Err(err(format!(
                            "add-path {v:?}: expected send, receive, both or off"
                        )))
                    }
                };
                p.add_path = if send || receive {
                    Family::ALL
                        .iter()
                        .map(|&f| (f, AddPathMode { send, receive }))
                        .collect()
                } else {
                    Vec::new()
                };
            }
            ("graceful-restart", Some(v)) => {
                // Whether we help this peer restart (RFC 4724 §4.2); on by default.
                p.graceful_restart = match v.trim() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(err(format!("graceful-restart {v:?}: expected on or off"))),
                }
            }
            ("stale-time", Some(v)) => {
                p.stale_routes_time = match v.trim().parse::<u16>() {
                    Ok(n) if n != 0 => n,
                    _ => {
                        return Err(err(format!(
                            "stale-time {v:?}: seconds to keep a restarting peer's stale \
                             routes after it is back (1-65535)"
                        )))
                    }
                }
            }
            ("hold", Some(v)) => {
                p.hold_time = match v.trim().parse::<u16>() {
                    Ok(n) if n == 0 || n >= 3 => n,
                    _ => {
                        return Err(err(format!(
                            "hold {v:?}: a hold time is 0 or 3-65535 seconds"
                        )))
                    }
                }
            }
            ("import", Some(v)) => {
                // RFC 8212 has eBGP import off by default; learning the upstream router's
                // routes is what BGP is for here, so ours is on, and this turns it off.
                p.import = match v.trim() {
                    "all" => Policy::accept_all(),
                    "none" => Policy {
                        rules: Vec::new(),
                        default_accept: false,
                    },
                    _ => return Err(err(format!("import {v:?}: expected all or none"))),
                }
            }
            ("max-prefix", Some(v)) => {
                // RFC 4271 §6.7: past it, Cease / Maximum Number of Prefixes Reached.
                p.max_prefixes = match v.trim().parse::<u32>() {
                    Ok(n) if n != 0 => Some(n),
                    _ => {
                        return Err(err(format!(
                            "max-prefix {v:?}: most prefixes taken from the peer per family \
                             (1-4294967295)"
                        )))
                    }
                }
            }
            ("connect-retry", Some(v)) => {
                p.connect_retry_time = match v.trim().parse::<u16>() {
                    Ok(n) if n != 0 => n,
                    _ => {
                        return Err(err(format!(
                            "connect-retry {v:?}: seconds between connection attempts (1-65535)"
                        )))
                    }
                }
            }
            _ => {
                let shown_opt = if key == "password" { "password" } else { opt };
                return Err(err(format!(
                    "unknown option {shown_opt:?} (port=N, passive, password=SECRET, \
                     multihop=TTL, rr-client, hold=SECS, connect-retry=SECS, \
                     add-path=send|receive|both|off, graceful-restart=on|off, stale-time=SECS, \
                     import=all|none, max-prefix=N)"
                )));
            }
        }
    }
    Ok(p)
}

/// A host prefix for an address (/32 or /128).
fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// True if the Service has a ready endpoint on this node (on any port).
fn has_local_ready_endpoint(s: &Service) -> bool {
    s.ports
        .iter()
        .any(|p| p.endpoints.iter().any(|e| e.is_local && e.ready))
}

/// The routes to originate: the Service addresses `advertise` asks for, as host routes
/// (external and load-balancer IPs of externalTrafficPolicy Local Services only while they
/// have a ready endpoint on this node), and the node's pod CIDRs. Sorted, no duplicates.
pub fn local_routes<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    pod_cidrs: &[IpNet],
    advertise: Advertise,
) -> Vec<LocalRoute> {
    let mut prefixes = BTreeSet::new();
    for s in services {
        if advertise.cluster_ip {
            prefixes.extend(s.cluster_ips.iter().copied().map(host));
        }
        let external_here =
            s.external_traffic_policy != TrafficPolicy::Local || has_local_ready_endpoint(s);
        if external_here {
            if advertise.external_ip {
                prefixes.extend(s.external_ips.iter().copied().map(host));
            }
            if advertise.load_balancer_ip {
                prefixes.extend(s.load_balancer_ips.iter().copied().map(host));
            }
        }
    }
    if advertise.pod_cidr {
        prefixes.extend(pod_cidrs.iter().map(IpNet::trunc));
    }
    prefixes
        .into_iter()
        .map(|prefix| LocalRoute {
            prefix,
            next_hop: None,
        })
        .collect()
}

/// What the node reaches without BGP: the routes of the base tables (its addresses, attached
/// subnets and `--route`s), against which the speaker checks every learned next hop (RFC
/// 4271 §9.1.2.1: a route whose next hop does not resolve is not usable: it is neither
/// selected nor advertised, so a peer with a reachable next hop for the prefix wins) and
/// [`fib_routes`] resolves the next hops it installs. The base tables are built once, from the
/// flags, and do not change while the agent runs; a new set would be handed to the speaker
/// with [`SpeakerHandle::set_next_hop_resolver`], which runs route selection again.
/// How the dataplane reaches a next hop ([`NonBgpRoutes::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Gateway and port of each way (the port `None` when the gateway is on an attached
    /// subnet: the FIB finds it).
    pub ways: Vec<(IpAddr, Option<u16>)>,
    /// The next hop is on an attached subnet or an on-link route: directly connected.
    pub connected: bool,
}

#[derive(Debug, Clone, Default)]
pub struct NonBgpRoutes {
    fib: Fib,
}

impl NonBgpRoutes {
    pub fn new(base: &Tables) -> Self {
        Self {
            fib: base.fib.clone(),
        }
    }

    /// How the dataplane reaches `hop` ([`resolve_next_hop`] in the base tables' FIB).
    pub fn resolve(&self, hop: IpAddr) -> Option<Resolved> {
        resolve_next_hop(&self.fib, hop)
    }
}

/// How the dataplane reaches `hop` through `fib` (the base tables' routes, without BGP's).
/// `None` when it cannot be reached: no route, a blackhole or unreachable route, an address
/// of this node (not a next hop anyone else can use for us), or only the default route
/// (which would make every next hop look reachable; FRR does not resolve next hops over it
/// either).
pub fn resolve_next_hop(fib: &Fib, hop: IpAddr) -> Option<Resolved> {
    let (prefix, route) = fib.lookup_prefix(hop)?;
    if prefix.prefix_len() == 0 {
        return None;
    }
    match route {
        // The port is found from the subnet when the route is built.
        Route::Attached { .. } => Some(Resolved {
            ways: vec![(hop, None)],
            connected: true,
        }),
        Route::Via(paths) => Some(Resolved {
            ways: paths
                .iter()
                .map(|nh| (nh.gateway.unwrap_or(hop), Some(nh.port)))
                .collect(),
            connected: paths.iter().all(|nh| nh.gateway.is_none()),
        }),
        Route::Local | Route::Blackhole | Route::Unreachable => None,
    }
}

impl IgpCost for NonBgpRoutes {
    /// No IGP here: a resolvable next hop costs 0, so equal paths stay equal for ECMP.
    fn cost(&self, next_hop: Option<IpAddr>, reach: Reach) -> Option<u32> {
        let r = self.resolve(next_hop?)?;
        (r.connected || reach == Reach::Resolved).then_some(0)
    }
}

/// The learned routes as static routes for [`Tables::with_extra_routes`]: each prefix with
/// its next hops resolved against `base` ([`resolve_next_hop`]: on an attached subnet,
/// or through a static route's gateways). Prefixes `base` already routes (our addresses,
/// attached subnets, `--route`s) are left out: those win.
pub fn fib_routes(learned: &BTreeMap<IpNet, Vec<IpAddr>>, base: &Tables) -> Vec<StaticRoute> {
    let mut out = Vec::new();
    for (prefix, hops) in learned {
        if base.fib.get(*prefix).is_some() {
            tracing::debug!(%prefix, "learned route not installed: a local or static route wins");
            continue;
        }
        let mut via = Vec::new();
        for &hop in hops {
            if hop.is_ipv4() != prefix.addr().is_ipv4() {
                tracing::debug!(%prefix, next_hop = %hop, "next hop of the other family; skipped");
                continue;
            }
            match resolve_next_hop(&base.fib, hop) {
                Some(r) => {
                    for (gateway, port) in r.ways {
                        if !via.contains(&(Some(gateway), port)) {
                            via.push((Some(gateway), port));
                        }
                    }
                }
                None => {
                    tracing::debug!(%prefix, next_hop = %hop, "next hop does not resolve; skipped")
                }
            }
        }
        if !via.is_empty() {
            out.push(StaticRoute {
                prefix: *prefix,
                target: RouteTarget::Via(via),
            });
        }
    }
    out
}

/// Gives the speaker a planned AS, cluster id and peer set; false once it has stopped.
async fn apply_plan(h: &SpeakerHandle, plan: nodes::Plan) -> bool {
    match h.reconfigure(plan.local_as, plan.cluster_id).await {
        Ok(true) => tracing::info!(
            asn = plan.local_as,
            cluster_id = ?plan.cluster_id,
            "BGP: local AS or route-reflector cluster id changed; every session restarts"
        ),
        Ok(false) => {}
        Err(SpeakerError::Stopped) => return false,
        Err(e) => {
            tracing::warn!(error = %e, "BGP: new local AS refused; the running settings stay");
            return true;
        }
    }
    match h.set_peers(plan.peers).await {
        Ok(c) if !c.is_empty() => {
            let with_source = |addrs: &[IpAddr]| {
                addrs
                    .iter()
                    .map(|a| {
                        let source = plan.sources.get(a).map_or("", |s| s.as_str());
                        format!("{a} ({source})")
                    })
                    .collect::<Vec<_>>()
            };
            tracing::info!(
                added = ?with_source(&c.added),
                changed = ?with_source(&c.changed),
                removed = ?c.removed,
                "BGP peers changed"
            );
        }
        Ok(_) => {}
        Err(SpeakerError::Stopped) => return false,
        Err(e) => tracing::warn!(error = %e, "BGP: peer set refused; the running one stays"),
    }
    true
}

/// Stops the speaker from another thread when the agent exits: the peers get Cease /
/// Administrative Shutdown instead of a bare TCP close. With `--bgp-state-dir` the agent's
/// exit is taken as a restart (a rollout, a SIGTERM): the restart state is saved and the
/// peers that keep our routes across it get the bare TCP close that lets them (RFC 4724).
#[derive(Clone)]
pub struct Stopper {
    runtime: tokio::runtime::Handle,
    speaker: SpeakerHandle,
    for_restart: bool,
}

impl Stopper {
    /// Closes every session, waiting at most `limit`.
    pub fn stop(&self, limit: Duration) {
        let speaker = self.speaker.clone();
        let for_restart = self.for_restart;
        let done = self.runtime.block_on(async move {
            let stop = async {
                if for_restart {
                    speaker.shutdown_for_restart().await
                } else {
                    speaker.shutdown().await
                }
            };
            tokio::time::timeout(limit, stop).await
        });
        match done {
            Ok(Ok(())) => tracing::info!("BGP sessions closed"),
            Ok(Err(e)) => tracing::debug!(error = %e, "BGP speaker already stopped"),
            Err(_) => tracing::warn!("BGP sessions not closed in {limit:?}"),
        }
    }
}

/// The running speaker, as the control-plane thread sees it.
pub struct Bgp {
    /// Keeps the speaker's runtime (and so the speaker) alive.
    _runtime: tokio::runtime::Runtime,
    routes_tx: tokio::sync::mpsc::UnboundedSender<Vec<LocalRoute>>,
    plan_tx: tokio::sync::mpsc::UnboundedSender<nodes::Plan>,
    /// The flags the peer set is planned from.
    defaults: nodes::Defaults,
    /// The Nodes' last good annotations.
    node_peers: nodes::NodePeers,
    /// The peer set last handed to the speaker; `None` until the first.
    last_plan: Option<nodes::Plan>,
    learned_rx: std::sync::mpsc::Receiver<Vec<BestPaths>>,
    /// Prefix → ECMP next hops, as the speaker last said.
    learned: BTreeMap<IpNet, Vec<IpAddr>>,
    last_local: Option<Vec<LocalRoute>>,
    pub advertise: Advertise,
    /// For [`Stopper`].
    pub stopper: Stopper,
}

impl Bgp {
    /// Binds the listener and starts the `--bgp-peer` sessions (they need no cluster); the
    /// router id defaults to the first IPv4 address of the dataplane ports in `base`. The
    /// peers from Node objects join with the first [`Bgp::update_peers`].
    pub fn start(settings: Settings, base: &Tables, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let router_id = match settings.router_id {
            Some(id) => id,
            None => base
                .interfaces
                .iter()
                .find_map(|i| i.primary_ipv4())
                .ok_or_else(|| {
                    anyhow!("BGP: no IPv4 address on the dataplane ports; give --bgp-router-id")
                })?,
        };
        let mut config = SpeakerConfig::new(settings.local_as, router_id);
        config.listen = settings.listen;
        config.multipath_max = settings.multipath;
        // A route reflector's cluster id defaults to its router id (as in BIRD and FRR); the
        // Node plan computes it the same way, so its first set does not restart anything.
        config.cluster_id = settings.cluster_id.or_else(|| {
            settings
                .peers
                .iter()
                .any(|p| p.route_reflector_client)
                .then_some(router_id)
        });
        let peers: Vec<(IpAddr, u32)> = settings
            .peers
            .iter()
            .map(|p| (p.address, p.remote_as))
            .collect();
        config.peers = settings.peers.clone();
        config.restart = settings.restart.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bgp")
            .enable_all()
            .build()
            .context("starting the BGP runtime")?;
        let (handle, mut events) = runtime
            .block_on(Speaker::start(config))
            .map_err(|e| anyhow!("BGP: {e}"))?;
        // A learned route is usable only if the dataplane can reach its next hop. Given at
        // once: anything learned before it arrives is decided again.
        runtime
            .block_on(handle.set_next_hop_resolver(Arc::new(NonBgpRoutes::new(base))))
            .map_err(|e| anyhow!("BGP: {e}"))?;
        tracing::info!(
            asn = settings.local_as,
            %router_id,
            listen = ?handle.local_addr(),
            ?peers,
            ibgp_mesh = settings.ibgp_mesh,
            "BGP speaker started"
        );
        let defaults = nodes::Defaults {
            asn: settings.local_as,
            static_peers: settings.peers,
            mesh: settings.ibgp_mesh,
            // Every node listens on the same port, ours (kube-router's --bgp-port).
            mesh_port: handle.local_addr().map_or(BGP_PORT, |a| a.port()),
            cluster_id: settings.cluster_id,
            router_id,
            next_hop_v4: settings.next_hop_v4,
            next_hop_v6: settings.next_hop_v6,
        };
        shared.update_bgp(|b| {
            b.enabled = true;
            b.local_as = settings.local_as;
            b.router_id = Some(router_id);
            b.peer_sources = peers
                .iter()
                .map(|(addr, _)| (*addr, nodes::PeerSource::Flag))
                .collect();
        });

        let (learned_tx, learned_rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    SpeakerEvent::SessionUp { peer, asn } => {
                        tracing::info!(%peer, asn, "BGP session established")
                    }
                    SpeakerEvent::SessionDown { peer, reason } => {
                        tracing::warn!(%peer, %reason, "BGP session down")
                    }
                    SpeakerEvent::BestPathsChanged(v) => {
                        if learned_tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });

        let (routes_tx, mut routes_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<LocalRoute>>();
        let h = handle.clone();
        let for_routes = Arc::clone(&shared);
        runtime.spawn(async move {
            while let Some(mut routes) = routes_rx.recv().await {
                // Only the newest set matters.
                while let Ok(newer) = routes_rx.try_recv() {
                    routes = newer;
                }
                let n = routes.len();
                if let Err(e) = h.set_local_routes(routes).await {
                    tracing::warn!(error = %e, "BGP: cannot update the advertised routes");
                    return;
                }
                for_routes.update_bgp(|b| b.advertised = n);
            }
        });

        let (plan_tx, mut plan_rx) = tokio::sync::mpsc::unbounded_channel::<nodes::Plan>();
        let h = handle.clone();
        runtime.spawn(async move {
            while let Some(mut plan) = plan_rx.recv().await {
                // Only the newest set matters.
                while let Ok(newer) = plan_rx.try_recv() {
                    plan = newer;
                }
                if !apply_plan(&h, plan).await {
                    return;
                }
            }
        });

        let stopper = Stopper {
            runtime: runtime.handle().clone(),
            speaker: handle.clone(),
            for_restart: settings.restart.is_some(),
        };
        runtime.spawn(async move {
            let h = handle;
            let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Ok(neighbors), Ok(mut routes), Ok(restart)) = (
                    h.neighbors().await,
                    h.routes().await,
                    h.restart_status().await,
                ) else {
                    return;
                };
                let total = routes.len();
                routes.truncate(BGP_ROUTES_SAMPLE);
                shared.update_bgp(|b| {
                    b.taken_at = Some(SystemTime::now());
                    b.neighbors = neighbors;
                    b.routes = routes;
                    b.routes_total = total;
                    b.restart = restart;
                });
            }
        });

        Ok(Bgp {
            _runtime: runtime,
            routes_tx,
            plan_tx,
            defaults,
            node_peers: nodes::NodePeers::default(),
            last_plan: None,
            learned_rx,
            learned: BTreeMap::new(),
            last_local: None,
            advertise: settings.advertise,
            stopper,
        })
    }

    /// True once a peer set has been handed to the speaker.
    pub fn peers_planned(&self) -> bool {
        self.last_plan.is_some()
    }

    /// Plans the peer set from the Nodes in `store` (ours is `node_name`) and hands it to the
    /// speaker when it changed. A bad annotation is logged once, counted, and leaves the
    /// node's last good settings in force.
    pub fn update_peers(&mut self, store: &ObjectStore, node_name: &str, shared: &Shared) {
        let (plan, new_problems) = self.node_peers.plan(store, node_name, &self.defaults);
        for p in &new_problems {
            tracing::warn!(
                node = %p.node,
                error = %p.error,
                "BGP: Node annotation ignored; the node's last good BGP settings stay"
            );
        }
        let problems = self.node_peers.problems();
        shared.update_bgp(|b| {
            b.annotation_errors += new_problems.len() as u64;
            b.annotation_problems = problems;
        });
        if self.last_plan.as_ref() == Some(&plan) {
            return;
        }
        shared.update_bgp(|b| {
            b.local_as = plan.local_as;
            b.peer_sources.clone_from(&plan.sources);
        });
        if self.plan_tx.send(plan.clone()).is_ok() {
            self.last_plan = Some(plan);
        }
    }

    /// Hands the speaker the routes to originate, when they changed.
    pub fn set_local_routes(&mut self, routes: Vec<LocalRoute>) {
        if self.last_local.as_ref() == Some(&routes) {
            return;
        }
        tracing::debug!(routes = routes.len(), "BGP: advertised routes changed");
        if self.routes_tx.send(routes.clone()).is_ok() {
            self.last_local = Some(routes);
        }
    }

    /// Takes in what the speaker learned since the last call; true if the FIB needs
    /// rebuilding.
    pub fn poll_learned(&mut self) -> bool {
        let mut changed = false;
        while let Ok(batch) = self.learned_rx.try_recv() {
            for b in batch {
                let mut hops = b.next_hops;
                hops.sort();
                hops.dedup();
                let before = if hops.is_empty() {
                    self.learned.remove(&b.prefix)
                } else {
                    self.learned.insert(b.prefix, hops.clone())
                };
                changed |= before.unwrap_or_default() != hops;
            }
        }
        changed
    }

    /// The learned routes for the FIB (see [`fib_routes`]).
    pub fn fib_routes(&self, base: &Tables) -> Vec<StaticRoute> {
        fib_routes(&self.learned, base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_dataplane::tables::Interface;
    use switchyard_lb::service::{Endpoint, Forwarding, Protocol, ServiceName, ServicePort};

    fn service(name: &str, etp: TrafficPolicy, local_ready: bool) -> Service {
        Service {
            name: ServiceName {
                namespace: "default".into(),
                name: name.into(),
            },
            cluster_ips: vec![
                "198.51.100.10".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
            ],
            external_ips: vec!["203.0.113.10".parse().unwrap()],
            load_balancer_ips: vec!["203.0.113.20".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: vec![
                    Endpoint::ready("198.18.2.3".parse().unwrap(), 8080, false),
                    Endpoint {
                        ready: local_ready,
                        ..Endpoint::ready("198.18.2.4".parse().unwrap(), 8080, true)
                    },
                ],
            }],
            affinity_timeout_secs: None,
            external_traffic_policy: etp,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            forwarding: Forwarding::default(),
        }
    }

    fn prefixes(r: &[LocalRoute]) -> Vec<String> {
        r.iter().map(|r| r.prefix.to_string()).collect()
    }

    const ALL: Advertise = Advertise {
        cluster_ip: true,
        external_ip: true,
        load_balancer_ip: true,
        pod_cidr: true,
    };

    #[test]
    fn service_addresses_and_pod_cidrs_are_advertised() {
        let pods = ["10.244.1.0/24".parse().unwrap()];
        let r = local_routes(&[service("a", TrafficPolicy::Cluster, false)], &pods, ALL);
        assert_eq!(
            prefixes(&r),
            [
                "10.244.1.0/24",
                "198.51.100.10/32",
                "203.0.113.10/32",
                "203.0.113.20/32",
                "2001:db8::10/128"
            ]
        );
        let only_cluster = Advertise {
            cluster_ip: true,
            ..Advertise::default()
        };
        let r = local_routes(
            &[service("a", TrafficPolicy::Cluster, false)],
            &pods,
            only_cluster,
        );
        assert_eq!(prefixes(&r), ["198.51.100.10/32", "2001:db8::10/128"]);
        assert!(local_routes(
            &[service("a", TrafficPolicy::Cluster, true)],
            &pods,
            Advertise::default()
        )
        .is_empty());
    }

    #[test]
    fn local_policy_needs_a_local_ready_endpoint() {
        let r = local_routes(&[service("l", TrafficPolicy::Local, false)], &[], ALL);
        assert_eq!(prefixes(&r), ["198.51.100.10/32", "2001:db8::10/128"]);
        let r = local_routes(&[service("l", TrafficPolicy::Local, true)], &[], ALL);
        assert_eq!(r.len(), 4, "{r:?}");
    }

    #[test]
    fn advertise_kinds() {
        assert_eq!(
            Advertise::from_kinds(&[BgpAdvertise::None]).unwrap(),
            Advertise::default()
        );
        assert!(Advertise::from_kinds(&[BgpAdvertise::None, BgpAdvertise::PodCidr]).is_err());
        let a = Advertise::from_kinds(&[BgpAdvertise::PodCidr]).unwrap();
        assert!(a.pod_cidr && !a.cluster_ip);
    }

    #[test]
    fn peers_parse_and_errors_hide_the_password() {
        let p = parse_peer(
            "198.18.2.2=65001,port=1791,passive,password=s3cret,multihop=2,rr-client,hold=9",
        )
        .unwrap();
        assert_eq!(p.address, "198.18.2.2".parse::<IpAddr>().unwrap());
        assert_eq!((p.remote_as, p.port, p.hold_time), (65001, 1791, 9));
        assert!(p.passive && p.route_reflector_client);
        assert_eq!(p.multihop_ttl, Some(2));
        assert_eq!(p.md5_password.as_deref(), Some("s3cret"));
        let p = parse_peer("2001:db8::2=4200000000").unwrap();
        assert_eq!(p.remote_as, 4_200_000_000);
        assert_eq!(p.port, 179);
        assert!(p.add_path.is_empty() && p.graceful_restart);
        let p = parse_peer("198.18.2.2=65001,add-path=both,graceful-restart=off,stale-time=60")
            .unwrap();
        let both = AddPathMode {
            send: true,
            receive: true,
        };
        assert_eq!(
            p.add_path,
            vec![(Family::Ipv4Unicast, both), (Family::Ipv6Unicast, both)]
        );
        assert!(!p.graceful_restart);
        assert_eq!(p.stale_routes_time, 60);
        assert_eq!(
            parse_peer("198.18.2.2=65001,connect-retry=5")
                .unwrap()
                .connect_retry_time,
            5
        );
        assert!(parse_peer("198.18.2.2=65001,connect-retry=0").is_err());
        let p = parse_peer("198.18.2.2=65001,add-path=receive,add-path=off").unwrap();
        assert!(p.add_path.is_empty());
        let p = parse_peer("198.18.2.2=65001,import=none,max-prefix=1000").unwrap();
        assert!(!p.import.default_accept && p.import.rules.is_empty());
        assert_eq!(p.max_prefixes, Some(1000));
        let p = parse_peer("198.18.2.2=65001,import=all").unwrap();
        assert_eq!(p.import, Policy::accept_all());
        assert_eq!(p.max_prefixes, None);
        for bad in [
            "198.18.2.2=65001,add-path=sometimes",
            "198.18.2.2=65001,graceful-restart=maybe",
            "198.18.2.2=65001,stale-time=0",
            "198.18.2.2=65001,import=some",
            "198.18.2.2=65001,max-prefix=0",
            "198.18.2.2=65001,max-prefix=many",
            "198.18.2.2",
            "198.18.2.2=",
            "198.18.2.2=0",
            "x=65001",
            "198.18.2.2=65001,port=0",
            "198.18.2.2=65001,hold=2",
            "198.18.2.2=65001,multihop=0",
            "198.18.2.2=65001,bogus",
            "198.18.2.2=65001,password=",
            "0.0.0.0=65001",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
        for bad in [
            "198.18.2.2=65001,password=s3cret,bogus",
            "198.18.2.2=x,password=s3cret",
            "198.18.2.2=65001,password",
        ] {
            let e = format!("{:#}", parse_peer(bad).unwrap_err());
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn learned_routes_resolve_against_attached_subnets() {
        let mut ifc = Interface::new("s0", [2, 0, 0, 0, 0, 1], 1500);
        ifc.ipv4.push("198.18.2.1/24".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let base = Tables::build(
            1,
            vec![ifc],
            &[
                StaticRoute {
                    prefix: "198.19.0.0/16".parse().unwrap(),
                    target: RouteTarget::Blackhole,
                },
                StaticRoute {
                    prefix: "198.18.64.0/18".parse().unwrap(),
                    target: RouteTarget::Via(vec![(Some(ip("198.18.2.254")), None)]),
                },
                StaticRoute {
                    prefix: "0.0.0.0/0".parse().unwrap(),
                    target: RouteTarget::Via(vec![(Some(ip("198.18.2.254")), None)]),
                },
            ],
        )
        .unwrap();
        let mut learned = BTreeMap::new();
        learned.insert(
            "203.0.113.0/24".parse().unwrap(),
            vec![
                ip("198.18.2.2"),
                ip("198.18.2.3"),
                ip("192.0.2.1"),
                ip("198.18.2.1"),
            ],
        );
        learned.insert("198.19.0.0/16".parse().unwrap(), vec![ip("198.18.2.2")]);
        learned.insert("198.18.2.1/32".parse().unwrap(), vec![ip("198.18.2.2")]);
        learned.insert("198.51.100.0/24".parse().unwrap(), vec![ip("192.0.2.1")]);
        // Through a static route: installed via that route's gateway.
        learned.insert("203.0.113.128/25".parse().unwrap(), vec![ip("198.18.64.5")]);
        let r = fib_routes(&learned, &base);
        assert_eq!(
            r,
            vec![
                StaticRoute {
                    prefix: "203.0.113.0/24".parse().unwrap(),
                    target: RouteTarget::Via(vec![
                        (Some(ip("198.18.2.2")), None),
                        (Some(ip("198.18.2.3")), None)
                    ]),
                },
                StaticRoute {
                    prefix: "203.0.113.128/25".parse().unwrap(),
                    target: RouteTarget::Via(vec![(Some(ip("198.18.2.254")), Some(0))]),
                }
            ]
        );
        let (t, errors) = base.with_extra_routes(&r);
        assert!(errors.is_empty());
        assert!(t.fib.lookup(ip("203.0.113.9")).is_some());
    }

    /// What the speaker is told about next hops (RFC 4271 §9.1.2.1): on an attached subnet,
    /// fine for everyone; through a static route, for iBGP and multihop eBGP only; our own
    /// addresses, blackholed ones and those only the default route covers, for no one.
    #[test]
    fn next_hops_resolve_without_bgp() {
        let mut ifc = Interface::new("s0", [2, 0, 0, 0, 0, 1], 1500);
        ifc.ipv4.push("198.18.2.1/24".parse().unwrap());
        ifc.ipv6.push("2001:db8:2::1/64".parse().unwrap());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let via = |gw: &str| RouteTarget::Via(vec![(ip(gw), None)]);
        let base = Tables::build(
            1,
            vec![ifc],
            &[
                StaticRoute {
                    prefix: "198.19.0.0/16".parse().unwrap(),
                    target: RouteTarget::Blackhole,
                },
                StaticRoute {
                    prefix: "198.18.64.0/18".parse().unwrap(),
                    target: via("198.18.2.254"),
                },
                StaticRoute {
                    prefix: "198.18.128.0/24".parse().unwrap(),
                    target: RouteTarget::Via(vec![(None, Some(0))]),
                },
                StaticRoute {
                    prefix: "0.0.0.0/0".parse().unwrap(),
                    target: via("198.18.2.254"),
                },
            ],
        )
        .unwrap();
        let r = NonBgpRoutes::new(&base);
        for (hop, connected, resolved) in [
            ("198.18.2.2", Some(0), Some(0)),
            ("2001:db8:2::9", Some(0), Some(0)),
            ("198.18.128.7", Some(0), Some(0)),
            ("198.18.64.5", None, Some(0)),
            ("198.18.2.1", None, None),
            ("198.19.0.1", None, None),
            ("203.0.113.1", None, None),
            ("2001:db8:9::1", None, None),
        ] {
            assert_eq!(r.cost(ip(hop), Reach::Connected), connected, "{hop}");
            assert_eq!(r.cost(ip(hop), Reach::Resolved), resolved, "{hop}");
        }
        assert_eq!(r.cost(None, Reach::Resolved), None);
    }
}
