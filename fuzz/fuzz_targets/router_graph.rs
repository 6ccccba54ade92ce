//! The whole router graph as a state machine: a sequence of arbitrary frames on either port,
//! with the clock advancing (reassembly timeouts and listener reports included), must never
//! panic, loop or leak a packet (every packet received ends in a sink or is held).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::graph::Packet;
use switchyard_dataplane::nodes::router_graph;
use switchyard_dataplane::tables::{Interface, RouteTarget, StaticRoute, Tables};
use switchyard_dataplane::worker::WorkerState;
use switchyard_dataplane::{HeapBuffer, PacketBuffer};

/// The tables every input runs against, built once: building them (a 16-8-8 trie) costs more
/// than running a short input.
fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut a = Interface::new("a", [2, 0, 0, 0, 0, 1], 1500);
        a.ipv4.push("198.18.1.1/24".parse().unwrap());
        a.ipv6.push("2001:db8:1::1/64".parse().unwrap());
        let mut b = Interface::new("b", [2, 0, 0, 0, 0, 2], 576);
        b.ipv4.push("198.18.2.1/24".parse().unwrap());
        b.ipv6.push("2001:db8:2::1/64".parse().unwrap());
        let routes = [StaticRoute {
            prefix: "0.0.0.0/0".parse().unwrap(),
            target: RouteTarget::Via(vec![(Some("198.18.2.2".parse().unwrap()), None)]),
        }];
        Tables::build(1, vec![a, b], &routes).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let tables = tables();
    let mut graph = router_graph::<HeapBuffer>(2).unwrap();
    let mut state = WorkerState::default();
    state
        .neighbors
        .insert_permanent(1, "198.18.2.2".parse().unwrap(), [2, 0, 0, 0, 0, 9]);
    // Frames: [port:1][len:2][bytes...] repeated; the MAC of port a is forced in front so
    // most frames get past ethernet-input.
    let mut rest = data;
    let mut now = 1_000_000_000u64;
    let mut received = 0u64;
    while rest.len() >= 3 {
        let port = u16::from(rest[0] & 1);
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let mut frame = vec![2, 0, 0, 0, 0, 1 + port as u8];
        frame.extend_from_slice(&rest[3..3 + len]);
        rest = &rest[3 + len..];
        graph.receive(Packet::received(HeapBuffer::from_bytes(&frame), port));
        received += 1;
        now += 400_000_000;
        graph.dispatch(tables, &mut state, now);
        // Time-driven work: reassembly timeouts (time exceeded about first fragments) and the
        // multicast listener reports that queries scheduled.
        state.expire(now);
        graph.housekeeping(&mut state, now, || Some(HeapBuffer::new(2048, 128)));
        graph.report_listeners(tables, &mut state, now, || Some(HeapBuffer::new(2048, 128)));
        for q in &mut graph.tx {
            for buf in q.drain(..) {
                assert!(buf.len() >= 14);
            }
        }
        graph.dropped.clear();
        graph.punt.clear();
    }
    assert_eq!(graph.looped, 0);
    let _ = received;
});
