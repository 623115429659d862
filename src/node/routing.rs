//! The node's routing table and what follows from it: where each room's owner and
//! replica are ([`Routes`]), sending a message through the owner and reading history from
//! the owner or its replica (refreshing the table once when a room moved), notifying an
//! owner of interest and typing, delivering frames to a node's sessions, and installing a
//! newer table from the control plane (which starts and stops this node's owners).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::log::RoomLog;
use super::mesh::Dispatch;
use super::owner::{blocking, OwnerCommand, Sent};
use super::owner_handle::OwnerHandle;
use super::sequencer::PendingSend;
use super::{control_link, Node, NodeError};
use crate::protocol::{
    LogQuery, MeshRequest, MeshResponse, NodeId, NodeRoute, Outgoing, ReadMessage, RoomId, RoomRoute, RoutingDelta,
    RoutingTable, Seq, UserId,
};
use crate::store::StoreError;

/// A read's answer: the entries, whether there are more, and the seq the read stopped at.
pub type Page = (Vec<ReadMessage>, bool, Seq);

/// Most mentions one query returns.
pub const MAX_MENTIONS: usize = 100;

/// The least time between two routing refreshes a lookup asks for
/// ([`Node::refresh_routes`]): at most 20 a second per node, however many clients miss.
pub const REFRESH_SPACING: Duration = Duration::from_millis(50);

/// The routing table as lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub version: u64,
    /// Shared routes: a table built from a delta copies the map, not every room's route.
    pub rooms: HashMap<RoomId, Arc<RoomRoute>>,
    pub nodes: HashMap<NodeId, NodeRoute>,
    /// The cluster's admins, who moderate every room.
    pub admins: Vec<UserId>,
}

impl From<RoutingTable> for Routes {
    fn from(table: RoutingTable) -> Self {
        Self {
            version: table.version,
            rooms: table.rooms.into_iter().map(|room| (room.id, Arc::new(room))).collect(),
            nodes: table.nodes.into_iter().map(|node| (node.id, node)).collect(),
            admins: table.admins,
        }
    }
}

impl Routes {
    /// This table with `delta` applied: the table at `delta.version`. `None` unless this
    /// table is at exactly `delta.from` (any other base would miss or misplace changes).
    pub fn with_delta(&self, delta: RoutingDelta) -> Option<Routes> {
        if delta.from != self.version || delta.version <= delta.from {
            return None;
        }
        let mut next = self.clone();
        next.version = delta.version;
        for id in &delta.removed_rooms {
            next.rooms.remove(id);
        }
        for id in &delta.removed_nodes {
            next.nodes.remove(id);
        }
        next.rooms.extend(delta.rooms.into_iter().map(|room| (room.id, Arc::new(room))));
        next.nodes.extend(delta.nodes.into_iter().map(|node| (node.id, node)));
        next.admins = delta.admins;
        Some(next)
    }
}

impl Node {
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn room(&self, room: RoomId) -> Option<RoomRoute> {
        self.routes().rooms.get(&room).map(|route| RoomRoute::clone(route))
    }

    pub fn owner_of(&self, room: RoomId) -> Option<NodeId> {
        self.routes().rooms.get(&room).and_then(|route| route.owner)
    }

    pub fn replica_of(&self, room: RoomId) -> Option<NodeId> {
        self.routes().rooms.get(&room).and_then(|route| route.replica)
    }

    fn node_addr(&self, node: NodeId) -> Option<String> {
        self.routes().nodes.get(&node).map(|route| route.addr.clone())
    }

    /// Sends a mesh request to another node by id.
    pub async fn mesh_request(
        &self,
        node: NodeId,
        request: MeshRequest,
        timeout: Duration,
    ) -> Result<MeshResponse, NodeError> {
        let addr = self.node_addr(node).ok_or_else(|| NodeError::Unavailable(format!("node {node} is unknown")))?;
        Ok(self.mesh.request(node, &addr, request, timeout).await?)
    }

