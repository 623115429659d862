//! `districhat drill`: failure rehearsal against a running local cluster (`just cluster`).
//!
//! Each round runs a steady load, kills one process with SIGKILL (found through its pid
//! file), measures how long until the load succeeds again, restarts the process, and
//! checks that every acknowledged write is present exactly once and in order. It prints
//! a table per round and a summary, and fails if anything was lost, doubled or reordered.

mod history;
pub(crate) mod load;
pub(crate) mod process;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use self::load::{Load, LoadReport};
use self::process::Cluster;

/// What to break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The Raft leader (writes stall until a new one is elected).
    KillLeader,
    /// The chat node owning the drill room (its replica must take over).
    KillNode,
    /// The chat node holding the drill room's replica (a new replica must be chosen).
    KillReplica,
    /// Every control and every node at once (a power cut): everything acknowledged must
    /// come back from disk.
    RestartAll,
}

/// Flags of `districhat drill`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Any control member of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub control: String,
    /// Where the cluster keeps `<name>.pid` and `<name>/<role>.log`.
    #[arg(long, default_value = "data/cluster")]
    pub cluster_dir: PathBuf,
    /// Where `<name>.toml` configs are (to restart a killed process).
    #[arg(long, default_value = "cluster")]
    pub configs: PathBuf,
    /// kill-node and kill-replica: fill each round's room with this many messages first
    /// (failover must not take longer for a long history).
    #[arg(long, default_value_t = 0)]
    pub history: u64,
    #[arg(long)]
    pub json: bool,
}

/// One round's outcome.
#[derive(Debug, Serialize)]
pub struct Round {
    pub round: usize,
    pub victim: String,
    /// From the kill to the first write (or chat send) that succeeded after it.
    pub recovery_ms: f64,
    pub acked: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    /// kill-node and kill-replica: from the kill until the catalog showed the room's
    /// (new) replica in sync again, holding the whole log.
    pub replica_in_sync_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub scenario: Scenario,
    pub rounds: Vec<Round>,
    pub recovery_min_ms: f64,
    pub recovery_median_ms: f64,
    pub recovery_max_ms: f64,
    pub ok: bool,
}

pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let report = drill(&args).await?;
    crate::cli::print_report(&report, args.json, render)?;
    anyhow::ensure!(report.ok, "acknowledged writes were lost, doubled or reordered");
    Ok(())
}

/// Runs every round and summarises them.
pub async fn drill(args: &DrillArgs) -> anyhow::Result<DrillReport> {
    let cluster = Cluster::new(&args.control, &args.cluster_dir, &args.configs)?;
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        // A user per round: the catalog-write load creates rooms as fast as they are
        // acknowledged, and one user may create at most the control's `max_rooms_per_user`.
        let token =
            crate::cli::bench::control::bench_login(&cluster.http, cluster.control()).await.context("drill login")?;
        let result = match args.scenario {
            Scenario::KillLeader => leader_round(&cluster, &token, round).await?,
            Scenario::KillNode | Scenario::KillReplica => node_round(&cluster, &token, round, args).await?,
            Scenario::RestartAll => restart_all_round(&cluster, &token, round).await?,
        };
        eprintln!("round {round}: {} back after {:.0} ms", result.victim, result.recovery_ms);
        rounds.push(result);
    }
    let mut recoveries: Vec<f64> = rounds.iter().map(|r| r.recovery_ms).collect();
    recoveries.sort_by(f64::total_cmp);
    let ok = rounds.iter().all(|r| r.lost == 0 && r.duplicated == 0 && r.out_of_order == 0);
    Ok(DrillReport {
        scenario: args.scenario,
        recovery_min_ms: recoveries.first().copied().unwrap_or(0.0),
        recovery_median_ms: recoveries.get(recoveries.len() / 2).copied().unwrap_or(0.0),
        recovery_max_ms: recoveries.last().copied().unwrap_or(0.0),
        rounds,
        ok,
    })
}

/// Kill the Raft leader under a stream of catalog writes sent to any member.
async fn leader_round(cluster: &Cluster, token: &str, round: usize) -> anyhow::Result<Round> {
    let prefix = format!("drill-{:08x}-{round}", rand::random::<u32>());
    let load = Load::control(cluster.http.clone(), cluster.control_urls().await?, token.to_string(), prefix);
    load.wait_acks(20).await?;
    // Measure from a steady cluster: a member restarted by the previous round may still
    // be catching up, and an election it causes would be counted against this kill.
    let leader = cluster.steady_leader().await?;
    let killed_at = cluster.kill(&leader.name).await?;
    load.wait_success_after(killed_at, Duration::from_secs(30)).await?;
    cluster.restart(&leader.name, "control").await?;
    cluster.wait_control_healthy(&leader.addr).await?;
    load.wait_acks(load.acked() + 20).await?;
    let report = load.stop().await;
    let check = load::check_rooms(&cluster.http, &cluster.leader_url().await?, token, &report).await?;
    Ok(round_result(round, leader.name, killed_at, &report, check))
}

