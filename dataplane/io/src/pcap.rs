//! The pcap driver: each port receives the frames of one pcap file (replayed as fast as the
//! worker asks, timestamps ignored) and writes what it transmits to another, both with Ethernet
//! link type. Used to replay captures through the graph and to keep what it sent for `tshark`.
//!
//! Input comes from outside the process, so nothing here panics on it: a truncated or corrupt
//! file gives [`IoError::Pcap`] from `rx_burst` (the frames before the damage are delivered first)
//! and the port then stays empty.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::{DataLink, Endianness};
use switchyard_dataplane::{BufferPool, HeapBuffer, PacketBuffer};

use crate::{Driver, IoError, PortId, PortInfo};

/// Largest frame accepted from a file: anything longer cannot be a frame we forward.
const MAX_FRAME: usize = 65535;

/// One pcap port: its identity and its files.
#[derive(Clone, Debug)]
pub struct PcapPortConfig {
    /// The port's identity as the graph sees it.
    pub info: PortInfo,
    /// The file whose frames the port receives (none: it receives nothing).
    pub rx: Option<PathBuf>,
    /// The file the port writes transmitted frames to, created or truncated (none: they are
    /// counted and dropped).
    pub tx: Option<PathBuf>,
}

struct RxFile {
    path: PathBuf,
    reader: PcapReader<BufReader<File>>,
}

/// The output file, shared between the pcap writer and [`PcapDriver::flush`] (the writer of
/// pcap-file 2 gives no access to what it wraps). Never contended: one worker owns the driver.
#[derive(Clone)]
struct Sink(Arc<Mutex<BufWriter<File>>>);

impl Sink {
    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, BufWriter<File>>> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("pcap output poisoned"))
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.lock()?.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock()?.flush()
    }
}

struct TxFile {
    path: PathBuf,
    writer: PcapWriter<Sink>,
    sink: Sink,
}

struct PcapPort {
    rx: Option<RxFile>,
    tx: Option<TxFile>,
    /// Damage found in the input after some frames of a burst, reported by the next call.
    rx_error: Option<IoError>,
    rx_packets: u64,
    tx_packets: u64,
}

/// A driver whose ports read and write pcap files.
pub struct PcapDriver {
    info: Vec<PortInfo>,
    ports: Vec<PcapPort>,
    pool: BufferPool,
}

impl std::fmt::Debug for PcapDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapDriver")
            .field("ports", &self.info)
            .finish()
    }
}

fn pcap_err(path: &Path, what: impl std::fmt::Display) -> IoError {
    IoError::Pcap(format!("{}: {what}", path.display()))
}

fn open_rx(path: &Path) -> Result<RxFile, IoError> {
    let file = File::open(path).map_err(|e| pcap_err(path, e))?;
    let reader = PcapReader::new(BufReader::new(file)).map_err(|e| pcap_err(path, e))?;
    let datalink = reader.header().datalink;
    if datalink != DataLink::ETHERNET {
        return Err(pcap_err(
            path,
            format!("link type {datalink:?}, not Ethernet"),
        ));
    }
    Ok(RxFile {
        path: path.to_path_buf(),
        reader,
    })
}

fn open_tx(path: &Path) -> Result<TxFile, IoError> {
    let file = File::create(path).map_err(|e| pcap_err(path, e))?;
    let sink = Sink(Arc::new(Mutex::new(BufWriter::new(file))));
    let header = PcapHeader {
        snaplen: MAX_FRAME as u32,
        datalink: DataLink::ETHERNET,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    };
    let writer = PcapWriter::with_header(sink.clone(), header).map_err(|e| pcap_err(path, e))?;
    Ok(TxFile {
        path: path.to_path_buf(),
        writer,
        sink,
    })
}

impl PcapDriver {
    /// Opens the ports' files: input files are checked for a valid Ethernet pcap header, output
    /// files are created (or truncated) with one.
    pub fn new(ports: Vec<PcapPortConfig>) -> Result<Self, IoError> {
        if ports.len() > usize::from(PortId::MAX) {
            return Err(IoError::BadArguments("too many ports".into()));
        }
        let mut info = Vec::with_capacity(ports.len());
        let mut opened = Vec::with_capacity(ports.len());
        for p in ports {
            let rx = p.rx.as_deref().map(open_rx).transpose()?;
            let tx = p.tx.as_deref().map(open_tx).transpose()?;
            opened.push(PcapPort {
                rx,
                tx,
                rx_error: None,
                rx_packets: 0,
                tx_packets: 0,
            });
            info.push(p.info);
        }
        Ok(PcapDriver {
            info,
            ports: opened,
            pool: BufferPool::new(256, switchyard_dataplane::buffer::DEFAULT_BUFFER_SIZE),
        })
    }

