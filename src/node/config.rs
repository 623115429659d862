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
    /// Absolute directory `POST /api/admin/backup` writes into (`backup_dir/NAME`).
    /// Unset: `backups` next to `data_dir` ([`NodeConfig::backup_dir`]).
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// Control members (`http://host:port`); any of them will do.
    pub controls: Vec<String>,
    pub cluster_secret: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub replication: Replication,
    /// Bounds of the mesh links to other nodes.
    #[serde(default)]
    pub mesh: MeshLimits,
    /// RocksDB memory of the room log (docs/OPERATIONS.md, "Bounds").
    #[serde(default)]
    pub storage: crate::store::StoreMemory,
    /// Browser origins allowed to open `/ws` (scheme://host:port). Empty: same host as
    /// one of `controls`, or no Origin header (non-browser clients).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// The control-plane lease, in ms: a node that has had no heartbeat answered by a
    /// leader for this long stops taking sends for the rooms it owns and closes its
    /// browser connections with code 4009 (`isolated`), so clients move to a node the
    /// control plane can reach (docs/REPLICATION.md, "Leases"). About the controls'
    /// `node_timeout_ms`, after which they move its rooms anyway.
    #[serde(default = "default_control_lease_ms")]
    pub control_lease_ms: u64,
}

fn default_control_lease_ms() -> u64 {
    3_000
}

/// Per-connection limits, and the sends one node has in flight to each owner; a breach
/// gets an error frame, the connection lives on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_text_chars: usize,
    /// Sustained sends per second per connection (burst: twice that).
    pub sends_per_sec: u32,
    /// Sustained history and subscribe requests per second per connection (burst: twice
    /// that); each costs a read of the room log.
    pub reads_per_sec: u32,
    /// Most rooms one connection may follow.
    pub max_subscriptions: usize,
    /// A write to a browser's socket that does not finish within this many ms (the
    /// browser stopped reading) closes the connection as `lagging`; the browser resumes
    /// with `since` when it reconnects.
    pub write_timeout_ms: u64,
    /// A connection that has not said `hello` within this many ms of opening is closed
    /// (`hello_timeout`, close code 4010): without it, anyone could hold every connection
    /// slot without a token. Browsers say hello as soon as the socket opens.
    pub hello_timeout_ms: u64,
    /// Live frames a connection holds back, over all its rooms, while it catches up;
    /// past this, it drops them and fetches them from the log after the catch-up.
    pub held_frames: usize,
    /// Reads of the room log a connection may have fetched and not yet written, of each
    /// kind: catch-up pages (more wait their turn) and history answers (more get
    /// `rate_limited`). A page is at most 100 messages, an answer 200.
    pub reads_in_flight: usize,
    /// Frames waiting in one connection's queue (live frames, acks, answers); a
    /// connection whose queue is full when a room frame arrives is closed as `lagging`.
    pub queued_frames: usize,
    /// Sends this node's clients (WebSocket and REST) may have in flight at once to one
    /// owner node, all its rooms together: accepted and not yet acknowledged. Past it a
    /// send is refused at once with `rate_limited`, before any work, so past saturation
    /// the queues behind it hold at most this many sends and an acknowledged message's
    /// latency stays bounded (in-flight / throughput) instead of growing by seconds of
    /// queueing (docs/BENCHMARKS.md, "Past saturation"). Per owner node: a stalled
    /// owner uses up only the permits of its own rooms.
    pub sends_in_flight: usize,
    /// Browser WebSockets this node holds at once; one more gets `503` before the
    /// upgrade (the browser tries the next node). At start the node raises its open-file
    /// limit to this plus [`crate::fd_limit::NODE_RESERVE`]; where it may not (not root,
    /// a lower hard limit), it holds only what the limit in force leaves after the
    /// reserve, so RocksDB and the mesh never run out of descriptors.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024,
            max_text_chars: 4_000,
            sends_per_sec: 50,
            reads_per_sec: 50,
            max_subscriptions: 200,
            write_timeout_ms: 10_000,
            hello_timeout_ms: 10_000,
            held_frames: 1_000,
            reads_in_flight: 4,
            queued_frames: 4_096,
            sends_in_flight: 1_024,
            max_connections: 100_000,
        }
    }
}

/// Bounds of the mesh: what one peer can make this node hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshLimits {
    /// Frames waiting on the link to one peer; past it, deliveries to that peer are
    /// dropped (its sessions notice the gap) and requests fail as saturated.
    pub link_queue: usize,
    /// Requests of one peer's link this node handles at once; past it they are answered
    /// `unavailable` at once and the link keeps reading.
    pub requests_per_link: usize,
}

impl Default for MeshLimits {
    fn default() -> Self {
        Self { link_queue: 8_192, requests_per_link: 4_096 }
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
    /// At most this many older messages per second a new owner copies to its replica
    /// behind live sends after a failover (docs/REPLICATION.md, "Background copy"): it
    /// bounds the disk and network the copy takes from live traffic. 0: no bound.
    pub backfill_per_sec: u32,
}

impl Default for Replication {
    fn default() -> Self {
        Self { min_copies: 2, fsync: true, backfill_per_sec: 50_000 }
    }
}

impl NodeConfig {
    /// Reads a TOML file and checks what the control plane would otherwise refuse later
    /// (a bad `public_ws_url` would make registration fail on every attempt).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text, path)
    }

