//! `districhat chaos`: fault injection with a history checker (docs/RELIABILITY.md).
//!
//! It starts its own cluster ([`cluster`]: 3 controls and 3 nodes as processes of this
//! binary, each in its own network namespace with `--netns`), runs chat clients in several
//! rooms ([`clients`]: client_ids, retries, reconnects, resumes), injects faults one at a
//! time — the named scenarios of docs/REPLICATION.md first, then random ones for
//! `--seconds` — and after each fault heals, waits until every room takes sends again
//! (bounded by [`RECOVERY_BOUND`]). At the end it stops the clients, reads every room's
//! history, stops the processes and reads the nodes' logs from disk, and checks
//! ([`check`]). It exits non-zero on any finding.

mod check;
mod clients;
mod cluster;
pub mod netns;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use self::check::{Findings, RoomState};
use self::clients::{Clients, Target};
use self::cluster::{ChaosCluster, CONTROLS, NODES};
use crate::node::log::RoomLog;

/// After a fault heals, every room must take sends again within this long.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// How long `drain-kill-undrain` waits for each status it expects the catalog to show.
const STATUS_WITHIN: Duration = Duration::from_secs(30);

/// A fault to inject. The first six are the scenarios of docs/REPLICATION.md (issue 11);
/// the seventh, the life of a drained node that crashes ("A drained node that goes
/// silent").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// 1: SIGSTOP the Raft leader for 7 s.
    PauseLeader,
    /// 2: SIGKILL a room's replica; once the catalog has given the room a new replica (its
    /// owner starts copying the log), SIGKILL the owner; restart both 5 s later.
    KillReplicaThenOwner,
    /// 3: cut the Raft leader from the other controls (not from the nodes) for 5 s.
    PartitionLeader,
    /// 4: SIGKILL a room's replica and restart it 3 s later, under sends.
    RestartReplica,
    /// 5: cut a room's owner from its replica for 1.7 s.
    CutOwnerReplica,
    /// 6: cut a room's owner from every control (not from the other nodes) for 5 s.
    CutOwnerFromControls,
    /// 7: drain a room's owner under sends (its rooms move; its clients keep chatting
    /// through it), SIGKILL it, wait until the catalog calls it `drained_down`, restart it,
    /// wait until it is `drained` again, and undrain it.
    DrainKillUndrain,
    /// SIGKILL a random process, restart it 2–10 s later.
    KillRandom,
    /// SIGSTOP a random process for 2–10 s.
    PauseRandom,
}

impl Fault {
    const NAMED: [Fault; 7] = [
        Fault::PauseLeader,
        Fault::KillReplicaThenOwner,
        Fault::PartitionLeader,
        Fault::RestartReplica,
        Fault::CutOwnerReplica,
        Fault::CutOwnerFromControls,
        Fault::DrainKillUndrain,
    ];

    fn needs_partitions(self) -> bool {
        matches!(self, Fault::PartitionLeader | Fault::CutOwnerReplica | Fault::CutOwnerFromControls)
    }
}

/// Flags of `districhat chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Faults to inject first, in order (default: the seven named scenarios; those that
    /// need partitions only with --netns).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Then inject random faults (kills, pauses, and with --netns partitions) until this
    /// many seconds have passed since the start.
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// Run each process in its own network namespace (needs root, `ip` and iptables).
    #[arg(long)]
    pub netns: bool,
    #[arg(long, default_value_t = 24)]
    pub clients: usize,
    #[arg(long, default_value_t = 6)]
    pub rooms: usize,
    /// Pause between two sends of one client, in ms.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Where the cluster's configs, data and logs go (kept); default: a temp dir, kept
    /// only when the run finds something.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Run the cluster's processes from this binary instead of this one (to check an
    /// older build with today's checker).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

/// One injected fault.
#[derive(Debug, Serialize)]
pub struct Round {
    pub fault: Fault,
    /// What was hit, e.g. `c2` or `n1 (room 3's replica) then n3`.
    pub target: String,
    /// From the heal (resume, restart, link back) until every room took a send again.
    pub recovered_ms: u64,
    /// Sends acknowledged so far.
    pub acked: usize,
}

