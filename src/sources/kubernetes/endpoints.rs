//! `--answer endpoints`: a Service's addresses are the ready endpoints of all its EndpointSlices.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};

use super::trim_metadata;

/// Merges every slice of one Service into its de-duplicated, sorted addresses. An endpoint counts
/// unless `conditions.ready` is false (unknown counts as ready, as in CoreDNS); FQDN slices and
/// unparsable addresses are skipped.
pub fn addresses(slices: &[Arc<EndpointSlice>]) -> Vec<IpAddr> {
    let mut addresses = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if ready {
                addresses.extend(endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
            }
        }
    }
    addresses.into_iter().collect()
}

/// Drops what [`addresses`] never reads before the slice is stored: a stored slice costs about a
/// third as much, which matters for a Service with thousands of endpoints, held twice while a
/// relist is buffered.
pub fn trim(slice: &mut EndpointSlice) {
    trim_metadata(&mut slice.metadata);
    slice.ports = None;
    for endpoint in &mut slice.endpoints {
        let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
        *endpoint = Endpoint {
            addresses: std::mem::take(&mut endpoint.addresses),
            conditions: Some(EndpointConditions { ready, ..Default::default() }),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;

    fn slice(family: &str, endpoints: &[(&str, Option<bool>)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            address_type: family.into(),
            endpoints: endpoints
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions { ready: *ready, ..Default::default() }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn merges_slices_keeps_ready_and_unknown_drops_not_ready_and_duplicates() {
        let slices = [
            slice("IPv4", &[("10.0.0.2", Some(true)), ("10.0.0.1", None), ("10.0.0.3", Some(false))]),
            slice("IPv4", &[("10.0.0.2", Some(true))]),
            slice("IPv6", &[("fd00::1", Some(true))]),
            slice("FQDN", &[("registry.example", Some(true))]),
        ];
        let got: Vec<String> = addresses(&slices).iter().map(IpAddr::to_string).collect();
        assert_eq!(got, ["10.0.0.1", "10.0.0.2", "fd00::1"]);
    }

    #[test]
    fn trimming_keeps_what_the_addresses_depend_on() {
        let mut full = slice("IPv4", &[("10.0.0.2", Some(true)), ("10.0.0.1", None), ("10.0.0.3", Some(false))]);
        let s = Arc::make_mut(&mut full);
        s.metadata.name = Some("knative-abc".into());
        s.metadata.resource_version = Some("42".into());
        s.metadata.labels = Some([("kubernetes.io/service-name".to_string(), "knative".to_string())].into());
        s.endpoints[0].target_ref = Some(ObjectReference { name: Some("pod".into()), ..Default::default() });
        s.endpoints[0].node_name = Some("node-1".into());
        let mut trimmed = (*full).clone();
        trim(&mut trimmed);
        assert_eq!(addresses(&[Arc::new(trimmed.clone())]), addresses(&[full]));
        assert_eq!(trimmed.metadata.name.as_deref(), Some("knative-abc"), "the store's key");
        assert_eq!(trimmed.metadata.resource_version.as_deref(), Some("42"));
        assert!(trimmed.metadata.labels.is_none() && trimmed.endpoints[0].target_ref.is_none());
        assert!(trimmed.endpoints[0].node_name.is_none());
    }
}
