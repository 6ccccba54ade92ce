//! The restart state file on disk ([`crate::restart_state`] is its
//! format): read once at start, replaced atomically (temp file, then
//! rename) when the FIB changed, and touched as a heartbeat so that its
//! modification time says when we were last alive.

use crate::restart_state::{freshness, Freshness, RestartState, FILE_NAME};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the state directory says about this start.
#[derive(Debug)]
pub(super) enum Loaded {
    /// A graceful restart: the state was saved (or touched) `age` ago.
    Restart(RestartState, Duration),
    /// A normal start, and why (for the log and `show bgp`).
    Normal(String),
}

pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads the state in `dir`. Never fails: whatever is wrong with the
/// file makes this a normal start, with the reason.
pub(super) fn load(dir: &Path, restart_time: u16, now: SystemTime) -> Loaded {
    let file = path(dir);
    let text = match fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Loaded::Normal(format!("no saved state at {}", file.display()));
        }
        Err(e) => return Loaded::Normal(format!("cannot read {}: {e}", file.display())),
    };
    let Ok(text) = String::from_utf8(text) else {
        return Loaded::Normal(format!("{}: not text; ignored", file.display()));
    };
    let state = match RestartState::parse(&text) {
        Ok(s) => s,
        Err(e) => return Loaded::Normal(format!("{}: corrupt ({e}); ignored", file.display())),
    };
    let touched = fs::metadata(&file)
        .and_then(|m| m.modified())
        .map_or(0, unix_secs);
    match freshness(state.saved_at.max(touched), unix_secs(now), restart_time) {
        Freshness::Restart { age } => Loaded::Restart(state, age),
        Freshness::TooOld { age } => Loaded::Normal(format!(
            "saved state is {}s old, past our restart time of {restart_time}s; ignored",
            age.as_secs()
        )),
        Freshness::FromTheFuture => Loaded::Normal(format!(
            "{}: saved in the future (clock went back?); ignored",
            file.display()
        )),
    }
}

/// Replaces the state file with `text` (temp file, fsync, rename).
pub(super) fn save(dir: &Path, text: &str) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{FILE_NAME}.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path(dir))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Sets the file's modification time to now: we are alive.
pub(super) fn touch(dir: &Path) -> io::Result<()> {
    fs::File::options()
        .write(true)
        .open(path(dir))?
        .set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn load_save_and_what_goes_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        assert!(
            matches!(load(dir.path(), 120, now), Loaded::Normal(w) if w.contains("no saved state"))
        );
        let mut routes = BTreeMap::new();
        routes.insert(
            "198.18.0.0/24".parse().unwrap(),
            vec!["198.51.100.1".parse().unwrap()],
        );
        let s = RestartState {
            saved_at: unix_secs(now),
            routes,
        };
        save(dir.path(), &s.encode()).unwrap();
        touch(dir.path()).unwrap();
        match load(dir.path(), 120, now) {
            Loaded::Restart(got, _) => assert_eq!(got, s),
            other => panic!("{other:?}"),
        }
        // Too old: 200 s from now, with a restart time of 120 s.
        let later = now + Duration::from_secs(200);
        assert!(matches!(load(dir.path(), 120, later), Loaded::Normal(w) if w.contains("old")));
        fs::write(path(dir.path()), b"\xff\xfe garbage").unwrap();
        assert!(matches!(load(dir.path(), 120, now), Loaded::Normal(w) if w.contains("not text")));
        fs::write(
            path(dir.path()),
            "switchyard-bgp-restart-state 1\nroute x\n",
        )
        .unwrap();
        assert!(matches!(load(dir.path(), 120, now), Loaded::Normal(w) if w.contains("corrupt")));
        // Only the state file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }
}