/// Kill the owner (or replica) of a fresh room (with `--history` messages in it) under a
/// stream of chat sends.
async fn node_round(cluster: &Cluster, token: &str, round: usize, args: &DrillArgs) -> anyhow::Result<Round> {
    let room = cluster.create_room(token, &format!("drill-{:08x}-{round}", rand::random::<u32>())).await?;
    let victim_id = if args.scenario == Scenario::KillNode { room.owner } else { room.replica };
    let victim = cluster.node(victim_id).await?;
    let since = match args.history {
        0 => 0,
        count => history::fill(&cluster.http, cluster.control(), token, room.id, count).await?,
    };
    let (http, control) = (cluster.http.clone(), cluster.control().to_string());
    let load = Load::chat(http, control, token.to_string(), room.id, victim.addr.clone(), since);
    load.wait_acks(20).await?;
    let killed_at = cluster.kill(&victim.name).await?;
    load.wait_success_after(killed_at, Duration::from_secs(60)).await?;
    cluster.wait_replica_in_sync(token, room.id, Duration::from_secs(600)).await?;
    let in_sync_ms = killed_at.elapsed().as_secs_f64() * 1000.0;
    cluster.restart(&victim.name, "node").await?;
    cluster.wait_node_up(victim_id).await?;
    load.wait_acks(load.acked() + 20).await?;
    let report = load.stop().await;
    let check = load::check_history(&cluster.http, cluster.control(), token, room.id, &report).await?;
    let result = round_result(round, victim.name, killed_at, &report, check);
    Ok(Round { replica_in_sync_ms: Some(in_sync_ms), ..result })
}

/// Kill every process under both loads (catalog writes and chat sends), start them all
/// again, and check both: recovery is when both loads succeed again.
async fn restart_all_round(cluster: &Cluster, token: &str, round: usize) -> anyhow::Result<Round> {
    let name = format!("drill-{:08x}-{round}", rand::random::<u32>());
    let room = cluster.create_room(token, &name).await?;
    let (http, control) = (cluster.http.clone(), cluster.control().to_string());
    let writes = Load::control(http.clone(), cluster.control_urls().await?, token.to_string(), format!("{name}-w"));
    let chat = Load::chat(http, control, token.to_string(), room.id, String::new(), 0);
    writes.wait_acks(20).await?;
    chat.wait_acks(20).await?;
    let processes = cluster.processes();
    for (name, _) in &processes {
        cluster.kill(name).await?;
    }
    // Measured from when the last process died: until then the others still served.
    let killed_at = Instant::now();
    for (name, role) in &processes {
        cluster.restart(name, role).await?;
    }
    writes.wait_success_after(killed_at, Duration::from_secs(120)).await?;
    chat.wait_success_after(killed_at, Duration::from_secs(120)).await?;
    cluster.wait_all_nodes_up().await?;
    writes.wait_acks(writes.acked() + 20).await?;
    chat.wait_acks(chat.acked() + 20).await?;
    let (write_report, chat_report) = (writes.stop().await, chat.stop().await);
    let write_check = load::check_rooms(&cluster.http, &cluster.leader_url().await?, token, &write_report).await?;
    let chat_check = load::check_history(&cluster.http, cluster.control(), token, room.id, &chat_report).await?;
    let writes_back = round_result(round, String::new(), killed_at, &write_report, write_check);
    let chat_back = round_result(round, String::new(), killed_at, &chat_report, chat_check);
    Ok(Round {
        round,
        victim: format!("all {}", processes.len()),
        recovery_ms: writes_back.recovery_ms.max(chat_back.recovery_ms),
        replica_in_sync_ms: None,
        acked: writes_back.acked + chat_back.acked,
        lost: writes_back.lost + chat_back.lost,
        duplicated: writes_back.duplicated + chat_back.duplicated,
        out_of_order: writes_back.out_of_order + chat_back.out_of_order,
    })
}

fn round_result(round: usize, victim: String, killed_at: Instant, report: &LoadReport, check: load::Check) -> Round {
    let recovery = report.first_success_after(killed_at).map_or(f64::NAN, |at| (at - killed_at).as_secs_f64() * 1000.0);
    Round {
        round,
        victim,
        recovery_ms: recovery,
        acked: report.acked.len(),
        lost: check.lost,
        duplicated: check.duplicated,
        out_of_order: check.out_of_order,
        replica_in_sync_ms: None,
    }
}

pub fn render(report: &DrillReport) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["round", "killed", "recovery", "replica in sync", "acked", "lost", "duplicated", "out of order"]);
    for r in &report.rounds {
        table.add_row([
            r.round.to_string(),
            r.victim.clone(),
            format!("{:.0} ms", r.recovery_ms),
            r.replica_in_sync_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.0} ms")),
            r.acked.to_string(),
            r.lost.to_string(),
            r.duplicated.to_string(),
            r.out_of_order.to_string(),
        ]);
    }
    format!(
        "{table}\n{:?}: recovery min {:.0} ms, median {:.0} ms, max {:.0} ms; {}",
        report.scenario,
        report.recovery_min_ms,
        report.recovery_median_ms,
        report.recovery_max_ms,
        if report.ok {
            "nothing lost, doubled or reordered"
        } else {
            "ACKNOWLEDGED WRITES WERE LOST, DOUBLED OR REORDERED"
        }
    )
}
