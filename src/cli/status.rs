//! `districhat status`: the cluster at a glance — leader, term, every control member's
//! role, health and applied index, and every chat node's status, load and rooms — as
//! tables or as JSON. Nodes come from the public, read-only `GET /api/nodes`, so status
//! needs no secret.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use crate::control::http::views::ClusterView;
use crate::control::http::views::{NodeView, NodesView};
use crate::control::raft::types::MemberId;

/// What `status --json` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    pub leader: Option<MemberId>,
    pub term: u64,
    pub applied: u64,
    pub members: Vec<MemberStatus>,
    /// The chat-node registry (empty if the control could not say).
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: MemberId,
    pub addr: String,
    pub role: String,
    /// The leader's judgement (replication progress), if the leader answered.
    pub healthy: Option<bool>,
    /// Whether the member answered us directly.
    pub reachable: bool,
    pub applied: Option<u64>,
    /// How far its applied index is behind the leader's.
    pub lag: Option<u64>,
}

/// `districhat status`: once (a table, or JSON), or with `watch` every that many seconds.
pub async fn run(control: &str, json: bool, watch_every: Option<f64>) -> anyhow::Result<()> {
    if let Some(interval) = watch_every {
        return watch(control, json, interval).await;
    }
    let status = fetch(control).await.with_context(|| format!("asking {control}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{}", render(&status));
    }
    Ok(())
}

/// Asks `control` (and then each member) and assembles the status.
pub async fn fetch(control: &str) -> anyhow::Result<Status> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let base = control.trim_end_matches('/');
    let view: ClusterView = client.get(format!("{base}/api/cluster")).send().await?.error_for_status()?.json().await?;
    let mut members = Vec::new();
    for member in &view.members {
        let own: Option<ClusterView> =
            match client.get(format!("http://{}/api/cluster?local=true", member.addr)).send().await {
                Ok(response) => response.json().await.ok(),
                Err(_) => None,
            };
        let applied = own.as_ref().map(|own| own.applied);
        members.push(MemberStatus {
            id: member.id,
            addr: member.addr.clone(),
            role: member.role.clone(),
            healthy: member.healthy,
            reachable: own.is_some(),
            applied,
            lag: applied.map(|applied| view.applied.saturating_sub(applied)),
        });
    }
    let nodes = match fetch_nodes(&client, base).await {
        Ok(view) => view.nodes,
        Err(e) => {
            tracing::warn!(error = %e, "the control did not list its chat nodes");
            Vec::new()
        }
    };
    Ok(Status { leader: view.leader, term: view.term, applied: view.applied, members, nodes })
}

async fn fetch_nodes(client: &reqwest::Client, base: &str) -> reqwest::Result<NodesView> {
    client.get(format!("{base}/api/nodes")).send().await?.error_for_status()?.json().await
}

/// The human rendering: a summary line, a table of members and one of chat nodes.
pub fn render(status: &Status) -> String {
    let leader = status.leader.map_or_else(|| "none".to_string(), |id| id.to_string());
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["member", "address", "role", "healthy", "reachable", "applied", "lag"]);
    for member in &status.members {
        let cell = |value: Option<u64>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
        let healthy = member.healthy.map_or("?", |healthy| if healthy { "yes" } else { "NO" });
        table.add_row([
            member.id.to_string(),
            member.addr.clone(),
            member.role.clone(),
            healthy.to_string(),
            if member.reachable { "yes" } else { "NO" }.to_string(),
            cell(member.applied),
            cell(member.lag),
        ]);
    }
    let summary = format!("leader: {leader}   term: {}   applied: {}", status.term, status.applied);
    if status.nodes.is_empty() {
        return format!("{summary}\n{table}\nchat nodes: none registered");
    }
    format!("{summary}\n{table}\n{}", nodes_table(&status.nodes))
}

/// The chat nodes: status, load from their last heartbeat, and rooms from the catalog.
fn nodes_table(nodes: &[NodeView]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["node", "name", "address", "status", "connections", "rooms owned", "rooms replicated", "msg/s"]);
    for node in nodes {
        let (connections, rate) = match &node.load {
            Some(load) => (load.connections.to_string(), format!("{:.1}", load.messages_per_sec)),
            None => ("-".to_string(), "-".to_string()),
        };
        let status = if node.status == "up" { node.status.clone() } else { node.status.to_uppercase() };
        table.add_row([
            node.id.to_string(),
            node.name.clone(),
            node.addr.clone(),
            status,
            connections,
            node.rooms_owned.to_string(),
            node.rooms_replicated.to_string(),
            rate,
        ]);
    }
    table
}

/// `status --watch`: asks again every `interval_secs` until Ctrl-C. The table redraws
/// in place; a control that does not answer shows as an error line, not an exit, so an
/// operator can watch a failover happen. With `json`, one compact object per line.
pub async fn watch(control: &str, json: bool, interval_secs: f64) -> anyhow::Result<()> {
    anyhow::ensure!(interval_secs.is_finite() && interval_secs >= 0.1, "--watch needs an interval of at least 0.1 s");
    let interval = Duration::from_secs_f64(interval_secs);
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let fetched = fetch(control).await;
        let at = utc_time_of_day();
        let screen = match (fetched, json) {
            (Ok(status), true) => format!("{}\n", serde_json::to_string(&status)?),
            (Ok(status), false) => {
                format!("\x1b[2J\x1b[H{at}  (every {interval_secs} s, Ctrl-C to stop)\n{}\n", render(&status))
            }
            (Err(e), true) => format!("{}\n", serde_json::json!({"error": format!("{e:#}")})),
            (Err(e), false) => format!("\x1b[2J\x1b[H{at}  asking {control} failed: {e:#}\n"),
        };
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(screen.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            return Ok(()); // The reader went away (a closed pipe): nothing left to do.
        }
        drop(stdout);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// The wall-clock time of day (UTC) as HH:MM:SS, without a date-time crate.
fn utc_time_of_day() -> String {
    let secs = crate::now_ms() / 1000;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}
