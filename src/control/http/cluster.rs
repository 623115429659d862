//! Health, metrics and the cluster view: `/healthz`, `/metrics`, `/api/cluster`.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::error::ApiError;
use super::views::ClusterView;
use crate::control::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::http_edge::metrics))
        .route("/api/cluster", get(cluster))
}

/// `GET /healthz`: 200 when this member belongs to a group that has a leader.
pub async fn healthz(State(app): State<AppState>) -> Response {
    let metrics = app.raft.metrics().borrow().clone();
    let in_group = metrics.membership_config.nodes().any(|(id, _)| *id == app.id);
    match metrics.current_leader {
        Some(leader) if in_group && metrics.running_state.is_ok() => {
            Json(serde_json::json!({"status": "ok", "member": app.id, "leader": leader})).into_response()
        }
        _ => ApiError::unavailable("this member has no leader yet").into_response(),
    }
}

#[derive(Deserialize)]
pub struct ClusterQuery {
    /// Answer from this member's own view instead of asking the leader.
    #[serde(default)]
    local: bool,
}

/// `GET /api/cluster`: the leader's view when it can be had (it knows every member's
/// progress), else this member's own.
pub async fn cluster(State(app): State<AppState>, Query(query): Query<ClusterQuery>) -> Json<ClusterView> {
    Json(ClusterView::gather(&app, query.local).await)
}
