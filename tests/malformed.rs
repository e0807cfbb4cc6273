//! Hostile packets: a corpus of malformed queries replayed against the real binary over UDP and
//! TCP, many rounds, interleaved with good queries (a local name and one forwarded to nsd). Every
//! good query must be answered correctly, every malformed one handled as decided below, and at the
//! end the process must be alive with its memory where it was after a warm-up.
//!
//! What a malformed packet gets (RFC 1035 section 4.1.1, RFC 6891 section 6.1.1, RFC 9619):
//! - no header to answer to (under 12 bytes), or a response (QR set, so that two servers cannot
//!   be set bouncing packets at each other), or a datagram over the 4 KiB we read: nothing over
//!   UDP, and over TCP the connection is closed (whatever sends that is not a DNS client);
//! - a header that parses with anything wrong after it: FORMERR with the query's ID, echoing the
//!   question when the question itself parsed (so a problem in the records), over TCP on a
//!   connection that stays open;
//! - a TCP length prefix of 0 cannot frame a DNS message: the connection is closed. A prefix of
//!   65535 is the largest message, read and answered whole; cut short, the connection is closed.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use support::{RegistryDns, dig, healthy_upstream};

const LOCAL: &str = "knative-local-registry=10.0.0.10";
const TIMEOUT: Duration = Duration::from_secs(5);
const QTYPE_A: u16 = 1;
const OPT: u16 = 41;

/// What the server does with a malformed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// FORMERR with the packet's ID; the question is echoed when it parsed.
    FormErr { echoes_question: bool },
    /// No answer over UDP; the connection closed over TCP.
    Drop,
}

struct Case {
    name: &'static str,
    packet: Vec<u8>,
    expect: Expect,
}

/// A message in wire form: a header with the given flags and counts, then `body`.
fn message(id: u16, flags: u16, counts: [u16; 4], body: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        p.extend_from_slice(&count.to_be_bytes());
    }
    for part in body {
        p.extend_from_slice(part);
    }
    p
}

