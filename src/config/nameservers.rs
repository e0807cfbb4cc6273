//! The nameservers of a resolv.conf: where queries go when no `--upstream` is given.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;

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
    fn reads_nameservers_from_resolv_conf() {
        let dir = std::env::temp_dir().join(format!("registry-dns-resolv-{}", std::process::id()));
        std::fs::write(&dir, "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n")
            .unwrap();
        let ups = from_resolv_conf(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(ups, vec!["10.96.0.10:53".parse().unwrap(), "[fd00::a]:53".parse().unwrap()]);
    }
}
