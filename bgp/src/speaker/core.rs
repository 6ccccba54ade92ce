//! The core task: every session, the RIB and every timer, one owner.

use super::conn::{self, Conn, ConnectParams, Input};
use super::peer_set::{self, PeerSetDiff};
use super::state_file::{self, Loaded};
use super::{
    BestPaths, Command, LocalRoute, NeighborStatus, PeerChanges, PeerConfig, RestartConfig,
    RestartStatus, RouteEntry, RoutePath, SpeakerConfig, SpeakerError, SpeakerEvent,
};
use crate::attrs::{AsPath, AsSegment, Origin, PathAttrs};
use crate::capability::Negotiated;
use crate::collision::{connection_to_keep, ConnectionOrigin};
use crate::config::{Family, GracefulRestartConfig, SessionConfig};
use crate::fsm::{Action, DownReason, Event, Session, State, Timer};
use crate::graceful_restart::{GrAction, GrEvent, GrHelper, GrTimer};
use crate::notification::{cease, Notification};
use crate::restart_state::RestartState;
use crate::restarting::{DeferralAction, DeferralEvent, SelectionDeferral};
use crate::rib::adj_out::AdjRibOut;
use crate::rib::decision::{DecisionConfig, IgpCost};
use crate::rib::{Path, PeerId, PeerInfo, Rib, RibConfig, RibPrefix, Table};
use crate::update_tx::{self, TxParams};
use crate::wire;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Reads queued for the core; a full queue stops the readers, and TCP
/// flow control then slows the peers.
const INPUT_QUEUE: usize = 256;

/// How often the restart state file is touched (our heartbeat) or, when
/// the FIB changed, rewritten...
const STATE_TICK: Duration = Duration::from_secs(1);
/// ...but rewritten at most this often, for large tables that keep
/// changing.
const STATE_MIN_REWRITE: Duration = Duration::from_secs(5);

/// Binds the listener and spawns the core; returns the bound address.
pub(super) fn spawn(
    config: SpeakerConfig,
    cmd_rx: mpsc::Receiver<Command>,
    ev_tx: mpsc::UnboundedSender<SpeakerEvent>,
) -> Result<Option<SocketAddr>, SpeakerError> {
    let (in_tx, in_rx) = mpsc::channel(INPUT_QUEUE);
    let mut bound = None;
    let mut accept_task = None;
    let mut listener = None;
    if let Some(addr) = config.listen {
        let l = Arc::new(conn::listen(addr, &config.peers)?);
        bound = l.local_addr().ok();
        accept_task = Some(tokio::spawn(conn::accept_loop(
            Arc::clone(&l),
            in_tx.clone(),
        )));
        listener = Some(l);
    }
    let mut core = Core::new(config, in_tx, ev_tx, bound, listener);
    tokio::spawn(async move {
        core.run(cmd_rx, in_rx).await;
        if let Some(t) = accept_task {
            t.abort();
        }
    });
    Ok(bound)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Main,
    /// The second connection of a collision (RFC 4271 §6.8).
    Other,
}

fn timer_index(t: Timer) -> usize {
    match t {
        Timer::ConnectRetry => 0,
        Timer::Hold => 1,
        Timer::Keepalive => 2,
    }
}

const TIMERS: [Timer; 3] = [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive];

fn gr_timer_index(t: GrTimer) -> usize {
    match t {
        GrTimer::Restart => 0,
        GrTimer::Stale => 1,
    }
}

/// A session with its connection and timer deadlines.
#[derive(Debug)]
struct Slot {
    session: Session,
    conn: Option<Conn>,
    timers: [Option<Instant>; 3],
}

impl Slot {
    fn new(cfg: SessionConfig) -> Self {
        Self {
            session: Session::new(cfg),
            conn: None,
            timers: [None; 3],
        }
    }

    /// Closes the connection with Cease / `subcode`.
    fn close(self, subcode: u8) {
        if let Some(c) = self.conn {
            c.send(Notification::cease(subcode).encode());
        }
    }
}

#[derive(Debug)]
struct Peer {
    cfg: PeerConfig,
    session_cfg: SessionConfig,
    main: Slot,
    other: Option<Slot>,
    /// Id of the connect attempt whose result we wait for (0: none).
    attempt: u64,
    connecting: Option<JoinHandle<()>>,
    /// The peer in the RIB. Kept across a graceful restart, so what the
    /// peer announces again replaces its own stale paths.
    rib_id: Option<PeerId>,
    negotiated: Option<Negotiated>,
    /// Graceful restart (RFC 4724 §4.2): outlives the sessions.
    gr: GrHelper,
    gr_timers: [Option<Instant>; 2],
    adj_out: AdjRibOut,
    /// Families whose initial UPDATEs and End-of-RIB wait for our own
    /// restart's route selection (RFC 4724 §4.1).
    held: Vec<Family>,
    up_since: Option<Instant>,
    flaps: u64,
    last_error: Option<String>,
    /// Stopped for sending too many prefixes: started again then.
    idle_hold: Option<Instant>,
}

impl Peer {
    /// `gr`: the capability we announce if graceful restart is on for
    /// this peer (see [`Core::gr_capability`]).
    fn new(
        cfg: PeerConfig,
        local_as: u32,
        router_id: Ipv4Addr,
        gr: Option<GracefulRestartConfig>,
    ) -> Self {
        let session_cfg = SessionConfig {
            local_as,
            router_id,
            peer_as: cfg.remote_as,
            hold_time: cfg.hold_time,
            connect_retry_time: cfg.connect_retry_time,
            open_hold_time: cfg.open_hold_time,
            passive: cfg.passive,
            families: cfg.families.clone(),
            route_refresh: true,
            graceful_restart: gr.filter(|_| cfg.graceful_restart),
            add_path: cfg.add_path.clone(),
            extended_message: true,
        };
        let gr = GrHelper::new(
            cfg.graceful_restart,
            Duration::from_secs(cfg.stale_routes_time.into()),
        );
        Peer {
            main: Slot::new(session_cfg.clone()),
            session_cfg,
            cfg,
            other: None,
            attempt: 0,
            connecting: None,
            rib_id: None,
            negotiated: None,
            gr,
            gr_timers: [None; 2],
            adj_out: AdjRibOut::default(),
            held: Vec::new(),
            up_since: None,
            flaps: 0,
            last_error: None,
            idle_hold: None,
        }
    }

    fn slot(&mut self, w: Which) -> Option<&mut Slot> {
        match w {
            Which::Main => Some(&mut self.main),
            Which::Other => self.other.as_mut(),
        }
    }

    fn cancel_connect(&mut self) {
        if let Some(h) = self.connecting.take() {
            h.abort();
        }
        // Any result still in flight is now stale.
        self.attempt = 0;
    }

    /// Makes the collision's second connection the main one; returns the
    /// old main.
    fn promote_other(&mut self) -> Option<Slot> {
        let o = self.other.take()?;
        Some(std::mem::replace(&mut self.main, o))
    }
}

struct Core {
    local_as: u32,
    router_id: Ipv4Addr,
    cluster_id: Option<Ipv4Addr>,
    multipath_max: usize,
    listen: Option<SocketAddr>,
    /// Shared with the accept task; kept here to install and remove the
    /// MD5 keys of peers added and removed at run time.
    listener: Option<Arc<TcpListener>>,
    /// In configuration order; peers added at run time go to the end.
    /// Positions change when a peer is removed, so nothing that outlives
    /// one command (connect attempts, connections) refers to a position.
    peers: Vec<Peer>,
    rib: Rib,
    local_routes: BTreeMap<IpNet, Option<IpAddr>>,
    in_tx: mpsc::Sender<Input>,
    ev_tx: mpsc::UnboundedSender<SpeakerEvent>,
    next_conn: u64,
    next_attempt: u64,
    /// Refused connections still being closed ([`conn::reject`]).
    rejecting: Arc<AtomicUsize>,
    /// What decides whether a next hop is reachable; `None`: every one
    /// is (`FlatIgp`). Kept here so a new RIB gets it too.
    resolver: Option<Arc<dyn IgpCost + Send + Sync>>,
    stopping: bool,
    /// Our own graceful restart (RFC 4724 §4.1); `None`: helper only.
    restart: Option<Restart>,
}

