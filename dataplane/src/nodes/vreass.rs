//! `ip4-vreass` and `ip6-vreass`: shallow virtual reassembly beside the NAT and ACL nodes,
//! so every fragment of a datagram is translated and judged as its first is (see
//! [`crate::virtual_reassembly`]).
//!
//! The NAT node sends fragments here, or the ACL node when there are no services (NAT passes
//! everything on unseen then): both already parse a fragment on their slow paths, so other
//! packets pay nothing, and a router without services or policy visits neither. Each
//! fragment comes here once (`Meta::vreass_done`) and goes back to NAT, which passes it to
//! the ACL when there are no services. A first fragment teaches the worker's table its
//! datagram's ports; a later fragment of a datagram whose first went by goes back at once
//! (NAT and the ACLs find its ports in the table). A later fragment that comes before its
//! first is held, and let go, in the order the held ones came, once the first has been all
//! the way through (from [`Node::poll`], after the dispatch that carried the first: by then
//! NAT has made the connection they are to follow). Held fragments are bounded per datagram
//! and in all, and dropped when their first does not come in [`TIMEOUT`]; while any are
//! held the worker loop keeps turning, as it does for crypto in flight.

use crate::buffer::PacketBuffer;
use crate::graph::{Context, Nanos, NextIndex, Node, Packet, DROP, PARK};
use crate::reassembly::FragmentKey;
use crate::virtual_reassembly::{FirstError, FragmentView, TIMEOUT};
use crate::{family_node_info, node_errors};

/// Most fragments held at once by one worker, waiting for their first.
pub const MAX_HELD: usize = 256;
/// Most fragments of one datagram held: a 9000-byte datagram on 1500-byte links, come in
/// reverse order.
pub const MAX_HELD_PER_DATAGRAM: usize = 8;

