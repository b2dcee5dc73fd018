//! What stands between the ring-buffer reader and the sender: the counters (seen, sent,
//! dropped), the rate limit, the bounded event queue (by count and by encoded bytes: a full
//! queue refuses the new event, the caller counts it), and when a `Drops` frame is due. Pure
//! but for the queue's blocking pop.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protobuf::Message;
use protocol::telemetry::Event;

/// Events waiting for the sender at most.
pub const QUEUE_EVENTS: usize = 8192;
/// Encoded bytes waiting for the sender at most (the guest has little memory).
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// A `Drops` frame at most this often.
pub const DROPS_INTERVAL: Duration = Duration::from_secs(1);

/// The collector's counters. `dropped` covers every event lost on the guest's side: ring
/// buffer full (counted by the BPF programs), unreadable records, over the rate, queue full,
/// lost with a broken connection.
#[derive(Debug, Default)]
pub struct Counters {
    seen: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    pub fn saw(&self) {
        self.seen.fetch_add(1, Ordering::Relaxed);
    }
    pub fn sent_one(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
    pub fn drop_n(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
    /// (seen, sent, dropped)
    pub fn get(&self) -> (u64, u64, u64) {
        (self.seen.load(Ordering::Relaxed), self.sent.load(Ordering::Relaxed), self.dropped.load(Ordering::Relaxed))
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A token bucket: `per_sec` events a second, bursts of up to one second's worth.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: u64,
    /// Tokens in millionths of an event.
    tokens: u64,
    last: Option<Instant>,
}

const MICRO: u64 = 1_000_000;

impl RateLimit {
    pub fn new(per_sec: u32) -> Self {
        let per_sec = u64::from(per_sec.max(1));
        RateLimit { per_sec, tokens: per_sec * MICRO, last: None }
    }

    /// Whether one more event may go at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last);
            let add = (elapsed.as_micros().min(u64::MAX as u128) as u64).saturating_mul(self.per_sec);
            self.tokens = self.tokens.saturating_add(add).min(self.per_sec * MICRO);
        }
        self.last = Some(now);
        if self.tokens >= MICRO {
            self.tokens -= MICRO;
            true
        } else {
            false
        }
    }
}

struct Inner {
    events: VecDeque<(Event, usize)>,
    bytes: usize,
}

/// Events for the sender, bounded by count and encoded bytes.
pub struct EventQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
    max_events: usize,
    max_bytes: usize,
}

impl EventQueue {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        EventQueue {
            inner: Mutex::new(Inner { events: VecDeque::new(), bytes: 0 }),
            ready: Condvar::new(),
            max_events,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `e`; false (nothing queued) when that would pass a bound.
    pub fn push(&self, e: Event) -> bool {
        let size = e.compute_size() as usize;
        let mut q = self.lock();
        if q.events.len() >= self.max_events || q.bytes.saturating_add(size) > self.max_bytes {
            return false;
        }
        q.bytes += size;
        q.events.push_back((e, size));
        drop(q);
        self.ready.notify_one();
        true
    }

    /// The oldest event, waiting at most `timeout` for one.
    pub fn pop(&self, timeout: Duration) -> Option<Event> {
        let q = self.lock();
        let (mut q, _) =
            self.ready.wait_timeout_while(q, timeout, |q| q.events.is_empty()).unwrap_or_else(|p| p.into_inner());
        let (e, size) = q.events.pop_front()?;
        q.bytes -= size;
        Some(e)
    }

    /// (events, bytes) queued.
    pub fn len(&self) -> (usize, usize) {
        let q = self.lock();
        (q.events.len(), q.bytes)
    }
}

/// When to send a `Drops` frame: the drop counter grew and the last one is at least
/// [`DROPS_INTERVAL`] old. `due` proposes the count, `sent` commits it once written.
#[derive(Debug, Default)]
pub struct DropReport {
    reported: u64,
    last: Option<Instant>,
}

impl DropReport {
    /// Drops not reported yet, if a frame is due now.
    pub fn due(&self, dropped: u64, now: Instant) -> Option<u64> {
        if dropped <= self.reported {
            return None;
        }
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < DROPS_INTERVAL) {
            return None;
        }
        Some(dropped - self.reported)
    }

