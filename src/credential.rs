//! Client `Authorization` → opaque credential id.
//!
//! The id is HMAC-SHA256 of the token under the instance secret, so it is
//! stable across restarts (persisted JSON stays usable), unguessable from
//! outside, and never reveals the token: the raw value is not stored, not
//! logged and not used as a file name. Requests without `Authorization` share
//! one anonymous partition.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const SECRET_LEN: usize = 32;

/// The per-instance key (`data_dir/secret`), also used to sign blob URLs.
/// Held as the HMAC state already keyed with it: every request computes a
/// MAC, and cloning the keyed state skips the key schedule each time.
#[derive(Clone)]
pub struct InstanceSecret(Hmac<Sha256>);

impl fmt::Debug for InstanceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstanceSecret(..)")
    }
}

impl InstanceSecret {
    /// Reads `path`, or creates it (mode 0600) with fresh random bytes on
    /// first start. Replicas behind one load balancer are given the same
    /// file (`secret_file`), so a blob URL one signs verifies on another.
    /// A key other users can read would let them forge blob URLs, so such a
    /// file is refused rather than used; group bits are allowed, because
    /// orchestrators share mounted secrets with the pod's group.
    pub fn load_or_create(path: &Path) -> io::Result<InstanceSecret> {
        if let Some(key) = read_key(path)? {
            return Ok(InstanceSecret::keyed(&key));
        }
        let mut key = [0u8; SECRET_LEN];
        getrandom::fill(&mut key).map_err(io::Error::other)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        file.write_all(&key)?;
        file.sync_all()?;
        Ok(InstanceSecret::keyed(&key))
    }

    /// What [`load_or_create`](Self::load_or_create) would refuse in an
    /// existing file (`check-config` runs it); a missing file is fine, the
    /// start creates it.
    pub fn check(path: &Path) -> io::Result<()> {
        read_key(path).map(|_| ())
    }

    fn keyed(key: &[u8; SECRET_LEN]) -> InstanceSecret {
        InstanceSecret(
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length"),
        )
    }

    /// HMAC-SHA256 of `parts`, each length-prefixed so no two lists collide.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Checks `tag` against the HMAC of `parts` in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.verify_slice(tag).is_ok()
    }

    /// The credential a request carries.
    pub fn credential(&self, headers: &HeaderMap) -> CredentialId {
        match headers.get(http::header::AUTHORIZATION) {
            None => CredentialId::Anonymous,
            Some(value) => self.token_credential(value),
        }
    }

    fn token_credential(&self, authorization: &HeaderValue) -> CredentialId {
        let token = token_part(authorization.as_bytes());
        CredentialId::Token(self.mac(&[b"credential", token]))
    }
}

/// One connection's last `Authorization` and its credential id: a client
/// sends the same header on every request of a keep-alive connection, and
/// the HMAC was a fresh hit's largest single cost after the socket work.
///
/// It holds the header, token included, in memory for the connection's life
/// only: it is dropped with the connection and never written anywhere.
/// Another header (a proxy that pools several clients' requests on one
/// connection) is hashed and takes its place. The comparison takes the same
/// time for every header of a length, so a client learns nothing of the
/// token held by the time its own header takes.
#[derive(Default)]
pub struct ConnCredential(Mutex<Option<(HeaderValue, CredentialId)>>);

impl ConnCredential {
    /// The credential of `headers`, hashed only when their `Authorization`
    /// differs from the previous request's.
    pub fn of(&self, secret: &InstanceSecret, headers: &HeaderMap) -> CredentialId {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return CredentialId::Anonymous;
        };
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, id)) = &*last {
            if bool::from(seen.as_bytes().ct_eq(value.as_bytes())) {
                return *id;
            }
        }
        let id = secret.token_credential(value);
        *last = Some((value.clone(), id));
        id
    }
}

impl fmt::Debug for ConnCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnCredential(..)")
    }
}

/// An existing key file with any "others" permission bit is an error that
/// says how to fix it. Follows symlinks: mounted secrets are links.
/// The key in `path`; `None` when there is no file.
fn read_key(path: &Path) -> io::Result<Option<[u8; SECRET_LEN]>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    refuse_world_access(path)?;
    let key = bytes.as_slice().try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes, expected {SECRET_LEN}; remove it to make a new one \
                 (cached JSON then revalidates once)",
                path.display(),
                bytes.len()
            ),
        )
    })?;
    Ok(Some(key))
}

