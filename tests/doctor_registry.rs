//! `registry-dns doctor --registry` on a node (tests/support/registry_node.rs: its own network
//! namespace, registry-dns on 169.254.20.25, the real registry, Debian's distribution, over plain
//! HTTP or TLS), with containerd's config and hosts.toml as deploy/node/setup.sh writes them into a
//! scratch containerd config (`config_path`). A healthy node exits 0; each broken pull path exits 1
//! and names its fix: the registry down, a CA that did not sign the registry's certificate, no
//! hosts.toml, a plain-HTTP registry behind an https hosts.toml, containerd 1.x without
//! config_path. Needs root (CI runs as root).

mod support;

use std::path::{Path, PathBuf};

use support::TempDir;
use support::doctor_report::{check, verdict};
use support::registry_node::{NAME, REGISTRY, REGISTRY_IP, RegistryNode, make_certificate, node_setup};

/// containerd 1.x's config with the CRI plugin's `config_path` at DIR/certs.d, or without it.
fn containerd_config(dir: &TempDir, with_config_path: bool) -> PathBuf {
    let config = dir.path("config.toml");
    let registry = match with_config_path {
        true => format!("  config_path = \"{}\"\n", dir.path("certs.d").display()),
        false => String::new(),
    };
    std::fs::write(&config, format!("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n{registry}"))
        .unwrap();
    config
}

fn doctor(node: &RegistryNode, config: &Path) -> (Option<i32>, String) {
    node.doctor(&["--registry", "--runtime", "containerd", "--containerd-config", config.to_str().unwrap()])
}

#[test]
fn a_healthy_node_exits_0_plain_http_and_tls() {
    let node = RegistryNode::start("drr-plain", false);
    let config = containerd_config(&node.dir, true);
    node_setup(&config, &[]);
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(0), "{report}");
    assert!(!report.contains("PROBLEM"), "{report}");
    check(
        &report,
        "ok",
        &format!(
            "{}: {REGISTRY} is pulled from http://{REGISTRY}",
            node.dir.path("certs.d").join(REGISTRY).join("hosts.toml").display()
        ),
    );
    check(&report, "ok", &format!("getaddrinfo({NAME}): {REGISTRY_IP}"));
    check(&report, "ok", &format!("GET http://{REGISTRY}/v2/: 200 (registry/2.0)"));
    assert_eq!(
        verdict(&report),
        format!(
            "ok: containerd on this node reaches {REGISTRY}'s registry API at http://{REGISTRY} as its hosts.toml says"
        )
    );

    let node = RegistryNode::start("drr-tls", true);
    let config = containerd_config(&node.dir, true);
    node_setup(&config, &[("REGISTRY_CA", node.ca.as_ref().unwrap().to_str().unwrap())]);
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(0), "{report}");
    check(&report, "ok", &format!("GET https://{REGISTRY}/v2/: 200"));
}

#[test]
fn the_registry_down_is_named_with_its_fix() {
    let mut node = RegistryNode::start("drr-down", false);
    let config = containerd_config(&node.dir, true);
    node_setup(&config, &[]);
    node.stop_registry();
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) =
        check(&report, "PROBLEM", &format!("nothing listens on {REGISTRY} ({REGISTRY_IP}: connection refused)"));
    assert!(fix.starts_with("start the registry, or find why it is not ready: kubectl -n registry get pods"), "{fix}");
    assert!(verdict(&report).starts_with(&format!("PROBLEM: containerd on this node cannot pull from {REGISTRY}")));
}

#[test]
fn a_ca_that_did_not_sign_the_registrys_certificate_is_named_with_its_fix() {
    let node = RegistryNode::start("drr-ca", true);
    let config = containerd_config(&node.dir, true);
    let (other_ca, _, _) = make_certificate(&node.dir, "other", &[NAME]);
    node_setup(&config, &[("REGISTRY_CA", other_ca.to_str().unwrap())]);
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) =
        check(&report, "PROBLEM", &format!("{REGISTRY}'s certificate is not signed by a CA containerd trusts"));
    assert!(line.contains("the system's roots and ") && line.contains("ca.crt"), "{line}");
    assert!(fix.contains("ConfigMap registry-dns-registry-ca") && fix.contains("re-run node setup"), "{fix}");
}

