//! Everything under `data_dir` is the mirror's alone: zips of private
//! repositories, cached JSON and the instance key must not be readable by
//! the other users of a shared runner host. Directories are created 0700 and
//! files 0600 whatever the umask, and [`tighten`] brings a data dir made by
//! an older version (or by hand) to the same state at start.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Permission bits of group and others: none may be set under `data_dir`.
#[cfg(unix)]
const SHARED_BITS: u32 = 0o077;

/// `create_dir_all` whose new directories are 0700.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(path)
}

/// Creates (or truncates) a file only its owner can read. A file left over
/// with wider permissions is narrowed too: the mode given at open applies
/// only to a new file.
pub fn create_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// [`create_file`] on the blocking pool, as a tokio file.
pub async fn create_file_async(path: &Path) -> io::Result<tokio::fs::File> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || create_file(&path))
        .await
        .map_err(io::Error::other)?
        .map(tokio::fs::File::from_std)
}

/// What [`tighten`] did.
#[derive(Debug, Default)]
pub struct Tightened {
    /// Entries whose group or other permission bits were removed.
    pub changed: u64,
    /// Entries that could not be read or changed; the first one's error.
    pub failed: u64,
    pub first_error: Option<String>,
}

/// Removes group and other permissions from `root` and everything under it
/// (directories end 0700, files 0600), in one walk. Symbolic links are
/// neither followed nor changed: their targets may be anything, anywhere.
/// Blocking; a failure on one entry does not stop the others.
pub fn tighten(root: &Path) -> Tightened {
    let mut done = Tightened::default();
    #[cfg(unix)]
    for entry in walkdir::WalkDir::new(root) {
        let result = entry.map_err(io::Error::from).and_then(|entry| {
            let meta = entry.metadata().map_err(io::Error::from)?;
            let mode = meta.permissions().mode();
            if meta.file_type().is_symlink() || mode & SHARED_BITS == 0 {
                return Ok(false);
            }
            let narrowed = std::fs::Permissions::from_mode(mode & !SHARED_BITS);
            std::fs::set_permissions(entry.path(), narrowed).map(|()| true)
        });
        match result {
            Ok(changed) => done.changed += u64::from(changed),
            Err(e) => {
                done.failed += 1;
                done.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    #[cfg(not(unix))]
    let _ = root;
    done
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn tighten_narrows_dirs_and_files_but_not_link_targets() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("shared.txt");
        std::fs::write(&target, b"not ours").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let root = dir.path().join("data");
        let nested = root.join("blobs/sha256/ab");
        std::fs::create_dir_all(&nested).unwrap();
        let file = nested.join("blob");
        std::fs::write(&file, b"zip").unwrap();
        for (path, m) in [(&root, 0o755), (&nested, 0o775), (&file, 0o644)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink(&target, root.join("link")).unwrap();

        let done = tighten(&root);
        assert_eq!(done.failed, 0, "{:?}", done.first_error);
        assert_eq!(done.changed, 5, "root, blobs, sha256, ab and the file");
        for d in [&root, &root.join("blobs"), &nested] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&target), 0o644, "a link's target was changed");
        assert_eq!(tighten(&root).changed, 0, "a second pass changes nothing");
    }

    #[test]
    fn created_entries_are_private_and_a_wider_leftover_is_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        let file = nested.join("f");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"");
    }
}
