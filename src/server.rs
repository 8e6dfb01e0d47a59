//! A running server: binds the listeners, serves devices and app servers until told to
//! shut down, then closes every socket with 1001 and releases the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use simplepush_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::cluster::Cluster;
use crate::config::{Backend, Config};
use crate::metrics::{MeteredStore, Metrics};
use crate::overload::QueueDelay;
use crate::registry::Registry;
use crate::tls::{self, TlsError};
use crate::token::{KeyError, TokenCodec};
use crate::{listener, routes};

/// Sessions get this long to send their close frames at shutdown.
const SESSION_DRAIN: Duration = Duration::from_secs(5);

/// File descriptors kept back from device sockets: listeners, store files, requests.
const RESERVED_FILES: u64 = 256;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The token keys are unusable.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The configured socket limit, or one derived from the open-file limit.
fn max_connections(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let usable = soft.saturating_sub(RESERVED_FILES).max(64);
    usize::try_from(usable).unwrap_or(usize::MAX)
}

/// A server with its listeners bound, ready to [`Server::run`].
pub struct Server {
    app: Arc<App>,
    ws: TcpListener,
    endpoint: TcpListener,
    /// The operator listener (metrics, dashboard, detailed health): plain HTTP.
    admin: TcpListener,
    /// The router listener, on cluster nodes.
    router: Option<TcpListener>,
    /// TLS for the ws and endpoint listeners, when configured.
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Binds the listeners. `token_keys` are the resolved keys (see
    /// [`crate::store::token_keys`]); `shutdown` stops the server when cancelled.
    pub fn bind(
        config: &Config,
        store: Arc<dyn Store>,
        token_keys: &[String],
        shutdown: CancellationToken,
    ) -> Result<Server, StartError> {
        let bind = |addr: SocketAddr| {
            listener::bind(addr, config.server.backlog)
                .map_err(|source| StartError::Bind { addr, source })
        };
        let tls = tls::acceptor(
            config.server.tls_cert.as_deref(),
            config.server.tls_key.as_deref(),
        )?;
        let ws = bind(config.server.ws_addr)?;
        let endpoint = bind(config.server.endpoint_addr)?;
        let admin = bind(config.server.admin_addr)?;
        let endpoint_port = endpoint
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.server.endpoint_addr,
                source,
            })?
            .port();
        // Nodes sharing memcached form a cluster and route to each other.
        let router = match config.store.backend {
            Backend::Memcache => Some(bind(config.router.addr)?),
            _ => None,
        };
        let cluster = match &router {
            Some(listener) => {
                let addr = listener.local_addr().map_err(|source| StartError::Bind {
                    addr: config.router.addr,
                    source,
                })?;
                let url = config
                    .router
                    .url
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}"));
                if config.router.secret.is_empty() {
                    tracing::warn!(
                        "[router] secret is empty: anyone who reaches the router listener can route"
                    );
                }
                Some(Cluster::new(url, config.router.secret.clone()))
            }
            None => None,
        };
        let endpoint_url = config
            .server
            .endpoint_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://localhost:{endpoint_port}")
            })
            .trim_end_matches('/')
            .to_owned();
        let metrics = Arc::new(Metrics::new(store.name()));
        metrics.preset();
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, metrics.clone()));
        let app = Arc::new(App {
            metrics,
            request_ids: AtomicU64::new(1),
            store,
            registry: Registry::new(config.protocol.max_queued_updates),
            tokens: TokenCodec::new(token_keys)?,
            protocol: config.protocol.clone(),
            endpoint_url,
            cors: config.server.cors,
            max_connections: max_connections(config.server.max_connections),
            inflight: Semaphore::new(config.server.max_inflight_requests),
            queue_delay: Arc::new(QueueDelay::new(config.server.max_queue_delay)),
            shutdown,
            cluster,
            sessions: TaskTracker::new(),
        });
        Ok(Server {
            app,
            ws,
            endpoint,
            admin,
            router,
            tls,
        })
    }

    /// Where devices connect.
    pub fn ws_addr(&self) -> std::io::Result<SocketAddr> {
        self.ws.local_addr()
    }

    /// Where app servers send updates.
    pub fn endpoint_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Where operators read metrics, the dashboard and detailed health.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Where peers route to this node, on cluster nodes.
    pub fn router_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.router.as_ref().map(TcpListener::local_addr)
    }

    /// The base of pushEndpoints this server mints.
    pub fn endpoint_url(&self) -> &str {
        &self.app.endpoint_url
    }

    /// Serves until shutdown; then closes sessions (1001), drains requests and closes
    /// the store.
    pub async fn run(self) {
        let Server {
            app,
            ws,
            endpoint,
            admin,
            router,
            tls,
        } = self;
        let shutdown = app.shutdown.clone();
        // Its own task, so that it waits in the run queue like any request does.
        let sampler = tokio::spawn({
            let (queue_delay, shutdown) = (app.queue_delay.clone(), shutdown.clone());
            async move { queue_delay.run(shutdown).await }
        });
        let router = async {
            if let Some(router) = router {
                listener::serve(
                    router,
                    routes::router_listener(app.clone()),
                    None,
                    shutdown.clone(),
                )
                .await;
            }
        };
        tokio::join!(
            listener::serve(
                ws,
                routes::ws_listener(app.clone()),
                tls.clone(),
                shutdown.clone()
            ),
            listener::serve(
                endpoint,
                routes::endpoint_listener(app.clone()),
                tls,
                shutdown.clone()
            ),
            // Never TLS, never CORS: it is for operators on a private address.
            listener::serve(
                admin,
                routes::admin_listener(app.clone()),
                None,
                shutdown.clone()
            ),
            router,
            // Session timers, and at shutdown the signal that closes every session.
            app.registry.keep_time(shutdown.clone()),
        );
        if let Err(error) = sampler.await {
            tracing::error!(%error, "the queue delay sampler failed");
        }
        app.sessions.close();
        if tokio::time::timeout(SESSION_DRAIN, app.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close in time");
        }
        if let Err(error) = app.store.close().await {
            tracing::error!(%error, "closing the store failed");
        }
    }
}