fn refuse_world_access(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "open to other users (mode {mode:o}): anyone who reads it can forge blob \
                     URLs; run chmod 600 on it"
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// GitHub accepts one token as `token X` and `Bearer X`: both name the same
/// credential. Other schemes (Basic) are hashed whole.
fn token_part(value: &[u8]) -> &[u8] {
    match value.iter().position(|b| *b == b' ') {
        Some(i)
            if value[..i].eq_ignore_ascii_case(b"token")
                || value[..i].eq_ignore_ascii_case(b"bearer") =>
        {
            value[i..].trim_ascii()
        }
        _ => value.trim_ascii(),
    }
}

/// Who a cached answer belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialId {
    Anonymous,
    Token([u8; 32]),
}

impl CredentialId {
    /// The id's raw bytes, for keys: `anonymous` (9 bytes) or the 32 MAC
    /// bytes. The lengths differ, so the two never collide. `Display` (hex)
    /// stays for logs and for the stored cache policy.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CredentialId::Anonymous => b"anonymous",
            CredentialId::Token(mac) => mac,
        }
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialId::Anonymous => f.write_str("anonymous"),
            CredentialId::Token(mac) => f.write_str(&hex(mac)),
        }
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form: enough to tell partitions apart in a debug log.
        match self {
            CredentialId::Anonymous => f.write_str("anonymous"),
            CredentialId::Token(mac) => write!(f, "cred:{}", &hex(&mac[..6])),
        }
    }
}

/// Lower-case hex, the crate's one spelling of bytes as text (credential
/// ids, signatures, digests, file names). A slice, not `hex::encode`'s
/// generic, so callers keep passing `&bytes`.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn secret_is_created_once_with_mode_0600_and_ids_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let a = InstanceSecret::load_or_create(&path).unwrap();
        let b = InstanceSecret::load_or_create(&path).unwrap();
        let h = headers(Some("token ghp_abc"));
        assert_eq!(a.credential(&h), b.credential(&h));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().unwrap();
        let c = InstanceSecret::load_or_create(&other.path().join("secret")).unwrap();
        assert_ne!(
            a.credential(&h),
            c.credential(&h),
            "ids are keyed per instance"
        );
    }

    #[test]
    fn a_damaged_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"short").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = InstanceSecret::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("expected 32"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_others_can_read_is_refused_and_group_access_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, [7u8; SECRET_LEN]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = InstanceSecret::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("mode 644"), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        InstanceSecret::load_or_create(&path).unwrap();
    }

    #[test]
    fn a_connection_hashes_a_repeated_header_once_and_a_new_one_anew() {
        let dir = tempfile::tempdir().unwrap();
        let s = InstanceSecret::load_or_create(&dir.path().join("secret")).unwrap();
        let conn = ConnCredential::default();
        let (a, b) = (
            headers(Some("token ghp_abc")),
            headers(Some("token ghp_abd")),
        );
        for h in [&a, &a, &b, &a, &headers(None), &b] {
            assert_eq!(conn.of(&s, h), s.credential(h));
        }
        // A header the connection holds answers without hashing: shown by
        // a slot filled with an id no MAC gives.
        let planted = CredentialId::Token([7; 32]);
        *conn.0.lock().unwrap() = Some((a[http::header::AUTHORIZATION].clone(), planted));
        assert_eq!(conn.of(&s, &a), planted);
        assert_eq!(conn.of(&s, &b), s.credential(&b));
        assert_eq!(conn.of(&s, &headers(None)), CredentialId::Anonymous);
    }

    #[test]
    fn token_schemes_share_an_id_and_tokens_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = InstanceSecret::load_or_create(&dir.path().join("secret")).unwrap();
        let id = |a| s.credential(&headers(a));
        assert_eq!(id(Some("token ghp_abc")), id(Some("Bearer ghp_abc")));
        assert_ne!(id(Some("token ghp_abc")), id(Some("token ghp_abd")));
        assert_eq!(id(None), CredentialId::Anonymous);
        assert_ne!(id(Some("Basic Zm9v")), CredentialId::Anonymous);
        assert_eq!(id(None).as_bytes(), b"anonymous");
        assert_eq!(id(Some("token ghp_abc")).as_bytes().len(), 32);
        let shown = id(Some("token ghp_abc")).to_string();
        assert_eq!(shown.len(), 64);
        assert!(!shown.contains("ghp_abc"));
    }
}
