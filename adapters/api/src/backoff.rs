//! Reconnect delays, shared by the core's XMPP link and the adapters' bus connections.
//!
//! Written here rather than taken from a crate, because none of the maintained ones fits a
//! delay we look up inside our own `select!` loops: `backon` and `exponential-backoff`
//! hand out delays from an iterator rather than for attempt n, and their jitter defeats
//! its purpose here. `backon` only adds 0 to 100 %, so a first retry may wait twice the
//! minimum; `exponential-backoff` clamps the jittered delay into `[min, max]`, so every
//! peer past the cap that drew a longer delay waits exactly `max`, in lock-step again.
//! The `backoff` crate is unmaintained.

use std::time::Duration;

/// The delay before reconnect attempt `attempt` (0 for the first): `min · 2^attempt`,
/// capped at `max`, then drawn at random from 0.8 to 1.2 times that, but never above
/// `max` (an operator's `reconnect_max` is a promise).
///
/// The jitter keeps a fleet of gateways, or many connections to one PLC, from all
/// reconnecting at the same instant after an outage. At the cap the delay is drawn from
/// `[0.8 · max, max]` rather than clamped, which would gather every capped peer on `max`
/// again. Never panics, whatever the arguments.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min
        .saturating_mul(1u32 << attempt.min(16))
        .min(max)
        .as_secs_f64();
    let low = base * 0.8;
    let high = (base * 1.2).min(max.as_secs_f64()).max(low);
    let secs = if high > low {
        rand::random_range(low..=high)
    } else {
        low
    };
    Duration::try_from_secs_f64(secs).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_per_attempt_within_twenty_percent() {
        for _ in 0..200 {
            for (attempt, base) in [(0, 100), (1, 200), (2, 400), (4, 1600)] {
                let d = backoff(attempt, ms(100), ms(60_000));
                assert!(
                    d >= ms(base * 8 / 10) && d <= ms(base * 12 / 10),
                    "{attempt}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn the_cap_is_jittered_too() {
        let delays: Vec<Duration> = (0..200)
            .map(|_| backoff(u32::MAX, ms(500), ms(30_000)))
            .collect();
        // never above the cap, and peers past it do not all wait the same time
        assert!(delays.iter().all(|&d| d >= ms(24_000) && d <= ms(30_000)));
        assert!(delays.iter().any(|&d| d < ms(27_000)));
        assert!(delays.iter().any(|&d| d > ms(28_000)));
        // just below the cap the upper side is cut at it
        for _ in 0..200 {
            let d = backoff(5, ms(1_000), ms(35_000)); // base 32 s
            assert!(d >= ms(25_600) && d <= ms(35_000), "{d:?}");
        }
    }

    #[test]
    fn extreme_arguments_do_not_panic() {
        assert_eq!(backoff(3, Duration::ZERO, ms(1000)), Duration::ZERO);
        assert!(backoff(u32::MAX, Duration::MAX, Duration::MAX) >= Duration::MAX / 2);
        assert!(backoff(40, ms(1), Duration::MAX) >= ms(65_536 * 8 / 10));
        assert!(backoff(0, ms(1000), ms(10)) <= ms(12));
    }
}
