//! Reducers: from the API objects in an [`ObjectStore`] to the plain Service model of
//! [`switchyard_lb::service`], the node's addresses and its pod CIDRs.
//!
//! The rules are kube-proxy's (`pkg/proxy/servicechangetracker.go`, `serviceport.go`,
//! `endpointslicecache.go` and the informer label selectors of `cmd/kube-proxy`), so that a
//! cluster sees the same Services whichever of the two runs on a node.
//!
//! # Which Services
//!
//! - A Service (or EndpointSlice) labelled `service.kubernetes.io/service-proxy-name` belongs
//!   to another proxy and is skipped, unless the label's value is our own proxy name
//!   (`--service-proxy-name`). kube-proxy has no name, so it skips all of them.
//! - One labelled `service.kubernetes.io/headless` is skipped, whatever the value.
//! - Headless Services (cluster IP `None` or empty) and `type: ExternalName` are skipped.
//!
//! Skipping these is not an error; bad input is ([`ReduceError`]).
//!
//! # Addresses and ports
//!
//! - Cluster IPs: `spec.clusterIPs` (or `spec.clusterIP` when the list is empty), both
//!   families.
//! - External IPs: `spec.externalIPs`, whatever the type.
//! - Load-balancer IPs: `status.loadBalancer.ingress[].ip` of `type: LoadBalancer` Services,
//!   except ingress points with `ipMode: Proxy` (the load balancer sends those to the node
//!   port, not to the IP, so kube-proxy does not capture the IP).
//! - NodePorts: `spec.ports[].nodePort` of `NodePort` and `LoadBalancer` Services, when set and
//!   not 0. A LoadBalancer with `allocateLoadBalancerNodePorts: false` normally has none;
//!   one the user asked for explicitly is still honoured, as the API documents and kube-proxy
//!   does.
//! - Protocol: TCP when absent; TCP, UDP or SCTP.
//! - `spec.loadBalancerSourceRanges` of `type: LoadBalancer` Services (unparseable entries
//!   are reported and ignored, as kube-proxy ignores them).
//!
//! # Policies
//!
//! - `sessionAffinity: ClientIP` gives an affinity timeout of
//!   `sessionAffinityConfig.clientIP.timeoutSeconds`, 10800 s (3 h) when absent, at most 86400.
//! - `externalTrafficPolicy: Local` counts only for Services that are reachable from outside
//!   (type NodePort or LoadBalancer, or with external IPs); otherwise it is Cluster.
//! - `internalTrafficPolicy: Local` applies to the cluster IPs.
//! - `healthCheckNodePort` is kept for LoadBalancer Services whose external policy is Local.
//!
//! # Forwarding
//!
//! The annotation `switchyard.io/forwarding` on a Service chooses how packets reach the chosen
//! backend ([`Forwarding`]): `nat` (the default, kube-proxy's DNAT), `gre` or `ipip`
//! (encapsulate towards the backend, destination unchanged), or `dsr` (IP-in-IP with the
//! backend answering the client directly). Any other value is an error.
//!
//! # Endpoints
//!
//! - An EndpointSlice belongs to the Service named by its `kubernetes.io/service-name` label,
//!   in its own namespace. Slices without that label are ignored, as are those of address
//!   type `FQDN` and those of an IP family the Service has no cluster IP in (kube-proxy runs
//!   one proxier per family and that family's proxier does not see the Service).
//! - Each slice port is matched to the Service port of the same name and protocol (the empty
//!   name matches the single unnamed port). A slice port without a name is taken as the
//!   unnamed one: kube-proxy ignores such ports, but hand-written manifests leave the name
//!   out and mean exactly that. A slice port without a port number ("all ports" in the API) is
//!   ignored, as kube-proxy does.
//! - An endpoint's address is its first one, as in kube-proxy (the others are the same pod).
//!   Conditions: `ready` absent means true; `serving` absent means true (the API's rule and
//!   kube-proxy's); `terminating` absent means false. It is local when its `nodeName` is this
//!   node's name.
//! - Topology hints: an endpoint's `hints.forZones` and `hints.forNodes` are reduced to
//!   whether they name this node's zone (its Node's `topology.kubernetes.io/zone` label) and
//!   this node; the compiler applies kube-proxy's rule for them. They are taken whatever the
//!   Service's `service.kubernetes.io/topology-mode` annotation or `spec.trafficDistribution`
//!   say, as kube-proxy has since 1.31 (`topologyModeFromHints`; its annotation check,
//!   `canUseTopology`, applied only with the ServiceTrafficDistribution gate off, which 1.33
//!   no longer allows): the EndpointSlice controller reads those and writes hints only when
//!   they ask for them.
//! - Endpoints are merged over all the Service's slices and deduplicated by address and port.
//!   Of two copies the ready one is kept, then the serving one, then the non-terminating
//!   one, then the local one (kube-proxy keeps the local one), else the first in slice-name
//!   order.
//!
//! # Bad input
//!
//! A bad IP address, a port 0 or out of range, a duplicate port name, an unknown protocol or
//! an invalid policy value is reported ([`ReduceError`], naming the object's namespace and
//! name) and skipped: the whole Service when the problem is in the Service as a whole, only
//! the port when it is in one port (its `port`, `nodePort` or `protocol`), only the slice
//! port or endpoint when it is in an EndpointSlice. Everything else is reduced.
//!
//! Output is sorted by [`ServiceName`]; endpoints by address and port.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use switchyard_lb::service::{
    Endpoint, Forwarding, Protocol, Service, ServiceName, ServicePort, TopologyHints, TrafficPolicy,
};

