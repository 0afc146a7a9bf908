//! The cloud-hypervisor API socket: taken from socket activation, or bound by credbridge before
//! the hypervisor starts, and always handed to it as a listening fd.
//!
//! credbridge listens itself because cloud-hypervisor never calls listen() on an `fd=` socket:
//! a bound but not listening fd makes its HTTP thread spin and its SIGTERM hang
//! (cloud-hypervisor.md section 3).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, getsockname, getsockopt, listen,
    socket, sockopt,
};

use crate::hostenv::HostEnv;
use crate::sys;

/// sun_path is 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    #[error(
        "socket activation passed {count} fds and none is named `api`\nhint: set FileDescriptorName=api in the .socket unit"
    )]
    NoApiFd { count: usize },
    #[error(
        "socket-activated fd {fd} (`api`) is not a listening AF_UNIX stream socket ({why})\nhint: use ListenStream=/path with Accept=no in the .socket unit"
    )]
    NotListening { fd: i32, why: String },
    #[error("API socket path {} is {len} bytes; AF_UNIX paths are at most {MAX_SOCKET_PATH}\nhint: use a shorter --api-socket path or a relative one", path.display())]
    PathTooLong { path: PathBuf, len: usize },
    #[error("API socket {} is in use by another process\nhint: stop the other VM or choose another --api-socket path", path.display())]
    InUse { path: PathBuf },
    #[error("API socket path {} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot create the API socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot create a private directory for the API socket under {}: {source}\nhint: set RuntimeDirectory= in the unit", base.display())]
    PrivateDir { base: PathBuf, source: io::Error },
}

enum Cleanup {
    Nothing,
    RemoveSocket(PathBuf),
    RemoveDir(PathBuf),
}

pub struct ApiSocket {
    pub fd: OwnedFd,
    /// Where credbridge connects to reach the hypervisor's API.
    pub connect_to: std::os::unix::net::SocketAddr,
    /// For messages: how the socket was obtained.
    pub describe: String,
    cleanup: Cleanup,
}

impl ApiSocket {
    /// A socket-activated fd named `api`, or a single unnamed one (sd_listen_fds_with_names(3)).
    pub fn from_activation(env: &HostEnv) -> Result<Option<ApiSocket>, ApiSocketError> {
        let Some((count, names)) = env.listen_fds() else {
            return Ok(None);
        };
        if count == 0 {
            return Ok(None);
        }
        let index = match &names {
            Some(names) => names.iter().position(|n| n == "api").or_else(|| {
                (count == 1 && matches!(names[0].as_str(), "" | "unknown" | "stored")).then_some(0)
            }),
            None => (count == 1).then_some(0),
        };
        let Some(index) = index.filter(|&i| i < count) else {
            return Err(ApiSocketError::NoApiFd { count });
        };
        let raw = 3 + index as i32;
        Self::adopt(raw, format!("socket-activated fd {raw}"), false).map(Some)
    }

    /// `--api-socket fd=N` in the argv: an fd our parent opened. If it is bound but not yet
    /// listening, credbridge calls listen() itself, which cloud-hypervisor never does.
    pub fn from_inherited_fd(raw: i32) -> Result<ApiSocket, ApiSocketError> {
        Self::adopt(raw, format!("inherited fd {raw}"), true)
    }

    fn adopt(raw: i32, describe: String, may_listen: bool) -> Result<ApiSocket, ApiSocketError> {
        if !sys::fd_is_open(raw) {
            return Err(ApiSocketError::NotListening {
                fd: raw,
                why: "not open".into(),
            });
        }
        let fd = sys::own_inherited(raw);
        let not = |why: String| ApiSocketError::NotListening { fd: raw, why };
        match getsockopt(&fd, sockopt::SockType) {
            Ok(SockType::Stream) => {}
            Ok(other) => return Err(not(format!("type {other:?}"))),
            Err(e) => return Err(not(e.to_string())),
        }
        let addr: UnixAddr = getsockname(fd.as_raw_fd()).map_err(|e| not(e.to_string()))?;
        match getsockopt(&fd, sockopt::AcceptConn) {
            Ok(true) => {}
            Ok(false) if may_listen => {
                listen(&fd, Backlog::new(32).unwrap_or(Backlog::MAXCONN))
                    .map_err(|e| not(format!("listen: {e}")))?;
            }
            Ok(false) => return Err(not("not listening (Accept=yes?)".into())),
            Err(e) => return Err(not(e.to_string())),
        }
        let connect_to = if let Some(p) = addr.path() {
            std::os::unix::net::SocketAddr::from_pathname(p).map_err(|e| not(e.to_string()))?
        } else if let Some(name) = addr.as_abstract() {
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .map_err(|e| not(e.to_string()))?
        } else {
            return Err(not("unnamed socket".into()));
        };
        Ok(ApiSocket {
            fd,
            connect_to,
            describe,
            cleanup: Cleanup::Nothing,
        })
    }

