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
use crate::app_server::token::{KeyError, TokenCodec};
use crate::cluster::{Cluster, Peers};
use crate::config::{Backend, Config};
use crate::device::registry::Registry;
use crate::listener::{Slots, Sockets};
use crate::ops::metrics::{Meter, MeteredStore, Metrics};
use crate::ops::overload::QueueDelay;
use crate::retention::{Retention, TtlTooShort};
use crate::tls::{self, TlsError};
use crate::{listener, retention, routes};

/// Sessions get this long to send their close frames at shutdown.
const SESSION_DRAIN: Duration = Duration::from_secs(5);

/// File descriptors kept back from accepted sockets for the process itself: stdio, the
/// runtime's poller and wakers, the listeners, logs. The store's own come on top
/// ([`store_files`]).
const RESERVED_FILES: u64 = 64;

/// Connections the operator listener may hold at once (scrapers, a dashboard or two).
const OPERATOR_SOCKETS: u64 = 16;

/// Fewer sockets than this left by the open-file limit is a misconfiguration: the
/// server then takes half the limit for sockets and warns.
const MIN_SOCKETS: u64 = 64;

/// File descriptors the store may hold open (and the server's own outgoing
/// connections, which come with the backend).
fn store_files(config: &Config) -> u64 {
    match config.store.backend {
        Backend::Memory => 0,
        // The writer's database, WAL and shared-memory files, and two per reader, on
        // as many blocking threads as read at once.
        Backend::Sqlite => 128,
        // RocksDB's table cache keeps every SST file open by default (no
        // `max_open_files` is set), besides its WAL, manifest and info log.
        Backend::Rocksdb => 1024,
        // The connection pool to each memcached, and one connection to a peer per
        // routed PUT, at most one per request in flight.
        Backend::Memcache => {
            let servers = u64::try_from(config.store.servers.len()).unwrap_or(u64::MAX);
            let inflight = u64::try_from(config.server.max_inflight_requests).unwrap_or(u64::MAX);
            servers
                .saturating_mul(u64::from(config.store.pool_size))
                .saturating_add(inflight)
        }
    }
}

/// The sockets the listeners may hold: the open-file limit less what the process and
/// its store need, one pool for both public sides: a share stays for app servers (a
/// thirty-second, 16 to 512: their connections are few and kept alive) that a device
/// flood cannot take, and half stays for devices, which a flood of app-server
/// connections cannot take; beyond its kept share, either side uses what is free.
fn socket_budget(config: &Config) -> Sockets {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let reserve = RESERVED_FILES
        .saturating_add(OPERATOR_SOCKETS)
        .saturating_add(store_files(config));
    let mut sockets = soft.saturating_sub(reserve);
    if sockets < MIN_SOCKETS {
        sockets = soft / 2;
        tracing::warn!(
            open_files = soft,
            reserve,
            sockets,
            "the open-file limit leaves too few sockets beside the store's reserve: raise it"
        );
    }
    let sockets = usize::try_from(sockets).unwrap_or(usize::MAX);
    let app_server_kept = (sockets / 32).clamp(16, 512).min(sockets / 2);
    let (device, app_server) = Slots::shared(sockets, sockets / 2, app_server_kept);
    Sockets {
        device,
        app_server,
        operator: Slots::new(OPERATOR_SOCKETS as usize),
    }
}

/// The configured limit of device sessions, or most of the device listener's socket
/// budget: a sixty-fourth (8 to 256) stays for health checks and for answering upgrades
/// beyond it with 503.
fn max_connections(configured: usize, device_sockets: usize) -> usize {
    if configured > 0 {
        if configured > device_sockets {
            tracing::warn!(
                max_connections = configured,
                device_sockets,
                "max_connections is more than the open-file limit allows: beyond it, new connections are closed"
            );
        }
        return configured;
    }
    let headroom = (device_sockets / 64).clamp(8, 256).min(device_sockets / 2);
    (device_sockets - headroom).max(1)
}

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
    /// A memcache node lacks a setting every node of a cluster must share.
    #[error("{key} must be set on a memcache node (the same value on every node): {why}")]
    ClusterSetting {
        /// The config key, as `[section] key`.
        key: &'static str,
        /// What goes wrong without it.
        why: &'static str,
    },
    /// `[router] peers` has an entry that is not a network, address or host name.
    #[error("[router] peers: {0}")]
    Peers(String),
    /// `[store] device_ttl` is too short to mean anything.
    #[error(transparent)]
    DeviceTtl(#[from] TtlTooShort),
}

