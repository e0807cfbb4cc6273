//! systemd-resolved nodes, on a real one: node setup's wiring sends `knative-local-registry` to
//! registry-dns, and nothing else, on each of the three ways a node gets its own upstream: per-link
//! DNS (networkd, as from DHCP or netplan), a global `DNS=` in resolved.conf, or only
//! `FallbackDNS=`.
//!
//! ```text
//!  host: the node network's bridge 10.198.0.1 (tests/cluster/node.sh), and on it dnsmasq as the
//!        node's own upstream: ordinary.test, NXDOMAIN for every other name (a TLD-less name too)
//!  node-1 10.198.0.2: Debian 12 booted with systemd as PID 1, systemd-resolved with its stub on
//!        127.0.0.53 (/etc/resolv.conf is stub-resolv.conf), systemd-networkd, containerd 1.6 + CRI
//!    units: registry-dns (this build: --interface-name registry-dns0, --listen 169.254.20.25:53,
//!           --record knative-local-registry=10.198.0.2, upstreams from
//!           /run/systemd/resolve/resolv.conf, as the DaemonSet reads them)
//!           registry-dns-node-setup (deploy/node/setup.sh, MODE=auto: its real nsenter, resolvectl,
//!           busctl and systemctl calls, and its loop)
//!    the registry (Debian's distribution) on 10.198.0.2:5000, in the node's network
//! ```
//!
//! For each wiring: before node setup the name fails; after it, glibc (`getent`) and `dig
//! @127.0.0.53` give the registry's address, ordinary names still resolve, 500 lookups from fresh
//! processes (glibc's getaddrinfo, tests/resolvers/lookup.c) all succeed, the slowest under 100 ms, containerd pulls `knative-local-registry:5000/demo:1` through CRI, and
//! `registry-dns doctor` agrees; the wiring survives a restart of resolved, registry-dns recreating
//! registry-dns0, and a reboot; with registry-dns stopped, ordinary names work and the registry name
//! fails at once; removal leaves resolved's configuration and the node's lookups byte for byte as
//! they were. The global-`DNS=` case first shows that the drop-in node setup shipped before fails
//! there. Everything is real; the node's upstream is a dnsmasq standing in for the node's DNS server.
//!
//! Needs root; skipped with a loud message when not root or when a part is missing or cannot be
//! built, and never skipped when `CI` is set.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::control_plane;
use support::node::{HOST_IP, HostDns, Node, ORDINARY, ORDINARY_IP};
use support::registry_node::{Registry, push_image};
use support::{RegistryDns, TempDir, wait_until};

const NAME: &str = "knative-local-registry";
const LINK_LOCAL: &str = "169.254.20.25";
const IMAGE: &str = "knative-local-registry:5000/demo:1";
const SETUP_DIR: &str = "/opt/registry-dns/node-setup";
/// The drop-in node setup wrote before its resolved wiring moved onto the registry-dns0 link.
const OLD_DROPIN: &str =
    "[Resolve]\nDNS=169.254.20.25\nDomains=~knative-local-registry\nResolveUnicastSingleLabel=yes\n";
/// registry-dns as the DaemonSet runs it on a node, as a unit of the node's systemd.
const REGISTRY_DNS_UNIT: &str = "[Unit]\nDescription=registry-dns\n[Service]\n\
    ExecStart=/usr/local/bin/registry-dns --interface-name registry-dns0 --listen 169.254.20.25:53 \
    --record knative-local-registry=10.198.0.2 --resolv-conf /run/systemd/resolve/resolv.conf\n\
    Restart=on-failure\n[Install]\nWantedBy=multi-user.target\n";
