//! [`ServiceTable::compile`]: Services in, frontends and their targets out.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use super::backends::BackendSets;
use super::endpoints::{endpoints_of_family, Family, Usable};
use super::incremental::ServiceCompiler;
use super::{
    BackendAddr, CompileOptions, Frontend, FrontendEntry, FrontendKind, Service, ServiceError,
    ServiceName, ServicePort, ServiceTable, Target, TrafficPolicy,
};
use crate::maglev::MaglevError;

impl ServiceTable {
    /// Compiles `services` into frontends, following kube-proxy's rules (see the [module
    /// documentation](super)). Returns the table and the problems found; each problem skipped
    /// only the port or frontend it concerns.
    ///
    /// The result depends only on the set of Services, not on their order in `services`.
    pub fn compile(
        services: &[Service],
        options: &CompileOptions,
    ) -> (ServiceTable, Vec<ServiceError>) {
        let mut errors = Vec::new();
        let distinct = distinct_by_name(services, &mut errors);
        let mut compiler = ServiceCompiler::new(options.clone());
        for service in distinct {
            compiler.upsert(Arc::new(service.clone()));
        }
        errors.extend(compiler.errors());
        (compiler.into_table(), errors)
    }

    /// Bytes the table takes on the heap: its maps, and every Service name, port name and
    /// backend set counted once however many entries share it. An estimate from `size_of`
    /// (hash maps are counted at one control byte per entry of capacity), good for capacity
    /// planning and for `show` output, not an allocator's exact figure.
    pub fn approx_heap_bytes(&self) -> usize {
        let arc_counts = 2 * size_of::<usize>();
        let mut bytes = self.frontends.capacity()
            * (size_of::<Frontend>() + size_of::<FrontendEntry>() + 1)
            + self.health_checks.capacity()
                * (size_of::<u16>() + size_of::<(Arc<ServiceName>, usize)>() + 1)
            + self.cluster_ips.approx_heap_bytes();
        let mut names = HashSet::new();
        let mut port_names = HashSet::new();
        let mut sets = HashSet::new();
        let mut serving = HashSet::new();
        for entry in self.frontends.values() {
            if serving.insert(Arc::as_ptr(&entry.serving)) {
                bytes += arc_counts + size_of_val(&*entry.serving);
            }
            if names.insert(Arc::as_ptr(&entry.service)) {
                bytes += arc_counts
                    + size_of::<ServiceName>()
                    + entry.service.namespace.capacity()
                    + entry.service.name.capacity();
            }
            if port_names.insert(Arc::as_ptr(&entry.port_name)) {
                bytes += arc_counts + entry.port_name.len();
            }
            for target in [&entry.internal, &entry.external] {
                if let Target::Backends(set) = target {
                    if sets.insert(Arc::as_ptr(set)) {
                        bytes += set.approx_heap_bytes();
                    }
                }
            }
        }
        bytes
    }
}

/// `services` in name order, one per name. Identical copies of a Service collapse into one;
/// different Services under one name are all dropped and reported, since keeping either would
/// depend on input order.
fn distinct_by_name<'a>(
    services: &'a [Service],
    errors: &mut Vec<ServiceError>,
) -> Vec<&'a Service> {
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut distinct = Vec::with_capacity(sorted.len());
    for copies in sorted.chunk_by(|a, b| a.name == b.name) {
        if let [first, rest @ ..] = copies {
            if rest.iter().all(|other| other == first) {
                distinct.push(*first);
            } else {
                errors.push(ServiceError::DuplicateService {
                    service: first.name.clone(),
                });
            }
        }
    }
    distinct
}

/// One Service being compiled: its frontends (in claim order; a frontend claimed twice by
/// the Service's own ports appears twice), its health-check NodePort and its problems.
/// Whether it keeps a contested frontend is for [`ServiceCompiler`] to decide.
pub(super) struct Compiler<'a> {
    pub(super) options: &'a CompileOptions,
    pub(super) sets: &'a mut BackendSets,
    pub(super) entries: Vec<(Frontend, FrontendEntry)>,
    pub(super) health_check: Option<(u16, usize)>,
    pub(super) errors: Vec<ServiceError>,
}

