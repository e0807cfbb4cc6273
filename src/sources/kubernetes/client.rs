//! The kube client as the watches use it: kube's HTTP stack with two changes found by
//! `tests/kubernetes_faults.rs`.
//!
//! - **Few silent retries.** kube's client retries a 429, 503 or 504 up to 15 times by itself
//!   (honouring `Retry-After`, delays doubling from 5 ms to over a minute) before the watch sees
//!   an error, so a throttling API server went unlogged for three to eight minutes. Here it
//!   retries 3 times, with the same policy otherwise; then the watch logs the error and applies
//!   its own backoff (`watch.rs`).
//! - **Bounded watch lines.** kube reads a watch stream line by line with no limit on a line's
//!   length, so a stream that never sends a newline (a broken proxy, filler) grew memory without
//!   bound: 800 MB in 30 s in the test. A watch response line longer than [`MAX_WATCH_LINE`] now
//!   ends that response with an error; the watcher reconnects after its backoff.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use kube::client::ClientBuilder;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;
use tower::{BoxError, Layer, Service};

/// The longest watch event line accepted: an EndpointSlice holds at most 1000 endpoints (some
/// 400 KB of JSON), and etcd stores no object over 1.5 MiB unless told otherwise.
pub const MAX_WATCH_LINE: usize = 4 << 20;

/// How often a 429, 503 or 504 is retried inside the client before the watch sees it.
const CLIENT_RETRIES: u32 = 3;

/// kube's client with our retry policy and the watch line limit.
pub fn build(mut config: Config) -> anyhow::Result<Client> {
    config.default_retry = false;
    let retry = RetryPolicy::new(Duration::from_millis(5), Duration::from_secs(30), CLIENT_RETRIES, true)?;
    // Retry clones the service it wraps for each request; kube's stack is boxed and cannot be
    // cloned, so a Buffer (a task that owns the stack and takes requests over a channel) goes
    // between. The bound is on requests waiting to be sent, never on open watches.
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&LineLimitLayer)
        .with_layer(&BufferLayer::new(64))
        .with_layer(&RetryLayer::new(retry))
        .build())
}

/// Wraps the body of every watch response in [`LineLimited`].
struct LineLimitLayer;

impl<S> Layer<S> for LineLimitLayer {
    type Service = LineLimit<S>;

    fn layer(&self, inner: S) -> LineLimit<S> {
        LineLimit(inner)
    }
}

#[derive(Clone)]
struct LineLimit<S>(S);

impl<S, B> Service<Request<kube::client::Body>> for LineLimit<S>
where
    S: Service<Request<kube::client::Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<LineLimited<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let limit = is_watch(request.uri()).then_some(MAX_WATCH_LINE);
        let response = self.0.call(request);
        Box::pin(async move { Ok(response.await?.map(|inner| LineLimited { inner, limit, line: 0 })) })
    }
}

/// `watch=true` (or any of Go's true spellings, as the API server parses it) in the query.
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "watch=true" | "watch=1" | "watch=t" | "watch=T" | "watch=True" | "watch=TRUE"))
    })
}

/// A response body that fails once more than `limit` bytes arrive without a newline.
struct LineLimited<B> {
    inner: B,
    limit: Option<usize>,
    /// Bytes since the last newline.
    line: usize,
}

impl<B> Body for LineLimited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let (Some(limit), Some(data)) = (self.limit, frame.data_ref()) {
            // The first segment continues the open line; the last one is the new open line.
            let mut segments = data.split(|&b| b == b'\n').map(<[u8]>::len);
            let mut line = self.line + segments.next().unwrap_or(0);
            let mut longest = line;
            for len in segments {
                line = len;
                longest = longest.max(len);
            }
            self.line = line;
            if longest > limit {
                return Poll::Ready(Some(Err(format!("a watch event longer than {limit} bytes").into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    /// A body of kube's own boxed type, as `ClientBuilder::try_from` returns it.
    fn body(chunks: &[&'static str]) -> Box<kube::client::DynBody> {
        let chunks = chunks.to_vec();
        let frames = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c)))));
        Box::new(StreamBody::new(frames))
    }

    async fn read(chunks: &[&'static str], limit: Option<usize>) -> Result<String, String> {
        let mut body = LineLimited { inner: body(chunks), limit, line: 0 }.into_data_stream();
        let mut out = String::new();
        while let Some(chunk) = body.next().await {
            out.push_str(std::str::from_utf8(&chunk.map_err(|e| e.to_string())?).unwrap());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_line_may_span_chunks_up_to_the_limit_but_not_beyond() {
        assert_eq!(read(&["ab", "cd\nef", "gh\n"], Some(4)).await.unwrap(), "abcd\nefgh\n");
        assert!(read(&["ab", "cd", "e\n"], Some(4)).await.unwrap_err().contains("longer than 4 bytes"));
        assert!(read(&["ab\nabcde\nab"], Some(4)).await.unwrap_err().contains("longer than 4 bytes"));
        assert!(read(&["abcd", "abcd"], Some(4)).await.is_err(), "no newline at all");
        assert_eq!(read(&["abcdefgh"], None).await.unwrap(), "abcdefgh", "no limit for lists");
    }

    #[test]
    fn only_watch_requests_are_limited() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(is_watch(&uri("/apis/discovery.k8s.io/v1/namespaces/r/endpointslices?&watch=true&timeoutSeconds=290")));
        assert!(!is_watch(&uri("/apis/discovery.k8s.io/v1/namespaces/r/endpointslices?&limit=500")));
        assert!(!is_watch(&uri("/api/v1/namespaces/r/services?watch=false")));
    }
}
