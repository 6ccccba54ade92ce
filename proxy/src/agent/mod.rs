//! `switchyard agent`: the node agent. The dataplane runs as `switchyard router` does; beside
//! it a control-plane thread watches the cluster source, reduces what it sees to plain
//! Services ([`reduce`]) and NetworkPolicy input ([`reduce_policy`]), compiles them
//! ([`switchyard_lb::service::ServiceTable::compile`], [`switchyard_policy::compile`] and
//! [`policy_tables`]) and publishes the next tables with one pointer swap. With `--bgp-asn`
//! a BGP speaker ([`bgp`]) advertises the Services and the pod CIDRs and its learned routes
//! join the FIB.

pub mod bgp;
pub mod kube;
pub mod manifests;
pub mod objects;
pub mod policy_tables;
pub mod reduce;
pub mod reduce_policy;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use switchyard_dataplane::policy::PolicyTables;
use switchyard_dataplane::services::Services;
use switchyard_dataplane::tables::{Tables, TablesHandle};
use switchyard_lb::service::CompileOptions;

use crate::cli::AgentArgs;
use crate::router::{self, Hooks};
use crate::state::Shared;

/// How long the control plane waits on the cluster source at a time when BGP runs: the
/// longest a learned route waits before it is programmed.
const BGP_POLL: Duration = Duration::from_millis(50);

/// Runs the agent until a signal or `--duration` ends it.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    if !(args.poll_interval.is_finite() && args.poll_interval > 0.0) {
        bail!(
            "--poll-interval {}: must be a positive number of seconds",
            args.poll_interval
        );
    }
    if !(args.min_sync_period.is_finite() && args.min_sync_period >= 0.0) {
        bail!(
            "--min-sync-period {}: must be zero or a positive number of seconds",
            args.min_sync_period
        );
    }
    let node_name = node_name(args.node_name.as_deref())?;
    let bgp_settings = bgp::Settings::from_args(&args)?;
    // The iBGP mesh peers with every Node: only then are all of them watched.
    let all_nodes = bgp_settings.as_ref().is_some_and(|s| s.ibgp_mesh);
    let (sdewan, ipsec_feed) = match &args.sdewan_purpose {
        Some(purpose) => {
            let (watch, feed) = crate::ipsec::kube::SdewanWatch::new(purpose);
            match &args.manifests {
                // From the manifest directory, polled as the other objects are.
                Some(dir) => {
                    let (dir, poll) = (dir.clone(), Duration::from_secs_f64(args.poll_interval));
                    std::thread::Builder::new()
                        .name("sdewan-manifests".into())
                        .spawn(move || crate::ipsec::kube::watch_manifests(dir, poll, watch))
                        .context("starting the SD-EWAN manifest reader")?;
                    (None, Some(feed))
                }
                None => (Some(watch), Some(feed)),
            }
        }
        None => (None, None),
    };
    let source = cluster_source(&args, &node_name, all_nodes, sdewan)?;
    let bgp_stopper = Arc::new(std::sync::OnceLock::new());
    // NodePorts are compiled for every node address and narrowed to --nodeport-addresses by
    // the dataplane, which knows the node's addresses.
    let options = CompileOptions {
        node_port_addresses: Vec::new(),
        table_size: None,
    };
    let control = ControlPlane {
        source,
        view: view::View::new(&node_name, args.service_proxy_name.as_deref(), options),
        node_name,
        policy: None,
        compile_problems: Vec::new(),
        acl_cache: policy_tables::AclCache::default(),
        cluster_cidrs: args.cluster_cidrs.to_vec(),
        node_port_addresses: args.nodeport_addresses.to_vec(),
        node_port_ranges: Vec::new(),
        masquerade_all: args.masquerade_all,
        min_sync: Duration::from_secs_f64(args.min_sync_period),
        bgp_settings,
        bgp_stopper: Arc::clone(&bgp_stopper),
        bgp: None,
        last: None,
    };
    // Bound before the dataplane starts: an address in use is one error line and an exit.
    let listeners = crate::servers::bind(&crate::servers::Config::from_args(&args)?)?;
    let shared = Arc::new(Shared::default());
    let _servers = crate::servers::Servers::start(listeners, Arc::clone(&shared))?;
    let for_control = Arc::clone(&shared);
    let hooks = Hooks {
        on_ready: Some(Box::new(move |handle: &TablesHandle, base: &Tables| {
            control.start(handle.clone(), base.clone(), for_control)
        })),
        shared: Some(shared),
        ipsec_feed,
        node_ports: Some((
            args.service_node_port_range.first,
            args.service_node_port_range.last,
        )),
    };
    let result = router::run_with(&args.router, hooks);
    if let Some(stopper) = bgp_stopper.get() {
        stopper.stop(Duration::from_secs(2));
    }
    result
}

