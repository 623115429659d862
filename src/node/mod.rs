//! A chat node: browser WebSockets, the rooms it owns (sequencer + durable log copied to
//! a replica), the replica copies of other nodes' rooms, and mesh links to other nodes.
//!
//! [`start`] registers with the control plane, opens the room log, starts the heartbeat
//! and the HTTP server (`/ws`, `/mesh`, `/internal/...`) and returns a [`NodeHandle`].
//! The shared [`Node`] is what every part holds: routing table, owners, hub, mesh, log.

pub mod config;
mod control_link;
mod http;
pub mod hub;
pub mod log;
pub mod mesh;
pub mod owner;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use self::config::NodeConfig;
use self::hub::Hub;
use self::log::{Fenced, Replicated, RoomLog};
use self::mesh::{Dispatch, Mesh};
use self::owner::{blocking, OwnerCommand, OwnerHandle, Sent};
use crate::control::secret::ClusterSecret;
use crate::protocol::{
    MeshRequest, MeshResponse, MessageStamp, NodeId, NodeRoute, Outgoing, RoomId, RoomRoute, RoutingTable, Seq,
    StoredMessage, UserId,
};

/// A failure on the message path, with the stable code browsers see.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Unavailable(String),
    #[error("this room is for its members only")]
    Forbidden,
    #[error("no such room")]
    UnknownRoom,
    #[error("the sender's epoch is stale")]
    StaleEpoch,
    /// A replica does not hold the entry a `Replicate` follows (docs/REPLICATION.md).
    #[error("the replica's log does not hold the entry these messages follow")]
    LogMismatch,
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Forbidden => "forbidden",
            Self::UnknownRoom => "unknown_room",
            Self::StaleEpoch => "stale_epoch",
            Self::LogMismatch => "log_mismatch",
            Self::Internal(_) => "internal",
        }
    }

    /// The error a peer answered with (or a protocol mismatch).
    pub fn from_response(response: MeshResponse) -> Self {
        match response {
            MeshResponse::Error { code, message } => match code.as_str() {
                "forbidden" => Self::Forbidden,
                "unknown_room" => Self::UnknownRoom,
                "stale_epoch" => Self::StaleEpoch,
                "log_mismatch" => Self::LogMismatch,
                "unavailable" => Self::Unavailable(message),
                _ => Self::Internal(message),
            },
            other => Self::Internal(format!("unexpected mesh answer {other:?}")),
        }
    }

    fn into_response(self) -> MeshResponse {
        MeshResponse::Error { code: self.code().into(), message: self.to_string() }
    }
}

impl From<mesh::MeshError> for NodeError {
    fn from(e: mesh::MeshError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The routing table as lookups.
#[derive(Debug, Default)]
pub struct Routes {
    pub version: u64,
    pub rooms: HashMap<RoomId, RoomRoute>,
    pub nodes: HashMap<NodeId, NodeRoute>,
}

impl From<RoutingTable> for Routes {
    fn from(table: RoutingTable) -> Self {
        Self {
            version: table.version,
            rooms: table.rooms.into_iter().map(|room| (room.id, room)).collect(),
            nodes: table.nodes.into_iter().map(|node| (node.id, node)).collect(),
        }
    }
}

/// Shared state of a running node.
pub struct NodeInner {
    pub id: NodeId,
    pub name: String,
    /// `host:port` others reach this node at.
    pub addr: String,
    pub config: NodeConfig,
    pub log: RoomLog,
    pub mesh: Mesh,
    pub hub: Hub,
    pub http: reqwest::Client,
    pub secret: ClusterSecret,
    /// HMAC key for connection tokens (from registration).
    pub token_key: RwLock<Vec<u8>>,
    routes: RwLock<Arc<Routes>>,
    /// Rooms this node owns now, one sequencer task each.
    owners: Mutex<HashMap<RoomId, OwnerHandle>>,
    /// Per room this node replicates, the highest commit point an owner told it: reads
    /// served from this copy stop there (docs/REPLICATION.md, "Reads"). In memory: after
    /// a restart this copy serves no reads until the owner's next `Replicate`.
    replica_commits: Mutex<HashMap<RoomId, Seq>>,
    /// Serialises routing refreshes triggered by lookups that missed.
    refresh: tokio::sync::Mutex<std::time::Instant>,
    /// The control member believed to lead (`http://host:port`).
    leader_url: Mutex<String>,
    pub connections: AtomicU64,
    messages: AtomicU64,
    next_session: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// True while the control-plane lease has run out (see `NodeConfig::control_lease_ms`):
    /// owners refuse sends and sessions close with 4009. Set by the heartbeat loop.
    isolated: watch::Sender<bool>,
}

/// A cheap handle on the node's shared state.
#[derive(Clone)]
pub struct Node(Arc<NodeInner>);

impl Deref for Node {
    type Target = NodeInner;
    fn deref(&self) -> &NodeInner {
        &self.0
    }
}

/// A running node.
pub struct NodeHandle {
    pub node: Node,
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    pub fn id(&self) -> NodeId {
        self.node.id
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.node.addr)
    }

    /// Stops everything: listener, sessions, mesh links, owners, heartbeats.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.node.owners_lock().clear();
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                abort.abort();
            }
        }
        tracing::info!(node = self.node.id, "node stopped");
    }
}

