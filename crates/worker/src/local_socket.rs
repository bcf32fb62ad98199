//! The worker's Unix socket (`--local-socket`): the same RPCs as the TCP listener, for
//! coordinators on the same host (see `chorus_common::local_link`).
//!
//! The file is the worker's while it runs: a stale one left by a killed worker is replaced at
//! bind, one that another process still answers on is refused, and the file is removed when the
//! socket is dropped (at the start of the drain, as the TCP listener is closed) — unless another
//! worker has bound the path since.

use chorus_common::LocalLink;
use chorus_common::local_link::host_identity;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};

/// A bound Unix socket, its file removed on drop.
#[derive(Debug)]
pub struct LocalSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's inode, so that drop removes only the file this worker created.
    inode: u64,
}

impl LocalSocket {
    /// Binds `path` (made absolute against the working directory, since it is registered for
    /// other processes to dial). Must run inside a tokio runtime.
    pub async fn bind(path: &Path) -> io::Result<LocalSocket> {
        let path = std::path::absolute(path)?;
        remove_if_stale(&path).await?;
        let listener = UnixListener::bind(&path)?;
        let inode = std::fs::metadata(&path)?.ino();
        Ok(LocalSocket {
            listener,
            path,
            inode,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// What the worker registers: the path and this host's identity; `None` where the host has
    /// no identity (coordinators could not tell whether they share it).
    pub fn link(&self) -> Option<LocalLink> {
        Some(LocalLink {
            socket: self.path.to_str()?.to_string(),
            host: host_identity()?.to_string(),
        })
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file nobody answers on; refuses a path that is in use or is not a socket.
async fn remove_if_stale(path: &Path) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process serves {}: give each worker its own --local-socket",
                path.display()
            ),
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_refused_and_the_file_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        // A socket file whose process has gone: bound, then its listener dropped without
        // removing the file (std leaves it behind, as a killed worker would).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());

        let socket = LocalSocket::bind(&path).await.unwrap();
        let link = socket.link().unwrap();
        assert_eq!(link.socket, path.to_str().unwrap());
        assert_eq!(Some(link.host.as_str()), host_identity());

        let refused = LocalSocket::bind(&path).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse, "{refused}");
        assert!(refused.to_string().contains("another process serves"));

        drop(socket);
        assert!(!path.exists(), "removed with the socket");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "keep me").unwrap();
        let refused = LocalSocket::bind(&path).await.unwrap_err();
        assert!(refused.to_string().contains("is not a socket"), "{refused}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn drop_leaves_a_socket_another_worker_bound_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let first = LocalSocket::bind(&path).await.unwrap();
        // The path taken over behind the first one's back (an operator's restart script).
        std::fs::remove_file(&path).unwrap();
        let second = LocalSocket::bind(&path).await.unwrap();
        drop(first);
        assert!(path.exists(), "the second worker's socket stays");
        drop(second);
        assert!(!path.exists());
    }
}
