//! Interop with ExaBGP (4.2), the usual tool for crafted UPDATEs: its
//! routes with every common attribute reach us intact and go on to an
//! iBGP peer, ours reach it, and hand-made attributes exercise RFC 7606
//! (treat-as-withdraw, attribute discard) and RFC 4271 §5 (unrecognised
//! optional attributes: transitive ones passed on with the Partial bit,
//! non-transitive ones dropped).
//!
//! One exabgp process holds two sessions with us, both opened by it
//! (`connect` to our port; we are passive, it does not listen): "A", eBGP
//! from 127.0.N.5 in AS 65005, which announces, and "B", iBGP from
//! 127.0.N.6, which only listens. Two helper processes of exabgp's API
//! are the test's hands: `tx` is `tail -F` of a file the test appends
//! announce/withdraw commands to; `rx` writes every UPDATE exabgp
//! receives, as JSON lines, to a file the test reads back.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use switchyard_bgp::fsm::{ErrorCounters, State};
use switchyard_bgp::speaker::{Speaker, SpeakerHandle};

const EXA_AS: u32 = 65005;
const EXA_NH4: &str = "198.51.100.5";
const EXA_NH6: &str = "2001:db8::5";

/// ExaBGP's sessions with us at 127.0.N.1:`our_port`: A (eBGP, .5) and
/// B (iBGP, .6). `static_a`: `route ...;` lines announced by A from the
/// start.
struct ExaOpts {
    net: u8,
    our_port: u16,
    static_a: Vec<String>,
}

impl ExaOpts {
    fn a(&self) -> Ipv4Addr {
        ip(self.net, 5)
    }

    fn b(&self) -> Ipv4Addr {
        ip(self.net, 6)
    }

    fn config(&self, dir: &Path) -> String {
        let neighbor = |local: Ipv4Addr, rid: &str, asn: u32, statics: &str| {
            format!(
                r#"neighbor {us} {{
  router-id {rid};
  local-address {local};
  local-as {asn};
  peer-as {OUR_AS};
  hold-time 9;
  connect {port};
  passive false;
  family {{
    ipv4 unicast;
    ipv6 unicast;
  }}
  api {{
    processes [ tx rx ];
    receive {{
      parsed;
      update;
      notification;
    }}
  }}
{statics}}}
"#,
                us = ip(self.net, 1),
                port = self.our_port,
            )
        };
        let statics: String = self
            .static_a
            .iter()
            .map(|r| format!("    {r};\n"))
            .collect();
        let statics = if statics.is_empty() {
            String::new()
        } else {
            format!("  static {{\n{statics}  }}\n")
        };
        format!(
            "process tx {{\n  run /bin/sh {tx};\n  encoder text;\n}}\n\
             process rx {{\n  run /bin/sh {rx};\n  encoder json;\n}}\n{a}{b}",
            tx = dir.join("tx.sh").display(),
            rx = dir.join("rx.sh").display(),
            a = neighbor(self.a(), EXA_NH4, EXA_AS, &statics),
            b = neighbor(self.b(), "198.51.100.6", OUR_AS, ""),
        )
    }
}

/// An exabgp process; a test that fails while it runs prints its log.
struct ExaBgp {
    proc: Proc,
    commands: PathBuf,
    received: PathBuf,
    log: PathBuf,
}

