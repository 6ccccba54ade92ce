//! AF_PACKET driver against a kernel peer over a veth pair in namespaces of the test's own.

mod netns;

use std::process::Command;
use std::time::{Duration, Instant};

use netns::{in_netns, Lab, PeerSocket};
use switchyard_dataplane::{HeapBuffer, PacketBuffer};
use switchyard_io::afpacket::AfPacketDriver;
use switchyard_io::{Driver, IoError};

fn open(lab: &Lab) -> AfPacketDriver {
    in_netns(&lab.ns_a, || AfPacketDriver::new(&["veth0".to_string()])).expect("open veth0")
}

/// Receives on port 0 until `want` frames that `keep` accepts have come or `limit` passes.
fn collect(
    d: &mut AfPacketDriver,
    want: usize,
    limit: Duration,
    mut keep: impl FnMut(&[u8], switchyard_io::afpacket::RxFlags) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut bufs = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        d.wait(Duration::from_millis(10));
        d.rx_burst(0, &mut bufs, 64).expect("rx_burst");
        let flags = d.last_rx_flags().to_vec();
        for (b, f) in bufs.iter().zip(flags) {
            if keep(b.data(), f) {
                got.push(b.data().to_vec());
            }
        }
        d.recycle(&mut bufs);
    }
    got
}

#[test]
fn port_info_and_unknown_interface() {
    let Some(lab) = Lab::new("pi") else { return };
    let d = open(&lab);
    let p = &d.ports()[0];
    assert_eq!(p.name, "veth0");
    assert_eq!(p.mac, lab.mac(&lab.ns_a, "veth0"));
    assert_eq!(p.mtu, 1500);
    let err = in_netns(&lab.ns_a, || {
        AfPacketDriver::new(&["veth0".to_string(), "nosuch0".to_string()])
    });
    match err {
        Err(IoError::NoSuchInterface(n)) => assert_eq!(n, "nosuch0"),
        other => panic!("expected NoSuchInterface, got {other:?}"),
    }
}

#[test]
fn receives_frames_and_reinserts_vlan_tags() {
    let Some(lab) = Lab::new("rx") else { return };
    let mut d = open(&lab);
    let a_mac = d.ports()[0].mac;
    let b_mac = lab.mac(&lab.ns_b, "veth1");
    let sent: Vec<Vec<u8>> = (0..60u32)
        .map(|i| {
            let vlan = (i % 3 == 0).then_some(0x2000 | (100 + i as u16));
            netns::test_frame(a_mac, b_mac, vlan, i, 60 + i as usize * 20)
        })
        .collect();
    let peer = in_netns(&lab.ns_b, || PeerSocket::open("veth1"));
    for f in &sent {
        peer.send(f);
    }
    let got = collect(&mut d, sent.len(), Duration::from_secs(5), |f, _| {
        netns::test_frame_seq(f).is_some()
    });
    assert_eq!(got.len(), sent.len(), "not every frame arrived");
    for g in &got {
        let seq = netns::test_frame_seq(g).unwrap() as usize;
        assert!(g == &sent[seq], "frame {seq} differs (VLAN tag lost?)");
    }
    let st = *d.stats(0).unwrap();
    assert!(st.rx_vlan_reinserted >= 20, "{st:?}");
    assert_eq!(st.rx_oversize, 0);
}

#[test]
fn own_and_host_transmissions_are_not_received() {
    let Some(lab) = Lab::new("io") else { return };
    let mut d = open(&lab);
    let a_mac = d.ports()[0].mac;
    // The host stack of ns A pings B through veth0: requests go out (must not be seen), replies
    // come in (must be seen).
    let out = lab.exec(
        &lab.ns_a,
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2"],
    );
    assert!(out.status.success(), "kernel ping failed");
    let got = collect(&mut d, 1000, Duration::from_millis(500), |_, _| true);
    assert!(
        got.iter().any(|f| f[..6] == a_mac),
        "no incoming frames seen"
    );
    assert!(
        got.iter().all(|f| f[6..12] != a_mac),
        "an outgoing frame was received"
    );
    // Our own transmission is not received either.
    let mut tx = vec![HeapBuffer::from_bytes(&netns::test_frame(
        [0xff; 6], a_mac, None, 7, 64,
    ))];
    assert_eq!(d.tx_burst(0, &mut tx).unwrap(), 1);
    let got = collect(&mut d, 1, Duration::from_millis(300), |f, _| {
        netns::test_frame_seq(f).is_some()
    });
    assert!(got.is_empty());
}

