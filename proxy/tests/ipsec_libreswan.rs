//! IKEv2 interoperability with libreswan 4.10 (pluto), a second independent IKEv2
//! implementation beside strongSwan (`ipsec_strongswan.rs`).
//!
//! pluto runs in a lab's server namespace with everything of its own in the lab directory
//! (configuration, NSS database, control socket, log), never through systemd or the `ipsec`
//! script; Switchyard's IKE daemon (`proxy/src/ipsec/`, compiled into this test) runs on a
//! thread in the node namespace, joined to pluto by a veth pair the test adds: 198.51.100.1
//! (Switchyard) and 198.51.100.2 (libreswan), PSK authentication.
//!
//! This kernel has no ESP (xfrm) and pluto has no userspace ESP, so pluto negotiates
//! IKE_SA_INIT and IKE_AUTH but cannot install the CHILD_SA it agreed on. What is checked:
//! both sides' view of the IKE SA and of the negotiated CHILD_SA (our daemon's events,
//! snapshot and counters; pluto's log and `whack --showstates`), the SPIs and algorithms
//! each side reports, and what follows pluto's failure to install kernel state. No ESP
//! traffic is tried.
//!
//! Covered: both roles with AES-GCM, AES-CBC with HMAC-SHA2, DH groups 14/19/31 and
//! libreswan's default proposals; IKE over IPv6; a wrong PSK; pluto without kernel ESP (it keeps the IKE SA
//! as responder, drops it silently as initiator) and how we cope (INITIAL_CONTACT, our
//! liveness checks); IKE SA rekeys both ways, liveness checks both ways, pluto's delete; a
//! second CHILD_SA from pluto by CREATE_CHILD_SA; IKE fragments, cookies, forced NAT-T, TS
//! narrowing, transport mode, ESN only, childless IKE_AUTH; and 24 of pluto's conformance
//! impairments (`whack --impair`). One of these, ID payloads with non-zero RESERVED octets
//! (which AUTH covers, RFC 7296 section 2.15), failed authentication both ways until
//! `ipsec/src/ike/wire.rs` kept those octets as received.
//! `SWITCHYARD_PLUTO_DEBUG=base` (any `plutodebug` value) turns on pluto's debug log.
//!
//! libreswan is found at `/usr/libexec/ipsec` (`scripts/install-deps.sh` unpacks Debian's
//! package there without installing it: it conflicts with strongSwan's). Without root or
//! pluto the tests print `skipped` and pass, unless `CI` is set.

mod common;

// The daemon and its configuration, compiled in from the binary's sources (the binary has no
// library target); `super::daemon` in config.rs resolves to the module below.
#[allow(dead_code)]
#[path = "../src/ipsec/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../src/ipsec/daemon.rs"]
mod daemon;
#[path = "common/ike.rs"]
mod ike;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{text, Lab, Ns};
use config::Resources;
use daemon::{Command, Daemon, Event};
use ike::Shell;
use switchyard_ipsec::ike::{ChildSaInstall, Failure};

const PLUTO: &str = "/usr/libexec/ipsec/pluto";
const WHACK: &str = "/usr/libexec/ipsec/whack";
const ADDCONN: &str = "/usr/libexec/ipsec/addconn";
const SY_ADDR: &str = "198.51.100.1";
const LS_ADDR: &str = "198.51.100.2";
/// The subnets behind each side (selectors only).
const SY_NET: &str = "198.18.1.0/24";
const LS_NET: &str = "203.0.113.0/24";
const PSK: &str = "switchyard-libreswan-psk";

/// pluto in the server namespace of a lab, with the link to the node namespace.
struct Pluto {
    lab: Lab,
    /// Configuration, secrets, NSS database, run directory.
    dir: PathBuf,
    ctl: PathBuf,
    pluto: Option<std::process::Child>,
}

