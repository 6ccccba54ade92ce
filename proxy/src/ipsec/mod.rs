//! IPsec for the binary: the IKE daemon ([`daemon`]), its configuration from SD-EWAN
//! resources ([`config`]), and [`IpsecService`], which runs the daemon on a thread of its own
//! for `switchyard router --ipsec PATH` and publishes every change of the installed CHILD_SAs
//! into the dataplane's tables (the `esp{4,6}-*` nodes read them from there).
//!
//! IKE reaches the daemon's kernel sockets through the punt path (`--punt-tun`: the TUN
//! device carries the router's addresses, and `ip{4,6}-local` hands UDP for them to the
//! host); ESP never leaves the dataplane.
//!
//! Virtual IPs (IKEv2 configuration payload): an address a hub assigns us becomes an address
//! of the router while its CHILD_SA lives: a local route in the FIB (`ip{4,6}-local` answers
//! pings to it and punts the rest to the host) and a host address on the punt TUN device, so
//! the host's own stack can use it as a source (its packets then meet the SPD, whose
//! selectors name that address, and go through the tunnel). Addresses we lease to hosts from
//! a pool get the route of their tunnel's far end, so traffic to them is forwarded into the
//! tunnel. Hosts behind the router keep their own addresses: a virtual IP is the router's,
//! not a NAT for others.

// The tests compile daemon.rs and config.rs in and use parts the router does not.
#![allow(dead_code)]

pub mod config;
pub mod daemon;
pub mod kube;

use std::net::IpAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use switchyard_dataplane::fib::Route;
use switchyard_dataplane::ipsec_tables::{IpsecTables, SpiReports};
use switchyard_dataplane::tables::{Tables, TablesHandle};
use tokio::sync::oneshot;

use daemon::Daemon;

/// The IKE daemon's thread; dropping it deletes the IKE SAs (telling the peers) and stops it.
pub struct IpsecService {
    /// The tables the SAs are published in (for their counters at the end).
    handle: TablesHandle,
    /// The daemon's IKE SAs, CHILD_SAs and counters.
    state: Arc<std::sync::Mutex<daemon::DaemonState>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// When [`IpsecService::wind_down`] was first called.
    winding_down: Option<std::time::Instant>,
}

/// Where the running IPsec service can be read from (see [`IpsecService::view`]).
#[derive(Clone)]
pub struct IpsecView {
    /// The daemon's IKE SAs, CHILD_SAs and counters.
    pub daemon: Arc<std::sync::Mutex<daemon::DaemonState>>,
    /// The tables in force, whose IPsec part counts packets per SA.
    pub tables: TablesHandle,
}

impl std::fmt::Debug for IpsecView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpsecView")
    }
}

