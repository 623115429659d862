//! The control's HTTP edge: every route a control member serves, one module per
//! resource, each exposing `routes()`; [`router`] merges them and adds the layers.
//!
//! | module | routes |
//! |---|---|
//! | [`users`] | `POST /api/users` |
//! | [`sessions`] | `POST,DELETE /api/sessions` |
//! | [`rooms`] | `GET,POST /api/rooms`, `POST /api/rooms/{id}/members` |
//! | [`chat`] | `GET /api/token`, `GET /api/nodes`, `POST /api/dms`, `GET /api/rooms/{id}/messages` |
//! | [`group_dms`] | `POST /api/group-dms` |
//! | [`moderation`] | `GET,POST /api/rooms/{id}/moderation`, `GET /api/rooms/{id}/audit` |
//! | [`messages`] | `POST /api/rooms/{id}/messages`, `PATCH,DELETE /api/rooms/{id}/messages/{seq}`, `POST …/{seq}/reactions`, `GET /api/rooms/{id}/threads/{root}`, `GET /api/mentions` |
//! | [`read_marks`] | `GET,POST /api/read-marks` |
//! | [`cluster`] | `/healthz`, `/metrics`, `GET /api/cluster` |
//! | [`nodes`] | `/internal/nodes/*`, `/internal/routes` (chat nodes; cluster secret) |
//! | [`forward`] | `POST /internal/write` (a forwarded catalog write), `GET /internal/read-index` (cluster secret) |
//! | [`raft`] | `/raft/{append,vote,snapshot}` (Raft RPC; cluster secret) |
//! | [`admin`] | `/api/admin/{init,members,nodes/{id}/approve,after-restore}` (cluster secret) |
//! | [`backup`] | `POST /api/admin/backup` (cluster secret) |
//! | [`drain`] | `/api/admin/nodes/{id}/{drain,undrain}` (cluster secret) |
//! | [`rebalance`] | `POST,GET /api/admin/rebalance` (cluster secret) |
//! | [`web`] | the pages, forms and static files |
//!
//! Handler modules never import each other: what two of them need lives in [`extractor`] (who
//! is calling), [`views`] (what the API shows), [`error`] (`ApiError`), [`cookies`] and
//! [`limiter`] (the login limit shared by the JSON login and the form).

pub mod admin;
pub mod backup;
pub mod chat;
pub mod cluster;
pub mod cookies;
pub mod drain;
pub mod error;
pub mod extractor;
pub mod forward;
pub mod group_dms;
pub mod limiter;
pub mod messages;
pub mod moderation;
pub mod nodes;
pub mod raft;
pub mod read_marks;
pub mod rebalance;
pub mod rooms;
pub mod sessions;
pub mod users;
pub mod views;
pub mod web;

use std::net::SocketAddr;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::error::ApiError;
use crate::control::AppState;

/// Largest body the internal routes (Raft RPC, forwarded writes) accept; snapshot chunks
/// are far smaller (see `snapshot_max_chunk_size`).
const INTERNAL_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Every route of a control member.
pub fn router(state: AppState) -> Router {
    let web_state = web::WebState::default();
    let internal = forward::routes(state.writer.clone())
        .merge(raft::routes(state.raft.clone(), state.secret.clone()))
        .layer(DefaultBodyLimit::max(INTERNAL_BODY_LIMIT));
    Router::new()
        .merge(cluster::routes())
        .merge(users::routes())
        .merge(sessions::routes(web_state.limiter.clone()))
        .merge(rooms::routes())
        .merge(chat::routes())
        .merge(group_dms::routes())
        .merge(moderation::routes())
        .merge(messages::routes())
        .merge(read_marks::routes(web_state.read_marks.clone()))
        .merge(nodes::routes())
        .merge(admin::routes())
        .merge(backup::routes())
        .merge(drain::routes())
        .merge(rebalance::routes())
        .merge(web::routes(web_state))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .merge(internal)
        .layer(axum::middleware::from_fn(crate::http_edge::close_if_body_unread))
}

/// Serves [`router`] on `listener` until `shutdown` says stop.
pub fn serve(listener: TcpListener, state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let router = router(state);
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let listener = axum::serve::ListenerExt::tap_io(listener, crate::http_edge::no_delay);
        let served = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the control HTTP server stopped");
        }
    })
}