    /// Delivers frames of a room to a node's sessions (locally or over the mesh);
    /// `sequenced_ms` as in [`MeshRequest::Deliver`].
    pub fn deliver_to(&self, node: NodeId, room: RoomId, frames: Vec<(Seq, String)>, sequenced_ms: u64) {
        if node == self.id {
            self.hub.deliver(room, frames, sequenced_ms);
            return;
        }
        let Some(route) = self.routes().nodes.get(&node).cloned() else { return };
        if !route.up {
            // A node the catalog calls down gets nothing queued for it (its link would hold
            // it until the queue is full); when it is up again in this node's table, each
            // owner here shows it the newest message (`OwnerCommand::Returned`).
            metrics::counter!("districhat_deliveries_skipped_total").increment(1);
            return;
        }
        let addr = route.addr;
        if let Err(e) = self.mesh.notify(node, &addr, MeshRequest::Deliver { room, frames, sequenced_ms }) {
            tracing::warn!(peer = node, room, error = %e, "delivery dropped; the peer's sessions will resync");
        }
    }

    /// Access check for a user on a room (members only for private rooms; never a user
    /// banned from it), refreshing the routing table once on a miss.
    pub async fn check_access(&self, room: RoomId, user: UserId) -> Result<(), NodeError> {
        self.check_route(room, |route| may_read(route, user)).await
    }

    /// [`Self::check_access`], and the user is not muted in the room now.
    pub async fn check_send(&self, room: RoomId, user: UserId) -> Result<(), NodeError> {
        self.check_access(room, user).await?;
        let now = crate::now_ms();
        match self.room(room) {
            Some(route) if route.muted.iter().any(|(muted, until)| *muted == user && *until > now) => {
                Err(NodeError::Muted)
            }
            _ => Ok(()),
        }
    }

    /// Whether `user` may moderate `room`: its owner, one of its moderators, or a cluster
    /// admin (as of this node's routing table).
    pub fn may_moderate(&self, room: RoomId, user: UserId) -> bool {
        self.routes().admins.contains(&user) || self.room(room).is_some_and(|route| route.moderators.contains(&user))
    }

    /// Runs `check` on the room's route, refreshing the routing table once when it fails
    /// (the table may be older than a join, an unban or the room itself).
    async fn check_route(
        &self,
        room: RoomId,
        check: impl Fn(&RoomRoute) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        if let Some(route) = self.room(room) {
            if check(&route).is_ok() {
                return Ok(());
            }
        }
        let _ = self.refresh_routes().await;
        match self.room(room) {
            Some(route) => check(&route),
            None => Err(NodeError::UnknownRoom),
        }
    }

    /// Sends a chat message through the room's owner. When the send meets a room on the
    /// move (a drain or failover under way: the owner answers "moved", or the routing
    /// table has a new epoch by now), the routing table is refreshed and the send goes
    /// once more to the room's owner: the client's `client_id` makes that safe (the new
    /// owner holds the dedupe index of every message the old one got acknowledged). An
    /// owner that could not be reached at all is not asked twice unless the room moved.
    /// With `limits.sends_in_flight` sends of this node's clients in flight already to
    /// the room's owner node, it is refused at once ([`NodeError::Busy`]): back-pressure
    /// instead of queueing. The bound is per owner node, so a stalled owner fills only its
    /// own rooms' permits, not every room's.
    #[tracing::instrument(skip(self, message), fields(node = self.id, client_id = %message.client_id, owner))]
    pub async fn send_message(&self, room: RoomId, message: Outgoing) -> Result<Sent, NodeError> {
        let placement = |route: RoomRoute| route.owner.map(|owner| (owner, route.epoch));
        let (owner, epoch) = self
            .room(room)
            .and_then(placement)
            .ok_or_else(|| NodeError::Unavailable("the room has no owner yet".into()))?;
        let Ok(_in_flight) = self.send_permits(owner).try_acquire_owned() else {
            metrics::counter!("districhat_sends_refused_busy_total").increment(1);
            return Err(NodeError::Busy);
        };
        tracing::Span::current().record("owner", owner);
        let (error, owner_answered) = match self.send_via(owner, room, message.clone()).await {
            Ok(Ok(sent)) => return Ok(sent),
            Ok(Err(error @ (NodeError::Unavailable(_) | NodeError::StaleEpoch))) => (error, true),
            Ok(Err(error)) => return Err(error),
            Err(unreached) => (unreached, false),
        };
        let _ = self.refresh_routes().await;
        match self.room(room).and_then(placement) {
            Some((new_owner, new_epoch)) if owner_answered || new_epoch != epoch => {
                tracing::debug!(room, owner, new_owner, new_epoch, %error, "the room is moving; sending again");
                self.send_via(new_owner, room, message).await.and_then(|answer| answer)
            }
            _ => Err(error),
        }
    }

