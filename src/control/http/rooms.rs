//! The control's HTTP router and the public REST API: accounts, sessions and rooms (the
//! chat-node parts — tokens, nodes, DMs, history — are in [`chat`](super::chat)).
//! Reads are answered from this member's applied catalog; writes go through
//! [`Writer`](crate::control::write::Writer), which forwards to the leader.

use axum::body::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use super::{admin, chat, cluster, drain, nodes, rebalance, web};
use crate::control::auth;
use crate::control::catalog::{Catalog, Command, CommandOutput, Room, UserId};
use crate::control::raft::state_machine::read_state;
use crate::control::{raft, read_marks, write, AppState};
use crate::now_ms;

/// Largest body the internal routes (Raft RPC, forwarded writes) accept; snapshot chunks
/// are far smaller (see `snapshot_max_chunk_size`).
const INTERNAL_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Every route of a control member.
pub fn router(state: AppState) -> Router {
    let web_state = web::WebState::default();
    let internal = Router::new()
        .route("/internal/write", post(write::internal_write))
        .with_state(state.writer.clone())
        .merge(raft::network::routes(state.raft.clone(), state.secret.clone()))
        .layer(DefaultBodyLimit::max(INTERNAL_BODY_LIMIT));
    Router::new()
        .route("/healthz", get(cluster::healthz))
        .route("/metrics", get(cluster::metrics))
        .route("/api/cluster", get(cluster::cluster))
        .route("/api/users", post(register))
        .route("/api/sessions", post(login).layer(Extension(web_state.clone())).delete(logout))
        .route("/api/rooms", get(list_rooms).post(create_room))
        .route("/api/rooms/{id}/members", post(join_room))
        .merge(chat::routes())
        .merge(read_marks::routes(web_state.read_marks.clone()))
        .merge(nodes::routes())
        .merge(admin::routes())
        .merge(drain::routes())
        .merge(rebalance::routes())
        .merge(web::routes(web_state))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .merge(internal)
        .layer(axum::middleware::from_fn(crate::http_edge::close_if_body_unread))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct UserView {
    id: UserId,
    username: String,
}

/// `POST /api/users`: register.
async fn register(State(app): State<AppState>, ApiJson(body): ApiJson<Credentials>) -> Result<Response, ApiError> {
    if !(8..=128).contains(&body.password.chars().count()) {
        return Err(ApiError::bad_request("invalid_password", "passwords are 8 to 128 characters"));
    }
    let hash = app.hashing.hash(body.password).await?;
    let command = Command::CreateUser { username: body.username, password_hash: hash, at_ms: now_ms() };
    match app.writer.write(command).await? {
        CommandOutput::User(user) => {
            Ok((StatusCode::CREATED, Json(UserView { id: user.id, username: user.username })).into_response())
        }
        other => Err(ApiError::internal(format!("CreateUser returned {other:?}"))),
    }
}

#[derive(Serialize)]
struct SessionView {
    token: String,
    user: UserView,
}

/// `POST /api/sessions`: log in; sets the session cookie and returns the token.
async fn login(
    State(app): State<AppState>,
    Extension(web): Extension<web::WebState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    // The same per-user and per-address limit as the login form.
    let addr = web::account::client_addr(peer.map(|Extension(ConnectInfo(addr))| addr), &headers);
    let keys = web::limiter::keys(body.username.trim(), addr);
    if let Err(wait) = web.limiter.check(&keys, Instant::now()) {
        let message = format!("too many failed logins; retry in {} s", wait.as_secs().max(1));
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message));
    }
    let (user, key) = {
        let state = read_state(&app.state);
        (state.catalog.user_by_name(&body.username).cloned(), state.catalog.meta.signing_key.clone())
    };
    let key = key.ok_or_else(|| ApiError::unavailable("the cluster is still starting; retry shortly"))?;
    // A refusal (`busy`) happens before the password is checked: it is no failed login.
    let verified = match user.as_ref() {
        Some(user) => app.hashing.verify(body.password, user.password_hash.clone()).await?,
        None => false,
    };
    let known = user.is_some();
    let Some(user) = user.filter(|_| verified) else {
        // Only wrong passwords count: a user this member has not applied yet (a login
        // racing its own registration through another member) is not an attack.
        if known {
            web.limiter.failed(&keys, Instant::now());
        }
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "wrong username or password"));
    };
    web.limiter.clear(&keys[0]);
    let token = auth::sign_session(&key, user.id, now_ms() + auth::SESSION_TTL_MS);
    let body = SessionView { token: token.clone(), user: UserView { id: user.id, username: user.username } };
    // `Secure` behind a TLS proxy, exactly like the form login's cookie.
    let cookie = web::secure_cookie(auth::session_cookie(&token), &headers);
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// The logged-in user of a request, or 401.
pub fn current_user(app: &AppState, headers: &HeaderMap) -> Result<UserId, ApiError> {
    let token = auth::session_token(headers).ok_or_else(ApiError::unauthorized)?;
    let state = read_state(&app.state);
    let key = state.catalog.meta.signing_key.as_deref().ok_or_else(ApiError::unauthorized)?;
    let (user, expires_ms) = auth::session_claims(key, token, now_ms()).ok_or_else(ApiError::unauthorized)?;
    // A session of a user this member has not applied yet is treated as logged out.
    let known = state.catalog.users.contains_key(&user) && !state.catalog.session_ended(user, expires_ms);
    known.then_some(user).ok_or_else(ApiError::unauthorized)
}

