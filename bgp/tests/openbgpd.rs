//! Interop with OpenBGPD's bgpd (7.7, portable): eBGP with both families
//! both ways and withdrawals both ways, an administrative shutdown by
//! bgpd, and iBGP LOCAL_PREF.
//!
//! bgpd runs in the foreground (`-d`) with a configuration of the test's
//! own: its control socket in the temp dir (`socket`), `fib-update no`
//! so nothing reaches the kernel, filters that accept everything (its
//! default for eBGP follows RFC 8212 and would announce nothing). The
//! portable bgpd counts every next hop as reachable, so its `valid` and
//! `best` flags are what a router with a full table would show. Queried
//! with `bgpctl -s SOCKET -j show ...`.
//!
//! bgpd's privilege-separated processes chroot into its user's home,
//! /run/openbgpd, which systemd creates for the service (kept off here);
//! the test creates that empty directory when it is missing.

mod common;

use common::*;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_bgp::fsm::{ErrorCounters, State};
use switchyard_bgp::speaker::{Speaker, SpeakerEvent};

const OBGP_NH4: &str = "198.51.100.4";
const OBGP_NH6: &str = "2001:db8::4";
const OBGP_AS: u32 = 65004;

struct OpenBgpdOpts {
    asn: u32,
    addr: Ipv4Addr,
    port: u16,
    /// Us: address, port, AS.
    neighbor: (Ipv4Addr, u16, u32),
    /// `network` statements: prefix and what follows it (`set ...`).
    networks: Vec<(String, String)>,
}

impl OpenBgpdOpts {
    fn new(net: u8, our_port: u16, asn: u32) -> Self {
        Self {
            asn,
            addr: ip(net, 4),
            port: free_port(ip(net, 4)),
            neighbor: (ip(net, 1), our_port, OUR_AS),
            networks: vec![
                ("198.18.4.0/24".into(), format!("set nexthop {OBGP_NH4}")),
                ("198.18.14.0/24".into(), format!("set nexthop {OBGP_NH4}")),
                ("2001:db8:44::/48".into(), format!("set nexthop {OBGP_NH6}")),
            ],
        }
    }

    /// `bgpd.conf`: one neighbour, us, both families, short timers, and
    /// the `network` statements' next hops passed on as they are. On
    /// eBGP bgpd puts its own address (a loopback one here, which we
    /// rightly refuse as a next hop) unless the session is multihop and
    /// says `nexthop no-modify`; on iBGP both are harmless.
    fn config(&self, sock: &Path) -> String {
        let (naddr, nport, nasn) = self.neighbor;
        let networks: String = self
            .networks
            .iter()
            .map(|(p, set)| format!("network {p} {set}\n"))
            .collect();
        format!(
            r#"AS {asn}
router-id {OBGP_NH4}
listen on {addr} port {port}
socket "{sock}"
fib-update no
holdtime 9
holdtime min 3
connect-retry 1
log updates
{networks}
neighbor {naddr} {{
  descr "switchyard"
  remote-as {nasn}
  port {nport}
  local-address {addr}
  announce IPv4 unicast
  announce IPv6 unicast
  multihop 2
  set nexthop no-modify
}}

allow from any
allow to any
"#,
            asn = self.asn,
            addr = self.addr,
            port = self.port,
            sock = sock.display(),
        )
    }
}

/// OpenBGPD's bgpd, stopped with SIGTERM (then killed) when dropped; a
/// test that fails while it runs prints its log.
struct OpenBgpd {
    proc: Proc,
    bgpctl: PathBuf,
    sock: PathBuf,
    conf: PathBuf,
}

