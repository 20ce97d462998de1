//! `data_dir/server.json`: which process serves a data dir, where, since
//! when. `serve` writes it once it has bound its listener and removes it at
//! a clean exit. The admin commands read it when the index's lock stops them,
//! to name the holder, and `cache stats` to find the server's `/metrics`.
//!
//! The lock, not this file, says whether the data dir is in use: a crash
//! leaves the file behind, so it is only believed while the lock is held.

use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "server.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFile {
    pub pid: u32,
    /// The address actually bound (a configured port 0 resolved).
    pub listen: SocketAddr,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Whether it serves HTTPS (its `/metrics` then needs a TLS client).
    #[serde(default)]
    pub tls: bool,
}

impl ServerFile {
    /// This process, serving on `listen` from now on.
    pub fn new(listen: SocketAddr, tls: bool) -> ServerFile {
        ServerFile {
            pid: std::process::id(),
            listen,
            started_at: humantime::format_rfc3339_seconds(crate::clock::now()).to_string(),
            tls,
        }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Written beside and renamed over, so a reader never sees half of it.
    pub fn write(&self, data_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let tmp = data_dir.join(format!(".{FILE_NAME}.{}", self.pid));
        let written = crate::private::create_file(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()
        });
        match written.and_then(|()| std::fs::rename(&tmp, Self::path(data_dir))) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// The file's content; `None` when there is none or it is unreadable
    /// (it is a hint for messages, never a reason to fail).
    pub fn read(data_dir: &Path) -> Option<ServerFile> {
        let bytes = std::fs::read(Self::path(data_dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes the file if this process wrote it (a clean exit).
    pub fn remove_if_ours(data_dir: &Path) -> io::Result<()> {
        match Self::read(data_dir) {
            Some(file) if file.pid == std::process::id() => {
                std::fs::remove_file(Self::path(data_dir))
            }
            _ => Ok(()),
        }
    }

    /// Whether the process it names still exists. Where `/proc` is not
    /// available the answer is yes: the caller only asks while the lock
    /// is held by someone.
    pub fn is_running(&self) -> bool {
        let proc = Path::new("/proc");
        !proc.join("self").exists() || proc.join(self.pid.to_string()).exists()
    }

    /// Where this machine reaches it: a wildcard listen address means
    /// loopback on the same port.
    pub fn reachable(&self) -> SocketAddr {
        let ip = match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.listen.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_removed_by_its_writer_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ServerFile::read(dir.path()), None);
        let file = ServerFile::new("127.0.0.1:8080".parse().unwrap(), false);
        file.write(dir.path()).unwrap();
        assert_eq!(ServerFile::read(dir.path()), Some(file.clone()));
        assert!(file.is_running(), "this process runs");
        assert!(file.started_at.ends_with('Z'), "{}", file.started_at);
        let foreign = ServerFile {
            pid: file.pid.wrapping_add(1),
            ..file.clone()
        };
        foreign.write(dir.path()).unwrap();
        ServerFile::remove_if_ours(dir.path()).unwrap();
        assert!(ServerFile::path(dir.path()).exists(), "not ours: kept");
        file.write(dir.path()).unwrap();
        ServerFile::remove_if_ours(dir.path()).unwrap();
        assert!(!ServerFile::path(dir.path()).exists());
        // Only the file itself is left behind: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn wildcard_addresses_are_reached_over_loopback() {
        let at = |listen: &str| ServerFile {
            listen: listen.parse().unwrap(),
            ..ServerFile::new("127.0.0.1:1".parse().unwrap(), false)
        };
        assert_eq!(at("0.0.0.0:8080").reachable().to_string(), "127.0.0.1:8080");
        assert_eq!(at("[::]:8080").reachable().to_string(), "[::1]:8080");
        assert_eq!(at("10.1.2.3:80").reachable().to_string(), "10.1.2.3:80");
    }
}
