//! What every HTTP server of ours (controls and nodes) does at the edge, whatever the route.
//!
//! [`metrics`](fn@metrics): `GET /metrics`, the process's Prometheus text (controls and nodes alike).
//!
//! [`close_if_body_unread`]: a request whose body the handler did not read to its end (a
//! 413, a 401 before the body, any early refusal) is answered with `Connection: close`.
//! hyper closes such a connection after the response anyway, since it cannot know where
//! the next request starts; without the header a keep-alive client puts the connection
//! back in its pool and sends its next request into a socket that is closing, and that
//! request fails with a transport error (a POST is not retried). The header tells the
//! client before it reuses the connection. Draining the rest of the body instead would
//! make a refused 10 MB upload cost 10 MB of reading; closing costs one new connection.
//!
//! [`no_delay`]: every accepted connection sends small frames at once (`TCP_NODELAY`)
//! instead of holding them for Nagle's algorithm (docs/BENCHMARKS.md, "Nagle").

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// `GET /metrics`: Prometheus text.
pub async fn metrics() -> Response {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::render_metrics()).into_response()
}

/// Middleware (`axum::middleware::from_fn`): adds `Connection: close` to the response when
/// the request's body was not read to its end.
pub async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let finished = Arc::new(AtomicBool::new(false));
    let body = Body::new(Watched { inner: body, finished: finished.clone() });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !finished.load(Ordering::Acquire) {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records when it has been read to its end.
struct Watched {
    inner: Body,
    /// Set once the inner body reported its end; read after the handler answered.
    finished: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Turns Nagle's algorithm off on an accepted connection: a chat frame is small and
/// wanted now; held back until the peer's delayed ACK, it waited up to tens of ms.
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}