use super::objects::ObjectStore;

/// The label naming the proxy a Service is meant for.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// The label the EndpointSlice controller puts on the slices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The Node label naming its zone, which EndpointSlice zone hints refer to.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The label naming an EndpointSlice's Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The annotation choosing a Service's [`Forwarding`].
pub const ANNOTATION_FORWARDING: &str = "switchyard.io/forwarding";
/// The sessionAffinity ClientIP timeout when none is given (3 hours), as the API defaults it.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// The largest sessionAffinity ClientIP timeout the API accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

/// A problem with an API object; the part named by [`ReduceError::skipped`] is left out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {problem}; {skipped}")]
pub struct ReduceError {
    /// The object's kind (`Service`, `EndpointSlice`).
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub problem: Problem,
    /// What was left out because of it.
    pub skipped: Skipped,
}

/// What is wrong with an object (`field` is the path to the offending field).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Not an IP address.
    #[error("{field}: {value:?} is not an IP address")]
    BadIp {
        /// Where.
        field: String,
        /// The text found.
        value: String,
    },
    /// An IP address of the wrong family for its place.
    #[error("{field}: {value} is not an {expected} address")]
    WrongFamily {
        /// Where.
        field: String,
        /// The address.
        value: IpAddr,
        /// `IPv4` or `IPv6`.
        expected: &'static str,
    },
    /// A port number of 0.
    #[error("{field}: port 0")]
    ZeroPort {
        /// Where.
        field: String,
    },
    /// A port number outside 1..=65535.
    #[error("{field}: {value} is not a port number (1-65535)")]
    PortOutOfRange {
        /// Where.
        field: String,
        /// The number found.
        value: i64,
    },
    /// Two ports of a Service with the same name (the empty name included).
    #[error("spec.ports: port name {0:?} is used more than once")]
    DuplicatePortName(String),
    /// A protocol other than TCP, UDP and SCTP.
    #[error("{field}: unknown protocol {value:?} (TCP, UDP or SCTP)")]
    UnknownProtocol {
        /// Where.
        field: String,
        /// The protocol found.
        value: String,
    },
    /// An endpoint without addresses.
    #[error("{field}: no address")]
    NoAddress {
        /// Where.
        field: String,
    },
    /// Any other invalid value.
    #[error("{field}: {value:?} is not valid ({expected})")]
    BadValue {
        /// Where.
        field: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

/// What was left out because of a [`Problem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The whole Service.
    Service,
    /// One port of a Service, by name.
    ServicePort(String),
    /// A whole EndpointSlice.
    EndpointSlice,
    /// One port of an EndpointSlice, by name.
    SlicePort(String),
    /// One endpoint of an EndpointSlice, by its index in `endpoints`.
    Endpoint(usize),
    /// One entry of a Service's `spec.loadBalancerSourceRanges`, by index.
    SourceRange(usize),
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::Service => f.write_str("Service skipped"),
            Skipped::ServicePort(name) => write!(f, "port {name:?} skipped"),
            Skipped::EndpointSlice => f.write_str("EndpointSlice skipped"),
            Skipped::SlicePort(name) => write!(f, "EndpointSlice port {name:?} skipped"),
            Skipped::Endpoint(i) => write!(f, "endpoint {i} skipped"),
            Skipped::SourceRange(i) => write!(f, "source range {i} ignored"),
        }
    }
}

