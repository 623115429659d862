//! `POST /api/users`: registering an account (the password is hashed in one of this
//! member's bounded argon2 slots: `503 busy` past them).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::error::{ApiError, ApiJson};
use super::views::{Credentials, UserView};
use crate::control::catalog::{Command, CommandOutput};
use crate::control::AppState;
use crate::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users", post(register))
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
