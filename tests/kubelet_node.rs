//! The shipped manifests on a real node: a kubelet runs them, containerd pulls through CRI.
//!
//! ```text
//!  host: etcd, kube-apiserver 127.0.0.1:P, kube-controller-manager, kube-scheduler, the test,
//!        helm and kubectl (as admin); a relay thread: node's 10.96.0.1:443 -> the API server;
//!        dnsmasq on 10.198.0.1 as the node's own DNS server (per link, from networkd)
//!  node-1 10.198.0.2 (tests/cluster/node.sh: Debian booted with systemd as PID 1, in namespaces
//!        of its own; systemd-resolved with its stub on 127.0.0.53, as most nodes have it)
//!    kubelet (unit) ── CRI ──► containerd 1.6 (unit) + runc ── CNI bridge cni0 10.244.1.0/24
//!    hostNetwork: registry-dns (the chart's DaemonSet) on registry-dns0 169.254.20.25,
//!                 node setup (deploy/node, privileged, nsenter into the node's PID 1: systemd)
//!    pods: the registry (deploy/registry's Deployment, PVC on a hostPath PV), crane pods in
//!          `default` (push by name), app pods whose image is knative-local-registry:5000/app@sha256:...
//! ```
//!
//! Real: kube-apiserver, kube-controller-manager (DaemonSet, Deployment, ReplicaSet, PV binder,
//! EndpointSlice, ServiceAccount and root CA controllers), kube-scheduler, kubelet, containerd's
//! CRI plugin, runc, the CNI plugins, the shipped chart (`helm install` / `upgrade` / `uninstall`),
//! `kubectl apply -k deploy/registry` and `-k deploy/node`, and the images' users, entrypoints and
//! file capabilities, and node setup's real resolved wiring (resolvectl, busctl, systemctl).
//! Stand-ins: the images are built here (tests/cluster/images/build.py: no registry can be
//! reached), kube-proxy's one Service the pods use (`kubernetes`) is a relay, and the crane pods
//! ask registry-dns directly (`dnsConfig`): on a systemd-resolved node a `dnsPolicy: Default` pod
//! gets the node's upstreams, which do not know the name, and the `ClusterFirst` way through CoreDNS
//! is tests/e2e.rs's. Node setup writes containerd's
//! `certs.d/knative-local-registry:5000/hosts.toml`, which is all the node's containerd knows of the
//! registry. Where these machines lack something (cgroup v2, dummy interfaces, CAP_SYS_RESOURCE for
//! root), `node.sh start` says so and what the node does instead.
//!
//! Needs root; skipped with a loud message when not root or when a part is missing or cannot be
//! built, and never skipped when `CI` is set.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use serde_json::json;
use support::control_plane::{self, ControlPlane, skip_or_fail};
use support::node::{HostDns, Node};
use support::{TempDir, ask_a, images};

const NAME: &str = "knative-local-registry";
const REPO: &str = "knative-local-registry:5000/app";
const LINK_LOCAL: &str = "169.254.20.25";
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
/// kube-controller-manager's controllers: the other tests' and what workloads on a kubelet need (the
/// node lifecycle controller lifts the not-ready taint the API server puts on a new Node).
const CONTROLLERS: &str = "endpointslice-controller,serviceaccount-controller,namespace-controller,\
    garbage-collector-controller,root-ca-certificate-publisher-controller,daemonset-controller,\
    deployment-controller,replicaset-controller,persistentvolume-binder-controller,node-lifecycle-controller";

struct Parts {
    kubectl: PathBuf,
    helm: PathBuf,
    images: PathBuf,
}

