//! `--service NAME=NAMESPACE/SERVICE` and `--answer`: names that follow a Kubernetes Service.

use std::fmt;
use std::str::FromStr;

use hickory_proto::rr::Name;

use super::parse_local_name;

/// `--service NAME=NAMESPACE/SERVICE`: a local name that follows a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    pub name: Name,
    pub namespace: String,
    pub service: String,
}

impl FromStr for ServiceName {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = || format!("'{spec}' is not NAME=NAMESPACE/SERVICE");
        let (name, target) = spec.split_once('=').ok_or_else(bad)?;
        let (namespace, service) = target.split_once('/').ok_or_else(bad)?;
        // Both are DNS-1123 labels in Kubernetes; a host-name check catches typos the same way.
        for part in [namespace, service] {
            if part.contains('.') || parse_local_name(part).is_err() {
                return Err(format!("'{part}' is not a Kubernetes namespace or service name"));
            }
        }
        Ok(Self { name: parse_local_name(name)?, namespace: namespace.into(), service: service.into() })
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.name, self.namespace, self.service)
    }
}

/// What a name that follows a Service answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerMode {
    /// The ready endpoints (pod IPs): clients connect to the pod's port.
    #[default]
    Endpoints,
    /// The Service's cluster IPs: clients connect to the Service's port, through kube-proxy.
    ClusterIp,
}

impl AnswerMode {
    /// The flag's values, as `--answer` takes them.
    pub const NAMES: [&'static str; 2] = ["endpoints", "cluster-ip"];
}

impl FromStr for AnswerMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "endpoints" => Ok(Self::Endpoints),
            "cluster-ip" => Ok(Self::ClusterIp),
            _ => Err(format!("'{text}' is not one of {}", Self::NAMES.join(", "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_names() {
        let s: ServiceName = "knative-local-registry=registry/knative".parse().unwrap();
        assert_eq!(s.name, Name::from_ascii("knative-local-registry.").unwrap());
        assert_eq!((s.namespace.as_str(), s.service.as_str()), ("registry", "knative"));
        assert!("a=registry".parse::<ServiceName>().unwrap_err().contains("NAMESPACE/SERVICE"));
        assert!("a=reg.istry/x".parse::<ServiceName>().unwrap_err().contains("namespace"));
        assert!("bad_name=ns/svc".parse::<ServiceName>().is_err());
    }

    #[test]
    fn parses_answer_modes() {
        for name in AnswerMode::NAMES {
            assert!(name.parse::<AnswerMode>().is_ok(), "{name}");
        }
        assert!("clusterip".parse::<AnswerMode>().unwrap_err().contains("endpoints, cluster-ip"));
    }
}
