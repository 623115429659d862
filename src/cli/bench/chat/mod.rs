//! `districhat bench`: real WebSocket chat clients spread over the nodes, measuring what a
//! user sees — ack latency, end-to-end delivery latency, throughput — and checking the
//! guarantees: per room and subscriber, every acked message arrives, once, in `seq` order.
//!
//! A run has four phases, driven by [`measure`] through a `watch` channel:
//! 1. **setup** over the control's REST API: register the users (argon2 is slow, so
//!    clients share them round-robin), create the public rooms; every client then gets a
//!    connection token (`GET /api/token`), connects to a node (round-robin by client
//!    index over the nodes ordered by id), says `hello` and subscribes to room
//!    `index % rooms`;
//! 2. **load**: every client sends its messages, with at most `--window` unacked, or at
//!    `--rate` messages/s in total (a staggered interval per client);
//! 3. **drain**: no more sends; wait (at most `--drain` s) until every subscriber has
//!    received every acked message of its room;
//! 4. **stop**: clients hand in what they saw ([`client::ClientOutcome`]); the pure
//!    accounting in [`tally`] turns that into a [`ChatBenchReport`].
//!
//! Clients resume like the browser does when a connection breaks (fresh token, next node,
//! `subscribe` with `since`, unacked sends again with the same `client_id`), so the
//! bench can run across a node kill and tell whether anything was lost or shown twice.

mod client;
mod hops;
mod tally;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{stream, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::bench::control::bench_login;
use crate::cli::bench::socket::Sources;
use crate::protocol::{NodeId, RoomId};
pub(crate) use client::connection_token;
use client::{lock, ClientOutcome, Phase, Shared};
pub use tally::{LatencySummary, OrderCounts};

/// Users registered when `--users` is not given (at most one per client).
pub const DEFAULT_MAX_USERS: usize = 50;
/// How long clients get to connect and subscribe before the load starts anyway.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopped clients get to hand in their outcome.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Connection setups (token, connect, hello) in flight at once.
pub const SETUP_CONCURRENCY: usize = 64;
/// Registrations in flight at once (each is an argon2 hash on the control).
const REGISTER_CONCURRENCY: usize = 4;
/// How often the progress bar and the phase conditions are looked at.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Flags of `districhat bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatBenchArgs {
    /// Any control member.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub control: String,
    /// WebSocket clients (simulated browsers), spread round-robin over the nodes.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Public rooms to create; client i subscribes to and sends in room i % rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Messages each client sends.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Total offered send rate in messages/s, spread evenly over the clients; 0 sends as
    /// fast as acks come back (see --window).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Users to register, shared by the clients round-robin [default: min(clients, 50)].
    #[arg(long)]
    pub users: Option<usize>,
    /// Unacked sends per client without --rate.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Longest wait, in seconds, for every client to have all its messages acked.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Longest wait, in seconds, after the load for every acked message to reach every
    /// subscriber of its room.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Default for ChatBenchArgs {
    /// The flags' defaults, for tests: `ChatBenchArgs { control, clients: 4, ..Default::default() }`.
    fn default() -> Self {
        Self {
            control: "http://127.0.0.1:7000".into(),
            clients: 100,
            rooms: 10,
            messages: 20,
            rate: 0.0,
            users: None,
            window: 8,
            timeout: 300,
            drain: 10,
            json: false,
        }
    }
}

