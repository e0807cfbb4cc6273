//! registry-dns against a real control plane: etcd, kube-apiserver and kube-controller-manager,
//! built from their Go modules by `tests/cluster/control-plane.sh` (cached outside the repository).
//!
//! registry-dns runs in-cluster style: the `registry-dns` ServiceAccount of deploy/base, a token
//! from the TokenRequest API and the cluster CA at /var/run/secrets/kubernetes.io/serviceaccount/
//! (bound there in a private mount namespace), `KUBERNETES_SERVICE_HOST`/`PORT`, no kubeconfig.
//! There is no kubelet: the test sets each Pod's status (IPs, Ready), and the real EndpointSlice
//! controller writes the slices registry-dns follows.
//!
//! Skipped with a loud message only when the components cannot be built, and never when `CI` is
//! set. The tests run one at a time: each starts its own control plane, and the delays they assert
//! (1 s, 5 s) should not compete with another control plane starting on a 2-core machine.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::control_plane::{self, ControlPlane, client_from, skip_or_fail};
use support::{RegistryDns, TempDir, ask, free_port, http_get, wait_until};

const NAME: &str = "knative-local-registry";
const SERVICE: &str = "knative-local-registry=registry/knative";

/// One started, with the manifests applied; `None`, after a loud line, when the components cannot
/// be built outside CI.
fn start() -> Option<ControlPlane> {
    static KUBECTL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let kubectl = KUBECTL.get_or_init(|| {
        let dirs = control_plane::build("build")?;
        dirs.first().map(|dir| dir.join("kubectl")).ok_or_else(|| "control-plane.sh build printed nothing".into())
    });
    match kubectl {
        Ok(kubectl) => Some(ControlPlane::start(kubectl.clone(), "control-plane")),
        Err(e) => skip_or_fail(&format!("the Kubernetes control plane could not be built: {e}")),
    }
}

/// registry-dns as its DaemonSet's Pod would see the API: the service account files at the
/// in-cluster path in a private mount namespace (a tmpfs over /var/run hides the host's, and
/// the files are bound in), the API server's address in the environment, no kubeconfig.
fn start_registry_dns(cp: &ControlPlane, account: &TempDir, args: &[&str]) -> RegistryDns {
    const MOUNT: &str = "set -e; mount -t tmpfs -o mode=755 tmpfs /var/run; \
        mkdir -p /var/run/secrets/kubernetes.io/serviceaccount; \
        mount --bind \"$ACCOUNT\" /var/run/secrets/kubernetes.io/serviceaccount; exec \"$@\"";
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "sh", "-c", MOUNT, "sh", RegistryDns::BIN])
        .env("ACCOUNT", &account.0)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", cp.port.to_string())
        .env_remove("KUBECONFIG")
        .env("HOME", &account.0);
    let mut args = args.to_vec();
    args.extend(["--upstream", "127.0.0.1:9"]);
    RegistryDns::start_with(command, &args)
}

/// Waits until the slices, and registry-dns's answers, show `want` (`rtype` A or AAAA), and
/// checks that the answers followed the slices within a second.
fn follows(cp: &ControlPlane, s: &RegistryDns, rtype: RecordType, want: &[&str]) {
    let family = if rtype == RecordType::A { "IPv4" } else { "IPv6" };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let want: Vec<String> = want.iter().map(|ip| ip.to_string()).collect();
    let expected = Some((ResponseCode::NoError, want.clone()));
    let (mut slice_at, mut answer_at) = (None, None);
    let start = Instant::now();
    while slice_at.is_none() || answer_at.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{rtype} {want:?}: slice {slice_at:?}, answer {answer_at:?}"
        );
        if slice_at.is_none() && cp.slice_addresses(&cp.admin, family) == want {
            slice_at = Some(Instant::now());
        }
        if answer_at.is_none() && ask(&socket, s.addr, NAME, rtype) == expected {
            answer_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let lag = answer_at.unwrap().saturating_duration_since(slice_at.unwrap());
    eprintln!("{rtype} {want:?}: answered {lag:?} after the slice changed");
    assert!(lag < Duration::from_secs(1), "{rtype} {want:?} answered {lag:?} after the slice");
}

fn ready(s: &RegistryDns) -> bool {
    http_get(s.ops.unwrap(), "/readyz").is_some_and(|(code, _)| code == 200)
}

