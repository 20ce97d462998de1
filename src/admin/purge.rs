//! `cache purge`: drops what is cached of a repository, of artifacts, or
//! everything, with the server stopped.

use std::collections::BTreeSet;

use super::AdminError;
use crate::blob_store::local::repair;
use crate::blob_store::BlobStore;
use crate::index::Facts;
use crate::index::{Index, IndexStats};
use crate::json_cache;
use crate::outcome::Eviction;
use crate::router::RepoRef;

/// What to drop.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub repos: Vec<RepoRef>,
    pub artifacts: Vec<u64>,
    pub all: bool,
}

/// What a purge removed, from counts taken before and after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub json_entries: u64,
    pub blob_records: u64,
    pub grants: u64,
    pub facts: u64,
    pub files: u64,
    pub bytes: u64,
    /// Blob records written before blobs kept their repository: `--repo`
    /// cannot match them.
    pub unattributed: u64,
}

pub fn purge(
    data_dir: &std::path::Path,
    index: &Index,
    store: &BlobStore,
    selection: &Selection,
) -> Result<Purged, AdminError> {
    let before = (index.stats()?, repair::scan(data_dir)?);
    let mut unattributed = 0;
    if selection.all {
        // Files and sidecars first (through the store), then the records:
        // a crash in between leaves records without files, which the next
        // start drops, never sidecars that would bring blobs back.
        for (id, _) in store.records()? {
            store.remove_now(id, Eviction::Deleted);
        }
        repair::remove_all_files(data_dir)?;
        index.clear_all()?;
    } else {
        let mut ids: BTreeSet<u64> = selection.artifacts.iter().copied().collect();
        if !selection.repos.is_empty() {
            let records = store.records()?;
            let facts: Vec<(u64, Facts)> = index.facts().all()?;
            unattributed = records.iter().filter(|(_, r)| r.repo.is_none()).count() as u64;
            for repo in &selection.repos {
                let mut forms = BTreeSet::from([json_cache::repo_id(repo)]);
                if let Some(alias) = index.json().alias_get(&json_cache::repo_id(repo))? {
                    forms.insert(alias);
                }
                for prefix in json_cache::repo_prefixes(index, repo)? {
                    index.json().remove_prefix(&prefix)?;
                }
                let of_repo = |r: &Option<String>| r.as_ref().is_some_and(|r| forms.contains(r));
                ids.extend(
                    records
                        .iter()
                        .filter(|(_, r)| of_repo(&r.repo))
                        .map(|(id, _)| *id),
                );
                ids.extend(
                    facts
                        .iter()
                        .filter(|(_, f)| of_repo(&f.repo))
                        .map(|(id, _)| *id),
                );
            }
        }
        for id in ids {
            // The blob (its file when no other artifact shares it), its
            // sidecar entry and every credential's grant…
            store.remove_now(id, Eviction::Deleted);
            // …and what cached JSON said of it.
            index.facts().remove(id)?;
        }
    }
    index.flush_now()?;
    let after = (index.stats()?, repair::scan(data_dir)?);
    let gone = |f: fn(&IndexStats) -> u64| f(&before.0).saturating_sub(f(&after.0));
    Ok(Purged {
        json_entries: gone(|s| s.json_entries),
        blob_records: gone(|s| s.blob_records),
        grants: gone(|s| s.grants),
        facts: gone(|s| s.facts),
        files: (before.1.blobs.len() as u64).saturating_sub(after.1.blobs.len() as u64),
        bytes: before.1.bytes().saturating_sub(after.1.bytes()),
        unattributed: if selection.repos.is_empty() {
            0
        } else {
            unattributed
        },
    })
}

pub fn render(selection: &Selection, purged: &Purged) -> String {
    let what = if selection.all {
        "everything".to_owned()
    } else {
        let mut parts: Vec<String> = selection
            .repos
            .iter()
            .map(|r| match r {
                RepoRef::Named { owner, name } => format!("{owner}/{name}"),
                RepoRef::Id(id) => format!("repository {id}"),
            })
            .collect();
        parts.extend(
            selection
                .artifacts
                .iter()
                .map(|id| format!("artifact {id}")),
        );
        parts.join(", ")
    };
    let mut out = format!(
        "purged {what}: {} cached JSON entries, {} blob records ({} files, {} bytes freed), {} grants, {} facts\n",
        purged.json_entries,
        purged.blob_records,
        purged.files,
        purged.bytes,
        purged.grants,
        purged.facts
    );
    if purged.unattributed > 0 {
        out.push_str(&format!(
            "note: {} blob records were stored before blobs kept their repository; --repo cannot match them (use --artifact ID or --all)\n",
            purged.unattributed
        ));
    }
    out
}