/// deploy/node's setup.sh as its pod runs it (the pod's nsenter into PID 1 is the same here).
const NODE_SETUP_UNIT: &str = "[Unit]\nDescription=registry-dns node setup\nAfter=systemd-resolved.service\n\
    [Service]\nEnvironment=CONFIG=/opt/registry-dns/node-setup/registry-dns.conf REGISTRIES=knative-local-registry:5000\n\
    ExecStart=/bin/sh /opt/registry-dns/node-setup/setup.sh\n[Install]\nWantedBy=multi-user.target\n";

/// Every test here runs node 1 and the host's side of the node network: one at a time.
static ONE_NODE: Mutex<()> = Mutex::new(());

struct Tools {
    crane: PathBuf,
    crictl: PathBuf,
    /// glibc's stub as a one-lookup program (tests/resolvers/lookup.c).
    lookup: PathBuf,
}

fn tools() -> Option<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    control_plane::parts_once(
        &TOOLS,
        "tests/resolved_node.rs",
        "namespaces, systemd-nspawn, mounts",
        &["/usr/bin/systemd-nspawn", "/usr/bin/mmdebstrap", "/usr/bin/docker-registry", "/usr/sbin/dnsmasq"],
        || {
            let cri = control_plane::build("build-cri")?;
            let e2e = control_plane::build("build-e2e")?;
            Ok(Tools {
                crane: e2e[1].join("crane"),
                crictl: cri[0].join("crictl"),
                lookup: support::resolvers::glibc(),
            })
        },
    )
}

/// How the node gets its own upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wiring {
    /// A server on host0 from networkd, as DHCP or netplan give one.
    PerLink,
    /// `DNS=` in /etc/systemd/resolved.conf.
    GlobalDns,
    /// Only `FallbackDNS=`.
    FallbackOnly,
}

impl Wiring {
    /// Sets it up on `node`, as the node's own configuration (before registry-dns arrives).
    fn apply(self, node: &Node) {
        let script = match self {
            Wiring::PerLink => return node.use_host_dns(),
            Wiring::GlobalDns => format!(
                "printf '[Resolve]\\nDNS={HOST_IP}\\n' > /etc/systemd/resolved.conf && systemctl restart systemd-resolved"
            ),
            Wiring::FallbackOnly => format!(
                "printf '[Resolve]\\nFallbackDNS={HOST_IP}\\n' > /etc/systemd/resolved.conf && systemctl restart systemd-resolved"
            ),
        };
        node.sh_ok(&script);
        node.wait_for_ordinary();
    }
}