#[test]
fn no_hosts_toml_is_named_with_its_fix() {
    let node = RegistryNode::start("drr-none", false);
    let config = containerd_config(&node.dir, true);
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = check(&report, "PROBLEM", &format!("no hosts.toml for {REGISTRY}"));
    assert!(line.contains("containerd pulls it over HTTPS trusting the system's roots only"), "{line}");
    assert!(fix.starts_with("run node setup (kubectl apply -k deploy/node"), "{fix}");
    // What containerd then meets: HTTPS to a plain-HTTP registry.
    check(&report, "PROBLEM", &format!("{REGISTRY} serves plain HTTP, but containerd is sent there over https"));
}

#[test]
fn a_plain_http_registry_behind_an_https_hosts_toml_is_named_with_its_fix() {
    let node = RegistryNode::start("drr-mismatch", false);
    let config = containerd_config(&node.dir, true);
    let (some_ca, _, _) = make_certificate(&node.dir, "some", &[NAME]);
    node_setup(&config, &[("REGISTRY_TLS", "true"), ("REGISTRY_CA", some_ca.to_str().unwrap())]);
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) = check(
        &report,
        "PROBLEM",
        &format!("{REGISTRY} serves plain HTTP, but containerd is sent there over https (https://{REGISTRY})"),
    );
    assert!(fix.contains(&format!("say http://{REGISTRY}")) && fix.contains("REGISTRY_TLS=false"), "{fix}");
    assert_eq!(report.matches("PROBLEM").count(), 2, "one check and the verdict: {report}");

    // And the other way round: a TLS registry behind an http hosts.toml.
    let node = RegistryNode::start("drr-mismatch-tls", true);
    let config = containerd_config(&node.dir, true);
    node_setup(&config, &[("REGISTRY_TLS", "false")]);
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) =
        check(&report, "PROBLEM", &format!("{REGISTRY} serves HTTPS, but containerd is sent there over http"));
    assert!(fix.contains(&format!("say https://{REGISTRY} with ca = the registry's CA")), "{fix}");
}

#[test]
fn containerd_1_without_config_path_is_named_with_the_line_to_add() {
    let node = RegistryNode::start("drr-nopath", false);
    let config = containerd_config(&node.dir, false);
    let (code, report) = node.doctor(&[
        "--registry",
        "--runtime",
        "containerd",
        "--containerd-config",
        config.to_str().unwrap(),
        "--hosts-dir",
        "/nonexistent",
    ]);
    assert_eq!(code, Some(1), "--hosts-dir wins over the config: {report}");
    let (code, report) = doctor(&node, &config);
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) = check(&report, "PROBLEM", &format!("{} (version 2) sets no config_path", config.display()));
    assert!(
        fix.starts_with(
            "add `config_path = \"/etc/containerd/certs.d\"` under `[plugins.\"io.containerd.grpc.v1.cri\".registry]`"
        ),
        "{fix}"
    );
}

