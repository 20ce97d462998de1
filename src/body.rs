//! The one response/request body type the mirror passes around: boxed, so
//! upstream streams, in-memory answers and (later) store files mix freely.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Reads a whole body of at most `limit` bytes.
///
/// (Not `http_body_util::Limited`: its `Into<Box<dyn Error>>` bound makes
/// futures that await it fail rustc's `Send` check in generic contexts.)
pub async fn collect_limited(mut body: Body, limit: usize) -> Result<Bytes, BoxError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > limit {
                return Err(format!("body larger than {limit} bytes").into());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
