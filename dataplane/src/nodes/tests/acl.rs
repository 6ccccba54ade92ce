//! NetworkPolicy in the graph: per-pod ACLs, stateful replies, service traffic judged after
//! DNAT.

use std::net::IpAddr;
use std::sync::Arc;

use super::nat::{tcp, tcp6, udp};
use super::*;
use crate::acl::AclRuleSpec;
use crate::policy::{AclDirection, AclTable, PodAcls, PolicyTables};

const CLIENT: &str = "198.18.1.2";
const SERVER: &str = "198.18.2.2";
/// The cluster IP of `super::nat::test_service`.
const VIP: &str = "198.51.100.10";

fn acl(name: &str, rules: &[(&str, Option<u8>, (u16, u16))]) -> Arc<AclTable> {
    let specs: Vec<AclRuleSpec> = rules
        .iter()
        .map(|(net, proto, ports)| AclRuleSpec {
            peer: net.parse().unwrap(),
            protocol: *proto,
            ports: *ports,
        })
        .collect();
    let origins = specs.iter().map(|_| Arc::from("test")).collect();
    Arc::new(AclTable::new(name, specs, false, origins))
}

/// The server pod admits what `server_ingress` says; the client pod may send TCP to the
/// server subnet only and admits nothing (so replies reach it only as replies).
fn policy(server_ingress: &[(&str, Option<u8>, (u16, u16))]) -> PolicyTables {
    let mut p = PolicyTables {
        acls: vec![
            acl("server-in", server_ingress),
            acl("client-out", &[("198.18.2.0/24", Some(6), (1, 65535))]),
            acl("client-in", &[]),
        ],
        ..PolicyTables::default()
    };
    p.pods.insert(
        v4(SERVER).into(),
        PodAcls {
            ingress: Some(0),
            egress: None,
        },
    );
    p.pods.insert(
        v4(CLIENT).into(),
        PodAcls {
            ingress: Some(2),
            egress: Some(1),
        },
    );
    p
}

/// Tables where only `pod` is isolated, in `direction`, by `acl`.
fn one_acl(pod: Ipv4Addr, direction: AclDirection, acl: Arc<AclTable>) -> PolicyTables {
    let (ingress, egress) = match direction {
        AclDirection::Ingress => (Some(0), None),
        AclDirection::Egress => (None, Some(0)),
    };
    PolicyTables {
        acls: vec![acl],
        pods: [(pod.into(), PodAcls { ingress, egress })]
            .into_iter()
            .collect(),
    }
}

fn rig(p: PolicyTables) -> Rig {
    let mut r = Rig::new();
    r.tables.policy = Some(Arc::new(p));
    r.tables.version = 2;
    r.state.sync_services(&r.tables);
    r.learn_client_and_server();
    r
}

fn from_client(r: &mut Rig, ip: &[u8]) -> Vec<(u16, Vec<u8>)> {
    r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, ip))
}

fn from_server(r: &mut Rig, ip: &[u8]) -> Vec<(u16, Vec<u8>)> {
    r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, ip))
}

#[test]
fn allowed_flows_pass_both_ways_and_the_rest_is_denied() {
    let mut r = rig(policy(&[("198.18.1.0/24", Some(6), (80, 80))]));
    let syn = tcp(v4(CLIENT), v4(SERVER), 40000, 80, TcpFlags::SYN);
    assert_eq!(from_client(&mut r, &syn).len(), 1);
    let synack = tcp(
        v4(SERVER),
        v4(CLIENT),
        80,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    assert_eq!(
        from_server(&mut r, &synack).len(),
        1,
        "the reply of an allowed flow passes"
    );
    assert_eq!(r.count("ip4-acl", "allowed_new"), 1);
    assert_eq!(r.count("ip4-acl", "established"), 1);
    // Another port: the server's ingress denies.
    let syn81 = tcp(v4(CLIENT), v4(SERVER), 40001, 81, TcpFlags::SYN);
    assert!(from_client(&mut r, &syn81).is_empty());
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
    // UDP: the client's egress allows TCP only.
    assert!(from_client(&mut r, &udp(v4(CLIENT), v4(SERVER), 5000, 80)).is_empty());
    assert_eq!(r.count("ip4-acl", "egress_denied"), 1);
    // The client admits nothing new: the server cannot open a connection to it.
    let s2c = tcp(v4(SERVER), v4(CLIENT), 5555, 22, TcpFlags::SYN);
    assert!(from_server(&mut r, &s2c).is_empty());
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 2);
    // Hit counters: the server's port-80 rule matched once.
    assert_eq!(r.state.acl_hits[0].rule(0), 1);
}

