//! The container's memory limit, read from the process's cgroup, so that a `--cache-size` that
//! cannot fit under it is refused at start with a clear line instead of ending in an OOM kill once
//! the cache has filled (under load, long after the rollout looked fine). A kill of a node's
//! resolver takes the node's DNS with it.
//!
//! cgroup v2 (`memory.max`) and v1 (`memory.limit_in_bytes`) are both read: a limit set on any
//! cgroup between the process's and its hierarchy's mount binds the process, so the lowest one
//! along that path counts.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// What registry-dns needs besides its cache: the runtime, sockets and buffers, the name table,
/// a Kubernetes relist (measured: 8 MiB RSS without a cache, 10.8 MiB with a Service source), with
/// room for the allocator's fragmentation.
pub const RESERVE: u64 = 24 << 20;

/// v1 reports "no limit" as the largest page-aligned i64; anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// A memory limit and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub file: PathBuf,
}

/// This process's memory limit, if its cgroup has one.
pub fn own_limit() -> Option<Limit> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit(&mountinfo, &cgroup, Path::new("/"))
}

/// Refuses a cache that, with [`RESERVE`], does not fit under `limit`.
pub fn check_cache_fits(cache_size: usize, limit: Option<&Limit>) -> anyhow::Result<()> {
    let Some(limit) = limit else { return Ok(()) };
    let cache = cache_size as u64;
    if cache == 0 || cache.saturating_add(RESERVE) <= limit.bytes {
        return Ok(());
    }
    let room = match limit.bytes.saturating_sub(RESERVE) {
        0 => "no room for a cache (--cache-size 0)".to_string(),
        room => format!("at most --cache-size {}", size(room)),
    };
    bail!(
        "--cache-size {} does not fit under this container's memory limit of {} ({}): registry-dns needs about {} \
         besides its cache, so {room}; lower --cache-size or raise the memory limit",
        size(cache),
        size(limit.bytes),
        limit.file.display(),
        size(RESERVE)
    )
}

/// The lowest limit along the process's cgroup path, from the texts of /proc/self/mountinfo and
/// /proc/self/cgroup; `root` prefixes every path read (a test's scratch tree, else `/`).
fn limit(mountinfo: &str, cgroup: &str, root: &Path) -> Option<Limit> {
    // (mount point, the cgroup the mount shows as its root, the cgroup of this process, file)
    let mut candidates = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(mount_root), Some(mount_point), Some(fstype), Some(options)) =
            (fields.get(3), fields.get(4), fields.get(dash + 1), fields.get(dash + 3))
        else {
            continue;
        };
        let path = match *fstype {
            "cgroup2" => own_cgroup(cgroup, |controllers| controllers.is_empty()),
            "cgroup" if options.split(',').any(|o| o == "memory") => {
                own_cgroup(cgroup, |controllers| controllers.split(',').any(|c| c == "memory"))
            }
            _ => None,
        };
        let Some(path) = path else { continue };
        let file = if *fstype == "cgroup2" { "memory.max" } else { "memory.limit_in_bytes" };
        candidates.push((unescape(mount_point), mount_root.to_string(), path, file));
    }
    // A v1 memory hierarchy wins over v2 where both are mounted (hybrid: v2 then has no memory).
    candidates.sort_by_key(|(_, _, _, file)| *file == "memory.max");
    candidates.into_iter().find_map(|(mount_point, mount_root, path, file)| {
        let relative = path.strip_prefix(mount_root.trim_end_matches('/')).unwrap_or(&path).trim_start_matches('/');
        let top = root.join(mount_point.trim_start_matches('/'));
        if !top.join(file).exists() && !top.join(relative).join(file).exists() {
            return None;
        }
        lowest_along(&top, relative, file)
    })
}

/// This process's cgroup path in the hierarchy whose controller list `matches` (`0::/path` for v2).
fn own_cgroup(cgroup: &str, matches: impl Fn(&str) -> bool) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        matches(controllers).then(|| path.to_string())
    })
}

/// The lowest limit in `file` from `top/relative` up to `top`.
fn lowest_along(top: &Path, relative: &str, file: &str) -> Option<Limit> {
    let mut dir = top.join(relative);
    let mut lowest: Option<Limit> = None;
    loop {
        let path = dir.join(file);
        if let Some(bytes) = std::fs::read_to_string(&path).ok().and_then(|t| parse_limit(&t))
            && lowest.as_ref().is_none_or(|l| bytes < l.bytes)
        {
            lowest = Some(Limit { bytes, file: path });
        }
        if dir == top || !dir.pop() || !dir.starts_with(top) {
            return lowest;
        }
    }
}

