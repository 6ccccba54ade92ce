//! The agent's YAML configuration file (`switchyard agent --config FILE`) and
//! `switchyard config check FILE`.
//!
//! One key per long flag of `switchyard agent`, in camelCase, with kube-proxy's
//! `KubeProxyConfiguration` spelling where kube-proxy has the same setting (`clusterCIDR`,
//! `nodePortAddresses`, `metricsBindAddress`, `healthzBindAddress`, `minSyncPeriod`); the BGP
//! flags live under `bgp:`. `deploy/README.md` has the table. Flags given on the command line
//! win over the file, key by key (a list flag replaces the file's whole list). The ports and
//! their addresses (`--interface`, `--address`, ...) stay flags: they differ from node to node,
//! while one file is shared by every node.
//!
//! An unknown key is an error naming it, and so is a value of the wrong shape; both are one
//! line. Values are checked here as the flags are checked, so `config check` rejects what the
//! agent would refuse at start.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, ValueEnum};
use serde::Deserialize;
use serde_yaml::Value;

use crate::cli::{AgentArgs, BgpAdvertise, Cli, Command, Dataplane, ListenAddress};

/// The `apiVersion` a configuration file may declare.
pub const API_VERSION: &str = "switchyard.io/v1alpha1";
/// The `kind` a configuration file may declare.
pub const KIND: &str = "AgentConfiguration";

/// `switchyard config ...`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check an agent configuration file as `switchyard agent --config FILE` would read it:
    /// unknown keys and bad values are reported (one line, exit status 1).
    Check {
        /// The YAML file.
        file: PathBuf,
    },
}

/// The file's contents. Every key is optional; what is missing keeps its flag's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    api_version: Option<String>,
    kind: Option<String>,
    manifests: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<Value>,
    node_port_addresses: Option<Value>,
    service_node_port_range: Option<String>,
    masquerade_all: Option<bool>,
    service_proxy_name: Option<String>,
    sdewan_purpose: Option<String>,
    poll_interval: Option<Value>,
    min_sync_period: Option<Value>,
    metrics_bind_address: Option<String>,
    healthz_bind_address: Option<String>,
    healthz_timeout: Option<Value>,
    admin_socket: Option<PathBuf>,
    dataplane: Option<String>,
    eal: Option<String>,
    crypto: Option<String>,
    ike_fragment_size: Option<usize>,
    bgp: Option<BgpConfig>,
}

/// `bgp:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpConfig {
    asn: Option<u32>,
    router_id: Option<String>,
    listen: Option<String>,
    peers: Option<Vec<PeerConfig>>,
    advertise: Option<Value>,
    next_hop: Option<Value>,
    multipath: Option<usize>,
    cluster_id: Option<String>,
    ibgp_mesh: Option<bool>,
    state_dir: Option<PathBuf>,
    graceful_restart_time: Option<u16>,
    selection_deferral_time: Option<u16>,
}

/// One entry of `bgp.peers`: the parts of a `--bgp-peer` value, as keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerConfig {
    address: IpAddr,
    asn: u32,
    port: Option<u16>,
    #[serde(default)]
    passive: bool,
    password: Option<String>,
    multihop: Option<u8>,
    #[serde(default)]
    rr_client: bool,
    hold: Option<u16>,
    /// `send`, `receive`, `both` or `off` (RFC 7911).
    add_path: Option<String>,
    /// Help the peer restart gracefully (RFC 4724); default true.
    graceful_restart: Option<bool>,
    stale_time: Option<u16>,
    /// ConnectRetryTime in seconds (RFC 4271 10; default 120).
    connect_retry: Option<u16>,
    /// `all` (default) or `none`: whether routes from the peer are taken.
    import: Option<String>,
    /// Most prefixes taken from the peer per family (RFC 4271 §6.7).
    max_prefix: Option<u32>,
}

