//! BGP speaker core: a sans-IO session state machine, RFC 7606 error
//! handling, and the RIBs with best path, multipath, route reflection and
//! policy. Nothing here touches a socket or reads a clock; wire formats
//! are netgauze-bgp-pkt's.
//!
//! # Driving a session (the tokio shell's job)
//!
//! One [`fsm::Session`] per configured peer ([`config::SessionConfig`]).
//! The shell turns the world into events and carries out the actions:
//!
//! ```text
//! shell                              Session                  Rib
//! ManualStart / ManualStop  ───►  handle(Event)  ──► Vec<Action>
//! TCP connected/failed/closed ──► handle(Event)
//! bytes read from the socket ───► handle_bytes(&[u8])
//! a timer fired ────────────────► handle(TimerExpired(Timer))
//!
//! Action::Connect          open TCP to the peer
//! Action::Send(bytes)      write them, in order
//! Action::Disconnect       close the connection
//! Action::ArmTimer(t, d)   (re)start timer t to fire after d; CancelTimer(t)
//! Action::SessionUp(neg)   rib.add_peer(..) once; neg is the Negotiated
//!                          result (hold time, families, ADD-PATH, 4-octet
//!                          AS, extended messages, the peer's GR capability)
//! Action::Update(u)        rib.apply_update(peer, &u)
//! Action::SessionDown(_)   rib.peer_down(peer), or with graceful
//!                          restart what the peer's GrHelper says
//! Action::RouteRefresh(f)  resend the Adj-RIB-Out for family f
//! ```
//!
//! Graceful restart (RFC 4724 §4.2, we help the restarting peer) is a
//! second small machine per peer, [`graceful_restart::GrHelper`], that
//! outlives the sessions: fed session ends and starts, End-of-RIB markers
//! and its two timers, it says which of the peer's routes the RIB keeps
//! as stale ([`rib::Rib::mark_stale`]) and when they go
//! ([`rib::Rib::sweep_stale`]).
//!
//! A second TCP connection for a peer that already has one in OpenSent or
//! OpenConfirm is a collision: run a second `Session` on it and, when its
//! OPEN arrives, keep the connection [`collision::connection_to_keep`]
//! names and stop the other with Cease / Connection Collision Resolution.
//!
//! Our own restart (RFC 4724 §4.1, the Restarting Speaker) is
//! [`restarting::SelectionDeferral`], one for the speaker while it
//! restarts: fed configured peers, their sessions' capabilities, their
//! End-of-RIB markers and its timer, it says per family when route
//! selection may replace the routes restored from the saved state
//! ([`restart_state`]) and when our UPDATEs and End-of-RIB may go to the
//! peers that waited for them.
//!
//! [`speaker`] is that shell, on tokio: `Speaker::start(config)` gives a
//! `SpeakerHandle` (advertise/withdraw/`set_local_routes`, neighbors,
//! routes, shutdown, and peers added, changed or removed at run time with
//! `set_peers`/`add_peer`/`remove_peer`, the local AS with `reconfigure`)
//! and a stream of `SpeakerEvent`s (session up/down,
//! `BestPathsChanged` ECMP sets for the FIB). Tests against gobgpd and
//! BIRD live in `tests/`.
//!
//! # Routes
//!
//! [`rib::Rib`] holds one [`rib::Table`] per family; every candidate path
//! of a prefix is kept (that is each peer's post-policy Adj-RIB-In), the
//! first is the Loc-RIB best and the leading ones the ECMP set
//! ([`rib::Rib::multipath`]). After applying updates the shell takes the
//! changed prefixes (`rib.v4.take_changes()`), updates the FIB from
//! `multipath`, and for every established peer calls
//! `sync_adj_rib_out_v4/v6` with its [`rib::adj_out::AdjRibOut`] and encodes
//! the returned changes with [`update_tx::build_v4`] / [`update_tx::build_v6`]
//! using [`update_tx::TxParams`] from the negotiated result; with ADD-PATH
//! send negotiated (RFC 7911) the Adj-RIB-Out holds every usable path of
//! a prefix under our own path identifiers, not just the best
//! ([`rib::adj_out`]). Locally
//! originated routes (service VIPs, pod CIDR) enter via
//! [`rib::Rib::originate`].
//!
//! # Errors
//!
//! Every protocol error becomes one [`notification::Notification`]:
//! header checks in [`wire`], OPEN checks in [`open`], UPDATE checks in
//! [`update_check`] (RFC 7606: attribute discard, treat-as-withdraw, or
//! session reset, the most severe winning); [`fsm::Session::errors`]
//! counts them. Nothing in this crate panics on peer input. Probes of
//! each rule, whole session to RIB, are in `conformance_tests.rs`.

pub mod attrs;
pub mod capability;
pub mod collision;
pub mod config;
#[cfg(test)]
mod conformance_tests;
pub mod fsm;
#[cfg(test)]
mod fsm_tests;
pub mod graceful_restart;
#[cfg(test)]
mod graceful_restart_tests;
pub mod notification;
pub mod open;
pub mod policy;
#[cfg(test)]
mod proptests;
pub mod restart_state;
pub mod restarting;
#[cfg(test)]
mod restarting_tests;
#[cfg(test)]
mod rfc7606_tests;
pub mod rib;
#[cfg(test)]
mod rib_tests;
pub mod speaker;
pub mod update_check;
pub mod update_rx;
pub mod update_tx;
pub mod wire;