impl IpsecView {
    /// A copy of the daemon's state.
    pub fn daemon_state(&self) -> daemon::DaemonState {
        self.daemon.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// How long the router keeps forwarding for the daemon's Delete exchanges at shutdown.
const WIND_DOWN: std::time::Duration = std::time::Duration::from_secs(2);

impl IpsecService {
    /// What `switchyard show ipsec` and `/metrics` read: the daemon's state and the tables
    /// holding the dataplane's per-SA counters.
    pub fn view(&self) -> IpsecView {
        IpsecView {
            daemon: Arc::clone(&self.state),
            tables: self.handle.clone(),
        }
    }

    /// One line per SA direction with its counters (the router's exit report).
    fn log_counters(&self) {
        let tables = self.handle.load();
        let Some(ipsec) = tables.ipsec.as_ref() else {
            return;
        };
        for p in &ipsec.outbound {
            let c = p.stats.snapshot();
            tracing::info!(
                spi = %format!("{:08x}", p.sa.spi),
                to = %p.outer.dst(),
                packets = c.packets,
                bytes = c.bytes,
                dropped = c.other_drops,
                "ipsec: outbound SA"
            );
        }
        for s in &ipsec.inbound {
            let c = s.stats.snapshot();
            tracing::info!(
                spi = %format!("{:08x}", s.sa.spi),
                packets = c.packets,
                bytes = c.bytes,
                replay_drops = c.replay_drops,
                auth_failures = c.auth_failures,
                policy_drops = c.policy_drops,
                other_drops = c.other_drops,
                "ipsec: inbound SA"
            );
        }
    }

    /// Asks the daemon to delete its IKE SAs and stop; true once it has (or after
    /// [`WIND_DOWN`]). The caller keeps forwarding meanwhile: the Deletes go out through the
    /// dataplane.
    pub fn wind_down(&mut self) -> bool {
        let started = *self
            .winding_down
            .get_or_insert_with(std::time::Instant::now);
        if let Some(stop) = self.stop.take() {
            self.log_counters();
            let _ = stop.send(());
        }
        self.thread.as_ref().is_none_or(|t| t.is_finished()) || started.elapsed() > WIND_DOWN
    }
}

impl Drop for IpsecService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The address of ours that faces `remote`: the primary address of the port the FIB sends
/// it out of.
fn address_towards(tables: &Tables, remote: IpAddr) -> Option<IpAddr> {
    let port = match tables.fib.lookup(remote)? {
        Route::Attached { port } => *port,
        Route::Via(hops) => hops.first()?.port,
        _ => return None,
    };
    let ifc = tables.interface(port)?;
    match remote {
        IpAddr::V4(_) => ifc.primary_ipv4().map(IpAddr::V4),
        IpAddr::V6(_) => Some(IpAddr::V6(ifc.primary_ipv6())),
    }
}

/// The IKE address: the one facing the first site or host with a remote address, else the
/// first IPv4 address of any port.
fn ike_address(resources: &config::Resources, tables: &Tables) -> Option<IpAddr> {
    let remotes = resources
        .sites
        .iter()
        .map(|s| s.spec.remote.as_str())
        .chain(resources.hosts.iter().map(|h| h.spec.remote.as_str()));
    remotes
        .filter_map(|r| r.trim().parse::<IpAddr>().ok())
        .find_map(|r| address_towards(tables, r))
        .or_else(|| {
            tables
                .interfaces
                .iter()
                .find_map(|i| i.primary_ipv4().map(IpAddr::V4))
        })
}

/// Reads a CHILD_SA's byte counters from the tables the workers use: the larger of what
/// its inbound and its outbound SA carried.
fn usage_reader(handle: TablesHandle) -> daemon::ChildUsage {
    daemon::ChildUsage(Arc::new(move |inbound, outbound| {
        let tables = handle.load();
        let ipsec = tables.ipsec.as_deref()?;
        let bytes_in = ipsec
            .inbound_by_spi(inbound)
            .map(|sa| sa.stats.snapshot().bytes);
        let bytes_out = ipsec
            .outbound
            .iter()
            .find(|p| p.sa.spi == outbound)
            .map(|p| p.stats.snapshot().bytes);
        bytes_in.max(bytes_out)
    }))
}

/// Where the IPsec service's configuration comes from, and its knobs.
pub struct Settings {
    /// `--ipsec PATH`: SD-EWAN resources in files, read once at start.
    pub path: Option<std::path::PathBuf>,
    /// `--sdewan-purpose`: SD-EWAN resources from the Kubernetes API, followed as they change
    /// (added to the files' ones).
    pub feed: Option<kube::Feed>,
    /// The interface index of the punt path's TUN device, which gets the virtual IPs peers
    /// assign us.
    pub punt_tun: Option<u32>,
    /// `--ike-fragment-size`.
    pub fragment_size: Option<usize>,
}

/// The IKE daemon's configuration for `resources`, on the address facing their first peer.
/// Sites and hosts that cannot be used are left out and returned as problems.
fn daemon_config(
    resources: &config::Resources,
    tables: &Tables,
    fragment_size: Option<usize>,
    usage: &daemon::ChildUsage,
) -> anyhow::Result<(daemon::DaemonConfig, Vec<config::ConfigError>)> {
    let local = ike_address(resources, tables).context("no address for IKE")?;
    let (mut config, problems) = resources.daemon_config_skipping(local);
    config.usage = Some(usage.clone());
    config.engine.fragmentation = fragment_size != Some(0);
    config.engine.fragment_size = fragment_size.filter(|&s| s > 0);
    Ok((config, problems))
}

/// Reads the SD-EWAN resources of `settings`, starts the IKE daemon (binding its sockets
/// before returning, so a bad address is an error at start-up) and keeps `handle`'s tables'
/// IPsec part in step with the installed CHILD_SAs. With a feed from the Kubernetes API the
/// daemon is reconfigured whenever the resources there change.
pub fn start(
    settings: Settings,
    handle: &TablesHandle,
    base: &Tables,
) -> anyhow::Result<IpsecService> {
    let files = match &settings.path {
        Some(path) => config::Resources::load(path)
            .with_context(|| format!("reading the IPsec resources in {}", path.display()))?,
        None => config::Resources::default(),
    };
    let usage = usage_reader(handle.clone());
    let (mut config, problems) = daemon_config(&files, base, settings.fragment_size, &usage)?;
    // The decrypt nodes' reports of unknown SPIs, in every version of the tables the
    // publisher makes, read by the daemon.
    let spi_reports = Arc::new(SpiReports::default());
    config.spi_reports = Some(Arc::clone(&spi_reports));
    if let Some(problem) = problems.into_iter().next() {
        // From files given on the command line: refuse to start, as before.
        return Err(anyhow::anyhow!(problem)).context("the IPsec resources");
    }
    let punt_tun = settings.punt_tun;
    let follow = settings.feed.map(|feed| Follow {
        feed,
        files,
        handle: handle.clone(),
        fragment_size: settings.fragment_size,
        usage,
    });
    tracing::info!(
        local = ?config.engine.peers.first().map(|p| p.local.ip()),
        peers = config.engine.peers.len(),
        initiate = config.initiate.len(),
        from_api = follow.is_some(),
        "ipsec: starting the IKE daemon"
    );
    let service_handle = handle.clone();
    let handle = handle.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("ipsec".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("tokio runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let hook = publisher(handle, punt_tun, spi_reports);
                let daemon = match Daemon::start_with_hook(config, Some(hook)) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("IKE daemon: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(Arc::clone(&daemon.state)));
                run_until_stopped(daemon, stop_rx, follow).await;
            });
        })
        .context("starting the IPsec thread")?;
    let state = ready_rx
        .recv()
        .context("the IPsec thread ended at start-up")??;
    Ok(IpsecService {
        handle: service_handle,
        state,
        stop: Some(stop_tx),
        thread: Some(thread),
        winding_down: None,
    })
}

/// A hook for the daemon that publishes the dataplane's IPsec tables for a set of CHILD_SAs
/// (newest last), keeping the counters of SAs that stay and reporting unknown SPIs to
/// `spi_reports`, and puts the virtual IPs peers assigned us on the punt TUN device
/// (`punt_tun`) while they last.
fn publisher(
    handle: TablesHandle,
    punt_tun: Option<u32>,
    spi_reports: Arc<SpiReports>,
) -> daemon::ChildSaHook {
    let mut generation = 0u64;
    let mut current: Option<Arc<IpsecTables>> = None;
    let mut on_tun: Vec<IpAddr> = Vec::new();
    Box::new(move |children| {
        generation += 1;
        let mut ipsec = IpsecTables::from_children(
            generation,
            children.iter().map(|c| c.as_ref()),
            current.as_deref(),
        );
        ipsec.spi_reports = Arc::clone(&spi_reports);
        let local_addresses = ipsec.local_addresses.clone();
        // The rest of the tables belong to the control plane (in the agent): take them as they
        // are in force, and only the SAs (and their virtual IPs' routes) from here.
        let published = handle.publish_keeping(
            Tables {
                ipsec: Some(Arc::new(ipsec)),
                ..Tables::default()
            },
            |current, next| {
                let ipsec = next.ipsec.take().map(Arc::unwrap_or_clone);
                *next = current.clone();
                next.set_ipsec(ipsec);
            },
        );
        current = published.ipsec.clone();
        if let Some(index) = punt_tun {
            sync_tun_addresses(index, &mut on_tun, &local_addresses);
        }
        tracing::info!(
            child_sas = children.len(),
            generation,
            "ipsec: dataplane SAs published"
        );
    })
}

/// Makes the virtual IPs on the punt TUN device (interface `index`) be `wanted`: the host's
/// stack owns them (answers what the dataplane punts to them, uses them as sources).
fn sync_tun_addresses(index: u32, on_tun: &mut Vec<IpAddr>, wanted: &[IpAddr]) {
    for &addr in on_tun.iter().filter(|a| !wanted.contains(a)) {
        if let Err(e) = switchyard_io::tun::remove_host_address_from(index, addr) {
            tracing::warn!(%addr, error = %e, "ipsec: virtual IP not removed from the punt device");
        }
    }
    on_tun.retain(|a| wanted.contains(a));
    let new: Vec<IpAddr> = wanted
        .iter()
        .copied()
        .filter(|a| !on_tun.contains(a))
        .collect();
    for addr in new {
        match switchyard_io::tun::add_host_address_to(index, addr) {
            Ok(()) => tracing::info!(%addr, "ipsec: virtual IP on the punt device"),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "ipsec: virtual IP not added to the punt device")
            }
        }
        on_tun.push(addr);
    }
}

