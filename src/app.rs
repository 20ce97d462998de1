//! Dispatch: a request's [`Route`] decides which part answers it. Errors of
//! the mirror become responses here, in one place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use crate::access_log::{Entry, LoggedBody, UpstreamStatus};
use crate::blob_store::Swept;
use crate::body::{Body, BoxError};
use crate::config::{Settings, StatusPage};
use crate::credential::{ConnCredential, CredentialId, InstanceSecret};
use crate::download::Downloads;
use crate::error::MirrorError;
use crate::health;
use crate::index::Index;
use crate::json_cache::JsonCache;
use crate::metrics::{self, Metrics};
use crate::outcome::{CacheOutcome, Eviction};
use crate::rewrite::{PublicBase, Rewriter};
use crate::router::{self, ArtifactRoute, Route, RouteError};
use crate::status;
use crate::upstream::{ClientInfo, Upstream};

/// Everything a request handler may need, shared by all connections.
pub struct App {
    api_base: String,
    data_dir: PathBuf,
    upstream: Upstream,
    index: Index,
    json: Arc<JsonCache>,
    downloads: Downloads,
    public: PublicBase,
    upstream_base: String,
    metrics: Arc<Metrics>,
    status_page: StatusPage,
    blob_quota: u64,
    prefetch: Option<crate::prefetch::Prefetch>,
    secret: InstanceSecret,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &Settings,
        upstream: Upstream,
        index: Index,
        json: Arc<JsonCache>,
        downloads: Downloads,
        metrics: Arc<Metrics>,
        prefetch: Option<crate::prefetch::Prefetch>,
        secret: InstanceSecret,
    ) -> App {
        App {
            api_base: settings.api_base_path().to_owned(),
            data_dir: settings.data_dir.clone(),
            upstream,
            index,
            json,
            downloads,
            public: PublicBase::from_settings(settings),
            upstream_base: settings.upstream.as_str().trim_end_matches('/').to_owned(),
            metrics,
            status_page: settings.status_page,
            blob_quota: settings.blob_quota_bytes,
            prefetch,
            secret,
        }
    }

    /// The credential of a request on the connection that `held` belongs to.
    pub fn credential(&self, held: &ConnCredential, headers: &http::HeaderMap) -> CredentialId {
        held.of(&self.secret, headers)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn shared_metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Blob fills under way (shutdown waits for them within its grace).
    pub fn fills_in_flight(&self) -> u64 {
        self.downloads.blobs().live().fills_in_flight
    }

    /// See [`BlobStore::seal`](crate::blob_store::BlobStore::seal): only
    /// once the runtime is gone.
    pub fn seal(&self) -> Result<bool, crate::index::IndexError> {
        self.downloads.blobs().seal()
    }

    /// The store's periodic cleanup; blocking (it reads whole trees).
    pub fn housekeep(&self) -> Swept {
        self.downloads.blobs().housekeep()
    }

    pub async fn handle<B>(&self, request: Request<B>, client: ClientInfo) -> Response<LoggedBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let route = router::route(&method, &path, &self.api_base);
        let route_name = route.as_ref().map_or("rejected", Route::name);
        let response = match route {
            Ok(route) => self
                .dispatch(
                    route,
                    request.map(|b| b.map_err(Into::into).boxed()),
                    client.for_route(route_name),
                )
                .await
                .unwrap_or_else(MirrorError::into_response),
            Err(e) => MirrorError::from(e).into_response(),
        };
        let (parts, body) = response.into_parts();
        self.metrics.request(
            route_name,
            parts.extensions.get::<CacheOutcome>().copied(),
            started.elapsed().as_secs_f64(),
        );
        let entry = Entry {
            method,
            route: route_name,
            path,
            peer: client.peer,
            status: parts.status,
            upstream_status: parts.extensions.get::<UpstreamStatus>().map(|s| s.0),
            started,
        };
        // Only blob bytes are counted at body end (served from the store).
        let counted = (route_name == "blob").then(|| self.metrics.clone());
        Response::from_parts(parts, LoggedBody::new(body, entry, counted))
    }

    /// Every arm but the JSON routes' is boxed: an async fn's future is as
    /// large as its largest branch, and the fresh-hit path should not build
    /// and copy the upstream paths' state (see the `handler` bench).
    async fn dispatch(
        &self,
        route: Route,
        request: Request<Body>,
        client: ClientInfo,
    ) -> Result<Response<Body>, MirrorError> {
        match route {
            Route::Alive => Ok(health::alive()),
            Route::Ready => {
                let shared = self.downloads.blobs().shared_state();
                Ok(health::ready(&self.data_dir, &self.index, shared).await)
            }
            Route::Metrics => {
                let format =
                    metrics::Format::negotiate(request.headers().get(http::header::ACCEPT));
                self.metrics
                    .log_dropped_lines(crate::access_log::dropped_lines());
                let text = self.metrics.render(self.downloads.blobs().live(), format);
                let mut response = Response::new(crate::body::full(Bytes::from(text)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(format.content_type()),
                );
                Ok(response)
            }
            Route::Status => {
                if self.status_page == StatusPage::Off {
                    return Err(RouteError::NotFound.into());
                }
                let blobs = self.downloads.blobs();
                let (running, recent) = blobs.fill_views();
                Ok(status::response(&status::Figures {
                    mode: self.status_page,
                    live: blobs.live(),
                    quota: self.blob_quota,
                    totals: self.metrics.totals(),
                    history: self.metrics.history(),
                    lowest_remaining: self.metrics.lowest_remaining(),
                    running,
                    recent,
                }))
            }
            Route::Artifact(
                ref route @ (ArtifactRoute::ListForRepo { .. }
                | ArtifactRoute::ListForRun { .. }
                | ArtifactRoute::Get { .. }),
            ) => self.json.serve(route, request, client).await,
            Route::Artifact(ArtifactRoute::Delete {
                ref repo,
                artifact_id,
            }) => {
                let response = Box::pin(self.upstream.forward(request, client)).await?;
                if response.status() == http::StatusCode::NO_CONTENT {
                    self.json.purge_repo(repo);
                    let blobs = self.downloads.blobs();
                    blobs.unshare(artifact_id);
                    blobs.remove(artifact_id, Eviction::Deleted).await;
                }
                Ok(response)
            }
            Route::Artifact(ArtifactRoute::Download {
                ref repo,
                artifact_id,
            }) => Box::pin(self.downloads.download(repo, artifact_id, request, client)).await,
            Route::Webhook => match &self.prefetch {
                Some(prefetch) => Box::pin(prefetch.webhook(request)).await,
                None => Err(RouteError::NotFound.into()),
            },
            Route::Blob { artifact_id } => {
                Box::pin(self.downloads.serve_blob(artifact_id, request)).await
            }
            Route::Forward if request.method() == http::Method::GET => {
                let (mut parts, body) = request.into_parts();
                let public =
                    self.public
                        .resolve(&parts.headers, parts.uri.authority(), client.tls)?;
                // Uncompressed, so URLs in the body can be rewritten.
                parts.headers.remove(http::header::ACCEPT_ENCODING);
                let forward = self
                    .upstream
                    .forward(Request::from_parts(parts, body), client);
                let response = Box::pin(forward).await?;
                Box::pin(Rewriter::new(&self.upstream_base, &public).forwarded(response)).await
            }
            Route::Forward => Box::pin(self.upstream.forward(request, client)).await,
        }
    }
}