/// Where errors about one object go.
struct Report<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
    errors: &'a mut Vec<ReduceError>,
}

impl Report<'_> {
    fn push(&mut self, problem: Problem, skipped: Skipped) {
        self.errors.push(ReduceError {
            kind: self.kind,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            problem,
            skipped,
        });
    }
}

/// The Services in `store` as the dataplane takes them, for the node `node_name`, as the
/// proxy named `proxy_name` (see the module documentation), and what was wrong.
///
/// The agent reduces one Service at a time ([`service`], through [`super::view::View`]);
/// this whole-store form is the reference its tests hold that to.
#[cfg(test)]
pub fn services(
    store: &ObjectStore,
    node_name: &str,
    proxy_name: Option<&str>,
) -> (Vec<Service>, Vec<ReduceError>) {
    let mut errors = Vec::new();
    let slices = slices_by_service(store, proxy_name);
    let mut out = Vec::new();
    let zone = node_zone(store, node_name);
    // The store's keys are (namespace, name), so this is ServiceName order.
    for ((namespace, name), svc) in &store.services {
        let own_slices = slices
            .get(&(namespace.as_str(), name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let context = Context {
            here: Here {
                node_name,
                zone: zone.as_deref(),
            },
            proxy_name,
        };
        out.extend(context.reduce(namespace, name, svc, own_slices, &mut errors));
    }
    (out, errors)
}

/// The Service stored under `key` as the dataplane takes it (`None` when there is none, or
/// it is skipped), given the names of the EndpointSlices labelled as its own
/// ([`slice_owner`]); its problems are added to `errors`. The same as its entry in
/// [`services`], for one Service (`here.zone` must be [`node_zone`]).
pub fn service<'a>(
    store: &ObjectStore,
    key: &(String, String),
    slice_names: impl IntoIterator<Item = &'a String>,
    here: Here<'_>,
    proxy_name: Option<&str>,
    errors: &mut Vec<ReduceError>,
) -> Option<Service> {
    let svc = store.services.get(key)?;
    let (namespace, name) = key;
    let mut own_slices: Vec<(&str, &discovery::EndpointSlice)> = Vec::new();
    for slice_name in slice_names {
        let Some(slice) = store
            .endpoint_slices
            .get(&(namespace.clone(), slice_name.clone()))
        else {
            continue;
        };
        if is_ours(&slice.metadata, proxy_name)
            && slice_owner(slice).is_some_and(|owner| owner == name.as_str())
        {
            own_slices.push((slice_name.as_str(), slice));
        }
    }
    own_slices.sort_by(|a, b| a.0.cmp(b.0));
    let context = Context { here, proxy_name };
    context.reduce(namespace, name, svc, &own_slices, errors)
}

/// The zone of the Node `node_name`: its `topology.kubernetes.io/zone` label.
pub fn node_zone(store: &ObjectStore, node_name: &str) -> Option<String> {
    store
        .nodes
        .get(&(String::new(), node_name.to_string()))?
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_ZONE)
        .filter(|zone| !zone.is_empty())
        .cloned()
}

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether the Node `node_name` may take load-balancer traffic, by kube-proxy's rule: not
/// when it is being deleted or carries the autoscaler's [`TAINT_TO_BE_DELETED`] taint. An
/// unknown Node is eligible.
pub fn node_eligible(store: &ObjectStore, node_name: &str) -> bool {
    let Some(node) = store.nodes.get(&(String::new(), node_name.to_string())) else {
        return true;
    };
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
    node.metadata.deletion_timestamp.is_none() && !tainted
}