/// The restarting speaker's state.
#[derive(Debug)]
struct Restart {
    cfg: RestartConfig,
    /// This start is a graceful restart.
    restarted: bool,
    start_note: String,
    /// Present from a graceful restart on; deferring until it completes.
    deferral: Option<SelectionDeferral>,
    deferral_timer: Option<Instant>,
    /// The saved learned routes of the families still deferred: what the
    /// FIB holds for them until selection runs.
    restored: BTreeMap<IpNet, Vec<IpAddr>>,
    /// The FIB changed since the state file was last written.
    dirty: bool,
    last_write: Option<Instant>,
    next_tick: Instant,
    /// The write in flight, if any (writes never overlap).
    writing: Option<JoinHandle<()>>,
}

impl Restart {
    fn deferring(&self) -> bool {
        self.deferral.as_ref().is_some_and(|d| d.deferring())
    }

    fn is_deferred(&self, f: Family) -> bool {
        self.deferral.as_ref().is_some_and(|d| d.is_deferred(f))
    }
}

fn new_rib(local_as: u32, router_id: Ipv4Addr, cluster_id: Option<Ipv4Addr>, max: usize) -> Rib {
    Rib::new(RibConfig {
        local_as,
        router_id,
        cluster_id,
        decision: DecisionConfig {
            max_paths: max.max(1),
            ..DecisionConfig::default()
        },
    })
}

impl Core {
    fn new(
        cfg: SpeakerConfig,
        in_tx: mpsc::Sender<Input>,
        ev_tx: mpsc::UnboundedSender<SpeakerEvent>,
        listen: Option<SocketAddr>,
        listener: Option<Arc<TcpListener>>,
    ) -> Self {
        let rib = new_rib(
            cfg.local_as,
            cfg.router_id,
            cfg.cluster_id,
            cfg.multipath_max,
        );
        let restart = cfg.restart.map(Restart::load);
        let gr = gr_capability(restart.as_ref());
        let peers = cfg
            .peers
            .into_iter()
            .map(|p| Peer::new(p, cfg.local_as, cfg.router_id, gr.clone()))
            .collect();
        Self {
            local_as: cfg.local_as,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id,
            multipath_max: cfg.multipath_max,
            listen,
            listener,
            peers,
            rib,
            local_routes: BTreeMap::new(),
            in_tx,
            ev_tx,
            next_conn: 0,
            next_attempt: 0,
            rejecting: Arc::new(AtomicUsize::new(0)),
            resolver: None,
            stopping: false,
            restart,
        }
    }

    /// Starts the deferral of a graceful restart: the restored routes go
    /// to the FIB at once, and the timer runs.
    fn start_restart(&mut self) {
        let Some(r) = self.restart.as_mut() else {
            return;
        };
        if !r.restarted {
            return;
        }
        let counted = self
            .peers
            .iter()
            .filter(|p| p.cfg.graceful_restart)
            .map(|p| p.cfg.address);
        let (d, actions) =
            SelectionDeferral::start(&Family::ALL, counted, r.cfg.selection_deferral);
        r.deferral = Some(d);
        let restored: Vec<BestPaths> = r
            .restored
            .iter()
            .map(|(prefix, hops)| BestPaths {
                prefix: *prefix,
                next_hops: hops.clone(),
            })
            .collect();
        if !restored.is_empty() {
            self.emit(SpeakerEvent::BestPathsChanged(restored));
        }
        self.deferral_actions(actions);
    }

    async fn run(&mut self, mut cmd_rx: mpsc::Receiver<Command>, mut in_rx: mpsc::Receiver<Input>) {
        self.start_restart();
        for i in 0..self.peers.len() {
            let a = self.peers[i].main.session.handle(Event::ManualStart);
            self.dispatch(i, Which::Main, a);
        }
        loop {
            let next = self.next_deadline();
            tokio::select! {
                biased;
                _ = sleep_until(next) => self.fire_timers(),
                c = cmd_rx.recv() => match c {
                    None => {
                        self.save_state_now().await;
                        return self.stop_all(false);
                    }
                    Some(Command::Shutdown(for_restart, done)) => {
                        self.save_state_now().await;
                        self.stop_all(for_restart);
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.command(c),
                },
                Some(i) = in_rx.recv() => self.input(i),
            }
        }
    }

    fn emit(&self, ev: SpeakerEvent) {
        // Nobody listening is fine: the agent may not care.
        let _ = self.ev_tx.send(ev);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .peers
            .iter()
            .flat_map(|p| std::iter::once(&p.main).chain(p.other.as_ref()))
            .flat_map(|s| s.timers.iter().flatten());
        let restarts = self
            .peers
            .iter()
            .flat_map(|p| p.gr_timers.iter().flatten().chain(&p.idle_hold));
        let ours = self
            .restart
            .iter()
            .flat_map(|r| r.deferral_timer.iter().chain(std::iter::once(&r.next_tick)));
        sessions.chain(restarts).chain(ours).min().copied()
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if let Some(r) = self.restart.as_mut() {
            if r.deferral_timer.is_some_and(|d| d <= now) {
                r.deferral_timer = None;
                let a = r
                    .deferral
                    .as_mut()
                    .map(|d| d.handle(DeferralEvent::TimerExpired))
                    .unwrap_or_default();
                tracing::info!(
                    "bgp: selection deferral timer expired; route selection runs without every End-of-RIB"
                );
                self.deferral_actions(a);
            }
        }
        if self.restart.as_ref().is_some_and(|r| r.next_tick <= now) {
            self.state_tick(now);
        }
        for i in 0..self.peers.len() {
            if self.peers[i].idle_hold.is_some_and(|d| d <= now) {
                self.peers[i].idle_hold = None;
                tracing::info!(peer = %self.peers[i].cfg.address,
                    "bgp: session starts again after the maximum-prefix hold");
                let a = self.peers[i].main.session.handle(Event::ManualStart);
                self.dispatch(i, Which::Main, a);
            }
            for which in [Which::Main, Which::Other] {
                for t in TIMERS {
                    let Some(slot) = self.peers[i].slot(which) else {
                        continue;
                    };
                    let due = &mut slot.timers[timer_index(t)];
                    if due.is_some_and(|d| d <= now) {
                        *due = None;
                        let a = slot.session.handle(Event::TimerExpired(t));
                        self.dispatch(i, which, a);
                    }
                }
            }
            for t in GrTimer::ALL {
                let Some(p) = self.peers.get_mut(i) else {
                    continue;
                };
                let due = &mut p.gr_timers[gr_timer_index(t)];
                if due.is_some_and(|d| d <= now) {
                    *due = None;
                    let a = p.gr.handle(GrEvent::TimerExpired(t));
                    if a.contains(&GrAction::DeleteAll) {
                        tracing::info!(peer = %p.cfg.address,
                            "bgp: restarting peer not back within its restart time; its routes are deleted");
                    }
                    self.graceful_restart(i, a);
                    self.propagate();
                }
            }
        }
    }

    fn find_conn(&self, id: u64) -> Option<(usize, Which)> {
        self.peers.iter().enumerate().find_map(|(i, p)| {
            if p.main.conn.as_ref().is_some_and(|c| c.id == id) {
                Some((i, Which::Main))
            } else if p
                .other
                .as_ref()
                .and_then(|o| o.conn.as_ref())
                .is_some_and(|c| c.id == id)
            {
                Some((i, Which::Other))
            } else {
                None
            }
        })
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Accepted(stream, from) => {
                let ip = from.ip().to_canonical();
                match self.peers.iter().position(|p| p.cfg.address == ip) {
                    Some(i) => self.new_connection(i, stream, ConnectionOrigin::Remote),
                    None => {
                        tracing::info!(%from, "bgp: connection from unknown peer refused");
                        conn::reject(stream, &self.rejecting);
                    }
                }
            }
            Input::Connected {
                peer,
                attempt,
                stream,
            } => {
                if let Some(i) = self.awaiting(peer, attempt) {
                    self.peers[i].connecting = None;
                    self.new_connection(i, stream, ConnectionOrigin::Local);
                }
            }
            Input::ConnectFailed {
                peer,
                attempt,
                error,
            } => {
                if let Some(i) = self.awaiting(peer, attempt) {
                    let p = &mut self.peers[i];
                    p.connecting = None;
                    p.last_error = Some(format!("connect: {error}"));
                    let a = p.main.session.handle(Event::TcpConnectFailed);
                    self.dispatch(i, Which::Main, a);
                }
            }
            Input::Bytes { conn, data } => {
                if let Some((i, w)) = self.find_conn(conn) {
                    if let Some(slot) = self.peers[i].slot(w) {
                        let a = slot.session.handle_bytes(&data);
                        self.after_bytes(i, w, a);
                    }
                }
            }
            Input::Closed { conn } => {
                if let Some((i, w)) = self.find_conn(conn) {
                    if let Some(slot) = self.peers[i].slot(w) {
                        slot.conn = None;
                        let a = slot.session.handle(Event::TcpClosed);
                        self.dispatch(i, w, a);
                    }
                }
            }
        }
    }

