//! Real BGP peers for the integration tests: gobgpd, BIRD 2 and FRR's
//! bgpd, started on loopback addresses and unprivileged ports, each in
//! its own temp dir, killed when dropped (also when a test panics).
//! OpenBGPD and ExaBGP, used by one test file each, are started there.
//!
//! Addresses: every test takes its own 127.0.N.0/24 (N distinct per
//! test) so tests can run in parallel; we are 127.0.N.1, peers .2, .3.
//! Announced prefixes and next hops come only from the documentation
//! and benchmarking ranges. Nothing is installed into the kernel.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_bgp::fsm::State;
use switchyard_bgp::speaker::{PeerConfig, SpeakerConfig, SpeakerEvent, SpeakerHandle};
use tokio::sync::mpsc;

pub const OUR_AS: u32 = 65000;
pub const OUR_NH4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUR_NH6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// A binary by name, on PATH or in the usual sbin directories.
///
/// FRR's and OpenBGPD's daemons are both called `bgpd`, so those two are
/// asked for by package: "frr/bgpd" is FRR's, in /usr/lib/frr where no
/// PATH leads, and "openbgpd/bgpd" is the `bgpd` next to OpenBGPD's
/// `bgpctl`.
fn find_binary(name: &str) -> Option<PathBuf> {
    if let Some(daemon) = name.strip_prefix("frr/") {
        return ["/usr/lib/frr", "/usr/local/lib/frr"]
            .map(|d| Path::new(d).join(daemon))
            .into_iter()
            .find(|p| p.is_file());
    }
    if let Some(daemon) = name.strip_prefix("openbgpd/") {
        return find_binary("bgpctl")
            .map(|ctl| ctl.with_file_name(daemon))
            .filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The binaries, or `None` after printing why the test is skipped. With
/// `CI` set a missing binary fails the test instead.
pub fn require(names: &[&str]) -> Option<Vec<PathBuf>> {
    let found: Vec<_> = names.iter().map(|n| find_binary(n)).collect();
    let missing: Vec<_> = names
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        return Some(found.into_iter().flatten().collect());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "peer binaries missing in CI: {missing:?} (scripts/install-deps.sh installs them)"
    );
    println!(
        "skipped: {missing:?} not installed (apt-get install gobgpd bird2 frr openbgpd exabgp)"
    );
    None
}

pub fn ip(net: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, net, host)
}

