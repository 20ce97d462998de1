//! Prefetch: a completed run's artifacts are stored before anyone asks.
//!
//! GHES announces a completed run with a signed `workflow_run` webhook
//! ([`webhook`]), or the mirror finds it by polling ([`poll`]); either way
//! the run goes into a bounded [`queue`], and `prefetch_concurrency`
//! workers ([`fetch`]) fill its artifacts with the mirror's own
//! [`credential`]. This warms bytes only: no grant is recorded, so a client
//! still needs GHES's yes (its own download-endpoint 302, or a renewal)
//! before the mirror hands it a byte.

pub mod credential;
pub mod fetch;
pub mod poll;
pub mod queue;
pub mod webhook;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use http::{Request, Response};
use tokio::task::JoinHandle;

pub use crate::metrics::prefetch::PrefetchMetrics;

use crate::blob_store::BlobStore;
use crate::body::Body;
use crate::config::Settings;
use crate::error::MirrorError;
use crate::router::{parse_full_name, RepoRef, RouteError};
use crate::upstream::{ClientInfo, Upstream};
use credential::Credential;
use queue::Queue;

#[derive(Debug, thiserror::Error)]
pub enum PrefetchSetupError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("webhook_secret_file {0} is empty")]
    EmptySecret(PathBuf),
    #[error("{0}")]
    Credential(String),
}

/// The running prefetch: the webhook receiver, if configured, and the
/// worker and poller tasks, which end with it.
pub struct Prefetch {
    receiver: Option<webhook::Receiver>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(crate) use crate::config::prefetch::enabled;

impl Prefetch {
    /// Reads the secret and credential and starts the workers and pollers;
    /// `None` when prefetch is not configured.
    pub async fn start(
        settings: &Settings,
        upstream: Upstream,
        blobs: Arc<BlobStore>,
        metrics: Arc<PrefetchMetrics>,
    ) -> Result<Option<Prefetch>, PrefetchSetupError> {
        if !enabled(settings) {
            return Ok(None);
        }
        let secret = match &settings.webhook_secret_file {
            Some(path) => Some(read_secret(path).await?),
            None => None,
        };
        let credential = Arc::new(Credential::from_settings(settings, upstream.clone()).await?);
        let queue = Arc::new(Queue::new(settings.prefetch_queue, metrics.clone()));
        let names = settings
            .prefetch_names
            .iter()
            .filter_map(|g| glob::Pattern::new(g).ok())
            .collect();
        let fetcher = Arc::new(fetch::Fetcher {
            upstream: upstream.clone(),
            blobs,
            credential: credential.clone(),
            api_base: settings.api_base_path().to_owned(),
            names,
            max_bytes: settings
                .prefetch_max_bytes
                .min(settings.max_blob_bytes)
                .min(settings.blob_quota_bytes),
            fills: tokio::sync::Semaphore::new(settings.prefetch_concurrency),
            metrics: metrics.clone(),
        });
        let mut tasks = Vec::new();
        for _ in 0..settings.prefetch_concurrency {
            let (queue, fetcher) = (queue.clone(), fetcher.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let job = queue.pop().await;
                    fetcher.run(job).await;
                }
            }));
        }
        for repo in &settings.prefetch_poll_repos {
            let Ok(RepoRef::Named { owner, name }) = parse_full_name(repo) else {
                continue; // refused by the settings check already
            };
            let poller = poll::Poller {
                upstream: upstream.clone(),
                credential: credential.clone(),
                api_base: settings.api_base_path().to_owned(),
                owner,
                name,
                interval: settings.prefetch_poll_interval.0,
                installation: settings.github_app_installation_id,
                queue: queue.clone(),
                metrics: metrics.clone(),
            };
            tasks.push(tokio::spawn(poller.run()));
        }
        let receiver = secret.map(|s| webhook::Receiver::new(s, queue, metrics));
        Ok(Some(Prefetch { receiver, tasks }))
    }

    /// `POST /_mirror/webhooks/github`; 404 without `webhook_secret_file`.
    pub async fn webhook(&self, request: Request<Body>) -> Result<Response<Body>, MirrorError> {
        match &self.receiver {
            Some(receiver) => match receiver.receive(request).await {
                Ok(response) => Ok(response),
                Err(webhook::WebhookError::Busy) => Err(MirrorError::Overloaded(1)),
                Err(e) => Err(e.into()),
            },
            None => Err(RouteError::NotFound.into()),
        }
    }
}

async fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, PrefetchSetupError> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|source| PrefetchSetupError::Read {
            what: "webhook_secret_file",
            path: path.to_owned(),
            source,
        })?;
    // A trailing newline is the editor's, not the secret's.
    let secret = text.trim_ascii().to_vec();
    if secret.is_empty() {
        return Err(PrefetchSetupError::EmptySecret(path.to_owned()));
    }
    Ok(secret)
}

/// Requests of prefetch have no client: they are labelled by what they do.
/// Their `credential` is no one's: they go straight upstream
/// (`Upstream::forward`), never through the JSON cache or the grants, which
/// are the only readers of it.
fn client(route: &'static str) -> ClientInfo {
    ClientInfo {
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        tls: false,
        route,
        credential: crate::credential::CredentialId::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Layer, Settings};

    fn resolve(tune: impl FnOnce(&mut Layer)) -> Result<Settings, String> {
        let mut layer = Layer {
            upstream: Some("http://ghes/api/v3".parse().unwrap()),
            ..Layer::default()
        };
        tune(&mut layer);
        Settings::resolve(layer).map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_needs_its_own_credential_when_on() {
        let s = resolve(|_| {}).unwrap();
        assert!(!super::enabled(&s));
        let e = resolve(|l| l.webhook_secret_file = Some("/s".into())).unwrap_err();
        assert!(e.contains("prefetch_token_file"), "{e}");
        let e = resolve(|l| l.prefetch_poll_repos = Some(vec!["o/r".into()])).unwrap_err();
        assert!(e.contains("never a client's"), "{e}");
        assert!(resolve(|l| {
            l.webhook_secret_file = Some("/s".into());
            l.prefetch_token_file = Some("/t".into());
        })
        .is_ok());
    }

    #[test]
    fn bad_prefetch_settings_name_their_key() {
        let token = |l: &mut Layer| l.prefetch_token_file = Some("/t".into());
        for (tune, key) in [
            (
                Box::new(|l: &mut Layer| l.prefetch_poll_repos = Some(vec!["nope".into()]))
                    as Box<dyn FnOnce(&mut Layer)>,
                "prefetch_poll_repos",
            ),
            (
                Box::new(|l: &mut Layer| l.prefetch_names = Some(vec!["[".into()])),
                "prefetch_names",
            ),
            (
                Box::new(|l: &mut Layer| l.prefetch_concurrency = Some(0)),
                "prefetch_concurrency",
            ),
            (
                Box::new(|l: &mut Layer| l.github_app_id = Some(1)),
                "github_app_key_file",
            ),
            (
                Box::new(|l: &mut Layer| {
                    l.github_app_id = Some(1);
                    l.github_app_key_file = Some("/k".into());
                }),
                "prefetch_token_file",
            ),
        ] {
            let e = resolve(|l| {
                token(l);
                tune(l);
            })
            .unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = resolve(|l| {
            l.github_app_id = Some(1);
            l.github_app_key_file = Some("/k".into());
            l.prefetch_poll_repos = Some(vec!["o/r".into()]);
        })
        .unwrap_err();
        assert!(e.contains("github_app_installation_id"), "{e}");
    }
}
