//! The two ways of asking for the name: the system resolver (glibc's getaddrinfo, with its
//! nsswitch, /etc/hosts, resolv.conf and whatever stub sits behind it) and a plain DNS query
//! straight to one server (registry-dns, or each resolv.conf nameserver in turn). Comparing
//! the two is the doctor's verdict; the direct answers say where they part.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

/// What one server said when asked for A and AAAA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An answer: the rcode of the A query (of the AAAA query if only that came back).
    Answer { rcode: ResponseCode, authoritative: bool, addresses: BTreeSet<IpAddr> },
    /// Nothing came back in time.
    Silent,
    /// ICMP port unreachable: the host is there, nothing listens on the port.
    Refused,
    /// The query could not even be sent (no route, for example).
    Unreachable(String),
}

impl Reply {
    /// The addresses of a NOERROR answer (empty for NODATA or no answer at all).
    pub fn addresses(&self) -> Option<&BTreeSet<IpAddr>> {
        match self {
            Reply::Answer { rcode: ResponseCode::NoError, addresses, .. } => Some(addresses),
            _ => None,
        }
    }

    /// Whether glibc stops at this server (an answer or NXDOMAIN) rather than trying the next
    /// one (silence, SERVFAIL, REFUSED, NOTIMP...).
    pub fn is_final_for_glibc(&self) -> bool {
        matches!(self, Reply::Answer { rcode: ResponseCode::NoError | ResponseCode::NXDomain, .. })
    }
}

/// Asks `server` for the A and AAAA records of `name` (taken as fully qualified), each query
/// sent twice at most, `timeout` per try.
pub fn ask(server: SocketAddr, name: &str, timeout: Duration) -> Reply {
    let name = match Name::from_ascii(format!("{}.", name.trim_end_matches('.'))) {
        Ok(name) => name,
        Err(e) => return Reply::Unreachable(format!("'{name}' is not a valid DNS name: {e}")),
    };
    let local: SocketAddr =
        if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    // Connected, so that ICMP errors surface and only the server's datagrams arrive.
    let socket = match UdpSocket::bind(local).and_then(|s| s.connect(server).map(|()| s)) {
        Ok(socket) => socket,
        Err(e) => return Reply::Unreachable(e.to_string()),
    };
    let mut pending: Vec<(RecordType, Vec<u8>, u16)> = Vec::new();
    for rtype in [RecordType::A, RecordType::AAAA] {
        let mut query = Message::query();
        query.metadata.id = rand::random();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), rtype));
        match query.to_vec() {
            Ok(bytes) => pending.push((rtype, bytes, query.metadata.id)),
            Err(e) => return Reply::Unreachable(format!("cannot encode the query: {e}")),
        }
    }
    let mut replies: Vec<(RecordType, Message)> = Vec::new();
    for _try in 0..2 {
        for (_, bytes, _) in &pending {
            if let Err(e) = socket.send(bytes) {
                return match e.kind() {
                    ErrorKind::ConnectionRefused => Reply::Refused,
                    _ => Reply::Unreachable(e.to_string()),
                };
            }
        }
        match receive(&socket, &name, &mut pending, timeout) {
            Ok(mut got) => replies.append(&mut got),
            Err(reply) => return reply,
        }
        if pending.is_empty() {
            break;
        }
    }
    let Some(first) = replies.iter().find(|(rtype, _)| *rtype == RecordType::A).or(replies.first()) else {
        return Reply::Silent;
    };
    Reply::Answer {
        rcode: first.1.metadata.response_code,
        authoritative: replies.iter().any(|(_, m)| m.metadata.authoritative),
        addresses: replies.iter().flat_map(|(_, m)| m.answers.iter().filter_map(|r| r.data.ip_addr())).collect(),
    }
}

/// Collects the replies to the `pending` queries until all came or `timeout` passed; a reply
/// counts only with a pending ID and our question. `Err` when the port turned out closed.
fn receive(
    socket: &UdpSocket,
    name: &Name,
    pending: &mut Vec<(RecordType, Vec<u8>, u16)>,
    timeout: Duration,
) -> Result<Vec<(RecordType, Message)>, Reply> {
    let deadline = Instant::now() + timeout;
    let mut replies = Vec::new();
    let mut buf = [0u8; 4096];
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Err(Reply::Refused),
            Err(_) => break,
        };
        let Ok(message) = Message::from_vec(&buf[..len]) else { continue };
        let question = message.queries.first().map(|q| (q.name(), q.query_type()));
        if let Some(index) = pending.iter().position(|(rtype, _, id)| {
            *id == message.metadata.id && question.is_some_and(|(n, t)| n == name && t == *rtype)
        }) {
            replies.push((pending.remove(index).0, message));
        }
    }
    Ok(replies)
}

/// What getaddrinfo returned and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemLookup {
    /// The addresses, or glibc's error message.
    pub result: Result<BTreeSet<IpAddr>, String>,
    pub took: Duration,
}

/// A getaddrinfo call running on its own thread, so that the direct queries run meanwhile.
pub struct PendingLookup {
    started: Instant,
    done: mpsc::Receiver<Result<BTreeSet<IpAddr>, String>>,
}

impl PendingLookup {
    /// Starts `getaddrinfo(name, AF_UNSPEC)`, as a program connecting to the name does.
    pub fn start(name: &str) -> Self {
        let (tx, done) = mpsc::channel();
        let name = name.to_string();
        std::thread::spawn(move || {
            let result = (name.as_str(), 0)
                .to_socket_addrs()
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .map_err(|e| e.to_string().trim_start_matches("failed to lookup address information: ").to_string());
            let _ = tx.send(result);
        });
        Self { started: Instant::now(), done }
    }

    /// The result, or an error once `limit` has passed since the start (the call is then left
    /// to finish on its own; the process exits soon after).
    pub fn finish(self, limit: Duration) -> SystemLookup {
        let left = limit.saturating_sub(self.started.elapsed());
        let result =
            self.done.recv_timeout(left).unwrap_or_else(|_| Err(format!("no result within {} s", limit.as_secs())));
        SystemLookup { result, took: self.started.elapsed() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_is_refused_and_a_silent_one_is_silent() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        assert_eq!(ask(addr, "knative-local-registry", Duration::from_millis(500)), Reply::Refused);

        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        assert_eq!(
            ask(silent.local_addr().unwrap(), "knative-local-registry", Duration::from_millis(200)),
            Reply::Silent
        );
        assert!(started.elapsed() >= Duration::from_millis(400), "two tries");
    }

    #[test]
    fn getaddrinfo_of_an_address_literal() {
        let lookup = PendingLookup::start("127.0.0.1").finish(Duration::from_secs(5));
        assert_eq!(lookup.result, Ok(BTreeSet::from(["127.0.0.1".parse().unwrap()])));
    }
}
