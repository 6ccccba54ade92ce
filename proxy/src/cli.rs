//! Command-line flags, and the parsing of the small `NAME=VALUE` languages they use.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use switchyard_dataplane::tables::{RouteTarget, StaticRoute};

/// Switchyard: a userspace service proxy and router for Kubernetes.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log lines as text for people, or as one JSON object per line for a log pipeline.
    /// The level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing buys nothing
pub enum Command {
    /// Run the node agent: the router plus the service proxy, fed from the Kubernetes API or
    /// from a directory of manifests.
    Agent(AgentArgs),
    /// Run the dataplane as a plain IPv4/IPv6 router configured from flags alone.
    Router(RouterArgs),
    /// Show live state of a running agent, read over its admin socket.
    Show(ShowArgs),
    /// Trace the next packets a running agent receives, node by node (VPP's `trace add`).
    Trace(TraceArgs),
    /// NetworkPolicy tools that work on manifests, without a running agent.
    Policy(PolicyArgs),
    /// Agent configuration file tools.
    Config(crate::config::ConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Read settings from this YAML file: one key per long flag, in camelCase (see
    /// deploy/README.md). Flags given on the command line win over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Read Services, EndpointSlices, NetworkPolicies, Nodes, Pods and Namespaces from the YAML
    /// (or JSON) files in this directory, re-read when they change, instead of a cluster.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// Watch the Kubernetes API server this kubeconfig file points at (its current context).
    /// Without --manifests or --kubeconfig, the in-cluster configuration is used when
    /// KUBERNETES_SERVICE_HOST is set.
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name: endpoints whose nodeName is this are local (default: the host name).
    /// Trimmed and lowercased, as kube-proxy takes --hostname-override and the host name.
    #[arg(long)]
    pub node_name: Option<String>,

    /// Pod address ranges (kube-proxy's --cluster-cidr): traffic from them is internal.
    /// Repeat or separate with commas.
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,

    /// Address ranges NodePorts are open on, as kube-proxy's --nodeport-addresses: the node's
    /// addresses within them (a bare address is a range of one), or `primary`: the node's
    /// first address of each family. Default: all of the node's addresses. Repeat or separate
    /// with commas.
    #[arg(long = "nodeport-addresses", value_delimiter = ',', value_parser = node_port_range)]
    pub nodeport_addresses: Vec<NodePortAddress>,

    /// The port range NodePorts are allocated from (the API server's
    /// --service-node-port-range): FIRST-LAST, or FIRST+COUNT as the API server also takes.
    /// With --punt-tun the node's own connections to these ports on its own addresses are
    /// routed into the dataplane, as kube-proxy's OUTPUT rules catch them, instead of the
    /// kernel answering them itself.
    #[arg(
        long,
        value_name = "FIRST-LAST",
        default_value = "30000-32767",
        value_parser = parse_port_range
    )]
    pub service_node_port_range: PortRange,

    /// Source-NAT all traffic to cluster IPs (kube-proxy's --masquerade-all; NodePort, external
    /// and load-balancer traffic follows its externalTrafficPolicy, as with kube-proxy).
    #[arg(long)]
    pub masquerade_all: bool,

    /// Also handle Services whose service.kubernetes.io/service-proxy-name label is this
    /// (unlabelled Services are handled either way; other names belong to other proxies).
    #[arg(long)]
    pub service_proxy_name: Option<String>,

    /// Run the IPsec tunnels of the SD-EWAN resources (IpsecProposal, IpsecSite, IpsecHost of
    /// batch.sdewan.akraino.org/v1alpha1) labelled sdewanPurpose=NAME, watched through the
    /// Kubernetes API (or read from the --manifests directory) and applied as they change
    /// (with --ipsec, added to that file's). Needs --punt-tun.
    #[arg(long, value_name = "NAME", requires = "punt_tun")]
    pub sdewan_purpose: Option<String>,

    /// How often the manifest directory is checked for changes, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,

    /// Least time between two dataplane syncs, in seconds (kube-proxy's --min-sync-period):
    /// changes arriving faster are programmed together.
    #[arg(long, default_value_t = 0.0)]
    pub min_sync_period: f64,

    /// Serve Prometheus metrics (`/metrics`) on this address, like kube-proxy's
    /// --metrics-bind-address; `off` to serve none.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: ListenAddress,

    /// Serve `/healthz`, `/livez` and `/readyz` on this address, like kube-proxy's
    /// --healthz-bind-address; `off` to serve none.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: ListenAddress,

    /// `/healthz` fails once a change has waited this many seconds without being programmed
    /// (kube-proxy uses twice its sync period).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub healthz_timeout: f64,

