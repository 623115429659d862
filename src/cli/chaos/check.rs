//! The history checker of a chaos run. From what the clients saw and what the cluster
//! holds at the end it counts, per promise:
//! - every acknowledged client_id is in the final history exactly once, at its acked seq;
//! - every room's history is gapless (seqs 1..=N);
//! - every (room, seq) → client_id a client was shown agrees with the final history;
//! - no client was shown a message twice or out of order, or skipped one;
//! - owner and replica hold the same log (what lies past the history in the owner's
//!   log is an unacknowledged tail, counted apart);
//! - the controls hold the same catalog.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::clients::Seen;
use crate::protocol::StoredMessage;

/// What the checks found: all zero is a pass.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Findings {
    /// Acknowledged client_ids missing from the final history or at another seq.
    pub lost: usize,
    /// Acknowledged client_ids that appear more than once.
    pub duplicated: usize,
    /// A retry acknowledged at another seq than the first ack.
    pub ack_changed: usize,
    /// Missing seqs in a room's history.
    pub gaps: usize,
    /// (room, seq) where a client was shown another message than the history holds.
    pub disagreements: usize,
    /// Deliveries at or below what a client had shown already.
    pub repeated: usize,
    /// Deliveries that skipped a seq.
    pub skipped: usize,
    /// Rooms whose replica's log differs from the history.
    pub replica_mismatches: usize,
    /// Rooms whose owner's log differs from the history below its end.
    pub owner_mismatches: usize,
    /// Controls whose routing table differs from the first one's (or did not answer).
    pub catalog_mismatches: usize,
    /// Rounds after which some room did not take sends within the bound.
    pub slow_recoveries: usize,
    /// Rooms whose history no control could serve at the end (checked as empty).
    pub unreadable_histories: usize,
}

impl Findings {
    /// Whether every count is zero (read through the serialised form, so a count added
    /// later cannot be forgotten here).
    pub fn ok(&self) -> bool {
        match serde_json::to_value(self) {
            Ok(Value::Object(counts)) => counts.values().all(|count| count.as_u64() == Some(0)),
            _ => false,
        }
    }
}

/// A room's final history (seq → client_id, ascending) and its logs on disk.
pub struct RoomState {
    pub history: BTreeMap<u64, String>,
    /// The owner's log on disk, (seq, client_id) ascending.
    pub owner_log: Vec<(u64, String)>,
    pub replica_log: Vec<(u64, String)>,
}

/// Checks the clients' view against the rooms' final state.
pub fn histories(seen: &Seen, rooms: &BTreeMap<u64, RoomState>) -> Findings {
    let mut findings = Findings {
        ack_changed: seen.ack_changed,
        repeated: seen.repeated,
        skipped: seen.skipped,
        ..Findings::default()
    };
    let mut places: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for (room, state) in rooms {
        for (seq, client_id) in &state.history {
            places.entry(client_id.as_str()).or_default().push((*room, *seq));
        }
        let last = state.history.keys().next_back().copied().unwrap_or(0);
        findings.gaps += (last as usize).saturating_sub(state.history.len());
        let history: Vec<(u64, String)> = state.history.iter().map(|(seq, id)| (*seq, id.clone())).collect();
        if state.replica_log != history {
            findings.replica_mismatches += 1;
        }
        if state.owner_log.get(..history.len()) != Some(&history[..]) {
            findings.owner_mismatches += 1;
        }
    }
    for (client_id, (room, seq)) in &seen.acked {
        match places.get(client_id.as_str()).map(Vec::as_slice) {
            Some([only]) if *only == (*room, *seq) => {}
            Some(found) if found.len() > 1 => findings.duplicated += 1,
            _ => findings.lost += 1,
        }
    }
    for ((room, seq), client_ids) in &seen.delivered {
        let held = rooms.get(room).and_then(|state| state.history.get(seq));
        if client_ids.len() != 1 || client_ids.iter().next() != held {
            findings.disagreements += 1;
        }
    }
    findings
}

/// Counts the routing tables that differ from the first one (or are missing).
pub fn catalogs(tables: &[Option<Value>]) -> usize {
    let first = tables.first().cloned().flatten();
    tables.iter().filter(|table| first.is_none() || **table != first).count()
}

/// (seq, client_id) of stored messages.
pub fn log_entries(messages: &[StoredMessage]) -> Vec<(u64, String)> {
    messages.iter().map(|m| (m.seq, m.client_id.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(history: &[(u64, &str)]) -> RoomState {
        let log: Vec<(u64, String)> = history.iter().map(|(seq, id)| (*seq, id.to_string())).collect();
        RoomState { history: log.iter().cloned().collect(), owner_log: log.clone(), replica_log: log }
    }

    #[test]
    fn a_clean_run_passes_and_each_kind_of_damage_is_counted() {
        let mut seen = Seen::default();
        seen.acked.insert("a".into(), (1, 1));
        seen.acked.insert("b".into(), (1, 2));
        seen.delivered.entry((1, 1)).or_default().insert("a".into());
        let mut rooms = BTreeMap::from([(1, state(&[(1, "a"), (2, "b")]))]);
        assert!(histories(&seen, &rooms).ok());

        seen.acked.insert("c".into(), (1, 3));
        seen.delivered.entry((1, 2)).or_default().insert("x".into());
        rooms.get_mut(&1).unwrap().history.insert(4, "b".into());
        rooms.get_mut(&1).unwrap().replica_log.pop();
        let found = histories(&seen, &rooms);
        assert_eq!((found.lost, found.duplicated, found.gaps), (1, 1, 1), "{found:?}");
        assert_eq!((found.disagreements, found.replica_mismatches, found.owner_mismatches), (1, 1, 1));
        assert!(!found.ok());

        let table = Some(serde_json::json!({"version": 3}));
        assert_eq!(catalogs(&[table.clone(), table.clone(), table]), 0);
        assert_eq!(catalogs(&[Some(serde_json::json!(1)), None, Some(serde_json::json!(2))]), 2);
    }
}
