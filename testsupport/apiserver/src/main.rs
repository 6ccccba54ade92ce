//! `switchyard-apiserver`: the test API server as a program, seeded from a directory of YAML.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use switchyard_apiserver::ApiServer;

/// Serve a small in-memory Kubernetes API on 127.0.0.1 for local runs and tests.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory of YAML (or JSON) manifests to load at start.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig pointing at the server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Seconds between BOOKMARK events on idle watches.
    #[arg(long, default_value_t = 60.0)]
    bookmark_interval: f64,
    /// Events kept for watch resumption; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 100_000)]
    history: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let interval = Duration::try_from_secs_f64(args.bookmark_interval)
        .context("--bookmark-interval must be a positive number of seconds")?;
    let server = ApiServer::builder()
        .port(args.port)
        .bookmark_interval(interval)
        .history_limit(args.history)
        .start()
        .await
        .context("starting the API server")?;
    if let Some(dir) = &args.manifests {
        let n = server
            .load_dir(dir)
            .with_context(|| format!("loading manifests from {}", dir.display()))?;
        tracing::info!(objects = n, dir = %dir.display(), "loaded manifests");
    }
    if let Some(path) = &args.kubeconfig {
        server
            .write_kubeconfig(path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    }
    println!("serving on {}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown().await;
    Ok(())
}
