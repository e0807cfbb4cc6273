//! The UDP sockets a worker's tries leave on: the source-port half of the spoofing resistance
//! (RFC 5452 section 9.2), the ID being the other half.
//!
//! A forger who wants a reply accepted must hit the port and the ID of a query in flight. Every
//! socket is connected to its upstream (the kernel drops datagrams from any other address) and sits
//! on a port the kernel chose at random. Each upstream has [`POOL`] slots per worker; each send batch
//! for an upstream goes out of a slot picked at random, so even a forger who knows every open port
//! must guess one of 1,024 ports and one of 65,536 IDs: 26 bits. A slot's socket is replaced by a
//! fresh one on a new port once it has carried [`QUERIES_PER_SOCKET`] queries or lived
//! [`SOCKET_LIFETIME`], so a port found by scanning (SAD DNS) does not stay useful; a replaced
//! socket stays open until its queries are answered or have timed out. Slots are filled when
//! first picked, and idle sockets close, so a quiet node holds few sockets open.
//!
//! Sharing one socket per batch keeps the batching (one `sendmmsg` per upstream per batch, one
//! `recvmmsg` for its replies); a fresh socket per query would cost system calls on every query.
//! All of a worker's upstream sockets sit in one epoll set (mio), registered with the runtime as
//! one descriptor ([`Epoll`]): opening and closing a socket costs no task and no runtime
//! registration, and one wakeup reads every socket with replies. The pool's rules ([`Sockets`])
//! are kept apart from the descriptors, so that its tests need none.

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

/// Socket slots per upstream and worker: 10 bits of source port.
pub const POOL: usize = 1024;
/// Queries a socket carries before a fresh one replaces it.
pub const QUERIES_PER_SOCKET: u32 = 64;
/// How long a socket takes new queries before a fresh one replaces it, however few it carried.
pub const SOCKET_LIFETIME: Duration = Duration::from_secs(10);
/// How often idle sockets past their lifetime are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Readiness events read per poll.
const EVENTS: usize = 256;

/// Refers to a socket while it is open (an index into the open sockets, reused after it closes).
pub type SocketRef = u32;

/// The epoll set of a worker's upstream sockets, as the runtime sees it: one readable descriptor,
/// owned (the `Poll` closes it).
pub struct EpollSet {
    fd: RawFd,
    poll: RefCell<Poll>,
}

impl AsRawFd for EpollSet {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// Where the pool's sockets live: the kernel ([`Epoll`]), or a test's stand-in.
pub trait Backing {
    /// Opens a socket connected to `upstream`, on a port the kernel picks at random, as `socket`.
    fn open(&mut self, socket: SocketRef, upstream: SocketAddr) -> io::Result<()>;
    /// Closes `socket`.
    fn close(&mut self, socket: SocketRef);
}

/// A worker's upstream sockets in the kernel, all in one epoll set registered with the runtime.
pub struct Epoll {
    epoll_set: Rc<AsyncFd<EpollSet>>,
    events: Events,
    /// By reference.
    sockets: Vec<Option<std::net::UdpSocket>>,
}

impl Epoll {
    /// An empty set, registered with the current runtime.
    fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let epoll_set = EpollSet { fd: poll.as_raw_fd(), poll: RefCell::new(poll) };
        Ok(Self {
            epoll_set: Rc::new(batch::register_owned(epoll_set)?),
            events: Events::with_capacity(EVENTS),
            sockets: Vec::new(),
        })
    }
}

impl Backing for Epoll {
    fn open(&mut self, socket: SocketRef, upstream: SocketAddr) -> io::Result<()> {
        let udp = connected_socket(upstream)?;
        self.epoll_set.get_ref().poll.borrow().registry().register(
            &mut SourceFd(&udp.as_raw_fd()),
            Token(socket as usize),
            Interest::READABLE,
        )?;
        let index = socket as usize;
        if index >= self.sockets.len() {
            self.sockets.resize_with(index + 1, || None);
        }
        self.sockets[index] = Some(udp);
        Ok(())
    }

    /// Closing the descriptor also takes it out of the epoll set.
    fn close(&mut self, socket: SocketRef) {
        self.sockets[socket as usize] = None;
    }
}

/// One upstream socket, as the pool keeps count of it.
struct Outbound {
    upstream: usize,
    /// Its slot in the upstream's pool.
    slot: usize,
    /// Queries sent on it so far, in its life.
    sent: u32,
    /// Queries waiting for their reply on it.
    in_flight: u32,
    opened: Instant,
    /// Out of its slot: takes no new queries, closes when `in_flight` reaches 0.
    retired: bool,
    /// Received a datagram that matched no query in flight: someone who is not the upstream knows
    /// this port, so the answers still due on it are checked over TCP.
    suspect: bool,
    /// IDs of its queries whose replies may still come though no query waits for them (timed
    /// out, or checked over TCP): such a late reply is no forgery.
    late: Vec<u16>,
}