/// The cluster source the flags choose: `--manifests DIR`, `--kubeconfig PATH`, or the
/// in-cluster configuration when running in a pod (`KUBERNETES_SERVICE_HOST` set).
fn cluster_source(
    args: &AgentArgs,
    node_name: &str,
    all_nodes: bool,
    sdewan: Option<crate::ipsec::kube::SdewanWatch>,
) -> anyhow::Result<Box<dyn Source>> {
    let kube_settings = || kube::Settings {
        node_name: node_name.to_string(),
        proxy_name: args.service_proxy_name.clone(),
        all_nodes,
        sdewan: sdewan.clone(),
    };
    match (&args.manifests, &args.kubeconfig) {
        (Some(_), Some(_)) => bail!("give either --manifests or --kubeconfig, not both"),
        (Some(dir), None) => {
            std::fs::read_dir(dir).with_context(|| {
                format!("--manifests {}: cannot read the directory", dir.display())
            })?;
            Ok(Box::new(ManifestSource {
                dir: dir.clone(),
                poll: Duration::from_secs_f64(args.poll_interval),
                fingerprint: None,
                last: objects::ObjectStore::default(),
            }))
        }
        (None, Some(path)) => Ok(Box::new(kube::KubeSource::start(
            kube::ClientConfig::Kubeconfig(path),
            kube_settings(),
        )?)),
        (None, None) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Ok(Box::new(
            kube::KubeSource::start(kube::ClientConfig::InCluster, kube_settings())?,
        )),
        (None, None) => bail!(
            "no cluster source: give --manifests DIR or --kubeconfig PATH \
             (or run in a pod, where the in-cluster configuration is used)"
        ),
    }
}

/// This node's name: `--node-name`, or the host's name when it is not given (or empty),
/// trimmed and lowercased as kube-proxy's `nodeutil.GetHostname` does with
/// `--hostname-override` and the host name. Node names are lowercase (RFC 1123), so a host
/// called `Worker-1` is the Node `worker-1`, and endpoints with that `nodeName` are local.
fn node_name(given: Option<&str>) -> anyhow::Result<String> {
    let raw = match given {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name (give --node-name)")?,
    };
    let name = raw.trim();
    if name.is_empty() {
        bail!("the node name is empty (give --node-name)");
    }
    Ok(name.to_lowercase())
}

/// Where the cluster's objects come from: a manifest directory or the Kubernetes API.
pub trait Source: Send + 'static {
    /// For people and logs: "manifests /etc/switchyard", "kube https://...".
    fn describe(&self) -> String;
    /// Blocks until the objects may have changed since the last [`Source::snapshot`] (or
    /// `timeout` passed); true if they did. The first call after start returns at once.
    fn wait_change(&mut self, timeout: Duration) -> bool;
    /// The objects as they are now, and what was wrong with some of them (skipped).
    fn snapshot(&mut self) -> (objects::ObjectStore, Vec<String>);
    /// The objects changed since the last call (all of them at the first), and what is wrong
    /// with some of them now (skipped).
    fn changes(&mut self) -> (Vec<objects::Change>, Vec<String>);
    /// False while the source has not seen a complete view yet (a cluster source before
    /// its first full list); the agent does not report ready until it has.
    fn synced(&self) -> bool {
        true
    }
}

