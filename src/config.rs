//! Typed configuration. Deployment facts (addresses, peers, data directory, secret) come
//! from a TOML file; flags and environment variables override the secret and the log
//! format at run time. Every field that has a sensible default has one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Configuration of one control member (`districhat control --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// This member's Raft id; unique in the group, never reused.
    pub id: u64,
    /// Address the HTTP server binds (pages, API and Raft RPC share it).
    pub listen: String,
    /// Address the other members reach this one at; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// RocksDB directory of this member (Raft log, vote, catalog).
    pub data_dir: PathBuf,
    /// Absolute directory `POST /api/admin/backup` writes into (`backup_dir/NAME`); the
    /// API takes only a name, never a path. Unset: `backups` next to `data_dir`
    /// ([`ControlConfig::backup_dir`]).
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// Shared by all controls and nodes; required on every internal API.
    pub cluster_secret: String,
    /// The members `--init` bootstraps the group with.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub raft: RaftTuning,
    /// Largest accepted HTTP request body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// New chat nodes wait for an admin's approval (`districhat admin approve-node`)
    /// before they serve; off by default, since the cluster secret already gates joining.
    #[serde(default)]
    pub require_node_approval: bool,
    /// A chat node silent for this long is marked down and its rooms fail over. Nodes
    /// heartbeat about once a second, so the default tolerates two lost heartbeats.
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// Password hashes (argon2id, ~19 MiB each: registrations and logins) run at once;
    /// 0 means one per core. Bounds the memory and threads a login flood can take.
    #[serde(default)]
    pub password_hashing_concurrency: usize,
    /// Hashes that may wait for a free slot; a request past them is refused at once with
    /// `503 busy` and `Retry-After: 1` instead of queueing without bound.
    #[serde(default = "default_password_hashing_queue")]
    pub password_hashing_queue: usize,
    /// Rooms one user may create (direct messages not counted); past it, `403
    /// quota_exceeded`. 0: no limit. Checked by the member taking the request, so
    /// creates in flight at once may pass it by their number.
    #[serde(default = "default_max_rooms_per_user")]
    pub max_rooms_per_user: usize,
    /// Most routes (rooms and nodes) a heartbeat reply carries, about 0.2 MB of JSON at
    /// the default. A node that needs more fetches them beside its heartbeats, so a
    /// heartbeat stays well within its deadline (docs/PROTOCOL.md, "Routing-table
    /// deltas"). 0: every change is fetched beside the heartbeats.
    #[serde(default = "default_heartbeat_routes")]
    pub heartbeat_routes: usize,
    /// RocksDB memory of the catalog and Raft log (docs/OPERATIONS.md, "Bounds").
    #[serde(default)]
    pub storage: crate::store::StoreMemory,
}

fn default_max_rooms_per_user() -> usize {
    1_000
}

fn default_heartbeat_routes() -> usize {
    1_000
}

/// One member of the initial group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub addr: String,
}

/// Raft timing and storage knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Applied entries kept in the log behind a snapshot (for lagging followers).
    pub keep_logs: u64,
    /// fsync the Raft WAL before acknowledging an append (turn off only for experiments).
    pub fsync: bool,
}

/// A follower starts an election only after openraft's leader lease (`election_max_ms`)
/// plus a random election timeout (`election_min_ms..election_max_ms`) without a
/// heartbeat, so these defaults put a new leader in place 0.8–1.0 s after the old one
/// died (about 0.5 s more when the first candidate's log was behind). That is still 8
/// missed heartbeats: a busy machine does not trigger needless elections.
impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 500,
            snapshot_every: 5_000,
            keep_logs: 1_000,
            fsync: true,
        }
    }
}

fn default_max_body_bytes() -> usize {
    64 * 1024
}

fn default_node_timeout_ms() -> u64 {
    3_000
}

fn default_password_hashing_queue() -> usize {
    64
}

/// `backup_dir`, when set, must be absolute: backups must not depend on the directory a
/// process happened to start in. Shared by control and node configs.
pub fn check_backup_dir(backup_dir: Option<&Path>) -> Result<(), String> {
    match backup_dir {
        Some(dir) if !dir.is_absolute() => Err(format!("backup_dir must be an absolute path, got {}", dir.display())),
        _ => Ok(()),
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid control config: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl ControlConfig {
    /// Reads a TOML file. Relative paths inside it are relative to the working directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses and checks the text of the file at `path` (named in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        check_backup_dir(config.backup_dir.as_deref())
            .map_err(|reason| ConfigError::Invalid { path: path.into(), reason })?;
        Ok(config)
    }

    /// Where backups of this member go: `backup_dir`, else `backups` next to `data_dir`.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir.clone().unwrap_or_else(|| crate::store::checkpoint::default_backup_dir(&self.data_dir))
    }

    /// A member with defaults for everything but its identity (used by `dev` and tests).
    pub fn new(id: u64, listen: String, data_dir: PathBuf, cluster_secret: String) -> Self {
        Self {
            id,
            listen,
            advertise: None,
            data_dir,
            backup_dir: None,
            cluster_secret,
            peers: Vec::new(),
            raft: RaftTuning::default(),
            max_body_bytes: default_max_body_bytes(),
            require_node_approval: false,
            node_timeout_ms: default_node_timeout_ms(),
            password_hashing_concurrency: 0,
            password_hashing_queue: default_password_hashing_queue(),
            max_rooms_per_user: default_max_rooms_per_user(),
            heartbeat_routes: default_heartbeat_routes(),
            storage: crate::store::StoreMemory::default(),
        }
    }

    /// Password hashes run at once: `password_hashing_concurrency`, or one per core when 0.
    pub fn password_hashing_slots(&self) -> usize {
        match self.password_hashing_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            slots => slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cluster_config_format() {
        let text = r#"
            id = 2
            listen = "127.0.0.1:7001"
            data_dir = "data/cluster/c2"
            cluster_secret = "s"
            [[peers]]
            id = 1
            addr = "127.0.0.1:7000"
            [raft]
            snapshot_every = 10
        "#;
        let config: ControlConfig = toml::from_str(text).unwrap();
        assert_eq!(config.id, 2);
        assert_eq!(config.peers, vec![PeerConfig { id: 1, addr: "127.0.0.1:7000".into() }]);
        assert_eq!(config.raft.snapshot_every, 10);
        assert!(config.raft.fsync);
        assert!(!config.require_node_approval);
        assert_eq!(config.node_timeout_ms, 3_000);
        assert_eq!(config.password_hashing_concurrency, 0);
        assert!(config.password_hashing_slots() >= 1);
        assert_eq!(config.password_hashing_queue, 64);
        assert!(toml::from_str::<ControlConfig>("id = 1\nbogus = 2").is_err());
        assert_eq!(config.backup_dir(), std::path::absolute("data/cluster/backups").unwrap());
    }

    #[test]
    fn a_relative_backup_dir_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c1.toml");
        let base = "id = 1\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/d/c1\"\ncluster_secret = \"s\"\n";
        std::fs::write(&path, format!("{base}backup_dir = \"backups\"\n")).unwrap();
        let error = ControlConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("backup_dir must be an absolute path"), "{error}");
        std::fs::write(&path, format!("{base}backup_dir = \"/srv/backups\"\n")).unwrap();
        assert_eq!(ControlConfig::load(&path).unwrap().backup_dir(), Path::new("/srv/backups"));
    }
}