/// A question: `name` in wire form (uncompressed), type, class IN.
fn question(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// A resource record: owner name bytes, type, class IN (or the payload size for OPT), TTL 0, rdata.
fn record(owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut rr = owner.to_vec();
    rr.extend_from_slice(&rtype.to_be_bytes());
    rr.extend_from_slice(&if rtype == OPT { 1232u16 } else { 1 }.to_be_bytes());
    rr.extend_from_slice(&[0, 0, 0, 0]);
    rr.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    rr.extend_from_slice(rdata);
    rr
}

fn opt() -> Vec<u8> {
    record(&[0], OPT, &[])
}

/// A good query with RD for `name` A.
fn good(id: u16, name: &str) -> Vec<u8> {
    message(id, 0x0100, [1, 0, 0, 0], &[&question(name, QTYPE_A)])
}

/// Every malformed shape, each with its own ID.
fn corpus() -> Vec<Case> {
    let formerr = Expect::FormErr { echoes_question: false };
    let formerr_echo = Expect::FormErr { echoes_question: true };
    let q = question("www.test", QTYPE_A);
    let at_record = (12 + q.len()) as u8;
    let label64 = [&[64][..], &[b'a'; 64], &q[q.len() - 5..]].concat();
    let name257 = [[&[63][..], &[b'a'; 63]].concat().repeat(4), q[q.len() - 5..].to_vec()].concat();
    let mut response = good(0x5a5a, "www.test");
    response[2] |= 0x80;
    let cases = [
        ("truncated header (7 bytes)", good(0x5a01, "www.test")[..7].to_vec(), Expect::Drop),
        ("header only, no question", message(0x5a02, 0x0100, [1, 0, 0, 0], &[]), formerr),
        ("question cut inside the name", message(0x5a03, 0x0100, [1, 0, 0, 0], &[&q[..6]]), formerr),
        ("question cut before the class", message(0x5a04, 0x0100, [1, 0, 0, 0], &[&q[..q.len() - 2]]), formerr),
        (
            "compression loop in the question",
            message(0x5a05, 0x0100, [1, 0, 0, 0], &[&[0xc0, 12, 0, 1, 0, 1]]),
            formerr,
        ),
        ("question pointer past the end", message(0x5a06, 0x0100, [1, 0, 0, 0], &[&[0xc0, 0xff, 0, 1, 0, 1]]), formerr),
        (
            "compression loop in a record's name",
            message(0x5a07, 0x0100, [1, 0, 0, 1], &[&q, &record(&[0xc0, at_record], QTYPE_A, &[1, 2, 3, 4])]),
            formerr_echo,
        ),
        (
            "record name pointer past the end",
            message(0x5a08, 0x0100, [1, 0, 0, 1], &[&q, &record(&[0xc0, 0xff], QTYPE_A, &[1, 2, 3, 4])]),
            formerr_echo,
        ),
        ("label over 63 bytes", message(0x5a09, 0x0100, [1, 0, 0, 0], &[&label64]), formerr),
        ("name over 255 bytes", message(0x5a0a, 0x0100, [1, 0, 0, 0], &[&name257]), formerr),
        ("qdcount 0", message(0x5a0b, 0x0100, [0, 0, 0, 0], &[&q]), formerr),
        ("qdcount 2", message(0x5a0c, 0x0100, [2, 0, 0, 0], &[&q, &q]), formerr),
        ("OPT in the answer section", message(0x5a0d, 0x0100, [1, 1, 0, 0], &[&q, &opt()]), formerr_echo),
        ("OPT in the authority section", message(0x5a0e, 0x0100, [1, 0, 1, 0], &[&q, &opt()]), formerr_echo),
        ("two OPT records", message(0x5a0f, 0x0100, [1, 0, 0, 2], &[&q, &opt(), &opt()]), formerr_echo),
        ("OPT with a name", message(0x5a10, 0x0100, [1, 0, 0, 1], &[&q, &record(&[0xc0, 12], OPT, &[])]), formerr_echo),
        (
            "record data past the end",
            message(0x5a11, 0x0100, [1, 0, 0, 1], &[&q, &record(&[0], QTYPE_A, &[1, 2, 3, 4])[..13]]),
            formerr_echo,
        ),
        ("more records than sent", message(0x5a12, 0x0100, [1, 0, 0, 3], &[&q, &opt()]), formerr_echo),
        ("a response sent as a query", response, Expect::Drop),
    ];
    cases.into_iter().map(|(name, packet, expect)| Case { name, packet, expect }).collect()
}

/// The A addresses of a good answer to `id`, which must be NOERROR.
fn addresses(answer: &[u8], id: u16, what: &str) -> Vec<String> {
    let m = Message::from_vec(answer).unwrap_or_else(|e| panic!("{what}: answer does not parse: {e}"));
    assert_eq!(m.metadata.id, id, "{what}: the answer to another query");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{what}");
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

fn check_formerr(case: &Case, answer: &[u8], echoes_question: bool) {
    let m = Message::from_vec(answer).unwrap_or_else(|e| panic!("{}: FORMERR does not parse: {e}", case.name));
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{}", case.name);
    assert_eq!(answer[..2], case.packet[..2], "{}: ID echoed", case.name);
    let echoed = usize::from(echoes_question);
    assert_eq!(m.queries.len(), echoed, "{}: question echoed only when it parsed", case.name);
    if echoes_question {
        let end = 12 + question("www.test", QTYPE_A).len();
        assert_eq!(answer[12..end], case.packet[12..end], "{}: question echoed as sent", case.name);
    }
}

/// One client's UDP socket: a malformed packet is followed by a good local query, whose answer
/// proves the malformed one was handled (the same socket reaches the same worker, in order)
/// without waiting for a timeout on the packets that get nothing.
struct Udp {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
}

impl Udp {
    fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        Self { socket, server, next_id: 1 }
    }

    fn recv(&self, what: &str) -> Vec<u8> {
        let mut buf = vec![0u8; 65535];
        let n = self.socket.recv(&mut buf).unwrap_or_else(|e| panic!("{what}: no answer over UDP: {e}"));
        buf.truncate(n);
        buf
    }

    fn good(&mut self, name: &str, addresses_expected: &[&str], what: &str) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1) & 0x3fff;
        self.socket.send_to(&good(id, name), self.server).unwrap();
        assert_eq!(addresses(&self.recv(what), id, what), addresses_expected, "{what}");
    }

    fn round(&mut self, cases: &[Case], oversized: &[u8]) {
        for case in cases {
            self.socket.send_to(&case.packet, self.server).unwrap();
            if let Expect::FormErr { echoes_question } = case.expect {
                check_formerr(case, &self.recv(case.name), echoes_question);
            }
            self.good("knative-local-registry", &["10.0.0.10"], &format!("local name after {}", case.name));
        }
        self.socket.send_to(oversized, self.server).unwrap();
        self.good("knative-local-registry", &["10.0.0.10"], "local name after an oversized datagram");
        self.good("www.test", &["192.0.2.1"], "forwarded name over UDP");
    }

    /// Nothing else arrived: no answer to a packet that should get none, however late.
    fn assert_quiet(&self) {
        self.socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 512];
        let stray = self.socket.recv(&mut buf);
        assert!(stray.is_err(), "an unexpected datagram: {:02x?}", &buf[..stray.unwrap()]);
    }
}

