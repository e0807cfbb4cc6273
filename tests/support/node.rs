//! A real node for the tests: Debian booted with systemd as PID 1 by `tests/cluster/node.sh`, in
//! namespaces of its own, with systemd-resolved, systemd-networkd and containerd as units; joined
//! to a [`ControlPlane`] listening on the node network, it runs kube-proxy and the kubelet too.
//! This side adds access to the node's files, commands and journal.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::control_plane::ControlPlane;
use super::netns::Netns;
use super::{TempDir, wait_until};

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/node.sh");
/// The host's address on the node network (node.sh): the nodes' only router.
pub const HOST_IP: &str = "10.198.0.1";
/// A name only the nodes' own DNS server ([`HostDns`]) knows, and its address.
pub const ORDINARY: &str = "ordinary.test";
pub const ORDINARY_IP: &str = "192.0.2.10";

/// A running node; powered off (its network namespace, routes and cgroups removed) on drop.
pub struct Node {
    pub name: String,
    /// Its place on the node network: address 10.198.0.(index+1), pods in 10.244.index.0/24.
    pub index: u8,
    /// The node's network namespace (`node.sh stop` deletes it).
    pub netns: ManuallyDrop<Netns>,
    /// The script's directory: the node's overlay (upper layer and merged root), logs.
    pub dir: TempDir,
}

impl Node {
    /// Boots node `index`, with each `(host path, node path)` of `binds` mounted read-only on it.
    pub fn boot(index: u8, binds: &[(&Path, &str)]) -> Self {
        Self::start(index, binds, &[], None)
    }

    /// Boots node `index` joined to `cp` (started with [`ControlPlane::launch_on_node_network`]),
    /// with the images in `images` (OCI archives) imported, [`HostDns`] as the node's own DNS
    /// server from its first boot (as DHCP gives it), and kube-proxy and the kubelet started; each
    /// `(host path, node path)` of `binds` mounted read-only, of `shared` read-write.
    pub fn join(
        cp: &ControlPlane,
        index: u8,
        images: &Path,
        binds: &[(&Path, &str)],
        shared: &[(&Path, &str)],
    ) -> Self {
        Self::start(index, binds, shared, Some((cp, images)))
    }

    /// Makes the node network (its bridge and the host's [`HOST_IP`]) before any node boots.
    pub fn network() {
        let status = Command::new("bash").args([SCRIPT, "network"]).status().unwrap();
        assert!(status.success(), "node.sh network failed");
    }

    fn start(
        index: u8,
        binds: &[(&Path, &str)],
        shared: &[(&Path, &str)],
        cluster: Option<(&ControlPlane, &Path)>,
    ) -> Self {
        let dir = TempDir::new("node");
        let name = format!("node-{index}");
        let netns = format!("rdns-node-{index}-{}", std::process::id());
        let list = |binds: &[(&Path, &str)]| {
            binds.iter().map(|(host, node)| format!("{}:{node}", host.display())).collect::<Vec<_>>().join(" ")
        };
        let mut command = Command::new("bash");
        command.args([SCRIPT, "start"]).arg(&dir.0);
        if let Some((cp, images)) = cluster {
            command.arg(&cp.dir.0).arg(images).env("NODE_DNS", HOST_IP);
        }
        let status = command
            .env("NODE_INDEX", index.to_string())
            .env("NODE_NAME", &name)
            .env("NETNS", &netns)
            .env("NODE_BIND_RO", list(binds))
            .env("NODE_BIND", list(shared))
            .status()
            .unwrap();
        let node = Self { name, index, netns: ManuallyDrop::new(Netns { name: netns }), dir };
        assert!(status.success(), "node.sh start failed (its output is above)");
        node
    }

    /// The node's address on the node network.
    pub fn ip(&self) -> String {
        format!("10.198.0.{}", self.index + 1)
    }

    /// `argv` on the node: all its namespaces (its files, network, processes).
    pub fn exec(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command.args([SCRIPT, "exec"]).arg(&self.dir.0).args(argv);
        command
    }

