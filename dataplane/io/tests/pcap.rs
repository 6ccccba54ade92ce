//! pcap driver: frames written by one driver read back by another; damaged files give errors.

use std::path::PathBuf;

use switchyard_dataplane::{HeapBuffer, PacketBuffer};
use switchyard_io::pcap::{PcapDriver, PcapPortConfig};
use switchyard_io::{Driver, IoError, PortInfo};

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sy-pcap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn info(name: &str) -> PortInfo {
    PortInfo {
        name: name.into(),
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
    }
}

fn port(name: &str, rx: Option<PathBuf>, tx: Option<PathBuf>) -> PcapPortConfig {
    PcapPortConfig {
        info: info(name),
        rx,
        tx,
    }
}

fn frames() -> Vec<Vec<u8>> {
    (0..50u32)
        .map(|i| {
            (0..(14 + i as usize * 29))
                .map(|b| (b as u32 ^ i) as u8)
                .collect()
        })
        .collect()
}

fn write(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut d = PcapDriver::new(vec![port("w", None, Some(path.to_path_buf()))]).unwrap();
    // Two bursts, to check the file is appended to, not rewritten.
    let (a, b) = frames.split_at(frames.len() / 2);
    for part in [a, b] {
        let mut bufs: Vec<HeapBuffer> = part.iter().map(|f| HeapBuffer::from_bytes(f)).collect();
        assert_eq!(d.tx_burst(0, &mut bufs).unwrap(), part.len());
        assert!(bufs.is_empty());
    }
    d.flush().unwrap();
    assert_eq!(d.counts(0), Some((0, frames.len() as u64)));
}

fn read_all(d: &mut PcapDriver) -> Result<Vec<Vec<u8>>, IoError> {
    let mut got = Vec::new();
    let mut bufs = Vec::new();
    // Bounded: every call either delivers frames or ends the port.
    for _ in 0..1000 {
        if d.rx_done(0) {
            break;
        }
        d.rx_burst(0, &mut bufs, 7)?;
        got.extend(bufs.iter().map(|b| b.data().to_vec()));
        d.recycle(&mut bufs);
    }
    Ok(got)
}

#[test]
fn written_frames_read_back() {
    let dir = TempDir::new("rt");
    let file = dir.path("a.pcap");
    let sent = frames();
    write(&file, &sent);
    let mut d = PcapDriver::new(vec![port("r", Some(file), None)]).unwrap();
    assert_eq!(d.ports()[0].name, "r");
    assert_eq!(read_all(&mut d).unwrap(), sent);
    // Empty once replayed.
    let mut bufs = Vec::new();
    assert_eq!(d.rx_burst(0, &mut bufs, 8).unwrap(), 0);
    assert!(d.rx_burst(3, &mut bufs, 8).is_err());
}

#[test]
fn truncated_file_gives_frames_then_pcap_error() {
    let dir = TempDir::new("tr");
    let file = dir.path("a.pcap");
    let sent = frames();
    write(&file, &sent);
    let bytes = std::fs::read(&file).unwrap();
    // Every cut point: never a panic; a cut inside the global header fails at open, any other
    // cut inside a record gives the frames before it and then an error.
    for cut in (0..bytes.len()).step_by(37) {
        let f = dir.path("cut.pcap");
        std::fs::write(&f, &bytes[..cut]).unwrap();
        match PcapDriver::new(vec![port("r", Some(f), None)]) {
            Err(IoError::Pcap(_)) => assert!(cut < 24, "open failed at {cut}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(mut d) => {
                let mut got = Vec::new();
                let mut bufs = Vec::new();
                let mut err = None;
                for _ in 0..1000 {
                    if d.rx_done(0) {
                        break;
                    }
                    match d.rx_burst(0, &mut bufs, 7) {
                        Ok(_) => got.extend(bufs.drain(..).map(|b| b.data().to_vec())),
                        Err(e) => err = Some(e),
                    }
                }
                assert_eq!(got, sent[..got.len()], "frames before the cut at {cut}");
                let at_record_boundary = got.len() == sent.len()
                    || cut
                        == 24
                            + sent[..got.len()]
                                .iter()
                                .map(|f| 16 + f.len())
                                .sum::<usize>();
                if !at_record_boundary {
                    assert!(
                        matches!(err, Some(IoError::Pcap(_))),
                        "cut at {cut}: {err:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn corrupt_files_are_errors() {
    let dir = TempDir::new("bad");
    let f = dir.path("bad.pcap");
    // Not a pcap at all.
    std::fs::write(&f, b"this is not a pcap file, not even close").unwrap();
    assert!(matches!(
        PcapDriver::new(vec![port("r", Some(f.clone()), None)]),
        Err(IoError::Pcap(_))
    ));
    // A valid header with a non-Ethernet link type (101, raw IP).
    let mut hdr = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    hdr.extend_from_slice(&65535u32.to_le_bytes());
    hdr.extend_from_slice(&101u32.to_le_bytes());
    std::fs::write(&f, &hdr).unwrap();
    assert!(matches!(
        PcapDriver::new(vec![port("r", Some(f.clone()), None)]),
        Err(IoError::Pcap(_))
    ));
    // Ethernet, then a record claiming 4 GiB.
    let mut eth = hdr.clone();
    eth[20..24].copy_from_slice(&1u32.to_le_bytes());
    let mut rec = eth.clone();
    rec.extend_from_slice(&[0; 8]);
    rec.extend_from_slice(&u32::MAX.to_le_bytes());
    rec.extend_from_slice(&u32::MAX.to_le_bytes());
    rec.extend_from_slice(&[0xab; 64]);
    std::fs::write(&f, &rec).unwrap();
    let mut d = PcapDriver::new(vec![port("r", Some(f.clone()), None)]).unwrap();
    let mut bufs = Vec::new();
    assert!(matches!(d.rx_burst(0, &mut bufs, 8), Err(IoError::Pcap(_))));
    assert!(d.rx_done(0));
    // A record with a bad timestamp fraction, then a good one: raw reading accepts both
    // (timestamps are not used).
    let mut ts = eth.clone();
    for (frac, len) in [(2_000_000_000u32, 20u32), (5, 30)] {
        ts.extend_from_slice(&1u32.to_le_bytes());
        ts.extend_from_slice(&frac.to_le_bytes());
        ts.extend_from_slice(&len.to_le_bytes());
        ts.extend_from_slice(&(len + 100).to_le_bytes());
        ts.extend(std::iter::repeat_n(7u8, len as usize));
    }
    std::fs::write(&f, &ts).unwrap();
    let mut d = PcapDriver::new(vec![port("r", Some(f), None)]).unwrap();
    let got = read_all(&mut d).unwrap();
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![20, 30]);
}

#[test]
fn unwritable_output_is_a_pcap_error() {
    assert!(matches!(
        PcapDriver::new(vec![port(
            "w",
            None,
            Some("/nonexistent/dir/x.pcap".into())
        )]),
        Err(IoError::Pcap(_))
    ));
}
