//! `districhat bench-storm`: a reconnect storm. N chat clients (the `bench` clients),
//! all connected to ONE node of a local cluster, subscribed to rooms spread over every
//! node and sending a trickle of messages; then that node is killed with SIGKILL. Every
//! client reconnects like a browser (fresh token, another node, `subscribe` with
//! `since`, its unacked sends again with the same `client_id`), and the tool reports
//! the time from the kill until each client is subscribed again (p50, p99, max: the max
//! is when the last one is back), split by whether the client's room was owned by the
//! killed node (those wait for the room's failover too), and the bench's check that
//! every acked message reached every subscriber once, in order.
//!
//! The cluster is the one `just cluster` runs (pid files and configs, as for `drill`);
//! the killed node is started again afterwards unless `--keep-down`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::chat::{self, ChatBenchArgs, ChatBenchReport, Journey, LatencySummary, Placement};
use super::socket::Sources;
use crate::cli::drill::process::Cluster;
use crate::protocol::{NodeId, RoomId};

/// Descriptors this process needs besides the clients' sockets.
const OWN_FILES: u64 = 1_024;

/// Flags of `districhat bench-storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct StormBenchArgs {
    /// Any control member of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub control: String,
    /// Clients, all connected to the node that is killed.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Public rooms (spread over every node); client i subscribes to room i % rooms
    /// (10 subscribers a room with the defaults: the trickle is 5,000 deliveries/s).
    #[arg(long, default_value_t = 1_000)]
    pub rooms: usize,
    /// Users the clients log in as, round-robin.
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Messages each client sends over the run.
    #[arg(long, default_value_t = 3)]
    pub messages: usize,
    /// The trickle: messages/s sent by all clients together.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// The node to load and kill [default: the first node up, by id].
    #[arg(long)]
    pub node: Option<NodeId>,
    /// Seconds of load before the kill.
    #[arg(long, default_value_t = 5.0)]
    pub kill_after: f64,
    /// Connection setups (token, connect, hello) in flight at once, at the start and in
    /// the storm: the client side's own bound.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Local addresses 127.0.0.1, 127.0.0.2, … to connect from (0: the OS chooses).
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Where the cluster keeps `<name>.pid` and `<name>/<role>.log`.
    #[arg(long, default_value = "data/cluster")]
    pub cluster_dir: PathBuf,
    /// Where `<name>.toml` configs are (to start the killed node again).
    #[arg(long, default_value = "cluster")]
    pub configs: PathBuf,
    /// Leave the killed node down.
    #[arg(long)]
    pub keep_down: bool,
    /// Longest wait, in seconds, for every client to have all its messages acked.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Longest wait, in seconds, after the load for every acked message to reach every
    /// subscriber.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of a storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub killed_node: NodeId,
    pub killed_name: String,
    pub clients: usize,
    /// Clients whose first connection was to the killed node.
    pub on_killed_node: usize,
    /// Of those, subscribed again (on another node) after the kill.
    pub back: usize,
    /// Of those, never back (gave up, or not subscribed at the end).
    pub not_back: usize,
    /// From the kill to each client subscribed again, every client.
    pub time_back: LatencySummary,
    /// The same for clients whose room the killed node owned (its failover included).
    pub time_back_room_moved: LatencySummary,
    /// The same for clients whose room lived on another node.
    pub time_back_room_elsewhere: LatencySummary,
    /// The chat bench's report of the whole run (sends, acks, losses, duplicates).
    pub chat: ChatBenchReport,
}

impl StormReport {
    /// Every client back, nothing lost, doubled or reordered.
    pub fn ok(&self) -> bool {
        self.not_back == 0 && self.back == self.on_killed_node && self.on_killed_node > 0 && self.chat.correct()
    }
}

pub async fn run(args: StormBenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::cli::print_report(&report, args.json, render)?;
    anyhow::ensure!(report.ok(), "not every client came back, or messages were lost, doubled or reordered");
    Ok(())
}

/// Loads one node, kills it, measures the clients' way back and checks the messages.
pub async fn measure(args: &StormBenchArgs) -> anyhow::Result<StormReport> {
    // One socket per client (a lost one is closed before the next is opened), and the
    // HTTP connections of the setups in flight (tokens from the control).
    let wanted = (args.clients as u64).saturating_add(args.concurrency as u64) + OWN_FILES;
    let limit = crate::fd_limit::raise_to(wanted)?;
    anyhow::ensure!(limit.soft >= wanted, "this process may open {} files, {wanted} are needed", limit.soft);
    let cluster = Cluster::new(&args.control, &args.cluster_dir, &args.configs)?;
    let victim_id = match args.node {
        Some(id) => id,
        None => first_node_up(&cluster.http, cluster.control()).await?,
    };
    let victim = cluster.node(victim_id).await?;
    cluster.pid(&victim.name).context("the node to kill must be one of the cluster's processes")?;
    let bearer = super::control::bench_login(&cluster.http, cluster.control()).await?;

    let chat_args = ChatBenchArgs {
        control: args.control.clone(),
        clients: args.clients,
        rooms: args.rooms,
        messages: args.messages,
        rate: args.rate,
        users: Some(args.users),
        timeout: args.timeout,
        drain: args.drain,
        ..ChatBenchArgs::default()
    };
    let placement = Placement {
        first_node: Some(victim_id),
        sources: Sources::loopback(args.sources),
        setup_concurrency: args.concurrency,
    };
    let kill_after = Duration::try_from_secs_f64(args.kill_after).unwrap_or_default();
    let (cluster_ref, victim_name, bearer_ref) = (&cluster, victim.name.clone(), &bearer);
    let (chat, (killed_at, owners), journeys) = chat::measure_around(&chat_args, placement, |started| async move {
        tokio::time::sleep_until(started + kill_after).await;
        let owners = room_owners(&cluster_ref.http, cluster_ref.control(), bearer_ref).await?;
        let killed_at = cluster_ref.kill(&victim_name).await?;
        eprintln!("killed {victim_name} (node {victim_id})");
        Ok((Instant::from_std(killed_at), owners))
    })
    .await?;
    if !args.keep_down {
        cluster.restart(&victim.name, "node").await?;
        cluster.wait_node_up(victim_id).await?;
    }
    Ok(summarize(victim_id, victim.name, killed_at, &owners, &journeys, chat))
}

