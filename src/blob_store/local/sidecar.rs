//! Sidecars: `blobs/sha256/ab/<sha256>.json` beside each stored zip, naming
//! the artifacts whose index records point at it.
//!
//! Blob files are content-addressed and carry no artifact id, so without a
//! sidecar a lost or damaged index could not be rebuilt, and the start-up
//! sweep, which removes files no record names, would empty the store. The
//! index stays the truth while it is intact; the sidecar is the blobs' own
//! copy of their records, written (fsynced, renamed into place) before the
//! index record, updated when a record goes, removed with the file.

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::credential::hex;
use crate::index::BlobRecord;

/// File name extension of a sidecar; blob files have none.
pub const EXTENSION: &str = "json";

/// The records of one blob file, by artifact id (several artifacts may have
/// identical content and share one file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub artifacts: BTreeMap<u64, BlobRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("sidecar {path} is not readable JSON: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Serialises read-modify-write of sidecars within the process: two
/// artifacts with the same content may be stored or dropped at once.
static LOCK: Mutex<()> = Mutex::new(());

/// Whether a file under `blobs/` is a sidecar rather than a blob.
pub fn is_sidecar(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == EXTENSION)
}

/// The sidecar of the blob file at `blob`.
pub fn path_for(blob: &Path) -> PathBuf {
    blob.with_extension(EXTENSION)
}

/// Reads the sidecar of `blob`; `None` when there is none.
pub fn read(blob: &Path) -> Result<Option<Sidecar>, SidecarError> {
    let path = path_for(blob);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SidecarError::Io { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| SidecarError::Invalid {
            path,
            message: e.to_string(),
        })
}

/// Names `artifact` in the sidecar of `blob` (creating it). `tmp_dir` is on
/// the same file system (`data_dir/tmp`, emptied at start).
pub fn add(
    blob: &Path,
    tmp_dir: &Path,
    artifact: u64,
    record: &BlobRecord,
) -> Result<(), SidecarError> {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // An unreadable sidecar is replaced: the records it held are in the
    // index, and the next start writes them back (see `repair`).
    let mut sidecar = read(blob).unwrap_or_default().unwrap_or_default();
    sidecar.artifacts.insert(artifact, record.clone());
    write_locked(blob, tmp_dir, &sidecar)
}

/// Drops `artifact` from the sidecar of `blob`; removes the sidecar when no
/// artifact is left.
pub fn forget(blob: &Path, tmp_dir: &Path, artifact: u64) -> Result<(), SidecarError> {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut sidecar) = read(blob)? else {
        return Ok(());
    };
    if sidecar.artifacts.remove(&artifact).is_none() {
        return Ok(());
    }
    write_locked(blob, tmp_dir, &sidecar)
}

/// Replaces the sidecar of `blob` with `sidecar` (removed when empty).
pub fn write(blob: &Path, tmp_dir: &Path, sidecar: &Sidecar) -> Result<(), SidecarError> {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    write_locked(blob, tmp_dir, sidecar)
}

/// Removes the sidecar of `blob`, if any.
pub fn remove(blob: &Path) -> Result<(), SidecarError> {
    let path = path_for(blob);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SidecarError::Io { path, source: e }),
        _ => Ok(()),
    }
}

/// Written whole to `tmp_dir`, fsynced, renamed over the old one and the
/// directory fsynced: a crash leaves the old sidecar or the new one.
fn write_locked(blob: &Path, tmp_dir: &Path, sidecar: &Sidecar) -> Result<(), SidecarError> {
    let path = path_for(blob);
    if sidecar.artifacts.is_empty() {
        return remove(blob);
    }
    let io_error = |source| SidecarError::Io {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(sidecar).map_err(|e| SidecarError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    let tmp = tmp_dir.join(format!("sidecar-{}.json", hex(&nonce)));
    let written = crate::private::create_file(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(e));
    }
    if let Some(parent) = path.parent() {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No sidecar is `None` and removing none is done; a sidecar that
    /// cannot be read or removed (here a directory in its place) is an
    /// error, not taken for none.
    #[test]
    fn only_a_missing_sidecar_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("ab");
        assert!(matches!(read(&blob), Ok(None)));
        assert!(remove(&blob).is_ok());
        std::fs::create_dir(path_for(&blob)).unwrap();
        assert!(matches!(read(&blob), Err(SidecarError::Io { .. })));
        assert!(matches!(remove(&blob), Err(SidecarError::Io { .. })));
    }

    fn record(sha: &str) -> BlobRecord {
        BlobRecord {
            sha256: sha.into(),
            size: 3,
            name: "dist".into(),
            expires_at: Some(2_000_000_000),
            stored_at: 1_700_000_000,
            repo: Some("n:octo/app".into()),
        }
    }

    #[test]
    fn add_forget_and_remove_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let blob = dir.path().join("a".repeat(64));
        std::fs::write(&blob, b"zip").unwrap();
        assert_eq!(read(&blob).unwrap(), None);
        add(&blob, &tmp, 1, &record("x")).unwrap();
        add(&blob, &tmp, 2, &record("x")).unwrap();
        let sidecar = read(&blob).unwrap().unwrap();
        assert_eq!(
            sidecar.artifacts.keys().copied().collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(sidecar.artifacts[&1], record("x"));
        assert!(path_for(&blob).to_string_lossy().ends_with(".json"));
        assert!(is_sidecar(&path_for(&blob)) && !is_sidecar(&blob));
        forget(&blob, &tmp, 1).unwrap();
        assert_eq!(read(&blob).unwrap().unwrap().artifacts.len(), 1);
        forget(&blob, &tmp, 2).unwrap();
        assert!(!path_for(&blob).exists());
        // Nothing left behind in tmp.
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn records_without_a_repo_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("b".repeat(64));
        std::fs::write(
            path_for(&blob),
            br#"{"artifacts":{"7":{"sha256":"x","size":1,"name":"n","expires_at":null,"stored_at":5}}}"#,
        )
        .unwrap();
        let sidecar = read(&blob).unwrap().unwrap();
        assert_eq!(sidecar.artifacts[&7].repo, None);
        std::fs::write(path_for(&blob), b"{not json").unwrap();
        assert!(matches!(read(&blob), Err(SidecarError::Invalid { .. })));
    }
}
