//! TCP MD5 signatures (RFC 2385) through Linux's `TCP_MD5SIG` socket option, for the BGP
//! speaker. The kernel signs and checks every segment to and from `peer`; the key must be set
//! on a listening socket before the peer's SYN arrives, and on a connecting socket before
//! `connect`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

/// `TCP_MD5SIG_MAXKEYLEN` from `<linux/tcp.h>`.
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>` (libc does not define it for Linux).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

/// Installs `key` for segments exchanged with `peer`'s address (the port is ignored by the
/// kernel). An empty key removes the entry. Keys longer than [`MAX_KEY_LEN`] are refused.
pub fn set_tcp_md5sig(socket: &impl AsFd, peer: SocketAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 key is {} bytes, at most {MAX_KEY_LEN}", key.len()),
        ));
    }
    // SAFETY: sockaddr_storage is plain old data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match peer {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in, and `addr`
            // is a live local we hold exclusively.
            unsafe {
                std::ptr::write(
                    (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6, and
            // `addr` is a live local we hold exclusively.
            unsafe {
                std::ptr::write(
                    (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
        }
    }
    let mut sig = TcpMd5Sig {
        addr,
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a fully initialised `struct tcp_md5sig` that lives across the call, the
    // length passed is its exact size, and the descriptor is borrowed for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast::<libc::c_void>(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_matches_kernel_layout() {
        // 128 (sockaddr_storage) + 1 + 1 + 2 + 4 + 80.
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn sets_and_clears_a_key_on_a_plain_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer: SocketAddr = "127.0.0.9:179".parse().unwrap();
        set_tcp_md5sig(&l, peer, b"secret").unwrap();
        set_tcp_md5sig(&l, peer, b"").unwrap();
        assert!(set_tcp_md5sig(&l, peer, &[0; 81]).is_err());
    }
}
