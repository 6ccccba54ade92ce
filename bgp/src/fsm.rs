//! The session state machine (RFC 4271 §8), sans IO.
//!
//! The shell feeds [`Event`]s and carries out the returned [`Action`]s:
//! open or close TCP, write bytes, arm or cancel timers, and hand routes
//! to the RIB. The machine never reads a clock: a timer firing is an
//! event. Simplifications against §8.2.2, all deliberate: no DelayOpen,
//! no IdleHoldTimer/DampPeerOscillations; an administratively started
//! session that falls back to Idle re-arms ConnectRetry and restarts when
//! it fires (the AutomaticStart of §8.1.2), or at once when the peer
//! connects (AutomaticStart with passive TCP establishment, §8.1.1).

use crate::capability::{self, Negotiated};
use crate::config::{Family, SessionConfig};
use crate::notification::{self, Notification};
use crate::open;
use crate::update_check::UpdateContext;
use crate::update_rx::{self, ParsedUpdate};
use crate::wire::{self, Frame, Framer};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ManualStart,
    /// Stop with Cease / Administrative Shutdown (RFC 4486 subcode 2).
    ManualStop,
    /// Stop with Cease and this subcode instead (RFC 4486): the shell
    /// names why the session ends, e.g. Peer De-configured (3) when the
    /// peer leaves the configuration, Other Configuration Change (6) when
    /// it is replaced with different settings. The peer is told, and the
    /// session stays down (no automatic restart).
    ManualStopWith(u8),
    /// Stop with this NOTIFICATION, data included, as ManualStopWith
    /// does: Cease / Maximum Number of Prefixes Reached, whose data names
    /// the family and the limit (RFC 4486 §4).
    StopWith(Notification),
    /// A TCP connection for this session is up (ours or accepted).
    TcpConnected,
    /// Our connection attempt failed.
    TcpConnectFailed,
    /// The peer closed the connection or it broke.
    TcpClosed,
    TimerExpired(Timer),
}

/// Why a session left Established (or never got there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// We sent this NOTIFICATION.
    Sent(Notification),
    /// The peer sent this NOTIFICATION.
    Received(Notification),
    TcpClosed,
    ManualStop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection (after writing anything queued before).
    Disconnect,
    Send(Vec<u8>),
    ArmTimer(Timer, Duration),
    CancelTimer(Timer),
    SessionUp(Box<Negotiated>),
    /// The session left Established: the RIB drops (or, with graceful
    /// restart, marks stale) the peer's routes.
    SessionDown(DownReason),
    Update(Box<ParsedUpdate>),
    /// RFC 2918: the peer asks us to re-send Adj-RIB-Out for a family.
    RouteRefresh(Family),
}

/// Protocol errors seen by a session, by how RFC 4271 §6 and RFC 7606
/// had them handled. They add up over the session's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounters {
    /// UPDATEs handled as withdrawals (RFC 7606 treat-as-withdraw).
    pub treat_as_withdraw: u64,
    /// UPDATEs used without some of their attributes (RFC 7606
    /// attribute discard).
    pub attribute_discard: u64,
    /// Prefixes ignored as semantically incorrect (RFC 4271 §6.3).
    pub ignored_prefixes: u64,
    /// NOTIFICATIONs we sent for an error: header, OPEN, UPDATE (session
    /// reset), FSM, Hold Timer Expired. Administrative Cease not counted.
    pub notifications_sent: u64,
    /// NOTIFICATIONs the peer sent us.
    pub notifications_received: u64,
}

