//! The sample store: one SQLite database in the state directory.
//!
//! Layout: `series` names each (device, field) pair once; `samples` is a `WITHOUT ROWID`
//! table keyed by (series, time in ms since the Unix epoch), so a range of one field is
//! one contiguous stretch of the B-tree, and a sample costs about 26 bytes on disk
//! (measured: `cargo test --release history -- --ignored bytes_per_sample`). Values keep
//! their SQLite storage class: integers (bools, counters, times in ms), reals, text.
//!
//! Writes come in batches, one transaction each, sorted by (series, time) so that
//! consecutive inserts land on the same pages (unsorted, 1,000 interleaved series cost
//! four times the CPU). WAL with `synchronous = NORMAL`: a process crash loses nothing
//! committed; a power cut loses at most the last commits, and the database stays whole.
//!
//! A database that cannot be opened as ours (not SQLite, corrupt, another application's,
//! a newer schema) is moved aside, with its WAL, and a fresh one started: history is
//! worth less than a gateway that starts. One that merely cannot be written now (a full
//! disk) is kept: opening a store of ours writes nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

/// Identifies our databases (`PRAGMA application_id`): "fgH1".
const APPLICATION_ID: i32 = 0x6667_4831;
/// The schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    field TEXT NOT NULL,
    UNIQUE(device, field)
) STRICT;
CREATE TABLE IF NOT EXISTS samples(
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    v ANY,
    PRIMARY KEY(series, t)
) WITHOUT ROWID, STRICT;
";

/// A stored value, in the storage class SQLite keeps it in.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Bools (0/1), integers, times (ms since the epoch).
    Int(i64),
    /// Floating-point values.
    Real(f64),
    /// Text and enumeration labels.
    Text(String),
}

/// One sample to store: a series id from [`Store::series_id`], the time it was read (ms
/// since the Unix epoch), the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series (device, field).
    pub series: i64,
    /// When the value was read, ms since the Unix epoch.
    pub t: i64,
    /// The value.
    pub value: Stored,
}

/// One period's aggregate of a numeric series.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// The period's start, ms since the epoch.
    pub start: i64,
    /// The mean of the samples stored in the period.
    pub mean: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// How many samples.
    pub count: u64,
}

/// Store errors. Full and read-only are apart: they pause writing, the others end it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the file system's quota) is full.
    #[error("the disk is full: {0}")]
    Full(String),
    /// The store's file or directory cannot be written.
    #[error("the store cannot be written: {0}")]
    ReadOnly(String),
    /// The database is damaged.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// Another failure of SQLite or the file system.
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Whether writing may succeed later without intervention (space freed, the file
    /// system remounted read-write).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Full(_) | StoreError::ReadOnly(_))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let code = e.sqlite_error_code();
        let text = e.to_string();
        match code {
            Some(ErrorCode::DiskFull) => StoreError::Full(text),
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                StoreError::ReadOnly(text)
            }
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(text),
            // An I/O error writing is most often ENOSPC under another name (a full file
            // system met while growing the WAL): treat it as full, so writing pauses and
            // is retried rather than the store being given up.
            Some(ErrorCode::SystemIoFailure) => StoreError::Full(text),
            _ => StoreError::Other(text),
        }
    }
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// An existing store, or a new one where there was none.
    Ready,
    /// The file there was not usable; it was moved to this path (with `-wal`/`-shm`
    /// beside it), and a fresh store started.
    MovedAside {
        /// Where the old file went.
        to: PathBuf,
        /// Why it was not usable.
        reason: String,
    },
}

/// The writer's connection to the store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Milliseconds since the Unix epoch (before it: negative).
pub fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers do not block the writer. NORMAL: commits are not fsynced one by one
    // (the WAL is, at checkpoints) — a crash of the process loses nothing committed.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The WAL is truncated back to this after each checkpoint, so that it does not keep
    // the size of its largest burst (the cap counts it).
    conn.pragma_update(None, "journal_size_limit", 4 << 20)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// Why a store could not be opened.
enum OpenFailure {
    /// The file is not a usable store of ours (not SQLite, damaged, another
    /// application's, a newer schema): it may be moved aside.
    Unusable(String),
    /// The store may be fine but cannot be opened now (a full or read-only disk, a lock
    /// held elsewhere): it is kept, and opening is tried again later.
    Store(StoreError),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        match StoreError::from(e) {
            StoreError::Corrupt(reason) => OpenFailure::Unusable(reason),
            other => OpenFailure::Store(other),
        }
    }
}

