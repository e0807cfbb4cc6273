//! Floods and limits: a flood of unique names at an upstream that never answers stays within
//! `--max-concurrent` (the rest REFUSED at once) in flat memory while local names keep answering;
//! TCP connections that idle, trickle or never read are closed at the idle timeout and one TCP
//! client cannot starve another; a name with thousands of addresses answers capped, rotating,
//! correctly truncated windows as fast as a name with one.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use support::bad_upstream::{BadUpstream, Behaviour};
use support::{Dig, RegistryDns, dig, healthy_upstream, wait_until};

const LOCAL: &str = "knative-local-registry=10.0.0.10";
const REFUSED: u8 = 5;
const SERVFAIL: u8 = 2;

/// A query for `name` type A, RD set, in wire form.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

fn tcp_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    framed
}

/// The value of the series that `prefix` starts (name, labels and a space) in a `/metrics` scrape.
fn metric(ops: SocketAddr, prefix: &str) -> f64 {
    let (_, body) = support::http_get(ops, "/metrics").expect("scrape");
    let line = body.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {body}"));
    line[prefix.len()..].trim().parse().unwrap()
}

/// Samples `registry_dns_forward_in_flight` every 100 ms for `duration` (from 300 ms on, once a
/// flood has filled the table).
fn sample_in_flight(ops: SocketAddr, duration: Duration) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let deadline = Instant::now() + duration - Duration::from_millis(300);
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            samples.push(metric(ops, "registry_dns_forward_in_flight "));
            std::thread::sleep(Duration::from_millis(100));
        }
        samples
    })
}

/// The value in kB of a `/proc/PID/status` field such as `VmHWM`.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What a flood got back.
#[derive(Default)]
struct Flood {
    sent: usize,
    refused: usize,
    servfail: usize,
    other: usize,
    /// How long each REFUSED took, sorted.
    refused_after: Vec<Duration>,
}

impl std::fmt::Debug for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let latency = |p| self.refused_after.get(((self.refused_after.len().max(1) - 1) as f64 * p) as usize);
        write!(
            f,
            "sent {} refused {} servfail {} other {}, REFUSED after p50 {:?} p99 {:?} max {:?}",
            self.sent,
            self.refused,
            self.servfail,
            self.other,
            latency(0.5),
            latency(0.99),
            self.refused_after.last()
        )
    }
}

/// Sends `rate` queries a second for unique names for `duration` from one non-blocking socket,
/// then collects answers for `linger` more.
fn flood(addr: SocketAddr, rate: u32, duration: Duration, linger: Duration, tag: &str) -> Flood {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut sent_at: Vec<Option<Instant>> = vec![None; 1 << 16];
    let mut result = Flood::default();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    let mut receive = |result: &mut Flood, sent_at: &mut Vec<Option<Instant>>| {
        while let Ok(n) = socket.recv(&mut buf) {
            let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            let Some(at) = sent_at[id].take() else { continue };
            match buf[3] & 0x0f {
                REFUSED => {
                    result.refused += 1;
                    result.refused_after.push(at.elapsed());
                }
                SERVFAIL => result.servfail += 1,
                _ => result.other += 1,
            }
            assert!(n >= 12);
        }
    };
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as usize;
        while result.sent < due {
            let id = (result.sent % (1 << 16)) as u16;
            assert!(sent_at[usize::from(id)].is_none() || result.sent < 1 << 16, "IDs wrapped");
            let packet = query(id, &format!("q{}-{tag}.flood.test", result.sent));
            match socket.send_to(&packet, addr) {
                Ok(_) => {
                    sent_at[usize::from(id)] = Some(Instant::now());
                    result.sent += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        receive(&mut result, &mut sent_at);
        std::thread::sleep(Duration::from_millis(2));
    }
    let until = Instant::now() + linger;
    while Instant::now() < until {
        receive(&mut result, &mut sent_at);
        std::thread::sleep(Duration::from_millis(5));
    }
    result.refused_after.sort();
    result
}

/// `count` sequential queries for a local name, each with its latency (a lost one counts 1 s).
fn local_latencies(addr: SocketAddr, count: usize, pause: Duration) -> Vec<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 512];
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let id = i as u16;
        let started = Instant::now();
        socket.send_to(&query(id, "knative-local-registry"), addr).unwrap();
        let latency = loop {
            match socket.recv(&mut buf) {
                Ok(n) if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                    assert_eq!(buf[3] & 0x0f, 0, "local name answered NOERROR");
                    break started.elapsed();
                }
                Ok(_) => continue,
                Err(_) => break Duration::from_secs(1),
            }
        };
        latencies.push(latency);
        std::thread::sleep(pause);
    }
    latencies.sort();
    latencies
}

