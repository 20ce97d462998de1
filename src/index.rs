//! The embedded persistent index (sled). Every sled call lives in this
//! module: sled 0.34 is beta-quality upstream, so keeping it behind one
//! small API keeps it replaceable, and its page cache is bounded by a
//! setting instead of sled's 1 GB default.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the index at {path}: {source} (is another artifact-mirror using this data dir?)"
)]
pub struct IndexOpenError {
    path: PathBuf,
    source: sled::Error,
}

#[derive(Clone)]
pub struct Index {
    db: sled::Db,
}

/// Key of the record that proves the index is readable and writable.
const PROBE_KEY: &[u8] = b"instance/ready-probe";

impl Index {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Index, IndexOpenError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|source| IndexOpenError {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Index { db })
    }

    /// Writes and reads back a record: what `/readyz` means by "index open".
    pub fn check(&self) -> Result<(), sled::Error> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_be_bytes();
        self.db.insert(PROBE_KEY, &stamp)?;
        match self.db.get(PROBE_KEY)? {
            Some(v) if v.as_ref() == stamp => Ok(()),
            _ => Err(sled::Error::ReportableBug(
                "index probe record did not read back".into(),
            )),
        }
    }

    pub async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_one_dir_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), 1 << 20).unwrap();
        index.check().unwrap();
        let Err(e) = Index::open(dir.path(), 1 << 20) else {
            panic!("a second open must fail while the first holds the lock");
        };
        assert!(e.to_string().contains("another artifact-mirror"), "{e}");
    }
}
