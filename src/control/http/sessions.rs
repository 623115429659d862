//! `POST /api/sessions` (log in: the session token, also set as the cookie) and
//! `DELETE /api/sessions` (log out: the token is ended on every member). Failed logins
//! are limited per username and per client address, together with the login form
//! ([`limiter`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Serialize;

use super::cookies::secure_cookie;
use super::error::{ApiError, ApiJson};
use super::extractor::{end_session, AuthUser};
use super::limiter::{self, client_addr, LoginLimiter};
use super::views::{Credentials, UserView};
use crate::control::auth;
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;

/// `limiter` is this member's, shared with the login form.
pub fn routes(limiter: Arc<LoginLimiter>) -> Router<AppState> {
    Router::new().route("/api/sessions", post(login).delete(logout)).layer(Extension(limiter))
}

#[derive(Serialize)]
struct SessionView {
    token: String,
    user: UserView,
}

/// `POST /api/sessions`: log in; sets the session cookie and returns the token.
async fn login(
    State(app): State<AppState>,
    Extension(limiter): Extension<Arc<LoginLimiter>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    // The same per-user and per-address limit as the login form.
    let addr = client_addr(peer.map(|Extension(ConnectInfo(addr))| addr), &headers);
    let keys = limiter::keys(body.username.trim(), addr);
    if let Err(wait) = limiter.check(&keys, Instant::now()) {
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
            limiter.failed(&keys, Instant::now());
        }
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "wrong username or password"));
    };
    limiter.clear(&keys[0]);
    let token = auth::sign_session(&key, user.id, now_ms() + auth::SESSION_TTL_MS);
    let body = SessionView { token: token.clone(), user: UserView { id: user.id, username: user.username } };
    // `Secure` behind a TLS proxy, exactly like the form login's cookie.
    let cookie = secure_cookie(auth::session_cookie(&token), &headers);
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// `DELETE /api/sessions`: logs this token out (204); 401 without a valid session.
async fn logout(_: AuthUser, State(app): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    end_session(&app, &headers).await?;
    Ok(StatusCode::NO_CONTENT)
}
