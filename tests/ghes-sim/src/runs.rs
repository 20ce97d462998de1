//! Workflow runs, the `workflow_run` webhook deliveries GHES sends when one
//! completes, and the GitHub App installation-token endpoint: what a mirror
//! that prefetches a completed run's artifacts talks to.

use crate::store::Repo;
use crate::util::{now_unix, rfc3339, sha256_hex};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde_json::{json, Value};

/// A workflow run as the sim holds it.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub id: u64,
    /// "owner/name"
    pub repo: String,
    pub repository_id: u64,
    pub private: bool,
    /// "completed" (the only state the sim's runs are in once listed).
    pub status: &'static str,
    pub updated_at: String,
}

impl Run {
    pub(crate) fn completed(repo: &Repo, id: u64) -> Run {
        Run {
            id,
            repo: repo.full_name(),
            repository_id: repo.id,
            private: repo.private,
            status: "completed",
            updated_at: rfc3339(now_unix()),
        }
    }

    /// The run object of the runs list and of the webhook payload.
    pub(crate) fn json(&self, api_base: &str) -> Value {
        let host = api_base.trim_end_matches("/api/v3");
        let url = format!("{api_base}/repos/{}/actions/runs/{}", self.repo, self.id);
        json!({
            "id": self.id,
            "name": "CI",
            "node_id": crate::util::base64(format!("WFR_{}", self.id).as_bytes()),
            "head_branch": "main",
            "head_sha": &sha256_hex(&[format!("run {}", self.id).as_bytes()])[..40],
            "run_number": self.id,
            "event": "push",
            "status": self.status,
            "conclusion": "success",
            "workflow_id": 1,
            "url": url,
            "html_url": format!("{host}/{}/actions/runs/{}", self.repo, self.id),
            "artifacts_url": format!("{url}/artifacts"),
            "created_at": self.updated_at,
            "updated_at": self.updated_at,
            "repository": self.repository_json(),
        })
    }

    fn repository_json(&self) -> Value {
        let (owner, name) = self.repo.split_once('/').unwrap_or((&self.repo, ""));
        json!({
            "id": self.repository_id,
            "name": name,
            "full_name": self.repo,
            "private": self.private,
            "owner": { "login": owner, "type": "Organization" },
        })
    }

    /// The `workflow_run` `completed` webhook payload, with the
    /// `installation` object a GitHub App's deliveries carry.
    pub(crate) fn completed_payload(&self, api_base: &str, installation: Option<u64>) -> Value {
        let mut payload = json!({
            "action": "completed",
            "workflow_run": self.json(api_base),
            "workflow": { "id": 1, "name": "CI" },
            "repository": self.repository_json(),
            "sender": { "login": "octocat", "type": "User" },
        });
        if let Some(id) = installation {
            payload["installation"] = json!({ "id": id });
        }
        payload
    }
}

/// One webhook delivery: what GHES POSTs to a hook's URL. Tests may build
/// their own (a ping, a bad signature, a replay) and send them with
/// [`crate::Sim::send_delivery`].
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `X-GitHub-Delivery` (a GUID on GitHub).
    pub id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    pub body: Bytes,
    /// `X-Hub-Signature-256`, `None` to send none.
    pub signature: Option<String>,
}

impl Delivery {
    /// A delivery signed with `secret` as GitHub signs it:
    /// `sha256=<hex HMAC-SHA256 of the body>`.
    pub fn signed(id: &str, event: &str, body: impl Into<Bytes>, secret: &str) -> Delivery {
        let body = body.into();
        Delivery {
            id: id.to_owned(),
            event: event.to_owned(),
            signature: Some(signature(secret, &body)),
            body,
        }
    }

    /// The request headers, as GitHub's hookshot sends them.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("content-type", "application/json".to_owned()),
            ("user-agent", "GitHub-Hookshot/sim".to_owned()),
            ("x-github-event", self.event.clone()),
            ("x-github-delivery", self.id.clone()),
            ("x-github-hook-id", "1".to_owned()),
        ];
        if let Some(sig) = &self.signature {
            h.push(("x-hub-signature-256", sig.clone()));
        }
        h
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where completed runs are announced.
#[derive(Clone, Debug)]
pub(crate) struct Hook {
    pub url: String,
    pub secret: String,
}

/// A GitHub App the sim accepts JWTs of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct App {
    pub app_id: u64,
    pub installation_id: u64,
    /// Seconds an installation token is valid (GitHub: an hour).
    pub token_lifetime: u64,
}

#[derive(serde::Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
}

/// Checks an App JWT (`Authorization: Bearer …`) as GitHub does: RS256
/// under the App's public key, `iss` the App id, `exp` in the future and at
/// most 10 minutes after `iat`. `Err` carries GitHub's message.
pub(crate) fn check_app_jwt(app: App, authorization: Option<&str>) -> Result<(), &'static str> {
    let jwt = authorization
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or("A JSON web token could not be decoded")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(crate::fixtures::APP_PUBLIC_KEY_PEM)
        .map_err(|_| "the App key fixture is not a public key")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[app.app_id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let token = jsonwebtoken::decode::<Claims>(jwt.trim(), &key, &validation)
        .map_err(|_| "A JSON web token could not be decoded")?;
    if token.claims.exp.saturating_sub(token.claims.iat) > 660 {
        return Err("'Expiration time' claim ('exp') is too far in the future");
    }
    if token.claims.iat > now_unix() + 60 {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past");
    }
    Ok(())
}

/// POSTs `delivery` to `url` (bounded to 20 s); the answer's status.
pub(crate) async fn post(url: &str, delivery: &Delivery) -> Result<u16, String> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::post(url);
    for (name, value) in delivery.headers() {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(delivery.body.clone()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "the webhook did not answer within 20 s".to_owned())?
}
