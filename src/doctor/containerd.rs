//! What containerd on this node will do when it pulls from the registry, read from its files the
//! way its CRI plugin reads them: `config.toml`'s `config_path` (the hosts directories), then
//! `<dir>/<host:port>/hosts.toml` (the endpoints, their scheme, the CA each trusts). Reading never
//! fails: a missing or unreadable file is itself a finding.
//!
//! containerd 1.x (config `version = 2`) keeps `config_path` in
//! `[plugins."io.containerd.grpc.v1.cri".registry]` and has no hosts directory unless it is set;
//! containerd 2.x (`version = 3`) keeps it in `[plugins."io.containerd.cri.v1.images".registry]`
//! and defaults to `/etc/containerd/certs.d:/etc/docker/certs.d`.

use std::path::{Path, PathBuf};

use super::runtime::{NODE_SETUP, whose};
use super::verdict::Check;

/// The CRI registry section of containerd 1.x's config (version 2).
pub const V2_SECTION: &str = "plugins.\"io.containerd.grpc.v1.cri\".registry";
/// The CRI registry section of containerd 2.x's config (version 3).
pub const V3_SECTION: &str = "plugins.\"io.containerd.cri.v1.images\".registry";
/// The hosts directory node setup writes to, and the one this guide names.
pub const CERTS_D: &str = "/etc/containerd/certs.d";
/// containerd 2.x's default `config_path`.
const V3_DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";

/// Where containerd looks for hosts.toml files, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostsDirs {
    /// `config_path` as set (or defaulted) in `file`.
    Configured { file: PathBuf, version: i64, config_path: String, dirs: Vec<PathBuf> },
    /// Given on the command line (`--hosts-dir`, as `ctr --hosts-dir`).
    Given(PathBuf),
    /// containerd 1.x without `config_path`: no hosts directory is read at all.
    Unset { file: PathBuf, version: i64 },
    /// The config could not be read or parsed.
    Unreadable { file: PathBuf, error: String },
}

impl HostsDirs {
    /// Reads `config` (containerd's config.toml); `given` (`--hosts-dir`) wins over it.
    pub fn read(config: &Path, given: Option<&Path>) -> Self {
        if let Some(dir) = given {
            return HostsDirs::Given(dir.to_path_buf());
        }
        let text = match std::fs::read_to_string(config) {
            Ok(text) => text,
            Err(e) => return HostsDirs::Unreadable { file: config.to_path_buf(), error: e.to_string() },
        };
        Self::parse(config, &text)
    }

    fn parse(file: &Path, text: &str) -> Self {
        let table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(e) => {
                let error = e.to_string().lines().next().unwrap_or("not TOML").to_string();
                return HostsDirs::Unreadable { file: file.to_path_buf(), error };
            }
        };
        // containerd reads a config without `version` as version 1, which 2.x refuses and 1.x
        // migrates; the CRI plugin's registry section is the same as in version 2 there.
        let version = table.get("version").and_then(toml::Value::as_integer).unwrap_or(1);
        let (plugin, default) = match version {
            3.. => ("io.containerd.cri.v1.images", Some(V3_DEFAULT_CONFIG_PATH)),
            _ => ("io.containerd.grpc.v1.cri", None),
        };
        let config_path = table
            .get("plugins")
            .and_then(|p| p.get(plugin))
            .and_then(|p| p.get("registry"))
            .and_then(|r| r.get("config_path"))
            .and_then(toml::Value::as_str)
            .filter(|p| !p.is_empty())
            .or(default);
        match config_path {
            Some(config_path) => HostsDirs::Configured {
                file: file.to_path_buf(),
                version,
                config_path: config_path.to_string(),
                dirs: config_path.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect(),
            },
            None => HostsDirs::Unset { file: file.to_path_buf(), version },
        }
    }

    /// The directories searched, in order.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            HostsDirs::Configured { dirs, .. } => dirs.clone(),
            HostsDirs::Given(dir) => vec![dir.clone()],
            HostsDirs::Unset { .. } | HostsDirs::Unreadable { .. } => Vec::new(),
        }
    }
}

/// The line that turns hosts directories on, for a config of `version`.
pub fn config_path_line(version: i64) -> String {
    let section = if version >= 3 { V3_SECTION } else { V2_SECTION };
    format!("`config_path = \"{CERTS_D}\"` under `[{section}]`")
}

/// Where a pull goes: one endpoint of a hosts.toml (a `[host."URL"]` table, or the `server`
/// fallback); the other runtimes' files give one too (`Endpoint::new`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub scheme: String,
    /// host:port, with the scheme's default port when the URL has none.
    pub authority: String,
    pub host: String,
    pub capabilities: Vec<String>,
    /// The CA files this endpoint trusts in addition to the system's roots (containerd appends
    /// them to the system pool).
    pub ca: Vec<PathBuf>,
    pub skip_verify: bool,
}

