//! The writer: one thread that owns the store's write connection. The core hands it
//! records through a bounded queue ([`Recorder::record`], never blocking); the thread
//! commits what came in once per commit interval (sooner when more than the backlog's
//! bound came in), expires samples past their retention,
//! and holds the store under its size cap by dropping the oldest samples.
//!
//! When the disk is full or read-only, writing pauses: records wait in memory (bounded:
//! the oldest dropped first, counted), the write is retried, and the gateway goes on
//! serving live values. A store found damaged is moved aside and a fresh one started.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::store::{millis, Opened, Sample, Store, StoreError, Stored, FOLD_ROWS};
use crate::log_limit::LogLimiter;

/// How the writer works.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The database file.
    pub path: PathBuf,
    /// Records are committed together once per this interval (default 1 s): what a
    /// `kill -9` can lose, and what keeps CPU and flash wear low.
    pub commit_interval: Duration,
    /// The most bytes the store may take on disk, its WAL included.
    pub max_size: u64,
    /// Batches of records waiting for the thread (default 4,096).
    pub queue: usize,
    /// Samples kept in memory while the disk refuses them (default 200,000, ~10 MB);
    /// as many arriving within one commit interval are committed at once.
    pub backlog: usize,
    /// A refused write is tried again after this long (default 5 s).
    pub retry: Duration,
    /// Retention is applied this often (default 60 s), after a fold.
    pub maintenance: Duration,
    /// Committed samples are folded into the store's main table once this many wait
    /// (default [`FOLD_ROWS`]), besides at each maintenance and at the stop.
    pub fold_rows: u64,
}

impl WriterConfig {
    /// The defaults for a store at `path` of at most `max_size` bytes.
    pub fn new(path: PathBuf, max_size: u64) -> WriterConfig {
        WriterConfig {
            path,
            commit_interval: Duration::from_secs(1),
            max_size,
            queue: 4096,
            backlog: 200_000,
            retry: Duration::from_secs(5),
            maintenance: Duration::from_secs(60),
            fold_rows: FOLD_ROWS,
        }
    }
}

/// One value to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The device id.
    pub device: Arc<str>,
    /// The field name.
    pub field: Arc<str>,
    /// When the value was read, ms since the Unix epoch.
    pub t: i64,
    /// The value.
    pub value: Stored,
}

/// What the writer did so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Samples committed.
    pub stored: AtomicU64,
    /// Samples refused because the queue to the thread was full.
    pub dropped_queue: AtomicU64,
    /// Samples dropped from the in-memory backlog while the disk refused writes.
    pub dropped_backlog: AtomicU64,
    /// Samples deleted to keep the store under its size cap.
    pub dropped_cap: AtomicU64,
    /// Samples deleted past their retention.
    pub expired: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Folds of the committed samples into the store's main table.
    pub folds: AtomicU64,
    /// Writes refused (disk full, read-only, other errors).
    pub write_errors: AtomicU64,
    /// Stores moved aside (damaged or not ours).
    pub moved_aside: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// How long each series is kept: (device, field) → retention. Series not named here
/// (fields no longer configured) get `default`.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Per series.
    pub series: HashMap<(String, String), Duration>,
    /// For every other series.
    pub default: Option<Duration>,
}

enum Msg {
    Records(Vec<Record>),
    Flush(SyncSender<()>),
}

/// The core's handle: records go to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    retention: Arc<Mutex<Retention>>,
    log: Arc<Mutex<LogLimiter>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Queues `records`; never waits. A full queue drops them, counted and logged (at
    /// most a line a minute).
    pub fn record(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        match self.tx.try_send(Msg::Records(records)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                Counters::add(&self.counters.dropped_queue, n);
                let allowed = self
                    .log
                    .lock()
                    .map(|mut l| l.allow(Instant::now()))
                    .unwrap_or(None);
                if let Some(suppressed) = allowed {
                    tracing::warn!(
                        dropped_total = Counters::get(&self.counters.dropped_queue),
                        suppressed,
                        "history: the writer is behind, samples dropped"
                    );
                }
            }
        }
    }

    /// Commits what is pending now and returns once it is done (or the writer is gone).
    /// Blocks: for tests, and from a blocking task.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Replaces the retention of every series (after a reload).
    pub fn set_retention(&self, r: Retention) {
        if let Ok(mut cur) = self.retention.lock() {
            *cur = r;
        }
    }

    /// The writer's counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