/// The parts, built (or found) once: the control plane, kubelet, kube-scheduler and the CNI
/// plugins from tests/cluster, helm from deploy/check/go/helm, the images; containerd, runc and
/// iptables from Debian (tests/run.sh installs them).
fn parts() -> Option<&'static Parts> {
    static PARTS: OnceLock<Result<Parts, String>> = OnceLock::new();
    let parts = PARTS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("tests/kubelet_node.rs needs root (namespaces, mounts, cgroups, containerd)".into());
        }
        for tool in
            ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc", "/usr/sbin/iptables", "/usr/bin/docker-registry"]
        {
            if !Path::new(tool).exists() {
                return Err(format!(
                    "{tool} is missing (tests/run.sh installs containerd, runc, iptables, docker-registry)"
                ));
            }
        }
        let kube = control_plane::build("build")?;
        control_plane::build("build-node")?;
        let e2e = control_plane::build("build-e2e")?;
        let helm = Command::new(format!("{DEPLOY}/check/go/build.sh"))
            .arg("helm")
            .output()
            .map_err(|e| format!("deploy/check/go/build.sh: {e}"))?;
        if !helm.status.success() {
            return Err(format!("deploy/check/go/build.sh helm: {}", String::from_utf8_lossy(&helm.stderr)));
        }
        let helm = PathBuf::from(String::from_utf8_lossy(&helm.stdout).trim());
        let images = images::build(&e2e[1].join("crane"))?;
        Ok(Parts { kubectl: kube[0].join("kubectl"), helm, images })
    });
    match parts {
        Ok(parts) => Some(parts),
        Err(e) => skip_or_fail(e),
    }
}

/// Polls `f` every 200 ms until it is `Ok`, for at most `timeout`; panics with its last error.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The cluster: a control plane with a scheduler, one real node with its DNS server, and helm.
struct Cluster {
    parts: &'static Parts,
    _dns: HostDns,
    node: Node,
    cp: ControlPlane,
    _dir: TempDir,
}

