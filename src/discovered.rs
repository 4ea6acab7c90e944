//! Devices discovered by an entry that stands for many (an MQTT topic pattern whose
//! wildcard names the device), remembered in the state directory so that they are
//! devices again right after a restart, before their first message, and listed by
//! `fieldgate check`.
//!
//! The file (`discovered.json`) maps each entry's id to its members in the order they
//! were found: `{"zigbee": [{"id": "kitchen", "name": "Kitchen"}]}`. It is rewritten
//! whole, atomically, at most once per [`SAVE_DELAY`] while discoveries arrive: a fleet of
//! ten thousand sensors appearing at once costs a few writes, not ten thousand.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{read_json, write_json, StateError};

const FILE: &str = "discovered.json";

/// How long discoveries are collected before the file is written.
pub const SAVE_DELAY: Duration = Duration::from_secs(1);

/// One discovered member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its device id (JID localpart).
    pub id: String,
    /// What the adapter found it by (a topic segment).
    pub name: String,
}

/// The members of each discovering entry, by entry id.
pub type Discovered = BTreeMap<String, Vec<Member>>;

/// Reads the discovered members from `dir`; none if there is no file. A damaged file is
/// moved aside (the members come back as their devices speak again).
pub fn load(dir: &Path) -> Result<Discovered, StateError> {
    Ok(read_json(dir, FILE, "discovered-device file")?.unwrap_or_default())
}

/// Reads the discovered members from `dir` without changing anything (for `fieldgate
/// check`): a damaged file is reported, not moved.
pub fn peek(dir: &Path) -> Result<Discovered, String> {
    match std::fs::read(dir.join(FILE)) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{FILE}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Discovered::new()),
        Err(e) => Err(format!("{FILE}: {e}")),
    }
}

/// Writes the discovered members to `dir`, atomically and durably.
pub fn save(dir: &Path, d: &Discovered) -> std::io::Result<()> {
    write_json(dir, FILE, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_a_damaged_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let mut d = Discovered::new();
        d.entry("zigbee".into()).or_default().push(Member {
            id: "kitchen".into(),
            name: "Kitchen".into(),
        });
        save(dir.path(), &d).unwrap();
        assert_eq!(load(dir.path()).unwrap(), d);
        std::fs::write(dir.path().join(FILE), b"{\"zigbee\": [").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("discovered.json.corrupt-")
            })
            .count();
        assert_eq!(aside, 1);
    }
}
