//! The edge lab (`lab/edge-topology.sh`): a client, an edge node, two nodes and a pod behind
//! each node, in namespaces under a prefix of the test's own; Switchyard instances own the
//! edge's and the nodes' ports. Dropping the lab stops them and removes the namespaces.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{prerequisites, run_bounded, skip_or_fail, text, wait_bounded};

/// The longest any Switchyard instance of the lab runs (`timeout(1)` kills it after that).
const AGENT_MAX_SECS: &str = "150";

/// Numbers the labs of a test process: its tests run in parallel, each with a lab of its own.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct EdgeLab {
    pub prefix: String,
    pub dir: PathBuf,
    pub agents: Vec<(String, Child)>,
    pub others: Vec<Child>,
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .join("lab/edge-topology.sh")
}

impl EdgeLab {
    pub fn new(test: &str) -> Option<EdgeLab> {
        if let Err(reason) = prerequisites(&["socat", "tcpdump", "tshark"]) {
            skip_or_fail(test, &reason);
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("sy{}t9{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("switchyard-edge-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        let lab = EdgeLab {
            prefix,
            dir,
            agents: Vec::new(),
            others: Vec::new(),
        };
        let out = run_bounded(
            Duration::from_secs(60),
            script().to_str().expect("utf-8"),
            &["up", &lab.prefix],
        );
        assert!(
            out.status.success(),
            "edge-topology.sh up failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        Some(lab)
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn exec(&self, ns: &str, cmd: &str) -> std::process::Output {
        run_bounded(
            Duration::from_secs(10),
            "ip",
            &["netns", "exec", &self.ns(ns), "sh", "-c", cmd],
        )
    }

    pub fn spawn(&self, ns: &str, name: &str, program: &str, args: &[String]) -> Child {
        Command::new("timeout")
            .args([
                "-k",
                "2",
                AGENT_MAX_SECS,
                "ip",
                "netns",
                "exec",
                &self.ns(ns),
                program,
            ])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.dir.join(format!("{name}.out"))).expect("out"))
            .stderr(fs::File::create(self.dir.join(format!("{name}.err"))).expect("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
    }

    /// Starts `switchyard agent` in `ns` with its ports, addresses, routes and manifests.
    pub fn agent(&mut self, ns: &str, ports: &[(&str, &str)], routes: &[&str], manifests: &str) {
        let dir = self.dir.join(format!("manifests-{ns}"));
        fs::create_dir_all(&dir).expect("manifest dir");
        fs::write(dir.join("services.yaml"), manifests).expect("manifests");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--manifests".into(),
            dir.display().to_string(),
            "--node-name".into(),
            ns.into(),
            "--dataplane".into(),
            "afpacket".into(),
            "--duration".into(),
            "120".into(),
            "--admin-socket".into(),
            self.dir
                .join(format!("admin-{ns}.sock"))
                .display()
                .to_string(),
        ];
        for (port, addr) in ports {
            args.extend([
                "-i".into(),
                port.to_string(),
                "-a".into(),
                format!("{port}={addr}"),
            ]);
        }
        for r in routes {
            args.extend(["-r".into(), r.to_string()]);
        }
        let child = self.spawn(
            ns,
            &format!("agent-{ns}"),
            env!("CARGO_BIN_EXE_switchyard"),
            &args,
        );
        self.agents.push((ns.to_string(), child));
    }

    pub fn read(&self, file: &str) -> String {
        fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Stops every agent with SIGTERM and returns their reports.
    pub fn stop_agents(&mut self) -> String {
        let mut out = String::new();
        for (ns, mut child) in self.agents.drain(..) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = wait_bounded(&mut child, Duration::from_secs(10));
            out += &format!(
                "---- agent {ns}: {status:?}\n{}\n{}",
                fs::read_to_string(self.dir.join(format!("agent-{ns}.out"))).unwrap_or_default(),
                fs::read_to_string(self.dir.join(format!("agent-{ns}.err"))).unwrap_or_default()
            );
        }
        out
    }
}

impl Drop for EdgeLab {
    fn drop(&mut self) {
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run_bounded(
            Duration::from_secs(60),
            script().to_str().expect("utf-8"),
            &["down", &self.prefix],
        );
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