impl PeerConfig {
    /// The `--bgp-peer` value this entry stands for.
    fn to_flag(&self) -> anyhow::Result<String> {
        let mut s = format!("{}={}", self.address, self.asn);
        if let Some(p) = self.port {
            s.push_str(&format!(",port={p}"));
        }
        if self.passive {
            s.push_str(",passive");
        }
        if let Some(pw) = &self.password {
            if pw.is_empty() || pw.contains(',') {
                bail!(
                    "bgp.peers {}: password must be non-empty and have no commas",
                    self.address
                );
            }
            s.push_str(&format!(",password={pw}"));
        }
        if let Some(ttl) = self.multihop {
            s.push_str(&format!(",multihop={ttl}"));
        }
        if self.rr_client {
            s.push_str(",rr-client");
        }
        if let Some(h) = self.hold {
            s.push_str(&format!(",hold={h}"));
        }
        if let Some(t) = self.connect_retry {
            s.push_str(&format!(",connect-retry={t}"));
        }
        if let Some(mode) = &self.add_path {
            if mode.contains(',') {
                bail!("bgp.peers {}: addPath {mode:?}", self.address);
            }
            s.push_str(&format!(",add-path={mode}"));
        }
        if let Some(on) = self.graceful_restart {
            s.push_str(if on {
                ",graceful-restart=on"
            } else {
                ",graceful-restart=off"
            });
        }
        if let Some(t) = self.stale_time {
            s.push_str(&format!(",stale-time={t}"));
        }
        if let Some(v) = &self.import {
            if v.contains(',') {
                bail!("bgp.peers {}: import {v:?}", self.address);
            }
            s.push_str(&format!(",import={v}"));
        }
        if let Some(n) = self.max_prefix {
            s.push_str(&format!(",max-prefix={n}"));
        }
        Ok(s)
    }
}

/// Reads and parses `path` (nothing applied yet).
pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config {}: cannot read the file", path.display()))?;
    parse(&text).with_context(|| format!("config {}", path.display()))
}

