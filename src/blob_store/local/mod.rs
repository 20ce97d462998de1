//! The local-filesystem backend: `blobs/sha256/ab/<hex>`, named by content
//! digest, each with its sidecar (`<hex>.json`: the artifacts that use it,
//! so a lost index can be rebuilt). A file becomes visible by rename after
//! it was fsynced; the directory is fsynced after the rename; the sidecar
//! is written before the index record. `repair` brings files, sidecars and
//! records back into agreement at every start and in `cache verify`.

pub(crate) mod repair;
pub(crate) mod sidecar;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::FillError;
use crate::index::{BlobRecord, Index};

use super::backend::{Backend, StoredBlob};
use repair::{RepairError, Report};

pub(crate) struct LocalFs {
    /// The data dir: `blobs/` and `tmp/` are under it.
    dir: PathBuf,
    /// Read to tell whether another artifact shares a file.
    index: Index,
}

impl LocalFs {
    pub(crate) fn new(data_dir: &Path, index: Index) -> LocalFs {
        LocalFs {
            dir: data_dir.to_owned(),
            index,
        }
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        let shard = sha256.get(..2).unwrap_or("00");
        self.dir
            .join("blobs")
            .join("sha256")
            .join(shard)
            .join(sha256)
    }

    /// Whether another artifact's record still names the file `path` (of
    /// content `sha256`), which `artifact` no longer does. The sidecar names
    /// the file's artifacts, so only those records are read; without a
    /// readable sidecar naming `artifact`, every record is (O(n)).
    fn shared(&self, path: &Path, artifact: u64, sha256: &str) -> bool {
        let names_same = |id: u64| match self.index.blobs().get(id) {
            Ok(Some(r)) => r.sha256 == sha256,
            Ok(None) => false,
            Err(_) => true,
        };
        match sidecar::read(path) {
            Ok(Some(sidecar)) if sidecar.artifacts.contains_key(&artifact) => sidecar
                .artifacts
                .keys()
                .filter(|id| **id != artifact)
                .any(|id| names_same(*id)),
            _ => self.index.blobs().records().map_or(true, |all| {
                all.iter()
                    .any(|(_, r)| r.as_ref().is_ok_and(|r| r.sha256 == sha256))
            }),
        }
    }
}

impl Backend for LocalFs {
    fn commit(&self, staged: &Path, artifact: u64, record: &BlobRecord) -> Result<(), FillError> {
        let path = self.path_of(&record.sha256);
        if let Some(parent) = path.parent() {
            crate::private::create_dir_all(parent).map_err(FillError::io("create", parent))?;
        }
        std::fs::rename(staged, &path).map_err(FillError::io("rename", staged))?;
        if let Some(parent) = path.parent() {
            // The rename itself must survive a crash before the record does.
            if let Ok(dir) = std::fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        // The sidecar before the record: the file stays recoverable should
        // the index be lost. Without it the blob is still whole and
        // recorded (the next start writes the sidecar), so only warn.
        if let Err(e) = sidecar::add(&path, &self.dir.join("tmp"), artifact, record) {
            tracing::warn!(artifact, error = %e, "blob sidecar not written");
        }
        Ok(())
    }

    fn open(&self, record: &BlobRecord) -> io::Result<Arc<dyn StoredBlob>> {
        Ok(Arc::new(std::fs::File::open(self.path_of(&record.sha256))?))
    }

    fn delete(&self, artifact: u64, record: &BlobRecord) {
        let path = self.path_of(&record.sha256);
        let shared = self.shared(&path, artifact, &record.sha256);
        // The sidecar follows the record, so a rebuild cannot bring it back.
        let sidecar = if shared {
            sidecar::forget(&path, &self.dir.join("tmp"), artifact)
        } else {
            sidecar::remove(&path)
        };
        if let Err(e) = sidecar {
            tracing::warn!(error = %e, "blob sidecar not updated");
        }
        if !shared {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, "blob file not removed");
            }
        }
    }

    fn scan(&self, index: &Index, rehash: bool) -> Result<Report, RepairError> {
        repair::reconcile(&self.dir, index, rehash)
    }
}

/// A stored file, or a staged one being filled, read positionally: no seek
/// state is shared between the clients reading it.
impl StoredBlob for std::fs::File {
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0u8; len];
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(self, &mut buf, pos)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(self, &mut buf, pos)?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::hex;
    use sha2::{Digest, Sha256};

    /// The record a fill of `content` writes.
    fn record(content: &[u8]) -> BlobRecord {
        BlobRecord {
            sha256: hex(&Sha256::digest(content)),
            size: content.len() as u64,
            name: "dist".into(),
            expires_at: None,
            stored_at: 1,
            repo: None,
        }
    }

    /// The contract the store relies on: a commit is readable by range, a
    /// shared content outlives the first artifact that drops it, and an
    /// open reader outlives the delete.
    #[test]
    fn committed_content_is_read_by_range_and_deleted_with_its_last_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index"), 1 << 20).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let fs = LocalFs::new(dir.path(), index.clone());
        let content = b"zip bytes";
        let record = record(content);
        for id in [1, 2] {
            let staged = dir.path().join("tmp").join(format!("{id}.part"));
            std::fs::write(&staged, content).unwrap();
            fs.commit(&staged, id, &record).unwrap();
            assert!(!staged.exists());
            index.blobs().put(id, &record, 1).unwrap();
        }
        let blob = fs.open(&record).unwrap();
        assert_eq!(&blob.read_at(4, 100).unwrap()[..], b"bytes");
        assert!(blob.read_at(9, 10).unwrap().is_empty());

        index.blobs().remove(1).unwrap();
        fs.delete(1, &record);
        assert_eq!(
            &fs.open(&record).unwrap().read_at(0, 3).unwrap()[..],
            b"zip"
        );
        index.blobs().remove(2).unwrap();
        fs.delete(2, &record);
        assert_eq!(
            fs.open(&record).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        // Opened before the delete: still readable.
        assert_eq!(&blob.read_at(0, 3).unwrap()[..], b"zip");
        assert!(fs.scan(&index, true).unwrap().corrupt.is_empty());
    }

    /// Without a sidecar that names the artifact (lost, or stale), every
    /// record is read: the file stays while another record names its
    /// content, and goes when none does.
    #[test]
    fn without_a_sidecar_naming_the_artifact_the_records_decide() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index"), 1 << 20).unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let fs = LocalFs::new(dir.path(), index.clone());
        let put = |id: u64, content: &[u8]| {
            let record = record(content);
            let staged = tmp.join(format!("{id}.part"));
            std::fs::write(&staged, content).unwrap();
            fs.commit(&staged, id, &record).unwrap();
            index.blobs().put(id, &record, 1).unwrap();
            record
        };
        // Drops `id` as the store does; whether its file is still there.
        let drop_artifact = |id: u64| {
            let record = index.blobs().remove(id).unwrap().expect("a record");
            fs.delete(id, &record);
            fs.path_of(&record.sha256).exists()
        };
        let shared = put(1, b"same");
        put(2, b"same");
        put(3, b"other");
        let path = fs.path_of(&shared.sha256);
        // A stale sidecar that names only an artifact with no record.
        let stale = sidecar::Sidecar {
            artifacts: [(9, shared.clone())].into(),
        };
        sidecar::write(&path, &tmp, &stale).unwrap();
        assert!(drop_artifact(1), "artifact 2's record still names it");
        sidecar::remove(&path).unwrap();
        assert!(
            !drop_artifact(2),
            "no record names it (3's is other content)"
        );
    }
}
