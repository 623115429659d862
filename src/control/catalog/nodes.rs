//! The chat-node part of [`Catalog::apply`]: the node lifecycle and where rooms live.
//!
//! Lifecycle: a node registers `Up` (or `Pending` when approval is required); an admin
//! approves a pending node (`ApproveNode`); the leader's failure detector marks a silent
//! node `Down` (`NodeDown`) and one that heartbeats again `Up` (`NodeUp`, or a new
//! `RegisterNode`). A `Pending` node only leaves that state through an approval (or an
//! operator's `SetNodeStatus Up`): neither a heartbeat nor a failure changes it.
//! An operator drains a node (`DrainNode`): it becomes `Drained` and its rooms move away
//! exactly as for a failure, but only when every one of them has somewhere to go (else
//! `no_capacity` and nothing changes). A `Drained` node stays so across heartbeats and
//! re-registrations until `UndrainNode` makes it `Up` again. The failure detector marks
//! a silent drained node `DrainedDown` (it holds no room, so nothing moves) and its
//! heartbeat or registration makes it `Drained` again (docs/REPLICATION.md, "A drained
//! node that goes silent"); undraining it makes it `Down`, `Up` at its next heartbeat.
//!
//! Placement, deterministic (rooms in id order, ties broken by node id):
//! - *least-loaded* is the `Up` node owning the fewest rooms, then replicating the fewest,
//!   then with the lowest id. Counting replicas as the second key spreads the replicas
//!   a failover hands out instead of piling them on one node.
//! - A new room: owner = least-loaded, replica = least-loaded other node (or none).
//! - A node goes down: each room it owned moves to its replica if that is `Up` and *in
//!   sync* (its owner reported, at the room's current epoch, that it holds the whole log),
//!   with a new least-loaded replica other than the new owner; each room it replicated
//!   gets a new replica. A room it owned *without* an `Up`, in-sync replica stays with it:
//!   the only complete copy of that room's log is on its disk, so the room waits for the
//!   node rather than going on from a copy that lacks acknowledged messages
//!   (docs/REPLICATION.md, "In-sync replicas").
//! - A node comes up: rooms without an owner (created while no node was up) are placed
//!   like new rooms; every room without a replica gets this node as replica (its own
//!   rooms get the least-loaded other node).
//!
//! Every room whose owner or replica changes gets `epoch + 1`, so replicas fence owners
//! that missed the change, and its replica is no longer in sync until its owner says so
//! again (`ReplicasInSync`). A new room's replica is in sync from the start: its log is
//! empty everywhere.

use std::collections::BTreeMap;

use super::{
    valid_name, Catalog, CatalogError, ChatNode, ChatNodeId, CommandOutput, CommandResult, NodeStatus, Room, RoomId,
    Touched,
};

impl Catalog {
    /// `RegisterNode`: idempotent per name (see [`super::Command::RegisterNode`]).
    pub(super) fn register_node(
        &mut self,
        name: String,
        ws_url: String,
        mesh_addr: String,
        approved: bool,
        at_ms: u64,
        touched: &mut Vec<Touched>,
    ) -> CommandResult {
        if !valid_name(&name, 1, 64) {
            return Err(CatalogError::InvalidNodeName);
        }
        if let Some(id) = self.node_by_name(&name).map(|node| node.id) {
            let mut was_down = false;
            if let Some(node) = self.nodes.get_mut(&id) {
                node.ws_url = ws_url;
                node.mesh_addr = mesh_addr;
                was_down = node.status == NodeStatus::Down;
                if node.status == NodeStatus::DrainedDown {
                    node.status = NodeStatus::Drained;
                }
            }
            touched.push(Touched::Node(id));
            if was_down {
                self.bring_up(id, touched);
            }
            return Ok(CommandOutput::Node(self.node(id)?.clone()));
        }
        self.meta.next_node_id += 1;
        let id = self.meta.next_node_id;
        let status = NodeStatus::Pending;
        let node = ChatNode { id, name, ws_url, mesh_addr, status, registered_at_ms: at_ms };
        self.nodes.insert(id, node);
        touched.extend([Touched::Meta, Touched::Node(id)]);
        if approved {
            self.bring_up(id, touched);
        }
        Ok(CommandOutput::Node(self.node(id)?.clone()))
    }

