//! A chat node: browser WebSockets, the rooms it owns (sequencer + durable log copied to
//! a replica), the replica copies of other nodes' rooms, and mesh links to other nodes.
//!
//! This module is the start-up and the handle: [`start`] registers with the control
//! plane, opens the room log, starts the heartbeat and the HTTP server (`/ws`, `/mesh`,
//! `/internal/...`) and returns a [`NodeHandle`]. The shared [`Node`] is what every part
//! holds: routing table, owners, hub, mesh, log. The parts, by concern:
//!
//! - `routing`: the routing table ([`Routes`]) and where each request goes: sends through
//!   the owner, reads from the owner or its replica, deliveries, installing a new table.
//! - [`owner`]: one task per owned room (group commit, replication, fan-out);
//!   `sequencer`: giving a batch's sends their seqs.
//! - `replica`: the replica side (store, adopt a new owner's epoch, seed and backfill).
//! - `dispatch`: the answers to mesh requests from other nodes.
//! - [`log`]: the room logs in RocksDB, epoch fences. [`mesh`]: node-to-node links.
//! - `session`: one browser WebSocket. [`hub`]: local fan-out to sessions.
//! - `control_link`: registration, heartbeats, the control-plane lease.
//! - `http`: `/ws`, `/mesh`, internal history, backups. [`config`]: the node's config.

pub mod config;
mod control_link;
mod dispatch;
mod early_interest;
mod events;
pub mod frames;
mod http;
pub mod hub;
pub mod log;
pub mod mesh;
pub mod owner;
mod owner_handle;
mod replica;
pub mod routing;
mod sequencer;
mod session;
pub mod subscription;

pub use self::routing::Routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::config::NodeConfig;
use self::hub::Hub;
use self::log::RoomLog;
use self::mesh::{Mesh, MeshOrigin};
use self::owner::OwnerCommand;
use self::owner_handle::{OwnerHandle, ReportGeneration};
use crate::control::secret::ClusterSecret;
use crate::protocol::{MeshResponse, NodeId, RoomId, Seq};

