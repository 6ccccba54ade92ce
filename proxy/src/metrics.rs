//! `/metrics`: the agent's state in the Prometheus exposition formats.
//!
//! Nothing is counted here. The worker and the control plane already publish snapshots
//! ([`crate::state`]); a scrape turns the current ones into metric families with a
//! [`Collector`], so the cost of metrics is paid by whoever scrapes, never by the worker.
//!
//! Names follow Prometheus' rules: a `switchyard_` prefix, base units (`_seconds`,
//! `_bytes`) and `_total` on counters (the encoder adds unit and `_total` suffixes to the
//! names written below). Each part of the agent has its own section function; parts that
//! publish state later (ACLs, IPsec) add theirs to [`SECTIONS`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use switchyard_lb::service::{Frontend, Protocol};

use crate::state::{ControlSnapshot, DataplaneSnapshot, Shared};

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which exposition format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// The classic Prometheus text format, for clients that do not ask for OpenMetrics.
    Prometheus,
}

impl Format {
    /// The format an HTTP `Accept` header asks for: OpenMetrics when it is named at all.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// The registry the HTTP server renders on each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics read from `shared` at each scrape.
    pub fn new(shared: Arc<Shared>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AgentCollector { shared }));
        Metrics { registry }
    }

    /// The exposition text in `format`.
    pub fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

/// Reads the snapshots at scrape time.
#[derive(Debug)]
struct AgentCollector {
    shared: Arc<Shared>,
}

/// What a section of metrics reads.
struct Scrape<'a> {
    shared: &'a Shared,
    control: &'a ControlSnapshot,
    dataplane: Option<&'a DataplaneSnapshot>,
}

type Section = fn(&mut DescriptorEncoder<'_>, &Scrape<'_>) -> std::fmt::Result;

/// The sections, in output order.
const SECTIONS: &[Section] = &[
    agent_section,
    control_section,
    dataplane_section,
    services_section,
    acl_section,
    bgp_section,
    ipsec_section,
];

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let control = self.shared.control();
        let dataplane = self.shared.dataplane();
        let scrape = Scrape {
            shared: &self.shared,
            control: &control,
            dataplane: dataplane.as_deref(),
        };
        for section in SECTIONS {
            section(&mut encoder, &scrape)?;
        }
        Ok(())
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One unlabelled counter.
fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> std::fmt::Result {
    let m = ConstCounter::new(value);
    m.encode(enc.encode_descriptor(name, help, unit, m.metric_type())?)
}

/// One unlabelled gauge.
fn gauge<N>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let m = ConstGauge::new(value);
    m.encode(enc.encode_descriptor(name, help, unit, m.metric_type())?)
}

/// A counter family: one sample per label set.
fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family: one sample per label set.
fn gauge_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The BGP speaker, from the snapshot its thread refreshes once a second.
/// NetworkPolicy rule hits, named by ACL and by where each rule comes from. Counters are read
/// only when the worker's snapshot is of the tables the names come from.
fn acl_section(enc: &mut DescriptorEncoder<'_>, s: &Scrape<'_>) -> std::fmt::Result {
    let (Some(d), Some(tables)) = (s.dataplane, s.control.tables.as_ref()) else {
        return Ok(());
    };
    let Some(policy) = tables.policy.as_ref() else {
        return Ok(());
    };
    if d.tables_version != tables.version || d.acl_hits.len() != policy.acls.len() {
        return Ok(());
    }
    let mut rules = Vec::new();
    let mut defaults = Vec::new();
    for (acl, (hits, default)) in policy.acls.iter().zip(&d.acl_hits) {
        for (i, count) in hits.iter().enumerate() {
            let origin = acl
                .origins
                .get(i)
                .map(|o| o.to_string())
                .unwrap_or_default();
            rules.push((
                [
                    ("acl", acl.name.to_string()),
                    ("rule", i.to_string()),
                    ("origin", origin),
                ],
                *count,
            ));
        }
        defaults.push(([("acl", acl.name.to_string())], *default));
    }
    counter_family(
        enc,
        "switchyard_acl_rule_hits",
        "New flows a NetworkPolicy ACL rule allowed (first matching rule).",
        None,
        rules,
    )?;
    counter_family(
        enc,
        "switchyard_acl_denied",
        "New flows an ACL denied (no rule matched: the pod is isolated).",
        None,
        defaults,
    )
}