/// `DELETE /api/sessions`: logs this token out (204); 401 without a valid session.
async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    current_user(&app, &headers)?;
    end_session(&app, &headers).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends the request's session on every member (a logout): its token is refused from now
/// on, even if a copy of the cookie survives somewhere. Nothing to do without a valid one.
pub async fn end_session(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let claims = {
        let state = read_state(&app.state);
        let key = state.catalog.meta.signing_key.as_deref();
        auth::session_token(headers).zip(key).and_then(|(token, key)| auth::session_claims(key, token, now_ms()))
    };
    let Some((user, expires_ms)) = claims else { return Ok(()) };
    if read_state(&app.state).catalog.session_ended(user, expires_ms) {
        return Ok(()); // Already ended: a replayed logout writes nothing.
    }
    app.writer.write(Command::EndSession { user, expires_ms, at_ms: now_ms() }).await?;
    Ok(())
}

/// A room as the API shows it.
#[derive(Serialize)]
pub(super) struct RoomView {
    id: u64,
    name: String,
    private: bool,
    /// A direct-message room (private, exactly two members, named `dm-{id}-{id}`).
    dm: bool,
    owner: Option<u64>,
    replica: Option<u64>,
    epoch: u64,
    /// Whether the replica holds the room's whole log (it may take over if the owner
    /// fails; false while a new replica is still receiving it: docs/REPLICATION.md).
    replica_in_sync: bool,
    /// Whether the caller is a member.
    member: bool,
}

impl RoomView {
    pub(super) fn new(catalog: &Catalog, room: &Room, member: bool) -> Self {
        Self {
            replica_in_sync: catalog.replica_in_sync(room),
            id: room.id,
            name: room.name.clone(),
            private: room.private,
            dm: room.is_dm(),
            owner: room.owner,
            replica: room.replica,
            epoch: room.epoch,
            member,
        }
    }
}

#[derive(Serialize)]
struct RoomList {
    rooms: Vec<RoomView>,
}

/// `GET /api/rooms`: public rooms and the private rooms the caller belongs to.
async fn list_rooms(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<RoomList>, ApiError> {
    let user = current_user(&app, &headers)?;
    let state = read_state(&app.state);
    let rooms = state
        .catalog
        .visible_rooms(user)
        .map(|room| RoomView::new(&state.catalog, room, state.catalog.is_member(room.id, user)))
        .collect();
    Ok(Json(RoomList { rooms }))
}

#[derive(Deserialize)]
struct NewRoom {
    name: String,
    #[serde(default)]
    private: bool,
}

/// Refuses a user who created `max_rooms_per_user` rooms already (`403 quota_exceeded`).
/// Checked on this member's catalog before the write: creates in flight at the same time
/// may pass the quota by their number.
pub(super) fn check_room_quota(app: &AppState, user: UserId) -> Result<(), ApiError> {
    let quota = app.config.max_rooms_per_user;
    if quota > 0 && read_state(&app.state).catalog.rooms_created_by(user) >= quota {
        let message = format!("you created {quota} rooms, the most one user may; delete or reuse one");
        return Err(ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", message));
    }
    Ok(())
}

/// `POST /api/rooms`: create a room; the creator is its first member.
async fn create_room(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewRoom>,
) -> Result<Response, ApiError> {
    let user = current_user(&app, &headers)?;
    check_room_quota(&app, user)?;
    let command = Command::CreateRoom { name: body.name, private: body.private, created_by: user, at_ms: now_ms() };
    match app.writer.write(command).await? {
        CommandOutput::Room(room) => {
            let view = RoomView::new(&read_state(&app.state).catalog, &room, true);
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        other => Err(ApiError::internal(format!("CreateRoom returned {other:?}"))),
    }
}

#[derive(Deserialize)]
struct NewMember {
    /// Who to add; the caller when absent.
    username: Option<String>,
}

/// `POST /api/rooms/{id}/members`: join a public room, or add someone to a private room
/// the caller belongs to.
async fn join_room(
    State(app): State<AppState>,
    Path(room_id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let caller = current_user(&app, &headers)?;
    let target = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<NewMember>(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .username
    };
    let command = {
        let state = read_state(&app.state);
        let catalog = &state.catalog;
        let room = catalog.rooms.get(&room_id).ok_or_else(|| ApiError::not_found("no such room"))?;
        if room.private && !catalog.is_member(room_id, caller) {
            // Same answer as for a room that does not exist: do not reveal private rooms.
            return Err(ApiError::not_found("no such room"));
        }
        let user = match target {
            Some(username) => catalog
                .user_by_name(&username)
                .map(|user| user.id)
                .ok_or_else(|| ApiError::not_found("no such user"))?,
            None => caller,
        };
        if user != caller && !room.private {
            return Err(ApiError::forbidden("people join public rooms themselves"));
        }
        Command::AddMember { room: room_id, user }
    };
    app.writer.write(command).await?;
    Ok(StatusCode::NO_CONTENT)
}
