//! A deliberately misbehaving upstream: before (or instead of) the genuine answer it sends
//! forged ones, so tests can prove that registry-dns accepts only genuine replies (RFC 5452).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record};

/// The address in every genuine answer.
pub const GENUINE: &str = "192.0.2.99";
/// The address in every forged answer: a client that sees it was fooled.
pub const FORGED: &str = "203.0.113.66";

/// What the upstream sends for each query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// A reply with another ID.
    WrongId,
    /// A reply with the right ID for another question.
    WrongQuestion,
    /// A reply with the right ID and question from another port of the same host.
    OtherSource,
    /// Bytes that are not a DNS message, under the right ID.
    Garbage,
}

pub struct BadUpstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl BadUpstream {
    /// Answers every query with `forgery`, then, after `genuine_after`, with the genuine answer.
    pub fn start(forgery: Forgery, genuine_after: Duration) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, client)) = socket.recv_from(&mut buf) else { continue };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let forged = match forgery {
                    Forgery::WrongId => answer(&query, query.metadata.id.wrapping_add(1), None, FORGED),
                    Forgery::WrongQuestion => answer(&query, query.metadata.id, Some("evil.test."), FORGED),
                    Forgery::OtherSource | Forgery::Garbage => answer(&query, query.metadata.id, None, FORGED),
                };
                match forgery {
                    Forgery::OtherSource => other.send_to(&forged, client).unwrap(),
                    Forgery::Garbage => {
                        let mut garbage = vec![0xffu8; 40];
                        garbage[..2].copy_from_slice(&query.metadata.id.to_be_bytes());
                        socket.send_to(&garbage, client).unwrap()
                    }
                    _ => socket.send_to(&forged, client).unwrap(),
                };
                std::thread::sleep(genuine_after);
                socket.send_to(&answer(&query, query.metadata.id, None, GENUINE), client).unwrap();
            }
        });
        Self { addr, stop }
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An answer to `query` with `id`, for its question (or `name`), with one A record `ip`.
fn answer(query: &Message, id: u16, name: Option<&str>, ip: &str) -> Vec<u8> {
    let mut reply = Message::new(id, MessageType::Response, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let mut question = query.queries[0].clone();
    if let Some(name) = name {
        question.set_name(Name::from_ascii(name).unwrap());
    }
    let owner = question.name().clone();
    reply.add_query(question);
    reply.add_answer(Record::from_rdata(owner, 60, RData::A(A(ip.parse().unwrap()))));
    reply.to_vec().unwrap()
}