/// Runs `cmd` with a deadline (coreutils `timeout`); stdout, or what went
/// wrong.
fn run_bounded(cmd: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["-k", "2", "10"])
        .arg(cmd)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {args:?}: {}\n{stdout}{}",
            cmd.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl OpenBgpd {
    fn start(bgpd: &Path, bgpctl: &Path, o: &OpenBgpdOpts) -> Self {
        std::fs::create_dir_all("/run/openbgpd").expect("create bgpd's chroot /run/openbgpd");
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("bgpd.sock");
        let conf = dir.path().join("bgpd.conf");
        std::fs::write(&conf, o.config(&sock)).expect("write bgpd.conf");
        let conf_arg = conf.to_string_lossy().into_owned();
        if let Err(e) = run_bounded(bgpd, &["-n", "-f", &conf_arg]) {
            panic!("bgpd rejects its configuration: {e}\n{}", o.config(&sock));
        }
        let proc = Proc::spawn(
            "bgpd",
            dir,
            Command::new(bgpd).arg("-d").arg("-v").arg("-f").arg(&conf),
        );
        let mut b = Self {
            proc,
            bgpctl: bgpctl.to_path_buf(),
            sock,
            conf,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if b.ctl(&["show", "summary"]).is_ok() {
                return b;
            }
            if !b.proc.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("bgpd did not come up:\n{}", b.proc.log());
    }

    /// `bgpctl -s SOCKET ARGS`.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let sock = self.sock.to_string_lossy();
        let mut all = vec!["-s", &sock];
        all.extend_from_slice(args);
        run_bounded(&self.bgpctl, &all)
    }

    /// `bgpctl -j ARGS`, parsed; `Null` when bgpd does not answer.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        self.ctl(&all)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    /// bgpd's RFC 4271 state for its session with `peer` ("Established",
    /// "Active", "Idle", ...).
    fn session_state(&self, peer: Ipv4Addr) -> String {
        self.json(&["show", "neighbor", &peer.to_string()])["neighbors"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every path bgpd holds for exactly `prefix` (Loc-RIB and the paths
    /// it did not select).
    fn paths(&self, prefix: &str) -> Vec<Value> {
        self.json(&["show", "rib", prefix])["rib"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|p| p["prefix"].as_str() == Some(prefix))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The path from `peer` for `prefix` if bgpd holds it as valid and best.
    fn best_from(&self, prefix: &str, peer: Ipv4Addr) -> Option<Value> {
        let peer = peer.to_string();
        self.paths(prefix).into_iter().find(|p| {
            p["neighbor"]["remote_addr"].as_str() == Some(&peer)
                && p["valid"] == Value::Bool(true)
                && p["best"] == Value::Bool(true)
        })
    }

    /// The whole RIB and the log, for failure messages.
    fn context(&self) -> String {
        let show = |args: &[&str]| self.ctl(args).unwrap_or_else(|e| e);
        format!(
            "--- bgpctl show rib ---\n{}\n--- bgpctl show rib out ---\n{}\n--- bgpd log ---\n{}",
            show(&["show", "rib"]),
            show(&["show", "rib", "out"]),
            self.proc.log()
        )
    }

    /// Replaces the `network` statements and reloads the configuration.
    fn set_networks(&self, o: &mut OpenBgpdOpts, networks: Vec<(String, String)>) {
        o.networks = networks;
        std::fs::write(&self.conf, o.config(&self.sock)).expect("rewrite bgpd.conf");
        if let Err(e) = self.ctl(&["reload"]) {
            panic!("bgpctl reload: {e}\n{}", self.proc.log());
        }
    }
}

impl Drop for OpenBgpd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- bgpd log ---\n{}", self.proc.log());
        }
        // SIGTERM: bgpd ends its sessions and its child processes go with
        // it; `Proc` kills whatever is left.
        let pid = self.proc.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let end = Instant::now() + Duration::from_secs(3);
        while self.proc.is_running() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until bgpd holds `prefix` from `peer`, valid and best, and
/// returns that path.
async fn wait_obgp_best(b: &OpenBgpd, prefix: &str, peer: Ipv4Addr) -> Value {
    wait_until(
        &format!("{prefix} from {peer} valid and best in bgpd"),
        20,
        || b.best_from(prefix, peer).is_some(),
        || b.context(),
    )
    .await;
    b.best_from(prefix, peer).unwrap()
}

async fn wait_obgp_gone(b: &OpenBgpd, prefix: &str) {
    wait_until(
        &format!("{prefix} withdrawn from bgpd"),
        20,
        || b.paths(prefix).is_empty(),
        || b.context(),
    )
    .await;
}

async fn wait_obgp_established(b: &OpenBgpd, us: Ipv4Addr) {
    wait_until(
        "bgpd's session Established",
        10,
        || b.session_state(us) == "Established",
        || b.context(),
    )
    .await;
}

/// The binaries, or `None` when the test is skipped.
fn require_openbgpd() -> Option<(PathBuf, PathBuf)> {
    let bins = require(&["openbgpd/bgpd", "bgpctl"])?;
    Some((bins[0].clone(), bins[1].clone()))
}

/// eBGP over IPv4 with IPv6 unicast by MP-BGP: our /32 and /64 reach
/// bgpd with our next hops and AS path, bgpd's `network` routes reach
/// us with its, and withdrawals both ways (bgpd's by a reload without
/// the `network` statement). Nothing bgpd sends costs us error handling,
/// and nothing we send makes bgpd close the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbgpd_ebgp_routes_both_ways() {
    let Some((bgpd, bgpctl)) = require_openbgpd() else {
        return;
    };
    let net = 61;
    let our_port = free_port(ip(net, 1));
    let mut o = OpenBgpdOpts::new(net, our_port, OBGP_AS);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 4), o.port, OBGP_AS));
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let b = OpenBgpd::start(&bgpd, &bgpctl, &o);
    wait_established(&h, ip(net, 4), 30).await;
    wait_obgp_established(&b, ip(net, 1)).await;

    h.advertise(
        vec![
            "203.0.113.60/32".parse().unwrap(),
            "203.0.113.61/32".parse().unwrap(),
            "2001:db8:60::/64".parse().unwrap(),
        ],
        None,
    )
    .await
    .unwrap();
    let us = ip(net, 1);
    let p4 = wait_obgp_best(&b, "203.0.113.60/32", us).await;
    assert_eq!(p4["true_nexthop"], "198.51.100.1", "{p4:#}");
    assert_eq!(p4["aspath"], "65000", "{p4:#}");
    assert_eq!(p4["origin"], "IGP", "{p4:#}");
    let p6 = wait_obgp_best(&b, "2001:db8:60::/64", us).await;
    assert_eq!(p6["true_nexthop"], "2001:db8::1", "{p6:#}");
    assert_eq!(p6["aspath"], "65000", "{p6:#}");

    wait_next_hops(&h, "198.18.4.0/24", &[OBGP_NH4]).await;
    wait_next_hops(&h, "198.18.14.0/24", &[OBGP_NH4]).await;
    wait_next_hops(&h, "2001:db8:44::/48", &[OBGP_NH6]).await;
    let from = our_paths(&h, "198.18.4.0/24", ip(net, 4)).await;
    assert_eq!(from[0].as_path, vec![OBGP_AS], "{from:?}");

    // Ours withdrawn: gone from bgpd, the others untouched.
    h.withdraw(vec!["203.0.113.60/32".parse().unwrap()])
        .await
        .unwrap();
    wait_obgp_gone(&b, "203.0.113.60/32").await;
    assert!(b.best_from("203.0.113.61/32", us).is_some());
    assert!(b.best_from("2001:db8:60::/64", us).is_some());

    // bgpd's withdrawn: the configuration reloaded without two of them.
    let keep = vec![o.networks[0].clone()];
    b.set_networks(&mut o, keep);
    wait_next_hops(&h, "198.18.14.0/24", &[]).await;
    wait_next_hops(&h, "2001:db8:44::/48", &[]).await;
    assert_eq!(
        our_next_hops(&h, "198.18.4.0/24").await,
        vec![OBGP_NH4.parse::<IpAddr>().unwrap()]
    );

    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].state, State::Established, "{n:?}");
    assert_eq!(n[0].errors, ErrorCounters::default(), "{n:?}");
    assert_eq!(n[0].flaps, 0, "{n:?}");
    assert_eq!(b.session_state(us), "Established", "{}", b.context());
    h.shutdown().await.unwrap();
}