/// Runs a node from its config file until Ctrl-C / SIGTERM.
pub async fn run_from_config(config: &Path, secret: Option<String>) -> anyhow::Result<()> {
    let mut config = NodeConfig::load(config)?;
    if let Some(secret) = secret {
        config.cluster_secret = secret;
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let listener = crate::bind_listener(&config.listen).await?;
    let handle = start(config, listener).await?;
    crate::shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// Starts a node on `listener`: registers, opens its log, serves.
pub async fn start(config: NodeConfig, listener: TcpListener) -> anyhow::Result<NodeHandle> {
    crate::telemetry::install_metrics();
    let addr = listener.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let http = reqwest::Client::builder().connect_timeout(Duration::from_millis(500)).build()?;
    let secret = ClusterSecret::new(config.cluster_secret.as_str());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (registration, leader_url) =
        control_link::register(&http, &config, &secret, &advertise, shutdown_rx.clone()).await?;
    let dir = config.data_dir.clone();
    let fsync = config.replication.fsync;
    let memory = config.storage.clone();
    let log = tokio::task::spawn_blocking(move || RoomLog::open(&dir, fsync, &memory)).await??;
    let node = Node(Arc::new(NodeInner {
        id: registration.node_id,
        name: config.name.clone(),
        addr: advertise,
        mesh: Mesh::new(secret.clone(), shutdown_rx.clone()),
        config,
        log,
        hub: Hub::default(),
        http,
        secret,
        token_key: RwLock::new(registration.token_key),
        routes: RwLock::default(),
        owners: Mutex::default(),
        replica_commits: Mutex::default(),
        refresh: tokio::sync::Mutex::new(std::time::Instant::now() - Duration::from_secs(1)),
        leader_url: Mutex::new(leader_url),
        connections: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        next_session: AtomicU64::new(1),
        shutdown: shutdown_rx.clone(),
        isolated: watch::Sender::new(false),
    }));
    let router = http::router(node.clone());
    let mut stop = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the node's HTTP server stopped");
        }
    });
    let dir = node.config.data_dir.clone();
    tokio::spawn(crate::telemetry::export_rocksdb_size(dir, "node", node.name.clone(), shutdown_rx.clone()));
    let heartbeat = tokio::spawn(control_link::heartbeat_loop(node.clone(), shutdown_rx));
    // Learn the rooms before taking traffic.
    if let Err(e) = node.refresh_routes().await {
        tracing::warn!(error = %e, "no routing table yet; the heartbeat will bring it");
    }
    tracing::info!(node = node.id, name = %node.name, addr = %node.addr, "chat node started");
    Ok(NodeHandle { node, addr, shutdown, tasks: vec![server, heartbeat] })
}

