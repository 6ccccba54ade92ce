#!/usr/bin/env bash
# Issue 4: rule-programming time and first-packet latency with N ClusterIP Services (ten
# endpoints each), Switchyard against the same Services written as kube-proxy writes them, all
# measured in one run.
#
#   node ns  kp0 198.51.100.1/24 ── veth ── kp1 198.51.100.2/24  backend ns
#            the kube-proxy rulesets are         `local 198.19.0.0/16 dev lo`: every endpoint
#            loaded here; routes to the          address is local; one listener per endpoint
#            VIPs and endpoints via kp1          port (8080..8084) accepts and closes
#
# For each N (default 1000 5000 10000 30000):
#   1. generate the Services (VIP 198.18.128.0 + i, port 80/TCP; endpoint j of Service i is
#      198.19.0.0 + (10i+j) mod 65536, port 8080 + (10i+j) / 65536) twice, as kube-proxy's
#      iptables-restore input and as its nftables transaction (layouts from kubernetes/kubernetes
#      pkg/proxy/iptables/proxier.go and pkg/proxy/nftables/proxier.go; see benches/README.md);
#   2. nft: time `nft -f` of the whole transaction (kube-proxy's full sync) in the node
#      namespace, median of up to LOAD_RUNS runs (one when a run takes over RUN_CUTOFF s), each
#      into an empty namespace; a run over NFT_TIMEOUT s is stopped and larger N are not tried.
#      If the ruleset could not be loaded in one transaction and N <= NFT_CHUNKED_MAX, it is
#      loaded in transactions of CHUNK Services (the datapath result is the same) for the
#      latency figure; above that the nft latency is not measured (on kernel 6.18 / nft 1.0.6 the
#      chunked load of 30000 Services took 12.5 minutes);
#   3. first packet through the kernel: after a settling pause and 300 untimed connections,
#      SAMPLES TCP connect()s from the node namespace to VIPs of random Services (python3,
#      time.perf_counter around connect(), RST on close), p50/p99;
#   4. the same with iptables: kube-proxy's jump rules in the built-in chains (untimed, as
#      kube-proxy sets them up once), then `iptables-restore --noflush --counters` of the
#      filter+nat input timed (IPT_TIMEOUT), then the connect()s;
# then runs examples/service_scale.rs for the same N (programming time and in-graph first-packet
# latency of Switchyard) and prints one table.
#
# usage: benches/kube_proxy_compare.sh [N...]        (each N at most 32768)
# Environment: SAMPLES (2000), LOAD_RUNS (3), RUN_CUTOFF (15), NFT_TIMEOUT (60), IPT_TIMEOUT
# (300), CHUNK (1000), NFT_CHUNKED_MAX (10000), IPTABLES_RESTORE (default iptables-legacy-restore if present, else
# iptables-restore), SERVICE_SCALE (the example binary; default built with cargo into
# CARGO_TARGET_DIR), JSON_OUT (file for the combined results as JSON).
#
# Network safety: two namespaces created here (the veth is created inside them), addresses from
# 198.18.0.0/15 and 198.51.100.0/24 only, rulesets loaded only inside the node namespace with
# `ip netns exec`; the root namespace is never touched; everything is removed on exit. Every
# external command is bounded by `timeout`, every loop by a count. Installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }

missing=()
for c in ip nft python3 timeout; do command -v "$c" >/dev/null || missing+=("$c"); done
if [ -z "${IPTABLES_RESTORE:-}" ]; then
  if command -v iptables-legacy-restore >/dev/null; then
    IPTABLES_RESTORE=iptables-legacy-restore
  else
    IPTABLES_RESTORE=iptables-restore
  fi
