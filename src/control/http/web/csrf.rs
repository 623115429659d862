//! CSRF protection for the HTML forms.
//!
//! Every form carries a hidden `csrf` field: `base64url(HMAC(signing key, "csrf" ‖ binding))`,
//! where the binding is the visitor's session cookie or, before login, a random anonymous
//! cookie (`districhat_csrf`, HttpOnly, SameSite=Strict) set with the first page. Another
//! site can make a browser send the cookies but cannot read them, so it cannot compute the
//! token; the token is stateless, so any control checks it. A POST whose token is missing
//! or wrong, or whose `Origin` header names another site, is refused with 403 `csrf`
//! ([`CsrfForm`]). The JSON API does not need this: it only accepts `application/json`
//! bodies, which a cross-site form cannot send, and its cookie is SameSite=Lax.

use axum::body::{Body, Bytes};
use axum::extract::{Form, FromRequest, Request};
use axum::http::{header, HeaderMap, Method};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::Sha256;

use super::super::cookies::{cookie, secure_suffix};
use super::visitor::Visitor;
use super::WebError;
use crate::control::auth::SESSION_COOKIE;
use crate::control::AppState;

/// The anonymous binding cookie for visitors who are not logged in.
pub const CSRF_COOKIE: &str = "districhat_csrf";
/// Largest form body accepted.
const FORM_LIMIT: usize = 64 * 1024;

/// The token for `binding` under `key`.
pub fn token(key: &[u8], binding: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(key, binding).finalize().into_bytes())
}

/// Whether `given` is the token for `binding` (compared in constant time).
pub fn verify(key: &[u8], binding: &str, given: &str) -> bool {
    let Ok(given) = URL_SAFE_NO_PAD.decode(given.trim()) else { return false };
    mac(key, binding).verify_slice(&given).is_ok()
}

fn mac(key: &[u8], binding: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    mac.update(b"districhat-csrf\0");
    mac.update(binding.as_bytes());
    mac
}

/// What this visitor's tokens are bound to: the session cookie, else the anonymous one.
pub fn binding(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE).or_else(|| cookie(headers, CSRF_COOKIE))
}

/// A fresh random anonymous binding.
pub fn new_anonymous_binding() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
}

/// The `Set-Cookie` value of an anonymous binding (a browser-session cookie).
pub fn anonymous_cookie(binding: &str, secure: bool) -> String {
    secure_suffix(format!("{CSRF_COOKIE}={binding}; Path=/; HttpOnly; SameSite=Strict"), secure)
}

/// A form with no field but its CSRF token (logout, join, approve, ...).
#[derive(Deserialize)]
pub struct EmptyForm {}

/// A form body of type `T` that passed the CSRF check, and the visitor who sent it.
pub struct CsrfForm<T>(pub Visitor, pub T);

#[derive(Deserialize)]
struct TokenField {
    #[serde(default)]
    csrf: String,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = WebError;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, WebError> {
        let headers = request.headers().clone();
        Self::check(request, app, &headers).await.map_err(|e| e.for_request(&headers))
    }
}

impl<T: DeserializeOwned + Send> CsrfForm<T> {
    async fn check(request: Request, app: &AppState, headers: &HeaderMap) -> Result<Self, WebError> {
        let visitor = Visitor::read(app, headers)?;
        if !same_origin(headers) {
            return Err(WebError::csrf());
        }
        let body = axum::body::to_bytes(request.into_body(), FORM_LIMIT)
            .await
            .map_err(|_| WebError::bad_request("payload_too_large", "The form is too large."))?;
        let TokenField { csrf } = parse(headers, body.clone()).await?;
        let valid = binding(headers).is_some_and(|binding| verify(&visitor.key, binding, &csrf));
        if !valid {
            return Err(WebError::csrf());
        }
        Ok(Self(visitor, parse(headers, body).await?))
    }
}

/// Parses an urlencoded body (axum's `Form` on a request rebuilt around the bytes).
async fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: Bytes) -> Result<T, WebError> {
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = Method::POST;
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        request.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
    }
    Form::<T>::from_request(request, &())
        .await
        .map(|Form(value)| value)
        .map_err(|e| WebError::bad_request("invalid_form", format!("The form could not be read: {}", e.body_text())))
}

/// `Origin` (when the browser sends one) must be this host: a form posted from another
/// site is refused even before its token is looked at.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()) else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|value| value.to_str().ok()) else { return false };
    let forwarded_host = headers.get("x-forwarded-host").and_then(|value| value.to_str().ok());
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest).trim_end_matches('/');
    origin_host.eq_ignore_ascii_case(host) || forwarded_host.is_some_and(|h| origin_host.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn tokens_bind_to_key_and_binding() {
        let token = token(b"key", "session-a");
        assert!(verify(b"key", "session-a", &token));
        assert!(!verify(b"key", "session-b", &token));
        assert!(!verify(b"other", "session-a", &token));
        assert!(!verify(b"key", "session-a", ""));
        assert!(!verify(b"key", "session-a", "not base64!"));
    }

    #[test]
    fn the_session_cookie_wins_over_the_anonymous_one() {
        let mut headers = HeaderMap::new();
        assert_eq!(binding(&headers), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("districhat_csrf=anon"));
        assert_eq!(binding(&headers), Some("anon"));
        headers.insert(header::COOKIE, HeaderValue::from_static("districhat_csrf=anon; districhat_session=s"));
        assert_eq!(binding(&headers), Some("s"));
    }

    #[test]
    fn foreign_origins_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7000"));
        assert!(same_origin(&headers), "no Origin header: decided by the token alone");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:7000"));
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
    }
}
