//! The service proxy end to end: `switchyard agent --manifests DIR` in the lab's node
//! namespace, kernel TCP/UDP clients in the client namespace, real servers ("pods", one
//! address each) in the server namespace.
//!
//! ```text
//!   client 198.18.1.2 ── [node: switchyard agent] ── server: pod-a 198.18.2.3 (node-a, local)
//!                                                           pod-b 198.18.2.4 (node-b)
//! ```
//!
//! The agent is told it is node-a, so pod-a is its local endpoint. Each pod answers a TCP
//! connection or a UDP datagram with its name and the peer address it saw, which shows both
//! which backend was chosen and whether the source was masqueraded.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use common::{text, Driver, Lab, Ns, CLIENT_V6, ROUTER_C0_V6, ROUTER_S0_V6};

const POD_A: &str = "198.18.2.3";
const POD_B: &str = "198.18.2.4";
const NODE_C0: &str = "198.18.1.1";
const NODE_S0: &str = "198.18.2.1";
const CLIENT: &str = "198.18.1.2";
/// A Service whose endpoint is the node itself.
const HOSTNET_IP: &str = "198.51.100.15";

fn service(name: &str, cluster_ip: &str, spec_extra: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n{spec_extra}  ports:\n{ports}"
    )
}

fn slice(service: &str, endpoints: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\n\
         ports: [{{name: http, protocol: TCP, port: 8080}}, {{name: dns, protocol: UDP, port: 8053}}]\n\
         endpoints:"
    );
    if endpoints.is_empty() {
        s.push_str(" []\n");
    } else {
        s.push('\n');
    }
    for (ip, node) in endpoints {
        s.push_str(&format!(
            "- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n"
        ));
    }
    s
}

const PORTS: &str = "  - {name: http, protocol: TCP, port: 80, targetPort: 8080}\n  \
                     - {name: dns, protocol: UDP, port: 53, targetPort: 8053}\n";

fn write_manifests(lab: &Lab, web_endpoints: &[(&str, &str)], local_endpoints: &[(&str, &str)]) {
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    let web = service(
        "web",
        "198.51.100.10",
        "  type: NodePort\n",
        "  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}\n  \
         - {name: dns, protocol: UDP, port: 53, targetPort: 8053, nodePort: 30053}\n",
    );
    let empty = service("empty", "198.51.100.11", "", PORTS);
    let local = service(
        "local",
        "198.51.100.12",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
        "  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30081}\n",
    );
    let sticky = service(
        "sticky",
        "198.51.100.13",
        "  sessionAffinity: ClientIP\n",
        PORTS,
    );
    let both = [(POD_A, "node-a"), (POD_B, "node-b")];
    let docs = [
        web,
        slice("web", web_endpoints),
        empty,
        local,
        slice("local", local_endpoints),
        sticky,
        slice("sticky", &both),
    ];
    // Written whole and renamed, so the agent never reads half a file.
    let tmp = dir.join(".services.yaml.tmp");
    fs::write(&tmp, docs.join("---\n")).expect("write manifests");
    fs::rename(&tmp, dir.join("services.yaml")).expect("rename manifests");
}

/// Starts the pods: each answers TCP :8080 and UDP :8053 with "NAME PEER-ADDRESS".
fn start_pods(lab: &Lab) -> Vec<std::process::Child> {
    start_pods_at(lab, &[("pod-a", POD_A), ("pod-b", POD_B)])
}

