//! What a restarting speaker needs from its previous life (RFC 4724 §4.1):
//! the learned routes it had in the FIB and when it last had them, as a
//! small line-oriented text file, sans IO (the speaker shell reads and
//! writes the file, see [`crate::speaker::RestartConfig`]).
//!
//! ```text
//! switchyard-bgp-restart-state 1
//! saved-at 1764300000
//! route 198.18.26.0/24 198.51.100.3 198.51.100.4
//! route 2001:db8:1::/48 2001:db8::3
//! ```
//!
//! One route per line, the prefix then its ECMP next hops, both families
//! in one file. Lines are independent, so the format is easy to read by
//! eye and to diff; anything unexpected makes the whole file invalid (a
//! half-trusted FIB is worse than an empty one).

use crate::config::Family;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// The file's name inside the state directory.
pub const FILE_NAME: &str = "bgp-restart-state";

const MAGIC: &str = "switchyard-bgp-restart-state";
const VERSION: &str = "1";

/// The saved forwarding state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartState {
    /// When it was saved, in seconds since the Unix epoch.
    pub saved_at: u64,
    /// Learned prefix → ECMP next hops, as installed in the FIB.
    pub routes: BTreeMap<IpNet, Vec<IpAddr>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not a restart state file (first line {0:?})")]
    NotStateFile(String),
    #[error("unsupported version {0:?}")]
    Version(String),
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("no saved-at line")]
    NoTime,
}

/// Whether a saved state makes this start a graceful restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Saved `age` ago, within our Restart Time: the peers still keep our
    /// routes, so we restart gracefully.
    Restart { age: Duration },
    /// Older than our Restart Time: the peers have deleted our routes.
    TooOld { age: Duration },
    /// Saved "after" now: the clock went back; nothing can be said.
    FromTheFuture,
}

/// `last_alive`: the later of the file's saved-at and its modification
/// time (the shell touches the file while the speaker runs); `now` and
/// both in seconds since the Unix epoch.
pub fn freshness(last_alive: u64, now: u64, restart_time: u16) -> Freshness {
    let Some(age) = now.checked_sub(last_alive) else {
        return Freshness::FromTheFuture;
    };
    let age = Duration::from_secs(age);
    if age < Duration::from_secs(restart_time.into()) {
        Freshness::Restart { age }
    } else {
        Freshness::TooOld { age }
    }
}

fn family_of(p: &IpNet) -> Family {
    match p {
        IpNet::V4(_) => Family::Ipv4Unicast,
        IpNet::V6(_) => Family::Ipv6Unicast,
    }
}

impl RestartState {
    /// Routes of one family.
    pub fn routes_of(&self, f: Family) -> impl Iterator<Item = (&IpNet, &Vec<IpAddr>)> {
        self.routes.iter().filter(move |(p, _)| family_of(p) == f)
    }

    pub fn encode(&self) -> String {
        let mut s = format!("{MAGIC} {VERSION}\nsaved-at {}\n", self.saved_at);
        s.reserve(self.routes.len() * 40);
        for (prefix, hops) in &self.routes {
            if hops.is_empty() {
                continue;
            }
            s.push_str("route ");
            s.push_str(&prefix.to_string());
            for h in hops {
                s.push(' ');
                s.push_str(&h.to_string());
            }
            s.push('\n');
        }
        s
    }

