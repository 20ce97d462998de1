//! Listener plumbing shared by the API host and the blob host: accept loop,
//! request recording, and the body types handlers answer with.

use crate::util::lock;
use crate::RecordedRequest;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every handler answers with this body type: full buffers and streams alike.
pub(crate) type RespBody = BoxBody<Bytes, BoxError>;
pub(crate) type Log = Arc<Mutex<Vec<RecordedRequest>>>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> RespBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn empty() -> RespBody {
    full(Bytes::new())
}

/// A TLS acceptor for `identity` offering h2 (if it says so) and http/1.1
/// by ALPN (ring, as the mirror uses).
pub(crate) fn acceptor(identity: &crate::TlsIdentity) -> std::io::Result<TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let invalid = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(identity.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone())),
        )
        .map_err(invalid)?;
    if identity.h2 {
        config.alpn_protocols.push(b"h2".to_vec());
    }
    config.alpn_protocols.push(b"http/1.1".to_vec());
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `listener` until the returned task is aborted.
///
/// Connection tasks live in a `JoinSet` owned by the accept task, so aborting
/// that one task (what `Sim::shutdown` and `Drop` do) stops accepting and
/// tears down every open connection with it. `auto::Builder` speaks HTTP/1.1
/// and HTTP/2 with prior knowledge (h2c), like a proxy in front of GHES may;
/// with `tls`, the same inside TLS (a failed handshake just ends that
/// connection).
pub(crate) fn spawn_listener<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<RespBody>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _peer)) => stream,
                        Err(_) => {
                            // e.g. EMFILE: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let tls = tls.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let fut = handler(req);
                            async move { Ok::<_, Infallible>(fut.await) }
                        });
                        // Errors here are client hang-ups or our own injected
                        // cuts; nothing to report.
                        let builder = auto::Builder::new(TokioExecutor::new());
                        match tls {
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    let _ = builder
                                        .serve_connection(TokioIo::new(stream), svc)
                                        .await;
                                }
                            }
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

/// Appends the request to `log` (body length filled in as the body is read)
/// and returns its index.
pub(crate) fn record(log: &Log, parts: &http::request::Parts) -> usize {
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let mut log = lock(log);
    log.push(RecordedRequest {
        method: parts.method.as_str().to_string(),
        path_and_query,
        headers,
        body_len: 0,
        version: format!("{:?}", parts.version),
    });
    log.len() - 1
}

/// A request body that adds the bytes it passes on to its `RecordedRequest`,
/// so even streamed bodies (the markdown echo) get an exact `body_len`.
pub(crate) struct CountingBody {
    inner: Incoming,
    log: Log,
    index: usize,
}

impl CountingBody {
    pub fn new(inner: Incoming, log: Log, index: usize) -> Self {
        CountingBody { inner, log, index }
    }

    /// Reads and discards the whole body (still counted). Errors just end it.
    pub async fn drain(mut self) {
        while let Some(Ok(_frame)) = self.frame().await {}
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len();
                if let Some(r) = lock(&self.log).get_mut(self.index) {
                    r.body_len += n;
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