/// `bgpctl neighbor X down "reason"`: bgpd sends Cease / Administrative
/// Shutdown with a shutdown communication (RFC 9003); we leave
/// Established, drop its routes and keep trying; `neighbor X up` brings
/// the session and the routes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbgpd_admin_shutdown_and_back() {
    let Some((bgpd, bgpctl)) = require_openbgpd() else {
        return;
    };
    let net = 62;
    let our_port = free_port(ip(net, 1));
    let o = OpenBgpdOpts::new(net, our_port, OBGP_AS);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 4), o.port, OBGP_AS));
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    h.advertise(vec!["203.0.113.62/32".parse().unwrap()], None)
        .await
        .unwrap();
    let b = OpenBgpd::start(&bgpd, &bgpctl, &o);
    wait_established(&h, ip(net, 4), 30).await;
    wait_next_hops(&h, "198.18.4.0/24", &[OBGP_NH4]).await;
    let us = ip(net, 1);
    wait_obgp_best(&b, "203.0.113.62/32", us).await;

    let peer = us.to_string();
    b.ctl(&["neighbor", &peer, "down", "maintenance window"])
        .unwrap_or_else(|e| panic!("{e}"));
    let down = wait_event(&mut ev, 15, "SessionDown", |e| {
        matches!(e, SpeakerEvent::SessionDown { .. })
    })
    .await;
    let SpeakerEvent::SessionDown { reason, .. } = down else {
        unreachable!()
    };
    assert!(
        reason.contains("6/2") && reason.contains("maintenance window"),
        "{reason}\n{}",
        b.context()
    );
    let n = h.neighbors().await.unwrap();
    assert_ne!(n[0].state, State::Established, "{n:?}");
    assert_eq!(n[0].errors.notifications_received, 1, "{n:?}");
    assert_eq!(n[0].errors.notifications_sent, 0, "{n:?}");
    wait_next_hops(&h, "198.18.4.0/24", &[]).await;
    wait_next_hops(&h, "2001:db8:44::/48", &[]).await;
    // While it is down bgpd refuses us; we stay out of Established.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(
        neighbor_state(&h, ip(net, 4)).await,
        Some(State::Established)
    );

    b.ctl(&["neighbor", &peer, "up"])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_established(&h, ip(net, 4), 30).await;
    wait_next_hops(&h, "198.18.4.0/24", &[OBGP_NH4]).await;
    wait_next_hops(&h, "2001:db8:44::/48", &[OBGP_NH6]).await;
    wait_obgp_best(&b, "203.0.113.62/32", us).await;
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].flaps, 1, "{n:?}");
    h.shutdown().await.unwrap();
}

