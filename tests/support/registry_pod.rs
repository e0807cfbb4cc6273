//! The registry Pod the control-plane tests create: `deploy/registry`'s labels and the registry
//! namespace's restricted Pod Security level, bound to a node, and the status a kubelet would report
//! for it (there is no kubelet).

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// A registry Pod named `name`, bound to `node`.
pub fn manifest(name: &str, node: &str) -> Pod {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "registry"}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "registry",
                "image": "docker.io/library/registry:2",
                "ports": [{"containerPort": 5000}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    serde_json::from_value(pod).unwrap()
}

/// A status patch: Running with `ips` (the first is `podIP`), Ready or not.
pub fn running(ips: &[&str], ready: bool) -> serde_json::Value {
    let pod_ips: Vec<serde_json::Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"status": {
        "phase": "Running",
        "podIP": ips[0],
        "podIPs": pod_ips,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }})
}
