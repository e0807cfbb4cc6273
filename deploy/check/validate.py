#!/usr/bin/env python3
"""Renders every kustomization under deploy/ and validates what comes out.

  validate.py KUBECTL BINARY K8S_VERSION...

1. `kubectl kustomize` on every directory holding a Kustomization (Components are rendered
   through the overlays that use them).
2. Every built-in object against the Kubernetes OpenAPI schemas of each K8S_VERSION, strictly
   (unknown fields are errors), with kubernetes-validate.
3. cert-manager and Prometheus Operator objects (CRDs: kubernetes-validate ships no schema for
   them, and a missing schema is only a warning there) are checked here against the fields they
   require, and any other kind without a schema fails: a new CRD needs a decision, not a silent pass.
4. References inside each rendering (volume mounts, ConfigMaps, ServiceAccounts, RoleBindings,
   Service selectors, probe ports) and the properties the DaemonSet must keep, including that
   every flag it passes exists in BINARY --help.
"""
import functools
import glob
import os
import subprocess
import sys

import yaml
from kubernetes_validate import utils as kv

kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)  # same files, read once

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALERTS = os.path.join(DEPLOY, "helm", "registry-dns", "files", "alerts.yaml")
errors = []
# Ports that common hostNetwork node agents serve on (deploy/README.md, "Metrics and alerts").
NODE_AGENT_PORTS = {"9253": "NodeLocal DNSCache's metrics", "8080": "NodeLocal DNSCache's health",
                    "9153": "CoreDNS's metrics", "9100": "node-exporter", "8081": "kube-state-metrics",
                    "10249": "kube-proxy's metrics", "10256": "kube-proxy's health", "10250": "the kubelet"}


def err(where, msg):
    errors.append(f"{where}: {msg}")


