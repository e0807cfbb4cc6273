//! The UDP sockets a worker's queries leave on: the source-port half of the spoofing resistance
//! (RFC 5452 section 9.2), the ID being the other half.
//!
//! A forger who wants a reply accepted must hit the port and the ID of a query in flight. So every
//! socket is connected to its upstream (the kernel drops datagrams from any other address), sits
//! on a port the kernel chose at random, and is short-lived: it carries at most
//! [`QUERIES_PER_SOCKET`] queries and lives at most [`SOCKET_LIFETIME`], then a fresh socket on a
//! new port replaces it. Over 10,000 queries that is at least 1,250 ports, so ID and port give
//! more than 26 bits, and a port learned by scanning (SAD DNS) is useless within seconds. Each
//! upstream has up to [`ACTIVE_PER_UPSTREAM`] sockets taking queries, picked at random per query.
//! A retired socket stays open until its queries are answered or have timed out.
//!
//! All of a worker's upstream sockets sit in one epoll set (mio), registered with the runtime as
//! one descriptor: opening and closing a socket costs no task and no runtime registration, and
//! one wakeup reads every socket with replies.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rand::Rng;
use rand::rngs::ThreadRng;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use crate::net::batch;

/// Sockets per upstream taking new queries at any moment.
pub const ACTIVE_PER_UPSTREAM: usize = 8;
/// Queries a socket carries before a fresh one replaces it.
pub const QUERIES_PER_SOCKET: u32 = 8;
/// How long a socket takes new queries before a fresh one replaces it, however few it carried.
pub const SOCKET_LIFETIME: Duration = Duration::from_secs(10);

/// Readiness events read per poll.
const EVENTS: usize = 256;

/// Identifies a socket while it is open (an index, reused after it closes).
pub type SocketKey = u32;

/// The epoll set of a worker's upstream sockets, as the runtime sees it: one readable descriptor,
/// owned (the `Poll` closes it).
pub struct Readiness {
    fd: RawFd,
    poll: RefCell<Poll>,
}

impl AsRawFd for Readiness {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// One upstream socket.
struct Outbound {
    socket: std::net::UdpSocket,
    upstream: usize,
    /// Queries sent on it so far, in its life.
    sent: u32,
    /// Queries waiting for their reply on it.
    in_flight: u32,
    opened: Instant,
    /// Takes no new queries; closes when `in_flight` reaches 0.
    retired: bool,
    /// Received a datagram that matched no query in flight: someone who is not the upstream knows
    /// this port, so the answers still due on it are checked over TCP.
    suspect: bool,
    /// IDs of its queries whose replies may still come though no query waits for them (timed
    /// out, or checked over TCP): such a late reply is no forgery.
    late: Vec<u16>,
}

/// The upstream sockets of one worker.
pub struct Sockets {
    readiness: Rc<AsyncFd<Readiness>>,
    events: Events,
    addrs: Vec<SocketAddr>,
    slots: Vec<Option<Outbound>>,
    free: Vec<SocketKey>,
    /// Per upstream, the sockets taking new queries.
    active: Vec<Vec<SocketKey>>,
    rng: ThreadRng,
}

impl Sockets {
    /// An empty set for upstreams at `addrs` (sockets open on first use), registered with the
    /// current runtime.
    pub fn new(addrs: Vec<SocketAddr>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let readiness = Readiness { fd: poll.as_raw_fd(), poll: RefCell::new(poll) };
        Ok(Self {
            readiness: Rc::new(batch::register_owned(readiness)?),
            events: Events::with_capacity(EVENTS),
            active: vec![Vec::new(); addrs.len()],
            addrs,
            slots: Vec::new(),
            free: Vec::new(),
            rng: rand::rng(),
        })
    }

    /// What the receive loop waits on.
    pub fn readiness(&self) -> Rc<AsyncFd<Readiness>> {
        self.readiness.clone()
    }

    /// Appends the sockets that received datagrams since they were last read to `ready`; returns
    /// whether more may be waiting (the events filled the buffer).
    pub fn ready(&mut self, ready: &mut Vec<SocketKey>) -> io::Result<bool> {
        self.readiness.get_ref().poll.borrow_mut().poll(&mut self.events, Some(Duration::ZERO))?;
        ready.extend(self.events.iter().map(|e| e.token().0 as SocketKey));
        Ok(ready.len() == EVENTS)
    }