fn answer(s: &RegistryDns, name: &str, rtype: RecordType) -> Option<(ResponseCode, Vec<String>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    ask(&socket, s.addr, name, rtype)
}

fn found(ips: &[&str]) -> Option<(ResponseCode, Vec<String>)> {
    Some((ResponseCode::NoError, ips.iter().map(|ip| ip.to_string()).collect()))
}

/// The first log line containing all of `needles`.
fn logged(s: &RegistryDns, needles: &[&str]) -> Option<String> {
    s.logs().into_iter().find(|l| needles.iter().all(|n| l.contains(n)))
}

#[test]
fn the_manifests_apply_and_least_privilege_holds_in_cluster() {
    let Some(cp) = start() else { return };
    // Applied in start(); the API server accepted and stored them.
    cp.kubectl(&["get", "daemonset/registry-dns", "-n", "registry-dns"]);
    cp.kubectl(&["get", "role/registry-dns", "rolebinding/registry-dns", "service/knative", "-n", "registry"]);
    cp.add_ready_pod(&cp.admin, "registry-1", &["10.244.1.5"]);
    let account = cp.service_account_files("registry-dns", "registry-dns");

    // deploy/base's Role: the EndpointSlices of `registry`.
    let s = start_registry_dns(&cp, &account, &["--service", SERVICE]);
    assert!(wait_until(Duration::from_secs(20), || ready(&s)), "{:?}", s.logs());
    assert!(wait_until(Duration::from_secs(10), || answer(&s, NAME, RecordType::A) == found(&["10.244.1.5"])));

    // A namespace the Role does not cover: never ready, and a log line names the permission.
    cp.kubectl(&["create", "namespace", "elsewhere"]);
    let other = start_registry_dns(&cp, &account, &["--service", "other-registry=elsewhere/knative"]);
    assert!(other.wait_for_log("forbidden", Duration::from_secs(20)), "{:?}", other.logs());
    let line = logged(&other, &["watch failed", "forbidden"]).unwrap();
    eprintln!("namespace not covered: {line}");
    for needed in ["system:serviceaccount:registry-dns:registry-dns", "list", "endpointslices", "elsewhere"] {
        assert!(line.contains(needed), "the line names {needed}: {line}");
    }
    let (code, body) = http_get(other.ops.unwrap(), "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("endpointslices elsewhere/knative"), "{body}");
    assert_eq!(answer(&other, "other-registry", RecordType::A).map(|a| a.0), Some(ResponseCode::ServFail));

    // --answer cluster-ip needs the Services too, which deploy/base does not grant...
    let cluster_ip = start_registry_dns(&cp, &account, &["--service", SERVICE, "--answer", "cluster-ip"]);
    assert!(cluster_ip.wait_for_log("forbidden", Duration::from_secs(20)), "{:?}", cluster_ip.logs());
    let line = logged(&cluster_ip, &["watch failed", "forbidden"]).unwrap();
    assert!(line.contains("services") && line.contains("\"registry\""), "{line}");
    assert!(!ready(&cluster_ip));
    // ...until the Role gets them, as deploy/base/rbac.yaml says: then it answers the cluster IP.
    let services = r#"[{"op": "add", "path": "/rules/-",
        "value": {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}}]"#;
    cp.kubectl(&["patch", "role/registry-dns", "-n", "registry", "--type=json", "-p", services]);
    let granted = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || ready(&cluster_ip)), "{:?}", cluster_ip.logs());
    eprintln!("cluster-ip ready {:?} after the Role was granted services", granted.elapsed());
    let ip = cp.kubectl(&["get", "service/knative", "-n", "registry", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(answer(&cluster_ip, NAME, RecordType::A), found(&[ip.as_str()]));
    // Least privilege: the other namespace is still refused.
    assert!(!ready(&other));
}

#[test]
fn answers_follow_real_pods_readiness_and_scaling_within_a_second() {
    let Some(cp) = start() else { return };
    // Dual-stack: the service CIDRs have both families, so the controller writes a slice for each.
    cp.kubectl(&[
        "patch",
        "service/knative",
        "-n",
        "registry",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"PreferDualStack"}}"#,
    ]);
    let ips = |n: usize| [format!("10.244.1.{n}"), format!("fd00:244::{n}")];
    let add = |n: usize| {
        let [v4, v6] = ips(n);
        cp.add_ready_pod(&cp.admin, &format!("registry-{n}"), &[&v4, &v6]);
    };
    add(1);
    let account = cp.service_account_files("registry-dns", "registry-dns");
    let s = start_registry_dns(&cp, &account, &["--service", SERVICE]);
    assert!(wait_until(Duration::from_secs(20), || ready(&s)), "{:?}", s.logs());
    follows(&cp, &s, RecordType::A, &["10.244.1.1"]);
    follows(&cp, &s, RecordType::AAAA, &["fd00:244::1"]);

    // 1 -> 3.
    add(2);
    add(3);
    follows(&cp, &s, RecordType::A, &["10.244.1.1", "10.244.1.2", "10.244.1.3"]);
    follows(&cp, &s, RecordType::AAAA, &["fd00:244::1", "fd00:244::2", "fd00:244::3"]);

    // A Pod that turns unready is dropped.
    let [v4, v6] = ips(2);
    cp.set_ready(&cp.admin, "registry-2", &[&v4, &v6], false);
    follows(&cp, &s, RecordType::A, &["10.244.1.1", "10.244.1.3"]);

    // 3 -> 0: NODATA (NOERROR, no address), never NXDOMAIN.
    for n in 1..=3 {
        cp.delete_pod(&format!("registry-{n}"));
    }
    follows(&cp, &s, RecordType::A, &[]);
    follows(&cp, &s, RecordType::AAAA, &[]);

    // And back.
    add(4);
    follows(&cp, &s, RecordType::A, &["10.244.1.4"]);
    follows(&cp, &s, RecordType::AAAA, &["fd00:244::4"]);
}

