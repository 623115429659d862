//! `districhat status`: the control plane at a glance — leader, term, and every member's
//! role, health and applied index — as a table or as JSON.

use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use crate::control::cluster::ClusterView;
use crate::control::raft::types::MemberId;

/// What `status --json` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    pub leader: Option<MemberId>,
    pub term: u64,
    pub applied: u64,
    pub members: Vec<MemberStatus>,
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
    Ok(Status { leader: view.leader, term: view.term, applied: view.applied, members })
}

/// The human rendering: a summary line and a table of members.
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
    format!("leader: {leader}   term: {}   applied: {}\n{table}", status.term, status.applied)
}
