//! A deliberately misbehaving upstream, on UDP and TCP of one loopback port: silent, slow,
//! SERVFAIL or REFUSED, forged replies (wrong ID, wrong question, another source, garbage, a cut
//! message), a TC answer, or an answer larger than any client's buffer. Its behaviour can be
//! changed while it runs (to show that a failed upstream is used again once it recovers), and it
//! records when each query arrived (to count what registry-dns sent it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use registry_dns::dns::wire;

/// The address in every genuine answer.
pub const GENUINE: &str = "192.0.2.99";
/// The address in every forged answer: a client that sees it was fooled.
pub const FORGED: &str = "203.0.113.66";
/// Records in the answer of [`Behaviour::Truncated`] (over TCP) and [`Behaviour::Oversized`]:
/// about 1.6 kB, more than 512 and 1232 bytes.
pub const BIG_ANSWERS: usize = 100;

/// A reply that is not the genuine answer to the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// A reply with another ID.
    WrongId,
    /// A reply with the right ID for another question.
    WrongQuestion,
    /// A reply with the right ID and name whose QTYPE differs only in bit 0x20 (TYPE65, HTTPS,
    /// answered as TYPE97): a case-insensitive comparison of the whole question would take it.
    WrongType,
    /// The same for QCLASS (IN, 1, answered as class 33).
    WrongClass,
    /// A reply with the right ID and question from another port of the same address.
    OtherSource,
    /// A reply with the right ID and question from the same port of another address (127.0.0.2).
    OtherAddress,
    /// Bytes that are not a DNS message, under the right ID.
    Garbage,
    /// The genuine answer cut off in the middle of its answer record: right ID and question, no TC,
    /// but not a whole message.
    Cut,
}

impl Forgery {
    pub const ALL: [Forgery; 8] = [
        Forgery::WrongId,
        Forgery::WrongQuestion,
        Forgery::WrongType,
        Forgery::WrongClass,
        Forgery::OtherSource,
        Forgery::OtherAddress,
        Forgery::Garbage,
        Forgery::Cut,
    ];
}

/// What the upstream does with each query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// The genuine answer ([`GENUINE`]) at once.
    Genuine,
    /// Reads queries and never answers (TCP connections are held open).
    Silent,
    /// The genuine answer after this delay.
    Slow(Duration),
    /// An empty answer with this rcode (SERVFAIL, REFUSED).
    Rcode(ResponseCode),
    /// Only the forged reply, never the genuine one (over TCP: the genuine answer, except that a
    /// [`Forgery::Cut`] upstream cuts its TCP answers too).
    Forged(Forgery),
    /// The forged reply, then the genuine one after the delay (over TCP: the genuine answer).
    ForgedThenGenuine(Forgery, Duration),
    /// Over UDP an empty answer with TC set; over TCP the whole answer of [`BIG_ANSWERS`] records.
    Truncated,
    /// The whole answer of [`BIG_ANSWERS`] records over UDP too, whatever the client's buffer.
    Oversized,
    /// The genuine answer with an OPT record echoing the query's client COOKIE with a server
    /// cookie of its own (RFC 7873), as a cookie-aware upstream answers.
    CookieEcho,
}

pub struct BadUpstream {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl BadUpstream {
    /// Answers every query with `forgery`, then, after `genuine_after`, with the genuine answer.
    pub fn start(forgery: Forgery, genuine_after: Duration) -> Self {
        Self::with(Behaviour::ForgedThenGenuine(forgery, genuine_after))
    }

