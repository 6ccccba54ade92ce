//! BGP in the agent, end to end with a real gobgpd: `switchyard agent --bgp-asn ...` in the
//! lab's node namespace peers with a gobgpd started in the same namespace on loopback
//! addresses (nothing leaves the namespace; gobgpd only talks BGP, it installs no routes).
//!
//! ```text
//!   client 198.18.1.2 ── [node: switchyard agent AS 65000 127.0.0.1:1790] ── server 198.18.2.2
//!                              │ BGP on lo                                   lo 203.0.113.9
//!                        gobgpd AS 65001 127.0.0.2:1791, API 127.0.0.3
//! ```
//!
//! gobgpd announces 203.0.113.0/24 with next hop 198.18.2.2 (the server), so the client
//! reaches 203.0.113.9 only through the route the agent learned; the agent advertises the
//! Service addresses and its pod CIDR, which must show up in gobgpd's RIB and go away when
//! the Service does.
//!
//! Needs gobgpd and gobgp (scripts/install-deps.sh): without them the test prints
//! "skipped: reason", or fails when `CI` is set.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, have_tool as have, skip_or_fail, text, Driver, Killed, Lab, Ns};

const GOBGP_API: &str = "127.0.0.3";
const GOBGP_API_PORT: u16 = 50051;
const CLUSTER_IP: &str = "198.51.100.20";
const LB_CLUSTER_IP: &str = "198.51.100.21";
const LB_IP: &str = "203.0.113.50";
const POD_CIDR: &str = "198.19.128.0/24";
const LEARNED: &str = "203.0.113.0/24";
const BEHIND_SERVER: &str = "203.0.113.9";

const GOBGPD_CONF: &str = r#"[global.config]
  as = 65001
  router-id = "198.18.2.2"
  port = 1791
  local-address-list = ["127.0.0.2"]

[global.apply-policy.config]
  export-policy-list = ["nh"]
  default-export-policy = "accept-route"

# Routes go out with the server as next hop (gobgpd would put its own loopback address).
[[policy-definitions]]
  name = "nh"
  [[policy-definitions.statements]]
    name = "v4"
    [policy-definitions.statements.conditions.bgp-conditions]
      afi-safi-in-list = ["ipv4-unicast"]
    [policy-definitions.statements.actions]
      route-disposition = "accept-route"
    [policy-definitions.statements.actions.bgp-actions]
      set-next-hop = "198.18.2.2"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.1"
    peer-as = 65000
  [neighbors.transport.config]
    local-address = "127.0.0.2"
    remote-port = 1790
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
"#;

fn service(name: &str, cluster_ip: &str, extra_spec: &str, status: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n{extra_spec}  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n{status}"
    )
}

fn slice(service: &str, ip: &str, node: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\n\
         ports: [{{name: http, protocol: TCP, port: 8080}}]\n\
         endpoints:\n- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n"
    )
}

/// `web`: a ClusterIP Service (when `with_web`); `lb`: a LoadBalancer Service with
/// externalTrafficPolicy Local whose one endpoint is on `lb_node`; the Node with its pod CIDR.
fn write_manifests(lab: &Lab, with_web: bool, lb_node: &str) {
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    let mut docs = vec![
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\n\
             spec: {{podCIDR: {POD_CIDR}, podCIDRs: [{POD_CIDR}]}}\n"
        ),
        service(
            "lb",
            LB_CLUSTER_IP,
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
            &format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n"),
        ),
        slice("lb", "198.18.2.4", lb_node),
    ];
    if with_web {
        docs.push(service("web", CLUSTER_IP, "", ""));
        docs.push(slice("web", "198.18.2.3", "node-b"));
    }
    let tmp = dir.join(".bgp.yaml.tmp");
    fs::write(&tmp, docs.join("---\n")).expect("write manifests");
    fs::rename(&tmp, dir.join("bgp.yaml")).expect("rename manifests");
}