/// A port free on `addr` right now.
pub fn free_port(addr: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// A child process killed and reaped on drop.
pub struct Proc {
    name: String,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(name: &str, dir: tempfile::TempDir, cmd: &mut Command) -> Self {
        let log =
            std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("create log file");
        let log2 = log.try_clone().expect("clone log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            name: name.to_string(),
            child,
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.name)))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gobgpd neighbour entry.
#[derive(Clone)]
pub struct GobgpNeighbor {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub asn: u32,
    pub passive: bool,
}

pub struct GobgpdOpts {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Next hops gobgpd announces (export policy), never loopback.
    pub nh4: Ipv4Addr,
    pub nh6: Ipv6Addr,
    pub neighbors: Vec<GobgpNeighbor>,
}

pub struct Gobgpd {
    pub proc: Proc,
    pub addr: Ipv4Addr,
    pub api_port: u16,
    pub port: u16,
}

impl Gobgpd {
    pub fn start(bin: &Path, o: &GobgpdOpts) -> Self {
        Self::start_with(bin, o, None)
    }

    /// `graceful_restart`: a Restart Time to announce graceful restart
    /// (RFC 4724) for both families to every neighbour, so that gobgpd
    /// helps a restarting neighbour keep its routes.
    pub fn start_with(bin: &Path, o: &GobgpdOpts, graceful_restart: Option<u16>) -> Self {
        let (gr, mp_gr) = match graceful_restart {
            Some(t) => (
                format!(
                    "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = {t}\n"
                ),
                "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n",
            ),
            None => (String::new(), ""),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conf = format!(
            r#"[global.config]
  as = {asn}
  router-id = "{rid}"
  port = {port}
  local-address-list = ["{addr}"]

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
      set-next-hop = "{nh4}"
  [[policy-definitions.statements]]
    name = "v6"
    [policy-definitions.statements.conditions.bgp-conditions]
      afi-safi-in-list = ["ipv6-unicast"]
    [policy-definitions.statements.actions]
      route-disposition = "accept-route"
    [policy-definitions.statements.actions.bgp-actions]
      set-next-hop = "{nh6}"
"#,
            asn = o.asn,
            rid = o.router_id,
            port = o.port,
            addr = o.addr,
            nh4 = o.nh4,
            nh6 = o.nh6,
        );
        for n in &o.neighbors {
            conf.push_str(&format!(
                r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{a}"
    peer-as = {asn}
  [neighbors.transport.config]
    local-address = "{local}"
    remote-port = {port}
    passive-mode = {passive}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
{gr}  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
{mp_gr}  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
{mp_gr}"#,
                a = n.addr,
                asn = n.asn,
                local = o.addr,
                port = n.port,
                passive = n.passive,
            ));
        }
        let file = dir.path().join("gobgpd.toml");
        std::fs::write(&file, conf).expect("write gobgpd.toml");
        let api_port = free_port(o.addr);
        let proc = Proc::spawn(
            "gobgpd",
            dir,
            Command::new(bin)
                .arg("-f")
                .arg(&file)
                .arg("--api-hosts")
                .arg(format!("{}:{api_port}", o.addr))
                .arg("-p")
                .arg("--pprof-disable"),
        );
        let g = Self {
            proc,
            addr: o.addr,
            api_port,
            port: o.port,
        };
        g.wait_api();
        g
    }

    /// Runs the `gobgp` CLI against this daemon; stdout, or stderr on
    /// failure.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("gobgp")
            .arg("-u")
            .arg(self.addr.to_string())
            .arg("-p")
            .arg(self.api_port.to_string())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn wait_api(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.cli(&["global"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("gobgpd API did not come up:\n{}", self.proc.log());
    }

    pub fn rib(&self, afi: &str) -> String {
        self.cli(&["global", "rib", "-a", afi]).unwrap_or_default()
    }

    pub fn neighbor_state(&self) -> String {
        self.cli(&["neighbor"]).unwrap_or_default()
    }

    /// Adds a route with ORIGIN IGP (the CLI's default is incomplete,
    /// which loses ECMP against other peers' IGP routes).
    pub fn add(&self, afi: &str, prefix: &str, nh: &str) {
        self.cli(&[
            "global", "rib", "add", "-a", afi, prefix, "nexthop", nh, "origin", "igp",
        ])
        .unwrap_or_else(|e| panic!("gobgp add {prefix}: {e}"));
    }

    pub fn del(&self, afi: &str, prefix: &str) {
        self.cli(&["global", "rib", "del", "-a", afi, prefix])
            .unwrap_or_else(|e| panic!("gobgp del {prefix}: {e}"));
    }
}

pub struct BirdOpts {
    pub router_id: Ipv4Addr,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub asn: u32,
    pub neighbor: (Ipv4Addr, u16, u32),
    pub nh4: Ipv4Addr,
    pub nh6: Ipv6Addr,
    pub password: Option<String>,
    /// Prefixes BIRD originates (blackhole statics exported with ORIGIN IGP).
    pub static4: Vec<String>,
    pub static6: Vec<String>,
    /// Extra lines inside the `protocol bgp` block.
    pub extra: String,
}

pub struct Bird {
    pub proc: Proc,
    pub sock: PathBuf,
}

impl BirdOpts {
    /// The configuration file for these options: one BGP protocol `sy`
    /// with us.
    pub fn config(&self) -> String {
        let o = self;
        let statics = |v: &[String]| {
            v.iter()
                .map(|p| format!("  route {p} blackhole;\n"))
                .collect::<String>()
        };
        let password = o
            .password
            .as_ref()
            .map(|p| format!("  password \"{p}\";\n"))
            .unwrap_or_default();
        format!(
            r#"log stderr all;
router id {rid};
protocol device {{ }}
protocol static s4 {{
  ipv4;
{s4}}}
protocol static s6 {{
  ipv6;
{s6}}}
protocol bgp sy {{
  local {addr} port {port} as {asn};
  neighbor {naddr} port {nport} as {nasn};
  multihop 2;
  strict bind yes;
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
{password}{extra}
  ipv4 {{ import all; export filter {{ bgp_origin = ORIGIN_IGP; accept; }}; next hop address {nh4}; }};
  ipv6 {{ import all; export filter {{ bgp_origin = ORIGIN_IGP; accept; }}; next hop address {nh6}; }};
}}
"#,
            rid = o.router_id,
            s4 = statics(&o.static4),
            s6 = statics(&o.static6),
            addr = o.addr,
            port = o.port,
            asn = o.asn,
            naddr = o.neighbor.0,
            nport = o.neighbor.1,
            nasn = o.neighbor.2,
            nh4 = o.nh4,
            nh6 = o.nh6,
            extra = o.extra,
        )
    }
}

impl Bird {
    pub fn start(bin: &Path, o: &BirdOpts) -> Self {
        Self::start_conf(bin, &o.config(), &[])
    }

    /// Starts BIRD with a configuration of the test's own and extra
    /// command-line arguments (`-R`: graceful restart recovery).
    pub fn start_conf(bin: &Path, conf: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("bird.ctl");
        let file = dir.path().join("bird.conf");
        std::fs::write(&file, conf).expect("write bird.conf");
        let proc = Proc::spawn(
            "bird",
            dir,
            Command::new(bin)
                .arg("-f")
                .arg("-c")
                .arg(&file)
                .arg("-s")
                .arg(&sock)
                .args(args),
        );
        let b = Self { proc, sock };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if b.cli(&["show", "status"]).is_ok() {
                return b;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("bird did not come up:\n{}", b.proc.log());
    }

    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(find_binary("birdc").unwrap_or_else(|| "birdc".into()))
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !s.contains("Unable to connect") {
            Ok(s)
        } else {
            Err(format!("{s}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    pub fn routes(&self) -> String {
        self.cli(&["show", "route", "protocol", "sy"])
            .unwrap_or_default()
    }

    pub fn protocol(&self) -> String {
        self.cli(&["show", "protocols", "all", "sy"])
            .unwrap_or_default()
    }

    /// `show route all` for one prefix (every path BIRD holds for it).
    pub fn route_all(&self, prefix: &str) -> String {
        self.cli(&["show", "route", "all", "for", prefix])
            .unwrap_or_default()
    }
}

pub struct FrrOpts {
    pub router_id: Ipv4Addr,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub asn: u32,
    pub neighbor: (Ipv4Addr, u16, u32),
    /// Next hops bgpd announces (outbound route-maps), never loopback.
    pub nh4: Ipv4Addr,
    pub nh6: Ipv6Addr,
    pub password: Option<String>,
    /// Prefixes bgpd originates with `network` statements.
    pub networks4: Vec<String>,
    pub networks6: Vec<String>,
    /// Configuration appended at the end: prefix-lists and route-map
    /// entries numbered below 10 to treat some prefixes differently.
    pub extra: String,
}

/// FRR's bgpd, alone: no zebra, no watchfrr, no systemd.
///
/// Started as `bgpd -Z -S -f CONF -i PID --vty_socket DIR -l ADDR -p PORT
/// -P 0`. `-Z` keeps it off the kernel (and makes every next hop count
/// as resolved, since there is no zebra to ask); `-S` skips the
/// user/group switch, because `-u root -g root` fails at start unless
/// root is in the `frrvty` group. Queried with `vtysh --vty_socket DIR
/// -d bgpd -c "show ... json"`.
pub struct Frr {
    pub proc: Proc,
}

impl FrrOpts {
    /// `bgpd.conf` for these options: one neighbour, us, with both
    /// families and outbound route-maps that set documentation next hops.
    pub fn config(&self) -> String {
        let o = self;
        let (naddr, nport, nasn) = o.neighbor;
        let networks = |v: &[String]| {
            v.iter()
                .map(|p| format!("  network {p}\n"))
                .collect::<String>()
        };
        // Without it FRR's eBGP-only defaults (TTL 1 and a connected
        // check it cannot make without zebra) keep the session down.
        let multihop = if o.asn == nasn {
            String::new()
        } else {
            format!(" neighbor {naddr} ebgp-multihop 2\n")
        };
        let password = o
            .password
            .as_ref()
            .map(|p| format!(" neighbor {naddr} password {p}\n"))
            .unwrap_or_default();
        format!(
            r#"frr defaults traditional
hostname sy-frr
log stdout informational
debug bgp neighbor-events
!
route-map sy-out4 permit 10
 set ip next-hop {nh4}
exit
!
route-map sy-out6 permit 10
 set ipv6 next-hop global {nh6}
exit
!
router bgp {asn}
 bgp router-id {rid}
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor {naddr} remote-as {nasn}
 neighbor {naddr} port {nport}
 neighbor {naddr} update-source {addr}
 neighbor {naddr} timers 3 9
 neighbor {naddr} timers connect 1
 neighbor {naddr} advertisement-interval 0
{multihop}{password} !
 address-family ipv4 unicast
{n4}  neighbor {naddr} route-map sy-out4 out
 exit-address-family
 !
 address-family ipv6 unicast
{n6}  neighbor {naddr} activate
  neighbor {naddr} route-map sy-out6 out
 exit-address-family
exit
!
{extra}"#,
            rid = o.router_id,
            asn = o.asn,
            addr = o.addr,
            nh4 = o.nh4,
            nh6 = o.nh6,
            extra = o.extra,
            n4 = networks(&o.networks4),
            n6 = networks(&o.networks6),
        )
    }
}

impl Frr {
    pub fn start(bin: &Path, o: &FrrOpts) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let file = path.join("bgpd.conf");
        std::fs::write(&file, o.config()).expect("write bgpd.conf");
        let proc = Proc::spawn(
            "bgpd",
            dir,
            Command::new(bin)
                .arg("-Z")
                .arg("-S")
                .arg("-f")
                .arg(&file)
                .arg("-i")
                .arg(path.join("bgpd.pid"))
                .arg("--vty_socket")
                .arg(&path)
                .arg("-l")
                .arg(o.addr.to_string())
                .arg("-p")
                .arg(o.port.to_string())
                .arg("-P")
                .arg("0"),
        );
        let mut f = Self { proc };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if f.vtysh(&["show bgp summary json"]).is_ok() {
                return f;
            }
            if !f.proc.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("bgpd did not come up:\n{}", f.proc.log());
    }

    /// vtysh commands, in turn, against this bgpd only (`configure`
    /// followed by configuration lines changes the running config);
    /// stdout, or what went wrong.
    pub fn vtysh(&self, cmds: &[&str]) -> Result<String, String> {
        let out = Command::new(find_binary("vtysh").unwrap_or_else(|| "vtysh".into()))
            .arg("--vty_socket")
            .arg(self.proc.dir.path())
            .arg("-d")
            .arg("bgpd")
            .args(cmds.iter().flat_map(|c| ["-c", c]))
            .output()
            .map_err(|e| e.to_string())?;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(s)
        } else {
            Err(format!("{s}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Changes the running configuration: `lines` are entered after
    /// `configure terminal`, as one vtysh session.
    pub fn configure(&self, lines: &[&str]) {
        let mut cmds = vec!["configure terminal"];
        cmds.extend_from_slice(lines);
        match self.vtysh(&cmds) {
            // vtysh exits 0 on some rejected lines but says so.
            Ok(out) if !out.contains('%') => {}
            r => panic!("vtysh {lines:?}: {r:?}"),
        }
    }

    /// A `show ... json` command, parsed; `Null` when bgpd does not
    /// answer or the output is not JSON.
    pub fn json(&self, cmd: &str) -> serde_json::Value {
        self.vtysh(&[cmd])
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    /// The RFC 4271 state bgpd reports for its session with `peer`
    /// ("Established", "Active", ...).
    pub fn session_state(&self, peer: Ipv4Addr) -> String {
        self.json(&format!("show bgp neighbors {peer} json"))[peer.to_string()]["bgpState"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every path bgpd holds for `prefix` (`afi`: "ipv4" or "ipv6"), as
    /// `show bgp AFI unicast PREFIX json` lists them.
    pub fn paths(&self, afi: &str, prefix: &str) -> Vec<serde_json::Value> {
        let v = self.json(&format!("show bgp {afi} unicast {prefix} json"));
        // A missing prefix answers `{}`; make sure it is the right one.
        if v["prefix"].as_str() != Some(prefix) {
            return Vec::new();
        }
        v["paths"].as_array().cloned().unwrap_or_default()
    }

    /// The whole table of one family, for failure messages.
    pub fn table(&self, afi: &str) -> String {
        self.vtysh(&[&format!("show bgp {afi} unicast")])
            .unwrap_or_else(|e| e)
    }
}

/// Our speaker's configuration for a test network.
pub fn speaker_config(net: u8) -> SpeakerConfig {
    let mut c = SpeakerConfig::new(OUR_AS, OUR_NH4);
    c.listen = Some(SocketAddr::new(IpAddr::V4(ip(net, 1)), 0));
    c.multipath_max = 4;
    c
}

/// A peer with test-friendly timers and documentation next hops.
pub fn peer_config(addr: Ipv4Addr, port: u16, asn: u32) -> PeerConfig {
    let mut p = PeerConfig::new(IpAddr::V4(addr), asn);
    p.port = port;
    p.hold_time = 9;
    p.connect_retry_time = 1;
    p.open_hold_time = 10;
    p.next_hop_v4 = Some(OUR_NH4);
    p.next_hop_v6 = Some(OUR_NH6);
    p
}

/// Polls `f` until it is true; panics with `what` and `context()` after
/// `secs`.
pub async fn wait_until(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for an event matching `pred`, discarding others.
pub async fn wait_event(
    rx: &mut mpsc::UnboundedReceiver<SpeakerEvent>,
    secs: u64,
    what: &str,
    mut pred: impl FnMut(&SpeakerEvent) -> bool,
) -> SpeakerEvent {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("speaker stopped while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

pub async fn neighbor_state(h: &SpeakerHandle, addr: Ipv4Addr) -> Option<State> {
    h.neighbors()
        .await
        .ok()?
        .into_iter()
        .find(|n| n.addr == IpAddr::V4(addr))
        .map(|n| n.state)
}

/// Waits until our session with `addr` is Established.
pub async fn wait_established(h: &SpeakerHandle, addr: Ipv4Addr, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if neighbor_state(h, addr).await == Some(State::Established) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "session with {addr} not established: {:?}",
        h.neighbors().await
    );
}

/// Every `BestPathsChanged` entry that has arrived, without waiting.
pub fn drain_best_paths(
    rx: &mut mpsc::UnboundedReceiver<SpeakerEvent>,
) -> Vec<switchyard_bgp::speaker::BestPaths> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let SpeakerEvent::BestPathsChanged(v) = ev {
            out.extend(v);
        }
    }
    out
}

/// Next hops of a prefix in our Loc-RIB's multipath set, polled until
/// they are `want` (sorted); panics after about 20 s.
pub async fn wait_next_hops(h: &SpeakerHandle, prefix: &str, want: &[&str]) {
    let mut want: Vec<IpAddr> = want.iter().map(|s| s.parse().unwrap()).collect();
    want.sort();
    for _ in 0..100 {
        if our_next_hops(h, prefix).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "next hops of {prefix}: {:?}, want {want:?}\n{:#?}",
        our_next_hops(h, prefix).await,
        h.routes().await
    );
}

/// Next hops of a prefix in our Loc-RIB's multipath set.
pub async fn our_next_hops(h: &SpeakerHandle, prefix: &str) -> Vec<IpAddr> {
    let Ok(p) = prefix.parse::<ipnet::IpNet>() else {
        return Vec::new();
    };
    let routes = h.routes().await.unwrap_or_default();
    let mut v: Vec<IpAddr> = routes
        .into_iter()
        .filter(|r| r.prefix == p)
        .flat_map(|r| r.paths)
        .filter(|p| p.multipath)
        .filter_map(|p| p.next_hop)
        .collect();
    v.sort();
    v
}

/// An export policy: LOCAL_PREF `lp` on `prefix`, everything else as is.
pub fn set_local_pref(prefix: &str, lp: u32) -> switchyard_bgp::policy::Policy {
    use switchyard_bgp::policy::{Match, Policy, PrefixEntry, Rule, Set, Verdict};
    Policy {
        rules: vec![Rule {
            when: Match {
                prefix_list: Some(vec![PrefixEntry {
                    prefix: prefix.parse().unwrap(),
                    ge: None,
                    le: None,
                }]),
                ..Match::default()
            },
            then: Verdict::Accept(Set {
                local_pref: Some(lp),
                ..Set::default()
            }),
        }],
        default_accept: true,
    }
}

/// Our paths for `prefix` learned from `peer`.
pub async fn our_paths(
    h: &SpeakerHandle,
    prefix: &str,
    peer: impl Into<IpAddr>,
) -> Vec<switchyard_bgp::speaker::RoutePath> {
    let (p, peer): (ipnet::IpNet, IpAddr) = (prefix.parse().unwrap(), peer.into());
    h.routes()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.prefix == p)
        .flat_map(|r| r.paths)
        .filter(|x| x.peer == Some(peer))
        .collect()
}