#[test]
fn a_connection_an_isolated_pod_opens_to_an_open_one_gets_its_replies() {
    // The server admits nothing (default-deny ingress) and may send anywhere; the client is
    // not isolated. A connection the server opens is not judged on the way out, but its
    // replies come into the server: they must pass as replies, not as new connections.
    let mut r = rig(one_acl(
        v4(SERVER),
        AclDirection::Ingress,
        acl("server-in", &[]),
    ));
    let syn = tcp(v4(SERVER), v4(CLIENT), 41000, 8080, TcpFlags::SYN);
    assert_eq!(from_server(&mut r, &syn).len(), 1);
    assert_eq!(r.count("ip4-acl", "unisolated"), 1);
    let synack = tcp(
        v4(CLIENT),
        v4(SERVER),
        8080,
        41000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    assert_eq!(from_client(&mut r, &synack).len(), 1, "the reply passes");
    assert_eq!(r.count("ip4-acl", "established"), 1);
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 0);
    // A new connection to the server from the client is still denied.
    let syn = tcp(v4(CLIENT), v4(SERVER), 42000, 80, TcpFlags::SYN);
    assert!(from_client(&mut r, &syn).is_empty());
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);

    // The mirror case: the client may send nothing (default-deny egress); the server is open
    // and connects to it; the client's answers go out as replies.
    let mut r = rig(one_acl(
        v4(CLIENT),
        AclDirection::Egress,
        acl("client-out", &[]),
    ));
    let syn = tcp(v4(SERVER), v4(CLIENT), 43000, 22, TcpFlags::SYN);
    assert_eq!(from_server(&mut r, &syn).len(), 1);
    let synack = tcp(
        v4(CLIENT),
        v4(SERVER),
        22,
        43000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    assert_eq!(from_client(&mut r, &synack).len(), 1, "the reply passes");
    assert_eq!(r.count("ip4-acl", "egress_denied"), 0);
}

#[test]
fn ping_needs_a_rule_without_ports() {
    let mut r = rig(policy(&[("198.18.1.0/24", Some(6), (80, 80))]));
    let ping = ipv4(
        v4(CLIENT),
        v4(SERVER),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 16),
    );
    assert!(
        from_client(&mut r, &ping).is_empty(),
        "client egress allows TCP only"
    );
    let mut r = rig(one_acl(
        v4(SERVER),
        AclDirection::Ingress,
        acl("server-in", &[("198.18.1.0/24", None, (0, 65535))]),
    ));
    assert_eq!(
        from_client(&mut r, &ping).len(),
        1,
        "a port-less rule admits ICMP"
    );
    let reply = ipv4(
        v4(SERVER),
        v4(CLIENT),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(0, 16),
    );
    assert_eq!(from_server(&mut r, &reply).len(), 1);
}

