//! The web edge's one error type and JSON extractor. Every error leaves as
//! `{"code": "...", "message": "..."}` with a fitting status; 4xx are quiet and precise,
//! 5xx are logged with detail and shown to the client without it. The core's errors
//! (`CatalogError`, `WriteError`, `HashingError`, a backup's `CheckpointError`) become
//! [`ApiError`]s here, and only here. The chat node's edge answers with the same type.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::catalog::CatalogError;
use crate::control::hashing::HashingError;
use crate::control::moderation::AddError;
use crate::control::write::WriteError;
use crate::store::checkpoint::CheckpointError;

/// An error answer of the HTTP API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After`, when the client should simply come back later.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// The server is at its bound for this kind of work (password hashing): `503 busy`
    /// with `Retry-After: 1`. Quiet: it is the bound doing its job, not a failure.
    pub fn busy(message: impl Into<String>) -> Self {
        Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message) }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in first (session cookie or Bearer token)")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The caller is banned from the room: `403 banned`, on every path that reads or
    /// writes it.
    pub fn banned() -> Self {
        Self::new(StatusCode::FORBIDDEN, "banned", "you are banned from this room")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A server-side failure: the detail goes to the log, not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(detail = %detail, "request failed inside the server");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed; the operator has the details")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code, message: &self.message };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let status = match e {
            CatalogError::UsernameTaken(_)
            | CatalogError::RoomExists(_)
            | CatalogError::NodeExists(_)
            | CatalogError::StaleEpoch { .. }
            | CatalogError::SigningKeyAlreadySet
            | CatalogError::NodePending(_)
            | CatalogError::NoCapacity { .. }
            | CatalogError::OwnerWithoutLog { .. }
            | CatalogError::NotSettled
            | CatalogError::StaleDecision { .. }
            | CatalogError::ReplicaNotInSync { .. }
            | CatalogError::NotAMember { .. }
            | CatalogError::GroupDmFull
            | CatalogError::NotGroupDm { .. }
            | CatalogError::GroupDmAdd { .. } => StatusCode::CONFLICT,
            CatalogError::InvalidUsername
            | CatalogError::InvalidRoomName
            | CatalogError::InvalidNodeName
            | CatalogError::ReservedRoomName
            | CatalogError::DmWithSelf
            | CatalogError::InvalidMute
            | CatalogError::DuplicateMember(_)
            | CatalogError::GroupDmTooSmall
            | CatalogError::GroupDmTooLarge
            | CatalogError::InvalidGroupName => StatusCode::BAD_REQUEST,
            CatalogError::DmMembersFixed
            | CatalogError::NotModerator { .. }
            | CatalogError::NotRoomOwner { .. }
            | CatalogError::Banned { .. }
            | CatalogError::ProtectedUser
            | CatalogError::DmNotModerated => StatusCode::FORBIDDEN,
            CatalogError::UnknownUser(_) | CatalogError::UnknownRoom(_) | CatalogError::UnknownNode(_) => {
                StatusCode::NOT_FOUND
            }
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Rejected(e) => e.into(),
            WriteError::Unavailable(reason) => {
                tracing::warn!(reason = %reason, "a write found no leader in time");
                Self::unavailable("the control plane has no leader right now; retry shortly")
            }
            WriteError::NotApplied(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_applied",
                "the change is committed, but this server has not applied it yet; retry shortly",
            ),
        }
    }
}

impl From<AddError> for ApiError {
    fn from(e: AddError) -> Self {
        match e {
            AddError::Write(e) => e.into(),
            AddError::Unavailable(_) => Self::unavailable(
                "no chat node holding this room answered (its newest message is needed); retry shortly",
            ),
        }
    }
}

impl From<HashingError> for ApiError {
    fn from(e: HashingError) -> Self {
        match e {
            HashingError::Busy => Self::busy(e.to_string()),
            HashingError::Failed(_) => Self::internal(e),
        }
    }
}

/// Bad names and unusable backup directories are the operator's to fix (4xx, with the
/// reason); a failure while writing is logged here and answered without detail.
pub fn backup_error(e: CheckpointError) -> ApiError {
    match e {
        CheckpointError::InvalidName(_) | CheckpointError::RelativePath(_) => {
            ApiError::bad_request(e.code(), e.to_string())
        }
        CheckpointError::TargetExists(_) | CheckpointError::NotWritable { .. } => {
            tracing::warn!(error = %e, "a backup was refused");
            ApiError::new(StatusCode::CONFLICT, e.code(), e.to_string())
        }
        CheckpointError::Io { .. } | CheckpointError::Rocks(_) | CheckpointError::Unreadable(_) => {
            tracing::error!(error = %e, "a backup failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.code(),
                "the backup failed; the server log has the details",
            )
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s with stable codes.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let message = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("invalid_json", message),
        JsonRejection::JsonDataError(_) => ApiError::bad_request("invalid_request", message),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
        }
        other => ApiError::new(other.status(), "bad_request", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_a_503_with_retry_after() {
        let error = ApiError::from(HashingError::Busy);
        assert_eq!(error.code, HashingError::Busy.code());
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert!(ApiError::unavailable("x").into_response().headers().get(header::RETRY_AFTER).is_none());
    }
}