/// A limit file's value: bytes, or `None` for "max" (v2) and v1's huge "no limit".
fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&bytes| bytes < V1_UNLIMITED)
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match u8::from_str_radix(rest.get(at + 1..at + 4).unwrap_or(""), 8) {
            Ok(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Bytes as the flags take them: GiB, MiB or KiB when exact, else bytes.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree with `files` (path, content) under it, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str, files: &[(&str, &str)]) -> Self {
            let dir = std::env::temp_dir().join(format!("registry-dns-memory-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for (path, content) in files {
                let path = dir.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, content).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const V2_MOUNT: &str = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn v2_in_a_pod_with_a_cgroup_namespace() {
        let tree = Tree::new("v2ns", &[("sys/fs/cgroup/memory.max", "67108864\n")]);
        let found = limit(V2_MOUNT, "0::/\n", &tree.0).unwrap();
        assert_eq!(found.bytes, 64 << 20);
        assert_eq!(found.file, tree.0.join("sys/fs/cgroup/memory.max"));
    }

    #[test]
    fn v2_the_lowest_limit_on_the_path_binds() {
        let tree = Tree::new(
            "v2path",
            &[
                ("sys/fs/cgroup/kubepods/memory.max", "33554432\n"),
                ("sys/fs/cgroup/kubepods/pod1/memory.max", "max\n"),
                ("sys/fs/cgroup/kubepods/pod1/c1/memory.max", "67108864\n"),
            ],
        );
        let found = limit(V2_MOUNT, "0::/kubepods/pod1/c1\n", &tree.0).unwrap();
        assert_eq!(found.bytes, 32 << 20);
        assert!(found.file.ends_with("kubepods/memory.max"), "{found:?}");
        let tree = Tree::new("v2max", &[("sys/fs/cgroup/memory.max", "max\n")]);
        assert_eq!(limit(V2_MOUNT, "0::/\n", &tree.0), None, "max is no limit");
    }

    #[test]
    fn v1_memory_hierarchy_mounted_at_the_containers_cgroup() {
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                         35 31 0:32 /kubepods/pod1/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                         36 31 0:33 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let cgroup = "4:memory:/kubepods/pod1/c1\n0::/\n";
        let tree = Tree::new(
            "v1",
            &[
                ("sys/fs/cgroup/memory/memory.limit_in_bytes", "134217728\n"),
                ("sys/fs/cgroup/unified/memory.max", "1048576\n"),
            ],
        );
        let found = limit(mountinfo, cgroup, &tree.0).unwrap();
        assert_eq!(found.bytes, 128 << 20, "the memory controller's hierarchy, not the empty v2 one");
        let tree = Tree::new("v1none", &[("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(limit(mountinfo, cgroup, &tree.0), None);
    }

    #[test]
    fn a_cache_that_does_not_fit_is_refused_with_the_room_there_is() {
        let limit = Limit { bytes: 64 << 20, file: "/sys/fs/cgroup/memory.max".into() };
        assert!(check_cache_fits(8 << 20, Some(&limit)).is_ok());
        assert!(check_cache_fits(40 << 20, Some(&limit)).is_ok());
        assert!(check_cache_fits(64 << 20, None).is_ok(), "no limit, nothing to check");
        let e = check_cache_fits(64 << 20, Some(&limit)).unwrap_err().to_string();
        assert_eq!(
            e,
            "--cache-size 64MiB does not fit under this container's memory limit of 64MiB (/sys/fs/cgroup/memory.max): \
             registry-dns needs about 24MiB besides its cache, so at most --cache-size 40MiB; lower --cache-size or \
             raise the memory limit"
        );
        let small = Limit { bytes: 16 << 20, file: "/m".into() };
        assert!(check_cache_fits(0, Some(&small)).is_ok(), "no cache always fits");
        assert!(check_cache_fits(512 << 10, Some(&small)).unwrap_err().to_string().contains("no room for a cache"));
    }

    #[test]
    fn sizes_and_escapes() {
        assert_eq!(size(40 << 20), "40MiB");
        assert_eq!(size(3 << 30), "3GiB");
        assert_eq!(size((1 << 20) + 1), "1048577");
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