#[test]
fn service_traffic_is_judged_by_the_backend_port_after_dnat() {
    use crate::services::Services;
    use switchyard_lb::service::{CompileOptions, ServiceTable};
    let svc = super::nat::test_service(vec![switchyard_lb::service::Endpoint::ready(
        v4(SERVER).into(),
        8080,
        true,
    )]);
    let (table, _) = ServiceTable::compile(&[svc], &CompileOptions::default());
    let services = Some(Arc::new(Services {
        table,
        ..Services::default()
    }));
    // Ingress admits 80 only: the connection to VIP:80 lands on 8080 and is refused.
    let mut r = rig(policy(&[("198.18.1.0/24", Some(6), (80, 80))]));
    r.tables.services = services.clone();
    r.tables.version = 3;
    r.state.sync_services(&r.tables);
    let syn = tcp(v4(CLIENT), v4("198.51.100.10"), 40000, 80, TcpFlags::SYN);
    assert!(from_client(&mut r, &syn).is_empty());
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
    assert_eq!(
        r.state.conntrack.len(),
        0,
        "a denied connection is not kept"
    );
    // Admitting 8080 lets it through, and the reply comes back translated.
    let mut r = rig(policy(&[("198.18.1.0/24", Some(6), (8080, 8080))]));
    r.tables.services = services;
    r.tables.version = 3;
    r.state.sync_services(&r.tables);
    let out = from_client(&mut r, &syn);
    assert_eq!(out.len(), 1);
    assert_eq!(ip4_of(&out[0].1).dst_addr(), v4(SERVER));
    let synack = tcp(
        v4(SERVER),
        v4(CLIENT),
        8080,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let out = from_server(&mut r, &synack);
    assert_eq!(out.len(), 1);
    assert_eq!(ip4_of(&out[0].1).src_addr(), v4("198.51.100.10"));
}

/// A rig with `p` and the test Service (198.51.100.10:80 to the server's 8080), every
/// connection to it masqueraded (kube-proxy's `--masquerade-all`).
fn masquerading_rig(p: PolicyTables) -> Rig {
    service_rig(p, true)
}

/// A rig with `p` and the test Service (198.51.100.10:80 to the server's 8080).
fn service_rig(p: PolicyTables, masquerade_all: bool) -> Rig {
    use crate::services::Services;
    use switchyard_lb::service::{CompileOptions, ServiceTable};
    let svc = super::nat::test_service(vec![switchyard_lb::service::Endpoint::ready(
        v4(SERVER).into(),
        8080,
        true,
    )]);
    let (table, _) = ServiceTable::compile(&[svc], &CompileOptions::default());
    let mut r = rig(p);
    r.tables.services = Some(Arc::new(Services {
        table,
        masquerade_all,
        ..Services::default()
    }));
    r.tables.version = 3;
    r.state.sync_services(&r.tables);
    r
}

/// Publishes tables with policy `p` instead (services unchanged), as the control plane does.
fn publish(r: &mut Rig, p: PolicyTables) {
    r.tables.policy = Some(Arc::new(p));
    r.tables.version += 1;
    r.state.sync_services(&r.tables);
}

/// A client that closed a connection and reuses its port opens a new connection (Linux
/// conntrack kills the old entry and judges the SYN as NEW): it needs the policy in force
/// now, not the one that allowed the old connection.
#[test]
fn a_port_reused_after_close_is_judged_by_the_policy_in_force_now() {
    let allow = || policy(&[("198.18.1.0/24", Some(6), (80, 80))]);
    let mut r = rig(allow());
    super::nat::open_and_close(&mut r, v4(SERVER), 80, 80);
    assert_eq!(r.count("ip4-acl", "allowed_new"), 1);
    // The server's ingress now admits nothing.
    publish(&mut r, policy(&[]));
    let syn = tcp(v4(CLIENT), v4(SERVER), 40000, 80, TcpFlags::SYN);
    assert!(from_client(&mut r, &syn).is_empty());
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
    assert_eq!(
        r.state.conntrack.len(),
        0,
        "a denied connection is not kept"
    );
    // Admitted again, the same SYN opens it, tracked for its replies.
    publish(&mut r, allow());
    assert_eq!(from_client(&mut r, &syn).len(), 1);
    assert_eq!(r.count("ip4-acl", "allowed_new"), 2);
    let synack = tcp(
        v4(SERVER),
        v4(CLIENT),
        80,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    assert_eq!(from_server(&mut r, &synack).len(), 1, "its reply passes");
}

/// The same through a Service: the reopened connection is judged after DNAT, under the
/// policy in force now, and forgotten when denied.
#[test]
fn a_port_reused_through_a_service_is_judged_by_the_policy_in_force_now() {
    let allow = || policy(&[("198.18.1.0/24", Some(6), (8080, 8080))]);
    let mut r = service_rig(allow(), false);
    super::nat::open_and_close(&mut r, v4("198.51.100.10"), 80, 8080);
    publish(&mut r, policy(&[]));
    let syn = tcp(v4(CLIENT), v4("198.51.100.10"), 40000, 80, TcpFlags::SYN);
    assert!(from_client(&mut r, &syn).is_empty());
    assert_eq!(r.count("ip4-nat", "reopened"), 1);
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
    assert_eq!(
        r.state.conntrack.len(),
        0,
        "a denied connection is not kept"
    );
    publish(&mut r, allow());
    let out = from_client(&mut r, &syn);
    assert_eq!(out.len(), 1);
    assert_eq!(ip4_of(&out[0].1).dst_addr(), v4(SERVER));
    assert_eq!(r.count("ip4-acl", "allowed_new"), 2);
}

/// An ICMP error, `kind` and `code` (and `mtu` for fragmentation needed), from `src` to the
/// client about the packet the frame `about` carries (its header and first 8 bytes).
fn icmp4_error_about(src: Ipv4Addr, (kind, code, mtu): (u8, u8, u16), about: &[u8]) -> Vec<u8> {
    let seen = ip4_of(about);
    let hlen = seen.header_len();
    let quoted = seen.into_inner()[..hlen + 8].to_vec();
    let mut icmp = vec![kind, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&quoted);
    let c = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, v4(CLIENT), IpProtocol::ICMP, 64, false, &icmp)
}

/// ICMP errors about a Service connection are related to it, translated or not: a client
/// isolated for ingress gets the backend's port unreachable (so its probe fails at once, not
/// by timeout) and a router's fragmentation needed (else path MTU discovery blackholes).
#[test]
fn icmp_errors_about_service_connections_reach_an_isolated_client() {
    let vip = v4("198.51.100.10");
    let client_in = acl("client-in", &[("198.18.2.2/32", Some(6), (80, 80))]);
    let mut r = service_rig(one_acl(v4(CLIENT), AclDirection::Ingress, client_in), false);
    let probe = from_client(&mut r, &udp(v4(CLIENT), vip, 5000, 80));
    assert_eq!(probe.len(), 1);
    let err = icmp4_error_about(v4(SERVER), (3, 3, 0), &probe[0].1);
    let out = from_server(&mut r, &err);
    assert_eq!(out.len(), 1, "the port unreachable reaches the client");
    let ip = ip4_of(&out[0].1);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (vip, v4(CLIENT)));
    let quoted = Ipv4Packet::new_unchecked(&ip.payload()[8..]);
    assert_eq!(quoted.dst_addr(), vip, "about the client's own datagram");
    assert_eq!(r.count("ip4-acl", "related"), 1);

    // A router beyond this node cannot forward the client's big segment to the backend.
    let syn = from_client(&mut r, &tcp(v4(CLIENT), vip, 40000, 80, TcpFlags::SYN));
    assert_eq!(syn.len(), 1);
    let router = v4("198.18.2.3");
    let err = icmp4_error_about(router, (3, 4, 1200), &syn[0].1);
    let out = from_server(&mut r, &err);
    assert_eq!(out.len(), 1, "fragmentation needed reaches the client");
    let ip = ip4_of(&out[0].1);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (router, v4(CLIENT)));
    assert_eq!(&ip.payload()[..2], &[3, 4]);
    assert_eq!(r.count("ip4-acl", "related"), 2);
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 0);
}