    /// The admin socket that `switchyard show` reads (made mode 0600, its directory created
    /// if missing).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    // ---- BGP (off unless --bgp-asn is given) ------------------------------------------------
    /// Run a BGP speaker with this AS number: advertise Service addresses and the pod CIDRs,
    /// and install the routes learned from the peers into the dataplane FIB (ECMP).
    #[arg(long, value_name = "ASN", help_heading = "BGP")]
    pub bgp_asn: Option<u32>,

    /// The BGP router id (default: the first IPv4 address of the dataplane ports).
    #[arg(long, value_name = "IPV4", requires = "bgp_asn", help_heading = "BGP")]
    pub bgp_router_id: Option<std::net::Ipv4Addr>,

    /// Where to accept BGP connections; `off` to only connect out (no passive peers then).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "0.0.0.0:179",
        requires = "bgp_asn",
        help_heading = "BGP"
    )]
    pub bgp_listen: ListenAddress,

    /// A BGP peer: ADDR=ASN, then any of ,port=N ,passive ,password=SECRET ,multihop=TTL
    /// ,rr-client ,hold=SECS (e.g. 198.18.2.2=65001,port=1790,hold=9). Repeat for more. `password` is the TCP MD5 key (RFC 2385; no commas; never logged);
    /// `rr-client` makes the peer a route-reflector client; `hold` is 0 or at least 3
    /// (default 90). More options (connect-retry, add-path, graceful-restart, stale-time,
    /// import=all|none, max-prefix=N) are in the README's BGP section.
    #[arg(
        long = "bgp-peer",
        value_name = "ADDR=ASN[,OPTION...]",
        requires = "bgp_asn",
        help_heading = "BGP"
    )]
    pub bgp_peers: Vec<String>,

    /// What to advertise: cluster-ip, external-ip, load-balancer-ip, pod-cidr (comma-separated
    /// or repeated; kube-router's defaults are all four), or none.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "KIND,...",
        default_value = "cluster-ip,external-ip,load-balancer-ip,pod-cidr",
        requires = "bgp_asn",
        help_heading = "BGP"
    )]
    pub bgp_advertise: Vec<BgpAdvertise>,

    /// The next hop announced for our routes, one per address family (default: the local
    /// address of each session).
    #[arg(
        long,
        value_name = "IP",
        value_delimiter = ',',
        requires = "bgp_asn",
        help_heading = "BGP"
    )]
    pub bgp_next_hop: Vec<IpAddr>,

    /// Most equal-cost next hops installed per learned prefix (1: no ECMP).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        requires = "bgp_asn",
        help_heading = "BGP"
    )]
    pub bgp_multipath: usize,

    /// Act as a BGP route reflector (RFC 4456) with this cluster id (with rr-client peers
    /// and no --bgp-cluster-id, the router id is the cluster id).
    #[arg(long, value_name = "IPV4", requires = "bgp_asn", help_heading = "BGP")]
    pub bgp_cluster_id: Option<std::net::Ipv4Addr>,

    /// Peer over iBGP with every other Node of our AS, at its InternalIP on our BGP port
    /// (kube-router's --enable-ibgp); the Nodes' kube-router.io/rr.server and rr.client
    /// annotations turn the full mesh into route reflection. `false` to peer only with the
    /// --bgp-peer and annotated peers.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        help_heading = "BGP"
    )]
    pub bgp_ibgp_mesh: bool,

    /// Restart gracefully (RFC 4724 as the restarting speaker): keep the learned routes the
    /// FIB holds and a heartbeat in DIR/bgp-restart-state, announce graceful restart for our
    /// families so peers keep our routes while the agent restarts, and on a start within
    /// --bgp-graceful-restart-time of the last run put the saved routes back into the FIB at
    /// once and defer route selection until the peers' End-of-RIB. Off when not given (we
    /// then only help restarting peers). DIR must outlive the process (a hostPath volume in
    /// a pod).
    #[arg(long, value_name = "DIR", requires = "bgp_asn", help_heading = "BGP")]
    pub bgp_state_dir: Option<PathBuf>,

    /// With --bgp-state-dir: the Restart Time we announce, how long peers keep our routes
    /// while we are away (1-4095 seconds).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = switchyard_bgp::restarting::DEFAULT_RESTART_TIME_SECS,
        requires = "bgp_asn",
        help_heading = "BGP"
    )]
    pub bgp_graceful_restart_time: u16,

    /// With --bgp-state-dir: after a graceful restart, the longest wait for the peers'
    /// End-of-RIB before route selection runs anyway (the Selection_Deferral_Timer).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = switchyard_bgp::restarting::DEFAULT_SELECTION_DEFERRAL_SECS,
        requires = "bgp_asn",
        help_heading = "BGP"
    )]
    pub bgp_selection_deferral_time: u16,

    /// The dataplane: ports, addresses, routes as for `switchyard router`.
    #[command(flatten)]
    pub router: RouterArgs,
}