    /// True when `port` has delivered every frame of its input (or has none, or hit damage).
    pub fn rx_done(&self, port: PortId) -> bool {
        self.ports
            .get(usize::from(port))
            .is_none_or(|p| p.rx.is_none() && p.rx_error.is_none())
    }

    /// Frames received and transmitted on `port` so far.
    pub fn counts(&self, port: PortId) -> Option<(u64, u64)> {
        self.ports
            .get(usize::from(port))
            .map(|p| (p.rx_packets, p.tx_packets))
    }

    /// Writes buffered output to the files. Dropping the driver flushes too, but cannot report
    /// an error.
    pub fn flush(&mut self) -> Result<(), IoError> {
        for p in &mut self.ports {
            if let Some(tx) = &mut p.tx {
                tx.sink.flush().map_err(|e| pcap_err(&tx.path, e))?;
            }
        }
        Ok(())
    }

    fn port_mut(&mut self, port: PortId) -> Result<&mut PcapPort, IoError> {
        crate::port_entry(&mut self.ports, port)
    }
}

impl Driver for PcapDriver {
    type Buffer = HeapBuffer;

    fn ports(&self) -> &[PortInfo] {
        &self.info
    }

    fn alloc(&mut self) -> Option<HeapBuffer> {
        Some(self.pool.get())
    }

    fn rx_burst(
        &mut self,
        port: PortId,
        out: &mut Vec<HeapBuffer>,
        max: usize,
    ) -> Result<usize, IoError> {
        let p = crate::port_entry(&mut self.ports, port)?;
        if let Some(e) = p.rx_error.take() {
            return Err(e);
        }
        let mut n = 0;
        while n < max {
            let Some(rx) = p.rx.as_mut() else { break };
            // Raw packets: the reader's own checks reject captures made with a small snap
            // length (orig_len > snaplen), which are valid; the length checks below suffice.
            let failure = match rx.reader.next_raw_packet() {
                None => {
                    p.rx = None;
                    break;
                }
                Some(Ok(pkt)) if pkt.data.len() <= MAX_FRAME => {
                    let mut buf = self.pool.get();
                    if buf.receive_area().len() < pkt.data.len() {
                        buf = HeapBuffer::from_bytes(&pkt.data);
                    } else {
                        buf.fill(&pkt.data);
                    }
                    out.push(buf);
                    p.rx_packets += 1;
                    n += 1;
                    continue;
                }
                Some(Ok(pkt)) => pcap_err(
                    &rx.path,
                    format!(
                        "frame {} is {} bytes long",
                        p.rx_packets + 1,
                        pkt.data.len()
                    ),
                ),
                Some(Err(e)) => pcap_err(&rx.path, format!("after frame {}: {e}", p.rx_packets)),
            };
            p.rx = None;
            if n == 0 {
                return Err(failure);
            }
            // Deliver what was read now and the damage on the next call, so frames before it
            // are never lost. The port is empty after that.
            p.rx_error = Some(failure);
            break;
        }
        Ok(n)
    }

    fn tx_burst(&mut self, port: PortId, pkts: &mut Vec<HeapBuffer>) -> Result<usize, IoError> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let p = match self.port_mut(port) {
            Ok(p) => p,
            Err(e) => {
                self.recycle(pkts);
                return Err(e);
            }
        };
        let mut result = Ok(0);
        let mut sent = 0;
        for buf in pkts.iter() {
            let data = buf.data();
            match &mut p.tx {
                Some(tx) => {
                    let pkt = PcapPacket::new(ts, data.len() as u32, data);
                    if let Err(e) = tx.writer.write_packet(&pkt) {
                        result = Err(pcap_err(&tx.path, e));
                        break;
                    }
                    sent += 1;
                }
                None => sent += 1,
            }
        }
        p.tx_packets += sent as u64;
        self.recycle(pkts);
        result.map(|_: usize| sent)
    }

    fn recycle(&mut self, bufs: &mut Vec<HeapBuffer>) {
        for buf in bufs.drain(..) {
            self.pool.put(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_input_is_a_pcap_error() {
        let r = PcapDriver::new(vec![PcapPortConfig {
            info: PortInfo {
                name: "p0".into(),
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
            },
            rx: Some("/nonexistent/sy.pcap".into()),
            tx: None,
        }]);
        assert!(matches!(r, Err(IoError::Pcap(_))));
    }
}
