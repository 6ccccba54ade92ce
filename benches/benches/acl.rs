//! ACL classifier (`switchyard_dataplane::acl`): ns/packet at 100, 1k, 10k and 100k rules, the
//! first-match linear scan on the same rules and packets in the same run (up to 10k rules), and
//! build time at each size; then what a pod peer change costs: `Classifier::patched` for one
//! /32 rule removed and one added (a pod leaving and joining a peer set), against a build of
//! the same new list, and ns/packet on the patched classifier.
//!
//! `cargo bench -p switchyard-benches --bench acl`. Rules imitate compiled NetworkPolicy ACLs:
//! 80% /32 pod peers with one or two ports each, /24 node pod CIDRs, external ipBlocks of every
//! length from /8 to /28, cluster-wide ipBlocks (10/8, 10.244/14, 10.244/16), some IPv6 pods and
//! /64s, node addresses and a DNS-everywhere rule. Each
//! iteration classifies 1000 precomputed packets, about half aimed inside some rule (which may
//! still miss on protocol or port) and half at random pods (of a cluster four times the size the
//! rules mention) on common or random ports; time/iteration in
//! µs is ns/packet.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard_dataplane::acl::{first_match_linear, AclRuleSpec, Classifier, IpNet, RuleDelta};

const SIZES: [usize; 4] = [100, 1_000, 10_000, 100_000];
const LINEAR_MAX_RULES: usize = 10_000;
const PACKETS: usize = 1000;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const COMMON_PORTS: [u16; 10] = [80, 443, 8080, 8443, 53, 5432, 6379, 9090, 3306, 27017];

/// splitmix64, so runs are repeatable without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self) -> u64 {
        self.below(100)
    }

    fn port(&mut self) -> u16 {
        if self.percent() < 80 {
            COMMON_PORTS[self.below(COMMON_PORTS.len() as u64) as usize]
        } else {
            1024 + self.below(64_512) as u16
        }
    }
}

/// Pods live in 10.244.0.0/14, 110 per node /24 at most.
fn pod_v4(rng: &mut Rng, pods: u64) -> u32 {
    let i = rng.below(pods);
    0x0af4_0000 + ((i / 110) << 8) as u32 + (i % 110) as u32 + 2
}

fn net(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len).map(|n| n.trunc()).unwrap_or_default()
}