/// Starts pods (name, IPv4 or IPv6 address) in the server namespace, as [`start_pods`].
fn start_pods_at(lab: &Lab, pods: &[(&str, &str)]) -> Vec<std::process::Child> {
    let mut children = Vec::new();
    for &(name, ip) in pods {
        let (family, prefix, bind) = if ip.contains(':') {
            ("6", "64 nodad", format!("[{ip}]"))
        } else {
            ("4", "24", ip.to_string())
        };
        lab.exec_ok(Ns::Server, &format!("ip addr add {ip}/{prefix} dev eth0"));
        for (proto, listen) in [
            (
                "tcp",
                format!("TCP{family}-LISTEN:8080,bind={bind},fork,reuseaddr"),
            ),
            ("udp", format!("UDP{family}-RECVFROM:8053,bind={bind},fork")),
        ] {
            children.push(lab.spawn(
                Ns::Server,
                &format!("{name}-{proto}"),
                &format!("socat {listen} SYSTEM:'echo {name} $SOCAT_PEERADDR'"),
                Duration::from_secs(110),
            ));
            let flag = if proto == "tcp" { "-Hltn" } else { "-Hlun" };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !lab
                .exec(Ns::Server, &format!("ss {flag} src {bind} | grep -q ."))
                .status
                .success()
            {
                assert!(Instant::now() < deadline, "{name} {proto} did not start");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    children
}

/// One request by socat from `ns` to `address` (socat's form: `TCP4:198.51.100.10:80`,
/// `UDP6:[2001:db8:100::10]:53`): the pod's answer ("pod-a 198.18.1.2"), or the error.
fn socat_request(lab: &Lab, ns: Ns, address: &str) -> Result<String, String> {
    let command = if address.starts_with("TCP") {
        format!("socat -T 2 -t 2 - {address},connect-timeout=2 </dev/null")
    } else {
        format!("echo q | socat -T 2 -t 2 - {address}")
    };
    let out = lab.exec_t(ns, &command, Duration::from_secs(6));
    if out.status.success() && !out.stdout.is_empty() {
        Ok(text(&out.stdout).trim().to_string())
    } else {
        Err(format!("{} {}", out.status, text(&out.stderr).trim()))
    }
}

/// One TCP request from the client.
fn tcp_request(lab: &Lab, addr: &str, port: u16) -> Result<String, String> {
    socat_request(lab, Ns::Client, &format!("TCP4:{addr}:{port}"))
}

/// One UDP request from the client; like a DNS client it tries three times (UDP may lose a
/// datagram on a loaded machine), and says so when it had to.
fn udp_request(lab: &Lab, addr: &str, port: u16) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 1..=3 {
        match socat_request(lab, Ns::Client, &format!("UDP4:{addr}:{port}")) {
            Ok(answer) => {
                if attempt > 1 {
                    eprintln!("UDP {addr}:{port}: answered on attempt {attempt}");
                }
                return Ok(answer);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Which pods answered `n` requests, and how often.
fn spread(lab: &Lab, addr: &str, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let answer = tcp_request(lab, addr, port)
            .unwrap_or_else(|e| panic!("request to {addr}:{port} failed: {e}"));
        let pod = answer.split(' ').next().unwrap_or_default().to_string();
        *seen.entry(pod).or_insert(0) += 1;
    }
    seen
}

/// Waits until `check` holds (the agent re-reads manifests on its own schedule).
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn services_through_the_agent() {
    services_through("services_through_the_agent", &[]);
}

/// The same with two workers: replies from the pods reach either worker (a fanout group
/// spreads each port's packets by flow hash), and those of connections the other worker
/// started are handed to it.
#[test]
fn services_through_two_workers() {
    let Some(out) = services_through("services_through_two_workers", &["--workers", "2"]) else {
        return;
    };
    let handed: u64 = out
        .stdout
        .lines()
        .find_map(|l| {
            l.split(" packets handed to the worker")
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no handoff line\n{out}"));
    assert!(handed > 0, "some replies reach the other worker\n{out}");
}

/// Runs the services scenario with the agent given `extra` flags; returns its output.
fn services_through(test: &str, extra: &[&str]) -> Option<common::RouterOutput> {
    let mut lab = Lab::new(test, &["socat"])?;
    if lab.kernel {
        eprintln!("skipped: the service proxy has no kernel-mode equivalent in this lab");
        return None;
    }
    let both = [(POD_A, "node-a"), (POD_B, "node-b")];
    write_manifests(&lab, &both, &[(POD_B, "node-b")]);
    let _pods = start_pods(&lab);
    let manifests = lab.dir.join("manifests");
    let mut args = vec![
        "--manifests",
        manifests.to_str().expect("utf-8"),
        "--node-name",
        "node-a",
        "--poll-interval",
        "0.2",
    ];
    args.extend_from_slice(extra);
    lab.start_agent(Driver::AfPacket, &args);

    // ClusterIP: both pods serve, and they see the client's own address.
    let seen = spread(&lab, "198.51.100.10", 80, 24);
    assert_eq!(seen.len(), 2, "both backends should answer: {seen:?}");
    let answer = tcp_request(&lab, "198.51.100.10", 80).expect("ClusterIP request");
    assert!(
        answer.ends_with(CLIENT),
        "no masquerade for ClusterIP: {answer}"
    );
    let answer = udp_request(&lab, "198.51.100.10", 53).expect("ClusterIP UDP request");
    assert!(answer.starts_with("pod-"), "UDP answer: {answer}");

    // NodePort (externalTrafficPolicy Cluster): masqueraded to the node's address.
    let answer = tcp_request(&lab, NODE_C0, 30080).expect("NodePort request");
    assert!(
        answer.ends_with(NODE_S0),
        "NodePort is masqueraded: {answer}"
    );
    let answer = udp_request(&lab, NODE_C0, 30053).expect("NodePort UDP request");
    assert!(
        answer.ends_with(NODE_S0),
        "NodePort UDP is masqueraded: {answer}"
    );

    // No endpoints: refused at once, as kube-proxy's REJECT does (an ICMP port unreachable,
    // which the client's TCP reports as "connection refused").
    let refused = tcp_request(&lab, "198.51.100.11", 80).expect_err("no endpoints");
    assert!(
        refused.contains("refused"),
        "TCP to a service without endpoints: {refused}"
    );

    // externalTrafficPolicy Local with no local endpoint: dropped (times out).
    assert!(tcp_request(&lab, NODE_C0, 30081).is_err());

    // ClientIP affinity: every connection lands on one pod.
    let seen = spread(&lab, "198.51.100.13", 80, 8);
    assert_eq!(seen.len(), 1, "affinity: {seen:?}");

    // Live changes: web scaled down to pod-b; local gets a local endpoint.
    write_manifests(&lab, &[(POD_B, "node-b")], &both);
    eventually("web served by pod-b only", || {
        let seen = spread(&lab, "198.51.100.10", 80, 8);
        (seen.keys().collect::<Vec<_>>() == ["pod-b"])
            .then_some(())
            .ok_or(format!("{seen:?}"))
    });
    eventually("Local service served with the client address kept", || {
        let answer = tcp_request(&lab, NODE_C0, 30081)?;
        (answer == format!("pod-a {CLIENT}"))
            .then_some(())
            .ok_or(answer)
    });

    let out = lab.finish().expect("agent output");
    assert!(out.stdout.contains("ip4-nat"), "{out}");
    Some(out)
}

/// A restart of the agent keeps established connections: the new process finds no entry for
/// the connection's next segment, picks it up mid-stream (loose TCP tracking, as Linux's
/// default) and Maglev, whose tables are the same on every start, sends it to the same pod.
#[test]
fn established_connections_survive_an_agent_restart() {
    let Some(mut lab) = Lab::new(
        "established_connections_survive_an_agent_restart",
        &["socat", "python3"],
    ) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: the service proxy has no kernel-mode equivalent in this lab");
        return;
    }
    const VIP: &str = "198.51.100.14";
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    let mut docs = vec![service(
        "echo",
        VIP,
        "",
        "  - {name: echo, protocol: TCP, port: 90, targetPort: 9090}\n",
    )];
    let mut endpoints = String::new();
    for (ip, node) in [(POD_A, "node-a"), (POD_B, "node-b")] {
        endpoints +=
            &format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n");
    }
    docs.push(format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}\n\
         addressType: IPv4\nports: [{{name: echo, protocol: TCP, port: 9090}}]\nendpoints:\n{endpoints}"
    ));
    fs::write(dir.join("echo.yaml"), docs.join("---\n")).expect("manifests");
    // Each pod echoes every line back, prefixed with its name, for as long as the client stays.
    let mut pods = Vec::new();
    for (name, ip) in [("pod-a", POD_A), ("pod-b", POD_B)] {
        lab.exec_ok(Ns::Server, &format!("ip addr add {ip}/24 dev eth0"));
        pods.push(lab.spawn_listener(
            Ns::Server,
            name,
            &format!("TCP4-LISTEN:9090,bind={ip},fork,reuseaddr"),
            &format!("SYSTEM:'while read l; do echo {name} $l; done'"),
            9090,
            false,
        ));
    }
    let agent_args = [
        "--manifests",
        dir.to_str().expect("utf-8"),
        "--node-name",
        "node-a",
    ];
    lab.start_agent(Driver::AfPacket, &agent_args);

    // A client that says "one", waits for a go file, then says "two" on the same connection.
    let go = lab.dir.join("go");
    let script = format!(
        r#"
import os, socket, sys, time
s = socket.create_connection(("{VIP}", 90), timeout=5)
f = s.makefile("rw")
f.write("one\n"); f.flush()
print(f.readline().strip(), flush=True)
deadline = time.time() + 30
while not os.path.exists("{go}") and time.time() < deadline:
    time.sleep(0.05)
f.write("two\n"); f.flush()
print(f.readline().strip(), flush=True)
"#,
        go = go.display()
    );
    fs::write(lab.dir.join("client.py"), script).expect("client script");
    let mut client = lab.spawn(
        Ns::Client,
        "client",
        &format!("python3 {}", lab.dir.join("client.py").display()),
        Duration::from_secs(40),
    );
    let first = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = lab.read("client.out");
            if let Some(line) = out.lines().next() {
                break line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no first answer: {}",
                lab.read("client.err")
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(first.ends_with(" one"), "first answer: {first}");
    let pod = first.split(' ').next().unwrap_or_default().to_string();

    // SIGTERM, a clean exit, and a fresh process with empty tables.
    let out = lab.stop_router().expect("agent was running");
    assert!(
        out.status.is_some_and(|s| s.success()) && !out.killed,
        "{out}"
    );
    lab.start_agent(Driver::AfPacket, &agent_args);
    fs::write(&go, "").expect("go file");
    let status = common::wait_bounded(&mut client, Duration::from_secs(15));
    let out = lab.read("client.out");
    assert!(
        status.is_some_and(|s| s.success()),
        "client: {out} {}",
        lab.read("client.err")
    );
    let second = out.lines().nth(1).unwrap_or_default();
    assert_eq!(second, format!("{pod} two"), "after the restart: {out}");
    lab.finish();
    drop(pods);
}

/// Fragmented UDP through a ClusterIP: kernel sockets on 1500-byte links send 3000-byte
/// datagrams to the service, the pods answer each with a datagram as large; every fragment
/// of both must follow its first (DNAT on the way in, un-DNAT on the way out) for either
/// kernel to reassemble anything.
#[test]
fn fragmented_udp_through_a_cluster_ip() {
    fragmented_udp_through("fragmented_udp_through_a_cluster_ip", &[]);
}

/// The same with two workers: a fanout group spreads fragments by addresses only, so the
/// pods' answers may reach the worker that does not track their connection, which hands
/// every fragment over (the first's ports with it).
#[test]
fn fragmented_udp_through_two_workers() {
    fragmented_udp_through("fragmented_udp_through_two_workers", &["--workers", "2"]);
}

/// Runs the fragmented UDP scenario with the agent given `extra` flags.
fn fragmented_udp_through(test: &str, extra: &[&str]) {
    let Some(mut lab) = Lab::new(test, &["python3"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: the service proxy has no kernel-mode equivalent in this lab");
        return;
    }
    const VIP: &str = "198.51.100.15";
    const SIZE: usize = 3000;
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    let mut endpoints = String::new();
    for (ip, node) in [(POD_A, "node-a"), (POD_B, "node-b")] {
        endpoints +=
            &format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n");
    }
    let docs = [
        service(
            "big",
            VIP,
            "",
            "  - {name: dns, protocol: UDP, port: 53, targetPort: 9053}\n",
        ),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: big-1, namespace: default, labels: {{kubernetes.io/service-name: big}}}}\n\
             addressType: IPv4\nports: [{{name: dns, protocol: UDP, port: 9053}}]\nendpoints:\n{endpoints}"
        ),
    ];
    fs::write(dir.join("big.yaml"), docs.join("---\n")).expect("manifests");
    // IP_MTU_DISCOVER (10) = IP_PMTUDISC_DONT (0): the kernel fragments, DF clear.
    let mut pods = Vec::new();
    for (name, ip) in [("pod-a", POD_A), ("pod-b", POD_B)] {
        lab.exec_ok(Ns::Server, &format!("ip addr add {ip}/24 dev eth0"));
        let script = format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.IPPROTO_IP, 10, 0)\n\
             s.bind(('{ip}', 9053))\n\
             while True:\n    \
                 d, a = s.recvfrom(65535)\n    \
                 s.sendto(b'{name} %d ' % len(d) + d, a)\n"
        );
        let path = lab.dir.join(format!("{name}.py"));
        fs::write(&path, script).expect("pod script");
        pods.push(lab.spawn(
            Ns::Server,
            name,
            &format!("python3 {}", path.display()),
            Duration::from_secs(60),
        ));
    }
    let mut args = vec![
        "--manifests",
        dir.to_str().expect("utf-8"),
        "--node-name",
        "node-a",
    ];
    args.extend_from_slice(extra);
    lab.start_agent(Driver::AfPacket, &args);
    // Each datagram from a socket of its own (a flow of its own), three tries each, as a
    // DNS client would; prints "POD LENGTH-SEEN ANSWER-SOURCE ANSWER-LENGTH" per datagram.
    let client = lab.dir.join("client.py");
    fs::write(
        &client,
        format!(
            "import socket, sys\n\
             payload = bytes(i % 251 for i in range({SIZE}))\n\
             for n in range(8):\n    \
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
                 s.setsockopt(socket.IPPROTO_IP, 10, 0)\n    \
                 s.settimeout(1)\n    \
                 for attempt in range(3):\n        \
                     s.sendto(payload, ('{VIP}', 53))\n        \
                     try:\n            \
                         d, a = s.recvfrom(65535)\n            \
                         break\n        \
                     except socket.timeout:\n            \
                         d, a = b'', ('none', 0)\n    \
                 pod, seen, echo = (d.split(b' ', 2) + [b'', b'', b''])[:3]\n    \
                 ok = echo == payload\n    \
                 print(pod.decode(), seen.decode(), a[0], len(d), 'ok' if ok else 'bad', flush=True)\n"
        ),
    )
    .expect("client script");
    // The pods may take a moment to bind.
    thread::sleep(Duration::from_millis(300));
    let out = lab.exec_t(
        Ns::Client,
        &format!("python3 {}", client.display()),
        Duration::from_secs(40),
    );
    let lines = text(&out.stdout);
    assert!(
        out.status.success(),
        "client: {lines} {}",
        text(&out.stderr)
    );
    let answers: Vec<&str> = lines.lines().collect();
    assert_eq!(answers.len(), 8, "{lines}");
    for line in &answers {
        let f: Vec<&str> = line.split(' ').collect();
        assert!(
            f.len() == 5 && f[0].starts_with("pod-") && f[1] == SIZE.to_string(),
            "the pod got the whole datagram: {line}\n{lines}"
        );
        assert_eq!(f[2], VIP, "answered from the service address: {line}");
        assert_eq!(f[4], "ok", "the whole answer came back: {line}");
    }
    // Requests and answers: 16 datagrams of three fragments, two of which followed the first.
    let report = lab.finish().expect("agent output");
    let followed = report
        .stdout
        .lines()
        .find(|l| l.contains("fragment_followed"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
    assert!(followed.is_some_and(|n| n >= 32), "{report}");
    drop(pods);
}

/// The node's own processes reach Services (kube-proxy's OUTPUT chain): with `--punt-tun`
/// the host's packets to a cluster IP go through the service proxy to a pod, and its answer
/// comes back to the host.
#[test]
fn the_node_reaches_a_cluster_ip_through_its_punt_tun() {
    let Some(mut lab) = Lab::new(
        "the_node_reaches_a_cluster_ip_through_its_punt_tun",
        &["socat"],
    ) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: the service proxy has no kernel-mode equivalent in this lab");
        return;
    }
    let both = [(POD_A, "node-a"), (POD_B, "node-b")];
    write_manifests(&lab, &both, &[(POD_B, "node-b")]);
    // A Service whose one endpoint is the node itself (a host-network pod on node-a).
    let host_service = [
        service(
            "hostnet",
            HOSTNET_IP,
            "  type: NodePort\n",
            "  - {name: http, protocol: TCP, port: 80, targetPort: 8081, nodePort: 30081}\n",
        ),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: hostnet-1, namespace: default, labels: {{kubernetes.io/service-name: hostnet}}}}\n\
             addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8081}}]\n\
             endpoints:\n- addresses: [{NODE_C0}]\n  conditions: {{ready: true}}\n  nodeName: node-a\n"
        ),
    ];
    let manifests = lab.dir.join("manifests");
    fs::write(manifests.join("hostnet.yaml"), host_service.join("---\n")).expect("write");
    let _pods = start_pods(&lab);
    // AF_PACKET leaves the node's kernel a copy of every frame: keep it out of the way.
    lab.keep_node_kernel_off_ports();
    // What a run killed before it could undo its routing rules leaves: replaced at start.
    lab.exec_ok(
        Ns::Node,
        "ip rule add pref 100 iif lo ipproto tcp dport 1000-2000 lookup 21337 && \
         ip rule add pref 101 lookup local && ip rule del pref 0 lookup local",
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
            "--punt-tun",
            "sy0",
        ],
    );
    eventually(
        "the node's request to the cluster IP answered by a pod",
        || {
            let out = lab.exec_t(
                Ns::Node,
                "socat -T 2 -t 2 - TCP4:198.51.100.10:80,connect-timeout=2 </dev/null",
                Duration::from_secs(6),
            );
            let answer = text(&out.stdout).trim().to_string();
            answer.starts_with("pod-").then_some(()).ok_or(format!(
                "{} {answer} {}",
                out.status,
                text(&out.stderr)
            ))
        },
    );
    // A NodePort on the node's own address (kube-proxy's OUTPUT rules, and the upstream e2e
    // "Services should function for node-Service"): the punt device's policy routing sends
    // the host's packets into the dataplane, which masquerades them to a pod (whose answer
    // names the node's address towards it) and hands the answer back.
    eventually(
        "the node's TCP to a NodePort on its own address answered by a pod",
        || {
            let out = lab.exec_t(
                Ns::Node,
                &format!("socat -T 2 -t 2 - TCP4:{NODE_C0}:30080,connect-timeout=2 </dev/null"),
                Duration::from_secs(6),
            );
            let answer = text(&out.stdout).trim().to_string();
            answer
                .ends_with(&format!(" {NODE_S0}"))
                .then_some(())
                .ok_or(format!("{} {answer} {}", out.status, text(&out.stderr)))
        },
    );
    eventually(
        "the node's UDP to a NodePort on its own address answered by a pod",
        || {
            let out = lab.exec_t(
                Ns::Node,
                &format!("echo q | socat -T 2 -t 2 - UDP4:{NODE_C0}:30053"),
                Duration::from_secs(6),
            );
            let answer = text(&out.stdout).trim().to_string();
            answer.starts_with("pod-").then_some(()).ok_or(format!(
                "{} {answer} {}",
                out.status,
                text(&out.stderr)
            ))
        },
    );
    // The rest of the node's own ports, in the NodePort range or not, are the node's.
    let own = lab.spawn_listener(
        Ns::Node,
        "host-own",
        "TCP4-LISTEN:30999,fork,reuseaddr",
        "SYSTEM:'echo own'",
        30999,
        false,
    );
    eventually(
        "the node's own listener in the NodePort range answered",
        || {
            let out = lab.exec_t(
                Ns::Node,
                &format!("socat -T 2 -t 2 - TCP4:{NODE_C0}:30999,connect-timeout=2 </dev/null"),
                Duration::from_secs(6),
            );
            let answer = text(&out.stdout).trim().to_string();
            (answer == "own").then_some(()).ok_or(format!(
                "{} {answer} {}",
                out.status,
                text(&out.stderr)
            ))
        },
    );
    // A cluster IP on a port its Service does not have refuses at once (kube-proxy's
    // cluster-ips-check), from the node too.
    let out = lab.exec_t(
        Ns::Node,
        "socat -T 2 -t 2 - TCP4:198.51.100.10:81,connect-timeout=2 </dev/null",
        Duration::from_secs(6),
    );
    assert!(
        !out.status.success() && text(&out.stderr).contains("Connection refused"),
        "{} {}",
        out.status,
        text(&out.stderr)
    );
    // The host reaching itself through a Service: its own address as the endpoint. The
    // answer names the Service's address as the peer, which stood in for the host.
    let host = lab.spawn_listener(
        Ns::Node,
        "host-tcp",
        "TCP4-LISTEN:8081,fork,reuseaddr",
        "SYSTEM:'echo host $SOCAT_PEERADDR'",
        8081,
        false,
    );
    // Directly to the cluster IP, and through the Service's NodePort on the node's own
    // address (the cluster IP then stands in for the host, whose answer goes back as from the
    // NodePort).
    for (what, target) in [
        (
            "the node's request to its own endpoint answered",
            format!("{HOSTNET_IP}:80"),
        ),
        (
            "the node's NodePort to its own endpoint answered",
            format!("{NODE_C0}:30081"),
        ),
    ] {
        eventually(what, || {
            let out = lab.exec_t(
                Ns::Node,
                &format!("socat -T 2 -t 2 - TCP4:{target},connect-timeout=2 </dev/null"),
                Duration::from_secs(6),
            );
            let answer = text(&out.stdout).trim().to_string();
            (answer == format!("host {HOSTNET_IP}"))
                .then_some(())
                .ok_or(format!("{} {answer} {}", out.status, text(&out.stderr)))
        });
    }
    for mut listener in [own, host] {
        let _ = listener.kill();
        let _ = listener.wait();
    }
    let rules = text(&lab.exec(Ns::Node, "ip -4 rule; ip -6 rule").stdout);
    assert!(rules.contains("lookup 21337"), "{rules}");
    assert!(
        !rules.contains("1000-2000"),
        "the stale rule is gone: {rules}"
    );
    let out = lab.finish().expect("agent output");
    assert!(out.stdout.contains("ip4-nat"), "{out}");
    // The routing rules are undone: the local table's rule back at 0, none of ours.
    let rules = text(&lab.exec(Ns::Node, "ip -4 rule; ip -6 rule").stdout);
    let local: Vec<&str> = rules
        .lines()
        .filter(|l| l.ends_with("lookup local"))
        .collect();
    assert!(
        !local.is_empty() && local.iter().all(|l| l.starts_with("0:")),
        "{rules}"
    );
    assert!(!rules.contains("lookup 21337"), "{rules}");
}

