//! BGP peers from Node objects, end to end: `switchyard agent --kubeconfig` in the lab's node
//! namespace, the in-repo API server on that namespace's loopback ([`common::apiserver`]),
//! and every BGP session on loopback addresses inside the namespace (nothing leaves it;
//! nothing is installed into a kernel).
//!
//! ```text
//!   node namespace, lo:
//!     agent AS 65000 127.0.0.1:1790 ── gobgpd "static"  AS 65001 127.0.0.2:1791 (--bgp-peer)
//!                                  └─ gobgpd "dynamic" AS 65002 127.0.0.3:1792 (Node annotation, MD5)
//!
//!     agent node-a 127.0.0.2:1790 ══ iBGP AS 64512 ══ agent node-b 127.0.0.3:1790
//!     (port c0)                                       (port s0)
//! ```
//!
//! Needs root for the namespaces and gobgpd/gobgp (scripts/install-deps.sh): otherwise the
//! tests print "skipped: reason", or fail when `CI` is set.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::apiserver::NsApiServer;
use common::{eventually, have_tool, skip_or_fail, text, Driver, Killed, Lab, Ns};
use serde_json::{json, Value};

const MD5_PASSWORD: &str = "sy-md5-s3cret";

/// gobgpd peering with the agent at 127.0.0.1:1790.
fn gobgpd_conf(asn: u32, addr: &str, port: u16, password: Option<&str>) -> String {
    let auth = password
        .map(|p| format!("    auth-password = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"[global.config]
  as = {asn}
  router-id = "198.51.100.{last}"
  port = {port}
  local-address-list = ["{addr}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.1"
    peer-as = 65000
{auth}  [neighbors.transport.config]
    local-address = "{addr}"
    remote-port = 1790
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
"#,
        last = asn - 65000,
    )
}

struct Gobgpd {
    name: &'static str,
    api: String,
    _proc: Killed,
}

impl Gobgpd {
    fn start(
        lab: &Lab,
        name: &'static str,
        asn: u32,
        addr: &str,
        port: u16,
        pw: Option<&str>,
    ) -> Self {
        let conf = lab.dir.join(format!("{name}.toml"));
        fs::write(&conf, gobgpd_conf(asn, addr, port, pw)).expect("write gobgpd config");
        let api = format!("{addr}:{}", 50051 + u16::from(addr.ends_with('3')));
        let proc = Killed(lab.spawn(
            Ns::Node,
            name,
            &format!(
                "gobgpd -f {} --api-hosts {api} -p --pprof-disable",
                conf.display()
            ),
            Duration::from_secs(110),
        ));
        let g = Gobgpd {
            name,
            api,
            _proc: proc,
        };
        eventually(
            "the gobgpd API",
            10,
            || g.cli(lab, "global").map(|_| ()),
            || g.log(lab),
        );
        g
    }

    fn cli(&self, lab: &Lab, args: &str) -> Result<String, String> {
        let (host, port) = self.api.split_once(':').expect("host:port");
        let out = lab.exec(Ns::Node, &format!("gobgp -u {host} -p {port} {args}"));
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
        }
    }

    fn neighbor(&self, lab: &Lab) -> String {
        self.cli(lab, "neighbor").unwrap_or_else(|e| e)
    }

    fn log(&self, lab: &Lab) -> String {
        lab.read(&format!("{}.out", self.name)) + &lab.read(&format!("{}.err", self.name))
    }
}

fn show_bgp(socket: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["show", "bgp", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("run switchyard show");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The neighbor `addr` in a `show bgp --json` answer.
fn neighbor<'a>(v: &'a Value, addr: &str) -> Option<&'a Value> {
    v["neighbors"]
        .as_array()?
        .iter()
        .find(|n| n["address"] == addr)
}

/// The paths of `prefix` in a `show bgp --json` answer.
fn paths<'a>(v: &'a Value, prefix: &str) -> Vec<&'a Value> {
    v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["prefix"] == prefix)
        .flat_map(|r| r["paths"].as_array().into_iter().flatten())
        .collect()
}

fn node(name: &str, internal_ip: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]}
    })
}

fn cluster_ip_service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
        }
    })
}

/// A LoadBalancer Service with externalTrafficPolicy Local and one ready endpoint on `node`:
/// only that node announces `lb_ip`.
fn local_lb(name: &str, cluster_ip: &str, lb_ip: &str, node: &str) -> [Value; 2] {
    let mut svc = cluster_ip_service(name, cluster_ip);
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": lb_ip}]}});
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": name}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": ["198.18.2.9"], "conditions": {"ready": true}, "nodeName": node}]
    });
    [svc, slice]
}

