//! Network-namespace lab for end-to-end tests of the `switchyard` binary.
//!
//! A [`Lab`] is three namespaces built by `lab/topology.sh` under a prefix unique to the test
//! (process id + counter), so tests may run in parallel:
//!
//! ```text
//!   {P}client eth0 198.18.1.2 ── c0 {P}node s0 ── eth0 198.18.2.2 {P}server
//!              2001:db8:1::2     router owns       2001:db8:2::2
//!                                .1.1/1::1 .2.1/2::1
//! ```
//!
//! The router runs in the node namespace (`ip netns exec`) and is stopped with SIGTERM when the
//! test finishes or the `Lab` is dropped; the namespaces are removed in `Drop`, also when the test
//! panics. Every command runs under `timeout(1)`.
//!
//! `SWITCHYARD_LAB_KERNEL=1` builds the topology in `kernel` mode (the node namespace's kernel
//! routes) and starts no router: the same tests then check the harness and the expectations
//! against Linux.
//!
//! Without root / CAP_NET_ADMIN+CAP_SYS_ADMIN or the tools, a test prints `skipped: reason` and
//! passes, unless the `CI` environment variable is set, where it fails.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod apiserver;
pub mod dissect;
pub mod edge_lab;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Addresses of the lab (see `lab/topology.sh`).
pub const CLIENT_V4: &str = "198.18.1.2";
pub const CLIENT_V6: &str = "2001:db8:1::2";
pub const SERVER_V4: &str = "198.18.2.2";
pub const SERVER_V6: &str = "2001:db8:2::2";
pub const ROUTER_C0_V4: &str = "198.18.1.1";
pub const ROUTER_C0_V6: &str = "2001:db8:1::1";
pub const ROUTER_S0_V4: &str = "198.18.2.1";
pub const ROUTER_S0_V6: &str = "2001:db8:2::1";
/// Inside the benchmarking / documentation ranges, but with no route on the router (it has only
/// its connected prefixes), so probes to them must draw "destination unreachable".
pub const UNROUTED_V4: &str = "198.19.255.9";
pub const UNROUTED_V6: &str = "2001:db8:ff::9";

const ROUTER_READY: Duration = Duration::from_secs(20);
const ROUTER_STOP: Duration = Duration::from_secs(10);
/// Safety net: a router left behind by a killed test process stops by itself.
const ROUTER_MAX_SECS: &str = "120";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    AfPacket,
    AfXdp,
    Dpdk,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::AfPacket => "afpacket",
            Driver::AfXdp => "afxdp",
            Driver::Dpdk => "dpdk",
        }
    }

    /// The router's names for the client-side and server-side ports.
    fn ports(self) -> (&'static str, &'static str) {
        match self {
            Driver::AfPacket | Driver::AfXdp => ("c0", "s0"),
            Driver::Dpdk => ("net_af_packet0", "net_af_packet1"),
        }
    }
}

/// The namespaces of a lab.
#[derive(Clone, Copy, Debug)]
pub enum Ns {
    Client,
    Node,
    Server,
}

pub struct RouterOutput {
    pub driver: Driver,
    pub status: Option<ExitStatus>,
    /// It ignored SIGTERM and had to be killed.
    pub killed: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for RouterOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "router ({}) exit status: {}{}",
            self.driver.name(),
            self.status.map_or("unknown".to_string(), |s| s.to_string()),
            if self.killed {
                " (SIGKILLed after ignoring SIGTERM)"
            } else {
                ""
            }
        )?;
        writeln!(f, "---- router stdout ----\n{}", self.stdout)?;
        write!(f, "---- router stderr ----\n{}", self.stderr)
    }
}

struct RouterProcess {
    child: Child,
    driver: Driver,
    stdout: PathBuf,
    stderr: PathBuf,
}

pub struct Lab {
    pub prefix: String,
    /// Scratch directory for this lab (captures, transfer files, router output).
    pub dir: PathBuf,
    /// The node namespace's kernel is the router (`SWITCHYARD_LAB_KERNEL=1`).
    pub kernel: bool,
    router: Option<RouterProcess>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proxy/ has a parent")
        .to_path_buf()
}

fn topology_script() -> PathBuf {
    repo_root().join("lab/topology.sh")
}

pub fn kernel_mode() -> bool {
    matches!(std::env::var("SWITCHYARD_LAB_KERNEL"), Ok(v) if !v.is_empty() && v != "0")
}

