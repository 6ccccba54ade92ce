//! Sockets: the listener, active connects (source address, TTL, MD5),
//! and the reader/writer tasks of one established TCP connection.

use super::{PeerConfig, SpeakerError};
use crate::collision::ConnectionOrigin;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchyard_io::tcp_md5::set_tcp_md5sig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long one connect attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of one read; the core gets at most this many bytes at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Longest a single write may block on a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What socket tasks tell the core.
#[derive(Debug)]
pub(super) enum Input {
    Accepted(TcpStream, SocketAddr),
    /// Attempts are numbered across the whole speaker, so the result of
    /// an attempt for a peer since removed (or removed and added again)
    /// never matches.
    Connected {
        peer: IpAddr,
        attempt: u64,
        stream: TcpStream,
    },
    ConnectFailed {
        peer: IpAddr,
        attempt: u64,
        error: String,
    },
    Bytes {
        conn: u64,
        data: Vec<u8>,
    },
    Closed {
        conn: u64,
    },
}

/// The TTL for a peer: 1 for directly connected eBGP unless multihop,
/// the system default for iBGP unless multihop is set.
pub(super) fn ttl_for(p: &PeerConfig, local_as: u32) -> Option<u32> {
    match p.multihop_ttl {
        Some(t) => Some(t.into()),
        None if p.remote_as != local_as => Some(1),
        None => None,
    }
}

fn set_ttl(sock: socket2::SockRef<'_>, addr: IpAddr, ttl: Option<u32>) -> io::Result<()> {
    let Some(ttl) = ttl else { return Ok(()) };
    match addr {
        IpAddr::V4(_) => sock.set_ttl_v4(ttl),
        IpAddr::V6(_) => sock.set_unicast_hops_v6(ttl),
    }
}

/// Binds the listener and installs the MD5 key of every peer with a
/// password (the key must be there before the peer's SYN arrives).
pub(super) fn listen(addr: SocketAddr, peers: &[PeerConfig]) -> Result<TcpListener, SpeakerError> {
    let l = |source| SpeakerError::Listen { addr, source };
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(l)?;
    sock.set_reuseaddr(true).map_err(l)?;
    sock.bind(addr).map_err(l)?;
    for p in peers {
        set_listener_key(&sock, addr, p, true).map_err(|source| SpeakerError::Md5 {
            peer: p.address,
            source,
        })?;
    }
    sock.listen(128).map_err(l)
}

/// Installs (`install`) or removes the listener's MD5 key for peer `p`,
/// if it has a password. Peers come and go while the listener runs, and
/// the kernel drops unsigned SYNs from a peer with a key, so the key
/// must follow the peer set.
pub(super) fn set_listener_key(
    listener: &impl std::os::fd::AsFd,
    listen: SocketAddr,
    p: &PeerConfig,
    install: bool,
) -> io::Result<()> {
    let Some(key) = &p.md5_password else {
        return Ok(());
    };
    // A v4 listener cannot carry a v6 peer's key and vice versa.
    if p.address.is_ipv4() != listen.is_ipv4() {
        return Ok(());
    }
    // An empty key removes the entry.
    let key = if install { key.as_bytes() } else { &[] };
    set_tcp_md5sig(listener, SocketAddr::new(p.address, 0), key)
}

