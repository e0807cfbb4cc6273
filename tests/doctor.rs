//! `registry-dns doctor` against crafted resolver setups, each in a network namespace of its own
//! with its own /etc/resolv.conf, /etc/hosts and /etc/nsswitch.conf (bind-mounted by `ip netns
//! exec`), and registry-dns serving there as the DaemonSet does: on 169.254.20.25, the doctor's
//! default --server. Needs root (CI runs as root).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::doctor_report::{check, verdict};
use support::netns::Netns;
use support::{RegistryDns, TempDir, parse_dig, wait_until};

const NAME: &str = "knative-local-registry";
const REGISTRY_IP: &str = "10.0.0.10";
/// glibc gives each nameserver one second, once: the failing cases stay quick.
const FAST_GLIBC: &str = "options timeout:1 attempts:1\n";

/// A node namespace with the given /etc files and registry-dns serving the name on
/// 169.254.20.25:53 (its dummy interface registry-dns0).
struct Node {
    _server: RegistryDns,
    ns: Netns,
}

impl Node {
    fn new(tag: &str, resolv_conf: &str, hosts: &str) -> Self {
        let ns = Netns::new(tag, resolv_conf);
        ns.write_etc("hosts", hosts);
        ns.write_etc("nsswitch.conf", "hosts: files dns\n");
        let record = format!("{NAME}={REGISTRY_IP}");
        let args = ["--record", &record, "--upstream", "127.0.0.1:5300"];
        let server = RegistryDns::start_link_local(ns.exec(&[RegistryDns::BIN]), &args);
        Self { _server: server, ns }
    }

    /// `registry-dns doctor ARGS` in the namespace: exit code and report.
    fn doctor(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut argv = vec![RegistryDns::BIN, "doctor"];
        argv.extend_from_slice(args);
        let out = self.ns.exec(&argv).env_remove("RUST_LOG").output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{report}{}", String::from_utf8_lossy(&out.stderr));
        (out.status.code(), report)
    }
}