    /// `SetNodeStatus`: routed through the same transitions as the specific commands.
    pub(super) fn set_node_status(
        &mut self,
        node: ChatNodeId,
        status: NodeStatus,
        touched: &mut Vec<Touched>,
    ) -> CommandResult {
        match status {
            NodeStatus::Up => {
                if self.node(node)?.status != NodeStatus::Up {
                    self.bring_up(node, touched);
                }
                Ok(CommandOutput::Node(self.node(node)?.clone()))
            }
            NodeStatus::Down => self.node_down(node, NodeStatus::Down, touched),
            NodeStatus::Drained => self.drain_node(node, touched),
            NodeStatus::DrainedDown => {
                self.drain_node(node, touched)?;
                self.node_down(node, NodeStatus::Down, touched)
            }
            NodeStatus::Pending => {
                if self.node(node)?.status == NodeStatus::Pending {
                    return Ok(CommandOutput::Node(self.node(node)?.clone()));
                }
                // Out of service first (rooms move away), then back to waiting for approval.
                self.take_out(node, NodeStatus::Pending, touched)
            }
        }
    }

    /// `NodeDown` (and `SetNodeStatus Down`): an `Up` node leaves and its rooms fail over;
    /// a `Drained` node becomes `DrainedDown` (it holds no room). Any other node is left as
    /// it is (a second detection, a pending node).
    pub(super) fn node_down(&mut self, node: ChatNodeId, to: NodeStatus, touched: &mut Vec<Touched>) -> CommandResult {
        match self.node(node)?.status {
            NodeStatus::Up => self.take_out(node, to, touched),
            NodeStatus::Drained => self.set_status(node, NodeStatus::DrainedDown, touched),
            NodeStatus::Down | NodeStatus::Pending | NodeStatus::DrainedDown => {
                Ok(CommandOutput::NodeDown { node: self.node(node)?.clone(), owners_moved: 0, replicas_moved: 0 })
            }
        }
    }

    /// Changes only `node`'s status: for the moves between `Drained` and `DrainedDown`
    /// (and `Down`), where no room moves because the node holds none.
    fn set_status(&mut self, node: ChatNodeId, status: NodeStatus, touched: &mut Vec<Touched>) -> CommandResult {
        let Some(entry) = self.nodes.get_mut(&node) else { return Err(CatalogError::UnknownNode(node)) };
        entry.status = status;
        touched.push(Touched::Node(node));
        Ok(CommandOutput::NodeDown { node: entry.clone(), owners_moved: 0, replicas_moved: 0 })
    }

    /// `ApproveNode`: a pending node becomes `Up`; any other node is left as it is.
    pub(super) fn approve_node(&mut self, node: ChatNodeId, touched: &mut Vec<Touched>) -> CommandResult {
        if self.node(node)?.status == NodeStatus::Pending {
            self.bring_up(node, touched);
        }
        Ok(CommandOutput::Node(self.node(node)?.clone()))
    }

    /// `NodeUp`: a `Down` node is back. A pending node must be approved instead; a drained
    /// one stays drained (it heartbeats while out of service), and a `DrainedDown` one is
    /// `Drained` again.
    pub(super) fn node_up(&mut self, node: ChatNodeId, touched: &mut Vec<Touched>) -> CommandResult {
        match self.node(node)?.status {
            NodeStatus::Pending => return Err(CatalogError::NodePending(node)),
            NodeStatus::Down => self.bring_up(node, touched),
            NodeStatus::DrainedDown => {
                self.set_status(node, NodeStatus::Drained, touched)?;
            }
            NodeStatus::Up | NodeStatus::Drained => {}
        }
        Ok(CommandOutput::Node(self.node(node)?.clone()))
    }

    /// `DrainNode`: an `Up` (or `Down`) node leaves service and its rooms move, if every
    /// room it holds can move (a `Down` one becomes `DrainedDown`: it is not heard from);
    /// a drained node is left as it is; a pending one is refused.
    pub(super) fn drain_node(&mut self, node: ChatNodeId, touched: &mut Vec<Touched>) -> CommandResult {
        match self.node(node)?.status {
            NodeStatus::Pending => Err(CatalogError::NodePending(node)),
            NodeStatus::Drained | NodeStatus::DrainedDown => {
                Ok(CommandOutput::NodeDown { node: self.node(node)?.clone(), owners_moved: 0, replicas_moved: 0 })
            }
            NodeStatus::Up => {
                self.check_drain_capacity(node)?;
                self.take_out(node, NodeStatus::Drained, touched)
            }
            // Silent: drained, and down in the tables until it heartbeats (then `Drained`).
            NodeStatus::Down => {
                self.check_drain_capacity(node)?;
                self.take_out(node, NodeStatus::DrainedDown, touched)
            }
        }
    }

