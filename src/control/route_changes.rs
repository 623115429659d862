//! Which parts of the routing table changed after a given version: the index the leader
//! answers heartbeats with a [`RoutingDelta`](crate::protocol::RoutingDelta) from, instead
//! of the whole table.
//!
//! The state machine records, for every log entry it applies, the rooms and nodes whose
//! route that entry may have changed (from the rows the entry touched: a room, a member of
//! it, its policy or its in-sync mark; a node). Each room and node is kept under the last
//! version that changed it, so the index holds at most one entry per room and node ever
//! seen, and "what changed after v" is a range scan over versions above v. The table's
//! other parts (the connection-token key, the admins) are small and go in every delta.
//!
//! The index lives in memory only. It starts at the applied index the catalog was loaded
//! or installed at ([`RouteChanges::starting_at`]); a node whose version is older than
//! that start gets the whole table, as before.

use std::collections::{BTreeSet, HashMap};

use super::catalog::{ChatNodeId, RoomId, Touched};

/// A part of the routing table that one log entry can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKey {
    Room(RoomId),
    Node(ChatNodeId),
}

impl RouteKey {
    /// The route a touched catalog row belongs to, if it shows in the routing table.
    /// Members count for every room: a public room's moderators are its members.
    pub fn of(row: &Touched) -> Option<Self> {
        match *row {
            Touched::Room(room) | Touched::Member(room, _) | Touched::Policy(room) | Touched::ReplicaInSync(room) => {
                Some(Self::Room(room))
            }
            Touched::Node(node) => Some(Self::Node(node)),
            // The meta row (signing key) and users (the admin) feed the token key and
            // the admins, which every delta carries whole; the rest is not routed.
            Touched::Meta
            | Touched::User(_)
            | Touched::ReadMark(..)
            | Touched::EndedSession(..)
            | Touched::Audit(..) => None,
        }
    }
}

/// The change index of one control member's applied catalog.
#[derive(Debug, Default)]
pub struct RouteChanges {
    /// The version the index starts at: it knows every change after it and none before.
    start: u64,
    /// (version, key) for each key, under the last version that changed it.
    by_version: BTreeSet<(u64, RouteKey)>,
    /// Each key's entry in `by_version`, to move it when the key changes again.
    last_changed: HashMap<RouteKey, u64>,
}

impl RouteChanges {
    /// An empty index for a catalog loaded (or installed from a snapshot) at `version`.
    pub fn starting_at(version: u64) -> Self {
        Self { start: version, ..Self::default() }
    }

    /// Records the routes `rows`, touched by the log entry at `version`, as changed there.
    pub fn record(&mut self, version: u64, rows: &[Touched]) {
        for key in rows.iter().filter_map(RouteKey::of) {
            if let Some(before) = self.last_changed.insert(key, version) {
                self.by_version.remove(&(before, key));
            }
            self.by_version.insert((version, key));
        }
    }

    /// Every route changed after version `since` (each once), or `None` when the index
    /// does not reach back that far (the caller sends the whole table instead).
    pub fn changed_since(&self, since: u64) -> Option<impl Iterator<Item = RouteKey> + '_> {
        (since >= self.start).then(|| {
            let first = (since.saturating_add(1), RouteKey::Room(RoomId::MIN));
            self.by_version.range(first..).map(|(_, key)| *key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_listed_once_under_its_last_change() {
        let mut changes = RouteChanges::starting_at(10);
        changes.record(11, &[Touched::Room(1), Touched::Member(2, 7), Touched::User(3)]);
        changes.record(12, &[Touched::Node(1), Touched::Policy(1)]);
        changes.record(13, &[Touched::Audit(2, 0), Touched::Meta]);
        let since = |v| changes.changed_since(v).map(|keys| keys.collect::<Vec<_>>());
        assert_eq!(since(10), Some(vec![RouteKey::Room(2), RouteKey::Room(1), RouteKey::Node(1)]));
        assert_eq!(since(11), Some(vec![RouteKey::Room(1), RouteKey::Node(1)]));
        assert_eq!(since(12), Some(vec![]), "the audit and the meta row are not routes");
        assert_eq!(since(9), None, "before the index started: the whole table");
    }
}
