//! The sample store: one SQLite database in the state directory.
//!
//! Layout: `series` names each (device, field) pair once; `samples` is a `WITHOUT ROWID`
//! table keyed by (series, time in ms since the Unix epoch), so a range of one field is
//! one contiguous stretch of the B-tree, and a sample costs about 25 bytes on disk
//! (measured: `bash tests/bench/run_history.sh`). Values keep their SQLite storage
//! class: integers (bools, counters, times in ms), reals, text.
//!
//! Writes come in batches, one transaction each, appended to `recent` (a rowid table in
//! arrival order, without an index: one would double a commit's CPU): a commit writes
//! about as many pages as its samples fill. Inserted into `samples` directly, each commit would rewrite the last page of
//! every series it holds — a page (4 KiB, twice: WAL and checkpoint) per series per
//! commit, several kB per sample for fields read once a second. `recent` is folded into
//! `samples` in bulk ([`Store::fold`]: sorted, one pass over the series' last pages) once
//! it holds [`FOLD_ROWS`] samples, every minute, and at a clean stop; readers read both.
//! WAL with `synchronous = NORMAL`: a process crash loses nothing committed; a power cut
//! loses at most the last commits, and the database stays whole.
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
/// The schema version (`PRAGMA user_version`). Version 1 had no `recent`: it is
/// brought to 2 when the writer opens it.
const SCHEMA_VERSION: i32 = 2;

/// `recent` is folded into `samples` once it holds this many samples: the fold's sort
/// and the readers' pass over `recent` stay small (tens of MB, tens of ms).
pub const FOLD_ROWS: u64 = 1_000_000;

/// Samples inserted by one statement: a statement per sample would cost half again
/// as much CPU.
const ROWS_PER_INSERT: usize = 64;

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
CREATE TABLE IF NOT EXISTS recent(
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    v ANY
) STRICT;
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
    /// Samples in `recent`, not yet folded.
    unfolded: u64,
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

/// What an opened database is, when it is ours or may become ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A store of this version.
    Ours,
    /// A store of version 1 (no `recent`).
    Version1,
    /// A new, empty database.
    New,
}

/// What an opened database is, or why it is not ours.
fn check_ours(conn: &Connection) -> Result<Found, OpenFailure> {
    let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    match (app, version) {
        (APPLICATION_ID, SCHEMA_VERSION) => Ok(Found::Ours),
        (APPLICATION_ID, 1) => Ok(Found::Version1),
        (0, 0) if tables == 0 => Ok(Found::New),
        (APPLICATION_ID, v) => Err(OpenFailure::Unusable(format!(
            "schema version {v}, this gateway reads version {SCHEMA_VERSION}"
        ))),
        (a, _) => Err(OpenFailure::Unusable(format!(
            "not a fieldgate history (application id {a:#x})"
        ))),
    }
}

/// Opens the store at `path`, making it if it is new (or bringing a version 1 store to
/// this version). A store of this version is only read here: a gateway restarted on a
/// full disk, or beside a process holding the write lock, must find its history where
/// it was rather than judge the file unusable.
fn open_ours(path: &Path) -> Result<Connection, OpenFailure> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    if check_ours(&conn)? != Found::Ours {
        // One transaction: a crash half-way leaves the database as it was, not tables
        // without our application id (which would read as another program's).
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; \
             PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
    }
    Ok(conn)
}

