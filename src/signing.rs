//! Signed, expiring blob URLs: `/_mirror/blobs/{id}?exp=…&sig=…`.
//!
//! The signature is the permission: the download route hands one out only
//! after upstream (or a renewed grant) said this credential may have the
//! artifact, so the blob endpoint needs no credential of its own and, like
//! GitHub's blob storage, works for clients that drop `Authorization` on the
//! redirect (and ignores it for those that do not).

use std::time::{Duration, SystemTime};

use crate::clock::unix_secs;
use crate::credential::{hex, InstanceSecret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Blob URL is not signed")]
    Missing,
    #[error("Blob URL signature is malformed")]
    Malformed,
    #[error("Blob URL has expired")]
    Expired,
    #[error("Blob URL signature does not match")]
    Invalid,
}

#[derive(Clone)]
pub struct Signer {
    secret: InstanceSecret,
    ttl: Duration,
}

impl Signer {
    pub fn new(secret: InstanceSecret, ttl: Duration) -> Signer {
        Signer { secret, ttl }
    }

    /// `exp=…&sig=…` for a URL valid from `now` for the configured time.
    pub fn query(&self, artifact_id: u64, now: SystemTime) -> String {
        let exp = unix_secs(now) + self.ttl.as_secs().max(1);
        format!("exp={exp}&sig={}", hex(&self.tag(artifact_id, exp)))
    }

    pub fn verify(
        &self,
        artifact_id: u64,
        query: Option<&str>,
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let (mut exp, mut sig) = (None, None);
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("exp", v)) => exp = Some(v),
                Some(("sig", v)) => sig = Some(v),
                _ => {}
            }
        }
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(SignatureError::Missing);
        };
        // One spelling each: `u64::from_str` would also take `+123`.
        if !exp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignatureError::Malformed);
        }
        let exp: u64 = exp.parse().map_err(|_| SignatureError::Malformed)?;
        let sig = decode_sig(sig).ok_or(SignatureError::Malformed)?;
        // Checked before expiry so a forged URL never learns whether its
        // expiry would have passed.
        let signed = [
            b"blob".as_slice(),
            &artifact_id.to_be_bytes(),
            &exp.to_be_bytes(),
        ];
        if !self.secret.verify(&signed, &sig) {
            return Err(SignatureError::Invalid);
        }
        if unix_secs(now) > exp {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }

    fn tag(&self, artifact_id: u64, exp: u64) -> [u8; 32] {
        self.secret
            .mac(&[b"blob", &artifact_id.to_be_bytes(), &exp.to_be_bytes()])
    }
}

/// A signature has one spelling, the one [`Signer::query`] writes: exactly
/// 64 lower-case hex digits. Other spellings of the same bytes (upper case)
/// are refused, so a URL is either the one handed out or malformed.
fn decode_sig(s: &str) -> Option<[u8; 32]> {
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut sig = [0u8; 32];
    hex::decode_to_slice(s, &mut sig).ok()?;
    Some(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(ttl: u64) -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let secret = InstanceSecret::load_or_create(&dir.path().join("secret")).unwrap();
        (dir, Signer::new(secret, Duration::from_secs(ttl)))
    }

    #[test]
    fn a_signed_url_verifies_for_its_artifact_until_it_expires() {
        let (_d, s) = signer(60);
        let now = crate::clock::now();
        let q = s.query(7, now);
        assert_eq!(s.verify(7, Some(&q), now), Ok(()));
        assert_eq!(s.verify(8, Some(&q), now), Err(SignatureError::Invalid));
        let later = now + Duration::from_secs(62);
        assert_eq!(s.verify(7, Some(&q), later), Err(SignatureError::Expired));
    }

    #[test]
    fn tampering_is_refused() {
        let (_d, s) = signer(60);
        let now = crate::clock::now();
        let q = s.query(7, now);
        let (exp, sig) = q.split_once('&').unwrap();
        let exp: u64 = exp.trim_start_matches("exp=").parse().unwrap();
        let longer = format!("exp={}&{sig}", exp + 3600);
        assert_eq!(
            s.verify(7, Some(&longer), now),
            Err(SignatureError::Invalid)
        );
        let mut flipped = q.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            s.verify(7, Some(&flipped), now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(s.verify(7, None, now), Err(SignatureError::Missing));
        assert_eq!(
            s.verify(7, Some("exp=x&sig=00"), now),
            Err(SignatureError::Malformed)
        );
        let (sig_at, exp_at) = (q.find("sig=").unwrap() + 4, q.find("exp=").unwrap() + 4);
        let upper = format!("{}{}", &q[..sig_at], q[sig_at..].to_ascii_uppercase());
        assert_ne!(upper, q, "the signature has a letter");
        let plus_exp = format!("{}+{}", &q[..exp_at], &q[exp_at..]);
        for other_spelling in [upper, plus_exp] {
            assert_eq!(
                s.verify(7, Some(&other_spelling), now),
                Err(SignatureError::Malformed),
                "{other_spelling}"
            );
        }
        // `u8::from_str_radix` read `+a` as `0a`: a signature with a pair
        // starting `0` (one of the first few artifacts' has one) is refused
        // with that pair written `+x`.
        let (id, plus_sig) = (1..=200u64)
            .find_map(|id| {
                let q = s.query(id, now);
                let at = q.find("sig=").unwrap() + 4;
                let pair = (at..q.len()).step_by(2).find(|&i| &q[i..=i] == "0")?;
                Some((id, format!("{}+{}", &q[..pair], &q[pair + 1..])))
            })
            .expect("some signature has a pair starting with 0");
        assert_eq!(
            s.verify(id, Some(&plus_sig), now),
            Err(SignatureError::Malformed),
            "{plus_sig}"
        );
        let short = &q[..q.len() - 2];
        assert_eq!(
            s.verify(7, Some(short), now),
            Err(SignatureError::Malformed)
        );
        let (_d2, other) = signer(60);
        assert_eq!(other.verify(7, Some(&q), now), Err(SignatureError::Invalid));
    }
}
