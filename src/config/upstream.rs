//! Upstream addresses: `--upstream ADDR[:PORT]`, or the nameservers of a resolv.conf.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;

/// Parses `ADDR[:PORT]`: `10.0.0.2`, `10.0.0.2:5353`, `fd00::2` or `[fd00::2]:5353`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)).map_err(|_| format!("'{text}' is not ADDR[:PORT]"))
}

/// The nameservers of a resolv.conf, on port 53 (resolv.conf has no port syntax).
pub fn from_resolv_conf(path: &Path) -> anyhow::Result<Vec<SocketAddr>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let conf = resolv_conf::Config::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    Ok(conf.nameservers.into_iter().map(|ip| SocketAddr::new(IpAddr::from(ip), 53)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_with_and_without_ports() {
        assert_eq!(parse_upstream("10.0.0.2").unwrap(), "10.0.0.2:53".parse().unwrap());
        assert_eq!(parse_upstream("10.0.0.2:5300").unwrap(), "10.0.0.2:5300".parse().unwrap());
        assert_eq!(parse_upstream("fd00::2").unwrap(), "[fd00::2]:53".parse().unwrap());
        assert_eq!(parse_upstream("[fd00::2]:5300").unwrap(), "[fd00::2]:5300".parse().unwrap());
        assert!(parse_upstream("dns.example").is_err());
    }

    #[test]
    fn reads_nameservers_from_resolv_conf() {
        let dir = std::env::temp_dir().join(format!("registry-dns-resolv-{}", std::process::id()));
        std::fs::write(&dir, "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n")
            .unwrap();
        let ups = from_resolv_conf(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(ups, vec!["10.96.0.10:53".parse().unwrap(), "[fd00::a]:53".parse().unwrap()]);
    }
}
