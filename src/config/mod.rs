//! Settings: built-in defaults, overridden by the TOML file, overridden by
//! `ARTIFACT_MIRROR_*` environment variables, overridden by flags.
//!
//! One [`Layer`] type describes every setting once: clap fills it from flags
//! and the environment (a flag wins over its variable), serde fills it from
//! the file, and [`Layer::over`] stacks the two before [`Settings::resolve`]
//! applies defaults and validates. A new setting is a new field in `Layer`
//! and `Settings`, nothing else.

pub(crate) mod prefetch;
mod shared_store;

pub use shared_store::SharedStore;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// Default listen address: loopback, so a bare `serve` exposes nothing;
/// deployments set `listen = "0.0.0.0:8080"` (the container image does).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// hyper refuses read buffers smaller than this.
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// `--config FILE` and the overriding flags; shared by `serve` and
/// `check-config` so both see exactly the same effective settings.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML settings file (see config/artifact-mirror.toml).
    #[arg(long, env = "ARTIFACT_MIRROR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Layer,
}

impl ConfigArgs {
    /// Reads the file (if any), stacks the flags and environment on top and
    /// resolves the result.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => Layer::from_file(path)?,
            None => Layer::default(),
        };
        Settings::resolve(self.overrides.clone().over(file))
    }
}

