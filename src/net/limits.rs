//! The open-file limit: every upstream query's socket is short-lived (`forward::udp::sockets`), so
//! while upstreams stall, up to `--max-concurrent` sockets can be open besides the listeners and
//! TCP connections. The soft limit (1024 on many hosts) is raised to the hard one at start, as
//! Go programs such as CoreDNS get from their runtime.

use std::io;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in effect.
pub fn raise_open_files() -> io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit the call writes into; nothing else refers to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a valid rlimit the call only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let limit = super::raise_open_files().unwrap();
        let hard = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = hard.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[3], fields[4], "soft = hard: {line}");
        assert_eq!(fields[3], if limit == libc::RLIM_INFINITY { "unlimited".to_string() } else { limit.to_string() });
    }
}
