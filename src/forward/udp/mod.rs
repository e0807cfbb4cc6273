//! UDP forwarding for one worker: its [`UdpDriver`] for the upstream list in effect, the tasks that
//! keep it going (replies, the TCP rechecks it asks for, the tick that brings the exchanges'
//! deadlines), and the swap to a new driver with new sockets when a reload changes the upstreams
//! ([`CurrentDriver`]). The old driver keeps its sockets until its exchanges are over or have
//! timed out, so none is dropped.
//!
//! - `driver`: a worker's exchanges over UDP, batched;
//! - `sockets`: the short-lived upstream sockets tries leave on (the source-port entropy).

mod driver;
mod sockets;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tracing::warn;

pub use driver::{Socket, UdpDriver};
use sockets::EpollSet;

use super::{Forwarder, Upstreams};
use crate::metrics::Traffic;

/// How often the exchanges' deadlines are checked (tries time out, clients get stale answers):
/// bounds how late either comes.
pub const TIMEOUT_TICK: Duration = Duration::from_millis(20);

/// A driver as the worker's tasks share it (one thread: `Rc`, borrowed per batch).
pub type SharedDriver = Rc<RefCell<UdpDriver>>;

/// A worker's driver for the upstream list in effect, replaced when a reload changes the list.
pub struct CurrentDriver {
    forwarder: Arc<Forwarder>,
    listeners: Vec<Socket>,
    traffic: Arc<Traffic>,
    current: SharedDriver,
    /// The current driver's receive and timeout tasks, which hold its sockets.
    tasks: Vec<JoinHandle<()>>,
}

impl CurrentDriver {
    /// Opens the first driver; must run inside the worker's `LocalSet`. Clients are answered on
    /// `listeners`, by index.
    pub fn start(forwarder: Arc<Forwarder>, listeners: Vec<Socket>, traffic: Arc<Traffic>) -> io::Result<Self> {
        let (current, tasks) = open(&forwarder, forwarder.upstreams(), &listeners, &traffic)?;
        Ok(Self { forwarder, listeners, traffic, current, tasks })
    }

    /// The driver for the upstreams in effect now (one pointer comparison per batch).
    pub fn current(&mut self) -> SharedDriver {
        let upstreams = self.forwarder.upstreams();
        if !Arc::ptr_eq(&upstreams, self.current.borrow().upstreams()) {
            match open(&self.forwarder, upstreams, &self.listeners, &self.traffic) {
                Ok((driver, tasks)) => {
                    let old = std::mem::replace(&mut self.current, driver);
                    let old_tasks = std::mem::replace(&mut self.tasks, tasks);
                    tokio::task::spawn_local(retire(old, old_tasks, self.forwarder.bound()));
                }
                Err(e) => warn!(error = %e, "cannot open sockets for the new upstreams: still using the previous ones"),
            }
        }
        self.current.clone()
    }

    /// Exchanges under way in the current driver.
    pub fn pending(&self) -> usize {
        self.current.borrow().pending()
    }
}

/// A driver for `upstreams` with its receive and timeout tasks running.
fn open(
    forwarder: &Arc<Forwarder>,
    upstreams: Arc<Upstreams>,
    listeners: &[Socket],
    traffic: &Arc<Traffic>,
) -> io::Result<(SharedDriver, Vec<JoinHandle<()>>)> {
    let driver = UdpDriver::new(forwarder.clone(), upstreams, listeners.to_vec(), traffic.clone())?;
    let epoll_set = driver.epoll_set();
    let driver = Rc::new(RefCell::new(driver));
    let tasks = vec![
        tokio::task::spawn_local(receive_upstreams(epoll_set, driver.clone(), forwarder.timeout())),
        tokio::task::spawn_local(tick(driver.clone())),
    ];
    Ok((driver, tasks))
}

/// Lets a replaced driver finish its exchanges (bounded by their tries), then closes its sockets.
async fn retire(driver: SharedDriver, tasks: Vec<JoinHandle<()>>, bound: Duration) {
    let deadline = Instant::now() + bound + TIMEOUT_TICK * 2;
    while driver.borrow().pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(TIMEOUT_TICK).await;
    }
    for task in tasks {
        task.abort();
    }
}

/// Reads replies whenever an upstream socket has some, then runs the TCP checks the driver asked
/// for.
async fn receive_upstreams(epoll_set: Rc<AsyncFd<EpollSet>>, driver: SharedDriver, timeout: Duration) {
    loop {
        let Ok(mut guard) = epoll_set.readable().await else { return };
        match driver.borrow_mut().receive() {
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
            let mut driver = driver.borrow_mut();
            driver.send_queued();
            driver.take_rechecks()
        };
        for check in rechecks {
            tokio::task::spawn_local(check.run(driver.clone(), timeout));
        }
    }
}

/// Every [`TIMEOUT_TICK`], ticks the exchanges whose deadline has come.
async fn tick(driver: SharedDriver) {
    let mut interval = tokio::time::interval(TIMEOUT_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let mut driver = driver.borrow_mut();
        driver.tick(Instant::now());
        driver.send_queued();
    }
}
