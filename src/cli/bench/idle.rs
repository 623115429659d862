//! `districhat bench-idle`: what an idle browser costs a node. Opens N WebSockets to ONE
//! node, each authenticated (`hello` answered with `welcome`), holds them without a word,
//! and reads the node's resident memory (`/proc/PID/status`) before, while holding them
//! and after closing them: the RSS per connection is the figure a capacity plan needs.
//!
//! The node must run on this machine (its pid: `--pid`, or the process listening on the
//! node URL's port). 50,000 sockets need this process's open-file limit raised (done
//! here; as root the hard limit too) and several local addresses (see
//! [`socket::Sources`]); the node raises its own limit from `limits.max_connections`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use futures_util::{stream, SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::chat::{connection_token, register_users};
use super::procfs;
use super::socket::{self, Sources, Ws};
use crate::protocol::{ClientFrame, NodeId, ServerFrame};

/// Bound on one socket's connect, and on its `welcome`.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Descriptors this process needs besides the sockets (HTTP to the control, stdio).
const OWN_FILES: u64 = 1_024;

/// Flags of `districhat bench-idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleBenchArgs {
    /// Any control member (users and connection tokens come from it).
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub control: String,
    /// The one node every socket goes to.
    #[arg(long, default_value = "ws://127.0.0.1:7100/ws")]
    pub node: String,
    /// Sockets to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The node's pid [default: the process listening on the node URL's port].
    #[arg(long)]
    pub pid: Option<u32>,
    /// Users the sockets log in as (one connection token each, shared round-robin).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Local addresses 127.0.0.1, 127.0.0.2, … to connect from [default: one per 20,000
    /// sockets].
    #[arg(long)]
    pub sources: Option<usize>,
    /// Sockets being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to hold the sockets after the last `welcome` before reading the node's
    /// RSS (and to wait after closing them before reading it again).
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleBenchReport {
    pub node: String,
    pub node_pid: u32,
    /// The node's id (from `welcome`).
    pub node_id: Option<NodeId>,
    pub wanted: usize,
    /// Sockets that got `welcome` and were held.
    pub held: usize,
    /// Sockets that failed, by what failed (connect, hello, timeout).
    pub failures: BTreeMap<String, u64>,
    pub first_failure: Option<String>,
    /// Local addresses used (0: the OS chose).
    pub sources: usize,
    /// From the first connect to the last `welcome`.
    pub open_seconds: f64,
    pub rss_before_bytes: u64,
    pub rss_held_bytes: u64,
    pub rss_after_close_bytes: u64,
    /// (held − before) / held sockets.
    pub rss_per_connection_bytes: f64,
}

pub async fn run(args: IdleBenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::cli::print_report(&report, args.json, render)?;
    anyhow::ensure!(
        report.held == report.wanted,
        "{} of {} sockets failed",
        report.wanted - report.held,
        report.wanted
    );
    Ok(())
}