/// Every setting, each optional: one source's contribution.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Address and port to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ARTIFACT_MIRROR_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// GHES API base URL, e.g. https://ghes.example.com/api/v3 (required).
    #[arg(long, env = "ARTIFACT_MIRROR_UPSTREAM", value_name = "URL")]
    pub upstream: Option<Url>,
    /// Base URL clients use to reach the mirror's API (default: from the request).
    #[arg(long, env = "ARTIFACT_MIRROR_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<Url>,
    /// Directory for the index and stored blobs [default: ./data].
    #[arg(long, env = "ARTIFACT_MIRROR_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS with (needs --tls-key) [default: plain HTTP].
    #[arg(long, env = "ARTIFACT_MIRROR_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "ARTIFACT_MIRROR_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Extra PEM CA bundle trusted for the upstream (an internal GHES CA).
    #[arg(long, env = "ARTIFACT_MIRROR_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Time allowed to open a connection to the upstream [default: 5s].
    #[arg(long, env = "ARTIFACT_MIRROR_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<Span>,
    /// Time allowed for the upstream to answer with headers [default: 60s].
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_UPSTREAM_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_timeout: Option<Span>,
    /// Largest request head accepted; larger gets 431 [default: 65536].
    #[arg(long, env = "ARTIFACT_MIRROR_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Time a client gets to send a whole request head; past it, 408 and the connection closes [default: 30s].
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_HEADER_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    pub header_read_timeout: Option<Span>,
    /// Time an idle keep-alive connection (or one whose client stopped reading) stays open [default: 75s].
    #[arg(long, env = "ARTIFACT_MIRROR_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<Span>,
    /// Client connections served at once; past it, 503 and close [default: 4096].
    #[arg(long, env = "ARTIFACT_MIRROR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Requests to the GHES API in flight at once [default: 64].
    #[arg(long, env = "ARTIFACT_MIRROR_MAX_UPSTREAM_REQUESTS", value_name = "N")]
    pub max_upstream_requests: Option<usize>,
    /// Requests waiting for an upstream slot; past it, 503 with Retry-After [default: 256].
    #[arg(long, env = "ARTIFACT_MIRROR_UPSTREAM_QUEUE", value_name = "N")]
    pub upstream_queue: Option<usize>,
    /// Largest zip kept in the store; larger ones are streamed to clients, not stored [default: 10737418240].
    #[arg(long, env = "ARTIFACT_MIRROR_MAX_BLOB_BYTES", value_name = "BYTES")]
    pub max_blob_bytes: Option<u64>,
    /// Time in-flight requests get to finish on shutdown [default: 30s].
    #[arg(long, env = "ARTIFACT_MIRROR_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<Span>,
    /// Trust X-Forwarded-For/-Proto/-Host from clients (behind a load balancer) [default: false].
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_TRUST_FORWARDED_HEADERS",
        value_name = "BOOL"
    )]
    pub trust_forwarded_headers: Option<bool>,
    /// JSON revalidation: `always` (every request asks upstream; a 304 is free) or `when-stale` [default: always].
    #[arg(long, env = "ARTIFACT_MIRROR_REVALIDATE", value_name = "MODE")]
    pub revalidate: Option<Revalidate>,
    /// Under when-stale, longest a cached answer counts as fresh (caps upstream's max-age) [default: 60s].
    #[arg(long, env = "ARTIFACT_MIRROR_MAX_FRESH", value_name = "DURATION")]
    pub max_fresh: Option<Span>,
    /// Serve cached JSON when upstream fails (5xx, unreachable) if validated within this long; 0s = never [default: 0s].
    #[arg(long, env = "ARTIFACT_MIRROR_STALE_IF_ERROR", value_name = "DURATION")]
    pub stale_if_error: Option<Span>,
    /// Memory for the hot tier of cached JSON [default: 67108864].
    #[arg(long, env = "ARTIFACT_MIRROR_JSON_MEMORY_BYTES", value_name = "BYTES")]
    pub json_memory_bytes: Option<u64>,
    /// Disk for cached JSON; least recently validated entries go first [default: 1073741824].
    #[arg(long, env = "ARTIFACT_MIRROR_JSON_DISK_BYTES", value_name = "BYTES")]
    pub json_disk_bytes: Option<u64>,
    /// Cached JSON not validated by upstream for this long is dropped [default: 7days].
    #[arg(long, env = "ARTIFACT_MIRROR_JSON_MAX_AGE", value_name = "DURATION")]
    pub json_max_age: Option<Span>,
    /// Disk for stored zips; least recently used ones are evicted past it [default: 21474836480].
    #[arg(long, env = "ARTIFACT_MIRROR_BLOB_QUOTA_BYTES", value_name = "BYTES")]
    pub blob_quota_bytes: Option<u64>,
    /// How long the mirror's signed blob URLs stay valid [default: 60s].
    #[arg(long, env = "ARTIFACT_MIRROR_BLOB_URL_TTL", value_name = "DURATION")]
    pub blob_url_ttl: Option<Span>,
    /// How often expired blobs, and index records nothing uses, are swept [default: 10m].
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_HOUSEKEEPING_INTERVAL",
        value_name = "DURATION"
    )]
    pub housekeeping_interval: Option<Span>,
    /// Memory the embedded index may use for its page cache [default: 67108864].
    #[arg(long, env = "ARTIFACT_MIRROR_INDEX_CACHE_BYTES", value_name = "BYTES")]
    pub index_cache_bytes: Option<u64>,
    /// `GET /_mirror/status`: `off` (404), `summary` (figures only) or `detail` (with artifact and repository names) [default: summary].
    #[arg(long, env = "ARTIFACT_MIRROR_STATUS_PAGE", value_name = "MODE")]
    pub status_page: Option<StatusPage>,
    /// S3 bucket replicas share blobs through: s3://BUCKET[/PREFIX]; credentials and endpoint from the AWS_* environment [default: off].
    #[arg(long, env = "ARTIFACT_MIRROR_SHARED_STORE", value_name = "URL")]
    pub shared_store: Option<Url>,
    /// The instance key (32 bytes) signing blob URLs and keying credential ids; replicas given the same file sign and verify alike; created 0600 if absent [default: DATA_DIR/secret].
    #[arg(long, env = "ARTIFACT_MIRROR_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// File holding the GitHub webhook secret; turns on POST /_mirror/webhooks/github [default: off].
    #[arg(long, env = "ARTIFACT_MIRROR_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding prefetch's own token (a PAT or an externally rotated token; read again when it changes).
    #[arg(long, env = "ARTIFACT_MIRROR_PREFETCH_TOKEN_FILE", value_name = "FILE")]
    pub prefetch_token_file: Option<PathBuf>,
    /// GitHub App id whose installation tokens prefetch uses (with --github-app-key-file).
    #[arg(long, env = "ARTIFACT_MIRROR_GITHUB_APP_ID", value_name = "ID")]
    pub github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM).
    #[arg(long, env = "ARTIFACT_MIRROR_GITHUB_APP_KEY_FILE", value_name = "FILE")]
    pub github_app_key_file: Option<PathBuf>,
    /// App installation to use when polling (a webhook names its own).
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_GITHUB_APP_INSTALLATION_ID",
        value_name = "ID"
    )]
    pub github_app_installation_id: Option<u64>,
    /// Repositories (owner/repo, comma-separated) whose completed runs are polled and prefetched [default: none].
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_PREFETCH_POLL_REPOS",
        value_name = "OWNER/REPO",
        value_delimiter = ','
    )]
    pub prefetch_poll_repos: Option<Vec<String>>,
    /// Time between polls of a repository's completed runs (GHES's X-Poll-Interval wins when longer) [default: 30s].
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_PREFETCH_POLL_INTERVAL",
        value_name = "DURATION"
    )]
    pub prefetch_poll_interval: Option<Span>,
    /// Globs of artifact names to prefetch, comma-separated [default: all].
    #[arg(
        long,
        env = "ARTIFACT_MIRROR_PREFETCH_NAMES",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub prefetch_names: Option<Vec<String>>,
    /// Largest artifact prefetched [default: 1073741824].
    #[arg(long, env = "ARTIFACT_MIRROR_PREFETCH_MAX_BYTES", value_name = "BYTES")]
    pub prefetch_max_bytes: Option<u64>,
    /// Artifacts prefetched at once [default: 2].
    #[arg(long, env = "ARTIFACT_MIRROR_PREFETCH_CONCURRENCY", value_name = "N")]
    pub prefetch_concurrency: Option<usize>,
    /// Completed runs waiting for prefetch; past it the oldest is dropped [default: 1000].
    #[arg(long, env = "ARTIFACT_MIRROR_PREFETCH_QUEUE", value_name = "N")]
    pub prefetch_queue: Option<usize>,
    /// Log line format [default: human].
    #[arg(long, env = "ARTIFACT_MIRROR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, tracing-subscriber EnvFilter syntax [default: info].
    #[arg(long, env = "ARTIFACT_MIRROR_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log lines queued for the writer thread; past it lines are dropped and counted [default: 16384].
    #[arg(long, env = "ARTIFACT_MIRROR_LOG_QUEUE_LINES", value_name = "LINES")]
    pub log_queue_lines: Option<usize>,
}

