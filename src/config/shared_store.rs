//! `shared_store`: where replicas keep the authoritative copy of blobs.
//!
//! The URL is classified by `object_store`'s own parser, so the mirror
//! accepts exactly the spellings the crate that will talk to the store
//! understands (`s3://BUCKET[/PREFIX]`, and the `https://…amazonaws.com/…`
//! forms). Only S3 is accepted for now: an S3-compatible store (AWS, MinIO,
//! Ceph) is what the shared tier is built and tested against; a `gs://` or
//! `az://` URL is refused by name rather than silently ignored.

use std::fmt;

use object_store::ObjectStoreScheme;
use serde::Serialize;
use url::Url;

use super::ConfigError;

/// A bucket and the key prefix under it the mirror owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStore {
    url: Url,
    bucket: String,
    prefix: object_store::path::Path,
}

impl SharedStore {
    pub fn parse(url: Url) -> Result<SharedStore, ConfigError> {
        let invalid = |reason: String| ConfigError::invalid("shared_store", reason);
        let (scheme, prefix) = ObjectStoreScheme::parse(&url).map_err(|_| {
            invalid(format!(
                "unknown scheme {}: (write s3://BUCKET or s3://BUCKET/PREFIX)",
                url.scheme()
            ))
        })?;
        if scheme != ObjectStoreScheme::AmazonS3 {
            return Err(invalid(format!(
                "{}: is not supported: only S3-compatible stores (s3://BUCKET[/PREFIX])",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "must not contain credentials: they come from AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY"
                    .into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("must not have a query or fragment".into()));
        }
        let bucket = match url.scheme() {
            // `s3://bucket/…`: the host is the bucket.
            "s3" | "s3a" => url.host_str().unwrap_or_default().to_owned(),
            // `https://bucket.s3.region.amazonaws.com/…` or
            // `https://s3.region.amazonaws.com/bucket/…`.
            _ => match url.host_str().unwrap_or_default() {
                host if host.starts_with("s3") => url
                    .path_segments()
                    .and_then(|mut s| s.next())
                    .unwrap_or_default()
                    .to_owned(),
                host => host.split('.').next().unwrap_or_default().to_owned(),
            },
        };
        if bucket.is_empty() {
            return Err(invalid("must name a bucket: s3://BUCKET[/PREFIX]".into()));
        }
        Ok(SharedStore {
            url,
            bucket,
            prefix,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix every object of this mirror lives under (may be empty).
    pub fn prefix(&self) -> &object_store::path::Path {
        &self.prefix
    }
}

impl fmt::Display for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.url.fmt(f)
    }
}

impl Serialize for SharedStore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SharedStore, String> {
        SharedStore::parse(s.parse().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bucket_with_or_without_a_prefix() {
        let s = parse("s3://artifacts").unwrap();
        assert_eq!((s.bucket(), s.prefix().as_ref()), ("artifacts", ""));
        let s = parse("s3://artifacts/mirror/eu").unwrap();
        assert_eq!(
            (s.bucket(), s.prefix().as_ref()),
            ("artifacts", "mirror/eu")
        );
        assert_eq!(s.to_string(), "s3://artifacts/mirror/eu");
        let s = parse("https://artifacts.s3.eu-west-1.amazonaws.com/m").unwrap();
        assert_eq!((s.bucket(), s.prefix().as_ref()), ("artifacts", "m"));
    }

    #[test]
    fn other_schemes_and_malformed_urls_are_refused_by_name() {
        for (url, says) in [
            ("gs://bucket", "gs: is not supported"),
            ("az://container", "az: is not supported"),
            ("file:///var/lib/x", "file: is not supported"),
            ("ftp://host/x", "unknown scheme ftp:"),
            ("s3://key:secret@bucket", "must not contain credentials"),
            ("s3://bucket?versionId=1", "query"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.contains("shared_store") && e.contains(says), "{url}: {e}");
        }
    }
}
