//! `--answer endpoints`: a Service's addresses are the ready endpoints of all its EndpointSlices.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

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
}