/// The writer thread. Dropping every [`Recorder`] ends it (after a last commit and a
/// checkpoint); [`Writer::join`] waits for that.
pub struct Writer {
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread. The store is opened on it (not here): a store that cannot be
    /// opened yet (a read-only or full disk) is retried there, and nothing waits.
    pub fn start(cfg: WriterConfig, retention: Retention) -> std::io::Result<(Writer, Recorder)> {
        let (tx, rx) = mpsc::sync_channel(cfg.queue.max(1));
        let counters = Arc::new(Counters::default());
        let retention = Arc::new(Mutex::new(retention));
        let recorder = Recorder {
            tx,
            counters: counters.clone(),
            retention: retention.clone(),
            log: Arc::new(Mutex::new(LogLimiter::new(1, Duration::from_secs(60)))),
        };
        let thread = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || Thread::new(cfg, counters, retention).run(rx))?;
        Ok((
            Writer {
                thread: Some(thread),
            },
            recorder,
        ))
    }

    /// Waits for the thread to end (once every recorder is dropped).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Thread {
    cfg: WriterConfig,
    counters: Arc<Counters>,
    retention: Arc<Mutex<Retention>>,
    store: Option<Store>,
    ids: HashMap<(Arc<str>, Arc<str>), i64>,
    /// Records not yet committed, in arrival order.
    pending: VecDeque<Record>,
    /// While writing is refused: when to try again, and why.
    paused: Option<(Instant, String)>,
    next_maintenance: Instant,
}

impl Thread {
    fn new(cfg: WriterConfig, counters: Arc<Counters>, retention: Arc<Mutex<Retention>>) -> Thread {
        let next_maintenance = Instant::now() + cfg.maintenance;
        Thread {
            cfg,
            counters,
            retention,
            store: None,
            ids: HashMap::new(),
            pending: VecDeque::new(),
            paused: None,
            next_maintenance,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut next_commit = Instant::now() + self.cfg.commit_interval;
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Records(r)) => {
                    self.pending.extend(r);
                    // More than the backlog within one interval: committed now, while
                    // the store takes it, rather than its oldest dropped.
                    if self.pending.len() >= self.cfg.backlog && self.paused.is_none() {
                        self.commit();
                    }
                    self.bound_backlog();
                }
                Ok(Msg::Flush(done)) => {
                    self.paused = None;
                    self.commit();
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Checked after every message too: records that never stop coming would
            // otherwise keep the timeout from ever firing, and nothing would be committed.
            if Instant::now() >= next_commit {
                self.commit();
                if Instant::now() >= self.next_maintenance && self.paused.is_none() {
                    self.maintain();
                    self.next_maintenance = Instant::now() + self.cfg.maintenance;
                }
                next_commit = Instant::now() + self.cfg.commit_interval;
            }
        }
        // Stopping: the last records, folded, then one file (the WAL checkpointed).
        self.paused = None;
        self.commit();
        if self.paused.is_none() {
            self.fold(true);
        }
        if let Some(s) = self.store.as_mut() {
            if let Err(e) = s.checkpoint() {
                tracing::debug!(error = %e, "history: final checkpoint");
            }
        }
        if !self.pending.is_empty() {
            tracing::warn!(
                samples = self.pending.len(),
                "history: samples not written at stop (the store refused them)"
            );
        }
    }

    /// The oldest records go when the backlog is over its bound.
    fn bound_backlog(&mut self) {
        let over = self.pending.len().saturating_sub(self.cfg.backlog);
        if over > 0 {
            // From the front of a deque: dropping a batch's worth per message from a
            // full backlog must not move the whole backlog each time.
            self.pending.drain(..over);
            Counters::add(&self.counters.dropped_backlog, over as u64);
            if self.paused.is_some() {
                tracing::debug!(
                    dropped = over,
                    "history: backlog full, oldest samples dropped"
                );
            }
        }
    }