    /// Binds `path` (relative to the working directory, like microvm.nix's `<name>.sock`) with
    /// mode 0600, so `microvm-shutdown` and `ch-remote` keep working.
    pub fn bind_path(path: &Path) -> Result<ApiSocket, ApiSocketError> {
        let fd = bind_listen(path)?;
        Ok(ApiSocket {
            connect_to: connect_addr(path)?,
            fd,
            describe: path.display().to_string(),
            cleanup: Cleanup::RemoveSocket(path.to_owned()),
        })
    }

    /// A socket nobody else needs to find: a fresh 0700 directory under `$RUNTIME_DIRECTORY`,
    /// else /run/credbridge.
    pub fn bind_private(env: &HostEnv) -> Result<ApiSocket, ApiSocketError> {
        let base = env
            .runtime_directory()
            .unwrap_or_else(|| PathBuf::from("/run/credbridge"));
        let dir = base.join(format!("api.{}", env.pid));
        let mkdir = |p: &Path, recursive| {
            std::fs::DirBuilder::new()
                .recursive(recursive)
                .mode(0o700)
                .create(p)
        };
        let make = || -> io::Result<()> {
            if !base.exists() {
                mkdir(&base, true)?;
            }
            match mkdir(&dir, false) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Left by an earlier credbridge with our pid (a pid reused after a crash).
                    std::fs::remove_dir_all(&dir)?;
                    mkdir(&dir, false)
                }
                other => other,
            }?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        };
        make().map_err(|source| ApiSocketError::PrivateDir {
            base: base.clone(),
            source,
        })?;
        let path = dir.join("api.sock");
        let fd = bind_listen(&path)?;
        Ok(ApiSocket {
            connect_to: connect_addr(&path)?,
            fd,
            describe: path.display().to_string(),
            cleanup: Cleanup::RemoveDir(dir),
        })
    }

    /// Removes what credbridge created. A socket-activated socket stays: it belongs to the
    /// .socket unit and must survive our restarts.
    pub fn cleanup(&mut self) {
        match std::mem::replace(&mut self.cleanup, Cleanup::Nothing) {
            Cleanup::Nothing => {}
            Cleanup::RemoveSocket(p) => {
                let _ = std::fs::remove_file(p);
            }
            Cleanup::RemoveDir(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

fn connect_addr(path: &Path) -> Result<std::os::unix::net::SocketAddr, ApiSocketError> {
    std::os::unix::net::SocketAddr::from_pathname(path).map_err(|source| ApiSocketError::Bind {
        path: path.to_owned(),
        source,
    })
}

fn bind_listen(path: &Path) -> Result<OwnedFd, ApiSocketError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ApiSocketError::PathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    remove_stale(path)?;
    let err = |source: io::Error| ApiSocketError::Bind {
        path: path.to_owned(),
        source,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| err(e.into()))?;
    // chmod between bind and listen: nobody can connect before listen(), so there is no window
    // in which the socket is reachable with the umask's mode.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listen(&fd, Backlog::new(32).unwrap_or(Backlog::MAXCONN)).map_err(|e| err(e.into()))?;
    Ok(fd)
}

fn remove_stale(path: &Path) -> Result<(), ApiSocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiSocketError::Bind {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiSocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ApiSocketError::InUse {
            path: path.to_owned(),
        }),
        Err(_) => std::fs::remove_file(path).map_err(|source| ApiSocketError::Bind {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_and_replaces_a_stale_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap()); // stale: nobody listens
        let mut s = ApiSocket::bind_path(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            std::os::unix::net::UnixStream::connect(&p).is_ok(),
            "listening"
        );
        assert!(matches!(
            ApiSocket::bind_path(&p),
            Err(ApiSocketError::InUse { .. })
        ));
        s.cleanup();
        assert!(!p.exists());
    }

    #[test]
    fn refuses_to_remove_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm.sock");
        std::fs::write(&p, b"precious").unwrap();
        assert!(matches!(
            ApiSocket::bind_path(&p),
            Err(ApiSocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    }

    #[test]
    fn private_socket_lives_in_a_0700_directory() {
        let d = tempfile::tempdir().unwrap();
        let env = HostEnv {
            vars: vec![("RUNTIME_DIRECTORY".into(), d.path().into())],
            pid: 4242,
        };
        let mut s = ApiSocket::bind_private(&env).unwrap();
        let dir = d.path().join("api.4242");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(dir.join("api.sock").exists());
        s.cleanup();
        assert!(!dir.exists());
    }

    #[test]
    fn too_long_path_is_refused() {
        let p = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        assert!(matches!(
            ApiSocket::bind_path(&p),
            Err(ApiSocketError::PathTooLong { .. })
        ));
    }
}