/// A kind of route `--bgp-advertise` can announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BgpAdvertise {
    /// Service cluster IPs, as /32 and /128.
    ClusterIp,
    /// Service external IPs.
    ExternalIp,
    /// Service load-balancer ingress IPs.
    LoadBalancerIp,
    /// This node's pod CIDRs (Node spec.podCIDRs).
    PodCidr,
    /// Nothing (only learn routes).
    None,
}

/// Where the agent's admin socket is unless `--admin-socket` says otherwise.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/switchyard/admin.sock";

/// A TCP address to listen on, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddress(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(ListenAddress(None));
        }
        s.parse()
            .map(|a| ListenAddress(Some(a)))
            .map_err(|_| format!("{s:?} is not ADDRESS:PORT (e.g. 127.0.0.1:10249) or off"))
    }
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// What to show.
    #[arg(value_enum)]
    pub what: ShowWhat,

    /// Print the agent's answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// The running agent's admin socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// How many packets to trace (1 to 100): the next ones the dataplane receives, on any port.
    #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub count: u32,

    /// Stop waiting after this many seconds (at most 60), with the packets traced by then.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub wait: f64,

    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,

    /// The running agent's admin socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket: PathBuf,
}

/// What `switchyard show` can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShowWhat {
    /// Services with their ports, frontends and backends.
    Services,
    /// Endpoints per Service port, with their conditions.
    Endpoints,
    /// Connection-tracking counts and a sample of the connections.
    Conntrack,
    /// The routes.
    Fib,
    /// Packets and per-reason counters of every graph node.
    Counters,
    /// The neighbor (ARP/NDP) table.
    Neighbors,
    /// The control plane: readiness, last sync, problems.
    Sync,
    /// NetworkPolicy ACLs (not available yet).
    Acl,
    /// BGP sessions and routes.
    Bgp,
    /// IPsec tunnels (not available yet).
    Ipsec,
}

impl ShowWhat {
    /// The admin-socket request for this.
    pub fn request(self) -> &'static str {
        match self {
            ShowWhat::Services => "services",
            ShowWhat::Endpoints => "endpoints",
            ShowWhat::Conntrack => "conntrack",
            ShowWhat::Fib => "fib",
            ShowWhat::Counters => "counters",
            ShowWhat::Neighbors => "neighbors",
            ShowWhat::Sync => "sync",
            ShowWhat::Acl => "acl",
            ShowWhat::Bgp => "bgp",
            ShowWhat::Ipsec => "ipsec",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the allow/deny truth table (pods x pods, per port) that the compiled ACLs give
    /// for a directory of manifests, every pod taken as local to one node.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The directory of manifests (Namespaces, Pods, NetworkPolicies; other kinds are ignored).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,

    /// A destination port to tabulate: PORT/PROTOCOL (TCP, UDP or SCTP; TCP when left out).
    /// Repeat for more. Default: every port the policies name, and 80/TCP.
    #[arg(long = "port", value_name = "PORT[/PROTOCOL]")]
    pub ports: Vec<ProbePort>,
}

/// A `--port` of `policy explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePort {
    /// IP protocol number (6, 17 or 132).
    pub protocol: u8,
    pub port: u16,
}

impl std::str::FromStr for ProbePort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, protocol) = s.split_once('/').unwrap_or((s, "TCP"));
        let protocol = match protocol.to_ascii_uppercase().as_str() {
            "TCP" => 6,
            "UDP" => 17,
            "SCTP" => 132,
            _ => {
                return Err(format!(
                    "{s:?}: protocol {protocol:?} is not TCP, UDP or SCTP"
                ))
            }
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(ProbePort { protocol, port }),
            _ => Err(format!("{s:?}: {port:?} is not a port number (1-65535)")),
        }
    }
}

/// Which packet I/O the dataplane uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dataplane {
    /// Linux AF_PACKET sockets with TPACKET_V2 receive rings.
    Afpacket,
    /// Linux AF_XDP sockets (generic mode works on any interface).
    Afxdp,
    /// DPDK poll-mode drivers; ports are DPDK device names, EAL arguments in --eal.
    Dpdk,
    /// Read frames from pcap files and write what is sent to pcap files: --interface IN.pcap:OUT.pcap.
    Pcap,
}

#[derive(Debug, clap::Args)]
pub struct RouterArgs {
    /// Packet I/O.
    #[arg(long, value_enum, default_value = "afpacket")]
    pub dataplane: Dataplane,

