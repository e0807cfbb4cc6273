//! `--answer cluster-ip`: a Service's addresses are its cluster IPs (reachable from nodes and
//! pods through kube-proxy), for clients that should go through the Service's own port.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::trim_metadata;

/// The cluster IPs of the (one) watched Service; none for a headless Service or when it is gone.
pub fn addresses(services: &[Arc<Service>]) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(|spec| spec.cluster_ips.clone().unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect()))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Drops what [`addresses`] never reads before the Service is stored (its ports, selector,
/// status, annotations such as kubectl's last-applied-configuration).
pub fn trim(service: &mut Service) {
    trim_metadata(&mut service.metadata);
    service.status = None;
    service.spec = service.spec.take().map(|spec| ServiceSpec {
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(cluster_ip: Option<&str>, cluster_ips: Option<&[&str]>) -> Arc<Service> {
        Arc::new(Service {
            spec: Some(ServiceSpec {
                cluster_ip: cluster_ip.map(String::from),
                cluster_ips: cluster_ips.map(|ips| ips.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn takes_cluster_ips_of_both_families_and_nothing_for_headless() {
        let dual = service(Some("10.96.0.20"), Some(&["10.96.0.20", "fd00:96::20"]));
        let got: Vec<String> = addresses(&[dual]).iter().map(IpAddr::to_string).collect();
        assert_eq!(got, ["10.96.0.20", "fd00:96::20"]);
        assert_eq!(addresses(&[service(Some("10.96.0.21"), None)]), ["10.96.0.21".parse::<IpAddr>().unwrap()]);
        assert!(addresses(&[service(Some("None"), Some(&["None"]))]).is_empty());
        assert!(addresses(&[]).is_empty());
    }

    #[test]
    fn trimming_keeps_the_cluster_ips() {
        let full = service(Some("10.96.0.20"), Some(&["10.96.0.20", "fd00:96::20"]));
        let mut trimmed = (*full).clone();
        trimmed.spec.as_mut().unwrap().selector = Some([("app".to_string(), "knative".to_string())].into());
        trim(&mut trimmed);
        assert_eq!(addresses(&[Arc::new(trimmed.clone())]), addresses(&[full]));
        assert!(trimmed.spec.unwrap().selector.is_none());
    }
}