#[derive(Debug, Serialize)]
pub struct ChaosReport {
    pub rounds: Vec<Round>,
    pub acked: usize,
    pub reconnects: usize,
    pub refused: BTreeMap<String, usize>,
    pub findings: Findings,
    pub ok: bool,
    /// Where configs, data and logs are (when kept).
    pub dir: Option<PathBuf>,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("districhat-chaos-").tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let mut report = chaos(&args, &dir).await?;
    if !report.ok || args.dir.is_some() {
        report.dir = Some(dir);
        if args.dir.is_none() {
            // Keep the evidence of a failed run.
            let _ = temp.keep();
        }
    }
    crate::cli::print_report(&report, args.json, render)?;
    anyhow::ensure!(report.ok, "the chaos run found lost, doubled, reordered or diverging messages");
    Ok(())
}

/// Starts the cluster and clients, injects the faults, and checks.
pub async fn chaos(args: &ChaosArgs, dir: &std::path::Path) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let cluster = ChaosCluster::start(dir, args.netns, args.binary.clone()).await?;
    let http = cluster.processes.http.clone();
    let session =
        crate::cli::bench::control::bench_login(&http, &cluster.control_urls[0]).await.context("chaos login")?;
    let mut rooms = Vec::new();
    for i in 0..args.rooms.max(1) {
        let name = format!("chaos-{:06x}-{i}", rand::random::<u32>() & 0xff_ffff);
        rooms.push(cluster.processes.create_room(&session, &name).await?.id);
    }
    let target = Target { http: http.clone(), controls: cluster.control_urls.clone(), session: session.clone() };
    let clients = Clients::start(target, &rooms, args.clients, Duration::from_millis(args.interval_ms));
    let mut findings = Findings::default();
    wait_all_rooms_acked(&clients, &rooms, Instant::now(), RECOVERY_BOUND * 3).await?;

    let mut faults: Vec<Fault> = if args.faults.is_empty() { Fault::NAMED.to_vec() } else { args.faults.clone() };
    faults.retain(|fault| args.netns || !fault.needs_partitions());
    faults.reverse();
    let mut rounds = Vec::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    loop {
        let fault = match faults.pop() {
            Some(fault) => fault,
            None if started.elapsed() < Duration::from_secs(args.seconds) => random_fault(&mut rng, args.netns),
            None => break,
        };
        let (target, healed_at) = inject(&cluster, &session, &rooms, fault, &mut rng).await?;
        let recovered = wait_all_rooms_acked(&clients, &rooms, healed_at, RECOVERY_BOUND).await;
        let recovered_ms = match recovered {
            Ok(at) => at.duration_since(healed_at).as_millis() as u64,
            Err(e) => {
                tracing::error!(?fault, %target, error = %e, "rooms did not take sends again in time");
                findings.slow_recoveries += 1;
                // Let the run go on: the cluster may still come back for the next round.
                wait_all_rooms_acked(&clients, &rooms, healed_at, RECOVERY_BOUND * 6).await?;
                RECOVERY_BOUND.as_millis() as u64
            }
        };
        let round = Round { fault, target, recovered_ms, acked: clients.acked() };
        eprintln!("{:?} on {}: every room took sends {} ms after the heal", round.fault, round.target, recovered_ms);
        rounds.push(round);
    }

    cluster.heal_all()?;
    let seen = clients.stop().await;
    let mut states = BTreeMap::new();
    let placements = cluster.placements(&session).await?;
    for room in &rooms {
        let history = match final_history(&http, &cluster.control_urls, &session, *room).await {
            Ok(history) => history,
            Err(e) => {
                tracing::error!(room, error = %e, "no control serves the room's history");
                findings.unreadable_histories += 1;
                BTreeMap::new()
            }
        };
        let placement = placements.get(room).context("a chaos room has no placement")?;
        let replica = match placement.replica {
            Some(replica) => Some(cluster.node_name(replica).await?),
            None => None,
        };
        let holders = (cluster.node_name(placement.owner).await?, replica);
        states.insert(*room, (history, holders));
    }
    findings.catalog_mismatches = check::catalogs(&cluster.routing_tables().await?);
    cluster.shut_down().await?;
    let mut rooms_state = BTreeMap::new();
    for (room, (history, (owner, replica))) in states {
        let owner_log = read_log(&cluster, &owner, room)?;
        // No replica at the end: nothing holds a second copy, which the check counts.
        let replica_log = match replica {
            Some(replica) => read_log(&cluster, &replica, room)?,
            None => Vec::new(),
        };
        rooms_state.insert(room, RoomState { history, owner_log, replica_log });
    }
    let states = rooms_state;
    let checked = check::histories(&seen, &states);
    findings = Findings {
        slow_recoveries: findings.slow_recoveries,
        catalog_mismatches: findings.catalog_mismatches,
        unreadable_histories: findings.unreadable_histories,
        ..checked
    };
    Ok(ChaosReport {
        rounds,
        acked: seen.acked.len(),
        reconnects: seen.reconnects,
        refused: seen.errors.clone(),
        ok: findings.ok(),
        findings,
        dir: None,
    })
}

