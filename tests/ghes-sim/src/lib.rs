//! A test double of the GitHub Enterprise Server (3.19) REST API's Actions
//! artifacts endpoints, plus the blob storage host its download redirects
//! point at.
//!
//! It exists so the mirror's tests, benches and demo can run against
//! something that behaves like GHES where it matters to a caching proxy:
//! per-token ETags and 304s that cost no rate limit, `Link` pagination in the
//! `/repositories/{id}` form, 404 (not 403) for private repositories,
//! short-lived signed redirects to a host that rejects `Authorization`, Range
//! requests, and injectable latency, failures and cut connections. For
//! prefetch it also has completed workflow runs (a runs list with ETags and
//! `X-Poll-Interval`), signed `workflow_run` webhook deliveries when a run
//! completes ([`Sim::complete_run`]), and a GitHub App's installation-token
//! endpoint that checks the App's RS256 JWT.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = ghes_sim::Sim::start(ghes_sim::SimConfig::default()).await?;
//! println!("GHES at {}", sim.api_base());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod blob;
pub mod fixtures;
mod knobs;
mod routes;
mod runs;
mod server;
mod state;
mod store;
mod util;
mod zip;

#[cfg(test)]
mod tests;

pub use knobs::Knobs;
pub use runs::{signature, Delivery, Run};
pub use store::{Artifact, NewArtifact};

use bytes::Bytes;
use state::State;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use util::lock;

/// How to start a [`Sim`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// API listener; default `127.0.0.1:0` (any free port).
    pub api_addr: SocketAddr,
    /// Blob storage listener, a separate host like GHES's blob storage;
    /// default `127.0.0.1:0`.
    pub blob_addr: SocketAddr,
    /// How long a signed blob URL stays valid; default 60 s (GitHub: ~1 min).
    /// Zero makes every URL already expired.
    pub link_ttl: Duration,
    /// Requests per token per hour; default 5000. Anonymous callers share
    /// one bucket of `min(60, rate_limit)`.
    pub rate_limit: u32,
    /// Populate the fixture repositories (see [`fixtures`]); default true.
    pub seed_artifacts: bool,
    /// Host name to put in the URLs the simulator hands out (API base,
    /// `Link`, artifact URLs, blob redirects) instead of the listeners' IP
    /// addresses; the ports stay the bound ones. For clients that reach the
    /// simulator by name, e.g. a compose service. Default `None`: the bound
    /// addresses, as tests expect.
    pub advertise_host: Option<String>,
    /// Serve both listeners over TLS (HTTP/2 or HTTP/1.1 by ALPN) with this
    /// identity, as a real GHES does; every URL handed out is then https.
    /// Default `None`: plain HTTP (and h2c).
    pub tls: Option<TlsIdentity>,
}

/// A certificate (DER, e.g. from rcgen), its PKCS#8 private key (DER), and
/// whether ALPN offers h2 (else only http/1.1).
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub h2: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        SimConfig {
            api_addr: any,
            blob_addr: any,
            link_ttl: Duration::from_secs(60),
            rate_limit: 5000,
            seed_artifacts: true,
            advertise_host: None,
            tls: None,
        }
    }
}

/// What the simulator has seen since start (or the last reset).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// API requests by route; every request counts, whatever its answer.
    pub list_repo: u64,
    pub list_run: u64,
    /// `GET …/actions/runs`.
    pub list_runs: u64,
    /// `POST /app/installations/{id}/access_tokens`, whatever the answer.
    pub app_token_requests: u64,
    /// Installation tokens handed out (201 answers).
    pub app_tokens_minted: u64,
    pub get: u64,
    pub delete: u64,
    pub download: u64,
    /// Meta, repo, markdown and unknown routes.
    pub other: u64,
    /// All requests on the API listener.
    pub api_requests: u64,
    /// 304 answers.
    pub not_modified: u64,
    /// GET requests on the blob listener (HEAD not counted), whatever the answer.
    pub blob_gets: u64,
    /// Zip body bytes the blob listener handed to the connection (error
    /// bodies not included).
    pub blob_bytes: u64,
    /// Rate-limit units spent in the current window: key "anonymous",
    /// "admin", "reader" or "outsider" (present, possibly 0, once the sim
    /// answered a request for that identity).
    pub rate_limit_used: BTreeMap<String, u32>,
}