impl Compiler<'_> {
    pub(super) fn service(&mut self, service: &Service) {
        let name = Arc::new(service.name.clone());
        let families: Vec<Family> = Family::BOTH
            .into_iter()
            .filter(|family| service.cluster_ips.iter().any(|ip| family.contains(ip)))
            .collect();
        for &addr in service
            .external_ips
            .iter()
            .chain(&service.load_balancer_ips)
        {
            if !families.contains(&Family::of(&addr)) {
                self.errors.push(ServiceError::FamilyMismatch {
                    service: service.name.clone(),
                    addr,
                });
            }
        }
        self.health_check(service, &families);
        for port in &service.ports {
            self.port(service, &name, port, &families);
        }
    }

    /// Registers the Service's health-check NodePort, if it has one (externalTrafficPolicy
    /// Local only), with its count of local ready endpoints: kube-proxy's health-check server
    /// answers 200 when that count is above zero, so load balancers send traffic only to nodes
    /// that will not drop it. Terminating endpoints do not count, so a node whose pods are all
    /// going away fails the check even while they still serve.
    fn health_check(&mut self, service: &Service, families: &[Family]) {
        if service.external_traffic_policy != TrafficPolicy::Local {
            return;
        }
        let Some(port) = service.health_check_node_port.filter(|&port| port != 0) else {
            return;
        };
        let count = families
            .iter()
            .map(|family| {
                service
                    .ports
                    .iter()
                    .flat_map(|port| &port.endpoints)
                    .filter(|e| e.is_local && e.ready && family.contains(&e.addr))
                    .map(|e| e.addr)
                    .collect::<HashSet<IpAddr>>()
                    .len()
            })
            .max()
            .unwrap_or(0);
        self.health_check = Some((port, count));
    }

    fn port(
        &mut self,
        service: &Service,
        name: &Arc<ServiceName>,
        port: &ServicePort,
        families: &[Family],
    ) {
        if port.port == 0 {
            self.errors.push(ServiceError::ZeroPort {
                service: service.name.clone(),
                port_name: port.name.clone(),
            });
            return;
        }
        let node_port = match port.node_port {
            Some(0) => {
                self.errors.push(ServiceError::ZeroNodePort {
                    service: service.name.clone(),
                    port_name: port.name.clone(),
                });
                None
            }
            node_port => node_port,
        };
        let frontends = PortFrontends {
            service,
            name: Arc::clone(name),
            port_name: Arc::from(port.name.as_str()),
            port,
            node_port,
        };
        for &family in families {
            match frontends.entries(family, &self.options.node_port_addresses, self.sets) {
                Ok(entries) => {
                    self.entries.extend(entries);
                }
                Err(error) => self.errors.push(ServiceError::Backends {
                    service: service.name.clone(),
                    port_name: port.name.clone(),
                    error,
                }),
            }
        }
    }
}

/// One Service port, about to become frontends.
struct PortFrontends<'a> {
    service: &'a Service,
    name: Arc<ServiceName>,
    port_name: Arc<str>,
    port: &'a ServicePort,
    /// The NodePort, if it has a usable one.
    node_port: Option<u16>,
}

