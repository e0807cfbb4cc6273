//! What CRI-O, podman, buildah and skopeo do when they pull from the registry, read from their
//! files the way containers/image (the library they pull through) reads them:
//! `registries.conf`, then `registries.conf.d/*.conf` in name order, where the last `[[registry]]`
//! whose `prefix` (or `location`) is the registry decides (`insecure = true`: HTTPS without
//! verifying, then plain HTTP); version 1's `[registries.insecure] registries` list counts too.
//! The registry's CAs are the `*.crt` files of the first of `certs.d/<host:port>` under
//! /etc/containers and /etc/docker that exists, added to the system's roots.

use std::path::{Path, PathBuf};

use super::containerd::Endpoint;
use super::registry_verdict::GET_CA;
use super::runtime::{NODE_SETUP, PLAIN_SETTING, Runtime, RuntimeView, ca_files, whose};
use super::verdict::Check;

/// The drop-in node setup writes.
pub const DROPIN: &str = "registries.conf.d/50-registry-dns.conf";

/// containers/image's configuration directory (/etc/containers) and Docker's (/etc/docker,
/// whose certs.d it reads too).
pub struct ContainersImage {
    pub dir: PathBuf,
    pub docker_dir: PathBuf,
}

/// The `[[registry]]` that decides: the file it is in, and its `insecure`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    file: PathBuf,
    insecure: bool,
    blocked: bool,
}

impl Runtime for ContainersImage {
    fn present(&self) -> bool {
        self.dir.is_dir()
    }

    fn read(&self, registry: &str) -> Result<RuntimeView, String> {
        let mut checks = Vec::new();
        let mut entry = None;
        for file in config_files(&self.dir) {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            match parse_entry(&file, &text, registry) {
                Ok(Some(found)) => entry = Some(found),
                Ok(None) => {}
                Err(e) => checks.push(Check::problem(
                    format!(
                        "{}: {e}: containers/image refuses every pull while a registries file does not parse",
                        file.display()
                    ),
                    "fix or delete the file".to_string(),
                )),
            }
        }
        let dropin = self.dir.join(DROPIN);
        let certs = [self.dir.join("certs.d").join(registry), self.docker_dir.join("certs.d").join(registry)];
        let certs_dir = certs.iter().find(|d| d.is_dir()).cloned();
        let ca = certs_dir.as_deref().map(ca_files).unwrap_or_default();
        match &entry {
            Some(Entry { file, blocked: true, .. }) => checks.push(Check::problem(
                format!("{}: [[registry]] {registry} sets blocked = true: every pull from it is refused", file.display()),
                format!("remove `blocked = true` from {}", file.display()),
            )),
            Some(Entry { file, insecure, .. }) => checks.push(Check::ok(format!(
                "{}: [[registry]] {registry} insecure = {insecure}: pulled over {}{}",
                file.display(),
                if *insecure { "plain HTTP (after HTTPS without verifying)" } else { "HTTPS" },
                whose(file)
            ))),
            None if ca.is_empty() => checks.push(Check::problem(
                format!(
                    "no [[registry]] for {registry} in {} or {}/*.conf, and no CA in {}: containers/image pulls it over \
                     HTTPS trusting the system's roots only",
                    self.dir.join("registries.conf").display(),
                    self.dir.join("registries.conf.d").display(),
                    certs[0].display()
                ),
                NODE_SETUP.to_string(),
            )),
            None => {}
        }
        if let Some(dir) = &certs_dir {
            let names: Vec<String> = ca.iter().map(|f| format!("{}{}", f.display(), whose(f))).collect();
            checks.push(Check::ok(format!("{}: CA files trusted for {registry}: {}", dir.display(), names.join(", "))));
        }
        let insecure = entry.as_ref().is_some_and(|e| e.insecure);
        let endpoint = Endpoint::new(if insecure { "http" } else { "https" }, registry, ca)?;
        let scheme_file = entry.as_ref().map_or(dropin.clone(), |e| e.file.clone()).display().to_string();
        Ok(RuntimeView {
            name: "containers/image (CRI-O, podman)",
            checks,
            endpoint,
            insecure_fallback: insecure,
            to_plain: format!(
                "make {scheme_file} say `insecure = true` for [[registry]] location = \"{registry}\" (CRI-O re-reads it \
                 on SIGHUP): {PLAIN_SETTING}"
            ),
            to_tls: format!(
                "put the registry's CA ({GET_CA}) in the ConfigMap registry-dns-registry-ca: node setup writes it to {} \
                 and `insecure = false` to {}",
                certs[0].join("ca.crt").display(),
                dropin.display()
            ),
            ca_place: format!("to {}", certs[0].join("ca.crt").display()),
            source: "registries.conf(.d) and certs.d".into(),
            scheme_file,
        })
    }
}

/// registries.conf, then the drop-ins in name order.
fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut dropins: Vec<PathBuf> = std::fs::read_dir(dir.join("registries.conf.d"))
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    dropins.retain(|f| f.extension().is_some_and(|e| e == "conf"));
    dropins.sort();
    let mut files = vec![dir.join("registries.conf")];
    files.extend(dropins);
    files
}

/// The last entry in `text` for `registry`, if any.
fn parse_entry(file: &Path, text: &str, registry: &str) -> Result<Option<Entry>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
    let mut found = None;
    let v1 = table.get("registries").and_then(|r| r.get("insecure")).and_then(|i| i.get("registries"));
    if v1.and_then(toml::Value::as_array).is_some_and(|list| list.iter().any(|r| r.as_str() == Some(registry))) {
        found = Some(Entry { file: file.to_path_buf(), insecure: true, blocked: false });
    }
    for entry in table.get("registry").and_then(toml::Value::as_array).into_iter().flatten() {
        let prefix = entry.get("prefix").or(entry.get("location")).and_then(toml::Value::as_str);
        if prefix == Some(registry) {
            let flag = |key: &str| entry.get(key).and_then(toml::Value::as_bool).unwrap_or(false);
            found = Some(Entry { file: file.to_path_buf(), insecure: flag("insecure"), blocked: flag("blocked") });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_entry_for_the_registry_decides() {
        let file = Path::new("/etc/containers/registries.conf.d/50-registry-dns.conf");
        let text = "[[registry]]\nlocation = \"knative-local-registry:5000\"\ninsecure = true\n\
                    [[registry]]\nprefix = \"other:5000\"\nlocation = \"mirror:5000\"\n";
        let entry = parse_entry(file, text, "knative-local-registry:5000").unwrap().unwrap();
        assert!(entry.insecure && !entry.blocked);
        assert_eq!(parse_entry(file, text, "mirror:5000").unwrap(), None, "prefix wins over location");
        assert!(parse_entry(file, text, "other:5000").unwrap().is_some());
        let v1 = "[registries.insecure]\nregistries = ['knative-local-registry:5000']\n";
        assert!(parse_entry(file, v1, "knative-local-registry:5000").unwrap().unwrap().insecure);
        assert!(parse_entry(file, "[[registry]\n", "x:1").is_err());
    }
}