fn ipsec_section(enc: &mut DescriptorEncoder<'_>, s: &Scrape<'_>) -> std::fmt::Result {
    let Some(view) = s.shared.ipsec() else {
        return Ok(());
    };
    let state = view.daemon_state();
    let mut by_state: BTreeMap<String, i64> = BTreeMap::new();
    for (_, _, st) in &state.ike_sas {
        *by_state.entry(format!("{st:?}")).or_default() += 1;
    }
    gauge_family(
        enc,
        "switchyard_ipsec_ike_sas",
        "IKE SAs by state.",
        by_state.into_iter().map(|(st, n)| ([("state", st)], n)),
    )?;
    gauge(
        enc,
        "switchyard_ipsec_child_sas",
        "CHILD_SAs installed in the dataplane.",
        None,
        i64::try_from(state.child_sas.len()).unwrap_or(i64::MAX),
    )?;
    if !state.pools.is_empty() {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge_family(
            enc,
            "switchyard_ipsec_pool_leases",
            "Virtual IPs leased to peers from each address pool, by whether their IKE SA is up (online) or gone and the address kept for the peer's return (offline).",
            state.pools.iter().flat_map(|p| {
                [("online", p.online), ("offline", p.offline)].map(|(st, n)| {
                    ([("pool", p.name.clone()), ("state", st.to_string())], count(n))
                })
            }),
        )?;
        gauge_family(
            enc,
            "switchyard_ipsec_pool_addresses",
            "Addresses in each virtual IP pool.",
            state.pools.iter().map(|p| {
                (
                    [("pool", p.name.clone())],
                    i64::try_from(p.size).unwrap_or(i64::MAX),
                )
            }),
        )?;
    }
    let k = state.counters;
    counter_family(
        enc,
        "switchyard_ipsec_ike_events",
        "IKE events: SAs established, failed, rekeyed; messages refused by reason.",
        None,
        [
            ("established", k.established),
            ("failed", k.failed),
            ("auth_failure", k.auth_failures),
            ("no_proposal_chosen", k.no_proposal_chosen),
            ("invalid_ke", k.invalid_ke),
            ("ts_unacceptable", k.ts_unacceptable),
            ("malformed", k.rx_malformed),
            ("bad_version", k.rx_bad_version),
            ("unknown_spi", k.rx_unknown_spi),
            ("invalid_ike_spi_sent", k.tx_invalid_ike_spi),
            ("invalid_ike_spi_received", k.rx_invalid_ike_spi),
            ("integrity_failure", k.rx_integrity_failures),
            ("retransmit", k.retransmits),
            ("nat_keepalive", k.nat_keepalives),
            ("peer_moved", k.peer_moves),
            ("initial_contact_removal", k.initial_contact_removals),
            ("stale_init_request", k.stale_init_requests),
            ("cookie_sent", k.cookies_sent),
            ("error_answer_limited", k.unprotected_errors_limited),
            ("child_sa_installed", k.child_sas_installed),
            ("child_sa_rekeyed", k.child_sas_rekeyed),
            ("ike_sa_rekeyed", k.ike_sas_rekeyed),
            ("child_rekey_started", k.child_rekeys_started),
            ("child_rekey_collision", k.child_rekey_collisions),
            ("child_rekey_failure", k.child_rekey_failures),
            ("child_sa_expired", k.child_sas_expired),
            ("ike_rekey_started", k.ike_rekeys_started),
            ("ike_rekey_collision", k.ike_rekey_collisions),
            ("ike_rekey_failure", k.ike_rekey_failures),
            ("virtual_ip_leased", k.virtual_ips_leased),
            ("internal_address_failure", k.internal_address_failures),
            ("virtual_ip_failure", k.virtual_ip_failures),
            ("cp_malformed", k.cp_malformed),
            ("fragment_sent", k.tx_fragments),
            ("fragment_received", k.rx_fragments),
            ("fragment_dropped", k.rx_fragments_dropped),
            ("reassembled", k.rx_reassembled),
            ("seal_failure", k.tx_seal_failures),
            ("cert_rejected", k.cert_rejected),
        ]
        .into_iter()
        .map(|(event, n)| ([("event", event.to_string())], n)),
    )?;
    let tables = view.tables.load();
    let Some(sas) = tables.ipsec.as_deref() else {
        return Ok(());
    };
    let spi = |spi: u32| format!("{spi:08x}");
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    let mut drops = Vec::new();
    for p in &sas.outbound {
        let c = p.stats.snapshot();
        let labels = |extra: Option<&str>| {
            let mut l = vec![
                ("spi", spi(p.sa.spi)),
                ("direction", "outbound".to_string()),
            ];
            l.extend(extra.map(|r| ("reason", r.to_string())));
            l
        };
        packets.push((labels(None), c.packets));
        bytes.push((labels(None), c.bytes));
        drops.push((labels(Some("other")), c.other_drops));
    }
    for sa in &sas.inbound {
        let c = sa.stats.snapshot();
        let labels = |extra: Option<&str>| {
            let mut l = vec![
                ("spi", spi(sa.sa.spi)),
                ("direction", "inbound".to_string()),
            ];
            l.extend(extra.map(|r| ("reason", r.to_string())));
            l
        };
        packets.push((labels(None), c.packets));
        bytes.push((labels(None), c.bytes));
        for (reason, n) in [
            ("replay", c.replay_drops),
            ("auth", c.auth_failures),
            ("policy", c.policy_drops),
            ("other", c.other_drops),
        ] {
            drops.push((labels(Some(reason)), n));
        }
    }
    counter_family(
        enc,
        "switchyard_ipsec_sa_packets",
        "Packets encrypted (outbound) or decrypted (inbound) per SA.",
        None,
        packets,
    )?;
    counter_family(
        enc,
        "switchyard_ipsec_sa",
        "Inner bytes encrypted or decrypted per SA.",
        Some(&Unit::Bytes),
        bytes,
    )?;
    counter_family(
        enc,
        "switchyard_ipsec_sa_drops",
        "ESP packets dropped per SA, by reason (replayed, ICV failure, outside the selectors, other).",
        None,
        drops,
    )
}

