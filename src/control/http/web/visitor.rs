//! Who is asking: the logged-in user (if any), the CSRF token for this visitor's forms,
//! a pending flash message, and whether the request came over TLS. Also the page
//! response builder that carries the cookies a visit needs (a new anonymous CSRF cookie,
//! a consumed flash).

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::super::cookies::{came_over_tls, secure_suffix};
use super::super::extractor::MaybeAuthUser;
use super::csrf;
use super::flash::{self, Flash};
use super::WebError;
use crate::control::auth::{self, SESSION_COOKIE};
use crate::control::catalog::{User, UserId};
use crate::control::raft::state_machine::read_state;
use crate::control::AppState;

/// The administrator: the first account ever registered.
pub const ADMIN_USER: UserId = 1;

/// One request's view of the person behind it.
pub struct Visitor {
    pub user: Option<User>,
    /// The token this visitor's forms must carry.
    pub csrf: String,
    /// A message from the previous request (shown once).
    pub flash: Option<Flash>,
    /// The request came through a TLS-terminating proxy: cookies get `Secure`.
    pub secure: bool,
    /// The catalog's signing key (session, CSRF and flash MACs).
    pub key: Vec<u8>,
    /// `Set-Cookie` values this visit's response must carry.
    cookies: Vec<String>,
}

/// What the base template needs.
pub struct Layout {
    pub title: String,
    /// `data-page` on `<body>`: tells `chat.js` what to run.
    pub page: &'static str,
    pub user: Option<String>,
    pub user_id: UserId,
    pub admin: bool,
    pub csrf: String,
    pub flash: Option<Flash>,
}

impl Visitor {
    /// Reads the visitor from the request; 503 while the cluster has no signing key yet.
    pub fn read(app: &AppState, headers: &HeaderMap) -> Result<Self, WebError> {
        Self::with_user(app, headers, MaybeAuthUser::from_headers(app, headers))
    }

    fn with_user(app: &AppState, headers: &HeaderMap, logged_in: MaybeAuthUser) -> Result<Self, WebError> {
        let key = read_state(&app.state).catalog.meta.signing_key.clone().ok_or_else(|| {
            WebError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The cluster is still starting; retry shortly.",
            )
        })?;
        let MaybeAuthUser(user) = logged_in;
        let user = user.and_then(|id| read_state(&app.state).catalog.users.get(&id).cloned());
        let secure = came_over_tls(headers);
        let mut cookies = Vec::new();
        let binding = match csrf::binding(headers) {
            Some(binding) => binding.to_string(),
            None => {
                let fresh = csrf::new_anonymous_binding();
                cookies.push(csrf::anonymous_cookie(&fresh, secure));
                fresh
            }
        };
        let flash = flash::read(headers, &key);
        if flash.is_some() {
            cookies.push(flash::clear_cookie(secure));
        }
        Ok(Self { csrf: csrf::token(&key, &binding), user, flash, secure, key, cookies })
    }

    /// The logged-in user, or a redirect to the login page that comes back to `next`.
    pub fn require_user(&self, next: &str) -> Result<&User, WebError> {
        self.user.as_ref().ok_or_else(|| WebError::Login { next: next.to_string() })
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|user| user.id == ADMIN_USER)
    }

    pub fn layout(&self, title: impl Into<String>, page: &'static str) -> Layout {
        Layout {
            title: title.into(),
            page,
            user: self.user.as_ref().map(|user| user.username.clone()),
            user_id: self.user.as_ref().map_or(0, |user| user.id),
            admin: self.is_admin(),
            csrf: self.csrf.clone(),
            flash: self.flash.clone(),
        }
    }

    /// Renders `page` with `status` and this visit's cookies.
    pub fn page(self, status: StatusCode, page: &impl Template) -> Response {
        match page.render() {
            Ok(html) => with_cookies((status, Html(html)).into_response(), &self.cookies),
            Err(e) => WebError::internal(format!("a page did not render: {e}")).into_response(),
        }
    }

    /// A 303 to `to`, carrying `flash` for the next page.
    pub fn redirect(&self, to: &str, flash: Option<Flash>) -> Response {
        let mut cookies = self.cookies.clone();
        if let Some(flash) = flash {
            cookies.push(flash::set_cookie(&flash, &self.key, self.secure));
        }
        with_cookies(Redirect::to(to).into_response(), &cookies)
    }

    /// The `Set-Cookie` value that logs this visitor in with `token`.
    pub fn session_cookie(&self, token: &str) -> String {
        secure_suffix(auth::session_cookie(token), self.secure)
    }

    /// The `Set-Cookie` value that logs this visitor out.
    pub fn clear_session_cookie(&self) -> String {
        secure_suffix(format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"), self.secure)
    }
}

/// A page's argument: who is visiting (the same [`MaybeAuthUser`] as the JSON API), with
/// this visit's CSRF token and flash message; 503 while the cluster has no signing key.
impl FromRequestParts<AppState> for Visitor {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, WebError> {
        let Ok(logged_in) = MaybeAuthUser::from_request_parts(parts, app).await;
        Self::with_user(app, &parts.headers, logged_in)
    }
}

/// Adds `cookies` as `Set-Cookie` headers.
pub fn with_cookies(mut response: Response, cookies: &[String]) -> Response {
    for cookie in cookies {
        match HeaderValue::from_str(cookie) {
            Ok(value) => {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            Err(e) => tracing::error!(error = %e, "a cookie was not a valid header value"),
        }
    }
    response
}
