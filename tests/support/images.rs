//! The images a test node runs, built here without a daemon (tests/cluster/images/build.py): the
//! pause binary compiled static from tests/cluster/images/pause.c, registry-dns's binary from
//! `deploy/build-static.sh` (the Dockerfile's build, with its file capabilities: the one tests/run.sh
//! made and names in `REGISTRY_DNS_STATIC_BINARY`, else built here), crane and CoreDNS from
//! `control-plane.sh build-e2e` (CoreDNS with cap_net_bind_service as its image has it), and the
//! musl build of tests/resolvers/lookup.c.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Builds every image into a directory under target/ and returns it (one OCI archive per image).
pub fn build(crane: &Path, coredns: &Path, lookup_musl: &Path) -> Result<PathBuf, String> {
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| Path::new(ROOT).join("target"));
    let out = target.join("kubelet-cluster-images");
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let pause = bin.join("pause");
    run(Command::new("cc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&pause)
        .arg(format!("{ROOT}/tests/cluster/images/pause.c")))?;
    let registry_dns = match std::env::var_os("REGISTRY_DNS_STATIC_BINARY") {
        // tests/run.sh built it (see there why not here).
        Some(built) => PathBuf::from(built),
        None => {
            run(Command::new("sh").arg(format!("{ROOT}/deploy/build-static.sh")).arg(&bin).current_dir(ROOT))?;
            bin.join("registry-dns")
        }
    };
    let chart =
        std::fs::read_to_string(format!("{ROOT}/deploy/helm/registry-dns/Chart.yaml")).map_err(|e| e.to_string())?;
    let version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or("no appVersion in Chart.yaml")?;
    let revision = Command::new("git")
        .args(["-C", ROOT, "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_string(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let coredns_copy = bin.join("coredns");
    std::fs::copy(coredns, &coredns_copy).map_err(|e| format!("{}: {e}", coredns.display()))?;
    run(Command::new("setcap").arg("cap_net_bind_service=+ep").arg(&coredns_copy))?;
    // The build's directory is named after its version (control-plane.sh: coredns-vX.Y.Z).
    let coredns_version = coredns
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .and_then(|d| d.strip_prefix("coredns-"))
        .ok_or_else(|| format!("no version in {}", coredns.display()))?
        .to_string();
    let images = out.join("oci");
    run(Command::new("python3")
        .arg(format!("{ROOT}/tests/cluster/images/build.py"))
        .arg(&images)
        .arg("--pause")
        .arg(&pause)
        .arg("--registry-dns")
        .arg(&registry_dns)
        .arg("--crane")
        .arg(crane)
        .arg("--coredns")
        .arg(&coredns_copy)
        .args(["--coredns-version", &coredns_version])
        .arg("--lookup-musl")
        .arg(lookup_musl)
        .args(["--version", &version, "--revision", &revision]))?;
    Ok(images)
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{command:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}
