//! Resolution as a node does it: glibc's resolver (`getent ahosts`) in a network namespace whose
//! resolv.conf points at registry-dns on port 53. Needs root for `ip netns` (CI runs as root).

mod support;

use std::process::Command;

use support::RegistryDns;

/// A network namespace with its own /etc/resolv.conf and /etc/hosts (bind-mounted by
/// `ip netns exec` from /etc/netns/NAME/), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(resolv_conf: &str) -> Self {
        Self::named("node", resolv_conf)
    }

    fn named(tag: &str, resolv_conf: &str) -> Self {
        let name = format!("rdns-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "`ip netns add` failed: this test needs root and iproute2 (tests/run.sh runs as root in CI)");
        let etc = format!("/etc/netns/{name}");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(format!("{etc}/resolv.conf"), resolv_conf).unwrap();
        std::fs::write(format!("{etc}/hosts"), "127.0.0.1 localhost\n").unwrap();
        let this = Self { name };
        assert!(this.exec(&["ip", "link", "set", "lo", "up"]).status().unwrap().success());
        this
    }

    fn exec(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(argv);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

fn ip(ns: &Netns, args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let status = ns.exec(&argv).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

#[test]
fn sources_outside_the_default_allow_list_are_refused() {
    // A server namespace and a client namespace on one veth. The client has an address outside
    // the default allow list (198.18.0.0/15, the benchmarking range) and one inside (RFC 1918).
    let server = Netns::named("acl-srv", "nameserver 127.0.0.1\n");
    let client = Netns::named("acl-cli", "nameserver 198.18.0.1\n");
    let (veth_srv, veth_cli) =
        (format!("rdnsa{}", std::process::id() % 100000), format!("rdnsb{}", std::process::id() % 100000));
    ip(&server, &["link", "add", &veth_srv, "type", "veth", "peer", "name", &veth_cli, "netns", &client.name]);
    for (ns, dev, outside, inside) in
        [(&server, &veth_srv, "198.18.0.1/24", "10.99.0.1/24"), (&client, &veth_cli, "198.18.0.2/24", "10.99.0.2/24")]
    {
        ip(ns, &["addr", "add", outside, "dev", dev]);
        ip(ns, &["addr", "add", inside, "dev", dev]);
        ip(ns, &["link", "set", dev, "up"]);
    }
    let _server = RegistryDns::start_with(
        server.exec(&[RegistryDns::BIN]),
        &[
            "--listen",
            "198.18.0.1:53",
            "--listen",
            "10.99.0.1:53",
            "--record",
            "knative-local-registry=10.0.0.10",
            "--upstream",
            "127.0.0.1:5300",
        ],
    );
    let dig = |source: &str, target: &str, tcp: bool| {
        let at = format!("@{target}");
        let mut argv = vec!["dig", "-b", source, at.as_str(), "+time=2", "+tries=1", "knative-local-registry"];
        if tcp {
            argv.push("+tcp");
        }
        support::parse_dig(&String::from_utf8_lossy(&client.exec(&argv).output().unwrap().stdout))
    };
    for tcp in [false, true] {
        let outsider = dig("198.18.0.2", "198.18.0.1", tcp);
        assert_eq!(outsider.status, "REFUSED", "tcp={tcp}: {}", outsider.raw);
        assert!(outsider.answer.is_empty());
        let insider = dig("10.99.0.2", "10.99.0.1", tcp);
        assert_eq!(insider.rdata("A"), ["10.0.0.10"], "tcp={tcp}: {}", insider.raw);
    }
}

#[test]
fn glibc_resolves_the_single_label_name_through_registry_dns() {
    let ns = Netns::new("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n");
    let _server = RegistryDns::start_with(
        ns.exec(&[RegistryDns::BIN]),
        &["--listen", "127.0.0.1:53", "--record", "knative-local-registry=10.0.0.10", "--upstream", "127.0.0.1:5300"],
    );
    let out = ns.exec(&["getent", "ahosts", "knative-local-registry"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "getent failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l.starts_with("10.0.0.10") && l.contains("knative-local-registry")), "{text}");

    let unknown = ns.exec(&["getent", "ahosts", "not-a-local-name"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2), "an unknown name is not found (forwarded, upstream down)");
}
