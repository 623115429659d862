//! The node's link to the control plane: registration at start, a heartbeat about once a
//! second to the leader (carrying load, bringing back routing-table updates: what changed
//! since the node's version, or the whole table), a catch-up fetch beside the heartbeats when
//! what changed is too large for a heartbeat (a delta when the leader can give one, else the
//! whole table), and a full routing-table fetch when a lookup misses. The routing table also
//! carries the connection-token key (`admin after-restore` replaces it).

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::config::NodeConfig;
use super::Node;
use crate::control::secret::{ClusterSecret, SECRET_HEADER};
use crate::protocol::{
    Heartbeat, HeartbeatReply, NodeLoad, NodeRegistration, RegisterNode, RoutingDelta, RoutingTable,
};

/// Registers (retrying across controls, and until approved) and returns the registration
/// and the control that answered. A 401 or any 4xx other than 409 ends the attempt with
/// an error carrying the answer's body (the node then exits saying why).
pub async fn register(
    http: &reqwest::Client,
    config: &NodeConfig,
    secret: &ClusterSecret,
    addr: &str,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(NodeRegistration, String)> {
    anyhow::ensure!(!config.controls.is_empty(), "the node config lists no controls");
    let body =
        RegisterNode { name: config.name.clone(), addr: addr.to_string(), public_ws_url: config.public_ws_url.clone() };
    let mut attempt = 0usize;
    loop {
        anyhow::ensure!(!*shutdown.borrow(), "stopped before registering");
        let control = config.controls[attempt % config.controls.len()].trim_end_matches('/').to_string();
        attempt += 1;
        let sent = http
            .post(format!("{control}/internal/nodes/register"))
            .header(SECRET_HEADER, secret.expose())
            .timeout(Duration::from_secs(15))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let registration: NodeRegistration = response.json().await.context("undecodable registration")?;
                if registration.approved {
                    tracing::info!(node = registration.node_id, %control, "registered with the control plane");
                    return Ok((registration, control));
                }
                if attempt % 10 == 1 {
                    tracing::warn!(node = registration.node_id, "waiting for an admin to approve this node");
                }
            }
            Ok(response) if response.status().as_u16() == 401 => {
                anyhow::bail!("{control} refused the cluster secret")
            }
            // 409 (a name clash, a catalog conflict) may clear up; any other 4xx means this
            // node's registration is wrong and retrying would repeat it forever.
            Ok(response) if response.status().is_client_error() && response.status().as_u16() != 409 => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                anyhow::bail!("{control} refused this node's registration with {status}: {body}")
            }
            Ok(response) => tracing::info!(%control, status = %response.status(), "registration not accepted yet"),
            Err(e) => tracing::info!(%control, error = %e, "control not reachable for registration"),
        }
        tokio::time::sleep(Duration::from_millis(if attempt < 20 { 200 } else { 2_000 })).await;
    }
}

/// Heartbeats to the leader until shutdown, applying routing updates from the replies.
pub async fn heartbeat_loop(node: Node, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(1_000));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_messages = node.messages_total();
    let mut last_tick = std::time::Instant::now();
    let mut control_index = 0usize;
    let lease = Duration::from_millis(node.config.control_lease_ms);
    let mut answered_at = std::time::Instant::now();
    // A catch-up fetch under way (one at a time).
    let mut fetching: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        let messages = node.messages_total();
        let rate = (messages - last_messages) as f64 / last_tick.elapsed().as_secs_f64().max(0.001);
        last_messages = messages;
        last_tick = std::time::Instant::now();
        let routes = node.routes();
        let report = node.room_report(&routes);
        let load = NodeLoad {
            connections: node.connections.load(Ordering::Relaxed),
            rooms_owned: node.owned_rooms() as u64,
            rooms_replicated: report.replicated as u64,
            messages_per_sec: rate,
            rooms_syncing: report.syncing as u64,
        };
        metrics::gauge!("districhat_node_connections", "node" => node.id.to_string()).set(load.connections as f64);
        let in_sync = report.synced_replicas;
        let heartbeat = Heartbeat { node_id: node.id, load, routes_version: routes.version, in_sync, deltas: true };
        // Re-announce followed rooms: an owner that learned of its room after our first
        // announcement (routing tables arrive at different times) hears of us now.
        for room in node.hub.rooms() {
            node.send_interest(room, node.hub.users(room));
        }
        // Follow redirects to the leader a few times within one tick.
        for _ in 0..3 {
            let url = node.leader_url();
            match send_heartbeat(&node, &url, &heartbeat).await {
                Ok(HeartbeatReply::Ok { routes, delta, fetch }) => {
                    // Our table moved since this heartbeat was sent (the delta does not
                    // fit), or what changed is too large for a heartbeat: catch up beside
                    // the heartbeats, which go on meanwhile.
                    let catch_up = match (routes, delta) {
                        (Some(table), _) => {
                            node.apply_routes(table);
                            false
                        }
                        (None, Some(delta)) => !node.apply_delta(*delta),
                        (None, None) => fetch,
                    };
                    if catch_up && fetching.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                        fetching = Some(tokio::spawn(catch_up_routes(node.clone())));
                    }
                    answered_at = std::time::Instant::now();
                    break;
                }
                Ok(HeartbeatReply::NotLeader { leader: Some(leader) }) => {
                    node.set_leader_url(format!("http://{leader}"))
                }
                Ok(HeartbeatReply::NotLeader { leader: None }) => {
                    // No leader known there, or a leader that lost its majority (it may
                    // have been deposed without knowing it): ask the next control.
                    control_index = next_control(&node, control_index);
                }
                Ok(HeartbeatReply::Unknown) => {
                    tracing::error!(
                        node = node.id,
                        "the control plane does not know this node; restart it to register"
                    );
                    break;
                }
                Err(e) => {
                    tracing::debug!(%url, error = %e, "heartbeat failed; trying another control");
                    control_index = next_control(&node, control_index);
                }
            }
        }
        node.set_isolated(answered_at.elapsed() > lease);
    }
}