/// Accepts forever; the core decides what each connection is.
pub(super) async fn accept_loop(listener: std::sync::Arc<TcpListener>, tx: mpsc::Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((s, a)) => {
                if tx.send(Input::Accepted(s, a)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "bgp: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How long a refused connection is kept to read what the connector
/// sends, so that closing it is a FIN after our NOTIFICATION rather than
/// a reset that could destroy the NOTIFICATION unread.
const REJECT_LINGER: Duration = Duration::from_secs(2);
/// Refused connections lingering at once; more are closed at once (a
/// flood of connections must not pile up tasks).
const REJECT_LINGER_MAX: usize = 32;

/// Refuses an accepted connection (RFC 4486 §4, SHOULD): Cease /
/// Connection Rejected, then FIN. Never waits on the connector: the
/// write, and draining what the connector sent (its OPEN, typically:
/// unread bytes would turn our close into a reset that can destroy the
/// NOTIFICATION unread), run in a task of their own for at most
/// [`REJECT_LINGER`]. `lingering` counts those tasks; past
/// [`REJECT_LINGER_MAX`] a refused connection gets one non-blocking
/// write attempt and is closed.
pub(super) fn reject(stream: TcpStream, lingering: &std::sync::Arc<AtomicUsize>) {
    use crate::notification::{cease, Notification};
    let n = Notification::cease(cease::CONNECTION_REJECTED).encode();
    if lingering.fetch_add(1, Ordering::Relaxed) >= REJECT_LINGER_MAX {
        lingering.fetch_sub(1, Ordering::Relaxed);
        let _ = stream.try_write(&n);
        return;
    }
    let lingering = std::sync::Arc::clone(lingering);
    tokio::spawn(async move {
        let (mut rd, mut wr) = stream.into_split();
        let refuse = async {
            if wr.write_all(&n).await.is_ok() && wr.shutdown().await.is_ok() {
                let mut buf = [0u8; 4096];
                while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        };
        let _ = tokio::time::timeout(REJECT_LINGER, refuse).await;
        lingering.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Everything an active connect needs, copied out of the configuration.
#[derive(Debug, Clone)]
pub(super) struct ConnectParams {
    pub remote: SocketAddr,
    pub local: Option<IpAddr>,
    pub ttl: Option<u32>,
    pub md5: Option<String>,
}

async fn connect(p: &ConnectParams) -> io::Result<TcpStream> {
    let sock = match p.remote {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }?;
    if let Some(local) = p.local {
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::new(local, 0))?;
    }
    set_ttl(socket2::SockRef::from(&sock), p.remote.ip(), p.ttl)?;
    if let Some(key) = &p.md5 {
        set_tcp_md5sig(&sock, p.remote, key.as_bytes())?;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(p.remote)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

pub(super) fn spawn_connect(
    peer: IpAddr,
    attempt: u64,
    params: ConnectParams,
    tx: mpsc::Sender<Input>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let msg = match connect(&params).await {
            Ok(stream) => Input::Connected {
                peer,
                attempt,
                stream,
            },
            Err(e) => Input::ConnectFailed {
                peer,
                attempt,
                error: e.to_string(),
            },
        };
        let _ = tx.send(msg).await;
    })
}

/// One TCP connection as the core sees it. Dropping it closes the
/// connection once everything queued has been written.
#[derive(Debug)]
pub(super) struct Conn {
    pub id: u64,
    pub origin: ConnectionOrigin,
    pub local: Option<SocketAddr>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    reader: JoinHandle<()>,
}

impl Conn {
    /// Starts the reader and writer tasks of `stream`.
    pub fn start(
        id: u64,
        origin: ConnectionOrigin,
        stream: TcpStream,
        ttl: Option<u32>,
        tx: mpsc::Sender<Input>,
    ) -> Self {
        let local = stream.local_addr().ok();
        if let Some(l) = local {
            // Accepted connections get the peer's TTL here; a failure only
            // loses the TTL restriction, so it is logged, not fatal.
            if let Err(e) = set_ttl(socket2::SockRef::from(&stream), l.ip(), ttl) {
                tracing::warn!(error = %e, "bgp: setting TTL failed");
            }
        }
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let rtx = tx.clone();
        let reader = tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if rtx
                            .send(Input::Bytes {
                                conn: id,
                                data: buf,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = rtx.send(Input::Closed { conn: id }).await;
        });
        tokio::spawn(async move {
            while let Some(b) = out_rx.recv().await {
                // A peer that stops reading must not pin the socket (and
                // this task) forever.
                let w = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&b)).await;
                if !matches!(w, Ok(Ok(()))) {
                    let _ = tx.send(Input::Closed { conn: id }).await;
                    return;
                }
            }
            // Everything queued (a NOTIFICATION last) is written: FIN.
            let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.shutdown()).await;
        });
        Self {
            id,
            origin,
            local,
            out,
            reader,
        }
    }

    pub fn send(&self, bytes: Vec<u8>) {
        // A closed writer means the connection is gone; the reader
        // reports that.
        let _ = self.out.send(bytes);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
