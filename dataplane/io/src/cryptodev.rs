//! A DPDK cryptodev as a [`CryptoBackend`]: Intel QAT in production, the software poll-mode
//! drivers (`crypto_aesni_gcm`, `crypto_aesni_mb`, `crypto_openssl`) where there is no QAT,
//! through the same API and the same code.
//!
//! Each prepared context owns symmetric sessions on the device (one per direction, and for
//! AES-GCM one per AAD length: 8 bytes for ESP, 12 with extended sequence numbers), made the
//! first time they are needed. An operation points a scratch mbuf at the caller's bytes (in
//! place, no copy), enqueues it on the calling thread's queue pair and dequeues the result.
//! Queue pairs are handed out to threads round-robin and each is behind a mutex that its one
//! worker never finds taken, so the dataplane gets one queue pair per worker.
//!
//! With the DPDK driver the device also works asynchronously ([`AsyncCrypto`] for [`Mbuf`]):
//! the ESP nodes hand over the packets' own mbufs (no scratch mbuf, no copy) and go on; the
//! graph polls, and what the device finished re-enters the graph. QAT then works beside the
//! cores instead of making them wait.
//!
//! What a device cannot do in one operation is done by the software backend with the same
//! keys: AES-GCM with an AAD other than ESP's (IKE's SK payload), HMAC over several pieces
//! (ESP's ICV with the extended sequence number's high half appended), and the single block
//! encryption that derives a CBC IV. So every context answers every call, bit for bit as the
//! software backend would.

use std::collections::VecDeque;
use std::ffi::{c_void, CStr, CString};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use switchyard_dpdk_sys as sys;
use switchyard_ipsec::crypto::{
    Aead, AeadAlgorithm, CbcAlgorithm, CbcHmac, CryptoBackend, CryptoError, MacAlgorithm,
    SecretBytes, SoftwareBackend, SymCtx, SymOp, SymParams,
};

use switchyard_dataplane::async_crypto::{AsyncCrypto, AsyncOp};
use switchyard_dataplane::buffer::PacketBuffer;

use crate::dpdk::{Eal, Mbuf};
use crate::IoError;

/// Makes mempool names unique within the process.
static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

/// How long a thread waits for one operation before it calls the device stuck: a software
/// PMD answers in well under a microsecond, QAT in a few.
const MAX_POLLS: u32 = 50_000_000;

/// Operations handed to the device at once.
const BURST: usize = 32;

/// Asynchronous operations one queue pair keeps in flight at most.
const IN_FLIGHT: usize = 512;

/// How long an asynchronous operation may stay with the device before the queue pair is
/// given up on.
const ABANDON_AFTER: Duration = Duration::from_secs(1);

/// How to set up the device.
#[derive(Clone, Debug)]
pub struct CryptodevConfig {
    /// The device name as DPDK knows it: `crypto_aesni_gcm0` (from `--vdev`), a QAT
    /// function's name, ...
    pub device: String,
    /// Queue pairs to set up (at most the device's maximum); threads share them round-robin.
    pub queue_pairs: u16,
    /// Descriptors per queue pair.
    pub descriptors: u32,
    /// Sessions the pool holds: each SA uses one per direction it runs in.
    pub sessions: u32,
}

impl CryptodevConfig {
    /// Defaults for `device`: 2 queue pairs of 2048 descriptors, 8192 sessions.
    pub fn new(device: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            queue_pairs: 2,
            descriptors: 2048,
            sessions: 8192,
        }
    }
}

/// A started cryptodev and the pools its operations use.
pub struct Cryptodev {
    device: Arc<Device>,
}

impl fmt::Debug for Cryptodev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cryptodev")
            .field("device", &self.device.name)
            .field("driver", &self.device.driver)
            .field("dev_id", &self.device.dev_id)
            .field("queue_pairs", &self.device.queues.len())
            .finish()
    }
}

struct Device {
    dev_id: u8,
    name: String,
    driver: String,
    sessions: NonNull<sys::rte_mempool>,
    queues: Vec<Mutex<QueuePair>>,
    software: SoftwareBackend,
    /// Calls the software backend answered instead of the device.
    software_calls: AtomicU64,
    /// Sessions the device refused to make (the contexts then work in software).
    session_failures: AtomicU64,
}

// SAFETY: the device holds a DPDK device id and mempool pointers; mempools are multi-thread
// safe and sessions may be used from any thread. The queue pairs, which are not, are each
// behind a Mutex.
unsafe impl Send for Device {}
// SAFETY: as above: every shared use goes through thread-safe DPDK calls or a Mutex.
unsafe impl Sync for Device {}

/// One queue pair with the one operation and the one scratch mbuf its thread reuses.
struct QueuePair {
    id: u16,
    /// The operations and scratch mbufs of one burst; a single operation uses the first.
    ops: [NonNull<sys::rte_crypto_op>; BURST],
    mbufs: [NonNull<sys::rte_mbuf>; BURST],
    /// Set when an operation never came back: the queue pair is not used again.
    stuck: bool,
    /// Asynchronous operations taken and not yet polled, in submission order.
    flights: VecDeque<Flight>,
    /// The asynchronous operations, [`IN_FLIGHT`] of them, and which are free.
    async_ops: Vec<NonNull<sys::rte_crypto_op>>,
    free: Vec<u16>,
    /// Asynchronous operations the device never gave back (their mbufs are leaked).
    abandoned: u64,
    /// Operations completed, and of those refused (authentication) or failed.
    completed: u64,
    failed: u64,
}

// SAFETY: the ops and mbufs belong to this queue pair alone and are only touched under its
// Mutex; the flights' mbufs are owned by their operations (DPDK mbufs may move between
// threads).
unsafe impl Send for QueuePair {}

/// An asynchronous operation between [`AsyncCrypto::submit`] and [`AsyncCrypto::poll`].
struct Flight {
    op: AsyncOp<Mbuf>,
    state: FlightState,
}

enum FlightState {
    /// Ran at once (in software, or refused): `op.result` waits for the next poll.
    Finished,
    /// With the device, on async operation `slot`, since `since`.
    Device {
        slot: u16,
        since: Instant,
        /// Where the device leaves the tag.
        digest: *mut u8,
        /// The device gave it back with this status.
        status: Option<u32>,
    },
}

fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer; no preconditions.
    unsafe { sys::sy_rte_errno() }
}

fn dpdk_error(what: impl fmt::Display, errnum: i32) -> IoError {
    // SAFETY: rte_strerror accepts any value and returns a NUL-terminated string that is
    // copied out at once.
    let msg = unsafe { CStr::from_ptr(sys::rte_strerror(errnum)) };
    IoError::Dpdk(format!(
        "{what}: {} (errno {errnum})",
        msg.to_string_lossy()
    ))
}

fn unique_name(kind: &str) -> CString {
    let n = POOL_SEQ.fetch_add(1, Ordering::Relaxed);
    CString::new(format!("sy_{kind}_{n}")).expect("no NUL in a generated name")
}

