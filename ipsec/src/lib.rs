//! Switchyard's IPsec core: ESP transforms, anti-replay, a sans-IO IKEv2 engine and the
//! SD-EWAN resource model. No sockets, no clocks, no `unsafe`: time comes in as arguments,
//! bytes go out as [`ike::Action`]s, and every parser is total over arbitrary input.
//!
//! # Map
//!
//! * [`crypto`]: the [`crypto::CryptoBackend`] trait (prepared per-SA contexts: AEAD
//!   seal/open for AES-GCM, CBC encrypt/decrypt plus truncated HMAC for AES-CBC/HMAC-SHA-2)
//!   and [`crypto::SoftwareBackend`] (`ring` for GCM, HMAC, SHA and ECDH; `aws-lc-rs` for
//!   AES-CBC). A DPDK cryptodev backend implements the same trait later. Key bytes live in
//!   [`crypto::SecretBytes`]: zeroed on drop, redacted in `Debug`.
//! * [`esp`]: RFC 4303 tunnel mode over byte buffers. Build an [`esp::Sa`] from the
//!   [`esp::SaConfig`] IKE hands over; [`esp::encapsulate_in_place`] (headroom + tailroom,
//!   returns the outer packet's range) and [`esp::decapsulate`] (looks up the SA through
//!   [`esp::SaLookup`], checks the replay window before and moves it after the ICV check,
//!   decrypts in place and returns the inner packet's range). ESN (RFC 4304), UDP
//!   encapsulation (RFC 3948), lifetimes by bytes and time, per-SA counters.
//! * [`ike`]: RFC 7296. [`ike::wire`] is the codec, [`ike::sk`] the Encrypted payload,
//!   [`ike::keys`] SKEYSEED/prf+/KEYMAT/PSK AUTH, [`ike::dh`] groups 14, 19 and 31,
//!   [`ike::proposal`] proposals and strongSwan-style proposal strings, [`ike::cp`] the
//!   Configuration payload's attributes and [`ike::pool`] the address pools virtual IPs are
//!   leased from, and [`ike::Engine`] the state machine.
//! * [`sdewan`]: `IpsecProposal`, `IpsecSite`, `IpsecHost` with serde names matching the
//!   SD-EWAN CRDs, and their conversion into [`ike::PeerConfig`]s.
//!
//! # Driving the engine (the future tokio shell)
//!
//! ```text
//! let mut engine = Engine::new(EngineConfig { peers, ..Default::default() })?;
//! let (id, actions) = engine.connect("site/conn", Instant::now())?;   // initiator
//! loop {
//!     select! {
//!         (bytes, local, remote) = sockets.recv() => run(engine.handle(&bytes, local, remote, now, wall)),
//!         _ = sleep_until(engine.next_timeout()) => run(engine.handle_timeout(now)),
//!     }
//! }
//! ```
//!
//! The shell owns two UDP sockets per local address (500 and 4500). [`ike::Engine::handle`]
//! takes the UDP payload, the local socket address it arrived on, the sender, and the time
//! twice: `now` (monotonic, for the protocol's timers) and `wall` (calendar time, for
//! certificate validity); the engine reads no clock of its own. On the NAT-T port it strips
//! the non-ESP marker itself and [`ike::Action::Send`] bytes already carry it. The shell
//! carries out each action, in order (an `InstallChildSa` comes before the `Send` of the
//! answer that lets the peer start using the SA):
//!
//! * `Send { local, remote, bytes }`: send from that local socket, byte for byte (IKE on
//!   the NAT-T port carries the marker already; a NAT-keepalive is the one byte 0xFF).
//! * `ArmTimer { at }`: wake up and call `handle_timeout` then (`next_timeout` gives the
//!   earliest; spurious calls are harmless).
//! * `InstallChildSa(install)`: build two [`esp::Sa`]s (inbound with `install.inbound`,
//!   outbound with `install.outbound`) with the configured backend, and publish them with the
//!   selectors in the next dataplane `Tables` (SA table keyed by inbound SPI; SPD entries
//!   from `local_ts`/`remote_ts`; outer header from the addresses and `udp_encap`).
//! * `UpdateChildSaAddresses`: the peer's NAT changed its mapping and the IKE SA follows
//!   it (RFC 7296 section 2.23): give the named CHILD_SAs the new outer addresses and UDP
//!   ports and publish them again, keeping their sequence numbers and replay windows.
//! * `DeleteChildSa`, `Closed`, `Failed`, `ChildFailed`, `IkeRekeyFailed`, `Established`:
//!   update `Tables`, metrics and `switchyard show ipsec`, and log. A CHILD_SA's
//!   `local_vips` (virtual IPs the peer assigned us) and `remote_vips` (addresses we leased
//!   it) tell the dataplane which addresses are ours and which to route into the tunnel;
//!   [`ike::Engine::virtual_ips`] and [`ike::Engine::pools`] list them for `show ipsec` and
//!   metrics.
//!
//! `send_dpd`, `delete_ike_sa` and `report_invalid_spi` start INFORMATIONAL exchanges;
//! [`ike::Engine::counters`] has named drop/event counters for `/metrics`.
//!
//! # Dataplane nodes (later)
//!
//! An `esp-encrypt` node looks up the SPD, then calls `encapsulate_in_place` on the packet
//! buffer (it needs `OuterHeader::len() + 8 + IV` bytes of headroom and
//! [`esp::Sa::esp_overhead`] of tailroom); `esp-decrypt` takes packets with IP protocol 50
//! or UDP to 4500 (see [`esp::decapsulate`]: IKE and keepalives come back as
//! [`esp::EspError::NotEsp`] so the node can hand them to the control plane). Errors map to
//! named node counters; the per-SA counters live in the SA. The replay window and the
//! sequence counter are per SA: with several workers, pin each SA to one worker (or give
//! each worker its own outbound SA) as VPP does.

#![forbid(unsafe_code)]

pub mod crypto;
pub mod esp;
pub mod ike;
pub mod sdewan;

#[cfg(test)]
mod test_util;
