//! systemd-resolved's effective configuration, as resolved itself reports it over D-Bus
//! (`org.freedesktop.resolve1`, read through `busctl --json=short`, which every systemd ships):
//! the global and per-link DNS servers, the routing and search domains, the fallback servers,
//! each link's default-route and LLMNR settings. Files alone cannot say this: links get their
//! servers from DHCP, networkd or `resolvectl` at run time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use serde_json::Value;

const BUS_NAME: &str = "org.freedesktop.resolve1";
const MANAGER_PATH: &str = "/org/freedesktop/resolve1";
const MANAGER: &str = "org.freedesktop.resolve1.Manager";
const LINK: &str = "org.freedesktop.resolve1.Link";

/// What resolved reports, or why it could not be asked.
pub type Reported = Result<ResolvedState, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedState {
    /// `DNS=` of resolved.conf and its drop-ins, in order.
    pub global_servers: Vec<IpAddr>,
    pub global_domains: Vec<Domain>,
    pub fallback_servers: Vec<IpAddr>,
    /// The global `LLMNR=` (yes, no, resolve).
    pub llmnr: String,
    /// Every link resolved knows, by interface index.
    pub links: BTreeMap<u32, LinkState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub servers: Vec<IpAddr>,
    pub domains: Vec<Domain>,
    /// Whether names no routing domain claims go to this link's servers.
    pub default_route: bool,
    pub llmnr: String,
}

/// A search domain, or a routing-only one (`~domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub route_only: bool,
}

impl Domain {
    /// Whether queries for `name` match this domain (equal, or below it; `.` matches everything).
    pub fn matches(&self, name: &str) -> bool {
        let (name, domain) = (name.trim_end_matches('.').to_ascii_lowercase(), self.name.trim_end_matches('.'));
        let domain = domain.to_ascii_lowercase();
        domain.is_empty() || name == domain || name.ends_with(&format!(".{domain}"))
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", if self.route_only { "~" } else { "" }, self.name)
    }
}

impl ResolvedState {
    /// Asks the running resolved. `Err` when it cannot be asked (not running, no busctl, no bus).
    pub fn read() -> Reported {
        let manager = |property: &str| busctl(&["get-property", BUS_NAME, MANAGER_PATH, MANAGER, property]);
        let fallback_servers = servers(&manager("FallbackDNS")?)?.into_iter().map(|(_, ip)| ip).collect();
        let all_servers = servers(&manager("DNS")?)?;
        let domains = domains(&manager("Domains")?)?;
        let mut state = ResolvedState {
            fallback_servers,
            llmnr: manager("LLMNR")?["data"].as_str().unwrap_or_default().to_string(),
            ..Self::default()
        };
        let names = interface_names();
        for (ifindex, ip) in all_servers {
            match ifindex {
                0 => state.global_servers.push(ip),
                n => state.links.entry(n).or_default().servers.push(ip),
            }
        }
        for (ifindex, domain) in domains {
            match ifindex {
                0 => state.global_domains.push(domain),
                n => state.links.entry(n).or_default().domains.push(domain),
            }
        }
        for (ifindex, name) in &names {
            state.links.entry(*ifindex).or_default().name = name.clone();
        }
        for (ifindex, link) in state.links.iter_mut() {
            let path = busctl(&["call", BUS_NAME, MANAGER_PATH, MANAGER, "GetLink", "i", &ifindex.to_string()])?;
            let Some(path) = path["data"][0].as_str() else { continue };
            let property = |p: &str| busctl(&["get-property", BUS_NAME, path, LINK, p]);
            link.default_route = property("DefaultRoute").ok().and_then(|v| v["data"].as_bool()).unwrap_or(false);
            link.llmnr = property("LLMNR").ok().and_then(|v| v["data"].as_str().map(String::from)).unwrap_or_default();
        }
        Ok(state)
    }

    /// The node's own servers: the global ones and every link's but `except`'s (registry-dns0),
    /// leaving out `promoted` among the global ones (node setup's copy of the fallback servers).
    pub fn own_servers(&self, except: Option<u32>, promoted: &[IpAddr]) -> Vec<IpAddr> {
        let global = self.global_servers.iter().filter(|ip| !promoted.contains(ip));
        let links = self.links.iter().filter(|(i, _)| Some(**i) != except).flat_map(|(_, l)| l.servers.iter());
        global.chain(links).copied().collect()
    }

