//! Live reload: `--config FILE` re-read on SIGHUP, and the resolv.conf re-read when it changes
//! on disk. The real binary under a client that never stops querying: a reload must not drop or
//! mis-answer a single query, and a bad config must change nothing.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use support::netns::Netns;
use support::{Nsd, RegistryDns, TempDir, ask_a, dig, run_to_exit, test_zone, wait_until};

const NAME: &str = "knative-local-registry";

fn hangup(s: &RegistryDns) {
    assert!(Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().unwrap().success());
}

/// An upstream whose `www.test.` answers `address`.
fn upstream_answering(address: &str) -> Nsd {
    Nsd::start(&[("test.", Some(&test_zone().replace("192.0.2.1", address)))])
}

/// Per name, the answers a client may get right now.
type Allowed = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// A client that asks a local and a forwarded name in a loop, each answer checked against the
/// answers allowed at that moment (old or new while a reload is under way).
struct Client {
    stop: Arc<AtomicBool>,
    allowed: Allowed,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Client {
    fn start(server: SocketAddr, allowed: Vec<(String, Vec<String>)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let allowed = Arc::new(Mutex::new(allowed));
        let (stop2, allowed2) = (stop.clone(), allowed.clone());
        let thread = std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let (mut asked, mut failures) = (0, Vec::new());
            while !stop2.load(Ordering::Relaxed) {
                for name in [format!("{NAME}."), "www.test.".to_string()] {
                    asked += 1;
                    let answer = ask_a(&socket, server, &name);
                    let ok = allowed2.lock().unwrap().iter().any(|(n, addresses)| {
                        *n == name && matches!(&answer, Some((ResponseCode::NoError, a)) if a == addresses)
                    });
                    if !ok {
                        failures.push(format!("{name}: {answer:?}"));
                    }
                }
            }
            (asked, failures)
        });
        Self { stop, allowed, thread: Some(thread) }
    }

    fn allow(&self, name: &str, addresses: &[&str]) {
        let addresses = addresses.iter().map(|a| a.to_string()).collect();
        self.allowed.lock().unwrap().push((name.to_string(), addresses));
    }

    fn only(&self, name: &str, addresses: &[&str]) {
        self.allowed.lock().unwrap().retain(|(n, a)| n != name || a == addresses);
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn config_yaml(record: &str, upstream: SocketAddr) -> String {
    format!("record:\n  - {record}\n  - other-name=10.0.0.20\nupstream: [\"{upstream}\"]\nupstream-timeout: 1s\n")
}

#[test]
fn sighup_swaps_records_and_upstreams_without_dropping_a_query() {
    let (old_upstream, new_upstream) = (upstream_answering("192.0.2.1"), upstream_answering("192.0.2.2"));
    let dir = TempDir::new("reload");
    let config = dir.path("registry-dns.yaml");
    std::fs::write(&config, config_yaml(&format!("{NAME}=10.0.0.10"), old_upstream.addr)).unwrap();
    let s = RegistryDns::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(dig(s.addr, &["other-name", "A"]).rdata("A"), ["10.0.0.20"]);

    let fds = || std::fs::read_dir(format!("/proc/{}/fd", s.pid())).unwrap().count();
    let fds_before = fds();
    let client = Client::start(
        s.addr,
        vec![(format!("{NAME}."), vec!["10.0.0.10".into()]), ("www.test.".into(), vec!["192.0.2.1".into()])],
    );
    std::thread::sleep(Duration::from_millis(300));
    // Back and forth, several times: each reload swaps the name table and the upstream list
    // (every worker opens new upstream sockets) under the client's feet.
    client.allow(&format!("{NAME}."), &["10.0.0.11"]);
    client.allow("www.test.", &["192.0.2.2"]);
    for round in 0..6 {
        let (record, upstream, local, forwarded) = match round % 2 {
            0 => (format!("{NAME}=10.0.0.11"), new_upstream.addr, "10.0.0.11", "192.0.2.2"),
            _ => (format!("{NAME}=10.0.0.10"), old_upstream.addr, "10.0.0.10", "192.0.2.1"),
        };
        std::fs::write(&config, config_yaml(&record, upstream)).unwrap();
        hangup(&s);
        let reloads = round + 1;
        let applied = wait_until(Duration::from_secs(5), || {
            s.logs().iter().filter(|l| l.contains("configuration reloaded")).count() == reloads
        });
        assert!(applied, "{:?}", s.logs());
        let served = wait_until(Duration::from_secs(5), || {
            dig(s.addr, &[NAME, "A"]).rdata("A") == [local] && dig(s.addr, &["www.test", "A"]).rdata("A") == [forwarded]
        });
        assert!(served, "round {round}: the new answers are served");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The last round put the old values back: from now on only they may come.
    std::thread::sleep(Duration::from_millis(200));
    client.only(&format!("{NAME}."), &["10.0.0.10"]);
    client.only("www.test.", &["192.0.2.1"]);
    std::thread::sleep(Duration::from_millis(300));
    let (asked, failures) = client.finish();
    assert!(asked > 100, "the client kept asking: {asked}");
    assert!(failures.is_empty(), "{} of {asked} queries failed: {failures:?}", failures.len());
    let line = s.logs().into_iter().find(|l| l.contains("configuration reloaded")).unwrap();
    assert!(line.contains("record,upstream"), "{line}");
    // Each swap opened new upstream sockets in every worker; the replaced ones are closed once
    // their queries are done (within one upstream timeout), and the current ones once they sat
    // idle for their lifetime (10 s, `src/forward/udp/sockets.rs`).
    let closed = wait_until(Duration::from_secs(20), || fds() <= fds_before);
    assert!(closed, "file descriptors: {fds_before} before the reloads, {} after", fds());

    // A name dropped from the config stops being local (it is forwarded, and the upstream has no
    // such name); a new one answers.
    std::fs::write(
        &config,
        format!("record: [{NAME}=10.0.0.10, brand-new=10.0.0.30]\nupstream: [\"{}\"]\n", old_upstream.addr),
    )
    .unwrap();
    hangup(&s);
    assert!(wait_until(Duration::from_secs(5), || dig(s.addr, &["brand-new", "A"]).rdata("A") == ["10.0.0.30"]));
    let dropped = dig(s.addr, &["other-name", "A"]);
    assert!(!dropped.has_flag("aa") && dropped.rdata("A").is_empty(), "{}", dropped.raw);
}

#[test]
fn an_invalid_config_is_rejected_and_the_running_one_keeps_serving() {
    let upstream = upstream_answering("192.0.2.1");
    let dir = TempDir::new("reload-bad");
    let config = dir.path("registry-dns.toml");
    let good = format!("record = [\"{NAME}=10.0.0.10\"]\nupstream = [\"{}\"]\n", upstream.addr);
    std::fs::write(&config, &good).unwrap();
    let s = RegistryDns::start(&["--config", config.to_str().unwrap()]);

    let bad = [
        ("record = [\"unterminated\n", "config"),
        ("record = [\"knative-local-registry=10.0.0.11\"]\nttl = \"soon\"\n", "soon"),
        ("tll = 5\n", "--tll"),
        ("record = []\n", "no local names"),
        ("record = [\"knative-local-registry=not-an-ip\"]\n", "not-an-ip"),
    ];
    for (round, (text, reason)) in bad.iter().enumerate() {
        std::fs::write(&config, text).unwrap();
        hangup(&s);
        let rejected = wait_until(Duration::from_secs(5), || {
            s.logs().iter().filter(|l| l.contains("reload rejected")).count() == round + 1
        });
        assert!(rejected, "{text}: {:?}", s.logs());
        let line = s.logs().into_iter().rfind(|l| l.contains("reload rejected")).unwrap();
        assert!(line.contains(reason), "the log line says why ({reason}): {line}");
        assert_eq!(dig(s.addr, &[NAME, "A"]).rdata("A"), ["10.0.0.10"], "still the old answer after: {text}");
        assert_eq!(dig(s.addr, &["www.test", "A"]).rdata("A"), ["192.0.2.1"]);
    }
    assert!(s.logs().iter().all(|l| !l.contains("configuration reloaded")));

    // A setting that needs a restart is named; the rest of the file applies.
    std::fs::write(&config, good.replace("10.0.0.10", "10.0.0.12") + "ttl = 60\n").unwrap();
    hangup(&s);
    assert!(wait_until(Duration::from_secs(5), || dig(s.addr, &[NAME, "A"]).rdata("A") == ["10.0.0.12"]));
    assert!(s.logs().iter().any(|l| l.contains("take effect at the next restart") && l.contains("ttl")));
}

#[test]
fn a_reload_can_open_and_close_the_allow_list() {
    let dir = TempDir::new("reload-acl");
    let config = dir.path("registry-dns.yaml");
    std::fs::write(&config, format!("record: [{NAME}=10.0.0.10]\nupstream: [127.0.0.1:9]\nallow-from: [10.0.0.0/8]\n"))
        .unwrap();
    let s = RegistryDns::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(dig(s.addr, &[NAME, "A"]).status, "REFUSED", "loopback is outside 10.0.0.0/8");
    std::fs::write(
        &config,
        format!("record: [{NAME}=10.0.0.10]\nupstream: [127.0.0.1:9]\nallow-from: [127.0.0.0/8]\n"),
    )
    .unwrap();
    hangup(&s);
    assert!(wait_until(Duration::from_secs(5), || dig(s.addr, &[NAME, "A"]).rdata("A") == ["10.0.0.10"]));
}

#[test]
fn flags_override_the_config_file_and_a_bad_file_stops_startup_with_one_line() {
    let dir = TempDir::new("config-start");
    let config = dir.path("c.yaml");
    std::fs::write(&config, format!("record: [{NAME}=10.0.0.10]\nupstream: [127.0.0.1:9]\nttl: 30\n")).unwrap();
    let s = RegistryDns::start(&["--config", config.to_str().unwrap(), "--ttl", "7"]);
    let answer = dig(s.addr, &[NAME, "A"]);
    assert_eq!(answer.answer[0][1], "7", "the flag's TTL wins: {}", answer.raw);
    drop(s);

    std::fs::write(&config, "record: [knative-local-registry=10.0.0.10\n").unwrap();
    let (code, stderr) = run_to_exit(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("registry-dns: ") && stderr.contains("c.yaml"), "{stderr}");
}

#[test]
fn a_changed_resolv_conf_switches_the_upstreams_and_a_broken_one_is_ignored() {
    // Upstreams from a resolv.conf listen on port 53, so they need addresses of their own: a
    // network namespace with two dnsmasq instances on 127.0.0.2 and 127.0.0.3.
    let ns = Netns::new("resolv", "nameserver 127.0.0.1\n");
    let _first = ns.dnsmasq("127.0.0.2", "192.0.2.2");
    let _second = ns.dnsmasq("127.0.0.3", "192.0.2.3");
    let dir = TempDir::new("resolv-watch");
    let resolv_conf = dir.path("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.2\n").unwrap();
    let s = RegistryDns::start_with(
        ns.exec(&[RegistryDns::BIN]),
        &["--record", &format!("{NAME}=10.0.0.10"), "--resolv-conf", resolv_conf.to_str().unwrap()],
    );
    let server = s.addr.ip().to_string();
    let port = format!("-p{}", s.addr.port());
    let www = || ns.dig(&server, &[&port, "www.test", "A"]).rdata("A");
    assert_eq!(www(), ["192.0.2.2"]);

    // DHCP rewrites the file: the new nameserver takes over without a signal.
    std::fs::write(&resolv_conf, "# rewritten\nnameserver 127.0.0.3\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || www() == ["192.0.2.3"]), "{:?}", s.logs());
    assert!(s.logs().iter().any(|l| l.contains("resolv.conf changed")));

    // A file with no nameserver (half-written, or emptied) keeps the upstreams that work.
    std::fs::write(&resolv_conf, "search example\n").unwrap();
    assert!(s.wait_for_log("keeping the current upstreams", Duration::from_secs(10)), "{:?}", s.logs());
    assert_eq!(www(), ["192.0.2.3"]);
}

#[test]
fn with_nothing_given_it_answers_the_registry_on_this_machine_and_forwards_to_the_resolv_conf() {
    // The README's first run: no flag, no --config, no REGISTRY_DNS_* variable. The embedded
    // default answers the registry's name with 127.0.0.1 on 127.0.0.1:5353 and relays the rest to
    // /etc/resolv.conf's nameserver (the namespace's, mounted over /etc by `ip netns exec`).
    let ns = Netns::new("bare", "nameserver 127.0.0.2\n");
    let _upstream = ns.dnsmasq("127.0.0.2", "192.0.2.2");
    let mut command = ns.exec(&[RegistryDns::BIN]);
    for (key, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("REGISTRY_DNS_")) {
        command.env_remove(key);
    }
    let s = RegistryDns::start_as_given(command);
    assert_eq!(s.addr, "127.0.0.1:5353".parse().unwrap());
    let local = ns.dig("127.0.0.1", &["-p5353", NAME, "A"]);
    assert_eq!(local.rdata("A"), ["127.0.0.1"], "{}", local.raw);
    assert!(local.has_flag("aa"), "{}", local.raw);
    assert_eq!(ns.dig("127.0.0.1", &["-p5353", "www.test", "A"]).rdata("A"), ["192.0.2.2"], "{:?}", s.logs());
    let started = s.logs().into_iter().find(|l| l.contains("registry-dns serving")).unwrap();
    assert!(started.contains("upstreams=127.0.0.2:53"), "{started}");
}

#[test]
fn with_no_upstream_but_itself_it_serves_its_names_and_takes_the_first_upstream_listed() {
    // A node whose resolver is not set up yet: the file is missing, then lists nothing but
    // registry-dns itself. It starts all the same, says why once, answers its local names and
    // fails forwarded ones at once; registry_dns_upstreams says 0 (RegistryDnsNoUpstream).
    let ns = Netns::new("no-upstream", "nameserver 127.0.0.1\n");
    let _upstream = ns.dnsmasq("127.0.0.2", "192.0.2.2");
    let dir = TempDir::new("no-upstream");
    let resolv_conf = dir.path("resolv.conf");
    let s = RegistryDns::start_with(
        ns.exec(&[RegistryDns::BIN]),
        &[
            "--listen",
            "127.0.0.1:53",
            "--record",
            &format!("{NAME}=10.0.0.10"),
            "--resolv-conf",
            resolv_conf.to_str().unwrap(),
        ],
    );
    let warned: Vec<String> = s.logs().into_iter().filter(|l| l.contains("no upstream")).collect();
    assert_eq!(warned.len(), 1, "one line says why: {:?}", s.logs());
    assert!(warned[0].contains("serving the local names") && warned[0].contains("resolv.conf"), "{warned:?}");
    assert_eq!(ns.dig("127.0.0.1", &[NAME, "A"]).rdata("A"), ["10.0.0.10"]);
    let www = ns.dig("127.0.0.1", &["www.test", "A"]);
    assert_eq!(www.status, "SERVFAIL", "{}", www.raw);
    assert!(www.query_time() < Duration::from_millis(100), "SERVFAIL at once, not after a timeout: {}", www.raw);
    assert_eq!(ns.run(|| support::scrape::Scrape::of(&s)).get("registry_dns_upstreams", &[]), 0.0);
    std::fs::write(&resolv_conf, "nameserver 127.0.0.1\n").unwrap();
    assert!(s.wait_for_log("keeping the current upstreams", Duration::from_secs(10)), "{:?}", s.logs());
    assert_eq!(ns.dig("127.0.0.1", &[NAME, "A"]).rdata("A"), ["10.0.0.10"]);

    // The node's resolver comes up: the file lists an upstream, taken up without a restart.
    std::fs::write(&resolv_conf, "nameserver 127.0.0.1\nnameserver 127.0.0.2\n").unwrap();
    let forwarded =
        wait_until(Duration::from_secs(10), || ns.dig("127.0.0.1", &["www.test", "A"]).rdata("A") == ["192.0.2.2"]);
    assert!(forwarded, "{:?}", s.logs());
    assert_eq!(ns.run(|| support::scrape::Scrape::of(&s)).get("registry_dns_upstreams", &[]), 1.0);
}
