//! The pages' error type: an HTML error page with the same `{code, message}` as the REST
//! API (or that JSON, when the client asks for JSON), or a redirect to the login page.

use askama::Template;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::super::error::ApiError;
use crate::control::write::WriteError;

/// Why a page or form could not be served.
#[derive(Debug)]
pub enum WebError {
    /// An error with a stable code, shown as a page (or JSON for JSON clients).
    Page { status: StatusCode, code: &'static str, message: String, json: bool },
    /// Not logged in: go to the login page, then back to `next`.
    Login { next: String },
}

impl WebError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Page { status, code, message: message.into(), json: false }
    }

    /// A form without a valid CSRF token (or from a foreign origin).
    pub fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "This form has expired or did not come from this site. Go back, reload the page and try again.",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A server-side failure: the detail goes to the log, not to the page.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::internal(detail).into()
    }

    /// Answers with JSON instead of a page when the request prefers JSON.
    pub fn for_request(self, headers: &HeaderMap) -> Self {
        match self {
            Self::Page { status, code, message, .. } => Self::Page { status, code, message, json: wants_json(headers) },
            other => other,
        }
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        Self::new(e.status, e.code, e.message)
    }
}

impl From<WriteError> for WebError {
    fn from(e: WriteError) -> Self {
        ApiError::from(e).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            Self::Login { next } => Redirect::to(&format!("/login?next={}", percent_encode(&next))).into_response(),
            Self::Page { status, code, message, json: true } => ApiError::new(status, code, message).into_response(),
            Self::Page { status, code, message, json: false } => {
                let page = ErrorPage {
                    status: status.as_u16(),
                    reason: status.canonical_reason().unwrap_or("Error"),
                    code,
                    message: &message,
                };
                match page.render() {
                    Ok(html) => (status, Html(html)).into_response(),
                    Err(e) => {
                        tracing::error!(error = %e, "the error page did not render");
                        (status, format!("{code}: {message}")).into_response()
                    }
                }
            }
        }
    }
}

/// Whether the client asked for JSON rather than a page (API clients, `fetch`).
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()).unwrap_or_default();
    accept.contains("application/json") && !accept.contains("text/html")
}

/// Percent-encodes everything but unreserved characters and `/` (for `?next=`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_paths_are_encoded() {
        assert_eq!(percent_encode("/rooms/3?node=2&x=a b"), "/rooms/3%3Fnode%3D2%26x%3Da%20b");
    }
}