fi
command -v "$IPTABLES_RESTORE" >/dev/null || missing+=("$IPTABLES_RESTORE")
IPT="${IPTABLES_RESTORE%-restore}"
command -v "$IPT" >/dev/null || missing+=("$IPT")
if [ "${#missing[@]}" -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install them first, e.g.: apt-get install iproute2 nftables iptables python3 coreutils" >&2
  echo "(scripts/install-deps.sh lists nftables and iptables)" >&2
  exit 1
fi

SAMPLES="${SAMPLES:-2000}"
LOAD_RUNS="${LOAD_RUNS:-3}"
RUN_CUTOFF="${RUN_CUTOFF:-15}"
NFT_TIMEOUT="${NFT_TIMEOUT:-60}"
IPT_TIMEOUT="${IPT_TIMEOUT:-300}"
CHUNK="${CHUNK:-1000}"
NFT_CHUNKED_MAX="${NFT_CHUNKED_MAX:-10000}"
NS_LIST=("$@")
[ "$#" -gt 0 ] || NS_LIST=(1000 5000 10000 30000)
for n in "${NS_LIST[@]}" "$SAMPLES" "$LOAD_RUNS" "$RUN_CUTOFF" "$NFT_TIMEOUT" "$IPT_TIMEOUT" "$CHUNK" "$NFT_CHUNKED_MAX"; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || { echo "not a positive integer: $n" >&2; exit 2; }
done
for n in "${NS_LIST[@]}"; do
  [ "$n" -le 32768 ] || { echo "N=$n: at most 32768 Services (198.18.128.0/17)" >&2; exit 2; }
done
[ "$LOAD_RUNS" -le 10 ] || LOAD_RUNS=10
[ "$SAMPLES" -le 20000 ] || SAMPLES=20000

TARGET="${CARGO_TARGET_DIR:-target}"
if [ -z "${SERVICE_SCALE:-}" ]; then
  cargo build --release -q -p switchyard-benches --example service_scale
  SERVICE_SCALE="$TARGET/release/examples/service_scale"
fi
SERVICE_SCALE="$(realpath "$SERVICE_SCALE")"

NODE="sykpc-node-$$" BACK="sykpc-back-$$"
WORK="$(mktemp -d /tmp/sy-kpc-bench.XXXXXX)"
SERVER_PID=""
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  ip netns del "$NODE" 2>/dev/null || true
  ip netns del "$BACK" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers (written to the work directory) ----------------------------------------------------

# The rulesets. Facts about kube-proxy's layout come from its proxier.go files (the rules, chain
# and map names, hashes for chain names, the probabilities, the large-cluster mode that drops
# per-endpoint comments above 1000 endpoints); the text below is written for this bench.
cat >"$WORK/gen.py" <<'EOF'
import base64, hashlib, ipaddress, os, sys

n, out, chunk = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
VIP0 = int(ipaddress.IPv4Address("198.18.128.0"))
EP0 = int(ipaddress.IPv4Address("198.19.0.0"))
POD_CIDR = "203.0.113.0/24"  # the cluster CIDR of the local-traffic detector: the node's own
SVC_CIDR = "198.18.128.0/17"  # connections are not from it, so they get masqueraded, as on a node
EPS = 10
MARK = "0x4000"


def addr(x):
    return str(ipaddress.IPv4Address(x))


def b32(s):
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()


def services():
    for i in range(n):
        name = "svc-%d" % i
        eps = [(addr(EP0 + k % 65536), 8080 + k // 65536) for k in range(i * EPS, i * EPS + EPS)]
        yield name, "bench/%s:http" % name, addr(VIP0 + i), eps


# iptables-restore input: filter and nat tables, as a full sync writes them.
large = n * EPS > 1000  # kube-proxy's large-cluster mode: no comments on SVC/SEP rules
with open(os.path.join(out, "iptables.rules"), "w") as f:
    w = f.write
    w("*filter\n")
    for c in ("KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL",
              "KUBE-FORWARD", "KUBE-PROXY-FIREWALL"):
        w(":%s - [0:0]\n" % c)
    w('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8'
      " ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n")
    w("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n")
    w('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark %s/%s'
      " -j ACCEPT\n" % (MARK, MARK))
    w('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack'
      " --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
    w("COMMIT\n*nat\n")
    for c in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
        w(":%s - [0:0]\n" % c)
    rules = []
    for name, spn, vip, eps in services():
        svc = "KUBE-SVC-" + b32(spn + "tcp")[:16]
        w(":%s - [0:0]\n" % svc)
        cm = "" if large else " -m comment --comment %s" % spn
        rules.append('-A KUBE-SERVICES -m comment --comment "%s cluster IP" -m tcp -p tcp -d %s'
                     " --dport 80 -j %s\n" % (spn, vip, svc))
        rules.append('-A %s -m comment --comment "%s cluster IP" -m tcp -p tcp -d %s --dport 80'
                     " ! -s %s -j KUBE-MARK-MASQ\n" % (svc, spn, vip, POD_CIDR))
        for j, (a, p) in enumerate(eps):
            sep = "KUBE-SEP-" + b32(spn + "tcp" + "%s:%d" % (a, p))[:16]
            w(":%s - [0:0]\n" % sep)
            if j < len(eps) - 1:
                rules.append("-A %s%s -m statistic --mode random --probability %0.10f -j %s\n"
                             % (svc, cm, 1.0 / (len(eps) - j), sep))
            else:
                rules.append("-A %s%s -j %s\n" % (svc, cm, sep))
            rules.append("-A %s%s -s %s -j KUBE-MARK-MASQ\n" % (sep, cm, a))
            rules.append("-A %s%s -m tcp -p tcp -j DNAT --to-destination %s:%d\n" % (sep, cm, a, p))
    w("-A KUBE-POSTROUTING -m mark ! --mark %s/%s -j RETURN\n" % (MARK, MARK))
    w("-A KUBE-POSTROUTING -j MARK --xor-mark %s\n" % MARK)
    w('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
      " -j MASQUERADE --random-fully\n")
    w("-A KUBE-MARK-MASQ -j MARK --or-mark %s\n" % MARK)
    f.writelines(rules)
    w('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be'
      ' the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n')
    w("COMMIT\n")

# nftables: one transaction in the command form knftables sends to `nft -f`.
T = "ip kube-proxy"


def nh(s):
    return b32(s)[:8] + "-" + s


head = []
h = head.append
h('add table %s { comment "rules for kube-proxy" ; }\n' % T)
# Priorities as numbers (dstnat = -100, srcnat = 100): nft 1.0.6 takes the names only on nat
# hooks.
for name, ty, hook, prio in (
        ("filter-prerouting", "filter", "prerouting", -110), ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110), ("filter-output", "filter", "output", -110),
        ("filter-output-post-dnat", "filter", "output", -90),
        ("nat-prerouting", "nat", "prerouting", -100), ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100)):
    h("add chain %s %s { type %s hook %s priority %d ; }\nflush chain %s %s\n"
      % (T, name, ty, hook, prio, T, name))
made = set()


def chain(c, out):
    if c not in made:
        made.add(c)
        out.append("add chain %s %s\nflush chain %s %s\n" % (T, c, T, c))


for dst, src, extra in (
        ("nodeport-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-forward", "ct state new "),
        ("service-endpoints-check", "filter-output", "ct state new "),
        ("firewall-check", "filter-prerouting", "ct state new "),
        ("firewall-check", "filter-output", "ct state new "),
        ("services", "nat-output", ""), ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
        ("cluster-ips-check", "filter-forward", "ct state new "),
        ("cluster-ips-check", "filter-output-post-dnat", "ct state new ")):
    chain(dst, head)
    h("add rule %s %s %sjump %s\n" % (T, src, extra, dst))
for c in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
    chain(c, head)
h("add rule %s mark-for-masquerade mark set mark or %s\n" % (T, MARK))
h("add rule %s masquerading mark and %s == 0 return\n" % (T, MARK))
h("add rule %s masquerading mark set mark xor %s\n" % (T, MARK))
h("add rule %s masquerading masquerade fully-random\n" % T)
h('add set %s cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }\n' % T)
h('add rule %s cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid'
  ' ports of ClusterIPs"\n' % T)
h('add rule %s cluster-ips-check ip daddr { %s } drop comment "Drop traffic to unallocated'
  ' ClusterIPs"\n' % (T, SVC_CIDR))
h("add map %s no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ;"
  ' comment "vmap to drop or reject packets to services with no endpoints" ; }\n' % T)
h("add map %s no-endpoint-nodeports { type inet_proto . inet_service : verdict ;"
  ' comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }\n' % T)
h('add chain %s reject-chain { comment "helper for @no-endpoint-services /'
  ' @no-endpoint-nodeports" ; }\nflush chain %s reject-chain\n' % (T, T))
h("add rule %s reject-chain reject\n" % T)
h("add rule %s service-endpoints-check ip daddr . meta l4proto . th dport vmap"
  " @no-endpoint-services\n" % T)
h("add rule %s nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap"
  " @no-endpoint-nodeports\n" % T)
h("add map %s firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ;"
  ' comment "destinations that are subject to LoadBalancerSourceRanges" ; }\n' % T)
h("add rule %s firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n" % T)
h("add map %s service-ips { type ipv4_addr . inet_proto . inet_service : verdict ;"
  ' comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }\n' % T)
h("add map %s service-nodeports { type inet_proto . inet_service : verdict ;"
  ' comment "NodePort traffic" ; }\n' % T)
h("add rule %s services ip daddr . meta l4proto . th dport vmap @service-ips\n" % T)
h("add rule %s services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport"
  " vmap @service-nodeports\n" % T)
for kind, m in (("set", "cluster-ips"), ("map", "service-ips"), ("map", "service-nodeports"),
                ("map", "no-endpoint-services"), ("map", "no-endpoint-nodeports"),
                ("map", "firewall-ips")):
    h("flush %s %s %s\n" % (kind, T, m))

full = open(os.path.join(out, "nft.rules"), "w")
full.writelines(head)
part, count, parts = list(head), 0, 0


def flush_part():
    global part, count, parts
    if part:
        with open(os.path.join(out, "nft.part%04d.rules" % parts), "w") as f:
            f.writelines(part)
        parts += 1
    part, count = [], 0


for name, spn, vip, eps in services():
    base = "bench/%s/tcp/http" % name
    svc = "service-" + nh(base)
    epch = ["endpoint-" + nh("%s__%s/%d" % (base, a, p)) for a, p in eps]
    lines = []
    for c in epch:
        chain(c, lines)
    chain(svc, lines)
    lines.append("add element %s cluster-ips { %s }\n" % (T, vip))
    lines.append("add element %s service-ips { %s . tcp . 80 : goto %s }\n" % (T, vip, svc))
    lines.append("add rule %s %s ip daddr %s tcp dport 80 ip saddr != %s jump mark-for-masquerade\n"
                 % (T, svc, vip, POD_CIDR))
    lines.append("add rule %s %s numgen random mod %d vmap { %s }\n"
                 % (T, svc, len(eps), " , ".join("%d : goto %s" % (j, c) for j, c in enumerate(epch))))
    for (a, p), c in zip(eps, epch):
        lines.append("add rule %s %s ip saddr %s jump mark-for-masquerade\n" % (T, c, a))
        lines.append("add rule %s %s meta l4proto tcp dnat to %s:%d\n" % (T, c, a, p))
    full.writelines(lines)
    part.extend(lines)
    count += 1
    if count == chunk:
        flush_part()
flush_part()
full.close()
EOF

# Backend: accepts on every endpoint port and closes.
cat >"$WORK/server.py" <<'EOF'
import selectors, socket
sel = selectors.DefaultSelector()
for port in range(8080, 8085):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select(1.0):
        try:
            c, _ = key.fileobj.accept()
            c.close()
        except OSError:
            pass
EOF

# Client: connect() latency to random Services' VIPs (or straight to endpoints, "direct").
cat >"$WORK/client.py" <<'EOF'
import ipaddress, json, random, socket, struct, sys, time
mode, n, samples, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
VIP0 = int(ipaddress.IPv4Address("198.18.128.0"))
EP0 = int(ipaddress.IPv4Address("198.19.0.0"))
rng = random.Random(seed)


def target():
    i = rng.randrange(n)
    if mode == "vip":
        return (str(ipaddress.IPv4Address(VIP0 + i)), 80)
    k = i * 10 + rng.randrange(10)
    return (str(ipaddress.IPv4Address(EP0 + k % 65536)), 8080 + k // 65536)


LINGER = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT, no port exhaustion


def one(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER)
    s.settimeout(2.0)
    t0 = time.perf_counter()
    try:
        s.connect(addr)
        ok = True
    except OSError:
        ok = False
    dt = time.perf_counter() - t0
    s.close()
    return ok, dt


warm = [target() for _ in range(min(100, samples))]
todo = [target() for _ in range(samples)]
for a in warm:
    one(a)
lat, fail = [], 0
for a in todo:
    ok, dt = one(a)
    if ok:
        lat.append(dt * 1e6)
    else:
        fail += 1
lat.sort()


def pct(p):
    return lat[min(len(lat) - 1, round((len(lat) - 1) * p))] if lat else float("nan")


print(json.dumps({"p50_us": pct(0.5), "p99_us": pct(0.99),
                  "mean_us": sum(lat) / len(lat) if lat else float("nan"),
                  "ok": len(lat), "fail": fail}))
EOF

# Runs a command and prints its wall-clock time in ms (inside the namespace, so `ip netns exec`
# itself is not counted).
cat >"$WORK/timed.sh" <<'EOF'
s=$EPOCHREALTIME
"$@" >/dev/null || exit $?
e=$EPOCHREALTIME
us=$(( ${e/./} - ${s/./} ))
printf '%d.%03d\n' $((us / 1000)) $((us % 1000))
EOF

inode() { ip netns exec "$NODE" "$@"; }
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }   # N key value

median() { python3 -c 'import sys; v=sorted(float(x) for x in sys.argv[1:]); print("%.1f" % v[len(v)//2])' "$@"; }

# --- topology -----------------------------------------------------------------------------------
ip netns add "$NODE"
ip netns add "$BACK"
for ns in "$NODE" "$BACK"; do
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done
ip -n "$NODE" link add kp0 type veth peer name kp1 netns "$BACK"
ip -n "$NODE" addr add 198.51.100.1/24 dev kp0
ip -n "$BACK" addr add 198.51.100.2/24 dev kp1
ip -n "$NODE" link set kp0 up
ip -n "$BACK" link set kp1 up
ip -n "$NODE" route add 198.18.128.0/17 via 198.51.100.2 dev kp0
ip -n "$NODE" route add 198.19.0.0/16 via 198.51.100.2 dev kp0
ip -n "$BACK" route add local 198.19.0.0/16 dev lo
ip netns exec "$BACK" timeout 3600 python3 -u "$WORK/server.py" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do grep -q ready "$WORK/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$WORK/server.log" || { echo "backend server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }

echo "== $(uname -r), $(nft --version), $($IPT --version); default iptables: $(iptables --version 2>/dev/null || echo none)"
echo "== iptables ruleset loaded with $IPTABLES_RESTORE; samples per latency figure: $SAMPLES"

# Kernel floor: connect() straight to endpoints with no ruleset at all.
base="$(inode timeout 300 python3 "$WORK/client.py" direct 30000 "$SAMPLES" 7)"
put 0 baseline "$base"
echo "   no ruleset, connect() to endpoints directly: $base"

nft_reset() { inode nft delete table ip kube-proxy 2>/dev/null || true; }
ipt_reset() {
  for t in nat filter; do inode "$IPT" -w 5 -t "$t" -F; inode "$IPT" -w 5 -t "$t" -X; done
}
# kube-proxy's jump rules from the built-in chains (it ensures these once, outside the restore).
ipt_jumps() {
  local c
  for c in KUBE-SERVICES KUBE-NODEPORTS KUBE-POSTROUTING KUBE-MARK-MASQ; do inode "$IPT" -w 5 -t nat -N "$c"; done
  for c in KUBE-SERVICES KUBE-EXTERNAL-SERVICES KUBE-NODEPORTS KUBE-FORWARD KUBE-PROXY-FIREWALL KUBE-FIREWALL; do
    inode "$IPT" -w 5 -t filter -N "$c"
  done
  inode "$IPT" -w 5 -t nat -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  inode "$IPT" -w 5 -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  inode "$IPT" -w 5 -t nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
  inode "$IPT" -w 5 -t filter -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
  inode "$IPT" -w 5 -t filter -A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
  inode "$IPT" -w 5 -t filter -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
  inode "$IPT" -w 5 -t filter -A INPUT -j KUBE-FIREWALL
  inode "$IPT" -w 5 -t filter -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
  inode "$IPT" -w 5 -t filter -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
  inode "$IPT" -w 5 -t filter -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  inode "$IPT" -w 5 -t filter -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
  inode "$IPT" -w 5 -t filter -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
  inode "$IPT" -w 5 -t filter -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  inode "$IPT" -w 5 -t filter -A OUTPUT -j KUBE-FIREWALL
}

# Times LOAD_RUNS loads (fewer when one is slow) of `$@` with `reset` before each; prints the
# times. Returns 124 on a timeout.
timed_loads() {
  local limit="$1" reset="$2"; shift 2
  local r t times=()
  for r in $(seq "$LOAD_RUNS"); do
    "$reset" >/dev/null
    if ! t="$(timeout -k 10 "$limit" ip netns exec "$NODE" bash "$WORK/timed.sh" "$@")"; then
      echo "timeout"
      return 124
    fi
    times+=("$t")
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) * 1000 else 1)' "$t" "$RUN_CUTOFF" || break
    [ "$r" -lt "$LOAD_RUNS" ] || break
  done
  echo "${times[*]}"
}

ipt_setup() { ipt_reset; ipt_jumps; }
# After a big load the kernel still has work in flight (the first connections after a large
# nft transaction showed a millisecond tail): wait a second and make 300 untimed connections.
settle() {
  sleep 1
  inode timeout 300 python3 "$WORK/client.py" vip "$1" 300 1 >/dev/null
}

NFT_GAVE_UP=0 IPT_GAVE_UP=0
for n in "${NS_LIST[@]}"; do
  dir="$WORK/n$n"
  mkdir -p "$dir"
  timeout 600 python3 "$WORK/gen.py" "$n" "$dir" "$CHUNK"
  echo "== N=$n: $(wc -l <"$dir/iptables.rules") iptables-restore lines, $(wc -l <"$dir/nft.rules") nft lines"

  # nftables
  nft_reset
  if [ "$NFT_GAVE_UP" = 1 ]; then
    put "$n" nft_ms "skipped"
    echo "   nft -f: not tried (timed out at a smaller N)"
  elif times="$(timed_loads "$NFT_TIMEOUT" nft_reset nft -f "$dir/nft.rules")"; then
    # shellcheck disable=SC2086 # one argument per run
    put "$n" nft_ms "$(median $times)"
    put "$n" nft_runs "$times"
    echo "   nft -f (one transaction): $times ms"
  else
    NFT_GAVE_UP=1
    put "$n" nft_ms ">${NFT_TIMEOUT}000"
    echo "   nft -f (one transaction): over ${NFT_TIMEOUT} s, stopped"
  fi
  nft_loaded=1
  if inode nft list map ip kube-proxy service-ips >/dev/null 2>&1; then
    :
  elif [ "$n" -gt "$NFT_CHUNKED_MAX" ]; then
    nft_loaded=0
    echo "   not loaded in chunks either (N > NFT_CHUNKED_MAX=$NFT_CHUNKED_MAX): no nft latency"
  else
    nft_reset
    s=$EPOCHREALTIME
    for part in "$dir"/nft.part*.rules; do inode timeout 300 nft -f "$part"; done
    e=$EPOCHREALTIME
    us=$(( ${e/./} - ${s/./} ))
    put "$n" nft_chunked_ms "$((us / 1000))"
    echo "   loaded instead in transactions of $CHUNK Services: $((us / 1000)) ms in all"
  fi
  if [ "$nft_loaded" = 1 ]; then
    elements="$(inode nft list map ip kube-proxy service-ips | grep -o ' : goto ' | wc -l)"
    [ "$elements" -ge "$n" ] || { echo "nft ruleset incomplete ($elements of $n VIPs)" >&2; exit 1; }
    settle "$n"
    r="$(inode timeout 300 python3 "$WORK/client.py" vip "$n" "$SAMPLES" "$n")"
    put "$n" nft_lat "$r"
    echo "   nft first packet: $r"
  fi
  nft_reset
  rm -f "$dir"/nft*.rules

  # iptables
  ipt_reset
  if [ "$IPT_GAVE_UP" = 1 ]; then
    put "$n" ipt_ms "skipped"
    echo "   $IPTABLES_RESTORE: not tried (timed out at a smaller N)"
  elif times="$(timed_loads "$IPT_TIMEOUT" ipt_setup "$IPTABLES_RESTORE" -w 5 --noflush --counters "$dir/iptables.rules")"; then
    # shellcheck disable=SC2086 # one argument per run
    put "$n" ipt_ms "$(median $times)"
    put "$n" ipt_runs "$times"
    echo "   $IPTABLES_RESTORE: $times ms"
    rules="$(inode "$IPT" -w 5 -t nat -S KUBE-SERVICES | grep -c -- '-j KUBE-SVC-' || true)"
    [ "$rules" -ge "$n" ] || { echo "iptables ruleset incomplete ($rules of $n)" >&2; exit 1; }
    settle "$n"
    r="$(inode timeout 300 python3 "$WORK/client.py" vip "$n" "$SAMPLES" "$n")"
    put "$n" ipt_lat "$r"
    echo "   iptables first packet: $r"
  else
    IPT_GAVE_UP=1
    put "$n" ipt_ms ">${IPT_TIMEOUT}000"
    echo "   $IPTABLES_RESTORE: over ${IPT_TIMEOUT} s, stopped"
  fi
  ipt_reset
  rm -rf "$dir"
done

base="$(inode timeout 300 python3 "$WORK/client.py" direct 30000 "$SAMPLES" 8)"
put 0 baseline_end "$base"
echo "   no ruleset, connect() to endpoints directly (again, at the end): $base"

# --- Switchyard ---------------------------------------------------------------------------------
echo "== switchyard (examples/service_scale.rs)"
timeout 1200 "$SERVICE_SCALE" --samples "$SAMPLES" --runs "$LOAD_RUNS" --json "$WORK/switchyard.json" "${NS_LIST[@]}"

# --- the table ----------------------------------------------------------------------------------
python3 - "$RESULTS" "$WORK/switchyard.json" "$IPTABLES_RESTORE" "$CHUNK" "${JSON_OUT:-}" <<'EOF'
import json, sys
res_path, sy_path, ipt_name, chunk, json_out = sys.argv[1:6]
res = {}
for line in open(res_path):
    n, k, v = line.rstrip("\n").split("\t", 2)
    res.setdefault(int(n), {})[k] = v
sy = {r["n"]: r for r in json.load(open(sy_path))}


def lat(d, k):
    if k not in d:
        return "—"
    x = json.loads(d[k])
    s = "%.0f / %.0f" % (x["p50_us"], x["p99_us"])
    return s + (" (%d failed)" % x["fail"] if x["fail"] else "")


def ratio(a, b):
    try:
        return "%.0f×" % (float(a) / b)
    except ValueError:
        return (">%.0f×" % (float(a[1:]) / b)) if a.startswith(">") else "—"


print()
print("| N | switchyard program ms | %s ms | nft -f ms | switchyard 1st pkt p50 / p99 µs (graph, SYN only) "
      "| iptables 1st pkt p50 / p99 µs (connect) | nft 1st pkt p50 / p99 µs (connect) "
      "| iptables-restore ÷ switchyard | nft ÷ switchyard |" % ipt_name)
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
out = []
for n in sorted(k for k in res if k > 0):
    d, s = res[n], sy.get(n, {})
    pms = s.get("program_ms", float("nan"))
    nft = d.get("nft_ms", "—")
    if "nft_chunked_ms" in d:
        nft += " (chunks of %s: %s)" % (chunk, d["nft_chunked_ms"])
    print("| %d | %.1f | %s | %s | %.2f / %.2f | %s | %s | %s | %s |" % (
        n, pms, d.get("ipt_ms", "—"), nft, s.get("first_packet_p50_us", float("nan")),
        s.get("first_packet_p99_us", float("nan")), lat(d, "ipt_lat"), lat(d, "nft_lat"),
        ratio(d.get("ipt_ms", "—"), pms), ratio(d.get("nft_ms", "—"), pms)))
    out.append({"n": n, "kernel": {k: (json.loads(v) if k.endswith("_lat") else v) for k, v in d.items()},
                "switchyard": s})
b = json.loads(res[0]["baseline"])
b2 = json.loads(res[0]["baseline_end"])
print()
print("Kernel floor (no ruleset, connect() straight to an endpoint), at the start / at the end of the run:")
print("p50 %.0f / %.0f µs, p99 %.0f / %.0f µs (the spread is this machine's noise)." % (
    b["p50_us"], b2["p50_us"], b["p99_us"], b2["p99_us"]))
print("Kernel first-packet figures are a whole TCP handshake through the kernel stack (SYN through the")
print("ruleset, veth, the backend's SYN-ACK back) timed around connect() in python3; Switchyard's is the")
print("graph's time for the SYN alone, in memory. The absolute values are not comparable; the fair")
print("comparison is how each grows with N (flat or not).")
print("Programming: Switchyard = ServiceTable::compile + new Tables + publish (median of runs); kernel =")
print("wall clock of the loader on a ready-made file (generating the text, which kube-proxy also does, is")
print("not counted). '>' = stopped at the time limit.")
if json_out:
    json.dump({"baseline": [b, b2], "rows": out}, open(json_out, "w"), indent=1)
EOF