    /// Parses and checks the text of the file at `path` (named in errors).
    pub fn from_toml(text: &str, path: &Path) -> anyhow::Result<Self> {
        let config: Self =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{} is not a valid node config: {e}", path.display()))?;
        config.check().map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
        Ok(config)
    }

    /// The checks [`NodeConfig::load`] makes beyond the TOML shape.
    pub fn check(&self) -> Result<(), String> {
        if let Some(url) = &self.public_ws_url {
            if !crate::control::routing::valid_ws_url(url) {
                return Err(format!(
                    "public_ws_url must be a ws:// or wss:// URL with a host, at most 255 printable ASCII \
                     characters (like \"wss://chat.example.com/n1/ws\"), got {url:?}"
                ));
            }
        }
        let limits = &self.limits;
        let too_small = [
            ("limits.write_timeout_ms", limits.write_timeout_ms < 100, "at least 100"),
            ("limits.hello_timeout_ms", limits.hello_timeout_ms < 100, "at least 100"),
            ("limits.held_frames", limits.held_frames == 0, "at least 1"),
            ("limits.sends_per_sec", limits.sends_per_sec == 0, "at least 1"),
            ("limits.reads_per_sec", limits.reads_per_sec == 0, "at least 1"),
            ("limits.reads_in_flight", limits.reads_in_flight == 0, "at least 1"),
            ("limits.queued_frames", limits.queued_frames == 0, "at least 1"),
            ("limits.sends_in_flight", limits.sends_in_flight == 0, "at least 1"),
            ("limits.max_connections", limits.max_connections == 0, "at least 1"),
            ("mesh.link_queue", self.mesh.link_queue == 0, "at least 1"),
            ("mesh.requests_per_link", self.mesh.requests_per_link == 0, "at least 1"),
        ];
        if let Some((key, _, bound)) = too_small.iter().find(|(_, bad, _)| *bad) {
            return Err(format!("{key} must be {bound}: below it no connection could be served"));
        }
        crate::config::check_backup_dir(self.backup_dir.as_deref())
    }

    /// Where backups of this node go: `backup_dir`, else `backups` next to `data_dir`.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir.clone().unwrap_or_else(|| crate::store::checkpoint::default_backup_dir(&self.data_dir))
    }

    /// A node with default limits (used by `dev` and tests).
    pub fn new(name: &str, listen: &str, data_dir: PathBuf, controls: Vec<String>, secret: &str) -> Self {
        Self {
            name: name.into(),
            listen: listen.into(),
            advertise: None,
            public_ws_url: None,
            data_dir,
            backup_dir: None,
            controls,
            cluster_secret: secret.into(),
            limits: Limits::default(),
            replication: Replication::default(),
            mesh: MeshLimits::default(),
            storage: crate::store::StoreMemory::default(),
            allowed_origins: Vec::new(),
            control_lease_ms: default_control_lease_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> anyhow::Result<NodeConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("n1.toml");
        let base = "name = \"n1\"\nlisten = \"127.0.0.1:7100\"\ndata_dir = \"/d/n1\"\n\
                    controls = [\"http://127.0.0.1:7000\"]\ncluster_secret = \"s\"\n";
        std::fs::write(&path, format!("{base}{extra}"))?;
        NodeConfig::load(&path)
    }

    #[test]
    fn a_bad_public_ws_url_or_relative_backup_dir_stops_the_node_at_load() {
        for bad in ["https://chat.example.com/n1/ws", "chat.example.com/ws", "wss://", "wss://a b/ws"] {
            let error = load(&format!("public_ws_url = {bad:?}\n")).unwrap_err().to_string();
            assert!(error.contains("public_ws_url must be a ws:// or wss:// URL"), "{bad}: {error}");
        }
        let error = load("backup_dir = \"backups\"\n").unwrap_err().to_string();
        assert!(error.contains("backup_dir must be an absolute path"), "{error}");

        let config = load("public_ws_url = \"wss://chat.example.com/n1/ws\"\nbackup_dir = \"/srv/b\"\n").unwrap();
        assert_eq!(config.public_ws_url.as_deref(), Some("wss://chat.example.com/n1/ws"));
        assert_eq!(config.backup_dir(), Path::new("/srv/b"));
        assert_eq!(load("").unwrap().backup_dir(), Path::new("/d/backups"));
    }

    #[test]
    fn limits_that_would_serve_no_connection_stop_the_node_at_load() {
        for (bad, key) in [
            ("[limits]\nwrite_timeout_ms = 0\n", "limits.write_timeout_ms"),
            ("[limits]\nhello_timeout_ms = 0\n", "limits.hello_timeout_ms"),
            ("[limits]\nheld_frames = 0\n", "limits.held_frames"),
            ("[limits]\nreads_per_sec = 0\n", "limits.reads_per_sec"),
            ("[limits]\nreads_in_flight = 0\n", "limits.reads_in_flight"),
            ("[limits]\nqueued_frames = 0\n", "limits.queued_frames"),
            ("[limits]\nsends_in_flight = 0\n", "limits.sends_in_flight"),
            ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
            ("[mesh]\nlink_queue = 0\n", "mesh.link_queue"),
            ("[mesh]\nrequests_per_link = 0\n", "mesh.requests_per_link"),
        ] {
            let error = load(bad).unwrap_err().to_string();
            assert!(error.contains(key), "{bad}: {error}");
        }
        let config = load("[limits]\nwrite_timeout_ms = 2000\n[storage]\nblock_cache_mb = 8\n").unwrap();
        assert_eq!((config.limits.write_timeout_ms, config.storage.block_cache_mb), (2_000, 8));
    }
}
