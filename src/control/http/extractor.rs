//! Who is calling, as handler arguments (axum's `FromRequestParts`), so a handler's
//! signature says what it needs and a forgotten check cannot compile away:
//!
//! - [`AuthUser`]: the logged-in user, or `401 unauthorized`. The session token comes from
//!   the `Authorization: Bearer` header, else the session cookie; it must be signed with
//!   the catalog's key, unexpired, of a user this member has applied, and not ended by a
//!   logout ([`Catalog::session_ended`](crate::control::catalog::Catalog::session_ended)).
//! - [`MaybeAuthUser`]: the same, `None` instead of 401 (the pages' visitors).
//! - [`SecretChecked`]: the caller holds the cluster secret, or `401 unauthorized`.
//!
//! Parts extractors run before the body extractor, so a refused caller is refused before
//! its body is read. Also here, because two handler modules need them: ending the
//! request's session (the JSON logout and the logout form) and the room quota (the JSON
//! and the form room creation).

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};

use super::error::ApiError;
use crate::control::auth::{self, SESSION_COOKIE};
use crate::control::catalog::{Catalog, Command, Room, RoomId, UserId};
use crate::control::raft::state_machine::read_state;
use crate::control::secret::ClusterSecret;
use crate::control::AppState;
use crate::now_ms;

/// The logged-in user of a request; rejects with `401 unauthorized`.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub UserId);

/// The logged-in user of a request, if any; never rejects.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthUser(pub Option<UserId>);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Self::from_headers(app, &parts.headers)
    }
}

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(app, &parts.headers))
    }
}

impl AuthUser {
    /// The logged-in user of a request with these headers, or 401.
    pub fn from_headers(app: &AppState, headers: &HeaderMap) -> Result<Self, ApiError> {
        let token = session_token(headers).ok_or_else(ApiError::unauthorized)?;
        let state = read_state(&app.state);
        let key = state.catalog.meta.signing_key.as_deref().ok_or_else(ApiError::unauthorized)?;
        let (user, expires_ms) = auth::session_claims(key, token, now_ms()).ok_or_else(ApiError::unauthorized)?;
        // A session of a user this member has not applied yet is treated as logged out.
        let known = state.catalog.users.contains_key(&user) && !state.catalog.session_ended(user, expires_ms);
        known.then_some(Self(user)).ok_or_else(ApiError::unauthorized)
    }
}

impl MaybeAuthUser {
    /// The logged-in user of a request with these headers, if any.
    pub fn from_headers(app: &AppState, headers: &HeaderMap) -> Self {
        Self(AuthUser::from_headers(app, headers).ok().map(|AuthUser(user)| user))
    }
}

/// The session token of a request: the Bearer token, else the session cookie.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        return Some(bearer.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// Ends the request's session on every member (a logout): its token is refused from now
/// on, even if a copy of the cookie survives somewhere. Nothing to do without a valid one.
pub async fn end_session(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let claims = {
        let state = read_state(&app.state);
        let key = state.catalog.meta.signing_key.as_deref();
        session_token(headers).zip(key).and_then(|(token, key)| auth::session_claims(key, token, now_ms()))
    };
    let Some((user, expires_ms)) = claims else { return Ok(()) };
    if read_state(&app.state).catalog.session_ended(user, expires_ms) {
        return Ok(()); // Already ended: a replayed logout writes nothing.
    }
    app.writer.write(Command::EndSession { user, expires_ms, at_ms: now_ms() }).await?;
    Ok(())
}

/// Refuses a user who created `max_rooms_per_user` rooms already (`403 quota_exceeded`).
/// Checked on this member's catalog before the write: creates in flight at the same time
/// may pass the quota by their number.
pub fn check_room_quota(app: &AppState, user: UserId) -> Result<(), ApiError> {
    let quota = app.config.max_rooms_per_user;
    if quota > 0 && read_state(&app.state).catalog.rooms_created_by(user) >= quota {
        let message = format!("you created {quota} rooms, the most one user may; delete or reuse one");
        return Err(ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", message));
    }
    Ok(())
}

/// The room `user` may read and write through the REST API: it exists (`404`), the user is
/// not banned from it (`403 banned`), and a private room has them as a member (`403
/// forbidden`).
pub fn accessible_room(catalog: &Catalog, room: RoomId, user: UserId) -> Result<&Room, ApiError> {
    let entry = catalog.rooms.get(&room).ok_or_else(|| ApiError::not_found("no such room"))?;
    if catalog.is_banned(room, user) {
        return Err(ApiError::banned());
    }
    if entry.private && !catalog.is_member(room, user) {
        return Err(ApiError::forbidden("this room is private to its members"));
    }
    Ok(entry)
}

/// A handler argument that refuses callers without the cluster secret (401
/// `unauthorized`). Put it before the body extractor: axum runs header extractors first,
/// so an unauthenticated request is refused before its body is read or parsed, and
/// always with 401 whatever the body holds. Works on any server whose state yields the
/// secret (controls and chat nodes).
pub struct SecretChecked;

impl<S> FromRequestParts<S> for SecretChecked
where
    S: Send + Sync,
    ClusterSecret: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if ClusterSecret::from_ref(state).matches(&parts.headers) {
            Ok(Self)
        } else {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the cluster secret is required"))
        }
    }
}

impl FromRef<AppState> for ClusterSecret {
    fn from_ref(app: &AppState) -> Self {
        app.secret.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_token_comes_from_bearer_or_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=b; districhat_session=tok; c=d".parse().unwrap());
        assert_eq!(session_token(&headers), Some("tok"));
        headers.insert(header::AUTHORIZATION, "Bearer bear".parse().unwrap());
        assert_eq!(session_token(&headers), Some("bear"));
    }
}
