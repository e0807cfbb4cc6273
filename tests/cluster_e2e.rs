//! The whole path a cluster takes, in network namespaces (needs root, like node_resolution.rs):
//!
//! ```text
//!   node namespace                                      pod namespace
//!   ───────────────────────────────────────────         ─────────────────────────────────────
//!   registry-dns --interface-name registry-dns0         resolv.conf: nameserver 10.199.0.2,
//!     registry-dns0: 169.254.20.25/32                     search *.cluster.local, ndots:5
//!     listens 169.254.20.25:53                          dnsmasq on 10.199.0.2:53 (CoreDNS
//!     kube source -> fake API server 127.0.0.1:P          stand-in: knative-local-registry ->
//!   resolv.conf: nameserver 169.254.20.25                 169.254.20.25, cluster.local NXDOMAIN)
//!   veth-pod0 10.199.0.1/30  ◄──────── veth ────────►   eth0 10.199.0.2/30, default via .1
//! ```
//!
//! The fake API server runs in this process but listens inside the node namespace (its socket is
//! made by a thread that first joined that namespace), so registry-dns reaches it on loopback as
//! it would reach a local API server, and nothing is configured in the host's namespace. A pod
//! reaches 169.254.20.25 through its node: the packet arrives on the veth for an address of the
//! node's, which the node delivers locally (no forwarding). Every packet stays inside the two
//! namespaces this test creates.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::apiserver::{FakeApiServer, endpoint_slice};
use support::netns::Netns;
use support::{RegistryDns, TempDir, dig, http_get, wait_until};

const NAME: &str = "knative-local-registry";
const LINK_LOCAL: &str = "169.254.20.25";
const NODE_VETH: &str = "10.199.0.1";
const POD_IP: &str = "10.199.0.2";

/// A process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() { "/usr/sbin/dnsmasq" } else { "dnsmasq" }
}

fn logged(server: &RegistryDns, needles: &[&str]) -> bool {
    server.logs().iter().any(|l| needles.iter().all(|n| l.contains(n)))
}

fn slice(ips: &[&str]) -> serde_json::Value {
    let endpoints: Vec<(&str, Option<bool>)> = ips.iter().map(|ip| (*ip, Some(true))).collect();
    endpoint_slice("registry", "knative", "knative-a", "IPv4", &endpoints)
}

/// A query that did not get the expected answer.
#[derive(Debug)]
struct Failure {
    sent: Instant,
    status: String,
    answer: Vec<String>,
}

/// Queries `server` for the name every `interval` until told to stop, from inside `ns`: how
/// many queries, and the failures.
fn query_loop(
    ns: &Netns,
    server: SocketAddr,
    expected: &[&str],
    stop: &AtomicBool,
    interval: Duration,
) -> (usize, Vec<Failure>) {
    ns.run(|| {
        let mut total = 0;
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let answer = dig(server, &[NAME, "A", "+time=1", "+tries=1"]);
            total += 1;
            let mut ips = answer.rdata("A");
            ips.sort();
            if answer.status != "NOERROR" || ips != expected {
                failures.push(Failure { sent, status: answer.status, answer: ips });
            }
            std::thread::sleep(interval);
        }
        (total, failures)
    })
}

/// A node and a pod namespace linked by a veth, the fake API server listening inside the node
/// namespace, and the pod's cluster DNS stand-in (dnsmasq) in the pod namespace.
struct Cluster {
    // Fields drop in this order: processes, then the API server, then the namespaces.
    _dnsmasq: Process,
    api: FakeApiServer,
    _dir: TempDir,
    kubeconfig: String,
    pod: Netns,
    node: Netns,
}