/// Opens, holds and closes the sockets, reading the node's RSS around them.
pub async fn measure(args: &IdleBenchArgs) -> anyhow::Result<IdleBenchReport> {
    anyhow::ensure!(args.connections > 0 && args.users > 0, "--connections and --users must be at least 1");
    let wanted = args.connections as u64 + OWN_FILES;
    let limit = crate::fd_limit::raise_to(wanted)?;
    anyhow::ensure!(
        limit.soft >= wanted,
        "this process may open {} files, {wanted} are needed: raise the hard limit (ulimit -Hn) or run as root",
        limit.soft
    );
    let node_pid = match args.pid {
        Some(pid) => pid,
        None => {
            let port = node_port(&args.node)?;
            procfs::pid_listening_on(port)
                .with_context(|| format!("no process here listens on port {port}; give the node's --pid"))?
        }
    };
    let control = args.control.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let progress = ProgressBar::new(args.users as u64);
    progress.set_style(ProgressStyle::with_template("{msg:<24} {bar:40} {pos}/{len}")?);
    progress.set_message("registering users");
    let bearers = register_users(&http, &control, args.users, &progress).await?;
    let mut tokens = Vec::with_capacity(bearers.len());
    for bearer in &bearers {
        tokens.push(connection_token(&http, &control, bearer).await.map_err(anyhow::Error::msg)?.0);
    }

    let rss_before = procfs::rss_bytes(node_pid)?;
    let sources = match args.sources {
        Some(count) => Sources::loopback(count),
        None => Sources::loopback_for(args.connections),
    };
    progress.set_message("opening sockets");
    progress.set_length(args.connections as u64);
    progress.set_position(0);
    let started = Instant::now();
    let (tokens, sources_ref, bar) = (&tokens, &sources, &progress);
    let opened: Vec<Opened> = stream::iter(0..args.connections)
        .map(|index| async move {
            let result = open_one(&args.node, sources_ref.for_client(index), &tokens[index % tokens.len()]).await;
            bar.inc(1);
            result
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let (mut held, mut failures, mut first_failure, mut node_id) = (Vec::new(), BTreeMap::new(), None, None);
    for result in opened {
        match result {
            Ok((ws, node)) => {
                node_id = Some(node);
                held.push(ws);
            }
            Err((code, detail)) => {
                *failures.entry(code.to_string()).or_insert(0) += 1;
                first_failure.get_or_insert(detail);
            }
        }
    }
    progress.set_message(format!("holding {} sockets", held.len()));
    let hold = Duration::try_from_secs_f64(args.hold).unwrap_or_default();
    tokio::time::sleep(hold).await;
    let rss_held = procfs::rss_bytes(node_pid)?;
    let count = held.len();
    drop(held);
    progress.set_message("closed; waiting");
    tokio::time::sleep(hold).await;
    let rss_after_close = procfs::rss_bytes(node_pid)?;
    progress.finish_and_clear();
    Ok(IdleBenchReport {
        node: args.node.clone(),
        node_pid,
        node_id,
        wanted: args.connections,
        held: count,
        failures,
        first_failure,
        sources: sources.len(),
        open_seconds,
        rss_before_bytes: rss_before,
        rss_held_bytes: rss_held,
        rss_after_close_bytes: rss_after_close,
        rss_per_connection_bytes: rss_held.saturating_sub(rss_before) as f64 / count.max(1) as f64,
    })
}

/// A socket that said hello and got `welcome` from this node, or what failed (a code
/// for the report's counts, and the detail).
type Opened = Result<(Ws, NodeId), (&'static str, String)>;

/// One socket: connect (from `source`), `hello`, wait for `welcome`.
async fn open_one(url: &str, source: Option<std::net::IpAddr>, token: &str) -> Opened {
    let mut ws = timeout(STEP_TIMEOUT, socket::open(url, source, Some(socket::idle_config())))
        .await
        .map_err(|_| ("connect", format!("{url}: timed out")))?
        .map_err(|e| ("connect", e))?;
    let hello = serde_json::to_string(&ClientFrame::Hello { token: token.to_string() })
        .map_err(|e| ("hello", e.to_string()))?;
    ws.send(Message::text(hello)).await.map_err(|e| ("hello", e.to_string()))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.map_err(|_| ("timeout", "no welcome".into()))?;
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(("disconnected", e.to_string())),
            None => return Err(("disconnected", "the node closed the connection".into())),
        };
        match serde_json::from_str::<ServerFrame>(text.as_str()) {
            Ok(ServerFrame::Welcome { node, .. }) => return Ok((ws, node)),
            Ok(ServerFrame::Error { code, message, .. }) => return Err(("refused", format!("{code}: {message}"))),
            Ok(_) => {}
            Err(e) => return Err(("bad_server_frame", e.to_string())),
        }
    }
}

/// The port of a `ws://host:port/…` URL (80 without one).
fn node_port(url: &str) -> anyhow::Result<u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().with_context(|| format!("not a WebSocket URL: {url}"))?;
    Ok(request.uri().port_u16().unwrap_or(80))
}

/// The report as a table.
pub fn render(report: &IdleBenchReport) -> String {
    let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["", "node RSS", "change"]);
    table.add_row(["before".to_string(), mb(report.rss_before_bytes), String::new()]);
    let held = report.rss_held_bytes as i64 - report.rss_before_bytes as i64;
    table.add_row([
        format!("{} sockets held", report.held),
        mb(report.rss_held_bytes),
        format!("{:+.1} MB", held as f64 / 1e6),
    ]);
    let closed = report.rss_after_close_bytes as i64 - report.rss_before_bytes as i64;
    table.add_row([
        "after closing them".to_string(),
        mb(report.rss_after_close_bytes),
        format!("{:+.1} MB", closed as f64 / 1e6),
    ]);
    let failures = if report.failures.is_empty() {
        "none".to_string()
    } else {
        let counts: Vec<String> = report.failures.iter().map(|(code, n)| format!("{code} {n}")).collect();
        format!("{} (first: {})", counts.join(", "), report.first_failure.as_deref().unwrap_or(""))
    };
    format!(
        "{table}\n{} of {} sockets authenticated on node {} ({}, pid {}) in {:.1} s from {} local address(es)\n\
         RSS per connection: {:.0} bytes ({:.2} KB)\nfailures: {failures}",
        report.held,
        report.wanted,
        report.node_id.map_or("?".to_string(), |id| id.to_string()),
        report.node,
        report.node_pid,
        report.open_seconds,
        report.sources.max(1),
        report.rss_per_connection_bytes,
        report.rss_per_connection_bytes / 1000.0,
    )
}