    /// Starts on a free loopback port (UDP and TCP) behaving as `behaviour`.
    pub fn with(behaviour: Behaviour) -> Self {
        let (socket, tcp) = bind_udp_and_tcp();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let this = Self {
            addr,
            behaviour: Arc::new(Mutex::new(behaviour)),
            arrivals: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (delayed, queue) = mpsc::channel::<(Instant, Vec<u8>, SocketAddr)>();
        let sender = socket.try_clone().unwrap();
        // Delayed replies leave in the order they were queued, each at its time.
        std::thread::spawn(move || {
            for (at, reply, client) in queue {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let _ = sender.send_to(&reply, client);
            }
        });
        let other_port = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other_address = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), addr.port())).unwrap();
        let (behaviour, arrivals, stop) = (this.behaviour.clone(), this.arrivals.clone(), this.stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, client)) = socket.recv_from(&mut buf) else { continue };
                arrivals.lock().unwrap().push(Instant::now());
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let id = query.metadata.id;
                let later = |delay: Duration, reply: Vec<u8>| {
                    let _ = delayed.send((Instant::now() + delay, reply, client));
                };
                let behaviour = *behaviour.lock().unwrap();
                let _ = match behaviour {
                    Behaviour::Genuine => socket.send_to(&genuine(&query), client),
                    Behaviour::Silent => continue,
                    Behaviour::Slow(delay) => {
                        later(delay, genuine(&query));
                        continue;
                    }
                    Behaviour::Rcode(code) => socket.send_to(&reply(&query, id, None, code, &[]), client),
                    Behaviour::Forged(forgery) | Behaviour::ForgedThenGenuine(forgery, _) => {
                        let forged = forge(forgery, &query);
                        let sent = match forgery {
                            Forgery::OtherSource => other_port.send_to(&forged, client),
                            Forgery::OtherAddress => other_address.send_to(&forged, client),
                            _ => socket.send_to(&forged, client),
                        };
                        if let Behaviour::ForgedThenGenuine(_, delay) = behaviour {
                            later(delay, genuine(&query));
                        }
                        sent
                    }
                    Behaviour::Truncated => {
                        let mut tc = message(&query, id, None, ResponseCode::NoError, &[]);
                        tc.metadata.truncation = true;
                        socket.send_to(&tc.to_vec().unwrap(), client)
                    }
                    Behaviour::Oversized => socket.send_to(&big(&query), client),
                    Behaviour::CookieEcho => socket.send_to(&with_cookie(genuine(&query), &buf[..n]), client),
                };
            }
        });
        tcp.set_nonblocking(true).unwrap();
        let (behaviour, arrivals, stop) = (this.behaviour.clone(), this.arrivals.clone(), this.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((stream, _)) => {
                        let (behaviour, arrivals, stop) = (behaviour.clone(), arrivals.clone(), stop.clone());
                        std::thread::spawn(move || serve_tcp(stream, &behaviour, &arrivals, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        this
    }

    /// Changes the behaviour for the queries that arrive from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// How many queries arrived so far (UDP and TCP).
    pub fn queries(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Waits (at most 5 s) until the loop probe that registry-dns sends each new upstream list has
    /// arrived: a task of its own sends it, after start or a reload, so a count of queries taken
    /// before it came may or may not include it.
    pub fn wait_for_loop_probe(&self) {
        assert!(
            super::wait_until(Duration::from_secs(5), || self.queries() >= 1),
            "no loop probe reached {}",
            self.addr
        );
    }

    /// When each query arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
}

/// Answers length-prefixed queries on one connection: what UDP gets, except that the forged
/// behaviours (but a cut one) answer genuinely and the large ones answer whole.
fn serve_tcp(mut stream: TcpStream, behaviour: &Mutex<Behaviour>, arrivals: &Mutex<Vec<Instant>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while pending.len() >= 2 && pending.len() >= 2 + usize::from(u16::from_be_bytes([pending[0], pending[1]])) {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            let message: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
            arrivals.lock().unwrap().push(Instant::now());
            let Ok(query) = Message::from_vec(&message) else { return };
            let current = *behaviour.lock().unwrap();
            let answer = match current {
                Behaviour::Silent => continue,
                Behaviour::Slow(delay) => {
                    std::thread::sleep(delay);
                    genuine(&query)
                }
                Behaviour::Rcode(code) => reply(&query, query.metadata.id, None, code, &[]),
                Behaviour::Truncated | Behaviour::Oversized => big(&query),
                Behaviour::Forged(Forgery::Cut) => forge(Forgery::Cut, &query),
                Behaviour::Genuine | Behaviour::Forged(_) | Behaviour::ForgedThenGenuine(..) => genuine(&query),
                Behaviour::CookieEcho => with_cookie(genuine(&query), &message),
            };
            let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&answer);
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

fn genuine(query: &Message) -> Vec<u8> {
    reply(query, query.metadata.id, None, ResponseCode::NoError, &[GENUINE])
}

/// `reply` with an OPT record whose COOKIE option is the client cookie of `query` (raw bytes)
/// followed by an 8-byte server cookie; `reply` as it is when the query sent no cookie.
fn with_cookie(mut reply: Vec<u8>, query: &[u8]) -> Vec<u8> {
    let Ok(parsed) = wire::parse_query(query, &mut [0; wire::MAX_NAME_LEN]) else { return reply };
    let Some(opt) = wire::Records::new(query, parsed.question_end).find(|r| r.rtype == 41) else { return reply };
    let rdata = &query[opt.rdata.0..opt.rdata.1];
    if rdata.len() < 12 || rdata[..2] != [0, 10] {
        return reply;
    }
    let client_cookie = &rdata[4..12];
    reply.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 20, 0, 10, 0, 16]);
    reply.extend_from_slice(client_cookie);
    reply.extend_from_slice(b"servrcke");
    reply[11] += 1;
    reply
}

/// The answer of [`BIG_ANSWERS`] A records, 198.51.100.0 and up.
fn big(query: &Message) -> Vec<u8> {
    let ips: Vec<String> = (0..BIG_ANSWERS).map(|i| format!("198.51.100.{i}")).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    reply(query, query.metadata.id, None, ResponseCode::NoError, &ips)
}

fn forge(forgery: Forgery, query: &Message) -> Vec<u8> {
    let id = query.metadata.id;
    match forgery {
        Forgery::WrongId => reply(query, id.wrapping_add(1), None, ResponseCode::NoError, &[FORGED]),
        Forgery::WrongQuestion => reply(query, id, Some("evil.test."), ResponseCode::NoError, &[FORGED]),
        Forgery::WrongType | Forgery::WrongClass => {
            let mut forged = message(query, id, None, ResponseCode::NoError, &[FORGED]);
            let question = &mut forged.queries[0];
            if forgery == Forgery::WrongType {
                question.set_query_type(RecordType::from(u16::from(question.query_type()) ^ 0x20));
            } else {
                question.set_query_class(DNSClass::from(u16::from(question.query_class()) ^ 0x20));
            }
            forged.to_vec().unwrap()
        }
        Forgery::OtherSource | Forgery::OtherAddress => reply(query, id, None, ResponseCode::NoError, &[FORGED]),
        Forgery::Garbage => {
            let mut garbage = vec![0xffu8; 40];
            garbage[..2].copy_from_slice(&id.to_be_bytes());
            garbage
        }
        Forgery::Cut => {
            let whole = reply(query, id, None, ResponseCode::NoError, &[FORGED]);
            // The A record's RDATA is its last 4 bytes: keep 2 of them.
            whole[..whole.len() - 2].to_vec()
        }
    }
}

/// A reply to `query` with `id` (see [`message`]), as bytes.
pub fn reply(query: &Message, id: u16, name: Option<&str>, rcode: ResponseCode, ips: &[&str]) -> Vec<u8> {
    message(query, id, name, rcode, ips).to_vec().unwrap()
}

/// A reply to `query` with `id`, for its question (or `name`), with `rcode` and an A record for
/// each of `ips`.
fn message(query: &Message, id: u16, name: Option<&str>, rcode: ResponseCode, ips: &[&str]) -> Message {
    let mut reply = Message::new(id, MessageType::Response, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = rcode;
    let mut question = query.queries[0].clone();
    if let Some(name) = name {
        question.set_name(Name::from_ascii(name).unwrap());
    }
    let owner = question.name().clone();
    reply.add_query(question);
    for ip in ips {
        reply.add_answer(Record::from_rdata(owner.clone(), 60, RData::A(A(ip.parse().unwrap()))));
    }
    reply
}