/// Samples waiting in `recent` (bounded by [`FOLD_ROWS`] and a minute's worth).
fn unfolded(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM recent", [], |r| r.get(0))?;
    Ok(n as u64)
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
    /// store's size: nothing is scanned but `recent` (at most [`FOLD_ROWS`] samples),
    /// and a store of this version is not written.
    pub fn open(path: &Path) -> Result<(Store, Opened), StoreError> {
        match open_ours(path) {
            Ok(conn) => Ok((
                Store {
                    unfolded: unfolded(&conn)?,
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
                        unfolded: 0,
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

    /// Stores `batch` in one transaction, into `recent` (a second sample of a series at
    /// the same millisecond replaces the first, the later in `batch` or a later batch).
    /// All or nothing.
    pub fn write(&mut self, batch: &[Sample]) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO recent(series, t, v) VALUES ";
        fn bind(st: &mut rusqlite::Statement<'_>, at: usize, s: &Sample) -> rusqlite::Result<()> {
            st.raw_bind_parameter(at, s.series)?;
            st.raw_bind_parameter(at + 1, s.t)?;
            match &s.value {
                Stored::Int(v) => st.raw_bind_parameter(at + 2, v),
                Stored::Real(v) => st.raw_bind_parameter(at + 2, v),
                Stored::Text(v) => st.raw_bind_parameter(at + 2, v),
            }
        }
        let tx = self.conn.transaction()?;
        {
            let many = format!("{SQL}{}", vec!["(?,?,?)"; ROWS_PER_INSERT].join(","));
            let mut insert_many = tx.prepare_cached(&many)?;
            let mut insert_one = tx.prepare_cached(&format!("{SQL}(?,?,?)"))?;
            let mut chunks = batch.chunks_exact(ROWS_PER_INSERT);
            for chunk in chunks.by_ref() {
                for (j, s) in chunk.iter().enumerate() {
                    bind(&mut insert_many, 3 * j + 1, s)?;
                }
                insert_many.raw_execute()?;
            }
            for s in chunks.remainder() {
                bind(&mut insert_one, 1, s)?;
                insert_one.raw_execute()?;
            }
        }
        tx.commit()?;
        self.unfolded += batch.len() as u64;
        Ok(())
    }

    /// Samples written and not yet folded into `samples`.
    pub fn unfolded(&self) -> u64 {
        self.unfolded
    }

    /// Moves what `recent` holds into `samples`, in one transaction, sorted by (series,
    /// time): each series' last page is written once for all of them. How many moved.
    pub fn fold(&mut self) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "INSERT OR REPLACE INTO samples(series, t, v) \
             SELECT series, t, v FROM recent ORDER BY series, t, rowid",
            [],
        )?;
        tx.execute("DELETE FROM recent", [])?;
        tx.commit()?;
        self.unfolded = 0;
        Ok(n as u64)
    }

    /// Deletes the folded samples of `series` older than `before` (ms); how many. Fold
    /// first: `recent` is not looked at (a pass over it per series would cost more than
    /// the fold).
    pub fn expire(&mut self, series: i64, before: i64) -> Result<u64, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM samples WHERE series = ?1 AND t < ?2")?
            .execute(params![series, before])?;
        Ok(n as u64)
    }

    /// The time of the oldest and the newest sample of the whole store, if any. One
    /// look-up per series (the key is (series, time)), and a pass over `recent`: no
    /// index on time alone, which would cost a third more bytes per sample.
    pub fn time_span(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT min(lo), max(hi) FROM (SELECT \
               (SELECT t FROM samples WHERE series = s.id ORDER BY t LIMIT 1) AS lo, \
               (SELECT t FROM samples WHERE series = s.id ORDER BY t DESC LIMIT 1) AS hi \
             FROM series AS s \
             UNION ALL SELECT min(t), max(t) FROM recent)",
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
            n += tx
                .prepare_cached("DELETE FROM recent WHERE t < ?1")?
                .execute(params![cutoff])? as u64;
        }
        tx.commit()?;
        self.unfolded = unfolded(&self.conn)?;
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

    /// How many samples the store holds (counts the tables: for tests and tools).
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM recent)",
            [],
            |r| r.get(0),
        )?;
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
    /// Whether the store has `recent` (a version 1 store not yet opened by a writer of
    /// this version has not).
    recent: bool,
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
        let recent = match check_ours(&conn) {
            Ok(found) => found != Found::Version1,
            Err(OpenFailure::Unusable(reason)) => return Err(StoreError::Corrupt(reason)),
            Err(OpenFailure::Store(e)) => return Err(e),
        };
        Ok(Some(Reader { conn, recent }))
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
        let mut out = Vec::new();
        if limit > 0 {
            self.merged(&[series], from, to, |_, t, v| {
                out.push((t, v));
                out.len() < limit
            })?;
        }
        Ok(out)
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
        // One snapshot for every statement: a fold committed between two of them would
        // show its samples twice, or not at all.
        self.conn.execute_batch("BEGIN")?;
        let r = self.merged_in(series, from, to, &mut f);
        let end = self.conn.execute_batch("COMMIT");
        let n = r?;
        end?;
        Ok(n)
    }

    fn merged_in(
        &self,
        series: &[i64],
        from: i64,
        to: i64,
        f: &mut impl FnMut(usize, i64, Stored) -> bool,
    ) -> Result<u64, StoreError> {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashMap};
        const FOLDED: &str =
            "SELECT t, v FROM samples WHERE series = ?1 AND t >= ?2 AND t <= ?3 ORDER BY t";
        // One pass over `recent` (bounded by FOLD_ROWS) for all the series; of two
        // samples of one instant, the later written first (it is the one a fold keeps).
        const RECENT: &str = "SELECT series, t, v FROM recent WHERE t >= ?1 AND t <= ?2 \
             AND series IN (SELECT value FROM json_each(?3)) ORDER BY t, rowid DESC";
        let mut stmts = Vec::with_capacity(series.len() + 1);
        for _ in series {
            stmts.push(self.conn.prepare(FOLDED)?);
        }
        if self.recent {
            stmts.push(self.conn.prepare(RECENT)?);
        }
        let ids = serde_json::to_string(series).unwrap_or_else(|_| "[]".into());
        let mut rows = Vec::with_capacity(stmts.len());
        for (k, st) in stmts.iter_mut().enumerate() {
            rows.push(match series.get(k) {
                Some(id) => st.query(params![id, from, to])?,
                None => st.query(params![from, to, ids])?,
            });
        }
        // Streams 0..series.len() are the folded samples of each series; the last, if
        // any, `recent`, whose samples carry their series.
        let index: HashMap<i64, usize> =
            series.iter().enumerate().map(|(k, id)| (*id, k)).collect();
        let recent = series.len();
        type Head = Option<(i64, usize, Stored)>;
        let next = |rows: &mut Vec<rusqlite::Rows<'_>>, s: usize| -> Result<Head, StoreError> {
            let Some(r) = rows[s].next()? else {
                return Ok(None);
            };
            Ok(Some(if s == recent {
                let id: i64 = r.get(0)?;
                (r.get(1)?, index[&id], stored_of(r.get_ref(2)?))
            } else {
                (r.get(0)?, s, stored_of(r.get_ref(1)?))
            }))
        };
        // Ordered by time, series, then `recent` before `samples`: of a sample in both
        // (written again at the same millisecond after a fold), the newer comes first.
        let key = |t: i64, k: usize, s: usize| Reverse((t, k, u8::from(s != recent), s));
        let mut heap = BinaryHeap::new();
        let mut heads: Vec<Option<Stored>> = vec![None; rows.len()];
        for (s, head) in heads.iter_mut().enumerate() {
            if let Some((t, k, v)) = next(&mut rows, s)? {
                *head = Some(v);
                heap.push(key(t, k, s));
            }
        }
        let mut last: Vec<Option<i64>> = vec![None; series.len()];
        let mut n = 0;
        while let Some(Reverse((t, k, _, s))) = heap.pop() {
            let v = heads[s].take().expect("a head for each entry");
            if let Some((t, k, v)) = next(&mut rows, s)? {
                heads[s] = Some(v);
                heap.push(key(t, k, s));
            }
            if last[k] == Some(t) {
                continue; // the same instant again: the newer went first
            }
            last[k] = Some(t);
            n += 1;
            if !f(k, t, v) {
                break;
            }
        }
        Ok(n)
    }

    /// Mean, minimum and maximum of the numeric samples of each of `series` in
    /// `from..=to`, per period: `start_of` maps a time to its period's start
    /// (non-decreasing). Periods without samples are left out. One pass for all the
    /// series (over `recent` too).
    pub fn aggregate(
        &self,
        series: &[i64],
        from: i64,
        to: i64,
        start_of: impl Fn(i64) -> i64,
    ) -> Result<Vec<Vec<Aggregate>>, StoreError> {
        let mut out: Vec<Vec<Aggregate>> = vec![Vec::new(); series.len()];
        let mut sums = vec![0.0; series.len()];
        self.merged(series, from, to, |k, t, v| {
            let x = match v {
                Stored::Int(i) => i as f64,
                Stored::Real(f) => f,
                Stored::Text(_) => return true,
            };
            let p = start_of(t);
            let sum = &mut sums[k];
            match out[k].last_mut() {
                Some(a) if a.start == p => {
                    *sum += x;
                    a.count += 1;
                    a.min = a.min.min(x);
                    a.max = a.max.max(x);
                    a.mean = *sum / a.count as f64;
                }
                _ => {
                    *sum = x;
                    out[k].push(Aggregate {
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
        let batch = vec![
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
        s.write(&batch).unwrap();
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
        s.write(&batch).unwrap();
        let r = Reader::open(&p).unwrap().unwrap();
        let per_minute = |t: i64| t - t.rem_euclid(minute);
        let agg = r
            .aggregate(&[a], 0, i64::MAX, per_minute)
            .unwrap()
            .remove(0);
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
        s.write(&[Sample {
            series: b,
            t: -1,
            value: Stored::Int(1),
        }])
        .unwrap();
        assert_eq!(
            r.aggregate(&[b], i64::MIN, i64::MAX, per_minute).unwrap()[0][0].start,
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
        let batch: Vec<Sample> = (0..100)
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
        s.write(&batch[..100]).unwrap();
        assert_eq!(s.fold().unwrap(), 100);
        s.write(&batch[100..]).unwrap();
        // Retention applies to what is folded.
        assert_eq!(s.expire(a, 700).unwrap(), 50);
        s.fold().unwrap();
        assert_eq!(s.expire(a, 700).unwrap(), 20);
        assert_eq!(s.count().unwrap(), 130);
        assert_eq!(s.time_span().unwrap(), Some((5, 995)));
        // Everything before 300, whatever the series, folded or not.
        s.write(&[Sample {
            series: b,
            t: 1,
            value: Stored::Int(0),
        }])
        .unwrap();
        assert_eq!(s.drop_before(300).unwrap(), 31);
        assert_eq!(s.unfolded(), 0);
        let r = Reader::open(&p).unwrap().unwrap();
        assert_eq!(r.range(b, 0, i64::MAX, 1).unwrap()[0].0, 305);
        assert_eq!(r.range(a, 0, i64::MAX, 1).unwrap()[0].0, 700);
        assert_eq!(s.time_span().unwrap(), Some((305, 995)));
    }

    #[test]
    fn folded_or_not_samples_read_alike_and_the_later_of_one_instant_wins() {
        let (_d, p) = temp();
        let (mut s, _) = Store::open(&p).unwrap();
        let a = s.series_id("d", "a").unwrap();
        let b = s.series_id("d", "b").unwrap();
        let sample = |series, t, v| Sample {
            series,
            t,
            value: Stored::Int(v),
        };
        s.write(&[sample(a, 10, 1), sample(b, 10, 2), sample(a, 30, 3)])
            .unwrap();
        s.fold().unwrap();
        // Written again at 30 (a second read in the same millisecond), and more.
        s.write(&[sample(a, 30, 4), sample(a, 20, 5), sample(b, 40, 6)])
            .unwrap();
        s.write(&[sample(a, 20, 7)]).unwrap();
        assert_eq!((s.unfolded(), s.count().unwrap()), (4, 7));
        let r = Reader::open(&p).unwrap().unwrap();
        let read = |r: &Reader| {
            let mut got = vec![];
            r.merged(&[a, b], 0, 100, |k, t, v| {
                got.push((k, t, v));
                true
            })
            .unwrap();
            got
        };
        let want = vec![
            (0, 10, Stored::Int(1)),
            (1, 10, Stored::Int(2)),
            (0, 20, Stored::Int(7)),
            (0, 30, Stored::Int(4)),
            (1, 40, Stored::Int(6)),
        ];
        assert_eq!(read(&r), want);
        assert_eq!(s.fold().unwrap(), 4);
        assert_eq!(read(&r), want);
        assert_eq!(s.count().unwrap(), 5);
        assert_eq!(r.range(a, 15, 100, 1).unwrap(), vec![(20, Stored::Int(7))]);
    }

    #[test]
    fn a_version_1_store_is_brought_to_version_2_with_its_samples() {
        let (_d, p) = temp();
        let c = Connection::open(&p).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; \
             CREATE TABLE series(id INTEGER PRIMARY KEY, device TEXT NOT NULL, \
                field TEXT NOT NULL, UNIQUE(device, field)) STRICT; \
             CREATE TABLE samples(series INTEGER NOT NULL, t INTEGER NOT NULL, v ANY, \
                PRIMARY KEY(series, t)) WITHOUT ROWID, STRICT; \
             INSERT INTO series VALUES (1, 'd', 'f'); INSERT INTO samples VALUES (1, 5, 2.5); \
             PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;"
        ))
        .unwrap();
        drop(c);
        // Read as it is (nothing unfolded), then opened by a writer.
        let r = Reader::open(&p).unwrap().unwrap();
        assert_eq!(r.range(1, 0, 10, 10).unwrap(), vec![(5, Stored::Real(2.5))]);
        let (mut s, opened) = Store::open(&p).unwrap();
        assert_eq!(opened, Opened::Ready);
        s.write(&[Sample {
            series: 1,
            t: 6,
            value: Stored::Int(3),
        }])
        .unwrap();
        let r = Reader::open(&p).unwrap().unwrap();
        assert_eq!(r.range(1, 0, 10, 10).unwrap().len(), 2);
        let version: i32 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
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
        s.write(&[Sample {
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
        s.write(&[Sample {
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
        s.write(&batch(0)).unwrap();
        // SQLite says SQLITE_FULL past max_page_count, as it does on ENOSPC.
        let pages: i64 = s
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        s.conn
            .pragma_update(None, "max_page_count", pages + 2)
            .unwrap();
        let e = s.write(&batch(10_000)).unwrap_err();
        assert!(
            matches!(e, StoreError::Full(_)) && e.is_transient(),
            "{e:?}"
        );
        assert_eq!(s.count().unwrap(), 10_000, "all or nothing");
        s.conn
            .pragma_update(None, "max_page_count", 1 << 30)
            .unwrap();
        s.write(&batch(10_000)).unwrap();
        assert_eq!(s.count().unwrap(), 20_000);
    }

    #[test]
    fn a_reader_sees_commits_while_the_writer_holds_its_connection() {
        let (_d, p) = temp();
        let (mut s, _) = Store::open(&p).unwrap();
        let a = s.series_id("d", "f").unwrap();
        let r = Reader::open(&p).unwrap().unwrap();
        for i in 0..3 {
            s.write(&[Sample {
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