/// Manifests in a directory, checked for changes every `poll`.
struct ManifestSource {
    dir: PathBuf,
    poll: Duration,
    fingerprint: Option<manifests::Fingerprint>,
    /// The objects as last handed out by [`Source::changes`].
    last: objects::ObjectStore,
}

impl Source for ManifestSource {
    fn describe(&self) -> String {
        format!("manifests {}", self.dir.display())
    }

    fn wait_change(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let now = manifests::fingerprint(&self.dir);
            if self.fingerprint.as_ref() != Some(&now) {
                self.fingerprint = Some(now);
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(self.poll.min(left));
        }
    }

    fn snapshot(&mut self) -> (objects::ObjectStore, Vec<String>) {
        let (store, errors) = manifests::load(&self.dir);
        for e in &errors {
            tracing::warn!(error = %e, "manifest skipped");
        }
        (store, errors.iter().map(ToString::to_string).collect())
    }

    fn changes(&mut self) -> (Vec<objects::Change>, Vec<String>) {
        let (store, problems) = self.snapshot();
        let changes = self.last.diff(&store);
        self.last = store;
        (changes, problems)
    }
}

/// The control plane's settings.
struct ControlPlane {
    source: Box<dyn Source>,
    /// The objects and the Services they compile to, kept current change by change.
    view: view::View,
    node_name: String,
    /// The NetworkPolicy tables as last compiled, with the number of policies and the
    /// problems found; compiled again only when a kind policy reads changes.
    policy: Option<CompiledPolicy>,
    /// The Service compile problems at the last sync (each is logged when it first appears).
    compile_problems: Vec<String>,
    /// The ACL classifiers in force, reused while their ACLs do not change.
    acl_cache: policy_tables::AclCache,
    cluster_cidrs: Vec<ipnet::IpNet>,
    /// The ranges NodePorts are open in (`--nodeport-addresses` resolved; empty: all).
    node_port_ranges: Vec<ipnet::IpNet>,
    /// `--nodeport-addresses` as given (`primary` resolved into `node_port_ranges` at start).
    node_port_addresses: Vec<crate::cli::NodePortAddress>,
    masquerade_all: bool,
    /// Least time between two syncs (kube-proxy's --min-sync-period): changes that come
    /// faster are coalesced into one sync.
    min_sync: Duration,
    /// `--bgp-*`, until the speaker is started.
    bgp_settings: Option<bgp::Settings>,
    /// Where the running speaker's stopper is left for [`run`] to use at exit.
    bgp_stopper: Arc<std::sync::OnceLock<bgp::Stopper>>,
    /// The running BGP speaker.
    bgp: Option<bgp::Bgp>,
    /// The tables last published.
    last: Option<Arc<Tables>>,
}

/// For [`TablesHandle::publish_keeping`]: the IPsec SAs in force stay (the IKE daemon
/// publishes those), with the FIB entries of their virtual IPs. The control plane's FIB is
/// built from its own routes and never holds those entries, so whatever IPsec part `next`
/// carried is dropped, not undone.
fn keep_ipsec(current: &Tables, next: &mut Tables) {
    next.ipsec = None;
    next.set_ipsec(current.ipsec.as_deref().cloned());
}

/// NetworkPolicy as compiled for the dataplane.
struct CompiledPolicy {
    tables: Option<Arc<PolicyTables>>,
    policies: usize,
    problems: Vec<String>,
}

