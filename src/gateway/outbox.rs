//! Change events on their way to subscribers. Each is kept from the moment it is made
//! until the server is known to have it (it answered a ping the link wrote after it), so
//! that the events due while the component link is down, and those lost in the link's
//! buffers when it broke, reach their subscribers after the reconnect: in order, before
//! newer ones, each with an XEP-0203 `<delay>`. Before a subscriber gets what was kept
//! for it, it is pinged: a session that ended meanwhile (a server restart ends them all)
//! gets nothing, and its subscriptions end as they would have on its going offline.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use super::subscriptions::SubKey;
use crate::log_limit::LogLimiter;
use crate::xmpp::delay;
use crate::xmpp::link::Outbound;

/// How long a subscriber may take to answer the ping sent before its kept events.
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// The prefix of those pings' ids.
pub(super) const CHECK_ID: &str = "fg-held-";

/// One event, as made by the events engine.
pub(super) struct Event {
    /// The subscription it is for.
    pub(super) key: SubKey,
    /// The device's full JID: kept events' subscriber is pinged from it.
    pub(super) from: String,
    /// When its newest value was read: the `<delay>` stamp, if it is delivered late.
    pub(super) stamp: SystemTime,
    /// The messages, written under the size bound less [`delay::room`].
    pub(super) messages: Vec<String>,
}

struct Entry {
    event: Event,
    made: Instant,
    /// The link tag it was last written under; `None` while it waits.
    tag: Option<u64>,
    /// It waited (or its first write was not confirmed): it goes out with a `<delay>`.
    late: bool,
}

/// What happened to the events kept, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct OutboxStats {
    /// Dropped because `[events] outage_buffer` events (or `outage_max_size` bytes) were
    /// kept already.
    pub(super) dropped_full: u64,
    /// Dropped because they waited longer than `[events] outage_max_age`.
    pub(super) dropped_old: u64,
    /// Dropped because their subscriber's session ended (or its subscription did).
    pub(super) dropped_gone: u64,
    /// Delivered late, with a `<delay>`.
    pub(super) delivered_late: u64,
}

/// What a subscriber's answer to its check ping means for its kept events.
pub(super) enum Checked {
    /// It is there: its events, in order, to send now.
    Deliver(Vec<Outbound>),
    /// Its session ended: its events were dropped.
    Gone,
}

/// What the events kept may take (`[events] outage_buffer`, `outage_max_size`,
/// `outage_max_age`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    pub(super) count: usize,
    pub(super) bytes: u64,
    pub(super) age: Duration,
}

impl From<&crate::config::EventsConfig> for Bounds {
    fn from(e: &crate::config::EventsConfig) -> Bounds {
        Bounds {
            count: e.outage_buffer,
            bytes: e.outage_max_size,
            age: e.outage_max_age,
        }
    }
}

fn size_of(e: &Event) -> u64 {
    e.messages.iter().map(|m| m.len() as u64).sum()
}

/// The events not yet known to have reached the server, oldest first.
pub(super) struct Outbox {
    entries: VecDeque<Entry>,
    /// The last tag handed to the link (tags rise in the order of writing).
    last_tag: u64,
    /// Subscribers pinged before their kept events go out: full JID → (ping id, sent).
    checks: HashMap<String, (String, Instant)>,
    /// The component domain: the `from` of every `<delay>`.
    domain: String,
    max: usize,
    max_bytes: u64,
    max_age: Duration,
    /// The bytes of the messages of the events kept.
    bytes: u64,
    pub(super) stats: OutboxStats,
    log: LogLimiter,
}

impl Outbox {
    pub(super) fn new(domain: &str, bounds: Bounds) -> Outbox {
        Outbox {
            entries: VecDeque::new(),
            last_tag: 0,
            checks: HashMap::new(),
            domain: domain.to_owned(),
            max: bounds.count,
            max_bytes: bounds.bytes,
            max_age: bounds.age,
            bytes: 0,
            stats: OutboxStats::default(),
            log: LogLimiter::new(5, Duration::from_secs(60)),
        }
    }

    /// New bounds (after a reload); they apply at once.
    pub(super) fn set_bounds(&mut self, bounds: Bounds, now: Instant) {
        self.max = bounds.count;
        self.max_bytes = bounds.bytes;
        self.max_age = bounds.age;
        self.evict(now);
    }

    /// Events kept now.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether some subscriber's check ping is out.
    pub(super) fn checking(&self) -> bool {
        !self.checks.is_empty()
    }

