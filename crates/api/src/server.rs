//! The HTTP server behind every taskstream port: the API's, the schema
//! registry's and each component's `--http`.
//!
//! It is hyper's HTTP/1.1 connection handling under an accept loop of our
//! own, because a public port needs limits `axum::serve` does not offer:
//!
//! - **Header timeout.** A connection must deliver a complete request head
//!   (request line and headers) within [`HttpLimits::header_timeout`] of
//!   opening, or of the first byte of a later request. A slowloris client
//!   that trickles a head, or one that connects and says nothing, is closed.
//! - **Idle timeout.** Between requests a kept-alive connection may wait
//!   [`HttpLimits::idle_timeout`] for the next one.
//! - **Body timeout.** A request body that brings no new bytes for
//!   [`HttpLimits::body_timeout`] ends the request with `408` and closes the
//!   connection; a response the client stops reading for as long closes it.
//! - **Connection limit.** At most [`HttpLimits::max_connections`] are
//!   served at once. Further ones are not accepted: they wait in the
//!   kernel's accept backlog and are served as soon as a held one closes
//!   (which the timeouts above guarantee). Closing them at once instead
//!   would turn away health probes for good while an attacker holds the
//!   slots; waiting lets a probe through within one header or idle timeout.
//! - **Head size.** A request target over [`MAX_URI_BYTES`] answers `414`,
//!   a header section over [`MAX_HEADER_BYTES`] answers `431`, both as error
//!   documents. hyper itself refuses a head over [`MAX_HEAD_BYTES`] or with
//!   more than 100 header fields (`431`), and a request line or header it
//!   cannot parse (`400`): it writes a bare status line with
//!   `content-length: 0` and no body, and closes the connection, before any
//!   of our code runs. (Its own `414`, for targets over 64 KiB, cannot
//!   happen: such a head is over [`MAX_HEAD_BYTES`] first.)
//! - **Panics.** A handler that panics is answered `500` with the port's
//!   error document, and the panic is logged as one `ERROR` line (message
//!   and location, inside the request's span) instead of the default hook's
//!   report.
//! - **Error documents.** Every error response produced below the handlers
//!   (axum's extractor rejections, unknown methods, body limits) is rewritten
//!   into the port's format when it is not JSON already: RFC 7807 problems on
//!   the API, Confluent's `{"error_code", "message"}` on the registry.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The longest request target (path and query) answered normally; longer
/// ones get `414`.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The largest header section (every `name: value` line) answered
/// normally; larger ones get `431`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The most a request head may occupy in hyper's read buffer; past it hyper
/// itself answers a bare `431`. It also bounds the memory one connection
/// can hold while its head arrives.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The longest timeout accepted for any of [`HttpLimits`]' durations.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What the server allows each connection. See the module documentation
/// for what each limit does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a connection's opening, or a later request's first byte, until
    /// its head is complete.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The longest a request body may bring no new bytes, or a client may
    /// leave its response unread.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

