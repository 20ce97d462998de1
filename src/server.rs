//! Listening: accepts connections, speaks HTTP/1.1 and h2c to clients,
//! enforces the request-head limit (hyper answers 431 past it) and shuts
//! down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

mod guard;

use guard::{ConnState, Guarded, Limits, Tracked};

use crate::app::App;
use crate::blob_store::{BlobStore, StoreLimits};
use crate::config::Settings;
use crate::credential::{ConnCredential, CredentialId, InstanceSecret};
use crate::download::Downloads;
use crate::index::{Index, IndexOpenError};
use crate::json_cache::JsonCache;
use crate::metrics::Metrics;
use crate::private;
use crate::rewrite::PublicBase;
use crate::upstream::{BlobFetcher, ClientInfo, Upstream, UpstreamSetupError};

/// Time a client gets to finish the TLS handshake.
/// Answers a connection past `max_connections` with a 503 and closes it,
/// within a second whatever the client does.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = crate::error::error_body("The mirror is at its connection limit; retry shortly");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n\
         content-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Index(#[from] IndexOpenError),
    #[error("instance secret {path}: {source}")]
    Secret { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::ServerTlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("prefetch: {0}")]
    Prefetch(#[from] crate::prefetch::PrefetchSetupError),
    #[error("shared_store: {0}")]
    SharedStore(#[from] object_store::Error),
}

pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    max_header_bytes: usize,
    max_connections: usize,
    limits: Limits,
    grace: Duration,
    housekeeping_every: Duration,
}

impl Server {
    /// Prepares the data dir, opens the index, builds the upstream client
    /// and binds the listener: every start-up failure surfaces here, before
    /// the first connection is accepted.
    pub async fn bind(settings: &Settings) -> Result<Server, StartError> {
        let data_dir = settings.data_dir.clone();
        // A data dir an older version made 0755/0644 is narrowed first.
        let tightened = {
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || {
                private::create_dir_all(&dir).map(|()| private::tighten(&dir))
            })
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|source| StartError::DataDir {
                path: data_dir.clone(),
                source,
            })?
        };
        if tightened.changed > 0 {
            tracing::info!(
                entries = tightened.changed,
                "data dir made private to its owner"
            );
        }
        if let Some(error) = tightened.first_error {
            tracing::warn!(entries = tightened.failed, %error, "data dir entries left readable by others");
        }
        let index_dir = data_dir.join("index");
        let cache = settings.index_cache_bytes;
        let index = tokio::task::spawn_blocking(move || Index::open(&index_dir, cache))
            .await
            .map_err(|e| StartError::DataDir {
                path: data_dir.clone(),
                source: io::Error::other(e),
            })??;
        let secret_path = settings.secret_path();
        let secret =
            InstanceSecret::load_or_create(&secret_path).map_err(|source| StartError::Secret {
                path: secret_path,
                source,
            })?;
        let metrics = Arc::new(Metrics::new());
        let upstream = Upstream::new(settings, metrics.clone())?;
        let blob_store = {
            let (dir, index) = (settings.data_dir.clone(), index.clone());
            let fetcher = BlobFetcher::new(settings, metrics.clone())?;
            let limits = StoreLimits {
                quota: settings.blob_quota_bytes,
                max_blob: settings.max_blob_bytes,
                linger: settings.blob_url_ttl.0,
            };
            let metrics = metrics.clone();
            tokio::task::spawn_blocking(move || {
                BlobStore::open(&dir, index, fetcher, limits, metrics).map(|(store, _)| store)
            })
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|source| StartError::DataDir {
                path: settings.data_dir.clone(),
                source,
            })?
        };
        let mut blob_store = blob_store;
        if let Some(shared) = &settings.shared_store {
            let client = crate::blob_store::shared::client::connect(shared)?;
            blob_store.share_with(crate::blob_store::shared::SharedTier::new(
                client,
                shared.prefix().clone(),
                metrics.shared_store().clone(),
            ));
        }
        let blob_store = Arc::new(blob_store);
        let json = Arc::new(JsonCache::new(
            settings,
            upstream.clone(),
            index.clone(),
            blob_store.clone(),
        ));
        let prefetch = crate::prefetch::Prefetch::start(
            settings,
            upstream.clone(),
            blob_store.clone(),
            metrics.prefetch().clone(),
        )
        .await?;
        let downloads = Downloads::new(
            settings,
            upstream.clone(),
            json.clone(),
            blob_store,
            index.clone(),
            secret.clone(),
            PublicBase::from_settings(settings),
        );
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(Arc::new(
                crate::tls::server_config(cert, key)?,
            ))),
            _ => None,
        };
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Server {
            listener,
            tls,
            app: Arc::new(App::new(
                settings, upstream, index, json, downloads, metrics, prefetch, secret,
            )),
            max_header_bytes: settings.max_header_bytes,
            max_connections: settings.max_connections,
            limits: Limits {
                header_read: settings.header_read_timeout.0,
                idle: settings.idle_timeout.0,
            },
            grace: settings.shutdown_grace.0,
            housekeeping_every: settings.housekeeping_interval.0,
        })
    }

    /// The request handler, for benchmarks that measure it without sockets.
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives the
    /// open connections the grace period to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Header-read and idle limits are the connection guard's (one timer
        // per connection, and a 408), not hyper's per-request timer.
        builder
            .http1()
            .header_read_timeout(None)
            .max_buf_size(self.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        // Each connection holds a receiver: a send asks them all to finish,
        // and `closed()` says they have.
        let (stop, _) = watch::channel(());
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let housekeeping = tokio::spawn(housekeeping(
            Arc::downgrade(&self.app),
            self.housekeeping_every,
        ));
        let sampler = tokio::spawn(crate::status::sample_every_minute(Arc::downgrade(
            self.app.shared_metrics(),
        )));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = self.max_connections, "connection refused: max_connections reached");
                if self.tls.is_none() {
                    tokio::spawn(refuse(stream));
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let app = self.app.clone();
            let client = ClientInfo {
                peer: peer.ip(),
                tls: self.tls.is_some(),
                route: "",
                credential: CredentialId::Anonymous,
            };
            let state = ConnState::new();
            let service = {
                let state = state.clone();
                let held = ConnCredential::default();
                service_fn(move |request: Request<Incoming>| {
                    let client = ClientInfo {
                        credential: app.credential(&held, request.headers()),
                        ..client
                    };
                    let app = app.clone();
                    let in_flight = state.begin();
                    async move {
                        let response = app.handle(request, client).await;
                        Ok::<_, Infallible>(response.map(|b| Tracked::new(b, in_flight)))
                    }
                })
            };
            let limits = self.limits;
            match &self.tls {
                None => {
                    let io = Guarded::new(stream, state.clone(), limits, false);
                    let conn = builder
                        .serve_connection(TokioIo::new(io), service)
                        .into_owned();
                    let stop = stop.subscribe();
                    tokio::spawn(async move {
                        drive(conn, stop, &state, limits.header_read, peer).await;
                        drop(slot);
                    });
                }
                Some(acceptor) => {
                    // The handshake runs in the connection's task, so a slow
                    // client never holds up accepting others. Connections
                    // still in their handshake at shutdown are dropped.
                    let (acceptor, builder) = (acceptor.clone(), builder.clone());
                    let stop = stop.subscribe();
                    tokio::spawn(async move {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = Guarded::new(stream, state.clone(), limits, h2);
                        let conn = builder.serve_connection(TokioIo::new(io), service);
                        drive(conn, stop, &state, limits.header_read, peer).await;
                        drop(slot);
                    });
                }
            }
        }
        drop(self.listener);
        housekeeping.abort();
        sampler.abort();
        tracing::info!(grace = ?self.grace, "shutting down: no new connections");
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = stop.send(());
        tokio::select! {
            () = stop.closed() => tracing::info!("all connections finished"),
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("grace period over; closing the remaining connections");
            }
        }
        // Fills no client waits for any more may still finish within the
        // grace period; past it they are dropped with the runtime, and their
        // partial files in tmp/ are cleared at the next start.
        while self.app.fills_in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    fills = self.app.fills_in_flight(),
                    "grace period over; unfinished fills discarded"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = self.app.index().flush().await {
            tracing::error!(error = %e, "index flush failed");
        }
    }
}