/// The name of the Service an EndpointSlice belongs to (in its own namespace): its
/// `kubernetes.io/service-name` label, when set and not empty.
pub fn slice_owner(slice: &discovery::EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// What a reduction depends on besides the objects.
struct Context<'a> {
    here: Here<'a>,
    proxy_name: Option<&'a str>,
}

/// This node, as endpoints are judged local or hinted for it.
pub struct Here<'a> {
    /// The node's name.
    pub node_name: &'a str,
    /// Its zone (the Node's `topology.kubernetes.io/zone` label), if known.
    pub zone: Option<&'a str>,
}

impl Context<'_> {
    /// One Service with its own slices (in slice-name order), or `None` when it is skipped.
    fn reduce(
        &self,
        namespace: &str,
        name: &str,
        svc: &core::Service,
        own_slices: &[(&str, &discovery::EndpointSlice)],
        errors: &mut Vec<ReduceError>,
    ) -> Option<Service> {
        if !is_ours(&svc.metadata, self.proxy_name) {
            tracing::debug!(service = %format!("{namespace}/{name}"), "not for this proxy; skipped");
            return None;
        }
        let mut report = Report {
            kind: "Service",
            namespace,
            name,
            errors: &mut *errors,
        };
        let mut service = reduce_service(namespace, name, svc, &mut report)?;
        attach_endpoints(&mut service, own_slices, &self.here, errors);
        Some(service)
    }
}

/// True if an object with `meta`'s labels is for the proxy named `proxy_name`: kube-proxy's
/// informer selector `!service.kubernetes.io/service-proxy-name,
/// !service.kubernetes.io/headless`, with our own name let through. The headless label
/// rules an object out whatever its proxy name, as the watch's selector with a proxy name
/// (`!service.kubernetes.io/headless`) does, so both sources see the same objects.
fn is_ours(meta: &ObjectMeta, proxy_name: Option<&str>) -> bool {
    let Some(labels) = &meta.labels else {
        return true;
    };
    if labels.contains_key(LABEL_HEADLESS) {
        return false;
    }
    match labels.get(LABEL_SERVICE_PROXY_NAME) {
        Some(owner) => Some(owner.as_str()) == proxy_name,
        None => true,
    }
}

/// The EndpointSlices of each Service, by (namespace, Service name), each list in slice-name
/// order.
#[cfg(test)]
fn slices_by_service<'a>(
    store: &'a ObjectStore,
    proxy_name: Option<&str>,
) -> BTreeMap<(&'a str, &'a str), Vec<(&'a str, &'a discovery::EndpointSlice)>> {
    let mut map: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for ((namespace, name), slice) in &store.endpoint_slices {
        if !is_ours(&slice.metadata, proxy_name) {
            continue;
        }
        let Some(service) = slice_owner(slice) else {
            tracing::debug!(
                slice = %format!("{namespace}/{name}"),
                "EndpointSlice has no {LABEL_SERVICE_NAME} label; ignored"
            );
            continue;
        };
        map.entry((namespace.as_str(), service))
            .or_default()
            .push((name.as_str(), slice));
    }
    map
}

