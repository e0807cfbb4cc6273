//! The command line. Every flag can also come from the environment as `REGISTRY_DNS_<FLAG>`
//! (repeatable flags take a space-separated list there), which is how the DaemonSet sets them,
//! and from `--config FILE` (see `file`). Precedence: flag, then environment, then the file,
//! then the default. [`CommandLine`] keeps what was given explicitly, so that a reload re-reads
//! the file under the same flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use std::ffi::OsString;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, ValueEnum};

use ipnet::IpNet;

use super::Config;
use crate::access::{AllowList, DEFAULT_ALLOWED};
use crate::model::{AnswerMode, ServiceName, StaticRecord, parse_upstream};

/// registry-dns: answers a cluster registry's TLD-less name authoritatively and forwards every
/// other query, unchanged, to the upstream servers.
#[derive(Debug, Parser)]
#[command(
    name = "registry-dns",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Without a subcommand, registry-dns serves DNS with the settings.
    #[command(subcommand)]
    pub command: Option<Subcommand>,

    #[command(flatten)]
    pub settings: Settings,
}

/// The server's settings: flags, `REGISTRY_DNS_*` variables, or keys of the config file.
#[derive(Debug, Args)]
pub struct Settings {
    /// A YAML or TOML file with any of these settings (keys are the flag names); flags and
    /// environment variables override it. SIGHUP re-reads it.
    #[arg(long, env = "REGISTRY_DNS_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address to serve DNS on, over UDP and TCP (repeatable).
    #[arg(
        long,
        env = "REGISTRY_DNS_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:5353",
        value_delimiter = ' '
    )]
    pub listen: Vec<SocketAddr>,

    /// A local name and its addresses, IPv4 and/or IPv6 (repeatable).
    #[arg(long, env = "REGISTRY_DNS_RECORD", value_name = "NAME=IP[,IP...]", value_delimiter = ' ')]
    pub record: Vec<StaticRecord>,

    /// A local name that follows a Kubernetes Service (repeatable; several names may follow one
    /// Service).
    #[arg(long, env = "REGISTRY_DNS_SERVICE", value_name = "NAME=NAMESPACE/SERVICE", value_delimiter = ' ')]
    pub service: Vec<ServiceName>,

    /// What names that follow a Service answer: its ready endpoints, or its cluster IPs.
    #[arg(long, env = "REGISTRY_DNS_ANSWER", default_value = "endpoints",
          value_parser = PossibleValuesParser::new(AnswerMode::NAMES).map(|v| v.parse::<AnswerMode>().expect("a listed value")))]
    pub answer: AnswerMode,

    /// Kubeconfig to use; default: in-cluster service account, else KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "REGISTRY_DNS_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Where to serve /healthz, /readyz and /metrics, or `off`. Not 8080: NodeLocal DNSCache's
    /// health port, and many agents' default.
    #[arg(long, env = "REGISTRY_DNS_OPS_LISTEN", value_name = "ADDR:PORT|off", default_value = "127.0.0.1:8099",
          value_parser = parse_ops_listen)]
    pub ops_listen: OpsListen,

    /// Where to serve /metrics alone (for Prometheus, on the node's address), or `off`. The
    /// DaemonSet uses 0.0.0.0:9353: no common node agent's port (CoreDNS has 9153, NodeLocal
    /// DNSCache 9253, node-exporter 9100).
    #[arg(long, env = "REGISTRY_DNS_METRICS_LISTEN", value_name = "ADDR:PORT|off", default_value = "off",
          value_parser = parse_ops_listen)]
    pub metrics_listen: OpsListen,

    /// Upstream server to forward to, port 53 unless given (repeatable). Default: the nameservers
    /// of --resolv-conf.
    #[arg(long, env = "REGISTRY_DNS_UPSTREAM", value_name = "ADDR[:PORT]", value_parser = parse_upstream,
          value_delimiter = ' ')]
    pub upstream: Vec<SocketAddr>,

    /// resolv.conf to take the upstreams from when no --upstream is given.
    #[arg(long, env = "REGISTRY_DNS_RESOLV_CONF", value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,

    /// TTL of local answers, in seconds.
    #[arg(long, env = "REGISTRY_DNS_TTL", value_name = "SECONDS", default_value_t = 5)]
    pub ttl: u32,

    /// At most this many A (or AAAA) records in one local answer; a name with more answers them a
    /// window at a time, rotating. 16 AAAA records still fit a 512-byte UDP answer.
    #[arg(long, env = "REGISTRY_DNS_MAX_ANSWERS", value_name = "N", default_value_t = 16)]
    pub max_answers: usize,

    /// How long each upstream gets to answer before the next one is tried.
    #[arg(long, env = "REGISTRY_DNS_UPSTREAM_TIMEOUT", value_name = "DURATION", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Forwarded queries in flight at most; beyond it clients get REFUSED.
    #[arg(long, env = "REGISTRY_DNS_MAX_CONCURRENT", value_name = "N", default_value_t = 1000)]
    pub max_concurrent: usize,

    /// Bytes of cached answers at most (for example 8MiB, 512KiB), shared by the UDP workers and
    /// TCP; 0 turns the cache off: every query is forwarded.
    #[arg(long, env = "REGISTRY_DNS_CACHE_SIZE", value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub cache_size: usize,

    /// Longest a positive answer is cached (and the largest TTL it is served with).
    #[arg(long, env = "REGISTRY_DNS_CACHE_MAX_TTL", value_name = "DURATION", default_value = "1h",
          value_parser = humantime::parse_duration)]
    pub cache_max_ttl: Duration,

    /// Longest a negative answer (NXDOMAIN, NODATA) is cached; it is also bounded by its SOA.
    #[arg(long, env = "REGISTRY_DNS_CACHE_MAX_NEGATIVE_TTL", value_name = "DURATION", default_value = "5m",
          value_parser = humantime::parse_duration)]
    pub cache_max_negative_ttl: Duration,

    /// How long an expired answer is kept, to be served (TTL 30 s) when the upstreams fail or are
    /// slow (RFC 8767); 0 turns serve-stale off.
    #[arg(long, env = "REGISTRY_DNS_SERVE_STALE", value_name = "DURATION", default_value = "1d",
          value_parser = parse_duration_or_zero)]
    pub serve_stale: Duration,

    /// UDP worker threads, each with its own SO_REUSEPORT socket; 0 means one per usable CPU.
    #[arg(long, env = "REGISTRY_DNS_WORKERS", value_name = "N", default_value_t = 0)]
    pub workers: usize,

    /// Close a TCP connection that sends no complete query for this long.
    #[arg(long, env = "REGISTRY_DNS_TCP_IDLE_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub tcp_idle_timeout: Duration,

    /// Open TCP connections at most; more are closed at once.
    #[arg(long, env = "REGISTRY_DNS_MAX_TCP_CONNECTIONS", value_name = "N", default_value_t = 512)]
    pub max_tcp_connections: usize,

    /// A network allowed to query (repeatable); others get REFUSED. Default: loopback, RFC 1918,
    /// link-local, 100.64.0.0/10, IPv6 ULA and link-local.
    #[arg(long, env = "REGISTRY_DNS_ALLOW_FROM", value_name = "CIDR", value_delimiter = ' ',
          default_values = DEFAULT_ALLOWED)]
    pub allow_from: Vec<IpNet>,

    /// After SIGTERM, keep answering this long (with /readyz at 503) so clients move away first.
    #[arg(long, env = "REGISTRY_DNS_LAMEDUCK", value_name = "DURATION", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub lameduck: Duration,

    /// Create (or reuse) this dummy interface with the --interface-address before listening, so
    /// that the node and its pods use one link-local address (needs CAP_NET_ADMIN). It is left in
    /// place on exit for the next instance; remove it with `ip link del NAME`.
    #[arg(long, env = "REGISTRY_DNS_INTERFACE_NAME", value_name = "NAME")]
    pub interface_name: Option<String>,

    /// Address of --interface-name, IPv4 (as /32) or IPv6 (as /128) (repeatable).
    #[arg(
        long,
        env = "REGISTRY_DNS_INTERFACE_ADDRESS",
        value_name = "IP",
        default_value = "169.254.20.25",
        value_delimiter = ' ',
        requires = "interface_name"
    )]
    pub interface_address: Vec<IpAddr>,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "REGISTRY_DNS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--ops-listen` and `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpsListen(pub Option<SocketAddr>);