    /// `UndrainNode`: a drained node is `Up` again, a silent one (`DrainedDown`) `Down`, so
    /// `Up` at its next heartbeat; an `Up` or `Down` node is left as it is; a pending one
    /// must be approved instead.
    pub(super) fn undrain_node(&mut self, node: ChatNodeId, touched: &mut Vec<Touched>) -> CommandResult {
        match self.node(node)?.status {
            NodeStatus::Pending => return Err(CatalogError::NodePending(node)),
            NodeStatus::Drained => self.bring_up(node, touched),
            NodeStatus::DrainedDown => {
                self.set_status(node, NodeStatus::Down, touched)?;
            }
            NodeStatus::Up | NodeStatus::Down => {}
        }
        Ok(CommandOutput::Node(self.node(node)?.clone()))
    }

    /// Whether every room of `node` would keep an `Up` owner and an `Up` replica on other
    /// nodes: a room it owns needs an `Up` replica to promote (the copy of its log) and a
    /// third `Up` node as new replica; a room it replicates needs an `Up` owner and a
    /// third `Up` node. The first room that cannot move is the error.
    fn check_drain_capacity(&self, node: ChatNodeId) -> Result<(), CatalogError> {
        let loads = Loads::of(self);
        let up_other = |id: ChatNodeId| id != node && loads.is_up(id);
        for room in self.rooms.values() {
            if room.owner == Some(node) && room.replica.is_some_and(up_other) && !self.replica_in_sync(room) {
                let why = "its replica, which would become owner, is still receiving the log; retry shortly";
                return Err(CatalogError::NoCapacity { room: room.id, why: why.to_string() });
            }
            let (keeper, role) = if room.owner == Some(node) {
                (room.replica, "its replica, which would become owner, is not Up")
            } else if room.replica == Some(node) {
                (room.owner, "its owner is not Up")
            } else {
                continue;
            };
            let no_capacity = |why: &str| CatalogError::NoCapacity { room: room.id, why: why.to_string() };
            let keeper = keeper.filter(|keeper| up_other(*keeper)).ok_or_else(|| no_capacity(role))?;
            if loads.least(&[node, keeper]).is_none() {
                return Err(no_capacity("no third Up node would hold its second copy"));
            }
        }
        Ok(())
    }

    fn node(&self, node: ChatNodeId) -> Result<&ChatNode, CatalogError> {
        self.nodes.get(&node).ok_or(CatalogError::UnknownNode(node))
    }

    /// Whether `room`'s replica holds every acknowledged message, so it may be promoted:
    /// its owner reported so at the room's current epoch.
    pub fn replica_in_sync(&self, room: &Room) -> bool {
        room.replica.is_some() && self.replicas_in_sync.get(&room.id) == Some(&room.epoch)
    }

    /// `ReplicasInSync`: records each room whose owner is still `node` at that epoch, with
    /// a replica; anything else in the report is stale and skipped.
    pub(super) fn replicas_in_sync(
        &mut self,
        node: ChatNodeId,
        rooms: Vec<(RoomId, u64)>,
        touched: &mut Vec<Touched>,
    ) -> CommandOutput {
        for (id, epoch) in rooms {
            let current = self
                .rooms
                .get(&id)
                .is_some_and(|room| room.owner == Some(node) && room.epoch == epoch && room.replica.is_some());
            if current && self.replicas_in_sync.insert(id, epoch) != Some(epoch) {
                touched.push(Touched::ReplicaInSync(id));
            }
        }
        CommandOutput::Done
    }

    /// Sets the node's status to `to` (not `Up`) and moves its rooms (see the module docs).
    fn take_out(&mut self, node: ChatNodeId, to: NodeStatus, touched: &mut Vec<Touched>) -> CommandResult {
        let Some(entry) = self.nodes.get_mut(&node) else { return Err(CatalogError::UnknownNode(node)) };
        entry.status = to;
        touched.push(Touched::Node(node));
        let mut loads = Loads::of(self);
        let (mut owners_moved, mut replicas_moved) = (0, 0);
        let in_sync = &self.replicas_in_sync;
        for room in self.rooms.values_mut() {
            if room.owner == Some(node) {
                let promotable =
                    |replica: &ChatNodeId| loads.is_up(*replica) && in_sync.get(&room.id) == Some(&room.epoch);
                let Some(new_owner) = room.replica.filter(promotable) else { continue };
                let replica = loads.least(&[new_owner]);
                if loads.reassign(room, Some(new_owner), replica) {
                    owners_moved += 1;
                    touched.push(Touched::Room(room.id));
                }
            } else if room.replica == Some(node) {
                let replica = loads.least(room.owner.as_slice());
                if loads.reassign(room, room.owner, replica) {
                    replicas_moved += 1;
                    touched.push(Touched::Room(room.id));
                }
            }
        }
        self.rebuild_placements();
        Ok(CommandOutput::NodeDown { node: self.node(node)?.clone(), owners_moved, replicas_moved })
    }

