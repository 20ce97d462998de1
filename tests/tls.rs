//! TLS termination: HTTPS with HTTP/2 by ALPN and HTTP/1.1 otherwise, the
//! public base (and so every rewritten URL) in https, clear start-up errors.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{raw_h2, Harness, TIMEOUT};
use ghes_sim::fixtures::{PUBLIC_REPO, READER_TOKEN};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert)
}

/// A client config that trusts only `cert`.
fn trusting(cert: &rcgen::Certificate) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn https_client(
    cert: &rcgen::Certificate,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let config = trusting(cert);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        builder.enable_http1().enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn https_with_h2_by_alpn_and_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, cert) = certificate(dir.path());
    let h = Harness::start_with(|l| {
        l.tls_cert = Some(cert_path.clone());
        l.tls_key = Some(key_path.clone());
    })
    .await;
    let base = format!("https://127.0.0.1:{}/api/v3", h.mirror.port());
    let list = format!("{base}/repos/{PUBLIC_REPO}/actions/artifacts?per_page=2");
    for (h2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let client = https_client(&cert, h2);
        let request = Request::get(&list)
            .header("authorization", format!("token {READER_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(TIMEOUT, client.request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version);
        let link = response.headers()["link"].to_str().unwrap().to_owned();
        assert!(link.contains(&format!("<{base}/repositories/")), "{link}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let url = json["artifacts"][0]["archive_download_url"]
            .as_str()
            .unwrap();
        assert!(url.starts_with(&base), "{url}");
    }
    // Plain HTTP on the TLS port is refused, not served.
    let plain = common::client()
        .request(common::request(
            http::Method::GET,
            &format!("http://{}/healthz", h.mirror),
            None,
        ))
        .await;
    assert!(plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true));
}

/// HTTP/2 chosen by ALPN has the header-read limit too: a connection that
/// sends the preface and no request gets GOAWAY and is closed; one that
/// sends requests is served.
#[tokio::test]
async fn h2_over_tls_gets_goaway_at_the_header_read_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, cert) = certificate(dir.path());
    let h = Harness::start_with(|l| {
        l.tls_cert = Some(cert_path.clone());
        l.tls_key = Some(key_path.clone());
        l.header_read_timeout = Some("1s".parse().unwrap());
    })
    .await;
    let connect = || async {
        let mut config = trusting(&cert);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(h.mirror).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls
    };
    let mut served = connect().await;
    raw_h2::preface(&mut served).await;
    raw_h2::assert_served(&mut served, 1, "/healthz").await;

    let started = std::time::Instant::now();
    let mut silent = connect().await;
    raw_h2::preface(&mut silent).await;
    let seen = raw_h2::read(&mut silent, started, TIMEOUT, None, false).await;
    let (at, _) = *seen
        .goaways()
        .first()
        .unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert!(at >= Duration::from_millis(900), "{at:?}");
    assert!(at < Duration::from_secs(8), "{at:?}");
    let eof = seen.eof.unwrap_or_else(|| panic!("not closed: {seen:?}"));
    assert!(eof < Duration::from_secs(12), "{eof:?}");
}

#[test]
fn bad_tls_settings_are_clear_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = certificate(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem").unwrap();
    let check = |cert: Option<&Path>, key: Option<&Path>| {
        let layer = artifact_mirror::config::Layer {
            upstream: Some("http://127.0.0.1:9/api/v3".parse().unwrap()),
            tls_cert: cert.map(Path::to_owned),
            tls_key: key.map(Path::to_owned),
            ..Default::default()
        };
        artifact_mirror::config::Settings::resolve(layer)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(check(Some(&cert_path), Some(&key_path)), Ok(()));
    let e = check(Some(&cert_path), None).unwrap_err();
    assert!(e.contains("tls_key"), "{e}");
    let e = check(None, Some(&key_path)).unwrap_err();
    assert!(e.contains("tls_cert"), "{e}");
    let e = check(Some(&garbage), Some(&key_path)).unwrap_err();
    assert!(e.contains("no PEM certificate"), "{e}");
    let e = check(Some(&cert_path), Some(&garbage)).unwrap_err();
    assert!(e.contains("no PEM private key"), "{e}");
    let e = check(Some(&dir.path().join("missing.crt")), Some(&key_path)).unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
    // A key that is not the certificate's.
    let (_, other_key, _) = certificate(&{
        let d = dir.path().join("other");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let e = check(Some(&cert_path), Some(&other_key)).unwrap_err();
    assert!(e.contains("do not fit"), "{e}");
}
