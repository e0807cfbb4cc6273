//! Network namespaces with their own /etc files, as a node or a pod sees them: `ip netns exec`
//! bind-mounts every file of /etc/netns/NAME/ over the file of that name in /etc, so glibc in
//! the namespace reads the crafted resolv.conf, hosts and nsswitch.conf. Needs root and iproute2.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A network namespace (loopback up), deleted with its /etc/netns directory on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace whose /etc has the given files (name, content) in place of the host's.
    pub fn new(tag: &str, etc_files: &[(&str, &str)]) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("rdns-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "`ip netns add` failed: this test needs root and iproute2 (tests/run.sh runs as root in CI)");
        let this = Self { name };
        let etc = format!("/etc/netns/{}", this.name);
        std::fs::create_dir_all(&etc).unwrap();
        for (file, content) in etc_files {
            std::fs::write(format!("{etc}/{file}"), content).unwrap();
        }
        this.ip(&["link", "set", "lo", "up"]);
        this
    }

    /// `argv` as a command inside the namespace, with its /etc files.
    pub fn exec(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(argv);
        command
    }

    /// `ip ARGS` inside the namespace, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().unwrap();
        assert!(out.status.success(), "ip -n {} {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}
