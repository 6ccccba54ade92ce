//! BGP graceful restart of the agent itself (RFC 4724 §4.1), end to end: `switchyard agent
//! --bgp-state-dir DIR` peers with a gobgpd that helps restarting peers, is stopped with
//! SIGTERM and started again on the same state directory.
//!
//! ```text
//!   client 198.18.1.2 ── [node: switchyard agent AS 65000 127.0.0.1:1790] ── server 198.18.2.2
//!                              │ BGP on lo                                   lo 203.0.113.9
//!                        gobgpd AS 65001 127.0.0.2:1791 (graceful restart), API 127.0.0.3
//! ```
//!
//! What must hold: while the agent is down gobgpd keeps our Service address (stale) and never
//! withdraws it; the restarted agent forwards along the learned route at once, before any BGP
//! session is up (restored from the state file, shown as restored in `show bgp`, in restart
//! deferral); once gobgpd is back and has sent End-of-RIB the route is the learned one again;
//! a Service deleted while the agent was down is withdrawn by gobgpd after our End-of-RIB.
//!
//! To look at the agent between its start and its first session, the test holds the BGP
//! ports shut with an nftables table in the node namespace (the lab's own) for a moment.
//!
//! Needs gobgpd, gobgp and nft: without them the test prints "skipped: reason", or fails when
//! `CI` is set.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{eventually, have_tool as have, skip_or_fail, text, Driver, Killed, Lab, Ns};

const GOBGP_API: &str = "127.0.0.3";
const GOBGP_API_PORT: u16 = 50051;
const VIP: &str = "198.51.100.20";
const VIP_GONE: &str = "198.51.100.22";
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
  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = 120
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
"#;

fn service(name: &str, cluster_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n"
    )
}