    /// The peer at `addr` if it still waits for connect attempt `attempt`.
    fn awaiting(&self, addr: IpAddr, attempt: u64) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| p.cfg.address == addr && p.attempt == attempt && attempt != 0)
    }

    fn start_conn(&mut self, i: usize, stream: TcpStream, origin: ConnectionOrigin) -> Conn {
        self.next_conn += 1;
        let ttl = conn::ttl_for(&self.peers[i].cfg, self.local_as);
        Conn::start(self.next_conn, origin, stream, ttl, self.in_tx.clone())
    }

    fn new_connection(&mut self, i: usize, stream: TcpStream, origin: ConnectionOrigin) {
        match self.peers[i].main.session.state() {
            // A started session in Idle (after an error) restarts when the peer connects,
            // rather than refusing it until ConnectRetry fires; a stopped one refuses.
            State::Idle
                if origin == ConnectionOrigin::Remote
                    && self.peers[i].main.session.is_started() =>
            {
                let a = self.peers[i].main.session.handle(Event::ManualStart);
                self.dispatch(i, Which::Main, a);
                if self.peers[i].main.session.state() != State::Idle {
                    self.new_connection(i, stream, origin);
                } else {
                    conn::reject(stream, &self.rejecting);
                }
            }
            // Stopped (administratively down): RFC 4486 §4.
            State::Idle => {
                tracing::info!(peer = %self.peers[i].cfg.address,
                    "bgp: connection refused: the session is stopped");
                conn::reject(stream, &self.rejecting);
            }
            State::Connect | State::Active => {
                if origin == ConnectionOrigin::Remote {
                    self.peers[i].cancel_connect();
                }
                let c = self.start_conn(i, stream, origin);
                let p = &mut self.peers[i];
                p.main.conn = Some(c);
                let a = p.main.session.handle(Event::TcpConnected);
                self.dispatch(i, Which::Main, a);
            }
            State::OpenSent | State::OpenConfirm => {
                if self.peers[i].other.is_some() {
                    // A third connection while two are being resolved.
                    conn::reject(stream, &self.rejecting);
                    return;
                }
                let c = self.start_conn(i, stream, origin);
                let p = &mut self.peers[i];
                let mut slot = Slot::new(p.session_cfg.clone());
                // Started so it accepts the connection; its own connect
                // request is not acted on.
                let _ = slot.session.handle(Event::ManualStart);
                slot.conn = Some(c);
                let a = slot.session.handle(Event::TcpConnected);
                p.other = Some(slot);
                self.dispatch(i, Which::Other, a);
            }
            State::Established if origin == ConnectionOrigin::Remote && self.restarted(i) => {
                // RFC 4724 §4.2: a peer with graceful restart that
                // connects again while we still think it is up has
                // restarted without our noticing: the old session ends as
                // if its TCP connection had (its routes turn stale) and
                // the new one is taken.
                tracing::info!(peer = %self.peers[i].cfg.address,
                    "bgp: new connection from an established peer with graceful restart: it restarted");
                let p = &mut self.peers[i];
                p.main.conn = None;
                let a = p.main.session.handle(Event::TcpClosed);
                self.dispatch(i, Which::Main, a);
                let a = self.peers[i].main.session.handle(Event::ManualStart);
                self.dispatch(i, Which::Main, a);
                self.new_connection(i, stream, origin);
            }
            State::Established => {
                // RFC 4271 §6.8: a collision with an established session
                // closes the new connection.
                let c = self.start_conn(i, stream, origin);
                c.send(Notification::cease(cease::COLLISION_RESOLUTION).encode());
            }
        }
    }

    /// True if the established session with peer `i` is one a new
    /// connection replaces: we help it restart and it announced graceful
    /// restart.
    fn restarted(&self, i: usize) -> bool {
        let p = &self.peers[i];
        p.gr.enabled()
            && p.negotiated
                .as_ref()
                .is_some_and(|n| n.peer_graceful_restart.is_some())
    }

    /// Collision resolution once a connection knows the peer's BGP id,
    /// then the actions.
    fn after_bytes(&mut self, i: usize, which: Which, actions: Vec<Action>) {
        let (local_id, local_as) = (self.router_id, self.local_as);
        let p = &mut self.peers[i];
        let mut which = which;
        if p.other.is_some() {
            let Some(this) = p.slot(which) else { return };
            let st = this.session.state();
            if matches!(st, State::OpenConfirm | State::Established) {
                let origin = this.conn.as_ref().map(|c| c.origin);
                let keep_this = st == State::Established
                    || this.session.negotiated().is_none_or(|n| {
                        origin
                            == Some(connection_to_keep(
                                local_id,
                                local_as,
                                n.peer_router_id,
                                n.peer_as,
                            ))
                    });
                let loser = match (keep_this, which) {
                    (true, Which::Main) => p.other.take(),
                    (true, Which::Other) => {
                        which = Which::Main;
                        p.promote_other()
                    }
                    (false, Which::Main) => p.promote_other(),
                    (false, Which::Other) => p.other.take(),
                };
                if let Some(l) = loser {
                    l.close(cease::COLLISION_RESOLUTION);
                }
                if !keep_this {
                    // The loser's actions die with it.
                    return;
                }
            }
        }
        self.dispatch(i, which, actions);
    }

    fn dispatch(&mut self, i: usize, which: Which, actions: Vec<Action>) {
        let mut rib_changed = false;
        // Set when an UPDATE took the peer past its maximum prefixes and
        // the session was stopped: the rest of what the same read gave
        // (more UPDATEs, timers of a session now gone) is moot.
        let mut stopped = false;
        for a in actions {
            if stopped {
                continue;
            }
            match a {
                Action::Connect => {
                    if which == Which::Main {
                        self.start_connect(i);
                    }
                }
                Action::Disconnect => {
                    let p = &mut self.peers[i];
                    if which == Which::Main {
                        p.cancel_connect();
                    }
                    if let Some(s) = p.slot(which) {
                        s.conn = None;
                    }
                }
                Action::Send(bytes) => {
                    let p = &mut self.peers[i];
                    if let Some(n) = sent_notification(&bytes) {
                        tracing::info!(peer = %p.cfg.address, %n, "bgp: NOTIFICATION sent");
                        p.last_error = Some(format!("sent {n}"));
                    }
                    if let Some(c) = p.slot(which).and_then(|s| s.conn.as_ref()) {
                        c.send(bytes);
                    }
                }
                Action::ArmTimer(t, d) => {
                    if let Some(s) = self.peers[i].slot(which) {
                        s.timers[timer_index(t)] = Some(Instant::now() + d);
                    }
                }
                Action::CancelTimer(t) => {
                    if let Some(s) = self.peers[i].slot(which) {
                        s.timers[timer_index(t)] = None;
                    }
                }
                Action::SessionUp(neg) => {
                    // The collision check runs first, so only the main
                    // connection ever gets here.
                    if which == Which::Main {
                        self.session_up(i, *neg);
                        rib_changed = true;
                    }
                }
                Action::SessionDown(why) => {
                    if which == Which::Main {
                        self.session_down(i, why);
                        rib_changed = true;
                    }
                }
                Action::Update(u) => {
                    if let Some(id) = self.peers[i].rib_id.filter(|_| which == Which::Main) {
                        if let Some(n) = &u.treated_as_withdraw {
                            tracing::info!(peer = %self.peers[i].cfg.address, %n,
                                "bgp: UPDATE treated as withdraw (RFC 7606)");
                        } else if u.attributes_discarded {
                            tracing::info!(peer = %self.peers[i].cfg.address,
                                "bgp: UPDATE attributes discarded (RFC 7606)");
                        }
                        if u.ignored_prefixes > 0 {
                            tracing::info!(peer = %self.peers[i].cfg.address,
                                ignored = u.ignored_prefixes,
                                "bgp: multicast or broadcast prefixes in UPDATE ignored (RFC 4271 §6.3)");
                        }
                        self.rib.apply_update(id, &u);
                        rib_changed = true;
                        if self.over_max_prefixes(i, id) {
                            stopped = true;
                            continue;
                        }
                        if let Some(f) = u.end_of_rib {
                            let a = self.peers[i].gr.handle(GrEvent::EndOfRib(f));
                            self.graceful_restart(i, a);
                            let peer = self.peers[i].cfg.address;
                            let d =
                                self.deferral_event(DeferralEvent::EndOfRib { peer, family: f });
                            self.deferral_actions(d);
                        }
                    }
                }
                Action::RouteRefresh(f) => {
                    if which == Which::Main {
                        self.refresh(i, f);
                    }
                }
            }
        }
        let p = &mut self.peers[i];
        if which == Which::Other && p.other.as_ref().is_some_and(|o| o.conn.is_none()) {
            p.other = None;
        }
        if rib_changed {
            self.propagate();
        }
    }

    /// RFC 4271 §6.7 / RFC 4486 §4: if peer `i` now holds more paths of
    /// a family than its limit, stops its session with Cease / Maximum
    /// Number of Prefixes Reached (its routes go with it) and holds it
    /// down for its ConnectRetryTime. True if it did.
    fn over_max_prefixes(&mut self, i: usize, id: PeerId) -> bool {
        let Some(max) = self.peers[i].cfg.max_prefixes else {
            return false;
        };
        let Some(f) = Family::ALL
            .into_iter()
            .find(|f| self.rib.received(id, *f) > max as usize)
        else {
            return false;
        };
        let p = &mut self.peers[i];
        tracing::warn!(peer = %p.cfg.address, family = ?f, limit = max,
            "bgp: maximum number of prefixes exceeded; session stopped");
        let (afi, safi) = f.afi_safi();
        let hold = Duration::from_secs(p.cfg.connect_retry_time.into());
        p.idle_hold = Some(Instant::now() + hold);
        let n = Notification::max_prefixes(afi, safi, max);
        let a = p.main.session.handle(Event::StopWith(n));
        self.dispatch(i, Which::Main, a);
        true
    }

    fn start_connect(&mut self, i: usize) {
        let listen_ip = self
            .listen
            .map(|l| l.ip())
            .filter(|ip| !ip.is_unspecified());
        let ttl = conn::ttl_for(&self.peers[i].cfg, self.local_as);
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        let p = &mut self.peers[i];
        p.cancel_connect();
        p.attempt = attempt;
        let local = p
            .cfg
            .local_address
            .or(listen_ip.filter(|ip| ip.is_ipv4() == p.cfg.address.is_ipv4()));
        let params = ConnectParams {
            remote: SocketAddr::new(p.cfg.address, p.cfg.port),
            local,
            ttl,
            md5: p.cfg.md5_password.clone(),
        };
        p.connecting = Some(conn::spawn_connect(
            p.cfg.address,
            attempt,
            params,
            self.in_tx.clone(),
        ));
    }

    fn session_up(&mut self, i: usize, neg: Negotiated) {
        let p = &mut self.peers[i];
        let local = p.main.conn.as_ref().and_then(|c| c.local).map(|a| a.ip());
        let info = PeerInfo {
            address: p.cfg.address,
            router_id: neg.peer_router_id,
            peer_as: neg.peer_as,
            local_as: self.local_as,
            rr_client: p.cfg.route_reflector_client,
            multihop: p.cfg.multihop_ttl.is_some(),
            local_address: p.cfg.next_hop_v4.or(match local {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            }),
            local_address_v6: p.cfg.next_hop_v6.or(match local {
                Some(IpAddr::V6(a)) => Some(a),
                _ => None,
            }),
            import: p.cfg.import.clone(),
            export: p.cfg.export.clone(),
        };
        // Back from a graceful restart: same RIB peer, so its stale paths
        // are there to be replaced.
        let id = match p.rib_id.take() {
            Some(id) if p.gr.retaining() => {
                self.rib.set_peer_info(id, info);
                id
            }
            old => {
                if let Some(old) = old {
                    self.rib.remove_peer(old);
                }
                self.rib.add_peer(info)
            }
        };
        let p = &mut self.peers[i];
        p.rib_id = Some(id);
        p.up_since = Some(Instant::now());
        p.adj_out = AdjRibOut::new(
            neg.add_path_tx(Family::Ipv4Unicast),
            neg.add_path_tx(Family::Ipv6Unicast),
        );
        let families = neg.families.clone();
        // RFC 4724 §4.1: while our own route selection is deferred, a
        // peer that keeps our routes across our restart gets our UPDATEs
        // and End-of-RIB only once it has run; others at once.
        let peer_gr = neg.peer_graceful_restart.clone();
        p.held = match &self.restart {
            Some(r) if peer_gr.is_some() && p.cfg.graceful_restart => families
                .iter()
                .copied()
                .filter(|f| r.is_deferred(*f))
                .collect(),
            _ => Vec::new(),
        };
        let gr = p.gr.handle(GrEvent::SessionUp {
            peer: neg.peer_graceful_restart.as_ref(),
            families: &neg.families,
        });
        p.negotiated = Some(neg);
        self.graceful_restart(i, gr);
        let p = &self.peers[i];
        let (peer, asn) = (p.cfg.address, p.cfg.remote_as);
        tracing::info!(%peer, "bgp: session established");
        self.emit(SpeakerEvent::SessionUp { peer, asn });
        // Initial Adj-RIB-Out, then End-of-RIB per family (RFC 4724 §2).
        let v4: Vec<_> = self.rib.v4.prefixes().copied().collect();
        let v6: Vec<_> = self.rib.v6.prefixes().copied().collect();
        self.sync_peer(i, &v4, &v6);
        for f in &families {
            if !self.peers[i].held.contains(f) {
                self.send_end_of_rib(i, *f);
            }
        }
        if !self.peers[i].held.is_empty() {
            tracing::info!(%peer, held = ?self.peers[i].held,
                "bgp: our UPDATEs and End-of-RIB wait for route selection after our restart");
        }
        let d = self.deferral_event(DeferralEvent::SessionUp {
            peer,
            gr: peer_gr.as_ref(),
            families: &families,
        });
        self.deferral_actions(d);
    }

    fn send_end_of_rib(&self, i: usize, f: Family) {
        match update_tx::end_of_rib(f) {
            Ok(b) => self.send_main(i, b),
            Err(e) => tracing::warn!(error = %e, "bgp: End-of-RIB encoding"),
        }
    }

    fn session_down(&mut self, i: usize, why: DownReason) {
        let p = &mut self.peers[i];
        let reason = match &why {
            DownReason::Sent(n) => format!("sent {n}"),
            DownReason::Received(n) => format!("received {n}"),
            DownReason::TcpClosed => "connection closed".to_string(),
            DownReason::ManualStop => "stopped".to_string(),
        };
        tracing::info!(peer = %p.cfg.address, %reason, "bgp: session down");
        p.last_error = Some(reason.clone());
        p.flaps += 1;
        p.up_since = None;
        p.adj_out = AdjRibOut::default();
        p.held.clear();
        // Only a connection that ended without a NOTIFICATION may be a
        // restart (RFC 4724 §4.2).
        let gr = p.gr.handle(GrEvent::SessionDown {
            peer: p
                .negotiated
                .as_ref()
                .and_then(|n| n.peer_graceful_restart.as_ref()),
            tcp_only: why == DownReason::TcpClosed,
        });
        p.negotiated = None;
        let addr = p.cfg.address;
        self.graceful_restart(i, gr);
        self.emit(SpeakerEvent::SessionDown { peer: addr, reason });
    }

    /// Carries out what the graceful-restart helper of peer `i` decided.
    /// The caller propagates the RIB changes.
    fn graceful_restart(&mut self, i: usize, actions: Vec<GrAction>) {
        for a in actions {
            let p = &mut self.peers[i];
            let addr = p.cfg.address;
            match a {
                GrAction::RetainStale(families) => {
                    if let Some(id) = p.rib_id {
                        self.rib.mark_stale(id, &families);
                        tracing::info!(peer = %addr, ?families, stale = self.rib.stale_count(id),
                            "bgp: peer restarting; its routes are kept as stale (RFC 4724)");
                    }
                }
                GrAction::DeleteAll => {
                    if let Some(id) = p.rib_id.take() {
                        self.rib.remove_peer(id);
                    }
                }
                GrAction::SweepStale(families) => {
                    if let Some(id) = p.rib_id {
                        for f in families {
                            let n = self.rib.sweep_stale(id, f);
                            tracing::info!(peer = %addr, family = ?f, deleted = n,
                                "bgp: stale routes not announced again are deleted");
                        }
                    }
                }
                GrAction::ArmTimer(t, d) => {
                    p.gr_timers[gr_timer_index(t)] = Some(Instant::now() + d)
                }
                GrAction::CancelTimer(t) => p.gr_timers[gr_timer_index(t)] = None,
            }
        }
    }

    fn send_main(&self, i: usize, bytes: Vec<u8>) {
        if let Some(c) = &self.peers[i].main.conn {
            c.send(bytes);
        }
    }

    fn tx_params(neg: &Negotiated, f: Family) -> TxParams {
        TxParams {
            four_octet_as: neg.four_octet_as,
            add_path: neg.add_path_tx(f),
            max_len: neg.max_message_len(),
        }
    }

    /// Brings one established peer's Adj-RIB-Out up to date for the
    /// given prefixes and sends the difference.
    fn sync_peer(&mut self, i: usize, v4: &[ipnet::Ipv4Net], v6: &[ipnet::Ipv6Net]) {
        let p = &mut self.peers[i];
        let (Some(id), Some(neg)) = (p.rib_id, p.negotiated.as_ref()) else {
            return;
        };
        if p.main.session.state() != State::Established {
            return;
        }
        let mut msgs = Vec::new();
        if !v4.is_empty()
            && neg.families.contains(&Family::Ipv4Unicast)
            && !p.held.contains(&Family::Ipv4Unicast)
        {
            let ch = self.rib.sync_adj_rib_out_v4(id, &mut p.adj_out, v4);
            if !ch.announce.is_empty() || !ch.withdraw.is_empty() {
                let params = Self::tx_params(neg, Family::Ipv4Unicast);
                match update_tx::build_v4(&ch.announce, &ch.withdraw, &params) {
                    Ok(m) => msgs.extend(m),
                    Err(e) => tracing::warn!(error = %e, "bgp: UPDATE encoding"),
                }
            }
        }
        if !v6.is_empty()
            && neg.families.contains(&Family::Ipv6Unicast)
            && !p.held.contains(&Family::Ipv6Unicast)
        {
            let ch = self.rib.sync_adj_rib_out_v6(id, &mut p.adj_out, v6);
            if !ch.announce.is_empty() || !ch.withdraw.is_empty() {
                let params = Self::tx_params(neg, Family::Ipv6Unicast);
                match update_tx::build_v6(&ch.announce, &ch.withdraw, &params) {
                    Ok(m) => msgs.extend(m),
                    Err(e) => tracing::warn!(error = %e, "bgp: UPDATE encoding"),
                }
            }
        }
        for m in msgs {
            self.send_main(i, m);
        }
    }

    /// RFC 2918: resend the whole Adj-RIB-Out of a family, as it was
    /// sent (ADD-PATH identifiers included).
    fn refresh(&mut self, i: usize, f: Family) {
        let p = &self.peers[i];
        let Some(neg) = p.negotiated.as_ref() else {
            return;
        };
        if p.main.session.state() != State::Established {
            return;
        }
        let params = Self::tx_params(neg, f);
        let msgs = match f {
            Family::Ipv4Unicast => update_tx::build_v4(&p.adj_out.v4.announcements(), &[], &params),
            Family::Ipv6Unicast => update_tx::build_v6(&p.adj_out.v6.announcements(), &[], &params),
        };
        match msgs {
            Ok(msgs) => {
                for m in msgs {
                    self.send_main(i, m);
                }
            }
            Err(e) => tracing::warn!(error = %e, "bgp: UPDATE encoding"),
        }
    }

    /// After RIB changes: tell the FIB and every established peer.
    fn propagate(&mut self) {
        if self.stopping {
            return;
        }
        let c4 = self.rib.v4.take_changes();
        let c6 = self.rib.v6.take_changes();
        if c4.is_empty() && c6.is_empty() {
            return;
        }
        let mut changes = Vec::with_capacity(c4.len() + c6.len());
        // A family whose selection is deferred keeps its restored FIB
        // entries until [`Core::complete`].
        let deferred = |f| self.restart.as_ref().is_some_and(|r| r.is_deferred(f));
        if !deferred(Family::Ipv4Unicast) {
            for p in &c4 {
                changes.push(best_paths(&self.rib, &self.rib.v4, p));
            }
        }
        if !deferred(Family::Ipv6Unicast) {
            for p in &c6 {
                changes.push(best_paths(&self.rib, &self.rib.v6, p));
            }
        }
        if !changes.is_empty() {
            if let Some(r) = self.restart.as_mut() {
                r.dirty = true;
            }
            self.emit(SpeakerEvent::BestPathsChanged(changes));
        }
        for i in 0..self.peers.len() {
            self.sync_peer(i, &c4, &c6);
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Advertise(routes) => {
                for r in routes {
                    self.originate(r);
                }
            }
            Command::Withdraw(prefixes) => {
                for p in prefixes {
                    if self.local_routes.remove(&p).is_some() {
                        self.rib.withdraw_local(p);
                    }
                }
            }
            Command::SetLocalRoutes(routes) => {
                let wanted: BTreeMap<IpNet, Option<IpAddr>> =
                    routes.iter().map(|r| (r.prefix, r.next_hop)).collect();
                let gone: Vec<IpNet> = self
                    .local_routes
                    .keys()
                    .filter(|p| !wanted.contains_key(p))
                    .copied()
                    .collect();
                for p in gone {
                    self.local_routes.remove(&p);
                    self.rib.withdraw_local(p);
                }
                for r in routes {
                    self.originate(r);
                }
            }
            Command::Neighbors(reply) => {
                let _ = reply.send(self.neighbors());
            }
            Command::Routes(reply) => {
                let _ = reply.send(self.routes());
            }
            Command::SetPeers(wanted, reply) => {
                let d = peer_set::diff(&self.peer_configs(), &wanted);
                let _ = reply.send(self.change_peers(d));
            }
            Command::AddPeer(p, reply) => {
                let mut wanted = self.peer_configs();
                wanted.retain(|q| q.address != p.address);
                wanted.push(*p);
                let d = peer_set::diff(&self.peer_configs(), &wanted);
                let _ = reply.send(self.change_peers(d));
            }
            Command::RemovePeer(addr, reply) => {
                let d = PeerSetDiff {
                    removed: self
                        .peers
                        .iter()
                        .filter(|p| p.cfg.address == addr)
                        .map(|p| p.cfg.address)
                        .collect(),
                    ..PeerSetDiff::default()
                };
                let _ = reply.send(self.change_peers(d));
            }
            Command::Reconfigure {
                local_as,
                cluster_id,
                reply,
            } => {
                let _ = reply.send(self.reconfigure(local_as, cluster_id));
            }
            Command::RestartStatus(reply) => {
                let _ = reply.send(self.restart_status());
            }
            Command::SetNextHopResolver(r) => {
                // Every prefix is decided again; what changed reaches the
                // FIB and the peers through `propagate` below.
                self.rib.set_igp(Box::new(Arc::clone(&r)));
                self.resolver = Some(r);
                tracing::info!("bgp: next-hop resolver changed; route selection run again");
            }
            // Handled in `run`.
            Command::Shutdown(..) => {}
        }
        self.propagate();
    }

    fn peer_configs(&self) -> Vec<PeerConfig> {
        self.peers.iter().map(|p| p.cfg.clone()).collect()
    }

    /// Carries out `d`; sessions of peers it does not name are left alone.
    fn change_peers(&mut self, d: PeerSetDiff) -> PeerChanges {
        let mut done = PeerChanges::default();
        // Our restart's deferral hears of the change as a whole, peers
        // that (re)start first, so that a peer restarted with new
        // settings never looks gone for a moment.
        let mut counted = Vec::new();
        let mut gone = Vec::new();
        for addr in d.removed {
            if self.remove_peer(addr, cease::PEER_DECONFIGURED) {
                done.removed.push(addr);
                gone.push(addr);
            }
        }
        for p in d.changed {
            // RFC 4486 has a subcode for exactly this.
            self.remove_peer(p.address, cease::OTHER_CONFIG_CHANGE);
            done.changed.push(p.address);
            if p.graceful_restart {
                counted.push(p.address);
            } else {
                gone.push(p.address);
            }
            self.add_peer(p);
        }
        for p in d.added {
            done.added.push(p.address);
            if p.graceful_restart {
                counted.push(p.address);
            }
            self.add_peer(p);
        }
        let events = counted
            .into_iter()
            .map(DeferralEvent::PeerAdded)
            .chain(gone.into_iter().map(DeferralEvent::PeerRemoved));
        for e in events {
            let a = self.deferral_event(e);
            self.deferral_actions(a);
        }
        done
    }

    /// Starts a session with a new peer.
    fn add_peer(&mut self, cfg: PeerConfig) {
        tracing::debug!(peer = %cfg.address, asn = cfg.remote_as, "bgp: peer added");
        let gr = gr_capability(self.restart.as_ref());
        let mut peer = Peer::new(cfg, self.local_as, self.router_id, gr);
        if let (Some(l), Some(listen)) = (&self.listener, self.listen) {
            if let Err(e) = conn::set_listener_key(l.as_ref(), listen, &peer.cfg, true) {
                // The peer's SYNs will be dropped; our own connects still carry the key.
                tracing::warn!(peer = %peer.cfg.address, error = %e, "bgp: TCP MD5 key on the listener");
                peer.last_error = Some(format!("TCP MD5 key on the listener: {e}"));
            }
        }
        self.peers.push(peer);
        let i = self.peers.len() - 1;
        let a = self.peers[i].main.session.handle(Event::ManualStart);
        self.dispatch(i, Which::Main, a);
    }

    /// Stops the session with `addr` (Cease / `subcode` if a BGP
    /// connection is open) and forgets the peer; what it taught us leaves
    /// the Loc-RIB and the FIB. False if there is no such peer.
    fn remove_peer(&mut self, addr: IpAddr, subcode: u8) -> bool {
        let Some(i) = self.peers.iter().position(|p| p.cfg.address == addr) else {
            return false;
        };
        if let Some(o) = self.peers[i].other.take() {
            o.close(subcode);
        }
        let a = self.peers[i]
            .main
            .session
            .handle(Event::ManualStopWith(subcode));
        // Sends the NOTIFICATION, closes the connection (after the write)
        // and, if the session was up, takes its routes out and tells the
        // FIB and the other peers.
        self.dispatch(i, Which::Main, a);
        let mut p = self.peers.remove(i);
        p.cancel_connect();
        if let Some(id) = p.rib_id.take() {
            // Not established yet, but registered: nothing was learned.
            self.rib.remove_peer(id);
        }
        if let (Some(l), Some(listen)) = (&self.listener, self.listen) {
            if let Err(e) = conn::set_listener_key(l.as_ref(), listen, &p.cfg, false) {
                tracing::debug!(peer = %addr, error = %e, "bgp: removing the TCP MD5 key");
            }
        }
        tracing::debug!(peer = %addr, "bgp: peer removed");
        true
    }

    /// A new local AS or route-reflector cluster id. Both shape every
    /// session (our OPEN, iBGP or eBGP, what is reflected to whom), so
    /// every session restarts (Cease / Other Configuration Change) over a
    /// fresh RIB that keeps our own routes. False if nothing changed.
    fn reconfigure(&mut self, local_as: u32, cluster_id: Option<Ipv4Addr>) -> bool {
        if local_as == self.local_as && cluster_id == self.cluster_id {
            return false;
        }
        tracing::info!(
            from = self.local_as,
            to = local_as,
            ?cluster_id,
            "bgp: local AS or cluster id changed; restarting every session"
        );
        let configs = self.peer_configs();
        for p in &configs {
            self.remove_peer(p.address, cease::OTHER_CONFIG_CHANGE);
        }
        self.propagate();
        self.local_as = local_as;
        self.cluster_id = cluster_id;
        self.rib = new_rib(local_as, self.router_id, cluster_id, self.multipath_max);
        if let Some(r) = &self.resolver {
            self.rib.set_igp(Box::new(Arc::clone(r)));
        }
        let own: Vec<LocalRoute> = std::mem::take(&mut self.local_routes)
            .into_iter()
            .map(|(prefix, next_hop)| LocalRoute { prefix, next_hop })
            .collect();
        for r in own {
            self.originate(r);
        }
        // Our own routes are never FIB entries: nothing to tell the agent.
        self.rib.v4.take_changes();
        self.rib.v6.take_changes();
        for p in configs {
            self.add_peer(p);
        }
        true
    }

    fn originate(&mut self, r: LocalRoute) {
        let prefix = r.prefix.trunc();
        // A next hop of the other family is ignored: the peer's own
        // session address is used instead.
        let nh = r
            .next_hop
            .filter(|nh| nh.is_ipv4() == matches!(prefix, IpNet::V4(_)));
        if self.local_routes.get(&prefix) == Some(&nh) {
            return;
        }
        self.local_routes.insert(prefix, nh);
        self.rib
            .originate(prefix, PathAttrs::new(Origin::Igp, AsPath::default(), nh));
    }

    /// True if the peer's session negotiated graceful restart with our
    /// families: the peer keeps our routes while we restart.
    fn keeps_our_routes(&self, i: usize) -> bool {
        let p = &self.peers[i];
        let ours = p
            .session_cfg
            .graceful_restart
            .as_ref()
            .is_some_and(|g| !g.families.is_empty());
        ours && p.main.session.state() == State::Established
            && p.negotiated
                .as_ref()
                .is_some_and(|n| n.peer_graceful_restart.is_some())
    }

    fn deferral_event(&mut self, e: DeferralEvent<'_>) -> Vec<DeferralAction> {
        self.restart
            .as_mut()
            .and_then(|r| r.deferral.as_mut())
            .map(|d| d.handle(e))
            .unwrap_or_default()
    }

    fn deferral_actions(&mut self, actions: Vec<DeferralAction>) {
        for a in actions {
            match a {
                DeferralAction::ArmTimer(d) => {
                    if let Some(r) = self.restart.as_mut() {
                        r.deferral_timer = Some(Instant::now() + d);
                    }
                }
                DeferralAction::CancelTimer => {
                    if let Some(r) = self.restart.as_mut() {
                        r.deferral_timer = None;
                    }
                }
                DeferralAction::Complete(families) => self.complete(&families),
            }
        }
    }

    /// Route selection after our restart (RFC 4724 §4.1) for `families`:
    /// the FIB gets what was learned in place of the restored routes (a
    /// restored route not learned again is deleted), and the peers we
    /// held back get our UPDATEs and End-of-RIB.
    fn complete(&mut self, families: &[Family]) {
        let Some(r) = self.restart.as_mut() else {
            return;
        };
        let by = r
            .deferral
            .as_ref()
            .and_then(SelectionDeferral::completed_by);
        let mut changes = Vec::new();
        for &f in families {
            let restored: BTreeMap<IpNet, Vec<IpAddr>> = r
                .restored
                .iter()
                .filter(|(p, _)| family_of(p) == f)
                .map(|(p, h)| (*p, h.clone()))
                .collect();
            r.restored.retain(|p, _| family_of(p) != f);
            let before = changes.len();
            // Our own routes (no next hop to install) are not FIB entries.
            let mut put = |b: BestPaths| {
                if !b.next_hops.is_empty() {
                    changes.push(b);
                }
            };
            match f {
                Family::Ipv4Unicast => {
                    for p in self.rib.v4.prefixes() {
                        put(best_paths(&self.rib, &self.rib.v4, p));
                    }
                }
                Family::Ipv6Unicast => {
                    for p in self.rib.v6.prefixes() {
                        put(best_paths(&self.rib, &self.rib.v6, p));
                    }
                }
            }
            let learned: std::collections::BTreeSet<IpNet> =
                changes[before..].iter().map(|b| b.prefix).collect();
            let mut kept = 0;
            let mut gone = 0;
            for p in restored.keys() {
                if learned.contains(p) {
                    kept += 1;
                } else {
                    gone += 1;
                    changes.push(BestPaths {
                        prefix: *p,
                        next_hops: Vec::new(),
                    });
                }
            }
            tracing::info!(family = ?f, by = ?by, restored = restored.len(), learned_again = kept,
                deleted = gone, "bgp: route selection after our graceful restart; restored routes replaced");
        }
        r.dirty = true;
        let done = !r.deferring();
        if !changes.is_empty() {
            self.emit(SpeakerEvent::BestPathsChanged(changes));
        }
        let v4: Vec<_> = self.rib.v4.prefixes().copied().collect();
        let v6: Vec<_> = self.rib.v6.prefixes().copied().collect();
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            let released: Vec<Family> = p
                .held
                .iter()
                .copied()
                .filter(|f| families.contains(f))
                .collect();
            if released.is_empty() {
                continue;
            }
            p.held.retain(|f| !released.contains(f));
            let none4: &[ipnet::Ipv4Net] = &[];
            let none6: &[ipnet::Ipv6Net] = &[];
            let (s4, s6) = (
                if released.contains(&Family::Ipv4Unicast) {
                    &v4[..]
                } else {
                    none4
                },
                if released.contains(&Family::Ipv6Unicast) {
                    &v6[..]
                } else {
                    none6
                },
            );
            self.sync_peer(i, s4, s6);
            for f in released {
                self.send_end_of_rib(i, f);
            }
        }
        if done {
            tracing::info!("bgp: graceful restart complete");
            // Later OPENs no longer say we restarted.
            let gr = gr_capability(self.restart.as_ref());
            for p in &mut self.peers {
                let g = gr.clone().filter(|_| p.cfg.graceful_restart);
                p.session_cfg.graceful_restart.clone_from(&g);
                p.main.session.set_graceful_restart(g);
            }
        }
    }

    /// What the FIB holds now, for the state file: the restored routes
    /// of deferred families, the selected learned routes of the others.
    fn fib_state(&self) -> RestartState {
        let mut routes = BTreeMap::new();
        let Some(r) = &self.restart else {
            return RestartState::default();
        };
        routes.extend(r.restored.iter().map(|(p, h)| (*p, h.clone())));
        let mut put = |b: BestPaths| {
            if !b.next_hops.is_empty() {
                routes.insert(b.prefix, b.next_hops);
            }
        };
        if !r.is_deferred(Family::Ipv4Unicast) {
            for p in self.rib.v4.prefixes() {
                put(best_paths(&self.rib, &self.rib.v4, p));
            }
        }
        if !r.is_deferred(Family::Ipv6Unicast) {
            for p in self.rib.v6.prefixes() {
                put(best_paths(&self.rib, &self.rib.v6, p));
            }
        }
        RestartState {
            saved_at: state_file::unix_secs(SystemTime::now()),
            routes,
        }
    }

    /// Once a second: rewrite the state file if the FIB changed (in the
    /// background, at most every few seconds), otherwise touch it.
    fn state_tick(&mut self, now: Instant) {
        let text = match &self.restart {
            Some(r)
                if r.dirty
                    && r.writing.as_ref().is_none_or(JoinHandle::is_finished)
                    && r.last_write.is_none_or(|t| now >= t + STATE_MIN_REWRITE) =>
            {
                Some(self.fib_state().encode())
            }
            _ => None,
        };
        let Some(r) = self.restart.as_mut() else {
            return;
        };
        r.next_tick = now + STATE_TICK;
        if let Some(text) = text {
            r.dirty = false;
            r.last_write = Some(now);
            let dir = r.cfg.state_dir.clone();
            r.writing = Some(tokio::task::spawn_blocking(move || {
                if let Err(e) = state_file::save(&dir, &text) {
                    tracing::warn!(dir = %dir.display(), error = %e, "bgp: cannot write the restart state");
                }
            }));
        } else if r.writing.as_ref().is_none_or(JoinHandle::is_finished) {
            if let Err(e) = state_file::touch(&r.cfg.state_dir) {
                // No file yet (nothing written so far) is fine.
                if e.kind() == std::io::ErrorKind::NotFound {
                    r.dirty = true;
                } else {
                    tracing::debug!(error = %e, "bgp: cannot touch the restart state");
                }
            }
        }
    }

    /// At shutdown: the state file as of now, after any write in flight.
    async fn save_state_now(&mut self) {
        let Some(r) = self.restart.as_mut() else {
            return;
        };
        if let Some(w) = r.writing.take() {
            let _ = w.await;
        }
        let text = self.fib_state().encode();
        let Some(r) = self.restart.as_ref() else {
            return;
        };
        let dir = r.cfg.state_dir.clone();
        let n = text.lines().count().saturating_sub(2);
        let saved = tokio::task::spawn_blocking(move || state_file::save(&dir, &text)).await;
        match saved {
            Ok(Ok(())) => tracing::info!(dir = %r.cfg.state_dir.display(), routes = n,
                "bgp: restart state saved"),
            Ok(Err(e)) => tracing::warn!(dir = %r.cfg.state_dir.display(), error = %e,
                "bgp: cannot save the restart state; the next start will not be a graceful restart"),
            Err(e) => tracing::warn!(error = %e, "bgp: restart state writer failed"),
        }
    }

    fn restart_status(&self) -> RestartStatus {
        let Some(r) = &self.restart else {
            return RestartStatus::default();
        };
        let d = r.deferral.as_ref();
        RestartStatus {
            enabled: true,
            restarted: r.restarted,
            deferred: d.map(|d| d.deferred().to_vec()).unwrap_or_default(),
            waiting_for: d.map(SelectionDeferral::waiting_for).unwrap_or_default(),
            deferral_left: r
                .deferral_timer
                .map(|t| t.saturating_duration_since(Instant::now())),
            restored_routes: r.restored.len(),
            start_note: r.start_note.clone(),
        }
    }

    fn neighbors(&self) -> Vec<NeighborStatus> {
        self.peers
            .iter()
            .map(|p| NeighborStatus {
                addr: p.cfg.address,
                asn: p.cfg.remote_as,
                state: p.main.session.state(),
                uptime: p.up_since.map(|t| t.elapsed()),
                prefixes_in: p.rib_id.map_or(0, |id| {
                    Family::ALL.iter().map(|f| self.rib.received(id, *f)).sum()
                }),
                prefixes_out: p.adj_out.v4.len() + p.adj_out.v6.len(),
                flaps: p.flaps,
                last_error: p.last_error.clone(),
                errors: p.main.session.errors(),
            })
            .collect()
    }

    fn routes(&self) -> Vec<RouteEntry> {
        let mut out = Vec::with_capacity(self.rib.v4.len() + self.rib.v6.len());
        for p in self.rib.v4.prefixes() {
            out.push(route_entry(&self.rib, &self.rib.v4, p));
        }
        for p in self.rib.v6.prefixes() {
            out.push(route_entry(&self.rib, &self.rib.v6, p));
        }
        match &self.restart {
            Some(r) if !r.restored.is_empty() => with_restored(out, &r.restored),
            _ => out,
        }
    }

    /// Ends every session; `for_restart`: a peer that keeps our routes
    /// across our restart gets a bare TCP close (RFC 4724 §4.2: a
    /// NOTIFICATION would make it delete them), the others Cease.
    fn stop_all(&mut self, for_restart: bool) {
        self.stopping = true;
        for i in 0..self.peers.len() {
            if let Some(o) = self.peers[i].other.take() {
                o.close(cease::ADMIN_SHUTDOWN);
            }
            if for_restart && self.keeps_our_routes(i) {
                let p = &mut self.peers[i];
                tracing::info!(peer = %p.cfg.address,
                    "bgp: closing the session without NOTIFICATION: the peer keeps our routes while we restart");
                // Dropping the connection writes what is queued, then FIN.
                p.main.conn = None;
                p.cancel_connect();
                continue;
            }
            let a = self.peers[i].main.session.handle(Event::ManualStop);
            self.dispatch(i, Which::Main, a);
            self.peers[i].cancel_connect();
        }
    }
}

