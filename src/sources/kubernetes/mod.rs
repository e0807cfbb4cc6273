//! The Kubernetes source: names that follow a Service, live.
//!
//! `--service NAME=NAMESPACE/SERVICE` makes NAME answer with the ready endpoints of the Service's
//! `discovery.k8s.io/v1` EndpointSlices (`--answer endpoints`, the default) or with the Service's
//! cluster IPs (`--answer cluster-ip`). Each distinct Service is watched once (`watch`), however
//! many names point at it. Until its first complete list a name answers SERVFAIL and `/readyz`
//! says which source is not synced; afterwards the last known addresses are served through any
//! API outage.
//!
//! RBAC: get, list and watch on `endpointslices` (group `discovery.k8s.io`) or on `services`
//! (core group), in the named namespaces only.

mod client;
mod cluster_ip;
mod endpoints;
mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client};

use self::watch::Watch;
use crate::metrics::Metrics;
pub use crate::model::{AnswerMode, ServiceName};
use crate::names::Names;
use crate::ops::Readiness;

/// The watches to run, ready to start; their sources are registered as not yet synced.
pub struct KubernetesSource {
    client: Client,
    mode: AnswerMode,
    /// (namespace, service) -> the names that follow it.
    services: BTreeMap<(String, String), Vec<Name>>,
}

impl KubernetesSource {
    /// Connects (reads the kubeconfig or the in-cluster service account; no request is made
    /// yet) and registers every watched Service with `readiness`.
    pub async fn new(
        names: &[ServiceName],
        mode: AnswerMode,
        kubeconfig: Option<&Path>,
        readiness: &Readiness,
    ) -> anyhow::Result<Self> {
        let client = connect(kubeconfig).await?;
        let mut services: BTreeMap<(String, String), Vec<Name>> = BTreeMap::new();
        for n in names {
            services.entry((n.namespace.clone(), n.service.clone())).or_default().push(n.name.clone());
        }
        for (namespace, service) in services.keys() {
            readiness.register(&source_label(mode, namespace, service));
        }
        Ok(Self { client, mode, services })
    }

    /// Starts one watch per Service; they run until the process ends.
    pub fn spawn(self, table: Arc<Names>, readiness: Arc<Readiness>, metrics: &Metrics) {
        for ((namespace, service), names) in self.services {
            let source = source_label(self.mode, &namespace, &service);
            let (table, readiness, stats) = (table.clone(), readiness.clone(), metrics.source(&source));
            match self.mode {
                AnswerMode::Endpoints => {
                    let watch = Watch::<EndpointSlice> {
                        api: Api::namespaced(self.client.clone(), &namespace),
                        config: watch_config().labels(&format!("kubernetes.io/service-name={service}")),
                        source,
                        names,
                        addresses: endpoints::addresses,
                        stats,
                        trim: endpoints::trim,
                    };
                    tokio::spawn(watch.run(table, readiness));
                }
                AnswerMode::ClusterIp => {
                    let watch = Watch::<Service> {
                        api: Api::namespaced(self.client.clone(), &namespace),
                        config: watch_config().fields(&format!("metadata.name={service}")),
                        source,
                        names,
                        addresses: cluster_ip::addresses,
                        stats,
                        trim: cluster_ip::trim,
                    };
                    tokio::spawn(watch.run(table, readiness));
                }
            }
        }
    }
}

/// Keeps only what identifies a stored object (the reflector's key, its version).
fn trim_metadata(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        uid: meta.uid.take(),
        ..Default::default()
    };
}

/// How long one watch request lasts (the API server's `timeoutSeconds`); kube abandons a watch
/// that has sent no event for this long plus 5 s. kube's default is 290 s. A minute bounds how long
/// a stalled watch (a proxy or load balancer that keeps the connection open but passes nothing)
/// goes unnoticed, for one watch request a minute per Service.
const WATCH_TIMEOUT_SECONDS: u32 = 60;

fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS)
}

/// How a watched Service is named in logs, `/readyz` and metrics.
pub fn source_label(mode: AnswerMode, namespace: &str, service: &str) -> String {
    match mode {
        AnswerMode::Endpoints => format!("endpointslices {namespace}/{service}"),
        AnswerMode::ClusterIp => format!("service {namespace}/{service}"),
    }
}

/// A client from `--kubeconfig`, or kube's usual inference: the in-cluster service account, else
/// `KUBECONFIG` / `~/.kube/config`. TLS is rustls with the ring provider installed explicitly:
/// rustls without a process-wide provider compiles and then panics at the first connection.
async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no Kubernetes configuration (in-cluster or kubeconfig)")?,
    };
    client::build(config).context("creating the Kubernetes client")
}
