//! `switchyard agent`: the node agent. The dataplane runs as `switchyard router` does; beside
//! it a control-plane thread watches the cluster source, reduces what it sees to plain
//! Services ([`reduce`]), compiles them ([`switchyard_lb::service::ServiceTable::compile`])
//! and publishes the next tables with one pointer swap.

pub mod manifests;
pub mod objects;
pub mod reduce;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use switchyard_dataplane::services::Services;
use switchyard_dataplane::tables::{Tables, TablesHandle};
use switchyard_lb::service::{CompileOptions, ServiceTable};

use crate::cli::AgentArgs;
use crate::router::{self, Hooks};
use crate::state::Shared;

/// Runs the agent until a signal or `--duration` ends it.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let Some(dir) = args.manifests.clone() else {
        bail!(
            "no cluster source: give --manifests DIR (the Kubernetes API source is not built yet)"
        );
    };
    std::fs::read_dir(&dir)
        .with_context(|| format!("--manifests {}: cannot read the directory", dir.display()))?;
    if !(args.poll_interval.is_finite() && args.poll_interval > 0.0) {
        bail!(
            "--poll-interval {}: must be a positive number of seconds",
            args.poll_interval
        );
    }
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    let control = ControlPlane {
        dir,
        node_name,
        options: CompileOptions {
            node_port_addresses: args.nodeport_addresses.clone(),
            table_size: None,
        },
        cluster_cidrs: args.cluster_cidrs.to_vec(),
        masquerade_all: args.masquerade_all,
        proxy_name: args.service_proxy_name.clone(),
        poll: Duration::from_secs_f64(args.poll_interval),
    };
    let shared = Arc::new(Shared::default());
    let for_control = Arc::clone(&shared);
    let hooks = Hooks {
        on_ready: Some(Box::new(move |handle: &TablesHandle, base: &Tables| {
            control.start(handle.clone(), base.clone(), for_control)
        })),
        shared: Some(shared),
    };
    router::run_with(&args.router, hooks)
}

/// This host's name, as a Kubernetes node is usually named.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name (give --node-name)")?;
    Ok(name.trim().to_string())
}

/// The control plane's settings.
struct ControlPlane {
    dir: PathBuf,
    node_name: String,
    options: CompileOptions,
    cluster_cidrs: Vec<ipnet::IpNet>,
    masquerade_all: bool,
    proxy_name: Option<String>,
    poll: Duration,
}

impl ControlPlane {
    /// Programs the first tables now (so the dataplane starts with the services in place),
    /// then keeps them current from a thread of its own.
    fn start(self, handle: TablesHandle, base: Tables, shared: Arc<Shared>) -> anyhow::Result<()> {
        let mut version = base.version;
        let mut fingerprint = manifests::fingerprint(&self.dir);
        version += 1;
        self.sync(&base, version, &handle, &shared, Instant::now());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || loop {
                std::thread::sleep(self.poll);
                let now = manifests::fingerprint(&self.dir);
                if now == fingerprint {
                    continue;
                }
                // The change happened at most one poll ago; count from when it was seen.
                let seen = Instant::now();
                fingerprint = now;
                version += 1;
                self.sync(&base, version, &handle, &shared, seen);
            })
            .context("starting the control-plane thread")?;
        Ok(())
    }

    /// Reads the manifests, builds the tables they give and publishes them, logging what was
    /// wrong in them; records the sync in `shared`.
    fn sync(
        &self,
        base: &Tables,
        version: u64,
        handle: &TablesHandle,
        shared: &Shared,
        seen: Instant,
    ) {
        let started = Instant::now();
        let mut problems = Vec::new();
        let (store, errors) = manifests::load(&self.dir);
        for e in &errors {
            tracing::warn!(error = %e, "manifest skipped");
            problems.push(e.to_string());
        }
        let (services, errors) =
            reduce::services(&store, &self.node_name, self.proxy_name.as_deref());
        for e in &errors {
            tracing::warn!(error = %e, "object skipped");
            problems.push(e.to_string());
        }
        let (table, errors) = ServiceTable::compile(&services, &self.options);
        for e in &errors {
            tracing::warn!(error = %e, "service frontend skipped");
            problems.push(e.to_string());
        }
        let frontends = table.frontends.len();
        let tables = Tables {
            version,
            services: Some(Arc::new(Services {
                table,
                cluster_cidrs: self.cluster_cidrs.clone(),
                masquerade_all: self.masquerade_all,
                ..Services::default()
            })),
            ..base.clone()
        };
        let tables = Arc::new(tables);
        handle.publish_arc(Arc::clone(&tables));
        let latency = seen.elapsed().as_secs_f64();
        tracing::info!(
            version,
            services = services.len(),
            frontends,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "tables programmed from {}",
            self.dir.display()
        );
        let source = format!("manifests {}", self.dir.display());
        shared.update_control(|c| {
            c.ready = true;
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
}
