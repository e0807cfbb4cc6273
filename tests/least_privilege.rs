//! The binary with exactly the privileges the DaemonSet gives it (docs/kubernetes.md, "Least privilege"): a
//! non-root uid, no_new_privs, and only CAP_NET_BIND_SERVICE (plus CAP_NET_ADMIN when it manages
//! its interface) as ambient capabilities, set with `setpriv` in a scratch network namespace. It
//! serves port 53 with them, and without them exits at once with one line saying what it lacked.
//! Needs root for `ip netns` and `setpriv` (CI runs as root).

mod support;

use std::process::Command;
use std::time::Duration;

use support::{RegistryDns, parse_dig, wait_until};

/// distroless's `nonroot`, the image's USER and the DaemonSet's runAsUser.
const UID: &str = "65532";
const NAME: &str = "knative-local-registry";
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;

/// A network namespace with loopback up, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("rdns-lp-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
        assert!(ok, "`ip netns add` failed: this test needs root and iproute2 (tests/run.sh runs as root in CI)");
        let ns = Self { name };
        assert!(ns.exec(&["ip", "link", "set", "lo", "up"]).status().unwrap().success());
        ns
    }

    fn exec(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(argv);
        command
    }

    /// registry-dns as uid/gid 65532 with no supplementary groups, no_new_privs, and `caps`
    /// (setpriv names, e.g. "net_bind_service") as its only capabilities: inheritable, ambient and
    /// bounding set, so that they survive the exec into the non-root binary and nothing else can
    /// ever be gained.
    fn as_unprivileged(&self, caps: &[&str]) -> Command {
        let set: String = std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let uid = format!("--reuid={UID}");
        let gid = format!("--regid={UID}");
        let inh = format!("--inh-caps={set}");
        let ambient = format!("--ambient-caps={set}");
        let bounding = format!("--bounding-set={set}");
        self.exec(&[
            "setpriv",
            &uid,
            &gid,
            "--clear-groups",
            &inh,
            &ambient,
            &bounding,
            "--no-new-privs",
            RegistryDns::BIN,
        ])
    }

    fn dig(&self, server: &str, args: &[&str]) -> support::Dig {
        let out =
            self.exec(&["dig", &format!("@{server}"), "-p", "53", "+time=2", "+tries=1"]).args(args).output().unwrap();
        parse_dig(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A field of /proc/PID/status, e.g. "Uid" or "CapEff".
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_once(':').unwrap().1.trim().to_string()
}

fn caps_mask(caps: &[u32]) -> String {
    format!("{:016x}", caps.iter().map(|c| 1u64 << c).sum::<u64>())
}

/// Runs the command to its end; (exit code, stderr).
fn run_to_exit(mut command: Command, args: &[&str]) -> (Option<i32>, String) {
    let out = command.args(args).env_remove("RUST_LOG").output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const RECORD: &str = "knative-local-registry=10.11.12.13";

#[test]
fn serves_port_53_as_a_non_root_user_with_only_net_bind_service() {
    let ns = Netns::new("bind");
    let command = ns.as_unprivileged(&["net_bind_service"]);
    let args = ["--listen", "127.0.0.1:53", "--record", RECORD, "--upstream", "127.0.0.1:9", "--ops-listen", "off"];
    let s = RegistryDns::start_with(command, &args);
    assert_eq!(proc_status(s.pid(), "Name"), "registry-dns", "setpriv and ip exec'd into it");
    assert_eq!(proc_status(s.pid(), "Uid").split_whitespace().collect::<Vec<_>>(), [UID; 4]);
    assert_eq!(proc_status(s.pid(), "Gid").split_whitespace().collect::<Vec<_>>(), [UID; 4]);
    assert_eq!(proc_status(s.pid(), "Groups"), "");
    assert_eq!(proc_status(s.pid(), "CapEff"), caps_mask(&[CAP_NET_BIND_SERVICE]));
    assert_eq!(proc_status(s.pid(), "CapBnd"), caps_mask(&[CAP_NET_BIND_SERVICE]));
    assert_eq!(proc_status(s.pid(), "NoNewPrivs"), "1");
    for transport in ["+notcp", "+tcp"] {
        let d = ns.dig("127.0.0.1", &[transport, NAME, "A"]);
        assert_eq!(d.rdata("A"), ["10.11.12.13"], "{transport}: {}", d.raw);
    }
}

#[test]
fn without_net_bind_service_port_53_is_a_one_line_error() {
    let ns = Netns::new("nobind");
    let (code, stderr) = run_to_exit(
        ns.as_unprivileged(&[]),
        &["--listen", "127.0.0.1:53", "--record", RECORD, "--upstream", "127.0.0.1:9", "--ops-listen", "off"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot listen on 127.0.0.1:53") && stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn the_interface_mode_needs_net_admin_and_nothing_more() {
    let ns = Netns::new("iface");
    let args = RegistryDns::link_local_args(&["--record", RECORD, "--upstream", "127.0.0.1:9", "--ops-listen", "off"]);
    let (code, stderr) = run_to_exit(ns.as_unprivileged(&["net_bind_service"]), &args);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot create interface registry-dns0") && stderr.contains("CAP_NET_ADMIN"), "{stderr}");

    let s = RegistryDns::start_with(ns.as_unprivileged(&["net_bind_service", "net_admin"]), &args);
    assert_eq!(proc_status(s.pid(), "CapEff"), caps_mask(&[CAP_NET_BIND_SERVICE, CAP_NET_ADMIN]));
    assert!(wait_until(Duration::from_secs(5), || ns.dig("169.254.20.25", &[NAME, "A"]).rdata("A") == ["10.11.12.13"]));
    let link = ns.exec(&["ip", "-o", "address", "show", "dev", "registry-dns0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("169.254.20.25/32"), "{link:?}");
}
