//! Two Switchyard instances form an IPsec tunnel with each other, ESP crypto on DPDK
//! cryptodevs (the software poll-mode drivers that stand in for QAT here, a different one on
//! each side), and carry ping and TCP between the subnets behind them.
//!
//! The edge lab (`lab/edge-topology.sh`) gives the namespaces: Switchyard A owns the edge
//! (198.18.1.1 towards the client, 198.18.3.1 towards node1), Switchyard B owns node1
//! (198.18.3.2, and 198.18.4.1 towards pod1). A initiates IKE; the tunnel protects
//! 198.18.1.0/24 ⇄ 198.18.4.0/24.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::edge_lab::EdgeLab;

const PSK: &str = "switchyard-pair-psk";

/// The SD-EWAN resources of one side.
fn site(
    remote: &str,
    local_net: &str,
    remote_net: &str,
    start: bool,
    ike: &str,
    esp: &str,
) -> String {
    let mode = if start { "start" } else { "add" };
    format!(
        r#"apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecProposal
metadata:
  name: ike-proposal
spec:
  encryption_algorithm: "{ike}"
  hash_algorithm: ""
  dh_group: ""
---
apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecSite
metadata:
  name: pair
spec:
  remote: {remote}
  local_identifier: ""
  remote_identifier: "{remote}"
  authentication_method: psk
  pre_shared_key: "{PSK}"
  crypto_proposal: [ike-proposal]
  connections:
    - name: net
      conn_type: tunnel
      mode: {mode}
      local_subnet: {local_net}
      remote_subnet: {remote_net}
      crypto_proposal: ["{esp}"]
"#
    )
}

/// Starts `switchyard router` in `ns` with ESP on cryptodev `device`, its ports on the
/// AF_PACKET driver, or with `dpdk` on the DPDK driver (`net_af_packet` vdevs): then the
/// device takes the packets' own mbufs and completes them asynchronously. With `workers`
/// worker threads (each SA used by one of them, the others handing its packets over).
#[allow(clippy::too_many_arguments)]
fn router(
    lab: &mut EdgeLab,
    ns: &str,
    ports: &[(&str, &str)],
    route: &str,
    ipsec: &str,
    device: &str,
    dpdk: bool,
    workers: u16,
) {
    let manifest = lab.dir.join(format!("ipsec-{ns}.yaml"));
    fs::write(&manifest, ipsec).expect("write the SD-EWAN resources");
    let mut eal = format!(
        "--no-huge --no-pci --no-shconf -m 256 -l 0 --log-level lib.eal:error \
         --file-prefix {}{ns} --vdev {device}",
        lab.prefix
    );
    let names: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (port, _))| {
            if dpdk {
                eal.push_str(&format!(
                    " --vdev net_af_packet{i},iface={port},qpairs={workers}"
                ));
                format!("net_af_packet{i}")
            } else {
                port.to_string()
            }
        })
        .collect();
    let mut args: Vec<String> = [
        "router",
        "--dataplane",
        if dpdk { "dpdk" } else { "afpacket" },
        "--duration",
        "120",
        "--punt-tun",
        "sy0",
        "--ipsec",
        &manifest.display().to_string(),
        "--crypto",
        &format!("cryptodev:{device}"),
        "--eal",
        &eal,
        "--route",
        route,
        "--workers",
        &workers.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (port, (_, addr)) in names.iter().zip(ports) {
        args.extend([
            "-i".into(),
            port.clone(),
            "-a".into(),
            format!("{port}={addr}"),
        ]);
    }
    let child = lab.spawn(
        ns,
        &format!("agent-{ns}"),
        env!("CARGO_BIN_EXE_switchyard"),
        &args,
    );
    lab.agents.push((ns.to_string(), child));
}