impl Pluto {
    fn start(test: &str) -> Option<Pluto> {
        let lab = Lab::new(test, &[PLUTO, WHACK, ADDCONN, "certutil"])?;
        lab.ike_link(SY_ADDR, LS_ADDR);
        let dir = lab.dir.join("libreswan");
        for sub in ["nss", "run", "ipsec.d", "dump"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir libreswan");
        }
        // `ipsec initnss` without the script: an NSS database with an empty password.
        lab.exec_ok(
            Ns::Server,
            &format!(
                "certutil -N -d sql:{} --empty-password",
                dir.join("nss").display()
            ),
        );
        fs::write(
            dir.join("ipsec.conf"),
            format!(
                "config setup\n\
                 \x20 plutodebug={}\n\
                 \x20 logtime=yes\n",
                std::env::var("SWITCHYARD_PLUTO_DEBUG").unwrap_or_else(|_| "none".into())
            ),
        )
        .expect("write ipsec.conf");
        let secrets = dir.join("ipsec.secrets");
        fs::write(
            &secrets,
            format!(
                "{LS_ADDR} {SY_ADDR} : PSK \"{PSK}\"\n@ls.example @sy.example : PSK \"{PSK}\"\n"
            ),
        )
        .expect("write ipsec.secrets");
        let ctl = dir.join("run/pluto.ctl");
        let cmd = format!(
            "{PLUTO} --nofork --log-no-audit --config {d}/ipsec.conf --rundir {d}/run \
             --nssdir {d}/nss --ipsecdir {d}/ipsec.d --secretsfile {s} --dumpdir {d}/dump \
             --logfile {log}",
            d = dir.display(),
            s = secrets.display(),
            log = lab.dir.join("pluto.log").display(),
        );
        let child = lab.spawn(Ns::Server, "pluto", &cmd, Duration::from_secs(600));
        let mut pluto = Pluto {
            lab,
            dir,
            ctl,
            pluto: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if pluto.ctl.exists() {
                let out = pluto.whack("--status");
                if out.status.success() && text(&out.stdout).contains(&format!("{LS_ADDR}:500")) {
                    break;
                }
            }
            if let Some(c) = pluto.pluto.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("pluto exited ({status}):\n{}", pluto.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "pluto not ready after 15 s:\n{}",
                pluto.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(pluto)
    }

    /// `whack --ctlsocket CTL ARGS`, bounded.
    fn whack(&self, args: &str) -> Output {
        self.lab.exec_t(
            Ns::Server,
            &format!("{WHACK} --ctlsocket {} {args}", self.ctl.display()),
            Duration::from_secs(30),
        )
    }

    /// The command line of `whack ARGS` (for the daemon's thread to run).
    fn whack_cmd(&self, args: &str) -> String {
        format!(
            "timeout 30 {WHACK} --ctlsocket {} {args}",
            self.ctl.display()
        )
    }

    /// Replaces connection `sy` by `conn`.
    fn load(&self, conn: &Conn) {
        let _ = self.whack("--delete --name sy");
        self.add_named("sy", conn);
    }

    /// Adds `conn` to pluto as connection `name`.
    fn add_named(&self, name: &str, conn: &Conn) {
        let file = self.dir.join(format!("{name}.conf"));
        let text_ = conn
            .render()
            .replace("conn sy\n", &format!("conn {name}\n"));
        fs::write(&file, text_).expect("write conn");
        let out = self.lab.exec_t(
            Ns::Server,
            &format!(
                "{ADDCONN} --ctlsocket {} --config {} {name}",
                self.ctl.display(),
                file.display()
            ),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "addconn {name} failed:\n{}{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
    }

    /// `whack --showstates`.
    fn states(&self) -> String {
        text(&self.whack("--showstates").stdout)
    }

    /// Deletes connection `sy` and its states (pluto sends Deletes for them).
    fn clear(&self) {
        let _ = self.whack("--delete --name sy");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.states().contains("\"sy\"") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        format!(
            "--- pluto.log ---\n{}\n--- pluto.err ---\n{}",
            self.lab.read("pluto.log"),
            self.lab.read("pluto.err")
        )
    }

    /// pluto's log from byte `from` on.
    fn log_since(&self, from: usize) -> String {
        let log = self.lab.read("pluto.log");
        log.get(from..).unwrap_or_default().to_string()
    }

    fn log_len(&self) -> usize {
        self.lab.read("pluto.log").len()
    }
}

impl Drop for Pluto {
    fn drop(&mut self) {
        if let Some(mut c) = self.pluto.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            if common::wait_bounded(&mut c, Duration::from_secs(5)).is_none() {
                eprintln!("pluto killed");
            }
        }
        // The lab (namespaces, anything left in them) goes with `self.lab`.
    }
}

/// libreswan's side of a case: connection `sy` in ipsec.conf syntax.
#[derive(Clone, Copy, Debug)]
struct Conn {
    /// `ike=` and `esp=` (empty: libreswan's defaults).
    ike: &'static str,
    esp: &'static str,
    fqdn_ids: bool,
    /// More `key=value` lines.
    extra: &'static str,
}

const CONN: Conn = Conn {
    ike: "",
    esp: "",
    fqdn_ids: false,
    extra: "",
};

impl Conn {
    fn render(&self) -> String {
        let (left_id, right_id) = if self.fqdn_ids {
            ("@ls.example", "@sy.example")
        } else {
            (LS_ADDR, SY_ADDR)
        };
        let mut lines = vec![
            "ikev2=yes".to_string(),
            "authby=secret".to_string(),
            format!("left={LS_ADDR}"),
            format!("leftid={left_id}"),
            format!("leftsubnet={LS_NET}"),
            // No kernel routing or firewall changes (and no `ipsec` script).
            "leftupdown=%disabled".to_string(),
            format!("right={SY_ADDR}"),
            format!("rightid={right_id}"),
            format!("rightsubnet={SY_NET}"),
            "retransmit-timeout=10s".to_string(),
            "auto=add".to_string(),
        ];
        if !self.ike.is_empty() {
            lines.push(format!("ike={}", self.ike));
        }
        if !self.esp.is_empty() {
            lines.push(format!("esp={}", self.esp));
        }
        // `extra` lines replace the defaults of the same key.
        for line in self.extra.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let key = line.split('=').next().unwrap_or(line);
            lines.retain(|l| !l.starts_with(&format!("{key}=")));
            lines.push(line.to_string());
        }
        let body: String = lines.iter().map(|l| format!("  {l}\n")).collect();
        format!("config setup\n\nconn sy\n{body}")
    }
}

/// Switchyard's side of a case.
#[derive(Clone, Copy, Debug)]
struct Ours {
    we_initiate: bool,
    ike: &'static str,
    esp: &'static str,
    fqdn_ids: bool,
    /// Our own liveness checks.
    dpd: Option<Duration>,
    /// Our IKE SA rekey period.
    ike_lifetime: Option<Duration>,
    /// Our IKE fragment size (`None`: the default).
    fragment_size: Option<usize>,
    /// We ask every initiator for a COOKIE (RFC 7296 section 2.6).
    cookies: bool,
    psk: &'static str,
}

const OURS: Ours = Ours {
    we_initiate: true,
    ike: "aes128gcm16-prfsha256-ecp256",
    esp: "aes128gcm16",
    fqdn_ids: false,
    dpd: None,
    ike_lifetime: None,
    fragment_size: None,
    cookies: false,
    psk: PSK,
};

impl Ours {
    fn resources(&self) -> Resources {
        let (local_id, remote_id) = if self.fqdn_ids {
            ("@sy.example", "@ls.example")
        } else {
            ("", LS_ADDR)
        };
        ike::Site {
            remote: LS_ADDR,
            local_id,
            remote_id,
            psk: self.psk,
            ike: self.ike,
            esp: self.esp,
            start: self.we_initiate,
            local_subnet: SY_NET,
            remote_subnet: LS_NET,
        }
        .resources()
    }
}

/// Runs `body` with our IKE daemon for `ours` in the node namespace, on a thread of its own,
/// with a way to run shell commands in pluto's namespace. Panics with pluto's log when
/// `body` fails.
fn with_daemon<T, F, Fut>(pluto: &Pluto, ours: &Ours, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Daemon, Shell) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut config = ours
        .resources()
        .daemon_config(SY_ADDR.parse().expect("address"))
        .expect("daemon config");
    config.reconnect = None;
    config.engine.dpd_delay = ours.dpd;
    config.engine.fragment_size = ours.fragment_size;
    if ours.cookies {
        config.engine.cookie_threshold = Some(0);
    }
    for p in &mut config.engine.peers {
        p.ike_lifetime = ours.ike_lifetime;
    }
    let netns = format!("/run/netns/{}", pluto.lab.ns(Ns::Node));
    let shell = Shell {
        ns: pluto.lab.ns(Ns::Server),
    };
    let handle = std::thread::spawn(move || -> Result<T, String> {
        let runtime = common::runtime_in_netns(&netns)?;
        runtime.block_on(async move {
            let daemon = Daemon::start(config).map_err(|e| format!("daemon: {e}"))?;
            body(daemon, shell).await
        })
    });
    match handle.join() {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("{e}\n{}", pluto.log()),
        Err(_) => panic!("daemon thread panicked\n{}", pluto.log()),
    }
}

/// Waits (at most `secs`) for an event whose debug form starts with `wanted`; a `Failed`
/// event ends the wait with an error.
async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    wanted: &'static str,
    secs: u64,
) -> Result<Event, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => {
                let name = format!("{e:?}");
                if name.starts_with(wanted) {
                    return Ok(e);
                }
                if wanted != "Failed" && matches!(e, Event::Failed { .. }) {
                    return Err(format!("waiting for {wanted}: {name}"));
                }
            }
            _ => return Err(format!("no {wanted} event in {secs} s")),
        }
    }
}

/// What one set-up showed.
#[derive(Debug, Default)]
struct Seen {
    child: Option<std::sync::Arc<ChildSaInstall>>,
    /// Events after the CHILD_SA, in the seconds that follow.
    later: Vec<String>,
    states_up: String,
    states_after: String,
    initiate: String,
    counters: Option<switchyard_ipsec::ike::IkeCounters>,
    ike_sas_left: usize,
    child_sas_left: usize,
    failed: Option<Failure>,
}