#[test]
fn a_unique_name_flood_at_a_silent_upstream_stays_within_the_cap_in_flat_memory() {
    const CAP: usize = 200;
    const RATE: u32 = 3000;
    let timeout = Duration::from_secs(1);
    let silent = BadUpstream::with(Behaviour::Silent);
    let s = RegistryDns::start(&[
        "--record",
        LOCAL,
        "--upstream",
        &silent.addr.to_string(),
        "--max-concurrent",
        &CAP.to_string(),
        "--upstream-timeout",
        "1s",
    ]);
    assert!(wait_until(Duration::from_secs(5), || silent.queries() == 1), "the startup loop probe arrives first");
    let pid = s.pid();
    let idle_hwm = proc_status_kb(pid, "VmHWM");

    // The in-flight gauge, sampled from /metrics during both floods (so that both pay for the
    // scrapes in the memory comparison below).
    let ops = s.ops.expect("ops endpoint");
    let linger = timeout + Duration::from_secs(1);
    let sampler = sample_in_flight(ops, Duration::from_secs(2));
    let short = flood(s.addr, RATE, Duration::from_secs(2), linger, "short");
    let short_hwm = proc_status_kb(pid, "VmHWM");
    let mut in_flight = sampler.join().unwrap();

    let prober = std::thread::spawn({
        let addr = s.addr;
        move || {
            std::thread::sleep(Duration::from_millis(500));
            local_latencies(addr, 200, Duration::from_millis(20))
        }
    });
    let sampler = sample_in_flight(ops, Duration::from_secs(6));
    let long_duration = Duration::from_secs(6);
    let long = flood(s.addr, RATE, long_duration, linger, "long");
    let long_hwm = proc_status_kb(pid, "VmHWM");
    let local = prober.join().unwrap();
    in_flight.extend(sampler.join().unwrap());

    println!(
        "flood at {RATE} qps, --max-concurrent {CAP}, silent upstream, 1 s timeout:\n  short (2 s): {short:?}\n  \
         long (6 s): {long:?}\n  VmHWM idle {idle_hwm} kB, after short {short_hwm} kB, after long {long_hwm} kB\n  \
         local name during the flood: p50 {:?} p99 {:?} max {:?}",
        percentile(&local, 0.5),
        percentile(&local, 0.99),
        local.last().unwrap(),
    );
    for (what, f, duration) in [("short", &short, 2.0), ("long", &long, 6.0)] {
        let answered = f.refused + f.servfail;
        assert_eq!(f.other, 0, "{what}: only REFUSED and SERVFAIL from a silent upstream");
        assert!(answered * 100 >= f.sent * 99, "{what}: every query answered (1% slack for loopback drops): {f:?}");
        // Each slot serves one query per timeout: at most CAP per second, plus the slots' first fill.
        let most = CAP * (duration as usize + 2);
        assert!(f.servfail <= most, "{what}: {} forwarded, at most {most} fit the cap", f.servfail);
        assert!(f.servfail >= CAP * duration as usize / 2, "{what}: the cap is used, not everything refused");
        assert!(percentile(&f.refused_after, 0.5) < Duration::from_millis(50), "{what}: REFUSED at once");
    }
    // What the upstream saw is what was in flight: within any window shorter than the timeout (by
    // the upstream's own scheduling slack), at most CAP queries.
    let arrivals = &silent.arrivals()[1..];
    let window = timeout - Duration::from_millis(200);
    let busiest = (0..arrivals.len())
        .map(|i| arrivals[i..].iter().take_while(|&&t| t.duration_since(arrivals[i]) < window).count())
        .max()
        .unwrap();
    println!("  upstream saw {} queries, at most {busiest} within {window:?}", arrivals.len());
    assert!(busiest <= CAP, "{busiest} queries in flight at once, cap {CAP}");
    // The server's own view: the in-flight table fills to the cap and never passes it, and every
    // REFUSED was counted as over capacity.
    println!("  registry_dns_forward_in_flight during the floods: {in_flight:?}");
    assert!(in_flight.iter().all(|&n| n <= CAP as f64), "{in_flight:?}");
    assert!(in_flight.iter().filter(|&&n| n >= CAP as f64 * 0.9).count() >= in_flight.len() / 2, "{in_flight:?}");
    let over_capacity = metric(ops, "registry_dns_refused_total{reason=\"over_capacity\"} ");
    let (received, most) = (short.refused + long.refused, short.sent + long.sent - short.servfail - long.servfail);
    let counted = over_capacity as usize;
    assert!((received..=most).contains(&counted), "{counted} counted, {received} received, at most {most} sent");
    // Memory: the in-flight table is full from the first second, so three times the flood costs
    // no more memory.
    assert!(long_hwm <= short_hwm + 1024, "peak RSS grew from {short_hwm} kB to {long_hwm} kB");
    assert!(long_hwm < 64 * 1024, "peak RSS {long_hwm} kB");
    // Local names keep answering at full speed while the flood runs.
    assert!(local.iter().all(|&l| l < Duration::from_millis(500)), "a local query was lost or slow: {local:?}");
    assert!(percentile(&local, 0.5) < Duration::from_millis(20), "{:?}", percentile(&local, 0.5));
}

