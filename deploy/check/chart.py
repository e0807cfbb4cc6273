#!/usr/bin/env python3
"""The Helm chart deploy/helm/registry-dns, checked as the kustomizations are and against them.

  chart.py HELM KUBECTL BINARY K8S_VERSION...

1. `helm lint --strict` with the default values and with deploy/check/chart-values.yaml.
2. `helm template` with each, for each K8S_VERSION (--kube-version), through validate.py's checks:
   schemas strictly, the Prometheus Operator objects by field, references, the DaemonSet's
   promises (with the defaults: all of them), and every flag in BINARY --help.
3. The non-default values reach the objects: names, one Role per Service namespace with what
   --answer needs, no interface, image digest, metrics port, cache flags, PodMonitor, rules.
4. Drift: the default rendering against `kubectl kustomize deploy/base`, and the PodMonitor and
   PrometheusRule against deploy/overlays/monitoring: security contexts, capabilities, probes,
   RBAC rules, arguments and the rest of what base promises must be identical; the node setup
   (nodeSetup.enabled) against deploy/node: the same scripts and drop-in, the same pod.
5. values.schema.json: values that are wrong in kind are refused before anything renders.

The cache flags (--cache-size, --cache-max-ttl, --serve-stale) are the chart's own tuning, passed
only when set; deploy/base leaves the binary's defaults. A binary without them (before the cache)
is checked with cache.* set empty, which is how the chart is used with it.
"""
import json
import os
import subprocess
import sys

import yaml

import validate
from validate import DEPLOY, err

CHART = os.path.join(DEPLOY, "helm", "registry-dns")
VALUES = os.path.join(DEPLOY, "check", "chart-values.yaml")
CACHE_FLAGS = ("cache-size", "cache-max-ttl", "serve-stale")
NO_CACHE = ["--set-string", "cache.size=,cache.maxTTL=,cache.serveStale="]
MONITORING = ["--set", "metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true"]
NODE_SETUP = ["--set", "nodeSetup.enabled=true"]
# Values the schema must refuse (each would otherwise render a broken DaemonSet or flag).
REFUSED = {
    "nodeSetup.tls=maybe": "--set-string",
    "nodeSetup.runtimes.docker=on": "--set-string",
    "metrics.port=70000": "--set",
    "cache.size=64MB": "--set-string",
    "nodeSetup.registries={knative-local-registry}": "--set",
    "nodeSetup.action=uninstall": "--set-string",
    "answer=cluster": "--set-string",
    "metrics.prot=9353": "--set",
}


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)}:\n{out.stdout}{out.stderr}")
    return out.stdout


def template(helm, args, version):
    text = run([helm, "template", "registry-dns", CHART, "--namespace", "registry-dns",
                "--kube-version", version, *args])
    return [d for d in yaml.safe_load_all(text) if d]


def one(objs, kind):
    """The one object of `kind`; for DaemonSets, registry-dns's (node setup's has its own name)."""
    found = [o for o in objs if o["kind"] == kind and not o["metadata"]["name"].endswith("-node-setup")]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def args_of(ds):
    return ds["spec"]["template"]["spec"]["containers"][0]["args"]


def flag(arg):
    return arg[2:].split("=", 1)[0]


def rbac(objs):
    """Roles and RoleBindings as comparable sets, names aside."""
    roles = {(o["metadata"]["namespace"], json.dumps(o["rules"], sort_keys=True)) for o in objs if o["kind"] == "Role"}
    bindings = {(o["metadata"]["namespace"], o["roleRef"]["kind"],
                 json.dumps([(s["kind"], s["namespace"]) for s in o["subjects"]]))
                for o in objs if o["kind"] == "RoleBinding"}
    return roles, bindings


def drift(base, chart):
    b, c = one(base, "DaemonSet"), one(chart, "DaemonSet")
    bp, cp = b["spec"]["template"]["spec"], c["spec"]["template"]["spec"]
    bc, cc = bp["containers"][0], cp["containers"][0]
    pairs = {
        "pod securityContext": (bp.get("securityContext"), cp.get("securityContext")),
        "container securityContext (capabilities, read-only root, privilege escalation)":
            (bc.get("securityContext"), cc.get("securityContext")),
        "livenessProbe": (bc.get("livenessProbe"), cc.get("livenessProbe")),
        "readinessProbe": (bc.get("readinessProbe"), cc.get("readinessProbe")),
        "args (but the chart's cache flags)":
            (sorted(args_of(b)), sorted(a for a in args_of(c) if flag(a) not in CACHE_FLAGS)),
        "ports": (bc.get("ports"), cc.get("ports")),
        "image (deploy/base's images: and the chart's repository and appVersion)": (bc["image"], cc["image"]),
        "resources": (bc.get("resources"), cc.get("resources")),
        "volumeMounts": (bc.get("volumeMounts"), cc.get("volumeMounts")),
        "volumes": (bp.get("volumes"), cp.get("volumes")),
        "updateStrategy": (b["spec"].get("updateStrategy"), c["spec"].get("updateStrategy")),
    }
    for field in ("hostNetwork", "dnsPolicy", "priorityClassName", "tolerations", "terminationGracePeriodSeconds",
                  "serviceAccountName", "nodeSelector"):
        pairs[field] = (bp.get(field), cp.get(field))
    pairs["RBAC (Roles' namespaces and rules, RoleBindings' subjects)"] = (rbac(base), rbac(chart))
    for what, (want, got) in pairs.items():
        if want != got:
            err("helm default vs deploy/base", f"{what} differ:\n    base:  {want}\n    chart: {got}")


