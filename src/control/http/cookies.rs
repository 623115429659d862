//! Cookies at the edge: reading one by name, and `Secure` when the request came over TLS
//! (through the nginx front, which says so in `X-Forwarded-Proto`). The session cookie
//! itself is made by [`auth::session_cookie`](crate::control::auth::session_cookie); the
//! pages add their CSRF and flash cookies.

use axum::http::{header, HeaderMap};

/// `cookie` with `; Secure` added when the request came over TLS (for the JSON login,
/// which sets the same session cookie as the form).
pub fn secure_cookie(cookie: String, headers: &HeaderMap) -> String {
    secure_suffix(cookie, came_over_tls(headers))
}

/// Appends `; Secure` when the visit came over TLS.
pub fn secure_suffix(cookie: String, secure: bool) -> String {
    if secure {
        format!("{cookie}; Secure")
    } else {
        cookie
    }
}

/// TLS ends at a proxy in front of the control (nginx); it says so in `X-Forwarded-Proto`.
pub fn came_over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.split(',').next().is_some_and(|first| first.trim().eq_ignore_ascii_case("https")))
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn tls_is_read_from_the_proxy_header() {
        let mut headers = HeaderMap::new();
        assert!(!came_over_tls(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(came_over_tls(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http, https"));
        assert!(!came_over_tls(&headers));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("ab=1; a=2; empty="));
        assert_eq!(cookie(&headers, "a"), Some("2"));
        assert_eq!(cookie(&headers, "ab"), Some("1"));
        assert_eq!(cookie(&headers, "empty"), None);
        assert_eq!(cookie(&headers, "b"), None);
    }
}