/// IPv6 Services end to end: a single-stack IPv6 Service (ClusterIP and NodePort, TCP and
/// UDP) with two IPv6 pods, one without endpoints, and a cluster IP on a port no Service
/// has, from the client's kernel over IPv6 (ND on both sides of the dataplane).
#[test]
fn ipv6_services_through_the_agent() {
    let Some(mut lab) = Lab::new("ipv6_services_through_the_agent", &["socat"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: the service proxy has no kernel-mode equivalent in this lab");
        return;
    }
    const VIP: &str = "2001:db8:100::10";
    const EMPTY_VIP: &str = "2001:db8:100::11";
    const PODS: [(&str, &str, &str); 2] = [
        ("pod-a", "2001:db8:2::3", "node-a"),
        ("pod-b", "2001:db8:2::4", "node-b"),
    ];
    let v6 = "  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n";
    let mut endpoints = String::new();
    for (_, ip, node) in PODS {
        endpoints +=
            &format!("- addresses: ['{ip}']\n  conditions: {{ready: true}}\n  nodeName: {node}\n");
    }
    let docs = [
        service(
            "web6",
            &format!("'{VIP}'"),
            &format!("  type: NodePort\n{v6}"),
            "  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30090}\n  \
             - {name: dns, protocol: UDP, port: 53, targetPort: 8053, nodePort: 30091}\n",
        ),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web6-1, namespace: default, labels: {{kubernetes.io/service-name: web6}}}}\n\
             addressType: IPv6\n\
             ports: [{{name: http, protocol: TCP, port: 8080}}, {{name: dns, protocol: UDP, port: 8053}}]\n\
             endpoints:\n{endpoints}"
        ),
        service("empty6", &format!("'{EMPTY_VIP}'"), v6, PORTS),
    ];
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    fs::write(dir.join("services.yaml"), docs.join("---\n")).expect("write manifests");

    let pods = start_pods_at(&lab, &PODS.map(|(name, ip, _)| (name, ip)));
    lab.start_agent(
        Driver::AfPacket,
        &[
            "--manifests",
            dir.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
            "--poll-interval",
            "0.2",
            "--punt-tun",
            "sy0",
        ],
    );

    let request_from = |ns: Ns, proto: &str, addr: &str, port: u16| {
        socat_request(
            &lab,
            ns,
            &format!("{}6:[{addr}]:{port}", proto.to_uppercase()),
        )
    };
    let request = |proto: &str, addr: &str, port: u16| -> Result<String, String> {
        request_from(Ns::Client, proto, addr, port)
    };
    // The peer a pod saw (socat writes it in full, in brackets), in the short form.
    let peer = |answer: &str| {
        let full = answer.split(' ').nth(1).unwrap_or_default();
        full.trim_matches(['[', ']'])
            .parse::<std::net::Ipv6Addr>()
            .map_or(full.to_string(), |a| a.to_string())
    };

    // ClusterIP: both pods serve, and they see the client's own address.
    let mut seen = BTreeMap::new();
    eventually("the IPv6 cluster IP answered", || {
        request("tcp", VIP, 80).map(|_| ())
    });
    for _ in 0..24 {
        let answer = request("tcp", VIP, 80).expect("IPv6 ClusterIP request");
        assert_eq!(peer(&answer), CLIENT_V6, "no masquerade for ClusterIP");
        *seen
            .entry(answer.split(' ').next().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both IPv6 backends should answer: {seen:?}");
    eventually("UDP over the IPv6 cluster IP", || {
        let answer = request("udp", VIP, 53)?;
        (peer(&answer) == CLIENT_V6).then_some(()).ok_or(answer)
    });

    // NodePort on the node's IPv6 address: masqueraded to the node's address towards the pods.
    for proto in ["tcp", "udp"] {
        let port = if proto == "tcp" { 30090 } else { 30091 };
        eventually(&format!("IPv6 NodePort {proto}"), || {
            let answer = request(proto, ROUTER_C0_V6, port)?;
            (answer.starts_with("pod-") && peer(&answer) == ROUTER_S0_V6)
                .then_some(())
                .ok_or(answer)
        });
    }

    // The node itself, through the punt device: the cluster IP, and a NodePort on its own
    // address (policy routing sends the host's packets to the NodePort range into the TUN).
    for (what, addr, port) in [("cluster IP", VIP, 80), ("NodePort", ROUTER_C0_V6, 30090)] {
        eventually(&format!("the node's TCP to its IPv6 {what}"), || {
            let answer = request_from(Ns::Node, "tcp", addr, port)?;
            answer.starts_with("pod-").then_some(()).ok_or(answer)
        });
    }

    // No endpoints, and a cluster IP on a port no Service has: refused at once (ICMPv6
    // port unreachable, which the client's TCP reports as "connection refused").
    for (addr, port) in [(EMPTY_VIP, 80), (VIP, 81)] {
        let refused = request("tcp", addr, port).expect_err("refused");
        assert!(refused.contains("refused"), "[{addr}]:{port}: {refused}");
    }

    for mut pod in pods {
        let _ = pod.kill();
        let _ = pod.wait();
    }
    let out = lab.finish().expect("agent output");
    assert!(out.stdout.contains("ip6-nat"), "{out}");
}