    /// A port: kernel interface name (afpacket, afxdp), DPDK device name such as
    /// net_af_packet0 (dpdk), or IN.pcap:OUT.pcap (pcap). Repeat for each port.
    #[arg(long = "interface", short = 'i', required = true)]
    pub interfaces: Vec<String>,

    /// An 802.1Q VLAN subinterface: PORT.VID, e.g. eth0.100 (VLAN id 1 to 4094, written
    /// without leading zeros) on a port given with --interface. Frames tagged with the id on
    /// that port are its; everything it sends is tagged. It has the port's MAC and, unless
    /// --mtu sets a smaller one, its MTU. Name it in --address, --route, --mtu and --neighbor
    /// as a port (e.g. --address eth0.100=198.51.100.1/24). Repeat for more.
    #[arg(long = "vlan", value_name = "PORT.VID")]
    pub vlans: Vec<String>,

    /// An address of a port or VLAN subinterface: NAME=CIDR, e.g. eth0=198.18.1.1/24,
    /// eth0=2001:db8:1::1/64 or eth0.100=198.51.100.1/24.
    #[arg(long = "address", short = 'a')]
    pub addresses: Vec<String>,

    /// A static route: PREFIX=GW[@NAME][,GW[@NAME]...] (several for ECMP), PREFIX=@NAME
    /// (on-link), PREFIX=blackhole or PREFIX=unreachable. NAME is a port or a VLAN
    /// subinterface.
    #[arg(long = "route", short = 'r')]
    pub routes: Vec<String>,

    /// A port's or VLAN subinterface's MTU: NAME=BYTES (default: what the driver reports; a
    /// subinterface's port's); at least 576, and at least 1280 with an IPv6 address; a
    /// subinterface's at most its port's.
    #[arg(long = "mtu")]
    pub mtus: Vec<String>,

    /// Override a port's Ethernet address: NAME=MAC (the driver's is used otherwise; a VLAN
    /// subinterface has its port's).
    #[arg(long = "mac")]
    pub macs: Vec<String>,

    /// A static neighbor: NAME=IP,MAC (NAME a port or a VLAN subinterface).
    #[arg(long = "neighbor")]
    pub neighbors: Vec<String>,

    /// Punt to the host stack through a TUN device of this name, made in the router's network
    /// namespace: TCP, UDP and ICMP errors for the router's addresses go to the kernel (so
    /// local services such as a BGP speaker work through the dataplane) instead of drawing a
    /// reset or port unreachable; the kernel's packets are routed by the dataplane. The device
    /// gets every --address as a /32 or /128 and default routes, so run the router in a
    /// namespace of its own.
    #[arg(long, value_name = "NAME")]
    pub punt_tun: Option<String>,

    /// DPDK EAL arguments, one string, e.g. "--no-huge --no-pci --vdev net_ring0".
    #[arg(long, allow_hyphen_values = true)]
    pub eal: Option<String>,

    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,

    /// Record a trace of the first N packets received, printed on exit.
    #[arg(long, default_value_t = 0)]
    pub trace: u32,

