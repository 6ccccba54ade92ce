//! The agent's HTTP servers: `/metrics`, the proxy health checks (`/healthz`, `/livez`,
//! `/readyz`) and the per-Service health-check NodePorts, with kube-proxy's meaning.
//!
//! They run on the servers' tokio runtime (see [`crate::admin::Servers`]) and only read the
//! snapshots in [`Shared`]; nothing here can hold up the worker.
//!
//! Health, as kube-proxy defines it (`pkg/proxy/healthcheck`):
//! - the proxy is *healthy* unless a change has been waiting longer than the health timeout
//!   to be programmed. Before the first sync everything is a pending change, so a start that
//!   takes longer than the timeout turns unhealthy;
//! - `/healthz` is healthy and the node eligible (not being deleted); `/livez` is healthy
//!   alone; both answer JSON with `lastUpdated` (the current time while healthy) and
//!   `currentTime`, written as Go prints a `time.Time` ([`go_time`]);
//! - `/readyz` (Switchyard's, from the design's kube-proxy convention) is 200 once the first
//!   full sync has been programmed; its times are written the same way;
//! - a health-check NodePort answers any request with the Service's name and its number of
//!   local endpoints: 200 when there is at least one and the proxy is healthy, else 503.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use switchyard_lb::service::ServiceName;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::{Format, Metrics};
use crate::state::{ControlSnapshot, Shared};

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the health-check NodePort listeners are reconciled with the tables.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

type Body = Full<Bytes>;

/// Binds a TCP listener for `what` (a flag name, for the error).
pub fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("{what} {addr}: cannot listen"))?;
    l.set_nonblocking(true)
        .with_context(|| format!("{what} {addr}: cannot make the socket non-blocking"))?;
    Ok(l)
}

/// What one listener answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routes {
    /// `/metrics`.
    pub metrics: bool,
    /// `/healthz`, `/livez`, `/readyz`.
    pub health: bool,
}

/// What the handlers read.
#[derive(Debug)]
pub struct Context {
    /// The agent's state.
    pub shared: Arc<Shared>,
    /// Renders `/metrics`.
    pub metrics: Metrics,
    /// See `--healthz-timeout`.
    pub health_timeout: Duration,
}

impl Context {
    /// A context reading `shared`.
    pub fn new(shared: Arc<Shared>, health_timeout: Duration) -> Arc<Self> {
        Arc::new(Context {
            metrics: Metrics::new(Arc::clone(&shared)),
            shared,
            health_timeout,
        })
    }

    fn health(&self, now: SystemTime) -> ProxyHealth {
        proxy_health(
            self.shared.started,
            &self.shared.control(),
            now,
            self.health_timeout,
        )
    }
}

/// The proxy's health at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHealth {
    /// No change has waited longer than the timeout.
    pub healthy: bool,
    /// The first full sync has been programmed.
    pub ready: bool,
    /// When the tables were last programmed.
    pub last_updated: Option<SystemTime>,
    /// Now.
    pub now: SystemTime,
}

/// kube-proxy's rule: unhealthy only while a change has been pending for `timeout` or more.
/// Until the first sync the whole state is pending, since the agent started.
///
/// The control plane syncs as soon as it sees a change, so after the first sync nothing
/// stays pending long enough to be seen from here; when the control plane records when it
/// first saw an unprogrammed change, that time takes `started`'s place.
pub fn proxy_health(
    started: SystemTime,
    control: &ControlSnapshot,
    now: SystemTime,
    timeout: Duration,
) -> ProxyHealth {
    // Before the first sync everything is pending since start; after it, since the control
    // plane saw a change it has not programmed yet.
    let pending_since = if control.ready {
        control.pending_since
    } else {
        Some(started)
    };
    let healthy = match pending_since {
        None => true,
        Some(since) => now.duration_since(since).unwrap_or_default() < timeout,
    };
    ProxyHealth {
        healthy,
        ready: control.ready,
        last_updated: control.last_sync,
        now,
    }
}

/// RFC 3339 in UTC, e.g. `2024-05-01T12:00:00.5Z`; Go's zero time for `None`.
pub fn rfc3339(t: Option<SystemTime>) -> String {
    t.and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string())
}

