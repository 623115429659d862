//! Logs and metrics. `tracing` goes to stderr (human by default, JSON on request) with an
//! `EnvFilter` (`RUST_LOG`, default `info`); metrics go to one process-wide Prometheus
//! recorder whose text `/metrics` serves. Members running in one process (dev, tests)
//! share the recorder and are told apart by their `member` label.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::control::raft::state_machine::{read_state, SharedState};
use crate::control::raft::types::Raft;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds, from 50 µs to 5 s: fine enough below 20 ms that the
/// bench's per-hop percentiles (read from the buckets) say something.
const LATENCY_BUCKETS: [f64; 23] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Sets up logging for the binary. `json` switches to one JSON object per line.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = if json { builder.json().try_init() } else { builder.try_init() };
    if let Err(e) = installed {
        eprintln!("logging was already set up: {e}");
    }
}

/// Installs the Prometheus recorder once per process; later calls do nothing.
pub fn install_metrics() {
    PROMETHEUS.get_or_init(|| {
        let builder = PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS).ok()?;
        match builder.install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                None
            }
        }
    });
}

/// The Prometheus text of every metric recorded in this process.
pub fn render_metrics() -> String {
    PROMETHEUS.get().and_then(Option::as_ref).map(PrometheusHandle::render).unwrap_or_default()
}

/// Mirrors Raft's own metrics and the catalog's size into gauges until shutdown.
pub async fn export_raft_metrics(raft: Raft, state: SharedState, mut shutdown: watch::Receiver<bool>) {
    let mut raft_metrics = raft.metrics();
    loop {
        {
            let m = raft_metrics.borrow_and_update().clone();
            let member = m.id.to_string();
            metrics::gauge!("districhat_raft_term", "member" => member.clone()).set(m.current_term as f64);
            metrics::gauge!("districhat_raft_leader", "member" => member.clone())
                .set(m.current_leader.unwrap_or(0) as f64);
            metrics::gauge!("districhat_raft_is_leader", "member" => member.clone())
                .set(f64::from(u8::from(m.current_leader == Some(m.id))));
            metrics::gauge!("districhat_raft_applied_index", "member" => member.clone())
                .set(m.last_applied.map_or(0, |id| id.index) as f64);
            metrics::gauge!("districhat_raft_last_log_index", "member" => member.clone())
                .set(m.last_log_index.unwrap_or(0) as f64);
            let state = read_state(&state);
            metrics::gauge!("districhat_catalog_users", "member" => member.clone())
                .set(state.catalog.users.len() as f64);
            metrics::gauge!("districhat_catalog_rooms", "member" => member).set(state.catalog.rooms.len() as f64);
        }
        tokio::select! {
            changed = raft_metrics.changed() => if changed.is_err() { return },
            _ = crate::stopped(&mut shutdown) => return,
        }
        // Raft publishes metrics on every step; a gauge refresh a few times a second is enough.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes the on-disk size of a RocksDB directory (SST files, WAL, manifest) as
/// `districhat_rocksdb_size_bytes{db, process}` every 15 s until shutdown. `db` says
/// what it holds (`control`: Raft log + catalog, `node`: room logs).
pub async fn export_rocksdb_size(dir: PathBuf, db: &'static str, process: String, mut shutdown: watch::Receiver<bool>) {
    let gauge = metrics::gauge!("districhat_rocksdb_size_bytes", "db" => db, "process" => process);
    loop {
        let measured = dir.clone();
        match tokio::task::spawn_blocking(move || crate::store::checkpoint::directory_size(&measured)).await {
            Ok(Ok((_files, bytes))) => gauge.set(bytes as f64),
            Ok(Err(e)) => tracing::debug!(dir = %dir.display(), error = %e, "cannot measure the RocksDB directory"),
            Err(e) => tracing::debug!(error = %e, "the measuring task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}
