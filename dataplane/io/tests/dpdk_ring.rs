//! DPDK driver against the `net_ring` and `net_null` vdevs, in one process (the EAL can be
//! initialised only once per process, so this file has a single test running its cases in
//! turn).
//!
//! `net_ring0` created from `--vdev` with no arguments uses the same rings for RX and TX:
//! whatever is transmitted on it comes back on its receive side. `net_null0` receives an
//! endless supply of 64-byte packets and discards what it transmits.
//!
//! Without the DPDK plugins this test prints a SKIP line, unless `CI` is set: then it fails.

#![cfg(feature = "dpdk")]

use switchyard_dataplane::PacketBuffer;
use switchyard_io::dpdk::{DpdkConfig, DpdkDriver, Eal, Mbuf};
use switchyard_io::{Driver, IoError};

fn missing_capability(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("DPDK capability missing (CI is set, so this fails): {what}");
    }
    eprintln!("SKIP dpdk_ring: {what}");
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// An Ethernet frame of `len` bytes whose contents identify `seq`.
fn frame(seq: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = seq.wrapping_mul(31).wrapping_add(i as u8);
    }
    f
}

/// Receives from `port` until `want` packets arrived or a bounded number of polls passed.
fn rx_n(d: &mut DpdkDriver, port: u16, want: usize) -> Vec<Mbuf> {
    let mut got = Vec::new();
    for _ in 0..10_000 {
        if got.len() >= want {
            break;
        }
        let missing = want - got.len();
        d.rx_burst(port, &mut got, missing).unwrap();
    }
    got
}

#[test]
fn dpdk_ring_and_null_ports() {
    let prefix = format!("sy_test_ring_{}", std::process::id());
    let args = s(&[
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "512",
        "-l",
        "0",
        "--log-level",
        "lib.eal:error",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_ring0",
        "--vdev",
        "net_null0",
    ]);
    let eal = match Eal::init(&args) {
        Ok(eal) => eal,
        Err(e) => return missing_capability(&format!("EAL init: {e}")),
    };
    if eal.port_count() < 2 {
        return missing_capability(&format!(
            "net_ring/net_null vdevs not probed (plugins in {}?)",
            Eal::plugin_dir()
        ));
    }

    second_init_is_an_error();
    bad_port_names(&eal);

    let cfg = DpdkConfig::default();
    let mut d = DpdkDriver::new(&eal, &s(&["net_ring0", "net_null0"]), &cfg).unwrap();
    // --no-huge --no-pci: the pool is in the driver's own memory, advised as transparent huge
    // pages (where the kernel has them), and everything below runs on it.
    assert!(
        d.pool_on_huge_pages()
            || !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists(),
        "the mbuf pool should be on transparent huge pages"
    );
    let baseline = d.pool_available();
    port_info(&d);
    loopback_bytes_are_equal(&mut d);
    mbuf_push_pull(&mut d);
    encapsulated_round_trip(&mut d);
    null_to_ring_forwarding(&mut d);
    bulk_allocation(&mut d);
    full_ring_frees_unsent(&mut d);
    stats_count_packets(&mut d);
    assert_eq!(
        d.pool_available(),
        baseline,
        "every mbuf went back to the pool"
    );

    // Stopping the ports (drop) lets a new driver configure them again; asked to, it takes
    // the EAL's memory for its pool.
    drop(d);
    let eal_memory = DpdkConfig {
        transparent_huge_pages: false,
        ..cfg
    };
    let d = DpdkDriver::new(&eal, &s(&["net_ring0"]), &eal_memory).unwrap();
    assert_eq!(d.ports().len(), 1);
    assert!(!d.pool_on_huge_pages());
}

fn second_init_is_an_error() {
    let err = Eal::init(&s(&["--no-huge"])).unwrap_err();
    assert!(
        matches!(&err, IoError::Dpdk(m) if m.contains("already")),
        "{err}"
    );
}

