//! Bad flags give one clear error line and a non-zero exit, never a panic. None of these opens
//! a real interface: every case fails while the flags are read or before a port is used.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run switchyard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_error(args: &[&str], needle: &str) {
    let (code, stderr) = run(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
}

#[test]
fn malformed_flags_are_refused() {
    assert_error(&["router"], "--interface");
    assert_error(
        &["router", "--dataplane", "carrier-pigeon", "-i", "x"],
        "invalid value",
    );
    assert_error(&["router", "--no-such-flag"], "unexpected argument");
    assert_error(&["frobnicate"], "unrecognized subcommand");
}

#[test]
fn bad_pcap_ports_and_addresses_give_one_error_line() {
    let dir = std::env::temp_dir().join(format!("sy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.pcap");
    let spec = format!("{}:", missing.display());
    assert_error(
        &["router", "--dataplane", "pcap", "-i", &spec],
        "switchyard: error:",
    );

    // A valid empty capture as input so the flags after it are what fails.
    let input = dir.join("in.pcap");
    let mut header = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    std::fs::write(&input, &header).unwrap();
    let spec = format!("{}:", input.display());
    let base = ["router", "--dataplane", "pcap", "-i", &spec];
    let addr = format!("{spec}=198.18.0.1");
    let (v4, v6, mtu) = (
        format!("{spec}=198.18.0.1/24"),
        format!("{spec}=2001:db8::1/64"),
        format!("{spec}=1000"),
    );
    let cases: [(&[&str], &str); 5] = [
        (&["-a", &addr], "not an address with a prefix length"),
        (&["-a", "nosuch=198.18.0.1/24"], "no interface named"),
        (&["-r", "0.0.0.0/0=198.18.9.9"], "not on an attached subnet"),
        (&["--mtu", "x=100"], "below the IPv4 minimum"),
        // RFC 8200 5: no IPv6 link below 1280 bytes.
        (
            &["-a", &v6, "--mtu", &mtu],
            "below the IPv6 minimum of 1280",
        ),
    ];
    for (extra, needle) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        assert_error(&args, needle);
    }
    // The empty capture itself replays cleanly, and so it does with an IPv4-only port of 1000.
    assert_eq!(run(&base).0, 0);
    let v4_port: Vec<&str> = base
        .iter()
        .chain(&["-a", &v4, "--mtu", &mtu])
        .copied()
        .collect();
    assert_eq!(run(&v4_port).0, 0);
    // With --log-format json, every log line is one JSON object.
    let json: Vec<&str> = ["--log-format", "json"]
        .iter()
        .chain(&base)
        .copied()
        .collect();
    let (code, stderr) = run(&json);
    assert_eq!(code, 0, "{stderr}");
    let logs: Vec<&str> = stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(
        logs.iter()
            .any(|l| l.contains(r#""level":"INFO""#) && l.contains("forwarding")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--vlan PORT.VID`: a VLAN id from 1 to 4094 on a known port, once; the subinterface's name
/// works in the other flags; its MTU is at most its port's.
#[test]
fn bad_vlan_subinterfaces_give_one_error_line() {
    let dir = std::env::temp_dir().join(format!("sy-cli-vlan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.pcap");
    let mut header = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    std::fs::write(&input, &header).unwrap();
    let spec = format!("{}:", input.display());
    let base = ["router", "--dataplane", "pcap", "-i", &spec];
    let sub = |vid: &str| format!("{spec}.{vid}");
    let (v0, v4095, v5000, v100) = (sub("0"), sub("4095"), sub("5000"), sub("100"));
    let big_mtu = format!("{v100}=9000");
    let sub_addr = format!("{v100}=198.51.100.1/24");
    let sub_mac = format!("{v100}=02:00:00:00:00:01");
    let cases: [(&[&str], &str); 7] = [
        (&["--vlan", &v0], "out of range"),
        (&["--vlan", &v4095], "out of range"),
        (&["--vlan", &v5000], "out of range"),
        (&["--vlan", "nosuch.100"], "no interface named \"nosuch\""),
        (&["--vlan", &v100, "--vlan", &v100], "given twice"),
        (&["--vlan", &v100, "--mtu", &big_mtu], "more than the MTU"),
        (&["--vlan", &v100, "--mac", &sub_mac], "has its port's MAC"),
    ];
    for (extra, needle) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        assert_error(&args, needle);
        let (_, stderr) = run(&args);
        let errors = stderr.lines().filter(|l| l.contains("error")).count();
        assert_eq!(errors, 1, "{args:?}: one error line\n{stderr}");
    }
    // An address on the subinterface before it is declared is an unknown interface.
    let args: Vec<&str> = base.iter().chain(&["-a", &sub_addr]).copied().collect();
    assert_error(&args, "no interface named");
    // Declared, with an address and a route through it, it replays cleanly.
    let route = format!("203.0.113.0/24=198.51.100.9@{v100}");
    let ok: Vec<&str> = base
        .iter()
        .chain(&["--vlan", &v100, "-a", &sub_addr, "-r", &route])
        .copied()
        .collect();
    let (code, stderr) = run(&ok);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("VLAN subinterface ready"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