/// The outcome of a run. Correct runs have `lost`, `duplicated`, `out_of_order` and
/// `duplicate_ids` at 0 (see [`ChatBenchReport::correct`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatBenchReport {
    pub clients: usize,
    /// Clients that subscribed at least once.
    pub clients_connected: usize,
    /// Clients not connected when the run ended (gave up reconnecting): their deliveries
    /// are not checked for losses.
    pub clients_failed: usize,
    pub rooms: usize,
    pub users: usize,
    /// Nodes the clients were connected to (ids from `welcome`).
    pub nodes_used: Vec<NodeId>,
    /// Offered rate in messages/s; `None` = window-driven.
    pub rate: Option<f64>,
    /// From the start of the load until every client had its messages acked (or gave up).
    pub load_seconds: f64,
    /// Messages sent (distinct `client_id`s).
    pub sent: u64,
    pub acked: u64,
    /// Sent, never acked (out of retries, or still in flight at the end).
    pub unacked: u64,
    /// Refused with an error not worth a retry.
    pub rejected: u64,
    /// Sends repeated with the same `client_id`.
    pub retries: u64,
    pub reconnects: u64,
    /// Acks per second, from the start of the load to the last ack.
    pub sends_acked_per_sec: f64,
    /// `message` frames received (each subscriber counts; duplicates do not).
    pub deliveries: u64,
    /// Deliveries owed to the subscribers connected at the end.
    pub expected_deliveries: u64,
    /// Deliveries per second, from the start of the load to the last delivery.
    pub deliveries_per_sec: f64,
    /// From the first send of a `client_id` to its ack.
    pub ack_latency: LatencySummary,
    /// From the attempt that was acked to its ack (the same as `ack_latency` when no send
    /// was retried): the cluster's own time once it accepted a send.
    pub accepted_ack_latency: LatencySummary,
    /// From the first send of a `client_id` to a subscriber receiving it.
    pub delivery_latency: LatencySummary,
    /// Acked messages that some subscriber connected at the end never received.
    pub lost: u64,
    /// (subscriber, acked message) pairs that never arrived.
    pub missed_deliveries: u64,
    /// A seq received twice by the same subscriber.
    pub duplicated: u64,
    /// A seq lower than one the subscriber had already received.
    pub out_of_order: u64,
    /// Jumps over seqs not received yet (they may have arrived later: see `lost`).
    pub gaps: u64,
    /// One `client_id` delivered under two seqs (a retry stored twice).
    pub duplicate_ids: u64,
    /// `error` frames from the nodes, by code.
    pub errors: BTreeMap<String, u64>,
    /// Problems the bench clients saw themselves (connect, disconnected, timeout, ...).
    pub failures: BTreeMap<String, u64>,
    /// The load did not finish within `--timeout`.
    pub load_timed_out: bool,
    /// Every connected subscriber received every acked message within `--drain`.
    pub drain_complete: bool,
    pub drain_seconds: f64,
    /// Where the time went, per hop of the message path, from the nodes' histograms
    /// (empty when no node's `/metrics` answered).
    pub hops: Vec<hops::Hop>,
}

impl ChatBenchReport {
    /// Nothing lost, duplicated or reordered.
    pub fn correct(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.duplicate_ids == 0
    }
}

/// Runs the chat benchmark and prints its report (JSON with `--json`).
pub async fn run(args: ChatBenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    // Usable as a check: lost, duplicated or reordered messages fail the command.
    anyhow::ensure!(report.correct(), "the run lost, duplicated or reordered messages");
    Ok(())
}

/// How a run places its clients, beyond the flags of `bench`.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Every client connects to this node first (`bench-storm`), and to the others after.
    pub first_node: Option<NodeId>,
    /// Local addresses to connect from (more sockets than one address has ports).
    pub sources: Sources,
    /// Connection setups in flight at once; 0: [`SETUP_CONCURRENCY`].
    pub setup_concurrency: usize,
}

/// What one client went through, for callers that measure more than the report.
#[derive(Debug, Clone)]
pub struct Journey {
    pub room: RoomId,
    /// The node of its first connection.
    pub first_node: Option<NodeId>,
    /// When it was subscribed again after each lost connection.
    pub resumed_at: Vec<Instant>,
    /// Connected and subscribed at the end.
    pub alive: bool,
}

/// Sets up users, rooms and clients, runs the load and the drain, and measures them.
/// Fails only when the setup over REST fails or no client could connect at all.
pub async fn measure(args: &ChatBenchArgs) -> anyhow::Result<ChatBenchReport> {
    let (report, (), _) = measure_around(args, Placement::default(), |_| async { Ok(()) }).await?;
    Ok(report)
}

