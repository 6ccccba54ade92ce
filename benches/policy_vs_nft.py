#!/usr/bin/env python3
"""Generates one NetworkPolicy set twice: as Kubernetes manifests for `switchyard agent
--manifests`, and as the nftables ruleset a kube-router/Calico-style enforcer would load for it
(per-pod firewall chains reached through a verdict map on the destination, one chain per
policy, one address set per policy's peers, `ct state established,related accept` first). Also
writes the probes: pairs of (client pod, server pod) the policies allow, and one they refuse.

usage: policy_vs_nft.py OUTDIR POLICIES

Cluster: 10 namespaces ns0..ns9 (label team=tN); 100 server pods 198.18.2.10-109 (app=svcI%50,
namespace nsI%10) and 100 client pods 198.18.1.10-109 (role=rJ%5, namespace nsJ%10), all on
node-a, each server pod listening on TCP 8080. Policy k (namespace nsK%10) selects app=svcK%50
and allows TCP 8080 from pods with role=rK%5 in namespaces with team=t(3K)%10.
"""
import json
import os
import sys

NS = 10
SERVERS = 100
CLIENTS = 100


def server(i):
    return {"name": f"s{i}", "ns": f"ns{i % NS}", "ip": f"198.18.2.{10 + i}",
            "labels": {"app": f"svc{i % 50}"}}


def client(j):
    return {"name": f"c{j}", "ns": f"ns{j % NS}", "ip": f"198.18.1.{10 + j}",
            "labels": {"role": f"r{j % 5}"}}


def policy(k):
    return {"name": f"p{k}", "ns": f"ns{k % NS}", "app": f"svc{k % 50}",
            "role": f"r{k % 5}", "team": f"t{(3 * k) % NS}"}


def main():
    out, count = sys.argv[1], int(sys.argv[2])
    os.makedirs(os.path.join(out, "manifests"), exist_ok=True)
    servers = [server(i) for i in range(SERVERS)]
    clients = [client(j) for j in range(CLIENTS)]
    policies = [policy(k) for k in range(count)]
    ns_team = {f"ns{n}": f"t{n}" for n in range(NS)}

    docs = []
    for n in range(NS):
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{n}}}}}\n")
    for p in servers + clients:
        labels = ", ".join(f"{k}: {v}" for k, v in p["labels"].items())
        docs.append(
            "apiVersion: v1\nkind: Pod\n"
            f"metadata: {{name: {p['name']}, namespace: {p['ns']}, labels: {{{labels}}}}}\n"
            "spec:\n  nodeName: node-a\n  containers: [{name: c, image: c:1}]\n"
            f"status:\n  phase: Running\n  podIP: {p['ip']}\n  podIPs: [{{ip: {p['ip']}}}]\n")
    for p in policies:
        docs.append(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {p['name']}, namespace: {p['ns']}}}\n"
            f"spec:\n  podSelector: {{matchLabels: {{app: {p['app']}}}}}\n"
            "  policyTypes: [Ingress]\n  ingress:\n  - from:\n"
            f"    - podSelector: {{matchLabels: {{role: {p['role']}}}}}\n"
            f"      namespaceSelector: {{matchLabels: {{team: {p['team']}}}}}\n"
            "    ports: [{protocol: TCP, port: 8080}]\n")
    with open(os.path.join(out, "manifests", "cluster.yaml"), "w") as f:
        f.write("---\n".join(docs))

    # Who each policy selects and lets in, by the spec (matchLabels only).
    def selected(p):
        return [s for s in servers if s["ns"] == p["ns"] and s["labels"]["app"] == p["app"]]

    def peers(p):
        return [c for c in clients
                if c["labels"]["role"] == p["role"] and ns_team[c["ns"]] == p["team"]]

    by_pod = {}
    for k, p in enumerate(policies):
        for s in selected(p):
            by_pod.setdefault(s["ip"], []).append(k)

    nft = ["table inet sypol {"]
    for k, p in enumerate(policies):
        ips = [c["ip"] for c in peers(p)]
        elements = f" elements = {{ {', '.join(ips)} }}" if ips else ""
        nft.append(f"  set peers{k} {{ type ipv4_addr;{elements} }}")
    for k, p in enumerate(policies):
        nft.append(f"  chain pol{k} {{ ip saddr @peers{k} tcp dport 8080 accept; }}")
    for ip, ks in by_pod.items():
        jumps = "; ".join(f"jump pol{k}" for k in ks)
        nft.append(f"  chain pod_{ip.replace('.', '_')} {{ {jumps}; drop; }}")
    vmap = ", ".join(f"{ip} : jump pod_{ip.replace('.', '_')}" for ip in by_pod)
    nft.append("  chain forward {")
    nft.append("    type filter hook forward priority 0; policy accept;")
    nft.append("    ct state established,related accept")
    if vmap:
        nft.append(f"    ip daddr vmap {{ {vmap} }}")
    nft.append("  }")
    nft.append("}")
    with open(os.path.join(out, "ruleset.nft"), "w") as f:
        f.write("\n".join(nft) + "\n")

    allowed = set()
    for k, p in enumerate(policies):
        for s in selected(p):
            for c in peers(p):
                allowed.add((c["ip"], s["ip"]))
    isolated = set(by_pod)
    denied = next(((c["ip"], s["ip"]) for s in servers if s["ip"] in isolated
                   for c in clients if (c["ip"], s["ip"]) not in allowed), None)
    with open(os.path.join(out, "probes.json"), "w") as f:
        json.dump({"allowed": sorted(allowed), "denied": denied,
                   "rules": sum(len(peers(p)) for p in policies),
                   "isolated": len(isolated)}, f)


main()
