//! `--metrics-listen`: `/metrics` alone on its own address (the DaemonSet's node address, port
//! 9253), everything else 404 there, while `--ops-listen` keeps `/healthz`, `/readyz` and
//! `/metrics` for the probes.

mod support;

use std::net::SocketAddr;

use support::{RegistryDns, dig, http_get, run_to_exit};

const LOCAL: &str = "knative-local-registry=10.0.0.10";

/// The `metrics=` field of the startup line: an address, or `off`.
fn metrics_field(s: &RegistryDns) -> String {
    let logs = s.logs();
    let line = logs.iter().find(|l| l.contains("registry-dns serving")).expect("startup line");
    let rest = &line[line.find(" metrics=").expect("metrics field") + " metrics=".len()..];
    rest.split(' ').next().unwrap().to_string()
}

#[test]
fn the_metrics_listener_serves_metrics_and_nothing_else() {
    let s = RegistryDns::start(&["--record", LOCAL, "--metrics-listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"]);
    let metrics: SocketAddr = metrics_field(&s).parse().expect("the metrics address is logged");
    let ops = s.ops.expect("ops endpoint");
    assert_ne!(metrics, ops);
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);

    let (code, body) = http_get(metrics, "/metrics").expect("scrape");
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text: {body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("registry_dns_queries_total{") && l.contains("type=\"A\"") && !l.ends_with(" 0")),
        "the query just sent is counted: {body}"
    );
    for path in ["/healthz", "/readyz", "/", "/metrics/", "/metricsz"] {
        let (code, _) = http_get(metrics, path).expect("an answer");
        assert_eq!(code, 404, "{path} on the metrics listener");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (code, body) = http_get(ops, path).expect("an answer");
        assert_eq!(code, 200, "{path} on the ops listener: {body}");
    }
}

#[test]
fn the_metrics_listener_is_off_by_default_and_a_bad_address_is_a_one_line_error() {
    let s = RegistryDns::start(&["--record", LOCAL, "--upstream", "127.0.0.1:9"]);
    assert_eq!(metrics_field(&s), "off");

    let (code, stderr) = run_to_exit(&["--record", LOCAL, "--metrics-listen", "9253"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'9253' is not ADDR:PORT or off"), "{stderr}");
}

/// A port another program holds (CoreDNS's `prometheus :9253` does not set SO_REUSEPORT, so
/// neither can share it) is a one-line startup error naming the port and the flag.
#[test]
fn a_taken_metrics_or_ops_port_is_a_one_line_error_naming_port_and_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (port, taken_addr) = (addr.port(), addr.to_string());
    for flag in ["--metrics-listen", "--ops-listen"] {
        let args = ["--record", LOCAL, "--upstream", "127.0.0.1:9", "--listen", "127.0.0.1:0", flag, &taken_addr];
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{flag} {addr}: port {port} is already in use by another program"))
                && stderr.contains(&format!("give {flag} a free port")),
            "{stderr}"
        );
    }
}
