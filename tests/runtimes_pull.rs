//! The other runtimes' pulls, by name, with only what node setup wrote: **podman** (Debian's,
//! rootful, vfs storage: the containers/image code and files CRI-O pulls with) and **dockerd**
//! (Debian's docker.io, started here with its own data root, exec root, socket and pidfile,
//! `--iptables=false`, no bridge) pull `knative-local-registry:5000/demo:1` from the real
//! registry (Debian's distribution) on a node whose resolver is registry-dns
//! (tests/support/registry_node.rs), plain HTTP and TLS; dockerd pushes by name too.
//!
//! The node's /etc/containers and /etc/docker are scratch directories: `ip netns exec` lays
//! /etc/netns/NAME/{containers,docker} over them for every process of the node (podman, dockerd,
//! the doctor), and deploy/node/setup.sh (as the node setup pod runs it, resolver and containerd
//! left alone) writes into those same directories. /etc/containers starts with Debian's
//! policy.json and registries.conf only (what a node with containers-common has); /etc/docker with
//! a user's daemon.json of other keys. Before node setup, each pull fails (plain HTTP: "server gave
//! HTTP response to HTTPS client"; TLS: an unknown authority): the pass is the setup's doing.
//! dockerd is never restarted: node setup's SIGHUP makes it reload `insecure-registries`. After
//! removal the user's daemon.json is back byte for byte. Then `registry-dns doctor --registry`
//! agrees, exit 0.
//!
//! **CRI-O** itself (built from its Go module by `tests/cluster/control-plane.sh build-crio`, with
//! Debian's conmon and runc), driven by `crictl` over its CRI socket, pulls by name over plain HTTP
//! once: started before node setup, it fails; node setup writes the drop-in and sends it SIGHUP, and
//! the same CRI-O, not restarted, pulls.
//!
//! Needs root; skipped with a loud message when not root or when a part is missing, and never
//! skipped when `CI` is set.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use support::control_plane;
use support::registry_node::{REGISTRY, RegistryNode};
use support::{TempDir, wait_until};

const PODMAN: &str = "/usr/bin/podman";
const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
const CONMON: &str = "/usr/bin/conmon";
/// A user's daemon.json: keys of their own (none that dockerd's flags here also set), tabs, no
/// final newline, an insecure-registries list of theirs; it must come back byte for byte.
const USERS_DAEMON_JSON: &str = "{\n\t\"log-level\": \"warn\",\n\t\"labels\": [\"test=registry-dns\"],\n\t\"max-concurrent-downloads\": 2,\n\t\"insecure-registries\": [\"10.99.0.0/16\"]\n}";

/// The Go-built tools: crane (builds and pushes the image), crictl and CRI-O.
struct Tools {
    crane: PathBuf,
    crictl: PathBuf,
    crio: PathBuf,
    pinns: PathBuf,
}

fn tools() -> Option<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    control_plane::parts_once(
        &TOOLS,
        "tests/runtimes_pull.rs",
        "network namespaces, podman, dockerd",
        &[PODMAN, DOCKERD, DOCKER, CONMON, "/usr/bin/docker-registry", "/etc/containers/policy.json"],
        || {
            Ok(Tools {
                crane: control_plane::build("build-e2e")?[1].join("crane"),
                crictl: control_plane::build("build-cri")?[0].join("crictl"),
                crio: control_plane::build("build-crio")?[0].join("crio"),
                pinns: control_plane::build("build-crio")?[0].join("pinns"),
            })
        },
    )
}

