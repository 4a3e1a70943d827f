//! The HTTP/1.1 accept and serve loop, and the write-stall timeout.
//!
//! Each accepted connection is served by hyper's HTTP/1 connection directly, not by
//! `axum::serve`: axum goes through hyper-util's version-detecting builder, which reads the
//! first bytes of every connection into a side buffer and hands them back to hyper first,
//! so hyper's read buffer always grows once, from 8 KiB to 16 KiB, and keeps that size for
//! the life of the connection (most of what an idle SSE bridge cost; see
//! `docs/benchmarks.md`). The app serves HTTP/1.1 only (axum's `http2` feature is off), so
//! the detection bought nothing.
//!
//! This workspace builds hyper with a patch (`vendor/README.md`): a connection that waits
//! (between requests, or behind a streaming response) holds no read buffer, and the
//! response-head buffer is only as big as the heads it wrote. Upstream hyper keeps 8 KiB
//! of each for the connection's life. The tests at the bottom of this file measure it.
//!
//! Every connection's socket is wrapped in [`StallGuard`]: a write that makes no progress
//! for the configured timeout (`APPKIT_SSE_WRITE_TIMEOUT_MS`) fails, so hyper closes the
//! connection and drops the response body. For an SSE bridge that drops its guard, which
//! counts as the client leaving (the disconnect grace starts). A client that stops reading
//! therefore costs at most hyper's bounded write queue plus the kernel's socket buffers,
//! for at most the timeout.

use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, error, warn};

use crate::stream::IDEMPOTENCY_KEY_HEADER;

/// How the connections are served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    /// A write that makes no progress for this long fails and the connection closes.
    pub(crate) write_timeout: Duration,
}

