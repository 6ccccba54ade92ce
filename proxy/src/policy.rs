//! `switchyard policy explain`: the allow/deny truth table the compiled ACLs give for a
//! directory of manifests, as this node's dataplane would enforce it if it hosted every pod.
//!
//! The manifests are reduced as the agent reduces them ([`crate::agent::reduce_policy`], every
//! pod taken as local, no node addresses), compiled ([`switchyard_policy::compile`]) and turned
//! into the dataplane's ACL tables ([`crate::agent::policy_tables`]); each cell is then the
//! verdict of the dataplane classifiers for the first packet from the row's pod to the column's
//! pod (source pod's egress ACL, then destination pod's ingress ACL). The text is the layout of
//! [`switchyard_policy::explain`] (`TCP/80` heading, a `-` header row of `namespace/pod`
//! columns, one row per source pod, `.` allowed, `X` denied, tab-separated), followed by the
//! policy errors and the objects that were skipped.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use switchyard_dataplane::policy::PolicyTables;
use switchyard_policy::reference::{flow_addresses, Endpoint};
use switchyard_policy::{Cluster, PodKey, PortRef, TruthTable};

use crate::agent::{manifests, policy_tables, reduce_policy};
use crate::cli::{ExplainArgs, PolicyArgs, PolicyCommand};

/// Runs `switchyard policy ...`.
pub fn run(args: &PolicyArgs) -> anyhow::Result<()> {
    match &args.command {
        PolicyCommand::Explain(a) => {
            print!("{}", explain(a)?);
            Ok(())
        }
    }
}

/// The whole text `policy explain` prints.
fn explain(args: &ExplainArgs) -> anyhow::Result<String> {
    let (cluster, skipped) = load(&args.manifests)?;
    let probes = if args.ports.is_empty() {
        default_probes(&cluster)
    } else {
        args.ports.iter().map(|p| (p.protocol, p.port)).collect()
    };
    let mut out = tables_text(&cluster, &probes);
    if !skipped.is_empty() {
        out.push_str(
            "\nproblems in the manifests (each part named is left out, or matches nothing):\n",
        );
        for s in &skipped {
            let _ = writeln!(out, "{s}");
        }
    }
    Ok(out)
}

/// The manifests in `dir` as a policy cluster with every pod local, and what was skipped.
fn load(dir: &Path) -> anyhow::Result<(Cluster, Vec<String>)> {
    std::fs::read_dir(dir)
        .with_context(|| format!("--manifests {}: cannot read the directory", dir.display()))?;
    let (store, errors) = manifests::load(dir);
    let mut skipped: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let (mut cluster, errors) = reduce_policy::cluster(&store, "", &[]);
    skipped.extend(errors.iter().map(ToString::to_string));
    for pod in &mut cluster.pods {
        pod.node_local = true;
    }
    if cluster.pods.is_empty() {
        bail!(
            "--manifests {}: no pods with addresses, so no table to show",
            dir.display()
        );
    }
    Ok((cluster, skipped))
}

/// Every port the policies name (numbers, both ends of ranges, named ports resolved against
/// the pods that declare them) and 80/TCP, sorted by protocol number and port.
fn default_probes(cluster: &Cluster) -> Vec<(u8, u16)> {
    let mut probes = BTreeSet::from([(6u8, 80u16)]);
    let rules = cluster
        .policies
        .iter()
        .flat_map(|p| p.ingress.iter().flatten().chain(p.egress.iter().flatten()));
    for spec in rules.flat_map(|r| r.ports.iter().flatten()) {
        let Some(protocol) = spec.protocol.number() else {
            continue;
        };
        match &spec.port {
            Some(PortRef::Number(n)) if *n != 0 => {
                probes.insert((protocol, *n));
                if let Some(end) = spec.end_port.filter(|e| e > n) {
                    probes.insert((protocol, end));
                }
            }
            Some(PortRef::Name(name)) => {
                for np in cluster.pods.iter().flat_map(|p| &p.named_ports) {
                    if &np.name == name && np.protocol == spec.protocol {
                        probes.insert((protocol, np.port));
                    }
                }
            }
            _ => {}
        }
    }
    probes.into_iter().collect()
}

/// The tables and the policy errors, in the text layout of [`switchyard_policy::explain`],
/// with each cell decided by the dataplane's classifiers.
pub fn tables_text(cluster: &Cluster, probes: &[(u8, u16)]) -> String {
    let compiled = switchyard_policy::compile(cluster);
    let tables = policy_tables::policy_tables(&compiled);
    let mut out = String::new();
    for (i, (protocol, port)) in probes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{}/{port}", protocol_name(*protocol));
        out.push_str(&truth_table(cluster, &tables, *protocol, *port).to_string());
    }
    let errors = compiled.errors();
    if !errors.is_empty() {
        out.push_str("\nerrors (the policies stay enforced, closed side):\n");
        for e in errors {
            let _ = writeln!(out, "{e}");
        }
    }
    out
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        132 => "SCTP".to_string(),
        other => format!("proto-{other}"),
    }
}

/// Pods × pods for one protocol and port, from the dataplane tables. Pairs without a common
/// address family are denied, as in [`TruthTable`].
fn truth_table(cluster: &Cluster, tables: &PolicyTables, protocol: u8, port: u16) -> TruthTable {
    let mut pods: Vec<PodKey> = cluster.pods.iter().map(|p| p.key()).collect();
    pods.sort();
    let allowed = pods
        .iter()
        .map(|from| {
            pods.iter()
                .map(|to| {
                    let ends = (Endpoint::Pod(from.clone()), Endpoint::Pod(to.clone()));
                    flow_addresses(cluster, &ends.0, &ends.1).is_some_and(|(src, dst)| {
                        policy_tables::flow_allowed(tables, src, dst, from == to, protocol, port)
                    })
                })
                .collect()
        })
        .collect();
    TruthTable {
        protocol,
        port,
        pods,
        allowed,
    }
}

#[cfg(test)]
mod tests;
