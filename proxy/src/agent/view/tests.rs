//! The view against the whole-store reference: after any sequence of stores, taking in only
//! the differences gives the Services, table and problems a full reduce and compile give.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use switchyard_lb::service::ServiceTable;

use super::*;
use crate::agent::manifests::{Format, Loader};

const NODE: &str = "node-a";

/// One Service of the pool: its cluster IP (from a small pool, so they collide), port and
/// whether it is labelled for another proxy.
#[derive(Clone, Debug)]
struct Svc {
    ip: u8,
    port: u16,
    foreign: bool,
}

/// One EndpointSlice of the pool: its owner (an index into the Service names, past the end for
/// no label), endpoint addresses (bits of a small pool) and readiness.
#[derive(Clone, Debug)]
struct Slice {
    owner: usize,
    endpoints: u8,
    ready: bool,
    bad: bool,
    /// Zone hints on every endpoint (zone-a or zone-b by address).
    hinted: bool,
}

const SERVICES: [&str; 3] = ["a", "b", "c"];

fn yaml(services: &[Option<Svc>], slices: &[Option<Slice>]) -> String {
    with_node(services, slices, None)
}

/// As [`yaml`], with this node's Node object in zone `zone-{zone}` when `zone` is given.
fn with_node(services: &[Option<Svc>], slices: &[Option<Slice>], zone: Option<char>) -> String {
    let mut out = String::new();
    if let Some(zone) = zone {
        out += &format!(
            "---\napiVersion: v1\nkind: Node\n\
             metadata: {{name: {NODE}, labels: {{topology.kubernetes.io/zone: zone-{zone}}}}}\n"
        );
    }
    for (name, svc) in SERVICES.iter().zip(services) {
        let Some(svc) = svc else { continue };
        let labels = if svc.foreign {
            "labels: {service.kubernetes.io/service-proxy-name: other}"
        } else {
            "labels: {}"
        };
        out += &format!(
            "---\napiVersion: v1\nkind: Service\n\
             metadata: {{name: {name}, namespace: default, {labels}}}\n\
             spec:\n  clusterIP: 198.19.0.{}\n  ports: [{{name: http, port: {}, targetPort: 8080}}]\n",
            svc.ip, svc.port
        );
    }
    for (i, slice) in slices.iter().enumerate() {
        let Some(slice) = slice else { continue };
        let labels = match SERVICES.get(slice.owner) {
            Some(owner) => format!("{{kubernetes.io/service-name: {owner}}}"),
            None => "{}".to_string(),
        };
        let endpoints: Vec<String> = (0..4)
            .filter(|b| slice.endpoints & (1 << b) != 0)
            .map(|b| {
                // A bad address is reported against the slice and skipped.
                let addr = if slice.bad && b == 0 {
                    "198.18.0.300".to_string()
                } else {
                    format!("198.18.0.{}", b + 1)
                };
                let hints = if slice.hinted {
                    format!(", hints: {{forZones: [{{name: zone-{}}}]}}", if b % 2 == 0 { "a" } else { "b" })
                } else {
                    String::new()
                };
                format!(
                    "{{addresses: [\"{addr}\"], conditions: {{ready: {}}}, nodeName: node-{}{hints}}}",
                    slice.ready,
                    if b % 2 == 0 { "a" } else { "b" }
                )
            })
            .collect();
        out += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}, namespace: default, labels: {labels}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints: [{}]\n",
            endpoints.join(", ")
        );
    }
    out
}

fn store(text: &str) -> ObjectStore {
    let mut loader = Loader::new();
    loader.add_text(Path::new("test.yaml"), text, Format::Yaml);
    let (store, errors) = loader.finish();
    assert!(errors.is_empty(), "test manifests do not load: {errors:#?}");
    store
}

fn svc_strategy() -> impl Strategy<Value = Option<Svc>> {
    prop::option::of(
        (
            1u8..3,
            prop::sample::select(vec![80u16, 81]),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(ip, port, foreign)| Svc { ip, port, foreign }),
    )
}

fn slice_strategy() -> impl Strategy<Value = Option<Slice>> {
    prop::option::of(
        (
            0usize..4,
            any::<u8>(),
            any::<bool>(),
            prop::bool::weighted(0.1),
            any::<bool>(),
        )
            .prop_map(|(owner, endpoints, ready, bad, hinted)| Slice {
                owner,
                endpoints: endpoints & 0xf,
                ready,
                bad,
                hinted,
            }),
    )
}

