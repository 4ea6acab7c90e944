//! Persistent gateway state: who is subscribed to which device.
//!
//! The server keeps no roster for component JIDs, so the gateway must remember its
//! subscribers itself, across restarts and crashes. A subscription is written to disk
//! (temporary file, fsync, rename, fsync of the directory) *before* `subscribed` is sent,
//! and concurrent changes are committed together, so a burst of a thousand subscriptions
//! costs a few writes rather than a thousand.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    let path = dir.join(FILE);
    let bytes = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Subscribers::new()),
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
        Ok(s) => Ok(s),
        Err(why) => {
            let aside = aside_name(dir);
            tracing::error!(file = %path.display(), error = %why, kept_as = %aside.display(),
                "subscriber file is unusable; moved aside, starting with no subscribers");
            std::fs::rename(&path, &aside).map_err(|source| StateError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(Subscribers::new())
        }
    }
}

/// A name for a damaged subscriber file that no earlier one has taken: a rename over an
/// older copy would destroy it.
fn aside_name(dir: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut aside = dir.join(format!("{FILE}.corrupt-{secs}"));
    let mut n = 1;
    while std::fs::symlink_metadata(&aside).is_ok() {
        aside = dir.join(format!("{FILE}.corrupt-{secs}-{n}"));
        n += 1;
    }
    aside
}

/// Writes `subs` to `dir` atomically and durably.
pub fn save(dir: &Path, subs: &Subscribers) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let json = serde_json::to_vec_pretty(subs).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

/// One commit request: the state to write and what to release once it is on disk (the
/// gateway's replies that promise what the snapshot records; this module does not know
/// what they are).
pub struct Commit<T> {
    /// The full subscriber map after the change.
    pub snapshot: Arc<Subscribers>,
    /// Released to the persister's output once the snapshot is on disk.
    pub then_send: Vec<T>,
}

/// Runs the persister: writes the newest queued snapshot, then releases every queued
/// item to `released`, in order. Ends when `commits` closes, after writing what was
/// queued, or when `released` closes.
pub async fn persister<T: Send + 'static, U: From<T>>(
    dir: PathBuf,
    mut commits: mpsc::Receiver<Commit<T>>,
    released: mpsc::Sender<U>,
) {
    while let Some(first) = commits.recv().await {
        let mut snapshot = first.snapshot;
        let mut replies = first.then_send;
        while let Ok(more) = commits.try_recv() {
            snapshot = more.snapshot;
            replies.extend(more.then_send);
        }
        let d = dir.clone();
        let result = tokio::task::spawn_blocking(move || save(&d, &snapshot)).await;
        match result {
            Ok(Ok(())) => {}
            // The live subscription still works; say loudly that a restart would lose it.
            Ok(Err(e)) => tracing::error!(dir = %dir.display(), error = %e,
                "cannot save subscribers: changes since the last save are lost on restart"),
            Err(e) => tracing::error!(error = %e, "subscriber save task failed"),
        }
        for r in replies {
            if released.send(r.into()).await.is_err() {
                return;
            }
        }
    }
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

    #[tokio::test]
    async fn replies_wait_for_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, crx) = mpsc::channel(4);
        let (otx, mut orx) = mpsc::channel::<String>(4);
        let task = tokio::spawn(persister(dir.path().to_owned(), crx, otx));
        let mut s = Subscribers::new();
        s.entry("d".into()).or_default().insert("a@b".into());
        ctx.send(Commit {
            snapshot: Arc::new(s.clone()),
            then_send: vec!["subscribed"],
        })
        .await
        .unwrap();
        assert_eq!(orx.recv().await.unwrap(), "subscribed");
        // By the time the reply is out, the file holds the subscription.
        assert_eq!(load(dir.path()).unwrap(), s);
        drop(ctx);
        task.await.unwrap();
    }
}
