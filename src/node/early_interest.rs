//! Interest that reached this node for a room it does not own yet ([`EarlyInterest`]).
//!
//! A node that gets its first subscriber for a new room tells the room's owner node
//! (`MeshRequest::Interest`). That node may not have the room in its routing table yet:
//! routing tables arrive at different times, and the subscriber's node fetched its table
//! on the miss while the owner's comes with its next heartbeat. Such an interest used to
//! be dropped, so the owner fanned out to nobody there until the subscriber's node
//! announced its rooms again at its next heartbeat, up to a second later; the messages in
//! between reached those subscribers only through a gap fetch (quiet-chat deliveries of
//! up to 0.9 s in 12 of 32 runs: docs/BENCHMARKS.md, session 12). Now it is kept here,
//! for a while and for a bounded number of rooms, and handed to the room's owner task
//! when this node starts one. The periodic announcement stays as the backstop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::{NodeId, RoomId};

/// How long an interest waits for its room's owner task here.
pub const KEEP_FOR: Duration = Duration::from_secs(10);
/// Most rooms with waiting interest; a newer one replaces the oldest.
pub const MAX_ROOMS: usize = 4_096;

/// Per room: when interest first came, and each following node's users.
#[derive(Default)]
pub struct EarlyInterest {
    rooms: HashMap<RoomId, (Instant, HashMap<NodeId, Vec<String>>)>,
}

impl EarlyInterest {
    /// Keeps `node`'s interest in `room` (its users; empty means it stopped following),
    /// replacing what that node said before. When [`MAX_ROOMS`] rooms wait, drops interest
    /// older than [`KEEP_FOR`], and then the oldest room's if none was.
    pub fn keep(&mut self, room: RoomId, node: NodeId, users: Vec<String>, now: Instant) {
        if !self.rooms.contains_key(&room) && self.rooms.len() >= MAX_ROOMS {
            // Full: drop what is too old, then (still full) the oldest. Only here, so a
            // keep is O(1) until the map fills (it runs under the owners' lock).
            self.rooms.retain(|_, (since, _)| now.saturating_duration_since(*since) < KEEP_FOR);
        }
        if !self.rooms.contains_key(&room) && self.rooms.len() >= MAX_ROOMS {
            let oldest = self.rooms.iter().min_by_key(|(_, (since, _))| *since).map(|(room, _)| *room);
            if let Some(oldest) = oldest {
                self.rooms.remove(&oldest);
            }
        }
        self.rooms.entry(room).or_insert_with(|| (now, HashMap::new())).1.insert(node, users);
    }

    /// The interest waiting for `room` (for its new owner task), if still fresh.
    pub fn take(&mut self, room: RoomId, now: Instant) -> Vec<(NodeId, Vec<String>)> {
        match self.rooms.remove(&room) {
            Some((since, nodes)) if now.saturating_duration_since(since) < KEEP_FOR => nodes.into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Forgets what `node` said of every room (it restarted: its followers are gone).
    pub fn forget(&mut self, node: NodeId) {
        self.rooms.retain(|_, (_, nodes)| {
            nodes.remove(&node);
            !nodes.is_empty()
        });
    }

    /// Rooms with interest waiting.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_waits_for_its_room_and_the_latest_word_of_each_node_counts() {
        let mut early = EarlyInterest::default();
        let now = Instant::now();
        early.keep(7, 2, vec!["ann".into()], now);
        early.keep(7, 3, vec!["bob".into()], now);
        early.keep(7, 2, vec!["ann".into(), "cy".into()], now);
        let mut taken = early.take(7, now + Duration::from_secs(1));
        taken.sort();
        assert_eq!(taken, vec![(2, vec!["ann".to_string(), "cy".to_string()]), (3, vec!["bob".to_string()])]);
        assert!(early.take(7, now).is_empty(), "taken once");
    }

    #[test]
    fn a_restarted_nodes_interest_is_forgotten_and_the_others_kept() {
        let mut early = EarlyInterest::default();
        let now = Instant::now();
        early.keep(7, 2, vec!["ann".into()], now);
        early.keep(7, 3, vec!["bob".into()], now);
        early.keep(8, 2, vec!["cy".into()], now);
        early.forget(2);
        assert_eq!(early.take(7, now), vec![(3, vec!["bob".to_string()])]);
        assert_eq!(early.len(), 0, "only the restarted node followed room 8");
    }

    #[test]
    fn stale_interest_is_dropped_and_the_rooms_kept_are_bounded() {
        let mut early = EarlyInterest::default();
        let start = Instant::now();
        early.keep(1, 2, vec!["ann".into()], start);
        assert!(early.take(1, start + KEEP_FOR).is_empty(), "too old to hand over");
        for room in 0..(MAX_ROOMS as RoomId + 10) {
            early.keep(1_000 + room, 2, Vec::new(), start + KEEP_FOR + Duration::from_millis(room));
        }
        assert_eq!(early.len(), MAX_ROOMS);
        assert!(early.take(1_000, start + KEEP_FOR).is_empty(), "the oldest rooms made way");
        assert_eq!(early.take(1_000 + MAX_ROOMS as RoomId + 9, start + KEEP_FOR).len(), 1);
        early.keep(1_000 + MAX_ROOMS as RoomId + 9, 2, Vec::new(), start + KEEP_FOR);
        early.keep(1, 2, vec!["ann".into()], start + KEEP_FOR * 3);
        assert_eq!(early.len(), 1, "a keep into a full map drops what expired");
    }
}
