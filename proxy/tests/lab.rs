//! End-to-end tests of `switchyard router` in a three-namespace lab (see `common/mod.rs` and
//! `lab/topology.sh`): client ↔ router ↔ server, once per dataplane driver.
//!
//!   cargo test -p switchyard --test lab -- --test-threads=1
//!   SWITCHYARD_LAB_KERNEL=1 cargo test -p switchyard --test lab   # Linux as the router
//!
//! Needs root; without it the tests print "skipped: ..." (or fail when `CI` is set).

mod common;

use common::*;

/// Builds a lab, starts the router with `driver`, runs `check`, stops the router (which must
/// exit cleanly) and tears the lab down (also on panic).
fn run(test: &str, driver: Driver, check: impl FnOnce(&Lab)) {
    let Some(mut lab) = Lab::new(&format!("{}::{test}", driver.name()), &[]) else {
        return;
    };
    lab.start_router(driver, &["--trace", "3"]);
    check(&lab);
    lab.finish();
}

fn ipv4_ping(lab: &Lab) {
    lab.assert_ping(Ns::Client, SERVER_V4);
    lab.assert_ping(Ns::Server, CLIENT_V4);
}

fn ipv6_ping(lab: &Lab) {
    lab.assert_ping(Ns::Client, SERVER_V6);
    lab.assert_ping(Ns::Server, CLIENT_V6);
}

fn tcp_v4_1mb(lab: &Lab) {
    lab.tcp_transfer(false, 1 << 20, 5004);
}

fn tcp_v6_1mb(lab: &Lab) {
    lab.tcp_transfer(true, 1 << 20, 5006);
}

/// The router answers ping for its own addresses: the near side and, routed internally, the
/// far side.
fn ping_router_addresses(lab: &Lab) {
    lab.assert_ping(Ns::Client, ROUTER_C0_V4);
    lab.assert_ping(Ns::Client, ROUTER_C0_V6);
    lab.assert_ping(Ns::Client, ROUTER_S0_V4);
    lab.assert_ping(Ns::Client, ROUTER_S0_V6);
    lab.assert_ping(Ns::Server, ROUTER_S0_V6);
}

/// TTL 1 through the router: ICMP time exceeded (type 11) from the ingress address.
fn ttl_expired(lab: &Lab) {
    lab.assert_icmp_error("-t 1", SERVER_V4, ROUTER_C0_V4, "Time to live exceeded");
}

/// Hop limit 1 through the router: ICMPv6 time exceeded (type 3) from the ingress address.
fn hop_limit_expired(lab: &Lab) {
    lab.assert_icmp_error("-6 -t 1", SERVER_V6, ROUTER_C0_V6, "Time exceeded");
}

/// No route (the router has only its connected prefixes): destination unreachable.
fn unrouted_v4(lab: &Lab) {
    lab.assert_icmp_error("", UNROUTED_V4, ROUTER_C0_V4, "Unreachable");
}

fn unrouted_v6(lab: &Lab) {
    lab.assert_icmp_error("-6", UNROUTED_V6, ROUTER_C0_V6, "unreachable");
}

macro_rules! driver_tests {
    ($module:ident, $driver:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn ipv4_ping_client_server() {
                run("ipv4_ping_client_server", $driver, ipv4_ping);
            }

            #[test]
            fn ipv6_ping_client_server() {
                run("ipv6_ping_client_server", $driver, ipv6_ping);
            }

            #[test]
            fn tcp_ipv4_1mb() {
                run("tcp_ipv4_1mb", $driver, tcp_v4_1mb);
            }

            #[test]
            fn tcp_ipv6_1mb() {
                run("tcp_ipv6_1mb", $driver, tcp_v6_1mb);
            }

            #[test]
            fn ping_router_addresses() {
                run(
                    "ping_router_addresses",
                    $driver,
                    super::ping_router_addresses,
                );
            }

            #[test]
            fn ttl_expired_time_exceeded() {
                run("ttl_expired_time_exceeded", $driver, ttl_expired);
            }

            #[test]
            fn hop_limit_expired_time_exceeded() {
                run(
                    "hop_limit_expired_time_exceeded",
                    $driver,
                    hop_limit_expired,
                );
            }

            #[test]
            fn unrouted_v4_destination_unreachable() {
                run("unrouted_v4_destination_unreachable", $driver, unrouted_v4);
            }

            #[test]
            fn unrouted_v6_destination_unreachable() {
                run("unrouted_v6_destination_unreachable", $driver, unrouted_v6);
            }
        }
    };
}

driver_tests!(afpacket, Driver::AfPacket);
driver_tests!(afxdp, Driver::AfXdp);
driver_tests!(dpdk, Driver::Dpdk);

/// The harness itself: the command line the tests give the router for each driver.
#[test]
fn router_command_lines() {
    let lab_args = |driver| router_command("sy1t0", driver, &[]);
    let af = lab_args(Driver::AfPacket).join(" ");
    assert!(af.starts_with("router --dataplane afpacket --interface c0 --interface s0"));
    assert!(af.contains("--address c0=198.18.1.1/24 --address c0=2001:db8:1::1/64"));
    let dpdk = lab_args(Driver::Dpdk).join(" ");
    assert!(dpdk.contains("--interface net_af_packet0 --interface net_af_packet1"));
    assert!(dpdk.contains("--address net_af_packet1=198.18.2.1/24"));
    assert!(dpdk.contains("--file-prefix sy1t0 "));
    assert!(dpdk.contains("--vdev net_af_packet0,iface=c0 --vdev net_af_packet1,iface=s0"));
}
