//! Which endpoints of a Service port are usable, for Cluster and for Local traffic policy:
//! kube-proxy's endpoint categorisation (`CategorizeEndpoints` in `pkg/proxy/topology.go`),
//! without topology hints.

use std::net::IpAddr;

use super::{BackendAddr, Endpoint};

/// An IP family. kube-proxy runs one proxier per family; each sees only the Service addresses
/// and endpoints of its own family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub(super) fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub(super) fn contains(self, addr: &IpAddr) -> bool {
        Family::of(addr) == self
    }
}

/// The endpoints of `family`, one per address and port, sorted by address and port.
///
/// EndpointSlices may list an endpoint twice (while it moves between slices). kube-proxy keeps
/// one copy, preferring one on this node; beyond that it keeps whichever its map iteration
/// met first. We keep the copy that is local, then ready, then serving, then not terminating,
/// which is kube-proxy's preference made independent of input order.
pub(super) fn endpoints_of_family(endpoints: &[Endpoint], family: Family) -> Vec<&Endpoint> {
    let preference = |e: &Endpoint| (e.is_local, e.ready, e.serving, !e.terminating);
    let mut of_family: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| family.contains(&e.addr))
        .collect();
    // Within a run of one address and port, the preferred copy comes first and is kept.
    of_family.sort_unstable_by(|a, b| {
        (a.addr, a.port)
            .cmp(&(b.addr, b.port))
            .then_with(|| preference(b).cmp(&preference(a)))
    });
    of_family.dedup_by(|later, kept| later.addr == kept.addr && later.port == kept.port);
    of_family
}

/// The usable endpoints of one Service port in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Usable {
    /// For Cluster traffic policy: the ready endpoints, or if none is ready, the serving and
    /// terminating ones. Sorted by address and port.
    pub(super) cluster: Vec<BackendAddr>,
    /// For Local traffic policy: the same rule among the endpoints on this node only.
    pub(super) local: Vec<BackendAddr>,
}

impl Usable {
    /// Categorises `endpoints` (as [`endpoints_of_family`] returns them).
    pub(super) fn categorize(endpoints: &[&Endpoint]) -> Self {
        Usable {
            cluster: usable(endpoints.iter().copied()),
            local: usable(endpoints.iter().copied().filter(|e| e.is_local)),
        }
    }

    /// True if any endpoint anywhere can serve. kube-proxy's "has endpoints": with no
    /// topology filtering, the cluster endpoints are empty exactly when no endpoint is ready
    /// or serving-and-terminating, whichever policies the Service uses.
    pub(super) fn has_any(&self) -> bool {
        !self.cluster.is_empty()
    }
}

/// Ready endpoints, falling back to serving-and-terminating ones when none is ready.
fn usable<'a>(endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<BackendAddr> {
    let select = |keep: fn(&Endpoint) -> bool| -> Vec<BackendAddr> {
        endpoints
            .clone()
            .filter(|e| keep(e))
            .map(|e| BackendAddr {
                addr: e.addr,
                port: e.port,
            })
            .collect()
    };
    let ready = select(|e| e.ready);
    if ready.is_empty() {
        select(|e| e.serving && e.terminating)
    } else {
        ready
    }
}
