//! Turns what was read and asked into the report: one line per check (ok, warn or PROBLEM, each
//! problem with a concrete fix, as the pitfalls of single-label names dictate), then the verdict,
//! which compares getaddrinfo's answer with registry-dns's own and sets the exit status.
//! Pure: no I/O here, so each rule is tested on crafted findings.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;

use super::probe::{Reply, SystemLookup};
use super::resolved_routing::Routing;
use super::resolved_state::Reported;
use super::resolver_setup::{RESOLVED_STUBS, ResolverSetup};

/// NodeLocal DNSCache's usual link-local address: its `.` block bypasses CoreDNS.
const NODE_LOCAL_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10));

/// A getaddrinfo slower than this means a nameserver before the answering one is silent.
const SLOW_LOOKUP: Duration = Duration::from_secs(1);

/// Everything the doctor found out, the input of [`judge`].
#[derive(Debug, Clone)]
pub struct Findings {
    pub name: String,
    /// registry-dns, asked directly.
    pub server: SocketAddr,
    /// How long each direct query waited.
    pub timeout: Duration,
    pub setup: ResolverSetup,
    /// What systemd-resolved reports of its configuration, when it is in the path.
    pub resolved: Option<Reported>,
    /// Each resolv.conf nameserver (as glibc uses them) and its answer for the name.
    pub nameservers: Vec<(IpAddr, Reply)>,
    /// `name.domain` for each search domain glibc tries first, asked at the nameserver glibc
    /// settles on.
    pub search_answers: Vec<(String, Reply)>,
    /// registry-dns's answer.
    pub direct: Reply,
    pub system: SystemLookup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Ok,
    /// Worth fixing, but not why the name fails.
    Warn,
    Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub severity: Severity,
    pub text: String,
    pub fix: Option<String>,
}

impl Check {
    pub(super) fn ok(text: String) -> Self {
        Self { severity: Severity::Ok, text, fix: None }
    }

    pub(super) fn warn(text: String, fix: Option<String>) -> Self {
        Self { severity: Severity::Warn, text, fix }
    }

    pub(super) fn problem(text: String, fix: impl Into<Option<String>>) -> Self {
        Self { severity: Severity::Problem, text, fix: fix.into() }
    }
}

/// How the two ways of resolving compare; each outcome is an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// getaddrinfo returns exactly registry-dns's addresses: exit 0.
    Same,
    /// getaddrinfo fails or returns other addresses: exit 1.
    Differs,
    /// registry-dns gave no address, so there is nothing to compare with: exit 3 (2 is a usage
    /// error, as for the server).
    NoReference,
}

impl Comparison {
    pub fn exit_code(self) -> u8 {
        match self {
            Comparison::Same => 0,
            Comparison::Differs => 1,
            Comparison::NoReference => 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    pub checks: Vec<Check>,
    pub outcome: Comparison,
    pub verdict: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_report(f, &self.title, &self.checks, &self.verdict)
    }
}

/// A report's text: the title, one line per check with its fix below, the verdict.
pub(super) fn write_report(f: &mut fmt::Formatter<'_>, title: &str, checks: &[Check], verdict: &str) -> fmt::Result {
    writeln!(f, "{title}")?;
    for check in checks {
        let label = match check.severity {
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Problem => "PROBLEM",
        };
        writeln!(f, "  {label:<8} {}", check.text)?;
        if let Some(fix) = &check.fix {
            writeln!(f, "  {:<8} fix: {fix}", "")?;
        }
    }
    writeln!(f, "verdict: {verdict}")
}

/// The report for `findings`.
pub fn judge(findings: &Findings) -> Report {
    let judge = Judge { f: findings, reference: findings.direct.addresses().filter(|a| !a.is_empty()) };
    let mut checks = Vec::new();
    checks.extend(judge.resolv_conf());
    checks.extend(judge.search_list());
    checks.push(judge.nsswitch());
    checks.extend(judge.hosts());
    checks.push(judge.resolved());
    checks.extend(judge.resolved_routing());
    checks.extend(judge.nameservers());
    checks.push(judge.registry_dns());
    checks.push(judge.system());
    let (outcome, verdict) = judge.verdict(&checks);
    let title = format!("registry-dns doctor: {} (registry-dns at {})", findings.name, findings.server);
    Report { title, checks, outcome, verdict }
}

struct Judge<'a> {
    f: &'a Findings,
    /// registry-dns's addresses for the name, when it gave some.
    reference: Option<&'a BTreeSet<IpAddr>>,
}