fn metrics(lab: &Lab, addr: &str) -> String {
    let out = lab.exec(
        Ns::Node,
        &format!(
            "python3 -c \"import urllib.request as u; \
             print(u.urlopen('http://{addr}/metrics').read().decode())\""
        ),
    );
    text(&out.stdout)
}

/// A lab for `test`, or `None` (after "skipped: ...", or a failure with `CI` set) when this
/// machine cannot run it.
fn bgp_lab(test: &str, gobgpd: bool) -> Option<Lab> {
    if gobgpd && !(have_tool("gobgpd") && have_tool("gobgp")) {
        skip_or_fail(test, "gobgpd/gobgp not installed (scripts/install-deps.sh)");
        return None;
    }
    let lab = Lab::new(test, &["python3"])?;
    if lab.kernel {
        eprintln!("skipped: BGP runs in the agent, which has no kernel-mode equivalent");
        return None;
    }
    Some(lab)
}

/// (a) A peer added by a Node annotation at run time comes up (with its base64 MD5
/// password); a bad annotation is reported and changes nothing; removing the annotation
/// closes the session with Cease / Peer De-configured and withdraws what the peer taught
/// us, while the `--bgp-peer` session stays Established throughout.
#[test]
fn bgp_peers_follow_node_annotations() {
    const TEST: &str = "bgp_peers_follow_node_annotations";
    let Some(mut lab) = bgp_lab(TEST, true) else {
        return;
    };
    let api = NsApiServer::start(&lab.ns(Ns::Node));
    let kubeconfig = lab.dir.join("kubeconfig");
    api.server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    api.server
        .create(&node("node-a", "198.18.2.1", json!({})))
        .expect("create Node");
    api.server
        .create(&cluster_ip_service("web", "198.51.100.20"))
        .expect("create Service");

    let fixed = Gobgpd::start(&lab, "gobgpd-static", 65001, "127.0.0.2", 1791, None);
    let dynamic = Gobgpd::start(
        &lab,
        "gobgpd-dynamic",
        65002,
        "127.0.0.3",
        1792,
        Some(MD5_PASSWORD),
    );
    lab.start_agent(
        Driver::AfPacket,
        &[
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
            "--metrics-bind-address",
            "127.0.0.1:19251",
            "--bgp-asn",
            "65000",
            "--bgp-listen",
            "127.0.0.1:1790",
            "--bgp-peer",
            "127.0.0.2=65001,port=1791,hold=9",
            "--bgp-next-hop",
            "198.18.2.1",
        ],
    );
    let socket = lab.admin_socket();
    let log = |lab: &Lab| lab.read("router.stderr");
    eventually(
        "the --bgp-peer session",
        30,
        || {
            let n = fixed.neighbor(&lab);
            n.contains("Establ").then_some(()).ok_or(n)
        },
        || format!("{}\n{}", fixed.log(&lab), log(&lab)),
    );

    // Added through the Node: up, with the password, and it gets our routes.
    let encoded = base64::engine::general_purpose::STANDARD.encode(MD5_PASSWORD);
    let annotated = json!({
        "kube-router.io/peer.ips": "127.0.0.3",
        "kube-router.io/peer.asns": "65002",
        "kube-router.io/peer.ports": "1792",
        "kube-router.io/peer.passwords": encoded,
    });
    api.server
        .apply(&node("node-a", "198.18.2.1", annotated.clone()))
        .expect("annotate the Node");
    eventually(
        "the annotated peer's session",
        30,
        || {
            let v = show_bgp(&socket);
            let n = neighbor(&v, "127.0.0.3").ok_or(v.to_string())?;
            (n["state"] == "Established" && n["source"] == "annotation")
                .then_some(())
                .ok_or(v.to_string())
        },
        || format!("{}\n{}", dynamic.log(&lab), log(&lab)),
    );
    eventually(
        "our route in the annotated peer",
        15,
        || {
            let r = dynamic.cli(&lab, "global rib -a ipv4")?;
            r.contains("198.51.100.20/32").then_some(()).ok_or(r)
        },
        || log(&lab),
    );
    // What it teaches us reaches the FIB.
    dynamic
        .cli(
            &lab,
            "global rib add -a ipv4 203.0.113.0/24 nexthop 198.18.2.2 origin igp",
        )
        .expect("gobgp rib add");
    eventually(
        "the annotated peer's route installed",
        15,
        || {
            let v = show_bgp(&socket);
            (v["installed"] == 1 && !paths(&v, "203.0.113.0/24").is_empty())
                .then_some(())
                .ok_or(v.to_string())
        },
        || log(&lab),
    );
    let m = metrics(&lab, "127.0.0.1:19251");
    for want in [
        "switchyard_bgp_session_up{peer=\"127.0.0.3\",asn=\"65002\"} 1",
        "switchyard_bgp_peers{source=\"annotation\"} 1",
        "switchyard_bgp_peers{source=\"flag\"} 1",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }

    // A bad value: one log line, counted, and the running peers stay.
    let mut bad = annotated.clone();
    bad["kube-router.io/peer.asns"] = json!("65002,0");
    api.server
        .apply(&node("node-a", "198.18.2.1", bad))
        .expect("bad annotation");
    eventually(
        "the bad annotation reported",
        15,
        || {
            let v = show_bgp(&socket);
            (v["annotation_errors"] == 1)
                .then_some(())
                .ok_or(v.to_string())
        },
        || log(&lab),
    );
    let v = show_bgp(&socket);
    assert_eq!(
        neighbor(&v, "127.0.0.3").map(|n| &n["state"]),
        Some(&json!("Established")),
        "{v}"
    );
    let stderr = log(&lab);
    assert_eq!(
        stderr.matches("Node annotation ignored").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("kube-router.io/peer.asns has 2 entries but kube-router.io/peer.ips has 1"),
        "{stderr}"
    );
    assert!(
        metrics(&lab, "127.0.0.1:19251").contains("switchyard_bgp_node_annotation_errors_total 1")
    );

    // Removed: the peer hears Cease / Peer De-configured, its route leaves the FIB, and the
    // static session never noticed.
    api.server
        .apply(&node("node-a", "198.18.2.1", json!({})))
        .expect("remove the annotations");
    eventually(
        "gobgpd to see the session go down",
        20,
        || {
            let n = dynamic.neighbor(&lab);
            (!n.contains("Establ")).then_some(()).ok_or(n)
        },
        || log(&lab),
    );
    eventually(
        "the route withdrawn",
        15,
        || {
            let v = show_bgp(&socket);
            let gone = neighbor(&v, "127.0.0.3").is_none()
                && paths(&v, "203.0.113.0/24").is_empty()
                && v["installed"] == 0;
            gone.then_some(()).ok_or(v.to_string())
        },
        || log(&lab),
    );
    let dlog = dynamic.log(&lab);
    assert!(
        dlog.contains("peer deconfigured") || dlog.contains("subcode 3"),
        "gobgpd was not told Peer De-configured:\n{dlog}"
    );
    let v = show_bgp(&socket);
    let f = neighbor(&v, "127.0.0.2").expect("the static peer");
    assert_eq!(
        (&f["state"], &f["flaps"], &f["source"]),
        (&json!("Established"), &json!(0), &json!("flag")),
        "{v}"
    );
    assert!(fixed.neighbor(&lab).contains("Establ"));

    let out = lab.finish().expect("agent output");
    for secret in [MD5_PASSWORD, encoded.as_str()] {
        assert!(
            !out.stderr.contains(secret),
            "the password is in the log\n{out}"
        );
    }
}