/// The Service's type, as far as the reducer cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// The Service without endpoints, or `None` (reported) when it is skipped.
fn reduce_service(
    namespace: &str,
    name: &str,
    svc: &core::Service,
    report: &mut Report<'_>,
) -> Option<Service> {
    let no_spec;
    let spec = match &svc.spec {
        Some(spec) => spec,
        None => {
            no_spec = core::ServiceSpec::default();
            &no_spec
        }
    };
    let service_type = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => {
            tracing::debug!(service = %format!("{namespace}/{name}"), "type ExternalName; skipped");
            return None;
        }
        Some(other) => {
            report.push(
                Problem::BadValue {
                    field: "spec.type".into(),
                    value: other.into(),
                    expected: "ClusterIP, NodePort, LoadBalancer or ExternalName",
                },
                Skipped::Service,
            );
            return None;
        }
    };

    // Cluster IPs; none means headless.
    let (field, raw_cluster_ips): (&str, &[String]) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips),
        _ => ("spec.clusterIP", spec.cluster_ip.as_slice()),
    };
    if raw_cluster_ips
        .first()
        .is_none_or(|ip| ip.is_empty() || ip == "None")
    {
        tracing::debug!(service = %format!("{namespace}/{name}"), "headless; skipped");
        return None;
    }
    let cluster_ips = match raw_cluster_ips {
        [one] => vec![parse_ip(field, one, report)?],
        many => parse_ips(field, many, report)?,
    };
    if cluster_ips.len() > 2
        || (cluster_ips.len() == 2 && same_family(cluster_ips[0], cluster_ips[1]))
    {
        report.push(
            Problem::BadValue {
                field: field.into(),
                value: raw_cluster_ips.join(","),
                expected: "at most one address of each IP family",
            },
            Skipped::Service,
        );
        return None;
    }

    let external_ips = parse_ips(
        "spec.externalIPs",
        spec.external_ips.as_deref().unwrap_or_default(),
        report,
    )?;

    let mut load_balancer_ips = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default();
        for (i, point) in ingress.iter().enumerate() {
            let Some(ip) = point.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue; // hostname-only ingress: nothing to capture
            };
            if point.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            load_balancer_ips.push(parse_ip(&field, ip, report)?);
        }
    }

    // kube-proxy reads the spec field only (the beta annotation is for cloud providers) and
    // ignores entries it cannot parse; a range with host bits set is taken as its network.
    let mut load_balancer_source_ranges = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ranges = spec
            .load_balancer_source_ranges
            .as_deref()
            .unwrap_or_default();
        for (i, raw) in ranges.iter().enumerate() {
            match raw.trim().parse::<ipnet::IpNet>() {
                Ok(net) => load_balancer_source_ranges.push(net.trunc()),
                Err(_) => report.push(
                    Problem::BadValue {
                        field: format!("spec.loadBalancerSourceRanges[{i}]"),
                        value: raw.clone(),
                        expected: "a CIDR such as 203.0.113.0/24",
                    },
                    Skipped::SourceRange(i),
                ),
            }
        }
    }

    let affinity_timeout_secs = match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&t) => Some(t),
                    _ => {
                        report.push(
                            Problem::BadValue {
                                field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                                value: t.to_string(),
                                expected: "1 to 86400 seconds",
                            },
                            Skipped::Service,
                        );
                        return None;
                    }
                },
            }
        }
        Some(other) => {
            report.push(
                Problem::BadValue {
                    field: "spec.sessionAffinity".into(),
                    value: other.into(),
                    expected: "None or ClientIP",
                },
                Skipped::Service,
            );
            return None;
        }
    };

    let externally_accessible = service_type != ServiceType::ClusterIp || !external_ips.is_empty();
    let external_traffic_policy = match traffic_policy(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
        report,
    )? {
        TrafficPolicy::Local if externally_accessible => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let internal_traffic_policy = traffic_policy(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        report,
    )?;

    let health_check_node_port = if service_type == ServiceType::LoadBalancer
        && external_traffic_policy == TrafficPolicy::Local
    {
        match spec.health_check_node_port {
            None | Some(0) => {
                tracing::warn!(
                    service = %format!("{namespace}/{name}"),
                    "LoadBalancer with externalTrafficPolicy Local has no healthCheckNodePort"
                );
                None
            }
            Some(p) => Some(port_number(
                "spec.healthCheckNodePort",
                p.into(),
                report,
                Skipped::Service,
            )?),
        }
    } else {
        None
    };

    let forwarding = forwarding(svc, report)?;

    // Port names must be unique (the empty one included) for endpoints to be matched.
    let mut names = HashSet::new();
    for port in spec.ports.as_deref().unwrap_or_default() {
        let port_name = port.name.clone().unwrap_or_default();
        if !names.insert(port_name.clone()) {
            report.push(Problem::DuplicatePortName(port_name), Skipped::Service);
            return None;
        }
    }
    let with_node_ports = service_type != ServiceType::ClusterIp;
    let ports = spec
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, port)| reduce_port(i, port, with_node_ports, report))
        .collect();

    Some(Service {
        name: ServiceName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        affinity_timeout_secs,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        load_balancer_source_ranges,
        forwarding,
    })
}

