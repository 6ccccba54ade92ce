//! Watch streams: newline-delimited JSON events, replayed from the history after a
//! resourceVersion, with bookmarks, a timeout, and the in-stream 410 `Expired` ERROR.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::status::ApiError;
use crate::store::{EventKind, StoredEvent};

/// What a watch asks for, after the request has been validated.
pub(crate) struct WatchRequest {
    pub resource: ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Start position: `None` means "current state as synthetic ADDED events first".
    pub from: Option<u64>,
    /// Send an initial-events-end bookmark after the synthetic ADDED events.
    pub initial_events_end: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
}

/// The state of one open watch; dropped when the client goes away.
pub(crate) struct WatchStream {
    shared: Arc<Shared>,
    req: WatchRequest,
    cursor: u64,
    epoch: u64,
    pending: VecDeque<Bytes>,
    wake: watch::Receiver<u64>,
    deadline: Instant,
    bookmark_tick: Option<Interval>,
    done: bool,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.shared.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A deadline that never comes in practice, for durations too large to add to `now`.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// An ERROR event carrying a `Status`, as the server sends when a watch cannot go on.
pub(crate) fn error_line(err: &ApiError) -> Bytes {
    line("ERROR", &err.to_status())
}

impl WatchStream {
    /// Opens a watch. The initial state (if asked for) is taken under the same lock as the
    /// cursor, so no change falls between the synthetic ADDED events and the first real one.
    pub(crate) fn open(shared: Arc<Shared>, req: WatchRequest) -> WatchStream {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        let mut pending = VecDeque::new();
        let (cursor, epoch, wake) = {
            let store = shared.lock();
            let cursor = match req.from {
                Some(rv) => {
                    if rv < store.compacted() {
                        pending.push_back(error_line(&ApiError::expired(format!(
                            "too old resource version: {rv} ({})",
                            store.compacted()
                        ))));
                    }
                    rv
                }
                None => {
                    let (rv, items) = store.snapshot(
                        &req.resource,
                        req.namespace.as_deref(),
                        &req.labels,
                        &req.fields,
                    );
                    pending.extend(items.iter().map(|o| line("ADDED", o)));
                    rv
                }
            };
            (cursor, store.epoch(), store.subscribe())
        };
        let done = !pending.is_empty() && req.from.is_some();
        let bookmark_tick = req.bookmarks.then(|| {
            let period = shared
                .config
                .bookmark_interval
                .max(Duration::from_millis(10));
            let start = Instant::now()
                .checked_add(period)
                .unwrap_or_else(far_future);
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        });
        let mut stream = WatchStream {
            deadline: Instant::now()
                .checked_add(req.timeout)
                .unwrap_or_else(far_future),
            shared,
            req,
            cursor,
            epoch,
            pending,
            wake,
            bookmark_tick,
            done,
        };
        if stream.req.initial_events_end && !stream.done {
            let mark = stream.bookmark(true);
            stream.pending.push_back(mark);
        }
        stream
    }

    fn bookmark(&self, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.cursor.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({
                "kind": self.req.resource.kind,
                "apiVersion": self.req.resource.api_version(),
                "metadata": metadata,
            }),
        )
    }

    fn selected(&self, object: &Value) -> bool {
        let ns_ok = self.req.namespace.as_deref().is_none_or(|ns| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(ns)
        });
        ns_ok && self.req.labels.matches(object) && self.req.fields.matches(object)
    }

    /// Turns a stored change into what this watcher sees: an object entering the selection is
    /// ADDED, one leaving it is DELETED (its previous state at the new resourceVersion).
    fn convert(&self, e: &StoredEvent) -> Option<Bytes> {
        match e.kind {
            EventKind::Added => self.selected(&e.object).then(|| line("ADDED", &e.object)),
            EventKind::Deleted => self.selected(&e.object).then(|| line("DELETED", &e.object)),
            EventKind::Modified => {
                let now = self.selected(&e.object);
                let before = e.prev.as_deref().is_some_and(|p| self.selected(p));
                match (before, now) {
                    (true, true) => Some(line("MODIFIED", &e.object)),
                    (false, true) => Some(line("ADDED", &e.object)),
                    (true, false) => {
                        let mut gone = e.prev.as_deref().cloned().unwrap_or(Value::Null);
                        if let Some(meta) = gone.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            meta.insert("resourceVersion".into(), Value::String(e.rv.to_string()));
                        }
                        Some(line("DELETED", &gone))
                    }
                    (false, false) => None,
                }
            }
        }
    }

    /// Moves the cursor to the store's current version, queueing what this watcher must see.
    fn catch_up(&mut self) {
        let store = self.shared.lock();
        if store.epoch() != self.epoch {
            self.pending.push_back(error_line(&ApiError::expired(
                "The resourceVersion for the provided watch is too old.",
            )));
            self.done = true;
            return;
        }
        if store.missed(self.cursor) {
            self.pending
                .push_back(error_line(&ApiError::expired(format!(
                    "too old resource version: {} ({})",
                    self.cursor,
                    store.compacted()
                ))));
            self.done = true;
            return;
        }
        let events = store.events_after(&self.req.resource.gvr(), self.cursor);
        let current = store.resource_version();
        drop(store);
        for e in &events {
            if let Some(l) = self.convert(e) {
                self.pending.push_back(l);
            }
        }
        self.cursor = self.cursor.max(current);
    }

    /// The next chunk of the response body, or `None` when the watch is over.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if !self.pending.is_empty() {
                let mut buf = BytesMut::new();
                while let Some(l) = self.pending.pop_front() {
                    buf.extend_from_slice(&l);
                    if buf.len() > 256 * 1024 {
                        break;
                    }
                }
                return Some(buf.freeze());
            }
            if self.done {
                return None;
            }
            self.catch_up();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            let tick = async {
                match self.bookmark_tick.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        self.done = true;
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    // Like the real server, leave the client a resume point before closing.
                    if self.req.bookmarks {
                        self.catch_up();
                        if !self.done {
                            let mark = self.bookmark(false);
                            self.pending.push_back(mark);
                        }
                    }
                    self.done = true;
                }
                _ = tick => {
                    self.catch_up();
                    if !self.done {
                        let mark = self.bookmark(false);
                        self.pending.push_back(mark);
                    }
                }
            }
        }
    }
}
