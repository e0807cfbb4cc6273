//! `registry-dns doctor --registry`: turns what a runtime's files say and what the registry
//! answered into that runtime's report, one line per step of a pull, each problem with its fix,
//! and a verdict: exit 0 when the runtime on this node can reach the registry's API as its files
//! tell it to, 1 when not. Pure: no I/O here.

use std::fmt;

use super::registry_probe::{Api, Connected, Probe, Untrusted};
use super::runtime::RuntimeView;
use super::verdict::{Check, Severity, write_report};

/// How the registry's CA comes out of the cluster (deploy/registry/tls).
pub const GET_CA: &str = "kubectl -n registry get secret registry-ca -o jsonpath='{.data.ca\\.crt}' | base64 -d";

/// What was read and asked, the input of [`judge`].
#[derive(Debug, Clone)]
pub struct PullFindings {
    /// host:port, as in image references.
    pub registry: String,
    /// What the runtime's files say.
    pub view: RuntimeView,
    /// What the endpoint the runtime tries first answered.
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
    let name = f.view.name;
    let mut checks = f.view.checks.clone();
    checks.extend(reach(f));
    let first_problem = checks.iter().find(|c| c.severity == Severity::Problem);
    let endpoint = &f.probe.endpoint;
    let verdict = match first_problem {
        None => format!(
            "ok: {name} on this node reaches {}'s registry API at {} as {} says",
            f.registry, endpoint.url, f.view.source
        ),
        Some(problem) => {
            let count = checks.iter().filter(|c| c.severity == Severity::Problem).count();
            let advice =
                if count == 1 { "apply the fix above".to_string() } else { format!("apply the {count} fixes above") };
            format!("PROBLEM: {name} on this node cannot pull from {}: {}; {advice}", f.registry, problem.text)
        }
    };
    let title = format!("registry-dns doctor --registry: {} as {name} on this node pulls it", f.registry);
    PullReport { title, checks, verdict }
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
                format!("getaddrinfo({host}) failed: {e}: {} cannot resolve it either", f.view.name),
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
    let (name, file, view) = (f.view.name, &f.view.scheme_file, &f.view);
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
            format!("{authority} serves plain HTTP, but {name} is sent there over https ({url})"),
            view.to_plain.clone(),
        ),
        // Docker and containers/image try HTTPS without verifying before plain HTTP.
        Some(Api::TlsPeer) if view.insecure_fallback => Check::warn(
            format!(
                "{authority} serves HTTPS, which {name} accepts without verifying the certificate ({file} marks it insecure)"
            ),
            Some(view.to_tls.clone()),
        ),
        Some(Api::TlsPeer) => Check::problem(
            format!("{authority} serves HTTPS, but {name} is sent there over http ({url})"),
            view.to_tls.clone(),
        ),
        Some(Api::Untrusted(why)) => {
            let trusted = match p.endpoint.ca.as_slice() {
                [] => format!("the system's roots (no CA in {file})"),
                files => format!(
                    "the system's roots and {}",
                    files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            };
            match why {
                Untrusted::UnknownIssuer => Check::problem(
                    format!("{authority}'s certificate is not signed by a CA {name} trusts for it: {trusted}"),
                    format!(
                        "put the registry's CA ({GET_CA}) in the ConfigMap registry-dns-registry-ca and re-run node \
                         setup, which writes it {}",
                        view.ca_place
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
            format!("{e}: {name} cannot load the registry's CA"),
            format!("re-run node setup, which writes the CA {}; by hand: {GET_CA}", view.ca_place),
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