/// One Service port without endpoints, or `None` (reported) when it is skipped.
fn reduce_port(
    index: usize,
    port: &core::ServicePort,
    with_node_ports: bool,
    report: &mut Report<'_>,
) -> Option<ServicePort> {
    let name = port.name.clone().unwrap_or_default();
    let skipped = || Skipped::ServicePort(name.clone());
    let protocol = protocol(
        &format!("spec.ports[{index}].protocol"),
        port.protocol.as_deref(),
        report,
        skipped(),
    )?;
    let number = port_number(
        &format!("spec.ports[{index}].port"),
        port.port.into(),
        report,
        skipped(),
    )?;
    let node_port = match port.node_port {
        Some(p) if with_node_ports && p != 0 => Some(port_number(
            &format!("spec.ports[{index}].nodePort"),
            p.into(),
            report,
            skipped(),
        )?),
        _ => None,
    };
    Some(ServicePort {
        name,
        protocol,
        port: number,
        node_port,
        endpoints: Vec::new(),
    })
}

/// The forwarding mode the Service's annotation asks for.
fn forwarding(svc: &core::Service, report: &mut Report<'_>) -> Option<Forwarding> {
    let value = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_FORWARDING));
    match value.map(|v| v.trim()) {
        None | Some("") | Some("nat") => Some(Forwarding::Nat),
        Some("gre") => Some(Forwarding::Gre),
        Some("ipip") => Some(Forwarding::Ipip),
        Some("dsr") => Some(Forwarding::DsrIpip),
        Some(other) => {
            report.push(
                Problem::BadValue {
                    field: format!("metadata.annotations[{ANNOTATION_FORWARDING}]"),
                    value: other.into(),
                    expected: "nat, gre, ipip or dsr",
                },
                Skipped::Service,
            );
            None
        }
    }
}

fn traffic_policy(
    field: &str,
    value: Option<&str>,
    report: &mut Report<'_>,
) -> Option<TrafficPolicy> {
    match value {
        None | Some("") | Some("Cluster") => Some(TrafficPolicy::Cluster),
        Some("Local") => Some(TrafficPolicy::Local),
        Some(other) => {
            report.push(
                Problem::BadValue {
                    field: field.into(),
                    value: other.into(),
                    expected: "Cluster or Local",
                },
                Skipped::Service,
            );
            None
        }
    }
}

fn protocol(
    field: &str,
    value: Option<&str>,
    report: &mut Report<'_>,
    skipped: Skipped,
) -> Option<Protocol> {
    match value {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(other) => {
            report.push(
                Problem::UnknownProtocol {
                    field: field.into(),
                    value: other.into(),
                },
                skipped,
            );
            None
        }
    }
}