impl Cryptodev {
    /// Configures and starts the device `cfg.device`, which the EAL must have probed (a
    /// `--vdev crypto_aesni_gcm0` in the EAL arguments, or a bound QAT function).
    pub fn start(_eal: &Eal, cfg: &CryptodevConfig) -> Result<Self, IoError> {
        let cname = CString::new(cfg.device.as_str())
            .map_err(|_| IoError::BadArguments(format!("device name {:?}", cfg.device)))?;
        // SAFETY: the EAL is initialised (the caller holds an Eal); cname is a C string.
        let id = unsafe { sys::rte_cryptodev_get_dev_id(cname.as_ptr()) };
        let dev_id = u8::try_from(id).map_err(|_| {
            // SAFETY: reads the device table; no preconditions once the EAL is up.
            let count = unsafe { sys::rte_cryptodev_count() };
            IoError::NoSuchInterface(format!(
                "cryptodev {} ({count} cryptodevs probed; add --vdev {} to the EAL arguments)",
                cfg.device, cfg.device
            ))
        })?;
        let mut info = sys::rte_cryptodev_info::default();
        // SAFETY: dev_id names a probed device; info is a valid, writable struct.
        unsafe { sys::rte_cryptodev_info_get(dev_id, &mut info) };
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-NULL driver name is a static NUL-terminated string of the PMD.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        let max_qps = u16::try_from(info.max_nb_queue_pairs).unwrap_or(u16::MAX);
        let queue_pairs = cfg.queue_pairs.clamp(1, max_qps.max(1));
        // SAFETY: dev_id names a probed device.
        let socket = unsafe { sys::rte_cryptodev_socket_id(dev_id) };

        // SAFETY: dev_id names a probed device.
        let session_size = unsafe { sys::rte_cryptodev_sym_get_private_session_size(dev_id) };
        let pool_name = unique_name("cryptosess");
        // SAFETY: a valid name that DPDK copies; sizes are checked by DPDK.
        let sessions = unsafe {
            sys::rte_cryptodev_sym_session_pool_create(
                pool_name.as_ptr(),
                cfg.sessions,
                session_size,
                0,
                0,
                socket,
            )
        };
        let sessions = NonNull::new(sessions)
            .ok_or_else(|| dpdk_error("creating the session pool", rte_errno()))?;

        let mut conf = sys::rte_cryptodev_config {
            socket_id: socket,
            nb_queue_pairs: queue_pairs,
            ff_disable: 0,
        };
        // SAFETY: dev_id names a stopped device; conf is valid for the call.
        let ret = unsafe { sys::rte_cryptodev_configure(dev_id, &mut conf) };
        if ret < 0 {
            return Err(dpdk_error(format!("configuring {}", cfg.device), -ret));
        }
        let qp_conf = sys::rte_cryptodev_qp_conf {
            nb_descriptors: cfg.descriptors,
            mp_session: sessions.as_ptr(),
        };
        for qp in 0..queue_pairs {
            // SAFETY: the device is configured with queue_pairs queue pairs; qp_conf and
            // the session pool outlive the device's use of them (the pool is never freed).
            let ret = unsafe { sys::rte_cryptodev_queue_pair_setup(dev_id, qp, &qp_conf, socket) };
            if ret < 0 {
                return Err(dpdk_error(
                    format!("queue pair {qp} of {}", cfg.device),
                    -ret,
                ));
            }
        }
        // SAFETY: the device is configured and its queue pairs set up.
        let ret = unsafe { sys::rte_cryptodev_start(dev_id) };
        if ret < 0 {
            return Err(dpdk_error(format!("starting {}", cfg.device), -ret));
        }

        let ops_name = unique_name("cryptoops");
        // SAFETY: a valid name that DPDK copies; the private area holds IV, AAD and digest.
        let ops = unsafe {
            sys::rte_crypto_op_pool_create(
                ops_name.as_ptr(),
                sys::RTE_CRYPTO_OP_TYPE_SYMMETRIC,
                u32::from(queue_pairs) * (BURST + IN_FLIGHT) as u32 + 64,
                0,
                sys::SY_CRYPTO_OP_PRIV as u16,
                socket,
            )
        };
        let ops =
            NonNull::new(ops).ok_or_else(|| dpdk_error("creating the op pool", rte_errno()))?;
        let mbufs_name = unique_name("cryptombufs");
        // SAFETY: a valid name; mbufs with no data room: they only ever point at the caller's
        // bytes (sy_crypto_mbuf_point).
        let mbufs = unsafe {
            sys::rte_pktmbuf_pool_create(
                mbufs_name.as_ptr(),
                u32::from(queue_pairs) * BURST as u32 + 64,
                0,
                0,
                0,
                socket,
            )
        };
        let mbufs = NonNull::new(mbufs)
            .ok_or_else(|| dpdk_error("creating the scratch mbuf pool", rte_errno()))?;

        let mut queues = Vec::with_capacity(usize::from(queue_pairs));
        for id in 0..queue_pairs {
            let mut async_raw = vec![std::ptr::null_mut(); IN_FLIGHT];
            // SAFETY: the pool is live; the vector has room for IN_FLIGHT pointers.
            let ok = unsafe {
                sys::sy_rte_crypto_op_bulk_alloc(
                    ops.as_ptr(),
                    async_raw.as_mut_ptr(),
                    IN_FLIGHT as u16,
                ) == 0
            };
            let async_ops = async_raw
                .into_iter()
                .map(NonNull::new)
                .collect::<Option<Vec<_>>>()
                .filter(|_| ok)
                .ok_or_else(|| IoError::Dpdk("allocating crypto operations".into()))?;
            let mut ops_raw = [std::ptr::null_mut(); BURST];
            let mut mbufs_raw = [std::ptr::null_mut(); BURST];
            // SAFETY: both pools are live; each array has room for BURST pointers.
            let ok = unsafe {
                sys::sy_rte_crypto_op_bulk_alloc(ops.as_ptr(), ops_raw.as_mut_ptr(), BURST as u16)
                    == 0
                    && sys::sy_rte_pktmbuf_alloc_bulk(
                        mbufs.as_ptr(),
                        mbufs_raw.as_mut_ptr(),
                        BURST as u32,
                    ) == 0
            };
            let ops = ops_raw.map(NonNull::new);
            let mbufs = mbufs_raw.map(NonNull::new);
            let (true, Some(ops), Some(mbufs)) = (
                ok,
                ops.into_iter().collect::<Option<Vec<_>>>(),
                mbufs.into_iter().collect::<Option<Vec<_>>>(),
            ) else {
                return Err(IoError::Dpdk(
                    "allocating crypto operations and mbufs".into(),
                ));
            };
            queues.push(Mutex::new(QueuePair {
                id,
                ops: ops.try_into().expect("BURST operations"),
                mbufs: mbufs.try_into().expect("BURST mbufs"),
                stuck: false,
                flights: VecDeque::with_capacity(IN_FLIGHT),
                async_ops,
                free: (0..IN_FLIGHT as u16).rev().collect(),
                abandoned: 0,
                completed: 0,
                failed: 0,
            }));
        }
        Ok(Self {
            device: Arc::new(Device {
                dev_id,
                name: cfg.device.clone(),
                driver,
                sessions,
                queues,
                software: SoftwareBackend::new(),
                software_calls: AtomicU64::new(0),
                session_failures: AtomicU64::new(0),
            }),
        })
    }

