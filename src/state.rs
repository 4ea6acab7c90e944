//! Persistent gateway state: who is subscribed to which device.
//!
//! The server keeps no roster for component JIDs, so the gateway must remember its
//! subscribers itself, across restarts and crashes. A subscription is written to disk
//! (temporary file, fsync, rename, fsync of the directory) *before* `subscribed` is sent,
//! and a failed write refuses it. Changes are collected for a short window and written
//! together, so a burst of a thousand subscriptions costs one or two writes rather than a
//! thousand. The file format is a JSON map, device id to bare JIDs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

/// Subscribers per device: device id → bare JIDs.
pub type Subscribers = BTreeMap<String, BTreeSet<String>>;

const FILE: &str = "subscribers.json";

/// State errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory cannot be created or written.
    #[error("state directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Loads the subscribers from `dir`, creating the directory if needed and checking that
/// it is writable (better to fail at start than to lose the first subscription).
///
/// A file that does not parse (bad JSON, invalid UTF-8, or a directory in its place) is
/// moved aside, not deleted, and the gateway starts empty.
pub fn load(dir: &Path) -> Result<Subscribers, StateError> {
    let dir_err = |source| StateError::Dir {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(dir_err)?;
    let _ = std::fs::remove_file(&probe);

    match read_json(dir, FILE, "subscriber file")? {
        Some(s) => Ok(s),
        None => Ok(Subscribers::new()),
    }
}

/// Reads the JSON file `file` in `dir`; `None` when there is none. A file that does not
/// parse (bad JSON, invalid UTF-8, or a directory in its place) is moved aside, not
/// deleted, with an error in the log naming `what`, and `None` returned.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
    what: &str,
) -> Result<Option<T>, StateError> {
    let path = dir.join(file);
    let bytes = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
        // A directory or device in its place is corruption too: moving it aside lets the
        // gateway start, and the next save writes a file again.
        Ok(m) if !m.is_file() => Err(format!("not a regular file ({:?})", m.file_type())),
        Ok(_) => match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(source) => return Err(StateError::Read { path, source }),
        },
    };
    // Parsed from bytes: invalid UTF-8 is a parse error like any other damage.
    let parsed = bytes.and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
    match parsed {
        Ok(s) => Ok(Some(s)),
        Err(why) => {
            let aside = aside_name(dir, file);
            tracing::error!(file = %path.display(), error = %why, kept_as = %aside.display(),
                "{what} is unusable; moved aside, starting without it");
            std::fs::rename(&path, &aside).map_err(|source| StateError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(None)
        }
    }
}

/// A name for a damaged subscriber file that no earlier one has taken: a rename over an
/// older copy would destroy it.
fn aside_name(dir: &Path, file: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut aside = dir.join(format!("{file}.corrupt-{secs}"));
    let mut n = 1;
    while std::fs::symlink_metadata(&aside).is_ok() {
        aside = dir.join(format!("{file}.corrupt-{secs}-{n}"));
        n += 1;
    }
    aside
}

/// Writes `subs` to `dir` atomically and durably.
pub fn save(dir: &Path, subs: &Subscribers) -> std::io::Result<()> {
    write_json(dir, FILE, subs)
}

/// Writes `value` as the JSON file `file` in `dir`, atomically and durably (temporary
/// file, fsync, rename, fsync of the directory).
pub(crate) fn write_json<T: serde::Serialize>(
    dir: &Path,
    file: &str,
    value: &T,
) -> std::io::Result<()> {
    let tmp = dir.join(format!("{file}.tmp"));
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(file))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

/// One change to the subscriber file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `jid` subscribed to `device`.
    Add {
        /// The device id.
        device: String,
        /// The subscriber's bare JID.
        jid: String,
    },
    /// `jid` is no longer subscribed to `device`.
    Remove {
        /// The device id.
        device: String,
        /// The subscriber's bare JID.
        jid: String,
    },
}

impl Change {
    fn apply(&self, subs: &mut Subscribers) {
        match self {
            Change::Add { device, jid } => {
                subs.entry(device.clone()).or_default().insert(jid.clone());
            }
            Change::Remove { device, jid } => {
                if let Some(s) = subs.get_mut(device) {
                    s.remove(jid);
                    if s.is_empty() {
                        subs.remove(device);
                    }
                }
            }
        }
    }
}

/// One commit request: changes to store and what to release once they are on disk (the
/// gateway's replies that promise what the changes record; this module does not know
/// what they are).
pub struct Commit<T> {
    /// The changes, all additions or all removals.
    pub changes: Vec<Change>,
    /// Released to the persister's output once the changes are on disk.
    pub then_send: Vec<T>,
}