/// One runtime at a time: they share this 2-CPU machine with the rest of the suite.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `podman ARGS` on the node: rootful, its storage (vfs) and run directories in the node's scratch.
fn podman(node: &RegistryNode, state: &TempDir, args: &[&str]) -> Output {
    // Short: podman refuses a runroot of more than 50 characters.
    let (root, run, tmp) = (state.path("root"), state.path("run"), state.path("tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut argv = vec![
        PODMAN,
        "--root",
        root.to_str().unwrap(),
        "--runroot",
        run.to_str().unwrap(),
        "--tmpdir",
        tmp.to_str().unwrap(),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ];
    argv.extend_from_slice(args);
    node.ns.exec(&argv).stdin(Stdio::null()).output().unwrap()
}

fn podman_pulls_by_name_with_what_node_setup_wrote(tls: bool) {
    let Some(tools) = tools() else { return };
    let crane = &tools.crane;
    let _serial = serial();
    let node = RegistryNode::start(if tls { "podman-tls" } else { "podman-http" }, tls);
    let state = TempDir::new("pm");
    node.runtime_dirs();
    let reference = format!("{REGISTRY}/demo:1");
    let pushed = node.push_image(crane, &reference);

    let refused = podman(&node, &state, &["pull", "--quiet", &reference]);
    let why = text(&refused);
    eprintln!("podman, before node setup: {why}");
    assert!(!refused.status.success(), "no drop-in yet: {why}");
    let expected =
        if tls { "x509: certificate signed by unknown authority" } else { "server gave HTTP response to HTTPS client" };
    assert!(why.contains(expected), "before node setup: {why}");

    let written = node.setup_runtimes("install", &node.dir.path("no-docker.pid"), &[]);
    assert!(written.contains("wrote ") && written.contains("50-registry-dns.conf"), "{written}");
    let pulled = podman(&node, &state, &["pull", "--quiet", &reference]);
    assert!(pulled.status.success(), "podman pull after node setup: {}", text(&pulled));
    let digest = podman(&node, &state, &["image", "inspect", "--format", "{{.Digest}}", &reference]);
    assert_eq!(String::from_utf8_lossy(&digest.stdout).trim(), pushed, "podman pulled what was pushed");

    let (code, report) = node.doctor(&["--registry", "--runtime", "containers-image"]);
    assert_eq!(code, Some(0), "{report}");

    let removed = node.setup_runtimes("remove", &node.dir.path("no-docker.pid"), &[]);
    assert!(removed.contains("removed "), "{removed}");
    let left: Vec<_> = walk(&PathBuf::from(node.ns.etc()).join("containers"));
    assert_eq!(left, ["policy.json", "registries.conf"], "removal left only what was there");
}

#[test]
fn podman_pulls_by_name_over_plain_http() {
    podman_pulls_by_name_with_what_node_setup_wrote(false);
}

#[test]
fn podman_pulls_by_name_over_tls() {
    podman_pulls_by_name_with_what_node_setup_wrote(true);
}

/// The files under `dir`, relative, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            match entry.file_type().unwrap().is_dir() {
                true => dirs.push(entry.path()),
                false => files.push(entry.path().strip_prefix(dir).unwrap().display().to_string()),
            }
        }
    }
    files.sort();
    files
}

/// A runtime's daemon on the node (its resolver: registry-dns; its /etc/containers and
/// /etc/docker: the node's scratch ones), its state and log under a scratch directory of its own;
/// stopped on drop with SIGTERM, as its service would be.
struct Daemon {
    child: Child,
    dir: PathBuf,
    name: &'static str,
}