    /// Marks the node `Up` and gives it the rooms that lack an owner or a replica.
    fn bring_up(&mut self, node: ChatNodeId, touched: &mut Vec<Touched>) {
        let Some(entry) = self.nodes.get_mut(&node) else { return };
        entry.status = NodeStatus::Up;
        touched.push(Touched::Node(node));
        let mut loads = Loads::of(self);
        for room in self.rooms.values_mut() {
            let (owner, replica) = match (room.owner, room.replica) {
                (None, _) => {
                    // Never placed before: its log is empty everywhere, so its replica is
                    // in sync from the start.
                    let owner = loads.least(&[]);
                    let replica = owner.and_then(|owner| loads.least(&[owner]));
                    if replica.is_some() && loads.reassign(room, owner, replica) {
                        self.replicas_in_sync.insert(room.id, room.epoch);
                        touched.extend([Touched::Room(room.id), Touched::ReplicaInSync(room.id)]);
                        continue;
                    }
                    (owner, replica)
                }
                (Some(owner), None) if owner != node => (Some(owner), Some(node)),
                (Some(owner), None) => (Some(owner), loads.least(&[owner])),
                (Some(_), Some(_)) => continue,
            };
            if loads.reassign(room, owner, replica) {
                touched.push(Touched::Room(room.id));
            }
        }
        self.rebuild_placements();
    }
}

/// Rooms owned and replicated per `Up` node, kept current while `apply` moves rooms, so a
/// failover over many rooms stays linear and spreads its choices.
pub(super) struct Loads(BTreeMap<ChatNodeId, (usize, usize)>);

impl Loads {
    /// The loads of the `Up` nodes, from the catalog's placement index (no pass over the
    /// rooms).
    pub(super) fn of(catalog: &Catalog) -> Self {
        #[cfg(test)]
        assert_eq!(
            catalog.placements(),
            &super::placements_of(catalog.rooms.values()),
            "the placement index follows the rooms"
        );
        let placements = catalog.placements();
        let loads = catalog
            .nodes
            .values()
            .filter(|node| node.status == NodeStatus::Up)
            .map(|node| (node.id, placements.get(&node.id).copied().unwrap_or_default()))
            .collect();
        Self(loads)
    }

    /// The least-loaded `Up` node not in `exclude`.
    pub(super) fn least(&self, exclude: &[ChatNodeId]) -> Option<ChatNodeId> {
        self.0.iter().filter(|(id, _)| !exclude.contains(id)).min_by_key(|(id, load)| (**load, **id)).map(|(id, _)| *id)
    }

    pub(super) fn is_up(&self, node: ChatNodeId) -> bool {
        self.0.contains_key(&node)
    }

    /// (owned, replicated) per `Up` node, in id order.
    pub(super) fn counts(&self) -> &BTreeMap<ChatNodeId, (usize, usize)> {
        &self.0
    }

