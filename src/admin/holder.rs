//! Who holds a data dir's index lock, for the message that stops an admin
//! command: the server named by `server.json` when its process is the
//! holder, else the lock's owner as Linux lists it in `/proc/locks`, else
//! just "another process".

use std::path::Path;

use super::server_file::ServerFile;

/// "the data dir /x is in use by …; stop it first".
pub fn describe(data_dir: &Path) -> String {
    let shown = data_dir.display();
    let holder = lock_holder(&data_dir.join("index").join("db"));
    if let Some(server) = ServerFile::read(data_dir) {
        if server.is_running() && holder.is_none_or(|pid| pid == server.pid) {
            return format!(
                "the data dir {shown} is in use by artifact-mirror pid {} (listening on {}, since {}); stop it first",
                server.pid, server.listen, server.started_at
            );
        }
    }
    match holder {
        Some(pid) => format!(
            "the data dir {shown} is in use by pid {pid} ({}); stop it first",
            command_line(pid).unwrap_or_else(|| "command unknown".into())
        ),
        None => format!(
            "the data dir {shown} is in use by another process (its index is locked); stop it first"
        ),
    }
}

/// The pid holding a lock on `file`, from `/proc/locks` (Linux).
#[cfg(unix)]
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, inode)
}

#[cfg(not(unix))]
fn lock_holder(_file: &Path) -> Option<u32> {
    None
}

/// Lines look like `1: FLOCK  ADVISORY  WRITE 3569 fd:00:1053386 0 EOF`;
/// waiters (`1: -> FLOCK …`) are skipped.
fn holder_in(locks: &str, inode: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&"->") {
            return None;
        }
        let pid = fields.get(4)?.parse().ok()?;
        let ino: u64 = fields.get(5)?.rsplit(':').next()?.parse().ok()?;
        (ino == inode).then_some(pid)
    })
}

/// `/proc/<pid>/cmdline`, shortened for a message.
fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let line = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let short: String = line.chars().take(160).collect();
    (!short.is_empty()).then_some(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_name_the_holder() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 08:01:999 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 3569 fd:00:1053386 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4000 fd:00:1053386 0 EOF\n";
        assert_eq!(holder_in(locks, 1_053_386), Some(3569));
        assert_eq!(holder_in(locks, 999), Some(77));
        assert_eq!(holder_in(locks, 5), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lock_held_here_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let _index = crate::index::Index::open(&dir.path().join("index"), 1 << 20).unwrap();
        let message = describe(dir.path());
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.ends_with("stop it first"), "{message}");
    }
}