    fn store(&mut self) -> Result<&mut Store, StoreError> {
        if self.store.is_none() {
            if let Some(dir) = self.cfg.path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::ReadOnly(format!("{}: {e}", dir.display())))?;
            }
            let (s, opened) = Store::open(&self.cfg.path)?;
            if let Opened::MovedAside { to, reason } = opened {
                Counters::add(&self.counters.moved_aside, 1);
                tracing::error!(store = %self.cfg.path.display(), moved_to = %to.display(), %reason,
                    "history store unusable: moved aside, a fresh one started");
            }
            self.ids.clear();
            self.store = Some(s);
        }
        Ok(self.store.as_mut().expect("opened above"))
    }

    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some((until, _)) = &self.paused {
            if Instant::now() < *until {
                return;
            }
        }
        match self.try_commit() {
            Ok(n) => {
                Counters::add(&self.counters.stored, n);
                Counters::add(&self.counters.commits, 1);
                if let Some((_, why)) = self.paused.take() {
                    tracing::warn!(after = %why, dropped_total = Counters::get(&self.counters.dropped_backlog),
                        "history writing resumed");
                }
                if self.fold(false) {
                    self.hold_cap();
                }
            }
            Err(e) => self.refused(e),
        }
    }

    /// A write the store refused: writing pauses, to be retried (a damaged store is
    /// moved aside first).
    fn refused(&mut self, e: StoreError) {
        Counters::add(&self.counters.write_errors, 1);
        if matches!(e, StoreError::Corrupt(_)) {
            // Closing it lets the next open find it unusable and move it aside.
            tracing::error!(error = %e, "history store damaged while writing");
            self.store = None;
            self.move_aside_now(&e.to_string());
        }
        if self.paused.is_none() {
            tracing::error!(error = %e, retry_s = self.cfg.retry.as_secs_f64(),
                backlog_max = self.cfg.backlog,
                "history writing paused (live values are not affected); retrying");
        }
        self.paused = Some((Instant::now() + self.cfg.retry, e.to_string()));
    }

    /// Folds the committed samples into the store's main table when enough wait, or
    /// whatever waits when `now`. False if the store refused (writing is then paused).
    fn fold(&mut self, now: bool) -> bool {
        let Some(store) = self.store.as_mut() else {
            return true;
        };
        let waiting = store.unfolded();
        if waiting == 0 || (!now && waiting < self.cfg.fold_rows) {
            return true;
        }
        match store.fold() {
            Ok(_) => {
                Counters::add(&self.counters.folds, 1);
                true
            }
            Err(e) => {
                self.refused(e);
                false
            }
        }
    }

    fn move_aside_now(&mut self, reason: &str) {
        let stamp = millis(SystemTime::now()) / 1000;
        let mut to = self.cfg.path.as_os_str().to_owned();
        to.push(format!(".unusable-{stamp}"));
        if std::fs::rename(&self.cfg.path, &to).is_ok() {
            Counters::add(&self.counters.moved_aside, 1);
            tracing::error!(moved_to = %PathBuf::from(&to).display(), %reason,
                "history store moved aside, a fresh one started");
            for side in ["-wal", "-shm"] {
                let mut from = self.cfg.path.as_os_str().to_owned();
                from.push(side);
                let mut dest = to.clone();
                dest.push(side);
                let _ = std::fs::rename(&from, &dest);
            }
        }
    }

    fn try_commit(&mut self) -> Result<u64, StoreError> {
        let mut batch = Vec::with_capacity(self.pending.len());
        let pending = std::mem::take(&mut self.pending);
        let result = self.samples_of(&pending, &mut batch);
        self.pending = pending;
        result?;
        self.store()?.write(&batch)?;
        self.pending.clear();
        Ok(batch.len() as u64)
    }

    fn samples_of(
        &mut self,
        pending: &VecDeque<Record>,
        batch: &mut Vec<Sample>,
    ) -> Result<(), StoreError> {
        for r in pending {
            let key = (r.device.clone(), r.field.clone());
            let id = match self.ids.get(&key) {
                Some(id) => *id,
                None => {
                    let id = self.store()?.series_id(&r.device, &r.field)?;
                    self.ids.insert(key, id);
                    id
                }
            };
            batch.push(Sample {
                series: id,
                t: r.t,
                value: r.value.clone(),
            });
        }
        Ok(())
    }

    /// Keeps the store under its cap: the oldest time slice of every series goes, until
    /// the store is under 90 % of the cap.
    fn hold_cap(&mut self) {
        let cap = self.cfg.max_size;
        let target = cap / 10 * 9;
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let Ok(mut used) = store.used_bytes() else {
            return;
        };
        if used <= cap {
            return;
        }
        // Folded first: the oldest are then looked up, and dropped, in one table.
        if !self.fold(true) {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let mut dropped = 0;
        for _ in 0..8 {
            let Ok(Some((lo, hi))) = store.time_span() else {
                break;
            };
            let share = (used - target) as f64 / used as f64;
            let cutoff = lo + (((hi - lo) as f64 * share) as i64).max(1);
            match store.drop_before(cutoff) {
                Ok(n) => dropped += n,
                Err(e) => {
                    tracing::warn!(error = %e, "history: could not drop old samples");
                    break;
                }
            }
            let _ = store.checkpoint();
            match store.used_bytes() {
                Ok(u) => used = u,
                Err(_) => break,
            }
            if used <= target {
                break;
            }
        }
        Counters::add(&self.counters.dropped_cap, dropped);
        tracing::warn!(
            dropped,
            dropped_total = Counters::get(&self.counters.dropped_cap),
            cap_bytes = cap,
            used_bytes = used,
            "history store at its size cap: oldest samples dropped"
        );
    }

    /// Folds, then deletes what is past its retention.
    fn maintain(&mut self) {
        if !self.fold(true) {
            return;
        }
        let retention = match self.retention.lock() {
            Ok(r) => r.clone(),
            Err(_) => return,
        };
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let Ok(series) = store.all_series() else {
            return;
        };
        let now = millis(SystemTime::now());
        let mut n = 0;
        for (id, device, field) in series {
            let keep = retention
                .series
                .get(&(device, field))
                .copied()
                .or(retention.default);
            if let Some(keep) = keep {
                let before =
                    now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
                match store.expire(id, before) {
                    Ok(k) => n += k,
                    Err(e) => {
                        tracing::warn!(error = %e, "history: could not expire old samples");
                        return;
                    }
                }
            }
        }
        if n > 0 {
            Counters::add(&self.counters.expired, n);
            tracing::debug!(expired = n, "history: samples past their retention deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::Reader;
    use super::*;

    fn rec(device: &str, field: &str, t: i64, v: f64) -> Record {
        Record {
            device: device.into(),
            field: field.into(),
            t,
            value: Stored::Real(v),
        }
    }

    #[test]
    fn records_are_committed_and_the_stop_loses_none() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("h.db");
        let (w, r) = Writer::start(
            WriterConfig::new(path.clone(), 64 << 20),
            Retention::default(),
        )
        .unwrap();
        for i in 0..1000 {
            r.record(vec![
                rec("d", "a", i, i as f64),
                rec("d", "b", i, -(i as f64)),
            ]);
        }
        drop(r);
        w.join();
        let reader = Reader::open(&path).unwrap().unwrap();
        let a = reader.series_id("d", "a").unwrap().unwrap();
        assert_eq!(reader.range(a, 0, i64::MAX, 10_000).unwrap().len(), 1000);
        // A clean stop leaves one file, every sample folded into the main table.
        let wal = d.path().join("h.db-wal");
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
        assert_eq!(Store::open(&path).unwrap().0.unfolded(), 0);
    }

    #[test]
    fn retention_deletes_what_is_too_old() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("h.db");
        let mut cfg = WriterConfig::new(path.clone(), 64 << 20);
        cfg.maintenance = Duration::from_millis(1);
        cfg.commit_interval = Duration::from_millis(10);
        let now = millis(SystemTime::now());
        let hour = 3_600_000;
        let mut keep = Retention::default();
        keep.series
            .insert(("d".into(), "a".into()), Duration::from_secs(3600));
        keep.default = Some(Duration::from_secs(7200));
        let (w, r) = Writer::start(cfg, keep).unwrap();
        r.record(vec![
            rec("d", "a", now - 2 * hour, 1.0),
            rec("d", "a", now - 1000, 2.0),
            rec("d", "b", now - 3 * hour, 3.0),
            rec("d", "b", now - hour - 1000, 4.0),
        ]);
        r.flush();
        let counters = r.counters().clone();
        crate::history::writer::tests::wait(|| Counters::get(&counters.expired) == 2);
        drop(r);
        w.join();
        let reader = Reader::open(&path).unwrap().unwrap();
        let a = reader.series_id("d", "a").unwrap().unwrap();
        let b = reader.series_id("d", "b").unwrap().unwrap();
        assert_eq!(reader.range(a, 0, i64::MAX, 10).unwrap().len(), 1);
        assert_eq!(reader.range(b, 0, i64::MAX, 10).unwrap().len(), 1);
    }

    pub(super) fn wait(cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_cap_drops_the_oldest_first_and_holds() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("h.db");
        let cap = 8 << 20;
        let mut cfg = WriterConfig::new(path.clone(), cap);
        cfg.commit_interval = Duration::from_millis(5);
        let (w, r) = Writer::start(cfg, Retention::default()).unwrap();
        // ~26 bytes a sample: 1.2 M samples is about four times the cap.
        for chunk in 0..120 {
            let base = chunk * 10_000;
            r.record(
                (0..10_000)
                    .map(|i| rec("d", &format!("f{}", i % 10), base + i, i as f64))
                    .collect(),
            );
            r.flush();
        }
        let c = r.counters().clone();
        drop(r);
        w.join();
        assert!(Counters::get(&c.dropped_cap) > 0);
        assert_eq!(Counters::get(&c.dropped_queue), 0);
        let size = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(d.path().join("h.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
        assert!(size <= cap + (cap / 10), "{size} bytes on disk, cap {cap}");
        // The newest survived; the oldest went.
        let reader = Reader::open(&path).unwrap().unwrap();
        let f = reader.series_id("d", "f3").unwrap().unwrap();
        let kept = reader.range(f, 0, i64::MAX, usize::MAX).unwrap();
        assert_eq!(kept.last().unwrap().0, 1_199_993);
        assert!(kept[0].0 > 100_000, "oldest kept {}", kept[0].0);
    }

    #[test]
    fn a_full_disk_pauses_writing_and_the_backlog_is_written_when_space_returns() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("h.db");
        let mut cfg = WriterConfig::new(path.clone(), 64 << 20);
        cfg.retry = Duration::from_millis(50);
        let mut t = Thread::new(cfg, Arc::default(), Arc::default());
        t.pending.push_back(rec("d", "a", 0, 0.0));
        t.commit();
        let pages = std::fs::metadata(&path).unwrap().len() as i64 / 4096 + 8;
        t.store.as_ref().unwrap().limit_pages(pages);
        t.pending
            .extend((1..20_000).map(|i| rec("d", "a", i, i as f64)));
        t.commit();
        assert_eq!(Counters::get(&t.counters.write_errors), 1);
        assert!(
            matches!(&t.paused, Some((_, why)) if why.contains("full")),
            "{:?}",
            t.paused
        );
        assert!(t.store.is_some(), "a full store is kept, not moved aside");
        // Before the retry is due, nothing is tried; after it, everything goes in.
        t.pending.push_back(rec("d", "a", 20_000, 0.0));
        t.commit();
        assert_eq!(Counters::get(&t.counters.write_errors), 1);
        t.store.as_ref().unwrap().limit_pages(1 << 30);
        std::thread::sleep(Duration::from_millis(60));
        t.commit();
        assert!(t.paused.is_none() && t.pending.is_empty());
        assert_eq!(Counters::get(&t.counters.stored), 20_001);
        let reader = Reader::open(&path).unwrap().unwrap();
        let a = reader.series_id("d", "a").unwrap().unwrap();
        assert_eq!(reader.range(a, 0, i64::MAX, 100_000).unwrap().len(), 20_001);
    }

    #[test]
    fn records_arriving_without_pause_are_committed_on_time_and_none_dropped() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("h.db");
        let mut cfg = WriterConfig::new(path.clone(), 1 << 30);
        cfg.commit_interval = Duration::from_millis(100);
        cfg.backlog = 20_000;
        cfg.fold_rows = 50_000;
        let (w, r) = Writer::start(cfg, Retention::default()).unwrap();
        let c = r.counters().clone();
        // A steady stream of small batches, more per commit interval than the backlog
        // holds: the writer commits while they keep coming, and early rather than drop.
        let end = Instant::now() + Duration::from_millis(1500);
        let mut sent = 0i64;
        while Instant::now() < end {
            r.record(
                (0..100)
                    .map(|i| rec("d", &format!("f{i}"), sent, sent as f64))
                    .collect(),
            );
            sent += 1;
            if sent % 50 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let during = Counters::get(&c.commits);
        let folds = Counters::get(&c.folds);
        drop(r);
        w.join();
        assert!(during >= 5, "{during} commits in 1.5 s of records");
        assert!(folds >= 1, "{folds} folds of {sent} x 100 samples");
        assert_eq!(Counters::get(&c.dropped_backlog), 0);
        assert_eq!(
            Counters::get(&c.stored) + Counters::get(&c.dropped_queue),
            sent as u64 * 100
        );
    }

    #[test]
    fn an_unwritable_directory_pauses_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        // A file where the store's directory should be: nothing can be created there.
        let blocker = d.path().join("state");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("h.db");
        let mut cfg = WriterConfig::new(path.clone(), 64 << 20);
        cfg.commit_interval = Duration::from_millis(5);
        cfg.retry = Duration::from_millis(20);
        cfg.backlog = 100;
        let (w, r) = Writer::start(cfg, Retention::default()).unwrap();
        for i in 0..150 {
            r.record(vec![rec("d", "a", i, i as f64)]);
        }
        let c = r.counters().clone();
        wait(|| Counters::get(&c.write_errors) > 0 && Counters::get(&c.dropped_backlog) == 50);
        std::fs::remove_file(&blocker).unwrap();
        wait(|| Counters::get(&c.stored) == 100);
        drop(r);
        w.join();
        let reader = Reader::open(&path).unwrap().unwrap();
        let a = reader.series_id("d", "a").unwrap().unwrap();
        let kept = reader.range(a, 0, i64::MAX, 1000).unwrap();
        // The 50 oldest went; the rest, in order.
        assert_eq!((kept.len(), kept[0].0), (100, 50));
    }
}