    /// Gives `room` a new owner and replica (epoch + 1) unless they are what it has.
    pub(super) fn reassign(&mut self, room: &mut Room, owner: Option<ChatNodeId>, replica: Option<ChatNodeId>) -> bool {
        if (room.owner, room.replica) == (owner, replica) {
            return false;
        }
        for (node, owned) in [(room.owner, true), (room.replica, false)] {
            if let Some(load) = node.and_then(|node| self.0.get_mut(&node)) {
                let count = if owned { &mut load.0 } else { &mut load.1 };
                *count = count.saturating_sub(1);
            }
        }
        for (node, owned) in [(owner, true), (replica, false)] {
            if let Some(load) = node.and_then(|node| self.0.get_mut(&node)) {
                *(if owned { &mut load.0 } else { &mut load.1 }) += 1;
            }
        }
        room.owner = owner;
        room.replica = replica;
        room.epoch += 1;
        true
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::Command;
    use super::*;

    /// Registers a node straight through the catalog (also used by `balance`'s tests).
    pub(in super::super) fn register(catalog: &mut Catalog, name: &str, approved: bool) -> ChatNode {
        let command = Command::RegisterNode {
            name: name.into(),
            ws_url: format!("ws://{name}/ws"),
            mesh_addr: name.into(),
            approved,
            at_ms: 0,
        };
        match catalog.apply(command).0 {
            Ok(CommandOutput::Node(node)) => node,
            other => panic!("register {name}: {other:?}"),
        }
    }

    /// A catalog with one user and `rooms` public rooms created after `nodes` registered.
    fn setup(nodes: &[&str], rooms: usize) -> Catalog {
        let mut catalog = Catalog::default();
        let user = Command::CreateUser { username: "alice".into(), password_hash: "h".into(), at_ms: 0 };
        catalog.apply(user).0.unwrap();
        for name in nodes {
            register(&mut catalog, name, true);
        }
        for i in 0..rooms {
            let create = Command::CreateRoom { name: format!("r{i}"), private: false, created_by: 1, at_ms: 0 };
            catalog.apply(create).0.unwrap();
        }
        catalog
    }

    /// (owner, replica, epoch) of every room, in id order.
    fn placement(catalog: &Catalog) -> Vec<(Option<ChatNodeId>, Option<ChatNodeId>, u64)> {
        catalog.rooms.values().map(|room| (room.owner, room.replica, room.epoch)).collect()
    }

    /// Every owner reports its replica in sync at the room's current epoch, as owners do
    /// once they copied the log (also used by `balance`'s tests).
    pub(in super::super) fn all_in_sync(catalog: &mut Catalog) {
        let reports: Vec<(ChatNodeId, RoomId, u64)> = catalog
            .rooms
            .values()
            .filter_map(|room| room.owner.zip(room.replica).map(|(owner, _)| (owner, room.id, room.epoch)))
            .collect();
        for (node, room, epoch) in reports {
            catalog.apply(Command::ReplicasInSync { node, rooms: vec![(room, epoch)] }).0.unwrap();
        }
    }

    fn down(catalog: &mut Catalog, node: ChatNodeId) -> (u64, u64) {
        match catalog.apply(Command::NodeDown { node }).0 {
            Ok(CommandOutput::NodeDown { owners_moved, replicas_moved, .. }) => (owners_moved, replicas_moved),
            other => panic!("node down: {other:?}"),
        }
    }

    #[test]
    fn registering_a_known_name_keeps_its_id_and_updates_its_address() {
        let mut catalog = setup(&["n1"], 0);
        let again = register(&mut catalog, "n1", true);
        assert_eq!((again.id, again.status), (1, NodeStatus::Up));
        let moved = Command::RegisterNode {
            name: "n1".into(),
            ws_url: "ws://new/ws".into(),
            mesh_addr: "new".into(),
            approved: true,
            at_ms: 9,
        };
        let Ok(CommandOutput::Node(node)) = catalog.apply(moved).0 else { panic!("re-register failed") };
        assert_eq!((node.id, node.mesh_addr.as_str(), node.registered_at_ms), (1, "new", 0));
        assert_eq!(catalog.nodes.len(), 1);

        down(&mut catalog, 1);
        assert_eq!(register(&mut catalog, "n1", true).status, NodeStatus::Up, "a down node comes back up");
        assert_eq!(register(&mut catalog, "n2", false).status, NodeStatus::Pending);
        assert_eq!(register(&mut catalog, "n2", true).status, NodeStatus::Pending, "approval is not skipped");
        let bad = Command::RegisterNode {
            name: "N 1".into(),
            ws_url: String::new(),
            mesh_addr: String::new(),
            approved: true,
            at_ms: 0,
        };
        assert_eq!(catalog.apply(bad).0.unwrap_err().code(), "invalid_node_name");
    }

    #[test]
    fn new_rooms_spread_over_the_least_loaded_nodes() {
        let catalog = setup(&["n1", "n2", "n3"], 3);
        // r0 → n1 (+n2); r1 → n3, the only node with nothing yet (+n2, owning nothing);
        // r2 → n2, which owns nothing (+n1, fewer replicas than n3 and a lower id).
        assert_eq!(placement(&catalog), vec![(Some(1), Some(2), 1), (Some(3), Some(2), 1), (Some(2), Some(1), 1)]);
    }

    #[test]
    fn a_down_node_fails_its_rooms_over_to_their_replicas() {
        let mut catalog = setup(&["n1", "n2", "n3"], 3);
        assert_eq!(down(&mut catalog, 1), (1, 1));
        assert_eq!(catalog.nodes[&1].status, NodeStatus::Down);
        // r0 (n1, replica n2) moves to n2 and gets n3 as replica; r1 (n3 + n2) is untouched;
        // r2 (n2, replica n1) gets n3, the only Up node other than its owner.
        assert_eq!(placement(&catalog), vec![(Some(2), Some(3), 2), (Some(3), Some(2), 1), (Some(2), Some(3), 2)]);
        assert_eq!(down(&mut catalog, 1), (0, 0), "a second detection changes nothing");

        // With one node left (and the new replicas synced first), replicas become None; the
        // last node's rooms have nowhere to go.
        all_in_sync(&mut catalog);
        assert_eq!(down(&mut catalog, 2), (2, 1));
        assert_eq!(placement(&catalog), vec![(Some(3), None, 3), (Some(3), None, 2), (Some(3), None, 3)]);
        assert_eq!(down(&mut catalog, 3), (0, 0));
        assert_eq!(placement(&catalog), vec![(Some(3), None, 3), (Some(3), None, 2), (Some(3), None, 3)]);
    }

    #[test]
    fn a_returning_node_becomes_the_replica_of_rooms_without_one() {
        let mut catalog = setup(&["n1", "n2"], 2);
        down(&mut catalog, 1);
        assert_eq!(placement(&catalog), vec![(Some(2), None, 2), (Some(2), None, 2)]);
        let Ok(CommandOutput::Node(node)) = catalog.apply(Command::NodeUp { node: 1 }).0 else { panic!("no node") };
        assert_eq!(node.status, NodeStatus::Up);
        assert_eq!(placement(&catalog), vec![(Some(2), Some(1), 3), (Some(2), Some(1), 3)]);
        let before = catalog.clone();
        assert!(catalog.apply(Command::NodeUp { node: 1 }).0.is_ok(), "an Up node stays up");
        assert_eq!(catalog, before);
        assert_eq!(catalog.apply(Command::NodeUp { node: 7 }).0.unwrap_err().code(), "unknown_node");
    }

    #[test]
    fn a_room_without_a_live_replica_waits_for_its_owner() {
        let mut catalog = setup(&["n1"], 1);
        register(&mut catalog, "n2", false);
        assert_eq!(placement(&catalog), vec![(Some(1), None, 1)], "a pending node takes no rooms");
        assert_eq!(down(&mut catalog, 1), (0, 0));
        assert_eq!(placement(&catalog), vec![(Some(1), None, 1)]);
        catalog.apply(Command::NodeUp { node: 1 }).0.unwrap();
        assert_eq!(placement(&catalog), vec![(Some(1), None, 1)], "still no second node");
    }

    #[test]
    fn approval_brings_a_pending_node_in_and_nothing_else_does() {
        let mut catalog = setup(&[], 2);
        assert_eq!(placement(&catalog), vec![(None, None, 0), (None, None, 0)], "no node yet");
        register(&mut catalog, "n1", false);
        assert_eq!(catalog.apply(Command::NodeUp { node: 1 }).0.unwrap_err().code(), "node_pending");
        assert_eq!(down(&mut catalog, 1), (0, 0));
        assert_eq!(catalog.nodes[&1].status, NodeStatus::Pending);
        let Ok(CommandOutput::Node(node)) = catalog.apply(Command::ApproveNode { node: 1 }).0 else { panic!() };
        assert_eq!(node.status, NodeStatus::Up);
        assert_eq!(placement(&catalog), vec![(Some(1), None, 1), (Some(1), None, 1)], "ownerless rooms placed");
        register(&mut catalog, "n2", true);
        assert_eq!(placement(&catalog), vec![(Some(1), Some(2), 2), (Some(1), Some(2), 2)]);
        assert_eq!(catalog.apply(Command::ApproveNode { node: 9 }).0.unwrap_err().code(), "unknown_node");
    }

    #[test]
    fn set_node_status_follows_the_same_transitions() {
        let mut catalog = setup(&["n1", "n2"], 1);
        let down = Command::SetNodeStatus { node: 1, status: NodeStatus::Down };
        assert!(matches!(catalog.apply(down).0, Ok(CommandOutput::NodeDown { owners_moved: 1, .. })));
        assert_eq!(placement(&catalog), vec![(Some(2), None, 2)]);
        let pending = Command::SetNodeStatus { node: 2, status: NodeStatus::Pending };
        catalog.apply(pending).0.unwrap();
        assert_eq!(catalog.nodes[&2].status, NodeStatus::Pending);
        let up = Command::SetNodeStatus { node: 1, status: NodeStatus::Up };
        catalog.apply(up).0.unwrap();
        assert_eq!(catalog.nodes[&1].status, NodeStatus::Up);
    }

    fn drain(catalog: &mut Catalog, node: ChatNodeId) -> Result<(u64, u64), &'static str> {
        match catalog.apply(Command::DrainNode { node }).0 {
            Ok(CommandOutput::NodeDown { owners_moved, replicas_moved, .. }) => Ok((owners_moved, replicas_moved)),
            Ok(other) => panic!("drain returned {other:?}"),
            Err(e) => Err(e.code()),
        }
    }

