//! A real node for the tests: kubelet, containerd (CRI) and the CNI plugins started by
//! `tests/cluster/node.sh` in namespaces of their own, joined to a [`ControlPlane`]. This side adds
//! what the script cannot: the relay for the `kubernetes` Service (there is no kube-proxy) and
//! access to the node's files and commands.

use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempDir;
use super::control_plane::ControlPlane;
use super::netns::Netns;
use super::relay::relay;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/node.sh");
/// The `kubernetes` Service's address, which the node's kubelet and pods use for the API server.
const KUBERNETES_SERVICE: &str = "10.96.0.1";

/// A running node; stopped (every process on it, its network namespace and cgroups) on drop.
pub struct Node {
    pub name: String,
    /// The node's network namespace (`node.sh stop` deletes it).
    pub netns: ManuallyDrop<Netns>,
    /// The script's directory: the upper layer of the node's /etc, its /var/lib, /var/log, logs.
    pub dir: TempDir,
}

impl Node {
    /// Starts `name` with the images in `images` (OCI archives) imported, joined to `cp`.
    pub fn start(cp: &ControlPlane, name: &str, images: &Path) -> Self {
        let dir = TempDir::new("node");
        let netns = format!("rdns-node-{}", std::process::id());
        let status = Command::new("bash")
            .args([SCRIPT, "start"])
            .arg(&dir.0)
            .arg(&cp.dir.0)
            .arg(images)
            .env("NODE_NAME", name)
            .env("NETNS", &netns)
            .status()
            .unwrap();
        let node = Self { name: name.into(), netns: ManuallyDrop::new(Netns { name: netns }), dir };
        assert!(status.success(), "node.sh start failed (its output is above)");
        let listener = node.netns.run(|| TcpListener::bind((KUBERNETES_SERVICE, 443)).unwrap());
        relay(listener, SocketAddr::from(([127, 0, 0, 1], cp.port)));
        node
    }

    /// `argv` on the node: its mounts (its /etc), network, PID and UTS namespaces.
    pub fn exec(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command.args([SCRIPT, "exec"]).arg(&self.dir.0).args(argv);
        command
    }

    /// A file of the node's /etc as the node sees it, or the error.
    pub fn etc(&self, file: &str) -> Result<String, String> {
        let out = self.exec(&["cat", &format!("/etc/{file}")]).output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// Where the node's /etc/`path` is written: the upper layer of its overlay.
    pub fn etc_path(&self, path: &str) -> PathBuf {
        self.dir.path("etc").join(path)
    }

    /// What `kubectl logs` would print for `container` of `namespace/pod`, read where the kubelet
    /// reads it: the CRI log file containerd wrote under the node's /var/log/pods (lines of
    /// `TIME STREAM F|P TEXT`, P for a part of a longer line). Read here rather than through the
    /// API server, whose way to the kubelet (host -> veth -> port 10250) is the test's own wiring.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Result<String, String> {
        let pods = self.dir.path("var/log/pods");
        let prefix = format!("{namespace}_{pod}_");
        let entries = std::fs::read_dir(&pods).map_err(|e| format!("{}: {e}", pods.display()))?;
        let dir = entries
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .ok_or_else(|| format!("no {prefix}* in {}", pods.display()))?;
        let file = dir.path().join(container).join("0.log");
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut log = String::new();
        for line in text.lines() {
            let mut fields = line.splitn(4, ' ');
            let (_time, _stream, tag) = (fields.next(), fields.next(), fields.next());
            log.push_str(fields.next().unwrap_or(""));
            if tag != Some("P") {
                log.push('\n');
            }
        }
        Ok(log)
    }

    /// The last `lines` lines of one of the node's logs (`kubelet`, `containerd`, `node`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path(&format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("bash").args([SCRIPT, "stop"]).arg(&self.dir.0).status();
    }
}
