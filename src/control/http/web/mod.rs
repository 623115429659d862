//! The browser side of a control: server-rendered pages (askama templates in
//! `templates/`), HTML forms with CSRF protection, flash messages, login rate limiting,
//! and the static files of the one JS client (`static/chat.js`, `static/style.css`,
//! embedded in the binary). Every control serves them; the pages read this member's
//! applied catalog and write through the [`Writer`](crate::control::write::Writer) like the REST API.
//!
//! | method path | what |
//! |---|---|
//! | `GET /` | home |
//! | `GET,POST /register` · `GET,POST /login` · `POST /logout` | accounts (`account`) |
//! | `GET /app` | dashboard: my rooms and DMs with unread counts, public rooms, forms |
//! | `GET /rooms/{id}[?node=ID]` | a room or DM; `?node=ID` makes the page try node ID first |
//! | `POST /rooms` · `POST /rooms/{id}/join` · `POST /rooms/{id}/invite` | create, join, add someone |
//! | `GET /dms/{username}` · `POST /dms` | open (or offer to start) the DM with someone |
//! | `GET /mentions` | the newest messages mentioning me, over all my rooms, linking into them (`mentions`) |
//! | `POST /group-dms` | start a group DM (3 to 20 members) |
//! | `GET,POST /rooms/{id}/moderation` | a room's moderation page and its form (moderators and the admin) |
//! | `GET /nodes` | Raft members and chat nodes, refreshed by the page every 2 s |
//! | `GET /admin` · `POST /admin/nodes/{id}/approve` · `POST /admin/members[/{id}/remove]` | admin |
//! | `GET /static/{file}` | the embedded JS and CSS |
//!
//! Decisions worth knowing:
//! - **The administrator is the first registered user (id 1).** Admin pages answer 403 to
//!   everyone else; the admin actions reuse the secret-guarded `/api/admin/*` endpoints.
//! - **CSRF** ([`csrf`]): every form carries `csrf = HMAC(signing key, binding)`, where the
//!   binding is the session cookie (or, before login, a random anonymous cookie). A POST
//!   without a valid token, or with a foreign `Origin`, gets 403 with the code `csrf`.
//! - **Login attempts** ([`limiter`](super::limiter), shared with the JSON login) are
//!   limited per username and per client address: 5 failures in a minute lock that key
//!   for the rest of the minute (429).
//! - Cookies get `Secure` when the request came over TLS (`X-Forwarded-Proto: https`).
//! - Pages send a strict Content-Security-Policy (scripts and styles from this origin only,
//!   WebSockets to any node), so user text can only ever be text.

mod account;
mod assets;
pub mod csrf;
mod error;
mod flash;
mod mentions;
mod moderation;
mod ops;
mod pages;
mod rooms;
mod visitor;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};

pub use self::error::WebError;
use super::limiter::LoginLimiter;
use crate::control::read_marks::ReadMarks;
use crate::control::AppState;

/// Per-member state of the web pages, kept out of [`AppState`]: it is in memory only and
/// nothing else needs it.
#[derive(Clone, Default)]
pub struct WebState {
    /// Failed logins per username and per client address.
    pub limiter: Arc<LoginLimiter>,
    /// Read positions not yet in the catalog (the pages' unread badges include them).
    pub read_marks: Arc<ReadMarks>,
}

/// The pages, forms and static files. Merged into the control's router; `state` is shared
/// with the JSON login so both paths count failures together.
pub fn routes(state: WebState) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/register", get(account::register_page).post(account::register))
        .route("/login", get(account::login_page).post(account::login))
        .route("/logout", post(account::logout))
        .route("/app", get(pages::dashboard))
        .route("/rooms", post(rooms::create))
        .route("/rooms/{id}", get(pages::room))
        .route("/rooms/{id}/join", post(rooms::join))
        .route("/rooms/{id}/invite", post(rooms::invite))
        .route("/dms", post(rooms::open_dm))
        .route("/group-dms", post(rooms::create_group_dm))
        .route("/rooms/{id}/moderation", get(moderation::page).post(moderation::act))
        .route("/dms/{username}", get(pages::dm))
        .route("/mentions", get(mentions::mentions))
        .route("/nodes", get(ops::nodes_page))
        .route("/admin", get(ops::admin_page))
        .route("/admin/nodes/{id}/approve", post(ops::approve_node))
        .route("/admin/members", post(ops::add_member))
        .route("/admin/members/{id}/remove", post(ops::remove_member))
        .route("/static/{file}", get(assets::serve))
        .layer(Extension(state))
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers every web answer carries. The CSP is what makes an injected `<img onerror>` or
/// `<script>` inert even if some text ever reached the DOM as HTML.
async fn security_headers(mut response: Response) -> Response {
    const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    }
    response
}
