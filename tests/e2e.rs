//! The whole story with real parts: an image pushed by name from a pod and pulled by name on the
//! node, through the real CoreDNS (the Corefile `deploy/coredns/patch-corefile.sh` writes), the
//! real registry (Debian's `docker-registry`, distribution 2.8), go-containerregistry's `crane`
//! (what Kaniko pushes and Knative Serving resolves digests with) and containerd (Debian's, with
//! `ctr` and a `certs.d/knative-local-registry:5000/hosts.toml`), against the real control plane of
//! `tests/cluster/control-plane.sh` (etcd, kube-apiserver, kube-controller-manager with its
//! EndpointSlice controller).
//!
//! ```text
//!  host namespace: etcd, kube-apiserver 127.0.0.1:P, kube-controller-manager, the test (kube client)
//!        ▲ relay (kube-proxy's part: the `kubernetes` Service 10.96.0.1:443 -> the API server)
//!  node namespace ── resolv.conf: nameserver 169.254.20.25
//!    kube-ipvs0 10.96.0.1   registry-dns0 169.254.20.25 (registry-dns, --service ...=registry/knative)
//!    containerd + ctr --hosts-dir certs.d      [node-local-dns: CoreDNS on 169.254.20.10, 10.96.0.10]
//!    vethN 10.199.N.1/30 ─┬─ cluster DNS pod 10.199.1.2: CoreDNS, kubeadm's Corefile as patched
//!                         ├─ client pod 10.199.2.2: crane; resolv.conf of a pod in `default`
//!                         ├─ registry pod 10.199.3.2 (Pod registry-1 in `registry`)
//!                         └─ registry pod 10.199.4.2 (registry-2, after the move)
//! ```
//!
//! Fake, because there is no kubelet or kube-proxy: each Pod's status (IP, Ready) is set by the test,
//! the processes are started by the test in network namespaces, and a relay thread stands in for
//! kube-proxy's `kubernetes` Service. The Service `registry/knative`, the EndpointSlices, RBAC,
//! ConfigMaps and ServiceAccount tokens are the real API's. The registry's certificate comes from a
//! CA the test makes, standing in for cert-manager's CA Issuer of `deploy/registry/tls` (the
//! built-in CSR signers do not fit: `kubelet-serving` signs only `system:node:` subjects).
//!
//! Needs root; skipped with a loud message when not root or when a part is missing or cannot be
//! built, and never skipped when `CI` is set. The tests run one at a time.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use support::control_plane::{self, ControlPlane};
use support::netns::Netns;
use support::registry_node;
use support::relay::relay;
use support::{RegistryDns, TempDir, http_get, wait_until};

const NAME: &str = "knative-local-registry";
const REPO: &str = "knative-local-registry:5000/demo";
const PATCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/coredns/patch-corefile.sh");
const COREFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/check/corefiles");
const LINK_LOCAL: &str = "169.254.20.25";
const NODE_LOCAL_DNS: &str = "169.254.20.10";
const KUBE_DNS: &str = "10.96.0.10";
const KUBERNETES_SERVICE: &str = "10.96.0.1";
/// The search list and options a kubelet writes into a pod's resolv.conf (namespace `default`).
const POD_SEARCH: &str = "search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";

/// The binaries the tests drive.
struct Parts {
    kubectl: PathBuf,
    coredns: PathBuf,
    crane: PathBuf,
}

/// The parts, built (or found) once: the control plane and CoreDNS and crane from
/// tests/cluster/go, containerd and the registry from Debian (tests/run.sh installs them).
fn parts() -> Option<&'static Parts> {
    static PARTS: OnceLock<Result<Parts, String>> = OnceLock::new();
    control_plane::parts_once(
        &PARTS,
        "tests/e2e.rs",
        "network namespaces, mounts, containerd",
        &["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/docker-registry", "/usr/bin/openssl"],
        || {
            let kube = control_plane::build("build")?;
            let e2e = control_plane::build("build-e2e")?;
            Ok(Parts { kubectl: kube[0].join("kubectl"), coredns: e2e[0].join("coredns"), crane: e2e[1].join("crane") })
        },
    )
}

