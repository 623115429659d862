//! Configuration of a chat node (`districhat node --config FILE`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything a node needs to know to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable name (`n1`): the catalog keeps the node's id under it across restarts.
    pub name: String,
    /// Address the HTTP server binds (browser `/ws`, node `/mesh`, internal history).
    pub listen: String,
    /// Address browsers and nodes reach this node at; defaults to the bound address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The WebSocket URL browsers are given for this node, when they must not use
    /// `ws://ADVERTISE/ws` (behind a TLS proxy: `wss://chat.example.com/n1/ws`). Other
    /// nodes keep using `advertise` for mesh links.
    #[serde(default)]
    pub public_ws_url: Option<String>,
    /// RocksDB directory of this node's room logs.
    pub data_dir: PathBuf,
    /// Control members (`http://host:port`); any of them will do.
    pub controls: Vec<String>,
    pub cluster_secret: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub replication: Replication,
    /// Browser origins allowed to open `/ws` (scheme://host:port). Empty: same host as
    /// one of `controls`, or no Origin header (non-browser clients).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// Per-connection limits; a breach gets an error frame, the connection lives on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_text_chars: usize,
    /// Sustained sends per second per connection (burst: twice that).
    pub sends_per_sec: u32,
    /// Most rooms one connection may follow.
    pub max_subscriptions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_frame_bytes: 16 * 1024, max_text_chars: 4_000, sends_per_sec: 50, max_subscriptions: 200 }
    }
}

/// How a room's messages are made durable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// Copies on distinct nodes' disks before an ack: 2 (owner + replica) or 1.
    pub min_copies: u8,
    /// fsync the room log's WAL before acknowledging (once per batch: group commit).
    pub fsync: bool,
}

impl Default for Replication {
    fn default() -> Self {
        Self { min_copies: 2, fsync: true }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a valid node config: {e}", path.display()))
    }

    /// A node with default limits (used by `dev` and tests).
    pub fn new(name: &str, listen: &str, data_dir: PathBuf, controls: Vec<String>, secret: &str) -> Self {
        Self {
            name: name.into(),
            listen: listen.into(),
            advertise: None,
            public_ws_url: None,
            data_dir,
            controls,
            cluster_secret: secret.into(),
            limits: Limits::default(),
            replication: Replication::default(),
            allowed_origins: Vec::new(),
        }
    }
}
