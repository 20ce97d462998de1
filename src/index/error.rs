//! The index's error: what went wrong, without naming the database behind it.

use std::path::{Path, PathBuf};

/// A read or write of the index failed, or a record did not decode.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IndexError(Cause);

#[derive(Debug, thiserror::Error)]
enum Cause {
    #[error(transparent)]
    Db(sled::Error),
    #[error("a record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

impl From<sled::Error> for IndexError {
    fn from(e: sled::Error) -> Self {
        IndexError(Cause::Db(e))
    }
}

impl From<serde_json::Error> for IndexError {
    fn from(e: serde_json::Error) -> Self {
        IndexError(Cause::Decode(e))
    }
}

impl From<sled::transaction::TransactionError<()>> for IndexError {
    fn from(e: sled::transaction::TransactionError<()>) -> Self {
        match e {
            sled::transaction::TransactionError::Storage(e) => e.into(),
            // Nothing aborts: every transaction closure here returns `Ok` or
            // a storage error.
            sled::transaction::TransactionError::Abort(()) => IndexError(Cause::Db(
                sled::Error::ReportableBug("an index transaction aborted".into()),
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the index at {path}: {source} (is another artifact-mirror using this data dir?)"
)]
pub struct IndexOpenError {
    path: PathBuf,
    source: sled::Error,
}

impl IndexOpenError {
    pub(super) fn new(path: &Path, source: impl Into<sled::Error>) -> Self {
        IndexOpenError {
            path: path.to_owned(),
            source: source.into(),
        }
    }

    /// Whether the open failed because another process (or another open in
    /// this one) holds the index's file lock, as opposed to a damaged or
    /// unreadable index: the admin commands then name the holder instead of
    /// suggesting a repair.
    pub fn is_locked(&self) -> bool {
        // sled reports a held lock as a plain I/O error with this text.
        match &self.source {
            sled::Error::Io(e) => e.to_string().contains("could not acquire lock"),
            _ => false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