impl Cluster {
    fn start() -> Option<Self> {
        let parts = parts()?;
        let cp = ControlPlane::launch(parts.kubectl.clone(), "kubelet", Some(CONTROLLERS));
        cp.script("start-scheduler", &[]);
        let node = Node::join(&cp, 1, &parts.images, &[]);
        let dir = TempDir::new("kubelet-node");
        let dns = HostDns::start(&dir);
        node.use_host_dns();
        let cluster = Self { parts, _dns: dns, node, cp, _dir: dir };
        wait_for("node-1 Ready", Duration::from_secs(120), || {
            let ready = cluster.cp.try_kubectl(&[
                "get",
                "node",
                "node-1",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            (ready == "True").then_some(()).ok_or(ready)
        });
        Some(cluster)
    }

    fn helm(&self, args: &[&str]) -> String {
        let out = self.cp.as_admin(&self.parts.helm).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "helm {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// `kubectl rollout status KIND/NAME -n NAMESPACE`, which must finish within `seconds`.
    fn rollout(&self, namespace: &str, object: &str, seconds: u32) {
        self.cp.kubectl(&["rollout", "status", "-n", namespace, object, &format!("--timeout={seconds}s")]);
    }

    fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        let path = format!("jsonpath={path}");
        all.extend(["-o", &path]);
        self.cp.kubectl(&all)
    }

    /// The registry Pods' addresses in the EndpointSlices (ready ones).
    fn registry_endpoints(&self) -> Vec<String> {
        self.cp.slice_addresses(&self.cp.admin, "IPv4")
    }

    /// A one-shot crane Pod in `default` that pushes /app.tar as `reference` by name, asking
    /// registry-dns on the node's link-local address; the digest reference crane printed.
    fn push(&self, pod: &str, reference: &str) -> String {
        self.cp.apply(&json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "default"},
            "spec": {
                "restartPolicy": "Never", "dnsPolicy": "None", "dnsConfig": {"nameservers": [LINK_LOCAL]},
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "crane", "image": "registry-dns.test/crane:1", "imagePullPolicy": "Never",
                    "args": ["push", "/app.tar", reference, "--insecure"],
                }],
            },
        }));
        let phase = wait_for(&format!("pod {pod} finished"), Duration::from_secs(90), || {
            let phase = self.jsonpath(&["pod", pod, "-n", "default"], "{.status.phase}");
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase.clone()).ok_or(phase)
        });
        let logs = self.node.container_log("default", pod, "crane").unwrap_or_else(|e| panic!("{pod}'s log: {e}"));
        assert_eq!(phase, "Succeeded", "crane push in {pod}: {logs}");
        let digest = logs.lines().find(|l| l.starts_with(&format!("{REPO}@sha256:")));
        digest.unwrap_or_else(|| panic!("no digest in crane's output: {logs}")).to_string()
    }

    /// A Pod in `default` whose image is `image`, pulled by the kubelet through CRI with
    /// `pull_policy`; waits until it runs and returns the image ID the kubelet reports.
    fn run_app(&self, pod: &str, image: &str, pull_policy: &str) -> String {
        self.cp.apply(&json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "default"},
            "spec": {
                "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": image, "imagePullPolicy": pull_policy}],
            },
        }));
        wait_for(&format!("pod {pod} Running"), Duration::from_secs(90), || {
            let state =
                self.jsonpath(&["pod", pod, "-n", "default"], "{.status.phase} {.status.containerStatuses[0].state}");
            state.starts_with("Running ").then_some(()).ok_or(state)
        });
        self.jsonpath(&["pod", pod, "-n", "default"], "{.status.containerStatuses[0].imageID}")
    }

    /// The A records registry-dns serves on the node for the registry's name (one query, fresh socket).
    fn node_answer(&self) -> Option<(ResponseCode, Vec<String>)> {
        self.node.netns.run(|| {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            ask_a(&socket, SocketAddr::from(([169, 254, 20, 25], 53)), NAME)
        })
    }

    /// `getent ahosts NAME` on the node: glibc through resolved's stub (what containerd's Go
    /// resolver asks too); the IPv4 addresses, sorted.
    fn node_getent(&self) -> Result<Vec<String>, String> {
        let out = self.node.exec(&["getent", "ahosts", NAME]).output().unwrap();
        if !out.status.success() {
            return Err(format!("getent exit {:?}", out.status.code()));
        }
        let mut v4: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("STREAM"))
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        v4.sort();
        Ok(v4)
    }

    fn registry_dns_pods(&self) -> Vec<String> {
        let names = self.jsonpath(
            &["pods", "-n", "registry-dns", "-l", "app.kubernetes.io/name=registry-dns"],
            "{.items[*].metadata.name}",
        );
        names.split_whitespace().map(String::from).collect()
    }

    /// How many registry-dns processes run on the node.
    fn registry_dns_processes(&self) -> usize {
        let out = self.node.exec(&["pgrep", "-x", "registry-dns"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    fn interface_exists(&self, name: &str) -> bool {
        let out = Command::new("ip").args(["-n", &self.node.netns.name, "link", "show", name]).output().unwrap();
        out.status.success()
    }
}

impl Drop for Cluster {
    /// On failure, what a person would look at first.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let pods = self.cp.try_kubectl(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_else(|e| e);
        let events = self.cp.try_kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]).unwrap_or_else(|e| e);
        eprintln!(
            "pods:\n{pods}\nevents:\n{events}\nkubelet journal:\n{}\ncontainerd journal:\n{}\nresolved:\n{}",
            self.node.journal("kubelet", 40),
            self.node.journal("containerd", 20),
            String::from_utf8_lossy(&self.node.sh("resolvectl status").stdout)
        );
    }
}

/// Where node setup writes containerd's registry configuration on the node (the CRI plugin's
/// `config_path`, as node.sh's config.toml sets it), and what it writes for a plain-HTTP registry.
const HOSTS_TOML: &str = "containerd/certs.d/knative-local-registry:5000/hosts.toml";
const HOSTS_TOML_CONTENT: &str = "# Written by registry-dns node setup (deploy/node); ACTION=remove deletes it.\n\
     server = \"http://knative-local-registry:5000\"\n\
     [host.\"http://knative-local-registry:5000\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n";

/// Node setup's containers/image drop-in (CRI-O, podman) on the node.
const CONTAINERS_DROPIN: &str = "containers/registries.conf.d/50-registry-dns.conf";
/// The node's own Docker configuration, which node setup merges into and gives back byte for byte.
const USER_DAEMON_JSON: &str = "{\"log-level\": \"warn\"}\n";

