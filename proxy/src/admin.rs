//! The admin socket: a local Unix socket, root-only (mode 0600), that `switchyard show` reads.
//!
//! Protocol: the client writes one request per line, a word such as `services`; the agent
//! answers each with one line of JSON, `{"ok":true,"show":"services","data":...}` or
//! `{"ok":false,"error":"..."}`. The answers are built from the snapshots in [`Shared`] by
//! the pure functions below, so they are tested without a socket.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use switchyard_dataplane::conntrack::{ConnEntry, ConnState, FlowKey};
use switchyard_dataplane::fib::Route;
use switchyard_dataplane::tables::Tables;
use switchyard_lb::service::{
    Forwarding, Frontend, FrontendEntry, FrontendKind, Protocol, Target, TrafficPolicy,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::http::rfc3339;
use crate::metrics::frontend_label;
use crate::state::{BgpSnapshot, ControlSnapshot, DataplaneSnapshot, Shared};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 1024;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// The requests the socket answers.
pub const REQUESTS: &[&str] = &[
    "services",
    "endpoints",
    "conntrack",
    "fib",
    "counters",
    "neighbors",
    "sync",
    "bgp",
    "acl",
    "ipsec",
];

/// Requests for parts of the agent that are not built yet.
const NOT_YET: &[(&str, &str)] = &[];

/// The admin socket, bound and ready to hand to the servers' runtime.
#[derive(Debug)]
pub struct AdminSocket {
    /// The listener (non-blocking).
    pub listener: std::os::unix::net::UnixListener,
    /// Where it is.
    pub path: PathBuf,
    /// Its inode, to remove it at exit only if it is still ours.
    ino: u64,
}

/// Makes the admin socket at `path`: its directory is created (mode 0700) if missing, a
/// stale socket left by an agent that died is removed, a live one is an error (another agent
/// serves it). The socket is bound under a temporary name, made mode 0600 and renamed into
/// place, so it is never reachable with looser permissions.
pub fn bind(path: &Path) -> anyhow::Result<AdminSocket> {
    let what = || format!("--admin-socket {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("{}: cannot create {}", what(), dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{}: another agent is serving this socket", what());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{}: cannot remove the stale socket", what()))?;
        }
        Ok(_) => bail!("{}: exists and is not a socket", what()),
        Err(_) => {}
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .with_context(|| format!("{}: cannot listen", what()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot put the socket in place", what()));
    }
    listener
        .set_nonblocking(true)
        .with_context(|| format!("{}: cannot make the socket non-blocking", what()))?;
    let ino = std::fs::symlink_metadata(path)
        .map(|m| m.ino())
        .unwrap_or(0);
    Ok(AdminSocket {
        listener,
        path: path.to_path_buf(),
        ino,
    })
}

impl AdminSocket {
    /// Removes the socket file if it is still the one this agent made.
    pub fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves the admin socket until the task is dropped.
pub async fn serve(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an admin connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            loop {
                let mut line = String::new();
                let n = match tokio::time::timeout(
                    IDLE,
                    (&mut read).take(MAX_REQUEST).read_line(&mut line),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    // Idle, reset, or not UTF-8: nothing sensible to answer.
                    _ => return,
                };
                if n == 0 {
                    return;
                }
                let (reply, close) = if let Some(args) = trace_request(&line) {
                    (trace(&shared, args).await, !line.ends_with('\n'))
                } else if line.ends_with('\n') {
                    (answer(&shared, &line, SystemTime::now()), false)
                } else if n as u64 >= MAX_REQUEST {
                    (error("request line too long"), true)
                } else {
                    // The last line, without a newline: answer it and finish.
                    (answer(&shared, &line, SystemTime::now()), true)
                };
                let mut out = reply.to_string();
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() || close {
                    return;
                }
            }
        });
    }
}

/// Longest `trace` wait.
pub const TRACE_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// A `trace [PACKETS [SECONDS]]` request's arguments (defaults 10 packets, 5 seconds), or
/// `None` when the line is another request. Bad numbers come back as the error to answer.
fn trace_request(line: &str) -> Option<Result<(u32, Duration), String>> {
    let mut words = line.split_whitespace();
    if words.next() != Some("trace") {
        return None;
    }
    let packets = match words.next().map(str::parse::<u32>) {
        None => Ok(10),
        Some(Ok(n)) if (1..=crate::state::TRACE_MAX).contains(&n) => Ok(n),
        Some(_) => Err(format!(
            "trace: the packet count must be 1 to {}",
            crate::state::TRACE_MAX
        )),
    };
    let wait = match words.next().map(str::parse::<f64>) {
        None => Ok(Duration::from_secs(5)),
        Some(Ok(s)) if s > 0.0 && s <= TRACE_TIMEOUT_MAX.as_secs_f64() => {
            Ok(Duration::from_secs_f64(s))
        }
        Some(_) => Err(format!(
            "trace: the wait must be above 0 and at most {} seconds",
            TRACE_TIMEOUT_MAX.as_secs()
        )),
    };
    if words.next().is_some() {
        return Some(Err("usage: trace [PACKETS [SECONDS]]".into()));
    }
    Some(packets.and_then(|p| wait.map(|w| (p, w))))
}