impl Endpoint {
    /// `scheme://registry` trusting the system's roots and `ca`, for pulling.
    pub fn new(scheme: &str, registry: &str, ca: Vec<PathBuf>) -> Result<Self, String> {
        let mut endpoint =
            endpoint(&format!("{scheme}://{registry}"), &toml::Value::Table(toml::Table::new()), Path::new("/"))?;
        endpoint.ca = ca;
        Ok(endpoint)
    }
}

/// A hosts.toml as containerd reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsToml {
    pub file: PathBuf,
    /// The `[host]` endpoints in file order, then `server`: the order containerd tries them.
    pub endpoints: Vec<Endpoint>,
}

/// The hosts.toml for `registry` (host:port) in the first of `dirs` that has one: `Ok(None)` when
/// none has, `Err` when it does not parse.
pub fn hosts_toml(dirs: &[PathBuf], registry: &str) -> Result<Option<HostsToml>, String> {
    let Some(file) = dirs.iter().map(|d| d.join(registry).join("hosts.toml")).find(|f| f.exists()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse_hosts_toml(&file, &text).map(Some).map_err(|e| format!("{}: {e}", file.display()))
}

/// The directories searched for hosts.toml: config_path's, else the one node setup writes.
pub fn searched(dirs: &HostsDirs) -> Vec<PathBuf> {
    match dirs.dirs() {
        dirs if dirs.is_empty() => vec![PathBuf::from(CERTS_D)],
        dirs => dirs,
    }
}

/// The endpoint containerd pulls from first: the hosts.toml's first that pulls, else (no
/// hosts.toml) HTTPS to the registry itself with the system's roots.
pub fn pull_endpoint(hosts: &Result<Option<HostsToml>, String>, registry: &str) -> Result<Endpoint, String> {
    let pulls = |e: &&Endpoint| e.capabilities.iter().any(|c| c == "pull");
    match hosts {
        Ok(Some(h)) if !h.endpoints.is_empty() => Ok(h.endpoints.iter().find(pulls).unwrap_or(&h.endpoints[0]).clone()),
        _ => Endpoint::new("https", registry, Vec::new()),
    }
}

/// The checks of containerd's files: config.toml's config_path, then the registry's hosts.toml.
pub fn checks(
    dirs: &HostsDirs,
    hosts: &Result<Option<HostsToml>, String>,
    registry: &str,
    endpoint: &Endpoint,
) -> Vec<Check> {
    let mut checks = vec![containerd_config(dirs)];
    checks.extend(hosts_toml_checks(dirs, hosts, registry, endpoint));
    checks
}

fn parse_hosts_toml(file: &Path, text: &str) -> Result<HostsToml, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    let mut endpoints = Vec::new();
    if let Some(hosts) = table.get("host").and_then(toml::Value::as_table) {
        for (url, settings) in hosts {
            endpoints.push(endpoint(url, settings, dir)?);
        }
    }
    if let Some(server) = table.get("server").and_then(toml::Value::as_str) {
        endpoints.push(endpoint(server, &toml::Value::Table(table.clone()), dir)?);
    }
    Ok(HostsToml { file: file.to_path_buf(), endpoints })
}

fn endpoint(url: &str, settings: &toml::Value, dir: &Path) -> Result<Endpoint, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("'{url}' has no scheme (http:// or https://)"))?;
    let host_port = rest.split('/').next().unwrap_or_default();
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => return Err(format!("'{url}': scheme {other} is neither http nor https")),
    };
    let (host, authority) = match host_port.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => (host.to_string(), host_port.to_string()),
        _ => (host_port.to_string(), format!("{host_port}:{default_port}")),
    };
    let capabilities = match settings.get("capabilities").and_then(toml::Value::as_array) {
        Some(list) => list.iter().filter_map(toml::Value::as_str).map(String::from).collect(),
        None => vec!["pull".into(), "resolve".into(), "push".into()],
    };
    // `ca` is a path or a list of paths, relative ones to the hosts.toml's directory.
    let ca = match settings.get("ca") {
        Some(toml::Value::String(path)) => vec![dir.join(path)],
        Some(toml::Value::Array(paths)) => paths.iter().filter_map(toml::Value::as_str).map(|p| dir.join(p)).collect(),
        _ => Vec::new(),
    };
    let skip_verify = settings.get("skip_verify").and_then(toml::Value::as_bool).unwrap_or(false);
    Ok(Endpoint { url: url.to_string(), scheme: scheme.to_string(), authority, host, capabilities, ca, skip_verify })
}