/// The settings a memcache node refuses to start without.
fn check_cluster_settings(config: &Config) -> Result<(), StartError> {
    if config.router.secret.trim().is_empty() {
        return Err(StartError::ClusterSetting {
            key: "[router] secret",
            why: "it signs the requests nodes route to each other",
        });
    }
    if config.server.token_keys.is_empty() {
        return Err(StartError::ClusterSetting {
            key: "[server] token_keys",
            why: "without it each node mints endpoints no other node can open \
                  (`simplepush genkey` makes a key)",
        });
    }
    Ok(())
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
        retention::check(config)?;
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
            Backend::Memcache => {
                check_cluster_settings(config)?;
                Some(bind(config.router.addr)?)
            }
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
                let peers =
                    Peers::from_config(&config.router.peers, addr).map_err(StartError::Peers)?;
                let cluster = Cluster::new(url, &config.router.secret, peers);
                if !cluster.admits_itself() {
                    tracing::warn!(
                        url = cluster.url(),
                        "this node's router URL is outside [router] peers: nodes configured \
                         alike will not route to it (set [router] peers)"
                    );
                }
                Some(cluster)
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
        let sockets = socket_budget(config);
        let metrics = Arc::new(Metrics::new(store.name()));
        metrics.preset();
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, Meter(metrics.clone())));
        let app = Arc::new(App {
            metrics,
            request_ids: AtomicU64::new(1),
            store,
            registry: Registry::new(config.protocol.max_queued_updates),
            tokens: TokenCodec::new(token_keys)?,
            protocol: config.protocol.clone(),
            endpoint_url,
            cors: config.server.cors,
            max_connections: max_connections(config.server.max_connections, sockets.device.cap()),
            sockets,
            inflight: Semaphore::new(config.server.max_inflight_requests),
            queue_delay: Arc::new(QueueDelay::new(config.server.max_queue_delay)),
            shutdown,
            cluster,
            sessions: TaskTracker::new(),
            device_ttl: config.store.device_ttl,
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

    /// Serves until shutdown, with retention sweeping in the background when
    /// `device_ttl` is set; then closes sessions (1001), drains requests, stops
    /// retention and closes the store.
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
        // Every node sweeps, cluster nodes too: memcached forgets by item lifetimes, and
        // a memcache store's sweep is a no-op without I/O.
        let retention = (!app.device_ttl.is_zero()).then(|| {
            let retention = Retention::new(app.store.clone(), app.metrics.clone(), app.device_ttl);
            tokio::spawn(retention.run(shutdown.clone()))
        });
        let router = async {
            if let Some(router) = router {
                listener::serve(
                    router,
                    routes::router_listener(app.clone()),
                    None,
                    app.sockets.app_server.clone(),
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
                app.sockets.device.clone(),
                shutdown.clone()
            ),
            listener::serve(
                endpoint,
                routes::endpoint_listener(app.clone()),
                tls,
                app.sockets.app_server.clone(),
                shutdown.clone()
            ),
            // Never TLS, never CORS: it is for operators on a private address.
            listener::serve(
                admin,
                routes::admin_listener(app.clone()),
                None,
                app.sockets.operator.clone(),
                shutdown.clone()
            ),
            router,
            // Session timers, and at shutdown the signal that closes every session.
            app.registry.keep_time(shutdown.clone()),
        );
        if let Err(error) = sampler.await {
            tracing::error!(%error, "the queue delay sampler failed");
        }
        // Its step in flight ends before the store closes.
        if let Some(retention) = retention
            && let Err(error) = retention.await
        {
            tracing::error!(%error, "the retention task failed");
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
