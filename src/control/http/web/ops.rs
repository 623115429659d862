//! The operator pages: the nodes dashboard (Raft members with role, term and leader — the
//! same view as `/api/cluster` — and chat nodes with health, load and rooms; the page
//! refreshes itself from `/api/cluster` and `/api/nodes` every 2 s), and the admin page
//! (users, node approval, control membership) for the administrator, user id 1. The admin
//! actions call this member's own secret-guarded `/api/admin/*` endpoints, which relay to
//! the leader, so there is one implementation of each operation.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::super::views::{ClusterView, NodeView};
use super::csrf::{CsrfForm, EmptyForm};
use super::flash::Flash;
use super::visitor::{Layout, Visitor};
use super::WebError;
use crate::control::catalog::{ChatNodeId, Command};
use crate::control::loads::node_loads;
use crate::control::raft::state_machine::read_state;
use crate::control::raft::types::MemberId;
use crate::control::secret::SECRET_HEADER;
use crate::control::AppState;

/// How long an admin page waits for a membership change (a new member must catch up).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// One Raft member, formatted for the table.
pub struct MemberRow {
    pub id: MemberId,
    pub addr: String,
    pub role: String,
    pub healthy: &'static str,
    pub matched: String,
}

/// One chat node, formatted for the table.
pub struct NodeRow {
    pub id: ChatNodeId,
    pub name: String,
    pub status: String,
    pub addr: String,
    pub connections: String,
    pub messages_per_sec: String,
    pub rooms_owned: u64,
    pub rooms_replicated: u64,
    pub last_seen: String,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    layout: Layout,
    cluster: ClusterView,
    members: Vec<MemberRow>,
    nodes: Vec<NodeRow>,
}

/// `GET /nodes`: open to everyone, like `/api/cluster` and `/api/nodes`.
pub async fn nodes_page(State(app): State<AppState>, visitor: Visitor) -> Result<Response, WebError> {
    let (cluster, members) = cluster_rows(&app).await?;
    let nodes = node_rows(&app).await;
    let page = NodesPage { layout: visitor.layout("Nodes", "nodes"), cluster, members, nodes };
    Ok(visitor.page(StatusCode::OK, &page))
}

/// The `/api/cluster` view (the leader's when it can be had) and its member rows.
async fn cluster_rows(app: &AppState) -> Result<(ClusterView, Vec<MemberRow>), WebError> {
    let view = ClusterView::gather(app, false).await;
    let members = view
        .members
        .iter()
        .map(|member| MemberRow {
            id: member.id,
            addr: member.addr.clone(),
            role: member.role.clone(),
            healthy: match member.healthy {
                Some(true) => "yes",
                Some(false) => "lagging",
                None => "unknown",
            },
            matched: member.matched.map_or_else(|| "–".into(), |index| index.to_string()),
        })
        .collect();
    Ok((view, members))
}

/// The `/api/nodes` rows.
async fn node_rows(app: &AppState) -> Vec<NodeRow> {
    let loads = node_loads(app).await;
    let state = read_state(&app.state);
    let catalog = &state.catalog;
    catalog
        .nodes
        .values()
        .map(|node| NodeView::new(catalog, node, loads.get(&node.id)))
        .map(|view| NodeRow {
            id: view.id,
            name: view.name,
            status: view.status,
            addr: view.addr,
            connections: view.load.as_ref().map_or_else(|| "–".into(), |load| load.connections.to_string()),
            messages_per_sec: view
                .load
                .as_ref()
                .map_or_else(|| "–".into(), |load| format!("{:.1}", load.messages_per_sec)),
            rooms_owned: view.rooms_owned,
            rooms_replicated: view.rooms_replicated,
            last_seen: view
                .last_seen_ms
                .map_or_else(|| "never".into(), |ms| format!("{:.1} s ago", ms as f64 / 1000.0)),
        })
        .collect()
}

/// One account, for the admin page.
pub struct UserRow {
    pub id: u64,
    pub username: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    layout: Layout,
    users: Vec<UserRow>,
    /// Pending nodes get an Approve button.
    nodes: Vec<NodeRow>,
    cluster: ClusterView,
    members: Vec<MemberRow>,
}