/// The upstream sockets of one worker: which one each query leaves on, and when each is replaced.
pub struct Sockets<B = Epoll> {
    backing: B,
    addrs: Vec<SocketAddr>,
    /// Open sockets, by reference.
    open: Vec<Option<Outbound>>,
    free: Vec<SocketRef>,
    /// Per upstream, its [`POOL`] slots: the socket taking queries in each, if one is open.
    pool: Vec<Vec<Option<SocketRef>>>,
    /// Per upstream, the socket the current send batch leaves on.
    batch: Vec<Option<SocketRef>>,
    last_sweep: Instant,
    rng: ThreadRng,
}

impl Sockets {
    /// An empty set for upstreams at `addrs` (sockets open on first use), registered with the
    /// current runtime.
    pub fn new(addrs: Vec<SocketAddr>) -> io::Result<Self> {
        Ok(Self::with_backing(addrs, Epoll::new()?))
    }

    /// What the receive loop waits on.
    pub fn epoll_set(&self) -> Rc<AsyncFd<EpollSet>> {
        self.backing.epoll_set.clone()
    }

    /// Appends the sockets that received datagrams since they were last read to `ready`; returns
    /// whether more may be waiting (the events filled the buffer).
    pub fn ready(&mut self, ready: &mut Vec<SocketRef>) -> io::Result<bool> {
        let epoll = &mut self.backing;
        epoll.epoll_set.get_ref().poll.borrow_mut().poll(&mut epoll.events, Some(Duration::ZERO))?;
        ready.extend(epoll.events.iter().map(|e| e.token().0 as SocketRef));
        Ok(ready.len() == EVENTS)
    }

    pub fn fd(&self, socket: SocketRef) -> RawFd {
        self.backing.sockets[socket as usize].as_ref().expect("open socket").as_raw_fd()
    }
}

impl<B: Backing> Sockets<B> {
    /// An empty set for upstreams at `addrs`, its sockets opened and closed in `backing`.
    pub fn with_backing(addrs: Vec<SocketAddr>, backing: B) -> Self {
        Self {
            backing,
            pool: vec![vec![None; POOL]; addrs.len()],
            batch: vec![None; addrs.len()],
            addrs,
            open: Vec::new(),
            free: Vec::new(),
            last_sweep: Instant::now(),
            rng: rand::rng(),
        }
    }

    /// The socket a query for `upstream` leaves on, counted as carrying it: the current batch's
    /// for that upstream while it has room, else the socket of a slot picked at random (a fresh
    /// one when the slot is empty or its socket carried its share or lived its time). Fails only
    /// when no socket can be opened.
    pub fn take(&mut self, upstream: usize, now: Instant) -> io::Result<SocketRef> {
        let socket = match self.batch[upstream] {
            Some(socket) => socket,
            None => {
                let slot = self.rng.random_range(0..POOL);
                let socket = match self.pool[upstream][slot] {
                    Some(socket) if self.is_fresh(socket, now) => socket,
                    old => match self.open(upstream, slot, now) {
                        Ok(fresh) => {
                            if let Some(old) = old {
                                self.retire(old);
                            }
                            self.pool[upstream][slot] = Some(fresh);
                            fresh
                        }
                        // Out of descriptors, say: an old port beats no answer.
                        Err(e) => {
                            debug!(error = %e, "cannot open a fresh upstream socket");
                            old.ok_or(e)?
                        }
                    },
                };
                self.batch[upstream] = Some(socket);
                socket
            }
        };
        let outbound = self.open[socket as usize].as_mut().expect("open socket");
        outbound.sent += 1;
        outbound.in_flight += 1;
        if outbound.sent == QUERIES_PER_SOCKET {
            // Its share carried: out of its slot now, closed with its last query.
            self.retire(socket);
        }
        Ok(socket)
    }

    /// The send batch is out: the next queries pick slots anew.
    pub fn end_batch(&mut self) {
        self.batch.fill(None);
    }

    /// A query that [`Sockets::take`] counted on `socket` is over there (answered, failed, moved
    /// on), with its ID when its reply may still come; a retired socket closes with its last query.
    pub fn release(&mut self, socket: SocketRef, late: Option<u16>) {
        let outbound = self.open[socket as usize].as_mut().expect("open socket");
        outbound.in_flight -= 1;
        if let Some(id) = late {
            outbound.late.push(id);
        }
        if outbound.retired && outbound.in_flight == 0 {
            self.close(socket);
        }
    }

    /// Whether `id` is that of a query released with its reply still to come on `socket`.
    pub fn is_late(&self, socket: SocketRef, id: u16) -> bool {
        self.open[socket as usize].as_ref().is_some_and(|s| s.late.contains(&id))
    }