/// Traces the next packets the dataplane receives: waits until that many have been traced
/// or the wait is over, and answers with what each node did to each.
async fn trace(shared: &Shared, args: Result<(u32, Duration), String>) -> Value {
    let (packets, wait) = match args {
        Ok(args) => args,
        Err(e) => return error(&e),
    };
    if !shared.trace.start(packets) {
        return error("trace: another trace is being collected; try again when it is done");
    }
    let deadline = tokio::time::Instant::now() + wait;
    while shared.trace.collected() < packets as usize && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let records = shared.trace.finish();
    let traced: Vec<Value> = records
        .iter()
        .map(|r| {
            json!(r
                .lines
                .iter()
                .map(|(node, text)| json!({"node": node, "text": text}))
                .collect::<Vec<_>>())
        })
        .collect();
    json!({"ok": true, "show": "trace", "data": {
        "asked": packets,
        "traced": traced.len(),
        "waited_seconds": wait.as_secs_f64(),
        "packets": traced,
    }})
}

fn error(message: &str) -> Value {
    json!({"ok": false, "error": message})
}

/// The answer to one request line.
pub fn answer(shared: &Shared, request: &str, now: SystemTime) -> Value {
    let request = request.trim();
    let control = shared.control();
    let dataplane = shared.dataplane();
    let data = match request {
        "services" => Ok(services(&control)),
        "endpoints" => Ok(endpoints(&control)),
        "sync" => Ok(sync(shared, &control, dataplane.as_deref(), now)),
        "fib" => tables(&control).map(fib),
        "acl" => tables(&control).map(|t| acl(t, dataplane.as_deref())),
        "ipsec" => match shared.ipsec() {
            Some(view) => Ok(ipsec(&view)),
            None => Err(
                "not available yet: this agent runs no IPsec (start it with --ipsec PATH)".into(),
            ),
        },
        "bgp" => {
            let b = shared.bgp();
            if b.enabled {
                Ok(bgp(&b, now))
            } else {
                Err(
                    "not available yet: this agent runs no BGP speaker (start it with --bgp-asn)"
                        .to_string(),
                )
            }
        }
        "conntrack" | "counters" | "neighbors" => match dataplane.as_deref() {
            None => Err(
                "the dataplane has not published its state yet (it does once a second)".to_string(),
            ),
            Some(d) => Ok(match request {
                "conntrack" => conntrack(d),
                "counters" => counters(d),
                _ => neighbors(d, control.tables.as_deref()),
            }),
        },
        other => Err(match NOT_YET.iter().find(|(name, _)| *name == other) {
            Some((_, why)) => format!("not available yet: {why}"),
            None => format!("unknown request {other:?}; one of: {}", REQUESTS.join(", ")),
        }),
    };
    match data {
        Ok(data) => json!({"ok": true, "show": request, "data": data}),
        Err(e) => error(&e),
    }
}

fn tables(control: &ControlSnapshot) -> Result<&Tables, String> {
    control
        .tables
        .as_deref()
        .ok_or_else(|| "no tables have been published yet".to_string())
}

fn protocol_name(proto: u8) -> String {
    match Protocol::from_number(proto) {
        Some(p) => protocol(p).to_string(),
        None => match proto {
            1 => "ICMP".into(),
            58 => "ICMPv6".into(),
            n => n.to_string(),
        },
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn policy(p: TrafficPolicy) -> &'static str {
    match p {
        TrafficPolicy::Cluster => "Cluster",
        TrafficPolicy::Local => "Local",
    }
}

fn forwarding(f: Forwarding) -> &'static str {
    match f {
        Forwarding::Nat => "nat",
        Forwarding::Gre => "gre",
        Forwarding::Ipip => "ipip",
        Forwarding::DsrIpip => "dsr-ipip",
    }
}

fn kind(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::ExternalIp => "ExternalIP",
        FrontendKind::LoadBalancer => "LoadBalancer",
    }
}

fn target(t: &Target) -> Value {
    match t {
        Target::Backends(set) => json!({
            "action": "balance",
            "backends": set
                .backends
                .iter()
                .map(|b| SocketAddr::new(b.addr, b.port).to_string())
                .collect::<Vec<_>>(),
        }),
        Target::Reject => json!({"action": "reject", "backends": []}),
        Target::Drop => json!({"action": "drop", "backends": []}),
    }
}

fn ips(v: &[IpAddr]) -> Vec<String> {
    v.iter().map(IpAddr::to_string).collect()
}

type FrontendsByService<'a> = BTreeMap<(&'a str, &'a str), Vec<(&'a Frontend, &'a FrontendEntry)>>;