/// Injects `fault`, holds it, heals it; returns what was hit and when it healed.
async fn inject(
    cluster: &ChaosCluster,
    session: &str,
    rooms: &[u64],
    fault: Fault,
    rng: &mut impl Rng,
) -> anyhow::Result<(String, Instant)> {
    let processes = &cluster.processes;
    let room = *rooms.choose(rng).context("no rooms")?;
    let placement = *cluster.placements(session).await?.get(&room).context("room placement")?;
    let replica_id = placement.replica.with_context(|| format!("room {room} has no replica to hit"))?;
    let (owner, replica) = (cluster.node_name(placement.owner).await?, cluster.node_name(replica_id).await?);
    let target = match fault {
        Fault::PauseLeader => {
            let leader = cluster.leader().await?;
            hold_paused(cluster, &leader, Duration::from_secs(7)).await?;
            leader
        }
        Fault::KillReplicaThenOwner => {
            processes.kill(&replica).await?;
            wait_new_replica(cluster, session, room, placement).await?;
            processes.kill(&owner).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            processes.restart(&replica, "node").await?;
            processes.restart(&owner, "node").await?;
            format!("{replica} (room {room}'s replica), then {owner} (its owner)")
        }
        Fault::PartitionLeader => {
            let leader = cluster.leader().await?;
            let others: Vec<&str> = CONTROLS.iter().copied().filter(|c| *c != leader).collect();
            cluster.partition(&leader, &others, true)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            cluster.partition(&leader, &others, false)?;
            format!("{leader} cut from {}", others.join(", "))
        }
        Fault::RestartReplica => {
            processes.kill(&replica).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            processes.restart(&replica, "node").await?;
            format!("{replica} (room {room}'s replica)")
        }
        Fault::CutOwnerReplica => {
            cluster.partition(&owner, &[&replica], true)?;
            tokio::time::sleep(Duration::from_millis(1_700)).await;
            cluster.partition(&owner, &[&replica], false)?;
            format!("{owner} (room {room}'s owner) cut from {replica}")
        }
        Fault::CutOwnerFromControls => {
            cluster.partition(&owner, &CONTROLS, true)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            cluster.partition(&owner, &CONTROLS, false)?;
            format!("{owner} (room {room}'s owner) cut from the controls")
        }
        Fault::DrainKillUndrain => {
            let id = placement.owner;
            cluster.drain(id).await?;
            processes.kill(&owner).await?;
            processes.wait_node_status(id, "drained_down", STATUS_WITHIN).await?;
            processes.restart(&owner, "node").await?;
            processes.wait_node_status(id, "drained", STATUS_WITHIN).await?;
            crate::cli::drain::undrain(&cluster.drain_target(id)).await?;
            processes.wait_node_status(id, "up", STATUS_WITHIN).await?;
            format!("{owner} (room {room}'s owner) drained, killed, back drained, undrained")
        }
        Fault::KillRandom => {
            let (name, role) = random_process(rng);
            processes.kill(name).await?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..10_000))).await;
            processes.restart(name, role).await?;
            name.to_string()
        }
        Fault::PauseRandom => {
            let (name, _) = random_process(rng);
            hold_paused(cluster, name, Duration::from_millis(rng.gen_range(2_000..10_000))).await?;
            name.to_string()
        }
    };
    Ok((target, Instant::now()))
}