impl ControlPlane {
    /// Programs the first tables now (so the dataplane starts with the services in place,
    /// when the source has them at once), then keeps them current from a thread of its own.
    fn start(
        mut self,
        handle: TablesHandle,
        base: Tables,
        shared: Arc<Shared>,
    ) -> anyhow::Result<()> {
        let mut version = base.version;
        // This node's own addresses, whose traffic with local pods policy always allows, are
        // the dataplane interfaces' addresses.
        let node_ips = base
            .interfaces
            .iter()
            .flat_map(|i| {
                let v4 = i.ipv4.iter().map(|n| std::net::IpAddr::V4(n.addr()));
                v4.chain(i.ipv6.iter().map(|n| std::net::IpAddr::V6(n.addr())))
            })
            .collect();
        self.node_port_ranges = node_port_ranges(&self.node_port_addresses, &base.interfaces);
        self.view.set_node_ips(node_ips);
        if let Some(settings) = self.bgp_settings.take() {
            let b = bgp::Bgp::start(settings, &base, Arc::clone(&shared))?;
            let _ = self.bgp_stopper.set(b.stopper.clone());
            self.bgp = Some(b);
        }
        // The first view: what the source has now (a cluster source may not have listed yet;
        // then the agent starts with no services and is not ready until it has).
        self.source.wait_change(Duration::ZERO);
        version += 1;
        self.sync(&base, version, &handle, &shared, Instant::now());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let mut last_sync = Instant::now();
                // With BGP, wait on the source in short slices so learned routes reach the
                // FIB promptly.
                let slice = if self.bgp.is_some() {
                    BGP_POLL
                } else {
                    Duration::from_secs(1)
                };
                loop {
                    let changed = self.source.wait_change(slice);
                    if !changed {
                        if self.bgp.as_mut().is_some_and(bgp::Bgp::poll_learned) {
                            version += 1;
                            self.republish_routes(&base, version, &handle, &shared);
                        }
                        continue;
                    }
                    let seen = Instant::now();
                    // Until the sync is programmed, /healthz measures how long it has waited.
                    shared.update_control(|c| {
                        c.pending_since
                            .get_or_insert_with(std::time::SystemTime::now);
                    });
                    // Coalesce: wait out the minimum interval, taking in what else changes.
                    let since = last_sync.elapsed();
                    if since < self.min_sync {
                        std::thread::sleep(self.min_sync - since);
                    }
                    version += 1;
                    self.sync(&base, version, &handle, &shared, seen);
                    last_sync = Instant::now();
                }
            })
            .context("starting the control-plane thread")?;
        Ok(())
    }

    /// Takes the source's objects, builds the tables they give and publishes them, logging
    /// what was wrong in them; records the sync in `shared`.
    fn sync(
        &mut self,
        base: &Tables,
        version: u64,
        handle: &TablesHandle,
        shared: &Shared,
        seen: Instant,
    ) {
        let started = Instant::now();
        let (changes, mut problems) = self.source.changes();
        let changed = changes.len();
        let touched = self.view.apply(changes);
        problems.extend(self.view.reduce_problems().map(ToString::to_string));
        let services = self.view.services();
        if let Some(b) = &mut self.bgp {
            // The peers from Node objects wait for a complete view of the Nodes, or at least
            // our own, so that a node.asn annotation is in force before their sessions open.
            let own_known = self
                .view
                .store
                .nodes
                .contains_key(&(String::new(), self.node_name.clone()));
            if (touched.nodes || !b.peers_planned()) && (own_known || self.source.synced()) {
                b.update_peers(&self.view.store, &self.node_name, shared);
            }
            let pod_cidrs = if b.advertise.pod_cidr {
                reduce::pod_cidrs(&self.view.store, &self.node_name)
            } else {
                Vec::new()
            };
            b.set_local_routes(bgp::local_routes(
                services.iter().map(|s| &**s),
                &pod_cidrs,
                b.advertise,
            ));
            b.poll_learned();
        }
        let routed = self.routed(base, shared);
        let compiler = self.view.compiler();
        let compile_problems: Vec<String> =
            compiler.errors().iter().map(ToString::to_string).collect();
        let known: std::collections::HashSet<&String> = self.compile_problems.iter().collect();
        for e in compile_problems.iter().filter(|e| !known.contains(e)) {
            tracing::warn!(error = %e, "service frontend skipped");
        }
        problems.extend(compile_problems.iter().cloned());
        self.compile_problems = compile_problems;
        let table = compiler.table().clone();
        let frontends = table.frontends.len();
        if touched.policy || self.policy.is_none() {
            self.policy = Some(self.compile_policy());
        }
        let policy = self.policy.as_ref().expect("compiled above");
        problems.extend(policy.problems.iter().cloned());
        let policies = policy.policies;
        let tables = Tables {
            version,
            policy: policy.tables.clone(),
            services: Some(Arc::new(Services {
                table,
                cluster_cidrs: self.cluster_cidrs.clone(),
                node_port_ranges: self.node_port_ranges.clone(),
                masquerade_all: self.masquerade_all,
                ..Services::default()
            })),
            ..routed
        };
        // The IPsec SAs (with --ipsec) are the IKE daemon's to publish: keep those in force.
        let tables = handle.publish_keeping(tables, keep_ipsec);
        let version = tables.version;
        self.last = Some(Arc::clone(&tables));
        let latency = seen.elapsed().as_secs_f64();
        let source = self.source.describe();
        let synced = self.source.synced();
        tracing::info!(
            version,
            changed,
            reduced = touched.services,
            services = services.len(),
            frontends,
            policies,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "tables programmed from {source}"
        );
        let node_eligible = reduce::node_eligible(&self.view.store, &self.node_name);
        shared.update_control(|c| {
            c.ready = c.ready || synced;
            c.node_eligible = node_eligible;
            c.pending_since = None;
            c.last_sync = Some(std::time::SystemTime::now());
            c.last_sync_instant = Some(Instant::now());
            c.syncs += 1;
            c.sync_latency.observe(latency);
            c.services = services;
            c.tables = Some(tables);
            c.problems = problems;
            c.source = source;
        });
    }

    /// `base` with the routes learned over BGP added (just `base` without BGP); records how
    /// many were installed.
    fn routed(&self, base: &Tables, shared: &Shared) -> Tables {
        let Some(b) = &self.bgp else {
            return base.clone();
        };
        let routes = b.fib_routes(base);
        let (tables, errors) = base.with_extra_routes(&routes);
        for e in &errors {
            tracing::debug!(error = %e, "learned route not installed");
        }
        let installed = routes.len().saturating_sub(errors.len());
        shared.update_bgp(|s| s.installed = installed);
        tables
    }

    /// Publishes the last tables again with the FIB rebuilt for what BGP learned since.
    fn republish_routes(
        &mut self,
        base: &Tables,
        version: u64,
        handle: &TablesHandle,
        shared: &Shared,
    ) {
        let Some(last) = self.last.clone() else {
            return;
        };
        let started = Instant::now();
        let routed = self.routed(base, shared);
        let tables = handle.publish_keeping(
            Tables {
                version,
                fib: routed.fib,
                ..(*last).clone()
            },
            keep_ipsec,
        );
        tracing::debug!(
            version,
            routes = tables.fib.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "FIB republished for BGP"
        );
        shared.update_control(|c| c.tables = Some(Arc::clone(&tables)));
        self.last = Some(tables);
    }

    /// The NetworkPolicy ACLs for the objects in the view (no tables when there is no
    /// policy, so the ACL nodes are skipped), the number of policies and the problems found.
    /// The view's compiler is kept current change by change; this takes its snapshot and
    /// builds the classifiers.
    fn compile_policy(&mut self) -> CompiledPolicy {
        let compiler = self.view.policy();
        let mut problems: Vec<String> = self
            .view
            .policy_problems()
            .map(ToString::to_string)
            .collect();
        if compiler.policy_count() == 0 {
            return CompiledPolicy {
                tables: None,
                policies: 0,
                problems,
            };
        }
        let compiled = compiler.snapshot();
        for e in compiled.errors() {
            tracing::warn!(error = %e, "NetworkPolicy part matches nothing; policy still enforced");
            problems.push(e.to_string());
        }
        let tables = policy_tables::policy_tables_reusing(&compiled, &mut self.acl_cache);
        CompiledPolicy {
            tables: Some(Arc::new(tables)),
            policies: compiler.policy_count(),
            problems,
        }
    }
}