/// ICMP errors about a ping are related to it: tracked by its identifier, the ping's error
/// (quoting the echo) finds it, with or without services in the path, IPv4 and IPv6.
#[test]
fn errors_about_a_ping_reach_an_isolated_pod() {
    let client6 = v6("2001:db8:1::2");
    let isolated = || {
        let mut p = PolicyTables {
            acls: vec![
                acl("client-in", &[]),
                acl(
                    "client-out",
                    &[
                        ("198.19.0.0/16", None, (0, 65535)),
                        ("2001:db8:2::/64", None, (0, 65535)),
                    ],
                ),
            ],
            ..PolicyTables::default()
        };
        for pod in [IpAddr::V4(v4(CLIENT)), IpAddr::V6(client6)] {
            let acls = PodAcls {
                ingress: Some(0),
                egress: Some(1),
            };
            p.pods.insert(pod, acls);
        }
        p
    };
    for with_service in [false, true] {
        let mut r = if with_service {
            service_rig(isolated(), false)
        } else {
            rig(isolated())
        };
        for gateway in ["198.18.2.3", "198.18.2.4"] {
            r.state
                .neighbors
                .insert_permanent(1, v4(gateway).into(), SERVER_MAC);
        }
        let ping = ipv4(
            v4(CLIENT),
            v4("198.19.0.5"),
            IpProtocol::ICMP,
            64,
            false,
            &icmp_echo(8, 16),
        );
        let sent = from_client(&mut r, &ping);
        assert_eq!(sent.len(), 1, "the egress rule admits the ping");
        let err = icmp4_error_about(v4("198.18.2.3"), (11, 0, 0), &sent[0].1);
        assert_eq!(
            from_server(&mut r, &err).len(),
            1,
            "time exceeded (services: {with_service})"
        );

        let ping6 = echo6(client6, v6("2001:db8:2::2"), 64);
        let sent = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &ping6));
        assert_eq!(sent.len(), 1, "the egress rule admits the IPv6 ping");
        let router6 = v6("2001:db8:2::3");
        let mut msg = vec![3, 0, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&sent[0].1[14..]);
        let err6 = ipv6(
            router6,
            client6,
            IpProtocol::ICMPV6,
            64,
            &icmp6(router6, client6, msg),
        );
        let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x86dd, &err6));
        assert_eq!(
            out.len(),
            1,
            "IPv6 time exceeded (services: {with_service})"
        );
        assert_eq!(r.count("ip4-acl", "related"), 1);
        assert_eq!(r.count("ip6-acl", "related"), 1);
        assert_eq!(r.count("ip4-acl", "ingress_denied"), 0);
        assert_eq!(r.count("ip6-acl", "ingress_denied"), 0);
    }
}

#[test]
fn masqueraded_service_traffic_is_judged_before_snat() {
    let syn = tcp(v4(CLIENT), v4("198.51.100.10"), 40000, 80, TcpFlags::SYN);
    // The server admits this node's address (as every compiled ACL does), not the client:
    // the masqueraded source must not stand in for the client.
    let mut r = masquerading_rig(policy(&[("198.18.2.1/32", Some(6), (1, 65535))]));
    assert!(from_client(&mut r, &syn).is_empty());
    assert_eq!(r.count("ip4-nat", "masqueraded"), 1);
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
    assert_eq!(r.state.conntrack.len(), 0);
    // Admitting the client's own address lets it through, masqueraded, and back.
    let mut r = masquerading_rig(policy(&[("198.18.1.2/32", Some(6), (8080, 8080))]));
    let out = from_client(&mut r, &syn);
    assert_eq!(out.len(), 1);
    let sent = ip4_of(&out[0].1);
    assert_eq!(
        (sent.src_addr(), sent.dst_addr()),
        (v4("198.18.2.1"), v4(SERVER))
    );
    assert_eq!(r.count("ip4-acl", "allowed_new"), 1);
    // The client's egress ACL still applies to the masqueraded connection.
    let deny_out = one_acl(v4(CLIENT), AclDirection::Egress, acl("client-out", &[]));
    let mut r = masquerading_rig(deny_out);
    assert!(from_client(&mut r, &syn).is_empty());
    assert_eq!(r.count("ip4-acl", "egress_denied"), 1);
}