    /// Most packets taken from a port in one receive call (1 to 256, the graph's vector
    /// size). Smaller bursts keep fewer buffers in flight (less cache per vector), larger ones
    /// spread the per-vector work over more packets; on the DPDK benchmark (`benches/`) the
    /// full vector is fastest.
    #[arg(
        long,
        default_value_t = switchyard_dataplane::graph::VECTOR_SIZE as u16,
        value_parser = clap::value_parser!(u16).range(1..=256),
    )]
    pub rx_burst: u16,

    /// Also write the counters on exit as JSON to this file.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,

    /// Drop every packet with a loose or strict source route option (LSRR/SSRR), as Linux
    /// does by default and RFC 7126 advises. Without it the router follows source routes, as
    /// RFC 1812 5.2.4.1 requires by default: a packet addressed to it goes on to the route's
    /// next address, and it is the final destination of a completed route.
    #[arg(long)]
    pub drop_source_routed: bool,

    /// Send IPv6 router advertisements (RFC 4861 6.2) on every port with an IPv6 address:
    /// the router as a default router, its prefixes on-link (and autonomous, for /64s, so
    /// hosts configure addresses from them); and answer router solicitations. Off by
    /// default, as AdvSendAdvertisements is.
    #[arg(long)]
    pub ipv6_ra: bool,

    /// With --ipv6-ra: MaxRtrAdvInterval, the longest time between unsolicited
    /// advertisements, in seconds (4 to 1800; MinRtrAdvInterval is a third of it).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 600,
        requires = "ipv6_ra"
    )]
    pub ipv6_ra_interval: u16,

    /// With --ipv6-ra: the router lifetime advertised, in seconds (0: not a default router;
    /// else from the interval up to 9000; default three intervals).
    #[arg(long, value_name = "SECONDS", requires = "ipv6_ra")]
    pub ipv6_ra_lifetime: Option<u16>,

    /// With --ipv6-ra: include each port's MTU in its advertisements.
    #[arg(long, requires = "ipv6_ra")]
    pub ipv6_ra_mtu: bool,

    /// Send IPv4 ICMP router advertisements (RFC 1256 router discovery, which RFC 1812
    /// 4.3.3.10 asks routers to support) on every port with an IPv4 address, listing its
    /// addresses, to all-systems (224.0.0.1); and answer router solicitations (to all-routers,
    /// 224.0.0.2, or the limited broadcast) within 2 s. Off by default, as on Linux and most
    /// routers.
    #[arg(long)]
    pub ipv4_rdisc: bool,

    /// With --ipv4-rdisc: MaxAdvertisementInterval, the longest time between unsolicited
    /// advertisements, in seconds (4 to 1800; MinAdvertisementInterval is three quarters).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 600,
        requires = "ipv4_rdisc"
    )]
    pub ipv4_rdisc_interval: u16,

    /// With --ipv4-rdisc: the AdvertisementLifetime, in seconds (from the interval up to
    /// 9000; default three intervals).
    #[arg(long, value_name = "SECONDS", requires = "ipv4_rdisc")]
    pub ipv4_rdisc_lifetime: Option<u16>,

    /// With --ipv4-rdisc: the PreferenceLevel of the advertised addresses (signed; higher
    /// is preferred, -2147483648 means never a default router).
    #[arg(
        long,
        value_name = "LEVEL",
        default_value_t = 0,
        allow_negative_numbers = true,
        requires = "ipv4_rdisc"
    )]
    pub ipv4_rdisc_preference: i32,

    /// With --ipv4-rdisc: advertise to the limited broadcast address instead of 224.0.0.1.
    #[arg(long, requires = "ipv4_rdisc")]
    pub ipv4_rdisc_broadcast: bool,

    /// Worker threads, each with its own graph, polling its own queue of every port: dpdk
    /// sets up one RX/TX queue pair per worker on each port (spread by RSS, or by the vdev:
    /// `qpairs=N` for net_af_packet); afpacket joins one socket per worker to a
    /// `PACKET_FANOUT` group per interface. Neighbors learned by one worker are handed to the
    /// others; a packet of a connection another worker tracks (a Service's reply, say) is
    /// handed to that worker, and so is an ESP packet whose SA another worker keeps (each SA
    /// is used by one, spread by SPI); the first worker owns the --punt-tun device. afxdp and
    /// pcap have one.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=64),
    )]
    pub workers: u16,

    /// IPsec tunnels from SD-EWAN resources (IpsecSite, IpsecHost, IpsecProposal) in this
    /// YAML/JSON file or directory: runs the IKE daemon on the address facing the first remote
    /// peer and ESP in the dataplane. Needs --punt-tun (IKE reaches the daemon's sockets
    /// through the host stack).
    #[arg(long, value_name = "PATH", requires = "punt_tun")]
    pub ipsec: Option<PathBuf>,

    /// Where ESP crypto runs: `software` (ring and aws-lc-rs on the worker) or
    /// `cryptodev:DEVICE`, a DPDK cryptodev by name: a QAT function in production,
    /// `crypto_aesni_gcm0`, `crypto_aesni_mb0` or `crypto_openssl0` (software poll-mode
    /// drivers) elsewhere. The EAL must probe the device: add `--vdev DEVICE` to --eal for the
    /// software ones. With a dataplane other than dpdk the EAL is started from --eal for the
    /// cryptodev alone.
    #[arg(long, default_value = "software", value_parser = parse_crypto)]
    pub crypto: CryptoChoice,

    /// IKE fragmentation (RFC 7383): the largest IP datagram an IKE message may travel in
    /// before it is sent as Encrypted Fragments (both ends must announce support, which we
    /// do). Unset: 576 bytes over IPv4, 1280 over IPv6, as the RFC recommends; 0: no
    /// fragmentation (neither announced nor accepted). For --ipsec and the agent's
    /// --sdewan-purpose.
    #[arg(long, value_name = "BYTES")]
    pub ike_fragment_size: Option<usize>,
}

/// A VLAN subinterface from `--vlan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanSubinterface {
    /// Its name, `PORT.VID`.
    pub name: String,
    /// The port's index.
    pub parent: u16,
    /// The VLAN id.
    pub vid: u16,
}

impl RouterArgs {
    /// The VLAN subinterfaces `--vlan` declares, checked.
    pub fn vlan_subinterfaces(&self) -> anyhow::Result<Vec<VlanSubinterface>> {
        parse_vlans(&self.interfaces, &self.vlans)
    }

