//! `districhat dev`: the embedded default cluster — three control members and two chat
//! nodes in one process, each on its own port and data directory, bootstrapped and ready.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::config::{ControlConfig, PeerConfig};
use crate::control::{self, ControlHandle};
use crate::node::config::NodeConfig;
use crate::node::{self as chat_node, NodeHandle};

/// The secret of the dev cluster; it only ever listens on loopback.
pub const DEV_SECRET: &str = "districhat-dev-secret";

/// The running dev cluster.
pub struct DevCluster {
    pub controls: Vec<ControlHandle>,
    pub nodes: Vec<NodeHandle>,
}

impl DevCluster {
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
        for control in self.controls {
            control.shutdown().await;
        }
    }
}

/// `districhat dev`: starts the cluster, prints where it is, runs until Ctrl-C.
pub async fn run(host: &str, port: u16, data_dir: &Path) -> anyhow::Result<()> {
    let cluster = start_with_nodes(host, port, data_dir).await?;
    println!("DistriChat dev cluster is up: http://{host}:{port}");
    println!("  controls: {}", cluster.controls.iter().map(|c| c.url()).collect::<Vec<_>>().join(", "));
    println!("  nodes:    {}", cluster.nodes.iter().map(|n| n.ws_url()).collect::<Vec<_>>().join(", "));
    println!("  data:     {}", data_dir.display());
    println!("  press Ctrl-C to stop");
    crate::shutdown_signal().await;
    cluster.shutdown().await;
    Ok(())
}

/// Starts the controls (`port`..`port+2`), then two chat nodes (`port+100`, `port+101`).
pub async fn start_with_nodes(host: &str, port: u16, data_dir: &Path) -> anyhow::Result<DevCluster> {
    let controls = start(host, port, data_dir).await?;
    let control_urls: Vec<String> = controls.iter().map(ControlHandle::url).collect();
    let mut nodes = Vec::new();
    for i in 0..2u16 {
        let name = format!("n{}", i + 1);
        let addr = format!("{host}:{}", port + 100 + i);
        let dir = data_dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let config = NodeConfig::new(&name, &addr, dir, control_urls.clone(), DEV_SECRET);
        let listener = TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        nodes.push(chat_node::start(config, listener).await?);
    }
    Ok(DevCluster { controls, nodes })
}

/// Starts three controls on `host:port`, `port+1`, `port+2` with data under `data_dir`,
/// bootstraps them and waits until they have a leader.
pub async fn start(host: &str, port: u16, data_dir: &Path) -> anyhow::Result<Vec<ControlHandle>> {
    let peers: Vec<PeerConfig> =
        (0..3u16).map(|i| PeerConfig { id: u64::from(i) + 1, addr: format!("{host}:{}", port + i) }).collect();
    let mut controls = Vec::new();
    for peer in &peers {
        let dir = data_dir.join(format!("c{}", peer.id));
        std::fs::create_dir_all(&dir)?;
        let mut config = ControlConfig::new(peer.id, peer.addr.clone(), dir, DEV_SECRET.into());
        config.peers = peers.clone();
        let listener = TcpListener::bind(&peer.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e} (is another dev cluster running?)", peer.addr))?;
        controls.push(control::start(config, listener).await?);
    }
    controls[0].initialize(&peers).await?;
    wait_for_leader(&controls, Duration::from_secs(30)).await?;
    Ok(controls)
}

/// Waits until every member knows the same leader and the catalog has its signing key.
pub async fn wait_for_leader(controls: &[ControlHandle], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let leaders: Vec<Option<u64>> =
            controls.iter().map(|control| control.raft.metrics().borrow().current_leader).collect();
        let ready = controls.iter().all(|control| {
            crate::control::raft::state_machine::read_state(&control.state).catalog.meta.signing_key.is_some()
        });
        if ready && leaders[0].is_some() && leaders.iter().all(|leader| *leader == leaders[0]) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("no leader after {timeout:?} (members see {leaders:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