/// A failure on the message path, with the stable code browsers see.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Unavailable(String),
    #[error("this room is for its members only")]
    Forbidden,
    #[error("no such room")]
    UnknownRoom,
    #[error("you are muted in this room for now")]
    Muted,
    #[error("you are banned from this room")]
    Banned,
    /// A message event names a message the room does not hold (or one deleted).
    #[error("no such message in this room")]
    NoSuchMessage,
    /// A message event the sender may not make (editing another's message, deleting one
    /// without moderating the room).
    #[error("{0}")]
    NotAllowed(String),
    /// This node has `limits.sends_in_flight` sends of its clients in flight already to
    /// the room's owner node (it is saturated): the send was refused before any work,
    /// unsequenced.
    #[error("the chat is busy; slow down and retry")]
    Busy,
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
            Self::Muted => "muted",
            Self::Banned => "banned",
            Self::NoSuchMessage => "not_found",
            Self::NotAllowed(_) => "forbidden",
            Self::Busy => "rate_limited",
            Self::StaleEpoch => "stale_epoch",
            Self::LogMismatch => "log_mismatch",
            Self::Internal(_) => "internal",
        }
    }

    /// The error a peer answered with (or a protocol mismatch).
    pub fn from_response(response: MeshResponse) -> Self {
        match response {
            MeshResponse::Error { code, message } => match code.as_str() {
                "forbidden" if message == Self::Forbidden.to_string() => Self::Forbidden,
                "forbidden" => Self::NotAllowed(message),
                "unknown_room" => Self::UnknownRoom,
                "muted" => Self::Muted,
                "banned" => Self::Banned,
                "not_found" => Self::NoSuchMessage,
                "rate_limited" => Self::Busy,
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

/// What a heartbeat says of this node's rooms ([`Node::room_report`]).
#[derive(Debug, Default, Clone)]
pub struct RoomReport {
    /// Rooms the table gives this node to hold a replica of.
    pub replicated: usize,
    /// Rooms the table gives this node to own whose owner does not take sends yet: not
    /// started for that epoch, or still syncing its replica (a dormant owner, with
    /// nothing to sync, is not counted). A table being installed right now counts its new
    /// owners as syncing.
    pub syncing: usize,
    /// (room, epoch) of the rooms this node owns, with a replica the table does not show
    /// in sync, whose owner synced that replica at that epoch and finished any background
    /// copy to it (docs/REPLICATION.md, "The configuration and who may change it", I9).
    pub synced_replicas: Vec<(RoomId, u64)>,
}

/// Shared state of a running node.
pub struct NodeInner {
    pub id: NodeId,
    pub name: String,
    /// The newest incarnation each peer dialled this node as (`Node::peer_connected`).
    peer_incarnations: Mutex<HashMap<NodeId, u64>>,
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
    /// Rooms this node owns now: a handle each, with its sequencer task unless parked.
    owners: Mutex<HashMap<RoomId, OwnerHandle>>,
    /// Interest for rooms this node has no owner task for yet, handed to the task when it
    /// starts ([`early_interest`]). Taken only while holding `owners` (lock order: owners,
    /// then this).
    early_interest: Mutex<early_interest::EarlyInterest>,
    /// Per room this node replicates, the highest commit point an owner told it: reads
    /// served from this copy stop there (docs/REPLICATION.md, "Reads"). In memory: after
    /// a restart this copy serves no reads until the owner's next `Replicate`.
    replica_commits: Mutex<HashMap<RoomId, Seq>>,
    /// Serialises routing refreshes triggered by lookups that missed.
    refresh: tokio::sync::Mutex<std::time::Instant>,
    /// The control member believed to lead (`http://host:port`).
    leader_url: Mutex<String>,
    pub connections: AtomicU64,
    /// Per owner node, the permits for the sends of this node's clients in flight to it
    /// (`limits.sends_in_flight` each).
    sends_in_flight: Mutex<HashMap<NodeId, Arc<tokio::sync::Semaphore>>>,
    /// One permit per browser WebSocket this node may hold: `limits.max_connections`,
    /// or fewer when the open-file limit in force leaves less ([`connection_cap`]).
    pub browser_slots: Arc<tokio::sync::Semaphore>,
    /// Per replica node, the turns for owners here taking their room over in the
    /// background: at most [`owner::TAKEOVERS_IN_FLIGHT`] at once each (an owner with a
    /// send waiting does not wait for one).
    takeovers: Mutex<HashMap<NodeId, Arc<tokio::sync::Semaphore>>>,
    messages: AtomicU64,
    /// Owner tasks running (owners not parked: [`owner_handle`]).
    owner_tasks: AtomicU64,
    /// Changes to the owners a heartbeat report reads (see [`Node::room_report`]).
    report_generation: ReportGeneration,
    /// The last report: (generation, routing-table version, report).
    last_report: Mutex<Option<(u64, u64, RoomReport)>>,
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
        {
            let mut owners = self.node.owners_lock();
            owners.clear();
            // Under the owners' lock, after the change: see `Node::room_report`.
            self.node.report_generation.advance();
        }
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
    raise_file_limit(&config);
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
    let incarnation = mesh::next_incarnation(&config.data_dir)?;
    let browser_slots = Arc::new(tokio::sync::Semaphore::new(connection_cap(&config)));
    let node = Node(Arc::new(NodeInner {
        id: registration.node_id,
        name: config.name.clone(),
        addr: advertise,
        mesh: Mesh::new(
            secret.clone(),
            Some(MeshOrigin { node: registration.node_id, incarnation }),
            shutdown_rx.clone(),
            config.mesh.link_queue,
        ),
        peer_incarnations: Mutex::default(),
        sends_in_flight: Mutex::default(),
        config,
        log,
        hub: Hub::default(),
        http,
        secret,
        token_key: RwLock::new(registration.token_key),
        routes: RwLock::default(),
        owners: Mutex::default(),
        early_interest: Mutex::default(),
        replica_commits: Mutex::default(),
        refresh: tokio::sync::Mutex::new(std::time::Instant::now() - Duration::from_secs(1)),
        leader_url: Mutex::new(leader_url),
        connections: AtomicU64::new(0),
        browser_slots,
        takeovers: Mutex::default(),
        messages: AtomicU64::new(0),
        owner_tasks: AtomicU64::new(0),
        report_generation: ReportGeneration::default(),
        last_report: Mutex::default(),
        next_session: AtomicU64::new(1),
        shutdown: shutdown_rx.clone(),
        isolated: watch::Sender::new(false),
    }));
    let server = http::serve(listener, node.clone(), shutdown_rx.clone());
    let dir = node.config.data_dir.clone();
    tokio::spawn(crate::telemetry::export_rocksdb_size(dir, "node", node.name.clone(), shutdown_rx.clone()));
    tokio::spawn(repair_losses(node.clone(), shutdown_rx.clone()));
    let heartbeat = tokio::spawn(control_link::heartbeat_loop(node.clone(), shutdown_rx));
    // Learn the rooms before taking traffic.
    if let Err(e) = node.refresh_routes().await {
        tracing::warn!(error = %e, "no routing table yet; the heartbeat will bring it");
    }
    tracing::info!(node = node.id, name = %node.name, addr = %node.addr, "chat node started");
    Ok(NodeHandle { node, addr, shutdown, tasks: vec![server, heartbeat] })
}

/// Raises the process's open-file limit to what `limits.max_connections` browsers and
/// [`crate::fd_limit::NODE_RESERVE`] need (a process-wide setting: the binary's start
/// path does it, not [`start`], which tests run in their own process).
fn raise_file_limit(config: &NodeConfig) {
    let wanted = (config.limits.max_connections as u64).saturating_add(crate::fd_limit::NODE_RESERVE);
    match crate::fd_limit::raise_to(wanted) {
        Ok(limit) if limit.soft < wanted => tracing::warn!(
            wanted,
            soft = limit.soft,
            hard = limit.hard,
            "the open-file limit stays below what limits.max_connections needs; raise it \
             (LimitNOFILE=, ulimit -n) or run as root: this node takes fewer connections"
        ),
        Ok(limit) => tracing::info!(soft = limit.soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Browser WebSockets this node holds at once: `limits.max_connections`, but no more
/// than the open-file limit in force leaves after [`crate::fd_limit::NODE_RESERVE`] (a
/// quarter of a small limit: 768 of the common 1,024).
fn connection_cap(config: &NodeConfig) -> usize {
    let configured = config.limits.max_connections;
    let Ok(limit) = crate::fd_limit::current() else { return configured };
    let reserve = crate::fd_limit::NODE_RESERVE.min(limit.soft / 4);
    let fits = usize::try_from(limit.soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    if fits < configured {
        tracing::warn!(
            configured,
            fits,
            soft = limit.soft,
            "taking at most {fits} browser connections: the open-file limit leaves no more"
        );
    }
    configured.min(fits).max(1)
}

/// How often at most the owners here show peers their newest messages after losses: a
/// saturated link records a loss per dropped frame.
const LOSS_REPAIR_EVERY: Duration = Duration::from_millis(100);

/// Shows every peer the mesh may have lost frames to the newest message of each room it
/// follows here, so its sessions find any gap (docs/REPLICATION.md, "Live delivery").
async fn repair_losses(node: Node, mut shutdown: watch::Receiver<bool>) {
    loop {
        let peers = tokio::select! {
            peers = node.mesh.losses.next() => peers,
            _ = crate::stopped(&mut shutdown) => return,
        };
        let peers: Vec<NodeId> = peers.into_iter().collect();
        tracing::debug!(?peers, "frames to these peers may be lost; showing them the newest messages");
        node.show_newest_to(&peers);
        tokio::select! {
            _ = tokio::time::sleep(LOSS_REPAIR_EVERY) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// Queues one `command` per node of `nodes` to each running owner of `owners`. A parked
/// owner has no follower, so nothing to show or forget; an owner whose queue is full
/// misses it.
fn tell_running(owners: &HashMap<RoomId, OwnerHandle>, nodes: &[NodeId], command: impl Fn(NodeId) -> OwnerCommand) {
    for queue in owners.values().filter_map(OwnerHandle::running_queue) {
        for node in nodes {
            let _ = queue.try_send(command(*node));
        }
    }
}

impl Node {
    /// Has each owner here show `nodes` its newest message, if they follow its room.
    pub(super) fn show_newest_to(&self, nodes: &[NodeId]) {
        self.tell_running_owners(nodes, |node| OwnerCommand::Returned { node });
    }

    /// Tells each running owner here one `command` per node of `nodes`.
    pub(super) fn tell_running_owners(&self, nodes: &[NodeId], command: impl Fn(NodeId) -> OwnerCommand) {
        if !nodes.is_empty() {
            tell_running(&self.owners_lock(), nodes, command);
        }
    }

    /// The turns of background takeovers whose replica is `replica`.
    pub(super) fn takeover_turns(&self, replica: NodeId) -> Arc<tokio::sync::Semaphore> {
        let mut turns = self.takeovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        turns
            .entry(replica)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(owner::TAKEOVERS_IN_FLIGHT)))
            .clone()
    }

    fn owners_lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, OwnerHandle>> {
        self.owners.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `node`'s interest in a room this node has no owner task for yet (call with
    /// `owners` held: see [`early_interest`]).
    fn keep_early_interest(&self, room: RoomId, node: NodeId, users: Vec<String>) {
        let mut early = self.early_interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        early.keep(room, node, users, std::time::Instant::now());
        metrics::gauge!("districhat_early_interest_rooms").set(early.len() as f64);
    }

    /// A peer dialled this node as `origin`. A larger incarnation than before means the
    /// peer restarted: its sessions are gone and could not say so, so every owner here
    /// forgets what it followed (as if it had unfollowed each room), and so does the
    /// interest kept for rooms without an owner yet. Called before the link's first frame
    /// is read, so the new incarnation's interest comes after.
    pub(super) fn peer_connected(&self, origin: MeshOrigin) {
        // Held through the forget: another connection of the same new process waits here
        // until the forget is queued, and only then reads its frames.
        let mut seen = self.peer_incarnations.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = seen.get(&origin.node).copied();
        if previous.is_some_and(|previous| previous >= origin.incarnation) {
            return;
        }
        seen.insert(origin.node, origin.incarnation);
        if previous.is_none() {
            return;
        }
        tracing::info!(peer = origin.node, "a peer restarted; forgetting what it followed");
        let owners = self.owners_lock();
        tell_running(&owners, &[origin.node], |node| OwnerCommand::Interest { node, users: Vec::new() });
        let mut early = self.early_interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        early.forget(origin.node);
        metrics::gauge!("districhat_early_interest_rooms").set(early.len() as f64);
    }

    /// The interest that came for `room` before its owner task here (call with `owners`
    /// held, as the task is spawned).
    fn take_early_interest(&self, room: RoomId) -> Vec<(NodeId, Vec<String>)> {
        let mut early = self.early_interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if early.is_empty() {
            return Vec::new();
        }
        let taken = early.take(room, std::time::Instant::now());
        metrics::gauge!("districhat_early_interest_rooms").set(early.len() as f64);
        taken
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

    /// Owner tasks running: the owned rooms whose owner is not parked.
    pub fn owner_tasks(&self) -> u64 {
        self.owner_tasks.load(Ordering::Relaxed)
    }

    fn owner_task_started(&self) {
        self.owner_tasks.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("districhat_node_owner_tasks", "node" => self.id.to_string()).increment(1.0);
    }

    fn owner_task_ended(&self) {
        self.owner_tasks.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("districhat_node_owner_tasks", "node" => self.id.to_string()).decrement(1.0);
    }

    /// Ends the task of a dormant owner that nobody follows, if nothing waits for it
    /// (see [`OwnerHandle::park`]). Returns whether the caller's task should end.
    fn park_owner(
        &self,
        room: RoomId,
        flags: &owner_handle::OwnerFlags,
        queue: &tokio::sync::mpsc::Receiver<OwnerCommand>,
    ) -> bool {
        self.owners_lock().get_mut(&room).is_some_and(|owner| owner.park(flags, queue))
    }

    /// What a heartbeat reports of this node's rooms (see [`RoomReport`]). A pass over
    /// the routing table is what a heartbeat costs at 100,000 rooms, so the last report is
    /// reused while neither the table's version nor the owners changed
    /// ([`ReportGeneration`]): an idle node passes over nothing.
    pub fn room_report(&self, routes: &Routes) -> RoomReport {
        // Read before the pass: a change counted after this read makes the next report
        // pass again, and one counted before it is seen by this pass.
        let generation = self.report_generation.current();
        let mut last = self.last_report.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, _, report)) =
            last.as_ref().filter(|(seen, version, _)| *seen == generation && *version == routes.version)
        {
            return report.clone();
        }
        let report = self.count_rooms(routes);
        *last = Some((generation, routes.version, report.clone()));
        report
    }

    /// [`Self::room_report`]'s pass over `routes`.
    fn count_rooms(&self, routes: &Routes) -> RoomReport {
        let owners = self.owners_lock();
        let mut report = RoomReport::default();
        for route in routes.rooms.values() {
            if route.replica == Some(self.id) {
                report.replicated += 1;
            }
            if route.owner != Some(self.id) {
                continue;
            }
            let owner = owners.get(&route.id).filter(|owner| owner.epoch == route.epoch);
            // A dormant owner has nothing to sync (docs/REPLICATION.md, "Dormant owners").
            if owner.is_none_or(|owner| !owner.is_ready() && !owner.is_dormant()) {
                report.syncing += 1;
            }
            if route.replica.is_some() && !route.replica_in_sync && owner.is_some_and(|owner| owner.replica_complete())
            {
                report.synced_replicas.push((route.id, route.epoch));
            }
        }
        report
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
}
