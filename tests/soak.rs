//! Soak: local and forwarded load for a while (`SOAK_SECONDS`, default 60, which is what CI runs;
//! `tests/soak.sh` runs 10 minutes in release mode) while the upstream and the API server flap:
//! nsd killed and restarted, the API server stopped and restarted, its history compacted and the
//! watches cut, the Service's endpoints changing. Clients ask as stub resolvers do, each lookup
//! from a fresh socket, so their queries spread over the server's four UDP workers. Required: the
//! process never dies, a local name never gets a wrong answer or no answer (the last known
//! addresses are served through every API outage), a forwarded name answered before an upstream
//! outage never fails during it (the cache serves it stale; its answers are capped at 2 s so that
//! they do expire during the 4 s outages), forwarding recovers after each upstream outage, and
//! memory stays flat.

mod support;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use support::apiserver::{FakeApiServer, endpoint_slice};
use support::{RegistryDns, TempDir, ask_a as ask, healthy_upstream, wait_until};

const NAME: &str = "knative-local-registry";
/// The two endpoint sets the Service alternates between; a local answer must be one of them.
const SETS: [[&str; 2]; 2] = [["10.244.1.5", "10.244.2.7"], ["10.244.1.5", "10.244.3.9"]];

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[derive(Default)]
struct Counts {
    local: AtomicU64,
    local_wrong: AtomicU64,
    forwarded_ok: AtomicU64,
    forwarded_failed: AtomicU64,
    /// Failures of the forwarded name every client asks again and again (answered before each
    /// outage): serve-stale must cover them all.
    seen_failed: AtomicU64,
    /// Forwarded answers after the last upstream restart had time to be noticed.
    forwarded_ok_late: AtomicU64,
}

#[test]
fn soak_under_flapping_upstream_and_api_server() {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let dir = TempDir::new("soak");
    let api = FakeApiServer::start();
    let kubeconfig = dir.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let slice = |set: usize| {
        endpoint_slice("registry", "knative", "knative-a", "IPv4", &[(SETS[set][0], None), (SETS[set][1], None)])
    };
    api.apply(slice(0));
    let mut upstream = healthy_upstream();
    let s = RegistryDns::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--service",
        &format!("{NAME}=registry/knative"),
        "--record",
        "static-name=10.0.0.10",
        "--upstream",
        &upstream.addr.to_string(),
        "--upstream-timeout",
        "500ms",
        "--cache-max-ttl",
        "2s",
        "--workers",
        "4",
    ]);
    let server = s.addr;
    let synced = wait_until(Duration::from_secs(20), || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        ask(&socket, server, NAME).is_some_and(|(rcode, _)| rcode == ResponseCode::NoError)
    });
    assert!(synced, "{:?}", s.logs());

    let stop = Arc::new(AtomicBool::new(false));
    let upstream_up_since = Arc::new(std::sync::Mutex::new(Some(Instant::now())));
    let counts = Arc::new(Counts::default());
    let mut load = Vec::new();
    for worker in 0..2 {
        let (stop, counts, up_since) = (stop.clone(), counts.clone(), upstream_up_since.clone());
        load.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                n += 1;
                let (name, local) = match n % 4 {
                    0 | 1 => (NAME.to_string(), true),
                    2 => ("www.test".to_string(), false),
                    _ => (format!("u{worker}-{n}.test"), false),
                };
                // A fresh socket per lookup: a new source port, so any worker may take it.
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let answer = ask(&socket, server, &name);
                if local {
                    counts.local.fetch_add(1, Relaxed);
                    let right = matches!(&answer, Some((ResponseCode::NoError, a)) if SETS.iter().any(|s| s.as_slice() == a.as_slice()));
                    if !right {
                        counts.local_wrong.fetch_add(1, Relaxed);
                        eprintln!("soak: wrong local answer {answer:?}");
                    }
                    continue;
                }
                let ok = matches!(answer, Some((ResponseCode::NoError | ResponseCode::NXDomain, _)));
                if !ok && name == "www.test" {
                    counts.seen_failed.fetch_add(1, Relaxed);
                    eprintln!("soak: a name answered before failed: {answer:?}");
                }
                if ok {
                    counts.forwarded_ok.fetch_add(1, Relaxed);
                    let settled = up_since.lock().unwrap().is_some_and(|t| t.elapsed() > Duration::from_secs(7));
                    if settled {
                        counts.forwarded_ok_late.fetch_add(1, Relaxed);
                    }
                } else {
                    counts.forwarded_failed.fetch_add(1, Relaxed);
                }
            }
        }));
    }

    // The flapping schedule, one step per second.
    let started = Instant::now();
    let mut rss = Vec::new();
    for t in 1..=seconds {
        std::thread::sleep((started + Duration::from_secs(t)).saturating_duration_since(Instant::now()));
        match t % 30 {
            3 => api.stop(),
            11 => api.restart(),
            15 => {
                api.compact();
                api.drop_watches();
            }
            _ => {}
        }
        match t % 20 {
            5 => {
                upstream.stop();
                *upstream_up_since.lock().unwrap() = None;
            }
            9 => {
                upstream.restart();
                *upstream_up_since.lock().unwrap() = Some(Instant::now());
            }
            _ => {}
        }
        if t % 10 == 0 {
            api.apply(slice(((t / 10) % 2) as usize));
        }
        if t % 2 == 0 {
            rss.push(vm_rss_kib(s.pid()));
        }
    }
    stop.store(true, Relaxed);
    for thread in load {
        thread.join().unwrap();
    }

    let (local, wrong) = (counts.local.load(Relaxed), counts.local_wrong.load(Relaxed));
    let (fwd_ok, fwd_failed) = (counts.forwarded_ok.load(Relaxed), counts.forwarded_failed.load(Relaxed));
    let seen_failed = counts.seen_failed.load(Relaxed);
    let third = rss.len() / 3;
    let early = *rss[1..third.max(2)].iter().max().unwrap();
    let late = *rss[rss.len() - third.max(1)..].iter().max().unwrap();
    eprintln!(
        "soak: {seconds} s; local {local} queries, {wrong} wrong; forwarded {fwd_ok} ok, {fwd_failed} failed \
         (upstream down 4 s in 20; never-seen names), {seen_failed} of them for a name answered before; \
         {} ok once settled; VmRSS KiB early max {early}, late max {late}, peak {}",
        counts.forwarded_ok_late.load(Relaxed),
        rss.iter().max().unwrap()
    );
    let mut s = s;
    assert!(s.is_running(), "registry-dns died: {:?}", s.logs());
    assert!(local > seconds * 50, "the load kept going: {local} local queries");
    assert_eq!(wrong, 0, "a local name got a wrong or no answer");
    assert_eq!(seen_failed, 0, "a forwarded name answered before an outage failed during it");
    assert!(counts.forwarded_ok_late.load(Relaxed) > 0, "forwarding recovered after the upstream came back");
    // Flat memory: the last third's peak within 10 % (plus 2 MiB of allocator slack) of the first's.
    assert!(late <= early + early / 10 + 2048, "VmRSS grew: {rss:?}");
    let status = s.terminate(Duration::from_secs(20)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