/// iBGP: LOCAL_PREF crosses both ways (bgpd's set on a `network`, ours
/// by export policy), nobody prepends an AS, next hops are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbgpd_ibgp_local_pref() {
    let Some((bgpd, bgpctl)) = require_openbgpd() else {
        return;
    };
    let net = 63;
    let our_port = free_port(ip(net, 1));
    let mut o = OpenBgpdOpts::new(net, our_port, OUR_AS);
    o.networks = vec![
        (
            "198.18.5.0/24".into(),
            format!("set {{ nexthop {OBGP_NH4} localpref 250 }}"),
        ),
        (
            "2001:db8:45::/48".into(),
            format!("set {{ nexthop {OBGP_NH6} localpref 90 }}"),
        ),
    ];
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 4), o.port, OUR_AS);
    p.export = Some(set_local_pref("203.0.113.63/32", 150));
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    h.advertise(
        vec![
            "203.0.113.63/32".parse().unwrap(),
            "2001:db8:63::/64".parse().unwrap(),
        ],
        None,
    )
    .await
    .unwrap();
    let b = OpenBgpd::start(&bgpd, &bgpctl, &o);
    wait_established(&h, ip(net, 4), 30).await;

    let us = ip(net, 1);
    let p4 = wait_obgp_best(&b, "203.0.113.63/32", us).await;
    assert_eq!(p4["localpref"], 150, "{p4:#}");
    assert_eq!(p4["source"], "internal", "{p4:#}");
    assert_eq!(p4["aspath"], "", "{p4:#}");
    assert_eq!(p4["true_nexthop"], "198.51.100.1", "{p4:#}");
    // Without a policy of its own: the default LOCAL_PREF, 100.
    let p6 = wait_obgp_best(&b, "2001:db8:63::/64", us).await;
    assert_eq!(p6["localpref"], 100, "{p6:#}");
    assert_eq!(p6["true_nexthop"], "2001:db8::1", "{p6:#}");

    wait_next_hops(&h, "198.18.5.0/24", &[OBGP_NH4]).await;
    wait_next_hops(&h, "2001:db8:45::/48", &[OBGP_NH6]).await;
    let lp = our_paths(&h, "198.18.5.0/24", ip(net, 4)).await;
    assert_eq!(lp[0].local_pref, Some(250), "{lp:?}");
    assert!(lp[0].as_path.is_empty(), "{lp:?}");
    let lp6 = our_paths(&h, "2001:db8:45::/48", ip(net, 4)).await;
    assert_eq!(lp6[0].local_pref, Some(90), "{lp6:?}");
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].errors, ErrorCounters::default(), "{n:?}");
    h.shutdown().await.unwrap();
}
