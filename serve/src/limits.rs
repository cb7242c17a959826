//! Bounds on what a client can hold of a server (SERVE-15..17): connections at once, how
//! long and how large a request head may be, how long a body may pause, how long an
//! unfinished upload lives.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum_server::accept::{Accept, NoDelayAcceptor};
use futures::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Largest request head (request line and headers) accepted; larger is 431 (SERVE-15).
pub const MAX_HEAD_SIZE: usize = 64 << 10;
/// File descriptors kept out of the connection budget (store database, logs, spools).
const RESERVED_FDS: u64 = 64;

/// How much of a server one client may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A new connection must send its first byte, and a request head must arrive in full,
    /// within this time of the connection opening or of the previous answer (else the
    /// connection is closed); a request body may not pause for longer (else 408).
    pub read_timeout: Duration,
    /// An upload no request touched for this long is dropped with its spooled bytes.
    pub upload_timeout: Duration,
    /// Connections served at once; further ones are closed as soon as they are accepted.
    /// Lowered at start when the open-file limit cannot hold two descriptors per connection.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(600),
            max_connections: 4096,
        }
    }
}

impl Limits {
    /// Applies the head size and time limits to the HTTP/1 and HTTP/2 connection builder.
    pub(crate) fn configure(&self, builder: &mut Builder<TokioExecutor>) {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.read_timeout)
            // The read buffer bounds the head: a head that does not fit is answered 431.
            .max_buf_size(MAX_HEAD_SIZE);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD_SIZE as u32)
            .keep_alive_interval(self.read_timeout)
            .keep_alive_timeout(self.read_timeout);
    }

    /// The acceptor that holds connections to [`Limits::max_connections`], raising the
    /// process's soft open-file limit to its hard limit first and lowering the cap to what
    /// that limit can hold (a socket and an open blob per connection).
    pub(crate) fn connection_cap(&self) -> ConnectionCap<NoDelayAcceptor> {
        let fds = raise_open_file_limit();
        let fit = usize::try_from(fds.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
        let cap = self.max_connections.min(fit).max(1);
        if cap < self.max_connections {
            tracing::warn!(
                "serving at most {cap} connections at once, not {}: the open-file limit is {fds}",
                self.max_connections
            );
        }
        ConnectionCap {
            inner: NoDelayAcceptor,
            permits: Arc::new(Semaphore::new(cap)),
            first_byte: self.read_timeout,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Accepts a connection only while fewer than the cap are open, then hands it to the inner
/// acceptor (TCP_NODELAY, TLS); the connection then has the read timeout to send its first
/// byte. hyper's header timeout covers a head once it starts, not the wait for HTTP/1 or
/// HTTP/2 to show, so this deadline closes connections that never send anything.
#[derive(Clone)]
pub(crate) struct ConnectionCap<A> {
    inner: A,
    permits: Arc<Semaphore>,
    first_byte: Duration,
}

impl<A> ConnectionCap<A> {
    /// The same cap and deadline around another acceptor.
    pub(crate) fn around<B>(&self, inner: B) -> ConnectionCap<B> {
        ConnectionCap {
            inner,
            permits: self.permits.clone(),
            first_byte: self.first_byte,
        }
    }
}

impl<A, S> Accept<TcpStream, S> for ConnectionCap<A>
where
    A: Accept<TcpStream, S> + Clone + Send + 'static,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
    S: Send + 'static,
{
    type Stream = Capped<A::Stream>;
    type Service = A::Service;
    type Future = futures::future::BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached: closing a new connection");
            return Box::pin(std::future::ready(Err(io::Error::other(
                "connection limit reached",
            ))));
        };
        let accepted = self.inner.accept(stream, service);
        let first_byte = self.first_byte;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let capped = Capped {
                inner: stream,
                first_byte: Some(Box::pin(tokio::time::sleep(first_byte))),
                _permit: permit,
            };
            Ok((capped, service))
        })
    }
}

/// A connection that counts against the cap until it is dropped, and fails its reads when
/// no byte arrived within the first-byte deadline.
pub(crate) struct Capped<S> {
    inner: S,
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(deadline) = self.first_byte.as_mut() {
            match polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent nothing within the read timeout",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    /// The client sent nothing for the read timeout (408).
    Stalled(Duration),
    /// The connection broke off or the body was malformed.
    Broken(String),
}

impl BodyError {
    /// The answer: 408 for a stall, 400 otherwise, with `code` and `what` the body was for.
    pub(crate) fn answer(&self, code: &'static str, what: &str) -> ApiError {
        match self {
            BodyError::Stalled(t) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                code,
                format!("{what}: the request body sent nothing for {t:?}"),
            ),
            BodyError::Broken(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                code,
                format!("{what}: request body broke off: {e}"),
            ),
        }
    }
}

/// A request body read chunk by chunk, failing when the client pauses longer than `idle`.
pub(crate) struct BodyChunks {
    stream: axum::body::BodyDataStream,
    idle: Duration,
}

impl BodyChunks {
    /// Reads `body`, allowing pauses of at most `idle`.
    pub(crate) fn new(body: Body, idle: Duration) -> Self {
        BodyChunks {
            stream: body.into_data_stream(),
            idle,
        }
    }

    /// The next chunk, `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        match tokio::time::timeout(self.idle, self.stream.next()).await {
            Err(_) => Err(BodyError::Stalled(self.idle)),
            Ok(None) => Ok(None),
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(e))) => Err(BodyError::Broken(e.to_string())),
        }
    }
}
