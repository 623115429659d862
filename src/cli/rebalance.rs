//! `districhat admin rebalance`: the operator's client for the control's rebalance API
//! (`control/http/rebalance.rs`).
//!
//! Repeats batches until the control answers that nothing is left to move: each batch is
//! one catalog write of at most `batch` safe moves (small Raft entries, short log copies),
//! followed by the same bounded wait as a drain ([`crate::cli::drain::ProgressPoll`]) until
//! every `Up` node has acted on the new routing table and no owner is still copying its
//! log to a new replica. [`rebalance`] reports each batch and each change of progress;
//! the CLI draws a progress bar and prints the summary.

use std::time::{Duration, Instant};

use crate::cli::drain::{client, send, DrainError, ProgressPoll};
use crate::control::http::rebalance::{NodeBalance, RebalanceProgress, RebalanceReport};
use crate::control::secret::SECRET_HEADER;

/// Why a rebalance did not finish: the admin client's errors, shared with drains.
pub type RebalanceError = DrainError;

/// Where a rebalance is sent and how it proceeds.
#[derive(Debug, Clone)]
pub struct RebalanceTarget {
    /// A control's base URL (`http://host:port`); any member will do.
    pub control: String,
    pub secret: String,
    /// Moves per batch (one catalog command each).
    pub batch: u64,
}

/// What [`rebalance`] reports while it runs.
#[derive(Debug)]
pub enum RebalanceEvent<'a> {
    /// A batch was committed.
    Batch(&'a RebalanceReport),
    /// The nodes' progress in acting on the last batch changed.
    Progress(&'a RebalanceProgress),
}

/// What a finished rebalance did.
#[derive(Debug, Clone)]
pub struct RebalanceSummary {
    /// Batches that moved something.
    pub batches: u64,
    /// Rooms whose owner and replica swapped roles.
    pub swaps: u64,
    /// Rooms whose replica role moved to another node.
    pub replica_moves: u64,
    /// Rooms per node before the first batch and after the last.
    pub before: Vec<NodeBalance>,
    pub after: Vec<NodeBalance>,
    /// 0 when balanced; more when rooms that may not move (a node not `Up`) keep it uneven.
    pub remaining_imbalance: u64,
    pub elapsed: Duration,
}

impl RebalanceSummary {
    pub fn moves(&self) -> u64 {
        self.swaps + self.replica_moves
    }
}

/// Rebalances in batches until nothing is left to move, waiting (all in all at most
/// `timeout`) after each batch until the nodes have acted on it.
pub async fn rebalance(
    target: &RebalanceTarget,
    timeout: Duration,
    mut on_event: impl FnMut(RebalanceEvent<'_>),
) -> Result<RebalanceSummary, RebalanceError> {
    let started = Instant::now();
    let client = client()?;
    let url = format!("{}/api/admin/rebalance", target.control.trim_end_matches('/'));
    let before: RebalanceProgress = send(client.get(&url).header(SECRET_HEADER, &target.secret)).await?;
    let mut summary = RebalanceSummary {
        batches: 0,
        swaps: 0,
        replica_moves: 0,
        after: before.nodes.clone(),
        before: before.nodes,
        remaining_imbalance: before.remaining_imbalance,
        elapsed: Duration::ZERO,
    };
    loop {
        let batch = client.post(&url).query(&[("max_moves", target.batch)]).header(SECRET_HEADER, &target.secret);
        let report: RebalanceReport = match send(batch).await {
            Ok(report) => report,
            // The control waited for the nodes and they were still busy: ask again.
            Err(DrainError::Refused { code, .. }) if code == "not_settled" && started.elapsed() < timeout => continue,
            Err(DrainError::Refused { code, message, .. }) if code == "not_settled" => {
                return Err(DrainError::Timeout { timeout, last: message })
            }
            Err(DrainError::Unreachable(reason)) if started.elapsed() < timeout => {
                tracing::debug!(%reason, "no answer to a batch; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(other) => return Err(other),
        };
        on_event(RebalanceEvent::Batch(&report));
        summary.remaining_imbalance = report.remaining_imbalance;
        summary.after = report.nodes.clone();
        if report.moves.is_empty() {
            break;
        }
        summary.batches += 1;
        let swaps = report.moves.iter().filter(|moved| moved.owner != moved.from_owner).count() as u64;
        summary.swaps += swaps;
        summary.replica_moves += report.moves.len() as u64 - swaps;
        let poll = ProgressPoll { client: &client, url: &url, secret: &target.secret, since: report.routes_version };
        let progress = poll
            .wait(started, timeout, describe, |progress| progress.done, &mut |progress| {
                on_event(RebalanceEvent::Progress(progress))
            })
            .await?;
        summary.after = progress.nodes;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// One line saying where the nodes stand with the last batch.
pub fn describe(progress: &RebalanceProgress) -> String {
    let mut parts = Vec::new();
    if !progress.waiting_for.is_empty() {
        parts.push(format!("waiting for nodes {:?} to take routes v{}", progress.waiting_for, progress.routes_version));
    }
    if !progress.syncing.is_empty() {
        let syncing: Vec<String> =
            progress.syncing.iter().map(|(node, rooms)| format!("node {node}: {rooms}")).collect();
        parts.push(format!("owners copying logs to new replicas ({})", syncing.join(", ")));
    }
    if parts.is_empty() {
        parts.push("every node acted on the moves".to_string());
    }
    format!("{} (imbalance {})", parts.join("; "), progress.remaining_imbalance)
}

/// `owned/replicated` per node, before → after, one line each.
pub fn render_counts(before: &[NodeBalance], after: &[NodeBalance]) -> Vec<String> {
    after
        .iter()
        .map(|node| {
            let old = before.iter().find(|old| old.id == node.id);
            let old = old.map_or_else(|| "-".to_string(), |old| format!("{}/{}", old.owned, old.replicated));
            format!(
                "node {} ({}, {}): owned/replicated {old} → {}/{}",
                node.id, node.name, node.status, node.owned, node.replicated
            )
        })
        .collect()
}
