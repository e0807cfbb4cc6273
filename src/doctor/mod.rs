//! `registry-dns doctor`: run on a node or in a pod when the registry's name does not resolve.
//!
//! It reads the local resolver setup (`resolver_setup`), asks getaddrinfo and, directly,
//! registry-dns and each nameserver (`probe`), and prints one line per check with a fix for each
//! problem and a verdict (`verdict`). The exit status says whether the name resolves the same
//! both ways: 0 yes, 1 no (the system resolver fails or disagrees), 3 registry-dns itself gave
//! no address (nothing to compare with); 2 is a usage error, as for the server.
//!
//! The files it reads can be pointed elsewhere with flags; getaddrinfo always reads the real
//! ones, so the flags are for looking at another root's files, and for tests.
//!
//! `--registry` checks the node's pull path instead, for each container runtime the node has
//! (`runtime`: `containerd`, `containers_image` for CRI-O and podman, `docker`): the runtime's
//! files for the registry, the registry's address and port, its `/v2/` API over the scheme those
//! files name, its certificate against the CAs they name (`registry_probe`, `registry_verdict`);
//! exit 0 when every runtime's pull can get through, 1 when not.

mod containerd;
mod containers_image;
mod docker;
mod probe;
mod registry_probe;
mod registry_verdict;
mod resolved_routing;
mod resolved_state;
mod resolver_setup;
mod runtime;
mod verdict;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use probe::{PendingLookup, Reply};
use resolver_setup::{Paths, ResolverSetup};
use verdict::Findings;

use crate::model::parse_upstream;

/// How long getaddrinfo may take before the doctor stops waiting (glibc's own worst case with
/// three silent nameservers and a search list is minutes).
const SYSTEM_LOOKUP_LIMIT: Duration = Duration::from_secs(30);

/// The flags of `registry-dns doctor`. None comes from the environment: inside the DaemonSet's
/// pod, `REGISTRY_DNS_RESOLV_CONF` names the upstreams' file, not the one getaddrinfo reads.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The name to diagnose.
    #[arg(long, value_name = "NAME", default_value = "knative-local-registry")]
    pub name: String,

    /// registry-dns, asked directly for the name (port 53 unless given). Default: the node-local
    /// address the DaemonSet serves on, reachable from the node and from its pods.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_upstream,
          default_value_t = SocketAddr::new(crate::interface::DEFAULT_ADDRESS, 53))]
    pub server: SocketAddr,

    /// The resolv.conf to check.
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,

    /// The nsswitch.conf to check.
    #[arg(long, value_name = "PATH", default_value = "/etc/nsswitch.conf")]
    pub nsswitch: PathBuf,

    /// The hosts file to check.
    #[arg(long, value_name = "PATH", default_value = "/etc/hosts")]
    pub hosts: PathBuf,

    /// systemd-resolved's configuration; drop-ins are read from PATH.d (and, for the default
    /// path, from /run/systemd, /usr/local/lib/systemd and /usr/lib/systemd too).
    #[arg(long, value_name = "PATH", default_value = "/etc/systemd/resolved.conf")]
    pub resolved_conf: PathBuf,

    /// How long each direct DNS query waits for an answer (it is sent twice); with --registry,
    /// each step of the pull (connect, TLS, the API's answer).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Check the node's pull path instead of its resolver, for each container runtime the node has:
    /// its files for HOST:PORT (default: --name, port 5000), the registry there, its /v2/ API over
    /// the scheme they name, and its certificate against the CAs they name.
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = "", value_parser = parse_registry)]
    pub registry: Option<String>,

    /// containerd's config.toml, whose CRI registry `config_path` names the hosts directories.
    #[arg(long, value_name = "PATH", default_value = "/etc/containerd/config.toml", requires = "registry")]
    pub containerd_config: PathBuf,

    /// The hosts directory to read instead of config.toml's (as `ctr --hosts-dir`).
    #[arg(long, value_name = "DIR", requires = "registry")]
    pub hosts_dir: Option<PathBuf>,

    /// containers/image's directory (CRI-O, podman): registries.conf, registries.conf.d, certs.d.
    #[arg(long, value_name = "DIR", default_value = "/etc/containers", requires = "registry")]
    pub containers_dir: PathBuf,

    /// Docker's directory: daemon.json, certs.d.
    #[arg(long, value_name = "DIR", default_value = "/etc/docker", requires = "registry")]
    pub docker_dir: PathBuf,

    /// Check only this runtime (repeatable). Default: each one this node has.
    #[arg(long, value_enum, value_name = "RUNTIME", requires = "registry")]
    pub runtime: Vec<runtime::RuntimeName>,
}

/// `--registry`'s value: HOST:PORT, as in an image reference (empty: the default).
fn parse_registry(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        _ if text.is_empty() => Ok(String::new()),
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(text.to_string()),
        _ => Err(format!("'{text}' is not HOST:PORT (image references to this registry carry the port)")),
    }
}