impl Restart {
    /// Reads the state directory: a young enough state makes this start
    /// a graceful restart.
    fn load(cfg: RestartConfig) -> Self {
        let (restarted, restored, start_note) = match state_file::load(
            &cfg.state_dir,
            cfg.restart_time,
            SystemTime::now(),
        ) {
            Loaded::Restart(state, age) => {
                tracing::info!(dir = %cfg.state_dir.display(), age_secs = age.as_secs(),
                        routes = state.routes.len(),
                        "bgp: graceful restart: saved routes restored to the FIB (stale) until the peers' End-of-RIB");
                let note = format!(
                    "graceful restart: state saved {}s ago, {} routes restored",
                    age.as_secs(),
                    state.routes.len()
                );
                (true, state.routes, note)
            }
            Loaded::Normal(why) => {
                tracing::info!(dir = %cfg.state_dir.display(), reason = %why,
                        "bgp: normal start (not a graceful restart)");
                (false, BTreeMap::new(), format!("normal start: {why}"))
            }
        };
        Self {
            cfg,
            restarted,
            start_note,
            deferral: None,
            deferral_timer: None,
            restored,
            // The state of this life is written at the first tick.
            dirty: true,
            last_write: None,
            next_tick: Instant::now(),
            writing: None,
        }
    }
}