/// Whether an opened database is ours (`Ok(true)`), new and empty (`Ok(false)`), or
/// something else.
fn check_ours(conn: &Connection) -> Result<bool, OpenFailure> {
    let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    match (app, version) {
        (APPLICATION_ID, SCHEMA_VERSION) => Ok(true),
        (0, 0) if tables == 0 => Ok(false),
        (APPLICATION_ID, v) => Err(OpenFailure::Unusable(format!(
            "schema version {v}, this gateway reads version {SCHEMA_VERSION}"
        ))),
        (a, _) => Err(OpenFailure::Unusable(format!(
            "not a fieldgate history (application id {a:#x})"
        ))),
    }
}

/// Opens the store at `path`, making it if it is new. A store of ours is only read here:
/// a gateway restarted on a full disk, or beside a process holding the write lock, must
/// find its history where it was rather than judge the file unusable.
fn open_ours(path: &Path) -> Result<Connection, OpenFailure> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    if !check_ours(&conn)? {
        // One transaction: a crash half-way leaves an empty database, not tables
        // without our application id (which would read as another program's).
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; \
             PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
    }
    Ok(conn)
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl Store {
    /// Opens (or creates) the store at `path`. A file that is not a usable store of ours
    /// (damaged, another program's, a newer schema) is moved aside
    /// (`<name>.unusable-<unix seconds>`) and a fresh store started. A store that cannot
    /// be opened now (a full or read-only disk, a lock held elsewhere) is an error and is
    /// left where it is, to be opened when that passes. Takes time independent of the
    /// store's size: nothing is scanned, and a store of ours is not written.
    pub fn open(path: &Path) -> Result<(Store, Opened), StoreError> {
        match open_ours(path) {
            Ok(conn) => Ok((
                Store {
                    conn,
                    path: path.to_owned(),
                },
                Opened::Ready,
            )),
            Err(OpenFailure::Store(e)) => Err(e),
            Err(OpenFailure::Unusable(reason)) => {
                let stamp = millis(SystemTime::now()) / 1000;
                let to = with_suffix(path, &format!(".unusable-{stamp}"));
                std::fs::rename(path, &to).map_err(|e| {
                    StoreError::Other(format!(
                        "{} is unusable ({reason}) and cannot be moved aside: {e}",
                        path.display()
                    ))
                })?;
                for side in ["-wal", "-shm"] {
                    let from = with_suffix(path, side);
                    if from.exists() {
                        let _ = std::fs::rename(&from, with_suffix(&to, side));
                    }
                }
                let conn = open_ours(path).map_err(|e| match e {
                    OpenFailure::Store(e) => e,
                    OpenFailure::Unusable(r) => StoreError::Other(r),
                })?;
                Ok((
                    Store {
                        conn,
                        path: path.to_owned(),
                    },
                    Opened::MovedAside { to, reason },
                ))
            }
        }
    }

    /// The store's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the series of (`device`, `field`), made on first use.
    pub fn series_id(&mut self, device: &str, field: &str) -> Result<i64, StoreError> {
        let found = self
            .conn
            .prepare_cached("SELECT id FROM series WHERE device = ?1 AND field = ?2")?
            .query_row(params![device, field], |r| r.get(0))
            .optional()?;
        if let Some(id) = found {
            return Ok(id);
        }
        self.conn
            .prepare_cached("INSERT INTO series(device, field) VALUES (?1, ?2)")?
            .execute(params![device, field])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Every series in the store: (id, device, field).
    pub fn all_series(&self) -> Result<Vec<(i64, String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, device, field FROM series")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores `batch` in one transaction (sorted first; a second sample of a series at
    /// the same millisecond replaces the first). All or nothing.
    pub fn write(&mut self, batch: &mut [Sample]) -> Result<(), StoreError> {
        batch.sort_unstable_by_key(|s| (s.series, s.t));
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO samples(series, t, v) VALUES (?1, ?2, ?3)",
            )?;
            for s in batch.iter() {
                match &s.value {
                    Stored::Int(v) => insert.execute(params![s.series, s.t, v])?,
                    Stored::Real(v) => insert.execute(params![s.series, s.t, v])?,
                    Stored::Text(v) => insert.execute(params![s.series, s.t, v])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes the samples of `series` older than `before` (ms); how many.
    pub fn expire(&mut self, series: i64, before: i64) -> Result<u64, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM samples WHERE series = ?1 AND t < ?2")?
            .execute(params![series, before])?;
        Ok(n as u64)
    }

    /// The time of the oldest and the newest sample of the whole store, if any. One
    /// look-up per series (the key is (series, time)): no index on time alone, which
    /// would cost a third more bytes per sample.
    pub fn time_span(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT min(lo), max(hi) FROM (SELECT \
               (SELECT t FROM samples WHERE series = s.id ORDER BY t LIMIT 1) AS lo, \
               (SELECT t FROM samples WHERE series = s.id ORDER BY t DESC LIMIT 1) AS hi \
             FROM series AS s)",
        )?;
        let (lo, hi): (Option<i64>, Option<i64>) =
            st.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(lo.zip(hi))
    }

    /// Deletes every sample older than `cutoff` (ms), whatever its series: the oldest
    /// go first when the store is full. How many went.
    pub fn drop_before(&mut self, cutoff: i64) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let ids: Vec<i64> = tx
                .prepare_cached("SELECT id FROM series")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut del = tx.prepare_cached("DELETE FROM samples WHERE series = ?1 AND t < ?2")?;
            for id in ids {
                n += del.execute(params![id, cutoff])? as u64;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Bytes the store's live pages take (pages in use, not the free list), plus the WAL
    /// file as it stands: what the size cap is held against.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let page: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        let pages: i64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        let free: i64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let wal = std::fs::metadata(with_suffix(&self.path, "-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(((pages - free).max(0) * page) as u64 + wal)
    }

    /// How many samples the store holds (counts the table: for tests and tools).
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Makes SQLite answer SQLITE_FULL once the database would pass `pages` pages, as it
    /// does when the disk is full.
    #[cfg(test)]
    pub(crate) fn limit_pages(&self, pages: i64) {
        self.conn
            .pragma_update(None, "max_page_count", pages)
            .expect("max_page_count");
    }

    /// Moves the WAL's content into the database and truncates the WAL (what a clean
    /// stop does, so that the next start finds one file).
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// A read-only connection: historical readouts and the export. Never blocks the writer
/// (WAL) and never writes, so it may be opened while the gateway runs.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    /// Opens the store at `path` for reading; `Ok(None)` when there is none yet.
    pub fn open(path: &Path) -> Result<Option<Reader>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        match check_ours(&conn) {
            Ok(_) => {}
            Err(OpenFailure::Unusable(reason)) => return Err(StoreError::Corrupt(reason)),
            Err(OpenFailure::Store(e)) => return Err(e),
        }
        Ok(Some(Reader { conn }))
    }

    /// The series id of (`device`, `field`), if anything was ever stored for it.
    pub fn series_id(&self, device: &str, field: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM series WHERE device = ?1 AND field = ?2")?
            .query_row(params![device, field], |r| r.get(0))
            .optional()?)
    }

    /// The fields of `device` that have a series.
    pub fn fields_of(&self, device: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, field FROM series WHERE device = ?1 ORDER BY field")?;
        let rows = st.query_map(params![device], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Samples of `series` with `from <= t <= to`, in time order, at most `limit`.
    pub fn range(
        &self,
        series: i64,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Stored)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT t, v FROM samples WHERE series = ?1 AND t >= ?2 AND t <= ?3 \
             ORDER BY t LIMIT ?4",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st.query_map(params![series, from, to, limit], |r| {
            let t: i64 = r.get(0)?;
            let v = match r.get_ref(1)? {
                rusqlite::types::ValueRef::Integer(i) => Stored::Int(i),
                rusqlite::types::ValueRef::Real(f) => Stored::Real(f),
                rusqlite::types::ValueRef::Text(b) => {
                    Stored::Text(String::from_utf8_lossy(b).into_owned())
                }
                rusqlite::types::ValueRef::Null | rusqlite::types::ValueRef::Blob(_) => {
                    Stored::Text(String::new())
                }
            };
            Ok((t, v))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The samples of several series with `from <= t <= to`, merged in time order (a
    /// series' samples of one instant in the order of `series`), handed to `f` with the
    /// index of their series in `series` until it returns false. Streams: memory does
    /// not grow with the range. How many were handed over.
    pub fn merged(
        &self,
        series: &[i64],
        from: i64,
        to: i64,
        mut f: impl FnMut(usize, i64, Stored) -> bool,
    ) -> Result<u64, StoreError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const SQL: &str =
            "SELECT t, v FROM samples WHERE series = ?1 AND t >= ?2 AND t <= ?3 ORDER BY t";
        let mut stmts = Vec::with_capacity(series.len());
        for _ in series {
            stmts.push(self.conn.prepare(SQL)?);
        }
        let mut rows = Vec::with_capacity(series.len());
        for (st, id) in stmts.iter_mut().zip(series) {
            rows.push(st.query(params![id, from, to])?);
        }
        let mut heap = BinaryHeap::new();
        let next = |rows: &mut Vec<rusqlite::Rows<'_>>,
                    k: usize|
         -> Result<Option<(i64, Stored)>, StoreError> {
            match rows[k].next()? {
                Some(r) => Ok(Some((r.get(0)?, stored_of(r.get_ref(1)?)))),
                None => Ok(None),
            }
        };
        let mut heads: Vec<Option<Stored>> = vec![None; series.len()];
        for (k, head) in heads.iter_mut().enumerate() {
            if let Some((t, v)) = next(&mut rows, k)? {
                *head = Some(v);
                heap.push(Reverse((t, k)));
            }
        }
        let mut n = 0;
        while let Some(Reverse((t, k))) = heap.pop() {
            let v = heads[k].take().expect("a head for each entry");
            n += 1;
            if !f(k, t, v) {
                break;
            }
            if let Some((t, v)) = next(&mut rows, k)? {
                heads[k] = Some(v);
                heap.push(Reverse((t, k)));
            }
        }
        Ok(n)
    }

    /// Mean, minimum and maximum of the numeric samples of `series` in `from..=to`, per
    /// period: `start_of` maps a time to its period's start (non-decreasing). Periods
    /// without samples are left out.
    pub fn aggregate(
        &self,
        series: i64,
        from: i64,
        to: i64,
        start_of: impl Fn(i64) -> i64,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let mut out: Vec<Aggregate> = Vec::new();
        let mut sum = 0.0;
        self.merged(&[series], from, to, |_, t, v| {
            let x = match v {
                Stored::Int(i) => i as f64,
                Stored::Real(f) => f,
                Stored::Text(_) => return true,
            };
            let p = start_of(t);
            match out.last_mut() {
                Some(a) if a.start == p => {
                    sum += x;
                    a.count += 1;
                    a.min = a.min.min(x);
                    a.max = a.max.max(x);
                    a.mean = sum / a.count as f64;
                }
                _ => {
                    sum = x;
                    out.push(Aggregate {
                        start: p,
                        mean: x,
                        min: x,
                        max: x,
                        count: 1,
                    });
                }
            }
            true
        })?;
        Ok(out)
    }
}

fn stored_of(v: rusqlite::types::ValueRef<'_>) -> Stored {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Integer(i) => Stored::Int(i),
        ValueRef::Real(f) => Stored::Real(f),
        ValueRef::Text(b) => Stored::Text(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Null | ValueRef::Blob(_) => Stored::Text(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("history.db");
        (d, p)
    }

    #[test]
    fn samples_come_back_in_time_order_with_their_classes() {
        let (_d, p) = temp();
        let (mut s, opened) = Store::open(&p).unwrap();
        assert_eq!(opened, Opened::Ready);
        let a = s.series_id("pump1", "pressure").unwrap();
        let b = s.series_id("pump1", "state").unwrap();
        assert_eq!(s.series_id("pump1", "pressure").unwrap(), a);
        let mut batch = vec![
            Sample {
                series: a,
                t: 3_000,
                value: Stored::Real(1.5),
            },
            Sample {
                series: b,
                t: 1_000,
                value: Stored::Text("on".into()),
            },
            Sample {
                series: a,
                t: 1_000,
                value: Stored::Int(7),
            },
            Sample {
                series: a,
                t: 2_000,
                value: Stored::Real(-0.25),
            },
        ];
        s.write(&mut batch).unwrap();
        let r = Reader::open(&p).unwrap().unwrap();
        assert_eq!(
            r.range(a, 0, 10_000, 100).unwrap(),
            vec![
                (1_000, Stored::Int(7)),
                (2_000, Stored::Real(-0.25)),
                (3_000, Stored::Real(1.5))
            ]
        );
        assert_eq!(r.range(a, 1_500, 2_500, 100).unwrap().len(), 1);
        assert_eq!(r.range(a, 0, 10_000, 2).unwrap().len(), 2);
        assert_eq!(
            r.range(b, 0, 10_000, 9).unwrap(),
            vec![(1_000, Stored::Text("on".into()))]
        );
        assert_eq!(r.series_id("pump1", "state").unwrap(), Some(b));
        assert_eq!(r.series_id("pump1", "nope").unwrap(), None);
        assert_eq!(r.fields_of("pump1").unwrap().len(), 2);
    }

    #[test]
    fn periods_aggregate_numbers_from_their_start() {
        let (_d, p) = temp();
        let (mut s, _) = Store::open(&p).unwrap();
        let a = s.series_id("d", "f").unwrap();
        let minute = 60_000;
        let mut batch: Vec<Sample> = (0..180)
            .map(|i| Sample {
                series: a,
                t: 1_800_000_020_000 + i * 1_000,
                value: Stored::Real(i as f64),
            })
            .collect();
        batch.push(Sample {
            series: a,
            t: 1_800_000_020_500,
            value: Stored::Text("x".into()),
        });
        s.write(&mut batch).unwrap();
        let r = Reader::open(&p).unwrap().unwrap();
        let per_minute = |t: i64| t - t.rem_euclid(minute);
        let agg = r.aggregate(a, 0, i64::MAX, per_minute).unwrap();
        assert_eq!(agg.len(), 4);
        assert_eq!(agg[3].count, 20);
        // The first sample is 20 s past a minute's start (1_800_000_000_000 is one).
        let start = 1_800_000_000_000;
        assert_eq!(agg[0].start, start);
        assert_eq!((agg[0].count, agg[0].min, agg[0].max), (40, 0.0, 39.0));
        assert_eq!(agg[0].mean, 19.5);
        assert_eq!(
            (agg[1].start, agg[1].count, agg[1].mean),
            (start + minute, 60, 69.5)
        );
        // Before the epoch, periods still start on the period.
        let b = s.series_id("d", "old").unwrap();
        s.write(&mut [Sample {
            series: b,
            t: -1,
            value: Stored::Int(1),
        }])
        .unwrap();
        assert_eq!(
            r.aggregate(b, i64::MIN, i64::MAX, per_minute).unwrap()[0].start,
            -minute
        );
        // Several series merged in time order.
        let mut seen = vec![];
        r.merged(&[a, b], i64::MIN, 1_800_000_022_000, |k, t, _| {
            seen.push((k, t));
            true
        })
        .unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0], (1, -1));
        assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "{seen:?}");
    }

    #[test]
    fn expiry_and_the_oldest_first() {
        let (_d, p) = temp();
        let (mut s, _) = Store::open(&p).unwrap();
        let a = s.series_id("d", "a").unwrap();
        let b = s.series_id("d", "b").unwrap();
        let mut batch: Vec<Sample> = (0..100)
            .flat_map(|i| {
                [
                    Sample {
                        series: a,
                        t: i * 10,
                        value: Stored::Int(i),
                    },
                    Sample {
                        series: b,
                        t: i * 10 + 5,
                        value: Stored::Int(i),
                    },
                ]
            })
            .collect();
        s.write(&mut batch).unwrap();
        assert_eq!(s.expire(a, 500).unwrap(), 50);
        assert_eq!(s.count().unwrap(), 150);
        assert_eq!(s.time_span().unwrap(), Some((5, 995)));
        // Everything before 300, whatever the series.
        assert_eq!(s.drop_before(300).unwrap(), 30);
        let r = Reader::open(&p).unwrap().unwrap();
        assert_eq!(r.range(b, 0, i64::MAX, 1).unwrap()[0].0, 305);
        assert_eq!(r.range(a, 0, i64::MAX, 1).unwrap()[0].0, 500);
        assert_eq!(s.time_span().unwrap(), Some((305, 995)));
    }

    #[test]
    fn a_file_that_is_not_a_store_is_moved_aside() {
        let (d, p) = temp();
        std::fs::write(&p, b"this is not a database, it is an SD card's bad day").unwrap();
        let (mut s, opened) = Store::open(&p).unwrap();
        let Opened::MovedAside { to, reason } = opened else {
            panic!("{opened:?}")
        };
        assert!(to.starts_with(d.path()) && to.exists(), "{to:?}");
        assert!(!reason.is_empty());
        let a = s.series_id("d", "f").unwrap();
        s.write(&mut [Sample {
            series: a,
            t: 1,
            value: Stored::Int(1),
        }])
        .unwrap();
        drop(s);
        // A store of another version is not read as ours either.
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let (_s, opened) = Store::open(&p).unwrap();
        assert!(
            matches!(opened, Opened::MovedAside { ref reason, .. } if reason.contains("99")),
            "{opened:?}"
        );
    }

    #[test]
    fn a_store_that_cannot_be_written_now_is_not_moved_aside() {
        let (d, p) = temp();
        let (mut s, _) = Store::open(&p).unwrap();
        let a = s.series_id("d", "f").unwrap();
        s.write(&mut [Sample {
            series: a,
            t: 1,
            value: Stored::Int(1),
        }])
        .unwrap();
        drop(s);
        // Another connection holds the write lock, as a full disk or a second writer
        // refuses writes: a store of ours opens (reading only) and keeps its samples.
        let other = Connection::open(&p).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let t0 = std::time::Instant::now();
        let (s, opened) = Store::open(&p).unwrap();
        assert_eq!(opened, Opened::Ready);
        assert!(t0.elapsed() < Duration::from_secs(2), "waited for the lock");
        assert_eq!(s.count().unwrap(), 1);
        let aside: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("unusable"))
            .collect();
        assert!(aside.is_empty(), "{aside:?}");
        other.execute_batch("ROLLBACK").unwrap();
    }

    #[test]
    fn a_full_store_refuses_a_batch_whole_and_takes_it_later() {
        let (_d, p) = temp();
        let (mut s, _) = Store::open(&p).unwrap();
        let a = s.series_id("d", "f").unwrap();
        let batch = |from: i64| -> Vec<Sample> {
            (from..from + 10_000)
                .map(|t| Sample {
                    series: a,
                    t,
                    value: Stored::Real(t as f64),
                })
                .collect()
        };
        s.write(&mut batch(0)).unwrap();
        // SQLite says SQLITE_FULL past max_page_count, as it does on ENOSPC.
        let pages: i64 = s
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        s.conn
            .pragma_update(None, "max_page_count", pages + 2)
            .unwrap();
        let e = s.write(&mut batch(10_000)).unwrap_err();
        assert!(
            matches!(e, StoreError::Full(_)) && e.is_transient(),
            "{e:?}"
        );
        assert_eq!(s.count().unwrap(), 10_000, "all or nothing");
        s.conn
            .pragma_update(None, "max_page_count", 1 << 30)
            .unwrap();
        s.write(&mut batch(10_000)).unwrap();
        assert_eq!(s.count().unwrap(), 20_000);
    }

    #[test]
    fn a_reader_sees_commits_while_the_writer_holds_its_connection() {
        let (_d, p) = temp();
        let (mut s, _) = Store::open(&p).unwrap();
        let a = s.series_id("d", "f").unwrap();
        let r = Reader::open(&p).unwrap().unwrap();
        for i in 0..3 {
            s.write(&mut [Sample {
                series: a,
                t: i,
                value: Stored::Int(i),
            }])
            .unwrap();
            assert_eq!(r.range(a, 0, 10, 10).unwrap().len() as i64, i + 1);
        }
        assert!(s.used_bytes().unwrap() > 0);
        s.checkpoint().unwrap();
        assert_eq!(std::fs::metadata(with_suffix(&p, "-wal")).unwrap().len(), 0);
    }

    #[test]
    fn time_conversions_round_trip() {
        for ms in [0, 1, 1_800_000_000_123, -5] {
            assert_eq!(millis(from_millis(ms)), ms);
        }
    }
}
