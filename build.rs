//! Names the git commit the binary is built from (`--version`, the
//! `artifact_mirror_build_info` metric), so an operator can tell which code
//! a running mirror is. Outside a checkout (a source tarball) it is
//! "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ARTIFACT_MIRROR_COMMIT={commit}");
    // Rerun only when HEAD moves: HEAD itself (a checkout), the branch it
    // names (a commit) and packed-refs (a `git gc`). A path that does not
    // exist would make cargo rerun this on every build, so only existing
    // ones are named; without any, build.rs alone is watched.
    println!("cargo:rerun-if-changed=build.rs");
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