/// Sets up an IKE SA with its CHILD_SA (started by us or by pluto), then watches for
/// `watch` seconds what follows.
fn establish(pluto: &Pluto, conn: &Conn, ours: &Ours, watch: u64) -> Seen {
    establish_within(pluto, conn, ours, 20, watch)
}

/// [`establish`], waiting at most `wait` seconds for the CHILD_SA (or a failure).
fn establish_within(pluto: &Pluto, conn: &Conn, ours: &Ours, wait: u64, watch: u64) -> Seen {
    pluto.load(conn);
    let initiate = (!ours.we_initiate).then(|| pluto.whack_cmd("--initiate --name sy"));
    let states = pluto.whack_cmd("--showstates");
    with_daemon(pluto, ours, move |mut daemon, sh| async move {
        let mut seen = Seen::default();
        let initiation = initiate.map(|cmd| {
            let sh = sh.clone();
            tokio::spawn(async move { sh.run(cmd).await })
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        loop {
            match tokio::time::timeout_at(deadline, daemon.events.recv()).await {
                Ok(Some(Event::ChildInstalled(c))) => {
                    seen.child = Some(c);
                    break;
                }
                Ok(Some(Event::Failed { reason, .. }))
                | Ok(Some(Event::ChildFailed { reason, .. })) => {
                    seen.failed = Some(reason);
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        seen.states_up = sh.run(states.clone()).await;
        let until = tokio::time::Instant::now() + Duration::from_secs(watch);
        while let Ok(Some(e)) = tokio::time::timeout_at(until, daemon.events.recv()).await {
            seen.later.push(format!("{e:?}"));
        }
        if let Some(i) = initiation {
            seen.initiate = i.await.unwrap_or_default();
        }
        seen.states_after = sh.run(states).await;
        let snapshot = daemon.snapshot();
        seen.ike_sas_left = snapshot.ike_sas.len();
        seen.child_sas_left = snapshot.child_sas.len();
        seen.counters = Some(snapshot.counters);
        daemon.command(Command::DeleteAll);
        daemon.shutdown().await;
        Ok(seen)
    })
}

/// pluto's IKE SA (its state number) in `whack --showstates`.
fn ike_serial(states: &str) -> Option<u32> {
    states
        .lines()
        .filter(|l| l.contains("STATE_V2_ESTABLISHED_IKE_SA"))
        .filter_map(|l| {
            let rest = l.split('#').nth(1)?;
            rest.split(':').next()?.parse().ok()
        })
        .max()
}

/// The lines of pluto's log (without time stamps and its configuration listing) that
/// contain `what`.
fn log_lines(log: &str, what: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(what))
        .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest).to_string())
        .collect()
}

/// What pluto logs for an IKE suite (`{cipher=... integ=... prf=... group=...}`).
struct Suite {
    /// libreswan's `ike=` and `esp=`, empty for its defaults.
    ike: &'static str,
    esp: &'static str,
    /// Ours.
    our_ike: &'static str,
    our_esp: &'static str,
    /// What pluto logs for the IKE SA and the CHILD_SA it picked or was given.
    shown: &'static str,
    esp_shown: &'static str,
}

const SUITES: &[Suite] = &[
    Suite {
        ike: "aes_gcm128-sha2_256-dh14",
        esp: "aes_gcm128",
        our_ike: "aes128gcm16-prfsha256-modp2048",
        our_esp: "aes128gcm16",
        shown: "{cipher=AES_GCM_16_128 integ=n/a prf=HMAC_SHA2_256 group=MODP2048}",
        esp_shown: "ESP=AES_GCM_C_128-DISABLED",
    },
    Suite {
        ike: "aes_gcm128-sha2_256-dh19",
        esp: "aes_gcm128",
        our_ike: "aes128gcm16-prfsha256-ecp256",
        our_esp: "aes128gcm16",
        shown: "{cipher=AES_GCM_16_128 integ=n/a prf=HMAC_SHA2_256 group=DH19}",
        esp_shown: "ESP=AES_GCM_C_128-DISABLED",
    },
    Suite {
        ike: "aes_gcm256-sha2_512-dh31",
        esp: "aes_gcm256",
        our_ike: "aes256gcm16-prfsha512-x25519",
        our_esp: "aes256gcm16",
        shown: "{cipher=AES_GCM_16_256 integ=n/a prf=HMAC_SHA2_512 group=DH31}",
        esp_shown: "ESP=AES_GCM_C_256-DISABLED",
    },
    Suite {
        ike: "aes256-sha2_256-dh14",
        esp: "aes256-sha2_256",
        our_ike: "aes256-sha256-modp2048",
        our_esp: "aes256-sha256",
        shown: "{cipher=AES_CBC_256 integ=HMAC_SHA2_256_128 prf=HMAC_SHA2_256 group=MODP2048}",
        esp_shown: "ESP=AES_CBC_256-HMAC_SHA2_256_128-DISABLED",
    },
    Suite {
        ike: "aes256-sha2_256-dh19",
        esp: "aes256-sha2_256",
        our_ike: "aes256-sha256-ecp256",
        our_esp: "aes256-sha256",
        shown: "{cipher=AES_CBC_256 integ=HMAC_SHA2_256_128 prf=HMAC_SHA2_256 group=DH19}",
        esp_shown: "ESP=AES_CBC_256-HMAC_SHA2_256_128-DISABLED",
    },
    Suite {
        ike: "aes128-sha2_512-dh31",
        esp: "aes128-sha2_512",
        our_ike: "aes128-sha512-x25519",
        our_esp: "aes128-sha512",
        shown: "{cipher=AES_CBC_128 integ=HMAC_SHA2_512_256 prf=HMAC_SHA2_512 group=DH31}",
        esp_shown: "ESP=AES_CBC_128-HMAC_SHA2_512_256-DISABLED",
    },
    // libreswan's default proposals (four: AES-GCM-256/128 and AES-CBC-256/128, PRF
    // SHA2-512 or -256, eight groups, KE guessed for MODP2048; ESP with ESN either way).
    // Ours are not its first choice: as responder we answer its KE guess with
    // INVALID_KE_PAYLOAD.
    Suite {
        ike: "",
        esp: "",
        our_ike: "aes256gcm16-prfsha512-x25519",
        our_esp: "aes256gcm16",
        shown: "{cipher=AES_GCM_16_256 integ=n/a prf=HMAC_SHA2_512 group=DH31}",
        esp_shown: "ESP=AES_GCM_C_256-DISABLED",
    },
    Suite {
        ike: "",
        esp: "",
        our_ike: "aes128-sha256-ecp256",
        our_esp: "aes128-sha256",
        shown: "{cipher=AES_CBC_128 integ=HMAC_SHA2_256_128 prf=HMAC_SHA2_256 group=DH19}",
        esp_shown: "ESP=AES_CBC_128-HMAC_SHA2_256_128-DISABLED",
    },
];

/// TS_UNACCEPTABLE (RFC 7296 section 3.10.1): what pluto answers for a CHILD_SA whose kernel
/// state it could not install.
const TS_UNACCEPTABLE: u16 = 38;

/// Checks one set-up of `suite` both sides saw; `Err` says what is wrong.
fn check_suite(suite: &Suite, we_initiate: bool, seen: &Seen, log: &str) -> Result<(), String> {
    let k = seen.counters.as_ref().ok_or("no counters")?;
    if k.established != 1 || k.failed != 0 || k.auth_failures != 0 {
        return Err(format!("our IKE SA: {k:?}"));
    }
    if we_initiate {
        // pluto as responder: IKE SA up on both sides, the CHILD_SA agreed on, its
        // kernel state refused, and the CHILD_SA answered with TS_UNACCEPTABLE; the IKE
        // SA stays on both sides.
        for line in [
            "responder established IKE SA; authenticated peer using authby=secret".to_string(),
            format!("sent IKE_SA_INIT reply {}", suite.shown),
            format!("proposal 1:{} SPI=", suite.esp_shown),
            "netlink response for Add SA esp.".to_string(),
        ] {
            if log_lines(log, &line).is_empty() {
                return Err(format!("pluto logged no {line:?}"));
            }
        }
        if seen.failed != Some(Failure::PeerError(TS_UNACCEPTABLE)) || seen.child.is_some() {
            return Err(format!("our CHILD_SA: {:?}", seen.failed));
        }
        if !seen.states_up.contains("STATE_V2_ESTABLISHED_IKE_SA") || seen.ike_sas_left != 1 {
            return Err(format!("the IKE SA did not stay: {}", seen.states_up));
        }
    } else {
        // pluto as initiator: IKE SA and CHILD_SA up on our side; pluto agreed on the same
        // SPIs (it tried to install its outbound SA with our inbound SPI).
        let child = seen.child.as_ref().ok_or("we installed no CHILD_SA")?;
        for line in [
            "initiator established IKE SA; authenticated peer using authby=secret".to_string(),
            format!("sent IKE_AUTH request {}", suite.shown),
            format!(
                "netlink response for Add SA esp.{:x}@{SY_ADDR}",
                child.inbound.spi
            ),
        ] {
            if log_lines(log, &line).is_empty() {
                return Err(format!("pluto logged no {line:?}"));
            }
        }
        let want = switchyard_ipsec::ike::proposal::EspProposal::parse(suite.our_esp)
            .map_err(|e| format!("{e}"))?;
        let got = format!("{:?}", child.inbound.suite);
        let expected = match (want.encryption[0].aead(), want.encryption[0].cbc()) {
            (Some(a), _) => format!("Gcm({a:?})"),
            (None, Some(c)) => format!("CbcHmac({c:?}, {:?})", want.integrity[0]),
            _ => String::new(),
        };
        if got != expected || child.inbound.esn || child.udp_encap.is_some() {
            return Err(format!("our CHILD_SA: {child:?}"));
        }
    }
    Ok(())
}

/// Both roles, AES-GCM and AES-CBC with HMAC-SHA2, DH groups 14, 19 and 31, and libreswan's
/// default proposals: each side's view of the IKE SA and the CHILD_SA.
#[test]
fn ike_with_libreswan_both_roles_all_suites() {
    let Some(pluto) = Pluto::start("ipsec_lsw_suites") else {
        return;
    };
    // pluto as initiator would start again at once each time it drops its IKE SA (below).
    let _ = pluto.whack("--impair revival");
    let mut failures = Vec::new();
    for we_initiate in [true, false] {
        for suite in SUITES {
            let conn = Conn {
                ike: suite.ike,
                esp: suite.esp,
                ..CONN
            };
            let ours = Ours {
                we_initiate,
                ike: suite.our_ike,
                esp: suite.our_esp,
                ..OURS
            };
            let from = pluto.log_len();
            let seen = establish(&pluto, &conn, &ours, 0);
            let log = pluto.log_since(from);
            match check_suite(suite, we_initiate, &seen, &log) {
                Ok(()) => eprintln!("ok: we_initiate={we_initiate} {}", suite.shown),
                Err(e) => {
                    eprintln!(
                        "FAILED: we_initiate={we_initiate} {} {}: {e}\n{seen:#?}\n{log}",
                        suite.ike, suite.our_ike
                    );
                    failures.push(format!("we_initiate={we_initiate} {}: {e}", suite.our_ike));
                }
            }
            pluto.clear();
        }
    }
    assert!(failures.is_empty(), "cases failed: {failures:#?}");
}

#[test]
fn ike_with_libreswan_wrong_psk_fails_on_both_sides() {
    let Some(pluto) = Pluto::start("ipsec_lsw_psk") else {
        return;
    };
    let _ = pluto.whack("--impair revival");
    for we_initiate in [true, false] {
        let ours = Ours {
            we_initiate,
            psk: "not-the-psk",
            ..OURS
        };
        let from = pluto.log_len();
        let seen = establish(&pluto, &CONN, &ours, 1);
        let log = pluto.log_since(from);
        let context = format!("we_initiate={we_initiate}\n{seen:#?}\n{log}");
        assert_eq!(
            seen.failed,
            Some(Failure::AuthenticationFailed),
            "{context}"
        );
        assert!(seen.child.is_none(), "{context}");
        assert_eq!(seen.ike_sas_left, 0, "we kept an SA: {context}");
        assert!(
            !seen.states_after.contains("\"sy\""),
            "pluto kept an SA: {context}"
        );
        let k = seen.counters.as_ref().expect("counters");
        if we_initiate {
            // pluto refuses our AUTH.
            assert!(
                !log_lines(&log, "with encrypted notification AUTHENTICATION_FAILED").is_empty(),
                "{context}"
            );
        } else {
            // We refuse pluto's AUTH and tell it so.
            assert_eq!(k.auth_failures, 1, "{context}");
            assert!(
                !log_lines(&log, "AUTHENTICATION_FAILED").is_empty(),
                "pluto did not see AUTHENTICATION_FAILED: {context}"
            );
        }
        pluto.clear();
    }
}

/// What pluto does when it cannot install the kernel state of a CHILD_SA it negotiated
/// (no ESP in this kernel: `netlink response for Add SA ...: Function not implemented`),
/// and how we cope:
///
/// * as responder it answers our IKE_AUTH with the IKE SA's AUTH and TS_UNACCEPTABLE for
///   the CHILD_SA and keeps the IKE SA: we keep ours, it answers our liveness checks;
/// * as initiator it drops its IKE SA without a Delete ("NOT sending notification") and,
///   the connection being up by policy, starts a new one (revival): with INITIAL_CONTACT
///   (`initial-contact=yes`) the new IKE SA takes the old ones off our side; without it our
///   liveness checks find the old ones dead (pluto drops requests for IKE SAs it no longer
///   has, unanswered) and they fail with a timeout.
#[test]
fn libreswan_without_kernel_esp() {
    let Some(pluto) = Pluto::start("ipsec_lsw_nokernel") else {
        return;
    };
    // As responder: the IKE SA stays, on both sides.
    let seen = establish(&pluto, &CONN, &OURS, 2);
    let context = format!("{seen:#?}\n{}", pluto.log());
    assert_eq!(
        seen.failed,
        Some(Failure::PeerError(TS_UNACCEPTABLE)),
        "{context}"
    );
    assert_eq!(seen.ike_sas_left, 1, "{context}");
    assert!(
        seen.states_after.contains("STATE_V2_ESTABLISHED_IKE_SA"),
        "{context}"
    );
    pluto.clear();

    // As initiator, with INITIAL_CONTACT: pluto's next IKE SA replaces the one it dropped.
    let conn = Conn {
        extra: "initial-contact=yes",
        ..CONN
    };
    let ours = Ours {
        we_initiate: false,
        ..OURS
    };
    let from = pluto.log_len();
    // The first revival comes at once, the next after 5 s.
    let seen = establish(&pluto, &conn, &ours, 7);
    let log = pluto.log_since(from);
    let context = format!("{seen:#?}\n{log}");
    assert!(seen.child.is_some(), "{context}");
    for line in [
        "sending INITIAL_CONTACT",
        "CHILD SA encountered fatal error",
        "and NOT sending notification",
        "must remain up per local policy",
    ] {
        assert!(!log_lines(&log, line).is_empty(), "no {line:?}: {context}");
    }
    let k = seen.counters.as_ref().expect("counters");
    assert!(k.established >= 3, "{context}");
    assert_eq!(k.initial_contact_removals, k.established - 1, "{context}");
    assert_eq!(
        (seen.ike_sas_left, seen.child_sas_left),
        (1, 1),
        "{context}"
    );
    pluto.clear();

    // As initiator, without INITIAL_CONTACT (libreswan's default): our liveness checks
    // find the dropped IKE SA dead.
    let _ = pluto.whack("--impair revival");
    pluto.load(&CONN);
    let initiate = pluto.whack_cmd("--initiate --name sy");
    let mut config = ours
        .resources()
        .daemon_config(SY_ADDR.parse().expect("address"))
        .expect("daemon config");
    config.reconnect = None;
    config.engine.dpd_delay = Some(Duration::from_secs(1));
    config.engine.retransmit_base = Duration::from_millis(200);
    config.engine.retransmit_limit = 3;
    let netns = format!("/run/netns/{}", pluto.lab.ns(Ns::Node));
    let sh = Shell {
        ns: pluto.lab.ns(Ns::Server),
    };
    let handle = std::thread::spawn(move || -> Result<String, String> {
        let runtime = common::runtime_in_netns(&netns)?;
        runtime.block_on(async move {
            let mut daemon = Daemon::start(config).map_err(|e| format!("daemon: {e}"))?;
            let out = sh.run(initiate).await;
            next_event(&mut daemon.events, "ChildInstalled", 10)
                .await
                .map_err(|e| format!("{e}: {out}"))?;
            let failed = next_event(&mut daemon.events, "Failed", 15).await?;
            let snapshot = daemon.snapshot();
            daemon.shutdown().await;
            let k = snapshot.counters;
            if !matches!(
                failed,
                Event::Failed {
                    reason: Failure::Timeout,
                    ..
                }
            ) || k.dpd_sent == 0
                || !snapshot.ike_sas.is_empty()
                || !snapshot.child_sas.is_empty()
            {
                return Err(format!("{failed:?} {snapshot:?}"));
            }
            Ok(format!("{failed:?} {k:?}"))
        })
    });
    match handle.join() {
        Ok(Ok(log)) => eprintln!("{log}"),
        Ok(Err(e)) => panic!("{e}\n{}", pluto.log()),
        Err(_) => panic!("daemon thread panicked\n{}", pluto.log()),
    }
    let log = pluto.log();
    assert!(
        !log_lines(
            &log,
            "INFORMATIONAL request has no corresponding IKE SA; message dropped"
        )
        .is_empty(),
        "{log}"
    );
}

/// The IKE SA's life with pluto (which keeps it as responder, its CHILD_SA refused):
/// pluto rekeys it twice (CREATE_CHILD_SA, RFC 7296 section 1.3.2), checks liveness on the
/// newest (section 2.4, answered), our own liveness check is answered, and pluto deletes
/// it (`whack --deletestate`): we close it. Then we rekey an IKE SA with pluto as responder
/// (every 3 s, two groups offered), and delete it.
#[test]
fn ike_with_libreswan_rekeys_liveness_and_deletes() {
    let Some(pluto) = Pluto::start("ipsec_lsw_life") else {
        return;
    };
    // libreswan's default proposals: its rekey offers all four again, KE for the SA's group.
    let conn = CONN;
    pluto.load(&conn);
    let ours = Ours {
        ike: "aes256-sha512-x25519",
        esp: "aes256-sha512",
        ..OURS
    };
    let whack = |a: &str| pluto.whack_cmd(a);
    let (rekey, states) = (whack("--rekey-ike --name sy"), whack("--showstates"));
    let whack_base = whack("");
    let from = pluto.log_len();
    let log = with_daemon(&pluto, &ours, move |mut daemon, sh| async move {
        let mut log = Vec::new();
        let e = next_event(&mut daemon.events, "ChildFailed", 10).await?;
        log.push(format!("{e:?}"));
        for round in 0..2 {
            log.push(sh.run(rekey.clone()).await);
            next_event(&mut daemon.events, "Closed", 10)
                .await
                .map_err(|e| format!("rekey {round}: {e}\n{log:?}"))?;
        }
        let snapshot = daemon.snapshot();
        let k = snapshot.counters;
        if k.ike_sas_rekeyed != 2 || snapshot.ike_sas.len() != 1 || k.failed != 0 {
            return Err(format!("after pluto's rekeys: {snapshot:?}"));
        }
        let listed = sh.run(states.clone()).await;
        let serial = ike_serial(&listed).ok_or(format!("no IKE SA:\n{listed}"))?;
        // pluto's liveness check on the newest IKE SA.
        let before = daemon.snapshot().counters.rx_messages;
        log.push(
            sh.run(format!(
                "{whack_base} --impair initiate-v2-liveness:{serial}"
            ))
            .await,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let k = daemon.snapshot().counters;
        if k.rx_messages != before + 1 || k.rx_unknown_spi != 0 || k.rx_unexpected != 0 {
            return Err(format!("pluto's liveness check: {k:?}"));
        }
        // Ours.
        daemon.command(Command::Dpd(snapshot.ike_sas[0].0));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let k = daemon.snapshot().counters;
        if k.retransmits != 0 || k.failed != 0 || k.rx_messages != before + 2 {
            return Err(format!("our liveness check: {k:?}"));
        }
        // pluto deletes the IKE SA.
        log.push(sh.run(format!("{whack_base} --deletestate {serial}")).await);
        next_event(&mut daemon.events, "Closed", 10).await?;
        let snapshot = daemon.snapshot();
        if !snapshot.ike_sas.is_empty() || snapshot.counters.failed != 0 {
            return Err(format!("after pluto's delete: {snapshot:?}"));
        }
        let listed = sh.run(states).await;
        if listed.contains("\"sy\"") {
            return Err(format!("pluto kept an SA:\n{listed}"));
        }
        log.push(format!("{:?}", snapshot.counters));
        daemon.shutdown().await;
        Ok(log)
    });
    eprintln!("{}", log.join("\n"));
    let plog = pluto.log_since(from);
    let rekeyed = log_lines(&plog, "initiator rekeyed IKE SA");
    assert_eq!(rekeyed.len(), 2, "{plog}");
    for line in rekeyed {
        assert!(
            line.contains(
                "{cipher=AES_CBC_256 integ=HMAC_SHA2_512_256 prf=HMAC_SHA2_512 group=DH31}"
            ),
            "{line}"
        );
    }
    pluto.clear();

    // We rekey, pluto answers.
    let ours = Ours {
        ike: "aes128gcm16-prfsha256-ecp256-x25519",
        ike_lifetime: Some(Duration::from_secs(3)),
        ..OURS
    };
    pluto.load(&CONN);
    let states = pluto.whack_cmd("--showstates");
    let from = pluto.log_len();
    let out = with_daemon(&pluto, &ours, move |mut daemon, sh| async move {
        next_event(&mut daemon.events, "ChildFailed", 10).await?;
        // Two rekeys of ours (each up to a tenth early).
        tokio::time::sleep(Duration::from_millis(6800)).await;
        let snapshot = daemon.snapshot();
        let k = snapshot.counters;
        if k.ike_rekeys_started < 2 || k.ike_rekey_failures != 0 || k.invalid_ke != 0 {
            return Err(format!("our rekeys: {k:?}"));
        }
        if snapshot.ike_sas.len() != 1 {
            return Err(format!("after our rekeys: {snapshot:?}"));
        }
        let listed = sh.run(states.clone()).await;
        daemon.command(Command::DeleteAll);
        next_event(&mut daemon.events, "Closed", 10).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = sh.run(states).await;
        daemon.shutdown().await;
        Ok((listed, after))
    });
    let plog = pluto.log_since(from);
    assert!(
        log_lines(&plog, "responder rekeyed IKE SA").len() >= 2,
        "{out:?}\n{plog}"
    );
    assert!(
        out.0.contains("STATE_V2_ESTABLISHED_IKE_SA") && !out.1.contains("\"sy\""),
        "{out:?}\n{plog}"
    );
}

/// More of what libreswan does, each both ways where it applies: IKE fragmentation
/// (RFC 7383: ours at 200-byte fragments, put together by pluto), cookies (RFC 7296
/// section 2.6: asked for by us, with pluto's INVALID_KE_PAYLOAD retry in between, and by
/// pluto under `--ddos-busy`), NAT-T forced by pluto (`encapsulation=yes`: its NAT-D
/// claims a NAT, both sides move to 4500 and encapsulate), wider selectors from pluto
/// (`narrowing=yes`: we narrow TSr to ours), a transport-mode request (we answer tunnel
/// mode; pluto refuses and deletes the CHILD_SA, which we drop), ESN only (NO_PROPOSAL_CHOSEN
/// for the CHILD_SA, the IKE SA stays), and a childless IKE_AUTH (RFC 6023, which we do not
/// announce: INVALID_SYNTAX).
#[test]
fn ike_with_libreswan_fragments_cookies_nat_t_and_options() {
    let Some(pluto) = Pluto::start("ipsec_lsw_options") else {
        return;
    };
    let _ = pluto.whack("--impair revival");
    let responder = Ours {
        we_initiate: false,
        ..OURS
    };
    let run = |name: &str, conn: Conn, ours: Ours| -> (Seen, String) {
        let from = pluto.log_len();
        let seen = establish(&pluto, &conn, &ours, 1);
        let log = pluto.log_since(from);
        eprintln!(
            "{name}: child {:?} failed {:?}",
            seen.child
                .as_ref()
                .map(|c| (c.udp_encap, c.local_ts.clone())),
            seen.failed
        );
        pluto.clear();
        (seen, log)
    };

    // Fragments of ours, both roles.
    for we_initiate in [true, false] {
        let ours = Ours {
            we_initiate,
            fragment_size: Some(200),
            fqdn_ids: true,
            ..OURS
        };
        let conn = Conn {
            fqdn_ids: true,
            ..CONN
        };
        let (seen, log) = run("fragments", conn, ours);
        let k = seen.counters.as_ref().expect("counters");
        assert!(
            k.tx_fragments >= 2 && k.established == 1,
            "{seen:#?}\n{log}"
        );
        assert!(
            !log_lines(&log, "established IKE SA; authenticated peer using authby=secret and ID_FQDN '@sy.example'").is_empty(),
            "{log}"
        );
    }

    // Our cookies.
    let (seen, log) = run(
        "our cookies",
        CONN,
        Ours {
            cookies: true,
            ..responder
        },
    );
    let k = seen.counters.as_ref().expect("counters");
    assert!(
        seen.child.is_some() && k.cookies_sent >= 1 && k.established == 1,
        "{seen:#?}\n{log}"
    );
    assert!(
        !log_lines(&log, "received anti-DDOS COOKIE response").is_empty(),
        "{log}"
    );

    // pluto's cookies.
    let out = pluto.whack("--ddos-busy");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (seen, log) = run("pluto's cookies", CONN, OURS);
    let _ = pluto.whack("--ddos-auto");
    assert_eq!(
        seen.counters.as_ref().map(|k| k.established),
        Some(1),
        "{seen:#?}\n{log}"
    );
    assert!(
        !log_lines(&log, "responding to IKE_SA_INIT with cookie").is_empty(),
        "{log}"
    );

    // NAT-T forced by pluto, both roles.
    for (we_initiate, name) in [(false, "encapsulation"), (true, "encapsulation, we start")] {
        let conn = Conn {
            extra: "encapsulation=yes",
            ..CONN
        };
        let (seen, log) = run(
            name,
            conn,
            Ours {
                we_initiate,
                ..OURS
            },
        );
        assert_eq!(
            seen.counters.as_ref().map(|k| k.established),
            Some(1),
            "{seen:#?}\n{log}"
        );
        if we_initiate {
            assert!(
                !log_lines(&log, "netlink response for Add SA esp.").is_empty()
                    && seen.failed == Some(Failure::PeerError(TS_UNACCEPTABLE)),
                "{seen:#?}\n{log}"
            );
        } else {
            let child = seen.child.as_ref().expect("CHILD_SA");
            assert_eq!(child.udp_encap, Some((4500, 4500)), "{seen:#?}\n{log}");
        }
    }

    // Narrowing: pluto asks for 198.18.0.0/16 on our side; we narrow to our /24.
    let conn = Conn {
        extra: "rightsubnet=198.18.0.0/16\nnarrowing=yes",
        ..CONN
    };
    let (seen, log) = run("narrowing", conn, responder);
    let child = seen.child.as_ref().expect("CHILD_SA");
    assert_eq!(
        (child.local_ts[0].start, child.local_ts[0].end),
        (
            "198.18.1.0".parse::<std::net::IpAddr>().expect("address"),
            "198.18.1.255".parse().expect("address")
        ),
        "{seen:#?}\n{log}"
    );
    assert!(
        !log_lines(&log, &format!("esp.{:x}@{SY_ADDR}", child.inbound.spi)).is_empty(),
        "{log}"
    );

    // Transport mode asked for: we answer for a tunnel; pluto refuses and deletes it.
    let conn = Conn {
        extra: "type=transport",
        ..CONN
    };
    let (seen, log) = run("transport", conn, responder);
    assert!(seen.child.is_some(), "{seen:#?}\n{log}");
    assert!(
        seen.later.iter().any(|e| e.starts_with("ChildDeleted")) && seen.child_sas_left == 0,
        "{seen:#?}\n{log}"
    );
    assert!(
        !log_lines(&log, "local policy requires Transport Mode").is_empty(),
        "{log}"
    );

    // ESN only.
    let conn = Conn {
        extra: "esn=yes",
        ..CONN
    };
    let (seen, log) = run("esn", conn, responder);
    assert!(
        seen.child.is_none() && seen.ike_sas_left == 1,
        "{seen:#?}\n{log}"
    );
    assert!(
        !log_lines(
            &log,
            "IKE_AUTH response rejected Child SA with NO_PROPOSAL_CHOSEN"
        )
        .is_empty(),
        "{log}"
    );

    // Childless IKE_AUTH.
    let _ = pluto.whack("--impair omit-v2-ike-auth-child");
    let (seen, log) = run("childless", CONN, responder);
    let _ = pluto.whack("--impair none");
    assert_eq!(
        seen.failed,
        Some(Failure::InvalidSyntax),
        "{seen:#?}\n{log}"
    );
    assert!(
        !log_lines(
            &log,
            "IKE SA authentication request rejected by peer: INVALID_SYNTAX"
        )
        .is_empty(),
        "{log}"
    );
}

/// How one of libreswan's impairments must turn out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// The IKE SA is set up as without the impairment (and, pluto initiating, our CHILD_SA).
    Up,
    /// No IKE SA; pluto logs the given line.
    Refused(&'static str),
    /// The IKE SA is set up, its CHILD_SA refused by us with NO_PROPOSAL_CHOSEN.
    ChildRefused,
}

/// libreswan's test impairments (`whack --impair`), each what a conformance suite throws at
/// a peer: RFC 7296 section 3.5's RESERVED octets of the ID payload set (AUTH covers them:
/// this failed AUTH before, both ways), reserved fields and flags set, a higher minor
/// version, unknown payloads (critical or not, in the clear and encrypted), every message
/// sent twice, unknown transform IDs, key length attributes left out, an empty KE payload,
/// a higher major version, an IKE_AUTH answer of the wrong exchange type. `r:` marks
/// pluto as responder.
#[test]
fn ike_with_libreswan_impairments() {
    let Some(pluto) = Pluto::start("ipsec_lsw_impairs") else {
        return;
    };
    use Outcome::*;
    let cases: &[(&str, Outcome)] = &[
        ("send-nonzero-reserved-id", Up),
        ("r:send-nonzero-reserved-id", Up),
        ("send-nonzero-reserved", Up),
        ("r:send-nonzero-reserved", Up),
        ("send-bogus-payload-flag", Up),
        ("r:send-bogus-payload-flag", Up),
        ("send-bogus-isakmp-flag", Up),
        ("r:send-bogus-isakmp-flag", Up),
        ("minor-version-bump", Up),
        ("r:minor-version-bump", Up),
        ("add-unknown-v2-payload-to:IKE_SA_INIT", Up),
        ("r:add-unknown-v2-payload-to:IKE_SA_INIT", Up),
        ("add-unknown-v2-payload-to-sk:IKE_AUTH", Up),
        ("r:add-unknown-v2-payload-to-sk:IKE_AUTH", Up),
        (
            "add-unknown-v2-payload-to-sk:IKE_AUTH,unknown-v2-payload-critical",
            Refused("rejected by peer: UNSUPPORTED_CRITICAL_PAYLOAD"),
        ),
        ("jacob-two-two", Up),
        ("r:jacob-two-two", Up),
        // ENCR with an unknown transform ID (1023) added to the first proposal.
        ("ikev2-add-ike-transform:66559", Up),
        ("ikev2-add-child-transform:66559", Up),
        // AES without its key length (mandatory, RFC 7296 section 3.3.5).
        (
            "ike-key-length-attribute:OMIT",
            Refused("containing NO_PROPOSAL_CHOSEN notification"),
        ),
        ("child-key-length-attribute:OMIT", ChildRefused),
        (
            "major-version-bump",
            Refused("containing INVALID_MAJOR_VERSION notification"),
        ),
        // Dropped unanswered (an unprotected INVALID_SYNTAX would be forgeable).
        ("ke-payload:EMPTY", Refused("sent IKE_SA_INIT request")),
        (
            "r:bad-ikev2-auth-xchg",
            Refused("Instead of replying with IKE_AUTH, forging an INFORMATIONAL reply"),
        ),
    ];
    let mut failures = Vec::new();
    for &(item, outcome) in cases {
        let (we_initiate, impair) = match item.strip_prefix("r:") {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let _ = pluto.whack("--impair none");
        let _ = pluto.whack("--impair revival");
        for i in impair.split(',') {
            let out = pluto.whack(&format!("--impair {i}"));
            assert!(out.status.success(), "--impair {i}: {}", text(&out.stderr));
        }
        let from = pluto.log_len();
        let wait = if outcome == Up || outcome == ChildRefused {
            20
        } else {
            4
        };
        let seen = establish_within(
            &pluto,
            &CONN,
            &Ours {
                we_initiate,
                ..OURS
            },
            wait,
            0,
        );
        let _ = pluto.whack("--impair none");
        let log = pluto.log_since(from);
        let k = seen.counters.unwrap_or_default();
        let ok = match outcome {
            Up => {
                k.established == 1
                    && k.auth_failures == 0
                    && if we_initiate {
                        seen.failed == Some(Failure::PeerError(TS_UNACCEPTABLE))
                    } else {
                        seen.child.is_some()
                    }
            }
            ChildRefused => k.established == 1 && seen.child.is_none() && k.no_proposal_chosen == 1,
            Refused(line) => {
                k.established == 0 && seen.child.is_none() && !log_lines(&log, line).is_empty()
            }
        };
        if ok {
            eprintln!("ok: {item}: {outcome:?}");
        } else {
            eprintln!("FAILED: {item}: {outcome:?}\n{seen:#?}\n{log}");
            failures.push(item);
        }
        pluto.clear();
    }
    assert!(failures.is_empty(), "impairments failed: {failures:?}");
}

/// pluto adds a CHILD_SA to an IKE SA we started (CREATE_CHILD_SA, RFC 7296 section 1.3.1)
/// for a second connection, TCP port 80 of its subnet only: we take it, narrowed to that
/// port on its side. pluto then fails its kernel state again and drops the whole IKE SA
/// without a Delete.
#[test]
fn libreswan_creates_a_second_child_sa_on_our_ike_sa() {
    let Some(pluto) = Pluto::start("ipsec_lsw_second") else {
        return;
    };
    let _ = pluto.whack("--impair revival");
    pluto.load(&CONN);
    let conn2 = Conn {
        extra: "leftprotoport=tcp/80",
        ..CONN
    };
    pluto.add_named("sy2", &conn2);
    let (initiate, states) = (
        pluto.whack_cmd("--initiate --name sy2"),
        pluto.whack_cmd("--showstates"),
    );
    let from = pluto.log_len();
    let (child, log) = with_daemon(&pluto, &OURS, move |mut daemon, sh| async move {
        let mut log = Vec::new();
        next_event(&mut daemon.events, "ChildFailed", 10).await?;
        log.push(sh.run(states.clone()).await);
        log.push(sh.run(initiate).await);
        let Event::ChildInstalled(child) = next_event(&mut daemon.events, "ChildInstalled", 10)
            .await
            .map_err(|e| format!("{e}: {log:?}"))?
        else {
            unreachable!()
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        log.push(sh.run(states).await);
        let snapshot = daemon.snapshot();
        if snapshot.ike_sas.len() != 1 || snapshot.child_sas.len() != 1 {
            return Err(format!("{snapshot:?}"));
        }
        daemon.shutdown().await;
        Ok((child, log))
    });
    let plog = pluto.log_since(from);
    let context = format!("{child:?}\n{log:#?}\n{plog}");
    let port80 = &child.remote_ts[0];
    assert_eq!(
        (port80.protocol, port80.start_port, port80.end_port),
        (6, 80, 80),
        "{context}"
    );
    assert!(log[0].contains("STATE_V2_ESTABLISHED_IKE_SA"), "{context}");
    assert!(!log[2].contains("STATE_V2_ESTABLISHED_IKE_SA"), "{context}");
    for line in [
        "sent CREATE_CHILD_SA request for new IPsec SA".to_string(),
        format!("Add SA esp.{:x}@{SY_ADDR}", child.inbound.spi),
        "and NOT sending notification".to_string(),
    ] {
        assert!(
            !log_lines(&plog, &line).is_empty(),
            "no {line:?}: {context}"
        );
    }
}

/// IKE over IPv6 (2001:db8:1::1 and ::2 on the same link, IPv6 selectors), both roles.
#[test]
fn ike_with_libreswan_over_ipv6_both_roles() {
    const SY6: &str = "2001:db8:1::1";
    const LS6: &str = "2001:db8:1::2";
    let Some(pluto) = Pluto::start("ipsec_lsw_v6") else {
        return;
    };
    pluto
        .lab
        .exec_ok(Ns::Node, &format!("ip addr add {SY6}/64 dev ike0 nodad"));
    pluto
        .lab
        .exec_ok(Ns::Server, &format!("ip addr add {LS6}/64 dev ike0 nodad"));
    // pluto listens on the addresses it found at start: look again.
    let out = pluto.whack("--listen");
    assert!(
        text(&out.stdout).contains(&format!("[{LS6}]:500")),
        "{}",
        text(&out.stdout)
    );
    let secrets = pluto.dir.join("ipsec.secrets");
    let mut s = fs::read_to_string(&secrets).expect("secrets");
    s.push_str(&format!("{LS6} {SY6} : PSK \"{PSK}\"\n"));
    fs::write(&secrets, s).expect("secrets");
    let _ = pluto.whack("--rereadsecrets");
    let _ = pluto.whack("--impair revival");
    let conn = Conn {
        extra: "left=2001:db8:1::2\nleftid=2001:db8:1::2\nright=2001:db8:1::1\n\
                rightid=2001:db8:1::1\nleftsubnet=2001:db8:20::/64\n\
                rightsubnet=2001:db8:10::/64",
        ..CONN
    };
    for we_initiate in [true, false] {
        pluto.load(&conn);
        let yaml = format!(
            r#"apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecProposal
metadata:
  name: ike-proposal
spec:
  encryption_algorithm: "aes128gcm16-prfsha256-ecp256"
  hash_algorithm: ""
  dh_group: ""
---
apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecSite
metadata:
  name: site
spec:
  remote: "{LS6}"
  local_identifier: ""
  remote_identifier: "{LS6}"
  authentication_method: psk
  pre_shared_key: "{PSK}"
  crypto_proposal: [ike-proposal]
  connections:
    - name: net
      conn_type: tunnel
      mode: {mode}
      local_subnet: 2001:db8:10::/64
      remote_subnet: 2001:db8:20::/64
      crypto_proposal: ["aes128gcm16"]
"#,
            mode = if we_initiate { "start" } else { "add" }
        );
        let mut r = Resources::default();
        r.add_text(Path::new("v6.yaml"), &yaml).expect("resources");
        let mut config = r
            .daemon_config(SY6.parse().expect("address"))
            .expect("daemon config");
        config.reconnect = None;
        let netns = format!("/run/netns/{}", pluto.lab.ns(Ns::Node));
        let sh = Shell {
            ns: pluto.lab.ns(Ns::Server),
        };
        let initiate = pluto.whack_cmd("--initiate --name sy");
        let from = pluto.log_len();
        let handle = std::thread::spawn(move || -> Result<Event, String> {
            let runtime = common::runtime_in_netns(&netns)?;
            runtime.block_on(async move {
                let mut daemon = Daemon::start(config).map_err(|e| format!("daemon: {e}"))?;
                if !we_initiate {
                    sh.run(initiate).await;
                }
                let wanted = if we_initiate {
                    "ChildFailed"
                } else {
                    "ChildInstalled"
                };
                let event = next_event(&mut daemon.events, wanted, 10).await;
                daemon.shutdown().await;
                event
            })
        });
        let event = handle
            .join()
            .unwrap_or_else(|_| Err("daemon thread panicked".into()))
            .unwrap_or_else(|e| panic!("{e}\n{}", pluto.log()));
        let log = pluto.log_since(from);
        let context = format!("{event:?}\n{log}");
        let role = if we_initiate {
            "responder"
        } else {
            "initiator"
        };
        assert!(
            !log_lines(
                &log,
                &format!("{role} established IKE SA; authenticated peer using authby=secret and ID_IPV6_ADDR '{SY6}'")
            )
            .is_empty(),
            "{context}"
        );
        match event {
            Event::ChildInstalled(child) => {
                assert_eq!(child.remote_addr, LS6.parse::<std::net::IpAddr>().unwrap());
                assert!(child.local_ts[0].start.is_ipv6(), "{context}");
                // pluto writes IPv6 SAs as esp:SPI@ADDR.
                let line = format!("Add SA esp:{:x}@{SY6}", child.inbound.spi);
                assert!(!log_lines(&log, &line).is_empty(), "no {line}: {context}");
            }
            Event::ChildFailed { reason, .. } => {
                assert_eq!(reason, Failure::PeerError(TS_UNACCEPTABLE), "{context}");
            }
            other => panic!("{other:?}"),
        }
        pluto.clear();
    }
}
