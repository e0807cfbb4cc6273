//! What the local resolver is set up to do, read from its files the way glibc and
//! systemd-resolved read them: resolv.conf (nameservers, search list, ndots), nsswitch.conf's
//! `hosts:` line, the /etc/hosts lines that name the name, and resolved.conf(.d)'s
//! `ResolveUnicastSingleLabel`. Reading never fails: a missing or unreadable file is itself a
//! finding, reported as such.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// systemd-resolved's stub listeners: 127.0.0.53 (the usual one) and 127.0.0.54 (proxy mode).
pub const RESOLVED_STUBS: [IpAddr; 2] =
    [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 54))];

/// glibc reads at most this many nameservers (MAXNS) and search domains.
const GLIBC_MAX_NAMESERVERS: usize = 3;
const GLIBC_MAX_SEARCH: usize = 6;

/// systemd-resolved's API socket: present while resolved runs, which is when nsswitch's
/// `resolve` module uses it instead of falling through to `dns`.
const RESOLVED_API_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";

/// The drop-in directories systemd reads for resolved.conf besides `<main file>.d`, in
/// priority order (a file name in an earlier directory masks the same name in later ones).
const RESOLVED_VENDOR_DROPIN_DIRS: [&str; 3] =
    ["/run/systemd/resolved.conf.d", "/usr/local/lib/systemd/resolved.conf.d", "/usr/lib/systemd/resolved.conf.d"];

/// Where each file is read from.
#[derive(Debug, Clone)]
pub struct Paths {
    pub resolv_conf: PathBuf,
    pub nsswitch: PathBuf,
    pub hosts: PathBuf,
    pub resolved_conf: PathBuf,
    /// resolved.conf drop-in directories, highest priority first.
    pub resolved_dropin_dirs: Vec<PathBuf>,
}

impl Paths {
    /// systemd's own drop-in directories for `resolved_conf`: `<file>.d`, and when it is the
    /// system's file, also those under /run and /usr.
    pub fn resolved_dropin_dirs_for(resolved_conf: &Path) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from(format!("{}.d", resolved_conf.display()))];
        if resolved_conf == Path::new("/etc/systemd/resolved.conf") {
            dirs.extend(RESOLVED_VENDOR_DROPIN_DIRS.iter().map(PathBuf::from));
        }
        dirs
    }
}

/// Everything read, one field per file.
#[derive(Debug, Clone)]
pub struct ResolverSetup {
    pub paths: Paths,
    /// resolv.conf, or why it could not be read.
    pub resolv_conf: Result<ResolvConf, String>,
    pub nsswitch: Nsswitch,
    /// The /etc/hosts lines that name the name, or why the file could not be read.
    pub hosts_entries: Result<Vec<HostsEntry>, String>,
    pub resolved: ResolvedSettings,
    /// Whether systemd-resolved's API socket exists (nsswitch's `resolve` then uses it).
    pub resolved_running: bool,
}

/// The parts of resolv.conf that decide how glibc looks a single-label name up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// The nameservers glibc uses (at most 3).
    pub nameservers: Vec<IpAddr>,
    /// Nameserver lines beyond glibc's 3, which it ignores.
    pub ignored_nameservers: Vec<IpAddr>,
    /// The search list (or the `domain`), at most 6 domains as glibc reads it.
    pub search: Vec<String>,
    pub ndots: u32,
    /// Seconds per try and tries per nameserver.
    pub timeout: u32,
    pub attempts: u32,
}

impl ResolvConf {
    pub fn parse(text: &[u8]) -> Self {
        // glibc skips lines it cannot read, so partial parse errors are not a finding.
        let (conf, _errors) = resolv_conf::Config::parse_with_errors(text);
        let mut nameservers: Vec<IpAddr> = conf.nameservers.iter().map(|ip| IpAddr::from(ip.clone())).collect();
        let ignored_nameservers = nameservers.split_off(nameservers.len().min(GLIBC_MAX_NAMESERVERS));
        let search = conf.get_last_search_or_domain().take(GLIBC_MAX_SEARCH).cloned().collect();
        Self {
            nameservers,
            ignored_nameservers,
            search,
            ndots: conf.ndots,
            timeout: conf.timeout,
            attempts: conf.attempts,
        }
    }