    /// The names of every interface, by interface index: the ports (`--interface`), then
    /// the VLAN subinterfaces (`--vlan`). What --address, --route, --mtu and --neighbor name.
    pub fn interface_names(&self) -> anyhow::Result<Vec<String>> {
        let mut names = self.interfaces.clone();
        names.extend(self.vlan_subinterfaces()?.into_iter().map(|v| v.name));
        Ok(names)
    }
}

/// Parses every `--vlan PORT.VID`: a port given with --interface, a VLAN id from 1 to 4094,
/// each subinterface once.
pub fn parse_vlans(ports: &[String], vlans: &[String]) -> anyhow::Result<Vec<VlanSubinterface>> {
    let mut out: Vec<VlanSubinterface> = Vec::with_capacity(vlans.len());
    for s in vlans {
        let (port, vid) = s
            .rsplit_once('.')
            .ok_or_else(|| anyhow!("--vlan {s:?}: expected PORT.VID, e.g. eth0.100"))?;
        if port.is_empty() {
            bail!("--vlan {s:?}: expected PORT.VID, e.g. eth0.100");
        }
        let digits = !vid.is_empty() && vid.bytes().all(|b| b.is_ascii_digit());
        if !digits || (vid.len() > 1 && vid.starts_with('0')) {
            bail!("--vlan {s:?}: {vid:?} is not a VLAN id (1 to 4094, without leading zeros)");
        }
        let vid = match vid.parse::<u16>() {
            Ok(v) if (1..=4094).contains(&v) => v,
            _ => bail!(
                "--vlan {s:?}: VLAN id {vid} is out of range (1 to 4094; 0 and 4095 are reserved)"
            ),
        };
        if ports.iter().any(|p| p == s) {
            bail!("--vlan {s:?}: already the name of a port (--interface)");
        }
        let parent = port_index(ports, port).with_context(|| format!("--vlan {s:?}"))?;
        if out.iter().any(|v| v.parent == parent && v.vid == vid) {
            bail!("--vlan {s:?}: given twice");
        }
        out.push(VlanSubinterface {
            name: s.clone(),
            parent,
            vid,
        });
    }
    Ok(out)
}

/// See [`RouterArgs::crypto`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CryptoChoice {
    Software,
    Cryptodev(String),
}

/// Parses `software` or `cryptodev:DEVICE`.
pub fn parse_crypto(s: &str) -> Result<CryptoChoice, String> {
    match s.split_once(':') {
        None if s == "software" => Ok(CryptoChoice::Software),
        Some(("cryptodev", device))
            if !device.is_empty() && !device.contains(char::is_whitespace) =>
        {
            Ok(CryptoChoice::Cryptodev(device.to_string()))
        }
        _ => Err(format!(
            "{s:?}: expected `software` or `cryptodev:DEVICE` (e.g. cryptodev:crypto_aesni_gcm0)"
        )),
    }
}

/// One `--nodeport-addresses` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    /// The node's addresses within this range.
    Range(IpNet),
    /// kube-proxy's `primary`: the node's primary address of each family (here the first
    /// `--address` of each).
    Primary,
}

/// Parses one `--nodeport-addresses` entry: a CIDR (`10.0.0.0/8`, host bits cleared), a bare
/// address, taken as the range of that one address, or `primary`.
pub fn node_port_range(s: &str) -> Result<NodePortAddress, String> {
    let s = s.trim();
    if s == "primary" {
        return Ok(NodePortAddress::Primary);
    }
    s.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(NodePortAddress::Range)
        .map_err(|_| format!("{s:?} is not a CIDR, an IP address (e.g. 10.0.0.0/8) or `primary`"))
}

/// A range of ports, both ends included (`--service-node-port-range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Parses a port range as the API server's `--service-node-port-range` does: `FIRST-LAST`,
/// `FIRST+COUNT` (FIRST up to FIRST+COUNT) or a single port; ports 1 to 65535, FIRST not
/// above LAST.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let s = s.trim();
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?}: {p:?} is not a port (1 to 65535)")),
            Ok(p) => Ok(p),
        }
    };
    let (first, last) = if let Some((a, b)) = s.split_once('-') {
        (port(a)?, port(b)?)
    } else if let Some((a, n)) = s.split_once('+') {
        let first = port(a)?;
        let count: u16 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {n:?} is not a port count"))?;
        let last = first
            .checked_add(count)
            .ok_or_else(|| format!("{s:?}: the range ends beyond port 65535"))?;
        (first, last)
    } else {
        let p = port(s).map_err(|_| format!("{s:?}: expected FIRST-LAST, e.g. 30000-32767"))?;
        (p, p)
    };
    if first > last {
        return Err(format!("{s:?}: the first port is above the last"));
    }
    Ok(PortRange { first, last })
}

