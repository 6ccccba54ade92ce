//! `switchyard show ...`: asks a running agent over its admin socket ([`crate::admin`]) and
//! prints the answer as aligned tables, or as JSON with `--json`.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use crate::cli::{ShowArgs, ShowWhat, TraceArgs};

/// How long the agent may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `switchyard show`.
pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let data = request(&args.socket, args.what.request())?;
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&data).context("formatting the answer")?;
        s.push('\n');
        s
    } else {
        render(args.what, &data)
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")
}

/// Runs `switchyard trace`.
pub fn trace(args: &TraceArgs) -> anyhow::Result<()> {
    if !(args.wait > 0.0 && args.wait <= crate::admin::TRACE_TIMEOUT_MAX.as_secs_f64()) {
        bail!(
            "--wait {}: must be above 0 and at most {} seconds",
            args.wait,
            crate::admin::TRACE_TIMEOUT_MAX.as_secs()
        );
    }
    let wait = Duration::from_secs_f64(args.wait);
    let data = request_waiting(
        &args.socket,
        &format!("trace {} {}", args.count, args.wait),
        wait + TIMEOUT,
    )?;
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&data).context("formatting the answer")?;
        s.push('\n');
        s
    } else {
        render_trace(&data)
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")
}

/// The human form of a trace: each packet's nodes and what they did.
fn render_trace(data: &Value) -> String {
    let packets = items(&data["packets"]);
    let mut out = String::new();
    for (i, p) in packets.iter().enumerate() {
        let _ = writeln!(out, "packet {}:", i + 1);
        for line in items(p) {
            let _ = writeln!(out, "  {:<16} {}", cell(&line["node"]), cell(&line["text"]));
        }
    }
    let _ = writeln!(
        out,
        "{} of {} packets traced in {} s",
        cell(&data["traced"]),
        cell(&data["asked"]),
        cell(&data["waited_seconds"])
    );
    out
}

/// Sends one request and returns the answer's data, or the agent's error.
pub fn request(socket: &Path, request: &str) -> anyhow::Result<Value> {
    request_waiting(socket, request, TIMEOUT)
}

/// As [`request`], waiting up to `timeout` for the answer.
fn request_waiting(socket: &Path, request: &str, timeout: Duration) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        anyhow!(
            "cannot reach the agent's admin socket {}: {e} (is `switchyard agent` running? \
             --socket PATH names another socket)",
            socket.display()
        )
    })?;
    let io = |e: std::io::Error| anyhow!("admin socket {}: {e}", socket.display());
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(io)?;
    if line.is_empty() {
        bail!(
            "admin socket {}: the agent closed the connection",
            socket.display()
        );
    }
    let answer: Value = serde_json::from_str(&line)
        .with_context(|| format!("admin socket {}: the answer is not JSON", socket.display()))?;
    if answer["ok"] == true {
        Ok(answer["data"].clone())
    } else {
        bail!(
            "{}",
            answer["error"]
                .as_str()
                .unwrap_or("the agent gave an error without a message")
        )
    }
}

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count());
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A frontend's target: its backends, or what happens instead.
fn target(t: &Value) -> String {
    match t["action"].as_str() {
        Some("balance") => {
            let b: Vec<String> = items(&t["backends"]).iter().map(cell).collect();
            if b.is_empty() {
                "-".into()
            } else {
                b.join(",")
            }
        }
        Some(other) => other.to_string(),
        None => "-".into(),
    }
}

/// The human form of an answer.
pub fn render(what: ShowWhat, data: &Value) -> String {
    match what {
        ShowWhat::Services => services(data),
        ShowWhat::Endpoints => endpoints(data),
        ShowWhat::Conntrack => conntrack(data),
        ShowWhat::Fib => fib(data),
        ShowWhat::Counters => counters(data),
        ShowWhat::Neighbors => neighbors(data),
        ShowWhat::Sync => sync(data),
        ShowWhat::Bgp => bgp(data),
        ShowWhat::Acl => acl(data),
        ShowWhat::Ipsec => ipsec(data),
    }
}

