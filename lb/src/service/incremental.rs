//! [`ServiceCompiler`]: the Service table kept current one Service at a time.
//!
//! A node agent sees one EndpointSlice change at a time, at tens of thousands of Services.
//! Compiling everything again for each would cost hundreds of milliseconds; this compiles only
//! the Service that changed and patches its frontends into the table, with the same result as
//! [`ServiceTable::compile`] over the whole set (which is built on it).
//!
//! Contested frontends are the subtle part. A full compile takes Services in name order and
//! lets the first claim stand, so the owner of a frontend is the claimant with the least
//! name. Here every claim is remembered, per frontend and by claimant name: when the owner
//! goes, the next claimant takes over, as a full compile without the owner would have had it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::backends::BackendSets;
use super::cluster_ips::ClusterIpClaims;
use super::compile::Compiler;
use super::{
    CompileOptions, Frontend, FrontendEntry, Service, ServiceError, ServiceName, ServiceTable,
};
use crate::maglev::TableSize;

/// Compiles Services one at a time into a [`ServiceTable`] that stays equal to a full
/// [`ServiceTable::compile`] of the Services given so far.
pub struct ServiceCompiler {
    options: CompileOptions,
    /// The problem with [`CompileOptions::table_size`], if any.
    option_error: Option<ServiceError>,
    sets: BackendSets,
    services: BTreeMap<ServiceName, Compiled>,
    /// Every claim on every frontend, by claimant.
    claims: HashMap<Frontend, BTreeMap<ServiceName, Claim>>,
    /// Every claim on every health-check NodePort: claimant → local ready endpoints.
    health_claims: HashMap<u16, BTreeMap<ServiceName, usize>>,
    /// Frontends and health-check ports claimed more than once (each extra claim is a
    /// problem to report).
    contested: BTreeSet<Frontend>,
    contested_health: BTreeSet<u16>,
    /// Services with problems of their own.
    with_errors: BTreeSet<ServiceName>,
    /// Which Services claim each cluster IP.
    cluster_ip_claims: ClusterIpClaims,
    table: ServiceTable,
}

/// What one Service compiled to.
struct Compiled {
    service: Arc<Service>,
    /// The distinct frontends it claims.
    frontends: Vec<Frontend>,
    /// Its health-check NodePort.
    health_port: Option<u16>,
    /// Its distinct cluster IPs, if it has a port (see [`ServiceTable::cluster_ips`]).
    cluster_ips: Vec<IpAddr>,
    /// Its own problems (contested frontends aside).
    errors: Vec<ServiceError>,
}

/// One Service's claim on a frontend: the entry it would install (from its first port to
/// claim it) and how many times its ports claim it.
struct Claim {
    entry: FrontendEntry,
    count: usize,
}

impl ServiceCompiler {
    /// An empty compiler; a bad [`CompileOptions::table_size`] is reported by
    /// [`ServiceCompiler::errors`] and tables are sized automatically instead.
    pub fn new(options: CompileOptions) -> Self {
        let (size, option_error) = match options.table_size.map(TableSize::new) {
            None => (None, None),
            Some(Ok(size)) => (Some(size), None),
            Some(Err(error)) => (None, Some(ServiceError::TableSize(error))),
        };
        ServiceCompiler {
            options,
            option_error,
            sets: BackendSets::new(size),
            services: BTreeMap::new(),
            claims: HashMap::new(),
            health_claims: HashMap::new(),
            contested: BTreeSet::new(),
            contested_health: BTreeSet::new(),
            with_errors: BTreeSet::new(),
            cluster_ip_claims: ClusterIpClaims::default(),
            table: ServiceTable::default(),
        }
    }

    /// The table as of the Services given so far.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// The table, giving up the compiler.
    pub fn into_table(self) -> ServiceTable {
        self.table
    }

    /// Number of Services held.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True if no Service is held.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The Service named `name`, as last given.
    pub fn get(&self, name: &ServiceName) -> Option<&Arc<Service>> {
        self.services.get(name).map(|c| &c.service)
    }

