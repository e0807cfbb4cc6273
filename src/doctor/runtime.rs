//! The container runtimes `doctor --registry` checks: one implementation of [`Runtime`] each, in
//! its own module (`containerd`, `containers_image`, `docker`), listed once in [`all`]. Each reads
//! its own files the way the runtime does and says what a pull of the registry does there: the
//! checks of those files, and the endpoint (scheme, CA files) the pull goes to. The probe and
//! the verdict (`registry_probe`, `registry_verdict`) are the same for all.

use std::path::{Path, PathBuf};

use super::containerd::{self, Endpoint, HostsDirs};
use super::verdict::Check;

/// How fixes name node setup, which writes each runtime's files on every node.
pub const NODE_SETUP: &str = "run node setup (kubectl apply -k deploy/node, or the chart's nodeSetup.enabled=true), \
                              which writes it on every node; by hand: docs/node-setup.md";
/// How a fix tells node setup the registry speaks plain HTTP.
pub const PLAIN_SETTING: &str = "re-run node setup with the registry's plain-HTTP setting (deploy/node: \
                                 REGISTRY_TLS=false, or no ConfigMap registry-dns-registry-ca; chart: nodeSetup.tls=false)";
/// The first line of every file node setup writes.
pub const MARK: &str = "# Written by registry-dns node setup (deploy/node)";

/// A container runtime whose pulls the doctor follows.
pub trait Runtime {
    /// Whether this node has the runtime.
    fn present(&self) -> bool;
    /// What the runtime's files say about pulling `registry` (host:port).
    fn read(&self, registry: &str) -> Result<RuntimeView, String>;
}

/// One runtime's view of the registry, the input of the verdict.
#[derive(Debug, Clone)]
pub struct RuntimeView {
    /// How the report names the runtime ("containerd", "dockerd").
    pub name: &'static str,
    /// The checks of its files.
    pub checks: Vec<Check>,
    /// Where its pull goes first.
    pub endpoint: Endpoint,
    /// For an http endpoint: whether the runtime tries HTTPS without verifying first (docker's and
    /// containers/image's insecure registries), so that a TLS registry still works there.
    pub insecure_fallback: bool,
    /// The file that decides the scheme, as fixes name it.
    pub scheme_file: String,
    /// How to send the runtime over plain HTTP, and over TLS with the CA.
    pub to_plain: String,
    pub to_tls: String,
    /// Where node setup puts the registry's CA for this runtime.
    pub ca_place: String,
    /// What the ok verdict says the pull follows ("its hosts.toml").
    pub source: String,
}

/// Where each runtime's files are.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    pub containerd_config: PathBuf,
    pub hosts_dir: Option<PathBuf>,
    pub containers_dir: PathBuf,
    pub docker_dir: PathBuf,
}

/// The runtimes `doctor --registry` knows, by the names `--runtime` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeName {
    Containerd,
    /// CRI-O, podman, buildah, skopeo.
    ContainersImage,
    Docker,
}

/// Every runtime, in report order.
pub fn all(paths: &RuntimePaths) -> Vec<(RuntimeName, Box<dyn Runtime>)> {
    vec![
        (RuntimeName::Containerd, Box::new(Containerd(paths.clone()))),
        (
            RuntimeName::ContainersImage,
            Box::new(super::containers_image::ContainersImage {
                dir: paths.containers_dir.clone(),
                docker_dir: paths.docker_dir.clone(),
            }),
        ),
        (RuntimeName::Docker, Box::new(super::docker::Docker(paths.docker_dir.clone()))),
    ]
}

/// Whether `program` is in one of $PATH's directories (or the usual system ones).
pub fn on_path(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .any(|dir| Path::new(dir).join(program).is_file())
}

/// Whether `file` starts with node setup's mark.
pub fn written_by_node_setup(file: &Path) -> bool {
    std::fs::read_to_string(file).is_ok_and(|text| text.starts_with(MARK))
}

/// ", written by someone else: node setup leaves it alone" for a file without node setup's mark.
pub fn whose(file: &Path) -> &'static str {
    match written_by_node_setup(file) {
        true => "",
        false => " (written by someone else: node setup leaves it alone)",
    }
}

/// The `*.crt` files of a certs.d directory, sorted: the CAs docker and containers/image add to
/// the system's roots for that registry.
pub fn ca_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|e| e == "crt"));
    files.sort();
    files
}

/// containerd, from config.toml's `config_path` and the registry's hosts.toml.
struct Containerd(RuntimePaths);

impl Runtime for Containerd {
    fn present(&self) -> bool {
        self.0.hosts_dir.is_some() || self.0.containerd_config.exists() || on_path("containerd")
    }

    fn read(&self, registry: &str) -> Result<RuntimeView, String> {
        let dirs = HostsDirs::read(&self.0.containerd_config, self.0.hosts_dir.as_deref());
        let hosts = containerd::hosts_toml(&containerd::searched(&dirs), registry);
        let endpoint = containerd::pull_endpoint(&hosts, registry)?;
        let checks = containerd::checks(&dirs, &hosts, registry, &endpoint);
        let file = match &hosts {
            Ok(Some(hosts)) => hosts.file.display().to_string(),
            _ => format!("{}/{registry}/hosts.toml", containerd::searched(&dirs)[0].display()),
        };
        let authority = endpoint.authority.clone();
        Ok(RuntimeView {
            name: "containerd",
            checks,
            insecure_fallback: false,
            to_plain: format!("make {file} say http://{authority} (server and [host]): {PLAIN_SETTING}"),
            to_tls: format!(
                "make {file} say https://{authority} with ca = the registry's CA ({}): node setup does it from the \
                 ConfigMap registry-dns-registry-ca (docs/node-setup.md)",
                super::registry_verdict::GET_CA
            ),
            ca_place: format!("beside {file} as `ca`"),
            source: "its hosts.toml".into(),
            scheme_file: file,
            endpoint,
        })
    }
}
