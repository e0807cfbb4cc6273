//! `--cache-size` against the container's memory limit, in a real cgroup: the test makes a child
//! cgroup with a 64 MiB limit (what deploy/base gives the pod) and starts the binary in it. A cache
//! that cannot fit beside what registry-dns needs besides it (the README once showed a 64MiB cache
//! under a 64Mi limit: an OOM kill once the cache fills) is refused at start with one line; the
//! default cache starts. Needs root (CI runs as root); cgroup v1 (this machine's memory
//! controller) or v2.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{RegistryDns, run_to_exit_with};

const LIMIT: u64 = 64 << 20;

/// A child cgroup with a memory limit; removed on drop (after its processes exited).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Under this process's own memory cgroup (v1), or at the v2 root, where the memory
    /// controller is delegated to children.
    fn new(limit: u64) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v1 = own.lines().find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_string()));
        let (dir, file) = match v1 {
            Some(path) if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() => (
                PathBuf::from(format!("/sys/fs/cgroup/memory{path}")).join(format!("rdns-test-{}", std::process::id())),
                "memory.limit_in_bytes",
            ),
            _ => (PathBuf::from(format!("/sys/fs/cgroup/rdns-test-{}", std::process::id())), "memory.max"),
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e} (this test needs root)", dir.display()));
        std::fs::write(dir.join(file), limit.to_string()).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()));
        Self { dir }
    }

    /// A command that joins this cgroup, then runs registry-dns.
    fn command(&self) -> Command {
        let mut command = Command::new("sh");
        let procs = self.dir.join("cgroup.procs");
        command.args(["-c", "echo $$ > \"$0\" && exec \"$@\"", procs.to_str().unwrap(), RegistryDns::BIN]);
        command
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_cache_larger_than_the_memory_limit_allows_is_refused_at_start_and_the_default_starts() {
    let cgroup = Cgroup::new(LIMIT);
    let base = ["--record", "knative-local-registry=10.0.0.10", "--upstream", "127.0.0.1:9", "--listen", "127.0.0.1:0"];

    let mut args = base.to_vec();
    args.extend(["--ops-listen", "off", "--cache-size", "64MiB"]);
    let (code, stderr) = run_to_exit_with(cgroup.command(), &args);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "registry-dns: --cache-size 64MiB does not fit under this container's memory limit of 64MiB ("
        ) && stderr.contains("so at most --cache-size 40MiB; lower --cache-size or raise the memory limit"),
        "{stderr}"
    );

    // The default (8MiB) fits, and so does the most the message offers.
    for cache in ["8MiB", "40MiB"] {
        let mut args = base.to_vec();
        args.extend(["--cache-size", cache]);
        let server = RegistryDns::start_with(cgroup.command(), &args);
        assert!(server.logs().iter().any(|l| l.contains("registry-dns serving")), "{:?}", server.logs());
    }
}