impl Daemon {
    /// A fresh directory for `name`'s state: short, since dockerd's own containerd puts its socket
    /// under it.
    fn dir(name: &str) -> PathBuf {
        let dir = PathBuf::from(format!("/tmp/rdns-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Starts `argv` in the node, then waits until `ready` (or panics with the log's tail).
    fn start(
        node: &RegistryNode,
        name: &'static str,
        dir: PathBuf,
        argv: &[&str],
        ready: impl Fn(&Self) -> bool,
    ) -> Self {
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        // Not through `ip netns exec`, which mounts a new /sys and so hides the cgroup mounts
        // (dockerd refuses to start without the devices cgroup): a mount namespace of its own
        // with the node's /etc files bound over the host's, as `ip netns exec` binds them, then
        // the node's network namespace.
        let (etc, netns) = (node.ns.etc(), format!("/run/netns/{}", node.ns.name));
        let script = r#"etc=$1; shift; for f in "$etc"/*; do mount --bind "$f" "/etc/${f##*/}"; done; exec nsenter --net="$0" -- "$@""#;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, &netns, &etc])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut this = Self { child, dir, name };
        // Until it is ready, or has exited.
        wait_until(Duration::from_secs(60), || !matches!(this.child.try_wait(), Ok(None)) || ready(&this));
        assert!(this.running() && ready(&this), "{name} did not come up:\n{}", this.log_tail());
        this
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("{} log:\n{}", self.name, lines[lines.len().saturating_sub(30)..].join("\n"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM, so that dockerd stops its own containerd.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        if !wait_until(Duration::from_secs(15), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Docker CLI against `daemon`'s socket.
fn docker(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(DOCKER)
        .env("DOCKER_CONFIG", daemon.path("cli"))
        .args(["-H", &format!("unix://{}", daemon.path("docker.sock"))])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// dockerd with `--config-file` the node's /etc/docker/daemon.json, no bridge, no iptables.
fn start_dockerd(node: &RegistryNode) -> Daemon {
    let dir = Daemon::dir("dockerd");
    let path = |name: &str| dir.join(name).display().to_string();
    let (data, exec, pidfile, host) =
        (path("data"), path("exec"), path("docker.pid"), format!("unix://{}", path("docker.sock")));
    let argv = [
        DOCKERD,
        "--data-root",
        &data,
        "--exec-root",
        &exec,
        "--pidfile",
        &pidfile,
        "-H",
        &host,
        "--config-file",
        "/etc/docker/daemon.json",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=vfs",
    ];
    Daemon::start(node, "dockerd", dir.clone(), &argv, |d| docker(d, &["version"]).status.success())
}

/// The registries the running dockerd treats as insecure (`docker info`).
fn insecure_registries(dockerd: &Daemon) -> String {
    text(&docker(dockerd, &["info", "--format", "{{json .RegistryConfig.IndexConfigs}}"]))
}

fn dockerd_pulls_and_pushes_by_name_with_what_node_setup_wrote(tls: bool) {
    let Some(tools) = tools() else { return };
    let crane = &tools.crane;
    let _serial = serial();
    let node = RegistryNode::start(if tls { "dockerd-tls" } else { "dockerd-http" }, tls);
    let (_, docker_dir) = node.runtime_dirs();
    let daemon_json = docker_dir.join("daemon.json");
    std::fs::write(&daemon_json, USERS_DAEMON_JSON).unwrap();
    let reference = format!("{REGISTRY}/demo:1");
    let pushed = node.push_image(crane, &reference);

    let mut dockerd = start_dockerd(&node);
    let pidfile = PathBuf::from(dockerd.path("docker.pid"));
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let refused = docker(&dockerd, &["pull", "--quiet", &reference]);
    let why = text(&refused);
    eprintln!("dockerd, before node setup: {why}");
    assert!(!refused.status.success(), "nothing written yet: {why}");
    let expected =
        if tls { "x509: certificate signed by unknown authority" } else { "server gave HTTP response to HTTPS client" };
    assert!(why.contains(expected), "before node setup: {why}");

    let written = node.setup_runtimes("install", &pidfile, &[]);
    if tls {
        assert!(written.contains(&format!("wrote {}/certs.d/{REGISTRY}/ca.crt", docker_dir.display())), "{written}");
        assert_eq!(std::fs::read_to_string(&daemon_json).unwrap(), USERS_DAEMON_JSON, "TLS leaves daemon.json alone");
    } else {
        assert!(written.contains("sent SIGHUP to dockerd"), "{written}");
        // The reload is dockerd's own doing, a moment after the signal.
        let reloaded = wait_until(Duration::from_secs(10), || insecure_registries(&dockerd).contains(REGISTRY));
        assert!(reloaded, "dockerd did not reload insecure-registries: {}", insecure_registries(&dockerd));
    }
    let pulled = docker(&dockerd, &["pull", "--quiet", &reference]);
    assert!(pulled.status.success(), "docker pull after node setup: {}\n{}", text(&pulled), dockerd.log_tail());
    let digests = text(&docker(&dockerd, &["image", "inspect", "--format", "{{json .RepoDigests}}", &reference]));
    assert!(digests.contains(&format!("{REGISTRY}/demo@{pushed}")), "dockerd pulled what was pushed: {digests}");

    // A push by name: an image made here (docker import of a one-file tarball), then pushed.
    let content = node.dir.path("push");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("pushed.txt"), "pushed by dockerd\n").unwrap();
    let tarball = node.dir.path("push.tar");
    let tar =
        Command::new("tar").args(["-C", content.to_str().unwrap(), "-cf", tarball.to_str().unwrap(), "."]).output();
    assert!(tar.unwrap().status.success());
    let target = format!("{REGISTRY}/pushed:1");
    let imported = docker(&dockerd, &["import", tarball.to_str().unwrap(), &target]);
    assert!(imported.status.success(), "docker import: {}", text(&imported));
    let push = docker(&dockerd, &["push", &target]);
    let push_text = text(&push);
    assert!(push.status.success(), "docker push: {push_text}\n{}", dockerd.log_tail());
    let digest =
        push_text.split_whitespace().find(|w| w.starts_with("sha256:")).expect("docker push prints the digest");
    let mut argv = vec![crane.to_str().unwrap(), "digest", target.as_str()];
    if !tls {
        argv.push("--insecure");
    }
    let mut in_registry = node.ns.exec(&argv);
    if let Some(ca) = &node.ca {
        in_registry.env("SSL_CERT_FILE", ca);
    }
    let in_registry = in_registry.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&in_registry.stdout).trim(), digest, "the registry holds what dockerd pushed");

    let (code, report) = node.doctor(&["--registry", "--runtime", "docker"]);
    assert_eq!(code, Some(0), "{report}");

    let removed = node.setup_runtimes("remove", &pidfile, &[]);
    assert_eq!(
        std::fs::read_to_string(&daemon_json).unwrap(),
        USERS_DAEMON_JSON,
        "daemon.json byte for byte: {removed}"
    );
    // key.json is dockerd's own (its identity, written at its start).
    let left: Vec<String> = walk(&docker_dir).into_iter().filter(|f| f != "key.json").collect();
    assert_eq!(left, ["daemon.json"], "removal left only the user's daemon.json: {removed}");
    if !tls {
        // The user's list is back in the running dockerd: its own CIDR, not the registry.
        let back = wait_until(Duration::from_secs(10), || !insecure_registries(&dockerd).contains(REGISTRY));
        assert!(back, "dockerd still lists the registry after removal: {}", insecure_registries(&dockerd));
    }
    assert!(dockerd.running() && std::fs::read_to_string(&pidfile).unwrap() == pid, "dockerd was never restarted");
}

#[test]
fn dockerd_pulls_and_pushes_by_name_over_plain_http() {
    dockerd_pulls_and_pushes_by_name_with_what_node_setup_wrote(false);
}

#[test]
fn dockerd_pulls_and_pushes_by_name_over_tls() {
    dockerd_pulls_and_pushes_by_name_with_what_node_setup_wrote(true);
}

/// `crictl ARGS` against CRI-O's socket.
fn crictl(crio: &Daemon, tools: &Tools, args: &[&str]) -> Output {
    let endpoint = format!("unix://{}", crio.path("crio.sock"));
    Command::new(&tools.crictl)
        .args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--timeout", "30s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// CRI-O with every path of its state under its scratch directory, Debian's conmon and runc, vfs
/// storage, no CNI network (a pull needs none).
fn start_crio(node: &RegistryNode, tools: &Tools) -> Daemon {
    let dir = Daemon::dir("crio");
    std::fs::create_dir_all(dir.join("cni")).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    let runtime = format!("runc:/usr/sbin/runc:{}", path("runc"));
    let argv = [
        tools.crio.to_str().unwrap(),
        "--config",
        "",
        "--config-dir",
        &path("crio.conf.d"),
        "--root",
        &path("root"),
        "--runroot",
        &path("run"),
        "--listen",
        &path("crio.sock"),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--conmon-cgroup",
        "pod",
        "--conmon",
        CONMON,
        "--default-runtime",
        "runc",
        "--runtimes",
        &runtime,
        "--cni-config-dir",
        &path("cni"),
        "--log-dir",
        &path("logs"),
        "--version-file",
        &path("version"),
        "--version-file-persist",
        &path("version-persist"),
        "--clean-shutdown-file",
        &path("clean.shutdown"),
        "--container-exits-dir",
        &path("exits"),
        "--container-attach-socket-dir",
        &path("attach"),
        "--namespaces-dir",
        &path("ns"),
        "--irqbalance-config-file",
        "",
        "--enable-metrics=false",
        "--pinns-path",
        tools.pinns.to_str().unwrap(),
    ];
    Daemon::start(node, "crio", dir.clone(), &argv, |d| crictl(d, tools, &["version"]).status.success())
}

#[test]
fn crio_cri_pulls_by_name_over_plain_http_after_node_setups_sighup() {
    let Some(tools) = tools() else { return };
    let _serial = serial();
    let node = RegistryNode::start("crio-http", false);
    node.runtime_dirs();
    let reference = format!("{REGISTRY}/demo:1");
    let pushed = node.push_image(&tools.crane, &reference);

    let mut crio = start_crio(&node, tools);
    let pid = crio.child.id();
    let refused = crictl(&crio, tools, &["pull", &reference]);
    let why = text(&refused);
    eprintln!("CRI-O, before node setup: {why}");
    assert!(!refused.status.success(), "no drop-in yet: {why}");
    assert!(why.contains("server gave HTTP response to HTTPS client"), "before node setup: {why}");

    let written = node.setup_runtimes("install", &node.dir.path("no-docker.pid"), &[("DOCKER", "off")]);
    assert!(written.contains(&format!("sent SIGHUP to crio (pid {pid})")), "{written}");
    // The reload is CRI-O's own doing, a moment after the signal.
    let mut last = String::new();
    let pulled = wait_until(Duration::from_secs(10), || {
        let out = crictl(&crio, tools, &["pull", &reference]);
        last = text(&out);
        out.status.success()
    });
    assert!(pulled, "crictl pull through CRI-O after node setup: {last}\n{}", crio.log_tail());
    let image = text(&crictl(&crio, tools, &["inspecti", "-o", "json", &reference]));
    assert!(image.contains(&format!("{REGISTRY}/demo@{pushed}")), "CRI-O pulled what was pushed: {image}");
    assert!(crio.running(), "the same CRI-O, never restarted");
}