fn connect(server: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&server, TIMEOUT).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn send_framed(stream: &mut TcpStream, packet: &[u8]) {
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).unwrap();
}

/// The next framed message, or `None` when the server closed the connection; a stall panics.
fn read_framed(stream: &mut TcpStream, what: &str) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof || e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("{what}: the server neither answered nor closed over TCP: {e}"),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).unwrap_or_else(|e| panic!("{what}: answer cut short: {e}"));
    Some(message)
}

fn tcp_good(stream: &mut TcpStream, id: u16, name: &str, expected: &[&str], what: &str) {
    send_framed(stream, &good(id, name));
    let answer = read_framed(stream, what).unwrap_or_else(|| panic!("{what}: connection closed"));
    assert_eq!(addresses(&answer, id, what), expected, "{what}");
}

fn assert_closed(stream: &mut TcpStream, what: &str) {
    assert_eq!(read_framed(stream, what), None, "{what}: an answer instead of a closed connection");
}

/// A query for the local name padded (RFC 7830) to the largest TCP message, 65535 bytes.
fn largest_query(id: u16) -> Vec<u8> {
    let q = question("knative-local-registry", QTYPE_A);
    let rdlen = 65535 - 12 - q.len() - 11;
    let mut padding = 12u16.to_be_bytes().to_vec();
    padding.extend_from_slice(&((rdlen - 4) as u16).to_be_bytes());
    padding.resize(rdlen, 0);
    let packet = message(id, 0x0100, [1, 0, 0, 1], &[&q, &record(&[0], OPT, &padding)]);
    assert_eq!(packet.len(), 65535);
    packet
}

fn tcp_round(server: SocketAddr, cases: &[Case]) {
    for case in cases {
        let mut stream = connect(server);
        send_framed(&mut stream, &case.packet);
        match case.expect {
            Expect::FormErr { echoes_question } => {
                let answer = read_framed(&mut stream, case.name).unwrap_or_else(|| panic!("{}: closed", case.name));
                check_formerr(case, &answer, echoes_question);
                tcp_good(&mut stream, 1, "knative-local-registry", &["10.0.0.10"], case.name);
            }
            Expect::Drop => assert_closed(&mut stream, case.name),
        }
    }
    let mut stream = connect(server);
    stream.write_all(&[0, 0]).unwrap();
    assert_closed(&mut stream, "length prefix 0");

    let mut stream = connect(server);
    stream.write_all(&[0xff, 0xff]).unwrap();
    stream.write_all(&good(2, "knative-local-registry")).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert_closed(&mut stream, "length prefix 65535, message cut short");

    let mut stream = connect(server);
    stream.write_all(&[0xff, 0xff]).unwrap();
    stream.write_all(&largest_query(3)).unwrap();
    let answer = read_framed(&mut stream, "a 65535-byte query").expect("a 65535-byte query is answered");
    assert_eq!(addresses(&answer, 3, "a 65535-byte query"), ["10.0.0.10"]);
    tcp_good(&mut stream, 4, "www.test", &["192.0.2.1"], "forwarded name over TCP");
}

/// Resident memory of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn malformed_packets_get_their_decided_answer_and_leave_the_server_answering_with_flat_memory() {
    let up = healthy_upstream();
    let mut s = RegistryDns::start(&["--record", LOCAL, "--upstream", &up.addr.to_string()]);
    let cases = corpus();
    let oversized = [good(0x5b00, "www.test"), vec![0; 5000]].concat();
    let mut udp = Udp::new(s.addr);

    // Warm-up: every path once or twice, so that buffers, the allocator's arenas and the
    // runtimes' task pools reach their working size before the measurement.
    for _ in 0..3 {
        udp.round(&cases, &oversized);
        tcp_round(s.addr, &cases);
    }
    let before = vm_rss_kib(s.pid());
    for round in 0..400 {
        udp.round(&cases, &oversized);
        if round % 5 == 0 {
            tcp_round(s.addr, &cases);
        }
    }
    udp.assert_quiet();
    let after = vm_rss_kib(s.pid());
    eprintln!("VmRSS {before} KiB after warm-up, {after} KiB after the replay");

    assert!(s.is_running(), "the server died");
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
    // Some growth is not a leak: the allocator may still split a fresh arena page or a thread
    // cache may grow once. A leak would grow with the replay: 8000 malformed datagrams and 1760
    // hostile connections (80 of them with 64 KiB each) leaking only 128 bytes apiece would
    // already pass 1 MiB.
    assert!(after <= before + 1024, "VmRSS grew from {before} KiB to {after} KiB during the replay");
}