/// One request as a listener received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path_and_query: String,
    /// Lower-case names, in received order, repeated headers kept.
    pub headers: Vec<(String, String)>,
    /// Body bytes read so far (final once the request was answered).
    pub body_len: usize,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub version: String,
}

impl RecordedRequest {
    /// The first value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`Sim::complete_run`] did.
#[derive(Debug)]
pub struct CompletedRun {
    pub artifacts: Vec<Artifact>,
    /// The webhook's answer status (or why it failed); `None` with no webhook set.
    pub delivered: Option<Result<u16, String>>,
}

/// A running simulator. Dropping it (or calling [`Sim::shutdown`]) stops both
/// listeners and closes their connections.
pub struct Sim {
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sim {
    /// Binds both listeners and serves them on the current tokio runtime.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Sim> {
        let api = TcpListener::bind(cfg.api_addr).await?;
        let blob = TcpListener::bind(cfg.blob_addr).await?;
        let state = Arc::new(State::new(cfg, api.local_addr()?, blob.local_addr()?));
        let tls = state.cfg.tls.as_ref().map(server::acceptor).transpose()?;
        let api_state = state.clone();
        let blob_state = state.clone();
        let tasks = vec![
            server::spawn_listener(api, tls.clone(), move |req| {
                api::handle(api_state.clone(), req)
            }),
            server::spawn_listener(blob, tls, move |req| blob::handle(blob_state.clone(), req)),
        ];
        Ok(Sim { state, tasks })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.state.api_addr
    }

    pub fn blob_addr(&self) -> SocketAddr {
        self.state.blob_addr
    }

    /// `http://127.0.0.1:PORT/api/v3` (`https` with [`SimConfig::tls`]; the advertised host in place of the
    /// IP when [`SimConfig::advertise_host`] is set), no trailing slash.
    pub fn api_base(&self) -> String {
        self.state.api_base.clone()
    }

    pub fn counters(&self) -> Counters {
        self.state.snapshot()
    }

    /// Zeroes all counters and starts fresh rate-limit windows.
    pub fn reset_counters(&self) {
        self.state.reset_counters();
    }

    pub fn knobs(&self) -> &Knobs {
        &self.state.knobs
    }

    /// Every request the API listener received, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.api_log).clone()
    }