fn bgp_section(enc: &mut DescriptorEncoder<'_>, s: &Scrape<'_>) -> std::fmt::Result {
    let b = s.shared.bgp();
    if !b.enabled {
        return Ok(());
    }
    let peer = |n: &switchyard_bgp::speaker::NeighborStatus| n.addr.to_string();
    gauge_family(
        enc,
        "switchyard_bgp_session_up",
        "1 while the BGP session with the peer is Established.",
        b.neighbors.iter().map(|n| {
            (
                [("peer", peer(n)), ("asn", n.asn.to_string())],
                i64::from(n.state == switchyard_bgp::fsm::State::Established),
            )
        }),
    )?;
    counter_family(
        enc,
        "switchyard_bgp_session_flaps",
        "Times the BGP session with the peer left Established.",
        None,
        b.neighbors.iter().map(|n| ([("peer", peer(n))], n.flaps)),
    )?;
    counter_family(
        enc,
        "switchyard_bgp_update_errors",
        "Malformed UPDATEs the session with the peer handled without a reset: as withdrawals \
         (RFC 7606 treat-as-withdraw), without the bad attributes (attribute discard), and \
         prefixes ignored as semantically incorrect (RFC 4271 6.3).",
        None,
        b.neighbors.iter().flat_map(|n| {
            [
                ("treat_as_withdraw", n.errors.treat_as_withdraw),
                ("attribute_discard", n.errors.attribute_discard),
                ("ignored_prefix", n.errors.ignored_prefixes),
            ]
            .map(|(kind, v)| ([("peer", peer(n)), ("kind", kind.to_string())], v))
        }),
    )?;
    counter_family(
        enc,
        "switchyard_bgp_notifications",
        "NOTIFICATIONs for errors on the session with the peer, sent and received \
         (administrative Cease not counted when sent).",
        None,
        b.neighbors.iter().flat_map(|n| {
            [
                ("sent", n.errors.notifications_sent),
                ("received", n.errors.notifications_received),
            ]
            .map(|(dir, v)| ([("peer", peer(n)), ("direction", dir.to_string())], v))
        }),
    )?;
    gauge_family(
        enc,
        "switchyard_bgp_prefixes_received",
        "Prefixes the peer announces to us (its Adj-RIB-In).",
        b.neighbors
            .iter()
            .map(|n| ([("peer", peer(n))], n.prefixes_in as i64)),
    )?;
    gauge_family(
        enc,
        "switchyard_bgp_prefixes_advertised",
        "Prefixes we announce to the peer (its Adj-RIB-Out).",
        b.neighbors
            .iter()
            .map(|n| ([("peer", peer(n))], n.prefixes_out as i64)),
    )?;
    gauge(
        enc,
        "switchyard_bgp_routes_installed",
        "Learned BGP prefixes installed in the dataplane FIB.",
        None,
        b.installed as u64,
    )?;
    let mut by_source = std::collections::BTreeMap::new();
    for n in &b.neighbors {
        let source = b.peer_sources.get(&n.addr).map_or("flag", |s| s.as_str());
        *by_source.entry(source).or_insert(0i64) += 1;
    }
    gauge_family(
        enc,
        "switchyard_bgp_peers",
        "Configured BGP peers by where they come from (flag, Node annotation, iBGP mesh).",
        by_source
            .into_iter()
            .map(|(source, n)| ([("source", source.to_string())], n)),
    )?;
    counter(
        enc,
        "switchyard_bgp_node_annotation_errors",
        "Bad Node BGP annotations seen (the node's last good settings stay in force).",
        None,
        b.annotation_errors,
    )?;
    if !b.restart.enabled {
        return Ok(());
    }
    gauge(
        enc,
        "switchyard_bgp_restart_deferral",
        "1 while route selection is deferred after our own graceful restart (RFC 4724).",
        None,
        u64::from(!b.restart.deferred.is_empty()),
    )?;
    gauge(
        enc,
        "switchyard_bgp_restored_routes",
        "Learned routes restored from the saved state into the FIB, awaiting route selection.",
        None,
        b.restart.restored_routes as u64,
    )
}