/// Effective capabilities of this process, from /proc (no unsafe, no libc call).
fn has_caps() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc: {e}"))?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("no CapEff in /proc/self/status")?;
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    for (bit, name) in [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        if cap_eff & (1 << bit) == 0 {
            return Err(format!("needs root ({name}) for network namespaces"));
        }
    }
    Ok(())
}

pub fn have_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Checks the prerequisites; `Err(reason)` if the test cannot run here.
pub fn prerequisites(tools: &[&str]) -> Result<(), String> {
    has_caps()?;
    let mut missing: Vec<&str> = ["ip", "timeout", "ping", "socat", "ss", "ethtool", "sysctl"]
        .iter()
        .chain(tools)
        .copied()
        .filter(|t| !have_tool(t))
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        return Err(format!(
            "missing tools: {} (scripts/install-deps.sh)",
            missing.join(", ")
        ));
    }
    if !topology_script().exists() {
        return Err(format!("{} not found", topology_script().display()));
    }
    Ok(())
}

/// Skip (or, with `CI` set, fail) when the lab cannot run on this machine.
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: lab test cannot run and CI is set: {reason}");
    }
    eprintln!("skipped: {test}: {reason}");
}

fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@[]+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a program under `timeout -k 2 SECS`, capturing its output.
pub fn run_bounded(timeout: Duration, program: &str, args: &[&str]) -> Output {
    let secs = format!("{}", timeout.as_secs().max(1));
    Command::new("timeout")
        .args(["-k", "2", &secs, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run timeout {program}: {e}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Lab {
    /// Builds a lab for `test`, or returns `None` (after printing "skipped: ...") when this
    /// machine cannot run it. `tools` are needed beyond the basic set.
    pub fn new(test: &str, tools: &[&str]) -> Option<Lab> {
        if let Err(reason) = prerequisites(tools) {
            skip_or_fail(test, &reason);
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("sy{}t{}", std::process::id(), n);
        let dir = std::env::temp_dir().join(format!("switchyard-lab-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let kernel = kernel_mode();
        let lab = Lab {
            prefix,
            dir,
            kernel,
            router: None,
        };
        // From here on Drop cleans up, also when `up` fails half-way.
        let mode = if kernel { "kernel" } else { "up" };
        let script = topology_script();
        let out = run_bounded(
            Duration::from_secs(60),
            script.to_str().expect("utf-8 path"),
            &[mode, &lab.prefix],
        );
        assert!(
            out.status.success(),
            "lab/topology.sh {mode} {} failed: {}{}",
            lab.prefix,
            text(&out.stdout),
            text(&out.stderr)
        );
        eprintln!(
            "lab {}: {} mode ({test})",
            lab.prefix,
            if kernel {
                "kernel-router"
            } else {
                "switchyard"
            }
        );
        Some(lab)
    }

    pub fn ns(&self, ns: Ns) -> String {
        let suffix = match ns {
            Ns::Client => "client",
            Ns::Node => "node",
            Ns::Server => "server",
        };
        format!("{}{}", self.prefix, suffix)
    }

    /// Runs `cmd` with `sh -c` in a namespace, bounded by `timeout`.
    pub fn exec_t(&self, ns: Ns, cmd: &str, timeout: Duration) -> Output {
        let name = self.ns(ns);
        run_bounded(timeout, "ip", &["netns", "exec", &name, "sh", "-c", cmd])
    }

    /// Runs `cmd` in a namespace with a 20 s bound.
    pub fn exec(&self, ns: Ns, cmd: &str) -> Output {
        self.exec_t(ns, cmd, Duration::from_secs(20))
    }

    /// Runs `cmd` and panics (with its output) unless it succeeds; returns stdout.
    pub fn exec_ok(&self, ns: Ns, cmd: &str) -> String {
        let out = self.exec(ns, cmd);
        assert!(
            out.status.success(),
            "[{:?}] `{cmd}` failed ({}):\n{}{}",
            ns,
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Joins the node namespace (`node_addr`) to the server namespace (`server_addr`, both
    /// `/24`s) by a veth pair `ike0`, for an IKE peer run in the server namespace.
    pub fn ike_link(&self, node_addr: &str, server_addr: &str) {
        let server = self.ns(Ns::Server);
        self.exec_ok(
            Ns::Node,
            &format!("ip link add ike0 type veth peer name ike0 netns {server}"),
        );
        self.exec_ok(
            Ns::Node,
            &format!("ip addr add {node_addr}/24 dev ike0 && ip link set ike0 up"),
        );
        self.exec_ok(
            Ns::Server,
            &format!("ip addr add {server_addr}/24 dev ike0 && ip link set ike0 up"),
        );
    }

    /// Starts `cmd` in the background in a namespace, bounded by `timeout` (the returned pid is
    /// that of `timeout(1)`, which passes SIGTERM on). Output goes to files in the lab dir.
    pub fn spawn(&self, ns: Ns, name: &str, cmd: &str, timeout: Duration) -> Child {
        let out = fs::File::create(self.dir.join(format!("{name}.out"))).expect("create out");
        let err = fs::File::create(self.dir.join(format!("{name}.err"))).expect("create err");
        let secs = format!("{}", timeout.as_secs().max(1));
        Command::new("timeout")
            .args([
                "-k",
                "2",
                &secs,
                "ip",
                "netns",
                "exec",
                &self.ns(ns),
                "sh",
                "-c",
            ])
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"))
    }

    pub fn read(&self, file: &str) -> String {
        fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// MAC address of an interface in a namespace.
    pub fn mac(&self, ns: Ns, iface: &str) -> String {
        self.exec_ok(ns, &format!("cat /sys/class/net/{iface}/address"))
            .trim()
            .to_string()
    }

    // ---- router ----------------------------------------------------------------------------

    /// The router's command line for `driver` with the lab's addresses.
    pub fn router_args(&self, driver: Driver, extra: &[&str]) -> Vec<String> {
        router_command(&self.prefix, driver, extra)
    }

    /// The admin socket of the agent started by [`Lab::start_agent`] (unless the test gave
    /// its own `--admin-socket`).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Starts the router in the node namespace and waits until it answers ping on both sides.
    /// In kernel mode it does nothing (the kernel already routes).
    pub fn start_router(&mut self, driver: Driver, extra: &[&str]) {
        self.start_switchyard("router", driver, extra);
    }

    /// Starts `switchyard agent` (the router's flags plus `extra`, e.g. `--manifests DIR`) in the
    /// node namespace and waits until it answers ping on both sides.
    pub fn start_agent(&mut self, driver: Driver, extra: &[&str]) {
        assert!(
            !self.kernel,
            "the agent needs the switchyard dataplane, not kernel mode"
        );
        self.start_switchyard("agent", driver, extra);
    }

    fn start_switchyard(&mut self, subcommand: &str, driver: Driver, extra: &[&str]) {
        assert!(self.router.is_none(), "router already running");
        if self.kernel {
            return;
        }
        let bin = env!("CARGO_BIN_EXE_switchyard");
        let mut args = self.router_args(driver, extra);
        args[0] = subcommand.to_string();
        if subcommand == "agent" && !extra.contains(&"--admin-socket") {
            // Namespaces do not separate file systems: each lab's agent gets its own socket.
            args.extend([
                "--admin-socket".into(),
                self.admin_socket().display().to_string(),
            ]);
        }
        let stdout = self.dir.join("router.stdout");
        let stderr = self.dir.join("router.stderr");
        eprintln!(
            "lab {}: ip netns exec {} {bin} {}",
            self.prefix,
            self.ns(Ns::Node),
            args.iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        // `ip netns exec` execs the program in place: the child's pid is the router's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(Ns::Node), bin])
            .args(&args)
            .env("NO_COLOR", "1") // plain log lines in the files shown on failure
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("router stdout file"))
            .stderr(fs::File::create(&stderr).expect("router stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        self.router = Some(RouterProcess {
            child,
            driver,
            stdout,
            stderr,
        });
        self.wait_router_ready();
    }

    fn wait_router_ready(&mut self) {
        let deadline = Instant::now() + ROUTER_READY;
        loop {
            if let Some(r) = self.router.as_mut() {
                if let Ok(Some(status)) = r.child.try_wait() {
                    let out = self.stop_router();
                    panic!(
                        "router exited during startup ({status})\n{}",
                        out.unwrap_or_else(empty_output)
                    );
                }
            }
            let c = self.exec_t(
                Ns::Client,
                "ping -q -n -c 1 -W 1 198.18.1.1",
                Duration::from_secs(3),
            );
            let s = self.exec_t(
                Ns::Server,
                "ping -q -n -c 1 -W 1 198.18.2.1",
                Duration::from_secs(3),
            );
            if c.status.success() && s.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let out = self.stop_router();
                panic!(
                    "router not ready after {ROUTER_READY:?}: no ping reply from 198.18.1.1 \
                     (client) and 198.18.2.1 (server)\n{}",
                    out.unwrap_or_else(empty_output)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGTERM to the router, waits up to 10 s (then SIGKILL) and returns what it
    /// printed. `None` if no router runs (kernel mode).
    pub fn stop_router(&mut self) -> Option<RouterOutput> {
        let mut r = self.router.take()?;
        let pid = r.child.id().to_string();
        if matches!(r.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + ROUTER_STOP;
        let mut status = None;
        let mut killed = false;
        while Instant::now() < deadline {
            match r.child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        if status.is_none() {
            eprintln!("router pid {pid} ignored SIGTERM for {ROUTER_STOP:?}; killing it");
            let _ = r.child.kill();
            status = r.child.wait().ok();
            killed = true;
        }
        let read = |p: &Path| {
            let mut s = String::new();
            if let Ok(mut f) = fs::File::open(p) {
                let _ = f.read_to_string(&mut s);
            }
            s
        };
        Some(RouterOutput {
            driver: r.driver,
            status,
            killed,
            stdout: read(&r.stdout),
            stderr: read(&r.stderr),
        })
    }

    /// Ends a test: stops the router and checks that it exited cleanly on SIGTERM (the
    /// contract: print counters and traces, exit 0). Returns its output for further checks.
    pub fn finish(&mut self) -> Option<RouterOutput> {
        let out = self.stop_router()?;
        eprintln!("{out}");
        match out.status {
            Some(s) if s.success() && !out.killed => {}
            _ => panic!("router did not exit cleanly after SIGTERM\n{out}"),
        }
        Some(out)
    }

    /// Keeps the node namespace's kernel off the router's ports, for `--punt-tun` with a
    /// driver that leaves the kernel a copy of every frame (AF_PACKET): once the router's
    /// addresses live on the TUN device the kernel would otherwise take IPv4 for them straight
    /// from c0/s0 (weak host model) and answer ARP there. Strict reverse-path filtering drops
    /// such packets (the way back to the sender is the TUN device, not the port), and
    /// `arp_ignore=8` never answers ARP on the ports. IPv6 is already off on them.
    pub fn keep_node_kernel_off_ports(&self) {
        if self.kernel {
            return;
        }
        for port in ["c0", "s0"] {
            self.exec_ok(
                Ns::Node,
                &format!(
                    "sysctl -qw net.ipv4.conf.{port}.rp_filter=1 \
                     net.ipv4.conf.{port}.arp_ignore=8"
                ),
            );
        }
    }

    /// Starts `socat {listen} {action}` in `ns` and waits until something listens on `port`
    /// (`udp`: a UDP socket bound to it).
    pub fn spawn_listener(
        &self,
        ns: Ns,
        name: &str,
        listen: &str,
        action: &str,
        port: u16,
        udp: bool,
    ) -> Child {
        let child = self.spawn(
            ns,
            name,
            &format!("socat {listen} {action}"),
            Duration::from_secs(40),
        );
        let ss = if udp { "-Hlun" } else { "-Hltn" };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self
            .exec(ns, &format!("ss {ss} 'sport = :{port}' | grep -q ."))
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "socat listener on :{port} in {ns:?} did not start: {}",
                self.read(&format!("{name}.err"))
            );
            thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Sends `len` bytes over TCP from `client` to an echo server (socat + cat) that listens
    /// in `server` on `addr` (bracketed for IPv6), and checks that they come back intact: data
    /// both ways through whatever sits between.
    pub fn tcp_echo(&self, server: Ns, client: Ns, addr: &str, port: u16, len: usize) {
        let v6 = addr.starts_with('[');
        let data = pseudo_random(len, u64::from(port) + 77);
        let src = self.dir.join(format!("echo-{port}.in"));
        let dst = self.dir.join(format!("echo-{port}.out"));
        fs::write(&src, &data).expect("write echo source");
        let (listen, connect) = if v6 {
            (
                format!("TCP6-LISTEN:{port},bind={addr},reuseaddr"),
                format!("TCP6:{addr}:{port}"),
            )
        } else {
            (
                format!("TCP4-LISTEN:{port},bind={addr},reuseaddr"),
                format!("TCP4:{addr}:{port}"),
            )
        };
        let name = format!("echo-server-{port}");
        let mut srv = self.spawn_listener(server, &name, &listen, "EXEC:cat", port, false);
        let started = Instant::now();
        // -t 5: after sending everything, wait for the echo to finish coming back.
        let out = self.exec_t(
            client,
            &format!(
                "socat -t 5 - {connect} < {} > {}",
                src.display(),
                dst.display()
            ),
            Duration::from_secs(30),
        );
        let server_status = wait_bounded(&mut srv, Duration::from_secs(10));
        let got = fs::read(&dst).unwrap_or_default();
        let diag = || {
            format!(
                "client: {} {}\nserver: {:?} {}",
                out.status,
                text(&out.stderr),
                server_status,
                self.read(&format!("{name}.err"))
            )
        };
        assert!(out.status.success(), "TCP echo client failed\n{}", diag());
        assert_eq!(
            got.len(),
            data.len(),
            "TCP echo: byte count differs\n{}",
            diag()
        );
        assert!(got == data, "TCP echo: content differs");
        eprintln!(
            "TCP echo {addr}:{port} {len} bytes each way in {:?}",
            started.elapsed()
        );
    }

    /// Sends one UDP datagram from `client` to a socat echo server in `server` on `addr` and
    /// returns what came back.
    pub fn udp_echo(&self, server: Ns, client: Ns, addr: &str, port: u16, msg: &str) -> String {
        let v6 = addr.starts_with('[');
        let (listen, connect) = if v6 {
            (
                format!("UDP6-LISTEN:{port},bind={addr},reuseaddr"),
                format!("UDP6:{addr}:{port}"),
            )
        } else {
            (
                format!("UDP4-LISTEN:{port},bind={addr},reuseaddr"),
                format!("UDP4:{addr}:{port}"),
            )
        };
        let name = format!("udp-echo-{port}");
        let mut srv = self.spawn_listener(server, &name, &listen, "PIPE", port, true);
        let out = self.exec_t(
            client,
            &format!("printf '%s' {} | socat -t 3 - {connect}", sh_quote(msg)),
            Duration::from_secs(10),
        );
        let _ = srv.kill();
        let _ = srv.wait();
        text(&out.stdout)
    }

    // ---- probes ----------------------------------------------------------------------------

    /// `ping` from `ns` with extra arguments; returns (success, combined output).
    pub fn ping(&self, ns: Ns, args: &str, dst: &str) -> (bool, String) {
        let out = self.exec_t(
            ns,
            &format!("ping -n {args} {dst}"),
            Duration::from_secs(15),
        );
        (
            out.status.success(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    }

    /// Pings `dst` five times from the client and requires at least four replies (a router may
    /// drop the very first packet while it resolves the next hop).
    pub fn assert_ping(&self, ns: Ns, dst: &str) {
        let (_, out) = self.ping(ns, "-c 5 -i 0.2 -W 2", dst);
        let received = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|f| f.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        // The router holds packets while it resolves a next hop, so none may be lost.
        assert!(
            received == 5,
            "ping {dst} from {ns:?}: {received}/5 replies\n{out}"
        );
    }

    /// Sends probes that must draw an ICMP error; requires a `From {from} ...` line containing
    /// `what` (case-insensitive) in ping's output, and no echo reply.
    pub fn assert_icmp_error(&self, args: &str, dst: &str, from: &str, what: &str) {
        let (ok, out) = self.ping(Ns::Client, &format!("-c 3 -i 0.3 -W 2 {args}"), dst);
        assert!(
            !ok,
            "ping {args} {dst} got an echo reply, expected {what}\n{out}"
        );
        let want = what.to_lowercase();
        let hit = out
            .lines()
            .any(|l| l.starts_with(&format!("From {from} ")) && l.to_lowercase().contains(&want));
        assert!(
            hit,
            "ping {args} {dst}: no \"From {from} ... {what}\" line\n{out}"
        );
    }

    /// Sends `len` bytes client → server over TCP with socat and checks they arrive intact.
    pub fn tcp_transfer(&self, v6: bool, len: usize, port: u16) {
        let data = pseudo_random(len, port as u64);
        let src = self.dir.join(format!("tcp-{port}.in"));
        let dst = self.dir.join(format!("tcp-{port}.out"));
        fs::write(&src, &data).expect("write transfer source");
        let _ = fs::remove_file(&dst);
        let (listen, connect) = if v6 {
            (
                format!("TCP6-LISTEN:{port},bind=[{SERVER_V6}],reuseaddr"),
                format!("TCP6:[{SERVER_V6}]:{port}"),
            )
        } else {
            (
                format!("TCP4-LISTEN:{port},bind={SERVER_V4},reuseaddr"),
                format!("TCP4:{SERVER_V4}:{port}"),
            )
        };
        let mut server = self.spawn(
            Ns::Server,
            &format!("socat-server-{port}"),
            &format!("socat -u {listen} CREATE:{}", dst.display()),
            Duration::from_secs(40),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self
            .exec(
                Ns::Server,
                &format!("ss -Hltn 'sport = :{port}' | grep -q ."),
            )
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "socat listener on :{port} did not start"
            );
            thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        let client = self.exec_t(
            Ns::Client,
            &format!("socat -u OPEN:{} {connect}", src.display()),
            Duration::from_secs(30),
        );
        let server_status = wait_bounded(&mut server, Duration::from_secs(35));
        let got = fs::read(&dst).unwrap_or_default();
        let diag = || {
            format!(
                "client: {} {}\nserver: {:?} {}",
                client.status,
                text(&client.stderr),
                server_status,
                self.read(&format!("socat-server-{port}.err"))
            )
        };
        assert!(client.status.success(), "TCP client failed\n{}", diag());
        assert!(
            server_status.is_some_and(|s| s.success()),
            "TCP server failed\n{}",
            diag()
        );
        assert_eq!(got.len(), data.len(), "TCP: byte count differs\n{}", diag());
        assert!(got == data, "TCP: content differs ({} bytes)", got.len());
        eprintln!(
            "TCP {} {} bytes in {:?}",
            if v6 { "v6" } else { "v4" },
            len,
            started.elapsed()
        );
    }
}

/// `switchyard router ...` arguments for a lab with `prefix` (used as DPDK's --file-prefix).
pub fn router_command(prefix: &str, driver: Driver, extra: &[&str]) -> Vec<String> {
    let (c, s) = driver.ports();
    let mut args: Vec<String> = vec!["router".into(), "--dataplane".into(), driver.name().into()];
    for port in [c, s] {
        args.extend(["--interface".into(), port.into()]);
    }
    for (port, cidr) in [
        (c, "198.18.1.1/24"),
        (c, "2001:db8:1::1/64"),
        (s, "198.18.2.1/24"),
        (s, "2001:db8:2::1/64"),
    ] {
        args.extend(["--address".into(), format!("{port}={cidr}")]);
    }
    if driver == Driver::Dpdk {
        // --file-prefix keeps concurrent DPDK processes apart; --no-shconf/--no-huge: no
        // shared files or hugepages needed (see PEERS.md). With --workers N each vdev gets N
        // queue pairs.
        let qpairs = extra
            .windows(2)
            .find(|w| w[0] == "--workers")
            .map_or(String::new(), |w| format!(",qpairs={}", w[1]));
        let eal = format!(
            "--no-huge --no-pci --no-shconf -m 512 --file-prefix {prefix} \
             --vdev net_af_packet0,iface=c0{qpairs} --vdev net_af_packet1,iface=s0{qpairs}",
        );
        args.extend(["--eal".into(), eal]);
    }
    args.extend(["--duration".into(), ROUTER_MAX_SECS.into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn empty_output() -> RouterOutput {
    RouterOutput {
        driver: Driver::AfPacket,
        status: None,
        killed: false,
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// Waits for a child at most `limit`, then kills it. `None` if it had to be killed.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Deterministic bytes (xorshift64*) so a failing transfer is reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(out) = self.stop_router() {
            // Shown by the test harness for failing tests.
            eprintln!("{out}");
        }
        let script = topology_script();
        let out = run_bounded(
            Duration::from_secs(60),
            script.to_str().unwrap_or("lab/topology.sh"),
            &["down", &self.prefix],
        );
        if !out.status.success() {
            eprintln!(
                "lab/topology.sh down {} failed: {}",
                self.prefix,
                text(&out.stderr)
            );
        }
        if std::env::var_os("SWITCHYARD_LAB_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("lab {}: kept {}", self.prefix, self.dir.display());
        }
    }
}

/// A single-thread tokio runtime for the calling thread, after moving the thread into the
/// network namespace at `path` (e.g. `/run/netns/NAME`): sockets belong to the namespace of the
/// thread that creates them, so a server run on it listens inside the lab.
pub fn runtime_in_netns(path: &str) -> Result<tokio::runtime::Runtime, String> {
    let file = fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {path}: {e}"))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// Polls `check` for up to `secs` seconds; panics with its last complaint and `context()`.
pub fn eventually(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> Result<(), String>,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {e}\n{}", context())
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A process started by [`Lab::spawn`], stopped when dropped (also when the test panics):
/// SIGTERM to timeout(1), which passes it on, then reaped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = wait_bounded(&mut self.0, Duration::from_secs(5));
    }
}