fn parse_ops_listen(text: &str) -> Result<OpsListen, String> {
    if text == "off" {
        return Ok(OpsListen(None));
    }
    text.parse().map(|a| OpsListen(Some(a))).map_err(|_| format!("'{text}' is not ADDR:PORT or off"))
}

/// A size in bytes: a number, optionally followed by KiB, MiB or GiB.
fn parse_size(text: &str) -> Result<usize, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale: usize = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("'{text}' is not a size such as 8MiB, 512KiB or 0")),
    };
    let n: usize = number.parse().map_err(|_| format!("'{text}' is not a size such as 8MiB, 512KiB or 0"))?;
    n.checked_mul(scale).ok_or_else(|| format!("'{text}' is too large"))
}

/// A duration such as `1d` or `30s`, or a bare `0`.
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// What else the binary does besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Find out why a name does not resolve here (on a node or in a pod): checks the local
    /// resolver setup, asks getaddrinfo and registry-dns, prints each problem with its fix.
    Doctor(Box<crate::doctor::DoctorArgs>),
    /// Steps of node setup (deploy/node) that need more than a shell: copying this binary into
    /// the setup pod, merging registries into Docker's daemon.json.
    NodeSetup(crate::node_setup::NodeSetupArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The command line and environment as given, without defaults, so that the config file can
/// fill what they leave unset, now and at every reload.
#[derive(Debug, Clone)]
pub struct CommandLine {
    explicit: ArgMatches,
}

impl CommandLine {
    /// Parses the process's arguments (and `REGISTRY_DNS_*` variables).
    pub fn parse() -> Result<Self, clap::Error> {
        Self::parse_from(std::env::args_os())
    }

    pub fn parse_from(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Result<Self, clap::Error> {
        let command = Cli::command().mut_args(|arg| arg.default_value(None));
        Ok(Self { explicit: command.try_get_matches_from(args)? })
    }

    /// The settings: the file's (when `--config` is given; the embedded default when nothing at all
    /// is), overridden by the command line and environment, with defaults for the rest. Each error
    /// is one line.
    pub fn load(&self) -> anyhow::Result<Cli> {
        let mut args = vec![OsString::from("registry-dns")];
        if let Some(path) = self.explicit.get_one::<PathBuf>("config") {
            let from_file = super::file::read_args(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            args.extend(from_file);
        } else if self.explicit.ids().next().is_none() && self.explicit.subcommand_name().is_none() {
            // Nothing given at all (no flag, no variable): a first run on a laptop.
            args.extend(super::file::embedded_default_args());
        }
        // Only the file's settings and the defaults here: the environment is in `explicit`.
        let base = Cli::command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(args)
            .map_err(|e| anyhow::anyhow!("config file: {}", one_line(&e)))?;
        let mut settings = Settings::from_arg_matches(&base).map_err(|e| anyhow::anyhow!("{}", one_line(&e)))?;
        settings.update_from_arg_matches(&self.explicit).map_err(|e| anyhow::anyhow!("{}", one_line(&e)))?;
        // A subcommand (doctor) is not a setting: it comes from the command line alone.
        let command = match self.explicit.subcommand_name() {
            Some(_) => {
                Some(Subcommand::from_arg_matches(&self.explicit).map_err(|e| anyhow::anyhow!("{}", one_line(&e)))?)
            }
            None => None,
        };
        Ok(Cli { command, settings })
    }
}

/// The first line of a clap error, without its `error: ` prefix.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ").to_string()
}

impl Settings {
    pub fn into_config(self) -> Config {
        Config {
            listen: self.listen,
            records: self.record,
            services: self.service,
            answer: self.answer,
            kubeconfig: self.kubeconfig,
            ops_listen: self.ops_listen.0,
            metrics_listen: self.metrics_listen.0,
            upstreams: self.upstream,
            resolv_conf: self.resolv_conf,
            ttl: self.ttl,
            max_answers: self.max_answers,
            upstream_timeout: self.upstream_timeout,
            max_concurrent: self.max_concurrent,
            cache: crate::cache::CachePolicy {
                size: self.cache_size,
                max_ttl: self.cache_max_ttl,
                max_negative_ttl: self.cache_max_negative_ttl,
                serve_stale: self.serve_stale,
            },
            workers: self.workers,
            tcp_idle_timeout: self.tcp_idle_timeout,
            max_tcp_connections: self.max_tcp_connections,
            allow_from: AllowList::new(self.allow_from),
            lameduck: self.lameduck,
            interface_name: self.interface_name,
            interface_addresses: self.interface_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeatable_flags_collect_every_value() {
        let cli = Cli::try_parse_from([
            "registry-dns",
            "--record",
            "a=10.0.0.1",
            "--record",
            "b=10.0.0.2,fd00::2",
            "--upstream",
            "10.0.0.53",
            "--upstream-timeout",
            "500ms",
        ])
        .unwrap();
        let config = cli.settings.into_config();
        assert_eq!(config.records.len(), 2);
        assert_eq!(config.upstreams, vec!["10.0.0.53:53".parse().unwrap()]);
        assert_eq!(config.upstream_timeout, Duration::from_millis(500));
    }

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("registry-dns-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_config_file_fills_what_flags_leave_unset() {
        let path = write("c.yaml", "record: [a=10.0.0.1]\nttl: 30\nupstream-timeout: 750ms\nupstream: [10.0.0.53]\n");
        let config_flag = path.to_str().unwrap();
        let line = CommandLine::parse_from(["registry-dns", "--config", config_flag, "--ttl", "7"]).unwrap();
        let config = line.load().unwrap().settings.into_config();
        assert_eq!(config.ttl, 7, "a flag beats the file");
        assert_eq!(config.upstream_timeout, Duration::from_millis(750), "the file beats the default");
        assert_eq!(config.records.len(), 1);
        assert_eq!(config.max_answers, 16, "defaults fill the rest");
        let line =
            CommandLine::parse_from(["registry-dns", "--config", config_flag, "--record", "b=10.0.0.2"]).unwrap();
        let records = line.load().unwrap().settings.into_config().records;
        assert_eq!(records, vec!["b=10.0.0.2".parse().unwrap()], "a repeatable flag replaces the file's list");

        std::fs::write(&path, "ttl: 60\n").unwrap();
        assert_eq!(line.load().unwrap().settings.into_config().ttl, 60, "a reload sees the file's new content");
        std::fs::write(&path, "tll: 60\n").unwrap();
        assert!(line.load().unwrap_err().to_string().contains("--tll"), "a misspelt key names itself");
        std::fs::write(&path, "ttl: sixty\n").unwrap();
        assert!(line.load().unwrap_err().to_string().contains("sixty"));
        let _ = std::fs::remove_file(&path);
        let missing = CommandLine::parse_from(["registry-dns", "--config", "/nonexistent.yaml"]).unwrap();
        assert!(missing.load().unwrap_err().to_string().contains("/nonexistent.yaml"));
    }

    #[test]
    fn without_a_config_file_the_defaults_apply() {
        let config = CommandLine::parse_from(["registry-dns"]).unwrap().load().unwrap().settings.into_config();
        assert_eq!(config.listen, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(config.ttl, 5);
        assert!(!config.allow_from.networks().is_empty());
    }

    #[test]
    fn nothing_given_serves_the_embedded_default_and_any_setting_replaces_it() {
        let bare = CommandLine::parse_from(["registry-dns"]).unwrap().load().unwrap().settings.into_config();
        let names: Vec<String> = bare.records.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["knative-local-registry."]);
        assert!(bare.upstreams.is_empty(), "upstreams from the resolv.conf");
        bare.validate().unwrap();
        let given = CommandLine::parse_from(["registry-dns", "--ttl", "7"]).unwrap().load().unwrap();
        let error = given.settings.into_config().validate().unwrap_err().to_string();
        assert!(error.contains("no local names"), "a setting of one's own means no embedded names: {error}");
    }

    #[test]
    fn cache_flags_take_sizes_and_durations() {
        let config = Cli::try_parse_from(["registry-dns"]).unwrap().settings.into_config();
        assert_eq!(config.cache, crate::cache::CachePolicy::default(), "the flags' defaults are the library's");
        let config = Cli::try_parse_from([
            "registry-dns",
            "--cache-size",
            "512KiB",
            "--cache-max-ttl",
            "10m",
            "--serve-stale",
            "0",
        ])
        .unwrap()
        .settings
        .into_config();
        assert_eq!(config.cache.size, 512 << 10);
        assert_eq!(config.cache.max_ttl, Duration::from_secs(600));
        assert!(config.cache.serve_stale.is_zero());
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        for bad in ["8MB", "MiB", "-1", "1.5MiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_flags() {
        let config = Cli::try_parse_from(["registry-dns"]).unwrap().settings.into_config();
        assert_eq!(config.interface_name, None);
        let config =
            Cli::try_parse_from(["registry-dns", "--interface-name", "registry-dns0"]).unwrap().settings.into_config();
        assert_eq!(config.interface_name.as_deref(), Some("registry-dns0"));
        assert_eq!(config.interface_addresses, ["169.254.20.25".parse::<IpAddr>().unwrap()]);
        let config = Cli::try_parse_from([
            "registry-dns",
            "--interface-name",
            "rdns0",
            "--interface-address",
            "169.254.20.26",
            "--interface-address",
            "fd00::53",
        ])
        .unwrap()
        .settings
        .into_config();
        assert_eq!(config.interface_addresses.len(), 2);
        let alone = Cli::try_parse_from(["registry-dns", "--interface-address", "169.254.20.26"]).unwrap_err();
        assert!(alone.to_string().contains("--interface-name"), "{alone}");
    }
}