/// Accepts connections on `listener` and serves `router` on each, until `close` is
/// cancelled; then stops accepting, lets every connection finish its in-flight response
/// (hyper's graceful shutdown: idle keep-alive connections close at once) and returns when
/// all are gone.
///
/// # Errors
///
/// None today (accept errors are logged and retried); the `io::Result` is what the
/// shutdown sequence awaits.
///
/// # Cancellation safety
///
/// Not cancellation safe: dropping it drops the listener, and the connections already
/// accepted keep running on their own tasks.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    close: CancellationToken,
) -> io::Result<()> {
    // `with_state(())` once turns every handler into a `Route` now, so each connection
    // (and request) gets a cheap clone instead of rebuilding the route table.
    let router = router.with_state(());
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = close.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e, &close).await;
                continue;
            }
        };
        // The task-local wraps the connection's future directly: an async fn around it
        // would keep a second slot the size of hyper's connection in every task.
        connections.spawn(TASK_KEY.scope(
            RefCell::new(None),
            serve_connection(stream, peer, router.clone(), options, close.clone()),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection until it ends, or gracefully closes it once `close` is
/// cancelled.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    options: ServeOptions,
    close: CancellationToken,
) {
    let io = TokioIo::new(StallGuard::new(stream, options.write_timeout, peer));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = router.clone().oneshot(request);
        // Boxed: hyper keeps a slot the size of this future for the whole connection
        // (its in-flight request), so an unboxed router future would cost every idle
        // SSE bridge its full size (~650 bytes); boxed, it is freed once the response
        // head is out.
        let response: BoxFuture<'static, Result<axum::response::Response, Infallible>> =
            Box::pin(async move {
                let response = response.await;
                if let Ok(response) = &response
                    && let Some(key) = response.headers().get(IDEMPOTENCY_KEY_HEADER)
                {
                    remember_task_key(key);
                }
                response
            });
        response
    });
    let mut conn = pin!(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = close.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A failed `accept`: per-connection errors are skipped; anything else (for example
/// EMFILE, out of file descriptors) is logged and retried after a second, or at once when
/// the server is closing.
async fn accept_failed(e: &io::Error, close: &CancellationToken) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    error!(error = %e, "accept failed; retrying in 1 s");
    tokio::select! {
        () = close.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

tokio::task_local! {
    /// The task key of the last SSE bridge this connection served (its response's
    /// idempotency-key header), for the stall warning; each connection's task has its
    /// own. A task-local rather than a shared cell: hyper polls the service's futures and
    /// the socket in the connection's own task, and a per-connection allocation would be
    /// paid by every idle bridge.
    static TASK_KEY: RefCell<Option<HeaderValue>>;
}

fn remember_task_key(key: &HeaderValue) {
    let _ = TASK_KEY.try_with(|slot| *slot.borrow_mut() = Some(key.clone()));
}

fn task_key() -> Option<HeaderValue> {
    TASK_KEY
        .try_with(|slot| slot.borrow().clone())
        .ok()
        .flatten()
}

/// A socket whose writes fail with [`io::ErrorKind::TimedOut`] once one has made no
/// progress for `timeout` (the peer stopped reading and the kernel's send buffer is full).
///
/// No timer is allocated until a write first blocks (an idle bridge never has one); from
/// then on the connection keeps it, re-armed at each later stall. Only a write that moves
/// bytes counts as progress.
pub(crate) struct StallGuard {
    stream: TcpStream,
    timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
    peer: SocketAddr,
}

impl fmt::Debug for StallGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StallGuard")
            .field("peer", &self.peer)
            .field("timeout", &self.timeout)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl StallGuard {
    fn new(stream: TcpStream, timeout: Duration, peer: SocketAddr) -> Self {
        Self {
            stream,
            timeout,
            stall: None,
            armed: false,
            peer,
        }
    }

    /// Passes a finished write through (progress: disarm); on `Pending`, arms the stall
    /// timer if it is not armed and fails the write once it has fired.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.stall {
                Some(stall) => stall.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(stall) = self.stall.as_mut() else {
            return Poll::Pending;
        };
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.armed = false;
        let ms = self.timeout.as_millis();
        match task_key() {
            Some(key) => warn!(
                task.key = %String::from_utf8_lossy(key.as_bytes()),
                peer = %self.peer,
                "closing connection: the client read nothing for {ms} ms (APPKIT_SSE_WRITE_TIMEOUT_MS)"
            ),
            None => warn!(
                peer = %self.peer,
                "closing connection: the client read nothing for {ms} ms (APPKIT_SSE_WRITE_TIMEOUT_MS)"
            ),
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no write progress for {ms} ms"),
        )))
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.check(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TCP socket has nothing to flush: its `Ready` says nothing about progress, so
        // it neither arms nor disarms the stall timer.
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// jemalloc, as the server binary runs with: its per-thread counters say what a test
    /// on a current-thread runtime (server and clients on one thread) holds.
    #[global_allocator]
    static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// Bytes this thread has allocated minus those it has freed.
    fn held() -> i64 {
        use tikv_jemalloc_ctl::thread::{allocatedp, deallocatedp};
        let allocated = allocatedp::read().expect("thread.allocatedp").get();
        let freed = deallocatedp::read().expect("thread.deallocatedp").get();
        i64::try_from(allocated).unwrap() - i64::try_from(freed).unwrap()
    }

    /// Sends `request` on a new connection and reads until the response ends with `tail`.
    async fn connect_and_read(addr: SocketAddr, request: &[u8], tail: &[u8]) -> TcpStream {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(request).await.unwrap();
        let mut seen = [0u8; 1024];
        let mut len = 0;
        while !seen[..len].ends_with(tail) {
            let n = client.read(&mut seen[len..]).await.unwrap();
            assert!(
                n > 0,
                "closed after {:?}",
                String::from_utf8_lossy(&seen[..len])
            );
            len += n;
        }
        client
    }

    /// What the server holds for an idle connection after `request`, per connection: the
    /// growth of this thread's heap once `CONNECTIONS` clients got their response,
    /// waiting (up to a deadline) for the server to go back to reading each socket.
    async fn held_per_idle_connection(request: &[u8], tail: &[u8]) -> i64 {
        const CONNECTIONS: i64 = 64;
        const CHUNK: &[u8] = b"data: x\n\n";
        let router = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/stream",
                get(|| async {
                    let first = futures_util::stream::once(async {
                        Ok::<_, Infallible>(Bytes::from_static(CHUNK))
                    });
                    Body::from_stream(first.chain(futures_util::stream::pending()))
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let close = CancellationToken::new();
        let options = ServeOptions {
            write_timeout: Duration::from_secs(60),
        };
        let server = tokio::spawn(serve(listener, router, options, close.clone()));
        // One connection first, so what is allocated once (the router's clone, tokio's
        // registration pages) is not counted.
        drop(connect_and_read(addr, request, tail).await);
        let mut clients = Vec::with_capacity(usize::try_from(CONNECTIONS).unwrap());
        let before = held();
        for _ in 0..CONNECTIONS {
            clients.push(connect_and_read(addr, request, tail).await);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut per_connection = (held() - before) / CONNECTIONS;
        // hyper's buffer is freed when its connection's read finds nothing.
        while per_connection >= IDLE_CONNECTION_BYTES && Instant::now() < deadline {
            tokio::task::yield_now().await;
            per_connection = (held() - before) / CONNECTIONS;
        }
        close.cancel();
        drop(clients);
        server.await.unwrap().unwrap();
        per_connection
    }

    /// Less than one of the 8 KiB buffers upstream hyper keeps for a connection's life,
    /// one to read into and one for response heads (this includes the client's socket).
    const IDLE_CONNECTION_BYTES: i64 = 8 * 1024;

    #[tokio::test]
    async fn a_keep_alive_connection_between_requests_holds_no_http_buffer() {
        let held =
            held_per_idle_connection(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n", b"hello").await;
        assert!(
            held < IDLE_CONNECTION_BYTES,
            "{held} bytes per idle keep-alive connection (is the vendored hyper patched?)"
        );
    }

    #[tokio::test]
    async fn a_streaming_response_that_waits_holds_no_http_buffer() {
        let held = held_per_idle_connection(
            b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n",
            b"data: x\n\n\r\n",
        )
        .await;
        assert!(
            held < IDLE_CONNECTION_BYTES,
            "{held} bytes per waiting streaming connection (is the vendored hyper patched?)"
        );
    }

    async fn pair(timeout: Duration) -> (StallGuard, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (StallGuard::new(server, timeout, peer), client)
    }

    /// Writes until a write has been pending for the timeout; returns the bytes written.
    async fn write_until_error(guard: &mut StallGuard) -> (u64, io::Error) {
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0u64;
        loop {
            match guard.write(&chunk).await {
                Ok(n) => written += n as u64,
                Err(e) => return (written, e),
            }
        }
    }

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_timeout() {
        let timeout = Duration::from_millis(200);
        let (mut guard, _client) = pair(timeout).await;
        let started = std::time::Instant::now();
        let (written, e) = write_until_error(&mut guard).await;
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(written > 0, "the socket buffers took nothing");
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        let (mut guard, mut client) = pair(Duration::from_secs(1)).await;
        let total = 4 * 1024 * 1024usize;
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut read = 0;
            while read < total {
                // Slower than the writer, but never idle for the timeout.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0);
                read += n;
            }
            read
        });
        let chunk = vec![b'y'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = (total - sent).min(chunk.len());
            guard.write_all(&chunk[..n]).await.unwrap();
            sent += n;
        }
        guard.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), total);
        assert!(!guard.armed);
    }

    #[tokio::test]
    async fn the_timer_is_only_allocated_at_a_stall() {
        let (mut guard, mut client) = pair(Duration::from_secs(60)).await;
        guard.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert!(guard.stall.is_none());
        assert!(guard.stream.is_write_vectored());
    }
}