fn containerd_config(dirs: &HostsDirs) -> Check {
    match dirs {
        HostsDirs::Configured { file, version, config_path, .. } => Check::ok(format!(
            "{} (version {version}): the CRI plugin reads hosts.toml files from {config_path}",
            file.display()
        )),
        HostsDirs::Given(dir) => Check::ok(format!("hosts directory {} (--hosts-dir)", dir.display())),
        HostsDirs::Unset { file, version } => Check::problem(
            format!(
                "{} (version {version}) sets no config_path: containerd's CRI plugin (what the kubelet pulls through) \
                 reads no hosts.toml at all",
                file.display()
            ),
            format!(
                "add {} to {}, then restart containerd (systemctl restart containerd); node setup prints this line \
                 and leaves config.toml to you",
                config_path_line(*version),
                file.display()
            ),
        ),
        HostsDirs::Unreadable { file, error } => Check::warn(
            format!("cannot read containerd's config {} ({error}): looking in {CERTS_D}", file.display()),
            Some(
                "pass --containerd-config with the file containerd runs with (k3s: \
                  /var/lib/rancher/k3s/agent/etc/containerd/config.toml)"
                    .into(),
            ),
        ),
    }
}

fn hosts_toml_checks(
    dirs: &HostsDirs,
    hosts: &Result<Option<HostsToml>, String>,
    registry: &str,
    endpoint: &Endpoint,
) -> Vec<Check> {
    let hosts = match hosts {
        Ok(Some(hosts)) => hosts,
        Ok(None) => {
            let dirs: Vec<String> = searched(dirs).iter().map(|d| d.join(registry).display().to_string()).collect();
            return vec![Check::problem(
                format!(
                    "no hosts.toml for {registry} ({}): containerd pulls it over HTTPS trusting the system's roots only",
                    dirs.join(", ")
                ),
                NODE_SETUP.to_string(),
            )];
        }
        Err(e) => return vec![Check::problem(e.clone(), format!("fix or delete the file; {NODE_SETUP}"))],
    };
    let ca = match endpoint.ca.as_slice() {
        [] => String::new(),
        files => format!(", ca {}", files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")),
    };
    let mut checks = vec![Check::ok(format!(
        "{}: {registry} is pulled from {}{ca}{}",
        hosts.file.display(),
        endpoint.url,
        whose(&hosts.file)
    ))];
    if !endpoint.capabilities.iter().any(|c| c == "pull") || !endpoint.capabilities.iter().any(|c| c == "resolve") {
        checks.push(Check::problem(
            format!(
                "{} lacks the pull and resolve capabilities (capabilities = {:?})",
                endpoint.url, endpoint.capabilities
            ),
            format!("set capabilities = [\"pull\", \"resolve\", \"push\"] in {}", hosts.file.display()),
        ));
    }
    if endpoint.skip_verify {
        checks.push(Check::warn(
            format!("{} sets skip_verify: containerd accepts any certificate there", endpoint.url),
            Some(format!("set `ca` to the registry's CA instead ({})", super::registry_verdict::GET_CA)),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_of_containerd_1_and_2() {
        let file = Path::new("/etc/containerd/config.toml");
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
        assert_eq!(HostsDirs::parse(file, v2).dirs(), vec![PathBuf::from(CERTS_D)]);
        let v2_unset = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n";
        assert_eq!(HostsDirs::parse(file, v2_unset), HostsDirs::Unset { file: file.into(), version: 2 });
        assert!(matches!(HostsDirs::parse(file, "version = 2\n"), HostsDirs::Unset { version: 2, .. }));
        let v3 = "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/a:/b'\n";
        assert_eq!(HostsDirs::parse(file, v3).dirs(), vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        let v3_default = HostsDirs::parse(file, "version = 3\n");
        assert_eq!(v3_default.dirs(), vec![PathBuf::from(CERTS_D), PathBuf::from("/etc/docker/certs.d")]);
        assert!(matches!(HostsDirs::parse(file, "version = [\n"), HostsDirs::Unreadable { .. }));
        assert_eq!(
            config_path_line(2),
            "`config_path = \"/etc/containerd/certs.d\"` under `[plugins.\"io.containerd.grpc.v1.cri\".registry]`"
        );
    }

    #[test]
    fn hosts_toml_endpoints_in_containerds_order() {
        let file = Path::new("/etc/containerd/certs.d/knative-local-registry:5000/hosts.toml");
        let text = "server = \"https://knative-local-registry:5000\"\n\
                    [host.\"https://knative-local-registry:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.crt\"\n";
        let parsed = parse_hosts_toml(file, text).unwrap();
        assert_eq!(parsed.endpoints.len(), 2);
        let first = &parsed.endpoints[0];
        assert_eq!((first.scheme.as_str(), first.authority.as_str()), ("https", "knative-local-registry:5000"));
        assert_eq!(first.ca, vec![PathBuf::from("/etc/containerd/certs.d/knative-local-registry:5000/ca.crt")]);
        assert_eq!(first.capabilities, ["pull", "resolve"]);
        let plain = parse_hosts_toml(file, "server = \"http://registry.example\"\n").unwrap();
        assert_eq!(plain.endpoints[0].authority, "registry.example:80");
        assert!(
            parse_hosts_toml(file, "server = \"knative-local-registry:5000\"\n").unwrap_err().contains("no scheme")
        );
    }
}
