//! `districhat dev`: the embedded default cluster — three control members in one process,
//! each on its own port and data directory, bootstrapped and ready.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::config::{ControlConfig, PeerConfig};
use crate::control::{self, ControlHandle};

/// The secret of the dev cluster; it only ever listens on loopback.
pub const DEV_SECRET: &str = "districhat-dev-secret";

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