    /// The device's DPDK name.
    pub fn device_name(&self) -> &str {
        &self.device.name
    }

    /// The poll-mode driver's name (`crypto_aesni_gcm`, `crypto_qat`, ...).
    pub fn driver_name(&self) -> &str {
        &self.device.driver
    }

    /// Queue pairs in use.
    pub fn queue_pairs(&self) -> usize {
        self.device.queues.len()
    }

    /// What the device has done so far.
    pub fn stats(&self) -> CryptodevStats {
        let mut stats = CryptodevStats {
            software_calls: self.device.software_calls.load(Ordering::Relaxed),
            session_failures: self.device.session_failures.load(Ordering::Relaxed),
            ..CryptodevStats::default()
        };
        for q in &self.device.queues {
            let q = match q.lock() {
                Ok(q) => q,
                Err(poisoned) => poisoned.into_inner(),
            };
            stats.operations += q.completed;
            stats.failed += q.failed;
            stats.stuck_queue_pairs += u64::from(q.stuck);
            stats.abandoned += q.abandoned;
        }
        stats
    }
}

/// Counters of a [`Cryptodev`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CryptodevStats {
    /// Operations the device completed (successfully or not).
    pub operations: u64,
    /// Of those, the ones that failed: forged tags and ICVs, device errors.
    pub failed: u64,
    /// Calls answered in software: AADs and HMAC inputs the device's sessions do not take,
    /// empty inputs, and contexts whose sessions the device refused. (CBC IV derivation, one
    /// block per packet, is always in software and not counted.)
    pub software_calls: u64,
    /// Sessions the device refused to make.
    pub session_failures: u64,
    /// Queue pairs given up on after an operation never came back.
    pub stuck_queue_pairs: u64,
    /// Asynchronous operations the device never gave back (their packets are leaked, as
    /// the device may still write to them).
    pub abandoned: u64,
}

/// The calling thread's queue pair index: threads are numbered as they first ask.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

/// A symmetric session on the device, freed with it.
struct Session {
    ptr: NonNull<c_void>,
    device: Arc<Device>,
}

// SAFETY: a session is read-only device state once made, usable from any thread.
unsafe impl Send for Session {}
// SAFETY: as above.
unsafe impl Sync for Session {}

impl Drop for Session {
    fn drop(&mut self) {
        // Asynchronous operations may still run in this session: let the device finish them
        // first (their results wait in their flights for the next poll).
        for q in &self.device.queues {
            let mut qp = q.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.device.settle(&mut qp);
        }
        // SAFETY: ptr came from rte_cryptodev_sym_session_create on this device, and no
        // operation uses it any more (synchronous ones run to completion under the queue's
        // lock while the context, which owns the session, is borrowed; asynchronous ones were
        // settled above).
        unsafe { sys::rte_cryptodev_sym_session_free(self.device.dev_id, self.ptr.as_ptr()) };
    }
}

/// What a session does, for the C helpers that fill the transform.
#[derive(Clone, Copy)]
enum SessionKind {
    Gcm {
        encrypt: bool,
        aad_len: u16,
    },
    Cbc {
        encrypt: bool,
    },
    Hmac {
        generate: bool,
        mac: MacAlgorithm,
    },
    /// AES-CBC and HMAC in one operation: encrypt then MAC, or verify then decrypt.
    CbcHmac {
        encrypt: bool,
        mac: MacAlgorithm,
    },
}

/// The shim's number for an HMAC algorithm.
fn auth_algo(mac: MacAlgorithm) -> i32 {
    match mac {
        MacAlgorithm::HmacSha256_128 => 0,
        MacAlgorithm::HmacSha384_192 => 1,
        MacAlgorithm::HmacSha512_256 => 2,
    }
}

