//! Bounds in time on what the guest can make the host do: a token bucket (a burst, then a
//! steady rate) for guest log lines and OOM events, and the cleaning of guest text before
//! it reaches a log or containerd (bounded length, no control characters).

use std::time::{Duration, Instant};

/// A token bucket: at most `burst` at once, refilled at `per_sec`.
#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    /// What was refused since the last [`RateLimit::take_dropped`].
    dropped: u64,
}

impl RateLimit {
    pub fn new(burst: u32, per_sec: u32) -> Self {
        RateLimit {
            burst: burst as f64,
            per_sec: per_sec as f64,
            tokens: burst as f64,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether one more may pass now.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// How many were refused since the last call (for a summary log line).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The time until the next one may pass (zero if now).
    pub fn wait_time(&self) -> Duration {
        if self.tokens >= 1.0 || self.per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }
}

/// Characters that must not reach a log line or a terminal from the guest: control
/// characters (but tab), the Unicode line and paragraph separators, and bidirectional
/// overrides/isolates (which can make a log line read as something else).
pub fn unsafe_in_text(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Guest text made safe for a log line or an error containerd shows: at most `max`
/// characters, control characters (escape sequences, newlines) replaced by '?'.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if unsafe_in_text(c) { '?' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push_str(" [truncated]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut r = RateLimit::new(3, 10);
        let t0 = Instant::now();
        assert!((0..3).all(|_| r.allow_at(t0)));
        assert!(!r.allow_at(t0), "the burst is spent");
        assert!(r.allow_at(t0 + Duration::from_millis(110)), "one more after 1/10 s");
        assert!(!r.allow_at(t0 + Duration::from_millis(120)));
        assert_eq!(r.take_dropped(), 2);
        assert_eq!(r.take_dropped(), 0);
        assert!(r.allow_at(t0 + Duration::from_secs(100)) && r.allow_at(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn guest_text_is_cut_and_cleaned() {
        assert_eq!(sanitize("ok\ttab", 100), "ok\ttab");
        assert_eq!(sanitize("\x1b[2Jclear\nnext\r", 100), "?[2Jclear?next?");
        assert_eq!(sanitize(&"x".repeat(10), 4), "xxxx [truncated]");
        assert_eq!(sanitize("a\u{202E}b\u{2028}c", 100), "a?b?c", "bidi overrides and line separators");
    }
}