/// Parses the text of a configuration file. An empty file is an empty configuration.
pub fn parse(text: &str) -> anyhow::Result<AgentConfig> {
    if text.trim().is_empty() {
        return Ok(AgentConfig::default());
    }
    let config: AgentConfig =
        serde_yaml::from_str(text).map_err(|e| anyhow!("{}", one_line(&e.to_string())))?;
    if let Some(v) = &config.api_version {
        if v != API_VERSION {
            bail!("apiVersion {v:?}: expected {API_VERSION:?}");
        }
    }
    if let Some(k) = &config.kind {
        if k != KIND {
            bail!("kind {k:?}: expected {KIND:?}");
        }
    }
    Ok(config)
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

impl AgentConfig {
    /// Sets every field of `args` the file has a key for, unless `explicit(id)` says the flag
    /// with that clap id was given on the command line.
    pub fn apply(
        self,
        args: &mut AgentArgs,
        explicit: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let set = |id: &str| !explicit(id);
        if let Some(v) = self.manifests.filter(|_| set("manifests")) {
            args.manifests = Some(v);
        }
        if let Some(v) = self.kubeconfig.filter(|_| set("kubeconfig")) {
            args.kubeconfig = Some(v);
        }
        if let Some(v) = self.node_name.filter(|_| set("node_name")) {
            if v.is_empty() {
                bail!("nodeName: must not be empty");
            }
            args.node_name = Some(v);
        }
        if let Some(v) = self.cluster_cidr.filter(|_| set("cluster_cidrs")) {
            args.cluster_cidrs = list("clusterCIDR", &v, "a CIDR (e.g. 10.244.0.0/16)")?;
        }
        if let Some(v) = self
            .node_port_addresses
            .filter(|_| set("nodeport_addresses"))
        {
            args.nodeport_addresses = list::<String>("nodePortAddresses", &v, "a CIDR")?
                .iter()
                .map(|s| {
                    crate::cli::node_port_range(s).map_err(|e| anyhow!("nodePortAddresses: {e}"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = self
            .service_node_port_range
            .filter(|_| set("service_node_port_range"))
        {
            args.service_node_port_range = crate::cli::parse_port_range(&v)
                .map_err(|e| anyhow!("serviceNodePortRange: {e}"))?;
        }
        if let Some(v) = self.masquerade_all.filter(|_| set("masquerade_all")) {
            args.masquerade_all = v;
        }
        if let Some(v) = self
            .service_proxy_name
            .filter(|_| set("service_proxy_name"))
        {
            args.service_proxy_name = Some(v);
        }
        if let Some(v) = self.sdewan_purpose.filter(|_| set("sdewan_purpose")) {
            args.sdewan_purpose = Some(v);
        }
        if let Some(v) = self.poll_interval.filter(|_| set("poll_interval")) {
            args.poll_interval = seconds("pollInterval", &v, false)?;
        }
        if let Some(v) = self.min_sync_period.filter(|_| set("min_sync_period")) {
            args.min_sync_period = seconds("minSyncPeriod", &v, true)?;
        }
        if let Some(v) = self
            .metrics_bind_address
            .filter(|_| set("metrics_bind_address"))
        {
            args.metrics_bind_address = listen("metricsBindAddress", &v)?;
        }
        if let Some(v) = self
            .healthz_bind_address
            .filter(|_| set("healthz_bind_address"))
        {
            args.healthz_bind_address = listen("healthzBindAddress", &v)?;
        }
        if let Some(v) = self.healthz_timeout.filter(|_| set("healthz_timeout")) {
            args.healthz_timeout = seconds("healthzTimeout", &v, false)?;
        }
        if let Some(v) = self.admin_socket.filter(|_| set("admin_socket")) {
            args.admin_socket = v;
        }
        if let Some(v) = self.dataplane.filter(|_| set("dataplane")) {
            args.router.dataplane = Dataplane::from_str(&v, true).map_err(|_| {
                anyhow!("dataplane {v:?}: expected one of afpacket, afxdp, dpdk, pcap")
            })?;
        }
        if let Some(v) = self.eal.filter(|_| set("eal")) {
            args.router.eal = Some(v);
        }
        if let Some(v) = self.crypto.filter(|_| set("crypto")) {
            args.router.crypto = crate::cli::parse_crypto(&v).map_err(|e| anyhow!("crypto {e}"))?;
        }
        if let Some(v) = self.ike_fragment_size.filter(|_| set("ike_fragment_size")) {
            args.router.ike_fragment_size = Some(v);
        }
        if let Some(bgp) = self.bgp {
            bgp.apply(args, &set)?;
        }
        Ok(())
    }
}

impl BgpConfig {
    fn apply(self, args: &mut AgentArgs, set: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
        if let Some(v) = self.asn.filter(|_| set("bgp_asn")) {
            if v == 0 {
                bail!("bgp.asn: 0 is not a valid AS number");
            }
            args.bgp_asn = Some(v);
        }
        if let Some(v) = self.router_id.filter(|_| set("bgp_router_id")) {
            args.bgp_router_id = Some(ipv4("bgp.routerId", &v)?);
        }
        if let Some(v) = self.listen.filter(|_| set("bgp_listen")) {
            args.bgp_listen = listen("bgp.listen", &v)?;
        }
        if let Some(v) = self.peers.filter(|_| set("bgp_peers")) {
            args.bgp_peers = v
                .iter()
                .map(PeerConfig::to_flag)
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = self.advertise.filter(|_| set("bgp_advertise")) {
            let kinds: Vec<String> = list(
                "bgp.advertise",
                &v,
                "cluster-ip, external-ip, load-balancer-ip, pod-cidr or none",
            )?;
            args.bgp_advertise = kinds
                .iter()
                .map(|k| {
                    BgpAdvertise::from_str(k, true).map_err(|_| {
                        anyhow!(
                            "bgp.advertise: {k:?} is not cluster-ip, external-ip, \
                             load-balancer-ip, pod-cidr or none"
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = self.next_hop.filter(|_| set("bgp_next_hop")) {
            args.bgp_next_hop = list("bgp.nextHop", &v, "an IP address")?;
        }
        if let Some(v) = self.multipath.filter(|_| set("bgp_multipath")) {
            if v == 0 {
                bail!("bgp.multipath: must be at least 1 (1 turns ECMP off)");
            }
            args.bgp_multipath = v;
        }
        if let Some(v) = self.cluster_id.filter(|_| set("bgp_cluster_id")) {
            args.bgp_cluster_id = Some(ipv4("bgp.clusterId", &v)?);
        }
        if let Some(v) = self.ibgp_mesh.filter(|_| set("bgp_ibgp_mesh")) {
            args.bgp_ibgp_mesh = v;
        }
        if let Some(v) = self.state_dir.filter(|_| set("bgp_state_dir")) {
            args.bgp_state_dir = Some(v);
        }
        if let Some(v) = self
            .graceful_restart_time
            .filter(|_| set("bgp_graceful_restart_time"))
        {
            if !(1..=4095).contains(&v) {
                bail!("bgp.gracefulRestartTime: {v} is not 1-4095 seconds");
            }
            args.bgp_graceful_restart_time = v;
        }
        if let Some(v) = self
            .selection_deferral_time
            .filter(|_| set("bgp_selection_deferral_time"))
        {
            if v == 0 {
                bail!("bgp.selectionDeferralTime: must be at least 1 second");
            }
            args.bgp_selection_deferral_time = v;
        }
        // Without an AS number the other BGP settings would be silently ignored.
        if args.bgp_asn.is_none() {
            bail!("bgp: set bgp.asn (or --bgp-asn) to run BGP, or leave bgp out");
        }
        Ok(())
    }
}

/// A list given as a YAML sequence or as one comma-separated string (as the flag takes it).
fn list<T: std::str::FromStr>(key: &str, v: &Value, what: &str) -> anyhow::Result<Vec<T>> {
    let items: Vec<String> = match v {
        Value::String(s) => s
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Value::Sequence(seq) => seq
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(anyhow!("{key}: {} is not {what}", show(other))),
            })
            .collect::<anyhow::Result<_>>()?,
        Value::Null => Vec::new(),
        other => bail!(
            "{key}: expected a list or a comma-separated string, not {}",
            show(other)
        ),
    };
    items
        .iter()
        .map(|s| {
            s.parse::<T>()
                .map_err(|_| anyhow!("{key}: {s:?} is not {what}"))
        })
        .collect()
}

/// A duration: a number of seconds, or a string with a unit as kube-proxy's configuration
/// writes them (`"500ms"`, `"1s"`, `"2m"`, `"1h"`, `"1m30s"`).
fn seconds(key: &str, v: &Value, zero_ok: bool) -> anyhow::Result<f64> {
    let secs = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_duration(s),
        _ => None,
    }
    .ok_or_else(|| {
        anyhow!(
            "{key}: {} is not a duration (seconds, or e.g. \"500ms\", \"1s\", \"2m\")",
            show(v)
        )
    })?;
    if !secs.is_finite() || secs < 0.0 || (!zero_ok && secs == 0.0) {
        let need = if zero_ok {
            "zero or positive"
        } else {
            "positive"
        };
        bail!("{key}: {} must be {need}", show(v));
    }
    Ok(secs)
}

/// Go-style durations, the units kube-proxy's configuration uses: `h`, `m`, `s`, `ms`, `us`,
/// `ns`, one or more number-unit pairs. A bare number is seconds.
fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Some(n);
    }
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Some(total)
}

fn listen(key: &str, v: &str) -> anyhow::Result<ListenAddress> {
    v.parse::<ListenAddress>()
        .map_err(|e| anyhow!("{key}: {e}"))
}

fn ipv4(key: &str, v: &str) -> anyhow::Result<Ipv4Addr> {
    v.parse()
        .map_err(|_| anyhow!("{key}: {v:?} is not an IPv4 address"))
}

/// A YAML value, briefly, for error messages.
fn show(v: &Value) -> String {
    match serde_yaml::to_string(v) {
        Ok(s) => one_line(s.trim()),
        Err(_) => format!("{v:?}"),
    }
}

/// Parses the command line as `Cli::parse` does, then, for `switchyard agent --config FILE`,
/// fills in from the file every setting whose flag was not given.
pub fn parse_command_line() -> anyhow::Result<Cli> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches)
        .map_err(|e| e.format(&mut Cli::command()))
        .unwrap_or_else(|e| e.exit());
    if let (Command::Agent(args), Some(m)) = (&mut cli.command, matches.subcommand_matches("agent"))
    {
        if let Some(path) = args.config.clone() {
            apply_file(&path, args, m)?;
        }
    }
    Ok(cli)
}

/// Whether the flag with clap id `id` was given on the command line.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
}

fn apply_file(path: &Path, args: &mut AgentArgs, matches: &ArgMatches) -> anyhow::Result<()> {
    let config = load(path)?;
    config
        .apply(args, &|id| given(matches, id))
        .with_context(|| format!("config {}", path.display()))
}

/// `switchyard config check FILE`: reads the file as the agent does and runs the checks the
/// agent runs on its settings before it starts.
pub fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    match &args.command {
        ConfigCommand::Check { file } => {
            check(file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}

/// The agent's settings from `file` alone (a placeholder port stands in for the
/// command-line-only `--interface`), checked.
pub fn check(file: &Path) -> anyhow::Result<AgentArgs> {
    let matches = Cli::command()
        .try_get_matches_from(["switchyard", "agent", "--interface", "config-check"])
        .map_err(|e| anyhow!("{e}"))?;
    let Some(m) = matches.subcommand_matches("agent") else {
        bail!("internal: no agent subcommand");
    };
    let mut args = AgentArgs::from_arg_matches(m).map_err(|e| anyhow!("{e}"))?;
    apply_file(file, &mut args, m)?;
    let context = || format!("config {}", file.display());
    if args.manifests.is_some() && args.kubeconfig.is_some() {
        bail!(
            "{}: give either manifests or kubeconfig, not both",
            context()
        );
    }
    crate::agent::bgp::Settings::from_args(&args).with_context(context)?;
    crate::servers::Config::from_args(&args).with_context(context)?;
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    /// The agent's flags as parsed from `argv` (after `switchyard agent`), with the file
    /// applied as `--config` applies it.
    fn agent(argv: &[&str], yaml: &str) -> anyhow::Result<AgentArgs> {
        let mut full = vec!["switchyard", "agent", "-i", "eth0"];
        full.extend_from_slice(argv);
        let matches = Cli::command().try_get_matches_from(full)?;
        let m = matches.subcommand_matches("agent").expect("agent");
        let mut args = AgentArgs::from_arg_matches(m)?;
        parse(yaml)?.apply(&mut args, &|id| given(m, id))?;
        Ok(args)
    }

    fn err(argv: &[&str], yaml: &str) -> String {
        format!("{:#}", agent(argv, yaml).expect_err("should fail"))
    }

    const FULL: &str = "
apiVersion: switchyard.io/v1alpha1
kind: AgentConfiguration
kubeconfig: /etc/kubernetes/kubeconfig
nodeName: node-a
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
nodePortAddresses: [198.51.100.1]
serviceNodePortRange: 31000-31999
masqueradeAll: true
serviceProxyName: switchyard
minSyncPeriod: 1s
metricsBindAddress: 0.0.0.0:10249
healthzBindAddress: 0.0.0.0:10256
healthzTimeout: 2m
adminSocket: /run/sy/admin.sock
dataplane: dpdk
eal: --in-memory
crypto: cryptodev:crypto_aesni_gcm0
bgp:
  asn: 64512
  routerId: 198.51.100.1
  listen: 'off'
  peers:
  - {address: 198.51.100.254, asn: 65000, hold: 9, password: s3cret, import: none, maxPrefix: 1000}
  - {address: 2001:db8::1, asn: 64512, rrClient: true, port: 1790, multihop: 2, addPath: both, gracefulRestart: false, staleTime: 60}
  advertise: [cluster-ip, pod-cidr]
  nextHop: [198.51.100.1]
  multipath: 4
  clusterId: 198.51.100.1
  ibgpMesh: false
";

    #[test]
    fn every_key_sets_its_flag() {
        let a = agent(&[], FULL).unwrap();
        assert_eq!(
            a.kubeconfig,
            Some(PathBuf::from("/etc/kubernetes/kubeconfig"))
        );
        assert_eq!(a.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            a.cluster_cidrs,
            vec![
                "10.244.0.0/16".parse::<IpNet>().unwrap(),
                "fd00:10:244::/56".parse().unwrap()
            ]
        );
        assert_eq!(
            a.nodeport_addresses,
            vec![crate::cli::NodePortAddress::Range(
                "198.51.100.1/32".parse::<IpNet>().unwrap()
            )]
        );
        assert_eq!(
            a.service_node_port_range,
            crate::cli::PortRange {
                first: 31000,
                last: 31999
            }
        );
        assert!(a.masquerade_all);
        assert_eq!(a.service_proxy_name.as_deref(), Some("switchyard"));
        assert_eq!(a.min_sync_period, 1.0);
        assert_eq!(
            a.metrics_bind_address.0,
            Some("0.0.0.0:10249".parse().unwrap())
        );
        assert_eq!(a.healthz_timeout, 120.0);
        assert_eq!(a.admin_socket, PathBuf::from("/run/sy/admin.sock"));
        assert_eq!(a.router.dataplane, Dataplane::Dpdk);
        assert_eq!(a.router.eal.as_deref(), Some("--in-memory"));
        assert_eq!(
            a.router.crypto,
            crate::cli::CryptoChoice::Cryptodev("crypto_aesni_gcm0".into())
        );
        assert_eq!(a.bgp_asn, Some(64512));
        assert_eq!(a.bgp_listen, ListenAddress(None));
        assert_eq!(
            a.bgp_peers,
            vec![
                "198.51.100.254=65000,password=s3cret,hold=9,import=none,max-prefix=1000"
                    .to_string(),
                "2001:db8::1=64512,port=1790,multihop=2,rr-client,add-path=both,\
                 graceful-restart=off,stale-time=60"
                    .to_string()
            ]
        );
        assert_eq!(
            a.bgp_advertise,
            vec![BgpAdvertise::ClusterIp, BgpAdvertise::PodCidr]
        );
        assert_eq!(a.bgp_multipath, 4);
        assert_eq!(a.bgp_cluster_id, Some(Ipv4Addr::new(198, 51, 100, 1)));
        assert!(!a.bgp_ibgp_mesh);
        // The agent's own checks accept what the file produced.
        crate::agent::bgp::Settings::from_args(&a).unwrap().unwrap();
        crate::servers::Config::from_args(&a).unwrap();
    }

    /// `bgp.stateDir` and the graceful-restart times, as their flags.
    #[test]
    fn graceful_restart_keys() {
        let a = agent(
            &[],
            "bgp: {asn: 65000, stateDir: /run/sy/bgp, gracefulRestartTime: 90, \
             selectionDeferralTime: 200}\n",
        )
        .unwrap();
        assert_eq!(a.bgp_state_dir, Some(PathBuf::from("/run/sy/bgp")));
        assert_eq!(
            (a.bgp_graceful_restart_time, a.bgp_selection_deferral_time),
            (90, 200)
        );
        let s = crate::agent::bgp::Settings::from_args(&a).unwrap().unwrap();
        let r = s.restart.unwrap();
        assert_eq!(r.restart_time, 90);
        assert_eq!(r.selection_deferral, std::time::Duration::from_secs(200));
        // Defaults: off, 120 s, 360 s.
        let a = agent(&["--bgp-asn", "65000"], "").unwrap();
        assert_eq!(a.bgp_state_dir, None);
        assert_eq!(
            (a.bgp_graceful_restart_time, a.bgp_selection_deferral_time),
            (120, 360)
        );
        let s = crate::agent::bgp::Settings::from_args(&a).unwrap().unwrap();
        assert!(s.restart.is_none());
        for (yaml, want) in [
            (
                "bgp: {asn: 1, gracefulRestartTime: 0}\n",
                "bgp.gracefulRestartTime",
            ),
            (
                "bgp: {asn: 1, gracefulRestartTime: 4096}\n",
                "bgp.gracefulRestartTime",
            ),
            (
                "bgp: {asn: 1, selectionDeferralTime: 0}\n",
                "bgp.selectionDeferralTime",
            ),
        ] {
            let e = err(&[], yaml);
            assert!(e.contains(want), "{yaml:?}: {e:?} lacks {want:?}");
        }
        let a = agent(
            &["--bgp-asn", "1", "--bgp-graceful-restart-time", "5000"],
            "",
        )
        .unwrap();
        assert!(crate::agent::bgp::Settings::from_args(&a).is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let a = agent(
            &[
                "--node-name",
                "from-flag",
                "--metrics-bind-address",
                "127.0.0.1:19249",
                "--cluster-cidr",
                "198.18.0.0/15",
                "--dataplane",
                "afxdp",
            ],
            FULL,
        )
        .unwrap();
        assert_eq!(a.node_name.as_deref(), Some("from-flag"));
        assert_eq!(
            a.metrics_bind_address.0,
            Some("127.0.0.1:19249".parse().unwrap())
        );
        assert_eq!(
            a.cluster_cidrs,
            vec!["198.18.0.0/15".parse::<IpNet>().unwrap()]
        );
        assert_eq!(a.router.dataplane, Dataplane::Afxdp);
        // Not given as flags: from the file.
        assert!(a.masquerade_all);
        assert_eq!(
            a.healthz_bind_address.0,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        // A flag left at its default does not hide the file's value.
        let a = agent(&[], "healthzBindAddress: 127.0.0.1:1\n").unwrap();
        assert_eq!(
            a.healthz_bind_address.0,
            Some("127.0.0.1:1".parse().unwrap())
        );
        let a = agent(
            &["--healthz-bind-address", "0.0.0.0:10256"],
            "healthzBindAddress: 'off'\n",
        )
        .unwrap();
        assert_eq!(
            a.healthz_bind_address.0,
            Some("0.0.0.0:10256".parse().unwrap())
        );
    }

    #[test]
    fn empty_file_changes_nothing() {
        let a = agent(&[], "").unwrap();
        assert_eq!(a.min_sync_period, 0.0);
        assert_eq!(
            a.metrics_bind_address.0,
            Some("127.0.0.1:10249".parse().unwrap())
        );
        let a = agent(&[], "# only a comment\n").unwrap();
        assert!(a.node_name.is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&[], "nodeName: a\nhostnameOverride: b\n");
        assert!(e.contains("unknown field `hostnameOverride`"), "{e}");
        let e = err(&[], "bgp:\n  asn: 1\n  peer: []\n");
        assert!(e.contains("unknown field `peer`"), "{e}");
        let e = err(
            &[],
            "bgp:\n  asn: 1\n  peers: [{address: 198.51.100.2, asn: 2, md5: x}]\n",
        );
        assert!(e.contains("unknown field `md5`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn bad_values_are_one_clear_line() {
        for (yaml, want) in [
            (
                "clusterCIDR: 10.0.0.0\n",
                "clusterCIDR: \"10.0.0.0\" is not a CIDR",
            ),
            (
                "clusterCIDR: [10.0.0.0/8, 7]\n",
                "clusterCIDR: 7 is not a CIDR",
            ),
            (
                "nodePortAddresses: [10.0.0.0/8, secondary]\n",
                "nodePortAddresses: \"secondary\" is not a CIDR, an IP address",
            ),
            (
                "serviceNodePortRange: 32767-30000\n",
                "serviceNodePortRange: \"32767-30000\": the first port is above the last",
            ),
            ("masqueradeAll: maybe\n", "masqueradeAll"),
            (
                "minSyncPeriod: -1\n",
                "minSyncPeriod: -1 must be zero or positive",
            ),
            (
                "minSyncPeriod: 5 parsecs\n",
                "minSyncPeriod: 5 parsecs is not a duration",
            ),
            ("pollInterval: 0\n", "pollInterval: 0 must be positive"),
            (
                "metricsBindAddress: localhost\n",
                "metricsBindAddress: \"localhost\" is not ADDRESS:PORT",
            ),
            ("dataplane: netmap\n", "dataplane \"netmap\""),
            ("apiVersion: v1\n", "apiVersion \"v1\""),
            (
                "kind: KubeProxyConfiguration\n",
                "kind \"KubeProxyConfiguration\"",
            ),
            ("bgp: {routerId: 198.51.100.1}\n", "set bgp.asn"),
            ("bgp: {asn: 0}\n", "bgp.asn: 0"),
            ("bgp: {asn: 1, routerId: 2001:db8::1}\n", "bgp.routerId"),
            (
                "bgp: {asn: 1, advertise: [everything]}\n",
                "bgp.advertise: \"everything\"",
            ),
            ("bgp: {asn: 1, multipath: 0}\n", "bgp.multipath"),
            (
                "bgp: {asn: 1, peers: [{address: 198.51.100.2, asn: 2, password: 'a,b'}]}\n",
                "no commas",
            ),
            (
                "bgp: {asn: 1, peers: [{address: nope, asn: 2}]}\n",
                "bgp.peers",
            ),
            ("- a\n- b\n", "invalid type"),
        ] {
            let e = err(&[], yaml);
            assert!(e.contains(want), "{yaml:?}: {e:?} lacks {want:?}");
            assert!(!e.contains('\n'), "{yaml:?}: not one line: {e}");
        }
    }

    #[test]
    fn flag_ids_exist() {
        // `given` is asked by clap id; a misspelt id would let the file override the flag.
        let ids = [
            "manifests",
            "kubeconfig",
            "node_name",
            "cluster_cidrs",
            "nodeport_addresses",
            "service_node_port_range",
            "masquerade_all",
            "service_proxy_name",
            "sdewan_purpose",
            "poll_interval",
            "min_sync_period",
            "metrics_bind_address",
            "healthz_bind_address",
            "healthz_timeout",
            "admin_socket",
            "dataplane",
            "eal",
            "crypto",
            "ike_fragment_size",
            "bgp_asn",
            "bgp_router_id",
            "bgp_listen",
            "bgp_peers",
            "bgp_advertise",
            "bgp_next_hop",
            "bgp_multipath",
            "bgp_cluster_id",
            "bgp_ibgp_mesh",
            "bgp_state_dir",
            "bgp_graceful_restart_time",
            "bgp_selection_deferral_time",
            "config",
        ];
        let cmd = Cli::command();
        let agent = cmd.find_subcommand("agent").expect("agent");
        for id in ids {
            assert!(agent.get_arguments().any(|a| a.get_id() == id), "{id}");
        }
        let source = include_str!("config.rs");
        for id in source
            .split("set(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
        {
            assert!(ids.contains(&id), "{id} is not in the list above");
        }
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("1", 1.0),
            ("0.5", 0.5),
            ("500ms", 0.5),
            ("1m30s", 90.0),
            ("2h", 7200.0),
            ("250us", 0.00025),
        ] {
            assert_eq!(parse_duration(s), Some(want), "{s}");
        }
        for bad in ["", "s", "1x", "1.2.3s", "m5"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn check_runs_the_agents_own_checks() {
        let dir = std::env::temp_dir().join(format!("switchyard-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, FULL).unwrap();
        let args = check(&file).unwrap();
        assert_eq!(args.bgp_asn, Some(64512));
        // Passive peer with listening off: refused by the BGP settings, as at agent start.
        std::fs::write(
            &file,
            "bgp: {asn: 1, listen: 'off', peers: [{address: 198.51.100.2, asn: 2, passive: true}]}\n",
        )
        .unwrap();
        let e = format!("{:#}", check(&file).unwrap_err());
        assert!(e.contains("passive") && e.contains("config.yaml"), "{e}");
        std::fs::write(&file, "manifests: /x\nkubeconfig: /y\n").unwrap();
        assert!(format!("{:#}", check(&file).unwrap_err()).contains("not both"));
        let e = format!("{:#}", check(&dir.join("missing.yaml")).unwrap_err());
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