    /// Whether glibc tries `name` with each search domain before the name as given: when it
    /// has fewer dots than ndots (always, for a single-label name, unless ndots is 0).
    pub fn searches_first(&self, name: &str) -> bool {
        !self.search.is_empty() && (name.matches('.').count() as u32) < self.ndots
    }

    pub fn uses_resolved_stub(&self) -> bool {
        self.nameservers.iter().any(|ip| RESOLVED_STUBS.contains(ip))
    }
}

/// nsswitch.conf's `hosts:` line: the services getaddrinfo asks, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nsswitch {
    /// The services (`files`, `dns`, `resolve`, `myhostname`...), actions left out.
    pub services: Vec<String>,
    /// False when there is no file or no `hosts:` line, and glibc's default applies.
    pub configured: bool,
}

impl Nsswitch {
    /// glibc's built-in `hosts` setting when nsswitch.conf does not say.
    const GLIBC_DEFAULT: [&str; 2] = ["dns", "files"];

    pub fn parse(text: Option<&str>) -> Self {
        let line = text.into_iter().flat_map(str::lines).find_map(|line| {
            let line = line.split('#').next().unwrap_or_default().trim();
            line.strip_prefix("hosts:")
        });
        match line {
            Some(line) => Self {
                services: line
                    .split_whitespace()
                    .filter(|word| !word.starts_with('[') && !word.ends_with(']'))
                    .map(str::to_lowercase)
                    .collect(),
                configured: true,
            },
            None => Self { services: Self::GLIBC_DEFAULT.map(String::from).to_vec(), configured: false },
        }
    }

    pub fn uses(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }

    /// Whether /etc/hosts is read before any DNS-backed service.
    pub fn files_before_dns(&self) -> bool {
        let position = |service: &str| self.services.iter().position(|s| s == service);
        match (position("files"), [position("dns"), position("resolve")].into_iter().flatten().min()) {
            (Some(files), Some(dns)) => files < dns,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// One /etc/hosts line that names the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    /// 1-based, as an editor shows it.
    pub line: usize,
    pub address: IpAddr,
}

/// The lines of an /etc/hosts that map `name` (case-insensitive, as glibc compares).
pub fn hosts_entries(text: &str, name: &str) -> Vec<HostsEntry> {
    let name = name.trim_end_matches('.');
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let mut words = line.split('#').next().unwrap_or_default().split_whitespace();
            let address = words.next()?.parse().ok()?;
            words
                .any(|host| host.trim_end_matches('.').eq_ignore_ascii_case(name))
                .then_some(HostsEntry { line: index + 1, address })
        })
        .collect()
}

/// What resolved.conf and its drop-ins say that the doctor judges: the effective
/// `ResolveUnicastSingleLabel` and where it came from, and which file sets which `DNS=` servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedSettings {
    /// `None` when no file sets it (resolved's default is `no`).
    pub single_label: Option<bool>,
    /// The file whose setting won.
    pub source: Option<PathBuf>,
    /// Each file that adds global `DNS=` servers, with them, in the order resolved reads them.
    pub dns: Vec<(PathBuf, Vec<IpAddr>)>,
    /// Every file read, the main one included when it exists.
    pub files: Vec<PathBuf>,
}

impl ResolvedSettings {
    /// Reads the main file, then the drop-ins in file-name order (a name in a higher-priority
    /// directory masks the same name in lower ones); the last assignment wins, as in systemd.
    pub fn read(main: &Path, dropin_dirs: &[PathBuf]) -> Self {
        let mut dropins: Vec<(std::ffi::OsString, PathBuf)> = Vec::new();
        for dir in dropin_dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let is_conf = Path::new(&file_name).extension().is_some_and(|e| e == "conf");
                if is_conf && !dropins.iter().any(|(seen, _)| *seen == file_name) {
                    dropins.push((file_name, entry.path()));
                }
            }
        }
        dropins.sort();
        let mut settings = Self::default();
        for path in std::iter::once(main.to_path_buf()).chain(dropins.into_iter().map(|(_, path)| path)) {
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            settings.files.push(path.clone());
            for (key, value) in resolve_section(&text) {
                match key {
                    "ResolveUnicastSingleLabel" => {
                        if let Some(value) = systemd_boolean(value) {
                            settings.single_label = Some(value);
                            settings.source = Some(path.clone());
                        }
                    }
                    // An empty assignment resets the list; any other adds to it.
                    "DNS" if value.is_empty() => settings.dns.clear(),
                    "DNS" => {
                        let servers: Vec<IpAddr> = value.split_whitespace().filter_map(server_address).collect();
                        match settings.dns.last_mut() {
                            Some((file, list)) if *file == path => list.extend(servers),
                            _ => settings.dns.push((path.clone(), servers)),
                        }
                    }
                    _ => {}
                }
            }
        }
        settings
    }

    /// The file that names `server` in a global `DNS=`, if one does.
    pub fn file_naming(&self, server: IpAddr) -> Option<&Path> {
        self.dns.iter().find(|(_, servers)| servers.contains(&server)).map(|(file, _)| file.as_path())
    }
}

