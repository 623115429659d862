//! The cluster secret: shared by controls and nodes, required on every internal API
//! (Raft RPC, forwarded writes, the node API, admin operations). The edges refuse a
//! caller without it with `SecretChecked` (`control/http/extractor.rs`).

use std::sync::Arc;

use reqwest::header::HeaderMap;

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
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