def node_drift(kustomize, chart):
    """deploy/node against the chart's nodeSetup: the ConfigMap's files, and the pod."""
    cm_k = next(o for o in kustomize if o["kind"] == "ConfigMap")["data"]
    cm_c = next(o for o in chart if o["kind"] == "ConfigMap")["data"]
    for key in sorted(set(cm_k) | set(cm_c)):
        if cm_k.get(key) != cm_c.get(key):
            err("helm nodeSetup vs deploy/node", f"ConfigMap key {key} differs")
    k = next(o for o in kustomize if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    c = next(o for o in chart if o["kind"] == "DaemonSet" and o["metadata"]["name"].endswith("node-setup"))
    c = c["spec"]["template"]["spec"]
    kc, cc = k["containers"][0], c["containers"][0]
    k_env = {e["name"]: e["value"] for e in kc["env"]}
    c_env = {e["name"]: e["value"] for e in cc["env"]}
    # The chart also passes the script's own defaults (ADDRESS, the runtimes), from its values.
    defaults = {"ADDRESS": "169.254.20.25", "CONTAINERD": "auto", "CONTAINERS_IMAGE": "auto", "DOCKER": "auto"}
    pairs = {"env": ({**k_env, **defaults}, c_env)}
    # The init container (the registry-dns image's binary): the same but for the image's name,
    # which kustomize's images: and the chart's image.* each set (deploy/base is compared so).
    ki, ci = k["initContainers"][0], c["initContainers"][0]
    for field in ("name", "command", "securityContext", "resources", "volumeMounts"):
        pairs[f"init container {field}"] = (ki.get(field), ci.get(field))
    pairs["init container image"] = (ki["image"], ci["image"])
    for field in ("hostPID", "priorityClassName", "nodeSelector", "tolerations", "automountServiceAccountToken",
                  "terminationGracePeriodSeconds", "volumes"):
        pairs[field] = (k.get(field), c.get(field))
    for field in ("image", "command", "securityContext", "resources", "volumeMounts"):
        pairs[f"container {field}"] = (kc.get(field), cc.get(field))
    for what, (want, got) in pairs.items():
        if want != got:
            err("helm nodeSetup vs deploy/node", f"{what} differ:\n    kustomize: {want}\n    chart:     {got}")


def expect(what, ok):
    if not ok:
        err("helm non-default values", what)


def check_values_reach(objs):
    ds = one(objs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = args_of(ds)
    for a in ("--service=knative-local-registry=registry/knative", "--service=registry-mirror=mirror/registry",
              "--record=build-cache=10.0.0.20,fd00::20", "--answer=cluster-ip", "--listen=10.0.0.53:53",
              "--ops-listen=127.0.0.1:8199", "--metrics-listen=0.0.0.0:9453", "--cache-size=64MiB",
              "--cache-max-ttl=30m", "--allow-from=10.0.0.0/8", "--allow-from=127.0.0.0/8"):
        expect(f"{a} not in args {args}", a in args)
    for f in ("interface-name", "interface-address", "serve-stale"):
        expect(f"--{f} passed though unset", not any(flag(a) == f for a in args))
    expect(f"image {c['image']}", c["image"] == "registry.example.org/dns/registry-dns@sha256:" + "0123456789abcdef" * 4)
    expect("probes on ops.port", c["livenessProbe"]["httpGet"]["port"] == 8199 == c["readinessProbe"]["httpGet"]["port"])
    expect("upstream.resolvConf", spec["volumes"][0]["hostPath"]["path"] == "/etc"
           and "--resolv-conf=/host/resolv/resolv.conf" in args)
    expect("resources", c["resources"]["limits"] == {"memory": "128Mi"})
    expect("tolerations", spec["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane")
    expect("nodeSelector", spec.get("nodeSelector") == {"kubernetes.io/os": "linux", "node-role.kubernetes.io/worker": ""})
    expect("priorityClassName empty leaves it out", "priorityClassName" not in spec)
    expect("imagePullSecrets", spec.get("imagePullSecrets") == [{"name": "registry-example-org"}])
    expect("podAnnotations", ds["spec"]["template"]["metadata"].get("annotations") == {"example.org/owner": "platform"})
    setup = next(o for o in objs if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "registry-dns-node-setup")
    setup_spec = setup["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in setup_spec["containers"][0]["env"]}
    expect(f"node setup env {env}", env == {
        "ACTION": "remove", "MODE": "resolv-conf", "ADDRESS": "10.0.0.53",
        "NAMES": "knative-local-registry registry-mirror build-cache", "INTERFACE": "", "CONTAINERD": "auto",
        "CONTAINERS_IMAGE": "off", "DOCKER": "off",
        "REGISTRIES": "knative-local-registry:5000 registry-mirror:5001", "REGISTRY_TLS": "true"})
    init = setup_spec["initContainers"][0]
    expect(f"node setup's init container image {init['image']}", init["image"] == c["image"])
    expect("node setup CA ConfigMap", {"name": "my-registry-ca", "optional": True} in
           [v.get("configMap") for v in setup_spec["volumes"]])
    expect("node setup priorityClassName empty leaves it out", "priorityClassName" not in setup_spec)
    dropin = next(o for o in objs if o["kind"] == "ConfigMap")["data"]["registry-dns.conf"]
    expect("drop-in: deploy/node's, whatever the values", dropin == open("deploy/node/registry-dns.conf").read())
    roles, _ = rbac(objs)
    services_only = json.dumps([{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}],
                               sort_keys=True)
    expect(f"one Role per Service namespace, services only (cluster-ip): {roles}",
           roles == {("registry", services_only), ("mirror", services_only)})
    pm, rule = one(objs, "PodMonitor"), one(objs, "PrometheusRule")
    expect("PodMonitor port", validate.metrics_port(pm) == {"9453"})
    expect("PodMonitor interval", pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s")
    for o in (pm, rule):
        expect(f"{o['kind']} labels", o["metadata"]["labels"].get("release") == "kube-prometheus-stack")


def main():
    helm, kubectl, binary, versions = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    binary_help = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    has_cache = all(f"--{f}" in binary_help for f in CACHE_FLAGS)
    for values in ([], ["-f", VALUES]):
        run([helm, "lint", "--strict", CHART, *values])
    print("  helm lint --strict: clean, default and non-default values")

    blank = [] if has_cache else NO_CACHE
    if not has_cache:
        print("  this registry-dns has no cache flags yet: renderings checked against it with cache.* empty")
    for label, values in (("default", []), ("non-default", ["-f", VALUES])):
        for v in versions:
            where = f"helm template, {label} values, Kubernetes {v}"
            objs = template(helm, values + blank, v)
            validate.check_rendering(where, objs, [v], binary_help, defaults=not values)
            print(validate.summary(where, objs))

    defaults = template(helm, [], versions[-1])
    cache_args = sorted(a for a in args_of(one(defaults, "DaemonSet")) if flag(a) in CACHE_FLAGS)
    if cache_args != ["--cache-max-ttl=1h", "--cache-size=8MiB", "--serve-stale=1d"]:
        err("helm default values", f"cache flags {cache_args}")
    check_values_reach(template(helm, ["-f", VALUES], versions[-1]))
    print("  non-default values: each reaches the objects; defaults pass " + " ".join(cache_args))

    base = validate.render(kubectl, os.path.join(DEPLOY, "base"))
    drift(base, defaults)
    monitoring = validate.render(kubectl, os.path.join(DEPLOY, "overlays", "monitoring"))
    with_monitoring = template(helm, MONITORING, versions[-1])
    for kind in ("PodMonitor", "PrometheusRule"):
        want, got = one(monitoring, kind)["spec"], one(with_monitoring, kind)["spec"]
        if kind == "PodMonitor":
            want, got = (want["jobLabel"], want["podMetricsEndpoints"]), (got["jobLabel"], got["podMetricsEndpoints"])
        if want != got:
            err("helm vs deploy/components/monitoring", f"{kind} differs:\n    kustomize: {want}\n    chart:     {got}")
    node = validate.render(kubectl, os.path.join(DEPLOY, "node"))
    node_drift(node, template(helm, NODE_SETUP, versions[-1]))
    print("  drift: chart defaults = deploy/base (security contexts, capabilities, probes, RBAC, args, pod spec);"
          " PodMonitor and PrometheusRule = deploy/components/monitoring; nodeSetup = deploy/node")
    for value, how in REFUSED.items():
        out = subprocess.run([helm, "template", "registry-dns", CHART, "--kube-version", versions[-1], how, value],
                             capture_output=True, text=True)
        if out.returncode == 0 or "values don't meet the specifications of the schema" not in out.stderr:
            err("values.schema.json", f"{value} was not refused by the schema: {out.stderr.strip()[:300]}")
    print(f"  values.schema.json refuses {len(REFUSED)} wrong values ({', '.join(REFUSED)})")
    # A cache that cannot fit under the memory limit (the binary refuses it at start too).
    out = subprocess.run([helm, "template", "registry-dns", CHART, "--kube-version", versions[-1],
                          "--set-string", "cache.size=64MiB"], capture_output=True, text=True)
    if out.returncode == 0 or "cache.size 64MiB does not fit under resources.limits.memory 64Mi" not in out.stderr \
            or "at most 40MiB" not in out.stderr:
        err("helm cache.size", f"a 64MiB cache under the 64Mi limit was not refused: {out.stderr.strip()[:300]}")
    print("  a 64MiB cache under the 64Mi memory limit is refused (at most 40MiB), as the binary refuses it")
    if validate.errors:
        print("\n".join(f"ERROR {e}" for e in validate.errors))
        sys.exit(1)


if __name__ == "__main__":
    main()