fn bad_port_names(eal: &Eal) {
    let cfg = DpdkConfig::default();
    match DpdkDriver::new(eal, &s(&["net_ring0", "net_nosuchdev7"]), &cfg) {
        Err(IoError::NoSuchInterface(n)) => assert_eq!(n, "net_nosuchdev7"),
        other => panic!("expected NoSuchInterface, got {other:?}"),
    }
    assert!(matches!(
        DpdkDriver::new(eal, &s(&["bad\0name"]), &cfg),
        Err(IoError::NoSuchInterface(_))
    ));
    assert!(matches!(
        DpdkDriver::new(eal, &[], &cfg),
        Err(IoError::BadArguments(_))
    ));
    assert!(matches!(
        DpdkDriver::new(eal, &s(&["net_ring0", "net_ring0"]), &cfg),
        Err(IoError::BadArguments(_))
    ));
}

fn port_info(d: &DpdkDriver) {
    let ports = d.ports();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0].name, "net_ring0");
    assert_eq!(ports[1].name, "net_null0");
    // net_null makes up a random address; net_ring reports all zeroes, as DPDK defines it.
    assert_ne!(ports[1].mac, [0; 6]);
    for p in ports {
        assert!(p.mtu >= 1500, "{} MTU {}", p.name, p.mtu);
    }
    assert!(matches!(d.stats(2), Err(IoError::NoSuchInterface(_))));
}

fn loopback_bytes_are_equal(d: &mut DpdkDriver) {
    let sizes = [60usize, 64, 100, 128, 256, 512, 1000, 1514];
    let frames: Vec<Vec<u8>> = (0..32u8)
        .map(|i| frame(i, sizes[usize::from(i) % sizes.len()]))
        .collect();
    let mut tx: Vec<Mbuf> = frames.iter().map(|f| d.mbuf_from(f).unwrap()).collect();
    assert_eq!(tx[0].headroom(), 128);
    assert_eq!(d.tx_burst(0, &mut tx).unwrap(), frames.len());
    assert!(tx.is_empty());
    let rx = rx_n(d, 0, frames.len());
    assert_eq!(rx.len(), frames.len());
    for (m, f) in rx.iter().zip(&frames) {
        assert_eq!(m.data(), &f[..]);
        assert_eq!(m.segments(), 1);
    }
    // Nothing more is waiting.
    let mut more = Vec::new();
    assert_eq!(d.rx_burst(0, &mut more, 32).unwrap(), 0);
    let mut rx = rx;
    d.recycle(&mut rx);
    assert!(rx.is_empty());
}

fn mbuf_push_pull(d: &mut DpdkDriver) {
    let f = frame(7, 200);
    let mut m = d.mbuf_from(&f).unwrap();
    let head = m.headroom();
    let tail = m.tailroom();
    assert_eq!(m.len(), 200);

    assert!(m.pull_front(14));
    assert_eq!(m.data(), &f[14..]);
    assert_eq!(m.headroom(), head + 14);
    assert!(m.push_front(14));
    assert_eq!(m.data(), &f[..]);
    assert!(!m.pull_front(201), "cannot pull more than the packet");
    assert_eq!(m.data(), &f[..]);
    assert!(
        !m.push_front(head + 1),
        "cannot push more than the headroom"
    );
    assert_eq!(m.headroom(), head);
    assert!(!m.push_front(1 << 20));

    assert!(m.push_front(head));
    assert_eq!(m.headroom(), 0);
    assert_eq!(&m.data()[head..], &f[..]);
    assert!(m.pull_front(head));

    // push_header: the header goes in front, lengths and headroom follow, or nothing changes.
    assert!(m.pull_front(14));
    assert!(m.push_header(&[0xaa; 14]));
    assert_eq!(m.len(), 200);
    assert_eq!(m.headroom(), head);
    assert_eq!(&m.data()[..14], &[0xaa; 14]);
    assert_eq!(&m.data()[14..], &f[14..]);
    assert!(m.pull_front(14));
    let room = m.headroom();
    assert!(
        !m.push_header(&[0xbb; 4096]),
        "cannot push more than the headroom"
    );
    assert_eq!(m.headroom(), room);
    assert!(m.push_front(room - 2));
    assert!(!m.push_header(&[0xcc; 3]));
    assert!(m.push_header(&[0xcc; 2]));
    assert_eq!(m.headroom(), 0);
    assert_eq!(&m.data()[..2], &[0xcc; 2]);
    assert!(m.pull_front(room));
    assert!(m.push_front(14));
    m.data_mut()[..14].copy_from_slice(&f[..14]);
    assert_eq!(m.data(), &f[..]);
    assert_eq!(m.headroom(), head);

    assert!(m.push_back(tail));
    assert_eq!(m.tailroom(), 0);
    assert!(!m.push_back(1));
    m.truncate(200);
    assert_eq!(m.data(), &f[..]);
    m.truncate(500);
    assert_eq!(m.len(), 200);
    m.truncate(10);
    assert_eq!(m.data(), &f[..10]);
    m.truncate(0);
    assert!(m.is_empty());
    assert!(m.pull_front(0));

    let sib = m.alloc_sibling().unwrap();
    assert!(sib.is_empty());
    assert_eq!(sib.headroom(), head);
    assert_eq!(sib.tailroom(), tail + 200);
}