/// Go's `time.Time.String()` in UTC, as kube-proxy's `/healthz` and `/livez` print
/// `lastUpdated` and `currentTime` (a `%q` of a `time.Time`): `2024-05-01 12:00:00.5 +0000
/// UTC`, the fraction of a second without trailing zeros and left out when zero. Go adds a
/// monotonic clock reading (` m=+64.2`) to times from `time.Now()`; it means nothing outside
/// the process and is not written. `None` is Go's zero time.
pub fn go_time(t: Option<SystemTime>) -> String {
    const ZERO: &str = "0001-01-01 00:00:00 +0000 UTC";
    let Some(t) = t.and_then(|t| jiff::Timestamp::try_from(t).ok()) else {
        return ZERO.to_string();
    };
    // The civil time's fraction is never negative, before 1970 too.
    let t = t.to_zoned(jiff::tz::TimeZone::UTC);
    let mut out = t.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = t.subsec_nanosecond();
    if nanos > 0 {
        let digits = format!(".{nanos:09}");
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A JSON response with kube-proxy's headers. Bodies are written by hand to keep
/// kube-proxy's key order.
fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `/healthz` (with `node_eligible`) or `/livez` (without).
pub fn health_response(h: &ProxyHealth, node_eligible: Option<bool>) -> Response<Body> {
    let healthy = h.healthy && node_eligible.unwrap_or(true);
    // While healthy, lastUpdated is "now", as kube-proxy reports it for compatibility with
    // the days when it was the time of the last sync loop run.
    let last = if healthy { Some(h.now) } else { h.last_updated };
    let mut body = format!(
        r#"{{"lastUpdated":{},"currentTime":{}"#,
        quote(&go_time(last)),
        quote(&go_time(Some(h.now)))
    );
    if let Some(eligible) = node_eligible {
        body.push_str(&format!(r#","nodeEligible":{eligible}"#));
    }
    body.push('}');
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body)
}

/// `/readyz`.
pub fn ready_response(h: &ProxyHealth) -> Response<Body> {
    let body = format!(
        r#"{{"ready":{},"lastUpdated":{},"currentTime":{}}}"#,
        h.ready,
        quote(&go_time(h.last_updated)),
        quote(&go_time(Some(h.now)))
    );
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body)
}

/// Answers one request on the metrics or health listener.
pub fn route(ctx: &Context, routes: Routes, path: &str, accept: Option<&str>) -> Response<Body> {
    match path {
        "/metrics" if routes.metrics => {
            let format = Format::from_accept(accept);
            match ctx.metrics.render(format) {
                Ok(body) => text(StatusCode::OK, format.content_type(), body),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "metrics could not be encoded\n".into(),
                ),
            }
        }
        // Not eligible while the Node is being deleted or the cluster autoscaler has tainted
        // it for deletion (kube-proxy's rule): load balancers drain it first.
        "/healthz" if routes.health => health_response(
            &ctx.health(SystemTime::now()),
            Some(ctx.shared.control().node_eligible),
        ),
        "/livez" if routes.health => health_response(&ctx.health(SystemTime::now()), None),
        "/readyz" if routes.health => ready_response(&ctx.health(SystemTime::now())),
        // kube-proxy's metrics port answers which proxier runs (its e2e tests ask).
        "/proxyMode" if routes.metrics => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            PROXY_MODE.into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        ),
    }
}

/// What `/proxyMode` answers: kube-proxy names its proxier there (`iptables`, `ipvs`,
/// `nftables`); ours is this one.
pub const PROXY_MODE: &str = "switchyard";

/// The answer of the health-check NodePort `port` of `service`.
pub fn service_health_response(
    service: &ServiceName,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> Response<Body> {
    let body = format!(
        r#"{{"service":{{"namespace":{},"name":{}}},"localEndpoints":{local_endpoints},"serviceProxyHealthy":{proxy_healthy}}}"#,
        quote(&service.namespace),
        quote(&service.name)
    );
    let status = if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = json(status, body);
    r.headers_mut().insert(
        "x-load-balancing-endpoint-weight",
        HeaderValue::from(local_endpoints),
    );
    r
}

/// The Service and local endpoint count behind health-check NodePort `port` now.
fn health_check(control: &ControlSnapshot, port: u16) -> Option<(Arc<ServiceName>, usize)> {
    control
        .tables
        .as_ref()?
        .services
        .as_ref()?
        .table
        .health_checks
        .get(&port)
        .cloned()
}

/// Serves HTTP/1 on `listener` until the task is dropped, answering with `answer`.
pub async fn serve<F>(listener: TcpListener, answer: F)
where
    F: Fn(&Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = answer(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves the metrics or health routes on `listener`.
pub async fn serve_routes(listener: TcpListener, ctx: Arc<Context>, routes: Routes) {
    serve(listener, move |req: &Request<Incoming>| {
        let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
        route(&ctx, routes, req.uri().path(), accept)
    })
    .await
}

/// Binds `at`; the IPv6 wildcard address is dual-stack on Linux (with the default
/// `net.ipv6.bindv6only`), as Go's `:port` is for kube-proxy, and falls back to the IPv4 one
/// where IPv6 is off.
async fn bind_any_family(at: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(at).await {
        Err(e) if at.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) => {
            let v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), at.port());
            TcpListener::bind(v4).await.map_err(|_| e)
        }
        bound => bound,
    }
}

/// The open health-check NodePort listeners.
struct Open {
    service: Arc<ServiceName>,
    task: JoinHandle<()>,
}

