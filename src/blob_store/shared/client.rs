//! The S3 client of the shared tier, built with rustls over ring.
//!
//! object_store's `aws` feature would bring aws-lc-rs (through reqwest and
//! its own signing); the mirror enables `aws-base` + `reqwest` + `ring`
//! instead, and reqwest's `rustls-no-provider`, so the process-wide rustls
//! provider must be ring: [`connect`] installs it (a no-op when already set).
//!
//! Every call is bounded: a connect timeout, a request timeout and few
//! retries, so a dead or hung store costs a client seconds, not minutes
//! (the caller then goes on from GHES or the local disk).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use crate::config::SharedStore;

/// A TCP + TLS handshake to a healthy store takes milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request, body included: a multipart part or a blob streamed to a
/// local fill. Large enough for a part over a slow link; the first bytes of
/// a read are bounded separately by the caller.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Retries of a failed idempotent request, and the time they may take.
const MAX_RETRIES: usize = 2;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the store client from the `AWS_*` environment (credentials,
/// region, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …) and the bucket of the
/// `shared_store` URL. The prefix is applied by the caller on each key.
pub fn connect(store: &SharedStore) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    // Another part of the process may have installed ring already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Set key by key: `with_client_options` would drop what `from_env`
    // read (`AWS_ALLOW_HTTP`, proxies).
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let client = |key| AmazonS3ConfigKey::Client(key);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    };
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(store.bucket())
        .with_config(client(ClientConfigKey::ConnectTimeout), ms(CONNECT_TIMEOUT))
        .with_config(client(ClientConfigKey::Timeout), ms(REQUEST_TIMEOUT))
        .with_retry(retry)
        .build()?;
    Ok(Arc::new(s3))
}
