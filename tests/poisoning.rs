//! Cache-poisoning resistance, against the real binary on real sockets: how much a forger must
//! guess (source port and ID of every upstream query), and what happens when one floods replies
//! that spoof the upstream's exact address and port (through a raw socket: root).
//!
//! The upstream here is a small one in this file, because the tests need what no real server
//! tells: each query's source port and ID as they arrive (what a forger learns by scanning, at
//! best), and its answers held back long enough for forgeries to arrive first.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use support::bad_upstream::{FORGED, GENUINE, reply};
use support::forger::Forger;
use support::scrape::Scrape;
use support::{RegistryDns, ask_a, free_port, wait_until};

/// A query as the upstream received it over UDP.
struct Arrival {
    from: SocketAddr,
    query: Vec<u8>,
}

/// An upstream answering every query with [`GENUINE`], over UDP after `delay` and over TCP at
/// once; it reports each UDP query as it arrives and counts the TCP ones.
struct TapUpstream {
    addr: SocketAddr,
    arrivals: mpsc::Receiver<Arrival>,
    tcp_queries: Arc<AtomicUsize>,
}

impl TapUpstream {
    fn start(delay: Duration) -> Self {
        let port = free_port();
        let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = udp.local_addr().unwrap();
        let (tap, arrivals) = mpsc::channel();
        let sender = udp.try_clone().unwrap();
        let (later, queue) = mpsc::channel::<(Vec<u8>, SocketAddr)>();
        std::thread::spawn(move || {
            for (answer, to) in queue {
                std::thread::sleep(delay);
                let _ = sender.send_to(&answer, to);
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let answer = reply(&query, query.metadata.id, None, ResponseCode::NoError, &[GENUINE]);
                if delay.is_zero() {
                    let _ = udp.send_to(&answer, from);
                } else {
                    let _ = later.send((answer, from));
                }
                if tap.send(Arrival { from, query: buf[..n].to_vec() }).is_err() {
                    return;
                }
            }
        });
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let counted = tcp_queries.clone();
        std::thread::spawn(move || {
            for mut stream in tcp.incoming().map_while(Result::ok) {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                let Ok(query) = stream.read_exact(&mut buf).map(|()| Message::from_vec(&buf)) else { continue };
                let Ok(query) = query else { continue };
                counted.fetch_add(1, Ordering::Relaxed);
                let answer = reply(&query, query.metadata.id, None, ResponseCode::NoError, &[GENUINE]);
                let _ = stream.write_all(&[&(answer.len() as u16).to_be_bytes()[..], &answer].concat());
            }
        });
        Self { addr, arrivals, tcp_queries }
    }
}

fn name_of(query: &[u8]) -> String {
    Message::from_vec(query).map(|m| m.queries[0].name().to_ascii()).unwrap_or_default()
}

fn relay_to(upstream: &TapUpstream, extra: &[&str]) -> RegistryDns {
    let addr = upstream.addr.to_string();
    let mut args = vec!["--record", "knative-local-registry=10.0.0.10", "--upstream", &addr];
    args.extend_from_slice(extra);
    let s = RegistryDns::start(&args);
    // The startup loop probe, then quiet.
    assert!(upstream.arrivals.recv_timeout(Duration::from_secs(5)).is_ok(), "the loop probe reaches the upstream");
    std::thread::sleep(Duration::from_millis(200));
    while upstream.arrivals.try_recv().is_ok() {}
    s
}