    /// Parses a whole file. Never panics; any malformed line rejects the
    /// file.
    pub fn parse(text: &str) -> Result<Self, StateError> {
        let mut lines = text.lines().enumerate();
        let first = lines.next().map_or("", |(_, l)| l);
        let mut head = first.split_whitespace();
        if head.next() != Some(MAGIC) {
            return Err(StateError::NotStateFile(first.chars().take(40).collect()));
        }
        match head.next() {
            Some(VERSION) if head.next().is_none() => {}
            v => return Err(StateError::Version(v.unwrap_or_default().to_string())),
        }
        let mut saved_at = None;
        let mut routes = BTreeMap::new();
        for (i, line) in lines {
            let bad = |why: String| StateError::Line { line: i + 1, why };
            let mut words = line.split_whitespace();
            match words.next() {
                None => {}
                Some("saved-at") => {
                    let t = words
                        .next()
                        .and_then(|w| w.parse::<u64>().ok())
                        .ok_or_else(|| bad("saved-at needs seconds since the epoch".into()))?;
                    if words.next().is_some() || saved_at.replace(t).is_some() {
                        return Err(bad("one saved-at, with one number".into()));
                    }
                }
                Some("route") => {
                    let prefix: IpNet = words
                        .next()
                        .and_then(|w| w.parse().ok())
                        .ok_or_else(|| bad("route needs a prefix".into()))?;
                    let mut hops = Vec::new();
                    for w in words {
                        let h: IpAddr = w.parse().map_err(|_| bad(format!("{w:?}: not an IP")))?;
                        if h.is_ipv4() != prefix.addr().is_ipv4() {
                            return Err(bad(format!("next hop {h} of the other family")));
                        }
                        hops.push(h);
                    }
                    if hops.is_empty() {
                        return Err(bad(format!("{prefix}: no next hop")));
                    }
                    if routes.insert(prefix.trunc(), hops).is_some() {
                        return Err(bad(format!("{prefix} twice")));
                    }
                }
                Some(w) => return Err(bad(format!("unknown keyword {w:?}"))),
            }
        }
        Ok(Self {
            saved_at: saved_at.ok_or(StateError::NoTime)?,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RestartState {
        let mut routes = BTreeMap::new();
        routes.insert(
            "198.18.26.0/24".parse().unwrap(),
            vec![
                "198.51.100.3".parse().unwrap(),
                "198.51.100.4".parse().unwrap(),
            ],
        );
        routes.insert(
            "2001:db8:1::/48".parse().unwrap(),
            vec!["2001:db8::3".parse().unwrap()],
        );
        RestartState {
            saved_at: 1_764_300_000,
            routes,
        }
    }

    #[test]
    fn round_trip() {
        let s = state();
        let text = s.encode();
        assert_eq!(
            text,
            "switchyard-bgp-restart-state 1\nsaved-at 1764300000\n\
             route 198.18.26.0/24 198.51.100.3 198.51.100.4\n\
             route 2001:db8:1::/48 2001:db8::3\n"
        );
        assert_eq!(RestartState::parse(&text), Ok(s.clone()));
        assert_eq!(s.routes_of(Family::Ipv6Unicast).count(), 1);
        let empty = RestartState {
            saved_at: 5,
            routes: BTreeMap::new(),
        };
        assert_eq!(RestartState::parse(&empty.encode()), Ok(empty));
    }

    #[test]
    fn corrupt_files_are_refused() {
        let head = "switchyard-bgp-restart-state 1\nsaved-at 10\n";
        for bad in [
            "",
            "\0\0\0",
            "switchyard-bgp-restart-state 2\nsaved-at 1\n",
            "switchyard-bgp-restart-state\n",
            "switchyard-bgp-restart-state 1\n",
            "switchyard-bgp-restart-state 1\nsaved-at x\n",
            "switchyard-bgp-restart-state 1\nsaved-at 1\nsaved-at 2\n",
            &format!("{head}route 198.18.0.0/24\n"),
            &format!("{head}route 198.18.0.0/33 198.51.100.1\n"),
            &format!("{head}route 198.18.0.0/24 2001:db8::1\n"),
            &format!("{head}route 198.18.0.0/24 198.51.100.1\nroute 198.18.0.0/24 198.51.100.2\n"),
            &format!("{head}route 198.18.0.0/24 198.51.100.\n"),
            &format!("{head}bogus\n"),
            // Cut off in the middle of a line.
            &format!("{head}route 198.18.0.0/2"),
        ] {
            assert!(RestartState::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn freshness_against_the_restart_time() {
        assert_eq!(
            freshness(100, 150, 120),
            Freshness::Restart {
                age: Duration::from_secs(50)
            }
        );
        assert_eq!(
            freshness(100, 220, 120),
            Freshness::TooOld {
                age: Duration::from_secs(120)
            }
        );
        assert_eq!(freshness(100, 99, 120), Freshness::FromTheFuture);
    }
}
