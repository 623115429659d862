//! The static files, compiled into the binary (`include_str!`), so a control needs no
//! files next to it. Served with an ETag (a hash of the content) and `no-cache`: browsers
//! revalidate and get 304 until the binary changes.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::WebError;

/// (name, content type, content).
const FILES: [(&str, &str, &str); 2] = [
    ("chat.js", "text/javascript; charset=utf-8", include_str!("../../../../static/chat.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../../../static/style.css")),
];

/// `GET /static/{file}`.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(index) = FILES.iter().position(|(file, _, _)| *file == name) else {
        return WebError::not_found("There is no such file.").for_request(&headers).into_response();
    };
    let (_, content_type, content) = FILES[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let cache = [
        (header::ETAG, HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"0\""))),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, content_type)], content).into_response()
}

/// One quoted ETag per file, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, _, content)| {
                let digest = Sha256::digest(content.as_bytes());
                let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}