/// [`measure`] with the clients placed by `placement`, and `during_load` run once the
/// load has started (it gets the start instant; `bench-storm` kills a node in it). The
/// load phase ends once `during_load` has returned and every client is done sending.
/// Returns the report, what `during_load` returned, and every client's [`Journey`].
pub async fn measure_around<T, F, Fut>(
    args: &ChatBenchArgs,
    placement: Placement,
    during_load: F,
) -> anyhow::Result<(ChatBenchReport, T, Vec<Journey>)>
where
    F: FnOnce(Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
    let users = args.users.unwrap_or(DEFAULT_MAX_USERS).clamp(1, args.clients);
    let control = args.control.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let run_id: u32 = rand::random();

    let progress = ProgressBar::new(users as u64);
    progress.set_style(ProgressStyle::with_template("{msg:<24} {bar:40} {pos}/{len}")?);
    progress.set_message("registering users");
    let bearers = register_users(&http, &control, users, &progress).await?;
    progress.set_message("creating rooms");
    progress.set_length(args.rooms as u64);
    progress.set_position(0);
    let rooms = create_rooms(&http, &control, &bearers[0], run_id, args.rooms, &progress).await?;

    let controls = cluster_controls(&http, &control).await;
    let shared = Arc::new(Shared {
        http,
        controls,
        run_id,
        clients: args.clients,
        messages: args.messages,
        window: args.window,
        period: tally::send_period(args.rate, args.clients),
        setup_slots: Semaphore::new(match placement.setup_concurrency {
            0 => SETUP_CONCURRENCY,
            n => n,
        }),
        first_node: placement.first_node,
        sources: placement.sources,
        sent_at: Default::default(),
        acked: Default::default(),
        counters: Default::default(),
    });
    let counters = &shared.counters;
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let handles: Vec<JoinHandle<ClientOutcome>> = (0..args.clients)
        .map(|index| {
            let (room, bearer) = (rooms[index % rooms.len()], bearers[index % bearers.len()].clone());
            tokio::spawn(client::run(shared.clone(), index, room, bearer, phase_rx.clone()))
        })
        .collect();
    drop(phase_rx);

    progress.set_message("connecting clients");
    progress.set_length(args.clients as u64);
    progress.set_position(0);
    let clients = args.clients;
    wait_until(SETUP_TIMEOUT, || {
        let ready = counters.ready.load(Ordering::Relaxed);
        progress.set_position(ready as u64);
        ready >= clients
    })
    .await;

    let node_addrs = node_addrs(&shared.http, &control).await;
    let hops_before = hops::read(&shared.http, &node_addrs).await;
    let started = Instant::now();
    phase.send_replace(Phase::Load(started));
    progress.set_length((args.clients * args.messages) as u64);
    progress.set_position(0);
    let sending = wait_until(Duration::from_secs(args.timeout), || {
        progress.set_position(counters.acked.load(Ordering::Relaxed));
        progress.set_message(format!("{} delivered", counters.deliveries.load(Ordering::Relaxed)));
        counters.sending_done.load(Ordering::Relaxed) >= clients
    });
    let (during, finished) = tokio::join!(during_load(started), sending);
    let during = match during {
        Ok(during) => during,
        Err(e) => {
            phase.send_replace(Phase::Stop);
            progress.finish_and_clear();
            handles.iter().for_each(JoinHandle::abort);
            return Err(e);
        }
    };
    let load_seconds = started.elapsed().as_secs_f64();

    let snapshot = Arc::new(lock(&shared.acked).clone());
    phase.send_replace(Phase::Drain(snapshot));
    progress.set_message("draining");
    let drain_started = Instant::now();
    let drain_complete = wait_until(Duration::from_secs(args.drain), || {
        progress.set_position(counters.acked.load(Ordering::Relaxed));
        counters.drained.load(Ordering::Relaxed) >= clients
    })
    .await;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    phase.send_replace(Phase::Stop);
    let hops_after = hops::read(&shared.http, &node_addrs).await;
    let (outcomes, unreported) = collect(handles).await;
    progress.finish_and_clear();

    if outcomes.iter().all(|outcome| outcome.tracker.base().is_none()) {
        let mut failures = BTreeMap::new();
        outcomes.iter().for_each(|outcome| tally::merge_counts(&mut failures, &outcome.failures));
        let first = outcomes.iter().find_map(|outcome| outcome.first_failure.clone()).unwrap_or_default();
        anyhow::bail!("no client could connect and subscribe: {failures:?}; first failure: {first}");
    }
    let acked = lock(&shared.acked).clone();
    let run = RunInfo {
        clients: args.clients,
        rooms: args.rooms,
        users,
        rate: tally::send_period(args.rate, args.clients).map(|_| args.rate),
        started,
        load_seconds,
        load_timed_out: !finished,
        drain_complete,
        drain_seconds,
        unreported,
    };
    let mut report = summarize(&run, &outcomes, &acked);
    report.hops = hops::diff(&hops_before, &hops_after);
    let journeys = outcomes
        .into_iter()
        .map(|outcome| Journey {
            room: outcome.room,
            first_node: outcome.first_node,
            resumed_at: outcome.resumed_at,
            alive: outcome.alive,
        })
        .collect();
    Ok((report, during, journeys))
}

