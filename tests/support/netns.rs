//! Network namespaces for tests that need their own addresses, port 53 or resolver files: each
//! has its own loopback and, through `ip netns exec`, its own /etc/resolv.conf and /etc/hosts
//! (bind-mounted from /etc/netns/NAME/). Needs root (CI runs as root).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Dig, parse_dig, wait_until};

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with `lo` up and the given resolv.conf; deleted on drop.
    pub fn new(role: &str, resolv_conf: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("rdns-{role}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "`ip netns add` failed: this test needs root and iproute2 (tests/run.sh runs as root in CI)");
        let this = Self { name };
        std::fs::create_dir_all(this.etc()).unwrap();
        this.write_etc("resolv.conf", resolv_conf);
        this.write_etc("hosts", "127.0.0.1 localhost\n");
        this.ip(&["link", "set", "lo", "up"]);
        this
    }

    /// The directory whose files `ip netns exec` mounts over /etc.
    pub fn etc(&self) -> String {
        format!("/etc/netns/{}", self.name)
    }

    pub fn write_etc(&self, file: &str, content: &str) {
        std::fs::write(format!("{}/{file}", self.etc()), content).unwrap();
    }

    /// `argv` as a command inside the namespace.
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

    /// Runs `f` on a thread that has joined this namespace: sockets it makes, and processes it
    /// starts, live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("namespace file");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns changes the network namespace of this thread only.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `getent ahosts NAME` in the namespace (glibc's resolver with the namespace's resolv.conf):
    /// the IPv4 addresses found, sorted, or the failure.
    pub fn getent(&self, name: &str) -> Result<Vec<String>, String> {
        let out = self.exec(&["getent", "ahosts", name]).output().unwrap();
        if !out.status.success() {
            return Err(format!("getent exit {:?}", out.status.code()));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut v4: Vec<String> = text
            .lines()
            .filter(|l| l.contains("STREAM"))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            .map(String::from)
            .collect();
        v4.sort();
        Ok(v4)
    }

    /// `dig @server args...` from inside the namespace (one try, short timeout).
    pub fn dig(&self, server: &str, args: &[&str]) -> Dig {
        let at = format!("@{server}");
        let mut argv = vec!["dig", &at, "+time=2", "+tries=1"];
        argv.extend_from_slice(args);
        let output = self.exec(&argv).output().expect("running dig (tests/run.sh installs it)");
        parse_dig(&String::from_utf8_lossy(&output.stdout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// A dnsmasq upstream in a namespace, stopped on drop.
pub struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Netns {
    /// dnsmasq on `address`:53 in this namespace, authoritative for `test.` as a real upstream
    /// would be: `www.test` A is `answer`, its other types NODATA, other names NXDOMAIN. (With
    /// `--address` instead, dnsmasq answers REFUSED, or NXDOMAIN under `--local`, for `www.test`
    /// AAAA, and musl, which asks A and AAAA at once, fails the lookup.)
    pub fn dnsmasq(&self, address: &str, answer: &str) -> Dnsmasq {
        let binary = if std::path::Path::new("/usr/sbin/dnsmasq").exists() { "/usr/sbin/dnsmasq" } else { "dnsmasq" };
        let child = self
            .exec(&[
                binary,
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={address}"),
                "--port=53",
                &format!("--host-record=www.test,{answer}"),
                "--local=/test/",
                "--pid-file=",
                "--user=root",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (tests/run.sh installs it)");
        let dnsmasq = Dnsmasq(child);
        let up = wait_until(Duration::from_secs(5), || self.dig(address, &["www.test", "A"]).rdata("A") == [answer]);
        assert!(up, "dnsmasq on {address} did not start");
        dnsmasq
    }
}
