//! The check of prefetch's settings: whether prefetch is on, and whether
//! what it needs (its own credential, valid globs and repositories) is set.

use crate::router::{parse_full_name, RepoRef};

use super::{ConfigError, Settings};

/// Whether the settings turn prefetch on: a webhook secret or repositories
/// to poll.
pub fn enabled(settings: &Settings) -> bool {
    settings.webhook_secret_file.is_some() || !settings.prefetch_poll_repos.is_empty()
}

/// The settings check for prefetch's settings (part of
/// [`Settings::resolve`]).
pub(super) fn check(s: &Settings) -> Result<(), ConfigError> {
    fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::invalid(key, reason)
    }
    if s.prefetch_concurrency == 0 {
        return Err(invalid("prefetch_concurrency", "must be at least 1"));
    }
    if s.prefetch_queue == 0 {
        return Err(invalid("prefetch_queue", "must be at least 1"));
    }
    if s.prefetch_poll_interval.0.is_zero() {
        return Err(invalid(
            "prefetch_poll_interval",
            "must be longer than zero",
        ));
    }
    for glob in &s.prefetch_names {
        glob::Pattern::new(glob)
            .map_err(|e| invalid("prefetch_names", format!("{glob:?} is not a glob: {e}")))?;
    }
    for repo in &s.prefetch_poll_repos {
        match parse_full_name(repo) {
            Ok(RepoRef::Named { .. }) => {}
            _ => {
                return Err(invalid(
                    "prefetch_poll_repos",
                    format!("{repo:?} is not owner/repo"),
                ))
            }
        }
    }
    match (s.github_app_id, &s.github_app_key_file) {
        (Some(_), None) => {
            return Err(invalid(
                "github_app_key_file",
                "is required with github_app_id",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "github_app_id",
                "is required with github_app_key_file",
            ))
        }
        _ => {}
    }
    let app = s.github_app_id.is_some();
    if app && s.prefetch_token_file.is_some() {
        return Err(invalid(
            "prefetch_token_file",
            "and github_app_id are two prefetch credentials: set one",
        ));
    }
    if enabled(s) && !app && s.prefetch_token_file.is_none() {
        return Err(invalid(
            "prefetch_token_file",
            "or github_app_id with github_app_key_file is required: prefetch uses its own credential, never a client's",
        ));
    }
    if app && !s.prefetch_poll_repos.is_empty() && s.github_app_installation_id.is_none() {
        return Err(invalid(
            "github_app_installation_id",
            "is required to poll with a GitHub App (only webhooks name the installation)",
        ));
    }
    Ok(())
}
