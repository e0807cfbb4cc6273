//! The kubelet's pull, by name, with only what node setup wrote: containerd **with its CRI plugin**
//! (what the kubelet pulls through), driven by `crictl` over the CRI socket, pulls
//! `knative-local-registry:5000/demo:1` from the real registry (Debian's distribution) on a node
//! whose resolver is registry-dns (tests/support/registry_node.rs), plain HTTP and TLS. containerd
//! runs from a scratch root whose config.toml names a scratch `config_path`, empty until
//! deploy/node/setup.sh (as the node setup pod runs it, resolver left alone) writes
//! `<config_path>/knative-local-registry:5000/hosts.toml` (and, for TLS, the CA beside it) there.
//! Before that, each pull fails: the pass is the setup's doing. Then `registry-dns doctor
//! --registry` agrees, exit 0.
//!
//! Both layouts: Debian's containerd 1.6 (config version 2, `io.containerd.grpc.v1.cri`) and
//! containerd 2.x built from its Go module (version 3, `io.containerd.cri.v1.images`), both from
//! `tests/cluster/control-plane.sh build-cri` (crictl too) and `build-e2e` (crane, which builds
//! the image without a base and pushes it). Nothing is pulled from the Internet.
//!
//! Needs root; skipped with a loud message when not root or when a part is missing or cannot be
//! built, and never skipped when `CI` is set.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use support::control_plane;
use support::registry_node::{REGISTRY, RegistryNode, node_setup};
use support::wait_until;

/// The binaries the tests drive.
struct Tools {
    crictl: PathBuf,
    containerd2: PathBuf,
    crane: PathBuf,
}

fn tools() -> Option<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    control_plane::parts_once(
        &TOOLS,
        "tests/containerd_cri.rs",
        "network namespaces, containerd",
        &["/usr/bin/containerd", "/usr/bin/docker-registry", "/usr/bin/openssl"],
        || {
            let cri = control_plane::build("build-cri")?;
            let e2e = control_plane::build("build-e2e")?;
            Ok(Tools {
                crictl: cri[0].join("crictl"),
                containerd2: cri[1].join("containerd"),
                crane: e2e[1].join("crane"),
            })
        },
    )
}

/// Which containerd, and the layout of its config.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Debian's containerd 1.6: `version = 2`, the CRI plugin `io.containerd.grpc.v1.cri`.
    Containerd1,
    /// containerd 2.x from its Go module: `version = 3`, the images plugin `io.containerd.cri.v1.images`.
    Containerd2,
}

/// containerd in the node's network namespace (its resolv.conf: registry-dns), killed on drop.
struct Containerd {
    child: Child,
    socket: String,
    config: PathBuf,
    log: PathBuf,
}