impl Layer {
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// `self` wins wherever it has a value.
    pub fn over(self, lower: Layer) -> Layer {
        Layer {
            listen: self.listen.or(lower.listen),
            upstream: self.upstream.or(lower.upstream),
            public_url: self.public_url.or(lower.public_url),
            data_dir: self.data_dir.or(lower.data_dir),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            ca_file: self.ca_file.or(lower.ca_file),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            upstream_timeout: self.upstream_timeout.or(lower.upstream_timeout),
            max_header_bytes: self.max_header_bytes.or(lower.max_header_bytes),
            header_read_timeout: self.header_read_timeout.or(lower.header_read_timeout),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            max_upstream_requests: self.max_upstream_requests.or(lower.max_upstream_requests),
            upstream_queue: self.upstream_queue.or(lower.upstream_queue),
            max_blob_bytes: self.max_blob_bytes.or(lower.max_blob_bytes),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
            trust_forwarded_headers: self
                .trust_forwarded_headers
                .or(lower.trust_forwarded_headers),
            revalidate: self.revalidate.or(lower.revalidate),
            max_fresh: self.max_fresh.or(lower.max_fresh),
            stale_if_error: self.stale_if_error.or(lower.stale_if_error),
            json_memory_bytes: self.json_memory_bytes.or(lower.json_memory_bytes),
            json_disk_bytes: self.json_disk_bytes.or(lower.json_disk_bytes),
            json_max_age: self.json_max_age.or(lower.json_max_age),
            blob_quota_bytes: self.blob_quota_bytes.or(lower.blob_quota_bytes),
            blob_url_ttl: self.blob_url_ttl.or(lower.blob_url_ttl),
            housekeeping_interval: self.housekeeping_interval.or(lower.housekeeping_interval),
            index_cache_bytes: self.index_cache_bytes.or(lower.index_cache_bytes),
            status_page: self.status_page.or(lower.status_page),
            shared_store: self.shared_store.or(lower.shared_store),
            secret_file: self.secret_file.or(lower.secret_file),
            webhook_secret_file: self.webhook_secret_file.or(lower.webhook_secret_file),
            prefetch_token_file: self.prefetch_token_file.or(lower.prefetch_token_file),
            github_app_id: self.github_app_id.or(lower.github_app_id),
            github_app_key_file: self.github_app_key_file.or(lower.github_app_key_file),
            github_app_installation_id: self
                .github_app_installation_id
                .or(lower.github_app_installation_id),
            prefetch_poll_repos: self.prefetch_poll_repos.or(lower.prefetch_poll_repos),
            prefetch_poll_interval: self.prefetch_poll_interval.or(lower.prefetch_poll_interval),
            prefetch_names: self.prefetch_names.or(lower.prefetch_names),
            prefetch_max_bytes: self.prefetch_max_bytes.or(lower.prefetch_max_bytes),
            prefetch_concurrency: self.prefetch_concurrency.or(lower.prefetch_concurrency),
            prefetch_queue: self.prefetch_queue.or(lower.prefetch_queue),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
            log_queue_lines: self.log_queue_lines.or(lower.log_queue_lines),
        }
    }
}