    #[test]
    fn a_drained_node_hands_over_its_rooms_and_takes_no_new_ones() {
        let mut catalog = setup(&["n1", "n2", "n3"], 3);
        // Before: r0 n1+n2, r1 n3+n2, r2 n2+n1. Draining n2 moves r2's ownership to n1 and
        // the replica roles of r0 and r1 to the only other node each.
        assert_eq!(drain(&mut catalog, 2), Ok((1, 2)));
        assert_eq!(catalog.nodes[&2].status, NodeStatus::Drained);
        assert_eq!(placement(&catalog), vec![(Some(1), Some(3), 2), (Some(3), Some(1), 2), (Some(1), Some(3), 2)]);
        assert_eq!(catalog.node_room_counts()[&2], (0, 0));
        assert_eq!(drain(&mut catalog, 2), Ok((0, 0)), "draining again changes nothing");

        let create = Command::CreateRoom { name: "late".into(), private: false, created_by: 1, at_ms: 0 };
        let Ok(CommandOutput::Room(room)) = catalog.apply(create).0 else { panic!("create") };
        assert!(room.owner != Some(2) && room.replica != Some(2), "no new room on a drained node: {room:?}");

        // Heartbeats and re-registrations do not bring it back; an undrain does.
        catalog.apply(Command::NodeUp { node: 2 }).0.unwrap();
        assert_eq!(register(&mut catalog, "n2", true).status, NodeStatus::Drained);
        let before = placement(&catalog);
        // Silent, it is down in the tables but still drained: nothing moves, and its return
        // (a heartbeat, a registration) makes it drained again, not up.
        assert_eq!(down(&mut catalog, 2), (0, 0), "a silent drained node holds nothing to fail over");
        assert_eq!(catalog.nodes[&2].status, NodeStatus::DrainedDown);
        assert_eq!(placement(&catalog), before);
        assert_eq!(drain(&mut catalog, 2), Ok((0, 0)), "draining a silent drained node changes nothing");
        assert_eq!(catalog.nodes[&2].status, NodeStatus::DrainedDown);
        catalog.apply(Command::NodeUp { node: 2 }).0.unwrap();
        assert_eq!(catalog.nodes[&2].status, NodeStatus::Drained);
        down(&mut catalog, 2);
        assert_eq!(register(&mut catalog, "n2", true).status, NodeStatus::Drained);
        // Undrained while silent: down, so up at its next heartbeat.
        down(&mut catalog, 2);
        let Ok(CommandOutput::Node(node)) = catalog.apply(Command::UndrainNode { node: 2 }).0 else { panic!() };
        assert_eq!(node.status, NodeStatus::Down);
        catalog.apply(Command::DrainNode { node: 2 }).0.unwrap();
        assert_eq!(catalog.nodes[&2].status, NodeStatus::DrainedDown, "a down node drains, still down");
        assert_eq!(placement(&catalog), before);
        catalog.apply(Command::NodeUp { node: 2 }).0.unwrap();
        assert_eq!(catalog.nodes[&2].status, NodeStatus::Drained);
        let Ok(CommandOutput::Node(node)) = catalog.apply(Command::UndrainNode { node: 2 }).0 else { panic!() };
        assert_eq!(node.status, NodeStatus::Up);
        assert_eq!(placement(&catalog), before, "moved rooms stay where they are");
        let create = Command::CreateRoom { name: "later".into(), private: false, created_by: 1, at_ms: 0 };
        let Ok(CommandOutput::Room(room)) = catalog.apply(create).0 else { panic!("create") };
        assert_eq!(room.owner, Some(2), "the undrained node, owning nothing, is least loaded");
    }