fn agent_section(enc: &mut DescriptorEncoder<'_>, s: &Scrape<'_>) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(
        "switchyard_build",
        "The version of the switchyard binary (always 1).",
        None,
        MetricType::Info,
    )?;
    m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
    gauge(
        enc,
        "process_start_time",
        "When the agent started, since the Unix epoch.",
        Some(&Unit::Seconds),
        unix_seconds(s.shared.started),
    )
}

fn control_section(enc: &mut DescriptorEncoder<'_>, s: &Scrape<'_>) -> std::fmt::Result {
    let c = s.control;
    gauge(
        enc,
        "switchyard_ready",
        "1 once the first full sync has been programmed into the dataplane.",
        None,
        i64::from(c.ready),
    )?;
    counter(
        enc,
        "switchyard_syncs",
        "Syncs of the dataplane tables from the cluster state.",
        None,
        c.syncs,
    )?;
    // kube-proxy's /healthz rule as a number: alert on it before the kubelet acts.
    let pending = c.pending_since.map_or(0.0, |since| {
        SystemTime::now()
            .duration_since(since)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    gauge(
        enc,
        "switchyard_sync_pending",
        "How long the oldest change seen has waited to be programmed (0: none waits).",
        Some(&Unit::Seconds),
        pending,
    )?;
    if let Some(t) = c.last_sync {
        gauge(
            enc,
            "switchyard_last_sync_timestamp",
            "When the tables were last programmed, since the Unix epoch.",
            Some(&Unit::Seconds),
            unix_seconds(t),
        )?;
    }
    let h = &c.sync_latency;
    let buckets: Vec<(f64, u64)> = h
        .bounds
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(h.counts.iter().copied())
        .collect();
    let mut m = enc.encode_descriptor(
        "switchyard_sync_duration",
        "From a change seen in the cluster state to its tables published to the dataplane.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &buckets, None)?;
    gauge(
        enc,
        "switchyard_sync_problems",
        "Objects or frontends skipped at the last sync for being invalid (see the logs).",
        None,
        c.problems.len() as u64,
    )?;
    if let Some(t) = &c.tables {
        gauge(
            enc,
            "switchyard_tables_version",
            "Version of the tables the control plane last published.",
            None,
            t.version,
        )?;
    }
    Ok(())
}

fn dataplane_section(enc: &mut DescriptorEncoder<'_>, s: &Scrape<'_>) -> std::fmt::Result {
    let Some(d) = s.dataplane else {
        return Ok(());
    };
    gauge(
        enc,
        "switchyard_dataplane_snapshot_timestamp",
        "When the worker last published its counters, since the Unix epoch.",
        Some(&Unit::Seconds),
        unix_seconds(d.taken_at),
    )?;
    counter(
        enc,
        "switchyard_rx_packets",
        "Packets received from the ports.",
        None,
        d.rx,
    )?;
    counter(
        enc,
        "switchyard_tx_packets",
        "Packets sent on the ports.",
        None,
        d.tx,
    )?;
    counter(
        enc,
        "switchyard_io_errors",
        "Failed receive or transmit calls.",
        None,
        d.io_errors,
    )?;
    counter_family(
        enc,
        "switchyard_node_packets",
        "Packets processed per graph node.",
        None,
        d.nodes.iter().map(|n| ([("node", n.name)], n.packets)),
    )?;
    counter_family(
        enc,
        "switchyard_node_vectors",
        "Vectors processed per graph node.",
        None,
        d.nodes.iter().map(|n| ([("node", n.name)], n.vectors)),
    )?;
    counter_family(
        enc,
        "switchyard_node_errors",
        "Packets counted by a graph node under a reason, mostly drops.",
        None,
        d.nodes.iter().flat_map(|n| {
            n.errors
                .iter()
                .map(move |(info, count)| ([("node", n.name), ("reason", info.key)], *count))
        }),
    )?;
    gauge(
        enc,
        "switchyard_neighbors",
        "Neighbor (ARP and NDP) entries.",
        None,
        d.neighbors.len() as u64,
    )?;
    gauge(
        enc,
        "switchyard_conntrack_entries",
        "Connections tracked now.",
        None,
        d.conntrack_len as u64,
    )?;
    gauge(
        enc,
        "switchyard_conntrack_entries_limit",
        "Capacity of the connection table.",
        None,
        u64::from(d.conntrack_capacity),
    )?;
    let ct = &d.conntrack;
    for (name, help, value) in [
        (
            "switchyard_conntrack_inserts",
            "Connections inserted.",
            ct.inserts,
        ),
        (
            "switchyard_conntrack_removals",
            "Connections removed (backend gone, flushes).",
            ct.removals,
        ),
        (
            "switchyard_conntrack_evictions",
            "Unexpired connections evicted to make room.",
            ct.evictions,
        ),
        (
            "switchyard_conntrack_expirations",
            "Connections removed when their timeout passed.",
            ct.expirations,
        ),
        (
            "switchyard_conntrack_full_drops",
            "New connections refused because the table was full.",
            ct.full_drops,
        ),
        (
            "switchyard_conntrack_clashes",
            "Inserts refused because the tuple was already tracked.",
            ct.clashes,
        ),
        (
            "switchyard_conntrack_invalid_packets",
            "Packets that did not fit their connection's state.",
            ct.invalid,
        ),
    ] {
        counter(enc, name, help, None, value)?;
    }
    gauge(
        enc,
        "switchyard_parked_packets",
        "Packets graph nodes keep while their ESP crypto runs on a device.",
        None,
        d.parked as u64,
    )?;
    if let Some((device, driver, c)) = &d.cryptodev {
        let labels = [("device", device.as_str()), ("driver", driver.as_str())];
        for (name, help, value) in [
            (
                "switchyard_cryptodev_operations",
                "Operations the ESP cryptodev completed.",
                c.operations,
            ),
            (
                "switchyard_cryptodev_failed",
                "Completed operations that failed: forged tags and ICVs, device errors.",
                c.failed,
            ),
            (
                "switchyard_cryptodev_software_calls",
                "Operations run in software instead of on the device.",
                c.software_calls,
            ),
            (
                "switchyard_cryptodev_abandoned",
                "Asynchronous operations the device never gave back.",
                c.abandoned,
            ),
        ] {
            counter_family(enc, name, help, None, std::iter::once((labels, value)))?;
        }
        gauge_family(
            enc,
            "switchyard_cryptodev_stuck_queue_pairs",
            "Queue pairs given up on after an operation never came back.",
            std::iter::once((labels, c.stuck_queue_pairs as i64)),
        )?;
    }
    Ok(())
}

/// Labels of one (frontend, backend) pair.
struct PairLabels {
    namespace: String,
    service: String,
    port: String,
    frontend: String,
    backend: String,
}

impl PairLabels {
    fn toward_backend(&self) -> [(&str, &str); 6] {
        self.with_direction("to_backend")
    }

    fn toward_client(&self) -> [(&str, &str); 6] {
        self.with_direction("from_backend")
    }

    fn with_direction<'a>(&'a self, direction: &'a str) -> [(&'a str, &'a str); 6] {
        let [a, b, c, d, e] = self.base();
        [a, b, c, d, e, ("direction", direction)]
    }

    fn base(&self) -> [(&str, &str); 5] {
        [
            ("namespace", &self.namespace),
            ("service", &self.service),
            ("port", &self.port),
            ("frontend", &self.frontend),
            ("backend", &self.backend),
        ]
    }
}

/// `addr:port/PROTO`, e.g. `198.51.100.10:80/TCP` or `[2001:db8::1]:53/UDP`.
pub fn frontend_label(f: &Frontend) -> String {
    let mut s = SocketAddr::new(f.addr, f.port).to_string();
    let _ = match Protocol::from_number(f.proto) {
        Some(Protocol::Tcp) => write!(s, "/TCP"),
        Some(Protocol::Udp) => write!(s, "/UDP"),
        Some(Protocol::Sctp) => write!(s, "/SCTP"),
        None => write!(s, "/{}", f.proto),
    };
    s
}

fn services_section(enc: &mut DescriptorEncoder<'_>, s: &Scrape<'_>) -> std::fmt::Result {
    let Some(d) = s.dataplane else {
        return Ok(());
    };
    let frontends = s
        .control
        .tables
        .as_ref()
        .and_then(|t| t.services.as_ref())
        .map(|svc| &svc.table.frontends);
    // One label set per frontend, shared by its backends.
    let mut by_frontend: HashMap<Frontend, (String, String, String, String)> = HashMap::new();
    let pairs: Vec<(PairLabels, &switchyard_dataplane::services::BackendCounters)> = d
        .backends
        .iter()
        .map(|(f, b, c)| {
            let (namespace, service, port, frontend) = by_frontend
                .entry(*f)
                .or_insert_with(|| {
                    let entry = frontends.and_then(|t| t.get(f));
                    (
                        entry
                            .map(|e| e.service.namespace.clone())
                            .unwrap_or_default(),
                        entry.map(|e| e.service.name.clone()).unwrap_or_default(),
                        entry.map(|e| e.port_name.to_string()).unwrap_or_default(),
                        frontend_label(f),
                    )
                })
                .clone();
            let labels = PairLabels {
                namespace,
                service,
                port,
                frontend,
                backend: SocketAddr::new(b.addr, b.port).to_string(),
            };
            (labels, c)
        })
        .collect();
    counter_family(
        enc,
        "switchyard_service_backend_connections",
        "Connections started per service frontend and backend.",
        None,
        pairs.iter().map(|(l, c)| (l.base(), c.connections)),
    )?;
    counter_family(
        enc,
        "switchyard_service_backend_packets",
        "Packets per service frontend and backend, each way.",
        None,
        pairs.iter().flat_map(|(l, c)| {
            [
                (l.toward_backend(), c.packets[0]),
                (l.toward_client(), c.packets[1]),
            ]
        }),
    )?;
    counter_family(
        enc,
        "switchyard_service_backend",
        "IP bytes per service frontend and backend, each way.",
        Some(&Unit::Bytes),
        pairs.iter().flat_map(|(l, c)| {
            [
                (l.toward_backend(), c.bytes[0]),
                (l.toward_client(), c.bytes[1]),
            ]
        }),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::IpAddr;

    use switchyard_dataplane::conntrack::Counters;
    use switchyard_dataplane::graph::{ErrorInfo, NodeCounters};
    use switchyard_dataplane::services::{BackendCounters, Services};
    use switchyard_dataplane::tables::Tables;
    use switchyard_lb::service::{
        BackendAddr, CompileOptions, Endpoint, Service, ServiceName, ServicePort, ServiceTable,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub(crate) fn sample_shared() -> Arc<Shared> {
        let service = Service {
            name: ServiceName {
                namespace: "default".into(),
                name: "we\"b\\x\ny".into(),
            },
            cluster_ips: vec![ip("198.51.100.10")],
            external_ips: vec![],
            load_balancer_ips: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: vec![Endpoint::ready(ip("198.18.2.3"), 8080, true)],
            }],
            affinity_timeout_secs: None,
            external_traffic_policy: Default::default(),
            internal_traffic_policy: Default::default(),
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            forwarding: Default::default(),
        };
        let (table, errors) =
            ServiceTable::compile(std::slice::from_ref(&service), &CompileOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        let rule = |peer: &str, protocol, ports| switchyard_dataplane::acl::AclRuleSpec {
            peer: peer.parse().unwrap(),
            protocol,
            ports,
        };
        let acl = switchyard_dataplane::policy::AclTable::new(
            "acl-1",
            vec![
                rule("198.18.1.1/32", None, (0, u16::MAX)),
                rule("198.18.1.0/24", Some(6), (8080, 8080)),
            ],
            false,
            vec!["node".into(), "demo/api-from-web ingress[0]".into()],
        );
        let tables = Tables {
            version: 7,
            services: Some(Arc::new(Services {
                table,
                ..Services::default()
            })),
            policy: Some(Arc::new(switchyard_dataplane::policy::PolicyTables {
                acls: vec![Arc::new(acl)],
                pods: [(
                    "198.18.2.3".parse().unwrap(),
                    switchyard_dataplane::policy::PodAcls {
                        ingress: Some(0),
                        egress: None,
                    },
                )]
                .into_iter()
                .collect(),
            })),
            ..Tables::build(7, vec![], &[]).unwrap()
        };
        let shared = Arc::new(Shared::default());
        shared.update_control(|c| {
            c.ready = true;
            c.syncs = 3;
            c.last_sync = Some(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
            c.sync_latency.observe(0.0015);
            c.sync_latency.observe(0.3);
            c.services = Arc::from([Arc::new(service)]);
            c.tables = Some(Arc::new(tables));
        });
        static ERRS: &[ErrorInfo] = &[ErrorInfo {
            key: "no_route",
            text: "no route",
        }];
        let frontend = Frontend {
            addr: ip("198.51.100.10"),
            proto: 6,
            port: 80,
        };
        shared.set_dataplane(DataplaneSnapshot {
            taken_at: SystemTime::now(),
            tables_version: 7,
            rx: 10,
            tx: 9,
            io_errors: 1,
            nodes: vec![NodeCounters {
                name: "ip4-lookup",
                vectors: 2,
                packets: 10,
                errors: vec![(ERRS[0], 4)],
            }],
            conntrack_len: 1,
            conntrack_capacity: 1024,
            conntrack: Counters {
                inserts: 5,
                full_drops: 2,
                ..Counters::default()
            },
            connections: vec![],
            backends: vec![
                (
                    frontend,
                    BackendAddr {
                        addr: ip("198.18.2.3"),
                        port: 8080,
                    },
                    BackendCounters {
                        connections: 2,
                        packets: [6, 4],
                        bytes: [600, 400],
                    },
                ),
                (
                    Frontend {
                        addr: ip("2001:db8::9"),
                        proto: 17,
                        port: 53,
                    },
                    BackendAddr {
                        addr: ip("2001:db8:2::3"),
                        port: 8053,
                    },
                    BackendCounters::default(),
                ),
            ],
            neighbors: vec![],
            acl_hits: vec![(vec![0, 5], 3)],
            parked: 2,
            cryptodev: Some((
                "crypto_aesni_gcm0".into(),
                "crypto_aesni_gcm".into(),
                switchyard_io::cryptodev::CryptodevStats {
                    operations: 40,
                    abandoned: 1,
                    ..Default::default()
                },
            )),
        });
        shared
    }

    #[test]
    fn openmetrics_names_labels_and_escaping() {
        let text = Metrics::new(sample_shared())
            .render(Format::OpenMetrics)
            .unwrap();
        let want = [
            "switchyard_build_info{version=\"",
            "# TYPE switchyard_ready gauge\nswitchyard_ready 1\n",
            "switchyard_syncs_total 3\n",
            "switchyard_last_sync_timestamp_seconds 1700000000.0\n",
            "# TYPE switchyard_sync_duration_seconds histogram\n",
            "# UNIT switchyard_sync_duration_seconds seconds\n",
            "switchyard_sync_duration_seconds_count 2\n",
            "switchyard_sync_duration_seconds_bucket{le=\"0.001\"} 0\n",
            "switchyard_sync_duration_seconds_bucket{le=\"0.002\"} 1\n",
            "switchyard_sync_duration_seconds_bucket{le=\"0.5\"} 2\n",
            "switchyard_sync_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "switchyard_rx_packets_total 10\n",
            "switchyard_io_errors_total 1\n",
            "switchyard_node_packets_total{node=\"ip4-lookup\"} 10\n",
            "switchyard_node_errors_total{node=\"ip4-lookup\",reason=\"no_route\"} 4\n",
            "switchyard_conntrack_entries 1\n",
            "switchyard_conntrack_entries_limit 1024\n",
            "switchyard_conntrack_inserts_total 5\n",
            "switchyard_conntrack_full_drops_total 2\n",
            "switchyard_parked_packets 2\n",
            "switchyard_cryptodev_operations_total{device=\"crypto_aesni_gcm0\",\
             driver=\"crypto_aesni_gcm\"} 40\n",
            "switchyard_cryptodev_abandoned_total{device=\"crypto_aesni_gcm0\",\
             driver=\"crypto_aesni_gcm\"} 1\n",
            "switchyard_acl_rule_hits_total{acl=\"acl-1\",rule=\"1\",origin=\"demo/api-from-web ingress[0]\"} 5\n",
            "switchyard_acl_denied_total{acl=\"acl-1\"} 3\n",
            // The name's quote, backslash and newline are escaped.
            "switchyard_service_backend_connections_total{namespace=\"default\",\
             service=\"we\\\"b\\\\x\\ny\",port=\"http\",frontend=\"198.51.100.10:80/TCP\",\
             backend=\"198.18.2.3:8080\"} 2\n",
            "switchyard_service_backend_packets_total{namespace=\"default\",\
             service=\"we\\\"b\\\\x\\ny\",port=\"http\",frontend=\"198.51.100.10:80/TCP\",\
             backend=\"198.18.2.3:8080\",direction=\"from_backend\"} 4\n",
            "switchyard_service_backend_bytes_total{namespace=\"default\",\
             service=\"we\\\"b\\\\x\\ny\",port=\"http\",frontend=\"198.51.100.10:80/TCP\",\
             backend=\"198.18.2.3:8080\",direction=\"to_backend\"} 600\n",
            // A frontend no longer in the tables keeps its counters, without a service.
            "switchyard_service_backend_packets_total{namespace=\"\",service=\"\",port=\"\",\
             frontend=\"[2001:db8::9]:53/UDP\",backend=\"[2001:db8:2::3]:8053\",\
             direction=\"to_backend\"} 0\n",
        ];
        for w in want {
            assert!(text.contains(w), "missing {w:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_text_for_plain_clients() {
        let m = Metrics::new(sample_shared());
        let text = m.render(Format::Prometheus).unwrap();
        assert!(text.contains("switchyard_syncs_total 3\n"), "{text}");
        assert!(text.contains("switchyard_build_info{version="), "{text}");
        assert!(!text.contains("# EOF"));
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn before_any_snapshot_only_control_metrics() {
        let text = Metrics::new(Arc::new(Shared::default()))
            .render(Format::OpenMetrics)
            .unwrap();
        assert!(text.contains("switchyard_ready 0\n"), "{text}");
        assert!(!text.contains("switchyard_last_sync_timestamp"), "{text}");
        assert!(!text.contains("switchyard_rx_packets"), "{text}");
    }

    /// A shared state with a BGP speaker that has one session up and one down.
    pub(crate) fn bgp_shared() -> Arc<Shared> {
        use crate::agent::bgp::nodes::PeerSource;
        use switchyard_bgp::speaker::{NeighborStatus, RouteEntry, RoutePath};
        let shared = Arc::new(Shared::default());
        let neighbor = |addr: &str, up: bool| NeighborStatus {
            addr: addr.parse().unwrap(),
            asn: 65001,
            state: if up {
                switchyard_bgp::fsm::State::Established
            } else {
                switchyard_bgp::fsm::State::Active
            },
            uptime: up.then_some(std::time::Duration::from_secs(3725)),
            prefixes_in: if up { 3 } else { 0 },
            prefixes_out: if up { 2 } else { 0 },
            flaps: if up { 0 } else { 4 },
            last_error: (!up).then(|| "hold timer expired".to_string()),
            errors: switchyard_bgp::fsm::ErrorCounters {
                treat_as_withdraw: if up { 2 } else { 0 },
                ..Default::default()
            },
        };
        let path = |nh: &str, best: bool| RoutePath {
            peer: Some("198.18.2.2".parse().unwrap()),
            next_hop: Some(nh.parse().unwrap()),
            as_path: vec![65001, 65010],
            local_pref: None,
            med: Some(5),
            best,
            multipath: true,
            stale: false,
            restored: false,
        };
        shared.update_bgp(|b| {
            b.enabled = true;
            b.local_as = 65000;
            b.router_id = Some("198.18.1.1".parse().unwrap());
            b.neighbors = vec![neighbor("198.18.2.2", true), neighbor("198.18.2.3", false)];
            b.routes = vec![RouteEntry {
                prefix: "203.0.113.0/24".parse().unwrap(),
                paths: vec![path("198.18.2.2", true), path("198.18.2.3", false)],
            }];
            b.routes_total = 1;
            b.advertised = 2;
            b.installed = 1;
            b.peer_sources = [
                ("198.18.2.2".parse().unwrap(), PeerSource::Flag),
                ("198.18.2.3".parse().unwrap(), PeerSource::Mesh),
            ]
            .into();
            b.annotation_errors = 2;
            b.annotation_problems =
                vec!["Node node-a: kube-router.io/peer.asns: \"0\" is not an AS number".into()];
        });
        shared
    }

    /// Our own graceful restart: the deferral gauge and the restored routes, only with
    /// `--bgp-state-dir`.
    #[test]
    fn bgp_restart_gauges() {
        let shared = bgp_shared();
        let text = Metrics::new(Arc::clone(&shared))
            .render(Format::OpenMetrics)
            .unwrap();
        assert!(!text.contains("switchyard_bgp_restart_deferral"), "{text}");
        shared.update_bgp(|b| {
            b.restart = switchyard_bgp::speaker::RestartStatus {
                enabled: true,
                restarted: true,
                deferred: vec![switchyard_bgp::config::Family::Ipv4Unicast],
                waiting_for: vec!["198.18.2.2".parse().unwrap()],
                deferral_left: Some(std::time::Duration::from_secs(300)),
                restored_routes: 7,
                start_note: String::new(),
            }
        });
        let text = Metrics::new(shared).render(Format::OpenMetrics).unwrap();
        assert!(
            text.contains("switchyard_bgp_restart_deferral 1\n"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_bgp_restored_routes 7\n"),
            "{text}"
        );
    }

    #[test]
    fn bgp_section() {
        let text = Metrics::new(Arc::new(Shared::default()))
            .render(Format::OpenMetrics)
            .unwrap();
        assert!(!text.contains("switchyard_bgp"), "{text}");
        let text = Metrics::new(bgp_shared())
            .render(Format::OpenMetrics)
            .unwrap();
        for w in [
            "switchyard_bgp_session_up{peer=\"198.18.2.2\",asn=\"65001\"} 1\n",
            "switchyard_bgp_session_up{peer=\"198.18.2.3\",asn=\"65001\"} 0\n",
            "switchyard_bgp_session_flaps_total{peer=\"198.18.2.3\"} 4\n",
            "switchyard_bgp_update_errors_total{peer=\"198.18.2.2\",kind=\"treat_as_withdraw\"} 2\n",
            "switchyard_bgp_update_errors_total{peer=\"198.18.2.2\",kind=\"ignored_prefix\"} 0\n",
            "switchyard_bgp_notifications_total{peer=\"198.18.2.3\",direction=\"received\"} 0\n",
            "switchyard_bgp_prefixes_received{peer=\"198.18.2.2\"} 3\n",
            "switchyard_bgp_prefixes_advertised{peer=\"198.18.2.2\"} 2\n",
            "switchyard_bgp_routes_installed 1\n",
            "switchyard_bgp_peers{source=\"flag\"} 1\n",
            "switchyard_bgp_peers{source=\"mesh\"} 1\n",
            "switchyard_bgp_node_annotation_errors_total 2\n",
        ] {
            assert!(text.contains(w), "missing {w:?} in\n{text}");
        }
    }
}