impl ExaBgp {
    fn start(bin: &Path, o: &ExaOpts) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        let commands = path.join("commands");
        let received = path.join("received.json");
        std::fs::write(&commands, "").expect("create commands file");
        // `tail --pid`: the helpers run in process groups of their own, so
        // they must notice exabgp's end themselves (`cat` gets EOF).
        std::fs::write(
            path.join("tx.sh"),
            format!(
                "exec tail -n +1 -s 0.2 -F --pid=$PPID {}\n",
                commands.display()
            ),
        )
        .expect("write tx.sh");
        // exabgp takes a helper whose stdout closes for a dead one: `cat`
        // keeps a copy of it (fd 3) while it writes to the file.
        std::fs::write(
            path.join("rx.sh"),
            format!("exec cat 3>&1 >{}\n", received.display()),
        )
        .expect("write rx.sh");
        let log = path.join("exabgp-messages.log");
        let conf = path.join("exabgp.conf");
        std::fs::write(&conf, o.config(path)).expect("write exabgp.conf");
        let proc = Proc::spawn(
            "exabgp",
            dir,
            Command::new(bin)
                .arg(&conf)
                .env("exabgp.daemon.daemonize", "false")
                .env("exabgp.daemon.drop", "false")
                .env("exabgp.daemon.user", "root")
                .env("exabgp.daemon.pid", "")
                // Not stdout: redirected to a file, that got nothing past
                // the startup banner.
                .env("exabgp.log.destination", &log)
                .env("exabgp.log.level", "INFO")
                .env("exabgp.log.message", "true")
                .env("exabgp.api.ack", "false")
                .env("exabgp.api.cli", "false")
                .env("exabgp.api.respawn", "false")
                .env("exabgp.tcp.bind", "")
                // Its log goes to a file: unbuffered, or a failure shows none.
                .env("PYTHONUNBUFFERED", "1"),
        );
        Self {
            proc,
            commands,
            received,
            log,
        }
    }

    /// Hands `line` (an API command) to exabgp through the `tx` helper.
    fn command(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.commands)
            .expect("open commands file");
        writeln!(f, "{line}").expect("write command");
    }

    /// `command` for session A only.
    fn command_a(&self, o: &ExaOpts, cmd: &str) {
        self.command(&format!(
            "neighbor {} local-ip {} {cmd}",
            ip(o.net, 1),
            o.a()
        ));
    }

    /// What exabgp holds from us on the session from `local`, replayed
    /// from the UPDATEs it logged: prefix → its attributes, with the next
    /// hop added as "next-hop".
    fn rib(&self, local: Ipv4Addr) -> BTreeMap<String, Value> {
        let text = std::fs::read_to_string(&self.received).unwrap_or_default();
        let local = local.to_string();
        let mut rib = BTreeMap::new();
        for msg in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            if msg["type"] != "update"
                || msg["neighbor"]["address"]["local"].as_str() != Some(&local)
            {
                continue;
            }
            let update = &msg["neighbor"]["message"]["update"];
            for families in update["withdraw"].as_object().into_iter() {
                for nlri in families.values().flat_map(|v| v.as_array().cloned()) {
                    for n in nlri {
                        if let Some(p) = n["nlri"].as_str() {
                            rib.remove(p);
                        }
                    }
                }
            }
            let attrs = update["attribute"].clone();
            for families in update["announce"].as_object().into_iter() {
                for by_hop in families.values().filter_map(Value::as_object) {
                    for (nh, nlri) in by_hop {
                        for n in nlri.as_array().into_iter().flatten() {
                            if let Some(p) = n["nlri"].as_str() {
                                let mut a = attrs.clone();
                                a["next-hop"] = Value::String(nh.clone());
                                rib.insert(p.to_string(), a);
                            }
                        }
                    }
                }
            }
        }
        rib
    }

    /// Everything exabgp received and logged, for failure messages.
    fn context(&self) -> String {
        format!(
            "--- received ---\n{}\n--- exabgp log ---\n{}{}",
            std::fs::read_to_string(&self.received).unwrap_or_default(),
            self.proc.log(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for ExaBgp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.context());
        }
    }
}

/// Waits until exabgp's session from `local` holds `prefix` and returns
/// its attributes.
async fn wait_exa_route(x: &ExaBgp, local: Ipv4Addr, prefix: &str) -> Value {
    wait_until(
        &format!("{prefix} in exabgp's session from {local}"),
        20,
        || x.rib(local).contains_key(prefix),
        || x.context(),
    )
    .await;
    x.rib(local)[prefix].clone()
}

async fn wait_exa_gone(x: &ExaBgp, local: Ipv4Addr, prefix: &str) {
    wait_until(
        &format!("{prefix} withdrawn from exabgp's session from {local}"),
        20,
        || !x.rib(local).contains_key(prefix),
        || x.context(),
    )
    .await;
}

/// Our speaker with A and B configured, passive, and exabgp started.
async fn start(net: u8, static_a: Vec<String>) -> Option<(ExaOpts, SpeakerHandle, ExaBgp)> {
    let bins = require(&["exabgp"])?;
    let our_port = free_port(ip(net, 1));
    let o = ExaOpts {
        net,
        our_port,
        static_a,
    };
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    for (addr, asn) in [(o.a(), EXA_AS), (o.b(), OUR_AS)] {
        let mut p = peer_config(addr, 179, asn);
        p.passive = true;
        cfg.peers.push(p);
    }
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let x = ExaBgp::start(&bins[0], &o);
    wait_established(&h, o.a(), 30).await;
    wait_established(&h, o.b(), 30).await;
    Some((o, h, x))
}