    /// `socket` received a datagram that matched no query in flight: it takes no new queries, and
    /// the answers still due on it are to be checked over TCP.
    pub fn suspect(&mut self, socket: SocketRef) {
        if let Some(outbound) = self.open[socket as usize].as_mut() {
            outbound.suspect = true;
        }
        self.retire(socket);
    }

    pub fn is_suspect(&self, socket: SocketRef) -> bool {
        self.open[socket as usize].as_ref().is_some_and(|s| s.suspect)
    }

    /// The upstream `socket` is connected to.
    pub fn upstream(&self, socket: SocketRef) -> Option<usize> {
        self.open[socket as usize].as_ref().map(|s| s.upstream)
    }

    /// Replaces every socket of `upstream`: the next queries leave on fresh ports.
    pub fn replace_all(&mut self, upstream: usize) {
        for slot in 0..POOL {
            if let Some(socket) = self.pool[upstream][slot] {
                self.retire(socket);
            }
        }
    }

    /// At most once per [`SWEEP_EVERY`], retires the idle sockets that outlived
    /// [`SOCKET_LIFETIME`], so that a port no query uses does not stay open to be scanned.
    pub fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        for socket in 0..self.open.len() as SocketRef {
            let expired = self.open[socket as usize].as_ref().is_some_and(|s| {
                !s.retired && s.in_flight == 0 && now.saturating_duration_since(s.opened) >= SOCKET_LIFETIME
            });
            if expired {
                self.retire(socket);
            }
        }
    }

    /// Whether `socket` is open (a stale readiness event may name a closed one).
    pub fn is_open(&self, socket: SocketRef) -> bool {
        self.open.get(socket as usize).is_some_and(Option::is_some)
    }

    fn get(&self, socket: SocketRef) -> &Outbound {
        self.open[socket as usize].as_ref().expect("open socket")
    }

    /// Whether the socket `socket` still takes queries at `now` (one that carried its share is out
    /// of its slot already).
    fn is_fresh(&self, socket: SocketRef, now: Instant) -> bool {
        now.saturating_duration_since(self.get(socket).opened) < SOCKET_LIFETIME
    }

    fn open(&mut self, upstream: usize, slot: usize, now: Instant) -> io::Result<SocketRef> {
        let socket = self.free.last().copied().unwrap_or(self.open.len() as SocketRef);
        self.backing.open(socket, self.addrs[upstream])?;
        self.free.pop_if(|free| *free == socket);
        let outbound = Outbound {
            upstream,
            slot,
            sent: 0,
            in_flight: 0,
            opened: now,
            retired: false,
            suspect: false,
            late: Vec::new(),
        };
        if socket as usize == self.open.len() {
            self.open.push(Some(outbound));
        } else {
            self.open[socket as usize] = Some(outbound);
        }
        Ok(socket)
    }

    /// Takes `socket` out of its slot (and out of the current batch); closes it once idle.
    fn retire(&mut self, socket: SocketRef) {
        let Some(outbound) = self.open[socket as usize].as_mut() else { return };
        outbound.retired = true;
        let (upstream, slot, idle) = (outbound.upstream, outbound.slot, outbound.in_flight == 0);
        if self.pool[upstream][slot] == Some(socket) {
            self.pool[upstream][slot] = None;
        }
        if self.batch[upstream] == Some(socket) {
            self.batch[upstream] = None;
        }
        if idle {
            self.close(socket);
        }
    }

    fn close(&mut self, socket: SocketRef) {
        self.backing.close(socket);
        self.open[socket as usize] = None;
        self.free.push(socket);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for the kernel: counts what is opened and closed, and can refuse to open.
    #[derive(Default)]
    struct Fake {
        opened: u32,
        open: Vec<SocketRef>,
        out_of_descriptors: bool,
    }

    impl Backing for Fake {
        fn open(&mut self, socket: SocketRef, _upstream: SocketAddr) -> io::Result<()> {
            if self.out_of_descriptors {
                return Err(io::ErrorKind::Other.into());
            }
            self.opened += 1;
            self.open.push(socket);
            Ok(())
        }

        fn close(&mut self, socket: SocketRef) {
            self.open.retain(|&open| open != socket);
        }
    }

    fn sockets() -> Sockets<Fake> {
        Sockets::with_backing(vec!["192.0.2.1:53".parse().unwrap()], Fake::default())
    }

    #[test]
    fn a_socket_carries_its_share_of_queries_then_closes_and_idle_ones_close_after_their_lifetime() {
        let mut sockets = sockets();
        let now = Instant::now();
        let first = sockets.take(0, now).unwrap();
        for _ in 1..QUERIES_PER_SOCKET {
            assert_eq!(sockets.take(0, now).unwrap(), first, "one batch, one socket");
        }
        let second = sockets.take(0, now).unwrap();
        assert_ne!(second, first, "a fresh socket once the first carried its share");
        assert_eq!(sockets.backing.opened, 2);
        sockets.end_batch();
        // The first is retired: it closes with its last query, not before.
        for _ in 1..QUERIES_PER_SOCKET {
            sockets.release(first, None);
        }
        sockets.sweep(now + SWEEP_EVERY);
        assert!(sockets.is_open(first));
        sockets.release(first, Some(7));
        assert!(!sockets.is_open(first));
        assert_eq!(sockets.backing.open, [second], "closed in the kernel too");
        // The second sits idle past its lifetime: the sweep closes it.
        sockets.release(second, None);
        sockets.sweep(now + SOCKET_LIFETIME - Duration::from_millis(1));
        assert!(sockets.is_open(second), "not before its lifetime");
        sockets.sweep(now + SOCKET_LIFETIME + SWEEP_EVERY);
        assert!(!sockets.is_open(second));
        assert!(sockets.pool[0].iter().all(Option::is_none));
        assert!(sockets.backing.open.is_empty());
    }

    #[test]
    fn a_socket_past_its_lifetime_takes_no_new_queries_and_the_sweep_comes_once_a_second() {
        let mut sockets = sockets();
        let now = Instant::now();
        let old = sockets.take(0, now).unwrap();
        sockets.end_batch();
        // Only one slot is open: a batch that picks it after its lifetime gets a fresh socket.
        let slot = sockets.open[old as usize].as_ref().unwrap().slot;
        sockets.pool[0].iter_mut().enumerate().filter(|(i, _)| *i != slot).for_each(|(_, s)| *s = Some(old));
        let later = now + SOCKET_LIFETIME;
        let fresh = sockets.take(0, later).unwrap();
        assert_ne!(fresh, old);
        assert!(sockets.is_open(old), "open until its query is done");
        sockets.release(old, None);
        assert!(!sockets.is_open(old), "retired and idle: closed");
        sockets.end_batch();
        sockets.release(fresh, None);
        let swept = later + SOCKET_LIFETIME - Duration::from_millis(1);
        sockets.sweep(swept);
        assert!(sockets.is_open(fresh), "not past its lifetime yet");
        sockets.sweep(swept + Duration::from_millis(500));
        assert!(sockets.is_open(fresh), "past it, but the last sweep was less than a second ago");
        sockets.sweep(swept + SWEEP_EVERY);
        assert!(!sockets.is_open(fresh));
    }

    #[test]
    fn a_suspect_socket_takes_no_more_queries_and_an_episode_replaces_every_socket() {
        let mut sockets = sockets();
        let now = Instant::now();
        let socket = sockets.take(0, now).unwrap();
        sockets.suspect(socket);
        assert!(sockets.is_suspect(socket) && sockets.is_open(socket), "open until its query is done");
        assert_ne!(sockets.take(0, now).unwrap(), socket);
        sockets.end_batch();
        let others: Vec<SocketRef> = (0..10)
            .map(|_| {
                sockets.end_batch();
                sockets.take(0, now).unwrap()
            })
            .collect();
        sockets.replace_all(0);
        assert!(sockets.pool[0].iter().all(Option::is_none));
        sockets.end_batch();
        let fresh = sockets.take(0, now).unwrap();
        assert!(!others.contains(&fresh) || !sockets.get(fresh).retired);
        assert!(others.iter().all(|&s| sockets.get(s).retired));
    }

    #[test]
    fn a_late_reply_is_known_as_one_until_its_socket_closes() {
        let mut sockets = sockets();
        let now = Instant::now();
        let socket = sockets.take(0, now).unwrap();
        sockets.take(0, now).unwrap();
        sockets.release(socket, Some(0x1234));
        assert!(sockets.is_late(socket, 0x1234) && !sockets.is_late(socket, 0x4321));
        assert_eq!(sockets.upstream(socket), Some(0));
    }

    #[test]
    fn out_of_descriptors_an_old_port_beats_no_answer() {
        let mut sockets = sockets();
        let now = Instant::now();
        sockets.backing.out_of_descriptors = true;
        assert!(sockets.take(0, now).is_err(), "no socket at all: the try fails");
        sockets.backing.out_of_descriptors = false;
        let old = sockets.take(0, now).unwrap();
        sockets.end_batch();
        let slot = sockets.open[old as usize].as_ref().unwrap().slot;
        sockets.pool[0].iter_mut().enumerate().filter(|(i, _)| *i != slot).for_each(|(_, s)| *s = Some(old));
        sockets.backing.out_of_descriptors = true;
        assert_eq!(sockets.take(0, now + SOCKET_LIFETIME).unwrap(), old, "past its lifetime, still used");
        assert!(sockets.free.is_empty(), "the failed opens took no reference");
    }
}
