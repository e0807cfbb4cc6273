//! The shipped install on a real cluster of kubelets: three nodes, then a fourth that joins.
//!
//! ```text
//!  host: etcd, kube-apiserver on 10.198.0.1:P (the `kubernetes` Service's endpoint), kube-scheduler,
//!        kube-controller-manager, the test, helm and kubectl (as admin); dnsmasq on 10.198.0.1:53,
//!        the nodes' own DNS server (knows only ordinary.test, NXDOMAIN for the rest)
//!  bridge rdns-nodes 10.198.0.0/24, host-gw routes between the nodes' pod ranges
//!  node-N 10.198.0.(N+1), pods 10.244.N.0/24 (tests/cluster/node.sh: Debian booted with systemd as
//!        PID 1, systemd-resolved's stub, networkd with DNS=10.198.0.1 on host0)
//!    kubelet ── CRI ──► containerd 1.6 + runc ── CNI bridge cni0; kube-proxy (iptables mode)
//!    hostNetwork: registry-dns (the chart's DaemonSet) on registry-dns0 169.254.20.25,
//!                 node setup (the chart's, nsenter into the node's systemd)
//!    pods: CoreDNS x2 (kubeadm's Deployment and Corefile, behind kube-dns 10.96.0.10), the registry
//!          (deploy/registry, first on node-1, its volume a directory every node shares), and the
//!          story's pods, all ClusterFirst
//! ```
//!
//! The story, in one test: (1) a glibc pod and a musl pod on node-2 resolve the registry's bare
//! name through kube-dns, CoreDNS and its patched Corefile, and registry-dns on CoreDNS's node;
//! (2) crane on node-3 pushes by name and resolves the tag to a digest by name; (3) the kubelets of
//! node-2 and node-3 pull it by name through CRI; (4) node-1 is drained, the registry comes up on
//! another node with its data, the next pull works, while a client on every node asks registry-dns
//! every 20 ms from a fresh socket; (5) node-4 joins and is wired by the DaemonSets alone, then
//! pulls by name; (6) `helm upgrade` rolls registry-dns across the four nodes under the same
//! clients; (7) node setup's removal and the uninstall leave every node as it was.
//!
//! Real: everything Kubernetes runs here (API server, controllers, scheduler, kubelets,
//! kube-proxy's iptables rules, CoreDNS's kubernetes, forward and reload plugins, containerd's CRI
//! plugin, runc, CNI), the shipped chart, `deploy/registry`, `deploy/coredns/patch-corefile.sh`,
//! and node setup's real systemd-resolved wiring. Stand-ins: the images are built here
//! (tests/cluster/images/build.py: no registry can be reached); the registry's volume is a hostPath
//! on a directory that the host binds into every node, as network storage (NFS, a CSI volume)
//! would be seen; the nodes' DNS server is dnsmasq. `REGISTRY_DNS_TEST_SKIP_COREDNS_PATCH=1` leaves
//! the CoreDNS patch out, and the test then fails at step 1 (docs/testing.md records that run).
//!
//! Needs root; skipped with a loud message when not root or when a part is missing or cannot be
//! built, and never skipped when `CI` is set.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use serde_json::json;
use support::control_plane::{self, ControlPlane};
use support::node::{HostDns, Node};
use support::{TempDir, ask_a, images, resolvers};

const NAME: &str = "knative-local-registry";
const REPO: &str = "knative-local-registry:5000/app";
const LINK_LOCAL: &str = "169.254.20.25";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
/// Where the registry's data lives on every node: one directory of the host's, bound into each.
const REGISTRY_DATA: &str = "/var/lib/registry-data";
/// kube-controller-manager's controllers: what the workloads here need (the node lifecycle
/// controller lifts the not-ready taint the API server puts on a new Node).
const CONTROLLERS: &str = "endpointslice-controller,serviceaccount-controller,namespace-controller,\
    garbage-collector-controller,root-ca-certificate-publisher-controller,daemonset-controller,\
    deployment-controller,replicaset-controller,persistentvolume-binder-controller,node-lifecycle-controller";
/// Set to leave `patch-corefile.sh add` out: step 1 must then fail.
const SKIP_PATCH: &str = "REGISTRY_DNS_TEST_SKIP_COREDNS_PATCH";

struct Parts {
    kubectl: PathBuf,
    helm: PathBuf,
    crictl: PathBuf,
    images: PathBuf,
    coredns_image: String,
}