/// Keeps one listener per health-check NodePort in the published tables, on `addr`: opens
/// the new ones, closes the ones gone (or moved to another Service). A port that cannot be
/// opened is logged once and tried again at each round.
pub async fn health_check_node_ports(ctx: Arc<Context>, addr: IpAddr) {
    let mut open: HashMap<u16, Open> = HashMap::new();
    let mut failed: HashMap<u16, Arc<ServiceName>> = HashMap::new();
    let mut seen: Option<Arc<ControlSnapshot>> = None;
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    loop {
        tick.tick().await;
        let control = ctx.shared.control();
        // Only a new snapshot changes what to listen on, unless a port failed to open.
        if failed.is_empty() && seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &control)) {
            continue;
        }
        let wanted: HashMap<u16, Arc<ServiceName>> = control
            .tables
            .as_ref()
            .and_then(|t| t.services.as_ref())
            .map(|s| {
                s.table
                    .health_checks
                    .iter()
                    .map(|(port, (name, _))| (*port, Arc::clone(name)))
                    .collect()
            })
            .unwrap_or_default();
        seen = Some(control);
        open.retain(|port, o| {
            let keep = wanted.get(port).is_some_and(|s| *s == o.service);
            if !keep {
                tracing::info!(port, service = %o.service, "closing health-check NodePort");
                o.task.abort();
            }
            keep
        });
        failed.retain(|port, _| wanted.contains_key(port));
        for (port, service) in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let at = SocketAddr::new(addr, port);
            match bind_any_family(at).await {
                Ok(listener) => {
                    tracing::info!(%at, %service, "health-check NodePort open");
                    failed.remove(&port);
                    let ctx2 = Arc::clone(&ctx);
                    let task = tokio::spawn(serve(listener, move |_req: &Request<Incoming>| {
                        let control = ctx2.shared.control();
                        let healthy = ctx2.health(SystemTime::now()).healthy;
                        match health_check(&control, port) {
                            Some((name, n)) => service_health_response(&name, n, healthy),
                            // Closed since: nobody serves this Service here any more.
                            None => json(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!(
                                    r#"{{"localEndpoints":0,"serviceProxyHealthy":{healthy}}}"#
                                ),
                            ),
                        }
                    }));
                    open.insert(port, Open { service, task });
                }
                Err(e) => {
                    if failed.get(&port) != Some(&service) {
                        tracing::warn!(%at, %service, error = %e,
                            "cannot open health-check NodePort; will retry");
                        failed.insert(port, service);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn body_json(r: Response<Body>) -> (StatusCode, hyper::HeaderMap, serde_json::Value) {
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = futures_body(r.into_body());
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    fn futures_body(b: Body) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(b.collect())
            .unwrap()
            .to_bytes()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn health_follows_kube_proxy() {
        let timeout = Duration::from_secs(60);
        let mut c = ControlSnapshot::default();
        // Starting up: healthy until the timeout, never ready.
        let h = proxy_health(at(1000), &c, at(1030), timeout);
        assert!(h.healthy && !h.ready);
        let (s, headers, j) = body_json(health_response(&h, Some(true)));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(j["lastUpdated"], j["currentTime"]);
        assert_eq!(j["currentTime"], "1970-01-01 00:17:10 +0000 UTC");
        assert_eq!(j["nodeEligible"], true);
        assert_eq!(ready_response(&h).status(), StatusCode::SERVICE_UNAVAILABLE);
        // Stuck before the first sync for longer than the timeout: 503 with the zero time.
        let h = proxy_health(at(1000), &c, at(1060), timeout);
        assert!(!h.healthy);
        let (s, _, j) = body_json(health_response(&h, Some(true)));
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(j["lastUpdated"], "0001-01-01 00:00:00 +0000 UTC");
        let (s, _, j) = body_json(health_response(&h, None));
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(j.get("nodeEligible").is_none());
        // Synced: healthy and ready however long ago.
        c.ready = true;
        c.last_sync = Some(at(1001));
        let h = proxy_health(at(1000), &c, at(9999), timeout);
        assert!(h.healthy && h.ready);
        let (s, _, j) = body_json(ready_response(&h));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["lastUpdated"], "1970-01-01 00:16:41 +0000 UTC");
        // A node being deleted is not eligible: /healthz fails, /livez does not.
        let (s, _, j) = body_json(health_response(&h, Some(false)));
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(j["nodeEligible"], false);
        assert_eq!(health_response(&h, None).status(), StatusCode::OK);
        // A change waiting to be programmed: healthy within the timeout, not after it.
        c.pending_since = Some(at(9000));
        assert!(proxy_health(at(1000), &c, at(9030), timeout).healthy);
        let h = proxy_health(at(1000), &c, at(9061), timeout);
        assert!(!h.healthy && h.ready);
    }

    /// Go's `time.Time.String()` in UTC: fractions trimmed of trailing zeros and left out
    /// when whole, the zero time for none, no monotonic reading.
    #[test]
    fn times_are_written_as_go_prints_them() {
        let t = |secs: u64, nanos: u32| Some(at(secs) + Duration::from_nanos(u64::from(nanos)));
        assert_eq!(
            go_time(t(1_714_564_800, 0)),
            "2024-05-01 12:00:00 +0000 UTC"
        );
        assert_eq!(
            go_time(t(1_714_564_800, 123_456_789)),
            "2024-05-01 12:00:00.123456789 +0000 UTC"
        );
        assert_eq!(
            go_time(t(1_714_564_800, 500_000_000)),
            "2024-05-01 12:00:00.5 +0000 UTC"
        );
        assert_eq!(
            go_time(t(1_714_564_800, 1_000)),
            "2024-05-01 12:00:00.000001 +0000 UTC"
        );
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_millis(250);
        assert_eq!(
            go_time(Some(before_1970)),
            "1969-12-31 23:59:59.75 +0000 UTC"
        );
    }

    #[test]
    fn service_health_answers_like_kube_proxy() {
        let name = ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        };
        let (s, h, j) = body_json(service_health_response(&name, 2, true));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h["x-load-balancing-endpoint-weight"], "2");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(
            j,
            serde_json::json!({"service": {"namespace": "default", "name": "web"},
                "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        let (s, h, j) = body_json(service_health_response(&name, 0, true));
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h["x-load-balancing-endpoint-weight"], "0");
        assert_eq!(j["localEndpoints"], 0);
        // Endpoints but an unhealthy proxy: the load balancer must go elsewhere too.
        let (s, _, j) = body_json(service_health_response(&name, 1, false));
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(j["serviceProxyHealthy"], false);
    }

    #[test]
    fn routes_and_not_found() {
        let ctx = Context::new(
            crate::metrics::tests::sample_shared(),
            Duration::from_secs(60),
        );
        let both = Routes {
            metrics: true,
            health: true,
        };
        let r = route(&ctx, both, "/metrics", None);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"],
            crate::metrics::PROMETHEUS_CONTENT_TYPE
        );
        let r = route(&ctx, both, "/metrics", Some("application/openmetrics-text"));
        assert_eq!(
            r.headers()["content-type"],
            crate::metrics::OPENMETRICS_CONTENT_TYPE
        );
        assert_eq!(route(&ctx, both, "/readyz", None).status(), StatusCode::OK);
        assert_eq!(
            route(&ctx, both, "/proxyMode", None).status(),
            StatusCode::OK
        );
        let health_only = Routes {
            metrics: false,
            health: true,
        };
        assert_eq!(
            route(&ctx, health_only, "/metrics", None).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&ctx, both, "/nope", None).status(),
            StatusCode::NOT_FOUND
        );
    }

    /// Real sockets on loopback: the health-check NodePort opens when its Service appears and
    /// closes when it goes.
    #[test]
    fn health_check_node_port_listeners_follow_the_tables() {
        use std::io::{Read as _, Write as _};
        use switchyard_dataplane::services::Services;
        use switchyard_dataplane::tables::Tables;
        use switchyard_lb::service::ServiceTable;

        // A free port, found by binding to port 0.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let shared = Arc::new(Shared::default());
        let ctx = Context::new(Arc::clone(&shared), Duration::from_secs(60));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(health_check_node_ports(ctx, "127.0.0.1".parse().unwrap()));
        let publish = |count: Option<usize>| {
            let mut table = ServiceTable::default();
            if let Some(n) = count {
                let name = Arc::new(ServiceName {
                    namespace: "ns".into(),
                    name: "lb".into(),
                });
                table.health_checks.insert(port, (name, n));
            }
            let tables = Tables {
                services: Some(Arc::new(Services {
                    table,
                    ..Services::default()
                })),
                ..Tables::build(1, vec![], &[]).unwrap()
            };
            shared.update_control(|c| {
                c.ready = true;
                c.tables = Some(Arc::new(tables));
            });
        };
        let get = || -> Option<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        };
        let eventually = |want: &dyn Fn(Option<String>) -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if want(get()) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "never: {:?}", get());
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        publish(Some(3));
        eventually(&|r| {
            r.is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains(
            r#"{"service":{"namespace":"ns","name":"lb"},"localEndpoints":3,"serviceProxyHealthy":true}"#
        ) && r.to_lowercase().contains("x-load-balancing-endpoint-weight: 3"))
        });
        // The count is read at request time, without reopening.
        publish(Some(0));
        eventually(&|r| r.is_some_and(|r| r.starts_with("HTTP/1.1 503")));
        publish(None);
        eventually(&|r| r.is_none());
        drop(rt);
    }
}
