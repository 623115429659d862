//! The node's HTTP surface: `/ws` (browsers, Origin-checked), `/mesh` (other nodes,
//! cluster secret), `/internal/rooms/…` (history, threads, mentions and message events
//! for the control's REST API, cluster secret: [`rooms`]), `/healthz` and `/metrics`.

pub mod backup;
mod rooms;

use std::net::SocketAddr;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::{mesh, session, Node};

pub fn router(node: Node) -> Router {
    Router::new()
        .route("/ws", get(browser_socket))
        .route("/mesh", get(mesh_socket))
        .route("/internal/rooms/{id}/messages", get(rooms::history))
        .route("/internal/rooms/{id}/events", axum::routing::post(rooms::post_event))
        .route("/internal/rooms/{id}/threads/{root}", get(rooms::thread))
        .route("/internal/rooms/{id}/mentions", get(rooms::mentions))
        .route("/api/admin/backup", axum::routing::post(backup::create_backup))
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(crate::http_edge::metrics))
        .with_state(node)
        .layer(axum::middleware::from_fn(crate::http_edge::close_if_body_unread))
}

/// Serves [`router`] on `listener` until `shutdown` says stop.
pub fn serve(listener: TcpListener, node: Node, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let router = router(node);
    tokio::spawn(async move {
        let listener = axum::serve::ListenerExt::tap_io(listener, crate::http_edge::no_delay);
        let served = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the node's HTTP server stopped");
        }
    })
}

/// Bytes a browser socket reads at a time. tungstenite allocates this up front and
/// zero-fills it on every read, so all of it is resident for every idle connection: 4 KiB
/// made an idle connection cost the node ~11 KB, 1 KiB ~8 KB (docs/BENCHMARKS.md, "Idle
/// connections and a reconnect storm"). Browser frames are mostly far smaller; a larger
/// one (up to `limits.max_frame_bytes`) grows the buffer and takes a few more reads.
const READ_BUFFER: usize = 1024;

async fn browser_socket(State(node): State<Node>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    if !origin_allowed(&node, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if node.is_isolated() {
        return (StatusCode::SERVICE_UNAVAILABLE, "this node lost the control plane; use another").into_response();
    }
    // A slot per connection (limits.max_connections): a full node says so before the
    // upgrade, and the browser tries the next node. The slot goes with the session.
    let Ok(slot) = node.browser_slots.clone().try_acquire_owned() else {
        metrics::counter!("districhat_connections_refused_total").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "this node holds all the connections it may; use another")
            .into_response();
    };
    let max = node.config.limits.max_frame_bytes;
    // Frames a little over the limit still arrive, so the session can answer
    // `frame_too_large` instead of the socket being cut.
    // Small socket buffers: most browsers sit idle, and tungstenite's defaults (128 KiB
    // each way) would cost over 100 KiB per idle connection.
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(4 * 1024)
        .max_message_size(max.saturating_mul(4).max(64 * 1024))
        .on_upgrade(move |socket| async move {
            session::run(node, socket).await;
            drop(slot);
        })
}

/// Browsers must come from a page of the cluster: a control, this node, or a configured
/// origin. Clients without an Origin header (CLI, bench, other programs) are allowed; they
/// still need a valid token.
fn origin_allowed(node: &Node, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()) else { return true };
    let host = origin.split_once("://").map_or(origin, |(_, rest)| rest).trim_end_matches('/');
    node.config.allowed_origins.iter().any(|allowed| allowed.trim_end_matches('/') == origin.trim_end_matches('/'))
        || host == node.addr
        || node
            .config
            .controls
            .iter()
            .any(|control| control.split_once("://").map_or(control.as_str(), |(_, h)| h).trim_end_matches('/') == host)
}

async fn mesh_socket(State(node): State<Node>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    if !node.secret.matches(&headers) {
        return (StatusCode::UNAUTHORIZED, "cluster secret required").into_response();
    }
    let (shutdown, at_once) = (node.shutdown.clone(), node.config.mesh.requests_per_link);
    let origin = mesh::MeshOrigin::from_headers(&headers);
    upgrade.read_buffer_size(mesh::READ_BUFFER).max_message_size(64 * 1024 * 1024).on_upgrade(
        move |socket| async move {
            // Before any frame of this link: what a restarted peer followed is forgotten
            // first, and then its new interest counts.
            if let Some(origin) = origin {
                node.peer_connected(origin);
            }
            mesh::serve_link(socket, node, shutdown, at_once).await
        },
    )
}