/// The `KEY=VALUE` lines of a file's `[Resolve]` section, values trimmed.
fn resolve_section(text: &str) -> Vec<(&str, &str)> {
    let mut in_resolve = false;
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_resolve = line == "[Resolve]";
        } else if let Some((key, value)) = line.split_once('=')
            && in_resolve
        {
            lines.push((key.trim(), value.trim()));
        }
    }
    lines
}

/// The address of a resolved `DNS=` entry: `ADDR`, `ADDR:PORT`, `[ADDR]:PORT`, each optionally
/// with `%IFNAME` and `#SNI`.
fn server_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.split('#').next()?;
    let entry = entry.split('%').next()?;
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    entry.rsplit_once(':')?.0.parse().ok()
}

/// systemd's `parse_boolean`.
fn systemd_boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

impl ResolverSetup {
    pub fn read(paths: Paths, name: &str) -> Self {
        let resolv_conf = std::fs::read(&paths.resolv_conf)
            .map(|bytes| ResolvConf::parse(&bytes))
            .map_err(|e| format!("cannot read {}: {e}", paths.resolv_conf.display()));
        let nsswitch = Nsswitch::parse(std::fs::read_to_string(&paths.nsswitch).ok().as_deref());
        let hosts_entries = std::fs::read_to_string(&paths.hosts)
            .map(|text| hosts_entries(&text, name))
            .map_err(|e| format!("cannot read {}: {e}", paths.hosts.display()));
        let resolved = ResolvedSettings::read(&paths.resolved_conf, &paths.resolved_dropin_dirs);
        let resolved_running = Path::new(RESOLVED_API_SOCKET).exists();
        Self { paths, resolv_conf, nsswitch, hosts_entries, resolved, resolved_running }
    }