    pub fn sent(&mut self, count: u64, now: Instant) {
        self.reported += count;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ev(pid: u32, comm: &str) -> Event {
        let mut e = Event::new();
        e.pid = pid;
        e.comm = comm.into();
        e
    }

    #[test]
    fn queue_is_bounded_by_count() {
        let q = EventQueue::new(3, usize::MAX);
        for i in 0..3 {
            assert!(q.push(ev(i, "a")));
        }
        assert!(!q.push(ev(9, "a")), "full");
        assert_eq!(q.len().0, 3);
        assert_eq!(q.pop(Duration::ZERO).map(|e| e.pid), Some(0), "oldest first");
        assert!(q.push(ev(10, "a")));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop(Duration::ZERO)).map(|e| e.pid).collect();
        assert_eq!(order, [1, 2, 10]);
        assert_eq!(q.len(), (0, 0));
    }

    #[test]
    fn queue_is_bounded_by_bytes() {
        let one = ev(1, &"x".repeat(100)).compute_size() as usize;
        let q = EventQueue::new(1000, one * 2 + 10);
        assert!(q.push(ev(1, &"x".repeat(100))));
        assert!(q.push(ev(1, &"x".repeat(100))));
        assert!(!q.push(ev(1, &"x".repeat(100))));
        assert!(q.push(ev(1, "")), "a small one still fits");
        assert!(q.len().1 <= one * 2 + 10);
        q.pop(Duration::ZERO);
        assert!(q.push(ev(1, &"x".repeat(100))));
    }

    #[test]
    fn pop_waits_for_a_push_or_times_out() {
        let q = Arc::new(EventQueue::new(4, 1 << 20));
        let t0 = Instant::now();
        assert!(q.pop(Duration::from_millis(30)).is_none());
        assert!(t0.elapsed() >= Duration::from_millis(30));
        let q2 = q.clone();
        let h = std::thread::spawn(move || q2.pop(Duration::from_secs(10)).map(|e| e.pid));
        std::thread::sleep(Duration::from_millis(20));
        assert!(q.push(ev(7, "b")));
        assert_eq!(h.join().unwrap(), Some(7));
    }

    #[test]
    fn rate_limit_allows_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(100);
        let allowed = (0..250).filter(|_| r.allow(t0)).count();
        assert_eq!(allowed, 100, "a one-second burst");
        assert!(!r.allow(t0 + Duration::from_millis(5)), "half a token is not one");
        assert!(r.allow(t0 + Duration::from_millis(10)));
        // After a long pause the bucket is full again, not fuller.
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!((0..250).filter(|_| r.allow(t1)).count(), 100);
        // A rate of 0 is treated as 1.
        let mut r = RateLimit::new(0);
        assert!(r.allow(t0));
        assert!(!r.allow(t0));
        // Time going backwards does not panic or refill.
        let mut r = RateLimit::new(1);
        assert!(r.allow(t1));
        assert!(!r.allow(t0));
    }

    #[test]
    fn drops_are_reported_when_grown_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut d = DropReport::default();
        assert_eq!(d.due(0, t0), None);
        assert_eq!(d.due(5, t0), Some(5));
        d.sent(5, t0);
        assert_eq!(d.due(5, t0 + Duration::from_secs(5)), None, "not grown");
        assert_eq!(d.due(8, t0 + Duration::from_millis(500)), None, "too soon");
        assert_eq!(d.due(8, t0 + DROPS_INTERVAL), Some(3));
        // Not committed (the write failed): proposed again.
        assert_eq!(d.due(9, t0 + DROPS_INTERVAL * 2), Some(4));
    }

    #[test]
    fn counters_count() {
        let c = Counters::default();
        c.saw();
        c.saw();
        c.sent_one();
        c.drop_n(3);
        assert_eq!(c.get(), (2, 1, 3));
        assert_eq!(c.dropped(), 3);
    }
}