/// Splits `NAME=VALUE`.
fn split_eq<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| anyhow!("{what} {s:?}: expected NAME=VALUE"))
}

/// Finds a port by name.
pub fn port_index(ports: &[String], name: &str) -> anyhow::Result<u16> {
    ports
        .iter()
        .position(|p| p == name)
        .map(|i| i as u16)
        .ok_or_else(|| {
            anyhow!(
                "no interface named {name:?} (interfaces: {})",
                ports.join(", ")
            )
        })
}

/// Parses `--address NAME=CIDR`.
pub fn parse_address(ports: &[String], s: &str) -> anyhow::Result<(u16, IpNet)> {
    let (name, cidr) = split_eq(s, "--address")?;
    let net: IpNet = cidr.parse().with_context(|| {
        format!("--address {s:?}: {cidr:?} is not an address with a prefix length")
    })?;
    Ok((port_index(ports, name)?, net))
}

/// Parses `--route PREFIX=...`.
pub fn parse_route(ports: &[String], s: &str) -> anyhow::Result<StaticRoute> {
    let (prefix, target) = split_eq(s, "--route")?;
    let prefix: IpNet = prefix
        .parse()
        .with_context(|| format!("--route {s:?}: {prefix:?} is not a prefix"))?;
    let target = match target {
        "blackhole" => RouteTarget::Blackhole,
        "unreachable" => RouteTarget::Unreachable,
        hops => {
            let mut out = Vec::new();
            for hop in hops.split(',') {
                let (gw, port) = match hop.split_once('@') {
                    Some((gw, name)) => (gw, Some(port_index(ports, name)?)),
                    None => (hop, None),
                };
                let gw =
                    if gw.is_empty() {
                        None
                    } else {
                        Some(gw.parse::<IpAddr>().with_context(|| {
                            format!("--route {s:?}: {gw:?} is not an IP address")
                        })?)
                    };
                if gw.is_none() && port.is_none() {
                    bail!("--route {s:?}: empty next hop");
                }
                out.push((gw, port));
            }
            RouteTarget::Via(out)
        }
    };
    Ok(StaticRoute { prefix, target })
}

/// Parses `--mtu NAME=BYTES`.
pub fn parse_mtu(ports: &[String], s: &str) -> anyhow::Result<(u16, u16)> {
    let (name, v) = split_eq(s, "--mtu")?;
    let mtu: u16 = v
        .parse()
        .with_context(|| format!("--mtu {s:?}: {v:?} is not a number of bytes"))?;
    if mtu < 576 {
        bail!("--mtu {s:?}: below the IPv4 minimum of 576 bytes");
    }
    Ok((port_index(ports, name)?, mtu))
}

/// Parses `--mac NAME=MAC`.
pub fn parse_port_mac(ports: &[String], s: &str) -> anyhow::Result<(u16, [u8; 6])> {
    let (name, v) = split_eq(s, "--mac")?;
    Ok((port_index(ports, name)?, parse_mac(v)?))
}

