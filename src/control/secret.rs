//! The cluster secret: shared by controls and nodes, required on every internal API
//! (Raft RPC, forwarded writes, the node API, admin operations).

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};

use super::http::error::ApiError;

/// The header internal callers put the secret in.
pub const SECRET_HEADER: &str = "x-districhat-secret";

/// The secret, cheap to clone. `Debug` does not print it.
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>);

impl ClusterSecret {
    pub fn new(secret: impl Into<Arc<str>>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the request carries this secret (compared in constant time).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers.get(SECRET_HEADER) else { return false };
        constant_time_eq(given.as_bytes(), self.0.as_bytes())
    }

    /// `Ok` when the request carries this secret, else the API's 401 `unauthorized`.
    pub fn require(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.matches(headers) {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the cluster secret is required"))
        }
    }
}

/// A handler argument that refuses callers without the cluster secret (401
/// `unauthorized`). Put it before the body extractor: axum runs header extractors first,
/// so an unauthenticated request is refused before its body is read or parsed, and
/// always with 401 whatever the body holds.
pub struct SecretChecked;

impl<S> FromRequestParts<S> for SecretChecked
where
    S: Send + Sync,
    ClusterSecret: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        ClusterSecret::from_ref(state).require(&parts.headers)?;
        Ok(Self)
    }
}

impl FromRef<super::AppState> for ClusterSecret {
    fn from_ref(app: &super::AppState) -> Self {
        app.secret.clone()
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