#[test]
fn transmits_and_answers_kernel_ping() {
    let Some(lab) = Lab::new("tx") else { return };
    let mut d = open(&lab);
    let a_mac = d.ports()[0].mac;
    let b_mac = lab.mac(&lab.ns_b, "veth1");

    // A burst of frames sent by the driver arrives at the kernel side intact.
    let peer = in_netns(&lab.ns_b, || PeerSocket::open("veth1"));
    let frames: Vec<Vec<u8>> = (0..40u32)
        .map(|i| netns::test_frame(b_mac, a_mac, None, i, 64 + i as usize))
        .collect();
    let mut bufs: Vec<HeapBuffer> = frames.iter().map(|f| HeapBuffer::from_bytes(f)).collect();
    assert_eq!(d.tx_burst(0, &mut bufs).unwrap(), frames.len());
    assert!(bufs.is_empty());
    let got = peer.recv_until(
        Duration::from_secs(3),
        |f| netns::test_frame_seq(f).is_some(),
        frames.len(),
    );
    assert_eq!(got.len(), frames.len(), "frames seen by the kernel side");
    assert!(got == frames, "frames seen differ from those sent");

    // The kernel in ns B pings an address only our driver answers (ARP and echo by hand).
    let mut ping = Command::new("ip")
        .args([
            "netns", "exec", &lab.ns_b, "ping", "-q", "-c", "3", "-i", "0.2", "-W", "2",
        ])
        .stdout(std::process::Stdio::null())
        .arg(netns::dotted(netns::RESPONDER_IP))
        .spawn()
        .expect("spawn ping");
    let mut status = None;
    let (rx, tx) = netns::serve(
        &mut d,
        0,
        a_mac,
        netns::RESPONDER_IP,
        Duration::from_secs(10),
        || {
            status = ping.try_wait().expect("wait ping");
            status.is_some()
        },
    );
    let status = match status {
        Some(s) => s,
        None => {
            let _ = ping.kill();
            ping.wait().expect("reap ping")
        }
    };
    assert!(
        status.success(),
        "ping through the driver failed (rx {rx}, tx {tx})"
    );
    assert!(
        tx >= 4,
        "expected an ARP reply and 3 echo replies, sent {tx}"
    );
    assert_eq!(d.stats(0).unwrap().tx_dropped, 0);
}

#[test]
fn partial_checksums_are_flagged_until_offload_is_off() {
    let Some(lab) = Lab::new("cs") else { return };
    if lab
        .exec(&lab.ns_b, &["ethtool", "--version"])
        .status
        .code()
        .is_none()
    {
        netns::skip_or_fail("ethtool not installed");
        return;
    }
    let mut d = open(&lab);
    let a_mac = d.ports()[0].mac;
    let mac = a_mac.map(|b| format!("{b:02x}")).join(":");
    let resp = netns::dotted(netns::RESPONDER_IP);
    let neigh = lab.exec(
        &lab.ns_b,
        &[
            "ip", "neigh", "replace", &resp, "lladdr", &mac, "dev", "veth1",
        ],
    );
    assert!(neigh.status.success());
    let is_tcp = |f: &[u8]| f.len() > 34 && f[12..14] == [0x08, 0x00] && f[23] == 6;
    let syn = format!("exec 3<>/dev/tcp/{resp}/9");

    // Offload on (veth's default): the kernel's SYN leaves its checksum to "hardware".
    let connect = |lab: &Lab| {
        lab.exec(&lab.ns_b, &["timeout", "0.5", "bash", "-c", &syn]);
    };
    connect(&lab);
    let mut flagged = 0;
    let got = collect(&mut d, 1, Duration::from_secs(2), |f, fl| {
        if is_tcp(f) && fl.csum_not_ready() {
            flagged += 1;
        }
        is_tcp(f)
    });
    assert!(!got.is_empty(), "no SYN seen");
    assert!(flagged > 0, "SYN not flagged as checksum-not-ready");
    assert!(d.stats(0).unwrap().rx_csum_not_ready > 0);

    // Offload off on the kernel side: checksums are complete.
    let off = lab.exec(&lab.ns_b, &["ethtool", "-K", "veth1", "tx", "off"]);
    assert!(off.status.success(), "ethtool -K veth1 tx off failed");
    // Drain what is left of the first connection's retransmits.
    collect(&mut d, usize::MAX, Duration::from_millis(300), |_, _| false);
    connect(&lab);
    let mut flagged = 0;
    let got = collect(&mut d, 1, Duration::from_secs(2), |f, fl| {
        if is_tcp(f) && fl.csum_not_ready() {
            flagged += 1;
        }
        is_tcp(f)
    });
    assert!(!got.is_empty(), "no SYN seen after ethtool");
    assert_eq!(flagged, 0, "checksum still partial with tx offload off");
}