/// Queries registry-dns on the node until `stop`, each from a fresh socket (a new source port, as
/// glibc and Go's resolver do per lookup), one try of at most 2 s (stricter than glibc's default
/// of 5 s and two tries): (queries, failures with what went wrong).
fn query_until(cluster: &Cluster, stop: &AtomicBool, want: &[String]) -> (usize, Vec<String>) {
    let (mut count, mut failures) = (0, Vec::new());
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        count += 1;
        match cluster.node_answer() {
            Some((ResponseCode::NoError, ips)) if ips == want => {}
            other => failures.push(format!("{:?}: {other:?}", started.elapsed())),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (count, failures)
}

#[test]
fn the_chart_and_node_setup_run_on_a_kubelet_and_the_node_pulls_by_name_through_cri() {
    let Some(c) = Cluster::start() else { return };
    let host_resolv_conf = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let node_resolver = c.node.resolver_snapshot();
    let kubelet_version =
        c.jsonpath(&["node", "node-1"], "{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}");
    eprintln!("node-1 Ready: {kubelet_version}");

    // 1. The registry, as deploy/README.md says: `kubectl apply -k deploy/registry`. Its PVC binds
    // to a hostPath PersistentVolume on the node (the cluster has no provisioner); the registry
    // runs as 1000.
    let storage = "/var/lib/registry-data";
    c.node.sh_ok(&format!("mkdir -p {storage} && chown 1000:1000 {storage}"));
    c.cp.apply(&json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "registry-data"},
        "spec": {
            "capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": storage, "type": "Directory"},
        },
    }));
    c.cp.kubectl(&["apply", "-k", &format!("{DEPLOY}/registry")]);

    // 2. registry-dns from the chart, into a namespace that admits privileged pods, its upstreams
    // from resolved's /run/systemd/resolve/resolv.conf (the chart's default).
    c.cp.kubectl(&["create", "namespace", "registry-dns"]);
    c.cp.kubectl(&[
        "label",
        "namespace",
        "registry-dns",
        "pod-security.kubernetes.io/enforce=privileged",
        "pod-security.kubernetes.io/warn=privileged",
    ]);
    let chart = format!("{DEPLOY}/helm/registry-dns");
    c.helm(&["install", "registry-dns", &chart, "-n", "registry-dns"]);
    c.rollout("registry", "deployment/registry", 120);
    c.rollout("registry-dns", "daemonset/registry-dns", 120);
    let registry1 = wait_for("the registry Pod in the EndpointSlices", Duration::from_secs(30), || {
        let ips = c.registry_endpoints();
        (ips.len() == 1).then(|| ips[0].clone()).ok_or(format!("{ips:?}"))
    });
    eprintln!("registry Pod ready at {registry1}; registry-dns pod {:?}", c.registry_dns_pods());
    // The pod runs as the image says, with what the file capabilities gave it.
    let pod = &c.registry_dns_pods()[0];
    let user = c.jsonpath(&["pod", pod, "-n", "registry-dns"], "{.spec.securityContext.runAsUser}");
    assert_eq!(user, "65532");
    let status =
        c.node.exec(&["sh", "-c", "grep -E '^(Uid|CapEff)' /proc/$(pgrep -x registry-dns)/status"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).replace('\t', " ");
    eprintln!("registry-dns on the node: {status}");
    assert!(status.contains("Uid: 65532 65532 65532 65532"), "{status}");
    assert!(status.contains("CapEff: 0000000000001400"), "NET_BIND_SERVICE and NET_ADMIN only: {status}");
    assert_eq!(
        c.node_answer(),
        Some((ResponseCode::NoError, vec![registry1.clone()])),
        "registry-dns on 169.254.20.25"
    );
    assert!(c.interface_exists("registry-dns0"), "registry-dns made its interface on the node");
    assert!(c.node_getent().is_err(), "before node setup the node's resolver does not know {NAME}");

    // registry-dns follows the node's upstreams: it forwards what it does not serve.
    let ordinary = c.node.netns.dig(LINK_LOCAL, &[support::node::ORDINARY]);
    assert_eq!(ordinary.rdata("A"), [support::node::ORDINARY_IP], "registry-dns forwards to the node's upstream");

    // 3. Node setup routes the name to registry-dns in systemd-resolved (its auto mode finds
    // resolved active) and writes containerd's hosts.toml for the registry.
    c.node.sh_ok(&format!(
        "mkdir -p /etc/containers/registries.conf.d /etc/docker && printf '{}' > /etc/docker/daemon.json",
        USER_DAEMON_JSON.replace('\n', "\\n")
    ));
    c.cp.kubectl(&["apply", "-k", &format!("{DEPLOY}/node")]);
    c.rollout("registry-dns", "daemonset/registry-dns-node-setup", 120);
    wait_for("node setup's resolved wiring", Duration::from_secs(30), || {
        let getent = c.node_getent()?;
        (getent == [registry1.clone()]).then_some(()).ok_or(format!("{getent:?}"))
    });
    let routing = String::from_utf8_lossy(&c.node.sh("resolvectl domain registry-dns0").stdout).into_owned();
    assert!(routing.contains(&format!("~{NAME}")), "registry-dns0's routing domain: {routing}");
    wait_for("node setup's hosts.toml", Duration::from_secs(30), || {
        let now = c.node.etc(HOSTS_TOML)?;
        (now == HOSTS_TOML_CONTENT).then_some(()).ok_or(now)
    });
    // The node also has containers/image's /etc/containers and Docker's daemon.json, as a node
    // with podman or CRI-O and Docker installed has them (made before node setup, below): node
    // setup configured them too, daemon.json through the registry-dns binary that the setup pod's
    // init container copied out of the registry-dns image. The runtimes themselves pull in
    // tests/runtimes_pull.rs.
    wait_for("node setup's containers/image drop-in and Docker's daemon.json", Duration::from_secs(30), || {
        let dropin = c.node.etc(CONTAINERS_DROPIN)?;
        let daemon_json = c.node.etc("docker/daemon.json")?;
        (dropin.contains("insecure = true") && daemon_json.contains("\"knative-local-registry:5000\""))
            .then_some(())
            .ok_or(format!("{dropin}\n{daemon_json}"))
    });

    // 4. A pod in `default` pushes by name; a second pod's image is that digest, by name: the
    // kubelet asks containerd (CRI) to pull it, which resolves the name on the node.
    let digest_ref = c.push("crane-push-1", &format!("{REPO}:1"));
    eprintln!("crane pushed {digest_ref}");
    let image_id = c.run_app("app-1", &digest_ref, "IfNotPresent");
    assert_eq!(image_id, digest_ref, "the kubelet ran what the pod pushed");

    // 5. The registry Pod is deleted; its ReplicaSet makes another, with another address. The
    // image is removed from the node and pulled again (Always), and a pod pushes again.
    c.cp.kubectl(&["delete", "pod", "app-1", "-n", "default"]);
    c.cp.kubectl(&["delete", "pod", "-n", "registry", "-l", "app.kubernetes.io/name=registry"]);
    let registry2 = wait_for("a new registry Pod in the EndpointSlices", Duration::from_secs(90), || {
        let ips = c.registry_endpoints();
        (ips.len() == 1 && ips[0] != registry1).then(|| ips[0].clone()).ok_or(format!("{ips:?}"))
    });
    eprintln!("the registry moved: {registry1} -> {registry2}");
    wait_for("registry-dns answers the new Pod", Duration::from_secs(10), || {
        let answer = c.node_answer();
        (answer == Some((ResponseCode::NoError, vec![registry2.clone()]))).then_some(()).ok_or(format!("{answer:?}"))
    });
    let removed = c.node.exec(&["ctr", "-n", "k8s.io", "images", "rm", &digest_ref]).output().unwrap();
    assert!(removed.status.success(), "ctr images rm: {}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(c.push("crane-push-2", &format!("{REPO}:2")), digest_ref, "the same content, pushed after the move");
    assert_eq!(c.run_app("app-2", &digest_ref, "Always"), digest_ref);
    let events = c.cp.kubectl(&["get", "events", "-n", "default", "--field-selector", "involvedObject.name=app-2"]);
    assert!(events.contains("Successfully pulled image"), "the kubelet pulled again: {events}");

    // 6. `helm upgrade` with a changed flag rolls the DaemonSet (maxSurge 1: the new pod serves
    // beside the old one) while a client on the node asks without pause.
    let stop = AtomicBool::new(false);
    let want = vec![registry2.clone()];
    let before = c.registry_dns_pods();
    let (queries, failures, most) = std::thread::scope(|s| {
        let client = s.spawn(|| query_until(&c, &stop, &want));
        std::thread::sleep(Duration::from_secs(1));
        c.helm(&[
            "upgrade",
            "registry-dns",
            &chart,
            "-n",
            "registry-dns",
            "--reuse-values",
            "--set",
            "cache.maxTTL=30m",
        ]);
        // `kubectl rollout status`, sampling the node's processes meanwhile.
        let mut most = 0;
        wait_for("the rollout, the old pod gone", Duration::from_secs(180), || {
            most = most.max(c.registry_dns_processes());
            let daemonset = c.jsonpath(
                &["daemonset", "registry-dns", "-n", "registry-dns"],
                "{.status.updatedNumberScheduled} {.status.numberAvailable}",
            );
            let now = c.registry_dns_pods();
            (daemonset == "1 1" && now.len() == 1 && !before.contains(&now[0]))
                .then_some(())
                .ok_or(format!("{daemonset}, pods {now:?}"))
        });
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let (queries, failures) = client.join().unwrap();
        (queries, failures, most)
    });
    eprintln!("during the rolling update: {queries} queries, {} failed: {failures:?}", failures.len());
    assert_eq!(most, 2, "the new registry-dns served beside the old one (maxSurge 1)");
    let args = c.jsonpath(&["pods", "-n", "registry-dns", "-l", "app.kubernetes.io/name=registry-dns"], "{..args}");
    assert!(args.contains("--cache-max-ttl=30m"), "the new pod has the new flag: {args}");
    assert!(queries > 100, "the client kept asking: {queries}");
    assert!(
        failures.is_empty(),
        "{} of {queries} queries failed during the rolling update: {failures:?}",
        failures.len()
    );

    // 7. Removal in deploy/README.md's order: node setup reverts the node, registry-dns goes, the
    // setup pods delete the interface, then node setup goes.
    c.cp.kubectl(&["-n", "registry-dns", "set", "env", "daemonset/registry-dns-node-setup", "ACTION=remove"]);
    c.rollout("registry-dns", "daemonset/registry-dns-node-setup", 120);
    wait_for("node setup's removal", Duration::from_secs(30), || {
        let dropin = c.node.etc("systemd/resolved.conf.d/registry-dns.conf");
        let others_gone = c.node.etc(CONTAINERS_DROPIN).is_err()
            && c.node.etc("docker/daemon.json").as_deref() == Ok(USER_DAEMON_JSON);
        (dropin.is_err() && c.node.etc(HOSTS_TOML).is_err() && others_gone).then_some(()).ok_or(format!("{dropin:?}"))
    });
    c.helm(&["uninstall", "registry-dns", "-n", "registry-dns", "--wait"]);
    wait_for("the registry-dns pod gone", Duration::from_secs(60), || {
        let now = c.registry_dns_pods();
        now.is_empty().then_some(()).ok_or(format!("{now:?}"))
    });
    assert!(c.interface_exists("registry-dns0"), "registry-dns leaves its interface for the next pod");
    c.cp.kubectl(&["-n", "registry-dns", "rollout", "restart", "daemonset/registry-dns-node-setup"]);
    wait_for("node setup deletes registry-dns0", Duration::from_secs(60), || {
        (!c.interface_exists("registry-dns0")).then_some(()).ok_or("still there".to_string())
    });
    c.cp.kubectl(&["delete", "-k", &format!("{DEPLOY}/node")]);
    assert_eq!(c.node.resolver_snapshot(), node_resolver, "the node's resolver as it was");
    let certs = std::fs::read_dir(c.node.path("/etc/containerd/certs.d")).unwrap().count();
    assert_eq!(certs, 0, "the node's certs.d as it was");
    assert_eq!(
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        host_resolv_conf,
        "the host's resolv.conf untouched"
    );
}