/// Makes the control after `index` (in the configured list) the one heartbeats go to;
/// returns its index.
fn next_control(node: &Node, index: usize) -> usize {
    let next = index + 1;
    let url = &node.config.controls[next % node.config.controls.len()];
    node.set_leader_url(url.trim_end_matches('/').to_string());
    next
}

async fn send_heartbeat(node: &Node, url: &str, heartbeat: &Heartbeat) -> anyhow::Result<HeartbeatReply> {
    let response = node
        .http
        .post(format!("{url}/internal/nodes/heartbeat"))
        .header(SECRET_HEADER, node.secret.expose())
        .timeout(Duration::from_millis(800))
        .json(heartbeat)
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

/// How long a fetch the heartbeat asked for may take (a delta as large as the whole table,
/// tens of megabytes with a hundred thousand rooms, is possible).
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);

/// Brings the node's table up to date beside the heartbeats, when a heartbeat said
/// `fetch` or its delta did not fit (see [`fetch_changes`]).
async fn catch_up_routes(node: Node) {
    if let Err(e) = fetch_changes(&node, CATCH_UP_DEADLINE).await {
        tracing::warn!(node = node.id, error = %e, "could not bring the routing table up to date");
    }
}

/// Brings the node's table up to date: what changed since the node's version, from the
/// leader, when it can say (nothing, when nothing did); else the whole table from any
/// control; each request is given `within`. Under fast room creation this is the difference
/// between a few hundred kilobytes and the whole table every second, and for a lookup
/// that missed, between a few hundred bytes and tens of megabytes (docs/PROTOCOL.md,
/// "Routing-table deltas").
pub async fn fetch_changes(node: &Node, within: Duration) -> anyhow::Result<()> {
    let version = node.routes().version;
    if version > 0 {
        match fetch_delta(node, version, within).await {
            // Not applied when a whole table moved ours meanwhile: fetch it whole below.
            Ok(Some(delta)) => {
                if node.apply_delta(delta) {
                    return Ok(());
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(node = node.id, error = %e, "could not fetch a routing delta"),
        }
    }
    node.apply_routes(fetch_routes_within(node, within).await?);
    Ok(())
}

/// What changed since `version`, from the leader; `None` when it cannot say (`404`: its
/// change index does not reach back that far, or it is a control from before deltas).
async fn fetch_delta(node: &Node, version: u64, within: Duration) -> anyhow::Result<Option<RoutingDelta>> {
    let response = node
        .http
        .get(format!("{}/internal/routes/delta?from={version}", node.leader_url()))
        .header(SECRET_HEADER, node.secret.expose())
        .timeout(within)
        .send()
        .await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    Ok(Some(response.error_for_status()?.json().await?))
}

/// The whole routing table from any reachable control, each given `timeout`.
async fn fetch_routes_within(node: &Node, timeout: Duration) -> anyhow::Result<RoutingTable> {
    let mut urls = vec![node.leader_url()];
    urls.extend(node.config.controls.iter().map(|c| c.trim_end_matches('/').to_string()));
    let mut last_error = anyhow::anyhow!("no control configured");
    for url in urls {
        let fetched = node
            .http
            .get(format!("{url}/internal/routes"))
            .header(SECRET_HEADER, node.secret.expose())
            .timeout(timeout)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        match fetched {
            Ok(response) => return Ok(response.json().await?),
            Err(e) => last_error = e.into(),
        }
    }
    Err(last_error)
}