impl HttpLimits {
    /// Checks every limit is usable: timeouts above zero and at most
    /// [`MAX_TIMEOUT`], at least one connection.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("header timeout", self.header_timeout),
            ("idle timeout", self.idle_timeout),
            ("body timeout", self.body_timeout),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(format!(
                    "the HTTP {name} must be above 0 and at most {} s; got {value:?}",
                    MAX_TIMEOUT.as_secs()
                ));
            }
        }
        if self.max_connections == 0 {
            return Err("the HTTP connection limit must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Writes a port's error document for a status and a detail a person can
/// read: [`crate::Problem`]s on the API, Confluent's JSON on the registry.
pub type ErrorResponder = fn(StatusCode, String) -> Response;

/// Serves `router` on `listener` within `limits` until `shutdown`
/// resolves; then stops accepting, lets in-flight requests finish and
/// closes idle connections. Errors the server itself answers are written
/// by `errors`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    errors: ErrorResponder,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    limits
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEAD_BYTES)
        // Our own deadlines replace hyper's header timeout (see `Deadlines`).
        .header_read_timeout(None::<Duration>);
    tokio::pin!(shutdown);
    loop {
        // Without a free slot nothing is accepted: new connections wait in
        // the kernel's backlog instead of taking a file descriptor.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        let shared = Arc::new(Mutex::new(Connection {
            phase: Phase::Head(Instant::now()),
            task: None,
        }));
        let io = TokioIo::new(Deadlines::new(stream, Arc::clone(&shared), &limits));
        let service = ConnectionService {
            router: router.clone(),
            shared,
            body_timeout: limits.body_timeout,
            errors,
        };
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Accepting can fail for the one connection (reset before it was
/// accepted) or for the process (out of file descriptors): either way the
/// server carries on, pausing briefly in the second case so it does not spin.
async fn accept_failed(error: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept an HTTP connection; retrying shortly");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection's state shared by its socket (`Deadlines`), its service
/// and its response bodies.
#[derive(Debug)]
struct Connection {
    phase: Phase,
    /// The connection's task, as last seen by its socket: woken when the
    /// connection turns idle, so hyper reads again and the idle deadline
    /// is armed even though no byte arrives.
    task: Option<Waker>,
}

type Shared = Arc<Mutex<Connection>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Connection> {
    // The lock is never held across a panic point that could poison it,
    // but a poisoned state is still a valid one.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a connection is in its request cycle, which decides the deadline
/// on reading from it.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request head, begun at this instant.
    Head(Instant),
    /// A request is being handled or its response written: reads are timed
    /// by the body timeout instead (see `TimedBody`).
    Busy,
    /// Between requests since this instant.
    Idle(Instant),
}

/// A connection's socket, closed with `TimedOut` when its phase's deadline
/// passes while hyper waits to read, or when a write makes no progress for
/// the body timeout.
struct Deadlines {
    stream: TcpStream,
    shared: Shared,
    header_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    read_timer: Pin<Box<Sleep>>,
    write_stalled_until: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
}

impl Deadlines {
    fn new(stream: TcpStream, shared: Shared, limits: &HttpLimits) -> Self {
        let far = Instant::now() + MAX_TIMEOUT;
        Self {
            stream,
            shared,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.body_timeout,
            read_timer: Box::pin(tokio::time::sleep_until(far)),
            write_stalled_until: None,
            write_timer: Box::pin(tokio::time::sleep_until(far)),
        }
    }

    /// Notes the task polling this socket, for [`ResponseBody`]'s wake-up,
    /// and returns the connection's phase.
    fn remember(&self, cx: &Context<'_>) -> Phase {
        let mut shared = lock(&self.shared);
        if !shared
            .task
            .as_ref()
            .is_some_and(|t| t.will_wake(cx.waker()))
        {
            shared.task = Some(cx.waker().clone());
        }
        shared.phase
    }

    /// Polls `timer` towards `deadline`, re-arming it when the deadline moved.
    fn expired(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.write_timeout;
        let deadline = *self
            .write_stalled_until
            .get_or_insert_with(|| Instant::now() + timeout);
        if Self::expired(&mut self.write_timer, deadline, cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading its response",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Deadlines {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut shared = lock(&this.shared);
                    if let Phase::Idle(_) = shared.phase {
                        // The next request's first bytes: its head is now timed.
                        shared.phase = Phase::Head(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let phase = this.remember(cx);
                let (deadline, what) = match phase {
                    Phase::Busy => return Poll::Pending,
                    Phase::Head(since) => (
                        since + this.header_timeout,
                        "the request head did not arrive in time",
                    ),
                    Phase::Idle(since) => (
                        since + this.idle_timeout,
                        "the connection stayed idle too long",
                    ),
                };
                if Self::expired(&mut this.read_timer, deadline, cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Deadlines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.remember(cx);
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.write_stalled(cx),
            ready => {
                this.write_stalled_until = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.remember(cx);
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.write_stalled(cx),
            ready => {
                this.write_stalled_until = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Hands each request of one connection to the router, with the checks
/// and rewrites the module documentation lists.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    shared: Shared,
    body_timeout: Duration,
    errors: ErrorResponder,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        lock(&self.shared).phase = Phase::Busy;
        let stalled = Arc::new(AtomicBool::new(false));
        let body_timeout = self.body_timeout;
        let request = request.map(|body| {
            Body::new(TimedBody {
                inner: body,
                timeout: body_timeout,
                timer: None,
                stalled: Arc::clone(&stalled),
            })
        });
        let router = self.router.clone();
        let errors = self.errors;
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let response = match oversized_head(&request) {
                Some((status, detail)) => errors(status, detail),
                None => match CatchPanic::new(router.oneshot(request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(Panicked) => errors(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        INTERNAL_ERROR_DETAIL.to_owned(),
                    ),
                },
            };
            let mut response = conform(response, errors).await;
            if stalled.load(Ordering::Relaxed) {
                response = errors(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body brought no data for {} s",
                        body_timeout.as_secs_f64()
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| ResponseBody {
                inner: body,
                shared,
            }))
        })
    }
}

/// What a client is told when its request hit a bug.
pub const INTERNAL_ERROR_DETAIL: &str =
    "the server failed to handle the request; it has been logged";

/// `414` or `431` for a head the server will not read further.
fn oversized_head<B>(request: &Request<B>) -> Option<(StatusCode, String)> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some((
            StatusCode::URI_TOO_LONG,
            format!("the request target is {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let headers = header_bytes(request.headers());
    if headers > MAX_HEADER_BYTES {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the headers take {headers} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        ));
    }
    None
}

/// The header section's size as sent: `name: value\r\n` per field.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Error bodies larger than this are not read to be quoted; the status's
/// reason phrase stands in for them.
const QUOTED_ERROR_LIMIT: usize = 4096;

/// An error response that is not a JSON document (axum's plain-text
/// rejections, an empty 405) rewritten by `errors`, keeping its headers
/// (`Allow`, `Retry-After`...) and quoting its text as the detail.
async fn conform(response: Response, errors: ErrorResponder) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, QUOTED_ERROR_LIMIT)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let detail = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned()
    });
    let mut conformed = errors(status, detail);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !conformed.headers().contains_key(name)
        {
            conformed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    conformed
}

/// `application/json` or any `+json` media type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || mime
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

/// A request body that fails when no frame arrives for `timeout`, and says
/// so through `stalled` so the response can be a `408`.
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    stalled: Arc<AtomicBool>,
}

/// A request body stopped bringing data; see [`HttpLimits::body_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("the request body brought no data for {0:?}")]
struct BodyStalled(Duration);

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.stalled.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its connection idle once hyper is done with
/// it, which starts the idle timeout.
pub(crate) struct ResponseBody {
    inner: Body,
    shared: Shared,
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let task = {
            let mut shared = lock(&self.shared);
            if !matches!(shared.phase, Phase::Busy) {
                return;
            }
            shared.phase = Phase::Idle(Instant::now());
            shared.task.clone()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

thread_local! {
    /// Set while a [`CatchPanic`] polls its future on this thread.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

static PANIC_HOOK: Once = Once::new();

/// Replaces the panic hook, once per process, with one that logs a panic
/// caught by [`CatchPanic`] as a single `ERROR` line and leaves every other
/// panic to the hook it replaced.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.try_with(Cell::get).unwrap_or(false) {
                return previous(info);
            }
            let message = info
                .payload_as_str()
                .unwrap_or("(the panic carried no message)");
            let location = info.location().map(ToString::to_string);
            // `?` quotes the message, so a multi-line one stays one line.
            tracing::error!(
                panic = ?message,
                location = location.as_deref().unwrap_or("unknown"),
                "panicked while handling a request"
            );
        }));
    });
}