/// The graceful-restart capability we announce: helper only without a
/// restart configuration; otherwise our families with our Restart Time,
/// and while our own restart's selection is deferred the Restart State
/// bit and the Forwarding State bit of each deferred family.
fn gr_capability(r: Option<&Restart>) -> Option<GracefulRestartConfig> {
    let Some(r) = r else {
        return Some(GracefulRestartConfig::helper_only());
    };
    let deferring = r.restarted && r.deferral.as_ref().is_none_or(|d| d.deferring());
    Some(GracefulRestartConfig {
        restart_time: r.cfg.restart_time,
        restarting: deferring,
        families: Family::ALL.to_vec(),
        forwarding_preserved: if deferring {
            Family::ALL
                .iter()
                .copied()
                .filter(|f| r.deferral.as_ref().is_none_or(|d| d.is_deferred(*f)))
                .collect()
        } else {
            Vec::new()
        },
    })
}

fn family_of(p: &IpNet) -> Family {
    match p {
        IpNet::V4(_) => Family::Ipv4Unicast,
        IpNet::V6(_) => Family::Ipv6Unicast,
    }
}

/// `routes` with the restored FIB entries merged in: each a stale,
/// restored path that is the one in force (the learned paths of its
/// prefix wait for route selection).
fn with_restored(
    routes: Vec<RouteEntry>,
    restored: &BTreeMap<IpNet, Vec<IpAddr>>,
) -> Vec<RouteEntry> {
    let mut all: BTreeMap<IpNet, RouteEntry> = routes.into_iter().map(|r| (r.prefix, r)).collect();
    for (prefix, hops) in restored {
        let e = all.entry(*prefix).or_insert_with(|| RouteEntry {
            prefix: *prefix,
            paths: Vec::new(),
        });
        for p in &mut e.paths {
            p.best = false;
            p.multipath = false;
        }
        let restored_paths = hops.iter().map(|nh| RoutePath {
            peer: None,
            next_hop: Some(*nh),
            as_path: Vec::new(),
            local_pref: None,
            med: None,
            best: false,
            multipath: true,
            stale: true,
            restored: true,
        });
        let mut paths: Vec<RoutePath> = restored_paths.chain(e.paths.drain(..)).collect();
        if let Some(first) = paths.first_mut() {
            first.best = true;
        }
        e.paths = paths;
    }
    all.into_values().collect()
}

