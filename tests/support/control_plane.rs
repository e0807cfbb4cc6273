//! A real control plane for the tests: etcd, kube-apiserver and kube-controller-manager started by
//! `tests/cluster/control-plane.sh` (built from their Go modules, cached outside the repository),
//! with deploy/registry and deploy/base applied and a Node for the registry Pods. The test is its
//! admin (kubectl and a kube-rs client) and its kubelet: it creates the registry Pods and reports
//! their status, and the real EndpointSlice controller writes the slices registry-dns follows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{TempDir, free_port, registry_pod, wait_until};

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/control-plane.sh");
/// The Node the Pods are bound to: the EndpointSlice controller skips a Pod whose Node it cannot find.
pub const NODE: &str = "node-1";

/// `None`, after a loud line, when a test cannot run here; never under CI, which fails instead.
pub fn skip_or_fail<T>(why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("CI never skips: {why}");
    }
    // Straight to the process's stderr: the test harness captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "\n********** SKIPPED: {why} **********\n");
    None
}

/// The parts a test of real programs shares, found once by `find`: first it checks that the test
/// runs as root (`why_root`: what for) and that each of `programs` (Debian's, which tests/run.sh
/// installs) exists. `None` skips the test, as [`skip_or_fail`] does.
pub fn parts_once<T: Send + Sync>(
    parts: &'static OnceLock<Result<T, String>>,
    test: &str,
    why_root: &str,
    programs: &[&str],
    find: impl FnOnce() -> Result<T, String>,
) -> Option<&'static T> {
    let found = parts.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!("{test} needs root ({why_root})"));
        }
        if let Some(missing) = programs.iter().find(|p| !Path::new(p).exists()) {
            return Err(format!("{missing} is missing (tests/run.sh installs it from Debian's packages)"));
        }
        find()
    });
    match found {
        Ok(parts) => Some(parts),
        Err(e) => skip_or_fail(e),
    }
}

/// Runs `control-plane.sh COMMAND` (`build`, `build-e2e`): the directories of the binaries it
/// built or found, in the order it prints them.
pub fn build(command: &str) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("bash")
        .args([SCRIPT, command])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {SCRIPT}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{SCRIPT} {command} exited with {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(PathBuf::from).collect())
}

/// A kube-rs client from a kubeconfig file the script wrote.
pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A running control plane; stopped, and its directory removed, on drop. Only one runs at a time
/// in a test binary: the delays the tests assert should not compete with another one starting on
/// a 2-core machine.
pub struct ControlPlane {
    /// The script's directory: certificates, kubeconfigs, logs.
    pub dir: TempDir,
    kubectl: PathBuf,
    /// The main kube-apiserver's port.
    pub port: u16,
    pub runtime: tokio::runtime::Runtime,
    /// An admin client of the main kube-apiserver.
    pub admin: kube::Client,
    _serial: MutexGuard<'static, ()>,
}