/// What the service follows when its resources come from the Kubernetes API.
struct Follow {
    feed: kube::Feed,
    /// The resources from `--ipsec` files, if any: always part of the configuration.
    files: config::Resources,
    handle: TablesHandle,
    fragment_size: Option<usize>,
    usage: daemon::ChildUsage,
}

impl Follow {
    /// The daemon's next configuration, from the latest set of resources; `None` when
    /// there is none yet or it cannot be used at all (logged).
    fn next(&mut self) -> Option<daemon::Command> {
        let from_api = self.feed.borrow_and_update().clone()?;
        let resources = self.files.merged(&from_api);
        let tables = self.handle.load();
        match daemon_config(&resources, &tables, self.fragment_size, &self.usage) {
            Ok((config, problems)) => {
                for problem in &problems {
                    tracing::warn!(error = %problem, "ipsec: resource left out");
                }
                Some(daemon::Command::Reconfigure {
                    engine: Box::new(config.engine),
                    initiate: config.initiate,
                })
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "ipsec: resources not applied");
                None
            }
        }
    }
}

/// Runs until told to stop, then deletes the IKE SAs. With `follow`, each new set of
/// resources from the API reconfigures the daemon.
async fn run_until_stopped(
    mut daemon: Daemon,
    mut stop: oneshot::Receiver<()>,
    mut follow: Option<Follow>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = daemon.events.recv() => if event.is_none() { break },
            changed = async {
                match follow.as_mut() {
                    Some(f) => f.feed.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                match changed {
                    Ok(()) => {
                        if let Some(command) = follow.as_mut().and_then(Follow::next) {
                            daemon.command(command);
                        }
                    }
                    // The watcher is gone (the process is ending): keep what runs.
                    Err(_) => follow = None,
                }
            }
        }
    }
    daemon.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemon::{move_children, Tunnel};
    use std::sync::atomic::Ordering;
    use switchyard_ipsec::crypto::{AeadAlgorithm, SecretBytes};
    use switchyard_ipsec::esp::{EspKeys, EspSuite, SaConfig};
    use switchyard_ipsec::ike::wire::TrafficSelector;
    use switchyard_ipsec::ike::{ChildSaInstall, IkeSaId};

    fn child(inbound: u32, outbound: u32, remote_port: u16) -> Arc<ChildSaInstall> {
        let sa = |spi| SaConfig {
            spi,
            suite: EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16),
            keys: EspKeys {
                encryption: SecretBytes::from_slice(&[7; 20]),
                integrity: SecretBytes::from_slice(&[]),
            },
            esn: false,
            replay_window: 64,
            lifetime: Default::default(),
        };
        let ts = |a: &str, b: &str| TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: a.parse().unwrap(),
            end: b.parse().unwrap(),
        };
        Arc::new(ChildSaInstall {
            ike_sa: IkeSaId(1),
            peer: "site".into(),
            inbound: sa(inbound),
            outbound: sa(outbound),
            local_addr: "198.51.100.2".parse().unwrap(),
            remote_addr: "203.0.113.9".parse().unwrap(),
            udp_encap: Some((4500, remote_port)),
            local_ts: vec![ts("198.19.0.0", "198.19.0.255")],
            remote_ts: vec![ts("198.18.0.0", "198.18.0.255")],
            local_vips: Vec::new(),
            remote_vips: Vec::new(),
        })
    }

    /// RFC 7296 section 2.23, the daemon's side: when the engine follows a peer whose NAT
    /// mapping changed, the CHILD_SAs it names get the new tunnel and are published again;
    /// their counters (and, keyed by the same SPIs, the workers' sequence numbers and replay
    /// windows) carry over, and other CHILD_SAs are left as they were.
    #[test]
    fn a_moved_peer_takes_its_child_sas_tunnel_along_when_republished() {
        let handle = TablesHandle::new(Tables::default());
        let mut publish = publisher(handle.clone(), None, Arc::default());
        let mut children = vec![child(0x1001, 0x2001, 33001), child(0x1002, 0x2002, 33001)];
        publish(&children);
        let before = handle.load();
        let stats = |tables: &Tables, spi: u32| {
            let ipsec = tables.ipsec.as_deref().unwrap();
            let policy = ipsec.outbound.iter().find(|p| p.sa.spi == spi).unwrap();
            (Arc::clone(&policy.stats), policy.outer)
        };
        let (counters, _) = stats(&before, 0x2001);
        counters.packets.store(41, Ordering::Relaxed);

        let to = Tunnel {
            local_addr: "198.51.100.2".parse().unwrap(),
            remote_addr: "203.0.113.9".parse().unwrap(),
            udp_encap: Some((4500, 40001)),
        };
        let moved = move_children(&mut children, &[(0x1001, 0x2001)], to);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].udp_encap, Some((4500, 40001)));
        assert!(
            move_children(&mut children, &[(0x1001, 0x2001)], to).is_empty(),
            "moved already"
        );
        publish(&children);
        let after = handle.load();
        let (counters, outer) = stats(&after, 0x2001);
        assert_eq!(outer.udp(), Some((4500, 40001)));
        assert_eq!(outer.dst(), to.remote_addr);
        assert_eq!(counters.packets.load(Ordering::Relaxed), 41, "same SA");
        let (_, untouched) = stats(&after, 0x2002);
        assert_eq!(untouched.udp(), Some((4500, 33001)));
        let ipsec = after.ipsec.as_deref().unwrap();
        assert!(ipsec.inbound_by_spi(0x1001).is_some());
        assert_ne!(
            ipsec.generation,
            before.ipsec.as_deref().unwrap().generation,
            "a new generation: the workers look again"
        );
    }
}