fn rules(n: usize, seed: u64) -> Vec<AclRuleSpec> {
    let mut rng = Rng(seed);
    let pods = (n as u64 / 3).max(16);
    let mut out = Vec::with_capacity(n);
    // Node addresses and DNS to anywhere come first, as the compiler emits them.
    for node in 0..3u32 {
        out.push(AclRuleSpec {
            peer: net(IpAddr::V4(Ipv4Addr::from(0xc612_0010 + node)), 32),
            protocol: None,
            ports: (0, u16::MAX),
        });
    }
    out.push(AclRuleSpec {
        peer: net(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        protocol: Some(UDP),
        ports: (53, 53),
    });
    while out.len() < n {
        let kind = rng.percent();
        let protocol = match rng.percent() {
            0..70 => Some(TCP),
            70..92 => Some(UDP),
            92..95 => Some(SCTP),
            _ => None,
        };
        let mut ports = match rng.percent() {
            0..75 => {
                let p = rng.port();
                (p, p)
            }
            75..85 => (30_000, 32_767),
            _ => (0, u16::MAX),
        };
        let peer = match kind {
            0..80 => net(IpAddr::V4(Ipv4Addr::from(pod_v4(&mut rng, pods))), 32),
            80..85 => net(IpAddr::V4(Ipv4Addr::from(pod_v4(&mut rng, pods))), 24),
            85..91 => {
                // External ipBlocks of any length.
                let len = 8 + rng.below(21) as u8;
                let base = [0xac10_0000u32, 0xc0a8_0000, 0xc612_0000, 0xcb00_7100];
                let addr = base[rng.below(4) as usize] | (rng.next() as u32 & 0x000f_ffff);
                net(IpAddr::V4(Ipv4Addr::from(addr)), len)
            }
            91..94 => {
                // Cluster-wide ipBlocks, nesting over the pod prefixes.
                let (addr, len) = [(0x0a00_0000u32, 8), (0x0af4_0000, 14), (0x0af4_0000, 16)]
                    [rng.below(3) as usize];
                // Always on some ports: "all of 10/8 on every port" would match every packet.
                ports = (rng.port(), 0);
                ports.1 = ports.0;
                net(IpAddr::V4(Ipv4Addr::from(addr)), len)
            }
            _ => {
                let i = u128::from(rng.below(pods));
                let pod = (0xfd00_0010_0244u128 << 80) | ((i / 110) << 64) | (i % 110 + 2);
                let len = if rng.percent() < 80 { 128 } else { 64 };
                net(IpAddr::V6(Ipv6Addr::from(pod)), len)
            }
        };
        out.push(AclRuleSpec {
            peer,
            protocol,
            ports,
        });
    }
    out
}

fn packets(rules: &[AclRuleSpec], seed: u64) -> Vec<(IpAddr, u8, u16)> {
    let mut rng = Rng(seed);
    let pods = (rules.len() as u64 / 3).max(16);
    (0..PACKETS)
        .map(|_| {
            let protocol = if rng.percent() < 75 { TCP } else { UDP };
            if rng.percent() < 50 {
                let r = &rules[rng.below(rules.len() as u64) as usize];
                let host = match r.peer {
                    IpNet::V4(p) => IpAddr::V4(Ipv4Addr::from(
                        u32::from(p.network()) | (rng.next() as u32 & !u32::from(p.netmask())),
                    )),
                    IpNet::V6(p) => IpAddr::V6(Ipv6Addr::from(
                        u128::from(p.network())
                            | (u128::from(rng.next()) & !u128::from(p.netmask())),
                    )),
                };
                let span = u64::from(r.ports.1 - r.ports.0) + 1;
                let port = r.ports.0 + rng.below(span) as u16;
                (host, r.protocol.unwrap_or(protocol), port)
            } else {
                // Any pod of a cluster four times the size the rules mention.
                let host = IpAddr::V4(Ipv4Addr::from(pod_v4(&mut rng, pods * 4)));
                let port = if rng.percent() < 50 {
                    rng.port()
                } else {
                    rng.next() as u16
                };
                (host, protocol, port)
            }
        })
        .collect()
}

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("acl_classify");
    group.throughput(Throughput::Elements(PACKETS as u64));
    for n in SIZES {
        let rules = rules(n, n as u64);
        let packets = packets(&rules, 7);
        let classifier = Classifier::build(&rules, false);
        // The two must agree before either is timed.
        let mut hits = 0;
        for &(peer, protocol, port) in &packets {
            let want = first_match_linear(&rules, peer, protocol, port);
            assert_eq!(
                classifier.classify(peer, protocol, port),
                want,
                "{n} rules: {peer} {protocol} {port}"
            );
            hits += usize::from(want.is_some());
        }
        eprintln!(
            "{n} rules: {hits}/{PACKETS} packets match; classifier uses {} KiB",
            classifier.memory() / 1024
        );
        group.bench_with_input(BenchmarkId::new("classify", n), &packets, |b, packets| {
            b.iter(|| {
                let mut sum = 0u64;
                for &(peer, protocol, port) in packets {
                    let hit = classifier.classify(black_box(peer), protocol, port);
                    sum = sum.wrapping_add(u64::from(hit.unwrap_or(u32::MAX)));
                }
                sum
            })
        });
        group.bench_with_input(
            BenchmarkId::new("classify_any", n),
            &packets,
            |b, packets| {
                b.iter(|| {
                    let mut sum = 0u64;
                    for &(peer, protocol, port) in packets {
                        let hit = classifier.classify_any(black_box(peer), protocol, port);
                        sum = sum.wrapping_add(u64::from(hit.unwrap_or(u32::MAX)));
                    }
                    sum
                })
            },
        );
        if n <= LINEAR_MAX_RULES {
            group.bench_with_input(
                BenchmarkId::new("linear_scan", n),
                &packets,
                |b, packets| {
                    b.iter(|| {
                        let mut sum = 0u64;
                        for &(peer, protocol, port) in packets {
                            let hit = first_match_linear(black_box(&rules), peer, protocol, port);
                            sum = sum.wrapping_add(u64::from(hit.unwrap_or(u32::MAX)));
                        }
                        sum
                    })
                },
            );
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("acl_build");
    group.sample_size(10);
    for n in SIZES {
        let rules = rules(n, n as u64);
        group.bench_with_input(BenchmarkId::from_parameter(n), &rules, |b, rules| {
            b.iter(|| Classifier::build(black_box(rules), false))
        });
    }
    group.finish();
}

/// The rules with one /32 pod rule (the middle one) removed and a rule for a new pod added
/// where its peer sorts, and the delta between the two lists.
fn peer_change(rules: &[AclRuleSpec]) -> (Vec<AclRuleSpec>, RuleDelta) {
    let host = |r: &AclRuleSpec| r.peer.prefix_len() == r.peer.max_prefix_len();
    let hosts: Vec<usize> = (0..rules.len()).filter(|&i| host(&rules[i])).collect();
    let gone = hosts[hosts.len() / 2];
    let added = AclRuleSpec {
        peer: net(IpAddr::V4(Ipv4Addr::new(10, 244, 250, 77)), 32),
        protocol: Some(TCP),
        ports: (8080, 8080),
    };
    let at = hosts[hosts.len() / 3];
    let mut next: Vec<AclRuleSpec> = Vec::with_capacity(rules.len());
    let mut delta = RuleDelta::default();
    for (i, r) in rules.iter().enumerate() {
        if i == at {
            delta.added.push(next.len() as u32);
            next.push(added);
        }
        if i == gone {
            delta.removed.push(i as u32);
        } else {
            next.push(*r);
        }
    }
    (next, delta)
}

fn patch(c: &mut Criterion) {
    let mut group = c.benchmark_group("acl_patch");
    group.sample_size(20);
    for n in SIZES {
        let rules = rules(n, n as u64);
        let (next, delta) = peer_change(&rules);
        let base = Classifier::build(&rules, false);
        let Some(patched) = base.patched(&rules, &next, &delta) else {
            panic!("{n} rules: a /32 change was not patched");
        };
        let packets = packets(&next, 7);
        for &(peer, protocol, port) in &packets {
            let want = first_match_linear(&next, peer, protocol, port);
            assert_eq!(patched.classify(peer, protocol, port), want, "{n} rules");
        }
        group.bench_with_input(BenchmarkId::new("patched", n), &next, |b, next| {
            b.iter(|| base.patched(&rules, black_box(next), &delta))
        });
        group.bench_with_input(BenchmarkId::new("build", n), &next, |b, next| {
            b.iter(|| Classifier::build(black_box(next), false))
        });
        group.bench_with_input(
            BenchmarkId::new("classify_patched", n),
            &packets,
            |b, packets| {
                b.iter(|| {
                    let mut sum = 0u64;
                    for &(peer, protocol, port) in packets {
                        let hit = patched.classify(black_box(peer), protocol, port);
                        sum = sum.wrapping_add(u64::from(hit.unwrap_or(u32::MAX)));
                    }
                    sum
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, classify, build, patch);
criterion_main!(benches);