/// The parts, built (or found) once: the control plane, kubelet, kube-proxy, kube-scheduler and
/// the CNI plugins, CoreDNS, crane and crictl from tests/cluster, helm from deploy/check/go/helm,
/// the images; containerd, runc and iptables from Debian (tests/run.sh installs them).
fn parts() -> Option<&'static Parts> {
    static PARTS: OnceLock<Result<Parts, String>> = OnceLock::new();
    control_plane::parts_once(
        &PARTS,
        "tests/kubelet_cluster.rs",
        "namespaces, mounts, cgroups, containerd",
        &["/usr/bin/containerd", "/usr/sbin/iptables", "/usr/bin/docker-registry", "/usr/sbin/setcap"],
        || {
            let kube = control_plane::build("build")?;
            control_plane::build("build-node")?;
            let e2e = control_plane::build("build-e2e")?;
            let cri = control_plane::build("build-cri")?;
            let helm = Command::new(format!("{DEPLOY}/check/go/build.sh"))
                .arg("helm")
                .output()
                .map_err(|e| format!("deploy/check/go/build.sh: {e}"))?;
            if !helm.status.success() {
                return Err(format!("deploy/check/go/build.sh helm: {}", String::from_utf8_lossy(&helm.stderr)));
            }
            let helm = PathBuf::from(String::from_utf8_lossy(&helm.stdout).trim());
            let coredns = e2e[0].join("coredns");
            let images = images::build(&e2e[1].join("crane"), &coredns, &resolvers::musl())?;
            let version = e2e[0].file_name().unwrap().to_string_lossy().trim_start_matches("coredns-").to_string();
            Ok(Parts {
                kubectl: kube[0].join("kubectl"),
                helm,
                crictl: cri[0].join("crictl"),
                images,
                coredns_image: format!("registry.k8s.io/coredns/coredns:{version}"),
            })
        },
    )
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

/// The cluster: a control plane with a scheduler on the node network, the nodes, their DNS server,
/// and the registry's shared directory.
struct Cluster {
    parts: &'static Parts,
    nodes: Vec<Node>,
    cp: ControlPlane,
    _dns: HostDns,
    dir: TempDir,
}

impl Cluster {
    fn start(nodes: u8) -> Option<Self> {
        let parts = parts()?;
        Node::network();
        let dir = TempDir::new("kubelet-cluster");
        let dns = HostDns::start(&dir);
        let cp = ControlPlane::launch_on_node_network(parts.kubectl.clone(), "kubelet-cluster", Some(CONTROLLERS));
        cp.script("start-scheduler", &[]);
        let storage = dir.path("registry-data");
        std::fs::create_dir_all(&storage).unwrap();
        std::os::unix::fs::chown(&storage, Some(1000), Some(1000)).unwrap();
        let mut cluster = Self { parts, nodes: Vec::new(), cp, _dns: dns, dir };
        for index in 1..=nodes {
            cluster.join(index);
        }
        Some(cluster)
    }

