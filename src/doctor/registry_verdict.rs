//! `registry-dns doctor --registry`: turns what containerd's files say and what the registry
//! answered into the report, one line per step of a pull, each problem with its fix, and a
//! verdict: exit 0 when containerd on this node can reach the registry's API as its hosts.toml
//! tells it to, 1 when not. Pure: no I/O here.

use std::fmt;
use std::path::PathBuf;

use super::containerd::{CERTS_D, HostsDirs, HostsToml, config_path_line};
use super::registry_probe::{Api, Connected, Probe, Untrusted};
use super::verdict::{Check, Severity, write_report};

/// How node setup and this guide are named in fixes.
const NODE_SETUP: &str = "run node setup (kubectl apply -k deploy/node, or the chart's nodeSetup.enabled=true), \
                          which writes it on every node; by hand: docs/node-setup.md";
/// How the registry's CA comes out of the cluster (deploy/registry/tls).
const GET_CA: &str = "kubectl -n registry get secret registry-ca -o jsonpath='{.data.ca\\.crt}' | base64 -d";

/// What was read and asked, the input of [`judge`].
#[derive(Debug, Clone)]
pub struct PullFindings {
    /// host:port, as in image references.
    pub registry: String,
    pub dirs: HostsDirs,
    /// The hosts.toml for the registry, if any (or why it does not parse).
    pub hosts: Result<Option<HostsToml>, String>,
    /// The endpoint containerd tries first: the hosts.toml's, else `https://registry`.
    pub probe: Probe,
}

#[derive(Debug, Clone)]
pub struct PullReport {
    pub title: String,
    pub checks: Vec<Check>,
    pub verdict: String,
}

impl PullReport {
    /// 0 when nothing stands in the pull's way, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self.checks.iter().any(|c| c.severity == Severity::Problem) {
            true => 1,
            false => 0,
        }
    }
}

impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_report(f, &self.title, &self.checks, &self.verdict)
    }
}

pub fn judge(f: &PullFindings) -> PullReport {
    let mut checks = vec![containerd_config(f)];
    checks.extend(hosts_toml(f));
    checks.extend(reach(f));
    let first_problem = checks.iter().find(|c| c.severity == Severity::Problem);
    let endpoint = &f.probe.endpoint;
    let verdict = match first_problem {
        None => format!(
            "ok: containerd on this node reaches {}'s registry API at {} as its hosts.toml says",
            f.registry, endpoint.url
        ),
        Some(problem) => {
            let count = checks.iter().filter(|c| c.severity == Severity::Problem).count();
            let advice =
                if count == 1 { "apply the fix above".to_string() } else { format!("apply the {count} fixes above") };
            format!("PROBLEM: containerd on this node cannot pull from {}: {}; {advice}", f.registry, problem.text)
        }
    };
    let title = format!("registry-dns doctor --registry: {} as containerd on this node pulls it", f.registry);
    PullReport { title, checks, verdict }
}