fn store_strategy() -> impl Strategy<Value = ObjectStore> {
    (
        prop::collection::vec(svc_strategy(), 3),
        prop::collection::vec(slice_strategy(), 4),
        prop::option::of(prop::sample::select(vec!['a', 'b'])),
    )
        .prop_map(|(services, slices, zone)| store(&with_node(&services, &slices, zone)))
}

proptest! {
    #[test]
    fn taking_in_differences_matches_reducing_everything(
        stores in prop::collection::vec(store_strategy(), 1..8),
    ) {
        let options = CompileOptions::default();
        let mut view = View::new(NODE, None, options.clone());
        let mut last = ObjectStore::default();
        for next in stores {
            view.apply(last.diff(&next));
            prop_assert_eq!(&view.store, &next);

            let (services, reduce_errors) = reduce::services(&next, NODE, None);
            let got: Vec<Service> = view.services().iter().map(|s| (**s).clone()).collect();
            prop_assert_eq!(&got, &services);
            let mut want_errors: Vec<String> =
                reduce_errors.iter().map(ToString::to_string).collect();
            let mut got_errors: Vec<String> =
                view.reduce_problems().map(ToString::to_string).collect();
            want_errors.sort();
            got_errors.sort();
            prop_assert_eq!(got_errors, want_errors);

            let (table, compile_errors) = ServiceTable::compile(&services, &options);
            prop_assert_eq!(view.compiler().table(), &table);
            let mut want: Vec<String> = compile_errors.iter().map(ToString::to_string).collect();
            let mut got: Vec<String> =
                view.compiler().errors().iter().map(ToString::to_string).collect();
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
            last = next;
        }
    }
}

#[test]
fn one_slice_change_reduces_one_service() {
    let svc = |ip| {
        Some(Svc {
            ip,
            port: 80,
            foreign: false,
        })
    };
    let slice = |owner, endpoints| {
        Some(Slice {
            owner,
            endpoints,
            ready: true,
            bad: false,
            hinted: false,
        })
    };
    let services = [svc(1), svc(2), None];
    let before = store(&yaml(&services, &[slice(0, 1), slice(1, 2)]));
    let mut view = View::new(NODE, None, CompileOptions::default());
    let first = view.apply(ObjectStore::default().diff(&before));
    assert_eq!(first.services, 2);
    assert!(!first.policy);

    // Slice s1 moves from Service b to Service a: both are reduced again, nothing else.
    let after = store(&yaml(&services, &[slice(0, 1), slice(0, 2)]));
    let touched = view.apply(before.diff(&after));
    assert_eq!(touched.services, 2);
    let services = view.services();
    assert_eq!(services[0].ports[0].endpoints.len(), 2);
    assert!(services[1].ports[0].endpoints.is_empty());
}

// NetworkPolicy: the view's incremental compiler against a whole-store reduce and compile.

/// A policy cluster drawn from small pools: pods (namespace, labels, node, present),
/// namespaces (labels), and which of a few policy templates exist.
/// Namespace ns-0/ns-1, app a/b, on this node, named port, second address (a pod IP change
/// when it flips).
type PodSlot = (u8, u8, bool, bool, bool);

#[derive(Clone, Debug)]
struct PolicyWorld {
    /// Per pod slot: present, and how.
    pods: Vec<Option<PodSlot>>,
    /// Per namespace: present, team label x/y/none.
    namespaces: Vec<Option<Option<u8>>>,
    /// Which policy templates exist.
    policies: Vec<bool>,
}

const POLICIES: [&str; 4] = [
    // Default deny ingress in ns-0.
    "metadata: {name: deny, namespace: ns-0}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    // app=a in ns-1 takes TCP 8080 (by name) from app=b pods of team=x namespaces.
    "metadata: {name: from-b, namespace: ns-1}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  \
     ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: b}}}], \
     ports: [{port: http}]}]\n",
    // Egress of ns-0's app=b pods: only 198.18.0.0/16 except 198.18.2.0/24, and DNS.
    "metadata: {name: egress, namespace: ns-0}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  \
     policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.2.0/24]}}]}, \
     {ports: [{port: 53, protocol: UDP}]}]\n",
    // Everything in ns-1 admits team=y namespaces.
    "metadata: {name: from-y, namespace: ns-1}\nspec:\n  podSelector: {}\n  \
     ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}]}]\n",
];