    #[test]
    fn a_drain_without_room_to_move_is_refused_and_changes_nothing() {
        let mut catalog = setup(&["n1", "n2"], 2);
        let before = catalog.clone();
        assert_eq!(drain(&mut catalog, 1), Err("no_capacity"), "no third node for the second copies");
        assert_eq!(catalog, before);
        assert_eq!(drain(&mut catalog, 9), Err("unknown_node"));

        // A room without an Up replica cannot leave its owner: its log is only there.
        let mut catalog = setup(&["n1", "n2", "n3"], 1);
        down(&mut catalog, 2);
        down(&mut catalog, 3);
        assert_eq!(placement(&catalog), vec![(Some(1), None, 3)]);
        let Err(e) = catalog.apply(Command::DrainNode { node: 1 }).0 else { panic!("drained") };
        assert!(matches!(e, CatalogError::NoCapacity { room: 1, .. }), "{e:?}");
        assert_eq!(catalog.nodes[&1].status, NodeStatus::Up);

        let mut catalog = setup(&["n1"], 0);
        register(&mut catalog, "n2", false);
        assert_eq!(drain(&mut catalog, 2), Err("node_pending"));
        assert_eq!(catalog.apply(Command::UndrainNode { node: 2 }).0.unwrap_err().code(), "node_pending");
    }

