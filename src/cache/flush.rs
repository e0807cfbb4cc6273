//! `POST /cache/flush`: one request reaches every cache, though each is owned by its worker.
//! Each cache's owner runs [`serve`] on a subscription; [`Flusher::flush`] returns once they all
//! applied it, so the next query after the HTTP answer already misses.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};

/// How long a flush waits for the caches to confirm it.
const CONFIRM: Duration = Duration::from_secs(2);

/// One flush: every entry, or every entry of one name (lower-cased wire form).
#[derive(Debug, Clone)]
pub struct Flush {
    name: Option<Arc<[u8]>>,
    done: Arc<Semaphore>,
}

#[derive(Debug)]
pub struct Flusher {
    sender: broadcast::Sender<Flush>,
}

impl Default for Flusher {
    fn default() -> Self {
        Self { sender: broadcast::channel(64).0 }
    }
}

impl Flusher {
    /// A subscription for one cache, to hand to [`serve`].
    pub fn subscribe(&self) -> broadcast::Receiver<Flush> {
        self.sender.subscribe()
    }

    /// Flushes every cache (or `name` in each); returns how many caches confirmed it.
    pub async fn flush(&self, name: Option<Vec<u8>>) -> usize {
        let done = Arc::new(Semaphore::new(0));
        let Ok(caches) = self.sender.send(Flush { name: name.map(Into::into), done: done.clone() }) else {
            return 0;
        };
        let all = u32::try_from(caches).unwrap_or(u32::MAX);
        match tokio::time::timeout(CONFIRM, done.acquire_many(all)).await {
            Ok(_) => caches,
            Err(_) => done.available_permits(),
        }
    }
}

/// Applies every flush that arrives on `flushes` with `apply` until the flusher is gone. A cache
/// that fell behind by more than the channel holds empties itself: it missed some flush.
pub async fn serve(mut flushes: broadcast::Receiver<Flush>, mut apply: impl FnMut(Option<&[u8]>)) {
    loop {
        match flushes.recv().await {
            Ok(flush) => {
                apply(flush.name.as_deref());
                flush.done.add_permits(1);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => apply(None),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