    /// Takes a new event: what to write now, if the link is up and nothing older for its
    /// subscriber waits; otherwise it waits.
    pub(super) fn push(&mut self, event: Event, link_up: bool, now: Instant) -> Option<Outbound> {
        let waits = !link_up || self.checks.contains_key(&event.key.0);
        if self.max == 0 {
            // Nothing is kept: an event that cannot go now is lost, as before.
            if waits {
                self.stats.dropped_full += 1;
                self.log_drop(now);
                return None;
            }
            return Some(Outbound::Text(event.messages));
        }
        let mut entry = Entry {
            event,
            made: now,
            tag: None,
            late: waits,
        };
        let out = (!waits).then(|| self.write(&mut entry));
        self.bytes += size_of(&entry.event);
        self.entries.push_back(entry);
        self.evict(now);
        out
    }

    fn write(&mut self, entry: &mut Entry) -> Outbound {
        self.last_tag += 1;
        entry.tag = Some(self.last_tag);
        let stanzas = if entry.late {
            self.stats.delivered_late += 1;
            let e = &entry.event;
            e.messages
                .iter()
                .map(|m| delay::add(m, &self.domain, e.stamp))
                .collect()
        } else {
            entry.event.messages.clone()
        };
        Outbound::Tracked {
            tag: self.last_tag,
            stanzas,
        }
    }