    /// Every request the blob listener received, in order.
    pub fn blob_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.blob_log).clone()
    }

    /// Creates an artifact and its zip (ids continue after the seeded ones)
    /// and returns it. Large zips take a moment to build (and to hash, in
    /// unoptimized builds); the sim keeps answering meanwhile.
    ///
    /// Panics if the payload exceeds what a non-zip64 archive holds (~4 GiB).
    pub fn add_artifact(&self, spec: NewArtifact) -> Artifact {
        let pending = lock(&self.state.store).reserve(spec);
        let stored = pending.build();
        lock(&self.state.store).insert(stored)
    }

    /// A new artifact with exactly the zip of artifact `of` (same repository,
    /// run and name; a new id), or `None` when `of` does not exist.
    pub fn duplicate_artifact(&self, of: u64) -> Option<Artifact> {
        lock(&self.state.store).duplicate(of)
    }

    pub fn artifact(&self, id: u64) -> Option<Artifact> {
        lock(&self.state.store).get(id).map(|s| s.artifact.clone())
    }

    /// The artifacts of "owner/name", newest first (as the API lists them).
    pub fn artifacts(&self, repo: &str) -> Vec<Artifact> {
        let mut v = lock(&self.state.store).list_by_name(repo);
        v.reverse();
        v
    }

    /// The exact zip the blob host serves for this artifact.
    pub fn zip_bytes(&self, id: u64) -> Option<Bytes> {
        lock(&self.state.store).get(id).map(|s| s.zip.clone())
    }

    /// Makes the artifact's JSON report this `digest` and/or
    /// `size_in_bytes` while the blob store keeps serving the real zip.
    pub fn misdescribe_artifact(
        &self,
        id: u64,
        digest: Option<String>,
        size_in_bytes: Option<u64>,
    ) {
        lock(&self.state.store).misdescribe(id, digest, size_in_bytes);
    }

    /// Moves the artifact's `expires_at` (Unix seconds) and nothing else:
    /// `"expired"` stays false and the download endpoint keeps answering,
    /// as between the retention date passing and GHES's expiry job running.
    pub fn set_expires_at(&self, id: u64, unix: u64) {
        lock(&self.state.store).set_expires_at(id, unix);
    }

    /// Marks the artifact expired: its JSON says `"expired": true` (so its
    /// ETags change) and the download endpoint answers 410.
    pub fn expire_artifact(&self, id: u64) {
        lock(&self.state.store).expire(id);
    }

    /// Completed workflow runs are announced to `url` as signed
    /// `workflow_run` deliveries (content type `application/json`).
    pub fn set_webhook(&self, url: &str, secret: &str) {
        *lock(&self.state.hook) = Some(runs::Hook {
            url: url.to_owned(),
            secret: secret.to_owned(),
        });
    }

    /// Accepts JWTs of GitHub App `app_id` (signed with
    /// [`fixtures::APP_PRIVATE_KEY_PEM`]) at
    /// `POST /app/installations/{installation_id}/access_tokens`; webhook
    /// deliveries then carry `installation.id`.
    pub fn enable_github_app(&self, app_id: u64, installation_id: u64) {
        *lock(&self.state.app) = Some(runs::App {
            app_id,
            installation_id,
            token_lifetime: 3600,
        });
    }

    /// Installation tokens minted from now on expire after `seconds`
    /// (default an hour, as on GitHub).
    pub fn set_app_token_lifetime(&self, seconds: u64) {
        if let Some(app) = lock(&self.state.app).as_mut() {
            app.token_lifetime = seconds;
        }
    }

    /// Run `run_id` of "owner/name", if it completed.
    pub fn run(&self, run_id: u64) -> Option<Run> {
        lock(&self.state.store).run(run_id)
    }

    /// A workflow run completes with these artifacts (name, payload bytes):
    /// they are created, the run shows in the runs list, and when a webhook
    /// is set its signed `workflow_run` `completed` delivery is sent (its
    /// answer in [`CompletedRun::delivered`]).
    pub async fn complete_run(
        &self,
        repo: &str,
        run_id: u64,
        artifacts: &[(&str, usize)],
    ) -> CompletedRun {
        let artifacts = artifacts
            .iter()
            .map(|(name, payload_bytes)| {
                self.add_artifact(NewArtifact {
                    repo: repo.to_owned(),
                    run_id,
                    name: (*name).to_owned(),
                    payload_bytes: *payload_bytes,
                    with_digest: false,
                    expired: false,
                })
            })
            .collect();
        lock(&self.state.store).complete_run(repo, run_id);
        let hook = lock(&self.state.hook).clone();
        let delivered = match hook {
            Some(hook) => {
                let delivery = self
                    .completed_delivery(run_id, &hook.secret)
                    .expect("the run was just completed");
                Some(self.send_delivery(&delivery).await)
            }
            None => None,
        };
        CompletedRun {
            artifacts,
            delivered,
        }
    }

    /// The `workflow_run` `completed` delivery of a completed run, signed
    /// with `secret` (a fresh delivery id each call).
    pub fn completed_delivery(&self, run_id: u64, secret: &str) -> Option<Delivery> {
        let run = lock(&self.state.store).run(run_id)?;
        let installation = lock(&self.state.app).map(|a| a.installation_id);
        let body =
            serde_json::to_vec(&run.completed_payload(&self.state.api_base, installation)).ok()?;
        Some(Delivery::signed(
            &self.state.request_id(),
            "workflow_run",
            body,
            secret,
        ))
    }

    /// POSTs a delivery to the webhook URL (see [`Sim::set_webhook`]);
    /// answers the status, or why there is none.
    pub async fn send_delivery(&self, delivery: &Delivery) -> Result<u16, String> {
        let url = lock(&self.state.hook)
            .as_ref()
            .map(|h| h.url.clone())
            .ok_or("no webhook set")?;
        runs::post(&url, delivery).await
    }

    /// Stops both listeners and waits until their tasks are gone.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
