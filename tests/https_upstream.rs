//! The mirror in front of an https upstream, the only kind a real GHES is:
//! rustls toward GHES and its blob host, a private CA trusted through
//! `ca_file`, HTTP/2 when ALPN offers it and HTTP/1.1 otherwise, and a clear
//! 502 (naming the reason, not a local path) when the CA is not trusted.

mod common;

use std::path::PathBuf;

use common::{get, Harness};
use ghes_sim::fixtures::{PRIVATE_REPO, PUBLIC_REPO, READER_TOKEN};
use ghes_sim::{NewArtifact, Sim, SimConfig, TlsIdentity};
use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A private CA, written as PEM to `dir/name`, and its issuer.
fn ca(dir: &std::path::Path, name: &str) -> (PathBuf, CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let issuer =
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let path = dir.join(name);
    std::fs::write(&path, issuer.pem()).expect("CA file written");
    (path, issuer)
}

/// A simulator serving https with a certificate for 127.0.0.1 signed by
/// `issuer`.
async fn https_sim(issuer: &CertifiedIssuer<'static, KeyPair>, h2: bool) -> Sim {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("leaf params");
    let cert = params.signed_by(&key, issuer).expect("leaf signed");
    Sim::start(SimConfig {
        tls: Some(TlsIdentity {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            h2,
        }),
        ..SimConfig::default()
    })
    .await
    .expect("https simulator starts")
}

/// List, get and download through a mirror whose upstream (API and blob
/// host alike) is https with a private CA; every upstream request used
/// `version`.
async fn list_get_and_download(h2: bool, version: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca_file, issuer) = ca(dir.path(), "ghes-ca.pem");
    let sim = https_sim(&issuer, h2).await;
    assert!(sim.api_base().starts_with("https://127.0.0.1:"));
    let h = Harness::start_against(sim, |l| l.ca_file = Some(ca_file)).await;
    let art = h.sim.add_artifact(NewArtifact {
        repo: PRIVATE_REPO.into(),
        run_id: 9401,
        name: "over-tls".into(),
        payload_bytes: 50_000,
        with_digest: true,
        expired: false,
    });

    let list = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
    let first = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    // Upstream's https URLs were rewritten to the mirror.
    let body = String::from_utf8_lossy(&first.body);
    assert!(!body.contains("https://127.0.0.1"), "{body}");
    assert!(body.contains(&h.url("/repos/")), "{body}");
    let again = get(&list, Some(READER_TOKEN)).await;
    assert_eq!(again.header("x-cache"), Some("REVALIDATED"));

    let meta = format!("/repos/{PRIVATE_REPO}/actions/artifacts/{}", art.id);
    let got = get(&h.url(&meta), Some(READER_TOKEN)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["id"], art.id);

    let redirect = get(&h.url(&format!("{meta}/zip")), Some(READER_TOKEN)).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    let location = redirect.header("location").expect("location").to_owned();
    let zip = get(&location, None).await;
    assert_eq!(zip.status, StatusCode::OK);
    assert!(
        zip.body == h.sim.zip_bytes(art.id).expect("zip"),
        "same bytes"
    );
    h.until_stored(1).await;

    let api = h.sim.requests();
    let blob = h.sim.blob_requests();
    assert_eq!(api.len(), 4, "list, revalidation, get, download");
    assert!(!blob.is_empty(), "the zip came from the https blob host");
    for r in api.iter().chain(&blob) {
        assert_eq!(r.version, version, "{} {}", r.method, r.path_and_query);
    }
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_over_h2() {
    list_get_and_download(true, "HTTP/2.0").await;
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_over_http1() {
    list_get_and_download(false, "HTTP/1.1").await;
}

/// An upstream certificate no trusted CA issued: 502 saying why, before
/// any request reached upstream, and no local path in the answer.
#[tokio::test]
async fn an_untrusted_upstream_certificate_gets_502_naming_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, issuer) = ca(dir.path(), "ghes-ca.pem");
    let (other_ca, _) = ca(dir.path(), "another-ca.pem");
    for ca_file in [Some(other_ca), None] {
        let sim = https_sim(&issuer, true).await;
        let which = format!("{ca_file:?}");
        let h = Harness::start_against(sim, |l| l.ca_file = ca_file).await;
        let list = h.url(&format!("/repos/{PUBLIC_REPO}/actions/artifacts"));
        let r = get(&list, Some(READER_TOKEN)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{which}");
        let message = r.json()["message"]
            .as_str()
            .expect("a GitHub-style message")
            .to_owned();
        assert!(
            message.contains("certificate") && message.contains("UnknownIssuer"),
            "{which}: {message}"
        );
        let dir_shown = dir.path().to_string_lossy();
        assert!(!message.contains(dir_shown.as_ref()), "{message}");
        assert!(h.sim.requests().is_empty(), "no request got through");
    }
}