impl Cluster {
    fn new(endpoints: &[&str]) -> Self {
        let node = Netns::new("node", &format!("nameserver {LINK_LOCAL}\noptions timeout:2 attempts:1\n"));
        let pod = Netns::new(
            "pod",
            &format!(
                "nameserver {POD_IP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
                 options ndots:5\n"
            ),
        );
        node.ip(&["link", "add", "veth-pod0", "type", "veth", "peer", "name", "eth0", "netns", &pod.name]);
        node.ip(&["addr", "add", &format!("{NODE_VETH}/30"), "dev", "veth-pod0"]);
        node.ip(&["link", "set", "veth-pod0", "up"]);
        pod.ip(&["addr", "add", &format!("{POD_IP}/30"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", NODE_VETH]);

        let dir = TempDir::new("cluster");
        let api = node.run(FakeApiServer::start);
        let kubeconfig = dir.path("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        api.apply(slice(endpoints));

        // The cluster DNS runs in the pod network, as CoreDNS does, with the equivalent of the
        // stanza `knative-local-registry:53 { forward . 169.254.20.25 }`, no cache, and
        // NXDOMAIN for cluster.local.
        let dnsmasq = Process(
            pod.exec(&[
                dnsmasq_binary(),
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--cache-size=0",
                "--bind-interfaces",
                &format!("--listen-address={POD_IP}"),
                "--port=53",
                &format!("--server=/{NAME}/{LINK_LOCAL}"),
                "--address=/cluster.local/",
                "--pid-file=",
                "--user=root",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (tests/run.sh installs it)"),
        );
        let kubeconfig = kubeconfig.to_str().unwrap().to_string();
        Self { _dnsmasq: dnsmasq, api, _dir: dir, kubeconfig, pod, node }
    }

    fn link_local() -> SocketAddr {
        format!("{LINK_LOCAL}:53").parse().unwrap()
    }

    fn cluster_dns() -> SocketAddr {
        format!("{POD_IP}:53").parse().unwrap()
    }

    /// registry-dns in the node namespace, as the DaemonSet runs it. Its upstream is nothing:
    /// only the local name is asked here.
    fn start_registry_dns(&self) -> RegistryDns {
        let service = format!("{NAME}=registry/knative");
        let args = [
            "--service",
            &service,
            "--kubeconfig",
            &self.kubeconfig,
            "--upstream",
            "127.0.0.1:5300",
            "--lameduck",
            "1s",
        ];
        RegistryDns::start_link_local(self.node.exec(&[RegistryDns::BIN]), &args)
    }

    fn ready(&self, server: &RegistryDns) -> bool {
        let ops = server.ops.expect("ops endpoint");
        self.node.run(|| http_get(ops, "/readyz")).is_some_and(|(code, _)| code == 200)
    }

    fn interface_addresses(&self) -> String {
        let out = self.node.exec(&["ip", "-o", "addr", "show", "dev", "registry-dns0"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A rolling update on one node: with queries running from the node (to 169.254.20.25) and
    /// from the pod (through its cluster DNS) every 50 ms, a new instance starts on the same
    /// address (SO_REUSEPORT) and, once it is ready (within `ready_within`), the old one gets
    /// SIGTERM, as the DaemonSet controller does after the new pod's readiness probe passes.
    fn overlap(&self, old: RegistryDns, expected: &[&str], ready_within: Duration) -> Overlap {
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let interval = Duration::from_millis(50);
            let stop = &stop;
            let node = scope.spawn(move || query_loop(&self.node, Self::link_local(), expected, stop, interval));
            let pod = scope.spawn(move || query_loop(&self.pod, Self::cluster_dns(), expected, stop, interval));
            std::thread::sleep(Duration::from_millis(500));
            let new_started = Instant::now();
            let new = self.start_registry_dns();
            let new_ready = wait_until(ready_within, || self.ready(&new)).then(Instant::now);
            let terminated = Instant::now();
            let old_exit = match new_ready {
                Some(_) => old.terminate(Duration::from_secs(10)),
                None => None,
            };
            let old_exited_after = old_exit.is_some().then(|| terminated.elapsed());
            std::thread::sleep(Duration::from_millis(1500));
            stop.store(true, Ordering::Relaxed);
            Overlap {
                new,
                new_started,
                new_ready,
                old_exit,
                old_exited_after,
                node: node.join().unwrap(),
                pod: pod.join().unwrap(),
            }
        })
    }
}

struct Overlap {
    new: RegistryDns,
    new_started: Instant,
    new_ready: Option<Instant>,
    old_exit: Option<std::process::ExitStatus>,
    old_exited_after: Option<Duration>,
    node: (usize, Vec<Failure>),
    pod: (usize, Vec<Failure>),
}

impl Overlap {
    fn describe(&self) -> String {
        let at = |f: &Failure| format!("{} {:?} at +{:?}", f.status, f.answer, f.sent.duration_since(self.new_started));
        format!(
            "new ready {:?} after its start, old exited {:?} after SIGTERM (None: not stopped); node: {} queries, failed {:?}; \
             pod: {} queries, failed {:?}",
            self.new_ready.map(|t| t.duration_since(self.new_started)),
            self.old_exited_after,
            self.node.0,
            self.node.1.iter().map(at).collect::<Vec<_>>(),
            self.pod.0,
            self.pod.1.iter().map(at).collect::<Vec<_>>(),
        )
    }

    fn failures(&self) -> Vec<&Failure> {
        self.node.1.iter().chain(&self.pod.1).collect()
    }
}

#[test]
fn nodes_and_pods_resolve_through_the_link_local_interface_and_a_restart_loses_nothing() {
    let c = Cluster::new(&["10.244.1.5"]);
    let old = c.start_registry_dns();
    assert_eq!(old.addr, Cluster::link_local());
    assert!(logged(&old, &["interface ready", "registry-dns0", "created=true"]), "{:?}", old.logs());
    assert!(c.interface_addresses().contains(&format!("inet {LINK_LOCAL}/32")), "{}", c.interface_addresses());
    assert!(wait_until(Duration::from_secs(10), || c.ready(&old)), "{:?}", old.logs());

    // The node: its resolver points at the link-local address.
    assert_eq!(c.node.getent(NAME), Ok(vec!["10.244.1.5".to_string()]));

    // The pod: through its cluster DNS, which reaches 169.254.20.25 through the node.
    assert!(
        wait_until(Duration::from_secs(10), || c.pod.run(|| dig(Cluster::cluster_dns(), &[NAME])).rdata("A")
            == ["10.244.1.5"]),
        "dnsmasq in the pod namespace does not forward to {LINK_LOCAL}"
    );
    assert_eq!(c.pod.getent(NAME), Ok(vec!["10.244.1.5".to_string()]), "through the search list, ndots:5");
    assert!(c.pod.getent("registry.registry.svc.cluster.local").is_err(), "cluster.local is NXDOMAIN");
    assert_eq!(c.pod.run(|| dig(Cluster::link_local(), &[NAME])).rdata("A"), ["10.244.1.5"], "pod -> node address");

    // An endpoint change reaches both, with no cache in between.
    c.api.apply(slice(&["10.244.2.7", "10.244.3.9"]));
    let changed = Instant::now();
    let now = vec!["10.244.2.7".to_string(), "10.244.3.9".to_string()];
    assert!(wait_until(Duration::from_secs(5), || c.node.getent(NAME).as_ref() == Ok(&now)), "node");
    let on_node = changed.elapsed();
    assert!(wait_until(Duration::from_secs(5), || c.pod.getent(NAME).as_ref() == Ok(&now)), "pod");
    let on_pod = changed.elapsed();
    eprintln!("endpoint change visible: node {on_node:?}, pod {on_pod:?}");
    assert!(on_pod < Duration::from_secs(3), "node {on_node:?}, pod {on_pod:?}");

    // A restart that overlaps: nothing lost when the old instance stops.
    let overlap = c.overlap(old, &["10.244.2.7", "10.244.3.9"], Duration::from_secs(10));
    eprintln!("overlap: {}", overlap.describe());
    let new = &overlap.new;
    assert!(overlap.new_ready.is_some(), "the new instance never got ready: {:?}", new.logs());
    assert!(logged(new, &["interface ready", "created=false", "added=0"]), "reused: {:?}", new.logs());
    assert!(overlap.old_exit.is_some_and(|s| s.success()), "old instance: {:?}", overlap.old_exit);
    // The window is about 3.4 s and each loop sleeps 50 ms between digs: about 55 queries on an idle
    // machine, 21 to 31 seen with both cores busy compiling. 15 still covers the overlap every
    // ~230 ms.
    assert!(overlap.node.0 > 15 && overlap.pod.0 > 15, "{}", overlap.describe());
    assert!(overlap.failures().is_empty(), "{}", overlap.describe());

    // The new instance follows the Service too, and the interface outlives every instance.
    c.api.apply(slice(&["10.244.4.4"]));
    let now = vec!["10.244.4.4".to_string()];
    assert!(wait_until(Duration::from_secs(5), || c.node.getent(NAME).as_ref() == Ok(&now)));
    assert!(wait_until(Duration::from_secs(5), || c.pod.getent(NAME).as_ref() == Ok(&now)));
    assert_eq!(overlap.new.terminate(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    assert!(c.interface_addresses().contains(&format!("inet {LINK_LOCAL}/32")), "left in place");
}

/// A new instance joins the SO_REUSEPORT group only once its Kubernetes source has synced:
/// before that it would answer its share of the queries with SERVFAIL. Here the API server
/// refuses the new instance's requests (the old one's watch goes on), as during an API outage in
/// a rolling update: every query is still answered, by the old instance.
#[test]
fn a_new_instance_takes_no_queries_before_its_first_sync() {
    let c = Cluster::new(&["10.244.1.5"]);
    let old = c.start_registry_dns();
    assert!(wait_until(Duration::from_secs(10), || c.ready(&old)), "{:?}", old.logs());
    c.api.fail_requests(Some(403));
    let overlap = c.overlap(old, &["10.244.1.5"], Duration::from_secs(3));
    eprintln!("overlap: {}", overlap.describe());
    assert!(overlap.node.1.is_empty() && overlap.pod.1.is_empty(), "{}", overlap.describe());
}

#[test]
fn interface_errors_are_one_line_at_startup() {
    let ns = Netns::new("ifaceerr", "nameserver 127.0.0.1\n");
    ns.ip(&["link", "add", "taken0", "type", "veth", "peer", "name", "taken1"]);
    let run = |prefix: &[&str], interface: &str| {
        let mut argv = prefix.to_vec();
        argv.extend([
            RegistryDns::BIN,
            "--interface-name",
            interface,
            "--listen",
            "169.254.20.25:53",
            "--record",
            "knative-local-registry=10.0.0.10",
            "--upstream",
            "127.0.0.1:5300",
            "--ops-listen",
            "off",
        ]);
        let out = ns.exec(&argv).env_remove("RUST_LOG").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };

    let (code, stderr) = run(&[], "taken0");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("registry-dns: interface taken0 already exists (kind veth), not a dummy"), "{stderr}");

    // Root without CAP_NET_ADMIN, as a container without that capability.
    let (code, stderr) = run(&["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"], "rdns0");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("registry-dns: cannot create interface rdns0: "), "{stderr}");
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
}
