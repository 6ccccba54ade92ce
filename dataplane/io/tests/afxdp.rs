//! AF_XDP driver (generic mode) against a kernel peer over a veth pair in namespaces of the
//! test's own.
#![cfg(feature = "afxdp")]

mod netns;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns::{in_netns, Lab, PeerSocket};
use switchyard_dataplane::{HeapBuffer, PacketBuffer};
use switchyard_io::afxdp::AfXdpDriver;
use switchyard_io::{Driver, IoError};

/// Opens the driver on veth0 in ns A, or returns None (after skip_or_fail) when AF_XDP is not
/// available here.
fn open(lab: &Lab) -> Option<AfXdpDriver> {
    match in_netns(&lab.ns_a, || AfXdpDriver::new(&["veth0".to_string()], 0)) {
        Ok(d) => Some(d),
        Err(e) => {
            netns::skip_or_fail(&format!("AF_XDP not available: {e}"));
            None
        }
    }
}

fn collect(d: &mut AfXdpDriver, want: usize, limit: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut bufs = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        d.wait(Duration::from_millis(10));
        d.rx_burst(0, &mut bufs, 64).expect("rx_burst");
        got.extend(
            bufs.iter()
                .map(|b| b.data().to_vec())
                .filter(|f| netns::test_frame_seq(f).is_some()),
        );
        d.recycle(&mut bufs);
    }
    got
}

#[test]
fn receives_transmits_and_reopens() {
    let Some(lab) = Lab::new("xr") else { return };
    let Some(mut d) = open(&lab) else { return };
    let a_mac = d.ports()[0].mac;
    let b_mac = lab.mac(&lab.ns_b, "veth1");
    assert_eq!(a_mac, lab.mac(&lab.ns_a, "veth0"));
    assert_eq!(d.ports()[0].mtu, 1500);
    let peer = in_netns(&lab.ns_b, || PeerSocket::open("veth1"));

    // Kernel side → driver, tagged frames included (AF_XDP sees the wire bytes).
    let sent: Vec<Vec<u8>> = (0..60u32)
        .map(|i| {
            let vlan = (i % 4 == 0).then_some(7);
            netns::test_frame(a_mac, b_mac, vlan, i, 60 + i as usize * 20)
        })
        .collect();
    for f in &sent {
        peer.send(f);
    }
    let mut got = collect(&mut d, sent.len(), Duration::from_secs(5));
    got.sort_by_key(|f| netns::test_frame_seq(f));
    assert_eq!(got.len(), sent.len(), "frames received");
    assert!(got == sent, "received frames differ from those sent");
    assert!(d.stats(0).unwrap().rx_packets >= sent.len() as u64);

    // Driver → kernel side.
    let frames: Vec<Vec<u8>> = (0..40u32)
        .map(|i| netns::test_frame(b_mac, a_mac, None, 1000 + i, 64 + i as usize))
        .collect();
    let mut bufs: Vec<HeapBuffer> = frames.iter().map(|f| HeapBuffer::from_bytes(f)).collect();
    assert_eq!(d.tx_burst(0, &mut bufs).unwrap(), frames.len());
    let seen = peer.recv_until(
        Duration::from_secs(3),
        |f| netns::test_frame_seq(f).is_some_and(|s| s >= 1000),
        frames.len(),
    );
    assert_eq!(seen.len(), frames.len(), "frames seen by the kernel side");
    assert!(seen == frames, "frames seen differ from those sent");

    // Close and reopen at once: the bind may be refused with EBUSY for a moment (retried).
    drop(d);
    let d = open(&lab).expect("reopen after close");
    drop(d);
    // Closing detaches the XDP program libxdp attached.
    let link = lab.exec(&lab.ns_a, &["ip", "link", "show", "veth0"]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "XDP program left on veth0"
    );
}

#[test]
fn answers_kernel_ping() {
    let Some(lab) = Lab::new("xp") else { return };
    let Some(mut d) = open(&lab) else { return };
    let a_mac = d.ports()[0].mac;
    let mut ping = Command::new("ip")
        .args([
            "netns", "exec", &lab.ns_b, "ping", "-q", "-c", "3", "-i", "0.2", "-W", "2",
        ])
        .arg(netns::dotted(netns::RESPONDER_IP))
        .stdout(Stdio::null())
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
    assert!(tx >= 4);
}

#[test]
fn unknown_interface_is_named() {
    let Some(lab) = Lab::new("xu") else { return };
    match in_netns(&lab.ns_a, || AfXdpDriver::new(&["nosuch0".to_string()], 0)) {
        Err(IoError::NoSuchInterface(n)) => assert_eq!(n, "nosuch0"),
        other => panic!("expected NoSuchInterface, got {other:?}"),
    }
}