/// The ranges NodePorts are open in, from `--nodeport-addresses`: its ranges, and for
/// `primary` the first address of each family on the dataplane's interfaces (empty: every
/// node address).
fn node_port_ranges(
    given: &[crate::cli::NodePortAddress],
    interfaces: &[switchyard_dataplane::tables::Interface],
) -> Vec<ipnet::IpNet> {
    use crate::cli::NodePortAddress;
    let mut ranges = Vec::new();
    for entry in given {
        match entry {
            NodePortAddress::Range(net) => ranges.push(*net),
            NodePortAddress::Primary => {
                let v4 = interfaces.iter().find_map(|i| i.ipv4.first());
                let v6 = interfaces.iter().find_map(|i| i.ipv6.first());
                ranges.extend(v4.map(|n| ipnet::IpNet::from(std::net::IpAddr::V4(n.addr()))));
                ranges.extend(v6.map(|n| ipnet::IpNet::from(std::net::IpAddr::V6(n.addr()))));
            }
        }
    }
    ranges
}

#[cfg(test)]
mod node_port_tests {
    use super::*;
    use crate::cli::NodePortAddress;
    use switchyard_dataplane::tables::Interface;

    /// kube-proxy's `--nodeport-addresses primary`: the node's first address of each family.
    #[test]
    fn primary_is_the_first_address_of_each_family() {
        let mut c0 = Interface::new("c0", [2, 0, 0, 0, 0, 1], 1500);
        c0.ipv4.push("198.18.1.1/24".parse().unwrap());
        c0.ipv4.push("198.18.9.1/24".parse().unwrap());
        let mut s0 = Interface::new("s0", [2, 0, 0, 0, 0, 2], 1500);
        s0.ipv4.push("198.18.2.1/24".parse().unwrap());
        s0.ipv6.push("2001:db8:2::1/64".parse().unwrap());
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let ranges = node_port_ranges(
            &[
                NodePortAddress::Primary,
                NodePortAddress::Range(net("203.0.113.0/24")),
            ],
            &[c0, s0],
        );
        assert_eq!(
            ranges,
            [
                net("198.18.1.1/32"),
                net("2001:db8:2::1/128"),
                net("203.0.113.0/24")
            ]
        );
        assert!(node_port_ranges(&[], &[]).is_empty());
    }
}

#[cfg(test)]
mod node_name_tests {
    use std::path::Path;

    use super::manifests::{Format, Loader};
    use super::*;

    /// `--node-name Worker-1` is the Node `worker-1`: an endpoint whose nodeName is
    /// `worker-1` is local, as kube-proxy with `--hostname-override Worker-1` has it.
    #[test]
    fn the_node_name_is_trimmed_and_lowercased() {
        let name = node_name(Some(" Worker-1\n")).unwrap();
        assert_eq!(name, "worker-1");
        let mut loader = Loader::new();
        loader.add_text(
            Path::new("test.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
             spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080}]\n\
             endpoints: [{addresses: [198.18.2.3], nodeName: worker-1}]\n",
            Format::Yaml,
        );
        let (store, errors) = loader.finish();
        assert!(errors.is_empty(), "{errors:?}");
        let (services, errors) = reduce::services(&store, &name, None);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(services[0].ports[0].endpoints[0].is_local);
        // Only blanks is no name at all.
        assert!(node_name(Some(" \t")).is_err());
    }
}
