//! Protocol hygiene with raw packets: malformed input gets FORMERR or nothing, never a crash or
//! a stall; unknown opcodes NOTIMP; EDNS versions above 0 BADVERS; SIGTERM a clean exit; bad
//! flags a one-line reason.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use std::time::Instant;

use support::{RegistryDns, dig, healthy_upstream, http_get, run_to_exit, wait_until};

const LOCAL: &str = "knative-local-registry=10.0.0.10";

/// A query in wire form: header with `flags`, one question, and `extra` appended (with ARCOUNT).
fn query(id: u16, flags: u16, name: &str, qtype: u16, additional: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&flags.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
    p.extend_from_slice(&(additional.len() as u16).to_be_bytes());
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    for rr in additional {
        p.extend_from_slice(rr);
    }
    p
}

/// An OPT record with the given version and payload size.
fn opt(version: u8, payload: u16) -> Vec<u8> {
    let mut rr = vec![0, 0, 41];
    rr.extend_from_slice(&payload.to_be_bytes());
    rr.extend_from_slice(&[0, version, 0, 0, 0, 0]);
    rr
}

fn exchange(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    socket.send_to(packet, addr).unwrap();
    let mut buf = [0u8; 4096];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0x0f
}

fn server() -> (support::Nsd, RegistryDns) {
    let up = healthy_upstream();
    let s = RegistryDns::start(&["--record", LOCAL, "--upstream", &up.addr.to_string()]);
    (up, s)
}

#[test]
fn malformed_packets_get_formerr_or_nothing_and_the_server_keeps_answering() {
    let (_up, s) = server();
    let good = query(7, 0x0100, "knative-local-registry", 1, &[]);

    // Too short for a header, and a response sent as a query: dropped.
    assert_eq!(exchange(s.addr, &[1, 2, 3]), None);
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(exchange(s.addr, &response), None);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("question cut short", good[..good.len() - 3].to_vec()));
    let mut qd0 = good.clone();
    qd0[5] = 0;
    cases.push(("qdcount 0", qd0));
    let mut qd2 = good.clone();
    qd2[5] = 2;
    cases.push(("qdcount 2", qd2));
    let mut pointer = good[..12].to_vec();
    pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    cases.push(("compression pointer loop in the question", pointer));
    let mut long_label = good[..12].to_vec();
    long_label.push(64);
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    cases.push(("label over 63 bytes", long_label));
    let long_name: String = (0..5).map(|_| "a".repeat(60)).collect::<Vec<_>>().join(".");
    cases.push(("name over 255 bytes", query(7, 0x0100, &long_name, 1, &[])));
    let o = opt(0, 1232);
    cases.push(("two OPT records", query(7, 0x0100, "www.test", 1, &[&o, &o])));
    let mut opt_in_answer = query(7, 0x0100, "www.test", 1, &[&o]);
    opt_in_answer[7] = 1; // ANCOUNT 1
    opt_in_answer[11] = 0; // ARCOUNT 0: the OPT now sits in the answer section
    cases.push(("OPT in the answer section", opt_in_answer));
    let mut dangling = query(7, 0x0100, "www.test", 1, &[&[0xc0, 0xff]]);
    dangling[11] = 1;
    cases.push(("additional record past the end", dangling));

    for (what, packet) in &cases {
        let answer = exchange(s.addr, packet).unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(rcode(&answer), 1, "{what}: FORMERR expected");
        assert_eq!(&answer[..2], &packet[..2], "{what}: ID echoed");
        assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"], "after {what}");
    }
    assert_eq!(dig(s.addr, &["www.test"]).rdata("A"), ["192.0.2.1"]);
}

