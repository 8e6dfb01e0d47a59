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
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
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

/// One side's share of a pool of socket slots (file descriptors for accepted sockets):
/// one slot per open connection. Clones share the same slots.
#[derive(Debug, Clone)]
pub struct Slots {
    pool: Arc<Pool>,
    side: Side,
}

/// Slots shared by up to two sides: each side may hold up to its cap, and both together
/// up to the total, so either side can use what the other leaves idle but never what is
/// kept for the other.
#[derive(Debug)]
struct Pool {
    /// Slots held by each side: side 0 in the low 32 bits, side 1 in the high ones.
    held: AtomicU64,
    total: u32,
    caps: [u32; 2],
}

#[derive(Debug, Clone, Copy)]
enum Side {
    First,
    Second,
}

impl Side {
    fn shift(self) -> u32 {
        match self {
            Side::First => 0,
            Side::Second => 32,
        }
    }
}

impl Pool {
    fn new(total: usize, caps: [usize; 2]) -> Arc<Pool> {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let total = clamp(total);
        Arc::new(Pool {
            held: AtomicU64::new(0),
            total,
            caps: caps.map(|cap| clamp(cap).min(total)),
        })
    }

    fn counts(held: u64) -> [u32; 2] {
        [held as u32, (held >> 32) as u32]
    }
}

impl Slots {
    /// `count` slots of their own.
    pub fn new(count: usize) -> Slots {
        Slots {
            pool: Pool::new(count, [count, 0]),
            side: Side::First,
        }
    }

    /// A pool of `total` slots for two sides, each of which always finds at least
    /// `first_kept` (resp. `second_kept`) slots that the other side cannot take.
    pub fn shared(total: usize, first_kept: usize, second_kept: usize) -> (Slots, Slots) {
        let pool = Pool::new(
            total,
            [
                total.saturating_sub(second_kept),
                total.saturating_sub(first_kept),
            ],
        );
        let first = Slots {
            pool: pool.clone(),
            side: Side::First,
        };
        (
            first,
            Slots {
                pool,
                side: Side::Second,
            },
        )
    }

    /// The most slots this side may hold when the other side holds none.
    pub fn cap(&self) -> usize {
        self.pool.caps[self.side as usize] as usize
    }

    /// A slot, if this side may take one now.
    fn try_acquire(&self) -> Option<Slot> {
        let pool = &self.pool;
        let side = self.side as usize;
        let one = 1u64 << self.side.shift();
        pool.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let counts = Pool::counts(held);
                let room = counts[side] < pool.caps[side]
                    && counts[0].saturating_add(counts[1]) < pool.total;
                room.then_some(held + one)
            })
            .ok()?;
        Some(Slot {
            pool: pool.clone(),
            one,
        })
    }
}

/// A slot held; given back when dropped.
#[derive(Debug)]
struct Slot {
    pool: Arc<Pool>,
    one: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(self.one, Ordering::AcqRel);
    }
}

/// The socket budgets of a server's listeners: devices on one side, app servers (and
/// peers) on the other, drawing on one pool with a share kept for each, so that a flood
/// of either cannot take the other's; operators apart.
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
    _slot: Slot,
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
        let Some(slot) = slots.try_acquire() else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_keeps_its_share_and_may_use_what_the_other_leaves() {
        let (device, app) = Slots::shared(10, 5, 2);
        assert_eq!((device.cap(), app.cap()), (8, 5));
        // Devices alone may take all but the app servers' two.
        let devices: Vec<Slot> = std::iter::from_fn(|| device.try_acquire()).collect();
        assert_eq!(devices.len(), 8);
        // The app servers' two are still there, and no more.
        let apps: Vec<Slot> = std::iter::from_fn(|| app.try_acquire()).collect();
        assert_eq!(apps.len(), 2);
        drop(devices);
        // With the devices gone, app servers may grow to all but the devices' five.
        let more: Vec<Slot> = std::iter::from_fn(|| app.try_acquire()).collect();
        assert_eq!(apps.len() + more.len(), 5);
        // And the devices' five stay free for devices.
        let devices: Vec<Slot> = std::iter::from_fn(|| device.try_acquire()).collect();
        assert_eq!(devices.len(), 5);
    }

    #[test]
    fn slots_never_overshoot_under_contention() {
        let (device, app) = Slots::shared(1000, 100, 100);
        let taken: Vec<Vec<Slot>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let slots = if i % 2 == 0 {
                        device.clone()
                    } else {
                        app.clone()
                    };
                    scope.spawn(move || std::iter::from_fn(|| slots.try_acquire()).collect())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(taken.iter().map(Vec::len).sum::<usize>(), 1000);
        drop(taken);
        assert_eq!(
            Pool::counts(device.pool.held.load(Ordering::Acquire)),
            [0, 0]
        );
    }
}