/// A dnsmasq in a namespace, killed on drop.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(ns: &Netns, listen: &str, args: &[&str]) -> Self {
        let binary = if std::path::Path::new("/usr/sbin/dnsmasq").exists() { "/usr/sbin/dnsmasq" } else { "dnsmasq" };
        let listen_arg = format!("--listen-address={listen}");
        let mut argv = vec![
            binary,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--cache-size=0",
            "--bind-interfaces",
            &listen_arg,
            "--port=53",
            "--pid-file=",
            "--user=root",
        ];
        argv.extend_from_slice(args);
        let child = ns
            .exec(&argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (tests/run.sh installs it)");
        let this = Self(child);
        let at = format!("@{listen}");
        let up = wait_until(Duration::from_secs(10), || {
            let out = ns.exec(&["dig", &at, "+time=1", "+tries=1", "localhost.invalid"]).output().unwrap();
            parse_dig(&String::from_utf8_lossy(&out.stdout)).status != "NO ANSWER"
        });
        assert!(up, "dnsmasq did not start on {listen}");
        this
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_healthy_node_resolves_the_same_both_ways() {
    let node = Node::new("dr-ok", &format!("nameserver 169.254.20.25\n{FAST_GLIBC}"), "127.0.0.1 localhost\n");
    let (code, report) = node.doctor(&[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        verdict(&report),
        format!("ok: {NAME} resolves to {REGISTRY_IP} through the system resolver, as registry-dns answers it")
    );
    assert!(!report.contains("PROBLEM"), "{report}");
    check(&report, "ok", &format!("registry-dns at 169.254.20.25:53 answers {NAME}: {REGISTRY_IP} (authoritative)"));
    check(&report, "ok", &format!("getaddrinfo({NAME}): {REGISTRY_IP} in"));

    // Without registry-dns at --server there is nothing to compare with: exit 3.
    let (code, report) = node.doctor(&["--server", "127.0.0.1:5399", "--timeout", "300ms"]);
    assert_eq!(code, Some(3), "{report}");
    let (_, fix) = check(&report, "PROBLEM", "registry-dns at 127.0.0.1:5399: nothing listens on 5399/udp");
    assert!(fix.contains("pass --server"), "{report}");
}

#[test]
fn a_stub_resolver_without_single_label_resolution_is_named_with_its_fix() {
    // systemd-resolved's stub at 127.0.0.53, played by a dnsmasq that, like resolved without
    // ResolveUnicastSingleLabel=yes, answers single-label names itself (NXDOMAIN) and relays
    // the rest; resolved.conf names registry-dns but does not enable single-label names.
    let node = Node::new("dr-stub", &format!("nameserver 127.0.0.53\n{FAST_GLIBC}"), "127.0.0.1 localhost\n");
    let _stub = Dnsmasq::start(&node.ns, "127.0.0.53", &["--domain-needed", "--server=169.254.20.25"]);
    let dir = TempDir::new("doctor-resolved");
    let resolved_conf = dir.path("resolved.conf");
    std::fs::write(&resolved_conf, "[Resolve]\nDNS=169.254.20.25\n#ResolveUnicastSingleLabel=yes\n").unwrap();
    let resolved_flag = ["--resolved-conf", resolved_conf.to_str().unwrap()];

    let (code, report) = node.doctor(&resolved_flag);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = check(&report, "PROBLEM", "systemd-resolved answers single-label names itself");
    assert!(line.contains("ResolveUnicastSingleLabel is not set"), "{line}");
    let dropin = dir.path("resolved.conf.d/registry-dns.conf");
    assert!(
        fix.starts_with(&format!("create {} with `[Resolve]` and `ResolveUnicastSingleLabel=yes`", dropin.display()))
            && fix.contains("systemctl restart systemd-resolved"),
        "{fix}"
    );
    check(
        &report,
        "PROBLEM",
        &format!("nameserver 127.0.0.53 answers NXDOMAIN for {NAME} where registry-dns answers {REGISTRY_IP}"),
    );
    let (_, fix) = check(&report, "PROBLEM", &format!("nameserver 127.0.0.53 answers NXDOMAIN for {NAME}"));
    assert!(fix.starts_with("this is systemd-resolved's stub: see the systemd-resolved lines above"), "{fix}");
    // No resolved to ask here (the stub is a stand-in): its routing is unknown, and said so.
    check(&report, "warn", &format!("systemd-resolved did not say how it routes {NAME}"));
    check(&report, "PROBLEM", &format!("getaddrinfo({NAME}) failed"));
    assert!(verdict(&report).starts_with(&format!("PROBLEM: getaddrinfo fails for {NAME}")), "{report}");

    // A drop-in that exists without the setting: the fix edits it, never creates it again.
    std::fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    std::fs::write(&dropin, "[Resolve]\nLLMNR=no\n").unwrap();
    let (_, report) = node.doctor(&resolved_flag);
    let (_, fix) = check(&report, "PROBLEM", "systemd-resolved answers single-label names itself");
    assert!(
        fix.starts_with(&format!("add `ResolveUnicastSingleLabel=yes` under `[Resolve]` in {}", dropin.display())),
        "{fix}"
    );

    // With the setting in place it is found.
    std::fs::write(&dropin, "[Resolve]\nResolveUnicastSingleLabel=yes\n").unwrap();
    let (code, report) = node.doctor(&resolved_flag);
    assert_eq!(code, Some(1), "{report}");
    check(&report, "ok", &format!("systemd-resolved: ResolveUnicastSingleLabel=yes ({})", dropin.display()));
    check(&report, "PROBLEM", "nameserver 127.0.0.53 answers NXDOMAIN");
}

#[test]
fn a_hosts_entry_shadowing_dns_is_named_with_its_line() {
    let node = Node::new(
        "dr-hosts",
        &format!("nameserver 169.254.20.25\n{FAST_GLIBC}"),
        &format!("127.0.0.1 localhost\n10.9.9.9 {NAME} # left from an old setup\n"),
    );
    let (code, report) = node.doctor(&[]);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) = check(&report, "PROBLEM", &format!("/etc/hosts line 2 maps {NAME} to 10.9.9.9, shadowing DNS"));
    assert!(fix.starts_with("remove line 2 of /etc/hosts"), "{fix}");
    check(&report, "ok", &format!("nameserver 169.254.20.25 answers {NAME}: {REGISTRY_IP}"));
    assert_eq!(
        verdict(&report),
        format!(
            "PROBLEM: getaddrinfo gives 10.9.9.9 for {NAME} where registry-dns answers {REGISTRY_IP}; apply the fix above"
        )
    );
}

#[test]
fn an_unreachable_nameserver_is_named_with_its_fix() {
    // 10.53.0.53 is routed into the dummy interface, where packets vanish: a silent server.
    let node = Node::new("dr-dead", &format!("nameserver 10.53.0.53\n{FAST_GLIBC}"), "127.0.0.1 localhost\n");
    node.ns.ip(&["route", "add", "10.53.0.0/24", "dev", "registry-dns0"]);
    let (code, report) = node.doctor(&["--timeout", "500ms"]);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) = check(&report, "PROBLEM", "nameserver 10.53.0.53 does not answer on 53/udp");
    assert!(fix.starts_with("remove it from /etc/resolv.conf"), "{fix}");
    check(&report, "PROBLEM", &format!("getaddrinfo({NAME}) failed"));
    assert!(verdict(&report).starts_with(&format!("PROBLEM: getaddrinfo fails for {NAME}")), "{report}");
}