#[test]
fn other_opcodes_get_notimp_with_only_id_qr_and_opcode_set() {
    let (_up, s) = server();
    // IQUERY, STATUS, NOTIFY, UPDATE and the last opcode, each with every other flag bit set:
    // AA, TC, RD, Z, AD and CD. The answer must echo none of them nor claim RA.
    for opcode in [1u16, 2, 4, 5, 15] {
        let flags = opcode << 11 | 0x0400 | 0x0200 | 0x0100 | 0x0040 | 0x0020 | 0x0010;
        let packet = query(9, flags, "knative-local-registry", 1, &[&opt(0, 1232)]);
        let mut tcp = TcpStream::connect(s.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        tcp.write_all(&(packet.len() as u16).to_be_bytes()).unwrap();
        tcp.write_all(&packet).unwrap();
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).unwrap();
        let mut over_tcp = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut over_tcp).unwrap();
        for (proto, answer) in [("udp", exchange(s.addr, &packet).unwrap()), ("tcp", over_tcp)] {
            let what = format!("opcode {opcode} over {proto}");
            assert_eq!(answer[..2], [0, 9], "{what}: ID");
            assert_eq!(answer[2] & 0x80, 0x80, "{what}: QR");
            assert_eq!((answer[2] >> 3) & 0x0f, opcode as u8, "{what}: opcode echoed");
            assert_eq!(answer[2] & 0x04, 0, "{what}: AA");
            assert_eq!(answer[2] & 0x02, 0, "{what}: TC");
            assert_eq!(answer[2] & 0x01, 0, "{what}: RD");
            assert_eq!(answer[3] & 0x80, 0, "{what}: RA");
            assert_eq!(answer[3] & 0x40, 0, "{what}: Z");
            assert_eq!(answer[3] & 0x20, 0, "{what}: AD");
            assert_eq!(answer[3] & 0x10, 0, "{what}: CD");
            assert_eq!(rcode(&answer), 4, "{what}: NOTIMP");
            assert_eq!(answer[4..], [0; 8], "{what}: header only, no section echoed");
        }
    }
}

#[test]
fn edns_versions_above_zero_get_badvers() {
    let (_up, s) = server();
    for name in ["knative-local-registry", "www.test"] {
        let answer = exchange(s.addr, &query(3, 0x0100, name, 1, &[&opt(1, 1232)])).unwrap();
        assert_eq!(rcode(&answer), 0, "BADVERS is 16: header bits 0");
        let opt = &answer[answer.len() - 11..];
        assert_eq!(opt[1..3], [0, 41], "ends with an OPT record");
        assert_eq!(opt[5], 1, "extended rcode 1 << 4 = BADVERS");
        assert_eq!(opt[6], 0, "our version is 0");
    }
}