/// Folds the clients' journeys into the storm's figures.
fn summarize(
    victim: NodeId,
    victim_name: String,
    killed_at: Instant,
    owners: &HashMap<RoomId, NodeId>,
    journeys: &[Journey],
    chat: ChatBenchReport,
) -> StormReport {
    let on_victim: Vec<&Journey> = journeys.iter().filter(|j| j.first_node == Some(victim)).collect();
    let (mut all, mut moved, mut elsewhere, mut not_back) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for journey in &on_victim {
        let back = journey.resumed_at.iter().find(|at| **at >= killed_at);
        match back {
            Some(at) if journey.alive => {
                let took = at.saturating_duration_since(killed_at);
                all.push(took);
                if owners.get(&journey.room) == Some(&victim) {
                    moved.push(took);
                } else {
                    elsewhere.push(took);
                }
            }
            _ => not_back += 1,
        }
    }
    StormReport {
        killed_node: victim,
        killed_name: victim_name,
        clients: journeys.len(),
        on_killed_node: on_victim.len(),
        back: all.len(),
        not_back,
        time_back: LatencySummary::of(all),
        time_back_room_moved: LatencySummary::of(moved),
        time_back_room_elsewhere: LatencySummary::of(elsewhere),
        chat,
    }
}

/// The id of the first node (by id) the catalog lists as up.
async fn first_node_up(http: &reqwest::Client, control: &str) -> anyhow::Result<NodeId> {
    let nodes: Value = http.get(format!("{control}/api/nodes")).send().await?.error_for_status()?.json().await?;
    let mut up: Vec<NodeId> = nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|node| node["status"] == "up")
        .filter_map(|node| node["id"].as_u64())
        .collect();
    up.sort_unstable();
    up.first().copied().context("no chat node is up")
}

/// Every visible room's owner, from the catalog.
async fn room_owners(http: &reqwest::Client, control: &str, bearer: &str) -> anyhow::Result<HashMap<RoomId, NodeId>> {
    let rooms: Value =
        http.get(format!("{control}/api/rooms")).bearer_auth(bearer).send().await?.error_for_status()?.json().await?;
    Ok(rooms["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|room| Some((room["id"].as_u64()?, room["owner"].as_u64()?)))
        .collect())
}

/// The report as tables.
pub fn render(report: &StormReport) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["clients back after the kill", "count", "p50", "p99", "max"]);
    for (what, summary) in [
        ("all", &report.time_back),
        ("room owned by the killed node", &report.time_back_room_moved),
        ("room on another node", &report.time_back_room_elsewhere),
    ] {
        table.add_row([
            what.to_string(),
            summary.samples.to_string(),
            format!("{:.0} ms", summary.p50_ms),
            format!("{:.0} ms", summary.p99_ms),
            format!("{:.0} ms", summary.max_ms),
        ]);
    }
    let chat = &report.chat;
    format!(
        "killed node {} ({}) holding {} of {} clients; {} back on other nodes, {} not back\n{table}\n\
         messages: {} sent, {} acked, {} unacked, {} retries; {} of {} deliveries\n\
         lost {}, duplicated {}, out of order {}, duplicate ids {}; {}",
        report.killed_node,
        report.killed_name,
        report.on_killed_node,
        report.clients,
        report.back,
        report.not_back,
        chat.sent,
        chat.acked,
        chat.unacked,
        chat.retries,
        chat.deliveries,
        chat.expected_deliveries,
        chat.lost,
        chat.duplicated,
        chat.out_of_order,
        chat.duplicate_ids,
        if report.ok() {
            "every client back, nothing lost or doubled"
        } else {
            "NOT EVERY CLIENT BACK, OR MESSAGES LOST"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_timed_from_the_kill_and_split_by_where_their_room_lived() {
        let killed_at = Instant::now();
        let journey = |room, first, after_ms: Option<u64>, alive| Journey {
            room,
            first_node: Some(first),
            resumed_at: after_ms.map(|ms| killed_at + Duration::from_millis(ms)).into_iter().collect(),
            alive,
        };
        let journeys = [
            journey(1, 1, Some(4_000), true),
            journey(2, 1, Some(100), true),
            journey(2, 1, None, false),
            journey(2, 2, None, true),
        ];
        let owners: HashMap<RoomId, NodeId> = [(1, 1), (2, 3)].into();
        let report = summarize(1, "n1".into(), killed_at, &owners, &journeys, ChatBenchReport::default());
        assert_eq!((report.clients, report.on_killed_node, report.back, report.not_back), (4, 3, 2, 1));
        assert_eq!((report.time_back_room_moved.samples, report.time_back_room_elsewhere.samples), (1, 1));
        assert!((report.time_back.max_ms - 4_000.0).abs() < 1.0);
        assert!(!report.ok(), "a client not back fails the storm");
        assert!(render(&report).contains("1 not back"));
    }
}