/// A's static routes with MED, communities, large communities, a long
/// AS path, a next hop and an unknown optional transitive attribute: in
/// our RIB as sent, and passed on to B (iBGP) intact, the unknown
/// attribute with the Partial bit. Ours reach A (eBGP: our AS, our next
/// hop) and B (iBGP: LOCAL_PREF, empty AS path); withdrawals both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exabgp_attributes_both_ways() {
    let statics = vec![
        format!(
            "route 198.18.5.0/24 next-hop {EXA_NH4} origin igp med 50 \
             as-path [ 65005 64600 64601 ] community [ 65005:1 65005:2 ] \
             large-community [ 65005:1:2 ] attribute [ 0x63 0xc0 0xdeadbeef ]"
        ),
        format!(
            "route 2001:db8:55::/48 next-hop {EXA_NH6} origin egp med 60 \
             as-path [ 65005 64602 ] community [ 65005:3 ]"
        ),
    ];
    let Some((o, h, x)) = start(71, statics).await else {
        return;
    };

    wait_next_hops(&h, "198.18.5.0/24", &[EXA_NH4]).await;
    wait_next_hops(&h, "2001:db8:55::/48", &[EXA_NH6]).await;
    let p4 = our_paths(&h, "198.18.5.0/24", o.a()).await;
    assert_eq!(p4[0].as_path, vec![65005, 64600, 64601], "{p4:?}");
    assert_eq!(p4[0].med, Some(50), "{p4:?}");
    let p6 = our_paths(&h, "2001:db8:55::/48", o.a()).await;
    assert_eq!(p6[0].as_path, vec![65005, 64602], "{p6:?}");
    assert_eq!(p6[0].med, Some(60), "{p6:?}");

    // On to B, unchanged but for LOCAL_PREF and the Partial bit.
    let r4 = wait_exa_route(&x, o.b(), "198.18.5.0/24").await;
    assert_eq!(r4["next-hop"], EXA_NH4, "{r4:#}");
    assert_eq!(r4["origin"], "igp", "{r4:#}");
    assert_eq!(r4["med"], 50, "{r4:#}");
    assert_eq!(r4["local-preference"], 100, "{r4:#}");
    assert_eq!(
        r4["as-path"],
        serde_json::json!([65005, 64600, 64601]),
        "{r4:#}"
    );
    assert_eq!(
        r4["community"],
        serde_json::json!([[65005, 1], [65005, 2]]),
        "{r4:#}"
    );
    assert_eq!(
        r4["large-community"],
        serde_json::json!([[65005, 1, 2]]),
        "{r4:#}"
    );
    // Optional | Transitive | Partial.
    assert_eq!(r4["attribute-0x63-0xE0"], "0xdeadbeef", "{r4:#}");
    let r6 = wait_exa_route(&x, o.b(), "2001:db8:55::/48").await;
    assert_eq!(r6["next-hop"], EXA_NH6, "{r6:#}");
    assert_eq!(r6["origin"], "egp", "{r6:#}");
    assert_eq!(r6["med"], 60, "{r6:#}");
    assert_eq!(r6["community"], serde_json::json!([[65005, 3]]), "{r6:#}");
    // Never back to A, which taught us.
    assert!(!x.rib(o.a()).contains_key("198.18.5.0/24"));

    // Ours.
    h.advertise(
        vec![
            "203.0.113.70/32".parse().unwrap(),
            "2001:db8:70::/64".parse().unwrap(),
        ],
        None,
    )
    .await
    .unwrap();
    let a4 = wait_exa_route(&x, o.a(), "203.0.113.70/32").await;
    assert_eq!(a4["next-hop"], "198.51.100.1", "{a4:#}");
    assert_eq!(a4["as-path"], serde_json::json!([OUR_AS]), "{a4:#}");
    assert!(a4.get("local-preference").is_none(), "{a4:#}");
    let a6 = wait_exa_route(&x, o.a(), "2001:db8:70::/64").await;
    assert_eq!(a6["next-hop"], "2001:db8::1", "{a6:#}");
    let b4 = wait_exa_route(&x, o.b(), "203.0.113.70/32").await;
    assert_eq!(b4["next-hop"], "198.51.100.1", "{b4:#}");
    assert_eq!(b4["local-preference"], 100, "{b4:#}");
    assert!(
        b4["as-path"].as_array().is_none_or(|v| v.is_empty()),
        "{b4:#}"
    );

    // Withdrawals: ours from both, A's from us and from B.
    h.withdraw(vec!["203.0.113.70/32".parse().unwrap()])
        .await
        .unwrap();
    wait_exa_gone(&x, o.a(), "203.0.113.70/32").await;
    wait_exa_gone(&x, o.b(), "203.0.113.70/32").await;
    x.command_a(
        &o,
        &format!("withdraw route 198.18.5.0/24 next-hop {EXA_NH4}"),
    );
    wait_next_hops(&h, "198.18.5.0/24", &[]).await;
    wait_exa_gone(&x, o.b(), "198.18.5.0/24").await;
    assert!(x.rib(o.b()).contains_key("2001:db8:55::/48"));

    for n in h.neighbors().await.unwrap() {
        assert_eq!(n.state, State::Established, "{n:?}");
        assert_eq!(n.errors, ErrorCounters::default(), "{n:?}");
    }
    h.shutdown().await.unwrap();
}