#[test]
fn a_pod_reaches_itself_through_a_service_whatever_its_acls() {
    // The server admits nothing and may send nothing, yet reaches its own Service backend.
    let mut p = one_acl(v4(SERVER), AclDirection::Ingress, acl("server-in", &[]));
    p.acls.push(acl("server-out", &[]));
    p.pods.insert(
        v4(SERVER).into(),
        PodAcls {
            ingress: Some(0),
            egress: Some(1),
        },
    );
    let mut r = masquerading_rig(p);
    let syn = tcp(v4(SERVER), v4("198.51.100.10"), 40000, 80, TcpFlags::SYN);
    let out = from_server(&mut r, &syn);
    // (Sent back out of the port it came in on, so an ICMP redirect may go with it.)
    let hairpinned = out.iter().filter(|(_, f)| {
        f[12..14] == [0x08, 0x00] && {
            let ip = ip4_of(f);
            ip.protocol() == IpProtocol::TCP && ip.dst_addr() == v4(SERVER)
        }
    });
    assert_eq!(hairpinned.count(), 1, "{out:?}");
    assert_eq!(r.count("ip4-acl", "self"), 1);
    // Another client of the Service is still judged.
    let syn = tcp(v4(CLIENT), v4("198.51.100.10"), 40000, 80, TcpFlags::SYN);
    assert!(from_client(&mut r, &syn).is_empty());
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
}

/// A TCP segment (or, with `sctp`, an SCTP common header with one zero-length chunk) between
/// two IPv6 addresses, as an Ethernet frame from the client side or the server side.
fn v6_frame(
    from_client: bool,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: TcpFlags,
    sctp: bool,
) -> Vec<u8> {
    let ip = if sctp {
        let mut h = Vec::new();
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // verification tag, checksum
        h.extend_from_slice(&[1, 0, 0, 4]); // an INIT chunk header
        ipv6(src, dst, IpProtocol::SCTP, 64, &h)
    } else {
        tcp6(src, dst, sport, dport, flags)
    };
    if from_client {
        eth(MAC0, CLIENT_MAC, 0x86dd, &ip)
    } else {
        eth(MAC1, SERVER_MAC, 0x86dd, &ip)
    }
}

/// `ip6-acl`: an IPv6 pod isolated for ingress admits TCP 80 and SCTP 3868 from the client's
/// IPv6 subnet, its TCP replies pass, other ports and the other protocol are refused.
#[test]
fn ipv6_pods_are_judged_by_ip6_acl_tcp_and_sctp() {
    let (client, server) = (v6("2001:db8:1::2"), v6("2001:db8:2::2"));
    let acl = acl(
        "server6-in",
        &[
            ("2001:db8:1::/64", Some(6), (80, 80)),
            ("2001:db8:1::/64", Some(132), (3868, 3868)),
        ],
    );
    let mut p = PolicyTables {
        acls: vec![acl],
        ..PolicyTables::default()
    };
    p.pods.insert(
        server.into(),
        PodAcls {
            ingress: Some(0),
            egress: None,
        },
    );
    let mut r = rig(p);
    let f = |from_client, src, dst, sport, dport, flags, sctp| {
        v6_frame(from_client, src, dst, sport, dport, flags, sctp)
    };
    let syn = f(true, client, server, 40000, 80, TcpFlags::SYN, false);
    assert_eq!(r.send(0, &syn).len(), 1, "TCP 80 admitted");
    let synack = f(
        false,
        server,
        client,
        80,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
        false,
    );
    assert_eq!(r.send(1, &synack).len(), 1, "its reply passes");
    assert!(r
        .send(0, &f(true, client, server, 40001, 81, TcpFlags::SYN, false))
        .is_empty());
    assert_eq!(
        r.send(
            0,
            &f(true, client, server, 5000, 3868, TcpFlags::default(), true)
        )
        .len(),
        1,
        "SCTP 3868 admitted"
    );
    assert!(r
        .send(
            0,
            &f(true, client, server, 5000, 3869, TcpFlags::default(), true)
        )
        .is_empty());
    assert!(
        r.send(
            0,
            &f(true, client, server, 40002, 3868, TcpFlags::SYN, false)
        )
        .is_empty(),
        "the SCTP port is not a TCP port"
    );
    assert_eq!(r.count("ip6-acl", "allowed_new"), 2);
    assert_eq!(r.count("ip6-acl", "established"), 1);
    assert_eq!(r.count("ip6-acl", "ingress_denied"), 3);
    assert_eq!(r.state.acl_hits[0].rule(0), 1);
    assert_eq!(r.state.acl_hits[0].rule(1), 1);
}