impl Device {
    /// Counts a call answered in software.
    fn in_software(&self) {
        self.software_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes a session; `auth_key` is the HMAC key of a chained session (else unused).
    fn session(
        self: &Arc<Self>,
        kind: SessionKind,
        key: &[u8],
        auth_key: &[u8],
    ) -> Result<Session, CryptoError> {
        let key_len = u16::try_from(key.len()).map_err(|_| CryptoError::KeyLength)?;
        let auth_key_len = u16::try_from(auth_key.len()).map_err(|_| CryptoError::KeyLength)?;
        let dev = self.dev_id;
        let mp = self.sessions.as_ptr();
        // SAFETY: the device is started; mp is its session pool; the keys are valid for their
        // lengths and the PMD copies (expands) them during the call.
        let ptr = unsafe {
            match kind {
                SessionKind::Gcm { encrypt, aad_len } => sys::sy_crypto_session_aes_gcm(
                    dev,
                    mp,
                    i32::from(encrypt),
                    key.as_ptr(),
                    key_len,
                    aad_len,
                ),
                SessionKind::Cbc { encrypt } => sys::sy_crypto_session_aes_cbc(
                    dev,
                    mp,
                    i32::from(encrypt),
                    key.as_ptr(),
                    key_len,
                ),
                SessionKind::Hmac { generate, mac } => sys::sy_crypto_session_hmac(
                    dev,
                    mp,
                    i32::from(generate),
                    auth_algo(mac),
                    key.as_ptr(),
                    key_len,
                    mac.icv_len() as u16,
                ),
                SessionKind::CbcHmac { encrypt, mac } => sys::sy_crypto_session_cbc_hmac(
                    dev,
                    mp,
                    i32::from(encrypt),
                    key.as_ptr(),
                    key_len,
                    auth_algo(mac),
                    auth_key.as_ptr(),
                    auth_key_len,
                    mac.icv_len() as u16,
                ),
            }
        };
        let Some(ptr) = NonNull::new(ptr) else {
            self.session_failures.fetch_add(1, Ordering::Relaxed);
            return Err(CryptoError::Backend);
        };
        Ok(Session {
            ptr,
            device: Arc::clone(self),
        })
    }

    /// Runs one operation on the calling thread's queue pair, in place on the job's bytes.
    fn run(&self, job: Job<'_>) -> Result<(), CryptoError> {
        let (data, len) = match &job {
            Job::Seal { data, .. } | Job::Open { data, .. } | Job::Cipher { data, .. } => {
                (data.as_ptr().cast_mut(), data.len())
            }
            // An HMAC operation only reads its data; the mbuf's pointer is mutable by type.
            Job::Sign { data, .. } | Job::Verify { data, .. } => {
                (data.as_ptr().cast_mut(), data.len())
            }
        };
        let len = u16::try_from(len).map_err(|_| CryptoError::BufferLength)?;
        let mut qp = self.queue();
        self.settle(&mut qp);
        if qp.stuck {
            return Err(CryptoError::Backend);
        }
        let (op, mbuf) = (qp.ops[0].as_ptr(), qp.mbufs[0].as_ptr());
        // SAFETY: op and mbuf are this queue pair's and idle (the last operation on them was
        // dequeued, or the queue would be stuck); the job borrows its bytes (mutably where the
        // operation writes them) until this returns, and the operation completes, or the
        // queue is marked stuck and never used again, before that. IV (≤ 16 bytes), AAD (8 or
        // 12, checked by the callers) and digest (≤ 32) fit the op's private area
        // (SY_CRYPTO_IV_MAX, SY_CRYPTO_AAD_MAX, SY_CRYPTO_DIGEST_MAX).
        let digest = unsafe {
            sys::sy_crypto_mbuf_point(mbuf, data.cast(), len);
            match &job {
                Job::Seal {
                    session,
                    nonce,
                    aad,
                    ..
                }
                | Job::Open {
                    session,
                    nonce,
                    aad,
                    ..
                } => sys::sy_crypto_op_aead(
                    op,
                    *session,
                    mbuf,
                    0,
                    u32::from(len),
                    nonce.as_ptr(),
                    12,
                    aad.as_ptr(),
                    aad.len() as u16,
                ),
                Job::Cipher { session, iv, .. } => {
                    sys::sy_crypto_op_cipher(op, *session, mbuf, iv.as_ptr(), 16);
                    std::ptr::null_mut()
                }
                Job::Sign { session, .. } | Job::Verify { session, .. } => {
                    sys::sy_crypto_op_auth(op, *session, mbuf)
                }
            }
        };
        let expected: &[u8] = match &job {
            Job::Open { tag, .. } => &tag[..],
            Job::Verify { icv, .. } => icv,
            _ => &[],
        };
        if !expected.is_empty() {
            // SAFETY: the digest area holds SY_CRYPTO_DIGEST_MAX ≥ expected.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(expected.as_ptr(), digest, expected.len()) };
        }
        let mut sent = op;
        // SAFETY: op is filled; the queue pair is ours under the lock.
        let queued =
            unsafe { sys::sy_rte_cryptodev_enqueue_burst(self.dev_id, qp.id, &mut sent, 1) };
        if queued != 1 {
            return Err(CryptoError::Backend);
        }
        let mut done: *mut sys::rte_crypto_op = std::ptr::null_mut();
        let mut polls = 0u32;
        // SAFETY: dequeues into one pointer's worth of space on our own queue pair.
        while unsafe { sys::sy_rte_cryptodev_dequeue_burst(self.dev_id, qp.id, &mut done, 1) } == 0
        {
            polls += 1;
            if polls == MAX_POLLS {
                qp.stuck = true;
                return Err(CryptoError::Backend);
            }
            std::hint::spin_loop();
        }
        // SAFETY: the one operation in flight on this queue pair came back.
        let status = unsafe { sys::sy_crypto_op_status(done) } as u32;
        qp.completed += 1;
        if status != sys::RTE_CRYPTO_OP_STATUS_SUCCESS {
            qp.failed += 1;
        }
        if status == sys::RTE_CRYPTO_OP_STATUS_AUTH_FAILED {
            return Err(CryptoError::Authentication);
        }
        if status != sys::RTE_CRYPTO_OP_STATUS_SUCCESS {
            return Err(CryptoError::Backend);
        }
        let out: &mut [u8] = match job {
            Job::Seal { tag, .. } => &mut tag[..],
            Job::Sign { icv, .. } => icv,
            _ => &mut [],
        };
        if !out.is_empty() {
            // SAFETY: the completed operation wrote out.len() ≤ SY_CRYPTO_DIGEST_MAX bytes
            // into the digest area (not null: seal and sign fill one).
            out.copy_from_slice(unsafe { std::slice::from_raw_parts(digest, out.len()) });
        }
        Ok(())
    }
}

/// One operation for [`Device::run`], with the session it runs in.
enum Job<'a> {
    Seal {
        session: *mut c_void,
        nonce: &'a [u8; 12],
        aad: &'a [u8],
        data: &'a mut [u8],
        tag: &'a mut [u8; AeadAlgorithm::TAG_LEN],
    },
    Open {
        session: *mut c_void,
        nonce: &'a [u8; 12],
        aad: &'a [u8],
        data: &'a mut [u8],
        tag: &'a [u8; AeadAlgorithm::TAG_LEN],
    },
    Cipher {
        session: *mut c_void,
        iv: &'a [u8; 16],
        data: &'a mut [u8],
    },
    Sign {
        session: *mut c_void,
        data: &'a [u8],
        icv: &'a mut [u8],
    },
    Verify {
        session: *mut c_void,
        data: &'a [u8],
        icv: &'a [u8],
    },
}

/// A session made on first use (the worker that first needs it pays the setup once).
struct LazySession {
    cell: OnceLock<Option<Session>>,
}

impl LazySession {
    const fn new() -> Self {
        Self {
            cell: OnceLock::new(),
        }
    }

    fn get(
        &self,
        device: &Arc<Device>,
        kind: SessionKind,
        key: &SecretBytes,
        auth_key: &SecretBytes,
    ) -> Option<&Session> {
        self.cell
            .get_or_init(|| device.session(kind, key.expose(), auth_key.expose()).ok())
            .as_ref()
    }
}

/// AES-GCM on the device for ESP's AAD lengths, in software otherwise.
struct DeviceGcm {
    algorithm: AeadAlgorithm,
    device: Arc<Device>,
    key: SecretBytes,
    /// Encrypt and decrypt sessions for an AAD of 8 and of 12 bytes.
    sessions: [LazySession; 4],
    software: Box<dyn Aead>,
}

impl DeviceGcm {
    fn session(&self, encrypt: bool, aad_len: usize) -> Option<&Session> {
        let index = match aad_len {
            8 => 0,
            12 => 1,
            _ => return None,
        } + if encrypt { 0 } else { 2 };
        let kind = SessionKind::Gcm {
            encrypt,
            aad_len: aad_len as u16,
        };
        self.sessions[index].get(&self.device, kind, &self.key, &self.key)
    }
}