fn tcp_server(extra: &[&str]) -> (support::Nsd, RegistryDns) {
    let up = healthy_upstream();
    let up_addr = up.addr.to_string();
    let mut args = vec!["--record", LOCAL, "--upstream", &up_addr];
    args.extend_from_slice(extra);
    let s = RegistryDns::start(&args);
    (up, s)
}

/// Reads until the server closes the connection; returns how long that took from `since`, or
/// `None` when it is still open after `limit`.
fn closed_after(stream: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 4096];
    while since.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
    None
}

#[test]
fn tcp_idle_time_counts_from_the_last_query_and_a_slow_sender_gets_no_extension() {
    let idle = Duration::from_secs(1);
    let (_up, s) = tcp_server(&["--tcp-idle-timeout", "1s"]);
    let limit = idle * 4;

    // A query halfway through the idle time restarts it.
    let mut stream = TcpStream::connect(s.addr).unwrap();
    std::thread::sleep(idle / 2);
    stream.write_all(&tcp_frame(&query(1, "knative-local-registry"))).unwrap();
    let asked = Instant::now();
    let closed = closed_after(&mut stream, asked, limit).expect("closed once idle");
    assert!(closed >= idle - Duration::from_millis(50), "idle time counts from the last query: {closed:?}");
    assert!(closed < idle * 2, "{closed:?}");

    // A length prefix and then nothing: closed at the idle timeout.
    let mut stream = TcpStream::connect(s.addr).unwrap();
    let started = Instant::now();
    stream.write_all(&[0, 40]).unwrap();
    let closed = closed_after(&mut stream, started, limit).expect("a stalled query is closed");
    assert!(closed < idle * 2, "{closed:?}");

    // A query trickled a byte every 100 ms (it would take 4 s): each byte is no reason to wait longer.
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let started = Instant::now();
    let trickle = tcp_frame(&query(2, "knative-local-registry"));
    let writer = stream.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        let mut writer = writer;
        for byte in trickle {
            if writer.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let closed = closed_after(&mut stream, started, limit).expect("a slow sender is closed");
    assert!(closed < idle * 2, "closed after {closed:?}, not extended by each byte");
    trickler.join().unwrap();
}

#[test]
fn a_tcp_client_that_never_reads_its_answers_gives_its_connection_back_at_the_idle_timeout() {
    let ips: Vec<String> = (1..=60).map(|i| format!("10.1.0.{i}")).collect();
    let record = format!("many={}", ips.join(","));
    let (_up, s) = tcp_server(&[
        "--record",
        &record,
        "--max-answers",
        "60",
        "--tcp-idle-timeout",
        "1s",
        "--max-tcp-connections",
        "1",
    ]);
    // A receive buffer as small as the kernel allows, and never read: the server's writes stall
    // once some hundred kB of ~1 kB answers are queued.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(1).unwrap();
    socket.set_send_buffer_size(1).unwrap();
    socket.connect(&s.addr.into()).unwrap();
    let mut stuck: TcpStream = socket.into();
    stuck.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let connected = Instant::now();
    let mut written = 0;
    let frames: Vec<u8> = (0..1000).flat_map(|i| tcp_frame(&query(i, "many"))).collect();
    while written < 20_000 && stuck.write_all(&frames).is_ok() {
        written += 1000;
    }
    assert!(written < 20_000, "the server stopped reading a client that does not read");
    // The one connection slot comes back once the stalled writes hit the idle timeout.
    let served =
        wait_until(Duration::from_secs(5), || dig(s.addr, &["+tcp", "+time=1", "many", "A"]).rdata("A").len() == 60);
    assert!(served, "a client that never reads holds the only connection slot for good");
    println!("{written} queries written; the slot came back {:?} after connecting", connected.elapsed());
    drop(stuck);
}

#[test]
fn one_tcp_client_pipelining_many_queries_cannot_starve_another() {
    const CAP: usize = 300;
    let slow = BadUpstream::with(Behaviour::Slow(Duration::from_secs(1)));
    let s = RegistryDns::start(&[
        "--record",
        LOCAL,
        "--upstream",
        &slow.addr.to_string(),
        "--upstream-timeout",
        "3s",
        "--max-concurrent",
        &CAP.to_string(),
    ]);
    // One client pipelines many forwarded queries on one connection and reads nothing meanwhile.
    let mut greedy = TcpStream::connect(s.addr).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let frames: Vec<u8> = (0..2000u16).flat_map(|i| tcp_frame(&query(i, &format!("g{i}.test")))).collect();
    let _ = greedy.write_all(&frames);
    std::thread::sleep(Duration::from_millis(300));
    // Another client still gets its forwarded queries through (slowly: the upstream takes 1 s),
    // over UDP and TCP, and its local names at once.
    let started = Instant::now();
    let other = std::thread::spawn({
        let addr = s.addr;
        move || dig(addr, &["+tcp", "www.test", "A"])
    });
    let udp = dig(s.addr, &["+time=3", "www.test", "A"]);
    assert_eq!(udp.status, "NOERROR", "UDP: {}", udp.raw);
    let tcp: Dig = other.join().unwrap();
    assert_eq!(tcp.status, "NOERROR", "TCP: {}", tcp.raw);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let local = dig(s.addr, &["+tcp", "knative-local-registry"]);
    assert_eq!(local.rdata("A"), ["10.0.0.10"]);
    drop(greedy);
}

/// dig's received message size.
fn received_size(d: &Dig) -> usize {
    let line = d.raw.lines().find(|l| l.contains("MSG SIZE")).unwrap_or_else(|| panic!("no answer:\n{}", d.raw));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// 3000 addresses, as a Service with 3000 ready endpoints publishes them (the Kubernetes source
/// fills the same name table; `tests/kubernetes.rs` covers that path with the default cap).
fn three_thousand() -> String {
    let ips: Vec<String> =
        (0..3000).map(|i| format!("10.{}.{}.{}", 100 + i / 65025, (i / 255) % 255, i % 255 + 1)).collect();
    format!("big={}", ips.join(","))
}

#[test]
fn thousands_of_addresses_truncate_correctly_over_udp_at_512_and_1232() {
    let record = three_thousand();
    for (cap, fits_1232) in [(100usize, false), (60, true)] {
        let (_up, s) = tcp_server(&["--record", &record, "--max-answers", &cap.to_string()]);
        for (args, limit, fits) in [
            (&["+noedns"][..], 512, false),
            (&["+bufsize=512"], 512, false),
            (&["+bufsize=1232"], 1232, fits_1232),
            (&["+bufsize=4096"], 1232, fits_1232),
        ] {
            let d = dig(s.addr, &[args, &["+notcp", "+ignore", "big", "A"]].concat());
            let size = received_size(&d);
            assert!(size <= limit, "cap {cap} {args:?}: {size} bytes over a {limit}-byte limit");
            assert_eq!(d.status, "NOERROR", "cap {cap} {args:?}");
            if fits {
                assert!(!d.has_flag("tc"), "cap {cap} {args:?}: {size} bytes");
                assert_eq!(d.rdata("A").len(), cap, "cap {cap} {args:?}");
            } else {
                assert!(d.has_flag("tc") && d.answer.is_empty(), "cap {cap} {args:?}: {:?}", d.flags);
            }
        }
        // Over TCP the whole window, and the next query the next window.
        let first = dig(s.addr, &["+tcp", "big", "A"]).rdata("A");
        let second = dig(s.addr, &["+tcp", "big", "A"]).rdata("A");
        assert_eq!((first.len(), second.len()), (cap, cap));
        assert!(first.iter().all(|ip| !second.contains(ip)), "cap {cap}: consecutive windows do not overlap");
    }
}

#[test]
fn a_name_with_thousands_of_addresses_answers_as_fast_as_a_name_with_one() {
    let record = three_thousand();
    let (_up, s) = tcp_server(&["--record", &record, "--record", "one=10.9.9.9"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 1232];
    let mut latencies = [Vec::new(), Vec::new()];
    let mut firsts = std::collections::BTreeSet::new();
    // Interleaved, so that both names see the same machine load.
    for i in 0..4000u16 {
        let (which, name) = if i % 2 == 0 { (0, "big") } else { (1, "one") };
        let started = Instant::now();
        socket.send_to(&query(i, name), s.addr).unwrap();
        let n = socket.recv(&mut buf).expect("answered");
        latencies[which].push(started.elapsed());
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), i);
        assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), if which == 0 { 16 } else { 1 }, "answer count");
        if which == 0 {
            firsts.insert(buf[n - 4..n].to_vec());
        }
    }
    for l in &mut latencies {
        l.sort();
    }
    let [big, one] = &latencies;
    println!(
        "3000-address name: p50 {:?} p99 {:?}; 1-address name: p50 {:?} p99 {:?}; {} distinct windows in 2000 answers",
        percentile(big, 0.5),
        percentile(big, 0.99),
        percentile(one, 0.5),
        percentile(one, 0.99),
        firsts.len()
    );
    assert!(firsts.len() >= 3000 / 16, "the answers rotate through every window: {}", firsts.len());
    assert!(
        percentile(big, 0.5) < percentile(one, 0.5) * 2 + Duration::from_micros(100),
        "a big name costs about what a small one does: {:?} vs {:?}",
        percentile(big, 0.5),
        percentile(one, 0.5)
    );
}
