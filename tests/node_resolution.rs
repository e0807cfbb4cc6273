//! Resolution as a node does it: the real stub resolvers (glibc's, musl's, Go's) in a network
//! namespace whose resolv.conf points at registry-dns on port 53. Needs root for `ip netns` (CI
//! runs as root); `tests/run.sh` installs musl-gcc.

mod support;

use support::RegistryDns;
use support::netns::Netns;

#[test]
fn glibc_musl_and_go_resolve_local_and_forwarded_names_from_fresh_sockets_over_four_workers() {
    let [glibc, musl, go] = support::resolvers::build();
    let ns = Netns::new("stubs", "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n");
    let _upstream = ns.dnsmasq("127.0.0.2", "192.0.2.2");
    let _server = RegistryDns::start_with(
        ns.exec(&[RegistryDns::BIN]),
        &[
            "--listen",
            "127.0.0.1:53",
            "--record",
            "knative-local-registry=10.0.0.10",
            "--upstream",
            "127.0.0.2",
            "--workers",
            "4",
        ],
    );
    for (resolver, binary) in [("glibc", &glibc), ("musl", &musl), ("go", &go)] {
        // Ten lookups, each a new process: new sockets, new source ports, any of the workers.
        for i in 0..10 {
            let out = ns.exec(&[binary.to_str().unwrap(), "knative-local-registry", "www.test"]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{resolver} lookup {i}: {}", String::from_utf8_lossy(&out.stderr));
            let addresses: Vec<&str> = text.lines().collect();
            assert!(addresses.contains(&"10.0.0.10"), "{resolver} lookup {i}: the local name: {text}");
            assert!(addresses.contains(&"192.0.2.2"), "{resolver} lookup {i}: the forwarded name: {text}");
            assert!(addresses.iter().all(|a| ["10.0.0.10", "192.0.2.2"].contains(a)), "{resolver}: {text}");
        }
        let unknown = ns.exec(&[binary.to_str().unwrap(), "not-a-local-name"]).output().unwrap();
        assert!(!unknown.status.success(), "{resolver}: an unknown name does not resolve");
    }
}

#[test]
fn sources_outside_the_default_allow_list_are_refused() {
    // A server namespace and a client namespace on one veth. The client has an address outside
    // the default allow list (198.18.0.0/15, the benchmarking range) and one inside (RFC 1918).
    let server = Netns::new("acl-srv", "nameserver 127.0.0.1\n");
    let client = Netns::new("acl-cli", "nameserver 198.18.0.1\n");
    let (veth_srv, veth_cli) =
        (format!("rdnsa{}", std::process::id() % 100000), format!("rdnsb{}", std::process::id() % 100000));
    server.ip(&["link", "add", &veth_srv, "type", "veth", "peer", "name", &veth_cli, "netns", &client.name]);
    for (ns, dev, outside, inside) in
        [(&server, &veth_srv, "198.18.0.1/24", "10.99.0.1/24"), (&client, &veth_cli, "198.18.0.2/24", "10.99.0.2/24")]
    {
        ns.ip(&["addr", "add", outside, "dev", dev]);
        ns.ip(&["addr", "add", inside, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
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
    let ns = Netns::new("node", "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n");
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