fn containerd_config(f: &PullFindings) -> Check {
    match &f.dirs {
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

fn searched(f: &PullFindings) -> Vec<PathBuf> {
    match f.dirs.dirs() {
        dirs if dirs.is_empty() => vec![PathBuf::from(CERTS_D)],
        dirs => dirs,
    }
}

fn hosts_toml(f: &PullFindings) -> Vec<Check> {
    let registry = &f.registry;
    let hosts = match &f.hosts {
        Ok(Some(hosts)) => hosts,
        Ok(None) => {
            let dirs: Vec<String> = searched(f).iter().map(|d| d.join(registry).display().to_string()).collect();
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
    let endpoint = &f.probe.endpoint;
    let ca = match endpoint.ca.as_slice() {
        [] => String::new(),
        files => format!(", ca {}", files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")),
    };
    let mut checks =
        vec![Check::ok(format!("{}: {registry} is pulled from {}{ca}", hosts.file.display(), endpoint.url))];
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
            Some(format!("set `ca` to the registry's CA instead ({GET_CA})")),
        ));
    }
    checks
}

/// Resolution, connection and the registry API, as far as they got.
fn reach(f: &PullFindings) -> Vec<Check> {
    let p = &f.probe;
    let (host, authority) = (&p.endpoint.host, &p.endpoint.authority);
    let mut checks = Vec::new();
    match &p.resolved {
        Ok(addresses) => checks.push(Check::ok(format!("getaddrinfo({host}): {}", join(addresses)))),
        Err(e) => {
            checks.push(Check::problem(
                format!("getaddrinfo({host}) failed: {e}: containerd cannot resolve it either"),
                format!("run `registry-dns doctor --name {host}` on this node: it names the resolver's problem"),
            ));
            return checks;
        }
    }
    match &p.connected {
        Some(Connected::To(addr)) => checks.push(Check::ok(format!("TCP connection to {addr}"))),
        Some(Connected::Refused(addresses)) => {
            checks.push(Check::problem(
                format!(
                    "nothing listens on {authority} ({}: connection refused): the registry is down",
                    join(addresses)
                ),
                "start the registry, or find why it is not ready: kubectl -n registry get pods,endpointslices \
                 (registry-dns answers with ready endpoints only)"
                    .to_string(),
            ));
            return checks;
        }
        Some(Connected::Failed(e)) => {
            checks.push(Check::problem(
                format!("no TCP connection to {authority}: {e}"),
                "check the route and any firewall between this node and the registry's pod".to_string(),
            ));
            return checks;
        }
        None => return checks,
    }
    let file = match &f.hosts {
        Ok(Some(hosts)) => hosts.file.display().to_string(),
        _ => format!("{}/{}/hosts.toml", searched(f)[0].display(), f.registry),
    };
    let url = &p.endpoint.url;
    let check = match &p.api {
        Some(Api::Answer { status: status @ (200 | 401), api_version }) => {
            let version = api_version.as_deref().map(|v| format!(" ({v})")).unwrap_or_default();
            Check::ok(format!("GET {url}/v2/: {status}{version}: the registry API answers"))
        }
        Some(Api::Answer { status, .. }) => Check::problem(
            format!("GET {url}/v2/ answers {status}: what listens on {authority} is not a registry API"),
            format!("check what serves {authority}, and the endpoint in {file}"),
        ),
        Some(Api::PlainHttpPeer) => Check::problem(
            format!("{authority} serves plain HTTP, but containerd is sent there over https ({url})"),
            format!(
                "make {file} say http://{authority} (server and [host]): re-run node setup with the registry's \
                 plain-HTTP setting (deploy/node: REGISTRY_TLS=false, or no ConfigMap registry-dns-registry-ca; chart: nodeSetup.containerd.tls=false)"
            ),
        ),
        Some(Api::TlsPeer) => Check::problem(
            format!("{authority} serves HTTPS, but containerd is sent there over http ({url})"),
            format!(
                "make {file} say https://{authority} with ca = the registry's CA ({GET_CA}): node setup does it \
                 from the ConfigMap registry-dns-registry-ca (docs/node-setup.md)"
            ),
        ),
        Some(Api::Untrusted(why)) => {
            let trusted = match p.endpoint.ca.as_slice() {
                [] => "the system's roots (no ca in hosts.toml)".to_string(),
                files => format!(
                    "the system's roots and {}",
                    files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            };
            match why {
                Untrusted::UnknownIssuer => Check::problem(
                    format!("{authority}'s certificate is not signed by a CA containerd trusts for it: {trusted}"),
                    format!(
                        "put the registry's CA ({GET_CA}) in the ConfigMap registry-dns-registry-ca and re-run node \
                         setup, which writes it beside {file} as `ca`"
                    ),
                ),
                Untrusted::NotValidForName => Check::problem(
                    format!("{authority}'s certificate is not valid for {host}"),
                    format!(
                        "add {host} to the certificate's dnsNames (deploy/registry/tls/issuer.yaml), then restart the registry"
                    ),
                ),
                Untrusted::Expired => Check::problem(
                    format!("{authority}'s certificate has expired (or is not valid yet)"),
                    "renew it (cert-manager: kubectl -n registry delete secret registry-tls) and restart the registry"
                        .to_string(),
                ),
                Untrusted::Other(e) => Check::problem(
                    format!("{authority}'s certificate is refused: {e}"),
                    format!("check the registry's certificate against {trusted}"),
                ),
            }
        }
        Some(Api::UnreadableCa(e)) => Check::problem(
            format!("{e}: containerd cannot load the CA {file} names"),
            format!("re-run node setup, which copies the CA beside {file}; by hand: {GET_CA}"),
        ),
        Some(Api::Failed(e)) => Check::problem(
            format!("GET {url}/v2/ failed: {e}"),
            format!("check the registry's log, and the endpoint in {file}"),
        ),
        None => return checks,
    };
    checks.push(check);
    checks
}

fn join(addresses: &[std::net::SocketAddr]) -> String {
    addresses.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
}
