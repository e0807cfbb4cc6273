//! What dockerd does when it pulls from the registry, read from its files the way it reads them:
//! daemon.json's `insecure-registries` (host:port entries, or CIDRs matched against the
//! registry's addresses: HTTPS without verifying, then plain HTTP), and the `*.crt` files of
//! `certs.d/<host:port>`, added to the system's roots for that registry.

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use ipnet::IpNet;

use super::containerd::Endpoint;
use super::registry_verdict::GET_CA;
use super::runtime::{NODE_SETUP, PLAIN_SETTING, Runtime, RuntimeView, ca_files, on_path, whose};
use super::verdict::Check;
use crate::node_setup::daemon_json::{INSECURE_REGISTRIES, state_path};

/// Docker's configuration directory (/etc/docker).
pub struct Docker(pub PathBuf);

impl Runtime for Docker {
    fn present(&self) -> bool {
        self.0.join("daemon.json").exists() || on_path("dockerd")
    }

    fn read(&self, registry: &str) -> Result<RuntimeView, String> {
        let file = self.0.join("daemon.json");
        let certs = self.0.join("certs.d").join(registry);
        let ca = ca_files(&certs);
        let mut checks = Vec::new();
        let listed = match std::fs::read_to_string(&file) {
            Err(_) => Vec::new(),
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(value) => value
                    .get(INSECURE_REGISTRIES)
                    .and_then(|v| v.as_array())
                    .map(|list| list.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
                Err(e) => {
                    checks.push(Check::problem(
                        format!("{} is not valid JSON ({e}): dockerd does not start with it", file.display()),
                        format!("fix {}", file.display()),
                    ));
                    Vec::new()
                }
            },
        };
        let entry = insecure_entry(&listed, registry);
        let merged = match state_path(&file).exists() {
            true => "",
            false => " (not merged by node setup)",
        };
        match &entry {
            Some(entry) => checks.push(Check::ok(format!(
                "{}: {INSECURE_REGISTRIES} lists {entry}: dockerd pulls {registry} over plain HTTP (after HTTPS without \
                 verifying){merged}",
                file.display()
            ))),
            None if ca.is_empty() => checks.push(Check::problem(
                format!(
                    "{} does not list {registry} in {INSECURE_REGISTRIES}, and there is no CA in {}: dockerd pulls it \
                     over HTTPS trusting the system's roots only",
                    file.display(),
                    certs.display()
                ),
                NODE_SETUP.to_string(),
            )),
            None => {}
        }
        if !ca.is_empty() {
            let names: Vec<String> = ca.iter().map(|f| format!("{}{}", f.display(), whose(f))).collect();
            checks.push(Check::ok(format!(
                "{}: CA files trusted for {registry}: {}",
                certs.display(),
                names.join(", ")
            )));
        }
        let insecure = entry.is_some();
        let endpoint = Endpoint::new(if insecure { "http" } else { "https" }, registry, ca)?;
        Ok(RuntimeView {
            name: "dockerd",
            checks,
            endpoint,
            insecure_fallback: insecure,
            scheme_file: file.display().to_string(),
            to_plain: format!(
                "add \"{registry}\" to {INSECURE_REGISTRIES} in {}, then send dockerd SIGHUP (kill -HUP $(cat \
                 /var/run/docker.pid)): {PLAIN_SETTING}",
                file.display()
            ),
            to_tls: format!(
                "put the registry's CA ({GET_CA}) in the ConfigMap registry-dns-registry-ca: node setup writes it to {} \
                 and leaves {registry} out of {INSECURE_REGISTRIES}",
                certs.join("ca.crt").display()
            ),
            ca_place: format!("to {}", certs.join("ca.crt").display()),
            source: "daemon.json and certs.d".into(),
        })
    }
}

/// The `insecure-registries` entry that covers `registry`: itself, or a CIDR holding one of its
/// addresses.
fn insecure_entry(listed: &[String], registry: &str) -> Option<String> {
    if let Some(entry) = listed.iter().find(|e| *e == registry) {
        return Some(entry.clone());
    }
    let nets: Vec<(&String, IpNet)> = listed.iter().filter_map(|e| Some((e, e.parse::<IpNet>().ok()?))).collect();
    if nets.is_empty() {
        return None;
    }
    let addresses: Vec<_> = registry.to_socket_addrs().map(|a| a.collect()).unwrap_or_default();
    nets.into_iter()
        .find(|(_, net)| addresses.iter().any(|a: &std::net::SocketAddr| net.contains(&a.ip())))
        .map(|(entry, _)| entry.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_or_a_cidr_with_its_address_makes_it_insecure() {
        let listed = vec!["10.0.0.0/8".to_string(), "knative-local-registry:5000".to_string()];
        assert_eq!(
            insecure_entry(&listed, "knative-local-registry:5000").as_deref(),
            Some("knative-local-registry:5000")
        );
        assert_eq!(insecure_entry(&listed[..1], "127.0.0.1:5000"), None);
        assert_eq!(insecure_entry(&["127.0.0.0/8".to_string()], "127.0.0.1:5000").as_deref(), Some("127.0.0.0/8"));
    }
}
