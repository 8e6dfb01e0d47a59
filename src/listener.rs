//! Listening sockets and the accept loop: binds with a configurable backlog, serves each
//! HTTP/1.1 connection (with upgrades, optionally over TLS) through warp, survives accept errors such as
//! EMFILE without spinning, and drains connections on shutdown.
//!
//! Every accepted connection holds a [`Slots`] slot from accept until its socket closes
//! (through a TLS handshake, requests, and a websocket after an upgrade), so the
//! listeners together never hold more sockets than the file-descriptor budget allows;
//! the descriptors kept back stay free for the store.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;
use warp::reply::Response;

/// A client must send its request headers within this time (slowloris defence).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight HTTP requests get this long to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Refused connections are logged at most this often per listener (a flood refuses
/// thousands a second).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A share of the process's file descriptors for accepted sockets: one slot per open
/// connection. Clones share the same slots.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    /// `count` slots.
    pub fn new(count: usize) -> Slots {
        Slots(Arc::new(Semaphore::new(count.min(Semaphore::MAX_PERMITS))))
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The socket budgets of a server's listeners: devices on one side, app servers (and
/// peers) on the other, operators apart, so that a flood of either cannot take the other's.
#[derive(Debug, Clone)]
pub struct Sockets {
    /// The websocket listener's connections, upgraded or not.
    pub device: Slots,
    /// The endpoint and node-to-node listeners' connections.
    pub app_server: Slots,
    /// The operator listener's connections: a few of its own, so that a flood of either
    /// public side leaves operators their metrics and dashboard.
    pub operator: Slots,
}

/// An accepted connection and its slot, given back when the socket closes.
struct Counted<S> {
    io: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Binds `addr` with the given listen backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves `filter` on `listener` until `shutdown`, then lets in-flight requests finish.
/// With `tls`, every connection is a TLS handshake first. Each connection holds one of
/// `slots` while its socket is open; with none free, a new connection is closed at once.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    tls: Option<TlsAcceptor>,
    slots: Slots,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = warp::service(filter);
    let connections = TaskTracker::new();
    let mut warned: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Per-connection errors (reset before accept) are not worth a pause;
                    // resource exhaustion is, so the loop never spins.
                    if !matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        // Closed at once rather than left in the backlog: the backlog keeps draining,
        // and the client learns now instead of after its connect timeout.
        let Ok(slot) = slots.0.clone().try_acquire_owned() else {
            drop(stream);
            let now = Instant::now();
            if warned.is_none_or(|at| now - at >= WARN_EVERY) {
                warned = Some(now);
                let addr = listener.local_addr().ok();
                tracing::warn!(?addr, "socket budget full: closing new connections");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = Counted {
            io: stream,
            _slot: slot,
        };
        let service = TowerToHyperService::new(service.clone());
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, service, shutdown).await,
                Some(tls) => {
                    // The handshake shares the header deadline: a silent client costs
                    // one timeout, not a task forever.
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service, shutdown).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, connections.wait()).await;
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends or, at shutdown,
/// until its in-flight request is answered.
async fn serve_connection<I, S>(io: I, service: S, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "http connection ended with an error");
    }
}