    /// `script` run by the node's `sh`; its output, whether or not it succeeded.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script]).output().unwrap()
    }

    /// `script` run by the node's `sh`, which must succeed; its stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "on {}: {script}\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file of the node's /etc as the node sees it, or the error.
    pub fn etc(&self, file: &str) -> Result<String, String> {
        let out = self.exec(&["cat", &format!("/etc/{file}")]).output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// The node's `path` (absolute, as the node sees it) seen from the host, while it runs.
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.path("root").join(path.trim_start_matches('/'))
    }

    /// What `kubectl logs` would print for `container` of `namespace/pod`, read where the kubelet
    /// reads it: the CRI log file containerd wrote under the node's /var/log/pods (lines of
    /// `TIME STREAM F|P TEXT`, P for a part of a longer line). Read here rather than through the
    /// API server, whose way to the kubelet is the test's own wiring.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Result<String, String> {
        let pods = self.path("/var/log/pods");
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

    /// The last `lines` lines of a unit's journal on the node (`kubelet`, `containerd`,
    /// `systemd-resolved`...).
    pub fn journal(&self, unit: &str, lines: usize) -> String {
        let out = self
            .exec(&["journalctl", "--no-pager", "-o", "short-precise", "-n", &lines.to_string(), "-u", unit])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Gives the node [`HostDns`] as its own DNS server on host0, as DHCP or netplan give a node
    /// its server (networkd, per link).
    pub fn use_host_dns(&self) {
        self.sh_ok(&format!(
            "printf 'DNS={HOST_IP}\\n' >> /etc/systemd/network/10-host0.network && networkctl reload && \
             networkctl reconfigure host0"
        ));
        self.wait_for_ordinary();
    }

    /// Waits until the node resolves [`ORDINARY`] through its own DNS server.
    pub fn wait_for_ordinary(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            self.sh("getent ahosts ordinary.test").stdout.starts_with(ORDINARY_IP.as_bytes())
        });
        assert!(ok, "{}: {ORDINARY} does not resolve through the node's own upstream", self.name);
    }

    /// What node setup's removal must leave as it was: resolved's files and state, the
    /// resolv.conf files, and the node's answer for [`ORDINARY`]. The lookup comes first: it makes
    /// resolved pick its current server, which `resolvectl status` shows. Left out: interface
    /// indexes (the kernel numbers links in the order they appear, which a reboot changes), and the
    /// pods' links (cni0, veth*), which come and go with pods.
    pub fn resolver_snapshot(&self) -> String {
        self.sh_ok(&format!(
            "answer=$(getent ahosts {ORDINARY}); echo '# resolvectl status'; resolvectl status | \
             awk -v RS= -v ORS='\\n\\n' '!/^Link [0-9]+ [(](cni0|veth[^)]*)[)]/' | sed 's/^Link [0-9]* /Link /'; \
             echo '# resolv.conf'; cat /run/systemd/resolve/resolv.conf; readlink /etc/resolv.conf; cat /etc/resolv.conf; \
             echo '# resolved.conf'; cat /etc/systemd/resolved.conf; \
             for f in $(find /etc/systemd/resolved.conf.d /run/systemd/resolved.conf.d -type f 2>/dev/null | sort); do \
             echo \"# $f\"; cat \"$f\"; done; echo '# lookups'; echo \"$answer\""
        ))
    }

    /// Powers the node off and boots it again: its /etc and /var as they were, /run fresh.
    pub fn reboot(&self) {
        let status = Command::new("bash").args([SCRIPT, "reboot"]).arg(&self.dir.0).status().unwrap();
        assert!(status.success(), "node.sh reboot failed (its output is above)");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("bash").args([SCRIPT, "stop"]).arg(&self.dir.0).status();
    }
}

/// dnsmasq on the host's end of the node network, 10.198.0.1:53: the nodes' own DNS server, as a
/// node's DHCP server or its site's resolver would be. It knows [`ORDINARY`] and says NXDOMAIN for
/// every other name, as a recursive resolver says of a TLD-less one. Start it after a node: the
/// first node makes the node network.
pub struct HostDns(Child);

impl HostDns {
    pub fn start(dir: &TempDir) -> Self {
        let child = Command::new("dnsmasq")
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .arg(format!("--listen-address={HOST_IP}"))
            .arg(format!("--pid-file={}", dir.path("host-dns.pid").display()))
            .arg(format!("--address=/{ORDINARY}/{ORDINARY_IP}"))
            .arg("--address=/#/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (tests/run.sh installs dnsmasq-base)");
        let up = wait_until(Duration::from_secs(10), || {
            super::dig(format!("{HOST_IP}:53").parse().unwrap(), &[ORDINARY]).rdata("A") == [ORDINARY_IP]
        });
        assert!(up, "dnsmasq did not answer on {HOST_IP}");
        Self(child)
    }
}

impl Drop for HostDns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