fn port_number(field: &str, value: i64, report: &mut Report<'_>, skipped: Skipped) -> Option<u16> {
    match u16::try_from(value) {
        Ok(0) => {
            report.push(
                Problem::ZeroPort {
                    field: field.into(),
                },
                skipped,
            );
            None
        }
        Ok(p) => Some(p),
        Err(_) => {
            report.push(
                Problem::PortOutOfRange {
                    field: field.into(),
                    value,
                },
                skipped,
            );
            None
        }
    }
}

fn parse_ip(field: &str, value: &str, report: &mut Report<'_>) -> Option<IpAddr> {
    match value.trim().parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            report.push(
                Problem::BadIp {
                    field: field.into(),
                    value: value.into(),
                },
                Skipped::Service,
            );
            None
        }
    }
}

/// Parses every address of a list (reporting the first bad one, which skips the Service),
/// dropping repeats.
fn parse_ips(field: &str, values: &[String], report: &mut Report<'_>) -> Option<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let ip = parse_ip(&format!("{field}[{i}]"), value, report)?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Some(ips)
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// An EndpointSlice endpoint, read once whatever the number of ports.
struct SliceEndpoint {
    addr: IpAddr,
    is_local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
    hints: TopologyHints,
}

/// Fills in the endpoints of `service`'s ports from its slices.
fn attach_endpoints(
    service: &mut Service,
    slices: &[(&str, &discovery::EndpointSlice)],
    here: &Here<'_>,
    errors: &mut Vec<ReduceError>,
) {
    let families: BTreeSet<bool> = service.cluster_ips.iter().map(IpAddr::is_ipv4).collect();
    // Per Service port: (address, port) → endpoint.
    let mut merged: Vec<BTreeMap<(IpAddr, u16), Endpoint>> =
        vec![BTreeMap::new(); service.ports.len()];
    for (slice_name, slice) in slices {
        let mut report = Report {
            kind: "EndpointSlice",
            namespace: &service.name.namespace,
            name: slice_name,
            errors,
        };
        let ipv4 = match slice.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            "FQDN" => {
                tracing::debug!(slice = %format!("{}/{slice_name}", service.name.namespace), "FQDN EndpointSlice; ignored");
                continue;
            }
            other => {
                report.push(
                    Problem::BadValue {
                        field: "addressType".into(),
                        value: other.into(),
                        expected: "IPv4, IPv6 or FQDN",
                    },
                    Skipped::EndpointSlice,
                );
                continue;
            }
        };
        if !families.contains(&ipv4) {
            tracing::debug!(
                slice = %format!("{}/{slice_name}", service.name.namespace),
                "EndpointSlice of an IP family the Service has no cluster IP in; ignored"
            );
            continue;
        }
        let endpoints = slice_endpoints(slice, ipv4, here, &mut report);
        for (i, port) in slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let port_name = port.name.clone().unwrap_or_default();
            let skipped = || Skipped::SlicePort(port_name.clone());
            let Some(number) = port.port else {
                continue; // "all ports": not implemented by kube-proxy either
            };
            let Some(number) = port_number(
                &format!("ports[{i}].port"),
                number.into(),
                &mut report,
                skipped(),
            ) else {
                continue;
            };
            let Some(protocol) = protocol(
                &format!("ports[{i}].protocol"),
                port.protocol.as_deref(),
                &mut report,
                skipped(),
            ) else {
                continue;
            };
            let Some(index) = service
                .ports
                .iter()
                .position(|p| p.name == port_name && p.protocol == protocol)
            else {
                tracing::debug!(
                    slice = %format!("{}/{slice_name}", service.name.namespace),
                    port = %port_name,
                    "EndpointSlice port matches no Service port; ignored"
                );
                continue;
            };
            let Some(set) = merged.get_mut(index) else {
                continue;
            };
            for e in &endpoints {
                let candidate = Endpoint {
                    addr: e.addr,
                    port: number,
                    is_local: e.is_local,
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    hints: e.hints,
                };
                match set.get(&(e.addr, number)) {
                    Some(kept) if rank(kept) >= rank(&candidate) => {}
                    _ => {
                        set.insert((e.addr, number), candidate);
                    }
                }
            }
        }
    }
    for (port, set) in service.ports.iter_mut().zip(merged) {
        port.endpoints = set.into_values().collect();
    }
}

