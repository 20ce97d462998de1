//! artifact-mirror: a caching reverse proxy for the GitHub Enterprise Server
//! Actions artifacts API. See `README.md` and the design notes it links.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod app;
pub mod blobs;
pub mod body;
pub mod cli_docs;
pub mod clock;
pub mod config;
pub mod credential;
pub mod download;
pub mod error;
pub mod flight;
pub mod health;
pub mod index;
pub mod json_cache;
pub mod log_queue;
pub mod metrics;
pub mod prefetch;
pub mod private;
pub mod repair;
pub mod rewrite;
pub mod router;
pub mod server;
pub mod sidecar;
pub mod signing;
pub mod status;
pub mod tls;
pub mod upstream;
