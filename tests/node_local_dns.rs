//! registry-dns beside NodeLocal DNSCache on one node, both serving metrics: the real CoreDNS (from
//! `tests/cluster/control-plane.sh build-e2e`) with NodeLocal DNSCache's real Corefile
//! (deploy/check/corefiles/node-local-dns.Corefile: `prometheus :9253` on every address, `health`
//! on 169.254.20.10:8080) and registry-dns with deploy/base's own `--ops-listen` and
//! `--metrics-listen`, read from the manifest, in one network namespace (the hostNetwork both
//! share). Both come up, both `/metrics` are scraped, both answer DNS. The old default (9253) is
//! shown to clash: registry-dns (as the pod's uid) then exits at start with one line naming the
//! port and the flag.
//!
//! Needs root; skipped with a loud message when not root or when CoreDNS cannot be built, and
//! never skipped when `CI` is set.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::control_plane::{self, skip_or_fail};
use support::netns::Netns;
use support::{RegistryDns, TempDir, http_get, run_to_exit_with, wait_until};

const DAEMONSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/daemonset.yaml");
const COREFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/check/corefiles/node-local-dns.Corefile");
const NODE_LOCAL_DNS: &str = "169.254.20.10";
const KUBE_DNS: &str = "10.96.0.10";

/// The value of `--FLAG=` in deploy/base's DaemonSet.
fn daemonset_arg(flag: &str) -> String {
    let text = std::fs::read_to_string(DAEMONSET).unwrap();
    let prefix = format!("- --{flag}=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix).map(String::from))
        .unwrap_or_else(|| panic!("no --{flag} in {DAEMONSET}"))
}

fn coredns() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail("tests/node_local_dns.rs needs root (network namespaces)");
    }
    match control_plane::build("build-e2e") {
        Ok(dirs) => Some(dirs[0].join("coredns")),
        Err(e) => skip_or_fail(&e),
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn registry_dns_and_node_local_dns_serve_metrics_side_by_side() {
    let Some(coredns) = coredns() else { return };
    let ns = Netns::new("nodelocal", "nameserver 169.254.20.25\n");
    // node-local-dns's interface (its addresses on the node; here on loopback, local delivery alike).
    for address in [NODE_LOCAL_DNS, KUBE_DNS] {
        ns.ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"]);
    }
    let dir = TempDir::new("nodelocal");
    // What node-local-dns's entrypoint does to its ConfigMap's Corefile; nothing answers upstream.
    let corefile = std::fs::read_to_string(COREFILE)
        .unwrap()
        .replace("__PILLAR__CLUSTER__DNS__", "127.0.0.1:5399")
        .replace("__PILLAR__UPSTREAM__SERVERS__", "127.0.0.1:5399");
    assert!(corefile.contains("prometheus :9253") && corefile.contains(&format!("health {NODE_LOCAL_DNS}:8080")));
    let conf = dir.path("Corefile");
    std::fs::write(&conf, &corefile).unwrap();
    let log = std::fs::File::create(dir.path("coredns.log")).unwrap();
    let mut node_local_dns = Killed(
        ns.exec(&[coredns.to_str().unwrap(), "-conf", conf.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting CoreDNS"),
    );
    let coredns_metrics: SocketAddr = "127.0.0.1:9253".parse().unwrap();
    let health: SocketAddr = format!("{NODE_LOCAL_DNS}:8080").parse().unwrap();
    let up = wait_until(Duration::from_secs(30), || {
        matches!(node_local_dns.0.try_wait(), Ok(None))
            && ns.run(|| http_get(health, "/health")).is_some_and(|(c, _)| c == 200)
    });
    assert!(
        up,
        "node-local-dns did not come up: {}",
        std::fs::read_to_string(dir.path("coredns.log")).unwrap_or_default()
    );

    // registry-dns with the DaemonSet's listeners, after node-local-dns (the order that failed).
    let ops = daemonset_arg("ops-listen");
    let metrics = daemonset_arg("metrics-listen");
    let args = [
        "--record",
        "knative-local-registry=10.0.0.10",
        "--upstream",
        "127.0.0.1:5399",
        "--ops-listen",
        &ops,
        "--metrics-listen",
        &metrics,
    ];
    let server = RegistryDns::start_link_local(ns.exec(&[RegistryDns::BIN]), &args);
    let metrics_port = metrics.rsplit_once(':').unwrap().1;
    let registry_dns_metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let ops: SocketAddr = ops.parse().unwrap();

    let scrape =
        |addr: SocketAddr| ns.run(|| http_get(addr, "/metrics")).unwrap_or_else(|| panic!("no answer on {addr}"));
    let (code, body) = scrape(registry_dns_metrics);
    assert_eq!(code, 200);
    assert!(body.contains("registry_dns_build_info"), "{body}");
    let (code, body) = scrape(coredns_metrics);
    assert_eq!(code, 200);
    assert!(body.contains("coredns_build_info"), "node-local-dns still serves its metrics: {body}");
    assert_eq!(ns.run(|| http_get(ops, "/readyz")).map(|(c, _)| c), Some(200));
    assert_eq!(ns.run(|| http_get(health, "/health")).map(|(c, _)| c), Some(200));
    assert!(matches!(node_local_dns.0.try_wait(), Ok(None)), "node-local-dns still runs");
    assert_eq!(ns.dig("169.254.20.25", &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
    drop(server);

    // The old default, 9253, beside node-local-dns, as the pod runs registry-dns (uid 65532, not
    // node-local-dns's root): refused at start, one line naming the port and the flag. (Both
    // bind with SO_REUSEPORT, so under one uid the kernel would let them share the port, and an
    // IPv4 scrape of it would reach registry-dns instead of node-local-dns: no better.)
    let clashing = [
        "setpriv",
        "--reuid",
        "65532",
        "--regid",
        "65532",
        "--clear-groups",
        RegistryDns::BIN,
        "--listen",
        "127.0.0.1:5354",
        "--record",
        "knative-local-registry=10.0.0.10",
        "--upstream",
        "127.0.0.1:5399",
        "--ops-listen",
        "off",
        "--metrics-listen",
        "0.0.0.0:9253",
    ];
    let (code, stderr) = run_to_exit_with(ns.exec(&clashing), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--metrics-listen 0.0.0.0:9253: port 9253 is already in use by another program"),
        "{stderr}"
    );
}