node_errors! {
    pub enum VreassError {
        Learned = ("learned", "first fragments whose ports the later ones will follow"),
        Followed = ("followed", "later fragments following the ports of their first"),
        Held = ("held", "fragments come before their first: held"),
        Released = ("released", "held fragments let go once their first had been through"),
        HeldExpired = ("held_expired", "held fragments whose first did not come in time: dropped"),
        HeldOverflow = ("held_overflow", "fragments come before their first with too many held (per datagram or in all): dropped"),
        TableFull = ("table_full", "first fragments of more datagrams than can be followed at once: dropped"),
        TinyFirstFragment = ("tiny_first_fragment", "first fragments too short for the transport header (RFC 1858): dropped"),
        TcpOffsetOne = ("tcp_offset_one", "TCP fragments at offset 8, which would overwrite the first one's header (RFC 3128): dropped"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
enum Next {
    Drop,
    Nat,
    Park,
}

const NEXT4: &[&str] = &[DROP, "ip4-nat", PARK];
const NEXT6: &[&str] = &[DROP, "ip6-nat", PARK];

/// A fragment waiting for its first.
struct Held<B> {
    key: FragmentKey,
    since: Nanos,
    pkt: Packet<B>,
}

/// The virtual reassembly node of IPv4 (`V6 = false`) or IPv6.
pub struct IpVreass<B, const V6: bool> {
    /// Fragments waiting for their first, in the order they came.
    held: Vec<Held<B>>,
    /// The datagrams of the fragments the vector being processed sends to [`PARK`], in
    /// order: [`Node::park`] takes them as it takes the packets.
    parking: Vec<FragmentKey>,
    /// How many of `parking` were taken.
    parked: usize,
    /// The time of the vector being processed.
    now: Nanos,
}

/// `ip4-vreass`.
pub type Ip4Vreass<B> = IpVreass<B, false>;
/// `ip6-vreass`.
pub type Ip6Vreass<B> = IpVreass<B, true>;

impl<B, const V6: bool> Default for IpVreass<B, V6> {
    fn default() -> Self {
        IpVreass {
            held: Vec::with_capacity(MAX_HELD),
            parking: Vec::with_capacity(MAX_HELD),
            parked: 0,
            now: 0,
        }
    }
}

impl<B: PacketBuffer, const V6: bool> Node<B> for IpVreass<B, V6> {
    family_node_info!(VreassError, "ip4-vreass", NEXT4, "ip6-vreass", NEXT6);

    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        self.parking.clear();
        self.parked = 0;
        self.now = cx.now;
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            pkt.meta.vreass_done = true;
            *n = self.follow(cx, pkt) as NextIndex;
        }
    }

    fn park(&mut self, pkt: Packet<B>) -> Result<(), Packet<B>> {
        let Some(&key) = self.parking.get(self.parked) else {
            return Err(pkt);
        };
        self.parked += 1;
        self.held.push(Held {
            key,
            since: self.now,
            pkt,
        });
        Ok(())
    }

    fn poll(&mut self, cx: &mut Context<'_, B>) -> usize {
        let now = cx.now;
        let mut i = 0;
        while i < self.held.len() {
            let key = &self.held[i].key;
            let to = if cx.state.virtual_reassembly.following(key) {
                Next::Nat
            } else if now.saturating_sub(self.held[i].since) >= TIMEOUT {
                Next::Drop
            } else {
                i += 1;
                continue;
            };
            let h = self.held.remove(i);
            if to == Next::Nat {
                // Counted as it goes: the datagram is whole once its last byte went by.
                if let Some(view) = FragmentView::parse(h.pkt.buf.data()) {
                    cx.state.virtual_reassembly.later(&view, now);
                }
                cx.error(VreassError::Released);
            } else {
                cx.error(VreassError::HeldExpired);
            }
            if h.pkt.meta.trace != 0 {
                cx.trace(&h.pkt.meta, format_args!("held fragment let go: {to:?}"));
            }
            cx.spawn(h.pkt, to as NextIndex);
        }
        self.held.len()
    }
}

impl<B: PacketBuffer, const V6: bool> IpVreass<B, V6> {
    /// Where a fragment goes: back to NAT, to be held, or dropped.
    fn follow(&mut self, cx: &mut Context<'_, B>, pkt: &Packet<B>) -> Next {
        let ip = pkt.buf.data();
        // Fragments of protocols not followed go straight back.
        let Some(frag) = FragmentView::parse(ip) else {
            return Next::Nat;
        };
        let table = &mut cx.state.virtual_reassembly;
        if frag.is_first() {
            return match table.first(&frag, ip, cx.now) {
                Ok(ports) => {
                    cx.error(VreassError::Learned);
                    if pkt.meta.trace != 0 {
                        let (s, d) = ports;
                        cx.trace(&pkt.meta, format_args!("first fragment, ports {s} {d}"));
                    }
                    Next::Nat
                }
                Err(FirstError::Tiny) => {
                    cx.error(VreassError::TinyFirstFragment);
                    Next::Drop
                }
                Err(FirstError::Full) => {
                    cx.error(VreassError::TableFull);
                    Next::Drop
                }
            };
        }
        if frag.is_tcp_offset_one() {
            cx.error(VreassError::TcpOffsetOne);
            return Next::Drop;
        }
        if table.later(&frag, cx.now).is_some() {
            cx.error(VreassError::Followed);
            return Next::Nat;
        }
        let queued = self.held.len() + self.parking.len();
        let same = |k: &&FragmentKey| **k == frag.key;
        let of_datagram = self.held.iter().map(|h| &h.key).filter(same).count()
            + self.parking.iter().filter(same).count();
        if queued >= MAX_HELD || of_datagram >= MAX_HELD_PER_DATAGRAM {
            cx.error(VreassError::HeldOverflow);
            return Next::Drop;
        }
        self.parking.push(frag.key);
        cx.error(VreassError::Held);
        Next::Park
    }
}

/// True for a fragment of a followed protocol that has not been through virtual reassembly:
/// for the NAT and ACL nodes' rare paths, where the packet did not parse.
pub(crate) fn unseen_fragment<B: PacketBuffer>(pkt: &Packet<B>) -> bool {
    !pkt.meta.vreass_done && FragmentView::parse(pkt.buf.data()).is_some()
}

/// For a fragment another worker handed over to the node that tracks its connection here:
/// learns (a first fragment) or counts (a later one) its datagram in this worker's table as
/// the other worker's `ip{4,6}-vreass` did, so that the later fragments, handed over after
/// their first and in order, find its ports here too. The first node of the family
/// that hands packets over calls this: NAT with services, else the ACL.
pub(crate) fn take_up_handed<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &Packet<B>) {
    if !pkt.meta.handoff.is_set() {
        return;
    }
    let ip = pkt.buf.data();
    let Some(frag) = FragmentView::parse(ip) else {
        return;
    };
    let table = &mut cx.state.virtual_reassembly;
    if frag.is_first() {
        // Refused (full) here, its later fragments pass untranslated, counted by NAT.
        let _ = table.first(&frag, ip, cx.now);
    } else {
        table.later(&frag, cx.now);
    }
}