impl Node {
    fn owners_lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, OwnerHandle>> {
        self.owners.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn room(&self, room: RoomId) -> Option<RoomRoute> {
        self.routes().rooms.get(&room).cloned()
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

    pub fn count_messages(&self, n: u64) {
        self.messages.fetch_add(n, Ordering::Relaxed);
    }

    pub fn messages_total(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn owned_rooms(&self) -> usize {
        self.owners_lock().len()
    }

    /// Rooms `routes` gives this node to own whose owner does not take sends yet: not
    /// started for that epoch, or still syncing its replica. Read against one routing
    /// table, so a table being installed right now counts its new owners as syncing.
    pub fn rooms_syncing(&self, routes: &Routes) -> usize {
        let owners = self.owners_lock();
        routes
            .rooms
            .values()
            .filter(|route| route.owner == Some(self.id))
            .filter(|route| owners.get(&route.id).is_none_or(|owner| owner.epoch != route.epoch || !owner.is_ready()))
            .count()
    }

    /// (room, epoch) of the rooms `routes` gives this node to own, with a replica the
    /// table does not show in sync, whose owner synced that replica at that epoch and
    /// finished any background copy to it: what the next heartbeat reports
    /// (docs/REPLICATION.md, "The configuration and who may change it", I9).
    pub fn replicas_synced(&self, routes: &Routes) -> Vec<(RoomId, u64)> {
        let owners = self.owners_lock();
        routes
            .rooms
            .values()
            .filter(|route| route.owner == Some(self.id) && route.replica.is_some() && !route.replica_in_sync)
            .filter(|route| {
                owners.get(&route.id).is_some_and(|owner| owner.epoch == route.epoch && owner.replica_complete())
            })
            .map(|route| (route.id, route.epoch))
            .collect()
    }

    /// Whether this node's control-plane lease has run out.
    pub fn is_isolated(&self) -> bool {
        *self.isolated.borrow()
    }

    /// Notified when the lease runs out or is regained.
    pub fn isolation(&self) -> watch::Receiver<bool> {
        self.isolated.subscribe()
    }

    /// Records whether the lease has run out; logs the changes.
    fn set_isolated(&self, isolated: bool) {
        let changed = self.isolated.send_if_modified(|current| std::mem::replace(current, isolated) != isolated);
        if changed && isolated {
            tracing::warn!(node = self.id, "no leader answered for the lease: refusing sends and closing connections");
        } else if changed {
            tracing::info!(node = self.id, "the control plane answers again: taking sends and connections");
        }
    }

    pub fn leader_url(&self) -> String {
        self.leader_url.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_leader_url(&self, url: String) {
        *self.leader_url.lock().unwrap_or_else(|p| p.into_inner()) = url;
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

    /// Access check for a user on a room, refreshing the routing table once on a miss.
    pub async fn check_access(&self, room: RoomId, user: UserId) -> Result<(), NodeError> {
        let allowed = |route: &RoomRoute| !route.private || route.members.contains(&user);
        match self.room(room) {
            Some(route) if allowed(&route) => return Ok(()),
            _ => {
                let _ = self.refresh_routes().await;
            }
        }
        match self.room(room) {
            Some(route) if allowed(&route) => Ok(()),
            Some(_) => Err(NodeError::Forbidden),
            None => Err(NodeError::UnknownRoom),
        }
    }

    /// Sends a chat message through the room's owner. When the send meets a room on the
    /// move (a drain or failover under way: the owner answers "moved", or the routing
    /// table has a new epoch by now), the routing table is refreshed and the send goes
    /// once more to the room's owner: the client's `client_id` makes that safe (the new
    /// owner holds the dedupe index of every message the old one got acknowledged). An
    /// owner that could not be reached at all is not asked twice unless the room moved.
    #[tracing::instrument(skip(self, message), fields(node = self.id, client_id = %message.client_id, owner))]
    pub async fn send_message(&self, room: RoomId, message: Outgoing) -> Result<Sent, NodeError> {
        let placement = |route: RoomRoute| route.owner.map(|owner| (owner, route.epoch));
        let (owner, epoch) = self
            .room(room)
            .and_then(placement)
            .ok_or_else(|| NodeError::Unavailable("the room has no owner yet".into()))?;
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

    async fn send_local(&self, room: RoomId, message: Outgoing) -> Result<Sent, NodeError> {
        if self.is_isolated() {
            // The control plane may have moved this room already: let the sender's node
            // look again (docs/REPLICATION.md, "Leases").
            return Err(NodeError::Unavailable("this node lost the control plane; retry".into()));
        }
        let mut tx = self.owners_lock().get(&room).map(|owner| owner.tx.clone());
        if tx.is_none() {
            // Asked as owner before our routing table says so: it may just be stale.
            let _ = self.refresh_routes().await;
            tx = self.owners_lock().get(&room).map(|owner| owner.tx.clone());
        }
        let tx = tx.ok_or_else(|| NodeError::Unavailable("this node is taking over the room; retry".into()))?;
        let (reply, answer) = oneshot::channel();
        tx.send(OwnerCommand::Send { message, reply })
            .await
            .map_err(|_| NodeError::Unavailable("the room moved; retry".into()))?;
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Unavailable("the room moved; retry".into())),
            Err(_) => Err(NodeError::Unavailable("the room's owner is slow; retry".into())),
        }
    }

    /// Reads messages of a room from its owner, or its replica if the owner fails.
    /// Returns (messages, has_more, last_seq).
    pub async fn fetch(
        &self,
        room: RoomId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool, Seq), NodeError> {
        let route = self.room(room).ok_or(NodeError::UnknownRoom)?;
        let mut last_error = NodeError::Unavailable("the room has no owner or replica".into());
        for holder in [route.owner, route.replica].into_iter().flatten() {
            let result = if holder == self.id {
                self.fetch_local(room, after, before, limit).await
            } else {
                let request = MeshRequest::Fetch { room, after, before, limit };
                match self.mesh_request(holder, request, Duration::from_secs(5)).await {
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
    /// that is not acknowledged yet, which a failed round could still give up.
    pub async fn fetch_local(
        &self,
        room: RoomId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool, Seq), NodeError> {
        let committed = self.readable_up_to(room);
        let log = self.log.clone();
        let limit = limit as usize;
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
            let mut messages = match (after, before) {
                (Some(after), _) => log.after(room, after, limit + 1)?,
                (None, before) => log.before(room, before.unwrap_or(u64::MAX).min(last_seq + 1), limit + 1)?,
            };
            messages.retain(|message| message.seq <= last_seq);
            let has_more = messages.len() > limit;
            messages.truncate(limit);
            Ok(Ok((messages, has_more, last_seq)))
        })
        .await?
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

    /// Fetches the whole routing table from the control plane. Callers that miss at the
    /// same time share one fetch: whoever finds a fetch that started after it asked is done.
    pub async fn refresh_routes(&self) -> anyhow::Result<()> {
        let asked = std::time::Instant::now();
        let mut last = self.refresh.lock().await;
        if *last > asked {
            return Ok(());
        }
        *last = std::time::Instant::now();
        let table = control_link::fetch_routes(self).await?;
        self.apply_routes(table);
        Ok(())
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

    /// Installs a newer routing table and acts on it: takes its connection-token key,
    /// starts or stops owners, and makes the sessions of rooms whose owner changed
    /// re-announce themselves and resync.
    pub fn apply_routes(&self, mut table: RoutingTable) {
        let token_key = std::mem::take(&mut table.token_key);
        let new = Arc::new(Routes::from(table));
        let old = {
            let mut routes = self.routes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if new.version < routes.version {
                return;
            }
            std::mem::replace(&mut *routes, new.clone())
        };
        self.take_token_key(token_key);
        // Nodes up again in this table: owners skipped their deliveries while they were
        // down (see `deliver_to`), so each owner shows them its newest message.
        let returned: Vec<NodeId> = new
            .nodes
            .values()
            .filter(|node| node.up && old.nodes.get(&node.id).is_some_and(|before| !before.up))
            .map(|node| node.id)
            .collect();
        {
            let mut owners = self.owners_lock();
            for handle in owners.values() {
                for node in &returned {
                    let _ = handle.tx.try_send(OwnerCommand::Returned { node: *node });
                }
            }
            owners.retain(|room, handle| {
                new.rooms.get(room).is_some_and(|route| route.owner == Some(self.id) && route.epoch == handle.epoch)
            });
            for route in new.rooms.values() {
                if route.owner == Some(self.id) && !owners.contains_key(&route.id) {
                    owners.insert(route.id, owner::spawn(self.clone(), route.id, route.epoch));
                }
            }
        }
        for room in self.hub.rooms() {
            let before = old.rooms.get(&room).map(|r| (r.owner, r.epoch));
            let after = new.rooms.get(&room).map(|r| (r.owner, r.epoch));
            if before != after {
                self.send_interest(room, self.hub.users(room));
                self.hub.resync(room);
            }
        }
        metrics::gauge!("districhat_node_rooms_owned", "node" => self.id.to_string()).set(self.owned_rooms() as f64);
    }
}

impl Dispatch for Node {
    fn handle_inline(&self, request: MeshRequest) {
        match request {
            MeshRequest::Deliver { room, frames, sequenced_ms } => self.hub.deliver(room, frames, sequenced_ms),
            MeshRequest::Interest { room, node, users } => {
                if let Some(owner) = self.owners_lock().get(&room) {
                    let _ = owner.tx.try_send(OwnerCommand::Interest { node, users });
                }
            }
            MeshRequest::Typing { room, username } => {
                if let Some(owner) = self.owners_lock().get(&room) {
                    let _ = owner.tx.try_send(OwnerCommand::Typing { username });
                }
            }
            other => tracing::warn!(request = ?other, "a request that wants an answer came without an id"),
        }
    }

    async fn handle(&self, request: MeshRequest) -> MeshResponse {
        let result = match request {
            MeshRequest::Send { room, message } => {
                let span = tracing::info_span!("owner_send", node = self.id, room, client_id = %message.client_id, seq = tracing::field::Empty);
                let sent = self.send_local(room, message).instrument(span.clone()).await;
                sent.map(|sent| {
                    span.record("seq", sent.seq);
                    MeshResponse::Sent { seq: sent.seq, ts: sent.ts, duplicate: sent.duplicate }
                })
            }
            MeshRequest::Replicate { room, epoch, prev, committed, messages } => {
                self.store_replica(room, epoch, prev, committed, messages).await
            }
            MeshRequest::Adopt { room, epoch, base } => self.adopt(room, epoch, base).await,
            MeshRequest::Seed { room, epoch, after, message } => self.store_seed(room, epoch, after, message).await,
            MeshRequest::Backfill { room, epoch, messages } => self.store_backfill(room, epoch, messages).await,
            MeshRequest::Fetch { room, after, before, limit } => self
                .fetch_local(room, after, before, limit.min(1_000))
                .await
                .map(|(messages, has_more, last_seq)| MeshResponse::Messages { messages, has_more, last_seq }),
            other => {
                self.handle_inline(other);
                Err(NodeError::Internal("this request takes no answer".into()))
            }
        };
        result.unwrap_or_else(NodeError::into_response)
    }
}

impl Node {
    /// Replica side of replication: refuse a stale epoch or messages that do not follow
    /// this log (docs/REPLICATION.md, "Log matching"), else store durably and remember
    /// the owner's commit point for reads.
    #[tracing::instrument(skip(self, prev, messages), fields(
        node = self.id,
        count = messages.len(),
        first_seq = messages.first().map_or(0, |m| m.seq),
        last_seq = messages.last().map_or(0, |m| m.seq),
    ))]
    async fn store_replica(
        &self,
        room: RoomId,
        epoch: u64,
        prev: Option<MessageStamp>,
        committed: Seq,
        messages: Vec<StoredMessage>,
    ) -> Result<MeshResponse, NodeError> {
        let log = self.log.clone();
        let last = messages.last().map_or(0, |m| m.seq);
        match blocking(move || log.replicate_at(room, epoch, prev.as_ref(), &messages)).await? {
            Fenced::Done(Replicated::Stored) => {
                let mut commits = self.replica_commits.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let known = commits.entry(room).or_insert(0);
                *known = (*known).max(committed);
                Ok(MeshResponse::Stored { seq: last })
            }
            Fenced::Done(Replicated::Gap) => Err(NodeError::LogMismatch),
            Fenced::Stale { .. } => Err(NodeError::StaleEpoch),
        }
    }

    /// A new owner makes this node its replica at `epoch`: drop what lies past `base` and
    /// show the owner the stamps of what is left at the end, so it can spot a stale tail.
    async fn adopt(&self, room: RoomId, epoch: u64, base: Seq) -> Result<MeshResponse, NodeError> {
        // What a new owner may make a replica drop is at most one unacknowledged batch (an
        // owner commits one batch at a time). More means the new owner lacks messages this
        // node holds (it was promoted before it had the log): refuse rather than delete
        // what may have been acknowledged; the owner stays unready and says so.
        let log = self.log.clone();
        let held = blocking(move || log.last_seq(room)).await?;
        if held > base.saturating_add(owner::MAX_BATCH as Seq) {
            tracing::error!(room, epoch, base, held, "refusing to adopt an owner whose log is behind this replica's");
            return Err(NodeError::Internal(format!(
                "this replica holds room {room} up to seq {held}; the new owner's log ends at {base}:                  refusing to drop {} messages",
                held - base
            )));
        }
        let log = self.log.clone();
        let (last_seq, dropped) = match blocking(move || log.take_epoch(room, epoch, Some(base))).await? {
            Fenced::Done(taken) => taken,
            Fenced::Stale { .. } => return Err(NodeError::StaleEpoch),
        };
        if dropped > 0 {
            tracing::info!(room, epoch, dropped, "dropped unacknowledged messages past the new owner's log");
        }
        // Only the owner at `epoch` (busy waiting for this answer) or a newer one writes
        // the room now, so this read belongs with the truncation above.
        let log = self.log.clone();
        let (tail, missing) =
            blocking(move || Ok((log.tail_stamps(room, owner::MAX_BATCH)?, log.missing(room)?))).await?;
        Ok(MeshResponse::Adopted { last_seq, tail, missing })
    }

    /// A seeded replica: store the owner's newest entry and record what lies between as
    /// missing (docs/REPLICATION.md, "Background copy").
    async fn store_seed(
        &self,
        room: RoomId,
        epoch: u64,
        after: Seq,
        message: StoredMessage,
    ) -> Result<MeshResponse, NodeError> {
        let log = self.log.clone();
        match blocking(move || log.seed_at(room, epoch, after, &message)).await? {
            Fenced::Done(Ok(missing)) => {
                tracing::info!(room, epoch, ?missing, "seeded by the owner; receiving the older log in the background");
                Ok(MeshResponse::Copied { missing })
            }
            Fenced::Done(Err(_)) => Err(NodeError::LogMismatch),
            Fenced::Stale { .. } => Err(NodeError::StaleEpoch),
        }
    }

    /// A chunk of the older log for this replica's missing range.
    async fn store_backfill(
        &self,
        room: RoomId,
        epoch: u64,
        messages: Vec<StoredMessage>,
    ) -> Result<MeshResponse, NodeError> {
        let log = self.log.clone();
        match blocking(move || log.backfill_at(room, epoch, &messages)).await? {
            Fenced::Done(missing) => Ok(MeshResponse::Copied { missing }),
            Fenced::Stale { .. } => Err(NodeError::StaleEpoch),
        }
    }
}