#[test]
fn a_registry_without_a_port_is_a_usage_error() {
    let out =
        std::process::Command::new(support::RegistryDns::BIN).args(["doctor", "--registry", NAME]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not HOST:PORT"), "{stderr}");
}

/// `doctor --registry --runtime RUNTIME` on the node: containers/image's and Docker's files are
/// the node's own /etc/containers and /etc/docker (`RegistryNode::runtime_dirs` lays them there),
/// which the doctor names by those paths.
fn doctor_runtime(node: &RegistryNode, runtime: &str) -> (Option<i32>, String) {
    node.doctor(&["--registry", "--runtime", runtime])
}

/// How the reports name the two runtimes, by `--runtime`.
const OTHER_RUNTIMES: [(&str, &str); 2] =
    [("containers-image", "containers/image (CRI-O, podman)"), ("docker", "dockerd")];

#[test]
fn containers_image_and_docker_without_node_setups_files_are_named_with_the_fix() {
    let node = RegistryNode::start("drr-rt-none", false);
    node.runtime_dirs();
    let (code, report) = doctor_runtime(&node, "containers-image");
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) = check(
        &report,
        "PROBLEM",
        &format!(
            "no [[registry]] for {REGISTRY} in /etc/containers/registries.conf or /etc/containers/registries.conf.d/*.conf"
        ),
    );
    assert!(fix.starts_with("run node setup (kubectl apply -k deploy/node"), "{fix}");
    check(
        &report,
        "PROBLEM",
        &format!("{REGISTRY} serves plain HTTP, but containers/image (CRI-O, podman) is sent there over https"),
    );
    let (code, report) = doctor_runtime(&node, "docker");
    assert_eq!(code, Some(1), "{report}");
    let (_, fix) =
        check(&report, "PROBLEM", &format!("/etc/docker/daemon.json does not list {REGISTRY} in insecure-registries"));
    assert!(fix.starts_with("run node setup"), "{fix}");
    assert!(verdict(&report).starts_with(&format!("PROBLEM: dockerd on this node cannot pull from {REGISTRY}")));
}

#[test]
fn containers_image_and_docker_over_the_wrong_scheme_are_named_with_the_fix() {
    // A plain-HTTP registry, node setup told TLS: both runtimes are sent over https.
    let node = RegistryNode::start("drr-rt-scheme", false);
    node.runtime_dirs();
    let (some_ca, _, _) = make_certificate(&node.dir, "some", &[NAME]);
    let ca = some_ca.to_str().unwrap();
    node.setup_runtimes("install", &node.dir.path("no.pid"), &[("REGISTRY_TLS", "true"), ("REGISTRY_CA", ca)]);
    for (runtime, name) in OTHER_RUNTIMES {
        let (code, report) = doctor_runtime(&node, runtime);
        assert_eq!(code, Some(1), "{report}");
        let (_, fix) =
            check(&report, "PROBLEM", &format!("{REGISTRY} serves plain HTTP, but {name} is sent there over https"));
        let wanted = match runtime {
            "docker" => format!("add \"{REGISTRY}\" to insecure-registries in "),
            _ => "say `insecure = true` for [[registry]]".to_string(),
        };
        assert!(fix.contains(&wanted) && fix.contains("REGISTRY_TLS=false"), "{fix}");
    }
    // The right setting: both exit 0.
    node.setup_runtimes("install", &node.dir.path("no.pid"), &[("REGISTRY_TLS", "false")]);
    for (runtime, _) in OTHER_RUNTIMES {
        let (code, report) = doctor_runtime(&node, runtime);
        assert_eq!(code, Some(0), "{report}");
    }
}

#[test]
fn containers_image_and_docker_with_a_ca_that_did_not_sign_the_registrys_certificate_are_named_with_the_fix() {
    let node = RegistryNode::start("drr-rt-ca", true);
    node.runtime_dirs();
    let (other_ca, _, _) = make_certificate(&node.dir, "other", &[NAME]);
    node.setup_runtimes("install", &node.dir.path("no.pid"), &[("REGISTRY_CA", other_ca.to_str().unwrap())]);
    for ((runtime, name), dir) in OTHER_RUNTIMES.into_iter().zip(["/etc/containers", "/etc/docker"]) {
        let (code, report) = doctor_runtime(&node, runtime);
        assert_eq!(code, Some(1), "{report}");
        let ca = Path::new(dir).join("certs.d").join(REGISTRY).join("ca.crt");
        let (line, fix) =
            check(&report, "PROBLEM", &format!("{REGISTRY}'s certificate is not signed by a CA {name} trusts for it"));
        assert!(line.contains(&ca.display().to_string()), "{line}");
        assert!(fix.contains(&format!("re-run node setup, which writes it to {}", ca.display())), "{fix}");
    }
    // The registry's own CA: both exit 0.
    node.setup_runtimes("install", &node.dir.path("no.pid"), &[]);
    for (runtime, _) in OTHER_RUNTIMES {
        let (code, report) = doctor_runtime(&node, runtime);
        assert_eq!(code, Some(0), "{report}");
    }
}