/// The future panicked; [`CatchPanic`] dropped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panicked;

/// Runs a future, turning a panic while polling it into
/// `Err(Panicked)`. The panic is logged once, as one line (see
/// [`install_panic_hook`]).
pub struct CatchPanic<F> {
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> CatchPanic<F> {
    pub fn new(future: F) -> Self {
        install_panic_hook();
        Self {
            inner: Some(Box::pin(future)),
        }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(Panicked));
        };
        let was_catching = CATCHING.with(|c| c.replace(true));
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx)));
        let outcome = match polled {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                // A future that panicked may panic again while dropped.
                let broken = self.inner.take();
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(broken)));
                Poll::Ready(Err(Panicked))
            }
        };
        CATCHING.with(|c| c.set(was_catching));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised_with_parameters_and_suffixes() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("application/problem+json"));
        assert!(with(
            "application/vnd.schemaregistry.v1+json; charset=utf-8"
        ));
        assert!(!with("text/plain; charset=utf-8"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn limits_outside_their_range_are_refused() {
        assert!(HttpLimits::default().validate().is_ok());
        let zero = HttpLimits {
            idle_timeout: Duration::ZERO,
            ..HttpLimits::default()
        };
        assert!(zero.validate().unwrap_err().contains("idle timeout"));
        let huge = HttpLimits {
            header_timeout: MAX_TIMEOUT + Duration::from_secs(1),
            ..HttpLimits::default()
        };
        assert!(huge.validate().unwrap_err().contains("header timeout"));
        let none = HttpLimits {
            max_connections: 0,
            ..HttpLimits::default()
        };
        assert!(none.validate().is_err());
    }

    #[tokio::test]
    async fn a_panicking_future_becomes_an_error_and_a_quiet_one_its_value() {
        assert_eq!(CatchPanic::new(async { 7 }).await, Ok(7));
        let panicked = CatchPanic::new(async {
            if true {
                panic!("boom");
            }
        })
        .await;
        assert_eq!(panicked, Err(Panicked));
        assert!(!CATCHING.with(Cell::get), "the flag is restored");
    }
}