fn policy_yaml(world: &PolicyWorld) -> String {
    let mut out = String::new();
    for (i, ns) in world.namespaces.iter().enumerate() {
        let Some(team) = ns else { continue };
        let labels = match team {
            Some(t) => format!("{{team: {}}}", if *t == 0 { "x" } else { "y" }),
            None => "{}".to_string(),
        };
        out += &format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{i}, labels: {labels}}}\n"
        );
    }
    for (i, pod) in world.pods.iter().enumerate() {
        let Some((ns, app, local, named, moved)) = pod else {
            continue;
        };
        let node = if *local { NODE } else { "node-b" };
        let ports = if *named {
            "[{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]"
        } else {
            "[{name: c, image: i}]"
        };
        out += &format!(
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: {}}}}}\n\
             spec: {{nodeName: {node}, containers: {ports}}}\n\
             status: {{podIP: 198.18.{}.{}}}\n",
            if *app == 0 { "a" } else { "b" },
            1 + ns,
            10 + i + if *moved { 100 } else { 0 }
        );
    }
    for (template, present) in POLICIES.iter().zip(&world.policies) {
        if *present {
            out +=
                &format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{template}");
        }
    }
    out
}

fn policy_world_strategy() -> impl Strategy<Value = PolicyWorld> {
    let pod = prop::option::of((0u8..2, 0u8..2, any::<bool>(), any::<bool>(), any::<bool>()));
    let namespace = prop::option::of(prop::option::of(0u8..2));
    (
        prop::collection::vec(pod, 5),
        prop::collection::vec(namespace, 2),
        prop::collection::vec(any::<bool>(), POLICIES.len()),
    )
        .prop_map(|(pods, namespaces, policies)| PolicyWorld {
            pods,
            namespaces,
            policies,
        })
}

/// Per local pod address: the rules (and origins) of its ingress and egress ACLs, whatever
/// ids the compiler gave them.
type Canonical = BTreeMap<
    std::net::IpAddr,
    [Option<(Vec<switchyard_dataplane::acl::AclRuleSpec>, Vec<String>)>; 2],
>;

fn canonical(tables: &switchyard_dataplane::policy::PolicyTables) -> Canonical {
    let acl = |i: Option<u32>| {
        i.and_then(|i| tables.acls.get(i as usize)).map(|a| {
            (
                a.rules.to_vec(),
                a.origins.iter().map(ToString::to_string).collect(),
            )
        })
    };
    tables
        .pods
        .iter()
        .map(|(ip, p)| (*ip, [acl(p.ingress), acl(p.egress)]))
        .collect()
}

proptest! {
    #[test]
    fn incremental_policy_matches_compiling_everything(
        worlds in prop::collection::vec(policy_world_strategy(), 1..6),
    ) {
        use crate::agent::{policy_tables, reduce_policy};
        let node_ips: Vec<std::net::IpAddr> = vec!["198.18.1.1".parse().unwrap()];
        let mut view = View::new(NODE, None, CompileOptions::default());
        view.set_node_ips(node_ips.clone());
        // As the agent does: one cache of tables and classifiers kept across syncs.
        let mut cache = policy_tables::AclCache::default();
        let mut last = ObjectStore::default();
        for world in worlds {
            let next = store(&policy_yaml(&world));
            view.apply(last.diff(&next));
            let (cluster, errors) = reduce_policy::cluster(&next, NODE, &node_ips);
            let want = canonical(&policy_tables::policy_tables(&switchyard_policy::compile(&cluster)));
            let got = canonical(&policy_tables::policy_tables_reusing(&view.policy().snapshot(), &mut cache));
            prop_assert_eq!(got, want);
            prop_assert_eq!(view.policy().check_indexes(), Ok(()));
            prop_assert_eq!(view.policy().policy_count(), cluster.policies.len());
            let mut want_errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let mut got_errors: Vec<String> = view.policy_problems().map(ToString::to_string).collect();
            want_errors.sort();
            got_errors.sort();
            prop_assert_eq!(got_errors, want_errors);
            last = next;
        }
    }
}