impl ControlPlane {
    /// Starts one (`kubectl` from the script's build), applies the manifests server-side, as the
    /// README says, and adds the Node.
    pub fn start(kubectl: PathBuf, tag: &str) -> Self {
        let cp = Self::launch(kubectl, tag, None);
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
        cp.kubectl(&["apply", "--server-side", "-k", &format!("{deploy}/registry")]);
        cp.kubectl(&["apply", "--server-side", "-k", &format!("{deploy}/base")]);
        cp.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}));
        // Pods are admitted once the ServiceAccount controller has made the namespace's default one.
        assert!(
            wait_until(Duration::from_secs(30), || cp.try_kubectl(&["get", "sa", "default", "-n", "registry"]).is_ok()),
            "no default ServiceAccount in registry"
        );
        cp
    }

    /// Starts one with nothing applied; `controllers` replaces kube-controller-manager's list.
    pub fn launch(kubectl: PathBuf, tag: &str, controllers: Option<&str>) -> Self {
        Self::launch_at(kubectl, tag, controllers, "127.0.0.1")
    }

    /// Like [`Self::launch`], with the API server on the node network's host address (which
    /// [`super::node::Node::network`] makes), where kubelets and kube-proxy reach it and which the
    /// `kubernetes` Service's endpoint names.
    pub fn launch_on_node_network(kubectl: PathBuf, tag: &str, controllers: Option<&str>) -> Self {
        Self::launch_at(kubectl, tag, controllers, super::node::HOST_IP)
    }

    fn launch_at(kubectl: PathBuf, tag: &str, controllers: Option<&str>, address: &str) -> Self {
        static SERIAL: Mutex<()> = Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = TempDir::new(tag);
        let port = free_port();
        let mut command = Command::new("bash");
        command
            .args([SCRIPT, "start"])
            .arg(&dir.0)
            .env("APISERVER_PORT", port.to_string())
            .env("APISERVER_ADDRESS", address)
            .env("ETCD_PORT", free_port().to_string())
            .env("ETCD_PEER_PORT", free_port().to_string());
        if let Some(controllers) = controllers {
            command.env("CONTROLLERS", controllers);
        }
        let status = command.status().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let admin = runtime.block_on(client_from(&dir.path("admin.kubeconfig")));
        let cp = Self { dir, kubectl, port, runtime, admin, _serial: serial };
        assert!(status.success(), "control-plane.sh start failed (its output is above)");
        cp
    }

    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self.as_admin(&self.kubectl).args(args).output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args).unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// `program` as the admin: the admin kubeconfig, and the Kubernetes binaries first on `PATH`
    /// (for scripts that call kubectl themselves).
    pub fn as_admin(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let path = format!("{}:{}", self.kubectl.parent().unwrap().display(), std::env::var("PATH").unwrap());
        let mut command = Command::new(program);
        command.env("KUBECONFIG", self.dir.path("admin.kubeconfig")).env("PATH", path);
        command
    }

    /// `kubectl apply --server-side` of one object.
    pub fn apply(&self, object: &serde_json::Value) {
        let mut child = self
            .as_admin(&self.kubectl)
            .args(["apply", "--server-side", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(object.to_string().as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "kubectl apply {object}");
    }

    /// `control-plane.sh COMMAND DIR ARGS...` (stop or start one component).
    pub fn script(&self, command: &str, args: &[&str]) {
        let status = Command::new("bash").args([SCRIPT, command]).arg(&self.dir.0).args(args).status().unwrap();
        assert!(status.success(), "control-plane.sh {command} {args:?}");
    }

    fn pods(client: &kube::Client) -> Api<Pod> {
        Api::namespaced(client.clone(), "registry")
    }

    /// A registry Pod bound to [`NODE`], created through `client` (the admin's, or one of another
    /// API server), then made Running and Ready with `ips` through its status subresource.
    pub fn add_ready_pod(&self, client: &kube::Client, name: &str, ips: &[&str]) {
        let pod = registry_pod::manifest(name, NODE);
        self.runtime.block_on(Self::pods(client).create(&PostParams::default(), &pod)).unwrap();
        self.set_ready(client, name, ips, true);
    }

    pub fn set_ready(&self, client: &kube::Client, name: &str, ips: &[&str], ready: bool) {
        let status = registry_pod::running(ips, ready);
        self.runtime
            .block_on(Self::pods(client).patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
            .unwrap();
    }

    /// Gone at once: without a kubelet, a graceful delete would wait forever.
    pub fn delete_pod(&self, name: &str) {
        let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        self.runtime.block_on(Self::pods(&self.admin).delete(name, &now)).unwrap();
    }

    /// The ready addresses of one family (`IPv4`, `IPv6`) in the Service's EndpointSlices, sorted.
    pub fn slice_addresses(&self, client: &kube::Client, family: &str) -> Vec<String> {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "registry");
        let slices = self
            .runtime
            .block_on(api.list(&ListParams::default().labels("kubernetes.io/service-name=knative")))
            .unwrap();
        let mut ips: Vec<String> = slices
            .items
            .iter()
            .filter(|s| s.address_type == family)
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| e.addresses.clone())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// The files a Pod of ServiceAccount `namespace/name` gets: a token from the TokenRequest API,
    /// the cluster CA and the namespace.
    pub fn service_account_files(&self, namespace: &str, name: &str) -> TempDir {
        let dir = TempDir::new("serviceaccount");
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=2h"]);
        std::fs::write(dir.path("token"), token.trim()).unwrap();
        std::fs::copy(self.dir.path("ca.crt"), dir.path("ca.crt")).unwrap();
        std::fs::write(dir.path("namespace"), namespace).unwrap();
        dir
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash").args([SCRIPT, "stop"]).arg(&self.dir.0).status();
    }
}
