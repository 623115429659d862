//! Rebalancing: the part of [`Catalog::apply`] that spreads rooms over the `Up` nodes when
//! an operator asks (`Command::Rebalance`), a bounded number of safe moves at a time.
//!
//! Rooms otherwise move only when a node fails or is drained, so a node that is added,
//! comes back or is undrained gets new rooms only. A rebalance evens out, per `Up` node,
//! the rooms it **owns** and the rooms it **replicates**, each on its own: every node ends
//! within one room of every other in both counts. The two are not added into one load
//! figure because they cost different things (an owner sequences, fsyncs, replicates and
//! fans out every message; a replica only stores them), and one combined number would
//! call a node that owns everything and a node that replicates everything "balanced".
//!
//! Only safe moves, so no acknowledged message can be lost:
//! - **Swap**: a room's owner and its *in-sync* replica trade roles. Such a replica holds
//!   every acknowledged message, so it can sequence on; the old owner becomes the replica.
//! - **Replica move**: a room's replica role goes to another `Up` node (not its owner).
//!   The owner copies the room's whole log to it before it takes another send (a new
//!   epoch restarts the owner, which syncs its replica first).
//! - Ownership never goes to a node that holds no copy. To give a node with few owned
//!   rooms one more, a *preparing* replica move first makes it the replica of a room of
//!   the busiest owner; a later command swaps the two. In between the caller must wait
//!   until the owner has copied the log (`control/http/rebalance.rs` does: a batch starts
//!   only when every `Up` node acted on the routing table and has no owner still syncing
//!   its replica). Within one command a room moves at most once, so a swap never uses a
//!   replica that the same command assigned.
//!
//! Order inside one command: swaps first (each narrows the gap between the busiest and
//! the least busy owner), then preparing moves while owners are still uneven, then, once
//! owners are even, replica moves. A room whose owner or replica is not `Up` (drained,
//! pending, down) is left alone, and no role goes to a node that is not `Up`.
//!
//! Deterministic like all of `apply`: rooms in id order, ties broken by node and room id,
//! no clocks and no randomness, so every member computes the same moves.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::nodes::Loads;
use super::{Catalog, ChatNodeId, CommandOutput, Room, RoomId, RoomMove, Touched};

/// Most moves one command makes, whatever it asks for: keeps one Raft entry, one routing
/// update and the copies it starts small.
pub const MAX_MOVES_PER_COMMAND: u64 = 1_000;

impl Catalog {
    /// How far the `Up` nodes are from even (see [`imbalance`]); 0 when a rebalance would
    /// move nothing because every node is within one room of every other.
    pub fn imbalance(&self) -> u64 {
        imbalance(&Loads::of(self))
    }

    /// `Rebalance`: up to `max_moves` safe moves (see the module docs).
    pub(super) fn rebalance(&mut self, max_moves: u64, touched: &mut Vec<Touched>) -> CommandOutput {
        let budget = max_moves.min(MAX_MOVES_PER_COMMAND) as usize;
        let mut loads = Loads::of(self);
        let mut moves: Vec<RoomMove> = Vec::new();
        let mut moved: BTreeSet<RoomId> = BTreeSet::new();
        while moves.len() < budget {
            let Some((room, owner, replica)) = best_swap(self, &loads, &moved) else { break };
            moves.push(self.move_room(&mut loads, room, owner, replica, touched));
            moved.insert(room);
        }
        if spread(&loads, Role::Owner) >= 2 {
            // Owners are uneven and no swap helps now: prepare swaps for the next command.
            let mut planned: BTreeMap<ChatNodeId, usize> =
                loads.counts().iter().map(|(id, (owned, _))| (*id, *owned)).collect();
            while moves.len() < budget {
                let Some((room, owner, replica)) = next_preparation(&self.rooms, &loads, &planned, &moved) else {
                    break;
                };
                moves.push(self.move_room(&mut loads, room, owner, replica, touched));
                moved.insert(room);
                // The swap this prepares, counted now so the next preparation aims elsewhere.
                planned.entry(owner).and_modify(|owned| *owned -= 1);
                planned.entry(replica).and_modify(|owned| *owned += 1);
            }
        } else {
            while moves.len() < budget {
                let Some((room, owner, replica)) = best_replica_move(&self.rooms, &loads, &moved) else { break };
                moves.push(self.move_room(&mut loads, room, owner, replica, touched));
                moved.insert(room);
            }
        }
        if !moves.is_empty() {
            self.rebuild_placements();
        }
        CommandOutput::Rebalanced { moves, remaining_imbalance: imbalance(&loads) }
    }