/// `host:port` of every node the catalog lists (for their `/metrics`).
async fn node_addrs(http: &reqwest::Client, control: &str) -> Vec<String> {
    let Ok(response) = http.get(format!("{control}/api/nodes")).send().await else { return Vec::new() };
    let Ok(body) = response.json::<serde_json::Value>().await else { return Vec::new() };
    let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
    nodes.iter().filter_map(|node| node["addr"].as_str().map(str::to_string)).collect()
}

/// The report as text.
pub fn render(report: &ChatBenchReport) -> String {
    let mut out = String::new();
    let nodes: Vec<String> = report.nodes_used.iter().map(u64::to_string).collect();
    let rate = report.rate.map_or("unlimited (window)".to_string(), |rate| format!("{rate} msg/s offered"));
    let _ = writeln!(
        out,
        "{} clients ({} connected, {} failed) on {} node(s) [{}], {} rooms, {} users, rate {rate}",
        report.clients,
        report.clients_connected,
        report.clients_failed,
        report.nodes_used.len(),
        nodes.join(", "),
        report.rooms,
        report.users,
    );
    let _ = writeln!(
        out,
        "sends:       {} sent, {} acked ({:.0} acked/s), {} unacked, {} rejected, {} retries, {} reconnects",
        report.sent,
        report.acked,
        report.sends_acked_per_sec,
        report.unacked,
        report.rejected,
        report.retries,
        report.reconnects
    );
    let _ = writeln!(
        out,
        "deliveries:  {} of {} expected ({:.0} delivered/s); load {:.2} s{}",
        report.deliveries,
        report.expected_deliveries,
        report.deliveries_per_sec,
        report.load_seconds,
        if report.load_timed_out { " (timed out)" } else { "" }
    );
    let latency = |summary: &LatencySummary| {
        format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", summary.p50_ms, summary.p99_ms, summary.max_ms)
    };
    let _ = writeln!(out, "ack latency:       {}", latency(&report.ack_latency));
    if report.retries > 0 {
        let _ = writeln!(out, "  of the attempt acked (no retry waits): {}", latency(&report.accepted_ack_latency));
    }
    let _ = writeln!(out, "delivery latency:  {}", latency(&report.delivery_latency));
    let _ = writeln!(
        out,
        "lost {} ({} missed deliveries), duplicated {}, out-of-order {}, duplicate ids {}, gaps {}",
        report.lost,
        report.missed_deliveries,
        report.duplicated,
        report.out_of_order,
        report.duplicate_ids,
        report.gaps
    );
    let counts = |counts: &BTreeMap<String, u64>| {
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.iter().map(|(code, n)| format!("{code} {n}")).collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(out, "errors:      {}", counts(&report.errors));
    let _ = writeln!(out, "failures:    {}", counts(&report.failures));
    let _ = writeln!(
        out,
        "drain:       {} in {:.2} s",
        if report.drain_complete { "complete" } else { "INCOMPLETE" },
        report.drain_seconds
    );
    if !report.hops.is_empty() {
        let _ = writeln!(out, "where the time goes (all nodes; at most, to a histogram bucket):");
        let _ = writeln!(out, "  {:<66} {:>9} {:>9} {:>9}", "hop", "samples", "p50 ms", "p99 ms");
        for hop in &report.hops {
            let _ = writeln!(
                out,
                "  {:<66} {:>9} {:>9} {:>9}",
                hop.what, hop.samples, hop.p50_ms_at_most, hop.p99_ms_at_most
            );
        }
    }
    out
}

/// What the coordinator knows about a run, besides the clients' outcomes.
struct RunInfo {
    clients: usize,
    rooms: usize,
    users: usize,
    rate: Option<f64>,
    started: Instant,
    load_seconds: f64,
    load_timed_out: bool,
    drain_complete: bool,
    drain_seconds: f64,
    /// Clients that handed in no outcome (stuck past the join timeout, or panicked).
    unreported: usize,
}

/// Folds the clients' outcomes into the report.
fn summarize(run: &RunInfo, outcomes: &[ClientOutcome], acked: &tally::AckedSets) -> ChatBenchReport {
    let mut counts = OrderCounts::default();
    let mut errors = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let mut nodes = BTreeSet::new();
    let (mut ack_latencies, mut accepted_ack_latencies, mut delivery_latencies) = (Vec::new(), Vec::new(), Vec::new());
    for outcome in outcomes {
        counts.add(&outcome.tracker.counts());
        tally::merge_counts(&mut errors, &outcome.errors);
        tally::merge_counts(&mut failures, &outcome.failures);
        nodes.extend(outcome.nodes.iter().copied());
        ack_latencies.extend_from_slice(&outcome.ack_latencies);
        accepted_ack_latencies.extend_from_slice(&outcome.accepted_ack_latencies);
        delivery_latencies.extend_from_slice(&outcome.delivery_latencies);
    }
    if run.unreported > 0 {
        tally::bump(&mut failures, "unreported", run.unreported as u64);
    }
    let subscribers = outcomes
        .iter()
        .filter(|outcome| outcome.alive && outcome.tracker.base().is_some())
        .map(|outcome| (outcome.room, &outcome.tracker));
    let loss = tally::losses(subscribers, acked);
    let sum = |field: fn(&ClientOutcome) -> u64| outcomes.iter().map(field).sum::<u64>();
    let per_sec = |count: u64, last: Option<Instant>| match last {
        Some(last) if count > 0 => {
            count as f64 / last.saturating_duration_since(run.started).max(Duration::from_millis(1)).as_secs_f64()
        }
        _ => 0.0,
    };
    let (acked_count, deliveries) = (sum(|o| o.acked), sum(|o| o.deliveries));
    ChatBenchReport {
        clients: run.clients,
        clients_connected: outcomes.iter().filter(|outcome| outcome.tracker.base().is_some()).count(),
        clients_failed: outcomes.iter().filter(|outcome| !outcome.alive).count() + run.unreported,
        rooms: run.rooms,
        users: run.users,
        nodes_used: nodes.into_iter().collect(),
        rate: run.rate,
        load_seconds: run.load_seconds,
        sent: sum(|o| o.sent),
        acked: acked_count,
        unacked: sum(|o| o.unacked),
        rejected: sum(|o| o.rejected),
        retries: sum(|o| o.retries),
        reconnects: sum(|o| o.reconnects),
        sends_acked_per_sec: per_sec(acked_count, outcomes.iter().filter_map(|o| o.last_ack).max()),
        deliveries,
        expected_deliveries: loss.expected_deliveries,
        deliveries_per_sec: per_sec(deliveries, outcomes.iter().filter_map(|o| o.last_delivery).max()),
        ack_latency: LatencySummary::of(ack_latencies),
        accepted_ack_latency: LatencySummary::of(accepted_ack_latencies),
        delivery_latency: LatencySummary::of(delivery_latencies),
        lost: loss.lost,
        missed_deliveries: loss.missed_deliveries,
        duplicated: counts.duplicated,
        out_of_order: counts.out_of_order,
        gaps: counts.gaps,
        duplicate_ids: counts.duplicate_ids,
        errors,
        failures,
        load_timed_out: run.load_timed_out,
        drain_complete: run.drain_complete,
        drain_seconds: run.drain_seconds,
        hops: Vec::new(),
    }
}

/// Registers `count` fresh users and returns their Bearer tokens.
pub(crate) async fn register_users(
    http: &reqwest::Client,
    control: &str,
    count: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<String>> {
    stream::iter(0..count)
        .map(|_| async {
            // A retry covers the rare clash of two random bench usernames.
            let token = match bench_login(http, control).await {
                Ok(token) => token,
                Err(_) => bench_login(http, control).await.context("registering a bench user")?,
            };
            progress.inc(1);
            anyhow::Ok(token)
        })
        .buffer_unordered(REGISTER_CONCURRENCY)
        .try_collect()
        .await
}

/// Creates `count` public rooms named after the run and returns their ids.
async fn create_rooms(
    http: &reqwest::Client,
    control: &str,
    bearer: &str,
    run_id: u32,
    count: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<RoomId>> {
    #[derive(serde::Deserialize)]
    struct Created {
        id: RoomId,
    }
    stream::iter(0..count)
        .map(|room| async move {
            let name = format!("bench-{run_id:08x}-{room}");
            let response = http
                .post(format!("{control}/api/rooms"))
                .bearer_auth(bearer)
                .json(&json!({"name": name}))
                .send()
                .await
                .with_context(|| format!("creating room {name}"))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                anyhow::bail!("creating room {name}: {status}: {body}");
            }
            let created: Created = response.json().await.with_context(|| format!("creating room {name}"))?;
            progress.inc(1);
            Ok(created.id)
        })
        .buffered(REGISTER_CONCURRENCY)
        .try_collect()
        .await
}

/// `control` first, then the other members `GET /api/cluster` lists (best effort: just
/// `control` when it does not answer).
async fn cluster_controls(http: &reqwest::Client, control: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Cluster {
        members: Vec<Member>,
    }
    #[derive(serde::Deserialize)]
    struct Member {
        addr: String,
    }
    let mut controls = vec![control.to_string()];
    let reply = http.get(format!("{control}/api/cluster")).timeout(Duration::from_secs(5)).send().await;
    let cluster = match reply {
        Ok(response) if response.status().is_success() => response.json::<Cluster>().await.ok(),
        _ => None,
    };
    let scheme = control.split_once("://").map_or("http", |(scheme, _)| scheme);
    for member in cluster.map(|cluster| cluster.members).unwrap_or_default() {
        let url = format!("{scheme}://{}", member.addr.trim_end_matches('/'));
        if !controls.contains(&url) {
            controls.push(url);
        }
    }
    controls
}

/// Polls `done` until it holds (true) or `limit` passes (false).
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The clients' outcomes, and how many handed in none within [`JOIN_TIMEOUT`].
async fn collect(handles: Vec<JoinHandle<ClientOutcome>>) -> (Vec<ClientOutcome>, usize) {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut outcomes = Vec::with_capacity(handles.len());
    let mut unreported = 0;
    for mut handle in handles {
        match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a bench client task failed");
                unreported += 1;
            }
            Err(_) => {
                handle.abort();
                unreported += 1;
            }
        }
    }
    (outcomes, unreported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_info(started: Instant) -> RunInfo {
        RunInfo {
            clients: 3,
            rooms: 1,
            users: 2,
            rate: None,
            started,
            load_seconds: 2.0,
            load_timed_out: false,
            drain_complete: true,
            drain_seconds: 0.1,
            unreported: 0,
        }
    }

    /// An outcome of a subscriber of room 1 (subscribed at 0) that received `seqs`.
    fn subscriber(seqs: &[u64], alive: bool) -> ClientOutcome {
        let mut outcome = ClientOutcome { room: 1, alive, ..ClientOutcome::default() };
        outcome.tracker.subscribed(0);
        for seq in seqs {
            if outcome.tracker.observe(*seq, None) != tally::Arrival::Duplicate {
                outcome.deliveries += 1;
            }
        }
        outcome
    }

    #[test]
    fn summary_checks_only_subscribers_alive_at_the_end() {
        let started = Instant::now();
        let mut sender = subscriber(&[1, 2, 3], true);
        sender.sent = 4;
        sender.acked = 3;
        sender.unacked = 1;
        sender.last_ack = Some(started + Duration::from_secs(2));
        sender.last_delivery = Some(started + Duration::from_secs(3));
        sender.ack_latencies = vec![Duration::from_millis(2), Duration::from_millis(4)];
        sender.nodes = [2].into();
        sender.errors = [("unavailable".to_string(), 1)].into();
        let mut reordered = subscriber(&[1, 3, 2, 2], true);
        reordered.nodes = [1].into();
        let gone = subscriber(&[1], false);
        let acked: tally::AckedSets = [(1, [1, 2, 3].into())].into();
        let report = summarize(&run_info(started), &[sender, reordered, gone], &acked);
        assert_eq!((report.lost, report.missed_deliveries, report.expected_deliveries), (0, 0, 6));
        assert_eq!((report.duplicated, report.out_of_order, report.gaps), (1, 1, 1));
        assert!(!report.correct());
        assert_eq!((report.clients_connected, report.clients_failed), (3, 1));
        assert_eq!((report.sent, report.acked, report.unacked), (4, 3, 1));
        assert_eq!(report.deliveries, 7);
        assert!((report.sends_acked_per_sec - 1.5).abs() < 1e-6);
        assert!((report.deliveries_per_sec - 7.0 / 3.0).abs() < 1e-6);
        assert_eq!(report.nodes_used, vec![1, 2]);
        assert_eq!(report.errors.get("unavailable"), Some(&1));
        assert!((report.ack_latency.max_ms - 4.0).abs() < 1e-9);
    }

    #[test]
    fn summary_counts_a_message_some_subscriber_missed_as_lost() {
        let started = Instant::now();
        let acked: tally::AckedSets = [(1, [1, 2, 3].into())].into();
        let outcomes = [subscriber(&[1, 2, 3], true), subscriber(&[1, 3], true), subscriber(&[1], true)];
        let report = summarize(&run_info(started), &outcomes, &acked);
        assert_eq!((report.lost, report.missed_deliveries), (2, 3));
        assert_eq!(report.sends_acked_per_sec, 0.0, "no acks, no rate");
    }

    #[test]
    fn report_renders_and_serialises() {
        let report = summarize(&run_info(Instant::now()), &[subscriber(&[1], true)], &Default::default());
        assert!(report.correct());
        let text = render(&report);
        assert!(text.contains("lost 0") && text.contains("errors:      none"), "{text}");
        let json = serde_json::to_value(&report).expect("the report serialises");
        assert_eq!(json["ack_latency"]["p99_ms"], 0.0);
        assert_eq!(json["lost"], 0);
    }

    #[test]
    fn defaults_match_the_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ChatBenchArgs,
        }
        let parsed = Cli::parse_from(["bench"]).args;
        let default = ChatBenchArgs::default();
        assert_eq!(
            (parsed.control, parsed.clients, parsed.rooms, parsed.messages, parsed.users, parsed.window),
            (default.control, default.clients, default.rooms, default.messages, default.users, default.window)
        );
        assert_eq!((parsed.rate, parsed.timeout, parsed.drain), (default.rate, default.timeout, default.drain));
    }
}