fn services(data: &Value) -> String {
    let mut rows = Vec::new();
    for s in items(data) {
        let name = format!("{}/{}", cell(&s["namespace"]), cell(&s["name"]));
        let fes = items(&s["frontends"]);
        if fes.is_empty() {
            rows.push(vec![
                name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for f in fes {
            let internal = target(&f["internal"]);
            let external = target(&f["external"]);
            rows.push(vec![
                name.clone(),
                cell(&f["frontend"]),
                cell(&f["kind"]),
                if f["port"].as_str().is_some_and(|p| !p.is_empty()) {
                    cell(&f["port"])
                } else {
                    "-".into()
                },
                internal.clone(),
                if external == internal {
                    "(same)".into()
                } else {
                    external
                },
            ]);
        }
    }
    table(
        &[
            "SERVICE",
            "FRONTEND",
            "KIND",
            "PORT",
            "BACKENDS",
            "EXTERNAL BACKENDS",
        ],
        &rows,
    )
}

fn endpoints(data: &Value) -> String {
    let mut rows = Vec::new();
    for p in items(data) {
        let name = format!("{}/{}", cell(&p["namespace"]), cell(&p["name"]));
        let port = format!("{}/{}", cell(&p["port"]), cell(&p["protocol"]));
        let eps = items(&p["endpoints"]);
        if eps.is_empty() {
            rows.push(vec![name.clone(), port.clone(), "-".into()]);
        }
        for e in eps {
            rows.push(vec![
                name.clone(),
                port.clone(),
                cell(&e["address"]),
                cell(&e["ready"]),
                cell(&e["serving"]),
                cell(&e["terminating"]),
                cell(&e["local"]),
            ]);
        }
    }
    table(
        &[
            "SERVICE",
            "PORT",
            "ENDPOINT",
            "READY",
            "SERVING",
            "TERMINATING",
            "LOCAL",
        ],
        &rows,
    )
}

fn conntrack(data: &Value) -> String {
    let c = &data["counters"];
    let mut out = format!(
        "{} connections tracked (capacity {}); inserted {}, removed {}, evicted {}, \
         expired {}, refused when full {}, invalid packets {}\n",
        cell(&data["entries"]),
        cell(&data["capacity"]),
        cell(&c["inserts"]),
        cell(&c["removals"]),
        cell(&c["evictions"]),
        cell(&c["expirations"]),
        cell(&c["full_drops"]),
        cell(&c["invalid"]),
    );
    if data["sampled"] != data["entries"] {
        out.push_str(&format!("showing {} of them\n", cell(&data["sampled"])));
    }
    let pair = |v: &Value| format!("{}/{}", cell(&v[0]), cell(&v[1]));
    let rows: Vec<Vec<String>> = items(&data["connections"])
        .iter()
        .map(|k| {
            vec![
                cell(&k["protocol"]),
                format!(
                    "{} -> {}",
                    cell(&k["original"]["src"]),
                    cell(&k["original"]["dst"])
                ),
                format!(
                    "{} -> {}",
                    cell(&k["reply"]["src"]),
                    cell(&k["reply"]["dst"])
                ),
                cell(&k["state"]),
                pair(&k["packets"]),
                pair(&k["bytes"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["PROTO", "ORIGINAL", "REPLY", "STATE", "PACKETS", "BYTES"],
        &rows,
    ));
    out
}

fn fib(data: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&data["routes"])
        .iter()
        .map(|r| {
            let hops: Vec<String> = items(&r["next_hops"])
                .iter()
                .map(|h| match h["gateway"].as_str() {
                    Some(gw) => format!("{gw} via {}", cell(&h["port"])),
                    None => cell(&h["port"]),
                })
                .collect();
            vec![
                cell(&r["prefix"]),
                cell(&r["type"]),
                if hops.is_empty() {
                    "-".into()
                } else {
                    hops.join(", ")
                },
            ]
        })
        .collect();
    table(&["PREFIX", "TYPE", "NEXT HOPS"], &rows)
}

fn acl(data: &Value) -> String {
    let acls = items(&data["acls"]);
    if acls.is_empty() {
        return "no NetworkPolicy isolates a pod on this node\n".into();
    }
    let mut out = String::new();
    for a in acls {
        let pods = |key: &str| {
            let p: Vec<String> = items(&a[key]).iter().map(cell).collect();
            if p.is_empty() {
                "-".to_string()
            } else {
                p.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "{} (default {}, denied {}): ingress of {}; egress of {}",
            cell(&a["name"]),
            cell(&a["default"]),
            cell(&a["denied"]),
            pods("ingress_pods"),
            pods("egress_pods"),
        );
        let rows: Vec<Vec<String>> = items(&a["rules"])
            .iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    i.to_string(),
                    cell(&r["peer"]),
                    cell(&r["protocol"]),
                    cell(&r["ports"]),
                    cell(&r["hits"]),
                    cell(&r["origin"]),
                ]
            })
            .collect();
        for line in table(&["RULE", "PEER", "PROTO", "PORTS", "HITS", "FROM"], &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn ipsec(data: &Value) -> String {
    let ike: Vec<Vec<String>> = items(&data["ike_sas"])
        .iter()
        .map(|s| vec![cell(&s["id"]), cell(&s["peer"]), cell(&s["state"])])
        .collect();
    let mut out = table(&["IKE SA", "PEER", "STATE"], &ike);
    let count = |c: &Value, key: &str| cell(&c[key]);
    let child: Vec<Vec<String>> = items(&data["child_sas"])
        .iter()
        .map(|c| {
            let ts = |key: &str| {
                let list: Vec<String> = items(&c[key]).iter().map(cell).collect();
                list.join(",")
            };
            vec![
                format!("{}/{}", cell(&c["inbound_spi"]), cell(&c["outbound_spi"])),
                cell(&c["peer"]),
                format!("{} > {}", ts("local_ts"), ts("remote_ts")),
                cell(&c["suite"]),
                format!(
                    "{}/{}",
                    count(&c["inbound"], "packets"),
                    count(&c["outbound"], "packets")
                ),
                format!(
                    "{}/{}",
                    count(&c["inbound"], "replay_drops"),
                    count(&c["inbound"], "auth_failures")
                ),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "SPI IN/OUT",
            "PEER",
            "SELECTORS",
            "SUITE",
            "PKTS IN/OUT",
            "REPLAY/AUTH DROPS",
        ],
        &child,
    ));
    let vips: Vec<Vec<String>> = items(&data["virtual_ips"])
        .iter()
        .map(|v| {
            vec![
                cell(&v["address"]),
                cell(&v["role"]),
                cell(&v["peer"]),
                cell(&v["pool"]),
                cell(&v["ike_sa"]),
            ]
        })
        .collect();
    if !vips.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["VIRTUAL IP", "ROLE", "PEER", "POOL", "IKE SA"],
            &vips,
        ));
    }
    let pools: Vec<Vec<String>> = items(&data["pools"])
        .iter()
        .map(|p| {
            vec![
                cell(&p["name"]),
                cell(&p["size"]),
                cell(&p["leased"]),
                cell(&p["remembered"]),
            ]
        })
        .collect();
    if !pools.is_empty() {
        out.push('\n');
        out.push_str(&table(&["POOL", "SIZE", "LEASED", "REMEMBERED"], &pools));
    }
    let k = &data["counters"];
    let _ = writeln!(
        out,
        "\nIKE: {} established, {} failed, {} auth failures, {} malformed, {} CHILD_SAs installed, {} rekeyed",
        cell(&k["established"]),
        cell(&k["failed"]),
        cell(&k["auth_failures"]),
        cell(&k["rx_malformed"]),
        cell(&k["child_sas_installed"]),
        cell(&k["child_sas_rekeyed"]),
    );
    out
}

fn counters(data: &Value) -> String {
    let mut out = format!(
        "received {}, sent {}, I/O errors {} (as of {})\n",
        cell(&data["rx"]),
        cell(&data["tx"]),
        cell(&data["io_errors"]),
        cell(&data["taken_at"]),
    );
    let mut rows = Vec::new();
    for n in items(&data["nodes"]) {
        rows.push(vec![
            cell(&n["name"]),
            cell(&n["packets"]),
            cell(&n["vectors"]),
            String::new(),
        ]);
        for e in items(&n["errors"]) {
            if e["count"].as_u64().unwrap_or(0) > 0 {
                rows.push(vec![
                    String::new(),
                    cell(&e["count"]),
                    String::new(),
                    format!("{} ({})", cell(&e["reason"]), cell(&e["text"])),
                ]);
            }
        }
    }
    out.push_str(&table(&["NODE", "PACKETS", "VECTORS", "COUNTER"], &rows));
    out
}

fn neighbors(data: &Value) -> String {
    let rows: Vec<Vec<String>> = items(data)
        .iter()
        .map(|n| {
            vec![
                cell(&n["port"]),
                cell(&n["address"]),
                n["mac"].as_str().unwrap_or("(incomplete)").to_string(),
            ]
        })
        .collect();
    table(&["PORT", "ADDRESS", "MAC"], &rows)
}

/// Seconds as `1d02h03m04s`, shortest form.
fn duration(v: &Value) -> String {
    let Some(s) = v.as_u64() else {
        return "-".into();
    };
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn bgp(data: &Value) -> String {
    let mut out = format!(
        "BGP AS {}, router id {}; {} prefixes advertised, {} learned prefixes installed\n\n",
        cell(&data["local_as"]),
        cell(&data["router_id"]),
        cell(&data["advertised"]),
        cell(&data["installed"]),
    );
    let gr = &data["graceful_restart"];
    if gr["enabled"].as_bool() == Some(true) {
        if gr["deferring"].as_bool() == Some(true) {
            let families: Vec<String> = items(&gr["deferred_families"]).iter().map(cell).collect();
            let waiting: Vec<String> = items(&gr["waiting_for_end_of_rib"])
                .iter()
                .map(cell)
                .collect();
            out.push_str(&format!(
                "graceful restart: IN RESTART DEFERRAL for {} ({} restored routes in the FIB; \
                 waiting for End-of-RIB from {}; timer {} s left)\n",
                families.join(", "),
                cell(&gr["restored_routes"]),
                if waiting.is_empty() {
                    "no peer yet".to_string()
                } else {
                    waiting.join(", ")
                },
                cell(&gr["deferral_seconds_left"]),
            ));
        } else {
            out.push_str(&format!(
                "graceful restart: on, not deferring ({})
",
                cell(&gr["start"])
            ));
        }
        out.push('\n');
    }
    for p in items(&data["annotation_problems"]) {
        out.push_str(&format!("ignored (last good settings kept): {}\n", cell(p)));
    }
    if !items(&data["annotation_problems"]).is_empty() {
        out.push('\n');
    }
    let rows: Vec<Vec<String>> = items(&data["neighbors"])
        .iter()
        .map(|n| {
            vec![
                cell(&n["address"]),
                cell(&n["asn"]),
                cell(&n["source"]),
                cell(&n["state"]),
                duration(&n["uptime_seconds"]),
                cell(&n["prefixes_in"]),
                cell(&n["prefixes_out"]),
                cell(&n["flaps"]),
                cell(&n["last_error"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NEIGHBOR",
            "ASN",
            "SOURCE",
            "STATE",
            "UPTIME",
            "PFX IN",
            "PFX OUT",
            "FLAPS",
            "LAST ERROR",
        ],
        &rows,
    ));
    out.push('\n');
    let mut rows = Vec::new();
    for r in items(&data["routes"]) {
        for (i, p) in items(&r["paths"]).iter().enumerate() {
            let selected = match (p["best"].as_bool(), p["multipath"].as_bool()) {
                (Some(true), _) => "*>",
                (_, Some(true)) => "*=",
                _ => "",
            };
            let stale = if p["restored"].as_bool() == Some(true) {
                "R"
            } else if p["stale"].as_bool() == Some(true) {
                "S"
            } else {
                ""
            };
            let flags = format!("{stale}{selected}");
            let as_path: Vec<String> = items(&p["as_path"]).iter().map(cell).collect();
            rows.push(vec![
                flags,
                if i == 0 {
                    cell(&r["prefix"])
                } else {
                    String::new()
                },
                cell(&p["next_hop"]),
                match p["peer"].as_str() {
                    Some(peer) => peer.to_string(),
                    None if p["restored"].as_bool() == Some(true) => "restored".into(),
                    None => "local".into(),
                },
                cell(&p["local_pref"]),
                cell(&p["med"]),
                if as_path.is_empty() {
                    "-".into()
                } else {
                    as_path.join(" ")
                },
            ]);
        }
    }
    out.push_str(&table(
        &["", "PREFIX", "NEXT HOP", "FROM", "LOCPRF", "MED", "AS PATH"],
        &rows,
    ));
    if data["routes_truncated"].as_bool() == Some(true) {
        out.push_str(&format!(
            "(first {} of {} prefixes)\n",
            items(&data["routes"]).len(),
            cell(&data["routes_total"])
        ));
    }
    out.push_str(
        "*> best, *= multipath (ECMP), S stale (kept while the peer restarts), \
         R restored (saved before our restart, until route selection)\n",
    );
    out
}

fn sync(data: &Value) -> String {
    let lat = &data["sync_latency"];
    let mean = match (lat["sum_seconds"].as_f64(), lat["count"].as_u64()) {
        (Some(sum), Some(n)) if n > 0 => format!("{:.1} ms", sum / n as f64 * 1e3),
        _ => "-".into(),
    };
    let age = |v: &Value| {
        v.as_f64()
            .map(|s| format!("{s:.1} s ago"))
            .unwrap_or_else(|| "-".into())
    };
    let mut rows = vec![
        vec!["ready".into(), cell(&data["ready"])],
        vec!["source".into(), cell(&data["source"])],
        vec!["started".into(), cell(&data["started"])],
        vec!["syncs".into(), cell(&data["syncs"])],
        vec![
            "last sync".into(),
            format!(
                "{} ({})",
                cell(&data["last_sync"]),
                age(&data["last_sync_age_seconds"])
            ),
        ],
        vec!["mean sync latency".into(), mean],
        vec!["tables version".into(), cell(&data["tables_version"])],
        vec![
            "dataplane".into(),
            format!(
                "tables version {}, counters from {}",
                cell(&data["dataplane_tables_version"]),
                age(&data["dataplane_snapshot_age_seconds"])
            ),
        ],
        vec!["services".into(), cell(&data["services"])],
    ];
    let problems = items(&data["problems"]);
    rows.push(vec!["problems".into(), problems.len().to_string()]);
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!("{:<18} {}\n", format!("{}:", r[0]), r[1]));
    }
    for p in problems {
        out.push_str(&format!("  {}\n", cell(p)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use switchyard_bgp::config::Family;
    use switchyard_bgp::speaker::{RouteEntry, RoutePath};

    fn data(what: &str) -> Value {
        let shared = crate::metrics::tests::sample_shared();
        crate::admin::answer(&shared, what, SystemTime::now())["data"].clone()
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     22\n");
    }

    #[test]
    fn renders_ipsec_virtual_ips_and_pools() {
        let data = serde_json::json!({
            "ike_sas": [{"id": "00000000000000aa", "peer": "hub/net", "state": "Established"}],
            "child_sas": [],
            "virtual_ips": [
                {"ike_sa": "00000000000000aa", "peer": "hub/net", "address": "198.19.100.1",
                 "role": "leased", "pool": "hub/net"},
                {"ike_sa": "00000000000000bb", "peer": "host/net", "address": "198.19.200.1",
                 "role": "assigned", "pool": null},
            ],
            "pools": [{"name": "hub/net", "size": 2, "leased": 1, "remembered": 0}],
            "counters": {},
        });
        let s = render(ShowWhat::Ipsec, &data);
        assert!(
            s.contains("198.19.100.1  leased    hub/net   hub/net  00000000000000aa"),
            "{s}"
        );
        assert!(s.contains("198.19.200.1  assigned  host/net  -"), "{s}");
        assert!(s.contains("hub/net  2     1       0"), "{s}");
        // Without virtual IPs the tables are left out.
        let s = render(
            ShowWhat::Ipsec,
            &serde_json::json!({"ike_sas": [], "child_sas": [], "counters": {}}),
        );
        assert!(!s.contains("VIRTUAL IP") && !s.contains("POOL"), "{s}");
    }

    #[test]
    fn renders_bgp() {
        let shared = crate::metrics::tests::bgp_shared();
        let v = crate::admin::answer(&shared, "bgp", SystemTime::now());
        assert_eq!(v["ok"], true, "{v}");
        let s = render(ShowWhat::Bgp, &v["data"]);
        assert!(s.starts_with("BGP AS 65000, router id 198.18.1.1"), "{s}");
        assert!(
            s.contains(
                "198.18.2.2  65001  flag    Established  1h02m05s  3       2        0      -"
            ),
            "{s}"
        );
        assert!(s.contains("198.18.2.3  65001  mesh    Active"), "{s}");
        assert!(s.contains("hold timer expired"), "{s}");
        assert!(
            s.contains("ignored (last good settings kept): Node node-a: kube-router.io/peer.asns"),
            "{s}"
        );
        assert!(
            s.contains("*>  203.0.113.0/24  198.18.2.2  198.18.2.2  -       5    65001 65010"),
            "{s}"
        );
        assert!(s.contains("*=                  198.18.2.3"), "{s}");
        assert!(!s.contains("graceful restart"), "{s}");

        // In deferral after our own restart, with a restored route.
        shared.update_bgp(|b| {
            b.restart = switchyard_bgp::speaker::RestartStatus {
                enabled: true,
                restarted: true,
                deferred: Family::ALL.to_vec(),
                waiting_for: vec!["198.18.2.2".parse().unwrap()],
                deferral_left: Some(std::time::Duration::from_secs(300)),
                restored_routes: 1,
                start_note: "graceful restart: state saved 3s ago, 1 routes restored".into(),
            };
            b.routes.push(RouteEntry {
                prefix: "198.19.0.0/16".parse().unwrap(),
                paths: vec![RoutePath {
                    peer: None,
                    next_hop: Some("198.18.2.9".parse().unwrap()),
                    as_path: vec![],
                    local_pref: None,
                    med: None,
                    best: true,
                    multipath: true,
                    stale: true,
                    restored: true,
                }],
            });
        });
        let v = crate::admin::answer(&shared, "bgp", SystemTime::now());
        assert_eq!(v["data"]["graceful_restart"]["deferring"], true, "{v}");
        let s = render(ShowWhat::Bgp, &v["data"]);
        assert!(
            s.contains(
                "graceful restart: IN RESTART DEFERRAL for ipv4, ipv6 (1 restored routes in the \
                 FIB; waiting for End-of-RIB from 198.18.2.2; timer 300 s left)"
            ),
            "{s}"
        );
        assert!(
            s.contains("R*>  198.19.0.0/16   198.18.2.9  restored"),
            "{s}"
        );
        shared.update_bgp(|b| {
            b.restart.deferred.clear();
            b.restart.waiting_for.clear();
        });
        let v = crate::admin::answer(&shared, "bgp", SystemTime::now());
        let s = render(ShowWhat::Bgp, &v["data"]);
        assert!(
            s.contains("graceful restart: on, not deferring (graceful restart: state saved"),
            "{s}"
        );
    }

    #[test]
    fn renders_each_answer() {
        let s = render(ShowWhat::Services, &data("services"));
        assert!(s.starts_with("SERVICE"), "{s}");
        assert!(
            s.contains("198.51.100.10:80/TCP  ClusterIP  http  198.18.2.3:8080"),
            "{s}"
        );
        let s = render(ShowWhat::Endpoints, &data("endpoints"));
        assert!(s.contains("http/TCP  198.18.2.3:8080  yes"), "{s}");
        let s = render(ShowWhat::Conntrack, &data("conntrack"));
        assert!(
            s.starts_with("1 connections tracked (capacity 1024)"),
            "{s}"
        );
        assert!(s.contains("showing 0 of them"), "{s}");
        let s = render(ShowWhat::Counters, &data("counters"));
        assert!(s.contains("ip4-lookup"), "{s}");
        assert!(s.contains("no_route (no route)"), "{s}");
        let s = render(ShowWhat::Sync, &data("sync"));
        assert!(s.contains("ready:             yes"), "{s}");
        let s = render(ShowWhat::Neighbors, &data("neighbors"));
        assert_eq!(s, "PORT  ADDRESS  MAC\n");
        let s = render(ShowWhat::Fib, &data("fib"));
        assert!(s.starts_with("PREFIX"), "{s}");
    }

    #[test]
    fn a_missing_socket_is_one_clear_error() {
        let e = request(Path::new("/nonexistent/switchyard.sock"), "services")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot reach the agent's admin socket"), "{e}");
        assert!(!e.contains('\n'));
    }
}
