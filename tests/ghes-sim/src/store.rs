//! The simulator's data: repositories, artifacts and their zips, in memory.

use crate::fixtures::{self, FIRST_ARTIFACT_ID, REPOS, SEEDS};
use crate::runs::Run;
use crate::util::{base64, now_unix, rfc3339, sha256_hex};
use crate::zip;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, OnceLock};

/// What a test asks for in [`crate::Sim::add_artifact`].
#[derive(Clone, Debug)]
pub struct NewArtifact {
    /// "owner/name". An unknown repository is created on the fly as a
    /// private repository (ids from 1004 up).
    pub repo: String,
    pub run_id: u64,
    pub name: String,
    /// Size of the single file (`{name}.txt`) inside the zip.
    pub payload_bytes: usize,
    /// Whether the JSON carries `digest` (api.github.com does, GHES does not).
    pub with_digest: bool,
    pub expired: bool,
}

/// An artifact as the simulator holds it (not the JSON wire shape; the API
/// renders that from these fields).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Artifact {
    pub id: u64,
    /// "owner/name"
    pub repo: String,
    pub repository_id: u64,
    pub run_id: u64,
    pub name: String,
    /// Exact length of the zip the blob store serves.
    pub size_in_bytes: u64,
    /// `Some("sha256:<hex>")` only for artifacts created `with_digest`.
    pub digest: Option<String>,
    pub expired: bool,
    /// sha256 of the zip, hex, always present (also the blob URL's file name).
    pub sha256: String,
    pub node_id: String,
    pub created_at: String,
    pub expires_at: String,
    pub updated_at: String,
    pub head_branch: String,
    pub head_sha: String,
    /// Name of the file inside the zip.
    pub file_name: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Repo {
    pub owner: String,
    pub name: String,
    pub id: u64,
    pub private: bool,
}

impl Repo {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

pub(crate) struct Stored {
    pub artifact: Artifact,
    pub zip: Bytes,
}

/// Artifacts are kept by id; listing sorts by id, which is creation order.
pub(crate) struct Store {
    repos: Vec<Repo>,
    artifacts: BTreeMap<u64, Stored>,
    /// Deleted ids: a download of one answers 410 like GitHub, not 404.
    deleted: BTreeSet<u64>,
    next_id: u64,
    /// Completed workflow runs by id (the seeded artifacts' runs, and those
    /// a test completes).
    runs: BTreeMap<u64, Run>,
}

impl Store {
    pub fn new(seed: bool) -> Store {
        let repos = REPOS
            .iter()
            .map(|(full, id, private)| {
                let (owner, name) = full.split_once('/').unwrap_or((full, ""));
                Repo {
                    owner: owner.to_string(),
                    name: name.to_string(),
                    id: *id,
                    private: *private,
                }
            })
            .collect();
        let mut store = Store {
            repos,
            artifacts: BTreeMap::new(),
            deleted: BTreeSet::new(),
            next_id: FIRST_ARTIFACT_ID,
            runs: BTreeMap::new(),
        };
        if seed {
            for (repo, run_id, name, payload_bytes, with_digest, expired) in SEEDS {
                store.complete_run(repo, run_id);
                store.add(NewArtifact {
                    repo: repo.to_string(),
                    run_id,
                    name: name.to_string(),
                    payload_bytes,
                    with_digest,
                    expired,
                });
            }
        }
        store
    }