/// One more agent in the node namespace, on one dataplane port of its own, with a static
/// route to the other node's subnet (`route`, PREFIX=GW): the next hop the other node
/// announces (its `--bgp-next-hop`) must resolve for its routes to be used (RFC 4271
/// 9.1.2.1), as it would through a shared subnet or the IGP in a real cluster.
fn spawn_agent(
    lab: &Lab,
    name: &str,
    port: &str,
    addr: &str,
    route: &str,
    listen: &str,
    kubeconfig: &std::path::Path,
) -> Killed {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let socket = lab.dir.join(format!("{name}.sock"));
    Killed(lab.spawn(
        Ns::Node,
        name,
        &format!(
            "{bin} agent --dataplane afpacket -i {port} -a {port}={addr}/24 -r {route} \
             --duration 100 \
             --kubeconfig {} --node-name {name} --admin-socket {} \
             --metrics-bind-address off --healthz-bind-address off \
             --bgp-asn 64512 --bgp-listen {listen}:1790 --bgp-advertise load-balancer-ip \
             --bgp-next-hop {addr}",
            kubeconfig.display(),
            socket.display(),
        ),
        Duration::from_secs(110),
    ))
}

/// (b) Two agents mesh over iBGP from the Node objects alone (no --bgp-peer) and exchange
/// their Service VIP routes; a Node in another AS is left out; a deleted Node's session goes.
#[test]
fn two_agents_mesh_over_ibgp_from_node_objects() {
    const TEST: &str = "two_agents_mesh_over_ibgp_from_node_objects";
    let Some(lab) = bgp_lab(TEST, false) else {
        return;
    };
    let api = NsApiServer::start(&lab.ns(Ns::Node));
    let kubeconfig = lab.dir.join("kubeconfig");
    api.server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    for n in [
        node("node-a", "127.0.0.2", json!({})),
        node("node-b", "127.0.0.3", json!({})),
        node(
            "node-c",
            "127.0.0.4",
            json!({"kube-router.io/node.asn": "64999"}),
        ),
    ] {
        api.server.create(&n).expect("create Node");
    }
    for o in local_lb("lb-a", "198.51.100.10", "203.0.113.10", "node-a")
        .into_iter()
        .chain(local_lb("lb-b", "198.51.100.11", "203.0.113.20", "node-b"))
    {
        api.server.create(&o).expect("create");
    }
    let (sock_a, sock_b) = (lab.dir.join("node-a.sock"), lab.dir.join("node-b.sock"));
    let logs = || format!("{}\n{}", lab.read("node-a.err"), lab.read("node-b.err"));

    // A first, until it has planned its mesh; then B, which finds A listening.
    let _a = spawn_agent(
        &lab,
        "node-a",
        "c0",
        "198.18.1.1",
        "198.18.2.0/24=198.18.1.2",
        "127.0.0.2",
        &kubeconfig,
    );
    eventually(
        "node-a's mesh peer",
        20,
        || {
            let v = show_bgp(&sock_a);
            let n = neighbor(&v, "127.0.0.3").ok_or(v.to_string())?;
            (n["source"] == "mesh").then_some(()).ok_or(v.to_string())
        },
        logs,
    );
    let _b = spawn_agent(
        &lab,
        "node-b",
        "s0",
        "198.18.2.1",
        "198.18.1.0/24=198.18.2.2",
        "127.0.0.3",
        &kubeconfig,
    );
    let learned = |socket: &std::path::Path, prefix: &str, from: &str| -> Result<(), String> {
        let v = show_bgp(socket);
        paths(&v, prefix)
            .iter()
            .any(|p| p["peer"] == from && p["best"] == true && p["as_path"] == json!([]))
            .then_some(())
            .ok_or(v.to_string())
    };
    eventually(
        "node-a to learn node-b's VIP",
        30,
        || learned(&sock_a, "203.0.113.20/32", "127.0.0.3"),
        logs,
    );
    eventually(
        "node-b to learn node-a's VIP",
        15,
        || learned(&sock_b, "203.0.113.10/32", "127.0.0.2"),
        logs,
    );
    for (socket, peer) in [(&sock_a, "127.0.0.3"), (&sock_b, "127.0.0.2")] {
        let v = show_bgp(socket);
        let n = v["neighbors"].as_array().expect("neighbors");
        assert_eq!(n.len(), 1, "only the other node of our AS: {v}");
        assert_eq!(
            (&n[0]["address"], &n[0]["asn"], &n[0]["state"]),
            (&json!(peer), &json!(64512), &json!("Established")),
            "{v}"
        );
        assert_eq!(v["local_as"], 64512);
    }

    // node-b leaves the cluster: node-a drops the session and the route.
    api.server
        .delete("v1", "Node", "", "node-b")
        .expect("delete Node");
    eventually(
        "node-a to forget node-b",
        15,
        || {
            let v = show_bgp(&sock_a);
            (neighbor(&v, "127.0.0.3").is_none() && paths(&v, "203.0.113.20/32").is_empty())
                .then_some(())
                .ok_or(v.to_string())
        },
        logs,
    );
    eventually(
        "node-b to see the session go down",
        15,
        || {
            let v = show_bgp(&sock_b);
            let n = neighbor(&v, "127.0.0.2").ok_or(v.to_string())?;
            (n["state"] != "Established"
                && n["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Peer De-configured") || e.contains("6/3")))
            .then_some(())
            .ok_or(v.to_string())
        },
        logs,
    );
}
