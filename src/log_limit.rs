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

    /// For a line that must be logged whatever the rate (what it reports has changed):
    /// counted in the window like any other; the number of events left unlogged since
    /// the last line.
    pub fn always(&mut self, now: Instant) -> u64 {
        if self.allow(now).is_none() {
            self.suppressed -= 1;
        }
        std::mem::take(&mut self.suppressed)
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

    #[test]
    fn a_line_that_must_be_logged_reports_the_count_and_uses_the_window() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(1, Duration::from_secs(10));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.always(t0), 2);
        assert_eq!(l.allow(t0), None, "the window is still used up");
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(1));
        let mut fresh = LogLimiter::new(1, Duration::from_secs(10));
        assert_eq!(fresh.always(t0), 0);
        assert_eq!(fresh.allow(t0), None);
    }
}

/// [`LogLimiter`]s per sender (a bare JID: what an attacker cannot multiply as cheaply as
/// resources), under one limiter for all of them, so that one flooding sender cannot
/// silence the lines about others, and many senders together cannot flood the log.
#[derive(Debug)]
pub struct PerSender {
    per: std::collections::HashMap<String, LogLimiter>,
    each: LogLimiter,
    all: LogLimiter,
}

/// Senders remembered at most; past that, the oldest windows are forgotten first.
const MAX_SENDERS: usize = 4096;

impl PerSender {
    /// `each` lines per window for one sender, `all` lines per window in all.
    pub fn new(each: u32, all: u32, window: Duration) -> PerSender {
        PerSender {
            per: std::collections::HashMap::new(),
            each: LogLimiter::new(each, window),
            all: LogLimiter::new(all, window),
        }
    }

    /// Whether to log an event from `sender` at `now`: `Some(n)` with the events from
    /// this sender left unlogged since its last line, or `None` (counted).
    pub fn allow(&mut self, sender: &str, now: Instant) -> Option<u64> {
        if !self.per.contains_key(sender) && self.per.len() >= MAX_SENDERS {
            let window = self.each.window;
            self.per.retain(|_, l| {
                l.started
                    .is_some_and(|s| now.saturating_duration_since(s) < window)
            });
            if self.per.len() >= MAX_SENDERS {
                self.per.clear();
            }
        }
        let mine = self
            .per
            .entry(sender.to_owned())
            .or_insert_with(|| self.each.clone())
            .allow(now)?;
        // The sender's own budget allows a line; the budget of all senders must too.
        self.all.allow(now).map(|_| mine)
    }
}

#[cfg(test)]
mod per_sender_tests {
    use super::*;

    #[test]
    fn one_flooding_sender_does_not_silence_another() {
        let t0 = Instant::now();
        let mut l = PerSender::new(3, 10, Duration::from_secs(60));
        let logged = (0..1000)
            .filter(|_| l.allow("mallory@evil.example", t0).is_some())
            .count();
        assert_eq!(logged, 3);
        assert_eq!(l.allow("alice@example.org", t0), Some(0));
        // many senders together stay under the overall budget
        let many = (0..1000)
            .filter(|i| l.allow(&format!("bot{i}@evil.example"), t0).is_some())
            .count();
        assert_eq!(many, 10 - 4);
        // a new window: the flooder gets one line telling how many were left out
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(l.allow("mallory@evil.example", t1), Some(997));
        // memory stays bounded
        for i in 0..10_000 {
            l.allow(&format!("x{i}@evil.example"), t1);
        }
        assert!(l.per.len() <= MAX_SENDERS);
    }
}
