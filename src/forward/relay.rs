//! A UDP worker's forwarder and its lifecycle: the receive loop on its upstream sockets, the TCP
//! checks it asks for, the timeout tick, and the swap to a new forwarder (new sockets, new cache)
//! when a reload changes the upstreams or the cache settings. The old forwarder keeps its sockets
//! until its queries are answered or have timed out, so none is dropped.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tracing::warn;

use super::sockets::Readiness;
use super::udp::{Socket, UdpForwarder};
use super::{Forwarding, Upstreams, tcp};
use crate::cache;
use crate::dns::Transport;
use crate::metrics::Traffic;

/// How often timed-out upstream tries are moved on and client timers checked; bounds their
/// overshoot.
pub const TIMEOUT_TICK: Duration = Duration::from_millis(20);

/// A forwarder as the worker's tasks share it (one thread: `Rc`, borrowed per batch).
pub type SharedForwarder = Rc<RefCell<UdpForwarder>>;

/// The worker's forwarder for the upstream list and cache settings in effect.
pub struct Relay {
    forwarding: Arc<Forwarding>,
    listeners: Vec<Socket>,
    traffic: Arc<Traffic>,
    upstreams: Arc<Upstreams>,
    settings: Arc<cache::Settings>,
    forwarder: SharedForwarder,
    /// The forwarder's receive and timeout tasks, which hold its sockets.
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Opens the first forwarder; must run inside the worker's `LocalSet`. The relay answers
    /// clients on `listeners`, by index.
    pub fn start(
        forwarding: Arc<Forwarding>,
        listeners: Vec<Socket>,
        traffic: Arc<Traffic>,
    ) -> io::Result<Rc<RefCell<Self>>> {
        let upstreams = forwarding.upstreams.load_full();
        let settings = forwarding.cache.load_full();
        let (forwarder, tasks) = open(&forwarding, &upstreams, &settings, &listeners, &traffic)?;
        let relay =
            Rc::new(RefCell::new(Self { forwarding, listeners, traffic, upstreams, settings, forwarder, tasks }));
        let flushes = relay.borrow().forwarding.flusher.subscribe();
        let flushed = relay.clone();
        tokio::task::spawn_local(cache::flush::serve(flushes, move |name| {
            flushed.borrow().forwarder.borrow_mut().flush_cache(name);
        }));
        Ok(relay)
    }

    /// The forwarder for the settings in effect now (two pointer comparisons per batch).
    pub fn current(&mut self) -> SharedForwarder {
        let upstreams = self.forwarding.upstreams.load_full();
        let settings = self.forwarding.cache.load_full();
        if !Arc::ptr_eq(&upstreams, &self.upstreams) || !Arc::ptr_eq(&settings, &self.settings) {
            self.upstreams = upstreams;
            self.settings = settings;
            match open(&self.forwarding, &self.upstreams, &self.settings, &self.listeners, &self.traffic) {
                Ok((forwarder, tasks)) => {
                    let old = std::mem::replace(&mut self.forwarder, forwarder);
                    let old_tasks = std::mem::replace(&mut self.tasks, tasks);
                    tokio::task::spawn_local(retire(old, old_tasks, self.forwarding.bound()));
                }
                Err(e) => warn!(error = %e, "cannot open sockets for the new upstreams: still using the previous ones"),
            }
        }
        self.forwarder.clone()
    }

    pub fn pending(&self) -> usize {
        self.forwarder.borrow().pending()
    }
}

/// A forwarder for `upstreams` with its receive and timeout tasks running.
fn open(
    forwarding: &Forwarding,
    upstreams: &Arc<Upstreams>,
    settings: &cache::Settings,
    listeners: &[Socket],
    traffic: &Arc<Traffic>,
) -> io::Result<(SharedForwarder, Vec<JoinHandle<()>>)> {
    let front = forwarding.front(Transport::Udp, settings, traffic.clone());
    let forwarder = UdpForwarder::new(upstreams.clone(), front, forwarding.timeout, listeners.to_vec())?;
    let readiness = forwarder.readiness();
    let forwarder = Rc::new(RefCell::new(forwarder));
    let tasks = vec![
        tokio::task::spawn_local(receive_upstreams(readiness, forwarder.clone(), forwarding.timeout)),
        tokio::task::spawn_local(expire_timeouts(forwarder.clone())),
    ];
    Ok((forwarder, tasks))
}

/// Lets a replaced forwarder finish its queries (bounded by their tries), then closes its sockets.
async fn retire(forwarder: SharedForwarder, tasks: Vec<JoinHandle<()>>, bound: Duration) {
    let deadline = Instant::now() + bound + TIMEOUT_TICK * 2;
    while forwarder.borrow().pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(TIMEOUT_TICK).await;
    }
    for task in tasks {
        task.abort();
    }
}

/// Reads replies whenever an upstream socket has some, then runs the TCP checks the forwarder
/// asked for.
async fn receive_upstreams(readiness: Rc<AsyncFd<Readiness>>, forwarder: SharedForwarder, timeout: Duration) {
    loop {
        let Ok(mut guard) = readiness.readable().await else { return };
        match forwarder.borrow_mut().receive() {
            // Every ready socket was drained. A reply arriving since makes a new edge, which
            // clearing does not lose (the runtime clears only the readiness it reported).
            Ok(false) => guard.clear_ready(),
            Ok(true) => {}
            Err(e) => {
                warn!(error = %e, "cannot poll the upstream sockets");
                guard.clear_ready();
            }
        }
        let rechecks = {
            let mut forwarder = forwarder.borrow_mut();
            forwarder.flush();
            forwarder.take_rechecks()
        };
        for check in rechecks {
            let forwarder = forwarder.clone();
            tokio::task::spawn_local(async move {
                let result = tokio::time::timeout(timeout, tcp::exchange(check.upstream, &check.query))
                    .await
                    .unwrap_or_else(|_elapsed| Err(io::ErrorKind::TimedOut.into()));
                let mut forwarder = forwarder.borrow_mut();
                forwarder.rechecked(check.slot, result, Instant::now());
                forwarder.flush();
            });
        }
    }
}

async fn expire_timeouts(forwarder: SharedForwarder) {
    let mut tick = tokio::time::interval(TIMEOUT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut forwarder = forwarder.borrow_mut();
        forwarder.expire(Instant::now());
        forwarder.flush();
    }
}
