//! A node with the registry on it, for the pull-path tests (`doctor_registry.rs`,
//! `containerd_cri.rs`): a network namespace whose resolv.conf names registry-dns on
//! 169.254.20.25 (as deploy/node leaves a node), registry-dns there answering
//! `knative-local-registry` with the registry's address, and the real registry (Debian's
//! `docker-registry`, distribution) on that address, port 5000, over plain HTTP or over TLS with a
//! certificate from a CA made here (standing in for deploy/registry/tls's cert-manager CA).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::netns::Netns;
use super::{RegistryDns, TempDir, wait_until};

pub const NAME: &str = "knative-local-registry";
pub const REGISTRY: &str = "knative-local-registry:5000";
/// The registry's address on the node (standing in for its pod's).
pub const REGISTRY_IP: &str = "10.203.0.10";

/// A CA and the certificate it signed for `names` (server auth): (ca.crt, tls.crt, tls.key).
pub fn make_certificate(dir: &TempDir, tag: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.path(&format!("{tag}-{name}")).to_str().unwrap().to_string();
    let (ca_key, ca_crt, key, csr, ext, crt) =
        (p("ca.key"), p("ca.crt"), p("tls.key"), p("tls.csr"), p("tls.ext"), p("tls.crt"));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl (tests/run.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let subject = format!("/CN={tag} CA");
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", &subject];
    ca.extend(ec);
    ca.extend(["-keyout", &ca_key, "-out", &ca_crt]);
    openssl(&ca);
    let mut request = vec!["req", "-subj", "/CN=knative-local-registry"];
    request.extend(ec);
    request.extend(["-keyout", &key, "-out", &csr]);
    openssl(&request);
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let extensions =
        format!("subjectAltName={}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n", sans.join(","));
    std::fs::write(&ext, extensions).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    (ca_crt.into(), crt.into(), key.into())
}

/// Debian's registry (distribution) on `ip`:5000 inside a network namespace, with
/// deploy/registry/base/config.yml's settings, plain HTTP or TLS; killed on drop.
pub struct Registry {
    child: Child,
}

impl Registry {
    pub fn start(ns: &Netns, dir: &TempDir, ip: &str, tls: Option<(&Path, &Path)>) -> Self {
        let storage = dir.path("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let tls = match tls {
            Some((crt, key)) => format!("  tls:\n    certificate: {}\n    key: {}\n", crt.display(), key.display()),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {ip}:5000\n  secret: registry-dns-test\n{tls}",
            storage.display()
        );
        let file = dir.path("registry.yml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.path("registry.log")).unwrap();
        let child = ns
            .exec(&["/usr/bin/docker-registry", "serve", file.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (tests/run.sh installs it)");
        let registry = Self { child };
        let addr = format!("{ip}:5000").parse().unwrap();
        let up = wait_until(Duration::from_secs(30), || {
            ns.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        });
        assert!(
            up,
            "the registry did not listen on {addr}: {}",
            std::fs::read_to_string(dir.path("registry.log")).unwrap_or_default()
        );
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a one-layer image with `crane` (no base, nothing pulled) and pushes it to `reference`
/// from inside `ns` (trusting `ca`, or over plain HTTP without one); its digest.
pub fn push_image(ns: &Netns, dir: &TempDir, crane: &Path, ca: Option<&Path>, reference: &str) -> String {
    let content = dir.path("layer");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello.txt"), format!("{reference}\n")).unwrap();
    let layer = dir.path("layer.tar");
    let tar = Command::new("tar")
        .args(["-C", content.to_str().unwrap(), "-cf", layer.to_str().unwrap(), "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let image = dir.path("image.tar");
    let crane = crane.to_str().unwrap();
    let built = Command::new(crane)
        .args(["append", "-f", layer.to_str().unwrap(), "-t", reference, "-o", image.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(built.status.success(), "crane append: {}", String::from_utf8_lossy(&built.stderr));
    let crane_in_ns = |args: &[&str]| -> Output {
        let mut argv = vec![crane];
        argv.extend_from_slice(args);
        if ca.is_none() {
            argv.push("--insecure");
        }
        let mut command = ns.exec(&argv);
        if let Some(ca) = ca {
            command.env("SSL_CERT_FILE", ca);
        }
        command.stdin(Stdio::null()).output().unwrap()
    };
    let pushed = crane_in_ns(&["push", image.to_str().unwrap(), reference]);
    assert!(pushed.status.success(), "crane push: {}", String::from_utf8_lossy(&pushed.stderr));
    let digest = crane_in_ns(&["digest", reference]);
    assert!(digest.status.success(), "crane digest: {}", String::from_utf8_lossy(&digest.stderr));
    String::from_utf8_lossy(&digest.stdout).trim().to_string()
}

/// The node: its namespace, registry-dns, and the registry while it runs.
pub struct RegistryNode {
    pub registry: Option<Registry>,
    _server: RegistryDns,
    pub ns: Netns,
    pub dir: TempDir,
    /// The registry's CA, when it serves TLS.
    pub ca: Option<PathBuf>,
}

impl RegistryNode {
    /// The node, with the registry serving plain HTTP, or TLS with a certificate for
    /// knative-local-registry from a CA of its own.
    pub fn start(tag: &str, tls: bool) -> Self {
        let ns = Netns::new(tag, "nameserver 169.254.20.25\noptions timeout:1 attempts:2\n");
        ns.write_etc("nsswitch.conf", "hosts: files dns\n");
        // The registry's address on the node's loopback: local delivery, as for a pod on the node.
        ns.ip(&["addr", "add", &format!("{REGISTRY_IP}/32"), "dev", "lo"]);
        let record = format!("{NAME}={REGISTRY_IP}");
        let server = RegistryDns::start_link_local(
            ns.exec(&[RegistryDns::BIN]),
            &["--record", &record, "--upstream", "127.0.0.1:9"],
        );
        let dir = TempDir::new(tag);
        let mut node = Self { registry: None, _server: server, ns, dir, ca: None };
        let certificate = tls.then(|| make_certificate(&node.dir, "registry", &[NAME, "knative.registry.svc"]));
        node.ca = certificate.as_ref().map(|(ca, _, _)| ca.clone());
        node.start_registry(certificate.as_ref().map(|(_, crt, key)| (crt.as_path(), key.as_path())));
        node
    }

    /// The registry on REGISTRY_IP:5000.
    pub fn start_registry(&mut self, tls: Option<(&Path, &Path)>) {
        self.registry = Some(Registry::start(&self.ns, &self.dir, REGISTRY_IP, tls));
    }

    /// Stops the registry (its port then refuses connections).
    pub fn stop_registry(&mut self) {
        self.registry = None;
    }

    /// `registry-dns doctor ARGS` on the node: exit code and report.
    pub fn doctor(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut argv = vec![RegistryDns::BIN, "doctor"];
        argv.extend_from_slice(args);
        let out = self.ns.exec(&argv).env_remove("RUST_LOG").output().unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("registry-dns doctor {args:?}:\n{report}");
        (out.status.code(), report)
    }

    /// The node's /etc/containers and /etc/docker: /etc/netns/NAME/{containers,docker}, which
    /// `ip netns exec` lays over them for every process of the node. /etc/containers starts
    /// with this host's policy.json and registries.conf (Debian's, as a node with containers-common
    /// has them); /etc/docker empty.
    pub fn runtime_dirs(&self) -> (PathBuf, PathBuf) {
        let etc = PathBuf::from(self.ns.etc());
        let (containers, docker) = (etc.join("containers"), etc.join("docker"));
        std::fs::create_dir_all(containers.join("registries.conf.d")).unwrap();
        std::fs::create_dir_all(&docker).unwrap();
        for file in ["policy.json", "registries.conf"] {
            let _ = std::fs::copy(Path::new("/etc/containers").join(file), containers.join(file));
        }
        (containers, docker)
    }

    /// deploy/node/setup.sh ACTION for containers/image and Docker only, on the node's
    /// directories (`runtime_dirs`), dockerd's pid in `pidfile`, with the registry's CA when it
    /// serves TLS, plus `env` (which wins); its output.
    pub fn setup_runtimes(&self, action: &str, pidfile: &Path, env: &[(&str, &str)]) -> String {
        let (containers, docker) = (format!("{}/containers", self.ns.etc()), format!("{}/docker", self.ns.etc()));
        let mut all = vec![
            ("ACTION", action),
            ("CONTAINERD", "off"),
            ("CONTAINERS_IMAGE", "auto"),
            ("DOCKER", "auto"),
            ("CONTAINERS_DIR", containers.as_str()),
            ("DOCKER_DIR", docker.as_str()),
            ("DOCKER_PIDFILE", pidfile.to_str().unwrap()),
            ("REGISTRY_DNS", RegistryDns::BIN),
        ];
        let ca = self.ca.as_ref().map(|ca| ca.display().to_string());
        if let Some(ca) = &ca {
            all.push(("REGISTRY_CA", ca.as_str()));
        }
        all.extend_from_slice(env);
        node_setup(&self.dir.path("no-containerd.toml"), &all)
    }

    /// [`push_image`] from the node.
    pub fn push_image(&self, crane: &Path, reference: &str) -> String {
        push_image(&self.ns, &self.dir, crane, self.ca.as_deref(), reference)
    }
}

pub const SETUP_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/node/setup.sh");

/// Runs deploy/node/setup.sh (ACTION=install, resolver untouched: MODE=none) on this host's files
/// as the node setup pod runs it on a node, with containerd's config at `containerd_config`,
/// k3s's directories absent and the other runtimes off (`env` turns them on, with their scratch
/// directories), plus `env` (REGISTRY_TLS, REGISTRY_CA...); its output.
pub fn node_setup(containerd_config: &Path, env: &[(&str, &str)]) -> String {
    let scratch = containerd_config.parent().unwrap();
    let out = Command::new("sh")
        .arg(SETUP_SH)
        .env("SETUP_TEST", "1")
        .env("MODE", "none")
        .env("CONFIG", concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/node/registry-dns.conf"))
        .env("CONTAINERD_CONFIG", containerd_config)
        .env("K3S_CONFIG_DIR", scratch.join("no-k3s"))
        .env("K3S_DATA_DIR", scratch.join("no-k3s-data"))
        .env("CONTAINERS_IMAGE", "off")
        .env("DOCKER", "off")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "setup.sh: {text}");
    eprintln!("setup.sh {env:?}:\n{text}");
    text
}
