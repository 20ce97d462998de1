//! The prefetch credential: the mirror's own, never a client's.
//!
//! Either a token file (a PAT, or a token some other process rotates: it is
//! read again whenever the file's modification time or size changes), or a
//! GitHub App: an RS256 JWT buys an installation token at
//! `POST /app/installations/{id}/access_tokens`, reused until shortly
//! before its `expires_at`. Tokens live in memory only, as sensitive header
//! values, and no error message carries one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::{Request, StatusCode};

use super::PrefetchSetupError;
use crate::body;
use crate::config::Settings;
use crate::upstream::Upstream;

/// An installation token is renewed this long before it expires, so a
/// fill that starts with it does not run into its end.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// A JWT lives this long (GitHub allows at most 10 minutes).
const JWT_LIFETIME: u64 = 9 * 60;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("prefetch token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("prefetch token file {0} is empty or not a single-line token")]
    BadToken(PathBuf),
    #[error(
        "no App installation id: set github_app_installation_id (polling) or use the App's webhook"
    )]
    NoInstallation,
    #[error("the App JWT could not be made: {0}")]
    Jwt(String),
    #[error("GHES refused an installation token for installation {installation}: {status}")]
    Refused {
        installation: u64,
        status: StatusCode,
    },
    #[error("installation token request failed: {0}")]
    Upstream(String),
}

pub enum Credential {
    TokenFile(TokenFile),
    App(Box<AppCredential>),
}

impl Credential {
    /// The credential the settings name, checked now so that a wrong path
    /// or key stops the start rather than the first prefetch.
    pub async fn from_settings(
        settings: &Settings,
        upstream: Upstream,
    ) -> Result<Credential, PrefetchSetupError> {
        if let Some(path) = &settings.prefetch_token_file {
            let file = TokenFile {
                path: path.clone(),
                cached: tokio::sync::Mutex::new(None),
            };
            file.authorization()
                .await
                .map_err(|e| PrefetchSetupError::Credential(e.to_string()))?;
            return Ok(Credential::TokenFile(file));
        }
        match (&settings.github_app_id, &settings.github_app_key_file) {
            (Some(app_id), Some(key_file)) => {
                let pem =
                    tokio::fs::read(key_file)
                        .await
                        .map_err(|source| PrefetchSetupError::Read {
                            what: "github_app_key_file",
                            path: key_file.clone(),
                            source,
                        })?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    PrefetchSetupError::Credential(format!(
                        "github_app_key_file {} is not an RSA private key in PEM: {e}",
                        key_file.display()
                    ))
                })?;
                Ok(Credential::App(Box::new(AppCredential {
                    app_id: *app_id,
                    key,
                    installation: settings.github_app_installation_id,
                    upstream,
                    api_base: settings.api_base_path().to_owned(),
                    tokens: tokio::sync::Mutex::new(HashMap::new()),
                })))
            }
            _ => Err(PrefetchSetupError::Credential(
                "prefetch needs prefetch_token_file, or github_app_id with github_app_key_file"
                    .into(),
            )),
        }
    }

    /// The `Authorization` value for a request about a run announced by
    /// `installation` (a webhook payload's; `None` when polling).
    pub async fn authorization(
        &self,
        installation: Option<u64>,
    ) -> Result<HeaderValue, CredentialError> {
        match self {
            Credential::TokenFile(file) => file.authorization().await,
            Credential::App(app) => app.authorization(installation).await,
        }
    }
}

pub struct TokenFile {
    path: PathBuf,
    /// The file's stamp when read, and its token.
    cached: tokio::sync::Mutex<Option<(Stamp, HeaderValue)>>,
}

/// (modification time, size): either changing means the token did.
type Stamp = (Option<SystemTime>, u64);

impl TokenFile {
    async fn authorization(&self) -> Result<HeaderValue, CredentialError> {
        let io = |source| CredentialError::TokenFile {
            path: self.path.clone(),
            source,
        };
        let meta = tokio::fs::metadata(&self.path).await.map_err(io)?;
        let stamp = (meta.modified().ok(), meta.len());
        let mut cached = self.cached.lock().await;
        if let Some((seen, value)) = cached.as_ref() {
            if *seen == stamp {
                return Ok(value.clone());
            }
        }
        let text = tokio::fs::read_to_string(&self.path).await.map_err(io)?;
        let token = text.trim();
        let bad = || CredentialError::BadToken(self.path.clone());
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(bad());
        }
        let mut value = HeaderValue::from_str(&format!("token {token}")).map_err(|_| bad())?;
        value.set_sensitive(true);
        *cached = Some((stamp, value.clone()));
        Ok(value)
    }
}