    /// The socket a query for `upstream` leaves on, counted as carrying it: a random one of the
    /// upstream's active sockets, or a fresh one in place of one that carried its share or lived
    /// its time. Fails only when no socket can be opened and none is open.
    pub fn take(&mut self, upstream: usize, now: Instant) -> io::Result<SocketKey> {
        let active = self.active[upstream].len();
        let key = if active < ACTIVE_PER_UPSTREAM {
            match self.open(upstream, now) {
                Ok(key) => key,
                Err(e) => *self.active[upstream].first().ok_or(e)?,
            }
        } else {
            let key = self.active[upstream][self.rng.random_range(0..active)];
            let socket = self.slots[key as usize].as_ref().expect("active socket");
            if socket.sent >= QUERIES_PER_SOCKET || now.saturating_duration_since(socket.opened) >= SOCKET_LIFETIME {
                match self.open(upstream, now) {
                    Ok(fresh) => {
                        self.retire(key);
                        fresh
                    }
                    // Out of descriptors, say: an old port beats no answer.
                    Err(e) => {
                        debug!(error = %e, "cannot open a fresh upstream socket; reusing one");
                        key
                    }
                }
            } else {
                key
            }
        };
        let socket = self.slots[key as usize].as_mut().expect("open socket");
        socket.sent += 1;
        socket.in_flight += 1;
        Ok(key)
    }

    /// A query that [`Sockets::take`] counted on `key` is over there (answered, failed, moved
    /// on), with its ID when its reply may still come; a retired socket closes with its last query.
    pub fn release(&mut self, key: SocketKey, late: Option<u16>) {
        let socket = self.slots[key as usize].as_mut().expect("open socket");
        socket.in_flight -= 1;
        if let Some(id) = late {
            socket.late.push(id);
        }
        if socket.retired && socket.in_flight == 0 {
            self.close(key);
        }
    }

    /// Whether `id` is that of a query released with its reply still to come on `key`.
    pub fn is_late(&self, key: SocketKey, id: u16) -> bool {
        self.slots[key as usize].as_ref().is_some_and(|s| s.late.contains(&id))
    }

    /// `key` received a datagram that matched no query in flight: it takes no new queries, and
    /// the answers still due on it are to be checked over TCP.
    pub fn suspect(&mut self, key: SocketKey) {
        if let Some(socket) = self.slots[key as usize].as_mut() {
            socket.suspect = true;
        }
        self.retire(key);
    }

    pub fn is_suspect(&self, key: SocketKey) -> bool {
        self.slots[key as usize].as_ref().is_some_and(|s| s.suspect)
    }

    /// The upstream `key` is connected to.
    pub fn upstream(&self, key: SocketKey) -> Option<usize> {
        self.slots[key as usize].as_ref().map(|s| s.upstream)
    }

    /// Replaces every socket of `upstream`: the next queries leave on fresh ports.
    pub fn replace_all(&mut self, upstream: usize) {
        for key in std::mem::take(&mut self.active[upstream]) {
            self.retire(key);
        }
    }

    /// Retires the idle sockets that outlived [`SOCKET_LIFETIME`], so that a port no query uses
    /// does not stay open to be scanned.
    pub fn sweep(&mut self, now: Instant) {
        for upstream in 0..self.active.len() {
            let expired: Vec<SocketKey> = self.active[upstream]
                .iter()
                .copied()
                .filter(|&key| {
                    let socket = self.slots[key as usize].as_ref().expect("active socket");
                    socket.in_flight == 0 && now.saturating_duration_since(socket.opened) >= SOCKET_LIFETIME
                })
                .collect();
            for key in expired {
                self.retire(key);
            }
        }
    }

    pub fn fd(&self, key: SocketKey) -> RawFd {
        self.slots[key as usize].as_ref().expect("open socket").socket.as_raw_fd()
    }

    /// Whether `key` is open (a stale readiness event may name a closed one).
    pub fn is_open(&self, key: SocketKey) -> bool {
        self.slots.get(key as usize).is_some_and(Option::is_some)
    }

    fn open(&mut self, upstream: usize, now: Instant) -> io::Result<SocketKey> {
        let socket = connected_socket(self.addrs[upstream])?;
        let key = self.free.pop().unwrap_or(self.slots.len() as SocketKey);
        self.readiness.get_ref().poll.borrow().registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(key as usize),
            Interest::READABLE,
        )?;
        let outbound = Outbound {
            socket,
            upstream,
            sent: 0,
            in_flight: 0,
            opened: now,
            retired: false,
            suspect: false,
            late: Vec::new(),
        };
        if key as usize == self.slots.len() {
            self.slots.push(Some(outbound));
        } else {
            self.slots[key as usize] = Some(outbound);
        }
        self.active[upstream].push(key);
        Ok(key)
    }

    fn retire(&mut self, key: SocketKey) {
        let Some(socket) = self.slots[key as usize].as_mut() else { return };
        if !socket.retired {
            socket.retired = true;
            let upstream = socket.upstream;
            self.active[upstream].retain(|&k| k != key);
        }
        if socket.in_flight == 0 {
            self.close(key);
        }
    }

    /// Closing the descriptor also takes it out of the epoll set.
    fn close(&mut self, key: SocketKey) {
        self.slots[key as usize] = None;
        self.free.push(key);
    }
}

/// A non-blocking UDP socket on a port the kernel picks at random, connected to `upstream`.
fn connected_socket(upstream: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let local: SocketAddr =
        if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(upstream)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