fn gobgp(lab: &Lab, args: &str) -> Result<String, String> {
    let out = lab.exec(
        Ns::Node,
        &format!("gobgp -u {GOBGP_API} -p {GOBGP_API_PORT} {args}"),
    );
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

fn rib(lab: &Lab) -> String {
    gobgp(lab, "global rib -a ipv4").unwrap_or_else(|e| e)
}

fn show_bgp(lab: &Lab) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["show", "bgp", "--json", "--socket"])
        .arg(lab.admin_socket())
        .output()
        .expect("run switchyard show");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn gobgpd_log(lab: &Lab) -> String {
    lab.read("gobgpd.out") + &lab.read("gobgpd.err")
}

fn ping_once(lab: &Lab) -> bool {
    lab.ping(Ns::Client, "-c 1 -W 1", BEHIND_SERVER).0
}

#[test]
fn agent_bgp_advertises_services_and_installs_learned_routes() {
    const TEST: &str = "agent_bgp_advertises_services_and_installs_learned_routes";
    if !(have("gobgpd") && have("gobgp")) {
        skip_or_fail(TEST, "gobgpd/gobgp not installed (scripts/install-deps.sh)");
        return;
    }
    let Some(mut lab) = Lab::new(TEST, &["gobgpd", "gobgp"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: BGP runs in the agent, which has no kernel-mode equivalent");
        return;
    }
    write_manifests(&lab, true, "node-b");
    lab.exec_ok(
        Ns::Server,
        &format!("ip addr add {BEHIND_SERVER}/32 dev lo"),
    );
    let conf = lab.dir.join("gobgpd.toml");
    fs::write(&conf, GOBGPD_CONF).expect("write gobgpd.toml");
    let _gobgpd = Killed(lab.spawn(
        Ns::Node,
        "gobgpd",
        &format!(
            "gobgpd -f {} --api-hosts {GOBGP_API}:{GOBGP_API_PORT} -p --pprof-disable",
            conf.display()
        ),
        Duration::from_secs(110),
    ));
    eventually(
        "the gobgpd API",
        10,
        || gobgp(&lab, "global").map(|_| ()),
        || gobgpd_log(&lab),
    );

    // A bad --bgp-peer: one error line, exit 1, and the password is not printed.
    let manifests = lab.dir.join("manifests");
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let bad = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(Ns::Node),
            bin,
            "agent",
            "--manifests",
        ])
        .arg(&manifests)
        .args([
            "-i",
            "c0",
            "--admin-socket",
            "/nonexistent/never-bound.sock",
            "--bgp-asn",
            "65000",
            "--bgp-peer",
            "127.0.0.2=65001,password=hunter2x,bogus",
        ])
        .output()
        .expect("run switchyard agent");
    let err = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.contains("--bgp-peer"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        !err.contains("hunter2x"),
        "the password must not be printed: {err}"
    );

    lab.start_agent(
        Driver::AfPacket,
        &[
            "--manifests",
            manifests.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
            "--poll-interval",
            "0.2",
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
    let neighbor = || gobgp(&lab, "neighbor").unwrap_or_else(|e| e);
    eventually(
        "the BGP session",
        30,
        || {
            let n = neighbor();
            n.contains("Establ").then_some(()).ok_or(n)
        },
        || format!("{}\n{}", gobgpd_log(&lab), lab.read("router.stderr")),
    );

    // A second agent whose BGP port is taken: one error line naming it, exit 1.
    let mut second = lab.router_args(Driver::AfPacket, &[]);
    second[0] = "agent".into();
    let taken = Command::new("ip")
        .args(["netns", "exec", &lab.ns(Ns::Node), bin])
        .args(&second)
        .args([
            "--manifests",
            manifests.to_str().expect("utf-8"),
            "--metrics-bind-address",
            "off",
            "--healthz-bind-address",
            "off",
            "--admin-socket",
        ])
        .arg(lab.dir.join("second.sock"))
        .args(["--bgp-asn", "65000", "--bgp-listen", "127.0.0.1:1790"])
        .output()
        .expect("run a second switchyard agent");
    let err = text(&taken.stderr);
    assert_eq!(taken.status.code(), Some(1), "{err}");
    assert!(
        err.contains("switchyard: error: BGP: listen on 127.0.0.1:1790"),
        "{err}"
    );

    // Ours in gobgpd: the cluster IPs and the pod CIDR; not the LB IP of the Local Service
    // (its endpoint is on another node).
    eventually(
        "our routes in gobgpd",
        15,
        || {
            let r = rib(&lab);
            let ok = r.contains(&format!("{CLUSTER_IP}/32"))
                && r.contains(&format!("{LB_CLUSTER_IP}/32"))
                && r.contains(POD_CIDR)
                && r.contains("198.18.2.1");
            ok.then_some(()).ok_or(r)
        },
        || lab.read("router.stderr"),
    );
    assert!(!rib(&lab).contains(LB_IP), "{}", rib(&lab));

    // The Local Service gets an endpoint here: its LB IP is advertised.
    write_manifests(&lab, true, "node-a");
    eventually(
        "the LB IP in gobgpd",
        15,
        || {
            let r = rib(&lab);
            r.contains(&format!("{LB_IP}/32")).then_some(()).ok_or(r)
        },
        || lab.read("router.stderr"),
    );

    // gobgpd's route: the client reaches the server's 203.0.113.9 through the dataplane.
    assert!(
        !ping_once(&lab),
        "{BEHIND_SERVER} reachable before any route"
    );
    gobgp(
        &lab,
        &format!("global rib add -a ipv4 {LEARNED} nexthop 198.18.2.2 origin igp"),
    )
    .expect("gobgp rib add");
    let announced = Instant::now();
    eventually(
        "ping through the learned route",
        15,
        || {
            ping_once(&lab)
                .then_some(())
                .ok_or_else(|| "no reply".into())
        },
        || format!("{}\n{}", show_bgp(&lab), lab.read("router.stderr")),
    );
    eprintln!("learned route usable after {:?}", announced.elapsed());
    lab.assert_ping(Ns::Client, BEHIND_SERVER);

    // `show bgp`: the session and the learned route with its next hop, best.
    eventually(
        "show bgp",
        5,
        || {
            let v = show_bgp(&lab);
            let up = v["neighbors"][0]["state"] == "Established";
            let route = v["routes"].as_array().into_iter().flatten().any(|r| {
                r["prefix"] == LEARNED
                    && r["paths"][0]["next_hop"] == "198.18.2.2"
                    && r["paths"][0]["best"] == true
                    && r["paths"][0]["as_path"] == serde_json::json!([65001])
            });
            let installed = v["installed"] == 1;
            (up && route && installed)
                .then_some(())
                .ok_or(v.to_string())
        },
        String::new,
    );
    let human = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["show", "bgp", "--socket"])
        .arg(lab.admin_socket())
        .output()
        .expect("run switchyard show");
    let human = text(&human.stdout);
    eprintln!("switchyard show bgp:\n{human}");
    assert!(
        human.contains("Established") && human.contains(LEARNED),
        "{human}"
    );

    // Withdrawn: the route leaves the FIB.
    gobgp(&lab, &format!("global rib del -a ipv4 {LEARNED}")).expect("gobgp rib del");
    eventually(
        "the route withdrawn",
        15,
        || {
            (!ping_once(&lab))
                .then_some(())
                .ok_or_else(|| "still answers".into())
        },
        || show_bgp(&lab).to_string(),
    );

    // The Service deleted: its /32 is withdrawn from gobgpd.
    write_manifests(&lab, false, "node-a");
    eventually(
        "the Service's route withdrawn",
        15,
        || {
            let r = rib(&lab);
            (!r.contains(&format!("{CLUSTER_IP}/32")) && r.contains(&format!("{LB_IP}/32")))
                .then_some(())
                .ok_or(r)
        },
        || lab.read("router.stderr"),
    );

    let out = lab.finish().expect("agent output");
    assert!(out.stderr.contains("BGP session established"), "{out}");
    // SIGTERM closes the session with Cease rather than a bare TCP close.
    assert!(out.stderr.contains("BGP sessions closed"), "{out}");
}