impl PortFrontends<'_> {
    /// The port's frontends in `family`, with their targets.
    fn entries(
        &self,
        family: Family,
        node_port_addresses: &[IpAddr],
        sets: &mut BackendSets,
    ) -> Result<Vec<(Frontend, FrontendEntry)>, MaglevError> {
        // The addresses of `family`, each once (a list may repeat one), in list order.
        let in_family = |addrs: &[IpAddr]| -> Vec<IpAddr> {
            let mut kept: Vec<IpAddr> = Vec::with_capacity(addrs.len());
            for &addr in addrs {
                if family.contains(&addr) && !kept.contains(&addr) {
                    kept.push(addr);
                }
            }
            kept
        };
        let (service, port, proto) = (self.service, self.port.port, self.port.protocol.number());
        // The families are those of the cluster IPs, so there is one.
        let Some(&cluster_ip) = in_family(&service.cluster_ips).first() else {
            return Ok(Vec::new());
        };
        let endpoints = endpoints_of_family(&self.port.endpoints, family);
        let usable = Usable::categorize(&endpoints);
        let shared = PortShared {
            // Affinity is per Service port: its frontends share the cluster IP's key.
            affinity_key: Frontend {
                addr: cluster_ip,
                proto,
                port,
            },
            // Sorted by address and port, as `endpoints` is.
            serving: endpoints
                .iter()
                .filter(|e| e.ready || e.serving)
                .map(|e| BackendAddr {
                    addr: e.addr,
                    port: e.port,
                })
                .collect(),
        };
        let mut chooser = Chooser {
            usable: &usable,
            sets,
            cluster: None,
            local: None,
        };
        let mut entries = Vec::new();

        // Cluster IPs: internalTrafficPolicy for every sender; senders outside the cluster are
        // masqueraded.
        let target = chooser.policy(service.internal_traffic_policy)?;
        let masquerade = Masquerade {
            internal: false,
            external: true,
        };
        for addr in in_family(&service.cluster_ips) {
            let frontend = Frontend { addr, proto, port };
            let entry = self.entry(
                FrontendKind::ClusterIp,
                &target,
                &target,
                masquerade,
                None,
                &shared,
            );
            entries.push((frontend, entry));
        }

        // NodePorts, external IPs, LB IPs: externalTrafficPolicy from outside the cluster, all
        // cluster endpoints from inside (the short-circuit).
        let node_addrs = match self.node_port {
            None => Vec::new(),
            Some(_) if node_port_addresses.is_empty() => vec![family.unspecified()],
            Some(_) => in_family(node_port_addresses),
        };
        let outside: Vec<(Frontend, FrontendKind)> = in_family(&service.external_ips)
            .into_iter()
            .map(|addr| (addr, port, FrontendKind::ExternalIp))
            .chain(
                in_family(&service.load_balancer_ips)
                    .into_iter()
                    .map(|addr| (addr, port, FrontendKind::LoadBalancer)),
            )
            .chain(self.node_port.into_iter().flat_map(|node_port| {
                node_addrs
                    .iter()
                    .map(move |&addr| (addr, node_port, FrontendKind::NodePort))
            }))
            .map(|(addr, port, kind)| (Frontend { addr, proto, port }, kind))
            .collect();
        if outside.is_empty() {
            return Ok(entries);
        }
        let internal = chooser.cluster()?;
        let external = chooser.policy(service.external_traffic_policy)?;
        // Of this family only: the other family's ranges do not restrict it.
        let source_ranges: Option<Arc<[IpNet]>> = {
            let ranges: Vec<IpNet> = service
                .load_balancer_source_ranges
                .iter()
                .filter(|net| family.contains(&net.addr()))
                .copied()
                .collect();
            (!ranges.is_empty()).then(|| ranges.into())
        };
        let cluster_policy = service.external_traffic_policy == TrafficPolicy::Cluster;
        let masquerade = Masquerade {
            internal: cluster_policy,
            external: cluster_policy,
        };
        for (frontend, kind) in outside {
            let ranges = (kind == FrontendKind::LoadBalancer)
                .then_some(source_ranges.as_ref())
                .flatten();
            let entry = self.entry(kind, &internal, &external, masquerade, ranges, &shared);
            entries.push((frontend, entry));
        }
        Ok(entries)
    }

    fn entry(
        &self,
        kind: FrontendKind,
        internal: &Target,
        external: &Target,
        masquerade: Masquerade,
        source_ranges: Option<&Arc<[IpNet]>>,
        shared: &PortShared,
    ) -> FrontendEntry {
        FrontendEntry {
            service: Arc::clone(&self.name),
            port_name: Arc::clone(&self.port_name),
            kind,
            internal: internal.clone(),
            external: external.clone(),
            masquerade_external: masquerade.external,
            masquerade_internal: masquerade.internal,
            affinity_timeout_secs: self.service.affinity_timeout_secs,
            affinity_key: shared.affinity_key,
            forwarding: self.service.forwarding,
            serving: Arc::clone(&shared.serving),
            source_ranges: source_ranges.cloned(),
        }
    }
}

/// What every frontend of one Service port in one family shares.
struct PortShared {
    /// See [`FrontendEntry::affinity_key`].
    affinity_key: Frontend,
    /// See [`FrontendEntry::serving`].
    serving: Arc<[BackendAddr]>,
}

/// Which classes of sender get their source rewritten to the node's address.
#[derive(Clone, Copy)]
struct Masquerade {
    internal: bool,
    external: bool,
}

/// Turns one port's usable endpoints (in one family) into targets, building each backend set
/// once and only if some frontend uses it.
struct Chooser<'a> {
    usable: &'a Usable,
    sets: &'a mut BackendSets,
    cluster: Option<Target>,
    local: Option<Target>,
}

impl Chooser<'_> {
    /// The target for traffic under `policy`.
    fn policy(&mut self, policy: TrafficPolicy) -> Result<Target, MaglevError> {
        match policy {
            TrafficPolicy::Cluster => self.cluster(),
            TrafficPolicy::Local => self.local(),
        }
    }

    /// All usable endpoints; reject when there are none anywhere.
    fn cluster(&mut self) -> Result<Target, MaglevError> {
        if !self.usable.has_any() {
            return Ok(Target::Reject);
        }
        if let Some(target) = &self.cluster {
            return Ok(target.clone());
        }
        let target = Target::Backends(self.sets.get(&self.usable.cluster)?);
        self.cluster = Some(target.clone());
        Ok(target)
    }

    /// The usable endpoints on this node; drop when there are none here but some elsewhere,
    /// reject when there are none anywhere.
    fn local(&mut self) -> Result<Target, MaglevError> {
        if !self.usable.has_any() {
            return Ok(Target::Reject);
        }
        if self.usable.local.is_empty() {
            return Ok(Target::Drop);
        }
        if let Some(target) = &self.local {
            return Ok(target.clone());
        }
        let target = Target::Backends(self.sets.get(&self.usable.local)?);
        self.local = Some(target.clone());
        Ok(target)
    }
}

impl Family {
    /// The unspecified address of the family, the key of NodePorts open on every address.
    fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}