/// The Services as reduced, with the frontends compiled from them.
pub fn services(control: &ControlSnapshot) -> Value {
    let mut frontends: FrontendsByService<'_> = BTreeMap::new();
    if let Some(s) = control.tables.as_ref().and_then(|t| t.services.as_ref()) {
        for (f, e) in &s.table.frontends {
            frontends
                .entry((e.service.namespace.as_str(), e.service.name.as_str()))
                .or_default()
                .push((f, e));
        }
    }
    let mut list: Vec<_> = control.services.iter().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let out: Vec<Value> = list
        .into_iter()
        .map(|s| {
            let mut fe = frontends
                .get(&(s.name.namespace.as_str(), s.name.name.as_str()))
                .cloned()
                .unwrap_or_default();
            fe.sort_by_key(|(f, _)| **f);
            json!({
                "namespace": s.name.namespace,
                "name": s.name.name,
                "cluster_ips": ips(&s.cluster_ips),
                "external_ips": ips(&s.external_ips),
                "load_balancer_ips": ips(&s.load_balancer_ips),
                "external_traffic_policy": policy(s.external_traffic_policy),
                "internal_traffic_policy": policy(s.internal_traffic_policy),
                "session_affinity_timeout_seconds": s.affinity_timeout_secs,
                "health_check_node_port": s.health_check_node_port,
                "forwarding": forwarding(s.forwarding),
                "ports": s.ports.iter().map(|p| json!({
                    "name": p.name,
                    "protocol": protocol(p.protocol),
                    "port": p.port,
                    "node_port": p.node_port,
                    "endpoints": p.endpoints.len(),
                })).collect::<Vec<_>>(),
                "frontends": fe.iter().map(|(f, e)| json!({
                    "frontend": frontend_label(f),
                    "port": &*e.port_name,
                    "kind": kind(e.kind),
                    "internal": target(&e.internal),
                    "external": target(&e.external),
                    "masquerade_internal": e.masquerade_internal,
                    "masquerade_external": e.masquerade_external,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(out)
}

/// Endpoints per Service port, with their conditions.
pub fn endpoints(control: &ControlSnapshot) -> Value {
    let mut list: Vec<_> = control.services.iter().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let out: Vec<Value> = list
        .into_iter()
        .flat_map(|s| {
            s.ports.iter().map(move |p| {
                json!({
                    "namespace": s.name.namespace,
                    "name": s.name.name,
                    "port": p.name,
                    "protocol": protocol(p.protocol),
                    "endpoints": p.endpoints.iter().map(|e| json!({
                        "address": SocketAddr::new(e.addr, e.port).to_string(),
                        "ready": e.ready,
                        "serving": e.serving,
                        "terminating": e.terminating,
                        "local": e.is_local,
                    })).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    Value::Array(out)
}

fn flow(k: &FlowKey) -> Value {
    json!({
        "src": SocketAddr::new(k.src, k.src_port).to_string(),
        "dst": SocketAddr::new(k.dst, k.dst_port).to_string(),
    })
}

fn state(s: ConnState) -> &'static str {
    match s {
        ConnState::New => "NEW",
        ConnState::SynSent => "SYN_SENT",
        ConnState::SynReceived => "SYN_RECV",
        ConnState::Established => "ESTABLISHED",
        ConnState::FinWait => "FIN_WAIT",
        ConnState::CloseWait => "CLOSE_WAIT",
        ConnState::LastAck => "LAST_ACK",
        ConnState::TimeWait => "TIME_WAIT",
        ConnState::Close => "CLOSE",
        ConnState::Unreplied => "UNREPLIED",
        ConnState::Replied => "REPLIED",
    }
}

fn connection(c: &ConnEntry) -> Value {
    json!({
        "protocol": protocol_name(c.original.proto),
        "original": flow(&c.original),
        "reply": flow(&c.reply),
        "state": state(c.state),
        "assured": c.assured,
        "packets": c.packets,
        "bytes": c.bytes,
    })
}

/// Connection-tracking counts and the sample of connections.
pub fn conntrack(d: &DataplaneSnapshot) -> Value {
    let c = &d.conntrack;
    json!({
        "entries": d.conntrack_len,
        "capacity": d.conntrack_capacity,
        "counters": {
            "inserts": c.inserts, "removals": c.removals, "evictions": c.evictions,
            "expirations": c.expirations, "full_drops": c.full_drops, "clashes": c.clashes,
            "invalid": c.invalid,
        },
        "sampled": d.connections.len(),
        "connections": d.connections.iter().map(connection).collect::<Vec<_>>(),
    })
}

fn port_name(tables: Option<&Tables>, port: u16) -> String {
    tables
        .and_then(|t| t.interfaces.get(usize::from(port)))
        .map(|i| i.name.clone())
        .unwrap_or_else(|| format!("port{port}"))
}

/// The routes of the published tables.
pub fn fib(t: &Tables) -> Value {
    let routes: Vec<Value> = t
        .fib
        .iter()
        .map(|(prefix, route)| {
            let (kind, hops): (&str, Vec<Value>) = match route {
                Route::Local => ("local", vec![]),
                Route::Attached { port } => (
                    "attached",
                    vec![json!({"gateway": null, "port": port_name(Some(t), *port)})],
                ),
                Route::Via(hops) => (
                    "via",
                    hops.iter()
                        .map(|h| {
                            json!({
                                "gateway": h.gateway.map(|g| g.to_string()),
                                "port": port_name(Some(t), h.port),
                            })
                        })
                        .collect(),
                ),
                Route::Blackhole => ("blackhole", vec![]),
                Route::Unreachable => ("unreachable", vec![]),
            };
            json!({"prefix": prefix.to_string(), "type": kind, "next_hops": hops})
        })
        .collect();
    json!({"tables_version": t.version, "routes": routes})
}

/// The NetworkPolicy ACLs in force: each shared ACL with its rules (and where each comes
/// from), its hit counters when the dataplane has counted under these tables, and the local
/// pods it guards.
pub fn acl(t: &Tables, d: Option<&DataplaneSnapshot>) -> Value {
    let Some(policy) = t.policy.as_deref() else {
        return json!({"tables_version": t.version, "acls": [], "pods": 0});
    };
    // Counters are per tables version (a new version may renumber the ACLs).
    let hits = d
        .filter(|d| d.tables_version == t.version && d.acl_hits.len() == policy.acls.len())
        .map(|d| &d.acl_hits);
    let mut guarded: Vec<(Vec<String>, Vec<String>)> = vec![Default::default(); policy.acls.len()];
    let mut pods: Vec<_> = policy.pods.iter().collect();
    pods.sort_by_key(|(ip, _)| **ip);
    for (ip, acls) in pods {
        let slots = [(acls.ingress, true), (acls.egress, false)];
        for (index, ingress) in slots {
            let Some(g) = index.and_then(|i| guarded.get_mut(i as usize)) else {
                continue;
            };
            if ingress {
                g.0.push(ip.to_string());
            } else {
                g.1.push(ip.to_string());
            }
        }
    }
    let acls: Vec<Value> = policy
        .acls
        .iter()
        .zip(guarded)
        .enumerate()
        .map(|(i, (acl, (ingress, egress)))| {
            let counts = hits.and_then(|h| h.get(i));
            let rules: Vec<Value> = acl
                .rules
                .iter()
                .enumerate()
                .map(|(r, rule)| {
                    json!({
                        "peer": rule.peer.to_string(),
                        "protocol": rule.protocol.map_or_else(|| "any".to_string(), protocol_name),
                        "ports": if rule.ports == (0, u16::MAX) {
                            "any".to_string()
                        } else if rule.ports.0 == rule.ports.1 {
                            rule.ports.0.to_string()
                        } else {
                            format!("{}-{}", rule.ports.0, rule.ports.1)
                        },
                        "origin": acl.origins.get(r).map(|o| o.to_string()),
                        "hits": counts.and_then(|(rules, _)| rules.get(r)),
                    })
                })
                .collect();
            json!({
                "name": acl.name.to_string(),
                "default": if acl.classifier.default_allow() { "allow" } else { "deny" },
                "denied": counts.map(|(_, denied)| denied),
                "rules": rules,
                "ingress_pods": ingress,
                "egress_pods": egress,
            })
        })
        .collect();
    json!({"tables_version": t.version, "acls": acls, "pods": policy.pods.len()})
}

/// A traffic selector as `addr-addr proto:ports` (a range that is one prefix as the prefix).
fn selector(ts: &switchyard_ipsec::ike::wire::TrafficSelector) -> String {
    // A range that is exactly one prefix shows as the prefix.
    let prefix = |start: u128, end: u128, bits: u32| {
        let span = start ^ end;
        (span.wrapping_add(1).is_power_of_two() && start & span == 0)
            .then(|| bits - (128 - span.leading_zeros()))
    };
    let addrs = match (ts.start, ts.end) {
        (a, b) if a == b => a.to_string(),
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            match prefix(u128::from(a.to_bits()), u128::from(b.to_bits()), 32) {
                Some(len) => format!("{a}/{len}"),
                None => format!("{a}-{b}"),
            }
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if a.to_bits() == 0 && b.to_bits() == u128::MAX => {
            "::/0".to_string()
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => match prefix(a.to_bits(), b.to_bits(), 128) {
            Some(len) => format!("{a}/{len}"),
            None => format!("{a}-{b}"),
        },
        (a, b) => format!("{a}-{b}"),
    };
    let proto = if ts.protocol == 0 {
        String::new()
    } else {
        format!(" {}", protocol_name(ts.protocol))
    };
    let ports = if (ts.start_port, ts.end_port) == (0, u16::MAX) {
        String::new()
    } else {
        format!(":{}-{}", ts.start_port, ts.end_port)
    };
    format!("{addrs}{proto}{ports}")
}

fn selectors(list: &[switchyard_ipsec::ike::wire::TrafficSelector]) -> Vec<String> {
    list.iter().map(selector).collect()
}

#[cfg(test)]
#[test]
fn selectors_that_are_prefixes_show_as_prefixes() {
    use switchyard_ipsec::ike::wire::TrafficSelector;
    let ts = |start: &str, end: &str| TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
    };
    assert_eq!(selector(&ts("198.18.1.0", "198.18.1.255")), "198.18.1.0/24");
    assert_eq!(selector(&ts("0.0.0.0", "255.255.255.255")), "0.0.0.0/0");
    assert_eq!(selector(&ts("198.18.1.1", "198.18.1.1")), "198.18.1.1");
    assert_eq!(
        selector(&ts("198.18.1.1", "198.18.1.4")),
        "198.18.1.1-198.18.1.4"
    );
    assert_eq!(
        selector(&ts("2001:db8::", "2001:db8::ffff")),
        "2001:db8::/112"
    );
    assert_eq!(
        selector(&ts("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
        "::/0"
    );
    let tcp = TrafficSelector {
        protocol: 6,
        start_port: 80,
        end_port: 80,
        ..ts("198.18.1.0", "198.18.1.255")
    };
    assert_eq!(selector(&tcp), "198.18.1.0/24 TCP:80-80");
}

/// The IKE SAs, the CHILD_SAs with their dataplane counters, and the daemon's counters.
pub fn ipsec(view: &crate::ipsec::IpsecView) -> Value {
    let state = view.daemon_state();
    let tables = view.tables.load();
    let dataplane = tables.ipsec.as_deref();
    let counters_in = |spi: u32| {
        dataplane
            .and_then(|d| d.inbound.iter().find(|s| s.sa.spi == spi))
            .map(|s| {
                let c = s.stats.snapshot();
                json!({"packets": c.packets, "bytes": c.bytes, "replay_drops": c.replay_drops,
                       "auth_failures": c.auth_failures, "policy_drops": c.policy_drops,
                       "other_drops": c.other_drops})
            })
    };
    let counters_out = |spi: u32| {
        dataplane
            .and_then(|d| d.outbound.iter().find(|p| p.sa.spi == spi))
            .map(|p| {
                let c = p.stats.snapshot();
                json!({"packets": c.packets, "bytes": c.bytes, "other_drops": c.other_drops})
            })
    };
    let ike_sas: Vec<Value> = state
        .ike_sas
        .iter()
        .map(|(id, peer, st)| {
            json!({"id": format!("{:016x}", id.0), "peer": peer, "state": format!("{st:?}")})
        })
        .collect();
    let child_sas: Vec<Value> = state
        .child_sas
        .iter()
        .map(|c| {
            json!({
                "ike_sa": format!("{:016x}", c.ike_sa.0),
                "peer": c.peer,
                "local": c.local_addr.to_string(),
                "remote": c.remote_addr.to_string(),
                "udp_encap": c.udp_encap.map(|(l, r)| format!("{l}:{r}")),
                "suite": format!("{:?}", c.outbound.suite),
                "inbound_spi": format!("{:08x}", c.inbound.spi),
                "outbound_spi": format!("{:08x}", c.outbound.spi),
                "local_ts": selectors(&c.local_ts),
                "remote_ts": selectors(&c.remote_ts),
                "inbound": counters_in(c.inbound.spi),
                "outbound": counters_out(c.outbound.spi),
            })
        })
        .collect();
    let virtual_ips: Vec<Value> = state
        .virtual_ips
        .iter()
        .map(|v| {
            json!({
                "ike_sa": format!("{:016x}", v.ike_sa.0),
                "peer": v.peer,
                "address": v.address.to_string(),
                // "assigned": the peer gave it to us; "leased": we gave it to the peer.
                "role": if v.pool.is_some() { "leased" } else { "assigned" },
                "pool": v.pool,
            })
        })
        .collect();
    let pools: Vec<Value> = state
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                // Saturating: an IPv6 pool can hold more addresses than JSON numbers do.
                "size": u64::try_from(p.size).unwrap_or(u64::MAX),
                "leased": p.online,
                "remembered": p.offline,
            })
        })
        .collect();
    let k = state.counters;
    // A value of its own: nested in the object below, it would take `json!` past the
    // compiler's macro recursion limit.
    let counters = json!({
        "rx_messages": k.rx_messages, "rx_malformed": k.rx_malformed,
        "rx_bad_version": k.rx_bad_version,
        "rx_unknown_spi": k.rx_unknown_spi, "rx_integrity_failures": k.rx_integrity_failures,
        "tx_invalid_ike_spi": k.tx_invalid_ike_spi,
        "rx_invalid_ike_spi": k.rx_invalid_ike_spi,
        "retransmits": k.retransmits, "auth_failures": k.auth_failures,
        "nat_keepalives": k.nat_keepalives, "peer_moves": k.peer_moves,
        "initial_contact_removals": k.initial_contact_removals,
        "stale_init_requests": k.stale_init_requests,
        "no_proposal_chosen": k.no_proposal_chosen, "invalid_ke": k.invalid_ke,
        "ts_unacceptable": k.ts_unacceptable, "cookies_sent": k.cookies_sent,
        "unprotected_errors_limited": k.unprotected_errors_limited,
        "established": k.established, "failed": k.failed,
        "child_sas_installed": k.child_sas_installed,
        "child_sas_rekeyed": k.child_sas_rekeyed, "ike_sas_rekeyed": k.ike_sas_rekeyed,
        "child_rekeys_started": k.child_rekeys_started,
        "child_rekey_collisions": k.child_rekey_collisions,
        "child_rekey_failures": k.child_rekey_failures,
        "child_sas_expired": k.child_sas_expired,
        "ike_rekeys_started": k.ike_rekeys_started,
        "ike_rekey_collisions": k.ike_rekey_collisions,
        "ike_rekey_failures": k.ike_rekey_failures,
        "virtual_ips_leased": k.virtual_ips_leased,
        "internal_address_failures": k.internal_address_failures,
        "virtual_ip_failures": k.virtual_ip_failures, "cp_malformed": k.cp_malformed,
        "tx_fragments": k.tx_fragments, "rx_fragments": k.rx_fragments,
        "rx_fragments_dropped": k.rx_fragments_dropped, "rx_reassembled": k.rx_reassembled,
        "tx_seal_failures": k.tx_seal_failures, "cert_rejected": k.cert_rejected,
        "send_errors": state.send_errors,
    });
    json!({
        "ike_sas": ike_sas,
        "child_sas": child_sas,
        "virtual_ips": virtual_ips,
        "pools": pools,
        "counters": counters,
    })
}

/// Per graph node counters, and the port totals.
pub fn counters(d: &DataplaneSnapshot) -> Value {
    json!({
        "taken_at": rfc3339(Some(d.taken_at)),
        "tables_version": d.tables_version,
        "rx": d.rx,
        "tx": d.tx,
        "io_errors": d.io_errors,
        "nodes": d.nodes.iter().map(|n| json!({
            "name": n.name,
            "packets": n.packets,
            "vectors": n.vectors,
            "errors": n.errors.iter().map(|(info, count)| json!({
                "reason": info.key, "text": info.text, "count": count,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac(m: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in m.iter().enumerate() {
        let _ = write!(s, "{}{b:02x}", if i == 0 { "" } else { ":" });
    }
    s
}

/// The neighbor table.
pub fn neighbors(d: &DataplaneSnapshot, tables: Option<&Tables>) -> Value {
    let mut list: Vec<_> = d.neighbors.iter().collect();
    list.sort();
    Value::Array(
        list.into_iter()
            .map(|(port, ip, m)| {
                json!({
                    "port": port_name(tables, *port),
                    "address": ip.to_string(),
                    "mac": m.as_ref().map(mac),
                })
            })
            .collect(),
    )
}

/// A BGP session state as people write it.
pub fn bgp_state(s: switchyard_bgp::fsm::State) -> &'static str {
    use switchyard_bgp::fsm::State;
    match s {
        State::Idle => "Idle",
        State::Connect => "Connect",
        State::Active => "Active",
        State::OpenSent => "OpenSent",
        State::OpenConfirm => "OpenConfirm",
        State::Established => "Established",
    }
}

/// The BGP sessions and the Loc-RIB (a sample of it when large).
pub fn bgp(b: &BgpSnapshot, now: SystemTime) -> Value {
    let neighbors: Vec<Value> = b
        .neighbors
        .iter()
        .map(|n| {
            json!({
                "address": n.addr.to_string(),
                "asn": n.asn,
                "source": b.peer_sources.get(&n.addr).map(|s| s.as_str()),
                "state": bgp_state(n.state),
                "uptime_seconds": n.uptime.map(|u| u.as_secs()),
                "prefixes_in": n.prefixes_in,
                "prefixes_out": n.prefixes_out,
                "flaps": n.flaps,
                "last_error": n.last_error,
                "treat_as_withdraw": n.errors.treat_as_withdraw,
                "attribute_discard": n.errors.attribute_discard,
                "ignored_prefixes": n.errors.ignored_prefixes,
                "notifications_sent": n.errors.notifications_sent,
                "notifications_received": n.errors.notifications_received,
            })
        })
        .collect();
    let routes: Vec<Value> = b
        .routes
        .iter()
        .map(|r| {
            let paths: Vec<Value> = r
                .paths
                .iter()
                .map(|p| {
                    json!({
                        "peer": p.peer.map(|a| a.to_string()),
                        "next_hop": p.next_hop.map(|a| a.to_string()),
                        "as_path": p.as_path,
                        "local_pref": p.local_pref,
                        "med": p.med,
                        "best": p.best,
                        "multipath": p.multipath,
                        "stale": p.stale,
                        "restored": p.restored,
                    })
                })
                .collect();
            json!({"prefix": r.prefix.to_string(), "paths": paths})
        })
        .collect();
    json!({
        "local_as": b.local_as,
        "router_id": b.router_id.map(|r| r.to_string()),
        "snapshot_age_seconds": b
            .taken_at
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs_f64()),
        "neighbors": neighbors,
        "routes": routes,
        "routes_total": b.routes_total,
        "routes_truncated": b.routes_total > b.routes.len(),
        "advertised": b.advertised,
        "installed": b.installed,
        "annotation_errors": b.annotation_errors,
        "annotation_problems": b.annotation_problems,
        "graceful_restart": bgp_restart(&b.restart),
    })
}

/// Our own graceful restart (RFC 4724 §4.1).
fn bgp_restart(r: &switchyard_bgp::speaker::RestartStatus) -> Value {
    let family = |f: &switchyard_bgp::config::Family| match f {
        switchyard_bgp::config::Family::Ipv4Unicast => "ipv4",
        switchyard_bgp::config::Family::Ipv6Unicast => "ipv6",
    };
    json!({
        "enabled": r.enabled,
        "restarted": r.restarted,
        "deferring": !r.deferred.is_empty(),
        "deferred_families": r.deferred.iter().map(family).collect::<Vec<_>>(),
        "waiting_for_end_of_rib": r.waiting_for.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "deferral_seconds_left": r.deferral_left.map(|d| d.as_secs()),
        "restored_routes": r.restored_routes,
        "start": r.start_note,
    })
}

/// The control plane's state.
pub fn sync(
    shared: &Shared,
    c: &ControlSnapshot,
    d: Option<&DataplaneSnapshot>,
    now: SystemTime,
) -> Value {
    let mut cumulative = 0;
    let buckets: Vec<Value> = c
        .sync_latency
        .bounds
        .iter()
        .map(|b| b.to_string())
        .chain(std::iter::once("+Inf".to_string()))
        .zip(&c.sync_latency.counts)
        .map(|(le, n)| {
            cumulative += n;
            json!({"le": le, "count": cumulative})
        })
        .collect();
    let age = |t: SystemTime| now.duration_since(t).map(|d| d.as_secs_f64()).ok();
    json!({
        "ready": c.ready,
        "source": c.source,
        "started": rfc3339(Some(shared.started)),
        "syncs": c.syncs,
        "last_sync": c.last_sync.map(|t| rfc3339(Some(t))),
        "last_sync_age_seconds": c.last_sync.and_then(age),
        "tables_version": c.tables.as_ref().map(|t| t.version),
        "dataplane_tables_version": d.map(|d| d.tables_version),
        "dataplane_snapshot_age_seconds": d.and_then(|d| age(d.taken_at)),
        "services": c.services.len(),
        "problems": c.problems,
        "sync_latency": {
            "count": c.sync_latency.count,
            "sum_seconds": c.sync_latency.sum,
            "buckets": buckets,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_with_connection() -> Arc<Shared> {
        let shared = crate::metrics::tests::sample_shared();
        let mut d = (*shared.dataplane().unwrap()).clone();
        let original = FlowKey::new(
            "198.18.1.2".parse().unwrap(),
            "198.51.100.10".parse().unwrap(),
            6,
            40000,
            80,
        );
        let reply = FlowKey::new(
            "198.18.2.3".parse().unwrap(),
            "198.18.1.2".parse().unwrap(),
            6,
            8080,
            40000,
        );
        d.connections = vec![ConnEntry {
            original,
            reply,
            last_seen: 5,
            created: 1,
            packets: [3, 2],
            bytes: [180, 120],
            user: 0,
            mark: 0,
            state: ConnState::Established,
            assured: true,
        }];
        d.neighbors = vec![(
            0,
            "198.18.1.2".parse().unwrap(),
            Some([2, 0, 0, 0, 0, 0xab]),
        )];
        shared.set_dataplane(d);
        shared
    }

    #[test]
    fn answers_each_request() {
        let shared = shared_with_connection();
        let now = SystemTime::now();
        let a = answer(&shared, "services\n", now);
        assert_eq!(a["ok"], true, "{a}");
        let svc = &a["data"][0];
        assert_eq!(svc["name"], "we\"b\\x\ny");
        assert_eq!(svc["cluster_ips"][0], "198.51.100.10");
        assert_eq!(svc["ports"][0]["protocol"], "TCP");
        let fe = &svc["frontends"][0];
        assert_eq!(fe["frontend"], "198.51.100.10:80/TCP");
        assert_eq!(fe["kind"], "ClusterIP");
        assert_eq!(fe["internal"]["backends"][0], "198.18.2.3:8080");

        let a = answer(&shared, "endpoints", now);
        assert_eq!(a["data"][0]["endpoints"][0]["address"], "198.18.2.3:8080");
        assert_eq!(a["data"][0]["endpoints"][0]["local"], true);

        let a = answer(&shared, "conntrack", now);
        assert_eq!(a["data"]["entries"], 1);
        assert_eq!(a["data"]["counters"]["full_drops"], 2);
        let c = &a["data"]["connections"][0];
        assert_eq!(c["original"]["dst"], "198.51.100.10:80");
        assert_eq!(c["reply"]["src"], "198.18.2.3:8080");
        assert_eq!(c["state"], "ESTABLISHED");

        let a = answer(&shared, "counters", now);
        assert_eq!(a["data"]["nodes"][0]["errors"][0]["reason"], "no_route");

        let a = answer(&shared, "neighbors", now);
        assert_eq!(a["data"][0]["mac"], "02:00:00:00:00:ab");

        let a = answer(&shared, "fib", now);
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["data"]["tables_version"], 7);

        let a = answer(&shared, "acl", now);
        assert_eq!(a["ok"], true, "{a}");
        let acl = &a["data"]["acls"][0];
        assert_eq!(acl["name"], "acl-1");
        assert_eq!(acl["default"], "deny");
        assert_eq!(acl["denied"], 3);
        assert_eq!(acl["ingress_pods"], json!(["198.18.2.3"]));
        assert_eq!(acl["rules"][0]["origin"], "node");
        assert_eq!(acl["rules"][0]["ports"], "any");
        assert_eq!(acl["rules"][1]["protocol"], "TCP");
        assert_eq!(acl["rules"][1]["ports"], "8080");
        assert_eq!(acl["rules"][1]["hits"], 5);
        let text = crate::show::render(crate::cli::ShowWhat::Acl, &a["data"]);
        assert!(
            text.starts_with(
                "acl-1 (default deny, denied 3): ingress of 198.18.2.3; egress of -\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("198.18.1.0/24  TCP    8080   5     demo/api-from-web ingress[0]"),
            "{text}"
        );

        let a = answer(&shared, " sync ", now);
        assert_eq!(a["data"]["ready"], true);
        assert_eq!(a["data"]["syncs"], 3);
        assert_eq!(a["data"]["sync_latency"]["count"], 2);
        let buckets = a["data"]["sync_latency"]["buckets"].as_array().unwrap();
        assert_eq!(buckets.last().unwrap()["count"], 2);
    }

    #[test]
    fn bad_and_unbuilt_requests_are_errors() {
        let shared = Arc::new(Shared::default());
        let now = SystemTime::now();
        let a = answer(&shared, "bogus", now);
        assert_eq!(a["ok"], false);
        assert!(a["error"].as_str().unwrap().contains("one of: services"));
        let a = answer(&shared, "bgp", now);
        assert!(a["error"]
            .as_str()
            .unwrap()
            .starts_with("not available yet"));
        // Before the worker's first snapshot and the first sync.
        let a = answer(&shared, "conntrack", now);
        assert!(a["error"].as_str().unwrap().contains("not published"));
        assert_eq!(answer(&shared, "fib", now)["ok"], false);
        assert_eq!(answer(&shared, "services", now)["data"], json!([]));
    }

    #[test]
    fn trace_requests_parse() {
        assert!(trace_request("services").is_none());
        assert!(trace_request("tracer").is_none());
        assert_eq!(
            trace_request("trace\n"),
            Some(Ok((10, Duration::from_secs(5))))
        );
        assert_eq!(
            trace_request(" trace 3 0.5"),
            Some(Ok((3, Duration::from_millis(500))))
        );
        for bad in [
            "trace 0",
            "trace 101",
            "trace x",
            "trace 3 0",
            "trace 3 61",
            "trace 1 1 1",
        ] {
            assert!(matches!(trace_request(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn a_trace_collects_what_the_worker_hands_over() {
        use switchyard_dataplane::graph::TraceRecord;
        let shared = Arc::new(Shared::default());
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                // As the worker loop does: take the request, hand over one trace per packet.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let mut wanted = 0;
                while wanted == 0 && std::time::Instant::now() < deadline {
                    wanted = shared.trace.take_wanted();
                    std::thread::sleep(Duration::from_millis(1));
                }
                let records = (0..wanted)
                    .map(|i| TraceRecord {
                        lines: vec![("ethernet-input", format!("packet {i}"))],
                    })
                    .collect();
                assert!(shared.trace.is_active());
                shared.trace.hand_over(records);
                wanted
            })
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let answer = runtime.block_on(trace(&shared, Ok((2, Duration::from_secs(5)))));
        assert_eq!(worker.join().unwrap(), 2);
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["data"]["traced"], 2);
        assert_eq!(answer["data"]["packets"][1][0]["node"], "ethernet-input");
        assert_eq!(answer["data"]["packets"][1][0]["text"], "packet 1");
        assert!(!shared.trace.is_active());

        // Nothing arrives: the wait ends it, with what there is.
        let answer = runtime.block_on(trace(&shared, Ok((1, Duration::from_millis(30)))));
        assert_eq!(answer["data"]["traced"], 0);
        // One at a time.
        assert!(shared.trace.start(1));
        let answer = runtime.block_on(trace(&shared, Ok((1, Duration::from_millis(30)))));
        assert_eq!(answer["ok"], false);
        shared.trace.finish();
    }

    #[test]
    fn fib_lists_routes_with_port_names() {
        use switchyard_dataplane::tables::{Interface, RouteTarget, StaticRoute};
        let mut c0 = Interface::new("c0", [2, 0, 0, 0, 0, 1], 1500);
        c0.ipv4.push("198.18.1.1/24".parse().unwrap());
        let t = Tables::build(
            3,
            vec![c0],
            &[StaticRoute {
                prefix: "203.0.113.0/24".parse().unwrap(),
                target: RouteTarget::Via(vec![(Some("198.18.1.9".parse().unwrap()), None)]),
            }],
        )
        .unwrap();
        let v = fib(&t);
        let routes = v["routes"].as_array().unwrap();
        let find = |p: &str| routes.iter().find(|r| r["prefix"] == p).cloned().unwrap();
        assert_eq!(find("198.18.1.0/24")["type"], "attached");
        assert_eq!(find("198.18.1.0/24")["next_hops"][0]["port"], "c0");
        assert_eq!(find("198.18.1.1/32")["type"], "local");
        let via = find("203.0.113.0/24");
        assert_eq!(via["type"], "via");
        assert_eq!(via["next_hops"][0]["gateway"], "198.18.1.9");
        assert_eq!(via["next_hops"][0]["port"], "c0");
    }

    /// The socket itself: permissions, stale-socket removal, one line in, one line out.
    #[test]
    fn socket_serves_json_lines() {
        use std::io::{BufRead as _, BufReader as StdBufReader, Write as _};
        let dir = std::env::temp_dir().join(format!("sy-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/admin.sock");
        // A stale socket (bound, then its listener closed) is replaced.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live one is refused.
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another agent"), "{err}");

        let shared = shared_with_connection();
        let std_listener = socket.listener.try_clone().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        {
            let _enter = rt.enter();
            let l = tokio::net::UnixListener::from_std(std_listener).unwrap();
            rt.spawn(serve(l, Arc::clone(&shared)));
        }
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"services\nconntrack\nnope\n").unwrap();
        let mut r = StdBufReader::new(s.try_clone().unwrap());
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            lines.push(serde_json::from_str::<Value>(&l).unwrap());
        }
        assert_eq!(lines[0]["show"], "services");
        assert_eq!(lines[1]["data"]["entries"], 1);
        assert_eq!(lines[2]["ok"], false);
        // A request line that never ends is cut off.
        let mut s2 = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s2.write_all(&[b'x'; 2000]).unwrap();
        let mut l = String::new();
        StdBufReader::new(s2).read_line(&mut l).unwrap();
        assert!(l.contains("too long"), "{l}");
        drop(s);
        rt.shutdown_background();
        socket.remove();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