/// Which of two copies of an endpoint to keep: the larger.
fn rank(e: &Endpoint) -> (bool, bool, bool, bool) {
    (e.ready, e.serving, !e.terminating, e.is_local)
}

/// The usable endpoints of a slice of family `ipv4` (bad ones reported and left out).
fn slice_endpoints(
    slice: &discovery::EndpointSlice,
    ipv4: bool,
    here: &Here<'_>,
    report: &mut Report<'_>,
) -> Vec<SliceEndpoint> {
    let mut out = Vec::with_capacity(slice.endpoints.len());
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        let Some(raw) = endpoint.addresses.first() else {
            report.push(Problem::NoAddress { field }, Skipped::Endpoint(i));
            continue;
        };
        let Ok(addr) = raw.trim().parse::<IpAddr>() else {
            report.push(
                Problem::BadIp {
                    field: format!("{field}[0]"),
                    value: raw.clone(),
                },
                Skipped::Endpoint(i),
            );
            continue;
        };
        if addr.is_ipv4() != ipv4 {
            report.push(
                Problem::WrongFamily {
                    field: format!("{field}[0]"),
                    value: addr,
                    expected: if ipv4 { "IPv4" } else { "IPv6" },
                },
                Skipped::Endpoint(i),
            );
            continue;
        }
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let hints = endpoint.hints.as_ref();
        let node_name = here.node_name;
        out.push(SliceEndpoint {
            addr,
            hints: TopologyHints {
                // An empty list is no hint at all, as kube-proxy counts them.
                zone: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .filter(|zones| !zones.is_empty())
                    .map(|zones| {
                        here.zone
                            .is_some_and(|zone| zones.iter().any(|z| z.name == zone))
                    }),
                node: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .filter(|nodes| !nodes.is_empty())
                    .map(|nodes| {
                        !node_name.is_empty() && nodes.iter().any(|n| n.name == node_name)
                    }),
            },
            is_local: !node_name.is_empty() && endpoint.node_name.as_deref() == Some(node_name),
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        });
    }
    out
}

/// The InternalIP and ExternalIP addresses of the Node `node_name`, in the order its status
/// lists them, without repeats (none if the Node is unknown; bad ones are logged and left
/// out).
#[allow(dead_code)] // for NodePort addresses; not wired into the agent yet
pub fn node_addresses(store: &ObjectStore, node_name: &str) -> Vec<IpAddr> {
    let Some(node) = store.nodes.get(&(String::new(), node_name.to_string())) else {
        return Vec::new();
    };
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let mut out = Vec::new();
    for a in addresses {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match a.address.trim().parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                node = node_name,
                address = %a.address,
                "Node {}: status.addresses: not an IP address; ignored",
                node_name
            ),
        }
    }
    out
}

/// The pod CIDRs of the Node `node_name`: `spec.podCIDRs`, or `spec.podCIDR` when the list
/// is empty (none if the Node is unknown; bad ones are logged and left out).
pub fn pod_cidrs(store: &ObjectStore, node_name: &str) -> Vec<ipnet::IpNet> {
    let Some(spec) = store
        .nodes
        .get(&(String::new(), node_name.to_string()))
        .and_then(|n| n.spec.as_ref())
    else {
        return Vec::new();
    };
    let raw: Vec<&String> = match &spec.pod_cidrs {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => spec.pod_cidr.iter().collect(),
    };
    let mut out = Vec::new();
    for cidr in raw {
        match cidr.trim().parse::<ipnet::IpNet>() {
            Ok(net) if !out.contains(&net) => out.push(net),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                node = node_name,
                cidr = %cidr,
                "Node {}: spec.podCIDRs: not a CIDR; ignored",
                node_name
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests;