/// SIGSTOPs `name` for `hold`, then SIGCONTs it.
async fn hold_paused(cluster: &ChaosCluster, name: &str, hold: Duration) -> anyhow::Result<()> {
    cluster.processes.signal(name, "STOP")?;
    tokio::time::sleep(hold).await;
    cluster.processes.signal(name, "CONT")?;
    Ok(())
}

/// Waits until the catalog gives `room` another replica than `before`'s.
async fn wait_new_replica(
    cluster: &ChaosCluster,
    session: &str,
    room: u64,
    before: cluster::Placement,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = cluster.placements(session).await.ok().and_then(|p| p.get(&room).copied());
        if now.is_some_and(|p| p.replica != before.replica) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "room {room} got no new replica within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn random_fault(rng: &mut impl Rng, netns: bool) -> Fault {
    let mut choices = vec![
        Fault::KillRandom,
        Fault::PauseRandom,
        Fault::PauseLeader,
        Fault::RestartReplica,
        Fault::KillReplicaThenOwner,
        Fault::DrainKillUndrain,
    ];
    if netns {
        choices.extend([Fault::PartitionLeader, Fault::CutOwnerReplica, Fault::CutOwnerFromControls]);
    }
    *choices.choose(rng).unwrap_or(&Fault::KillRandom)
}

fn random_process(rng: &mut impl Rng) -> (&'static str, &'static str) {
    let all: Vec<(&str, &str)> =
        CONTROLS.iter().map(|c| (*c, "control")).chain(NODES.iter().map(|n| (*n, "node"))).collect();
    *all.choose(rng).unwrap_or(&("n1", "node"))
}

/// Waits until every room has an acknowledgement after `since`; returns when the last
/// room got its first one (to the 20 ms this polls at).
async fn wait_all_rooms_acked(
    clients: &Clients,
    rooms: &[u64],
    since: Instant,
    bound: Duration,
) -> anyhow::Result<Instant> {
    let deadline = since + bound;
    let mut first: BTreeMap<u64, Instant> = BTreeMap::new();
    loop {
        for room in rooms {
            if let Some(at) = clients.last_ack(*room).filter(|at| *at > since) {
                first.entry(*room).or_insert(at);
            }
        }
        if first.len() == rooms.len() {
            return Ok(first.values().max().copied().unwrap_or(since));
        }
        anyhow::ensure!(Instant::now() < deadline, "some room took no send within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A room's history, asked again for up to [`RECOVERY_BOUND`] while no control serves it.
async fn final_history(
    http: &reqwest::Client,
    controls: &[String],
    session: &str,
    room: u64,
) -> anyhow::Result<BTreeMap<u64, String>> {
    let deadline = Instant::now() + RECOVERY_BOUND;
    loop {
        match crate::cli::drill::load::fetch_history(http, controls, session, room).await {
            Ok(history) => return Ok(history),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Node `name`'s log of `room` from disk (the node must be stopped).
fn read_log(cluster: &ChaosCluster, name: &str, room: u64) -> anyhow::Result<Vec<(u64, String)>> {
    let log = RoomLog::open(&cluster.node_db(name), false, &Default::default())
        .with_context(|| format!("opening {name}'s room log"))?;
    Ok(check::log_entries(&log.after(room, 0, usize::MAX)?))
}

pub fn render(report: &ChaosReport) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["fault", "target", "rooms sending again after", "acked so far"]);
    for round in &report.rounds {
        table.add_row([
            format!("{:?}", round.fault),
            round.target.clone(),
            format!("{} ms", round.recovered_ms),
            round.acked.to_string(),
        ]);
    }
    format!(
        "{table}\n{} acknowledged sends, {} reconnects, refusals {:?}\nfindings: {:?}\n{}",
        report.acked,
        report.reconnects,
        report.refused,
        report.findings,
        if report.ok { "nothing lost, doubled, reordered or diverging" } else { "FINDINGS: see above" }
    )
}
