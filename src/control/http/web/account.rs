//! Accounts in the browser: the register and login forms, and logout. Passwords are
//! hashed with argon2 ([`auth`]); a login sets the same signed, HttpOnly, SameSite=Lax
//! session cookie the REST API sets (plus `Secure` over TLS). A failed form is shown
//! again with its error and the fitting status (400, 401, 409, 429; 503 with
//! `Retry-After: 1` when the member's password-hashing slots and queue are full).

use std::net::SocketAddr;
use std::time::Instant;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;

use super::super::error::ApiError;
use super::super::extractor::end_session;
use super::super::limiter::{self, client_addr, MAX_FAILURES};
use super::csrf::{CsrfForm, EmptyForm};
use super::flash::Flash;
use super::visitor::{with_cookies, Layout, Visitor, ADMIN_USER};
use super::{WebError, WebState};
use crate::control::auth;
use crate::control::catalog::{Command, CommandOutput};
use crate::control::hashing::HashingError;
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;
use crate::now_ms;

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage {
    layout: Layout,
    username: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    username: String,
    next: String,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// `GET /register`.
pub async fn register_page(visitor: Visitor) -> Result<Response, WebError> {
    let page = RegisterPage { layout: visitor.layout("Register", "register"), username: String::new() };
    Ok(visitor.page(StatusCode::OK, &page))
}

#[derive(Deserialize)]
pub struct RegisterForm {
    username: String,
    password: String,
    confirm: String,
}

/// `POST /register`: creates the account and logs it in.
pub async fn register(
    State(app): State<AppState>,
    CsrfForm(mut visitor, form): CsrfForm<RegisterForm>,
) -> Result<Response, WebError> {
    let username = form.username.trim().to_string();
    let refuse = |mut visitor: Visitor, status: StatusCode, message: String| {
        visitor.flash = Some(Flash::error(message));
        let page = RegisterPage { layout: visitor.layout("Register", "register"), username: username.clone() };
        Ok(visitor.page(status, &page))
    };
    if !(8..=128).contains(&form.password.chars().count()) {
        return refuse(visitor, StatusCode::BAD_REQUEST, "Passwords are 8 to 128 characters.".into());
    }
    if form.password != form.confirm {
        return refuse(visitor, StatusCode::BAD_REQUEST, "The two passwords differ.".into());
    }
    let hash = match app.hashing.hash(form.password).await {
        Ok(hash) => hash,
        Err(HashingError::Busy) => return refuse(visitor, StatusCode::SERVICE_UNAVAILABLE, BUSY.into()).map(busy),
        Err(e) => return Err(WebError::internal(e)),
    };
    let command = Command::CreateUser { username: username.clone(), password_hash: hash, at_ms: now_ms() };
    let user = match app.writer.write(command).await {
        Ok(CommandOutput::User(user)) => user,
        Ok(other) => return Err(WebError::internal(format!("CreateUser returned {other:?}"))),
        Err(e) => {
            let e = ApiError::from(e);
            let message = match e.code {
                "username_taken" => format!("The username {username} is taken; pick another one."),
                "invalid_username" => "Usernames are 3 to 32 characters: a-z, 0-9, '_' and '-'.".into(),
                _ => e.message,
            };
            return refuse(visitor, e.status, message);
        }
    };
    // The session is only valid here once this member knows the user.
    let token = auth::sign_session(&visitor.key, user.id, now_ms() + auth::SESSION_TTL_MS);
    let session = visitor.session_cookie(&token);
    let welcome = if user.id == ADMIN_USER {
        format!("Welcome, {}! As the first account, you are the administrator.", user.username)
    } else {
        format!("Welcome, {}!", user.username)
    };
    visitor.flash = None;
    Ok(with_cookies(visitor.redirect("/app", Some(Flash::notice(welcome))), &[session]))
}

/// `GET /login[?next=/path]`.
pub async fn login_page(Query(query): Query<NextQuery>, visitor: Visitor) -> Result<Response, WebError> {
    let next = local_path(query.next.as_deref());
    let page = LoginPage { layout: visitor.layout("Log in", "login"), username: String::new(), next };
    Ok(visitor.page(StatusCode::OK, &page))
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: checks the rate limit, then the password; sets the session cookie.
pub async fn login(
    State(app): State<AppState>,
    Extension(web): Extension<WebState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    CsrfForm(mut visitor, form): CsrfForm<LoginForm>,
) -> Result<Response, WebError> {
    let username = form.username.trim().to_string();
    let next = local_path(Some(&form.next));
    let keys = limiter::keys(&username, client_addr(peer.map(|Extension(ConnectInfo(addr))| addr), &headers));
    let refuse = |mut visitor: Visitor, status: StatusCode, message: String| {
        visitor.flash = Some(Flash::error(message));
        let page =
            LoginPage { layout: visitor.layout("Log in", "login"), username: username.clone(), next: next.clone() };
        visitor.page(status, &page)
    };
    if let Err(wait) = web.limiter.check(&keys, Instant::now()) {
        let message = format!(
            "Too many failed logins ({MAX_FAILURES} in a minute) for this account or address. \
             Wait {} seconds and try again.",
            wait.as_secs()
        );
        let mut response = refuse(visitor, StatusCode::TOO_MANY_REQUESTS, message);
        if let Ok(value) = wait.as_secs().to_string().parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let user = read_state(&app.state).catalog.user_by_name(&username).cloned();
    // A refusal (`busy`) happens before the password is checked: it is no failed login.
    let verified = match user.as_ref() {
        Some(user) => match app.hashing.verify(form.password, user.password_hash.clone()).await {
            Ok(verified) => verified,
            Err(HashingError::Busy) => {
                return Ok(busy(refuse(visitor, StatusCode::SERVICE_UNAVAILABLE, BUSY.into())));
            }
            Err(e) => return Err(WebError::internal(e)),
        },
        None => false,
    };
    let Some(user) = user.filter(|_| verified) else {
        web.limiter.failed(&keys, Instant::now());
        return Ok(refuse(visitor, StatusCode::UNAUTHORIZED, "Wrong username or password.".into()));
    };
    web.limiter.clear(&keys[0]);
    let token = auth::sign_session(&visitor.key, user.id, now_ms() + auth::SESSION_TTL_MS);
    let session = visitor.session_cookie(&token);
    visitor.flash = None;
    Ok(with_cookies(visitor.redirect(&next, None), &[session]))
}

/// `POST /logout`: ends the session on every member (the token is refused from now on,
/// wherever a copy of it is) and forgets the cookie. If the cluster cannot take the write
/// (no leader for 10 s), the cookie is still forgotten and the page says so.
pub async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    CsrfForm(visitor, _): CsrfForm<EmptyForm>,
) -> Response {
    let flash = match end_session(&app, &headers).await {
        Ok(()) => Flash::notice("You are logged out."),
        Err(e) => {
            tracing::warn!(error = ?e, "a logout could not end the session on the cluster");
            Flash::error(
                "You are logged out in this browser. The cluster could not record it, so a copy of this session would work until it expires.",
            )
        }
    };
    let clear = visitor.clear_session_cookie();
    with_cookies(visitor.redirect("/", Some(flash)), &[clear])
}

/// What a form says when the member refused to hash a password right now.
const BUSY: &str = "The server is busy with other logins right now. Try again in a moment.";

/// `response` (a form refused with 503) with `Retry-After: 1`.
fn busy(mut response: Response) -> Response {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A redirect target from a form or query: a local path, else the dashboard.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path.to_string(),
        _ => "/app".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path(Some("/rooms/3?node=2")), "/rooms/3?node=2");
        for bad in [None, Some(""), Some("https://evil.example"), Some("//evil.example"), Some("/\\evil")] {
            assert_eq!(local_path(bad), "/app", "{bad:?}");
        }
    }
}