    /// Whether systemd-resolved decides how the name is looked up: resolv.conf points at its
    /// stub, or nsswitch asks it through `resolve` while it runs.
    pub fn resolved_in_path(&self) -> bool {
        self.resolv_conf.as_ref().is_ok_and(ResolvConf::uses_resolved_stub)
            || (self.nsswitch.uses("resolve") && self.resolved_running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_glibc_reads_it() {
        let conf = ResolvConf::parse(
            b"search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\n\
              nameserver 169.254.20.25 # registry-dns\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n\
              options ndots:5 timeout:1\n",
        );
        assert_eq!(conf.nameservers, ["10.96.0.10", "169.254.20.25", "10.0.0.2"].map(|a| a.parse::<IpAddr>().unwrap()));
        assert_eq!(conf.ignored_nameservers, ["10.0.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(conf.search.len(), 3);
        assert_eq!((conf.ndots, conf.timeout, conf.attempts), (5, 1, 2));
        assert!(conf.searches_first("knative-local-registry"));
        assert!(!conf.uses_resolved_stub());

        let node = ResolvConf::parse(b"nameserver 127.0.0.53\noptions edns0 trust-ad\n");
        assert!(node.uses_resolved_stub());
        assert!(!node.searches_first("knative-local-registry"), "no search list");
        let ndots0 = ResolvConf::parse(b"search example.org\noptions ndots:0\n");
        assert!(!ndots0.searches_first("knative-local-registry"), "ndots:0 asks the name as given first");
    }

    #[test]
    fn nsswitch_hosts_line() {
        let ns = Nsswitch::parse(Some("passwd: files\nhosts:  files mdns4_minimal [NOTFOUND=return] dns # x\n"));
        assert_eq!(ns.services, ["files", "mdns4_minimal", "dns"]);
        assert!(ns.configured && ns.files_before_dns());
        let resolved = Nsswitch::parse(Some("hosts: mymachines resolve [!UNAVAIL=return] files myhostname dns\n"));
        assert!(resolved.uses("resolve") && !resolved.files_before_dns());
        let missing = Nsswitch::parse(None);
        assert!(!missing.configured && missing.uses("dns") && !missing.files_before_dns());
        assert!(Nsswitch::parse(Some("hosts: files\n")).files_before_dns());
    }

    #[test]
    fn hosts_lines_naming_the_name() {
        let text = "127.0.0.1 localhost\n# 10.0.0.1 knative-local-registry\n10.9.9.9 registry KNATIVE-local-registry\n\
                    fd00::9 knative-local-registry. # v6\n10.0.0.2 knative-local-registry-2\n";
        assert_eq!(
            hosts_entries(text, "knative-local-registry"),
            [
                HostsEntry { line: 3, address: "10.9.9.9".parse().unwrap() },
                HostsEntry { line: 4, address: "fd00::9".parse().unwrap() }
            ]
        );
    }

    #[test]
    fn resolved_single_label_setting_last_one_wins() {
        let dir = std::env::temp_dir().join(format!("registry-dns-resolved-{}", std::process::id()));
        let (etc, vendor) = (dir.join("resolved.conf.d"), dir.join("vendor.d"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&vendor).unwrap();
        let main = dir.join("resolved.conf");
        std::fs::write(&main, "[Resolve]\n#ResolveUnicastSingleLabel=yes\nDNS=10.0.0.2\n").unwrap();
        let dirs = [etc.clone(), vendor.clone()];
        let settings = ResolvedSettings::read(&main, &dirs);
        assert_eq!((settings.single_label, settings.source), (None, None));

        std::fs::write(vendor.join("20-vendor.conf"), "[Resolve]\nResolveUnicastSingleLabel=yes\n").unwrap();
        std::fs::write(vendor.join("10-masked.conf"), "[Resolve]\nResolveUnicastSingleLabel=yes\n").unwrap();
        std::fs::write(etc.join("10-masked.conf"), "[Resolve]\nResolveUnicastSingleLabel=no\n").unwrap();
        std::fs::write(etc.join("30-other-section.conf"), "[Network]\nResolveUnicastSingleLabel=no\n").unwrap();
        std::fs::write(etc.join("40-not-conf.bak"), "[Resolve]\nResolveUnicastSingleLabel=no\n").unwrap();
        let settings = ResolvedSettings::read(&main, &dirs);
        assert_eq!(settings.single_label, Some(true));
        assert_eq!(settings.source, Some(vendor.join("20-vendor.conf")));

        std::fs::write(etc.join("99-off.conf"), "[Resolve]\nResolveUnicastSingleLabel = off\n").unwrap();
        assert_eq!(ResolvedSettings::read(&main, &dirs).single_label, Some(false));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolved_global_servers_by_file_as_resolved_appends_them() {
        let dir = std::env::temp_dir().join(format!("registry-dns-resolved-dns-{}", std::process::id()));
        let etc = dir.join("resolved.conf.d");
        std::fs::create_dir_all(&etc).unwrap();
        let main = dir.join("resolved.conf");
        std::fs::write(&main, "[Resolve]\nDNS=10.0.0.2 [fd00::2]:53 10.0.0.3#dns.example\n").unwrap();
        std::fs::write(
            etc.join("registry-dns.conf"),
            "[Resolve]\nDNS=169.254.20.25\nDomains=~knative-local-registry\n",
        )
        .unwrap();
        let settings = ResolvedSettings::read(&main, std::slice::from_ref(&etc));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            settings.dns,
            vec![
                (main.clone(), vec![ip("10.0.0.2"), ip("fd00::2"), ip("10.0.0.3")]),
                (etc.join("registry-dns.conf"), vec![ip("169.254.20.25")])
            ]
        );
        assert_eq!(settings.file_naming(ip("169.254.20.25")), Some(etc.join("registry-dns.conf").as_path()));
        std::fs::write(etc.join("zz-reset.conf"), "[Resolve]\nDNS=\nDNS=10.0.0.9:5353%eth0\n").unwrap();
        let settings = ResolvedSettings::read(&main, &[etc]);
        assert_eq!(settings.dns, vec![(dir.join("resolved.conf.d/zz-reset.conf"), vec![ip("10.0.0.9")])]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