    /// Boots node `index`, joins it and waits until it is Ready: how long from its boot to Ready.
    fn join(&mut self, index: u8) -> Duration {
        let started = Instant::now();
        let storage = self.dir.path("registry-data");
        let node = Node::join(
            &self.cp,
            index,
            &self.parts.images,
            &[(&self.parts.crictl, "/usr/local/bin/crictl")],
            &[(&storage, REGISTRY_DATA)],
        );
        let name = node.name.clone();
        self.nodes.push(node);
        wait_for(&format!("{name} Ready"), Duration::from_secs(120), || {
            let ready = self.cp.try_kubectl(&[
                "get",
                "node",
                &name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            (ready == "True").then_some(()).ok_or(ready)
        });
        started.elapsed()
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn helm(&self, args: &[&str]) -> String {
        let out = self.cp.as_admin(&self.parts.helm).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "helm {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// `helm upgrade` of the release with the values it has and one `--set`, as deploy/README.md does.
    fn upgrade(&self, chart: &str, set: &str) {
        self.helm(&["upgrade", "registry-dns", chart, "-n", "registry-dns", "--reuse-values", "--set", set]);
    }

    /// `deploy/coredns/patch-corefile.sh ACTION`, as the admin.
    fn patch_corefile(&self, action: &str) {
        let out = self.cp.as_admin(format!("{DEPLOY}/coredns/patch-corefile.sh")).arg(action).output().unwrap();
        assert!(
            out.status.success(),
            "patch-corefile.sh {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl apply -f` of a YAML text.
    fn apply_yaml(&self, yaml: &str) {
        let file = self.dir.path("apply.yaml");
        std::fs::write(&file, yaml).unwrap();
        self.cp.kubectl(&["apply", "-f", &file.to_string_lossy()]);
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

    /// Pods of `namespace` with `selector`: (name, node).
    fn pods(&self, namespace: &str, selector: &str) -> Vec<(String, String)> {
        let out = self.jsonpath(
            &["pods", "-n", namespace, "-l", selector],
            "{range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        );
        out.lines().filter_map(|l| l.split_once(' ')).map(|(p, n)| (p.to_string(), n.to_string())).collect()
    }

    /// A one-shot Pod in `default` on `node` (ClusterFirst, as a build pod is), running `image`
    /// with `args`: its phase and its log, read from the node's CRI log file.
    fn run_once(&self, pod: &str, node: &str, image: &str, command: &[&str]) -> (String, String) {
        self.cp.apply(&json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "default"},
            "spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": false,
                "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}],
            },
        }));
        let phase = wait_for(&format!("pod {pod} finished"), Duration::from_secs(90), || {
            let phase = self.jsonpath(&["pod", pod, "-n", "default"], "{.status.phase}");
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase.clone()).ok_or(phase)
        });
        let log = self.node(node).container_log("default", pod, "main").unwrap_or_else(|e| panic!("{pod}'s log: {e}"));
        (phase, log)
    }

    /// A Pod in `default` on `node` whose image is `image`, pulled by the kubelet through CRI with
    /// `pull_policy`; waits until it runs and returns the image ID the kubelet reports.
    fn run_app(&self, pod: &str, node: &str, image: &str, pull_policy: &str) -> String {
        self.cp.apply(&json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "default"},
            "spec": {
                "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1,
                "nodeSelector": {"kubernetes.io/hostname": node},
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

    fn registry_dns_pods(&self) -> Vec<(String, String)> {
        self.pods("registry-dns", "app.kubernetes.io/name=registry-dns")
    }

    /// The apiserver's metrics, as `kubectl get --raw /metrics` prints them.
    fn apiserver_metric(&self, prefix: &str, filter: &str) -> f64 {
        let metrics = self.cp.kubectl(&["get", "--raw", "/metrics"]);
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Open WATCH requests on EndpointSlices of `scope`: `namespace` is registry-dns's alone
    /// (kube-proxy, CoreDNS and the controllers watch every namespace, `cluster`).
    fn slice_watches(&self, scope: &str) -> f64 {
        self.apiserver_metric(
            "apiserver_longrunning_requests{",
            &format!("resource=\"endpointslices\",scope=\"{scope}\",subresource=\"\",verb=\"WATCH\""),
        )
    }

    /// Every EndpointSlice's generation, by namespace/name: how often each changed.
    fn slice_generations(&self) -> BTreeMap<String, u64> {
        let out = self.jsonpath(
            &["endpointslices", "-A"],
            "{range .items[*]}{.metadata.namespace}/{.metadata.name} {.metadata.generation}{\"\\n\"}{end}",
        );
        out.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0))).collect()
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
        eprintln!("pods:\n{pods}\nevents:\n{events}");
        for node in &self.nodes {
            eprintln!(
                "{}: kubelet journal:\n{}\nkube-proxy journal:\n{}\nresolved:\n{}",
                node.name,
                node.journal("kubelet", 25),
                node.journal("kube-proxy", 10),
                String::from_utf8_lossy(&node.sh("resolvectl status").stdout)
            );
        }
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
/// The nodes that have containers/image's /etc/containers and Docker's daemon.json, as a node with
/// podman or CRI-O and Docker installed has them (node-4 has neither).
const WITH_OTHER_RUNTIMES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// One lookup's outcome, as a client sees it.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Addresses(Vec<String>),
    /// NOERROR with no address: the name exists, no registry pod is ready.
    NoData,
    Failed(String),
}

/// The A records registry-dns serves on `node` for the registry's name: one query from a fresh
/// socket (a new source port, as glibc and Go's resolver use per lookup), one try of at most 2 s
/// (stricter than glibc's default of 5 s and two tries).
fn ask_node(node: &Node) -> Answer {
    let answer = node.netns.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        ask_a(&socket, SocketAddr::from(([169, 254, 20, 25], 53)), NAME)
    });
    match answer {
        Some((ResponseCode::NoError, ips)) if ips.is_empty() => Answer::NoData,
        Some((ResponseCode::NoError, ips)) => Answer::Addresses(ips),
        other => Answer::Failed(format!("{other:?}")),
    }
}

/// Asks registry-dns on `node` every 20 ms until `stop`: each answer with its time since `start`.
fn ask_until(node: &Node, start: Instant, stop: &AtomicBool) -> Vec<(Duration, Answer)> {
    let mut answers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        answers.push((start.elapsed(), ask_node(node)));
        std::thread::sleep(Duration::from_millis(20));
    }
    answers
}

/// The registry's ready addresses in its EndpointSlices, every 50 ms until `stop`.
fn watch_slices(c: &Cluster, start: Instant, stop: &AtomicBool) -> Vec<(Duration, Vec<String>)> {
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = start.elapsed();
        seen.push((at, c.registry_endpoints()));
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

/// registry-dns's resident memory (VmRSS, VmHWM in KiB) and CPU seconds on `node`, with its age.
fn registry_dns_usage(node: &Node) -> String {
    node.sh_ok(
        "pid=$(pgrep -o -x registry-dns); tck=$(getconf CLK_TCK); up=$(cut -d. -f1 /proc/uptime); \
         set -- $(cut -d')' -f2 /proc/$pid/stat); \
         echo \"$(grep -E '^Vm(RSS|HWM)' /proc/$pid/status | tr -s ' \\t' ' ' | tr '\\n' ' ')\
         cpu $(( (${12} + ${13}) * 1000 / tck )) ms in $(( up - ${20} / tck )) s\"",
    )
    .trim()
    .to_string()
}

/// The time since `start` at which `f` held for the first time in `seen`.
fn first<T>(seen: &[(Duration, T)], f: impl Fn(&T) -> bool) -> Option<Duration> {
    seen.iter().find(|(_, v)| f(v)).map(|(at, _)| *at)
}

#[test]
fn three_nodes_resolve_push_pull_and_move_the_registry_then_a_fourth_joins_and_the_chart_rolls() {
    let t = Instant::now();
    if parts().is_none() {
        return;
    }
    let mut times: Vec<(&str, Duration)> = vec![("parts found or built, images", t.elapsed())];
    let t = Instant::now();
    let Some(mut c) = Cluster::start(3) else { return };
    times.push(("control plane, three nodes Ready", t.elapsed()));
    let host_resolv_conf = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let before: Vec<String> = c.nodes.iter().map(|n| n.resolver_snapshot()).collect();
    eprintln!(
        "nodes Ready: {}",
        c.jsonpath(&["nodes"], "{range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}; {end}")
    );

    // CoreDNS as kubeadm installs it: its Corefile, the kube-dns Service and the Deployment.
    let t = Instant::now();
    let corefile = format!("Corefile={DEPLOY}/check/corefiles/kubeadm.Corefile");
    c.cp.kubectl(&["create", "configmap", "coredns", "-n", "kube-system", "--from-file", &corefile]);
    let manifest = std::fs::read_to_string(format!("{ROOT}/tests/cluster/coredns.yaml")).unwrap();
    c.apply_yaml(&manifest.replace("image: IMAGE", &format!("image: {}", c.parts.coredns_image)));

    // The install, as deploy/README.md's kubeadm steps with Helm say. 1. The registry; its PVC
    // binds a hostPath PersistentVolume (the cluster has no provisioner) on the directory every
    // node shares; first on node-1 (a preference, which a drain overrides).
    c.cp.apply(&json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "registry-data"},
        "spec": {
            "capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": REGISTRY_DATA, "type": "Directory"},
        },
    }));
    c.cp.kubectl(&["apply", "-k", &format!("{DEPLOY}/registry")]);
    let prefer_node_1 = json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}]}}]}}}}}});
    c.cp.kubectl(&[
        "patch",
        "deployment",
        "registry",
        "-n",
        "registry",
        "--type",
        "merge",
        "-p",
        &prefer_node_1.to_string(),
    ]);
    // 2. registry-dns from the chart with node setup, into a namespace that admits privileged pods.
    for node in WITH_OTHER_RUNTIMES {
        c.node(node).sh_ok(&format!(
            "mkdir -p /etc/containers/registries.conf.d /etc/docker && printf '{}' > /etc/docker/daemon.json",
            USER_DAEMON_JSON.replace('\n', "\\n")
        ));
    }
    c.cp.kubectl(&["create", "namespace", "registry-dns"]);
    c.cp.kubectl(&[
        "label",
        "namespace",
        "registry-dns",
        "pod-security.kubernetes.io/enforce=privileged",
        "pod-security.kubernetes.io/warn=privileged",
    ]);
    let chart = format!("{DEPLOY}/helm/registry-dns");
    c.helm(&["install", "registry-dns", &chart, "-n", "registry-dns", "--set", "nodeSetup.enabled=true"]);
    // 3. The stanza for pods in CoreDNS's ConfigMap; CoreDNS's reload plugin picks it up.
    let patched = std::env::var_os(SKIP_PATCH).is_none();
    if patched {
        c.patch_corefile("add");
    } else {
        eprintln!("{SKIP_PATCH} is set: the CoreDNS patch is left out");
    }
    c.rollout("kube-system", "deployment/coredns", 120);
    c.rollout("registry", "deployment/registry", 120);
    c.rollout("registry-dns", "daemonset/registry-dns", 120);
    c.rollout("registry-dns", "daemonset/registry-dns-node-setup", 120);
    let registry_pods = c.pods("registry", "app.kubernetes.io/name=registry");
    assert_eq!(registry_pods.len(), 1, "{registry_pods:?}");
    assert_eq!(registry_pods[0].1, "node-1", "the registry starts on node-1");
    let registry1 = wait_for("the registry Pod in the EndpointSlices", Duration::from_secs(30), || {
        let ips = c.registry_endpoints();
        (ips.len() == 1).then(|| ips[0].clone()).ok_or(format!("{ips:?}"))
    });
    times.push(("install: CoreDNS, registry, chart with node setup, rollouts", t.elapsed()));

    // The DaemonSet's pods run as the image says, with what the file capabilities gave them, and
    // follow the node's upstream for other names.
    for (pod, node) in c.registry_dns_pods() {
        let user = c.jsonpath(&["pod", &pod, "-n", "registry-dns"], "{.spec.securityContext.runAsUser}");
        assert_eq!(user, "65532", "{pod}");
        let status =
            c.node(&node).sh_ok("grep -E '^(Uid|CapEff)' /proc/$(pgrep -x registry-dns)/status").replace('\t', " ");
        assert!(status.contains("Uid: 65532 65532 65532 65532"), "{node}: {status}");
        assert!(status.contains("CapEff: 0000000000001400"), "{node}: NET_BIND_SERVICE and NET_ADMIN only: {status}");
        let ordinary = c.node(&node).netns.dig(LINK_LOCAL, &[support::node::ORDINARY]);
        assert_eq!(
            ordinary.rdata("A"),
            [support::node::ORDINARY_IP],
            "{node}: registry-dns forwards to the node's upstream"
        );
    }
    // Node setup's wiring on every node: the name routed to registry-dns0 in resolved, hosts.toml.
    let t = Instant::now();
    for node in &c.nodes {
        wait_for(&format!("{}: node setup's wiring", node.name), Duration::from_secs(60), || {
            let routing = String::from_utf8_lossy(&node.sh("resolvectl domain registry-dns0").stdout).into_owned();
            let hosts = node.etc(HOSTS_TOML)?;
            (routing.contains(&format!("~{NAME}")) && hosts == HOSTS_TOML_CONTENT)
                .then_some(())
                .ok_or(format!("{routing} {hosts}"))
        });
    }
    // Node setup configured containers/image and Docker too where they are, daemon.json through
    // the registry-dns binary that the setup pod's init container copied out of the registry-dns
    // image. The runtimes themselves pull in tests/runtimes_pull.rs.
    for node in WITH_OTHER_RUNTIMES.map(|n| c.node(n)) {
        wait_for(&format!("{}: containers/image drop-in and daemon.json", node.name), Duration::from_secs(30), || {
            let dropin = node.etc(CONTAINERS_DROPIN)?;
            let daemon_json = node.etc("docker/daemon.json")?;
            (dropin.contains("insecure = true") && daemon_json.contains("\"knative-local-registry:5000\""))
                .then_some(())
                .ok_or(format!("{dropin}\n{daemon_json}"))
        });
    }
    // Both CoreDNS replicas reloaded the patched Corefile (the kubelet projects the ConfigMap at
    // its next sync of the pod, up to a minute; reload checks every 30 s, jittered by 15).
    let coredns = c.pods("kube-system", "k8s-app=kube-dns");
    eprintln!("CoreDNS pods: {coredns:?}; registry-dns: {:?}", c.registry_dns_pods());
    if patched {
        for (pod, node) in &coredns {
            wait_for(&format!("{pod} reloads its Corefile"), Duration::from_secs(150), || {
                let log = c.node(node).container_log("kube-system", pod, "coredns")?;
                log.contains("[INFO] Reloading complete").then_some(()).ok_or(log)
            });
        }
    }
    times.push(("node setup on 3 nodes, CoreDNS reloaded", t.elapsed()));

    // 1. ClusterFirst pods on node-2 resolve the bare name: search list first, then the name
    // itself through kube-dns (kube-proxy), CoreDNS's stanza and registry-dns on its node.
    let t = Instant::now();
    let (phase, log) =
        c.run_once("getent-glibc", "node-2", "registry-dns.test/resolvers:1", &["getent", "ahosts", NAME]);
    let glibc: Vec<&str> =
        log.lines().filter(|l| l.contains("STREAM")).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(
        (phase.as_str(), glibc),
        ("Succeeded", vec![registry1.as_str()]),
        "step 1: glibc's getent in a ClusterFirst pod on node-2 (was the CoreDNS patch left out?): {log}"
    );
    let (phase, log) = c.run_once("lookup-musl", "node-2", "registry-dns.test/resolvers:1", &["/lookup-musl", NAME]);
    assert_eq!(
        (phase.as_str(), log.lines().filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok()).collect::<Vec<_>>()),
        ("Succeeded", vec![registry1.as_str()]),
        "step 1: musl in a ClusterFirst pod on node-2: {log}"
    );
    times.push(("1. glibc and musl pods resolve", t.elapsed()));

    // 2. crane on node-3, ClusterFirst: push by name, then the tag to a digest by name.
    let t = Instant::now();
    let crane = "registry-dns.test/crane:1";
    let (phase, log) =
        c.run_once("crane-push", "node-3", crane, &["/crane", "push", "/app.tar", &format!("{REPO}:1"), "--insecure"]);
    assert_eq!(phase, "Succeeded", "crane push: {log}");
    let pushed = log.lines().find(|l| l.starts_with(&format!("{REPO}@sha256:"))).unwrap_or_else(|| panic!("{log}"));
    let pushed = pushed.to_string();
    let (phase, log) =
        c.run_once("crane-digest", "node-3", crane, &["/crane", "digest", &format!("{REPO}:1"), "--insecure"]);
    assert_eq!(phase, "Succeeded", "crane digest: {log}");
    assert_eq!(format!("{REPO}@{}", log.trim()), pushed, "crane digest by name gives what was pushed");
    times.push(("2. crane pushes and resolves the digest", t.elapsed()));

    // 3. The kubelets of node-2 and node-3 pull it by name through CRI.
    let t = Instant::now();
    for node in ["node-2", "node-3"] {
        let image_id = c.run_app(&format!("app-{node}"), node, &format!("{REPO}:1"), "IfNotPresent");
        assert_eq!(image_id, pushed, "{node}'s kubelet ran what was pushed");
    }
    times.push(("3. node-2 and node-3 pull by name", t.elapsed()));

    // 4. node-1 is drained while a client on every node asks registry-dns. The registry comes up
    // on another node with its data (the shared directory); node-2 pulls again, through CRI.
    let t = Instant::now();
    for node in ["node-2", "node-3"] {
        c.cp.kubectl(&["delete", "pod", &format!("app-{node}"), "-n", "default", "--wait"]);
    }
    let crictl = "crictl --runtime-endpoint unix:///run/containerd/containerd.sock";
    c.node("node-2").sh_ok(&format!("{crictl} rmi {REPO}:1 >/dev/null"));
    let generations = c.slice_generations();
    let events = c.apiserver_metric("apiserver_watch_events_total{", "endpointslices");
    let (namespaced, cluster_wide) = (c.slice_watches("namespace"), c.slice_watches("cluster"));
    let usage: Vec<String> = c.nodes.iter().map(|n| format!("{}: {}", n.name, registry_dns_usage(n))).collect();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (answers, slices, drained, drain_done, pulled) = std::thread::scope(|s| {
        let clients: Vec<_> = c.nodes.iter().map(|n| s.spawn(|| ask_until(n, start, &stop))).collect();
        let slices = s.spawn(|| watch_slices(&c, start, &stop));
        std::thread::sleep(Duration::from_secs(1));
        let drain_start = start.elapsed();
        let drain = s.spawn(|| {
            c.cp.kubectl(&["drain", "node-1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"]);
            start.elapsed()
        });
        // The next pull, from the moment the old pod leaves the EndpointSlice (before, a pull
        // might still reach it): crictl on node-2 asks containerd's CRI image service, as the
        // kubelet does, until it succeeds.
        let pulled = wait_for("a pull by name after the drain", Duration::from_secs(120), || {
            if c.registry_endpoints().contains(&registry1) {
                return Err("the old pod is still in the slice".to_string());
            }
            let tried = start.elapsed();
            let out = c.node("node-2").sh(&format!("{crictl} pull {REPO}:1"));
            let error = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "step 4: pull tried at {tried:?} for {:?}: {}",
                start.elapsed() - tried,
                if out.status.success() { "pulled" } else { error.lines().last().unwrap_or("") }
            );
            out.status.success().then(|| start.elapsed()).ok_or_else(|| error.into_owned())
        });
        let drain_done = drain.join().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let answers: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
        (answers, slices.join().unwrap(), drain_start, drain_done, pulled)
    });
    let registry2 = wait_for("the moved registry in the EndpointSlices", Duration::from_secs(10), || {
        let ips = c.registry_endpoints();
        (ips.len() == 1 && ips[0] != registry1).then(|| ips[0].clone()).ok_or(format!("{ips:?}"))
    });
    let moved_to = c.pods("registry", "app.kubernetes.io/name=registry");
    assert_ne!(moved_to[0].1, "node-1", "the registry left node-1: {moved_to:?}");
    let drain_to_pull = pulled - drained;
    let image_id = c.run_app("app-after-move", "node-2", &format!("{REPO}:1"), "Always");
    assert_eq!(image_id, pushed, "the kubelet pulls from the moved registry");
    let gone = first(&slices, |ips| !ips.contains(&registry1)).expect("the slice dropped the old pod");
    let back = first(&slices, |ips| ips.contains(&registry2)).expect("the slice got the new pod");
    let generations_after = c.slice_generations();
    let events = c.apiserver_metric("apiserver_watch_events_total{", "endpointslices") - events;
    let changed: BTreeMap<&String, u64> = generations_after
        .iter()
        .map(|(k, v)| (k, v - generations.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    eprintln!(
        "step 4: drain at {drained:?} (kubectl drain returned at {drain_done:?}); the slice dropped {registry1} at {gone:?} and listed {registry2} ({}) at {back:?}; \
         pulled at {pulled:?}: drain to pull {drain_to_pull:?}",
        moved_to[0].1
    );
    // Each change of the registry's slice goes to every watcher of it (registry-dns's and the
    // cluster-wide ones); any other slice's only to the cluster-wide ones.
    let expected: f64 = changed
        .iter()
        .map(|(slice, n)| *n as f64 * (cluster_wide + if slice.starts_with("registry/") { namespaced } else { 0.0 }))
        .sum();
    eprintln!(
        "step 4: EndpointSlice WATCHes: {namespaced} in one namespace (registry-dns's), {cluster_wide} cluster-wide; \
         slices changed {changed:?}; watch events sent for EndpointSlices {events} ({expected} expected from the watches)"
    );
    // What each node's client saw: no failure; NODATA only while the slice had no ready pod; the
    // old pod no later than 1 s after the slice dropped it.
    let slack = Duration::from_secs(1);
    for (node, answers) in c.nodes.iter().zip(&answers) {
        let failures: Vec<_> = answers.iter().filter(|(_, a)| matches!(a, Answer::Failed(_))).collect();
        let nodata: Vec<_> = answers.iter().filter(|(_, a)| *a == Answer::NoData).map(|(at, _)| *at).collect();
        let stale = answers
            .iter()
            .filter(|(at, a)| *at > gone && *a == Answer::Addresses(vec![registry1.clone()]))
            .map(|(at, _)| *at - gone)
            .max();
        eprintln!(
            "step 4: {}: {} lookups, {} failed, {} NODATA (from {:?} to {:?}), old pod answered up to {stale:?} after the slice change",
            node.name,
            answers.len(),
            failures.len(),
            nodata.len(),
            nodata.first(),
            nodata.last()
        );
        assert!(answers.len() > 100, "{}: the client kept asking", node.name);
        assert!(failures.is_empty(), "{}: failed lookups during the drain: {failures:?}", node.name);
        assert!(
            nodata.iter().all(|at| *at + slack >= gone && *at <= back + slack),
            "{}: NODATA outside the slice's empty window {gone:?}..{back:?}: {nodata:?}",
            node.name
        );
        assert!(
            stale.is_none_or(|d| d <= slack),
            "{}: the gone pod answered {stale:?} after the slice change",
            node.name
        );
    }
    c.cp.kubectl(&["uncordon", "node-1"]);
    times.push(("4. drain, move, pull", t.elapsed()));

    // 5. A fourth node joins; the DaemonSets alone wire it, and it pulls by name.
    let t = Instant::now();
    let boot_to_ready = c.join(4);
    let ready = Instant::now();
    let node4 = c.node("node-4");
    wait_for("node-4 wired by the DaemonSets", Duration::from_secs(60), || {
        let running = node4.sh("pgrep -x registry-dns").status.success();
        let routing = String::from_utf8_lossy(&node4.sh("resolvectl domain registry-dns0").stdout).into_owned();
        let hosts = node4.etc(HOSTS_TOML).unwrap_or_default();
        let getent = String::from_utf8_lossy(&node4.sh(&format!("getent ahosts {NAME}")).stdout).into_owned();
        (running
            && routing.contains(&format!("~{NAME}"))
            && hosts == HOSTS_TOML_CONTENT
            && getent.starts_with(&registry2))
        .then_some(())
        .ok_or(format!("registry-dns running {running}; {routing}; {hosts}; {getent}"))
    });
    let wired = ready.elapsed();
    let image_id = c.run_app("app-node-4", "node-4", &format!("{REPO}:1"), "IfNotPresent");
    assert_eq!(image_id, pushed, "node-4's kubelet pulls by name");
    let pulled4 = ready.elapsed();
    eprintln!(
        "step 5: node-4 booted to Ready in {boot_to_ready:?}; wired {wired:?} after Ready, pulled {pulled4:?} after"
    );
    assert!(pulled4 < Duration::from_secs(60), "node-4 pulls by name within a minute of joining: {pulled4:?}");
    wait_for("one registry-dns watch per node", Duration::from_secs(30), || {
        let watches = c.slice_watches("namespace");
        (watches == 4.0).then_some(()).ok_or(format!("{watches}"))
    });
    times.push(("5. node-4 joins, is wired and pulls", t.elapsed()));

    // 6. `helm upgrade` with a changed flag rolls the DaemonSet (maxSurge 1: on each node the new
    // pod serves beside the old one) under a client on every node.
    let t = Instant::now();
    let usage4 = registry_dns_usage(c.node("node-4"));
    let old: Vec<String> = c.registry_dns_pods().into_iter().map(|(p, _)| p).collect();
    let want = Answer::Addresses(vec![registry2.clone()]);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (answers, most) = std::thread::scope(|s| {
        let clients: Vec<_> = c.nodes.iter().map(|n| s.spawn(|| ask_until(n, start, &stop))).collect();
        std::thread::sleep(Duration::from_secs(1));
        c.upgrade(&chart, "cache.maxTTL=30m");
        // `kubectl rollout status`, sampling each node's registry-dns processes meanwhile.
        let mut most = vec![0; c.nodes.len()];
        wait_for("the rollout, the old pods gone", Duration::from_secs(240), || {
            for (i, node) in c.nodes.iter().enumerate() {
                let out = node.sh("pgrep -x registry-dns");
                most[i] = most[i].max(String::from_utf8_lossy(&out.stdout).lines().count());
            }
            let daemonset = c.jsonpath(
                &["daemonset", "registry-dns", "-n", "registry-dns"],
                "{.status.updatedNumberScheduled} {.status.numberAvailable}",
            );
            let now = c.registry_dns_pods();
            (daemonset == "4 4" && now.len() == 4 && now.iter().all(|(p, _)| !old.contains(p)))
                .then_some(())
                .ok_or(format!("{daemonset}, pods {now:?}"))
        });
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let answers: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
        (answers, most)
    });
    for ((node, answers), most) in c.nodes.iter().zip(&answers).zip(&most) {
        let wrong: Vec<_> = answers.iter().filter(|(_, a)| *a != want).collect();
        eprintln!(
            "step 6: {}: {} lookups, {} failed; at most {most} registry-dns processes",
            node.name,
            answers.len(),
            wrong.len()
        );
        assert!(answers.len() > 100, "{}: the client kept asking", node.name);
        assert!(wrong.is_empty(), "{}: lookups failed during the rolling update: {wrong:?}", node.name);
        assert_eq!(*most, 2, "{}: the new registry-dns served beside the old one (maxSurge 1)", node.name);
    }
    let args = c.jsonpath(&["pods", "-n", "registry-dns", "-l", "app.kubernetes.io/name=registry-dns"], "{..args}");
    assert!(args.contains("--cache-max-ttl=30m"), "the new pods have the new flag: {args}");
    times.push(("6. helm upgrade rolls 4 nodes", t.elapsed()));

    // The resource figures: registry-dns on each node through steps 1 to 4 (node-4's through
    // step 5), and the API server's watches.
    let watches = c.slice_watches("namespace");
    eprintln!("registry-dns before the drain (steps 1-3): {usage:#?}\nnode-4 (step 5): {usage4}");
    eprintln!("EndpointSlice WATCH requests in one namespace (registry-dns's): {watches}");
    assert_eq!(watches, 4.0, "one watch per node");

    // 7. Removal, in deploy/README.md's order with the chart's objects: node setup undoes the
    // nodes, the pods' stanza goes, registry-dns stops, node setup's restart deletes registry-dns0,
    // then the release goes.
    let t = Instant::now();
    c.upgrade(&chart, "nodeSetup.action=remove");
    c.rollout("registry-dns", "daemonset/registry-dns-node-setup", 120);
    for node in &c.nodes {
        wait_for(&format!("{}: node setup's removal", node.name), Duration::from_secs(30), || {
            let dropin = node.etc("systemd/resolved.conf.d/registry-dns.conf");
            let others_gone = !WITH_OTHER_RUNTIMES.contains(&node.name.as_str())
                || (node.etc(CONTAINERS_DROPIN).is_err()
                    && node.etc("docker/daemon.json").as_deref() == Ok(USER_DAEMON_JSON));
            (dropin.is_err() && node.etc(HOSTS_TOML).is_err() && others_gone).then_some(()).ok_or(format!("{dropin:?}"))
        });
    }
    if patched {
        c.patch_corefile("remove");
    }
    c.cp.kubectl(&["-n", "registry-dns", "delete", "daemonset", "registry-dns", "--wait"]);
    wait_for("the registry-dns pods gone", Duration::from_secs(60), || {
        let now = c.registry_dns_pods();
        now.is_empty().then_some(()).ok_or(format!("{now:?}"))
    });
    c.cp.kubectl(&["-n", "registry-dns", "rollout", "restart", "daemonset/registry-dns-node-setup"]);
    for node in &c.nodes {
        wait_for(&format!("{}: node setup deletes registry-dns0", node.name), Duration::from_secs(90), || {
            let link = Command::new("ip")
                .args(["-n", &node.netns.name, "link", "show", "registry-dns0"])
                .stderr(Stdio::null())
                .output()
                .unwrap();
            (!link.status.success()).then_some(()).ok_or("still there".to_string())
        });
    }
    c.helm(&["uninstall", "registry-dns", "-n", "registry-dns", "--wait"]);
    for (node, before) in c.nodes.iter().zip(before.iter().chain(std::iter::repeat(&before[0]))) {
        assert_eq!(&node.resolver_snapshot(), before, "{}: the node's resolver as it was", node.name);
        let certs = std::fs::read_dir(node.path("/etc/containerd/certs.d")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(certs, 0, "{}: the node's certs.d as it was", node.name);
    }
    assert_eq!(
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        host_resolv_conf,
        "the host's resolv.conf untouched"
    );
    times.push(("7. removal", t.elapsed()));

    eprintln!(
        "kubelet_cluster: drain to pull {drain_to_pull:?}; node-4 wired {wired:?} and pulled {pulled4:?} after Ready"
    );
    for (part, took) in &times {
        eprintln!("kubelet_cluster time: {part}: {:.1} s", took.as_secs_f64());
    }
}
