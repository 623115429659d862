//! Connection tokens: short-lived proof of identity a browser shows a chat node in its
//! `hello` frame. The control plane signs them (HMAC-SHA256) with a key derived from the
//! catalog's signing key; nodes get that key when they register and check tokens
//! locally, with no round trip.
//!
//! Format: `base64url(json(ConnectionClaims)) "." base64url(hmac)`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::ConnectionClaims;

type HmacSha256 = Hmac<Sha256>;

/// How long a connection token is accepted for a new connection.
pub const CONNECTION_TOKEN_TTL_MS: u64 = 10 * 60 * 1000;

/// The token key, derived from the catalog's signing key so that a leaked node key
/// cannot forge browser sessions.
pub fn derive_token_key(signing_key: &[u8]) -> Vec<u8> {
    hmac_sha256(signing_key, b"districhat connection tokens v1")
}

/// Signs claims into a token.
pub fn sign(key: &[u8], claims: &ConnectionClaims) -> String {
    // Serialising a struct of integers and a string cannot fail.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(hmac_sha256(key, &payload)))
}

/// The claims of a valid, unexpired token.
pub fn verify(key: &[u8], token: &str, now_ms: u64) -> Option<ConnectionClaims> {
    let (payload, signature) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(&payload);
    mac.verify_slice(&signature).ok()?;
    let claims: ConnectionClaims = serde_json::from_slice(&payload).ok()?;
    (now_ms < claims.expires_ms).then_some(claims)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else { unreachable!("HMAC takes keys of any length") };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_with_the_key_until_expiry() {
        let key = derive_token_key(b"signing");
        let claims = ConnectionClaims { user_id: 7, username: "ann".into(), expires_ms: 100 };
        let token = sign(&key, &claims);
        assert_eq!(verify(&key, &token, 99), Some(claims));
        assert_eq!(verify(&key, &token, 100), None);
        assert_eq!(verify(b"signing", &token, 1), None, "the raw signing key is not the token key");
        assert_eq!(verify(&key, "x.y", 1), None);
    }
}
