//! The control plane: one member of the openraft group that replicates the catalog.
//!
//! [`start`] takes a bound listener and a config, opens RocksDB, starts Raft, the HTTP
//! server (REST API, Raft RPC, the chat-node API, admin routes, metrics) and the
//! background tasks (signing key, Raft gauges, the chat-node failure detector), and
//! returns a [`ControlHandle`] to initialise or stop it. Binding outside is what lets
//! tests run members on port 0.
//!
//! Two layers: the core — [`catalog`] (the state and its one `apply`), [`raft`] (storage
//! and the RPC client), [`write`](mod@write), [`liveness`], [`loads`], [`routing`], [`auth`],
//! [`hashing`], [`secret`], [`read_marks`], [`restore`], [`history`], [`moderation`] — and the HTTP edge, [`http`],
//! which is the only part that knows axum. The core never imports the edge.

pub mod auth;
pub mod catalog;
pub mod hashing;
pub mod history;
pub mod http;
pub mod liveness;
pub mod loads;
pub mod moderation;
pub mod proposer;
pub mod raft;
pub mod read_marks;
pub mod restore;
pub mod room_events;
pub mod route_changes;
pub mod routing;
pub mod secret;
pub mod write;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::openraft::error::{InitializeError, RaftError};
use ::openraft::{BasicNode, SnapshotPolicy};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::catalog::{CatalogError, Command};
use self::liveness::Liveness;
use self::raft::network::HttpNetwork;
use self::raft::state_machine::{read_state, SharedState};
use self::raft::types::{MemberId, Raft};
use self::secret::ClusterSecret;
use self::write::Writer;
use crate::config::{ControlConfig, PeerConfig};

/// Why a control member could not start or be initialised.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot open storage in {dir}: {source}")]
    Storage { dir: String, source: raft::StorageOpenError },
    #[error("invalid raft settings: {0}")]
    RaftConfig(String),
    #[error("raft failed to start: {0}")]
    RaftStart(String),
    #[error("cannot initialise the group: {0}")]
    Initialize(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub id: MemberId,
    pub raft: Raft,
    pub state: SharedState,
    pub writer: Writer,
    pub config: Arc<ControlConfig>,
    pub client: reqwest::Client,
    pub secret: ClusterSecret,
    /// Chat-node heartbeats as the leader saw them (in memory, never replicated).
    pub liveness: Liveness,
    /// Copies this member's database for `POST /api/admin/backup`.
    pub checkpointer: raft::checkpoint::Checkpointer,
    /// The bounded slots registrations and logins hash passwords in.
    pub hashing: hashing::PasswordHashing,
}

/// A running control member.
pub struct ControlHandle {
    pub id: MemberId,
    /// The address the HTTP server is bound to.
    pub addr: SocketAddr,
    pub raft: Raft,
    /// The applied catalog (read-only use).
    pub state: SharedState,
    config: Arc<ControlConfig>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Runs a control member from its config file until Ctrl-C / SIGTERM; with `init`,
/// bootstraps the group with the config's peers first (idempotent).
pub async fn run_from_config(config_path: &Path, init: bool, secret: Option<String>) -> anyhow::Result<()> {
    let mut config = ControlConfig::load(config_path)?;
    if let Some(secret) = secret {
        config.cluster_secret = secret;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let listener = crate::bind_listener(&config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let peers = config.peers.clone();
    let handle = start(config, listener).await?;
    if init {
        handle.initialize(&peers).await?;
    }
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// Starts a control member on `listener`.
pub async fn start(config: ControlConfig, listener: TcpListener) -> Result<ControlHandle, ControlError> {
    crate::telemetry::install_metrics();
    let addr = listener.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let config = Arc::new(ControlConfig { advertise: Some(advertise), ..config });
    let (log_store, state_machine) = open_storage_retrying(&config).await?;
    let state = state_machine.state();
    let checkpointer = state_machine.checkpointer();
    let secret = ClusterSecret::new(config.cluster_secret.as_str());
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ControlError::RaftStart(format!("http client: {e}")))?;
    let network = HttpNetwork { client: client.clone(), secret: secret.clone() };
    let raft = Raft::new(config.id, Arc::new(raft_config(&config)?), network, log_store, state_machine)
        .await
        .map_err(|e| ControlError::RaftStart(e.to_string()))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let writer = Writer::new(raft.clone(), client.clone(), secret.clone(), config.id, shutdown_rx.clone());
    let app_state = AppState {
        id: config.id,
        raft: raft.clone(),
        state: state.clone(),
        writer,
        config: config.clone(),
        client,
        secret,
        liveness: Liveness::default(),
        checkpointer,
        hashing: hashing::PasswordHashing::new(
            config.password_hashing_slots(),
            config.password_hashing_queue,
            config.id,
        ),
    };
    let server = http::serve(listener, app_state.clone(), shutdown_rx.clone());
    let tasks = vec![
        server,
        tokio::spawn(ensure_signing_key(app_state.clone(), shutdown_rx.clone())),
        tokio::spawn(liveness::detect_failures(app_state.clone(), shutdown_rx.clone())),
        tokio::spawn(crate::telemetry::export_raft_metrics(raft.clone(), state.clone(), shutdown_rx.clone())),
        tokio::spawn(crate::telemetry::export_rocksdb_size(
            config.data_dir.clone(),
            "control",
            config.id.to_string(),
            shutdown_rx,
        )),
    ];
    tracing::info!(member = config.id, %addr, "control member started");
    Ok(ControlHandle { id: config.id, addr, raft, state, config, shutdown, tasks })
}

impl ControlHandle {
    /// `http://ADDR` of this member.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bootstraps the group with `peers` (this member alone if empty). Idempotent: a
    /// member that is already part of a group does nothing.
    pub async fn initialize(&self, peers: &[PeerConfig]) -> Result<(), ControlError> {
        initialize(&self.raft, &self.config, peers).await
    }

    /// Stops the member: the HTTP server closes its listener and connections, Raft stops,
    /// and RocksDB is closed once the last task is gone. In-flight requests are cut off
    /// after a short grace period — as far as peers can tell, the member died.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                abort.abort();
            }
        }
        tracing::info!(member = self.id, "control member stopped");
    }
}

