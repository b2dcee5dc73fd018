//! A queue bounded in bytes, between the guest stream's reader and a sink writer: `push`
//! never waits (a full queue refuses the item, and the caller counts a drop), `pop` waits for
//! the next item. What the guest can make the shim hold is the cap, whatever it sends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Items of type `T`, each counted as its given weight in bytes, at most `cap` bytes queued.
pub struct BoundedQueue<T> {
    inner: Mutex<(VecDeque<(T, usize)>, usize)>,
    cap: usize,
    ready: Notify,
    dropped: AtomicU64,
}

impl<T> BoundedQueue<T> {
    pub fn new(cap: usize) -> Self {
        BoundedQueue { inner: Mutex::new((VecDeque::new(), 0)), cap, ready: Notify::new(), dropped: AtomicU64::new(0) }
    }

    /// Queues `item` (weighing `bytes`) unless that would pass the cap: then it is dropped
    /// and counted, and `false` returned.
    pub fn push(&self, item: T, bytes: usize) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.saturating_add(bytes) > self.cap {
            drop(g);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        g.1 += bytes;
        g.0.push_back((item, bytes));
        drop(g);
        self.ready.notify_one();
        true
    }

    /// The oldest item, without waiting.
    pub fn try_pop(&self) -> Option<T> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (item, bytes) = g.0.pop_front()?;
        g.1 -= bytes;
        Some(item)
    }

    /// The oldest item, waiting for one.
    pub async fn pop(&self) -> T {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.try_pop() {
                return item;
            }
            notified.await;
        }
    }

    /// Bytes queued now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Items refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_refusals_are_counted() {
        let q = BoundedQueue::new(10);
        assert!(q.push("a", 4));
        assert!(q.push("b", 6));
        assert!(!q.push("c", 1), "over the cap");
        assert_eq!((q.bytes(), q.dropped()), (10, 1));
        assert_eq!(q.try_pop(), Some("a"));
        assert!(q.push("d", 4));
        assert!(!q.push("huge", usize::MAX), "an overflowing weight is refused, not wrapped");
        assert_eq!(q.try_pop(), Some("b"));
        assert_eq!(q.try_pop(), Some("d"));
        assert_eq!(q.try_pop(), None);
        assert_eq!((q.bytes(), q.dropped()), (0, 2));
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(BoundedQueue::new(100));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await });
        tokio::task::yield_now().await;
        assert!(q.push(7u32, 1));
        assert_eq!(waiter.await.unwrap(), 7);
    }
}
