//! Forwarding: everything that is not a local name goes to the upstream servers and their
//! answers come back byte for byte (a raw relay, not a resolver that re-synthesizes answers),
//! through a packet cache.
//!
//! The boundary: a socket layer hands a query that `request::handle` chose to forward to one
//! entry point, [`relay::Relay`]'s forwarder for a UDP worker or [`tcp::answer`] for a TCP
//! connection, and gets back bytes for the client. What those bytes are is decided once, in
//! `front`, for both transports.
//!
//! - `front`: what the client sees (cache, in-flight cap, REFUSED, SERVFAIL, truncation, metrics);
//! - `relay`: a UDP worker's forwarder and its lifecycle (receive loops, timeouts, reloads);
//! - `udp`: the UDP in-flight table, and what a reply that matches no query means;
//! - `sockets`: the short-lived UDP sockets queries leave on (the source-port entropy);
//! - `tcp`: the TCP entry point and upstream exchange;
//! - `reply`: which upstream replies count, for both relays;
//! - `upstream`: the upstream list, its order and health;
//! - `loop_probe`: detecting an upstream that forwards back to us.

pub mod front;
mod loop_probe;
pub mod relay;
pub mod reply;
mod sockets;
pub mod tcp;
pub mod udp;
mod upstream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use self::front::Front;
pub use loop_probe::LoopProbe;
pub use upstream::{MAX_UPSTREAMS, Upstreams};

use crate::cache::{self, Cache, Flusher};
use crate::dns::Transport;
use crate::dns::wire::rcode;
use crate::metrics::{ForwardingGauges, Metrics, Traffic};

/// Whether an upstream's answer with `code` counts as that upstream failing, so that the query
/// moves on to the next upstream: SERVFAIL and REFUSED say "not from me", not "no such name".
fn moves_on(code: u16) -> bool {
    code == rcode::SERVFAIL || code == rcode::REFUSED
}

/// What every worker's forwarding and TCP's share. The `ArcSwap`s are what a reload replaces: a
/// forwarder built for other upstreams or cache settings is replaced, cache and all, so a reload
/// that changes the upstreams empties the cache.
#[derive(Debug)]
pub struct Forwarding {
    pub upstreams: Arc<ArcSwap<Upstreams>>,
    pub cache: ArcSwap<cache::Settings>,
    pub in_flight: Arc<InFlight>,
    /// How long one upstream gets to answer before the next is tried.
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub flusher: Arc<Flusher>,
    /// How many UDP workers share `--cache-size` (less TCP's share).
    udp_workers: usize,
    tcp_traffic: Arc<Traffic>,
    tcp: Mutex<Option<Versioned>>,
}

/// A front and the settings it was built for.
#[derive(Debug)]
struct Versioned {
    front: Front,
    upstreams: Arc<Upstreams>,
    cache: Arc<cache::Settings>,
}

impl Forwarding {
    pub fn new(
        upstreams: Arc<Upstreams>,
        cache: cache::Settings,
        max_concurrent: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
        udp_workers: usize,
    ) -> Self {
        Self {
            upstreams: Arc::new(ArcSwap::new(upstreams)),
            cache: ArcSwap::from_pointee(cache),
            in_flight: Arc::new(InFlight::new(max_concurrent)),
            timeout,
            tcp_traffic: metrics.traffic(),
            metrics,
            flusher: Arc::default(),
            udp_workers,
            tcp: Mutex::new(None),
        }
    }

    /// How long a forwarded query can still take once it has been started: every upstream's try.
    pub fn bound(&self) -> Duration {
        self.timeout * self.upstreams.load().len().max(1) as u32
    }

    /// A new front for `transport` with an empty cache of its share of `settings.size`: TCP,
    /// the rare path (truncated answers retried, large answers), gets a sixteenth; the UDP
    /// workers share the rest equally.
    fn front(&self, transport: Transport, settings: &cache::Settings, traffic: Arc<Traffic>) -> Front {
        let tcp = settings.size / 16;
        let share = match transport {
            Transport::Tcp => tcp,
            Transport::Udp => (settings.size - tcp) / self.udp_workers.max(1),
        };
        let cache = (settings.size > 0).then(|| Cache::new(*settings, share, self.metrics.cache()));
        Front::new(transport, cache, self.in_flight.clone(), traffic)
    }

    /// The counters TCP records into.
    pub fn tcp_traffic(&self) -> Arc<Traffic> {
        self.tcp_traffic.clone()
    }

    /// Runs `f` on TCP's front, replaced first if the upstreams or the cache settings changed.
    /// The lock is TCP's alone (UDP workers own their fronts), held for a lookup or an insert.
    fn with_tcp<R>(&self, f: impl FnOnce(&mut Front) -> R) -> R {
        let mut tcp = self.tcp.lock().unwrap();
        let upstreams = self.upstreams.load_full();
        let settings = self.cache.load_full();
        let current =
            tcp.as_ref().is_some_and(|v| Arc::ptr_eq(&v.upstreams, &upstreams) && Arc::ptr_eq(&v.cache, &settings));
        if !current {
            let front = self.front(Transport::Tcp, &settings, self.tcp_traffic.clone());
            *tcp = Some(Versioned { front, upstreams, cache: settings });
        }
        f(&mut tcp.as_mut().expect("set above").front)
    }

    /// Applies `POST /cache/flush` to TCP's cache until the flusher is gone.
    pub async fn serve_tcp_flushes(self: Arc<Self>) {
        let flushes = self.flusher.subscribe();
        let this = self.clone();
        cache::flush::serve(flushes, move |name| this.with_tcp(|front| front.flush(name))).await;
    }
}

impl ForwardingGauges for Forwarding {
    fn in_flight(&self) -> (usize, usize) {
        (self.in_flight.current(), self.in_flight.max())
    }

    fn upstreams(&self) -> Vec<(std::net::SocketAddr, bool)> {
        let upstreams = self.upstreams.load();
        (0..upstreams.len()).map(|i| (upstreams.addr(i), upstreams.is_healthy(i))).collect()
    }
}

/// The cap on forwarded queries in flight across all workers and transports (`--max-concurrent`):
/// beyond it clients get REFUSED at once, so memory stays bounded when upstreams stall.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    max: usize,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self { count: AtomicUsize::new(0), max }
    }

    pub fn try_acquire(&self) -> bool {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Queries in flight now (for metrics).
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed).min(self.max)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}