    /// Repository by "owner/name", case-insensitively like GitHub.
    pub fn repo_by_name(&self, owner: &str, name: &str) -> Option<Repo> {
        self.repos
            .iter()
            .find(|r| r.owner.eq_ignore_ascii_case(owner) && r.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    pub fn repo_by_id(&self, id: u64) -> Option<Repo> {
        self.repos.iter().find(|r| r.id == id).cloned()
    }

    fn repo_or_create(&mut self, full: &str) -> Repo {
        let (owner, name) = full.split_once('/').unwrap_or((full, ""));
        if let Some(r) = self.repo_by_name(owner, name) {
            return r;
        }
        let id = self.repos.iter().map(|r| r.id).max().unwrap_or(1000) + 1;
        let repo = Repo {
            owner: owner.to_string(),
            name: name.to_string(),
            id,
            private: true,
        };
        self.repos.push(repo.clone());
        repo
    }

    /// Creates an artifact, building its zip in place (fine for the small
    /// seeds; `Sim::add_artifact` uses `reserve` + `insert` to build outside
    /// the lock).
    pub fn add(&mut self, spec: NewArtifact) -> Artifact {
        let pending = self.reserve(spec);
        self.insert(pending.build())
    }

    /// Reserves the id (and repository) for a new artifact; the slow part,
    /// building and hashing the zip, is [`Pending::build`], which needs no
    /// access to the store.
    pub fn reserve(&mut self, spec: NewArtifact) -> Pending {
        let repo = self.repo_or_create(&spec.repo);
        let id = self.next_id;
        self.next_id += 1;
        Pending { repo, id, spec }
    }

    /// A new artifact (next id, same repository and run) whose zip is the
    /// very bytes of artifact `of`: identical content, as two uploads of the
    /// same files give.
    pub fn duplicate(&mut self, of: u64) -> Option<Artifact> {
        let original = self.artifacts.get(&of)?;
        let mut stored = Stored {
            artifact: original.artifact.clone(),
            zip: original.zip.clone(),
        };
        let id = self.next_id;
        self.next_id += 1;
        stored.artifact.id = id;
        stored.artifact.node_id = base64(format!("08:Artifact{id}").as_bytes());
        Some(self.insert(stored))
    }

    pub fn insert(&mut self, stored: Stored) -> Artifact {
        let artifact = stored.artifact.clone();
        self.artifacts.insert(artifact.id, stored);
        artifact
    }

    pub fn get(&self, id: u64) -> Option<&Stored> {
        self.artifacts.get(&id)
    }

    pub fn was_deleted(&self, id: u64) -> bool {
        self.deleted.contains(&id)
    }

    /// Artifacts of one repository (optionally one run), ascending by id.
    pub fn list(&self, repo_id: u64, run_id: Option<u64>) -> Vec<Artifact> {
        self.artifacts
            .values()
            .map(|s| &s.artifact)
            .filter(|a| a.repository_id == repo_id && run_id.is_none_or(|r| a.run_id == r))
            .cloned()
            .collect()
    }

    pub fn list_by_name(&self, full: &str) -> Vec<Artifact> {
        let (owner, name) = full.split_once('/').unwrap_or((full, ""));
        match self.repo_by_name(owner, name) {
            Some(repo) => self.list(repo.id, None),
            None => Vec::new(),
        }
    }

    /// Marks run `id` of "owner/name" completed now (creating the
    /// repository like `add` does) and returns it.
    pub fn complete_run(&mut self, full: &str, id: u64) -> Run {
        let repo = self.repo_or_create(full);
        let run = Run::completed(&repo, id);
        self.runs.insert(id, run.clone());
        run
    }

    pub fn run(&self, id: u64) -> Option<Run> {
        self.runs.get(&id).cloned()
    }

    /// Completed runs of one repository, newest (highest id) first.
    pub fn runs(&self, repo_id: u64) -> Vec<Run> {
        self.runs
            .values()
            .rev()
            .filter(|r| r.repository_id == repo_id)
            .cloned()
            .collect()
    }

    pub fn delete(&mut self, id: u64) -> bool {
        let removed = self.artifacts.remove(&id).is_some();
        if removed {
            self.deleted.insert(id);
        }
        removed
    }

    /// Makes the JSON lie about the zip (the blob store still serves the
    /// real one): how tests produce digest and size mismatches.
    pub fn misdescribe(&mut self, id: u64, digest: Option<String>, size_in_bytes: Option<u64>) {
        if let Some(s) = self.artifacts.get_mut(&id) {
            if digest.is_some() {
                s.artifact.digest = digest;
            }
            if let Some(size) = size_in_bytes {
                s.artifact.size_in_bytes = size;
            }
        }
    }

    pub fn set_expires_at(&mut self, id: u64, unix: u64) {
        if let Some(s) = self.artifacts.get_mut(&id) {
            s.artifact.expires_at = rfc3339(unix);
            s.artifact.updated_at = rfc3339(now_unix());
        }
    }

    pub fn expire(&mut self, id: u64) {
        if let Some(s) = self.artifacts.get_mut(&id) {
            let now = rfc3339(now_unix());
            s.artifact.expired = true;
            s.artifact.expires_at = now.clone();
            s.artifact.updated_at = now;
        }
    }
}

/// An artifact whose id is reserved but whose zip is not built yet.
pub(crate) struct Pending {
    repo: Repo,
    id: u64,
    spec: NewArtifact,
}

impl Pending {
    pub fn build(self) -> Stored {
        let Pending { repo, id, spec } = self;
        let file_name = format!("{}.txt", spec.name);
        let (zip, sha256) = built_zip(&file_name, spec.payload_bytes, id);
        let now = now_unix();
        let created = now.saturating_sub(3600);
        let expires = if spec.expired {
            now.saturating_sub(60)
        } else {
            created + 90 * 86_400
        };
        let artifact = Artifact {
            id,
            repo: repo.full_name(),
            repository_id: repo.id,
            run_id: spec.run_id,
            name: spec.name,
            size_in_bytes: zip.len() as u64,
            digest: spec.with_digest.then(|| format!("sha256:{sha256}")),
            expired: spec.expired,
            sha256,
            node_id: base64(format!("08:Artifact{id}").as_bytes()),
            created_at: rfc3339(created),
            expires_at: rfc3339(expires),
            updated_at: rfc3339(if spec.expired { expires } else { created }),
            head_branch: "main".to_string(),
            head_sha: sha256_hex(&[format!("run {}", spec.run_id).as_bytes()])[..40].to_string(),
            file_name,
        };
        Stored { artifact, zip }
    }
}

/// Zips at least this big are remembered process-wide.
const CACHE_MIN: usize = 1 << 20;
/// At most this many bytes of zips are remembered.
const CACHE_MAX_BYTES: usize = 256 << 20;

type ZipKey = (String, usize, u64);

/// The zip for (file name, payload size, seed) and its sha256.
///
/// Zips are deterministic, and hashing 64 MiB takes seconds in an
/// unoptimized test build, so large ones are kept in a small process-wide
/// cache: the many tests that each start a sim and add the same big
/// artifact (same id, name and size) pay for it once.
fn built_zip(file_name: &str, payload: usize, seed: u64) -> (Bytes, String) {
    static CACHE: OnceLock<Mutex<VecDeque<(ZipKey, Bytes, String)>>> = OnceLock::new();
    let make = || {
        let zip = zip::build(file_name, payload, seed);
        let sha = sha256_hex(&[&zip]);
        (zip, sha)
    };
    if payload < CACHE_MIN {
        return make();
    }
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (file_name.to_string(), payload, seed);
    if let Some((_, zip, sha)) = crate::util::lock(cache).iter().find(|(k, _, _)| *k == key) {
        return (zip.clone(), sha.clone());
    }
    // Built outside the lock: concurrent tests may build the same zip twice,
    // which is only wasted time.
    let (zip, sha) = make();
    let mut c = crate::util::lock(cache);
    if !c.iter().any(|(k, _, _)| *k == key) {
        c.push_back((key, zip.clone(), sha.clone()));
        while c.iter().map(|(_, z, _)| z.len()).sum::<usize>() > CACHE_MAX_BYTES && c.len() > 1 {
            c.pop_front();
        }
    }
    (zip, sha)
}

impl fixtures::User {
    /// Whether this user may read a repository.
    pub(crate) fn can_read(&self, repo: &Repo) -> bool {
        !repo.private || self.sees_private
    }
}