#[test]
fn a_service_of_the_same_name_in_the_pods_namespace_is_found_through_the_search_list() {
    // A pod: ndots:5, the cluster search list, and cluster DNS (dnsmasq standing in for CoreDNS
    // with the registry-dns stanza) that also knows a Service `knative-local-registry` in the
    // pod's own namespace, which glibc tries first.
    let node = Node::new(
        "dr-pod",
        &format!(
            "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.10\noptions ndots:5\n{FAST_GLIBC}"
        ),
        "127.0.0.1 localhost\n",
    );
    let shadow = format!("--address=/{NAME}.default.svc.cluster.local/10.96.7.7");
    let stanza = format!("--server=/{NAME}/169.254.20.25");
    let _cluster_dns = Dnsmasq::start(&node.ns, "127.0.0.10", &[&stanza, &shadow, "--address=/cluster.local/"]);
    let (code, report) = node.doctor(&[]);
    assert_eq!(code, Some(1), "{report}");
    check(&report, "ok", "ndots:5 with 3 search domains");
    let (_, fix) = check(
        &report,
        "PROBLEM",
        &format!("{NAME}.default.svc.cluster.local exists (10.96.7.7) and glibc tries it before {NAME}, so it wins"),
    );
    assert!(fix.starts_with(&format!("a Service named {NAME} in namespace default shadows the registry")), "{fix}");
    check(&report, "ok", &format!("nameserver 127.0.0.10 answers {NAME}: {REGISTRY_IP}"));
    assert!(verdict(&report).starts_with(&format!("PROBLEM: getaddrinfo gives 10.96.7.7 for {NAME}")), "{report}");
}

/// The doctor's flags are its own: the server's environment (as in the DaemonSet's pod) does
/// not leak into them, and server flags before `doctor` are refused.
#[test]
fn doctor_flags_are_separate_from_the_servers() {
    let out = Command::new(RegistryDns::BIN).args(["--record", "a=10.0.0.1", "doctor"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    let out = Command::new(RegistryDns::BIN)
        .args(["doctor", "--server", "127.0.0.1:5399", "--timeout", "100ms", "--resolv-conf", "/nonexistent"])
        .env("REGISTRY_DNS_RESOLV_CONF", "/etc/resolv.conf")
        .env("REGISTRY_DNS_RECORD", "a=10.0.0.1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{report}");
    check(&report, "PROBLEM", "cannot read /nonexistent");
}