/// kube-proxy clears the UDP flows to a Service address once it has endpoints: a datagram
/// flow that policy tracked before the Service existed (so untranslated) is forgotten when
/// the Service appears, and its next datagram goes to a backend.
#[test]
fn a_udp_flow_tracked_before_its_service_existed_is_translated_once_it_does() {
    use crate::services::Services;
    use switchyard_lb::service::{CompileOptions, ServiceTable};
    let vip = v4("198.51.100.10");
    let mut p = policy(&[("198.18.1.0/24", Some(17), (1, 65535))]);
    // The client may send UDP to the Service range too.
    p.acls[1] = acl(
        "client-out",
        &[
            ("198.18.2.0/24", Some(17), (1, 65535)),
            ("198.51.100.0/24", Some(17), (1, 65535)),
        ],
    );
    let mut r = rig(p);
    let datagram = udp(v4(CLIENT), vip, 40000, 80);
    from_client(&mut r, &datagram);
    assert_eq!(r.state.conntrack.len(), 1, "tracked by policy");
    let svc = super::nat::test_service(vec![switchyard_lb::service::Endpoint::ready(
        v4(SERVER).into(),
        8080,
        true,
    )]);
    let (table, _) = ServiceTable::compile(&[svc], &CompileOptions::default());
    r.tables.services = Some(Arc::new(Services {
        table,
        ..Services::default()
    }));
    r.tables.version = 3;
    r.state.sync_services(&r.tables);
    let out = from_client(&mut r, &datagram);
    assert_eq!(out.len(), 1, "{out:?}");
    let ip = ip4_of(&out[0].1);
    assert_eq!(ip.dst_addr(), v4(SERVER), "translated now");
}

/// An egress-isolated IPv6 pod still finds its gateway: neighbor discovery (multicast and
/// link-local addresses, never forwarded to another pod) is not NetworkPolicy's to judge.
#[test]
fn an_egress_isolated_ipv6_pod_still_resolves_its_gateway() {
    let pod = v6("2001:db8:1::2");
    let router = v6("2001:db8:1::1");
    let mut r = rig(PolicyTables {
        acls: vec![acl("pod-out", &[("2001:db8:2::/64", None, (0, 65535))])],
        pods: [(
            pod.into(),
            PodAcls {
                ingress: None,
                egress: Some(0),
            },
        )]
        .into_iter()
        .collect(),
    });
    let group = v6("ff02::1:ff00:1");
    let solicit = ns(pod, group, router, Some(CLIENT_MAC));
    let out = r.send(
        0,
        &eth([0x33, 0x33, 0xff, 0, 0, 1], CLIENT_MAC, 0x86dd, &solicit),
    );
    assert_eq!(out.len(), 1, "the advertisement");
    assert_eq!(
        Ipv6Packet::new_checked(&out[0].1[14..]).unwrap().payload()[0],
        136
    );
    assert_eq!(r.count("ip6-acl", "link_scoped"), 1);
    assert_eq!(r.count("ip6-acl", "egress_denied"), 0);
}

/// NetworkPolicy: an isolated pod admits only what a rule allows. A TCP, UDP or SCTP packet
/// whose transport header is cut short has no ports to judge; it must not reach a pod whose
/// ACL admits nothing (with or without Services in the graph).
#[test]
fn a_truncated_transport_header_does_not_pass_an_isolated_pod() {
    for with_services in [false, true] {
        let mut r = rig(one_acl(
            v4(SERVER),
            AclDirection::Ingress,
            acl("server-in", &[]),
        ));
        if with_services {
            r = service_rig(
                one_acl(v4(SERVER), AclDirection::Ingress, acl("server-in", &[])),
                false,
            );
        }
        for (proto, len) in [
            (IpProtocol::TCP, 10),
            (IpProtocol::UDP, 4),
            (IpProtocol(132), 6),
        ] {
            let mut payload = vec![0u8; len];
            payload[..4].copy_from_slice(&[0x9c, 0x40, 0, 80]);
            let short = ipv4(v4(CLIENT), v4(SERVER), proto, 64, false, &payload);
            assert!(
                from_client(&mut r, &short).is_empty(),
                "{proto:?} with a {len}-byte header passed (services: {with_services})"
            );
        }
        assert_eq!(r.count("ip4-acl", "unparsed"), 3);
        // Where no ACL judges (the client is not isolated), it is not policy's to drop.
        let short = ipv4(v4(SERVER), v4(CLIENT), IpProtocol::TCP, 64, false, &[0; 10]);
        assert_eq!(from_server(&mut r, &short).len(), 1);
    }
}

