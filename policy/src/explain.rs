//! The truth table behind `switchyard policy explain`.
//!
//! The layout is the one the Kubernetes network-policy e2e tests print and their users read:
//! a header row starting with `-` followed by one `namespace/pod` column per destination, then
//! one row per source, cells `.` (allowed) or `X` (denied), separated by tabs.

use std::fmt;

use crate::compiler::{CompiledPolicies, PolicyCompiler};
use crate::model::{Cluster, PodKey};
use crate::reference::{flow_addresses, Endpoint};

/// Pods × pods → allowed, for one protocol and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    pub protocol: u8,
    pub port: u16,
    /// Row and column labels, in order (`namespace/pod`).
    pub pods: Vec<PodKey>,
    /// `allowed[from][to]`.
    pub allowed: Vec<Vec<bool>>,
}

impl TruthTable {
    /// The table the compiled ACLs give for `cluster` when this node hosts every pod, which is
    /// what `policy explain` shows: both ends' ACLs are applied to every pair. Pairs without a
    /// common address family count as denied.
    pub fn from_acls(cluster: &Cluster, protocol: u8, port: u16) -> Self {
        let mut all_local = cluster.clone();
        for pod in &mut all_local.pods {
            pod.node_local = true;
        }
        let compiled = PolicyCompiler::from_cluster(&all_local).snapshot();
        Self::from_compiled(&all_local, &compiled, protocol, port)
    }

    /// The table `compiled` gives for the pods of `cluster`, as enforced by this node.
    pub fn from_compiled(
        cluster: &Cluster,
        compiled: &CompiledPolicies,
        protocol: u8,
        port: u16,
    ) -> Self {
        let mut pods: Vec<PodKey> = cluster.pods.iter().map(|p| p.key()).collect();
        pods.sort();
        let allowed = pods
            .iter()
            .map(|from| {
                pods.iter()
                    .map(|to| {
                        let ends = (Endpoint::Pod(from.clone()), Endpoint::Pod(to.clone()));
                        flow_addresses(cluster, &ends.0, &ends.1).is_some_and(|(src, dst)| {
                            compiled.flow_allowed(src, dst, protocol, port)
                        })
                    })
                    .collect()
            })
            .collect();
        Self {
            protocol,
            port,
            pods,
            allowed,
        }
    }
}

/// The text `switchyard policy explain` prints: for each `(protocol, port)` a heading line such
/// as `TCP/80` followed by its table, tables separated by a blank line. The compiled policies'
/// problems, if any, come last, one per line, so a skipped-but-isolating policy is visible.
pub fn explain(cluster: &Cluster, probes: &[(u8, u16)]) -> String {
    let mut out = String::new();
    for (i, (protocol, port)) in probes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let name = match protocol {
            6 => "TCP".to_string(),
            17 => "UDP".to_string(),
            132 => "SCTP".to_string(),
            other => format!("proto-{other}"),
        };
        out.push_str(&format!("{name}/{port}\n"));
        out.push_str(&TruthTable::from_acls(cluster, *protocol, *port).to_string());
    }
    let errors = PolicyCompiler::from_cluster(cluster).errors();
    if !errors.is_empty() {
        out.push_str("\nerrors (the policies stay enforced, closed side):\n");
        for e in errors {
            out.push_str(&format!("{e}\n"));
        }
    }
    out
}

impl fmt::Display for TruthTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("-")?;
        for pod in &self.pods {
            write!(f, "\t{pod}")?;
        }
        f.write_str("\n")?;
        for (pod, row) in self.pods.iter().zip(&self.allowed) {
            write!(f, "{pod}")?;
            for cell in row {
                f.write_str(if *cell { "\t." } else { "\tX" })?;
            }
            f.write_str("\n")?;
        }
        Ok(())
    }
}