    fn move_room(
        &mut self,
        loads: &mut Loads,
        id: RoomId,
        owner: ChatNodeId,
        replica: ChatNodeId,
        touched: &mut Vec<Touched>,
    ) -> RoomMove {
        let mut done = RoomMove { room: id, from_owner: 0, from_replica: 0, owner, replica, epoch: 0 };
        if let Some(room) = self.rooms.get_mut(&id) {
            done.from_owner = room.owner.unwrap_or_default();
            done.from_replica = room.replica.unwrap_or_default();
            loads.reassign(room, Some(owner), Some(replica));
            done.epoch = room.epoch;
            touched.push(Touched::Room(id));
        }
        done
    }
}

/// How far the `Up` nodes are from even: for owned and for replicated rooms, the sum over
/// nodes of how far each count lies outside [floor(mean), ceil(mean)]. Zero exactly when
/// every node is within one room of every other in both counts.
pub(super) fn imbalance(loads: &Loads) -> u64 {
    [Role::Owner, Role::Replica]
        .into_iter()
        .map(|role| {
            let counts: Vec<usize> = loads.counts().values().map(|load| role.of(*load)).collect();
            let Some(nodes) = std::num::NonZeroUsize::new(counts.len()) else { return 0 };
            let total: usize = counts.iter().sum();
            let (low, high) = (total / nodes, total.div_ceil(nodes.get()));
            counts.iter().map(|count| count.saturating_sub(high) + low.saturating_sub(*count)).sum::<usize>() as u64
        })
        .sum()
}

#[derive(Clone, Copy)]
enum Role {
    Owner,
    Replica,
}

impl Role {
    fn of(self, (owned, replicated): (usize, usize)) -> usize {
        match self {
            Self::Owner => owned,
            Self::Replica => replicated,
        }
    }
}

/// Largest minus smallest count among the `Up` nodes.
fn spread(loads: &Loads, role: Role) -> usize {
    let counts = loads.counts().values().map(|load| role.of(*load));
    counts.clone().max().unwrap_or(0) - counts.min().unwrap_or(0)
}

/// (owner, replica) of a room both of whose nodes are `Up` and that has not moved in this
/// command: the only rooms a rebalance touches.
fn movable(room: &Room, loads: &Loads, moved: &BTreeSet<RoomId>) -> Option<(ChatNodeId, ChatNodeId)> {
    let (owner, replica) = (room.owner?, room.replica?);
    (loads.is_up(owner) && loads.is_up(replica) && owner != replica && !moved.contains(&room.id))
        .then_some((owner, replica))
}

fn load(loads: &Loads, node: ChatNodeId) -> (usize, usize) {
    loads.counts().get(&node).copied().unwrap_or_default()
}

/// The swap (room, new owner, new replica) that narrows the owners' gap the most: its
/// owner owns at least two rooms more than its replica. Ties: the swap that also evens
/// replicas the most, then the lowest room id.
fn best_swap(catalog: &Catalog, loads: &Loads, moved: &BTreeSet<RoomId>) -> Option<(RoomId, ChatNodeId, ChatNodeId)> {
    catalog
        .rooms
        .values()
        .filter(|room| catalog.replica_in_sync(room))
        .filter_map(|room| {
            let (owner, replica) = movable(room, loads, moved)?;
            let (owner_load, replica_load) = (load(loads, owner), load(loads, replica));
            let gain = owner_load.0.checked_sub(replica_load.0).filter(|gain| *gain >= 2)?;
            let replica_gain = replica_load.1 as i64 - owner_load.1 as i64;
            Some(((gain, replica_gain, Reverse(room.id)), (room.id, replica, owner)))
        })
        .max_by_key(|(key, _)| *key)
        .map(|(_, chosen)| chosen)
}