impl Aead for DeviceGcm {
    fn algorithm(&self) -> AeadAlgorithm {
        self.algorithm
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        match self.session(true, aad.len()) {
            Some(session) if !in_out.is_empty() => self.device.run(Job::Seal {
                session: session.ptr.as_ptr(),
                nonce,
                aad,
                data: in_out,
                tag,
            }),
            _ => {
                self.device.in_software();
                self.software.seal(nonce, aad, in_out, tag)
            }
        }
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; AeadAlgorithm::TAG_LEN],
    ) -> Result<(), CryptoError> {
        match self.session(false, aad.len()) {
            Some(session) if !in_out.is_empty() => self.device.run(Job::Open {
                session: session.ptr.as_ptr(),
                nonce,
                aad,
                data: in_out,
                tag,
            }),
            _ => {
                self.device.in_software();
                self.software.open(nonce, aad, in_out, tag)
            }
        }
    }
}

/// AES-CBC and HMAC on the device; multi-piece HMAC and IV derivation in software.
struct DeviceCbcHmac {
    cipher: CbcAlgorithm,
    mac: MacAlgorithm,
    device: Arc<Device>,
    cipher_key: SecretBytes,
    mac_key: SecretBytes,
    /// Encrypt, decrypt, HMAC generate, HMAC verify, encrypt-then-MAC, verify-then-decrypt.
    sessions: [LazySession; 6],
    software: Box<dyn CbcHmac>,
}

impl DeviceCbcHmac {
    fn cbc(&self, encrypt: bool, iv: &[u8; 16], in_out: &mut [u8]) -> Result<(), CryptoError> {
        if !in_out.len().is_multiple_of(CbcAlgorithm::BLOCK_LEN) {
            return Err(CryptoError::BufferLength);
        }
        let index = if encrypt { 0 } else { 1 };
        let kind = SessionKind::Cbc { encrypt };
        let session =
            match self.sessions[index].get(&self.device, kind, &self.cipher_key, &self.mac_key) {
                Some(s) if !in_out.is_empty() => s.ptr.as_ptr(),
                _ => {
                    self.device.in_software();
                    return if encrypt {
                        self.software.encrypt(iv, in_out)
                    } else {
                        self.software.decrypt(iv, in_out)
                    };
                }
            };
        self.device.run(Job::Cipher {
            session,
            iv,
            data: in_out,
        })
    }