    #[test]
    fn only_an_in_sync_replica_is_promoted() {
        let mut catalog = setup(&["n1", "n2", "n3"], 1);
        assert!(catalog.replica_in_sync(&catalog.rooms[&1]), "a new room's replica holds its (empty) log");
        // n2, the replica, dies: n3 replaces it, and is not in sync until n1 says so.
        assert_eq!(down(&mut catalog, 2), (0, 1));
        assert_eq!(placement(&catalog), vec![(Some(1), Some(3), 2)]);
        assert!(!catalog.replica_in_sync(&catalog.rooms[&1]));
        // n1 dies while n3 is still receiving the log: the room waits for n1.
        assert_eq!(down(&mut catalog, 1), (0, 0));
        assert_eq!(placement(&catalog), vec![(Some(1), Some(3), 2)], "not promoted");
        let refused = catalog.apply(Command::AssignRoom { room: 1, owner: 3, replica: None, epoch: 2 }).0;
        assert_eq!(refused.unwrap_err().code(), "replica_not_in_sync");
        // n1 comes back and syncs n3; now n3 may take over.
        catalog.apply(Command::NodeUp { node: 1 }).0.unwrap();
        let stale = Command::ReplicasInSync { node: 1, rooms: vec![(1, 1)] };
        catalog.apply(stale).0.unwrap();
        assert!(!catalog.replica_in_sync(&catalog.rooms[&1]), "a report of an older epoch counts for nothing");
        let foreign = Command::ReplicasInSync { node: 3, rooms: vec![(1, 2)] };
        catalog.apply(foreign).0.unwrap();
        assert!(!catalog.replica_in_sync(&catalog.rooms[&1]), "only the owner vouches for its replica");
        let (result, touched) = catalog.apply(Command::ReplicasInSync { node: 1, rooms: vec![(1, 2)] });
        result.unwrap();
        assert_eq!(touched, vec![Touched::ReplicaInSync(1)]);
        assert_eq!(down(&mut catalog, 1), (1, 0));
        assert_eq!(placement(&catalog), vec![(Some(3), None, 3)]);
    }

    #[test]
    fn a_node_down_decided_in_another_term_is_refused() {
        let mut catalog = setup(&["n1", "n2", "n3"], 1);
        let decided = Command::NodeDownInTerm { node: 1, term: 4 };
        let (refused, touched) = catalog.apply_in_term(decided.clone(), Some(5));
        assert_eq!(refused.unwrap_err().code(), "stale_decision");
        assert!(touched.is_empty());
        assert_eq!(catalog.nodes[&1].status, NodeStatus::Up);
        assert_eq!(catalog.apply(decided.clone()).0.unwrap_err().code(), "stale_decision", "no term: refused");
        assert!(catalog.apply_in_term(decided, Some(4)).0.is_ok());
        assert_eq!(catalog.nodes[&1].status, NodeStatus::Down);
    }

    #[test]
    fn a_drain_waits_for_its_rooms_replicas_to_be_in_sync() {
        let mut catalog = setup(&["n1", "n2", "n3"], 1);
        down(&mut catalog, 2);
        catalog.apply(Command::NodeUp { node: 2 }).0.unwrap();
        let refused = catalog.apply(Command::DrainNode { node: 1 }).0;
        assert_eq!(refused.unwrap_err().code(), "no_capacity", "n3 is still receiving room 1's log");
        all_in_sync(&mut catalog);
        assert!(catalog.apply(Command::DrainNode { node: 1 }).0.is_ok());
        assert_eq!(catalog.rooms[&1].owner, Some(3));
    }
}