/// Bootstraps a group; see [`ControlHandle::initialize`].
pub async fn initialize(raft: &Raft, config: &ControlConfig, peers: &[PeerConfig]) -> Result<(), ControlError> {
    let members: BTreeMap<MemberId, BasicNode> = if peers.is_empty() {
        let addr = config.advertise.clone().unwrap_or_else(|| config.listen.clone());
        BTreeMap::from([(config.id, BasicNode { addr })])
    } else {
        peers.iter().map(|peer| (peer.id, BasicNode { addr: peer.addr.clone() })).collect()
    };
    // Asking first keeps openraft from logging an error on every ordinary restart.
    if raft.is_initialized().await.unwrap_or(false) {
        tracing::info!(member = config.id, "already part of a raft group; nothing to bootstrap");
        return Ok(());
    }
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(member = config.id, "bootstrapped a new raft group");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            tracing::info!(member = config.id, "already part of a raft group; nothing to bootstrap");
            Ok(())
        }
        Err(e) => Err(ControlError::Initialize(e.to_string())),
    }
}

fn raft_config(config: &ControlConfig) -> Result<::openraft::Config, ControlError> {
    let tuning = &config.raft;
    ::openraft::Config {
        cluster_name: "districhat".into(),
        heartbeat_interval: tuning.heartbeat_ms,
        election_timeout_min: tuning.election_min_ms,
        election_timeout_max: tuning.election_max_ms,
        install_snapshot_timeout: 2_000,
        snapshot_max_chunk_size: 1024 * 1024,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
        max_in_snapshot_log_to_keep: tuning.keep_logs,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ControlError::RaftConfig(e.to_string()))
}

/// Opens storage, waiting briefly if a previous incarnation in this process still holds
/// the RocksDB lock (its tasks are finishing).
async fn open_storage_retrying(
    config: &ControlConfig,
) -> Result<(raft::log_store::LogStore, raft::state_machine::StateMachineStore), ControlError> {
    let mut attempts = 0;
    loop {
        let dir = config.data_dir.clone();
        let (fsync, memory) = (config.raft.fsync, config.storage.clone());
        let opened = tokio::task::spawn_blocking(move || raft::open_storage(&dir, fsync, &memory))
            .await
            .map_err(|e| ControlError::RaftStart(format!("storage task: {e}")))?;
        match opened {
            Ok(stores) => return Ok(stores),
            Err(raft::StorageOpenError::Store(crate::store::StoreError::Rocks(e)))
                if attempts < 50 && e.to_string().contains("lock") =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(source) => return Err(ControlError::Storage { dir: config.data_dir.display().to_string(), source }),
        }
    }
}

/// Makes sure the catalog has a token-signing key: whichever member leads proposes one.
async fn ensure_signing_key(app: AppState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let has_key = read_state(&app.state).catalog.meta.signing_key.is_some();
        if has_key {
            return;
        }
        if app.raft.metrics().borrow().current_leader == Some(app.id) {
            let key: [u8; 32] = rand::random();
            match app.writer.write(Command::SetSigningKey { key: key.to_vec() }).await {
                Ok(_) | Err(write::WriteError::Rejected(CatalogError::SigningKeyAlreadySet)) => return,
                Err(e) => tracing::warn!(error = %e, "could not set the signing key yet"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}