    /// The Services held, in name order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values().map(|c| &c.service)
    }

    /// Adds `service`, or replaces the Service of the same name. Returns false, doing nothing,
    /// when the same Service is already held.
    pub fn upsert(&mut self, service: Arc<Service>) -> bool {
        if let Some(held) = self.services.get(&service.name) {
            if held.service == service {
                return false;
            }
        }
        self.remove(&service.name.clone());
        let mut compiler = Compiler {
            options: &self.options,
            sets: &mut self.sets,
            entries: Vec::new(),
            health_check: None,
            errors: Vec::new(),
        };
        compiler.service(&service);
        let (entries, health_check, errors) =
            (compiler.entries, compiler.health_check, compiler.errors);
        let name = service.name.clone();
        let mut frontends = Vec::with_capacity(entries.len());
        for (frontend, entry) in entries {
            let claimants = self.claims.entry(frontend).or_default();
            match claimants.get_mut(&name) {
                Some(claim) => claim.count += 1,
                None => {
                    claimants.insert(name.clone(), Claim { entry, count: 1 });
                    frontends.push(frontend);
                }
            }
        }
        for &frontend in &frontends {
            self.settle(frontend);
        }
        let health_port = health_check.map(|(port, count)| {
            self.health_claims
                .entry(port)
                .or_default()
                .insert(name.clone(), count);
            self.settle_health(port);
            port
        });
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        if !service.ports.is_empty() {
            for &addr in &service.cluster_ips {
                if !cluster_ips.contains(&addr) {
                    cluster_ips.push(addr);
                }
            }
        }
        self.cluster_ip_claims
            .claim(&cluster_ips, &mut self.table.cluster_ips);
        if !errors.is_empty() {
            self.with_errors.insert(name.clone());
        }
        self.services.insert(
            name,
            Compiled {
                service,
                frontends,
                health_port,
                cluster_ips,
                errors,
            },
        );
        true
    }

    /// Removes the Service named `name`; false if none was held.
    pub fn remove(&mut self, name: &ServiceName) -> bool {
        let Some(old) = self.services.remove(name) else {
            return false;
        };
        for frontend in old.frontends {
            if let Some(claimants) = self.claims.get_mut(&frontend) {
                claimants.remove(name);
            }
            self.settle(frontend);
        }
        if let Some(port) = old.health_port {
            if let Some(claimants) = self.health_claims.get_mut(&port) {
                claimants.remove(name);
            }
            self.settle_health(port);
        }
        self.cluster_ip_claims
            .release(&old.cluster_ips, &mut self.table.cluster_ips);
        self.with_errors.remove(name);
        true
    }

    /// Puts the owner of `frontend` (its claimant with the least name) in the table, or takes
    /// the frontend out when nobody claims it.
    fn settle(&mut self, frontend: Frontend) {
        let owner = self
            .claims
            .get(&frontend)
            .and_then(|claimants| claimants.values().next().map(|c| (c, claimants)));
        match owner {
            Some((claim, claimants)) => {
                let claims: usize = claimants.values().map(|c| c.count).sum();
                if claims > 1 {
                    self.contested.insert(frontend);
                } else {
                    self.contested.remove(&frontend);
                }
                self.table.frontends.insert(frontend, claim.entry.clone());
            }
            None => {
                self.claims.remove(&frontend);
                self.contested.remove(&frontend);
                self.table.frontends.remove(&frontend);
            }
        }
    }

    /// As [`ServiceCompiler::settle`], for a health-check NodePort.
    fn settle_health(&mut self, port: u16) {
        let owner = self.health_claims.get(&port).and_then(|claimants| {
            claimants
                .iter()
                .next()
                .map(|(name, &count)| (name, count, claimants.len()))
        });
        match owner {
            Some((name, count, claimants)) => {
                if claimants > 1 {
                    self.contested_health.insert(port);
                } else {
                    self.contested_health.remove(&port);
                }
                let name = match self.table.health_checks.get(&port) {
                    Some((held, _)) if **held == *name => Arc::clone(held),
                    _ => Arc::new(name.clone()),
                };
                self.table.health_checks.insert(port, (name, count));
            }
            None => {
                self.health_claims.remove(&port);
                self.contested_health.remove(&port);
                self.table.health_checks.remove(&port);
            }
        }
    }

    /// Every problem with the Services held, as a full compile would report them (in another
    /// order): each Service's own, then one per losing claim on a contested frontend or
    /// health-check port. Costs the number of problems, not of Services.
    pub fn errors(&self) -> Vec<ServiceError> {
        let mut errors: Vec<ServiceError> = self.option_error.iter().cloned().collect();
        for name in &self.with_errors {
            if let Some(compiled) = self.services.get(name) {
                errors.extend(compiled.errors.iter().cloned());
            }
        }
        for frontend in &self.contested {
            let Some(claimants) = self.claims.get(frontend) else {
                continue;
            };
            let Some(owner) = claimants.keys().next() else {
                continue;
            };
            for (name, claim) in claimants {
                // The owner's first claim is the one that stands.
                let losing = claim.count - usize::from(name == owner);
                for _ in 0..losing {
                    errors.push(ServiceError::Overlap {
                        service: name.clone(),
                        frontend: *frontend,
                        owner: owner.clone(),
                    });
                }
            }
        }
        for port in &self.contested_health {
            let Some(claimants) = self.health_claims.get(port) else {
                continue;
            };
            let mut names = claimants.keys();
            let Some(owner) = names.next() else {
                continue;
            };
            for name in names {
                errors.push(ServiceError::HealthCheckOverlap {
                    service: name.clone(),
                    port: *port,
                    owner: owner.clone(),
                });
            }
        }
        errors
    }
}