/// Serves one connection to its end. Its graceful shutdown (GOAWAY on
/// HTTP/2, close after the current response on HTTP/1.1) starts when the
/// server stops, bounded by the grace period, or when the guard finds an
/// HTTP/2 connection past its header-read or idle limit; then the client
/// gets `linger` to finish (it must answer the GOAWAY's PING before hyper
/// closes), so one that ignores the GOAWAY cannot hold the connection.
async fn drive<C>(
    conn: C,
    mut stop: watch::Receiver<()>,
    state: &ConnState,
    linger: Duration,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            Some(conn.as_mut().await)
        }
        () = state.goaway_asked() => {
            tracing::debug!(%peer, "HTTP/2 connection past its time limit: GOAWAY");
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(linger, conn.as_mut()).await.ok()
        }
    };
    if let Some(Err(e)) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Runs the store's housekeeping every `period` (`housekeeping_interval`) on
/// the blocking pool (it reads whole index trees). Holds the app weakly, so a
/// stopped server releases its index even while this task is winding down.
async fn housekeeping(app: Weak<App>, period: Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and a start has just reconciled the store.
    every.tick().await;
    loop {
        every.tick().await;
        let Some(app) = app.upgrade() else { return };
        match tokio::task::spawn_blocking(move || app.housekeep()).await {
            Ok(swept) if !swept.is_empty() => tracing::info!(
                expired_blobs = swept.expired.len(),
                evicted_blobs = swept.evicted.len(),
                expired_facts = swept.facts.len(),
                unused_grants = swept.grants.len(),
                "housekeeping"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "housekeeping failed"),
        }
    }
}
