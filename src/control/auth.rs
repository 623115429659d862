//! Accounts and sessions: argon2id password hashes, and stateless session tokens signed
//! with the catalog's HMAC key (so any control verifies a session without a lookup).
//!
//! A token is `base64url(user_id ‖ expires_ms) "." base64url(hmac_sha256)`. The browser
//! gets it in an HttpOnly, SameSite=Lax cookie; API clients send it as a Bearer token
//! (read from a request by `control/http/extractor.rs`).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::catalog::UserId;

pub const SESSION_COOKIE: &str = "districhat_session";
/// How long a login lasts.
pub const SESSION_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

type HmacSha256 = Hmac<Sha256>;

/// Hashes a password with argon2id and a random salt (CPU-heavy: call off the runtime).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Signs a session for `user`, valid until `expires_ms` (Unix milliseconds).
pub fn sign_session(key: &[u8], user: UserId, expires_ms: u64) -> String {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&user.to_be_bytes());
    payload[8..].copy_from_slice(&expires_ms.to_be_bytes());
    format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(mac(key, &payload)))
}

/// (user, expires_ms) of a token whose signature is valid and that has not expired at
/// `now_ms`: the pair a logout ends (callers also check `Catalog::session_ended`).
pub fn session_claims(key: &[u8], token: &str, now_ms: u64) -> Option<(UserId, u64)> {
    let (payload, signature) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut check = HmacSha256::new_from_slice(key).ok()?;
    check.update(&payload);
    check.verify_slice(&signature).ok()?;
    let payload: [u8; 16] = payload.try_into().ok()?;
    let user = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let expires_ms = u64::from_be_bytes(payload[8..].try_into().ok()?);
    (now_ms < expires_ms).then_some((user, expires_ms))
}

fn mac(key: &[u8], payload: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    mac.update(payload);
    mac.finalize().into_bytes().to_vec()
}

/// The `Set-Cookie` value for a new session.
pub fn session_cookie(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}", SESSION_TTL_MS / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_only_with_the_key_and_before_expiry() {
        let token = sign_session(b"key", 42, 1_000);
        assert_eq!(session_claims(b"key", &token, 999), Some((42, 1_000)));
        assert_eq!(session_claims(b"key", &token, 1_000), None);
        assert_eq!(session_claims(b"other", &token, 1), None);
        assert_eq!(session_claims(b"key", "garbage", 1), None);
        let mut tampered = token.clone();
        tampered.insert(0, 'A');
        assert_eq!(session_claims(b"key", &tampered, 1), None);
    }
}