impl Judge<'_> {
    fn resolv_conf(&self) -> Vec<Check> {
        let path = self.f.setup.paths.resolv_conf.display();
        let server = self.f.server.ip();
        let conf = match &self.f.setup.resolv_conf {
            Ok(conf) => conf,
            Err(e) => {
                return vec![Check::problem(
                    format!("{e}: glibc then asks 127.0.0.1 and ::1"),
                    format!("restore {path} with `nameserver {server}` as its first line"),
                )];
            }
        };
        if conf.nameservers.is_empty() {
            return vec![Check::problem(
                format!("{path} has no nameserver line: glibc asks 127.0.0.1 and ::1"),
                format!("add `nameserver {server}` as the first nameserver"),
            )];
        }
        let search = match conf.search.as_slice() {
            [] => "no search list".to_string(),
            domains => format!("search {}", domains.join(" ")),
        };
        let mut checks = vec![Check::ok(format!(
            "{path}: nameserver {}; {search}; ndots:{} timeout:{} attempts:{}",
            join(&conf.nameservers),
            conf.ndots,
            conf.timeout,
            conf.attempts
        ))];
        if !conf.ignored_nameservers.is_empty() {
            checks.push(Check::warn(
                format!(
                    "{path}: glibc uses only the first 3 nameservers and ignores {}",
                    join(&conf.ignored_nameservers)
                ),
                Some("remove the extra nameserver lines, or put the ones that matter first".into()),
            ));
        }
        checks
    }

    /// ndots and the search list: the suffixed names glibc tries first, and any that exists.
    fn search_list(&self) -> Vec<Check> {
        let name = &self.f.name;
        let Ok(conf) = &self.f.setup.resolv_conf else { return Vec::new() };
        if conf.search.is_empty() {
            return Vec::new();
        }
        if !conf.searches_first(name) {
            return vec![Check::ok(format!(
                "{name} has at least ndots:{} dots: glibc asks it as given before the search list",
                conf.ndots
            ))];
        }
        let mut checks = vec![Check::ok(format!(
            "ndots:{} with {} search domains: glibc first asks {name}.<domain> for each ({} extra queries per \
             lookup: slower, harmless while none of them exists)",
            conf.ndots,
            conf.search.len(),
            conf.search.len() * 2
        ))];
        for (fqdn, reply) in &self.f.search_answers {
            let Some(addresses) = reply.addresses().filter(|a| !a.is_empty()) else { continue };
            let fix = match fqdn.split_once(".svc.") {
                Some((service_namespace, _)) => {
                    let namespace = service_namespace.rsplit('.').next().unwrap_or_default();
                    format!(
                        "a Service named {name} in namespace {namespace} shadows the registry: rename or delete it \
                         (kubectl -n {namespace} get service {name})"
                    )
                }
                None => {
                    format!("delete that record, or remove its domain from the search list of {}", self.resolv_path())
                }
            };
            let found = format!("{fqdn} exists ({}) and glibc tries it before {name}", join(addresses));
            checks.push(match self.reference {
                // An alias to the registry (the ExternalName-per-namespace workaround): right
                // today, but a second source of truth.
                Some(reference) if reference == addresses => Check::warn(
                    format!("{found}; it gives registry-dns's addresses today, but it will not follow them"),
                    Some(format!("remove it once clients resolve {name} through registry-dns")),
                ),
                _ => Check::problem(format!("{found}, so it wins"), fix),
            });
        }
        checks
    }

    fn nsswitch(&self) -> Check {
        let ns = &self.f.setup.nsswitch;
        let path = self.f.setup.paths.nsswitch.display();
        let services = ns.services.join(" ");
        if !ns.uses("dns") && !ns.uses("resolve") {
            return Check::problem(
                format!("{path} hosts: {services}: getaddrinfo never asks DNS"),
                "add dns to the hosts line: `hosts: files dns`".to_string(),
            );
        }
        match ns.configured {
            true => Check::ok(format!("{path} hosts: {services}")),
            false => Check::ok(format!("{path} has no hosts line: glibc's default `{services}` applies")),
        }
    }

    fn hosts(&self) -> Vec<Check> {
        let name = &self.f.name;
        let path = self.f.setup.paths.hosts.display();
        let entries = match &self.f.setup.hosts_entries {
            Ok(entries) => entries,
            Err(e) => return vec![Check::warn(e.clone(), None)],
        };
        if entries.is_empty() {
            return vec![Check::ok(format!("{path}: no line maps {name}"))];
        }
        let read_first = self.f.setup.nsswitch.files_before_dns();
        let in_hosts: BTreeSet<IpAddr> = entries.iter().map(|e| e.address).collect();
        entries
            .iter()
            .map(|entry| {
                let line = format!("{path} line {} maps {name} to {}", entry.line, entry.address);
                let remove = format!("remove line {} of {path} (in a pod: the hostAliases of its spec)", entry.line);
                match self.reference {
                    _ if !read_first => Check::warn(
                        format!("{line}; nsswitch asks DNS first, so it only counts when DNS fails"),
                        Some(remove),
                    ),
                    Some(reference) if *reference == in_hosts => Check::warn(
                        format!(
                            "{line}, as registry-dns does today, but getaddrinfo takes it from there without asking \
                             DNS, so it will not follow the registry when it moves"
                        ),
                        Some(remove),
                    ),
                    Some(reference) => Check::problem(
                        format!(
                            "{line}, shadowing DNS: getaddrinfo returns it without asking (registry-dns answers {})",
                            join(reference)
                        ),
                        remove,
                    ),
                    None => Check::warn(format!("{line}: getaddrinfo returns it without asking DNS"), Some(remove)),
                }
            })
            .collect()
    }

    fn resolved(&self) -> Check {
        let setup = &self.f.setup;
        if !setup.resolved_in_path() {
            return Check::ok(
                "systemd-resolved: not in the path (no stub nameserver, no active `resolve` in nsswitch)".into(),
            );
        }
        let settings = &setup.resolved;
        if settings.single_label == Some(true) {
            let source = settings.source.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            return Check::ok(format!("systemd-resolved: ResolveUnicastSingleLabel=yes ({source})"));
        }
        let why = match &settings.source {
            Some(source) => format!("ResolveUnicastSingleLabel=no in {}", source.display()),
            None => format!(
                "ResolveUnicastSingleLabel is not set in {} or its drop-ins (default: no)",
                setup.paths.resolved_conf.display()
            ),
        };
        let file = format!("{}/registry-dns.conf", self.dropin_dir());
        let edit = match setup.resolved.files.iter().any(|f| f.as_os_str() == file.as_str()) {
            true => format!("add `ResolveUnicastSingleLabel=yes` under `[Resolve]` in {file}"),
            false => format!("create {file} with `[Resolve]` and `ResolveUnicastSingleLabel=yes`"),
        };
        Check::problem(
            format!("systemd-resolved answers single-label names itself and never sends {} to DNS: {why}", self.f.name),
            format!(
                "{edit}, then `systemctl restart systemd-resolved`; deploy/node's node setup does this on every node"
            ),
        )
    }

    /// How resolved routes the name (`resolved_routing`), when it is in the path.
    fn resolved_routing(&self) -> Vec<Check> {
        let (Some(state), true) = (&self.f.resolved, self.f.setup.resolved_in_path()) else { return Vec::new() };
        let dropin_dir = self.dropin_dir();
        Routing {
            name: &self.f.name,
            server: self.f.server,
            settings: &self.f.setup.resolved,
            dropin_dir: &dropin_dir,
            state,
        }
        .checks()
    }

    fn dropin_dir(&self) -> String {
        self.f.setup.paths.resolved_dropin_dirs.first().map(|d| d.display().to_string()).unwrap_or_default()
    }

    /// Each nameserver as glibc uses it: it moves on after silence, SERVFAIL or REFUSED, and
    /// stops at the first answer or NXDOMAIN.
    fn nameservers(&self) -> Vec<Check> {
        let name = &self.f.name;
        let deciding = self.f.nameservers.iter().position(|(_, reply)| reply.is_final_for_glibc());
        let (timeout, attempts) = self.f.setup.resolv_conf.as_ref().map(|c| (c.timeout, c.attempts)).unwrap_or((5, 2));
        self.f
            .nameservers
            .iter()
            .enumerate()
            .map(|(index, (ip, reply))| {
                let after_deciding = deciding.is_some_and(|d| index > d);
                let unanswered = match reply {
                    Reply::Answer { .. } => None,
                    Reply::Silent => Some((
                        format!(
                            "nameserver {ip} does not answer on 53/udp (nothing within {}, twice): glibc waits \
                             timeout:{timeout} x attempts:{attempts} seconds for it on every lookup",
                            seconds(self.f.timeout)
                        ),
                        format!("remove it from {} or fix the server behind it", self.resolv_path()),
                    )),
                    Reply::Refused => Some((
                        format!("nameserver {ip}: nothing listens on 53/udp (port unreachable)"),
                        format!("remove it from {} or start the DNS server it names", self.resolv_path()),
                    )),
                    Reply::Unreachable(e) => Some((
                        format!("nameserver {ip} cannot be reached: {e}"),
                        format!("remove it from {} or fix the route to it", self.resolv_path()),
                    )),
                };
                if let Some((text, fix)) = unanswered {
                    return match after_deciding {
                        true => Check::warn(format!("{text} (a fallback, not asked for {name})"), Some(fix)),
                        false => Check::problem(text, fix),
                    };
                }
                let said = describe(reply, 53);
                if after_deciding {
                    return Check::ok(format!(
                        "nameserver {ip} answers {said} for {name} (glibc asks it only when those before it fail)"
                    ));
                }
                let matches = match (reply.addresses(), self.reference) {
                    (Some(got), Some(reference)) => got == reference,
                    (Some(got), None) => !got.is_empty(),
                    (None, _) => false,
                };
                if matches {
                    return Check::ok(format!("nameserver {ip} answers {name}: {said}"));
                }
                let expected =
                    self.reference.map(|r| format!(" where registry-dns answers {}", join(r))).unwrap_or_default();
                let consequence = match reply.is_final_for_glibc() {
                    true => "and glibc stops there",
                    false => "and glibc moves on to the next nameserver",
                };
                Check::problem(
                    format!("nameserver {ip} answers {said} for {name}{expected}, {consequence}"),
                    self.nameserver_fix(*ip),
                )
            })
            .collect()
    }

    /// How to make the nameserver at `ip` lead to registry-dns, by what it most likely is.
    fn nameserver_fix(&self, ip: IpAddr) -> String {
        let (name, server) = (&self.f.name, self.f.server.ip());
        let in_pod = self.f.setup.resolv_conf.as_ref().is_ok_and(|c| c.search.iter().any(|d| d.contains("svc.")));
        if RESOLVED_STUBS.contains(&ip) {
            return "this is systemd-resolved's stub: see the systemd-resolved lines above (and the registry-dns line \
                    below when resolved routes the name to it)"
                .into();
        }
        if ip == NODE_LOCAL_DNS {
            return "this is NodeLocal DNSCache, whose `.` block bypasses CoreDNS: add the stanza to its Corefile too \
                    (deploy/coredns/patch-corefile.sh add --configmap node-local-dns)"
                .into();
        }
        if in_pod {
            return format!(
                "this is the pod's cluster DNS: add `{name}:53 {{ forward . {server} }}` to CoreDNS's Corefile \
                 (deploy/coredns/patch-corefile.sh add)"
            );
        }
        format!(
            "make registry-dns ({server}) the first nameserver in {} (glibc stops at the first NXDOMAIN; registry-dns \
             relays every other name), as deploy/node does on nodes without systemd-resolved",
            self.resolv_path()
        )
    }

    fn registry_dns(&self) -> Check {
        let (name, server) = (&self.f.name, self.f.server);
        let at = format!("registry-dns at {server}");
        match &self.f.direct {
            Reply::Answer { rcode: ResponseCode::NoError, authoritative, addresses } if !addresses.is_empty() => {
                match authoritative {
                    true => Check::ok(format!("{at} answers {name}: {} (authoritative)", join(addresses))),
                    false => Check::warn(
                        format!(
                            "{server} answers {name} with {}, but not authoritatively: it relays the name, so it is not the registry-dns that serves it",
                            join(addresses)
                        ),
                        Some("pass --server with the address registry-dns listens on".into()),
                    ),
                }
            }
            Reply::Answer { rcode, .. } => {
                let (why, fix) = match *rcode {
                    ResponseCode::NoError => (
                        format!("has no address for {name} (NODATA): a Service-backed name with no ready endpoint?"),
                        "check the registry's pods and EndpointSlices (kubectl -n NAMESPACE get endpointslices)".into(),
                    ),
                    ResponseCode::NXDomain => (
                        format!("does not know {name} (NXDOMAIN): it is not one of its local names"),
                        format!("start registry-dns with --record {name}=IP or --service {name}=NAMESPACE/SERVICE"),
                    ),
                    ResponseCode::ServFail => (
                        format!(
                            "answers SERVFAIL for {name}: its source has not synced (API server unreachable, RBAC?)"
                        ),
                        "see its /readyz and its log".into(),
                    ),
                    ResponseCode::Refused => (
                        format!("answers REFUSED for {name}: this host's address is outside its --allow-from"),
                        "add this network to --allow-from".into(),
                    ),
                    other => (format!("answers {} for {name}", rcode_name(other)), "see its log".into()),
                };
                Check::problem(format!("{at} {why}"), fix)
            }
            unanswered => Check::problem(
                format!("{at}: {}", describe(unanswered, server.port())),
                "is registry-dns running on this node (kubectl -n registry-dns get pods -o wide)? If it listens \
                 elsewhere, pass --server ADDR[:PORT]"
                    .to_string(),
            ),
        }
    }

    fn system(&self) -> Check {
        let name = &self.f.name;
        let took = seconds(self.f.system.took);
        match &self.f.system.result {
            Ok(addresses) if self.f.system.took > SLOW_LOOKUP => Check::warn(
                format!(
                    "getaddrinfo({name}): {} but took {took}: a nameserver it asks first is slow or silent",
                    join(addresses)
                ),
                None,
            ),
            Ok(addresses) => Check::ok(format!("getaddrinfo({name}): {} in {took}", join(addresses))),
            Err(e) => Check::problem(format!("getaddrinfo({name}) failed after {took}: {e}"), None),
        }
    }

    fn verdict(&self, checks: &[Check]) -> (Comparison, String) {
        let name = &self.f.name;
        let Some(reference) = self.reference else {
            return (
                Comparison::NoReference,
                format!(
                    "PROBLEM: registry-dns at {} gave no address for {name} ({}), so there is nothing to compare with: fix that first",
                    self.f.server,
                    describe(&self.f.direct, self.f.server.port())
                ),
            );
        };
        let expected = join(reference);
        let symptom = match &self.f.system.result {
            Ok(got) if got == reference => {
                return (
                    Comparison::Same,
                    format!(
                        "ok: {name} resolves to {expected} through the system resolver, as registry-dns answers it"
                    ),
                );
            }
            Ok(got) => format!("getaddrinfo gives {} for {name} where registry-dns answers {expected}", join(got)),
            Err(e) => format!("getaddrinfo fails for {name} ({e}) where registry-dns answers {expected}"),
        };
        // The getaddrinfo line itself is the symptom; a cause is any other problem.
        let causes = checks.iter().filter(|c| c.severity == Severity::Problem && c.fix.is_some()).count();
        let advice = match causes {
            0 => format!(
                "no cause found in the files read; compare with `getent ahosts {name}` (nscd, a different nsswitch module?)"
            ),
            1 => "apply the fix above".into(),
            n => format!("apply the {n} fixes above"),
        };
        (Comparison::Differs, format!("PROBLEM: {symptom}; {advice}"))
    }

    fn resolv_path(&self) -> String {
        self.f.setup.paths.resolv_conf.display().to_string()
    }
}

/// What a server said, in dig's words.
fn describe(reply: &Reply, port: u16) -> String {
    match reply {
        Reply::Answer { rcode: ResponseCode::NoError, addresses, .. } if addresses.is_empty() => {
            "NOERROR without an address (NODATA)".into()
        }
        Reply::Answer { rcode: ResponseCode::NoError, addresses, .. } => join(addresses),
        Reply::Answer { rcode, .. } => rcode_name(*rcode),
        Reply::Silent => format!("no answer on {port}/udp"),
        Reply::Refused => format!("nothing listens on {port}/udp (port unreachable)"),
        Reply::Unreachable(e) => format!("cannot be reached: {e}"),
    }
}

fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

fn join<'a>(addresses: impl IntoIterator<Item = &'a IpAddr>) -> String {
    addresses.into_iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

fn seconds(d: Duration) -> String {
    match d.as_millis() {
        ms @ 0..1000 => format!("{ms} ms"),
        _ => format!("{:.1} s", d.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests;