    /// The link named `name`.
    pub fn link(&self, name: &str) -> Option<(u32, &LinkState)> {
        self.links.iter().find(|(_, l)| l.name == name).map(|(i, l)| (*i, l))
    }
}

fn busctl(args: &[&str]) -> Result<Value, String> {
    let out = Command::new("busctl")
        .arg("--json=short")
        .args(args)
        .output()
        .map_err(|e| format!("busctl: {e} (systemd's busctl is needed to ask systemd-resolved)"))?;
    if !out.status.success() {
        return Err(format!("busctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("busctl {}: {e}", args.join(" ")))
}

/// `a(iiay)`: (ifindex, family, address bytes).
fn servers(value: &Value) -> Result<Vec<(u32, IpAddr)>, String> {
    let entries = value["data"].as_array().ok_or("not an array of servers")?;
    Ok(entries.iter().filter_map(|e| Some((e[0].as_u64()? as u32, address(&e[2])?))).collect())
}

/// `a(isb)`: (ifindex, domain, route-only).
fn domains(value: &Value) -> Result<Vec<(u32, Domain)>, String> {
    let entries = value["data"].as_array().ok_or("not an array of domains")?;
    Ok(entries
        .iter()
        .filter_map(|e| {
            let domain = Domain { name: e[1].as_str()?.to_string(), route_only: e[2].as_bool()? };
            Some((e[0].as_u64()? as u32, domain))
        })
        .collect())
}

fn address(bytes: &Value) -> Option<IpAddr> {
    let bytes: Vec<u8> = bytes.as_array()?.iter().map(|b| b.as_u64().map(|b| b as u8)).collect::<Option<_>>()?;
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// Interface names by index, from sysfs (resolved reports indexes only).
fn interface_names() -> BTreeMap<u32, String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else { return BTreeMap::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let index = std::fs::read_to_string(e.path().join("ifindex")).ok()?.trim().parse().ok()?;
            Some((index, e.file_name().to_string_lossy().into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busctl_json_as_resolved_252_prints_it() {
        let dns: Value = serde_json::from_str(
            r#"{"type":"a(iiay)","data":[[0,2,[10,198,0,1]],[3,2,[169,254,20,25]],[2,10,[253,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1]]]}"#,
        )
        .unwrap();
        assert_eq!(
            servers(&dns).unwrap(),
            vec![
                (0, "10.198.0.1".parse().unwrap()),
                (3, "169.254.20.25".parse().unwrap()),
                (2, "fd00::1".parse().unwrap())
            ]
        );
        let domains_json: Value = serde_json::from_str(
            r#"{"type":"a(isb)","data":[[3,"knative-local-registry",true],[2,"corp.example",false]]}"#,
        )
        .unwrap();
        let parsed = domains(&domains_json).unwrap();
        assert_eq!(parsed[0], (3, Domain { name: "knative-local-registry".into(), route_only: true }));
        assert_eq!(parsed[1].1.to_string(), "corp.example");
    }

    #[test]
    fn a_domain_matches_itself_and_below_in_any_case() {
        let d = Domain { name: "knative-local-registry".into(), route_only: true };
        assert!(
            d.matches("knative-local-registry")
                && d.matches("Knative-Local-Registry.")
                && d.matches("a.knative-local-registry")
        );
        assert!(!d.matches("other") && !d.matches("xknative-local-registry"));
        assert!(Domain { name: ".".into(), route_only: true }.matches("anything"));
    }

    #[test]
    fn own_servers_leave_out_registry_dns0_and_the_promoted_fallback() {
        let mut state = ResolvedState { global_servers: vec!["192.0.2.53".parse().unwrap()], ..Default::default() };
        state.links.insert(
            2,
            LinkState { name: "eth0".into(), servers: vec!["10.0.0.2".parse().unwrap()], ..Default::default() },
        );
        state.links.insert(
            3,
            LinkState {
                name: "registry-dns0".into(),
                servers: vec!["169.254.20.25".parse().unwrap()],
                ..Default::default()
            },
        );
        let promoted: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap()];
        assert_eq!(state.own_servers(Some(3), &promoted), vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(state.link("registry-dns0").map(|(i, _)| i), Some(3));
    }
}
