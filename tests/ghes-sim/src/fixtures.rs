//! Fixed identities and repositories the simulator knows about.
//!
//! Tests refer to these constants instead of inventing tokens, so every test
//! speaks about the same three users and three repositories.

/// Read and write access to every repository.
pub const ADMIN_TOKEN: &str = "ghp_simadmin000000000000000000000000000";
/// Read access to every repository, no write access (DELETE answers 403).
pub const READER_TOKEN: &str = "ghp_simreader00000000000000000000000000";
/// A valid user who sees public repositories only (private ones answer 404).
pub const OUTSIDER_TOKEN: &str = "ghp_simoutsider0000000000000000000000";
/// Not known to the simulator: every request with it answers 401.
pub const BAD_TOKEN: &str = "ghp_thisisnotavalidtoken0000000000000000";

/// Public repository, id 1001.
pub const PUBLIC_REPO: &str = "octo-org/public-repo";
/// Private repository, id 1002.
pub const PRIVATE_REPO: &str = "octo-org/private-repo";
/// Private repository in another organization, id 1003.
pub const OTHER_PRIVATE_REPO: &str = "other-org/secret-repo";

pub const PUBLIC_REPO_ID: u64 = 1001;
pub const PRIVATE_REPO_ID: u64 = 1002;
pub const OTHER_PRIVATE_REPO_ID: u64 = 1003;

/// A fixture user: what a token may do.
#[derive(Debug)]
pub(crate) struct User {
    /// Key in `Counters::rate_limit_used`.
    pub name: &'static str,
    pub token: &'static str,
    /// Used in the "API rate limit exceeded for user ID n." message.
    pub user_id: u64,
    pub can_write: bool,
    pub sees_private: bool,
}

pub(crate) const USERS: [User; 4] = [
    User {
        name: "admin",
        token: ADMIN_TOKEN,
        user_id: 1,
        can_write: true,
        sees_private: true,
    },
    User {
        name: "reader",
        token: READER_TOKEN,
        user_id: 2,
        can_write: false,
        sees_private: true,
    },
    User {
        name: "outsider",
        token: OUTSIDER_TOKEN,
        user_id: 3,
        can_write: false,
        sees_private: false,
    },
    User {
        name: "app",
        token: APP_INSTALLATION_TOKEN,
        user_id: 4,
        can_write: false,
        sees_private: true,
    },
];

/// (full name, repository id, private)
pub(crate) const REPOS: [(&str, u64, bool); 3] = [
    (PUBLIC_REPO, PUBLIC_REPO_ID, false),
    (PRIVATE_REPO, PRIVATE_REPO_ID, true),
    (OTHER_PRIVATE_REPO, OTHER_PRIVATE_REPO_ID, true),
];

/// The first artifact id; ids then grow by one per created artifact, across
/// all repositories, so seeded ids are deterministic.
pub(crate) const FIRST_ARTIFACT_ID: u64 = 1_000_001;

/// One seeded artifact: (repo, run id, name, payload bytes, with digest, expired).
pub(crate) type Seed = (&'static str, u64, &'static str, usize, bool, bool);

/// Seed data, created in this order (so ids 1_000_001..=1_000_009).
/// `build-linux` exists in both public runs so `?name=` filters have
/// something to choose between.
pub(crate) const SEEDS: [Seed; 9] = [
    (PUBLIC_REPO, 5001, "build-linux", 3000, true, false),
    (PUBLIC_REPO, 5001, "build-macos", 2500, false, false),
    (PUBLIC_REPO, 5001, "test-results", 1200, true, false),
    (PUBLIC_REPO, 5002, "build-linux", 3100, false, false),
    (PUBLIC_REPO, 5002, "coverage", 4096, true, false),
    (PRIVATE_REPO, 6001, "release-bundle", 5000, true, false),
    (PRIVATE_REPO, 6001, "logs", 1500, false, true),
    (PRIVATE_REPO, 6001, "sbom", 800, false, false),
    (OTHER_PRIVATE_REPO, 7001, "secrets", 2048, true, false),
];

/// What the App installation-token endpoint hands out; it reads every
/// repository (like a `reader`) and has its own rate-limit bucket, "app".
pub const APP_INSTALLATION_TOKEN: &str = "ghs_siminstallation0000000000000000000";

/// A GitHub App's RS256 private key (PKCS#8 PEM), made for these tests only;
/// the sim checks App JWTs with [`APP_PUBLIC_KEY_PEM`].
pub const APP_PRIVATE_KEY_PEM: &[u8] = include_bytes!("../keys/github-app.pem");
pub const APP_PUBLIC_KEY_PEM: &[u8] = include_bytes!("../keys/github-app.pub.pem");