/// `GET /admin`: the administrator only.
pub async fn admin_page(State(app): State<AppState>, visitor: Visitor) -> Result<Response, WebError> {
    require_admin(&visitor, "/admin")?;
    let (cluster, members) = cluster_rows(&app).await?;
    let nodes = node_rows(&app).await;
    let users = read_state(&app.state)
        .catalog
        .users
        .values()
        .map(|user| UserRow { id: user.id, username: user.username.clone(), created: utc_date(user.created_at_ms) })
        .collect();
    let page = AdminPage { layout: visitor.layout("Admin", "admin"), users, nodes, cluster, members };
    Ok(visitor.page(StatusCode::OK, &page))
}

fn require_admin(visitor: &Visitor, next: &str) -> Result<(), WebError> {
    visitor.require_user(next)?;
    if visitor.is_admin() {
        Ok(())
    } else {
        Err(WebError::forbidden("Only the administrator (the first registered account) may do this."))
    }
}

/// `POST /admin/nodes/{id}/approve`.
pub async fn approve_node(
    State(app): State<AppState>,
    Path(node): Path<ChatNodeId>,
    CsrfForm(visitor, _): CsrfForm<EmptyForm>,
) -> Result<Response, WebError> {
    require_admin(&visitor, "/admin")?;
    let flash = match app.writer.write(Command::ApproveNode { node }).await {
        Ok(_) => Flash::notice(format!("Node {node} is approved and takes rooms.")),
        Err(e) => Flash::error(format!("Node {node} was not approved: {e}")),
    };
    Ok(visitor.redirect("/admin", Some(flash)))
}

#[derive(Deserialize)]
pub struct MemberForm {
    id: MemberId,
    addr: String,
}

/// `POST /admin/members`: adds a control member (learner, catch-up, voter).
pub async fn add_member(
    State(app): State<AppState>,
    CsrfForm(visitor, form): CsrfForm<MemberForm>,
) -> Result<Response, WebError> {
    require_admin(&visitor, "/admin")?;
    let body = serde_json::json!({"id": form.id, "addr": form.addr.trim()});
    let flash = match admin_call(&app, Method::POST, "/api/admin/members", Some(body)).await {
        Ok(()) => Flash::notice(format!("Member {} joined the group.", form.id)),
        Err(reason) => Flash::error(format!("Member {} was not added: {reason}", form.id)),
    };
    Ok(visitor.redirect("/admin", Some(flash)))
}

/// `POST /admin/members/{id}/remove`.
pub async fn remove_member(
    State(app): State<AppState>,
    Path(id): Path<MemberId>,
    CsrfForm(visitor, _): CsrfForm<EmptyForm>,
) -> Result<Response, WebError> {
    require_admin(&visitor, "/admin")?;
    let flash = match admin_call(&app, Method::DELETE, &format!("/api/admin/members/{id}"), None).await {
        Ok(()) => Flash::notice(format!("Member {id} left the group.")),
        Err(reason) => Flash::error(format!("Member {id} was not removed: {reason}")),
    };
    Ok(visitor.redirect("/admin", Some(flash)))
}

/// Calls this member's own admin endpoint with the cluster secret; `Err` holds a sentence.
async fn admin_call(app: &AppState, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<(), String> {
    let own = app.config.advertise.clone().unwrap_or_else(|| app.config.listen.clone());
    let mut request = app
        .client
        .request(method, format!("http://{own}{path}"))
        .header(SECRET_HEADER, app.secret.expose())
        .timeout(MEMBERSHIP_TIMEOUT);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| format!("the control did not answer ({e})"))?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let error: serde_json::Value = response.json().await.unwrap_or_default();
    Err(error["message"].as_str().map_or_else(|| format!("the control answered {status}"), str::to_string))
}

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
fn utc_date(ms: u64) -> String {
    let (year, month, day) = crate::utc_date(ms);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_767_225_600_000), "2026-01-01");
    }
}