/// `Some` when `bytes` is a NOTIFICATION (for the neighbour's last error).
fn sent_notification(bytes: &[u8]) -> Option<Notification> {
    if bytes.get(18) != Some(&wire::MSG_NOTIFICATION) {
        return None;
    }
    Notification::decode_body(bytes.get(wire::HEADER_LEN..)?)
}

fn best_paths<P: RibPrefix>(rib: &Rib, t: &Table<P>, p: &P) -> BestPaths {
    let mut next_hops: Vec<IpAddr> = Vec::new();
    for path in rib.multipath(t, p) {
        if path.peer == PeerId::LOCAL {
            continue;
        }
        if let Some(nh) = path.attrs.next_hop {
            if !next_hops.contains(&nh) {
                next_hops.push(nh);
            }
        }
    }
    BestPaths {
        prefix: (*p).into(),
        next_hops,
    }
}

fn route_entry<P: RibPrefix>(rib: &Rib, t: &Table<P>, p: &P) -> RouteEntry {
    let multi = rib.multipath(t, p);
    let same = |a: &Path, b: &Path| a.peer == b.peer && a.path_id == b.path_id;
    let paths = t
        .paths(p)
        .iter()
        .map(|path| RoutePath {
            peer: (path.peer != PeerId::LOCAL)
                .then(|| rib.peer(path.peer).map(|i| i.address))
                .flatten(),
            next_hop: path.attrs.next_hop,
            as_path: path
                .attrs
                .as_path
                .segments
                .iter()
                .flat_map(|s| match s {
                    AsSegment::Sequence(v)
                    | AsSegment::Set(v)
                    | AsSegment::ConfedSequence(v)
                    | AsSegment::ConfedSet(v) => v.iter().copied(),
                })
                .collect(),
            local_pref: path.attrs.local_pref,
            med: path.attrs.med,
            best: multi.first().is_some_and(|b| same(b, path)),
            multipath: multi.iter().any(|b| same(b, path)),
            stale: rib.is_stale(path.peer, (*p).into(), path.path_id),
            restored: false,
        })
        .collect();
    RouteEntry {
        prefix: (*p).into(),
        paths,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