/// Stateful policy passes the replies of a ping, not a ping the other way: an echo request
/// into an isolated pod is a new flow even when it carries the identifier of the pod's own
/// ping to its sender (Linux conntrack keys ICMP queries by type, so only the echo reply
/// matches the reply tuple).
#[test]
fn an_echo_request_is_no_reply_to_an_echo_request() {
    let mut r = rig(one_acl(
        v4(SERVER),
        AclDirection::Ingress,
        acl("server-in", &[]),
    ));
    let ping = |from: &str, to: &str, kind: u8| {
        ipv4(
            v4(from),
            v4(to),
            IpProtocol::ICMP,
            64,
            false,
            &icmp_echo(kind, 16),
        )
    };
    assert_eq!(from_server(&mut r, &ping(SERVER, CLIENT, 8)).len(), 1);
    assert!(
        from_client(&mut r, &ping(CLIENT, SERVER, 8)).is_empty(),
        "the client's own ping (same identifier) is new, and the server admits nothing"
    );
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
    assert_eq!(
        from_client(&mut r, &ping(CLIENT, SERVER, 0)).len(),
        1,
        "the echo reply passes as the reply it is"
    );
}

/// A Service of one endpoint, the server pod on port 8080, forwarded as `forwarding` says,
/// over policy `p`.
fn forwarding_rig(forwarding: switchyard_lb::service::Forwarding, p: PolicyTables) -> Rig {
    use crate::services::Services;
    use switchyard_lb::service::{CompileOptions, Service, ServiceTable};
    let svc = Service {
        forwarding,
        ..super::nat::test_service(vec![switchyard_lb::service::Endpoint::ready(
            v4(SERVER).into(),
            8080,
            true,
        )])
    };
    let (table, _) = ServiceTable::compile(&[svc], &CompileOptions::default());
    let mut r = rig(p);
    r.tables.services = Some(Arc::new(Services {
        table,
        ..Services::default()
    }));
    r.tables.version = 3;
    r.state.sync_services(&r.tables);
    r
}

const TUNNELLED_FORWARDINGS: [switchyard_lb::service::Forwarding; 3] = [
    switchyard_lb::service::Forwarding::Gre,
    switchyard_lb::service::Forwarding::Ipip,
    switchyard_lb::service::Forwarding::DsrIpip,
];

/// A Service forwarded in a tunnel (`gre`, `ipip`, `dsr`) sends the client's packet to the
/// backend encapsulated, untranslated, as this node's own packet. NetworkPolicy still
/// judges it as the connection it is, from the client to the backend's address and port:
/// the backend pod's ingress ACL and the client pod's egress ACL.
#[test]
fn tunnel_forwarded_service_traffic_meets_the_backends_ingress_acl() {
    for forwarding in TUNNELLED_FORWARDINGS {
        let mut r = forwarding_rig(
            forwarding,
            one_acl(v4(SERVER), AclDirection::Ingress, acl("server-in", &[])),
        );
        let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
        assert!(
            from_client(&mut r, &syn).is_empty(),
            "{forwarding:?}: the server admits nothing, yet the SYN reached it in a tunnel"
        );
        assert_eq!(r.count("ip4-nat", "policy_ingress_denied"), 1);
        assert_eq!(r.count("ip4-nat", "encapsulated"), 0);
        assert_eq!(r.state.conntrack.len(), 0, "a denied flow is not tracked");
        // Judged by the backend's port, not the Service's: 80 admitted is not enough.
        let mut r = forwarding_rig(
            forwarding,
            one_acl(
                v4(SERVER),
                AclDirection::Ingress,
                acl("server-in", &[("198.18.1.0/24", Some(6), (80, 80))]),
            ),
        );
        assert!(from_client(&mut r, &syn).is_empty(), "{forwarding:?}");
        let mut r = forwarding_rig(
            forwarding,
            one_acl(
                v4(SERVER),
                AclDirection::Ingress,
                acl("server-in", &[("198.18.1.0/24", Some(6), (8080, 8080))]),
            ),
        );
        assert_eq!(from_client(&mut r, &syn).len(), 1, "{forwarding:?}");
        assert_eq!(r.count("ip4-nat", "encapsulated"), 1);
        // Its later packets take the tunnel too, without a rule check.
        let ack = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::ACK);
        assert_eq!(from_client(&mut r, &ack).len(), 1, "{forwarding:?}");
        assert_eq!(r.count("ip4-nat", "encapsulated"), 2);
        assert_eq!(
            r.state.acl_hits[0].rule(0),
            1,
            "one rule check, for the SYN"
        );
    }
}

#[test]
fn tunnel_forwarded_service_traffic_meets_the_clients_egress_acl() {
    for forwarding in TUNNELLED_FORWARDINGS {
        // The client may reach 198.18.3.0/24 only: not the backend behind the Service.
        let mut r = forwarding_rig(
            forwarding,
            one_acl(
                v4(CLIENT),
                AclDirection::Egress,
                acl("client-out", &[("198.18.3.0/24", None, (0, 65535))]),
            ),
        );
        let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
        assert!(from_client(&mut r, &syn).is_empty(), "{forwarding:?}");
        assert_eq!(r.count("ip4-nat", "policy_egress_denied"), 1);
        // Allowed to the backend's subnet: through, and tracked for the replies.
        let mut r = forwarding_rig(
            forwarding,
            one_acl(
                v4(CLIENT),
                AclDirection::Egress,
                acl("client-out", &[("198.18.2.0/24", Some(6), (8080, 8080))]),
            ),
        );
        assert_eq!(from_client(&mut r, &syn).len(), 1, "{forwarding:?}");
        assert_eq!(r.state.conntrack.len(), 1);
    }
}

