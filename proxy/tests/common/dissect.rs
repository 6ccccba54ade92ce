//! Dissecting captures with `tshark`, shared by the tests that check what goes on the wire.

use std::path::Path;

use super::text;

/// Frames Wireshark could not dissect, or where it raised an expert-info error (with checksum
/// validation on, a bad IP/TCP/UDP/ICMP checksum is such an error).
pub const ERROR_FILTER: &str = "_ws.malformed || _ws.expert.severity == \"Error\"";

/// tshark with checksum validation on (off by default for IP/TCP/UDP), numeric addresses.
pub fn tshark(pcap: &Path, extra: &[&str]) -> String {
    let pcap = pcap.to_str().expect("utf-8 path");
    let mut args = vec![
        "-n",
        "-r",
        pcap,
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
    ];
    args.extend_from_slice(extra);
    let out = std::process::Command::new("timeout")
        .args(["-k", "2", "30", "tshark"])
        // The user's Wireshark profile (disabled protocols, preferences) must not change the
        // verdict: point tshark at a personal configuration that does not exist.
        .env(
            "WIRESHARK_CONFIG_DIR",
            "/nonexistent/switchyard-tests-wireshark",
        )
        .args(&args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark {args:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Summary lines of the frames matching a display filter.
pub fn frames(pcap: &Path, filter: &str) -> Vec<String> {
    tshark(
        pcap,
        &[
            "-Y",
            filter,
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "_ws.col.Source",
            "-e",
            "_ws.col.Destination",
            "-e",
            "_ws.col.Protocol",
            "-e",
            "_ws.col.Info",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}