/// Crafted attributes from A (RFC 7606, RFC 4271 §5):
/// - COMMUNITIES of 5 octets on a route we hold: treat-as-withdraw, the
///   route leaves our RIB and B; on a new route: never installed.
/// - LARGE_COMMUNITY of 11 octets: treat-as-withdraw as well.
/// - AGGREGATOR of 2 octets: attribute discard, the route stays.
/// - An unrecognised optional non-transitive attribute: ignored, the
///   route stays and B does not hear of it.
///
/// The session with A stays up all along, without NOTIFICATION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exabgp_rfc7606_malformed_attributes() {
    let Some((o, h, x)) = start(72, Vec::new()).await else {
        return;
    };
    let route = |prefix: &str, extra: &str| {
        format!("announce route {prefix} next-hop {EXA_NH4} as-path [ 65005 ] {extra}")
    };

    // Good first, then the same prefix with a malformed COMMUNITIES.
    x.command_a(&o, &route("198.18.6.0/24", "community [ 65005:6 ]"));
    wait_next_hops(&h, "198.18.6.0/24", &[EXA_NH4]).await;
    wait_exa_route(&x, o.b(), "198.18.6.0/24").await;
    x.command_a(
        &o,
        &route("198.18.6.0/24", "attribute [ 0x08 0xc0 0x0001020304 ]"),
    );
    wait_next_hops(&h, "198.18.6.0/24", &[]).await;
    wait_exa_gone(&x, o.b(), "198.18.6.0/24").await;

    // New prefixes with malformed attributes, then a good one as a
    // marker: once it is in, the others have been handled.
    x.command_a(
        &o,
        &route("198.18.7.0/24", "attribute [ 0x08 0xc0 0x0001020304 ]"),
    );
    x.command_a(
        &o,
        &route(
            "198.18.8.0/24",
            "attribute [ 0x20 0xc0 0x0000fded000000010000ff ]",
        ),
    );
    x.command_a(
        &o,
        &route("198.18.9.0/24", "attribute [ 0x07 0xc0 0xfded ]"),
    );
    x.command_a(
        &o,
        &route("198.18.10.0/24", "attribute [ 0x64 0x80 0xcafe ]"),
    );
    x.command_a(&o, &route("198.18.11.0/24", ""));
    wait_next_hops(&h, "198.18.11.0/24", &[EXA_NH4]).await;
    wait_next_hops(&h, "198.18.9.0/24", &[EXA_NH4]).await;
    wait_next_hops(&h, "198.18.10.0/24", &[EXA_NH4]).await;
    assert!(our_paths(&h, "198.18.7.0/24", o.a()).await.is_empty());
    assert!(our_paths(&h, "198.18.8.0/24", o.a()).await.is_empty());

    let b9 = wait_exa_route(&x, o.b(), "198.18.9.0/24").await;
    assert!(b9.get("aggregator").is_none(), "{b9:#}");
    let b10 = wait_exa_route(&x, o.b(), "198.18.10.0/24").await;
    let unknown: Vec<&String> = b10
        .as_object()
        .map(|m| m.keys().filter(|k| k.starts_with("attribute-")).collect())
        .unwrap_or_default();
    assert!(unknown.is_empty(), "{b10:#}");
    wait_exa_route(&x, o.b(), "198.18.11.0/24").await;
    let rib_b = x.rib(o.b());
    assert!(!rib_b.contains_key("198.18.7.0/24"), "{rib_b:#?}");
    assert!(!rib_b.contains_key("198.18.8.0/24"), "{rib_b:#?}");

    let n = h.neighbors().await.unwrap();
    let a = n.iter().find(|n| n.addr == IpAddr::V4(o.a())).unwrap();
    assert_eq!(a.state, State::Established, "{n:?}");
    assert_eq!(a.flaps, 0, "{n:?}");
    assert_eq!(a.errors.treat_as_withdraw, 3, "{n:?}");
    assert_eq!(a.errors.attribute_discard, 1, "{n:?}");
    assert_eq!(a.errors.notifications_sent, 0, "{n:?}");
    assert_eq!(a.errors.notifications_received, 0, "{n:?}");
    // Still a working session: one more route, and its withdrawal.
    x.command_a(
        &o,
        &format!("withdraw route 198.18.11.0/24 next-hop {EXA_NH4}"),
    );
    wait_next_hops(&h, "198.18.11.0/24", &[]).await;
    h.shutdown().await.unwrap();
}
