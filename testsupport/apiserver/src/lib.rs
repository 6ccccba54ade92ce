//! A small, faithful Kubernetes API server for tests (list, watch, bookmarks, 410 Gone).
//!
//! It serves arbitrary resources as JSON over plain HTTP on 127.0.0.1, with the semantics a
//! real client (kube-rs, client-go) depends on:
//!
//! - one global, monotonically increasing `resourceVersion` (like etcd's revision), stamped on
//!   every write, with `uid`, `creationTimestamp` and `generation` filled in;
//! - LIST with `limit`/`continue` paging over a consistent snapshot, `resourceVersion` and
//!   `resourceVersionMatch`, label and field selectors, and 410 `Expired` for stale tokens;
//! - WATCH as chunked newline-delimited JSON from a resourceVersion, replayed from a bounded
//!   history, with BOOKMARK events, `timeoutSeconds`, `sendInitialEvents`, selectors (objects
//!   leaving the selection are sent as DELETED) and the in-stream 410 ERROR event;
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`, `/version`).
//!
//! Tests drive it through [`ApiServer`]: create/update/apply/delete objects, [`ApiServer::compact`]
//! the history, [`ApiServer::expire_watches`], and [`ApiServer::pause`]/[`ApiServer::resume`] to
//! make the server go away and come back.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use switchyard_apiserver::ApiServer;
//! let server = ApiServer::start().await?;
//! server.write_kubeconfig("/tmp/kubeconfig")?; // point kube::Config / the agent here
//! server.create(&serde_json::json!({
//!     "apiVersion": "v1", "kind": "Service",
//!     "metadata": {"name": "web", "namespace": "default"},
//!     "spec": {"clusterIP": "198.18.0.10", "ports": [{"port": 80}]}
//! }))?;
//! server.expire_watches(); // every open watch gets an in-stream 410 and the client relists
//! # Ok(()) }
//! ```

mod http;
mod manifests;
mod resources;
mod selector;
mod server;
mod status;
mod store;
mod watch;

pub use manifests::{read_dir, LoadError};
pub use resources::ResourceType;
pub use server::{ApiServer, Builder, Config, RequestRecord};
pub use status::ApiError;