    /// The permits for sends of this node's clients in flight to `owner`
    /// (`limits.sends_in_flight` each).
    fn send_permits(&self, owner: NodeId) -> Arc<tokio::sync::Semaphore> {
        let mut permits = self.sends_in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bound = self.config.limits.sends_in_flight.min(tokio::sync::Semaphore::MAX_PERMITS);
        permits.entry(owner).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(bound))).clone()
    }

    /// One attempt at the owner: `Err` when it could not be reached, else its answer.
    async fn send_via(
        &self,
        owner: NodeId,
        room: RoomId,
        message: Outgoing,
    ) -> Result<Result<Sent, NodeError>, NodeError> {
        if owner == self.id {
            return Ok(self.send_local(room, message).await);
        }
        let request = MeshRequest::Send { room, message };
        match self.mesh_request(owner, request, Duration::from_secs(10)).await? {
            MeshResponse::Sent { seq, ts, duplicate } => Ok(Ok(Sent { seq, ts, duplicate })),
            other => Ok(Err(NodeError::from_response(other))),
        }
    }

    pub(super) async fn send_local(&self, room: RoomId, message: Outgoing) -> Result<Sent, NodeError> {
        if self.is_isolated() {
            // The control plane may have moved this room already: let the sender's node
            // look again (docs/REPLICATION.md, "Leases").
            return Err(NodeError::Unavailable("this node lost the control plane; retry".into()));
        }
        let owner_queue = || self.owners_lock().get_mut(&room).map(|owner| owner.queue(self).clone());
        let mut tx = owner_queue();
        if tx.is_none() {
            // Asked as owner before our routing table says so: it may just be stale.
            let _ = self.refresh_routes().await;
            tx = owner_queue();
        }
        let tx = tx.ok_or_else(|| NodeError::Unavailable("this node is taking over the room; retry".into()))?;
        let (reply, answer) = oneshot::channel();
        tx.send(OwnerCommand::Send(Box::new(PendingSend { message, reply, queued: std::time::Instant::now() })))
            .await
            .map_err(|_| NodeError::Unavailable("the room moved; retry".into()))?;
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Unavailable("the room moved; retry".into())),
            Err(_) => Err(NodeError::Unavailable("the room's owner is slow; retry".into())),
        }
    }

    /// Reads messages of a room from its owner, or its replica if the owner fails, with
    /// their current state. Returns (messages, has_more, last_seq).
    pub async fn fetch(
        &self,
        room: RoomId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<Page, NodeError> {
        self.read_from_holders(room, MeshRequest::Fetch { room, after, before, limit }).await
    }

    /// A thread or a user's mentions, from the room's owner or else its replica.
    pub async fn query(&self, room: RoomId, query: LogQuery) -> Result<Page, NodeError> {
        self.read_from_holders(room, MeshRequest::Query { room, query }).await
    }

    /// Asks the room's owner, then its replica, for a read (this node's own copy without
    /// the mesh).
    async fn read_from_holders(&self, room: RoomId, request: MeshRequest) -> Result<Page, NodeError> {
        let route = self.room(room).ok_or(NodeError::UnknownRoom)?;
        let mut last_error = NodeError::Unavailable("the room has no owner or replica".into());
        for holder in [route.owner, route.replica].into_iter().flatten() {
            let result = if holder == self.id {
                match request.clone() {
                    MeshRequest::Fetch { room, after, before, limit } => {
                        self.fetch_local(room, after, before, limit).await
                    }
                    MeshRequest::Query { room, query } => self.query_local(room, query).await,
                    other => Err(NodeError::Internal(format!("not a read: {other:?}"))),
                }
            } else {
                match self.mesh_request(holder, request.clone(), Duration::from_secs(5)).await {
                    Ok(MeshResponse::Messages { messages, has_more, last_seq }) => Ok((messages, has_more, last_seq)),
                    Ok(other) => Err(NodeError::from_response(other)),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(found) => return Ok(found),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Reads this node's copy of a room's log, up to the commit point this node knows
    /// (an owner's own, or the one its owner last told this replica): never a message
    /// that is not acknowledged yet, which a failed round could still give up. Events up
    /// to that point are folded into the messages they change.
    pub async fn fetch_local(
        &self,
        room: RoomId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<Page, NodeError> {
        let limit = limit as usize;
        self.read_local(room, move |log, last_seq| {
            let mut messages = match (after, before) {
                (Some(after), _) => log.after(room, after, limit + 1)?,
                (None, before) => log.before(room, before.unwrap_or(u64::MAX).min(last_seq + 1), limit + 1)?,
            };
            messages.retain(|message| message.seq <= last_seq);
            let has_more = messages.len() > limit;
            messages.truncate(limit);
            Ok((log.fold(room, messages, last_seq)?, has_more))
        })
        .await
    }

    /// A thread or a user's mentions from this node's copy, up to its commit point.
    pub async fn query_local(&self, room: RoomId, query: LogQuery) -> Result<Page, NodeError> {
        self.read_local(room, move |log, last_seq| match query {
            LogQuery::Thread { root } => Ok((log.thread(room, root, last_seq)?, false)),
            LogQuery::Mentions { user, after, limit, newest } => {
                log.mentions(room, &user, (after, last_seq), (limit as usize).min(MAX_MENTIONS), newest)
            }
        })
        .await
    }

    /// Runs `read` on this node's copy of the room with the seq reads stop at: refused
    /// while the copy lacks older messages or its commit point is not known.
    async fn read_local(
        &self,
        room: RoomId,
        read: impl FnOnce(&RoomLog, Seq) -> Result<(Vec<ReadMessage>, bool), StoreError> + Send + 'static,
    ) -> Result<Page, NodeError> {
        let committed = self.readable_up_to(room);
        let log = self.log.clone();
        blocking(move || {
            if log.missing(room)?.is_some() {
                // A read across the range would skip messages (docs/REPLICATION.md, "Reads").
                return Ok(Err(NodeError::Unavailable(
                    "this copy of the room is still receiving older messages".into(),
                )));
            }
            let held = log.last_seq(room)?;
            let last_seq = match committed {
                Some(committed) => held.min(committed),
                None if held == 0 => 0,
                None => {
                    return Ok(Err(NodeError::Unavailable("this copy of the room is not readable yet; retry".into())))
                }
            };
            let (messages, has_more) = read(&log, last_seq)?;
            Ok(Ok((messages, has_more, last_seq)))
        })
        .await?
    }

    /// The seq after which `user` reads `room`: a group-DM member added without its
    /// history sees only what came after (0: everything).
    pub fn history_floor(&self, room: RoomId, user: UserId) -> Seq {
        self.room(room)
            .and_then(|route| route.history_from.iter().find(|(member, _)| *member == user).map(|(_, seq)| *seq))
            .unwrap_or(0)
    }

    /// The commit point reads of `room` on this node stop at (`None`: not known).
    fn readable_up_to(&self, room: RoomId) -> Option<Seq> {
        if let Some(owner) = self.owners_lock().get(&room) {
            return owner.committed();
        }
        self.replica_commits.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&room).copied()
    }

    /// Tells the room's owner which local users follow it.
    pub fn send_interest(&self, room: RoomId, users: Vec<String>) {
        let Some(owner) = self.owner_of(room) else { return };
        let command = MeshRequest::Interest { room, node: self.id, users };
        self.to_owner(owner, room, command);
    }

    pub fn send_typing(&self, room: RoomId, username: String) {
        let Some(owner) = self.owner_of(room) else { return };
        self.to_owner(owner, room, MeshRequest::Typing { room, username });
    }

    fn to_owner(&self, owner: NodeId, room: RoomId, request: MeshRequest) {
        if owner == self.id {
            self.handle_inline(request);
        } else if let Some(addr) = self.node_addr(owner) {
            if let Err(e) = self.mesh.notify(owner, &addr, request) {
                tracing::warn!(peer = owner, room, error = %e, "could not reach the room's owner");
            }
        }
    }

    /// Brings the routing table up to date now: what changed since its version (nothing,
    /// usually, when a client asked for a room that does not exist or is not theirs), the
    /// whole table only when the control cannot say. Callers that miss at the same time
    /// share one fetch: whoever finds a fetch that started after it asked is done. Fetches
    /// start at most every [`REFRESH_SPACING`], so lookups a client makes miss on purpose
    /// cost the control plane a bounded rate of small requests (docs/PROTOCOL.md,
    /// "Routing-table deltas").
    pub async fn refresh_routes(&self) -> anyhow::Result<()> {
        let asked = std::time::Instant::now();
        let mut last = self.refresh.lock().await;
        if *last > asked {
            return Ok(());
        }
        tokio::time::sleep_until((*last + REFRESH_SPACING).into()).await;
        *last = std::time::Instant::now();
        control_link::fetch_changes(self, Duration::from_secs(2)).await
    }

    /// Swaps in the connection-token key of a newer routing table when it changed (empty:
    /// the cluster has no key yet, keep the one from registration).
    fn take_token_key(&self, key: Vec<u8>) {
        // A std lock, never held across an await.
        let mut current = self.token_key.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !key.is_empty() && *current != key {
            *current = key;
            tracing::warn!(
                node = self.id,
                "the connection-token key changed (after a restore); older tokens are refused"
            );
        }
    }

    /// Applies a routing-table delta from a heartbeat reply to this node's table. `false`
    /// when it does not fit (this table is not at the delta's base version, as when a
    /// full fetch moved it meanwhile): the caller then fetches the whole table.
    pub fn apply_delta(&self, mut delta: RoutingDelta) -> bool {
        let current = self.routes();
        if delta.version <= current.version {
            return true; // already as new or newer
        }
        let token_key = std::mem::take(&mut delta.token_key);
        let changed = delta.rooms.iter().map(|room| room.id).chain(delta.removed_rooms.iter().copied()).collect();
        match current.with_delta(delta) {
            Some(next) => {
                self.install_routes(next, token_key, Some(changed));
                true
            }
            None => false,
        }
    }

    /// Installs a newer routing table and acts on it: takes its connection-token key,
    /// starts or stops owners, and makes the sessions of rooms whose owner changed
    /// re-announce themselves and resync.
    pub fn apply_routes(&self, mut table: RoutingTable) {
        let token_key = std::mem::take(&mut table.token_key);
        self.install_routes(Routes::from(table), token_key, None);
    }

    /// [`Self::apply_routes`] for a table already built (whole, or from a delta). With
    /// `changed` (a delta's rooms, changed or removed), only those rooms are looked at for
    /// owners and sessions: every other room's route is the one installed before.
    fn install_routes(&self, new: Routes, token_key: Vec<u8>, changed: Option<HashSet<RoomId>>) {
        let new = Arc::new(new);
        // Held from the swap through the owner updates, so tables are installed one at a
        // time in version order (an older table's owners never follow a newer one's). A
        // std lock, never held across an await.
        let mut owners = self.owners_lock();
        let old = {
            let mut routes = self.routes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if new.version < routes.version {
                return;
            }
            std::mem::replace(&mut *routes, new.clone())
        };
        let owns = |room: &RoomId, epoch: Option<u64>| {
            new.rooms
                .get(room)
                .is_some_and(|route| route.owner == Some(self.id) && epoch.is_none_or(|e| e == route.epoch))
        };
        match &changed {
            None => {
                owners.retain(|room, handle| owns(room, Some(handle.epoch)));
                for route in new.rooms.values() {
                    if route.owner == Some(self.id) && !owners.contains_key(&route.id) {
                        owners.insert(route.id, self.spawn_owner(route));
                    }
                }
            }
            Some(rooms) => {
                for room in rooms {
                    if owners.get(room).is_some_and(|handle| !owns(room, Some(handle.epoch))) {
                        owners.remove(room);
                    }
                    if let Some(route) = new.rooms.get(room).filter(|_| owns(room, None)) {
                        owners.entry(*room).or_insert_with(|| self.spawn_owner(route));
                    }
                }
            }
        }
        let owned = owners.len();
        // Under the owners' lock, after the changes: see `Node::room_report`.
        self.report_generation.advance();
        drop(owners);
        self.take_token_key(token_key);
        // Nodes up again in this table: owners skipped their deliveries while they were
        // down (see `deliver_to`), so each owner shows them its newest message. Nodes down
        // in this table: their users leave the presence of the rooms owned here.
        let (mut returned, mut down) = (Vec::new(), Vec::new());
        for node in new.nodes.values() {
            match (old.nodes.get(&node.id).map(|before| before.up), node.up) {
                (Some(false), true) => returned.push(node.id),
                (Some(true), false) => down.push(node.id),
                _ => {}
            }
        }
        self.show_newest_to(&returned);
        self.tell_running_owners(&down, |node| OwnerCommand::Down { node });
        // Every peer that serves sessions has a link from here, so it learns of this
        // process's incarnation as soon as this node knows it (see `Node::peer_connected`).
        for peer in new.nodes.values().filter(|peer| peer.up && peer.id != self.id) {
            self.mesh.dial(peer.id, &peer.addr);
        }
        for room in self.hub.rooms() {
            if changed.as_ref().is_some_and(|rooms| !rooms.contains(&room)) {
                continue;
            }
            let before = old.rooms.get(&room).map(|r| (r.owner, r.epoch));
            let after = new.rooms.get(&room).map(|r| (r.owner, r.epoch));
            if before != after {
                self.send_interest(room, self.hub.users(room));
                self.hub.resync(room);
            }
            // A ban, a kick or a removal from a private room ends live subscriptions too,
            // not only the next subscribe, send or read.
            let access = |r: &RoomRoute| (r.private, r.members.clone(), r.banned.clone());
            if let Some(route) = new.rooms.get(&room) {
                if old.rooms.get(&room).map(|r| access(r)) != Some(access(route)) {
                    self.hub.revoke(room, |user| may_read(route, user).err().map(|e| e.code()));
                }
            }
        }
        metrics::gauge!("districhat_node_rooms_owned", "node" => self.id.to_string()).set(owned as f64);
    }

    /// Starts the owner task of `route`'s room, with any interest that came for the room
    /// before this node's table had it (`early_interest`). Called with `owners` held.
    fn spawn_owner(&self, route: &RoomRoute) -> OwnerHandle {
        let mut handle = OwnerHandle::spawn(self, route.id, route.epoch, route.replica_in_sync);
        for (node, users) in self.take_early_interest(route.id) {
            let _ = handle.queue(self).try_send(OwnerCommand::Interest { node, users });
        }
        handle
    }
}

/// Whether `user` may read and write `room`: members only for private rooms, and never a
/// user banned from it.
fn may_read(route: &RoomRoute, user: UserId) -> Result<(), NodeError> {
    if route.banned.contains(&user) {
        Err(NodeError::Banned)
    } else if route.private && !route.members.contains(&user) {
        Err(NodeError::Forbidden)
    } else {
        Ok(())
    }
}
