//! `districhat init` and `districhat admin ...`: the operator's client of the control's
//! secret-guarded `/api/admin/*` endpoints — control membership, node approval, backups,
//! the step after a restore — and the terminal side of a drain or a rebalance (a spinner,
//! a progress bar, the summary) around the [`drain`] and [`rebalance`] clients.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::drain::{self, DrainTarget};
use super::rebalance::{self, RebalanceEvent, RebalanceTarget};
use crate::control::secret::SECRET_HEADER;

/// Which control an admin command talks to, and the secret it proves itself with.
#[derive(clap::Args)]
pub struct AdminTarget {
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub control: String,
    #[arg(long, env = "DISTRICHAT_SECRET", hide_env_values = true)]
    pub secret: String,
}

#[derive(Subcommand)]
pub enum AdminAction {
    /// Add a control member online: it joins as a learner, catches up, becomes a voter.
    AddMember {
        #[command(flatten)]
        target: AdminTarget,
        /// The new member's id (from its config).
        #[arg(long)]
        id: u64,
        /// The new member's address (host:port).
        #[arg(long)]
        addr: String,
    },
    /// Approve a chat node that registered while approval is required.
    ApproveNode {
        #[command(flatten)]
        target: AdminTarget,
        /// The node's id (see `districhat status`).
        #[arg(long)]
        id: u64,
    },
    /// Take a chat node out of service without losing anything: every room it owns moves
    /// to that room's replica, every room it replicates gets a new replica (epoch + 1 each),
    /// then this waits until the nodes have acted on it and prints a summary. The node
    /// keeps running (its connected browsers keep chatting through it) but gets no new
    /// rooms or connections, even after a restart; stop it once drained. Refused with
    /// `no_capacity` (nothing changed) when a room would be left without two Up nodes.
    /// Undo with `admin undrain-node`. Exits non-zero on refusal or timeout.
    DrainNode {
        #[command(flatten)]
        target: AdminTarget,
        /// The node's id (see `districhat status`).
        node: u64,
        /// How long to wait for the nodes to act on the move, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Put a drained chat node back in service: it becomes Up and takes new rooms and
    /// connections; rooms moved away by the drain stay where they are.
    UndrainNode {
        #[command(flatten)]
        target: AdminTarget,
        /// The node's id (see `districhat status`).
        node: u64,
    },
    /// Spread rooms evenly over the Up chat nodes (after adding a node, or one came back or
    /// was undrained): in batches of safe moves — a replica role moves to a less busy node
    /// (which gets the room's log before the owner takes sends again), ownership moves only
    /// by swapping a room's owner and replica (epoch + 1 each) — until every Up node owns
    /// and replicates within one room of every other. Waits after each batch until the nodes
    /// have acted on it, shows progress, prints a summary. Exits non-zero on refusal or
    /// timeout; moves already made stay (run it again to continue).
    Rebalance {
        #[command(flatten)]
        target: AdminTarget,
        /// Moves per batch (one catalog command each; at most 1000).
        #[arg(long, default_value_t = 50)]
        batch: u64,
        /// How long the whole rebalance may take, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Back up one control member's (or chat node's) database as a RocksDB checkpoint.
    ///
    /// The copy is written into `backup_dir/NAME` on the host of the process asked
    /// (`--control`, or `--node`), not where this command runs; `backup_dir` comes from
    /// that process's config (default: `backups` next to its `data_dir`).
    Backup {
        #[command(flatten)]
        target: AdminTarget,
        /// The new backup's name: 1-64 of A-Z a-z 0-9 . _ - , not starting with a dot,
        /// not used yet (e.g. c1-20261125T0300Z).
        #[arg(long)]
        name: String,
        /// Back up this chat node's room logs instead (http://host:port).
        #[arg(long)]
        node: Option<String>,
    },
    /// The step after restoring the whole control plane from a backup (docs/OPERATIONS.md):
    /// replaces the token-signing key (every session and connection token stops working;
    /// users log in again) and moves the user, room and node id counters forward by
    /// 1,000,000, so no id handed out after the backup is handed out again. Harmless to
    /// repeat.
    AfterRestore {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove a control member from the group.
    RemoveMember {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long)]
        id: u64,
    },
}

/// `districhat init`: bootstraps the group through one of its members (idempotent).
pub async fn init(target: &AdminTarget) -> anyhow::Result<()> {
    let reply = admin_request(reqwest::Method::POST, target, "/api/admin/init", None).await?;
    println!("{reply}");
    Ok(())
}

/// Runs one `districhat admin ...` command; prints what the control answered.
pub async fn run(action: AdminAction) -> anyhow::Result<()> {
    let reply = match action {
        AdminAction::AddMember { target, id, addr } => {
            let body = serde_json::json!({"id": id, "addr": addr});
            admin_request(reqwest::Method::POST, &target, "/api/admin/members", Some(body)).await?
        }
        AdminAction::ApproveNode { target, id } => {
            admin_request(reqwest::Method::POST, &target, &format!("/api/admin/nodes/{id}/approve"), None).await?
        }
        AdminAction::Backup { mut target, name, node } => {
            // A node answers the same request on the same path.
            if let Some(node) = node {
                target.control = node;
            }
            let body = serde_json::json!({"name": name});
            admin_request(reqwest::Method::POST, &target, "/api/admin/backup", Some(body)).await?
        }
        AdminAction::AfterRestore { target } => {
            admin_request(reqwest::Method::POST, &target, "/api/admin/after-restore", None).await?
        }
        AdminAction::RemoveMember { target, id } => {
            admin_request(reqwest::Method::DELETE, &target, &format!("/api/admin/members/{id}"), None).await?
        }
        AdminAction::DrainNode { target, node, timeout } => {
            return run_drain(target, node, Duration::from_secs(timeout)).await;
        }
        AdminAction::Rebalance { target, batch, timeout } => {
            return run_rebalance(target, batch, Duration::from_secs(timeout)).await;
        }
        AdminAction::UndrainNode { target, node } => {
            let target = DrainTarget { control: target.control, secret: target.secret, node };
            let view = drain::undrain(&target).await?;
            match view.status.as_str() {
                "down" => format!(
                    "node {} ({}) is down: it takes new rooms and connections once it is heard from",
                    view.id, view.name
                ),
                status => {
                    format!("node {} ({}) is {status}: it takes new rooms and connections again", view.id, view.name)
                }
            }
        }
    };
    println!("{reply}");
    Ok(())
}

/// `admin drain-node`: drains with a spinner showing each step, then prints the summary.
async fn run_drain(target: AdminTarget, node: u64, timeout: Duration) -> anyhow::Result<()> {
    let target = DrainTarget { control: target.control, secret: target.secret, node };
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")?);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!("draining node {node}…"));
    let result = drain::drain(&target, timeout, |progress| {
        let line = drain::describe(progress);
        spinner.println(&line);
        spinner.set_message(line);
    })
    .await;
    spinner.finish_and_clear();
    let summary = result.with_context(|| format!("draining node {node}"))?;
    println!(
        "drained node {} ({}): {} rooms moved as owner, {} as replica, in {:.1} s",
        summary.node,
        summary.name,
        summary.owners_moved,
        summary.replicas_moved,
        summary.elapsed.as_secs_f64()
    );
    println!("it owns and replicates nothing now; stop it, or `admin undrain-node {node}` to put it back");
    Ok(())
}

/// `admin rebalance`: batches with a progress bar (rooms moved / moved + still uneven),
/// then the summary with each node's owned/replicated rooms before → after.
async fn run_rebalance(target: AdminTarget, batch: u64, timeout: Duration) -> anyhow::Result<()> {
    let target = RebalanceTarget { control: target.control, secret: target.secret, batch };
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("[{elapsed}] {bar:30} {pos}/{len} moves  {msg}")?);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("waiting for the nodes to settle…");
    let result = rebalance::rebalance(&target, timeout, |event| match event {
        RebalanceEvent::Batch(report) => {
            bar.inc(report.moves.len() as u64);
            bar.set_length(bar.position() + report.remaining_imbalance);
            bar.set_message(format!("batch of {} moves committed", report.moves.len()));
        }
        RebalanceEvent::Progress(progress) => bar.set_message(rebalance::describe(progress)),
    })
    .await;
    bar.finish_and_clear();
    let summary = result.context("rebalancing")?;
    if summary.moves() == 0 && summary.remaining_imbalance == 0 {
        println!("already balanced: nothing to move ({:.1} s)", summary.elapsed.as_secs_f64());
    } else {
        println!(
            "rebalanced: {} rooms moved ({} owner/replica swaps, {} replica moves) in {} batches, {:.1} s",
            summary.moves(),
            summary.swaps,
            summary.replica_moves,
            summary.batches,
            summary.elapsed.as_secs_f64()
        );
    }
    for line in rebalance::render_counts(&summary.before, &summary.after) {
        println!("  {line}");
    }
    if summary.remaining_imbalance > 0 {
        println!(
            "not fully even (imbalance {}): rooms with a node that is not Up stay where they are",
            summary.remaining_imbalance
        );
    }
    Ok(())
}

/// Sends an admin request with the cluster secret; a non-2xx answer is an error.
pub async fn admin_request(
    method: reqwest::Method,
    target: &AdminTarget,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let control = target.control.trim_end_matches('/');
    let mut request = client.request(method, format!("{control}{path}")).header(SECRET_HEADER, &target.secret);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("reaching {control}"))?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.is_success(), "{control} answered {status}: {text}");
    Ok(text)
}