/// The effective, validated settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub listen: SocketAddr,
    pub upstream: Url,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<Url>,
    pub data_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Span,
    pub upstream_timeout: Span,
    pub max_header_bytes: usize,
    pub header_read_timeout: Span,
    pub idle_timeout: Span,
    pub max_connections: usize,
    pub max_upstream_requests: usize,
    pub upstream_queue: usize,
    pub max_blob_bytes: u64,
    pub shutdown_grace: Span,
    pub trust_forwarded_headers: bool,
    pub revalidate: Revalidate,
    pub max_fresh: Span,
    pub stale_if_error: Span,
    pub json_memory_bytes: u64,
    pub json_disk_bytes: u64,
    pub json_max_age: Span,
    pub blob_quota_bytes: u64,
    pub blob_url_ttl: Span,
    pub housekeeping_interval: Span,
    pub index_cache_bytes: u64,
    pub status_page: StatusPage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_store: Option<SharedStore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_app_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_app_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_app_installation_id: Option<u64>,
    pub prefetch_poll_repos: Vec<String>,
    pub prefetch_poll_interval: Span,
    pub prefetch_names: Vec<String>,
    pub prefetch_max_bytes: u64,
    pub prefetch_concurrency: usize,
    pub prefetch_queue: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub log_queue_lines: usize,
}

