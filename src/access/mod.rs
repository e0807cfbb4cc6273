//! Who may query us (`--allow-from`). A per-node resolver on `hostNetwork` may be reachable from
//! outside the cluster; by default only private and local sources are served, so registry-dns is
//! never an open resolver. Everyone else gets REFUSED.

use std::net::IpAddr;

use ipnet::IpNet;

/// Loopback, RFC 1918, link-local, shared address space (RFC 6598, used by some CNIs), IPv6 ULA
/// and link-local.
pub const DEFAULT_ALLOWED: [&str; 10] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "::ffff:127.0.0.0/104",
];

/// The networks allowed to query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

impl Default for AllowList {
    fn default() -> Self {
        Self(DEFAULT_ALLOWED.iter().map(|n| n.parse().expect("valid default network")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_serves_private_and_local_sources_only() {
        let acl = AllowList::default();
        for ip in [
            "127.0.0.1",
            "10.244.1.5",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.20.25",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(acl.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!acl.allows(ip.parse().unwrap()), "{ip}");
        }
    }
}