/// A replica move that prepares a swap: the busiest owner `X` (by `planned` counts) gets
/// the least busy owner `Z` as the replica of one of its rooms, if `X` owns two more than
/// `Z`. Among `X`'s rooms, the one whose replica replicates the most, then the lowest id.
fn next_preparation(
    rooms: &BTreeMap<RoomId, Room>,
    loads: &Loads,
    planned: &BTreeMap<ChatNodeId, usize>,
    moved: &BTreeSet<RoomId>,
) -> Option<(RoomId, ChatNodeId, ChatNodeId)> {
    let (busiest, most) = planned.iter().max_by_key(|(id, owned)| (**owned, Reverse(**id)))?;
    let (idlest, least) = planned.iter().min_by_key(|(id, owned)| (**owned, load(loads, **id).1, **id))?;
    if most.checked_sub(*least).is_none_or(|gap| gap < 2) {
        return None;
    }
    rooms
        .values()
        .filter_map(|room| {
            let (owner, replica) = movable(room, loads, moved)?;
            (owner == *busiest && replica != *idlest).then_some(((load(loads, replica).1, Reverse(room.id)), room.id))
        })
        .max_by_key(|(key, _)| *key)
        .map(|(_, room)| (room, *busiest, *idlest))
}

/// The replica move (room, owner, new replica) that narrows the replicas' gap the most:
/// from a node replicating at least two more rooms than the least busy node that is
/// neither the room's owner nor its replica. Ties: the lowest room id.
fn best_replica_move(
    rooms: &BTreeMap<RoomId, Room>,
    loads: &Loads,
    moved: &BTreeSet<RoomId>,
) -> Option<(RoomId, ChatNodeId, ChatNodeId)> {
    let mut by_replicas: Vec<(usize, ChatNodeId)> = loads.counts().iter().map(|(id, load)| (load.1, *id)).collect();
    by_replicas.sort_unstable();
    rooms
        .values()
        .filter_map(|room| {
            let (owner, replica) = movable(room, loads, moved)?;
            let (target_load, target) = by_replicas.iter().find(|(_, id)| *id != owner && *id != replica)?;
            let gain = load(loads, replica).1.checked_sub(*target_load).filter(|gain| *gain >= 2)?;
            Some(((gain, Reverse(room.id)), (room.id, owner, *target)))
        })
        .max_by_key(|(key, _)| *key)
        .map(|(_, chosen)| chosen)
}

#[cfg(test)]
mod tests {
    use super::super::nodes::tests::register;
    use super::super::{Command, NodeStatus};
    use super::*;

    /// `rooms` rooms created while only `first` nodes were up, then `later` more nodes.
    fn lopsided(first: usize, later: usize, rooms: usize) -> Catalog {
        let mut catalog = Catalog::default();
        let user = Command::CreateUser { username: "alice".into(), password_hash: "h".into(), at_ms: 0 };
        catalog.apply(user).0.expect("user");
        for i in 0..first {
            register(&mut catalog, &format!("n{}", i + 1), true);
        }
        for i in 0..rooms {
            let create = Command::CreateRoom { name: format!("r{i}"), private: false, created_by: 1, at_ms: 0 };
            catalog.apply(create).0.expect("room");
        }
        for i in first..first + later {
            register(&mut catalog, &format!("n{}", i + 1), true);
        }
        catalog
    }

    fn rebalance(catalog: &mut Catalog, max_moves: u64) -> (Vec<RoomMove>, u64) {
        let before = catalog.clone();
        let placement = catalog.placement_digest();
        let (result, touched) = catalog.apply(Command::Rebalance { max_moves, placement });
        let Ok(CommandOutput::Rebalanced { moves, remaining_imbalance }) = result else { panic!("{result:?}") };
        assert!(moves.len() as u64 <= max_moves);
        assert_eq!(touched.len(), moves.len(), "one touched row per moved room");
        let rooms: BTreeSet<RoomId> = moves.iter().map(|m| m.room).collect();
        assert_eq!(rooms.len(), moves.len(), "a room moves at most once per command");
        for m in &moves {
            check_move(&before, catalog, m);
        }
        // The owners copy the log to their new replicas and say so before the next batch.
        super::super::nodes::tests::all_in_sync(catalog);
        (moves, remaining_imbalance)
    }