fn encapsulated_round_trip(d: &mut DpdkDriver) {
    let inner = frame(9, 300);
    let mut m = d.mbuf_from(&inner).unwrap();
    // Add an outer header in front, as an encapsulating node would.
    assert!(m.push_front(18));
    m.data_mut()[..18].copy_from_slice(b"outer-header-18byt");
    let mut tx = vec![m];
    assert_eq!(d.tx_burst(0, &mut tx).unwrap(), 1);
    let mut rx = rx_n(d, 0, 1);
    assert_eq!(rx.len(), 1);
    assert_eq!(&rx[0].data()[..18], b"outer-header-18byt");
    assert_eq!(&rx[0].data()[18..], &inner[..]);
    // Decapsulate on the way in.
    assert!(rx[0].pull_front(18));
    assert_eq!(rx[0].data(), &inner[..]);
    rx.clear();
}

fn null_to_ring_forwarding(d: &mut DpdkDriver) {
    let mut from_null = Vec::new();
    for _ in 0..100 {
        if d.rx_burst(1, &mut from_null, 32).unwrap() > 0 {
            break;
        }
    }
    assert!(!from_null.is_empty(), "net_null0 produces packets");
    let n = from_null.len();
    for m in &mut from_null {
        assert!(!m.is_empty());
        m.data_mut()[0] = 0x02;
    }
    let lens: Vec<usize> = from_null.iter().map(|m| m.len()).collect();
    assert_eq!(d.tx_burst(0, &mut from_null).unwrap(), n);
    let mut back = rx_n(d, 0, n);
    assert_eq!(back.iter().map(|m| m.len()).collect::<Vec<_>>(), lens);
    assert!(back.iter().all(|m| m.data()[0] == 0x02));
    // net_null takes everything it is given.
    assert_eq!(d.tx_burst(1, &mut back).unwrap(), n);
}

fn bulk_allocation(d: &mut DpdkDriver) {
    let free = d.pool_available() as usize;
    let mut v = Vec::new();
    assert!(d.alloc_bulk(&mut v, 64));
    assert_eq!(v.len(), 64);
    assert!(v.iter().all(|m| m.is_empty() && m.headroom() == 128));
    assert!(
        !d.alloc_bulk(&mut v, free),
        "more than is left: all or none"
    );
    assert_eq!(v.len(), 64);
    d.recycle(&mut v);
    assert_eq!(d.pool_available() as usize, free);
}

fn full_ring_frees_unsent(d: &mut DpdkDriver) {
    let before = d.stats(0).unwrap().tx_unsent;
    let mut tx: Vec<Mbuf> = (0..2000u32)
        .map(|i| d.mbuf_from(&frame(i as u8, 64)).unwrap())
        .collect();
    let sent = d.tx_burst(0, &mut tx).unwrap();
    assert!(tx.is_empty());
    assert!(
        sent > 0 && sent < 2000,
        "a 1024-slot ring takes part: {sent}"
    );
    assert_eq!(d.stats(0).unwrap().tx_unsent - before, (2000 - sent) as u64);
    let mut rx = rx_n(d, 0, sent);
    assert_eq!(rx.len(), sent);
    d.recycle(&mut rx);
}

fn stats_count_packets(d: &mut DpdkDriver) {
    let s = d.stats(0).unwrap();
    assert!(s.tx_packets > 0 && s.rx_packets == s.tx_packets, "{s:?}");
    assert_eq!(s.rx_multiseg_dropped, 0);
    d.reset_stats(0).unwrap();
    let s = d.stats(0).unwrap();
    assert_eq!((s.rx_packets, s.tx_packets, s.tx_unsent), (0, 0, 0));
}