/// The Node, `web` (VIP) and, when `with_gone`, `gone` (VIP_GONE).
fn write_manifests(lab: &Lab, with_gone: bool) {
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    let mut docs = vec![
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n".to_string(),
        service("web", VIP),
    ];
    if with_gone {
        docs.push(service("gone", VIP_GONE));
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

/// gobgpd's IPv4 RIB: (prefix, stale) for each path.
fn rib(lab: &Lab) -> Vec<(String, bool)> {
    let v: serde_json::Value =
        serde_json::from_str(&gobgp(lab, "global rib -a ipv4 -j").unwrap_or_default())
            .unwrap_or_default();
    let mut out = Vec::new();
    for (prefix, paths) in v.as_object().into_iter().flatten() {
        for p in paths.as_array().into_iter().flatten() {
            out.push((prefix.clone(), p["stale"].as_bool().unwrap_or(false)));
        }
    }
    out
}

fn stale_in_rib(lab: &Lab, prefix: &str) -> Option<bool> {
    rib(lab)
        .into_iter()
        .find(|(p, _)| p == prefix)
        .map(|(_, s)| s)
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

/// The path of LEARNED in `show bgp`: (restored, stale), if there is one.
fn learned_path(v: &serde_json::Value) -> Option<(bool, bool)> {
    let r = v["routes"]
        .as_array()?
        .iter()
        .find(|r| r["prefix"] == LEARNED)?;
    let p = &r["paths"][0];
    Some((p["restored"].as_bool()?, p["stale"].as_bool()?))
}

#[test]
fn agent_bgp_graceful_restart() {
    const TEST: &str = "agent_bgp_graceful_restart";
    if !(have("gobgpd") && have("gobgp") && have("nft")) {
        skip_or_fail(
            TEST,
            "gobgpd/gobgp/nft not installed (scripts/install-deps.sh)",
        );
        return;
    }
    let Some(mut lab) = Lab::new(TEST, &["gobgpd", "gobgp", "nft"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: BGP runs in the agent, which has no kernel-mode equivalent");
        return;
    }
    write_manifests(&lab, true);
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
        Duration::from_secs(170),
    ));
    eventually(
        "the gobgpd API",
        10,
        || gobgp(&lab, "global").map(|_| ()),
        || gobgpd_log(&lab),
    );
    gobgp(
        &lab,
        &format!("global rib add -a ipv4 {LEARNED} nexthop 198.18.2.2 origin igp"),
    )
    .expect("gobgp rib add");

    let manifests = lab.dir.join("manifests");
    let state = lab.dir.join("bgp-state");
    let agent_args = [
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
        "--bgp-advertise",
        "cluster-ip",
        "--bgp-state-dir",
        state.to_str().expect("utf-8"),
        "--bgp-graceful-restart-time",
        "90",
    ];
    lab.start_agent(Driver::AfPacket, &agent_args);
    let vip = format!("{VIP}/32");
    let vip_gone = format!("{VIP_GONE}/32");
    eventually(
        "our VIPs in gobgpd and the learned route in the FIB",
        30,
        || {
            let ok = stale_in_rib(&lab, &vip) == Some(false)
                && stale_in_rib(&lab, &vip_gone) == Some(false)
                && ping_once(&lab);
            ok.then_some(()).ok_or(format!("{:?}", rib(&lab)))
        },
        || format!("{}\n{}", gobgpd_log(&lab), lab.read("router.stderr")),
    );
    let v = show_bgp(&lab);
    assert_eq!(v["graceful_restart"]["enabled"], true, "{v}");
    assert_eq!(v["graceful_restart"]["restarted"], false, "{v}");

    // Every change of gobgpd's RIB from here on, withdrawals included.
    let _monitor = Killed(lab.spawn(
        Ns::Node,
        "monitor",
        &format!("gobgp -u {GOBGP_API} -p {GOBGP_API_PORT} monitor global rib -a ipv4 -j"),
        Duration::from_secs(120),
    ));
    std::thread::sleep(Duration::from_millis(500));

    // SIGTERM: the agent saves its state and closes the session without NOTIFICATION.
    let out = lab.finish().expect("agent output");
    assert!(out.stderr.contains("restart state saved"), "{out}");
    assert!(out.stderr.contains("without NOTIFICATION"), "{out}");
    let saved = fs::read_to_string(state.join("bgp-restart-state")).expect("state file");
    assert!(
        saved.contains(&format!("route {LEARNED} 198.18.2.2")),
        "{saved}"
    );
    // gobgpd keeps our routes, stale.
    eventually(
        "our VIPs stale in gobgpd",
        15,
        || {
            let ok = stale_in_rib(&lab, &vip) == Some(true)
                && stale_in_rib(&lab, &vip_gone) == Some(true);
            ok.then_some(()).ok_or(format!("{:?}", rib(&lab)))
        },
        || gobgpd_log(&lab),
    );

    // While the agent is down: `gone` is deleted, and BGP is held off for a while.
    write_manifests(&lab, false);
    lab.exec_ok(
        Ns::Node,
        "nft add table inet sy_gr_hold && \
         nft add chain inet sy_gr_hold input '{ type filter hook input priority 0; }' && \
         nft add rule inet sy_gr_hold input tcp dport '{ 1790, 1791 }' drop && \
         nft add rule inet sy_gr_hold input tcp sport '{ 1790, 1791 }' drop",
    );
    lab.start_agent(Driver::AfPacket, &agent_args);
    // No session, yet the learned route forwards: restored from the state file.
    let v = show_bgp(&lab);
    assert_eq!(v["graceful_restart"]["restarted"], true, "{v}");
    assert_eq!(v["graceful_restart"]["deferring"], true, "{v}");
    eventually(
        "the restored route in show bgp and in the FIB",
        10,
        || {
            let v = show_bgp(&lab);
            let ok = learned_path(&v) == Some((true, true)) && ping_once(&lab);
            ok.then_some(()).ok_or(v.to_string())
        },
        || lab.read("router.stderr"),
    );
    assert_ne!(
        show_bgp(&lab)["neighbors"][0]["state"],
        "Established",
        "the BGP ports are held shut"
    );
    let human = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["show", "bgp", "--socket"])
        .arg(lab.admin_socket())
        .output()
        .expect("run switchyard show");
    let human = text(&human.stdout);
    eprintln!("switchyard show bgp during the deferral:\n{human}");
    assert!(human.contains("IN RESTART DEFERRAL"), "{human}");
    assert_eq!(stale_in_rib(&lab, &vip), Some(true), "{:?}", rib(&lab));

    // BGP back: gobgpd's End-of-RIB ends the deferral; the route is learned again.
    lab.exec_ok(Ns::Node, "nft delete table inet sy_gr_hold");
    eventually(
        "the deferral over, the route learned again",
        40,
        || {
            let v = show_bgp(&lab);
            let ok = v["graceful_restart"]["deferring"] == false
                && learned_path(&v) == Some((false, false));
            ok.then_some(()).ok_or(v.to_string())
        },
        || format!("{}\n{}", gobgpd_log(&lab), lab.read("router.stderr")),
    );
    lab.assert_ping(Ns::Client, BEHIND_SERVER);
    // gobgpd: our VIP fresh again, the deleted Service's withdrawn after our End-of-RIB.
    eventually(
        "VIP fresh and the deleted Service's VIP withdrawn in gobgpd",
        20,
        || {
            let ok =
                stale_in_rib(&lab, &vip) == Some(false) && stale_in_rib(&lab, &vip_gone).is_none();
            ok.then_some(()).ok_or(format!("{:?}", rib(&lab)))
        },
        || gobgpd_log(&lab),
    );
    let out = lab.finish().expect("agent output");
    assert!(
        out.stderr
            .contains("route selection after our graceful restart"),
        "{out}"
    );
    let monitor = lab.read("monitor.out");
    let withdrawn: Vec<&str> = monitor
        .lines()
        .filter(|l| l.contains("\"withdrawal\":true"))
        .collect();
    assert!(
        withdrawn.iter().all(|l| !l.contains(&vip)),
        "gobgpd withdrew our VIP at some point:\n{monitor}"
    );
    assert!(
        withdrawn.iter().any(|l| l.contains(&vip_gone)),
        "no withdrawal of {vip_gone} seen:\n{monitor}"
    );
}
