//! Rate limits for log lines that someone else's traffic can trigger: a flood of hostile
//! stanzas must not turn into a flood of log lines (or of disk writes on an SD card).

use std::time::{Duration, Instant};

/// Lets through at most `burst` lines per `window` for one kind of event and counts the
/// rest, so that the next line let through can say how many were left out.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    started: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter of `burst` lines per `window`.
    pub const fn new(burst: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            burst,
            window,
            started: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether to log the event happening at `now`: `Some(n)` with the number of events
    /// left unlogged since the last line, or `None` to stay silent (the event is counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if expired {
            self.started = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_a_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, Duration::from_secs(10));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(0));
        for _ in 0..100 {
            assert_eq!(l.allow(t0 + Duration::from_secs(9)), None);
        }
        // the next window's first line reports what was left out
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(100));
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(0));
    }
}