/// The backend answers a tunnelled client itself, from the Service's address (direct server
/// return, or the far node's NAT). A client pod isolated for ingress must get those replies
/// as replies of the connection it opened.
#[test]
fn replies_to_a_tunnelled_flow_reach_a_client_isolated_for_ingress() {
    for forwarding in TUNNELLED_FORWARDINGS {
        let mut r = forwarding_rig(
            forwarding,
            one_acl(v4(CLIENT), AclDirection::Ingress, acl("client-in", &[])),
        );
        let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
        assert_eq!(from_client(&mut r, &syn).len(), 1, "{forwarding:?}");
        let synack = tcp(
            v4(VIP),
            v4(CLIENT),
            80,
            40000,
            TcpFlags::SYN | TcpFlags::ACK,
        );
        assert_eq!(
            from_server(&mut r, &synack).len(),
            1,
            "{forwarding:?}: the reply from the Service address was denied"
        );
        assert_eq!(r.count("ip4-acl", "established"), 1);
        // Not a reply: the Service address opening a connection of its own to the client.
        let other = tcp(v4(VIP), v4(CLIENT), 80, 40001, TcpFlags::SYN);
        assert!(from_server(&mut r, &other).is_empty(), "{forwarding:?}");
        assert_eq!(r.count("ip4-acl", "ingress_denied"), 1);
    }
}

/// Direct server return, backend side: the packet out of its IP-in-IP tunnel goes to the
/// local backend unchanged (still to the Service's address), judged by the backend's ingress
/// ACL as to its own address and port.
#[test]
fn direct_server_return_delivery_meets_the_backends_ingress_acl() {
    use switchyard_lb::service::Forwarding;
    let outside = v4("203.0.113.5");
    let inner = tcp(outside, v4(VIP), 40000, 80, TcpFlags::SYN);
    let tunnelled = ipv4(
        v4(CLIENT),
        v4("198.18.1.1"),
        IpProtocol(4),
        64,
        true,
        &inner,
    );
    let mut r = forwarding_rig(
        Forwarding::DsrIpip,
        one_acl(v4(SERVER), AclDirection::Ingress, acl("server-in", &[])),
    );
    assert!(from_client(&mut r, &tunnelled).is_empty());
    assert_eq!(r.count("ip4-nat", "policy_ingress_denied"), 1);
    assert_eq!(r.count("ip4-nat", "delivered"), 0);
    let mut r = forwarding_rig(
        Forwarding::DsrIpip,
        one_acl(
            v4(SERVER),
            AclDirection::Ingress,
            acl("server-in", &[("203.0.113.0/24", Some(6), (8080, 8080))]),
        ),
    );
    let out = from_client(&mut r, &tunnelled);
    assert_eq!(out.len(), 1);
    assert_eq!(r.count("ip4-nat", "delivered"), 1);
    // The next packet of the flow is delivered too, without a rule check.
    let ack = tcp(outside, v4(VIP), 40000, 80, TcpFlags::ACK);
    let tunnelled = ipv4(v4(CLIENT), v4("198.18.1.1"), IpProtocol(4), 64, true, &ack);
    assert_eq!(from_client(&mut r, &tunnelled).len(), 1);
    assert_eq!(r.count("ip4-nat", "delivered"), 2);
    assert_eq!(r.state.acl_hits[0].rule(0), 1);
}

/// A tracked tunnelled flow whose Service turns to plain NAT is forgotten at the change:
/// its next packet is translated as a new connection's, not tunnelled.
#[test]
fn a_tunnelled_flow_follows_its_service_when_it_stops_tunnelling() {
    use crate::services::Services;
    use switchyard_lb::service::{CompileOptions, Forwarding, ServiceTable};
    let mut r = forwarding_rig(
        Forwarding::Gre,
        one_acl(v4(CLIENT), AclDirection::Ingress, acl("client-in", &[])),
    );
    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    assert_eq!(from_client(&mut r, &syn).len(), 1);
    assert_eq!(r.state.conntrack.len(), 1);
    let svc = super::nat::test_service(vec![switchyard_lb::service::Endpoint::ready(
        v4(SERVER).into(),
        8080,
        true,
    )]);
    let (table, _) = ServiceTable::compile(&[svc], &CompileOptions::default());
    r.tables.services = Some(Arc::new(Services {
        table,
        ..Services::default()
    }));
    r.tables.version += 1;
    r.state.sync_services(&r.tables);
    assert_eq!(r.state.conntrack.len(), 0);
    let out = from_client(&mut r, &syn);
    assert_eq!(out.len(), 1);
    assert_eq!(r.count("ip4-nat", "new_connection"), 1);
    assert_eq!(r.count("ip4-nat", "encapsulated"), 1);
}
