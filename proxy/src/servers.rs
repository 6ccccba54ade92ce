//! Starts the agent's servers — `/metrics`, the health checks, the health-check NodePorts
//! and the admin socket — on a tokio runtime of their own, beside the dataplane worker.
//!
//! Every listener is bound by [`bind`] before the dataplane starts, so an address in use is
//! one clear error and a non-zero exit, not a half-started agent. The runtime's threads only
//! read the snapshots in [`Shared`]; the worker never waits for them.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::admin::{self, AdminSocket};
use crate::http::{self, Routes};
use crate::state::Shared;

/// Where the servers listen.
#[derive(Clone, Debug)]
pub struct Config {
    /// `/metrics` (`--metrics-bind-address`).
    pub metrics: Option<SocketAddr>,
    /// `/healthz`, `/livez`, `/readyz` (`--healthz-bind-address`).
    pub healthz: Option<SocketAddr>,
    /// `--healthz-timeout`.
    pub health_timeout: Duration,
    /// `--admin-socket`.
    pub admin_socket: PathBuf,
    /// The address health-check NodePorts listen on (every address, as kube-proxy does when
    /// no NodePort addresses are configured).
    pub health_check_address: IpAddr,
}

impl Config {
    /// The servers `switchyard agent` runs, from its flags.
    pub fn from_args(args: &crate::cli::AgentArgs) -> anyhow::Result<Self> {
        let t = args.healthz_timeout;
        if !(t.is_finite() && t > 0.0) {
            anyhow::bail!("--healthz-timeout {t}: must be a positive number of seconds");
        }
        Ok(Config {
            metrics: args.metrics_bind_address.0,
            healthz: args.healthz_bind_address.0,
            health_timeout: Duration::from_secs_f64(t),
            admin_socket: args.admin_socket.clone(),
            // Every address of either family, as kube-proxy's `:port`.
            health_check_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        })
    }
}

/// The bound listeners, not yet served.
#[derive(Debug)]
pub struct Listeners {
    http: Vec<(std::net::TcpListener, Routes)>,
    admin: AdminSocket,
    health_timeout: Duration,
    health_check_address: IpAddr,
}

/// Binds every listener in `config`. When the metrics and health addresses are the same,
/// one listener serves both.
pub fn bind(config: &Config) -> anyhow::Result<Listeners> {
    let mut http = Vec::new();
    match (config.metrics, config.healthz) {
        (Some(m), Some(h)) if m == h => http.push((
            http::bind(m, "--metrics-bind-address")?,
            Routes {
                metrics: true,
                health: true,
            },
        )),
        (m, h) => {
            if let Some(m) = m {
                http.push((
                    http::bind(m, "--metrics-bind-address")?,
                    Routes {
                        metrics: true,
                        health: false,
                    },
                ));
            }
            if let Some(h) = h {
                http.push((
                    http::bind(h, "--healthz-bind-address")?,
                    Routes {
                        metrics: false,
                        health: true,
                    },
                ));
            }
        }
    }
    let admin = admin::bind(&config.admin_socket)?;
    Ok(Listeners {
        http,
        admin,
        health_timeout: config.health_timeout,
        health_check_address: config.health_check_address,
    })
}

/// The running servers; dropping this stops them and removes the admin socket.
#[derive(Debug)]
pub struct Servers {
    runtime: Option<tokio::runtime::Runtime>,
    admin: AdminSocket,
}

impl Servers {
    /// Serves `listeners` from `shared` on a runtime of their own.
    pub fn start(listeners: Listeners, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("servers")
            .enable_all()
            .build()
            .context("starting the servers' runtime")?;
        let ctx = http::Context::new(Arc::clone(&shared), listeners.health_timeout);
        {
            let _enter = runtime.enter();
            for (listener, routes) in listeners.http {
                let addr = listener.local_addr().ok();
                let listener = tokio::net::TcpListener::from_std(listener)
                    .context("handing a listener to the servers' runtime")?;
                tracing::info!(
                    ?addr,
                    metrics = routes.metrics,
                    health = routes.health,
                    "HTTP server listening"
                );
                runtime.spawn(http::serve_routes(listener, Arc::clone(&ctx), routes));
            }
            let admin_listener = listeners
                .admin
                .listener
                .try_clone()
                .and_then(tokio::net::UnixListener::from_std)
                .context("handing the admin socket to the servers' runtime")?;
            tracing::info!(path = %listeners.admin.path.display(), "admin socket listening");
            runtime.spawn(admin::serve(admin_listener, shared));
            runtime.spawn(http::health_check_node_ports(
                ctx,
                listeners.health_check_address,
            ));
        }
        Ok(Servers {
            runtime: Some(runtime),
            admin: listeners.admin,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        self.admin.remove();
    }
}
