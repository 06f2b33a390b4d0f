//! Graceful shutdown: stop accepting, let in-flight connections finish (bounded), then go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// A shutdown signal shared by every listener, and a count of the work still in flight.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
    inflight: Arc<Inflight>,
}

struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by one in-flight connection.
pub struct Guard(Arc<Inflight>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
            inflight: Arc::new(Inflight {
                count: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Ask every listener to stop accepting.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Resolves once shutdown has been asked for.
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Count one piece of work as in flight until the guard drops.
    pub fn track(&self) -> Guard {
        self.inflight.count.fetch_add(1, Ordering::AcqRel);
        Guard(self.inflight.clone())
    }

    /// How much work is in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.count.load(Ordering::Acquire)
    }

    /// Wait until nothing is in flight, or `limit` passes. Returns what was left.
    pub async fn drain(&self, limit: Duration) -> usize {
        let wait = async {
            loop {
                let idle = self.inflight.idle.notified();
                if self.inflight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.inflight()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_in_flight_work_and_is_bounded() {
        let s = Shutdown::new();
        let g = s.track();
        let s2 = s.clone();
        let h = tokio::spawn(async move { s2.drain(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(g);
        assert_eq!(h.await.unwrap(), 0);

        let _stuck = s.track();
        assert_eq!(s.drain(Duration::from_millis(20)).await, 1);
    }
}
