//! TLS material: PEM loading and the two rustls configs (the listener's and
//! the client's toward GHES and blob stores). A leaf: it names no other
//! module of the crate, so `config` can check a certificate or a CA file
//! without reaching into `server` or `upstream`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the listener's certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("certificate and key do not fit together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why the client's trust roots cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile { path: String, source: io::Error },
    #[error("CA file {0} holds no PEM certificate")]
    CaFileEmpty(String),
    #[error("CA file {path}: {message}")]
    CaFileInvalid { path: String, message: String },
    #[error("no trusted CA certificates: the system has none and `ca_file` is not set")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server-side TLS settings: the chain and key from PEM files, HTTP/2
/// offered first by ALPN.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<rustls::ServerConfig, ServerTlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ServerTlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ServerTlsError::NoCertificate {
            path: cert.to_owned(),
        })?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| ServerTlsError::NoKey {
            path: key.to_owned(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads every certificate of a PEM bundle; used by start-up and by
/// `check-config`, so a bad CA file is reported the same way by both.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ClientTlsError::CaFile {
        path: shown.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientTlsError::CaFileInvalid {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ClientTlsError::CaFileEmpty(shown));
    }
    Ok(certs)
}

/// The client-side TLS settings: the system's roots plus `ca_file`;
/// `need_roots` when TLS is sure to be used, so an empty store is refused
/// at start rather than at the first request.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    need_roots: bool,
) -> Result<rustls::ClientConfig, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are not fatal: an internal GHES CA in
    // `ca_file` may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert)?;
        }
    }
    if need_roots && roots.is_empty() {
        return Err(ClientTlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let e = read_ca_file(&path).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = read_ca_file(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read CA file"), "{e}");
    }
}