/// Additions that could not be stored, handed back so that nothing is promised on them:
/// their replies were not released.
pub struct Failed<T> {
    /// The commit, as it was sent.
    pub commit: Commit<T>,
    /// Why the write failed.
    pub error: String,
}

/// How long the persister collects changes after the first before writing them, so a
/// burst of subscriptions costs one write and one fsync. Short: each waiting subscriber
/// gets `subscribed` only after the write.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Most changes written in one batch; more wait for the next write.
pub const BATCH_MAX: usize = 1024;
/// How soon removals whose write failed are written again when nothing else comes.
pub const RETRY: Duration = Duration::from_secs(5);

/// Runs the persister: collects commits for [`BATCH_WINDOW`] (or up to [`BATCH_MAX`]
/// changes), writes the file once with all of them, then releases every waiting commit's
/// items to `released`, in order.
///
/// When the write fails, the file keeps what it held. Commits with additions go back to
/// `failed`, unreleased, for the gateway to refuse them; removals (which must not come
/// back at the next start) are kept and written with the next batch, or after [`RETRY`],
/// and their items are released, since the live unsubscription did happen.
///
/// `stored` is what the file holds at start. Ends when `commits` closes, after writing
/// what was queued, and returns how many writes it made.
pub async fn persister<T: Send + 'static, U: From<T>>(
    dir: PathBuf,
    stored: Subscribers,
    mut commits: mpsc::Receiver<Commit<T>>,
    released: mpsc::Sender<U>,
    failed: mpsc::Sender<Failed<T>>,
) -> u64 {
    let mut writes = 0;
    let mut stored = Arc::new(stored);
    // Removals whose write failed, retried with the next write.
    let mut unsaved: Vec<Change> = Vec::new();
    let mut open = true;
    loop {
        let first = if unsaved.is_empty() {
            match commits.recv().await {
                Some(c) => Some(c),
                None => break,
            }
        } else {
            tokio::select! {
                c = commits.recv() => {
                    open = c.is_some();
                    c
                }
                _ = tokio::time::sleep(RETRY) => None,
            }
        };
        let mut batch: Vec<Commit<T>> = first.into_iter().collect();
        let mut n: usize = batch.iter().map(|c| c.changes.len()).sum();
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while open && !batch.is_empty() && n < BATCH_MAX {
            match tokio::time::timeout_at(deadline, commits.recv()).await {
                Ok(Some(c)) => {
                    n += c.changes.len();
                    batch.push(c);
                }
                Ok(None) => open = false,
                Err(_) => break,
            }
        }

        let mut next = (*stored).clone();
        for ch in unsaved.iter().chain(batch.iter().flat_map(|c| &c.changes)) {
            ch.apply(&mut next);
        }
        let next = Arc::new(next);
        let d = dir.clone();
        let to_write = next.clone();
        writes += 1;
        let result = match tokio::task::spawn_blocking(move || save(&d, &to_write)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("save task failed: {e}")),
        };
        match result {
            Ok(()) => {
                stored = next;
                unsaved.clear();
                for c in batch {
                    for r in c.then_send {
                        if released.send(r.into()).await.is_err() {
                            return writes;
                        }
                    }
                }
            }
            Err(error) => {
                let adds = batch
                    .iter()
                    .filter(|c| c.changes.iter().any(|ch| matches!(ch, Change::Add { .. })))
                    .count();
                tracing::error!(dir = %dir.display(), error = %error, refused = adds,
                    "cannot save subscribers: new subscriptions refused, removals retried");
                for c in batch {
                    if c.changes.iter().any(|ch| matches!(ch, Change::Add { .. })) {
                        if let Err(e) = failed.try_send(Failed {
                            commit: c,
                            error: error.clone(),
                        }) {
                            // The gateway is gone or far behind: the subscriber gets no
                            // answer, which at least promises nothing.
                            tracing::error!(error = %e, "a refused subscription could not be handed back");
                        }
                    } else {
                        unsaved.extend(c.changes);
                        for r in c.then_send {
                            if released.send(r.into()).await.is_err() {
                                return writes;
                            }
                        }
                    }
                }
            }
        }
        if !open {
            // Shutting down: what failed now stays unsaved; the error was logged.
            break;
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let mut s = Subscribers::new();
        s.entry("pump3".into())
            .or_default()
            .insert("alice@example.org".into());
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);

        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let kept = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(kept);
    }

    fn kept_aside(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .count()
    }

    #[test]
    fn invalid_utf8_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"pump\": [\"a\xff@b\"]}").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        assert_eq!(kept_aside(dir.path()), 1);
        assert!(!dir.path().join(FILE).exists());
    }

    #[test]
    fn a_directory_in_place_of_the_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(FILE)).unwrap();
        std::fs::write(dir.path().join(FILE).join("x"), b"kept").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        assert_eq!(kept_aside(dir.path()), 1);
        assert!(!dir.path().join(FILE).exists());
        // and the next save works
        let mut s = Subscribers::new();
        s.entry("d".into()).or_default().insert("a@b".into());
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);
    }

    fn add(device: &str, jid: &str) -> Change {
        Change::Add {
            device: device.into(),
            jid: jid.into(),
        }
    }

    type Started<T> = (
        mpsc::Sender<Commit<T>>,
        mpsc::Receiver<String>,
        mpsc::Receiver<Failed<T>>,
        tokio::task::JoinHandle<u64>,
    );

    /// A persister writing to `dir`, starting from `stored`, with queues of `cap`.
    fn start<T: Send + 'static>(dir: &Path, stored: Subscribers, cap: usize) -> Started<T>
    where
        String: From<T>,
    {
        let (ctx, crx) = mpsc::channel(cap);
        let (otx, orx) = mpsc::channel::<String>(cap);
        let (ftx, frx) = mpsc::channel(cap);
        let task = tokio::spawn(persister(dir.to_owned(), stored, crx, otx, ftx));
        (ctx, orx, frx, task)
    }

    #[tokio::test]
    async fn replies_wait_for_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, mut orx, _frx, task) = start(dir.path(), Subscribers::new(), 4);
        ctx.send(Commit {
            changes: vec![add("d", "a@b")],
            then_send: vec!["subscribed"],
        })
        .await
        .unwrap();
        assert_eq!(orx.recv().await.unwrap(), "subscribed");
        // By the time the reply is out, the file holds the subscription.
        let mut s = Subscribers::new();
        s.entry("d".into()).or_default().insert("a@b".into());
        assert_eq!(load(dir.path()).unwrap(), s);
        drop(ctx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_burst_is_written_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, mut orx, _frx, task) = start(dir.path(), Subscribers::new(), 1024);
        for i in 0..500 {
            ctx.send(Commit {
                changes: vec![add("d", &format!("u{i}@b"))],
                then_send: vec![format!("subscribed {i}")],
            })
            .await
            .unwrap();
        }
        for i in 0..500 {
            assert_eq!(orx.recv().await.unwrap(), format!("subscribed {i}"));
        }
        assert_eq!(load(dir.path()).unwrap()["d"].len(), 500);
        drop(ctx);
        let writes = task.await.unwrap();
        assert!(writes <= 2, "{writes} writes for a burst of 500");
    }

    #[tokio::test]
    async fn a_failed_write_releases_no_subscription_and_keeps_removals() {
        let dir = tempfile::tempdir().unwrap();
        // Where the temporary file should go, a directory: the write fails, also as root.
        let mut stored = Subscribers::new();
        stored.entry("d".into()).or_default().insert("old@b".into());
        save(dir.path(), &stored).unwrap();
        let tmp = dir.path().join(format!("{FILE}.tmp"));
        std::fs::create_dir(&tmp).unwrap();
        let (ctx, mut orx, mut frx, task) = start(dir.path(), stored.clone(), 8);
        ctx.send(Commit {
            changes: vec![add("d", "new@b")],
            then_send: vec!["subscribed".to_owned()],
        })
        .await
        .unwrap();
        let f = tokio::time::timeout(Duration::from_secs(5), frx.recv())
            .await
            .expect("the failed subscription handed back")
            .unwrap();
        assert_eq!(f.commit.changes, vec![add("d", "new@b")]);
        assert_eq!(f.commit.then_send, vec!["subscribed".to_owned()]);
        assert!(orx.try_recv().is_err(), "nothing promised");
        assert_eq!(load(dir.path()).unwrap(), stored);

        // A removal is answered (it happened live) and written once writing works again.
        ctx.send(Commit {
            changes: vec![Change::Remove {
                device: "d".into(),
                jid: "old@b".into(),
            }],
            then_send: vec!["unavailable".to_owned()],
        })
        .await
        .unwrap();
        assert_eq!(orx.recv().await.unwrap(), "unavailable");
        assert_eq!(load(dir.path()).unwrap(), stored);
        std::fs::remove_dir(&tmp).unwrap();
        ctx.send(Commit {
            changes: vec![add("e", "x@b")],
            then_send: vec!["subscribed x".to_owned()],
        })
        .await
        .unwrap();
        assert_eq!(orx.recv().await.unwrap(), "subscribed x");
        let mut want = Subscribers::new();
        want.entry("e".into()).or_default().insert("x@b".into());
        assert_eq!(load(dir.path()).unwrap(), want);
        drop(ctx);
        task.await.unwrap();
    }
}