    /// Every move is safe: Up nodes only, owner ≠ replica, ownership only to the old
    /// replica (a swap), epoch + 1.
    fn check_move(before: &Catalog, after: &Catalog, m: &RoomMove) {
        let (old, new) = (&before.rooms[&m.room], &after.rooms[&m.room]);
        assert_eq!((old.owner, old.replica), (Some(m.from_owner), Some(m.from_replica)), "{m:?}");
        assert_eq!((new.owner, new.replica, new.epoch), (Some(m.owner), Some(m.replica), old.epoch + 1), "{m:?}");
        assert_ne!(m.owner, m.replica, "{m:?}");
        for node in [m.owner, m.replica] {
            assert_eq!(before.nodes[&node].status, NodeStatus::Up, "{m:?} uses a node that is not Up");
        }
        if m.owner != m.from_owner {
            assert_eq!((m.owner, m.replica), (m.from_replica, m.from_owner), "ownership only by a swap: {m:?}");
        }
    }

    /// Rebalances in batches until a batch moves nothing; the number of batches.
    fn converge(catalog: &mut Catalog, batch: u64) -> usize {
        for batches in 1..=200 {
            let (moves, remaining) = rebalance(catalog, batch);
            if moves.is_empty() {
                assert_eq!(remaining, 0, "stopped short of balanced");
                return batches;
            }
        }
        panic!("no convergence within 200 batches");
    }

    fn spread_of(catalog: &Catalog) -> (u64, u64) {
        let counts: Vec<(u64, u64)> = catalog
            .node_room_counts()
            .into_iter()
            .filter(|(id, _)| catalog.nodes[id].status == NodeStatus::Up)
            .map(|(_, counts)| counts)
            .collect();
        let spread = |f: fn(&(u64, u64)) -> u64| {
            counts.iter().map(f).max().unwrap_or(0) - counts.iter().map(f).min().unwrap_or(0)
        };
        (spread(|c| c.0), spread(|c| c.1))
    }

    #[test]
    fn a_new_node_gets_its_share_of_owners_and_replicas() {
        for (first, later, rooms, batch) in [(2, 1, 12, 50), (2, 1, 12, 1), (2, 2, 200, 7), (3, 2, 97, 50)] {
            let mut catalog = lopsided(first, later, rooms);
            let new = (first + 1) as ChatNodeId;
            assert_eq!(catalog.node_room_counts()[&new], (0, 0), "a late node starts empty");
            converge(&mut catalog, batch);
            let (owners, replicas) = spread_of(&catalog);
            assert!(owners <= 1 && replicas <= 1, "{first}+{later} nodes, {rooms} rooms: spread {owners}/{replicas}");
            assert!(catalog.rooms.values().all(|room| room.owner.is_some() && room.owner != room.replica));
        }
    }

    #[test]
    fn a_batch_for_a_placement_that_changed_is_refused() {
        let mut catalog = lopsided(2, 1, 12);
        let seen = catalog.placement_digest();
        rebalance(&mut catalog, 3);
        assert_ne!(catalog.placement_digest(), seen, "moves change the digest");
        let before = catalog.clone();
        let (result, touched) = catalog.apply(Command::Rebalance { max_moves: 50, placement: seen });
        assert_eq!(result.map(|_| ()).map_err(|e| e.code()), Err("not_settled"), "a retried or stale batch");
        assert!(touched.is_empty());
        assert_eq!(catalog, before, "nothing moved");
    }

    #[test]
    fn the_same_catalog_makes_the_same_moves() {
        let mut one = lopsided(2, 2, 60);
        let mut two = one.clone();
        for _ in 0..4 {
            assert_eq!(rebalance(&mut one, 9), rebalance(&mut two, 9));
        }
        assert_eq!(one, two);
    }