    /// The server has processed everything written up to `receipt`.
    pub(super) fn confirm(&mut self, receipt: u64) {
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = e.tag.is_none_or(|t| t > receipt);
            freed += if keep { 0 } else { size_of(&e.event) };
            keep
        });
        self.bytes -= freed;
    }

    /// The link went down: answers to check pings can no longer come.
    pub(super) fn link_down(&mut self) {
        self.checks.clear();
    }

    /// The link is up again: every event kept waits for its subscriber's check, those
    /// written on the last connection but not confirmed among them. The subscribers to
    /// ping (full JID, the device to ping from), in the order of their oldest event.
    pub(super) fn link_up(&mut self, now: Instant) -> Vec<(String, String)> {
        self.evict(now);
        let mut who: Vec<(String, String)> = Vec::new();
        for e in &mut self.entries {
            if e.tag.take().is_some() {
                e.late = true;
            }
            if !who.iter().any(|(w, _)| *w == e.event.key.0) {
                who.push((e.event.key.0.clone(), e.event.from.clone()));
            }
        }
        who
    }

    /// A check ping `id` went to `who`.
    pub(super) fn checking_with(&mut self, who: String, id: String, now: Instant) {
        self.checks.insert(who, (id, now));
    }

    /// `who` answered the check ping `id` (`ok`: with a result). `None` if that was no
    /// check of ours. `alive` says whether a subscription still stands.
    pub(super) fn answered(
        &mut self,
        who: &str,
        id: &str,
        ok: bool,
        alive: impl Fn(&SubKey) -> bool,
        now: Instant,
    ) -> Option<Checked> {
        if self.checks.get(who).is_none_or(|(sent, _)| sent != id) {
            return None;
        }
        self.checks.remove(who);
        if !ok {
            self.forget(who);
            return Some(Checked::Gone);
        }
        self.evict(now);
        let mut out = Vec::new();
        let mut entries = std::mem::take(&mut self.entries);
        entries.retain(|e| {
            let gone = e.event.key.0 == who && !alive(&e.event.key);
            if gone {
                self.stats.dropped_gone += 1;
                self.bytes -= size_of(&e.event);
            }
            !gone
        });
        for e in entries.iter_mut() {
            if e.event.key.0 == who && e.tag.is_none() {
                out.push(self.write(e));
            }
        }
        self.entries = entries;
        Some(Checked::Deliver(out))
    }

    /// Subscribers whose check ping went unanswered for [`CHECK_TIMEOUT`]: their events
    /// are dropped; the caller ends what they held.
    pub(super) fn overdue(&mut self, now: Instant) -> Vec<String> {
        let late: Vec<String> = self
            .checks
            .iter()
            .filter(|(_, (_, sent))| now.saturating_duration_since(*sent) > CHECK_TIMEOUT)
            .map(|(who, _)| who.clone())
            .collect();
        for who in &late {
            self.checks.remove(who);
            self.forget(who);
        }
        late
    }

    /// Drops what is kept for `who` (gone).
    pub(super) fn forget(&mut self, who: &str) {
        self.checks.remove(who);
        self.drop_where(|k| k.0 == who);
    }

    /// Drops what is kept for one subscription (ended).
    pub(super) fn forget_key(&mut self, key: &SubKey) {
        self.drop_where(|k| k == key);
    }

    fn drop_where(&mut self, gone: impl Fn(&SubKey) -> bool) {
        let mut freed = 0;
        let before = self.entries.len();
        self.entries.retain(|e| {
            let drop = gone(&e.event.key);
            freed += if drop { size_of(&e.event) } else { 0 };
            !drop
        });
        self.bytes -= freed;
        self.stats.dropped_gone += (before - self.entries.len()) as u64;
    }

    /// Holds the bounds: the oldest go first.
    fn evict(&mut self, now: Instant) {
        let mut dropped = false;
        while let Some(front) = self.entries.front() {
            let full = self.entries.len() > self.max || self.bytes > self.max_bytes;
            let old = now.saturating_duration_since(front.made) > self.max_age;
            if !full && !old {
                break;
            }
            // One written on this connection and not confirmed yet has most likely
            // arrived: not counted as lost.
            if front.tag.is_none() {
                dropped = true;
                if full {
                    self.stats.dropped_full += 1;
                } else {
                    self.stats.dropped_old += 1;
                }
            }
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= size_of(&e.event);
            }
        }
        if dropped {
            self.log_drop(now);
        }
    }

    fn log_drop(&mut self, now: Instant) {
        if let Some(suppressed) = self.log.allow(now) {
            tracing::warn!(
                dropped_full = self.stats.dropped_full,
                dropped_old = self.stats.dropped_old,
                outage_buffer = self.max,
                outage_max_size = self.max_bytes,
                outage_max_age = %humantime::format_duration(self.max_age),
                suppressed,
                "events kept for the component link dropped, oldest first"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::stanza_text::parse;

    const ALICE: &str = "alice@example.org/a";

    fn bounds(count: usize, age: Duration) -> Bounds {
        Bounds {
            count,
            bytes: 1 << 20,
            age,
        }
    }
    const BOB: &str = "bob@example.org/b";

    fn event(who: &str, n: u64) -> Event {
        Event {
            key: (who.to_owned(), 1),
            from: "pump@gw.example.org/gw".into(),
            stamp: SystemTime::UNIX_EPOCH + Duration::from_secs(n),
            messages: vec![format!("<message to='{who}'><n>{n}</n></message>")],
        }
    }

    /// (tag, the `<n>` of each message, whether it has a delay) of what is written.
    fn written(out: &[Outbound]) -> Vec<(u64, String, bool)> {
        out.iter()
            .map(|o| match o {
                Outbound::Tracked { tag, stanzas } => {
                    let el = parse(&stanzas[0]).unwrap();
                    let n = el.children().find(|c| c.name() == "n").unwrap().text();
                    (*tag, n, el.children().any(|c| c.name() == "delay"))
                }
                _ => panic!("tracked"),
            })
            .collect()
    }

    #[test]
    fn events_wait_while_the_link_is_down_and_go_in_order_after_the_check() {
        let t0 = Instant::now();
        let mut o = Outbox::new("gw.example.org", bounds(100, Duration::from_secs(60)));
        let first = o.push(event(ALICE, 1), true, t0).unwrap();
        assert_eq!(written(&[first]), [(1, "1".into(), false)]);
        o.confirm(1);
        assert_eq!(o.len(), 0, "confirmed: forgotten");
        // written, then the link broke before the server confirmed it
        let lost = o.push(event(ALICE, 2), true, t0).unwrap();
        assert_eq!(written(&[lost])[0].0, 2);
        o.link_down();
        for n in 3..=5 {
            assert!(o.push(event(ALICE, n), false, t0).is_none());
        }
        assert!(o.push(event(BOB, 6), false, t0).is_none());
        // a stale receipt from the old connection confirms nothing kept
        o.confirm(1);
        assert_eq!(o.len(), 5);
        let who = o.link_up(t0);
        assert_eq!(
            who.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(),
            [ALICE, BOB]
        );
        o.checking_with(ALICE.into(), "fg-held-1".into(), t0);
        o.checking_with(BOB.into(), "fg-held-2".into(), t0);
        // new events for a subscriber being checked wait behind its kept ones
        assert!(o.push(event(ALICE, 7), true, t0).is_none());
        // somebody else's answer, or a wrong id: nothing
        assert!(o.answered(ALICE, "fg-held-2", true, |_| true, t0).is_none());
        let Some(Checked::Deliver(out)) = o.answered(ALICE, "fg-held-1", true, |_| true, t0) else {
            panic!("delivered")
        };
        let got = written(&out);
        let ns: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(ns, ["2", "3", "4", "5", "7"]);
        assert!(got.iter().all(|g| g.2), "each with a delay");
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "tags rise");
        // bob's session ended: his event is dropped, counted
        assert!(matches!(
            o.answered(BOB, "fg-held-2", false, |_| true, t0),
            Some(Checked::Gone)
        ));
        assert_eq!(o.stats.dropped_gone, 1);
        // alice's now go straight out again, without a delay
        let now = o.push(event(ALICE, 8), true, t0).unwrap();
        assert!(!written(&[now])[0].2);
        o.confirm(u64::MAX);
        assert_eq!(o.len(), 0);
        assert_eq!(o.stats.delivered_late, 5);
    }

    #[test]
    fn the_bounds_drop_the_oldest_and_count_them() {
        let t0 = Instant::now();
        let mut o = Outbox::new("gw.example.org", bounds(3, Duration::from_secs(10)));
        for n in 1..=5 {
            o.push(event(ALICE, n), false, t0);
        }
        assert_eq!(o.stats.dropped_full, 2);
        o.push(event(ALICE, 6), false, t0 + Duration::from_secs(5));
        assert_eq!(o.stats.dropped_full, 3);
        // 4 and 5 are older than 10 s now
        let later = t0 + Duration::from_secs(11);
        o.link_up(later);
        assert_eq!(o.stats.dropped_old, 2);
        o.checking_with(ALICE.into(), "c".into(), later);
        let Some(Checked::Deliver(out)) = o.answered(ALICE, "c", true, |_| true, later) else {
            panic!()
        };
        let ns: Vec<String> = written(&out).into_iter().map(|g| g.1).collect();
        assert_eq!(ns, ["6"]);
    }

    #[test]
    fn an_unanswered_check_or_an_ended_subscription_drops_the_events() {
        let t0 = Instant::now();
        let mut o = Outbox::new("gw.example.org", bounds(100, Duration::from_secs(3600)));
        o.push(event(ALICE, 1), false, t0);
        o.push(event(BOB, 2), false, t0);
        o.link_up(t0);
        o.checking_with(ALICE.into(), "a".into(), t0);
        o.checking_with(BOB.into(), "b".into(), t0);
        assert!(o.overdue(t0 + CHECK_TIMEOUT).is_empty());
        let mut late = o.overdue(t0 + CHECK_TIMEOUT + Duration::from_millis(1));
        late.sort();
        assert_eq!(late, [ALICE, BOB]);
        assert_eq!(o.len(), 0);
        // a subscription that ended while its subscriber was checked
        o.push(event(ALICE, 3), false, t0);
        o.link_up(t0);
        o.checking_with(ALICE.into(), "a2".into(), t0);
        let Some(Checked::Deliver(out)) = o.answered(ALICE, "a2", true, |_| false, t0) else {
            panic!()
        };
        assert!(out.is_empty());
        assert_eq!(o.stats.dropped_gone, 3);
    }

    #[test]
    fn the_bytes_kept_are_bounded_too() {
        let t0 = Instant::now();
        let size = size_of(&event(ALICE, 1));
        let b = Bounds {
            count: 100,
            bytes: 3 * size,
            age: Duration::from_secs(60),
        };
        let mut o = Outbox::new("gw.example.org", b);
        for n in 1..=5 {
            o.push(event(ALICE, n), false, t0);
        }
        assert_eq!((o.len(), o.bytes, o.stats.dropped_full), (3, 3 * size, 2));
        o.forget(ALICE);
        assert_eq!((o.len(), o.bytes), (0, 0));
    }

    #[test]
    fn with_no_room_nothing_is_kept() {
        let t0 = Instant::now();
        let mut o = Outbox::new("gw.example.org", bounds(0, Duration::from_secs(60)));
        assert!(matches!(
            o.push(event(ALICE, 1), true, t0),
            Some(Outbound::Text(_))
        ));
        assert!(o.push(event(ALICE, 2), false, t0).is_none());
        assert_eq!((o.len(), o.stats.dropped_full), (0, 1));
    }
}