/// A process started by the test, its output in a file; killed on drop.
struct Process {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, name: &str, dir: &TempDir) -> Self {
        let log = dir.path(&format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, name: name.into(), log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let text = self.output();
        let lines: Vec<&str> = text.lines().collect();
        format!("{} log (last lines):\n{}", self.name, lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dummy interface carrying `addresses` in `ns` (kube-proxy's kube-ipvs0, node-local-dns's
/// nodelocaldns); an ifb one on kernels without dummies, as registry-dns itself falls back to.
fn dummy_interface(ns: &Netns, name: &str, addresses: &[&str]) {
    let dummy = Command::new("ip").args(["-n", &ns.name, "link", "add", name, "type", "dummy"]).output().unwrap();
    if !dummy.status.success() {
        ns.ip(&["link", "add", name, "type", "ifb"]);
    }
    for address in addresses {
        ns.ip(&["addr", "add", &format!("{address}/32"), "dev", name]);
    }
    ns.ip(&["link", "set", name, "up"]);
}

fn check(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Everything but the DNS servers: the control plane with deploy/registry and deploy/base applied,
/// the node namespace, containerd in it, and the storage the registry Pods share (their PVC).
struct Cluster {
    parts: &'static Parts,
    node: Netns,
    /// The registry's CA and the certificate it signed for the registry (TLS only).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Last: stopped after everything that runs against it.
    cp: ControlPlane,
}

/// A pod's network namespace: eth0 10.199.N.2/30, its node's end 10.199.N.1, default route to it.
struct PodNet {
    ns: Netns,
    ip: String,
}

impl Cluster {
    fn start(tls: bool) -> Option<Self> {
        let parts = parts()?;
        let cp = ControlPlane::start(parts.kubectl.clone(), "e2e");
        let node = Netns::new("node", &format!("nameserver {LINK_LOCAL}\noptions timeout:2 attempts:2\n"));
        let mut cluster = Self { parts, node, tls: None, cp };

        // The node: forwards between its pods, and owns the `kubernetes` Service's address.
        let node = &cluster.node;
        check(&node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).output().unwrap(), "ip_forward");
        dummy_interface(node, "kube-ipvs0", &[KUBERNETES_SERVICE]);
        let listener = node.run(|| TcpListener::bind((KUBERNETES_SERVICE, 443)).unwrap());
        relay(listener, SocketAddr::from(([127, 0, 0, 1], cluster.cp.port)));

        if tls {
            // A CA standing in for cert-manager's CA Issuer, with deploy/registry/tls/issuer.yaml's names.
            cluster.tls = Some(registry_node::make_certificate(
                &cluster.cp.dir,
                "registry",
                &[NAME, "knative.registry.svc", "knative.registry.svc.cluster.local"],
            ));
        }
        Some(cluster)
    }

    /// A pod network namespace, the `n`th on this node, with `resolv_conf`.
    fn pod_net(&self, role: &str, n: u8, resolv_conf: &str) -> PodNet {
        let ns = Netns::new(role, resolv_conf);
        let veth = format!("veth{n}");
        let (node_ip, ip) = (format!("10.199.{n}.1"), format!("10.199.{n}.2"));
        self.node.ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        self.node.ip(&["addr", "add", &format!("{node_ip}/30"), "dev", &veth]);
        self.node.ip(&["link", "set", &veth, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/30"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &node_ip]);
        PodNet { ns, ip }
    }

    /// `argv` in `ns` as a Pod of that ServiceAccount runs: its files at the in-cluster path (in
    /// the private mount namespace `ip netns exec` makes), the `kubernetes` Service in the
    /// environment, no kubeconfig.
    fn in_pod(ns: &Netns, account: &TempDir, argv: &[&str]) -> Command {
        const MOUNT: &str = "set -e; mount -t tmpfs -o mode=755 tmpfs /var/run; \
            mkdir -p /var/run/secrets/kubernetes.io/serviceaccount; \
            mount --bind \"$ACCOUNT\" /var/run/secrets/kubernetes.io/serviceaccount; exec \"$@\"";
        let mut full = vec!["sh", "-c", MOUNT, "sh"];
        full.extend_from_slice(argv);
        let mut command = ns.exec(&full);
        command
            .env("ACCOUNT", &account.0)
            .env("KUBERNETES_SERVICE_HOST", KUBERNETES_SERVICE)
            .env("KUBERNETES_SERVICE_PORT", "443")
            .env_remove("KUBECONFIG")
            .env("HOME", &account.0);
        command
    }

    /// registry-dns as deploy/base's DaemonSet runs it on the node. Its upstream is nothing.
    fn start_registry_dns(&self) -> (RegistryDns, TempDir) {
        let account = self.cp.service_account_files("registry-dns", "registry-dns");
        let command = Self::in_pod(&self.node, &account, &[RegistryDns::BIN]);
        let args = [
            "--ops-listen",
            "127.0.0.1:8099",
            "--service",
            "knative-local-registry=registry/knative",
            "--upstream",
            "127.0.0.1:9",
        ];
        let server = RegistryDns::start_link_local(command, &args);
        let ops = server.ops.unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || self
                .node
                .run(|| http_get(ops, "/readyz"))
                .is_some_and(|(code, _)| code == 200)),
            "registry-dns not ready: {:?}",
            server.logs()
        );
        (server, account)
    }

    /// kubeadm's ServiceAccount and ClusterRole for CoreDNS (what its `kubernetes` plugin watches).
    fn coredns_account(&self) -> TempDir {
        self.cp.kubectl(&["create", "serviceaccount", "coredns", "-n", "kube-system"]);
        self.cp.apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }));
        self.cp.apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        }));
        self.cp.service_account_files("kube-system", "coredns")
    }

    /// Creates ConfigMap kube-system/`configmap` from a sample Corefile, runs
    /// `patch-corefile.sh add` on it against the API server when `patch`, and returns the Corefile
    /// the ConfigMap then holds.
    fn corefile(&self, configmap: &str, sample: &str, patch: bool) -> String {
        let sample = format!("{COREFILES}/{sample}");
        let from = format!("--from-file=Corefile={sample}");
        if self.cp.try_kubectl(&["get", "configmap", configmap, "-n", "kube-system"]).is_err() {
            self.cp.kubectl(&["create", "configmap", configmap, "-n", "kube-system", &from]);
        }
        if patch {
            let out = self.cp.as_admin("sh").args([PATCHER, "add", "--configmap", configmap]).output().unwrap();
            eprintln!("patch-corefile.sh add --configmap {configmap}:\n{}", check(&out, "patch-corefile.sh"));
        }
        self.cp.kubectl(&["get", "configmap", configmap, "-n", "kube-system", "-o", "jsonpath={.data.Corefile}"])
    }

    /// CoreDNS with `corefile` in `ns`, as a Pod of the coredns ServiceAccount; waits until
    /// `ready_url` (in `ns`) answers 200.
    fn start_coredns(&self, ns: &Netns, name: &str, corefile: &str, account: &TempDir, ready: SocketAddr) -> Process {
        let conf = self.cp.dir.path(&format!("{name}.Corefile"));
        std::fs::write(&conf, corefile).unwrap();
        let coredns = self.parts.coredns.to_str().unwrap();
        let mut process =
            Process::spawn(Self::in_pod(ns, account, &[coredns, "-conf", conf.to_str().unwrap()]), name, &self.cp.dir);
        let path = if ready.port() == 8181 { "/ready" } else { "/health" };
        let up = wait_until(Duration::from_secs(60), || {
            process.running() && ns.run(|| http_get(ready, path)).is_some_and(|(code, _)| code == 200)
        });
        assert!(up, "{name} not ready on {ready}{path}\n{}", process.tail());
        process
    }

    /// distribution (Debian's docker-registry) in `pod`, serving on the pod's IP, port 5000, with
    /// the storage all registry Pods share (deploy/registry's PVC); HTTPS when the cluster has TLS.
    fn start_registry(&self, pod: &PodNet, name: &str) -> Process {
        let storage = self.cp.dir.path("registry-storage");
        std::fs::create_dir_all(&storage).unwrap();
        let tls = match &self.tls {
            Some((_, crt, key)) => format!("  tls:\n    certificate: {}\n    key: {}\n", crt.display(), key.display()),
            None => String::new(),
        };
        // deploy/registry/base/config.yml, with this storage and address; one secret for all
        // instances, as replicas behind one Service need.
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}:5000\n  secret: registry-dns-e2e\n{tls}",
            storage.display(),
            pod.ip
        );
        let file = self.cp.dir.path(&format!("{name}.yml"));
        std::fs::write(&file, config).unwrap();
        let mut process = Process::spawn(
            pod.ns.exec(&["/usr/bin/docker-registry", "serve", file.to_str().unwrap()]),
            name,
            &self.cp.dir,
        );
        let addr: SocketAddr = format!("{}:5000", pod.ip).parse().unwrap();
        let up = wait_until(Duration::from_secs(30), || {
            process.running() && self.node.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        });
        assert!(up, "{name} not listening on {addr}\n{}", process.tail());
        process
    }

    /// Polls the API every 10 ms until the slices hold exactly `want`; the moment it saw them.
    fn slices_become(&self, want: &[&str]) -> Instant {
        let start = Instant::now();
        loop {
            let now = self.cp.slice_addresses(&self.cp.admin, "IPv4");
            if now == want {
                return Instant::now();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "slices {now:?}, never {want:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// containerd in the node namespace (Debian's package, its own root, state and socket), pulling
/// and pushing with `ctr --hosts-dir`, as a node with `config_path` pointing at a certs.d does.
struct Containerd {
    _process: Process,
    socket: String,
    hosts_dir: PathBuf,
}

impl Containerd {
    fn start(cluster: &Cluster) -> Self {
        let dir = cluster.cp.dir.path("containerd");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock").to_str().unwrap().to_string();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n\
             [ttrpc]\n  address = \"{1}.ttrpc\"\n",
            dir.display(),
            socket
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let config = dir.join("config.toml");
        let process = Process::spawn(
            cluster.node.exec(&["/usr/bin/containerd", "--config", config.to_str().unwrap()]),
            "containerd",
            &cluster.cp.dir,
        );
        let hosts_dir = cluster.cp.dir.path("certs.d");
        let this = Self { _process: process, socket, hosts_dir };
        let up = wait_until(Duration::from_secs(30), || this.ctr(cluster, &["version"]).status.success());
        assert!(up, "containerd did not start\n{}", this._process.tail());
        this
    }

    /// Writes certs.d/knative-local-registry:5000/hosts.toml as deploy/README.md documents it:
    /// plain HTTP, or HTTPS with `ca` naming the registry's CA copied beside it (or, to show the
    /// refusal, HTTPS without it: the system's roots only).
    fn hosts_toml(&self, scheme: &str, ca: Option<&Path>) {
        let dir = self.hosts_dir.join("knative-local-registry:5000");
        std::fs::create_dir_all(&dir).unwrap();
        let mut toml = format!(
            "server = \"{scheme}://knative-local-registry:5000\"\n\
             [host.\"{scheme}://knative-local-registry:5000\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
        );
        if let Some(ca) = ca {
            let copy = dir.join("registry-ca.crt");
            std::fs::copy(ca, &copy).unwrap();
            toml.push_str(&format!("  ca = \"{}\"\n", copy.display()));
        }
        std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    }

    fn ctr(&self, cluster: &Cluster, args: &[&str]) -> Output {
        let mut argv = vec!["/usr/bin/ctr", "--address", &self.socket, "--namespace", "e2e"];
        argv.extend_from_slice(args);
        cluster.node.exec(&argv).output().unwrap()
    }

    /// `ctr images pull` through the hosts dir; the pulled image's digest.
    fn pull(&self, cluster: &Cluster, reference: &str) -> Result<String, String> {
        let hosts = self.hosts_dir.to_str().unwrap();
        let out = self.ctr(cluster, &["images", "pull", "--snapshotter", "native", "--hosts-dir", hosts, reference]);
        if !out.status.success() {
            return Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        }
        let listed = check(&self.ctr(cluster, &["images", "ls", &format!("name=={reference}")]), "ctr images ls");
        listed
            .lines()
            .find(|l| l.starts_with(reference))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
            .map(String::from)
            .ok_or_else(|| format!("no digest for {reference} in {listed}"))
    }

    /// Tags `from` as `to` and pushes it through the hosts dir.
    fn push(&self, cluster: &Cluster, from: &str, to: &str) -> Result<(), String> {
        let _ = self.ctr(cluster, &["images", "rm", to]);
        check(&self.ctr(cluster, &["images", "tag", from, to]), "ctr images tag");
        let hosts = self.hosts_dir.to_str().unwrap();
        let out = self.ctr(cluster, &["images", "push", "--hosts-dir", hosts, to]);
        match out.status.success() {
            true => Ok(()),
            false => Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
        }
    }
}

/// crane in a pod's network namespace (its resolv.conf, through `ip netns exec`).
struct Crane<'a> {
    cluster: &'a Cluster,
    pod: &'a PodNet,
    /// The CA bundle a Kaniko or Knative pod mounts (SSL_CERT_FILE), or none.
    ca_bundle: Option<PathBuf>,
}

impl Crane<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let crane = self.cluster.parts.crane.to_str().unwrap();
        let mut argv = vec![crane];
        argv.extend_from_slice(args);
        if self.cluster.tls.is_none() {
            // Plain HTTP: Kaniko's --insecure-registry.
            argv.push("--insecure");
        }
        let mut command = self.pod.ns.exec(&argv);
        command.env("HOME", self.cluster.cp.dir.path("crane-home")).env_remove("SSL_CERT_DIR");
        match &self.ca_bundle {
            Some(bundle) => command.env("SSL_CERT_FILE", bundle),
            // An empty bundle: only the system's roots would do, and they do not know the CA.
            None => command.env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        };
        command.output().unwrap()
    }

    fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run(args);
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// An image built here from one small layer (no network: `crane append` to a tarball), pushed
    /// to `reference`; its digest.
    fn build_and_push(&self, reference: &str, content: &str) -> Result<String, String> {
        let dir = self.cluster.cp.dir.path(&format!("image-{}", content.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join("rootfs/hello.txt"), content).unwrap();
        let layer = dir.join("layer.tar");
        let tar =
            Command::new("tar").arg("-cf").arg(&layer).arg("-C").arg(dir.join("rootfs")).arg("hello.txt").output();
        check(&tar.unwrap(), "tar");
        let image = dir.join("image.tar");
        let crane = self.cluster.parts.crane.to_str().unwrap();
        let built = Command::new(crane)
            .args(["append", "-f", layer.to_str().unwrap(), "-t", reference, "-o", image.to_str().unwrap()])
            .output()
            .unwrap();
        check(&built, "crane append (local, to a tarball)");
        self.try_run(&["push", image.to_str().unwrap(), reference])?;
        self.try_run(&["digest", reference])
    }
}

/// `registry-dns doctor` in `ns`: exit code and report.
fn doctor(ns: &Netns) -> (Option<i32>, String) {
    let out = ns.exec(&[RegistryDns::BIN, "doctor"]).env_remove("RUST_LOG").output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("registry-dns doctor in {}:\n{report}", ns.name);
    (out.status.code(), report)
}

/// The A records `dig` gets for `name` from `server` inside `ns`, sorted; `None` without NOERROR.
fn dig_a(ns: &Netns, server: &str, name: &str) -> Option<Vec<String>> {
    let d = ns.dig(server, &[name, "A"]);
    (d.status == "NOERROR").then(|| {
        let mut ips = d.rdata("A");
        ips.sort();
        ips
    })
}

/// The kubeadm cluster: CoreDNS in its pod with kubeadm's Corefile as patch-corefile.sh leaves it,
/// registry-dns on the node, registry-1 serving, a client pod, containerd.
/// Fields drop in order: the processes and namespaces before the control plane and its directory.
struct Kubeadm {
    _cluster_dns: PodNet,
    client: PodNet,
    _coredns: Process,
    registry_dns: (RegistryDns, TempDir),
    containerd: Containerd,
    /// The first registry Pod's process and network.
    registry1: Option<Kept>,
    cluster: Cluster,
}

impl Kubeadm {
    fn start(tls: bool) -> Option<Self> {
        let cluster = Cluster::start(tls)?;
        // CoreDNS's pod: dnsPolicy Default, the node's upstream (not registry-dns: nothing listens
        // on the node's veth address, so the `.` block cannot answer knative-local-registry; only
        // the stanza can).
        let cluster_dns = cluster.pod_net("cdns", 1, "nameserver 10.199.1.1\n");
        let client = cluster.pod_net("client", 2, &format!("nameserver 10.199.1.2\n{POD_SEARCH}"));
        let registry = cluster.pod_net("registry1", 3, "nameserver 10.199.1.2\n");
        let account = cluster.coredns_account();
        let corefile = cluster.corefile("coredns", "kubeadm.Corefile", true);
        assert!(
            corefile.contains("knative-local-registry:53") && corefile.contains(&format!("forward . {LINK_LOCAL}"))
        );
        let coredns =
            cluster.start_coredns(&cluster_dns.ns, "coredns", &corefile, &account, "10.199.1.2:8181".parse().unwrap());
        let registry_process = cluster.start_registry(&registry, "registry-1");
        cluster.cp.add_ready_pod(&cluster.cp.admin, "registry-1", &[&registry.ip]);
        cluster.slices_become(&["10.199.3.2"]);
        let registry_dns = cluster.start_registry_dns();
        let containerd = Containerd::start(&cluster);
        if !tls {
            containerd.hosts_toml("http", None);
        }
        let registry1 = Some(Kept(registry_process, registry));
        Some(Self {
            cluster,
            _cluster_dns: cluster_dns,
            client,
            _coredns: coredns,
            registry_dns,
            containerd,
            registry1,
        })
    }
}

/// A registry Pod's process and network namespace (dropped in that order).
struct Kept(Process, PodNet);

#[test]
fn a_pod_pushes_and_the_node_pulls_by_name_through_coredns_and_registry_dns_and_follow_the_registry_pod() {
    let Some(mut k) = Kubeadm::start(false) else { return };
    let c = &k.cluster;
    let crane = Crane { cluster: c, pod: &k.client, ca_bundle: None };

    // 1. The pod: the cluster zone from the same CoreDNS, then push and resolve by name.
    let kubernetes = dig_a(&k.client.ns, "10.199.1.2", "kubernetes.default.svc.cluster.local");
    assert_eq!(kubernetes, Some(vec![KUBERNETES_SERVICE.to_string()]), "CoreDNS serves the cluster zone");
    assert_eq!(k.client.ns.getent(NAME), Ok(vec!["10.199.3.2".to_string()]), "glibc in the pod, ndots:5");
    let pushed = crane.build_and_push(&format!("{REPO}:1"), "one").unwrap_or_else(|e| panic!("crane push: {e}"));
    eprintln!("crane pushed {REPO}:1 = {pushed}");
    // Only the stanza can have answered: the `.` block's upstream (the node's veth address)
    // answers nothing. (The stanza has no `prometheus` line, so CoreDNS's counters do not show it.)
    let other = k.client.ns.dig("10.199.1.2", &["example.org", "A"]);
    assert_eq!(other.status, "SERVFAIL", "the `.` block cannot resolve: {}", other.raw);
    let direct = k.client.ns.dig("10.199.1.2", &[NAME, "A"]);
    assert_eq!((direct.status.as_str(), direct.rdata("A")), ("NOERROR", vec!["10.199.3.2".to_string()]));

    // 2. The node: containerd pulls the same image by the same name.
    let pulled = k.containerd.pull(c, &format!("{REPO}:1")).unwrap_or_else(|e| panic!("ctr pull: {e}"));
    assert_eq!(pulled, pushed, "the node pulled what the pod pushed");

    // 6. The doctor says all is well in the pod and on the node.
    let (code, report) = doctor(&k.client.ns);
    assert_eq!(code, Some(0), "doctor in the pod: {report}");
    let (code, report) = doctor(&c.node);
    assert_eq!(code, Some(0), "doctor on the node: {report}");

    // 3. The registry Pod moves: a new Pod with a new IP becomes ready (a rolling update's
    // surge), the clients see both addresses, then the old Pod is deleted and its container
    // stopped (its address refuses connections until the network goes too, below). The first
    // push and pull after the slice drops it succeed within 2 s, from both sides.
    let registry2 = c.pod_net("registry2", 4, "nameserver 10.199.1.2\n");
    let registry2_process = c.start_registry(&registry2, "registry-2");
    c.cp.add_ready_pod(&c.cp.admin, "registry-2", &[&registry2.ip]);
    c.slices_become(&["10.199.3.2", "10.199.4.2"]);
    let both = Some(vec!["10.199.3.2".to_string(), "10.199.4.2".to_string()]);
    assert!(
        wait_until(Duration::from_secs(15), || dig_a(&k.client.ns, "10.199.1.2", NAME) == both),
        "the pod's CoreDNS answers both registry Pods"
    );
    let image2 = crane.build_and_push(&format!("{REPO}:2"), "second image").expect("push before the move");
    let Kept(old_process, old_net) = k.registry1.take().unwrap();
    c.cp.delete_pod("registry-1");
    drop(old_process);
    let changed = c.slices_become(&["10.199.4.2"]);
    let (pod_side, node_side) = std::thread::scope(|s| {
        let pod_side = s.spawn(|| {
            let push = crane.build_and_push(&format!("{REPO}:3"), "third image, after the move");
            let pushed_at = changed.elapsed();
            let digest = crane.try_run(&["digest", &format!("{REPO}:1")]);
            (push, pushed_at, digest, changed.elapsed())
        });
        let node_side = s.spawn(|| {
            let pull = k.containerd.pull(c, &format!("{REPO}:2"));
            let pulled_at = changed.elapsed();
            let push = k.containerd.push(c, &format!("{REPO}:1"), &format!("{REPO}:from-node"));
            (pull, pulled_at, push, changed.elapsed())
        });
        (pod_side.join().unwrap(), node_side.join().unwrap())
    });
    eprintln!(
        "after the slice changed: pod pushed in {:?}, digest by {:?}; node pulled in {:?}, pushed by {:?}",
        pod_side.1, pod_side.3, node_side.1, node_side.3
    );
    let pushed3 = pod_side.0.unwrap_or_else(|e| panic!("pod push after the move: {e}"));
    assert_eq!(pod_side.2, Ok(pushed.clone()), "pod: crane digest after the move");
    let pulled2 = node_side.0.unwrap_or_else(|e| panic!("node pull after the move: {e}"));
    node_side.2.unwrap_or_else(|e| panic!("node push after the move: {e}"));
    assert_eq!(pulled2, image2);
    assert!(pod_side.3 < Duration::from_secs(2), "pod side done {:?} after the slice change", pod_side.3);
    assert!(node_side.3 < Duration::from_secs(2), "node side done {:?} after the slice change", node_side.3);
    // And each side sees the other's push, from the new Pod.
    assert_eq!(k.containerd.pull(c, &format!("{REPO}:3")), Ok(pushed3));
    assert_eq!(crane.try_run(&["digest", &format!("{REPO}:from-node")]), Ok(pushed));
    // The old Pod's network goes too. How long the pod's CoreDNS still hands out its address: the
    // stanza's `cache 5` keeps registry-dns's answer (TTL 5 s) for up to 5 s.
    drop(old_net);
    let only_new = Some(vec!["10.199.4.2".to_string()]);
    let node_lag = changed.elapsed();
    assert_eq!(dig_a(&c.node, LINK_LOCAL, NAME), only_new, "registry-dns, {node_lag:?} after the slice change");
    assert!(
        wait_until(Duration::from_secs(10), || dig_a(&k.client.ns, "10.199.1.2", NAME) == only_new),
        "the pod's CoreDNS drops the old address"
    );
    eprintln!("the pod's CoreDNS answered only the new Pod {:?} after the slice change", changed.elapsed());
    assert!(changed.elapsed() < Duration::from_secs(8), "CoreDNS's cache holds an answer 5 s at most");
    assert_eq!(k.client.ns.getent(NAME).ok(), only_new);
    assert!(k.registry_dns.0.logs().iter().all(|l| !l.contains("ERROR")), "{:?}", k.registry_dns.0.logs());
    drop(registry2_process);
}

#[test]
fn over_tls_both_sides_trust_the_registrys_ca_and_a_client_without_it_is_refused() {
    let Some(k) = Kubeadm::start(true) else { return };
    let c = &k.cluster;
    let (ca, _, _) = c.tls.clone().unwrap();
    let reference = format!("{REPO}:tls");

    // crane with the system's roots only: refused, nothing pushed.
    let untrusting = Crane { cluster: c, pod: &k.client, ca_bundle: None };
    let refused = untrusting.build_and_push(&reference, "over TLS").expect_err("a client without the CA");
    eprintln!("crane without the CA: {refused}");
    assert!(refused.contains("x509") || refused.contains("certificate"), "{refused}");

    // With the CA bundle a Kaniko or Knative pod mounts (the system's roots and the registry's CA).
    let bundle = c.cp.dir.path("ca-bundle.crt");
    let system = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    std::fs::write(&bundle, [system, std::fs::read(&ca).unwrap()].concat()).unwrap();
    let trusting = Crane { cluster: c, pod: &k.client, ca_bundle: Some(bundle) };
    let pushed = trusting.build_and_push(&reference, "over TLS").unwrap_or_else(|e| panic!("crane over TLS: {e}"));
    eprintln!("crane pushed {reference} over TLS = {pushed}");

    // containerd: HTTPS without `ca` is refused; with it, the pull matches the push.
    k.containerd.hosts_toml("https", None);
    let refused = k.containerd.pull(c, &reference).expect_err("containerd without the CA");
    eprintln!("containerd without the CA: {refused}");
    assert!(refused.contains("x509") || refused.contains("certificate"), "{refused}");
    k.containerd.hosts_toml("https", Some(&ca));
    let pulled = k.containerd.pull(c, &reference).unwrap_or_else(|e| panic!("ctr pull over TLS: {e}"));
    assert_eq!(pulled, pushed);
    k.containerd
        .push(c, &reference, &format!("{REPO}:tls-from-node"))
        .unwrap_or_else(|e| panic!("ctr push over TLS: {e}"));
    assert_eq!(trusting.try_run(&["digest", &format!("{REPO}:tls-from-node")]), Ok(pushed));
}

#[test]
fn with_node_local_dns_pods_resolve_the_name_once_its_corefile_is_patched_and_the_doctor_names_the_fix() {
    let Some(k) = Kubeadm::start(false) else { return };
    let c = &k.cluster;
    let pushed = Crane { cluster: c, pod: &k.client, ca_bundle: None }
        .build_and_push(&format!("{REPO}:1"), "one")
        .unwrap_or_else(|e| panic!("crane push: {e}"));

    // NodeLocal DNSCache on the node: its interface with its link-local address and kube-dns's
    // Service IP; its `.` block forwards to the node's real upstreams (here a dnsmasq that, like
    // the Internet, knows no knative-local-registry), its cluster.local block to CoreDNS.
    dummy_interface(&c.node, "nodelocaldns", &[NODE_LOCAL_DNS, KUBE_DNS]);
    let dnsmasq = Process::spawn(
        c.node.exec(&[
            if Path::new("/usr/sbin/dnsmasq").exists() { "/usr/sbin/dnsmasq" } else { "dnsmasq" },
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--port=5300",
            "--address=/#/",
            "--pid-file=",
            "--user=root",
        ]),
        "upstream-dnsmasq",
        &c.cp.dir,
    );
    // What node-local-dns's own entrypoint does to its ConfigMap's Corefile.
    let pillars = |corefile: String| {
        corefile
            .replace("__PILLAR__CLUSTER__DNS__", "10.199.1.2")
            .replace("__PILLAR__UPSTREAM__SERVERS__", "127.0.0.1:5300")
    };
    let account = c.cp.service_account_files("kube-system", "coredns");
    let health: SocketAddr = format!("{NODE_LOCAL_DNS}:8080").parse().unwrap();
    let unpatched = pillars(c.corefile("node-local-dns", "node-local-dns.Corefile", false));
    let node_local = c.start_coredns(&c.node, "node-local-dns", &unpatched, &account, health);
    let pod = c.pod_net("client-nodelocal", 5, &format!("nameserver {NODE_LOCAL_DNS}\n{POD_SEARCH}"));
    let crane = Crane { cluster: c, pod: &pod, ca_bundle: None };

    // Unpatched: the cluster zone works through it, the registry's name does not.
    let kubernetes = dig_a(&pod.ns, NODE_LOCAL_DNS, "kubernetes.default.svc.cluster.local");
    assert_eq!(kubernetes, Some(vec![KUBERNETES_SERVICE.to_string()]), "node-local-dns -> CoreDNS");
    assert!(pod.ns.getent(NAME).is_err(), "glibc in the pod must not resolve {NAME} yet");
    let failed = crane.try_run(&["digest", &format!("{REPO}:1")]).expect_err("crane must not resolve it yet");
    eprintln!("crane through unpatched node-local-dns: {failed}");
    assert!(failed.contains("no such host"), "{failed}");
    let (code, report) = doctor(&pod.ns);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("patch-corefile.sh add --configmap node-local-dns"), "the doctor names the fix: {report}");

    // Patched (the ConfigMap, through the API), and node-local-dns restarted (its rollout).
    let patched = pillars(c.corefile("node-local-dns", "node-local-dns.Corefile", true));
    let block = &patched[patched.find("# BEGIN registry-dns").unwrap()..];
    assert!(
        block.contains(&format!("bind {NODE_LOCAL_DNS} {KUBE_DNS}")),
        "the block binds node-local-dns's addresses: {block}"
    );
    drop(node_local);
    let _node_local = c.start_coredns(&c.node, "node-local-dns-patched", &patched, &account, health);
    assert_eq!(pod.ns.getent(NAME), Ok(vec!["10.199.3.2".to_string()]));
    assert_eq!(crane.try_run(&["digest", &format!("{REPO}:1")]), Ok(pushed));
    let (code, report) = doctor(&pod.ns);
    assert_eq!(code, Some(0), "{report}");
    drop(dnsmasq);
}