    #[test]
    fn a_balanced_catalog_is_left_alone() {
        let mut catalog = lopsided(2, 1, 12);
        converge(&mut catalog, 50);
        assert!(spread_of(&catalog).0 <= 1 && spread_of(&catalog).1 <= 1);
        let before = catalog.clone();
        assert_eq!(rebalance(&mut catalog, 50), (vec![], 0), "a second rebalance does nothing");
        assert_eq!(catalog, before);
        assert_eq!(rebalance(&mut lopsided(2, 1, 12), 0).0, vec![], "a zero budget moves nothing");
    }

    #[test]
    fn nodes_that_are_not_up_are_skipped() {
        let mut catalog = lopsided(3, 0, 30);
        // n2 goes down: its rooms fail over to n1 and n3. n4 waits for approval, n5 is drained.
        catalog.apply(Command::NodeDown { node: 2 }).0.expect("down");
        register(&mut catalog, "n4", false);
        let drained = register(&mut catalog, "n5", true).id;
        catalog.apply(Command::DrainNode { node: drained }).0.expect("drain");
        let fresh = register(&mut catalog, "n6", true).id;
        converge(&mut catalog, 10);
        let counts = catalog.node_room_counts();
        assert_eq!((counts[&2], counts[&4], counts[&drained]), ((0, 0), (0, 0), (0, 0)), "{counts:?}");
        assert!(counts[&fresh].0 > 0 && counts[&fresh].1 > 0, "{counts:?}");

        // A room whose owner is down (its only full copy is there) keeps its place.
        let mut catalog = lopsided(1, 0, 1);
        catalog.apply(Command::NodeDown { node: 1 }).0.expect("down");
        register(&mut catalog, "n2", true);
        register(&mut catalog, "n3", true);
        for i in 0..6 {
            let create = Command::CreateRoom { name: format!("late{i}"), private: false, created_by: 1, at_ms: 0 };
            catalog.apply(create).0.expect("room");
        }
        register(&mut catalog, "n4", true);
        let pinned = catalog.rooms[&1].clone();
        assert_eq!((pinned.owner, pinned.replica), (Some(1), Some(2)));
        let mut total = 0;
        loop {
            let (moves, _) = rebalance(&mut catalog, 5);
            assert!(moves.iter().all(|m| m.room != 1 && m.owner != 1 && m.replica != 1), "{moves:?}");
            total += moves.len();
            if moves.is_empty() || total > 100 {
                break;
            }
        }
        assert!(total > 0, "the Up nodes were rebalanced");
        assert_eq!(catalog.rooms[&1], pinned, "the down node's room is untouched");
    }

    #[test]
    fn ownership_moves_only_after_a_prepared_replica() {
        // Two nodes own 6 rooms each; the new n3 replicates nothing yet, so the first
        // batch can only prepare: n3 becomes replica of rooms of the busiest owners.
        let mut catalog = lopsided(2, 1, 12);
        let (first, _) = rebalance(&mut catalog, 50);
        assert!(!first.is_empty());
        assert!(first.iter().all(|m| m.owner == m.from_owner && m.replica == 3), "{first:?}");
        let (second, _) = rebalance(&mut catalog, 50);
        let swaps: Vec<&RoomMove> = second.iter().filter(|m| m.owner != m.from_owner).collect();
        assert!(!swaps.is_empty(), "{second:?}");
        assert!(swaps.iter().all(|m| m.owner == 3 && first.iter().any(|p| p.room == m.room)), "{second:?}");
    }

    #[test]
    fn a_swap_waits_for_the_prepared_replica_to_be_in_sync() {
        let mut catalog = lopsided(2, 1, 12);
        for _ in 0..2 {
            // No owner reports its new replica in sync between the two batches.
            let placement = catalog.placement_digest();
            let result = catalog.apply(Command::Rebalance { max_moves: 50, placement }).0;
            let Ok(CommandOutput::Rebalanced { moves, .. }) = result else { panic!("{result:?}") };
            assert!(moves.iter().all(|m| m.owner == m.from_owner), "no swap onto a copy in progress: {moves:?}");
        }
    }
}