/// `getent ahosts NAME` on the node, a new process as every lookup is: its addresses (or the
/// failure) and how long it took, measured on the node.
fn lookup(node: &Node, name: &str) -> (Result<Vec<String>, String>, Duration) {
    let out = node.sh(&format!(
        "s=$(date +%s%N); a=$(getent ahosts {name}); rc=$?; e=$(date +%s%N); echo \"$(( (e - s) / 1000 )) $rc\"; \
         echo \"$a\""
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let mut head = lines.next().unwrap_or_default().split(' ');
    let micros: u64 = head.next().and_then(|m| m.parse().ok()).unwrap_or(u64::MAX);
    let rc = head.next().unwrap_or("?");
    let took = Duration::from_micros(micros);
    if rc != "0" {
        return (Err(format!("getent exit {rc}")), took);
    }
    let mut addresses: Vec<String> = lines.filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    addresses.dedup();
    (Ok(addresses), took)
}

/// `count` lookups of `name` on the node, each a new process of glibc's stub (`lookup`, from
/// tests/resolvers/lookup.c): each one's getaddrinfo() time and process time in microseconds, and
/// its first address ("FAIL" when it failed).
fn lookups(node: &Node, name: &str, count: usize) -> Vec<Timed> {
    let text = node.sh_ok(&format!(
        "i=0; while [ $i -lt {count} ]; do s=$(date +%s%N); a=$(lookup {name} 2>/tmp/took) || a=FAIL; \
         e=$(date +%s%N); read -r _ took _ < /tmp/took; echo \"$took $(( (e - s) / 1000 )) ${{a%%[[:space:]]*}}\"; \
         i=$((i + 1)); done"
    ));
    text.lines()
        .map(|l| {
            let mut fields = l.split(' ');
            let mut micros = || fields.next().and_then(|m| m.parse().ok()).unwrap_or(u64::MAX);
            let (lookup, process) = (micros(), micros());
            Timed { lookup, process, first: l.rsplit(' ').next().unwrap_or("").to_string() }
        })
        .collect()
}

struct Timed {
    /// getaddrinfo() alone.
    lookup: u64,
    /// The whole process, from its start.
    process: u64,
    first: String,
}

/// The median, 99th percentile and slowest of `values`, sorted here.
fn spread(mut values: Vec<u64>) -> (u64, u64, u64) {
    values.sort_unstable();
    (values[values.len() / 2], values[values.len() * 99 / 100], values[values.len() - 1])
}

/// `registry-dns doctor` on the node: exit code and report.
fn doctor(node: &Node) -> (Option<i32>, String) {
    let out = node.exec(&["/usr/local/bin/registry-dns", "doctor", "--timeout", "500ms"]).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("registry-dns doctor on the node:\n{report}");
    (out.status.code(), report)
}

fn registry_dns_answers(node: &Node) -> bool {
    node.netns.dig(LINK_LOCAL, &[NAME]).rdata("A") == [node.ip()]
}

/// The registry name resolves to the registry on the node, through glibc.
fn resolves(node: &Node) -> bool {
    lookup(node, NAME).0 == Ok(vec![node.ip()])
}

fn wait_resolves(node: &Node, what: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let ok = wait_until(timeout, || resolves(node));
    assert!(
        ok,
        "{what}: {NAME} does not resolve within {timeout:?}; node setup's journal:\n{}\nresolved:\n{}",
        node.journal("registry-dns-node-setup", 30),
        node.sh_ok("resolvectl status")
    );
    start.elapsed()
}

/// The whole story for one wiring; its figures, for the record.
fn story(wiring: Wiring) {
    let Some(tools) = tools() else { return };
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let setup_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/node");
    let node = Node::boot(
        1,
        &[
            (Path::new(RegistryDns::BIN), "/usr/local/bin/registry-dns"),
            (&setup_dir, SETUP_DIR),
            (&tools.crictl, "/usr/local/bin/crictl"),
            (&tools.lookup, "/usr/local/bin/lookup"),
        ],
    );
    let dir = TempDir::new("resolved-node");
    let _upstream = HostDns::start(&dir);
    wiring.apply(&node);
    let registry = Registry::start(&node.netns, &dir, &node.ip(), None);
    let digest = push_image(&node.netns, &dir, &tools.crane, None, &format!("{}:5000/demo:1", node.ip()));
    let before = node.resolver_snapshot();

    node.sh_ok(&format!(
        "printf '{REGISTRY_DNS_UNIT}' > /etc/systemd/system/registry-dns.service && \
         printf '{NODE_SETUP_UNIT}' > /etc/systemd/system/registry-dns-node-setup.service && systemctl daemon-reload"
    ));

    if wiring == Wiring::GlobalDns {
        // The drop-in shipped before: its DNS= comes after the node's own, and resolved asks the
        // first global server only.
        node.sh_ok(&format!(
            "mkdir -p /etc/systemd/resolved.conf.d && printf '{OLD_DROPIN}' > /etc/systemd/resolved.conf.d/registry-dns.conf \
             && systemctl restart systemd-resolved && systemctl enable --now registry-dns"
        ));
        assert!(wait_until(Duration::from_secs(20), || registry_dns_answers(&node)), "registry-dns does not answer");
        let (result, took) = lookup(&node, NAME);
        assert!(result.is_err(), "the old drop-in resolves {NAME} on a node with a global DNS=: {result:?}");
        eprintln!("{wiring:?}, old drop-in: {NAME} fails after {took:?}");
        let (code, report) = doctor(&node);
        assert_eq!(code, Some(1), "{report}");
        assert!(
            report.contains(&format!("systemd-resolved asks {HOST_IP} (its first global DNS= server) for {NAME}")),
            "{report}"
        );
        assert!(report.contains("fix: remove DNS=169.254.20.25 (and Domains=~knative-local-registry) from /etc/systemd/resolved.conf.d/registry-dns.conf"), "{report}");
        node.sh_ok(
            "systemctl stop registry-dns && ip link del registry-dns0 && rm /etc/systemd/resolved.conf.d/registry-dns.conf \
             && systemctl restart systemd-resolved",
        );
        assert_eq!(node.resolver_snapshot(), before, "the old drop-in's removal");
    }

    // registry-dns arrives first, as its DaemonSet's pod does: the name is not routed to it yet.
    node.sh_ok("systemctl enable --now registry-dns");
    assert!(wait_until(Duration::from_secs(20), || registry_dns_answers(&node)), "registry-dns does not answer");
    assert!(lookup(&node, NAME).0.is_err(), "{NAME} resolves before node setup");
    let (code, report) = doctor(&node);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains(&format!("no link routes {NAME} to registry-dns ({LINK_LOCAL})")), "{report}");
    assert!(report.contains("fix: route it on registry-dns0: `resolvectl dns registry-dns0 169.254.20.25"), "{report}");

    // Node setup, in auto mode: it finds resolved active and wires it.
    node.sh_ok("systemctl enable --now registry-dns-node-setup");
    let wired_in = wait_resolves(&node, "node setup", Duration::from_secs(20));
    let journal = node.journal("registry-dns-node-setup", 20);
    assert!(journal.contains("install, mode resolved"), "{journal}");
    assert!(journal.contains("registry-dns0 (ifindex"), "{journal}");

    // glibc and the stub give the registry, ordinary names still resolve, and the file registry-dns
    // reads its upstreams from lists the node's own (the route-only link is not in it).
    assert_eq!(lookup(&node, NAME).0, Ok(vec![node.ip()]));
    assert_eq!(node.netns.dig("127.0.0.53", &[NAME]).rdata("A"), [node.ip()]);
    assert_eq!(lookup(&node, ORDINARY).0, Ok(vec![ORDINARY_IP.to_string()]));
    assert_eq!(node.netns.dig("127.0.0.53", &[ORDINARY]).rdata("A"), [ORDINARY_IP]);
    let upstreams = node.sh_ok("grep ^nameserver /run/systemd/resolve/resolv.conf");
    assert_eq!(upstreams, format!("nameserver {HOST_IP}\n"), "/run/systemd/resolve/resolv.conf");
    assert_eq!(node.netns.dig(LINK_LOCAL, &[ORDINARY]).rdata("A"), [ORDINARY_IP], "registry-dns forwards to it");

    let results = lookups(&node, NAME, 500);
    let failed: Vec<&Timed> = results.iter().filter(|t| t.first != node.ip()).collect();
    let (median, p99, slowest) = spread(results.iter().map(|t| t.lookup).collect());
    let (process_median, _, process_slowest) = spread(results.iter().map(|t| t.process).collect());
    eprintln!(
        "{wiring:?}: 500 lookups from fresh processes, {} failed; getaddrinfo median {median} us, p99 {p99} us, slowest \
         {slowest} us; whole process median {process_median} us, slowest {process_slowest} us",
        failed.len()
    );
    assert!(failed.is_empty(), "{} of 500 lookups failed, the first: {}", failed.len(), failed[0].first);
    assert!(slowest < 100_000, "the slowest of 500 lookups took {slowest} us");

    // containerd pulls by name through CRI, with the hosts.toml node setup wrote.
    let pulled = node
        .exec(&["crictl", "--runtime-endpoint", "unix:///run/containerd/containerd.sock", "pull", IMAGE])
        .output()
        .unwrap();
    assert!(pulled.status.success(), "crictl pull {IMAGE}: {}", String::from_utf8_lossy(&pulled.stderr));
    let listed =
        node.sh_ok(&format!("ctr -n k8s.io images ls -q name=={IMAGE}; ctr -n k8s.io images ls name=={IMAGE}"));
    assert!(listed.contains(&digest), "pulled {IMAGE} is not {digest}:\n{listed}");
    let (code, report) = doctor(&node);
    assert_eq!(code, Some(0), "{report}");

    // A restart of resolved keeps the link's settings: no wait for node setup's next check.
    node.sh_ok("systemctl restart systemd-resolved");
    assert!(resolves(&node), "after a restart of resolved");

    // registry-dns recreating registry-dns0 (a new ifindex, no settings): node setup's loop
    // wires the new link within seconds.
    node.sh_ok("systemctl stop registry-dns && ip link del registry-dns0 && systemctl start registry-dns");
    let rewired_in = wait_resolves(&node, "registry-dns0 recreated", Duration::from_secs(15));

    // registry-dns stopped (its link kept): ordinary names work, the registry name fails at once.
    node.sh_ok("systemctl stop registry-dns && resolvectl flush-caches");
    let (ordinary, ordinary_took) = lookup(&node, ORDINARY);
    assert_eq!(ordinary, Ok(vec![ORDINARY_IP.to_string()]), "with registry-dns stopped");
    let (failure, failed_in) = lookup(&node, NAME);
    assert!(failure.is_err(), "{NAME} with registry-dns stopped: {failure:?}");
    assert!(failed_in < Duration::from_secs(1), "{NAME} failed after {failed_in:?} with registry-dns stopped");
    let (code, report) = doctor(&node);
    assert_eq!(code, Some(3), "{report}");
    assert!(report.contains(&format!("registry-dns at {LINK_LOCAL}:53: nothing listens on 53/udp")), "{report}");
    assert!(report.contains(&format!("routes {NAME} to {LINK_LOCAL} on registry-dns0")), "{report}");
    node.sh_ok("systemctl start registry-dns");
    wait_resolves(&node, "registry-dns started again", Duration::from_secs(15));

    // A reboot: /run and every virtual link are new; registry-dns and node setup start as the
    // kubelet restarts their pods, and node setup wires the new link.
    drop(registry);
    node.reboot();
    let after_reboot = wait_resolves(&node, "after a reboot", Duration::from_secs(30));
    assert_eq!(lookup(&node, ORDINARY).0, Ok(vec![ORDINARY_IP.to_string()]), "after a reboot");

    // Removal, after registry-dns is gone from the node (node setup then deletes registry-dns0).
    node.sh_ok(&format!(
        "systemctl disable --now registry-dns-node-setup registry-dns && \
         ACTION=remove ONCE=1 CONFIG={SETUP_DIR}/registry-dns.conf sh {SETUP_DIR}/setup.sh"
    ));
    assert!(!node.sh_ok("ls /sys/class/net").contains("registry-dns0"), "registry-dns0 left behind");
    let after = node.resolver_snapshot();
    assert_eq!(after, before, "removal restores resolved and the node's lookups byte for byte");
    eprintln!(
        "{wiring:?}: resolving {wired_in:?} after node setup started (a lookup under way while it restarts resolved \
         waits out glibc's timeout); a recreated registry-dns0 rewired in {rewired_in:?}; \
         resolving {after_reboot:?} after the reboot; registry-dns stopped: {NAME} failed in {failed_in:?}, \
         {ORDINARY} took {ordinary_took:?}"
    );
}

#[test]
fn per_link_dns_from_networkd() {
    story(Wiring::PerLink);
}

#[test]
fn a_global_dns_in_resolved_conf() {
    story(Wiring::GlobalDns);
}

#[test]
fn only_fallback_dns() {
    story(Wiring::FallbackOnly);
}
