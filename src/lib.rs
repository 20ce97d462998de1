//! artifact-mirror: a caching reverse proxy for the GitHub Enterprise Server
//! Actions artifacts API. See `README.md`, and `ARCHITECTURE.md` for the map
//! of this crate. Modules are private to the crate unless the binary, the
//! tests or the benches use them.

pub(crate) mod access;
pub mod access_log;
pub mod admin;
pub mod app;
pub(crate) mod blob_store;
pub(crate) mod body;
pub mod cli_docs;
pub(crate) mod clock;
pub mod config;
pub mod credential;
pub(crate) mod download;
pub(crate) mod error;
pub(crate) mod flight;
pub(crate) mod health;
pub mod index;
pub(crate) mod json_cache;
pub(crate) mod log_queue;
pub(crate) mod metrics;
pub(crate) mod outcome;
pub(crate) mod prefetch;
pub(crate) mod private;
pub(crate) mod rewrite;
pub(crate) mod router;
pub mod server;
pub(crate) mod signing;
pub(crate) mod status;
pub(crate) mod tls;
pub mod upstream;