/// Runs the diagnosis, prints the report on stdout and returns the exit status.
pub fn run(args: &DoctorArgs) -> ExitCode {
    if let Some(registry) = &args.registry {
        return run_registry(args, registry);
    }
    let system = PendingLookup::start(&args.name);
    let paths = Paths {
        resolv_conf: args.resolv_conf.clone(),
        nsswitch: args.nsswitch.clone(),
        hosts: args.hosts.clone(),
        resolved_dropin_dirs: Paths::resolved_dropin_dirs_for(&args.resolved_conf),
        resolved_conf: args.resolved_conf.clone(),
    };
    let setup = ResolverSetup::read(paths, &args.name);
    let nameserver_ips = setup.resolv_conf.as_ref().map(|c| c.nameservers.clone()).unwrap_or_default();
    let (direct, nameservers) = std::thread::scope(|scope| {
        let direct = scope.spawn(|| probe::ask(args.server, &args.name, args.timeout));
        let nameservers = ask_all(scope, nameserver_ips.iter().map(|ip| (*ip, args.name.clone())), args.timeout);
        (direct.join().expect("the direct query does not panic"), nameservers)
    });
    let search_answers = search_answers(&setup, &nameservers, args);
    let resolved = setup.resolved_in_path().then(resolved_state::ResolvedState::read);
    let findings = Findings {
        resolved,
        name: args.name.clone(),
        server: args.server,
        timeout: args.timeout,
        setup,
        nameservers: nameserver_ips.into_iter().zip(nameservers).collect(),
        search_answers,
        direct,
        system: system.finish(SYSTEM_LOOKUP_LIMIT),
    };
    let report = verdict::judge(&findings);
    print!("{report}");
    ExitCode::from(report.outcome.exit_code())
}

/// `--registry`: the pull path to `registry` (empty: `--name`:5000), one report per runtime.
fn run_registry(args: &DoctorArgs, registry: &str) -> ExitCode {
    let registry = match registry {
        "" => format!("{}:5000", args.name),
        given => given.to_string(),
    };
    let paths = runtime::RuntimePaths {
        containerd_config: args.containerd_config.clone(),
        hosts_dir: args.hosts_dir.clone(),
        containers_dir: args.containers_dir.clone(),
        docker_dir: args.docker_dir.clone(),
    };
    let all = runtime::all(&paths);
    let mut chosen: Vec<_> = match args.runtime.is_empty() {
        true => all.iter().filter(|(_, r)| r.present()).collect(),
        false => all.iter().filter(|(name, _)| args.runtime.contains(name)).collect(),
    };
    if chosen.is_empty() {
        // No runtime found: containerd's view, which names what is missing.
        chosen.push(&all[0]);
    }
    let mut code = 0;
    for (_, runtime) in chosen {
        let view = match runtime.read(&registry) {
            Ok(view) => view,
            Err(e) => {
                eprintln!("registry-dns: --registry {registry}: {e}");
                return ExitCode::from(2);
            }
        };
        let probe = registry_probe::probe(&view.endpoint, args.timeout);
        let report =
            registry_verdict::judge(&registry_verdict::PullFindings { registry: registry.clone(), view, probe });
        print!("{report}");
        code = code.max(report.exit_code());
    }
    ExitCode::from(code)
}

/// The suffixed names glibc tries before the bare one, each asked at the first nameserver that
/// glibc would settle on (none when no nameserver answers).
fn search_answers(setup: &ResolverSetup, nameservers: &[Reply], args: &DoctorArgs) -> Vec<(String, Reply)> {
    let Ok(conf) = &setup.resolv_conf else { return Vec::new() };
    let Some(deciding) = nameservers.iter().position(Reply::is_final_for_glibc) else { return Vec::new() };
    if !conf.searches_first(&args.name) {
        return Vec::new();
    }
    let names: Vec<String> =
        conf.search.iter().map(|domain| format!("{}.{}", args.name, domain.trim_matches('.'))).collect();
    let at = conf.nameservers[deciding];
    let replies = std::thread::scope(|scope| ask_all(scope, names.iter().map(|n| (at, n.clone())), args.timeout));
    names.into_iter().zip(replies).collect()
}

/// Asks every (server, name) at once, each on its own thread; the replies in the same order.
fn ask_all<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    queries: impl Iterator<Item = (IpAddr, String)>,
    timeout: Duration,
) -> Vec<Reply> {
    let handles: Vec<_> =
        queries.map(|(ip, name)| scope.spawn(move || probe::ask(SocketAddr::new(ip, 53), &name, timeout))).collect();
    handles.into_iter().map(|h| h.join().expect("a direct query does not panic")).collect()
}