/// One answer of the query loop.
struct Asked {
    at: Instant,
    answer: Option<(ResponseCode, Vec<String>)>,
}

/// Asks A for [`NAME`] every `interval` until `stop`.
fn query_loop(server: SocketAddr, interval: Duration, stop: &AtomicBool) -> Vec<Asked> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut asked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        asked.push(Asked { at, answer: ask(&socket, server, NAME, RecordType::A) });
        std::thread::sleep(interval.saturating_sub(at.elapsed()));
    }
    asked
}

#[test]
fn an_api_server_outage_keeps_the_answers_and_its_return_converges_within_5_s() {
    let Some(cp) = start() else { return };
    cp.add_ready_pod(&cp.admin, "registry-a", &["10.244.1.1"]);
    cp.add_ready_pod(&cp.admin, "registry-b", &["10.244.1.2"]);
    let account = cp.service_account_files("registry-dns", "registry-dns");
    let s = start_registry_dns(&cp, &account, &["--service", SERVICE]);
    assert!(wait_until(Duration::from_secs(20), || ready(&s)), "{:?}", s.logs());
    let before = found(&["10.244.1.1", "10.244.1.2"]);
    let after = found(&["10.244.1.1", "10.244.1.3"]);
    assert!(wait_until(Duration::from_secs(10), || answer(&s, NAME, RecordType::A) == before));

    let stop = AtomicBool::new(false);
    let (asked, down, restarted, ready_again, failed_during_outage) = std::thread::scope(|scope| {
        let queries = scope.spawn(|| query_loop(s.addr, Duration::from_millis(100), &stop));
        cp.script("stop-apiserver", &["apiserver"]);
        let down = Instant::now();
        let failed_before = s.logs().iter().filter(|l| l.contains("watch failed")).count();
        std::thread::sleep(Duration::from_secs(5));

        // Meanwhile, through a second, short-lived API server and controller manager on the same
        // etcd: b turns unready, c is added; then etcd's history is compacted.
        let port = free_port().to_string();
        cp.script("start-apiserver", &["apiserver2", &port]);
        cp.script("start-controller-manager", &["controller-manager2", &port]);
        let second = cp.runtime.block_on(client_from(&cp.dir.path("controller-manager2.kubeconfig")));
        cp.set_ready(&second, "registry-b", &["10.244.1.2"], false);
        cp.add_ready_pod(&second, "registry-c", &["10.244.1.3"]);
        assert!(
            wait_until(Duration::from_secs(20), || cp.slice_addresses(&second, "IPv4") == ["10.244.1.1", "10.244.1.3"]),
            "the second controller manager did not write the slice"
        );
        cp.script("stop-controller-manager", &["controller-manager2"]);
        cp.script("stop-apiserver", &["apiserver2"]);
        cp.script("compact", &[]);

        std::thread::sleep(Duration::from_secs(60).saturating_sub(down.elapsed()));
        let failed_during_outage = s.logs().iter().filter(|l| l.contains("watch failed")).count() - failed_before;
        // The API server accepts connections at once, but answers 403 to everyone but its admins
        // until its RBAC caches are loaded; the script returns once /readyz says 200.
        let restarted = Instant::now();
        let port = cp.port;
        let answering = scope.spawn(move || {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
            Instant::now()
        });
        cp.script("start-apiserver", &["apiserver", &cp.port.to_string()]);
        let ready_again = Instant::now();
        wait_until(Duration::from_secs(30), || answer(&s, NAME, RecordType::A) == after);
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let answering = answering.join().unwrap();
        eprintln!("restart: listening after {:?}, ready after {:?}", answering - restarted, ready_again - restarted);
        (queries.join().unwrap(), down, restarted, ready_again, failed_during_outage)
    });

    let during: Vec<&Asked> = asked.iter().filter(|a| a.at >= down && a.at < restarted).collect();
    eprintln!(
        "outage: {} queries over {:?}, {failed_during_outage} failed watch attempts logged",
        during.len(),
        restarted - down
    );
    assert!(during.len() >= 500, "queried every 100 ms: {}", during.len());
    let changed: Vec<_> = during.iter().filter(|a| a.answer != before).map(|a| (a.at - down, &a.answer)).collect();
    assert!(changed.is_empty(), "every answer during the outage is the last known one: {changed:?}");
    let converged = asked.iter().find(|a| a.at >= down && a.answer == after).map(|a| a.at);
    let converged = converged.unwrap_or_else(|| panic!("never converged: {:?}", s.logs()));
    let lag = converged.saturating_duration_since(ready_again);
    eprintln!("converged {lag:?} after the API server was ready again");
    assert!(lag < Duration::from_secs(5), "converged {lag:?} after the API server was ready again");
    let odd: Vec<_> = asked.iter().filter(|a| a.answer != before && a.answer != after).map(|a| &a.answer).collect();
    assert!(odd.is_empty(), "no empty, mixed or missing answer: {odd:?}");
    // The watch retried the whole time, but at a bounded rate: at most 40 a minute plus the ramp.
    assert!((10..=45).contains(&failed_during_outage), "{failed_during_outage} attempts in 60 s");
    assert!(
        logged(&s, &["watch failed", "too old resource version"]).is_some(),
        "a 410 made it relist: {:?}",
        s.logs()
    );
}