#[test]
fn tcp_garbage_closes_only_that_connection() {
    let (_up, s) = server();
    for frame in [&[0u8, 0][..], &[0xff, 0xff, 1, 2, 3][..], &[0, 5, 1, 2, 3, 4, 5][..]] {
        let mut stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream.write_all(frame).unwrap();
        if frame.len() == 5 {
            // Length 65535 with 3 bytes sent: the server waits for the rest, then its idle timeout.
            assert_eq!(dig(s.addr, &["+tcp", "knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
            continue;
        }
        // A zero length, or a message too short to be a query: the connection is closed at once
        // (EOF, not a read timeout).
        let mut buf = [0u8; 64];
        assert!(matches!(stream.read(&mut buf), Ok(0)), "frame {frame:?}: connection closed");
    }
    assert_eq!(dig(s.addr, &["+tcp", "knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
}

#[test]
fn idle_tcp_connections_are_closed_at_the_idle_timeout() {
    let up = healthy_upstream();
    let s = RegistryDns::start(&["--record", LOCAL, "--upstream", &up.addr.to_string(), "--tcp-idle-timeout", "300ms"]);
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    assert_eq!(stream.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn the_tcp_connection_cap_holds_and_frees_up() {
    let up = healthy_upstream();
    let s = RegistryDns::start(&["--record", LOCAL, "--upstream", &up.addr.to_string(), "--max-tcp-connections", "2"]);
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(s.addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(third.read(&mut buf), Ok(0)), "over the cap: closed at once");
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"], "UDP unaffected");
    drop(held);
    assert!(
        wait_until(Duration::from_secs(2), || dig(s.addr, &["+tcp", "knative-local-registry"]).rdata("A")
            == ["10.0.0.10"]),
        "a freed slot serves a new connection"
    );
}

#[test]
fn sigterm_reports_not_ready_keeps_answering_for_the_lame_duck_period_then_exits_zero() {
    let up = healthy_upstream();
    let s = RegistryDns::start(&["--record", LOCAL, "--upstream", &up.addr.to_string(), "--lameduck", "1500ms"]);
    let ops = s.ops.unwrap();
    assert_eq!(http_get(ops, "/readyz").unwrap().0, 200);
    let pid = s.pid().to_string();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(wait_until(Duration::from_millis(500), || http_get(ops, "/readyz").is_some_and(|(code, _)| code == 503)));
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"], "still answering");
    assert_eq!(dig(s.addr, &["www.test"]).rdata("A"), ["192.0.2.1"], "still forwarding");
    let status = s.terminate(Duration::from_secs(5)).expect("exits after the lame-duck period");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() >= Duration::from_millis(1400), "{:?}", signalled.elapsed());
}

#[test]
fn two_instances_share_the_dns_and_ops_addresses_as_in_a_rolling_update() {
    let up = healthy_upstream();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let ops = format!("127.0.0.1:{}", support::free_port());
    let args = ["--listen", &listen, "--ops-listen", &ops, "--record", LOCAL, "--upstream", &up.addr.to_string()];
    let old = RegistryDns::start(&args);
    let new = RegistryDns::start(&args);
    assert_eq!((old.addr, new.addr), (listen.parse().unwrap(), listen.parse().unwrap()));
    assert_eq!(http_get(ops.parse().unwrap(), "/healthz").unwrap().0, 200);
    drop(old);
    assert_eq!(dig(new.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
    assert_eq!(http_get(ops.parse().unwrap(), "/readyz").unwrap().0, 200, "the new instance answers probes");
}

#[test]
fn sigint_stops_at_once_with_exit_status_zero() {
    let (_up, s) = server();
    let pid = s.pid().to_string();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    // Waiting, not terminate(): a SIGTERM right behind the SIGINT could be the one the server sees
    // first, and stop it gracefully, after the lame-duck period.
    let status = s.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(2), "no lame-duck wait on SIGINT: {:?}", signalled.elapsed());
}

#[test]
fn sources_outside_allow_from_get_refused() {
    let up = healthy_upstream();
    // Only 10.0.0.0/8 may query: loopback clients are outsiders here.
    let s = RegistryDns::start(&["--record", LOCAL, "--upstream", &up.addr.to_string(), "--allow-from", "10.0.0.0/8"]);
    for args in [&["knative-local-registry"][..], &["www.test"][..], &["+tcp", "www.test"][..]] {
        let d = dig(s.addr, args);
        assert_eq!(d.status, "REFUSED", "{args:?}");
        assert!(d.answer.is_empty());
    }
    assert_eq!(exchange(s.addr, &[1, 2, 3]), None, "garbage from outsiders is dropped");
    let open =
        RegistryDns::start(&["--record", LOCAL, "--upstream", &up.addr.to_string(), "--allow-from", "127.0.0.0/8"]);
    assert_eq!(dig(open.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
}

#[test]
fn bad_flags_and_configs_exit_non_zero_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--record", "foo=1.2.3"], "1.2.3"),
        (&["--record", "foo"], "NAME=IP"),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--upstream", "127.0.0.1:53"], "--record"),
        (&["--record", "a=10.0.0.1", "--record", "A=10.0.0.2", "--upstream", "127.0.0.1:53"], "twice"),
        (&["--record", "a=10.0.0.1", "--upstream-timeout", "soon"], "soon"),
        (&["--record", "a=10.0.0.1", "--allow-from", "10.0.0.0/33"], "10.0.0.0/33"),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line, got:\n{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let busy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (code, stderr) = run_to_exit(&[
        "--listen",
        &busy.local_addr().unwrap().to_string(),
        "--record",
        "a=10.0.0.1",
        "--upstream",
        "127.0.0.1:53",
    ]);
    // SO_REUSEPORT lets us share a port only with sockets that asked for it too.
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
}