impl Containerd {
    fn start(node: &RegistryNode, tools: &Tools, layout: Layout) -> Self {
        let dir = node.dir.path("containerd");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock").display().to_string();
        let certs_d = dir.join("certs.d");
        std::fs::create_dir_all(&certs_d).unwrap();
        let (binary, config) = match layout {
            Layout::Containerd1 => (
                PathBuf::from("/usr/bin/containerd"),
                format!(
                    "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{socket}\"\n\
                     [ttrpc]\n  address = \"{socket}.ttrpc\"\n\
                     [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"native\"\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{c}\"\n",
                    d = dir.display(),
                    c = certs_d.display()
                ),
            ),
            Layout::Containerd2 => (
                tools.containerd2.clone(),
                format!(
                    "version = 3\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{socket}\"\n\
                     [ttrpc]\n  address = \"{socket}.ttrpc\"\n\
                     [plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n\
                     [plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{c}\"\n\
                     [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = \"linux/{arch}\"\n\
                     \x20 snapshotter = \"native\"\n",
                    d = dir.display(),
                    c = certs_d.display(),
                    // 2.x pulls through the transfer service, which unpacks only into the
                    // snapshotters its unpack_config names (overlayfs by default).
                    arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }
                ),
            ),
        };
        let config_file = dir.join("config.toml");
        std::fs::write(&config_file, config).unwrap();
        let log = dir.join("containerd.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = node
            .ns
            .exec(&[binary.to_str().unwrap(), "--config", config_file.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut this = Self { child, socket, config: config_file, log };
        let up = wait_until(Duration::from_secs(30), || {
            matches!(this.child.try_wait(), Ok(None)) && this.crictl(tools, &["version"]).status.success()
        });
        assert!(up, "containerd's CRI did not come up ({layout:?})\n{}", this.log_tail());
        this
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `crictl ARGS` against this containerd's CRI socket.
    fn crictl(&self, tools: &Tools, args: &[&str]) -> Output {
        let endpoint = format!("unix://{}", self.socket);
        Command::new(&tools.crictl)
            .args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--timeout", "30s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `crictl pull`, then the pulled image's repo digest (`inspecti`).
    fn pull(&self, tools: &Tools, reference: &str) -> Result<String, String> {
        let out = self.crictl(tools, &["pull", reference]);
        if !out.status.success() {
            return Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        }
        let out = self.crictl(tools, &["inspecti", "-o", "json", reference]);
        assert!(out.status.success(), "crictl inspecti: {}", String::from_utf8_lossy(&out.stderr));
        let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let digests = image["status"]["repoDigests"].as_array().cloned().unwrap_or_default();
        let repository = reference.rsplit_once(':').unwrap().0;
        digests
            .iter()
            .filter_map(|d| d.as_str()?.strip_prefix(&format!("{repository}@")).map(String::from))
            .next()
            .ok_or_else(|| format!("no repo digest for {repository} in {image}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole path for one containerd and one registry mode.
fn pulls_by_name_with_what_node_setup_wrote(layout: Layout, tls: bool) {
    let Some(tools) = tools() else { return };
    // One containerd at a time: the four share this 2-CPU machine with the rest of the suite.
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let tag = format!(
        "cri-{}-{}",
        if matches!(layout, Layout::Containerd1) { "1" } else { "2" },
        if tls { "tls" } else { "http" }
    );
    let node = RegistryNode::start(&tag, tls);
    let reference = format!("{REGISTRY}/demo:1");
    let pushed = node.push_image(&tools.crane, &reference);
    eprintln!("crane pushed {reference} = {pushed}");

    let containerd = Containerd::start(&node, tools, layout);
    let refused = containerd
        .pull(tools, &reference)
        .expect_err("no hosts.toml yet: containerd tries HTTPS with the system's roots");
    eprintln!("{layout:?}, before node setup: {refused}");

    let mut env = Vec::new();
    let ca = node.ca.as_ref().map(|ca| ca.display().to_string());
    if let Some(ca) = &ca {
        env.push(("REGISTRY_CA", ca.as_str()));
    }
    let written = node_setup(&containerd.config, &env);
    let hosts = containerd.config.parent().unwrap().join("certs.d").join(REGISTRY).join("hosts.toml");
    assert!(written.contains(&format!("wrote {}", hosts.display())), "{written}");
    let again = node_setup(&containerd.config, &env);
    assert!(again.contains(&format!("{} up to date", hosts.display())), "idempotent: {again}");

    let pulled = containerd
        .pull(tools, &reference)
        .unwrap_or_else(|e| panic!("{layout:?} crictl pull: {e}\n{}", containerd.log_tail()));
    assert_eq!(pulled, pushed, "the node pulled what was pushed");

    let config = containerd.config.to_str().unwrap();
    let (code, report) = node.doctor(&["--registry", "--runtime", "containerd", "--containerd-config", config]);
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn containerd_1_cri_pulls_by_name_over_plain_http() {
    pulls_by_name_with_what_node_setup_wrote(Layout::Containerd1, false);
}

#[test]
fn containerd_1_cri_pulls_by_name_over_tls() {
    pulls_by_name_with_what_node_setup_wrote(Layout::Containerd1, true);
}

#[test]
fn containerd_2_cri_pulls_by_name_over_plain_http() {
    pulls_by_name_with_what_node_setup_wrote(Layout::Containerd2, false);
}

#[test]
fn containerd_2_cri_pulls_by_name_over_tls() {
    pulls_by_name_with_what_node_setup_wrote(Layout::Containerd2, true);
}
