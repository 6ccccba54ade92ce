//! The view against the whole-store reference: after any sequence of stores, taking in only
//! the differences gives the Services, table and problems a full reduce and compile give.

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
    let before = store(&yaml(
        &[
            Some(Svc {
                ip: 1,
                port: 80,
                foreign: false,
            }),
            Some(Svc {
                ip: 2,
                port: 80,
                foreign: false,
            }),
            None,
        ],
        &[
            Some(Slice {
                owner: 0,
                endpoints: 1,
                ready: true,
                bad: false,
                hinted: false,
            }),
            Some(Slice {
                owner: 1,
                endpoints: 2,
                ready: true,
                bad: false,
                hinted: false,
            }),
        ],
    ));
    let mut view = View::new(NODE, None, CompileOptions::default());
    let first = view.apply(ObjectStore::default().diff(&before));
    assert_eq!(first.services, 2);
    assert!(!first.policy);

    // Slice s1 moves from Service b to Service a: both are reduced again, nothing else.
    let after = store(&yaml(
        &[
            Some(Svc {
                ip: 1,
                port: 80,
                foreign: false,
            }),
            Some(Svc {
                ip: 2,
                port: 80,
                foreign: false,
            }),
            None,
        ],
        &[
            Some(Slice {
                owner: 0,
                endpoints: 1,
                ready: true,
                bad: false,
                hinted: false,
            }),
            Some(Slice {
                owner: 0,
                endpoints: 2,
                ready: true,
                bad: false,
                hinted: false,
            }),
        ],
    ));
    let touched = view.apply(before.diff(&after));
    assert_eq!(touched.services, 2);
    let services = view.services();
    assert_eq!(services[0].ports[0].endpoints.len(), 2);
    assert!(services[1].ports[0].endpoints.is_empty());
}