#[test]
fn a_rolling_restart_against_the_real_api_server_loses_no_query() {
    let Some(cp) = start() else { return };
    cp.add_ready_pod(&cp.admin, "registry-a", &["10.244.1.1"]);
    cp.add_ready_pod(&cp.admin, "registry-b", &["10.244.1.2"]);
    let account = cp.service_account_files("registry-dns", "registry-dns");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--service", SERVICE, "--listen", &listen, "--lameduck", "1s"];
    let old = start_registry_dns(&cp, &account, &args);
    assert!(wait_until(Duration::from_secs(20), || ready(&old)), "{:?}", old.logs());
    let expected = found(&["10.244.1.1", "10.244.1.2"]);
    assert!(wait_until(Duration::from_secs(10), || answer(&old, NAME, RecordType::A) == expected));

    let stop = AtomicBool::new(false);
    let server: SocketAddr = listen.parse().unwrap();
    let (asked, new, old_exit) = std::thread::scope(|scope| {
        let queries = scope.spawn(|| query_loop(server, Duration::from_millis(50), &stop));
        std::thread::sleep(Duration::from_millis(500));
        // As the DaemonSet controller does: the new Pod starts, and once it is ready the old one
        // gets SIGTERM.
        let new = start_registry_dns(&cp, &account, &args);
        let new_ready = wait_until(Duration::from_secs(20), || ready(&new));
        let old_exit = new_ready.then(|| old.terminate(Duration::from_secs(10))).flatten();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        (queries.join().unwrap(), new, old_exit)
    });
    assert!(old_exit.is_some_and(|status| status.success()), "old instance: {old_exit:?}; new: {:?}", new.logs());
    let failures: Vec<_> = asked.iter().filter(|a| a.answer != expected).map(|a| &a.answer).collect();
    eprintln!("rolling restart: {} queries, {} failed", asked.len(), failures.len());
    assert!(asked.len() > 30, "{}", asked.len());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(answer(&new, NAME, RecordType::A), expected);
}