pub struct AppCredential {
    app_id: u64,
    key: jsonwebtoken::EncodingKey,
    installation: Option<u64>,
    upstream: Upstream,
    api_base: String,
    /// Installation id → (token, Unix seconds it expires). Held across a
    /// mint so concurrent workers make one request, not several.
    tokens: tokio::sync::Mutex<HashMap<u64, (HeaderValue, u64)>>,
}

#[derive(serde::Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

#[derive(serde::Deserialize)]
struct Minted {
    token: String,
    expires_at: String,
}

impl AppCredential {
    async fn authorization(
        &self,
        installation: Option<u64>,
    ) -> Result<HeaderValue, CredentialError> {
        let installation = installation
            .or(self.installation)
            .ok_or(CredentialError::NoInstallation)?;
        let now = unix_now();
        let mut tokens = self.tokens.lock().await;
        if let Some((value, expires)) = tokens.get(&installation) {
            if now + RENEW_BEFORE.as_secs() < *expires {
                return Ok(value.clone());
            }
        }
        let (value, expires) = self.mint(installation, now).await?;
        tracing::info!(
            installation,
            expires,
            "GitHub App installation token minted"
        );
        tokens.insert(installation, (value.clone(), expires));
        Ok(value)
    }

    async fn mint(
        &self,
        installation: u64,
        now: u64,
    ) -> Result<(HeaderValue, u64), CredentialError> {
        // Issued a minute back: GitHub's advice against clock drift.
        let claims = Claims {
            iat: now.saturating_sub(60),
            exp: now + JWT_LIFETIME,
            iss: self.app_id.to_string(),
        };
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| CredentialError::Jwt(e.to_string()))?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {jwt}"))
            .map_err(|e| CredentialError::Jwt(e.to_string()))?;
        bearer.set_sensitive(true);
        let path = format!(
            "{}/app/installations/{installation}/access_tokens",
            self.api_base
        );
        let request = Request::post(path)
            .header(header::AUTHORIZATION, bearer)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header(header::USER_AGENT, "artifact-mirror")
            .body(body::empty())
            .map_err(|e| CredentialError::Upstream(e.to_string()))?;
        let response = self
            .upstream
            .forward(request, super::client("prefetch_app_token"))
            .await
            .map_err(|e| CredentialError::Upstream(e.to_string()))?;
        let status = response.status();
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(CredentialError::Refused {
                installation,
                status,
            });
        }
        let bytes = body::collect_limited(response.into_body(), 64 * 1024)
            .await
            .map_err(|e| CredentialError::Upstream(e.to_string()))?;
        let minted: Minted = serde_json::from_slice(&bytes)
            .map_err(|e| CredentialError::Upstream(format!("unexpected answer: {e}")))?;
        let expires = time::OffsetDateTime::parse(
            &minted.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
        .ok_or_else(|| CredentialError::Upstream("unreadable `expires_at`".into()))?;
        let mut value = HeaderValue::from_str(&format!("token {}", minted.token))
            .map_err(|_| CredentialError::Upstream("unusable token".into()))?;
        value.set_sensitive(true);
        Ok((value, expires))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "ghp_first\n").unwrap();
        let file = TokenFile {
            path: path.clone(),
            cached: tokio::sync::Mutex::new(None),
        };
        assert_eq!(file.authorization().await.unwrap(), "token ghp_first");
        // A different size changes the stamp even within one mtime tick.
        std::fs::write(&path, "ghp_second_one").unwrap();
        assert_eq!(file.authorization().await.unwrap(), "token ghp_second_one");
        std::fs::write(&path, "two words").unwrap();
        let e = file.authorization().await.unwrap_err().to_string();
        assert!(!e.contains("words"), "no token in errors: {e}");
        std::fs::remove_file(&path).unwrap();
        assert!(file.authorization().await.is_err());
    }
}