impl Settings {
    /// Applies the built-in defaults and checks every value.
    pub fn resolve(layer: Layer) -> Result<Settings, ConfigError> {
        let upstream = layer.upstream.ok_or_else(|| {
            ConfigError::invalid(
                "upstream",
                "is required: the GHES API base URL, e.g. https://ghes.example.com/api/v3 \
                 (flag --upstream, variable ARTIFACT_MIRROR_UPSTREAM)",
            )
        })?;
        let settings = Settings {
            listen: layer
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address")),
            upstream: base_url("upstream", upstream)?,
            public_url: layer
                .public_url
                .map(|u| base_url("public_url", u))
                .transpose()?,
            data_dir: layer.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            tls_cert: layer.tls_cert,
            tls_key: layer.tls_key,
            ca_file: layer.ca_file,
            connect_timeout: layer
                .connect_timeout
                .unwrap_or(Span(Duration::from_secs(5))),
            upstream_timeout: layer
                .upstream_timeout
                .unwrap_or(Span(Duration::from_secs(60))),
            max_header_bytes: layer.max_header_bytes.unwrap_or(64 * 1024),
            header_read_timeout: layer
                .header_read_timeout
                .unwrap_or(Span(Duration::from_secs(30))),
            idle_timeout: layer.idle_timeout.unwrap_or(Span(Duration::from_secs(75))),
            max_connections: layer.max_connections.unwrap_or(4096),
            max_upstream_requests: layer.max_upstream_requests.unwrap_or(64),
            upstream_queue: layer.upstream_queue.unwrap_or(256),
            max_blob_bytes: layer.max_blob_bytes.unwrap_or(10 * 1024 * 1024 * 1024),
            shutdown_grace: layer
                .shutdown_grace
                .unwrap_or(Span(Duration::from_secs(30))),
            trust_forwarded_headers: layer.trust_forwarded_headers.unwrap_or(false),
            revalidate: layer.revalidate.unwrap_or(Revalidate::Always),
            max_fresh: layer.max_fresh.unwrap_or(Span(Duration::from_secs(60))),
            stale_if_error: layer.stale_if_error.unwrap_or(Span(Duration::ZERO)),
            json_memory_bytes: layer.json_memory_bytes.unwrap_or(64 * 1024 * 1024),
            json_disk_bytes: layer.json_disk_bytes.unwrap_or(1024 * 1024 * 1024),
            json_max_age: layer
                .json_max_age
                .unwrap_or(Span(Duration::from_secs(7 * 24 * 3600))),
            blob_quota_bytes: layer.blob_quota_bytes.unwrap_or(20 * 1024 * 1024 * 1024),
            blob_url_ttl: layer.blob_url_ttl.unwrap_or(Span(Duration::from_secs(60))),
            housekeeping_interval: layer
                .housekeeping_interval
                .unwrap_or(Span(Duration::from_secs(600))),
            index_cache_bytes: layer.index_cache_bytes.unwrap_or(64 * 1024 * 1024),
            status_page: layer.status_page.unwrap_or(StatusPage::Summary),
            shared_store: layer.shared_store.map(SharedStore::parse).transpose()?,
            secret_file: layer.secret_file,
            webhook_secret_file: layer.webhook_secret_file,
            prefetch_token_file: layer.prefetch_token_file,
            github_app_id: layer.github_app_id,
            github_app_key_file: layer.github_app_key_file,
            github_app_installation_id: layer.github_app_installation_id,
            prefetch_poll_repos: layer.prefetch_poll_repos.unwrap_or_default(),
            prefetch_poll_interval: layer
                .prefetch_poll_interval
                .unwrap_or(Span(Duration::from_secs(30))),
            prefetch_names: layer.prefetch_names.unwrap_or_default(),
            prefetch_max_bytes: layer.prefetch_max_bytes.unwrap_or(1024 * 1024 * 1024),
            prefetch_concurrency: layer.prefetch_concurrency.unwrap_or(2),
            prefetch_queue: layer.prefetch_queue.unwrap_or(1000),
            log_format: layer.log_format.unwrap_or(LogFormat::Human),
            log_level: layer.log_level.unwrap_or_else(|| "info".to_owned()),
            log_queue_lines: layer.log_queue_lines.unwrap_or(16 * 1024),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        for (key, span) in [
            ("connect_timeout", self.connect_timeout),
            ("upstream_timeout", self.upstream_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("housekeeping_interval", self.housekeeping_interval),
        ] {
            if span.0.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        for (key, n) in [
            ("max_connections", self.max_connections),
            ("max_upstream_requests", self.max_upstream_requests),
            ("log_queue_lines", self.log_queue_lines),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.max_blob_bytes == 0 {
            return Err(ConfigError::invalid("max_blob_bytes", "must be at least 1"));
        }
        if self.blob_url_ttl.0 < Duration::from_secs(1) {
            return Err(ConfigError::invalid("blob_url_ttl", "must be at least 1s"));
        }
        if self.json_max_age.0.is_zero() {
            return Err(ConfigError::invalid(
                "json_max_age",
                "must be longer than zero",
            ));
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return Err(ConfigError::invalid(
                "max_header_bytes",
                format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError::invalid("log_level", e.to_string()));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::server_config(cert, key)
                    .map_err(|e| ConfigError::invalid("tls_cert", e.to_string()))?;
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls_key",
                    "is required when tls_cert is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls_cert",
                    "is required when tls_key is set",
                ))
            }
            (None, None) => {}
        }
        if let Some(path) = &self.ca_file {
            crate::tls::read_ca_file(path)
                .map_err(|e| ConfigError::invalid("ca_file", e.to_string()))?;
        }
        if let Some(path) = &self.secret_file {
            crate::credential::InstanceSecret::check(path)
                .map_err(|e| ConfigError::invalid("secret_file", e.to_string()))?;
        }
        prefetch::check(self)
    }

    /// Where the instance key lives: `secret_file`, else `data_dir/secret`
    /// (one replica alone needs no shared key).
    pub fn secret_path(&self) -> PathBuf {
        self.secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret"))
    }

    /// The path prefix both GHES and the mirror serve the API under
    /// (`/api/v3`, or empty for a root-mounted API), without a trailing `/`.
    pub fn api_base_path(&self) -> &str {
        self.upstream.path().trim_end_matches('/')
    }

    /// The settings as TOML, for `check-config`. Nothing here is secret
    /// today (URLs with credentials are refused), so nothing is masked yet;
    /// a future secret setting must be masked here.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// Checks a base URL setting and normalises its path (no trailing `/`).
fn base_url(key: &'static str, mut url: Url) -> Result<Url, ConfigError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(
            key,
            format!("must be an http or https URL, not {}:", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(key, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::invalid(
            key,
            "must not contain credentials: clients send their own Authorization",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(
            key,
            "must not have a query or fragment",
        ));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// A duration written the human way (`"5s"`, `"250ms"`, `"1m 30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Span)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("{e} (write e.g. \"5s\" or \"250ms\")")))
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// When cached JSON is checked with upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Revalidate {
    /// Every request goes upstream as a conditional request: a 304 costs no
    /// rate limit, and a list right after an upload shows the upload.
    Always,
    /// Fresh entries (upstream max-age, capped by `max_fresh`) are answered
    /// without asking upstream: lower latency, up to a minute behind.
    WhenStale,
}

/// What `GET /_mirror/status` shows. Artifact and repository names can be
/// private, and the page asks for no credential, so names are opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StatusPage {
    /// 404, as if there were no page.
    Off,
    /// Aggregate figures only: never an artifact or repository name.
    Summary,
    /// The figures, plus the names of fills in flight and recent fills.
    Detail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests;