def render(kubectl, path):
    out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        err(path, f"kubectl kustomize failed: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def check_cert_manager(where, obj):
    kind, spec = obj["kind"], obj.get("spec") or {}
    name = f"{where} {kind}/{obj['metadata']['name']}"
    if obj["apiVersion"] != "cert-manager.io/v1":
        return err(name, f"apiVersion {obj['apiVersion']}, want cert-manager.io/v1")
    if kind == "Issuer":
        kinds = [k for k in ("acme", "ca", "selfSigned", "vault", "venafi") if k in spec]
        if len(kinds) != 1:
            err(name, f"an Issuer has exactly one of acme/ca/selfSigned/vault/venafi, found {kinds}")
        if "ca" in spec and not spec["ca"].get("secretName"):
            err(name, "spec.ca.secretName is required")
    elif kind == "Certificate":
        allowed = {"secretName", "issuerRef", "dnsNames", "commonName", "isCA", "duration", "renewBefore",
                   "privateKey", "usages", "ipAddresses", "uris", "emailAddresses", "subject", "secretTemplate"}
        for key in spec:
            if key not in allowed:
                err(name, f"unexpected spec.{key}")
        if not spec.get("secretName"):
            err(name, "spec.secretName is required")
        ref = spec.get("issuerRef") or {}
        if not ref.get("name"):
            err(name, "spec.issuerRef.name is required")
        if not any(spec.get(k) for k in ("commonName", "dnsNames", "ipAddresses", "uris", "emailAddresses")):
            err(name, "needs a commonName or a SAN")
        pk = spec.get("privateKey") or {}
        if pk.get("algorithm", "RSA") not in ("RSA", "ECDSA", "Ed25519"):
            err(name, f"privateKey.algorithm {pk['algorithm']}")
    else:
        err(name, "unknown cert-manager kind")


def check_monitoring(where, obj):
    """PodMonitor and PrometheusRule (monitoring.coreos.com/v1): the fields they need, and that
    the PrometheusRule carries exactly the rule groups of the chart's files/alerts.yaml."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    name = f"{where} {kind}/{obj['metadata']['name']}"
    if obj["apiVersion"] != "monitoring.coreos.com/v1":
        return err(name, f"apiVersion {obj['apiVersion']}, want monitoring.coreos.com/v1")
    if kind == "PodMonitor":
        if not (spec.get("selector") or {}).get("matchLabels"):
            err(name, "spec.selector.matchLabels is required")
        endpoints = spec.get("podMetricsEndpoints") or []
        if len(endpoints) != 1 or endpoints[0].get("path") != "/metrics":
            err(name, "want one podMetricsEndpoint with path /metrics")
        for ep in endpoints:
            for r in ep.get("relabelings", []):
                if not set(r) <= {"sourceLabels", "regex", "targetLabel", "replacement", "action"}:
                    err(name, f"unexpected relabeling fields {sorted(r)}")
    elif kind == "PrometheusRule":
        with open(ALERTS) as f:
            if spec != yaml.safe_load(f):
                err(name, f"spec differs from {os.path.relpath(ALERTS, os.path.dirname(DEPLOY))}, the one copy of the alerts")
    else:
        err(name, "unknown monitoring.coreos.com kind")


def metrics_port(podmonitor):
    """The port the PodMonitor's relabelings put on the pod IP."""
    return {r["replacement"].rsplit(":", 1)[1] for r in podmonitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
            if r["targetLabel"] == "__address__"}


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def check_references(where, objs):
    def names(kind, ns=None):
        return {o["metadata"]["name"] for o in objs
                if o["kind"] == kind and (ns is None or o["metadata"].get("namespace") == ns)}

    cert_secrets = {o["spec"]["secretName"] for o in objs if o["kind"] == "Certificate"}
    external_secrets = {"registry-s3"}  # created by hand, documented in deploy/registry/s3
    for o in objs:
        ns = o["metadata"].get("namespace")
        spec = pod_spec(o)
        name = f"{where} {o['kind']}/{o['metadata']['name']}"
        if spec is not None:
            labels = o["spec"]["template"]["metadata"].get("labels", {})
            selector = o["spec"]["selector"]["matchLabels"]
            if any(labels.get(k) != v for k, v in selector.items()):
                err(name, "selector does not match the template's labels")
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            sa = spec.get("serviceAccountName", "default")
            if sa != "default" and sa not in names("ServiceAccount", ns):
                err(name, f"serviceAccountName {sa} is not in this rendering")
            for v in volumes.values():
                # An optional volume (the registry's CA for node setup) is the user's to create.
                if (v.get("configMap") or v.get("secret") or {}).get("optional"):
                    continue
                if "configMap" in v and v["configMap"]["name"] not in names("ConfigMap", ns):
                    err(name, f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not in this rendering")
                if "secret" in v and v["secret"]["secretName"] not in cert_secrets | external_secrets:
                    err(name, f"volume {v['name']}: nothing creates Secret {v['secret']['secretName']}")
                if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in names("PersistentVolumeClaim", ns):
                    err(name, f"volume {v['name']}: no PersistentVolumeClaim {v['persistentVolumeClaim']['claimName']}")
            for c in spec["containers"]:
                ports = {p.get("name") for p in c.get("ports", [])}
                for m in c.get("volumeMounts", []):
                    if m["name"] not in volumes:
                        err(name, f"container {c['name']}: volumeMount {m['name']} has no volume")
                for probe in ("livenessProbe", "readinessProbe"):
                    port = (c.get(probe, {}).get("httpGet") or {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        err(name, f"{probe} port {port} is not a named port")
                for e in c.get("env", []):
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and ref["name"] not in cert_secrets | external_secrets:
                        err(name, f"env {e['name']}: nothing creates Secret {ref['name']}")
                if c["image"] in ("registry-dns", "registry"):
                    err(name, f"image {c['image']} was not set by kustomize images:")
        if o["kind"] == "Service" and o["spec"].get("selector"):
            sel = o["spec"]["selector"]
            if not any(pod_spec(p) is not None and p["metadata"].get("namespace") == ns
                       and all(p["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
                       for p in objs):
                err(name, "selects no pod template of this rendering")
        if o["kind"] == "PodMonitor":
            sel = o["spec"]["selector"]["matchLabels"]
            targets = [p for p in objs if p["kind"] == "DaemonSet" and p["metadata"].get("namespace") == ns
                       and all(p["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            if not targets:
                err(name, "selects no DaemonSet of this rendering")
            for ds in targets:
                args = dict(a[2:].split("=", 1) for a in ds["spec"]["template"]["spec"]["containers"][0]["args"])
                listen = args.get("metrics-listen", "off")
                if {listen.rsplit(":", 1)[-1]} != metrics_port(o):
                    err(name, f"scrapes port {metrics_port(o)}, the pods serve /metrics on --metrics-listen {listen}")
        if o["kind"] == "RoleBinding":
            if o["roleRef"]["kind"] == "Role" and o["roleRef"]["name"] not in names("Role", ns):
                err(name, f"roleRef Role {o['roleRef']['name']} is not in namespace {ns} of this rendering")
            for s in o["subjects"]:
                if s["kind"] == "ServiceAccount" and s["name"] not in names("ServiceAccount", s["namespace"]):
                    err(name, f"subject ServiceAccount {s['namespace']}/{s['name']} is not in this rendering")


def check_daemonset(where, ds, binary_help, defaults=True):
    """What deploy/base/daemonset.yaml promises (deploy/README.md explains each). With defaults
    False (a chart rendered with other values), the settings a user may change are not checked:
    priority class, tolerations and resources."""
    name = f"{where} DaemonSet/registry-dns"
    spec = ds["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = dict(a[2:].split("=", 1) for a in c["args"])

    def security(field):
        """A securityContext field as the container gets it: its own, else the pod's."""
        return c.get("securityContext", {}).get(field, spec.get("securityContext", {}).get(field))

    # NET_BIND_SERVICE for port 53 as non-root, NET_ADMIN to create --interface-name. Both even
    # without --interface-name: the image's binary carries both as file capabilities (+ep), and
    # the kernel refuses to exec such a binary when its bounding set lacks one of them.
    caps = ["NET_BIND_SERVICE", "NET_ADMIN"]
    want = {
        "hostNetwork": spec.get("hostNetwork") is True,
        "dnsPolicy Default": spec.get("dnsPolicy") == "Default",
        "priorityClassName system-node-critical": not defaults or spec.get("priorityClassName") == "system-node-critical",
        "tolerates every taint": not defaults or {"operator": "Exists"} in spec.get("tolerations", []),
        "RollingUpdate maxSurge 1 maxUnavailable 0": ds["spec"]["updateStrategy"] == {
            "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "no ports (a hostNetwork containerPort is a hostPort and blocks the surge pod)": not c.get("ports"),
        "runAsNonRoot": security("runAsNonRoot") is True,
        "runAsUser 65532 (the image's nonroot)": security("runAsUser") == 65532,
        "runAsGroup 65532": security("runAsGroup") == 65532,
        "seccompProfile RuntimeDefault": (security("seccompProfile") or {}).get("type") == "RuntimeDefault",
        "not privileged": c["securityContext"].get("privileged") in (None, False),
        "readOnlyRootFilesystem": c["securityContext"].get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": c["securityContext"].get("allowPrivilegeEscalation") is False,
        f"capabilities drop ALL add {' '.join(caps)}": c["securityContext"].get("capabilities") == {
            "drop": ["ALL"], "add": caps},
        "requests 10m/16Mi, limit 64Mi": not defaults or c["resources"] == {
            "requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
    }
    for what, ok in want.items():
        if not ok:
            err(name, f"lost: {what}")
    # On hostNetwork every node agent shares the node's ports: whichever binds second fails.
    for flag in ("ops-listen", "metrics-listen"):
        port = args.get(flag, "off").rsplit(":", 1)[-1]
        if port in NODE_AGENT_PORTS:
            err(name, f"--{flag} port {port} is taken by {NODE_AGENT_PORTS[port]} on the nodes that run it")
    ops_host, ops_port = args["ops-listen"].rsplit(":", 1)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        if (get.get("host"), str(get["port"]), get["path"]) != (ops_host, ops_port, path):
            err(name, f"{probe} {get} does not reach --ops-listen {args['ops-listen']}{path}")
    # The resolv.conf is read from its host directory, mounted read-only: resolved and DHCP
    # clients replace the file, which a mount of the file alone would never show.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    directory, _, file_name = args["resolv-conf"].rpartition("/")
    rc = mounts.get(directory)
    if not rc or not rc.get("readOnly"):
        err(name, f"--resolv-conf {args['resolv-conf']} is not in a read-only mount of its directory")
    else:
        vol = next(v for v in spec["volumes"] if v["name"] == rc["name"])
        if vol.get("hostPath", {}).get("type") != "Directory":
            err(name, "the resolv.conf volume is not a hostPath of type Directory")
        if f'{vol["hostPath"]["path"].rstrip("/")}/{file_name}' == "/run/systemd/resolve/stub-resolv.conf":
            err(name, "the systemd-resolved stub resolv.conf (127.0.0.53) loops")
    if "interface-name" in args and args.get("listen", "").rsplit(":", 1)[0].strip("[]") != args.get("interface-address"):
        err(name, "--listen is not on --interface-address")
    for flag in args:
        if f"--{flag}" not in binary_help:
            err(name, f"--{flag} is not a flag of registry-dns (--help)")


def check_rendering(where, objs, versions, binary_help, defaults=True):
    """Schemas (or the CRD checks), references and the DaemonSet's promises of one rendering."""
    for o in objs:
        if o["apiVersion"].startswith("cert-manager.io/"):
            check_cert_manager(where, o)
            continue
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            check_monitoring(where, o)
            continue
        for v in versions:
            try:
                kv.validate(o, v, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                err(where, f"{o['kind']}/{o['metadata']['name']} against {v}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                err(where, f"{e.message} (a CRD needs its own check in validate.py)")
    check_references(where, objs)
    for o in objs:
        if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "registry-dns":
            check_daemonset(where, o, binary_help, defaults)


def summary(where, objs):
    kinds = [o["kind"] for o in objs]
    crd = sum(k in ("Issuer", "Certificate", "PodMonitor", "PrometheusRule") for k in kinds)
    note = f" ({crd} cert-manager or Prometheus Operator objects checked by field, no schema)" if crd else ""
    return f"  {where}: {len(objs)} objects: {', '.join(sorted(set(kinds)))}{note}"


def main():
    kubectl, binary, versions = sys.argv[1], sys.argv[2], sys.argv[3:]
    binary_help = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    roots = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "**", "kustomization.yaml"), recursive=True)):
        with open(path) as f:
            if yaml.safe_load(f).get("kind", "Kustomization") == "Kustomization":
                roots.append(os.path.dirname(path))
    total = 0
    for root in roots:
        where = os.path.relpath(root, os.path.dirname(DEPLOY))
        objs = render(kubectl, root)
        check_rendering(where, objs, versions, binary_help)
        for o in objs:
            if o["kind"] == "Role" and o["metadata"]["name"] == "registry-dns":
                if o["rules"] != [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                                   "verbs": ["get", "list", "watch"]}]:
                    err(where, "Role registry-dns is no longer get/list/watch on endpointslices only")
        total += len(objs)
        print(summary(where, objs))
    print(f"  {total} objects in {len(roots)} kustomizations, schemas of Kubernetes {', '.join(versions)} (strict)")
    if errors:
        print("\n".join(f"ERROR {e}" for e in errors))
        sys.exit(1)


if __name__ == "__main__":
    main()