/// Counter `key` of `node` in a router's exit report, where each node's line is followed by
/// indented `COUNT key (text)` lines.
fn counter(report: &str, node: &str, key: &str) -> u64 {
    let mut current = "";
    for line in report.lines() {
        let mut words = line.split_whitespace();
        if !line.starts_with(' ') {
            current = words.next().unwrap_or_default();
        } else if current == node {
            if let (Some(count), Some(k)) = (words.next(), words.next()) {
                if k == key {
                    return count.parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

#[test]
fn two_switchyards_tunnel_over_cryptodevs() {
    // (IKE proposal, ESP proposal, A's device, B's device, A on the DPDK driver, workers of
    // A and of B). With DPDK, A's device works asynchronously on the packets' mbufs.
    let cases = [
        (
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16",
            "crypto_aesni_gcm0",
            "crypto_aesni_mb0",
            true,
            2,
            1,
        ),
        (
            "aes256-sha256-x25519",
            "aes256-sha256",
            "crypto_aesni_mb0",
            "crypto_openssl0",
            false,
            1,
            2,
        ),
    ];
    for (ike, esp, dev_a, dev_b, dpdk_a, workers_a, workers_b) in cases {
        let Some(mut lab) = EdgeLab::new("ipsec_pair") else {
            return;
        };
        router(
            &mut lab,
            "edge",
            &[("c0", "198.18.1.1/24"), ("n1", "198.18.3.1/30")],
            "198.18.4.0/24=198.18.3.2",
            &site(
                "198.18.3.2",
                "198.18.1.0/24",
                "198.18.4.0/24",
                true,
                ike,
                esp,
            ),
            dev_a,
            dpdk_a,
            workers_a,
        );
        router(
            &mut lab,
            "node1",
            &[("e0", "198.18.3.2/30"), ("p0", "198.18.4.1/24")],
            "198.18.1.0/24=198.18.3.1",
            &site(
                "198.18.3.1",
                "198.18.4.0/24",
                "198.18.1.0/24",
                false,
                ike,
                esp,
            ),
            dev_b,
            false,
            workers_b,
        );
        // The tunnel is up once a ping makes it through.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = lab.exec("client", "ping -c 1 -W 1 198.18.4.2");
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                let report = lab.stop_agents();
                panic!("{esp}: no ping through the tunnel in 30 s:\n{report}");
            }
        }
        let out = lab.exec("client", "ping -c 20 -i 0.05 -W 1 -s 1200 198.18.4.2");
        assert!(
            out.status.success(),
            "{esp}: pings through the tunnel:\n{}",
            common::text(&out.stdout)
        );
        // TCP both ways: 256 KiB from the client to pod1 and back (socat echo).
        lab.others.push(lab.spawn(
            "pod1",
            "echo",
            "socat",
            &["TCP-LISTEN:7100,reuseaddr,fork".into(), "EXEC:cat".into()],
        ));
        std::thread::sleep(Duration::from_millis(300));
        let out = lab.exec(
            "client",
            "head -c 262144 /dev/urandom > /tmp/sy-pair-$$ && \
             timeout 20 socat -t 5 - TCP:198.18.4.2:7100 < /tmp/sy-pair-$$ | cmp - /tmp/sy-pair-$$; \
             rc=$?; rm -f /tmp/sy-pair-$$; exit $rc",
        );
        assert!(
            out.status.success(),
            "{esp}: TCP through the tunnel changed the bytes:\n{}{}",
            common::text(&out.stdout),
            common::text(&out.stderr)
        );
        let report = lab.stop_agents();
        for (ns, dev, workers) in [("edge", dev_a, workers_a), ("node1", dev_b, workers_b)] {
            let section = report
                .split("---- agent ")
                .find(|s| s.starts_with(ns))
                .unwrap_or_default();
            let encrypted = counter(section, "esp4-encrypt", "encrypted");
            let decrypted = counter(section, "esp4-decrypt", "decrypted");
            assert!(
                encrypted >= 21 && decrypted >= 21,
                "{esp} {ns}: {encrypted} encrypted, {decrypted} decrypted:\n{section}"
            );
            let line = section
                .lines()
                .find(|l| l.starts_with(&format!("cryptodev {dev}")))
                .unwrap_or_else(|| panic!("{ns}: no cryptodev line:\n{section}"));
            let ops: u64 = line
                .split(": ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(
                ops >= encrypted + decrypted,
                "{esp} {ns}: the device did {ops} operations for {encrypted} + {decrypted} packets:\n{line}"
            );
            eprintln!("{esp} {ns}: {encrypted} encrypted, {decrypted} decrypted; {line}");
            if workers > 1 {
                // Two workers ran (which of them sees which flow is the kernel's fanout hash's
                // choice: ESP between the gateways is one flow, so handoffs may or may not
                // happen; the graph tests cover them).
                assert!(
                    section.contains("worker 1: "),
                    "{esp} {ns}: two workers:\n{section}"
                );
            }
            assert!(
                line.contains(" 0 failed")
                    && line.contains(" 0 queue pairs stuck")
                    && line.contains(" 0 abandoned"),
                "{line}"
            );
            if ns == "edge" && dpdk_a {
                assert!(
                    section.contains("ESP crypto asynchronous"),
                    "{esp} {ns}: the DPDK side hands packets to the device:\n{section}"
                );
            }
        }
    }
}
