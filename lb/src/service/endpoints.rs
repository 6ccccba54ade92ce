//! Which endpoints of a Service port are usable, for Cluster and for Local traffic policy:
//! kube-proxy's endpoint categorisation (`CategorizeEndpoints` and `topologyModeFromHints` in
//! `pkg/proxy/topology.go`).

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
        let mode = Topology::of(endpoints);
        Usable {
            cluster: usable(endpoints.iter().copied(), |e| mode.admits(e)),
            local: usable(endpoints.iter().copied().filter(|e| e.is_local), |_| true),
        }
    }

    /// True if any endpoint anywhere can serve. kube-proxy's "has endpoints": topology
    /// narrows the ready cluster endpoints only when some remain, so the cluster endpoints
    /// are empty exactly when no endpoint is ready or serving-and-terminating, whichever
    /// policies the Service uses.
    pub(super) fn has_any(&self) -> bool {
        !self.cluster.is_empty()
    }
}

/// Which ready endpoints topology hints leave for cluster traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// No filtering: hints are absent, partial, or name neither this node nor its zone.
    Any,
    /// Only endpoints whose node hints name this node.
    SameNode,
    /// Only endpoints whose zone hints name this node's zone.
    SameZone,
}

impl Topology {
    /// The mode the ready endpoints' hints call for.
    fn of(endpoints: &[&Endpoint]) -> Topology {
        let ready = || endpoints.iter().filter(|e| e.ready);
        let decide = |hint: fn(&Endpoint) -> Option<bool>| {
            ready().all(|e| hint(e).is_some()) && ready().any(|e| hint(e) == Some(true))
        };
        if ready().next().is_none() {
            Topology::Any
        } else if decide(|e| e.hints.node) {
            Topology::SameNode
        } else if decide(|e| e.hints.zone) {
            Topology::SameZone
        } else {
            Topology::Any
        }
    }

    fn admits(self, e: &Endpoint) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameNode => e.hints.node == Some(true),
            Topology::SameZone => e.hints.zone == Some(true),
        }
    }
}

/// Ready endpoints that `admit` lets through, falling back to serving-and-terminating ones
/// (whatever `admit` says, as kube-proxy's fallback ignores topology) when there are none.
fn usable<'a>(
    endpoints: impl Iterator<Item = &'a Endpoint> + Clone,
    admit: impl Fn(&Endpoint) -> bool,
) -> Vec<BackendAddr> {
    let select = |keep: &dyn Fn(&Endpoint) -> bool| -> Vec<BackendAddr> {
        endpoints
            .clone()
            .filter(|e| keep(e))
            .map(|e| BackendAddr {
                addr: e.addr,
                port: e.port,
            })
            .collect()
    };
    let ready = select(&|e| e.ready && admit(e));
    if ready.is_empty() {
        select(&|e| e.serving && e.terminating)
    } else {
        ready
    }
}