#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    started: bool,
    framer: Framer,
    negotiated: Option<Negotiated>,
    update_ctx: Option<UpdateContext>,
    errors: ErrorCounters,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Self {
        Self {
            cfg,
            state: State::Idle,
            started: false,
            framer: Framer::new(),
            negotiated: None,
            update_ctx: None,
            errors: ErrorCounters::default(),
        }
    }

    pub fn errors(&self) -> ErrorCounters {
        self.errors
    }

    /// True while the session is administratively started: it comes back by itself after
    /// falling to Idle (AutomaticStart, §8.1.2), and a connection from the peer then restarts
    /// it at once.
    pub fn is_started(&self) -> bool {
        self.started
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The graceful-restart capability of our next OPEN (the Restart
    /// State and Forwarding State bits change once our own restart is
    /// over); a session already past OpenSent keeps what it sent.
    pub fn set_graceful_restart(&mut self, gr: Option<crate::config::GracefulRestartConfig>) {
        self.cfg.graceful_restart = gr;
    }

    /// Set from OpenConfirm on: what both ends agreed.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::ManualStart => self.start(&mut out),
            Event::ManualStop => {
                let n = Notification::cease(notification::cease::ADMIN_SHUTDOWN);
                self.stop(n, DownReason::ManualStop, &mut out);
            }
            Event::ManualStopWith(subcode) => {
                let n = Notification::cease(subcode);
                self.stop(n.clone(), DownReason::Sent(n), &mut out);
            }
            Event::StopWith(n) => self.stop(n.clone(), DownReason::Sent(n), &mut out),
            Event::TcpConnected => match self.state {
                State::Connect | State::Active => {
                    out.push(Action::CancelTimer(Timer::ConnectRetry));
                    self.framer.clear();
                    match open::encode_local(&self.cfg) {
                        Ok(bytes) => {
                            out.push(Action::Send(bytes));
                            // RFC 4271 §8: "a large value" while waiting for OPEN.
                            let t = Duration::from_secs(self.cfg.open_hold_time.into());
                            out.push(Action::ArmTimer(Timer::Hold, t));
                            self.state = State::OpenSent;
                        }
                        // Only a configuration too large for an OPEN.
                        Err(_) => self.fail(&mut out, Notification::cease(0)),
                    }
                }
                // A second connection is the shell's collision to resolve.
                _ => out.push(Action::Disconnect),
            },
            Event::TcpConnectFailed => {
                if self.state == State::Connect {
                    self.state = State::Active;
                    out.push(self.arm_connect_retry());
                }
            }
            Event::TcpClosed => match self.state {
                State::Idle => {}
                State::Connect | State::Active => {
                    self.state = State::Active;
                    out.push(self.arm_connect_retry());
                }
                // RFC 4271 §8.2.2: the connection failed before the peer's
                // OPEN: listen for the peer's own connection (Active)
                // until ConnectRetry, not in Idle. A peer that closes
                // connections while it is itself busy (a restart) then
                // gets us at its next attempt.
                State::OpenSent => {
                    out.push(Action::Disconnect);
                    out.push(Action::CancelTimer(Timer::Hold));
                    self.framer.clear();
                    self.state = State::Active;
                    out.push(self.arm_connect_retry());
                }
                _ => self.enter_idle(&mut out, DownReason::TcpClosed),
            },
            Event::TimerExpired(t) => self.timer(t, &mut out),
        }
        out
    }

    /// Feeds bytes read from the TCP connection.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        if !matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            return out;
        }
        self.framer.push(bytes);
        let mut got_message = false;
        loop {
            let max = self
                .negotiated
                .as_ref()
                .map_or(wire::MAX_MESSAGE_LEN, Negotiated::max_message_len);
            match self.framer.next_frame(max) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    got_message = true;
                    self.message(&frame, &mut out);
                }
                Err(n) => {
                    self.fail(&mut out, n);
                }
            }
            if !matches!(
                self.state,
                State::OpenSent | State::OpenConfirm | State::Established
            ) {
                break;
            }
        }
        // §8.2.2: KEEPALIVE and UPDATE restart the Hold timer; do it once
        // per batch rather than per message.
        if got_message && matches!(self.state, State::OpenConfirm | State::Established) {
            if let Some(n) = &self.negotiated {
                if n.hold_time > 0 {
                    out.push(Action::ArmTimer(
                        Timer::Hold,
                        Duration::from_secs(n.hold_time.into()),
                    ));
                }
            }
        }
        out
    }

    /// An administrative stop: `n` goes to the peer if a BGP connection
    /// is open (RFC 4271 §8.2.2, ManualStop in OpenSent and later).
    fn stop(&mut self, n: Notification, why: DownReason, out: &mut Vec<Action>) {
        self.started = false;
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            out.push(Action::Send(n.encode()));
        }
        self.enter_idle(out, why);
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        self.started = true;
        if self.state != State::Idle {
            return;
        }
        out.push(self.arm_connect_retry());
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            out.push(Action::Connect);
        }
    }

    fn arm_connect_retry(&self) -> Action {
        Action::ArmTimer(
            Timer::ConnectRetry,
            Duration::from_secs(self.cfg.connect_retry_time.into()),
        )
    }

    fn timer(&mut self, t: Timer, out: &mut Vec<Action>) {
        match (self.state, t) {
            (State::Idle, Timer::ConnectRetry) if self.started => {
                self.state = State::Idle;
                self.start(out);
            }
            (State::Connect, Timer::ConnectRetry) => {
                out.push(Action::Disconnect);
                out.push(self.arm_connect_retry());
                out.push(Action::Connect);
            }
            (State::Active, Timer::ConnectRetry) => {
                out.push(self.arm_connect_retry());
                if !self.cfg.passive {
                    self.state = State::Connect;
                    out.push(Action::Connect);
                }
            }
            (State::OpenSent | State::OpenConfirm | State::Established, Timer::Hold) => {
                self.fail(out, Notification::hold_timer_expired());
            }
            (State::OpenConfirm | State::Established, Timer::Keepalive) => {
                out.push(Action::Send(wire::keepalive()));
                if let Some(n) = &self.negotiated {
                    if n.keepalive_time > 0 {
                        out.push(Action::ArmTimer(
                            Timer::Keepalive,
                            Duration::from_secs(n.keepalive_time.into()),
                        ));
                    }
                }
            }
            // Stale timers after a state change: ignored.
            _ => {}
        }
    }

    fn message(&mut self, frame: &Frame, out: &mut Vec<Action>) {
        use wire::*;
        if frame.msg_type == MSG_NOTIFICATION {
            let n = Notification::decode_body(frame.body())
                .unwrap_or_else(|| Notification::new(0, 0, Vec::new()));
            self.errors.notifications_received += 1;
            self.enter_idle(out, DownReason::Received(n));
            return;
        }
        match (self.state, frame.msg_type) {
            (State::OpenSent, MSG_OPEN) => self.open_received(frame, out),
            (State::OpenConfirm, MSG_KEEPALIVE) => {
                self.state = State::Established;
                if let Some(n) = &self.negotiated {
                    out.push(Action::SessionUp(Box::new(n.clone())));
                }
            }
            (State::Established, MSG_KEEPALIVE) => {}
            (State::Established, MSG_UPDATE) => {
                let Some(ctx) = &self.update_ctx else {
                    return;
                };
                match update_rx::decode(frame.body(), ctx) {
                    Ok(u) => {
                        if u.treated_as_withdraw.is_some() {
                            self.errors.treat_as_withdraw += 1;
                        } else if u.attributes_discarded {
                            self.errors.attribute_discard += 1;
                        }
                        self.errors.ignored_prefixes += u.ignored_prefixes as u64;
                        out.push(Action::Update(Box::new(u)));
                    }
                    Err(n) => self.fail(out, n),
                }
            }
            (State::Established, MSG_ROUTE_REFRESH) => match wire::decode_route_refresh(frame) {
                Ok(rr) => {
                    let fam = Family::from_afi_safi(rr.afi, rr.safi);
                    let negotiated = self.negotiated.as_ref();
                    // RFC 2918 §4: what counts is that *we* advertised the
                    // capability (the peer's says only whether we may send
                    // it one), and a family we did not negotiate is
                    // ignored.
                    if let (Some(f), Some(n)) = (fam, negotiated) {
                        if self.cfg.route_refresh && n.families.contains(&f) && rr.subtype == 0 {
                            out.push(Action::RouteRefresh(f));
                        }
                    }
                }
                Err(n) => self.fail(out, n),
            },
            (state, _) => {
                // RFC 6608 subcodes name the state the surprise came in.
                let subcode = match state {
                    State::OpenSent => notification::fsm::UNEXPECTED_IN_OPEN_SENT,
                    State::OpenConfirm => notification::fsm::UNEXPECTED_IN_OPEN_CONFIRM,
                    State::Established => notification::fsm::UNEXPECTED_IN_ESTABLISHED,
                    _ => notification::fsm::UNSPECIFIED,
                };
                self.fail(
                    out,
                    Notification::new(notification::code::FSM, subcode, Vec::new()),
                );
            }
        }
    }

    fn open_received(&mut self, frame: &Frame, out: &mut Vec<Action>) {
        let msg = match open::decode(frame) {
            Ok(m) => m,
            Err(n) => return self.fail(out, n),
        };
        let peer_as = match open::validate(&msg, &self.cfg) {
            Ok(a) => a,
            Err(n) => return self.fail(out, n),
        };
        let neg = capability::negotiate(
            &self.cfg,
            peer_as,
            msg.bgp_id,
            msg.hold_time,
            &msg.capabilities,
        );
        self.update_ctx = Some(UpdateContext {
            ibgp: neg.ibgp,
            peer_as,
            four_octet_as: neg.four_octet_as,
            families: neg.families.clone(),
            add_path_v4: neg.add_path_rx(Family::Ipv4Unicast),
            add_path_v6: neg.add_path_rx(Family::Ipv6Unicast),
        });
        out.push(Action::Send(wire::keepalive()));
        if neg.hold_time > 0 {
            out.push(Action::ArmTimer(
                Timer::Hold,
                Duration::from_secs(neg.hold_time.into()),
            ));
            out.push(Action::ArmTimer(
                Timer::Keepalive,
                Duration::from_secs(neg.keepalive_time.max(1).into()),
            ));
        } else {
            // Hold time 0: neither timer runs (RFC 4271 §4.2).
            out.push(Action::CancelTimer(Timer::Hold));
            out.push(Action::CancelTimer(Timer::Keepalive));
        }
        self.negotiated = Some(neg);
        self.state = State::OpenConfirm;
    }

    /// Sends `n` and drops to Idle.
    fn fail(&mut self, out: &mut Vec<Action>, n: Notification) {
        self.errors.notifications_sent += 1;
        out.push(Action::Send(n.encode()));
        self.enter_idle(out, DownReason::Sent(n));
    }

    fn enter_idle(&mut self, out: &mut Vec<Action>, why: DownReason) {
        let was = self.state;
        if was == State::Idle {
            if !self.started {
                out.push(Action::CancelTimer(Timer::ConnectRetry));
            }
            return;
        }
        if was != State::Idle {
            out.push(Action::Disconnect);
        }
        for t in [Timer::Hold, Timer::Keepalive] {
            out.push(Action::CancelTimer(t));
        }
        if was == State::Established {
            out.push(Action::SessionDown(why));
        }
        self.state = State::Idle;
        self.framer.clear();
        self.negotiated = None;
        self.update_ctx = None;
        if self.started {
            // AutomaticStart after ConnectRetry (see the module doc).
            out.push(self.arm_connect_retry());
        } else {
            out.push(Action::CancelTimer(Timer::ConnectRetry));
        }
    }
}