    /// The one piece of `parts` with bytes in it, if there is just one.
    fn single(parts: &[&[u8]]) -> Option<usize> {
        let mut nonempty = parts.iter().enumerate().filter(|(_, p)| !p.is_empty());
        match (nonempty.next(), nonempty.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// The chained session for a sealing (`encrypt`) or opening batch operation.
    fn chain_session(&self, encrypt: bool) -> Option<*mut c_void> {
        let kind = SessionKind::CbcHmac {
            encrypt,
            mac: self.mac,
        };
        let index = if encrypt { 4 } else { 5 };
        self.sessions[index]
            .get(&self.device, kind, &self.cipher_key, &self.mac_key)
            .map(|s| s.ptr.as_ptr())
    }

    fn hmac_session(&self, generate: bool) -> Option<*mut c_void> {
        let kind = SessionKind::Hmac {
            generate,
            mac: self.mac,
        };
        let index = if generate { 2 } else { 3 };
        self.sessions[index]
            .get(&self.device, kind, &self.mac_key, &self.mac_key)
            .map(|s| s.ptr.as_ptr())
    }
}

impl CbcHmac for DeviceCbcHmac {
    fn cipher(&self) -> CbcAlgorithm {
        self.cipher
    }

    fn mac(&self) -> MacAlgorithm {
        self.mac
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn encrypt(&self, iv: &[u8; 16], in_out: &mut [u8]) -> Result<(), CryptoError> {
        self.cbc(true, iv, in_out)
    }

    fn decrypt(&self, iv: &[u8; 16], in_out: &mut [u8]) -> Result<(), CryptoError> {
        self.cbc(false, iv, in_out)
    }

    fn sign(&self, parts: &[&[u8]], icv: &mut [u8]) -> Result<(), CryptoError> {
        if icv.len() != self.mac.icv_len() {
            return Err(CryptoError::BufferLength);
        }
        let (Some(i), Some(session)) = (Self::single(parts), self.hmac_session(true)) else {
            self.device.in_software();
            return self.software.sign(parts, icv);
        };
        self.device.run(Job::Sign {
            session,
            data: parts[i],
            icv,
        })
    }

    fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> Result<(), CryptoError> {
        if icv.len() != self.mac.icv_len() {
            return Err(CryptoError::Authentication);
        }
        let (Some(i), Some(session)) = (Self::single(parts), self.hmac_session(false)) else {
            self.device.in_software();
            return self.software.verify(parts, icv);
        };
        self.device.run(Job::Verify {
            session,
            data: parts[i],
            icv,
        })
    }

    fn derive_iv(&self, nonce: &[u8; 16]) -> Result<[u8; 16], CryptoError> {
        // One block: a device round trip would cost more than the block.
        self.software.derive_iv(nonce)
    }
}

impl CryptoBackend for Cryptodev {
    fn name(&self) -> &'static str {
        "cryptodev"
    }

    fn aead(&self, algorithm: AeadAlgorithm, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError> {
        let software = self.device.software.aead(algorithm, key)?;
        Ok(Box::new(DeviceGcm {
            algorithm,
            device: Arc::clone(&self.device),
            key: SecretBytes::from_slice(key),
            sessions: [const { LazySession::new() }; 4],
            software,
        }))
    }

    fn cbc_hmac(
        &self,
        cipher: CbcAlgorithm,
        cipher_key: &[u8],
        mac: MacAlgorithm,
        mac_key: &[u8],
    ) -> Result<Box<dyn CbcHmac>, CryptoError> {
        let software = self
            .device
            .software
            .cbc_hmac(cipher, cipher_key, mac, mac_key)?;
        Ok(Box::new(DeviceCbcHmac {
            cipher,
            mac,
            device: Arc::clone(&self.device),
            cipher_key: SecretBytes::from_slice(cipher_key),
            mac_key: SecretBytes::from_slice(mac_key),
            sessions: [const { LazySession::new() }; 6],
            software,
        }))
    }

    fn random(&self, out: &mut [u8]) -> Result<(), CryptoError> {
        self.device.software.random(out)
    }

    fn process(&self, ops: &mut [SymOp<'_>]) {
        for burst in ops.chunks_mut(BURST) {
            self.device.process_burst(burst);
        }
    }
}

/// Fills `dop` to run the operation `p` with context `ctx` in `session` on `mbuf`, which
/// holds the operation's `len` bytes at its data start: the packet's own mbuf (`point`
/// null), or a scratch mbuf this points at the `len` bytes at `point` (with the operation, in
/// one call into the shim for an AEAD's tag in place); for an open, copies the expected tag
/// or ICV into the digest area. Returns where the device leaves (or finds) the digest, null when that is in the
/// packet (an AEAD's tag: written where it goes, read where it lies, no copy either way), or
/// `None` when the operation's ranges do not lie inside its bytes. The parameters are read
/// where they lie (the caller's operation), not copied into a [`SymOp`] first.
///
/// # Safety
///
/// `dop` and `mbuf` must be idle (not with the device), `point` (when not null) must point
/// at `len` valid bytes, and the bytes must stay valid and untouched until the operation is
/// dequeued.
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn fill_op(
    p: &SymParams,
    ctx: Option<SymCtx<'_>>,
    point: *mut u8,
    len: usize,
    session: *mut c_void,
    dop: *mut sys::rte_crypto_op,
    mbuf: *mut sys::rte_mbuf,
) -> Option<*mut u8> {
    let icv_len = usize::from(p.icv_len).min(p.expected.len());
    let digest_fits = p.digest_at + icv_len <= len;
    let aead = matches!(ctx, Some(SymCtx::Aead(_)));
    // A tag in place is read only there (`expected` is not filled then): it must lie in the
    // bytes, and only an AEAD's operation can take it from there.
    let in_place = p.seal || p.tag_in_place;
    let ok = p.text.end <= len
        && p.auth.end <= len
        && (!in_place || digest_fits)
        && (aead || !p.tag_in_place);
    if !ok {
        return None;
    }
    // ESP's AAD is 8 or 12 bytes (the sessions take no other length); the field is 12.
    let aad_len = u16::from(p.aad_len).min(p.aad.len() as u16);
    if aead && in_place && !point.is_null() {
        // SAFETY: as below, and `point` holds `len` bytes (≤ u16::MAX: `Device::fits`),
        // which the digest range lies inside; the IV is the field's 16 bytes
        // (SY_CRYPTO_IV_MAX), the AAD `aad_len` ≤ 12 bytes of its 12.
        unsafe {
            sys::sy_crypto_op_aead_point(
                dop,
                session,
                mbuf,
                point.cast(),
                len as u16,
                p.text.start as u32,
                p.text.len() as u32,
                p.digest_at as u32,
                p.iv.as_ptr(),
                p.aad.as_ptr(),
                aad_len,
            )
        };
        return Some(std::ptr::null_mut());
    }
    if !point.is_null() {
        // SAFETY: the caller's promises: mbuf is idle and `point` holds `len` bytes.
        unsafe { sys::sy_crypto_mbuf_point(mbuf, point.cast(), len as u16) };
    }
    if aead && in_place {
        // SAFETY: as below; the digest range lies inside the bytes too, and the device
        // writes (sealing) or reads (opening) the tag there.
        unsafe {
            sys::sy_crypto_op_aead_in_place(
                dop,
                session,
                mbuf,
                p.text.start as u32,
                p.text.len() as u32,
                p.digest_at as u32,
                p.iv.as_ptr(),
                12,
                p.aad.as_ptr(),
                aad_len,
            )
        };
        return Some(std::ptr::null_mut());
    }
    // SAFETY: the caller's promises, and every range lies inside the bytes; IV (≤ 16 bytes),
    // AAD (≤ 12) and digest (≤ 32) fit the op's private area as in `run`.
    let digest = unsafe {
        match ctx {
            Some(SymCtx::Aead(_)) => sys::sy_crypto_op_aead(
                dop,
                session,
                mbuf,
                p.text.start as u32,
                p.text.len() as u32,
                p.iv.as_ptr(),
                12,
                p.aad.as_ptr(),
                aad_len,
            ),
            _ => sys::sy_crypto_op_chain(
                dop,
                session,
                mbuf,
                p.text.start as u32,
                p.text.len() as u32,
                p.auth.start as u32,
                p.auth.len() as u32,
                p.iv.as_ptr(),
                16,
            ),
        }
    };
    if !p.seal {
        // SAFETY: the digest area holds SY_CRYPTO_DIGEST_MAX ≥ icv_len bytes.
        unsafe { std::ptr::copy_nonoverlapping(p.expected.as_ptr(), digest, icv_len) };
    }
    Some(digest)
}

/// Puts a sealed operation's tag, as the device left it, into the packet (not needed when
/// the device wrote it there: `fill_op` returned a null digest).
fn copy_tag(buf: &mut [u8], params: &SymParams, tag: &[u8]) {
    if let Some(to) = buf.get_mut(params.digest_at..params.digest_at + tag.len()) {
        to.copy_from_slice(tag);
    }
}

/// Runs an operation on the calling core ([`SymOp::run_here`] on parameters where they lie);
/// without a context it fails.
fn run_here(
    ctx: Option<SymCtx<'_>>,
    params: &SymParams,
    buf: &mut [u8],
) -> Result<(), CryptoError> {
    match ctx {
        Some(ctx) => ctx.run_here(params, buf),
        None => Err(CryptoError::Backend),
    }
}

/// What a dequeued operation's status means for its caller.
fn status_result(status: u32) -> Result<(), CryptoError> {
    match status {
        sys::RTE_CRYPTO_OP_STATUS_SUCCESS => Ok(()),
        sys::RTE_CRYPTO_OP_STATUS_AUTH_FAILED => Err(CryptoError::Authentication),
        _ => Err(CryptoError::Backend),
    }
}

impl Device {
    /// The calling thread's queue pair, locked.
    fn queue(&self) -> std::sync::MutexGuard<'_, QueuePair> {
        let slot = thread_slot() % self.queues.len();
        self.queues[slot]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes every completed asynchronous operation off the device, noting its status in
    /// its flight.
    fn dequeue_flights(&self, qp: &mut QueuePair) {
        let mut done: [*mut sys::rte_crypto_op; BURST] = [std::ptr::null_mut(); BURST];
        loop {
            // SAFETY: dequeues at most BURST pointers into done, on our own queue pair.
            let got = usize::from(unsafe {
                sys::sy_rte_cryptodev_dequeue_burst(
                    self.dev_id,
                    qp.id,
                    done.as_mut_ptr(),
                    BURST as u16,
                )
            });
            for &op in &done[..got] {
                // The device answers in order, so the flight is nearly always the first
                // one still waiting.
                let QueuePair {
                    flights, async_ops, ..
                } = &mut *qp;
                let waiting = flights.iter_mut().find_map(|f| match &mut f.state {
                    FlightState::Device { slot, status, .. }
                        if status.is_none() && async_ops[usize::from(*slot)].as_ptr() == op =>
                    {
                        Some(status)
                    }
                    _ => None,
                });
                if let Some(status) = waiting {
                    // SAFETY: a dequeued operation of ours.
                    *status = Some(unsafe { sys::sy_crypto_op_status(op) } as u32);
                }
            }
            if got < BURST {
                return;
            }
        }
    }

    /// Waits until the device has given back every asynchronous operation of `qp`: before a
    /// synchronous one (whose dequeue must not meet them) and before a session is freed.
    /// Their results wait in their flights for the next poll.
    fn settle(&self, qp: &mut QueuePair) {
        let waiting = |qp: &QueuePair| {
            qp.flights
                .iter()
                .any(|f| matches!(f.state, FlightState::Device { status: None, .. }))
        };
        let mut polls = 0u32;
        while !qp.stuck && waiting(qp) {
            self.dequeue_flights(qp);
            polls += 1;
            if polls == MAX_POLLS {
                qp.stuck = true;
            }
            std::hint::spin_loop();
        }
    }

    /// [`AsyncCrypto::submit`] on the calling thread's queue pair.
    fn submit(
        self: &Arc<Self>,
        ops: &mut Vec<AsyncOp<Mbuf>>,
        ctxs: &[Option<SymCtx<'_>>],
    ) -> usize {
        let mut qp = self.queue();
        // Flight `base + i` is the operation of `ctxs[i]`.
        let base = qp.flights.len();
        let n = ops
            .len()
            .min(ctxs.len())
            .min(IN_FLIGHT.saturating_sub(qp.flights.len()));
        // The burst being filled: each operation and its flight's index.
        let mut burst: [(*mut sys::rte_crypto_op, usize); BURST] =
            [(std::ptr::null_mut(), 0); BURST];
        let mut filled = 0;
        for (mut op, &ctx) in ops.drain(..n).zip(ctxs) {
            let mbuf = op.pkt.buf.as_ptr();
            let len = op.pkt.buf.len();
            let session = if qp.stuck {
                None
            } else {
                self.session_for(ctx, &op.params, len)
            };
            let placed = session.and_then(|s| qp.free.pop().map(|slot| (s, slot)));
            let mut state = FlightState::Finished;
            match placed {
                Some((session, slot)) => {
                    let dop = qp.async_ops[usize::from(slot)].as_ptr();
                    // SAFETY: the slot was free, so dop is idle; the mbuf holds the bytes
                    // at its data start and moves into the flight below, which owns it
                    // until the device gives the operation back.
                    match unsafe {
                        fill_op(
                            &op.params,
                            ctx,
                            std::ptr::null_mut(),
                            len,
                            session,
                            dop,
                            mbuf,
                        )
                    } {
                        Some(digest) => {
                            state = FlightState::Device {
                                slot,
                                since: Instant::now(),
                                digest,
                                status: None,
                            };
                            burst[filled] = (dop, qp.flights.len());
                            filled += 1;
                        }
                        None => {
                            qp.free.push(slot);
                            op.result = Err(CryptoError::BufferLength);
                        }
                    }
                }
                None => {
                    if ctx.is_some() {
                        self.in_software();
                    }
                    op.result = run_here(ctx, &op.params, op.pkt.buf.data_mut());
                }
            }
            qp.flights.push_back(Flight { op, state });
            if filled == BURST {
                self.enqueue(&mut qp, &burst[..filled], ctxs, base);
                filled = 0;
            }
        }
        self.enqueue(&mut qp, &burst[..filled], ctxs, base);
        n
    }

    /// Hands `burst` (operations and their flights' indexes) to the device; what it does not
    /// take runs in software at once, with its context: flight `base + i` has `ctxs[i]`.
    fn enqueue(
        &self,
        qp: &mut QueuePair,
        burst: &[(*mut sys::rte_crypto_op, usize)],
        ctxs: &[Option<SymCtx<'_>>],
        base: usize,
    ) {
        if burst.is_empty() {
            return;
        }
        let mut raw: [*mut sys::rte_crypto_op; BURST] = [std::ptr::null_mut(); BURST];
        for (r, b) in raw.iter_mut().zip(burst) {
            *r = b.0;
        }
        // SAFETY: raw[..burst.len()] are filled operations of ours; the queue pair is ours
        // under the lock.
        let sent = usize::from(unsafe {
            sys::sy_rte_cryptodev_enqueue_burst(
                self.dev_id,
                qp.id,
                raw.as_mut_ptr(),
                burst.len() as u16,
            )
        });
        for &(_, at) in &burst[sent..] {
            let Some(f) = qp.flights.get_mut(at) else {
                continue;
            };
            if let FlightState::Device { slot, .. } = f.state {
                qp.free.push(slot);
            }
            let f = &mut qp.flights[at];
            f.state = FlightState::Finished;
            let ctx = at
                .checked_sub(base)
                .and_then(|i| ctxs.get(i))
                .copied()
                .flatten();
            self.in_software();
            f.op.result = run_here(ctx, &f.op.params, f.op.pkt.buf.data_mut());
        }
    }

    /// [`AsyncCrypto::poll`] on the calling thread's queue pair.
    fn poll(&self, done: &mut Vec<AsyncOp<Mbuf>>) {
        let mut qp = self.queue();
        if qp.flights.is_empty() {
            return;
        }
        self.dequeue_flights(&mut qp);
        let now = Instant::now();
        while let Some(front) = qp.flights.front() {
            let ready = match front.state {
                FlightState::Finished
                | FlightState::Device {
                    status: Some(_), ..
                } => true,
                FlightState::Device { since, .. } => {
                    if !qp.stuck && now.duration_since(since) <= ABANDON_AFTER {
                        break;
                    }
                    false
                }
            };
            let Some(mut f) = qp.flights.pop_front() else {
                break;
            };
            if !ready {
                // Never answered: the operation and its packet stay the device's for good.
                qp.stuck = true;
                qp.abandoned += 1;
                std::mem::forget(f.op);
                continue;
            }
            if let FlightState::Device {
                slot,
                digest,
                status: Some(status),
                ..
            } = f.state
            {
                f.op.result = status_result(status);
                if f.op.result.is_ok() && f.op.params.seal && !digest.is_null() {
                    let p = &f.op.params;
                    let len = usize::from(p.icv_len).min(p.expected.len());
                    // SAFETY: the completed operation wrote len ≤ SY_CRYPTO_DIGEST_MAX bytes
                    // at digest, in its own private area.
                    let tag = unsafe { std::slice::from_raw_parts(digest, len) };
                    copy_tag(f.op.pkt.buf.data_mut(), &f.op.params, tag);
                }
                qp.free.push(slot);
                qp.completed += 1;
                qp.failed += u64::from(f.op.result.is_err());
            }
            done.push(f.op);
        }
    }
}

impl AsyncCrypto<Mbuf> for Cryptodev {
    fn submit(&self, ops: &mut Vec<AsyncOp<Mbuf>>, ctxs: &[Option<SymCtx<'_>>]) -> usize {
        self.device.submit(ops, ctxs)
    }

    fn poll(&self, done: &mut Vec<AsyncOp<Mbuf>>) {
        self.device.poll(done);
    }

    fn in_flight(&self) -> usize {
        self.device.queue().flights.len()
    }
}

/// What the device session of a batch operation depends on: its context (by address), its
/// direction and its AAD length.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SessionKey {
    ctx: *const (),
    seal: bool,
    aad_len: u8,
}

impl SessionKey {
    /// `None` for an empty slot.
    fn of(ctx: Option<SymCtx<'_>>, params: &SymParams) -> Option<Self> {
        let ctx = match ctx? {
            SymCtx::Aead(aead) => aead as *const dyn Aead as *const (),
            SymCtx::CbcHmac(ctx) => ctx as *const dyn CbcHmac as *const (),
        };
        Some(Self {
            ctx,
            seal: params.seal,
            aad_len: params.aad_len,
        })
    }
}

/// Where a device operation of a burst came from (its device operation is at the same
/// index of the burst's array of them).
#[derive(Clone, Copy)]
struct Placed {
    /// Index in the burst of the caller's operation.
    slot: usize,
    /// Where the device leaves (or finds) the tag or ICV.
    digest: *mut u8,
}

impl Device {
    /// The device session for a batch operation, or `None` when it must run in software
    /// (a context of another backend or device, an AAD the sessions do not take, a buffer
    /// longer than an mbuf segment).
    fn session_for(
        self: &Arc<Self>,
        ctx: Option<SymCtx<'_>>,
        params: &SymParams,
        len: usize,
    ) -> Option<*mut c_void> {
        if !Self::fits(params, len) {
            return None;
        }
        self.context_session(ctx, params)
    }

    /// Whether the device can take an operation's `len` bytes: one mbuf segment, something
    /// to cipher.
    #[inline]
    fn fits(params: &SymParams, len: usize) -> bool {
        len <= usize::from(u16::MAX) && !params.text.is_empty()
    }

    /// The device session of `op`'s context for its direction and AAD ([`session_for`]
    /// without the checks of the operation's own bytes).
    ///
    /// [`session_for`]: Self::session_for
    fn context_session(
        self: &Arc<Self>,
        ctx: Option<SymCtx<'_>>,
        params: &SymParams,
    ) -> Option<*mut c_void> {
        match ctx? {
            SymCtx::Aead(aead) => {
                let gcm = aead.as_any().downcast_ref::<DeviceGcm>()?;
                if !Arc::ptr_eq(&gcm.device, self) {
                    return None;
                }
                let aad_len = usize::from(params.aad_len);
                gcm.session(params.seal, aad_len).map(|s| s.ptr.as_ptr())
            }
            SymCtx::CbcHmac(ctx) => {
                let cbc = ctx.as_any().downcast_ref::<DeviceCbcHmac>()?;
                if !Arc::ptr_eq(&cbc.device, self) {
                    return None;
                }
                cbc.chain_session(params.seal)
            }
        }
    }

    /// Runs up to [`BURST`] operations: those the device takes are enqueued together and
    /// dequeued together; the others run in software meanwhile.
    fn process_burst(self: &Arc<Self>, burst: &mut [SymOp<'_>]) {
        let mut qp = self.queue();
        self.settle(&mut qp);
        // The operations handed to the device, in the order given (the array the enqueue
        // takes), and where each came from: filled as they are placed, not gathered after.
        let mut raw: [*mut sys::rte_crypto_op; BURST] = [std::ptr::null_mut(); BURST];
        let mut placed = [Placed {
            slot: 0,
            digest: std::ptr::null_mut(),
        }; BURST];
        let mut n = 0;
        // A burst is mostly one SA's: the session found for an operation serves the next
        // ones with the same context and direction without another look-up.
        let mut last: Option<(SessionKey, *mut c_void)> = None;
        for (i, op) in burst.iter_mut().enumerate() {
            let session = if qp.stuck || !Self::fits(&op.params, op.buf.len()) {
                None
            } else {
                let key = SessionKey::of(op.ctx, &op.params);
                match last {
                    Some((k, session)) if Some(k) == key => Some(session),
                    _ => {
                        let session = self.context_session(op.ctx, &op.params);
                        last = key.zip(session);
                        session
                    }
                }
            };
            let Some(session) = session else {
                if op.ctx.is_some() {
                    self.in_software();
                }
                op.run_here();
                continue;
            };
            let (dop, mbuf) = (qp.ops[n].as_ptr(), qp.mbufs[n].as_ptr());
            // SAFETY: dop and mbuf are this queue pair's n-th, idle; op.buf is exclusively
            // borrowed until the burst completes (or the queue is given up on, never to be
            // used again) before we return.
            let digest = unsafe {
                fill_op(
                    &op.params,
                    op.ctx,
                    op.buf.as_mut_ptr(),
                    op.buf.len(),
                    session,
                    dop,
                    mbuf,
                )
            };
            let Some(digest) = digest else {
                op.result = Err(CryptoError::BufferLength);
                continue;
            };
            raw[n] = dop;
            placed[n] = Placed { slot: i, digest };
            n += 1;
        }
        if n == 0 {
            return;
        }
        // Hand the burst over and take it back: the device may take fewer than offered, and
        // answers in its own time.
        let (mut sent, mut back) = (0usize, 0usize);
        let mut done: [*mut sys::rte_crypto_op; BURST] = [std::ptr::null_mut(); BURST];
        let mut polls = 0u32;
        while back < n {
            if sent < n {
                // SAFETY: raw[sent..n] are filled operations not yet enqueued; the queue pair
                // is ours under the lock.
                sent += usize::from(unsafe {
                    sys::sy_rte_cryptodev_enqueue_burst(
                        self.dev_id,
                        qp.id,
                        raw[sent..].as_mut_ptr(),
                        (n - sent) as u16,
                    )
                });
            }
            // SAFETY: dequeues at most n - back pointers into done[back..].
            let got = usize::from(unsafe {
                sys::sy_rte_cryptodev_dequeue_burst(
                    self.dev_id,
                    qp.id,
                    done[back..].as_mut_ptr(),
                    (n - back) as u16,
                )
            });
            back += got;
            if got == 0 {
                polls += 1;
                if polls == MAX_POLLS {
                    qp.stuck = true;
                    break;
                }
                std::hint::spin_loop();
            }
        }
        for (k, (p, &dop)) in placed[..n].iter().zip(&raw[..n]).enumerate() {
            let Some(op) = burst.get_mut(p.slot) else {
                continue;
            };
            // The device answers in order: the k-th operation placed is nearly always the
            // k-th dequeued, and the search is for the rare other case.
            let came_back = (k < back && done[k] == dop) || done[..back].contains(&dop);
            let status = if came_back {
                // SAFETY: a dequeued operation of ours.
                (unsafe { sys::sy_crypto_op_status(dop) }) as u32
            } else {
                u32::MAX
            };
            qp.completed += u64::from(came_back);
            op.result = status_result(status);
            qp.failed += u64::from(came_back && op.result.is_err());
            if op.result.is_ok() && op.params.seal && !p.digest.is_null() {
                let len = usize::from(op.params.icv_len).min(op.params.expected.len());
                // SAFETY: the completed operation wrote len ≤ SY_CRYPTO_DIGEST_MAX bytes
                // there; fill_op checked the destination range.
                copy_tag(op.buf, &op.params, unsafe {
                    std::slice::from_raw_parts(p.digest, len)
                });
            }
        }
    }
}