/// Parses `--neighbor NAME=IP,MAC`.
pub fn parse_neighbor(ports: &[String], s: &str) -> anyhow::Result<(u16, IpAddr, [u8; 6])> {
    let (name, v) = split_eq(s, "--neighbor")?;
    let (ip, mac) = v
        .split_once(',')
        .ok_or_else(|| anyhow!("--neighbor {s:?}: expected NAME=IP,MAC"))?;
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("--neighbor {s:?}: {ip:?} is not an IP address"))?;
    Ok((port_index(ports, name)?, ip, parse_mac(mac)?))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts
            .next()
            .ok_or_else(|| anyhow!("{s:?} is not a MAC address"))?;
        *b = u8::from_str_radix(p, 16).map_err(|_| anyhow!("{s:?} is not a MAC address"))?;
    }
    if parts.next().is_some() {
        bail!("{s:?} is not a MAC address");
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Vec<String> {
        vec!["c0".into(), "s0".into()]
    }

    #[test]
    fn nodeport_addresses_are_ranges_as_kube_proxys() {
        let net = |s: &str| NodePortAddress::Range(s.parse::<IpNet>().unwrap());
        assert_eq!(node_port_range("10.0.0.0/8"), Ok(net("10.0.0.0/8")));
        assert_eq!(node_port_range("10.1.2.3/8"), Ok(net("10.0.0.0/8")));
        assert_eq!(node_port_range(" 198.51.100.7"), Ok(net("198.51.100.7/32")));
        assert_eq!(node_port_range("2001:db8::1"), Ok(net("2001:db8::1/128")));
        assert_eq!(node_port_range("primary"), Ok(NodePortAddress::Primary));
        assert!(node_port_range("10.0.0.0/33").is_err());
        assert!(node_port_range("secondary").is_err());
    }

    #[test]
    fn node_port_ranges_parse_as_the_api_servers() {
        let r = |first, last| Ok(PortRange { first, last });
        assert_eq!(parse_port_range("30000-32767"), r(30000, 32767));
        assert_eq!(parse_port_range(" 30000 - 30001 "), r(30000, 30001));
        assert_eq!(parse_port_range("30000+2767"), r(30000, 32767));
        assert_eq!(parse_port_range("8080"), r(8080, 8080));
        for (bad, why) in [
            ("32767-30000", "above the last"),
            ("0-100", "not a port"),
            ("30000-65536", "not a port"),
            ("65000+1000", "beyond port 65535"),
            ("30000-", "not a port"),
            ("nodeports", "expected FIRST-LAST"),
            ("30000+x", "not a port count"),
        ] {
            let e = parse_port_range(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn routes_parse() {
        let r = parse_route(&ports(), "0.0.0.0/0=198.18.2.2,198.18.2.3@s0").unwrap();
        assert_eq!(
            r.target,
            RouteTarget::Via(vec![
                (Some("198.18.2.2".parse().unwrap()), None),
                (Some("198.18.2.3".parse().unwrap()), Some(1))
            ])
        );
        assert_eq!(
            parse_route(&ports(), "2001:db8::/32=@c0").unwrap().target,
            RouteTarget::Via(vec![(None, Some(0))])
        );
        assert_eq!(
            parse_route(&ports(), "203.0.113.0/24=blackhole")
                .unwrap()
                .target,
            RouteTarget::Blackhole
        );
        for bad in [
            "nope",
            "198.51.100.0/24=",
            "198.51.100.0/24=x",
            "198.51.100.0/24=198.51.100.1@zz",
            "x=198.51.100.1",
        ] {
            assert!(parse_route(&ports(), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probe_ports_parse() {
        let p = |s: &str| s.parse::<ProbePort>();
        assert_eq!(
            p("80/TCP"),
            Ok(ProbePort {
                protocol: 6,
                port: 80
            })
        );
        assert_eq!(
            p("53/udp"),
            Ok(ProbePort {
                protocol: 17,
                port: 53
            })
        );
        assert_eq!(
            p("8080"),
            Ok(ProbePort {
                protocol: 6,
                port: 8080
            })
        );
        assert_eq!(p("9/SCTP").map(|p| p.protocol), Ok(132));
        for bad in ["0/TCP", "70000", "80/ICMP", "http/TCP", ""] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vlans_parse() {
        let vlans = |v: &[&str]| {
            parse_vlans(
                &ports(),
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let ok = vlans(&["s0.100", "c0.100", "s0.4094", "s0.1"]).unwrap();
        assert_eq!(
            ok.iter().map(|v| (v.parent, v.vid)).collect::<Vec<_>>(),
            [(1, 100), (0, 100), (1, 4094), (1, 1)]
        );
        assert_eq!(ok[0].name, "s0.100");
        for (bad, says) in [
            (&["s0.0"][..], "out of range"),
            (&["s0.4095"], "out of range"),
            (&["s0.5000"], "out of range"),
            (&["s0.99999"], "out of range"),
            (&["zz.100"], "no interface named \"zz\""),
            (&["s0"], "expected PORT.VID"),
            (&[".100"], "expected PORT.VID"),
            (&["s0."], "not a VLAN id"),
            (&["s0.+5"], "not a VLAN id"),
            (&["s0.0100"], "leading zeros"),
            (&["s0.100", "s0.100"], "given twice"),
        ] {
            let err = format!("{:#}", vlans(bad).expect_err(bad[0]));
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn addresses_mtus_neighbors_parse() {
        assert_eq!(
            parse_address(&ports(), "s0=198.18.2.1/24").unwrap(),
            (1, "198.18.2.1/24".parse().unwrap())
        );
        assert!(parse_address(&ports(), "s0=198.18.2.1").is_err());
        assert!(parse_address(&ports(), "zz=198.18.2.1/24").is_err());
        assert_eq!(parse_mtu(&ports(), "c0=9000").unwrap(), (0, 9000));
        assert!(parse_mtu(&ports(), "c0=100").is_err());
        assert_eq!(
            parse_neighbor(&ports(), "c0=198.18.1.2,02:00:00:00:00:01")
                .unwrap()
                .2,
            [2, 0, 0, 0, 0, 1]
        );
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:01:02").is_err());
    }
}
