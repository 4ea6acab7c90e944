//! Counts of what each user holds (readouts in progress, writes in flight), keyed by bare
//! JID: a user's resources share one budget, since anyone can open more resources.

use std::collections::HashMap;

/// The bare part of a full JID as written (`user@host/res` → `user@host`).
pub(super) fn bare_of(full: &str) -> &str {
    full.split_once('/').map_or(full, |(b, _)| b)
}

/// How many of something each bare JID holds; a user holding none takes no memory.
#[derive(Debug, Default)]
pub(super) struct PerUser(HashMap<String, usize>);

impl PerUser {
    /// What the user of `jid` (full or bare) holds.
    pub(super) fn held(&self, jid: &str) -> usize {
        self.0.get(bare_of(jid)).copied().unwrap_or(0)
    }

    /// One more for the user of `jid`.
    pub(super) fn take(&mut self, jid: &str) {
        *self.0.entry(bare_of(jid).to_owned()).or_default() += 1;
    }

    /// One fewer for the user of `jid`.
    pub(super) fn give_back(&mut self, jid: &str) {
        let bare = bare_of(jid);
        if let Some(n) = self.0.get_mut(bare) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.0.remove(bare);
            }
        }
    }

    /// Users holding anything.
    #[cfg(test)]
    pub(super) fn users(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_share_one_budget_and_empty_users_are_forgotten() {
        let mut p = PerUser::default();
        p.take("a@x/one");
        p.take("a@x/two");
        p.take("b@x/one");
        assert_eq!(p.held("a@x"), 2);
        assert_eq!(p.held("a@x/three"), 2);
        p.give_back("a@x/one");
        p.give_back("a@x/two");
        p.give_back("a@x/two");
        assert_eq!(p.held("a@x"), 0);
        assert_eq!(p.users(), 1);
    }
}