#[test]
fn upstream_queries_carry_over_26_bits_of_source_port_and_id() {
    const QUERIES: usize = 10_000;
    const CLIENTS: usize = 16;
    let upstream = TapUpstream::start(Duration::ZERO);
    // Two workers, as on the 2-CPU nodes this is measured on; each has its own pool.
    let s = relay_to(&upstream, &["--cache-size", "0", "--workers", "2"]);
    // One query at a time, as a forger triggers the one it wants to answer (queries of one send
    // batch share a socket); from several client sockets, which the kernel spreads over the workers.
    let clients: Vec<UdpSocket> = (0..CLIENTS)
        .map(|_| {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            client
        })
        .collect();
    let mut seen: Vec<(u16, u16)> = Vec::with_capacity(QUERIES);
    let mut buf = [0u8; 512];
    for i in 0..QUERIES {
        let mut query = Message::query();
        query.metadata.id = i as u16;
        query.metadata.recursion_desired = true;
        query.add_query(hickory_proto::op::Query::query(
            format!("n{i}.example.").parse().unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
        let client = &clients[i % CLIENTS];
        client.send_to(&query.to_vec().unwrap(), s.addr).unwrap();
        client.recv(&mut buf).expect("every query is answered");
        let arrival = upstream.arrivals.recv_timeout(Duration::from_secs(5)).expect("the query went upstream");
        seen.push((arrival.from.port(), u16::from_be_bytes([arrival.query[0], arrival.query[1]])));
    }

    let mut per_port: HashMap<u16, usize> = HashMap::new();
    for &(port, _) in &seen {
        *per_port.entry(port).or_default() += 1;
    }
    let ids: HashSet<u16> = seen.iter().map(|&(_, id)| id).collect();
    // The Shannon entropy of the ports as sampled (a little under the true figure, for 10,000
    // samples), plus 16 bits of ID.
    let n = QUERIES as f64;
    let port_bits: f64 = per_port.values().map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum();
    let bits = port_bits + 16.0;
    eprintln!(
        "{QUERIES} upstream queries: {} source ports ({port_bits:.2} bits), {} IDs: {bits:.1} bits",
        per_port.len(),
        ids.len()
    );
    assert!(per_port.len() >= 1024, "at least 1,024 source ports: {}", per_port.len());
    assert!(bits >= 26.0, "{bits:.2} bits of port and ID");
    // 10,000 uniform 16-bit IDs are about 9,280 distinct ones; a counter or a small pool are far fewer.
    assert!(ids.len() >= 9_000, "IDs look uniform over 16 bits: {} distinct", ids.len());
}

#[test]
fn a_forger_who_knows_the_port_gets_nothing_into_a_client_or_the_cache() {
    const VICTIMS: usize = 5;
    /// Forged replies per query: guessed IDs, then the right one (the lucky guess of a long flood).
    const FLOOD: usize = 40;
    let upstream = TapUpstream::start(Duration::from_millis(300));
    let upstream_addr = match upstream.addr {
        SocketAddr::V4(addr) => addr,
        SocketAddr::V6(_) => unreachable!("bound on 127.0.0.1"),
    };
    let s = relay_to(&upstream, &[]);
    let forger = Forger::new();
    // Every query for a victim name is flooded the moment it reaches the upstream, from the
    // upstream's own address and port, on the port it came from.
    let quiet_arrivals = Arc::new(Mutex::new(0usize));
    let arrivals = upstream.arrivals;
    let counted = quiet_arrivals.clone();
    std::thread::spawn(move || {
        for arrival in arrivals {
            let name = name_of(&arrival.query);
            if name.starts_with("quiet.") {
                *counted.lock().unwrap() += 1;
            }
            if !name.starts_with("victim") {
                continue;
            }
            let SocketAddr::V4(to) = arrival.from else { continue };
            let query = Message::from_vec(&arrival.query).unwrap();
            let real = query.metadata.id;
            for i in 0..FLOOD {
                let id = if i + 1 == FLOOD { real } else { real.wrapping_add(1 + rand::random::<u16>() % 65535) };
                forger.send(upstream_addr, to, &reply(&query, id, None, ResponseCode::NoError, &[FORGED]));
            }
        }
    });
    let hits = |scrape: &Scrape| scrape.get("registry_dns_cache_hits_total", &[]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..VICTIMS {
        let answer = ask_a(&client, s.addr, &format!("victim{i}.test."));
        assert_eq!(answer, Some((ResponseCode::NoError, vec![GENUINE.to_string()])), "victim{i}");
    }
    let before = Scrape::of(&s);
    for i in 0..VICTIMS {
        let answer = ask_a(&client, s.addr, &format!("victim{i}.test."));
        assert_eq!(answer, Some((ResponseCode::NoError, vec![GENUINE.to_string()])), "victim{i}, cached");
    }
    let after = Scrape::of(&s);
    assert_eq!(hits(&after) - hits(&before), VICTIMS as f64, "the genuine answers were cached");

    let upstream_label = upstream.addr.to_string();
    let label = [("upstream", upstream_label.as_str())];
    let unexpected = after.get("registry_dns_upstream_unexpected_replies_total", &label);
    let rechecks = after.get("registry_dns_upstream_tcp_rechecks_total", &label);
    let episodes = after.get("registry_dns_upstream_spoofing_episodes_total", &label);
    eprintln!("unexpected replies {unexpected}, TCP rechecks {rechecks}, episodes {episodes}");
    // Some guesses may land after the genuine answer, on a closed socket: most are counted.
    assert!(unexpected >= (VICTIMS * (FLOOD - 1) / 2) as f64, "forgeries counted: {unexpected}");
    assert!(rechecks >= VICTIMS as f64, "each victim's answer was checked over TCP: {rechecks}");
    assert!(upstream.tcp_queries.load(Ordering::Relaxed) >= VICTIMS, "the TCP checks reached the upstream");
    assert_eq!(episodes, 1.0, "one flood, one episode");
    let warnings = s.logs().iter().filter(|l| l.contains("someone may be forging")).count();
    assert_eq!(warnings, 1, "logged once per episode: {:?}", s.logs());

    // During the episode, a UDP answer of that upstream is relayed but not cached.
    for _ in 0..2 {
        let answer = ask_a(&client, s.addr, "quiet.test.");
        assert_eq!(answer, Some((ResponseCode::NoError, vec![GENUINE.to_string()])));
    }
    assert!(
        wait_until(Duration::from_secs(2), || *quiet_arrivals.lock().unwrap() == 2),
        "both queries for quiet.test went upstream: {}",
        quiet_arrivals.lock().unwrap()
    );
}
